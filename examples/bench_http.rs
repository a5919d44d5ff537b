//! Benchmarks 1, 2 and 5 (BENCHMARKS.md), each a ratio measured in one run:
//!
//!   cargo run --release --example bench_http -- ceiling   # 1: sold-out purchase vs /healthz
//!   cargo run --release --example bench_http -- selling   # 2: selling, durable, vs /healthz
//!   cargo run --release --example bench_http -- latency   # 5: open loop at half of 2's rate
//!   cargo run --release --example bench_http -- regimes   # 2b and 5b: a long sale, selling
//!                                                         # vs sold out, then half its rate
//!   cargo run --release --features kafka --example bench_http -- distributed \
//!       --gate redis://… --bus kafka://… --store postgres://…  # 2c: selling vs the broker
//!
//! The server (embedded: local gate, in-process bus, SQLite in a temporary directory) runs
//! in this process on a runtime of its own; the client is `flashsale load`'s module on
//! another. With two or more CPUs the server's threads are pinned to CPU 0 and the
//! client's to CPU 1, so the two do not steal each other's core (on a 2-core VM, unpinned
//! runs varied by ±40% from one second to the next). The routes are measured in
//! alternating rounds and the medians compared. When `wrk` is on PATH, 1 and 2 are also
//! measured with it (pinned to CPU 1), so the figure does not rest on our client alone.
//!
//! `--gate redis://… --bus kafka://… --store postgres://…` (with `--features kafka`, a
//! worker runs in this process too) measures the distributed deployment instead.

use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use flashsale::config::Config;
use flashsale::load::{self, LoadPlan, LoadReport, Schedule};
use flashsale::server::Server;

// The server's allocator, as `flashsale serve` runs it (glibc's malloc took 13% of the
// server's core while selling).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    /// ceiling, selling, latency or regimes.
    bench: String,
    /// Rounds of each route.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds per round.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Keep-alive connections of the closed loop.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    #[arg(long, default_value = "local")]
    gate: String,
    #[arg(long, default_value = "memory")]
    bus: String,
    /// Default: SQLite in a temporary directory.
    #[arg(long)]
    store: Option<String>,
    /// latency: offer this rate instead of half of the measured selling rate.
    #[arg(long)]
    rate: Option<f64>,
    /// ceiling: keep this many live-event streams (SSE) open on a second sale that sells
    /// `--watched-rate` units a second meanwhile, so every stream gets updates.
    #[arg(long, default_value_t = 0)]
    streams: usize,
    #[arg(long, default_value_t = 20.0)]
    watched_rate: f64,
    /// Let the scheduler place the server's and the client's threads (default: pinned).
    #[arg(long)]
    unpinned: bool,
    /// regimes: orders sold over the long sale's rounds (one buyer each, never seen before).
    #[arg(long, default_value_t = 120_000)]
    orders: u64,
    /// Sales created with this payment window, in seconds (issue #24): no order is paid,
    /// so the sweeper expires them while the benchmark sells, as in a real sale.
    #[arg(long)]
    payment_window: Option<u32>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // RUST_LOG=flashsale::worker=debug: the order writer's line per batch (size, time).
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let pinned = !args.unpinned && std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2;
    let server_rt = runtime(pinned.then_some(0))?;
    let client_rt = runtime(pinned.then_some(1))?;
    let dir = tempfile::tempdir()?;
    let mut config = Config {
        status_interval_s: 0,
        sample_sales: false,
        listen: "127.0.0.1:0".into(),
        gate: args.gate.parse().map_err(anyhow::Error::msg)?,
        bus: args.bus.parse().map_err(anyhow::Error::msg)?,
        store: args
            .store
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("bench.db").display()))
            .parse()
            .map_err(anyhow::Error::msg)?,
        ..Config::default()
    };
    // The rate limits at their defaults: each request from a new buyer, and from one of
    // 65,536 client addresses (a random X-Forwarded-For from both clients, trusted from
    // loopback), so that both limiters count without refusing any.
    config.protection.trusted_proxies = vec!["127.0.0.1".into()];
    // Kafka: topics and a worker group of this run's own (a group shared across runs
    // stalled on tansu).
    config.kafka.topic_prefix = format!("bench-{}.", std::process::id());
    config.kafka.worker_group = format!("bench-{}", std::process::id());
    // `block_on` polls on this thread, and the store's SQLite threads start from the
    // thread that opens them: this one is on the server's CPU while the server starts
    // (before, they were left free to run on the client's CPU), and on the client's after.
    if pinned {
        pin_to(0);
    }
    let server = server_rt.block_on(Server::start(&config))?;
    let _worker = server_rt.block_on(start_worker(&config))?;
    if pinned {
        pin_to(1);
    }
    let base = format!("http://{}", server.addr);
    println!(
        "server: gate {} · bus {} · store {} · {} · client: {} closed-loop connections, {} rounds of {} s",
        config.gate,
        config.bus,
        config.store,
        if pinned {
            "server on CPU 0, client on CPU 1"
        } else {
            "unpinned"
        },
        args.connections,
        args.rounds,
        args.seconds
    );
    let bench = Bench {
        args: &args,
        base: &base,
        client_rt: &client_rt,
        pinned,
    };
    match args.bench.as_str() {
        "ceiling" => bench.ceiling()?,
        "selling" => {
            bench.selling()?;
        }
        "latency" => bench.latency()?,
        "regimes" => bench.regimes()?,
        #[cfg(feature = "kafka")]
        "distributed" => bench.distributed(&config)?,
        other => {
            anyhow::bail!("unknown benchmark {other:?}: ceiling, selling, latency or regimes")
        }
    }
    server_rt.block_on(server.stop());
    Ok(())
}

