//! `flashsale check`: reconciles the gate, the bus and the store, and names every
//! violation of the invariants (DESIGN.md §2) with the orders involved.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::Serialize;

use crate::domain::{Millis, Order, Sale, now_millis};
use crate::store::OrderStore;

/// What the gate says of a sale: remaining units per item, or why it cannot tell.
pub type GateView = Result<Vec<u32>, String>;

#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    pub invariant: &'static str,
    pub sale_id: String,
    pub detail: String,
    pub orders: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub sales: usize,
    pub orders: usize,
    /// Messages on the bus the workers have not stored yet (None: not measurable here).
    pub bus_lag: Option<i64>,
    pub notes: Vec<String>,
    pub violations: Vec<Violation>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// How late an unpaid order may be before its reservation counts as leaked (I6):
/// the sweeper runs every second or so.
const EXPIRY_GRACE_MS: Millis = 30_000;

/// Checks one sale against the invariants. `gate` is what the gate holds (if it could
/// be read) and `quiescent` whether the bus is drained (the gate and the store can only
/// be compared then).
pub async fn check_sale(
    store: &dyn OrderStore,
    sale: &Sale,
    gate: GateView,
    quiescent: bool,
    report: &mut Report,
) -> Result<(), crate::store::StoreError> {
    let orders = store.sale_orders(&sale.id).await?;
    let pending_release = store.pending_releases(Some(&sale.id), i64::MAX).await?;
    let counters: HashMap<String, i64> = store.sold_counters(&sale.id).await?.into_iter().collect();
    report.sales += 1;
    report.orders += orders.len();
    let mut violation = |invariant, detail: String, orders: Vec<&Order>| {
        report.violations.push(Violation {
            invariant,
            sale_id: sale.id.clone(),
            detail,
            orders: orders.iter().map(|o| o.id.clone()).collect(),
        })
    };

    let live: Vec<&Order> = orders.iter().filter(|o| o.status.holds_stock()).collect();
    // I1: per item, live units <= stock, and the store's counter agrees with its rows.
    for item in &sale.items {
        let holders: Vec<&Order> = live
            .iter()
            .copied()
            .filter(|o| o.items.contains_key(&item.id))
            .collect();
        let units: i64 = holders.iter().map(|o| o.items[&item.id] as i64).sum();
        if units > item.stock as i64 {
            violation(
                "I1",
                format!("item {}: {units} units sold of {}", item.id, item.stock),
                holders.clone(),
            );
        }
        let counter = counters.get(&item.id).copied().unwrap_or(0);
        if counter != units {
            violation(
                "I1",
                format!(
                    "item {}: orders hold {units} units but the store's counter says {counter}",
                    item.id
                ),
                holders,
            );
        }
    }
    for order in &orders {
        if let Some(unknown) = order.items.keys().find(|id| sale.item_index(id).is_none()) {
            violation(
                "I1",
                format!("order of unknown item {unknown}"),
                vec![order],
            );
        }
    }
    // I2: per buyer, live units <= the limit.
    let mut per_buyer: BTreeMap<&str, Vec<&Order>> = BTreeMap::new();
    for order in &live {
        per_buyer.entry(&order.user_id).or_default().push(order);
    }
    for (user, held) in per_buyer {
        let units: u32 = held.iter().map(|o| o.total_units()).sum();
        if units > sale.per_user_limit {
            violation(
                "I2",
                format!(
                    "buyer {user} holds {units} units (limit {})",
                    sale.per_user_limit
                ),
                held,
            );
        }
    }
    // I6: no unpaid order outlives its window for long.
    let now = now_millis();
    let overdue: Vec<&Order> = orders
        .iter()
        .filter(|o| o.is_overdue(now - EXPIRY_GRACE_MS))
        .collect();
    if !overdue.is_empty() {
        violation(
            "I6",
            format!(
                "{} unpaid orders past their window (is a sweeper running?)",
                overdue.len()
            ),
            overdue,
        );
    }
    // I4: units sold according to the gate = units held in the store (plus releases
    // the store made and the gate has not received yet).
    match gate {
        Err(why) => report
            .notes
            .push(format!("sale {}: gate not compared: {why}", sale.id)),
        Ok(_) if !quiescent => report.notes.push(format!(
            "sale {}: bus not drained, gate not compared",
            sale.id
        )),
        Ok(remaining) => {
            for (i, item) in sale.items.iter().enumerate() {
                let gate_sold = item.stock as i64 - remaining.get(i).copied().unwrap_or(0) as i64;
                let stored: i64 = live
                    .iter()
                    .map(|o| o.items.get(&item.id).copied().unwrap_or(0) as i64)
                    .sum();
                let releasing: i64 = pending_release
                    .iter()
                    .map(|o| o.items.get(&item.id).copied().unwrap_or(0) as i64)
                    .sum();
                if gate_sold != stored + releasing {
                    violation(
                        "I4",
                        format!(
                            "item {}: the gate has sold {gate_sold} units, the store holds {stored} (+{releasing} being released)",
                            item.id
                        ),
                        vec![],
                    );
                }
            }
        }
    }
    Ok(())
}

/// Reads a running gateway's view of a sale over HTTP (for an in-process gate).
pub async fn gate_over_http(base_url: &str, sale: &Sale) -> GateView {
    let url = format!("{}/api/sales/{}", base_url.trim_end_matches('/'), sale.id);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let body: serde_json::Value = client
        .get(url)
        .send()
        .await
        .map_err(|e| e.to_string())?
        .error_for_status()
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let items = body["items"].as_array().ok_or("no items in the answer")?;
    Ok(items
        .iter()
        .map(|i| i["remaining"].as_u64().unwrap_or(0) as u32)
        .collect())
}
