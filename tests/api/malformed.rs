//! 10,000 malformed requests against the real server (issue "Protection", rule 8):
//! random bytes, wrong types, huge and negative numbers, deep JSON, odd unicode, huge
//! headers and ids, forged tokens. None may get a 5xx, every refusal of ours is a
//! problem document with a code, and the server still serves afterwards.
//!
//! The inputs are drawn from a seed printed at the start (`MALFORMED_SEED=<n>` replays
//! a run).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::Method;
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{Backends, TestServer};

const STRUCTURED: usize = 8_000;
const RAW: usize = 2_000;
const ADMIN: &str = "admin-token-for-tests";
const SECRET: &str = "buyer-token-secret-for-tests-0123";

fn pick<'a, T>(rng: &mut fastrand::Rng, items: &'a [T]) -> &'a T {
    &items[rng.usize(..items.len())]
}

fn random_bytes(rng: &mut fastrand::Rng, max: usize) -> Vec<u8> {
    let len = rng.usize(..=max);
    (0..len).map(|_| rng.u8(..)).collect()
}

fn odd_string(rng: &mut fastrand::Rng) -> String {
    match rng.u8(..8) {
        0 => String::new(),
        1 => "\u{0}\u{1}\u{7f}".into(),
        2 => "🛒🔥".repeat(rng.usize(1..50)),
        3 => "\u{202e}evil\u{200b}".into(),
        4 => "x".repeat(rng.usize(200..20_000)),
        5 => "../../etc/passwd".into(),
        6 => "'; DROP TABLE orders; --".into(),
        _ => (0..rng.usize(1..40)).map(|_| rng.char(..)).collect(),
    }
}

fn odd_number(rng: &mut fastrand::Rng) -> serde_json::Value {
    match rng.u8(..8) {
        0 => json!(-1),
        1 => json!(0),
        2 => json!(u64::MAX),
        3 => json!(i64::MIN),
        4 => json!(1e300),
        5 => json!(0.5),
        6 => serde_json::Value::String("7".into()),
        _ => json!(rng.i64(..)),
    }
}

fn odd_value(rng: &mut fastrand::Rng, depth: u32) -> serde_json::Value {
    match rng.u8(..7) {
        0 => serde_json::Value::Null,
        1 => json!(rng.bool()),
        2 => odd_number(rng),
        3 => json!(odd_string(rng)),
        4 if depth < 3 => json!([odd_value(rng, depth + 1), odd_value(rng, depth + 1)]),
        5 if depth < 3 => json!({ odd_string(rng): odd_value(rng, depth + 1) }),
        _ => json!({}),
    }
}

/// A body: random bytes, deep nesting, or a purchase / sale with wrong fields.
fn body(rng: &mut fastrand::Rng) -> Vec<u8> {
    match rng.u8(..9) {
        0 => random_bytes(rng, 2_000),
        1 => {
            let depth = rng.usize(100..20_000);
            format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes()
        }
        2 => {
            let depth = rng.usize(100..5_000);
            format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth)).into_bytes()
        }
        3 => json!({"user_id": odd_value(rng, 0), "quantity": odd_number(rng)}).to_string().into_bytes(),
        4 => json!({"user_id": "u", "items": {odd_string(rng): odd_number(rng)}}).to_string().into_bytes(),
        5 => json!({"name": odd_value(rng, 0), "stock": odd_number(rng),
                    "per_user_limit": odd_number(rng), "starts_at": odd_value(rng, 0),
                    "payment_window": odd_number(rng),
                    "rate_limits": {"per_buyer": odd_value(rng, 0)}})
            .to_string()
            .into_bytes(),
        6 => json!({"name": "n", "items": (0..rng.usize(0..300)).map(|i| json!({"id": format!("i{i}"), "stock": odd_number(rng)})).collect::<Vec<_>>()})
            .to_string()
            .into_bytes(),
        7 => b"{\"user_id\": \"\\ud800\", \"quantity\": 1}".to_vec(),
        _ => odd_value(rng, 0).to_string().into_bytes(),
    }
}

fn id(rng: &mut fastrand::Rng, sale: &str) -> String {
    match rng.u8(..8) {
        0 => sale.to_string(),
        1 => "x".repeat(rng.usize(100..8_000)),
        2 => "%F0%9F%9B%92".into(),
        3 => "%00%ff".into(),
        4 => "..".into(),
        5 => format!("{sale}%20"),
        6 => uuid::Uuid::new_v4().simple().to_string(),
        _ => (0..rng.usize(1..30))
            .map(|_| *pick(rng, &['a', 'Z', '9', '-', '_', '.', '~', '!', '$', '(']))
            .collect(),
    }
}

