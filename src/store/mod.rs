//! The order store keeps sales and orders for good. Orders arrive in batches (group
//! commit); inserting an order that is already there is harmless, so a bus may deliver
//! twice. The schema checks stock and per-user limits again, as the last safety net.

mod sql;

use std::sync::Arc;

use async_trait::async_trait;

pub use sql::{Dialect, SqlStore};

use crate::domain::{Millis, Order, OrderStatus, QueueSettings, Sale, Ticket};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// A bounded write (`insert_orders_within`) ran out of time and was rolled back.
    #[error("the write would have landed past its deadline: rolled back")]
    PastDeadline,
}

impl StoreError {
    /// Whether the schema refused the write (a constraint: it will be refused again),
    /// as opposed to the store failing (worth retrying).
    pub fn is_refusal(&self) -> bool {
        matches!(self, StoreError::Database(sqlx::Error::Database(db)) if sql::is_constraint(&**db))
    }
}

/// What became of one order of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsertOutcome {
    Stored,
    /// The order was stored before (a redelivery).
    AlreadyStored,
    /// The schema refused it (oversell, over the limit, unknown sale or item).
    Rejected(String),
}

impl InsertOutcome {
    pub fn is_durable(&self) -> bool {
        !matches!(self, InsertOutcome::Rejected(_))
    }
}

#[async_trait]
pub trait OrderStore: Send + Sync + 'static {
    async fn ping(&self) -> Result<(), StoreError>;
    async fn create_sale(&self, sale: &Sale) -> Result<(), StoreError>;
    async fn get_sale(&self, id: &str) -> Result<Option<Sale>, StoreError>;
    /// Every sale, newest first.
    async fn list_sales(&self) -> Result<Vec<Sale>, StoreError>;
    /// The `limit` newest sales, newest first, in a few statements whatever the number
    /// of sales.
    async fn recent_sales(&self, limit: usize) -> Result<Vec<Sale>, StoreError>;
    /// An operator's change of the sale's window or pause; the sale after it, `None` if
    /// there is no such sale.
    async fn set_window(
        &self,
        id: &str,
        starts_at: Millis,
        ends_at: Option<Millis>,
        paused: bool,
    ) -> Result<Option<Sale>, StoreError>;
    /// Adds `units` to an item's stock; the sale after it, `None` if there is no such
    /// sale or item.
    async fn add_stock(
        &self,
        sale_id: &str,
        item_id: &str,
        units: u32,
    ) -> Result<Option<Sale>, StoreError>;

    /// Stores a batch; each order succeeds or fails on its own. An `Err` means the
    /// store failed and the batch's fate is unknown: a COMMIT whose answer was lost, or
    /// (SQLite, refused batch gone again order by order) some of its orders stored.
    /// Storing it again is harmless; `stored_ids` tells which went in.
    async fn insert_orders(&self, orders: &[Order]) -> Result<Vec<InsertOutcome>, StoreError>;

    /// `insert_orders`, committed within `within` or not at all (PostgreSQL: each
    /// statement bounded by the time left, and a transaction still open at the end of
    /// it rolled back, `PastDeadline`). A rebuild of a shared gate counts on an order
    /// never landing past its delivery deadline (issue #21: a slow commit landed after a
    /// rebuild read the store, and the gate stayed over-counted for good). A COMMIT cut
    /// short may still have committed: the caller looks the orders up, as after any
    /// failed batch. SQLite is not bounded (one process writes it, and its gate is its
    /// own).
    async fn insert_orders_within(
        &self,
        orders: &[Order],
        within: std::time::Duration,
    ) -> Result<Vec<InsertOutcome>, StoreError> {
        let _ = within;
        self.insert_orders(orders).await
    }

    async fn get_order(&self, id: &str) -> Result<Option<Order>, StoreError>;
    /// The order a buyer placed in a sale with an idempotency key, if any.
    async fn order_for_key(
        &self,
        sale_id: &str,
        user_id: &str,
        key: &str,
    ) -> Result<Option<Order>, StoreError>;
    async fn sale_orders(&self, sale_id: &str) -> Result<Vec<Order>, StoreError>;

    /// Moves a pending order to `to`, only if it is still pending and, on the database's
    /// clock, still within its payment window to pay, or past it to expire: of a late
    /// payment and an expiry, one wins, and a gateway's skewed clock decides neither.
    /// Cancel and expiry take the units off the store's counters in the same
    /// transaction and leave the order `release_pending` until the gate has them back.
    /// `at` is the time recorded in the order's history. `None` if there is no such order.
    async fn transition(
        &self,
        id: &str,
        to: OrderStatus,
        at: Millis,
    ) -> Result<Option<Transition>, StoreError>;

    /// Pending orders whose payment window has passed on the database's clock, oldest
    /// first, after `after` (expiry time, id) when given: a sweep goes through them in
    /// batches and skips the rows it could not end.
    async fn overdue_orders(
        &self,
        after: Option<&(Millis, String)>,
        limit: i64,
    ) -> Result<Vec<Order>, StoreError>;
    /// Expires up to `limit` overdue pending orders in one transaction (issue #24): the
    /// same conditional move as `transition` to `Expired`, a batch at a time, oldest
    /// first; returns the orders it moved (their releases pending). Several sweepers on
    /// one store share the work: a row one of them holds is skipped by the others.
    async fn expire_overdue(&self, limit: i64, at: Millis) -> Result<Vec<Order>, StoreError>;
    /// Ended orders (cancelled, expired, failed) whose units the gate may not have back
    /// yet, by id, after `after` when given.
    async fn pending_releases(
        &self,
        sale_id: Option<&str>,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Order>, StoreError>;
    async fn mark_released(&self, id: &str) -> Result<(), StoreError>;
    async fn mark_released_many(&self, ids: &[String]) -> Result<(), StoreError>;
    /// Lets a finished sale's buyers and keys leave the store's memory (SQLite's writer
    /// guard), if the sale is settled: no order of it pending, nor a release pending.
    /// Whether it was. Its orders and their keys stay in the store, for late retries.
    async fn retire_sale(&self, sale_id: &str) -> Result<bool, StoreError>;
    /// Records an order the store refused after its buyer was told it was accepted: kept
    /// as `failed` with `reason`, its units not counted, its release pending (the gate
    /// still holds them). Harmless if the order is there already.
    async fn fail_order(&self, order: &Order, reason: &str) -> Result<(), StoreError>;
    /// Why an order failed, if it did.
    async fn order_failure(&self, id: &str) -> Result<Option<String>, StoreError>;
    /// Which of `ids` are stored: after a commit whose outcome was lost, only the orders
    /// surely absent may be released.
    async fn stored_ids(&self, ids: &[String]) -> Result<Vec<String>, StoreError>;
    /// The store's own `sold` counter of each item of a sale, by item id.
    async fn sold_counters(&self, sale_id: &str) -> Result<Vec<(String, i64)>, StoreError>;
    /// Status changes of an order after it was placed, oldest first.
    async fn order_history(&self, id: &str) -> Result<Vec<(OrderStatus, Millis)>, StoreError>;
}

