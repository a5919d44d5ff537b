-- Order lifecycle: pending -> paid | cancelled | expired, each step recorded once.
CREATE TABLE order_events (
    order_id TEXT NOT NULL REFERENCES orders (id),
    status   TEXT NOT NULL,
    at       BIGINT NOT NULL,
    PRIMARY KEY (order_id, status)
);

-- 1 once an order was cancelled or expired in the store, until the gate has its units
-- back; the sweeper finishes what a crash interrupted.
ALTER TABLE orders ADD COLUMN release_pending BIGINT NOT NULL DEFAULT 0;

CREATE INDEX orders_by_expiry ON orders (status, expires_at);
CREATE INDEX orders_by_release ON orders (release_pending);
