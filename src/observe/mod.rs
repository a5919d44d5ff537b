//! What operators see of a running flashsale: Prometheus metrics (`metrics.rs`, served at
//! `GET /metrics`), the request ids and log format (`logs.rs`), and the periodic status
//! line of `serve` (`status.rs`), and trace export (`trace.rs`, feature `otel`).

pub mod logs;
pub mod metrics;
pub mod status;
pub mod trace;
