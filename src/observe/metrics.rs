//! Prometheus metrics, named per its conventions (`flashsale_…_total` counters, `_seconds`
//! histograms, base units). Recorded with the `metrics` crate into the exporter's
//! recorder (installed once per process, without its HTTP listener); `crate::exporter`
//! renders it at `GET /metrics`, with the per-sale gauges it reads at scrape time.
//! The stages (engine, bus, worker) record here and import nothing else of `observe`'s
//! readers: this file depends on no other module of the crate.
//!
//! Hot-path handles are looked up once and kept: recording is then an atomic add.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::Method;
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use parking_lot::RwLock;

pub const HTTP_REQUESTS: &str = "flashsale_http_requests_total";
pub const PURCHASES: &str = "flashsale_purchases_total";
pub const PURCHASE_DURATION: &str = "flashsale_purchase_duration_seconds";
pub const STAGE_DURATION: &str = "flashsale_stage_duration_seconds";
pub const IN_FLIGHT: &str = "flashsale_purchases_in_flight";
pub const SHED: &str = "flashsale_shed_total";
pub const RATE_LIMITED: &str = "flashsale_rate_limited_total";
pub const BUS_LAG: &str = "flashsale_bus_lag_orders";
pub const DLQ_SIZE: &str = "flashsale_dlq_orders";
pub const SALE_STOCK: &str = "flashsale_sale_stock_units";
pub const SALE_REMAINING: &str = "flashsale_sale_remaining_units";
pub const SALE_SOLD: &str = "flashsale_sale_sold_units";
pub const LIVE_WATCHERS: &str = "flashsale_live_sales_watched";
pub const LINE_JOINS: &str = "flashsale_line_joins_total";
pub const LINE_TICKETS: &str = "flashsale_line_tickets_total";
pub const LINE_WAITING: &str = "flashsale_line_waiting_tickets";
pub const LINE_WAIT: &str = "flashsale_line_wait_seconds";
pub const LINES_IN_MEMORY: &str = "flashsale_lines_in_memory";

/// Every metric this process may export, for the tests of the dashboards and alerts.
pub const ALL: &[&str] = &[
    HTTP_REQUESTS,
    PURCHASES,
    PURCHASE_DURATION,
    STAGE_DURATION,
    IN_FLIGHT,
    SHED,
    RATE_LIMITED,
    BUS_LAG,
    DLQ_SIZE,
    SALE_STOCK,
    SALE_REMAINING,
    SALE_SOLD,
    LIVE_WATCHERS,
    LINE_JOINS,
    LINE_TICKETS,
    LINE_WAITING,
    LINE_WAIT,
    LINES_IN_MEMORY,
];

/// Latency buckets, 100 µs to 10 s.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Time in a line, 100 ms to an hour (a full match comes before the suffix's).
const LINE_WAIT_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// How often the histograms' recorded samples are folded into their buckets. Until then
/// the exporter keeps every sample (8 bytes, several per purchase); a scrape of `/metrics`
/// folds them too, but with nobody scraping, `serve` grew by every request it ever
/// answered (2.5 MB a minute in the soak, benchmark 11; issue #24).
pub const UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// Installs the recorder (once per process), starts its upkeep (`UPKEEP_EVERY`), and
/// returns the handle that renders it.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .expect("buckets are not empty")
                .set_buckets_for_metric(Matcher::Full(LINE_WAIT.into()), LINE_WAIT_BUCKETS)
                .expect("buckets are not empty")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was installed already: /metrics is empty");
            }
            describe();
            register_at_zero();
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_EVERY);
                        upkeep.run_upkeep();
                    }
                })
                .expect("a thread for the metrics upkeep");
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by route, method and status"
    );
    describe_counter!(
        PURCHASES,
        "Purchases answered, by outcome (accepted or the refusal code)"
    );
    describe_histogram!(
        PURCHASE_DURATION,
        Unit::Seconds,
        "Purchase answer time, from the request head to the answer"
    );
    describe_histogram!(
        STAGE_DURATION,
        Unit::Seconds,
        "Time in each stage of a purchase: gate, bus, store_commit"
    );
    describe_gauge!(IN_FLIGHT, "Purchases being decided right now");
    describe_counter!(
        SHED,
        "Requests refused by overload protection, by reason (overloaded, timeout)"
    );
    describe_counter!(RATE_LIMITED, "Requests refused by a rate limit");
    describe_gauge!(
        BUS_LAG,
        "Orders on the bus no worker has stored yet (Kafka)"
    );
    describe_gauge!(
        DLQ_SIZE,
        "Orders in the dead-letter topic not replayed yet (Kafka)"
    );
    describe_gauge!(SALE_STOCK, "A sale's stock, in units");
    describe_gauge!(SALE_REMAINING, "A sale's units the gate still sells");
    describe_gauge!(
        SALE_SOLD,
        "A sale's units held by orders, according to the gate or to the store (source)"
    );
    describe_gauge!(LIVE_WATCHERS, "Sales with live watchers on this gateway");
    describe_counter!(LINE_JOINS, "Tickets that joined a sale's line (stored)");
    describe_counter!(
        LINE_TICKETS,
        "Tickets that left a line, by outcome: success (an order), refused, timeout, closed"
    );
    describe_gauge!(LINE_WAITING, "Tickets waiting in the lines of this process");
    describe_gauge!(
        LINES_IN_MEMORY,
        "Sales' lines held in memory (a line leaves once its sale ended and nobody waits)"
    );
    describe_histogram!(
        LINE_WAIT,
        Unit::Seconds,
        "Time in line, from the join to the ticket's decision, timeout or close"
    );
}

