-- The order is on the bus (durable): the reservation is no longer at risk, and its
-- idempotency key now replays it.
-- KEYS: 1 holds (sorted set of reservations waiting for the bus), 2 hold details,
--       3 idempotency key (or the holds key again when the order has none).
-- ARGV: 1 order id, 2 order JSON, 3 has key (0/1).
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if ARGV[3] ~= '1' then
  return 1
end
local previous = redis.call('GET', KEYS[3])
if not previous then
  return 0
end
local nl = string.find(previous, '\n', 1, true)
if string.sub(previous, nl + 1) ~= 'inflight\n' .. ARGV[1] then
  return 0
end
redis.call('SET', KEYS[3], string.sub(previous, 1, nl) .. 'accepted\n' .. ARGV[2], 'KEEPTTL')
return 1
