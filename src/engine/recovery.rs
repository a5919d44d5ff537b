//! Rebuilding a sale the gate lost (first start, restart of the embedded engine, or
//! Redis lost its data): the one place that writes a sale's state into the gate from the
//! store. It is called explicitly: at start, and when a gate call answers `UnknownSale`.
//! Purchases meanwhile are answered 503 `unavailable`.

use std::collections::HashSet;

use parking_lot::Mutex;

use super::{Engine, EngineError};
use crate::domain::{Order, Sale};
use crate::gate::{GateError, RebuildLease, SaleSnapshot};

/// Sales being rebuilt by this process right now.
#[derive(Default)]
pub(super) struct Rebuilds(Mutex<HashSet<String>>);

impl Engine {
    /// At start: rebuilds the sale if the gate does not hold it.
    pub(super) async fn restore_if_missing(&self, sale: &Sale) -> Result<(), EngineError> {
        if self.gate.has_sale(sale).await? {
            return Ok(());
        }
        self.rebuild(sale).await
    }

    /// What a gate error means for the caller. `UnknownSale` for a sale the store knows:
    /// the gate lost it, so rebuild it and tell the buyer to come back.
    pub(super) async fn gate_failed(&self, sale: &Sale, error: GateError) -> EngineError {
        match error {
            GateError::UnknownSale(_) => match self.rebuild(sale).await {
                Ok(()) => EngineError::Unavailable("the sale was restored; retry".into()),
                Err(e) => e,
            },
            other => other.into(),
        }
    }

    /// Rebuilds a sale in the gate from the store plus the orders still on the bus (else
    /// units sold but not stored yet would be sold again). One rebuild per sale at a time
    /// in this process, and, in a shared gate, across every gateway (a lease in the gate).
    async fn rebuild(&self, sale: &Sale) -> Result<(), EngineError> {
        if !self.recovery.0.lock().insert(sale.id.clone()) {
            return Err(EngineError::Unavailable(
                "the sale is being restored".into(),
            ));
        }
        let result = self.rebuild_leased(sale).await;
        self.recovery.0.lock().remove(&sale.id);
        result
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
        let on_the_bus = self
            .bus
            .undelivered(&sale.id, self.settings.recovery_wait)
            .await
            .map_err(|e| EngineError::Unavailable(format!("cannot restore the sale yet: {e}")))?;
        let mut orders = self.store.sale_orders(&sale.id).await?;
        let stored: HashSet<String> = orders.iter().map(|o| o.id.clone()).collect();
        orders.extend(on_the_bus.into_iter().filter(|o| !stored.contains(&o.id)));
        // Orders whose release is pending are not counted: their release, whenever it
        // comes, finds them uncounted and gives nothing back (see the gate's release).
        self.gate
            .restore(sale, &snapshot(sale, &orders), lease)
            .await?;
        tracing::info!(sale = %sale.id, "sale restored in the gate");
        Ok(())
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
