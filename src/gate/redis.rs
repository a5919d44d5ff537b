//! Redis stock gate: one Lua script decides a purchase, one releases it, one confirms
//! a key's answer. Scripts are sent by SHA (EVALSHA; loaded again on NOSCRIPT). Every key
//! of a sale shares the hash tag `{sale:<id>}`, so one Redis Cluster slot holds a sale.
//!
//! Failovers (docs/redis.md): behind Sentinel, a promoted master is fenced before use
//! (every sale rebuilt from the store and the bus: `connection.rs`). On a Cluster, whose
//! client follows promotions by itself, every script that writes is followed on its
//! connection by `WAIT n timeout` (`gate_replica_acks`, default 1 there): a decision
//! counts only once `n` replicas have it, so a replica promoted after its master died
//! has every decision a buyer was told about. A reservation no replica took in time is
//! given back at once and the buyer gets 503.
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
use redis::{FromRedisValue, Script, ToRedisArgs, Value};

use super::{
    AbortOnDrop, Decision, GateError, HoldEnd, KeyAnswer, KeyPolicy, RebuildLease, SaleSnapshot,
    StockGate,
};
use crate::domain::{Millis, Order, Refusal, Sale, ValidPurchase};

mod connection;
mod shards;

use connection::Connection;
pub use connection::RedisTarget;

const RESTOCK_CHANNEL: &str = "flashsale:restock";
const SOLD_OUT_TTL: Duration = Duration::from_secs(1);
/// How long a rebuild lease lasts unless renewed (it is renewed every third of it).
const LEASE_MS: u64 = 10_000;
/// How many replicas must have a write before it counts, and how long to wait for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaAcks {
    pub replicas: u32,
    pub timeout: Duration,
}

impl ReplicaAcks {
    /// No replica waited for: one Redis, or replicas trusted to keep up.
    pub const NONE: ReplicaAcks = ReplicaAcks {
        replicas: 0,
        timeout: Duration::ZERO,
    };
}

pub struct RedisGate {
    redis: Arc<Connection>,
    deadline: Duration,
    acks: ReplicaAcks,
    reserve: Lua,
    release: Lua,
    confirm: Lua,
    open: Lua,
    drop_hold: Lua,
    restore: Lua,
    lease: Lua,
    update: Lua,
    transfers: shards::TransferScripts,
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
    /// A sharded sale's sub-stock: units it gave and the receiver has not yet credited
    /// (hash: transfer id -> "receiver\nitem:units,…").
    transit: String,
    /// The transfers it received (set of ids), so that each is credited once.
    credited: String,
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
            transit: format!("{{sale:{sale_id}}}:transit"),
            credited: format!("{{sale:{sale_id}}}:credited"),
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

/// A Lua script of the gate, sent by its SHA.
struct Lua(Script);

impl Lua {
    fn new(source: &str) -> Lua {
        Lua(Script::new(source))
    }

    /// A call of the script, starting with its first key.
    fn key(&self, key: impl ToRedisArgs) -> Call<'_> {
        let mut call = Call {
            lua: self,
            keys: Vec::new(),
            args: Vec::new(),
        };
        call.key(key);
        call
    }
}

/// One call of a script: its keys and arguments, as `redis::ScriptInvocation` has them,
/// but sendable in a pipeline (with `WAIT` after it).
struct Call<'a> {
    lua: &'a Lua,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl Call<'_> {
    fn key(&mut self, key: impl ToRedisArgs) -> &mut Self {
        self.keys.extend(key.to_redis_args());
        self
    }

    fn arg(&mut self, arg: impl ToRedisArgs) -> &mut Self {
        self.args.extend(arg.to_redis_args());
        self
    }

    fn evalsha(&self) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.lua.0.get_hash())
            .arg(self.keys.len())
            .arg(&self.keys)
            .arg(&self.args);
        cmd
    }
}

impl RedisGate {
    /// Connects to `redis://host:port[/db]` (no replica waited for); `deadline` bounds
    /// every call.
    pub async fn connect(url: &str, deadline: Duration) -> Result<RedisGate, GateError> {
        let target = RedisTarget::parse(url).map_err(unavailable)?;
        RedisGate::connect_to(target, deadline, ReplicaAcks::NONE).await
    }

    /// Connects to a Redis or to the master Sentinels name; every write waits for
    /// `acks` (which must be shorter than `deadline`).
    pub async fn connect_to(
        target: RedisTarget,
        deadline: Duration,
        acks: ReplicaAcks,
    ) -> Result<RedisGate, GateError> {
        let pool = if acks.replicas == 0 {
            1
        } else {
            connection::WAITING_POOL
        };
        let redis = Arc::new(Connection::open(target, deadline, pool).await?);
        let sold_out = Arc::new(RwLock::new(HashMap::new()));
        let listener = tokio::spawn(listen_for_restock(redis.clone(), sold_out.clone()));
        Ok(RedisGate {
            redis,
            deadline,
            acks,
            reserve: Lua::new(include_str!("lua/reserve.lua")),
            release: Lua::new(include_str!("lua/release.lua")),
            confirm: Lua::new(include_str!("lua/confirm.lua")),
            open: Lua::new(include_str!("lua/open.lua")),
            drop_hold: Lua::new(include_str!("lua/drop_hold.lua")),
            restore: Lua::new(include_str!("lua/restore.lua")),
            lease: Lua::new(include_str!("lua/lease.lua")),
            update: Lua::new(include_str!("lua/update.lua")),
            transfers: shards::TransferScripts::new(),
            keys: KeyPolicy::default(),
            sold_out,
            _restock_listener: AbortOnDrop(listener),
        })
    }

