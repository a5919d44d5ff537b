//! The dead-letter topic: orders the worker could not store, with the reason.
//! `list` shows the letters not replayed yet; `replay` drives them through the store
//! again. Progress is the committed offset of the group `<worker group>-dlq`: a letter
//! that fails again is dead-lettered anew (with its new reason) behind the others.

use std::time::Duration;

use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;

use super::Replay;
use crate::bus::BusError;
use crate::bus::kafka::{
    DeadLetter, KafkaSettings, OrderMessage, client_config, producer_config, read_after_committed,
};
use crate::store::{InsertOutcome, OrderStore};

#[derive(Debug, Clone, Serialize)]
pub struct Letter {
    pub partition: i32,
    pub offset: i64,
    pub letter: DeadLetter,
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
    let (messages, next) = read_after_committed(brokers, topic, group, all)?;
    let letters = messages
        .into_iter()
        .map(|m| {
            let letter = serde_json::from_slice(&m.payload).unwrap_or_else(|e| DeadLetter {
                v: 1,
                reason: format!("unreadable dead letter: {e}"),
                payload: String::from_utf8_lossy(&m.payload).into(),
                topic: topic.to_string(),
                partition: m.partition,
                offset: m.offset,
            });
            Letter {
                partition: m.partition,
                offset: m.offset,
                letter,
            }
        })
        .collect();
    Ok((letters, next))
}

pub async fn list(bus: &KafkaSettings, all: bool) -> Result<Vec<Letter>, BusError> {
    let (brokers, topic, group) = (
        bus.brokers.clone(),
        bus.topics.dlq.clone(),
        replay_group(&bus.worker_group),
    );
    tokio::task::spawn_blocking(move || {
        read(&brokers, &topic, &group, all).map(|(letters, _)| letters)
    })
    .await
    .map_err(|e| BusError::Unknown(e.to_string()))?
}

/// Stores every letter not replayed yet; what fails again goes back to the topic.
pub async fn replay(bus: &KafkaSettings, store: &dyn OrderStore) -> Result<Replay, BusError> {
    let (brokers, topics, worker_group) = (bus.brokers.as_str(), &bus.topics, &bus.worker_group);
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
                    // Acknowledged once, refused now: kept as failed, as the worker
                    // does, so that its units go back; dead again only if that fails.
                    Some(InsertOutcome::Rejected(reason)) => {
                        match store.fail_order(&order, &reason).await {
                            Ok(()) => {
                                report.stored_as_failed.push((order.id.clone(), reason));
                                continue;
                            }
                            Err(e) => Err((
                                order.id.clone(),
                                format!("{reason}; then not stored as failed: {e}"),
                            )),
                        }
                    }
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
