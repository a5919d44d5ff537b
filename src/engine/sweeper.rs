//! The sweeper: one pass expires orders whose payment window has passed, finishes
//! releases a crash interrupted, and returns reservations whose gateway died between the
//! gate and the bus. Every gateway runs one; they do not collide (the store lets one
//! transition win, the gate releases an order once). `run` repeats the pass until told
//! to stop.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Engine, EngineError};
use crate::domain::{Millis, Order, OrderStatus, now_millis};
use crate::gate::HoldEnd;

/// Rows a sweep reads at a time.
const SWEEP_BATCH: i64 = 500;
/// Orders one expiry transaction ends: large enough that the store's fixed cost per
/// transaction (an fsync on SQLite) is shared, small enough that the group commit of new
/// orders waiting behind it on SQLite's one writer waits milliseconds.
const EXPIRY_BATCH: i64 = 500;
/// Batches of each kind one pass goes through at most (the next pass goes on).
const SWEEP_BATCHES: usize = 20;

/// What one pass of the sweeper did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    pub expired: usize,
    pub released: usize,
    /// Reservations given back because their order never reached the bus.
    pub orphans: usize,
    /// Reservations whose gateway died after the bus had the order: their keys now
    /// replay the order.
    pub resolved: usize,
    /// Rows that failed and were skipped (logged); the next pass tries them again.
    pub skipped: usize,
    /// Idempotency keys past their TTL, forgotten (local gate; Redis expires its own).
    pub keys_forgotten: usize,
    /// Finished sales whose buyers and keys left memory.
    pub sales_retired: usize,
}

impl Engine {
    /// One pass. A row that fails is logged and skipped: one bad row does not stop the
    /// others behind it. Expiry and releases go in batches, keyset-paginated.
    pub async fn sweep(&self) -> Result<Sweep, EngineError> {
        let mut sweep = Sweep::default();
        self.expire_overdue(&mut sweep).await?;
        let mut after: Option<String> = None;
        for _ in 0..SWEEP_BATCHES {
            let pending = self
                .store
                .pending_releases(None, after.as_deref(), SWEEP_BATCH)
                .await?;
            let full = pending.len() as i64 == SWEEP_BATCH;
            for order in pending {
                after = Some(order.id.clone());
                match self.release_ended(&order).await {
                    Ok(()) => sweep.released += 1,
                    Err(e) => {
                        tracing::warn!(order = %order.id, error = %e, "release failed; skipped");
                        sweep.skipped += 1;
                    }
                }
            }
            if !full {
                break;
            }
        }
        self.sweep_holds(&mut sweep).await?;
        sweep.sales_retired = self.retire_finished_sales().await;
        self.sync_sales().await;
        for sale in self.sales.all() {
            match self.gate.forget_expired_keys(&sale, now_millis()).await {
                Ok(n) => sweep.keys_forgotten += n,
                Err(e) => tracing::warn!(sale = %sale.id, error = %e, "expired keys not dropped"),
            }
        }
        Ok(sweep)
    }

    /// Expires overdue orders a batch at a time (issue #24): one store transaction per
    /// batch, one gate call per sale in it, then one event per order. A batch that cannot
    /// commit (a row that will not move) must not hold back the orders behind it: the
    /// pass then ends them one by one, skipping what fails.
    async fn expire_overdue(&self, sweep: &mut Sweep) -> Result<(), EngineError> {
        for _ in 0..SWEEP_BATCHES {
            let now = now_millis();
            let started = std::time::Instant::now();
            let expired = match self.store.expire_overdue(EXPIRY_BATCH, now).await {
                Ok(expired) => expired,
                Err(e) => {
                    tracing::warn!(error = %e, "expiry batch failed; expiring one by one");
                    return self.expire_one_by_one(sweep).await;
                }
            };
            if expired.is_empty() {
                break;
            }
            super::purchase::crash_here_if_asked("after-end");
            let stored = started.elapsed();
            sweep.expired += expired.len();
            self.release_batch(&expired, sweep).await;
            let released = started.elapsed();
            for order in &expired {
                self.announce(order, now).await;
            }
            tracing::debug!(
                orders = expired.len(),
                store_ms = stored.as_secs_f64() * 1e3,
                release_ms = (released - stored).as_secs_f64() * 1e3,
                announce_ms = (started.elapsed() - released).as_secs_f64() * 1e3,
                "expiry batch"
            );
            if (expired.len() as i64) < EXPIRY_BATCH {
                break;
            }
        }
        Ok(())
    }

