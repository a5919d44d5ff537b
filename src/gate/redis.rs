//! Redis stock gate: one Lua script decides a purchase, one releases it, one confirms
//! a key's answer. Scripts are sent by SHA (EVALSHA; loaded again on NOSCRIPT). Every key
//! of a sale shares the hash tag `{sale:<id>}`, so one Redis Cluster slot holds a sale.
//!
//! Each gateway keeps a local sold-out flag per sale, so that refusals after the sell-out
//! cost no round trip. Stock coming back (release) publishes on `flashsale:restock`,
//! which drops the flag on every gateway; the flag also lapses after `SOLD_OUT_TTL` in
//! case a message is missed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use parking_lot::RwLock;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};

use super::{Decision, GateError, KeyAnswer, SaleSnapshot, StockGate};
use crate::domain::{Millis, Order, Refusal, Sale, ValidPurchase};

const RESTOCK_CHANNEL: &str = "flashsale:restock";
const SOLD_OUT_TTL: Duration = Duration::from_secs(1);
/// How long a buyer's idempotency key is remembered.
const KEY_TTL_MS: u64 = 24 * 3600 * 1000;

pub struct RedisGate {
    conn: ConnectionManager,
    deadline: Duration,
    reserve: Script,
    release: Script,
    confirm: Script,
    open: Script,
    drop_hold: Script,
    /// sale id → when this gateway saw it sold out.
    sold_out: Arc<RwLock<HashMap<String, Instant>>>,
    /// The restock listener; it stops when the gate is dropped.
    _restock_listener: AbortOnDrop,
}

/// Owns a background task: aborts it when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The Redis keys of one sale.
struct SaleKeys {
    meta: String,
    stock: String,
    buyers: String,
    released: String,
    holds: String,
    hold_details: String,
}

impl SaleKeys {
    fn new(sale_id: &str) -> Self {
        SaleKeys {
            meta: format!("{{sale:{sale_id}}}:meta"),
            stock: format!("{{sale:{sale_id}}}:stock"),
            buyers: format!("{{sale:{sale_id}}}:buyers"),
            released: format!("{{sale:{sale_id}}}:released"),
            holds: format!("{{sale:{sale_id}}}:holds"),
            hold_details: format!("{{sale:{sale_id}}}:hold-details"),
        }
    }

    /// The key of a buyer's idempotency key; the user id's length keeps it unambiguous.
    fn idempotency(sale_id: &str, user_id: &str, key: &str) -> String {
        format!("{{sale:{sale_id}}}:idem:{}:{user_id}:{key}", user_id.len())
    }
}

fn unavailable(e: impl std::fmt::Display) -> GateError {
    GateError::Unavailable(e.to_string())
}

impl RedisGate {
    /// Connects to `redis://host:port[/db]`; `deadline` bounds every call.
    pub async fn connect(url: &str, deadline: Duration) -> Result<RedisGate, GateError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(deadline))
            .set_response_timeout(Some(deadline))
            .set_number_of_retries(1);
        let conn = tokio::time::timeout(
            deadline,
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        .map_err(|_| unavailable("timed out connecting to Redis"))?
        .map_err(unavailable)?;
        let sold_out = Arc::new(RwLock::new(HashMap::new()));
        let listener = tokio::spawn(listen_for_restock(client, sold_out.clone()));
        Ok(RedisGate {
            conn,
            deadline,
            reserve: Script::new(include_str!("lua/reserve.lua")),
            release: Script::new(include_str!("lua/release.lua")),
            confirm: Script::new(include_str!("lua/confirm.lua")),
            open: Script::new(include_str!("lua/open.lua")),
            drop_hold: Script::new(include_str!("lua/drop_hold.lua")),
            sold_out,
            _restock_listener: AbortOnDrop(listener),
        })
    }

    async fn bounded<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, GateError> {
        tokio::time::timeout(self.deadline, call)
            .await
            .map_err(|_| unavailable("Redis did not answer in time"))?
            .map_err(unavailable)
    }

    fn locally_sold_out(&self, sale_id: &str) -> bool {
        self.sold_out
            .read()
            .get(sale_id)
            .is_some_and(|seen| seen.elapsed() < SOLD_OUT_TTL)
    }
}

