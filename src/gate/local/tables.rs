//! The local gate's compact tables: per buyer the units they hold and their idempotency
//! keys, kept small because a sale of millions of buyers keeps one entry each (bench 7).
//! The gate's rules (what a purchase may take) are in `local.rs`; these tables only
//! store and find.

use std::collections::HashMap;

use foldhash::quality::RandomState;

use super::*;

#[derive(Default)]
pub(super) struct Shard {
    /// One entry per buyer, the id kept once: the units they hold and where their
    /// idempotency keys are (bench 7: two maps kept every keyed buyer's id twice; keys
    /// in the entry itself made every keyless buyer's slot larger).
    pub(super) buyers: HashMap<Box<str>, Buyer, RandomState>,
    /// The keyed buyers' keys, at `Buyer::keys`; emptied lists are reused (`free_lists`).
    pub(super) key_lists: Vec<Box<[KeyEntry]>>,
    pub(super) free_lists: Vec<u32>,
    /// The shard's purchase fingerprints, each kept once: a key shares its text (most
    /// buyers of a sale buy the same thing).
    pub(super) fingerprints: HashSet<Arc<str>, RandomState>,
}

/// 8 bytes beside the buyer's id in the map's slot.
#[derive(Clone, Copy)]
pub(super) struct Buyer {
    pub(super) units: u32,
    pub(super) keys: KeysAt,
}

/// Where a buyer's keys are in `Shard::key_lists`, if they have any. Most buyers use no
/// key or one: a list is allocated exactly (a `Vec` push would make room for four).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct KeysAt(pub(super) u32);

impl KeysAt {
    pub(super) const NONE: KeysAt = KeysAt(u32::MAX);
}

impl Buyer {
    pub(super) const NEW: Buyer = Buyer {
        units: 0,
        keys: KeysAt::NONE,
    };

    pub(super) fn is_empty(&self) -> bool {
        self.units == 0 && self.keys == KeysAt::NONE
    }
}

/// An idempotency key as a 128-bit hash of its text under the gate's random seeds:
/// 16 bytes in place instead of an allocation of the key's length. Two keys of one buyer
/// are taken for one with probability ~2^-128, and the seeds are not known outside.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct KeyHash(pub(super) u64, pub(super) u64);

/// Kept for every accepted key until it expires, so it is small: the order an accepted
/// key stands for is rebuilt from the fingerprint when a retry asks (bench 7: keeping
/// the whole order made a keyed buyer cost ~900 bytes).
pub(super) struct KeyEntry {
    pub(super) key: KeyHash,
    pub(super) fingerprint: Arc<str>,
    pub(super) state: KeyState,
    /// When the key may be forgotten (`KeyPolicy::expires_at`).
    pub(super) expires_at: Millis,
}

pub(super) enum KeyState {
    InFlight(OrderRef),
    Accepted {
        order_id: OrderRef,
        created_at: Millis,
    },
}

/// An order id: our ids are UUIDs written as 32 lowercase hex digits, kept as their 16
/// bytes; anything else as text.
#[derive(PartialEq, Eq)]
pub(super) enum OrderRef {
    Uuid(Uuid),
    Text(Box<str>),
}

impl OrderRef {
    pub(super) fn new(id: &str) -> OrderRef {
        let simple = id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        match Uuid::try_parse(id) {
            Ok(uuid) if simple => OrderRef::Uuid(uuid),
            _ => OrderRef::Text(id.into()),
        }
    }

    pub(super) fn is(&self, id: &str) -> bool {
        *self == OrderRef::new(id)
    }

    pub(super) fn text(&self) -> String {
        match self {
            OrderRef::Uuid(uuid) => uuid.simple().to_string(),
            OrderRef::Text(text) => text.to_string(),
        }
    }
}

impl KeyEntry {
    pub(super) fn is_for(&self, order: &Order) -> bool {
        match &self.state {
            KeyState::InFlight(mine) | KeyState::Accepted { order_id: mine, .. } => {
                mine.is(&order.id)
            }
        }
    }

    pub(super) fn answer(&self, sale: &Sale, user_id: &str, key: &str) -> KeyAnswer {
        match &self.state {
            KeyState::InFlight(order_id) => KeyAnswer::InFlight {
                order_id: order_id.text(),
            },
            KeyState::Accepted {
                order_id,
                created_at,
            } => match ValidPurchase::from_fingerprint(sale, user_id, &self.fingerprint) {
                Some(purchase) => KeyAnswer::Accepted(Arc::new(Order::new(
                    order_id.text(),
                    sale,
                    &purchase,
                    Some(key.to_string()),
                    *created_at,
                ))),
                // Only a sale whose items changed under it: nothing to replay but the id.
                None => KeyAnswer::InFlight {
                    order_id: order_id.text(),
                },
            },
        }
    }
}

impl Shard {
    pub(super) fn keys_of(&self, user: &str) -> &[KeyEntry] {
        match self.buyers.get(user) {
            Some(buyer) if buyer.keys != KeysAt::NONE => &self.key_lists[buyer.keys.0 as usize],
            _ => &[],
        }
    }

    pub(super) fn key(&self, user: &str, key: KeyHash) -> Option<&KeyEntry> {
        self.keys_of(user).iter().find(|e| e.key == key)
    }

