//! The engine's pipeline, gate → bus → store, on `TestEngine` (local gate, in-process
//! bus, SQLite in a temp dir). Every purchase goes through `TestEngine::purchase`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{EngineError, EngineSettings};
use crate::api::ApiError;
use crate::domain::{AddStock, OrderStatus, Refusal};
use crate::gate::{LocalGate, StockGate};
use crate::store::OrderStore;
use crate::testkit::{FaultyGate, Setup, TestEngine};

/// Settings where a buyer waits long enough never to be answered "still on its way".
fn patient() -> EngineSettings {
    EngineSettings {
        buyer_wait: Duration::from_secs(10),
        ..Default::default()
    }
}

/// A purchase the gate reserved is answered only once the order is in the store.
#[tokio::test]
async fn a_reserved_purchase_is_durable_when_answered() {
    let engine = TestEngine::start().await;
    let order = engine.buy("a", Some("k")).await.unwrap();
    // Read at once, without waiting for anything.
    let stored = engine.store.get_order(&order.id).await.unwrap();
    assert_eq!(stored.as_ref(), Some(order.as_ref()));
    assert_eq!(order.status, OrderStatus::Paid);
    assert_eq!(order.total_units(), 1);
    assert_eq!(engine.engine.sold_in_store(&engine.sale).await.unwrap(), 1);
    assert_eq!(engine.remaining().await, [4]);
    engine.stop().await;
}

/// The bus is full (its writer is behind): the reservation is released, stock back and
/// key forgotten, and the buyer gets 503; the same key is decided afresh later.
#[tokio::test]
async fn a_full_bus_releases_the_reservation() {
    let engine = TestEngine::with(Setup {
        bus_capacity: 1,
        writer: false,
        settings: patient(),
        ..Default::default()
    })
    .await;
    let sale = engine.engine.sale(&engine.sale).await.unwrap();
    let (first, (shed, remaining, key)) = tokio::join!(
        // Takes the bus's one place and waits there for the writer.
        engine.buy("a", Some("ka")),
        async {
            engine.wait_on_bus(1).await;
            let shed = engine.buy("b", Some("kb")).await;
            let remaining = engine.remaining().await;
            let key = engine
                .engine
                .gate
                .key_answer(&sale, "b", "kb")
                .await
                .unwrap();
            engine.start_writer();
            (shed, remaining, key)
        }
    );
    let shed = shed.unwrap_err();
    assert!(matches!(shed, EngineError::Unavailable(_)), "{shed:?}");
    assert_eq!(ApiError::from(shed).status, 503);
    assert_eq!(remaining, [4], "only a's unit is reserved");
    assert!(key.is_none(), "b's key is forgotten: {key:?}");
    let first = first.unwrap();

    let retried = engine.buy("b", Some("kb")).await.unwrap();
    assert_ne!(retried.id, first.id);
    assert_eq!(engine.remaining().await, [3]);
    assert_eq!(engine.stored_orders().await.len(), 2);
    engine.stop().await;
}

/// A retry with the key of a purchase still on its way to the store waits for it, then
/// gets the same order: one order stored, one unit sold.
#[tokio::test]
async fn a_retry_waits_for_the_first_request_then_replays_it() {
    let engine = TestEngine::with(Setup {
        writer: false,
        settings: patient(),
        ..Default::default()
    })
    .await;
    let held_for = Duration::from_millis(300);
    let (first, (retry, waited)) = tokio::join!(engine.buy("a", Some("k")), async {
        engine.wait_on_bus(1).await;
        let sent = Instant::now();
        let (retry, ()) = tokio::join!(engine.buy("a", Some("k")), async {
            tokio::time::sleep(held_for).await;
            engine.start_writer();
        });
        (retry, sent.elapsed())
    });
    let (first, retry) = (first.unwrap(), retry.unwrap());
    assert_eq!(retry.id, first.id, "the retry replays the first order");
    assert!(
        waited >= held_for,
        "answered after {waited:?}, before the first was stored"
    );
    assert_eq!(engine.stored_orders().await.len(), 1);
    assert_eq!(engine.remaining().await, [4]);
    engine.stop().await;
}

