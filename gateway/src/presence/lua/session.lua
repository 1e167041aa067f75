-- session(session) -> entry_json if the session is attached and live, else nil
-- ARGV: P, session
local s = ARGV[2]
local f = redis.call('HMGET', k_sess(s), 'entry', 'user_key')
if not f[1] or not f[2] then
  return false
end
local score = redis.call('ZSCORE', k_user(f[2]), s)
if score and tonumber(score) > now_ms() then
  return f[1]
end
return false
