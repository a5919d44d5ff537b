//! In-process bus: a bounded channel to the group-commit writer (`crate::worker`). Each
//! order carries a one-shot reply that the writer sends after the commit holding it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use super::{BusError, OrderBus};
use crate::domain::Order;

pub struct Envelope {
    pub order: Order,
    /// `Ok` once durable, `Err(reason)` if it surely is not (the store refused it, the
    /// batch surely rolled back, or its deadline passed before the writer got to it);
    /// dropped unanswered when nobody can tell.
    pub reply: oneshot::Sender<Result<(), String>>,
    /// Past this, the writer does not store the order any more: an order never lands
    /// later than its delivery deadline (a rebuild of a shared gate relies on it).
    pub deadline: tokio::time::Instant,
}

/// The writer's end of the in-process bus.
pub type OrderInbox = mpsc::Receiver<Envelope>;

pub struct MemoryBus {
    tx: mpsc::Sender<Envelope>,
    /// Orders handed to the writer and not answered yet.
    in_flight: Arc<AtomicUsize>,
    /// The same, per sale: a rebuild waits for its sale's orders only (issue #21: it
    /// waited for every sale's, and under steady sales elsewhere never saw none).
    in_flight_by_sale: Arc<Mutex<HashMap<String, usize>>>,
    /// How long an order may wait for the writer (its delivery deadline).
    deadline: Duration,
}

impl MemoryBus {
    pub fn new(capacity: usize, deadline: Duration) -> (MemoryBus, OrderInbox) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (
            MemoryBus {
                tx,
                in_flight: Arc::default(),
                in_flight_by_sale: Arc::default(),
                deadline,
            },
            rx,
        )
    }
}

/// Counts an order in flight, in all and for its sale, until dropped.
struct InFlight<'a> {
    bus: &'a MemoryBus,
    sale_id: &'a str,
}

impl<'a> InFlight<'a> {
    fn new(bus: &'a MemoryBus, sale_id: &'a str) -> Self {
        bus.in_flight.fetch_add(1, Ordering::SeqCst);
        let mut by_sale = bus.in_flight_by_sale.lock();
        // The sale's entry is there while any of its orders is in flight: no
        // allocation on the way of a sale that is selling.
        match by_sale.get_mut(sale_id) {
            Some(count) => *count += 1,
            None => {
                by_sale.insert(sale_id.to_string(), 1);
            }
        }
        InFlight { bus, sale_id }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.bus.in_flight.fetch_sub(1, Ordering::SeqCst);
        let mut by_sale = self.bus.in_flight_by_sale.lock();
        if let Some(count) = by_sale.get_mut(self.sale_id) {
            *count -= 1;
            if *count == 0 {
                by_sale.remove(self.sale_id);
            }
        }
    }
}

impl MemoryBus {
    fn in_flight_for(&self, sale_id: &str) -> usize {
        self.in_flight_by_sale
            .lock()
            .get(sale_id)
            .copied()
            .unwrap_or(0)
    }
}

#[async_trait]
impl OrderBus for MemoryBus {
    fn pending(&self) -> Option<usize> {
        Some(self.in_flight.load(Ordering::Relaxed))
    }

    fn capacity(&self) -> Option<usize> {
        Some(self.tx.max_capacity())
    }

    async fn publish(&self, order: &Order) -> Result<(), BusError> {
        let _in_flight = InFlight::new(self, &order.sale_id);
        let (reply, answer) = oneshot::channel();
        self.tx
            .try_send(Envelope {
                order: order.clone(),
                reply,
                deadline: tokio::time::Instant::now() + self.deadline,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => BusError::Full,
                mpsc::error::TrySendError::Closed(_) => {
                    BusError::NotStored("the order writer has stopped".into())
                }
            })?;
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(BusError::NotStored(reason)),
            Err(_) => Err(BusError::Unknown(
                "the order writer dropped the order".into(),
            )),
        }
    }

    /// Waits for this process's orders of the sale to be answered by the writer: then
    /// every order of it acknowledged is in the store. Only this process's orders are visible here:
    /// with several gateways on the in-process bus, the store's own stock check covers
    /// the others' last milliseconds.
    async fn undelivered(&self, sale_id: &str, deadline: Duration) -> Result<Vec<Order>, BusError> {
        let until = tokio::time::Instant::now() + deadline;
        while self.in_flight_for(sale_id) > 0 {
            if tokio::time::Instant::now() >= until {
                return Err(BusError::Unknown(
                    "orders still on their way to the store".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit;

    /// One unit of sale `s`, paid, for `u`.
    fn order(id: &str) -> Order {
        testkit::order(&testkit::sale().id("s").build())
            .id(id)
            .build()
    }

    #[tokio::test]
    async fn full_bus_sheds_at_once() {
        let (bus, _rx) = MemoryBus::new(1, Duration::from_secs(5));
        let bus = std::sync::Arc::new(bus);
        let first = tokio::spawn({
            let bus = bus.clone();
            async move { bus.publish(&order("a")).await }
        });
        tokio::task::yield_now().await;
        // Nobody drains the channel: its one place is taken, the next order is shed.
        let shed = tokio::time::timeout(
            std::time::Duration::from_millis(100),
            bus.publish(&order("b")),
        )
        .await
        .expect("answers at once");
        assert!(matches!(shed, Err(BusError::Full)));
        first.abort();
    }

    #[tokio::test]
    async fn writer_answers_decide_the_outcome() {
        let (bus, mut rx) = MemoryBus::new(8, Duration::from_secs(5));
        let writer = tokio::spawn(async move {
            let stored = rx.recv().await.unwrap();
            stored.reply.send(Ok(())).unwrap();
            let refused = rx.recv().await.unwrap();
            refused.reply.send(Err("check failed".into())).unwrap();
            let dropped = rx.recv().await.unwrap();
            drop(dropped); // the writer vanished without answering
        });
        assert!(bus.publish(&order("a")).await.is_ok());
        let refused = bus.publish(&order("b")).await.unwrap_err();
        assert!(matches!(refused, BusError::NotStored(_)) && refused.is_definite());
        let unknown = bus.publish(&order("c")).await.unwrap_err();
        assert!(matches!(unknown, BusError::Unknown(_)) && !unknown.is_definite());
        writer.await.unwrap();
    }

    /// Issue #21: a rebuild waits for its own sale's orders, not another sale's.
    #[tokio::test]
    async fn undelivered_waits_for_the_sale_asked_about_only() {
        let (bus, mut rx) = MemoryBus::new(8, Duration::from_secs(5));
        let bus = std::sync::Arc::new(bus);
        let other = tokio::spawn({
            let bus = bus.clone();
            async move { bus.publish(&order("elsewhere")).await }
        });
        let held = rx.recv().await.unwrap(); // in the writer's hands, not answered
        assert_eq!(bus.pending(), Some(1));
        assert!(
            bus.undelivered("mine", Duration::from_millis(100))
                .await
                .is_ok()
        );
        assert!(
            bus.undelivered("s", Duration::from_millis(100))
                .await
                .is_err()
        );
        held.reply.send(Ok(())).unwrap();
        other.await.unwrap().unwrap();
        assert!(
            bus.undelivered("s", Duration::from_millis(100))
                .await
                .is_ok()
        );
        assert_eq!(bus.pending(), Some(0));
    }
}
