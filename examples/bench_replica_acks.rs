//! Benchmark 3b: what waiting for a replica costs (issue #23). Decisions per second and
//! their p99 through the Redis gate behind Sentinel, with `gate_replica_acks` 0 and 1,
//! alternating in the same run on the same deployment (a primary, two replicas and
//! three Sentinels of this run's own, on free ports), so that the ratio compares like
//! with like.
//!
//!   cargo run --release --example bench_replica_acks [-- DECISIONS TASKS ROUNDS]
//!
//! Needs `redis-server` on PATH.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use flashsale::domain::ValidPurchase;
use flashsale::gate::{Decision, RedisGate, RedisTarget, ReplicaAcks, StockGate};
use flashsale::testkit::SentinelDeployment;
use hdrhistogram::Histogram;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let decisions = args.first().copied().unwrap_or(50_000);
    let tasks = args.get(1).copied().unwrap_or(64) as usize;
    let rounds = args.get(2).copied().unwrap_or(2);
    let redis = SentinelDeployment::start().await;
    let target = RedisTarget::parse(&redis.url()).map_err(anyhow::Error::msg)?;
    let waiting = ReplicaAcks {
        replicas: 1,
        timeout: Duration::from_millis(250),
    };
    let mut results: Vec<(&str, Vec<(f64, f64)>)> = vec![("WAIT 0", vec![]), ("WAIT 1", vec![])];
    for _ in 0..rounds {
        for (i, acks) in [ReplicaAcks::NONE, waiting].into_iter().enumerate() {
            let gate = Arc::new(
                RedisGate::connect_to(target.clone(), Duration::from_secs(5), acks).await?,
            );
            results[i].1.push(run(gate, decisions, tasks).await?);
        }
    }
    println!(
        "{decisions} decisions per run, {tasks} concurrent tasks, {rounds} rounds each, alternating"
    );
    for (name, runs) in &results {
        let rates: Vec<String> = runs.iter().map(|(r, _)| format!("{r:.0}")).collect();
        let p99s: Vec<String> = runs.iter().map(|(_, p)| format!("{p:.2}")).collect();
        println!(
            "{name}: decisions/s {} · p99 ms {}",
            rates.join(", "),
            p99s.join(", ")
        );
    }
    let mean = |runs: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| {
        runs.iter().map(f).sum::<f64>() / runs.len() as f64
    };
    println!(
        "ratio WAIT 1 / WAIT 0: decisions/s {:.2}, p99 {:.2}",
        mean(&results[1].1, |r| r.0) / mean(&results[0].1, |r| r.0),
        mean(&results[1].1, |r| r.1) / mean(&results[0].1, |r| r.1)
    );
    Ok(())
}

/// `decisions` reservations on a fresh sale that cannot sell out; returns decisions/s
/// and the p99 of one decision in ms.
async fn run(gate: Arc<RedisGate>, decisions: u64, tasks: usize) -> anyhow::Result<(f64, f64)> {
    let sale = Arc::new(
        flashsale::testkit::sale()
            .id(format!("bench-{}", uuid::Uuid::new_v4().simple()))
            .name("bench")
            .stock(100_000_000)
            .build(),
    );
    gate.open_sale(&sale).await?;
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (gate, sale, next) = (gate.clone(), sale.clone(), next.clone());
        handles.push(tokio::spawn(async move {
            let mut latencies = Histogram::<u64>::new(3).expect("histogram");
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= decisions {
                    return latencies;
                }
                let purchase = ValidPurchase {
                    user_id: format!("u{n}"),
                    units: vec![(0, 1)],
                    fingerprint: "default:1".into(),
                };
                let asked = Instant::now();
                let decision = gate
                    .reserve(&sale, &purchase, None, &format!("o{n}"), 1)
                    .await
                    .expect("redis");
                assert!(
                    matches!(decision, Decision::Reserved { .. }),
                    "{decision:?}"
                );
                latencies
                    .record(asked.elapsed().as_micros() as u64)
                    .expect("in range");
            }
        }));
    }
    let mut latencies = Histogram::<u64>::new(3)?;
    for handle in handles {
        latencies.add(handle.await?)?;
    }
    let rate = decisions as f64 / started.elapsed().as_secs_f64();
    Ok((rate, latencies.value_at_quantile(0.99) as f64 / 1000.0))
}
