//! A Redis Cluster of three masters with one or two replicas each, `redis-server` processes of this
//! test's own on free loopback ports (never 6379), in a temp dir. Dropping it kills every
//! process.
//!
//! `scripts/services.sh cluster` starts the same deployment by hand.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::sentinel::info;

pub struct ClusterDeployment {
    pub ports: Vec<u16>,
    dir: tempfile::TempDir,
    children: Vec<(u16, Child)>,
}

fn free_port() -> u16 {
    // A cluster node also listens on its port + 10000 (the cluster bus).
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("a free port")
            .local_addr()
            .expect("its address")
            .port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

impl ClusterDeployment {
    /// Starts six nodes and joins them: three masters, each with one replica.
    pub async fn start() -> ClusterDeployment {
        ClusterDeployment::start_with(1).await
    }

    /// Three masters, each with `replicas` replicas (with two, a master's death leaves
    /// its promoted replica one to acknowledge writes).
    pub async fn start_with(replicas: usize) -> ClusterDeployment {
        let mut dir = tempfile::tempdir().expect("temp dir");
        dir.disable_cleanup(std::env::var_os("FLASHSALE_TEST_KEEP").is_some());
        let mut cluster = ClusterDeployment {
            ports: (0..3 * (1 + replicas)).map(|_| free_port()).collect(),
            dir,
            children: Vec::new(),
        };
        for port in cluster.ports.clone() {
            cluster.spawn(port);
        }
        for port in cluster.ports.clone() {
            cluster
                .wait_until("a node starts", || async {
                    !info(port, "server").await.is_empty()
                })
                .await;
        }
        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&nodes)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .await
            .expect("redis-cli --cluster create");
        assert!(
            created.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        for port in cluster.ports.clone() {
            cluster
                .wait_until("the cluster is ok on every node", || async {
                    info_cluster(port).await.contains("cluster_state:ok")
                })
                .await;
        }
        cluster
            .wait_until("every master has its replica, in sync", || async {
                let mut synced = 0;
                for &port in &cluster.ports {
                    let replication = info(port, "replication").await;
                    if replication.contains("role:slave")
                        && replication.contains("master_link_status:up")
                    {
                        synced += 1;
                    }
                }
                synced == 3 * replicas
            })
            .await;
        // And each master counts its replica for `WAIT` (an acknowledgement came back).
        for port in cluster.ports.clone() {
            if !info(port, "replication").await.contains("role:master") {
                continue;
            }
            cluster
                .wait_until("every master counts its replica", || async {
                    let mut conn = match redis::Client::open(format!("redis://127.0.0.1:{port}")) {
                        Ok(client) => match client.get_multiplexed_async_connection().await {
                            Ok(conn) => conn,
                            Err(_) => return false,
                        },
                        Err(_) => return false,
                    };
                    redis::cmd("WAIT")
                        .arg(1)
                        .arg(100)
                        .query_async::<i64>(&mut conn)
                        .await
                        .is_ok_and(|n| n >= 1)
                })
                .await;
        }
        cluster
    }

    /// `redis-cluster://` naming every node.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis-cluster://{}", nodes.join(","))
    }

    /// `kill -9` of one node.
    pub async fn kill(&mut self, port: u16) {
        if let Some(i) = self.children.iter().position(|(p, _)| *p == port) {
            let (_, mut child) = self.children.remove(i);
            child.kill().await.expect("kill -9");
        }
    }

    /// The port of the master serving `key`'s slot now, as the first live node says.
    pub async fn master_of(&self, key: &str) -> Option<u16> {
        for &port in &self.ports {
            let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else {
                continue;
            };
            let Ok(Ok(mut conn)) = tokio::time::timeout(
                Duration::from_millis(500),
                client.get_multiplexed_async_connection(),
            )
            .await
            else {
                continue;
            };
            let slot: redis::RedisResult<u16> = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(key)
                .query_async(&mut conn)
                .await;
            let Ok(slot) = slot else { continue };
            // "<id> <host:port@bus> <flags> <master> … <link> <slot ranges…>"
            let nodes: redis::RedisResult<String> = redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async(&mut conn)
                .await;
            let Ok(nodes) = nodes else { continue };
            return nodes.lines().find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let flags = fields.get(2)?;
                if !flags.contains("master") || flags.contains("fail") {
                    return None;
                }
                let serves = fields.iter().skip(8).any(|range| {
                    let (from, to) = range.split_once('-').unwrap_or((range, range));
                    match (from.parse::<u16>(), to.parse::<u16>()) {
                        (Ok(from), Ok(to)) => (from..=to).contains(&slot),
                        _ => false,
                    }
                });
                let address = fields.get(1)?.split('@').next()?;
                if !serves {
                    return None;
                }
                address.rsplit_once(':')?.1.parse().ok()
            });
        }
        None
    }

    fn spawn(&mut self, port: u16) {
        let log = std::fs::File::create(self.dir.path().join(format!("redis-{port}.log")))
            .expect("redis log");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--repl-diskless-sync-delay",
                "0",
            ])
            .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
            .arg("--cluster-config-file")
            .arg(format!("nodes-{port}.conf"))
            .arg("--dbfilename")
            .arg(format!("dump-{port}.rdb"))
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--enable-debug-command", "local"])
            .stdout(log)
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn redis-server (apt-get install redis-server)");
        self.children.push((port, child));
    }

    async fn wait_until<F: Future<Output = bool>>(&self, what: &str, mut check: impl FnMut() -> F) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !check().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within 30 s (logs in {}; FLASHSALE_TEST_KEEP=1 keeps them)",
                self.dir.path().display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `CLUSTER INFO` of a node, or "" when it does not answer.
pub async fn info_cluster(port: u16) -> String {
    let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else {
        return String::new();
    };
    let answered = tokio::time::timeout(Duration::from_millis(500), async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async::<String>(&mut conn)
            .await
    })
    .await;
    match answered {
        Ok(Ok(text)) => text,
        _ => String::new(),
    }
}
