//! The SQL order store, for SQLite (embedded) and PostgreSQL (distributed): the same
//! migrations and the same statements through sqlx's `Any` driver. SQLite runs in WAL
//! mode with synchronous=FULL, so a committed batch survives a power cut, not only a
//! crash. `insert.rs` is the one way orders get in; `rows.rs` reads them back;
//! `dialect.rs` is what differs between the two databases.

mod dialect;
mod expiry;
mod insert;
mod rows;
mod sqlite_layout;
#[cfg(test)]
mod tests;
mod tickets;

use async_trait::async_trait;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyConnection, AnyPool, Connection, Executor, Row};

pub use dialect::Dialect;
pub(crate) use insert::is_constraint;

use super::{InsertOutcome, OrderStore, StoreError, StoreUrl, Transition};
use crate::domain::{Item, Millis, Order, OrderStatus, Sale};
use rows::{order_columns, order_from_row, u32_column};

pub struct SqlStore {
    pool: AnyPool,
    /// Where orders are written and their units given back (the pool itself on
    /// PostgreSQL; on SQLite one connection, which holds the order guard).
    writer: AnyPool,
    dialect: Dialect,
}

/// What a connection of the store is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Reader,
    /// SQLite's one writer: the order guard attached.
    Writer,
}

impl SqlStore {
    pub async fn connect(url: &StoreUrl) -> Result<Self, StoreError> {
        let (dialect, url) = (url.dialect, url.as_str());
        sqlx::any::install_default_drivers();
        let (url, max_connections) = match dialect {
            // mode=rwc: create the file if it is missing.
            Dialect::Sqlite if !url.contains('?') => (format!("{url}?mode=rwc"), 4),
            Dialect::Sqlite => (url.to_string(), 4),
            Dialect::Postgres => (url.to_string(), 16),
        };
        let pool = Self::pool(dialect, &url, max_connections, Role::Reader).await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        let writer = match dialect {
            // SQLite has one writer at a time anyway; a connection of its own keeps the
            // written pages in its cache (through the shared pool, every batch landed on
            // a connection whose cache another one had made stale) and holds the guard.
            Dialect::Sqlite => {
                sqlite_layout::relayout(&pool).await?;
                Self::pool(dialect, &url, 1, Role::Writer).await?
            }
            Dialect::Postgres => pool.clone(),
        };
        Ok(SqlStore {
            pool,
            writer,
            dialect,
        })
    }

