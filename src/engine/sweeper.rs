//! The sweeper: one pass expires orders whose payment window has passed, finishes
//! releases a crash interrupted, and returns reservations whose gateway died between the
//! gate and the bus. Every gateway runs one; they do not collide (the store lets one
//! transition win, the gate releases an order once). `run` repeats the pass until told
//! to stop.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Engine, EngineError};
use crate::domain::{Millis, OrderStatus, now_millis};

/// What one pass of the sweeper did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    pub expired: usize,
    pub released: usize,
    /// Reservations given back because their order never reached the bus.
    pub orphans: usize,
}

impl Engine {
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

    /// An order in neither the store nor the bus after the delivery timeout never will
    /// be: its reservation goes back.
    async fn sweep_orphans(&self, now: Millis) -> Result<usize, EngineError> {
        let grace = self.settings.hold_grace;
        let older_than = now - grace.as_millis() as i64;
        let mut released = 0;
        for sale in self.sales.all() {
            let stale = self.gate.stale_holds(&sale, older_than).await?;
            if stale.is_empty() {
                continue;
            }
            let Ok(on_the_bus) = self.bus.undelivered(&sale.id, grace).await else {
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
}

/// Sweeps every `every` until `stop` is cancelled.
pub async fn run(engine: Arc<Engine>, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => break,
        }
        match engine.sweep().await {
            Ok(sweep) if sweep != Sweep::default() => tracing::debug!(?sweep, "sweep"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "sweep failed; trying again"),
        }
    }
    tracing::debug!("sweeper stopped");
}
