-- An operator may pause a sale (purchases refused `paused` until resumed), end it early
-- (ends_at moved to now) and add stock (sale_items.stock grows).
ALTER TABLE sales ADD COLUMN paused BIGINT NOT NULL DEFAULT 0;
