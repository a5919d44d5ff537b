//! The status line `serve` prints every few seconds (`--quiet` turns it off), as the
//! console report of the Kafka demo this started from: per sale that is live (or changed
//! since the last line) its remaining and sold units, and for the gateway the requests
//! per second, the purchase outcomes by code and the purchase p99 over the interval.
//! Read from the metrics this process records: the purchase path does no extra work.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use super::metrics::{HTTP_REQUESTS, PURCHASE_DURATION, PURCHASES};
use crate::domain::SaleStatus;
use crate::engine::Engine;

/// What the status line needs of a scrape.
#[derive(Default, Clone)]
struct Totals {
    requests: f64,
    outcomes: BTreeMap<String, f64>,
    /// Purchase duration histogram: upper bound (s) → cumulative count.
    buckets: Vec<(f64, f64)>,
}

fn totals(text: &str) -> Totals {
    let mut totals = Totals::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let label = |key: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{key}=\"")))
                .map(|v| v.trim_end_matches(['"', '}']).to_string())
        };
        if name == HTTP_REQUESTS {
            totals.requests += value;
        } else if name == PURCHASES {
            *totals
                .outcomes
                .entry(label("outcome").unwrap_or_default())
                .or_default() += value;
        } else if name == format!("{PURCHASE_DURATION}_bucket") {
            let le = label("le").unwrap_or_default();
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            totals.buckets.push((bound, value));
        }
    }
    totals.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    totals
}

/// The p99 of the purchases between two scrapes, as the bucket bound that holds it.
fn p99(now: &Totals, before: &Totals) -> Option<f64> {
    let earlier: HashMap<u64, f64> = before
        .buckets
        .iter()
        .map(|(b, c)| (b.to_bits(), *c))
        .collect();
    let delta: Vec<(f64, f64)> = now
        .buckets
        .iter()
        .map(|(b, c)| (*b, c - earlier.get(&b.to_bits()).copied().unwrap_or(0.0)))
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    delta
        .iter()
        .find(|(_, c)| *c >= 0.99 * total)
        .map(|(b, _)| *b)
}

fn count(n: f64) -> String {
    let n = n.round() as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Prints the status lines every `every` until `stop`.
pub async fn print_status(
    engine: Arc<Engine>,
    metrics: PrometheusHandle,
    every: Duration,
    stop: CancellationToken,
) {
    let mut before = totals(&metrics.render());
    let mut at = Instant::now();
    let mut last_remaining: HashMap<String, u64> = HashMap::new();
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = totals(&metrics.render());
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
                count(remaining as f64),
                count(stock as f64),
                count(stock.saturating_sub(remaining) as f64),
            );
        }
        let outcomes: Vec<String> = now
            .outcomes
            .iter()
            .filter_map(|(code, n)| {
                let delta = n - before.outcomes.get(code).copied().unwrap_or(0.0);
                (delta > 0.0).then(|| format!("{code} {}", count(delta)))
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
                count((now.requests - before.requests) / seconds),
                outcomes.join(", "),
                p99
            );
        }
        before = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_outcomes_and_the_p99_of_an_interval() {
        let before = totals(
            "flashsale_purchases_total{outcome=\"accepted\"} 10\n\
             flashsale_purchase_duration_seconds_bucket{le=\"0.001\"} 10\n\
             flashsale_purchase_duration_seconds_bucket{le=\"0.01\"} 10\n\
             flashsale_purchase_duration_seconds_bucket{le=\"+Inf\"} 10\n",
        );
        let now = totals(
            "flashsale_http_requests_total{route=\"/x\",method=\"POST\",status=\"202\"} 210\n\
             flashsale_purchases_total{outcome=\"accepted\"} 110\n\
             flashsale_purchases_total{outcome=\"sold_out\"} 100\n\
             flashsale_purchase_duration_seconds_bucket{le=\"0.001\"} 107\n\
             flashsale_purchase_duration_seconds_bucket{le=\"0.01\"} 209\n\
             flashsale_purchase_duration_seconds_bucket{le=\"+Inf\"} 210\n",
        );
        assert_eq!(now.requests, 210.0);
        assert_eq!(now.outcomes["sold_out"], 100.0);
        // 200 purchases in the interval: 97 under 1 ms, 199 under 10 ms → p99 ≤ 10 ms.
        assert_eq!(p99(&now, &before), Some(0.01));
        assert_eq!(p99(&before, &before), None);
        assert_eq!(count(1234567.0), "1,234,567");
    }
}
