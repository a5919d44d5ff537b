//! What the API shows of sales and orders. The same types are read back by the typed
//! client (`crate::client`).

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat};
use serde::{Deserialize, Serialize};

use crate::domain::{Millis, Order, OrderStatus, SaleRateLimits, SaleStatus, now_millis};
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
    #[serde(default, skip_serializing_if = "SaleRateLimits::is_default")]
    pub rate_limits: SaleRateLimits,
    /// Sub-stocks on the Redis gate (1: one; the local gate ignores it).
    pub shards: u32,
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
            rate_limits: sale.rate_limits,
            shards: sale.shards,
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
