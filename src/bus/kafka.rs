//! Kafka order bus (librdkafka through rdkafka): an idempotent producer with `acks=all`.
//! `publish` resolves with the delivery report, so a 202 means the order is in the log of
//! every in-sync replica. A failed delivery says whether the message may have been
//! written (librdkafka's persistence status), so that only orders surely not in the log
//! have their reservation released.
//!
//! After a failed delivery the producer is replaced by a fresh one (a new producer id):
//! an idempotent producer whose broker restarted keeps its old id and sequence numbers,
//! which a restarted broker may refuse (tansu 0.6's SQLite engine even fails on them).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::RwLock;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::bindings::{rd_kafka_message_status, rd_kafka_msg_status_t};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, PurgeConfig, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::oneshot;

use super::{BusError, OrderBus, OrderMessage, Topics};
use crate::domain::{Order, OrderEvent};

/// What the delivery report said.
#[derive(Debug)]
pub enum Delivered {
    Persisted,
    NotPersisted(String),
    PossiblyPersisted(String),
}

pub struct DeliveryContext;

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<oneshot::Sender<Delivered>>;

    fn delivery(&self, result: &DeliveryResult<'_>, reply: Self::DeliveryOpaque) {
        let delivered = match result {
            Ok(_) => Delivered::Persisted,
            Err((error, message)) => {
                // SAFETY: the message is valid for the duration of this callback.
                let status = unsafe { rd_kafka_message_status(message.ptr()) };
                match status {
                    rd_kafka_msg_status_t::RD_KAFKA_MSG_STATUS_NOT_PERSISTED => {
                        Delivered::NotPersisted(error.to_string())
                    }
                    _ => Delivered::PossiblyPersisted(error.to_string()),
                }
            }
        };
        let _ = reply.send(delivered);
    }
}

type OrderProducer = ThreadedProducer<DeliveryContext>;

pub struct KafkaBus {
    producer: RwLock<Arc<OrderProducer>>,
    brokers: String,
    timeout: Duration,
    topics: Topics,
    /// The workers' consumer group: the bus is drained when it has no lag.
    worker_group: String,
}

/// Settings shared by every client of the bus.
pub fn client_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("client.id", "flashsale");
    config
}

/// The producer settings: idempotent, acks from every in-sync replica, and a delivery
/// deadline so that a buyer never waits longer than `timeout` for an answer.
pub fn producer_config(brokers: &str, timeout: Duration) -> ClientConfig {
    let mut config = client_config(brokers);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .set(
            "message.timeout.ms",
            timeout.as_millis().max(100).to_string(),
        )
        .set(
            "request.timeout.ms",
            timeout.as_millis().max(100).to_string(),
        );
    config
}

impl KafkaBus {
    pub async fn connect(
        brokers: &str,
        topics: Topics,
        worker_group: &str,
        partitions: i32,
        timeout: Duration,
    ) -> Result<KafkaBus, BusError> {
        ensure_topics(brokers, &topics, partitions, timeout).await?;
        let producer = RwLock::new(Arc::new(new_producer(brokers, timeout)?));
        Ok(KafkaBus {
            producer,
            brokers: brokers.to_string(),
            timeout,
            topics,
            worker_group: worker_group.to_string(),
        })
    }

    /// Swaps in a fresh producer after a failure of `failed`, unless another request
    /// did it already. The old one's queue is purged: those orders fail at once.
    fn replace_producer(&self, failed: &Arc<OrderProducer>) {
        let mut current = self.producer.write();
        if !Arc::ptr_eq(&current, failed) {
            return;
        }
        match new_producer(&self.brokers, self.timeout) {
            Ok(fresh) => {
                let old = std::mem::replace(&mut *current, Arc::new(fresh));
                old.purge(PurgeConfig::default().queue());
                tracing::warn!("kafka producer replaced after a failed delivery");
            }
            Err(e) => tracing::error!(error = %e, "could not replace the kafka producer"),
        }
    }
}

