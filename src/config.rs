//! Settings, layered: `config/default.toml` (built in) < `flashsale.toml` < `FLASHSALE_*`
//! environment < flags. Each setting is declared once here (in `Config` or one of its
//! flattened groups; the Kafka group is `crate::bus::KafkaSettings`) and given its
//! default and its comment once, in `config/default.toml`; the command line's flags
//! (clap structs in `src/commands/`, with no defaults of their own) are merged in as one
//! more layer. Backend URLs are parsed into typed values while the layers are read, and
//! `validate` checks the rest before anything starts, so a bad setting is named at
//! start, not discovered at its first use.

use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::auth::{
    Auth, AuthError, BuyerKey, MIN_ADMIN_TOKEN, MIN_AUTH_SECRET, MIN_PAYMENT_SECRET,
};
/// The Kafka settings are the bus's own, flattened here like the other groups.
pub use crate::bus::KafkaSettings;
use crate::bus::{BusSettings, BusUrl};
use crate::domain::RateLimit;
use crate::engine::EngineSettings;
use crate::gate::{GateUrl, KeyPolicy, ReplicaAcks};
use crate::protect::rate::RateDefaults;
use crate::protect::{BreakerSettings, OverloadLimits, TrustedProxies};
use crate::store::StoreUrl;

/// How the example secrets under `deploy/` begin; refused at start.
const EXAMPLE_SECRET_PREFIX: &str = "change-me";
/// The default settings, commented: the first layer of every configuration, and the one
/// place a default is written.
pub const DEFAULTS: &str = include_str!("../config/default.toml");

/// Every setting. The groups are flattened: a setting's name (its TOML key, its
/// `FLASHSALE_*` variable, its JSON key) is its field's name, whichever group holds it.
/// What each means, and its default, is in `config/default.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// Address the HTTP gateway listens on (port 0 picks a free port).
    pub listen: String,
    /// A second address to listen on, for probes, the payment service and `/metrics`.
    pub internal_listen: Option<String>,
    /// Stock gate: `local`, `redis://host:port[/db]` or
    /// `redis-sentinel://host:port[,host:port…]/MASTER`.
    pub gate: GateUrl,
    /// Replicas that must have each of the Redis gate's writes before it counts (`WAIT`);
    /// unset: 1 on a Cluster, 0 otherwise (behind Sentinel a promoted master is fenced).
    pub gate_replica_acks: Option<u32>,
    /// How long a write waits for them, in ms; past it a reservation is given back (503).
    pub gate_replica_timeout_ms: u64,
    /// Order bus: `memory` or `kafka://host:port[,host:port]` (build with `--features kafka`).
    pub bus: BusUrl,
    /// Order store: `sqlite://PATH` or `postgres://…`.
    pub store: StoreUrl,
    /// In development mode (no credential), a first start on an empty store creates two
    /// sample sales, so that the page has something to buy.
    pub sample_sales: bool,
    /// Every how many seconds `serve` prints its status line; 0 (`--quiet`): never.
    pub status_interval_s: u64,
    /// How often a watched sale's live view is read, in ms.
    pub live_update_ms: u64,
    #[serde(flatten)]
    pub auth: AuthSettings,
    #[serde(flatten)]
    pub http: HttpLimits,
    #[serde(flatten)]
    pub protection: Protection,
    #[serde(flatten)]
    pub orders: OrderSettings,
    #[serde(flatten)]
    pub kafka: KafkaSettings,
}

/// Credentials and who may listen without them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthSettings {
    /// Token for admin routes (at least 16 bytes); with no credential configured at
    /// all, every route is open (development on loopback).
    pub admin_token: Option<String>,
    /// File holding the admin token (first line), so that it is not visible in `ps`.
    pub admin_token_file: Option<PathBuf>,
    /// HS256 secret (at least 32 bytes) of buyer tokens.
    pub auth_secret: Option<String>,
    /// File holding `auth_secret`.
    pub auth_secret_file: Option<PathBuf>,
    /// PEM file of an identity provider's public key that signs buyer tokens.
    pub auth_public_key: Option<PathBuf>,
    /// The `iss` buyer tokens must carry, when set.
    pub auth_issuer: Option<String>,
    /// The `aud` buyer tokens must name, when set.
    pub auth_audience: Option<String>,
    /// Secret (at least 16 bytes) the payment service signs payment confirmations with.
    pub payment_secret: Option<String>,
    /// File holding `payment_secret`.
    pub payment_secret_file: Option<PathBuf>,
    /// How far a payment signature's timestamp may be from this server's clock, in s.
    pub payment_tolerance_s: u64,
    /// Listen beyond loopback with no credential configured.
    pub insecure: bool,
    /// Buyers are authenticated in front of this server.
    pub buyers_authenticated_upstream: bool,
}

