//! Workers move orders from the bus into the store: in embedded mode the group-commit
//! writer behind the in-process bus (`group_commit.rs`), in distributed mode the Kafka
//! consumer group (`kafka.rs`, with its dead letters in `dlq.rs`). The functions here are
//! the same in every build; without the `kafka` feature the Kafka ones say so.

#[cfg(feature = "kafka")]
mod dlq;
mod group_commit;
#[cfg(feature = "kafka")]
mod kafka;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

pub use group_commit::run_group_commit;

use crate::bus::{BusError, BusSettings};
use crate::store::OrderStore;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("kafka: {0}")]
    Kafka(String),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("the worker consumes a Kafka bus: give --bus kafka://host:port")]
    NotKafka,
}

/// Consumes the Kafka bus into the store, batch by batch, until `shutdown` resolves.
pub async fn consume_bus(
    bus: &BusSettings,
    max_batch: usize,
    linger: Duration,
    store: Arc<dyn OrderStore>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    if bus.url == crate::bus::BusUrl::Memory {
        return Err(WorkerError::NotKafka);
    }
    #[cfg(feature = "kafka")]
    {
        let config = kafka::KafkaWorkerConfig {
            bus: bus.kafka().expect("a Kafka url"),
            max_batch,
            linger,
        };
        kafka::run(config, store, shutdown).await
    }
    #[cfg(not(feature = "kafka"))]
    {
        let _ = (max_batch, linger, store, shutdown);
        Err(BusError::NoKafka.into())
    }
}

/// A dead-lettered order, as `flashsale dlq list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterView {
    pub partition: i32,
    pub offset: i64,
    /// The order's id, when the message could be read as an order.
    pub order_id: Option<String>,
    pub reason: String,
}

/// The dead letters not replayed yet (or all of them).
#[derive(Debug, Default, Serialize)]
pub struct DeadLetters {
    pub letters: Vec<DeadLetterView>,
}

impl DeadLetters {
    pub fn render(&self) -> String {
        let mut out = String::new();
        for l in &self.letters {
            let order = l.order_id.as_deref().unwrap_or("(undecodable)");
            out.push_str(&format!(
                "{}:{} order {order}: {}\n",
                l.partition, l.offset, l.reason
            ));
        }
        out.push_str(&format!("{} dead letters", self.letters.len()));
        out
    }
}

/// What a replay of the dead letters did.
#[derive(Debug, Default, Serialize)]
pub struct Replay {
    pub stored: Vec<String>,
    /// Orders the store refused: kept as `failed` with the reason (their units go back
    /// through the sweepers), as the worker does, instead of dead-lettered again.
    pub stored_as_failed: Vec<(String, String)>,
    /// Letters that failed again: (order id or payload, reason).
    pub failed: Vec<(String, String)>,
}

impl Replay {
    pub fn render(&self) -> String {
        let mut out = String::new();
        for id in &self.stored {
            out.push_str(&format!("stored {id}\n"));
        }
        for (id, reason) in &self.stored_as_failed {
            out.push_str(&format!("stored as failed {id}: {reason}\n"));
        }
        for (what, reason) in &self.failed {
            out.push_str(&format!("failed again {what}: {reason}\n"));
        }
        out.push_str(&format!(
            "replayed: {} stored, {} stored as failed, {} failed again",
            self.stored.len(),
            self.stored_as_failed.len(),
            self.failed.len()
        ));
        out
    }
}

/// The dead letters of the bus: those not replayed yet, or `all`.
pub async fn dead_letters(bus: &BusSettings, all: bool) -> Result<DeadLetters, WorkerError> {
    if bus.url == crate::bus::BusUrl::Memory {
        return Err(WorkerError::NotKafka);
    }
    #[cfg(feature = "kafka")]
    {
        let letters = dlq::list(&bus.kafka().expect("a Kafka url"), all).await?;
        let letters = letters
            .into_iter()
            .map(|l| DeadLetterView {
                partition: l.partition,
                offset: l.offset,
                order_id: crate::bus::kafka::OrderMessage::decode(l.letter.payload.as_bytes())
                    .map(|o| o.id)
                    .ok(),
                reason: l.letter.reason,
            })
            .collect();
        Ok(DeadLetters { letters })
    }
    #[cfg(not(feature = "kafka"))]
    {
        let _ = all;
        Err(BusError::NoKafka.into())
    }
}

/// Drives the dead letters not replayed yet through the store again.
pub async fn replay_dead_letters(
    bus: &BusSettings,
    store: &dyn OrderStore,
) -> Result<Replay, WorkerError> {
    if bus.url == crate::bus::BusUrl::Memory {
        return Err(WorkerError::NotKafka);
    }
    #[cfg(feature = "kafka")]
    {
        Ok(dlq::replay(&bus.kafka().expect("a Kafka url"), store).await?)
    }
    #[cfg(not(feature = "kafka"))]
    {
        let _ = store;
        Err(BusError::NoKafka.into())
    }
}
