//! An operator's controls of a running sale: end it now, pause and resume it, add stock.
//! The store is written first (it is what a rebuild of the gate reads), then the gate.
//! If the gate step fails, the change stays stored and the sweeper carries it to the
//! gate on its next pass (`sync_sales`): the gate converges to the store, and a stock
//! total only ever grows there, so a late or repeated update adds nothing twice.

use std::sync::Arc;

use super::{Engine, EngineError, SaleState};
use crate::domain::{AddStock, Refusal, Sale, SaleError, now_millis};

impl Engine {
    /// Ends the sale now (a sale not started yet ends before it starts). 409 `ended` if
    /// it has ended already.
    pub async fn end_sale(&self, id: &str) -> Result<SaleState, EngineError> {
        let sale = self.stored_sale(id).await?;
        // "Now" as the gate judges the window (Redis's clock in Redis mode).
        let now = self.gate.now().await?;
        if sale.has_ended(now) {
            return self.refuse_ended(sale).await;
        }
        let updated = self
            .store
            .set_window(id, sale.starts_at.min(now), Some(now), sale.paused)
            .await?;
        self.apply(updated, id).await
    }

    /// Pauses (`true`) or resumes the sale; a no-op if it is so already. 409 `ended`
    /// once it has ended.
    pub async fn pause_sale(&self, id: &str, paused: bool) -> Result<SaleState, EngineError> {
        let sale = self.stored_sale(id).await?;
        if sale.has_ended(now_millis()) {
            return self.refuse_ended(sale).await;
        }
        let updated = self
            .store
            .set_window(id, sale.starts_at, sale.ends_at, paused)
            .await?;
        self.apply(updated, id).await
    }

    /// Adds units to an item's stock. 400 for a bad addition, 409 `ended` once the sale
    /// has ended.
    pub async fn add_stock(&self, id: &str, add: &AddStock) -> Result<SaleState, EngineError> {
        let sale = self.stored_sale(id).await?;
        let index = sale
            .stock_addition(add)
            .map_err(|SaleError::Invalid(m)| EngineError::Invalid(m))?;
        if sale.has_ended(now_millis()) {
            return self.refuse_ended(sale).await;
        }
        let updated = self
            .store
            .add_stock(id, &sale.items[index].id, add.units)
            .await?;
        self.apply(updated, id).await
    }

    /// Carries every known sale's stored state to the gate and to this gateway's cache:
    /// changes made through other gateways, and updates whose gate step failed. Called
    /// by the sweeper.
    pub(super) async fn sync_sales(&self) {
        for cached in self.sales.all() {
            let stored = match self.store.get_sale(&cached.id).await {
                Ok(Some(stored)) => stored,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(sale = %cached.id, error = %e, "sale not read back");
                    continue;
                }
            };
            if stored == *cached {
                continue;
            }
            let stored = Arc::new(stored);
            match self.gate.update_sale(&stored).await {
                Ok(()) => self.sales.insert(stored),
                Err(e) => {
                    tracing::warn!(sale = %cached.id, error = %e, "sale change not in the gate yet")
                }
            }
        }
    }

    /// The sale as stored (not the cache: another gateway may have changed it).
    async fn stored_sale(&self, id: &str) -> Result<Sale, EngineError> {
        self.store
            .get_sale(id)
            .await?
            .ok_or_else(|| EngineError::SaleNotFound(id.to_string()))
    }

    /// An ended sale: make sure the gate knows (an earlier end may have stopped after
    /// the store), then refuse.
    async fn refuse_ended(&self, sale: Sale) -> Result<SaleState, EngineError> {
        let sale = Arc::new(sale);
        if self.gate.update_sale(&sale).await.is_ok() {
            self.sales.insert(sale);
        }
        Err(EngineError::Refused(Refusal::Ended))
    }

    /// Writes the stored change into the gate, then the cache. On a gate failure the
    /// cache keeps the old sale, so that the sweeper sees the difference and retries.
    async fn apply(&self, updated: Option<Sale>, id: &str) -> Result<SaleState, EngineError> {
        let sale = Arc::new(updated.ok_or_else(|| EngineError::SaleNotFound(id.to_string()))?);
        tracing::info!(sale = %sale.id, ends_at = ?sale.ends_at, paused = sale.paused,
            stock = sale.total_stock(), "sale changed by an operator");
        if let Err(e) = self.gate.update_sale(&sale).await {
            return Err(self.gate_failed(&sale, e).await);
        }
        self.sales.insert(sale.clone());
        self.sale_state(&sale.id).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::domain::Millis;
    use crate::gate::LocalGate;
    use crate::testkit::{FaultyGate, Setup, TestEngine};

    const HOUR: Millis = 3_600_000;

    /// Issue #21: "end now" is stamped with the gate's clock, on which the gate judges
    /// the window (Redis's), not this gateway's.
    #[tokio::test]
    async fn end_now_is_the_gates_now() {
        // A local gate whose clock is an hour ahead of this process's.
        let gate = FaultyGate::new(LocalGate::new());
        gate.clock_ahead.store(HOUR, Ordering::SeqCst);
        let fixture = TestEngine::with(Setup {
            gate: Arc::new(gate),
            ..Default::default()
        })
        .await;
        let before = now_millis();
        let ended = fixture.engine.end_sale(&fixture.sale).await.unwrap();
        let ends_at = ended.sale.ends_at.expect("ended");
        assert!(
            ends_at >= before + HOUR,
            "stamped {} ms before the gate's now",
            before + HOUR - ends_at
        );
        fixture.stop().await;
    }
}
