//! The line in front of a sale (issue #25): joining it (`POST /api/sales/{id}/queue`,
//! the purchase's checks, then `crate::line::Line::join`), the caller's ticket, its
//! changes as Server-Sent Events, the line's figures, and the operator's rate control.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Extension, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::{Deserialize, Serialize};

use super::caller::{Admin, Caller, ClientIp, bearer};
use super::extract::{IdempotencyKey, JsonBody};
use super::purchase::{InFlight, admit, purchase_head};
use super::requests::PurchaseRequest;
use super::views::{LineView, OrderView, RefusalView, TicketView, rfc3339};
use super::{ApiError, AppState, problems};
use crate::domain::{RateLimit, TicketStatus};
use crate::engine::EngineError;
use crate::line::TicketState;
use crate::protect::Arrival;

/// How often a ticket's stream sends its state while nothing changes (position, ETA).
const TICKET_HEARTBEAT: Duration = Duration::from_secs(3);

/// Joins the sale's line: 202 with the new ticket once it is durable, 200 with the
/// buyer's ticket if they hold one already (one place per buyer and sale).
#[allow(clippy::too_many_arguments)] // the extractors, in the order they run
#[utoipa::path(post, path = "/api/sales/{id}/queue", tag = "queue",
    request_body = PurchaseRequest,
    params(
        ("id" = String, Path, description = "The sale's id"),
        ("Idempotency-Key" = Option<String>, Header, description = "As on the purchase route; a buyer's join is one place whatever the key")
    ),
    security((), ("buyer_token" = [])),
    responses(
        (status = 202, description = "The new ticket, durable (`Location: /api/tickets/{ticket}`)", body = TicketView),
        (status = 200, description = "The buyer's ticket: they were in the line already", body = TicketView)
    ))]
pub(super) async fn join(
    InFlight(slot): InFlight,
    State(state): State<AppState>,
    arrival: Option<Extension<Arrival>>,
    Path(sale_id): Path<String>,
    caller: Caller,
    ClientIp(ip): ClientIp,
    IdempotencyKey(key): IdempotencyKey,
    body: Request,
) -> Result<Response, ApiError> {
    let head = purchase_head(sale_id, caller, ip, key, arrival, true);
    let admitted = admit(&state, slot, head, body).await?;
    let joined = state.line.join(admitted).await?;
    let view = ticket_view(&state, joined.state).await?;
    let status = if joined.new {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let location = format!("/api/tickets/{}", view.ticket);
    Ok((status, [(header::LOCATION, location)], Json(view)).into_response())
}

/// The caller's ticket (another buyer's: 404 `ticket_not_found`).
#[utoipa::path(get, path = "/api/tickets/{ticket}", tag = "queue",
    params(("ticket" = String, Path, description = "The ticket's id")),
    security((), ("buyer_token" = []), ("admin_token" = [])),
    responses(
        (status = 200, description = "The ticket", body = TicketView)
    ))]
