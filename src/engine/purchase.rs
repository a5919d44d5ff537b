//! A purchase: the gate decides, the bus makes the order durable, then the gate's
//! reservation is confirmed (or released when the bus surely did not take it). The
//! answer is final once returned: an order returned is durable; on an error nothing
//! stays reserved. A retry with the same key gets the first request's answer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::admission::Admitted;
use super::{Engine, EngineError};
use crate::bus::{BusError, OrderBus};
use crate::domain::{Order, Refusal, Sale, ValidPurchase, now_millis};
use crate::gate::{Decision, GateError, KeyAnswer, StockGate};
use crate::observe::metrics::{Stage, StageTimer};
use crate::observe::trace;
use crate::protect::Permit;
use tracing::Instrument;

/// A decided purchase (`Engine::decide`): answered at once, or reserved and settling.
pub(crate) enum Placing {
    Answered(Result<Arc<Order>, EngineError>),
    Settling(Settling),
}

/// A reserved order on its way to the store (`Engine::settle` waits for it).
pub(crate) struct Settling {
    placing: tokio::task::JoinHandle<Result<Arc<Order>, EngineError>>,
    /// The key, when the purchase had one: a store that refused a keyed order may hold
    /// the key's original order.
    retry_of: Option<String>,
    sale_id: String,
    user_id: String,
}

/// Replays waiting for the order their key reserved to settle (confirmed or released),
/// by order id. The request that placed the order wakes them; a key in flight at another
/// gateway (Redis gate) cannot wake them, so they also look again now and then.
#[derive(Default)]
pub(super) struct KeyWaiters(Mutex<HashMap<String, Arc<Notify>>>);

impl KeyWaiters {
    fn watch(&self, order_id: &str) -> Arc<Notify> {
        self.0
            .lock()
            .entry(order_id.to_string())
            .or_default()
            .clone()
    }

    /// Wakes every replay of the order's key: its answer changed.
    fn settled(&self, order_id: &str) {
        if let Some(notify) = self.0.lock().remove(order_id) {
            notify.notify_waiters();
        }
    }

    /// Drops a replay's interest; the entry goes when nobody else waits on it.
    fn forget(&self, order_id: &str, notify: Arc<Notify>) {
        let mut waiting = self.0.lock();
        drop(notify);
        if waiting
            .get(order_id)
            .is_some_and(|n| Arc::strong_count(n) == 1)
        {
            waiting.remove(order_id);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().len()
    }
}

/// A replay's interest in an order, dropped with it: a replay whose request is dropped
/// (its client hung up) leaves no entry behind (issue #21).
struct Watching<'a> {
    waiters: &'a KeyWaiters,
    order_id: String,
    notify: Option<Arc<Notify>>,
}

impl Drop for Watching<'_> {
    fn drop(&mut self) {
        if let Some(notify) = self.notify.take() {
            self.waiters.forget(&self.order_id, notify);
        }
    }
}

impl Engine {
    /// Decides an admitted purchase and, when reserved, makes it durable: the one way
    /// into a purchase (`Admission` lets it in).
    pub async fn place(&self, admitted: Admitted) -> Result<Arc<Order>, EngineError> {
        let Admitted {
            sale,
            purchase,
            key,
            _slot,
        } = admitted;
        match self.decide(sale, purchase, key).await {
            Placing::Answered(answer) => answer,
            Placing::Settling(settling) => {
                self.settle(settling, Some(self.settings.buyer_wait)).await
            }
        }
    }

