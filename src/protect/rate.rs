//! Rate limits (GCRA, by governor): per buyer and per client address, for each sale's
//! purchases (a sale may set its own quotas), and per address for the other API routes.
//!
//! Memory: each limiter keeps one small entry (a u64 key and a u64 state) per key used
//! in the last burst window; `forget_idle` (run every second by the server) drops the
//! entries that have become indistinguishable from new ones. So what is held is bounded
//! by the request rate times the longest window, however many distinct buyers and
//! addresses come and go. Keys are hashes (of the sale and the buyer or address) so that
//! an entry has the same size whatever the buyer id.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use foldhash::fast::RandomState;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use crate::domain::{RateLimit, RateQuota, SaleRateLimits};

type Limiter<C> = RateLimiter<
    u64,
    DashMapStateStore<u64, BuildHasherDefault<KeyIsHash>>,
    C,
    NoOpMiddleware<<C as Clock>::Instant>,
>;

/// The limiters' keys are already hashes (of the sale and the buyer or address, with a
/// per-process seed): the maps use them as they are instead of hashing them again.
#[derive(Default)]
struct KeyIsHash(u64);

impl Hasher for KeyIsHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used for u64 keys; anything else is folded in.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// What a limit is counted by; its name is the policy name in the response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateScope {
    Buyer,
    Ip,
}

impl RateScope {
    pub fn name(self) -> &'static str {
        match self {
            RateScope::Buyer => "buyer",
            RateScope::Ip => "ip",
        }
    }
}

/// A request over its limit: which limit, and when the next one would pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimited {
    pub scope: RateScope,
    pub quota: RateQuota,
    pub retry_after: Duration,
}

impl RateLimited {
    /// Whole seconds to wait, rounded up (at least 1): `Retry-After`.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_secs_f64().ceil().max(1.0) as u64
    }

    /// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers): the quota and its window.
    pub fn policy_header(&self) -> String {
        format!(
            "\"{}\";q={};w={}",
            self.scope.name(),
            self.quota.burst,
            self.quota.window_secs()
        )
    }

    /// `RateLimit`: nothing left, and when there will be.
    pub fn limit_header(&self) -> String {
        format!(
            "\"{}\";r=0;t={}",
            self.scope.name(),
            self.retry_after_secs()
        )
    }
}

/// The gateway's default limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDefaults {
    pub per_buyer: RateLimit,
    pub per_ip: RateLimit,
}

/// Every limiter of a gateway. One limiter per distinct quota, shared by the sales that
/// use it; keys carry the sale, so each sale counts on its own. The defaults' limiters
/// are at hand; a sale's own quotas are looked up (a read lock, rarely written).
pub struct RateLimiters<C: Clock = DefaultClock> {
    defaults: RateDefaults,
    per_buyer: Option<Arc<Limiter<C>>>,
    per_ip: Option<Arc<Limiter<C>>>,
    clock: C,
    hasher: RandomState,
    by_quota: RwLock<HashMap<RateQuota, Arc<Limiter<C>>>>,
    /// Keys held after the last `forget_idle` that shrank the maps.
    held_at_last_shrink: AtomicUsize,
}

