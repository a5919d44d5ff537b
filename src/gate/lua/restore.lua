-- Rebuilds a lost sale from the store's snapshot, only if the caller still holds the
-- rebuild lease and the sale is still missing: a second or late restore never writes
-- over reservations made after the first. Stamps the sale with `rebuilt_at` (Redis's
-- clock): releases of orders placed before it give units back only for the orders
-- counted here (see release.lua).
-- KEYS: 1 meta, 2 stock, 3 buyers, 4 rebuild lease, 5 counted orders, 6 holds,
--       7 hold details, then the idempotency key of each keyed order.
-- ARGV: 1 lease token, 2 starts_at, 3 ends_at ('' for none), 4 limit, 5 keys expire at
--       (ms; the buyers' key counts start afresh: see README), 6 item count n, then n
--       pairs (remaining, total stock), then paused (0/1), then a buyer count b
--       and b pairs (user, units), then a count h and h counted order ids, then one
--       value per idempotency key (KEYS[8..]).
-- Returns 'restored', 'not_owner' or 'exists'.
if redis.call('GET', KEYS[4]) ~= ARGV[1] then
  return 'not_owner'
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 'exists'
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('DEL', KEYS[2], KEYS[3], KEYS[5], KEYS[6], KEYS[7])
local at = 7
local left = 0
for i = 0, tonumber(ARGV[6]) - 1 do
  redis.call('HSET', KEYS[2], tostring(i), ARGV[at])
  left = left + tonumber(ARGV[at])
  redis.call('HSET', KEYS[1], 'total:' .. tostring(i), ARGV[at + 1])
  at = at + 2
end
local paused = ARGV[at]
at = at + 1
local buyers = tonumber(ARGV[at])
at = at + 1
for _ = 1, buyers do
  redis.call('HSET', KEYS[3], ARGV[at], ARGV[at + 1])
  at = at + 2
end
local counted = tonumber(ARGV[at])
at = at + 1
for _ = 1, counted do
  redis.call('SADD', KEYS[5], ARGV[at])
  at = at + 1
end
local keep_until = tonumber(ARGV[5])
for k = 8, #KEYS do
  redis.call('SET', KEYS[k], ARGV[at])
  redis.call('PEXPIRE', KEYS[k], math.max(keep_until - now, 1000))
  at = at + 1
end
-- meta last: the sale exists for the other gateways once everything is in.
redis.call('HSET', KEYS[1], 'starts_at', ARGV[2], 'ends_at', ARGV[3], 'limit', ARGV[4],
  'left', left, 'rebuilt_at', now, 'paused', paused)
return 'restored'
