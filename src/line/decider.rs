//! A sale's decider: takes the tickets at the head of its line one after another, at
//! the line's rate, and decides each through the engine (the gate in line order; the
//! order's way to disk meanwhile, in a task of its own).
//!
//! For each ticket at the head, in this order: the line closed (sold out, ended) → the
//! ticket is `closed`; its wait ran out → `timeout`; the sale not started or paused →
//! wait; the rate → wait for the next slot; then the engine decides. A decision that
//! could not be made (a backend failing) is tried again, the head kept: the next ticket
//! is never decided before it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

use super::state::SaleLine;
use super::{closes_the_line, wait_deadline};
use crate::domain::{Millis, Order, Refusal, Ticket, TicketStatus, ValidPurchase, now_millis};
use crate::engine::{Engine, EngineError, Placing};

/// How long the decider sleeps when nothing wakes it (the sale's window, a pause).
const IDLE: Duration = Duration::from_millis(250);
/// A decision a failing backend prevented is tried again after this long.
const RETRY_AFTER: Duration = Duration::from_millis(200);
/// A line that waited may catch up at most this much of its rate at once (timers are
/// coarser than a fast rate's interval).
const CATCH_UP: Duration = Duration::from_millis(50);
/// How often a decision whose order failed on its way to disk is tried again.
const SETTLE_TRIES: u32 = 5;
/// Decided tickets whose orders may be on their way to the store at once (and never
/// more than the bus holds). The decider waits for a place before it asks the gate: a
/// line without a rate would otherwise outrun the bus (`Full`, its units given back,
/// and its ticket tried again after later ones had been served).
const SETTLING_AT_MOST: usize = 256;

