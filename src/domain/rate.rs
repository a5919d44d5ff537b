//! Rate quotas, written the way people say them: `10/s`, `600/min burst 50`, `off`.
//! The gateway's defaults use them, and a sale may override them (`rate_limits`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// At most `count` requests per `per_ms` on average, with up to `burst` at once (GCRA).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateQuota {
    pub count: u32,
    pub per_ms: u64,
    pub burst: u32,
}

/// Upper bounds, so that a quota always turns into a valid cell interval (≥ 1 µs).
const MAX_COUNT: u32 = 1_000_000;
const MAX_BURST: u32 = 1_000_000;

impl RateQuota {
    /// The time one request's credit takes to come back.
    pub fn interval_micros(&self) -> u64 {
        (self.per_ms * 1000 / self.count as u64).max(1)
    }

    /// The window of the `RateLimit-Policy` header: how long a full burst takes to
    /// come back, in whole seconds (at least 1).
    pub fn window_secs(&self) -> u64 {
        (self.interval_micros() * self.burst as u64)
            .div_ceil(1_000_000)
            .max(1)
    }
}

impl FromStr for RateQuota {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a rate: write e.g. `10/s`, `600/min burst 50`");
        let mut words = text.split_whitespace();
        let (count, unit) = words
            .next()
            .and_then(|w| w.split_once('/'))
            .ok_or_else(bad)?;
        let count: u32 = count.parse().map_err(|_| bad())?;
        let per_ms = match unit {
            "s" | "sec" | "second" => 1_000,
            "m" | "min" | "minute" => 60_000,
            "h" | "hour" => 3_600_000,
            _ => return Err(bad()),
        };
        let burst = match (words.next(), words.next(), words.next()) {
            (None, _, _) => count,
            (Some("burst"), Some(burst), None) => burst.parse().map_err(|_| bad())?,
            _ => return Err(bad()),
        };
        if count == 0 || count > MAX_COUNT {
            return Err(format!("{text:?}: the count must be 1 to {MAX_COUNT}"));
        }
        if burst == 0 || burst > MAX_BURST {
            return Err(format!("{text:?}: the burst must be 1 to {MAX_BURST}"));
        }
        Ok(RateQuota {
            count,
            per_ms,
            burst,
        })
    }
}

impl fmt::Display for RateQuota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per_ms {
            1_000 => "s",
            60_000 => "min",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)?;
        if self.burst != self.count {
            write!(f, " burst {}", self.burst)?;
        }
        Ok(())
    }
}

/// A limit as configured: a quota, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateLimit {
    Off,
    Quota(RateQuota),
}

impl RateLimit {
    pub fn quota(self) -> Option<RateQuota> {
        match self {
            RateLimit::Off => None,
            RateLimit::Quota(q) => Some(q),
        }
    }
}

impl FromStr for RateLimit {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "off" | "none" => Ok(RateLimit::Off),
            quota => quota.parse().map(RateLimit::Quota),
        }
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RateLimit::Off => f.write_str("off"),
            RateLimit::Quota(q) => q.fmt(f),
        }
    }
}

impl Serialize for RateLimit {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RateLimit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A sale's own limits for its purchases; what is absent is the gateway's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SaleRateLimits {
    /// Purchases per buyer in this sale: `10/s`, `600/min burst 50`, or `off`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_buyer: Option<RateLimit>,
    /// Purchases per client address in this sale, written the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_ip: Option<RateLimit>,
}

impl SaleRateLimits {
    pub fn is_default(&self) -> bool {
        self.per_buyer.is_none() && self.per_ip.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_parse_as_people_write_them() {
        let q: RateQuota = "10/s".parse().unwrap();
        assert_eq!((q.count, q.per_ms, q.burst), (10, 1000, 10));
        let q: RateQuota = "600/min burst 50".parse().unwrap();
        assert_eq!((q.count, q.per_ms, q.burst), (600, 60_000, 50));
        assert_eq!(q.interval_micros(), 100_000);
        assert_eq!(q.window_secs(), 5);
        assert_eq!(q.to_string(), "600/min burst 50");
        assert_eq!("off".parse::<RateLimit>().unwrap(), RateLimit::Off);
        for bad in [
            "",
            "10",
            "0/s",
            "10/day",
            "10/s burst",
            "10/s burst 0",
            "10/s jump 3",
            "-1/s",
            "10/s burst 5 x",
        ] {
            assert!(bad.parse::<RateLimit>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn sale_limits_read_from_json() {
        let limits: SaleRateLimits =
            serde_json::from_str(r#"{"per_buyer": "2/s burst 3", "per_ip": "off"}"#).unwrap();
        assert_eq!(limits.per_ip, Some(RateLimit::Off));
        assert_eq!(
            serde_json::to_string(&limits).unwrap(),
            r#"{"per_buyer":"2/s burst 3","per_ip":"off"}"#
        );
        assert!(serde_json::from_str::<SaleRateLimits>(r#"{"per_ip": "lots"}"#).is_err());
    }
}
