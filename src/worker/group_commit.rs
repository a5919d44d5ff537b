//! The group-commit writer of the in-process bus: it takes whatever orders are waiting
//! (up to `max_batch`), stores them in one transaction and only then answers each of
//! them. Told to stop, it closes its inbox (new orders are refused), stores what is
//! already in it, and returns.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::bus::{Envelope, OrderInbox};
use crate::observe::metrics::{Stage, StageTimer};
use crate::store::{InsertOutcome, OrderStore};

pub async fn run_group_commit(
    mut inbox: OrderInbox,
    store: Arc<dyn OrderStore>,
    max_batch: usize,
    stop: CancellationToken,
) {
    let mut batch: Vec<Envelope> = Vec::with_capacity(max_batch);
    loop {
        // recv_many waits for the first order, then takes every order already queued:
        // under load, orders that arrive during one commit form the next batch.
        let received = tokio::select! {
            n = inbox.recv_many(&mut batch, max_batch) => n,
            () = stop.cancelled(), if !inbox.is_closed() => {
                inbox.close();
                continue;
            }
        };
        if received == 0 {
            break; // closed and drained
        }
        commit(&mut batch, store.as_ref()).await;
    }
    tracing::debug!("order writer stopped: bus closed and drained");
}

/// How long the writer keeps asking which orders of a batch whose commit failed made it.
const LOOKUP_PATIENCE: Duration = Duration::from_secs(5);

/// Stores the batch and answers each order of it.
async fn commit(batch: &mut Vec<Envelope>, store: &dyn OrderStore) {
    // An order past its deadline is not stored any more: its buyer was answered, and
    // a rebuild elsewhere may already have counted without it.
    let now = tokio::time::Instant::now();
    for late in batch.extract_if(.., |e| e.deadline <= now) {
        let _ = late.reply.send(Err(
            "its delivery deadline passed before it was stored".into()
        ));
    }
    if batch.is_empty() {
        return;
    }
    let orders: Vec<_> = batch.iter().map(|e| e.order.clone()).collect();
    let started = std::time::Instant::now();
    // Nor does the batch commit past the earliest deadline in it: a commit that is
    // slow (a lock, a stalled disk) is rolled back at that deadline, not left to land
    // after a rebuild read the store (issue #21).
    let earliest = batch.iter().map(|e| e.deadline).min().expect("not empty");
    let stored = {
        let _timer = StageTimer::start(Stage::StoreCommit);
        store
            .insert_orders_within(&orders, earliest.saturating_duration_since(now))
            .await
    };
    match stored {
        Ok(outcomes) => {
            tracing::debug!(
                size = orders.len(),
                took_us = started.elapsed().as_micros() as u64,
                "batch committed"
            );
            for (envelope, outcome) in batch.drain(..).zip(outcomes) {
                let reply = match outcome {
                    InsertOutcome::Rejected(reason) => {
                        tracing::error!(order = %envelope.order.id, %reason, "store refused an order");
                        Err(reason)
                    }
                    _ => Ok(()),
                };
                let _ = envelope.reply.send(reply);
            }
        }
        Err(e) => {
            // The transaction failed, perhaps at COMMIT with the connection lost: it may
            // have committed all the same. Look the orders up; only those surely absent
            // are "not stored" (their units go back). Unanswerable: outcome unknown.
            tracing::error!(error = %e, orders = orders.len(), "batch failed; looking its orders up");
            let ids: Vec<String> = orders.iter().map(|o| o.id.clone()).collect();
            match look_up(store, &ids).await {
                Some(stored) => {
                    for envelope in batch.drain(..) {
                        let reply = if stored.contains(&envelope.order.id) {
                            Ok(())
                        } else {
                            Err(e.to_string())
                        };
                        let _ = envelope.reply.send(reply);
                    }
                }
                // Dropping the replies tells each buyer's request "outcome unknown": the
                // reservations stay until the sweeper resolves them.
                None => batch.clear(),
            }
        }
    }
}

