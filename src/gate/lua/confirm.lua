-- The order is durable: its idempotency key now replays it.
-- KEYS: 1 idempotency key. ARGV: 1 order id, 2 order JSON.
local previous = redis.call('GET', KEYS[1])
if not previous then
  return 0
end
local nl = string.find(previous, '\n', 1, true)
if string.sub(previous, nl + 1) ~= 'inflight\n' .. ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], string.sub(previous, 1, nl) .. 'accepted\n' .. ARGV[2], 'KEEPTTL')
return 1
