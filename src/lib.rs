//! flashsale: a flash-sale engine that sells every unit exactly once. See DESIGN.md and
//! the README: a request goes api → engine → gate → bus → worker → store.

pub mod api;
pub mod audit;
pub mod auth;
pub mod bus;
pub mod check;
pub mod client;
pub mod config;
pub mod demo;
pub mod domain;
pub mod engine;
pub mod gate;
pub mod live;
pub mod load;
pub mod observe;
pub mod protect;
pub mod server;
pub mod store;
#[doc(hidden)]
pub mod testkit;
pub mod worker;
