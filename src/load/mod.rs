//! Load generator: many buyers racing for a sale over real HTTP, some retrying or
//! double-clicking with the same Idempotency-Key. Used by `demo` (and grows into `load`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;

/// How requests are offered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    /// `connections` keep-alive connections, each sending as soon as its answer came.
    Closed { connections: usize },
    /// A fixed offered rate (attempts per second), whatever the answers; latency counts
    /// from the moment an attempt was due, not sent, so queueing is never hidden.
    Open { rate: f64 },
}

#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub base_url: String,
    pub sale_id: String,
    /// Distinct buyers; their ids are shuffled.
    pub buyers: u64,
    /// Buyer attempts in all (a retry or double click is part of its attempt); beyond
    /// `buyers`, buyers come back.
    pub attempts: u64,
    pub schedule: Schedule,
    /// Share of attempts that send their request again, same key, after the answer.
    pub retry_ratio: f64,
    /// Share of attempts that send two requests at once with the same key.
    pub double_click_ratio: f64,
    /// Units asked per purchase.
    pub quantity: u32,
    /// Show a progress bar on the terminal.
    pub progress: bool,
}

impl LoadPlan {
    fn connections(&self) -> usize {
        match self.schedule {
            Schedule::Closed { connections } => connections.max(1),
            Schedule::Open { rate } => (rate as usize / 10).clamp(16, 1024),
        }
    }
}

/// The answer to one purchase request, as the buyer saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Accepted {
        order_id: String,
        units: u32,
    },
    Refused {
        status: u16,
        code: String,
    },
    /// No HTTP answer at all (connection refused or reset).
    Transport,
}

#[derive(Debug, Clone)]
pub struct AcceptedOrder {
    pub user_id: String,
    pub order_id: String,
    pub units: u32,
}

#[derive(Debug)]
pub struct LoadReport {
    pub requests: u64,
    /// Every order acknowledged with 202, once per order id.
    pub accepted: Vec<AcceptedOrder>,
    /// Refusals by code (`transport` for requests that got no answer).
    pub rejected: BTreeMap<String, u64>,
    /// Retries or double clicks whose answers disagree (I5).
    pub replay_mismatches: u64,
    /// Latency of every request, in microseconds.
    pub latency_us: Histogram<u64>,
    /// Requests answered in each second of the run.
    pub per_second: Vec<u64>,
    pub elapsed: Duration,
}

impl LoadReport {
    pub fn throughput_rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// A latency quantile in milliseconds.
    pub fn latency_ms(&self, quantile: f64) -> f64 {
        self.latency_us.value_at_quantile(quantile) as f64 / 1000.0
    }
}

struct BuyerRun {
    requests: u64,
    /// Latency of each of its requests, in microseconds.
    latencies_us: Vec<u64>,
    answers: Vec<(String, Answer)>,
    mismatch: bool,
    /// Second of the run in which the attempt ended.
    second: usize,
}

