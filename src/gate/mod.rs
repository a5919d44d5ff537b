//! The stock gate decides, in one indivisible step per purchase, whether a buyer gets
//! units: sale window, idempotency key, per-user limit and stock of every item, all or
//! nothing. A reservation it grants is later confirmed (the order is durable) or released
//! (a later stage failed, or the order was cancelled / expired).

mod local;
mod redis;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;

pub use local::LocalGate;
pub use redis::{RedisGate, RedisTarget, ReplicaAcks};

use crate::domain::{Millis, Order, Refusal, Sale, ValidPurchase};

/// Releases of one `release_many` in flight at once.
const RELEASES_IN_FLIGHT: usize = 64;

/// What an idempotency key stands for, once a purchase used it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyAnswer {
    /// The first request with this key reserved `order_id` and is still waiting for
    /// the order to be durable.
    InFlight { order_id: String },
    /// The first request was answered with this order.
    Accepted(Arc<Order>),
}

/// How long idempotency keys are kept, and how many a buyer may hold in one sale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPolicy {
    /// An accepted key is kept this long after it was first used, and never less than
    /// until an hour past the sale's end and its payment window.
    pub ttl: std::time::Duration,
    /// Live keys per buyer and sale; a new key beyond it is refused (429).
    pub max_per_buyer: u32,
}

impl Default for KeyPolicy {
    fn default() -> Self {
        KeyPolicy {
            ttl: std::time::Duration::from_secs(24 * 3600),
            max_per_buyer: 16,
        }
    }
}

/// How long after a sale's payment window a buyer's idempotency key is still kept.
const KEY_MARGIN_MS: Millis = 3600 * 1000;

impl KeyPolicy {
    /// Until when (ms) the sale's keys must live whatever the TTL: an hour past its end
    /// and payment window (a retry then cannot reserve a second order); 0 for a sale
    /// without an end.
    pub fn keep_until(sale: &Sale) -> Millis {
        sale.ends_at
            .map(|end| end + sale.payment_window as Millis * 1000 + KEY_MARGIN_MS)
            .unwrap_or(0)
    }

    /// When a key first used at `now` may be forgotten.
    pub fn expires_at(&self, sale: &Sale, now: Millis) -> Millis {
        (now + self.ttl.as_millis() as Millis).max(Self::keep_until(sale))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Units were reserved for the new order; the caller must `confirm` or `release` it.
    /// `at` is the gate's clock at the reservation (Redis's own clock in Redis mode):
    /// the order's creation time, from which its payment window runs.
    Reserved {
        at: Millis,
    },
    /// The key was used before with the same purchase: its original answer.
    Replay(KeyAnswer),
    /// The key was used before with a different purchase.
    KeyReused,
    /// A new key, and the buyer already holds `KeyPolicy::max_per_buyer` live keys.
    TooManyKeys,
    Refused(Refusal),
}

/// What the store knows of a sale, to rebuild the gate after a restart or a loss.
#[derive(Debug, Clone, Default)]
pub struct SaleSnapshot {
    /// Units held by orders (pending or paid), per item index.
    pub sold: Vec<u32>,
    /// Units held per buyer.
    pub buyers: HashMap<String, u32>,
    /// Orders placed with an idempotency key.
    pub keyed_orders: Vec<Order>,
    /// Ids of the orders counted in `sold`. After a rebuild, a release of an order placed
    /// before it gives units back only if the order is one of these: the units of an
    /// order the snapshot did not count (ended, or never stored) are not in the gate.
    pub holding: Vec<String>,
    /// When the store was read for this snapshot (ms, the engine's clock): an order
    /// created before it was placed before the rebuild. The local gate judges a release
    /// by it; the Redis gate by its own clock at the restore.
    pub taken_at: Millis,
}

/// How a reservation that never heard back from the bus ends (`drop_hold`).
#[derive(Debug, Clone, Copy)]
pub enum HoldEnd<'a> {
    /// The order never reached the bus: its units go back and its key is forgotten.
    Release,
    /// The order is stored or on the bus: its key replays it from now on.
    Confirm(&'a Order),
}

/// The right to rebuild one sale in a gate shared by several gateways: while one
/// gateway holds it, the others answer 503 for that sale. Held in the gate (Redis) with
/// an owner token and an expiry that a background task renews until the lease is dropped
/// or ended; a restore by a gateway that lost its lease is refused.
pub struct RebuildLease {
    pub token: String,
    /// Renews the lease; aborted when the lease is dropped.
    pub(crate) _renewal: Option<AbortOnDrop>,
}

/// Owns a background task: aborts it when dropped.
pub(crate) struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("the gate does not know sale {0}")]
    UnknownSale(String),
    #[error("stock gate unavailable: {0}")]
    Unavailable(String),
    /// A rebuild was refused: the sale exists again, or another gateway holds the lease.
    #[error("rebuild of sale {0} refused: {1}")]
    Fenced(String, &'static str),
}

