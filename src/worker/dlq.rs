//! The dead-letter topic: orders the worker could not store, with the reason.
//! `list` shows the letters not replayed yet; `replay` drives them through the store
//! again. Progress is the committed offset of the group `<worker group>-dlq`: a letter
//! that fails again is dead-lettered anew (with its new reason) behind the others.

use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::bus::kafka::{client_config, producer_config};
use crate::bus::{BusError, DeadLetter, OrderMessage, Topics};
use crate::store::{InsertOutcome, OrderStore};

#[derive(Debug, Clone, Serialize)]
pub struct Letter {
    pub partition: i32,
    pub offset: i64,
    pub letter: DeadLetter,
}

#[derive(Debug, Default, Serialize)]
pub struct Replay {
    pub stored: Vec<String>,
    /// Letters that failed again: (order id or payload, reason).
    pub failed: Vec<(String, String)>,
}

fn kafka(e: rdkafka::error::KafkaError) -> BusError {
    BusError::Unknown(format!("dead-letter topic: {e}"))
}

pub fn replay_group(worker_group: &str) -> String {
    format!("{worker_group}-dlq")
}

/// The letters after the replay group's committed offsets (or all, with `all`), and
/// the offsets that follow them (to commit once handled).
fn read(
    brokers: &str,
    topic: &str,
    group: &str,
    all: bool,
) -> Result<(Vec<Letter>, TopicPartitionList), BusError> {
    let consumer: BaseConsumer = client_config(brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .map_err(kafka)?;
    let timeout = Duration::from_secs(5);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(kafka)?;
    let mut partitions = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            partitions.add_partition(topic, p.id());
        }
    }
    let committed = consumer
        .committed_offsets(partitions, timeout)
        .map_err(kafka)?;
    let mut letters = Vec::new();
    let mut next = TopicPartitionList::new();
    for element in committed.elements() {
        let partition = element.partition();
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, timeout)
            .map_err(kafka)?;
        let start = match element.offset() {
            Offset::Offset(n) if !all => n.max(low),
            _ => low,
        };
        if start >= high {
            continue;
        }
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(topic, partition, Offset::Offset(start))
            .map_err(kafka)?;
        consumer.assign(&assignment).map_err(kafka)?;
        let mut position = start;
        while position < high {
            match consumer.poll(timeout) {
                Some(Ok(message)) => {
                    position = message.offset() + 1;
                    let letter = serde_json::from_slice(message.payload().unwrap_or_default())
                        .unwrap_or_else(|e| DeadLetter {
                            v: 1,
                            reason: format!("unreadable dead letter: {e}"),
                            payload: String::from_utf8_lossy(message.payload().unwrap_or_default())
                                .into(),
                            topic: topic.to_string(),
                            partition,
                            offset: message.offset(),
                        });
                    letters.push(Letter {
                        partition,
                        offset: message.offset(),
                        letter,
                    });
                }
                Some(Err(e)) => return Err(kafka(e)),
                None => {
                    return Err(BusError::Unknown(
                        "dead-letter topic: read timed out".into(),
                    ));
                }
            }
        }
        next.add_partition_offset(topic, partition, Offset::Offset(position))
            .map_err(kafka)?;
    }
    Ok((letters, next))
}

pub async fn list(
    brokers: &str,
    topics: &Topics,
    worker_group: &str,
    all: bool,
) -> Result<Vec<Letter>, BusError> {
    let (brokers, topic, group) = (
        brokers.to_string(),
        topics.dlq.clone(),
        replay_group(worker_group),
    );
    tokio::task::spawn_blocking(move || {
        read(&brokers, &topic, &group, all).map(|(letters, _)| letters)
    })
    .await
    .map_err(|e| BusError::Unknown(e.to_string()))?
}

/// Stores every letter not replayed yet; what fails again goes back to the topic.
pub async fn replay(
    brokers: &str,
    topics: &Topics,
    worker_group: &str,
    store: &dyn OrderStore,
) -> Result<Replay, BusError> {
    let (b, topic, group) = (
        brokers.to_string(),
        topics.dlq.clone(),
        replay_group(worker_group),
    );
    let (letters, next) = tokio::task::spawn_blocking(move || read(&b, &topic, &group, false))
        .await
        .map_err(|e| BusError::Unknown(e.to_string()))??;
    let producer: FutureProducer = producer_config(brokers, Duration::from_secs(10))
        .create()
        .map_err(kafka)?;
    let mut report = Replay::default();
    for entry in letters {
        let outcome = match OrderMessage::decode(entry.letter.payload.as_bytes()) {
            Err(reason) => Err((entry.letter.payload.clone(), reason)),
            Ok(order) => match store.insert_orders(std::slice::from_ref(&order)).await {
                Ok(outcomes) => match outcomes.into_iter().next() {
                    Some(InsertOutcome::Rejected(reason)) => Err((order.id.clone(), reason)),
                    _ => Ok(order.id.clone()),
                },
                Err(e) => return Err(BusError::Unknown(format!("store: {e}"))),
            },
        };
        match outcome {
            Ok(id) => report.stored.push(id),
            Err((what, reason)) => {
                let again = DeadLetter {
                    reason: reason.clone(),
                    ..entry.letter.clone()
                };
                let payload = serde_json::to_vec(&again).expect("dead letters serialize");
                producer
                    .send(
                        FutureRecord::<(), _>::to(&topics.dlq).payload(&payload),
                        Duration::from_secs(10),
                    )
                    .await
                    .map_err(|(e, _)| kafka(e))?;
                report.failed.push((what, reason));
            }
        }
    }
    if next.count() > 0 {
        let (b, group) = (brokers.to_string(), replay_group(worker_group));
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = client_config(&b)
                .set("group.id", &group)
                .set("enable.auto.commit", "false")
                .create()
                .map_err(kafka)?;
            consumer.commit(&next, CommitMode::Sync).map_err(kafka)
        })
        .await
        .map_err(|e| BusError::Unknown(e.to_string()))??;
    }
    Ok(report)
}
