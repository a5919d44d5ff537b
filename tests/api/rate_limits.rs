//! Rate limits (issue "Protection", rule 5): per buyer and per client address, a sale's
//! own quotas over the defaults, `X-Forwarded-For` believed only from trusted proxies,
//! and 429 `rate_limited` with `Retry-After` and the IETF draft's headers.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{Backends, Reply, TestServer, args_as_settings};

/// A server in this process with these flags' settings.
async fn server(args: &[&str]) -> TestServer {
    TestServer::start_with(Backends::Embedded, args_as_settings(args)).await
}

/// A live sale with room for many purchases per buyer.
async fn roomy_sale(app: &TestServer, extra: serde_json::Value) -> String {
    let mut body = json!({"name": "limited", "stock": 1000, "per_user_limit": 100});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let sale = app.create_sale(body).await;
    sale["id"].as_str().unwrap().to_string()
}

impl TestServer {
    async fn buy_from(&self, sale: &str, user: &str, forwarded_for: Option<&str>) -> Reply {
        let mut request = self
            .client
            .post(self.url(&format!("/api/sales/{sale}/purchase")))
            .json(&json!({"user_id": user}));
        if let Some(ip) = forwarded_for {
            request = request.header("X-Forwarded-For", ip);
        }
        self.send(request).await
    }
}

fn header<'a>(reply: &'a Reply, name: &str) -> &'a str {
    reply
        .headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header: {:?}", reply.headers))
        .to_str()
        .unwrap()
}

#[tokio::test]
async fn a_buyer_over_the_rate_gets_429_with_when_to_come_back() {
    let app = server(&["--rate-per-buyer", "2/s burst 3", "--rate-per-ip", "off"]).await;
    let sale = roomy_sale(&app, json!({})).await;
    for _ in 0..3 {
        let reply = app.buy_from(&sale, "eager", None).await;
        assert_eq!(reply.status, 202, "{}", reply.text);
    }
    let limited = app.buy_from(&sale, "eager", None).await;
    limited.assert_problem(429, "rate_limited");
    assert_eq!(header(&limited, "retry-after"), "1");
    assert_eq!(header(&limited, "ratelimit-policy"), "\"buyer\";q=3;w=2");
    assert_eq!(header(&limited, "ratelimit"), "\"buyer\";r=0;t=1");
    // Another buyer is not held back by this one.
    assert_eq!(app.buy_from(&sale, "calm", None).await.status, 202);
    // One credit comes back every 500 ms.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(app.buy_from(&sale, "eager", None).await.status, 202);
    app.buy_from(&sale, "eager", None)
        .await
        .assert_problem(429, "rate_limited");
}

#[tokio::test]
async fn an_address_is_limited_across_buyers_and_other_routes_count_apart() {
    let app = server(&["--rate-per-buyer", "off", "--rate-per-ip", "1/s burst 2"]).await;
    let sale = roomy_sale(&app, json!({})).await;
    assert_eq!(app.buy_from(&sale, "a", None).await.status, 202);
    assert_eq!(app.buy_from(&sale, "b", None).await.status, 202);
    let limited = app.buy_from(&sale, "c", None).await;
    limited.assert_problem(429, "rate_limited");
    assert_eq!(header(&limited, "ratelimit-policy"), "\"ip\";q=2;w=2");
    // Reads have their own budget per address, and are limited too.
    let path = format!("/api/sales/{sale}");
    assert_eq!(app.get(&path).await.status, 200);
    assert_eq!(app.get(&path).await.status, 200);
    app.get(&path).await.assert_problem(429, "rate_limited");
    // Every public route counts in that budget (issue #21): the probes, `/metrics`, the
    // document and the page too (probes have a listener of their own, `internal_listen`).
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json", "/"] {
        app.get(path).await.assert_problem(429, "rate_limited");
    }
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
    // Not trusted: whatever the header says, the client is 127.0.0.1.
    let app = server(&["--rate-per-buyer", "off", "--rate-per-ip", "1/min burst 2"]).await;
    let sale = roomy_sale(&app, json!({})).await;
    for (n, ip) in ["203.0.113.1", "203.0.113.2"].iter().enumerate() {
        let reply = app.buy_from(&sale, &format!("u{n}"), Some(ip)).await;
        assert_eq!(reply.status, 202, "{}", reply.text);
    }
    app.buy_from(&sale, "u3", Some("203.0.113.3"))
        .await
        .assert_problem(429, "rate_limited");

    // Trusted: each forwarded address has its own budget, and a client's own entry
    // to the left of the proxy's does not change who it is.
    let app = server(&[
        "--rate-per-buyer",
        "off",
        "--rate-per-ip",
        "1/min burst 2",
        "--trusted-proxy",
        "127.0.0.0/8",
    ])
    .await;
    let sale = roomy_sale(&app, json!({})).await;
    assert_eq!(
        app.buy_from(&sale, "a", Some("203.0.113.1")).await.status,
        202
    );
    assert_eq!(
        app.buy_from(&sale, "b", Some("6.6.6.6, 203.0.113.1"))
            .await
            .status,
        202
    );
    app.buy_from(&sale, "c", Some("7.7.7.7, 203.0.113.1"))
        .await
        .assert_problem(429, "rate_limited");
    assert_eq!(
        app.buy_from(&sale, "d", Some("203.0.113.2")).await.status,
        202
    );
}