/// Which gate to run, parsed from `local` or `redis://host:port[/db]` (also `rediss://`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum GateUrl {
    Local,
    Redis(String),
}

impl std::str::FromStr for GateUrl {
    type Err = String;
    fn from_str(url: &str) -> Result<Self, String> {
        if url == "local" {
            Ok(GateUrl::Local)
        } else if url.starts_with("redis") {
            RedisTarget::parse(url)?;
            Ok(GateUrl::Redis(url.to_string()))
        } else {
            Err(format!(
                "unsupported gate {url:?} (expected local, redis://host:port, \
                 redis-sentinel://host:port[,host:port]/MASTER or \
                 redis-cluster://host:port[,host:port])"
            ))
        }
    }
}

impl TryFrom<String> for GateUrl {
    type Error = String;
    fn try_from(url: String) -> Result<Self, String> {
        url.parse()
    }
}

impl From<GateUrl> for String {
    fn from(url: GateUrl) -> String {
        url.to_string()
    }
}

impl std::fmt::Display for GateUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GateUrl::Local => f.write_str("local"),
            GateUrl::Redis(url) => f.write_str(url),
        }
    }
}

/// Opens the gate; `deadline` bounds every call to a remote gate.
pub async fn connect(
    url: &GateUrl,
    deadline: std::time::Duration,
    keys: KeyPolicy,
    acks: ReplicaAcks,
) -> Result<Arc<dyn StockGate>, GateError> {
    Ok(match url {
        GateUrl::Local => Arc::new(LocalGate::with_key_policy(keys)),
        GateUrl::Redis(url) => {
            let target = RedisTarget::parse(url).map_err(GateError::Unavailable)?;
            Arc::new(
                RedisGate::connect_to(target, deadline, acks)
                    .await?
                    .with_key_policy(keys),
            )
        }
    })
}