/// What became of a ticket's purchase.
enum Outcome {
    /// An order; `Some` when it took the last unit, which closes the line.
    Order(Arc<Order>, Option<Refusal>),
    /// Refused with this code; `Some` when the refusal closes the line.
    Refused(&'static str, Option<Refusal>),
    /// Not decided (a backend failing, the gate's window differing): try again.
    Again(EngineError),
}

fn outcome(answer: Result<Arc<Order>, EngineError>) -> Outcome {
    match answer {
        Ok(order) => Outcome::Order(order, None),
        Err(EngineError::Refused(refusal)) => match refusal {
            Refusal::NotStarted | Refusal::Paused => Outcome::Again(EngineError::Refused(refusal)),
            refusal => {
                Outcome::Refused(refusal.code(), closes_the_line(refusal).then_some(refusal))
            }
        },
        Err(e @ (EngineError::Unavailable(_) | EngineError::InProgress)) => Outcome::Again(e),
        Err(EngineError::KeyReused) => Outcome::Refused("idempotency_key_reused", None),
        Err(EngineError::TooManyKeys) => Outcome::Refused("too_many_keys", None),
        Err(EngineError::Invalid(_)) => Outcome::Refused("invalid_request", None),
        Err(e) => Outcome::Again(e),
    }
}

/// Decides the line's tickets until the sale is over.
pub(super) async fn run(
    engine: Arc<Engine>,
    line: Arc<SaleLine>,
    decisions: mpsc::UnboundedSender<Ticket>,
) {
    let mut next_slot = Instant::now();
    let mut paced_at = line.state.lock().rate;
    let settle_places = Arc::new(Semaphore::new(
        SETTLING_AT_MOST.min(engine.bus_capacity().unwrap_or(usize::MAX)),
    ));
    loop {
        let sale = match engine.sale(&line.sale_id).await {
            Ok(sale) => sale,
            Err(e) => {
                tracing::warn!(sale = %line.sale_id, error = %e, "line: sale not read");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(queue) = sale.queue else { return };
        let now = now_millis();
        if sale.has_ended(now) {
            // Closed for good: nobody joins any more (a join still on its way is
            // refused), and once the last ticket on its way to the store is closed
            // too, the decider is done and its line leaves memory.
            end_all(&line, &decisions, Refusal::Ended);
            if line.state.lock().waiting() == 0 {
                return;
            }
            idle(&line, Duration::from_millis(100)).await;
            continue;
        }
        let closed_by = line.state.lock().closed_by;
        if let Some(refusal) = closed_by {
            // Stock added by an operator, or given back by an expiry, opens it again.
            let reopened = refusal == Refusal::SoldOut
                && engine
                    .sale_state(&sale.id)
                    .await
                    .is_ok_and(|state| state.remaining.iter().any(|&r| r > 0));
            if reopened {
                line.state.lock().closed_by = None;
            } else {
                end_all(&line, &decisions, refusal);
                idle(&line, Duration::from_secs(1)).await;
                continue;
            }
        }
        let head = line.state.lock().head();
        let Some(ticket) = head else {
            idle(&line, Duration::from_secs(1)).await;
            continue;
        };
        let deadline = wait_deadline(&ticket, &sale, &queue);
        if now >= deadline {
            let mut state = line.state.lock();
            state.take(ticket.seq);
            if let Some(ended) = state.end(
                ticket.seq,
                TicketStatus::Timeout,
                None,
                Some("timeout"),
                now,
            ) {
                let _ = decisions.send(ended);
            }
            drop(state);
            line.bump();
            continue;
        }
        let until_deadline = Duration::from_millis((deadline - now) as u64);
        if now < sale.starts_at || sale.paused {
            // A short nap, not until the start: an operator may move the start.
            idle(&line, IDLE.min(until_deadline)).await;
            continue;
        }
        let rate = line.state.lock().rate;
        if rate != paced_at {
            // A new rate applies from now, not from the slot the old one gave.
            paced_at = rate;
            next_slot = Instant::now();
        }
        if let Some(quota) = rate.quota() {
            let at = Instant::now();
            if next_slot > at {
                idle(&line, (next_slot - at).min(until_deadline)).await;
                continue;
            }
            let interval = Duration::from_micros(quota.interval_micros());
            next_slot = next_slot.max(at.checked_sub(CATCH_UP).unwrap_or(at)) + interval;
        }
        let Some(purchase) =
            ValidPurchase::from_fingerprint(&sale, &ticket.user_id, &ticket.fingerprint)
        else {
            // The sale's items changed under the ticket (they cannot today).
            line.state.lock().take(ticket.seq);
            record(
                &line,
                &decisions,
                &ticket,
                Outcome::Refused("invalid_request", None),
                now_millis(),
            );
            continue;
        };
        let place = settle_places
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        match engine
            .decide(sale.clone(), purchase.clone(), Some(ticket.order_key()))
            .await
        {
            Placing::Answered(answer) => match outcome(answer) {
                Outcome::Again(why) => {
                    tracing::warn!(ticket = %ticket.id, error = %why, "line: ticket not decided; trying again");
                    tokio::time::sleep(RETRY_AFTER).await;
                }
                decided => {
                    line.state.lock().take(ticket.seq);
                    let decided = closing_at_sell_out(&engine, &sale.id, decided).await;
                    record(&line, &decisions, &ticket, decided, now_millis());
                }
            },
            Placing::Settling(settling) => {
                // The gate's decision is the ticket's, made now, in line order; its
                // order becomes durable meanwhile.
                let decided_at = now_millis();
                line.state.lock().take(ticket.seq);
                let (engine, line, decisions) = (engine.clone(), line.clone(), decisions.clone());
                tokio::spawn(async move {
                    let _place = place;
                    let mut answer = engine.settle(settling, None).await;
                    // The order did not reach the store and its units went back: the
                    // same ticket is tried again (its key replays an order that did).
                    let mut tries = 0;
                    while matches!(outcome_kind(&answer), Kind::Again) && tries < SETTLE_TRIES {
                        tokio::time::sleep(RETRY_AFTER * 2u32.pow(tries)).await;
                        tries += 1;
                        answer = match engine
                            .decide(sale.clone(), purchase.clone(), Some(ticket.order_key()))
                            .await
                        {
                            Placing::Answered(answer) => answer,
                            Placing::Settling(settling) => engine.settle(settling, None).await,
                        };
                    }
                    let decided = match outcome(answer) {
                        Outcome::Again(why) => {
                            tracing::error!(ticket = %ticket.id, error = %why, "line: ticket refused, its order could not be placed");
                            Outcome::Refused("unavailable", None)
                        }
                        decided => closing_at_sell_out(&engine, &sale.id, decided).await,
                    };
                    record(&line, &decisions, &ticket, decided, decided_at);
                });
            }
        }
    }
}

enum Kind {
    Again,
    Final,
}

fn outcome_kind(answer: &Result<Arc<Order>, EngineError>) -> Kind {
    match answer {
        Err(EngineError::Unavailable(_) | EngineError::InProgress) => Kind::Again,
        _ => Kind::Final,
    }
}

/// The line closes when the sale has no unit left at all: at once after the order that
/// took the last one (the people still in line are told then, not one by one as their
/// turns come). A `sold_out` refusal closes it only then too: the gate also answers it
/// to a purchase of more units than are left, or of an item gone while others remain,
/// and the tickets behind it may still buy.
async fn closing_at_sell_out(engine: &Engine, sale_id: &str, decided: Outcome) -> Outcome {
    let no_unit_left = || async {
        engine
            .sale_state(sale_id)
            .await
            .is_ok_and(|state| state.remaining.iter().all(|&r| r == 0))
    };
    match decided {
        Outcome::Refused(code, Some(Refusal::SoldOut)) => {
            Outcome::Refused(code, no_unit_left().await.then_some(Refusal::SoldOut))
        }
        Outcome::Order(order, _) => {
            Outcome::Order(order, no_unit_left().await.then_some(Refusal::SoldOut))
        }
        decided => decided,
    }
}

/// Records a ticket's decision, made at `decided_at`; a sell-out or an end closes the
/// line behind it.
fn record(
    line: &SaleLine,
    decisions: &mpsc::UnboundedSender<Ticket>,
    ticket: &Ticket,
    decided: Outcome,
    decided_at: Millis,
) {
    let now = now_millis();
    let mut state = line.state.lock();
    let (order_id, refusal, closes) = match decided {
        Outcome::Order(order, closes) => (Some(order.id.clone()), None, closes),
        Outcome::Refused(code, closes) => (None, Some(code), closes),
        Outcome::Again(_) => unreachable!("only final outcomes are recorded"),
    };
    if let Some(ended) = state.end(
        ticket.seq,
        TicketStatus::Decided,
        order_id,
        refusal,
        decided_at,
    ) {
        let _ = decisions.send(ended);
    }
    if let Some(refusal) = closes {
        for closed in state.close(refusal, now) {
            let _ = decisions.send(closed);
        }
    }
    drop(state);
    line.bump();
}

/// Closes the line with `refusal`: whoever still waits in it is told.
fn end_all(line: &SaleLine, decisions: &mpsc::UnboundedSender<Ticket>, refusal: Refusal) {
    let closed = line.state.lock().close(refusal, now_millis());
    if !closed.is_empty() {
        for ticket in closed {
            let _ = decisions.send(ticket);
        }
        line.bump();
    }
}

/// Waits for a wake-up of the line, at most `longest`.
async fn idle(line: &SaleLine, longest: Duration) {
    tokio::select! {
        () = line.wake.notified() => {}
        () = tokio::time::sleep(longest) => {}
    }
}
