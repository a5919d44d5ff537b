//! Every refusal is `application/problem+json` (RFC 9457) with a stable `code`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::domain::Refusal;
use crate::engine::EngineError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            detail: detail.into(),
        }
    }

    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", detail)
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let detail = e.to_string();
        match e {
            EngineError::SaleNotFound(_) => {
                Self::new(StatusCode::NOT_FOUND, "sale_not_found", detail)
            }
            EngineError::OrderNotFound(_) => {
                Self::new(StatusCode::NOT_FOUND, "order_not_found", detail)
            }
            EngineError::Invalid(_) => Self::invalid(detail),
            EngineError::Refused(refusal) => {
                let detail = match refusal {
                    Refusal::SoldOut => "no stock left for this purchase",
                    Refusal::LimitReached => "this buyer has reached the sale's per-user limit",
                    Refusal::NotStarted => "the sale has not started yet",
                    Refusal::Ended => "the sale has ended",
                };
                Self::new(StatusCode::CONFLICT, refusal.code(), detail)
            }
            EngineError::KeyReused => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                detail,
            ),
            EngineError::Unavailable(_) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
            }
            // The code is the status that stands in the way: `expired`, `cancelled`, `paid`.
            EngineError::OrderIs(status) => {
                Self::new(StatusCode::CONFLICT, status.as_str(), detail)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "type": "about:blank",
            "title": self.status.canonical_reason().unwrap_or("error"),
            "status": self.status.as_u16(),
            "code": self.code,
            "detail": self.detail,
        });
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
