//! A gateway under test and the HTTP calls the suites make to it: the typed client for
//! what the API types, raw requests (`Reply`) where a suite checks the answer's bytes.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::process::Child;

use super::{Backends, Deployment};

pub struct TestServer {
    pub base: String,
    pub client: reqwest::Client,
    /// The typed client of the API, for what the suites do not check byte by byte.
    pub api: flashsale::client::Client,
    pub deployment: Deployment,
    pub(super) child: Child,
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
        let pid = self.child.id().expect("still running") as i32;
        let started = std::time::Instant::now();
        // SAFETY: a plain kill(2) of our own child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "SIGTERM sent");
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("exited within 60 s of SIGTERM")
            .expect("exit status");
        (status, started.elapsed())
    }

    /// Whether the gateway's process has exited (a failpoint fired).
    #[allow(dead_code)] // the campaign's
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    /// The gateway's process id.
    pub fn child_id(&self) -> u32 {
        self.child.id().expect("still running")
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

    /// Creates a sale through the typed client (with the admin token, if any).
    pub async fn create_sale(&self, body: Value) -> Value {
        let new: flashsale::domain::NewSale =
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
