//! Benchmark 11 (issue #24): memory over many sales. A release `flashsale serve` (SQLite,
//! rate limits on) gets sales of `--sale-seconds` each, one after another for
//! `--minutes`, each with a payment window of `--window` seconds and offered `--rate`
//! purchase attempts/s of buyers never seen before; no order is paid, so every order
//! expires and its units sell again. The server's RSS is read every 10 s; it must
//! plateau: growth over the second half under 10 %.
//!
//!   cargo build --release && cargo run --release --example bench_soak -- \
//!       [--minutes 30] [--sale-seconds 120] [--rate 500] [--window 5]

#[path = "support/serve.rs"]
mod serve;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use flashsale::load::{self, LoadPlan, Schedule};
use parking_lot::Mutex;
use serve::Serve;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (minutes, sale_seconds, rate, window) = (
        arg("--minutes", 30),
        arg("--sale-seconds", 120),
        arg("--rate", 500),
        arg("--window", 5),
    );
    let server = Arc::new(Serve::start().await?);
    let client = reqwest::Client::new();
    let started = Instant::now();
    let soak = Duration::from_secs(minutes * 60);

    // (seconds since the start, RSS in kB), every 10 s.
    let curve: Arc<Mutex<Vec<(u64, u64)>>> = Default::default();
    let sampler = {
        let (server, curve) = (server.clone(), curve.clone());
        tokio::spawn(async move {
            loop {
                if let Ok(rss) = server.rss_kb() {
                    curve.lock().push((started.elapsed().as_secs(), rss));
                }
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        })
    };

    let mut sales = 0u64;
    let mut orders = 0usize;
    while started.elapsed() < soak {
        let ends_at = chrono::Utc::now() + chrono::Duration::seconds(sale_seconds as i64);
        let sale: serde_json::Value = client
            .post(format!("{}/api/sales", server.base))
            .json(&serde_json::json!({
                "name": format!("soak {sales}"),
                "stock": rate * sale_seconds / 4,
                "per_user_limit": 1,
                "payment_window": window,
                "ends_at": ends_at.to_rfc3339(),
            }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let report = load::run(LoadPlan {
            base_url: server.base.clone(),
            sale_id: sale["id"].as_str().context("sale id")?.to_string(),
            // Every attempt a buyer never seen before (the buyers are shuffled in memory).
            buyers: rate * sale_seconds * 2,
            first_buyer: sales * 1_000_000_000,
            attempts: u64::MAX,
            duration: Some(Duration::from_secs(sale_seconds)),
            schedule: Schedule::Open { rate: rate as f64 },
            retry_ratio: 0.05,
            double_click_ratio: 0.0,
            quantity: 1,
            probe: None,
            progress: false,
            forwarded_for: true,
            max_in_flight: Some(512),
        })
        .await?;
        orders += report.accepted.len();
        sales += 1;
        let rss = server.rss_kb()?;
        eprintln!(
            "sale {sales}: {} orders ({:?} refused), RSS {:.1} MB at {} s",
            report.accepted.len(),
            report.rejected,
            rss as f64 / 1024.0,
            started.elapsed().as_secs()
        );
    }
    sampler.abort();
    let curve = curve.lock().clone();
    let at = |share: f64| {
        let t = (started.elapsed().as_secs() as f64 * share) as u64;
        curve
            .iter()
            .find(|(s, _)| *s >= t)
            .or(curve.last())
            .map(|(_, rss)| *rss)
            .unwrap_or(0)
    };
    let (half, end) = (at(0.5), curve.last().map(|(_, r)| *r).unwrap_or(0));
    println!("seconds,rss_mb");
    for (s, rss) in &curve {
        println!("{s},{:.1}", *rss as f64 / 1024.0);
    }
    println!(
        "soak: {sales} sales of {sale_seconds} s, {orders} orders in {} min at {rate} attempts/s \
         (payment window {window} s, none paid): RSS {:.1} MB at half time, {:.1} MB at the end \
         ({:+.1} % over the second half), peak {:.1} MB",
        minutes,
        half as f64 / 1024.0,
        end as f64 / 1024.0,
        (end as f64 / half.max(1) as f64 - 1.0) * 100.0,
        server.status_kb("VmHWM:")? as f64 / 1024.0,
    );
    Arc::try_unwrap(server)
        .ok()
        .context("the sampler holds the server")?
        .stop()
}
