//! Workers move orders from the bus into the store. In embedded mode that is the
//! group-commit writer: it takes whatever orders are waiting (up to `max_batch`), stores
//! them in one transaction and only then answers each of them.

#[cfg(feature = "kafka")]
pub mod dlq;
#[cfg(feature = "kafka")]
pub mod kafka;

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::bus::Envelope;
use crate::store::OrderStore;

pub async fn run_group_commit(
    mut rx: mpsc::Receiver<Envelope>,
    store: Arc<dyn OrderStore>,
    max_batch: usize,
) {
    let mut batch: Vec<Envelope> = Vec::with_capacity(max_batch);
    // recv_many waits for the first order, then takes every order already queued: under
    // load, orders that arrive during one commit form the next batch.
    while rx.recv_many(&mut batch, max_batch.max(1)).await > 0 {
        let orders: Vec<_> = batch.iter().map(|e| e.order.clone()).collect();
        let started = std::time::Instant::now();
        match store.insert_orders(&orders).await {
            Ok(outcomes) => {
                tracing::debug!(
                    size = orders.len(),
                    took_us = started.elapsed().as_micros() as u64,
                    "batch committed"
                );
                for (envelope, outcome) in batch.drain(..).zip(outcomes) {
                    let reply = match outcome {
                        crate::store::InsertOutcome::Rejected(reason) => {
                            tracing::error!(order = %envelope.order.id, %reason, "store refused an order");
                            Err(reason)
                        }
                        _ => Ok(()),
                    };
                    let _ = envelope.reply.send(reply);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, orders = orders.len(), "batch rolled back");
                for envelope in batch.drain(..) {
                    let _ = envelope.reply.send(Err(e.to_string()));
                }
            }
        }
    }
    tracing::debug!("order writer stopped: bus closed and drained");
}
