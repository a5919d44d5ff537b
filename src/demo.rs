//! `flashsale demo`: an embedded engine, a flash sale, many buyers over real HTTP, and
//! a report whose invariants are checked against the store, not only the answers.

use std::collections::BTreeMap;

use serde::Serialize;

use std::time::Duration;

use crate::api::SaleView;
use crate::api::requests::{NewQueue, NewSale};
use crate::audit::{Audit, Holding, SaleFacts};
use crate::client::{Client, ClientError};
use crate::config::Config;
use crate::domain::RateLimit;
use crate::load::line::{self, LinePlan, LineReport};
use crate::load::{self, LatencySummary, LoadError, LoadPlan};
use crate::server::{Server, StartError};
use crate::store::{self, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("a temporary directory for the store: {0}")]
    TempDir(#[from] std::io::Error),
    #[error("starting the engine: {0}")]
    Start(#[from] StartError),
    #[error("talking to the engine: {0}")]
    Client(#[from] ClientError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("reading the store: {0}")]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub stock: u32,
    pub buyers: u64,
    pub connections: usize,
    pub per_user_limit: u32,
    pub retry_ratio: f64,
    pub double_click_ratio: f64,
    /// The sale is bought through a line (`queue`): the buyers join it before the
    /// start and follow their tickets.
    pub queue: bool,
}

#[derive(Debug, Serialize)]
pub struct DemoReport {
    pub stock: u32,
    pub buyers: u64,
    pub per_user_limit: u32,
    pub requests: u64,
    /// Units held by orders in the store.
    pub sold: u64,
    /// Units acknowledged to buyers (202).
    pub acknowledged: u64,
    pub rejected: BTreeMap<String, u64>,
    /// I1–I5 from the store, the gate and the answers.
    #[serde(flatten)]
    pub audit: Audit,
    pub throughput_rps: f64,
    pub elapsed_s: f64,
    /// The purchases' answer times (through a line: the joins').
    pub latency_ms: LatencySummary,
    /// Through a line: what it did, and whether it kept its order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<LineReport>,
}

impl DemoReport {
    pub fn ok(&self) -> bool {
        self.audit.ok() && self.line.as_ref().is_none_or(LineReport::ok)
    }

    pub fn render(&self) -> String {
        let rejected = self
            .rejected
            .iter()
            .map(|(code, n)| format!("{code} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let l = &self.latency_ms;
        let a = &self.audit;
        let line = (self.line.as_ref())
            .map(|line| format!("{}\n", line.render()))
            .unwrap_or_default();
        format!(
            "flashsale demo: {buyers} buyers {how} {stock} units (limit {limit} per buyer)\n{line}\
             \x20 requests    {requests} in {elapsed:.2} s ({rps:.0} req/s)\n\
             \x20 sold        {sold} of {stock} units ({ack} acknowledged)\n\
             \x20 rejected    {rejected}\n\
             \x20 latency     p50 {p50:.2} ms · p90 {p90:.2} ms · p99 {p99:.2} ms · p99.9 {p999:.2} ms · max {max:.2} ms\n\
             \x20 invariants  I1 oversold {oversold} · I2 buyers over the limit {over} · I3 lost {lost} · I4 phantom {phantom}, gate-store gap {gap} · I5 replay mismatches {mm}\n\
             \x20 verdict     {verdict}",
            buyers = self.buyers,
            how = if self.line.is_some() {
                "stood in line for"
            } else {
                "raced for"
            },
            stock = self.stock,
            limit = self.per_user_limit,
            requests = self.requests,
            elapsed = self.elapsed_s,
            rps = self.throughput_rps,
            sold = self.sold,
            ack = self.acknowledged,
            p50 = l.p50,
            p90 = l.p90,
            p99 = l.p99,
            p999 = l.p999,
            max = l.max,
            oversold = a.oversold,
            over = a.buyers_over_limit,
            lost = a.lost.unwrap_or(0),
            phantom = a.phantom.unwrap_or(0),
            gap = a.gate_store_gap.unwrap_or(0),
            mm = a.replay_mismatches,
            verdict = if self.ok() {
                "OK: every invariant holds"
            } else {
                "BROKEN"
            },
        )
    }
}

pub async fn run(options: DemoOptions) -> Result<DemoReport, DemoError> {
    let dir = tempfile::tempdir()?;
    let store_url: store::StoreUrl = format!("sqlite://{}", dir.path().join("demo.db").display())
        .parse()
        .expect("a sqlite url");
    let mut config = Config {
        status_interval_s: 0,
        sample_sales: false,
        listen: "127.0.0.1:0".into(),
        store: store_url.clone(),
        ..Config::default()
    };
    // The simulated buyers all come from this machine: one address.
    config.protection.rate_per_ip = RateLimit::Off;
    let server = Server::start(&config).await?;
    let base_url = format!("http://{}", server.addr);
    let client = Client::new(&base_url);
    let sale = client
        .create_sale(&NewSale {
            name: "demo drop".into(),
            stock: Some(options.stock),
            per_user_limit: Some(options.per_user_limit),
            // Through a line: it opens now, the sale a moment later, when the buyers
            // are in line.
            starts_at: options
                .queue
                .then(|| chrono::Utc::now() + chrono::Duration::seconds(2)),
            queue: options.queue.then(NewQueue::default),
            ..NewSale::default()
        })
        .await?;
    if options.queue {
        let line = line::run(LinePlan {
            base_url,
            sale_id: sale.id.clone(),
            buyers: options.buyers,
            first_buyer: 0,
            connections: options.connections,
            poll: Duration::from_millis(200),
            patience: Duration::from_secs(120),
            follow: true,
            forwarded_for: false,
        })
        .await?;
        return audited(
            server,
            &client,
            &store_url,
            &sale,
            &options,
            Run::Line(line),
        )
        .await;
    }

    let load = load::run(LoadPlan {
        base_url,
        sale_id: sale.id.clone(),
        buyers: options.buyers,
        attempts: options.buyers,
        schedule: load::Schedule::Closed {
            connections: options.connections,
        },
        progress: false,
        forwarded_for: false,
        max_in_flight: None,
        first_buyer: 0,
        retry_ratio: options.retry_ratio,
        double_click_ratio: options.double_click_ratio,
        quantity: 1,
        duration: None,
        probe: None,
    })
    .await?;
    audited(
        server,
        &client,
        &store_url,
        &sale,
        &options,
        Run::Race(Box::new(load)),
    )
    .await
}

/// What the buyers did: raced on the purchase route, or stood in line.
enum Run {
    Race(Box<load::LoadReport>),
    Line(LineReport),
}

/// Stops the server and checks the invariants against the store.
async fn audited(
    server: Server,
    client: &Client,
    store_url: &store::StoreUrl,
    sale: &SaleView,
    options: &DemoOptions,
    run: Run,
) -> Result<DemoReport, DemoError> {
    let gate_remaining: Vec<u32> = client
        .sale(&sale.id)
        .await?
        .items
        .iter()
        .map(|i| i.remaining)
        .collect();
    server.stop().await;

    // Audit from the store itself, opened afresh after the server has drained.
    let stored = store::connect(store_url)
        .await?
        .sale_orders(&sale.id)
        .await?;
    let live: Vec<_> = stored.iter().filter(|o| o.status.holds_stock()).collect();
    let facts = SaleFacts::from(sale);
    let mut audit = Audit::default();
    audit.no_oversell(&facts, live.iter().map(|o| Holding::from(*o)));
    audit.within_limit(&facts, live.iter().map(|o| Holding::from(*o)));
    let acknowledged: Vec<&str> = match &run {
        Run::Race(load) => load.accepted.iter().map(|a| a.order_id.as_str()).collect(),
        Run::Line(line) => line.orders.iter().map(String::as_str).collect(),
    };
    audit.acknowledged_equals_stored(&facts, acknowledged, &stored);
    audit.gate_matches_store(&facts, &gate_remaining, &live, &[]);
    let sold = live.iter().map(|o| o.total_units() as u64).sum();
    Ok(match run {
        Run::Race(load) => {
            audit.replays_agree(&facts, load.replay_mismatches);
            DemoReport {
                stock: options.stock,
                buyers: options.buyers,
                per_user_limit: options.per_user_limit,
                requests: load.requests,
                sold,
                acknowledged: load.accepted.iter().map(|a| a.units() as u64).sum(),
                rejected: load.rejected.clone(),
                audit,
                throughput_rps: load.throughput_rps(),
                elapsed_s: load.elapsed.as_secs_f64(),
                latency_ms: LatencySummary::of(&load),
                line: None,
            }
        }
        Run::Line(line) => {
            // A ticket's order is as a purchase's: one unit each here.
            let acknowledged = (stored.iter())
                .filter(|o| line.orders.contains(&o.id))
                .map(|o| o.total_units() as u64)
                .sum();
            let mut rejected = line.refused.clone();
            for (code, n) in [("closed", line.closed), ("timeout", line.timeout)] {
                if n > 0 {
                    rejected.insert(code.to_string(), n);
                }
            }
            DemoReport {
                stock: options.stock,
                buyers: options.buyers,
                per_user_limit: options.per_user_limit,
                requests: line.joined,
                sold,
                acknowledged,
                rejected,
                audit,
                throughput_rps: line.joins_per_s,
                elapsed_s: line.join_elapsed_s,
                latency_ms: line.join_latency_ms.clone(),
                line: Some(line),
            }
        }
    })
}
