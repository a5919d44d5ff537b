//! The Kafka bus's lag and dead letters, read in the background: a scrape must not wait
//! on the broker.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::bus::{BusSettings, BusUrl};
use crate::observe::metrics::{BUS_LAG, DLQ_SIZE};

/// Reads the lag and the dead letters every `every`, until `stop`.
pub async fn watch_bus(bus: BusSettings, every: Duration, stop: CancellationToken) {
    if bus.url == BusUrl::Memory {
        return;
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match crate::bus::consumer_lag(&bus).await {
            Ok(Some(lag)) => metrics::gauge!(BUS_LAG).set(lag as f64),
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "bus lag not read"),
        }
        match crate::worker::dead_letters(&bus, false).await {
            Ok(letters) => metrics::gauge!(DLQ_SIZE).set(letters.letters.len() as f64),
            Err(e) => tracing::debug!(error = %e, "dead letters not read"),
        }
    }
}
