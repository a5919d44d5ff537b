//! Fuzzing of request parsing and validation (issue "Protection", rule 8), in CI:
//!
//!   cargo run --release --example fuzz_requests [-- --cases 1000000 --lanes 8]
//!
//! proptest draws requests from raw bytes: method, path and id bytes, header values
//! (`Content-Type`, `Idempotency-Key`, `Authorization` with token-shaped bytes,
//! `X-Forwarded-For`), and bodies that are raw bytes or JSON with values of any type.
//! Each is sent over HTTP (keep-alive) to a server in this process with every guard on
//! (admin token, buyer tokens, payment signatures, rate limits off so that every input
//! reaches the parsers). Every answer must be below 500, and every problem document must
//! carry a `code`. A failure prints the input, shrunk by proptest, and exits non-zero.
//! The count of inputs run is printed at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use clap::Parser;
use flashsale::config::Config;
use flashsale::domain::RateLimit;
use flashsale::server::Server;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};

#[derive(Parser)]
struct Args {
    /// Inputs in all.
    #[arg(long, default_value_t = 1_000_000)]
    cases: u32,
    /// Threads, each with its own runner and keep-alive connection.
    #[arg(long, default_value_t = 8)]
    lanes: u32,
}

const ADMIN: &str = "admin-token-for-the-fuzzer";
const SECRET: &str = "buyer-token-secret-for-the-fuzzer";

#[derive(Debug, Clone)]
struct Input {
    method: &'static str,
    path: String,
    content_type: Option<Vec<u8>>,
    idempotency_key: Option<Vec<u8>>,
    authorization: Option<Vec<u8>>,
    forwarded_for: Option<Vec<u8>>,
    body: Vec<u8>,
}

/// Bytes of a path segment, percent-encoded where they must be.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..80).prop_map(|bytes| {
            bytes
                .iter()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-_.~".contains(b) {
                        (*b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect()
        }),
        "[a-zA-Z0-9_.-]{1,70}",
        Just("SALE".to_string()),
    ]
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        any::<String>().prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("user_id".to_string()),
                    Just("quantity".to_string()),
                    Just("items".to_string()),
                    Just("name".to_string()),
                    Just("stock".to_string()),
                    Just("per_user_limit".to_string()),
                    Just("starts_at".to_string()),
                    Just("ends_at".to_string()),
                    Just("payment_window".to_string()),
                    Just("rate_limits".to_string()),
                    Just("per_buyer".to_string()),
                    any::<String>(),
                ],
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..600),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        (1usize..3000).prop_map(|n| format!("{}{}", "[".repeat(n), "]".repeat(n)).into_bytes()),
    ]
}

fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        "[ -~]{0,300}".prop_map(String::into_bytes),
    ]
}

fn token() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        header_bytes(),
        "[A-Za-z0-9_-]{0,60}\\.[A-Za-z0-9_-]{0,200}\\.[A-Za-z0-9_-]{0,60}"
            .prop_map(|t| format!("Bearer {t}").into_bytes()),
        Just(format!("Bearer {ADMIN}").into_bytes()),
        any::<String>().prop_map(|s| {
            let token = flashsale::auth::mint_buyer_token(SECRET.as_bytes(), &s, 9_999_999_999);
            format!("Bearer {token}").into_bytes()
        }),
    ]
}

