-- Gives an order's units back, once per order, and tells every gateway that stock is back.
-- KEYS: 1 meta, 2 stock, 3 buyers, 4 idempotency key of the order (or meta when none),
--       5 set of released order ids, 6 holds, 7 hold details.
--       8 ids of the orders the last rebuild counted, 9 the buyer's live keys (or meta).
-- ARGV: 1 user, 2 order id, 3 forget the key (0/1; 0 when the order has no key),
--       4 sale id (for the restock message), 5 the order's creation time (ms, Redis's
--       clock), 6 the order's JSON, then pairs (item index, units).
-- Returns -1 when the sale is unknown (lost: the caller rebuilds it), 0 when there was
-- nothing to give back, 1 when the units went back.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
local rebuilt_at = redis.call('HGET', KEYS[1], 'rebuilt_at')
redis.call('ZREM', KEYS[6], ARGV[2])
redis.call('HDEL', KEYS[7], ARGV[2])
-- An ended order (cancelled, expired, failed) whose key was never confirmed (its gateway
-- died after the bus took it): the hold goes now, so the key must answer the order, or
-- it would stay "in flight" with nothing left to resolve it.
if ARGV[3] ~= '1' and KEYS[4] ~= KEYS[1] then
  local previous = redis.call('GET', KEYS[4])
  if previous then
    local nl = string.find(previous, '\n', 1, true)
    if string.sub(previous, nl + 1) == 'inflight\n' .. ARGV[2] then
      redis.call('SET', KEYS[4], string.sub(previous, 1, nl) .. 'accepted\n' .. ARGV[6], 'KEEPTTL')
    end
  end
end
if redis.call('SADD', KEYS[5], ARGV[2]) == 0 then
  return 0
end
-- An order placed before the last rebuild holds units here only if the rebuild counted
-- it (it was stored or on the bus, and live); any other was never put back in.
if rebuilt_at and tonumber(ARGV[5]) < tonumber(rebuilt_at) then
  if redis.call('SREM', KEYS[8], ARGV[2]) == 0 then
    return 0
  end
end
local total = 0
for i = 7, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[2], ARGV[i], tonumber(ARGV[i + 1]))
  total = total + tonumber(ARGV[i + 1])
end
redis.call('HINCRBY', KEYS[1], 'left', total)
if redis.call('HINCRBY', KEYS[3], ARGV[1], -total) <= 0 then
  redis.call('HDEL', KEYS[3], ARGV[1])
end
if ARGV[3] == '1' then
  local previous = redis.call('GET', KEYS[4])
  if previous then
    local nl = string.find(previous, '\n', 1, true)
    local answer = string.sub(previous, nl + 1)
    if answer == 'inflight\n' .. ARGV[2] then
      redis.call('DEL', KEYS[4])
      redis.call('ZREM', KEYS[9], KEYS[4])
    end
  end
end
redis.call('PUBLISH', 'flashsale:restock', ARGV[4])
return 1
