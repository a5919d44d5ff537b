//! What the Sentinel and Cluster deployments share: `redis-server` processes of the
//! test's own on free loopback ports (never 6379), in a temp dir that keeps their logs
//! (`FLASHSALE_TEST_KEEP=1` keeps it after the test), killed when dropped; and the few
//! node commands the failover tests need.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

pub(crate) struct RedisProcesses {
    pub(crate) dir: tempfile::TempDir,
    /// port → process, for `kill`.
    children: Vec<(u16, Child)>,
}

impl RedisProcesses {
    pub(crate) fn new() -> RedisProcesses {
        let mut dir = tempfile::tempdir().expect("temp dir");
        dir.disable_cleanup(std::env::var_os("FLASHSALE_TEST_KEEP").is_some());
        RedisProcesses {
            dir,
            children: Vec::new(),
        }
    }

    /// A data node on `port`: no persistence, full syncs without delay, `DEBUG` allowed
    /// (to make a replica lag), then `extra` arguments.
    pub(crate) fn spawn_node(&mut self, port: u16, extra: &[&str]) {
        let dir = self.dir.path().to_path_buf();
        self.spawn_with(port, |command| {
            command
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .args(["--repl-diskless-sync-delay", "0"])
                .args(["--enable-debug-command", "local"])
                .arg("--dbfilename")
                .arg(format!("dump-{port}.rdb"))
                .arg("--dir")
                .arg(&dir)
                .args(extra);
        });
    }

    pub(crate) fn spawn_with(&mut self, port: u16, configure: impl FnOnce(&mut Command)) {
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

    /// `kill -9` of one process.
    pub(crate) async fn kill(&mut self, port: u16) {
        if let Some(i) = self.children.iter().position(|(p, _)| *p == port) {
            let (_, mut child) = self.children.remove(i);
            child.kill().await.expect("kill -9");
        }
    }

    /// Polls `check` until it holds; fails the test after 30 s, naming the logs.
    pub(crate) async fn wait_until<F: Future<Output = bool>>(
        &self,
        what: &str,
        mut check: impl FnMut() -> F,
    ) {
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

    /// Waits until `replica` has read everything `master` wrote.
    pub(crate) async fn wait_synced(&self, master: u16, replica: u16) {
        self.wait_until("a replica catches up", || async {
            let offset = |text: String, field: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(field))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            };
            let written = offset(info(master, "replication").await, "master_repl_offset:");
            let read = offset(info(replica, "replication").await, "slave_repl_offset:");
            written.is_some() && written == read
        })
        .await;
    }
}

/// A free loopback port; with `cluster_bus`, one whose port + 10000 is free too.
pub(crate) fn free_port(cluster_bus: bool) -> u16 {
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("a free port")
            .local_addr()
            .expect("its address")
            .port();
        if !cluster_bus
            || (port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok())
        {
            return port;
        }
    }
}

/// A connection to one node.
pub(crate) async fn node(port: u16) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to a redis node of the test")
}

/// A command's text answer from a node, or "" when it does not answer within 500 ms.
pub(crate) async fn text_of(port: u16, command: &redis::Cmd) -> String {
    let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else {
        return String::new();
    };
    let answered = tokio::time::timeout(Duration::from_millis(500), async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        command.query_async::<String>(&mut conn).await
    })
    .await;
    match answered {
        Ok(Ok(text)) => text,
        _ => String::new(),
    }
}

/// `INFO section` of a node, or "" when it does not answer.
pub async fn info(port: u16, section: &str) -> String {
    text_of(port, redis::cmd("INFO").arg(section)).await
}

/// The nodes on `ports` sleep for `for_ms` (`DEBUG SLEEP`: the whole process, its
/// replication stream unread) and `master` drops their links (`CLIENT KILL TYPE
/// replica`): what `master` writes from now on reaches them only when they reconnect.
/// Returns once every sleeper has stopped answering and the links are cut, so that
/// nothing written afterwards can reach them (a fixed delay did not hold on a busy
/// machine), with the time they wake up by.
pub(crate) async fn cut_off_replicas(
    master: u16,
    replicas: &[u16],
    for_ms: u64,
) -> tokio::time::Instant {
    let started = tokio::time::Instant::now();
    for &replica in replicas {
        let mut conn = node(replica).await;
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
    for &replica in replicas {
        // Asleep: a PING on a fresh connection goes unanswered.
        while !text_of(replica, &redis::cmd("PING")).await.is_empty() {
            assert!(
                started.elapsed() < Duration::from_millis(for_ms / 2),
                "replica {replica} did not fall asleep"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let mut conn = node(master).await;
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .query_async(&mut conn)
        .await
        .expect("CLIENT KILL TYPE replica");
    started + Duration::from_millis(for_ms)
}
