//! Load generator: many buyers racing for a sale over real HTTP, some retrying or
//! double-clicking with the same Idempotency-Key. `flashsale load` and `demo` run it;
//! `report.rs` turns its report into one self-contained HTML page.

mod report;

pub use report::write_html;

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
}

impl LoadPlan {
    fn connections(&self) -> usize {
        match self.schedule {
            Schedule::Closed { connections } => connections.max(1),
            Schedule::Open { rate } => (rate as usize / 10).clamp(16, 1024),
        }
    }
}

/// The answer to one request, as the buyer saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Accepted {
        order_id: String,
        items: BTreeMap<String, u32>,
    },
    /// A 2xx answer to a probe (`LoadPlan::probe`).
    Probed,
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
    pub items: BTreeMap<String, u32>,
}

impl AcceptedOrder {
    pub fn units(&self) -> u32 {
        self.items.values().sum()
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
    /// Answers by HTTP status (`0`: no answer).
    pub by_status: BTreeMap<u16, u64>,
    /// Requests answered in each second of the run.
    pub per_second: Vec<u64>,
    /// Orders acknowledged in each second of the run.
    pub accepted_per_second: Vec<u64>,
    /// Attempts offered (open loop: what the schedule asked for, answered or not).
    pub attempts: u64,
    pub elapsed: Duration,
    /// The sale as `GET /api/sales/{id}` showed it before the run (none for a probe).
    pub sale: Option<serde_json::Value>,
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
    answers: Vec<(String, Answer, u16)>,
    mismatch: bool,
    /// Second of the run in which the attempt ended.
    second: usize,
}

/// What every attempt sends, worked out once before the run.
struct Target {
    url: String,
    probe: bool,
    /// Item ids, when the sale has several (attempts then buy a set of them).
    items: Vec<String>,
    per_user_limit: u32,
}

impl Target {
    async fn new(
        client: &reqwest::Client,
        plan: &LoadPlan,
    ) -> anyhow::Result<(Target, Option<serde_json::Value>)> {
        let base = plan.base_url.trim_end_matches('/');
        if let Some(path) = &plan.probe {
            let target = Target {
                url: format!("{base}/{}", path.trim_start_matches('/')),
                probe: true,
                items: Vec::new(),
                per_user_limit: 1,
            };
            return Ok((target, None));
        }
        let response = client
            .get(format!("{base}/api/sales/{}", plan.sale_id))
            .send()
            .await?;
        if !response.status().is_success() {
            anyhow::bail!("GET sale {}: {}", plan.sale_id, response.status());
        }
        let sale: serde_json::Value = response.json().await?;
        let items: Vec<String> = sale["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|i| i["id"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let target = Target {
            url: format!("{base}/api/sales/{}/purchase", plan.sale_id),
            probe: false,
            items: if items.len() > 1 { items } else { Vec::new() },
            per_user_limit: sale["per_user_limit"].as_u64().unwrap_or(1) as u32,
        };
        Ok((target, Some(sale)))
    }

