//! The Redis gate against a real Redis (ignored without one: `scripts/services.sh up`).
//! Each test has sales of its own; a "loss" deletes only that sale's keys.

use std::time::Duration;

use super::*;
use crate::domain::{Order, PurchaseRequest, now_millis, validate_purchase};

async fn gate() -> RedisGate {
    let url =
        std::env::var("FLASHSALE_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    RedisGate::connect(&url, Duration::from_secs(2))
        .await
        .unwrap()
}

/// A sale of its own (a random id), created now and starting now unless told.
fn sale(stock: u32, limit: u32, starts_at: Option<i64>, ends_at: Option<i64>, window: u32) -> Sale {
    let now = now_millis();
    crate::testkit::sale()
        .random_id()
        .stock(stock)
        .limit(limit)
        .window(starts_at.unwrap_or(now), ends_at)
        .payment_window(window)
        .created_at(now)
        .build()
}

/// Reserves one unit for `user` (with `key` if given); returns the order when reserved.
async fn buy(
    gate: &RedisGate,
    sale: &Sale,
    user: &str,
    key: Option<&str>,
    now: i64,
) -> Result<Order, Decision> {
    let request = PurchaseRequest {
        user_id: user.into(),
        quantity: Some(1),
        items: None,
    };
    let purchase = validate_purchase(sale, request).unwrap();
    let id = uuid::Uuid::now_v7().simple().to_string();
    match gate.reserve(sale, &purchase, key, &id, now).await.unwrap() {
        Decision::Reserved { at } => Ok(Order::new(id, sale, &purchase, key.map(String::from), at)),
        other => Err(other),
    }
}

/// What a data loss does to one sale: every key of it gone.
async fn lose(gate: &RedisGate, sale: &Sale) {
    let mut conn = gate.redis.get();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{sale:{}}}:*", sale.id))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        redis::cmd("DEL")
            .arg(keys)
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    }
}

fn snapshot_of(sale: &Sale, orders: &[Order]) -> SaleSnapshot {
    crate::engine::snapshot(sale, orders)
}

#[tokio::test]
#[ignore = "needs Redis on 127.0.0.1:6379 (scripts/services.sh up)"]
async fn a_restore_never_writes_over_a_sale_that_exists() {
    let gate = gate().await;
    let s = sale(5, 1, None, None, 0);
    gate.open_sale(&s).await.unwrap();
    buy(&gate, &s, "a", None, now_millis()).await.unwrap();
    let lease = gate.lease_rebuild(&s).await.unwrap().expect("lease free");
    // A second (or late) rebuild with an empty snapshot would give the unit back.
    let refused = gate.restore(&s, &SaleSnapshot::default(), &lease).await;
    assert!(matches!(refused, Err(GateError::Fenced(..))), "{refused:?}");
    assert_eq!(gate.remaining(&s).await.unwrap(), [4]);
}

#[tokio::test]
#[ignore = "needs Redis on 127.0.0.1:6379 (scripts/services.sh up)"]
async fn one_rebuild_at_a_time_across_gateways() {
    let (one, other) = (gate().await, gate().await);
    let s = sale(5, 1, None, None, 0);
    one.open_sale(&s).await.unwrap();
    lose(&one, &s).await;
    let lease = one.lease_rebuild(&s).await.unwrap().expect("lease free");
    assert!(
        other.lease_rebuild(&s).await.unwrap().is_none(),
        "two leases at once"
    );
    // A restore whose lease is not (or no longer) its own is refused.
    let stranger = RebuildLease {
        token: "not-the-owner".into(),
        _renewal: None,
    };
    let refused = other.restore(&s, &SaleSnapshot::default(), &stranger).await;
    assert!(matches!(refused, Err(GateError::Fenced(..))), "{refused:?}");
    assert!(!other.has_sale(&s).await.unwrap());
    // The lease is renewed while held: still held after its first expiry.
    tokio::time::sleep(Duration::from_millis(LEASE_MS + 500)).await;
    assert!(
        other.lease_rebuild(&s).await.unwrap().is_none(),
        "lease lapsed while held"
    );
    one.restore(
        &s,
        &SaleSnapshot {
            sold: vec![0],
            ..Default::default()
        },
        &lease,
    )
    .await
    .unwrap();
    one.end_rebuild(&s, lease).await.unwrap();
    assert_eq!(one.remaining(&s).await.unwrap(), [5]);
    assert!(
        other.lease_rebuild(&s).await.unwrap().is_some(),
        "lease not given back"
    );
}

