//! Request ids (kept from `X-Request-Id` or generated, echoed back, on every log line of
//! the request) and JSON logs with `--log-format json`.

use std::time::Duration;

use crate::helpers::TestServer;
use crate::helpers::serve_output::ServeOutput;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_a_request_id() {
    let app = TestServer::spawn().await;
    let http = reqwest::Client::new();
    let given = http
        .get(app.url("/healthz"))
        .header("X-Request-Id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(given.headers()["x-request-id"], "trace-me-42");
    let mut generated = std::collections::HashSet::new();
    for path in ["/healthz", "/healthz", "/no/such/route", "/api/sales/nope"] {
        let reply = http
            .get(app.url(path))
            .header("X-Request-Id", "bad id with spaces")
            .send()
            .await
            .unwrap();
        let id = reply.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(!id.is_empty() && id != "bad id with spaces", "{path}: {id}");
        assert!(generated.insert(id), "ids repeat");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_name_the_request_of_each_line() {
    let mut served = ServeOutput::start_reading_stderr(
        &["--quiet", "--log-format", "json"],
        &[("RUST_LOG", "flashsale=info")],
    )
    .await;
    let base = &served.base;
    let http = reqwest::Client::new();
    let sale: serde_json::Value = http
        .post(format!("{base}/api/sales"))
        .json(&serde_json::json!({"name": "logged", "stock": 1}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ended = http
        .post(format!(
            "{base}/api/sales/{}/end",
            sale["id"].as_str().unwrap()
        ))
        .header("X-Request-Id", "operator-end-1")
        .send()
        .await
        .unwrap();
    assert_eq!(ended.status(), 200);

    let mut err = served.stderr();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = err.next_line().await.unwrap() {
            let event: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            assert!(
                event["timestamp"].is_string() && event["level"].is_string(),
                "{line}"
            );
            if event["fields"]["message"] == "sale changed by an operator" {
                return event;
            }
        }
        panic!("stderr closed");
    })
    .await
    .expect("the operator's change logged");
    assert_eq!(found["span"]["request_id"], "operator-end-1", "{found}");
    assert_eq!(found["span"]["method"], "POST", "{found}");
}
