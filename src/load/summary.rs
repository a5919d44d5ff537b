//! What a run amounts to: the figures `flashsale load` prints (text or `--json`), and
//! an audit of the invariants made from the answers alone (the store is not at hand
//! from the client side).

use std::collections::BTreeMap;

use super::{LoadPlan, LoadReport, Schedule};
use crate::audit::{Audit, HeldSpan, Holding, SaleFacts};
use crate::domain::Millis;

/// What `flashsale load --json` prints: the report, and an audit made from the answers
/// alone (the store is not at hand from the client side).
#[derive(Debug, serde::Serialize)]
pub struct Summary {
    pub requests: u64,
    /// Attempts offered (a retry or a double click is part of its attempt).
    pub attempts: u64,
    /// Offered attempts per second (open loop only).
    pub offered_rps: Option<f64>,
    /// Attempts not sent: due while `--max-in-flight` requests were in flight.
    pub skipped: u64,
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
    pub audit: LoadAudit,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LatencySummary {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// The invariants the answers alone can show: I1 and I2 from the acknowledged orders,
/// I5 from the retries.
#[derive(Debug, serde::Serialize)]
pub struct LoadAudit {
    /// Units on sale in all.
    pub stock: u64,
    #[serde(flatten)]
    pub audit: Audit,
    pub ok: bool,
    /// When the answers held more units than the sale has, the orders were read back
    /// and I1 and I2 judged over time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_back: Option<ReadBack>,
}

/// The acknowledged orders read back from the server after the run.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ReadBack {
    pub orders: u64,
    /// Of which ended (expired, cancelled, failed), their units back on sale.
    pub ended: u64,
    /// Acknowledged orders the server did not show: counted as held for the whole run,
    /// so an oversell found with some unread may be theirs.
    pub unread: u64,
}

impl LoadAudit {
    pub fn new(report: &LoadReport) -> LoadAudit {
        let Some(sale) = &report.sale else {
            // A probe buys nothing.
            return LoadAudit {
                stock: 0,
                audit: Audit::default(),
                ok: true,
                read_back: None,
            };
        };
        let facts = SaleFacts::from(sale);
        let held = || {
            report.accepted.iter().map(|a| Holding {
                order_id: &a.order_id,
                user_id: &a.user_id,
                items: &a.items,
            })
        };
        let mut audit = Audit::default();
        let mut read_back = None;
        match &report.fates {
            // Over time: a unit sold again after its order ended is not sold twice.
            Some(fates) => {
                let spans: Vec<HeldSpan> = held()
                    .map(|holding| {
                        let fate = fates.get(holding.order_id);
                        HeldSpan {
                            holding,
                            // Not shown by the server: held for the whole run.
                            from: fate.map_or(Millis::MIN, |f| f.created_at),
                            until: fate.and_then(|f| f.ended_at),
                        }
                    })
                    .collect();
                audit.no_oversell_over_time(&facts, &spans);
                audit.within_limit_over_time(&facts, &spans);
                read_back = Some(ReadBack {
                    orders: fates.len() as u64,
                    ended: fates.values().filter(|f| f.ended_at.is_some()).count() as u64,
                    unread: spans.len().saturating_sub(fates.len()) as u64,
                });
            }
            None => {
                audit.no_oversell(&facts, held());
                audit.within_limit(&facts, held());
            }
        }
        audit.replays_agree(&facts, report.replay_mismatches);
        LoadAudit {
            stock: facts.total_stock(),
            ok: audit.ok(),
            audit,
            read_back,
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

    /// From a histogram of microseconds.
    pub fn of_micros(histogram: &hdrhistogram::Histogram<u64>) -> LatencySummary {
        let q = |x| histogram.value_at_quantile(x) as f64 / 1000.0;
        LatencySummary {
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: histogram.max() as f64 / 1000.0,
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
            skipped: report.skipped,
            throughput_rps: report.throughput_rps(),
            elapsed_s: report.elapsed.as_secs_f64(),
            accepted: report.accepted.len() as u64,
            acknowledged: report.accepted.iter().map(|a| a.units() as u64).sum(),
            rejected: report.rejected.clone(),
            by_status: report.by_status.clone(),
            latency_ms: LatencySummary::of(report),
            per_second: report.per_second.clone(),
            accepted_per_second: report.accepted_per_second.clone(),
            audit: LoadAudit::new(report),
        }
    }
}

impl Summary {
    /// The text `flashsale load` prints.
    pub fn render(&self) -> String {
        let l = &self.latency_ms;
        let offered = self
            .offered_rps
            .map(|r| match self.skipped {
                0 => format!(" (offered {r:.0} attempts/s)"),
                skipped => {
                    format!(" (offered {r:.0} attempts/s, {skipped} skipped at --max-in-flight)")
                }
            })
            .unwrap_or_default();
        [
            format!(
                "{} requests in {:.2} s: {:.0} req/s{offered}",
                self.requests, self.elapsed_s, self.throughput_rps
            ),
            format!(
                "accepted {} orders ({} units of {} in stock)",
                self.accepted, self.acknowledged, self.audit.stock
            ),
            format!("rejected {:?}", self.rejected),
            format!("by status {:?}", self.by_status),
            format!(
                "latency p50 {:.2} ms · p90 {:.2} · p99 {:.2} · p99.9 {:.2} · max {:.2}",
                l.p50, l.p90, l.p99, l.p999, l.max
            ),
            format!("per second {:?}", self.per_second),
            format!(
                "audit: oversold {} · buyers over the limit {} · replay mismatches {} → {}{}",
                self.audit.audit.oversold,
                self.audit.audit.buyers_over_limit,
                self.audit.audit.replay_mismatches,
                if self.audit.ok { "OK" } else { "BROKEN" },
                match self.audit.read_back {
                    Some(r) => format!(
                        " (units held at once: {} acknowledged orders read back, {} of them \
                         ended, their units back on sale{})",
                        r.orders,
                        r.ended,
                        match r.unread {
                            0 => String::new(),
                            n => format!("; {n} not read back, counted as held throughout"),
                        }
                    ),
                    None => String::new(),
                }
            ),
        ]
        .join("\n")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::client::{ItemView, SaleView};
    use crate::domain::SaleStatus;
    use crate::load::{AcceptedOrder, Fate};

    fn sale(items: &[(&str, u32)], per_user_limit: u32) -> SaleView {
        SaleView {
            id: "s".into(),
            name: "s".into(),
            status: SaleStatus::Live,
            stock: items.iter().map(|(_, s)| *s as u64).sum(),
            remaining: 0,
            per_user_limit,
            starts_at: String::new(),
            ends_at: None,
            payment_window: 0,
            rate_limits: Default::default(),
            shards: 1,
            queue: None,
            created_at: String::new(),
            items: items
                .iter()
                .map(|(id, stock)| ItemView {
                    id: id.to_string(),
                    stock: *stock,
                    remaining: 0,
                })
                .collect(),
        }
    }

    fn report_with(sale: SaleView, accepted: Vec<(&str, &[(&str, u32)])>) -> LoadReport {
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
            latency_us: crate::load::latency_histogram(),
            service_us: crate::load::latency_histogram(),
            service_503_us: crate::load::latency_histogram(),
            skipped: 0,
            by_status: BTreeMap::new(),
            per_second: vec![],
            accepted_per_second: vec![],
            attempts: 0,
            elapsed: Duration::from_secs(1),
            sale: Some(sale),
            fates: None,
        }
    }

    /// Issue #24: with fates read back, a unit sold again after its order ended is not
    /// an oversell, nor a buyer buying again after an expiry over the limit; two orders
    /// holding one unit at once still are, even if one of them ended later.
    #[test]
    fn over_time_the_audit_tells_units_sold_again_from_units_sold_twice() {
        let one_unit = sale(&[("a", 1)], 1);
        let fate = |from: Millis, until: Option<Millis>| Fate {
            created_at: from,
            ended_at: until,
        };
        let with_fates = |fates: &[Fate]| {
            let mut report = report_with(
                one_unit.clone(),
                vec![
                    ("u1", &[("a", 1)]),
                    ("u2", &[("a", 1)]),
                    ("u1", &[("a", 1)]),
                ],
            );
            report.fates = Some(
                fates
                    .iter()
                    .enumerate()
                    .map(|(i, f)| (format!("o{i}"), *f))
                    .collect(),
            );
            LoadAudit::new(&report)
        };
        // o0 expired at 100, o1 bought the unit at 100 (the end goes first) and was
        // cancelled at 200, then u1 bought it again.
        let resold = with_fates(&[fate(10, Some(100)), fate(100, Some(200)), fate(250, None)]);
        assert!(resold.ok, "{:?}", resold.audit.violations);
        assert_eq!(resold.read_back.map(|r| (r.orders, r.ended)), Some((3, 2)));
        // o1 took the unit while o0 still held it: oversold, though o0 ended later.
        let twice = with_fates(&[fate(10, Some(100)), fate(99, Some(200)), fate(250, None)]);
        assert_eq!((twice.audit.oversold, twice.ok), (1, false));
        assert_eq!(twice.audit.violations[0].orders, ["o0", "o1"]);
        // u1 holds two units at once (o0 until 300, o2 from 250): over the limit.
        let greedy = with_fates(&[fate(10, Some(300)), fate(300, Some(310)), fate(250, None)]);
        assert!(
            greedy.audit.buyers_over_limit == 1 && !greedy.ok,
            "{greedy:?}"
        );
        // Without fates, the same answers are three units of one: the naive audit.
        let mut naive = report_with(
            one_unit.clone(),
            vec![
                ("u1", &[("a", 1)]),
                ("u2", &[("a", 1)]),
                ("u1", &[("a", 1)]),
            ],
        );
        naive.fates = None;
        assert_eq!(LoadAudit::new(&naive).audit.oversold, 2);
    }

    #[test]
    fn the_audit_counts_oversold_units_per_item_and_buyers_over_the_limit() {
        let sale = sale(&[("a", 1), ("b", 2)], 2);
        let fine = report_with(
            sale.clone(),
            vec![("u1", &[("a", 1), ("b", 1)]), ("u2", &[("b", 1)])],
        );
        assert!(LoadAudit::new(&fine).ok);
        // Three units in all (not above the stock of 3), but item a sold twice.
        let oversold = report_with(
            sale.clone(),
            vec![("u1", &[("a", 1)]), ("u2", &[("a", 1), ("b", 1)])],
        );
        let audit = LoadAudit::new(&oversold);
        assert_eq!((audit.audit.oversold, audit.ok), (1, false));
        let greedy = report_with(
            sale,
            vec![("u1", &[("a", 1), ("b", 1)]), ("u1", &[("b", 1)])],
        );
        let audit = LoadAudit::new(&greedy);
        assert_eq!((audit.audit.buyers_over_limit, audit.ok), (1, false));
    }
}
