//! `flashsale`: parses the command line and wires the library's parts.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use flashsale::config::{Config, Overrides};
use flashsale::demo::{self, DemoOptions};
use flashsale::server::Server;

// glibc's malloc showed up at ~7% of a sold-out purchase's CPU (BENCHMARKS.md, bench 1).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "flashsale",
    version,
    about = "A flash-sale engine that sells every unit exactly once"
)]
struct Cli {
    /// Settings file (defaults < file < FLASHSALE_* env < flags).
    #[arg(long, global = true, default_value = "flashsale.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (with the in-process bus it also runs the order writer).
    Serve(ServeArgs),
    /// Move orders from the Kafka bus into the store (distributed mode).
    Worker(BackendArgs),
    /// Apply the store's migrations and exit.
    Migrate(BackendArgs),
    /// Reconcile gate, bus and store; print every violation; exit 1 if there is one.
    Check(CheckArgs),
    /// Dead-lettered orders (Kafka bus): list them, or replay them into the store.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Run a flash sale against an embedded engine over real HTTP and report.
    Demo(DemoArgs),
    /// Load generator against a running gateway (closed or open loop).
    Load(LoadArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0: any free port).
    #[arg(long)]
    listen: Option<String>,
    /// Token required by admin routes (Authorization: Bearer TOKEN).
    #[arg(long)]
    admin_token: Option<String>,
    #[command(flatten)]
    backends: BackendArgs,
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Show the letters not replayed yet, with their reason.
    List {
        #[command(flatten)]
        backends: BackendArgs,
        /// Also the letters replayed before.
        #[arg(long)]
        all: bool,
    },
    /// Drive the letters through the store again; failures go back with their reason.
    Replay {
        #[command(flatten)]
        backends: BackendArgs,
    },
}

#[derive(Args)]
struct CheckArgs {
    #[command(flatten)]
    backends: BackendArgs,
    /// Only this sale (default: every sale).
    #[arg(long)]
    sale: Option<String>,
    /// A running gateway, to read an in-process (local) gate through its API.
    #[arg(long)]
    url: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BackendArgs {
    /// Stock gate: local, or redis://host:port[/db].
    #[arg(long)]
    gate: Option<String>,
    /// Order bus: memory, or kafka://host:port[,host:port] (build with --features kafka).
    #[arg(long)]
    bus: Option<String>,
    /// Order store: sqlite://PATH, or postgres://user@host/db.
    #[arg(long)]
    store: Option<String>,
}

impl BackendArgs {
    fn overrides(self) -> Overrides {
        Overrides {
            gate: self.gate,
            bus: self.bus,
            store: self.store,
            ..Overrides::default()
        }
    }
}

/// How the simulated buyers behave, shared by `demo` and `load`.
#[derive(Args)]
struct BuyerMix {
    /// Share of buyers that retry with the same Idempotency-Key.
    #[arg(long, default_value_t = 0.1)]
    retry_ratio: f64,
    /// Share of buyers that double-click (two requests at once, same key).
    #[arg(long, default_value_t = 0.05)]
    double_click_ratio: f64,
}

#[derive(Args)]
struct LoadArgs {
    /// The gateway, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    url: String,
    /// The sale to buy from.
    #[arg(long, required_unless_present = "probe", default_value = "")]
    sale: String,
    /// Distinct buyers (ids shuffled; they come back when attempts exceed them).
    #[arg(long, default_value_t = 10_000)]
    buyers: u64,
    /// Buyer attempts in all (default: one per buyer, or unbounded with --duration).
    #[arg(long)]
    requests: Option<u64>,
    /// Stop offering attempts after this long, e.g. 30s, 2m, 500ms.
    #[arg(long, value_parser = flashsale::load::parse_duration)]
    duration: Option<std::time::Duration>,
    /// Units per purchase on a single-item sale (sales with several items get one unit
    /// each of a random set of items).
    #[arg(long, default_value_t = 1)]
    quantity: u32,
    /// GET this path instead of purchasing (e.g. /healthz): the HTTP ceiling, measured
    /// with the same client and connections.
    #[arg(long, value_name = "PATH")]
    probe: Option<String>,
    /// Also write the report as one self-contained HTML page (charts inline, no CDN).
    #[arg(long, value_name = "FILE.html")]
    report: Option<PathBuf>,
    /// Closed loop: concurrent keep-alive connections.
    #[arg(long, default_value_t = 64, conflicts_with = "rate")]
    connections: usize,
    /// Open loop: attempts per second, latency counted from when each was due.
    #[arg(long)]
    rate: Option<f64>,
    #[command(flatten)]
    mix: BuyerMix,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct DemoArgs {
    /// Units on sale.
    #[arg(long, default_value_t = 100)]
    stock: u32,
    /// Distinct simulated buyers.
    #[arg(long, default_value_t = 10_000)]
    buyers: u64,
    /// Concurrent HTTP connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Units each buyer may buy.
    #[arg(long, default_value_t = 1)]
    per_user_limit: u32,
    #[command(flatten)]
    mix: BuyerMix,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "flashsale=info,warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(&cli.config, args).await,
            Command::Worker(args) => worker(&cli.config, args).await,
            Command::Migrate(args) => migrate(&cli.config, args).await,
            Command::Check(args) => check(&cli.config, args).await,
            Command::Dlq(command) => dlq(&cli.config, command).await,
            Command::Demo(args) => run_demo(args).await,
            Command::Load(args) => run_load(args).await,
        }
    })
}

