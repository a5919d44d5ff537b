//! The HTTP API (DESIGN.md §3): routes, handlers, and how errors look.

mod caller;
mod error;
mod extract;
mod views;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Extension, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;

pub use error::ApiError;
pub use views::{HistoryEntry, ItemView, OrderDetail, OrderView, SaleView};

use crate::auth::{Auth, AuthError, SIGNATURE_HEADER};
use crate::domain::{NewSale, Order, PurchaseRequest};
use crate::engine::{Engine, EngineError};
use crate::protect::{Arrival, Overload, RateLimiters, TrustedProxies};
use caller::{Admin, Caller, ClientIp, InFlight, bearer, forbidden, unauthorized};
use extract::{IdempotencyKey, JsonBody, RawBody};

/// What the handlers share: one `Arc`, so that a request's clones of the state (one per
/// `State` extractor) cost one reference count, not one per part.
#[derive(Clone)]
pub struct AppState(Arc<AppParts>);

impl AppState {
    pub fn new(parts: AppParts) -> Self {
        AppState(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

pub struct AppParts {
    pub engine: Arc<Engine>,
    /// Who may call what (buyer tokens, payment signatures, the admin token).
    pub auth: Arc<Auth>,
    /// How often a buyer or an address may ask.
    pub limits: Arc<RateLimiters>,
    /// Whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Arc<TrustedProxies>,
    /// How many purchases may be in flight, and how long one may wait for its turn.
    pub overload: Arc<Overload>,
}

pub fn router(state: AppState, body_limit: usize, body_read_timeout: Duration) -> Router {
    // The buyers' other routes count against their address's budget (purchases count
    // in the handler, per sale). Server-to-server routes (admin, payment confirmations)
    // are authenticated and not limited by address.
    let buyer_reads = Router::new()
        .route("/api/sales/{id}", get(get_sale))
        .route("/api/orders/{id}", get(get_order))
        .route("/api/orders/{id}/cancel", post(cancel_order))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            limit_by_address,
        ));
    Router::new()
        .route("/api/sales", post(create_sale))
        .route("/api/sales/{id}/purchase", post(purchase))
        .route("/api/orders/{id}/pay", post(pay_order))
        .merge(buyer_reads)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        // A body that trickles in is cut off (its read fails: 408, see `extract`).
        .layer(RequestBodyTimeoutLayer::new(body_read_timeout))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
            .into_response()
        }))
        .with_state(state)
}

async fn create_sale(
    State(state): State<AppState>,
    _: Admin,
    JsonBody(new): JsonBody<NewSale>,
) -> Result<Response, ApiError> {
    let sale = state.engine.create_sale(new).await?;
    let view = SaleView::from(sale);
    let location = format!("/api/sales/{}", view.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(view),
    )
        .into_response())
}

async fn get_sale(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SaleView>, ApiError> {
    Ok(Json(state.engine.sale_state(&id).await?.into()))
}

/// 429 `rate_limited` once an address is over its budget for non-purchase routes.
async fn limit_by_address(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    request: Request,
    next: Next,
) -> Response {
    match state.limits.admit_request(ip) {
        Ok(()) => next.run(request).await,
        Err(limited) => ApiError::from(limited).into_response(),
    }
}

async fn purchase(
    // First: past `max_in_flight_purchases`, 503 `overloaded` before any other work.
    _in_flight: InFlight,
    State(state): State<AppState>,
    arrival: Option<Extension<Arrival>>,
    Path(id): Path<String>,
    caller: Caller,
    ClientIp(ip): ClientIp,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(mut request): JsonBody<PurchaseRequest>,
) -> Result<Response, ApiError> {
    match caller {
        Caller::Buyer(buyer) => {
            if !request.user_id.is_empty() {
                return Err(ApiError::invalid(
                    "user_id is not accepted here: the buyer is the token's `sub`",
                ));
            }
            request.user_id = buyer;
        }
        Caller::Admin if state.auth.buyers_need_tokens() => {
            return Err(forbidden(
                "the admin token does not buy: buyers use their own token",
            ));
        }
        Caller::Admin | Caller::Anyone => {}
    }
    let sale = state.engine.sale(&id).await?;
    let purchase = state.engine.validate(&sale, request)?;
    // A sale known to be sold out (or outside its window) answers before the rate
    // limits count: refusing is cheaper than metering, and nothing can be taken.
    if let Some(refusal) = state.engine.quick_refusal(&sale, key.as_deref()) {
        return Err(EngineError::Refused(refusal).into());
    }
    state
        .limits
        .admit_purchase(&sale.id, &sale.rate_limits, ip, &purchase.user_id)?;
    state
        .overload
        .still_in_time(arrival.map(|Extension(a)| a.at))?;
    let order = state.engine.place_purchase(sale, purchase, key).await?;
    Ok((StatusCode::ACCEPTED, Json(OrderView::from(&*order))).into_response())
}

/// The order, if the caller may see it (another buyer's order is "not found").
async fn visible_order(state: &AppState, caller: &Caller, id: &str) -> Result<Order, ApiError> {
    let order = state.engine.order(id).await?;
    if caller.may_see(&order.user_id) {
        Ok(order)
    } else {
        Err(crate::engine::EngineError::OrderNotFound(id.to_string()).into())
    }
}

async fn get_order(
    State(state): State<AppState>,
    Path(id): Path<String>,
    caller: Caller,
) -> Result<Json<OrderDetail>, ApiError> {
    let order = visible_order(&state, &caller, &id).await?;
    detail(&state, order).await
}

/// Payment confirmation: the payment service (signature) or the operator (admin
/// token); never the buyer. Open only in development mode (nothing configured).
async fn pay_order(
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

async fn cancel_order(
    State(state): State<AppState>,
    Path(id): Path<String>,
    caller: Caller,
) -> Result<Json<OrderDetail>, ApiError> {
    if let Caller::Buyer(_) = caller {
        visible_order(&state, &caller, &id).await?;
    }
    let order = state.engine.cancel(&id).await?;
    detail(&state, order).await
}

async fn detail(state: &AppState, order: Order) -> Result<Json<OrderDetail>, ApiError> {
    let history = state.engine.order_history(&order.id).await?;
    let failure = match order.status {
        crate::domain::OrderStatus::Failed => state.engine.order_failure(&order.id).await?,
        _ => None,
    };
    Ok(Json(OrderDetail::new(&order, history, failure)))
}

/// A constant answer: the reference route of the HTTP ceiling benchmark.
async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    state.engine.ping().await?;
    Ok("ready")
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed here",
    )
}