    /// Gives the units of a batch of ended orders back, a gate call per sale, and marks
    /// what went back in one statement. What did not is left `release_pending`: the
    /// release pass of this sweep or the next gives it back (once: the gate releases an
    /// order id once).
    async fn release_batch(&self, ended: &[Order], sweep: &mut Sweep) {
        let mut by_sale: HashMap<&str, Vec<Order>> = HashMap::new();
        for order in ended {
            by_sale
                .entry(&order.sale_id)
                .or_default()
                .push(order.clone());
        }
        let mut released = Vec::with_capacity(ended.len());
        for (sale_id, orders) in by_sale {
            let sale = match self.sale(sale_id).await {
                Ok(sale) => sale,
                Err(e) => {
                    tracing::warn!(sale = %sale_id, error = %e, "releases deferred");
                    continue;
                }
            };
            let answers = self.gate.release_many(&sale, &orders).await;
            let mut failure = None;
            for (order, answer) in orders.iter().zip(answers) {
                match answer {
                    Ok(()) => released.push(order.id.clone()),
                    Err(e) => failure = Some(e),
                }
            }
            if let Some(e) = failure {
                let e = self.gate_failed(&sale, e).await;
                tracing::warn!(sale = %sale.id, error = %e, "releases deferred to the sweeper");
            }
        }
        match self.store.mark_released_many(&released).await {
            Ok(()) => sweep.released += released.len(),
            Err(e) => {
                tracing::warn!(error = %e, "releases given back, not yet marked; the sweeper marks them")
            }
        }
    }

    /// The old way, for a pass whose batch failed: each overdue order in its own
    /// transaction, a failing row logged and skipped.
    async fn expire_one_by_one(&self, sweep: &mut Sweep) -> Result<(), EngineError> {
        let mut after: Option<(Millis, String)> = None;
        for _ in 0..SWEEP_BATCHES {
            let overdue = self
                .store
                .overdue_orders(after.as_ref(), SWEEP_BATCH)
                .await?;
            let full = overdue.len() as i64 == SWEEP_BATCH;
            for order in overdue {
                after = Some((order.expires_at.unwrap_or_default(), order.id.clone()));
                match self
                    .end_order(&order, OrderStatus::Expired, now_millis())
                    .await
                {
                    Ok(ended) => sweep.expired += (ended.status == OrderStatus::Expired) as usize,
                    Err(e) => {
                        tracing::warn!(order = %order.id, error = %e, "expiry failed; skipped");
                        sweep.skipped += 1;
                    }
                }
            }
            if !full {
                break;
            }
        }
        Ok(())
    }

