//! `GET /api/sales/{id}/events`: the sale live, as Server-Sent Events. First a `sale`
//! event with the whole sale (unless the client reconnects with the id of the frame it
//! has: `Last-Event-ID`), then a `stock` event per change (coalesced by `crate::live`:
//! at most one per `live_update_ms`), carrying what changed; and, for a caller who says
//! who they are, an `order` event each time one of their orders in this sale changes
//! status (paid, cancelled, expired) through this gateway. The stream ends once the
//! watcher has the frame where the sale ended, or at shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::{Ref, RefOr};

use super::caller::{bearer, unauthorized};
use super::views::rfc3339;
use super::views::{ItemView, OrderEventView};
use super::{ApiError, AppState, SaleView};
use crate::domain::{OrderEvent, SaleStatus};
use crate::engine::SaleState;
use crate::live::{FrameReceiver, SaleFrame};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct Watcher {
    /// A buyer token (browsers cannot set headers on an EventSource); with it, the
    /// caller's own order updates come too.
    access_token: Option<String>,
    /// The buyer, when buyer tokens are off.
    user_id: Option<String>,
}

/// The sale live: stock and status, and the caller's own order updates (SSE).
#[utoipa::path(get, path = "/api/sales/{id}/events", tag = "sales",
    params(
        ("id" = String, Path, description = "The sale's id"),
        Watcher,
        ("Last-Event-ID" = Option<String>, Header, description = "The id of the last event received: a client that has the current frame gets no `sale` event again")
    ),
    security((), ("buyer_token" = [])),
    responses(
        (status = 200, description = "Server-Sent Events, each one of `SaleEvent` (`itemSchema`): `sale` (the whole sale, a `SaleView`), `stock` (a `StockChange`), `order` (an `OrderEvent`, the caller's own), `resync` (`{}`: order events were missed)", content_type = "text/event-stream", item_schema = SaleEvent)
    ))]
pub(super) async fn sale_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(watcher): Query<Watcher>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let buyer = who(&state, &watcher, &headers)?;
    let frames = state.feeds.watch(&id).await?;
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let orders = buyer.map(|buyer| (state.engine.subscribe(), buyer));
    let stream = futures_util::stream::unfold(
        Watch {
            frames,
            orders,
            sent: None,
            last_event_id,
            sale_id: id,
            stopping: state.feeds.stopping(),
            ended: false,
        },
        |mut watch| async move {
            let event = watch.next().await?;
            Some((Ok(event), watch))
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// The data of a `stock` event: the sale's counters, and only the items whose stock or
/// remaining units changed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StockChange {
    pub status: SaleStatus,
    pub stock: u64,
    pub remaining: u64,
    pub ends_at: Option<String>,
    /// The items that changed.
    pub items: Vec<ItemView>,
}

/// The data of a `resync` event (`{}`): this watcher missed order events; read its orders
/// again.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Resync {}

/// One event of the stream, as OpenAPI 3.2 describes a `text/event-stream` item: its
/// `event` name, its `id` and its `data`, a JSON document (`contentSchema`) whose schema
/// the name decides.
pub struct SaleEvent;

impl utoipa::PartialSchema for SaleEvent {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .description(Some(
                "An event of the stream: `event` names it, `data` is JSON of its schema",
            ))
            .item(event_schema("sale", "SaleView", true))
            .item(event_schema("stock", "StockChange", true))
            .item(event_schema("order", "OrderEvent", false))
            .item(event_schema("resync", "Resync", false))
            .into()
    }
}

impl utoipa::ToSchema for SaleEvent {}

/// The event named `name`, whose data is JSON of the schema `data` (a component); `sale`
/// and `stock` events carry the frame's id (others may repeat the last one, per SSE).
fn event_schema(name: &str, data: &str, with_id: bool) -> Schema {
    let text = || ObjectBuilder::new().schema_type(Type::String);
    let event = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("event", text().enum_values(Some([name])))
        .property(
            "data",
            text()
                .content_media_type("application/json")
                .content_schema(Some(Ref::from_schema_name(data))),
        )
        .property("id", text())
        .property("retry", ObjectBuilder::new().schema_type(Type::Integer))
        .required("event")
        .required("data");
    let event = if with_id { event.required("id") } else { event };
    event.into()
}

/// Who the watcher is, if they say: a valid buyer token, or (tokens off) a `user_id`.
fn who(
    state: &AppState,
    watcher: &Watcher,
    headers: &HeaderMap,
) -> Result<Option<String>, ApiError> {
    let token = watcher.access_token.as_deref().or_else(|| bearer(headers));
    if state.auth.buyers_need_tokens() {
        if watcher.user_id.is_some() {
            return Err(ApiError::invalid(
                "user_id is not accepted here: the buyer is the token's `sub`",
            ));
        }
        return token
            .map(|t| state.auth.buyer(t).map_err(unauthorized))
            .transpose();
    }
    Ok(watcher.user_id.clone().filter(|u| !u.is_empty()))
}

struct Watch {
    frames: FrameReceiver,
    orders: Option<(broadcast::Receiver<OrderEvent>, String)>,
    /// The frame this watcher last got (shared with the feed: nothing copied).
    sent: Option<Arc<SaleFrame>>,
    last_event_id: Option<String>,
    sale_id: String,
    stopping: tokio_util::sync::CancellationToken,
    /// The last frame sent showed the sale ended: nothing changes any more, the stream
    /// ends.
    ended: bool,
}

