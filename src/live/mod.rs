//! Live views of sales for many watchers (the page's stock counter and seat map, the
//! dashboard): one poller per watched sale reads the sale and its remaining stock from
//! the engine every `every` and publishes a new frame only when something changed. So
//! updates are coalesced to at most one per `every` whatever the purchase rate, the
//! purchase path does no work for watchers, and in distributed mode a gateway's
//! watchers see what the other gateways sold (the poll reads the shared gate). The
//! poller stops once its sale has had no watcher for a while.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::domain::{Sale, SaleStatus, now_millis};
use crate::engine::{Engine, EngineError, SaleState};

/// How long a feed with no watcher lives on (a page reloading reconnects within it).
const IDLE_LINGER: Duration = Duration::from_secs(5);

/// One state of a sale as watchers see it.
#[derive(Debug, Clone, PartialEq)]
pub struct SaleFrame {
    /// `<feed>-<n>`: the SSE event id. A watcher reconnecting with the id of the frame it
    /// has gets nothing until the next change; any other id gets the current frame.
    pub id: String,
    pub sale: Arc<Sale>,
    pub status: SaleStatus,
    pub remaining: Vec<u32>,
    /// The id of the frame this one followed, if any.
    pub previous_id: Option<String>,
    /// The events' data as the HTTP layer writes them, serialized once per frame by the
    /// first watcher that needs it and shared by the others (with 5,000 watchers of a
    /// sale, each change was serialized 5,000 times): the whole sale, and the change from
    /// `previous_id` (a watcher that missed frames gets its own).
    pub whole_data: OnceLock<String>,
    pub change_data: OnceLock<String>,
}

impl SaleFrame {
    pub fn total_remaining(&self) -> u64 {
        self.remaining.iter().map(|&r| r as u64).sum()
    }

    /// Whether anything a watcher sees differs (the id aside).
    fn differs(&self, other: &SaleFrame) -> bool {
        self.status != other.status || self.remaining != other.remaining || self.sale != other.sale
    }
}

pub type FrameReceiver = watch::Receiver<Arc<SaleFrame>>;

pub struct SaleFeeds {
    engine: Arc<Engine>,
    every: Duration,
    /// Cancelled when the server shuts down: watchers' streams end, so that graceful
    /// shutdown does not wait for them forever.
    stop: CancellationToken,
    feeds: Mutex<HashMap<String, Arc<watch::Sender<Arc<SaleFrame>>>>>,
}

impl SaleFeeds {
    pub fn new(engine: Arc<Engine>, every: Duration, stop: CancellationToken) -> Arc<SaleFeeds> {
        Arc::new(SaleFeeds {
            engine,
            every,
            stop,
            feeds: Mutex::default(),
        })
    }

    /// Watches a sale: the receiver holds its current frame at once.
    pub async fn watch(self: &Arc<Self>, sale_id: &str) -> Result<FrameReceiver, EngineError> {
        if let Some(feed) = self.feeds.lock().get(sale_id) {
            return Ok(feed.subscribe());
        }
        let state = self.engine.sale_state(sale_id).await?;
        let feed_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let first = Arc::new(frame(&feed_id, 0, state));
        let mut feeds = self.feeds.lock();
        // Another watcher may have started it meanwhile.
        if let Some(feed) = feeds.get(sale_id) {
            return Ok(feed.subscribe());
        }
        let (sender, receiver) = watch::channel(first);
        let sender = Arc::new(sender);
        feeds.insert(sale_id.to_string(), sender.clone());
        tokio::spawn(self.clone().poll(sale_id.to_string(), feed_id, sender));
        Ok(receiver)
    }

    /// Cancelled at shutdown.
    pub fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// How many sales are watched from this process.
    pub fn watched(&self) -> usize {
        self.feeds.lock().len()
    }

    async fn poll(
        self: Arc<Self>,
        sale_id: String,
        feed_id: String,
        sender: Arc<watch::Sender<Arc<SaleFrame>>>,
    ) {
        let mut n = 0u64;
        let mut idle_since = None;
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.stop.cancelled() => return,
            }
            if sender.receiver_count() == 0 {
                let since = *idle_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= IDLE_LINGER {
                    let mut feeds = self.feeds.lock();
                    // A watcher may have come in since the count was read.
                    if sender.receiver_count() == 0 {
                        feeds.remove(&sale_id);
                        return;
                    }
                }
                continue;
            }
            idle_since = None;
            let state = match self.engine.sale_state(&sale_id).await {
                Ok(state) => state,
                Err(e) => {
                    // Watchers keep the last frame; the next poll tries again.
                    tracing::debug!(sale = %sale_id, error = %e, "live frame not read");
                    continue;
                }
            };
            let next = frame(&feed_id, n + 1, state);
            if next.differs(&sender.borrow()) {
                n += 1;
                sender.send_replace(Arc::new(next));
            }
        }
    }
}

/// Frame `n` of a feed (frame `n - 1` is the one it follows).
pub fn frame(feed_id: &str, n: u64, state: SaleState) -> SaleFrame {
    let remaining_total = state.remaining.iter().map(|&r| r as u64).sum();
    SaleFrame {
        id: format!("{feed_id}-{n}"),
        status: state.sale.status(now_millis(), remaining_total),
        sale: state.sale,
        remaining: state.remaining,
        previous_id: n
            .checked_sub(1)
            .map(|previous| format!("{feed_id}-{previous}")),
        whole_data: OnceLock::new(),
        change_data: OnceLock::new(),
    }
}
