-- expire_if(session, generation) -> {1, rooms where the user went offline...}
-- if the generation was the newest and the session is now removed, else {0}
-- ARGV: P, ttl_ms, session, generation
-- Leaves a tombstone ('-generation') for 2 * ttl, so a heartbeat of the same
-- generation that was already on its way cannot bring the session back.
local ttl = tonumber(ARGV[2])
local s, gen = ARGV[3], ARGV[4]
if redis.call('GET', k_gen(s)) ~= gen then
  return {0}
end
local f = redis.call('HMGET', k_sess(s), 'user', 'user_key')
local user, uk = f[1], f[2]
local now = now_ms()
local out = {1}
for _, room in ipairs(redis.call('SMEMBERS', k_srooms(s))) do
  if user and drop(room, user, s, now) == 1 then
    table.insert(out, room)
  end
end
redis.call('DEL', k_srooms(s), k_sess(s))
if uk then
  redis.call('ZREM', k_user(uk), s)
end
redis.call('SET', k_gen(s), '-' .. gen, 'PX', int(2 * ttl))
return out
