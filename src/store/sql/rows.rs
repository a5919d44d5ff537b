//! Rows of the orders table back into orders.

use std::collections::BTreeMap;

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::domain::{Order, OrderStatus};
use crate::store::StoreError;

/// The columns `order_from_row` reads, for `SELECT` statements.
macro_rules! order_columns {
    () => {
        "id, sale_id, user_id, items, status, created_at, expires_at, idempotency_key, fingerprint"
    };
}
pub(super) use order_columns;

pub(super) fn order_from_row(row: &AnyRow) -> Result<Order, StoreError> {
    let items: String = row.try_get("items")?;
    let items: BTreeMap<String, u32> =
        serde_json::from_str(&items).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let status: String = row.try_get("status")?;
    Ok(Order {
        id: row.try_get("id")?,
        sale_id: row.try_get("sale_id")?,
        user_id: row.try_get("user_id")?,
        items,
        status: OrderStatus::parse(&status).ok_or(StoreError::Corrupt(status))?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        idempotency_key: row.try_get("idempotency_key")?,
        fingerprint: row.try_get("fingerprint")?,
    })
}

pub(super) fn u32_column(row: &AnyRow, name: &str) -> Result<u32, StoreError> {
    let value: i64 = row.try_get(name)?;
    u32::try_from(value).map_err(|_| StoreError::Corrupt(format!("{name} = {value}")))
}
