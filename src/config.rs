//! Settings, layered: defaults < `flashsale.toml` < `FLASHSALE_*` environment < flags.
//! Each setting is declared once here; the command line's flags (clap structs in
//! `main.rs`) are merged in as one more layer. Backend URLs are parsed into typed values
//! while the layers are read, and `validate` checks the rest before anything starts, so
//! a bad setting is named at start, not discovered at its first use.

use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::bus::{BusSettings, BusUrl};
use crate::engine::EngineSettings;
use crate::gate::GateUrl;
use crate::store::StoreUrl;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// Address the HTTP gateway listens on (port 0 picks a free port).
    pub listen: String,
    /// Stock gate: `local` or `redis://host:port[/db]`.
    pub gate: GateUrl,
    /// Order bus: `memory` or `kafka://host:port[,host:port]` (build with `--features kafka`).
    pub bus: BusUrl,
    /// Order store: `sqlite://PATH` or `postgres://…`.
    pub store: StoreUrl,
    /// Token for admin routes; admin routes are open when unset.
    pub admin_token: Option<String>,
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
    /// Orders that may wait for the store; past it, purchases are shed with 503.
    pub bus_capacity: usize,
    /// Most orders written in one transaction.
    pub batch_max: usize,
    /// Longest wait for the gate or the bus within a request, in ms; past it the buyer
    /// gets 503 `unavailable`.
    pub backend_timeout_ms: u64,
    /// How old a reservation without an answer from the bus must be before the sweeper
    /// takes its gateway for dead and gives the units back, in ms.
    pub hold_grace_ms: u64,
    /// How often the sweeper expires unpaid orders and finishes interrupted releases, in ms.
    pub sweep_interval_ms: u64,
    /// Prefix of the Kafka topic names (`<prefix>flashsale.orders`, …).
    pub topic_prefix: String,
    /// Partitions of the Kafka topics when flashsale creates them.
    pub kafka_partitions: i32,
    /// Copies per message of the topics flashsale creates (default: 3, or the number of
    /// brokers when fewer).
    pub kafka_replication_factor: Option<i32>,
    /// `min.insync.replicas` of those topics (default: replication factor − 1, ≥ 1).
    pub kafka_min_insync_replicas: Option<i32>,
    /// How long the producer keeps trying to deliver an order, retries included. Longer
    /// than a buyer's wait (`backend_timeout_ms`), shorter than `hold_grace_ms`.
    pub kafka_delivery_timeout_ms: u64,
    /// Consumer group of the workers.
    pub worker_group: String,
    /// How long a worker's batch waits for more messages, in ms.
    pub worker_linger_ms: u64,
    /// How long a retry waits for the first request with its key, in ms.
    pub replay_wait_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            gate: GateUrl::Local,
            bus: BusUrl::Memory,
            store: "sqlite://flashsale.db".parse().expect("a valid default"),
            admin_token: None,
            body_limit: 16 * 1024,
            bus_capacity: 8192,
            batch_max: 1024,
            replay_wait_ms: 2000,
            backend_timeout_ms: 1000,
            sweep_interval_ms: 1000,
            hold_grace_ms: 10_000,
            topic_prefix: String::new(),
            kafka_partitions: 4,
            kafka_replication_factor: None,
            kafka_min_insync_replicas: None,
            kafka_delivery_timeout_ms: 5000,
            worker_group: "flashsale-workers".into(),
            worker_linger_ms: 5,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A layer could not be read, or a value could not be parsed (figment names the key).
    #[error("{0}")]
    Read(#[from] Box<figment::Error>),
    #[error("setting `{setting}`: {reason}")]
    Invalid {
        setting: &'static str,
        reason: String,
    },
}

fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        reason: reason.into(),
    }
}

