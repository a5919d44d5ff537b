//! The one way orders get into the store. On PostgreSQL, a batch is a few statements
//! (the orders as one JSON parameter, then units sold per item and per buyer, summed) in
//! one transaction; on SQLite, one statement whose triggers do the counting
//! (`sqlite_layout.rs`). If the schema refuses anything in a batch, the batch is rolled
//! back and each order goes the same way again alone (PostgreSQL: in a savepoint each;
//! SQLite: a statement each), so that the refusal lands on the order that caused it.

use std::collections::{BTreeMap, HashSet};

use sqlx::{AnyConnection, Connection};
use tokio::time::Instant;

use super::{Dialect, SqlStore};
use crate::domain::Order;
use crate::store::{InsertOutcome, StoreError};

/// Why a batch did not go in.
enum BatchError {
    /// The schema refused it (oversell, over the limit, unknown sale or item): the
    /// orders' fault, not the database's.
    Refused(String),
    Database(sqlx::Error),
}

impl From<sqlx::Error> for BatchError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Database(db) if is_constraint(&*db) => {
                BatchError::Refused(db.message().to_string())
            }
            other => BatchError::Database(other),
        }
    }
}

impl SqlStore {
    /// Stores a batch in one transaction; each order succeeds or fails on its own.
    /// With a `deadline` (PostgreSQL), nothing commits past it (`insert_orders_within`).
    pub(super) async fn insert(
        &self,
        orders: &[Order],
        deadline: Option<Instant>,
    ) -> Result<Vec<InsertOutcome>, StoreError> {
        let mut conn = self.writer.acquire().await?;
        let stored = match self.dialect {
            Dialect::Sqlite => Self::insert_sqlite(&mut conn, orders).await,
            Dialect::Postgres => Self::insert_postgres(&mut conn, orders, deadline).await,
        };
        if let Err(e) = &stored {
            // One statement each on SQLite: its commit is the statement's.
            self.forget_writer_unless_clean(&mut conn, e, false);
        }
        stored
    }

    /// PostgreSQL: the batch in one transaction, a few statements.
    async fn insert_postgres(
        conn: &mut AnyConnection,
        orders: &[Order],
        deadline: Option<Instant>,
    ) -> Result<Vec<InsertOutcome>, StoreError> {
        // The whole batch, without a savepoint (nearly every batch goes in whole). A
        // refused batch is rolled back and goes again order by order.
        let mut tx = conn.begin().await?;
        Self::bound_by(&mut tx, deadline).await?;
        match Self::insert_batch(&mut tx, orders).await {
            Ok(outcomes) => {
                Self::still_in_time(deadline)?;
                tx.commit().await?;
                return Ok(outcomes);
            }
            Err(BatchError::Refused(reason)) => {
                tracing::debug!(%reason, "batch refused; storing its orders one by one");
                tx.rollback().await?;
            }
            Err(BatchError::Database(e)) => return Err(e.into()),
        }
        let mut tx = conn.begin().await?;
        Self::bound_by(&mut tx, deadline).await?;
        let mut outcomes = Vec::with_capacity(orders.len());
        for order in orders {
            let one = std::slice::from_ref(order);
            let outcome = match Self::in_savepoint(&mut tx, "one_order", one).await? {
                Ok(mut outcome) => outcome.pop().expect("one outcome per order"),
                Err(reason) => InsertOutcome::Rejected(reason),
            };
            outcomes.push(outcome);
        }
        Self::still_in_time(deadline)?;
        tx.commit().await?;
        Ok(outcomes)
    }