/// Series that exist before their first event, so that dashboards and alerts see 0,
/// not "no data".
fn register_at_zero() {
    for reason in ["overloaded", "timeout"] {
        metrics::counter!(SHED, "reason" => reason).increment(0);
    }
    metrics::counter!(RATE_LIMITED).increment(0);
    metrics::counter!(PURCHASES, "outcome" => "accepted").increment(0);
    metrics::gauge!(IN_FLIGHT).set(0.0);
    metrics::gauge!(BUS_LAG).set(0.0);
    metrics::gauge!(DLQ_SIZE).set(0.0);
    metrics::gauge!(LIVE_WATCHERS).set(0.0);
    metrics::counter!(LINE_JOINS).increment(0);
    for outcome in LineOutcome::ALL {
        metrics::counter!(LINE_TICKETS, "outcome" => outcome.label()).increment(0);
    }
    metrics::gauge!(LINE_WAITING).set(0.0);
    metrics::gauge!(LINES_IN_MEMORY).set(0.0);
}

/// How a ticket left a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineOutcome {
    /// Decided with an order.
    Success,
    /// Decided with a refusal (`sold_out`, `limit_reached`, …).
    Refused,
    Timeout,
    /// The sale sold out or ended while it waited.
    Closed,
}

impl LineOutcome {
    const ALL: [LineOutcome; 4] = [
        LineOutcome::Success,
        LineOutcome::Refused,
        LineOutcome::Timeout,
        LineOutcome::Closed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            LineOutcome::Success => "success",
            LineOutcome::Refused => "refused",
            LineOutcome::Timeout => "timeout",
            LineOutcome::Closed => "closed",
        }
    }
}

/// A ticket was stored in a line.
pub fn line_joined() {
    metrics::counter!(LINE_JOINS).increment(1);
    tally().line.joined.fetch_add(1, Ordering::Relaxed);
}

/// Tickets came to wait in a line (`n` > 0: joined, restored) or stopped waiting.
pub fn line_waiting(n: i64) {
    metrics::gauge!(LINE_WAITING).increment(n as f64);
    tally().line.waiting.fetch_add(n, Ordering::Relaxed);
}

/// A sale's line came into memory (+1) or left it (-1).
pub fn lines_in_memory(n: i64) {
    metrics::gauge!(LINES_IN_MEMORY).increment(n as f64);
}

/// A ticket left its line after `waited`.
pub fn line_ended(outcome: LineOutcome, waited: Duration) {
    metrics::counter!(LINE_TICKETS, "outcome" => outcome.label()).increment(1);
    metrics::histogram!(LINE_WAIT).record(waited);
    tally().line.ended[outcome as usize].fetch_add(1, Ordering::Relaxed);
}

/// The stages of a purchase, each timed on its own.
#[derive(Debug, Clone, Copy)]
pub enum Stage {
    Gate,
    Bus,
    StoreCommit,
}

pub fn stage(stage: Stage) -> &'static Histogram {
    static STAGES: OnceLock<[Histogram; 3]> = OnceLock::new();
    let stages = STAGES.get_or_init(|| {
        ["gate", "bus", "store_commit"].map(|s| metrics::histogram!(STAGE_DURATION, "stage" => s))
    });
    &stages[stage as usize]
}

