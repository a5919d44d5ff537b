//! In-process stock gate: stock in atomics, buyers and idempotency keys in maps sharded
//! by buyer. A purchase locks only its buyer's shard; stock is taken with compare-and-swap,
//! so buyers of different shards never wait for each other. Once every item is gone,
//! requests without a key are refused from the sold-out flag without taking any lock.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use arc_swap::ArcSwap;
use async_trait::async_trait;
// Randomly seeded, so buyer ids cannot be chosen to collide; several times cheaper than
// std's SipHash, which was a third of a decision (benches/gate.rs).
use foldhash::quality::RandomState;
use parking_lot::Mutex;
use uuid::Uuid;

use super::{
    Decision, GateError, HoldEnd, KeyAnswer, KeyPolicy, RebuildLease, SaleSnapshot, StockGate,
};
use crate::domain::{Millis, Order, Refusal, Sale, Units, ValidPurchase};
use tables::{KeyEntry, KeyHash, KeyState, OrderRef, Shard};

mod tables;

const SHARDS: usize = 64;

#[derive(Default)]
pub struct LocalGate {
    /// Read on every decision, written when a sale opens: readers take no lock and
    /// touch no shared counter.
    sales: ArcSwap<HashMap<String, Arc<SaleState>, RandomState>>,
    hasher: RandomState,
    /// Two more seeds, for the 128 bits of a key's hash (`KeyHash`).
    key_hashers: [RandomState; 2],
    keys: KeyPolicy,
}

struct SaleState {
    remaining: Box<[AtomicU32]>,
    /// Each item's stock as the gate last saw it: an operator's added stock grows
    /// `remaining` by the difference, once (`update_sale`).
    totals: Mutex<Vec<u32>>,
    /// Whether every item is gone: read without a lock, written only under
    /// `sold_out_lock` (see `refresh_sold_out`).
    sold_out: AtomicBool,
    sold_out_lock: Mutex<()>,
    shards: Box<[Mutex<Shard>]>,
    /// Orders whose units were given back: a release happens once per order.
    released: Mutex<HashSet<Box<str>, RandomState>>,
    /// Set when the sale was rebuilt from the store (a restart): see `Rebuilt`.
    rebuilt: Option<Rebuilt>,
    /// Reservations whose order's fate the bus could not tell (`hold_unresolved`), with
    /// when they were kept; rare, so a plain list.
    unresolved: Mutex<Vec<(Order, std::time::Instant)>>,
}

/// What a rebuild counted. An order placed before it holds units here only if the
/// rebuild counted it: any other (ended, its release still marked pending when the
/// process died) was never put back in, and releasing it would give its units twice
/// (issue #21). The Redis gate keeps the same set (`counted`).
struct Rebuilt {
    /// When the store was read (`SaleSnapshot::taken_at`).
    at: Millis,
    /// The counted orders' ids, as 64-bit hashes under the gate's seed (8 bytes each
    /// instead of the id's text): an order leaves the set when it is released.
    counted: Mutex<HashSet<u64, RandomState>>,
}

impl SaleState {
    fn new(remaining: impl Iterator<Item = u32>, totals: Vec<u32>) -> SaleState {
        let state = SaleState {
            remaining: remaining.map(AtomicU32::new).collect(),
            totals: Mutex::new(totals),
            sold_out: AtomicBool::new(false),
            sold_out_lock: Mutex::new(()),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            released: Mutex::default(),
            rebuilt: None,
            unresolved: Mutex::default(),
        };
        state.refresh_sold_out();
        state
    }

    /// Whether every unit is there right now (takes nothing).
    fn has(&self, units: &Units) -> bool {
        units
            .iter()
            .all(|&(item, want)| self.remaining[item].load(Ordering::SeqCst) >= want)
    }

