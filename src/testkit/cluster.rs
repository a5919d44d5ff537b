//! A Redis Cluster of three masters with one or two replicas each, `redis-server` processes of this
//! test's own on free loopback ports (never 6379), in a temp dir. Dropping it kills every
//! process.
//!
//! `scripts/services.sh cluster` starts the same deployment by hand.

use std::time::Duration;

use tokio::process::Command;

use super::redis_nodes::{RedisProcesses, cut_off_replicas, free_port, info, node, text_of};

pub struct ClusterDeployment {
    pub ports: Vec<u16>,
    processes: RedisProcesses,
}

impl ClusterDeployment {
    /// Starts six nodes and joins them: three masters, each with one replica.
    pub async fn start() -> ClusterDeployment {
        ClusterDeployment::start_with(1).await
    }

    /// Three masters, each with `replicas` replicas (with two, a master's death leaves
    /// its promoted replica one to acknowledge writes).
    pub async fn start_with(replicas: usize) -> ClusterDeployment {
        let mut cluster = ClusterDeployment {
            // A cluster node also listens on its port + 10000 (the cluster bus).
            ports: (0..3 * (1 + replicas)).map(|_| free_port(true)).collect(),
            processes: RedisProcesses::new(),
        };
        for port in cluster.ports.clone() {
            let config = format!("nodes-{port}.conf");
            cluster.processes.spawn_node(
                port,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-config-file",
                    &config,
                    // A master whose replicas are all cut off (the failover tests) would
                    // otherwise take over a replica of another master, which syncs in
                    // full and is promoted with every decision: the lag the test makes
                    // would vanish.
                    "--cluster-allow-replica-migration",
                    "no",
                ],
            );
        }
        for port in cluster.ports.clone() {
            cluster
                .processes
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
                .processes
                .wait_until("the cluster is ok on every node", || async {
                    info_cluster(port).await.contains("cluster_state:ok")
                })
                .await;
        }
        cluster
            .processes
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
                .processes
                .wait_until("every master counts its replica", || async {
                    redis::cmd("WAIT")
                        .arg(1)
                        .arg(100)
                        .query_async::<i64>(&mut node(port).await)
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
        self.processes.kill(port).await;
    }

    /// Moves every slot of the master on `from` to the master on `to` with
    /// `redis-cli --cluster reshard` (keys migrated live, one slot after the other);
    /// returns what redis-cli printed last.
    pub async fn reshard(&self, from: u16, to: u16) -> String {
        let id = |port: u16| async move {
            let mut conn = node(port).await;
            redis::cmd("CLUSTER")
                .arg("MYID")
                .query_async::<String>(&mut conn)
                .await
                .expect("CLUSTER MYID")
        };
        let (from_id, to_id) = (id(from).await, id(to).await);
        let slots = self.slot_count(from).await;
        let resharded = Command::new("redis-cli")
            .args(["--cluster", "reshard", &format!("127.0.0.1:{from}")])
            .args(["--cluster-from", &from_id, "--cluster-to", &to_id])
            .args(["--cluster-slots", &slots.to_string(), "--cluster-yes"])
            .output()
            .await
            .expect("redis-cli --cluster reshard");
        let out = String::from_utf8_lossy(&resharded.stdout).into_owned();
        assert!(
            resharded.status.success(),
            "redis-cli --cluster reshard: {}",
            out.lines().rev().take(5).collect::<Vec<_>>().join(" / ")
        );
        out.lines().last().unwrap_or_default().to_string()
    }

    /// The replicas of the master on `port`: those its `CLUSTER NODES` names and those
    /// connected to it now (its `INFO replication`), which a test must both reach.
    pub async fn replicas_of(&self, master: u16) -> Vec<u16> {
        let mut conn = node(master).await;
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut conn)
            .await
            .expect("CLUSTER NODES");
        let lines: Vec<Vec<&str>> = nodes
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        let id = lines
            .iter()
            .find(|f| f.get(2).is_some_and(|flags| flags.contains("myself")))
            .and_then(|f| f.first().copied())
            .expect("the node's own line");
        let named = lines
            .iter()
            .filter(|f| f.get(3) == Some(&id))
            .filter_map(|f| {
                f.get(1)?
                    .split('@')
                    .next()?
                    .rsplit_once(':')?
                    .1
                    .parse()
                    .ok()
            });
        // "slave0:ip=127.0.0.1,port=7004,state=online,…"
        let replication = info(master, "replication").await;
        let connected = replication
            .lines()
            .filter(|l| l.starts_with("slave") && l.contains("port="))
            .filter_map(|l| l.split("port=").nth(1)?.split(',').next()?.parse().ok());
        let mut replicas: Vec<u16> = named.chain(connected).collect();
        replicas.sort_unstable();
        replicas.dedup();
        replicas
    }

    /// Waits until every replica of `master` has everything it wrote.
    pub async fn wait_replicas_synced(&self, master: u16) {
        for replica in self.replicas_of(master).await {
            self.processes.wait_synced(master, replica).await;
        }
    }

    /// The replicas of `master` sleep for `for_ms` (`DEBUG SLEEP`) and `master` drops
    /// their connections: what it writes from now on reaches them only when they
    /// reconnect. Returns once that holds, with the time they wake up by.
    pub async fn cut_off_replicas_of(&self, master: u16, for_ms: u64) -> tokio::time::Instant {
        cut_off_replicas(master, &self.replicas_of(master).await, for_ms).await
    }

    /// How many slots the node on `port` serves, as it says itself.
    async fn slot_count(&self, port: u16) -> u32 {
        let mut conn = node(port).await;
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut conn)
            .await
            .expect("CLUSTER NODES");
        let myself = nodes
            .lines()
            .find(|l| {
                l.split_whitespace()
                    .nth(2)
                    .is_some_and(|f| f.contains("myself"))
            })
            .unwrap_or_default();
        myself
            .split_whitespace()
            .skip(8)
            .filter_map(|range| {
                let (from, to) = range.split_once('-').unwrap_or((range, range));
                Some(to.parse::<u32>().ok()? - from.parse::<u32>().ok()? + 1)
            })
            .sum()
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
}

/// `CLUSTER INFO` of a node, or "" when it does not answer.
pub async fn info_cluster(port: u16) -> String {
    text_of(port, redis::cmd("CLUSTER").arg("INFO")).await
}