pub(super) async fn get_ticket(
    State(state): State<AppState>,
    Path(id): Path<String>,
    caller: Caller,
) -> Result<Json<TicketView>, ApiError> {
    let ticket = visible_ticket(&state, &caller, &id).await?;
    Ok(Json(ticket_view(&state, ticket).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct TicketWatcher {
    /// A buyer token (browsers cannot set headers on an EventSource); the
    /// `Authorization` header works too.
    access_token: Option<String>,
}

/// The caller's ticket as Server-Sent Events: a `ticket` event (a `TicketView`) at
/// once, on each change of the line and every few seconds while it waits; the stream
/// ends after the event with its final status.
#[utoipa::path(get, path = "/api/tickets/{ticket}/events", tag = "queue",
    params(("ticket" = String, Path, description = "The ticket's id"), TicketWatcher),
    security((), ("buyer_token" = []), ("admin_token" = [])),
    responses(
        (status = 200, description = "Server-Sent Events: `ticket`, each a `TicketView`", content_type = "text/event-stream", body = TicketView)
    ))]
pub(super) async fn ticket_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(watcher): Query<TicketWatcher>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let token = watcher.access_token.as_deref().or_else(|| bearer(&headers));
    let caller = Caller::from_token(&state, token)?;
    let first = visible_ticket(&state, &caller, &id).await?;
    let changes = state.line.watch(&first.ticket.sale_id).await?;
    let stream = futures_util::stream::unfold(
        (state, id, changes, Some(first), false),
        |(state, id, mut changes, pending, done)| async move {
            if done {
                return None;
            }
            let ticket = match pending {
                Some(ticket) => ticket,
                None => {
                    tokio::select! {
                        _ = changes.changed() => {}
                        () = tokio::time::sleep(TICKET_HEARTBEAT) => {}
                    }
                    state.line.ticket(&id).await.ok()?
                }
            };
            let last = ticket.ticket.status != TicketStatus::Waiting;
            let view = ticket_view(&state, ticket).await.ok()?;
            let event = Event::default()
                .event("ticket")
                .json_data(&view)
                .expect("a ticket serializes");
            Some((Ok(event), (state, id, changes, None, last)))
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// The line's public figures.
#[utoipa::path(get, path = "/api/sales/{id}/queue", tag = "queue",
    params(("id" = String, Path, description = "The sale's id")),
    responses(
        (status = 200, description = "The line", body = LineView)
    ))]
pub(super) async fn line_figures(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<LineView>, ApiError> {
    let (queue, figures) = state.line.figures(&id).await?;
    Ok(Json(LineView {
        sale_id: id,
        waiting: figures.waiting,
        decided: figures.decided,
        timed_out: figures.timed_out,
        closed: figures.closed,
        rate: figures.rate,
        decided_per_s: figures.measured_per_s.map(|r| (r * 10.0).round() / 10.0),
        admit: queue.admit,
        order: queue.order,
        opens_at: rfc3339(queue.opens_at),
        max_wait_s: queue.max_wait_s,
    }))
}

/// Body of `POST /api/sales/{id}/queue/rate`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRate {
    /// Decisions per second at most, e.g. `500/s`, or `off`.
    #[schema(value_type = String, example = "500/s")]
    pub rate: RateLimit,
}

/// Changes the line's rate, live (admin).
#[utoipa::path(post, path = "/api/sales/{id}/queue/rate", tag = "queue", request_body = NewRate,
    params(("id" = String, Path, description = "The sale's id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The line after the change", body = LineView)
    ))]
pub(super) async fn set_rate(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
    JsonBody(new): JsonBody<NewRate>,
) -> Result<Json<LineView>, ApiError> {
    state.line.set_rate(&id, new.rate).await?;
    line_figures(State(state), Path(id)).await
}

/// A ticket the caller may see: their own (the operator: any). With buyer tokens off,
/// the ticket's id is what proves it is the caller's: unlike an order id it is
/// unguessable (a hash over 64 random bits), and rejoining as the same `user_id` answers
/// the same ticket anyway, so refusing a read would protect nothing and leave a buyer's
/// page without its place after a reload.
async fn visible_ticket(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<TicketState, ApiError> {
    let ticket = state.line.ticket(id).await?;
    if caller.may_see(&ticket.ticket.user_id) {
        Ok(ticket)
    } else {
        Err(EngineError::TicketNotFound(id.to_string()).into())
    }
}

async fn ticket_view(state: &AppState, current: TicketState) -> Result<TicketView, ApiError> {
    let TicketState {
        ticket,
        position,
        eta_s,
    } = current;
    let order = match &ticket.order_id {
        Some(id) => Some(OrderView::from(&state.engine.order(id).await?)),
        None => None,
    };
    let refusal = ticket.refusal.as_deref().map(|code| RefusalView {
        code: code.to_string(),
        detail: match code {
            "timeout" => "the ticket waited longer than the line's max_wait_s",
            code => problems::ALL
                .iter()
                .find(|p| p.code == code)
                .map_or("", |p| p.meaning),
        }
        .to_string(),
    });
    Ok(TicketView {
        ticket: ticket.id,
        sale_id: ticket.sale_id,
        place: ticket.seq,
        status: ticket.status,
        position,
        eta_s,
        nonce: ticket.nonce,
        joined_at: rfc3339(ticket.joined_at),
        decided_at: ticket.decided_at.map(rfc3339),
        order,
        refusal,
    })
}