pub async fn run(plan: LoadPlan) -> anyhow::Result<LoadReport> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(plan.connections() * 2)
        .timeout(Duration::from_secs(30))
        .build()?;
    let url = format!(
        "{}/api/sales/{}/purchase",
        plan.base_url.trim_end_matches('/'),
        plan.sale_id
    );
    let progress = if plan.progress {
        let bar = indicatif::ProgressBar::new(plan.attempts);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} attempts, {per_sec} {msg}",
            )
            .expect("valid template"),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let plan = Arc::new(plan);
    let order = Arc::new(shuffled(plan.buyers.max(1)));
    let user_of = move |i: u64| format!("buyer-{}", order[(i % order.len() as u64) as usize]);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();

    match plan.schedule {
        Schedule::Closed { connections } => {
            let next = Arc::new(AtomicU64::new(0));
            for _ in 0..connections.max(1) {
                let (client, url, plan, next, user_of, progress) = (
                    client.clone(),
                    url.clone(),
                    plan.clone(),
                    next.clone(),
                    user_of.clone(),
                    progress.clone(),
                );
                tasks.spawn(async move {
                    let mut runs = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= plan.attempts {
                            break;
                        }
                        runs.push(buy(&client, &url, &plan, user_of(i), None, started).await);
                        progress.inc(1);
                    }
                    runs
                });
            }
        }
        Schedule::Open { rate } => {
            let interval = Duration::from_secs_f64(1.0 / rate.max(1e-3));
            for i in 0..plan.attempts {
                let due = started + interval.mul_f64(i as f64);
                tokio::time::sleep_until(due.into()).await;
                let (client, url, plan, user, progress) = (
                    client.clone(),
                    url.clone(),
                    plan.clone(),
                    user_of(i),
                    progress.clone(),
                );
                tasks.spawn(async move {
                    let run = buy(&client, &url, &plan, user, Some(due), started).await;
                    progress.inc(1);
                    vec![run]
                });
            }
        }
    }

    let mut report = LoadReport {
        requests: 0,
        accepted: Vec::new(),
        rejected: BTreeMap::new(),
        replay_mismatches: 0,
        latency_us: latency_histogram(),
        per_second: Vec::new(),
        elapsed: Duration::ZERO,
    };
    let mut seen = std::collections::HashSet::new();
    while let Some(task) = tasks.join_next().await {
        for run in task? {
            for &us in &run.latencies_us {
                report.latency_us.saturating_record(us);
            }
            report.requests += run.requests;
            report.replay_mismatches += run.mismatch as u64;
            if report.per_second.len() <= run.second {
                report.per_second.resize(run.second + 1, 0);
            }
            report.per_second[run.second] += run.requests;
            for (user_id, answer) in run.answers {
                match answer {
                    Answer::Accepted { order_id, units } => {
                        if seen.insert(order_id.clone()) {
                            report.accepted.push(AcceptedOrder {
                                user_id,
                                order_id,
                                units,
                            });
                        }
                    }
                    Answer::Refused { code, .. } => *report.rejected.entry(code).or_default() += 1,
                    Answer::Transport => {
                        *report.rejected.entry("transport".into()).or_default() += 1
                    }
                }
            }
        }
        progress.set_message(format!(
            "{} requests, {} orders",
            report.requests,
            report.accepted.len()
        ));
    }
    progress.finish_and_clear();
    report.elapsed = started.elapsed();
    Ok(report)
}

/// One buyer's attempt: a single request, a retry after the answer, or a double click.
async fn buy(
    client: &reqwest::Client,
    url: &str,
    plan: &LoadPlan,
    user: String,
    due: Option<Instant>,
    started: Instant,
) -> BuyerRun {
    let body = json!({ "user_id": user, "quantity": plan.quantity });
    let sent_at = Instant::now();
    let roll = fastrand::f64();
    let key = uuid::Uuid::new_v4().to_string();
    let (answers, mismatch) = if roll < plan.double_click_ratio {
        let (a, b) = tokio::join!(
            send(client, url, &body, Some(&key)),
            send(client, url, &body, Some(&key))
        );
        let mismatch = !consistent(&a.0, &b.0);
        (vec![a, b], mismatch)
    } else if roll < plan.double_click_ratio + plan.retry_ratio {
        let first = send(client, url, &body, Some(&key)).await;
        let again = send(client, url, &body, Some(&key)).await;
        let mismatch = !consistent(&first.0, &again.0);
        (vec![first, again], mismatch)
    } else {
        let key = fastrand::bool().then_some(key.as_str());
        (vec![send(client, url, &body, key).await], false)
    };
    // On the open loop, the first request's wait for its turn counts as latency.
    let latencies_us = answers
        .iter()
        .enumerate()
        .map(|(i, (_, took))| match due {
            Some(due) if i == 0 => (sent_at + *took).saturating_duration_since(due),
            _ => *took,
        })
        .map(|d| d.as_micros() as u64)
        .collect();
    BuyerRun {
        requests: answers.len() as u64,
        latencies_us,
        answers: answers
            .into_iter()
            .map(|(a, _)| (user.clone(), a))
            .collect(),
        mismatch,
        second: started.elapsed().as_secs() as usize,
    }
}

/// Two answers to the same key agree, unless one of them is a transient failure.
fn consistent(a: &Answer, b: &Answer) -> bool {
    let transient = |x: &Answer| match x {
        Answer::Transport => true,
        Answer::Refused { status, .. } => *status >= 500 || *status == 429,
        Answer::Accepted { .. } => false,
    };
    transient(a) || transient(b) || a == b
}

