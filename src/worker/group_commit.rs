//! The group-commit writer of the in-process bus: it takes whatever orders are waiting
//! (up to `max_batch`), stores them in one transaction and only then answers each of
//! them. Told to stop, it closes its inbox (new orders are refused), stores what is
//! already in it, and returns.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::bus::{Envelope, OrderInbox};
use crate::store::{InsertOutcome, OrderStore};

pub async fn run_group_commit(
    mut inbox: OrderInbox,
    store: Arc<dyn OrderStore>,
    max_batch: usize,
    stop: CancellationToken,
) {
    let mut batch: Vec<Envelope> = Vec::with_capacity(max_batch);
    loop {
        // recv_many waits for the first order, then takes every order already queued:
        // under load, orders that arrive during one commit form the next batch.
        let received = tokio::select! {
            n = inbox.recv_many(&mut batch, max_batch) => n,
            () = stop.cancelled(), if !inbox.is_closed() => {
                inbox.close();
                continue;
            }
        };
        if received == 0 {
            break; // closed and drained
        }
        commit(&mut batch, store.as_ref()).await;
    }
    tracing::debug!("order writer stopped: bus closed and drained");
}

/// Stores the batch and answers each order of it.
async fn commit(batch: &mut Vec<Envelope>, store: &dyn OrderStore) {
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
                    InsertOutcome::Rejected(reason) => {
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
