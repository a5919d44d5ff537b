use serde::{Deserialize, Serialize};

use super::{Millis, NewQueue, QueueSettings, Refusal, SaleRateLimits};

/// Item id of a sale created with a plain `stock` (one item).
pub const DEFAULT_ITEM: &str = "default";

const MAX_ITEMS: usize = 10_000;
const MAX_STOCK: u32 = 100_000_000;
const MAX_PER_USER_LIMIT: u32 = 10_000;
/// The most sub-stocks a sale's stock may be spread over (`shards`).
pub const MAX_SHARDS: u32 = 16;

/// A sale as its creator asks for it (the API reads it from `POST /api/sales`):
/// checked and completed by `into_sale`.
#[derive(Debug, Clone, Default)]
pub struct NewSale {
    pub name: String,
    /// A one-item sale's stock; or `items`.
    pub stock: Option<u32>,
    pub items: Option<Vec<Item>>,
    pub per_user_limit: Option<u32>,
    pub starts_at: Option<Millis>,
    pub ends_at: Option<Millis>,
    /// Seconds a buyer has to pay; 0 (the default) means an order is paid when placed.
    pub payment_window: Option<u32>,
    pub rate_limits: Option<SaleRateLimits>,
    /// Sub-stocks the Redis gate spreads the stock over (1 to `MAX_SHARDS`, default 1).
    pub shards: Option<u32>,
    pub queue: Option<NewQueue>,
}

