//! Expiry in batches (issue #24): one transaction ends a batch of overdue orders, where
//! one transaction per order expired 400–900 orders/s and shared SQLite's one writer
//! with the group commit of new orders a row at a time.

use std::collections::BTreeMap;

use sqlx::AnyConnection;
use sqlx::Connection;

use super::rows::{order_columns, order_from_row};
use super::{Dialect, SqlStore};
use crate::domain::{Millis, Order};
use crate::store::StoreError;

/// Rows of a multi-row statement: 3 parameters each, far below either database's limit.
/// Such a statement's text depends on its number of rows, so it is not kept prepared
/// (`persistent(false)`): sqlx keeps up to 100 statements per connection, and programs
/// of up to 500 rows each would fill the writer's cache and push out the group commit's
/// own insert.
const ROWS_PER_STATEMENT: usize = 500;

impl SqlStore {
    /// Expires up to `limit` pending orders whose window has passed on the database's
    /// clock, oldest first, in one transaction: the orders move (release pending), their
    /// units leave the store's counters, their history gets `expired` at `at`. The
    /// update is conditional (still `pending`, still overdue), so a payment racing the
    /// sweep wins or loses whole. On PostgreSQL, rows another sweeper holds are skipped
    /// (`FOR UPDATE SKIP LOCKED`): several gateways share the work without waiting on
    /// each other. SQLite has one writer: there is nothing to share.
    pub(super) async fn expire_batch_on(
        &self,
        conn: &mut AnyConnection,
        limit: i64,
        at: Millis,
        at_commit: &mut bool,
    ) -> Result<Vec<Order>, StoreError> {
        let now = self.dialect.now_ms();
        let update = match self.dialect {
            // The batch is chosen once, in a materialized CTE: as a plain `IN (SELECT …
            // LIMIT n FOR UPDATE SKIP LOCKED)` PostgreSQL may run the subquery again per
            // row and update more than `n` (measured: 10 of a limit of 4).
            Dialect::Postgres => format!(
                "WITH batch AS MATERIALIZED (SELECT id FROM orders \
                 WHERE status = 'pending' AND expires_at <= {now} \
                 ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
                 UPDATE orders SET status = 'expired', release_pending = 1 \
                 WHERE status = 'pending' AND id IN (SELECT id FROM batch) \
                 RETURNING {}",
                order_columns!()
            ),
            Dialect::Sqlite => format!(
                "UPDATE orders SET status = 'expired', release_pending = 1 \
                 WHERE status = 'pending' AND expires_at <= {now} AND id IN \
                 (SELECT id FROM orders WHERE status = 'pending' AND expires_at <= {now} \
                  ORDER BY expires_at LIMIT $1) \
                 RETURNING {}",
                order_columns!()
            ),
        };
        let mut tx = conn.begin().await?;
        let expired = sqlx::query(sqlx::AssertSqlSafe(update))
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(order_from_row)
            .collect::<Result<Vec<Order>, StoreError>>()?;
        // RETURNING follows no order: oldest first, as chosen.
        let mut expired = expired;
        expired.sort_by(|a, b| (a.expires_at, &a.id).cmp(&(b.expires_at, &b.id)));

        // The store's counters: sold per item, units per buyer, summed per row first.
        let mut sold: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        let mut buyers: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        for order in &expired {
            for (item, units) in &order.items {
                *sold.entry((&order.sale_id, item)).or_default() += *units as i64;
            }
            *buyers.entry((&order.sale_id, &order.user_id)).or_default() +=
                order.total_units() as i64;
        }
        for ((sale, item), units) in sold {
            sqlx::query(
                "UPDATE sale_items SET sold = sold - $1 WHERE sale_id = $2 AND item_id = $3",
            )
            .bind(units)
            .bind(sale)
            .bind(item)
            .execute(&mut *tx)
            .await?;
        }
        // One statement per sale and chunk, joined with a list of values: a statement per
        // buyer cost a round trip each (to PostgreSQL, or to sqlx's SQLite thread).
        let rows: Vec<_> = buyers.into_iter().collect();
        for sale_rows in rows.chunk_by(|a, b| a.0.0 == b.0.0) {
            for part in sale_rows.chunks(ROWS_PER_STATEMENT) {
                let values = (0..part.len())
                    .map(|i| format!("(${}, CAST(${} AS BIGINT))", 2 * i + 2, 2 * i + 3))
                    .collect::<Vec<_>>()
                    .join(", ");
                let mut query = sqlx::query(sqlx::AssertSqlSafe(
                    self.dialect.release_units_of_buyers(&values),
                ))
                .persistent(false)
                .bind(part[0].0.0);
                for ((_, user), units) in part {
                    query = query.bind(*user).bind(*units);
                }
                query.execute(&mut *tx).await?;
            }
        }
        for part in expired.chunks(ROWS_PER_STATEMENT) {
            let values = (0..part.len())
                .map(|i| format!("(${}, 'expired', $1)", i + 2))
                .collect::<Vec<_>>()
                .join(", ");
            let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO order_events (order_id, status, at) VALUES {values}"
            )))
            .persistent(false)
            .bind(at);
            for order in part {
                query = query.bind(&order.id);
            }
            query.execute(&mut *tx).await?;
        }
        *at_commit = true;
        tx.commit().await?;
        Ok(expired)
    }

    /// Marks the releases of `ids` done, a statement per chunk.
    pub(super) async fn mark_released_batch(&self, ids: &[String]) -> Result<(), StoreError> {
        for part in ids.chunks(ROWS_PER_STATEMENT) {
            let placeholders = (1..=part.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE orders SET release_pending = 0 WHERE id IN ({placeholders})"
            )))
            .persistent(false);
            for id in part {
                query = query.bind(id);
            }
            // Through the writer, as `mark_released` (SQLITE_BUSY against the writer).
            query.execute(&self.writer).await?;
        }
        Ok(())
    }
}
