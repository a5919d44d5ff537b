//! The line in front of a sale (issue #25, embedded): a buyer joins it instead of
//! buying; their ticket is durable before they hear of it, and the sale's decider
//! takes the tickets strictly in line order, at the line's rate, through the engine's
//! usual purchase (`Engine::decide`, then `Engine::settle`), so that an accepted ticket
//! is an order like any other and I1–I6 hold.
//!
//! - `mod.rs`: joining, reading a ticket, the line's figures, the rate.
//! - `state.rs`: one sale's line in memory: who is where, positions, ETAs.
//! - `decider.rs`: the task that decides a sale's tickets in order.
//! - `journal.rs`: the group commits of new tickets and of decisions to the store.
//!
//! The ticket is the order's idempotency key (`Ticket::order_key`): a ticket decided
//! again after a crash (its order stored, its decision not) replays its order.
//! In memory: the tickets of the lines of sales not ended. A sale's line leaves memory
//! when its decider stops (the sale ended and its last ticket is closed); from then on
//! its tickets and figures are read from the store.

mod decider;
mod journal;
mod state;

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use crate::domain::{
    Millis, QueueSettings, RateLimit, Refusal, Sale, Ticket, TicketStatus, now_millis,
};
use crate::engine::{Admitted, Engine, EngineError};
use crate::observe::metrics;
use crate::store::{TicketCounts, TicketStore};
pub use state::LineFigures;
use state::SaleLine;

/// A ticket as its holder sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketState {
    pub ticket: Ticket,
    /// For a waiting ticket: 1 is the next to be decided.
    pub position: Option<u64>,
    /// For a waiting ticket: seconds until its turn, never rising; `None` until the
    /// line has a rate (set, or measured).
    pub eta_s: Option<u64>,
}

/// What a join did.
#[derive(Debug, Clone)]
pub struct Joined {
    pub state: TicketState,
    /// False: the buyer was in the line already, and this is their ticket.
    pub new: bool,
}

/// Every line of this process.
pub struct Line {
    engine: Arc<Engine>,
    store: Arc<dyn TicketStore>,
    /// The lines in memory, by sale (shared with the deciders, which take theirs out
    /// when they stop).
    lines: Arc<Mutex<HashMap<String, Arc<SaleLine>>>>,
    /// What a finished line's watchers get: it never changes.
    finished: tokio::sync::watch::Sender<u64>,
    appends: mpsc::UnboundedSender<journal::Append>,
    decisions: mpsc::UnboundedSender<Ticket>,
}

impl Line {
    /// Starts the journal's tasks and takes up the lines of the sales not finished
    /// where they stopped: their waiting tickets are decided from the first one.
    pub async fn start(
        engine: Arc<Engine>,
        store: Arc<dyn TicketStore>,
    ) -> Result<Arc<Line>, EngineError> {
        let (appends, appends_rx) = mpsc::unbounded_channel();
        let (decisions, decisions_rx) = mpsc::unbounded_channel();
        tokio::spawn(journal::append_tickets(store.clone(), appends_rx));
        tokio::spawn(journal::record_decisions(store.clone(), decisions_rx));
        let line = Arc::new(Line {
            engine,
            store,
            lines: Default::default(),
            finished: tokio::sync::watch::channel(0).0,
            appends,
            decisions,
        });
        for sale in line.engine.queued_sales() {
            line.running_line(&sale).await?;
        }
        Ok(line)
    }

