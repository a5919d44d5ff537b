//! `flashsale demo`: a whole flash sale on an embedded engine, with its report.

use std::process::ExitCode;

use clap::Args;
use flashsale::demo::{self, DemoOptions};

use super::BuyerMix;

#[derive(Args)]
pub struct DemoArgs {
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
    /// Sell through a line: the buyers join the sale's line before it starts and are
    /// decided in line order (docs/api.md, "The line").
    #[arg(long)]
    queue: bool,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let report = demo::run(DemoOptions {
        stock: args.stock,
        buyers: args.buyers,
        connections: args.connections,
        per_user_limit: args.per_user_limit,
        retry_ratio: args.mix.retry_ratio,
        double_click_ratio: args.mix.double_click_ratio,
        queue: args.queue,
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
    Ok(ExitCode::SUCCESS)
}