/// What a connection and a request may take: bodies, headers, connections, timeouts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HttpLimits {
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
    /// Largest body of `POST /api/sales`, in bytes.
    pub sale_body_limit: usize,
    /// Connections open at once.
    pub max_connections: usize,
    /// Connections open at once from one client address; 0: a quarter of
    /// `max_connections`.
    pub max_connections_per_ip: usize,
    /// Largest read buffer of a connection, in bytes: a request's header must fit.
    pub max_header_buffer: usize,
    /// Connections open at once on `internal_listen`.
    pub internal_max_connections: usize,
    /// A request's header must arrive within this, in ms (and an idle keep-alive
    /// connection is closed after it).
    pub header_read_timeout_ms: u64,
    /// A request's body must arrive within this, in ms.
    pub body_read_timeout_ms: u64,
    /// On SIGTERM, how long requests in flight may take to finish, in ms.
    pub shutdown_grace_ms: u64,
}

/// Rate limits, trusted proxies, overload shedding and circuit breakers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Protection {
    /// Purchases one buyer may make in one sale.
    pub rate_per_buyer: RateLimit,
    /// Purchases from one client address in one sale, and apart other API requests.
    pub rate_per_ip: RateLimit,
    /// Proxies (CIDRs or addresses) whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<String>,
    /// Purchases served at once; beyond it 503 `overloaded`.
    pub max_in_flight_purchases: usize,
    /// Longest a purchase may wait in the server before its decision, in ms.
    pub max_queue_time_ms: u64,
    /// Failures in a row of a backend after which requests fail fast.
    pub breaker_failures: u32,
    /// How long a tripped breaker fails fast before letting one probe through, in ms.
    pub breaker_cool_down_ms: u64,
}

/// How orders wait and flow: the bus's queue, batches, the waits of a request and of the
/// sweeper, idempotency keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderSettings {
    /// Orders that may wait for the store; past it, purchases are shed with 503.
    pub bus_capacity: usize,
    /// Most orders written in one transaction.
    pub batch_max: usize,
    /// Longest wait for the gate or the bus within a request, in ms.
    pub backend_timeout_ms: u64,
    /// How old an unanswered reservation must be before the sweeper gives it back, in ms.
    pub hold_grace_ms: u64,
    /// How often the sweeper runs, in ms.
    pub sweep_interval_ms: u64,
    /// How long a retry waits for the first request with its key, in ms.
    pub replay_wait_ms: u64,
    /// How long an accepted idempotency key is kept, in s.
    pub idempotency_ttl_s: u64,
    /// Live idempotency keys a buyer may hold in one sale.
    pub max_keys_per_buyer: u32,
}

/// `config/default.toml`'s settings.
impl Default for Config {
    fn default() -> Self {
        static DEFAULT: LazyLock<Config> = LazyLock::new(|| {
            Figment::from(Toml::string(DEFAULTS))
                .extract()
                .expect("config/default.toml sets every setting")
        });
        DEFAULT.clone()
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
        let mut config = Config::extract(
            Figment::from(Toml::string(DEFAULTS))
                .merge(Toml::file(file))
                .merge(Env::prefixed("FLASHSALE_"))
                .merge(Serialized::defaults(flags)),
        )?;
        config.read_secret_files()?;
        config.validate()?;
        Ok(config)
    }

    /// The defaults with `settings` over them (a map of setting names to values), no file
    /// and no environment: what the in-process test server and the examples use.
    pub fn from_settings(settings: &impl Serialize) -> Result<Config, ConfigError> {
        let mut config = Config::extract(
            Figment::from(Toml::string(DEFAULTS)).merge(Serialized::defaults(settings)),
        )?;
        config.read_secret_files()?;
        config.validate()?;
        Ok(config)
    }

    /// The settings of `layers`. serde reads a flattened group from a buffered copy of
    /// the values, where figment cannot say which key (and which layer) a bad value came
    /// from; so when reading fails, each group is read alone, which names it.
    fn extract(layers: Figment) -> Result<Config, ConfigError> {
        layers.extract::<Config>().map_err(|error| {
            let named = [
                layers.extract::<AuthSettings>().err(),
                layers.extract::<HttpLimits>().err(),
                layers.extract::<Protection>().err(),
                layers.extract::<OrderSettings>().err(),
                layers.extract::<KafkaSettings>().err(),
            ];
            let error = named.into_iter().flatten().next().unwrap_or(error);
            ConfigError::Read(Box::new(error))
        })
    }