/// Which of `ids` the store holds, asking again for a while if it does not answer.
async fn look_up(store: &dyn OrderStore, ids: &[String]) -> Option<HashSet<String>> {
    let give_up = tokio::time::Instant::now() + LOOKUP_PATIENCE;
    let mut backoff = Duration::from_millis(20);
    loop {
        match store.stored_ids(ids).await {
            Ok(found) => return Some(found.into_iter().collect()),
            Err(e) if tokio::time::Instant::now() + backoff < give_up => {
                tracing::warn!(error = %e, "lookup after a failed commit failed; asking again");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot tell which orders were stored");
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::bus::{BusError, MemoryBus, OrderBus};
    use crate::domain::{NewSale, Order, PurchaseRequest, now_millis, validate_purchase};
    use crate::testkit::FaultyStore;

    fn orders(n: usize) -> (crate::domain::Sale, Vec<Order>) {
        let sale = NewSale {
            name: "s".into(),
            stock: Some(10),
            items: None,
            per_user_limit: Some(1),
            starts_at: None,
            ends_at: None,
            payment_window: None,
            rate_limits: None,
            shards: None,
            queue: None,
        }
        .into_sale("sale".into(), 0)
        .unwrap();
        let orders = (0..n)
            .map(|i| {
                let request = PurchaseRequest {
                    user_id: format!("u{i}"),
                    quantity: Some(1),
                    items: None,
                };
                let purchase = validate_purchase(&sale, request).unwrap();
                Order::new(format!("o{i}"), &sale, &purchase, None, now_millis())
            })
            .collect();
        (sale, orders)
    }

    /// Publishes `orders` at once through a memory bus whose writer uses `store`.
    async fn publish_all(store: Arc<FaultyStore>, orders: &[Order]) -> Vec<Result<(), BusError>> {
        let (bus, inbox) = MemoryBus::new(64, Duration::from_secs(5));
        let stop = CancellationToken::new();
        let writer = tokio::spawn(run_group_commit(inbox, store, 64, stop.clone()));
        let bus = Arc::new(bus);
        let answers = futures_util::future::join_all(orders.iter().map(|o| bus.publish(o))).await;
        stop.cancel();
        drop(bus);
        writer.await.unwrap();
        answers
    }

    /// A COMMIT whose answer was lost may have committed: the orders that are in the
    /// store are durable (their buyer gets 202), not released as "not stored".
    #[tokio::test]
    async fn a_lost_commit_answer_is_resolved_by_looking_the_orders_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FaultyStore::sqlite(dir.path()).await);
        let (sale, orders) = orders(3);
        store.create_sale(&sale).await.unwrap();
        *store.lose_commit_answers.lock() = true;
        let answers = publish_all(store.clone(), &orders).await;
        for answer in &answers {
            assert!(answer.is_ok(), "a stored order answered {answer:?}");
        }
        assert_eq!(store.sale_orders("sale").await.unwrap().len(), 3);
    }

    /// When the lookup fails too, nobody can tell: the outcome is unknown (the
    /// reservation stays for the sweeper), never "not stored".
    #[tokio::test]
    async fn an_unanswerable_commit_is_an_unknown_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FaultyStore::sqlite(dir.path()).await);
        let (sale, orders) = orders(2);
        store.create_sale(&sale).await.unwrap();
        *store.lose_commit_answers.lock() = true;
        *store.fail_lookups.lock() = true;
        let answers = publish_all(store.clone(), &orders).await;
        for answer in answers {
            let error = answer.unwrap_err();
            assert!(!error.is_definite(), "{error:?}");
        }
    }

    /// An order that waited past its delivery deadline is not stored any more.
    #[tokio::test]
    async fn an_order_past_its_deadline_is_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FaultyStore::sqlite(dir.path()).await);
        let (sale, orders) = orders(1);
        store.create_sale(&sale).await.unwrap();
        let (bus, inbox) = MemoryBus::new(8, Duration::from_millis(50));
        let publishing = tokio::spawn(async move { bus.publish(&orders[0]).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stop = CancellationToken::new();
        stop.cancel();
        run_group_commit(inbox, store.clone(), 8, stop).await;
        let answer = publishing.await.unwrap().unwrap_err();
        assert!(answer.is_definite(), "{answer:?}");
        assert!(store.sale_orders("sale").await.unwrap().is_empty());
    }
}