/// A line's tickets by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TicketCounts {
    pub waiting: u64,
    pub decided: u64,
    pub timed_out: u64,
    pub closed: u64,
}

/// The durable tickets of the sales' lines (issue #25). The line itself (who is where,
/// what is decided next) runs in memory (`crate::line`); this is what survives it.
#[async_trait]
pub trait TicketStore: Send + Sync + 'static {
    /// Appends new tickets in one transaction: all of them or none.
    async fn append_tickets(&self, tickets: &[Ticket]) -> Result<(), StoreError>;
    /// Records decisions (status, order or refusal, time) in one transaction; a ticket
    /// that is no longer waiting is left as it is.
    async fn settle_tickets(&self, decided: &[Ticket]) -> Result<(), StoreError>;
    async fn get_ticket(&self, id: &str) -> Result<Option<Ticket>, StoreError>;
    /// The buyer's ticket in the sale's line, if they joined it.
    async fn buyer_ticket(
        &self,
        sale_id: &str,
        user_id: &str,
    ) -> Result<Option<Ticket>, StoreError>;
    /// Every ticket of a sale, in line order.
    async fn sale_tickets(&self, sale_id: &str) -> Result<Vec<Ticket>, StoreError>;
    /// How many of a sale's tickets have each status (a finished line's figures,
    /// without reading its tickets).
    async fn ticket_counts(&self, sale_id: &str) -> Result<TicketCounts, StoreError>;
    /// Changes a sale's line settings (its rate); the sale after it, `None` if there is
    /// no such sale.
    async fn set_queue(
        &self,
        sale_id: &str,
        queue: &QueueSettings,
    ) -> Result<Option<Sale>, StoreError>;
}

/// What `transition` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The order after the call.
    pub order: Order,
    /// Whether this call moved it (false: it was not pending, or too late to pay).
    pub moved: bool,
}

/// Which store to run: `sqlite://PATH` or `postgres://…` (also `postgresql://`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StoreUrl {
    pub dialect: Dialect,
    url: String,
}

impl StoreUrl {
    pub fn as_str(&self) -> &str {
        &self.url
    }
}

impl std::str::FromStr for StoreUrl {
    type Err = String;
    fn from_str(url: &str) -> Result<Self, String> {
        let dialect = Dialect::of(url).ok_or_else(|| {
            format!("unsupported store {url:?} (expected sqlite://PATH or postgres://…)")
        })?;
        Ok(StoreUrl {
            dialect,
            url: url.to_string(),
        })
    }
}

impl TryFrom<String> for StoreUrl {
    type Error = String;
    fn try_from(url: String) -> Result<Self, String> {
        url.parse()
    }
}

impl From<StoreUrl> for String {
    fn from(url: StoreUrl) -> String {
        url.url
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

/// Opens the store and applies its migrations.
pub async fn connect(url: &StoreUrl) -> Result<Arc<dyn OrderStore>, StoreError> {
    Ok(Arc::new(SqlStore::connect(url).await?))
}

/// Opens the store, with its tickets: the orders and the lines' tickets on the same
/// database (on SQLite, through the same one writer).
pub async fn connect_with_tickets(
    url: &StoreUrl,
) -> Result<(Arc<dyn OrderStore>, Arc<dyn TicketStore>), StoreError> {
    let store = Arc::new(SqlStore::connect(url).await?);
    Ok((store.clone(), store))
}
