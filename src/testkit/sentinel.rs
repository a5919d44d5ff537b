//! A Redis primary, two replicas and three Sentinels, each a `redis-server` process of
//! this test's own on a free loopback port (never 6379), in a temp dir: what a
//! production gate runs on, small. Dropping it kills every process.
//!
//! `scripts/services.sh sentinel` starts the same deployment by hand.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// The name the Sentinels know the master by.
pub const MASTER_NAME: &str = "flashsale";

pub struct SentinelDeployment {
    pub primary: u16,
    pub replicas: Vec<u16>,
    pub sentinels: Vec<u16>,
    dir: tempfile::TempDir,
    /// port → process, for `kill`.
    children: Vec<(u16, Child)>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("its address")
        .port()
}

impl SentinelDeployment {
    /// Starts the primary, the replica (synced) and the Sentinels (each seeing both).
    pub async fn start() -> SentinelDeployment {
        let mut dir = tempfile::tempdir().expect("temp dir");
        dir.disable_cleanup(std::env::var_os("FLASHSALE_TEST_KEEP").is_some());
        let mut deployment = SentinelDeployment {
            primary: free_port(),
            replicas: vec![free_port(), free_port()],
            sentinels: (0..3).map(|_| free_port()).collect(),
            dir,
            children: Vec::new(),
        };
        let primary = deployment.primary;
        deployment.spawn(primary, &[]);
        deployment.wait_for(primary).await;
        for replica in deployment.replicas.clone() {
            deployment.spawn(replica, &["--replicaof", "127.0.0.1", &primary.to_string()]);
            deployment
                .wait_until("a replica is in sync", || async {
                    let info = info(replica, "replication").await;
                    info.contains("master_link_status:up")
                })
                .await;
        }
        for port in deployment.sentinels.clone() {
            let conf = deployment.dir.path().join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {primary} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                     sentinel failover-timeout {MASTER_NAME} 4000\n\
                     sentinel parallel-syncs {MASTER_NAME} 1\n",
                    dir = deployment.dir.path().display()
                ),
            )
            .expect("sentinel config");
            deployment.spawn_with(port, |command| {
                command.arg(&conf).arg("--sentinel");
            });
        }
        for port in deployment.sentinels.clone() {
            deployment.wait_for(port).await;
            deployment
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

    /// A connection to one node of the deployment.
    pub async fn connection(port: u16) -> redis::aio::MultiplexedConnection {
        redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to a node of the deployment")
    }

    /// `kill -9` of one process.
    pub async fn kill(&mut self, port: u16) {
        if let Some(i) = self.children.iter().position(|(p, _)| *p == port) {
            let (_, mut child) = self.children.remove(i);
            child.kill().await.expect("kill -9");
        }
    }

    /// The replicas stop reading their master's stream for `for_ms` (`DEBUG SLEEP`: the
    /// whole process sleeps); returns once the sleeps have begun.
    pub async fn pause_replicas(&self, for_ms: u64) {
        for &replica in &self.replicas {
            let mut conn = SentinelDeployment::connection(replica).await;
            let seconds = format!("{:.3}", for_ms as f64 / 1000.0);
            tokio::spawn(async move {
                let slept: redis::RedisResult<()> = redis::cmd("DEBUG")
                    .arg("SLEEP")
                    .arg(seconds)
                    .query_async(&mut conn)
                    .await;
                // Its answer comes after the client's response timeout: only a refusal
                // (the command disabled) is a failure.
                if let Err(e) = slept
                    && e.kind() != redis::ErrorKind::Io
                    && !e.is_timeout()
                {
                    panic!("DEBUG SLEEP on a replica: {e}");
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    /// Waits until every replica has everything the primary wrote.
    pub async fn wait_replicas_synced(&self) {
        let primary = self.primary;
        for &replica in &self.replicas {
            self.wait_until("a replica catches up", || async {
                let offset = |text: String, field: &str| {
                    text.lines()
                        .find_map(|l| l.strip_prefix(field))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                };
                let written = offset(info(primary, "replication").await, "master_repl_offset:");
                let read = offset(info(replica, "replication").await, "slave_repl_offset:");
                written.is_some() && written == read
            })
            .await;
        }
    }

    /// The primary drops its replicas' connections (`CLIENT KILL TYPE replica`): what it
    /// writes from now on reaches them only when they reconnect.
    pub async fn cut_replication_link(&self) {
        let mut conn = SentinelDeployment::connection(self.primary).await;
        let _: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("replica")
            .query_async(&mut conn)
            .await
            .expect("CLIENT KILL TYPE replica");
    }

    /// A clean failover (`SENTINEL FAILOVER`): the Sentinels promote a replica in sync.
    pub async fn failover(&self) {
        let mut conn = SentinelDeployment::connection(self.sentinels[0]).await;
        let _: String = redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg(MASTER_NAME)
            .query_async(&mut conn)
            .await
            .expect("SENTINEL FAILOVER");
    }

    /// The port of the master the Sentinels name now.
    pub async fn master(&self) -> Option<u16> {
        let mut conn = SentinelDeployment::connection(self.sentinels[0]).await;
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
        self.wait_until("the Sentinels promote a replica", || async {
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

    fn spawn(&mut self, port: u16, extra: &[&str]) {
        let dir = self.dir.path().to_path_buf();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        self.spawn_with(port, move |command| {
            command
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--repl-diskless-sync-delay",
                    "0",
                ])
                // DEBUG SLEEP, to make a replica lag.
                .args(["--enable-debug-command", "local"])
                .arg("--dbfilename")
                .arg(format!("dump-{port}.rdb"))
                .arg("--dir")
                .arg(&dir)
                .args(&extra);
        });
    }

    fn spawn_with(&mut self, port: u16, configure: impl FnOnce(&mut Command)) {
        let log = std::fs::File::create(self.dir.path().join(format!("redis-{port}.log")))
            .expect("redis log");
        let mut command = Command::new("redis-server");
        configure(&mut command);
        let child = command
            .stdout(log)
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn redis-server (apt-get install redis-server)");
        self.children.push((port, child));
    }

    async fn wait_for(&self, port: u16) {
        self.wait_until("a node starts", || async {
            match redis::Client::open(format!("redis://127.0.0.1:{port}")) {
                Ok(client) => match client.get_multiplexed_async_connection().await {
                    Ok(mut conn) => redis::cmd("PING")
                        .query_async::<String>(&mut conn)
                        .await
                        .is_ok(),
                    Err(_) => false,
                },
                Err(_) => false,
            }
        })
        .await;
    }

    async fn wait_until<F: Future<Output = bool>>(&self, what: &str, mut check: impl FnMut() -> F) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !check().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within 30 s (logs in {}; FLASHSALE_TEST_KEEP=1 keeps them)",
                self.dir.path().display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `INFO section` of a node, or "" when it does not answer.
pub async fn info(port: u16, section: &str) -> String {
    let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else {
        return String::new();
    };
    let connected = tokio::time::timeout(Duration::from_millis(500), async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("INFO")
            .arg(section)
            .query_async::<String>(&mut conn)
            .await
    })
    .await;
    match connected {
        Ok(Ok(text)) => text,
        _ => String::new(),
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