async fn serve(config_file: &std::path::Path, args: ServeArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        listen: args.listen,
        admin_token: args.admin_token,
        ..args.backends.overrides()
    };
    let config = Config::load(config_file, &overrides).context("reading settings")?;
    let server = Server::start(&config)
        .await
        .context("starting the server")?;
    // Tests and scripts read the address from this line (the port may have been 0).
    println!("flashsale listening on http://{}", server.addr);
    tracing::info!(gate = %config.gate, bus = %config.bus, store = %config.store, "serving");
    shutdown_signal().await;
    tracing::info!("shutting down: finishing requests in flight and draining the writer");
    server.stop().await;
    Ok(())
}

async fn migrate(config_file: &std::path::Path, args: BackendArgs) -> anyhow::Result<()> {
    let config = Config::load(config_file, &args.overrides()).context("reading settings")?;
    flashsale::store::connect(&config.store)
        .await
        .context("migrating the store")?;
    println!("migrations applied to {}", config.store);
    Ok(())
}

async fn check(config_file: &std::path::Path, args: CheckArgs) -> anyhow::Result<()> {
    use flashsale::check::{self, Report};
    let config =
        Config::load(config_file, &args.backends.overrides()).context("reading settings")?;
    let store = flashsale::store::connect(&config.store)
        .await
        .context("opening the store")?;
    let sales = match &args.sale {
        Some(id) => vec![
            store
                .get_sale(id)
                .await?
                .with_context(|| format!("no sale {id}"))?,
        ],
        None => store.list_sales().await?,
    };
    let mut report = Report {
        bus_lag: bus_lag(&config).await?,
        ..Report::default()
    };
    if report.bus_lag.is_none() {
        report
            .notes
            .push("in-process bus: assumed drained (it drains within milliseconds)".into());
    }
    let quiescent = report.bus_lag.unwrap_or(0) == 0;
    let gate = match (&args.url, config.gate.as_str()) {
        (None, "local") => None,
        (None, url) => Some(
            flashsale::gate::connect(url, std::time::Duration::from_secs(5))
                .await
                .context("opening the gate")?,
        ),
        (Some(_), _) => None,
    };
    for sale in &sales {
        let view = match (&args.url, &gate) {
            (Some(url), _) => check::gate_over_http(url, sale).await,
            (None, Some(gate)) => gate.remaining(sale).await.map_err(|e| e.to_string()),
            (None, None) => Err("in-process gate: give --url of the running gateway".into()),
        };
        check::check_sale(store.as_ref(), sale, view, quiescent, &mut report).await?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for v in &report.violations {
            println!(
                "VIOLATION {} sale {}: {} orders: [{}]",
                v.invariant,
                v.sale_id,
                v.detail,
                v.orders.join(", ")
            );
        }
        for note in &report.notes {
            println!("note: {note}");
        }
        let lag = report
            .bus_lag
            .map(|l| l.to_string())
            .unwrap_or_else(|| "n/a".into());
        println!(
            "checked {} sales, {} orders, bus lag {lag}: {}",
            report.sales,
            report.orders,
            if report.ok() {
                "OK"
            } else {
                "VIOLATIONS FOUND"
            }
        );
    }
    if !report.ok() {
        std::process::exit(1);
    }
    Ok(())
}

