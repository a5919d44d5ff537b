//! `flashsale serve`: the HTTP gateway until SIGTERM / Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use flashsale::server::Server;
use serde::Serialize;

use super::{BackendArgs, settings, shutdown_signal};

#[derive(Args, Serialize)]
pub struct ServeArgs {
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0: any free port).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
    /// Token required by admin routes (Authorization: Bearer TOKEN), 16 bytes or more.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    admin_token: Option<String>,
    /// File whose first line is the admin token (not visible in `ps`).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    admin_token_file: Option<PathBuf>,
    /// HS256 secret of buyer tokens (32 bytes or more): buyers then need a JWT.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_secret: Option<String>,
    /// File whose first line is the HS256 secret of buyer tokens.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_secret_file: Option<PathBuf>,
    /// PEM public key (RSA or EC) of the identity provider that signs buyer tokens.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_public_key: Option<PathBuf>,
    /// The `iss` a buyer token must carry (refused without it).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_issuer: Option<String>,
    /// The `aud` a buyer token must name (refused without it).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_audience: Option<String>,
    /// Secret the payment service signs payment confirmations with (16 bytes or more).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    payment_secret: Option<String>,
    /// File whose first line is the payment secret.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    payment_secret_file: Option<PathBuf>,
    /// Purchases per buyer and sale: `10/s`, `600/min burst 50`, `off`.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_per_buyer: Option<String>,
    /// Purchases per client address and sale, and apart other API requests per address:
    /// `100/s burst 200`, `off`.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_per_ip: Option<String>,
    /// A proxy (CIDR or address) whose X-Forwarded-For names the client; repeatable.
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    #[serde(rename = "trusted_proxies", skip_serializing_if = "Vec::is_empty")]
    trusted_proxy: Vec<String>,
    /// Purchases served at once; beyond it 503 `overloaded` at once.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_in_flight_purchases: Option<usize>,
    /// Longest a purchase may wait in the server before its decision, in ms (else 503
    /// `timeout`).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_queue_time_ms: Option<u64>,
    /// Failures in a row of a backend after which requests fail fast.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    breaker_failures: Option<u32>,
    /// How long a tripped breaker fails fast before a probe, in ms.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    breaker_cool_down_ms: Option<u64>,
    /// Listen beyond loopback with no credential configured.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    insecure: bool,
    /// Buyers are authenticated by a trusted front that sets the body's `user_id`: lets
    /// a server with an admin token but no buyer-token key listen beyond loopback.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    buyers_authenticated_upstream: bool,
    /// Every how many seconds to print the status line.
    #[arg(long = "status-every", value_name = "SECONDS")]
    #[serde(rename = "status_interval_s", skip_serializing_if = "Option::is_none")]
    status_every: Option<u64>,
    /// No status line (as `--status-every 0`).
    #[arg(long)]
    #[serde(skip)]
    quiet: bool,
    #[command(flatten)]
    #[serde(flatten)]
    backends: BackendArgs,
}

pub async fn run(config_file: &Path, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut config = settings(config_file, &args)?;
    if args.quiet {
        config.status_interval_s = 0;
    }
    let server = Server::start(&config)
        .await
        .context("starting the server")?;
    // Tests and scripts read the address from this line (the port may have been 0).
    println!("flashsale listening on http://{}", server.addr);
    if let Some(internal) = server.internal_addr {
        println!("flashsale internal listener on http://{internal}");
    }
    tracing::info!(gate = %config.gate, bus = %config.bus, store = %config.store, "serving");
    if config.is_open() {
        tracing::warn!(
            "no credential configured: buyers are whoever the body says and every route is \
             open (development mode)"
        );
    }
    shutdown_signal().await;
    tracing::info!("shutting down: finishing requests in flight and draining the writer");
    server.stop().await;
    Ok(ExitCode::SUCCESS)
}
