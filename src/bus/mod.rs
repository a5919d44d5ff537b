//! The order bus carries a reserved order to the store. `publish` resolves only once the
//! order is durable: in embedded mode when the store's transaction holding it committed.

#[cfg(feature = "kafka")]
pub mod kafka;
mod memory;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use memory::{Envelope, MemoryBus};

use crate::domain::{Order, OrderEvent};

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
    /// Resolves once the order is durable.
    async fn publish(&self, order: &Order) -> Result<(), BusError>;

    /// Orders of a sale published on this bus so far and not yet in the store (they
    /// will be): with the store's, they are what the gate must hold when rebuilt.
    /// `Err` if that cannot be known within `deadline`.
    async fn undelivered(
        &self,
        sale_id: &str,
        deadline: std::time::Duration,
    ) -> Result<Vec<Order>, BusError>;

    /// Publishes a status change for other processes (the in-process bus has no one to
    /// tell: the engine's own broadcast covers it).
    async fn publish_event(&self, _event: &OrderEvent) -> Result<(), BusError> {
        Ok(())
    }
}

/// The Kafka topics of DESIGN.md §4, behind an optional prefix (one cluster can then
/// hold several independent deployments, or tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// Placed orders (key: sale id + user id).
    pub orders: String,
    /// Order status changes.
    pub events: String,
    /// Orders the worker could not store, with the reason.
    pub dlq: String,
}

impl Topics {
    pub fn with_prefix(prefix: &str) -> Topics {
        Topics {
            orders: format!("{prefix}flashsale.orders"),
            events: format!("{prefix}flashsale.order-events"),
            dlq: format!("{prefix}flashsale.orders.dlq"),
        }
    }

    pub fn all(&self) -> [&str; 3] {
        [&self.orders, &self.events, &self.dlq]
    }
}

/// An order on the bus: versioned JSON; the order id is the dedupe key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderMessage {
    pub v: u32,
    pub order: Order,
}

/// A message the worker could not store, as it goes to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub v: u32,
    pub reason: String,
    /// The message as it was read (it may not even be JSON).
    pub payload: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl OrderMessage {
    pub const VERSION: u32 = 1;

    pub fn encode(order: &Order) -> Vec<u8> {
        serde_json::to_vec(&OrderMessage {
            v: Self::VERSION,
            order: order.clone(),
        })
        .expect("orders serialize")
    }

    pub fn decode(bytes: &[u8]) -> Result<Order, String> {
        let message: OrderMessage =
            serde_json::from_slice(bytes).map_err(|e| format!("undecodable order message: {e}"))?;
        if message.v != Self::VERSION {
            return Err(format!("unsupported order message version {}", message.v));
        }
        Ok(message.order)
    }

    /// Key of the message: one buyer's orders of one sale stay in one partition.
    pub fn key(order: &Order) -> String {
        format!("{}/{}", order.sale_id, order.user_id)
    }
}

/// Opens the bus named by `url`. `memory` is handled by the server (it needs the
/// writer); here: `kafka://host:port[,host:port]`.
pub fn kafka_brokers(url: &str) -> Option<&str> {
    url.strip_prefix("kafka://")
        .map(|rest| rest.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::OrderStatus;

    #[test]
    fn order_messages_are_versioned_json() {
        let order = Order {
            id: "o1".into(),
            sale_id: "s".into(),
            user_id: "u".into(),
            items: [("default".to_string(), 1)].into_iter().collect(),
            status: OrderStatus::Paid,
            created_at: 7,
            expires_at: None,
            idempotency_key: Some("k".into()),
            fingerprint: "default:1".into(),
        };
        let bytes = OrderMessage::encode(&order);
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["v"], 1);
        assert_eq!(json["order"]["id"], "o1");
        assert_eq!(OrderMessage::decode(&bytes), Ok(order));
        assert!(OrderMessage::decode(b"not json").is_err());
        assert!(OrderMessage::decode(br#"{"v": 2, "order": {}}"#).is_err());
        assert_eq!(kafka_brokers("kafka://a:1,b:2"), Some("a:1,b:2"));
    }
}
