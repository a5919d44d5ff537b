//! One hot sale over N sub-stocks (issue #23, docs/redis.md "A sale over shards"): each
//! sub-stock is a sale of its own in Redis, under a hash tag of its own (so in another
//! Cluster slot, on another master when there are enough), and every buyer maps to one
//! of them by a hash of the user id, which keeps the per-user limit atomic with the
//! stock it is checked against.
//!
//! A sub-stock that runs dry borrows from the others by a transfer in three steps, each
//! one script on one sub-stock (a Cluster has no transaction across slots):
//!
//! 1. `take` on the donor: the units leave its stock and are written down under the
//!    transfer's id in its transit hash, in one step;
//! 2. `credit` on the receiver: the units join its stock, once per transfer id (its
//!    credited set remembers the id);
//! 3. `settle` on the donor: the transit entry goes.
//!
//! At every moment each unit is in exactly one place: a sub-stock, an order's
//! reservation, or a transit entry not yet credited. A gateway that dies between the
//! steps leaves a transit entry; `recover_transfers` (any gateway) credits and settles
//! it, which is safe against the original taker finishing at the same time because the
//! credit is idempotent.

//!
//! The stock starts in sub-stock 0, which records the sale's total (so that stock added
//! by an operator lands there and a rebuild after a full loss puts every unsold unit
//! back there); opening the sale moves each other sub-stock its even share by transfers.
//! A purchase refused `sold_out` on its buyer's sub-stock borrows (at least half of each
//! donor's units of the items it wants) and is decided again; `sold_out` is answered
//! only when no other sub-stock had any of them and nothing was left in transit.

use std::time::Instant;

use super::{Lua, RedisGate, SaleKeys};
use crate::domain::{Millis, Order, Refusal, Sale, ValidPurchase};
use crate::gate::{Decision, GateError, HoldEnd, KeyAnswer, RebuildLease, SaleSnapshot, StockGate};

/// How many times a purchase borrows and is decided again before it is answered
/// `sold_out` while units still moved (other buyers of its sub-stock took them first).
const BORROW_ROUNDS: usize = 8;

/// The id a sub-stock's keys are named by: the sale's own for shard 0 (a sale of one
/// shard is the sale as before), `<sale id>#<shard>.<n>` for the others, with the
/// smallest `n` that puts its hash tag in its own N-th of the Cluster's slots, counted
/// from sub-stock 0's: masters that split the slots evenly (the default layout) then
/// each hold one sub-stock when there are as many of them.
pub(crate) fn sub_sale_id(sale_id: &str, shard: u32, shards: u32) -> String {
    if shard == 0 {
        return sale_id.to_string();
    }
    let shards = shards.max(1);
    let part = |slot: u16| u32::from(slot) * shards / SLOTS;
    let wanted = (part(slot_of(sale_id)) + shard) % shards;
    (0u32..)
        .map(|n| format!("{sale_id}#{shard}.{n}"))
        .find(|id| part(slot_of(id)) == wanted)
        .expect("some n falls in each part of the slots")
}

/// Redis Cluster's slots.
const SLOTS: u32 = 16384;

/// The Cluster slot of a sale's keys: CRC16 (XMODEM) of its hash tag `sale:<id>`.
fn slot_of(sale_id: &str) -> u16 {
    let mut crc: u16 = 0;
    for byte in b"sale:".iter().chain(sale_id.as_bytes()) {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % SLOTS as u16
}

/// The sub-stock a buyer buys from: FNV-1a of the user id, stable across gateways,
/// versions and platforms (a buyer who moved would escape the per-user limit).
pub(crate) fn shard_of(user_id: &str, shards: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in user_id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % u64::from(shards.max(1))) as u32
}

/// The part of an item's `stock` sub-stock `shard` of `shards` starts with: an even
/// split, the first ones a unit more when it does not divide.
pub(crate) fn initial_share(stock: u32, shards: u32, shard: u32) -> u32 {
    let shards = shards.max(1);
    stock / shards + u32::from(shard < stock % shards)
}

/// Sub-stock `shard` of `sale` as a sale of one shard for the gate's scripts: its id,
/// and the stock it records as its total: all of it for sub-stock 0, none for the
/// others (theirs comes by transfer).
pub(crate) fn sub_sale(sale: &Sale, shard: u32) -> Sale {
    let mut sub = sale.clone();
    sub.id = sub_sale_id(&sale.id, shard, sale.shards);
    sub.shards = 1;
    if shard != 0 {
        for item in &mut sub.items {
            item.stock = 0;
        }
    }
    sub
}