    /// The body of one attempt: a quantity, or one unit each of a random set of items.
    fn body(&self, user: &str, quantity: u32) -> serde_json::Value {
        if self.items.is_empty() {
            return json!({ "user_id": user, "quantity": quantity });
        }
        let most = self.items.len().min(self.per_user_limit.max(1) as usize);
        let count = fastrand::usize(1..=most);
        let items: serde_json::Map<String, serde_json::Value> =
            fastrand::choose_multiple(self.items.iter(), count)
                .into_iter()
                .map(|id| (id.clone(), json!(1)))
                .collect();
        json!({ "user_id": user, "items": items })
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

pub async fn run(plan: LoadPlan) -> anyhow::Result<LoadReport> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(plan.connections() * 2)
        .timeout(Duration::from_secs(30))
        .build()?;
    let (target, sale) = Target::new(&client, &plan).await?;
    let progress = progress_bar(&plan);
    let live = Arc::new(Live::default());
    let plan = Arc::new(plan);
    let target = Arc::new(target);
    let order = Arc::new(shuffled(plan.buyers.max(1)));
    let user_of = move |i: u64| format!("buyer-{}", order[(i % order.len() as u64) as usize]);
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

    match plan.schedule {
        Schedule::Closed { connections } => {
            for _ in 0..connections.max(1) {
                let (client, target, plan, next, user_of, progress, live) = (
                    client.clone(),
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
                        let run = buy(&client, &target, &plan, user_of(i), None, started).await;
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
            while let Some((i, due)) = due_rx.recv().await {
                offered.fetch_add(1, Ordering::Relaxed);
                let (client, target, plan, user, progress, live) = (
                    client.clone(),
                    target.clone(),
                    plan.clone(),
                    user_of(i),
                    progress.clone(),
                    live.clone(),
                );
                tasks.spawn(async move {
                    let run = buy(&client, &target, &plan, user, Some(due), started).await;
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
        by_status: BTreeMap::new(),
        per_second: Vec::new(),
        accepted_per_second: Vec::new(),
        attempts: 0,
        elapsed: Duration::ZERO,
        sale,
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
    report.elapsed = started.elapsed();
    Ok(report)
}

impl LoadReport {
    fn add(&mut self, run: BuyerRun, seen: &mut std::collections::HashSet<String>) {
        for &us in &run.latencies_us {
            self.latency_us.saturating_record(us);
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

/// One buyer's attempt: a single request, a retry after the answer, or a double click.
async fn buy(
    client: &reqwest::Client,
    target: &Target,
    plan: &LoadPlan,
    user: String,
    due: Option<Instant>,
    started: Instant,
) -> BuyerRun {
    let body = (!target.probe).then(|| target.body(&user, plan.quantity));
    let body = body.as_ref();
    let sent_at = Instant::now();
    let roll = fastrand::f64();
    let key = uuid::Uuid::new_v4().to_string();
    let (answers, mismatch) = if target.probe {
        (vec![send(client, target, body, None).await], false)
    } else if roll < plan.double_click_ratio {
        let (a, b) = tokio::join!(
            send(client, target, body, Some(&key)),
            send(client, target, body, Some(&key))
        );
        let mismatch = !consistent(&a.0, &b.0);
        (vec![a, b], mismatch)
    } else if roll < plan.double_click_ratio + plan.retry_ratio {
        let first = send(client, target, body, Some(&key)).await;
        let again = send(client, target, body, Some(&key)).await;
        let mismatch = !consistent(&first.0, &again.0);
        (vec![first, again], mismatch)
    } else {
        let key = fastrand::bool().then_some(key.as_str());
        (vec![send(client, target, body, key).await], false)
    };
    // On the open loop, the first request's wait for its turn counts as latency.
    let latencies_us = answers
        .iter()
        .enumerate()
        .map(|(i, (_, took, _))| match due {
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
            .map(|(answer, _, status)| (user.clone(), answer, status))
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
        Answer::Accepted { .. } | Answer::Probed => false,
    };
    transient(a) || transient(b) || a == b
}

/// One request: its answer, how long it took and its HTTP status (0: none).
async fn send(
    client: &reqwest::Client,
    target: &Target,
    body: Option<&serde_json::Value>,
    key: Option<&str>,
) -> (Answer, Duration, u16) {
    let started = Instant::now();
    let mut request = match body {
        Some(body) => client.post(&target.url).json(body),
        None => client.get(&target.url),
    };
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let (answer, status) = match request.send().await {
        Err(_) => (Answer::Transport, 0),
        Ok(response) => {
            let status = response.status().as_u16();
            let answer = if target.probe {
                match response.bytes().await {
                    Ok(_) if (200..300).contains(&status) => Answer::Probed,
                    Ok(_) => Answer::Refused {
                        status,
                        code: format!("http_{status}"),
                    },
                    Err(_) => Answer::Transport,
                }
            } else {
                match response.json::<serde_json::Value>().await {
                    Err(_) => Answer::Transport,
                    Ok(v) if status == 202 => Answer::Accepted {
                        order_id: v["id"].as_str().unwrap_or_default().to_string(),
                        items: serde_json::from_value(v["items"].clone()).unwrap_or_default(),
                    },
                    Ok(v) => Answer::Refused {
                        status,
                        code: v["code"].as_str().unwrap_or("unknown").to_string(),
                    },
                }
            };
            (answer, status)
        }
    };
    (answer, started.elapsed(), status)
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
    /// Attempts offered (a retry or a double click is part of its attempt).
    pub attempts: u64,
    /// Offered attempts per second (open loop only).
    pub offered_rps: Option<f64>,
    pub throughput_rps: f64,
    pub elapsed_s: f64,
    pub accepted: u64,
    /// Units acknowledged with 202.
    pub acknowledged: u64,
    pub rejected: BTreeMap<String, u64>,
    /// Answers by HTTP status (`0`: no answer).
    pub by_status: BTreeMap<u16, u64>,
    pub latency_ms: LatencySummary,
    /// Requests answered in each second of the run.
    pub per_second: Vec<u64>,
    /// Orders acknowledged in each second of the run.
    pub accepted_per_second: Vec<u64>,
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
    /// Units acknowledged beyond an item's stock, summed over the items.
    pub oversold: u64,
    /// Buyers acknowledged more units than the per-user limit.
    pub buyers_over_limit: u64,
    pub replay_mismatches: u64,
    pub ok: bool,
}

impl Audit {
    fn new(report: &LoadReport) -> Audit {
        let none = serde_json::Value::Null;
        let sale = report.sale.as_ref().unwrap_or(&none);
        let limit = sale["per_user_limit"].as_u64().unwrap_or(u64::MAX);
        let item_stock: BTreeMap<&str, u64> = sale["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| Some((i["id"].as_str()?, i["stock"].as_u64()?)))
            .collect();
        let mut per_item: BTreeMap<&str, u64> = BTreeMap::new();
        let mut per_buyer: std::collections::HashMap<&str, u64> = Default::default();
        for a in &report.accepted {
            for (item, units) in &a.items {
                *per_item.entry(item).or_default() += *units as u64;
            }
            *per_buyer.entry(&a.user_id).or_default() += a.units() as u64;
        }
        let oversold = per_item
            .iter()
            .map(|(item, &sold)| sold.saturating_sub(item_stock.get(item).copied().unwrap_or(0)))
            .sum();
        let buyers_over_limit = per_buyer.values().filter(|&&u| u > limit).count() as u64;
        Audit {
            stock: sale["stock"].as_u64().unwrap_or(0),
            oversold,
            buyers_over_limit,
            replay_mismatches: report.replay_mismatches,
            ok: oversold == 0 && buyers_over_limit == 0 && report.replay_mismatches == 0,
        }
    }
}

impl LatencySummary {
    pub fn of(report: &LoadReport) -> LatencySummary {
        let q = |x| report.latency_ms(x);
        LatencySummary {
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: report.latency_us.max() as f64 / 1000.0,
        }
    }
}

impl Summary {
    pub fn new(plan: &LoadPlan, report: &LoadReport) -> Summary {
        Summary {
            requests: report.requests,
            attempts: report.attempts,
            offered_rps: match plan.schedule {
                Schedule::Open { rate } => Some(rate),
                Schedule::Closed { .. } => None,
            },
            throughput_rps: report.throughput_rps(),
            elapsed_s: report.elapsed.as_secs_f64(),
            accepted: report.accepted.len() as u64,
            acknowledged: report.accepted.iter().map(|a| a.units() as u64).sum(),
            rejected: report.rejected.clone(),
            by_status: report.by_status.clone(),
            latency_ms: LatencySummary::of(report),
            per_second: report.per_second.clone(),
            accepted_per_second: report.accepted_per_second.clone(),
            audit: Audit::new(report),
        }
    }
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

    fn report_with(sale: serde_json::Value, accepted: Vec<(&str, &[(&str, u32)])>) -> LoadReport {
        LoadReport {
            requests: accepted.len() as u64,
            accepted: accepted
                .into_iter()
                .enumerate()
                .map(|(i, (user, items))| AcceptedOrder {
                    user_id: user.into(),
                    order_id: format!("o{i}"),
                    items: items.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                })
                .collect(),
            rejected: BTreeMap::new(),
            replay_mismatches: 0,
            latency_us: latency_histogram(),
            by_status: BTreeMap::new(),
            per_second: vec![],
            accepted_per_second: vec![],
            attempts: 0,
            elapsed: Duration::from_secs(1),
            sale: Some(sale),
        }
    }

    #[test]
    fn the_audit_counts_oversold_units_per_item_and_buyers_over_the_limit() {
        let sale = json!({"stock": 3, "per_user_limit": 2, "items": [
            {"id": "a", "stock": 1}, {"id": "b", "stock": 2}]});
        let fine = report_with(
            sale.clone(),
            vec![("u1", &[("a", 1), ("b", 1)]), ("u2", &[("b", 1)])],
        );
        assert!(Audit::new(&fine).ok);
        // Three units in all (not above the stock of 3), but item a sold twice.
        let oversold = report_with(
            sale.clone(),
            vec![("u1", &[("a", 1)]), ("u2", &[("a", 1), ("b", 1)])],
        );
        let audit = Audit::new(&oversold);
        assert_eq!((audit.oversold, audit.ok), (1, false));
        let greedy = report_with(
            sale,
            vec![("u1", &[("a", 1), ("b", 1)]), ("u1", &[("b", 1)])],
        );
        let audit = Audit::new(&greedy);
        assert_eq!((audit.buyers_over_limit, audit.ok), (1, false));
    }
}
