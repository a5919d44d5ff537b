//! The bodies the API reads, as they are written on the wire (JSON, their OpenAPI
//! schemas), each turned into the domain's plain type with `From`: the checks of their
//! values are the domain's (`domain::NewSale::into_sale`, `domain::validate_purchase`),
//! the shape of the JSON is this file's. The typed client sends the same types.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{self, Admit, Item, LineOrder, RateLimit, SaleRateLimits};

/// Body of `POST /api/sales`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSale {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stock: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<NewItem>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_user_limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub starts_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub ends_at: Option<DateTime<Utc>>,
    /// Seconds a buyer has to pay; 0 (the default) means an order is paid when placed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_window: Option<u32>,
    /// This sale's own rate limits for purchases (else the gateway's defaults).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<RateLimits>,
    /// Sub-stocks the Redis gate spreads the stock over (1 to 16, default 1): one hot
    /// sale over several Cluster masters, sold out exactly (docs/redis.md). The local
    /// gate accepts and ignores it (one process is one shard).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shards: Option<u32>,
    /// A line in front of the sale: buyers join it and are decided in line order; the
    /// purchase route then refuses `queue_required` (docs/api.md, "The line").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<NewQueue>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewItem {
    pub id: String,
    pub stock: u32,
}

/// A sale's own limits for its purchases; what is absent is the gateway's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    /// Purchases per buyer in this sale: `10/s`, `600/min burst 50`, or `off`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "1/s burst 3")]
    pub per_buyer: Option<RateLimit>,
    /// Purchases per client address in this sale, written the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "off")]
    pub per_ip: Option<RateLimit>,
}

impl RateLimits {
    pub fn is_default(&self) -> bool {
        self.per_buyer.is_none() && self.per_ip.is_none()
    }
}

/// `queue` in the body of `POST /api/sales`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewQueue {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admit: Option<Admit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<LineOrder>,
    /// When the line opens (default: when the sale is created); joins before it are
    /// refused `not_open`. It may open before the sale starts: those tickets wait for
    /// the start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub opens_at: Option<DateTime<Utc>>,
    /// Decisions per second at most, e.g. `500/s`; `off` (the default): as fast as the
    /// gate decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "500/s")]
    pub rate: Option<RateLimit>,
    /// Seconds a ticket may wait in the line while the sale is open (from its join or
    /// the sale's start, whichever is later); past it the ticket ends `timeout`.
    /// Default 600, at most 86,400.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wait_s: Option<u32>,
}

/// Body of `POST /api/sales/{id}/stock`: units added to one item's stock.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddStock {
    /// The item; may be left out when the sale has one item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<String>,
    /// Units added, at least 1.
    pub units: u32,
}

/// Body of `POST /api/sales/{id}/purchase` and of a join of a sale's line.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurchaseRequest {
    /// The buyer when buyer tokens are off; with them on, the token names the buyer and
    /// the body must not (empty here means "not given").
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantity: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items: Option<BTreeMap<String, u32>>,
}

fn millis(at: Option<DateTime<Utc>>) -> Option<domain::Millis> {
    at.map(|t| t.timestamp_millis())
}

impl From<NewSale> for domain::NewSale {
    fn from(new: NewSale) -> Self {
        domain::NewSale {
            name: new.name,
            stock: new.stock,
            items: new.items.map(|items| {
                (items.into_iter())
                    .map(|i| Item {
                        id: i.id,
                        stock: i.stock,
                    })
                    .collect()
            }),
            per_user_limit: new.per_user_limit,
            starts_at: millis(new.starts_at),
            ends_at: millis(new.ends_at),
            payment_window: new.payment_window,
            rate_limits: new.rate_limits.map(SaleRateLimits::from),
            shards: new.shards,
            queue: new.queue.map(domain::NewQueue::from),
        }
    }
}

impl From<RateLimits> for SaleRateLimits {
    fn from(limits: RateLimits) -> Self {
        SaleRateLimits {
            per_buyer: limits.per_buyer,
            per_ip: limits.per_ip,
        }
    }
}

impl From<SaleRateLimits> for RateLimits {
    fn from(limits: SaleRateLimits) -> Self {
        RateLimits {
            per_buyer: limits.per_buyer,
            per_ip: limits.per_ip,
        }
    }
}

impl From<NewQueue> for domain::NewQueue {
    fn from(queue: NewQueue) -> Self {
        domain::NewQueue {
            admit: queue.admit,
            order: queue.order,
            opens_at: millis(queue.opens_at),
            rate: queue.rate,
            max_wait_s: queue.max_wait_s,
        }
    }
}

impl From<AddStock> for domain::AddStock {
    fn from(add: AddStock) -> Self {
        domain::AddStock {
            item: add.item,
            units: add.units,
        }
    }
}

impl From<PurchaseRequest> for domain::PurchaseRequest {
    fn from(request: PurchaseRequest) -> Self {
        domain::PurchaseRequest {
            user_id: request.user_id,
            quantity: request.quantity,
            items: request.items,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire's sale becomes the domain's, field for field; unknown fields are
    /// refused on the wire.
    #[test]
    fn a_new_sale_from_the_wire() {
        let wire: NewSale = serde_json::from_value(serde_json::json!({
            "name": "drop",
            "items": [{"id": "A1", "stock": 2}],
            "per_user_limit": 2,
            "starts_at": "2026-12-05T10:00:00Z",
            "rate_limits": {"per_buyer": "1/s"},
            "queue": {"rate": "500/s", "opens_at": "2026-12-05T09:00:00Z"},
        }))
        .unwrap();
        let new = domain::NewSale::from(wire);
        assert_eq!(
            new.items.unwrap()[0],
            Item {
                id: "A1".into(),
                stock: 2
            }
        );
        assert_eq!(new.starts_at, Some(1_796_464_800_000));
        assert_eq!(new.per_user_limit, Some(2));
        assert_eq!(
            new.rate_limits.unwrap().per_buyer.unwrap().to_string(),
            "1/s"
        );
        let queue = new.queue.unwrap();
        assert_eq!(queue.opens_at, Some(1_796_461_200_000));
        assert_eq!(queue.rate.unwrap().to_string(), "500/s");
        let unknown = serde_json::from_value::<NewSale>(serde_json::json!({
            "name": "drop", "stock": 1, "colour": "red"
        }));
        assert!(unknown.is_err());
        assert!(serde_json::from_str::<RateLimits>(r#"{"per_user": "1/s"}"#).is_err());
        // The waiting room's `admit` is not built: refused, not ignored.
        assert!(serde_json::from_str::<NewQueue>(r#"{"admit": "visit"}"#).is_err());
    }
}