/// The sale a sub-stock's id belongs to (sale ids have no `#`).
pub(crate) fn parent_sale_id(id: &str) -> &str {
    id.split('#').next().unwrap_or(id)
}

/// Units on their way from one sub-stock to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Transfer {
    pub id: String,
    pub from: u32,
    pub to: u32,
    /// (item index, units)
    pub units: Vec<(usize, u32)>,
}

/// What `credit` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Credit {
    /// The units joined the receiver now.
    Added,
    /// They had joined it before (another gateway finished the transfer).
    AlreadyCredited,
    /// The receiver's keys are lost: the units stay in transit until it is rebuilt.
    ReceiverLost,
}

/// The transfer scripts, loaded with the gate's others.
pub(super) struct TransferScripts {
    take: Lua,
    credit: Lua,
    settle: Lua,
}

impl TransferScripts {
    pub(super) fn new() -> TransferScripts {
        TransferScripts {
            take: Lua::new(include_str!("../lua/transfer_take.lua")),
            credit: Lua::new(include_str!("../lua/transfer_credit.lua")),
            settle: Lua::new(include_str!("../lua/transfer_settle.lua")),
        }
    }
}

impl RedisGate {
    /// Step 1: takes up to `wanted` units per item from sub-stock `from` for `to` (with
    /// `share`, at least half of what `from` has of each wanted item). `None` when
    /// `from` had none of them; `Err(UnknownSale)` when `from` is lost.
    pub(crate) async fn take_units(
        &self,
        sale: &Sale,
        from: u32,
        to: u32,
        wanted: &[(usize, u32)],
        share: bool,
    ) -> Result<Option<Transfer>, GateError> {
        let donor = sub_sale_id(&sale.id, from, sale.shards);
        let keys = SaleKeys::new(&donor);
        let id = uuid::Uuid::now_v7().simple().to_string();
        let mut call = self.transfers.take.key(&keys.meta);
        call.key(&keys.stock)
            .key(&keys.transit)
            .arg(&id)
            .arg(to)
            .arg(share as u8);
        for &(item, units) in wanted {
            call.arg(item).arg(units);
        }
        let reply: Vec<redis::Value> = self.write(&call).await?;
        let kind = reply.first().map(super::text).unwrap_or_default();
        if kind == "unknown" {
            return Err(GateError::UnknownSale(donor));
        }
        let units: Vec<(usize, u32)> = reply[1..]
            .chunks(2)
            .filter_map(|pair| {
                let item = super::text(pair.first()?).parse().ok()?;
                let units = super::text(pair.get(1)?).parse().ok()?;
                Some((item, units))
            })
            .collect();
        Ok((!units.is_empty()).then_some(Transfer {
            id,
            from,
            to,
            units,
        }))
    }

    /// Step 2: the receiver adds the transfer's units, once.
    pub(crate) async fn credit_units(
        &self,
        sale: &Sale,
        transfer: &Transfer,
    ) -> Result<Credit, GateError> {
        let keys = SaleKeys::new(&sub_sale_id(&sale.id, transfer.to, sale.shards));
        let mut call = self.transfers.credit.key(&keys.meta);
        call.key(&keys.stock)
            .key(&keys.credited)
            .arg(&transfer.id)
            .arg(&sale.id);
        for &(item, units) in &transfer.units {
            call.arg(item).arg(units);
        }
        Ok(match self.write::<i64>(&call).await? {
            1 => Credit::Added,
            0 => Credit::AlreadyCredited,
            _ => Credit::ReceiverLost,
        })
    }

    /// Step 3: the donor forgets a credited transfer.
    pub(crate) async fn settle_transfer(
        &self,
        sale: &Sale,
        transfer: &Transfer,
    ) -> Result<(), GateError> {
        let keys = SaleKeys::new(&sub_sale_id(&sale.id, transfer.from, sale.shards));
        let mut call = self.transfers.settle.key(&keys.transit);
        call.arg(&transfer.id);
        self.write::<i64>(&call).await?;
        Ok(())
    }

    /// Steps 2 and 3 of a taken transfer; false when the receiver is lost (the transfer
    /// stays in transit).
    pub(crate) async fn finish_transfer(
        &self,
        sale: &Sale,
        transfer: &Transfer,
    ) -> Result<bool, GateError> {
        if self.credit_units(sale, transfer).await? == Credit::ReceiverLost {
            return Ok(false);
        }
        self.settle_transfer(sale, transfer).await?;
        Ok(true)
    }