#[async_trait]
pub trait StockGate: Send + Sync + 'static {
    /// The gate's clock (ms), on which it judges sale windows: Redis's own in Redis
    /// mode. An operator's "end now" is stamped with it (issue #21: stamped with the
    /// gateway's clock, a skewed gateway ended a sale early or late on Redis).
    async fn now(&self) -> Result<Millis, GateError> {
        Ok(crate::domain::now_millis())
    }

    /// Makes a sale known to the gate with its full stock; a no-op if it is known.
    async fn open_sale(&self, sale: &Sale) -> Result<(), GateError>;

    /// Whether the gate holds state for the sale (false after a restart or a data loss).
    async fn has_sale(&self, sale: &Sale) -> Result<bool, GateError>;

    /// Whether other processes reserve through this gate too (Redis): then a rebuild must
    /// wait out their reservations still on their way to the bus.
    fn shared(&self) -> bool {
        false
    }

    /// Takes the right to rebuild the sale; `None` while another gateway holds it.
    async fn lease_rebuild(&self, _sale: &Sale) -> Result<Option<RebuildLease>, GateError> {
        Ok(Some(RebuildLease {
            token: "local".into(),
            _renewal: None,
        }))
    }

    /// Gives the right back (it also lapses by itself if this gateway dies).
    async fn end_rebuild(&self, _sale: &Sale, _lease: RebuildLease) -> Result<(), GateError> {
        Ok(())
    }

    /// Writes the sale's state from the store's snapshot, if the sale is missing and the
    /// lease is still held; refuses (`Fenced`) otherwise, so that a late or second
    /// restore never overwrites reservations made after the first.
    async fn restore(
        &self,
        sale: &Sale,
        snapshot: &SaleSnapshot,
        lease: &RebuildLease,
    ) -> Result<(), GateError>;

    /// Decides a purchase. On `Reserved`, the units are held for `order_id` and the key
    /// (if any) answers `InFlight` until `confirm` or `release`.
    async fn reserve(
        &self,
        sale: &Sale,
        purchase: &ValidPurchase,
        key: Option<&str>,
        order_id: &str,
        now: Millis,
    ) -> Result<Decision, GateError>;

    /// The order is durable: its key now replays it.
    async fn confirm(&self, sale: &Sale, order: &Order) -> Result<(), GateError>;

    /// Gives the order's units back, once per order id whatever the number of calls.
    /// With `forget_key`, its idempotency key is dropped too, so that a retry is decided
    /// afresh (the order was never placed).
    async fn release(&self, sale: &Sale, order: &Order, forget_key: bool) -> Result<(), GateError>;

    /// `release` (keys kept) for each of many ended orders of `sale`, answers in order:
    /// the sweeper's batches (issue #24). At most `RELEASES_IN_FLIGHT` at a time; on
    /// Redis the multiplexed connection pipelines them, one round trip for many.
    async fn release_many(&self, sale: &Sale, orders: &[Order]) -> Vec<Result<(), GateError>> {
        let mut answers = Vec::with_capacity(orders.len());
        for chunk in orders.chunks(RELEASES_IN_FLIGHT) {
            let releases: Vec<_> = chunk
                .iter()
                .map(|order| self.release(sale, order, false))
                .collect();
            answers.extend(futures_util::future::join_all(releases).await);
        }
        answers
    }

    /// The current answer of a buyer's idempotency key, if it was used.
    async fn key_answer(
        &self,
        sale: &Sale,
        user_id: &str,
        key: &str,
    ) -> Result<Option<KeyAnswer>, GateError>;

    /// Reservations older than `grace` (on the gate's clock) whose order never got an
    /// answer from the bus (neither confirmed nor released): their gateway may have died
    /// in between. A gate that lives and dies with its gateway has none.
    async fn stale_holds(
        &self,
        _sale: &Sale,
        _grace: std::time::Duration,
    ) -> Result<Vec<String>, GateError> {
        Ok(Vec::new())
    }

    /// The bus could not tell whether it took `order` (a failed commit whose lookup
    /// failed too): the reservation is kept, and handed to the sweeper by `stale_holds`
    /// once older than the grace. A shared gate holds every reservation that way
    /// already; the local gate keeps only these (issue #21: their units stayed reserved
    /// and their key "in progress" for the gateway's whole life).
    fn hold_unresolved(&self, _sale: &Sale, _order: &Order) {}

    /// Ends such a reservation, as `end` says.
    async fn drop_hold(
        &self,
        _sale: &Sale,
        _order_id: &str,
        _end: HoldEnd<'_>,
    ) -> Result<(), GateError> {
        Ok(())
    }

    /// Applies an operator's change of the sale: its window and pause (`ends_at`,
    /// `paused`), and stock added to its items (`items[i].stock` is the store's total:
    /// the gate adds the difference with the total it last saw, never takes units away).
    /// Idempotent: a retry, or an older total arriving late, changes nothing.
    async fn update_sale(&self, sale: &Sale) -> Result<(), GateError>;

    /// Forgets a finished sale (`Sale::finished`): its buyers, keys and stock leave this
    /// process's memory. A shared gate keeps its keys where every gateway reads them.
    async fn retire_sale(&self, _sale: &Sale) -> Result<(), GateError> {
        Ok(())
    }

    /// Remaining units per item index.
    async fn remaining(&self, sale: &Sale) -> Result<Vec<u32>, GateError>;

    /// Forgets the sale's keys that expired before `now` (the sweeper calls this);
    /// returns how many. Redis expires its keys itself.
    async fn forget_expired_keys(&self, _sale: &Sale, _now: Millis) -> Result<usize, GateError> {
        Ok(0)
    }

    /// Whether this process judges the sale window on its own clock (the local gate);
    /// Redis judges it on its own, in the script.
    fn judges_window_here(&self) -> bool {
        false
    }

    /// Whether this process knows, without a round trip, that every item of the sale is
    /// sold out (the local gate's flag; the Redis gate's recent sight of a sold-out).
    fn known_sold_out(&self, _sale: &Sale) -> bool {
        false
    }

    /// The refusal a purchase would surely get, decided without a round trip from the
    /// two primitives above: only for a purchase without an `Idempotency-Key` (a key
    /// may replay an order that got its units), the window when this process judges it,
    /// then a known sold-out. The admission asks it before a purchase's body is read or
    /// its rate limits counted; the backends ask it first in `reserve`.
    fn quick_refusal(&self, sale: &Sale, key: Option<&str>, now: Millis) -> Option<Refusal> {
        if key.is_some() {
            return None;
        }
        if self.judges_window_here()
            && let Some(refusal) = sale.window_refusal(now)
        {
            return Some(refusal);
        }
        self.known_sold_out(sale).then_some(Refusal::SoldOut)
    }
}
