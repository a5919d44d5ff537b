//! What operators and their tools call: the probes, `/metrics`, the OpenAPI document.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::openapi;
use super::{ApiError, AppState};

/// The API's OpenAPI document (see `openapi`).
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "This document (OpenAPI 3.1)", content_type = "application/json")))]
pub(super) async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi::document())
}

/// Prometheus metrics (text format 0.0.4): requests, purchase outcomes and latencies,
/// each stage's latency, shedding, rate limits, bus lag, dead letters, and per sale the
/// stock, the remaining units and the units sold according to the gate and the store.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain; version=0.0.4")))]
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
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
        in_flight: state.admission.in_flight(),
        live_watchers: state.feeds.watched(),
        bus_pending: state.engine.bus_pending(),
        sales,
    }
}

/// A constant answer: the reference route of the HTTP ceiling benchmark.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "`ok`", body = String, content_type = "text/plain")))]
pub(super) async fn healthz() -> &'static str {
    "ok"
}

/// Whether the store answers.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "`ready`", body = String, content_type = "text/plain")
    ))]
pub(super) async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    state.engine.ping().await?;
    Ok("ready")
}