    /// Takes every unit or none.
    fn take(&self, units: &Units) -> bool {
        for (n, &(item, want)) in units.iter().enumerate() {
            let slot = &self.remaining[item];
            let taken = slot
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |have| {
                    have.checked_sub(want)
                })
                .is_ok();
            if !taken {
                self.give_back(&units[..n]);
                return false;
            }
        }
        // Only a taker that may have emptied the stock takes the lock: whichever take
        // empties it sees every item at zero here.
        if self.remaining.iter().all(|r| r.load(Ordering::SeqCst) == 0) {
            self.refresh_sold_out();
        }
        true
    }

    fn give_back(&self, units: &[(usize, u32)]) {
        for &(item, n) in units {
            self.remaining[item].fetch_add(n, Ordering::SeqCst);
        }
        if !units.is_empty() {
            self.refresh_sold_out();
        }
    }

    /// Sets the flag from the stock, after every change that may empty it (a take) or
    /// refill it (a give back). The look at the stock and the store happen under one
    /// lock: unlocked, a taker that saw no stock could store `true` after a concurrent
    /// release stored `false`, and keyless buyers were refused while a unit was back
    /// (issue #10). Under the lock the last store comes from a look taken after the
    /// last change.
    fn refresh_sold_out(&self) {
        let _flag = self.sold_out_lock.lock();
        let none_left = self.remaining.iter().all(|r| r.load(Ordering::SeqCst) == 0);
        self.sold_out.store(none_left, Ordering::SeqCst);
    }
}

fn totals(sale: &Sale) -> Vec<u32> {
    sale.items.iter().map(|i| i.stock).collect()
}

impl LocalGate {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_key_policy(keys: KeyPolicy) -> Self {
        LocalGate {
            keys,
            ..Self::default()
        }
    }

    fn state(&self, sale: &Sale) -> Result<Arc<SaleState>, GateError> {
        self.sales
            .load()
            .get(&sale.id)
            .cloned()
            .ok_or_else(|| GateError::UnknownSale(sale.id.clone()))
    }

    fn set_state(&self, sale: &Sale, state: impl Fn() -> Arc<SaleState>, replace: bool) {
        self.sales.rcu(|sales| {
            let mut sales = HashMap::clone(sales);
            if replace || !sales.contains_key(&sale.id) {
                sales.insert(sale.id.clone(), state());
            }
            sales
        });
    }

