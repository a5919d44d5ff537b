//! The distributed mode: several gateways (and workers) on Redis, the bus and PostgreSQL
//! keep the invariants.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::helpers::{Backends, Deployment};
use serde_json::json;

/// Two gateways (and two workers on Kafka) sell one sale to buyers hitting both.
async fn two_gateways_sell_exactly_the_stock(backends: Backends) {
    let deployment = Deployment::new(backends, &[]).await;
    let gateways = Arc::new([deployment.gateway().await, deployment.gateway().await]);
    let mut workers = Vec::new();
    if backends == Backends::RedisKafkaPostgres {
        workers.push(deployment.worker().await);
        workers.push(deployment.worker().await);
    }
    let sale = gateways[0].live_sale(50, 1).await;

    // 500 users, 4 requests each, spread over both gateways; keys repeat across them.
    let limit = Arc::new(tokio::sync::Semaphore::new(128));
    let mut tasks = tokio::task::JoinSet::new();
    for user in 0..500 {
        for attempt in 0..4usize {
            let (gateways, sale, limit) = (gateways.clone(), sale.clone(), limit.clone());
            tasks.spawn(async move {
                let _permit = limit.acquire().await.unwrap();
                let user_id = format!("user-{user}");
                let key = format!("{user_id}-key-{}", attempt / 2);
                let gateway = &gateways[attempt % 2];
                let reply = gateway
                    .purchase(&sale, json!({"user_id": user_id}), Some(&key))
                    .await;
                (user_id, key, reply.status.as_u16(), reply.body)
            });
        }
    }
    let mut by_key: HashMap<(String, String), HashSet<String>> = HashMap::new();
    let mut accepted: HashMap<String, String> = HashMap::new();
    while let Some(answer) = tasks.join_next().await {
        let (user, key, status, body) = answer.unwrap();
        let outcome = match status {
            202 => {
                let id = body["id"].as_str().unwrap().to_string();
                accepted.insert(id.clone(), user.clone());
                id
            }
            409 => body["code"].as_str().unwrap().to_string(),
            other => panic!("no 5xx or other answer expected, got {other}: {body}"),
        };
        by_key.entry((user, key)).or_default().insert(outcome);
    }
    // A key that got a 202 stands for that order on both gateways (a retry meanwhile
    // may be told `request_in_progress`). A refusal is not remembered, so a refused key
    // may be refused differently (limit_reached, then sold_out), but never accepted here.
    for (key, outcomes) in &by_key {
        let is_order = |o: &&String| o.len() == 32 && o.bytes().all(|b| b.is_ascii_hexdigit());
        let orders = outcomes.iter().filter(is_order).count();
        let refusals = outcomes
            .iter()
            .filter(|o| !is_order(o) && *o != "request_in_progress")
            .count();
        assert!(
            orders <= 1 && (orders == 0 || refusals == 0),
            "{key:?} answered differently on two gateways: {outcomes:?}"
        );
    }
    assert_eq!(accepted.len(), 50);
    assert_eq!(
        accepted.values().collect::<HashSet<_>>().len(),
        50,
        "one order per buyer"
    );

    let stored = gateways[1].settled_orders(&sale).await;
    let stored_ids: HashSet<_> = stored.iter().map(|o| o.id.clone()).collect();
    assert_eq!(
        stored_ids,
        accepted.keys().cloned().collect::<HashSet<_>>(),
        "store = acknowledged"
    );
    for gateway in gateways.iter() {
        let view = gateway.get(&format!("/api/sales/{sale}")).await;
        assert_eq!(view.body["remaining"], 0);
        assert_eq!(view.body["status"], "sold_out");
    }
}

backend_tests!(distributed: two_gateways_sell_exactly_the_stock);

