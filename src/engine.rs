//! The engine runs a purchase through the pipeline: gate → bus → (store), and answers
//! only once the order is durable. A failure after the gate releases the reservation
//! before the buyer hears of it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use crate::bus::OrderBus;
use crate::domain::{
    NewSale, Order, OrderEvent, OrderStatus, PurchaseRequest, Refusal, Sale, SaleError, now_millis,
    validate_purchase,
};
use crate::gate::{Decision, GateError, KeyAnswer, SaleSnapshot, StockGate};
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
    #[error("unavailable: {0}")]
    Unavailable(String),
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

impl From<GateError> for EngineError {
    fn from(e: GateError) -> Self {
        match e {
            GateError::UnknownSale(id) => EngineError::SaleNotFound(id),
            GateError::Unavailable(reason) => {
                tracing::error!(%reason, "gate unavailable");
                EngineError::Unavailable("stock gate unavailable".into())
            }
        }
    }
}

pub struct Engine {
    gate: Arc<dyn StockGate>,
    bus: Arc<dyn OrderBus>,
    store: Arc<dyn OrderStore>,
    sales: RwLock<HashMap<String, Arc<Sale>>>,
    /// How long a retry waits for the first request with its key to finish.
    replay_wait: Duration,
    /// Status changes, for whoever listens in this process (live pages, tests).
    events: tokio::sync::broadcast::Sender<OrderEvent>,
    /// Sales being rebuilt in the gate right now.
    recovering: parking_lot::Mutex<std::collections::HashSet<String>>,
    /// How long a recovery waits for the bus to drain.
    recovery_wait: Duration,
    /// How old a reservation without an answer from the bus must be before the sweeper
    /// takes its gateway for dead.
    hold_grace: Duration,
}

/// What one pass of the sweeper did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    pub expired: usize,
    pub released: usize,
    /// Reservations given back because their order never reached the bus.
    pub orphans: usize,
}

/// A sale with its remaining stock per item.
pub struct SaleState {
    pub sale: Arc<Sale>,
    pub remaining: Vec<u32>,
}

impl Engine {
    /// Wires the stages and brings the gate up to date with the store: every sale the
    /// gate does not hold is rebuilt from the orders stored (restart on the same file).
    pub async fn start(
        gate: Arc<dyn StockGate>,
        bus: Arc<dyn OrderBus>,
        store: Arc<dyn OrderStore>,
        replay_wait: Duration,
    ) -> Result<Engine, EngineError> {
        let (events, _) = tokio::sync::broadcast::channel(1024);
        let engine = Engine {
            gate,
            bus,
            store,
            sales: RwLock::new(HashMap::new()),
            replay_wait,
            events,
            recovering: Default::default(),
            recovery_wait: Duration::from_secs(30),
            hold_grace: Duration::from_secs(10),
        };
        for sale in engine.store.list_sales().await? {
            // A sale that cannot be restored yet (its bus not drained) is restored by
            // the first request that needs it.
            if let Err(e) = engine.load_into_gate(&sale).await {
                tracing::warn!(sale = %sale.id, error = %e, "sale not restored at start");
            }
            engine.sales.write().insert(sale.id.clone(), Arc::new(sale));
        }
        Ok(engine)
    }

    /// Makes sure the gate holds the sale; rebuilds it from the store when it does not
    /// (first start, restart of the embedded engine, or Redis lost its data).
    async fn load_into_gate(&self, sale: &Sale) -> Result<(), EngineError> {
        if self.gate.has_sale(sale).await? {
            return Ok(());
        }
        self.recover(sale).await
    }

