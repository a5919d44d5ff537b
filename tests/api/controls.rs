//! An operator's controls: end a sale now, pause and resume it, add stock; each with its
//! refusals, on every backend.

use crate::helpers::{Backends, Deployment, TestServer};
use serde_json::json;

async fn control(app: &TestServer, sale: &str, action: &str) -> crate::helpers::Reply {
    // `units` is read by `stock` only.
    app.post(&format!("/api/sales/{sale}/{action}"), &json!({"units": 1}))
        .await
}

async fn buy(app: &TestServer, sale: &str, user: &str) -> crate::helpers::Reply {
    app.purchase(sale, json!({"user_id": user}), None).await
}

async fn ending_a_sale_refuses_purchases_from_then_on(backends: Backends) {
    let app = TestServer::start_on(backends).await;
    let sale = app.live_sale(10, 1).await;
    assert_eq!(buy(&app, &sale, "early").await.status, 202);

    let ended = control(&app, &sale, "end").await;
    assert_eq!(ended.status, 200, "{}", ended.text);
    assert_eq!(ended.body["status"], "ended");
    assert!(ended.body["ends_at"].is_string());
    buy(&app, &sale, "late").await.assert_problem(409, "ended");
    // Keyed purchases are decided by the gate itself: refused too.
    app.purchase(&sale, json!({"user_id": "late-keyed"}), Some("k1"))
        .await
        .assert_problem(409, "ended");
    // Ending twice, pausing or adding stock to an ended sale: 409 `ended`.
    control(&app, &sale, "end")
        .await
        .assert_problem(409, "ended");
    control(&app, &sale, "pause")
        .await
        .assert_problem(409, "ended");
    app.post(&format!("/api/sales/{sale}/stock"), &json!({"units": 5}))
        .await
        .assert_problem(409, "ended");
    // The order placed before the end stays.
    assert_eq!(app.settled_orders(&sale).await.len(), 1);
    let read = app.get(&format!("/api/sales/{sale}")).await;
    assert_eq!(read.body["status"], "ended");
}

async fn a_paused_sale_refuses_paused_until_resumed(backends: Backends) {
    let app = TestServer::start_on(backends).await;
    let sale = app.live_sale(10, 1).await;
    let paused = control(&app, &sale, "pause").await;
    assert_eq!(paused.status, 200, "{}", paused.text);
    assert_eq!(paused.body["status"], "paused");
    buy(&app, &sale, "a").await.assert_problem(409, "paused");
    app.purchase(&sale, json!({"user_id": "b"}), Some("kb"))
        .await
        .assert_problem(409, "paused");
    // Pausing again changes nothing.
    assert_eq!(control(&app, &sale, "pause").await.status, 200);
    assert_eq!(
        app.get(&format!("/api/sales/{sale}")).await.body["status"],
        "paused"
    );

    let resumed = control(&app, &sale, "resume").await;
    assert_eq!(resumed.status, 200, "{}", resumed.text);
    assert_eq!(resumed.body["status"], "live");
    assert_eq!(buy(&app, &sale, "a").await.status, 202);
    // The refused keyed attempt was not remembered: the same key buys now.
    assert_eq!(
        app.purchase(&sale, json!({"user_id": "b"}), Some("kb"))
            .await
            .status,
        202
    );
    assert_eq!(app.settled_orders(&sale).await.len(), 2);
}

async fn added_stock_is_sold_and_never_oversold(backends: Backends) {
    let app = TestServer::start_on(backends).await;
    let sale = app.live_sale(2, 1).await;
    for user in ["a", "b"] {
        assert_eq!(buy(&app, &sale, user).await.status, 202);
    }
    buy(&app, &sale, "c").await.assert_problem(409, "sold_out");

    let added = app
        .post(&format!("/api/sales/{sale}/stock"), &json!({"units": 3}))
        .await;
    assert_eq!(added.status, 200, "{}", added.text);
    assert_eq!(added.body["stock"], 5);
    assert_eq!(added.body["remaining"], 3);
    assert_eq!(added.body["status"], "live");
    // The sold-out answer is gone at once, and exactly the added units sell.
    let mut accepted = 0;
    for user in 0..10 {
        let reply = buy(&app, &sale, &format!("new-{user}")).await;
        match reply.status.as_u16() {
            202 => accepted += 1,
            _ => reply.assert_problem(409, "sold_out"),
        }
    }
    assert_eq!(accepted, 3);
    assert_eq!(app.settled_orders(&sale).await.len(), 5);
    // The store's own check agrees: stock 5, sold 5.
    let checked = app.get(&format!("/api/sales/{sale}")).await.body;
    assert_eq!(
        (checked["stock"].clone(), checked["remaining"].clone()),
        (json!(5), json!(0))
    );
}