    /// A purchase's first half: the gate decides it and, when it reserved, the order
    /// is on its way to the store. A line (`crate::line`) calls it for one ticket after
    /// another, so that the gate decides them in line order, and waits for the orders
    /// to be durable meanwhile (`settle`). The purchase was admitted when its ticket
    /// joined the line. Not public: `place` stays the one way in from outside.
    pub(crate) async fn decide(
        &self,
        sale: Arc<Sale>,
        purchase: ValidPurchase,
        key: Option<String>,
    ) -> Placing {
        if self.is_finished(&sale) {
            return Placing::Answered(self.after_the_end(&sale, &purchase, key.as_deref()).await);
        }
        let order_id = uuid::Uuid::now_v7().simple().to_string();
        let now = now_millis();
        let reserve = self
            .gate
            .reserve(&sale, &purchase, key.as_deref(), &order_id, now);
        let timer = StageTimer::start(Stage::Gate);
        let decided = self
            .breakers
            .gate
            .call(reserve, gate_unavailable)
            .instrument(tracing::info_span!(target: trace::TARGET, "gate", sale = %sale.id))
            .await;
        drop(timer);
        let decision = match decided {
            Err(open) => return Placing::Answered(Err(open.into())),
            Ok(Ok(decision)) => decision,
            Ok(Err(e)) => return Placing::Answered(Err(self.gate_failed(&sale, e).await)),
        };
        match decision {
            Decision::Refused(refusal) => Placing::Answered(Err(EngineError::Refused(refusal))),
            Decision::KeyReused => Placing::Answered(Err(EngineError::KeyReused)),
            Decision::TooManyKeys => Placing::Answered(Err(EngineError::TooManyKeys)),
            Decision::Replay(answer) => {
                let key = key.expect("only keyed purchases replay");
                Placing::Answered(self.replay(&sale, &purchase.user_id, &key, answer).await)
            }
            Decision::Reserved { at } => {
                crash_here_if_asked("after-reserve");
                // Created at the gate's clock (Redis's in Redis mode): the payment window
                // runs on the one clock every gateway shares.
                let (retry_of, sale_id) = (key.clone(), sale.id.clone());
                let order = Arc::new(Order::new(order_id, &sale, &purchase, key, at));
                // A bus known to be failing is not tried: the unit goes back at once.
                let bus_permit = match self.breakers.bus.admit() {
                    Ok(permit) => permit,
                    Err(open) => {
                        if let Err(e) = self.gate.release(&sale, &order, true).await {
                            tracing::error!(order = %order.id, error = %e, "reservation not released");
                        }
                        self.key_waiters.settled(&order.id);
                        return Placing::Answered(Err(open.into()));
                    }
                };
                // The rest runs in its own task: if the buyer hangs up, or waits longer
                // than `buyer_wait`, the order is still stored or released, never left
                // behind; a retry with the same key then gets its answer.
                // In the request's trace (the Kafka message carries it to the worker).
                let placing = tokio::spawn(
                    publish_then_settle(
                        self.gate.clone(),
                        self.bus.clone(),
                        bus_permit,
                        self.key_waiters.clone(),
                        sale,
                        order,
                    )
                    .instrument(tracing::Span::current()),
                );
                Placing::Settling(Settling {
                    placing,
                    retry_of,
                    sale_id,
                    user_id: purchase.user_id,
                })
            }
        }
    }

    /// How many orders may be on their way to the store at once before the bus refuses
    /// one (`None`: no such bound here).
    pub(crate) fn bus_capacity(&self) -> Option<usize> {
        self.bus.capacity()
    }

    /// Whether this gateway knows the sale to be sold out or ended (no round trip):
    /// the refusal a new buyer would surely get.
    pub(crate) fn known_closed(&self, sale: &Sale) -> Option<Refusal> {
        match self.gate.quick_refusal(sale, None, now_millis()) {
            Some(refusal @ (Refusal::SoldOut | Refusal::Ended)) => Some(refusal),
            _ => None,
        }
    }

    /// A purchase's second half: waits (up to `wait`, if given) for its order to be
    /// durable, or for its failure.
    pub(crate) async fn settle(
        &self,
        settling: Settling,
        wait: Option<Duration>,
    ) -> Result<Arc<Order>, EngineError> {
        let Settling {
            placing,
            retry_of,
            sale_id,
            user_id,
        } = settling;
        let placed = match wait {
            Some(wait) => match tokio::time::timeout(wait, placing).await {
                Ok(placed) => placed,
                Err(_) => {
                    return Err(EngineError::Unavailable(
                        "the order is still on its way to the store; retry with the same \
                         Idempotency-Key"
                            .into(),
                    ));
                }
            },
            None => placing.await,
        };
        match placed.map_err(|e| {
            tracing::error!(error = %e, "order task failed");
            EngineError::Unavailable(
                "the order could not be placed; retry with the same Idempotency-Key".into(),
            )
        })? {
            Err(EngineError::Unavailable(why)) if retry_of.is_some() => {
                let key = retry_of.as_deref().expect("checked");
                self.stored_for_key(&sale_id, &user_id, key, why).await
            }
            placed => placed,
        }
    }

