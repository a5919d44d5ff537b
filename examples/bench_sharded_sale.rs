//! Benchmark 3c: one hot sale over shards (issue #23). On a Redis Cluster of three
//! masters (one replica each) of this run's own, on free ports:
//!
//! 1. decisions per second of one sale with `shards` 1 and 3, alternating in the same
//!    run, through the gate (no replica waited for: what sharding changes is the work
//!    per master; `WAIT`'s cost is benchmark 3b);
//! 2. `redis-benchmark` running the same reserve script on the sale's one master;
//! 3. the sell-out check: 20 sales of 300 units over 3 shards, 300 buyers at once then
//!    50 more: stock sold = stock, none oversold, none undersold (no buyer of the first
//!    300 told `sold_out`).
//!
//!   cargo run --release --example bench_sharded_sale [-- DECISIONS TASKS ROUNDS]
//!
//! Needs `redis-server`, `redis-cli` and `redis-benchmark` on PATH.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use flashsale::domain::{Refusal, Sale, ValidPurchase};
use flashsale::gate::{Decision, RedisGate, RedisTarget, ReplicaAcks, StockGate};
use flashsale::testkit::ClusterDeployment;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let decisions = args.first().copied().unwrap_or(30_000);
    let tasks = args.get(1).copied().unwrap_or(64) as usize;
    let rounds = args.get(2).copied().unwrap_or(2);
    let cluster = ClusterDeployment::start().await;
    let target = RedisTarget::parse(&cluster.url()).map_err(anyhow::Error::msg)?;
    let gate =
        Arc::new(RedisGate::connect_to(target, Duration::from_secs(5), ReplicaAcks::NONE).await?);

    let mut rates: Vec<(u32, Vec<f64>)> = vec![(1, vec![]), (3, vec![])];
    let mut one_shard_sale = None;
    for _ in 0..rounds {
        for (shards, runs) in &mut rates {
            let sale = Arc::new(
                flashsale::testkit::sale()
                    .id(format!("bench-{}", uuid::Uuid::new_v4().simple()))
                    .name("bench")
                    .stock(99_000_000)
                    .shards(*shards)
                    .build(),
            );
            gate.open_sale(&sale).await?;
            runs.push(decide(&gate, &sale, decisions, tasks).await?);
            if *shards == 1 {
                one_shard_sale = Some(sale);
            }
        }
    }
    println!("{decisions} decisions per run, {tasks} tasks, {rounds} rounds each, alternating");
    for (shards, runs) in &rates {
        let shown: Vec<String> = runs.iter().map(|r| format!("{r:.0}")).collect();
        println!("shards {shards}: decisions/s {}", shown.join(", "));
    }
    let mean = |runs: &[f64]| runs.iter().sum::<f64>() / runs.len() as f64;
    println!(
        "ratio shards 3 / shards 1: {:.2}",
        mean(&rates[1].1) / mean(&rates[0].1)
    );

    let sale = one_shard_sale.expect("a run of one shard");
    let master = cluster
        .master_of(&format!("{{sale:{}}}:meta", sale.id))
        .await
        .expect("the sale's master");
    let theirs = redis_benchmark(master, &sale.id, decisions, tasks)?;
    println!("redis-benchmark, same script, on the sale's master: {theirs:.0} calls/s");
    println!(
        "ratio shards 1 / redis-benchmark: {:.2} · shards 3 / redis-benchmark: {:.2}",
        mean(&rates[0].1) / theirs,
        mean(&rates[1].1) / theirs
    );

    let (mut exact, mut oversold, mut undersold) = (0, 0, 0);
    for _ in 0..20 {
        match sell_out(&gate).await? {
            SellOut::Exact => exact += 1,
            SellOut::Oversold => oversold += 1,
            SellOut::Undersold => undersold += 1,
        }
    }
    println!(
        "sell-out over 20 sales of 300 units, 3 shards: {exact} exact, {oversold} oversold, \
         {undersold} undersold"
    );
    Ok(())
}

