//! One module per command of the binary: its flags and what it does with them. The
//! flags that are settings are serialized into the settings' last layer
//! (`Config::load`), so each setting is declared once, in `flashsale::config`.

pub mod check;
pub mod demo;
pub mod dlq;
pub mod load;
pub mod serve;
pub mod token;
pub mod worker;

use std::path::Path;

use anyhow::Context;
use clap::Args;
use flashsale::config::Config;
use serde::Serialize;

/// The backends, for every command that opens them.
#[derive(Args, Serialize)]
pub struct BackendArgs {
    /// Stock gate: local, redis://host:port[/db], or
    /// redis-sentinel://host:port[,host:port]/MASTER, or redis-cluster://host:port[,…].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    gate: Option<String>,
    /// Order bus: memory, or kafka://host:port[,host:port] (build with --features kafka).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    bus: Option<String>,
    /// Order store: sqlite://PATH, or postgres://user@host/db.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    store: Option<String>,
}

/// Reads the settings with `flags` as the last layer.
pub fn settings(file: &Path, flags: &impl Serialize) -> anyhow::Result<Config> {
    Config::load(file, flags).context("reading settings")
}

/// How the simulated buyers behave, shared by `demo` and `load`.
#[derive(Args)]
pub struct BuyerMix {
    /// Share of buyers that retry with the same Idempotency-Key.
    #[arg(long, default_value_t = 0.1)]
    pub retry_ratio: f64,
    /// Share of buyers that double-click (two requests at once, same key).
    #[arg(long, default_value_t = 0.05)]
    pub double_click_ratio: f64,
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
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
