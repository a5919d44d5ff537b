//! Where the Redis gate's commands go: one Redis (`redis://`), the master a set of
//! Sentinels name (`redis-sentinel://`), followed across a failover, or a Redis Cluster
//! (`redis-cluster://`), whose client routes each call by its keys' slot (every key of
//! a sale shares the hash tag `{sale:<id>}`), follows `MOVED` and `ASK`, and learns the
//! new master of a slot after a failover.
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
//!
//! A master with a new replication history (a promoted replica) is **fenced** before
//! the gate decides on it: the first gateway to reach it deletes every sale's keys
//! there (as a `FLUSHALL` of the sales would), so that each sale is rebuilt from the
//! store and the bus (the fenced rebuild, docs/architecture.md §5) instead of selling
//! from a copy that may lack decisions. `WAIT` alone does not close that gap: in a
//! `SENTINEL FAILOVER` the old master keeps taking decisions until it is demoted, and
//! the replica that was not promoted still acknowledges them; the campaign measured 43
//! acknowledged orders then refused by the store. The other gateways wait until the
//! fence is done.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::unavailable;
use crate::gate::GateError;

/// Connections to the master, taken in turn, when writes wait for replicas.
pub(super) const WAITING_POOL: usize = 8;
/// Shortest time between two questions to the Sentinels from one gateway.
const RESOLVE_EVERY: Duration = Duration::from_millis(200);
/// How long a fence may take (deleting every sale's keys) before the gateways waiting
/// for it give up and try again, and how long its mark is kept.
const FENCE_MS: u64 = 60_000;

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
    /// `redis-cluster://[user:password@]host:port[,host:port…]`: any nodes of the
    /// cluster, from which the client learns the rest.
    Cluster {
        nodes: Vec<String>,
        credentials: String,
    },
}

