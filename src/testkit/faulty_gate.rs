//! The local gate with faults on demand: operators' updates that fail, a clock that is
//! off, confirmations lost. Everything else is the local gate's.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use async_trait::async_trait;

use crate::domain::{Millis, Order, Sale, ValidPurchase, now_millis};
use crate::gate::{
    Decision, GateError, HoldEnd, KeyAnswer, LocalGate, RebuildLease, SaleSnapshot, StockGate,
};

pub struct FaultyGate {
    pub inner: LocalGate,
    /// `update_sale` fails (unavailable) while set: an operator's change stops after
    /// the store.
    pub fail_updates: AtomicBool,
    /// The gate's clock is this far ahead of this process's (ms).
    pub clock_ahead: AtomicI64,
    /// `confirm` answers Ok and does nothing while set: a key's confirmation lost (its
    /// gateway died, or a Redis failover dropped it).
    pub lose_confirmations: AtomicBool,
}

impl FaultyGate {
    pub fn new(inner: LocalGate) -> FaultyGate {
        FaultyGate {
            inner,
            fail_updates: AtomicBool::new(false),
            clock_ahead: AtomicI64::new(0),
            lose_confirmations: AtomicBool::new(false),
        }
    }

    pub fn fail_updates(&self, fail: bool) {
        self.fail_updates.store(fail, Ordering::SeqCst);
    }
}

#[async_trait]
impl StockGate for FaultyGate {
    async fn now(&self) -> Result<Millis, GateError> {
        Ok(now_millis() + self.clock_ahead.load(Ordering::SeqCst))
    }
    async fn open_sale(&self, sale: &Sale) -> Result<(), GateError> {
        self.inner.open_sale(sale).await
    }
    async fn has_sale(&self, sale: &Sale) -> Result<bool, GateError> {
        self.inner.has_sale(sale).await
    }
    async fn restore(
        &self,
        sale: &Sale,
        snapshot: &SaleSnapshot,
        lease: &RebuildLease,
    ) -> Result<(), GateError> {
        self.inner.restore(sale, snapshot, lease).await
    }
    async fn reserve(
        &self,
        sale: &Sale,
        purchase: &ValidPurchase,
        key: Option<&str>,
        order_id: &str,
        now: Millis,
    ) -> Result<Decision, GateError> {
        self.inner.reserve(sale, purchase, key, order_id, now).await
    }
    async fn confirm(&self, sale: &Sale, order: &Order) -> Result<(), GateError> {
        if self.lose_confirmations.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.inner.confirm(sale, order).await
    }
    async fn release(&self, sale: &Sale, order: &Order, forget_key: bool) -> Result<(), GateError> {
        self.inner.release(sale, order, forget_key).await
    }
    async fn key_answer(
        &self,
        sale: &Sale,
        user_id: &str,
        key: &str,
    ) -> Result<Option<KeyAnswer>, GateError> {
        self.inner.key_answer(sale, user_id, key).await
    }
    async fn stale_holds(
        &self,
        sale: &Sale,
        grace: std::time::Duration,
    ) -> Result<Vec<String>, GateError> {
        self.inner.stale_holds(sale, grace).await
    }
    fn hold_unresolved(&self, sale: &Sale, order: &Order) {
        self.inner.hold_unresolved(sale, order)
    }
    async fn drop_hold(
        &self,
        sale: &Sale,
        order_id: &str,
        end: HoldEnd<'_>,
    ) -> Result<(), GateError> {
        self.inner.drop_hold(sale, order_id, end).await
    }
    async fn update_sale(&self, sale: &Sale) -> Result<(), GateError> {
        if self.fail_updates.load(Ordering::SeqCst) {
            return Err(GateError::Unavailable("update refused by the test".into()));
        }
        self.inner.update_sale(sale).await
    }
    async fn remaining(&self, sale: &Sale) -> Result<Vec<u32>, GateError> {
        self.inner.remaining(sale).await
    }
    async fn forget_expired_keys(&self, sale: &Sale, now: Millis) -> Result<usize, GateError> {
        self.inner.forget_expired_keys(sale, now).await
    }
    fn judges_window_here(&self) -> bool {
        self.inner.judges_window_here()
    }

    fn known_sold_out(&self, sale: &Sale) -> bool {
        self.inner.known_sold_out(sale)
    }
}