    /// Replaces each `*_file` secret setting by the file's first line.
    fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        read_secret(
            "admin_token",
            &mut self.auth.admin_token,
            self.auth.admin_token_file.take(),
        )?;
        read_secret(
            "auth_secret",
            &mut self.auth.auth_secret,
            self.auth.auth_secret_file.take(),
        )?;
        read_secret(
            "payment_secret",
            &mut self.auth.payment_secret,
            self.auth.payment_secret_file.take(),
        )
    }

    /// The credentials `serve` checks, from these settings.
    pub fn auth(&self) -> Result<Auth, AuthError> {
        let buyer_key = match (&self.auth.auth_secret, &self.auth.auth_public_key) {
            (Some(secret), _) => Some(BuyerKey::Secret(secret)),
            (None, Some(path)) => Some(BuyerKey::PublicKeyFile(path)),
            (None, None) => None,
        };
        Auth::new(
            self.auth.admin_token.as_deref(),
            buyer_key,
            &crate::auth::TokenScope {
                issuer: self.auth.auth_issuer.clone(),
                audience: self.auth.auth_audience.clone(),
            },
            self.auth.payment_secret.as_deref(),
            Duration::from_secs(self.auth.payment_tolerance_s),
        )
    }

    fn validate_credentials(&self) -> Result<(), ConfigError> {
        // deploy/'s example secrets are public: a deployment must set its own.
        for (name, value) in [
            ("admin_token", &self.auth.admin_token),
            ("auth_secret", &self.auth.auth_secret),
            ("payment_secret", &self.auth.payment_secret),
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
        if let Some(token) = &self.auth.admin_token
            && token.len() < MIN_ADMIN_TOKEN
        {
            return Err(invalid(
                "admin_token",
                format!("must be at least {MIN_ADMIN_TOKEN} bytes (an empty token is no token)"),
            ));
        }
        if let Some(secret) = &self.auth.auth_secret
            && secret.len() < MIN_AUTH_SECRET
        {
            return Err(invalid(
                "auth_secret",
                format!("must be at least {MIN_AUTH_SECRET} bytes"),
            ));
        }
        if self.auth.auth_secret.is_some() && self.auth.auth_public_key.is_some() {
            return Err(invalid(
                "auth_public_key",
                "give either auth_secret (HS256) or auth_public_key, not both",
            ));
        }
        if let Some(secret) = &self.auth.payment_secret
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
        self.auth.admin_token.is_none()
            && self.auth.auth_secret.is_none()
            && self.auth.auth_public_key.is_none()
            && self.auth.payment_secret.is_none()
    }

    /// Checks what parsing cannot: ranges, and what this build can run.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_credentials()?;
        if self.http.body_limit == 0 || self.http.body_limit > 64 * 1024 * 1024 {
            return Err(invalid("body_limit", "must be between 1 byte and 64 MiB"));
        }
        if !(50..=60_000).contains(&self.live_update_ms) {
            return Err(invalid("live_update_ms", "must be 50 to 60000 ms"));
        }
        if self.http.sale_body_limit == 0 || self.http.sale_body_limit > 64 * 1024 * 1024 {
            return Err(invalid(
                "sale_body_limit",
                "must be between 1 byte and 64 MiB",
            ));
        }
        if self.http.max_connections == 0 {
            return Err(invalid("max_connections", "must be at least 1"));
        }
        if self.http.internal_max_connections == 0 {
            return Err(invalid("internal_max_connections", "must be at least 1"));
        }
        if !(8192..=1024 * 1024).contains(&self.http.max_header_buffer) {
            return Err(invalid("max_header_buffer", "must be 8192 bytes to 1 MiB"));
        }
        for (setting, ms) in [
            ("header_read_timeout_ms", self.http.header_read_timeout_ms),
            ("body_read_timeout_ms", self.http.body_read_timeout_ms),
        ] {
            if ms < 100 {
                return Err(invalid(setting, "must be at least 100 ms"));
            }
        }
        if self.orders.bus_capacity == 0 {
            return Err(invalid("bus_capacity", "must be at least 1"));
        }
        if self.orders.batch_max == 0 {
            return Err(invalid("batch_max", "must be at least 1"));
        }
        if self.orders.backend_timeout_ms < 10 {
            return Err(invalid("backend_timeout_ms", "must be at least 10 ms"));
        }
        if self.gate_replica_timeout_ms < 1
            || self.gate_replica_timeout_ms >= self.orders.backend_timeout_ms
        {
            return Err(invalid(
                "gate_replica_timeout_ms",
                "must be at least 1 ms and shorter than backend_timeout_ms (the buyer's wait)",
            ));
        }
        if self.orders.sweep_interval_ms < 10 {
            return Err(invalid("sweep_interval_ms", "must be at least 10 ms"));
        }
        if self.kafka.kafka_partitions < 1 {
            return Err(invalid("kafka_partitions", "must be at least 1"));
        }
        if let Some(factor) = self.kafka.kafka_replication_factor
            && factor < 1
        {
            return Err(invalid("kafka_replication_factor", "must be at least 1"));
        }
        if let Some(min) = self.kafka.kafka_min_insync_replicas
            && (min < 1 || min > self.kafka.kafka_replication_factor.unwrap_or(3))
        {
            return Err(invalid(
                "kafka_min_insync_replicas",
                "must be between 1 and the replication factor",
            ));
        }
        if self.kafka.kafka_delivery_timeout_ms < self.orders.backend_timeout_ms {
            return Err(invalid(
                "kafka_delivery_timeout_ms",
                "must be at least backend_timeout_ms (the buyer's wait)",
            ));
        }
        let deadline = self.bus_settings().delivery_deadline();
        if self.orders.hold_grace_ms <= deadline.as_millis() as u64 {
            return Err(invalid(
                "hold_grace_ms",
                format!(
                    "must be longer than the delivery deadline ({} ms): a reservation \
                     still being delivered is not its gateway's death",
                    deadline.as_millis()
                ),
            ));
        }
        if self.orders.idempotency_ttl_s < 60 {
            return Err(invalid("idempotency_ttl_s", "must be at least 60 s"));
        }
        if self.orders.max_keys_per_buyer == 0 {
            return Err(invalid("max_keys_per_buyer", "must be at least 1"));
        }
        self.trusted_proxies()?;
        if self.protection.max_in_flight_purchases == 0 {
            return Err(invalid("max_in_flight_purchases", "must be at least 1"));
        }
        if self.protection.breaker_failures == 0 {
            return Err(invalid("breaker_failures", "must be at least 1"));
        }
        if self.protection.breaker_cool_down_ms < 10 {
            return Err(invalid("breaker_cool_down_ms", "must be at least 10 ms"));
        }
        if self.protection.max_queue_time_ms < 10 {
            return Err(invalid("max_queue_time_ms", "must be at least 10 ms"));
        }
        if self.kafka.worker_group.trim().is_empty() {
            return Err(invalid("worker_group", "must not be empty"));
        }
        if matches!(self.bus, BusUrl::Kafka { .. }) && !cfg!(feature = "kafka") {
            return Err(invalid("bus", crate::bus::NO_KAFKA));
        }
        Ok(())
    }

    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.http.body_read_timeout_ms)
    }

    pub fn key_policy(&self) -> KeyPolicy {
        KeyPolicy {
            ttl: Duration::from_secs(self.orders.idempotency_ttl_s),
            max_per_buyer: self.orders.max_keys_per_buyer,
        }
    }

    pub fn trusted_proxies(&self) -> Result<TrustedProxies, ConfigError> {
        self.protection
            .trusted_proxies
            .iter()
            .map(|n| TrustedProxies::parse_network(n).map_err(|e| invalid("trusted_proxies", e)))
            .collect::<Result<_, _>>()
            .map(TrustedProxies::new)
    }

    pub fn overload_limits(&self) -> OverloadLimits {
        OverloadLimits {
            max_in_flight_purchases: self.protection.max_in_flight_purchases,
            max_queue_time: Duration::from_millis(self.protection.max_queue_time_ms),
        }
    }

    pub fn rate_defaults(&self) -> RateDefaults {
        RateDefaults {
            per_buyer: self.protection.rate_per_buyer,
            per_ip: self.protection.rate_per_ip,
        }
    }

    /// The replicas each write of a Redis gate waits for (`gate_replica_acks`).
    pub fn replica_acks(&self) -> ReplicaAcks {
        // Behind Sentinel a promoted master is fenced and rebuilt instead (docs/redis.md).
        let cluster =
            matches!(&self.gate, GateUrl::Redis(url) if url.starts_with("redis-cluster://"));
        ReplicaAcks {
            replicas: self
                .gate_replica_acks
                .unwrap_or(if cluster { 1 } else { 0 }),
            timeout: Duration::from_millis(self.gate_replica_timeout_ms),
        }
    }

    pub fn backend_timeout(&self) -> Duration {
        Duration::from_millis(self.orders.backend_timeout_ms)
    }

    pub fn engine_settings(&self) -> EngineSettings {
        EngineSettings {
            replay_wait: Duration::from_millis(self.orders.replay_wait_ms),
            hold_grace: Duration::from_millis(self.orders.hold_grace_ms),
            buyer_wait: self.backend_timeout(),
            delivery_deadline: self.bus_settings().delivery_deadline(),
            breakers: BreakerSettings {
                failures_to_open: self.protection.breaker_failures,
                cool_down: Duration::from_millis(self.protection.breaker_cool_down_ms),
            },
            ..EngineSettings::default()
        }
    }

    pub fn bus_settings(&self) -> BusSettings {
        BusSettings {
            url: self.bus.clone(),
            capacity: self.orders.bus_capacity,
            timeout: self.backend_timeout(),
            kafka: self.kafka.clone(),
        }
    }
}

#[cfg(test)]
mod tests;
