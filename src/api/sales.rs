//! Sales: creating one (admin) and reading them. The operator's controls of a running
//! sale are in `controls.rs`; its live events in `events.rs`.

use axum::Json;
use axum::extract::Path;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::caller::Admin;
use super::extract::JsonBody;
use super::requests::NewSale;
use super::{ApiError, AppState, SaleView};

/// Creates a sale (admin).
#[utoipa::path(post, path = "/api/sales", tag = "sales", request_body = NewSale,
    security(("admin_token" = [])),
    responses(
        (status = 201, description = "The sale, with its `id` (also in `Location`)", body = SaleView)
    ))]
pub(super) async fn create_sale(
    State(state): State<AppState>,
    _: Admin,
    JsonBody(new): JsonBody<NewSale>,
) -> Result<Response, ApiError> {
    let sale = state.engine.create_sale(new.into()).await?;
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
        (status = 200, description = "The sales", body = Vec<SaleView>)
    ))]
pub(super) async fn list_sales(
    State(state): State<AppState>,
) -> Result<Json<Vec<SaleView>>, ApiError> {
    let sales = state.engine.recent_sales(100).await?;
    Ok(Json(sales.into_iter().map(SaleView::from).collect()))
}

/// A sale and its remaining stock.
#[utoipa::path(get, path = "/api/sales/{id}", tag = "sales",
    params(("id" = String, Path, description = "The sale's id")),
    responses(
        (status = 200, description = "The sale", body = SaleView)
    ))]
pub(super) async fn get_sale(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SaleView>, ApiError> {
    Ok(Json(state.engine.sale_state(&id).await?.into()))
}
