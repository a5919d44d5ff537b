-- A sale's own rate limits for its purchases, as JSON ({"per_buyer": "2/s burst 3",
-- "per_ip": "off"}); NULL means the gateway's defaults.
ALTER TABLE sales ADD COLUMN rate_limits TEXT;