    /// Reservations that never heard back from the bus past `hold_grace` (longer than
    /// any delivery): their gateway died. An order in neither the store nor the bus
    /// never will be: its units go back. One that is there gets its key confirmed, so
    /// that retries get the original 202 instead of "in flight".
    async fn sweep_holds(&self, sweep: &mut Sweep) -> Result<(), EngineError> {
        let grace = self.settings.hold_grace;
        for sale in self.sales.all() {
            let stale = match self.gate.stale_holds(&sale, grace).await {
                Ok(stale) => stale,
                Err(e) => {
                    tracing::warn!(sale = %sale.id, error = %e, "stale holds not read");
                    continue;
                }
            };
            if stale.is_empty() {
                continue;
            }
            // The store first (cheap, by id); the bus only for what it does not hold
            // (reading the topic back is costly, and may fail while a partition waits
            // for a worker: those holds wait for the next pass).
            let mut found_in_store = Vec::with_capacity(stale.len());
            for order_id in stale {
                match self.store.get_order(&order_id).await {
                    Ok(stored) => found_in_store.push((order_id, stored)),
                    Err(e) => {
                        tracing::warn!(order = %order_id, error = %e, "hold not resolved; skipped");
                        sweep.skipped += 1;
                    }
                }
            }
            let on_the_bus = if found_in_store.iter().any(|(_, stored)| stored.is_none()) {
                match self.bus.undelivered(&sale.id, grace).await {
                    Ok(orders) => Some(orders),
                    Err(e) => {
                        tracing::debug!(sale = %sale.id, error = %e, "bus not readable; holds wait");
                        None
                    }
                }
            } else {
                None
            };
            for (order_id, stored) in found_in_store {
                let found = match (stored, &on_the_bus) {
                    (Some(order), _) => Some(order),
                    (None, Some(bus)) => match bus.iter().find(|o| o.id == order_id) {
                        Some(order) => Some(order.clone()),
                        // A worker may have stored it (and moved its offsets past it)
                        // between the first look in the store and the read of the bus:
                        // look again, after the bus, before calling it an orphan.
                        None => match self.store.get_order(&order_id).await {
                            Ok(stored) => stored,
                            Err(e) => {
                                tracing::warn!(order = %order_id, error = %e, "hold not resolved; skipped");
                                sweep.skipped += 1;
                                continue;
                            }
                        },
                    },
                    (None, None) => continue, // cannot tell yet
                };
                let end = match &found {
                    Some(order) => HoldEnd::Confirm(order),
                    None => HoldEnd::Release,
                };
                if let Err(e) = self.gate.drop_hold(&sale, &order_id, end).await {
                    tracing::warn!(order = %order_id, error = %e, "hold not dropped; skipped");
                    sweep.skipped += 1;
                    continue;
                }
                match found {
                    Some(_) => sweep.resolved += 1,
                    None => {
                        tracing::warn!(order = %order_id, sale = %sale.id, "orphan reservation released");
                        sweep.orphans += 1;
                    }
                }
            }
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::bus::{MemoryBus, OrderBus};
    use crate::gate::{KeyPolicy, LocalGate, StockGate};
    use crate::store::OrderStore;
    use crate::testkit::{Setup, TestEngine};

    /// One order that cannot be expired does not keep the others behind it waiting.
    #[tokio::test]
    async fn a_failing_row_is_skipped_not_a_stop() {
        let fixture = TestEngine::with(Setup {
            payment_window: 1,
            ..Default::default()
        })
        .await;
        let mut ids = Vec::new();
        for user in ["a", "b", "c"] {
            ids.push(fixture.buy(user, None).await.unwrap().id.clone());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
        // The oldest overdue order, the first the sweep reads, fails every time.
        *fixture.store.fail_transitions_of.lock() = Some(ids[0].clone());
        let sweep = fixture.engine.sweep().await.unwrap();
        assert_eq!((sweep.expired, sweep.skipped), (2, 1), "{sweep:?}");
        for id in &ids[1..] {
            let order = fixture.store.get_order(id).await.unwrap().unwrap();
            assert_eq!(order.status, OrderStatus::Expired);
        }
        assert_eq!(fixture.remaining().await, [4]);
        fixture.stop().await;
    }

    /// Issue #21: an order whose fate the writer could not tell (its commit's answer
    /// lost, and the lookups after it failed) kept its units and its key "in progress"
    /// for the process's whole life on the local gate. The sweeper resolves it as it
    /// does a shared gate's holds: stored, its key replays it.
    #[tokio::test]
    async fn an_order_of_unknown_fate_is_resolved_by_the_sweeper() {
        let fixture = TestEngine::with(Setup {
            settings: crate::engine::EngineSettings {
                hold_grace: Duration::from_millis(100),
                ..Default::default()
            },
            ..Default::default()
        })
        .await;
        *fixture.store.lose_commit_answers.lock() = true;
        *fixture.store.fail_lookups.lock() = true;
        let unknown = fixture.buy("a", Some("k")).await;
        assert!(
            matches!(unknown, Err(EngineError::Unavailable(_))),
            "{unknown:?}"
        );
        // The writer gives up looking after 5 s: the outcome is unknown.
        tokio::time::sleep(Duration::from_secs(6)).await;
        *fixture.store.lose_commit_answers.lock() = false;
        *fixture.store.fail_lookups.lock() = false;
        // Its key still says "in flight", but the order is stored: a retry gets it
        // (issue #23) before the sweeper has resolved the hold.
        let retry = fixture.buy("a", Some("k")).await.unwrap();

        let sweep = fixture.engine.sweep().await.unwrap();
        assert_eq!(sweep.resolved, 1, "{sweep:?}");
        let replay = fixture.buy("a", Some("k")).await.unwrap();
        let stored = fixture.store.sale_orders(&fixture.sale).await.unwrap();
        assert_eq!(stored[0].id, replay.id);
        assert_eq!(retry.id, replay.id);
        assert_eq!(fixture.remaining().await, [4]);
        fixture.stop().await;
    }

    /// Issue #24: a finished sale leaves memory once settled (the gate, the store's
    /// guard, the cache); a late retry with its key gets its order from the store, a new
    /// purchase `sale_ended`, the sale's page the store's counts; the gate is not rebuilt.
    #[tokio::test]
    async fn a_finished_sale_leaves_memory_and_late_retries_get_their_orders() {
        use crate::domain::Refusal;
        let gate = Arc::new(LocalGate::new());
        let fixture = TestEngine::with(Setup {
            gate: gate.clone(),
            settings: crate::engine::EngineSettings {
                retire_after: Duration::ZERO,
                ..Default::default()
            },
            ..Default::default()
        })
        .await;
        let now = now_millis();
        let new = crate::testkit::sale()
            .name("ends")
            .stock(5)
            .limit(2)
            .window(now - 1_000, Some(now + 300))
            .new_sale();
        let sale = fixture.engine.create_sale(new.into()).await.unwrap().sale;
        let order = fixture.purchase(&sale.id, "a", 1, Some("k")).await.unwrap();
        let sweep = fixture.engine.sweep().await.unwrap();
        assert_eq!(sweep.sales_retired, 0, "still on sale");
        tokio::time::sleep(Duration::from_millis(400)).await;

        let sweep = fixture.engine.sweep().await.unwrap();
        assert_eq!(sweep.sales_retired, 1, "{sweep:?}");
        assert!(!gate.has_sale(&sale).await.unwrap());
        let retry = fixture.purchase(&sale.id, "a", 1, Some("k")).await.unwrap();
        assert_eq!(retry.id, order.id);
        let other = fixture.purchase(&sale.id, "a", 2, Some("k")).await;
        assert!(matches!(other, Err(EngineError::KeyReused)), "{other:?}");
        for key in [None, Some("k2")] {
            let late = fixture.purchase(&sale.id, "b", 1, key).await;
            assert!(
                matches!(late, Err(EngineError::Refused(Refusal::Ended))),
                "{late:?}"
            );
        }
        assert_eq!(
            fixture.engine.sale_state(&sale.id).await.unwrap().remaining,
            [4]
        );
        assert!(!gate.has_sale(&sale).await.unwrap(), "not rebuilt");
        fixture.stop().await;
    }

    /// The in-process bus with a broker that does not answer status events (a Kafka
    /// outage): each `publish_event` hangs.
    struct EventsHang(MemoryBus);

    #[async_trait::async_trait]
    impl OrderBus for EventsHang {
        async fn publish(&self, order: &crate::domain::Order) -> Result<(), crate::bus::BusError> {
            self.0.publish(order).await
        }
        async fn undelivered(
            &self,
            sale_id: &str,
            deadline: Duration,
        ) -> Result<Vec<crate::domain::Order>, crate::bus::BusError> {
            self.0.undelivered(sale_id, deadline).await
        }
        async fn publish_event(
            &self,
            _event: &crate::domain::OrderEvent,
        ) -> Result<(), crate::bus::BusError> {
            std::future::pending().await
        }
    }

    /// Issue #21: ending an order gives its units back without waiting for its status
    /// event to be delivered (each waited the broker's delivery timeout in an outage).
    #[tokio::test]
    async fn an_expiry_does_not_wait_for_its_status_event() {
        let fixture = TestEngine::with(Setup {
            bus: |bus| Arc::new(EventsHang(bus)),
            stock: 2,
            payment_window: 1,
            ..Default::default()
        })
        .await;
        for user in ["a", "b"] {
            fixture.buy(user, None).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let sweep = tokio::time::timeout(Duration::from_secs(2), fixture.engine.sweep())
            .await
            .expect("the sweep does not wait for the events")
            .unwrap();
        assert_eq!(sweep.expired, 2, "{sweep:?}");
        assert_eq!(fixture.remaining().await, [2]);
        fixture.stop().await;
    }

    /// Issue #21: on a sale without an end, a key outlives its time in the gate only in
    /// the store. A retry past it got 503 for ever (the store refuses a second order for
    /// the key); it gets the original order now.
    #[tokio::test]
    async fn a_retry_after_its_key_expired_gets_the_original_order() {
        let fixture = TestEngine::with(Setup {
            gate: Arc::new(LocalGate::with_key_policy(KeyPolicy {
                ttl: Duration::from_millis(50),
                max_per_buyer: 16,
            })),
            per_user_limit: 2,
            ..Default::default()
        })
        .await;
        let first = fixture.buy("a", Some("k")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        fixture.engine.sweep().await.unwrap(); // forgets the key in the gate
        let retry = fixture.buy("a", Some("k")).await.unwrap();
        assert_eq!(retry.id, first.id);
        assert_eq!(
            fixture
                .store
                .sale_orders(&fixture.sale)
                .await
                .unwrap()
                .len(),
            1
        );
        assert_eq!(fixture.remaining().await, [4]);
        fixture.stop().await;
    }
}
