//! A real store with faults on demand, for the paths that handle a store failing half-way.

use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::domain::{Millis, Order, OrderStatus, Sale};
use crate::store::{InsertOutcome, OrderStore, StoreError, Transition};

/// A real store with faults on demand, for the paths that handle a store failing half-way.
pub struct FaultyStore {
    pub inner: Arc<dyn OrderStore>,
    /// Commits batches but answers as if the connection was lost during COMMIT.
    pub lose_commit_answers: Mutex<bool>,
    /// Also fails the lookups that follow.
    pub fail_lookups: Mutex<bool>,
    /// Fails every transition of this order.
    pub fail_transitions_of: Mutex<Option<String>>,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn OrderStore>) -> FaultyStore {
        FaultyStore {
            inner,
            lose_commit_answers: Mutex::new(false),
            fail_lookups: Mutex::new(false),
            fail_transitions_of: Mutex::new(None),
        }
    }

    /// A SQLite store in `dir` with no faults yet.
    pub async fn sqlite(dir: &std::path::Path) -> FaultyStore {
        let url = format!("sqlite://{}", dir.join("t.db").display());
        FaultyStore::new(crate::store::connect(&url.parse().unwrap()).await.unwrap())
    }
}

fn lost(what: &str) -> StoreError {
    StoreError::Database(sqlx::Error::Protocol(format!(
        "connection lost during {what}"
    )))
}

#[async_trait]
impl OrderStore for FaultyStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    async fn create_sale(&self, sale: &Sale) -> Result<(), StoreError> {
        self.inner.create_sale(sale).await
    }
    async fn get_sale(&self, id: &str) -> Result<Option<Sale>, StoreError> {
        self.inner.get_sale(id).await
    }
    async fn list_sales(&self) -> Result<Vec<Sale>, StoreError> {
        self.inner.list_sales().await
    }
    async fn recent_sales(&self, limit: usize) -> Result<Vec<Sale>, StoreError> {
        self.inner.recent_sales(limit).await
    }
    async fn set_window(
        &self,
        id: &str,
        starts_at: Millis,
        ends_at: Option<Millis>,
        paused: bool,
    ) -> Result<Option<Sale>, StoreError> {
        self.inner.set_window(id, starts_at, ends_at, paused).await
    }
    async fn add_stock(
        &self,
        sale_id: &str,
        item_id: &str,
        units: u32,
    ) -> Result<Option<Sale>, StoreError> {
        self.inner.add_stock(sale_id, item_id, units).await
    }
    async fn insert_orders(&self, orders: &[Order]) -> Result<Vec<InsertOutcome>, StoreError> {
        let outcomes = self.inner.insert_orders(orders).await?;
        if *self.lose_commit_answers.lock() {
            return Err(lost("COMMIT"));
        }
        Ok(outcomes)
    }
    async fn get_order(&self, id: &str) -> Result<Option<Order>, StoreError> {
        self.inner.get_order(id).await
    }
    async fn order_for_key(
        &self,
        sale_id: &str,
        user_id: &str,
        key: &str,
    ) -> Result<Option<Order>, StoreError> {
        self.inner.order_for_key(sale_id, user_id, key).await
    }
    async fn sale_orders(&self, sale_id: &str) -> Result<Vec<Order>, StoreError> {
        self.inner.sale_orders(sale_id).await
    }
    async fn transition(
        &self,
        id: &str,
        to: OrderStatus,
        at: Millis,
    ) -> Result<Option<Transition>, StoreError> {
        if self.fail_transitions_of.lock().as_deref() == Some(id) {
            return Err(lost("a transition"));
        }
        self.inner.transition(id, to, at).await
    }
    async fn overdue_orders(
        &self,
        after: Option<&(Millis, String)>,
        limit: i64,
    ) -> Result<Vec<Order>, StoreError> {
        self.inner.overdue_orders(after, limit).await
    }
    async fn expire_overdue(&self, limit: i64, at: Millis) -> Result<Vec<Order>, StoreError> {
        // A batch holding the failing order fails whole, as a transaction would.
        let failing = self.fail_transitions_of.lock().clone();
        if let Some(failing) = failing {
            let overdue = self.inner.overdue_orders(None, limit).await?;
            if overdue.iter().any(|o| o.id == failing) {
                return Err(lost("an expiry batch"));
            }
        }
        self.inner.expire_overdue(limit, at).await
    }
    async fn pending_releases(
        &self,
        sale_id: Option<&str>,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Order>, StoreError> {
        self.inner.pending_releases(sale_id, after, limit).await
    }
    async fn mark_released(&self, id: &str) -> Result<(), StoreError> {
        self.inner.mark_released(id).await
    }
    async fn mark_released_many(&self, ids: &[String]) -> Result<(), StoreError> {
        self.inner.mark_released_many(ids).await
    }
    async fn retire_sale(&self, sale_id: &str) -> Result<bool, StoreError> {
        self.inner.retire_sale(sale_id).await
    }
    async fn fail_order(&self, order: &Order, reason: &str) -> Result<(), StoreError> {
        self.inner.fail_order(order, reason).await
    }
    async fn order_failure(&self, id: &str) -> Result<Option<String>, StoreError> {
        self.inner.order_failure(id).await
    }
    async fn stored_ids(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        if *self.fail_lookups.lock() {
            return Err(lost("a lookup"));
        }
        self.inner.stored_ids(ids).await
    }
    async fn sold_counters(&self, sale_id: &str) -> Result<Vec<(String, i64)>, StoreError> {
        self.inner.sold_counters(sale_id).await
    }
    async fn order_history(&self, id: &str) -> Result<Vec<(OrderStatus, Millis)>, StoreError> {
        self.inner.order_history(id).await
    }
}
