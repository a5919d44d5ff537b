//! The invariants of docs/architecture.md §2, checked one way for everyone: `demo` (answers and the
//! store), `load` (answers alone) and `check` (store, gate and bus). Each check takes
//! what its caller can see and adds the violations it finds, named I1–I6 as in the
//! README, with the orders involved. Stock is always checked per item.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

use crate::api::SaleView;
use crate::domain::{Millis, Order, Sale};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Invariant {
    /// No oversell: per item, units held ≤ stock.
    I1,
    /// Per-user limit: per buyer, units held ≤ the sale's limit.
    I2,
    /// No lost order: every acknowledged order is in the store.
    I3,
    /// No phantom order: every stored order was acknowledged; the gate agrees with the store.
    I4,
    /// Idempotent retries: the same key gets the same answer.
    I5,
    /// Sell-through: no reservation outlives its payment window for long.
    I6,
}

#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    pub invariant: Invariant,
    pub sale_id: String,
    pub detail: String,
    pub orders: Vec<String>,
}

/// What the audit needs of a sale, whether read from the store or from the API.
#[derive(Debug, Clone)]
pub struct SaleFacts {
    pub id: String,
    /// (item id, stock), in the sale's order.
    pub items: Vec<(String, u32)>,
    pub per_user_limit: u32,
}

impl From<&Sale> for SaleFacts {
    fn from(sale: &Sale) -> Self {
        SaleFacts {
            id: sale.id.clone(),
            items: sale.items.iter().map(|i| (i.id.clone(), i.stock)).collect(),
            per_user_limit: sale.per_user_limit,
        }
    }
}

impl From<&SaleView> for SaleFacts {
    fn from(sale: &SaleView) -> Self {
        SaleFacts {
            id: sale.id.clone(),
            items: sale.items.iter().map(|i| (i.id.clone(), i.stock)).collect(),
            per_user_limit: sale.per_user_limit,
        }
    }
}

impl SaleFacts {
    pub fn total_stock(&self) -> u64 {
        self.items.iter().map(|(_, stock)| *stock as u64).sum()
    }
}

/// Units an order (stored or acknowledged) holds, by item.
#[derive(Debug, Clone, Copy)]
pub struct Holding<'a> {
    pub order_id: &'a str,
    pub user_id: &'a str,
    pub items: &'a BTreeMap<String, u32>,
}

impl<'a> From<&'a Order> for Holding<'a> {
    fn from(order: &'a Order) -> Self {
        Holding {
            order_id: &order.id,
            user_id: &order.user_id,
            items: &order.items,
        }
    }
}

impl Holding<'_> {
    fn units(&self) -> u64 {
        self.items.values().map(|&u| u as u64).sum()
    }
}

/// An order's units and when it held them: from its creation until it ended
/// (expired, cancelled, failed), or still.
#[derive(Debug, Clone, Copy)]
pub struct HeldSpan<'a> {
    pub holding: Holding<'a>,
    pub from: Millis,
    pub until: Option<Millis>,
}

/// The most units held at once by `spans` (each with its units), and the orders holding
/// then. An order ending at the same millisecond another starts has let go first (the
/// end is recorded before its units go back, the next order is created after).
fn peak<'a>(spans: impl Iterator<Item = (&'a HeldSpan<'a>, u64)>) -> (u64, Vec<String>) {
    let spans: Vec<(&HeldSpan, u64)> = spans.collect();
    let mut changes: Vec<(Millis, i64, usize)> = Vec::with_capacity(spans.len() * 2);
    for (n, (span, units)) in spans.iter().enumerate() {
        changes.push((span.from, *units as i64, n));
        if let Some(until) = span.until {
            changes.push((until, -(*units as i64), n));
        }
    }
    changes.sort_by_key(|&(at, delta, _)| (at, delta));
    let (mut held, mut peak, mut peak_at) = (0i64, 0i64, None);
    for (i, &(_, delta, _)) in changes.iter().enumerate() {
        held += delta;
        if held > peak {
            (peak, peak_at) = (held, Some(i));
        }
    }
    // The orders holding at the peak: started up to it and not ended before it.
    let at_peak = match peak_at {
        Some(i) => {
            let mut holding = std::collections::BTreeSet::new();
            for &(_, delta, n) in &changes[..=i] {
                if delta > 0 {
                    holding.insert(n);
                } else {
                    holding.remove(&n);
                }
            }
            holding
                .into_iter()
                .map(|n| spans[n].0.holding.order_id.to_string())
                .collect()
        }
        None => Vec::new(),
    };
    (peak as u64, at_peak)
}

