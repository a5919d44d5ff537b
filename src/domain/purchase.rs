use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::sale::valid_id;
use super::{Millis, Sale};

/// Units taken from each item of a sale, as (item index, units), sorted by index.
pub type Units = Vec<(usize, u32)>;

/// A purchase as the buyer asks for it: checked against its sale by
/// `validate_purchase`.
#[derive(Debug, Clone, Default)]
pub struct PurchaseRequest {
    /// The buyer (empty: not given; the caller's credential names them).
    pub user_id: String,
    /// Units of a one-item sale; or `items`.
    pub quantity: Option<u32>,
    pub items: Option<BTreeMap<String, u32>>,
}

/// A purchase request checked against its sale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidPurchase {
    pub user_id: String,
    pub units: Units,
    /// Canonical form of what is bought; an idempotency key reused with another
    /// fingerprint is refused.
    pub fingerprint: String,
}

impl ValidPurchase {
    pub fn total_units(&self) -> u32 {
        self.units.iter().map(|(_, u)| u).sum()
    }

    /// The purchase a fingerprint stands for (`item:units,…`, as `validate_purchase`
    /// writes it), so that a gate can keep the short fingerprint instead of the order.
    pub fn from_fingerprint(sale: &Sale, user_id: &str, fingerprint: &str) -> Option<Self> {
        let units = fingerprint
            .split(',')
            .map(|part| {
                let (id, n) = part.rsplit_once(':')?;
                Some((sale.item_index(id)?, n.parse().ok()?))
            })
            .collect::<Option<Units>>()?;
        Some(ValidPurchase {
            user_id: user_id.to_string(),
            units,
            fingerprint: fingerprint.to_string(),
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PurchaseError {
    #[error("{0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> PurchaseError {
    PurchaseError::Invalid(msg.into())
}

pub fn valid_user_id(user_id: &str) -> bool {
    !user_id.is_empty() && user_id.len() <= 128 && !user_id.chars().any(char::is_control)
}

/// Checks a purchase against the sale's items and per-user limit (the limit across
/// earlier purchases is the gate's business).
pub fn validate_purchase(
    sale: &Sale,
    req: PurchaseRequest,
) -> Result<ValidPurchase, PurchaseError> {
    if !valid_user_id(&req.user_id) {
        return Err(invalid(
            "user_id must be 1 to 128 characters, no control characters",
        ));
    }
    let mut units: Units = match (req.quantity, req.items) {
        (Some(_), Some(_)) => return Err(invalid("give either `quantity` or `items`, not both")),
        (quantity, None) if sale.items.len() == 1 => vec![(0, quantity.unwrap_or(1))],
        (_, None) => return Err(invalid("this sale has several items: give `items`")),
        (None, Some(map)) => {
            if map.is_empty() {
                return Err(invalid("`items` is empty"));
            }
            let mut units = Vec::with_capacity(map.len());
            for (id, n) in map {
                if !valid_id(&id) {
                    return Err(invalid("item ids are 1 to 64 characters of [A-Za-z0-9._-]"));
                }
                let index = sale
                    .item_index(&id)
                    .ok_or_else(|| invalid(format!("the sale has no item {id:?}")))?;
                units.push((index, n));
            }
            units
        }
    };
    units.sort_unstable();
    let mut total: u64 = 0;
    for &(_, n) in &units {
        if n == 0 {
            return Err(invalid("quantities must be at least 1"));
        }
        total += n as u64;
    }
    if total > sale.per_user_limit as u64 {
        return Err(invalid(format!(
            "at most {} units per buyer in this sale",
            sale.per_user_limit
        )));
    }
    let fingerprint = units
        .iter()
        .map(|&(i, n)| format!("{}:{n}", sale.items[i].id))
        .collect::<Vec<_>>()
        .join(",");
    Ok(ValidPurchase {
        user_id: req.user_id,
        units,
        fingerprint,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Pending,
    Paid,
    Cancelled,
    Expired,
    Failed,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Paid => "paid",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Expired => "expired",
            OrderStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => OrderStatus::Pending,
            "paid" => OrderStatus::Paid,
            "cancelled" => OrderStatus::Cancelled,
            "expired" => OrderStatus::Expired,
            "failed" => OrderStatus::Failed,
            _ => return None,
        })
    }

    /// Whether moving to this status gives the units back.
    pub fn releases_stock(self) -> bool {
        matches!(
            self,
            OrderStatus::Cancelled | OrderStatus::Expired | OrderStatus::Failed
        )
    }

    /// Whether the order's units count as sold (held or paid).
    pub fn holds_stock(self) -> bool {
        matches!(self, OrderStatus::Pending | OrderStatus::Paid)
    }
}

/// A status change of an order (docs/architecture.md §1.2: every status change is an event).
/// Also the data of the live stream's `order` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderEvent {
    /// The event format's version (1).
    pub v: u32,
    pub order_id: String,
    pub sale_id: String,
    pub user_id: String,
    pub status: OrderStatus,
    /// When, in milliseconds since the Unix epoch.
    pub at: Millis,
}

impl OrderEvent {
    pub fn of(order: &Order, at: Millis) -> OrderEvent {
        OrderEvent {
            v: 1,
            order_id: order.id.clone(),
            sale_id: order.sale_id.clone(),
            user_id: order.user_id.clone(),
            status: order.status,
            at,
        }
    }
}

/// An order: the units one buyer reserved in one purchase. Versioned JSON on the bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub id: String,
    pub sale_id: String,
    pub user_id: String,
    pub items: BTreeMap<String, u32>,
    pub status: OrderStatus,
    pub created_at: Millis,
    /// When an unpaid order expires (None when paid at once).
    pub expires_at: Option<Millis>,
    pub idempotency_key: Option<String>,
    pub fingerprint: String,
}

impl Order {
    pub fn new(
        id: String,
        sale: &Sale,
        purchase: &ValidPurchase,
        idempotency_key: Option<String>,
        now: Millis,
    ) -> Order {
        let (status, expires_at) = if sale.payment_window == 0 {
            (OrderStatus::Paid, None)
        } else {
            (
                OrderStatus::Pending,
                Some(now + sale.payment_window as i64 * 1000),
            )
        };
        Order {
            id,
            sale_id: sale.id.clone(),
            user_id: purchase.user_id.clone(),
            items: purchase
                .units
                .iter()
                .map(|&(i, n)| (sale.items[i].id.clone(), n))
                .collect(),
            status,
            created_at: now,
            expires_at,
            idempotency_key,
            fingerprint: purchase.fingerprint.clone(),
        }
    }