/// After a rebuild, releasing an order the rebuild did not count (its release was
/// pending in the store, or it never reached the store) gives nothing back; releasing a
/// counted one does, once.
#[tokio::test]
#[ignore = "needs Redis on 127.0.0.1:6379 (scripts/services.sh up)"]
async fn a_release_after_a_rebuild_gives_back_only_what_the_rebuild_counted() {
    let gate = gate().await;
    let s = sale(3, 1, None, None, 0);
    gate.open_sale(&s).await.unwrap();
    let kept = buy(&gate, &s, "a", None, now_millis()).await.unwrap();
    let cancelled = buy(&gate, &s, "b", None, now_millis()).await.unwrap();
    lose(&gate, &s).await;
    // Some milliseconds pass between the loss and the rebuild.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let lease = gate.lease_rebuild(&s).await.unwrap().unwrap();
    gate.restore(&s, &snapshot_of(&s, std::slice::from_ref(&kept)), &lease)
        .await
        .unwrap();
    gate.end_rebuild(&s, lease).await.unwrap();
    assert_eq!(gate.remaining(&s).await.unwrap(), [2]);
    gate.release(&s, &cancelled, false).await.unwrap();
    assert_eq!(
        gate.remaining(&s).await.unwrap(),
        [2],
        "uncounted order released"
    );
    gate.release(&s, &kept, false).await.unwrap();
    gate.release(&s, &kept, false).await.unwrap();
    assert_eq!(gate.remaining(&s).await.unwrap(), [3]);
    // An order placed after the rebuild is released as usual.
    let later = buy(&gate, &s, "c", None, now_millis()).await.unwrap();
    gate.release(&s, &later, false).await.unwrap();
    assert_eq!(gate.remaining(&s).await.unwrap(), [3]);
}

#[tokio::test]
#[ignore = "needs Redis on 127.0.0.1:6379 (scripts/services.sh up)"]
async fn a_release_of_a_lost_sale_says_so() {
    let gate = gate().await;
    let s = sale(3, 1, None, None, 0);
    gate.open_sale(&s).await.unwrap();
    let order = buy(&gate, &s, "a", None, now_millis()).await.unwrap();
    lose(&gate, &s).await;
    let lost = gate.release(&s, &order, false).await;
    assert!(matches!(lost, Err(GateError::UnknownSale(_))), "{lost:?}");
}

/// The sale window and the order's time come from Redis's clock, not the gateway's: a
/// gateway an hour ahead opens nothing early.
#[tokio::test]
#[ignore = "needs Redis on 127.0.0.1:6379 (scripts/services.sh up)"]
async fn the_window_is_decided_on_the_redis_clock() {
    let gate = gate().await;
    let now = now_millis();
    let s = sale(3, 1, Some(now + 1_800_000), None, 0);
    gate.open_sale(&s).await.unwrap();
    let skewed = now + 3_600_000;
    for key in [None, Some("k")] {
        let early = buy(&gate, &s, "a", key, skewed).await;
        assert_eq!(early.unwrap_err(), Decision::Refused(Refusal::NotStarted));
    }
    let open = sale(3, 1, None, None, 60);
    gate.open_sale(&open).await.unwrap();
    let order = buy(&gate, &open, "a", None, skewed).await.unwrap();
    assert!(
        (order.created_at - now_millis()).abs() < 60_000,
        "created on the gateway's clock"
    );
}

