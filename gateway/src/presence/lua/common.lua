-- Prepended by presence/redis.rs to every presence script.
--
-- ARGV[1] of every script is the key prefix P. Key layout:
--   P..'p:g:'..session            string: the session's generation (a tombstone
--                                 '-generation' once expire_if removed it)
--   P..'p:s:'..session            hash: entry (JSON), user, user_key
--   P..'p:sr:'..session           set: room keys the session is in
--   P..'p:u:'..user_key           zset: session -> expiry (ms)
--   P..'p:r:'..room               zset: user -> expiry (ms), always the highest
--                                 expiry of that user's sessions in the room
--   P..'p:ru:'..room..'|'..user   zset: session -> expiry (ms)
-- Room keys and user ids never contain '|', '{' or '}' (see protocol's
-- valid_room and the gateway's valid_user), so these keys are unambiguous.
--
-- Liveness is a score greater than Redis' own clock (TIME), so every node
-- judges expiry by one clock. Keys also carry a PEXPIRE of twice the ttl,
-- renewed by every write, only so that abandoned keys go away by themselves.
--
-- A user is "in" a room while they are a member of P..'p:r:'..room, live or
-- expired-but-not-yet-swept. Whoever adds them reports "came online", whoever
-- removes them reports "went offline": one script run each, so exactly once.

if redis.replicate_commands then redis.replicate_commands() end

local P = ARGV[1]

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Decimal text of an integer-valued number (tostring would use %.14g).
local function int(n)
  return string.format('%d', n)
end

local function k_gen(s) return P .. 'p:g:' .. s end
local function k_sess(s) return P .. 'p:s:' .. s end
local function k_srooms(s) return P .. 'p:sr:' .. s end
local function k_user(uk) return P .. 'p:u:' .. uk end
local function k_room(room) return P .. 'p:r:' .. room end
local function k_ru(room, user) return P .. 'p:ru:' .. room .. '|' .. user end

-- Mark a session live in its user's set until now + ttl; drop the user's
-- expired sessions while here.
local function touch_user(uk, s, now, ttl)
  local k = k_user(uk)
  redis.call('ZADD', k, int(now + ttl), s)
  redis.call('ZREMRANGEBYSCORE', k, '-inf', int(now))
  redis.call('PEXPIRE', k, int(2 * ttl))
end

-- Put (or keep) a session in a room until now + ttl. 1 if its user was not in
-- the room (came online), else 0.
local function enter(room, user, s, now, ttl)
  local exp = now + ttl
  local ru = k_ru(room, user)
  local r = k_room(room)
  redis.call('ZREMRANGEBYSCORE', ru, '-inf', int(now))
  redis.call('ZADD', ru, int(exp), s)
  redis.call('PEXPIRE', ru, int(2 * ttl))
  local absent = redis.call('ZSCORE', r, user) == false
  redis.call('ZADD', r, 'GT', int(exp), user)
  redis.call('PEXPIRE', r, int(2 * ttl))
  if absent then return 1 end
  return 0
end

-- Take a session out of a room. 1 if that took its user out of the room (went
-- offline: no live session of theirs is left there), else 0.
local function drop(room, user, s, now)
  local ru = k_ru(room, user)
  local r = k_room(room)
  redis.call('ZREM', ru, s)
  local top = redis.call('ZREVRANGE', ru, 0, 0, 'WITHSCORES')
  if top[2] and tonumber(top[2]) > now then
    -- Keep the user's score equal to their newest remaining session's.
    redis.call('ZADD', r, 'XX', top[2], user)
    return 0
  end
  redis.call('DEL', ru)
  return redis.call('ZREM', r, user)
end
