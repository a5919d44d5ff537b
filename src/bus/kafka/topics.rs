//! The Kafka topics of docs/architecture.md §4, behind an optional prefix (one cluster can then
//! hold several independent deployments, or tests), and their creation.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

use super::KafkaSettings;
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

/// Creates the topics of docs/architecture.md §4 when they are missing, with the replication the
/// settings ask for (`kafka_replication_factor`; by default 3, or the number of brokers
/// when fewer) and `min.insync.replicas`, so that `acks=all` means that many copies.
/// Topics that exist are left as they are.
pub async fn ensure_topics(settings: &KafkaSettings) -> Result<(), BusError> {
    let timeout = settings.timeout.max(Duration::from_secs(5));
    let replication = match settings.replication_factor {
        Some(factor) => factor,
        None => default_replication(broker_count(&settings.brokers, timeout).await?),
    };
    let min_insync = settings
        .min_insync_replicas
        .unwrap_or_else(|| default_min_insync(replication));
    if replication == 1 {
        tracing::warn!(
            "Kafka topics with replication factor 1: an acknowledged order is on one \
             broker's disk only; set kafka_replication_factor to 3 on a real cluster"
        );
    }
    let admin: AdminClient<DefaultClientContext> = client_config(&settings.brokers)
        .create()
        .map_err(|e| BusError::NotStored(format!("kafka admin: {e}")))?;
    let min_insync_text = min_insync.to_string();
    let topics: Vec<NewTopic> = settings
        .topics
        .all()
        .into_iter()
        .map(|name| {
            NewTopic::new(
                name,
                settings.partitions,
                TopicReplication::Fixed(replication),
            )
            .set("min.insync.replicas", &min_insync_text)
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(timeout));
    let results = admin
        .create_topics(&topics, &options)
        .await
        .map_err(|e| BusError::NotStored(format!("creating topics: {e}")))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(BusError::NotStored(format!(
                    "creating topic {topic} (replication factor {replication}): {code}"
                )));
            }
        }
    }
    Ok(())
}

/// Three copies, or one per broker when there are fewer.
pub fn default_replication(brokers: usize) -> i32 {
    brokers.clamp(1, 3) as i32
}

/// One copy may be lost without refusing writes: replication − 1, at least 1.
pub fn default_min_insync(replication: i32) -> i32 {
    (replication - 1).max(1)
}

async fn broker_count(brokers: &str, timeout: Duration) -> Result<usize, BusError> {
    let brokers = brokers.to_string();
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = client_config(&brokers)
            .create()
            .map_err(|e| BusError::NotStored(format!("kafka client: {e}")))?;
        let metadata = client
            .fetch_metadata(None, timeout)
            .map_err(|e| BusError::NotStored(format!("kafka metadata: {e}")))?;
        Ok(metadata.brokers().len())
    })
    .await
    .map_err(|e| BusError::NotStored(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_defaults_to_three_or_every_broker() {
        assert_eq!(default_replication(1), 1);
        assert_eq!(default_replication(2), 2);
        assert_eq!(default_replication(5), 3);
        assert_eq!(default_min_insync(3), 2);
        assert_eq!(default_min_insync(1), 1);
    }
}