    /// Rebuilds a sale in the gate from the store plus the orders still on the bus (else
    /// units sold but not stored yet would be sold again). One
    /// recovery per sale at a time; purchases meanwhile are answered 503.
    async fn recover(&self, sale: &Sale) -> Result<(), EngineError> {
        if !self.recovering.lock().insert(sale.id.clone()) {
            return Err(EngineError::Unavailable(
                "the sale is being restored".into(),
            ));
        }
        let result = async {
            // Another request may have restored it since this one found it missing: a
            // second restore would overwrite reservations made in between.
            if self.gate.has_sale(sale).await? {
                return Ok(());
            }
            tracing::warn!(sale = %sale.id, "the gate lost this sale: rebuilding it from the store");
            let on_the_bus = self.bus.undelivered(&sale.id, self.recovery_wait).await.map_err(|e| {
                EngineError::Unavailable(format!("cannot restore the sale yet: {e}"))
            })?;
            let mut orders = self.store.sale_orders(&sale.id).await?;
            let stored: std::collections::HashSet<String> = orders.iter().map(|o| o.id.clone()).collect();
            orders.extend(on_the_bus.into_iter().filter(|o| !stored.contains(&o.id)));
            self.gate.restore(sale, &snapshot(sale, &orders)).await?;
            // The snapshot counts only live orders: releases still pending are done.
            for order in self.store.pending_releases(Some(&sale.id), i64::MAX).await? {
                self.store.mark_released(&order.id).await?;
            }
            tracing::info!(sale = %sale.id, "sale restored in the gate");
            Ok(())
        }
        .await;
        self.recovering.lock().remove(&sale.id);
        result
    }

    /// A gate error for a sale the store knows: the gate lost it, so restore it and
    /// tell the buyer to come back.
    async fn gate_lost(&self, sale: &Sale, error: GateError) -> EngineError {
        match error {
            GateError::UnknownSale(_) => match self.recover(sale).await {
                Ok(()) => EngineError::Unavailable("the sale was restored; retry".into()),
                Err(e) => e,
            },
            other => other.into(),
        }
    }

