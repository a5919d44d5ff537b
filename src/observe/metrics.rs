//! Prometheus metrics, named per its conventions (`flashsale_…_total` counters, `_seconds`
//! histograms, base units). Recorded with the `metrics` crate into the exporter's
//! recorder (installed once per process, without its HTTP listener) and rendered by
//! `GET /metrics`. Per-sale gauges (stock, remaining, units sold according to the gate
//! and to the store, so that I1 and I4 can be alerted on) are read at scrape time.
//!
//! Hot-path handles are looked up once and kept: recording is then an atomic add.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::MatchedPath;
use axum::http::{Method, Request};
use axum::response::Response;
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
];

/// Latency buckets, 100 µs to 10 s.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Installs the recorder (once per process) and returns the handle that renders it.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .expect("buckets are not empty")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was installed already: /metrics is empty");
            }
            describe();
            register_at_zero();
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
    static OUTCOMES: OnceLock<RwLock<HashMap<&'static str, Counter>>> = OnceLock::new();
    let outcomes = OUTCOMES.get_or_init(Default::default);
    if let Some(counter) = outcomes.read().get(outcome) {
        counter.increment(1);
        return;
    }
    outcomes
        .write()
        .entry(outcome)
        .or_insert_with(|| metrics::counter!(PURCHASES, "outcome" => outcome))
        .increment(1);
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
struct RequestCounters(RwLock<HashMap<String, Vec<(Method, u16, Counter)>>>);

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

fn request_counters() -> &'static RequestCounters {
    static COUNTERS: OnceLock<RequestCounters> = OnceLock::new();
    COUNTERS.get_or_init(Default::default)
}

/// A route layer counting every answer by its route (the router's pattern, not the
/// path: ids do not make new series), method and status.
#[derive(Clone, Copy, Default)]
pub struct CountRequestsLayer;

impl<S> tower::Layer<S> for CountRequestsLayer {
    type Service = CountRequests<S>;
    fn layer(&self, inner: S) -> CountRequests<S> {
        CountRequests { inner }
    }
}

#[derive(Clone)]
pub struct CountRequests<S> {
    inner: S,
}

impl<S, B> tower::Service<Request<B>> for CountRequests<S>
where
    S: tower::Service<Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Counted<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let route = request.extensions().get::<MatchedPath>().cloned();
        let method = request.method().clone();
        // A purchase is timed from its head's arrival (queueing included).
        let started = request
            .extensions()
            .get::<crate::protect::Arrival>()
            .map_or_else(Instant::now, |a| a.at);
        Counted {
            inner: self.inner.call(request),
            route,
            method,
            started,
        }
    }
}

pin_project_lite::pin_project! {
    pub struct Counted<F> {
        #[pin]
        inner: F,
        route: Option<MatchedPath>,
        method: Method,
        started: Instant,
    }
}

/// The route whose answers are purchase outcomes.
pub const PURCHASE_ROUTE: &str = "/api/sales/{id}/purchase";

impl<F, E> std::future::Future for Counted<F>
where
    F: std::future::Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answer = std::task::ready!(this.inner.poll(cx));
        if let Ok(response) = &answer {
            let route = this.route.as_ref().map_or("unmatched", |r| r.as_str());
            let status = response.status().as_u16();
            request_counters().count(route, this.method, status);
            if route == PURCHASE_ROUTE {
                let outcome = match response.extensions().get::<crate::api::ProblemCode>() {
                    Some(code) => code.0,
                    None if status == 202 => "accepted",
                    None => "other",
                };
                purchase_answered(outcome, this.started.elapsed());
            }
        }
        Poll::Ready(answer)
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

/// What `GET /metrics` renders: the recorder's handle, plus gauges read at scrape time.
pub struct Exporter {
    handle: PrometheusHandle,
    /// How many sales get per-sale gauges (the most recent ones).
    sales: usize,
}

impl Exporter {
    pub fn new() -> Exporter {
        Exporter {
            handle: install(),
            sales: 100,
        }
    }

    /// Reads the gauges that are states, not events, then renders everything.
    pub async fn render(&self, state: &crate::api::AppState) -> String {
        metrics::gauge!(IN_FLIGHT).set(state.overload.in_flight() as f64);
        metrics::gauge!(LIVE_WATCHERS).set(state.feeds.watched() as f64);
        if let Some(pending) = state.engine.bus_pending() {
            metrics::gauge!(BUS_LAG).set(pending as f64);
            metrics::gauge!(DLQ_SIZE).set(0.0);
        }
        match state.engine.recent_sales(self.sales).await {
            Ok(sales) => {
                for sale in sales {
                    let id = sale.sale.id.clone();
                    let stock = sale.sale.total_stock();
                    let remaining: u64 = sale.remaining.iter().map(|&r| r as u64).sum();
                    metrics::gauge!(SALE_STOCK, "sale" => id.clone()).set(stock as f64);
                    metrics::gauge!(SALE_REMAINING, "sale" => id.clone()).set(remaining as f64);
                    metrics::gauge!(SALE_SOLD, "sale" => id.clone(), "source" => "gate")
                        .set(stock.saturating_sub(remaining) as f64);
                    match state.engine.sold_in_store(&id).await {
                        Ok(sold) => metrics::gauge!(SALE_SOLD, "sale" => id, "source" => "store")
                            .set(sold as f64),
                        Err(e) => tracing::warn!(sale = %id, error = %e, "store counters not read"),
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "sales not read for /metrics"),
        }
        self.handle.render()
    }
}

impl Default for Exporter {
    fn default() -> Self {
        Self::new()
    }
}

/// Reads the Kafka bus's lag and dead letters every `every` (a scrape must not wait on
/// the broker), until `stop`.
pub async fn watch_bus(
    bus: crate::bus::BusSettings,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    if bus.url == crate::bus::BusUrl::Memory {
        return;
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match crate::bus::consumer_lag(&bus).await {
            Ok(Some(lag)) => metrics::gauge!(BUS_LAG).set(lag as f64),
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "bus lag not read"),
        }
        match crate::worker::dead_letters(&bus, false).await {
            Ok(letters) => metrics::gauge!(DLQ_SIZE).set(letters.letters.len() as f64),
            Err(e) => tracing::debug!(error = %e, "dead letters not read"),
        }
    }
}