impl Config {
    /// Reads every layer, `flags` last (only its fields that are set), and validates.
    pub fn load(file: &Path, flags: &impl Serialize) -> Result<Config, ConfigError> {
        let config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::file(file))
            .merge(Env::prefixed("FLASHSALE_"))
            .merge(Serialized::defaults(flags))
            .extract()
            .map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what parsing cannot: ranges, and what this build can run.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.body_limit == 0 || self.body_limit > 64 * 1024 * 1024 {
            return Err(invalid("body_limit", "must be between 1 byte and 64 MiB"));
        }
        if self.bus_capacity == 0 {
            return Err(invalid("bus_capacity", "must be at least 1"));
        }
        if self.batch_max == 0 {
            return Err(invalid("batch_max", "must be at least 1"));
        }
        if self.backend_timeout_ms < 10 {
            return Err(invalid("backend_timeout_ms", "must be at least 10 ms"));
        }
        if self.sweep_interval_ms < 10 {
            return Err(invalid("sweep_interval_ms", "must be at least 10 ms"));
        }
        if self.kafka_partitions < 1 {
            return Err(invalid("kafka_partitions", "must be at least 1"));
        }
        if let Some(factor) = self.kafka_replication_factor
            && factor < 1
        {
            return Err(invalid("kafka_replication_factor", "must be at least 1"));
        }
        if let Some(min) = self.kafka_min_insync_replicas
            && (min < 1 || min > self.kafka_replication_factor.unwrap_or(3))
        {
            return Err(invalid(
                "kafka_min_insync_replicas",
                "must be between 1 and the replication factor",
            ));
        }
        if self.kafka_delivery_timeout_ms < self.backend_timeout_ms {
            return Err(invalid(
                "kafka_delivery_timeout_ms",
                "must be at least backend_timeout_ms (the buyer's wait)",
            ));
        }
        let deadline = self.bus_settings().delivery_deadline();
        if self.hold_grace_ms <= deadline.as_millis() as u64 {
            return Err(invalid(
                "hold_grace_ms",
                format!(
                    "must be longer than the delivery deadline ({} ms): a reservation \
                     still being delivered is not its gateway's death",
                    deadline.as_millis()
                ),
            ));
        }
        if self.worker_group.trim().is_empty() {
            return Err(invalid("worker_group", "must not be empty"));
        }
        if matches!(self.bus, BusUrl::Kafka { .. }) && !cfg!(feature = "kafka") {
            return Err(invalid("bus", crate::bus::NO_KAFKA));
        }
        Ok(())
    }

    pub fn backend_timeout(&self) -> Duration {
        Duration::from_millis(self.backend_timeout_ms)
    }

    pub fn engine_settings(&self) -> EngineSettings {
        EngineSettings {
            replay_wait: Duration::from_millis(self.replay_wait_ms),
            hold_grace: Duration::from_millis(self.hold_grace_ms),
            buyer_wait: self.backend_timeout(),
            delivery_deadline: self.bus_settings().delivery_deadline(),
            ..EngineSettings::default()
        }
    }

    pub fn bus_settings(&self) -> BusSettings {
        BusSettings {
            url: self.bus.clone(),
            capacity: self.bus_capacity,
            topic_prefix: self.topic_prefix.clone(),
            worker_group: self.worker_group.clone(),
            partitions: self.kafka_partitions,
            timeout: self.backend_timeout(),
            replication_factor: self.kafka_replication_factor,
            min_insync_replicas: self.kafka_min_insync_replicas,
            delivery_timeout: Duration::from_millis(self.kafka_delivery_timeout_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Default)]
    struct Flags {
        #[serde(skip_serializing_if = "Option::is_none")]
        listen: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        bus: Option<String>,
    }

    #[test]
    fn layers_override_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "flashsale.toml",
                "listen = \"0.0.0.0:1\"\nstore = \"sqlite://file.db\"\nbus_capacity = 7",
            )?;
            jail.set_env("FLASHSALE_STORE", "sqlite://env.db");
            let flags = Flags {
                listen: Some("127.0.0.1:9".into()),
                ..Default::default()
            };
            let config = Config::load(Path::new("flashsale.toml"), &flags).unwrap();
            assert_eq!(config.listen, "127.0.0.1:9");
            assert_eq!(config.store.as_str(), "sqlite://env.db");
            assert_eq!(config.bus_capacity, 7);
            assert_eq!(config.gate, GateUrl::Local);
            Ok(())
        });
    }

    #[test]
    fn a_bad_setting_is_named_at_start() {
        figment::Jail::expect_with(|jail| {
            let flags = Flags {
                bus: Some("rabbitmq://x".into()),
                ..Default::default()
            };
            let error = Config::load(Path::new("none.toml"), &flags).unwrap_err();
            assert!(error.to_string().contains("unsupported bus"), "{error}");
            jail.set_env("FLASHSALE_BATCH_MAX", "0");
            let error = Config::load(Path::new("none.toml"), &Flags::default()).unwrap_err();
            assert!(error.to_string().contains("`batch_max`"), "{error}");
            jail.set_env("FLASHSALE_BATCH_MAX", "10");
            jail.set_env("FLASHSALE_GATE", "memcached://x");
            let error = Config::load(Path::new("none.toml"), &Flags::default()).unwrap_err();
            assert!(error.to_string().contains("gate"), "{error}");
            Ok(())
        });
    }
}
