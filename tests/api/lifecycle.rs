//! Order lifecycle: a reservation is a sale only once paid. Unpaid units go back on sale
//! when the payment window passes, cancel gives them back, each exactly once.

use std::sync::Arc;

use crate::helpers::{Backends, Deployment, TestServer};
use serde_json::json;

async fn sale_with_window(app: &TestServer, stock: u32, window_secs: u32) -> String {
    let sale = app
        .create_sale(json!({"name": "pay later", "stock": stock, "payment_window": window_secs}))
        .await;
    sale["id"].as_str().unwrap().to_string()
}

async fn buy(app: &TestServer, sale: &str, user: &str) -> String {
    let reply = app.purchase(sale, json!({"user_id": user}), None).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    reply.body["id"].as_str().unwrap().to_string()
}

async fn remaining(app: &TestServer, sale: &str) -> u64 {
    app.get(&format!("/api/sales/{sale}")).await.body["remaining"]
        .as_u64()
        .unwrap()
}

async fn unpaid_units_go_back_on_sale_when_the_window_passes(backends: Backends) {
    let app = TestServer::start_on(backends).await;
    // Three seconds: on the Kafka bus the worker's first batch waits for its group.
    let sale = sale_with_window(&app, 2, 3).await;
    let late = buy(&app, &sale, "late-payer").await;
    let prompt = buy(&app, &sale, "prompt-payer").await;
    let placed = app.order(&late).await.body;
    assert_eq!(placed["status"], "pending");
    assert!(placed["expires_at"].is_string());
    let paid = app.order_action(&prompt, "pay").await;
    assert_eq!(paid.status, 200, "{}", paid.text);
    assert_eq!(paid.body["status"], "paid");
    app.purchase(&sale, json!({"user_id": "waiting"}), None)
        .await
        .assert_problem(409, "sold_out");

    // The window passes: the sweeper expires the unpaid order and its unit is back.
    let expired = app.wait_for_status(&late, "expired").await;
    let history: Vec<_> = expired["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].clone())
        .collect();
    assert_eq!(history, [json!("pending"), json!("expired")]);
    app.order_action(&late, "pay")
        .await
        .assert_problem(409, "expired");
    assert_eq!(remaining(&app, &sale).await, 1);
    assert_eq!(
        app.get(&format!("/api/sales/{sale}")).await.body["status"],
        "live"
    );

    // Someone else buys the unit back; a buyer whose order expired may buy again too,
    // but the stock is never exceeded.
    buy(&app, &sale, "waiting").await;
    app.purchase(&sale, json!({"user_id": "late-payer"}), None)
        .await
        .assert_problem(409, "sold_out");
    assert_eq!(
        app.wait_for_status(&prompt, "paid").await["status"],
        "paid",
        "paid stays paid"
    );
    let live: u32 = app
        .settled_orders(&sale)
        .await
        .iter()
        .filter(|o| o.status.holds_stock())
        .map(|o| o.total_units())
        .sum();
    assert_eq!(live, 2);
}

async fn expired_buyer_may_buy_again(backends: Backends) {
    let app = TestServer::start_on(backends).await;
    let sale = sale_with_window(&app, 5, 1).await;
    let first = buy(&app, &sale, "again").await;
    app.purchase(&sale, json!({"user_id": "again"}), None)
        .await
        .assert_problem(409, "limit_reached");
    app.wait_for_status(&first, "expired").await;
    let second = buy(&app, &sale, "again").await;
    assert_ne!(first, second);
    assert_eq!(remaining(&app, &sale).await, 4);
}

async fn cancel_is_idempotent_and_releases_once(backends: Backends) {
    let app = TestServer::start_on(backends).await;
    let sale = sale_with_window(&app, 1, 60).await;
    let order = buy(&app, &sale, "a").await;
    // Sold out: a refusal now comes from the sold-out flag of the gateway.
    app.purchase(&sale, json!({"user_id": "b"}), None)
        .await
        .assert_problem(409, "sold_out");
    for _ in 0..3 {
        let cancelled = app.order_action(&order, "cancel").await;
        assert_eq!(cancelled.status, 200, "{}", cancelled.text);
        assert_eq!(cancelled.body["status"], "cancelled");
    }
    assert_eq!(remaining(&app, &sale).await, 1, "released once");
    app.order_action(&order, "pay")
        .await
        .assert_problem(409, "cancelled");
    // The unit is back on sale on this gateway (its sold-out flag dropped).
    let b = buy(&app, &sale, "b").await;
    assert_eq!(app.order_action(&b, "pay").await.status, 200);
    app.order_action(&b, "cancel")
        .await
        .assert_problem(409, "paid");
    app.send(app.client.post(app.url("/api/orders/no-such-order/pay")))
        .await
        .assert_problem(404, "order_not_found");
}

async fn pay_and_cancel_race_releases_exactly_the_cancelled(backends: Backends) {
    let app = Arc::new(TestServer::start_on(backends).await);
    let sale = sale_with_window(&app, 20, 60).await;
    let mut orders = Vec::new();
    for n in 0..20 {
        orders.push(buy(&app, &sale, &format!("racer-{n}")).await);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for order in &orders {
        for action in ["pay", "cancel", "cancel", "pay"] {
            let (app, order) = (app.clone(), order.clone());
            tasks.spawn(async move { app.order_action(&order, action).await.status.as_u16() });
        }
    }
    while let Some(status) = tasks.join_next().await {
        assert!(matches!(status.unwrap(), 200 | 409));
    }
    let mut cancelled = 0;
    for order in &orders {
        let status = app.order(order).await.body["status"].clone();
        assert!(status == "paid" || status == "cancelled", "{status}");
        cancelled += (status == "cancelled") as u64;
    }
    assert_eq!(
        remaining(&app, &sale).await,
        cancelled,
        "exactly the cancelled units are back"
    );
}

async fn late_payments_and_the_sweeper_race(backends: Backends) {
    let app = Arc::new(TestServer::start_on(backends).await);
    let sale = sale_with_window(&app, 10, 1).await;
    let mut orders = Vec::new();
    for n in 0..10 {
        orders.push(buy(&app, &sale, &format!("payer-{n}")).await);
    }
    for order in &orders {
        app.order(order).await;
    }
    // Pay each order over and over around the end of its window, while sweepers expire.
    let mut tasks = tokio::task::JoinSet::new();
    for order in orders.clone() {
        let app = app.clone();
        tasks.spawn(async move {
            let started = std::time::Instant::now();
            while started.elapsed() < std::time::Duration::from_millis(1500) {
                let status = app.order_action(&order, "pay").await.status.as_u16();
                assert!(matches!(status, 200 | 409));
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let mut expired = 0;
    for order in &orders {
        let body = app.order(order).await.body;
        let status = body["status"].as_str().unwrap().to_string();
        assert!(status == "paid" || status == "expired", "{status}");
        expired += (status == "expired") as u64;
        assert_eq!(
            body["history"].as_array().unwrap().len(),
            2,
            "one transition: {body}"
        );
    }
    assert_eq!(remaining(&app, &sale).await, expired);
}

/// Several gateways, each with its sweeper, expire the same orders: units come back once.
async fn two_sweepers_release_once(backends: Backends) {
    let deployment = Deployment::new(backends, &[]).await;
    let one = deployment.gateway().await;
    let _two = deployment.gateway().await;
    let _worker = match backends {
        Backends::RedisKafkaPostgres => Some(deployment.worker().await),
        _ => None,
    };
    let sale = sale_with_window(&one, 10, 1).await;
    let mut orders = Vec::new();
    for n in 0..10 {
        orders.push(buy(&one, &sale, &format!("sleepy-{n}")).await);
    }
    for order in &orders {
        one.wait_for_status(order, "expired").await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        remaining(&one, &sale).await,
        10,
        "each unit back exactly once"
    );
}

backend_tests!(
    unpaid_units_go_back_on_sale_when_the_window_passes,
    expired_buyer_may_buy_again,
    cancel_is_idempotent_and_releases_once,
    pay_and_cancel_race_releases_exactly_the_cancelled,
    late_payments_and_the_sweeper_race,
);
backend_tests!(distributed: two_sweepers_release_once);