    /// Bounds each statement of the transaction (COMMIT included) and each lock wait by
    /// the time left before `deadline`: one round trip, the settings ending with the
    /// transaction.
    async fn bound_by(
        conn: &mut AnyConnection,
        deadline: Option<Instant>,
    ) -> Result<(), StoreError> {
        let Some(deadline) = deadline else {
            return Ok(());
        };
        Self::still_in_time(Some(deadline))?;
        let left = deadline
            .saturating_duration_since(Instant::now())
            .as_millis()
            .max(1)
            .to_string();
        sqlx::query(
            "SELECT set_config('statement_timeout', $1, true), set_config('lock_timeout', $1, true)",
        )
        .bind(left)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// `PastDeadline` once `deadline` has passed: the open transaction is then dropped
    /// (rolled back) instead of committed.
    fn still_in_time(deadline: Option<Instant>) -> Result<(), StoreError> {
        match deadline {
            Some(deadline) if Instant::now() >= deadline => Err(StoreError::PastDeadline),
            _ => Ok(()),
        }
    }

    /// SQLite: the batch as one statement, its own transaction; the writer's triggers
    /// count the units and check the limits (`sqlite_layout.rs`). A refused batch goes
    /// again order by order, each its own statement. An error part way through leaves
    /// some of those stored: the caller's answer is then "unknown", and the group commit
    /// looks each order up.
    async fn insert_sqlite(
        conn: &mut AnyConnection,
        orders: &[Order],
    ) -> Result<Vec<InsertOutcome>, StoreError> {
        match Self::insert_json(conn, orders).await {
            Ok(inserted) => return Ok(outcomes_of(orders, inserted)),
            Err(BatchError::Refused(reason)) => {
                tracing::debug!(%reason, "batch refused; storing its orders one by one")
            }
            Err(BatchError::Database(e)) => return Err(e.into()),
        }
        let mut outcomes = Vec::with_capacity(orders.len());
        for order in orders {
            let one = std::slice::from_ref(order);
            outcomes.push(match Self::insert_json(conn, one).await {
                Ok(inserted) => outcomes_of(one, inserted).pop().expect("one outcome"),
                Err(BatchError::Refused(reason)) => InsertOutcome::Rejected(reason),
                Err(BatchError::Database(e)) => return Err(e.into()),
            });
        }
        Ok(outcomes)
    }

    /// Inserts `orders` (those not stored yet) in one statement; the ids it inserted.
    async fn insert_json(
        conn: &mut AnyConnection,
        orders: &[Order],
    ) -> Result<HashSet<String>, BatchError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "INSERT INTO orders (id, sale_id, user_id, items, units, status, created_at, \
             expires_at, idempotency_key, fingerprint) \
             SELECT value ->> 'id', value ->> 'sale_id', value ->> 'user_id', \
             value ->> 'items', value ->> 'units', value ->> 'status', value ->> 'created_at', \
             value ->> 'expires_at', value ->> 'idempotency_key', value ->> 'fingerprint' \
             FROM json_each($1) WHERE true ON CONFLICT (id) DO NOTHING RETURNING id",
        )
        .bind(order_rows(orders))
        .fetch_all(&mut *conn)
        .await?;
        Ok(ids.into_iter().collect())
    }

    /// Runs `insert_batch` inside a savepoint: released when it went in, rolled back to
    /// when the schema refused it (`Ok(Err(reason))`).
    async fn in_savepoint(
        conn: &mut AnyConnection,
        name: &str,
        orders: &[Order],
    ) -> Result<Result<Vec<InsertOutcome>, String>, StoreError> {
        let savepoint = |verb: &str| sqlx::AssertSqlSafe(format!("{verb} {name}"));
        sqlx::query(savepoint("SAVEPOINT"))
            .execute(&mut *conn)
            .await?;
        match Self::insert_batch(conn, orders).await {
            Ok(outcomes) => {
                sqlx::query(savepoint("RELEASE SAVEPOINT"))
                    .execute(&mut *conn)
                    .await?;
                Ok(Ok(outcomes))
            }
            Err(BatchError::Refused(reason)) => {
                sqlx::query(savepoint("ROLLBACK TO SAVEPOINT"))
                    .execute(&mut *conn)
                    .await?;
                Ok(Err(reason))
            }
            Err(BatchError::Database(e)) => Err(e.into()),
        }
    }

    async fn insert_batch(
        conn: &mut AnyConnection,
        orders: &[Order],
    ) -> Result<Vec<InsertOutcome>, BatchError> {
        // The batch as one JSON parameter: one statement, the same text whatever the
        // batch size (prepared once), no ten binds per order.
        let ids: Vec<String> = sqlx::query_scalar(
            "INSERT INTO orders (id, sale_id, user_id, items, units, status, created_at, \
             expires_at, idempotency_key, fingerprint) \
             SELECT id, sale_id, user_id, items, units, status, created_at, expires_at, \
             idempotency_key, fingerprint FROM json_to_recordset($1::json) AS o(id text, \
             sale_id text, user_id text, items text, units bigint, status text, \
             created_at bigint, expires_at bigint, idempotency_key text, fingerprint text) \
             ON CONFLICT (id) DO NOTHING RETURNING id",
        )
        .bind(order_rows(orders))
        .fetch_all(&mut *conn)
        .await?;
        let mut inserted: HashSet<String> = ids.into_iter().collect();
        let mut outcomes = Vec::with_capacity(orders.len());
        let mut per_item: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        let mut per_buyer: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        for order in orders {
            // remove(): a second copy of the same order in one batch is a redelivery.
            if !inserted.remove(&order.id) {
                outcomes.push(InsertOutcome::AlreadyStored);
                continue;
            }
            outcomes.push(InsertOutcome::Stored);
            if order.status.holds_stock() {
                for (item, units) in &order.items {
                    *per_item.entry((&order.sale_id, item)).or_default() += *units as i64;
                }
                *per_buyer
                    .entry((&order.sale_id, &order.user_id))
                    .or_default() += order.total_units() as i64;
            }
        }
        for ((sale_id, item), units) in per_item {
            let updated = sqlx::query(
                "UPDATE sale_items SET sold = sold + $1 WHERE sale_id = $2 AND item_id = $3",
            )
            .bind(units)
            .bind(sale_id)
            .bind(item)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if updated != 1 {
                return Err(BatchError::Refused(format!(
                    "sale {sale_id} has no item {item:?}"
                )));
            }
        }
        if !per_buyer.is_empty() {
            let buyers: Vec<_> = per_buyer
                .iter()
                .map(|((sale_id, user_id), units)| BuyerUnits {
                    sale_id,
                    user_id,
                    units: *units,
                })
                .collect();
            let stored = sqlx::query(
                "INSERT INTO buyers (sale_id, user_id, units, max_units) \
                 SELECT b.sale_id, b.user_id, b.units, s.per_user_limit \
                 FROM json_to_recordset($1::json) AS b(sale_id text, user_id text, units bigint) \
                 JOIN sales s ON s.id = b.sale_id \
                 ON CONFLICT (sale_id, user_id) DO UPDATE SET units = buyers.units + excluded.units",
            )
            .bind(serde_json::to_string(&buyers).expect("buyers serialize"))
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if stored as usize != buyers.len() {
                return Err(BatchError::Refused(
                    "an order of a sale that does not exist".into(),
                ));
            }
        }
        Ok(outcomes)
    }
}