async fn bad_control_requests_are_refused_with_a_code(backends: Backends) {
    let app = TestServer::start_on(backends).await;
    let seats = app
        .create_sale(json!({"name": "seats", "items": [{"id": "A-1", "stock": 1}, {"id": "A-2", "stock": 1}], "per_user_limit": 2}))
        .await;
    let seats = seats["id"].as_str().unwrap();
    let stock = |body| {
        let (app, seats) = (&app, seats.to_string());
        async move { app.post(&format!("/api/sales/{seats}/stock"), &body).await }
    };
    stock(json!({"units": 1}))
        .await
        .assert_problem(400, "invalid_request");
    stock(json!({"item": "Z-9", "units": 1}))
        .await
        .assert_problem(400, "invalid_request");
    stock(json!({"item": "A-1", "units": 0}))
        .await
        .assert_problem(400, "invalid_request");
    stock(json!({"item": "A-1", "units": 100_000_000}))
        .await
        .assert_problem(400, "invalid_request");
    stock(json!({"item": "A-1", "units": -1}))
        .await
        .assert_problem(400, "invalid_request");
    stock(json!({"item": "A-1", "units": 1, "extra": true}))
        .await
        .assert_problem(400, "invalid_request");
    let ok = stock(json!({"item": "A-2", "units": 4})).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(ok.body["items"][1]["stock"], 5);
    for action in ["end", "pause", "resume", "stock"] {
        control(&app, "no-such-sale", action)
            .await
            .assert_problem(404, "sale_not_found");
    }
}

backend_tests!(
    ending_a_sale_refuses_purchases_from_then_on,
    a_paused_sale_refuses_paused_until_resumed,
    added_stock_is_sold_and_never_oversold,
);
backend_tests!(memory_bus: bad_control_requests_are_refused_with_a_code);

/// The controls are the operator's: no admin token, no control.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controls_need_the_admin_token() {
    let deployment = Deployment::new(
        Backends::Embedded,
        &["--admin-token", "operator-secret-for-tests"],
    )
    .await;
    let app = deployment.gateway().await;
    let sale = app.live_sale(5, 1).await;
    for action in ["end", "pause", "resume"] {
        control(&app, &sale, action)
            .await
            .assert_problem(401, "unauthorized");
    }
    app.post(&format!("/api/sales/{sale}/stock"), &json!({"units": 1}))
        .await
        .assert_problem(401, "unauthorized");
    let with_token = app
        .send(
            reqwest::Client::new()
                .post(app.url(&format!("/api/sales/{sale}/pause")))
                .bearer_auth("operator-secret-for-tests"),
        )
        .await;
    assert_eq!(with_token.status, 200, "{}", with_token.text);
    assert_eq!(with_token.body["status"], "paused");
}

/// A seat grid of several thousand seats is one request: the create route has its own,
/// larger body limit; the purchase route keeps the small one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_of_thousands_of_seats_can_be_created() {
    let app = TestServer::start().await;
    let items: Vec<_> = (0..60)
        .flat_map(|row| {
            (1..=100).map(move |seat| json!({"id": format!("R{row}-{seat}"), "stock": 1}))
        })
        .collect();
    let body = json!({"name": "arena", "items": items, "per_user_limit": 4});
    assert!(body.to_string().len() > 16 * 1024 * 4);
    let created = app.post("/api/sales", &body).await;
    assert_eq!(
        created.status,
        201,
        "{}",
        &created.text[..created.text.len().min(300)]
    );
    assert_eq!(created.body["items"].as_array().unwrap().len(), 6000);
    // The purchase route still refuses a body past its own limit.
    let huge = json!({"user_id": "x", "items": items});
    app.purchase(created.body["id"].as_str().unwrap(), huge, None)
        .await
        .assert_problem(413, "payload_too_large");
}
