//! Load beyond what the gateway can serve is refused early and cheaply, not queued:
//! purchases past `max_in_flight_purchases` get 503 `overloaded` at once, and a purchase
//! that waited in the server longer than `max_queue_time` before its decision is
//! refused `timeout` rather than decided late (its buyer has likely given up or retried).

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicUsize, Ordering};

/// Where a request came from and when its head arrived, set by the server's accept
/// loop as one request extension (the client's address and the queue-time rule).
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    pub peer: std::net::SocketAddr,
    pub at: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverloadLimits {
    pub max_in_flight_purchases: usize,
    pub max_queue_time: Duration,
}

pub struct Overload {
    limits: OverloadLimits,
    /// Purchases being served: a plain counter (cheaper than a semaphore: nobody waits).
    in_flight: Arc<AtomicUsize>,
}

/// A place among the purchases in flight; given back when dropped.
#[derive(Debug)]
pub struct InFlightPlace(Arc<AtomicUsize>);

impl Drop for InFlightPlace {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a purchase is not taken on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// Too many purchases in flight.
    Overloaded,
    /// It waited too long before its turn.
    TooLate(Duration),
}

impl Overload {
    pub fn new(limits: OverloadLimits) -> Self {
        Overload {
            limits,
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Purchases in flight right now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// A place among the purchases in flight, held until dropped; none when full.
    pub fn enter(&self) -> Result<InFlightPlace, Shed> {
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let place = InFlightPlace(self.in_flight.clone());
        if before >= self.limits.max_in_flight_purchases {
            // Dropping the place takes the count back.
            return Err(Shed::Overloaded);
        }
        Ok(place)
    }

    /// Whether a request received at `received` may still be decided now.
    pub fn still_in_time(&self, received: Option<Instant>) -> Result<(), Shed> {
        match received {
            Some(at) if at.elapsed() > self.limits.max_queue_time => {
                Err(Shed::TooLate(at.elapsed()))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_limit_purchases_are_shed_until_one_finishes() {
        let overload = Overload::new(OverloadLimits {
            max_in_flight_purchases: 2,
            max_queue_time: Duration::from_millis(50),
        });
        let first = overload.enter().unwrap();
        let _second = overload.enter().unwrap();
        assert_eq!(overload.enter().unwrap_err(), Shed::Overloaded);
        drop(first);
        assert!(overload.enter().is_ok());
    }

    #[test]
    fn a_request_that_waited_too_long_is_too_late() {
        let overload = Overload::new(OverloadLimits {
            max_in_flight_purchases: 2,
            max_queue_time: Duration::from_millis(50),
        });
        assert!(overload.still_in_time(Some(Instant::now())).is_ok());
        let old = Instant::now() - Duration::from_millis(80);
        assert!(matches!(
            overload.still_in_time(Some(old)),
            Err(Shed::TooLate(_))
        ));
        assert!(overload.still_in_time(None).is_ok());
    }
}
