//! Builds an engine from its settings and serves it over HTTP: shared by `serve`,
//! `demo`, the benchmarks and the tests, so all of them run the same code.
//!
//! The server owns every background task it starts and stops them in one visible
//! sequence (`stop`): stop accepting and finish the requests in flight, stop the
//! sweeper, then close the in-process bus and let its writer store what it holds.

mod connections;

pub use connections::ConnectionLimits;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppParts, AppState};
use crate::bus::{self, BusError};
use crate::config::Config;
use crate::engine::{self, Engine, EngineError};
use crate::gate::{self, GateError};
use crate::protect::{Overload, RateLimiters};
use crate::store::{self, StoreError};
use crate::worker;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Gate(#[from] GateError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("engine: {0}")]
    Engine(#[from] EngineError),
    #[error("cannot listen on {0}: {1}")]
    Listen(String, std::io::Error),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("credentials: {0}")]
    Auth(#[from] crate::auth::AuthError),
    #[error(
        "refusing to listen on {0} with no credential configured (anyone could buy as \
         anyone and create sales): set admin_token and auth_secret / auth_public_key, \
         listen on loopback, or pass --insecure"
    )]
    Insecure(SocketAddr),
    #[error(
        "refusing to listen on {0} without buyer tokens (anyone could buy as anyone and \
         read or cancel anyone's order): set auth_secret / auth_public_key, listen on \
         loopback, or pass --buyers-authenticated-upstream behind a front that \
         authenticates buyers"
    )]
    AnonymousBuyers(SocketAddr),
}

/// A server running in this process.
pub struct Server {
    pub addr: SocketAddr,
    /// Where the internal listener is, if one was asked for (`internal_listen`).
    pub internal_addr: Option<SocketAddr>,
    internal: Option<JoinHandle<()>>,
    /// Cancelled to stop the HTTP server, then the sweeper, then the writer.
    stop_http: CancellationToken,
    stop_sweeper: CancellationToken,
    stop_writer: CancellationToken,
    http: JoinHandle<()>,
    sweeper: JoinHandle<()>,
    /// Drops idle rate-limit keys every second (bounded memory).
    forgetter: JoinHandle<()>,
    /// The in-process bus's writer (none on Kafka: workers are processes of their own).
    writer: Option<JoinHandle<()>>,
}