    fn shard<'a>(&self, state: &'a SaleState, user_id: &str) -> &'a Mutex<Shard> {
        &state.shards[self.hasher.hash_one(user_id) as usize % SHARDS]
    }

    fn key_hash(&self, key: &str) -> KeyHash {
        let [first, second] = &self.key_hashers;
        KeyHash(first.hash_one(key), second.hash_one(key))
    }

    /// The decision itself, synchronous: the trait's async methods only wrap it.
    pub fn decide(
        &self,
        sale: &Sale,
        purchase: &ValidPurchase,
        key: Option<&str>,
        order_id: &str,
        now: Millis,
    ) -> Result<Decision, GateError> {
        let sales = self.sales.load();
        let state = sales
            .get(&sale.id)
            .ok_or_else(|| GateError::UnknownSale(sale.id.clone()))?;
        if let Some(refusal) = self.quick_refusal(sale, key, now) {
            return Ok(Decision::Refused(refusal));
        }
        let window = sale.window_refusal(now);
        let user = purchase.user_id.as_str();
        let mut shard = self.shard(state, user).lock();
        let mut live_keys = 0;
        let key_hash = key.map(|key| self.key_hash(key));
        if let (Some(key), Some(key_hash)) = (key, key_hash) {
            live_keys = shard.live_keys(user, now);
            if let Some(entry) = shard.key(user, key_hash) {
                return Ok(if *entry.fingerprint == *purchase.fingerprint {
                    Decision::Replay(entry.answer(sale, user, key))
                } else {
                    Decision::KeyReused
                });
            }
        }
        let held = shard.units(user);
        let wanted = purchase.total_units();
        let outcome = if let Some(refusal) = window {
            Err(refusal)
        } else if key.is_some() && live_keys >= self.keys.max_per_buyer as usize {
            // Checked before the stock: a buyer at the key limit takes nothing.
            return Ok(Decision::TooManyKeys);
        } else if held.saturating_add(wanted) > sale.per_user_limit {
            // When both apply, sold_out wins (the same order as the Redis gate).
            Err(if state.has(&purchase.units) {
                Refusal::LimitReached
            } else {
                Refusal::SoldOut
            })
        } else if !state.take(&purchase.units) {
            Err(Refusal::SoldOut)
        } else {
            Ok(())
        };
        if outcome.is_ok() {
            shard.add_units(user, wanted);
        }
        // A refusal is not remembered: a retry with the key is decided afresh (a click
        // before the start can buy after it), and refused keys take no memory.
        if let Some(key) = key_hash
            && outcome.is_ok()
        {
            let entry = KeyEntry {
                key,
                fingerprint: shard.fingerprint(&purchase.fingerprint),
                state: KeyState::InFlight(OrderRef::new(order_id)),
                expires_at: self.keys.expires_at(sale, now),
            };
            shard.set_key(user, entry);
        }
        Ok(match outcome {
            Ok(()) => Decision::Reserved { at: now },
            Err(refusal) => Decision::Refused(refusal),
        })
    }

    pub fn confirm_sync(&self, sale: &Sale, order: &Order) -> Result<(), GateError> {
        let Some(key) = order.idempotency_key.as_deref() else {
            return Ok(());
        };
        let state = self.state(sale)?;
        let mut shard = self.shard(&state, &order.user_id).lock();
        if let Some(entry) = shard.key_mut(&order.user_id, self.key_hash(key))
            && matches!(&entry.state, KeyState::InFlight(id) if id.is(&order.id))
        {
            entry.state = KeyState::Accepted {
                order_id: OrderRef::new(&order.id),
                created_at: order.created_at,
            };
        }
        Ok(())
    }

    pub fn release_sync(
        &self,
        sale: &Sale,
        order: &Order,
        forget_key: bool,
    ) -> Result<(), GateError> {
        let state = self.state(sale)?;
        if !state.released.lock().insert(order.id.as_str().into()) {
            return Ok(());
        }
        if let Some(rebuilt) = &state.rebuilt
            && order.created_at < rebuilt.at
            && !rebuilt
                .counted
                .lock()
                .remove(&self.hasher.hash_one(&order.id))
        {
            return Ok(());
        }
        let units = order.units(sale);
        let mut shard = self.shard(&state, &order.user_id).lock();
        shard.remove_units(&order.user_id, order.total_units());
        if forget_key && let Some(key) = order.idempotency_key.as_deref() {
            let key = self.key_hash(key);
            let ours = shard
                .key(&order.user_id, key)
                .is_some_and(|e| e.is_for(order));
            if ours {
                shard.remove_key(&order.user_id, key);
            }
        }
        state.give_back(&units);
        Ok(())
    }

    pub fn remaining_sync(&self, sale: &Sale) -> Result<Vec<u32>, GateError> {
        let state = self.state(sale)?;
        Ok(state
            .remaining
            .iter()
            .map(|r| r.load(Ordering::SeqCst))
            .collect())
    }
}

#[async_trait]
impl StockGate for LocalGate {
    async fn open_sale(&self, sale: &Sale) -> Result<(), GateError> {
        let state = || {
            Arc::new(SaleState::new(
                sale.items.iter().map(|i| i.stock),
                totals(sale),
            ))
        };
        self.set_state(sale, state, false);
        Ok(())
    }

    async fn has_sale(&self, sale: &Sale) -> Result<bool, GateError> {
        Ok(self.sales.load().contains_key(&sale.id))
    }

    async fn restore(
        &self,
        sale: &Sale,
        snapshot: &SaleSnapshot,
        _lease: &RebuildLease,
    ) -> Result<(), GateError> {
        if self.sales.load().contains_key(&sale.id) {
            return Err(GateError::Fenced(sale.id.clone(), "the sale exists"));
        }
        let remaining = sale.items.iter().enumerate().map(|(i, item)| {
            item.stock
                .saturating_sub(snapshot.sold.get(i).copied().unwrap_or(0))
        });
        let mut state = SaleState::new(remaining, totals(sale));
        state.rebuilt = Some(Rebuilt {
            at: snapshot.taken_at,
            counted: Mutex::new(
                snapshot
                    .holding
                    .iter()
                    .map(|id| self.hasher.hash_one(id))
                    .collect(),
            ),
        });
        for (user, &units) in &snapshot.buyers {
            let mut shard = self.shard(&state, user).lock();
            shard.add_units(user, units);
        }
        for order in &snapshot.keyed_orders {
            let Some(key) = order.idempotency_key.as_deref() else {
                continue;
            };
            let mut shard = self.shard(&state, &order.user_id).lock();
            let entry = KeyEntry {
                key: self.key_hash(key),
                fingerprint: shard.fingerprint(&order.fingerprint),
                state: KeyState::Accepted {
                    order_id: OrderRef::new(&order.id),
                    created_at: order.created_at,
                },
                expires_at: self.keys.expires_at(sale, order.created_at),
            };
            shard.set_key(&order.user_id, entry);
        }
        let state = Arc::new(state);
        self.set_state(sale, || state.clone(), false);
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
        self.decide(sale, purchase, key, order_id, now)
    }

