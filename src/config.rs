//! Settings, layered: defaults < `flashsale.toml` < `FLASHSALE_*` environment < flags.
//! Each setting is declared once here; the command line's flags (clap structs in
//! `main.rs`) are merged in as one more layer. Backend URLs are parsed into typed values
//! while the layers are read, and `validate` checks the rest before anything starts, so
//! a bad setting is named at start, not discovered at its first use.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::auth::{
    Auth, AuthError, BuyerKey, MIN_ADMIN_TOKEN, MIN_AUTH_SECRET, MIN_PAYMENT_SECRET,
};
use crate::bus::{BusSettings, BusUrl};
use crate::domain::RateLimit;
use crate::engine::EngineSettings;
use crate::gate::{GateUrl, KeyPolicy};
use crate::protect::rate::RateDefaults;
use crate::protect::{BreakerSettings, OverloadLimits, TrustedProxies};
use crate::store::StoreUrl;

/// How the example secrets under `deploy/` begin; refused at start.
const EXAMPLE_SECRET_PREFIX: &str = "change-me";
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
    /// Token for admin routes (at least 16 bytes); with no credential configured at
    /// all, every route is open (development on loopback).
    pub admin_token: Option<String>,
    /// File holding the admin token (first line), so that it is not visible in `ps`.
    pub admin_token_file: Option<PathBuf>,
    /// HS256 secret (at least 32 bytes) of buyer tokens: buyer routes then need
    /// `Authorization: Bearer <JWT>` with `sub` and `exp`.
    pub auth_secret: Option<String>,
    /// File holding `auth_secret`.
    pub auth_secret_file: Option<PathBuf>,
    /// PEM file of an identity provider's public key (RS256/384/512, ES256/384) that
    /// signs buyer tokens; instead of `auth_secret`.
    pub auth_public_key: Option<PathBuf>,
    /// The `iss` buyer tokens must carry (refused without it), when set.
    pub auth_issuer: Option<String>,
    /// The `aud` buyer tokens must name (refused without it), when set.
    pub auth_audience: Option<String>,
    /// Secret (at least 16 bytes) the payment service signs payment confirmations with.
    pub payment_secret: Option<String>,
    /// File holding `payment_secret`.
    pub payment_secret_file: Option<PathBuf>,
    /// How far a payment signature's timestamp may be from this server's clock, in s.
    pub payment_tolerance_s: u64,
    /// Listen beyond loopback with no credential configured (anyone may buy as anyone
    /// and create sales): only behind something that authenticates.
    pub insecure: bool,
    /// Buyers are authenticated in front of this server (the body's `user_id` is who a
    /// trusted front says): with credentials set but no buyer-token key, listening
    /// beyond loopback is refused without it.
    pub buyers_authenticated_upstream: bool,
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
    /// In development mode (no credential), a first start on an empty store creates two
    /// sample sales, so that the page has something to buy.
    pub sample_sales: bool,
    /// Every how many seconds `serve` prints its status line; 0 (`--quiet`): never.
    pub status_interval_s: u64,
    /// How often a watched sale's live view is read, in ms: its watchers get at most one
    /// update per this, whatever the purchase rate.
    pub live_update_ms: u64,
    /// Largest body of `POST /api/sales`, in bytes: a sale of thousands of seats lists
    /// each (10,000 seats take ~300 KiB).
    pub sale_body_limit: usize,
    /// Connections open at once; beyond it a new connection is closed at once.
    pub max_connections: usize,
    /// Connections open at once from one client address (IPv6: one /64); 0 (the
    /// default) is a quarter of `max_connections`. A trusted proxy is not limited.
    pub max_connections_per_ip: usize,
    /// Largest read buffer of a connection, in bytes (at least 8192): a request's
    /// header must fit, and each open connection may take this much.
    pub max_header_buffer: usize,
    /// A second address to listen on, for probes, the payment service and `/metrics`
    /// (e.g. a port the load balancer does not expose): its own connections, which
    /// buyers filling the public listener cannot take.
    pub internal_listen: Option<String>,
    /// Connections open at once on `internal_listen`.
    pub internal_max_connections: usize,
    /// A request's header must arrive within this, in ms; an idle keep-alive connection
    /// is closed after it too.
    pub header_read_timeout_ms: u64,
    /// A request's body must arrive within this, in ms (else 408).
    pub body_read_timeout_ms: u64,
    /// On SIGTERM, how long requests in flight may take to finish, in ms.
    pub shutdown_grace_ms: u64,
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
    /// How long a retry waits for the first request with its key, in ms; then 409
    /// `request_in_progress`.
    pub replay_wait_ms: u64,
    /// How long an accepted idempotency key is kept, in s (and never less than an hour
    /// past its sale's end and payment window); then it is forgotten.
    pub idempotency_ttl_s: u64,
    /// Live idempotency keys a buyer may hold in one sale; a new one beyond is 429.
    pub max_keys_per_buyer: u32,
    /// Purchases one buyer may make in one sale: `10/s`, `600/min burst 50`, or `off`
    /// (a sale's `rate_limits` override it). Beyond it: 429 `rate_limited`.
    pub rate_per_buyer: RateLimit,
    /// Purchases from one client address in one sale, and, apart, other API requests
    /// from it (IPv6 counted by /64).
    pub rate_per_ip: RateLimit,
    /// Proxies (CIDRs or addresses) whose `X-Forwarded-For` names the client; from
    /// anyone else the header is ignored.
    pub trusted_proxies: Vec<String>,
    /// Purchases served at once; beyond it a purchase gets 503 `overloaded` at once.
    pub max_in_flight_purchases: usize,
    /// Longest a purchase may wait in the server (from its head's arrival) before its
    /// decision, in ms; past it, 503 `timeout` instead of a late decision.
    pub max_queue_time_ms: u64,
    /// Failures in a row of a backend (gate, bus, store) on the request path after
    /// which requests fail fast (503) instead of calling it, for `breaker_cool_down_ms`.
    pub breaker_failures: u32,
    /// How long a tripped breaker fails fast before letting one probe through, in ms.
    pub breaker_cool_down_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            gate: GateUrl::Local,
            bus: BusUrl::Memory,
            store: "sqlite://flashsale.db".parse().expect("a valid default"),
            admin_token: None,
            admin_token_file: None,
            auth_secret: None,
            auth_secret_file: None,
            auth_public_key: None,
            auth_issuer: None,
            auth_audience: None,
            payment_secret: None,
            payment_secret_file: None,
            payment_tolerance_s: 300,
            insecure: false,
            buyers_authenticated_upstream: false,
            body_limit: 16 * 1024,
            sale_body_limit: 1024 * 1024,
            live_update_ms: 250,
            status_interval_s: 5,
            sample_sales: true,
            max_connections: 10_000,
            max_connections_per_ip: 0,
            max_header_buffer: 32 * 1024,
            internal_listen: None,
            internal_max_connections: 256,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 10_000,
            shutdown_grace_ms: 10_000,
            bus_capacity: 8192,
            batch_max: 1024,
            replay_wait_ms: 2000,
            idempotency_ttl_s: 24 * 3600,
            max_keys_per_buyer: 16,
            rate_per_buyer: "5/s burst 10".parse().expect("a valid default"),
            rate_per_ip: "100/s burst 200".parse().expect("a valid default"),
            trusted_proxies: Vec::new(),
            max_in_flight_purchases: 1024,
            max_queue_time_ms: 500,
            breaker_failures: 5,
            breaker_cool_down_ms: 2000,
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

