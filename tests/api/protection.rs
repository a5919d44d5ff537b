//! Who may do what (issue "Protection"): buyers by their token, payment by the payment
//! service's signature, the operator by the admin token, and the start refusals that
//! keep a server from being exposed unguarded. Each rule is shown by a request that
//! triggers it, against the real binary.

use std::time::Duration;

use flashsale::auth::{SIGNATURE_HEADER, mint_buyer_token, sign_payment};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::helpers::{Backends, Deployment, Reply, TestServer};

const ADMIN: &str = "admin-token-for-tests";
const SECRET: &str = "buyer-token-secret-for-tests-0123";
const PAYMENT: &str = "payment-secret-for-tests";

fn token(buyer: &str) -> String {
    mint_buyer_token(SECRET.as_bytes(), buyer, now() as u64 + 3600)
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn guarded() -> TestServer {
    TestServer::start_with(
        Backends::Embedded,
        json!({"admin_token": ADMIN, "auth_secret": SECRET, "payment_secret": PAYMENT}),
    )
    .await
}

/// A live sale whose orders wait for payment (5 minutes).
async fn sale_paid_later(app: &TestServer, stock: u32, per_user_limit: u32) -> String {
    let sale = app
        .create_sale(json!({"name": "guarded drop", "stock": stock,
            "per_user_limit": per_user_limit, "payment_window": 300}))
        .await;
    sale["id"].as_str().unwrap().to_string()
}

impl TestServer {
    async fn buy_as(&self, token: Option<&str>, sale: &str, body: serde_json::Value) -> Reply {
        let mut request = self
            .client
            .post(self.url(&format!("/api/sales/{sale}/purchase")))
            .json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        self.send(request).await
    }

    async fn as_bearer(&self, token: &str, method: reqwest::Method, path: &str) -> Reply {
        self.send(
            self.client
                .request(method, self.url(path))
                .bearer_auth(token),
        )
        .await
    }
}

#[tokio::test]
async fn the_token_names_the_buyer() {
    let app = guarded().await;
    let sale = app.live_sale(10, 1).await;
    let refused = app.buy_as(None, &sale, json!({"quantity": 1})).await;
    refused.assert_problem(401, "unauthorized");
    assert_eq!(refused.headers["www-authenticate"], "Bearer");
    let expired = mint_buyer_token(SECRET.as_bytes(), "ann", now() as u64 - 120);
    let forged = mint_buyer_token(
        b"a different secret of the same size",
        "ann",
        now() as u64 + 60,
    );
    for bad in [expired.as_str(), forged.as_str(), "not-a-jwt", ADMIN] {
        let reply = app.buy_as(Some(bad), &sale, json!({"quantity": 1})).await;
        // The admin token is a credential, but not a buyer's.
        let (status, code) = if bad == ADMIN {
            (403, "forbidden")
        } else {
            (401, "unauthorized")
        };
        reply.assert_problem(status, code);
    }
    // With tokens on, the body cannot name a buyer: "anyone buys as anyone" is gone.
    app.buy_as(
        Some(&token("ann")),
        &sale,
        json!({"user_id": "bob", "quantity": 1}),
    )
    .await
    .assert_problem(400, "invalid_request");
    let bought = app
        .buy_as(Some(&token("ann")), &sale, json!({"quantity": 1}))
        .await;
    assert_eq!(bought.status, 202, "{}", bought.text);
    assert_eq!(bought.body["user_id"], "ann");
    // The per-buyer limit holds per token subject, whatever the body would have said.
    app.buy_as(Some(&token("ann")), &sale, json!({"quantity": 1}))
        .await
        .assert_problem(409, "limit_reached");
    assert_eq!(
        app.get(&format!("/api/sales/{sale}")).await.body["remaining"],
        9
    );
}

#[tokio::test]
async fn a_buyer_sees_and_cancels_only_their_own_orders() {
    let app = guarded().await;
    let sale = sale_paid_later(&app, 10, 1).await;
    let bought = app
        .buy_as(Some(&token("ann")), &sale, json!({"quantity": 1}))
        .await;
    let order = bought.body["id"].as_str().unwrap().to_string();
    let path = format!("/api/orders/{order}");
    let cancel = format!("/api/orders/{order}/cancel");
    let own = app
        .as_bearer(&token("ann"), reqwest::Method::GET, &path)
        .await;
    assert_eq!(
        (own.status.as_u16(), own.body["status"].as_str()),
        (200, Some("pending"))
    );
    // Another buyer gets what a made-up id gets: ids cannot be probed.
    app.as_bearer(&token("bob"), reqwest::Method::GET, &path)
        .await
        .assert_problem(404, "order_not_found");
    app.as_bearer(&token("bob"), reqwest::Method::POST, &cancel)
        .await
        .assert_problem(404, "order_not_found");
    app.get(&path).await.assert_problem(401, "unauthorized");
    let still = app.as_bearer(ADMIN, reqwest::Method::GET, &path).await;
    assert_eq!(
        still.body["status"], "pending",
        "bob's cancel changed nothing"
    );
    let cancelled = app
        .as_bearer(&token("ann"), reqwest::Method::POST, &cancel)
        .await;
    assert_eq!(cancelled.body["status"], "cancelled", "{}", cancelled.text);
    assert_eq!(
        app.get(&format!("/api/sales/{sale}")).await.body["remaining"],
        10
    );
}

#[tokio::test]
async fn payment_is_confirmed_by_the_payment_service_not_the_buyer() {
    let app = guarded().await;
    let sale = sale_paid_later(&app, 10, 2).await;
    let mut orders = Vec::new();
    for _ in 0..2 {
        let bought = app
            .buy_as(Some(&token("ann")), &sale, json!({"quantity": 1}))
            .await;
        orders.push(bought.body["id"].as_str().unwrap().to_string());
    }
    let pay = |order: &str| {
        app.client
            .post(app.url(&format!("/api/orders/{order}/pay")))
    };
    let (first, second) = (orders[0].as_str(), orders[1].as_str());
    // The buyer's own word is not a payment.
    app.send(pay(first).bearer_auth(token("ann")))
        .await
        .assert_problem(403, "forbidden");
    app.send(pay(first))
        .await
        .assert_problem(401, "unauthorized");
    let signed = |secret: &str, at: i64, order: &str, body: &str| {
        sign_payment(secret.as_bytes(), at, order, body.as_bytes())
    };
    for forged in [
        signed("not-the-payment-secret", now(), first, ""),
        signed(PAYMENT, now(), second, ""), // another order's signature
        signed(PAYMENT, now() - 3600, first, ""), // replayed an hour later
        "t=1,v1=zz".to_string(),
    ] {
        app.send(pay(first).header(SIGNATURE_HEADER, forged))
            .await
            .assert_problem(401, "unauthorized");
    }
    let body = r#"{"payment_ref":"psp-123"}"#;
    app.send(
        pay(first)
            .header(SIGNATURE_HEADER, signed(PAYMENT, now(), first, ""))
            .body(body),
    )
    .await
    .assert_problem(401, "unauthorized"); // signed without the body it came with
    let header = signed(PAYMENT, now(), first, body);
    for _ in 0..2 {
        // Still idempotent: the same confirmation twice is one payment.
        let paid = app
            .send(pay(first).header(SIGNATURE_HEADER, &header).body(body))
            .await;
        assert_eq!(
            (paid.status.as_u16(), paid.body["status"].as_str()),
            (200, Some("paid")),
            "{}",
            paid.text
        );
    }
    let by_operator = app.send(pay(second).bearer_auth(ADMIN)).await;
    assert_eq!(by_operator.body["status"], "paid", "{}", by_operator.text);
}

#[tokio::test]
async fn the_caller_is_known_before_the_body_is_read() {
    let app = guarded().await;
    let malformed = || {
        app.client
            .post(app.url("/api/sales"))
            .header("content-type", "application/json")
            .body("{not json")
    };
    app.send(malformed())
        .await
        .assert_problem(401, "unauthorized");
    app.send(malformed().bearer_auth("wrong-token-of-some-length"))
        .await
        .assert_problem(401, "unauthorized");
    app.send(malformed().bearer_auth(token("ann")))
        .await
        .assert_problem(401, "unauthorized");
    app.send(malformed().bearer_auth(ADMIN))
        .await
        .assert_problem(400, "invalid_request");
    let sale = app.live_sale(1, 1).await;
    let purchase = app
        .client
        .post(app.url(&format!("/api/sales/{sale}/purchase")))
        .header("content-type", "application/json")
        .body("{not json");
    app.send(purchase).await.assert_problem(401, "unauthorized");
}

/// Signs a buyer token as an identity provider would, with its private key.
fn provider_token(algorithm: Algorithm, private_pem: &str, buyer: &str) -> String {
    let pem = std::fs::read(fixture(private_pem)).unwrap();
    let key = match algorithm {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
        _ => EncodingKey::from_ec_pem(&pem).unwrap(),
    };
    let claims = json!({"sub": buyer, "exp": now() + 600});
    jsonwebtoken::encode(&Header::new(algorithm), &claims, &key).unwrap()
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test]
async fn an_identity_providers_public_key_verifies_its_tokens() {
    for (algorithm, private, public) in [
        (Algorithm::RS256, "rs256-private.pem", "rs256-public.pem"),
        (Algorithm::ES256, "es256-private.pem", "es256-public.pem"),
    ] {
        let public = fixture(public);
        let app = TestServer::start_with(
            Backends::Embedded,
            json!({"admin_token": ADMIN, "auth_public_key": public}),
        )
        .await;
        let sale = app.live_sale(5, 1).await;
        let signed = provider_token(algorithm, private, "carol");
        let bought = app
            .buy_as(Some(&signed), &sale, json!({"quantity": 1}))
            .await;
        assert_eq!(bought.status, 202, "{algorithm:?}: {}", bought.text);
        assert_eq!(bought.body["user_id"], "carol");
        // An HS256 token "signed" with the public key as secret (the classic algorithm
        // confusion) and a token of the other key type are refused.
        let confused = mint_buyer_token(
            &std::fs::read(&public).unwrap(),
            "mallory",
            now() as u64 + 60,
        );
        let other = match algorithm {
            Algorithm::RS256 => provider_token(Algorithm::ES256, "es256-private.pem", "mallory"),
            _ => provider_token(Algorithm::RS256, "rs256-private.pem", "mallory"),
        };
        for bad in [confused, other] {
            app.buy_as(Some(&bad), &sale, json!({"quantity": 1}))
                .await
                .assert_problem(401, "unauthorized");
        }
    }
}

#[tokio::test]
async fn flashsale_token_mints_what_the_server_accepts() {
    let app = guarded().await;
    let sale = app.live_sale(5, 1).await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_flashsale"))
        .args([
            "token",
            "--user",
            "dave",
            "--ttl",
            "10m",
            "--auth-secret",
            SECRET,
        ])
        .args(["--config", "/nonexistent/flashsale.toml"])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let minted = String::from_utf8(output.stdout).unwrap().trim().to_string();
    let bought = app
        .buy_as(Some(&minted), &sale, json!({"quantity": 1}))
        .await;
    assert_eq!(
        (bought.status.as_u16(), bought.body["user_id"].as_str()),
        (202, Some("dave"))
    );
}

/// `serve` with these flags must refuse to start, naming `reason`.
async fn refuses_to_start(args: &[&str], reason: &str) {
    let deployment = Deployment::new(Backends::Embedded, &[]).await;
    let mut all = vec!["--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let output = tokio::time::timeout(Duration::from_secs(30), deployment.run("serve", &all))
        .await
        .unwrap_or_else(|_| panic!("serve {args:?} started instead of refusing"));
    let log = std::fs::read_to_string(deployment.dir.path().join("serve.log")).unwrap_or_default();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned() + &log;
    assert!(!output.status.success(), "serve {args:?} exited 0");
    assert!(
        stderr.contains(reason),
        "serve {args:?}: expected '{reason}' in:\n{stderr}"
    );
}

#[tokio::test]
async fn weak_or_missing_credentials_are_refused_at_start() {
    refuses_to_start(&["--admin-token", ""], "admin_token").await;
    refuses_to_start(&["--admin-token", "short-token"], "at least 16 bytes").await;
    refuses_to_start(
        &["--admin-token", ADMIN, "--auth-secret", "too short"],
        "auth_secret",
    )
    .await;
    refuses_to_start(&["--auth-secret", SECRET], "nobody could create a sale").await;
    // Exposed beyond loopback with no credential at all.
    refuses_to_start(&["--listen", "0.0.0.0:0"], "refusing to listen").await;
    // Issue #21: some credentials but no buyer tokens, beyond loopback: anyone would buy
    // as anyone.
    refuses_to_start(
        &["--listen", "0.0.0.0:0", "--admin-token", ADMIN],
        "without buyer tokens",
    )
    .await;
    refuses_to_start(
        &[
            "--listen",
            "0.0.0.0:0",
            "--admin-token",
            ADMIN,
            "--payment-secret",
            ADMIN,
        ],
        "without buyer tokens",
    )
    .await;
    // deploy/'s example secrets.
    refuses_to_start(
        &["--admin-token", "change-me-admin-token-0123456789"],
        "example value",
    )
    .await;
}

/// Issue #21: behind a front that authenticates buyers, an admin token without
/// buyer tokens may listen beyond loopback, and anonymous callers still cannot read or
/// cancel orders (the admin token can).
#[tokio::test]
async fn without_buyer_tokens_orders_need_the_admin_token_once_credentials_are_set() {
    let app = TestServer::spawn_on(
        Backends::Embedded,
        &[
            "--listen",
            "0.0.0.0:0",
            "--admin-token",
            ADMIN,
            "--buyers-authenticated-upstream",
        ],
    )
    .await;
    let sale = app.live_sale(2, 1).await;
    let bought = app.purchase(&sale, json!({"user_id": "eve"}), None).await;
    assert_eq!(bought.status, 202, "{}", bought.text);
    let order = bought.body["id"].as_str().unwrap();
    app.get(&format!("/api/orders/{order}"))
        .await
        .assert_problem(401, "unauthorized");
    app.post(&format!("/api/orders/{order}/cancel"), &json!({}))
        .await
        .assert_problem(401, "unauthorized");
    let read = app
        .send(
            app.client
                .get(app.url(&format!("/api/orders/{order}")))
                .bearer_auth(ADMIN),
        )
        .await;
    assert_eq!(read.status, 200, "{}", read.text);
    assert_eq!(read.body["id"], order);
}

#[tokio::test]
async fn the_admin_token_can_come_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin-token");
    std::fs::write(&file, format!("{ADMIN}\n")).unwrap();
    let app = TestServer::spawn_on(
        Backends::Embedded,
        &["--admin-token-file", file.to_str().unwrap()],
    )
    .await;
    let body = json!({"name": "from a file", "stock": 1});
    app.post("/api/sales", &body)
        .await
        .assert_problem(401, "unauthorized");
    let created = app
        .send(
            app.client
                .post(app.url("/api/sales"))
                .bearer_auth(ADMIN)
                .json(&body),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
}

#[tokio::test]
async fn insecure_listens_beyond_loopback_when_asked() {
    let app =
        TestServer::spawn_on(Backends::Embedded, &["--listen", "0.0.0.0:0", "--insecure"]).await;
    assert_eq!(app.get("/healthz").await.status, 200);
}
