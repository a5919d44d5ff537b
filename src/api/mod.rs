//! The HTTP API (DESIGN.md §3): routes, handlers, and how errors look.

mod caller;
mod controls;
mod count;
mod error;
mod events;
mod extract;
pub mod openapi;
mod pages;
mod views;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Extension, FromRequest, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;

pub use error::{ApiError, ProblemCode};
pub use views::{HistoryEntry, ItemView, OrderDetail, OrderView, SaleView};

use crate::auth::{Auth, AuthError, SIGNATURE_HEADER};
use crate::domain::{NewSale, Order, PurchaseRequest};
use crate::engine::{Engine, EngineError};
use crate::live::SaleFeeds;
use crate::protect::{Arrival, Overload, RateLimiters, TrustedProxies};
use caller::{Admin, Caller, ClientIp, InFlight, bearer, forbidden, unauthorized};
use extract::{IdempotencyKey, JsonBody, RawBody};
use openapi::Problem;

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
    /// The sales' live frames, for `GET /api/sales/{id}/events`.
    pub feeds: Arc<SaleFeeds>,
    /// What `GET /metrics` renders.
    pub metrics: Arc<crate::exporter::MetricsPage>,
}

/// How large request bodies may be: a sale of several thousand seats is larger than
/// any purchase, so creating one has its own limit.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub default: usize,
    pub create_sale: usize,
}

pub fn router(state: AppState, body_limits: BodyLimits, body_read_timeout: Duration) -> Router {
    // Every public route counts against its address's budget (purchases count in the
    // handler, per sale): the page, its assets, the probes and `/metrics` too, so that
    // one host cannot flood any of them (issue #21). Server-to-server routes (admin,
    // payment confirmations) are authenticated and not limited by address.
    let public = Router::new()
        .route("/api/sales", get(list_sales))
        .route("/api/sales/{id}", get(get_sale))
        .route("/api/sales/{id}/events", get(events::sale_events))
        .route("/api/orders/{id}", get(get_order))
        .route("/api/orders/{id}/cancel", post(cancel_order))
        .route("/", get(pages::index))
        .route("/admin", get(pages::admin))
        .route("/assets/{file}", get(pages::asset))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi_json))
        .route("/metrics", get(metrics))
        .merge(
            utoipa_swagger_ui::SwaggerUi::new("/docs")
                .url("/docs/openapi.json", openapi::document()),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            limit_by_address,
        ));
    Router::new()
        .route(
            "/api/sales",
            post(create_sale).layer(DefaultBodyLimit::max(body_limits.create_sale)),
        )
        .route("/api/sales/{id}/end", post(controls::end_sale))
        .route("/api/sales/{id}/pause", post(controls::pause_sale))
        .route("/api/sales/{id}/resume", post(controls::resume_sale))
        .route("/api/sales/{id}/stock", post(controls::add_stock))
        .route("/api/sales/{id}/purchase", post(purchase))
        .route("/api/orders/{id}/pay", post(pay_order))
        .merge(public)
        // Counts what the routes above answer (404s of unknown paths are not routes).
        .route_layer(count::CountRequestsLayer)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limits.default))
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
        // Outermost: every answer (404s, refusals of the layers above, panics) has an id.
        .layer(crate::observe::logs::RequestIdLayer)
        .with_state(state)
}

/// Creates a sale (admin).
#[utoipa::path(post, path = "/api/sales", tag = "sales", request_body = NewSale,
    security(("admin_token" = [])),
    responses(
        (status = 201, description = "The sale, with its `id` (also in `Location`)", body = SaleView),
        (status = 400, description = "`invalid_request`: malformed JSON, wrong or unknown fields, bad stock, items, limit, window or rate limits", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthorized`: no or a wrong admin token", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`payload_too_large`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "`unsupported_media_type`: not JSON", body = Problem, content_type = "application/problem+json")
    ))]
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

/// The sales, newest first (at most 100), with their remaining stock.
#[utoipa::path(get, path = "/api/sales", tag = "sales",
    responses(
        (status = 200, description = "The sales", body = Vec<SaleView>),
        (status = 429, description = "`rate_limited`: this address is over `rate_per_ip`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`: the gate or the store is failing", body = Problem, content_type = "application/problem+json")
    ))]
