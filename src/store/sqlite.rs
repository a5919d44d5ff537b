//! SQLite order store: WAL journal, synchronous=FULL (a committed batch survives a power
//! cut, not only a process crash), one transaction per batch with a savepoint per order.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use super::{InsertOutcome, OrderStore, StoreError};
use crate::domain::{Item, Order, OrderStatus, Sale};

pub struct SqliteStore {
    pool: SqlitePool,
}

macro_rules! order_columns {
    () => {
        "id, sale_id, user_id, items, status, created_at, expires_at, idempotency_key, fingerprint"
    };
}

impl SqliteStore {
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(SqliteStore { pool })
    }

    /// One order inside the batch transaction; the caller wraps it in a savepoint.
    async fn insert_one(
        conn: &mut sqlx::SqliteConnection,
        order: &Order,
    ) -> Result<InsertOutcome, sqlx::Error> {
        let items = serde_json::to_string(&order.items).expect("a map of strings to numbers");
        let inserted = sqlx::query(
            "INSERT INTO orders (id, sale_id, user_id, items, units, status, created_at, \
             expires_at, idempotency_key, fingerprint) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (id) DO NOTHING",
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
        sqlx::query(
            "INSERT INTO buyers (sale_id, user_id, units, max_units) \
             SELECT ?, ?, ?, per_user_limit FROM sales WHERE id = ? \
             ON CONFLICT (sale_id, user_id) DO UPDATE SET units = buyers.units + excluded.units",
        )
        .bind(&order.sale_id)
        .bind(&order.user_id)
        .bind(order.total_units() as i64)
        .bind(&order.sale_id)
        .execute(&mut *conn)
        .await?;
        for (item, units) in &order.items {
            let updated = sqlx::query(
                "UPDATE sale_items SET sold = sold + ? WHERE sale_id = ? AND item_id = ?",
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
        Ok(InsertOutcome::Stored)
    }
}

fn order_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Order, StoreError> {
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

#[async_trait]
impl OrderStore for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn create_sale(&self, sale: &Sale) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO sales (id, name, per_user_limit, starts_at, ends_at, payment_window, \
             created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
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
                "INSERT INTO sale_items (sale_id, item_id, position, stock) VALUES (?, ?, ?, ?)",
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
             FROM sales WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let items = sqlx::query(
            "SELECT item_id, stock FROM sale_items WHERE sale_id = ? ORDER BY position",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(Item {
                id: r.try_get("item_id")?,
                stock: r.try_get::<i64, _>("stock")? as u32,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(Some(Sale {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            items,
            per_user_limit: row.try_get::<i64, _>("per_user_limit")? as u32,
            starts_at: row.try_get("starts_at")?,
            ends_at: row.try_get("ends_at")?,
            payment_window: row.try_get::<i64, _>("payment_window")? as u32,
            created_at: row.try_get("created_at")?,
        }))
    }

    async fn list_sales(&self) -> Result<Vec<Sale>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM sales ORDER BY created_at")
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
        let mut tx = self.pool.begin().await?;
        let mut outcomes = Vec::with_capacity(orders.len());
        for order in orders {
            sqlx::query("SAVEPOINT one_order").execute(&mut *tx).await?;
            let outcome = match Self::insert_one(&mut tx, order).await {
                Ok(outcome) => outcome,
                // A constraint (stock, limit, unknown sale) refused this order alone.
                Err(sqlx::Error::Database(e)) => InsertOutcome::Rejected(e.message().to_string()),
                Err(e) => return Err(e.into()),
            };
            let end = if outcome.is_durable() {
                "RELEASE one_order"
            } else {
                "ROLLBACK TO one_order"
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
            " FROM orders WHERE id = ?"
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
            " FROM orders WHERE sale_id = ? ORDER BY created_at, id"
        ))
        .bind(sale_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(order_from_row)
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{NewSale, PurchaseRequest, validate_purchase};

    async fn store() -> (SqliteStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        (SqliteStore::connect(&url).await.unwrap(), dir)
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
        Order::new(id.into(), sale, &p, None, 5)
    }

    #[tokio::test]
    async fn sale_round_trips() {
        let (store, _dir) = store().await;
        let s = sale(3, 1);
        store.create_sale(&s).await.unwrap();
        assert_eq!(store.get_sale("sale1").await.unwrap(), Some(s.clone()));
        assert_eq!(store.list_sales().await.unwrap(), vec![s]);
        assert_eq!(store.get_sale("nope").await.unwrap(), None);
    }

    #[tokio::test]
    async fn batch_stores_each_order_once_and_schema_refuses_oversell_and_limit() {
        let (store, _dir) = store().await;
        let s = sale(2, 1);
        store.create_sale(&s).await.unwrap();
        let a = order(&s, "o1", "a", 1);
        let outcomes = store
            .insert_orders(&[
                a.clone(),
                a.clone(),
                order(&s, "o2", "a", 1),
                order(&s, "o3", "b", 1),
                order(&s, "o4", "c", 1),
            ])
            .await
            .unwrap();
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
    }
}
