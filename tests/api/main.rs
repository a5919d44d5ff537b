//! The suites that need no outside service: each runs on the embedded engine in a plain
//! `cargo test`, and on the distributed backends too when `.ci/run` brings the services
//! up (those variants are ignored otherwise). One binary, a module per suite.

#[macro_use]
#[path = "../helpers/mod.rs"]
mod helpers;

mod answers;
mod check;
mod concurrency;
mod controls;
mod demo;
mod deploy;
mod events;
mod failures;
mod lifecycle;
mod load;
mod logs;
mod malformed;
mod metrics;
mod openapi;
mod overload;
mod protection;
mod queue;
mod rate_limits;
mod restart;
mod shards;
mod slow_clients;
mod status_line;
