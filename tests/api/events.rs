//! `GET /api/sales/{id}/events` (SSE): the whole sale first, then coalesced changes, the
//! caller's own order updates, resuming with `Last-Event-ID`, and, with two gateways,
//! what the other one sold.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{Backends, Deployment, TestServer};

/// One server-sent event.
#[derive(Debug, Clone)]
struct Sent {
    event: String,
    id: Option<String>,
    data: Value,
}

/// Reads events off an open stream.
struct EventStream {
    response: reqwest::Response,
    buffer: String,
}

impl EventStream {
    async fn open(app: &TestServer, path: &str, last_event_id: Option<&str>) -> EventStream {
        let mut request = reqwest::Client::new().get(app.url(path));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        EventStream {
            response,
            buffer: String::new(),
        }
    }

    /// The next event (comments and keep-alives skipped), or `None` after `within`.
    async fn next(&mut self, within: Duration) -> Option<Sent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut sent = Sent {
                    event: "message".into(),
                    id: None,
                    data: Value::Null,
                };
                let mut any = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        sent.event = v.trim().into();
                        any = true;
                    } else if let Some(v) = line.strip_prefix("id:") {
                        sent.id = Some(v.trim().into());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        sent.data = serde_json::from_str(v.trim()).unwrap();
                        any = true;
                    }
                }
                if any {
                    return Some(sent);
                }
                continue;
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .ok()?
                .unwrap()?;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Whether the server ends the stream within `within` (events before the end are
    /// skipped).
    async fn closes_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Err(_) => return false,
                Ok(Ok(None)) => return true,
                Ok(Ok(Some(_))) => {}
                Ok(Err(e)) => panic!("stream failed: {e}"),
            }
        }
    }

    /// Events until one satisfies `done`, within `within`.
    async fn until(&mut self, within: Duration, done: impl Fn(&Sent) -> bool) -> Vec<Sent> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Some(sent) = self.next(left).await else {
                break;
            };
            let stop = done(&sent);
            seen.push(sent);
            if stop {
                return seen;
            }
        }
        panic!("not seen within {within:?}; got {seen:#?}");
    }
}

