//! Load beyond what the gateway can serve is refused early and cheaply, not queued:
//! purchases past `max_in_flight_purchases` get 503 `overloaded` at once, and a purchase
//! that waited in the server longer than `max_queue_time` before its decision is
//! refused `timeout` rather than decided late (its buyer has likely given up or retried).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// When the request's head arrived (set by the server's accept loop).
#[derive(Debug, Clone, Copy)]
pub struct ReceivedAt(pub Instant);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverloadLimits {
    pub max_in_flight_purchases: usize,
    pub max_queue_time: Duration,
}

pub struct Overload {
    limits: OverloadLimits,
    in_flight: Arc<Semaphore>,
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
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight_purchases)),
        }
    }

    /// A place among the purchases in flight, held until dropped; none when full.
    pub fn enter(&self) -> Result<OwnedSemaphorePermit, Shed> {
        self.in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| Shed::Overloaded)
    }

    /// Whether a request received at `received` may still be decided now.
    pub fn still_in_time(&self, received: Option<ReceivedAt>) -> Result<(), Shed> {
        match received {
            Some(ReceivedAt(at)) if at.elapsed() > self.limits.max_queue_time => {
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
        assert!(overload.still_in_time(Some(ReceivedAt(Instant::now()))).is_ok());
        let old = ReceivedAt(Instant::now() - Duration::from_millis(80));
        assert!(matches!(overload.still_in_time(Some(old)), Err(Shed::TooLate(_))));
        assert!(overload.still_in_time(None).is_ok());
    }
}