impl RedisTarget {
    pub fn parse(url: &str) -> Result<RedisTarget, String> {
        if url.starts_with("redis://") || url.starts_with("rediss://") {
            return Ok(RedisTarget::Single(url.to_string()));
        }
        if let Some(rest) = url.strip_prefix("redis-cluster://") {
            let (credentials, hosts) = match rest.rsplit_once('@') {
                Some((user, rest)) => (format!("{user}@"), rest),
                None => (String::new(), rest),
            };
            let nodes: Vec<String> = hosts
                .trim_end_matches('/')
                .split(',')
                .map(str::to_string)
                .collect();
            if !nodes.iter().all(|n| is_host_port(n)) {
                return Err(format!(
                    "bad Cluster URL {url:?}: expected \
                     redis-cluster://[user:password@]host:port[,host:port…] (no database: a \
                     cluster has only database 0)"
                ));
            }
            return Ok(RedisTarget::Cluster { nodes, credentials });
        }
        let Some(rest) = url.strip_prefix("redis-sentinel://") else {
            return Err(format!(
                "unsupported Redis URL {url:?} (expected redis://, rediss://, \
                 redis-sentinel:// or redis-cluster://)"
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

fn is_host_port(text: &str) -> bool {
    text.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

/// A connection of the gate: to one Redis, or to a cluster (one per node, inside).
#[derive(Clone)]
pub(super) enum Conn {
    One(ConnectionManager),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::One(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::One(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::One(conn) => conn.get_db(),
            Conn::Cluster(_) => 0,
        }
    }
}

/// The master's connections as of the last resolution (a cluster: the cluster's).
struct Master {
    /// Clients of single nodes, for the restock subscription: the master, or every
    /// node named in a cluster URL (a cluster's `PUBLISH` reaches every node).
    subscribe_to: Vec<redis::Client>,
    pool: Vec<Conn>,
    /// `host:port`, for the logs.
    address: String,
    /// Behind Sentinel: the master's replication id (`master_replid`), new with each
    /// promotion.
    replid: String,
}

pub(super) struct Connection {
    target: RedisTarget,
    deadline: Duration,
    pool_size: usize,
    /// Fence a promoted master before using it (Sentinel); off only in tests that show
    /// what happens without.
    pub(super) fence_promotions: std::sync::atomic::AtomicBool,
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
        if matches!(target, RedisTarget::Sentinel { .. }) {
            // A gateway starting during a failover waits for the fence of the new
            // master another gateway has begun.
            fence_state(&master, deadline, true).await?;
        }
        Ok(Connection {
            target,
            deadline,
            pool_size,
            fence_promotions: std::sync::atomic::AtomicBool::new(true),
            master: RwLock::new(Arc::new(master)),
            next: AtomicUsize::new(0),
            resolving: tokio::sync::Mutex::new(Instant::now()),
        })
    }

    /// A connection to the master (the next one of the pool).
    pub(super) fn get(&self) -> Conn {
        let master = self.master.read();
        let n = self.next.fetch_add(1, Ordering::Relaxed) % master.pool.len();
        master.pool[n].clone()
    }

    /// A client to subscribe with: the master, or, in a cluster, each seed node in turn.
    pub(super) fn client(&self) -> redis::Client {
        let master = self.master.read();
        let n = self.next.fetch_add(1, Ordering::Relaxed) % master.subscribe_to.len();
        master.subscribe_to[n].clone()
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
        let master = match connect_master(&self.target, self.deadline, self.pool_size).await {
            Ok(master) => master,
            Err(e) => {
                tracing::warn!(error = %e, "no Redis master found through the Sentinels");
                return;
            }
        };
        let previous = self.master.read().clone();
        if master.replid == previous.replid {
            return; // the same master: its connections reconnect by themselves
        }
        tracing::warn!(from = %previous.address, to = %master.address, "the Sentinels name a new Redis master: fencing its sales, then following it");
        if self.fence_promotions.load(Ordering::Relaxed)
            && let Err(e) = fence(&master, self.deadline).await
        {
            tracing::warn!(error = %e, "the new Redis master is not fenced yet: not used");
            return;
        }
        *self.master.write() = Arc::new(master);
    }
}

async fn connect_master(
    target: &RedisTarget,
    deadline: Duration,
    pool_size: usize,
) -> Result<Master, GateError> {
    let (url, address) = match target {
        RedisTarget::Cluster { nodes, credentials } => {
            return connect_cluster(nodes, credentials, deadline, pool_size).await;
        }
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
        pool.push(Conn::One(conn));
    }
    if matches!(target, RedisTarget::Sentinel { .. }) {
        // A Sentinel may still name a master it has not yet seen demoted: check.
        let mut conn = pool[0].clone();
        let role: Vec<Value> =
            tokio::time::timeout(deadline, redis::cmd("ROLE").query_async(&mut conn))
                .await
                .map_err(|_| unavailable("Redis did not answer ROLE in time"))?
                .map_err(unavailable)?;
        let is_master = matches!(role.first(), Some(Value::BulkString(r)) if r == b"master");
        if !is_master {
            return Err(unavailable(format!(
                "{address}, named master by the Sentinels, is not one (yet)"
            )));
        }
        let replid = replication_id(&mut conn, deadline).await?;
        return Ok(Master {
            subscribe_to: vec![client],
            pool,
            address,
            replid,
        });
    }
    Ok(Master {
        subscribe_to: vec![client],
        pool,
        address,
        replid: String::new(),
    })
}

/// `master_replid` of `INFO replication`.
async fn replication_id(conn: &mut Conn, deadline: Duration) -> Result<String, GateError> {
    let info: String = tokio::time::timeout(
        deadline,
        redis::cmd("INFO").arg("replication").query_async(conn),
    )
    .await
    .map_err(|_| unavailable("Redis did not answer INFO in time"))?
    .map_err(unavailable)?;
    info.lines()
        .find_map(|l| l.strip_prefix("master_replid:"))
        .map(|id| id.trim().to_string())
        .ok_or_else(|| unavailable("INFO replication without master_replid"))
}

enum FenceState {
    /// No fence was started on this master (the one the deployment started with).
    None,
    Fencing,
    Done,
}

/// The fence mark of `master`; with `wait`, waits while it says "fencing" (until done,
/// or the mark lapses because its fencer died).
async fn fence_state(
    master: &Master,
    deadline: Duration,
    wait: bool,
) -> Result<FenceState, GateError> {
    let mut conn = master.pool[0].clone();
    let mark = format!("flashsale:fence:{}", master.replid);
    let until = Instant::now() + Duration::from_millis(FENCE_MS);
    loop {
        let state: Option<String> = tokio::time::timeout(
            deadline,
            redis::cmd("GET").arg(&mark).query_async(&mut conn),
        )
        .await
        .map_err(|_| unavailable("fence mark: no answer in time"))?
        .map_err(unavailable)?;
        let state = match state.as_deref() {
            None => FenceState::None,
            Some("done") => FenceState::Done,
            Some(_) => FenceState::Fencing,
        };
        if !wait || !matches!(state, FenceState::Fencing) {
            return Ok(state);
        }
        if Instant::now() >= until {
            return Err(unavailable("the fence took too long"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Deletes every sale's keys on a newly promoted master, once for all gateways (the
/// first to get the mark `flashsale:fence:<replid>` does it; the others wait for it to
/// say "done").
async fn fence(master: &Master, deadline: Duration) -> Result<(), GateError> {
    let mut conn = master.pool[0].clone();
    let mark = format!("flashsale:fence:{}", master.replid);
    let bounded = |what: &'static str| {
        move |r: Result<redis::RedisResult<Value>, tokio::time::error::Elapsed>| match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(unavailable(format!("{what}: {e}"))),
            Err(_) => Err(unavailable(format!("{what}: no answer in time"))),
        }
    };
    let taken = bounded("fence mark")(
        tokio::time::timeout(
            deadline,
            redis::cmd("SET")
                .arg(&mark)
                .arg("fencing")
                .arg("NX")
                .arg("PX")
                .arg(FENCE_MS)
                .query_async(&mut conn),
        )
        .await,
    )?;
    if taken == Value::Nil {
        // Another gateway fences: wait for its "done" (a lapsed mark: its fencer died;
        // the next failure tries again).
        return match fence_state(master, deadline, true).await? {
            FenceState::Done => Ok(()),
            _ => Err(unavailable("the fence was abandoned")),
        };
    }
    let mut cursor: u64 = 0;
    let mut deleted = 0usize;
    loop {
        let (next, keys): (u64, Vec<String>) = tokio::time::timeout(
            deadline,
            redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg("{sale:*")
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn),
        )
        .await
        .map_err(|_| unavailable("SCAN: no answer in time"))?
        .map_err(unavailable)?;
        if !keys.is_empty() {
            deleted += keys.len();
            bounded("UNLINK")(
                tokio::time::timeout(
                    deadline,
                    redis::cmd("UNLINK").arg(&keys).query_async(&mut conn),
                )
                .await,
            )?;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    bounded("fence mark")(
        tokio::time::timeout(
            deadline,
            redis::cmd("SET")
                .arg(&mark)
                .arg("done")
                .arg("PX")
                .arg(FENCE_MS * 24 * 60)
                .query_async(&mut conn),
        )
        .await,
    )?;
    tracing::warn!(master = %master.address, keys = deleted, "new Redis master fenced: every sale is rebuilt from the store and the bus");
    Ok(())
}

async fn connect_cluster(
    nodes: &[String],
    credentials: &str,
    deadline: Duration,
    pool_size: usize,
) -> Result<Master, GateError> {
    let urls: Vec<String> = nodes
        .iter()
        .map(|node| format!("redis://{credentials}{node}"))
        .collect();
    let client = ClusterClientBuilder::new(urls.clone())
        .connection_timeout(deadline)
        .response_timeout(deadline)
        // A slot whose master died: its replica takes over within the cluster's node
        // timeout; the buyer's wait is bounded by the gate's deadline anyway.
        .retries(3)
        .build()
        .map_err(unavailable)?;
    let mut pool = Vec::with_capacity(pool_size);
    for _ in 0..pool_size.max(1) {
        let conn = tokio::time::timeout(deadline, client.get_async_connection())
            .await
            .map_err(|_| unavailable("timed out connecting to the Redis Cluster"))?
            .map_err(unavailable)?;
        pool.push(Conn::Cluster(conn));
    }
    let subscribe_to = urls
        .iter()
        .map(|url| redis::Client::open(url.as_str()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(unavailable)?;
    Ok(Master {
        subscribe_to,
        pool,
        address: nodes.join(","),
        replid: String::new(),
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
        assert_eq!(
            RedisTarget::parse("redis-cluster://a:s@h1:7000,h2:7001").unwrap(),
            RedisTarget::Cluster {
                nodes: vec!["h1:7000".into(), "h2:7001".into()],
                credentials: "a:s@".into(),
            }
        );
        for bad in [
            "redis-cluster://h1:7000/2",
            "redis-cluster://",
            "redis-cluster://h1",
        ] {
            assert!(RedisTarget::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
