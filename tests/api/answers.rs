//! The HTTP API: each answer and error code, produced by a request that triggers it.

use crate::helpers::{Backends, TestServer};
use chrono::{Duration, Utc};
use serde_json::json;

async fn sale_is_created_shown_and_sold(backends: Backends) {
    let app = TestServer::start_on(backends).await;
    let sale = app
        .create_sale(json!({"name": "sneakers", "stock": 3}))
        .await;
    let id = sale["id"].as_str().unwrap();
    assert_eq!(sale["status"], "live");
    assert_eq!(sale["stock"], 3);
    assert_eq!(sale["remaining"], 3);
    assert_eq!(sale["per_user_limit"], 1);

    let reply = app.purchase(id, json!({"user_id": "alice"}), None).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let order = &reply.body;
    assert_eq!(order["sale_id"], id);
    assert_eq!(order["user_id"], "alice");
    assert_eq!(order["items"], json!({"default": 1}));
    assert_eq!(order["status"], "paid");
    assert!(order["created_at"].as_str().unwrap().ends_with('Z'));

    let fetched = app.order(order["id"].as_str().unwrap()).await;
    assert_eq!(fetched.status, 200);
    let mut without_history = fetched.body.clone();
    let history = without_history
        .as_object_mut()
        .unwrap()
        .remove("history")
        .unwrap();
    assert_eq!(without_history, reply.body);
    assert_eq!(
        history,
        json!([{"status": "paid", "at": order["created_at"]}])
    );

    let view = app.get(&format!("/api/sales/{id}")).await;
    assert_eq!(view.body["remaining"], 2);
    assert_eq!(
        view.body["items"],
        json!([{"id": "default", "stock": 3, "remaining": 2}])
    );
}

async fn refusals_have_their_codes(backends: Backends) {
    let app = TestServer::start_on(backends).await;
    let id = app.live_sale(1, 1).await;
    assert_eq!(
        app.purchase(&id, json!({"user_id": "a"}), None)
            .await
            .status,
        202
    );
    app.purchase(&id, json!({"user_id": "a"}), None)
        .await
        .assert_problem(409, "sold_out");

    let roomy = app.live_sale(5, 1).await;
    assert_eq!(
        app.purchase(&roomy, json!({"user_id": "a"}), None)
            .await
            .status,
        202
    );
    app.purchase(&roomy, json!({"user_id": "a"}), None)
        .await
        .assert_problem(409, "limit_reached");
    app.purchase(&roomy, json!({"user_id": "a"}), Some("k1"))
        .await
        .assert_problem(409, "limit_reached");

    let later = app
        .create_sale(
            json!({"name": "later", "stock": 5, "starts_at": Utc::now() + Duration::hours(1)}),
        )
        .await;
    assert_eq!(later["status"], "scheduled");
    let later = later["id"].as_str().unwrap();
    app.purchase(later, json!({"user_id": "a"}), None)
        .await
        .assert_problem(409, "not_started");

    let over = app
        .create_sale(json!({
            "name": "over", "stock": 5,
            "starts_at": Utc::now() - Duration::hours(2),
            "ends_at": Utc::now() - Duration::hours(1),
        }))
        .await;
    assert_eq!(over["status"], "ended");
    let over = over["id"].as_str().unwrap();
    app.purchase(over, json!({"user_id": "a"}), None)
        .await
        .assert_problem(409, "ended");
    // Nothing was taken by any refusal.
    assert_eq!(
        app.get(&format!("/api/sales/{roomy}")).await.body["remaining"],
        4
    );
    assert_eq!(
        app.get(&format!("/api/sales/{over}")).await.body["remaining"],
        5
    );
}

async fn unknown_things_are_404(backends: Backends) {
    let app = TestServer::start_on(backends).await;
    app.purchase("no-such-sale", json!({"user_id": "a"}), None)
        .await
        .assert_problem(404, "sale_not_found");
    app.get("/api/sales/no-such-sale")
        .await
        .assert_problem(404, "sale_not_found");
    app.get("/api/orders/no-such-order")
        .await
        .assert_problem(404, "order_not_found");
    app.get("/api/nothing-here")
        .await
        .assert_problem(404, "not_found");
    app.send(app.client.delete(app.url("/api/sales")))
        .await
        .assert_problem(405, "method_not_allowed");
}