/// `decisions` reservations by distinct buyers from `tasks` tasks; decisions/s.
async fn decide(
    gate: &Arc<RedisGate>,
    sale: &Arc<Sale>,
    decisions: u64,
    tasks: usize,
) -> anyhow::Result<f64> {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (gate, sale, next) = (gate.clone(), sale.clone(), next.clone());
        handles.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= decisions {
                    return;
                }
                let decision = gate
                    .reserve(&sale, &buyer(n), None, &format!("o{n}"), 1)
                    .await
                    .expect("redis");
                assert!(
                    matches!(decision, Decision::Reserved { .. }),
                    "{decision:?}"
                );
            }
        }));
    }
    for handle in handles {
        handle.await?;
    }
    Ok(decisions as f64 / started.elapsed().as_secs_f64())
}

fn buyer(n: u64) -> ValidPurchase {
    ValidPurchase {
        user_id: format!("u{n}"),
        units: vec![(0, 1)],
        fingerprint: "default:1".into(),
    }
}

enum SellOut {
    Exact,
    Oversold,
    Undersold,
}

/// 300 units over 3 shards, 300 buyers at once, then 50 more.
async fn sell_out(gate: &Arc<RedisGate>) -> anyhow::Result<SellOut> {
    let sale = Arc::new(
        flashsale::testkit::sale()
            .id(format!("sellout-{}", uuid::Uuid::new_v4().simple()))
            .stock(300)
            .shards(3)
            .build(),
    );
    gate.open_sale(&sale).await?;
    let crowd = |range: std::ops::Range<u64>| {
        let handles: Vec<_> = range
            .map(|n| {
                let (gate, sale) = (gate.clone(), sale.clone());
                tokio::spawn(async move {
                    gate.reserve(&sale, &buyer(n), None, &format!("o{n}"), 1)
                        .await
                        .expect("redis")
                })
            })
            .collect();
        async move {
            let mut answers = Vec::new();
            for handle in handles {
                answers.push(handle.await.expect("a buyer"));
            }
            answers
        }
    };
    let first = crowd(0..300).await;
    let late = crowd(300..350).await;
    let sold = first
        .iter()
        .chain(&late)
        .filter(|d| matches!(d, Decision::Reserved { .. }))
        .count();
    let refused_early = first
        .iter()
        .filter(|d| **d == Decision::Refused(Refusal::SoldOut))
        .count();
    Ok(if sold > 300 {
        SellOut::Oversold
    } else if sold < 300 || refused_early > 0 || gate.remaining(&sale).await? != vec![0] {
        SellOut::Undersold
    } else {
        SellOut::Exact
    })
}

/// `redis-benchmark` sending the gate's reserve call (7 keys, 9 arguments, a random
/// buyer and order id) to the master on `port`; calls/s.
fn redis_benchmark(
    port: u16,
    sale_id: &str,
    requests: u64,
    connections: usize,
) -> anyhow::Result<f64> {
    let sha = redis::Script::new(include_str!("../src/gate/lua/reserve.lua"))
        .get_hash()
        .to_string();
    let key = |name: &str| format!("{{sale:{sale_id}}}:{name}");
    let output = Command::new("redis-benchmark")
        .args([
            "-p",
            &port.to_string(),
            "-q",
            "-c",
            &connections.to_string(),
        ])
        .args(["-n", &requests.to_string(), "-r", "100000000"])
        .args([
            "EVALSHA",
            &sha,
            "7",
            &key("meta"),
            &key("stock"),
            &key("buyers"),
        ])
        .args([
            &key("meta"),
            &key("holds"),
            &key("hold-details"),
            &key("meta"),
        ])
        .args([
            "0",
            "rb:__rand_int__",
            "f",
            "o:__rand_int__",
            "0",
            "86400000",
            "16",
            "0",
            "1",
        ])
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let before = text
        .split("requests per second")
        .next()
        .ok_or_else(|| anyhow::anyhow!("cannot read redis-benchmark's output: {text}"))?;
    before
        .rsplit([' ', ':'])
        .find_map(|w| w.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("cannot read redis-benchmark's output: {text}"))
}
