//! What a scenario proved: the buyers' ledger (every request and answer) against the
//! store, the gate's remaining stock and `flashsale check`. `judge` is a pure function
//! (unit-tested below); the scenario gathers its inputs once the deployment has drained
//! and the payment windows have passed.

use std::collections::{BTreeMap, HashMap};

use flashsale::domain::{Millis, Order, OrderStatus};

use crate::buyers::{Answer, Ledger, Payment};

/// An order created at `t` may take a unit its predecessor gave back at (store time)
/// slightly after `t`: the gateway reads its clock before the gate decides, and the
/// gate call may wait up to the backend timeout (1 s). Holdings therefore count from
/// `created_at + SLACK_MS`, so that this never reads as an oversell; a real one (a unit
/// sold twice) lasts the payment window or, once paid, for ever.
pub const SLACK_MS: Millis = 2_000;

/// The sale as created: (item id, stock), and the per-buyer limit.
#[derive(Debug, Clone)]
pub struct SaleShape {
    pub items: Vec<(String, u32)>,
    pub limit: u32,
}

/// Everything the verdict looks at.
pub struct Evidence<'a> {
    pub sale: &'a SaleShape,
    pub ledger: &'a Ledger,
    /// Orders of the sale in the store, after the drain and the payment windows.
    pub stored: &'a [Order],
    /// Status changes of the stored orders that no longer hold stock: order id → history.
    pub histories: &'a HashMap<String, Vec<(OrderStatus, Millis)>>,
    /// Remaining units per item as a gateway reads them at the end (None: unreadable).
    pub remaining: Option<Vec<u32>>,
    /// When `remaining` and `stored` were read.
    pub now: Millis,
    /// Acknowledged orders still missing when the drain timed out are simply absent
    /// from `stored`.
    pub check_ok: bool,
    /// Messages on the bus the workers have not stored, as `flashsale check` counts
    /// them (None: not measurable, the in-process bus).
    pub bus_lag: Option<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct Verdict {
    pub requests: u64,
    pub intents: u64,
    /// Distinct order ids answered 202.
    pub acked: u64,
    /// Orders of the sale in the store.
    pub stored: u64,
    pub paid: u64,
    /// Units held beyond an item's stock at the worst moment, summed over items (I1).
    pub oversold: u64,
    /// Buyers who held more than the limit at some moment (I2).
    pub over_limit: u64,
    /// Acknowledged orders not in the store (beyond those still on the bus), or stored
    /// as `failed` (I3).
    pub lost: u64,
    /// Acknowledged orders not in the store but still on the bus when the drain timed
    /// out (the bus lag): not gone, but not stored either (I3).
    pub undrained: u64,
    /// Keys with two orders, or a stored order unlike the one acknowledged.
    pub duplicated: u64,
    /// Keys answered inconsistently: two order ids, or a refusal after a 202 (I5).
    pub replay_mismatch: u64,
    /// Units neither sold nor back on sale after the windows and the sweeps (I6).
    pub leaked: u64,
    /// Units counted both as sold and as remaining (sold + remaining > stock).
    pub surplus: u64,
    pub check_failed: u64,
    /// Keys that never got a final answer (a 202 or a refusal) within the retry budget
    /// of 30 s, only 503s and no answers: a retry never got the original answer (I5),
    /// e.g. a key left in flight by a killed gateway.
    pub stuck: u64,
    /// Stored orders no buyer was answered 202 for (a gateway died before answering,
    /// or the buyer gave up): allowed, reported.
    pub unacknowledged: u64,
    pub details: Vec<String>,
}

impl Verdict {
    /// The columns that must be zero.
    pub fn violations(&self) -> u64 {
        self.oversold
            + self.over_limit
            + self.lost
            + self.undrained
            + self.duplicated
            + self.replay_mismatch
            + self.leaked
            + self.surplus
            + self.check_failed
            + self.stuck
    }
}

