//! `flashsale`: parses the command line and wires the library's parts.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use flashsale::config::{Config, Overrides};
use flashsale::demo::{self, DemoOptions};
use flashsale::server::Server;

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
    /// Run a flash sale against an embedded engine over real HTTP and report.
    Demo(DemoArgs),
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
    /// Share of buyers that retry with the same Idempotency-Key.
    #[arg(long, default_value_t = 0.1)]
    retry_ratio: f64,
    /// Share of buyers that double-click (two requests at once, same key).
    #[arg(long, default_value_t = 0.05)]
    double_click_ratio: f64,
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
            Command::Demo(args) => run_demo(args).await,
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

#[cfg(feature = "kafka")]
async fn worker(config_file: &std::path::Path, args: BackendArgs) -> anyhow::Result<()> {
    use flashsale::worker::kafka::{self, KafkaWorkerConfig};
    let config = Config::load(config_file, &args.overrides()).context("reading settings")?;
    let brokers = flashsale::bus::kafka_brokers(&config.bus)
        .context("the worker consumes a Kafka bus: give --bus kafka://host:port")?;
    let store = flashsale::store::connect(&config.store)
        .await
        .context("opening the store")?;
    let worker_config = KafkaWorkerConfig {
        brokers: brokers.to_string(),
        topics: flashsale::bus::Topics::with_prefix(&config.topic_prefix),
        group: config.worker_group.clone(),
        partitions: config.kafka_partitions,
        max_batch: config.batch_max,
        linger: std::time::Duration::from_millis(config.worker_linger_ms),
    };
    println!("flashsale worker consuming {brokers} into {}", config.store);
    kafka::run(worker_config, store, shutdown_signal()).await?;
    Ok(())
}

#[cfg(not(feature = "kafka"))]
async fn worker(_: &std::path::Path, _: BackendArgs) -> anyhow::Result<()> {
    anyhow::bail!(
        "this build has no Kafka support: build with `cargo build --release --features kafka`"
    )
}

async fn run_demo(args: DemoArgs) -> anyhow::Result<()> {
    let report = demo::run(DemoOptions {
        stock: args.stock,
        buyers: args.buyers,
        connections: args.connections,
        per_user_limit: args.per_user_limit,
        retry_ratio: args.retry_ratio,
        double_click_ratio: args.double_click_ratio,
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
