//! Admission: the purchase's ordered checks, the product's precedence rule in one place.
//! What a purchase is refused for, in this order (the first that applies answers):
//!
//! Before the body is read (`enter`, then `before_body`):
//! 1. a place among the purchases in flight — none left: 503 `overloaded`, before any
//!    other work (the edge takes it first, ahead of its own extractors);
//! 2. credentials — a missing or forged buyer token is the edge's 401; the admin token
//!    does not buy once buyers have tokens: 403 `forbidden`;
//! 3. the route — a sale with a line is bought by joining it: its purchase route
//!    answers 409 `queue_required`, and the line of a sale without one 409 `no_queue`;
//! 4. the quick refusal — a purchase without an `Idempotency-Key` on a sale this
//!    gateway knows to be sold out, ended or not started is refused with that code
//!    (409) whatever its body says, before its rate limits count
//!    (`StockGate::quick_refusal`). A keyed purchase goes the whole way: it may be the
//!    retry of one that got a unit. A join has no quick refusal: whoever holds a ticket
//!    gets it back, sold out or not, so the line answers once it knows the buyer
//!    (`crate::line::Line::join`), and before the start or in a pause the buyer waits.
//!
//! The edge then reads the body (415, 413, 400 for a malformed one); then (`admit`):
//! 5. the sale — unknown: 404 `sale_not_found` (judged after the body, as every answer);
//! 6. the caller's rules — with buyer tokens the buyer is the token's `sub`: a body
//!    naming a `user_id` is 400;
//! 7. validation — quantities, items, buyer id against the sale: 400 `invalid_request`;
//! 8. rate limits — per address, then per buyer, the sale's own or the defaults: 429;
//! 9. queue time — a request that waited longer than `max_queue_time` in the server:
//!    503 `timeout`.
//!
//! What passes is an `Admitted` purchase, which only `Engine::place` takes.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use super::{Engine, EngineError};
use crate::domain::{PurchaseRequest, Refusal, Sale, ValidPurchase, now_millis, validate_purchase};
use crate::protect::overload::InFlightPlace;
use crate::protect::{Overload, RateLimited, RateLimiters, Shed};

/// Who asks, as the edge authenticated them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Buyer {
    /// Buyer tokens are off: the body's `user_id` names the buyer.
    Anonymous,
    /// A buyer, by the `sub` of a valid token.
    Token(String),
    /// The operator, with the admin token.
    Admin,
}

/// What the edge knows of a purchase before its body.
#[derive(Debug, Clone)]
pub struct PurchaseHead {
    pub sale_id: String,
    pub buyer: Buyer,
    /// The client's address (behind trusted proxies, the one they name).
    pub ip: IpAddr,
    pub key: Option<String>,
    /// When the request's head arrived, if the server's accept loop recorded it.
    pub arrived: Option<Instant>,
    /// A join of the sale's line (`POST /api/sales/{id}/queue`), not a purchase.
    pub via_line: bool,
}

/// Why a purchase was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    #[error("shed: {0:?}")]
    Shed(Shed),
    #[error("the admin token does not buy: buyers use their own token")]
    AdminMayNotBuy,
    #[error("rate limited: {0:?}")]
    RateLimited(RateLimited),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl From<Shed> for AdmissionError {
    fn from(shed: Shed) -> Self {
        AdmissionError::Shed(shed)
    }
}

impl From<RateLimited> for AdmissionError {
    fn from(limited: RateLimited) -> Self {
        AdmissionError::RateLimited(limited)
    }
}

