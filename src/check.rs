//! `flashsale check`: reconciles the gate, the bus and the store, and names every
//! violation of the invariants (`crate::audit`) with the orders involved.

use std::collections::HashMap;

use serde::Serialize;

use crate::audit::{Audit, Holding, Invariant, SaleFacts};
use crate::bus::{self, BusError};
use crate::client::{Client, ClientError};
use crate::config::Config;
use crate::domain::{Millis, Order, OrderStatus, Sale, now_millis};
use crate::gate::{self, GateError, GateUrl, StockGate};
use crate::store::{self, OrderStore, StoreError};

/// What the gate says of a sale: remaining units per item, or why it cannot tell.
pub type GateView = Result<Vec<u32>, String>;

/// How late an unpaid order may be before its reservation counts as leaked (I6):
/// the sweeper runs every second or so.
const EXPIRY_GRACE_MS: Millis = 30_000;

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Gate(#[from] GateError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("no sale {0}")]
    NoSale(String),
}

#[derive(Debug, Default, Clone)]
pub struct CheckOptions {
    /// Only this sale (default: every sale).
    pub sale: Option<String>,
    /// A running gateway, to read an in-process gate through its API.
    pub url: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub sales: usize,
    pub orders: usize,
    /// Orders acknowledged to their buyer, then refused by the store: kept as `failed`
    /// with the reason, their units given back (compensated, not a violation).
    pub failed: usize,
    /// Messages on the bus the workers have not stored yet (None: not measurable here).
    pub bus_lag: Option<i64>,
    pub notes: Vec<String>,
    #[serde(flatten)]
    pub audit: Audit,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.audit.ok()
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for v in &self.audit.violations {
            out.push_str(&format!(
                "VIOLATION {:?} sale {}: {} orders: [{}]\n",
                v.invariant,
                v.sale_id,
                v.detail,
                v.orders.join(", ")
            ));
        }
        for note in &self.notes {
            out.push_str(&format!("note: {note}\n"));
        }
        let lag = self
            .bus_lag
            .map(|l| l.to_string())
            .unwrap_or_else(|| "n/a".into());
        out.push_str(&format!(
            "checked {} sales, {} orders ({} failed and compensated), bus lag {lag}: {}",
            self.sales,
            self.orders,
            self.failed,
            if self.ok() { "OK" } else { "VIOLATIONS FOUND" }
        ));
        out
    }
}

/// Checks every sale (or one) of the deployment `config` describes.
pub async fn run(config: &Config, options: &CheckOptions) -> Result<Report, CheckError> {
    let store = store::connect(&config.store).await?;
    let sales = match &options.sale {
        Some(id) => vec![
            store
                .get_sale(id)
                .await?
                .ok_or_else(|| CheckError::NoSale(id.clone()))?,
        ],
        None => store.list_sales().await?,
    };
    let mut report = Report {
        bus_lag: bus::consumer_lag(&config.bus_settings()).await?,
        ..Report::default()
    };
    if report.bus_lag.is_none() {
        report
            .notes
            .push("in-process bus: assumed drained (it drains within milliseconds)".into());
    }
    let quiescent = report.bus_lag.unwrap_or(0) == 0;
    let gate: Option<std::sync::Arc<dyn StockGate>> = match (&options.url, &config.gate) {
        (None, GateUrl::Redis(_)) => Some(
            gate::connect(
                &config.gate,
                std::time::Duration::from_secs(5),
                config.key_policy(),
                gate::ReplicaAcks::NONE, // it only reads
            )
            .await?,
        ),
        _ => None,
    };
    for sale in &sales {
        let view = match (&options.url, &gate) {
            (Some(url), _) => gate_over_http(url, sale).await,
            (None, Some(gate)) => gate.remaining(sale).await.map_err(|e| e.to_string()),
            (None, None) => Err("in-process gate: give --url of the running gateway".into()),
        };
        check_sale(store.as_ref(), sale, view, quiescent, &mut report).await?;
    }
    Ok(report)
}

/// Checks one sale against the invariants. `gate` is what the gate holds (if it could
/// be read) and `quiescent` whether the bus is drained (the gate and the store can only
/// be compared then).
pub async fn check_sale(
    store: &dyn OrderStore,
    sale: &Sale,
    gate: GateView,
    quiescent: bool,
    report: &mut Report,
) -> Result<(), StoreError> {
    let orders = store.sale_orders(&sale.id).await?;
    let releasing = store
        .pending_releases(Some(&sale.id), None, i64::MAX)
        .await?;
    let counters: HashMap<String, i64> = store.sold_counters(&sale.id).await?.into_iter().collect();
    report.sales += 1;
    report.orders += orders.len();
    for order in orders.iter().filter(|o| o.status == OrderStatus::Failed) {
        report.failed += 1;
        let reason = store.order_failure(&order.id).await?.unwrap_or_default();
        report.notes.push(format!(
            "sale {}: order {} was accepted, then refused by the store ({reason}); stored as \
             failed, its units given back",
            sale.id, order.id
        ));
    }
    let facts = SaleFacts::from(sale);
    let live: Vec<&Order> = orders.iter().filter(|o| o.status.holds_stock()).collect();
    let mut audit = Audit::default();
    audit.no_oversell(&facts, live.iter().map(|o| Holding::from(*o)));
    // I1 also: the store's own counter agrees with its rows.
    for item in &sale.items {
        let holders: Vec<String> = live
            .iter()
            .filter(|o| o.items.contains_key(&item.id))
            .map(|o| o.id.clone())
            .collect();
        let units: i64 = live
            .iter()
            .map(|o| o.items.get(&item.id).copied().unwrap_or(0) as i64)
            .sum();
        let counter = counters.get(&item.id).copied().unwrap_or(0);
        if counter != units {
            let detail = format!(
                "item {}: orders hold {units} units but the store's counter says {counter}",
                item.id
            );
            audit.violation(Invariant::I1, &facts, detail, holders);
        }
    }
    audit.within_limit(&facts, live.iter().map(|o| Holding::from(*o)));
    audit.nothing_leaked(&facts, &orders, now_millis(), EXPIRY_GRACE_MS);
    match gate {
        Err(why) => report
            .notes
            .push(format!("sale {}: gate not compared: {why}", sale.id)),
        Ok(_) if !quiescent => report.notes.push(format!(
            "sale {}: bus not drained, gate not compared",
            sale.id
        )),
        Ok(remaining) => audit.gate_matches_store(&facts, &remaining, &live, &releasing),
    }
    report.audit.merge(audit);
    Ok(())
}

/// Reads a running gateway's view of a sale over HTTP (for an in-process gate).
pub async fn gate_over_http(base_url: &str, sale: &Sale) -> GateView {
    let view = Client::new(base_url)
        .sale(&sale.id)
        .await
        .map_err(|e: ClientError| e.to_string())?;
    Ok(view.items.iter().map(|i| i.remaining).collect())
}
