//! The order lifecycle after placement: pay, cancel, expire, and giving the units of an
//! ended order back to the gate. The store decides each transition (one wins of a late
//! payment and an expiry); the gate releases an order's units once, whoever asks.

use super::{Engine, EngineError};
use crate::domain::{Millis, Order, OrderEvent, OrderStatus, now_millis};

impl Engine {
    pub async fn order(&self, id: &str) -> Result<Order, EngineError> {
        self.breakers
            .store
            .call(self.store.get_order(id), |_| true)
            .await??
            .ok_or_else(|| EngineError::OrderNotFound(id.to_string()))
    }

    pub async fn order_history(&self, id: &str) -> Result<Vec<(OrderStatus, Millis)>, EngineError> {
        Ok(self.store.order_history(id).await?)
    }

    /// Confirms payment of a pending order. Paying twice is harmless; paying after the
    /// payment window is refused (`expired`), and expires the order if nobody did yet.
    /// Whether the window is over is the store's call, on the database's clock.
    pub async fn pay(&self, id: &str) -> Result<Order, EngineError> {
        let now = now_millis();
        let transition = self
            .store
            .transition(id, OrderStatus::Paid, now)
            .await?
            .ok_or_else(|| EngineError::OrderNotFound(id.to_string()))?;
        if transition.moved {
            self.announce(&transition.order, now).await;
        }
        match transition.order.status {
            OrderStatus::Paid => Ok(transition.order),
            // Still pending but not paid: the window is over. Expire it now.
            OrderStatus::Pending => {
                let ended = self
                    .end_order(&transition.order, OrderStatus::Expired, now)
                    .await?;
                Err(EngineError::OrderIs(ended.status))
            }
            other => Err(EngineError::OrderIs(other)),
        }
    }

    /// Cancels a pending order and puts its units back on sale. Cancelling twice is
    /// harmless; a paid or expired order cannot be cancelled.
    pub async fn cancel(&self, id: &str) -> Result<Order, EngineError> {
        let order = self.order(id).await?;
        let ended = self
            .end_order(&order, OrderStatus::Cancelled, now_millis())
            .await?;
        match ended.status {
            OrderStatus::Cancelled => Ok(ended),
            other => Err(EngineError::OrderIs(other)),
        }
    }

    /// Moves a pending order to cancelled or expired; the call that moved it gives the
    /// units back to the gate (the sweeper retries if that fails half-way).
    pub(super) async fn end_order(
        &self,
        order: &Order,
        to: OrderStatus,
        now: Millis,
    ) -> Result<Order, EngineError> {
        let transition = self
            .store
            .transition(&order.id, to, now)
            .await?
            .ok_or_else(|| EngineError::OrderNotFound(order.id.clone()))?;
        if transition.moved {
            super::purchase::crash_here_if_asked("after-end");
            // The units first: an event is news, the units are stock (issue #21: during
            // a broker outage each release waited for its event's delivery timeout).
            if let Err(e) = self.release_ended(&transition.order).await {
                tracing::warn!(order = %order.id, error = %e, "release deferred to the sweeper");
            }
            self.announce(&transition.order, now).await;
        }
        Ok(transition.order)
    }

    /// Gives an ended order's units back to the gate, then marks the release done.
    pub(super) async fn release_ended(&self, order: &Order) -> Result<(), EngineError> {
        let sale = self.sale(&order.sale_id).await?;
        // A lost sale is rebuilt without this order's units (it is not counted): the
        // release after the rebuild gives nothing back and is then marked done.
        if let Err(e) = self.gate.release(&sale, order, false).await {
            return Err(self.gate_failed(&sale, e).await);
        }
        self.store.mark_released(&order.id).await?;
        Ok(())
    }

    /// Tells this process's listeners at once and, through the bus, the others in the
    /// background: neither a buyer's answer nor a sweep waits for the broker.
    pub(super) async fn announce(&self, order: &Order, now: Millis) {
        let event = OrderEvent::of(order, now);
        let _ = self.events.send(event.clone());
        let bus = self.bus.clone();
        tokio::spawn(async move {
            if let Err(e) = bus.publish_event(&event).await {
                tracing::warn!(order = %event.order_id, error = %e, "status event not published");
            }
        });
    }
}
