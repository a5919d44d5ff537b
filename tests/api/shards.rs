//! A sale over shards through the API (issue #23): accepted on every backend, the local
//! gate ignoring it; on the Redis gate its stock lives in sub-stocks that borrow from
//! each other, and it sells out exactly. A number of shards out of range is a 400.

use crate::helpers::{Backends, TestServer};
use serde_json::json;

async fn a_sale_over_three_shards_sells_out_exactly(backends: Backends) {
    let app = TestServer::start_on(backends).await;
    let sale = app
        .create_sale(json!({"name": "hot", "stock": 60, "shards": 3}))
        .await;
    assert_eq!(sale["shards"], 3);
    let id = sale["id"].as_str().unwrap().to_string();
    // As many buyers as units, at once: every one buys (a dry sub-stock borrows).
    let replies = futures_util::future::join_all((0..60).map(|n| {
        let (app, id) = (&app, &id);
        async move {
            app.purchase(id, json!({"user_id": format!("buyer-{n}")}), None)
                .await
        }
    }))
    .await;
    for reply in &replies {
        assert_eq!(reply.status, 202, "{}", reply.text);
    }
    app.purchase(&id, json!({"user_id": "one-too-many"}), None)
        .await
        .assert_problem(409, "sold_out");
    let view = app.get(&format!("/api/sales/{id}")).await.body;
    assert_eq!(view["remaining"], 0);
    assert_eq!(view["status"], "sold_out");
}

async fn a_number_of_shards_out_of_range_is_refused(backends: Backends) {
    let app = TestServer::start_on(backends).await;
    for shards in [0, 17] {
        app.post(
            "/api/sales",
            &json!({"name": "hot", "stock": 6, "shards": shards}),
        )
        .await
        .assert_problem(400, "invalid_request");
    }
}

crate::backend_tests!(memory_bus:
    a_sale_over_three_shards_sells_out_exactly,
    a_number_of_shards_out_of_range_is_refused,
);