/// `value` from `file` (its first line), unless both are given.
fn read_secret(
    setting: &'static str,
    value: &mut Option<String>,
    file: Option<PathBuf>,
) -> Result<(), ConfigError> {
    let Some(file) = file else { return Ok(()) };
    if value.is_some() {
        return Err(invalid(setting, "given both directly and as a file"));
    }
    let text = std::fs::read_to_string(&file)
        .map_err(|e| invalid(setting, format!("cannot read {}: {e}", file.display())))?;
    *value = Some(text.lines().next().unwrap_or("").trim_end().to_string());
    Ok(())
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
        let mut config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::file(file))
            .merge(Env::prefixed("FLASHSALE_"))
            .merge(Serialized::defaults(flags))
            .extract()
            .map_err(Box::new)?;
        config.read_secret_files()?;
        config.validate()?;
        Ok(config)
    }

    /// The defaults with `settings` over them (a map of setting names to values), no file
    /// and no environment: what the in-process test server and the examples use.
    pub fn from_settings(settings: &impl Serialize) -> Result<Config, ConfigError> {
        let mut config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Serialized::defaults(settings))
            .extract()
            .map_err(Box::new)?;
        config.read_secret_files()?;
        config.validate()?;
        Ok(config)
    }

    /// Replaces each `*_file` secret setting by the file's first line.
    fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        read_secret(
            "admin_token",
            &mut self.admin_token,
            self.admin_token_file.take(),
        )?;
        read_secret(
            "auth_secret",
            &mut self.auth_secret,
            self.auth_secret_file.take(),
        )?;
        read_secret(
            "payment_secret",
            &mut self.payment_secret,
            self.payment_secret_file.take(),
        )
    }

    /// The credentials `serve` checks, from these settings.
    pub fn auth(&self) -> Result<Auth, AuthError> {
        let buyer_key = match (&self.auth_secret, &self.auth_public_key) {
            (Some(secret), _) => Some(BuyerKey::Secret(secret)),
            (None, Some(path)) => Some(BuyerKey::PublicKeyFile(path)),
            (None, None) => None,
        };
        Auth::new(
            self.admin_token.as_deref(),
            buyer_key,
            &crate::auth::TokenScope {
                issuer: self.auth_issuer.clone(),
                audience: self.auth_audience.clone(),
            },
            self.payment_secret.as_deref(),
            Duration::from_secs(self.payment_tolerance_s),
        )
    }

    fn validate_credentials(&self) -> Result<(), ConfigError> {
        // deploy/'s example secrets are public: a deployment must set its own.
        for (name, value) in [
            ("admin_token", &self.admin_token),
            ("auth_secret", &self.auth_secret),
            ("payment_secret", &self.payment_secret),
        ] {
            if value
                .as_deref()
                .is_some_and(|v| v.starts_with(EXAMPLE_SECRET_PREFIX))
            {
                return Err(invalid(
                    name,
                    "is deploy/'s example value (starts with `change-me`): set a secret of your own",
                ));
            }
        }
        if let Some(token) = &self.admin_token
            && token.len() < MIN_ADMIN_TOKEN
        {
            return Err(invalid(
                "admin_token",
                format!("must be at least {MIN_ADMIN_TOKEN} bytes (an empty token is no token)"),
            ));
        }
        if let Some(secret) = &self.auth_secret
            && secret.len() < MIN_AUTH_SECRET
        {
            return Err(invalid(
                "auth_secret",
                format!("must be at least {MIN_AUTH_SECRET} bytes"),
            ));
        }
        if self.auth_secret.is_some() && self.auth_public_key.is_some() {
            return Err(invalid(
                "auth_public_key",
                "give either auth_secret (HS256) or auth_public_key, not both",
            ));
        }
        if let Some(secret) = &self.payment_secret
            && secret.len() < MIN_PAYMENT_SECRET
        {
            return Err(invalid(
                "payment_secret",
                format!("must be at least {MIN_PAYMENT_SECRET} bytes"),
            ));
        }
        Ok(())
    }

    /// Whether nothing guards the routes (development mode).
    pub fn is_open(&self) -> bool {
        self.admin_token.is_none()
            && self.auth_secret.is_none()
            && self.auth_public_key.is_none()
            && self.payment_secret.is_none()
    }

    /// Checks what parsing cannot: ranges, and what this build can run.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_credentials()?;
        if self.body_limit == 0 || self.body_limit > 64 * 1024 * 1024 {
            return Err(invalid("body_limit", "must be between 1 byte and 64 MiB"));
        }
        if !(50..=60_000).contains(&self.live_update_ms) {
            return Err(invalid("live_update_ms", "must be 50 to 60000 ms"));
        }
        if self.sale_body_limit == 0 || self.sale_body_limit > 64 * 1024 * 1024 {
            return Err(invalid(
                "sale_body_limit",
                "must be between 1 byte and 64 MiB",
            ));
        }
        if self.max_connections == 0 {
            return Err(invalid("max_connections", "must be at least 1"));
        }
        if self.internal_max_connections == 0 {
            return Err(invalid("internal_max_connections", "must be at least 1"));
        }
        if !(8192..=1024 * 1024).contains(&self.max_header_buffer) {
            return Err(invalid("max_header_buffer", "must be 8192 bytes to 1 MiB"));
        }
        for (setting, ms) in [
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("body_read_timeout_ms", self.body_read_timeout_ms),
        ] {
            if ms < 100 {
                return Err(invalid(setting, "must be at least 100 ms"));
            }
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
        if self.idempotency_ttl_s < 60 {
            return Err(invalid("idempotency_ttl_s", "must be at least 60 s"));
        }
        if self.max_keys_per_buyer == 0 {
            return Err(invalid("max_keys_per_buyer", "must be at least 1"));
        }
        self.trusted_proxies()?;
        if self.max_in_flight_purchases == 0 {
            return Err(invalid("max_in_flight_purchases", "must be at least 1"));
        }
        if self.breaker_failures == 0 {
            return Err(invalid("breaker_failures", "must be at least 1"));
        }
        if self.breaker_cool_down_ms < 10 {
            return Err(invalid("breaker_cool_down_ms", "must be at least 10 ms"));
        }
        if self.max_queue_time_ms < 10 {
            return Err(invalid("max_queue_time_ms", "must be at least 10 ms"));
        }
        if self.worker_group.trim().is_empty() {
            return Err(invalid("worker_group", "must not be empty"));
        }
        if matches!(self.bus, BusUrl::Kafka { .. }) && !cfg!(feature = "kafka") {
            return Err(invalid("bus", crate::bus::NO_KAFKA));
        }
        Ok(())
    }

    pub fn connection_limits(&self) -> crate::server::ConnectionLimits {
        crate::server::ConnectionLimits {
            max_connections: self.max_connections,
            max_connections_per_ip: match self.max_connections_per_ip {
                0 => (self.max_connections / 4).max(1),
                n => n,
            },
            max_buffer: self.max_header_buffer,
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
        }
    }

    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.body_read_timeout_ms)
    }

    pub fn key_policy(&self) -> KeyPolicy {
        KeyPolicy {
            ttl: Duration::from_secs(self.idempotency_ttl_s),
            max_per_buyer: self.max_keys_per_buyer,
        }
    }

    pub fn trusted_proxies(&self) -> Result<TrustedProxies, ConfigError> {
        self.trusted_proxies
            .iter()
            .map(|n| TrustedProxies::parse_network(n).map_err(|e| invalid("trusted_proxies", e)))
            .collect::<Result<_, _>>()
            .map(TrustedProxies::new)
    }

    pub fn overload_limits(&self) -> OverloadLimits {
        OverloadLimits {
            max_in_flight_purchases: self.max_in_flight_purchases,
            max_queue_time: Duration::from_millis(self.max_queue_time_ms),
        }
    }

    pub fn rate_defaults(&self) -> RateDefaults {
        RateDefaults {
            per_buyer: self.rate_per_buyer,
            per_ip: self.rate_per_ip,
        }
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
            breakers: BreakerSettings {
                failures_to_open: self.breaker_failures,
                cool_down: Duration::from_millis(self.breaker_cool_down_ms),
            },
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

    /// Issue #21: on Kafka an order may land up to a request timeout and librdkafka's
    /// one-second scan after its delivery timeout; a hold younger than that is not its
    /// gateway's death, and a rebuild waits that long.
    #[test]
    fn the_kafka_delivery_deadline_covers_a_late_retry() {
        let mut config = Config {
            bus: BusUrl::Kafka {
                brokers: "127.0.0.1:9092".into(),
            },
            kafka_delivery_timeout_ms: 3_000,
            ..Config::default()
        };
        assert_eq!(
            config.bus_settings().delivery_deadline(),
            Duration::from_millis(3_000 + 1_000 + 1_000)
        );
        config.hold_grace_ms = 4_000;
        let error = config.validate().unwrap_err();
        assert!(error.to_string().contains("hold_grace_ms"), "{error}");
        config.hold_grace_ms = 5_001;
        if cfg!(feature = "kafka") {
            config.validate().unwrap();
        }
    }
}
