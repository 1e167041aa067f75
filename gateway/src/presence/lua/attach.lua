-- attach(entry) -> generation
-- ARGV: P, ttl_ms, session, user, user_key, entry_json
-- The generation is above every earlier one of the session, and above
-- now_ms * 1000, so it stays above the generations a node may still hold even
-- after the counter was lost (Redis restarted empty, or the key expired).
-- The session's rooms are kept for settle.
local ttl = tonumber(ARGV[2])
local s, user, uk, entry = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local now = now_ms()
local cur = tonumber(redis.call('GET', k_gen(s)) or '0')
local gen = math.max(math.abs(cur) + 1, now * 1000)
redis.call('SET', k_gen(s), int(gen), 'PX', int(2 * ttl))
local sk = k_sess(s)
local old_uk = redis.call('HGET', sk, 'user_key')
if old_uk and old_uk ~= uk then
  redis.call('ZREM', k_user(old_uk), s)
end
redis.call('HSET', sk, 'entry', entry, 'user', user, 'user_key', uk)
redis.call('PEXPIRE', sk, int(2 * ttl))
redis.call('PEXPIRE', k_srooms(s), int(2 * ttl))
touch_user(uk, s, now, ttl)
return gen