/// An order as a row of the JSON parameter both dialects insert from.
#[derive(serde::Serialize)]
struct OrderRow<'a> {
    id: &'a str,
    sale_id: &'a str,
    user_id: &'a str,
    items: String,
    units: u32,
    status: &'a str,
    created_at: i64,
    expires_at: Option<i64>,
    idempotency_key: Option<&'a str>,
    fingerprint: &'a str,
}

fn order_rows(orders: &[Order]) -> String {
    let rows: Vec<_> = orders
        .iter()
        .map(|order| OrderRow {
            id: &order.id,
            sale_id: &order.sale_id,
            user_id: &order.user_id,
            items: serde_json::to_string(&order.items).expect("a map of strings to numbers"),
            units: order.total_units(),
            status: order.status.as_str(),
            created_at: order.created_at,
            expires_at: order.expires_at,
            idempotency_key: order.idempotency_key.as_deref(),
            fingerprint: &order.fingerprint,
        })
        .collect();
    serde_json::to_string(&rows).expect("orders serialize")
}

#[derive(serde::Serialize)]
struct BuyerUnits<'a> {
    sale_id: &'a str,
    user_id: &'a str,
    units: i64,
}

/// Each order's outcome, given the ids a statement inserted: one not inserted was stored
/// before (a redelivery), and so is a second copy of the same order in one batch.
fn outcomes_of(orders: &[Order], mut inserted: HashSet<String>) -> Vec<InsertOutcome> {
    orders
        .iter()
        .map(|order| match inserted.remove(&order.id) {
            true => InsertOutcome::Stored,
            false => InsertOutcome::AlreadyStored,
        })
        .collect()
}

/// Whether a database error is a constraint violation (the order's own fault), as
/// opposed to a failure of the database (the batch's).
pub(crate) fn is_constraint(e: &dyn sqlx::error::DatabaseError) -> bool {
    use sqlx::error::ErrorKind;
    // 1811: SQLITE_CONSTRAINT_TRIGGER, a trigger's RAISE(ABORT) (`sqlite_layout.rs`).
    matches!(
        e.kind(),
        ErrorKind::UniqueViolation
            | ErrorKind::ForeignKeyViolation
            | ErrorKind::NotNullViolation
            | ErrorKind::CheckViolation
    ) || e.code().as_deref() == Some("1811")
}
