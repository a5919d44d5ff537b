//! The engine's unit tests' fixture: an engine on a SQLite store with faults on demand
//! (`FaultyStore`), its group-commit writer running, and one sale.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Engine, EngineError};
use crate::bus::{MemoryBus, OrderBus};
use crate::domain::{NewSale, PurchaseRequest};
use crate::gate::{LocalGate, StockGate};
use crate::test_support::FaultyStore;

/// An engine on a SQLite store with faults on demand, its group-commit writer
/// running, and one sale.
pub(crate) struct Fixture {
    pub engine: Arc<Engine>,
    pub store: Arc<FaultyStore>,
    pub sale: String,
    pub stop: CancellationToken,
    pub writer: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

/// What a fixture is made of, where a test differs from the defaults.
pub(crate) struct Setup {
    pub gate: Arc<dyn StockGate>,
    /// Wraps the in-process bus (a broker whose events hang, say).
    pub bus: fn(MemoryBus) -> Arc<dyn OrderBus>,
    pub settings: crate::engine::EngineSettings,
    pub stock: u32,
    pub per_user_limit: u32,
    pub payment_window: Option<u32>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            gate: Arc::new(LocalGate::new()),
            bus: |bus| Arc::new(bus),
            settings: Default::default(),
            stock: 5,
            per_user_limit: 1,
            payment_window: None,
        }
    }
}

impl Fixture {
    pub async fn start(setup: Setup) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FaultyStore::sqlite(dir.path()).await);
        let (bus, inbox) = MemoryBus::new(64, Duration::from_secs(30));
        let stop = CancellationToken::new();
        let writer = tokio::spawn(crate::worker::run_group_commit(
            inbox,
            store.clone(),
            64,
            stop.clone(),
        ));
        let engine = Engine::start(setup.gate, (setup.bus)(bus), store.clone(), setup.settings)
            .await
            .map(Arc::new)
            .unwrap();
        let sale = engine
            .create_sale(NewSale {
                name: "s".into(),
                stock: Some(setup.stock),
                items: None,
                per_user_limit: Some(setup.per_user_limit),
                starts_at: None,
                ends_at: None,
                payment_window: setup.payment_window,
                rate_limits: None,
            })
            .await
            .unwrap()
            .sale
            .id
            .clone();
        Fixture {
            engine,
            store,
            sale,
            stop,
            writer,
            _dir: dir,
        }
    }

    pub async fn buy(
        &self,
        user: &str,
        key: Option<&str>,
    ) -> Result<Arc<crate::domain::Order>, EngineError> {
        let request = PurchaseRequest {
            user_id: user.into(),
            quantity: Some(1),
            items: None,
        };
        let head = super::PurchaseHead {
            sale_id: self.sale.clone(),
            buyer: super::Buyer::Anonymous,
            ip: std::net::Ipv4Addr::LOCALHOST.into(),
            key: key.map(String::from),
            arrived: None,
        };
        match super::Admission::unlimited(self.engine.clone())
            .purchase(head, request)
            .await
        {
            Ok(order) => Ok(order),
            Err(super::AdmissionError::Engine(e)) => Err(e),
            Err(other) => panic!("no limits here: {other}"),
        }
    }

    pub async fn remaining(&self) -> Vec<u32> {
        self.engine.sale_state(&self.sale).await.unwrap().remaining
    }

    /// Stops the writer once the engine is gone.
    pub async fn stop(self) {
        self.stop.cancel();
        drop(self.engine);
        self.writer.await.unwrap();
    }
}