    /// The transfers sub-stock `from` gave and has not settled.
    pub(crate) async fn transfers_from(
        &self,
        sale: &Sale,
        from: u32,
    ) -> Result<Vec<Transfer>, GateError> {
        let mut conn = self.redis.get();
        let transit: std::collections::HashMap<String, String> = self
            .bounded(
                redis::cmd("HGETALL")
                    .arg(SaleKeys::new(&sub_sale_id(&sale.id, from, sale.shards)).transit)
                    .query_async(&mut conn),
            )
            .await?;
        Ok(transit
            .into_iter()
            .filter_map(|(id, entry)| parse_transit(id, from, &entry))
            .collect())
    }

    /// Finishes every transfer left in transit in the sale's sub-stocks (their takers
    /// may have died); returns how many it finished.
    pub(crate) async fn recover_transfers(&self, sale: &Sale) -> Result<usize, GateError> {
        let mut finished = 0;
        for from in 0..sale.shards {
            for transfer in self.transfers_from(sale, from).await? {
                if self.finish_transfer(sale, &transfer).await? {
                    finished += 1;
                }
            }
        }
        Ok(finished)
    }
}

/// The gate's operations on a sale of several shards: each on its buyer's sub-stock, or
/// on every sub-stock. `RedisGate`'s `StockGate` methods come here when `sale.shards > 1`
/// and call themselves back with a sub-stock (a sale of one shard).
impl RedisGate {
    fn subs(sale: &Sale) -> impl Iterator<Item = Sale> + '_ {
        (0..sale.shards).map(move |shard| sub_sale(sale, shard))
    }

    fn buyer_sub(sale: &Sale, user_id: &str) -> Sale {
        sub_sale(sale, shard_of(user_id, sale.shards))
    }

    pub(super) async fn open_sharded(&self, sale: &Sale) -> Result<(), GateError> {
        let created = self.open_one(&sub_sale(sale, 0)).await?;
        for shard in 1..sale.shards {
            self.open_one(&sub_sale(sale, shard)).await?;
        }
        if created {
            for shard in 1..sale.shards {
                let share: Vec<(usize, u32)> = sale
                    .items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| (i, initial_share(item.stock, sale.shards, shard)))
                    .filter(|&(_, units)| units > 0)
                    .collect();
                if share.is_empty() {
                    continue;
                }
                // A transfer left unfinished here is finished by the first borrower.
                if let Some(transfer) = self.take_units(sale, 0, shard, &share, false).await? {
                    self.finish_transfer(sale, &transfer).await?;
                }
            }
        }
        Ok(())
    }

    pub(super) async fn has_sharded(&self, sale: &Sale) -> Result<bool, GateError> {
        for sub in Self::subs(sale) {
            if !self.has_sale(&sub).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Rebuilds the lost sub-stocks. After a loss of every one (a promoted master fenced,
    /// a Redis restarted empty), sub-stock 0 gets every unsold unit and the others
    /// borrow again: exact. After a loss of some (a Cluster master lost with no
    /// replica), the lost ones come back with their buyers and no units: what they
    /// held is not known without a read of the others that no purchase can overtake,
    /// and a guess could oversell (docs/redis.md: those units stay unsold).
    pub(super) async fn restore_sharded(
        &self,
        sale: &Sale,
        snapshot: &SaleSnapshot,
        lease: &RebuildLease,
    ) -> Result<(), GateError> {
        let mut lost = Vec::new();
        for shard in 0..sale.shards {
            if !self.has_sale(&sub_sale(sale, shard)).await? {
                lost.push(shard);
            }
        }
        if lost.is_empty() {
            return Err(GateError::Fenced(sale.id.clone(), "the sale exists"));
        }
        let everything_lost = lost.len() == sale.shards as usize;
        for shard in lost {
            let sub = sub_sale(sale, shard);
            let mut part = SaleSnapshot {
                sold: snapshot.sold.clone(),
                buyers: snapshot
                    .buyers
                    .iter()
                    .filter(|(user, _)| shard_of(user, sale.shards) == shard)
                    .map(|(user, units)| (user.clone(), *units))
                    .collect(),
                keyed_orders: snapshot
                    .keyed_orders
                    .iter()
                    .filter(|order| shard_of(&order.user_id, sale.shards) == shard)
                    .cloned()
                    .collect(),
                // An order is released on its buyer's sub-stock only: the others never
                // look its id up.
                holding: snapshot.holding.clone(),
                taken_at: snapshot.taken_at,
            };
            if shard != 0 || !everything_lost {
                // No units: sub-stock 0 records the total, the others none.
                part.sold = sub.items.iter().map(|item| item.stock).collect();
            }
            // The lease lives under the sale's own hash tag; a sub-stock's script reads
            // it from its own slot.
            if shard != 0 {
                self.copy_lease(sale, &sub, lease).await?;
            }
            self.restore(&sub, &part, lease).await?;
        }
        self.sold_out.write().remove(&sale.id);
        Ok(())
    }

    async fn copy_lease(
        &self,
        sale: &Sale,
        sub: &Sale,
        lease: &RebuildLease,
    ) -> Result<(), GateError> {
        let mut conn = self.redis.get();
        let held: Option<String> = self
            .bounded(
                redis::cmd("GET")
                    .arg(SaleKeys::new(&sale.id).lease)
                    .query_async(&mut conn),
            )
            .await?;
        if held.as_deref() != Some(lease.token.as_str()) {
            return Err(GateError::Fenced(
                sale.id.clone(),
                "the rebuild lease was lost",
            ));
        }
        self.bounded(
            redis::cmd("SET")
                .arg(SaleKeys::new(&sub.id).lease)
                .arg(&lease.token)
                .arg("PX")
                .arg(super::LEASE_MS)
                .query_async::<()>(&mut conn),
        )
        .await
    }

    pub(super) async fn update_sharded(&self, sale: &Sale) -> Result<(), GateError> {
        for sub in Self::subs(sale) {
            self.update_sale(&sub).await?;
        }
        Ok(())
    }

    /// Decides on the buyer's sub-stock; on `sold_out` there, borrows and decides again.
    pub(super) async fn reserve_sharded(
        &self,
        sale: &Sale,
        purchase: &ValidPurchase,
        key: Option<&str>,
        order_id: &str,
        now: Millis,
    ) -> Result<Decision, GateError> {
        if let Some(refusal) = self.quick_refusal(sale, key, now) {
            return Ok(Decision::Refused(refusal));
        }
        let shard = shard_of(&purchase.user_id, sale.shards);
        let sub = sub_sale(sale, shard);
        for _ in 0..BORROW_ROUNDS {
            let decision = self.reserve(&sub, purchase, key, order_id, now).await?;
            if decision != Decision::Refused(Refusal::SoldOut) {
                return Ok(decision);
            }
            if !self.borrow(sale, shard, &purchase.units).await? {
                break;
            }
        }
        if self.remaining(sale).await?.iter().all(|&units| units == 0) {
            self.sold_out
                .write()
                .insert(sale.id.clone(), Instant::now());
        }
        Ok(Decision::Refused(Refusal::SoldOut))
    }

    /// Moves units of the `wanted` items to sub-stock `to` from the others, then
    /// finishes any transfer left in transit; false when nothing moved and every other
    /// sub-stock answered (they are empty of those items), `Unavailable` when nothing
    /// moved and one did not answer (a master failing over): the buyer must not hear
    /// `sold_out` while its units may be there.
    async fn borrow(
        &self,
        sale: &Sale,
        to: u32,
        wanted: &[(usize, u32)],
    ) -> Result<bool, GateError> {
        let mut wanted = wanted.to_vec();
        let mut moved = false;
        let mut unanswered = None;
        for offset in 1..sale.shards {
            let from = (to + offset) % sale.shards;
            let transfer = match self.take_units(sale, from, to, &wanted, true).await {
                Ok(Some(transfer)) => transfer,
                Ok(None) | Err(GateError::UnknownSale(_)) => continue, // empty, or lost
                Err(e) => {
                    unanswered = Some(e);
                    continue;
                }
            };
            self.finish_transfer(sale, &transfer).await?;
            moved = true;
            for (item, units) in &mut wanted {
                if let Some((_, got)) = transfer.units.iter().find(|(i, _)| i == item) {
                    *units = units.saturating_sub(*got);
                }
            }
            wanted.retain(|&(_, units)| units > 0);
            if wanted.is_empty() {
                break;
            }
        }
        if !moved {
            // Units a dead gateway left in transit are units too.
            moved = self.recover_transfers(sale).await? > 0;
        }
        match unanswered {
            Some(e) if !moved => Err(e),
            _ => Ok(moved),
        }
    }

    pub(super) async fn confirm_sharded(
        &self,
        sale: &Sale,
        order: &Order,
    ) -> Result<(), GateError> {
        self.confirm(&Self::buyer_sub(sale, &order.user_id), order)
            .await
    }

    pub(super) async fn release_sharded(
        &self,
        sale: &Sale,
        order: &Order,
        forget_key: bool,
    ) -> Result<(), GateError> {
        self.release(&Self::buyer_sub(sale, &order.user_id), order, forget_key)
            .await
            .map_err(|e| match e {
                GateError::UnknownSale(_) => GateError::UnknownSale(sale.id.clone()),
                e => e,
            })
    }

    pub(super) async fn key_answer_sharded(
        &self,
        sale: &Sale,
        user_id: &str,
        key: &str,
    ) -> Result<Option<KeyAnswer>, GateError> {
        self.key_answer(&Self::buyer_sub(sale, user_id), user_id, key)
            .await
    }

    pub(super) async fn stale_holds_sharded(
        &self,
        sale: &Sale,
        grace: std::time::Duration,
    ) -> Result<Vec<String>, GateError> {
        let mut holds = Vec::new();
        for sub in Self::subs(sale) {
            holds.extend(self.stale_holds(&sub, grace).await?);
        }
        Ok(holds)
    }

    /// A hold is on its buyer's sub-stock; only its id is known when it is released, so
    /// each sub-stock is asked (a sub-stock without it does nothing).
    pub(super) async fn drop_hold_sharded(
        &self,
        sale: &Sale,
        order_id: &str,
        end: HoldEnd<'_>,
    ) -> Result<(), GateError> {
        match end {
            HoldEnd::Confirm(order) => {
                self.drop_hold(&Self::buyer_sub(sale, &order.user_id), order_id, end)
                    .await
            }
            HoldEnd::Release => {
                for sub in Self::subs(sale) {
                    self.drop_hold(&sub, order_id, end).await?;
                }
                Ok(())
            }
        }
    }

    /// Every sub-stock's units, per item (units in transit a moment excepted).
    pub(super) async fn remaining_sharded(&self, sale: &Sale) -> Result<Vec<u32>, GateError> {
        let mut total = vec![0u32; sale.items.len()];
        for sub in Self::subs(sale) {
            for (sum, units) in total.iter_mut().zip(self.remaining(&sub).await?) {
                *sum += units;
            }
        }
        Ok(total)
    }
}

/// A transit entry, "receiver\nitem:units,item:units".
fn parse_transit(id: String, from: u32, entry: &str) -> Option<Transfer> {
    let (to, pairs) = entry.split_once('\n')?;
    let units = pairs
        .split(',')
        .map(|pair| {
            let (item, units) = pair.split_once(':')?;
            Some((item.parse().ok()?, units.parse().ok()?))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Transfer {
        id,
        from,
        to: to.parse().ok()?,
        units,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buyer_always_maps_to_the_same_shard_and_buyers_spread() {
        assert_eq!(shard_of("alice", 3), shard_of("alice", 3));
        assert_eq!(shard_of("alice", 1), 0);
        let mut counts = [0u32; 3];
        for n in 0..3000 {
            counts[shard_of(&format!("buyer-{n}"), 3) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }

    #[test]
    fn the_shares_add_up_to_the_stock() {
        for stock in [0, 1, 2, 5, 100, 101] {
            for shards in 1..=5 {
                let sum: u32 = (0..shards).map(|j| initial_share(stock, shards, j)).sum();
                assert_eq!(sum, stock, "{stock} over {shards}");
            }
        }
    }

    #[test]
    fn shard_zero_is_the_sale_itself_and_the_others_hash_elsewhere() {
        assert_eq!(sub_sale_id("s1", 0, 3), "s1");
        assert!(sub_sale_id("s1", 2, 3).starts_with("s1#2."));
        assert_eq!(parent_sale_id("s1#2"), "s1");
        assert_eq!(parent_sale_id("s1"), "s1");
    }

    #[test]
    fn the_slot_is_redis_clusters() {
        // CLUSTER KEYSLOT {sale:x} = 2891, {sale:x#1} = 7518 (redis-server 7.0).
        assert_eq!(slot_of("x"), 2891);
        assert_eq!(slot_of("x#1"), 7518);
    }

    #[test]
    fn the_sub_stocks_fall_in_distinct_parts_of_the_slots() {
        for sale in ["x", "bench-1", "0192f3a4b5c6d7e8f9a0b1c2d3e4f5a6"] {
            for shards in [2u32, 3, 5, 16] {
                let parts: std::collections::HashSet<u32> = (0..shards)
                    .map(|j| u32::from(slot_of(&sub_sale_id(sale, j, shards))) * shards / SLOTS)
                    .collect();
                assert_eq!(parts.len(), shards as usize, "{sale} over {shards}");
            }
        }
    }

    #[test]
    fn a_transit_entry_reads_back() {
        assert_eq!(
            parse_transit("t".into(), 1, "2\n0:5,1:3"),
            Some(Transfer {
                id: "t".into(),
                from: 1,
                to: 2,
                units: vec![(0, 5), (1, 3)]
            })
        );
        assert_eq!(parse_transit("t".into(), 1, "garbage"), None);
    }
}