    /// Joins the sale's line with an admitted purchase (`Admission` checked it as a
    /// join): `new` is false when the buyer holds a ticket in it already.
    pub async fn join(&self, admitted: Admitted) -> Result<Joined, EngineError> {
        // The join holds its place among the requests in flight until it is answered
        // (its ticket stored): a flood of joins is shed with 503 like purchases.
        let (sale, purchase, _key, _in_flight) = admitted.into_parts();
        let queue = sale.queue.ok_or(EngineError::NoQueue)?;
        let now = now_millis();
        if now < queue.opens_at {
            return Err(EngineError::NotOpen(
                chrono::DateTime::from_timestamp_millis(queue.opens_at)
                    .unwrap_or_default()
                    .to_rfc3339(),
            ));
        }
        let Some(line) = self.running_line(&sale).await? else {
            // The sale ended and its line left memory: a buyer who was in it gets
            // their ticket back, anyone else the end.
            let ticket = self
                .store
                .buyer_ticket(&sale.id, &purchase.user_id)
                .await?
                .ok_or(EngineError::Refused(Refusal::Ended))?;
            let state = TicketState {
                ticket,
                position: None,
                eta_s: None,
            };
            return Ok(Joined { state, new: false });
        };
        let (ticket, stored) = {
            let mut state = line.state.lock();
            if let Some((ticket, durable)) = state.ticket_of(&purchase.user_id) {
                if !durable {
                    return Err(EngineError::InProgress);
                }
                let state = state.view(ticket, &sale, now);
                return Ok(Joined { state, new: false });
            }
            // Not in the line: a closed line, an ended sale, or a sale this gateway
            // knows to be sold out takes nobody new (a line is closed by the decider
            // once the last unit's order is stored; the gate may know it first).
            let refusal = state.closed_by.or_else(|| self.engine.known_closed(&sale));
            if let Some(refusal) = refusal {
                return Err(EngineError::Refused(refusal));
            }
            // 64 random bits: a nonce the buyer did not choose (issue #26 lets them).
            let nonce = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
            let ticket = Ticket {
                id: Ticket::id_for(&sale.id, &purchase.user_id, &nonce),
                sale_id: sale.id.clone(),
                user_id: purchase.user_id.clone(),
                seq: state.next_seq(),
                fingerprint: purchase.fingerprint.clone(),
                nonce,
                joined_at: now,
                status: TicketStatus::Waiting,
                order_id: None,
                refusal: None,
                decided_at: None,
            };
            state.push(ticket.clone());
            // Sent under the line's lock: the journal appends a line's tickets in
            // `seq` order, so "durable through seq" is one number.
            let (done, stored) = oneshot::channel();
            let append = journal::Append {
                line: line.clone(),
                ticket: ticket.clone(),
                done,
            };
            if self.appends.send(append).is_err() {
                state.void(ticket.seq);
                return Err(EngineError::Unavailable("the line is shutting down".into()));
            }
            (ticket, stored)
        };
        match stored.await {
            Ok(true) => {
                // As it is now: the decider may have taken it while it was stored.
                let mut state = line.state.lock();
                let ticket = state.ticket_by_id(&ticket.id).unwrap_or(ticket);
                let state = state.view(ticket, &sale, now_millis());
                Ok(Joined { state, new: true })
            }
            _ => Err(EngineError::Unavailable(
                "the ticket could not be stored: join again".into(),
            )),
        }
    }

    /// A ticket as it stands now: from memory while its sale's line is there, else
    /// from the store (a finished sale's).
    pub async fn ticket(&self, id: &str) -> Result<TicketState, EngineError> {
        // The lines in memory are those of sales not finished: a few, each asked.
        let lines: Vec<Arc<SaleLine>> = self.lines.lock().values().cloned().collect();
        for line in lines {
            let Some(ticket) = line.state.lock().ticket_by_id(id) else {
                continue;
            };
            let sale = self.engine.sale(&line.sale_id).await?;
            // Viewed under the lock taken again: the ticket as it is now.
            let mut state = line.state.lock();
            let ticket = state.ticket_by_id(id).unwrap_or(ticket);
            return Ok(state.view(ticket, &sale, now_millis()));
        }
        let ticket = self
            .store
            .get_ticket(id)
            .await?
            .ok_or_else(|| EngineError::TicketNotFound(id.to_string()))?;
        Ok(TicketState {
            // Waiting in the store but not in memory: its line is not running here
            // (the sale is finished); it will not be decided any more.
            position: None,
            eta_s: None,
            ticket,
        })
    }

