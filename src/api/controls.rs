//! An operator's controls of a running sale (admin): end it now, pause, resume, add
//! stock. Each answers the sale as it is after the change.

use axum::Json;
use axum::extract::{Path, State};

use super::caller::Admin;
use super::extract::JsonBody;
use super::openapi::Problem;
use super::{ApiError, AppState, SaleView};
use crate::domain::AddStock;

/// Ends the sale now: purchases are refused `ended` from here on (orders already placed
/// stay). A sale not started yet ends before it starts.
#[utoipa::path(post, path = "/api/sales/{id}/end", tag = "controls",
    params(("id" = String, Path, description = "The sale's id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The sale, ended", body = SaleView),
        (status = 401, description = "`unauthorized`: no or a wrong admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`sale_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`ended`: the sale has ended already", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`: the store or the gate is failing (a stored change reaches the gate within a sweep)", body = Problem, content_type = "application/problem+json")
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
        (status = 200, description = "The sale, paused (also when it was already)", body = SaleView),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`sale_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`ended`: an ended sale is not paused", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`", body = Problem, content_type = "application/problem+json")
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
        (status = 200, description = "The sale, not paused (also when it was not)", body = SaleView),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`sale_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`ended`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`", body = Problem, content_type = "application/problem+json")
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
        (status = 200, description = "The sale with its new stock", body = SaleView),
        (status = 400, description = "`invalid_request`: no such item, `item` missing on a sale of several, units 0 or a stock past 100,000,000", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`sale_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`ended`", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`payload_too_large`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "`unsupported_media_type`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`", body = Problem, content_type = "application/problem+json")
    ))]
pub(super) async fn add_stock(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
    JsonBody(add): JsonBody<AddStock>,
) -> Result<Json<SaleView>, ApiError> {
    Ok(Json(state.engine.add_stock(&id, &add).await?.into()))
}
