//! Many buyers at once against a small stock: exactly the stock is sold, at most the
//! limit per buyer, and repeated keys get consistent answers (I1, I2, I4, I5).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::helpers::{Backends, TestServer};
use serde_json::json;
use tokio::sync::Semaphore;

async fn two_thousand_purchases_from_500_users_sell_exactly_the_stock(backends: Backends) {
    let app = Arc::new(TestServer::start_on(backends).await);
    let sale = app.live_sale(50, 1).await;

    // Each of 500 users sends 4 requests: key A twice and key B twice, all at once.
    // Some users also get their requests without a key.
    let gate = Arc::new(Semaphore::new(256));
    let mut tasks = tokio::task::JoinSet::new();
    for user in 0..500 {
        for attempt in 0..4 {
            let (app, sale, gate) = (app.clone(), sale.clone(), gate.clone());
            tasks.spawn(async move {
                let _permit = gate.acquire().await.unwrap();
                let user_id = format!("user-{user}");
                let key = if user % 10 == 0 && attempt == 3 {
                    None
                } else {
                    Some(format!("{user_id}-key-{}", attempt % 2))
                };
                let reply = app
                    .purchase(&sale, json!({"user_id": user_id}), key.as_deref())
                    .await;
                (user_id, key, reply.status.as_u16(), reply.body)
            });
        }
    }
    let mut answers = Vec::new();
    while let Some(answer) = tasks.join_next().await {
        answers.push(answer.unwrap());
    }
    assert_eq!(answers.len(), 2000);

    let mut by_key: HashMap<(String, String), HashSet<String>> = HashMap::new();
    let mut accepted: HashMap<String, String> = HashMap::new(); // order id -> user
    for (user, key, status, body) in &answers {
        let outcome = match status {
            202 => {
                let id = body["id"].as_str().unwrap().to_string();
                assert_eq!(body["user_id"], user.as_str());
                assert_eq!(body["sale_id"], sale.as_str());
                assert_eq!(body["status"], "paid");
                accepted.insert(id.clone(), user.clone());
                format!("202 {id}")
            }
            409 => {
                let code = body["code"].as_str().unwrap();
                assert!(
                    code == "sold_out" || code == "limit_reached",
                    "unexpected {code}"
                );
                format!("409 {code}")
            }
            other => panic!("no other answer is expected, got {other}: {body}"),
        };
        if let Some(key) = key {
            by_key
                .entry((user.clone(), key.clone()))
                .or_default()
                .insert(outcome);
        }
    }
    // I5: a key that got a 202 stands for that order: every request with it got the
    // same 202. A refusal is not remembered (a retry is decided afresh), so a refused
    // key may get different refusals, but never a 202 beside them here (no unit came
    // back during this sale).
    for (key, outcomes) in &by_key {
        let accepted: Vec<_> = outcomes.iter().filter(|o| o.starts_with("202")).collect();
        assert!(
            accepted.is_empty() || outcomes.len() == 1,
            "key {key:?} answered differently: {outcomes:?}"
        );
    }
    // I1 + I2: exactly the stock was sold, to 50 distinct buyers.
    assert_eq!(accepted.len(), 50, "distinct orders acknowledged");
    let buyers: HashSet<_> = accepted.values().collect();
    assert_eq!(buyers.len(), 50, "one order per buyer");

    // I3 + I4: the store holds exactly the acknowledged orders.
    let stored = app.settled_orders(&sale).await;
    let stored_ids: HashSet<_> = stored.iter().map(|o| o.id.clone()).collect();
    let acked_ids: HashSet<_> = accepted.keys().cloned().collect();
    assert_eq!(stored_ids, acked_ids);
    let stored_users: HashSet<_> = stored.iter().map(|o| o.user_id.clone()).collect();
    assert_eq!(stored_users.len(), 50);

    let view = app.get(&format!("/api/sales/{sale}")).await;
    assert_eq!(view.body["remaining"], 0);
    assert_eq!(view.body["status"], "sold_out");
}

async fn multi_unit_limit_is_held_across_concurrent_purchases(backends: Backends) {
    let app = Arc::new(TestServer::start_on(backends).await);
    let sale = app.live_sale(1000, 3).await;
    // 40 users each fire 6 single-unit purchases at once: each may get at most 3.
    let mut tasks = tokio::task::JoinSet::new();
    for user in 0..40 {
        for _ in 0..6 {
            let (app, sale) = (app.clone(), sale.clone());
            tasks.spawn(async move {
                let reply = app
                    .purchase(&sale, json!({"user_id": format!("u{user}")}), None)
                    .await;
                (user, reply.status.as_u16(), reply.code().to_string())
            });
        }
    }
    let mut per_user: HashMap<i32, u32> = HashMap::new();
    while let Some(answer) = tasks.join_next().await {
        let (user, status, code) = answer.unwrap();
        match status {
            202 => *per_user.entry(user).or_default() += 1,
            409 => assert_eq!(code, "limit_reached"),
            other => panic!("unexpected {other} {code}"),
        }
    }
    assert!(per_user.values().all(|&n| n == 3), "{per_user:?}");
    let stored = app.settled_orders(&sale).await;
    assert_eq!(stored.len(), 120);
    let view = app.get(&format!("/api/sales/{sale}")).await;
    assert_eq!(view.body["remaining"], 1000 - 120);
}

backend_tests!(
    two_thousand_purchases_from_500_users_sell_exactly_the_stock,
    multi_unit_limit_is_held_across_concurrent_purchases,
);