/// The gate forgets everything (the process restarts with a fresh local gate): the
/// engine rebuilds each sale's remaining stock, buyers' units and keys from the store.
#[tokio::test]
async fn a_restart_rebuilds_the_gate_from_the_store() {
    let engine = TestEngine::with(Setup {
        stock: 6,
        per_user_limit: 2,
        ..Default::default()
    })
    .await;
    engine.purchase(&engine.sale, "a", 2, None).await.unwrap();
    let b = engine.buy("b", Some("kb")).await.unwrap();
    assert_eq!(engine.remaining().await, [3]);

    let fresh = Arc::new(LocalGate::new());
    let engine = engine.restart(fresh.clone()).await;
    let sale = engine.engine.sale(&engine.sale).await.unwrap();
    assert_eq!(fresh.remaining(&sale).await.unwrap(), [3], "stock rebuilt");
    let a_again = engine.buy("a", None).await;
    assert!(
        matches!(a_again, Err(EngineError::Refused(Refusal::LimitReached))),
        "a holds 2 of 2: {a_again:?}"
    );
    let b_replay = engine.buy("b", Some("kb")).await.unwrap();
    assert_eq!(b_replay.id, b.id, "b's key replays its order");
    engine.buy("b", Some("kb2")).await.unwrap();
    assert_eq!(engine.remaining().await, [2]);
    assert_eq!(engine.stored_orders().await.len(), 3);
    engine.stop().await;
}

/// Issue #23: a key whose confirmation was lost (a Redis failover dropped it, or its
/// gateway died after the bus took the order) stays "in flight" in the gate until the
/// sweeper's `hold_grace`; a retry meanwhile gets the stored order, not 503 after 503.
#[tokio::test]
async fn a_retry_of_a_stored_order_whose_key_confirmation_was_lost_gets_the_order() {
    let gate = Arc::new(FaultyGate::new(LocalGate::new()));
    let engine = TestEngine::with(Setup {
        gate: gate.clone(),
        settings: EngineSettings {
            replay_wait: Duration::from_millis(50),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    gate.lose_confirmations
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let first = engine.buy("alice", Some("k")).await.unwrap();
    let retry = engine.buy("alice", Some("k")).await;
    assert_eq!(retry.map(|o| o.id.clone()).ok(), Some(first.id.clone()));
    assert_eq!(engine.stored_orders().await.len(), 1);
}

/// An operator's control whose gate step fails is stored; the gate catches up on the
/// sweeper's next pass.
#[tokio::test]
async fn a_control_that_fails_at_the_gate_converges() {
    let gate = Arc::new(FaultyGate::new(LocalGate::new()));
    let engine = TestEngine::with(Setup {
        gate: gate.clone(),
        ..Default::default()
    })
    .await;

    // Add stock: stored, not in the gate, until the sweep.
    gate.fail_updates(true);
    let add = AddStock {
        item: None,
        units: 3,
    };
    let failed = engine.engine.add_stock(&engine.sale, &add).await;
    assert!(
        matches!(failed, Err(EngineError::Unavailable(_))),
        "{:?}",
        failed.err()
    );
    let stored = engine.store.get_sale(&engine.sale).await.unwrap().unwrap();
    assert_eq!(stored.total_stock(), 8);
    assert_eq!(engine.remaining().await, [5]);
    gate.fail_updates(false);
    engine.engine.sweep().await.unwrap();
    assert_eq!(engine.remaining().await, [8]);

    // End: stored; the gate still sells until the sweep, then refuses.
    gate.fail_updates(true);
    let failed = engine.engine.end_sale(&engine.sale).await;
    assert!(
        matches!(failed, Err(EngineError::Unavailable(_))),
        "{:?}",
        failed.err()
    );
    let stored = engine.store.get_sale(&engine.sale).await.unwrap().unwrap();
    assert!(stored.ends_at.is_some(), "the end is stored");
    engine.buy("a", None).await.unwrap();
    gate.fail_updates(false);
    engine.engine.sweep().await.unwrap();
    let late = engine.buy("b", None).await;
    assert!(
        matches!(late, Err(EngineError::Refused(Refusal::Ended))),
        "{late:?}"
    );
    assert_eq!(engine.remaining().await, [7]);
    engine.stop().await;
}
