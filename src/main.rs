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
    /// Serve the HTTP API (embedded mode also runs the order writer).
    Serve(ServeArgs),
    /// Run a flash sale against an embedded engine over real HTTP and report.
    Demo(DemoArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0: any free port).
    #[arg(long)]
    listen: Option<String>,
    /// Stock gate: local, or redis://host:port[/db].
    #[arg(long)]
    gate: Option<String>,
    /// Order bus: memory.
    #[arg(long)]
    bus: Option<String>,
    /// Order store: sqlite://PATH, or postgres://user@host/db.
    #[arg(long)]
    store: Option<String>,
    /// Token required by admin routes (Authorization: Bearer TOKEN).
    #[arg(long)]
    admin_token: Option<String>,
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
            Command::Demo(args) => run_demo(args).await,
        }
    })
}

async fn serve(config_file: &std::path::Path, args: ServeArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        listen: args.listen,
        gate: args.gate,
        bus: args.bus,
        store: args.store,
        admin_token: args.admin_token,
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
