-- count(room) -> how many users are online in the room (live sessions only,
-- the users `room` would list).
-- ARGV: P, room
return redis.call('ZCOUNT', k_room(ARGV[2]), '(' .. int(now_ms()), '+inf')
