//! `load --queue` and `demo --queue`: buyers join a sale's line at once, then follow
//! their tickets (polling) until each has its end; what the line did, and whether it
//! kept its order: the decisions' times must follow the tickets' places in the line.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;

use super::{LatencySummary, LoadError};
use crate::api::requests::PurchaseRequest;
use crate::client::{Client, TicketView};
use crate::domain::TicketStatus;

/// How many buyers join, from whom, and how they follow their tickets.
#[derive(Debug, Clone)]
pub struct LinePlan {
    pub base_url: String,
    pub sale_id: String,
    pub buyers: u64,
    /// Buyers are `buyer-{first_buyer}` onwards.
    pub first_buyer: u64,
    /// Joins (and ticket reads) in flight at once.
    pub connections: usize,
    /// Between two reads of the tickets still waiting.
    pub poll: Duration,
    /// Give up following after this long.
    pub patience: Duration,
    /// Follow the tickets to their end (else: join, and report the joins only).
    pub follow: bool,
    /// Each request from a random `X-Forwarded-For` (see `load --forwarded-for`).
    pub forwarded_for: bool,
}

/// What the line did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LineReport {
    /// Tickets the line gave (202; 200 for a buyer already in line counts too).
    pub joined: u64,
    /// Joins refused, by code.
    pub join_refused: BTreeMap<String, u64>,
    pub join_elapsed_s: f64,
    pub joins_per_s: f64,
    /// Answer times of the joins, in milliseconds.
    pub join_latency_ms: LatencySummary,
    /// Tickets decided with an order.
    pub success: u64,
    /// Tickets decided with a refusal, by code.
    pub refused: BTreeMap<String, u64>,
    pub timeout: u64,
    pub closed: u64,
    /// Tickets still waiting when the following gave up.
    pub still_waiting: u64,
    /// Time in line (join to the ticket's end), in milliseconds.
    pub wait_p50_ms: f64,
    pub wait_p99_ms: f64,
    /// Decisions over the time between the first and the last.
    pub decisions_per_s: f64,
    /// Decided tickets whose decision came before one of an earlier place: 0 when the
    /// line kept its order.
    pub out_of_order: u64,
    /// The orders the tickets were decided with.
    #[serde(skip)]
    pub orders: Vec<String>,
}

impl LineReport {
    pub fn ok(&self) -> bool {
        self.out_of_order == 0 && self.still_waiting == 0
    }

