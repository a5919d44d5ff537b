//! Load generator: many buyers racing for a sale over real HTTP, some retrying or
//! double-clicking with the same Idempotency-Key. Used by `demo` (and grows into `load`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;

#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub base_url: String,
    pub sale_id: String,
    /// Distinct buyers; each tries to buy once (plus its retries).
    pub buyers: u64,
    /// Concurrent keep-alive connections (closed loop).
    pub connections: usize,
    /// Share of buyers that send their request again, with the same key, after the answer.
    pub retry_ratio: f64,
    /// Share of buyers that send two requests at once with the same key.
    pub double_click_ratio: f64,
    /// Units asked per purchase.
    pub quantity: u32,
}

/// The answer to one purchase request, as the buyer saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Accepted {
        order_id: String,
        units: u32,
    },
    Refused {
        status: u16,
        code: String,
    },
    /// No HTTP answer at all (connection refused or reset).
    Transport,
}

#[derive(Debug, Clone)]
pub struct AcceptedOrder {
    pub user_id: String,
    pub order_id: String,
    pub units: u32,
}

#[derive(Debug)]
pub struct LoadReport {
    pub requests: u64,
    /// Every order acknowledged with 202, once per order id.
    pub accepted: Vec<AcceptedOrder>,
    /// Refusals by code (`transport` for requests that got no answer).
    pub rejected: BTreeMap<String, u64>,
    /// Retries or double clicks whose answers disagree (I5).
    pub replay_mismatches: u64,
    /// Latency of every request, in microseconds.
    pub latency_us: Histogram<u64>,
    pub elapsed: Duration,
}

impl LoadReport {
    pub fn throughput_rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// A latency quantile in milliseconds.
    pub fn latency_ms(&self, quantile: f64) -> f64 {
        self.latency_us.value_at_quantile(quantile) as f64 / 1000.0
    }
}

struct BuyerRun {
    requests: u64,
    answers: Vec<(String, Answer)>,
    mismatch: bool,
}

pub async fn run(plan: LoadPlan) -> anyhow::Result<LoadReport> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(plan.connections * 2)
        .timeout(Duration::from_secs(30))
        .build()?;
    let url = format!(
        "{}/api/sales/{}/purchase",
        plan.base_url.trim_end_matches('/'),
        plan.sale_id
    );
    let plan = Arc::new(plan);
    let order = Arc::new(shuffled(plan.buyers));
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();

    let mut tasks = Vec::with_capacity(plan.connections);
    for _ in 0..plan.connections.max(1) {
        let (client, url, plan, order, next) = (
            client.clone(),
            url.clone(),
            plan.clone(),
            order.clone(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut histogram = latency_histogram();
            let mut runs = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= plan.buyers {
                    break;
                }
                let user = format!("buyer-{}", order[i as usize]);
                runs.push(buy(&client, &url, &plan, user, &mut histogram).await);
            }
            (histogram, runs)
        }));
    }

    let mut report = LoadReport {
        requests: 0,
        accepted: Vec::new(),
        rejected: BTreeMap::new(),
        replay_mismatches: 0,
        latency_us: latency_histogram(),
        elapsed: Duration::ZERO,
    };
    let mut seen = std::collections::HashSet::new();
    for task in tasks {
        let (histogram, runs) = task.await?;
        report.latency_us.add(histogram)?;
        for run in runs {
            report.requests += run.requests;
            report.replay_mismatches += run.mismatch as u64;
            for (user_id, answer) in run.answers {
                match answer {
                    Answer::Accepted { order_id, units } => {
                        if seen.insert(order_id.clone()) {
                            report.accepted.push(AcceptedOrder {
                                user_id,
                                order_id,
                                units,
                            });
                        }
                    }
                    Answer::Refused { code, .. } => *report.rejected.entry(code).or_default() += 1,
                    Answer::Transport => {
                        *report.rejected.entry("transport".into()).or_default() += 1
                    }
                }
            }
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// One buyer's attempt: a single request, a retry after the answer, or a double click.
async fn buy(
    client: &reqwest::Client,
    url: &str,
    plan: &LoadPlan,
    user: String,
    histogram: &mut Histogram<u64>,
) -> BuyerRun {
    let body = json!({ "user_id": user, "quantity": plan.quantity });
    let roll = fastrand::f64();
    let key = uuid::Uuid::new_v4().to_string();
    let (answers, mismatch) = if roll < plan.double_click_ratio {
        let (a, b) = tokio::join!(
            send(client, url, &body, Some(&key)),
            send(client, url, &body, Some(&key))
        );
        let mismatch = !consistent(&a.0, &b.0);
        (vec![a, b], mismatch)
    } else if roll < plan.double_click_ratio + plan.retry_ratio {
        let first = send(client, url, &body, Some(&key)).await;
        let again = send(client, url, &body, Some(&key)).await;
        let mismatch = !consistent(&first.0, &again.0);
        (vec![first, again], mismatch)
    } else {
        let key = fastrand::bool().then_some(key.as_str());
        (vec![send(client, url, &body, key).await], false)
    };
    for (_, took) in &answers {
        histogram.saturating_record(took.as_micros() as u64);
    }
    BuyerRun {
        requests: answers.len() as u64,
        answers: answers
            .into_iter()
            .map(|(a, _)| (user.clone(), a))
            .collect(),
        mismatch,
    }
}

/// Two answers to the same key agree, unless one of them is a transient failure.
fn consistent(a: &Answer, b: &Answer) -> bool {
    let transient = |x: &Answer| match x {
        Answer::Transport => true,
        Answer::Refused { status, .. } => *status >= 500 || *status == 429,
        Answer::Accepted { .. } => false,
    };
    transient(a) || transient(b) || a == b
}

async fn send(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
    key: Option<&str>,
) -> (Answer, Duration) {
    let started = Instant::now();
    let mut request = client.post(url).json(body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let answer = match request.send().await {
        Err(_) => Answer::Transport,
        Ok(response) => {
            let status = response.status().as_u16();
            match response.json::<serde_json::Value>().await {
                Err(_) => Answer::Transport,
                Ok(v) if status == 202 => Answer::Accepted {
                    order_id: v["id"].as_str().unwrap_or_default().to_string(),
                    units: v["quantity"].as_u64().unwrap_or(0) as u32,
                },
                Ok(v) => Answer::Refused {
                    status,
                    code: v["code"].as_str().unwrap_or("unknown").to_string(),
                },
            }
        }
    };
    (answer, started.elapsed())
}

/// 0..n in random order, so buyer ids do not arrive sorted.
fn shuffled(n: u64) -> Vec<u64> {
    let mut ids: Vec<u64> = (0..n).collect();
    fastrand::shuffle(&mut ids);
    ids
}

/// Microseconds from 1 µs to 10 minutes, 3 significant digits.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}
