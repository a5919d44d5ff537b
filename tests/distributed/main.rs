//! The suites of the distributed mode only: several gateways and workers on Redis, the
//! bus and PostgreSQL, with faults (Redis flushed, processes killed, the broker stopped).
//! Every test here is ignored in a plain `cargo test`; `.ci/run` runs them with the
//! services up.

// These suites use part of the helpers (no embedded engine, few one-gateway calls).
#[macro_use]
#[path = "../helpers/mod.rs"]
#[allow(dead_code, unused_imports)]
mod helpers;

mod gateways;
mod kafka;
mod rebuilds;
#[cfg(feature = "otel")]
mod tracing;