impl RateLimiters<DefaultClock> {
    pub fn new(defaults: RateDefaults) -> Self {
        Self::with_clock(defaults, DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimiters<C> {
    pub fn with_clock(defaults: RateDefaults, clock: C) -> Self {
        let mut limiters = RateLimiters {
            defaults,
            per_buyer: None,
            per_ip: None,
            clock,
            hasher: RandomState::default(),
            by_quota: RwLock::new(HashMap::new()),
            held_at_last_shrink: AtomicUsize::new(0),
        };
        limiters.per_buyer = defaults.per_buyer.quota().map(|q| limiters.limiter(q));
        limiters.per_ip = defaults.per_ip.quota().map(|q| limiters.limiter(q));
        limiters
    }

    /// Admits a purchase of `sale_id` by `buyer` from `ip`, under the sale's own limits
    /// where it has them. The address is counted first: it is known before the body.
    pub fn admit_purchase(
        &self,
        sale_id: &str,
        sale_limits: &SaleRateLimits,
        ip: IpAddr,
        buyer: &str,
    ) -> Result<(), RateLimited> {
        let per_ip = sale_limits.per_ip.unwrap_or(self.defaults.per_ip);
        self.check(RateScope::Ip, per_ip, (sale_id, ip_key(ip)))?;
        let per_buyer = sale_limits.per_buyer.unwrap_or(self.defaults.per_buyer);
        self.check(RateScope::Buyer, per_buyer, (sale_id, buyer))
    }

    /// Admits any other API request from `ip` (reads, cancels, payments, admin), under
    /// the default per-address limit, counted apart from purchases.
    pub fn admit_request(&self, ip: IpAddr) -> Result<(), RateLimited> {
        self.check(RateScope::Ip, self.defaults.per_ip, ((), ip_key(ip)))
    }

    fn check(
        &self,
        scope: RateScope,
        limit: RateLimit,
        key: impl std::hash::Hash,
    ) -> Result<(), RateLimited> {
        let Some(quota) = limit.quota() else {
            return Ok(());
        };
        let default = match scope {
            RateScope::Buyer => &self.per_buyer,
            RateScope::Ip => &self.per_ip,
        };
        let limiter = match default {
            Some(limiter) if limit == self.default_of(scope) => limiter.clone(),
            _ => self.limiter(quota),
        };
        // The scope is hashed in so that one limiter can hold both kinds of keys.
        let key = self.hasher.hash_one((scope.name(), key));
        limiter.check_key(&key).map_err(|not_until| RateLimited {
            scope,
            quota,
            retry_after: not_until.wait_time_from(self.clock.now()),
        })
    }

    fn default_of(&self, scope: RateScope) -> RateLimit {
        match scope {
            RateScope::Buyer => self.defaults.per_buyer,
            RateScope::Ip => self.defaults.per_ip,
        }
    }

    fn limiter(&self, quota: RateQuota) -> Arc<Limiter<C>> {
        if let Some(limiter) = self
            .by_quota
            .read()
            .expect("rate limiters lock")
            .get(&quota)
        {
            return limiter.clone();
        }
        let mut limiters = self.by_quota.write().expect("rate limiters lock");
        limiters
            .entry(quota)
            .or_insert_with(|| {
                let gcra = Quota::with_period(Duration::from_micros(quota.interval_micros()))
                    .expect("an interval of at least 1 µs")
                    .allow_burst(NonZeroU32::new(quota.burst).expect("a burst of at least 1"));
                Arc::new(RateLimiter::dashmap_with_clock_and_hasher(
                    gcra,
                    self.clock.clone(),
                    BuildHasherDefault::default(),
                ))
            })
            .clone()
    }

    /// Drops the entries of keys that have been quiet for a full window (their state is
    /// that of a new key). The maps give their memory back when what they hold fell to
    /// a quarter of what they held at the last shrink (shrinking every second would make
    /// them grow again every second). Returns how many keys are held.
    pub fn forget_idle(&self) -> usize {
        let limiters: Vec<_> = self
            .by_quota
            .read()
            .expect("rate limiters lock")
            .values()
            .cloned()
            .collect();
        for limiter in &limiters {
            limiter.retain_recent();
        }
        let held: usize = limiters.iter().map(|l| l.len()).sum();
        let before = self.held_at_last_shrink.load(Ordering::Relaxed);
        if held > before {
            self.held_at_last_shrink.store(held, Ordering::Relaxed);
        } else if held * 4 < before {
            for limiter in &limiters {
                limiter.shrink_to_fit();
            }
            self.held_at_last_shrink.store(held, Ordering::Relaxed);
        }
        held
    }
}

/// An address as a client: IPv4 as it is, IPv6 by its /64 (what one subscriber gets:
/// counting single IPv6 addresses would let one client have 2^64 budgets).
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn limit(text: &str) -> RateLimit {
        text.parse().unwrap()
    }

    fn limiters(
        per_buyer: &str,
        per_ip: &str,
    ) -> (RateLimiters<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let defaults = RateDefaults {
            per_buyer: limit(per_buyer),
            per_ip: limit(per_ip),
        };
        (RateLimiters::with_clock(defaults, clock.clone()), clock)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    const NONE: SaleRateLimits = SaleRateLimits {
        per_buyer: None,
        per_ip: None,
    };

    #[test]
    fn a_buyer_gets_the_burst_then_one_per_interval() {
        let (limits, clock) = limiters("2/s burst 3", "off");
        for _ in 0..3 {
            limits
                .admit_purchase("s", &NONE, ip("1.1.1.1"), "ann")
                .unwrap();
        }
        let refused = limits
            .admit_purchase("s", &NONE, ip("1.1.1.1"), "ann")
            .unwrap_err();
        assert_eq!(refused.scope, RateScope::Buyer);
        assert_eq!(refused.retry_after, Duration::from_millis(500));
        assert_eq!(refused.retry_after_secs(), 1);
        assert_eq!(refused.policy_header(), "\"buyer\";q=3;w=2");
        assert_eq!(refused.limit_header(), "\"buyer\";r=0;t=1");
        // Another buyer, and the same buyer in another sale, count on their own.
        limits
            .admit_purchase("s", &NONE, ip("1.1.1.1"), "bob")
            .unwrap();
        limits
            .admit_purchase("t", &NONE, ip("1.1.1.1"), "ann")
            .unwrap();
        clock.advance(Duration::from_millis(500));
        limits
            .admit_purchase("s", &NONE, ip("1.1.1.1"), "ann")
            .unwrap();
        assert!(
            limits
                .admit_purchase("s", &NONE, ip("1.1.1.1"), "ann")
                .is_err()
        );
    }

    #[test]
    fn an_address_is_limited_across_buyers_and_ipv6_by_its_64() {
        let (limits, _clock) = limiters("off", "1/s burst 2");
        limits
            .admit_purchase("s", &NONE, ip("2001:db8::1"), "a")
            .unwrap();
        limits
            .admit_purchase("s", &NONE, ip("2001:db8::2"), "b")
            .unwrap();
        let refused = limits
            .admit_purchase("s", &NONE, ip("2001:db8::ffff:3"), "c")
            .unwrap_err();
        assert_eq!(refused.scope, RateScope::Ip);
        limits
            .admit_purchase("s", &NONE, ip("2001:db8:0:1::1"), "d")
            .unwrap();
        // Other routes have their own budget.
        limits.admit_request(ip("2001:db8::9")).unwrap();
    }

    #[test]
    fn a_sale_overrides_the_defaults_and_can_turn_them_off() {
        let (limits, _clock) = limiters("1/s", "1/s");
        let strict = SaleRateLimits {
            per_buyer: Some(limit("1/min burst 2")),
            per_ip: Some(RateLimit::Off),
        };
        for buyer in ["a", "b", "c", "d"] {
            limits
                .admit_purchase("hyped", &strict, ip("1.1.1.1"), buyer)
                .unwrap();
        }
        limits
            .admit_purchase("hyped", &strict, ip("1.1.1.1"), "a")
            .unwrap();
        let refused = limits
            .admit_purchase("hyped", &strict, ip("1.1.1.1"), "a")
            .unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(60));
        // The defaults still hold elsewhere: one per second per address.
        limits
            .admit_purchase("plain", &NONE, ip("1.1.1.1"), "a")
            .unwrap();
        assert_eq!(
            limits
                .admit_purchase("plain", &NONE, ip("1.1.1.1"), "b")
                .unwrap_err()
                .scope,
            RateScope::Ip
        );
    }

    /// A million buyers who each clicked once are forgotten once their window is over:
    /// what is held does not grow with the number of distinct buyers.
    #[test]
    fn a_million_distinct_buyers_are_forgotten_after_their_window() {
        let (limits, clock) = limiters("5/s burst 10", "off");
        for n in 0..1_000_000u32 {
            limits
                .admit_purchase("s", &NONE, ip("1.1.1.1"), &format!("buyer-{n}"))
                .unwrap();
        }
        assert_eq!(
            limits.forget_idle(),
            1_000_000,
            "all still within their window"
        );
        // One buyer is still busy at the end.
        clock.advance(Duration::from_secs(2));
        for _ in 0..10 {
            let _ = limits.admit_purchase("s", &NONE, ip("1.1.1.1"), "busy");
        }
        assert_eq!(limits.forget_idle(), 1);
    }
}
