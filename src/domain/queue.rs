//! The line in front of a sale (issue #25): a sale created with `queue` is bought by
//! joining its line; the engine decides the tickets strictly in line order, at the
//! line's rate, through the usual gate and durable path.

use serde::{Deserialize, Serialize};

use super::{Millis, RateLimit, SaleError};

/// The longest a ticket may wait (a day).
const MAX_WAIT_S: u32 = 86_400;
const DEFAULT_MAX_WAIT_S: u32 = 600;

/// How a ticket at the head of the line is admitted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Admit {
    /// The engine decides the ticket's purchase itself: an order or a refusal.
    #[default]
    Decide,
    // `Visit` (an admission token to buy on the purchase route) is the waiting room's.
}

/// In which order the line is served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineOrder {
    /// First come, first served.
    #[default]
    Arrival,
    // `Shuffle` (the pre-queue drawn at the start) is the waiting room's.
}

/// A line as the sale's creator asks for it: checked and completed by `into_settings`.
#[derive(Debug, Clone, Default)]
pub struct NewQueue {
    pub admit: Option<Admit>,
    pub order: Option<LineOrder>,
    /// When the line opens (default: when the sale is created).
    pub opens_at: Option<Millis>,
    /// Decisions per second at most (default `off`: as fast as the gate decides).
    pub rate: Option<RateLimit>,
    /// Seconds a ticket may wait once the sale is open (default 600, at most a day).
    pub max_wait_s: Option<u32>,
}

/// A sale's line, as stored with the sale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSettings {
    pub admit: Admit,
    pub order: LineOrder,
    pub opens_at: Millis,
    pub rate: RateLimit,
    pub max_wait_s: u32,
}

impl NewQueue {
    pub fn into_settings(self, now: Millis) -> Result<QueueSettings, SaleError> {
        let max_wait_s = self.max_wait_s.unwrap_or(DEFAULT_MAX_WAIT_S);
        if max_wait_s == 0 || max_wait_s > MAX_WAIT_S {
            return Err(SaleError::Invalid(format!(
                "queue.max_wait_s must be 1 to {MAX_WAIT_S}"
            )));
        }
        Ok(QueueSettings {
            admit: self.admit.unwrap_or_default(),
            order: self.order.unwrap_or_default(),
            opens_at: self.opens_at.unwrap_or(now),
            rate: self.rate.unwrap_or(RateLimit::Off),
            max_wait_s,
        })
    }
}

impl QueueSettings {
    /// The time between two decisions at the line's rate (`None`: no pacing).
    pub fn decision_interval_micros(&self) -> Option<u64> {
        self.rate.quota().map(|q| q.interval_micros())
    }
}

/// Where a ticket stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketStatus {
    /// In the line; `position` 1 is the next to be decided.
    Waiting,
    /// Its purchase was decided: an order, or a refusal.
    Decided,
    /// It waited longer than the line's `max_wait_s`.
    Timeout,
    /// The sale sold out or ended while it waited.
    Closed,
}

impl TicketStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TicketStatus::Waiting => "waiting",
            TicketStatus::Decided => "decided",
            TicketStatus::Timeout => "timeout",
            TicketStatus::Closed => "closed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "waiting" => TicketStatus::Waiting,
            "decided" => TicketStatus::Decided,
            "timeout" => TicketStatus::Timeout,
            "closed" => TicketStatus::Closed,
            _ => return None,
        })
    }
}

/// A buyer's place in a sale's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// Hex SHA-256 of `sale_id/buyer/nonce`: a buyer can recompute their own.
    pub id: String,
    pub sale_id: String,
    pub user_id: String,
    /// The place in the line: tickets are decided in ascending `seq`, from 1.
    pub seq: u64,
    /// What the ticket buys, as `ValidPurchase::fingerprint` writes it.
    pub fingerprint: String,
    pub nonce: String,
    pub joined_at: Millis,
    pub status: TicketStatus,
    /// The order, once decided with one.
    pub order_id: Option<String>,
    /// The refusal's code, once decided without an order (or why it closed).
    pub refusal: Option<String>,
    pub decided_at: Option<Millis>,
}

impl Ticket {
    /// The ticket id a buyer with `nonce` gets in a sale (issue #26 makes it public).
    pub fn id_for(sale_id: &str, user_id: &str, nonce: &str) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(format!("{sale_id}/{user_id}/{nonce}")))
    }

    /// The idempotency key of the order a ticket becomes: deciding a ticket again
    /// (after a crash between the order and the ticket's decision) replays its order.
    pub fn order_key(&self) -> String {
        format!("ticket:{}", self.id)
    }

    /// When the ticket's wait runs out: `max_wait_s` after its join or the sale's
    /// start, whichever is later (a line that opens early does not time out its first
    /// buyers before the sale begins).
    pub fn deadline(&self, sale_starts_at: Millis, max_wait_s: u32) -> Millis {
        self.joined_at.max(sale_starts_at) + max_wait_s as Millis * 1000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_takes_its_defaults_and_refuses_a_wait_out_of_range() {
        let settings = NewQueue::default().into_settings(1_000).unwrap();
        assert_eq!(settings.opens_at, 1_000);
        assert_eq!(settings.rate, RateLimit::Off);
        assert_eq!(settings.max_wait_s, 600);
        assert_eq!(settings.decision_interval_micros(), None);
        for bad in [0, MAX_WAIT_S + 1] {
            let queue = NewQueue {
                max_wait_s: Some(bad),
                ..Default::default()
            };
            assert!(queue.into_settings(0).is_err(), "{bad}");
        }
        let paced = NewQueue {
            rate: Some("500/s".parse().unwrap()),
            ..Default::default()
        };
        let paced = paced.into_settings(0).unwrap();
        assert_eq!(paced.decision_interval_micros(), Some(2_000));
    }

    #[test]
    fn a_ticket_id_is_the_hash_of_sale_buyer_and_nonce() {
        let id = Ticket::id_for("s", "alice", "n1");
        assert_eq!(id.len(), 64);
        assert_eq!(id, Ticket::id_for("s", "alice", "n1"));
        assert_ne!(id, Ticket::id_for("s", "alice", "n2"));
        assert_ne!(id, Ticket::id_for("s", "bob", "n1"));
    }
}