    pub(super) fn key_mut(&mut self, user: &str, key: KeyHash) -> Option<&mut KeyEntry> {
        let at = self.buyers.get(user)?.keys;
        if at == KeysAt::NONE {
            return None;
        }
        self.key_lists[at.0 as usize]
            .iter_mut()
            .find(|e| e.key == key)
    }

    pub(super) fn set_key(&mut self, user: &str, entry: KeyEntry) {
        if let Some(slot) = self.key_mut(user, entry.key) {
            *slot = entry;
            return;
        }
        let at = self.buyer_mut(user).keys;
        if at != KeysAt::NONE {
            let list = &mut self.key_lists[at.0 as usize];
            *list = std::mem::take(list)
                .into_vec()
                .into_iter()
                .chain([entry])
                .collect();
            return;
        }
        let list: Box<[KeyEntry]> = Box::new([entry]);
        let at = match self.free_lists.pop() {
            Some(free) => {
                self.key_lists[free as usize] = list;
                KeysAt(free)
            }
            None => {
                self.key_lists.push(list);
                KeysAt((self.key_lists.len() - 1) as u32)
            }
        };
        self.buyer_mut(user).keys = at;
    }

    /// The buyer's entry, made if new (looked up before inserting: a returning buyer's id
    /// is not allocated again). Off the selling path: `add_units` does its own.
    pub(super) fn buyer_mut(&mut self, user: &str) -> &mut Buyer {
        if !self.buyers.contains_key(user) {
            self.buyers.insert(user.into(), Buyer::NEW);
        }
        self.buyers.get_mut(user).expect("just inserted")
    }

    /// Drops the buyer's entry once it holds nothing and keeps no key.
    pub(super) fn drop_if_empty(&mut self, user: &str) {
        if self.buyers.get(user).is_some_and(Buyer::is_empty) {
            self.buyers.remove(user);
        }
    }

    pub(super) fn units(&self, user: &str) -> u32 {
        self.buyers.get(user).map_or(0, |b| b.units)
    }

    /// On the selling path: one lookup for a returning buyer, one more for a new one.
    pub(super) fn add_units(&mut self, user: &str, units: u32) {
        match self.buyers.get_mut(user) {
            Some(buyer) => buyer.units += units,
            None => {
                self.buyers.insert(
                    user.into(),
                    Buyer {
                        units,
                        ..Buyer::NEW
                    },
                );
            }
        }
    }

    pub(super) fn remove_units(&mut self, user: &str, units: u32) {
        if let Some(buyer) = self.buyers.get_mut(user) {
            buyer.units = buyer.units.saturating_sub(units);
            self.drop_if_empty(user);
        }
    }

    /// The shard's copy of `fingerprint`, made if new.
    pub(super) fn fingerprint(&mut self, fingerprint: &str) -> Arc<str> {
        if let Some(kept) = self.fingerprints.get(fingerprint) {
            return kept.clone();
        }
        let kept: Arc<str> = fingerprint.into();
        self.fingerprints.insert(kept.clone());
        kept
    }

    /// Keeps the buyer's keys that pass `keep` (their list goes back to the free ones
    /// when none does); returns how many went.
    pub(super) fn retain_keys(
        key_lists: &mut [Box<[KeyEntry]>],
        free_lists: &mut Vec<u32>,
        buyer: &mut Buyer,
        keep: impl Fn(&KeyEntry) -> bool,
    ) -> usize {
        if buyer.keys == KeysAt::NONE {
            return 0;
        }
        let list = &mut key_lists[buyer.keys.0 as usize];
        let before = list.len();
        if !list.iter().all(&keep) {
            *list = std::mem::take(list)
                .into_vec()
                .into_iter()
                .filter(|e| keep(e))
                .collect();
        }
        let dropped = before - list.len();
        if list.is_empty() {
            free_lists.push(buyer.keys.0);
            buyer.keys = KeysAt::NONE;
        }
        dropped
    }

    /// Drops the buyer's expired keys; returns how many live keys the buyer has left.
    pub(super) fn live_keys(&mut self, user: &str, now: Millis) -> usize {
        let Some(buyer) = self.buyers.get_mut(user) else {
            return 0;
        };
        Self::retain_keys(&mut self.key_lists, &mut self.free_lists, buyer, |e| {
            e.expires_at > now
        });
        let live = self.keys_of(user).len();
        self.drop_if_empty(user);
        live
    }

    /// Drops every expired key of the shard; returns how many.
    pub(super) fn forget_expired(&mut self, now: Millis) -> usize {
        let Shard {
            buyers,
            key_lists,
            free_lists,
            ..
        } = self;
        let mut forgotten = 0;
        buyers.retain(|_, buyer| {
            forgotten += Self::retain_keys(key_lists, free_lists, buyer, |e| e.expires_at > now);
            !buyer.is_empty()
        });
        forgotten
    }

    pub(super) fn remove_key(&mut self, user: &str, key: KeyHash) {
        if let Some(buyer) = self.buyers.get_mut(user) {
            Self::retain_keys(&mut self.key_lists, &mut self.free_lists, buyer, |e| {
                e.key != key
            });
            self.drop_if_empty(user);
        }
    }
}
