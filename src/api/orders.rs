//! An order's life after the purchase: read it, confirm its payment (the payment
//! service or the operator), cancel it (the buyer or the operator).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;

use super::caller::{Caller, bearer, forbidden, unauthorized};
use super::extract::RawBody;
use super::problems;
use super::{ApiError, AppState, OrderDetail};
use crate::auth::{Auth, AuthError, SIGNATURE_HEADER};
use crate::domain::Order;

/// The order, if the caller may see it (another buyer's order is "not found").
pub(super) async fn visible_order(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<Order, ApiError> {
    // An anonymous caller (the body names the buyer) reads and cancels orders only in
    // development mode: once any credential is set, it takes a buyer's token or the
    // admin token (issue #21).
    if *caller == Caller::Anyone && !state.auth.is_open() {
        return Err(ApiError::new(
            problems::UNAUTHORIZED,
            "order routes need a buyer token or the admin token",
        ));
    }
    let order = state.engine.order(id).await?;
    if caller.may_see(&order.user_id) {
        Ok(order)
    } else {
        Err(crate::engine::EngineError::OrderNotFound(id.to_string()).into())
    }
}

/// An order and its history (a buyer: only their own).
#[utoipa::path(get, path = "/api/orders/{id}", tag = "orders",
    params(("id" = String, Path, description = "The order's id")),
    security((), ("buyer_token" = []), ("admin_token" = [])),
    responses(
        (status = 200, description = "The order", body = OrderDetail)
    ))]
pub(super) async fn get_order(
    State(state): State<AppState>,
    Path(id): Path<String>,
    caller: Caller,
) -> Result<Json<OrderDetail>, ApiError> {
    let order = visible_order(&state, &caller, &id).await?;
    detail(&state, order).await
}

/// Payment confirmation: the payment service (signature) or the operator (admin
/// token); never the buyer. Open only in development mode (nothing configured).
/// Confirms payment: the payment service (`Flashsale-Signature`) or the operator.
#[utoipa::path(post, path = "/api/orders/{id}/pay", tag = "orders",
    params(
        ("id" = String, Path, description = "The order's id"),
        ("Flashsale-Signature" = Option<String>, Header, description = "`t=<unix seconds>,v1=<hex HMAC-SHA256 of t.order_id.body>`")
    ),
    security((), ("admin_token" = [])),
    responses(
        (status = 200, description = "The order, paid", body = OrderDetail)
    ))]
pub(super) async fn pay_order(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Json<OrderDetail>, ApiError> {
    if !state.auth.is_open() {
        check_payment_caller(&state.auth, &headers, &id, &body)?;
    }
    let order = state.engine.pay(&id).await?;
    detail(&state, order).await
}

fn check_payment_caller(
    auth: &Auth,
    headers: &HeaderMap,
    order_id: &str,
    body: &[u8],
) -> Result<(), ApiError> {
    if let Some(token) = bearer(headers) {
        if auth.is_admin(token) {
            return Ok(());
        }
        if auth.buyer(token).is_ok() {
            return Err(forbidden(
                "a buyer cannot confirm a payment: the payment service does",
            ));
        }
    }
    let Some(signature) = headers.get(SIGNATURE_HEADER) else {
        return Err(unauthorized(AuthError::Missing(
            "payment confirmations need the payment service's `Flashsale-Signature` \
             or the admin token",
        )));
    };
    let signature = signature
        .to_str()
        .map_err(|_| unauthorized(AuthError::Invalid("unreadable signature".into())))?;
    auth.payment(signature, order_id, body, chrono::Utc::now().timestamp())
        .map_err(unauthorized)
}

/// Cancels an unpaid order; its units go back on sale.
#[utoipa::path(post, path = "/api/orders/{id}/cancel", tag = "orders",
    params(("id" = String, Path, description = "The order's id")),
    security((), ("buyer_token" = []), ("admin_token" = [])),
    responses(
        (status = 200, description = "The order, cancelled", body = OrderDetail)
    ))]
pub(super) async fn cancel_order(
    State(state): State<AppState>,
    Path(id): Path<String>,
    caller: Caller,
) -> Result<Json<OrderDetail>, ApiError> {
    if caller != Caller::Admin {
        visible_order(&state, &caller, &id).await?;
    }
    let order = state.engine.cancel(&id).await?;
    detail(&state, order).await
}

pub(super) async fn detail(state: &AppState, order: Order) -> Result<Json<OrderDetail>, ApiError> {
    let history = state.engine.order_history(&order.id).await?;
    // The store's own words (a constraint's message) stay in the store and the worker's
    // log: the buyer gets a stable phrase (issue #21).
    let failure = (order.status == crate::domain::OrderStatus::Failed).then(|| {
        "the order could not be stored after it was accepted; its units went back on sale"
            .to_string()
    });
    Ok(Json(OrderDetail::new(&order, history, failure)))
}
