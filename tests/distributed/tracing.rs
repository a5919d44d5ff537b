//! Trace export (feature `otel`): a purchase's spans (request, gate, bus) leave the
//! gateway over OTLP/HTTP, and the worker's `store_order` span joins the same trace
//! through the Kafka message's `traceparent` header. The collector is a stand-in that
//! keeps what it receives (protobuf: trace ids as raw bytes, span names as strings).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use parking_lot::Mutex;
use serde_json::json;

use crate::helpers::{Backends, Deployment};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Redis, PostgreSQL and a Kafka broker (scripts/services.sh up)"]
async fn a_purchase_is_one_trace_from_the_gateway_to_the_worker() {
    let received: Arc<Mutex<Vec<Bytes>>> = Arc::default();
    let kept = received.clone();
    let collector = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let kept = kept.clone();
            async move {
                kept.lock().push(body);
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, collector).await.unwrap() });

    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ];
    let deployment = Deployment::new(Backends::RedisKafkaPostgres, &[]).await;
    let gateway = deployment.gateway_with_env(&env).await;
    let _worker = deployment.worker_with_env(&env).await;
    let sale = gateway.live_sale(5, 1).await;
    let bought = gateway
        .send(
            reqwest::Client::new()
                .post(gateway.url(&format!("/api/sales/{sale}/purchase")))
                .header("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01"))
                .json(&json!({"user_id": "traced"})),
        )
        .await;
    assert_eq!(bought.status, 202, "{}", bought.text);
    gateway.settled_orders(&sale).await;

    let trace_id = hex::decode(TRACE_ID).unwrap();
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen = ["request", "gate", "bus", "store_order"]
            .into_iter()
            .filter(|name| {
                received
                    .lock()
                    .iter()
                    .any(|body| contains(body, &trace_id) && contains(body, name.as_bytes()))
            })
            .collect();
        if seen.len() == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        seen,
        ["request", "gate", "bus", "store_order"],
        "spans in the trace"
    );
    // The worker's export is its own (service name) and carries the same trace id.
    assert!(received.lock().iter().any(|body| {
        contains(body, b"flashsale-worker")
            && contains(body, &trace_id)
            && contains(body, b"store_order")
    }));
}
