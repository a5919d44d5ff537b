//! Kafka order bus (librdkafka through rdkafka): an idempotent producer with `acks=all`.
//! `publish` resolves with the delivery report, so a 202 means the order is in the log of
//! every in-sync replica. A failed delivery says whether the message may have been
//! written (librdkafka's persistence status), so that only orders surely not in the log
//! have their reservation released.
//!
//! After a failed delivery the producer is replaced by a fresh one (a new producer id):
//! an idempotent producer whose broker restarted keeps its old id and sequence numbers,
//! which a restarted broker may refuse (tansu 0.6's SQLite engine even fails on them).
//!
//! `producer.rs` (client and producer settings, delivery reports), `topics.rs`,
//! `messages.rs` (order messages and dead letters), `positions.rs` (reading a topic back
//! after a group's offsets). The consumer side is `crate::worker::kafka`.

mod messages;
mod positions;
mod producer;
mod topics;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::RwLock;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, Producer, PurgeConfig};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::oneshot;

pub use messages::{DeadLetter, OrderMessage};
pub use positions::{Read, consumer_lag, read_after_committed};
pub use producer::{client_config, producer_config};
pub use topics::{Topics, ensure_topics};

use super::{BusError, OrderBus};
use crate::domain::{Order, OrderEvent};
use producer::{Delivered, OrderProducer, new_producer};

/// Where the Kafka bus is and how its topics and consumer group are named: what the
/// gateways, the workers and `check` / `dlq` share.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// `host:port[,host:port]`.
    pub brokers: String,
    pub topics: Topics,
    /// The workers' consumer group: the bus is drained when it has no lag.
    pub worker_group: String,
    /// Partitions of the topics when flashsale creates them.
    pub partitions: i32,
    /// Copies of each message when flashsale creates the topics (`None`: 3, or the
    /// number of brokers when fewer).
    pub replication_factor: Option<i32>,
    /// `min.insync.replicas` of the topics it creates (`None`: replication − 1, ≥ 1).
    pub min_insync_replicas: Option<i32>,
    /// The longest wait for the broker in admin calls.
    pub timeout: Duration,
    /// How long the producer keeps trying to deliver an order (its retries included),
    /// longer than a buyer waits: an order whose delivery outlives its buyer's wait is
    /// still stored or released, and its key answers the retry.
    pub delivery_timeout: Duration,
}

impl KafkaSettings {
    /// Messages of the orders topic the workers have not stored yet.
    pub async fn consumer_lag(&self) -> Result<i64, BusError> {
        let (brokers, group, topic) = (
            self.brokers.clone(),
            self.worker_group.clone(),
            self.topics.orders.clone(),
        );
        tokio::task::spawn_blocking(move || consumer_lag(&brokers, &group, &topic))
            .await
            .map_err(|e| BusError::Unknown(e.to_string()))?
    }
}

pub struct KafkaBus {
    producer: RwLock<Arc<OrderProducer>>,
    settings: KafkaSettings,
}

impl KafkaBus {
    /// Creates the topics when they are missing and a producer.
    pub async fn connect(settings: KafkaSettings) -> Result<KafkaBus, BusError> {
        ensure_topics(&settings).await?;
        let producer = new_producer(&settings.brokers, settings.delivery_timeout)?;
        Ok(KafkaBus {
            producer: RwLock::new(Arc::new(producer)),
            settings,
        })
    }

    /// Swaps in a fresh producer after a failure of `failed`, unless another request
    /// did it already. The old one's queue is purged: those orders fail at once.
    fn replace_producer(&self, failed: &Arc<OrderProducer>) {
        let mut current = self.producer.write();
        if !Arc::ptr_eq(&current, failed) {
            return;
        }
        match new_producer(&self.settings.brokers, self.settings.delivery_timeout) {
            Ok(fresh) => {
                let old = std::mem::replace(&mut *current, Arc::new(fresh));
                old.purge(PurgeConfig::default().queue());
                tracing::warn!("kafka producer replaced after a failed delivery");
            }
            Err(e) => tracing::error!(error = %e, "could not replace the kafka producer"),
        }
    }
}

#[async_trait]
impl OrderBus for KafkaBus {
    async fn publish(&self, order: &Order) -> Result<(), BusError> {
        let (reply, delivered) = oneshot::channel();
        let payload = OrderMessage::encode(order);
        let key = OrderMessage::key(order);
        let mut record = BaseRecord::with_opaque_to(&self.settings.topics.orders, Box::new(reply))
            .key(&key)
            .payload(&payload);
        // The purchase's trace goes on to the worker that stores the order.
        if let Some(parent) = crate::observe::trace::traceparent() {
            record = record.headers(rdkafka::message::OwnedHeaders::new().insert(
                rdkafka::message::Header {
                    key: "traceparent",
                    value: Some(&parent),
                },
            ));
        }
        let producer = self.producer.read().clone();
        if let Err((error, _)) = producer.send(record) {
            // Never handed to librdkafka (e.g. its queue is full): surely not written.
            return Err(match error {
                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => BusError::Full,
                other => BusError::NotStored(other.to_string()),
            });
        }
        let outcome = match delivered.await {
            Ok(Delivered::Persisted) => return Ok(()),
            Ok(Delivered::NotPersisted(reason)) => BusError::NotStored(reason),
            Ok(Delivered::PossiblyPersisted(reason)) => BusError::Unknown(reason),
            Err(_) => BusError::Unknown("delivery report lost".into()),
        };
        self.replace_producer(&producer);
        Err(outcome)
    }

    /// Reads the orders topic after the workers' committed offsets: what is there is on
    /// its way to the store. (What is still being delivered is not: callers wait out the
    /// delivery timeout first when that matters.)
    async fn undelivered(
        &self,
        sale_id: &str,
        _deadline: Duration,
    ) -> Result<Vec<Order>, BusError> {
        let (brokers, group, topic) = (
            self.settings.brokers.clone(),
            self.settings.worker_group.clone(),
            self.settings.topics.orders.clone(),
        );
        let (messages, _) = tokio::task::spawn_blocking(move || {
            read_after_committed(&brokers, &topic, &group, false)
        })
        .await
        .map_err(|e| BusError::Unknown(e.to_string()))??;
        Ok(messages
            .iter()
            .filter_map(|m| OrderMessage::decode(&m.payload).ok())
            .filter(|o| o.sale_id == sale_id)
            .collect())
    }

    async fn publish_event(&self, event: &OrderEvent) -> Result<(), BusError> {
        let (reply, delivered) = oneshot::channel();
        let payload = serde_json::to_vec(event).expect("events serialize");
        let record = BaseRecord::with_opaque_to(&self.settings.topics.events, Box::new(reply))
            .key(&event.order_id)
            .payload(&payload);
        let producer = self.producer.read().clone();
        producer
            .send(record)
            .map_err(|(e, _)| BusError::NotStored(e.to_string()))?;
        match delivered.await {
            Ok(Delivered::Persisted) => Ok(()),
            Ok(Delivered::NotPersisted(reason)) => Err(BusError::NotStored(reason)),
            Ok(Delivered::PossiblyPersisted(reason)) => Err(BusError::Unknown(reason)),
            Err(_) => Err(BusError::Unknown("delivery report lost".into())),
        }
    }
}

impl Drop for KafkaBus {
    fn drop(&mut self) {
        let _ = self.producer.read().flush(Duration::from_secs(5));
    }
}
