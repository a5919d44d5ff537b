//! The overload run (issue "Protection", rule 7; BENCHMARKS.md 7), in CI:
//!
//!   cargo run --release --example overload [-- --factor 10 --seconds 20]
//!
//! Starts the release `flashsale serve` as a process of its own (embedded, SQLite in a
//! temporary directory, the production defaults for shedding), measures its capacity
//! (durable purchases per second, closed loop), then offers `factor` times that rate on
//! an open loop for `seconds`, sampling the server's RSS, and then checks that it serves
//! normally again. Exits non-zero when a bound does not hold:
//! - load is shed (503 `overloaded` / `timeout`), and the shedding answers come fast
//!   (p99 under `--max-shed-p99-ms`);
//! - the answered requests' p99 (from send to answer) stays under `--max-p99-ms`;
//! - the server's RSS grows by less than `--max-rss-growth-mb`;
//! - once the offer stops, the closed loop sells at ≥ half the capacity measured before,
//!   and nothing but 202, 409 and 503 was ever answered (no 5xx other than shedding).
//!
//! Each request comes from its own address (a random X-Forwarded-For, loopback trusted)
//! and buyer, so the rate limits are on at their defaults and do not refuse.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use flashsale::load::{self, LoadPlan, LoadReport, Schedule};

#[derive(Parser)]
struct Args {
    /// Offer this many times the measured capacity.
    #[arg(long, default_value_t = 10.0)]
    factor: f64,
    /// How long the offer lasts.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// Seconds of the closed loop that measures the capacity (and the recovery).
    #[arg(long, default_value_t = 5.0)]
    measure_seconds: f64,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Most requests the offering client has in flight; attempts due beyond are skipped.
    #[arg(long, default_value_t = 4096)]
    client_in_flight: usize,
    #[arg(long, default_value_t = 1000.0)]
    max_p99_ms: f64,
    /// Bound on the p99 of the 503 answers (shedding), from send.
    #[arg(long, default_value_t = 500.0)]
    max_shed_p99_ms: f64,
    #[arg(long, default_value_t = 256)]
    max_rss_growth_mb: u64,
}

struct ServerProcess {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    fn start() -> anyhow::Result<ServerProcess> {
        // target/release/examples/overload → target/release/flashsale
        let exe = std::env::current_exe()?;
        let binary = exe
            .parent()
            .and_then(|d| d.parent())
            .map(|d| d.join("flashsale"))
            .context("locating the flashsale binary")?;
        anyhow::ensure!(
            binary.exists(),
            "{} not found: `cargo build --release` first",
            binary.display()
        );
        let dir = tempfile::tempdir()?;
        let mut child = Command::new(&binary)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .arg("--store")
            .arg(format!(
                "sqlite://{}",
                dir.path().join("overload.db").display()
            ))
            .arg("--config")
            .arg(dir.path().join("none.toml"))
            .args(["--trusted-proxy", "127.0.0.1"])
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let base = loop {
            let line = lines
                .next()
                .context("the server exited before listening")??;
            if let Some(base) = line.strip_prefix("flashsale listening on ") {
                break base.to_string();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Ok(ServerProcess {
            child,
            base,
            _dir: dir,
        })
    }

    fn rss_kb(&self) -> u64 {
        rss_kb(self.child.id())
    }
}

/// A process's resident memory, from `/proc` (0 when unreadable).
fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Runtime::new()?;
    let server = ServerProcess::start()?;
    let plan = |sale: &str, schedule: Schedule, seconds: f64| LoadPlan {
        base_url: server.base.clone(),
        sale_id: sale.to_string(),
        buyers: 100_000_000,
        attempts: u64::MAX,
        duration: Some(Duration::from_secs_f64(seconds)),
        schedule,
        retry_ratio: 0.0,
        double_click_ratio: 0.0,
        quantity: 1,
        probe: None,
        progress: false,
        forwarded_for: true,
        // A flood's clients give up on an attempt they cannot send rather than open
        // connections without bound (which only measures the kernel's SYN backlog).
        max_in_flight: Some(args.client_in_flight),
        first_buyer: 0,
    };
    let closed = Schedule::Closed {
        connections: args.connections,
    };

    let sale = create_sale(&rt, &server.base)?;
    let before = rt.block_on(load::run(plan(&sale, closed, args.measure_seconds)))?;
    let capacity = before.accepted.len() as f64 / before.elapsed.as_secs_f64();
    println!(
        "capacity: {capacity:.0} durable purchases/s (closed loop, {} connections, {} s; refused {:?})",
        args.connections, args.measure_seconds, before.rejected
    );
    let rss_before = server.rss_kb();

