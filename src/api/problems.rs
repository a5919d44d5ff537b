//! Every problem the API answers: its stable `code`, its status and what it means. The
//! one table that `error.rs` builds answers from and the OpenAPI document describes
//! (`ROUTES` says which problems each route may answer; `openapi.rs` writes them into
//! the document from here, so that an annotation never repeats them).

use axum::http::StatusCode;

/// A kind of problem answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Problem {
    pub code: &'static str,
    pub status: StatusCode,
    /// What it means, for the document.
    pub meaning: &'static str,
}

macro_rules! problems {
    ($($name:ident = $code:literal, $status:ident, $meaning:literal;)*) => {
        $(pub const $name: Problem = Problem {
            code: $code,
            status: StatusCode::$status,
            meaning: $meaning,
        };)*
        /// Every problem, in the order of the constants above.
        pub const ALL: &[Problem] = &[$($name),*];
    };
}

problems! {
    INVALID_REQUEST = "invalid_request", BAD_REQUEST,
        "malformed JSON, a wrong or unknown field, a value out of range, a bad `Idempotency-Key`";
    UNAUTHORIZED = "unauthorized", UNAUTHORIZED,
        "no credential, or a wrong, expired or forged one (`WWW-Authenticate: Bearer`)";
    FORBIDDEN = "forbidden", FORBIDDEN,
        "the credential is valid but may not do this (the admin token does not buy; a buyer does not confirm payments)";
    NOT_FOUND = "not_found", NOT_FOUND, "no such route or file";
    SALE_NOT_FOUND = "sale_not_found", NOT_FOUND, "no such sale";
    ORDER_NOT_FOUND = "order_not_found", NOT_FOUND,
        "no such order (also another buyer's order, so that ids cannot be probed)";
    METHOD_NOT_ALLOWED = "method_not_allowed", METHOD_NOT_ALLOWED, "the route exists, not with this method";
    REQUEST_TIMEOUT = "request_timeout", REQUEST_TIMEOUT, "the body did not arrive in time";
    SOLD_OUT = "sold_out", CONFLICT, "no stock left for this purchase";
    QUEUE_REQUIRED = "queue_required", CONFLICT,
        "the sale is bought through its line: join it (`POST /api/sales/{id}/queue`)";
    NO_QUEUE = "no_queue", CONFLICT, "the sale has no line: buy on its purchase route";
    NOT_OPEN = "not_open", CONFLICT, "the sale's line has not opened yet";
    TICKET_NOT_FOUND = "ticket_not_found", NOT_FOUND,
        "no such ticket (also another buyer's ticket, so that ids cannot be probed)";
    LIMIT_REACHED = "limit_reached", CONFLICT, "the buyer has reached the sale's per-user limit";
    NOT_STARTED = "not_started", CONFLICT, "the sale has not started yet";
    ENDED = "ended", CONFLICT, "the sale has ended (or, for an order, its window expired: see `expired`)";
    PAUSED = "paused", CONFLICT, "the sale is paused";
    REQUEST_IN_PROGRESS = "request_in_progress", CONFLICT,
        "the first request with this `Idempotency-Key` is still being decided: retry";
    EXPIRED = "expired", CONFLICT, "the order was not paid within its window";
    CANCELLED = "cancelled", CONFLICT, "the order was cancelled";
    PAID = "paid", CONFLICT, "the order is paid";
    FAILED = "failed", CONFLICT, "the order could not be stored after it was accepted";
    PENDING = "pending", CONFLICT, "the order is still pending (a change racing this one): retry";
    PAYLOAD_TOO_LARGE = "payload_too_large", PAYLOAD_TOO_LARGE, "the body is over the limit";
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type", UNSUPPORTED_MEDIA_TYPE,
        "the body is not `application/json`";
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused", UNPROCESSABLE_ENTITY,
        "the `Idempotency-Key` was used for another purchase";
    RATE_LIMITED = "rate_limited", TOO_MANY_REQUESTS,
        "over a rate limit (`Retry-After`, `RateLimit-Policy`, `RateLimit`)";
    TOO_MANY_KEYS = "too_many_keys", TOO_MANY_REQUESTS,
        "the buyer holds too many live `Idempotency-Key`s in this sale";
    INTERNAL = "internal", INTERNAL_SERVER_ERROR, "a bug: never expected";
    OVERLOADED = "overloaded", SERVICE_UNAVAILABLE, "too many purchases in flight (`Retry-After`)";
    TIMEOUT = "timeout", SERVICE_UNAVAILABLE, "the request waited too long in the server (`Retry-After`)";
    UNAVAILABLE = "unavailable", SERVICE_UNAVAILABLE, "a backend (gate, bus, store) is failing (`Retry-After`)";
}