/// What the checks found. The counters are those the reports print; a check that was
/// not run leaves its counter `None`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Audit {
    /// Units held beyond an item's stock, summed over the items (I1).
    pub oversold: u64,
    /// Buyers holding more than the per-user limit (I2).
    pub buyers_over_limit: u64,
    /// Acknowledged orders missing from the store (I3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost: Option<u64>,
    /// Stored orders nobody was told about (I4).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phantom: Option<u64>,
    /// Units the gate counts as sold minus units held in the store (I4).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate_store_gap: Option<i64>,
    /// Retries and double clicks whose answers disagree (I5).
    pub replay_mismatches: u64,
    /// Unpaid orders far past their payment window (I6).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leaked: Option<u64>,
    pub violations: Vec<Violation>,
}

impl Audit {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }

    pub fn violation(
        &mut self,
        invariant: Invariant,
        sale: &SaleFacts,
        detail: String,
        orders: Vec<String>,
    ) {
        self.violations.push(Violation {
            invariant,
            sale_id: sale.id.clone(),
            detail,
            orders,
        });
    }

    /// I1: per item, the units held are within its stock.
    pub fn no_oversell<'a>(
        &mut self,
        sale: &SaleFacts,
        held: impl IntoIterator<Item = Holding<'a>>,
    ) {
        let held: Vec<Holding> = held.into_iter().collect();
        for (item, stock) in &sale.items {
            let holders: Vec<&Holding> =
                held.iter().filter(|h| h.items.contains_key(item)).collect();
            let units: u64 = holders.iter().map(|h| h.items[item] as u64).sum();
            if units > *stock as u64 {
                self.oversold += units - *stock as u64;
                let orders = holders.iter().map(|h| h.order_id.to_string()).collect();
                let detail = format!("item {item}: {units} units sold of {stock}");
                self.violation(Invariant::I1, sale, detail, orders);
            }
        }
        for h in &held {
            if let Some(unknown) = h
                .items
                .keys()
                .find(|id| !sale.items.iter().any(|(i, _)| i == *id))
            {
                let detail = format!("order of unknown item {unknown}");
                self.violation(Invariant::I1, sale, detail, vec![h.order_id.to_string()]);
            }
        }
    }

    /// I1 over time, for a run whose orders may end (a payment window, cancels): per
    /// item, the units held *at any one moment* are within its stock. A unit given back
    /// by an expiry or a cancel and sold again is not sold twice; two orders holding it
    /// at once are. `oversold` counts the peak excess, per item.
    pub fn no_oversell_over_time(&mut self, sale: &SaleFacts, spans: &[HeldSpan<'_>]) {
        for (item, stock) in &sale.items {
            let holding = spans
                .iter()
                .filter_map(|s| s.holding.items.get(item).map(|&units| (s, units as u64)));
            let (peak, at_peak) = peak(holding);
            if peak > *stock as u64 {
                self.oversold += peak - *stock as u64;
                let detail = format!("item {item}: {peak} units held at once of {stock}");
                self.violation(Invariant::I1, sale, detail, at_peak);
            }
        }
    }

    /// I2 over time: per buyer, the units held at any one moment are within the limit
    /// (a buyer whose order expired may buy again).
    pub fn within_limit_over_time(&mut self, sale: &SaleFacts, spans: &[HeldSpan<'_>]) {
        let mut per_buyer: BTreeMap<&str, Vec<&HeldSpan>> = BTreeMap::new();
        for span in spans {
            per_buyer
                .entry(span.holding.user_id)
                .or_default()
                .push(span);
        }
        for (user, spans) in per_buyer {
            let (peak, at_peak) = peak(spans.iter().map(|s| (*s, s.holding.units())));
            if peak > sale.per_user_limit as u64 {
                self.buyers_over_limit += 1;
                let detail = format!(
                    "buyer {user} holds {peak} units at once (limit {})",
                    sale.per_user_limit
                );
                self.violation(Invariant::I2, sale, detail, at_peak);
            }
        }
    }

    /// I2: per buyer, the units held are within the limit.
    pub fn within_limit<'a>(
        &mut self,
        sale: &SaleFacts,
        held: impl IntoIterator<Item = Holding<'a>>,
    ) {
        let mut per_buyer: BTreeMap<&str, Vec<Holding>> = BTreeMap::new();
        for h in held {
            per_buyer.entry(h.user_id).or_default().push(h);
        }
        for (user, holdings) in per_buyer {
            let units: u64 = holdings.iter().map(Holding::units).sum();
            if units > sale.per_user_limit as u64 {
                self.buyers_over_limit += 1;
                let orders = holdings.iter().map(|h| h.order_id.to_string()).collect();
                let detail = format!(
                    "buyer {user} holds {units} units (limit {})",
                    sale.per_user_limit
                );
                self.violation(Invariant::I2, sale, detail, orders);
            }
        }
    }

    /// I3 and I4: every acknowledged order is stored, every stored order acknowledged.
    pub fn acknowledged_equals_stored<'a>(
        &mut self,
        sale: &SaleFacts,
        acknowledged: impl IntoIterator<Item = &'a str>,
        stored: &[Order],
    ) {
        let acknowledged: HashSet<&str> = acknowledged.into_iter().collect();
        let stored: HashSet<&str> = stored.iter().map(|o| o.id.as_str()).collect();
        let mut lost: Vec<String> = acknowledged
            .difference(&stored)
            .map(|s| s.to_string())
            .collect();
        let mut phantom: Vec<String> = stored
            .difference(&acknowledged)
            .map(|s| s.to_string())
            .collect();
        self.lost = Some(lost.len() as u64);
        self.phantom = Some(phantom.len() as u64);
        if !lost.is_empty() {
            lost.sort();
            let detail = format!("{} acknowledged orders are not in the store", lost.len());
            self.violation(Invariant::I3, sale, detail, lost);
        }
        if !phantom.is_empty() {
            phantom.sort();
            let detail = format!("{} stored orders were never acknowledged", phantom.len());
            self.violation(Invariant::I4, sale, detail, phantom);
        }
    }

    /// I4: per item, the units the gate has sold are those live orders hold in the store,
    /// plus those the store released and the gate has not received yet.
    pub fn gate_matches_store(
        &mut self,
        sale: &SaleFacts,
        gate_remaining: &[u32],
        live: &[&Order],
        releasing: &[Order],
    ) {
        let units = |orders: &mut dyn Iterator<Item = &Order>, item: &str| -> i64 {
            orders
                .map(|o| o.items.get(item).copied().unwrap_or(0) as i64)
                .sum()
        };
        let mut gap_total = 0;
        for (i, (item, stock)) in sale.items.iter().enumerate() {
            let gate_sold = *stock as i64 - gate_remaining.get(i).copied().unwrap_or(0) as i64;
            let stored = units(&mut live.iter().copied(), item);
            let being_released = units(&mut releasing.iter(), item);
            let gap = gate_sold - stored - being_released;
            gap_total += gap;
            if gap != 0 {
                let detail = format!(
                    "item {item}: the gate has sold {gate_sold} units, the store holds {stored} (+{being_released} being released)"
                );
                self.violation(Invariant::I4, sale, detail, vec![]);
            }
        }
        self.gate_store_gap = Some(gap_total);
    }

    /// I5: retries and double clicks were answered alike.
    pub fn replays_agree(&mut self, sale: &SaleFacts, mismatches: u64) {
        self.replay_mismatches = mismatches;
        if mismatches > 0 {
            let detail =
                format!("{mismatches} retries got a different answer than their first request");
            self.violation(Invariant::I5, sale, detail, vec![]);
        }
    }

    /// I6: no unpaid order is still pending `grace` after its window (the sweeper runs
    /// every second or so).
    pub fn nothing_leaked(
        &mut self,
        sale: &SaleFacts,
        stored: &[Order],
        now: Millis,
        grace: Millis,
    ) {
        let overdue: Vec<String> = stored
            .iter()
            .filter(|o| o.is_overdue(now - grace))
            .map(|o| o.id.clone())
            .collect();
        self.leaked = Some(overdue.len() as u64);
        if !overdue.is_empty() {
            let detail = format!(
                "{} unpaid orders past their window (is a sweeper running?)",
                overdue.len()
            );
            self.violation(Invariant::I6, sale, detail, overdue);
        }
    }

    /// Adds another sale's findings.
    pub fn merge(&mut self, other: Audit) {
        let add = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
        };
        self.oversold += other.oversold;
        self.buyers_over_limit += other.buyers_over_limit;
        self.lost = add(self.lost, other.lost);
        self.phantom = add(self.phantom, other.phantom);
        self.leaked = add(self.leaked, other.leaked);
        self.gate_store_gap = match (self.gate_store_gap, other.gate_store_gap) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
        };
        self.replay_mismatches += other.replay_mismatches;
        self.violations.extend(other.violations);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> SaleFacts {
        SaleFacts {
            id: "s".into(),
            items: vec![("a".into(), 1), ("b".into(), 2)],
            per_user_limit: 2,
        }
    }

    fn items(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn oversell_is_counted_per_item_and_the_limit_per_buyer() {
        let (one_a, a_and_b, one_b) = (
            items(&[("a", 1)]),
            items(&[("a", 1), ("b", 1)]),
            items(&[("b", 1)]),
        );
        let held = [
            Holding {
                order_id: "o1",
                user_id: "u1",
                items: &one_a,
            },
            Holding {
                order_id: "o2",
                user_id: "u2",
                items: &a_and_b,
            },
            Holding {
                order_id: "o3",
                user_id: "u2",
                items: &one_b,
            },
        ];
        let mut audit = Audit::default();
        audit.no_oversell(&facts(), held);
        // Three units of four in all, but item a sold twice.
        assert_eq!(audit.oversold, 1);
        assert_eq!(audit.violations[0].invariant, Invariant::I1);
        assert_eq!(audit.violations[0].orders, ["o1", "o2"]);
        audit.within_limit(&facts(), held);
        assert_eq!(audit.buyers_over_limit, 1, "u2 holds 3 of 2");
        assert!(!audit.ok());
    }

    #[test]
    fn lost_and_phantom_orders_are_named() {
        let order = |id: &str| Order {
            id: id.into(),
            sale_id: "s".into(),
            user_id: "u".into(),
            items: items(&[("a", 1)]),
            status: crate::domain::OrderStatus::Paid,
            created_at: 0,
            expires_at: None,
            idempotency_key: None,
            fingerprint: String::new(),
        };
        let mut audit = Audit::default();
        audit.acknowledged_equals_stored(&facts(), ["o1", "o2"], &[order("o2"), order("o3")]);
        assert_eq!((audit.lost, audit.phantom), (Some(1), Some(1)));
        assert_eq!(audit.violations[0].orders, ["o1"]);
        assert_eq!(audit.violations[1].orders, ["o3"]);
    }
}