/// Drops local sold-out flags when any gateway releases stock; reconnects on failure.
async fn listen_for_restock(
    client: redis::Client,
    sold_out: Arc<RwLock<HashMap<String, Instant>>>,
) {
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => {
                if pubsub.subscribe(RESTOCK_CHANNEL).await.is_ok() {
                    let mut messages = pubsub.into_on_message();
                    while let Some(msg) = messages.next().await {
                        if let Ok(sale_id) = msg.get_payload::<String>() {
                            sold_out.write().remove(&sale_id);
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "restock subscription failed"),
        }
        // The subscription is gone: forget every flag, then try again.
        sold_out.write().clear();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn parse_answer(answer: &str) -> Result<KeyAnswer, GateError> {
    let (kind, payload) = answer.split_once('\n').unwrap_or((answer, ""));
    match kind {
        "inflight" => Ok(KeyAnswer::InFlight {
            order_id: payload.to_string(),
        }),
        "accepted" => serde_json::from_str::<Order>(payload)
            .map(|o| KeyAnswer::Accepted(Arc::new(o)))
            .map_err(|e| unavailable(format!("corrupt key answer: {e}"))),
        "refused" => Refusal::from_code(payload)
            .map(KeyAnswer::Refused)
            .ok_or_else(|| unavailable(format!("unknown refusal {payload:?}"))),
        other => Err(unavailable(format!("unknown key answer {other:?}"))),
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(n) => n.to_string(),
        _ => String::new(),
    }
}

#[async_trait]
impl StockGate for RedisGate {
    async fn open_sale(&self, sale: &Sale) -> Result<(), GateError> {
        let keys = SaleKeys::new(&sale.id);
        let mut call = self.open.key(&keys.meta);
        call.key(&keys.stock)
            .arg(sale.starts_at)
            .arg(sale.ends_at.map(|e| e.to_string()).unwrap_or_default())
            .arg(sale.per_user_limit);
        for item in &sale.items {
            call.arg(item.stock);
        }
        let mut conn = self.conn.clone();
        self.bounded(call.invoke_async::<i64>(&mut conn)).await?;
        Ok(())
    }

    async fn has_sale(&self, sale: &Sale) -> Result<bool, GateError> {
        let mut conn = self.conn.clone();
        let meta = SaleKeys::new(&sale.id).meta;
        self.bounded(
            redis::cmd("EXISTS")
                .arg(meta)
                .query_async::<bool>(&mut conn),
        )
        .await
    }

    async fn restore(&self, sale: &Sale, snapshot: &SaleSnapshot) -> Result<(), GateError> {
        let keys = SaleKeys::new(&sale.id);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(&keys.meta)
            .del(&keys.stock)
            .del(&keys.buyers);
        let mut left: u64 = 0;
        for (i, item) in sale.items.iter().enumerate() {
            let remaining = item
                .stock
                .saturating_sub(snapshot.sold.get(i).copied().unwrap_or(0));
            left += remaining as u64;
            pipe.hset(&keys.stock, i, remaining);
        }
        for (user, units) in &snapshot.buyers {
            pipe.hset(&keys.buyers, user, units);
        }
        for order in &snapshot.keyed_orders {
            let Some(key) = order.idempotency_key.as_deref() else {
                continue;
            };
            let json = serde_json::to_string(order).expect("orders serialize");
            let value = format!("{}\naccepted\n{json}", order.fingerprint);
            pipe.pset_ex(
                SaleKeys::idempotency(&sale.id, &order.user_id, key),
                value,
                KEY_TTL_MS,
            );
        }
        // meta last: the sale only exists for other gateways once everything is in.
        pipe.hset_multiple(
            &keys.meta,
            &[
                ("starts_at", sale.starts_at.to_string()),
                (
                    "ends_at",
                    sale.ends_at.map(|e| e.to_string()).unwrap_or_default(),
                ),
                ("limit", sale.per_user_limit.to_string()),
                ("left", left.to_string()),
            ],
        );
        let mut conn = self.conn.clone();
        self.bounded(pipe.query_async::<()>(&mut conn)).await?;
        self.sold_out.write().remove(&sale.id);
        Ok(())
    }

    async fn reserve(
        &self,
        sale: &Sale,
        purchase: &ValidPurchase,
        key: Option<&str>,
        order_id: &str,
        now: Millis,
    ) -> Result<Decision, GateError> {
        if key.is_none() {
            if let Some(refusal) = sale.window_refusal(now) {
                return Ok(Decision::Refused(refusal));
            }
            if self.locally_sold_out(&sale.id) {
                return Ok(Decision::Refused(Refusal::SoldOut));
            }
        }
        let keys = SaleKeys::new(&sale.id);
        let idem = key
            .map(|k| SaleKeys::idempotency(&sale.id, &purchase.user_id, k))
            .unwrap_or_else(|| keys.meta.clone());
        let mut call = self.reserve.key(&keys.meta);
        call.key(&keys.stock)
            .key(&keys.buyers)
            .key(&idem)
            .key(&keys.holds)
            .key(&keys.hold_details)
            .arg(now)
            .arg(&purchase.user_id)
            .arg(&purchase.fingerprint)
            .arg(order_id)
            .arg(KEY_TTL_MS)
            .arg(key.is_some() as u8);
        for &(item, units) in &purchase.units {
            call.arg(item).arg(units);
        }
        let mut conn = self.conn.clone();
        let reply: Vec<Value> = self.bounded(call.invoke_async(&mut conn)).await?;
        let kind = reply.first().map(text).unwrap_or_default();
        match kind.as_str() {
            "reserved" => Ok(Decision::Reserved),
            "key_reused" => Ok(Decision::KeyReused),
            "replay" => Ok(Decision::Replay(parse_answer(&text(&reply[1]))?)),
            "refused" => {
                let code = reply.get(1).map(text).unwrap_or_default();
                let refusal = Refusal::from_code(&code)
                    .ok_or_else(|| unavailable(format!("unknown refusal {code:?}")))?;
                let left: i64 = reply
                    .get(2)
                    .map(text)
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(1);
                if refusal == Refusal::SoldOut && left <= 0 {
                    self.sold_out
                        .write()
                        .insert(sale.id.clone(), Instant::now());
                }
                Ok(Decision::Refused(refusal))
            }
            "unknown" => Err(GateError::UnknownSale(sale.id.clone())),
            other => Err(unavailable(format!("unexpected reply {other:?}"))),
        }
    }

    async fn confirm(&self, sale: &Sale, order: &Order) -> Result<(), GateError> {
        let keys = SaleKeys::new(&sale.id);
        let idem = order
            .idempotency_key
            .as_deref()
            .map(|k| SaleKeys::idempotency(&sale.id, &order.user_id, k))
            .unwrap_or_else(|| keys.holds.clone());
        let json = serde_json::to_string(order).expect("orders serialize");
        let mut call = self.confirm.key(&keys.holds);
        call.key(&keys.hold_details)
            .key(idem)
            .arg(&order.id)
            .arg(json)
            .arg(order.idempotency_key.is_some() as u8);
        let mut conn = self.conn.clone();
        self.bounded(call.invoke_async::<i64>(&mut conn)).await?;
        Ok(())
    }

    async fn release(&self, sale: &Sale, order: &Order, forget_key: bool) -> Result<(), GateError> {
        let keys = SaleKeys::new(&sale.id);
        let idem = order
            .idempotency_key
            .as_deref()
            .map(|k| SaleKeys::idempotency(&sale.id, &order.user_id, k))
            .unwrap_or_else(|| keys.meta.clone());
        let mut call = self.release.key(&keys.meta);
        call.key(&keys.stock)
            .key(&keys.buyers)
            .key(&idem)
            .key(&keys.released)
            .key(&keys.holds)
            .key(&keys.hold_details)
            .arg(&order.user_id)
            .arg(&order.id)
            .arg((forget_key && order.idempotency_key.is_some()) as u8)
            .arg(&sale.id);
        for (item, units) in order.units(sale) {
            call.arg(item).arg(units);
        }
        let mut conn = self.conn.clone();
        self.bounded(call.invoke_async::<i64>(&mut conn)).await?;
        self.sold_out.write().remove(&sale.id);
        Ok(())
    }

    async fn key_answer(
        &self,
        sale: &Sale,
        user_id: &str,
        key: &str,
    ) -> Result<Option<KeyAnswer>, GateError> {
        let mut conn = self.conn.clone();
        let idem = SaleKeys::idempotency(&sale.id, user_id, key);
        let value: Option<String> = self
            .bounded(redis::cmd("GET").arg(idem).query_async(&mut conn))
            .await?;
        value
            .map(|v| {
                let (_, answer) = v.split_once('\n').unwrap_or(("", &v));
                parse_answer(answer)
            })
            .transpose()
    }

    async fn stale_holds(&self, sale: &Sale, older_than: Millis) -> Result<Vec<String>, GateError> {
        let mut conn = self.conn.clone();
        let holds = SaleKeys::new(&sale.id).holds;
        self.bounded(
            redis::cmd("ZRANGEBYSCORE")
                .arg(holds)
                .arg("-inf")
                .arg(older_than)
                .arg("LIMIT")
                .arg(0)
                .arg(500)
                .query_async(&mut conn),
        )
        .await
    }

    async fn drop_hold(&self, sale: &Sale, order_id: &str, release: bool) -> Result<(), GateError> {
        let keys = SaleKeys::new(&sale.id);
        let mut call = self.drop_hold.key(&keys.meta);
        call.key(&keys.stock)
            .key(&keys.buyers)
            .key(&keys.holds)
            .key(&keys.hold_details)
            .key(&keys.released)
            .arg(order_id)
            .arg(release as u8)
            .arg(&sale.id);
        let mut conn = self.conn.clone();
        self.bounded(call.invoke_async::<i64>(&mut conn)).await?;
        if release {
            self.sold_out.write().remove(&sale.id);
        }
        Ok(())
    }

    async fn remaining(&self, sale: &Sale) -> Result<Vec<u32>, GateError> {
        let mut conn = self.conn.clone();
        let stock: HashMap<usize, i64> = self
            .bounded(
                redis::cmd("HGETALL")
                    .arg(SaleKeys::new(&sale.id).stock)
                    .query_async(&mut conn),
            )
            .await?;
        if stock.is_empty() {
            return Err(GateError::UnknownSale(sale.id.clone()));
        }
        Ok((0..sale.items.len())
            .map(|i| stock.get(&i).copied().unwrap_or(0).max(0) as u32)
            .collect())
    }
}