    pub fn with_hold_grace(mut self, grace: Duration) -> Self {
        self.hold_grace = grace;
        self
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<OrderEvent> {
        self.events.subscribe()
    }

    /// Confirms payment of a pending order. Paying twice is harmless; paying after the
    /// payment window is refused (`expired`), and expires the order if nobody did yet.
    pub async fn pay(&self, id: &str) -> Result<Order, EngineError> {
        let order = self.order(id).await?;
        let now = now_millis();
        if order.is_overdue(now) {
            let ended = self.end_order(&order, OrderStatus::Expired, now).await?;
            return Err(EngineError::OrderIs(ended.status));
        }
        let transition = self
            .store
            .transition(id, OrderStatus::Paid, now)
            .await?
            .ok_or_else(|| EngineError::OrderNotFound(id.to_string()))?;
        if transition.moved {
            self.announce(&transition.order, now).await;
        }
        match transition.order.status {
            OrderStatus::Paid => Ok(transition.order),
            // The window passed between the read and the update: expire it now.
            OrderStatus::Pending => {
                let ended = self
                    .end_order(&transition.order, OrderStatus::Expired, now)
                    .await?;
                Err(EngineError::OrderIs(ended.status))
            }
            other => Err(EngineError::OrderIs(other)),
        }
    }

    /// Cancels a pending order and puts its units back on sale. Cancelling twice is
    /// harmless; a paid or expired order cannot be cancelled.
    pub async fn cancel(&self, id: &str) -> Result<Order, EngineError> {
        let order = self.order(id).await?;
        let ended = self
            .end_order(&order, OrderStatus::Cancelled, now_millis())
            .await?;
        match ended.status {
            OrderStatus::Cancelled => Ok(ended),
            other => Err(EngineError::OrderIs(other)),
        }
    }

    /// Moves a pending order to cancelled or expired; the call that moved it gives the
    /// units back to the gate (the sweeper retries if that fails half-way).
    async fn end_order(
        &self,
        order: &Order,
        to: OrderStatus,
        now: crate::domain::Millis,
    ) -> Result<Order, EngineError> {
        let transition = self
            .store
            .transition(&order.id, to, now)
            .await?
            .ok_or_else(|| EngineError::OrderNotFound(order.id.clone()))?;
        if transition.moved {
            self.announce(&transition.order, now).await;
            if let Err(e) = self.release_ended(&transition.order).await {
                tracing::warn!(order = %order.id, error = %e, "release deferred to the sweeper");
            }
        }
        Ok(transition.order)
    }

    async fn release_ended(&self, order: &Order) -> Result<(), EngineError> {
        let sale = self.sale(&order.sale_id).await?;
        self.gate.release(&sale, order, false).await?;
        self.store.mark_released(&order.id).await?;
        Ok(())
    }

    async fn announce(&self, order: &Order, now: crate::domain::Millis) {
        let event = OrderEvent::of(order, now);
        let _ = self.events.send(event.clone());
        if let Err(e) = self.bus.publish_event(&event).await {
            tracing::warn!(order = %order.id, error = %e, "status event not published");
        }
    }

    /// One pass of the expiry sweeper: expires orders whose payment window has passed
    /// and finishes releases a crash interrupted. Safe with several sweepers at once:
    /// the store lets one transition win, and the gate releases an order once.
    pub async fn sweep(&self) -> Result<Sweep, EngineError> {
        let now = now_millis();
        let mut sweep = Sweep::default();
        for order in self.store.overdue_orders(now, 500).await? {
            let ended = self.end_order(&order, OrderStatus::Expired, now).await?;
            sweep.expired += (ended.status == OrderStatus::Expired) as usize;
        }
        for order in self.store.pending_releases(None, 500).await? {
            self.release_ended(&order).await?;
            sweep.released += 1;
        }
        sweep.orphans = self.sweep_orphans(now).await?;
        Ok(sweep)
    }

    /// Returns reservations whose gateway died between the gate and the bus's answer:
    /// an order in neither the store nor the bus after the delivery timeout never will be.
    async fn sweep_orphans(&self, now: crate::domain::Millis) -> Result<usize, EngineError> {
        let older_than = now - self.hold_grace.as_millis() as i64;
        let sales: Vec<Arc<Sale>> = self.sales.read().values().cloned().collect();
        let mut released = 0;
        for sale in sales {
            let stale = self.gate.stale_holds(&sale, older_than).await?;
            if stale.is_empty() {
                continue;
            }
            let Ok(on_the_bus) = self.bus.undelivered(&sale.id, self.hold_grace).await else {
                continue; // cannot tell yet: try again next time
            };
            for order_id in stale {
                let stored = self.store.get_order(&order_id).await?.is_some()
                    || on_the_bus.iter().any(|o| o.id == order_id);
                self.gate.drop_hold(&sale, &order_id, !stored).await?;
                if !stored {
                    tracing::warn!(order = %order_id, sale = %sale.id, "orphan reservation released");
                    released += 1;
                }
            }
        }
        Ok(released)
    }

    pub async fn order_history(
        &self,
        id: &str,
    ) -> Result<Vec<(OrderStatus, crate::domain::Millis)>, EngineError> {
        Ok(self.store.order_history(id).await?)
    }

    pub async fn ping(&self) -> Result<(), EngineError> {
        self.store.ping().await?;
        Ok(())
    }

    pub async fn create_sale(&self, new: NewSale) -> Result<SaleState, EngineError> {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let sale = new
            .into_sale(id, now_millis())
            .map_err(|SaleError::Invalid(m)| EngineError::Invalid(m))?;
        self.store.create_sale(&sale).await?;
        self.gate.open_sale(&sale).await?;
        let sale = Arc::new(sale);
        self.sales.write().insert(sale.id.clone(), sale.clone());
        self.sale_state(&sale.id).await
    }

    pub async fn sale(&self, id: &str) -> Result<Arc<Sale>, EngineError> {
        if let Some(sale) = self.sales.read().get(id) {
            return Ok(sale.clone());
        }
        // Created by another gateway, or not at all.
        let sale = self
            .store
            .get_sale(id)
            .await?
            .ok_or_else(|| EngineError::SaleNotFound(id.to_string()))?;
        self.load_into_gate(&sale).await?;
        let sale = Arc::new(sale);
        self.sales.write().insert(sale.id.clone(), sale.clone());
        Ok(sale)
    }

    pub async fn sale_state(&self, id: &str) -> Result<SaleState, EngineError> {
        let sale = self.sale(id).await?;
        match self.gate.remaining(&sale).await {
            Ok(remaining) => Ok(SaleState { sale, remaining }),
            Err(e) => Err(self.gate_lost(&sale, e).await),
        }
    }

    pub async fn order(&self, id: &str) -> Result<Order, EngineError> {
        self.store
            .get_order(id)
            .await?
            .ok_or_else(|| EngineError::OrderNotFound(id.to_string()))
    }

    /// Places an order, or says why not. The answer is final once returned: an order
    /// returned is durable; on an error nothing stays reserved.
    pub async fn purchase(
        &self,
        sale_id: &str,
        request: PurchaseRequest,
        key: Option<String>,
    ) -> Result<Arc<Order>, EngineError> {
        let sale = self.sale(sale_id).await?;
        let purchase =
            validate_purchase(&sale, request).map_err(|e| EngineError::Invalid(e.to_string()))?;
        let order_id = uuid::Uuid::now_v7().simple().to_string();
        let now = now_millis();
        let decision = match self
            .gate
            .reserve(&sale, &purchase, key.as_deref(), &order_id, now)
            .await
        {
            Ok(decision) => decision,
            Err(e) => return Err(self.gate_lost(&sale, e).await),
        };
        match decision {
            Decision::Refused(refusal) => Err(EngineError::Refused(refusal)),
            Decision::KeyReused => Err(EngineError::KeyReused),
            Decision::Replay(answer) => {
                let key = key.expect("only keyed purchases replay");
                self.replay(&sale, &purchase.user_id, &key, answer).await
            }
            Decision::Reserved => {
                crash_here_if_asked("after-reserve");
                let order = Arc::new(Order::new(order_id, &sale, &purchase, key, now));
                // The rest runs in its own task: if the buyer hangs up, the reservation is
                // still confirmed or released, never left behind.
                let (gate, bus) = (self.gate.clone(), self.bus.clone());
                tokio::spawn(place(gate, bus, sale, order))
                    .await
                    .map_err(|e| EngineError::Unavailable(format!("order task failed: {e}")))?
            }
        }
    }

    /// Answers a retry with its key's original answer, waiting if the first request is
    /// still on its way to the store.
    async fn replay(
        &self,
        sale: &Sale,
        user_id: &str,
        key: &str,
        mut answer: KeyAnswer,
    ) -> Result<Arc<Order>, EngineError> {
        let deadline = tokio::time::Instant::now() + self.replay_wait;
        loop {
            match answer {
                KeyAnswer::Accepted(order) => return Ok(order),
                KeyAnswer::Refused(refusal) => return Err(EngineError::Refused(refusal)),
                KeyAnswer::InFlight { .. } => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(EngineError::Unavailable(
                    "the first request with this key is still in progress".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
            answer = match self.gate.key_answer(sale, user_id, key).await? {
                Some(answer) => answer,
                None => {
                    return Err(EngineError::Unavailable(
                        "the first request with this key failed; retry".into(),
                    ));
                }
            };
        }
    }
}

/// Test-only failpoint: `FLASHSALE_FAILPOINT=after-reserve` kills the process right
/// after the gate reserved and before the bus has the order (as a `kill -9` would).
fn crash_here_if_asked(point: &str) {
    if std::env::var("FLASHSALE_FAILPOINT").is_ok_and(|p| p == point) {
        std::process::abort();
    }
}

async fn place(
    gate: Arc<dyn StockGate>,
    bus: Arc<dyn OrderBus>,
    sale: Arc<Sale>,
    order: Arc<Order>,
) -> Result<Arc<Order>, EngineError> {
    match bus.publish(&order).await {
        Ok(()) => {
            if let Err(e) = gate.confirm(&sale, &order).await {
                // The order is durable; only replays of its key are affected.
                tracing::warn!(order = %order.id, error = %e, "could not confirm key");
            }
            Ok(order)
        }
        Err(e) if e.is_definite() => {
            if let Err(release) = gate.release(&sale, &order, true).await {
                tracing::error!(order = %order.id, error = %release, "reservation not released");
            }
            Err(EngineError::Unavailable(e.to_string()))
        }
        Err(e) => {
            tracing::error!(order = %order.id, error = %e, "order outcome unknown; reservation kept");
            Err(EngineError::Unavailable(e.to_string()))
        }
    }
}

/// What the gate must hold for `sale`, given the orders stored.
pub fn snapshot(sale: &Sale, orders: &[Order]) -> SaleSnapshot {
    let mut snap = SaleSnapshot {
        sold: vec![0; sale.items.len()],
        ..Default::default()
    };
    for order in orders.iter().filter(|o| o.sale_id == sale.id) {
        if order.status.holds_stock() {
            for (item, units) in order.units(sale) {
                snap.sold[item] += units;
            }
            *snap.buyers.entry(order.user_id.clone()).or_default() += order.total_units();
        }
        if order.idempotency_key.is_some() {
            snap.keyed_orders.push(order.clone());
        }
    }
    snap
}
