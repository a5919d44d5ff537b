-- Every order written during a sale touches each index of `orders`; keep only those
-- a query needs, and keep the lifecycle ones to the few rows they look for.

-- (sale_id, user_id) is the prefix of the UNIQUE (sale_id, user_id, idempotency_key) index.
DROP INDEX orders_by_sale;

-- The sweeper looks only for pending orders past their expiry, and for releases to finish.
DROP INDEX orders_by_expiry;
CREATE INDEX orders_pending_by_expiry ON orders (expires_at) WHERE status = 'pending';

DROP INDEX orders_by_release;
CREATE INDEX orders_release_pending ON orders (sale_id) WHERE release_pending = 1;
