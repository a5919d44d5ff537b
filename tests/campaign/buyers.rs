//! The simulated buyers of one scenario. Each buyer arrives at a random moment and makes
//! a few purchase intents one after the other; each intent has its own Idempotency-Key.
//! An intent is sent again with the same key (to the other gateway) while the answer is
//! 503 or no answer at all (a killed gateway, a timeout): no answer is never taken for a
//! refusal. Some intents are double clicks (the same key sent twice at once), some
//! accepted ones are replayed later, and a part of the accepted orders is paid within
//! the payment window. Everything sent and received is recorded for the verdict.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use serde_json::{Value, json};
use tokio::time::Instant;

/// How long an intent keeps retrying (503, no answer) before the buyer gives up.
pub const RETRY_BUDGET: Duration = Duration::from_secs(30);

/// What one HTTP request got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 202 with this order id.
    Accepted(String),
    /// A final refusal: status and code (409 sold_out, limit_reached, 422 …).
    Refused(u16, String),
    /// Try again: 503 (or another 5xx, or 429) with its code.
    Retry(u16, String),
    /// No HTTP answer (connection refused or reset, timeout).
    Unanswered(String),
}

impl Answer {
    fn is_final(&self) -> bool {
        matches!(self, Answer::Accepted(_) | Answer::Refused(..))
    }
}

#[derive(Debug, Clone)]
pub struct Attempt {
    /// Milliseconds since the load started.
    pub sent_ms: u64,
    pub answered_ms: u64,
    pub gateway: usize,
    pub answer: Answer,
    /// One of the two requests of a double click.
    pub double_click: bool,
    /// Sent after a 202 for this key had been received (a replay of a known order).
    pub after_accept: bool,
}

/// One purchase intent: one key, one body, every request sent for it.
#[derive(Debug, Clone)]
pub struct Intent {
    pub buyer: String,
    pub key: String,
    pub units: BTreeMap<String, u32>,
    pub attempts: Vec<Attempt>,
    /// The first final answer; `None` if the budget ran out on 503s / no answers.
    pub outcome: Option<Answer>,
}

