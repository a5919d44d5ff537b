//! `flashsale token`: mints a buyer token (HS256, with the server's `auth_secret`) for
//! demos, scripts and tests. Production tokens come from the identity provider.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;

use super::settings;

#[derive(Args, Serialize)]
pub struct TokenArgs {
    /// The buyer the token names (its `sub`).
    #[arg(long)]
    #[serde(skip)]
    user: String,
    /// How long the token is valid, e.g. 30m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    #[serde(skip)]
    ttl: std::time::Duration,
    /// HS256 secret (default: the settings' auth_secret).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_secret: Option<String>,
    /// File whose first line is the secret.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_secret_file: Option<PathBuf>,
}

pub fn run(config_file: &Path, args: TokenArgs) -> anyhow::Result<ExitCode> {
    let config = settings(config_file, &args)?;
    let Some(secret) = config.auth.auth_secret else {
        bail!("no auth_secret: give --auth-secret, --auth-secret-file or FLASHSALE_AUTH_SECRET");
    };
    if !flashsale::domain::valid_user_id(&args.user) {
        bail!("--user must be 1 to 128 characters, no control characters");
    }
    let expires = std::time::SystemTime::now()
        .checked_add(args.ttl)
        .context("--ttl is too long")?
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    println!(
        "{}",
        flashsale::auth::mint_buyer_token(secret.as_bytes(), &args.user, expires)
    );
    Ok(ExitCode::SUCCESS)
}