/// Records how a purchase was answered and how long it took.
pub fn purchase_answered(outcome: &'static str, took: Duration) {
    static DURATION: OnceLock<Histogram> = OnceLock::new();
    DURATION
        .get_or_init(|| metrics::histogram!(PURCHASE_DURATION))
        .record(took);
    let tally = tally();
    let bucket = BUCKETS
        .iter()
        .position(|&bound| took.as_secs_f64() <= bound)
        .unwrap_or(BUCKETS.len());
    tally.buckets[bucket].fetch_add(1, Ordering::Relaxed);
    if let Some((counter, count)) = tally.outcomes.read().get(outcome) {
        counter.increment(1);
        count.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut outcomes = tally.outcomes.write();
    let (counter, count) = outcomes.entry(outcome).or_insert_with(|| {
        (
            metrics::counter!(PURCHASES, "outcome" => outcome),
            AtomicU64::new(0),
        )
    });
    counter.increment(1);
    count.fetch_add(1, Ordering::Relaxed);
}

/// Counts a refusal of overload protection or of a rate limit, by its code.
pub fn refused(code: &str) {
    match code {
        "overloaded" | "timeout" => {
            metrics::counter!(SHED, "reason" => code.to_string()).increment(1)
        }
        "rate_limited" => metrics::counter!(RATE_LIMITED).increment(1),
        _ => {}
    }
}

/// `HTTP_REQUESTS` by (route, method, status): counters looked up once.
#[derive(Default)]
struct RequestCounters(RwLock<HashMap<String, Vec<CounterOf>>>);

/// A counter of `HTTP_REQUESTS` and the method and status it counts (of one route).
type CounterOf = (Method, u16, Counter);

impl RequestCounters {
    fn count(&self, route: &str, method: &Method, status: u16) {
        if let Some(by) = self.0.read().get(route)
            && let Some((_, _, counter)) = by.iter().find(|(m, s, _)| m == method && *s == status)
        {
            counter.increment(1);
            return;
        }
        let counter = metrics::counter!(HTTP_REQUESTS, "route" => route.to_string(),
            "method" => method.to_string(), "status" => status.to_string());
        counter.increment(1);
        self.0.write().entry(route.to_string()).or_default().push((
            method.clone(),
            status,
            counter,
        ));
    }
}

/// Counts an HTTP answer by its route (the router's pattern, not the path: ids do not
/// make new series), method and status.
pub fn request_answered(route: &str, method: &Method, status: u16) {
    static COUNTERS: OnceLock<RequestCounters> = OnceLock::new();
    COUNTERS
        .get_or_init(Default::default)
        .count(route, method, status);
    tally().requests.fetch_add(1, Ordering::Relaxed);
}

/// The same counts as plain numbers, for this process's own readers (the status line
/// of `serve`): no Prometheus text to parse back.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    /// Purchases by outcome, with the Prometheus counter of each (looked up once).
    outcomes: RwLock<HashMap<&'static str, (Counter, AtomicU64)>>,
    /// Purchases per latency bucket (`BUCKETS`, then one past the last bound).
    buckets: [AtomicU64; BUCKETS.len() + 1],
    line: LineTally,
}

#[derive(Default)]
struct LineTally {
    joined: AtomicU64,
    waiting: AtomicI64,
    /// By `LineOutcome`.
    ended: [AtomicU64; 4],
}

fn tally() -> &'static Tally {
    static TALLY: OnceLock<Tally> = OnceLock::new();
    TALLY.get_or_init(Default::default)
}

/// What this process answered since it started.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Totals {
    pub requests: u64,
    /// Purchases by outcome (`accepted` or the refusal code).
    pub outcomes: BTreeMap<&'static str, u64>,
    /// Purchases answered within each bound (seconds), cumulative; the last bound is
    /// infinite.
    pub buckets: Vec<(f64, u64)>,
    pub line: LineTotals,
}

/// The lines of this process: tickets joined, waiting, and ended by outcome.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LineTotals {
    pub joined: u64,
    pub waiting: i64,
    pub success: u64,
    pub refused: u64,
    pub timeout: u64,
    pub closed: u64,
}

/// Reads the totals (each counter on its own: a snapshot that is near, not exact).
pub fn totals() -> Totals {
    let tally = tally();
    let mut cumulative = 0;
    let buckets = BUCKETS
        .iter()
        .copied()
        .chain([f64::INFINITY])
        .zip(&tally.buckets)
        .map(|(bound, n)| {
            cumulative += n.load(Ordering::Relaxed);
            (bound, cumulative)
        })
        .collect();
    Totals {
        requests: tally.requests.load(Ordering::Relaxed),
        outcomes: (tally.outcomes.read().iter())
            .map(|(outcome, (_, n))| (*outcome, n.load(Ordering::Relaxed)))
            .collect(),
        buckets,
        line: LineTotals {
            joined: tally.line.joined.load(Ordering::Relaxed),
            waiting: tally.line.waiting.load(Ordering::Relaxed),
            success: tally.line.ended[LineOutcome::Success as usize].load(Ordering::Relaxed),
            refused: tally.line.ended[LineOutcome::Refused as usize].load(Ordering::Relaxed),
            timeout: tally.line.ended[LineOutcome::Timeout as usize].load(Ordering::Relaxed),
            closed: tally.line.ended[LineOutcome::Closed as usize].load(Ordering::Relaxed),
        },
    }
}

/// Times a stage: `let _t = StageTimer::start(Stage::Gate);`, recorded when dropped.
pub struct StageTimer {
    stage: Stage,
    started: Instant,
}

impl StageTimer {
    pub fn start(stage: Stage) -> StageTimer {
        StageTimer {
            stage,
            started: Instant::now(),
        }
    }
}

impl Drop for StageTimer {
    fn drop(&mut self) {
        stage(self.stage).record(self.started.elapsed());
    }
}
