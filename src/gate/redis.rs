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

use super::{
    AbortOnDrop, Decision, GateError, HoldEnd, KeyAnswer, KeyPolicy, RebuildLease, SaleSnapshot,
    StockGate,
};
use crate::domain::{Millis, Order, Refusal, Sale, ValidPurchase};

const RESTOCK_CHANNEL: &str = "flashsale:restock";
const SOLD_OUT_TTL: Duration = Duration::from_secs(1);
/// How long a rebuild lease lasts unless renewed (it is renewed every third of it).
const LEASE_MS: u64 = 10_000;
pub struct RedisGate {
    conn: ConnectionManager,
    deadline: Duration,
    reserve: Script,
    release: Script,
    confirm: Script,
    open: Script,
    drop_hold: Script,
    restore: Script,
    lease: Script,
    update: Script,
    keys: KeyPolicy,
    /// sale id → when this gateway saw it sold out.
    sold_out: Arc<RwLock<HashMap<String, Instant>>>,
    /// The restock listener; it stops when the gate is dropped.
    _restock_listener: AbortOnDrop,
}

/// The Redis keys of one sale.
struct SaleKeys {
    meta: String,
    stock: String,
    buyers: String,
    released: String,
    holds: String,
    hold_details: String,
    lease: String,
    counted: String,
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
            lease: format!("{{sale:{sale_id}}}:rebuild-lease"),
            counted: format!("{{sale:{sale_id}}}:counted"),
        }
    }

    /// The key of a buyer's idempotency key; the user id's length keeps it unambiguous.
    fn idempotency(sale_id: &str, user_id: &str, key: &str) -> String {
        format!("{{sale:{sale_id}}}:idem:{}:{user_id}:{key}", user_id.len())
    }

    /// A buyer's live idempotency keys (sorted set: key name by expiry), to count them.
    /// drop_hold.lua builds the same name from the meta key's prefix.
    fn key_index(sale_id: &str, user_id: &str) -> String {
        format!("{{sale:{sale_id}}}:keys:{}:{user_id}", user_id.len())
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
            restore: Script::new(include_str!("lua/restore.lua")),
            lease: Script::new(include_str!("lua/lease.lua")),
            update: Script::new(include_str!("lua/update.lua")),
            keys: KeyPolicy::default(),
            sold_out,
            _restock_listener: AbortOnDrop(listener),
        })
    }

    pub fn with_key_policy(mut self, keys: KeyPolicy) -> Self {
        self.keys = keys;
        self
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

    fn shared(&self) -> bool {
        true
    }

    async fn lease_rebuild(&self, sale: &Sale) -> Result<Option<RebuildLease>, GateError> {
        let key = SaleKeys::new(&sale.id).lease;
        let token = uuid::Uuid::new_v4().simple().to_string();
        let mut conn = self.conn.clone();
        let taken: Option<String> = self
            .bounded(
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(LEASE_MS)
                    .query_async(&mut conn),
            )
            .await?;
        if taken.is_none() {
            return Ok(None);
        }
        // Renewed every third of its life while the rebuild runs; if this gateway dies,
        // it lapses and another one may rebuild.
        let (script, owner) = (self.lease.clone(), token.clone());
        let renewal = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(LEASE_MS / 3)).await;
                let renewed = script
                    .key(&key)
                    .arg(&owner)
                    .arg(LEASE_MS)
                    .invoke_async::<i64>(&mut conn)
                    .await;
                if !matches!(renewed, Ok(1)) {
                    tracing::warn!(lease = %key, "rebuild lease lost");
                    return;
                }
            }
        });
        Ok(Some(RebuildLease {
            token,
            _renewal: Some(AbortOnDrop(renewal)),
        }))
    }

    async fn end_rebuild(&self, sale: &Sale, lease: RebuildLease) -> Result<(), GateError> {
        let key = SaleKeys::new(&sale.id).lease;
        let mut call = self.lease.key(key);
        call.arg(&lease.token).arg(0);
        drop(lease); // stops the renewal first
        let mut conn = self.conn.clone();
        self.bounded(call.invoke_async::<i64>(&mut conn)).await?;
        Ok(())
    }

    async fn restore(
        &self,
        sale: &Sale,
        snapshot: &SaleSnapshot,
        lease: &RebuildLease,
    ) -> Result<(), GateError> {
        let keys = SaleKeys::new(&sale.id);
        let mut call = self.restore.key(&keys.meta);
        call.key(&keys.stock)
            .key(&keys.buyers)
            .key(&keys.lease)
            .key(&keys.counted)
            .key(&keys.holds)
            .key(&keys.hold_details)
            .arg(&lease.token)
            .arg(sale.starts_at)
            .arg(sale.ends_at.map(|e| e.to_string()).unwrap_or_default())
            .arg(sale.per_user_limit)
            // Restored keys live as a new key would (from the rebuild, not their order).
            .arg(self.keys.expires_at(sale, crate::domain::now_millis()))
            .arg(sale.items.len());
        for (i, item) in sale.items.iter().enumerate() {
            let sold = snapshot.sold.get(i).copied().unwrap_or(0);
            call.arg(item.stock.saturating_sub(sold)).arg(item.stock);
        }
        call.arg(sale.paused as u8);
        call.arg(snapshot.buyers.len());
        for (user, units) in &snapshot.buyers {
            call.arg(user).arg(units);
        }
        call.arg(snapshot.holding.len());
        for id in &snapshot.holding {
            call.arg(id);
        }
        for order in &snapshot.keyed_orders {
            let Some(key) = order.idempotency_key.as_deref() else {
                continue;
            };
            let json = serde_json::to_string(order).expect("orders serialize");
            call.key(SaleKeys::idempotency(&sale.id, &order.user_id, key))
                .arg(format!("{}\naccepted\n{json}", order.fingerprint));
        }
        let mut conn = self.conn.clone();
        let outcome: String = self.bounded(call.invoke_async(&mut conn)).await?;
        match outcome.as_str() {
            "restored" => {
                self.sold_out.write().remove(&sale.id);
                Ok(())
            }
            "exists" => Err(GateError::Fenced(sale.id.clone(), "the sale exists")),
            _ => Err(GateError::Fenced(
                sale.id.clone(),
                "the rebuild lease was lost",
            )),
        }
    }

    async fn update_sale(&self, sale: &Sale) -> Result<(), GateError> {
        let keys = SaleKeys::new(&sale.id);
        let mut call = self.update.key(&keys.meta);
        call.key(&keys.stock)
            .arg(sale.starts_at)
            .arg(sale.ends_at.map(|e| e.to_string()).unwrap_or_default())
            .arg(sale.paused as u8)
            .arg(&sale.id);
        for item in &sale.items {
            call.arg(item.stock);
        }
        let mut conn = self.conn.clone();
        let outcome: String = self.bounded(call.invoke_async(&mut conn)).await?;
        self.sold_out.write().remove(&sale.id);
        match outcome.as_str() {
            "updated" => Ok(()),
            _ => Err(GateError::UnknownSale(sale.id.clone())),
        }
    }

    async fn reserve(
        &self,
        sale: &Sale,
        purchase: &ValidPurchase,
        key: Option<&str>,
        order_id: &str,
        now: Millis,
    ) -> Result<Decision, GateError> {
        // The sale window is decided in the script, on Redis's clock: a gateway whose
        // clock runs ahead opens no sale early. (`now` is this gateway's clock.)
        if let Some(refusal) = self.quick_refusal(sale, key, now) {
            return Ok(Decision::Refused(refusal));
        }
        let keys = SaleKeys::new(&sale.id);
        let (idem, index) = match key {
            Some(k) => (
                SaleKeys::idempotency(&sale.id, &purchase.user_id, k),
                SaleKeys::key_index(&sale.id, &purchase.user_id),
            ),
            None => (keys.meta.clone(), keys.meta.clone()),
        };
        let mut call = self.reserve.key(&keys.meta);
        call.key(&keys.stock)
            .key(&keys.buyers)
            .key(&idem)
            .key(&keys.holds)
            .key(&keys.hold_details)
            .key(&index)
            .arg(KeyPolicy::keep_until(sale))
            .arg(&purchase.user_id)
            .arg(&purchase.fingerprint)
            .arg(order_id)
            .arg(key.is_some() as u8)
            .arg(self.keys.ttl.as_millis() as u64)
            .arg(self.keys.max_per_buyer);
        for &(item, units) in &purchase.units {
            call.arg(item).arg(units);
        }
        let mut conn = self.conn.clone();
        let reply: Vec<Value> = self.bounded(call.invoke_async(&mut conn)).await?;
        let kind = reply.first().map(text).unwrap_or_default();
        match kind.as_str() {
            "reserved" => {
                let at = reply.get(1).map(text).and_then(|t| t.parse().ok());
                let at = at.ok_or_else(|| unavailable("reservation without a time"))?;
                Ok(Decision::Reserved { at })
            }
            "key_reused" => Ok(Decision::KeyReused),
            "too_many_keys" => Ok(Decision::TooManyKeys),
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
        let (idem, index) = match order.idempotency_key.as_deref() {
            Some(k) => (
                SaleKeys::idempotency(&sale.id, &order.user_id, k),
                SaleKeys::key_index(&sale.id, &order.user_id),
            ),
            None => (keys.meta.clone(), keys.meta.clone()),
        };
        let mut call = self.release.key(&keys.meta);
        call.key(&keys.stock)
            .key(&keys.buyers)
            .key(&idem)
            .key(&keys.released)
            .key(&keys.holds)
            .key(&keys.hold_details)
            .key(&keys.counted)
            .key(&index)
            .arg(&order.user_id)
            .arg(&order.id)
            .arg((forget_key && order.idempotency_key.is_some()) as u8)
            .arg(&sale.id)
            .arg(order.created_at)
            .arg(serde_json::to_string(order).expect("orders serialize"));
        for (item, units) in order.units(sale) {
            call.arg(item).arg(units);
        }
        let mut conn = self.conn.clone();
        let released = self.bounded(call.invoke_async::<i64>(&mut conn)).await?;
        if released < 0 {
            return Err(GateError::UnknownSale(sale.id.clone()));
        }
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

    async fn now(&self) -> Result<Millis, GateError> {
        let mut conn = self.conn.clone();
        let (seconds, micros): (i64, i64) = self
            .bounded(redis::cmd("TIME").query_async(&mut conn))
            .await?;
        Ok(seconds * 1000 + micros / 1000)
    }

    async fn stale_holds(&self, sale: &Sale, grace: Duration) -> Result<Vec<String>, GateError> {
        let mut conn = self.conn.clone();
        // Reservations are stamped with Redis's clock: compare with it, not ours.
        let older_than = self.now().await? - grace.as_millis() as i64;
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

    async fn drop_hold(
        &self,
        sale: &Sale,
        order_id: &str,
        end: HoldEnd<'_>,
    ) -> Result<(), GateError> {
        let (release, json) = match end {
            HoldEnd::Release => (true, String::new()),
            HoldEnd::Confirm(order) => (
                false,
                serde_json::to_string(order).expect("orders serialize"),
            ),
        };
        let keys = SaleKeys::new(&sale.id);
        let mut call = self.drop_hold.key(&keys.meta);
        call.key(&keys.stock)
            .key(&keys.buyers)
            .key(&keys.holds)
            .key(&keys.hold_details)
            .key(&keys.released)
            .arg(order_id)
            .arg(release as u8)
            .arg(&sale.id)
            .arg(json);
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

    /// The sale this gateway saw sold out within `SOLD_OUT_TTL`. The window is Redis's
    /// to judge.
    fn known_sold_out(&self, sale: &Sale) -> bool {
        self.locally_sold_out(&sale.id)
    }
}

#[cfg(test)]
mod tests;