/// A place among the purchases in flight, held until the purchase is answered.
#[derive(Debug)]
pub struct Slot(#[allow(dead_code)] InFlightPlace);

/// A purchase past the checks that come before its body.
#[derive(Debug)]
pub struct Opened {
    head: PurchaseHead,
    /// The sale, or why it could not be read: answered after the body is judged.
    sale: Result<Arc<Sale>, EngineError>,
    slot: Slot,
}

/// A purchase every check let through: the only way into `Engine::place`, or into a
/// sale's line (`into_parts`).
#[derive(Debug)]
pub struct Admitted {
    pub(super) sale: Arc<Sale>,
    pub(super) purchase: ValidPurchase,
    pub(super) key: Option<String>,
    /// Held until the purchase is answered.
    pub(super) _slot: Slot,
}

impl Admitted {
    /// The sale, the purchase and its key (a line keeps them until the ticket's turn),
    /// and the place among the requests in flight, to hold until the join is answered.
    pub fn into_parts(self) -> (Arc<Sale>, ValidPurchase, Option<String>, Slot) {
        (self.sale, self.purchase, self.key, self._slot)
    }
}

/// The checks and what they count: the rate limiters and the overload guard.
pub struct Admission {
    engine: Arc<Engine>,
    limits: Arc<RateLimiters>,
    overload: Arc<Overload>,
    /// Whether buyers identify with tokens (then the admin token does not buy).
    buyers_need_tokens: bool,
}

impl Admission {
    pub fn new(
        engine: Arc<Engine>,
        limits: Arc<RateLimiters>,
        overload: Arc<Overload>,
        buyers_need_tokens: bool,
    ) -> Admission {
        Admission {
            engine,
            limits,
            overload,
            buyers_need_tokens,
        }
    }

    /// No rate limits and no bound on purchases in flight: for tests and tools that
    /// place purchases in-process.
    pub fn unlimited(engine: Arc<Engine>) -> Admission {
        let overload = crate::protect::OverloadLimits {
            max_in_flight_purchases: usize::MAX,
            max_queue_time: std::time::Duration::MAX,
        };
        Admission::new(
            engine,
            Arc::new(RateLimiters::new(crate::protect::rate::RateDefaults {
                per_buyer: crate::domain::RateLimit::Off,
                per_ip: crate::domain::RateLimit::Off,
            })),
            Arc::new(Overload::new(overload)),
            false,
        )
    }

    /// Every step for a purchase whose body is already read (tests, tools): the edge
    /// runs the same steps with the body read between `before_body` and `admit`.
    pub async fn purchase(
        &self,
        head: PurchaseHead,
        request: PurchaseRequest,
    ) -> Result<Arc<crate::domain::Order>, AdmissionError> {
        let slot = self.enter()?;
        let opened = self.before_body(slot, head).await?;
        let admitted = self.admit(opened, request)?;
        Ok(self.engine.place(admitted).await?)
    }

    /// 1. A place among the purchases in flight (503 `overloaded` when none is left).
    pub fn enter(&self) -> Result<Slot, AdmissionError> {
        Ok(Slot(self.overload.enter()?))
    }

    /// 2–4. The checks that need no body: credentials, the route and the quick refusal.
    pub async fn before_body(
        &self,
        slot: Slot,
        head: PurchaseHead,
    ) -> Result<Opened, AdmissionError> {
        if head.buyer == Buyer::Admin && self.buyers_need_tokens {
            return Err(AdmissionError::AdminMayNotBuy);
        }
        let sale = self.engine.sale(&head.sale_id).await;
        if let Ok(sale) = &sale {
            match (sale.queue.is_some(), head.via_line) {
                (true, false) => return Err(EngineError::QueueRequired.into()),
                (false, true) => return Err(EngineError::NoQueue.into()),
                _ => {}
            }
            if let Some(refusal) = self.quick_refusal(sale, head.key.as_deref())
                && !head.via_line
            {
                return Err(EngineError::Refused(refusal).into());
            }
        }
        Ok(Opened { head, sale, slot })
    }

    /// 5–9. The checks on the body, in order; what passes may be placed.
    pub fn admit(
        &self,
        opened: Opened,
        mut request: PurchaseRequest,
    ) -> Result<Admitted, AdmissionError> {
        let Opened { head, sale, slot } = opened;
        let sale = sale?;
        if let Buyer::Token(buyer) = head.buyer {
            if !request.user_id.is_empty() {
                return Err(EngineError::Invalid(
                    "user_id is not accepted here: the buyer is the token's `sub`".into(),
                )
                .into());
            }
            request.user_id = buyer;
        }
        let purchase =
            validate_purchase(&sale, request).map_err(|e| EngineError::Invalid(e.to_string()))?;
        self.limits
            .admit_purchase(&sale.id, &sale.rate_limits, head.ip, &purchase.user_id)?;
        self.overload.still_in_time(head.arrived)?;
        // A line in front of the sale (a queue, a waiting room) asks here whether this
        // buyer's turn has come, once the purchase is known to be well-formed and
        // within its limits, and before the gate decides it.
        Ok(Admitted {
            sale,
            purchase,
            key: head.key,
            _slot: slot,
        })
    }

    /// The refusal a purchase would surely get, without a round trip (3.).
    fn quick_refusal(&self, sale: &Sale, key: Option<&str>) -> Option<Refusal> {
        self.engine.gate.quick_refusal(sale, key, now_millis())
    }

    /// Any request other than a purchase, by its address (429 past `rate_per_ip`).
    pub fn admit_request(&self, ip: IpAddr) -> Result<(), RateLimited> {
        self.limits.admit_request(ip)
    }

    /// Purchases in flight right now (a gauge of `/metrics`).
    pub fn in_flight(&self) -> usize {
        self.overload.in_flight()
    }

    /// Forgets the rate-limit keys that went quiet; how many are held.
    pub fn forget_idle(&self) -> usize {
        self.limits.forget_idle()
    }
}
