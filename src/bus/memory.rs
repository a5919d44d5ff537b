//! In-process bus: a bounded channel to the group-commit writer (`crate::worker`). Each
//! order carries a one-shot reply that the writer sends after the commit holding it.

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use super::{BusError, OrderBus};
use crate::domain::Order;

pub struct Envelope {
    pub order: Order,
    /// `Ok` once durable, `Err(reason)` if the store refused or the batch rolled back.
    pub reply: oneshot::Sender<Result<(), String>>,
}

pub struct MemoryBus {
    tx: mpsc::Sender<Envelope>,
}

impl MemoryBus {
    pub fn new(capacity: usize) -> (MemoryBus, mpsc::Receiver<Envelope>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (MemoryBus { tx }, rx)
    }
}

#[async_trait]
impl OrderBus for MemoryBus {
    async fn publish(&self, order: &Order) -> Result<(), BusError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .try_send(Envelope {
                order: order.clone(),
                reply,
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
}
