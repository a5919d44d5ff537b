//! The SQL order store, for SQLite (embedded) and PostgreSQL (distributed): the same
//! migrations and the same statements through sqlx's `Any` driver. SQLite runs in WAL
//! mode with synchronous=FULL, so a committed batch survives a power cut, not only a
//! crash. A batch is one transaction with a savepoint per order.

use std::collections::{BTreeMap, HashSet};

use async_trait::async_trait;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, Executor, Row};

use super::{InsertOutcome, OrderStore, StoreError, Transition};
use crate::domain::{Item, Millis, Order, OrderStatus, Sale};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    pub fn of(url: &str) -> Option<Dialect> {
        if url.starts_with("sqlite:") {
            Some(Dialect::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Some(Dialect::Postgres)
        } else {
            None
        }
    }

    /// `rows` tuples of `columns` placeholders for a generated multi-row statement.
    /// SQLite gets anonymous `?`: sqlx looks every parameter up by name, and SQLite's
    /// name lookup is a linear scan, so `$N` made a 10,000-parameter insert quadratic
    /// (5.7% of a selling run's CPU in `sqlite3_bind_parameter_name`).
    fn value_rows(self, rows: usize, columns: usize) -> String {
        let mut sql = String::with_capacity(rows * columns * 6);
        for row in 0..rows {
            sql.push_str(if row == 0 { "(" } else { ", (" });
            for column in 0..columns {
                if column > 0 {
                    sql.push_str(", ");
                }
                match self {
                    Dialect::Sqlite => sql.push('?'),
                    Dialect::Postgres => {
                        sql.push('$');
                        sql.push_str(&(row * columns + column + 1).to_string());
                    }
                }
            }
            sql.push(')');
        }
        sql
    }
}

pub struct SqlStore {
    pool: AnyPool,
    /// Where batches of new orders are written (the pool itself on PostgreSQL).
    writer: AnyPool,
    dialect: Dialect,
}

macro_rules! order_columns {
    () => {
        "id, sale_id, user_id, items, status, created_at, expires_at, idempotency_key, fingerprint"
    };
}

impl SqlStore {
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let dialect = Dialect::of(url).ok_or_else(|| StoreError::UnsupportedUrl(url.into()))?;
        sqlx::any::install_default_drivers();
        let (url, max_connections) = match dialect {
            // mode=rwc: create the file if it is missing.
            Dialect::Sqlite if !url.contains('?') => (format!("{url}?mode=rwc"), 4),
            Dialect::Sqlite => (url.to_string(), 4),
            Dialect::Postgres => (url.to_string(), 16),
        };
        let pool = Self::pool(dialect, &url, max_connections).await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        // SQLite has one writer at a time anyway; a connection of its own keeps the
        // written pages in its cache. Through the shared pool, every batch landed on a
        // connection whose cache another one had made stale, and read its pages again.
        let writer = match dialect {
            Dialect::Sqlite => Self::pool(dialect, &url, 1).await?,
            Dialect::Postgres => pool.clone(),
        };
        Ok(SqlStore {
            pool,
            writer,
            dialect,
        })
    }

    async fn pool(
        dialect: Dialect,
        url: &str,
        max_connections: u32,
    ) -> Result<AnyPool, sqlx::Error> {
        AnyPoolOptions::new()
            .max_connections(max_connections)
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
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await
    }

    /// One order inside the batch transaction; the caller wraps it in a savepoint.
    async fn insert_one(
        conn: &mut AnyConnection,
        order: &Order,
    ) -> Result<InsertOutcome, sqlx::Error> {
        let items = serde_json::to_string(&order.items).expect("a map of strings to numbers");
        let inserted = sqlx::query(
            "INSERT INTO orders (id, sale_id, user_id, items, units, status, created_at, \
             expires_at, idempotency_key, fingerprint) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&order.id)
        .bind(&order.sale_id)
        .bind(&order.user_id)
        .bind(items)
        .bind(order.total_units() as i64)
        .bind(order.status.as_str())
        .bind(order.created_at)
        .bind(order.expires_at)
        .bind(&order.idempotency_key)
        .bind(&order.fingerprint)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Ok(InsertOutcome::AlreadyStored);
        }
        if !order.status.holds_stock() {
            return Ok(InsertOutcome::Stored);
        }
        for (item, units) in &order.items {
            let updated = sqlx::query(
                "UPDATE sale_items SET sold = sold + $1 WHERE sale_id = $2 AND item_id = $3",
            )
            .bind(*units as i64)
            .bind(&order.sale_id)
            .bind(item)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if updated != 1 {
                return Ok(InsertOutcome::Rejected(format!(
                    "sale has no item {item:?}"
                )));
            }
        }
        sqlx::query(
            "INSERT INTO buyers (sale_id, user_id, units, max_units) \
             SELECT $1, $2, $3, per_user_limit FROM sales WHERE id = $1 \
             ON CONFLICT (sale_id, user_id) DO UPDATE SET units = buyers.units + excluded.units",
        )
        .bind(&order.sale_id)
        .bind(&order.user_id)
        .bind(order.total_units() as i64)
        .execute(&mut *conn)
        .await?;
        Ok(InsertOutcome::Stored)
    }
}