    /// Follows a promoted master without fencing it first: what the gate did before
    /// issue #23, for the tests that show what that costs.
    #[doc(hidden)]
    pub fn without_fence(self) -> Self {
        self.redis
            .fence_promotions
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self
    }

    pub fn with_key_policy(mut self, keys: KeyPolicy) -> Self {
        self.keys = keys;
        self
    }

    async fn bounded<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, GateError> {
        let result = tokio::time::timeout(self.deadline, call)
            .await
            .map_err(|_| unavailable("Redis did not answer in time"))
            .and_then(|r| r.map_err(unavailable));
        if let Err(e) = &result {
            self.redis.failed(e).await;
        }
        result
    }

    /// Runs a script; with replicas to wait for, `WAIT` follows it on the same
    /// connection (a pipeline: a reconnection in between cannot answer for another
    /// connection's writes). Returns the reply and whether enough replicas have it.
    async fn eval<T: FromRedisValue>(&self, call: &Call<'_>) -> Result<(T, bool), GateError> {
        let mut conn = self.redis.get();
        let acks = self.acks;
        self.bounded(async move {
            for attempt in 0..2 {
                let sent = if acks.replicas == 0 {
                    call.evalsha()
                        .query_async::<T>(&mut conn)
                        .await
                        .map(|reply| (reply, true))
                } else {
                    redis::pipe()
                        .add_command(call.evalsha())
                        .cmd("WAIT")
                        .arg(acks.replicas)
                        .arg(acks.timeout.as_millis() as u64)
                        .query_async::<(T, u32)>(&mut conn)
                        .await
                        .map(|(reply, acked)| (reply, acked >= acks.replicas))
                };
                match sent {
                    Err(e)
                        if attempt == 0
                            && e.kind()
                                == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                    {
                        call.lua.0.load_async(&mut conn).await?;
                    }
                    other => return other,
                }
            }
            unreachable!("the second attempt returns")
        })
        .await
    }

    /// Runs a script that writes; an error unless enough replicas have the write.
    async fn write<T: FromRedisValue>(&self, call: &Call<'_>) -> Result<T, GateError> {
        match self.eval(call).await? {
            (reply, true) => Ok(reply),
            (_, false) => Err(not_replicated(self.acks)),
        }
    }

    /// Makes a sale known with its full stock unless it is; whether it was new.
    async fn open_one(&self, sale: &Sale) -> Result<bool, GateError> {
        let keys = SaleKeys::new(&sale.id);
        let mut call = self.open.key(&keys.meta);
        call.key(&keys.stock)
            .arg(sale.starts_at)
            .arg(sale.ends_at.map(|e| e.to_string()).unwrap_or_default())
            .arg(sale.per_user_limit);
        for item in &sale.items {
            call.arg(item.stock);
        }
        Ok(self.write::<i64>(&call).await? == 1)
    }

