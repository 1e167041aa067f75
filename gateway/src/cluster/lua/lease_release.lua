-- Give a room ownership lease up, only if this node holds it.
-- KEYS[1]: lease key; ARGV[1]: node id. Returns 1 if released.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
