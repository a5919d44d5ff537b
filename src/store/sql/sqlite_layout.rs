//! How an embedded (SQLite) store lays its orders out, so that a durable commit writes
//! few pages.
//!
//! Measured (BENCHMARKS.md 2b): in a B-tree keyed by buyer, every order of a batch lands
//! on a leaf of its own, and a commit writes each leaf it touched whole to the WAL and
//! fsyncs it. The per-buyer units (`buyers`) and the one-answer-per-key index
//! (`UNIQUE (sale_id, user_id, idempotency_key)` on `orders`) were two such leaves per
//! order: ~8 KiB of WAL per order, 10,500 orders/s at batches of 64. The orders
//! themselves are keyed by time (UUIDv7 ids), so they only ever append.
//!
//! So on SQLite the durable file holds the orders alone (appended), and the two checks
//! that need a lookup by buyer are tables of a **guard** database attached in memory to
//! the one writer connection: `guard.buyer_units` (units per buyer, `CHECK units <=
//! max_units`) and `guard.order_keys` (primary key `(sale, user_id, idempotency_key)`).
//! Triggers of that connection fill them, and the items' `sold` counters, as each order
//! goes in, in the statement that inserts it: the schema still refuses an order over the
//! limit, over the stock, or a second order for a key; and the guard is rebuilt from the
//! durable orders every time the writer connects, so a crash (which loses it) loses
//! nothing.
//!
//! A batch is then one statement (the orders as one JSON parameter, `json_each`), one
//! implicit transaction, one round trip to sqlx's SQLite thread: measured, the five
//! statements of the generic path cost 0.1-0.2 ms each in round trips and in preparing
//! SQL whose text changed with the batch size, against a commit of ~0.6 ms. PostgreSQL keeps both in its own tables:
//! its WAL records rows, not pages.
//!
//! The cost: one process writes a SQLite store (as it always did: the embedded
//! deployment), and opening a store reads every order that holds units or a key once
//! (~4.5 s per million orders here, half of them keyed).

use sqlx::{AnyConnection, AnyPool, Connection, Executor};

/// The writer's guard: attached to its connection, rebuilt from the orders each time.
/// `sale` is the sale's rowid in `sales` (stable while the connection lives), so a
/// buyer costs ~25 bytes and not the 32-character sale id again.
const GUARD: &[&str] = &[
    "ATTACH DATABASE ':memory:' AS guard",
    "CREATE TABLE guard.buyer_units (
        sale      INTEGER NOT NULL,
        user_id   TEXT NOT NULL,
        units     INTEGER NOT NULL,
        max_units INTEGER NOT NULL,
        PRIMARY KEY (sale, user_id),
        CHECK (units >= 0 AND units <= max_units)
    ) WITHOUT ROWID",
    "CREATE TABLE guard.order_keys (
        sale            INTEGER NOT NULL,
        user_id         TEXT NOT NULL,
        idempotency_key TEXT NOT NULL,
        PRIMARY KEY (sale, user_id, idempotency_key)
    ) WITHOUT ROWID",
    // max(): a limit lowered under orders already stored must not stop the store opening.
    "INSERT INTO guard.buyer_units (sale, user_id, units, max_units)
        SELECT s.rowid, o.user_id, SUM(o.units), MAX(s.per_user_limit, SUM(o.units))
        FROM orders o JOIN sales s ON s.id = o.sale_id
        WHERE o.status IN ('pending', 'paid') AND NOT (FINISHED)
        GROUP BY s.rowid, o.user_id",
    "INSERT INTO guard.order_keys (sale, user_id, idempotency_key)
        SELECT DISTINCT s.rowid, o.user_id, o.idempotency_key
        FROM orders o JOIN sales s ON s.id = o.sale_id
        WHERE o.idempotency_key IS NOT NULL AND NOT (FINISHED)",
    // The checks, as the schema's: every order stored by the writer passes through them
    // in its own statement, and a refusal aborts that statement whole. (Statements in a
    // trigger name their tables unqualified; the guard's names are its own.)
    "CREATE TEMP TRIGGER order_holds_units AFTER INSERT ON main.orders
     WHEN NEW.status IN ('pending', 'paid')
     BEGIN
        SELECT RAISE(ABORT, 'an order of an item the sale does not have')
        WHERE EXISTS (SELECT 1 FROM json_each(NEW.items) AS j WHERE NOT EXISTS (
            SELECT 1 FROM sale_items AS i WHERE i.sale_id = NEW.sale_id AND i.item_id = j.key));
        UPDATE sale_items
        SET sold = sold + (SELECT j.value FROM json_each(NEW.items) AS j WHERE j.key = item_id)
        WHERE sale_id = NEW.sale_id AND item_id IN (SELECT j.key FROM json_each(NEW.items) AS j);
        INSERT INTO buyer_units (sale, user_id, units, max_units)
        SELECT s.rowid, NEW.user_id, NEW.units, s.per_user_limit FROM sales AS s
        WHERE s.id = NEW.sale_id
        ON CONFLICT (sale, user_id) DO UPDATE SET units = units + excluded.units;
     END",
    "CREATE TEMP TRIGGER order_takes_key AFTER INSERT ON main.orders
     WHEN NEW.idempotency_key IS NOT NULL
     BEGIN
        INSERT INTO order_keys (sale, user_id, idempotency_key)
        SELECT s.rowid, NEW.user_id, NEW.idempotency_key FROM sales AS s WHERE s.id = NEW.sale_id;
     END",
];

