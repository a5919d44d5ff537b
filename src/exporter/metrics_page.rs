//! `GET /metrics`: the recorder's counters and histograms, plus the gauges that are
//! states, not events (purchases in flight, watchers, per sale the stock, the remaining
//! units and the units sold according to the gate and to the store, so that I1 and I4
//! can be alerted on), given as plain values by the caller at scrape time.

use metrics_exporter_prometheus::PrometheusHandle;

use crate::observe::metrics::{
    BUS_LAG, DLQ_SIZE, IN_FLIGHT, LIVE_WATCHERS, SALE_REMAINING, SALE_SOLD, SALE_STOCK, install,
};

/// One sale's gauges.
#[derive(Debug, Clone)]
pub struct SaleGauges {
    pub id: String,
    pub stock: u64,
    pub remaining: u64,
    /// Units held by orders according to the store; `None` when it could not be read.
    pub sold_in_store: Option<u64>,
}

/// The gauges read at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    pub in_flight: usize,
    pub live_watchers: usize,
    /// Orders on their way to the store through this process's bus, if it can tell
    /// (the in-process bus); the Kafka bus's lag comes from `watch_bus`.
    pub bus_pending: Option<usize>,
    pub sales: Vec<SaleGauges>,
}

/// Renders the page: the recorder's handle and the gauges it is given.
pub struct MetricsPage {
    handle: PrometheusHandle,
}

impl MetricsPage {
    /// How many sales get per-sale gauges (the most recent ones).
    pub const SALES: usize = 100;

    pub fn new() -> MetricsPage {
        MetricsPage { handle: install() }
    }

    pub fn render(&self, gauges: Gauges) -> String {
        metrics::gauge!(IN_FLIGHT).set(gauges.in_flight as f64);
        metrics::gauge!(LIVE_WATCHERS).set(gauges.live_watchers as f64);
        if let Some(pending) = gauges.bus_pending {
            metrics::gauge!(BUS_LAG).set(pending as f64);
            metrics::gauge!(DLQ_SIZE).set(0.0);
        }
        for sale in gauges.sales {
            let id = sale.id;
            metrics::gauge!(SALE_STOCK, "sale" => id.clone()).set(sale.stock as f64);
            metrics::gauge!(SALE_REMAINING, "sale" => id.clone()).set(sale.remaining as f64);
            metrics::gauge!(SALE_SOLD, "sale" => id.clone(), "source" => "gate")
                .set(sale.stock.saturating_sub(sale.remaining) as f64);
            if let Some(sold) = sale.sold_in_store {
                metrics::gauge!(SALE_SOLD, "sale" => id, "source" => "store").set(sold as f64);
            }
        }
        self.handle.render()
    }
}

impl Default for MetricsPage {
    fn default() -> Self {
        Self::new()
    }
}
