//! A circuit breaker per backend (gate, bus, store) on the request path: after
//! `failures_to_open` failures in a row, requests fail fast (503 `unavailable`) for a
//! cool-down instead of each waiting out the backend's timeout; then one request is let
//! through as a probe: its success closes the breaker, its failure opens it again.
//!
//! Only unavailability counts as a failure (a timeout, a lost connection), never an
//! answer (a refusal, an unknown sale). Background work (sweeper, rebuilds, workers)
//! does not go through the breakers: it has its own retries, and keeps probing anyway.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    pub failures_to_open: u32,
    pub cool_down: Duration,
}

/// The breaker is open: the backend is not tried until `retry_in` has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerOpen {
    pub backend: &'static str,
    pub retry_in: Duration,
}

impl std::fmt::Display for BreakerOpen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the {} is failing: not tried for the next {} ms (circuit open)",
            self.backend,
            self.retry_in.as_millis().max(1)
        )
    }
}

#[derive(Debug)]
pub struct CircuitBreaker {
    backend: &'static str,
    settings: BreakerSettings,
    epoch: Instant,
    failures: AtomicU32,
    /// Micros since `epoch` when the cool-down ends; 0 while closed.
    open_until: AtomicU64,
    /// A probe is out (half-open): the others still fail fast.
    probing: AtomicBool,
}

impl CircuitBreaker {
    pub fn new(backend: &'static str, settings: BreakerSettings) -> Self {
        CircuitBreaker {
            backend,
            settings,
            epoch: Instant::now(),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
        }
    }

    fn now_micros(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64 + 1
    }

    /// Whether a call may go to the backend now (closed: one atomic load). The permit
    /// records the call's outcome; a probe's permit dropped unused frees the probe.
    pub fn admit(self: &Arc<Self>) -> Result<Permit, BreakerOpen> {
        let open_until = self.open_until.load(Ordering::Acquire);
        if open_until == 0 {
            return Ok(Permit::new(self, false));
        }
        let now = self.now_micros();
        if now < open_until {
            return Err(self.open(open_until - now));
        }
        // Cool-down over: one probe at a time.
        if self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            Ok(Permit::new(self, true))
        } else {
            Err(self.open(0))
        }
    }

    fn open(&self, micros: u64) -> BreakerOpen {
        BreakerOpen {
            backend: self.backend,
            retry_in: Duration::from_micros(micros),
        }
    }

    /// The backend answered.
    pub fn success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0
            || self.open_until.load(Ordering::Relaxed) != 0
        {
            self.failures.store(0, Ordering::Relaxed);
            self.open_until.store(0, Ordering::Release);
            self.probing.store(false, Ordering::Release);
            tracing::info!(
                backend = self.backend,
                "circuit closed: the backend answers again"
            );
        }
    }

    /// The backend was unavailable.
    pub fn failure(&self) {
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let probe_failed = self.probing.load(Ordering::Acquire);
        if failures >= self.settings.failures_to_open || probe_failed {
            let until = self.now_micros() + self.settings.cool_down.as_micros() as u64;
            self.open_until.store(until, Ordering::Release);
            self.probing.store(false, Ordering::Release);
            tracing::warn!(
                backend = self.backend,
                failures,
                cool_down_ms = self.settings.cool_down.as_millis() as u64,
                "circuit open: failing fast"
            );
        }
    }

    /// Runs `call` through the breaker; `unavailable` tells which errors count.
    pub async fn call<T, E>(
        self: &Arc<Self>,
        call: impl Future<Output = Result<T, E>>,
        unavailable: impl Fn(&E) -> bool,
    ) -> Result<Result<T, E>, BreakerOpen> {
        let permit = self.admit()?;
        let result = call.await;
        permit.record(!matches!(&result, Err(e) if unavailable(e)));
        Ok(result)
    }
}

/// One call let through; say how it went with `record`.
#[derive(Debug)]
pub struct Permit {
    breaker: Arc<CircuitBreaker>,
    probe: bool,
}

impl Permit {
    fn new(breaker: &Arc<CircuitBreaker>, probe: bool) -> Self {
        Permit {
            breaker: breaker.clone(),
            probe,
        }
    }

    /// Whether the backend answered (`true`) or was unavailable.
    pub fn record(mut self, answered: bool) {
        self.probe = false;
        if answered {
            self.breaker.success();
        } else {
            self.breaker.failure();
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.probe {
            // The call never reached the backend (e.g. refused before it): another
            // request may probe.
            self.breaker.probing.store(false, Ordering::Release);
        }
    }
}

/// The breakers of the three backends.
pub struct Breakers {
    pub gate: Arc<CircuitBreaker>,
    pub bus: Arc<CircuitBreaker>,
    pub store: Arc<CircuitBreaker>,
}

impl Breakers {
    pub fn new(settings: BreakerSettings) -> Self {
        Breakers {
            gate: Arc::new(CircuitBreaker::new("stock gate", settings)),
            bus: Arc::new(CircuitBreaker::new("order bus", settings)),
            store: Arc::new(CircuitBreaker::new("order store", settings)),
        }
    }
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failures_to_open: 5,
            cool_down: Duration::from_secs(2),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Arc<CircuitBreaker> {
        Arc::new(CircuitBreaker::new(
            "store",
            BreakerSettings {
                failures_to_open: 3,
                cool_down: Duration::from_secs(2),
            },
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_failures_in_a_row_then_probes_and_closes() {
        let breaker = breaker();
        for _ in 0..2 {
            breaker.admit().unwrap().record(false);
        }
        // A success in between resets the count.
        breaker.success();
        for _ in 0..3 {
            breaker.admit().unwrap().record(false);
        }
        let open = breaker.admit().unwrap_err();
        assert_eq!(open.retry_in, Duration::from_secs(2));
        assert!(open.to_string().contains("circuit open"), "{open}");
        tokio::time::advance(Duration::from_millis(1999)).await;
        assert!(breaker.admit().is_err());
        tokio::time::advance(Duration::from_millis(2)).await;
        // Half-open: one probe goes, the rest still fail fast.
        let probe = breaker.admit().unwrap();
        assert!(breaker.admit().is_err());
        // A probe that never reached the backend lets another probe.
        drop(probe);
        let probe = breaker.admit().unwrap();
        assert!(breaker.admit().is_err());
        probe.record(true);
        breaker.admit().unwrap();
        breaker.admit().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_it_again_at_once() {
        let breaker = breaker();
        for _ in 0..3 {
            breaker.failure();
        }
        tokio::time::advance(Duration::from_secs(3)).await;
        breaker.admit().unwrap().record(false);
        assert_eq!(
            breaker.admit().unwrap_err().retry_in,
            Duration::from_secs(2)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn answers_that_are_not_unavailability_do_not_count() {
        let breaker = breaker();
        for _ in 0..10 {
            let answer = breaker
                .call(async { Err::<(), _>("unknown sale") }, |e| *e == "timeout")
                .await
                .unwrap();
            assert!(answer.is_err());
        }
        breaker.admit().unwrap();
        for _ in 0..3 {
            let _ = breaker
                .call(async { Err::<(), _>("timeout") }, |e| *e == "timeout")
                .await;
        }
        assert!(
            breaker
                .call(async { Ok::<(), &str>(()) }, |_| true)
                .await
                .is_err()
        );
    }
}
