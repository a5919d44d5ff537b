//! Sales: created through the engine, read from a cache in front of the store. Reading
//! a sale never touches the gate; a sale the gate lost is rebuilt by `recovery.rs` when
//! the gate says so.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

use super::{Engine, EngineError};
use crate::domain::{NewSale, Sale, SaleError, now_millis};

/// A sale with its remaining stock per item.
pub struct SaleState {
    pub sale: Arc<Sale>,
    pub remaining: Vec<u32>,
}

/// The sales this process has seen; an operator's changes made through another gateway
/// arrive with the sweeper (`controls::sync_sales`).
#[derive(Default)]
pub(super) struct SaleCache(RwLock<HashMap<String, Arc<Sale>>>);

impl SaleCache {
    pub(super) fn get(&self, id: &str) -> Option<Arc<Sale>> {
        self.0.read().get(id).cloned()
    }

    pub(super) fn insert(&self, sale: Arc<Sale>) {
        self.0.write().insert(sale.id.clone(), sale);
    }

    pub(super) fn all(&self) -> Vec<Arc<Sale>> {
        self.0.read().values().cloned().collect()
    }
}

impl Engine {
    pub async fn create_sale(&self, new: NewSale) -> Result<SaleState, EngineError> {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let sale = new
            .into_sale(id, now_millis())
            .map_err(|SaleError::Invalid(m)| EngineError::Invalid(m))?;
        self.store.create_sale(&sale).await?;
        self.gate.open_sale(&sale).await?;
        let sale = Arc::new(sale);
        self.sales.insert(sale.clone());
        self.sale_state(&sale.id).await
    }

    /// The sale, from the cache or the store (created by another gateway, or not at all).
    pub async fn sale(&self, id: &str) -> Result<Arc<Sale>, EngineError> {
        if let Some(sale) = self.sales.get(id) {
            return Ok(sale);
        }
        let sale = self
            .breakers
            .store
            .call(self.store.get_sale(id), |_| true)
            .await??
            .ok_or_else(|| EngineError::SaleNotFound(id.to_string()))?;
        let sale = Arc::new(sale);
        self.sales.insert(sale.clone());
        Ok(sale)
    }

    /// The `limit` most recent sales of the store, with their remaining stock (a sale the
    /// gate cannot answer for is left out and logged).
    pub async fn recent_sales(&self, limit: usize) -> Result<Vec<SaleState>, EngineError> {
        let mut sales = self
            .breakers
            .store
            .call(self.store.list_sales(), |_| true)
            .await??;
        sales.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
        sales.truncate(limit);
        let mut states = Vec::with_capacity(sales.len());
        for stored in sales {
            // The cached copy is the one this gateway applied to its gate.
            let sale = match self.sales.get(&stored.id) {
                Some(cached) => cached,
                None => {
                    let sale = Arc::new(stored);
                    self.sales.insert(sale.clone());
                    sale
                }
            };
            match self.gate.remaining(&sale).await {
                Ok(remaining) => states.push(SaleState { sale, remaining }),
                Err(e) => tracing::warn!(sale = %sale.id, error = %e, "sale left out of the list"),
            }
        }
        Ok(states)
    }

    pub async fn sale_state(&self, id: &str) -> Result<SaleState, EngineError> {
        let sale = self.sale(id).await?;
        match self.gate.remaining(&sale).await {
            Ok(remaining) => Ok(SaleState { sale, remaining }),
            Err(e) => Err(self.gate_failed(&sale, e).await),
        }
    }
}
