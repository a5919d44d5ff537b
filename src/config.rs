//! Settings, layered: defaults < `flashsale.toml` < `FLASHSALE_*` environment < flags.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// Address the HTTP gateway listens on (port 0 picks a free port).
    pub listen: String,
    /// Stock gate: `local` or `redis://host:port[/db]`.
    pub gate: String,
    /// Order bus: `memory` or `kafka://host:port[,host:port]` (build with `--features kafka`).
    pub bus: String,
    /// Order store: `sqlite://PATH` or `postgres://…`.
    pub store: String,
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
            gate: "local".into(),
            bus: "memory".into(),
            store: "sqlite://flashsale.db".into(),
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
            worker_group: "flashsale-workers".into(),
            worker_linger_ms: 5,
        }
    }
}

/// Settings given as flags; only those set override the other layers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bus: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,
}

impl Config {
    pub fn load(file: &Path, overrides: &Overrides) -> Result<Config, Box<figment::Error>> {
        Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::file(file))
            .merge(Env::prefixed("FLASHSALE_"))
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(Box::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_override_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "flashsale.toml",
                "listen = \"0.0.0.0:1\"\nstore = \"sqlite://file.db\"\nbus_capacity = 7",
            )?;
            jail.set_env("FLASHSALE_STORE", "sqlite://env.db");
            let flags = Overrides {
                listen: Some("127.0.0.1:9".into()),
                ..Default::default()
            };
            let config = Config::load(Path::new("flashsale.toml"), &flags).unwrap();
            assert_eq!(config.listen, "127.0.0.1:9");
            assert_eq!(config.store, "sqlite://env.db");
            assert_eq!(config.bus_capacity, 7);
            assert_eq!(config.gate, "local");
            Ok(())
        });
    }
}