fn new_producer(brokers: &str, timeout: Duration) -> Result<OrderProducer, BusError> {
    producer_config(brokers, timeout)
        .create_with_context(DeliveryContext)
        .map_err(|e| BusError::NotStored(format!("kafka producer: {e}")))
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

#[async_trait]
impl OrderBus for KafkaBus {
    async fn publish(&self, order: &Order) -> Result<(), BusError> {
        let (reply, delivered) = oneshot::channel();
        let payload = OrderMessage::encode(order);
        let key = OrderMessage::key(order);
        let record = BaseRecord::with_opaque_to(&self.topics.orders, Box::new(reply))
            .key(&key)
            .payload(&payload);
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

    /// Waits out the delivery timeout (nothing sent before can land later), then reads
    /// the orders topic after the workers' committed offsets: what is there is on its
    /// way to the store.
    async fn undelivered(
        &self,
        sale_id: &str,
        _deadline: Duration,
    ) -> Result<Vec<Order>, BusError> {
        tokio::time::sleep(self.timeout).await;
        let (brokers, group, topic) = (
            self.brokers.clone(),
            self.worker_group.clone(),
            self.topics.orders.clone(),
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
        let record = BaseRecord::with_opaque_to(&self.topics.events, Box::new(reply))
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

/// Where `group` stands on each partition of `topic`, with a consumer of that group
/// that has not joined it (it reads, it never takes partitions away). Blocking.
struct Positions {
    consumer: BaseConsumer,
    /// (partition, committed offset if any, low watermark, high watermark)
    partitions: Vec<(i32, Option<i64>, i64, i64)>,
}

fn positions(brokers: &str, topic: &str, group: &str) -> Result<Positions, BusError> {
    let failed = |e: KafkaError| BusError::Unknown(format!("reading {topic}: {e}"));
    let consumer: BaseConsumer = client_config(brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .map_err(failed)?;
    let timeout = Duration::from_secs(5);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(failed)?;
    let mut list = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            list.add_partition(topic, p.id());
        }
    }
    let committed = consumer.committed_offsets(list, timeout).map_err(failed)?;
    let mut partitions = Vec::new();
    for element in committed.elements() {
        let (low, high) = consumer
            .fetch_watermarks(topic, element.partition(), timeout)
            .map_err(failed)?;
        let done = match element.offset() {
            Offset::Offset(n) => Some(n),
            _ => None,
        };
        partitions.push((element.partition(), done, low, high));
    }
    Ok(Positions {
        consumer,
        partitions,
    })
}

/// Messages of `topic` the consumer `group` has not committed yet (blocking).
pub fn consumer_lag(brokers: &str, group: &str, topic: &str) -> Result<i64, BusError> {
    let positions = positions(brokers, topic, group)?;
    Ok(positions
        .partitions
        .iter()
        .map(|&(_, done, low, high)| (high - done.unwrap_or(low)).max(0))
        .sum())
}

/// A message read back from a topic.
pub struct Read {
    pub partition: i32,
    pub offset: i64,
    pub payload: Vec<u8>,
}

/// Every message of `topic` after `group`'s committed offsets (from the start of each
/// partition with `from_start`, or where nothing was committed), up to the end as it is
/// now, and the offsets that follow them. Blocking.
pub fn read_after_committed(
    brokers: &str,
    topic: &str,
    group: &str,
    from_start: bool,
) -> Result<(Vec<Read>, TopicPartitionList), BusError> {
    let failed = |e: KafkaError| BusError::Unknown(format!("reading {topic}: {e}"));
    let timeout = Duration::from_secs(5);
    let Positions {
        consumer,
        partitions,
    } = positions(brokers, topic, group)?;
    let mut messages = Vec::new();
    let mut next = TopicPartitionList::new();
    for (partition, done, low, high) in partitions {
        let start = match done {
            Some(n) if !from_start => n.max(low),
            _ => low,
        };
        if start >= high {
            continue;
        }
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(topic, partition, Offset::Offset(start))
            .map_err(failed)?;
        consumer.assign(&assignment).map_err(failed)?;
        let mut position = start;
        while position < high {
            match consumer.poll(timeout) {
                Some(Ok(message)) => {
                    position = message.offset() + 1;
                    messages.push(Read {
                        partition,
                        offset: message.offset(),
                        payload: message.payload().unwrap_or_default().to_vec(),
                    });
                }
                Some(Err(e)) => return Err(failed(e)),
                None => return Err(BusError::Unknown(format!("reading {topic}: timed out"))),
            }
        }
        next.add_partition_offset(topic, partition, Offset::Offset(position))
            .map_err(failed)?;
    }
    Ok((messages, next))
}
