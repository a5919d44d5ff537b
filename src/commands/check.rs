//! `flashsale check`: prints the reconciliation report; exit code 1 on a violation.

use std::path::Path;
use std::process::ExitCode;

use clap::Args;
use flashsale::check::{self, CheckOptions};

use super::{BackendArgs, settings};

#[derive(Args)]
pub struct CheckArgs {
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

pub async fn run(config_file: &Path, args: CheckArgs) -> anyhow::Result<ExitCode> {
    let config = settings(config_file, &args.backends)?;
    let options = CheckOptions {
        sale: args.sale,
        url: args.url,
    };
    let report = check::run(&config, &options).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.render());
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