    /// A change of any ticket of the sale's line (for pushing updates): the receiver
    /// sees a new value after each decision, closure or rate change.
    pub async fn watch(
        &self,
        sale_id: &str,
    ) -> Result<tokio::sync::watch::Receiver<u64>, EngineError> {
        let sale = self.engine.sale(sale_id).await?;
        Ok(match self.running_line(&sale).await? {
            Some(line) => line.changed.subscribe(),
            None => self.finished.subscribe(),
        })
    }

    /// The line's public figures.
    pub async fn figures(
        &self,
        sale_id: &str,
    ) -> Result<(QueueSettings, LineFigures), EngineError> {
        let sale = self.engine.sale(sale_id).await?;
        let queue = sale.queue.ok_or(EngineError::NoQueue)?;
        let figures = match self.running_line(&sale).await? {
            Some(line) => line.state.lock().figures(now_millis()),
            None => {
                // Counted in the store, not read into memory again.
                let TicketCounts {
                    waiting,
                    decided,
                    timed_out,
                    closed,
                } = self.store.ticket_counts(&sale.id).await?;
                LineFigures {
                    waiting,
                    decided,
                    timed_out,
                    closed,
                    rate: queue.rate,
                    measured_per_s: None,
                }
            }
        };
        Ok((
            QueueSettings {
                rate: figures.rate,
                ..queue
            },
            figures,
        ))
    }

    /// An operator's change of the line's rate, live and for good.
    pub async fn set_rate(
        &self,
        sale_id: &str,
        rate: RateLimit,
    ) -> Result<QueueSettings, EngineError> {
        let sale = self.engine.sale(sale_id).await?;
        let queue = sale.queue.ok_or(EngineError::NoQueue)?;
        let changed = QueueSettings { rate, ..queue };
        let sale = self
            .store
            .set_queue(sale_id, &changed)
            .await?
            .ok_or_else(|| EngineError::SaleNotFound(sale_id.to_string()))?;
        let sale = Arc::new(sale);
        self.engine.cached_sale_changed(sale.clone());
        if let Some(line) = self.running_line(&sale).await? {
            line.state.lock().rate = rate;
            line.wake.notify_one();
            line.bump();
        }
        Ok(changed)
    }

    /// The sale's line in memory, taken up from the store the first time (and its
    /// decider started); `None` once the sale ended and nobody waits in its line (it
    /// stays in the store). An ended sale's line with tickets still waiting (a restart
    /// at its end) is taken up to close them.
    async fn running_line(&self, sale: &Arc<Sale>) -> Result<Option<Arc<SaleLine>>, EngineError> {
        if let Some(line) = self.lines.lock().get(&sale.id) {
            return Ok(Some(line.clone()));
        }
        if sale.has_ended(now_millis()) && self.store.ticket_counts(&sale.id).await?.waiting == 0 {
            return Ok(None);
        }
        let queue = sale.queue.ok_or(EngineError::NoQueue)?;
        let tickets = self.store.sale_tickets(&sale.id).await?;
        let mut lines = self.lines.lock();
        if let Some(line) = lines.get(&sale.id) {
            return Ok(Some(line.clone()));
        }
        let line = Arc::new(SaleLine::restored(&sale.id, queue.rate, tickets));
        lines.insert(sale.id.clone(), line.clone());
        metrics::lines_in_memory(1);
        let decider = decider::run(self.engine.clone(), line.clone(), self.decisions.clone());
        let (all_lines, sale_id) = (self.lines.clone(), sale.id.clone());
        tokio::spawn(async move {
            decider.await;
            all_lines.lock().remove(&sale_id);
            metrics::lines_in_memory(-1);
        });
        Ok(Some(line))
    }
}

/// When a ticket's wait runs out (`Ticket::deadline`, with the sale's line settings).
pub(crate) fn wait_deadline(ticket: &Ticket, sale: &Sale, queue: &QueueSettings) -> Millis {
    ticket.deadline(sale.starts_at, queue.max_wait_s)
}

/// A refusal that closes the line for everyone still in it.
pub(crate) fn closes_the_line(refusal: Refusal) -> bool {
    matches!(refusal, Refusal::SoldOut | Refusal::Ended)
}