/// Sales over for good (issue #24): ended, and their last payment window closed over an
/// hour ago, well past the engine's `retire_after`. Nothing can be bought in them; their
/// buyers and keys are not brought back into memory at each start.
const FINISHED: &str = "s.ends_at IS NOT NULL AND s.ends_at + s.payment_window * 1000 + 3600000 \
     < CAST((julianday('now') - 2440587.5) * 86400000.0 AS BIGINT)";

/// Attaches and fills the guard on the writer's connection.
pub(super) async fn attach_guard(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    let started = std::time::Instant::now();
    for statement in GUARD {
        let statement = statement.replace("FINISHED", FINISHED);
        conn.execute(sqlx::AssertSqlSafe(statement)).await?;
    }
    tracing::debug!(
        took_ms = started.elapsed().as_millis() as u64,
        "order guard rebuilt from the stored orders"
    );
    Ok(())
}

/// Rewrites a store made before the guard: `orders` without its UNIQUE constraint (a
/// table constraint: only a new table drops it), the `buyers` table dropped. SQLite's
/// documented way to change a table: foreign keys off, copy, drop, rename, check, in one
/// transaction. Does nothing on a store already laid out.
pub(super) async fn relayout(pool: &AnyPool) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let orders: String = sqlx::query_scalar(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'orders'",
    )
    .fetch_one(&mut *conn)
    .await?;
    if !orders.contains("UNIQUE") {
        return Ok(());
    }
    tracing::info!("laying the store's orders out for appends (once)");
    conn.execute("PRAGMA foreign_keys = OFF").await?;
    let mut tx = conn.begin().await?;
    for statement in [
        "CREATE TABLE orders_appended (
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
            release_pending BIGINT NOT NULL DEFAULT 0,
            failure         TEXT
        )",
        "INSERT INTO orders_appended (id, sale_id, user_id, items, units, status, created_at,
            expires_at, idempotency_key, fingerprint, release_pending, failure)
         SELECT id, sale_id, user_id, items, units, status, created_at,
            expires_at, idempotency_key, fingerprint, release_pending, failure FROM orders",
        "DROP TABLE orders",
        "ALTER TABLE orders_appended RENAME TO orders",
        "CREATE INDEX orders_pending_by_expiry ON orders (expires_at) WHERE status = 'pending'",
        "CREATE INDEX orders_release_pending ON orders (sale_id) WHERE release_pending = 1",
        // A sale's orders, for the audit and the gate's rebuild: ids are UUIDv7, so
        // during a sale this index too only appends.
        "CREATE INDEX orders_by_sale ON orders (sale_id, id)",
        "DROP TABLE buyers",
    ] {
        tx.execute(statement).await?;
    }
    let dangling = sqlx::query("PRAGMA foreign_key_check")
        .fetch_all(&mut *tx)
        .await?;
    if !dangling.is_empty() {
        return Err(sqlx::Error::Protocol(format!(
            "{} rows lost their reference while relaying orders out",
            dangling.len()
        )));
    }
    tx.commit().await?;
    conn.execute("PRAGMA foreign_keys = ON").await?;
    Ok(())
}
