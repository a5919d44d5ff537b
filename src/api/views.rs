//! What the API shows of sales and orders. The same types are read back by the typed
//! client (`crate::client`).

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat};
use serde::{Deserialize, Serialize};

use super::requests::RateLimits;
use crate::domain::{
    Admit, LineOrder, Millis, Order, OrderEvent, OrderStatus, QueueSettings, RateLimit, SaleStatus,
    TicketStatus, now_millis,
};
use crate::engine::SaleState;

pub fn rfc3339(ms: Millis) -> String {
    DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ItemView {
    pub id: String,
    pub stock: u32,
    pub remaining: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SaleView {
    pub id: String,
    pub name: String,
    pub status: SaleStatus,
    pub stock: u64,
    pub remaining: u64,
    pub per_user_limit: u32,
    pub starts_at: String,
    pub ends_at: Option<String>,
    pub payment_window: u32,
    pub created_at: String,
    pub items: Vec<ItemView>,
    /// The sale's own purchase rate limits, when it has any.
    #[serde(default, skip_serializing_if = "RateLimits::is_default")]
    pub rate_limits: RateLimits,
    /// Sub-stocks on the Redis gate (1: one; the local gate ignores it).
    pub shards: u32,
    /// The sale's line, when it is bought through one (`POST /api/sales/{id}/queue`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueView>,
}

/// A sale's line settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QueueView {
    pub admit: Admit,
    pub order: LineOrder,
    pub opens_at: String,
    /// Decisions per second at most (`off`: as fast as the gate decides).
    #[schema(value_type = String, example = "500/s")]
    pub rate: RateLimit,
    pub max_wait_s: u32,
}

impl From<&QueueSettings> for QueueView {
    fn from(queue: &QueueSettings) -> Self {
        QueueView {
            admit: queue.admit,
            order: queue.order,
            opens_at: rfc3339(queue.opens_at),
            rate: queue.rate,
            max_wait_s: queue.max_wait_s,
        }
    }
}

impl From<SaleState> for SaleView {
    fn from(state: SaleState) -> Self {
        let sale = &state.sale;
        let remaining: u64 = state.remaining.iter().map(|&r| r as u64).sum();
        SaleView {
            id: sale.id.clone(),
            name: sale.name.clone(),
            status: sale.status(now_millis(), remaining),
            stock: sale.total_stock(),
            remaining,
            per_user_limit: sale.per_user_limit,
            starts_at: rfc3339(sale.starts_at),
            ends_at: sale.ends_at.map(rfc3339),
            payment_window: sale.payment_window,
            created_at: rfc3339(sale.created_at),
            items: sale
                .items
                .iter()
                .zip(&state.remaining)
                .map(|(item, &remaining)| ItemView {
                    id: item.id.clone(),
                    stock: item.stock,
                    remaining,
                })
                .collect(),
            rate_limits: sale.rate_limits.into(),
            shards: sale.shards,
            queue: sale.queue.as_ref().map(QueueView::from),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderView {
    pub id: String,
    pub sale_id: String,
    pub user_id: String,
    pub items: BTreeMap<String, u32>,
    pub quantity: u32,
    pub status: OrderStatus,
    pub created_at: String,
    pub expires_at: Option<String>,
}

impl From<&Order> for OrderView {
    fn from(order: &Order) -> Self {
        OrderView {
            id: order.id.clone(),
            sale_id: order.sale_id.clone(),
            user_id: order.user_id.clone(),
            items: order.items.clone(),
            quantity: order.total_units(),
            status: order.status,
            created_at: rfc3339(order.created_at),
            expires_at: order.expires_at.map(rfc3339),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HistoryEntry {
    pub status: OrderStatus,
    pub at: String,
}

/// An order with the history of its status: placed, then each change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderDetail {
    #[serde(flatten)]
    pub order: OrderView,
    pub history: Vec<HistoryEntry>,
    /// Why the order failed after it was accepted (status `failed`): the store refused
    /// it, and its units went back on sale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

impl OrderDetail {
    pub fn new(
        order: &Order,
        changes: Vec<(OrderStatus, Millis)>,
        failure: Option<String>,
    ) -> Self {
        let placed = if order.expires_at.is_some() {
            OrderStatus::Pending
        } else {
            OrderStatus::Paid
        };
        let history = std::iter::once((placed, order.created_at))
            .chain(changes)
            .map(|(status, at)| HistoryEntry {
                status,
                at: rfc3339(at),
            })
            .collect();
        OrderDetail {
            order: OrderView::from(order),
            history,
            failure,
        }
    }
}

/// A refusal as a ticket shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RefusalView {
    pub code: String,
    pub detail: String,
}

/// A ticket in a sale's line, as its holder sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TicketView {
    pub ticket: String,
    pub sale_id: String,
    /// The ticket's number in its line (1: the first to join); the line is decided in
    /// this order.
    pub place: u64,
    pub status: TicketStatus,
    /// While waiting: 1 is the next to be decided. Never rises.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    /// While waiting: seconds until its turn, never rising; absent until the line has a
    /// rate (set, or measured from its decisions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_s: Option<u64>,
    /// The nonce the ticket id was made with (`hex SHA-256(sale_id/buyer/nonce)`).
    pub nonce: String,
    pub joined_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<String>,
    /// Once decided with an order: the order, as the purchase route returns it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<OrderView>,
    /// Once decided without an order, or closed: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<RefusalView>,
}

/// `GET /api/sales/{id}/queue`: the line's public figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LineView {
    pub sale_id: String,
    pub waiting: u64,
    pub decided: u64,
    pub timed_out: u64,
    pub closed: u64,
    #[schema(value_type = String, example = "500/s")]
    pub rate: RateLimit,
    /// Decisions per second over the last seconds, when there were any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_per_s: Option<f64>,
    pub admit: Admit,
    pub order: LineOrder,
    pub opens_at: String,
    pub max_wait_s: u32,
}

/// A status change of one of the caller's orders: the data of the live stream's `order`
/// event (the bus carries the same fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = OrderEvent)]
pub struct OrderEventView {
    /// The event format's version (1).
    pub v: u32,
    pub order_id: String,
    pub sale_id: String,
    pub user_id: String,
    pub status: OrderStatus,
    /// When, in milliseconds since the Unix epoch.
    pub at: Millis,
}

impl From<&OrderEvent> for OrderEventView {
    fn from(event: &OrderEvent) -> Self {
        OrderEventView {
            v: event.v,
            order_id: event.order_id.clone(),
            sale_id: event.sale_id.clone(),
            user_id: event.user_id.clone(),
            status: event.status,
            at: event.at,
        }
    }
}
