//! Every refusal is `application/problem+json` (RFC 9457) with a stable `code`.

use std::borrow::Cow;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::domain::Refusal;
use crate::engine::EngineError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    /// Static for the refusals a sale answers by the thousand (sold out), so that the
    /// hottest answer allocates only its body.
    pub detail: Cow<'static, str>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: &'static str,
        detail: impl Into<Cow<'static, str>>,
    ) -> Self {
        ApiError {
            status,
            code,
            detail: detail.into(),
        }
    }

    pub fn invalid(detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", detail)
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let (status, code) = match &e {
            EngineError::Refused(refusal) => {
                let detail = match refusal {
                    Refusal::SoldOut => "no stock left for this purchase",
                    Refusal::LimitReached => "this buyer has reached the sale's per-user limit",
                    Refusal::NotStarted => "the sale has not started yet",
                    Refusal::Ended => "the sale has ended",
                };
                return Self::new(StatusCode::CONFLICT, refusal.code(), detail);
            }
            EngineError::SaleNotFound(_) => (StatusCode::NOT_FOUND, "sale_not_found"),
            EngineError::OrderNotFound(_) => (StatusCode::NOT_FOUND, "order_not_found"),
            EngineError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            EngineError::KeyReused => (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"),
            EngineError::InProgress => (StatusCode::CONFLICT, "request_in_progress"),
            EngineError::TooManyKeys => (StatusCode::TOO_MANY_REQUESTS, "too_many_keys"),
            EngineError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            // The code is the status that stands in the way: `expired`, `cancelled`, `paid`.
            EngineError::OrderIs(status) => (StatusCode::CONFLICT, status.as_str()),
        };
        Self::new(status, code, e.to_string())
    }
}

/// The problem document, written straight from borrowed fields.
#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'static str,
    status: u16,
    code: &'static str,
    detail: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&Problem {
            kind: "about:blank",
            title: self.status.canonical_reason().unwrap_or("error"),
            status: self.status.as_u16(),
            code: self.code,
            detail: &self.detail,
        })
        .expect("a problem document always serializes");
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
