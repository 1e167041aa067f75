-- join(room, session) -> 1 if the user came online in the room, else 0
-- ARGV: P, ttl_ms, room, session
local ttl = tonumber(ARGV[2])
local room, s = ARGV[3], ARGV[4]
local f = redis.call('HMGET', k_sess(s), 'user', 'user_key')
local user, uk = f[1], f[2]
if not user then
  return redis.error_reply('session ' .. s .. ' is not connected')
end
local now = now_ms()
touch_user(uk, s, now, ttl)
redis.call('SADD', k_srooms(s), room)
redis.call('PEXPIRE', k_srooms(s), int(2 * ttl))
return enter(room, user, s, now, ttl)
