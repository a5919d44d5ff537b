-- A sharded sale: the receiver of a transfer adds its units to its stock, once per
-- transfer id whoever calls (the gateway that took them, or any gateway recovering a
-- transfer whose taker died).
-- KEYS: 1 receiver meta, 2 receiver stock, 3 receiver's credited transfers (set).
-- ARGV: 1 transfer id, 2 sale id (for the restock message), then pairs (item index, units).
-- Returns -1 when the receiver is lost (the units stay in transit until it is rebuilt),
-- 0 when the transfer was credited before, 1 when its units were added now.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
if redis.call('SADD', KEYS[3], ARGV[1]) == 0 then
  return 0
end
local total = 0
for i = 3, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[2], ARGV[i], tonumber(ARGV[i + 1]))
  total = total + tonumber(ARGV[i + 1])
end
redis.call('HINCRBY', KEYS[1], 'left', total)
redis.call('PUBLISH', 'flashsale:restock', ARGV[2])
return 1
