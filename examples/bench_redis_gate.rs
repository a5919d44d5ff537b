//! Benchmark 3: purchases decided per second through the Redis gate, against
//! `redis-benchmark` running the same Lua script on the same Redis, in the same run.
//!
//!   cargo run --release --example bench_redis_gate [-- REQUESTS CONNECTIONS]
//!
//! Needs Redis on 127.0.0.1:6379 (FLASHSALE_TEST_REDIS) and `redis-benchmark` on PATH.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use flashsale::domain::ValidPurchase;
use flashsale::gate::{Decision, RedisGate, StockGate};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let requests = args.first().copied().unwrap_or(200_000);
    let connections = args.get(1).copied().unwrap_or(50) as usize;
    let url =
        std::env::var("FLASHSALE_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let gate = Arc::new(RedisGate::connect(&url, Duration::from_secs(5)).await?);

    // A sale that cannot sell out during the run: every purchase runs the whole script.
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
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (gate, sale, next) = (gate.clone(), sale.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut reserved = 0u64;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= requests {
                    return reserved;
                }
                let purchase = ValidPurchase {
                    user_id: format!("u{n}"),
                    units: vec![(0, 1)],
                    fingerprint: "default:1".into(),
                };
                let decision = gate
                    .reserve(&sale, &purchase, None, "o", 1)
                    .await
                    .expect("redis");
                reserved += matches!(decision, Decision::Reserved { .. }) as u64;
            }
        }));
    }
    let mut reserved = 0;
    for task in tasks {
        reserved += task.await?;
    }
    let ours = requests as f64 / started.elapsed().as_secs_f64();
    assert_eq!(
        reserved, requests,
        "every purchase must have been decided as a sale"
    );

    // The same script, the same keys, through redis-benchmark (random buyers).
    let sha = redis_script_sha();
    let keys = |name: &str| format!("{{sale:{}}}:{name}", sale.id);
    let (meta, stock, buyers) = (keys("meta"), keys("stock"), keys("buyers"));
    let (holds, hold_details) = (keys("holds"), keys("hold-details"));
    let host_port = url.trim_start_matches("redis://").trim_end_matches('/');
    let (host, port) = host_port.split_once(':').unwrap_or((host_port, "6379"));
    let benchmark = |pipeline: &str| -> anyhow::Result<f64> {
        let output = Command::new("redis-benchmark")
            .args(["-h", host, "-p", port, "-q", "-c", &connections.to_string()])
            .args([
                "-n",
                &requests.to_string(),
                "-r",
                "100000000",
                "-P",
                pipeline,
            ])
            // reserve.lua's 7 keys, as the gate passes them for a purchase without an
            // idempotency key (the meta key in the key's and the live keys' places).
            .args(["EVALSHA", &sha, "7", &meta, &stock, &buyers, &meta])
            .args([&holds, &hold_details, &meta])
            // keep until, user, fingerprint, order id, has key, key TTL, most live keys,
            // then item 0 × 1 unit.
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
        parse_rps(&text)
            .ok_or_else(|| anyhow::anyhow!("cannot read redis-benchmark's output: {text}"))
    };
    let theirs = benchmark("1")?;
    let theirs_pipelined = benchmark("16")?;
    println!("redis gate: {ours:.0} purchases/s ({requests} purchases, {connections} tasks)");
    println!(
        "redis-benchmark, same script: {theirs:.0} calls/s ({connections} connections, no pipelining)"
    );
    println!("redis-benchmark, same script, -P 16: {theirs_pipelined:.0} calls/s");
    println!(
        "ratio vs redis-benchmark (target >= 0.7): {:.2}",
        ours / theirs
    );
    println!(
        "ratio vs redis-benchmark -P 16: {:.2}",
        ours / theirs_pipelined
    );
    Ok(())
}

fn parse_rps(text: &str) -> Option<f64> {
    // "EVALSHA ...: 51234.56 requests per second, p50=0.5 msec"
    let before = text.split("requests per second").next()?;
    before
        .rsplit([' ', ':'])
        .find_map(|w| w.trim().parse().ok())
}

fn redis_script_sha() -> String {
    redis::Script::new(include_str!("../src/gate/lua/reserve.lua"))
        .get_hash()
        .to_string()
}
