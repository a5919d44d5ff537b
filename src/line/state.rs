//! One sale's line in memory: its tickets in line order, who holds which, the head
//! (the next to decide), what is durable, and how fast it moves.
//!
//! A line may hold a million waiting tickets, so an entry is compact (~200 bytes): the
//! id as 32 bytes, the sale implied by the line, the purchase's fingerprint shared by
//! the tickets that buy the same thing, and the two lookups (by buyer, by id) are
//! tables of places hashed by the entry's own key, not maps holding copies of it.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use hashbrown::HashTable;

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
            sale_id: sale_id.into(),
            entries: Vec::with_capacity(tickets.len()),
            fingerprints: HashMap::new(),
            by_buyer: HashTable::new(),
            by_id: HashTable::new(),
            hasher: Default::default(),
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
                state.entries.push(Entry::void());
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

/// A ticket in its line; its seq is its index + 1, its sale the line's.
pub(super) struct Entry {
    /// The ticket id's 32 bytes (hex in `Ticket::id`); all zero for a void place.
    id: [u8; 32],
    user_id: Box<str>,
    fingerprint: Arc<str>,
    nonce: Box<str>,
    joined_at: Millis,
    decided_at: Option<Millis>,
    /// The ETA last shown, as a time: an ETA never rises.
    eta_at: Option<Millis>,
    order_id: Option<Box<str>>,
    refusal: Option<Box<str>>,
    status: TicketStatus,
    /// On disk (the join was answered).
    pub(super) durable: bool,
    /// A place whose join failed: nobody holds it.
    void: bool,
}

impl Entry {
    fn void() -> Entry {
        Entry {
            id: [0; 32],
            user_id: "".into(),
            fingerprint: "".into(),
            nonce: "".into(),
            joined_at: 0,
            decided_at: None,
            eta_at: None,
            order_id: None,
            refusal: None,
            status: TicketStatus::Closed,
            durable: true,
            void: true,
        }
    }

    fn waiting(&self) -> bool {
        !self.void && self.status == TicketStatus::Waiting
    }
}

