//! The recorder: what the stages write down as they work, for operators to read. Metric
//! names, the recorder's installation, stage timers and outcome counters
//! (`metrics.rs`), the log format and request ids (`logs.rs`), and trace export
//! (`trace.rs`, feature `otel`). Nothing here imports another module of the crate, so
//! every stage may import it; the readers (`/metrics`, the status line) are in
//! `crate::exporter`.

pub mod logs;
pub mod metrics;
pub mod trace;