fn sample(ids: &[String]) -> String {
    let shown: Vec<&str> = ids.iter().take(5).map(String::as_str).collect();
    let more = ids.len().saturating_sub(shown.len());
    if more > 0 {
        format!("[{} …+{more}]", shown.join(", "))
    } else {
        format!("[{}]", shown.join(", "))
    }
}

/// When an order stopped holding its units (`Millis::MAX` while it holds them).
fn ended_at(order: &Order, histories: &HashMap<String, Vec<(OrderStatus, Millis)>>) -> Millis {
    if order.status.holds_stock() {
        return Millis::MAX;
    }
    histories
        .get(&order.id)
        .and_then(|h| h.iter().find(|(s, _)| !s.holds_stock()).map(|(_, at)| *at))
        // No history: it ended no earlier than its window.
        .unwrap_or_else(|| order.expires_at.unwrap_or(order.created_at))
}

/// The most units held at once by intervals `[start, end)`, an end before a start at
/// the same moment.
pub fn peak(intervals: &[(Millis, Millis, u64)]) -> u64 {
    let mut events: Vec<(Millis, i64)> = Vec::with_capacity(intervals.len() * 2);
    for &(start, end, units) in intervals {
        if start < end {
            events.push((start, units as i64));
            events.push((end, -(units as i64)));
        }
    }
    events.sort_unstable();
    let (mut held, mut worst) = (0i64, 0i64);
    for (_, delta) in events {
        held += delta;
        worst = worst.max(held);
    }
    worst as u64
}

