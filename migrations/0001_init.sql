-- Shared by SQLite and PostgreSQL: plain types only.
CREATE TABLE sales (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    per_user_limit BIGINT NOT NULL CHECK (per_user_limit >= 1),
    starts_at      BIGINT NOT NULL,
    ends_at        BIGINT,
    payment_window BIGINT NOT NULL DEFAULT 0,
    created_at     BIGINT NOT NULL
);

-- `sold` counts units held by orders that are pending or paid: the store's own
-- no-oversell check, whatever the gate decided.
CREATE TABLE sale_items (
    sale_id  TEXT NOT NULL REFERENCES sales (id),
    item_id  TEXT NOT NULL,
    position BIGINT NOT NULL,
    stock    BIGINT NOT NULL CHECK (stock >= 1),
    sold     BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (sale_id, item_id),
    CHECK (sold >= 0 AND sold <= stock)
);

-- Units each buyer holds in a sale: the per-user limit as a units check (the general
-- form of UNIQUE (sale_id, user_id) for limits above one).
CREATE TABLE buyers (
    sale_id   TEXT NOT NULL REFERENCES sales (id),
    user_id   TEXT NOT NULL,
    units     BIGINT NOT NULL,
    max_units BIGINT NOT NULL,
    PRIMARY KEY (sale_id, user_id),
    CHECK (units >= 0 AND units <= max_units)
);

CREATE TABLE orders (
    id              TEXT PRIMARY KEY,
    sale_id         TEXT NOT NULL REFERENCES sales (id),
    user_id         TEXT NOT NULL,
    items           TEXT NOT NULL,
    units           BIGINT NOT NULL CHECK (units >= 1),
    status          TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT,
    idempotency_key TEXT,
    fingerprint     TEXT NOT NULL,
    UNIQUE (sale_id, user_id, idempotency_key)
);

CREATE INDEX orders_by_sale ON orders (sale_id, user_id);
