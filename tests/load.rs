//! `flashsale load` against a running gateway, open and closed loop.

mod common;

use common::TestServer;

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