/// Stock changes are coalesced: 300 purchases give a few updates, not 300, and the
/// last one is right; the whole sale comes first.
async fn the_stream_starts_whole_then_sends_coalesced_changes(backends: Backends) {
    let app = TestServer::start_on(backends).await;
    let sale = app.live_sale(300, 1).await;
    let mut stream = EventStream::open(&app, &format!("/api/sales/{sale}/events"), None).await;
    let first = stream.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(first.event, "sale");
    assert_eq!(first.data["remaining"], 300);
    assert_eq!(first.data["id"], sale.as_str());

    let started = Instant::now();
    let mut buyers = tokio::task::JoinSet::new();
    let url = app.url(&format!("/api/sales/{sale}/purchase"));
    for chunk in 0..10 {
        let (http, url) = (reqwest::Client::new(), url.clone());
        buyers.spawn(async move {
            for n in 0..30 {
                let reply = http
                    .post(&url)
                    .json(&json!({"user_id": format!("u{chunk}-{n}")}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(reply.status(), 202);
            }
        });
    }
    let updates = stream
        .until(Duration::from_secs(30), |e| e.data["remaining"] == 0)
        .await;
    let took = started.elapsed();
    while buyers.join_next().await.is_some() {}
    assert!(updates.iter().all(|e| e.event == "stock"), "{updates:#?}");
    assert_eq!(updates.last().unwrap().data["status"], "sold_out");
    // At most one update per 250 ms (plus the edges), whatever the purchase rate.
    let bound = (took.as_millis() / 250 + 2) as usize;
    assert!(
        updates.len() <= bound && updates.len() < 300,
        "{} updates in {took:?}",
        updates.len()
    );
    // Each update carries what changed (the one item), with a fresh id.
    let ids: std::collections::HashSet<_> = updates.iter().map(|e| e.id.clone().unwrap()).collect();
    assert_eq!(ids.len(), updates.len());
    assert_eq!(updates[0].data["items"][0]["id"], "default");
}

/// The caller's own orders: a buyer watching with their name sees their order change
/// status; another watcher does not.
async fn the_caller_sees_their_own_order_updates(backends: Backends) {
    let app = TestServer::start_on(backends).await;
    let sale = app
        .create_sale(json!({"name": "pay later", "stock": 5, "payment_window": 600}))
        .await;
    let sale = sale["id"].as_str().unwrap().to_string();
    let path = |user: &str| format!("/api/sales/{sale}/events?user_id={user}");
    let mut alice = EventStream::open(&app, &path("alice"), None).await;
    let mut bob = EventStream::open(&app, &path("bob"), None).await;
    assert_eq!(
        alice.next(Duration::from_secs(5)).await.unwrap().event,
        "sale"
    );
    assert_eq!(
        bob.next(Duration::from_secs(5)).await.unwrap().event,
        "sale"
    );

    let order = app.purchase(&sale, json!({"user_id": "alice"}), None).await;
    assert_eq!(order.status, 202, "{}", order.text);
    let id = order.body["id"].as_str().unwrap().to_string();
    let paid = app.order_action(&id, "pay").await;
    assert_eq!(paid.status, 200, "{}", paid.text);
    let seen = alice
        .until(Duration::from_secs(10), |e| e.event == "order")
        .await;
    let update = seen.last().unwrap();
    assert_eq!(update.data["order_id"], id.as_str());
    assert_eq!(update.data["status"], "paid");
    // Bob gets the stock change, never Alice's order.
    let bobs = bob
        .until(Duration::from_secs(10), |e| e.event == "stock")
        .await;
    assert!(bobs.iter().all(|e| e.event != "order"));
    assert!(bob.next(Duration::from_millis(700)).await.is_none());
}

/// A client reconnecting with the id of the frame it has gets no second copy of it; a
/// client with an unknown id gets the current sale at once.
async fn a_reconnecting_client_resumes_or_gets_the_current_state(backends: Backends) {
    let app = TestServer::start_on(backends).await;
    let sale = app.live_sale(10, 1).await;
    let path = format!("/api/sales/{sale}/events");
    let mut first = EventStream::open(&app, &path, None).await;
    let whole = first.next(Duration::from_secs(5)).await.unwrap();
    let id = whole.id.clone().unwrap();
    drop(first);

    let mut resumed = EventStream::open(&app, &path, Some(&id)).await;
    assert!(
        resumed.next(Duration::from_millis(800)).await.is_none(),
        "nothing changed: nothing to send"
    );
    assert_eq!(
        app.purchase(&sale, json!({"user_id": "a"}), None)
            .await
            .status,
        202
    );
    let next = resumed.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(next.event, "stock");
    assert_eq!(next.data["remaining"], 9);

    let mut stale = EventStream::open(&app, &path, Some("gone-42")).await;
    let current = stale.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(current.event, "sale");
    assert_eq!(current.data["remaining"], 9);

    // An operator's end reaches the watchers.
    let ended = app
        .post(&format!("/api/sales/{sale}/end"), &json!({}))
        .await;
    assert_eq!(ended.status, 200, "{}", ended.text);
    let seen = stale
        .until(Duration::from_secs(5), |e| e.data["status"] == "ended")
        .await;
    assert_eq!(seen.last().unwrap().event, "stock");
    // Nothing more will happen to an ended sale: its stream ends.
    assert!(
        stale.closes_within(Duration::from_secs(5)).await,
        "the stream of an ended sale closes"
    );
    // An unknown sale: 404 before any stream.
    app.get("/api/sales/nope/events")
        .await
        .assert_problem(404, "sale_not_found");
}

backend_tests!(
    memory_bus: the_stream_starts_whole_then_sends_coalesced_changes,
    a_reconnecting_client_resumes_or_gets_the_current_state,
);
backend_tests!(memory_bus: the_caller_sees_their_own_order_updates);

/// Two gateways: a watcher on one sees the stock the other sells.
async fn a_watcher_sees_what_another_gateway_sold(backends: Backends) {
    let deployment = Deployment::new(backends, &[]).await;
    let (watched, selling) = (deployment.gateway().await, deployment.gateway().await);
    let _worker = match backends {
        Backends::RedisKafkaPostgres => Some(deployment.worker().await),
        _ => None,
    };
    let sale = selling.live_sale(20, 1).await;
    let mut stream = EventStream::open(&watched, &format!("/api/sales/{sale}/events"), None).await;
    assert_eq!(
        stream.next(Duration::from_secs(5)).await.unwrap().data["remaining"],
        20
    );
    for n in 0..5 {
        let reply = selling
            .purchase(&sale, json!({"user_id": format!("u{n}")}), None)
            .await;
        assert_eq!(reply.status, 202, "{}", reply.text);
    }
    let seen = stream
        .until(Duration::from_secs(10), |e| e.data["remaining"] == 15)
        .await;
    assert!(seen.iter().all(|e| e.event == "stock"));
}

backend_tests!(distributed: a_watcher_sees_what_another_gateway_sold);