impl Server {
    pub async fn start(config: &Config) -> Result<Server, StartError> {
        let auth = Arc::new(config.auth()?);
        if !config.is_open() && config.auth.admin_token.is_none() {
            return Err(StartError::Auth(crate::auth::AuthError::Setting(
                "admin_token is needed once buyer tokens or payment signatures are on: \
                 without it nobody could create a sale"
                    .into(),
            )));
        }
        // Beyond loopback, buyers must be who they say: with nothing configured only
        // `--insecure` allows it, and with some credentials but no buyer-token key only
        // a front that authenticates buyers (issue #21: an admin token alone let anyone
        // buy as anyone).
        let anonymous_buyers = !auth.buyers_need_tokens();
        let refusal = if config.is_open() {
            (!config.auth.insecure).then_some(StartError::Insecure as fn(SocketAddr) -> StartError)
        } else {
            (anonymous_buyers && !config.auth.buyers_authenticated_upstream)
                .then_some(StartError::AnonymousBuyers as fn(SocketAddr) -> StartError)
        };
        if let Some(refusal) = refusal {
            let addrs = tokio::net::lookup_host(&config.listen)
                .await
                .map_err(|e| StartError::Listen(config.listen.clone(), e))?;
            if let Some(exposed) = addrs.into_iter().find(|a| !a.ip().is_loopback()) {
                return Err(refusal(exposed));
            }
        }
        let gate = gate::connect(
            &config.gate,
            config.backend_timeout(),
            config.key_policy(),
            config.replica_acks(),
        )
        .await?;
        let (store, tickets) = store::connect_with_tickets(&config.store).await?;
        let (bus, inbox) = bus::connect(&config.bus_settings()).await?;
        let stop_writer = CancellationToken::new();
        let writer = inbox.map(|inbox| {
            tokio::spawn(worker::run_group_commit(
                inbox,
                store.clone(),
                config.orders.batch_max,
                stop_writer.clone(),
            ))
        });
        let engine = Engine::start(gate, bus, store, config.engine_settings()).await?;
        let engine = Arc::new(engine);
        let line = crate::line::Line::start(engine.clone(), tickets).await?;
        if config.sample_sales && config.is_open() {
            create_sample_sales(&engine).await?;
        }

        let listener = TcpListener::bind(&config.listen)
            .await
            .map_err(|e| StartError::Listen(config.listen.clone(), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| StartError::Listen(config.listen.clone(), e))?;
        // Bound before the engine's background work needs it: probes reach the internal
        // listener as soon as the public one answers.
        let internal = match &config.internal_listen {
            Some(address) => Some(
                TcpListener::bind(address)
                    .await
                    .map_err(|e| StartError::Listen(address.clone(), e))?,
            ),
            None => None,
        };
        let internal_addr = internal
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()
            .map_err(|e| StartError::Listen(config.listen.clone(), e))?;
        let admission = Arc::new(engine::Admission::new(
            engine.clone(),
            Arc::new(RateLimiters::new(config.rate_defaults())),
            Arc::new(Overload::new(config.overload_limits())),
            auth.buyers_need_tokens(),
        ));
        let trusted_proxies = Arc::new(config.trusted_proxies().map_err(StartError::Config)?);
        let stop_sweeper = CancellationToken::new();
        let stop_http = CancellationToken::new();
        let state = AppState::new(AppParts {
            engine: engine.clone(),
            auth,
            admission: admission.clone(),
            trusted_proxies: trusted_proxies.clone(),
            feeds: crate::live::SaleFeeds::new(
                engine.clone(),
                std::time::Duration::from_millis(config.live_update_ms),
                stop_http.clone(),
            ),
            metrics: Arc::new(crate::exporter::MetricsPage::new()),
            line,
        });
        tokio::spawn(crate::exporter::watch_bus(
            config.bus_settings(),
            std::time::Duration::from_secs(5),
            stop_sweeper.clone(),
        ));
        let app = api::router(
            state,
            api::BodyLimits {
                default: config.http.body_limit,
                create_sale: config.http.sale_body_limit,
            },
            config.body_read_timeout(),
        );

        if config.status_interval_s > 0 {
            // Ends with the sweeper's token.
            tokio::spawn(crate::exporter::print_status(
                engine.clone(),
                std::time::Duration::from_secs(config.status_interval_s),
                stop_sweeper.clone(),
            ));
        }
        let sweeper = tokio::spawn(engine::run_sweeper(
            engine,
            std::time::Duration::from_millis(config.orders.sweep_interval_ms),
            stop_sweeper.clone(),
        ));
        let forgetter = tokio::spawn(forget_idle_rate_keys(admission, stop_sweeper.clone()));
        let public_limits = ConnectionLimits::from_config(&config.http);
        // The internal listener's slots are its own; its clients (probes, the payment
        // service, a scraper) are few and known, so no per-address share.
        let internal = internal.map(|listener| {
            let limits = ConnectionLimits {
                max_connections: config.http.internal_max_connections,
                max_connections_per_ip: config.http.internal_max_connections,
                ..public_limits
            };
            tokio::spawn(connections::serve(
                listener,
                app.clone(),
                limits,
                trusted_proxies.clone(),
                stop_http.clone(),
            ))
        });
        let http = tokio::spawn(connections::serve(
            listener,
            app,
            public_limits,
            trusted_proxies,
            stop_http.clone(),
        ));
        Ok(Server {
            addr,
            internal_addr,
            internal,
            stop_http,
            stop_sweeper,
            stop_writer,
            http,
            sweeper,
            forgetter,
            writer,
        })
    }

    /// Stops accepting, lets requests in flight finish, stops the sweeper, then drains
    /// the order writer: every order acknowledged is stored when this returns.
    pub async fn stop(self) {
        self.stop_http.cancel();
        if let Err(e) = self.http.await {
            tracing::error!(error = %e, "http server task failed");
        }
        if let Some(internal) = self.internal
            && let Err(e) = internal.await
        {
            tracing::error!(error = %e, "internal http server task failed");
        }
        self.stop_sweeper.cancel();
        let _ = self.sweeper.await;
        let _ = self.forgetter.await;
        self.stop_writer.cancel();
        if let Some(writer) = self.writer {
            let _ = writer.await;
        }
    }
}

/// A newcomer's first `serve` (development mode, an empty store) opens the page on a
/// sale to buy from: a drop of 100 units and a hall of 6 × 12 seats.
async fn create_sample_sales(engine: &Engine) -> Result<(), EngineError> {
    if !engine.recent_sales(1).await?.is_empty() {
        return Ok(());
    }
    let sample = |json: serde_json::Value| -> crate::domain::NewSale {
        serde_json::from_value::<crate::api::requests::NewSale>(json)
            .expect("a valid sample sale")
            .into()
    };
    let seats: Vec<_> = ["A", "B", "C", "D", "E", "F"]
        .iter()
        .flat_map(|row| {
            (1..=12).map(move |n| serde_json::json!({"id": format!("{row}-{n}"), "stock": 1}))
        })
        .collect();
    engine
        .create_sale(sample(
            serde_json::json!({"name": "Sample drop", "stock": 100}),
        ))
        .await?;
    engine
        .create_sale(sample(
            serde_json::json!({"name": "Sample hall", "items": seats, "per_user_limit": 4}),
        ))
        .await?;
    tracing::info!(
        "empty store in development mode: two sample sales created (sample_sales = false to skip)"
    );
    Ok(())
}

/// Forgets the rate-limit keys that went quiet, every second, until `stop`.
async fn forget_idle_rate_keys(admission: Arc<engine::Admission>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                let admission = admission.clone();
                // Sweeping a few hundred thousand keys takes milliseconds: off the
                // request threads.
                let held = tokio::task::spawn_blocking(move || admission.forget_idle()).await;
                tracing::trace!(?held, "rate-limit keys held");
            }
        }
    }
}
