//! Benchmark 7: memory. Bytes per buyer held by the local gate, counted by a global
//! allocator that tallies live bytes; then the RSS of a real `flashsale serve` after
//! 1,000,000 distinct buyers have bought from it over HTTP.
//!
//!   cargo build --release && cargo run --release --example bench_memory [-- BUYERS]

use std::alloc::{GlobalAlloc, Layout, System};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use flashsale::domain::{Item, Sale, ValidPurchase};
use flashsale::gate::{LocalGate, StockGate};
use flashsale::load::{self, LoadPlan, Schedule};

/// The system allocator, counting the bytes asked for and not yet given back.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn main() -> anyhow::Result<()> {
    let buyers: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(gate_bytes_per_buyer(buyers))?;
    runtime.block_on(serve_rss(buyers))?;
    Ok(())
}

async fn gate_bytes_per_buyer(buyers: u64) -> anyhow::Result<()> {
    let sale = Sale {
        id: "memory".into(),
        name: "memory".into(),
        items: vec![Item {
            id: "default".into(),
            stock: u32::MAX,
        }],
        per_user_limit: 1,
        starts_at: 0,
        ends_at: None,
        payment_window: 0,
        rate_limits: Default::default(),
        paused: false,
        shards: 1,
        created_at: 0,
    };
    // The purchases are made before counting: only what the gate keeps is measured.
    let purchases: Vec<ValidPurchase> = (0..buyers)
        .map(|n| ValidPurchase {
            user_id: format!("buyer-{n}"),
            units: vec![(0, 1)],
            fingerprint: "default:1".into(),
        })
        .collect();
    for keyed in [false, true] {
        let gate = LocalGate::new();
        gate.open_sale(&sale).await?;
        let before = LIVE.load(Ordering::Relaxed);
        for (n, p) in purchases.iter().enumerate() {
            let key = keyed.then(|| format!("key-{n:08}"));
            gate.decide(
                &sale,
                p,
                key.as_deref(),
                "0190f3a2b4c5d6e7f8091a2b3c4d5e6f",
                1,
            )?;
        }
        let bytes = LIVE.load(Ordering::Relaxed) - before;
        println!(
            "local gate, {buyers} buyers{}: {:.1} MB live, {:.1} bytes per buyer",
            if keyed {
                " each with an Idempotency-Key (12-character ids, 12-character keys)"
            } else {
                " without keys (ids like buyer-123456)"
            },
            bytes as f64 / 1e6,
            bytes as f64 / buyers as f64
        );
    }
    Ok(())
}

async fn serve_rss(buyers: u64) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let binary = exe
        .parent()
        .and_then(|examples| examples.parent())
        .map(|dir| dir.join("flashsale"))
        .filter(|path| path.exists())
        .context("target/release/flashsale is missing: run `cargo build --release` first")?;
    let dir = tempfile::tempdir()?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    drop(listener);
    let mut server = Command::new(&binary)
        // The rate limits at their defaults, counting every request: each from a new
        // buyer and from one of 65,536 addresses (X-Forwarded-For, trusted from loopback).
        .args([
            "serve",
            "--listen",
            &addr.to_string(),
            "--trusted-proxy",
            "127.0.0.1",
        ])
        .env("FLASHSALE_SAMPLE_SALES", "false")
        .arg("--store")
        .arg(format!(
            "sqlite://{}",
            dir.path().join("memory.db").display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "serve did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss_idle = rss_kb(server.id())?;
    let sale: serde_json::Value = client
        .post(format!("{base}/api/sales"))
        .json(&serde_json::json!({"name": "memory", "stock": buyers, "per_user_limit": 1}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let started = Instant::now();
    let run = load::run(LoadPlan {
        base_url: base.clone(),
        sale_id: sale["id"].as_str().context("sale id")?.to_string(),
        buyers,
        attempts: buyers,
        duration: None,
        schedule: Schedule::Closed { connections: 64 },
        retry_ratio: 0.0,
        double_click_ratio: 0.0,
        quantity: 1,
        probe: None,
        progress: true,
        forwarded_for: true,
        max_in_flight: None,
        first_buyer: 0,
    })
    .await?;
    let rss = rss_kb(server.id())?;
    let peak = status_kb(server.id(), "VmHWM:")?;
    println!(
        "serve: {} orders from {buyers} distinct buyers in {:.0} s ({:?} refused); RSS {:.1} MB \
         (idle {:.1} MB, peak {:.1} MB)",
        run.accepted.len(),
        started.elapsed().as_secs_f64(),
        run.rejected,
        rss as f64 / 1024.0,
        rss_idle as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    server.kill()?;
    server.wait()?;
    Ok(())
}

fn rss_kb(pid: u32) -> anyhow::Result<u64> {
    status_kb(pid, "VmRSS:")
}

fn status_kb(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}