fn forged_token(rng: &mut fastrand::Rng) -> String {
    let b64 = |s: &str| {
        use std::fmt::Write;
        // base64url without padding, by hand (no extra crate for a test).
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let bytes = s.as_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().fold(0u32, |n, &b| (n << 8) | b as u32) << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                let _ = out.write_char(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    };
    match rng.u8(..6) {
        0 => format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(r#"{"sub":"admin","exp":9999999999}"#)
        ),
        1 => format!(
            "{}.{}.{}",
            b64(r#"{"alg":"HS256"}"#),
            b64(&format!(
                r#"{{"sub":{},"exp":{}}}"#,
                odd_value(rng, 0),
                odd_number(rng)
            )),
            b64("not a signature")
        ),
        2 => "a.b.c".repeat(rng.usize(1..2_000)),
        3 => flashsale::auth::mint_buyer_token(
            b"another-secret-that-is-long-enough",
            "mallory",
            9_999_999_999,
        ),
        4 => odd_string(rng)
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .collect(),
        _ => flashsale::auth::mint_buyer_token(SECRET.as_bytes(), &odd_string(rng), 1),
    }
}

/// One structured request: (method, path, headers, body).
fn request(
    rng: &mut fastrand::Rng,
    sale: &str,
) -> (Method, String, Vec<(HeaderName, HeaderValue)>, Vec<u8>) {
    let method = pick(
        rng,
        &[
            Method::POST,
            Method::POST,
            Method::GET,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
            Method::OPTIONS,
        ],
    )
    .clone();
    let id = id(rng, sale);
    let path = match rng.u8(..8) {
        0 => "/api/sales".to_string(),
        1 => format!("/api/sales/{id}"),
        2 | 3 => format!("/api/sales/{id}/purchase"),
        4 => format!("/api/orders/{id}"),
        5 => format!("/api/orders/{id}/pay"),
        6 => format!("/api/orders/{id}/cancel"),
        _ => format!("/{}", id),
    };
    let mut headers = Vec::new();
    let mut add = |name: &'static str, value: Vec<u8>| {
        if let Ok(value) = HeaderValue::from_bytes(&value) {
            headers.push((HeaderName::from_static(name), value));
        }
    };
    if rng.u8(..4) > 0 {
        let kind = pick(
            rng,
            &[
                "application/json",
                "application/json; charset=utf-8",
                "application/vnd.x+json",
                "text/plain",
                "application/",
                "json",
                "application/jsonx",
            ],
        );
        add("content-type", kind.as_bytes().to_vec());
    }
    match rng.u8(..6) {
        0 => add(
            "idempotency-key",
            "k".repeat(rng.usize(200..400)).into_bytes(),
        ),
        1 => add("idempotency-key", vec![0x80, 0xff, b'k']),
        2 => add("idempotency-key", b"key with spaces".to_vec()),
        3 => add("idempotency-key", format!("k-{}", rng.u32(..)).into_bytes()),
        _ => {}
    }
    match rng.u8(..5) {
        0 => add(
            "authorization",
            format!("Bearer {}", forged_token(rng)).into_bytes(),
        ),
        1 => add("authorization", b"Basic YWRtaW46YWRtaW4=".to_vec()),
        2 => add("authorization", format!("Bearer {ADMIN}x").into_bytes()),
        3 => add("authorization", b"Bearer".to_vec()),
        _ => {}
    }
    if rng.u8(..10) == 0 {
        add("x-forwarded-for", random_bytes(rng, 60));
    }
    if rng.u8(..40) == 0 {
        // Past the header limit: 431 (or the connection closed).
        add(
            "x-padding",
            "p".repeat(rng.usize(40_000..120_000)).into_bytes(),
        );
    }
    (method, path, headers, body(rng))
}

/// Raw bytes on a socket: garbage, or a request line / header block gone wrong.
fn raw(rng: &mut fastrand::Rng, sale: &str) -> Vec<u8> {
    match rng.u8(..6) {
        0 => random_bytes(rng, 4_000),
        1 => format!("POST /api/sales/{sale}/purchase HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n{{}}").into_bytes(),
        2 => format!("POST /api/sales/{sale}/purchase HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n").into_bytes(),
        3 => format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(rng.usize(10_000..100_000))).into_bytes(),
        4 => {
            let mut bytes = format!("POST /api/sales/{sale}/purchase HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n").into_bytes();
            bytes.extend(random_bytes(rng, 20));
            bytes
        }
        _ => {
            let mut bytes = b"GET /healthz HTTP/1.1\r\n".to_vec();
            bytes.extend(random_bytes(rng, 300));
            bytes.extend(b"\r\n\r\n");
            bytes
        }
    }
}

/// What became of one request.
enum Fate {
    Answered(u16),
    /// The server closed the connection without an answer (a header past its limit).
    Closed,
    /// Nothing within 10 s: the server hung on it. A failure.
    Hung,
}