impl Intent {
    /// Distinct order ids this key was answered with.
    pub fn accepted_ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self
            .attempts
            .iter()
            .filter_map(|a| match &a.answer {
                Answer::Accepted(id) => Some(id.as_str()),
                _ => None,
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// When the first 202 for this key was received.
    pub fn accepted_at_ms(&self) -> Option<u64> {
        self.attempts
            .iter()
            .filter(|a| matches!(a.answer, Answer::Accepted(_)))
            .map(|a| a.answered_ms)
            .min()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payment {
    Paid,
    /// Refused with a final status (e.g. 409 `expired`).
    Refused,
    /// No success before the window closed (404 while the worker lags, 503, no answer).
    Unconfirmed,
}

/// How the buyers of a sale behave.
#[derive(Debug, Clone)]
pub struct Plan {
    pub buyers: usize,
    /// Intents per buyer, inclusive range.
    pub intents: (usize, usize),
    /// Buyers arrive uniformly over this long.
    pub arrival: Duration,
    /// No buyer starts an intent this long after the start (an intent under way keeps
    /// retrying for its budget): a backend down for good cannot stretch the run for ever.
    pub stop_after: Duration,
    /// Pause between a buyer's intents, inclusive range in ms.
    pub think_ms: (u64, u64),
    pub double_click_ratio: f64,
    pub late_replay_ratio: f64,
    pub pay_ratio: f64,
    pub payment_window: Duration,
    /// The purchases buyers choose from (one is drawn per intent).
    pub baskets: Vec<BTreeMap<String, u32>>,
    /// HTTP requests in flight at most.
    pub concurrency: usize,
    pub seed: u64,
}

/// Where the buyers send their requests, and what they have seen so far.
pub struct Market {
    pub http: reqwest::Client,
    /// Base URLs of the gateways; a slot is replaced when its gateway is restarted.
    pub gateways: RwLock<Vec<String>>,
    pub sale: String,
    pub admin_token: String,
    pub started: Instant,
    /// Units acknowledged so far (first 202 of each key), to time the fault.
    pub acked_units: AtomicU64,
    pub requests: AtomicU64,
    /// Set when the run cannot prove anything any more (the test broker broke): buyers
    /// stop at once.
    pub abort: std::sync::atomic::AtomicBool,
    in_flight: tokio::sync::Semaphore,
}

/// What the buyers did.
#[derive(Debug, Default)]
pub struct Ledger {
    pub intents: Vec<Intent>,
    pub payments: BTreeMap<String, Payment>,
}

impl Market {
    pub fn new(
        gateways: Vec<String>,
        sale: String,
        admin_token: String,
        concurrency: usize,
    ) -> Market {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(15))
            .build()
            .expect("HTTP client");
        Market {
            http,
            gateways: RwLock::new(gateways),
            sale,
            admin_token,
            started: Instant::now(),
            acked_units: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            abort: Default::default(),
            in_flight: tokio::sync::Semaphore::new(concurrency),
        }
    }

    pub fn aborted(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
    }

    pub fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn gateway(&self, index: usize) -> String {
        let gateways = self.gateways.read();
        gateways[index % gateways.len()].clone()
    }

    pub fn gateway_count(&self) -> usize {
        self.gateways.read().len()
    }

    async fn purchase(&self, gateway: usize, body: &Value, key: &str) -> Answer {
        let _permit = self.in_flight.acquire().await.expect("open semaphore");
        self.requests.fetch_add(1, Ordering::Relaxed);
        let url = format!("{}/api/sales/{}/purchase", self.gateway(gateway), self.sale);
        let sent = self
            .http
            .post(url)
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) => return Answer::Unanswered(e.to_string()),
        };
        let status = response.status().as_u16();
        let body: Value = match response.bytes().await {
            // A body cut off is no answer: the key is retried.
            Err(e) => return Answer::Unanswered(e.to_string()),
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        };
        let code = body["code"].as_str().unwrap_or("").to_string();
        match status {
            202 => match body["id"].as_str() {
                Some(id) => Answer::Accepted(id.to_string()),
                None => Answer::Refused(202, format!("202 without an order id: {body}")),
            },
            429 | 500..=599 => Answer::Retry(status, code),
            _ => Answer::Refused(status, code),
        }
    }

    /// Runs one intent to a final answer (or until the budget runs out).
    async fn intent(
        self: &Arc<Self>,
        rng: &mut fastrand::Rng,
        buyer: &str,
        key: String,
        units: BTreeMap<String, u32>,
        double_click: bool,
        late_replay: bool,
    ) -> Intent {
        let body = purchase_body(buyer, &units);
        let mut intent = Intent {
            buyer: buyer.to_string(),
            key,
            units,
            attempts: Vec::new(),
            outcome: None,
        };
        let deadline = Instant::now() + RETRY_BUDGET;
        let mut gateway = rng.usize(..self.gateway_count());
        let mut first = true;
        let mut backoff = Duration::from_millis(50);
        loop {
            let sent_ms = self.elapsed_ms();
            let answers: Vec<(usize, Answer)> = if first && double_click {
                // The same key twice at once, to one gateway or to both.
                let other = if rng.bool() { gateway } else { gateway + 1 };
                let (a, b) = tokio::join!(
                    self.purchase(gateway, &body, &intent.key),
                    self.purchase(other, &body, &intent.key)
                );
                vec![(gateway, a), (other, b)]
            } else {
                vec![(gateway, self.purchase(gateway, &body, &intent.key).await)]
            };
            let answered_ms = self.elapsed_ms();
            for (g, answer) in answers {
                intent.attempts.push(Attempt {
                    sent_ms,
                    answered_ms,
                    gateway: g % self.gateway_count(),
                    answer,
                    double_click: first && double_click,
                    after_accept: false,
                });
            }
            first = false;
            let finals: Vec<&Answer> = intent
                .attempts
                .iter()
                .map(|a| &a.answer)
                .filter(|a| a.is_final())
                .collect();
            // A 202 is the answer even if its double click was refused (the verdict
            // looks at both).
            let accepted = finals.iter().find(|a| matches!(a, Answer::Accepted(_)));
            if let Some(answer) = accepted.or(finals.first()) {
                intent.outcome = Some((*answer).clone());
                break;
            }
            if Instant::now() >= deadline || self.aborted() {
                break;
            }
            // No answer or 503: the same key again, on the other gateway.
            gateway += 1;
            let jitter = Duration::from_millis(rng.u64(0..=backoff.as_millis() as u64));
            tokio::time::sleep(backoff / 2 + jitter).await;
            backoff = (backoff * 2).min(Duration::from_millis(400));
        }
        if matches!(intent.outcome, Some(Answer::Accepted(_))) {
            self.acked_units.fetch_add(
                intent.units.values().map(|&u| u as u64).sum(),
                Ordering::Relaxed,
            );
            if late_replay {
                tokio::time::sleep(Duration::from_millis(rng.u64(100..=1500))).await;
                self.replay(rng, &body, &mut intent, deadline).await;
            }
        }
        intent
    }

    /// Sends an accepted key again later (to either gateway); it must give the same order.
    async fn replay(
        &self,
        rng: &mut fastrand::Rng,
        body: &Value,
        intent: &mut Intent,
        deadline: Instant,
    ) {
        let mut gateway = rng.usize(..self.gateway_count());
        loop {
            let sent_ms = self.elapsed_ms();
            let answer = self.purchase(gateway, body, &intent.key).await;
            let done = answer.is_final();
            intent.attempts.push(Attempt {
                sent_ms,
                answered_ms: self.elapsed_ms(),
                gateway: gateway % self.gateway_count(),
                answer,
                double_click: false,
                after_accept: true,
            });
            if done || Instant::now() >= deadline || self.aborted() {
                return;
            }
            gateway += 1;
            tokio::time::sleep(Duration::from_millis(rng.u64(50..=200))).await;
        }
    }

    /// Pays an order within the window (the payment service's call, with the admin
    /// token). On the Kafka bus the order may not be stored yet: 404 is retried.
    async fn pay(&self, rng: &mut fastrand::Rng, order: &str, until: Instant) -> Payment {
        let mut gateway = rng.usize(..self.gateway_count());
        loop {
            let url = format!("{}/api/orders/{order}/pay", self.gateway(gateway));
            let sent = self
                .http
                .post(url)
                .bearer_auth(&self.admin_token)
                .send()
                .await;
            if let Ok(response) = sent {
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                match status {
                    200 if body["status"] == "paid" || body["order"]["status"] == "paid" => {
                        return Payment::Paid;
                    }
                    200 => return Payment::Refused,
                    404 | 429 | 500..=599 => {}
                    _ => return Payment::Refused,
                }
            }
            if Instant::now() >= until || self.aborted() {
                return Payment::Unconfirmed;
            }
            gateway += 1;
            tokio::time::sleep(Duration::from_millis(rng.u64(50..=150))).await;
        }
    }
}

pub fn purchase_body(buyer: &str, units: &BTreeMap<String, u32>) -> Value {
    match units.iter().next() {
        Some((item, &n)) if units.len() == 1 && item == flashsale::domain::DEFAULT_ITEM => {
            json!({"user_id": buyer, "quantity": n})
        }
        _ => json!({"user_id": buyer, "items": units}),
    }
}

/// Runs every buyer of the plan to the end; returns what they did.
pub async fn run(market: Arc<Market>, plan: &Plan) -> Ledger {
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut buyers = tokio::task::JoinSet::new();
    let mut seeds = fastrand::Rng::with_seed(plan.seed);
    for b in 0..plan.buyers {
        let (market, ledger, plan) = (market.clone(), ledger.clone(), plan.clone());
        let mut rng = fastrand::Rng::with_seed(seeds.u64(..));
        buyers.spawn(async move {
            let buyer = format!("buyer-{b}");
            let arrival = rng.u64(0..=plan.arrival.as_millis() as u64);
            tokio::time::sleep_until(market.started + Duration::from_millis(arrival)).await;
            let mut payments = tokio::task::JoinSet::new();
            for n in 0..rng.usize(plan.intents.0..=plan.intents.1) {
                if market.started.elapsed() > plan.stop_after || market.aborted() {
                    break;
                }
                let units = plan.baskets[rng.usize(..plan.baskets.len())].clone();
                let double_click = rng.f64() < plan.double_click_ratio;
                let late_replay = rng.f64() < plan.late_replay_ratio;
                let key = format!("{buyer}-key-{n}");
                let intent = market
                    .intent(&mut rng, &buyer, key, units, double_click, late_replay)
                    .await;
                if let Some(Answer::Accepted(id)) = &intent.outcome
                    && rng.f64() < plan.pay_ratio
                {
                    // Paid at a random moment within the first 60 % of the window.
                    let window = plan.payment_window.as_millis() as u64;
                    let delay = Duration::from_millis(rng.u64(0..=window * 6 / 10));
                    let until = Instant::now() + plan.payment_window + Duration::from_secs(2);
                    let (market, ledger, id) = (market.clone(), ledger.clone(), id.clone());
                    let mut rng = fastrand::Rng::with_seed(rng.u64(..));
                    payments.spawn(async move {
                        tokio::time::sleep(delay).await;
                        let paid = market.pay(&mut rng, &id, until).await;
                        ledger.lock().payments.insert(id, paid);
                    });
                }
                ledger.lock().intents.push(intent);
                tokio::time::sleep(Duration::from_millis(
                    rng.u64(plan.think_ms.0..=plan.think_ms.1),
                ))
                .await;
            }
            while payments.join_next().await.is_some() {}
        });
    }
    while let Some(done) = buyers.join_next().await {
        done.expect("a buyer task panicked");
    }
    Arc::try_unwrap(ledger)
        .map(Mutex::into_inner)
        .unwrap_or_else(|_| panic!("buyers still hold the ledger"))
}
