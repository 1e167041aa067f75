-- Distributed send limits (cluster mode): one token bucket per user and one
-- per tenant, checked and taken together in one run, so two nodes can never
-- both spend the last token, and a send refused by one bucket takes nothing
-- from the other.
--
-- KEYS[1]: the user's bucket, KEYS[2]: the tenant's bucket (hashes).
-- ARGV[1], ARGV[2]: user rate (tokens per second; 0 = no limit) and burst.
-- ARGV[3], ARGV[4]: tenant rate (0 = no limit) and burst.
--
-- A bucket is {tk = tokens after the last take, ts = time of that take in
-- microseconds}. Time is Redis' own (TIME), never a node's clock, so nodes
-- with skewed clocks agree. A missing bucket is full, so a key can go once it
-- would be full again: each take sets PEXPIRE to the time its bucket needs to
-- refill (plus a second), which bounds memory to the users sending right now.
--
-- Returns {0, 0} when every limited bucket gave a token, else
-- {wait_ms, scope} (scope 1 = user, 2 = tenant: the bucket with the longer
-- wait) and takes nothing.

if redis.replicate_commands then redis.replicate_commands() end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

local take = {}
local wait, scope = 0, 0
for i = 1, 2 do
  local rate = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  if rate > 0 then
    local state = redis.call('HMGET', KEYS[i], 'tk', 'ts')
    local tokens = burst
    if state[1] and state[2] then
      local elapsed = math.max(0, now - tonumber(state[2]))
      tokens = math.min(burst, tonumber(state[1]) + elapsed * rate / 1000000)
    end
    if tokens < 1 then
      local w = math.ceil((1 - tokens) * 1000 / rate)
      if w > wait then
        wait, scope = w, i
      end
    end
    take[#take + 1] = { KEYS[i], tokens - 1, rate, burst }
  end
end

if wait > 0 then
  return { wait, scope }
end

for _, b in ipairs(take) do
  local key, left, rate, burst = b[1], b[2], b[3], b[4]
  redis.call('HSET', key, 'tk', tostring(left), 'ts', string.format('%d', now))
  local refill_ms = math.ceil((burst - left) * 1000 / rate) + 1000
  redis.call('PEXPIRE', key, string.format('%d', refill_ms))
end
return { 0, 0 }