    pub fn total_units(&self) -> u32 {
        self.items.values().sum()
    }

    /// Whether an unpaid order's payment window has passed at `now`.
    pub fn is_overdue(&self, now: Millis) -> bool {
        self.status == OrderStatus::Pending && self.expires_at.is_some_and(|t| now >= t)
    }

    /// The order's units as item indices of `sale` (items unknown to the sale are skipped).
    pub fn units(&self, sale: &Sale) -> Units {
        let mut units: Units = self
            .items
            .iter()
            .filter_map(|(id, &n)| sale.item_index(id).map(|i| (i, n)))
            .collect();
        units.sort_unstable();
        units
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Sale;

    fn sale(items: &[(&str, u32)], limit: u32) -> Sale {
        crate::testkit::sale()
            .id("s")
            .items(items)
            .limit(limit)
            .build()
    }

    fn req(user: &str, quantity: Option<u32>, items: &[(&str, u32)]) -> PurchaseRequest {
        PurchaseRequest {
            user_id: user.into(),
            quantity,
            items: (!items.is_empty())
                .then(|| items.iter().map(|(k, v)| (k.to_string(), *v)).collect()),
        }
    }

    #[test]
    fn a_fingerprint_gives_back_its_purchase() {
        let s = sale(&[("red", 5), ("blue", 5), ("a.b", 5)], 9);
        for items in [
            &[("blue", 2)][..],
            &[("red", 1), ("a.b", 3)],
            &[("blue", 1), ("red", 4)],
        ] {
            let p = validate_purchase(&s, req("u", None, items)).unwrap();
            assert_eq!(
                ValidPurchase::from_fingerprint(&s, "u", &p.fingerprint),
                Some(p)
            );
        }
        assert_eq!(ValidPurchase::from_fingerprint(&s, "u", "green:1"), None);
        assert_eq!(ValidPurchase::from_fingerprint(&s, "u", "red:x"), None);
    }

    #[test]
    fn quantity_defaults_to_one() {
        let p = validate_purchase(&sale(&[("default", 5)], 1), req("u", None, &[])).unwrap();
        assert_eq!(p.units, vec![(0, 1)]);
        assert_eq!(p.fingerprint, "default:1");
    }

    #[test]
    fn quantity_bounds() {
        let s = sale(&[("default", 5)], 2);
        assert!(validate_purchase(&s, req("u", Some(0), &[])).is_err());
        assert!(validate_purchase(&s, req("u", Some(3), &[])).is_err());
        assert!(validate_purchase(&s, req("u", Some(2), &[])).is_ok());
        assert!(validate_purchase(&s, req("", Some(1), &[])).is_err());
    }

    #[test]
    fn items_map_to_indices_and_count_against_limit() {
        let s = sale(&[("A1", 5), ("B7", 5)], 3);
        let p = validate_purchase(&s, req("u", None, &[("B7", 2), ("A1", 1)])).unwrap();
        assert_eq!(p.units, vec![(0, 1), (1, 2)]);
        assert_eq!(p.fingerprint, "A1:1,B7:2");
        assert!(validate_purchase(&s, req("u", None, &[("B7", 3), ("A1", 1)])).is_err());
        assert!(validate_purchase(&s, req("u", None, &[("C", 1)])).is_err());
        assert!(validate_purchase(&s, req("u", Some(1), &[])).is_err());
    }
}
