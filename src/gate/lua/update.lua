-- An operator's change of a sale: its end, its pause, and stock added to its items.
-- Idempotent: an item's stock grows only by the difference between the total given and
-- the total recorded (`total:<index>` in meta), so a retry or a late, older total adds
-- nothing, and units are never taken away.
-- KEYS: 1 meta, 2 stock. ARGV: 1 starts_at, 2 ends_at ('' for none), 3 paused (0/1),
--       4 sale id (for the restock message), then the total stock of each item in order.
-- Returns 'unknown' if the gate does not hold the sale, else 'updated'.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 'unknown'
end
redis.call('HSET', KEYS[1], 'starts_at', ARGV[1], 'ends_at', ARGV[2], 'paused', ARGV[3])
local added = 0
for i = 5, #ARGV do
  local index = tostring(i - 5)
  local total = tonumber(ARGV[i])
  local known = redis.call('HGET', KEYS[1], 'total:' .. index)
  -- A sale opened before totals were recorded: take this total as the base.
  if known and total > tonumber(known) then
    local more = total - tonumber(known)
    redis.call('HINCRBY', KEYS[2], index, more)
    added = added + more
  end
  if not known or total > tonumber(known) then
    redis.call('HSET', KEYS[1], 'total:' .. index, total)
  end
end
if added > 0 then
  redis.call('HINCRBY', KEYS[1], 'left', added)
end
-- Every gateway drops its sold-out flag (stock came back, or the window changed).
redis.call('PUBLISH', 'flashsale:restock', ARGV[4])
return 'updated'