async fn send(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
    key: Option<&str>,
) -> (Answer, Duration) {
    let started = Instant::now();
    let mut request = client.post(url).json(body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let answer = match request.send().await {
        Err(_) => Answer::Transport,
        Ok(response) => {
            let status = response.status().as_u16();
            match response.json::<serde_json::Value>().await {
                Err(_) => Answer::Transport,
                Ok(v) if status == 202 => Answer::Accepted {
                    order_id: v["id"].as_str().unwrap_or_default().to_string(),
                    units: v["quantity"].as_u64().unwrap_or(0) as u32,
                },
                Ok(v) => Answer::Refused {
                    status,
                    code: v["code"].as_str().unwrap_or("unknown").to_string(),
                },
            }
        }
    };
    (answer, started.elapsed())
}

/// 0..n in random order, so buyer ids do not arrive sorted.
fn shuffled(n: u64) -> Vec<u64> {
    let mut ids: Vec<u64> = (0..n).collect();
    fastrand::shuffle(&mut ids);
    ids
}

/// Microseconds from 1 µs to 10 minutes, 3 significant digits.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

/// What `flashsale load --json` prints: the report, and an audit made from the answers
/// alone (the store is not at hand from the client side).
#[derive(Debug, serde::Serialize)]
pub struct Summary {
    pub requests: u64,
    pub attempts: u64,
    /// Offered attempts per second (open loop only).
    pub offered_rps: Option<f64>,
    pub throughput_rps: f64,
    pub elapsed_s: f64,
    pub accepted: u64,
    /// Units acknowledged with 202.
    pub acknowledged: u64,
    pub rejected: BTreeMap<String, u64>,
    pub latency_ms: LatencySummary,
    /// Requests answered in each second of the run.
    pub per_second: Vec<u64>,
    pub audit: Audit,
}

#[derive(Debug, serde::Serialize)]
pub struct LatencySummary {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

#[derive(Debug, serde::Serialize)]
pub struct Audit {
    pub stock: u64,
    /// More units acknowledged than the sale has.
    pub oversold: u64,
    /// Buyers acknowledged more units than the per-user limit.
    pub buyers_over_limit: u64,
    pub replay_mismatches: u64,
    pub ok: bool,
}

impl Summary {
    /// `sale` is the sale as `GET /api/sales/{id}` shows it.
    pub fn new(plan: &LoadPlan, report: &LoadReport, sale: &serde_json::Value) -> Summary {
        let acknowledged: u64 = report.accepted.iter().map(|a| a.units as u64).sum();
        let stock = sale["stock"].as_u64().unwrap_or(0);
        let limit = sale["per_user_limit"].as_u64().unwrap_or(1);
        let mut per_buyer: std::collections::HashMap<&str, u64> = Default::default();
        for a in &report.accepted {
            *per_buyer.entry(&a.user_id).or_default() += a.units as u64;
        }
        let oversold = acknowledged.saturating_sub(stock);
        let buyers_over_limit = per_buyer.values().filter(|&&u| u > limit).count() as u64;
        let q = |x| report.latency_ms(x);
        Summary {
            requests: report.requests,
            attempts: plan.attempts,
            offered_rps: match plan.schedule {
                Schedule::Open { rate } => Some(rate),
                Schedule::Closed { .. } => None,
            },
            throughput_rps: report.throughput_rps(),
            elapsed_s: report.elapsed.as_secs_f64(),
            accepted: report.accepted.len() as u64,
            acknowledged,
            rejected: report.rejected.clone(),
            latency_ms: LatencySummary {
                p50: q(0.5),
                p90: q(0.9),
                p99: q(0.99),
                p999: q(0.999),
                max: report.latency_us.max() as f64 / 1000.0,
            },
            per_second: report.per_second.clone(),
            audit: Audit {
                stock,
                oversold,
                buyers_over_limit,
                replay_mismatches: report.replay_mismatches,
                ok: oversold == 0 && buyers_over_limit == 0 && report.replay_mismatches == 0,
            },
        }
    }
}
