//! The engine runs a purchase through the pipeline, gate → bus → (store), and answers
//! only once the order is durable; a failure after the gate releases the reservation
//! before the buyer hears of it. One concern per file:
//!
//! - `admission.rs`: the purchase's ordered checks, up to an admitted purchase.
//! - `purchase.rs`: placing it: decide → publish → confirm or release; replays of a key.
//! - `orders.rs`: the order lifecycle: pay, cancel, expire, and giving units back.
//! - `recovery.rs`: the one place that rebuilds a sale the gate lost.
//! - `sweeper.rs`: the periodic pass that expires unpaid orders and finishes releases.
//! - `sales.rs`: creating sales and reading them (a cache; a read never rebuilds).
//! - `controls.rs`: an operator ends, pauses, resumes a sale or adds stock.

mod admission;
mod controls;
mod orders;
mod purchase;
mod recovery;
mod sales;
mod sweeper;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

pub use admission::{Admission, AdmissionError, Admitted, Buyer, Opened, PurchaseHead, Slot};
pub(crate) use purchase::{Placing, delay_here_if_asked};
pub use recovery::snapshot;
pub use sales::SaleState;
pub use sweeper::{Sweep, run as run_sweeper};

use crate::bus::OrderBus;
use crate::domain::{OrderEvent, OrderStatus, Refusal};
use crate::gate::{GateError, StockGate};
use crate::protect::{BreakerOpen, BreakerSettings, Breakers};
use crate::store::{OrderStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no sale {0}")]
    SaleNotFound(String),
    #[error("no order {0}")]
    OrderNotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{}", .0.code())]
    Refused(Refusal),
    #[error("this idempotency key was used for a different purchase")]
    KeyReused,
    /// A retry came while the first request with its key was still being decided, and
    /// waited `replay_wait` in vain.
    #[error("the first request with this Idempotency-Key is still in progress; retry later")]
    InProgress,
    #[error(
        "this buyer holds too many live Idempotency-Keys in this sale; reuse the key of \
         the purchase being retried"
    )]
    TooManyKeys,
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The sale is bought through its line: `POST /api/sales/{id}/queue`.
    #[error("this sale is bought through its line: join it with POST /api/sales/{{id}}/queue")]
    QueueRequired,
    /// The sale has no line: buy on its purchase route.
    #[error("this sale has no line: buy with POST /api/sales/{{id}}/purchase")]
    NoQueue,
    /// The sale's line has not opened yet.
    #[error("the line opens at {0}")]
    NotOpen(String),
    #[error("no ticket {0}")]
    TicketNotFound(String),
    /// The order is in a status that does not allow the step (e.g. paying an expired order).
    #[error("the order is {}", .0.as_str())]
    OrderIs(OrderStatus),
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store error");
        EngineError::Unavailable("order store unavailable".into())
    }
}

impl From<BreakerOpen> for EngineError {
    fn from(open: BreakerOpen) -> Self {
        EngineError::Unavailable(open.to_string())
    }
}

impl From<GateError> for EngineError {
    fn from(e: GateError) -> Self {
        match e {
            GateError::UnknownSale(id) => EngineError::SaleNotFound(id),
            GateError::Fenced(sale, reason) => {
                tracing::warn!(%sale, reason, "rebuild refused");
                EngineError::Unavailable("the sale is being restored".into())
            }
            GateError::Unavailable(reason) => {
                tracing::error!(%reason, "gate unavailable");
                EngineError::Unavailable("stock gate unavailable".into())
            }
        }
    }
}