#[cfg(feature = "kafka")]
async fn dlq(config_file: &std::path::Path, command: DlqCommand) -> anyhow::Result<()> {
    use flashsale::worker::dlq;
    let (backends, all, replay) = match command {
        DlqCommand::List { backends, all } => (backends, all, false),
        DlqCommand::Replay { backends } => (backends, false, true),
    };
    let config = Config::load(config_file, &backends.overrides()).context("reading settings")?;
    let brokers = flashsale::bus::kafka_brokers(&config.bus)
        .context("dead letters live on the Kafka bus: give --bus kafka://host:port")?;
    let topics = flashsale::bus::Topics::with_prefix(&config.topic_prefix);
    if !replay {
        let letters = dlq::list(brokers, &topics, &config.worker_group, all).await?;
        for l in &letters {
            let order = flashsale::bus::OrderMessage::decode(l.letter.payload.as_bytes())
                .map(|o| o.id)
                .unwrap_or_else(|_| "(undecodable)".into());
            println!(
                "{}:{} order {order}: {}",
                l.partition, l.offset, l.letter.reason
            );
        }
        println!("{} dead letters", letters.len());
        return Ok(());
    }
    let store = flashsale::store::connect(&config.store)
        .await
        .context("opening the store")?;
    let report = dlq::replay(brokers, &topics, &config.worker_group, store.as_ref()).await?;
    for id in &report.stored {
        println!("stored {id}");
    }
    for (what, reason) in &report.failed {
        println!("failed again {what}: {reason}");
    }
    println!(
        "replayed: {} stored, {} failed again",
        report.stored.len(),
        report.failed.len()
    );
    Ok(())
}

#[cfg(not(feature = "kafka"))]
async fn dlq(_: &std::path::Path, _: DlqCommand) -> anyhow::Result<()> {
    anyhow::bail!(
        "dead letters live on the Kafka bus; this build has no Kafka support: \
         build with `cargo build --release --features kafka`"
    )
}

#[cfg(feature = "kafka")]
async fn bus_lag(config: &Config) -> anyhow::Result<Option<i64>> {
    let Some(brokers) = flashsale::bus::kafka_brokers(&config.bus) else {
        return Ok(None);
    };
    let topic = flashsale::bus::Topics::with_prefix(&config.topic_prefix).orders;
    let (brokers, group) = (brokers.to_string(), config.worker_group.clone());
    let lag = tokio::task::spawn_blocking(move || {
        flashsale::bus::kafka::consumer_lag(&brokers, &group, &topic)
    })
    .await??;
    Ok(Some(lag))
}

#[cfg(not(feature = "kafka"))]
async fn bus_lag(config: &Config) -> anyhow::Result<Option<i64>> {
    if flashsale::bus::kafka_brokers(&config.bus).is_some() {
        anyhow::bail!(
            "this build has no Kafka support: build with `cargo build --release --features kafka`"
        );
    }
    Ok(None)
}

