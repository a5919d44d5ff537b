//! Benchmark 12 (BENCHMARKS.md): the line in front of a sale (issue #25), on a release
//! `flashsale serve` in a process of its own (embedded: local gate, SQLite).
//!
//!   cargo build --release && cargo run --release --example bench_line -- [--tickets N]
//!
//! 1. Joins per second against sold-out answers per second, in alternating rounds of the
//!    same run: a join stores a ticket (a group-committed SQLite write), a sold-out
//!    purchase is refused before its body is read. The sale of the line starts in an
//!    hour, so its tickets wait and the joins are measured alone.
//! 2. Memory: the server's RSS before and after `--tickets` (default 1,000,000) buyers
//!    joined that line, and the bytes per waiting ticket.

#[path = "support/serve.rs"]
mod support;

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use flashsale::load::line::{self, LinePlan};
use flashsale::load::{self, LoadPlan, Schedule};
use support::Serve;

#[derive(Parser)]
struct Args {
    /// Rounds of each route.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Buyers joining per round of joins.
    #[arg(long, default_value_t = 40_000)]
    joins: u64,
    /// Seconds per round of sold-out purchases.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Waiting tickets for the memory figure.
    #[arg(long, default_value_t = 1_000_000)]
    tickets: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = Serve::start().await?;
    let client = reqwest::Client::new();
    let create = |body: serde_json::Value| {
        let (client, base) = (client.clone(), server.base.clone());
        async move {
            let sale: serde_json::Value = client
                .post(format!("{base}/api/sales"))
                .json(&body)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            anyhow::Ok(sale["id"].as_str().context("a sale id")?.to_string())
        }
    };
    let sold_out = create(serde_json::json!({"name": "sold out", "stock": 1})).await?;
    client
        .post(format!("{}/api/sales/{sold_out}/purchase", server.base))
        .json(&serde_json::json!({"user_id": "first"}))
        .send()
        .await?
        .error_for_status()?;
    let starts_at = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let queued = create(serde_json::json!({
        "name": "line", "stock": 1, "starts_at": starts_at, "queue": {"max_wait_s": 86_400}
    }))
    .await?;

    let rss_idle = server.rss_kb()?;
    let mut next_buyer = 0;
    let (mut refusals, mut joins) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let refused = load::run(LoadPlan {
            base_url: server.base.clone(),
            sale_id: sold_out.clone(),
            buyers: 100_000,
            attempts: u64::MAX,
            duration: Some(Duration::from_secs_f64(args.seconds)),
            schedule: Schedule::Closed {
                connections: args.connections,
            },
            retry_ratio: 0.0,
            double_click_ratio: 0.0,
            quantity: 1,
            probe: None,
            progress: false,
            forwarded_for: true,
            max_in_flight: None,
            first_buyer: 0,
        })
        .await?;
        refusals.push(refused.throughput_rps());
        let joined = line::run(plan(&server.base, &queued, next_buyer, args.joins, &args)).await?;
        next_buyer += args.joins;
        anyhow::ensure!(
            joined.joined == args.joins,
            "joins refused: {:?}",
            joined.join_refused
        );
        joins.push(joined.joins_per_s);
        println!(
            "round {}: sold-out answers {:.0}/s · joins {:.0}/s (p99 {:.1} ms)",
            round + 1,
            refusals[round],
            joins[round],
            joined.join_latency_ms.p99
        );
    }
    let (refused, joined) = (median(&refusals), median(&joins));
    println!(
        "medians: sold-out answers {refused:.0}/s · joins {joined:.0}/s · ratio joins / sold-out {:.2}",
        joined / refused
    );

    // The rest of the tickets, then the memory they hold.
    let rest = args.tickets.saturating_sub(next_buyer);
    let started = Instant::now();
    let joined = line::run(plan(&server.base, &queued, next_buyer, rest, &args)).await?;
    anyhow::ensure!(
        joined.joined == rest,
        "joins refused: {:?}",
        joined.join_refused
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = server.rss_kb()?;
    let line: serde_json::Value = client
        .get(format!("{}/api/sales/{queued}/queue", server.base))
        .send()
        .await?
        .json()
        .await?;
    let waiting = line["waiting"].as_u64().context("waiting")?;
    println!(
        "{waiting} tickets waiting ({rest} joined in {:.0} s): RSS {:.0} MB (idle {:.0} MB), {:.0} bytes per ticket",
        started.elapsed().as_secs_f64(),
        rss as f64 / 1024.0,
        rss_idle as f64 / 1024.0,
        (rss - rss_idle) as f64 * 1024.0 / waiting as f64
    );
    server.stop()
}

fn plan(base: &str, sale: &str, first_buyer: u64, buyers: u64, args: &Args) -> LinePlan {
    LinePlan {
        base_url: base.to_string(),
        sale_id: sale.to_string(),
        buyers,
        first_buyer,
        connections: args.connections,
        poll: Duration::from_secs(1),
        patience: Duration::ZERO,
        follow: false,
        forwarded_for: true,
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}
