-- The line in front of a sale (issue #25): the sale's `queue` settings (JSON), and the
-- tickets of its line, each decided once, in `seq` order.
ALTER TABLE sales ADD COLUMN queue TEXT;

CREATE TABLE tickets (
    id          TEXT PRIMARY KEY,
    sale_id     TEXT NOT NULL REFERENCES sales (id),
    user_id     TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    fingerprint TEXT NOT NULL,
    nonce       TEXT NOT NULL,
    joined_at   BIGINT NOT NULL,
    status      TEXT NOT NULL,
    order_id    TEXT,
    refusal     TEXT,
    decided_at  BIGINT,
    UNIQUE (sale_id, seq),
    UNIQUE (sale_id, user_id)
);
