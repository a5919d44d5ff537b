//! `TestEngine`: an engine on a local gate, the in-process bus and its group-commit
//! writer, and a SQLite store (with faults on demand) in a temp dir, with one sale.
//!
//! Every purchase of the engine's tests goes through `TestEngine::purchase`: the one
//! place that knows how the engine takes a purchase.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::FaultyStore;
use super::fixtures::sale;
use crate::bus::{MemoryBus, OrderBus, OrderInbox};
use crate::domain::{Order, PurchaseRequest};
use crate::engine::{
    Admission, AdmissionError, Buyer, Engine, EngineError, EngineSettings, PurchaseHead,
};
use crate::gate::{LocalGate, StockGate};
use crate::store::OrderStore;

/// What a test engine is made of, where a test differs from the defaults.
pub struct Setup {
    pub gate: Arc<dyn StockGate>,
    /// Wraps the in-process bus (a broker whose events hang, say).
    pub bus: fn(MemoryBus) -> Arc<dyn OrderBus>,
    /// Orders the in-process bus holds before it is full.
    pub bus_capacity: usize,
    /// Start the group-commit writer at once; if not, the bus fills up until
    /// `TestEngine::start_writer`.
    pub writer: bool,
    pub settings: EngineSettings,
    /// The one sale's stock (one item), limit per buyer and payment window (s).
    pub stock: u32,
    pub per_user_limit: u32,
    pub payment_window: u32,
    /// Sub-stocks of the sale in the Redis gate.
    pub shards: u32,
    /// The store, if not a fresh SQLite file in a temp dir (a PostgreSQL database, say).
    pub store_url: Option<String>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            gate: Arc::new(LocalGate::new()),
            bus: |bus| Arc::new(bus),
            bus_capacity: 64,
            writer: true,
            settings: Default::default(),
            stock: 5,
            per_user_limit: 1,
            payment_window: 0,
            shards: 1,
            store_url: None,
        }
    }
}

pub struct TestEngine {
    pub engine: Arc<Engine>,
    pub store: Arc<FaultyStore>,
    /// The sale made at start.
    pub sale: String,
    settings: EngineSettings,
    bus: fn(MemoryBus) -> Arc<dyn OrderBus>,
    bus_capacity: usize,
    /// The bus's other end, until the writer takes it.
    inbox: Mutex<Option<OrderInbox>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    stop: CancellationToken,
    dir: tempfile::TempDir,
}

impl TestEngine {
    /// The defaults: local gate, a sale of 5 units, 1 per buyer, paid when placed.
    pub async fn start() -> TestEngine {
        TestEngine::with(Setup::default()).await
    }