    /// A keyed order the store did not take: if the store holds an order for that key
    /// already, this was a retry whose key the gate had forgotten (its TTL passed, on a
    /// sale without an end): it gets the original order, a replay, instead of 503 for
    /// every retry (the store refuses a second order for a key) (issue #21).
    async fn stored_for_key(
        &self,
        sale_id: &str,
        user_id: &str,
        key: &str,
        why: String,
    ) -> Result<Arc<Order>, EngineError> {
        match self.store.order_for_key(sale_id, user_id, key).await {
            Ok(Some(original)) => Ok(Arc::new(original)),
            Ok(None) => Err(EngineError::Unavailable(why)),
            Err(e) => {
                tracing::warn!(error = %e, "key not looked up in the store");
                Err(EngineError::Unavailable(why))
            }
        }
    }

    /// Answers a retry with its key's original answer, waiting (up to `replay_wait`) if
    /// the first request is still on its way to the store.
    /// A purchase in a finished sale, which the gate may have forgotten (issue #24): a
    /// retry with its key gets its order from the store, where the key is kept with it;
    /// anything else is refused, the sale has ended.
    async fn after_the_end(
        &self,
        sale: &Sale,
        purchase: &ValidPurchase,
        key: Option<&str>,
    ) -> Result<Arc<Order>, EngineError> {
        if let Some(key) = key
            && let Some(order) = (self.store)
                .order_for_key(&sale.id, &purchase.user_id, key)
                .await?
        {
            if order.fingerprint != purchase.fingerprint {
                return Err(EngineError::KeyReused);
            }
            return Ok(Arc::new(order));
        }
        Err(EngineError::Refused(Refusal::Ended))
    }

    async fn replay(
        &self,
        sale: &Sale,
        user_id: &str,
        key: &str,
        answer: KeyAnswer,
    ) -> Result<Arc<Order>, EngineError> {
        let order_id = match answer {
            KeyAnswer::Accepted(order) => return Ok(order),
            KeyAnswer::InFlight { order_id } => order_id,
        };
        let watching = Watching {
            notify: Some(self.key_waiters.watch(&order_id)),
            waiters: &self.key_waiters,
            order_id: order_id.clone(),
        };
        let notify = watching.notify.clone().expect("set above");
        match self.await_settled(sale, user_id, key, &notify).await {
            // Still "in flight" in the gate, but the order may be stored: its gateway
            // died before confirming the key, or the confirmation was lost in a Redis
            // failover (the sweeper confirms it after `hold_grace`). The store's word
            // is final: the buyer's original order.
            Err(EngineError::InProgress) => match self.store.get_order(&order_id).await {
                Ok(Some(order)) if order.user_id == user_id => Ok(Arc::new(order)),
                _ => Err(EngineError::InProgress),
            },
            other => other,
        }
    }

    async fn await_settled(
        &self,
        sale: &Sale,
        user_id: &str,
        key: &str,
        notify: &Notify,
    ) -> Result<Arc<Order>, EngineError> {
        let deadline = tokio::time::Instant::now() + self.settings.replay_wait;
        // Another gateway's request cannot wake us: look again after this long, doubling.
        let mut look_again = Duration::from_millis(5);
        loop {
            // Listen before reading, so a settlement between the read and the wait is
            // not missed.
            let settled = notify.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            match self.gate.key_answer(sale, user_id, key).await? {
                Some(KeyAnswer::Accepted(order)) => return Ok(order),
                Some(KeyAnswer::InFlight { .. }) => {}
                None => {
                    return Err(EngineError::Unavailable(
                        "the first request with this key failed; retry".into(),
                    ));
                }
            }
            let wake_at = deadline.min(tokio::time::Instant::now() + look_again);
            tokio::select! {
                () = settled => {}
                () = tokio::time::sleep_until(wake_at) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(EngineError::InProgress);
            }
            look_again = (look_again * 2).min(Duration::from_millis(100));
        }
    }
}

/// Whether a gate error is the gate being unavailable (what the breaker counts), not
/// an answer such as "unknown sale".
fn gate_unavailable(e: &GateError) -> bool {
    matches!(e, GateError::Unavailable(_))
}