#[cfg(feature = "kafka")]
async fn worker(config_file: &std::path::Path, args: BackendArgs) -> anyhow::Result<()> {
    use flashsale::worker::kafka::{self, KafkaWorkerConfig};
    let config = Config::load(config_file, &args.overrides()).context("reading settings")?;
    let worker_config = KafkaWorkerConfig::from_config(&config)
        .context("the worker consumes a Kafka bus: give --bus kafka://host:port")?;
    let store = flashsale::store::connect(&config.store)
        .await
        .context("opening the store")?;
    println!(
        "flashsale worker consuming {} into {}",
        worker_config.brokers, config.store
    );
    kafka::run(worker_config, store, shutdown_signal()).await?;
    Ok(())
}

#[cfg(not(feature = "kafka"))]
async fn worker(_: &std::path::Path, _: BackendArgs) -> anyhow::Result<()> {
    anyhow::bail!(
        "this build has no Kafka support: build with `cargo build --release --features kafka`"
    )
}

async fn run_load(args: LoadArgs) -> anyhow::Result<()> {
    use flashsale::load::{self, LoadPlan, Schedule, Summary};
    let attempts = match (args.requests, args.duration) {
        (Some(n), _) => n,
        (None, Some(_)) => u64::MAX,
        (None, None) => args.buyers,
    };
    let plan = LoadPlan {
        base_url: args.url.clone(),
        sale_id: args.sale.clone(),
        buyers: args.buyers,
        attempts,
        duration: args.duration,
        schedule: match args.rate {
            Some(rate) => Schedule::Open { rate },
            None => Schedule::Closed {
                connections: args.connections,
            },
        },
        retry_ratio: args.mix.retry_ratio,
        double_click_ratio: args.mix.double_click_ratio,
        quantity: args.quantity,
        probe: args.probe.clone(),
        progress: !args.json,
    };
    let report = load::run(plan.clone()).await?;
    let summary = Summary::new(&plan, &report);
    if let Some(path) = &args.report {
        load::write_html(path, &plan, &report, &summary)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        let l = &summary.latency_ms;
        println!(
            "{} requests in {:.2} s: {:.0} req/s{}",
            summary.requests,
            summary.elapsed_s,
            summary.throughput_rps,
            summary
                .offered_rps
                .map(|r| format!(" (offered {r:.0} attempts/s)"))
                .unwrap_or_default()
        );
        println!(
            "accepted {} orders ({} units of {} in stock)",
            summary.accepted, summary.acknowledged, summary.audit.stock
        );
        println!("rejected {:?}", summary.rejected);
        println!("by status {:?}", summary.by_status);
        println!(
            "latency p50 {:.2} ms · p90 {:.2} · p99 {:.2} · p99.9 {:.2} · max {:.2}",
            l.p50, l.p90, l.p99, l.p999, l.max
        );
        println!("per second {:?}", summary.per_second);
        println!(
            "audit: oversold {} · buyers over the limit {} · replay mismatches {} → {}",
            summary.audit.oversold,
            summary.audit.buyers_over_limit,
            summary.audit.replay_mismatches,
            if summary.audit.ok { "OK" } else { "BROKEN" }
        );
        if let Some(path) = &args.report {
            println!("report written to {}", path.display());
        }
    }
    if !summary.audit.ok {
        anyhow::bail!("the answers break an invariant");
    }
    Ok(())
}

async fn run_demo(args: DemoArgs) -> anyhow::Result<()> {
    let report = demo::run(DemoOptions {
        stock: args.stock,
        buyers: args.buyers,
        connections: args.connections,
        per_user_limit: args.per_user_limit,
        retry_ratio: args.mix.retry_ratio,
        double_click_ratio: args.mix.double_click_ratio,
    })
    .await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", report.render());
    }
    if !report.ok() {
        anyhow::bail!("an invariant is broken");
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
