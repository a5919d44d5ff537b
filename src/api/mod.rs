//! The HTTP API (docs/architecture.md §3, docs/api.md): the state the handlers share
//! and the router. One file per resource: `sales.rs`, `purchase.rs`, `queue.rs`, `orders.rs`,
//! `controls.rs`, `events.rs`, `operations.rs`, `pages.rs`; how a caller and its
//! requests are read (`caller.rs`, `extract.rs`), how refusals look (`error.rs`), the
//! answers (`views.rs`), the request counting layer (`count.rs`) and the OpenAPI
//! document (`openapi.rs`).

mod caller;
mod controls;
mod count;
mod error;
mod events;
mod extract;
pub mod openapi;
mod operations;
mod orders;
mod pages;
pub mod problems;
mod purchase;
mod queue;
pub mod requests;
mod sales;
mod schemas;
mod views;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::handler::Handler;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;

pub use error::{ApiError, ProblemCode};
pub use views::{
    HistoryEntry, ItemView, LineView, OrderDetail, OrderView, QueueView, RefusalView, SaleView,
    TicketView,
};

use crate::auth::Auth;
use crate::engine::{Admission, Engine};
use crate::live::SaleFeeds;
use crate::protect::TrustedProxies;
use caller::ClientIp;

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
    /// The purchase's checks, with the rate limiters and the overload guard.
    pub admission: Arc<Admission>,
    /// Whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Arc<TrustedProxies>,
    /// The sales' live frames, for `GET /api/sales/{id}/events`.
    pub feeds: Arc<SaleFeeds>,
    /// What `GET /metrics` renders.
    pub metrics: Arc<crate::exporter::MetricsPage>,
    /// The sales' lines (issue #25).
    pub line: Arc<crate::line::Line>,
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
        .route("/api/sales", get(sales::list_sales))
        .route("/api/sales/{id}", get(sales::get_sale))
        .route("/api/sales/{id}/events", get(events::sale_events))
        .route("/api/tickets/{ticket}", get(queue::get_ticket))
        .route("/api/tickets/{ticket}/events", get(queue::ticket_events))
        .route("/api/orders/{id}", get(orders::get_order))
        .route("/api/orders/{id}/cancel", post(orders::cancel_order))
        .route("/", get(pages::index))
        .route("/admin", get(pages::admin))
        .route("/assets/{file}", get(pages::asset))
        .route("/healthz", get(operations::healthz))
        .route("/readyz", get(operations::readyz))
        .route("/openapi.json", get(operations::openapi_json))
        .route("/metrics", get(operations::metrics))
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
            post(sales::create_sale).layer(DefaultBodyLimit::max(body_limits.create_sale)),
        )
        .route("/api/sales/{id}/end", post(controls::end_sale))
        .route("/api/sales/{id}/pause", post(controls::pause_sale))
        .route("/api/sales/{id}/resume", post(controls::resume_sale))
        .route("/api/sales/{id}/stock", post(controls::add_stock))
        .route("/api/sales/{id}/purchase", post(purchase::purchase))
        // Joins count against their address in the handler, as purchases; the line's
        // figures as any public route.
        .route(
            "/api/sales/{id}/queue",
            post(queue::join).get(queue::line_figures.layer(middleware::from_fn_with_state(
                state.clone(),
                limit_by_address,
            ))),
        )
        .route("/api/sales/{id}/queue/rate", post(queue::set_rate))
        .route("/api/orders/{id}/pay", post(orders::pay_order))
        .merge(public)
        // Counts what the routes above answer (404s of unknown paths are not routes).
        .route_layer(count::CountRequestsLayer)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limits.default))
        // A body that trickles in is cut off (its read fails: 408, see `extract`).
        .layer(RequestBodyTimeoutLayer::new(body_read_timeout))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::new(problems::INTERNAL, "internal error").into_response()
        }))
        // Outermost: every answer (404s, refusals of the layers above, panics) has an id.
        .layer(crate::observe::logs::RequestIdLayer)
        .with_state(state)
}

/// 429 `rate_limited` once an address is over its budget for non-purchase routes.
async fn limit_by_address(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    request: Request,
    next: Next,
) -> Response {
    match state.admission.admit_request(ip) {
        Ok(()) => next.run(request).await,
        Err(limited) => ApiError::from(limited).into_response(),
    }
}

async fn not_found() -> ApiError {
    ApiError::new(problems::NOT_FOUND, "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(problems::METHOD_NOT_ALLOWED, "method not allowed here")
}