/// Test-only failpoints: `FLASHSALE_FAILPOINT=after-reserve` kills the process right
/// after the gate reserved and before the bus has the order, `after-publish` once the
/// bus has it and before the gate's key is confirmed, `after-end` once a cancel or an
/// expiry is committed and before its units go back to the gate (as a `kill -9` would).
pub(super) fn crash_here_if_asked(point: &str) {
    if std::env::var("FLASHSALE_FAILPOINT").is_ok_and(|p| p == point) {
        std::process::abort();
    }
}

/// Test-only: `FLASHSALE_FAILPOINT=slow-publish` makes the bus answer a second late
/// (a slow broker), so that a retry meets its first request still in flight;
/// `slow-ticket-append` does the same to the line's store of new tickets.
pub(crate) async fn delay_here_if_asked(point: &str) {
    if std::env::var("FLASHSALE_FAILPOINT").is_ok_and(|p| p == point) {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Publishes a reserved order, then confirms the reservation, or releases it when the
/// bus surely did not take the order. Replays of its key are woken either way.
async fn publish_then_settle(
    gate: Arc<dyn StockGate>,
    bus: Arc<dyn OrderBus>,
    bus_permit: Permit,
    key_waiters: Arc<KeyWaiters>,
    sale: Arc<Sale>,
    order: Arc<Order>,
) -> Result<Arc<Order>, EngineError> {
    delay_here_if_asked("slow-publish").await;
    let published = {
        let _timer = StageTimer::start(Stage::Bus);
        bus.publish(&order)
            .instrument(tracing::info_span!(target: trace::TARGET, "bus", order = %order.id))
            .await
    };
    // A full in-process bus is a writer behind, not a bus down: it sheds by itself.
    bus_permit.record(!matches!(&published, Err(e) if !matches!(e, BusError::Full)));
    let answer = match published {
        Ok(()) => {
            crash_here_if_asked("after-publish");
            if let Err(e) = gate.confirm(&sale, &order).await {
                // The order is durable; only replays of its key are affected.
                tracing::warn!(order = %order.id, error = %e, "could not confirm key");
            }
            Ok(order.clone())
        }
        Err(e) if e.is_definite() => {
            if let Err(release) = gate.release(&sale, &order, true).await {
                tracing::error!(order = %order.id, error = %release, "reservation not released");
            }
            // The bus's own words go to the log, not to the buyer (issue #21).
            tracing::warn!(order = %order.id, error = %e, "order not placed; reservation released");
            Err(EngineError::Unavailable(
                "the order could not be queued; retry".into(),
            ))
        }
        Err(e) => {
            tracing::error!(order = %order.id, error = %e, "order outcome unknown; reservation kept");
            // Until the sweeper finds out (`stale_holds`): stored, its key replays it;
            // not, its units go back.
            gate.hold_unresolved(&sale, &order);
            Err(EngineError::Unavailable(
                "the order's outcome is not known yet; retry with the same Idempotency-Key".into(),
            ))
        }
    };
    key_waiters.settled(&order.id);
    answer
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{PurchaseRequest, validate_purchase};
    use crate::gate::LocalGate;
    use crate::testkit::{Setup, TestEngine};

    /// Issue #21: a replay whose request is dropped while it waits for the first
    /// request (its client hung up) leaves no entry in the waiters' table.
    #[tokio::test]
    async fn an_abandoned_replay_leaves_no_waiter_behind() {
        let gate = Arc::new(LocalGate::new());
        let fixture = TestEngine::with(Setup {
            gate: gate.clone(),
            ..Default::default()
        })
        .await;
        let sale = fixture.engine.sale(&fixture.sale).await.unwrap();
        // The first request with the key is still in flight.
        let request = PurchaseRequest {
            user_id: "a".into(),
            quantity: Some(1),
            items: None,
        };
        let first = validate_purchase(&sale, request).unwrap();
        let decided = gate
            .decide(&sale, &first, Some("k"), "first", now_millis())
            .unwrap();
        assert!(matches!(decided, Decision::Reserved { .. }));
        let replay = fixture.buy("a", Some("k"));
        assert!(
            tokio::time::timeout(Duration::from_millis(100), replay)
                .await
                .is_err(),
            "the replay waits"
        );
        assert_eq!(fixture.engine.key_waiters.len(), 0);
        fixture.stop().await;
    }
}
