//! What stands between the internet and the engine: who the client is behind proxies
//! (`client_ip`), how often one buyer or one address may ask (`rate`), and how much
//! work the gateway takes on at once (`overload`).

pub mod client_ip;
pub mod overload;
pub mod rate;

pub use client_ip::{TrustedProxies, client_ip};
pub use overload::{Overload, OverloadLimits, ReceivedAt, Shed};
pub use rate::{RateLimited, RateLimiters, RateScope};
