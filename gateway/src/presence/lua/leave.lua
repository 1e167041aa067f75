-- leave(room, session) -> 1 if the user went offline in the room, else 0
-- ARGV: P, room, session
local room, s = ARGV[2], ARGV[3]
if redis.call('SREM', k_srooms(s), room) == 0 then
  return 0
end
local user = redis.call('HGET', k_sess(s), 'user')
if not user then
  return 0
end
return drop(room, user, s, now_ms())
