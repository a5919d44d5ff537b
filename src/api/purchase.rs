//! `POST /api/sales/{id}/purchase`: extract → `Admission::before_body` → read the body →
//! `Admission::admit` → `Engine::place`. The order of the checks, and so which refusal
//! a purchase gets when several apply, is `crate::engine::admission`'s.

use axum::extract::{Extension, FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, extract::FromRequestParts, http::request::Parts};

use super::caller::{Caller, ClientIp};
use super::extract::{IdempotencyKey, JsonBody};
use super::requests::PurchaseRequest;
use super::{ApiError, AppState, OrderView};
use crate::engine::{Admitted, Buyer, PurchaseHead, Slot};
use crate::protect::Arrival;

/// Buys: 202 once the order is durable, or a refusal with its code.
///
/// Precedence: on a sale this gateway knows to be sold out, ended or not started, a
/// purchase without an `Idempotency-Key` is refused with that code (409) before its body
/// is read, so a malformed body gets `sold_out` there, not 400. A purchase with a key
/// goes the whole way (it may be the retry of one that got a unit).
#[allow(clippy::too_many_arguments)] // the extractors, in the order they run
#[utoipa::path(post, path = "/api/sales/{id}/purchase", tag = "purchases",
    request_body = PurchaseRequest,
    params(
        ("id" = String, Path, description = "The sale's id"),
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters; a retry with the same key gets the same order")
    ),
    security((), ("buyer_token" = [])),
    responses(
        (status = 202, description = "The order, durable", body = OrderView)
    ))]
pub(super) async fn purchase(
    // First: past `max_in_flight_purchases`, 503 `overloaded` before any other work.
    InFlight(slot): InFlight,
    State(state): State<AppState>,
    arrival: Option<Extension<Arrival>>,
    Path(sale_id): Path<String>,
    caller: Caller,
    ClientIp(ip): ClientIp,
    IdempotencyKey(key): IdempotencyKey,
    // Read only once the checks before it passed.
    body: Request,
) -> Result<Response, ApiError> {
    let head = purchase_head(sale_id, caller, ip, key, arrival, false);
    let admitted = admit(&state, slot, head, body).await?;
    let order = state.engine.place(admitted).await?;
    Ok((StatusCode::ACCEPTED, Json(OrderView::from(&*order))).into_response())
}

/// What the purchase route and the line's join know before the body.
pub(super) fn purchase_head(
    sale_id: String,
    caller: Caller,
    ip: std::net::IpAddr,
    key: Option<String>,
    arrival: Option<Extension<Arrival>>,
    via_line: bool,
) -> PurchaseHead {
    PurchaseHead {
        sale_id,
        buyer: match caller {
            Caller::Anyone => Buyer::Anonymous,
            Caller::Buyer(sub) => Buyer::Token(sub),
            Caller::Admin => Buyer::Admin,
        },
        ip,
        key,
        arrived: arrival.map(|Extension(a)| a.at),
        via_line,
    }
}

/// The admission room's checks before the body, the body, then the checks after it.
pub(super) async fn admit(
    state: &AppState,
    slot: Slot,
    head: PurchaseHead,
    body: Request,
) -> Result<Admitted, ApiError> {
    let opened = state.admission.before_body(slot, head).await?;
    let JsonBody(request) = JsonBody::<PurchaseRequest>::from_request(body, state).await?;
    Ok(state.admission.admit(opened, request.into())?)
}

/// A place among the purchases in flight, taken before every other extractor, so that
/// the refusal costs no other work.
pub(super) struct InFlight(pub(super) Slot);

impl FromRequestParts<AppState> for InFlight {
    type Rejection = ApiError;

    async fn from_request_parts(_: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Ok(InFlight(state.admission.enter()?))
    }
}
