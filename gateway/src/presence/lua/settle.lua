-- settle(session, generation, rooms) -> rooms where the user went offline
-- ARGV: P, session, generation, room...
-- Leaves every room of the session that is not listed, if the generation is
-- still the session's newest; otherwise changes nothing.
local s, gen = ARGV[2], ARGV[3]
if redis.call('GET', k_gen(s)) ~= gen then
  return {}
end
local keep = {}
for i = 4, #ARGV do
  keep[ARGV[i]] = true
end
local user = redis.call('HGET', k_sess(s), 'user')
local now = now_ms()
local offline = {}
for _, room in ipairs(redis.call('SMEMBERS', k_srooms(s))) do
  if not keep[room] then
    redis.call('SREM', k_srooms(s), room)
    if user and drop(room, user, s, now) == 1 then
      table.insert(offline, room)
    end
  end
end
return offline