async fn malformed_input_is_400_and_reserves_nothing(backends: Backends) {
    let app = TestServer::start_on(backends).await;
    let id = app.live_sale(5, 2).await;
    let path = app.url(&format!("/api/sales/{id}/purchase"));
    let raw = |body: &'static str| {
        app.client
            .post(&path)
            .header("content-type", "application/json")
            .body(body)
    };
    for body in [
        "{not json",
        "{}",
        r#"{"user_id": 7}"#,
        r#"{"user_id": "a", "quantity": "two"}"#,
        r#"{"user_id": "a", "quantity": -1}"#,
        r#"{"user_id": "a", "quantity": 0}"#,
        r#"{"user_id": "a", "quantity": 3}"#,
        r#"{"user_id": "", "quantity": 1}"#,
        r#"{"user_id": "a", "items": {"nope": 1}}"#,
        r#"{"user_id": "a", "quantity": 1, "items": {"default": 1}}"#,
        r#"{"user_id": "a", "quantity": 1, "price": 0}"#,
        r#"[1, 2]"#,
    ] {
        let reply = app.send(raw(body)).await;
        assert_eq!(reply.status, 400, "{body} → {}", reply.text);
        reply.assert_problem(400, "invalid_request");
    }
    app.purchase(&id, json!({"user_id": "a"}), Some("bad key with spaces"))
        .await
        .assert_problem(400, "invalid_request");
    for sale in [
        json!({"name": "x", "stock": 0}),
        json!({"name": "x"}),
        json!({"name": "", "stock": 1}),
        json!({"name": "x", "stock": 1, "per_user_limit": 0}),
        json!({"name": "x", "stock": 1, "items": [{"id": "a", "stock": 1}]}),
        json!({"name": "x", "items": [{"id": "a", "stock": 1}, {"id": "a", "stock": 2}]}),
        json!({"name": "x", "stock": 1, "starts_at": "yesterday"}),
    ] {
        app.post("/api/sales", &sale)
            .await
            .assert_problem(400, "invalid_request");
    }
    assert_eq!(
        app.get(&format!("/api/sales/{id}")).await.body["remaining"],
        5
    );
    assert!(app.settled_orders(&id).await.is_empty(), "no partial write");
}

