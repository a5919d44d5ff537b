//! A tansu broker of a test's own, for the suites that stop and restart the broker.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::process::{Child, Command};

/// A tansu broker of a test's own (for tests that stop the broker), on a free port with
/// durable SQLite storage, so that it can be stopped and started again.
pub struct Broker {
    pub port: u16,
    dir: Arc<tempfile::TempDir>,
    child: Option<Child>,
}

impl Broker {
    pub async fn start() -> Broker {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut dir = tempfile::tempdir().unwrap();
        // FLASHSALE_TEST_KEEP=1 keeps the broker's log too.
        dir.disable_cleanup(std::env::var_os("FLASHSALE_TEST_KEEP").is_some());
        let mut broker = Broker {
            port,
            dir: Arc::new(dir),
            child: None,
        };
        broker.resume().await;
        broker
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("broker.log")
    }

    pub fn url(&self) -> String {
        format!("kafka://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same storage.
    pub async fn resume(&mut self) {
        let tansu = which_tansu();
        std::fs::write(self.dir.path().join(".env"), "").unwrap();
        let listener = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("broker.log"))
            .unwrap();
        let child = Command::new(tansu)
            .args([
                "broker",
                "--listener-url",
                &listener,
                "--advertised-listener-url",
                &listener,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(self.dir.path())
            // tansu logs to stdout (RUST_LOG=tansu_broker=info for a post-mortem).
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn tansu");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "tansu did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill broker");
        }
    }
}

fn which_tansu() -> PathBuf {
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cargo"));
    let installed = home.join("bin/tansu");
    if installed.exists() {
        installed
    } else {
        PathBuf::from("tansu")
    }
}
