-- Extend a room ownership lease, only if this node still holds it.
-- KEYS[1]: lease key; ARGV[1]: node id; ARGV[2]: lease in milliseconds.
-- Returns 1 if renewed, 0 if the lease is gone or held by another node.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
