//! `flashsale load` against a running gateway, open and closed loop.

use crate::helpers::TestServer;

async fn load(app: &TestServer, args: &[&str]) -> serde_json::Value {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_flashsale"))
        .args(["load", "--url", &app.base, "--json"])
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_and_closed_loop_reports() {
    let app = TestServer::spawn().await;
    let sale = app.live_sale(30, 1).await;
    let open = load(&app, &["--sale", &sale, "--buyers", "200", "--rate", "400"]).await;
    assert_eq!(open["attempts"], 200);
    assert_eq!(open["offered_rps"], 400.0);
    assert!(open["requests"].as_u64().unwrap() >= 200);
    assert_eq!(open["accepted"], 30, "{open}");
    assert_eq!(open["acknowledged"], 30);
    assert_eq!(open["audit"]["ok"], true);
    assert!(open["rejected"]["sold_out"].as_u64().unwrap() > 0);
    let answered: u64 = open["per_second"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(answered, open["requests"].as_u64().unwrap());
    // 200 attempts at 400/s take half a second at least: the offered rate was kept.
    assert!(open["elapsed_s"].as_f64().unwrap() >= 0.45, "{open}");
    for q in ["p50", "p90", "p99", "p999", "max"] {
        assert!(open["latency_ms"][q].as_f64().unwrap() > 0.0);
    }

    // Closed loop on a sold-out sale: buyers come back (300 attempts over 100 buyers).
    let closed = load(
        &app,
        &[
            "--sale",
            &sale,
            "--buyers",
            "100",
            "--requests",
            "300",
            "--connections",
            "8",
        ],
    )
    .await;
    assert_eq!(closed["attempts"], 300);
    assert_eq!(closed["offered_rps"], serde_json::Value::Null);
    assert_eq!(closed["accepted"], 0);
    assert_eq!(closed["audit"]["ok"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duration_multi_item_sale_and_html_report() {
    let app = TestServer::spawn().await;
    let sale = app
        .create_sale(serde_json::json!({
            "name": "three colours",
            "items": [{"id": "red", "stock": 10}, {"id": "blue", "stock": 20}, {"id": "green", "stock": 30}],
            "per_user_limit": 2,
        }))
        .await;
    let sale = sale["id"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("run.html");
    let run = load(
        &app,
        &[
            "--sale",
            sale,
            "--buyers",
            "5000",
            "--duration",
            "1500ms",
            "--connections",
            "8",
            "--report",
            html.to_str().unwrap(),
        ],
    )
    .await;
    // Bounded by time, not by a number of attempts.
    let elapsed = run["elapsed_s"].as_f64().unwrap();
    assert!((1.5..5.0).contains(&elapsed), "{run}");
    // Every item sold out, to buyers buying sets of items, within the limit.
    assert_eq!(run["acknowledged"], 60, "{run}");
    assert_eq!(run["audit"]["ok"], true);
    let after = app.get(&format!("/api/sales/{sale}")).await;
    assert_eq!(after.body["remaining"], 0);
    let answered: u64 = run["by_status"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(answered, run["requests"].as_u64().unwrap());

    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!doctype html>"));
    assert_eq!(page.matches("<svg").count(), 2, "two charts");
    assert!(page.contains("<polyline"), "the charts have data");
    // Self-contained: nothing to fetch, nothing to run.
    for outside in ["<script", "src=", "<link", "@import"] {
        assert!(!page.contains(outside), "{outside} in the report");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_measures_a_constant_route_with_the_same_client() {
    let app = TestServer::spawn().await;
    let run = load(
        &app,
        &[
            "--probe",
            "/healthz",
            "--requests",
            "500",
            "--connections",
            "4",
        ],
    )
    .await;
    assert_eq!(run["requests"], 500);
    assert_eq!(run["by_status"]["200"], 500, "{run}");
    assert_eq!(run["accepted"], 0);
    let missing = load(
        &app,
        &[
            "--probe",
            "/no-such-route",
            "--requests",
            "10",
            "--connections",
            "2",
        ],
    )
    .await;
    assert_eq!(missing["by_status"]["404"], 10, "{missing}");
}

/// `load --queue`: every buyer joins the line of a paced sale and follows their ticket;
/// the report has the line's figures and its order check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_through_a_line_follows_every_ticket() {
    let app = TestServer::spawn().await;
    let sale = app
        .create_sale(serde_json::json!({
            "name": "queued",
            "stock": 60,
            // Everyone in line before the start.
            "starts_at": (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339(),
            "queue": {"rate": "200/s"},
        }))
        .await;
    let sale = sale["id"].as_str().unwrap();
    let report = load(
        &app,
        &[
            "--sale",
            sale,
            "--queue",
            "--buyers",
            "150",
            "--connections",
            "8",
        ],
    )
    .await;
    assert_eq!(report["joined"], 150, "{report}");
    assert_eq!(report["success"], 60, "{report}");
    assert_eq!(report["out_of_order"], 0, "{report}");
    assert_eq!(report["still_waiting"], 0, "{report}");
    let told = report["refused"]["sold_out"].as_u64().unwrap() + report["closed"].as_u64().unwrap();
    assert_eq!(told, 90, "{report}");
    assert!(report["joins_per_s"].as_f64().unwrap() > 0.0);
    // Paced at 200/s (a first burst of 50 ms allowed): 61 decisions take about a
    // quarter of a second, not a few milliseconds.
    let rate = report["decisions_per_s"].as_f64().unwrap();
    assert!(rate > 100.0 && rate < 320.0, "{report}");
}