async fn list_sales(State(state): State<AppState>) -> Result<Json<Vec<SaleView>>, ApiError> {
    let sales = state.engine.recent_sales(100).await?;
    Ok(Json(sales.into_iter().map(SaleView::from).collect()))
}

/// A sale and its remaining stock.
#[utoipa::path(get, path = "/api/sales/{id}", tag = "sales",
    params(("id" = String, Path, description = "The sale's id")),
    responses(
        (status = 200, description = "The sale", body = SaleView),
        (status = 404, description = "`sale_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited`: this address is over `rate_per_ip` (`Retry-After`, `RateLimit-Policy`, `RateLimit`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`: the gate or the store is failing", body = Problem, content_type = "application/problem+json")
    ))]
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

/// Buys: 202 once the order is durable, or a refusal with its code.
///
/// Precedence: on a sale this gateway knows to be sold out, ended or not started, a
/// purchase without an `Idempotency-Key` is refused with that code (409) before its body
/// is read, so a malformed body gets `sold_out` there, not 400. A purchase with a key
/// goes the whole way (it may be the retry of one that got a unit).
#[utoipa::path(post, path = "/api/sales/{id}/purchase", tag = "purchases",
    request_body = PurchaseRequest,
    params(
        ("id" = String, Path, description = "The sale's id"),
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters; a retry with the same key gets the same order")
    ),
    security((), ("buyer_token" = [])),
    responses(
        (status = 202, description = "The order, durable", body = OrderView),
        (status = 400, description = "`invalid_request`: malformed body, bad quantity or items, bad `Idempotency-Key`, `user_id` given with buyer tokens on", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthorized`: buyer tokens are on and the token is missing, expired or forged", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: the admin token does not buy", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`sale_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`sold_out`, `limit_reached`, `not_started`, `ended`, `request_in_progress`", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`payload_too_large`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "`unsupported_media_type`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`idempotency_key_reused`: the key was used for another purchase", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited` (`Retry-After`, `RateLimit-Policy`, `RateLimit`) or `too_many_keys`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`overloaded` (too many in flight), `timeout` (waited too long), `unavailable` (a backend failing); `Retry-After`", body = Problem, content_type = "application/problem+json")
    ))]
async fn purchase(
    // First: past `max_in_flight_purchases`, 503 `overloaded` before any other work.
    _in_flight: InFlight,
    State(state): State<AppState>,
    arrival: Option<Extension<Arrival>>,
    Path(id): Path<String>,
    caller: Caller,
    ClientIp(ip): ClientIp,
    IdempotencyKey(key): IdempotencyKey,
    // Read only once the sale may sell: see `quick_refusal` below.
    body: Request,
) -> Result<Response, ApiError> {
    let sale = match state.engine.sale(&id).await {
        Ok(sale) => sale,
        Err(e) => {
            // As for every other answer: the body is read and judged first.
            JsonBody::<PurchaseRequest>::from_request(body, &state).await?;
            return Err(e.into());
        }
    };
    // A sale known to be sold out (or outside its window) answers a purchase without a
    // key before its body is read or the rate limits count: whatever it asks, nothing
    // can be taken (documented precedence: such a sale answers `sold_out`, `ended` or
    // `not_started` to a malformed body too). A keyed purchase may be the retry of one
    // that got a unit, so it goes the whole way; so does the admin token, refused below.
    let admin_may_not_buy = matches!(caller, Caller::Admin) && state.auth.buyers_need_tokens();
    if !admin_may_not_buy && let Some(refusal) = state.engine.quick_refusal(&sale, key.as_deref()) {
        return Err(EngineError::Refused(refusal).into());
    }
    let JsonBody(mut request) = JsonBody::<PurchaseRequest>::from_request(body, &state).await?;
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
    let purchase = state.engine.validate(&sale, request)?;
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
    // An anonymous caller (the body names the buyer) reads and cancels orders only in
    // development mode: once any credential is set, it takes a buyer's token or the
    // admin token (issue #21).
    if *caller == Caller::Anyone && !state.auth.is_open() {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
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
        (status = 200, description = "The order", body = OrderDetail),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`order_not_found` (also another buyer's order)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`", body = Problem, content_type = "application/problem+json")
    ))]
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
/// Confirms payment: the payment service (`Flashsale-Signature`) or the operator.
#[utoipa::path(post, path = "/api/orders/{id}/pay", tag = "orders",
    params(
        ("id" = String, Path, description = "The order's id"),
        ("Flashsale-Signature" = Option<String>, Header, description = "`t=<unix seconds>,v1=<hex HMAC-SHA256 of t.order_id.body>`")
    ),
    security((), ("admin_token" = [])),
    responses(
        (status = 200, description = "The order, paid", body = OrderDetail),
        (status = 401, description = "`unauthorized`: no, a forged or a stale signature", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: a buyer cannot confirm a payment", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`order_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`expired`, `cancelled`, `failed`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`", body = Problem, content_type = "application/problem+json")
    ))]
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

