//! The line's two group commits: new tickets (a join is answered once its ticket is
//! on disk) and decisions (recorded a batch at a time; a decision lost in a crash is
//! made again, and the ticket's order replays: `Ticket::order_key`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::state::SaleLine;
use crate::domain::Ticket;
use crate::store::TicketStore;

/// The most tickets one commit takes.
const BATCH: usize = 1_024;

/// A join waiting for its ticket to be on disk.
pub(super) struct Append {
    pub(super) line: Arc<SaleLine>,
    pub(super) ticket: Ticket,
    /// True once stored; false if the store failed (the join is refused 503).
    pub(super) done: oneshot::Sender<bool>,
}

/// Appends the joins a batch at a time, in the order they came (each line's in `seq`
/// order), until every sender is gone.
pub(super) async fn append_tickets(
    store: Arc<dyn TicketStore>,
    mut joins: mpsc::UnboundedReceiver<Append>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while joins.recv_many(&mut batch, BATCH).await > 0 {
        let tickets: Vec<Ticket> = batch.iter().map(|a| a.ticket.clone()).collect();
        crate::engine::delay_here_if_asked("slow-ticket-append").await;
        let stored = match store.append_tickets(&tickets).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, tickets = tickets.len(), "tickets not stored");
                false
            }
        };
        for append in batch.drain(..) {
            append.line.state.lock().appended(append.ticket.seq, stored);
            append.line.wake.notify_one();
            let _ = append.done.send(stored);
        }
    }
}

/// Records decisions a batch at a time; a batch the store refused is tried again a
/// moment later (a decision not on disk is made again after a restart, harmlessly).
pub(super) async fn record_decisions(
    store: Arc<dyn TicketStore>,
    mut decisions: mpsc::UnboundedReceiver<Ticket>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while decisions.recv_many(&mut batch, BATCH).await > 0 {
        while let Err(e) = store.settle_tickets(&batch).await {
            tracing::warn!(error = %e, tickets = batch.len(), "decisions not recorded; retrying");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        batch.clear();
    }
}