/// What any request may be answered, whatever its route: written once into the
/// document's description.
pub const ANY_ROUTE: &[Problem] = &[NOT_FOUND, METHOD_NOT_ALLOWED, INTERNAL];

/// What every public route may answer besides its own problems.
const PUBLIC: &[Problem] = &[RATE_LIMITED];
/// What an admin route may answer first.
const ADMIN: &[Problem] = &[UNAUTHORIZED];

/// The problems each documented route may answer: (method, path, problems).
pub const ROUTES: &[(&str, &str, &[&[Problem]])] = &[
    (
        "post",
        "/api/sales",
        &[
            ADMIN,
            &[
                INVALID_REQUEST,
                PAYLOAD_TOO_LARGE,
                UNSUPPORTED_MEDIA_TYPE,
                UNAVAILABLE,
            ],
        ],
    ),
    ("get", "/api/sales", &[PUBLIC, &[UNAVAILABLE]]),
    (
        "get",
        "/api/sales/{id}",
        &[PUBLIC, &[SALE_NOT_FOUND, UNAVAILABLE]],
    ),
    (
        "get",
        "/api/sales/{id}/events",
        &[PUBLIC, &[SALE_NOT_FOUND, INVALID_REQUEST, UNAVAILABLE]],
    ),
    (
        "post",
        "/api/sales/{id}/end",
        &[ADMIN, &[SALE_NOT_FOUND, ENDED, UNAVAILABLE]],
    ),
    (
        "post",
        "/api/sales/{id}/pause",
        &[ADMIN, &[SALE_NOT_FOUND, ENDED, UNAVAILABLE]],
    ),
    (
        "post",
        "/api/sales/{id}/resume",
        &[ADMIN, &[SALE_NOT_FOUND, ENDED, UNAVAILABLE]],
    ),
    (
        "post",
        "/api/sales/{id}/stock",
        &[
            ADMIN,
            &[
                INVALID_REQUEST,
                SALE_NOT_FOUND,
                ENDED,
                PAYLOAD_TOO_LARGE,
                UNSUPPORTED_MEDIA_TYPE,
                UNAVAILABLE,
            ],
        ],
    ),
    (
        "post",
        "/api/sales/{id}/purchase",
        &[&[
            INVALID_REQUEST,
            UNAUTHORIZED,
            FORBIDDEN,
            SALE_NOT_FOUND,
            SOLD_OUT,
            QUEUE_REQUIRED,
            LIMIT_REACHED,
            NOT_STARTED,
            ENDED,
            PAUSED,
            REQUEST_IN_PROGRESS,
            PAYLOAD_TOO_LARGE,
            UNSUPPORTED_MEDIA_TYPE,
            REQUEST_TIMEOUT,
            IDEMPOTENCY_KEY_REUSED,
            RATE_LIMITED,
            TOO_MANY_KEYS,
            OVERLOADED,
            TIMEOUT,
            UNAVAILABLE,
        ]],
    ),
    (
        "post",
        "/api/sales/{id}/queue",
        &[&[
            INVALID_REQUEST,
            UNAUTHORIZED,
            FORBIDDEN,
            SALE_NOT_FOUND,
            NO_QUEUE,
            NOT_OPEN,
            SOLD_OUT,
            LIMIT_REACHED,
            ENDED,
            REQUEST_IN_PROGRESS,
            PAYLOAD_TOO_LARGE,
            UNSUPPORTED_MEDIA_TYPE,
            REQUEST_TIMEOUT,
            RATE_LIMITED,
            OVERLOADED,
            TIMEOUT,
            UNAVAILABLE,
        ]],
    ),
    (
        "get",
        "/api/sales/{id}/queue",
        &[PUBLIC, &[SALE_NOT_FOUND, NO_QUEUE, UNAVAILABLE]],
    ),
    (
        "post",
        "/api/sales/{id}/queue/rate",
        &[
            ADMIN,
            &[
                INVALID_REQUEST,
                SALE_NOT_FOUND,
                NO_QUEUE,
                PAYLOAD_TOO_LARGE,
                UNSUPPORTED_MEDIA_TYPE,
                UNAVAILABLE,
            ],
        ],
    ),
    (
        "get",
        "/api/tickets/{ticket}",
        &[PUBLIC, &[UNAUTHORIZED, TICKET_NOT_FOUND, UNAVAILABLE]],
    ),
    (
        "get",
        "/api/tickets/{ticket}/events",
        &[PUBLIC, &[UNAUTHORIZED, TICKET_NOT_FOUND, UNAVAILABLE]],
    ),
    (
        "get",
        "/api/orders/{id}",
        &[PUBLIC, &[UNAUTHORIZED, ORDER_NOT_FOUND, UNAVAILABLE]],
    ),
    (
        "post",
        "/api/orders/{id}/pay",
        &[&[
            UNAUTHORIZED,
            FORBIDDEN,
            ORDER_NOT_FOUND,
            EXPIRED,
            CANCELLED,
            FAILED,
            PENDING,
            UNAVAILABLE,
        ]],
    ),
    (
        "post",
        "/api/orders/{id}/cancel",
        &[
            PUBLIC,
            &[
                UNAUTHORIZED,
                ORDER_NOT_FOUND,
                EXPIRED,
                PAID,
                FAILED,
                UNAVAILABLE,
            ],
        ],
    ),
    ("get", "/readyz", &[PUBLIC, &[UNAVAILABLE]]),
    ("get", "/healthz", &[PUBLIC]),
    ("get", "/metrics", &[PUBLIC]),
    ("get", "/openapi.json", &[PUBLIC]),
    ("get", "/", &[PUBLIC]),
    ("get", "/admin", &[PUBLIC]),
    ("get", "/assets/{file}", &[PUBLIC, &[NOT_FOUND]]),
];