    pub async fn with(setup: Setup) -> TestEngine {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(match &setup.store_url {
            Some(url) => FaultyStore::new(
                crate::store::connect(&url.parse().expect("a store URL"))
                    .await
                    .expect("the store"),
            ),
            None => FaultyStore::sqlite(dir.path()).await,
        });
        let mut engine = TestEngine::assemble(
            setup.gate,
            store,
            setup.bus,
            setup.bus_capacity,
            setup.settings,
            dir,
        )
        .await;
        if setup.writer {
            engine.start_writer();
        }
        let new = sale()
            .name("s")
            .stock(setup.stock)
            .limit(setup.per_user_limit)
            .payment_window(setup.payment_window)
            .shards(setup.shards)
            .new_sale();
        // A gate on a Redis deployment formed a moment ago may answer 503 at first (a
        // replica that has not yet acknowledged, under `WAIT`): retried as a client would.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
        engine.sale = loop {
            match engine.engine.create_sale(new.clone().into()).await {
                Ok(created) => break created.sale.id.clone(),
                Err(crate::engine::EngineError::Unavailable(_))
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await
                }
                Err(e) => panic!("create the test's sale: {e}"),
            }
        };
        engine
    }

    async fn assemble(
        gate: Arc<dyn StockGate>,
        store: Arc<FaultyStore>,
        bus: fn(MemoryBus) -> Arc<dyn OrderBus>,
        bus_capacity: usize,
        settings: EngineSettings,
        dir: tempfile::TempDir,
    ) -> TestEngine {
        let (memory, inbox) = MemoryBus::new(bus_capacity, Duration::from_secs(30));
        let engine = Engine::start(gate, bus(memory), store.clone(), settings.clone())
            .await
            .map(Arc::new)
            .expect("engine started");
        TestEngine {
            engine,
            store,
            sale: String::new(),
            settings,
            bus,
            bus_capacity,
            inbox: Mutex::new(Some(inbox)),
            writer: Mutex::new(None),
            stop: CancellationToken::new(),
            dir,
        }
    }

    /// Starts the group-commit writer on the bus (if not started yet): the orders the
    /// bus holds are stored from now on.
    pub fn start_writer(&self) {
        if let Some(inbox) = self.inbox.lock().take() {
            *self.writer.lock() = Some(tokio::spawn(crate::worker::run_group_commit(
                inbox,
                self.store.clone(),
                64,
                self.stop.clone(),
            )));
        }
    }

    /// THE purchase of the engine's tests: `quantity` units of the sale's (only) item
    /// for `user`, with `key` if given.
    pub async fn purchase(
        &self,
        sale_id: &str,
        user: &str,
        quantity: u32,
        key: Option<&str>,
    ) -> Result<Arc<Order>, EngineError> {
        let request = PurchaseRequest {
            user_id: user.into(),
            quantity: Some(quantity),
            items: None,
        };
        let head = PurchaseHead {
            sale_id: sale_id.into(),
            buyer: Buyer::Anonymous,
            ip: std::net::Ipv4Addr::LOCALHOST.into(),
            key: key.map(String::from),
            arrived: None,
            via_line: false,
        };
        match Admission::unlimited(self.engine.clone())
            .purchase(head, request)
            .await
        {
            Ok(order) => Ok(order),
            Err(AdmissionError::Engine(e)) => Err(e),
            Err(other) => panic!("no rate limits nor in-flight bound here: {other}"),
        }
    }

    /// One unit of the sale made at start.
    pub async fn buy(&self, user: &str, key: Option<&str>) -> Result<Arc<Order>, EngineError> {
        self.purchase(&self.sale, user, 1, key).await
    }

    /// Remaining units per item of the sale made at start, as the gate says.
    pub async fn remaining(&self) -> Vec<u32> {
        self.engine.sale_state(&self.sale).await.unwrap().remaining
    }

    /// The orders of the sale made at start, as stored now.
    pub async fn stored_orders(&self) -> Vec<Order> {
        self.store.sale_orders(&self.sale).await.unwrap()
    }

    /// Waits (up to 5 s) until the bus holds `n` orders not answered by the writer.
    pub async fn wait_on_bus(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.engine.bus_pending() != Some(n) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{n} orders never on the bus ({:?})",
                self.engine.bus_pending()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The process restarts: the engine and its writer stop (what the bus holds is
    /// stored), and a new engine starts on `gate`, a new bus and the same SQLite file.
    pub async fn restart(self, gate: Arc<dyn StockGate>) -> TestEngine {
        let (sale, settings, bus, capacity) = (
            self.sale.clone(),
            self.settings.clone(),
            self.bus,
            self.bus_capacity,
        );
        let dir = self.stop_keeping_dir().await;
        let store = Arc::new(FaultyStore::sqlite(dir.path()).await);
        let mut engine = TestEngine::assemble(gate, store, bus, capacity, settings, dir).await;
        engine.start_writer();
        engine.sale = sale;
        engine
    }

    async fn stop_keeping_dir(self) -> tempfile::TempDir {
        self.stop.cancel();
        drop(self.engine);
        let writer = self.writer.lock().take();
        if let Some(writer) = writer {
            writer.await.unwrap();
        }
        self.dir
    }

    /// Stops the writer once the engine is gone.
    pub async fn stop(self) {
        self.stop_keeping_dir().await;
    }
}
