//! `flashsale demo`: an embedded engine, a flash sale, many buyers over real HTTP, and
//! a report whose invariants are checked against the store, not against the answers.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;
use serde_json::json;

use crate::config::Config;
use crate::load::{self, LatencySummary, LoadPlan, LoadReport};
use crate::server::Server;
use crate::store;

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub stock: u32,
    pub buyers: u64,
    pub connections: usize,
    pub per_user_limit: u32,
    pub retry_ratio: f64,
    pub double_click_ratio: f64,
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
    /// Units in the store beyond the stock (I1).
    pub oversold: u64,
    /// Buyers holding more than the per-user limit in the store (I2).
    pub duplicates: u64,
    /// Orders acknowledged but not in the store (I3).
    pub lost: u64,
    /// Orders in the store nobody was told about (I4).
    pub phantom: u64,
    /// Units the gate counts as sold minus units in the store (I4).
    pub gate_store_gap: i64,
    /// Retries and double clicks whose answers disagree (I5).
    pub replay_mismatches: u64,
    pub throughput_rps: f64,
    pub elapsed_s: f64,
    pub latency_ms: LatencySummary,
}

impl DemoReport {
    pub fn ok(&self) -> bool {
        self.oversold == 0
            && self.duplicates == 0
            && self.lost == 0
            && self.phantom == 0
            && self.gate_store_gap == 0
            && self.replay_mismatches == 0
    }

    pub fn render(&self) -> String {
        let rejected = self
            .rejected
            .iter()
            .map(|(code, n)| format!("{code} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let l = &self.latency_ms;
        format!(
            "flashsale demo: {buyers} buyers raced for {stock} units (limit {limit} per buyer)\n\
             \x20 requests    {requests} in {elapsed:.2} s ({rps:.0} req/s)\n\
             \x20 sold        {sold} of {stock} units ({ack} acknowledged)\n\
             \x20 rejected    {rejected}\n\
             \x20 latency     p50 {p50:.2} ms · p90 {p90:.2} ms · p99 {p99:.2} ms · p99.9 {p999:.2} ms · max {max:.2} ms\n\
             \x20 invariants  oversold {oversold} · duplicates {dup} · lost {lost} · phantom {phantom} · gate-store gap {gap} · replay mismatches {mm}\n\
             \x20 verdict     {verdict}",
            buyers = self.buyers,
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
            oversold = self.oversold,
            dup = self.duplicates,
            lost = self.lost,
            phantom = self.phantom,
            gap = self.gate_store_gap,
            mm = self.replay_mismatches,
            verdict = if self.ok() {
                "OK: every invariant holds"
            } else {
                "BROKEN"
            },
        )
    }
}

pub async fn run(options: DemoOptions) -> anyhow::Result<DemoReport> {
    let dir = tempfile::tempdir()?;
    let store_url = format!("sqlite://{}", dir.path().join("demo.db").display());
    let config = Config {
        listen: "127.0.0.1:0".into(),
        store: store_url.clone(),
        ..Config::default()
    };
    let server = Server::start(&config).await?;
    let base_url = format!("http://{}", server.addr);
    let client = reqwest::Client::new();

    let created: serde_json::Value = client
        .post(format!("{base_url}/api/sales"))
        .json(&json!({
            "name": "demo drop",
            "stock": options.stock,
            "per_user_limit": options.per_user_limit,
        }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let sale_id = created["id"].as_str().unwrap_or_default().to_string();

    let load = load::run(LoadPlan {
        base_url: base_url.clone(),
        sale_id: sale_id.clone(),
        buyers: options.buyers,
        attempts: options.buyers,
        schedule: load::Schedule::Closed {
            connections: options.connections,
        },
        progress: false,
        retry_ratio: options.retry_ratio,
        double_click_ratio: options.double_click_ratio,
        quantity: 1,
        duration: None,
        probe: None,
    })
    .await?;

    let after: serde_json::Value = client
        .get(format!("{base_url}/api/sales/{sale_id}"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let gate_remaining = after["remaining"].as_u64().unwrap_or(0);
    server.stop().await;

    // Audit from the store itself, opened afresh after the server has drained.
    let store = store::connect(&store_url).await?;
    let stored = store.sale_orders(&sale_id).await?;
    Ok(audit(&options, load, stored, gate_remaining))
}

fn audit(
    options: &DemoOptions,
    load: LoadReport,
    stored: Vec<crate::domain::Order>,
    gate_remaining: u64,
) -> DemoReport {
    let live: Vec<_> = stored.iter().filter(|o| o.status.holds_stock()).collect();
    let sold: u64 = live.iter().map(|o| o.total_units() as u64).sum();
    let mut per_buyer: HashMap<&str, u64> = HashMap::new();
    for o in &live {
        *per_buyer.entry(&o.user_id).or_default() += o.total_units() as u64;
    }
    let stored_ids: HashSet<&str> = stored.iter().map(|o| o.id.as_str()).collect();
    let acked_ids: HashSet<&str> = load.accepted.iter().map(|a| a.order_id.as_str()).collect();
    DemoReport {
        stock: options.stock,
        buyers: options.buyers,
        per_user_limit: options.per_user_limit,
        requests: load.requests,
        sold,
        acknowledged: load.accepted.iter().map(|a| a.units() as u64).sum(),
        rejected: load.rejected.clone(),
        oversold: sold.saturating_sub(options.stock as u64),
        duplicates: per_buyer
            .values()
            .filter(|&&u| u > options.per_user_limit as u64)
            .count() as u64,
        lost: acked_ids.difference(&stored_ids).count() as u64,
        phantom: stored_ids.difference(&acked_ids).count() as u64,
        gate_store_gap: (options.stock as i64 - gate_remaining as i64) - sold as i64,
        replay_mismatches: load.replay_mismatches,
        throughput_rps: load.throughput_rps(),
        elapsed_s: load.elapsed.as_secs_f64(),
        latency_ms: LatencySummary::of(&load),
    }
}
