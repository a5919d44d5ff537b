//! When a later stage fails, the earlier one is compensated before the buyer hears of it:
//! a failed store write answers 503 `unavailable`, releases the reservation and leaves
//! nothing half-written.

use crate::helpers::{Backends, TestServer};
use serde_json::json;

const SQLITE_POISON: &str = "CREATE TRIGGER poison BEFORE INSERT ON orders \
    WHEN NEW.user_id = 'poison' BEGIN SELECT RAISE(ABORT, 'poisoned'); END;";
const POSTGRES_POISON: &str = "CREATE FUNCTION poison() RETURNS trigger AS $$ BEGIN \
    IF NEW.user_id = 'poison' THEN RAISE EXCEPTION 'poisoned'; END IF; RETURN NEW; END $$ \
    LANGUAGE plpgsql; \
    CREATE TRIGGER poison BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION poison();";
const SQLITE_CURE: &str = "DROP TRIGGER poison;";
const POSTGRES_CURE: &str = "DROP TRIGGER poison ON orders;";

async fn failed_write_releases_the_reservation(backends: Backends) {
    let app = TestServer::start_on(backends).await;
    let sale = app.live_sale(1, 1).await;
    app.execute_sql(SQLITE_POISON, POSTGRES_POISON).await;

    let failed = app
        .purchase(&sale, json!({"user_id": "poison"}), Some("try-1"))
        .await;
    failed.assert_problem(503, "unavailable");
    assert_eq!(failed.headers["retry-after"], "1");

    // The unit is back on sale, nothing is stored, and the buyer's limit is untouched.
    let view = app.get(&format!("/api/sales/{sale}")).await;
    assert_eq!(view.body["remaining"], 1, "reservation released");
    assert_eq!(view.body["status"], "live");
    assert!(
        app.stored_orders(&sale).await.is_empty(),
        "nothing half-written"
    );

    // The key of a failed request is forgotten: once the store works again, the same
    // retry is decided afresh and succeeds.
    app.execute_sql(SQLITE_CURE, POSTGRES_CURE).await;
    let retried = app
        .purchase(&sale, json!({"user_id": "poison"}), Some("try-1"))
        .await;
    assert_eq!(retried.status, 202, "{}", retried.text);
    assert_eq!(app.stored_orders(&sale).await.len(), 1);
    app.purchase(&sale, json!({"user_id": "other"}), None)
        .await
        .assert_problem(409, "sold_out");
}

backend_tests!(memory_bus: failed_write_releases_the_reservation);

/// A store that keeps failing trips its breaker: purchases then fail fast without
/// calling it, even once it works again, until the cool-down is over; then one probe
/// goes through and, answered, closes the breaker by itself.
async fn a_failing_store_trips_its_breaker_and_it_closes_by_itself(backends: Backends) {
    let app = TestServer::start_with(
        backends,
        json!({"breaker_failures": 3, "breaker_cool_down_ms": 1500}),
    )
    .await;
    let sale = app.live_sale(10, 1).await;
    app.execute_sql(SQLITE_POISON, POSTGRES_POISON).await;
    for _ in 0..3 {
        let failed = app
            .purchase(&sale, json!({"user_id": "poison"}), None)
            .await;
        failed.assert_problem(503, "unavailable");
        assert!(!failed.text.contains("circuit open"), "{}", failed.text);
    }
    app.execute_sql(SQLITE_CURE, POSTGRES_CURE).await;
    // The store works again, but the breaker does not call it during the cool-down.
    let fast = app
        .purchase(&sale, json!({"user_id": "healthy"}), None)
        .await;
    fast.assert_problem(503, "unavailable");
    assert!(fast.text.contains("circuit open"), "{}", fast.text);
    assert_eq!(
        app.get(&format!("/api/sales/{sale}")).await.body["remaining"],
        10,
        "its reservation was given back"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1600)).await;
    let probe = app
        .purchase(&sale, json!({"user_id": "healthy"}), None)
        .await;
    assert_eq!(probe.status, 202, "{}", probe.text);
    let after = app.purchase(&sale, json!({"user_id": "next"}), None).await;
    assert_eq!(after.status, 202, "{}", after.text);
}

backend_tests!(memory_bus: a_failing_store_trips_its_breaker_and_it_closes_by_itself);
