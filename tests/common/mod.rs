//! The one test helper: spawns the real `flashsale serve` binary on port 0 with its own
//! SQLite file, and talks HTTP to it. Every suite uses it.
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
}

/// Runs an async test function once per backend combination: embedded always, the
/// others ignored in a plain `cargo test` (they say what they need) and run by `.ci/run`.
#[macro_export]
macro_rules! for_each_backend {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn embedded() {
                super::$test($crate::common::Backends::Embedded).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[ignore = "needs Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 (scripts/services.sh up)"]
            async fn redis_memory_postgres() {
                super::$test($crate::common::Backends::RedisMemoryPostgres).await
            }
        }
    )*};
}

pub struct TestServer {
    pub base: String,
    pub client: reqwest::Client,
    pub dir: Arc<tempfile::TempDir>,
    pub admin_token: Option<String>,
    pub backends: Backends,
    store_url: String,
    extra_args: Vec<String>,
    child: Child,
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

    /// Spawns on the given backends, each test with its own SQLite file or PostgreSQL
    /// database (Redis keys are per sale, and sale ids are unique).
    pub async fn spawn_on(backends: Backends, extra_args: &[&str]) -> TestServer {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let store_url = match backends {
            Backends::Embedded => format!("sqlite://{}", dir.path().join("flashsale.db").display()),
            Backends::RedisMemoryPostgres => flashsale::testing::fresh_postgres_database().await,
        };
        let extra_args = extra_args.iter().map(|s| s.to_string()).collect();
        Self::start(dir, backends, store_url, extra_args).await
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("flashsale.db")
    }

    pub fn store_url(&self) -> String {
        self.store_url.clone()
    }

    async fn start(
        dir: Arc<tempfile::TempDir>,
        backends: Backends,
        store_url: String,
        extra_args: Vec<String>,
    ) -> TestServer {
        let gate = match backends {
            Backends::Embedded => "local".to_string(),
            Backends::RedisMemoryPostgres => flashsale::testing::redis_url(),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("server.log"))
            .expect("log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_flashsale"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--store",
                &store_url,
                "--gate",
                &gate,
            ])
            .args(&extra_args)
            // A settings file in the test's cwd must not leak in.
            .args(["--config", dir.path().join("none.toml").to_str().unwrap()])
            .current_dir(dir.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn flashsale");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let base = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.expect("read stdout") {
                if let Some(url) = line.strip_prefix("flashsale listening on ") {
                    return url.to_string();
                }
            }
            let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
            panic!("server exited before listening:\n{log}");
        })
        .await
        .expect("server did not start within 30 s");
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let admin_token = extra_args
            .iter()
            .position(|a| a == "--admin-token")
            .and_then(|i| extra_args.get(i + 1).cloned());
        TestServer {
            base,
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(512)
                .build()
                .unwrap(),
            dir,
            admin_token,
            backends,
            store_url,
            extra_args,
            child,
        }
    }

    /// `kill -9` the server, then start it again on the same store.
    pub async fn crash_and_restart(mut self) -> TestServer {
        self.kill9().await;
        let TestServer {
            dir,
            backends,
            store_url,
            extra_args,
            ..
        } = self;
        Self::start(dir, backends, store_url, extra_args).await
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

    /// Orders of a sale as the store holds them (read from the database directly).
    pub async fn stored_orders(&self, sale_id: &str) -> Vec<flashsale::domain::Order> {
        let store = flashsale::store::connect(&self.store_url())
            .await
            .expect("open store");
        store.sale_orders(sale_id).await.expect("read orders")
    }
}

impl TestServer {
    /// Runs SQL on the server's database behind its back (to plant faults).
    pub async fn execute_sql(&self, sqlite: &str, postgres: &str) {
        use sqlx::Connection;
        let sql = match self.backends {
            Backends::Embedded => sqlite,
            Backends::RedisMemoryPostgres => postgres,
        };
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&self.store_url)
            .await
            .expect("connect");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&mut conn)
            .await
            .expect("planted SQL");
    }
}
