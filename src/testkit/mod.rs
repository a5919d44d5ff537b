//! The test kit: what the unit tests, the integration tests, the benches and the
//! examples share, in one place. Not part of the engine's API (hidden from the docs);
//! compiled always so that `tests/`, `benches/` and `examples/` can use it.
//!
//! - `fixtures.rs`: builders of sales and orders (`sale()`, `order(&sale)`), made with the
//!   domain types' own constructors.
//! - `postgres.rs`: a fresh PostgreSQL database per test.
//! - `faulty_store.rs`: a real store with faults on demand.
//! - `faulty_gate.rs`: the local gate with faults on demand.
//! - `engine.rs`: `TestEngine`, an engine on a local gate, the in-process bus with its
//!   group-commit writer, and SQLite in a temp dir; the one `purchase` helper.
//! - `sentinel.rs`: a Redis primary, two replicas and three Sentinels on ports of their
//!   own; `cluster.rs`: a Redis Cluster of three masters with one or two replicas each;
//!   `redis_nodes.rs`: the processes and node commands they share.
//! - `server.rs`: `InProcessServer`, the HTTP server in this process on port 0, and its
//!   typed client.

pub mod cluster;
pub mod engine;
pub mod faulty_gate;
pub mod faulty_store;
pub mod fixtures;
pub mod postgres;
mod redis_nodes;
pub mod sentinel;
pub mod server;

pub use cluster::ClusterDeployment;
pub use engine::{Setup, TestEngine};
pub use faulty_gate::FaultyGate;
pub use faulty_store::FaultyStore;
pub use fixtures::{OrderBuilder, SaleBuilder, order, sale};
pub use postgres::{fresh_postgres_database, postgres_server_url};
pub use sentinel::SentinelDeployment;
pub use server::InProcessServer;
