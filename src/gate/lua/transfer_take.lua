-- A sharded sale (docs/redis.md): takes units out of one sub-stock (the donor) for
-- another (the receiver), into transit. The units leave the donor's stock and are
-- written down, in the same step, under the transfer's id in the donor's transit hash:
-- from then on they are counted there until the receiver has credited them.
-- KEYS: 1 donor meta, 2 donor stock, 3 donor transit (hash: transfer id ->
--       "receiver\nitem:units,item:units,…").
-- ARGV: 1 transfer id, 2 receiver shard, 3 share (0/1: give at least half of what the
--       donor has, so that stock moves toward demand in few transfers), then pairs
--       (item index, units wanted).
-- Returns {'unknown'} (the donor is lost) | {'taken', item, units, …} with the items it
-- gave something of (none: it had nothing).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'unknown'}
end
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then
  return {'taken'} -- an id is used once
end
local share = ARGV[3] == '1'
local reply = {'taken'}
local written = {}
local total = 0
for i = 4, #ARGV, 2 do
  local item, wanted = ARGV[i], tonumber(ARGV[i + 1])
  local has = tonumber(redis.call('HGET', KEYS[2], item) or '0')
  local give = wanted
  if share and math.floor(has / 2) > give then
    give = math.floor(has / 2)
  end
  if give > has then
    give = has
  end
  if give > 0 then
    redis.call('HINCRBY', KEYS[2], item, -give)
    reply[#reply + 1] = item
    reply[#reply + 1] = give
    written[#written + 1] = item .. ':' .. give
    total = total + give
  end
end
if total > 0 then
  redis.call('HINCRBY', KEYS[1], 'left', -total)
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[2] .. '\n' .. table.concat(written, ','))
end
return reply
