//! Builds an engine from its settings and serves it over HTTP: shared by `serve`,
//! `demo` and the tests, so all three run the same code.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::api::{self, AppState};
use crate::bus::{self, MemoryBus, OrderBus};
use crate::config::Config;
use crate::engine::{Engine, EngineError};
use crate::gate::{self, GateError};
use crate::store::{self, StoreError};
use crate::worker;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Gate(#[from] GateError),
    #[error("unsupported bus {0:?} (expected memory or kafka://host:port)")]
    Bus(String),
    #[error(
        "this build has no Kafka support: build with `cargo build --release --features kafka` \
         to use --bus kafka://…"
    )]
    NoKafka,
    #[error(transparent)]
    BusUnavailable(#[from] crate::bus::BusError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("engine: {0}")]
    Engine(#[from] EngineError),
    #[error("cannot listen on {0}: {1}")]
    Listen(String, std::io::Error),
}

/// A server running in this process.
pub struct Server {
    pub addr: SocketAddr,
    pub engine: Arc<Engine>,
    shutdown: tokio::sync::oneshot::Sender<()>,
    http: JoinHandle<std::io::Result<()>>,
    writer: Option<JoinHandle<()>>,
    sweeper: JoinHandle<()>,
}

impl Server {
    pub async fn start(config: &Config) -> Result<Server, StartError> {
        let backend_timeout = Duration::from_millis(config.backend_timeout_ms);
        let gate = gate::connect(&config.gate, backend_timeout).await?;
        let store = store::connect(&config.store).await?;
        let (bus, writer): (Arc<dyn OrderBus>, _) = match config.bus.as_str() {
            "memory" => {
                let (bus, rx) = MemoryBus::new(config.bus_capacity);
                let writer = tokio::spawn(worker::run_group_commit(
                    rx,
                    store.clone(),
                    config.batch_max,
                ));
                (Arc::new(bus), Some(writer))
            }
            url => match bus::kafka_brokers(url) {
                Some(brokers) => (kafka_bus(brokers, config, backend_timeout).await?, None),
                None => return Err(StartError::Bus(url.into())),
            },
        };
        let replay_wait = Duration::from_millis(config.replay_wait_ms);
        let engine = Engine::start(gate, bus, store, replay_wait)
            .await?
            .with_hold_grace(Duration::from_millis(config.hold_grace_ms));
        let engine = Arc::new(engine);
        let listener = TcpListener::bind(&config.listen)
            .await
            .map_err(|e| StartError::Listen(config.listen.clone(), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| StartError::Listen(config.listen.clone(), e))?;
        let state = AppState {
            engine: engine.clone(),
            admin_token: config.admin_token.as_deref().map(Arc::from),
        };
        let app = api::router(state, config.body_limit);
        let sweeper = tokio::spawn(sweep_forever(
            engine.clone(),
            Duration::from_millis(config.sweep_interval_ms.max(10)),
        ));
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let http = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stop.await;
                })
                .await
        });
        Ok(Server {
            addr,
            engine,
            shutdown,
            http,
            writer,
            sweeper,
        })
    }

    /// Stops accepting, lets requests in flight finish, then drains the order writer.
    pub async fn stop(self) {
        let _ = self.shutdown.send(());
        self.sweeper.abort();
        let _ = self.sweeper.await;
        if let Err(e) = self.http.await {
            tracing::error!(error = %e, "http server task failed");
        }
        // The engine holds the bus sender: once it is gone the writer drains and stops.
        drop(self.engine);
        if let Some(writer) = self.writer {
            let _ = writer.await;
        }
    }
}

/// The expiry sweeper of this process; every gateway runs one (they do not collide).
async fn sweep_forever(engine: Arc<Engine>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match engine.sweep().await {
            Ok(sweep) if sweep.expired + sweep.released > 0 => {
                tracing::debug!(?sweep, "sweep");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "sweep failed; trying again"),
        }
    }
}

#[cfg(feature = "kafka")]
async fn kafka_bus(
    brokers: &str,
    config: &Config,
    timeout: Duration,
) -> Result<Arc<dyn OrderBus>, StartError> {
    let topics = bus::Topics::with_prefix(&config.topic_prefix);
    let bus = bus::kafka::KafkaBus::connect(
        brokers,
        topics,
        &config.worker_group,
        config.kafka_partitions,
        timeout,
    )
    .await?;
    Ok(Arc::new(bus))
}

#[cfg(not(feature = "kafka"))]
async fn kafka_bus(_: &str, _: &Config, _: Duration) -> Result<Arc<dyn OrderBus>, StartError> {
    Err(StartError::NoKafka)
}