async fn oversized_and_non_json_bodies(backends: Backends) {
    let app = TestServer::start_on(backends).await;
    let id = app.live_sale(5, 1).await;
    let path = app.url(&format!("/api/sales/{id}/purchase"));
    let huge = format!(r#"{{"user_id": "{}"}}"#, "a".repeat(20 * 1024));
    app.send(
        app.client
            .post(&path)
            .header("content-type", "application/json")
            .body(huge),
    )
    .await
    .assert_problem(413, "payload_too_large");
    app.send(
        app.client
            .post(&path)
            .header("content-type", "text/plain")
            .body(r#"{"user_id":"a"}"#),
    )
    .await
    .assert_problem(415, "unsupported_media_type");
    app.send(app.client.post(&path).body(r#"{"user_id":"a"}"#))
        .await
        .assert_problem(415, "unsupported_media_type");
}

async fn idempotency_key_replays_the_original_answer(backends: Backends) {
    let app = TestServer::start_on(backends).await;
    let id = app.live_sale(2, 1).await;
    let first = app
        .purchase(&id, json!({"user_id": "a"}), Some("click-1"))
        .await;
    assert_eq!(first.status, 202);
    let again = app
        .purchase(&id, json!({"user_id": "a"}), Some("click-1"))
        .await;
    assert_eq!(again.status, 202);
    assert_eq!(again.text, first.text, "same status and body");
    // The same purchase spelled differently is the same body.
    let spelled = app
        .purchase(
            &id,
            json!({"user_id": "a", "items": {"default": 1}}),
            Some("click-1"),
        )
        .await;
    assert_eq!(spelled.text, first.text);
    assert_eq!(
        app.get(&format!("/api/sales/{id}")).await.body["remaining"],
        1
    );
    // Same key, another body: refused, and nothing reserved.
    let other = app
        .create_sale(json!({"name": "two", "stock": 5, "per_user_limit": 2}))
        .await;
    let other = other["id"].as_str().unwrap();
    assert_eq!(
        app.purchase(other, json!({"user_id": "b", "quantity": 1}), Some("k"))
            .await
            .status,
        202
    );
    app.purchase(other, json!({"user_id": "b", "quantity": 2}), Some("k"))
        .await
        .assert_problem(422, "idempotency_key_reused");
    // Keys are per buyer: another buyer's identical key is a new purchase.
    assert_eq!(
        app.purchase(other, json!({"user_id": "c", "quantity": 2}), Some("k"))
            .await
            .status,
        202
    );
    assert_eq!(
        app.get(&format!("/api/sales/{other}")).await.body["remaining"],
        2
    );

    // A refusal is not remembered: the retry is decided afresh (here, the same way).
    let one = app.live_sale(1, 1).await;
    assert_eq!(
        app.purchase(&one, json!({"user_id": "x"}), None)
            .await
            .status,
        202
    );
    let refused = app
        .purchase(&one, json!({"user_id": "y"}), Some("late"))
        .await;
    refused.assert_problem(409, "sold_out");
    let replayed = app
        .purchase(&one, json!({"user_id": "y"}), Some("late"))
        .await;
    assert_eq!(replayed.text, refused.text);
    assert_eq!(app.settled_orders(&one).await.len(), 1);
}

/// Issue "Protection" §4: a key's refusal is not kept. A buyer who clicked before the
/// start (key K1, `not_started`) and retries with K1 (as a client should) buys after
/// it; before, K1 answered `not_started` for its whole life.
async fn a_click_before_the_start_can_buy_after_it(backends: Backends) {
    let app = TestServer::start_on(backends).await;
    let starts_at = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let sale = app
        .create_sale(json!({"name": "at noon", "stock": 1, "starts_at": starts_at}))
        .await;
    let id = sale["id"].as_str().unwrap();
    app.purchase(id, json!({"user_id": "a"}), Some("K1"))
        .await
        .assert_problem(409, "not_started");
    tokio::time::sleep(std::time::Duration::from_millis(1700)).await;
    let bought = app.purchase(id, json!({"user_id": "a"}), Some("K1")).await;
    assert_eq!(bought.status, 202, "{}", bought.text);
    let again = app.purchase(id, json!({"user_id": "a"}), Some("K1")).await;
    assert_eq!(again.text, bought.text, "an accepted key replays its order");
}

/// A retry while the first request with its key is still on its way waits
/// `replay_wait_ms`, then gets 409 `request_in_progress` (not a second order, not a 503);
/// once the first is answered, the retry gets its 202.
async fn a_retry_during_the_first_request_is_in_progress(backends: Backends) {
    let deployment = crate::helpers::Deployment::new(backends, &[]).await;
    let mut app = deployment
        .gateway_with_env(&[
            ("FLASHSALE_FAILPOINT", "slow-publish"),
            ("FLASHSALE_REPLAY_WAIT_MS", "200"),
        ])
        .await;
    if backends == Backends::RedisKafkaPostgres {
        app.workers.push(deployment.worker().await);
    }
    let app = std::sync::Arc::new(app);
    let id = app.live_sale(5, 1).await;
    let first = tokio::spawn({
        let (app, id) = (app.clone(), id.clone());
        async move { app.purchase(&id, json!({"user_id": "a"}), Some("K")).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    app.purchase(&id, json!({"user_id": "a"}), Some("K"))
        .await
        .assert_problem(409, "request_in_progress");
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(200),
        "waited replay_wait"
    );
    let first = first.await.unwrap();
    assert_eq!(first.status, 202, "{}", first.text);
    let retry = app.purchase(&id, json!({"user_id": "a"}), Some("K")).await;
    assert_eq!(retry.text, first.text);
    assert_eq!(
        app.get(&format!("/api/sales/{id}")).await.body["remaining"],
        4
    );
}

/// At most `max_keys_per_buyer` live keys per buyer and sale: a buyer cycling through
/// fresh keys gets 429 `too_many_keys`, not a new decision each time.
async fn a_buyer_cannot_hold_more_than_max_keys(backends: Backends) {
    let deployment = crate::helpers::Deployment::new(backends, &[]).await;
    let mut app = deployment
        .gateway_with_env(&[("FLASHSALE_MAX_KEYS_PER_BUYER", "2")])
        .await;
    if backends == Backends::RedisKafkaPostgres {
        app.workers.push(deployment.worker().await);
    }
    let id = app
        .create_sale(json!({"name": "many", "stock": 10, "per_user_limit": 5}))
        .await;
    let id = id["id"].as_str().unwrap();
    for key in ["k1", "k2"] {
        let reply = app.purchase(id, json!({"user_id": "a"}), Some(key)).await;
        assert_eq!(reply.status, 202, "{}", reply.text);
    }
    app.purchase(id, json!({"user_id": "a"}), Some("k3"))
        .await
        .assert_problem(429, "too_many_keys");
    // Retries of the keys held still replay; other buyers are not affected.
    assert_eq!(
        app.purchase(id, json!({"user_id": "a"}), Some("k1"))
            .await
            .status,
        202
    );
    assert_eq!(
        app.purchase(id, json!({"user_id": "b"}), Some("k3"))
            .await
            .status,
        202
    );
    assert_eq!(
        app.get(&format!("/api/sales/{id}")).await.body["remaining"],
        7
    );
}

async fn multi_item_purchase_is_all_or_nothing(backends: Backends) {
    let app = TestServer::start_on(backends).await;
    let sale = app
        .create_sale(json!({
            "name": "venue", "per_user_limit": 3,
            "items": [{"id": "A1", "stock": 1}, {"id": "B7", "stock": 5}],
        }))
        .await;
    let id = sale["id"].as_str().unwrap();
    let first = app
        .purchase(
            id,
            json!({"user_id": "a", "items": {"A1": 1, "B7": 1}}),
            None,
        )
        .await;
    assert_eq!(first.status, 202, "{}", first.text);
    assert_eq!(first.body["items"], json!({"A1": 1, "B7": 1}));
    app.purchase(
        id,
        json!({"user_id": "b", "items": {"A1": 1, "B7": 1}}),
        None,
    )
    .await
    .assert_problem(409, "sold_out");
    let view = app.get(&format!("/api/sales/{id}")).await;
    assert_eq!(
        view.body["items"],
        json!([{"id": "A1", "stock": 1, "remaining": 0}, {"id": "B7", "stock": 5, "remaining": 4}]),
        "the refused purchase took nothing"
    );
    // The per-user limit counts units across the sale: a holds 2 of 3.
    app.purchase(id, json!({"user_id": "a", "items": {"B7": 2}}), None)
        .await
        .assert_problem(409, "limit_reached");
    let c = app
        .purchase(id, json!({"user_id": "c", "items": {"B7": 1}}), None)
        .await;
    assert_eq!(c.status, 202);
    app.purchase(id, json!({"user_id": "a", "quantity": 1}), None)
        .await
        .assert_problem(400, "invalid_request");
}

async fn admin_token_guards_sale_creation(backends: Backends) {
    let app =
        TestServer::start_with(backends, json!({"admin_token": "admin-token-for-tests"})).await;
    let body = json!({"name": "guarded", "stock": 1});
    app.post("/api/sales", &body)
        .await
        .assert_problem(401, "unauthorized");
    app.send(
        app.client
            .post(app.url("/api/sales"))
            .bearer_auth("wrong")
            .json(&body),
    )
    .await
    .assert_problem(401, "unauthorized");
    let created = app.create_sale(body).await; // sends the right token
    assert_eq!(created["stock"], 1);
}

/// On a sale known to be sold out, a purchase without a key is answered `sold_out`
/// before its body is read (the documented precedence: malformed or not, nothing can be
/// taken); a purchase with a key may be a retry of one that got a unit, so its body is
/// read and checked as usual.
async fn a_sold_out_sale_answers_before_reading_the_body(backends: Backends) {
    let app = TestServer::start_on(backends).await;
    let id = app.live_sale(1, 1).await;
    let path = app.url(&format!("/api/sales/{id}/purchase"));
    let malformed = || {
        app.client
            .post(&path)
            .header("content-type", "application/json")
            .body("{not json")
    };
    // While units remain, the malformed body is what is wrong.
    app.send(malformed())
        .await
        .assert_problem(400, "invalid_request");
    assert_eq!(
        app.purchase(&id, json!({"user_id": "a"}), None)
            .await
            .status,
        202
    );
    // (A Redis gate learns it from its first sold_out answer, and keeps it for 1 s.)
    app.purchase(&id, json!({"user_id": "b"}), None)
        .await
        .assert_problem(409, "sold_out");
    app.send(malformed()).await.assert_problem(409, "sold_out");
    app.send(
        app.client
            .post(&path)
            .body("not even json, no content type"),
    )
    .await
    .assert_problem(409, "sold_out");
    app.send(malformed().header("idempotency-key", "k-1"))
        .await
        .assert_problem(400, "invalid_request");
}

async fn health_and_readiness(backends: Backends) {
    let app = TestServer::start_on(backends).await;
    let health = app.get("/healthz").await;
    assert_eq!((health.status.as_u16(), health.text.as_str()), (200, "ok"));
    assert_eq!(app.get("/readyz").await.status, 200);
}

backend_tests!(
    sale_is_created_shown_and_sold,
    refusals_have_their_codes,
    unknown_things_are_404,
    malformed_input_is_400_and_reserves_nothing,
    oversized_and_non_json_bodies,
    idempotency_key_replays_the_original_answer,
    multi_item_purchase_is_all_or_nothing,
    admin_token_guards_sale_creation,
    health_and_readiness,
    a_sold_out_sale_answers_before_reading_the_body,
    a_click_before_the_start_can_buy_after_it,
    a_buyer_cannot_hold_more_than_max_keys,
    a_retry_during_the_first_request_is_in_progress,
);

/// A build without the `kafka` feature says how to get it instead of failing obscurely.
#[cfg(not(feature = "kafka"))]
#[test]
fn kafka_bus_without_the_feature_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("x.db").display());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flashsale"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--bus",
            "kafka://127.0.0.1:9092",
        ])
        .args(["--store", &store])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--features kafka"), "{stderr}");
    let worker = std::process::Command::new(env!("CARGO_BIN_EXE_flashsale"))
        .args(["worker", "--bus", "kafka://127.0.0.1:9092"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!worker.status.success());
    assert!(String::from_utf8_lossy(&worker.stderr).contains("--features kafka"));
}