    // The offer, with the server's RSS sampled meanwhile.
    let rate = capacity * args.factor;
    let sale = create_sale(&rt, &server.base)?;
    let peak_rss = Arc::new(AtomicU64::new(rss_before));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, on) = (peak_rss.clone(), sampling.clone());
        let pid = server.child.id();
        std::thread::spawn(move || {
            while on.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kb(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let flood = rt.block_on(load::run(plan(
        &sale,
        Schedule::Open { rate },
        args.seconds,
    )))?;
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.join();
    let peak_rss = peak_rss.load(Ordering::Relaxed);
    print_flood(&flood, rate, args.seconds);

    // Recovery: the same closed loop as before.
    std::thread::sleep(Duration::from_secs(1));
    let rss_after = server.rss_kb();
    let sale = create_sale(&rt, &server.base)?;
    let after = rt.block_on(load::run(plan(&sale, closed, args.measure_seconds)))?;
    let after_rate = after.accepted.len() as f64 / after.elapsed.as_secs_f64();
    println!(
        "after the offer: {after_rate:.0} durable purchases/s ({:.2} of before; refused {:?}); \
         RSS {} MB before, {} MB peak, {} MB after",
        after_rate / capacity,
        after.rejected,
        rss_before / 1024,
        peak_rss / 1024,
        rss_after / 1024
    );

    let shed = ["overloaded", "timeout"]
        .iter()
        .map(|c| flood.rejected.get(*c).copied().unwrap_or(0))
        .sum::<u64>();
    let p99 = flood.service_us.value_at_quantile(0.99) as f64 / 1000.0;
    let shed_p99 = flood.service_503_us.value_at_quantile(0.99) as f64 / 1000.0;
    let odd: Vec<_> = [&before, &flood, &after]
        .iter()
        .flat_map(|r| r.by_status.iter())
        .filter(|(status, _)| !matches!(status, 0 | 202 | 409 | 503))
        .map(|(s, n)| (*s, *n))
        .collect();
    let mut failed = Vec::new();
    if shed == 0 {
        failed.push("nothing was shed".to_string());
    }
    if shed_p99 > args.max_shed_p99_ms {
        failed.push(format!(
            "503 p99 {shed_p99:.0} ms > {} ms: shedding is not fast",
            args.max_shed_p99_ms
        ));
    }
    if p99 > args.max_p99_ms {
        failed.push(format!("answered p99 {p99:.0} ms > {} ms", args.max_p99_ms));
    }
    let growth_mb = peak_rss.saturating_sub(rss_before) / 1024;
    if growth_mb > args.max_rss_growth_mb {
        failed.push(format!(
            "RSS grew by {growth_mb} MB > {} MB",
            args.max_rss_growth_mb
        ));
    }
    if after_rate < capacity * 0.5 {
        failed.push(format!(
            "after the offer it sold {after_rate:.0}/s, under half of {capacity:.0}/s"
        ));
    }
    if !odd.is_empty() {
        failed.push(format!("answers other than 202/409/503: {odd:?}"));
    }
    if failed.is_empty() {
        println!("overload: ok");
        Ok(())
    } else {
        anyhow::bail!("overload: {}", failed.join("; "))
    }
}

fn print_flood(flood: &LoadReport, rate: f64, seconds: f64) {
    let sent = flood.attempts.saturating_sub(flood.skipped) as f64 / seconds;
    println!(
        "offer: {rate:.0}/s asked, {sent:.0}/s sent for {seconds} s ({} requests, {} attempts skipped \
         with the client's in-flight limit full); answered by status {:?}; codes {:?}",
        flood.requests, flood.skipped, flood.by_status, flood.rejected
    );
    let q = |h: &hdrhistogram::Histogram<u64>, x| h.value_at_quantile(x) as f64 / 1000.0;
    println!(
        "answered, from send: p50 {:.1} ms · p99 {:.1} ms · p99.9 {:.1} ms · max {:.1} ms; \
         from the due time (the client's own lateness included): p50 {:.1} ms · p99 {:.1} ms",
        q(&flood.service_us, 0.5),
        q(&flood.service_us, 0.99),
        q(&flood.service_us, 0.999),
        flood.service_us.max() as f64 / 1000.0,
        q(&flood.latency_us, 0.5),
        q(&flood.latency_us, 0.99),
    );
    println!(
        "503 answers, from send: p50 {:.1} ms · p99 {:.1} ms · max {:.1} ms",
        q(&flood.service_503_us, 0.5),
        q(&flood.service_503_us, 0.99),
        flood.service_503_us.max() as f64 / 1000.0
    );
    println!(
        "durable orders while offered: {} ({:.0}/s)",
        flood.accepted.len(),
        flood.accepted.len() as f64 / seconds
    );
}

fn create_sale(rt: &tokio::runtime::Runtime, base: &str) -> anyhow::Result<String> {
    rt.block_on(async {
        let sale: serde_json::Value = reqwest::Client::new()
            .post(format!("{base}/api/sales"))
            .json(
                &serde_json::json!({"name": "overload", "stock": 100_000_000, "per_user_limit": 1}),
            )
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(sale["id"].as_str().context("sale id")?.to_string())
    })
}
