//! The test helpers, one concern per file: `backends.rs` (which engines, and the
//! `backend_tests!` macro), `deployment.rs` (launching the real binary's processes),
//! `server.rs` (a gateway under test and HTTP to it), `services.rs` (where PostgreSQL
//! and Redis are). Both test binaries
//! (`tests/api`, `tests/distributed`) include them.

#[macro_use]
mod backends;
mod deployment;
mod server;
pub mod services;

pub use backends::Backends;
pub use deployment::Deployment;
pub use server::TestServer;
