//! A gateway under test and the HTTP calls the suites make to it: the typed client for
//! what the API types, raw requests (`Reply`) where a suite checks the answer's bytes.
//!
//! Two modes: `TestServer::start*` runs the server in the test's own process
//! (`flashsale::testkit::InProcessServer`), for the suites that neither kill, restart,
//! signal nor read the gateway's process; `TestServer::spawn*` launches the real binary,
//! for those that do (and on the Kafka bus, whose workers are processes anyway).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::process::Child;

use flashsale::testkit::InProcessServer;

use super::{Backends, Deployment};

pub struct TestServer {
    pub base: String,
    pub client: reqwest::Client,
    /// The typed client of the API, for what the suites do not check byte by byte.
    pub api: flashsale::client::Client,
    pub deployment: Deployment,
    /// The gateway's process (`spawn*`), or none when it runs in this one (`start*`).
    pub(super) child: Option<Child>,
    pub(super) in_process: Option<InProcessServer>,
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

/// The settings every test gateway runs with, in process or not (`deployment.rs` gives a
/// spawned one the same through its environment).
#[allow(dead_code)] // not every test binary uses it
pub fn test_settings(deployment: &Deployment) -> Value {
    json!({
        "store": deployment.store_url,
        "gate": match deployment.backends {
            Backends::Embedded => "local".to_string(),
            _ => deployment.redis_url.clone(),
        },
        "bus": match deployment.backends {
            Backends::RedisKafkaPostgres => deployment.kafka_url.as_str(),
            _ => "memory",
        },
        "sweep_interval_ms": 100,
        "sample_sales": false,
        "status_interval_s": 0,
        // Every test client is 127.0.0.1 and many tests hammer one buyer on purpose.
        "rate_per_buyer": "off",
        "rate_per_ip": "off",
        "max_queue_time_ms": 30000,
        "max_in_flight_purchases": 100000,
        "backend_timeout_ms": 2000,
        "hold_grace_ms": 4000,
        "kafka_delivery_timeout_ms": 2000,
        "topic_prefix": deployment.topic_prefix,
        "worker_group": format!("{}workers", deployment.topic_prefix),
    })
}

/// A map of settings as the command line's flags (`admin_token` → `--admin-token`).
#[allow(dead_code)] // not every test binary uses it
pub fn settings_as_args(settings: &Value) -> Vec<String> {
    let mut args = Vec::new();
    for (name, value) in settings.as_object().expect("settings are an object") {
        args.push(format!("--{}", name.replace('_', "-")));
        args.push(match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
    }
    args
}

/// The command line's flags as a map of settings (`--admin-token X` → `admin_token`),
/// the other way round; numbers become numbers, `--trusted-proxy` adds to a list.
#[allow(dead_code)] // not every test binary uses it
pub fn args_as_settings(args: &[&str]) -> Value {
    let mut settings = serde_json::Map::new();
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let name = flag.strip_prefix("--").expect("a --flag").replace('-', "_");
        let value = args.next().expect("a flag's value");
        let value = value
            .parse::<u64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::from(*value));
        if name == "trusted_proxy" {
            let list = settings
                .entry("trusted_proxies")
                .or_insert_with(|| Value::Array(Vec::new()));
            list.as_array_mut().expect("a list").push(value);
        } else {
            settings.insert(name, value);
        }
    }
    Value::Object(settings)
}

impl TestServer {
    /// The embedded engine, in this process.
    #[allow(dead_code)] // not every test binary uses it
    pub async fn start() -> TestServer {
        Self::start_with(Backends::Embedded, json!({})).await
    }

    /// A gateway with its own store, in this process.
    #[allow(dead_code)] // not every test binary uses it
    pub async fn start_on(backends: Backends) -> TestServer {
        Self::start_with(backends, json!({})).await
    }

    /// The same with `settings` (setting names, as in `flashsale.toml`). On the Kafka
    /// bus the gateway and its worker are processes (the same settings as flags).
    #[allow(dead_code)] // not every test binary uses it
    pub async fn start_with(backends: Backends, settings: Value) -> TestServer {
        if backends == Backends::RedisKafkaPostgres {
            let args = settings_as_args(&settings);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            return Self::spawn_on(backends, &args).await;
        }
        let deployment = Deployment::new(backends, &[]).await;
        let mut all = test_settings(&deployment);
        all.as_object_mut().unwrap().extend(
            settings
                .as_object()
                .expect("settings are an object")
                .clone(),
        );
        let server = InProcessServer::start(&all).await;
        TestServer {
            base: server.base.clone(),
            api: server.api.clone(),
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(512)
                .build()
                .unwrap(),
            deployment,
            child: None,
            in_process: Some(server),
            workers: Vec::new(),
        }
    }

    /// Stops an in-process gateway as SIGTERM would (a spawned one is killed on drop).
    #[allow(dead_code)]
    pub async fn stop(mut self) {
        if let Some(server) = self.in_process.take() {
            server.stop().await;
        }
    }

    /// The real binary's process, for the suites that kill, restart, signal or read it.
    pub async fn spawn() -> TestServer {
        Self::spawn_on(Backends::Embedded, &[]).await
    }

    /// A gateway process (plus one worker on the Kafka bus) with its own store.
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

    /// SIGTERM, then waits for the process to exit: its status and how long it took.
    pub async fn terminate(&mut self) -> (std::process::ExitStatus, Duration) {
        let pid = self.process().id().expect("still running") as i32;
        let started = std::time::Instant::now();
        // SAFETY: a plain kill(2) of our own child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "SIGTERM sent");
        let status = tokio::time::timeout(Duration::from_secs(60), self.process().wait())
            .await
            .expect("exited within 60 s of SIGTERM")
            .expect("exit status");
        (status, started.elapsed())
    }

    /// Whether the gateway's process has exited (a failpoint fired).
    #[allow(dead_code)] // the campaign's
    pub fn exited(&mut self) -> bool {
        self.process().try_wait().ok().flatten().is_some()
    }

    /// The gateway's process id.
    pub fn child_id(&self) -> u32 {
        self.child
            .as_ref()
            .expect("a process (TestServer::spawn)")
            .id()
            .expect("still running")
    }

    fn process(&mut self) -> &mut Child {
        self.child.as_mut().expect("a process (TestServer::spawn)")
    }

    pub async fn kill9(&mut self) {
        // tokio's Child::kill sends SIGKILL: no shutdown code runs.
        self.process().kill().await.expect("kill -9");
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

    /// Creates a sale through the typed client (with the admin token, if any).
    pub async fn create_sale(&self, body: Value) -> Value {
        let new: flashsale::api::requests::NewSale =
            serde_json::from_value(body).expect("a sale the API accepts");
        let sale = self.api.create_sale(&new).await.expect("create sale");
        serde_json::to_value(sale).unwrap()
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
        let store = flashsale::store::connect(&self.store_url().parse().unwrap())
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
