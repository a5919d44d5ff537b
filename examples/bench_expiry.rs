//! Benchmark 10 (issue #24): how fast overdue orders expire, and how late.
//!
//!   cargo run --release --example bench_expiry -- [--orders 100000] [--seconds 10] [--postgres]
//!
//! For the embedded store (SQLite) and, with `--postgres`, a fresh PostgreSQL database on
//! 127.0.0.1:5432, through the engine (local gate, in-process bus, group commit):
//! 1. **throughput**: `--orders` orders placed with a 1 s payment window, left unpaid;
//!    then 5,000 of them ended one by one (a cancel per order: the statements the sweeper
//!    ran per order before the batches) and the rest by sweeps. Prints both rates and
//!    their ratio, measured in this run.
//! 2. **lag while selling**: buyers at full speed for `--seconds` with a 1 s payment
//!    window, the sweeper running as `serve` runs it; each expiry's lag is the time its
//!    event is heard minus the order's `expires_at`. Prints p50/p99/max and the selling
//!    rate beside it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use flashsale::domain::{OrderStatus, now_millis};
use flashsale::engine::{EngineSettings, run_sweeper};
use flashsale::testkit::{Setup, TestEngine, fresh_postgres_database};
use hdrhistogram::Histogram;
use tokio_util::sync::CancellationToken;

/// Buyers in flight at once.
const CONCURRENCY: usize = 64;
/// Orders of the throughput part ended one by one, the old way.
const ONE_BY_ONE: usize = 5_000;
/// The sweeper's period in `serve` (config/default.toml `sweep_interval_ms`).
const SWEEP_EVERY: Duration = Duration::from_millis(250);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let orders = arg("--orders", 100_000) as usize;
    let seconds = arg("--seconds", 10);
    let mut stores = vec![("embedded (SQLite)", None)];
    if args.iter().any(|a| a == "--postgres") {
        stores.push(("PostgreSQL", Some(())));
    }
    for (name, postgres) in stores {
        let url = match postgres {
            Some(()) => Some(fresh_postgres_database().await),
            None => None,
        };
        throughput(name, url, orders).await;
        let url = match postgres {
            Some(()) => Some(fresh_postgres_database().await),
            None => None,
        };
        lag_while_selling(name, url, Duration::from_secs(seconds)).await;
    }
    Ok(())
}

fn setup(stock: u32, store_url: Option<String>) -> Setup {
    Setup {
        stock,
        per_user_limit: 1,
        payment_window: 1,
        bus_capacity: 4096,
        store_url,
        settings: EngineSettings::default(),
        ..Default::default()
    }
}

/// Places `n` orders of new buyers, `CONCURRENCY` at a time; their ids and expiries.
async fn place(fixture: &Arc<TestEngine>, from: usize, n: usize) -> Vec<(String, i64)> {
    let next = Arc::new(AtomicUsize::new(from));
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (fixture, next) = (fixture.clone(), next.clone());
            tokio::spawn(async move {
                let mut placed = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= from + n {
                        return placed;
                    }
                    let order = fixture.buy(&format!("u{i}"), None).await.expect("bought");
                    placed.push((order.id.clone(), order.expires_at.unwrap_or_default()));
                }
            })
        })
        .collect();
    let mut placed = Vec::with_capacity(n);
    for task in tasks {
        placed.extend(task.await.unwrap());
    }
    placed
}