/// Cancels an unpaid order; its units go back on sale.
#[utoipa::path(post, path = "/api/orders/{id}/cancel", tag = "orders",
    params(("id" = String, Path, description = "The order's id")),
    security((), ("buyer_token" = []), ("admin_token" = [])),
    responses(
        (status = 200, description = "The order, cancelled", body = OrderDetail),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`order_not_found` (also another buyer's order)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`expired`, `paid`, `failed`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`", body = Problem, content_type = "application/problem+json")
    ))]
async fn cancel_order(
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

async fn detail(state: &AppState, order: Order) -> Result<Json<OrderDetail>, ApiError> {
    let history = state.engine.order_history(&order.id).await?;
    // The store's own words (a constraint's message) stay in the store and the worker's
    // log: the buyer gets a stable phrase (issue #21).
    let failure = (order.status == crate::domain::OrderStatus::Failed).then(|| {
        "the order could not be stored after it was accepted; its units went back on sale"
            .to_string()
    });
    Ok(Json(OrderDetail::new(&order, history, failure)))
}

/// The API's OpenAPI document (see `openapi`).
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "This document (OpenAPI 3.1)", content_type = "application/json")))]
async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi::document())
}

/// Prometheus metrics (text format 0.0.4): requests, purchase outcomes and latencies,
/// each stage's latency, shedding, rate limits, bus lag, dead letters, and per sale the
/// stock, the remaining units and the units sold according to the gate and the store.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain; version=0.0.4")))]
async fn metrics(State(state): State<AppState>) -> Response {
    let text = state.metrics.render(gauges(&state).await);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// The gauges `/metrics` reads at scrape time: states, not events.
async fn gauges(state: &AppState) -> crate::exporter::Gauges {
    let mut sales = Vec::new();
    match state
        .engine
        .recent_sales(crate::exporter::MetricsPage::SALES)
        .await
    {
        Ok(recent) => {
            for sale in recent {
                let id = sale.sale.id.clone();
                let sold_in_store = match state.engine.sold_in_store(&id).await {
                    Ok(sold) => Some(sold),
                    Err(e) => {
                        tracing::warn!(sale = %id, error = %e, "store counters not read");
                        None
                    }
                };
                sales.push(crate::exporter::SaleGauges {
                    id,
                    stock: sale.sale.total_stock(),
                    remaining: sale.remaining.iter().map(|&r| r as u64).sum(),
                    sold_in_store,
                });
            }
        }
        Err(e) => tracing::warn!(error = %e, "sales not read for /metrics"),
    }
    crate::exporter::Gauges {
        in_flight: state.overload.in_flight(),
        live_watchers: state.feeds.watched(),
        bus_pending: state.engine.bus_pending(),
        sales,
    }
}

/// A constant answer: the reference route of the HTTP ceiling benchmark.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "`ok`", body = String, content_type = "text/plain")))]
async fn healthz() -> &'static str {
    "ok"
}

/// Whether the store answers.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "`ready`", body = String, content_type = "text/plain"),
        (status = 503, description = "`unavailable`: the store does not answer", body = Problem, content_type = "application/problem+json")
    ))]
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