    /// Sales with their items, newest first: one sale (`id`), the `newest` few, or all.
    /// One statement for the sales and one per 1,000 of them for their items, whatever
    /// their number (issue #21: a list took two statements per sale).
    async fn sales(
        &self,
        id: Option<&str>,
        newest: Option<usize>,
    ) -> Result<Vec<Sale>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, per_user_limit, starts_at, ends_at, payment_window, created_at, \
             rate_limits, paused, shards, queue FROM sales WHERE ($1 = '' OR id = $1) \
             ORDER BY created_at DESC, id DESC LIMIT $2",
        )
        .bind(id.unwrap_or(""))
        .bind(newest.map_or(i64::MAX, |n| n.min(i64::MAX as usize) as i64))
        .fetch_all(&self.pool)
        .await?;
        let mut sales =
            rows.iter()
                .map(|row| {
                    let id: String = row.try_get("id")?;
                    Ok(Sale {
                        name: row.try_get("name")?,
                        items: Vec::new(),
                        per_user_limit: u32_column(row, "per_user_limit")?,
                        starts_at: row.try_get("starts_at")?,
                        ends_at: row.try_get("ends_at")?,
                        payment_window: u32_column(row, "payment_window")?,
                        created_at: row.try_get("created_at")?,
                        rate_limits: match row.try_get::<Option<String>, _>("rate_limits")? {
                            Some(json) => serde_json::from_str(&json).map_err(|e| {
                                StoreError::Corrupt(format!("sale {id}: rate_limits: {e}"))
                            })?,
                            None => Default::default(),
                        },
                        paused: row.try_get::<i64, _>("paused")? != 0,
                        shards: u32_column(row, "shards")?,
                        queue: match row.try_get::<Option<String>, _>("queue")? {
                            Some(json) => Some(serde_json::from_str(&json).map_err(|e| {
                                StoreError::Corrupt(format!("sale {id}: queue: {e}"))
                            })?),
                            None => None,
                        },
                        id,
                    })
                })
                .collect::<Result<Vec<Sale>, StoreError>>()?;
        let at: std::collections::HashMap<String, usize> = sales
            .iter()
            .enumerate()
            .map(|(n, sale)| (sale.id.clone(), n))
            .collect();
        let ids: Vec<String> = sales.iter().map(|s| s.id.clone()).collect();
        for chunk in ids.chunks(1000) {
            let placeholders = (1..=chunk.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT sale_id, item_id, stock FROM sale_items WHERE sale_id IN ({placeholders}) \
                 ORDER BY sale_id, position"
            )));
            for id in chunk {
                query = query.bind(id.clone());
            }
            for row in query.fetch_all(&self.pool).await? {
                let sale_id: String = row.try_get("sale_id")?;
                if let Some(&n) = at.get(&sale_id) {
                    sales[n].items.push(Item {
                        id: row.try_get("item_id")?,
                        stock: u32_column(&row, "stock")?,
                    });
                }
            }
        }
        Ok(sales)
    }

    async fn transition_on(
        &self,
        conn: &mut AnyConnection,
        id: &str,
        to: OrderStatus,
        at: Millis,
        window: &str,
        at_commit: &mut bool,
    ) -> Result<Option<Transition>, StoreError> {
        let mut tx = conn.begin().await?;
        let moved = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE orders SET status = $1, release_pending = $2 WHERE id = $3 \
             AND status = 'pending' AND {window}"
        )))
        .bind(to.as_str())
        .bind(to.releases_stock() as i64)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        let Some(row) = sqlx::query(concat!(
            "SELECT ",
            order_columns!(),
            " FROM orders WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(None);
        };
        let order = order_from_row(&row)?;
        if moved {
            if to.releases_stock() {
                for (item, units) in &order.items {
                    sqlx::query(
                        "UPDATE sale_items SET sold = sold - $1 WHERE sale_id = $2 AND item_id = $3",
                    )
                    .bind(*units as i64)
                    .bind(&order.sale_id)
                    .bind(item)
                    .execute(&mut *tx)
                    .await?;
                }
                sqlx::query(self.dialect.release_buyer_units())
                    .bind(order.total_units() as i64)
                    .bind(&order.sale_id)
                    .bind(&order.user_id)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("INSERT INTO order_events (order_id, status, at) VALUES ($1, $2, $3)")
                .bind(id)
                .bind(to.as_str())
                .bind(at)
                .execute(&mut *tx)
                .await?;
        }
        *at_commit = true;
        tx.commit().await?;
        Ok(Some(Transition { order, moved }))
    }

    /// After a failed write on SQLite, the writer's connection is closed instead of
    /// reused, unless the failure surely left its guard as the file is
    /// (`rolled_back_whole`): a failed COMMIT may have left the guard holding what the
    /// file does not, and the next connection rebuilds it from the file. That rebuild
    /// reads every order (seconds per million): replacing the writer on every error
    /// stalled all writes for that long (issue #21).
    fn forget_writer_unless_clean(
        &self,
        conn: &mut sqlx::pool::PoolConnection<sqlx::Any>,
        error: &StoreError,
        at_commit: bool,
    ) {
        if self.dialect == Dialect::Sqlite && (at_commit || !rolled_back_whole(error)) {
            tracing::warn!(%error, "the SQLite writer is replaced (its guard is rebuilt)");
            conn.close_on_drop();
        }
    }

    async fn pool(
        dialect: Dialect,
        url: &str,
        max_connections: u32,
        role: Role,
    ) -> Result<AnyPool, sqlx::Error> {
        let mut options = AnyPoolOptions::new().max_connections(max_connections);
        if role == Role::Writer {
            // The guard is rebuilt on every new connection: open it now, and keep it.
            // That rebuild runs inside `acquire` (`after_connect`) and takes seconds per
            // million orders: sqlx's 30 s acquire timeout dropped a long rebuild and
            // started it again, for ever (issue #21).
            options = options
                .min_connections(1)
                .max_lifetime(None)
                .idle_timeout(None)
                .acquire_timeout(std::time::Duration::from_secs(3600));
        }
        let pool = options
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if dialect == Dialect::Sqlite {
                        for pragma in [
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA synchronous = FULL",
                            "PRAGMA foreign_keys = ON",
                            "PRAGMA busy_timeout = 5000",
                            // Savepoint journals in memory, not in a temp file per batch.
                            "PRAGMA temp_store = MEMORY",
                        ] {
                            conn.execute(pragma).await?;
                        }
                        if role == Role::Writer {
                            sqlite_layout::attach_guard(conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        if role == Role::Writer {
            drop(pool.acquire().await?);
        }
        Ok(pool)
    }
}

/// Whether SQLite undid the whole failed statement, the guard's part with it: busy,
/// locked, disk full (SQLITE_FULL is raised before anything is committed) or a
/// constraint. The primary code is the extended code's low byte.
fn rolled_back_whole(error: &StoreError) -> bool {
    let StoreError::Database(sqlx::Error::Database(db)) = error else {
        return false;
    };
    db.code()
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| matches!(code & 0xff, 5 | 6 | 13 | 19))
}

#[async_trait]
impl OrderStore for SqlStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn create_sale(&self, sale: &Sale) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO sales (id, name, per_user_limit, starts_at, ends_at, payment_window, \
             created_at, rate_limits, shards, queue) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&sale.id)
        .bind(&sale.name)
        .bind(sale.per_user_limit as i64)
        .bind(sale.starts_at)
        .bind(sale.ends_at)
        .bind(sale.payment_window as i64)
        .bind(sale.created_at)
        .bind(
            (!sale.rate_limits.is_default())
                .then(|| serde_json::to_string(&sale.rate_limits).expect("limits serialize")),
        )
        .bind(sale.shards as i64)
        .bind(
            sale.queue
                .map(|queue| serde_json::to_string(&queue).expect("settings serialize")),
        )
        .execute(&mut *tx)
        .await?;
        for (position, item) in sale.items.iter().enumerate() {
            sqlx::query(
                "INSERT INTO sale_items (sale_id, item_id, position, stock) VALUES ($1, $2, $3, $4)",
            )
            .bind(&sale.id)
            .bind(&item.id)
            .bind(position as i64)
            .bind(item.stock as i64)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn get_sale(&self, id: &str) -> Result<Option<Sale>, StoreError> {
        Ok(self.sales(Some(id), None).await?.pop())
    }

    async fn set_window(
        &self,
        id: &str,
        starts_at: Millis,
        ends_at: Option<Millis>,
        paused: bool,
    ) -> Result<Option<Sale>, StoreError> {
        let updated =
            sqlx::query("UPDATE sales SET starts_at = $2, ends_at = $3, paused = $4 WHERE id = $1")
                .bind(id)
                .bind(starts_at)
                .bind(ends_at)
                .bind(paused as i64)
                .execute(&self.pool)
                .await?;
        if updated.rows_affected() == 0 {
            return Ok(None);
        }
        self.get_sale(id).await
    }

    async fn add_stock(
        &self,
        sale_id: &str,
        item_id: &str,
        units: u32,
    ) -> Result<Option<Sale>, StoreError> {
        let updated = sqlx::query(
            "UPDATE sale_items SET stock = stock + $3 WHERE sale_id = $1 AND item_id = $2",
        )
        .bind(sale_id)
        .bind(item_id)
        .bind(units as i64)
        .execute(&self.pool)
        .await?;
        if updated.rows_affected() == 0 {
            return Ok(None);
        }
        self.get_sale(sale_id).await
    }

    async fn list_sales(&self) -> Result<Vec<Sale>, StoreError> {
        self.sales(None, None).await
    }

    async fn recent_sales(&self, limit: usize) -> Result<Vec<Sale>, StoreError> {
        self.sales(None, Some(limit)).await
    }

    async fn insert_orders(&self, orders: &[Order]) -> Result<Vec<InsertOutcome>, StoreError> {
        self.insert(orders, None).await
    }

    async fn insert_orders_within(
        &self,
        orders: &[Order],
        within: std::time::Duration,
    ) -> Result<Vec<InsertOutcome>, StoreError> {
        self.insert(orders, Some(tokio::time::Instant::now() + within))
            .await
    }

    async fn get_order(&self, id: &str) -> Result<Option<Order>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            order_columns!(),
            " FROM orders WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .map(|row| order_from_row(&row))
        .transpose()
    }

    async fn order_for_key(
        &self,
        sale_id: &str,
        user_id: &str,
        key: &str,
    ) -> Result<Option<Order>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            order_columns!(),
            " FROM orders WHERE sale_id = $1 AND user_id = $2 AND idempotency_key = $3"
        ))
        .bind(sale_id)
        .bind(user_id)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?
        .map(|row| order_from_row(&row))
        .transpose()
    }

    async fn sale_orders(&self, sale_id: &str) -> Result<Vec<Order>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            order_columns!(),
            " FROM orders WHERE sale_id = $1 ORDER BY created_at, id"
        ))
        .bind(sale_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(order_from_row)
        .collect()
    }

    async fn transition(
        &self,
        id: &str,
        to: OrderStatus,
        at: Millis,
    ) -> Result<Option<Transition>, StoreError> {
        // The window is judged on the database's clock: paying needs it open, expiring
        // needs it closed; cancelling needs neither.
        let window = match to {
            OrderStatus::Paid => format!(
                "(expires_at IS NULL OR expires_at > {})",
                self.dialect.now_ms()
            ),
            OrderStatus::Expired => format!(
                "(expires_at IS NOT NULL AND expires_at <= {})",
                self.dialect.now_ms()
            ),
            _ => "1 = 1".to_string(),
        };
        // On the writer: on SQLite, the buyer's units are in its guard.
        let mut conn = self.writer.acquire().await?;
        let mut at_commit = false;
        let moved = self
            .transition_on(&mut conn, id, to, at, &window, &mut at_commit)
            .await;
        if let Err(e) = &moved {
            self.forget_writer_unless_clean(&mut conn, e, at_commit);
        }
        moved
    }

    async fn overdue_orders(
        &self,
        after: Option<&(Millis, String)>,
        limit: i64,
    ) -> Result<Vec<Order>, StoreError> {
        let (after_expiry, after_id) = after.cloned().unwrap_or((i64::MIN, String::new()));
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM orders WHERE status = 'pending' AND expires_at <= {} \
             AND (expires_at > $1 OR (expires_at = $1 AND id > $2)) \
             ORDER BY expires_at, id LIMIT $3",
            order_columns!(),
            self.dialect.now_ms()
        )))
        .bind(after_expiry)
        .bind(after_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(order_from_row)
        .collect()
    }

    async fn expire_overdue(&self, limit: i64, at: Millis) -> Result<Vec<Order>, StoreError> {
        // On the writer: on SQLite, the buyers' units are in its guard; a batch holds it
        // for one transaction, so new orders wait at most one batch.
        let mut conn = self.writer.acquire().await?;
        let mut at_commit = false;
        let expired = self
            .expire_batch_on(&mut conn, limit, at, &mut at_commit)
            .await;
        if let Err(e) = &expired {
            self.forget_writer_unless_clean(&mut conn, e, at_commit);
        }
        expired
    }

    async fn pending_releases(
        &self,
        sale_id: Option<&str>,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Order>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            order_columns!(),
            " FROM orders WHERE release_pending = 1 AND ($1 = '' OR sale_id = $1) AND id > $2 \
             ORDER BY id LIMIT $3"
        ))
        .bind(sale_id.unwrap_or(""))
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(order_from_row)
        .collect()
    }

    async fn fail_order(&self, order: &Order, reason: &str) -> Result<(), StoreError> {
        let at = crate::domain::now_millis();
        let mut tx = self.pool.begin().await?;
        // No idempotency key on the row: the refusal may be the key's own UNIQUE
        // conflict. The key stays in the gate, replaying this order.
        let inserted = sqlx::query(
            "INSERT INTO orders (id, sale_id, user_id, items, units, status, created_at, \
             expires_at, idempotency_key, fingerprint, release_pending, failure) \
             VALUES ($1, $2, $3, $4, $5, 'failed', $6, $7, NULL, $8, 1, $9) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&order.id)
        .bind(&order.sale_id)
        .bind(&order.user_id)
        .bind(serde_json::to_string(&order.items).expect("a map of strings to numbers"))
        .bind(order.total_units() as i64)
        .bind(order.created_at)
        .bind(order.expires_at)
        .bind(&order.fingerprint)
        .bind(reason)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 1 {
            sqlx::query(
                "INSERT INTO order_events (order_id, status, at) VALUES ($1, 'failed', $2)",
            )
            .bind(&order.id)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn order_failure(&self, id: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT failure FROM orders WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
                .flatten(),
        )
    }

    async fn stored_ids(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        let mut found = Vec::new();
        for chunk in ids.chunks(1000) {
            let placeholders = (1..=chunk.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let mut query = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!(
                "SELECT id FROM orders WHERE id IN ({placeholders})"
            )));
            for id in chunk {
                query = query.bind(id.clone());
            }
            found.extend(query.fetch_all(&self.pool).await?);
        }
        Ok(found)
    }

    async fn mark_released(&self, id: &str) -> Result<(), StoreError> {
        // Through the writer: on SQLite a reader's write would wait for (and could fail
        // with SQLITE_BUSY against) the group-commit writer, leaving the flag set.
        sqlx::query("UPDATE orders SET release_pending = 0 WHERE id = $1")
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn mark_released_many(&self, ids: &[String]) -> Result<(), StoreError> {
        self.mark_released_batch(ids).await
    }

    async fn retire_sale(&self, sale_id: &str) -> Result<bool, StoreError> {
        // On the writer, in one transaction: no order can settle or arrive between the
        // look and the forgetting.
        let mut conn = self.writer.acquire().await?;
        let mut tx = conn.begin().await?;
        let unsettled: Option<i64> = sqlx::query_scalar(
            "SELECT CAST(1 AS BIGINT) FROM orders WHERE sale_id = $1 \
             AND (status = 'pending' OR release_pending = 1) LIMIT 1",
        )
        .bind(sale_id)
        .fetch_optional(&mut *tx)
        .await?;
        if unsettled.is_some() {
            return Ok(false);
        }
        if self.dialect == Dialect::Sqlite {
            for table in ["guard.buyer_units", "guard.order_keys"] {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM {table} WHERE sale = (SELECT rowid FROM sales WHERE id = $1)"
                )))
                .bind(sale_id)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn sold_counters(&self, sale_id: &str) -> Result<Vec<(String, i64)>, StoreError> {
        sqlx::query("SELECT item_id, sold FROM sale_items WHERE sale_id = $1 ORDER BY position")
            .bind(sale_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| Ok((row.try_get("item_id")?, row.try_get("sold")?)))
            .collect()
    }

    async fn order_history(&self, id: &str) -> Result<Vec<(OrderStatus, Millis)>, StoreError> {
        sqlx::query("SELECT status, at FROM order_events WHERE order_id = $1 ORDER BY at, status")
            .bind(id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| {
                let status: String = row.try_get("status")?;
                let at: i64 = row.try_get("at")?;
                Ok((
                    OrderStatus::parse(&status).ok_or(StoreError::Corrupt(status))?,
                    at,
                ))
            })
            .collect()
    }
}
