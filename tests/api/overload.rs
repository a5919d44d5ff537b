//! Overload (issue "Protection", rule 7): purchases beyond the in-flight limit are shed
//! at once with 503 `overloaded`, and a purchase that waited too long before its
//! decision is refused `timeout` instead of decided late.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{Backends, Deployment};

#[tokio::test]
async fn purchases_past_the_in_flight_limit_are_shed_at_once() {
    let deployment = Deployment::new(Backends::Embedded, &["--max-in-flight-purchases", "1"]).await;
    // The bus answers a second late: the first purchase stays in flight that long.
    let app = deployment
        .gateway_with_env(&[("FLASHSALE_FAILPOINT", "slow-publish")])
        .await;
    let sale = app.live_sale(5, 1).await;
    let first = {
        let app_client = app.client.clone();
        let url = app.url(&format!("/api/sales/{sale}/purchase"));
        tokio::spawn(async move {
            app_client
                .post(url)
                .json(&json!({"user_id": "first"}))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let shed = app
        .purchase(&sale, json!({"user_id": "second"}), None)
        .await;
    shed.assert_problem(503, "overloaded");
    assert_eq!(shed.headers["retry-after"], "1");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "shed at once, not queued behind the first: {:?}",
        started.elapsed()
    );
    // Reads are not purchases: they go on.
    assert_eq!(app.get(&format!("/api/sales/{sale}")).await.status, 200);
    assert_eq!(first.await.unwrap(), 202);
    // Once the first is answered there is room again.
    let retried = app
        .purchase(&sale, json!({"user_id": "second"}), None)
        .await;
    assert_eq!(retried.status, 202, "{}", retried.text);
}

/// A purchase whose body arrived 700 ms after its head (it waited in the server that
/// long) is not decided with `max_queue_time_ms` 300: 503 `timeout`, nothing reserved.
#[tokio::test]
async fn a_purchase_that_waited_too_long_is_refused_not_decided_late() {
    let deployment = Deployment::new(Backends::Embedded, &["--max-queue-time-ms", "300"]).await;
    let app = deployment.gateway().await;
    let sale = app.live_sale(5, 1).await;
    let send = |delay: Duration| {
        let addr = app.base.trim_start_matches("http://").to_string();
        let sale = sale.clone();
        async move {
            let body = r#"{"user_id":"late"}"#;
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let head = format!(
                "POST /api/sales/{sale}/purchase HTTP/1.1\r\nHost: flashsale\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            tokio::time::sleep(delay).await;
            stream.write_all(body.as_bytes()).await.unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.unwrap();
            answer
        }
    };
    let late = send(Duration::from_millis(700)).await;
    assert!(late.starts_with("HTTP/1.1 503"), "{late}");
    assert!(late.contains("\"code\":\"timeout\""), "{late}");
    assert_eq!(
        app.get(&format!("/api/sales/{sale}")).await.body["remaining"],
        5,
        "nothing reserved"
    );
    let in_time = send(Duration::ZERO).await;
    assert!(in_time.starts_with("HTTP/1.1 202"), "{in_time}");
}

/// A join holds its place among the requests in flight until its ticket is stored, as a
/// purchase does until its order is: past the limit, joins are shed at once.
#[tokio::test]
async fn joins_past_the_in_flight_limit_are_shed_at_once() {
    let deployment = Deployment::new(Backends::Embedded, &["--max-in-flight-purchases", "1"]).await;
    // The line's store answers a second late: the first join stays in flight that long.
    let app = deployment
        .gateway_with_env(&[("FLASHSALE_FAILPOINT", "slow-ticket-append")])
        .await;
    let sale = app
        .create_sale(json!({"name": "queued", "stock": 5, "queue": {}}))
        .await;
    let sale = sale["id"].as_str().unwrap().to_string();
    let join = |user: &'static str| {
        let (client, url) = (
            app.client.clone(),
            app.url(&format!("/api/sales/{sale}/queue")),
        );
        async move {
            let reply = client
                .post(url)
                .json(&json!({"user_id": user}))
                .send()
                .await
                .unwrap();
            (reply.status().as_u16(), reply.text().await.unwrap())
        }
    };
    let first = tokio::spawn(join("first"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = join("second").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("overloaded"), "{body}");
    assert_eq!(first.await.unwrap().0, 202);
    assert_eq!(
        join("second").await.0,
        202,
        "room again once the first is answered"
    );
}
