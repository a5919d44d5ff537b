//! Load generator: many buyers racing for a sale over real HTTP, some retrying or
//! double-clicking with the same Idempotency-Key. `flashsale load` and `demo` run it;
//! `attempt.rs` is one buyer's attempt, `summary.rs` what a run amounts to (with the
//! audit from the answers), `report.rs` the same as one self-contained HTML page.

mod attempt;
#[cfg(test)]
mod audit_tests;
pub mod line;
mod report;
mod summary;

pub use attempt::{AcceptedOrder, Answer};
pub use report::write_html;
pub use summary::{LatencySummary, LoadAudit, Summary};

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::client::{Client, ClientError, SaleView};
use crate::domain::Millis;
use attempt::{BuyerRun, Target, buy};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading sale {0}: {1}")]
    Sale(String, #[source] ClientError),
    #[error("building the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("a buyer task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

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
    /// The first buyer's number: buyers are `buyer-{first_buyer}` to
    /// `buyer-{first_buyer + buyers - 1}`, so that runs against one sale can each bring
    /// buyers never seen before.
    pub first_buyer: u64,
    /// Buyer attempts in all (a retry or double click is part of its attempt); beyond
    /// `buyers`, buyers come back. `u64::MAX` with a `duration`: as many as fit.
    pub attempts: u64,
    /// Stop offering attempts after this long (answers still awaited).
    pub duration: Option<Duration>,
    pub schedule: Schedule,
    /// Share of attempts that send their request again, same key, after the answer.
    pub retry_ratio: f64,
    /// Share of attempts that send two requests at once with the same key.
    pub double_click_ratio: f64,
    /// Units asked per purchase of a single-item sale. On a sale with several items,
    /// each attempt buys one unit each of a random set of them (at most the per-user
    /// limit in all).
    pub quantity: u32,
    /// `GET` this path instead of purchasing: the same client and connections against
    /// a constant route, the HTTP ceiling of benchmark 1.
    pub probe: Option<String>,
    /// Show a progress bar on the terminal.
    pub progress: bool,
    /// Send each purchase with a random `X-Forwarded-For` (a gateway that lists this
    /// client in `--trusted-proxy` then counts each as its own address).
    pub forwarded_for: bool,
    /// Open loop: at most this many requests in flight; an attempt due while they are
    /// is skipped (counted, not sent), as a flood's clients would give up, instead of
    /// opening connections without bound. `None`: unbounded.
    pub max_in_flight: Option<usize>,
}

impl LoadPlan {
    fn connections(&self) -> usize {
        match self.schedule {
            Schedule::Closed { connections } => connections.max(1),
            Schedule::Open { rate } => (rate as usize / 10).clamp(16, 1024),
        }
    }
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
    /// Time from sending each request to its answer, in microseconds: on the open loop,
    /// the server's part when the client itself falls behind the schedule.
    pub service_us: Histogram<u64>,
    /// The same, of the 503 answers alone (how fast load is shed).
    pub service_503_us: Histogram<u64>,
    /// Answers by HTTP status (`0`: no answer).
    pub by_status: BTreeMap<u16, u64>,
    /// Requests answered in each second of the run.
    pub per_second: Vec<u64>,
    /// Orders acknowledged in each second of the run.
    pub accepted_per_second: Vec<u64>,
    /// Attempts offered (open loop: what the schedule asked for, answered or not).
    pub attempts: u64,
    /// Open loop with `max_in_flight`: attempts due while that many were in flight,
    /// not sent.
    pub skipped: u64,
    pub elapsed: Duration,
    /// The sale as `GET /api/sales/{id}` showed it before the run (none for a probe).
    pub sale: Option<SaleView>,
    /// The acknowledged orders' fates, read back when the answers alone hold more units
    /// than the sale has (units sold again after an expiry or a cancel, or an oversell).
    pub fates: Option<HashMap<String, Fate>>,
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

/// Counters the progress bar shows while the run goes on.
#[derive(Default)]
struct Live {
    requests: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
}

impl Live {
    fn count(&self, run: &BuyerRun) {
        self.requests.fetch_add(run.requests, Ordering::Relaxed);
        for (_, answer, _) in &run.answers {
            let counter = match answer {
                Answer::Accepted { .. } | Answer::Probed => &self.accepted,
                _ => &self.refused,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn message(&self, started: Instant) -> String {
        let requests = self.requests.load(Ordering::Relaxed);
        format!(
            "{requests} requests ({:.0}/s) · {} accepted · {} refused",
            requests as f64 / started.elapsed().as_secs_f64().max(1e-3),
            self.accepted.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }
}

fn progress_bar(plan: &LoadPlan) -> indicatif::ProgressBar {
    if !plan.progress {
        return indicatif::ProgressBar::hidden();
    }
    // With a duration the bar counts seconds, otherwise attempts.
    let (len, template) = match plan.duration {
        Some(d) => (d.as_secs().max(1), "{elapsed_precise} [{bar:30}] {msg}"),
        None => (
            plan.attempts,
            "{elapsed_precise} [{bar:30}] {pos}/{len} attempts · {msg}",
        ),
    };
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(indicatif::ProgressStyle::with_template(template).expect("valid template"));
    bar
}

pub async fn run(plan: LoadPlan) -> Result<LoadReport, LoadError> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(plan.connections() * 2)
        .timeout(Duration::from_secs(30))
        .build()?;
    let client =
        Client::with_http(&plan.base_url, http).with_random_forwarded_for(plan.forwarded_for);
    let (target, sale) = Target::new(client, &plan).await?;
    let progress = progress_bar(&plan);
    let live = Arc::new(Live::default());
    let plan = Arc::new(plan);
    let target = Arc::new(target);
    let order = Arc::new(shuffled(plan.buyers.max(1)));
    let first_buyer = plan.first_buyer;
    let user_of = move |i: u64| {
        format!(
            "buyer-{}",
            first_buyer + order[(i % order.len() as u64) as usize]
        )
    };
    let started = Instant::now();
    let in_time = {
        let duration = plan.duration;
        move |at: Instant| duration.is_none_or(|d| at.duration_since(started) < d)
    };
    let ticker = {
        let (progress, live, by_seconds) =
            (progress.clone(), live.clone(), plan.duration.is_some());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if by_seconds {
                    progress.set_position(started.elapsed().as_secs());
                }
                progress.set_message(live.message(started));
            }
        })
    };
    let mut tasks = tokio::task::JoinSet::new();
    let offered = Arc::new(AtomicU64::new(0));
    let skipped = Arc::new(AtomicU64::new(0));

