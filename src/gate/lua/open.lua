-- Makes a sale known with its full stock, unless it is known already.
-- KEYS: 1 meta, 2 stock. ARGV: 1 starts_at, 2 ends_at ('' for none), 3 limit,
--       then the stock of each item in order (recorded as its total, see update.lua).
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local left = 0
for i = 4, #ARGV do
  redis.call('HSET', KEYS[2], tostring(i - 4), ARGV[i])
  redis.call('HSET', KEYS[1], 'total:' .. tostring(i - 4), ARGV[i])
  left = left + tonumber(ARGV[i])
end
redis.call('HSET', KEYS[1], 'starts_at', ARGV[1], 'ends_at', ARGV[2], 'limit', ARGV[3], 'left', left,
  'paused', '0')
return 1
