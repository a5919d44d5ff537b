//! Plain types and rules of a flash sale. Depends on no other module of the crate:
//! everything else (gate, bus, store, api) speaks in these types.

mod purchase;
mod queue;
mod rate;
mod sale;

pub use purchase::{
    Order, OrderEvent, OrderStatus, PurchaseError, PurchaseRequest, Units, ValidPurchase,
    valid_user_id, validate_purchase,
};
pub use queue::{Admit, LineOrder, NewQueue, QueueSettings, Ticket, TicketStatus};
pub use rate::{RateLimit, RateQuota, SaleRateLimits};
pub use sale::{AddStock, DEFAULT_ITEM, Item, NewSale, Sale, SaleError, SaleStatus};

/// Milliseconds since the Unix epoch. All times in the engine are UTC millis; the API
/// renders them as RFC 3339.
pub type Millis = i64;

pub fn now_millis() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

/// Why the gate refused a purchase. Each is a stable error `code` of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Refusal {
    SoldOut,
    LimitReached,
    NotStarted,
    Ended,
    /// An operator paused the sale (`POST /api/sales/{id}/pause`).
    Paused,
}

impl Refusal {
    pub fn code(self) -> &'static str {
        match self {
            Refusal::SoldOut => "sold_out",
            Refusal::LimitReached => "limit_reached",
            Refusal::NotStarted => "not_started",
            Refusal::Ended => "ended",
            Refusal::Paused => "paused",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        Some(match code {
            "sold_out" => Refusal::SoldOut,
            "limit_reached" => Refusal::LimitReached,
            "not_started" => Refusal::NotStarted,
            "ended" => Refusal::Ended,
            "paused" => Refusal::Paused,
            _ => return None,
        })
    }
}
