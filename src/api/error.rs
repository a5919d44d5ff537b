//! Every refusal is `application/problem+json` (RFC 9457) with a stable `code`.

use std::borrow::Cow;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::problems::{self, Problem};
use crate::domain::{OrderStatus, Refusal};
use crate::engine::EngineError;
use crate::protect::{RateLimited, RateScope, Shed};

/// The `code` of a problem answer, in the response's extensions: the metrics layer
/// counts purchase outcomes by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProblemCode(pub &'static str);

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    /// Static for the refusals a sale answers by the thousand (sold out), so that the
    /// hottest answer allocates only its body.
    pub detail: Cow<'static, str>,
    /// Headers a refusal carries besides the usual ones (rate limits' policy), boxed:
    /// most refusals have none.
    pub headers: Option<Box<HeaderMap>>,
}

impl ApiError {
    pub fn new(problem: Problem, detail: impl Into<Cow<'static, str>>) -> Self {
        ApiError {
            status: problem.status,
            code: problem.code,
            detail: detail.into(),
            headers: None,
        }
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers
            .get_or_insert_with(Default::default)
            .insert(name, value);
        self
    }

    pub fn invalid(detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(problems::INVALID_REQUEST, detail)
    }
}

impl From<RateLimited> for ApiError {
    /// 429 with `Retry-After` and the IETF draft's `RateLimit-Policy` / `RateLimit`.
    fn from(limited: RateLimited) -> Self {
        let value = |text: String| HeaderValue::try_from(text).expect("ASCII header value");
        let detail = match limited.scope {
            RateScope::Buyer => "too many purchases by this buyer: retry after the time given",
            RateScope::Ip => "too many requests from this address: retry after the time given",
        };
        ApiError::new(problems::RATE_LIMITED, detail)
            .with_header(
                header::RETRY_AFTER,
                value(limited.retry_after_secs().to_string()),
            )
            .with_header(
                HeaderName::from_static("ratelimit-policy"),
                value(limited.policy_header()),
            )
            .with_header(
                HeaderName::from_static("ratelimit"),
                value(limited.limit_header()),
            )
    }
}

impl From<Shed> for ApiError {
    fn from(shed: Shed) -> Self {
        match shed {
            Shed::Overloaded => ApiError::new(
                problems::OVERLOADED,
                "too many purchases in flight: retry in a moment",
            ),
            Shed::TooLate(waited) => ApiError::new(
                problems::TIMEOUT,
                format!(
                    "the request waited {} ms in the server before its turn, too long to \
                     be decided: retry",
                    waited.as_millis()
                ),
            ),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let problem = match &e {
            EngineError::Refused(refusal) => {
                let detail = match refusal {
                    Refusal::SoldOut => "no stock left for this purchase",
                    Refusal::LimitReached => "this buyer has reached the sale's per-user limit",
                    Refusal::NotStarted => "the sale has not started yet",
                    Refusal::Ended => "the sale has ended",
                    Refusal::Paused => "the sale is paused; try again when it resumes",
                };
                let problem = match refusal {
                    Refusal::SoldOut => problems::SOLD_OUT,
                    Refusal::LimitReached => problems::LIMIT_REACHED,
                    Refusal::NotStarted => problems::NOT_STARTED,
                    Refusal::Ended => problems::ENDED,
                    Refusal::Paused => problems::PAUSED,
                };
                return Self::new(problem, detail);
            }
            EngineError::SaleNotFound(_) => problems::SALE_NOT_FOUND,
            EngineError::OrderNotFound(_) => problems::ORDER_NOT_FOUND,
            EngineError::Invalid(_) => problems::INVALID_REQUEST,
            EngineError::KeyReused => problems::IDEMPOTENCY_KEY_REUSED,
            EngineError::InProgress => problems::REQUEST_IN_PROGRESS,
            EngineError::TooManyKeys => problems::TOO_MANY_KEYS,
            EngineError::Unavailable(_) => problems::UNAVAILABLE,
            EngineError::QueueRequired => problems::QUEUE_REQUIRED,
            EngineError::NoQueue => problems::NO_QUEUE,
            EngineError::NotOpen(_) => problems::NOT_OPEN,
            EngineError::TicketNotFound(_) => problems::TICKET_NOT_FOUND,
            // The code is the status that stands in the way: `expired`, `cancelled`, `paid`.
            EngineError::OrderIs(status) => match status {
                OrderStatus::Pending => problems::PENDING,
                OrderStatus::Paid => problems::PAID,
                OrderStatus::Expired => problems::EXPIRED,
                OrderStatus::Cancelled => problems::CANCELLED,
                OrderStatus::Failed => problems::FAILED,
            },
        };
        Self::new(problem, e.to_string())
    }
}

/// The problem document, written straight from borrowed fields.
#[derive(Serialize)]
struct ProblemDocument<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'static str,
    status: u16,
    code: &'static str,
    detail: &'a str,
}

fn problem_bytes(status: StatusCode, code: &'static str, detail: &str) -> Vec<u8> {
    serde_json::to_vec(&ProblemDocument {
        kind: "about:blank",
        title: status.canonical_reason().unwrap_or("error"),
        status: status.as_u16(),
        code,
        detail,
    })
    .expect("a problem document always serializes")
}

/// The body of a 409 refusal with a static detail, serialized once per (code, detail)
/// and kept for the life of the process (a handful: the refusals and order states).
fn refusal_body(code: &'static str, detail: &'static str) -> &'static [u8] {
    static BODIES: std::sync::OnceLock<
        parking_lot::RwLock<std::collections::HashMap<[usize; 4], &'static [u8]>>,
    > = std::sync::OnceLock::new();
    // Static strings are told apart by address and length (a literal may be a prefix of
    // another at the same address): no hashing of their text per answer.
    let key = [
        code.as_ptr() as usize,
        code.len(),
        detail.as_ptr() as usize,
        detail.len(),
    ];
    let bodies = BODIES.get_or_init(Default::default);
    if let Some(body) = bodies.read().get(&key) {
        return body;
    }
    let body: &'static [u8] =
        Box::leak(problem_bytes(StatusCode::CONFLICT, code, detail).into_boxed_slice());
    bodies.write().entry(key).or_insert(body)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match (&self.detail, self.status) {
            // The refusals a sale answers by the thousand: written once, then shared.
            (Cow::Borrowed(detail), StatusCode::CONFLICT) => {
                Body::from(Bytes::from_static(refusal_body(self.code, detail)))
            }
            _ => Body::from(problem_bytes(self.status, self.code, &self.detail)),
        };
        let mut response = Response::new(body);
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Some(extra) = self.headers {
            headers.extend(*extra);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        crate::observe::metrics::refused(self.code);
        response.extensions_mut().insert(ProblemCode(self.code));
        response
    }
}

impl From<crate::engine::AdmissionError> for ApiError {
    fn from(e: crate::engine::AdmissionError) -> Self {
        use crate::engine::AdmissionError;
        match e {
            AdmissionError::Shed(shed) => shed.into(),
            AdmissionError::RateLimited(limited) => limited.into(),
            AdmissionError::AdminMayNotBuy => ApiError::new(
                problems::FORBIDDEN,
                "the admin token does not buy: buyers use their own token",
            ),
            AdmissionError::Engine(e) => e.into(),
        }
    }
}
