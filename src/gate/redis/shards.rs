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

// The protocol and its property test come first; the purchase path borrows through it
// once a sale carries its number of shards (the rest of issue #23).
#![cfg_attr(not(test), allow(dead_code))]

use super::{Lua, RedisGate, SaleKeys};
use crate::domain::Sale;
use crate::gate::GateError;

/// The id a sub-stock's keys are named by: the sale's own for shard 0 (a sale of one
/// shard is the sale as before), `<sale id>#<shard>` for the others.
pub(crate) fn sub_sale_id(sale_id: &str, shard: u32) -> String {
    if shard == 0 {
        sale_id.to_string()
    } else {
        format!("{sale_id}#{shard}")
    }
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

/// Sub-stock `shard` of `sale` as a sale of its own: its id, and its share of each
/// item's stock.
pub(crate) fn sub_sale(sale: &Sale, shards: u32, shard: u32) -> Sale {
    let mut sub = sale.clone();
    sub.id = sub_sale_id(&sale.id, shard);
    for item in &mut sub.items {
        item.stock = initial_share(item.stock, shards, shard);
    }
    sub
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
        sale_id: &str,
        from: u32,
        to: u32,
        wanted: &[(usize, u32)],
        share: bool,
    ) -> Result<Option<Transfer>, GateError> {
        let donor = sub_sale_id(sale_id, from);
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
        sale_id: &str,
        transfer: &Transfer,
    ) -> Result<Credit, GateError> {
        let keys = SaleKeys::new(&sub_sale_id(sale_id, transfer.to));
        let mut call = self.transfers.credit.key(&keys.meta);
        call.key(&keys.stock)
            .key(&keys.credited)
            .arg(&transfer.id)
            .arg(sale_id);
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
        sale_id: &str,
        transfer: &Transfer,
    ) -> Result<(), GateError> {
        let keys = SaleKeys::new(&sub_sale_id(sale_id, transfer.from));
        let mut call = self.transfers.settle.key(&keys.transit);
        call.arg(&transfer.id);
        self.write::<i64>(&call).await?;
        Ok(())
    }

    /// Steps 2 and 3 of a taken transfer; false when the receiver is lost (the transfer
    /// stays in transit).
    pub(crate) async fn finish_transfer(
        &self,
        sale_id: &str,
        transfer: &Transfer,
    ) -> Result<bool, GateError> {
        if self.credit_units(sale_id, transfer).await? == Credit::ReceiverLost {
            return Ok(false);
        }
        self.settle_transfer(sale_id, transfer).await?;
        Ok(true)
    }

    /// The transfers sub-stock `from` gave and has not settled.
    pub(crate) async fn transfers_from(
        &self,
        sale_id: &str,
        from: u32,
    ) -> Result<Vec<Transfer>, GateError> {
        let mut conn = self.redis.get();
        let transit: std::collections::HashMap<String, String> = self
            .bounded(
                redis::cmd("HGETALL")
                    .arg(SaleKeys::new(&sub_sale_id(sale_id, from)).transit)
                    .query_async(&mut conn),
            )
            .await?;
        Ok(transit
            .into_iter()
            .filter_map(|(id, entry)| parse_transit(id, from, &entry))
            .collect())
    }

    /// Finishes every transfer left in transit in the sale's `shards` sub-stocks (their
    /// takers may have died); returns how many it finished.
    pub(crate) async fn recover_transfers(
        &self,
        sale_id: &str,
        shards: u32,
    ) -> Result<usize, GateError> {
        let mut finished = 0;
        for from in 0..shards {
            for transfer in self.transfers_from(sale_id, from).await? {
                if self.finish_transfer(sale_id, &transfer).await? {
                    finished += 1;
                }
            }
        }
        Ok(finished)
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
        assert_eq!(sub_sale_id("s1", 0), "s1");
        assert_eq!(sub_sale_id("s1", 2), "s1#2");
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