    /// Decides a purchase on one sale of one shard (or one sub-stock of a sharded sale,
    /// which must not raise the whole sale's sold-out flag: `flag_sold_out` false).
    async fn reserve_one(
        &self,
        sale: &Sale,
        purchase: &ValidPurchase,
        key: Option<&str>,
        order_id: &str,
        flag_sold_out: bool,
    ) -> Result<Decision, GateError> {
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
        let (reply, replicated): (Vec<Value>, bool) = self.eval(&call).await?;
        let kind = reply.first().map(text).unwrap_or_default();
        match kind.as_str() {
            "reserved" if !replicated => {
                // A failover now could lose this reservation: the buyer must not hear of
                // it. Given back at once (or, if that fails too, by the sweeper once the
                // hold is stale: it never reaches the bus).
                if let Err(e) = self.drop_hold(sale, order_id, HoldEnd::Release).await {
                    tracing::warn!(sale = %sale.id, order = %order_id, error = %e, "unreplicated reservation not given back yet (the sweeper will)");
                }
                Err(not_replicated(self.acks))
            }
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
                if flag_sold_out && refusal == Refusal::SoldOut && left <= 0 {
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

    /// The sale's (or, for a sub-stock, its sale's) sold-out flag.
    fn locally_sold_out(&self, sale_id: &str) -> bool {
        self.sold_out
            .read()
            .get(shards::parent_sale_id(sale_id))
            .is_some_and(|seen| seen.elapsed() < SOLD_OUT_TTL)
    }
}

fn not_replicated(acks: ReplicaAcks) -> GateError {
    unavailable(format!(
        "not acknowledged by {} replica(s) within {} ms",
        acks.replicas,
        acks.timeout.as_millis()
    ))
}

/// Drops local sold-out flags when any gateway releases stock; reconnects on failure
/// (to the current master, behind Sentinels).
async fn listen_for_restock(
    redis: Arc<Connection>,
    sold_out: Arc<RwLock<HashMap<String, Instant>>>,
) {
    loop {
        match redis.client().get_async_pubsub().await {
            Ok(mut pubsub) => {
                if pubsub.subscribe(RESTOCK_CHANNEL).await.is_ok() {
                    let mut messages = pubsub.into_on_message();
                    while let Some(msg) = messages.next().await {
                        if let Ok(sale_id) = msg.get_payload::<String>() {
                            sold_out.write().remove(shards::parent_sale_id(&sale_id));
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
        if sale.shards > 1 {
            return self.open_sharded(sale).await;
        }
        self.open_one(sale).await?;
        Ok(())
    }

    async fn has_sale(&self, sale: &Sale) -> Result<bool, GateError> {
        if sale.shards > 1 {
            return self.has_sharded(sale).await;
        }
        let mut conn = self.redis.get();
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
        let mut conn = self.redis.get();
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
        let (script, owner, redis) = (self.lease.0.clone(), token.clone(), self.redis.clone());
        let renewal = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(LEASE_MS / 3)).await;
                let mut conn = redis.get();
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
        self.write::<i64>(&call).await?;
        Ok(())
    }

    async fn restore(
        &self,
        sale: &Sale,
        snapshot: &SaleSnapshot,
        lease: &RebuildLease,
    ) -> Result<(), GateError> {
        if sale.shards > 1 {
            return self.restore_sharded(sale, snapshot, lease).await;
        }
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
        let outcome: String = self.write(&call).await?;
        match outcome.as_str() {
            "restored" => {
                self.sold_out
                    .write()
                    .remove(shards::parent_sale_id(&sale.id));
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
        if sale.shards > 1 {
            return self.update_sharded(sale).await;
        }
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
        let outcome: String = self.write(&call).await?;
        self.sold_out
            .write()
            .remove(shards::parent_sale_id(&sale.id));
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
        if sale.shards > 1 {
            return self
                .reserve_sharded(sale, purchase, key, order_id, now)
                .await;
        }
        // The sale window is decided in the script, on Redis's clock: a gateway whose
        // clock runs ahead opens no sale early. (`now` is this gateway's clock.)
        if let Some(refusal) = self.quick_refusal(sale, key, now) {
            return Ok(Decision::Refused(refusal));
        }
        self.reserve_one(sale, purchase, key, order_id, true).await
    }

    async fn confirm(&self, sale: &Sale, order: &Order) -> Result<(), GateError> {
        if sale.shards > 1 {
            return self.confirm_sharded(sale, order).await;
        }
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
        self.write::<i64>(&call).await?;
        Ok(())
    }

    async fn release(&self, sale: &Sale, order: &Order, forget_key: bool) -> Result<(), GateError> {
        if sale.shards > 1 {
            return self.release_sharded(sale, order, forget_key).await;
        }
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
        let released = self.write::<i64>(&call).await?;
        if released < 0 {
            return Err(GateError::UnknownSale(sale.id.clone()));
        }
        self.sold_out
            .write()
            .remove(shards::parent_sale_id(&sale.id));
        Ok(())
    }

    async fn key_answer(
        &self,
        sale: &Sale,
        user_id: &str,
        key: &str,
    ) -> Result<Option<KeyAnswer>, GateError> {
        if sale.shards > 1 {
            return self.key_answer_sharded(sale, user_id, key).await;
        }
        let mut conn = self.redis.get();
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
        let mut conn = self.redis.get();
        let (seconds, micros): (i64, i64) = self
            .bounded(redis::cmd("TIME").query_async(&mut conn))
            .await?;
        Ok(seconds * 1000 + micros / 1000)
    }

    async fn stale_holds(&self, sale: &Sale, grace: Duration) -> Result<Vec<String>, GateError> {
        if sale.shards > 1 {
            return self.stale_holds_sharded(sale, grace).await;
        }
        let mut conn = self.redis.get();
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
        if sale.shards > 1 {
            return self.drop_hold_sharded(sale, order_id, end).await;
        }
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
        self.write::<i64>(&call).await?;
        if release {
            self.sold_out
                .write()
                .remove(shards::parent_sale_id(&sale.id));
        }
        Ok(())
    }

    async fn remaining(&self, sale: &Sale) -> Result<Vec<u32>, GateError> {
        if sale.shards > 1 {
            return self.remaining_sharded(sale).await;
        }
        let mut conn = self.redis.get();
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
mod failover_tests;
#[cfg(test)]
mod shard_tests;
#[cfg(test)]
mod tests;
