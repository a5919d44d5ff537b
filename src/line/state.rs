//! One sale's line in memory: its tickets in line order, who holds which, the head
//! (the next to decide), what is durable, and how fast it moves.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, watch};

use super::TicketState;
use crate::domain::{Millis, RateLimit, Refusal, Sale, Ticket, TicketStatus};
use crate::observe::metrics::{self, LineOutcome};

/// How far back the measured decision rate looks.
const RATE_WINDOW_MS: Millis = 10_000;
/// The most decision times kept for it.
const RATE_SAMPLES: usize = 4_096;

pub(super) struct SaleLine {
    pub(super) sale_id: String,
    pub(super) state: Mutex<LineState>,
    /// Wakes the decider: a ticket became durable, the rate changed.
    pub(super) wake: Notify,
    /// Counts the line's changes, for those who push them to the people in it.
    pub(super) changed: watch::Sender<u64>,
}

impl SaleLine {
    /// The line as the store keeps it (empty for a new line): the head is its first
    /// waiting ticket.
    pub(super) fn restored(sale_id: &str, rate: RateLimit, tickets: Vec<Ticket>) -> SaleLine {
        let mut state = LineState {
            entries: Vec::with_capacity(tickets.len()),
            by_buyer: HashMap::new(),
            by_id: HashMap::new(),
            head: 1,
            durable_through: 0,
            closed_by: None,
            rate,
            recent: VecDeque::new(),
            figures: LineFigures {
                waiting: 0,
                decided: 0,
                timed_out: 0,
                closed: 0,
                rate,
                measured_per_s: None,
            },
        };
        for ticket in tickets {
            // A batch of joins that failed left its seqs unused: keep them as void
            // places, so that an entry's index stays its seq.
            while state.next_seq() < ticket.seq {
                let seq = state.next_seq();
                state.entries.push(Entry::void(seq));
            }
            state.durable_through = ticket.seq;
            state.count(ticket.status, 1);
            state.push(ticket);
            state.entries.last_mut().expect("pushed").durable = true;
        }
        state.skip_to_waiting();
        SaleLine {
            sale_id: sale_id.to_string(),
            state: Mutex::new(state),
            wake: Notify::new(),
            changed: watch::channel(0).0,
        }
    }

    /// Tells whoever watches the line that something changed.
    pub(super) fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }
}

pub(super) struct Entry {
    pub(super) ticket: Ticket,
    /// On disk (the join was answered).
    pub(super) durable: bool,
    /// A place whose join failed: nobody holds it.
    void: bool,
    /// The ETA last shown, as a time: an ETA never rises.
    eta_at: Option<Millis>,
}

impl Entry {
    fn void(seq: u64) -> Entry {
        Entry {
            ticket: Ticket {
                id: String::new(),
                sale_id: String::new(),
                user_id: String::new(),
                seq,
                fingerprint: String::new(),
                nonce: String::new(),
                joined_at: 0,
                status: TicketStatus::Closed,
                order_id: None,
                refusal: None,
                decided_at: None,
            },
            durable: true,
            void: true,
            eta_at: None,
        }
    }

    fn waiting(&self) -> bool {
        !self.void && self.ticket.status == TicketStatus::Waiting
    }
}

/// What `GET /api/sales/{id}/queue` shows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LineFigures {
    pub waiting: u64,
    pub decided: u64,
    pub timed_out: u64,
    pub closed: u64,
    /// The line's rate now (an operator may have changed it).
    pub rate: RateLimit,
    /// Decisions per second over the last seconds (`None`: none lately).
    pub measured_per_s: Option<f64>,
}

pub(super) struct LineState {
    /// Every ticket of the line; the one at index i has seq i + 1.
    entries: Vec<Entry>,
    by_buyer: HashMap<String, u64>,
    by_id: HashMap<String, u64>,
    /// The seq of the next ticket to decide: every one before it is taken.
    head: u64,
    /// Every ticket up to this seq is on disk (or void).
    durable_through: u64,
    /// Why the line closed (sold out, ended): nobody joins it any more, and whoever
    /// is in it is told at once.
    pub(super) closed_by: Option<Refusal>,
    pub(super) rate: RateLimit,
    /// When the last decisions were made, oldest first.
    recent: VecDeque<Millis>,
    figures: LineFigures,
}

impl LineState {
    pub(super) fn next_seq(&self) -> u64 {
        self.entries.len() as u64 + 1
    }