fn input() -> impl Strategy<Value = Input> {
    (
        prop_oneof![
            Just("POST"),
            Just("GET"),
            Just("PUT"),
            Just("DELETE"),
            Just("PATCH")
        ],
        (0u8..8, segment(), segment()),
        proptest::option::of(prop_oneof![
            Just(b"application/json".to_vec()),
            Just(b"application/problem+json; charset=utf-8".to_vec()),
            header_bytes(),
        ]),
        proptest::option::of(header_bytes()),
        proptest::option::of(token()),
        proptest::option::of(header_bytes()),
        body(),
    )
        .prop_map(
            |(
                method,
                (route, id, extra),
                content_type,
                idempotency_key,
                authorization,
                forwarded_for,
                body,
            )| {
                let path = match route {
                    0 => "/api/sales".to_string(),
                    1 => format!("/api/sales/{id}"),
                    2 | 3 => format!("/api/sales/{id}/purchase"),
                    4 => format!("/api/orders/{id}"),
                    5 => format!("/api/orders/{id}/pay"),
                    6 => format!("/api/orders/{id}/cancel"),
                    _ => format!("/{id}/{extra}"),
                };
                Input {
                    method,
                    path,
                    content_type,
                    idempotency_key,
                    authorization,
                    forwarded_for,
                    body,
                }
            },
        )
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    let mut config = Config {
        status_interval_s: 0,
        sample_sales: false,
        listen: "127.0.0.1:0".into(),
        store: format!("sqlite://{}", dir.path().join("fuzz.db").display())
            .parse()
            .map_err(anyhow::Error::msg)?,
        ..Config::default()
    };
    config.auth.admin_token = Some(ADMIN.into());
    config.auth.auth_secret = Some(SECRET.into());
    config.auth.payment_secret = Some("payment-secret-for-the-fuzzer".into());
    config.protection.rate_per_buyer = RateLimit::Off;
    config.protection.rate_per_ip = RateLimit::Off;
    let server = rt.block_on(Server::start(&config))?;
    let base = format!("http://{}", server.addr);
    let sale = rt.block_on(async {
        let sale: serde_json::Value = reqwest::Client::new()
            .post(format!("{base}/api/sales"))
            .bearer_auth(ADMIN)
            .json(&serde_json::json!({"name": "fuzz", "stock": 100_000_000, "per_user_limit": 5}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        anyhow::Ok(sale["id"].as_str().unwrap_or_default().to_string())
    })?;

    let run = AtomicU64::new(0);
    let statuses: Arc<[AtomicU64; 6]> = Arc::new(Default::default());
    let started = Instant::now();
    let per_lane = args.cases / args.lanes;
    let failures: Vec<String> = std::thread::scope(|scope| {
        let lanes: Vec<_> = (0..args.lanes)
            .map(|lane| {
                let (rt, base, sale, run, statuses) = (&rt, &base, &sale, &run, statuses.clone());
                scope.spawn(move || {
                    let http = reqwest::Client::new();
                    let mut runner = TestRunner::new(RunnerConfig {
                        cases: per_lane,
                        failure_persistence: None,
                        // Each lane draws its own inputs.
                        rng_seed: proptest::test_runner::RngSeed::Fixed(
                            0x5eed_0000 + lane as u64 + started.elapsed().as_nanos() as u64,
                        ),
                        ..RunnerConfig::default()
                    });
                    let result = runner.run(&input(), |input| {
                        run.fetch_add(1, Ordering::Relaxed);
                        let (status, problem_code) =
                            rt.block_on(send(&http, base, sale, &input))
                                .map_err(|e| TestCaseError::fail(format!("no answer: {e}")))?;
                        statuses[(status / 100) as usize].fetch_add(1, Ordering::Relaxed);
                        prop_assert!(status < 500, "answered {status}");
                        if let Some(code) = problem_code {
                            prop_assert!(!code.is_empty(), "a problem without a code");
                        }
                        Ok(())
                    });
                    result.err().map(|e| format!("lane {lane}: {e}"))
                })
            })
            .collect();
        lanes
            .into_iter()
            .filter_map(|l| l.join().expect("lane"))
            .collect()
    });
    let elapsed = started.elapsed();
    let count = run.load(Ordering::Relaxed);
    let by_class: Vec<String> = statuses
        .iter()
        .enumerate()
        .filter(|(_, n)| n.load(Ordering::Relaxed) > 0)
        .map(|(class, n)| format!("{class}xx: {}", n.load(Ordering::Relaxed)))
        .collect();
    println!(
        "fuzz_requests: {count} inputs in {:.1} s ({:.0}/s), answers {}",
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64(),
        by_class.join(", ")
    );
    rt.block_on(server.stop());
    if failures.is_empty() {
        println!("fuzz_requests: ok, no 5xx and every problem has a code");
        Ok(())
    } else {
        anyhow::bail!("fuzz_requests failed:\n{}", failures.join("\n"))
    }
}

/// Sends one input; the status and, for a problem document, its code.
async fn send(
    http: &reqwest::Client,
    base: &str,
    sale: &str,
    input: &Input,
) -> Result<(u16, Option<String>), reqwest::Error> {
    let path = input.path.replace("SALE", sale);
    let method = reqwest::Method::from_bytes(input.method.as_bytes()).expect("a method");
    let mut request = http
        .request(method, format!("{base}{path}"))
        .body(input.body.clone());
    let headers = [
        ("content-type", &input.content_type),
        ("idempotency-key", &input.idempotency_key),
        ("authorization", &input.authorization),
        ("x-forwarded-for", &input.forwarded_for),
    ];
    for (name, value) in headers {
        // Bytes that cannot be a header value never reach a server: HTTP itself refuses them.
        if let Some(value) = value
            && let Ok(value) = reqwest::header::HeaderValue::from_bytes(value)
        {
            request = request.header(name, value);
        }
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let is_problem = response
        .headers()
        .get("content-type")
        .is_some_and(|t| t == "application/problem+json");
    let text = response.text().await?;
    let code = is_problem.then(|| {
        serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|doc| doc["code"].as_str().map(String::from))
            .unwrap_or_default()
    });
    Ok((status, code))
}
