-- user(user_key) -> {session, entry_json, n, room_1 .. room_n, ...} for live
-- sessions only
-- ARGV: P, user_key
local uk = ARGV[2]
local live = '(' .. int(now_ms())
local out = {}
for _, s in ipairs(redis.call('ZRANGEBYSCORE', k_user(uk), live, '+inf')) do
  local e = redis.call('HGET', k_sess(s), 'entry')
  if e then
    local rooms = redis.call('SMEMBERS', k_srooms(s))
    table.insert(out, s)
    table.insert(out, e)
    table.insert(out, int(#rooms))
    for _, room in ipairs(rooms) do
      table.insert(out, room)
    end
  end
end
return out
