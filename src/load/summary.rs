//! What a run amounts to: the figures `flashsale load` prints (text or `--json`), and
//! an audit of the invariants made from the answers alone (the store is not at hand
//! from the client side).

use std::collections::BTreeMap;

use super::{LoadPlan, LoadReport, Schedule};
use crate::audit::{Audit, Holding, SaleFacts};

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

#[derive(Debug, serde::Serialize)]
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
}

impl LoadAudit {
    pub fn new(report: &LoadReport) -> LoadAudit {
        let Some(sale) = &report.sale else {
            // A probe buys nothing.
            return LoadAudit {
                stock: 0,
                audit: Audit::default(),
                ok: true,
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
        audit.no_oversell(&facts, held());
        audit.within_limit(&facts, held());
        audit.replays_agree(&facts, report.replay_mismatches);
        LoadAudit {
            stock: facts.total_stock(),
            ok: audit.ok(),
            audit,
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
                "audit: oversold {} · buyers over the limit {} · replay mismatches {} → {}",
                self.audit.audit.oversold,
                self.audit.audit.buyers_over_limit,
                self.audit.audit.replay_mismatches,
                if self.audit.ok { "OK" } else { "BROKEN" }
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
    use crate::load::AcceptedOrder;

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
        }
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
