//! What travels on the Kafka topics: versioned JSON. An order message carries the order
//! (its id is the dedupe key); a dead letter carries a message the worker could not
//! store, as it was read, with the reason.

use serde::{Deserialize, Serialize};

use crate::domain::Order;

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
    }
}
