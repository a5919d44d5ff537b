//! `serve` prints a status line every few seconds (remaining, sold, outcomes, requests
//! per second, p99); `--quiet` turns it off.

use std::time::Duration;

use crate::helpers::serve_output::ServeOutput;

/// `serve` with the buyer limit off (the test buys five times from one address).
async fn serve(extra: &[&str]) -> ServeOutput {
    let mut args = vec!["--rate-per-buyer", "off"];
    args.extend_from_slice(extra);
    ServeOutput::start(&args).await
}

async fn sell_three(base: &str) -> String {
    let http = reqwest::Client::new();
    let sale: serde_json::Value = http
        .post(format!("{base}/api/sales"))
        .json(&serde_json::json!({"name": "status drop", "stock": 3}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = sale["id"].as_str().unwrap().to_string();
    for n in 0..5 {
        http.post(format!("{base}/api/sales/{id}/purchase"))
            .json(&serde_json::json!({"user_id": format!("u{n}")}))
            .send()
            .await
            .unwrap();
    }
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_prints_a_status_line_and_quiet_turns_it_off() {
    let mut served = serve(&["--status-every", "1"]).await;
    let lines = &mut served.stdout;
    let id = sell_three(&served.base).await;
    let mut sale_line = None;
    let mut totals_line = None;
    let _ = tokio::time::timeout(Duration::from_secs(6), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains(&id[id.len() - 8..]) {
                sale_line = Some(line);
            } else if line.starts_with("[status]") && line.contains("purchases:") {
                totals_line = Some(line);
            }
            if sale_line.is_some() && totals_line.is_some() {
                break;
            }
        }
    })
    .await;
    let sale_line = sale_line.expect("a line for the sale");
    assert!(
        sale_line.contains("sold_out: 0 left of 3, 3 sold"),
        "{sale_line}"
    );
    let totals_line = totals_line.expect("a totals line");
    assert!(totals_line.contains("accepted 3"), "{totals_line}");
    assert!(totals_line.contains("sold_out 2"), "{totals_line}");
    assert!(
        totals_line.contains("req/s") && totals_line.contains("p99 ≤"),
        "{totals_line}"
    );

    let mut quiet = serve(&["--quiet", "--status-every", "1"]).await;
    sell_three(&quiet.base).await;
    let printed = tokio::time::timeout(Duration::from_millis(2500), quiet.stdout.next_line()).await;
    assert!(printed.is_err(), "--quiet printed {printed:?}");
}

/// A newcomer's first `serve` (no credential, an empty store) has sales to show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_serve_in_development_mode_has_sample_sales() {
    let served = ServeOutput::start(&["--quiet"]).await;
    let base = &served.base;
    let sales: Vec<serde_json::Value> = reqwest::get(format!("{base}/api/sales"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<_> = sales.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&"Sample drop") && names.contains(&"Sample hall"));
    assert!(sales.iter().all(|s| s["status"] == "live"));
    let hall = sales.iter().find(|s| s["name"] == "Sample hall").unwrap();
    assert_eq!(hall["items"].as_array().unwrap().len(), 72);
}
