//! A release `flashsale serve` in a process of its own, for the benchmarks that read its
//! memory (`bench_memory`, `bench_soak`): on a free loopback port, a SQLite store in a
//! temp dir, no sample sales, the rate limits at their defaults counting every request
//! (each from one of 65,536 addresses, `X-Forwarded-For` trusted from loopback).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

pub struct Serve {
    pub process: Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    _dir: tempfile::TempDir,
}

impl Serve {
    pub async fn start() -> anyhow::Result<Serve> {
        let exe = std::env::current_exe()?;
        let binary = exe
            .parent()
            .and_then(|examples| examples.parent())
            .map(|dir| dir.join("flashsale"))
            .filter(|path| path.exists())
            .context("target/release/flashsale is missing: run `cargo build --release` first")?;
        let dir = tempfile::tempdir()?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        drop(listener);
        let process = Command::new(&binary)
            .args(["serve", "--listen", &addr.to_string()])
            .args(["--trusted-proxy", "127.0.0.1"])
            .env("FLASHSALE_SAMPLE_SALES", "false")
            .arg("--store")
            .arg(format!(
                "sqlite://{}",
                dir.path().join("serve.db").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let base = format!("http://{addr}");
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while client.get(format!("{base}/healthz")).send().await.is_err() {
            anyhow::ensure!(Instant::now() < deadline, "serve did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Serve {
            process,
            base,
            _dir: dir,
        })
    }

    /// Resident memory now, in kB.
    pub fn rss_kb(&self) -> anyhow::Result<u64> {
        self.status_kb("VmRSS:")
    }

    /// A field of `/proc/PID/status`, in kB (`VmHWM:` is the peak RSS).
    pub fn status_kb(&self, field: &str) -> anyhow::Result<u64> {
        let pid = self.process.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {field} in /proc/{pid}/status"))
    }

    pub fn stop(mut self) -> anyhow::Result<()> {
        self.process.kill()?;
        self.process.wait()?;
        Ok(())
    }
}
