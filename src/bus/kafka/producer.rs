//! The producer side of the Kafka bus: client settings every client shares, the
//! producer's settings (idempotent, `acks=all`), and the delivery report that tells
//! whether a failed message may still have been written.

use std::time::Duration;

use rdkafka::bindings::{rd_kafka_message_status, rd_kafka_msg_status_t};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{ProducerContext, ThreadedProducer};
use tokio::sync::oneshot;

use crate::bus::BusError;

/// What the delivery report said.
#[derive(Debug)]
pub(super) enum Delivered {
    Persisted,
    NotPersisted(String),
    PossiblyPersisted(String),
}

pub(super) struct DeliveryContext;

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

pub(super) type OrderProducer = ThreadedProducer<DeliveryContext>;

/// Settings shared by every client of the bus.
pub fn client_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("client.id", "flashsale");
    config
}

/// The producer settings: idempotent, acks from every in-sync replica, and a delivery
/// timeout (`delivery`) that leaves room for retries: each request may take a third of
/// it, so a lost request is sent again before the order gives up. Past `delivery` the
/// order has landed or never will.
pub fn producer_config(brokers: &str, delivery: Duration) -> ClientConfig {
    let delivery_ms = delivery.as_millis().max(300);
    let mut config = client_config(brokers);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .set("message.timeout.ms", delivery_ms.to_string())
        .set("request.timeout.ms", (delivery_ms / 3).to_string())
        .set("retry.backoff.ms", "50");
    config
}

pub(super) fn new_producer(brokers: &str, timeout: Duration) -> Result<OrderProducer, BusError> {
    producer_config(brokers, timeout)
        .create_with_context(DeliveryContext)
        .map_err(|e| BusError::NotStored(format!("kafka producer: {e}")))
}