/// Rows per multi-row INSERT (10 parameters each at most; SQLite allows 32,766).
const ROWS_PER_INSERT: usize = 1000;

impl SqlStore {
    /// The batch as a few multi-row statements: the orders, then units sold per item and
    /// per buyer, summed. `None` when an item is unknown (the slow path names the order).
    async fn insert_batch(
        dialect: Dialect,
        conn: &mut AnyConnection,
        orders: &[Order],
    ) -> Result<Option<Vec<InsertOutcome>>, sqlx::Error> {
        let mut inserted: HashSet<String> = HashSet::with_capacity(orders.len());
        for chunk in orders.chunks(ROWS_PER_INSERT) {
            let mut sql = String::from(
                "INSERT INTO orders (id, sale_id, user_id, items, units, status, created_at, \
                 expires_at, idempotency_key, fingerprint) VALUES ",
            );
            sql.push_str(&dialect.value_rows(chunk.len(), 10));
            sql.push_str(" ON CONFLICT (id) DO NOTHING RETURNING id");
            // Only placeholders are generated; every value is bound.
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for order in chunk {
                query = query
                    .bind(order.id.clone())
                    .bind(order.sale_id.clone())
                    .bind(order.user_id.clone())
                    .bind(serde_json::to_string(&order.items).expect("a map of strings to numbers"))
                    .bind(order.total_units() as i64)
                    .bind(order.status.as_str())
                    .bind(order.created_at)
                    .bind(order.expires_at)
                    .bind(order.idempotency_key.clone())
                    .bind(order.fingerprint.clone());
            }
            for row in query.fetch_all(&mut *conn).await? {
                inserted.insert(row.try_get("id")?);
            }
        }
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
                return Ok(None);
            }
        }
        let buyers: Vec<_> = per_buyer.into_iter().collect();
        for chunk in buyers.chunks(ROWS_PER_INSERT) {
            // VALUES columns are column1.. in both SQLite and PostgreSQL; SQLite needs
            // the WHERE to tell the upsert's ON CONFLICT from a join's.
            let sql = format!(
                "INSERT INTO buyers (sale_id, user_id, units, max_units) \
                 SELECT b.column1, b.column2, b.column3, s.per_user_limit \
                 FROM (VALUES {}) AS b JOIN sales s ON s.id = b.column1 WHERE true \
                 ON CONFLICT (sale_id, user_id) DO UPDATE SET units = buyers.units + excluded.units",
                dialect.value_rows(chunk.len(), 3)
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for ((sale_id, user_id), units) in chunk {
                query = query
                    .bind(sale_id.to_string())
                    .bind(user_id.to_string())
                    .bind(*units);
            }
            let stored = query.execute(&mut *conn).await?.rows_affected();
            if stored as usize != chunk.len() {
                return Ok(None); // a sale that does not exist
            }
        }
        Ok(Some(outcomes))
    }
}

