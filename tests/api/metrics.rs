//! `GET /metrics`: a scripted sale, and the counters equal what the client saw.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;

use crate::helpers::{Backends, TestServer};

/// A scrape, as `name{labels}` → value (labels as written, sorted by the exporter).
pub struct Scrape(HashMap<String, f64>);

impl Scrape {
    pub async fn of(app: &TestServer) -> Scrape {
        let reply = app.get("/metrics").await;
        assert_eq!(reply.status, 200);
        assert!(
            reply.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain; version=0.0.4")
        );
        Scrape::parse(&reply.text)
    }

    pub fn parse(text: &str) -> Scrape {
        let mut series = HashMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (name, value) = line.rsplit_once(' ').expect("name value");
            series.insert(name.to_string(), value.parse().expect("a number"));
        }
        Scrape(series)
    }

    /// The value of the series whose name starts `name{` and has every label given.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for (series, value) in &self.0 {
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            if metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            {
                assert!(found.is_none(), "{name} {labels:?} matches several series");
                found = Some(*value);
            }
        }
        found
    }

    /// Every metric name in the scrape (histograms by their base name too).
    pub fn names(&self) -> std::collections::BTreeSet<String> {
        let mut names = std::collections::BTreeSet::new();
        for series in self.0.keys() {
            let name = series.split('{').next().unwrap().to_string();
            for suffix in ["_bucket", "_sum", "_count"] {
                if let Some(base) = name.strip_suffix(suffix) {
                    names.insert(base.to_string());
                }
            }
            names.insert(name);
        }
        names
    }
}

