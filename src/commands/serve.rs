//! `flashsale serve`: the HTTP gateway until SIGTERM / Ctrl-C.

use std::path::Path;
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
    /// Token required by admin routes (Authorization: Bearer TOKEN).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    admin_token: Option<String>,
    #[command(flatten)]
    #[serde(flatten)]
    backends: BackendArgs,
}

pub async fn run(config_file: &Path, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = settings(config_file, &args)?;
    let server = Server::start(&config).await.context("starting the server")?;
    // Tests and scripts read the address from this line (the port may have been 0).
    println!("flashsale listening on http://{}", server.addr);
    tracing::info!(gate = %config.gate, bus = %config.bus, store = %config.store, "serving");
    shutdown_signal().await;
    tracing::info!("shutting down: finishing requests in flight and draining the writer");
    server.stop().await;
    Ok(ExitCode::SUCCESS)
}
