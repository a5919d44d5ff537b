//! `flashsale load`: the load generator against a running gateway, with its report.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use flashsale::load::line::{self, LinePlan};
use flashsale::load::{self, LoadPlan, Schedule, Summary};

use super::BuyerMix;

#[derive(Args)]
pub struct LoadArgs {
    /// The gateway, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    url: String,
    /// The sale to buy from.
    #[arg(long, required_unless_present = "probe", default_value = "")]
    sale: String,
    /// Distinct buyers (ids shuffled; they come back when attempts exceed them).
    #[arg(long, default_value_t = 10_000)]
    buyers: u64,
    /// Number of the first buyer (`buyer-N`): a second run against the same sale with
    /// `--first-buyer` past the first run's buyers brings only new ones.
    #[arg(long, default_value_t = 0)]
    first_buyer: u64,
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
    /// Send each purchase with a random X-Forwarded-For: against a gateway that lists
    /// this machine in --trusted-proxy, each counts as a client of its own (without it,
    /// the gateway's per-address limit sees one client).
    #[arg(long)]
    forwarded_for: bool,
    /// Open loop: at most this many requests in flight; attempts due beyond are skipped
    /// and counted (default: unbounded).
    #[arg(long)]
    max_in_flight: Option<usize>,
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
    /// The sale is bought through its line: every buyer joins it at once (up to
    /// --connections in flight), then follows their ticket by polling until it ends;
    /// reports joins/s, time in line (p50/p99), decisions/s and the order check.
    #[arg(long, conflicts_with_all = ["rate", "probe", "duration", "requests"])]
    queue: bool,
}

pub async fn run(args: LoadArgs) -> anyhow::Result<ExitCode> {
    if args.queue {
        return run_line(&args).await;
    }
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
        forwarded_for: args.forwarded_for,
        max_in_flight: args.max_in_flight,
        first_buyer: args.first_buyer,
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
        println!("{}", summary.render());
        if let Some(path) = &args.report {
            println!("report written to {}", path.display());
        }
    }
    if !summary.audit.ok {
        anyhow::bail!("the answers break an invariant");
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_line(args: &LoadArgs) -> anyhow::Result<ExitCode> {
    let report = line::run(LinePlan {
        base_url: args.url.clone(),
        sale_id: args.sale.clone(),
        buyers: args.buyers,
        first_buyer: args.first_buyer,
        connections: args.connections,
        poll: std::time::Duration::from_millis(500),
        patience: std::time::Duration::from_secs(3_600),
        follow: true,
        forwarded_for: args.forwarded_for,
    })
    .await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("flashsale load --queue: {} buyers", args.buyers);
        println!("{}", report.render());
    }
    if !report.ok() {
        anyhow::bail!("the line broke its order, or tickets were left waiting");
    }
    Ok(ExitCode::SUCCESS)
}
