//! Rebuilding a sale a shared gate lost (Redis flushed) never hangs on a request and
//! never holds a gateway back from listening (issue #21). Each test runs on a Redis of
//! its own (never the shared one on 6379).

use std::time::{Duration, Instant};

use crate::helpers::redis_server::RedisServer;
use crate::helpers::{Backends, Deployment, TestServer};
use serde_json::json;

async fn deployment_on_own_redis(backends: Backends) -> (Deployment, RedisServer) {
    let redis = RedisServer::start().await;
    let mut deployment = Deployment::new(backends, &[]).await;
    deployment.redis_url = redis.url();
    (deployment, redis)
}

/// Buys every 200 ms for `within`: the first 202, or what the last attempt got.
async fn first_sale(gateway: &TestServer, sale: &str, user: &str, within: Duration) -> (u16, String) {
    let started = Instant::now();
    loop {
        let reply = gateway.purchase(sale, json!({"user_id": user}), None).await;
        if reply.status == 202 || started.elapsed() > within {
            return (reply.status.as_u16(), reply.text);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A client that hangs up during the rebuild its request started: the rebuild goes on
/// (it runs in a task of its own) and the sale is on sale again. It was dropped with
/// the request's future and left the sale "being restored" on that gateway for good.
async fn a_client_hanging_up_during_a_rebuild_does_not_kill_the_sale(backends: Backends) {
    let (deployment, redis) = deployment_on_own_redis(backends).await;
    let gateway = deployment.gateway().await;
    let _worker = match backends {
        Backends::RedisKafkaPostgres => Some(deployment.worker().await),
        _ => None,
    };
    let sale = gateway.live_sale(5, 1).await;
    assert_eq!(
        gateway.purchase(&sale, json!({"user_id": "before"}), None).await.status,
        202
    );
    redis.flushall().await;
    let impatient = gateway
        .client
        .get(gateway.url(&format!("/api/sales/{sale}")))
        .timeout(Duration::from_millis(100))
        .send()
        .await;
    if let Ok(reply) = impatient {
        assert_eq!(reply.status(), 503, "the sale is being restored");
        assert_eq!(reply.headers()["retry-after"], "1");
    }
    let (status, text) = first_sale(&gateway, &sale, "after", Duration::from_secs(30)).await;
    assert_eq!(status, 202, "the sale never came back: {text}");
    assert_eq!(
        gateway.get(&format!("/api/sales/{sale}")).await.body["remaining"],
        3
    );
}

/// A gateway starting after Redis lost its sales listens at once and rebuilds the live
/// ones in the background: it rebuilt every sale ever, one by one (seconds each), before
/// it listened, and missed its liveness probe.
async fn a_gateway_starting_after_a_redis_loss_listens_at_once(backends: Backends) {
    const SALES: usize = 6;
    let (deployment, redis) = deployment_on_own_redis(backends).await;
    let first = deployment.gateway().await;
    let _worker = match backends {
        Backends::RedisKafkaPostgres => Some(deployment.worker().await),
        _ => None,
    };
    let mut sales = Vec::new();
    for _ in 0..SALES {
        sales.push(first.live_sale(2, 1).await);
    }
    let ended = first
        .create_sale(json!({"name": "over", "stock": 1, "ends_at": "2020-01-01T00:00:00Z",
            "starts_at": "2019-01-01T00:00:00Z"}))
        .await;
    drop(first);
    redis.flushall().await;

    let started = Instant::now();
    let gateway = deployment.gateway().await;
    assert_eq!(gateway.get("/healthz").await.status, 200);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "answered /healthz after {took:?}");

    for sale in &sales {
        let (status, text) = first_sale(&gateway, sale, "buyer", Duration::from_secs(60)).await;
        assert_eq!(status, 202, "sale {sale} never restored: {text}");
    }
    // An ended sale is rebuilt when something asks for it.
    let ended = ended["id"].as_str().unwrap();
    let started = Instant::now();
    loop {
        let view = gateway.get(&format!("/api/sales/{ended}")).await;
        if view.status == 200 {
            assert_eq!(view.body["remaining"], 1);
            break;
        }
        view.assert_problem(503, "unavailable");
        assert!(started.elapsed() < Duration::from_secs(30), "{}", view.text);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

backend_tests!(distributed:
    a_client_hanging_up_during_a_rebuild_does_not_kill_the_sale,
    a_gateway_starting_after_a_redis_loss_listens_at_once,
);
