//! Where the Redis gate's commands go: one Redis (`redis://`), or the master a set of
//! Sentinels name (`redis-sentinel://`), followed across a failover.
//!
//! Commands go over one multiplexed connection, or, when writes wait for replicas, over
//! a few taken in turn: a decision that waits for a replica's acknowledgement (`WAIT`)
//! blocks its connection on the server until then, and must not hold up every other
//! decision of the gateway behind it.
//!
//! In Sentinel mode a failure that says the master is gone or is no longer one (the
//! connection refused or cut, a timeout, `READONLY` from a demoted master) makes the gate
//! ask the Sentinels again and move every connection to the master they name. Until
//! then, calls fail with 503 `unavailable` (a buyer's retry with its key is safe).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::unavailable;
use crate::gate::GateError;

/// Connections to the master, taken in turn, when writes wait for replicas.
pub(super) const WAITING_POOL: usize = 8;
/// Shortest time between two questions to the Sentinels from one gateway.
const RESOLVE_EVERY: Duration = Duration::from_millis(200);

/// What `--gate` names for Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// `redis://` or `rediss://`: one server, as the URL says.
    Single(String),
    /// `redis-sentinel://[user:password@]host:port[,host:port…]/MASTER[/db]`.
    Sentinel {
        sentinels: Vec<String>,
        master: String,
        /// `user:password@` for the data nodes (the Sentinels are asked without it).
        credentials: String,
        db: u32,
    },
}

impl RedisTarget {
    pub fn parse(url: &str) -> Result<RedisTarget, String> {
        if url.starts_with("redis://") || url.starts_with("rediss://") {
            return Ok(RedisTarget::Single(url.to_string()));
        }
        let Some(rest) = url.strip_prefix("redis-sentinel://") else {
            return Err(format!(
                "unsupported Redis URL {url:?} (expected redis://, rediss:// or redis-sentinel://)"
            ));
        };
        let (credentials, rest) = match rest.rsplit_once('@') {
            Some((user, rest)) => (format!("{user}@"), rest),
            None => (String::new(), rest),
        };
        let usage = || {
            format!(
                "bad Sentinel URL {url:?}: expected \
                 redis-sentinel://[user:password@]host:port[,host:port…]/MASTER_NAME[/db]"
            )
        };
        let (hosts, path) = rest.split_once('/').ok_or_else(usage)?;
        let sentinels: Vec<String> = hosts.split(',').map(str::to_string).collect();
        if sentinels.iter().any(|s| {
            s.rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        }) {
            return Err(usage());
        }
        let (master, db) = match path.split_once('/') {
            Some((master, db)) => (master, db.parse::<u32>().map_err(|_| usage())?),
            None => (path, 0),
        };
        if master.is_empty() {
            return Err(usage());
        }
        Ok(RedisTarget::Sentinel {
            sentinels,
            master: master.to_string(),
            credentials,
            db,
        })
    }
}

/// The master's connections as of the last resolution.
struct Master {
    client: redis::Client,
    pool: Vec<ConnectionManager>,
    /// `host:port`, for the logs.
    address: String,
}

pub(super) struct Connection {
    target: RedisTarget,
    deadline: Duration,
    pool_size: usize,
    master: RwLock<Arc<Master>>,
    next: AtomicUsize,
    /// One resolution at a time, and not more often than `RESOLVE_EVERY`.
    resolving: tokio::sync::Mutex<Instant>,
}

impl Connection {
    pub(super) async fn open(
        target: RedisTarget,
        deadline: Duration,
        pool_size: usize,
    ) -> Result<Self, GateError> {
        let master = connect_master(&target, deadline, pool_size).await?;
        Ok(Connection {
            target,
            deadline,
            pool_size,
            master: RwLock::new(Arc::new(master)),
            next: AtomicUsize::new(0),
            resolving: tokio::sync::Mutex::new(Instant::now()),
        })
    }

    /// A connection to the master (the next one of the pool).
    pub(super) fn get(&self) -> ConnectionManager {
        let master = self.master.read();
        let n = self.next.fetch_add(1, Ordering::Relaxed) % master.pool.len();
        master.pool[n].clone()
    }

    /// A client of the master, for a subscription.
    pub(super) fn client(&self) -> redis::Client {
        self.master.read().client.clone()
    }

