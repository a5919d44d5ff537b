//! Reading a topic back without joining its consumer group: where a group stands
//! (committed offsets, watermarks), its lag, and the messages after its offsets. Used by
//! the gate rebuild (orders still on their way), `check` (lag) and the dead letters.
//! Every function here blocks: call it from `spawn_blocking`.

use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use super::producer::client_config;
use crate::bus::BusError;

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
