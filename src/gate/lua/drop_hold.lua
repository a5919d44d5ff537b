-- Ends a reservation that never heard back from the bus (its gateway died): drops the
-- hold and, with release = 1, gives its units back and forgets its idempotency key;
-- with release = 0 the order did reach the bus: its key replays it from now on.
-- KEYS: 1 meta, 2 stock, 3 buyers, 4 holds, 5 hold details, 6 released set.
-- ARGV: 1 order id, 2 release (0/1), 3 sale id (for the restock message),
--       4 the order's JSON (release = 0).
-- The idempotency key named in the details shares the sale's hash tag (same slot).
local detail = redis.call('HGET', KEYS[5], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
if not detail then
  return 0
end
local first = string.find(detail, '\n', 1, true)
local second = string.find(detail, '\n', first + 1, true)
local idem = string.sub(detail, first + 1, second - 1)
if ARGV[2] ~= '1' then
  if idem ~= '' then
    local previous = redis.call('GET', idem)
    if previous then
      local nl = string.find(previous, '\n', 1, true)
      if string.sub(previous, nl + 1) == 'inflight\n' .. ARGV[1] then
        redis.call('SET', idem, string.sub(previous, 1, nl) .. 'accepted\n' .. ARGV[4], 'KEEPTTL')
      end
    end
  end
  return 0
end
if redis.call('SADD', KEYS[6], ARGV[1]) == 0 then
  return 0
end
local user = string.sub(detail, 1, first - 1)
local total = 0
for index, units in string.gmatch(string.sub(detail, second + 1), '(%d+):(%d+)') do
  redis.call('HINCRBY', KEYS[2], index, tonumber(units))
  total = total + tonumber(units)
end
redis.call('HINCRBY', KEYS[1], 'left', total)
if redis.call('HINCRBY', KEYS[3], user, -total) <= 0 then
  redis.call('HDEL', KEYS[3], user)
end
if idem ~= '' then
  local previous = redis.call('GET', idem)
  if previous then
    local nl = string.find(previous, '\n', 1, true)
    if string.sub(previous, nl + 1) == 'inflight\n' .. ARGV[1] then
      redis.call('DEL', idem)
      -- The buyer's live keys (RedisGate's key_index): '{sale:<id>}:' is meta's prefix.
      local prefix = string.sub(KEYS[1], 1, #KEYS[1] - #'meta')
      redis.call('ZREM', prefix .. 'keys:' .. #user .. ':' .. user, idem)
    end
  end
end
redis.call('PUBLISH', 'flashsale:restock', ARGV[3])
return 1