async fn send_raw(addr: &str, bytes: &[u8]) -> Fate {
    let Ok(Ok(mut stream)) =
        tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr)).await
    else {
        return Fate::Hung;
    };
    // The server may close before reading everything: a failed write is an answer too.
    let _ = stream.write_all(bytes).await;
    let _ = stream.shutdown().await;
    let mut answer = Vec::new();
    if tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .is_err()
    {
        return Fate::Hung;
    }
    let text = String::from_utf8_lossy(&answer);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .map_or(Fate::Closed, Fate::Answered)
}

/// Requests answered, closed unanswered, and hung (not answered within 10 s).
async fn flood(app: &TestServer, sale: &str, seed: u64) -> (u64, u64, u64) {
    let answered = Arc::new(AtomicU64::new(0));
    let unanswered = Arc::new(AtomicU64::new(0));
    let hung = Arc::new(AtomicU64::new(0));
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut tasks = tokio::task::JoinSet::new();
    const LANES: usize = 16;
    for lane in 0..LANES {
        let (client, base, addr, sale) = (
            app.client.clone(),
            app.base.clone(),
            addr.clone(),
            sale.to_string(),
        );
        let (answered, unanswered, hung) = (answered.clone(), unanswered.clone(), hung.clone());
        tasks.spawn(async move {
            let mut rng = fastrand::Rng::with_seed(seed + lane as u64);
            for _ in 0..STRUCTURED / LANES {
                let (method, path, headers, body) = request(&mut rng, &sale);
                // Bounded: a request the server never answers counts as unanswered
                // (asserted below) instead of hanging the suite.
                let mut request = client
                    .request(method.clone(), format!("{base}{path}"))
                    .timeout(Duration::from_secs(10))
                    .body(body.clone());
                for (name, value) in &headers {
                    request = request.header(name, value);
                }
                match request.send().await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let problem = response
                            .headers()
                            .get("content-type")
                            .is_some_and(|t| t == "application/problem+json");
                        let text = response.text().await.unwrap_or_default();
                        assert!(
                            status < 500,
                            "{method} {} → {status}: {text}\nheaders {headers:?}\nbody {:?}",
                            &path[..path.len().min(200)],
                            String::from_utf8_lossy(&body[..body.len().min(300)])
                        );
                        if problem {
                            let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
                            assert!(
                                doc["code"].as_str().is_some_and(|c| !c.is_empty()),
                                "{text}"
                            );
                        }
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    // Not answered within 10 s: the server hung on it.
                    Err(e) if e.is_timeout() => {
                        hung.fetch_add(1, Ordering::Relaxed);
                    }
                    // A header past the limit may close the connection instead of 431.
                    Err(_) => {
                        unanswered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            for _ in 0..RAW / LANES {
                let bytes = raw(&mut rng, &sale);
                match send_raw(&addr, &bytes).await {
                    Fate::Answered(status) => {
                        assert!(
                            status < 500,
                            "raw {:?} → {status}",
                            String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
                        );
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Fate::Closed => {
                        unanswered.fetch_add(1, Ordering::Relaxed);
                    }
                    Fate::Hung => {
                        hung.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    (
        answered.load(Ordering::Relaxed),
        unanswered.load(Ordering::Relaxed),
        hung.load(Ordering::Relaxed),
    )
}

async fn survives(app: TestServer) {
    let seed = std::env::var("MALFORMED_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..1 << 40));
    println!("MALFORMED_SEED={seed}");
    let sale = app.live_sale(1_000_000, 1).await;
    let (answered, unanswered, hung) = flood(&app, &sale, seed).await;
    println!(
        "{answered} malformed requests answered (none 5xx), {unanswered} closed unanswered, \
         {hung} hung"
    );
    // Every request is counted once (the lanes divide the totals exactly).
    assert_eq!(answered + unanswered + hung, (STRUCTURED + RAW) as u64);
    assert_eq!(hung, 0, "requests the server never answered nor closed");
    assert!(
        unanswered * 10 < answered,
        "most malformed requests get an answer: {unanswered} unanswered"
    );
    assert_eq!(app.get("/healthz").await.status, 200);
    let sale_now = app.get(&format!("/api/sales/{sale}")).await;
    assert_eq!(sale_now.status, 200, "{}", sale_now.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_malformed_requests_get_no_5xx_open_mode() {
    let app = TestServer::start().await;
    survives(app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_malformed_requests_get_no_5xx_with_credentials() {
    let app = TestServer::start_with(
        Backends::Embedded,
        json!({
            "admin_token": ADMIN,
            "auth_secret": SECRET,
            "payment_secret": "payment-secret-for-tests",
        }),
    )
    .await;
    survives(app).await;
}