pub fn judge(evidence: &Evidence) -> Verdict {
    let Evidence {
        sale,
        ledger,
        stored,
        histories,
        remaining,
        now,
        check_ok,
        bus_lag,
    } = evidence;
    let mut v = Verdict {
        intents: ledger.intents.len() as u64,
        requests: ledger.intents.iter().map(|i| i.attempts.len() as u64).sum(),
        stored: stored.len() as u64,
        paid: ledger
            .payments
            .values()
            .filter(|p| **p == Payment::Paid)
            .count() as u64,
        check_failed: u64::from(!check_ok),
        ..Verdict::default()
    };
    let by_id: HashMap<&str, &Order> = stored.iter().map(|o| (o.id.as_str(), o)).collect();

    // I5 and what each 202 promised.
    let mut acked: HashMap<&str, &crate::buyers::Intent> = HashMap::new();
    let mut mismatched = Vec::new();
    for intent in &ledger.intents {
        let ids = intent.accepted_ids();
        for id in &ids {
            acked.insert(id, intent);
        }
        let accepted_at = intent.accepted_at_ms();
        let refused_after_202 = intent.attempts.iter().any(|a| {
            matches!(a.answer, Answer::Refused(..)) && accepted_at.is_some_and(|t| a.sent_ms > t)
        });
        // Both clicks of a double click carry the same key and body: one accepted and
        // the other refused for the limit (or the key) means the key was not recognised.
        // (One refused `sold_out` may be legitimate: decided first, and not remembered.)
        let clicks: Vec<&Answer> = intent
            .attempts
            .iter()
            .filter(|a| a.double_click)
            .map(|a| &a.answer)
            .collect();
        let click_disagrees = clicks.iter().any(|a| matches!(a, Answer::Accepted(_)))
            && clicks.iter().any(|a| {
                matches!(a, Answer::Refused(_, code) if code == "limit_reached" || code == "idempotency_key_reused")
            });
        let key_reused = intent.attempts.iter().any(
            |a| matches!(&a.answer, Answer::Refused(_, code) if code == "idempotency_key_reused"),
        );
        if ids.len() > 1 || refused_after_202 || click_disagrees || key_reused {
            v.replay_mismatch += 1;
            let answers: Vec<String> = intent
                .attempts
                .iter()
                .map(|a| {
                    let how = if a.after_accept {
                        " replay"
                    } else if a.double_click {
                        " click"
                    } else {
                        ""
                    };
                    format!("{:?}@{}ms gw{}{how}", a.answer, a.sent_ms, a.gateway)
                })
                .collect();
            mismatched.push(format!(
                "{} {}: {}",
                intent.buyer,
                intent.key,
                answers.join(" ")
            ));
        }
    }
    v.acked = acked.len() as u64;
    if !mismatched.is_empty() {
        v.details.push(format!(
            "I5: {} keys answered inconsistently, e.g. {}",
            mismatched.len(),
            mismatched
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join(" | ")
        ));
    }

    // I3: every 202 is in the store, as acknowledged, and not failed.
    let mut lost: Vec<String> = acked
        .keys()
        .filter(|id| !by_id.contains_key(*id))
        .map(|id| id.to_string())
        .collect();
    lost.sort();
    let mut failed: Vec<String> = acked
        .keys()
        .filter(|id| {
            by_id
                .get(*id)
                .is_some_and(|o| o.status == OrderStatus::Failed)
        })
        .map(|id| id.to_string())
        .collect();
    failed.sort();
    // What the bus still holds is not gone: at most the lag of the missing orders are.
    let undrained = (lost.len() as u64).min(bus_lag.unwrap_or(0));
    v.undrained = undrained;
    v.lost = lost.len() as u64 - undrained + failed.len() as u64;
    if !lost.is_empty() {
        v.details.push(format!(
            "I3: {} acknowledged orders not in the store, bus lag {} {}",
            lost.len(),
            bus_lag.map_or("n/a".to_string(), |l| l.to_string()),
            sample(&lost)
        ));
    }
    if !failed.is_empty() {
        v.details.push(format!(
            "I3: {} acknowledged orders stored as failed {}",
            failed.len(),
            sample(&failed)
        ));
    }

    // Exactly once: one order per key, and the order stored is the one acknowledged.
    let mut per_key: HashMap<(&str, &str), Vec<&str>> = HashMap::new();
    for order in stored.iter() {
        if let Some(key) = &order.idempotency_key {
            per_key
                .entry((&order.user_id, key))
                .or_default()
                .push(&order.id);
        }
    }
    let mut doubled: Vec<String> = per_key
        .iter()
        .filter(|(_, ids)| ids.len() > 1)
        .map(|((user, key), ids)| format!("{user}/{key}: {}", ids.join("+")))
        .collect();
    for (id, intent) in &acked {
        if let Some(order) = by_id.get(id)
            && (order.user_id != intent.buyer || order.items != intent.units)
        {
            doubled.push(format!(
                "{id} stored as {} {:?}, acknowledged as {} {:?}",
                order.user_id, order.items, intent.buyer, intent.units
            ));
        }
    }
    doubled.sort();
    v.duplicated = doubled.len() as u64;
    if !doubled.is_empty() {
        v.details.push(format!(
            "exactly once: {} keys with two orders or unlike orders {}",
            doubled.len(),
            sample(&doubled)
        ));
    }
    let unacked: Vec<String> = stored
        .iter()
        .filter(|o| !acked.contains_key(o.id.as_str()))
        .map(|o| o.id.clone())
        .collect();
    v.unacknowledged = unacked.len() as u64;

    // Keys without a final answer: what they last heard, and whether the store has
    // their order (then the order exists and its buyer was never told).
    let stuck: Vec<&crate::buyers::Intent> = ledger
        .intents
        .iter()
        .filter(|i| i.outcome.is_none())
        .collect();
    v.stuck = stuck.len() as u64;
    if !stuck.is_empty() {
        let with_order = stuck
            .iter()
            .filter(|i| per_key.contains_key(&(i.buyer.as_str(), i.key.as_str())))
            .count();
        let mut last: BTreeMap<String, usize> = BTreeMap::new();
        for intent in &stuck {
            if let Some(a) = intent.attempts.last() {
                *last.entry(format!("{:?}", a.answer)).or_default() += 1;
            }
        }
        let examples: Vec<String> = stuck.iter().take(3).map(|i| i.key.clone()).collect();
        v.details.push(format!(
            "I5: {} keys got no final answer in 30 s of retries ({with_order} of them have an order in the store); last answers {last:?}; e.g. {}",
            stuck.len(),
            examples.join(", ")
        ));
    }

    // I1 and I2 at every moment: each stored order holds its units from its creation
    // (plus the slack) until it ended.
    let holding: Vec<(&Order, Millis, Millis)> = stored
        .iter()
        .map(|o| {
            (
                o,
                o.created_at.saturating_add(SLACK_MS),
                ended_at(o, histories),
            )
        })
        .collect();
    for (item, stock) in &sale.items {
        let intervals: Vec<(Millis, Millis, u64)> = holding
            .iter()
            .filter_map(|(o, start, end)| o.items.get(item).map(|&u| (*start, *end, u as u64)))
            .collect();
        let worst = peak(&intervals);
        if worst > *stock as u64 {
            v.oversold += worst - *stock as u64;
            let ids: Vec<String> = holding
                .iter()
                .filter(|(o, _, end)| o.items.contains_key(item) && *end == Millis::MAX)
                .map(|(o, ..)| o.id.clone())
                .collect();
            v.details.push(format!(
                "I1: item {item}: {worst} units held at once of {stock} ({} orders hold it at the end)",
                ids.len()
            ));
        }
    }
    let mut per_buyer: BTreeMap<&str, Vec<(Millis, Millis, u64)>> = BTreeMap::new();
    for (o, start, end) in &holding {
        per_buyer
            .entry(&o.user_id)
            .or_default()
            .push((*start, *end, o.total_units() as u64));
    }
    let mut over: Vec<String> = Vec::new();
    for (buyer, intervals) in per_buyer {
        let worst = peak(&intervals);
        if worst > sale.limit as u64 {
            over.push(format!("{buyer} held {worst}"));
        }
    }
    v.over_limit = over.len() as u64;
    if !over.is_empty() {
        v.details.push(format!(
            "I2: {} buyers over the limit of {} {}",
            over.len(),
            sale.limit,
            sample(&over)
        ));
    }

    // I6: after the windows and the sweeps, every unit is sold (paid, or pending within
    // its window) or back on sale.
    let mut overdue = 0;
    for (index, (item, stock)) in sale.items.iter().enumerate() {
        let sold: u64 = stored
            .iter()
            .filter(|o| o.status.holds_stock() && !o.is_overdue(*now))
            .filter_map(|o| o.items.get(item).map(|&u| u as u64))
            .sum();
        overdue += stored
            .iter()
            .filter(|o| o.is_overdue(*now) && o.items.contains_key(item))
            .count();
        let stock = *stock as u64;
        match remaining.as_ref().and_then(|r| r.get(index)) {
            Some(&left) => {
                let left = left as u64;
                if sold + left < stock {
                    v.leaked += stock - sold - left;
                    v.details.push(format!(
                        "I6: item {item}: {sold} sold + {left} remaining < {stock} in stock"
                    ));
                } else if sold + left > stock {
                    v.surplus += sold + left - stock;
                    v.details.push(format!(
                        "I6: item {item}: {sold} sold + {left} remaining > {stock} in stock"
                    ));
                }
            }
            None => {
                // The sale cannot be read: nothing is back on sale.
                v.leaked += stock.saturating_sub(sold);
                v.details.push(format!(
                    "I6: item {item}: remaining stock unreadable at the end"
                ));
            }
        }
    }
    if overdue > 0 {
        v.details.push(format!(
            "I6: {overdue} orders still pending past their window"
        ));
    }
    if !check_ok {
        v.details.push("`flashsale check` exited non-zero".into());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buyers::{Attempt, Intent};

    fn order(id: &str, user: &str, units: u32, status: OrderStatus, created: Millis) -> Order {
        Order {
            id: id.into(),
            sale_id: "s".into(),
            user_id: user.into(),
            items: [("default".to_string(), units)].into_iter().collect(),
            status,
            created_at: created,
            expires_at: Some(created + 3_000),
            idempotency_key: Some(format!("{user}-{id}")),
            fingerprint: String::new(),
        }
    }

    fn accepted(user: &str, id: &str, units: u32) -> Intent {
        Intent {
            buyer: user.into(),
            key: format!("{user}-{id}"),
            units: [("default".to_string(), units)].into_iter().collect(),
            attempts: vec![Attempt {
                sent_ms: 0,
                answered_ms: 5,
                gateway: 0,
                answer: Answer::Accepted(id.into()),
                double_click: false,
                after_accept: false,
            }],
            outcome: Some(Answer::Accepted(id.into())),
        }
    }

    fn shape(stock: u32, limit: u32) -> SaleShape {
        SaleShape {
            items: vec![("default".into(), stock)],
            limit,
        }
    }

    fn judge_with(
        sale: &SaleShape,
        intents: Vec<Intent>,
        stored: &[Order],
        histories: HashMap<String, Vec<(OrderStatus, Millis)>>,
        remaining: u32,
    ) -> Verdict {
        let ledger = Ledger {
            intents,
            payments: BTreeMap::new(),
        };
        judge(&Evidence {
            sale,
            ledger: &ledger,
            stored,
            histories: &histories,
            remaining: Some(vec![remaining]),
            now: 100_000,
            check_ok: true,
            bus_lag: Some(0),
        })
    }

    #[test]
    fn peak_counts_an_end_before_a_start_at_the_same_moment() {
        assert_eq!(peak(&[(0, 10, 1), (10, 20, 1)]), 1);
        assert_eq!(peak(&[(0, 11, 1), (10, 20, 1)]), 2);
        assert_eq!(peak(&[(0, Millis::MAX, 2), (5, 6, 1), (30, 40, 1)]), 3);
        assert_eq!(peak(&[(10, 10, 5)]), 0, "an empty interval holds nothing");
    }

    #[test]
    fn a_unit_resold_right_after_its_expiry_is_no_oversell() {
        // o1 expired at 3_000 (store time); o2 was created at 2_900 by a gateway whose
        // gate call waited for the release: within the slack.
        let stored = [
            order("o1", "u1", 1, OrderStatus::Expired, 0),
            order("o2", "u2", 1, OrderStatus::Paid, 2_900),
        ];
        let histories = [("o1".to_string(), vec![(OrderStatus::Expired, 3_000)])].into();
        let v = judge_with(
            &shape(1, 1),
            vec![accepted("u1", "o1", 1), accepted("u2", "o2", 1)],
            &stored,
            histories,
            0,
        );
        assert_eq!(v.violations(), 0, "{:?}", v.details);
        assert_eq!((v.acked, v.stored), (2, 2));
    }

    #[test]
    fn a_unit_sold_twice_is_oversold_and_a_second_order_is_over_the_limit() {
        let stored = [
            order("o1", "u1", 1, OrderStatus::Paid, 0),
            order("o2", "u2", 1, OrderStatus::Paid, 10),
            order("o3", "u1", 1, OrderStatus::Pending, 20),
        ];
        let v = judge_with(
            &shape(2, 1),
            vec![
                accepted("u1", "o1", 1),
                accepted("u2", "o2", 1),
                accepted("u1", "o3", 1),
            ],
            &stored,
            HashMap::new(),
            0,
        );
        assert_eq!(v.oversold, 1);
        assert_eq!(v.over_limit, 1);
        // o3 is pending past its window at `now`: it is not sold, and not back on sale.
        assert_eq!(v.leaked, 0, "2 paid + 0 remaining = 2");
    }

    #[test]
    fn lost_failed_duplicated_and_inconsistent_answers_are_counted() {
        let mut replayed = accepted("u3", "o3", 1);
        replayed.attempts.push(Attempt {
            sent_ms: 100,
            answered_ms: 110,
            gateway: 1,
            answer: Answer::Refused(409, "sold_out".into()),
            double_click: false,
            after_accept: true,
        });
        let mut twice = order("o5", "u4", 1, OrderStatus::Paid, 0);
        twice.idempotency_key = Some("u4-o4".into());
        let stored = [
            order("o2", "u2", 1, OrderStatus::Failed, 0),
            order("o3", "u3", 1, OrderStatus::Paid, 0),
            order("o4", "u4", 1, OrderStatus::Paid, 0),
            twice,
        ];
        let v = judge_with(
            &shape(10, 1),
            vec![
                accepted("u1", "o1", 1),
                accepted("u2", "o2", 1),
                replayed,
                accepted("u4", "o4", 1),
            ],
            &stored,
            HashMap::new(),
            7,
        );
        assert_eq!(v.lost, 2, "o1 missing, o2 failed: {:?}", v.details);
        assert_eq!(v.replay_mismatch, 1);
        assert_eq!(v.duplicated, 1, "{:?}", v.details);
        assert_eq!(v.over_limit, 1, "u4 holds two");
        assert_eq!(v.unacknowledged, 1, "o5");
        assert_eq!(v.stuck, 0);
        assert_eq!(v.leaked, 0, "3 paid + 7 remaining");
    }

    #[test]
    fn missing_orders_still_on_the_bus_are_undrained_not_lost() {
        let ledger = Ledger {
            intents: vec![
                accepted("u1", "o1", 1),
                accepted("u2", "o2", 1),
                accepted("u3", "o3", 1),
            ],
            payments: BTreeMap::new(),
        };
        let stored = [order("o1", "u1", 1, OrderStatus::Paid, 0)];
        let histories = HashMap::new();
        let judge_lag = |bus_lag| {
            judge(&Evidence {
                sale: &shape(5, 1),
                ledger: &ledger,
                stored: &stored,
                histories: &histories,
                remaining: Some(vec![4]),
                now: 100_000,
                check_ok: true,
                bus_lag,
            })
        };
        let v = judge_lag(Some(1));
        assert_eq!((v.lost, v.undrained), (1, 1));
        let v = judge_lag(None);
        assert_eq!(
            (v.lost, v.undrained),
            (2, 0),
            "the in-process bus holds nothing"
        );
    }

    #[test]
    fn a_key_that_never_got_a_final_answer_is_stuck() {
        let mut stuck = accepted("u1", "o1", 1);
        stuck.attempts[0].answer = Answer::Retry(503, "unavailable".into());
        stuck.outcome = None;
        let stored = [order("o1", "u1", 1, OrderStatus::Paid, 0)];
        let v = judge_with(&shape(5, 1), vec![stuck], &stored, HashMap::new(), 4);
        assert_eq!((v.stuck, v.unacknowledged, v.acked), (1, 1, 0));
        assert!(
            v.details[0].contains("1 of them have an order"),
            "{:?}",
            v.details
        );
    }

    #[test]
    fn units_neither_sold_nor_on_sale_have_leaked() {
        let stored = [order("o1", "u1", 1, OrderStatus::Expired, 0)];
        let histories = [("o1".to_string(), vec![(OrderStatus::Expired, 3_000)])].into();
        let v = judge_with(
            &shape(5, 1),
            vec![accepted("u1", "o1", 1)],
            &stored,
            histories,
            4,
        );
        assert_eq!(v.leaked, 1);
        let v = judge_with(&shape(5, 1), vec![], &[], HashMap::new(), 6);
        assert_eq!(v.surplus, 1);
    }
}
