-- room(room) -> {user, session, entry_json, ...} for live sessions only
-- ARGV: P, room
local room = ARGV[2]
local live = '(' .. int(now_ms())
local out = {}
for _, user in ipairs(redis.call('ZRANGEBYSCORE', k_room(room), live, '+inf')) do
  for _, s in ipairs(redis.call('ZRANGEBYSCORE', k_ru(room, user), live, '+inf')) do
    local e = redis.call('HGET', k_sess(s), 'entry')
    if e then
      table.insert(out, user)
      table.insert(out, s)
      table.insert(out, e)
    end
  end
end
return out