    pub fn render(&self) -> String {
        let codes = |map: &BTreeMap<String, u64>| {
            if map.is_empty() {
                "none".to_string()
            } else {
                (map.iter())
                    .map(|(code, n)| format!("{code} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        format!(
            "  joined      {joined} in {elapsed:.2} s ({jps:.0} joins/s) · join p50 {jp50:.2} ms · p99 {jp99:.2} ms · refused {jr}\n\
             \x20 decided     success {success} · refused {refused} · timeout {timeout} · closed {closed} · still waiting {waiting}\n\
             \x20 in line     p50 {wp50:.0} ms · p99 {wp99:.0} ms · {dps:.0} decisions/s\n\
             \x20 order       {order}",
            joined = self.joined,
            elapsed = self.join_elapsed_s,
            jps = self.joins_per_s,
            jp50 = self.join_latency_ms.p50,
            jp99 = self.join_latency_ms.p99,
            jr = codes(&self.join_refused),
            success = self.success,
            refused = codes(&self.refused),
            timeout = self.timeout,
            closed = self.closed,
            waiting = self.still_waiting,
            wp50 = self.wait_p50_ms,
            wp99 = self.wait_p99_ms,
            dps = self.decisions_per_s,
            order = if self.out_of_order == 0 {
                "kept: every decision in line order".to_string()
            } else {
                format!(
                    "BROKEN: {} decisions before an earlier place's",
                    self.out_of_order
                )
            },
        )
    }
}

/// Joins `plan.buyers` buyers at once, follows every ticket to its end, and reports.
pub async fn run(plan: LinePlan) -> Result<LineReport, LoadError> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(plan.connections)
        .timeout(Duration::from_secs(30))
        .build()?;
    let client = Arc::new(
        Client::with_http(&plan.base_url, http).with_random_forwarded_for(plan.forwarded_for),
    );
    let mut report = LineReport::default();
    let mut join_times = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");

    let started = Instant::now();
    let mut joins = futures_util::stream::iter(plan.first_buyer..plan.first_buyer + plan.buyers)
        .map(|n| {
            let (client, sale) = (client.clone(), plan.sale_id.clone());
            async move {
                let request = PurchaseRequest {
                    user_id: format!("buyer-{n}"),
                    ..PurchaseRequest::default()
                };
                let at = Instant::now();
                let joined = client.join(&sale, &request).await;
                (joined, at.elapsed())
            }
        })
        .buffer_unordered(plan.connections.max(1));
    let mut waiting = Vec::new();
    let mut ended = Vec::new();
    while let Some((joined, took)) = joins.next().await {
        join_times.saturating_record(took.as_micros() as u64);
        match joined {
            Ok((ticket, _new)) => {
                report.joined += 1;
                if !plan.follow {
                    continue;
                }
                if ticket.status == TicketStatus::Waiting {
                    waiting.push(ticket.ticket);
                } else {
                    ended.push(ticket);
                }
            }
            Err(e) => *report.join_refused.entry(e.code().to_string()).or_default() += 1,
        }
    }
    report.join_elapsed_s = started.elapsed().as_secs_f64();
    report.joins_per_s = report.joined as f64 / report.join_elapsed_s.max(1e-9);
    report.join_latency_ms = LatencySummary::of_micros(&join_times);

    // Follow the tickets still waiting until each has ended.
    let following = Instant::now();
    while !waiting.is_empty() && following.elapsed() < plan.patience {
        tokio::time::sleep(plan.poll).await;
        let reads = futures_util::stream::iter(waiting.clone())
            .map(|id| {
                let client = client.clone();
                async move { (client.ticket(&id).await, id) }
            })
            .buffer_unordered(plan.connections.max(1))
            .collect::<Vec<_>>()
            .await;
        waiting.clear();
        for (read, id) in reads {
            match read {
                Ok(ticket) if ticket.status != TicketStatus::Waiting => ended.push(ticket),
                // Still waiting, or not read this time: read again.
                _ => waiting.push(id),
            }
        }
    }
    report.still_waiting = waiting.len() as u64;
    if !plan.follow {
        return Ok(report);
    }
    judge(&mut report, ended);
    Ok(report)
}

fn time(at: &str) -> Option<DateTime<Utc>> {
    at.parse().ok()
}

/// Counts the ends, the time in line and the decision rate, and checks the order.
fn judge(report: &mut LineReport, mut ended: Vec<TicketView>) {
    let mut waits = Histogram::<u64>::new_with_bounds(1, 86_400_000, 3).expect("bounds");
    for ticket in &ended {
        match ticket.status {
            TicketStatus::Decided => match (&ticket.order, &ticket.refusal) {
                (Some(order), _) => {
                    report.success += 1;
                    report.orders.push(order.id.clone());
                }
                (None, refusal) => {
                    let code = refusal.as_ref().map_or("unknown", |r| r.code.as_str());
                    *report.refused.entry(code.to_string()).or_default() += 1;
                }
            },
            TicketStatus::Timeout => report.timeout += 1,
            TicketStatus::Closed => report.closed += 1,
            TicketStatus::Waiting => {}
        }
        if let (Some(joined), Some(decided)) = (
            time(&ticket.joined_at),
            ticket.decided_at.as_deref().and_then(time),
        ) {
            let ms = (decided - joined).num_milliseconds().max(1) as u64;
            waits.saturating_record(ms);
        }
    }
    report.wait_p50_ms = waits.value_at_quantile(0.5) as f64;
    report.wait_p99_ms = waits.value_at_quantile(0.99) as f64;

    // The decided tickets in line order: their decisions must not go back in time.
    ended.retain(|t| t.status == TicketStatus::Decided);
    ended.sort_by_key(|t| t.place);
    let decided: Vec<DateTime<Utc>> = (ended.iter())
        .filter_map(|t| t.decided_at.as_deref().and_then(time))
        .collect();
    let mut latest = None;
    for at in &decided {
        if latest.is_some_and(|latest| *at < latest) {
            report.out_of_order += 1;
        }
        latest = latest.max(Some(*at));
    }
    if let (Some(first), Some(last)) = (decided.iter().min(), decided.iter().max()) {
        let span = (*last - *first).num_milliseconds().max(1) as f64 / 1000.0;
        report.decisions_per_s = decided.len() as f64 / span;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{OrderView, RefusalView};

    fn ticket(place: u64, decided_at: &str, order: bool) -> TicketView {
        TicketView {
            ticket: format!("t{place}"),
            sale_id: "s".into(),
            place,
            status: TicketStatus::Decided,
            position: None,
            eta_s: None,
            nonce: "n".into(),
            joined_at: "2026-12-05T10:00:00Z".into(),
            decided_at: Some(decided_at.into()),
            order: order.then(|| {
                serde_json::from_value::<OrderView>(serde_json::json!({
                    "id": format!("o{place}"), "sale_id": "s", "user_id": "u",
                    "items": {"default": 1}, "quantity": 1, "status": "paid",
                    "created_at": "2026-12-05T10:00:01Z"
                }))
                .unwrap()
            }),
            refusal: (!order).then(|| RefusalView {
                code: "sold_out".into(),
                detail: String::new(),
            }),
        }
    }

    /// A decision earlier than an earlier place's is counted; ties are not.
    #[test]
    fn the_order_check_sees_a_later_place_decided_first() {
        let mut kept = LineReport::default();
        judge(
            &mut kept,
            vec![
                ticket(2, "2026-12-05T10:00:01.100Z", true),
                ticket(1, "2026-12-05T10:00:01.100Z", true),
                ticket(3, "2026-12-05T10:00:01.200Z", false),
            ],
        );
        assert_eq!(kept.out_of_order, 0);
        assert_eq!((kept.success, kept.refused["sold_out"]), (2, 1));
        assert_eq!(kept.wait_p50_ms, 1_100.0);
        let mut broken = LineReport::default();
        judge(
            &mut broken,
            vec![
                ticket(1, "2026-12-05T10:00:01.300Z", true),
                ticket(2, "2026-12-05T10:00:01.100Z", true),
            ],
        );
        assert_eq!(broken.out_of_order, 1);
        assert!(!broken.ok());
    }
}
