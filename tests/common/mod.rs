//! The one test helper: spawns the real `flashsale` binary (`serve`, and `worker` when
//! the bus is Kafka) on port 0 with its own store, and talks HTTP to it. Every suite
//! uses it, for every backend combination.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Which engines back the server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backends {
    /// local gate, in-process bus, SQLite: nothing outside the process.
    Embedded,
    /// Redis gate, in-process bus, PostgreSQL.
    RedisMemoryPostgres,
    /// Redis gate, Kafka bus (with a `flashsale worker`), PostgreSQL.
    RedisKafkaPostgres,
}

impl Backends {
    /// Whether a 202 means "in the store" (in-process bus) rather than "in the log".
    pub fn acks_after_store(self) -> bool {
        self != Backends::RedisKafkaPostgres
    }
}

/// Runs async test functions once per backend combination: embedded always; the others
/// are ignored in a plain `cargo test` (they say what they need) and run by `.ci/run`.
/// `backend_tests!(memory_bus: …)` leaves out the Kafka bus, `distributed: …` the
/// embedded engine, `kafka: …` runs only on the Kafka bus.
#[macro_export]
macro_rules! backend_tests {
    (distributed: $($test:ident),* $(,)?) => {
        $( $crate::backend_tests!(@test [redis_memory_postgres redis_kafka_postgres] $test); )*
    };
    (kafka: $($test:ident),* $(,)?) => {
        $( $crate::backend_tests!(@test [redis_kafka_postgres] $test); )*
    };
    (memory_bus: $($test:ident),* $(,)?) => {
        $( $crate::backend_tests!(@test [embedded redis_memory_postgres] $test); )*
    };
    ($($test:ident),* $(,)?) => {
        $( $crate::backend_tests!(@test [embedded redis_memory_postgres redis_kafka_postgres] $test); )*
    };
    (@test [$($mode:ident)*] $test:ident) => {
        mod $test {
            $( $crate::backend_tests!(@mode $mode $test); )*
        }
    };
    (@mode embedded $test:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn embedded() {
            super::$test($crate::common::Backends::Embedded).await
        }
    };
    (@mode redis_memory_postgres $test:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        #[ignore = "needs Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 (scripts/services.sh up)"]
        async fn redis_memory_postgres() {
            super::$test($crate::common::Backends::RedisMemoryPostgres).await
        }
    };
    (@mode redis_kafka_postgres $test:ident) => {
        #[cfg(feature = "kafka")]
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        #[ignore = "needs Redis, PostgreSQL and a Kafka broker on 127.0.0.1:9092 (scripts/services.sh up)"]
        async fn redis_kafka_postgres() {
            super::$test($crate::common::Backends::RedisKafkaPostgres).await
        }
    };
}

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
}

impl Deployment {
    pub async fn new(backends: Backends, extra_args: &[&str]) -> Deployment {
        let mut dir = tempfile::tempdir().expect("temp dir");
        // FLASHSALE_TEST_KEEP=1 keeps every test's directory (logs) for a post-mortem.
        dir.disable_cleanup(std::env::var_os("FLASHSALE_TEST_KEEP").is_some());
        let dir = Arc::new(dir);
        let store_url = match backends {
            Backends::Embedded => format!("sqlite://{}", dir.path().join("flashsale.db").display()),
            _ => flashsale::testing::fresh_postgres_database().await,
        };
        Deployment {
            backends,
            dir,
            store_url,
            topic_prefix: format!("test-{}.", uuid::Uuid::new_v4().simple()),
            kafka_url: KAFKA_URL.to_string(),
            redis_url: flashsale::testing::redis_url(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
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
        let mut command = Command::new(env!("CARGO_BIN_EXE_flashsale"));
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
            .env("FLASHSALE_HOLD_GRACE_MS", "1000")
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
            base,
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(512)
                .build()
                .unwrap(),
            admin_token,
            deployment: self.clone(),
            child,
            workers: Vec::new(),
        }
    }

    pub async fn worker(&self) -> Child {
        let log_name = format!("worker-{}.log", uuid::Uuid::new_v4().simple());
        let command = self.command("worker", &log_name);
        self.launch(command, "flashsale worker consuming ", &log_name)
            .await
            .0
    }
}

pub struct TestServer {
    pub base: String,
    pub client: reqwest::Client,
    pub admin_token: Option<String>,
    pub deployment: Deployment,
    child: Child,
    /// Workers started with this gateway (Kafka bus only).
    pub workers: Vec<Child>,
}

/// An HTTP answer: status, headers and JSON body (Null when not JSON).
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub body: Value,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    /// Asserts a problem document with this status and code.
    pub fn assert_problem(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text);
        assert_eq!(self.code(), code, "body: {}", self.text);
        assert_eq!(
            self.headers["content-type"], "application/problem+json",
            "problem documents have their media type"
        );
    }
}

impl TestServer {
    pub async fn spawn() -> TestServer {
        Self::spawn_on(Backends::Embedded, &[]).await
    }