fn order_from_row(row: &AnyRow) -> Result<Order, StoreError> {
    let items: String = row.try_get("items")?;
    let items: BTreeMap<String, u32> =
        serde_json::from_str(&items).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let status: String = row.try_get("status")?;
    Ok(Order {
        id: row.try_get("id")?,
        sale_id: row.try_get("sale_id")?,
        user_id: row.try_get("user_id")?,
        items,
        status: OrderStatus::parse(&status).ok_or(StoreError::Corrupt(status))?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        idempotency_key: row.try_get("idempotency_key")?,
        fingerprint: row.try_get("fingerprint")?,
    })
}

fn u32_column(row: &AnyRow, name: &str) -> Result<u32, StoreError> {
    let value: i64 = row.try_get(name)?;
    u32::try_from(value).map_err(|_| StoreError::Corrupt(format!("{name} = {value}")))
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
             created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&sale.id)
        .bind(&sale.name)
        .bind(sale.per_user_limit as i64)
        .bind(sale.starts_at)
        .bind(sale.ends_at)
        .bind(sale.payment_window as i64)
        .bind(sale.created_at)
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
        let Some(row) = sqlx::query(
            "SELECT id, name, per_user_limit, starts_at, ends_at, payment_window, created_at \
             FROM sales WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let items = sqlx::query(
            "SELECT item_id, stock FROM sale_items WHERE sale_id = $1 ORDER BY position",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(Item {
                id: r.try_get("item_id")?,
                stock: u32_column(r, "stock")?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Some(Sale {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            items,
            per_user_limit: u32_column(&row, "per_user_limit")?,
            starts_at: row.try_get("starts_at")?,
            ends_at: row.try_get("ends_at")?,
            payment_window: u32_column(&row, "payment_window")?,
            created_at: row.try_get("created_at")?,
        }))
    }

    async fn list_sales(&self) -> Result<Vec<Sale>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM sales ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await?;
        let mut sales = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(sale) = self.get_sale(&id).await? {
                sales.push(sale);
            }
        }
        Ok(sales)
    }

    async fn insert_orders(&self, orders: &[Order]) -> Result<Vec<InsertOutcome>, StoreError> {
        let mut tx = self.writer.begin().await?;
        // Fast path: the whole batch in a handful of statements. If the schema refuses
        // anything in it, fall back to one savepoint per order to find the culprits.
        sqlx::query("SAVEPOINT whole_batch")
            .execute(&mut *tx)
            .await?;
        match Self::insert_batch(self.dialect, &mut tx, orders).await {
            Ok(Some(outcomes)) => {
                sqlx::query("RELEASE SAVEPOINT whole_batch")
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                return Ok(outcomes);
            }
            Ok(None) => {}
            Err(sqlx::Error::Database(e)) if is_constraint(&*e) => {}
            Err(e) => return Err(e.into()),
        }
        sqlx::query("ROLLBACK TO SAVEPOINT whole_batch")
            .execute(&mut *tx)
            .await?;
        let mut outcomes = Vec::with_capacity(orders.len());
        for order in orders {
            sqlx::query("SAVEPOINT one_order").execute(&mut *tx).await?;
            let outcome = match Self::insert_one(&mut tx, order).await {
                Ok(outcome) => outcome,
                // A constraint (stock, limit, unknown sale) refused this order alone.
                Err(sqlx::Error::Database(e)) if is_constraint(&*e) => {
                    InsertOutcome::Rejected(e.message().to_string())
                }
                Err(e) => return Err(e.into()),
            };
            let end = if matches!(outcome, InsertOutcome::Rejected(_)) {
                "ROLLBACK TO SAVEPOINT one_order"
            } else {
                "RELEASE SAVEPOINT one_order"
            };
            sqlx::query(end).execute(&mut *tx).await?;
            outcomes.push(outcome);
        }
        tx.commit().await?;
        Ok(outcomes)
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
        now: Millis,
    ) -> Result<Option<Transition>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let moved = sqlx::query(
            "UPDATE orders SET status = $1, release_pending = $2 WHERE id = $3 \
             AND status = 'pending' AND ($4 = 0 OR expires_at IS NULL OR expires_at > $5)",
        )
        .bind(to.as_str())
        .bind(to.releases_stock() as i64)
        .bind(id)
        .bind((to == OrderStatus::Paid) as i64)
        .bind(now)
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
                sqlx::query(
                    "UPDATE buyers SET units = units - $1 WHERE sale_id = $2 AND user_id = $3",
                )
                .bind(order.total_units() as i64)
                .bind(&order.sale_id)
                .bind(&order.user_id)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query("INSERT INTO order_events (order_id, status, at) VALUES ($1, $2, $3)")
                .bind(id)
                .bind(to.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Some(Transition { order, moved }))
    }

    async fn overdue_orders(&self, now: Millis, limit: i64) -> Result<Vec<Order>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            order_columns!(),
            " FROM orders WHERE status = 'pending' AND expires_at <= $1 ORDER BY expires_at LIMIT $2"
        ))
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(order_from_row)
        .collect()
    }

    async fn pending_releases(
        &self,
        sale_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Order>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            order_columns!(),
            " FROM orders WHERE release_pending = 1 AND ($1 = '' OR sale_id = $1) LIMIT $2"
        ))
        .bind(sale_id.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(order_from_row)
        .collect()
    }

    async fn mark_released(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE orders SET release_pending = 0 WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
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

/// Whether a database error is a constraint violation (the order's own fault), as
/// opposed to a failure of the database (the batch's).
fn is_constraint(e: &dyn sqlx::error::DatabaseError) -> bool {
    use sqlx::error::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::UniqueViolation
            | ErrorKind::ForeignKeyViolation
            | ErrorKind::NotNullViolation
            | ErrorKind::CheckViolation
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{NewSale, PurchaseRequest, validate_purchase};

    /// A fresh SQLite file, or a fresh PostgreSQL database for each test.
    async fn store(dialect: Dialect) -> (SqlStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = match dialect {
            Dialect::Sqlite => format!("sqlite://{}", dir.path().join("t.db").display()),
            Dialect::Postgres => crate::testing::fresh_postgres_database().await,
        };
        (SqlStore::connect(&url).await.unwrap(), dir)
    }

    fn sale(stock: u32, limit: u32) -> Sale {
        NewSale {
            name: "s".into(),
            stock: Some(stock),
            items: None,
            per_user_limit: Some(limit),
            starts_at: None,
            ends_at: None,
            payment_window: None,
        }
        .into_sale("sale1".into(), 0)
        .unwrap()
    }

    fn order(sale: &Sale, id: &str, user: &str, quantity: u32) -> Order {
        let req = PurchaseRequest {
            user_id: user.into(),
            quantity: Some(quantity),
            items: None,
        };
        let p = validate_purchase(sale, req).unwrap();
        Order::new(id.into(), sale, &p, Some(format!("key-{id}")), 5)
    }

    async fn sale_round_trips(dialect: Dialect) {
        let (store, _dir) = store(dialect).await;
        let s = sale(3, 1);
        store.create_sale(&s).await.unwrap();
        assert_eq!(store.get_sale("sale1").await.unwrap(), Some(s.clone()));
        assert_eq!(store.list_sales().await.unwrap(), vec![s]);
        assert_eq!(store.get_sale("nope").await.unwrap(), None);
    }

    async fn batch_stores_each_order_once_and_refuses_oversell_and_limit(dialect: Dialect) {
        let (store, _dir) = store(dialect).await;
        let s = sale(2, 1);
        store.create_sale(&s).await.unwrap();
        let a = order(&s, "o1", "a", 1);
        let batch = [
            a.clone(),
            a.clone(),
            order(&s, "o2", "a", 1),
            order(&s, "o3", "b", 1),
            order(&s, "o4", "c", 1),
        ];
        let outcomes = store.insert_orders(&batch).await.unwrap();
        assert_eq!(outcomes[0], InsertOutcome::Stored);
        assert_eq!(outcomes[1], InsertOutcome::AlreadyStored);
        assert!(
            matches!(outcomes[2], InsertOutcome::Rejected(_)),
            "over the per-user limit"
        );
        assert_eq!(outcomes[3], InsertOutcome::Stored);
        assert!(
            matches!(outcomes[4], InsertOutcome::Rejected(_)),
            "oversell"
        );
        let stored = store.sale_orders("sale1").await.unwrap();
        assert_eq!(
            stored.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(),
            ["o1", "o3"]
        );
        assert_eq!(store.get_order("o1").await.unwrap(), Some(a));
        // A redelivery of the whole batch changes nothing.
        let again = store.insert_orders(&batch[..1]).await.unwrap();
        assert_eq!(again, [InsertOutcome::AlreadyStored]);
        assert_eq!(store.sale_orders("sale1").await.unwrap().len(), 2);
    }

    async fn fast_path_dedupes_and_sums_units_per_buyer(dialect: Dialect) {
        let (store, _dir) = store(dialect).await;
        let s = sale(10, 2);
        store.create_sale(&s).await.unwrap();
        let o1 = order(&s, "o1", "a", 1);
        let batch = [
            o1.clone(),
            o1,
            order(&s, "o2", "a", 1),
            order(&s, "o3", "b", 2),
        ];
        let outcomes = store.insert_orders(&batch).await.unwrap();
        use InsertOutcome::*;
        assert_eq!(outcomes, [Stored, AlreadyStored, Stored, Stored]);
        // a holds 2 of 2 and b 2 of 2: the schema refuses one more unit for either.
        let more = store
            .insert_orders(&[order(&s, "o4", "a", 1), order(&s, "o5", "c", 1)])
            .await
            .unwrap();
        assert!(matches!(more[0], Rejected(_)), "{more:?}");
        assert_eq!(more[1], Stored);
        let units: u32 = store
            .sale_orders("sale1")
            .await
            .unwrap()
            .iter()
            .map(|o| o.total_units())
            .sum();
        assert_eq!(units, 5);
    }

    #[tokio::test]
    async fn sqlite_fast_path_dedupes_and_sums_units_per_buyer() {
        fast_path_dedupes_and_sums_units_per_buyer(Dialect::Sqlite).await;
    }

    #[tokio::test]
    #[ignore = "needs PostgreSQL on 127.0.0.1:5432 (scripts/services.sh up)"]
    async fn postgres_fast_path_dedupes_and_sums_units_per_buyer() {
        fast_path_dedupes_and_sums_units_per_buyer(Dialect::Postgres).await;
    }

    #[tokio::test]
    async fn sqlite_sale_round_trips() {
        sale_round_trips(Dialect::Sqlite).await;
    }

    #[tokio::test]
    async fn sqlite_batch_stores_each_order_once_and_refuses_oversell_and_limit() {
        batch_stores_each_order_once_and_refuses_oversell_and_limit(Dialect::Sqlite).await;
    }

    #[tokio::test]
    #[ignore = "needs PostgreSQL on 127.0.0.1:5432 (scripts/services.sh up)"]
    async fn postgres_sale_round_trips() {
        sale_round_trips(Dialect::Postgres).await;
    }

    #[tokio::test]
    #[ignore = "needs PostgreSQL on 127.0.0.1:5432 (scripts/services.sh up)"]
    async fn postgres_batch_stores_each_order_once_and_refuses_oversell_and_limit() {
        batch_stores_each_order_once_and_refuses_oversell_and_limit(Dialect::Postgres).await;
    }
}
