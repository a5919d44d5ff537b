-- Renews (ARGV[2] = milliseconds) or ends (ARGV[2] = 0) a rebuild lease, only if the
-- caller still owns it. KEYS: 1 the lease. ARGV: 1 owner token, 2 new expiry.
-- Returns 1 if the caller owned it, else 0.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[2] == '0' then
  redis.call('DEL', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
