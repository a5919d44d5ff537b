//! The HTTP API (DESIGN.md §3): routes, handlers, and how errors look.

mod error;
mod extract;
mod views;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tower_http::catch_panic::CatchPanicLayer;

pub use error::ApiError;
pub use views::{HistoryEntry, ItemView, OrderDetail, OrderView, SaleView};

use crate::domain::{NewSale, PurchaseRequest};
use crate::engine::Engine;
use extract::{IdempotencyKey, JsonBody};

#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    /// When set, admin routes need `Authorization: Bearer <token>`.
    pub admin_token: Option<Arc<str>>,
}

pub fn router(state: AppState, body_limit: usize) -> Router {
    Router::new()
        .route("/api/sales", post(create_sale))
        .route("/api/sales/{id}", get(get_sale))
        .route("/api/sales/{id}/purchase", post(purchase))
        .route("/api/orders/{id}", get(get_order))
        .route("/api/orders/{id}/pay", post(pay_order))
        .route("/api/orders/{id}/cancel", post(cancel_order))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
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

fn check_admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &state.admin_token else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this route needs `Authorization: Bearer <admin token>`",
        ))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn create_sale(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(new): JsonBody<NewSale>,
) -> Result<Response, ApiError> {
    check_admin(&state, &headers)?;
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

async fn purchase(
    State(state): State<AppState>,
    Path(id): Path<String>,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(request): JsonBody<PurchaseRequest>,
) -> Result<Response, ApiError> {
    let order = state.engine.purchase(&id, request, key).await?;
    Ok((StatusCode::ACCEPTED, Json(OrderView::from(&*order))).into_response())
}

async fn get_order(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<OrderDetail>, ApiError> {
    let order = state.engine.order(&id).await?;
    detail(&state, order).await
}

async fn pay_order(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<OrderDetail>, ApiError> {
    let order = state.engine.pay(&id).await?;
    detail(&state, order).await
}

async fn cancel_order(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<OrderDetail>, ApiError> {
    let order = state.engine.cancel(&id).await?;
    detail(&state, order).await
}

async fn detail(
    state: &AppState,
    order: crate::domain::Order,
) -> Result<Json<OrderDetail>, ApiError> {
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
