//! What stands between the internet and the engine: who the client is behind proxies
//! (`client_ip`), how often one buyer or one address may ask (`rate`), how much
//! work the gateway takes on at once (`overload`), and when to stop calling a failing
//! backend for a while (`breaker`).

pub mod breaker;
pub mod client_ip;
pub mod overload;
pub mod rate;

pub use breaker::{BreakerOpen, BreakerSettings, Breakers, Permit};
pub use client_ip::{TrustedProxies, client_ip};
pub use overload::{Arrival, Overload, OverloadLimits, Shed};
pub use rate::{RateLimited, RateLimiters, RateScope};