/// A ticket id's 32 bytes; `None` if it is not 64 hex digits (no ticket has it).
fn id_bytes(id: &str) -> Option<[u8; 32]> {
    let mut bytes = [0; 32];
    hex::decode_to_slice(id, &mut bytes).ok()?;
    Some(bytes)
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
    sale_id: Arc<str>,
    /// Every ticket of the line; the one at index i has seq i + 1.
    entries: Vec<Entry>,
    /// One copy of each purchase the tickets make (most make the same).
    fingerprints: HashMap<Arc<str>, ()>,
    /// The seqs of the tickets held, found by their holder's id (hashed from the entry).
    by_buyer: HashTable<u64>,
    /// The same, found by the ticket's id.
    by_id: HashTable<u64>,
    hasher: std::hash::RandomState,
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
    /// Tickets waiting, with those still on their way to the store.
    pub(super) fn waiting(&self) -> u64 {
        self.figures.waiting
    }

    pub(super) fn next_seq(&self) -> u64 {
        self.entries.len() as u64 + 1
    }

    pub(super) fn push(&mut self, ticket: Ticket) {
        debug_assert_eq!(ticket.seq, self.next_seq());
        let id = id_bytes(&ticket.id)
            .unwrap_or_else(|| panic!("a ticket id is 64 hex digits: {}", ticket.id));
        let fingerprint = match self.fingerprints.get_key_value(ticket.fingerprint.as_str()) {
            Some((shared, ())) => shared.clone(),
            None => {
                let shared: Arc<str> = ticket.fingerprint.as_str().into();
                self.fingerprints.insert(shared.clone(), ());
                shared
            }
        };
        if ticket.status == TicketStatus::Waiting {
            self.figures.waiting += 1;
            metrics::line_waiting(1);
        }
        self.entries.push(Entry {
            id,
            user_id: ticket.user_id.into_boxed_str(),
            fingerprint,
            nonce: ticket.nonce.into_boxed_str(),
            joined_at: ticket.joined_at,
            decided_at: ticket.decided_at,
            eta_at: None,
            order_id: ticket.order_id.map(String::into_boxed_str),
            refusal: ticket.refusal.map(String::into_boxed_str),
            status: ticket.status,
            durable: false,
            void: false,
        });
        let (hasher, entries) = (&self.hasher, &self.entries);
        let by_buyer = |&seq: &u64| hasher.hash_one(&*entries[seq as usize - 1].user_id);
        let by_id = |&seq: &u64| hasher.hash_one(entries[seq as usize - 1].id);
        let seq = ticket.seq;
        let entry = &entries[seq as usize - 1];
        self.by_buyer
            .insert_unique(hasher.hash_one(&*entry.user_id), seq, by_buyer);
        self.by_id
            .insert_unique(hasher.hash_one(entry.id), seq, by_id);
    }

    fn entry(&self, seq: u64) -> Option<&Entry> {
        self.entries.get(seq.checked_sub(1)? as usize)
    }

    fn entry_mut(&mut self, seq: u64) -> Option<&mut Entry> {
        self.entries.get_mut(seq.checked_sub(1)? as usize)
    }

    /// The ticket at `seq`, whole.
    fn ticket(&self, seq: u64) -> Option<Ticket> {
        let entry = self.entry(seq)?;
        Some(Ticket {
            id: hex::encode(entry.id),
            sale_id: self.sale_id.to_string(),
            user_id: entry.user_id.to_string(),
            seq,
            fingerprint: entry.fingerprint.to_string(),
            nonce: entry.nonce.to_string(),
            joined_at: entry.joined_at,
            status: entry.status,
            order_id: entry.order_id.as_deref().map(String::from),
            refusal: entry.refusal.as_deref().map(String::from),
            decided_at: entry.decided_at,
        })
    }

    fn seq_of_buyer(&self, user_id: &str) -> Option<u64> {
        let hash = self.hasher.hash_one(user_id);
        let entries = &self.entries;
        self.by_buyer
            .find(hash, |&seq| &*entries[seq as usize - 1].user_id == user_id)
            .copied()
    }

    fn seq_of_id(&self, id: &[u8; 32]) -> Option<u64> {
        let hash = self.hasher.hash_one(id);
        let entries = &self.entries;
        self.by_id
            .find(hash, |&seq| entries[seq as usize - 1].id == *id)
            .copied()
    }

    /// The buyer's ticket, and whether it is on disk yet.
    pub(super) fn ticket_of(&self, user_id: &str) -> Option<(Ticket, bool)> {
        let seq = self.seq_of_buyer(user_id)?;
        Some((self.ticket(seq)?, self.entry(seq)?.durable))
    }

    pub(super) fn ticket_by_id(&self, id: &str) -> Option<Ticket> {
        self.ticket(self.seq_of_id(&id_bytes(id)?)?)
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
        let (user, id) = (entry.user_id.clone(), entry.id);
        let (hasher, entries) = (&self.hasher, &self.entries);
        if let Ok(found) = self.by_buyer.find_entry(hasher.hash_one(&*user), |&s| {
            s == seq && *entries[s as usize - 1].user_id == *user
        }) {
            found.remove();
        }
        if let Ok(found) = self.by_id.find_entry(hasher.hash_one(id), |&s| s == seq) {
            found.remove();
        }
        // Nobody holds the place: the head steps over it (else the line would stop
        // here for good, `skip_to_waiting` waiting for it to become durable).
        self.entries[seq as usize - 1] = Entry::void();
        self.figures.waiting -= 1;
        metrics::line_waiting(-1);
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
            .filter(|entry| entry.waiting())?;
        self.ticket(self.head)
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
        entry.status = status;
        entry.order_id = order_id.map(String::into_boxed_str);
        entry.refusal = refusal.map(Box::from);
        entry.decided_at = Some(at);
        let ticket = self.ticket(seq)?;
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
            id: Ticket::id_for("s", &format!("u{seq}"), "n"),
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

    /// A ticket is found by its holder and by its id, whole; a void place by neither.
    #[test]
    fn tickets_are_found_by_buyer_and_by_id() {
        let line = SaleLine::restored("s", RateLimit::Off, Vec::new());
        let mut state = line.state.lock();
        for seq in 1..=1_000 {
            state.push(ticket(seq));
        }
        state.appended(1_000, true);
        let (found, durable) = state.ticket_of("u700").expect("u700 holds a ticket");
        assert_eq!(found, ticket(700));
        assert!(!durable, "only the last append was answered");
        assert_eq!(state.ticket_by_id(&ticket(42).id), Some(ticket(42)));
        assert_eq!(state.ticket_by_id(&"0".repeat(64)), None);
        assert_eq!(state.ticket_by_id("not hex"), None);
        state.void(42);
        assert_eq!(state.ticket_by_id(&ticket(42).id), None);
        assert!(state.ticket_of("u42").is_none());
        assert_eq!(state.ticket_of("u43").map(|(t, _)| t.seq), Some(43));
    }

    /// A million waiting tickets must fit in 300 MB with the rest of the server: an
    /// entry's own size is the largest part of it.
    #[test]
    fn an_entry_stays_compact() {
        assert!(
            std::mem::size_of::<Entry>() <= 168,
            "{} bytes",
            std::mem::size_of::<Entry>()
        );
    }
}