/// The engine's own timings (the rest of the settings belong to the stages).
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// How long a retry waits for the first request with its key to finish.
    pub replay_wait: Duration,
    /// How long a rebuild of the gate waits for the bus to drain.
    pub recovery_wait: Duration,
    /// How old a reservation without an answer from the bus must be before the sweeper
    /// takes its gateway for dead (longer than `delivery_deadline`).
    pub hold_grace: Duration,
    /// How long after a sale's last payment window closed its buyers and keys leave
    /// this process's memory (`Sale::finished`); a late retry is then answered from the
    /// store.
    pub retire_after: Duration,
    /// How long a buyer waits for the order to be durable before being answered 503
    /// ("retry with the same key"); the order goes on and is stored or released.
    pub buyer_wait: Duration,
    /// The longest an order may be on its way to the bus: past it, it has landed or
    /// never will. A rebuild of a shared gate waits this long for other gateways'
    /// reservations made before the loss.
    pub delivery_deadline: Duration,
    /// When the request path stops calling a failing backend, and for how long.
    pub breakers: BreakerSettings,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            replay_wait: Duration::from_secs(2),
            recovery_wait: Duration::from_secs(30),
            hold_grace: Duration::from_secs(10),
            retire_after: Duration::from_secs(60),
            buyer_wait: Duration::from_secs(1),
            delivery_deadline: Duration::from_secs(1),
            breakers: BreakerSettings::default(),
        }
    }
}

pub struct Engine {
    gate: Arc<dyn StockGate>,
    bus: Arc<dyn OrderBus>,
    store: Arc<dyn OrderStore>,
    settings: EngineSettings,
    /// Fail fast on the request path while a backend is failing.
    breakers: Breakers,
    sales: sales::SaleCache,
    /// Replays of a key waiting for its first request, woken when it settles.
    key_waiters: Arc<purchase::KeyWaiters>,
    recovery: Arc<recovery::Recovery>,
    /// Status changes, for whoever listens in this process (live pages, tests).
    events: tokio::sync::broadcast::Sender<OrderEvent>,
}

impl Engine {
    /// Wires the stages and brings the gate up to date with the store: every sale the
    /// gate does not hold is rebuilt from the orders stored (restart on the same file).
    pub async fn start(
        gate: Arc<dyn StockGate>,
        bus: Arc<dyn OrderBus>,
        store: Arc<dyn OrderStore>,
        settings: EngineSettings,
    ) -> Result<Engine, EngineError> {
        let (events, _) = tokio::sync::broadcast::channel(1024);
        let recovery =
            recovery::Recovery::new(gate.clone(), bus.clone(), store.clone(), settings.clone());
        let engine = Engine {
            gate,
            bus,
            store,
            breakers: Breakers::new(settings.breakers),
            settings,
            sales: Default::default(),
            key_waiters: Default::default(),
            recovery,
            events,
        };
        let sales = engine.store.list_sales().await?;
        for sale in &sales {
            engine.sales.insert(Arc::new(sale.clone()));
        }
        if engine.gate.shared() {
            // A shared gate that lost sales (Redis flushed) rebuilds them in the
            // background, after the gateway listens: rebuilding every sale ever, one by
            // one, before listening (seconds each) kept it from answering its probes
            // (issue #21). Ended sales are rebuilt only when something needs them.
            engine.start_rebuilds(sales);
        } else {
            // This process's own gate is empty at start: rebuild every sale before the
            // gateway listens (reads of the local store only, no waits), so that the
            // first buyer finds it.
            for sale in &sales {
                if let Err(e) = engine.restore_if_missing(sale).await {
                    tracing::warn!(sale = %sale.id, error = %e, "sale not restored at start");
                }
            }
        }
        Ok(engine)
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<OrderEvent> {
        self.events.subscribe()
    }

    /// Orders on their way to the store through this process's bus, if it can tell.
    pub fn bus_pending(&self) -> Option<usize> {
        self.bus.pending()
    }

    /// Units held by orders of the sale according to the store's own counters.
    pub async fn sold_in_store(&self, sale_id: &str) -> Result<u64, EngineError> {
        let counters = self.store.sold_counters(sale_id).await?;
        Ok(counters.iter().map(|(_, n)| (*n).max(0) as u64).sum())
    }

    pub async fn ping(&self) -> Result<(), EngineError> {
        self.store.ping().await?;
        Ok(())
    }
}
