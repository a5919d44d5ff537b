//! The distributed mode: several gateways (and workers) on Redis, the bus and PostgreSQL
//! keep the invariants.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use common::{Backends, Deployment};
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
    for (key, outcomes) in &by_key {
        assert_eq!(
            outcomes.len(),
            1,
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