/// A key lives until the sale has ended and its payment window has passed (a retry
/// after its expiry would reserve a second order the store then refuses).
#[tokio::test]
#[ignore = "needs Redis on 127.0.0.1:6379 (scripts/services.sh up)"]
async fn a_key_outlives_the_sale_and_its_payment_window() {
    let gate = gate().await;
    let ten_days = 10 * 24 * 3600 * 1000;
    let s = sale(3, 1, None, Some(now_millis() + ten_days), 600);
    gate.open_sale(&s).await.unwrap();
    buy(&gate, &s, "a", Some("k"), now_millis()).await.unwrap();
    let mut conn = gate.redis.get();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(SaleKeys::idempotency(&s.id, "a", "k"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > ten_days + 600_000, "key expires after {ttl} ms");
}

/// The sweeper ends a hold whose gateway died after the bus had the order: the key then
/// replays the order instead of answering "in flight" for its whole life.
#[tokio::test]
#[ignore = "needs Redis on 127.0.0.1:6379 (scripts/services.sh up)"]
async fn a_dead_gateways_key_is_resolved_to_its_order() {
    let gate = gate().await;
    let s = sale(3, 1, None, None, 0);
    gate.open_sale(&s).await.unwrap();
    let order = buy(&gate, &s, "a", Some("k"), now_millis()).await.unwrap();
    assert!(matches!(
        gate.key_answer(&s, "a", "k").await.unwrap(),
        Some(KeyAnswer::InFlight { .. })
    ));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let stale = gate
        .stale_holds(&s, Duration::from_millis(10))
        .await
        .unwrap();
    assert_eq!(stale, std::slice::from_ref(&order.id));
    gate.drop_hold(&s, &order.id, HoldEnd::Confirm(&order))
        .await
        .unwrap();
    assert_eq!(
        gate.key_answer(&s, "a", "k").await.unwrap(),
        Some(KeyAnswer::Accepted(std::sync::Arc::new(order)))
    );
    assert_eq!(
        gate.remaining(&s).await.unwrap(),
        [2],
        "confirming gives nothing back"
    );
}

/// A dead gateway's order that ends (expires) before the hold sweeper got to it: the
/// release drops the hold, and the key answers the order instead of staying in flight.
#[tokio::test]
#[ignore = "needs Redis on 127.0.0.1:6379 (scripts/services.sh up)"]
async fn an_ended_orders_release_settles_its_key() {
    let gate = gate().await;
    let s = sale(3, 1, None, None, 60);
    gate.open_sale(&s).await.unwrap();
    let order = buy(&gate, &s, "a", Some("k"), now_millis()).await.unwrap();
    gate.release(&s, &order, false).await.unwrap();
    assert_eq!(
        gate.key_answer(&s, "a", "k").await.unwrap(),
        Some(KeyAnswer::Accepted(std::sync::Arc::new(order)))
    );
    assert_eq!(gate.remaining(&s).await.unwrap(), [3]);
}

async fn pttl(gate: &RedisGate, key: &str) -> i64 {
    let mut conn = gate.redis.get();
    redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// A refusal is not remembered: the key of a click before the start buys after it.
#[tokio::test]
#[ignore = "needs Redis on 127.0.0.1:6379 (scripts/services.sh up)"]
async fn a_refused_key_is_decided_afresh() {
    let gate = gate().await;
    let s = sale(3, 1, Some(now_millis() + 300), None, 0);
    gate.open_sale(&s).await.unwrap();
    let early = buy(&gate, &s, "a", Some("k"), now_millis()).await;
    assert_eq!(early.unwrap_err(), Decision::Refused(Refusal::NotStarted));
    assert_eq!(gate.key_answer(&s, "a", "k").await.unwrap(), None);
    tokio::time::sleep(Duration::from_millis(400)).await;
    buy(&gate, &s, "a", Some("k"), now_millis()).await.unwrap();
}

#[tokio::test]
#[ignore = "needs Redis on 127.0.0.1:6379 (scripts/services.sh up)"]
async fn a_buyer_holds_at_most_max_keys_per_sale() {
    let gate = gate().await.with_key_policy(KeyPolicy {
        max_per_buyer: 2,
        ..KeyPolicy::default()
    });
    let s = sale(10, 10, None, None, 0);
    gate.open_sale(&s).await.unwrap();
    let first = buy(&gate, &s, "a", Some("k1"), now_millis()).await.unwrap();
    buy(&gate, &s, "a", Some("k2"), now_millis()).await.unwrap();
    let third = buy(&gate, &s, "a", Some("k3"), now_millis()).await;
    assert_eq!(third.unwrap_err(), Decision::TooManyKeys);
    assert_eq!(
        gate.remaining(&s).await.unwrap(),
        vec![8],
        "refused: took nothing"
    );
    buy(&gate, &s, "b", Some("k3"), now_millis()).await.unwrap();
    // A key whose order failed is forgotten and makes room.
    gate.release(&s, &first, true).await.unwrap();
    buy(&gate, &s, "a", Some("k3"), now_millis()).await.unwrap();
    // So does a dead gateway's key whose hold the sweeper gives back.
    let s2 = sale(10, 10, None, None, 0);
    gate.open_sale(&s2).await.unwrap();
    let dead = buy(&gate, &s2, "a", Some("k1"), now_millis())
        .await
        .unwrap();
    buy(&gate, &s2, "a", Some("k2"), now_millis())
        .await
        .unwrap();
    gate.drop_hold(&s2, &dead.id, HoldEnd::Release)
        .await
        .unwrap();
    buy(&gate, &s2, "a", Some("k3"), now_millis())
        .await
        .unwrap();
}

#[tokio::test]
#[ignore = "needs Redis on 127.0.0.1:6379 (scripts/services.sh up)"]
async fn a_key_expires_after_its_ttl_on_a_sale_without_an_end() {
    let gate = gate().await.with_key_policy(KeyPolicy {
        ttl: Duration::from_secs(60),
        ..KeyPolicy::default()
    });
    let s = sale(3, 1, None, None, 0);
    gate.open_sale(&s).await.unwrap();
    buy(&gate, &s, "a", Some("k"), now_millis()).await.unwrap();
    let ttl = pttl(&gate, &SaleKeys::idempotency(&s.id, "a", "k")).await;
    assert!(
        (55_000..=60_000).contains(&ttl),
        "key expires after {ttl} ms"
    );
    let index = pttl(&gate, &SaleKeys::key_index(&s.id, "a")).await;
    assert!(
        (55_000..=60_000).contains(&index),
        "key index expires after {index} ms"
    );
}

#[tokio::test]
#[ignore = "needs Redis on 127.0.0.1:6379 (scripts/services.sh up)"]
async fn added_stock_is_added_once_whatever_the_order_of_updates() {
    let gate = gate().await;
    let mut s = sale(1, 5, None, None, 0);
    gate.open_sale(&s).await.unwrap();
    let now = now_millis();
    buy(&gate, &s, "a", None, now).await.unwrap();
    assert_eq!(gate.remaining(&s).await.unwrap(), vec![0]);
    // Two additions (+2 → 3, then +3 → 6): their updates arrive late and twice, out
    // of order; the gate ends at the last total, each unit added once.
    let (mut three, mut six) = (s.clone(), s.clone());
    three.items[0].stock = 3;
    six.items[0].stock = 6;
    for update in [&six, &three, &six, &three] {
        gate.update_sale(update).await.unwrap();
    }
    assert_eq!(gate.remaining(&s).await.unwrap(), vec![5]);
    // A rebuild from the store records the totals too: an update after it adds nothing.
    lose(&gate, &six).await;
    let lease = gate.lease_rebuild(&six).await.unwrap().expect("lease free");
    let snapshot = SaleSnapshot {
        sold: vec![1],
        ..Default::default()
    };
    gate.restore(&six, &snapshot, &lease).await.unwrap();
    gate.update_sale(&six).await.unwrap();
    assert_eq!(gate.remaining(&six).await.unwrap(), vec![5]);
    s.items[0].stock = 6;
    assert_eq!(gate.remaining(&s).await.unwrap(), vec![5]);
}

#[tokio::test]
#[ignore = "needs Redis on 127.0.0.1:6379 (scripts/services.sh up)"]
async fn a_paused_or_ended_sale_is_refused_by_the_script_itself() {
    let gate = gate().await;
    let mut s = sale(10, 5, None, None, 0);
    gate.open_sale(&s).await.unwrap();
    s.paused = true;
    gate.update_sale(&s).await.unwrap();
    let now = now_millis();
    // Keyed: the sold-out flag or any local check cannot answer; the script does.
    assert_eq!(
        buy(&gate, &s, "a", Some("k"), now).await.unwrap_err(),
        Decision::Refused(Refusal::Paused)
    );
    s.paused = false;
    gate.update_sale(&s).await.unwrap();
    buy(&gate, &s, "a", Some("k"), now).await.unwrap();
    s.ends_at = Some(now_millis() - 1);
    gate.update_sale(&s).await.unwrap();
    assert_eq!(
        buy(&gate, &s, "b", Some("k"), now).await.unwrap_err(),
        Decision::Refused(Refusal::Ended)
    );
    // A sale the gate lost: the update says so (the engine rebuilds it).
    lose(&gate, &s).await;
    assert!(matches!(
        gate.update_sale(&s).await,
        Err(GateError::UnknownSale(_))
    ));
}
