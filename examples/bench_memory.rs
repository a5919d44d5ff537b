//! Benchmark 7: memory. Bytes per buyer held by the local gate, counted by a global
//! allocator that tallies live bytes; then the RSS of a real `flashsale serve` after
//! 1,000,000 distinct buyers have bought from it over HTTP.
//!
//!   cargo build --release && cargo run --release --example bench_memory [-- BUYERS]

use std::alloc::{GlobalAlloc, Layout, System};

#[path = "support/serve.rs"]
mod serve;
use serve::Serve;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

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
        queue: None,
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
    let server = Serve::start().await?;
    let base = server.base.clone();
    let client = reqwest::Client::new();
    let rss_idle = server.rss_kb()?;
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
    let rss = server.rss_kb()?;
    let peak = server.status_kb("VmHWM:")?;
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
    server.stop()
}
