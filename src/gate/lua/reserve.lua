-- Decides one purchase, atomically: idempotency key, sale window, per-user limit, stock
-- of every item (all or nothing).
-- KEYS: 1 meta (hash), 2 stock (hash item index -> remaining), 3 buyers (hash user -> units),
--       4 idempotency key of this buyer (string "fingerprint\nanswer"), or the meta key again
--       when the request has no key, 5 holds (sorted set: order id by reservation time),
--       6 hold details (hash: order id -> "user\nkey\nindex:units,..."), 7 the buyer's
--       live keys (sorted set: key name by expiry time), or meta when no key.
-- ARGV: 1 keep keys at least until (ms since the epoch; 0: the sale has no end), 2 user,
--       3 fingerprint, 4 order id, 5 has key (0/1), 6 key TTL (ms), 7 most live keys per
--       buyer, then pairs (item index, units).
-- Returns {"unknown"} | {"key_reused"} | {"replay", answer} | {"refused", code, left}
--       | {"too_many_keys"}
--       | {"reserved", now}; answer is "inflight\n<order id>" or "accepted\n<order json>"
--       (a refusal is not remembered: a retry is decided afresh); left is the total stock left in the sale; now is Redis's clock
--       (ms), the one clock of every gateway: the window is decided on it, and the order
--       is created at it.
local meta = redis.call('HMGET', KEYS[1], 'starts_at', 'ends_at', 'limit', 'paused')
if not meta[1] then
  return {'unknown'}
end
local has_key = ARGV[5] == '1'
if has_key then
  local previous = redis.call('GET', KEYS[4])
  if previous then
    local nl = string.find(previous, '\n', 1, true)
    if string.sub(previous, 1, nl - 1) ~= ARGV[3] then
      return {'key_reused'}
    end
    return {'replay', string.sub(previous, nl + 1)}
  end
end

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local refusal = nil
if now < tonumber(meta[1]) then
  refusal = 'not_started'
elseif meta[2] ~= '' and now >= tonumber(meta[2]) then
  refusal = 'ended'
elseif meta[4] == '1' then
  refusal = 'paused'
end
local want = 0
for i = 8, #ARGV, 2 do
  want = want + tonumber(ARGV[i + 1])
end
-- A new key beyond the buyer's limit of live keys takes nothing (checked before the
-- stock, as the local gate does).
if has_key and not refusal then
  redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', now)
  if redis.call('ZCARD', KEYS[7]) >= tonumber(ARGV[7]) then
    return {'too_many_keys'}
  end
end
-- When both apply, sold_out wins over limit_reached (the same order as the local gate).
if not refusal then
  for i = 8, #ARGV, 2 do
    local have = tonumber(redis.call('HGET', KEYS[2], ARGV[i]) or '0')
    if have < tonumber(ARGV[i + 1]) then
      refusal = 'sold_out'
      break
    end
  end
end
if not refusal then
  local held = tonumber(redis.call('HGET', KEYS[3], ARGV[2]) or '0')
  if held + want > tonumber(meta[3]) then
    refusal = 'limit_reached'
  end
end
if not refusal then
  for i = 8, #ARGV, 2 do
    redis.call('HINCRBY', KEYS[2], ARGV[i], -tonumber(ARGV[i + 1]))
  end
  redis.call('HINCRBY', KEYS[1], 'left', -want)
  redis.call('HINCRBY', KEYS[3], ARGV[2], want)
  -- Held until the bus has the order (confirm) or it is released; a sweeper returns
  -- holds whose gateway died in between.
  local units = {}
  for i = 8, #ARGV, 2 do
    units[#units + 1] = ARGV[i] .. ':' .. ARGV[i + 1]
  end
  local key = ''
  if has_key then key = KEYS[4] end
  redis.call('ZADD', KEYS[5], now, ARGV[4])
  redis.call('HSET', KEYS[6], ARGV[4], ARGV[2] .. '\n' .. key .. '\n' .. table.concat(units, ','))
end
if has_key and not refusal then
  redis.call('SET', KEYS[4], ARGV[3] .. '\ninflight\n' .. ARGV[4])
  -- A key lives its TTL, and at least until the sale has ended and its payment window
  -- has passed: a retry before that must not reserve a second order.
  local ttl = math.max(tonumber(ARGV[1]) - now, tonumber(ARGV[6]))
  redis.call('PEXPIRE', KEYS[4], ttl)
  redis.call('ZADD', KEYS[7], now + ttl, KEYS[4])
  if redis.call('PTTL', KEYS[7]) < ttl then
    redis.call('PEXPIRE', KEYS[7], ttl)
  end
end
if refusal then
  return {'refused', refusal, tonumber(redis.call('HGET', KEYS[1], 'left') or '0')}
end
return {'reserved', now}
