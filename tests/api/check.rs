//! `flashsale check` passes on a clean run and fails, naming the order, on a planted
//! inconsistency.

use crate::helpers::{Backends, TestServer};
use serde_json::json;

async fn check_passes_clean_and_catches_a_planted_order(backends: Backends) {
    let app = TestServer::spawn_on(backends, &[]).await;
    let sale = app.live_sale(10, 1).await;
    for n in 0..5 {
        let reply = app
            .purchase(&sale, json!({"user_id": format!("u{n}")}), Some("k"))
            .await;
        assert_eq!(reply.status, 202);
    }
    app.settled_orders(&sale).await;
    let url_args = ["--url", app.base.as_str()];
    let url: &[&str] = if backends == Backends::Embedded {
        &url_args
    } else {
        &[]
    };

    let clean = app.deployment.run("check", url).await;
    let stdout = String::from_utf8_lossy(&clean.stdout);
    assert!(
        clean.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&clean.stderr)
    );
    assert!(stdout.contains("checked 1 sales, 5 orders"), "{stdout}");

    // A row inserted behind the engine's back: the store's counters, the gate and the
    // orders no longer agree.
    let plant = format!(
        "INSERT INTO orders (id, sale_id, user_id, items, units, status, created_at, fingerprint) \
         VALUES ('planted-order', '{sale}', 'ghost', '{{\"default\":1}}', 1, 'paid', 0, 'default:1')"
    );
    app.execute_sql(&plant, &plant).await;
    let dirty = app
        .deployment
        .run("check", &[&["--sale", sale.as_str()], url].concat())
        .await;
    let stdout = String::from_utf8_lossy(&dirty.stdout);
    assert_eq!(dirty.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("VIOLATION I1"), "{stdout}");
    assert!(stdout.contains("VIOLATION I4"), "{stdout}");
    assert!(stdout.contains("planted-order"), "{stdout}");
}

backend_tests!(check_passes_clean_and_catches_a_planted_order);
