//! The order bus carries a reserved order to the store. `publish` resolves only once the
//! order is durable: in embedded mode when the store's transaction holding it committed,
//! on Kafka when every in-sync replica has it. `connect` builds either, beside
//! `gate::connect` and `store::connect`; for the in-process bus it also returns the
//! inbox the group-commit writer (`crate::worker`) drains.

#[cfg(feature = "kafka")]
pub mod kafka;
mod memory;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use memory::{Envelope, MemoryBus, OrderInbox};

use crate::domain::{Order, OrderEvent};

/// What a build without Kafka says when asked for it.
pub const NO_KAFKA: &str =
    "this build has no Kafka support: build with `cargo build --release --features kafka`";

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The bus is at capacity: the request is shed instead of queued without bound.
    #[error("order bus is full")]
    Full,
    /// The order was definitely not stored.
    #[error("order not stored: {0}")]
    NotStored(String),
    /// Nobody can tell whether the order was stored (e.g. the writer vanished).
    #[error("order outcome unknown: {0}")]
    Unknown(String),
    #[error("{NO_KAFKA}")]
    NoKafka,
}

impl BusError {
    /// Whether the order is known not to be stored, so its reservation may be released.
    pub fn is_definite(&self) -> bool {
        !matches!(self, BusError::Unknown(_))
    }
}

#[async_trait]
pub trait OrderBus: Send + Sync + 'static {
    /// Resolves once the order is durable.
    async fn publish(&self, order: &Order) -> Result<(), BusError>;

    /// Orders of a sale published on this bus so far and not yet in the store (they
    /// will be): with the store's, they are what the gate must hold when rebuilt.
    /// `Err` if that cannot be known within `deadline`.
    async fn undelivered(
        &self,
        sale_id: &str,
        deadline: std::time::Duration,
    ) -> Result<Vec<Order>, BusError>;

    /// How many orders may be on their way through this bus at once before a publish is
    /// refused `Full`, when it has such a bound (the in-process bus).
    fn capacity(&self) -> Option<usize> {
        None
    }

    /// Orders handed to this bus that are not stored yet, when this process can tell
    /// (the in-process bus); `None` for a bus drained by other processes (Kafka: see
    /// `consumer_lag`).
    fn pending(&self) -> Option<usize> {
        None
    }

    /// Publishes a status change for other processes (the in-process bus has no one to
    /// tell: the engine's own broadcast covers it).
    async fn publish_event(&self, _event: &OrderEvent) -> Result<(), BusError> {
        Ok(())
    }
}

/// Which bus to run, parsed from `memory` or `kafka://host:port[,host:port]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum BusUrl {
    Memory,
    Kafka { brokers: String },
}

impl std::str::FromStr for BusUrl {
    type Err = String;
    fn from_str(url: &str) -> Result<Self, String> {
        if url == "memory" {
            return Ok(BusUrl::Memory);
        }
        match url
            .strip_prefix("kafka://")
            .map(|b| b.trim_end_matches('/'))
        {
            Some(brokers) if !brokers.is_empty() => Ok(BusUrl::Kafka {
                brokers: brokers.to_string(),
            }),
            _ => Err(format!(
                "unsupported bus {url:?} (expected memory or kafka://host:port[,host:port])"
            )),
        }
    }
}

impl TryFrom<String> for BusUrl {
    type Error = String;
    fn try_from(url: String) -> Result<Self, String> {
        url.parse()
    }
}

impl From<BusUrl> for String {
    fn from(url: BusUrl) -> String {
        url.to_string()
    }
}

impl std::fmt::Display for BusUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BusUrl::Memory => f.write_str("memory"),
            BusUrl::Kafka { brokers } => write!(f, "kafka://{brokers}"),
        }
    }
}

/// Everything a bus needs, whichever it is.
#[derive(Debug, Clone)]
pub struct BusSettings {
    pub url: BusUrl,
    /// Orders that may wait for the in-process writer; past it, purchases are shed.
    pub capacity: usize,
    /// The longest wait for the broker within a request.
    pub timeout: Duration,
    /// Topics, consumer group and producer of the Kafka bus.
    pub kafka: KafkaSettings,
}

