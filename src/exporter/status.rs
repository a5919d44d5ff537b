//! The status line `serve` prints every few seconds (`--quiet` turns it off), as the
//! console report of the Kafka demo this started from: per sale that is live (or changed
//! since the last line) its remaining and sold units, and for the gateway the requests
//! per second, the purchase outcomes by code and the purchase p99 over the interval.
//! Read from the totals `crate::observe` keeps: the purchase path does no extra work.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::domain::SaleStatus;
use crate::engine::Engine;
use crate::observe::metrics::{Totals, totals};

/// The p99 of the purchases between two scrapes, as the bucket bound that holds it.
fn p99(now: &Totals, before: &Totals) -> Option<f64> {
    let earlier: HashMap<u64, u64> = before
        .buckets
        .iter()
        .map(|(b, c)| (b.to_bits(), *c))
        .collect();
    let delta: Vec<(f64, u64)> = now
        .buckets
        .iter()
        .map(|(b, c)| {
            let before = earlier.get(&b.to_bits()).copied().unwrap_or(0);
            (*b, c.saturating_sub(before))
        })
        .collect();
    let total = delta.last()?.1;
    if total == 0 {
        return None;
    }
    delta
        .iter()
        .find(|(_, c)| *c as f64 >= 0.99 * total as f64)
        .map(|(b, _)| *b)
}

fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Prints the status lines every `every` until `stop`.
pub async fn print_status(engine: Arc<Engine>, every: Duration, stop: CancellationToken) {
    let mut before = totals();
    let mut at = Instant::now();
    let mut last_remaining: HashMap<String, u64> = HashMap::new();
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = totals();
        let seconds = at.elapsed().as_secs_f64().max(0.001);
        at = Instant::now();
        let sales = engine.recent_sales(20).await.unwrap_or_default();
        for sale in sales {
            let remaining: u64 = sale.remaining.iter().map(|&r| r as u64).sum();
            let status = sale.sale.status(crate::domain::now_millis(), remaining);
            let changed = last_remaining.insert(sale.sale.id.clone(), remaining) != Some(remaining);
            if !changed && !matches!(status, SaleStatus::Live | SaleStatus::Paused) {
                continue;
            }
            let stock = sale.sale.total_stock();
            println!(
                "[status] sale {} ({}) {}: {} left of {}, {} sold",
                sale.sale.name,
                &sale.sale.id[sale.sale.id.len().saturating_sub(8)..],
                serde_json::to_value(status)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                count(remaining),
                count(stock),
                count(stock.saturating_sub(remaining)),
            );
        }
        let outcomes: Vec<String> = now
            .outcomes
            .iter()
            .filter_map(|(code, n)| {
                let delta = n.saturating_sub(before.outcomes.get(code).copied().unwrap_or(0));
                (delta > 0).then(|| format!("{code} {}", count(delta)))
            })
            .collect();
        if !outcomes.is_empty() {
            let p99 = p99(&now, &before)
                .map(|s| {
                    if s.is_finite() {
                        format!("≤ {:.1} ms", s * 1000.0)
                    } else {
                        "> 10 s".into()
                    }
                })
                .unwrap_or_else(|| "-".into());
            println!(
                "[status] {} req/s | purchases: {} | p99 {}",
                count(
                    (now.requests.saturating_sub(before.requests) as f64 / seconds).round() as u64
                ),
                outcomes.join(", "),
                p99
            );
        }
        if let Some(line) = line_status(&now, &before) {
            println!("{line}");
        }
        before = now;
    }
}

/// The lines' figures over an interval (the reference design's success / timeout / fail
/// counts), when a line moved or has tickets waiting.
fn line_status(now: &Totals, before: &Totals) -> Option<String> {
    let (n, b) = (&now.line, &before.line);
    let joined = n.joined.saturating_sub(b.joined);
    let ended = [
        ("success", n.success.saturating_sub(b.success)),
        ("fail", n.refused.saturating_sub(b.refused)),
        ("timeout", n.timeout.saturating_sub(b.timeout)),
        ("closed", n.closed.saturating_sub(b.closed)),
    ];
    if joined == 0 && n.waiting <= 0 && ended.iter().all(|(_, d)| *d == 0) {
        return None;
    }
    let ended: Vec<String> = ended
        .iter()
        .map(|(what, d)| format!("{what} {}", count(*d)))
        .collect();
    Some(format!(
        "[status] line: {} joined | {} | {} waiting",
        count(joined),
        ended.join(", "),
        count(n.waiting.max(0) as u64)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_outcomes_and_the_p99_of_an_interval() {
        let buckets = |under_1ms, under_10ms, all| {
            vec![(0.001, under_1ms), (0.01, under_10ms), (f64::INFINITY, all)]
        };
        let before = Totals {
            requests: 10,
            outcomes: [("accepted", 10)].into(),
            buckets: buckets(10, 10, 10),
            ..Totals::default()
        };
        let now = Totals {
            requests: 210,
            outcomes: [("accepted", 110), ("sold_out", 100)].into(),
            buckets: buckets(107, 209, 210),
            ..Totals::default()
        };
        // 200 purchases in the interval: 97 under 1 ms, 199 under 10 ms → p99 ≤ 10 ms.
        assert_eq!(p99(&now, &before), Some(0.01));
        assert_eq!(p99(&before, &before), None);
        assert_eq!(count(1234567), "1,234,567");
    }

    #[test]
    fn the_line_is_shown_when_it_moves_or_holds_tickets() {
        let mut before = Totals::default();
        assert_eq!(line_status(&before, &before), None);
        let mut now = before.clone();
        now.line.joined = 1_200;
        now.line.waiting = 1_140;
        now.line.success = 50;
        now.line.refused = 10;
        assert_eq!(
            line_status(&now, &before).unwrap(),
            "[status] line: 1,200 joined | success 50, fail 10, timeout 0, closed 0 | 1,140 waiting"
        );
        // Nothing moved, but tickets wait: still shown.
        before = now.clone();
        assert!(
            line_status(&now, &before)
                .unwrap()
                .ends_with("| 1,140 waiting")
        );
        now.line.waiting = 0;
        before = now.clone();
        assert_eq!(line_status(&now, &before), None);
    }

    #[test]
    fn the_totals_count_what_the_recorder_records() {
        let before = totals();
        crate::observe::metrics::purchase_answered("sold_out", Duration::from_micros(300));
        crate::observe::metrics::purchase_answered("sold_out", Duration::from_secs(60));
        let now = totals();
        let sold_out = |t: &Totals| t.outcomes.get("sold_out").copied().unwrap_or(0);
        assert_eq!(sold_out(&now) - sold_out(&before), 2);
        let within =
            |t: &Totals, bound: f64| t.buckets.iter().find(|(b, _)| *b == bound).unwrap().1;
        assert!(within(&now, 0.0005) > within(&before, 0.0005));
        assert!(within(&now, f64::INFINITY) >= within(&before, f64::INFINITY) + 2);
    }
}