/// Units added to one item's stock (`item` may be left out on a one-item sale).
#[derive(Debug, Clone)]
pub struct AddStock {
    pub item: Option<String>,
    pub units: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub id: String,
    pub stock: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sale {
    pub id: String,
    pub name: String,
    pub items: Vec<Item>,
    pub per_user_limit: u32,
    pub starts_at: Millis,
    pub ends_at: Option<Millis>,
    pub payment_window: u32,
    pub created_at: Millis,
    #[serde(default, skip_serializing_if = "SaleRateLimits::is_default")]
    pub rate_limits: SaleRateLimits,
    /// Paused by an operator: purchases are refused `paused` until it is resumed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// Sub-stocks of the Redis gate (1: the stock in one place).
    #[serde(default = "one_shard", skip_serializing_if = "is_one_shard")]
    pub shards: u32,
    /// The sale's line, if it is bought through one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueSettings>,
}

fn one_shard() -> u32 {
    1
}

fn is_one_shard(shards: &u32) -> bool {
    *shards == 1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SaleStatus {
    Scheduled,
    Live,
    Paused,
    SoldOut,
    Ended,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SaleError {
    #[error("{0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> SaleError {
    SaleError::Invalid(msg.into())
}

pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl NewSale {
    /// Checks the request and turns it into a sale. `now` is the default start.
    pub fn into_sale(self, id: String, now: Millis) -> Result<Sale, SaleError> {
        let name = self.name.trim().to_string();
        if name.is_empty() || name.len() > 200 {
            return Err(invalid("name must be 1 to 200 characters"));
        }
        let items = match (self.stock, self.items) {
            (Some(stock), None) => vec![Item {
                id: DEFAULT_ITEM.into(),
                stock,
            }],
            (None, Some(items)) => items,
            (Some(_), Some(_)) => return Err(invalid("give either `stock` or `items`, not both")),
            (None, None) => return Err(invalid("`stock` or `items` is required")),
        };
        if items.is_empty() || items.len() > MAX_ITEMS {
            return Err(invalid(format!("a sale has 1 to {MAX_ITEMS} items")));
        }
        let mut seen = std::collections::HashSet::new();
        for item in &items {
            if !valid_id(&item.id) {
                return Err(invalid(format!(
                    "item id {:?} must be 1 to 64 characters of [A-Za-z0-9._-]",
                    item.id
                )));
            }
            if !seen.insert(item.id.as_str()) {
                return Err(invalid(format!("item id {:?} appears twice", item.id)));
            }
            if item.stock == 0 || item.stock > MAX_STOCK {
                return Err(invalid(format!("stock must be 1 to {MAX_STOCK}")));
            }
        }
        let per_user_limit = self.per_user_limit.unwrap_or(1);
        if per_user_limit == 0 || per_user_limit > MAX_PER_USER_LIMIT {
            return Err(invalid(format!(
                "per_user_limit must be 1 to {MAX_PER_USER_LIMIT}"
            )));
        }
        let starts_at = self.starts_at.unwrap_or(now);
        let ends_at = self.ends_at;
        if let Some(end) = ends_at
            && end <= starts_at
        {
            return Err(invalid("ends_at must be after starts_at"));
        }
        let shards = self.shards.unwrap_or(1);
        if shards == 0 || shards > MAX_SHARDS {
            return Err(invalid(format!("shards must be 1 to {MAX_SHARDS}")));
        }
        Ok(Sale {
            id,
            name,
            items,
            per_user_limit,
            starts_at,
            ends_at,
            payment_window: self.payment_window.unwrap_or(0),
            created_at: now,
            rate_limits: self.rate_limits.unwrap_or_default(),
            paused: false,
            shards,
            queue: self.queue.map(|q| q.into_settings(now)).transpose()?,
        })
    }
}

impl Sale {
    pub fn total_stock(&self) -> u64 {
        self.items.iter().map(|i| i.stock as u64).sum()
    }

    /// The item an addition of stock goes to, if the addition is valid.
    pub fn stock_addition(&self, add: &AddStock) -> Result<usize, SaleError> {
        let index = match add.item.as_deref() {
            Some(id) => self
                .item_index(id)
                .ok_or_else(|| invalid(format!("the sale has no item {id:?}")))?,
            None if self.items.len() == 1 => 0,
            None => return Err(invalid("`item` is required: the sale has several items")),
        };
        let total = self.items[index].stock as u64 + add.units as u64;
        if add.units == 0 || total > MAX_STOCK as u64 {
            return Err(invalid(format!(
                "units must be at least 1, and an item's stock at most {MAX_STOCK}"
            )));
        }
        Ok(index)
    }

    /// Whether the sale's window has closed at `now` (an operator's end included).
    pub fn has_ended(&self, now: Millis) -> bool {
        self.ends_at.is_some_and(|end| now >= end)
    }

    pub fn item_index(&self, id: &str) -> Option<usize> {
        self.items.iter().position(|i| i.id == id)
    }

    /// Whether the sale is over for good at `now`, `after` its last payment window
    /// closed: ended, and every order it took past its window. Nothing can be bought
    /// any more; its buyers and keys may leave memory (issue #24).
    pub fn finished(&self, now: Millis, after: Millis) -> bool {
        self.ends_at
            .is_some_and(|end| now >= end + self.payment_window as Millis * 1000 + after)
    }

    /// The refusal the sale window gives at `now`, if any.
    pub fn window_refusal(&self, now: Millis) -> Option<Refusal> {
        if now < self.starts_at {
            Some(Refusal::NotStarted)
        } else if self.ends_at.is_some_and(|end| now >= end) {
            Some(Refusal::Ended)
        } else if self.paused {
            Some(Refusal::Paused)
        } else {
            None
        }
    }

    pub fn status(&self, now: Millis, remaining_total: u64) -> SaleStatus {
        match self.window_refusal(now) {
            Some(Refusal::NotStarted) => SaleStatus::Scheduled,
            Some(Refusal::Paused) => SaleStatus::Paused,
            Some(_) => SaleStatus::Ended,
            None if remaining_total == 0 => SaleStatus::SoldOut,
            None => SaleStatus::Live,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_sale() -> NewSale {
        NewSale {
            name: "drop".into(),
            stock: Some(10),
            items: None,
            per_user_limit: None,
            starts_at: None,
            ends_at: None,
            payment_window: None,
            rate_limits: None,
            shards: None,
            queue: None,
        }
    }

    #[test]
    fn stock_additions() {
        let sale = new_sale().into_sale("s".into(), 100).unwrap();
        let add = |item: Option<&str>, units| AddStock {
            item: item.map(String::from),
            units,
        };
        assert_eq!(sale.stock_addition(&add(None, 5)), Ok(0));
        assert_eq!(sale.stock_addition(&add(Some(DEFAULT_ITEM), 5)), Ok(0));
        assert!(sale.stock_addition(&add(None, 0)).is_err());
        assert!(sale.stock_addition(&add(Some("nope"), 1)).is_err());
        assert!(sale.stock_addition(&add(None, MAX_STOCK)).is_err());
        let mut seats = sale.clone();
        seats.items.push(Item {
            id: "A-2".into(),
            stock: 1,
        });
        assert!(seats.stock_addition(&add(None, 1)).is_err());
        assert_eq!(seats.stock_addition(&add(Some("A-2"), 1)), Ok(1));
    }

    #[test]
    fn a_paused_sale_refuses_paused_inside_its_window_only() {
        let mut sale = new_sale().into_sale("s".into(), 100).unwrap();
        sale.ends_at = Some(200);
        sale.paused = true;
        assert_eq!(sale.window_refusal(150), Some(Refusal::Paused));
        assert_eq!(sale.status(150, 3), SaleStatus::Paused);
        assert_eq!(sale.window_refusal(99), Some(Refusal::NotStarted));
        assert_eq!(sale.window_refusal(250), Some(Refusal::Ended));
    }

    #[test]
    fn stock_only_sale_has_one_default_item_and_limit_one() {
        let sale = new_sale().into_sale("s".into(), 1000).unwrap();
        assert_eq!(
            sale.items,
            vec![Item {
                id: DEFAULT_ITEM.into(),
                stock: 10
            }]
        );
        assert_eq!(sale.per_user_limit, 1);
        assert_eq!(sale.starts_at, 1000);
    }

    #[test]
    fn a_sale_has_1_to_16_shards_and_one_unless_told() {
        assert_eq!(new_sale().into_sale("s".into(), 0).unwrap().shards, 1);
        let three = NewSale {
            shards: Some(3),
            ..new_sale()
        };
        assert_eq!(three.into_sale("s".into(), 0).unwrap().shards, 3);
        for bad in [0, MAX_SHARDS + 1] {
            let refused = NewSale {
                shards: Some(bad),
                ..new_sale()
            };
            assert_eq!(
                refused.into_sale("s".into(), 0),
                Err(invalid("shards must be 1 to 16"))
            );
        }
    }

    #[test]
    fn rejects_bad_sales() {
        let both = NewSale {
            items: Some(vec![]),
            ..new_sale()
        };
        assert!(both.into_sale("s".into(), 0).is_err());
        let zero = NewSale {
            stock: Some(0),
            ..new_sale()
        };
        assert!(zero.into_sale("s".into(), 0).is_err());
        let dup = NewSale {
            stock: None,
            items: Some(vec![
                Item {
                    id: "A".into(),
                    stock: 1,
                },
                Item {
                    id: "A".into(),
                    stock: 1,
                },
            ]),
            ..new_sale()
        };
        assert!(dup.into_sale("s".into(), 0).is_err());
        let limit = NewSale {
            per_user_limit: Some(0),
            ..new_sale()
        };
        assert!(limit.into_sale("s".into(), 0).is_err());
    }

    #[test]
    fn window_and_status() {
        let mut sale = new_sale().into_sale("s".into(), 100).unwrap();
        sale.ends_at = Some(200);
        assert_eq!(sale.window_refusal(99), Some(Refusal::NotStarted));
        assert_eq!(sale.window_refusal(100), None);
        assert_eq!(sale.window_refusal(200), Some(Refusal::Ended));
        assert_eq!(sale.status(150, 0), SaleStatus::SoldOut);
        assert_eq!(sale.status(150, 3), SaleStatus::Live);
        assert_eq!(sale.status(50, 3), SaleStatus::Scheduled);
    }
}