async fn a_scripted_sale_is_counted_as_the_client_saw_it(backends: Backends) {
    let app = TestServer::spawn_on(backends, &[]).await;
    let sale = app.live_sale(5, 1).await;
    let mut seen: HashMap<String, u32> = HashMap::new();
    // One bad request while units remain (on a sold-out sale, a keyless purchase is
    // answered sold_out before its body is read).
    let bad = app.purchase(&sale, json!({"user_id": ""}), None).await;
    *seen.entry(bad.code().to_string()).or_default() += 1;
    for n in 0..8 {
        let reply = app
            .purchase(&sale, json!({"user_id": format!("u{n}")}), None)
            .await;
        let outcome = match reply.status.as_u16() {
            202 => "accepted".to_string(),
            _ => reply.code().to_string(),
        };
        *seen.entry(outcome).or_default() += 1;
    }
    // One buyer again, with a key: decided by the gate (sold out before her limit).
    let again = app
        .purchase(&sale, json!({"user_id": "u0"}), Some("k"))
        .await;
    *seen.entry(again.code().to_string()).or_default() += 1;
    assert_eq!(seen["accepted"], 5, "{seen:?}");
    assert_eq!(seen["sold_out"], 4, "{seen:?}");
    assert_eq!(seen["invalid_request"], 1, "{seen:?}");

    // The store's counters follow the bus (the worker stores on Kafka).
    let mut scrape = Scrape::of(&app).await;
    for _ in 0..100 {
        if scrape.value(
            "flashsale_sale_sold_units",
            &[("sale", &sale), ("source", "store")],
        ) == Some(5.0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        scrape = Scrape::of(&app).await;
    }
    for (outcome, n) in &seen {
        assert_eq!(
            scrape.value("flashsale_purchases_total", &[("outcome", outcome)]),
            Some(*n as f64),
            "outcome {outcome}"
        );
    }
    let route = "/api/sales/{id}/purchase";
    let requests = |status: &str| {
        scrape.value(
            "flashsale_http_requests_total",
            &[("route", route), ("method", "POST"), ("status", status)],
        )
    };
    assert_eq!(requests("202"), Some(5.0));
    assert_eq!(requests("409"), Some(4.0));
    assert_eq!(requests("400"), Some(1.0));
    assert_eq!(
        scrape.value("flashsale_purchase_duration_seconds_count", &[]),
        Some(10.0)
    );
    // Five orders went through the bus; the gate decided at least those.
    assert_eq!(
        scrape.value(
            "flashsale_stage_duration_seconds_count",
            &[("stage", "bus")]
        ),
        Some(5.0)
    );
    assert!(
        scrape
            .value(
                "flashsale_stage_duration_seconds_count",
                &[("stage", "gate")]
            )
            .unwrap()
            >= 5.0
    );
    // Per sale: I1 (sold ≤ stock) and I4 (the gate and the store agree).
    let sale_value = |name: &str, extra: &[(&str, &str)]| {
        let mut labels = vec![("sale", sale.as_str())];
        labels.extend_from_slice(extra);
        scrape.value(name, &labels)
    };
    assert_eq!(sale_value("flashsale_sale_stock_units", &[]), Some(5.0));
    assert_eq!(sale_value("flashsale_sale_remaining_units", &[]), Some(0.0));
    assert_eq!(
        sale_value("flashsale_sale_sold_units", &[("source", "gate")]),
        Some(5.0)
    );
    assert_eq!(
        sale_value("flashsale_sale_sold_units", &[("source", "store")]),
        Some(5.0)
    );
    assert_eq!(
        scrape.value("flashsale_shed_total", &[("reason", "overloaded")]),
        Some(0.0)
    );
    assert_eq!(scrape.value("flashsale_rate_limited_total", &[]), Some(0.0));
}

backend_tests!(a_scripted_sale_is_counted_as_the_client_saw_it);

/// Every metric the README, the Grafana dashboard and the alert rules name is in a real
/// scrape (after one sale, so that per-sale series exist).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboards_and_alerts_query_exists() {
    let app = TestServer::spawn().await;
    let sale = app.live_sale(2, 1).await;
    assert_eq!(
        app.purchase(&sale, json!({"user_id": "a"}), None)
            .await
            .status,
        202
    );
    // And a line, so that its series exist too.
    line_of_five_for_two(&app).await;
    let scrape = Scrape::of(&app).await;
    let names = scrape.names();
    for name in flashsale::observe::metrics::ALL {
        assert!(names.contains(*name), "{name} not in a scrape: {names:?}");
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let mut checked = 0;
    for file in [
        "deploy/grafana/flashsale-dashboard.json",
        "deploy/prometheus/alerts.yml",
    ] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("flashsale_") {
                assert!(
                    names.contains(word),
                    "{file} queries {word}, not in a scrape"
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 10,
        "only {checked} metric names found in the files"
    );
}

/// A line with stock 3: five buyers join; the first two get a unit each, the third
/// asks for the two there are not (refused `sold_out`, the line goes on), the fourth
/// takes the last unit and the fifth is told `closed`. Waits until none is waiting.
async fn line_of_five_for_two(app: &TestServer) {
    let sale = app
        .create_sale(json!({
            "name": "queued",
            "stock": 3,
            "per_user_limit": 2,
            // Everybody in line before the start: then the stock goes.
            "starts_at": (chrono::Utc::now() + chrono::Duration::seconds(1)).to_rfc3339(),
            // Paced: the last unit's order is stored, closing the line, before the
            // fifth ticket's turn (unpaced, the fifth may be refused first).
            "queue": {"rate": "5/s"},
        }))
        .await;
    let sale = sale["id"].as_str().unwrap();
    for n in 0..5 {
        let joined = app
            .post(
                &format!("/api/sales/{sale}/queue"),
                &json!({"user_id": format!("queued-{n}"), "quantity": if n == 2 { 2 } else { 1 }}),
            )
            .await;
        assert_eq!(joined.status, 202, "{}", joined.text);
    }
    for _ in 0..100 {
        let line = app.get(&format!("/api/sales/{sale}/queue")).await;
        if line.body["waiting"] == 0 && line.body["decided"].as_u64().unwrap() >= 4 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the line did not empty");
}

/// The line's metrics count its tickets as the line's figures do: joins, outcomes,
/// waiting, time in line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_is_counted_by_outcome() {
    let app = TestServer::spawn().await;
    line_of_five_for_two(&app).await;
    let scrape = Scrape::of(&app).await;
    let outcome = |o: &str| scrape.value("flashsale_line_tickets_total", &[("outcome", o)]);
    assert_eq!(scrape.value("flashsale_line_joins_total", &[]), Some(5.0));
    assert_eq!(outcome("success"), Some(3.0));
    assert_eq!(outcome("refused"), Some(1.0));
    assert_eq!(outcome("closed"), Some(1.0));
    assert_eq!(outcome("timeout"), Some(0.0));
    assert_eq!(
        scrape.value("flashsale_line_waiting_tickets", &[]),
        Some(0.0)
    );
    assert_eq!(
        scrape.value("flashsale_line_wait_seconds_count", &[]),
        Some(5.0)
    );
    // Its own buckets: an hour is a bound, not the purchases' 10 s.
    assert_eq!(
        scrape.value("flashsale_line_wait_seconds_bucket", &[("le", "3600")]),
        Some(5.0)
    );
}