    pub(super) fn push(&mut self, ticket: Ticket) {
        debug_assert_eq!(ticket.seq, self.next_seq());
        self.by_buyer.insert(ticket.user_id.clone(), ticket.seq);
        self.by_id.insert(ticket.id.clone(), ticket.seq);
        if ticket.status == TicketStatus::Waiting {
            self.figures.waiting += 1;
            metrics::line_waiting(1);
        }
        self.entries.push(Entry {
            ticket,
            durable: false,
            void: false,
            eta_at: None,
        });
    }

    fn entry(&self, seq: u64) -> Option<&Entry> {
        self.entries.get(seq.checked_sub(1)? as usize)
    }

    fn entry_mut(&mut self, seq: u64) -> Option<&mut Entry> {
        self.entries.get_mut(seq.checked_sub(1)? as usize)
    }

    pub(super) fn ticket_of(&self, user_id: &str) -> Option<&Entry> {
        self.entry(*self.by_buyer.get(user_id)?)
    }

    pub(super) fn ticket_by_id(&self, id: &str) -> Option<&Ticket> {
        Some(&self.entry(*self.by_id.get(id)?)?.ticket)
    }

    pub(super) fn ids(&self) -> Vec<String> {
        self.by_id.keys().cloned().collect()
    }

    /// The journal stored the ticket (`stored`), or failed to: then its place is void.
    pub(super) fn appended(&mut self, seq: u64, stored: bool) {
        self.durable_through = self.durable_through.max(seq);
        if stored {
            if let Some(entry) = self.entry_mut(seq) {
                entry.durable = true;
                metrics::line_joined();
            }
        } else {
            self.void(seq);
        }
    }

    /// Gives up a place whose ticket was never stored.
    pub(super) fn void(&mut self, seq: u64) {
        let Some(entry) = self.entry_mut(seq) else {
            return;
        };
        if entry.void {
            return;
        }
        entry.void = true;
        // Nobody holds the place: the head steps over it (else the line would stop
        // here for good, `skip_to_waiting` waiting for it to become durable).
        entry.durable = true;
        let (user, id) = (entry.ticket.user_id.clone(), entry.ticket.id.clone());
        self.figures.waiting -= 1;
        metrics::line_waiting(-1);
        self.by_buyer.remove(&user);
        self.by_id.remove(&id);
    }

    /// Moves the head past the places that are not waiting (void, closed, or decided
    /// before a restart).
    fn skip_to_waiting(&mut self) {
        while let Some(entry) = self.entry(self.head) {
            if entry.waiting() || !entry.durable {
                break;
            }
            self.head += 1;
        }
    }

    /// The ticket at the head of the line, if it is on disk.
    pub(super) fn head(&mut self) -> Option<Ticket> {
        self.skip_to_waiting();
        (self.head <= self.durable_through)
            .then(|| self.entry(self.head))
            .flatten()
            .filter(|entry| entry.waiting())
            .map(|entry| entry.ticket.clone())
    }

    /// The head is being decided: the line moves on.
    pub(super) fn take(&mut self, seq: u64) {
        debug_assert_eq!(seq, self.head);
        self.head = seq + 1;
    }

    /// Records a ticket's end; the ticket as it is now, for the journal. `None` if it
    /// had ended already.
    pub(super) fn end(
        &mut self,
        seq: u64,
        status: TicketStatus,
        order_id: Option<String>,
        refusal: Option<&str>,
        at: Millis,
    ) -> Option<Ticket> {
        let entry = self.entry_mut(seq)?;
        if !entry.waiting() {
            return None;
        }
        entry.ticket.status = status;
        entry.ticket.order_id = order_id;
        entry.ticket.refusal = refusal.map(String::from);
        entry.ticket.decided_at = Some(at);
        let ticket = entry.ticket.clone();
        self.figures.waiting -= 1;
        self.count(status, 1);
        let outcome = match status {
            TicketStatus::Decided if ticket.order_id.is_some() => LineOutcome::Success,
            TicketStatus::Decided | TicketStatus::Waiting => LineOutcome::Refused,
            TicketStatus::Timeout => LineOutcome::Timeout,
            TicketStatus::Closed => LineOutcome::Closed,
        };
        metrics::line_waiting(-1);
        let waited = Duration::from_millis(at.saturating_sub(ticket.joined_at).max(0) as u64);
        metrics::line_ended(outcome, waited);
        if status == TicketStatus::Decided {
            // A settled order's decision may be older than the last one recorded.
            let sample = self.recent.back().map_or(at, |&last| last.max(at));
            self.recent.push_back(sample);
            if self.recent.len() > RATE_SAMPLES {
                self.recent.pop_front();
            }
        }
        Some(ticket)
    }