async fn throughput(name: &str, store_url: Option<String>, n: usize) {
    let fixture = Arc::new(TestEngine::with(setup(n as u32, store_url)).await);
    let started = Instant::now();
    let placed = place(&fixture, 0, n).await;
    eprintln!(
        "{name}: {n} orders placed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    let one_by_one = ONE_BY_ONE.min(n / 10);
    let started = Instant::now();
    for (id, _) in &placed[..one_by_one] {
        fixture.engine.cancel(id).await.expect("cancelled");
    }
    let old_rate = one_by_one as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut expired = 0;
    while expired < n - one_by_one {
        expired += fixture.engine.sweep().await.expect("a sweep").expired;
    }
    let batch_rate = expired as f64 / started.elapsed().as_secs_f64();
    let remaining = fixture.remaining().await;
    assert_eq!(remaining, [n as u32], "every unit back on sale");
    println!(
        "{name}: expiry {batch_rate:.0} orders/s in batches ({expired}) · one by one \
         {old_rate:.0}/s ({one_by_one}) · ratio {:.1}",
        batch_rate / old_rate
    );
    drop(placed);
    if let Ok(fixture) = Arc::try_unwrap(fixture) {
        fixture.stop().await;
    }
}

async fn lag_while_selling(name: &str, store_url: Option<String>, selling: Duration) {
    let fixture = Arc::new(TestEngine::with(setup(10_000_000, store_url)).await);
    let stop = CancellationToken::new();
    let sweeper = tokio::spawn(run_sweeper(
        fixture.engine.clone(),
        SWEEP_EVERY,
        stop.clone(),
    ));
    // Expiry times of the orders placed, by id, and the lag of each expiry heard.
    let expiries: Arc<parking_lot::Mutex<std::collections::HashMap<String, i64>>> =
        Default::default();
    let mut events = fixture.engine.subscribe();
    let stop_listening = CancellationToken::new();
    let listening = {
        let (expiries, stop) = (expiries.clone(), stop_listening.clone());
        tokio::spawn(async move {
            let mut lags = Histogram::<u64>::new(3).unwrap();
            let mut missed = 0u64;
            loop {
                let event = tokio::select! {
                    event = events.recv() => event,
                    () = stop.cancelled() => return (lags, missed),
                };
                match event {
                    Ok(event) if event.status == OrderStatus::Expired => {
                        let heard = now_millis();
                        match expiries.lock().get(&event.order_id) {
                            Some(&expires_at) => {
                                lags.record((heard - expires_at).max(0) as u64).unwrap()
                            }
                            None => missed += 1,
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => missed += n,
                    Err(_) => return (lags, missed),
                }
            }
        })
    };
    let selling_done = Arc::new(AtomicBool::new(false));
    let sold = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let buyers: Vec<_> = (0..CONCURRENCY)
        .map(|b| {
            let (fixture, expiries, done, sold) = (
                fixture.clone(),
                expiries.clone(),
                selling_done.clone(),
                sold.clone(),
            );
            tokio::spawn(async move {
                let mut i = 0usize;
                while !done.load(Ordering::Relaxed) {
                    i += 1;
                    let order = fixture
                        .buy(&format!("b{b}-{i}"), None)
                        .await
                        .expect("bought");
                    expiries
                        .lock()
                        .insert(order.id.clone(), order.expires_at.unwrap_or_default());
                    sold.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(selling).await;
    selling_done.store(true, Ordering::Relaxed);
    for buyer in buyers {
        buyer.await.unwrap();
    }
    let sold = sold.load(Ordering::Relaxed);
    let selling_rate = sold as f64 / started.elapsed().as_secs_f64();
    // The last orders expire a window after they were placed; then the sweeper's pass.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    sweeper.await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop_listening.cancel();
    let (lags, missed) = listening.await.unwrap();
    let left = fixture.engine.sweep().await.expect("a sweep").expired;
    if let Ok(fixture) = Arc::try_unwrap(fixture) {
        fixture.stop().await;
    }
    println!(
        "{name}: while selling {selling_rate:.0} orders/s for {} s ({sold} orders), expiry lag \
         after expires_at: p50 {} ms, p99 {} ms, max {} ms ({} expiries heard, {missed} missed, {left} left overdue)",
        selling.as_secs(),
        lags.value_at_quantile(0.5),
        lags.value_at_quantile(0.99),
        lags.max(),
        lags.len(),
    );
}
