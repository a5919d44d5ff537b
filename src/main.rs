//! `flashsale`: parses the command line and hands it to the command's module.

mod commands;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flashsale::observe::logs::LogFormat;

// glibc's malloc showed up at ~7% of a sold-out purchase's CPU (BENCHMARKS.md, bench 1).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "flashsale",
    version,
    about = "A flash-sale engine that sells every unit exactly once",
    // A flag given twice takes its last value (scripts append their overrides).
    args_override_self = true
)]
struct Cli {
    /// Settings file (defaults < file < FLASHSALE_* env < flags). The defaults, each
    /// commented, are config/default.toml in the sources.
    #[arg(long, global = true, default_value = "flashsale.toml")]
    config: PathBuf,
    /// Log lines for people (`human`) or as JSON objects (`json`), on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// Export traces to this OpenTelemetry collector (OTLP over HTTP, e.g.
    /// http://127.0.0.1:4318; also OTEL_EXPORTER_OTLP_ENDPOINT). Needs the `otel` feature.
    #[arg(long, global = true)]
    otlp_endpoint: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
enum Command {
    /// Serve the HTTP API (with the in-process bus it also runs the order writer).
    Serve(commands::serve::ServeArgs),
    /// Move orders from the Kafka bus into the store (distributed mode).
    Worker(commands::BackendArgs),
    /// Apply the store's migrations and exit.
    Migrate(commands::BackendArgs),
    /// Reconcile gate, bus and store; print every violation; exit 1 if there is one.
    Check(commands::check::CheckArgs),
    /// Dead-lettered orders (Kafka bus): list them, or replay them into the store.
    #[command(subcommand)]
    Dlq(commands::dlq::DlqCommand),
    /// Run a flash sale against an embedded engine over real HTTP and report.
    Demo(commands::demo::DemoArgs),
    /// Load generator against a running gateway (closed or open loop).
    Load(commands::load::LoadArgs),
    /// Mint a buyer token (HS256, with the server's auth secret) for demos and tests.
    Token(commands::token::TokenArgs),
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let otlp = cli
        .otlp_endpoint
        .clone()
        // The standard variable, only where it can be honoured.
        .or_else(|| {
            cfg!(feature = "otel")
                .then(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
                .flatten()
        });
    let service = match cli.command {
        Command::Worker(_) => "flashsale-worker",
        _ => "flashsale-gateway",
    };
    let _log_guard = flashsale::observe::logs::init(cli.log_format, otlp.as_deref(), service)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let config = cli.config.as_path();
        match cli.command {
            Command::Serve(args) => commands::serve::run(config, args).await,
            Command::Worker(args) => commands::worker::run(config, args).await,
            Command::Migrate(args) => commands::worker::migrate(config, args).await,
            Command::Check(args) => commands::check::run(config, args).await,
            Command::Dlq(command) => commands::dlq::run(config, command).await,
            Command::Demo(args) => commands::demo::run(args).await,
            Command::Load(args) => commands::load::run(args).await,
            Command::Token(args) => commands::token::run(config, args),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings_layer(args: &[&str]) -> serde_json::Value {
        let cli = Cli::try_parse_from(args).unwrap();
        match cli.command {
            Command::Serve(args) => serde_json::to_value(args),
            Command::Worker(args) | Command::Migrate(args) => serde_json::to_value(args),
            Command::Token(args) => serde_json::to_value(args),
            _ => unreachable!(),
        }
        .unwrap()
    }

    /// The defaults are config/default.toml's: a flag not given puts nothing in the
    /// settings' last layer (a default of its own would hide the file and the
    /// environment, and drift from the file).
    #[test]
    fn flags_not_given_set_no_setting() {
        for args in [
            &["flashsale", "serve"][..],
            &["flashsale", "worker"],
            &["flashsale", "migrate"],
            &["flashsale", "token", "--user", "alice"],
        ] {
            assert_eq!(settings_layer(args), serde_json::json!({}), "{args:?}");
        }
    }

    /// Every flag that is a setting is named as the setting is.
    #[test]
    fn flags_name_settings_that_exist() {
        let settings = serde_json::to_value(flashsale::config::Config::default()).unwrap();
        let layer = settings_layer(&[
            "flashsale",
            "serve",
            "--listen=127.0.0.1:1",
            "--admin-token=x",
            "--admin-token-file=x",
            "--auth-secret=x",
            "--auth-secret-file=x",
            "--auth-public-key=x",
            "--auth-issuer=x",
            "--auth-audience=x",
            "--payment-secret=x",
            "--payment-secret-file=x",
            "--rate-per-buyer=off",
            "--rate-per-ip=off",
            "--trusted-proxy=10.0.0.0/8",
            "--max-in-flight-purchases=1",
            "--max-queue-time-ms=1",
            "--breaker-failures=1",
            "--breaker-cool-down-ms=1",
            "--insecure",
            "--buyers-authenticated-upstream",
            "--status-every=1",
            "--gate=local",
            "--bus=memory",
            "--store=sqlite://x",
        ]);
        let layer = layer.as_object().unwrap();
        assert_eq!(layer.len(), 23, "{layer:?}");
        for key in layer.keys() {
            assert!(settings.get(key).is_some(), "--{key} is not a setting");
        }
    }
}
