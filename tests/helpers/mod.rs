//! The test helpers, one concern per file: `backends.rs` (which engines, and the
//! `backend_tests!` macro), `deployment.rs` (launching the real binary's processes),
//! `server.rs` (a gateway under test and HTTP to it), `serve_output.rs` (a `serve` whose
//! own output a test reads), `services.rs` (where PostgreSQL
//! and Redis are), `broker.rs` (a tansu broker of a test's own, to stop and restart),
//! `redis_server.rs` (a Redis of a test's own, to flush and restart: never the shared one).
//! The test binaries (`tests/api`, `tests/distributed`, `tests/campaign`) include them.

#[macro_use]
mod backends;
// Only the suites that stop the broker use it.
#[allow(dead_code)]
pub mod broker;
mod deployment;
mod server;
// Only the suites that read a gateway's own output use it.
#[allow(dead_code)]
pub mod serve_output;
// Only the suites that flush or restart Redis use it.
#[allow(dead_code)]
pub mod redis_server;
pub mod services;

pub use backends::Backends;
pub use deployment::Deployment;
pub use server::{Reply, TestServer, args_as_settings};