impl Watch {
    /// The next event for this watcher; `None` ends the stream (the feed stopped, or the
    /// sale has ended and the watcher has the frame that says so).
    async fn next(&mut self) -> Option<Event> {
        if self.ended {
            return None;
        }
        loop {
            if self.sent.is_none() {
                let current = self.frames.borrow_and_update().clone();
                let resumed = self.last_event_id.take().is_some_and(|id| id == current.id);
                self.sent = Some(current.clone());
                self.ended = current.status == SaleStatus::Ended;
                if !resumed {
                    return Some(whole(&current));
                }
                if self.ended {
                    return None;
                }
            }
            let orders = async {
                match &mut self.orders {
                    Some((events, _)) => events.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.stopping.cancelled() => return None,
                changed = self.frames.changed() => {
                    changed.ok()?;
                    let current = self.frames.borrow_and_update().clone();
                    let before = self.sent.replace(current.clone()).expect("sent above");
                    self.ended = current.status == SaleStatus::Ended;
                    return Some(change(&before, &current));
                }
                event = orders => match event {
                    Ok(event) => {
                        let (_, buyer) = self.orders.as_ref().expect("orders are watched");
                        if event.user_id == *buyer && event.sale_id == self.sale_id {
                            return Some(order(&event));
                        }
                    }
                    // Missed events: the page reads its orders again on `resync`.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let data = serde_json::to_string(&Resync {}).expect("serializes");
                        return Some(Event::default().event("resync").data(data));
                    }
                    Err(broadcast::error::RecvError::Closed) => self.orders = None,
                },
            }
        }
    }
}

fn whole(frame: &SaleFrame) -> Event {
    let data = frame.whole_data.get_or_init(|| {
        let view = SaleView::from(SaleState {
            sale: frame.sale.clone(),
            remaining: frame.remaining.clone(),
        });
        serde_json::to_string(&view).expect("views serialize")
    });
    Event::default()
        .event("sale")
        .id(frame.id.clone())
        .data(data)
}

/// What changed from `before` to `now`: the sale's counters, and only the items whose
/// stock or remaining units changed (a seat map of thousands gets the few seats taken).
/// Serialized once per frame for the watchers that had the frame before it.
fn change(before: &SaleFrame, now: &SaleFrame) -> Event {
    let event = Event::default().event("stock").id(now.id.clone());
    if now.previous_id.as_deref() == Some(before.id.as_str()) {
        event.data(now.change_data.get_or_init(|| change_data(before, now)))
    } else {
        event.data(change_data(before, now))
    }
}

fn change_data(before: &SaleFrame, now: &SaleFrame) -> String {
    let items: Vec<_> = now
        .sale
        .items
        .iter()
        .enumerate()
        .filter(|(i, item)| {
            before.remaining.get(*i) != now.remaining.get(*i)
                || before.sale.items.get(*i).map(|b| b.stock) != Some(item.stock)
        })
        .map(|(i, item)| ItemView {
            id: item.id.clone(),
            stock: item.stock,
            remaining: now.remaining[i],
        })
        .collect();
    let change = StockChange {
        status: now.status,
        stock: now.sale.total_stock(),
        remaining: now.total_remaining(),
        ends_at: now.sale.ends_at.map(rfc3339),
        items,
    };
    serde_json::to_string(&change).expect("changes serialize")
}

fn order(event: &OrderEvent) -> Event {
    Event::default()
        .event("order")
        .data(serde_json::to_string(&OrderEventView::from(event)).expect("events serialize"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Item, Sale};
    use crate::live::frame;

    fn seats(remaining: &[u32]) -> SaleState {
        SaleState {
            sale: Arc::new(Sale {
                id: "hall".into(),
                name: "hall".into(),
                items: ["A1", "A2", "A3"]
                    .map(|id| Item {
                        id: id.into(),
                        stock: 1,
                    })
                    .into(),
                per_user_limit: 2,
                starts_at: 0,
                ends_at: None,
                payment_window: 0,
                created_at: 0,
                rate_limits: Default::default(),
                paused: false,
                shards: 1,
                queue: None,
            }),
            remaining: remaining.to_vec(),
        }
    }

    /// A change is serialized once per frame for the watchers that had the frame before
    /// it; a watcher that missed a frame gets its own, and does not change theirs.
    #[test]
    fn a_change_is_serialized_once_per_frame_and_only_for_the_frame_before_it() {
        let first = frame("feed", 0, seats(&[1, 1, 1]));
        let second = frame("feed", 1, seats(&[0, 1, 1]));
        let third = frame("feed", 2, seats(&[0, 0, 1]));
        assert_eq!(third.previous_id.as_deref(), Some(second.id.as_str()));

        let _ = change(&first, &second);
        let shared = second.change_data.get().expect("kept for the next watcher");
        assert_eq!(*shared, change_data(&first, &second));
        assert!(
            shared.contains("\"A1\"") && !shared.contains("\"A2\""),
            "{shared}"
        );

        // A watcher that missed `second`: its own change (A1 and A2), nothing kept.
        let _ = change(&first, &third);
        assert!(third.change_data.get().is_none());
        // The watchers that had `second` get the change from it alone.
        let _ = change(&second, &third);
        let shared = third.change_data.get().expect("kept");
        assert!(
            shared.contains("\"A2\"") && !shared.contains("\"A1\""),
            "{shared}"
        );

        let _ = whole(&third);
        let kept = third.whole_data.get().expect("the whole sale kept");
        assert!(kept.contains("\"A3\""), "{kept}");
    }
}
