//! The HTTP server in this process, on a free port, with its typed client: for the API
//! suites that do not need a process of their own (nothing killed, restarted, signalled
//! or read from its output).
//!
//! The configuration is made from setting names (as in `flashsale.toml`), never from the
//! `Config` struct's fields: `Config::from_settings`.

use std::net::SocketAddr;

use serde_json::{Map, Value, json};

use crate::client::Client;
use crate::config::Config;
use crate::server::Server;

pub struct InProcessServer {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// The typed client (with the admin token, if one is set).
    pub api: Client,
    pub store_url: String,
    server: Server,
    _dir: tempfile::TempDir,
}

impl InProcessServer {
    /// A server with `settings` (a JSON object of setting names) over these: listen on
    /// 127.0.0.1 port 0, a SQLite store in a temp dir, no sample sales, no status line.
    pub async fn start(settings: &Value) -> InProcessServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut merged: Map<String, Value> = json!({
            "listen": "127.0.0.1:0",
            "store": format!("sqlite://{}", dir.path().join("flashsale.db").display()),
            "sample_sales": false,
            "status_interval_s": 0,
        })
        .as_object()
        .cloned()
        .expect("an object");
        if let Some(given) = settings.as_object() {
            merged.extend(given.clone());
        } else {
            assert!(settings.is_null(), "settings are a JSON object: {settings}");
        }
        let merged = Value::Object(merged);
        let config = Config::from_settings(&merged).expect("valid settings");
        let server = Server::start(&config).await.expect("server started");
        let base = format!("http://{}", server.addr);
        let admin_token = merged["admin_token"].as_str().map(String::from);
        InProcessServer {
            addr: server.addr,
            api: Client::new(&base).with_admin_token(admin_token),
            base,
            store_url: merged["store"].as_str().expect("a store URL").to_string(),
            server,
            _dir: dir,
        }
    }

    /// Stops as `serve` does on SIGTERM: every order acknowledged is stored on return.
    pub async fn stop(self) {
        self.server.stop().await;
    }
}
