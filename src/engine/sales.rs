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
pub(super) struct SaleCache {
    by_id: RwLock<HashMap<String, Arc<Sale>>>,
    /// The newest sales as the store last listed them, kept `RECENT_FOR`: the buyer
    /// page and `/metrics` ask on every load (issue #21). A sale created here drops it.
    recent: parking_lot::Mutex<Option<Recent>>,
}

/// How long a listing of the newest sales is reused.
const RECENT_FOR: std::time::Duration = std::time::Duration::from_secs(1);

struct Recent {
    at: std::time::Instant,
    limit: usize,
    ids: Vec<String>,
}

impl SaleCache {
    pub(super) fn get(&self, id: &str) -> Option<Arc<Sale>> {
        self.by_id.read().get(id).cloned()
    }

    pub(super) fn insert(&self, sale: Arc<Sale>) {
        self.by_id.write().insert(sale.id.clone(), sale);
    }

    pub(super) fn remove(&self, id: &str) {
        self.by_id.write().remove(id);
    }

    pub(super) fn all(&self) -> Vec<Arc<Sale>> {
        self.by_id.read().values().cloned().collect()
    }

    /// The ids of the `limit` newest sales, if listed less than `RECENT_FOR` ago.
    fn recent(&self, limit: usize) -> Option<Vec<String>> {
        self.recent
            .lock()
            .as_ref()
            .filter(|r| r.limit == limit && r.at.elapsed() < RECENT_FOR)
            .map(|r| r.ids.clone())
    }
}

impl Engine {
    /// The sales with a line that are not finished: a line takes them up at start.
    pub fn queued_sales(&self) -> Vec<Arc<Sale>> {
        let mut sales: Vec<_> = (self.sales.all().into_iter())
            .filter(|sale| sale.queue.is_some() && !self.is_finished(sale))
            .collect();
        sales.sort_by(|a, b| a.id.cmp(&b.id));
        sales
    }

    /// A sale whose line's settings changed in the store (`crate::line`): the cache
    /// takes it.
    pub fn cached_sale_changed(&self, sale: Arc<Sale>) {
        self.sales.insert(sale);
    }

    /// Whether `sale` is over for good (`Sale::finished`, after `retire_after`).
    pub(super) fn is_finished(&self, sale: &Sale) -> bool {
        sale.finished(now_millis(), self.settings.retire_after.as_millis() as i64)
    }

    /// Retires the finished sales this process holds (issue #24): once settled in the
    /// store, their buyers and keys leave the gate, the store's guard and the cache. A
    /// request for one loads it again from the store, and is answered from there.
    pub(super) async fn retire_finished_sales(&self) -> usize {
        let mut retired = 0;
        for sale in self.sales.all() {
            if !self.is_finished(&sale) {
                continue;
            }
            match self.store.retire_sale(&sale.id).await {
                Ok(true) => {}
                Ok(false) => continue, // orders still to settle: the next pass
                Err(e) => {
                    tracing::warn!(sale = %sale.id, error = %e, "sale not retired");
                    continue;
                }
            }
            if let Err(e) = self.gate.retire_sale(&sale).await {
                tracing::warn!(sale = %sale.id, error = %e, "sale not retired from the gate");
                continue;
            }
            self.sales.remove(&sale.id);
            retired += 1;
        }
        retired
    }

    pub async fn create_sale(&self, new: NewSale) -> Result<SaleState, EngineError> {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let sale = new
            .into_sale(id, now_millis())
            .map_err(|SaleError::Invalid(m)| EngineError::Invalid(m))?;
        if sale.queue.is_some() && self.gate.shared() {
            // A line is decided by one process for now: several gateways would each
            // keep their own (issue #25's distributed line is not built yet).
            return Err(EngineError::Invalid(
                "a sale with a `queue` needs the embedded gateway (a local gate) for now".into(),
            ));
        }
        self.store.create_sale(&sale).await?;
        self.gate.open_sale(&sale).await?;
        let sale = Arc::new(sale);
        self.sales.insert(sale.clone());
        *self.sales.recent.lock() = None;
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
        let sales: Vec<Arc<Sale>> = match self.sales.recent(limit) {
            // Every listed sale went into the cache when it was listed.
            Some(ids) => ids.iter().filter_map(|id| self.sales.get(id)).collect(),
            None => {
                let listed = self
                    .breakers
                    .store
                    .call(self.store.recent_sales(limit), |_| true)
                    .await??;
                let sales: Vec<Arc<Sale>> = listed
                    .into_iter()
                    // The cached copy is the one this gateway applied to its gate.
                    .map(|stored| {
                        self.sales.get(&stored.id).unwrap_or_else(|| {
                            let sale = Arc::new(stored);
                            self.sales.insert(sale.clone());
                            sale
                        })
                    })
                    .collect();
                *self.sales.recent.lock() = Some(Recent {
                    at: std::time::Instant::now(),
                    limit,
                    ids: sales.iter().map(|s| s.id.clone()).collect(),
                });
                sales
            }
        };
        let mut states = Vec::with_capacity(sales.len());
        for sale in sales {
            match self.gate.remaining(&sale).await {
                Ok(remaining) => states.push(SaleState { sale, remaining }),
                Err(e) => tracing::warn!(sale = %sale.id, error = %e, "sale left out of the list"),
            }
        }
        Ok(states)
    }

    pub async fn sale_state(&self, id: &str) -> Result<SaleState, EngineError> {
        let sale = self.sale(id).await?;
        // A finished sale may have left the gate: the store's counters are final.
        if self.is_finished(&sale) {
            let sold: std::collections::HashMap<String, i64> = self
                .store
                .sold_counters(&sale.id)
                .await?
                .into_iter()
                .collect();
            let remaining = (sale.items.iter())
                .map(|item| {
                    let sold = sold.get(&item.id).copied().unwrap_or(0).max(0) as u64;
                    (item.stock as u64).saturating_sub(sold) as u32
                })
                .collect();
            return Ok(SaleState { sale, remaining });
        }
        match self.gate.remaining(&sale).await {
            Ok(remaining) => Ok(SaleState { sale, remaining }),
            Err(e) => Err(self.gate_failed(&sale, e).await),
        }
    }
}
