//! A deployment under test: the processes of one test (gateways, workers, one-shot
//! commands) launched from the real `flashsale` binary on their own store, topics and
//! consumer group.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::Backends;
use super::server::TestServer;
use super::services;

pub const KAFKA_URL: &str = "kafka://127.0.0.1:9092";

/// What the processes of one test share: backends, store, topics, consumer group.
#[derive(Clone)]
pub struct Deployment {
    pub backends: Backends,
    pub dir: Arc<tempfile::TempDir>,
    pub store_url: String,
    /// Unique per test, so that parallel tests never read each other's messages.
    pub topic_prefix: String,
    pub kafka_url: String,
    pub redis_url: String,
    pub extra_args: Vec<String>,
    /// The `flashsale` binary the processes run: this build's, unless a suite pins a
    /// copy (the fault campaign does, so that a rebuild meanwhile cannot change it).
    pub binary: std::path::PathBuf,
}

impl Deployment {
    pub async fn new(backends: Backends, extra_args: &[&str]) -> Deployment {
        let mut dir = tempfile::tempdir().expect("temp dir");
        // FLASHSALE_TEST_KEEP=1 keeps every test's directory (logs) for a post-mortem.
        dir.disable_cleanup(std::env::var_os("FLASHSALE_TEST_KEEP").is_some());
        let dir = Arc::new(dir);
        let store_url = match backends {
            Backends::Embedded => format!("sqlite://{}", dir.path().join("flashsale.db").display()),
            _ => services::fresh_postgres_database().await,
        };
        Deployment {
            backends,
            dir,
            store_url,
            topic_prefix: format!("test-{}.", uuid::Uuid::new_v4().simple()),
            kafka_url: KAFKA_URL.to_string(),
            redis_url: services::redis_url(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            binary: env!("CARGO_BIN_EXE_flashsale").into(),
        }
    }

    fn command(&self, role: &str, log_name: &str) -> Command {
        let (gate, bus) = match self.backends {
            Backends::Embedded => ("local".to_string(), "memory"),
            Backends::RedisMemoryPostgres => (self.redis_url.clone(), "memory"),
            Backends::RedisKafkaPostgres => (self.redis_url.clone(), self.kafka_url.as_str()),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(log_name))
            .expect("log file");
        let mut command = Command::new(&self.binary);
        command
            .args(role.split_whitespace())
            .args(["--store", &self.store_url, "--gate", &gate, "--bus", bus])
            // A settings file in the test's cwd must not leak in.
            .args([
                "--config",
                self.dir.path().join("none.toml").to_str().unwrap(),
            ])
            .current_dir(self.dir.path())
            // FLASHSALE_TEST_LOG=flashsale=debug for a post-mortem (with FLASHSALE_TEST_KEEP).
            .env(
                "RUST_LOG",
                std::env::var("FLASHSALE_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env("FLASHSALE_SWEEP_INTERVAL_MS", "100")
            // A test's store holds the sales the test made, no sample ones.
            .env("FLASHSALE_SAMPLE_SALES", "false")
            // Every test client is 127.0.0.1 and many tests hammer one buyer on purpose:
            // rate limits are off unless a test turns them on (flags win over these).
            .env("FLASHSALE_RATE_PER_BUYER", "off")
            .env("FLASHSALE_RATE_PER_IP", "off")
            // Nor is load shed by default: on a 2-core CI machine running two suites, a
            // debug build can keep a request waiting longer than the production 500 ms.
            .env("FLASHSALE_MAX_QUEUE_TIME_MS", "30000")
            .env("FLASHSALE_MAX_IN_FLIGHT_PURCHASES", "100000")
            // A buyer waits 2 s here, not 1 s: CI runs two suites at once on 2 cores, and
            // a 503 "still on its way, retry" is right but not what these tests look at.
            .env("FLASHSALE_BACKEND_TIMEOUT_MS", "2000")
            // Past the Kafka bus's delivery deadline (2 s + a request of 0.67 s + 1 s).
            .env("FLASHSALE_HOLD_GRACE_MS", "4000")
            .env("FLASHSALE_KAFKA_DELIVERY_TIMEOUT_MS", "2000")
            .env("FLASHSALE_TOPIC_PREFIX", &self.topic_prefix)
            .env(
                "FLASHSALE_WORKER_GROUP",
                format!("{}workers", self.topic_prefix),
            )
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true);
        command
    }

    /// Starts a process and waits for the line that says it is ready; returns the rest.
    async fn launch(&self, mut command: Command, ready: &str, log_name: &str) -> (Child, String) {
        let mut child = command.spawn().expect("spawn flashsale");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let log = self.dir.path().join(log_name);
        let rest = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.expect("read stdout") {
                if let Some(rest) = line.strip_prefix(ready) {
                    return rest.to_string();
                }
            }
            panic!(
                "exited before '{ready}':\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        })
        .await
        .unwrap_or_else(|_| panic!("no '{ready}' within 60 s"));
        // Keep draining stdout so the process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        (child, rest)
    }

    /// Runs a one-shot command (`check`, `dlq`, …) on this deployment's backends.
    pub async fn run(&self, role: &str, args: &[&str]) -> std::process::Output {
        let mut command = self.command(role, &format!("{}.log", role.replace(" ", "-")));
        command
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command.output().await.expect("run flashsale")
    }

    pub async fn gateway(&self) -> TestServer {
        self.gateway_with_env(&[]).await
    }

    /// A gateway with extra environment (e.g. a test failpoint).
    pub async fn gateway_with_env(&self, env: &[(&str, &str)]) -> TestServer {
        let n = uuid::Uuid::new_v4().simple().to_string();
        let log_name = format!("gateway-{n}.log");
        let mut command = self.command("serve", &log_name);
        command.envs(env.iter().copied());
        command
            .args(["--listen", "127.0.0.1:0"])
            .args(&self.extra_args);
        let (child, base) = self
            .launch(command, "flashsale listening on ", &log_name)
            .await;
        let admin_token = self
            .extra_args
            .iter()
            .position(|a| a == "--admin-token")
            .and_then(|i| self.extra_args.get(i + 1).cloned());
        TestServer {
            api: flashsale::client::Client::new(&base).with_admin_token(admin_token),
            base,
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(512)
                .build()
                .unwrap(),
            deployment: self.clone(),
            child: Some(child),
            in_process: None,
            workers: Vec::new(),
        }
    }

    pub async fn worker(&self) -> Child {
        self.worker_with_env(&[]).await
    }

    /// A worker with extra environment.
    pub async fn worker_with_env(&self, env: &[(&str, &str)]) -> Child {
        let log_name = format!("worker-{}.log", uuid::Uuid::new_v4().simple());
        let mut command = self.command("worker", &log_name);
        command.envs(env.iter().copied());
        self.launch(command, "flashsale worker consuming ", &log_name)
            .await
            .0
    }
}