/// An operator pauses, resumes, adds stock and ends a sale through one gateway: the
/// other gateway's purchases obey at once (the shared gate decides), and its reads show
/// the change within a sweep.
async fn an_operators_change_through_one_gateway_holds_on_the_other(backends: Backends) {
    let deployment = Deployment::new(backends, &[]).await;
    let (operator, other) = (deployment.gateway().await, deployment.gateway().await);
    let _worker = match backends {
        Backends::RedisKafkaPostgres => Some(deployment.worker().await),
        _ => None,
    };
    let sale = operator.live_sale(1, 1).await;
    let control = |action: &'static str| {
        let (operator, sale) = (&operator, sale.clone());
        async move {
            let reply = operator
                .post(&format!("/api/sales/{sale}/{action}"), &json!({"units": 2}))
                .await;
            assert_eq!(reply.status, 200, "{action}: {}", reply.text);
        }
    };
    let buy = |user: &'static str| other.purchase(&sale, json!({"user_id": user}), None);
    let status_on_other = || async {
        for _ in 0..100 {
            let status = other.get(&format!("/api/sales/{sale}")).await.body["status"].clone();
            if status != "live" && status != "sold_out" {
                return status;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        json!("unchanged")
    };

    control("pause").await;
    buy("a").await.assert_problem(409, "paused");
    assert_eq!(status_on_other().await, "paused");
    control("resume").await;
    assert_eq!(buy("a").await.status, 202);
    // The other gateway now knows the sale sold out (its local flag)…
    buy("b").await.assert_problem(409, "sold_out");
    buy("b").await.assert_problem(409, "sold_out");
    // …and stock added through the operator's gateway sells there at once.
    control("stock").await;
    assert_eq!(buy("b").await.status, 202);
    assert_eq!(buy("c").await.status, 202);
    buy("d").await.assert_problem(409, "sold_out");
    control("end").await;
    other
        .post(&format!("/api/sales/{sale}/end"), &json!({}))
        .await
        .assert_problem(409, "ended");
    buy("e").await.assert_problem(409, "ended");
    assert_eq!(status_on_other().await, "ended");
    assert_eq!(operator.settled_orders(&sale).await.len(), 3);
}

backend_tests!(distributed: an_operators_change_through_one_gateway_holds_on_the_other);

/// Redis loses its data in the middle of a sale: the gate is rebuilt from the store
/// plus the orders still on the bus, purchases answer 503 meanwhile, and the sale completes with
/// exactly its stock, one unit per buyer.
async fn redis_flushed_mid_sale_recovers_without_oversell(backends: Backends) {
    let mut deployment = Deployment::new(backends, &[]).await;
    // A database of its own (one per variant, they run at once): flushing it leaves
    // the other tests' sales alone.
    let db = if backends == Backends::RedisKafkaPostgres {
        10
    } else {
        9
    };
    deployment.redis_url = format!("{}/{db}", crate::helpers::services::redis_url());
    let gateway = Arc::new(deployment.gateway().await);
    let worker = match backends {
        Backends::RedisKafkaPostgres => Some(deployment.worker().await),
        _ => None,
    };
    let sale = gateway.live_sale(40, 1).await;
    let mut early = Vec::new();
    for n in 0..15 {
        if n == 10 {
            // On Kafka, the last early orders stay on the bus, not in the store: the
            // recovery must count them. The worker is paused (SIGSTOP) rather than
            // killed: tansu 0.6 can take minutes to hand a dead member's partitions on.
            if let Some(w) = &worker {
                gateway.settled_orders(&sale).await;
                signal(w, "-STOP");
            }
        }
        let user = format!("early-{n}");
        let reply = gateway
            .purchase(&sale, json!({"user_id": user}), None)
            .await;
        assert_eq!(reply.status, 202, "{}", reply.text);
        early.push(user);
    }

    let client = redis::Client::open(deployment.redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("FLUSHDB").query_async(&mut conn).await.unwrap();

    // Everybody, early buyers included, keeps trying until the sale is sold out.
    let mut buyers: Vec<String> = early.clone();
    buyers.extend((0..60).map(|n| format!("late-{n}")));
    let mut tasks = tokio::task::JoinSet::new();
    for user in buyers {
        let (gateway, sale) = (gateway.clone(), sale.clone());
        tasks.spawn(async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            loop {
                let reply = gateway
                    .purchase(&sale, json!({"user_id": user}), None)
                    .await;
                match reply.status.as_u16() {
                    503 => {
                        assert!(
                            std::time::Instant::now() < deadline,
                            "never recovered: {}",
                            reply.text
                        );
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                    status => return (user, status, reply.code().to_string()),
                }
            }
        });
    }
    if let Some(w) = &worker {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        assert!(
            gateway.stored_orders(&sale).await.len() < 15,
            "orders left on the bus"
        );
        signal(w, "-CONT");
    }
    let mut late_sold = 0;
    while let Some(done) = tasks.join_next().await {
        let (user, status, code) = done.unwrap();
        if user.starts_with("early-") {
            // Never a second unit (sold_out wins over limit_reached once none is left).
            assert_eq!(status, 409, "{user} bought twice");
            assert!(code == "limit_reached" || code == "sold_out", "{code}");
        } else if status == 202 {
            late_sold += 1;
        } else {
            assert_eq!((status, code.as_str()), (409, "sold_out"));
        }
    }
    assert_eq!(late_sold, 25, "exactly the rest of the stock");
    let stored = gateway.settled_orders(&sale).await;
    let view = gateway.get(&format!("/api/sales/{sale}")).await.body;
    assert_eq!(stored.len(), 40, "the gate says {view}");
    let users: HashSet<_> = stored.iter().map(|o| &o.user_id).collect();
    assert_eq!(users.len(), 40);
    assert_eq!(
        gateway.get(&format!("/api/sales/{sale}")).await.body["remaining"],
        0
    );
    drop(worker);
}

fn signal(child: &tokio::process::Child, signal: &str) {
    let pid = child.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args([signal, &pid])
        .status()
        .unwrap();
    assert!(status.success());
}

backend_tests!(distributed: redis_flushed_mid_sale_recovers_without_oversell);

/// A gateway dies between the gate's reservation and the bus's answer: the sweeper of
/// another gateway gives the unit back, and it sells again.
async fn gateway_killed_between_gate_and_bus_gives_the_unit_back(backends: Backends) {
    let deployment = Deployment::new(backends, &[]).await;
    let crashing = deployment
        .gateway_with_env(&[("FLASHSALE_FAILPOINT", "after-reserve")])
        .await;
    let survivor = deployment.gateway().await;
    let _worker = match backends {
        Backends::RedisKafkaPostgres => Some(deployment.worker().await),
        _ => None,
    };
    let sale = survivor.live_sale(1, 1).await;
    let died = crashing
        .client
        .post(crashing.url(&format!("/api/sales/{sale}/purchase")))
        .header("Idempotency-Key", "lost-click")
        .json(&json!({"user_id": "unlucky"}))
        .send()
        .await;
    assert!(died.is_err(), "the gateway died before answering");
    let held = survivor.get(&format!("/api/sales/{sale}")).await;
    assert_eq!(held.body["remaining"], 0, "the reservation is held");

    let started = std::time::Instant::now();
    while survivor.get(&format!("/api/sales/{sale}")).await.body["remaining"] != 1 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "unit never came back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Released once, and the unlucky buyer's key is decided afresh.
    let retried = survivor
        .purchase(&sale, json!({"user_id": "unlucky"}), Some("lost-click"))
        .await;
    assert_eq!(retried.status, 202, "{}", retried.text);
    survivor
        .purchase(&sale, json!({"user_id": "other"}), None)
        .await
        .assert_problem(409, "sold_out");
    assert_eq!(survivor.settled_orders(&sale).await.len(), 1);
}

/// A gateway dies after the bus took the order and before its key was confirmed: the
/// sweeper resolves the key to the order (found in the store or on the bus), so a retry
/// on another gateway gets the original 202, not 503 "in flight" for the key's lifetime.
async fn gateway_killed_after_the_bus_answers_retries_with_the_order(backends: Backends) {
    let deployment = Deployment::new(backends, &[]).await;
    let crashing = deployment
        .gateway_with_env(&[("FLASHSALE_FAILPOINT", "after-publish")])
        .await;
    let survivor = deployment.gateway().await;
    let _worker = match backends {
        Backends::RedisKafkaPostgres => Some(deployment.worker().await),
        _ => None,
    };
    let sale = survivor.live_sale(2, 1).await;
    let died = crashing
        .client
        .post(crashing.url(&format!("/api/sales/{sale}/purchase")))
        .header("Idempotency-Key", "lost-answer")
        .json(&json!({"user_id": "lucky"}))
        .send()
        .await;
    assert!(died.is_err(), "the gateway died before answering");

    let started = std::time::Instant::now();
    let order = loop {
        let retried = survivor
            .purchase(&sale, json!({"user_id": "lucky"}), Some("lost-answer"))
            .await;
        match retried.status.as_u16() {
            202 => break retried.body,
            // In flight: 503 from a buyer's wait, 409 `request_in_progress` from a replay's.
            503 | 409 if retried.status == 503 || retried.code() == "request_in_progress" => {
                assert!(
                    started.elapsed() < std::time::Duration::from_secs(20),
                    "the key stayed in flight: {}",
                    retried.text
                )
            }
            _ => panic!("{}", retried.text),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let stored = survivor.settled_orders(&sale).await;
    assert_eq!(stored.len(), 1, "one order, stored once");
    assert_eq!(
        order["id"].as_str(),
        Some(stored[0].id.as_str()),
        "the original order"
    );
    let view = survivor.get(&format!("/api/sales/{sale}")).await;
    assert_eq!(view.body["remaining"], 1, "its unit stays sold, once");
}

backend_tests!(distributed: gateway_killed_between_gate_and_bus_gives_the_unit_back, gateway_killed_after_the_bus_answers_retries_with_the_order);
