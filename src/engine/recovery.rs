//! Rebuilding a sale the gate lost (first start, restart of the embedded engine, or
//! Redis lost its data): the one place that writes a sale's state into the gate from the
//! store. It is called explicitly: at start, and when a gate call answers `UnknownSale`.
//! Purchases meanwhile are answered 503 `unavailable`.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;

use super::{Engine, EngineError, EngineSettings};
use crate::bus::OrderBus;
use crate::domain::{Order, Sale, now_millis};
use crate::gate::{GateError, RebuildLease, SaleSnapshot, StockGate};
use crate::store::OrderStore;

/// Rebuilds sales in tasks of their own, one per sale at a time in this process. Never
/// inside a request: hyper drops a request's future when its client hangs up, and a
/// rebuild dropped half-way left its sale marked "being restored" on that gateway until
/// it restarted (issue #21). Requests meanwhile answer 503 with `Retry-After`.
pub(super) struct Recovery {
    gate: Arc<dyn StockGate>,
    bus: Arc<dyn OrderBus>,
    store: Arc<dyn OrderStore>,
    settings: EngineSettings,
    /// Sales being rebuilt by this process right now.
    running: Mutex<HashSet<String>>,
}

/// A sale's place in `Recovery::running`, given back when the task ends, whatever way.
struct Running {
    recovery: Arc<Recovery>,
    sale_id: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.recovery.running.lock().remove(&self.sale_id);
    }
}

impl Recovery {
    pub(super) fn new(
        gate: Arc<dyn StockGate>,
        bus: Arc<dyn OrderBus>,
        store: Arc<dyn OrderStore>,
        settings: EngineSettings,
    ) -> Arc<Recovery> {
        Arc::new(Recovery {
            gate,
            bus,
            store,
            settings,
            running: Mutex::default(),
        })
    }

    /// Starts rebuilding the sale in the background unless this process already is;
    /// returns at once. The task reads the sale from the store (a gateway's cached copy
    /// may miss stock another gateway added).
    pub(super) fn start(self: &Arc<Self>, sale_id: &str) -> Option<tokio::task::JoinHandle<()>> {
        if !self.running.lock().insert(sale_id.to_string()) {
            return None;
        }
        let running = Running {
            recovery: self.clone(),
            sale_id: sale_id.to_string(),
        };
        Some(tokio::spawn(async move {
            let recovery = running.recovery.clone();
            let id = running.sale_id.as_str();
            match recovery.store.get_sale(id).await {
                Ok(Some(sale)) => {
                    if let Err(e) = recovery.rebuild_leased(&sale).await {
                        tracing::warn!(sale = %id, error = %e, "sale not restored (retried when next needed)");
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(sale = %id, error = %e, "sale not restored: store unreadable")
                }
            }
            drop(running);
        }))
    }

    async fn rebuild_leased(&self, sale: &Sale) -> Result<(), EngineError> {
        let Some(lease) = self.gate.lease_rebuild(sale).await? else {
            return Err(EngineError::Unavailable(
                "the sale is being restored by another gateway".into(),
            ));
        };
        let result = self.rebuild_once(sale, &lease).await;
        if let Err(e) = self.gate.end_rebuild(sale, lease).await {
            // It lapses by itself.
            tracing::warn!(sale = %sale.id, error = %e, "rebuild lease not ended");
        }
        result
    }

    /// Rebuilds a sale in the gate from the store plus the orders still on the bus (else
    /// units sold but not stored yet would be sold again). In a shared gate, one gateway
    /// at a time (the lease).
    async fn rebuild_once(&self, sale: &Sale, lease: &RebuildLease) -> Result<(), EngineError> {
        // Another gateway may have restored it since this one found it missing.
        if self.gate.has_sale(sale).await? {
            return Ok(());
        }
        tracing::warn!(sale = %sale.id, "the gate lost this sale: rebuilding it from the store");
        if self.gate.shared() {
            // Other gateways may hold reservations made before the loss, still on their
            // way to the bus: wait until each has landed or surely never will (every
            // publish gives up after `delivery_deadline`). Their purchases meanwhile find
            // the sale missing and answer 503.
            tokio::time::sleep(self.settings.delivery_deadline).await;
        }
        let taken_at = now_millis();
        let on_the_bus = self
            .bus
            .undelivered(&sale.id, self.settings.recovery_wait)
            .await
            .map_err(|e| {
                tracing::warn!(sale = %sale.id, error = %e, "bus not drained: restore deferred");
                EngineError::Unavailable("the sale is being restored".into())
            })?;
        let mut orders = self.store.sale_orders(&sale.id).await?;
        let stored: HashSet<String> = orders.iter().map(|o| o.id.clone()).collect();
        orders.extend(on_the_bus.into_iter().filter(|o| !stored.contains(&o.id)));
        // Orders whose release is pending are not counted: their release, whenever it
        // comes, finds them uncounted and gives nothing back (see the gate's release).
        let mut snapshot = snapshot(sale, &orders);
        snapshot.taken_at = taken_at;
        self.gate.restore(sale, &snapshot, lease).await?;
        tracing::info!(sale = %sale.id, "sale restored in the gate");
        Ok(())
    }
}

impl Engine {
    /// At start, for a gate of this process only (embedded): the sale is rebuilt before
    /// the gateway listens, so that its first buyer finds it. A shared gate that lost
    /// sales rebuilds them in the background instead (`start_rebuilds`).
    pub(super) async fn restore_if_missing(&self, sale: &Sale) -> Result<(), EngineError> {
        if self.gate.has_sale(sale).await? {
            return Ok(());
        }
        if let Some(task) = self.recovery.start(&sale.id) {
            let _ = task.await;
        }
        Ok(())
    }

    /// In the background: starts a rebuild of each of `sales` still on sale that the
    /// shared gate lost.
    pub(super) fn start_rebuilds(&self, sales: Vec<Sale>) {
        let (gate, recovery) = (self.gate.clone(), self.recovery.clone());
        tokio::spawn(async move {
            for sale in sales.iter().filter(|s| !s.has_ended(now_millis())) {
                match gate.has_sale(sale).await {
                    Ok(true) => {}
                    Ok(false) => {
                        recovery.start(&sale.id);
                    }
                    Err(e) => {
                        tracing::warn!(sale = %sale.id, error = %e, "gate unreadable at start");
                    }
                }
            }
        });
    }

    /// What a gate error means for the caller. `UnknownSale` for a sale the store knows:
    /// the gate lost it, so start rebuilding it and tell the buyer to come back.
    pub(super) async fn gate_failed(&self, sale: &Sale, error: GateError) -> EngineError {
        match error {
            GateError::UnknownSale(_) => {
                self.recovery.start(&sale.id);
                EngineError::Unavailable("the sale is being restored; retry".into())
            }
            other => other.into(),
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
            snap.holding.push(order.id.clone());
        }
        if order.idempotency_key.is_some() {
            snap.keyed_orders.push(order.clone());
        }
    }
    snap
}