    /// Called with each failed call's error: in Sentinel mode, an error that may mean a
    /// failover sends the gate to whatever master the Sentinels name now.
    pub(super) async fn failed(&self, error: &GateError) {
        if !matches!(self.target, RedisTarget::Sentinel { .. }) {
            return; // one server: its connection manager reconnects by itself
        }
        let GateError::Unavailable(text) = error else {
            return;
        };
        let may_be_failover = !text.starts_with("unexpected reply")
            && !text.starts_with("corrupt key answer")
            && !text.starts_with("unknown");
        if !may_be_failover {
            return;
        }
        let Ok(mut last) = self.resolving.try_lock() else {
            return; // another call is resolving
        };
        if last.elapsed() < RESOLVE_EVERY {
            return;
        }
        *last = Instant::now();
        match connect_master(&self.target, self.deadline, self.pool_size).await {
            Ok(master) => {
                let previous = self.master.read().address.clone();
                if master.address != previous {
                    tracing::warn!(from = %previous, to = %master.address, "the Sentinels name a new Redis master: the gate follows it");
                    *self.master.write() = Arc::new(master);
                } else if text.contains("READONLY") {
                    // Same address, demoted and promoted again: fresh connections.
                    *self.master.write() = Arc::new(master);
                }
            }
            Err(e) => tracing::warn!(error = %e, "no Redis master found through the Sentinels"),
        }
    }
}

async fn connect_master(
    target: &RedisTarget,
    deadline: Duration,
    pool_size: usize,
) -> Result<Master, GateError> {
    let (url, address) = match target {
        RedisTarget::Single(url) => (url.clone(), url.clone()),
        RedisTarget::Sentinel {
            sentinels,
            master,
            credentials,
            db,
        } => {
            let address = ask_sentinels(sentinels, master, deadline).await?;
            (format!("redis://{credentials}{address}/{db}"), address)
        }
    };
    let client = redis::Client::open(url.as_str()).map_err(unavailable)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(deadline))
        .set_response_timeout(Some(deadline))
        .set_number_of_retries(1);
    let mut pool = Vec::with_capacity(pool_size);
    for _ in 0..pool_size.max(1) {
        let conn = tokio::time::timeout(
            deadline,
            ConnectionManager::new_with_config(client.clone(), config.clone()),
        )
        .await
        .map_err(|_| unavailable("timed out connecting to Redis"))?
        .map_err(unavailable)?;
        pool.push(conn);
    }
    if matches!(target, RedisTarget::Sentinel { .. }) {
        // A Sentinel may still name a master it has not yet seen demoted: check.
        let mut conn = pool[0].clone();
        let role: Vec<redis::Value> =
            tokio::time::timeout(deadline, redis::cmd("ROLE").query_async(&mut conn))
                .await
                .map_err(|_| unavailable("Redis did not answer ROLE in time"))?
                .map_err(unavailable)?;
        let is_master = matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master");
        if !is_master {
            return Err(unavailable(format!(
                "{address}, named master by the Sentinels, is not one (yet)"
            )));
        }
    }
    Ok(Master {
        client,
        pool,
        address,
    })
}

/// Asks each Sentinel in turn for the master's address; the first answer wins.
async fn ask_sentinels(
    sentinels: &[String],
    master: &str,
    deadline: Duration,
) -> Result<String, GateError> {
    let mut last_error = String::from("no Sentinel given");
    for sentinel in sentinels {
        let asked = async {
            let client = redis::Client::open(format!("redis://{sentinel}"))?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(master)
                .query_async::<Option<(String, u16)>>(&mut conn)
                .await
        };
        match tokio::time::timeout(deadline, asked).await {
            Ok(Ok(Some((host, port)))) => return Ok(format!("{host}:{port}")),
            Ok(Ok(None)) => last_error = format!("Sentinel {sentinel} knows no master {master:?}"),
            Ok(Err(e)) => last_error = format!("Sentinel {sentinel}: {e}"),
            Err(_) => last_error = format!("Sentinel {sentinel} did not answer in time"),
        }
    }
    Err(unavailable(last_error))
}

#[cfg(test)]
mod tests {
    use super::RedisTarget;

    #[test]
    fn sentinel_urls_name_the_sentinels_the_master_and_the_database() {
        assert_eq!(
            RedisTarget::parse("redis-sentinel://10.0.0.1:26379,10.0.0.2:26380/shop").unwrap(),
            RedisTarget::Sentinel {
                sentinels: vec!["10.0.0.1:26379".into(), "10.0.0.2:26380".into()],
                master: "shop".into(),
                credentials: String::new(),
                db: 0,
            }
        );
        assert_eq!(
            RedisTarget::parse("redis-sentinel://app:s3cret@h:26379/shop/2").unwrap(),
            RedisTarget::Sentinel {
                sentinels: vec!["h:26379".into()],
                master: "shop".into(),
                credentials: "app:s3cret@".into(),
                db: 2,
            }
        );
        for bad in [
            "redis-sentinel://h:26379",
            "redis-sentinel://h:26379/",
            "redis-sentinel://h/shop",
            "redis-sentinel://h:port/shop",
            "redis-sentinel://h:1/shop/x",
            "memcached://h:1",
        ] {
            assert!(RedisTarget::parse(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(
            RedisTarget::parse("redis://h:6379/1").unwrap(),
            RedisTarget::Single("redis://h:6379/1".into())
        );
    }
}