    async fn update_sale(&self, sale: &Sale) -> Result<(), GateError> {
        // The window and the pause are read from `sale` on every decision: only the
        // stock is the gate's own.
        let state = self.state(sale)?;
        let mut totals = state.totals.lock();
        let mut added = Vec::new();
        for (i, item) in sale.items.iter().enumerate() {
            if let Some(total) = totals.get_mut(i)
                && item.stock > *total
            {
                added.push((i, item.stock - *total));
                *total = item.stock;
            }
        }
        state.give_back(&added);
        Ok(())
    }

    fn judges_window_here(&self) -> bool {
        true
    }

    fn known_sold_out(&self, sale: &Sale) -> bool {
        (self.sales.load().get(&sale.id)).is_some_and(|state| state.sold_out.load(Ordering::SeqCst))
    }

    async fn confirm(&self, sale: &Sale, order: &Order) -> Result<(), GateError> {
        self.confirm_sync(sale, order)
    }

    async fn release(&self, sale: &Sale, order: &Order, forget_key: bool) -> Result<(), GateError> {
        self.release_sync(sale, order, forget_key)
    }

    async fn key_answer(
        &self,
        sale: &Sale,
        user_id: &str,
        key: &str,
    ) -> Result<Option<KeyAnswer>, GateError> {
        let state = self.state(sale)?;
        let shard = self.shard(&state, user_id).lock();
        Ok(shard
            .key(user_id, self.key_hash(key))
            .map(|e| e.answer(sale, user_id, key)))
    }

    async fn remaining(&self, sale: &Sale) -> Result<Vec<u32>, GateError> {
        self.remaining_sync(sale)
    }

    fn hold_unresolved(&self, sale: &Sale, order: &Order) {
        if let Ok(state) = self.state(sale) {
            state
                .unresolved
                .lock()
                .push((order.clone(), std::time::Instant::now()));
        }
    }

    async fn stale_holds(
        &self,
        sale: &Sale,
        grace: std::time::Duration,
    ) -> Result<Vec<String>, GateError> {
        let state = self.state(sale)?;
        let unresolved = state.unresolved.lock();
        Ok(unresolved
            .iter()
            .filter(|(_, kept)| kept.elapsed() >= grace)
            .map(|(order, _)| order.id.clone())
            .collect())
    }

    async fn drop_hold(
        &self,
        sale: &Sale,
        order_id: &str,
        end: HoldEnd<'_>,
    ) -> Result<(), GateError> {
        let state = self.state(sale)?;
        let held = {
            let mut unresolved = state.unresolved.lock();
            let at = unresolved.iter().position(|(o, _)| o.id == order_id);
            at.map(|at| unresolved.swap_remove(at).0)
        };
        let Some(order) = held else {
            return Ok(());
        };
        match end {
            HoldEnd::Release => self.release_sync(sale, &order, true),
            HoldEnd::Confirm(stored) => self.confirm_sync(sale, stored),
        }
    }

    async fn retire_sale(&self, sale: &Sale) -> Result<(), GateError> {
        self.sales.rcu(|sales| {
            let mut sales = HashMap::clone(sales);
            sales.remove(&sale.id);
            sales
        });
        Ok(())
    }

    async fn forget_expired_keys(&self, sale: &Sale, now: Millis) -> Result<usize, GateError> {
        let state = self.state(sale)?;
        Ok(state
            .shards
            .iter()
            .map(|shard| shard.lock().forget_expired(now))
            .sum())
    }
}

#[cfg(test)]
mod tests;