    /// Spawns with extra `serve` flags, e.g. `["--admin-token", "t"]`.
    pub async fn spawn_with(extra_args: &[&str]) -> TestServer {
        Self::spawn_on(Backends::Embedded, extra_args).await
    }

    /// A gateway (plus one worker on the Kafka bus) with its own store.
    pub async fn spawn_on(backends: Backends, extra_args: &[&str]) -> TestServer {
        let deployment = Deployment::new(backends, extra_args).await;
        let mut server = deployment.gateway().await;
        if backends == Backends::RedisKafkaPostgres {
            server.workers.push(deployment.worker().await);
        }
        server
    }

    pub fn backends(&self) -> Backends {
        self.deployment.backends
    }

    pub fn db_path(&self) -> PathBuf {
        self.deployment.dir.path().join("flashsale.db")
    }

    pub fn store_url(&self) -> String {
        self.deployment.store_url.clone()
    }

    /// `kill -9` the gateway, then start it again on the same store (workers stay).
    pub async fn crash_and_restart(mut self) -> TestServer {
        self.kill9().await;
        let mut restarted = self.deployment.gateway().await;
        restarted.workers = std::mem::take(&mut self.workers);
        restarted
    }

    pub async fn kill9(&mut self) {
        // tokio's Child::kill sends SIGKILL: no shutdown code runs.
        self.child.kill().await.expect("kill -9");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("HTTP answer");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            text,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.client.get(self.url(path))).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(self.client.post(self.url(path)).json(body)).await
    }

    pub async fn create_sale(&self, body: Value) -> Value {
        let mut request = self.client.post(self.url("/api/sales")).json(&body);
        if let Some(token) = &self.admin_token {
            request = request.bearer_auth(token);
        }
        let reply = self.send(request).await;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "create sale: {}",
            reply.text
        );
        reply.body
    }

    /// Creates a live single-item sale and returns its id.
    pub async fn live_sale(&self, stock: u32, per_user_limit: u32) -> String {
        let sale = self
            .create_sale(
                json!({"name": "test drop", "stock": stock, "per_user_limit": per_user_limit}),
            )
            .await;
        sale["id"].as_str().unwrap().to_string()
    }

    pub async fn purchase(&self, sale_id: &str, body: Value, key: Option<&str>) -> Reply {
        let mut request = self
            .client
            .post(self.url(&format!("/api/sales/{sale_id}/purchase")))
            .json(&body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        self.send(request).await
    }

    /// `GET /api/orders/{id}`; on the Kafka bus the worker may not have stored an order
    /// acknowledged a moment ago, so this waits for it (up to 30 s).
    pub async fn order(&self, id: &str) -> Reply {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let reply = self.get(&format!("/api/orders/{id}")).await;
            if reply.status != 404 || tokio::time::Instant::now() >= deadline {
                return reply;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `POST /api/orders/{id}/{action}` (pay, cancel), once the order is in the store.
    pub async fn order_action(&self, id: &str, action: &str) -> Reply {
        assert_eq!(
            self.order(id).await.status,
            200,
            "order {id} never reached the store"
        );
        self.send(
            self.client
                .post(self.url(&format!("/api/orders/{id}/{action}"))),
        )
        .await
    }

    /// Waits until the order has this status (up to 30 s) and returns it.
    pub async fn wait_for_status(&self, id: &str, status: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let order = self.order(id).await.body;
            if order["status"] == status || tokio::time::Instant::now() >= deadline {
                assert_eq!(order["status"], status, "order {id}");
                return order;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Orders of a sale as the store holds them now (read from the database directly).
    pub async fn stored_orders(&self, sale_id: &str) -> Vec<flashsale::domain::Order> {
        let store = flashsale::store::connect(&self.store_url())
            .await
            .expect("open store");
        store.sale_orders(sale_id).await.expect("read orders")
    }

    /// Orders of a sale once the bus is drained: live orders in the store hold as many
    /// units as the gate has sold (at once with the in-process bus; the Kafka worker may lag).
    pub async fn settled_orders(&self, sale_id: &str) -> Vec<flashsale::domain::Order> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let sale = self.get(&format!("/api/sales/{sale_id}")).await.body;
            let sold = sale["stock"].as_u64().unwrap() - sale["remaining"].as_u64().unwrap();
            let orders = self.stored_orders(sale_id).await;
            let units: u64 = orders
                .iter()
                .filter(|o| o.status.holds_stock())
                .map(|o| o.total_units() as u64)
                .sum();
            if units >= sold || tokio::time::Instant::now() >= deadline {
                return orders;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs SQL on the server's database behind its back (to plant faults).
    pub async fn execute_sql(&self, sqlite: &str, postgres: &str) {
        use sqlx::Connection;
        let sql = match self.backends() {
            Backends::Embedded => sqlite,
            _ => postgres,
        };
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&self.store_url())
            .await
            .expect("connect");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&mut conn)
            .await
            .expect("planted SQL");
    }
}

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
        let mut broker = Broker {
            port,
            dir: Arc::new(tempfile::tempdir().unwrap()),
            child: None,
        };
        broker.resume().await;
        broker
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
            .stdout(Stdio::null())
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