#[tokio::test]
async fn a_sale_sets_its_own_limits_over_the_defaults() {
    let app = server(&[
        "--rate-per-buyer",
        "100/s",
        "--rate-per-ip",
        "1/min burst 1",
    ])
    .await;
    let hyped = roomy_sale(
        &app,
        json!({"rate_limits": {"per_buyer": "1/min burst 2", "per_ip": "off"}}),
    )
    .await;
    let shown = app.get(&format!("/api/sales/{hyped}")).await;
    assert_eq!(
        shown.body["rate_limits"],
        json!({"per_buyer": "1/min burst 2", "per_ip": "off"})
    );
    // The sale's per-address limit is off: many buyers from one address pass...
    for buyer in ["a", "b", "c", "d"] {
        assert_eq!(app.buy_from(&hyped, buyer, None).await.status, 202);
    }
    // ...and its per-buyer limit is stricter than the default.
    assert_eq!(app.buy_from(&hyped, "a", None).await.status, 202);
    let limited = app.buy_from(&hyped, "a", None).await;
    limited.assert_problem(429, "rate_limited");
    assert_eq!(header(&limited, "retry-after"), "60");
    // The defaults hold for another sale: one purchase per address per minute.
    let plain = roomy_sale(&app, json!({})).await;
    assert_eq!(app.buy_from(&plain, "a", None).await.status, 202);
    app.buy_from(&plain, "b", None)
        .await
        .assert_problem(429, "rate_limited");

    // A quota that does not parse is refused when the sale is created.
    let bad = app
        .post(
            "/api/sales",
            &json!({"name": "x", "stock": 1, "rate_limits": {"per_buyer": "lots"}}),
        )
        .await;
    bad.assert_problem(400, "invalid_request");
}

/// A sale's limits are stored with it: a restarted server (or another gateway) applies them.
#[tokio::test]
async fn a_sales_limits_survive_a_restart() {
    // A process: it is killed and started again.
    let app = TestServer::spawn_on(
        Backends::Embedded,
        &["--rate-per-buyer", "100/s", "--rate-per-ip", "off"],
    )
    .await;
    let sale = roomy_sale(&app, json!({"rate_limits": {"per_buyer": "1/min"}})).await;
    let app = app.crash_and_restart().await;
    assert_eq!(app.buy_from(&sale, "a", None).await.status, 202);
    app.buy_from(&sale, "a", None)
        .await
        .assert_problem(429, "rate_limited");
}

#[tokio::test]
async fn a_bad_limit_setting_is_refused_at_start() {
    for args in [
        ["--rate-per-buyer", "fast"],
        ["--rate-per-ip", "0/s"],
        ["--trusted-proxy", "10.0.0.0/99"],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = format!("sqlite://{}", dir.path().join("x.db").display());
        let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_flashsale"))
            .args(["serve", "--listen", "127.0.0.1:0", "--store", &store])
            .args(["--config", dir.path().join("none.toml").to_str().unwrap()])
            .args(args)
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .unwrap_or_else(|_| panic!("{args:?}: still running, so accepted"))
            .unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(args[0].trim_start_matches("--").replace('-', "_").as_str())
                || stderr.contains("trusted_proxies"),
            "{args:?}: {stderr}"
        );
    }
}

/// A sold-out sale answers `sold_out` at once, before the limits count (nothing can be
/// taken, and refusing is cheaper than metering); a keyed purchase, which may be a
/// replay of an order, is still metered.
#[tokio::test]
async fn a_sold_out_sale_answers_before_the_limits_count() {
    let app = server(&["--rate-per-buyer", "1/min", "--rate-per-ip", "off"]).await;
    let sale = app.live_sale(1, 1).await;
    assert_eq!(app.buy_from(&sale, "winner", None).await.status, 202);
    for _ in 0..5 {
        app.buy_from(&sale, "late", None)
            .await
            .assert_problem(409, "sold_out");
    }
    // With a key the purchase goes to the gate, metered: the first is decided there,
    // the next is over the buyer's rate.
    let keyed = |key: &'static str| app.purchase(&sale, json!({"user_id": "keyed"}), Some(key));
    keyed("k1").await.assert_problem(409, "sold_out");
    keyed("k2").await.assert_problem(429, "rate_limited");
}