/// The problem whose code this is, if any.
pub fn by_code(code: &str) -> Option<Problem> {
    ALL.iter().copied().find(|p| p.code == code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_documented() {
        let document = serde_json::to_string(&crate::api::openapi::document()).unwrap();
        for problem in ALL {
            let on_a_route = ROUTES
                .iter()
                .any(|(_, _, groups)| groups.iter().any(|g| g.contains(problem)));
            assert!(
                on_a_route || ANY_ROUTE.contains(problem),
                "`{}` is answered by no route",
                problem.code
            );
            assert!(
                document.contains(&format!("`{}`", problem.code)),
                "`{}` is not in the OpenAPI document",
                problem.code
            );
        }
        let mut codes: Vec<_> = ALL.iter().map(|p| p.code).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), ALL.len(), "a code is in the table twice");
    }

    #[test]
    fn every_route_of_the_table_is_in_the_document() {
        let document = crate::api::openapi::document();
        for (method, path, _) in ROUTES {
            let item = document.paths.paths.get(*path);
            let operation = item.and_then(|item| match *method {
                "get" => item.get.as_ref(),
                _ => item.post.as_ref(),
            });
            let operation =
                operation.unwrap_or_else(|| panic!("{method} {path} is not documented"));
            assert!(
                operation
                    .responses
                    .responses
                    .keys()
                    .any(|s| s.starts_with('4') || s.starts_with('5'))
                    || *path == "/healthz",
                "{method} {path} documents no problem"
            );
        }
    }
}
