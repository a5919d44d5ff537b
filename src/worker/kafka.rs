//! The Kafka worker: consumes `flashsale.orders` in a consumer group, stores each batch
//! in one transaction, sends what the store refused to `flashsale.orders.dlq` with the
//! reason, and only then commits the offsets. A worker killed mid-batch leaves its
//! offsets uncommitted: the group re-delivers, and the store's unique order id makes
//! the replay harmless (the broker has no transactions; this is at-least-once + dedupe).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use super::WorkerError;
use crate::bus::kafka::{
    DeadLetter, KafkaSettings, OrderMessage, Topics, client_config, ensure_topics, producer_config,
};
use crate::domain::{OrderEvent, OrderStatus, now_millis};
use crate::observe::metrics::{Stage, StageTimer};
use crate::store::{InsertOutcome, OrderStore, StoreError};
use rdkafka::message::Headers as _;

/// How often an idle worker checks whether the group is stalled, and after how long idle.
const STALL_CHECK: Duration = Duration::from_secs(2);
const STALL_AFTER: Duration = Duration::from_secs(8);

/// A consumer in the workers' group, subscribed to the orders topic.
fn join_group(bus: &KafkaSettings) -> Result<StreamConsumer, WorkerError> {
    let consumer: StreamConsumer = client_config(&bus.brokers)
        .set("group.id", &bus.worker_group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // A killed worker's partitions move to the others within seconds. The poll
        // interval is also the rebalance timeout: a rebalance (a worker joining) waits
        // that long for members to rejoin, and a killed one never does.
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        .set("max.poll.interval.ms", "10000")
        .create()?;
    consumer.subscribe(&[&bus.topics.orders])?;
    Ok(consumer)
}

/// Whether the workers' group has orders left to store.
async fn group_has_lag(bus: &KafkaSettings) -> bool {
    matches!(bus.consumer_lag().await, Ok(lag) if lag > 0)
}

/// A worker's settings: where the bus is, and how it batches.
#[derive(Debug, Clone)]
pub struct KafkaWorkerConfig {
    pub bus: KafkaSettings,
    pub max_batch: usize,
    /// How long a batch waits for more messages once it has one.
    pub linger: Duration,
}

impl From<rdkafka::error::KafkaError> for WorkerError {
    fn from(e: rdkafka::error::KafkaError) -> Self {
        WorkerError::Kafka(e.to_string())
    }
}

pub async fn run(
    config: KafkaWorkerConfig,
    store: Arc<dyn OrderStore>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    let bus = &config.bus;
    ensure_topics(bus).await?;
    let mut consumer = join_group(bus)?;
    let producer: FutureProducer =
        producer_config(&bus.brokers, Duration::from_secs(10)).create()?;
    tokio::pin!(shutdown);
    tracing::info!(group = %bus.worker_group, topic = %bus.topics.orders, "worker consuming");

    let mut last_message = tokio::time::Instant::now();
    // The batch being stored while the next one is consumed: its offsets are committed
    // once it is stored, before the next batch's store starts.
    let mut storing: Option<StoringBatch> = None;
    loop {
        let first = tokio::select! {
            message = consumer.recv() => message,
            () = finished(&mut storing), if storing.is_some() => {
                // Nothing new meanwhile: commit what is stored now, not at the next message.
                let stored = storing.take().expect("a batch being stored");
                commit(&consumer, stored.offsets, CommitMode::Async);
                continue;
            }
            () = tokio::time::sleep(STALL_CHECK) => {
                // Nothing for a while: if the group has lag, its partitions are held by a
                // member that is gone (tansu 0.6 was seen keeping a killed worker's
                // partition assigned); joining again as a new member forces a rebalance.
                if last_message.elapsed() >= STALL_AFTER && group_has_lag(bus).await {
                    tracing::warn!(group = %bus.worker_group, "lag but nothing assigned to consume: joining the group again");
                    drop(consumer);
                    consumer = join_group(bus)?;
                    last_message = tokio::time::Instant::now();
                }
                continue;
            }
            () = &mut shutdown => break,
        };
        last_message = tokio::time::Instant::now();
        let mut batch = match first {
            Ok(message) => vec![message.detach()],
            Err(e) => {
                tracing::warn!(error = %e, "consume failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let deadline = tokio::time::Instant::now() + config.linger;
        while batch.len() < config.max_batch {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(Ok(message)) => batch.push(message.detach()),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "consume failed");
                    break;
                }
                Err(_) => break,
            }
        }
        if let Some(previous) = storing.take() {
            let waited_at = tokio::time::Instant::now();
            let offsets =
                stored_while_polling(&consumer, previous, &mut batch, config.max_batch).await;
            commit(&consumer, offsets, CommitMode::Async);
            tracing::debug!(size = batch.len(), waited_for_previous = ?waited_at.elapsed(), "batch consumed");
        }
        storing = Some(StoringBatch::start(batch, &store, &producer, &bus.topics));
    }
    if let Some(last) = storing.take() {
        commit(&consumer, last.stored().await, CommitMode::Sync);
    }
    tracing::info!("worker stopped");
    Ok(())
}

/// Waits for the previous batch to be stored while still polling the consumer: a
/// consumer that does not poll for `max.poll.interval.ms` (10 s) is put out of its group,
/// and a store outage longer than that made the worker leave it (issue #21). What
/// arrives meanwhile joins the next batch; once that is full, the partitions are paused
/// (polling a paused consumer delivers nothing and keeps it in the group; resuming goes
/// on from the last message delivered).
async fn stored_while_polling(
    consumer: &StreamConsumer,
    previous: StoringBatch,
    batch: &mut Vec<OwnedMessage>,
    max_batch: usize,
) -> TopicPartitionList {
    let stored = previous.stored();
    tokio::pin!(stored);
    let mut paused: Option<TopicPartitionList> = None;
    loop {
        tokio::select! {
            offsets = &mut stored => {
                if let Some(list) = paused
                    && let Err(e) = consumer.resume(&list)
                {
                    tracing::warn!(error = %e, "partitions not resumed");
                }
                return offsets;
            }
            message = consumer.recv() => match message {
                Ok(message) => {
                    batch.push(message.detach());
                    if batch.len() >= max_batch
                        && let Ok(assigned) = consumer.assignment()
                    {
                        // Also partitions assigned since an earlier pause.
                        if let Err(e) = consumer.pause(&assigned) {
                            tracing::warn!(error = %e, "partitions not paused");
                        }
                        paused = Some(assigned);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "consume failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
        }
    }
}

/// A batch whose store runs in a task of its own, and the offsets to commit after it.
struct StoringBatch {
    task: tokio::task::JoinHandle<()>,
    offsets: TopicPartitionList,
    size: usize,
    started: tokio::time::Instant,
}

impl StoringBatch {
    fn start(
        batch: Vec<OwnedMessage>,
        store: &Arc<dyn OrderStore>,
        producer: &FutureProducer,
        topics: &Topics,
    ) -> Self {
        let offsets = offsets_after(&batch);
        let size = batch.len();
        let (store, producer, topics) = (store.clone(), producer.clone(), topics.clone());
        let task =
            tokio::spawn(
                async move { store_batch(&batch, store.as_ref(), &producer, &topics).await },
            );
        StoringBatch {
            task,
            offsets,
            size,
            started: tokio::time::Instant::now(),
        }
    }

    /// Waits for the store; the offsets that may be committed now.
    async fn stored(self) -> TopicPartitionList {
        if let Err(e) = self.task.await {
            // store_batch retries until stored; only a panic ends it early. Its orders
            // are delivered again after a restart, as if the worker had been killed.
            tracing::error!(error = %e, "storing a batch failed");
            std::panic::resume_unwind(e.into_panic());
        }
        tracing::debug!(size = self.size, store_time = ?self.started.elapsed(), "batch stored");
        self.offsets
    }
}

/// Resolves when the batch being stored (if any) is stored; never otherwise. Its task is
/// then spent: take the offsets, do not call `stored`.
async fn finished(storing: &mut Option<StoringBatch>) {
    match storing {
        Some(batch) => {
            if let Err(e) = (&mut batch.task).await {
                tracing::error!(error = %e, "storing a batch failed");
                std::panic::resume_unwind(e.into_panic());
            }
        }
        None => std::future::pending().await,
    }
}

fn commit(consumer: &StreamConsumer, offsets: TopicPartitionList, mode: CommitMode) {
    if let Err(e) = consumer.commit(&offsets, mode) {
        // E.g. the partition moved to another worker: it re-delivers, harmlessly.
        tracing::warn!(error = %e, "offset commit failed");
    }
}

/// Stores a batch, retrying while the store is down (the offsets wait with it). An order
/// the store refuses was already acknowledged to its buyer: it is compensated, not only
/// dead-lettered: stored as `failed` with the reason (its units go back to the gate
/// through the gateways' sweepers, like a cancel) and announced on the events topic.
/// What cannot even be decoded, or stored as failed, is dead-lettered.
async fn store_batch(
    batch: &[OwnedMessage],
    store: &dyn OrderStore,
    producer: &FutureProducer,
    topics: &Topics,
) {
    let mut orders = Vec::with_capacity(batch.len());
    let mut dead = Vec::new();
    for message in batch {
        match OrderMessage::decode(message.payload().unwrap_or_default()) {
            Ok(order) => orders.push((message, order)),
            Err(reason) => dead.push((message, reason)),
        }
    }
    let plain: Vec<_> = orders.iter().map(|(_, o)| o.clone()).collect();
    // A span per order, in the trace its gateway started (while traces are exported).
    let _traced: Vec<_> = orders
        .iter()
        .filter_map(|(message, order)| {
            let parent = message
                .headers()?
                .iter()
                .find(|h| h.key == "traceparent")?
                .value?;
            let span = tracing::info_span!(target: crate::observe::trace::TARGET, "store_order", order = %order.id);
            crate::observe::trace::continue_from(std::str::from_utf8(parent).ok()?, &span);
            Some(span)
        })
        .collect();
    let outcomes = {
        let _timer = StageTimer::start(Stage::StoreCommit);
        with_retries("store the batch", || store.insert_orders(&plain)).await
    };
    for ((message, order), outcome) in orders.iter().zip(outcomes) {
        let InsertOutcome::Rejected(reason) = outcome else {
            continue;
        };
        tracing::error!(order = %order.id, %reason, "store refused an acknowledged order; compensating");
        // Retried while the store is down (as the insert is): dead-lettering it then
        // would leave an acknowledged order's units held with nothing to give them
        // back (issue #21). Only a refusal by the schema (an unknown sale) goes to
        // the dead letters.
        match with_retries_unless_refused("store it as failed", || store.fail_order(order, &reason))
            .await
        {
            Ok(()) => {
                let mut failed = order.clone();
                failed.status = OrderStatus::Failed;
                announce(
                    producer,
                    &topics.events,
                    &OrderEvent::of(&failed, now_millis()),
                )
                .await;
            }
            Err(e) => {
                tracing::error!(order = %order.id, error = %e, "could not store it as failed; dead-lettered");
                dead.push((message, format!("{reason}; then not stored as failed: {e}")));
            }
        }
    }
    for (message, reason) in dead {
        dead_letter(producer, &topics.dlq, message, reason).await;
    }
}

/// Runs `attempt` until it succeeds or the schema refuses it, backing off while the
/// store is down.
async fn with_retries_unless_refused<F, Fut>(what: &str, mut attempt: F) -> Result<(), StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), StoreError>>,
{
    let mut backoff = Duration::from_millis(50);
    loop {
        match attempt().await {
            Err(e) if !e.is_refusal() => {
                tracing::error!(error = %e, "{what} failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            done => return done,
        }
    }
}

/// Runs `attempt` until it succeeds, backing off while the store is down.
async fn with_retries<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut backoff = Duration::from_millis(50);
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(e) => {
                tracing::error!(error = %e, "{what} failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Tells the gateways' listeners an order changed (best effort: the store has it).
async fn announce(producer: &FutureProducer, topic: &str, event: &OrderEvent) {
    let payload = serde_json::to_vec(event).expect("events serialize");
    let record = FutureRecord::to(topic)
        .key(&event.order_id)
        .payload(&payload);
    if let Err((e, _)) = producer.send(record, Duration::from_secs(5)).await {
        tracing::warn!(order = %event.order_id, error = %e, "status event not published");
    }
}

async fn dead_letter(dlq: &FutureProducer, topic: &str, message: &OwnedMessage, reason: String) {
    let letter = DeadLetter {
        v: 1,
        reason,
        payload: String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned(),
        topic: message.topic().to_string(),
        partition: message.partition(),
        offset: message.offset(),
    };
    let payload = serde_json::to_vec(&letter).expect("dead letters serialize");
    let key = message.key().unwrap_or_default().to_vec();
    loop {
        let record = FutureRecord::to(topic).key(&key).payload(&payload);
        match dlq.send(record, Duration::from_secs(5)).await {
            Ok(_) => return,
            Err((e, _)) => {
                tracing::error!(error = %e, "dead-letter produce failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// The offsets to commit after a batch: one past the last message of each partition.
fn offsets_after(batch: &[OwnedMessage]) -> TopicPartitionList {
    let mut next: HashMap<(String, i32), i64> = HashMap::new();
    for message in batch {
        let entry = next
            .entry((message.topic().to_string(), message.partition()))
            .or_default();
        *entry = (*entry).max(message.offset() + 1);
    }
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in next {
        list.add_partition_offset(&topic, partition, Offset::Offset(offset))
            .expect("valid offset");
    }
    list
}
