//! What operators read of a running gateway, from what `crate::observe` recorded and
//! what the engine and the bus tell: the `/metrics` page (`metrics_page.rs`, rendered
//! from plain gauge values), the Kafka bus watcher (`bus_watch.rs`), and the status line
//! of `serve` (`status.rs`). Only the edge (`server`, `api`) imports this module; the
//! stages record into `observe` and know nothing of it.

mod bus_watch;
mod metrics_page;
mod status;

pub use bus_watch::watch_bus;
pub use metrics_page::{Gauges, MetricsPage, SaleGauges};
pub use status::print_status;
