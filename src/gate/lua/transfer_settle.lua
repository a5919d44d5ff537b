-- A sharded sale: the donor forgets a transfer the receiver has credited.
-- KEYS: 1 donor transit. ARGV: 1 transfer id.
return redis.call('HDEL', KEYS[1], ARGV[1])