struct Bench<'a> {
    args: &'a Args,
    base: &'a str,
    client_rt: &'a tokio::runtime::Runtime,
    pinned: bool,
}

impl Bench<'_> {
    /// 1: the purchase route of a sold-out sale against /healthz.
    fn ceiling(&self) -> anyhow::Result<()> {
        let sale = self.create_sale(1)?;
        self.buy_once(&sale)?;
        let _watchers = self.watchers()?;
        self.against_healthz(
            "sold-out purchase",
            || Ok(sale.clone()),
            |run| {
                anyhow::ensure!(
                    run.accepted.is_empty() && run.rejected.keys().all(|k| k == "sold_out"),
                    "the sold-out sale answered something else: {:?}",
                    run.rejected
                );
                Ok(())
            },
        )?;
        Ok(())
    }

    /// `--streams` open event streams on a sale that keeps selling (dropped: all closed).
    fn watchers(&self) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
        if self.args.streams == 0 {
            return Ok(None);
        }
        let watched = self.create_sale(100_000_000)?;
        let url = format!("{}/api/sales/{watched}/events", self.base);
        let (streams, rate) = (self.args.streams, self.args.watched_rate);
        let purchase = self.purchase_url(&watched);
        let opened = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let events = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (opened2, events2) = (opened.clone(), events.clone());
        let task = self.client_rt.spawn(async move {
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap();
            let mut readers = tokio::task::JoinSet::new();
            for _ in 0..streams {
                let (http, url, opened, events) =
                    (http.clone(), url.clone(), opened2.clone(), events2.clone());
                readers.spawn(async move {
                    let Ok(mut response) = http.get(&url).send().await else {
                        return;
                    };
                    opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    while let Ok(Some(chunk)) = response.chunk().await {
                        let n = chunk.windows(6).filter(|w| w == b"event:").count();
                        events.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    }
                });
            }
            // A trickle of sales on the watched sale: its streams get updates all along.
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            for n in 0u64.. {
                tick.tick().await;
                let _ = http
                    .post(&purchase)
                    .header(
                        "X-Forwarded-For",
                        format!("10.9.{}.{}", (n >> 8) & 255, n & 255),
                    )
                    .json(&serde_json::json!({"user_id": format!("watcher-buyer-{n}")}))
                    .send()
                    .await;
            }
            drop(readers);
        });
        let started = std::time::Instant::now();
        while opened.load(std::sync::atomic::Ordering::Relaxed) < streams {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(60),
                "streams did not open"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_secs(2));
        let sold = |bench: &Self| -> anyhow::Result<f64> {
            bench.client_rt.block_on(async {
                let sale: serde_json::Value =
                    reqwest::get(format!("{}/api/sales/{watched}", bench.base))
                        .await?
                        .json()
                        .await?;
                Ok(sale["stock"].as_f64().unwrap_or(0.0)
                    - sale["remaining"].as_f64().unwrap_or(0.0))
            })
        };
        let (before, sold_before) = (
            events.load(std::sync::atomic::Ordering::Relaxed),
            sold(self)?,
        );
        std::thread::sleep(Duration::from_secs(4));
        let per_second = (events.load(std::sync::atomic::Ordering::Relaxed) - before) as f64 / 4.0;
        println!(
            "the watched sale sold {:.1} units/s meanwhile",
            (sold(self)? - sold_before) / 4.0
        );
        println!(
            "{streams} event streams open on a sale selling {rate}/s: {per_second:.0} events/s delivered to them"
        );
        Ok(Some(task))
    }

    /// 2: purchases that sell (a fresh sale per round, stock that cannot run out, every
    /// buyer new), each acknowledged after its group commit, against /healthz.
    fn selling(&self) -> anyhow::Result<f64> {
        self.against_healthz(
            "selling purchase",
            || self.create_sale(100_000_000),
            |run| {
                let refused: u64 = run.rejected.values().sum();
                anyhow::ensure!(
                    refused * 100 <= run.requests,
                    "more than 1% refused while selling: {:?}",
                    run.rejected
                );
                Ok(())
            },
        )
    }

    /// Rounds of /healthz alternating with purchases from `sale_for_round()`, with our
    /// client (each run checked by `check`) and then with wrk; prints both comparisons
    /// and returns our client's median purchase rate.
    fn against_healthz(
        &self,
        name: &str,
        sale_for_round: impl Fn() -> anyhow::Result<String>,
        check: impl Fn(&LoadReport) -> anyhow::Result<()>,
    ) -> anyhow::Result<f64> {
        let (mut healthz, mut purchase) = (Vec::new(), Vec::new());
        for _ in 0..self.args.rounds {
            healthz.push(self.closed(None, Some("/healthz"))?.throughput_rps());
            let run = self.closed(Some(&sale_for_round()?), None)?;
            check(&run)?;
            purchase.push(run.throughput_rps());
        }
        report("flashsale load", "/healthz", &healthz, name, &purchase);
        if let Some(wrk) = self.wrk() {
            let (mut healthz, mut purchase) = (Vec::new(), Vec::new());
            for _ in 0..self.args.rounds {
                healthz.push(wrk.run(&format!("{}/healthz", self.base), None)?);
                let url = self.purchase_url(&sale_for_round()?);
                purchase.push(wrk.run(&url, Some(&wrk.script))?);
            }
            report("wrk", "/healthz", &healthz, name, &purchase);
        }
        Ok(median(&purchase))
    }

    /// 5: the selling rate of 2, then an open loop at half of it: p50/p99/p99.9.
    fn latency(&self) -> anyhow::Result<()> {
        let (rate, max) = match self.args.rate {
            Some(rate) => (rate, 2.0 * rate),
            None => {
                let max = self.selling()?;
                ((max / 2.0).max(1.0), max)
            }
        };
        let sale = self.create_sale(100_000_000)?;
        let seconds = (self.args.seconds * 3.0).max(5.0);
        let run = self.run(LoadPlan {
            schedule: Schedule::Open { rate },
            duration: Some(Duration::from_secs_f64(seconds)),
            ..self.plan(Some(&sale), None)
        })?;
        let q = |x| run.latency_ms(x);
        println!(
            "open loop at {rate:.0} purchases/s (half of {max:.0}) for {seconds} s: {} requests, \
             {:.0}/s answered, {} accepted, refused {:?}",
            run.requests,
            run.throughput_rps(),
            run.accepted.len(),
            run.rejected
        );
        println!(
            "latency from the due time: p50 {:.2} ms · p99 {:.2} ms · p99.9 {:.2} ms · max {:.2} ms",
            q(0.5),
            q(0.99),
            q(0.999),
            run.latency_us.max() as f64 / 1000.0
        );
        // The same rate on a sold-out sale: the HTTP path without the durable commit.
        let sold_out = self.create_sale(1)?;
        self.buy_once(&sold_out)?;
        let reference = self.run(LoadPlan {
            schedule: Schedule::Open { rate },
            duration: Some(Duration::from_secs_f64(seconds)),
            ..self.plan(Some(&sold_out), None)
        })?;
        let q = |x| reference.latency_ms(x);
        println!(
            "same rate, sold-out sale (no commit): p50 {:.2} ms · p99 {:.2} ms · p99.9 {:.2} ms · max {:.2} ms",
            q(0.5),
            q(0.99),
            q(0.999),
            reference.latency_us.max() as f64 / 1000.0
        );
        Ok(())
    }

    /// 2b and 5b: one long sale, as buyers see it while units remain. Rounds of the
    /// sold-out regime (a sold-out sale, `--seconds` each) alternate with rounds of
    /// selling on the long sale (`--orders` / `--rounds` buyers each, every one new, each
    /// acknowledged after the group commit that holds its order), same server, same
    /// client; the sale keeps growing, so the later rounds are its steady state. Then an
    /// open loop at half the selling rate on the same sale, new buyers again.
    fn regimes(&self) -> anyhow::Result<()> {
        let rounds = self.args.rounds.max(1);
        let per_round = self.args.orders.div_ceil(rounds as u64);
        let long_sale = self.create_sale(u32::try_from(self.args.orders * 2)?)?;
        let sold_out = self.create_sale(1)?;
        self.buy_once(&sold_out)?;
        let mut next_buyer = 0;
        let (mut sold_out_rps, mut selling_ops) = (Vec::new(), Vec::new());
        let (mut sold, mut selling_seconds) = (0, 0.0);
        for _ in 0..rounds {
            sold_out_rps.push(self.closed(Some(&sold_out), None)?.throughput_rps());
            let run = self.run(LoadPlan {
                buyers: per_round,
                first_buyer: next_buyer,
                attempts: per_round,
                duration: None,
                ..self.plan(Some(&long_sale), None)
            })?;
            next_buyer += per_round;
            anyhow::ensure!(
                run.rejected.is_empty() && run.accepted.len() as u64 == per_round,
                "every new buyer of the long sale must get a unit: {} of {per_round}, refused {:?}",
                run.accepted.len(),
                run.rejected
            );
            sold += run.accepted.len();
            selling_seconds += run.elapsed.as_secs_f64();
            selling_ops.push(run.accepted.len() as f64 / run.elapsed.as_secs_f64());
        }
        report(
            "flashsale load",
            "sold-out purchase",
            &sold_out_rps,
            "selling order",
            &selling_ops,
        );
        println!(
            "  the long sale: {sold} orders in {selling_seconds:.1} s of selling rounds, \
             {:.0} orders/s over all of them",
            sold as f64 / selling_seconds
        );
        let rate = self
            .args
            .rate
            .unwrap_or(median(&selling_ops) / 2.0)
            .max(1.0);
        let seconds = (self.args.seconds * 3.0).max(6.0);
        let buyers = (rate * seconds * 1.1) as u64 + 1;
        let run = self.run(LoadPlan {
            schedule: Schedule::Open { rate },
            duration: Some(Duration::from_secs_f64(seconds)),
            buyers,
            first_buyer: next_buyer,
            ..self.plan(Some(&long_sale), None)
        })?;
        let q = |x| run.latency_ms(x);
        println!(
            "open loop at {rate:.0} orders/s (half the selling median) on the same sale for \
             {seconds} s: {} accepted, refused {:?}",
            run.accepted.len(),
            run.rejected
        );
        println!(
            "  latency from the due time: p50 {:.2} ms · p99 {:.2} ms · p99.9 {:.2} ms · max {:.2} ms",
            q(0.5),
            q(0.99),
            q(0.999),
            run.latency_us.max() as f64 / 1000.0
        );
        Ok(())
    }

    /// 2c: the distributed deployment selling (`--gate redis://… --bus kafka://…
    /// --store postgres://…`, a worker in this process) against what the broker accepts
    /// from an idempotent `acks=all` producer (rdkafka, the gateways' own settings) with
    /// messages of an order's size, in the same run; the worker's lag sampled meanwhile.
    #[cfg(feature = "kafka")]
    fn distributed(&self, config: &Config) -> anyhow::Result<()> {
        let kafka = config
            .bus_settings()
            .kafka()
            .context("distributed needs --bus kafka://…")?;
        let orders = self.args.orders;
        let ceiling = self
            .client_rt
            .block_on(producer_ceiling(&kafka, orders as usize))?;
        let sale = self.create_sale(u32::try_from(orders * 2)?)?;
        let max_lag = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
        let sampler = {
            let (kafka, max_lag) = (kafka.clone(), max_lag.clone());
            self.client_rt.spawn(async move {
                loop {
                    if let Ok(lag) = kafka.consumer_lag().await {
                        max_lag.fetch_max(lag, std::sync::atomic::Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            })
        };
        let run = self.run(LoadPlan {
            buyers: orders,
            attempts: orders,
            duration: None,
            ..self.plan(Some(&sale), None)
        })?;
        sampler.abort();
        anyhow::ensure!(
            run.rejected.is_empty(),
            "every new buyer must get a unit: refused {:?}",
            run.rejected
        );
        let selling = run.accepted.len() as f64 / run.elapsed.as_secs_f64();
        let drained = std::time::Instant::now();
        self.client_rt.block_on(async {
            while kafka.consumer_lag().await.map_or(true, |lag| lag > 0) {
                anyhow::ensure!(
                    drained.elapsed() < Duration::from_secs(120),
                    "the worker did not drain"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::Ok(())
        })?;
        let q = |x| run.latency_ms(x);
        println!(
            "idempotent acks=all producer, order-sized messages: {ceiling:.0} messages/s\n\
             selling, {} orders from new buyers: {selling:.0} orders/s (p50 {:.1} ms, p99 {:.1} ms)\n\
             ratio selling / producer ceiling: {:.3} (target >= 0.5)\n\
             worker lag: at most {} orders while selling (sampled every 0.5 s), drained {:.1} s after",
            run.accepted.len(),
            q(0.5),
            q(0.99),
            selling / ceiling,
            max_lag.load(std::sync::atomic::Ordering::Relaxed),
            drained.elapsed().as_secs_f64()
        );
        Ok(())
    }

    fn plan(&self, sale: Option<&str>, probe: Option<&str>) -> LoadPlan {
        LoadPlan {
            base_url: self.base.to_string(),
            sale_id: sale.unwrap_or_default().to_string(),
            buyers: 10_000_000,
            attempts: u64::MAX,
            duration: Some(Duration::from_secs_f64(self.args.seconds)),
            schedule: Schedule::Closed {
                connections: self.args.connections,
            },
            retry_ratio: 0.0,
            double_click_ratio: 0.0,
            quantity: 1,
            probe: probe.map(String::from),
            progress: false,
            forwarded_for: true,
            max_in_flight: None,
            first_buyer: 0,
        }
    }

    fn closed(&self, sale: Option<&str>, probe: Option<&str>) -> anyhow::Result<LoadReport> {
        self.run(self.plan(sale, probe))
    }

    fn run(&self, plan: LoadPlan) -> anyhow::Result<LoadReport> {
        Ok(self.client_rt.block_on(load::run(plan))?)
    }

    fn create_sale(&self, stock: u32) -> anyhow::Result<String> {
        self.client_rt.block_on(async {
            let sale: serde_json::Value = reqwest::Client::new()
                .post(format!("{}/api/sales", self.base))
                .json(&serde_json::json!({
                    "name": "bench",
                    "stock": stock,
                    "per_user_limit": 1,
                    "payment_window": self.args.payment_window,
                }))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            Ok(sale["id"].as_str().context("sale id")?.to_string())
        })
    }

    fn buy_once(&self, sale: &str) -> anyhow::Result<()> {
        self.client_rt.block_on(async {
            reqwest::Client::new()
                .post(self.purchase_url(sale))
                .json(&serde_json::json!({"user_id": "first"}))
                .send()
                .await?
                .error_for_status()?;
            Ok(())
        })
    }

    fn purchase_url(&self, sale: &str) -> String {
        format!("{}/api/sales/{sale}/purchase", self.base)
    }

    fn wrk(&self) -> Option<Wrk> {
        if Command::new("wrk").arg("--version").output().is_err() {
            println!("wrk not found on PATH: the independent client's figures are skipped");
            return None;
        }
        let script =
            std::env::temp_dir().join(format!("flashsale-bench-{}.lua", std::process::id()));
        // Random buyers and client addresses, seeded per run so that rounds do not repeat each other's ids.
        std::fs::write(
            &script,
            "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\n\
             math.randomseed(os.time() + math.floor(os.clock() * 1000000))\n\
             request = function()\n  wrk.headers[\"X-Forwarded-For\"] = \"10.\" .. math.random(0, 255) .. \".\" .. \
             math.random(0, 255) .. \".1\"\n  \
             return wrk.format(nil, nil, nil, \
             '{\"user_id\":\"w' .. math.random(1, 2000000000) .. '\"}')\nend\n",
        )
        .ok()?;
        Some(Wrk {
            script: script.display().to_string(),
            pinned: self.pinned,
            seconds: self.args.seconds.ceil() as u64,
            connections: self.args.connections,
        })
    }
}

struct Wrk {
    script: String,
    pinned: bool,
    seconds: u64,
    connections: usize,
}

impl Wrk {
    /// Requests per second wrk reports for one round.
    fn run(&self, url: &str, script: Option<&str>) -> anyhow::Result<f64> {
        let mut command = if self.pinned {
            let mut c = Command::new("taskset");
            c.args(["-c", "1", "wrk"]);
            c
        } else {
            Command::new("wrk")
        };
        command.args([
            "-t1",
            &format!("-c{}", self.connections),
            &format!("-d{}s", self.seconds),
        ]);
        if let Some(script) = script {
            command.args(["-s", script]);
        }
        let out = command.arg(url).output().context("running wrk")?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.strip_prefix("Requests/sec:"))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no Requests/sec in wrk's output:\n{text}"))
    }
}

fn runtime(cpu: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(cpu) = cpu {
        // One core each: one worker thread; threads started from it inherit it.
        builder
            .worker_threads(1)
            .on_thread_start(move || pin_to(cpu));
    }
    builder.build()
}

fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_setaffinity(0) acts on the
    // calling thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn report(client: &str, base_name: &str, base: &[f64], name: &str, measured: &[f64]) {
    let rounds = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let pairwise: Vec<f64> = base.iter().zip(measured).map(|(b, m)| m / b).collect();
    println!("{client}:");
    println!(
        "  {base_name:<18} median {:>9.0} req/s   rounds: {}",
        median(base),
        rounds(base)
    );
    println!(
        "  {name:<18} median {:>9.0} req/s   rounds: {}",
        median(measured),
        rounds(measured)
    );
    println!(
        "  ratio {name} / {base_name}: {:.3} (median of the round pairs: {:.3})",
        median(measured) / median(base),
        median(&pairwise)
    );
}

/// The Kafka bus needs a worker to move orders into the store.
async fn start_worker(config: &Config) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    if config.bus == flashsale::bus::BusUrl::Memory {
        return Ok(None);
    }
    let store = flashsale::store::connect(&config.store).await?;
    let bus = config.bus_settings();
    let (max_batch, linger) = (config.orders.batch_max, config.kafka.worker_linger());
    Ok(Some(tokio::spawn(async move {
        let stop = std::future::pending();
        if let Err(e) = flashsale::worker::consume_bus(&bus, max_batch, linger, store, stop).await {
            eprintln!("worker stopped: {e}");
        }
    })))
}

/// What the broker accepts from an idempotent `acks=all` producer with the gateways'
/// settings: `messages` of an order message's size, 64 in flight (as many as the load's
/// connections), into topics of their own created like the orders topic.
#[cfg(feature = "kafka")]
async fn producer_ceiling(
    kafka: &flashsale::bus::kafka::KafkaSettings,
    messages: usize,
) -> anyhow::Result<f64> {
    use flashsale::bus::kafka::{OrderMessage, Topics, ensure_topics, producer_config};
    use flashsale::domain::{NewSale, Order, PurchaseRequest, validate_purchase};
    use futures_util::StreamExt;
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let mut own = kafka.clone();
    own.topics = Topics::with_prefix(&format!("ceiling-{}.", std::process::id()));
    ensure_topics(&own).await?;
    let sale = NewSale {
        name: "bench".into(),
        stock: Some(100),
        items: None,
        per_user_limit: Some(1),
        starts_at: None,
        ends_at: None,
        payment_window: None,
        rate_limits: None,
        shards: None,
        queue: None,
    }
    .into_sale(uuid::Uuid::now_v7().simple().to_string(), 0)?;
    let purchase = validate_purchase(
        &sale,
        PurchaseRequest {
            user_id: "buyer-1234567".into(),
            quantity: Some(1),
            items: None,
        },
    )?;
    let order = Order::new(
        uuid::Uuid::now_v7().simple().to_string(),
        &sale,
        &purchase,
        None,
        0,
    );
    let payload = OrderMessage::encode(&order);
    let producer: FutureProducer = producer_config(&own.brokers, own.delivery_timeout).create()?;
    let keys: Vec<String> = (0..messages)
        .map(|i| format!("{}buyer-{i}", sale.id))
        .collect();
    let started = std::time::Instant::now();
    let mut in_flight = futures_util::stream::FuturesUnordered::new();
    for key in &keys {
        in_flight.push(
            producer.send(
                FutureRecord::to(&own.topics.orders)
                    .key(key)
                    .payload(&payload),
                Duration::from_secs(30),
            ),
        );
        while in_flight.len() >= 64 {
            if let Some(Err((e, _))) = in_flight.next().await {
                anyhow::bail!("produce failed: {e}");
            }
        }
    }
    while let Some(delivered) = in_flight.next().await {
        if let Err((e, _)) = delivered {
            anyhow::bail!("produce failed: {e}");
        }
    }
    Ok(messages as f64 / started.elapsed().as_secs_f64())
}