/// The Kafka bus's topics, consumer group and producer: the gateways', the workers' and
/// `check` / `dlq`'s (unused on the in-process bus). Settings of their own, flattened into
/// `crate::config::Config` under these names (defaults: `config/default.toml`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KafkaSettings {
    /// Prefix of the Kafka topic names (`<prefix>flashsale.orders`, …).
    pub topic_prefix: String,
    /// Partitions of the Kafka topics when flashsale creates them.
    pub kafka_partitions: i32,
    /// Copies per message of the topics flashsale creates (`None`: 3, or the number of
    /// brokers when fewer).
    pub kafka_replication_factor: Option<i32>,
    /// `min.insync.replicas` of those topics (`None`: replication factor − 1, ≥ 1).
    pub kafka_min_insync_replicas: Option<i32>,
    /// How long the producer keeps trying to deliver an order, in ms.
    pub kafka_delivery_timeout_ms: u64,
    /// Consumer group of the workers.
    pub worker_group: String,
    /// How long a worker's batch waits for more messages, in ms.
    pub worker_linger_ms: u64,
}

impl KafkaSettings {
    /// How long the producer keeps trying to deliver an order.
    pub fn delivery_timeout(&self) -> Duration {
        Duration::from_millis(self.kafka_delivery_timeout_ms)
    }

    /// How long a worker's batch waits for more messages.
    pub fn worker_linger(&self) -> Duration {
        Duration::from_millis(self.worker_linger_ms)
    }
}

impl BusSettings {
    /// The longest an order may be on its way to the store: past it, it has landed or
    /// never will. In process, the writer enforces it (nothing commits past it). On
    /// Kafka it is the producer's delivery timeout, plus a request still in flight when
    /// that timer fired (a retried produce reported "possibly persisted" can still be
    /// appended: one request timeout, a third of the delivery timeout), plus the second
    /// librdkafka may take to notice a timeout (it scans once a second) (issue #21).
    pub fn delivery_deadline(&self) -> Duration {
        match self.url {
            BusUrl::Memory => self.timeout,
            BusUrl::Kafka { .. } => {
                let delivery_timeout = self.kafka.delivery_timeout();
                delivery_timeout + delivery_timeout / 3 + Duration::from_secs(1)
            }
        }
    }
}

impl BusSettings {
    /// The Kafka part of the settings; `None` for the in-process bus.
    #[cfg(feature = "kafka")]
    pub fn kafka(&self) -> Option<kafka::KafkaSettings> {
        let BusUrl::Kafka { brokers } = &self.url else {
            return None;
        };
        Some(kafka::KafkaSettings {
            brokers: brokers.clone(),
            topics: kafka::Topics::with_prefix(&self.kafka.topic_prefix),
            worker_group: self.kafka.worker_group.clone(),
            partitions: self.kafka.kafka_partitions,
            replication_factor: self.kafka.kafka_replication_factor,
            min_insync_replicas: self.kafka.kafka_min_insync_replicas,
            timeout: self.timeout,
            delivery_timeout: self.kafka.delivery_timeout(),
        })
    }
}

/// Opens the bus, and for the in-process bus the inbox its writer must drain.
pub async fn connect(
    settings: &BusSettings,
) -> Result<(Arc<dyn OrderBus>, Option<OrderInbox>), BusError> {
    match &settings.url {
        BusUrl::Memory => {
            let (bus, inbox) = MemoryBus::new(settings.capacity, settings.timeout);
            Ok((Arc::new(bus), Some(inbox)))
        }
        #[cfg(feature = "kafka")]
        BusUrl::Kafka { .. } => {
            let kafka = settings.kafka().expect("a Kafka url");
            Ok((Arc::new(kafka::KafkaBus::connect(kafka).await?), None))
        }
        #[cfg(not(feature = "kafka"))]
        BusUrl::Kafka { .. } => Err(BusError::NoKafka),
    }
}

/// Messages on the bus that no worker has stored yet; `None` for the in-process bus
/// (it drains within milliseconds and is not visible from another process).
pub async fn consumer_lag(settings: &BusSettings) -> Result<Option<i64>, BusError> {
    match &settings.url {
        BusUrl::Memory => Ok(None),
        #[cfg(feature = "kafka")]
        BusUrl::Kafka { .. } => {
            let kafka = settings.kafka().expect("a Kafka url");
            Ok(Some(kafka.consumer_lag().await?))
        }
        #[cfg(not(feature = "kafka"))]
        BusUrl::Kafka { .. } => Err(BusError::NoKafka),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_urls_parse_once() {
        assert_eq!("memory".parse(), Ok(BusUrl::Memory));
        assert_eq!(
            "kafka://a:1,b:2/".parse(),
            Ok(BusUrl::Kafka {
                brokers: "a:1,b:2".into()
            })
        );
        assert!("kafka://".parse::<BusUrl>().is_err());
        assert!("rabbitmq://x".parse::<BusUrl>().is_err());
        assert_eq!(
            BusUrl::Kafka {
                brokers: "a:1".into()
            }
            .to_string(),
            "kafka://a:1"
        );
    }
}
