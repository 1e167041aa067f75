-- sweep(room, limit) -> users removed from the room because every session of
-- theirs there expired (at most `limit` per run)
-- ARGV: P, room, limit
local room, limit = ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local r = k_room(room)
local gone = {}
for _, user in ipairs(redis.call('ZRANGEBYSCORE', r, '-inf', int(now), 'LIMIT', 0, int(limit))) do
  local ru = k_ru(room, user)
  redis.call('ZREMRANGEBYSCORE', ru, '-inf', int(now))
  local top = redis.call('ZREVRANGE', ru, 0, 0, 'WITHSCORES')
  if top[2] then
    -- A live session is left (the user's score lagged behind it): keep them.
    redis.call('ZADD', r, 'XX', top[2], user)
  else
    redis.call('DEL', ru)
    redis.call('ZREM', r, user)
    table.insert(gone, user)
  end
end
return gone
