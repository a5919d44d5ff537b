-- Sub-stocks the Redis gate spreads a sale's stock over (issue #23); 1: one place.
ALTER TABLE sales ADD COLUMN shards BIGINT NOT NULL DEFAULT 1;
