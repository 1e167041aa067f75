-- refresh(sessions) -> {room, session, room, session, ...} where a user came
-- back (was not in the room)
-- ARGV: P, ttl_ms, then per session:
--   session, generation, user, user_key, entry_json, n, room_1 .. room_n
-- A session is refreshed (and whatever of it is missing re-created) when its
-- stored generation is this one, missing (expired, or Redis restarted empty),
-- or older than this one (the attach of this generation never reached Redis).
-- A newer generation (a resume elsewhere) or this generation's tombstone
-- (expire_if ran) leaves it alone. Rooms are only added, never removed.
local ttl = tonumber(ARGV[2])
local gc = int(2 * ttl)
local now = now_ms()
local out = {}
local i = 3
while i <= #ARGV do
  local s, gen, user, uk, entry = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local n = tonumber(ARGV[i + 5])
  local first = i + 6
  i = first + n
  local cur = redis.call('GET', k_gen(s))
  local mine = cur == gen
  if mine or not cur or math.abs(tonumber(cur)) < tonumber(gen) then
    redis.call('SET', k_gen(s), gen, 'PX', gc)
    local sk = k_sess(s)
    if not mine or redis.call('EXISTS', sk) == 0 then
      redis.call('HSET', sk, 'entry', entry, 'user', user, 'user_key', uk)
    end
    redis.call('PEXPIRE', sk, gc)
    touch_user(uk, s, now, ttl)
    local rk = k_srooms(s)
    for j = first, first + n - 1 do
      local room = ARGV[j]
      redis.call('SADD', rk, room)
      if enter(room, user, s, now, ttl) == 1 then
        table.insert(out, room)
        table.insert(out, s)
      end
    end
    redis.call('PEXPIRE', rk, gc)
  end
end
return out
