//! An operator's controls of a running sale (admin): end it now, pause, resume, add
//! stock. Each answers the sale as it is after the change.

use axum::Json;
use axum::extract::{Path, State};

use super::caller::Admin;
use super::extract::JsonBody;
use super::requests::AddStock;
use super::{ApiError, AppState, SaleView};

/// Ends the sale now: purchases are refused `ended` from here on (orders already placed
/// stay). A sale not started yet ends before it starts.
#[utoipa::path(post, path = "/api/sales/{id}/end", tag = "controls",
    params(("id" = String, Path, description = "The sale's id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The sale, ended", body = SaleView)
    ))]
pub(super) async fn end_sale(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Json<SaleView>, ApiError> {
    Ok(Json(state.engine.end_sale(&id).await?.into()))
}

/// Pauses the sale: purchases are refused `paused` until it is resumed.
#[utoipa::path(post, path = "/api/sales/{id}/pause", tag = "controls",
    params(("id" = String, Path, description = "The sale's id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The sale, paused (also when it was already)", body = SaleView)
    ))]
pub(super) async fn pause_sale(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Json<SaleView>, ApiError> {
    Ok(Json(state.engine.pause_sale(&id, true).await?.into()))
}

/// Resumes a paused sale.
#[utoipa::path(post, path = "/api/sales/{id}/resume", tag = "controls",
    params(("id" = String, Path, description = "The sale's id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The sale, not paused (also when it was not)", body = SaleView)
    ))]
pub(super) async fn resume_sale(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Json<SaleView>, ApiError> {
    Ok(Json(state.engine.pause_sale(&id, false).await?.into()))
}

/// Adds units to an item's stock (never takes any away). Not idempotent: a retry after a
/// 503 adds again, so read the sale first.
#[utoipa::path(post, path = "/api/sales/{id}/stock", tag = "controls", request_body = AddStock,
    params(("id" = String, Path, description = "The sale's id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The sale with its new stock", body = SaleView)
    ))]
pub(super) async fn add_stock(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
    JsonBody(add): JsonBody<AddStock>,
) -> Result<Json<SaleView>, ApiError> {
    Ok(Json(state.engine.add_stock(&id, &add.into()).await?.into()))
}