    fn count(&mut self, status: TicketStatus, n: u64) {
        match status {
            TicketStatus::Waiting => {}
            TicketStatus::Decided => self.figures.decided += n,
            TicketStatus::Timeout => self.figures.timed_out += n,
            TicketStatus::Closed => self.figures.closed += n,
        }
    }

    /// Closes the line: every ticket still waiting on disk ends `closed` with the
    /// refusal's code (those still on their way are closed when they reach the head).
    pub(super) fn close(&mut self, refusal: Refusal, at: Millis) -> Vec<Ticket> {
        self.closed_by = Some(refusal);
        let from = self.head;
        let mut closed = Vec::new();
        for seq in from..=self.durable_through {
            if let Some(ticket) =
                self.end(seq, TicketStatus::Closed, None, Some(refusal.code()), at)
            {
                closed.push(ticket);
            }
        }
        closed
    }

    /// Decisions per second over the last `RATE_WINDOW_MS`.
    fn measured_per_s(&mut self, now: Millis) -> Option<f64> {
        while self
            .recent
            .front()
            .is_some_and(|&t| t < now - RATE_WINDOW_MS)
        {
            self.recent.pop_front();
        }
        let first = *self.recent.front()?;
        let span_ms = (now - first).max(1_000);
        Some(self.recent.len() as f64 * 1_000.0 / span_ms as f64)
    }

    /// Decisions per second to expect: the rate set, or (off) the rate measured.
    fn expected_per_s(&mut self, now: Millis) -> Option<f64> {
        match self.rate.quota() {
            Some(q) => Some(q.count as f64 * 1_000.0 / q.per_ms as f64),
            None => self.measured_per_s(now),
        }
    }

    /// A ticket as its holder sees it at `now`: for a waiting one, its position and an
    /// ETA that never rises.
    pub(super) fn view(&mut self, ticket: Ticket, sale: &Sale, now: Millis) -> TicketState {
        if ticket.status != TicketStatus::Waiting {
            return TicketState {
                ticket,
                position: None,
                eta_s: None,
            };
        }
        // Those ahead: everything from the head on, until this ticket. Taken tickets
        // still being decided count as position 1.
        let position = ticket.seq.saturating_sub(self.head) + 1;
        let to_start = (sale.starts_at - now).max(0);
        let expected = self.expected_per_s(now);
        let eta_at =
            expected.map(|per_s| now + to_start + (position as f64 * 1_000.0 / per_s) as Millis);
        let entry = self.entry_mut(ticket.seq);
        let eta_s = match (entry, eta_at) {
            (Some(entry), Some(at)) => {
                let shown = entry.eta_at.map_or(at, |before| before.min(at));
                entry.eta_at = Some(shown);
                Some(((shown - now).max(0) as u64).div_ceil(1_000))
            }
            (Some(entry), None) => entry
                .eta_at
                .map(|at| ((at - now).max(0) as u64).div_ceil(1_000)),
            (None, _) => None,
        };
        TicketState {
            ticket,
            position: Some(position),
            eta_s,
        }
    }

    pub(super) fn figures(&mut self, now: Millis) -> LineFigures {
        LineFigures {
            rate: self.rate,
            measured_per_s: self.measured_per_s(now),
            ..self.figures
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(seq: u64) -> Ticket {
        Ticket {
            id: format!("t{seq}"),
            sale_id: "s".into(),
            user_id: format!("u{seq}"),
            seq,
            fingerprint: "default:1".into(),
            nonce: "n".into(),
            joined_at: 0,
            status: TicketStatus::Waiting,
            order_id: None,
            refusal: None,
            decided_at: None,
        }
    }

    /// A place whose join failed to be stored is stepped over: the tickets behind it
    /// are decided (the line stopped there for good before).
    #[test]
    fn a_failed_join_does_not_stop_the_line() {
        let line = SaleLine::restored("s", RateLimit::Off, Vec::new());
        let mut state = line.state.lock();
        for seq in 1..=3 {
            state.push(ticket(seq));
        }
        state.appended(1, true);
        state.appended(2, false);
        state.appended(3, true);
        assert_eq!(state.head().map(|t| t.seq), Some(1));
        state.take(1);
        assert_eq!(
            state.head().map(|t| t.seq),
            Some(3),
            "the void place is skipped"
        );
        assert_eq!(state.figures(0).waiting, 2);
    }
}
