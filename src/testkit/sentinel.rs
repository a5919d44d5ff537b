//! A Redis primary, two replicas and three Sentinels, each a `redis-server` process of
//! this test's own on a free loopback port (never 6379), in a temp dir: what a
//! production gate runs on, small. Dropping it kills every process.
//!
//! `scripts/services.sh sentinel` starts the same deployment by hand.

use super::redis_nodes::{RedisProcesses, cut_off_replicas, free_port, node, text_of};

pub use super::redis_nodes::info;

/// The name the Sentinels know the master by.
pub const MASTER_NAME: &str = "flashsale";

pub struct SentinelDeployment {
    pub primary: u16,
    pub replicas: Vec<u16>,
    pub sentinels: Vec<u16>,
    processes: RedisProcesses,
}

impl SentinelDeployment {
    /// Starts the primary, the replica (synced) and the Sentinels (each seeing both).
    pub async fn start() -> SentinelDeployment {
        let mut deployment = SentinelDeployment {
            primary: free_port(false),
            replicas: vec![free_port(false), free_port(false)],
            sentinels: (0..3).map(|_| free_port(false)).collect(),
            processes: RedisProcesses::new(),
        };
        let primary = deployment.primary;
        deployment.processes.spawn_node(primary, &[]);
        deployment.wait_for(primary).await;
        for replica in deployment.replicas.clone() {
            deployment
                .processes
                .spawn_node(replica, &["--replicaof", "127.0.0.1", &primary.to_string()]);
            deployment
                .processes
                .wait_until("a replica is in sync", || async {
                    let info = info(replica, "replication").await;
                    info.contains("master_link_status:up")
                })
                .await;
        }
        for port in deployment.sentinels.clone() {
            let dir = deployment.processes.dir.path().to_path_buf();
            let conf = dir.join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {primary} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                     sentinel failover-timeout {MASTER_NAME} 4000\n\
                     sentinel parallel-syncs {MASTER_NAME} 1\n",
                    dir = dir.display()
                ),
            )
            .expect("sentinel config");
            deployment.processes.spawn_with(port, |command| {
                command.arg(&conf).arg("--sentinel");
            });
        }
        for port in deployment.sentinels.clone() {
            deployment.wait_for(port).await;
            deployment
                .processes
                .wait_until(
                    "every Sentinel sees the replicas and the others",
                    || async {
                        let replicas = sentinel_count(port, "replicas").await;
                        let others = sentinel_count(port, "sentinels").await;
                        replicas == 2 && others == 2
                    },
                )
                .await;
        }
        deployment
    }

    /// `redis-sentinel://…/flashsale`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis-sentinel://{}/{MASTER_NAME}", hosts.join(","))
    }

    /// `kill -9` of one process.
    pub async fn kill(&mut self, port: u16) {
        self.processes.kill(port).await;
    }

    /// The replicas sleep for `for_ms` and the primary drops their links: what it writes
    /// from now on reaches them only when they reconnect. Returns once that holds, with
    /// the time they wake up by.
    pub async fn cut_off_replicas(&self, for_ms: u64) -> tokio::time::Instant {
        cut_off_replicas(self.primary, &self.replicas, for_ms).await
    }

    /// Waits until every replica has everything the primary wrote.
    pub async fn wait_replicas_synced(&self) {
        let primary = self.primary;
        for &replica in &self.replicas {
            self.processes.wait_synced(primary, replica).await;
        }
    }

    /// A clean failover (`SENTINEL FAILOVER`): the Sentinels promote a replica in sync.
    pub async fn failover(&self) {
        let mut conn = node(self.sentinels[0]).await;
        let _: String = redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg(MASTER_NAME)
            .query_async(&mut conn)
            .await
            .expect("SENTINEL FAILOVER");
    }

    /// The port of the master the Sentinels name now.
    pub async fn master(&self) -> Option<u16> {
        let mut conn = node(self.sentinels[0]).await;
        let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(MASTER_NAME)
            .query_async(&mut conn)
            .await
            .ok()?;
        addr.map(|(_, port)| port)
    }

    /// Waits until the Sentinels name a replica the master and it says it is one;
    /// returns its port.
    pub async fn wait_for_failover(&self) -> u16 {
        self.processes
            .wait_until("the Sentinels promote a replica", || async {
                match self.master().await {
                    Some(port) if self.replicas.contains(&port) => {
                        info(port, "replication").await.contains("role:master")
                    }
                    _ => false,
                }
            })
            .await;
        self.master().await.expect("a master")
    }

    async fn wait_for(&self, port: u16) {
        self.processes
            .wait_until("a node starts", || async {
                text_of(port, &redis::cmd("PING")).await == "PONG"
            })
            .await;
    }
}

/// How many replicas or other Sentinels a Sentinel knows of.
async fn sentinel_count(port: u16, what: &str) -> usize {
    let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else {
        return 0;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return 0;
    };
    redis::cmd("SENTINEL")
        .arg(what)
        .arg(MASTER_NAME)
        .query_async::<Vec<redis::Value>>(&mut conn)
        .await
        .map(|v| v.len())
        .unwrap_or(0)
}
