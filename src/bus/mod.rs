//! The order bus carries a reserved order to the store. `publish` resolves only once the
//! order is durable: in embedded mode when the store's transaction holding it committed.

mod memory;

use async_trait::async_trait;

pub use memory::{Envelope, MemoryBus};

use crate::domain::Order;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The bus is at capacity: the request is shed instead of queued without bound.
    #[error("order bus is full")]
    Full,
    /// The order was definitely not stored.
    #[error("order not stored: {0}")]
    NotStored(String),
    /// Nobody can tell whether the order was stored (e.g. the writer vanished).
    #[error("order outcome unknown: {0}")]
    Unknown(String),
}

impl BusError {
    /// Whether the order is known not to be stored, so its reservation may be released.
    pub fn is_definite(&self) -> bool {
        !matches!(self, BusError::Unknown(_))
    }
}

#[async_trait]
pub trait OrderBus: Send + Sync + 'static {
    async fn publish(&self, order: &Order) -> Result<(), BusError>;
}