    match plan.schedule {
        Schedule::Closed { connections } => {
            for _ in 0..connections.max(1) {
                let (target, plan, next, user_of, progress, live) = (
                    target.clone(),
                    plan.clone(),
                    offered.clone(),
                    user_of.clone(),
                    progress.clone(),
                    live.clone(),
                );
                tasks.spawn(async move {
                    let mut runs = Vec::new();
                    loop {
                        if !in_time(Instant::now()) {
                            break;
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= plan.attempts {
                            next.fetch_sub(1, Ordering::Relaxed);
                            break;
                        }
                        let run = buy(&target, &plan, user_of(i), None, started).await;
                        live.count(&run);
                        runs.push(run);
                        if plan.duration.is_none() {
                            progress.inc(1);
                        }
                    }
                    runs
                });
            }
        }
        Schedule::Open { rate } => {
            // A thread of its own keeps the pace: tokio's timer ticks in whole milliseconds,
            // so every attempt went out up to 1 ms late and that lateness (rightly counted
            // from the due time) was the client's, not the server's.
            let interval = Duration::from_secs_f64(1.0 / rate.max(1e-3));
            let (due_tx, mut due_rx) = tokio::sync::mpsc::unbounded_channel();
            let attempts = plan.attempts;
            std::thread::spawn(move || {
                for i in 0..attempts {
                    let due = started + interval.mul_f64(i as f64);
                    if !in_time(due) {
                        break;
                    }
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    if due_tx.send((i, due)).is_err() {
                        break;
                    }
                }
            });
            let in_flight = plan
                .max_in_flight
                .map(|n| Arc::new(tokio::sync::Semaphore::new(n)));
            while let Some((i, due)) = due_rx.recv().await {
                offered.fetch_add(1, Ordering::Relaxed);
                let place = match &in_flight {
                    Some(limit) => match limit.clone().try_acquire_owned() {
                        Ok(place) => Some(place),
                        Err(_) => {
                            skipped.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    },
                    None => None,
                };
                let (target, plan, user, progress, live) = (
                    target.clone(),
                    plan.clone(),
                    user_of(i),
                    progress.clone(),
                    live.clone(),
                );
                tasks.spawn(async move {
                    let run = buy(&target, &plan, user, Some(due), started).await;
                    drop(place);
                    live.count(&run);
                    if plan.duration.is_none() {
                        progress.inc(1);
                    }
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
        service_us: latency_histogram(),
        service_503_us: latency_histogram(),
        by_status: BTreeMap::new(),
        per_second: Vec::new(),
        accepted_per_second: Vec::new(),
        attempts: 0,
        skipped: 0,
        elapsed: Duration::ZERO,
        sale,
        fates: None,
    };
    let mut seen = std::collections::HashSet::new();
    while let Some(task) = tasks.join_next().await {
        for run in task? {
            report.add(run, &mut seen);
        }
    }
    ticker.abort();
    progress.finish_and_clear();
    report.attempts = offered.load(Ordering::Relaxed);
    report.skipped = skipped.load(Ordering::Relaxed);
    report.elapsed = started.elapsed();
    // Acknowledged units beyond the stock, or a buyer beyond the limit, may be units
    // sold again after an expiry or a cancel: the server tells when each order held them.
    let naive = LoadAudit::new(&report);
    if naive.audit.oversold > 0 || naive.audit.buyers_over_limit > 0 {
        report.fates = Some(read_fates(&target.client, &report.accepted).await);
    }
    Ok(report)
}

/// What became of an acknowledged order, read back from the server after the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fate {
    pub created_at: Millis,
    /// When it ended (expired, cancelled, failed) and gave its units back, if it did.
    pub ended_at: Option<Millis>,
}

/// Orders read back at once.
const FATES_IN_FLIGHT: usize = 32;

/// How long the read-back keeps waiting out the gateway's per-address limit.
const FATES_PATIENCE: Duration = Duration::from_secs(120);

/// Each acknowledged order's fate, from `GET /api/orders/{id}` (3 tries; a `429` is
/// waited out, not counted, for up to `FATES_PATIENCE` in all: read from one address,
/// thousands of orders run into the gateway's `rate_per_ip`). An order the server does
/// not show is left out: the audit counts it as held for the whole run, and says how
/// many it could not read.
async fn read_fates(client: &Client, accepted: &[AcceptedOrder]) -> HashMap<String, Fate> {
    use futures_util::StreamExt;
    let millis = |at: &str| chrono::DateTime::parse_from_rfc3339(at).map(|t| t.timestamp_millis());
    let give_up = Instant::now() + FATES_PATIENCE;
    futures_util::stream::iter(accepted)
        .map(|order| async move {
            let (mut tries, mut pause) = (0, Duration::from_millis(50));
            while tries < 3 {
                let detail = match client.order(&order.order_id).await {
                    Ok(detail) => detail,
                    Err(e) if e.status() == 429 && Instant::now() + pause < give_up => {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(1));
                        continue;
                    }
                    Err(_) => {
                        tries += 1;
                        continue;
                    }
                };
                let Ok(created_at) = millis(&detail.order.created_at) else {
                    return None;
                };
                let ended_at = detail
                    .history
                    .iter()
                    .find(|h| h.status.releases_stock())
                    .and_then(|h| millis(&h.at).ok());
                let fate = Fate {
                    created_at,
                    ended_at,
                };
                return Some((order.order_id.clone(), fate));
            }
            None
        })
        .buffer_unordered(FATES_IN_FLIGHT)
        .filter_map(std::future::ready)
        .collect()
        .await
}

impl LoadReport {
    fn add(&mut self, run: BuyerRun, seen: &mut std::collections::HashSet<String>) {
        for &us in &run.latencies_us {
            self.latency_us.saturating_record(us);
        }
        for (&us, (_, _, status)) in run.service_us.iter().zip(&run.answers) {
            self.service_us.saturating_record(us);
            if *status == 503 {
                self.service_503_us.saturating_record(us);
            }
        }
        self.requests += run.requests;
        self.replay_mismatches += run.mismatch as u64;
        if self.per_second.len() <= run.second {
            self.per_second.resize(run.second + 1, 0);
            self.accepted_per_second.resize(run.second + 1, 0);
        }
        self.per_second[run.second] += run.requests;
        for (user_id, answer, status) in run.answers {
            *self.by_status.entry(status).or_default() += 1;
            match answer {
                Answer::Accepted { order_id, items } => {
                    if seen.insert(order_id.clone()) {
                        self.accepted_per_second[run.second] += 1;
                        self.accepted.push(AcceptedOrder {
                            user_id,
                            order_id,
                            items,
                        });
                    }
                }
                Answer::Probed => {}
                Answer::Refused { code, .. } => *self.rejected.entry(code).or_default() += 1,
                Answer::Transport => *self.rejected.entry("transport".into()).or_default() += 1,
            }
        }
    }
}

/// 0..n in random order, so buyer ids do not arrive sorted.
fn shuffled(n: u64) -> Vec<u64> {
    let mut ids: Vec<u64> = (0..n).collect();
    fastrand::shuffle(&mut ids);
    ids
}

/// Microseconds from 1 µs to 10 minutes, 3 significant digits.
pub(crate) fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

/// `30s`, `2m`, `500ms` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s, 2m or 500ms"))?;
    let seconds = match unit {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(format!("unknown unit {unit:?} (use ms, s, m or h)")),
    };
    if !(seconds > 0.0 && seconds.is_finite()) {
        return Err("the duration must be above zero".into());
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5 days").is_err());
    }
}
