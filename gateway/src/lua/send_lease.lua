-- Distributed send limits (cluster mode): one token bucket per user and one
-- per tenant, in Redis. A node does not spend these tokens one send at a
-- time: it leases a few (see `ratelimit.rs`), spends them locally, and comes
-- back for more. This script grants a lease from both buckets in one run, so
-- two nodes can never both lease the last token, and a lease refused by one
-- bucket takes nothing from the other.
--
-- KEYS[1]: the user's bucket, KEYS[2]: the tenant's bucket (hashes).
-- ARGV[4i-3], ARGV[4i-2]: bucket i's rate (tokens per second; 0 = no limit)
-- and burst. ARGV[4i-1]: tokens wanted from it (at most; 0 = none).
-- ARGV[4i]: tokens needed from it (0 or 1: the node has none left for the
-- send it is checking).
--
-- A bucket is {tk = tokens after the last grant, ts = time of that grant in
-- microseconds}. Time is Redis' own (TIME), never a node's clock, so nodes
-- with skewed clocks agree. A missing bucket is full, so a key can go once it
-- would be full again: each grant sets PEXPIRE to the time its bucket needs to
-- refill (plus a second), which bounds memory to the users sending right now.
--
-- Returns {0, 0, granted1, granted2} when every needed token was there (each
-- bucket grants what it has of what was wanted), else {wait_ms, scope, 0, 0}
-- (scope 1 = user, 2 = tenant: the bucket with the longer wait) and grants
-- nothing.

if redis.replicate_commands then redis.replicate_commands() end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

local state = {}
local wait, scope = 0, 0
for i = 1, 2 do
  local rate = tonumber(ARGV[4 * i - 3])
  local burst = tonumber(ARGV[4 * i - 2])
  local want = tonumber(ARGV[4 * i - 1])
  local need = tonumber(ARGV[4 * i])
  if rate > 0 then
    local s = redis.call('HMGET', KEYS[i], 'tk', 'ts')
    local tokens = burst
    if s[1] and s[2] then
      local elapsed = math.max(0, now - tonumber(s[2]))
      tokens = math.min(burst, tonumber(s[1]) + elapsed * rate / 1000000)
    end
    if need > 0 and tokens < need then
      local w = math.ceil((need - tokens) * 1000 / rate)
      if w > wait then
        wait, scope = w, i
      end
    end
    state[i] = { tokens, rate, burst, math.max(want, need) }
  end
end

if wait > 0 then
  return { wait, scope, 0, 0 }
end

local granted = { 0, 0 }
for i = 1, 2 do
  local s = state[i]
  if s then
    local tokens, rate, burst, want = s[1], s[2], s[3], s[4]
    local g = math.max(0, math.min(want, math.floor(tokens)))
    if g > 0 then
      local left = tokens - g
      redis.call('HSET', KEYS[i], 'tk', tostring(left), 'ts', string.format('%d', now))
      local refill_ms = math.ceil((burst - left) * 1000 / rate) + 1000
      redis.call('PEXPIRE', KEYS[i], string.format('%d', refill_ms))
    end
    granted[i] = g
  end
end
return { 0, 0, granted[1], granted[2] }
