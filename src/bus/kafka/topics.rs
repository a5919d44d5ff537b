//! The Kafka topics of DESIGN.md §4, behind an optional prefix (one cluster can then
//! hold several independent deployments, or tests), and their creation.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use super::producer::client_config;
use crate::bus::BusError;

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

/// Creates the topics of DESIGN.md §4 when they are missing.
pub async fn ensure_topics(
    brokers: &str,
    topics: &Topics,
    partitions: i32,
    timeout: Duration,
) -> Result<(), BusError> {
    let admin: AdminClient<DefaultClientContext> = client_config(brokers)
        .create()
        .map_err(|e| BusError::NotStored(format!("kafka admin: {e}")))?;
    let topics: Vec<NewTopic> = topics
        .all()
        .into_iter()
        .map(|name| NewTopic::new(name, partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(timeout.max(Duration::from_secs(5))));
    let results = admin
        .create_topics(&topics, &options)
        .await
        .map_err(|e| BusError::NotStored(format!("creating topics: {e}")))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(BusError::NotStored(format!(
                    "creating topic {topic}: {code}"
                )));
            }
        }
    }
    Ok(())
}

