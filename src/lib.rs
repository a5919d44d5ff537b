//! flashsale: a flash-sale engine that sells every unit exactly once. The design is in
//! `docs/architecture.md`; a purchase goes server → api → engine (admission, then
//! placement) → gate → bus → worker → store. Arrows point one way: stages import only
//! stages; the edge imports stages; composition and tools sit on top
//! (`tests/architecture.rs` fails on an import cycle).
//! A module is `pub` only when the binary, the tests, benches or examples use it.

// The stages. `domain` imports nothing of the crate; `observe` records what the stages
// do and imports nothing either.
pub mod bus;
pub mod domain;
pub mod engine;
pub mod gate;
mod line;
pub mod observe;
mod protect;
pub mod store;
pub mod worker;

// The edge: HTTP in and out, credentials, the live feeds, what operators read.
pub mod api;
pub mod auth;
pub mod client;
mod exporter;
mod live;
pub mod server;

// Composition: settings, and what `main.rs` dispatches to.
pub mod config;

// Tools built on the client and the store: the load generator, its audit, `check`,
// and the demo.
mod audit;
pub mod check;
pub mod demo;
pub mod load;

// The test kit: fixtures, faulty backends, an engine and a server in-process, shared by
// unit tests, integration tests, benches and examples.
#[doc(hidden)]
pub mod testkit;
