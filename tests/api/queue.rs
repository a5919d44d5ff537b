//! The line in front of a sale (issue #25), embedded: tickets decided strictly in line
//! order, one place per buyer, the purchase route closed to a queued sale, timeouts,
//! the line closed at a sell-out, positions and ETAs that never rise, and tickets that
//! survive a `kill -9` and are decided once.

use std::collections::HashSet;
use std::time::Duration;

use crate::helpers::TestServer;
use serde_json::{Value, json};

fn in_ms(ms: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::milliseconds(ms)).to_rfc3339()
}

async fn queued_sale(app: &TestServer, stock: u32, starts_in_ms: i64, queue: Value) -> String {
    let sale = app
        .create_sale(json!({
            "name": "queued drop",
            "stock": stock,
            "starts_at": in_ms(starts_in_ms),
            "queue": queue,
        }))
        .await;
    sale["id"].as_str().unwrap().to_string()
}

async fn join(app: &TestServer, sale: &str, user: &str) -> crate::helpers::Reply {
    app.post(
        &format!("/api/sales/{sale}/queue"),
        &json!({"user_id": user}),
    )
    .await
}

/// Polls a ticket until it is no longer waiting.
async fn final_state(app: &TestServer, ticket: &str) -> Value {
    for _ in 0..400 {
        let reply = app.get(&format!("/api/tickets/{ticket}")).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        if reply.body["status"] != "waiting" {
            return reply.body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("ticket {ticket} still waiting after 20 s");
}

#[tokio::test]
async fn the_first_in_line_get_the_stock_and_the_rest_are_told_at_once() {
    let app = TestServer::start().await;
    const BUYERS: usize = 2_000;
    const STOCK: u64 = 50;
    let starts_in = Duration::from_secs(4);
    let sale = queued_sale(&app, STOCK as u32, starts_in.as_millis() as i64, json!({})).await;
    let created = std::time::Instant::now();
    // The purchase route is closed to a queued sale.
    app.purchase(&sale, json!({"user_id": "eager"}), None)
        .await
        .assert_problem(409, "queue_required");
    // Thousands of buyers join at once, before the start: the line takes them in some
    // order, and that order is the one the stock goes by.
    let joins = (0..BUYERS).map(|n| {
        let (app, sale) = (&app, &sale);
        async move { (n, join(app, sale, &format!("buyer-{n}")).await) }
    });
    let joined = futures_util::future::join_all(joins).await;
    assert!(
        created.elapsed() < starts_in,
        "the joins took {:?}: not all before the start",
        created.elapsed()
    );
    let mut tickets = Vec::new();
    for (n, reply) in &joined {
        assert_eq!(reply.status, 202, "{}", reply.text);
        assert_eq!(reply.body["status"], "waiting");
        let location = reply.headers["location"].to_str().unwrap();
        let ticket = reply.body["ticket"].as_str().unwrap().to_string();
        assert_eq!(location, format!("/api/tickets/{ticket}"));
        tickets.push((*n, ticket));
    }
    // The positions at joining are the line: 1..=BUYERS, each once.
    let positions: HashSet<u64> = joined
        .iter()
        .map(|(_, r)| r.body["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, (1..=BUYERS as u64).collect());
    // One place per buyer: joining again is the same ticket, 200.
    let again = join(&app, &sale, "buyer-7").await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body["ticket"], json!(tickets[7].1));

    let mut outcomes = Vec::new();
    for ((_, reply), (_, ticket)) in joined.iter().zip(&tickets) {
        let end = final_state(&app, ticket).await;
        outcomes.push((reply.body["position"].as_u64().unwrap(), end));
    }
    outcomes.sort_by_key(|(position, _)| *position);
    for (position, end) in &outcomes {
        if *position <= STOCK {
            assert_eq!(end["status"], "decided", "{end}");
            assert_eq!(end["order"]["status"], "paid", "{end}");
        } else if *position == STOCK + 1 && end["status"] == "decided" {
            // The line closes once the last unit's order is settled; unpaced, the
            // decider may reach the next ticket first: refused, as the line closes.
            assert_eq!(end["refusal"]["code"], "sold_out", "{end}");
        } else {
            assert_eq!(end["status"], "closed", "{end}");
            assert_eq!(end["refusal"]["code"], "sold_out", "{end}");
        }
    }
    // Never a later ticket decided before an earlier one: the decision times follow
    // the positions.
    let decided_at: Vec<chrono::DateTime<chrono::Utc>> = outcomes
        .iter()
        .filter(|(_, end)| end["status"] == "decided")
        .map(|(_, end)| end["decided_at"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(
        decided_at.windows(2).all(|w| w[0] <= w[1]),
        "decisions out of line order: {decided_at:?}"
    );
    // One order per ticket decided with one.
    let orders = app.settled_orders(&sale).await;
    assert_eq!(orders.len() as u64, STOCK);
    let line = app.get(&format!("/api/sales/{sale}/queue")).await;
    assert_eq!(line.status, 200, "{}", line.text);
    assert_eq!(line.body["waiting"], 0);
    let refused = outcomes
        .iter()
        .filter(|(_, end)| end["status"] == "decided" && end["order"].is_null())
        .count() as u64;
    assert_eq!(line.body["decided"], STOCK + refused);
    assert_eq!(line.body["closed"], BUYERS as u64 - STOCK - refused);
    // A closed line takes nobody new.
    join(&app, &sale, "latecomer")
        .await
        .assert_problem(409, "sold_out");
}

#[tokio::test]
async fn a_line_refuses_what_it_cannot_take() {
    let app = TestServer::start().await;
    let later = queued_sale(&app, 5, 0, json!({"opens_at": in_ms(60_000)})).await;
    join(&app, &later, "early")
        .await
        .assert_problem(409, "not_open");
    let plain = app.live_sale(5, 1).await;
    join(&app, &plain, "someone")
        .await
        .assert_problem(409, "no_queue");
    let open = queued_sale(&app, 5, 0, json!({})).await;
    app.post(
        &format!("/api/sales/{open}/queue"),
        &json!({"user_id": "x", "quantity": 0}),
    )
    .await
    .assert_problem(400, "invalid_request");
    app.post(&format!("/api/sales/{open}/queue"), &json!({"user": "x"}))
        .await
        .assert_problem(400, "invalid_request");
    app.get("/api/tickets/0000")
        .await
        .assert_problem(404, "ticket_not_found");
    let bad = app
        .post(
            "/api/sales",
            &json!({"name": "bad", "stock": 1, "queue": {"max_wait_s": 0}}),
        )
        .await;
    bad.assert_problem(400, "invalid_request");
}

#[tokio::test]
async fn a_ticket_that_waits_past_max_wait_times_out() {
    let app = TestServer::start().await;
    // One decision per second, a wait of one second from the start (everyone joins
    // before it): the first ticket is decided, the ones behind it run out of time
    // before the next decision. (Joined after the start, each would wait from its own
    // join, and a slow join could still be in time behind one that timed out.)
    let sale = queued_sale(&app, 100, 1_500, json!({"rate": "1/s", "max_wait_s": 1})).await;
    let mut tickets = Vec::new();
    for n in 0..6 {
        let reply = join(&app, &sale, &format!("b{n}")).await;
        assert_eq!(reply.status, 202, "{}", reply.text);
        tickets.push(reply.body["ticket"].as_str().unwrap().to_string());
    }
    let mut statuses = Vec::new();
    for ticket in &tickets {
        let end = final_state(&app, ticket).await;
        if end["status"] == "timeout" {
            assert_eq!(end["refusal"]["code"], "timeout", "{end}");
        }
        statuses.push(end["status"].as_str().unwrap().to_string());
    }
    assert_eq!(statuses[0], "decided");
    assert_eq!(statuses.last().unwrap(), "timeout", "{statuses:?}");
    // Never a later ticket decided after an earlier one timed out.
    let first_timeout = statuses.iter().position(|s| s == "timeout").unwrap();
    assert!(
        statuses[first_timeout..].iter().all(|s| s == "timeout"),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn position_and_eta_never_rise_and_the_rate_changes_live() {
    let app = TestServer::start().await;
    let sale = queued_sale(&app, 1_000, 0, json!({"rate": "20/s"})).await;
    let mut last = String::new();
    for n in 0..60 {
        let reply = join(&app, &sale, &format!("b{n}")).await;
        assert_eq!(reply.status, 202, "{}", reply.text);
        last = reply.body["ticket"].as_str().unwrap().to_string();
    }
    let (mut position, mut eta) = (u64::MAX, u64::MAX);
    let mut samples = 0;
    loop {
        let now = app.get(&format!("/api/tickets/{last}")).await.body;
        if now["status"] != "waiting" {
            assert_eq!(now["status"], "decided", "{now}");
            break;
        }
        let p = now["position"].as_u64().unwrap();
        let e = now["eta_s"]
            .as_u64()
            .expect("a line with a rate has an ETA");
        assert!(p <= position, "position rose: {position} then {p}");
        assert!(e <= eta, "ETA rose: {eta} then {e}");
        (position, eta) = (p, e);
        samples += 1;
        if samples == 10 {
            // The operator slows the line right down: the ETA shown does not rise.
            let slowed = app
                .post(
                    &format!("/api/sales/{sale}/queue/rate"),
                    &json!({"rate": "1/s"}),
                )
                .await;
            assert_eq!(slowed.status, 200, "{}", slowed.text);
            assert_eq!(slowed.body["rate"], "1/s");
        }
        if samples == 20 {
            let sped = app
                .post(
                    &format!("/api/sales/{sale}/queue/rate"),
                    &json!({"rate": "off"}),
                )
                .await;
            assert_eq!(sped.body["rate"], "off");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(samples >= 20, "sampled {samples} times");
}

#[tokio::test]
async fn tickets_survive_a_kill_9_and_each_is_decided_once() {
    let app = TestServer::spawn().await;
    let sale = queued_sale(&app, 30, 2_000, json!({"rate": "50/s"})).await;
    let mut tickets = Vec::new();
    for n in 0..60 {
        let reply = join(&app, &sale, &format!("b{n}")).await;
        assert_eq!(reply.status, 202, "{}", reply.text);
        tickets.push((
            reply.body["position"].as_u64().unwrap(),
            reply.body["ticket"].as_str().unwrap().to_string(),
        ));
    }
    // Killed as the sale starts: some tickets decided, most waiting.
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let app = app.crash_and_restart().await;
    let mut ends = Vec::new();
    for (position, ticket) in &tickets {
        ends.push((*position, final_state(&app, ticket).await));
    }
    ends.sort_by_key(|(p, _)| *p);
    let orders = app.settled_orders(&sale).await;
    assert_eq!(orders.len(), 30, "each unit sold once");
    let ordered: HashSet<String> = ends
        .iter()
        .filter_map(|(_, end)| end["order"]["id"].as_str().map(String::from))
        .collect();
    assert_eq!(ordered.len(), 30, "30 tickets with an order, each its own");
    assert_eq!(
        ordered,
        orders.iter().map(|o| o.id.clone()).collect::<HashSet<_>>()
    );
    for (position, end) in &ends {
        let bought = end["order"].is_object();
        assert_eq!(bought, *position <= 30, "position {position}: {end}");
    }
}

/// A ticket refused `sold_out` because it asks more than is left does not close the
/// line: the tickets behind it that fit still buy, in order.
#[tokio::test]
async fn a_purchase_too_large_for_what_is_left_does_not_close_the_line() {
    let app = TestServer::start().await;
    let sale = app
        .create_sale(json!({
            "name": "queued drop",
            "stock": 3,
            "per_user_limit": 2,
            "starts_at": in_ms(1_500),
            "queue": {},
        }))
        .await;
    let sale = sale["id"].as_str().unwrap();
    let mut tickets = Vec::new();
    for (user, quantity) in [("a", 2), ("b", 2), ("c", 1), ("d", 1)] {
        let joined = app
            .post(
                &format!("/api/sales/{sale}/queue"),
                &json!({"user_id": user, "quantity": quantity}),
            )
            .await;
        assert_eq!(joined.status, 202, "{}", joined.text);
        tickets.push(joined.body["ticket"].as_str().unwrap().to_string());
    }
    let ends: Vec<Value> =
        futures_util::future::join_all(tickets.iter().map(|ticket| final_state(&app, ticket)))
            .await;
    assert_eq!(ends[0]["order"]["quantity"], 2, "{}", ends[0]);
    // b asks 2 of the 1 left: refused, the line stays open.
    assert_eq!(ends[1]["status"], "decided", "{}", ends[1]);
    assert_eq!(ends[1]["refusal"]["code"], "sold_out", "{}", ends[1]);
    assert_eq!(ends[2]["order"]["quantity"], 1, "c fits: {}", ends[2]);
    // d comes after the last unit went: refused at its turn.
    assert_eq!(ends[3]["refusal"]["code"], "sold_out", "{}", ends[3]);
}

/// A line without a rate decides at the gate's speed; its orders reach the store through
/// a small bus without a ticket failing on its way and being served after later ones:
/// the first places get the stock.
#[tokio::test]
async fn a_fast_line_does_not_outrun_a_small_bus() {
    let app = TestServer::start_with(
        crate::helpers::Backends::Embedded,
        json!({"bus_capacity": 2}),
    )
    .await;
    let sale = queued_sale(&app, 100, 2_000, json!({})).await;
    let joins = (0..300).map(|n| {
        let (app, sale) = (&app, &sale);
        async move { join(app, sale, &format!("buyer-{n}")).await }
    });
    let joined = futures_util::future::join_all(joins).await;
    let mut ends = Vec::new();
    for reply in &joined {
        assert_eq!(reply.status, 202, "{}", reply.text);
        let ticket = reply.body["ticket"].as_str().unwrap();
        ends.push(final_state(&app, ticket).await);
    }
    ends.sort_by_key(|end| end["place"].as_u64().unwrap());
    let with_order: Vec<u64> = ends
        .iter()
        .filter(|end| end["order"].is_object())
        .map(|end| end["place"].as_u64().unwrap())
        .collect();
    assert_eq!(
        with_order,
        (1..=100).collect::<Vec<u64>>(),
        "{:?}",
        &ends[..3]
    );
    assert_eq!(app.settled_orders(&sale).await.len(), 100);
}

/// A faster rate applies at once: a line paced at one an hour, sped up, does not wait
/// out the hour its old pace gave it.
#[tokio::test]
async fn a_faster_rate_applies_at_once() {
    let app = TestServer::start().await;
    let sale = queued_sale(&app, 10, 500, json!({"rate": "1/h"})).await;
    let tickets: Vec<String> =
        futures_util::future::join_all(["a", "b", "c"].map(|user| join(&app, &sale, user)))
            .await
            .iter()
            .map(|reply| reply.body["ticket"].as_str().unwrap().to_string())
            .collect();
    // The first in line is decided at the start; the next would wait an hour.
    let mut line = app.get(&format!("/api/sales/{sale}/queue")).await;
    for _ in 0..100 {
        if line.body["decided"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        line = app.get(&format!("/api/sales/{sale}/queue")).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let line = app.get(&format!("/api/sales/{sale}/queue")).await;
    assert_eq!(line.body["decided"], 1, "{}", line.text);
    assert_eq!(line.body["waiting"], 2, "{}", line.text);
    let sped = app
        .post(
            &format!("/api/sales/{sale}/queue/rate"),
            &json!({"rate": "100/s"}),
        )
        .await;
    assert_eq!(sped.status, 200, "{}", sped.text);
    for ticket in &tickets {
        let end = final_state(&app, ticket).await;
        assert_eq!(end["status"], "decided", "{end}");
    }
}

/// With buyer tokens off but an admin token set, anonymous callers cannot read orders
/// (issue #21); a ticket they can, by its id (unguessable, and rejoining would answer
/// it anyway): the buyer's page finds its place again after a reload. With buyer
/// tokens on, the ticket's stream takes the token from the query, as browsers cannot
/// set headers on an EventSource; another buyer's token is told the ticket does not
/// exist.
#[tokio::test]
async fn a_buyer_page_can_follow_its_ticket_in_each_auth_mode() {
    const ADMIN: &str = "admin-token-for-tests";
    const SECRET: &str = "buyer-token-secret-for-tests-0123";
    let named = TestServer::start_with(
        crate::helpers::Backends::Embedded,
        json!({"admin_token": ADMIN}),
    )
    .await;
    let sale = queued_sale(&named, 5, 60_000, json!({})).await;
    let joined = join(&named, &sale, "ann").await;
    assert_eq!(joined.status, 202, "{}", joined.text);
    let ticket = joined.body["ticket"].as_str().unwrap();
    let read = named.get(&format!("/api/tickets/{ticket}")).await;
    assert_eq!(read.status, 200, "{}", read.text);
    assert_eq!(read.body["position"], 1);
    let first_event = |app: &TestServer, path: String| {
        let request = app.client.get(app.url(&path));
        async move {
            let mut reply = request.send().await.unwrap();
            let status = reply.status().as_u16();
            if status != 200 {
                return (status, String::new());
            }
            let chunk = reply.chunk().await.unwrap().unwrap_or_default();
            (status, String::from_utf8_lossy(&chunk).into_owned())
        }
    };
    let (status, event) = first_event(&named, format!("/api/tickets/{ticket}/events")).await;
    assert_eq!(status, 200);
    assert!(event.contains("event: ticket"), "{event}");

    let tokens = TestServer::start_with(
        crate::helpers::Backends::Embedded,
        json!({"admin_token": ADMIN, "auth_secret": SECRET}),
    )
    .await;
    let token = |buyer: &str| {
        let expires = chrono::Utc::now().timestamp() as u64 + 3600;
        flashsale::auth::mint_buyer_token(SECRET.as_bytes(), buyer, expires)
    };
    let sale = queued_sale(&tokens, 5, 60_000, json!({})).await;
    let joined = tokens
        .send(
            tokens
                .client
                .post(tokens.url(&format!("/api/sales/{sale}/queue")))
                .bearer_auth(token("bea"))
                .json(&json!({})),
        )
        .await;
    assert_eq!(joined.status, 202, "{}", joined.text);
    let ticket = joined.body["ticket"].as_str().unwrap();
    let events = format!("/api/tickets/{ticket}/events");
    let (status, event) =
        first_event(&tokens, format!("{events}?access_token={}", token("bea"))).await;
    assert_eq!(status, 200);
    assert!(event.contains(r#""position":1"#), "{event}");
    let (status, _) = first_event(&tokens, format!("{events}?access_token={}", token("cid"))).await;
    assert_eq!(
        status, 404,
        "another buyer's ticket does not exist for them"
    );
    let (status, _) = first_event(&tokens, events).await;
    assert_eq!(status, 401);
}

/// The order that takes the last unit closes the line at once: everyone still in it
/// hears `closed` then, not a `sold_out` each as their turns come.
#[tokio::test]
async fn the_last_unit_sold_closes_the_line_at_once() {
    let app = TestServer::start().await;
    let sale = queued_sale(&app, 2, 1_500, json!({"rate": "4/s"})).await;
    let mut tickets = Vec::new();
    for n in 0..5 {
        let reply = join(&app, &sale, &format!("buyer-{n}")).await;
        assert_eq!(reply.status, 202, "{}", reply.text);
        tickets.push(reply.body["ticket"].as_str().unwrap().to_string());
    }
    let mut ends = Vec::new();
    for ticket in &tickets {
        ends.push(final_state(&app, ticket).await);
    }
    for end in &ends[..2] {
        assert_eq!(end["order"]["status"], "paid", "{end}");
    }
    for end in &ends[2..] {
        assert_eq!(end["status"], "closed", "{end}");
        assert_eq!(end["refusal"]["code"], "sold_out", "{end}");
    }
    // All three told together, when the second unit sold: at 4/s the next decision
    // would have come 250 ms later.
    let at = |end: &Value| -> chrono::DateTime<chrono::Utc> {
        end["decided_at"].as_str().unwrap().parse().unwrap()
    };
    assert!(
        at(&ends[4]) - at(&ends[1]) < chrono::Duration::milliseconds(200),
        "{ends:?}"
    );
}

/// An ended sale's line leaves memory once nobody waits in it: its figures, tickets
/// and joins are answered from the store from then on, without reading it back.
#[tokio::test]
async fn an_ended_sales_line_leaves_memory() {
    let app = TestServer::spawn().await;
    let in_memory = || async {
        crate::metrics::Scrape::of(&app)
            .await
            .value("flashsale_lines_in_memory", &[])
    };
    let sale = app
        .create_sale(json!({
            "name": "short line",
            "stock": 10,
            "ends_at": in_ms(2_000),
            "queue": {"rate": "2/s"},
        }))
        .await;
    let sale = sale["id"].as_str().unwrap().to_string();
    let mut tickets = Vec::new();
    for n in 0..8 {
        let reply = join(&app, &sale, &format!("buyer-{n}")).await;
        assert_eq!(reply.status, 202, "{}", reply.text);
        tickets.push(reply.body["ticket"].as_str().unwrap().to_string());
    }
    assert_eq!(in_memory().await, Some(1.0));
    let last = final_state(&app, &tickets[7]).await;
    assert_eq!(last["status"], "closed", "{last}");
    assert_eq!(last["refusal"]["code"], "ended", "{last}");
    let mut left = false;
    for _ in 0..60 {
        if in_memory().await == Some(0.0) {
            left = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(left, "the ended line is still in memory");
    // From the store, as they were.
    let line = app.get(&format!("/api/sales/{sale}/queue")).await;
    assert_eq!(line.status, 200, "{}", line.text);
    assert_eq!(line.body["waiting"], 0);
    let (decided, closed) = (
        line.body["decided"].as_u64().unwrap(),
        line.body["closed"].as_u64().unwrap(),
    );
    assert_eq!(decided + closed, 8, "{}", line.text);
    assert!(decided >= 1 && closed >= 1, "{}", line.text);
    let first = app.get(&format!("/api/tickets/{}", tickets[0])).await;
    assert_eq!(first.body["status"], "decided", "{}", first.text);
    assert_eq!(first.body["order"]["status"], "paid", "{}", first.text);
    join(&app, &sale, "latecomer")
        .await
        .assert_problem(409, "ended");
    // None of that took the line up again.
    assert_eq!(in_memory().await, Some(0.0));
}

/// Joining again gets the buyer their ticket back even once the sale is sold out, and
/// after it ended and its line left memory (another device, a lost page): only those
/// who were never in the line are refused.
#[tokio::test]
async fn a_buyer_in_the_line_gets_their_ticket_back_sold_out_or_ended() {
    let app = TestServer::start().await;
    let sale = app
        .create_sale(json!({
            "name": "one unit",
            "stock": 1,
            "ends_at": in_ms(2_500),
            "queue": {},
        }))
        .await;
    let sale = sale["id"].as_str().unwrap().to_string();
    let first = join(&app, &sale, "ann").await;
    assert_eq!(first.status, 202, "{}", first.text);
    let ticket = first.body["ticket"].as_str().unwrap().to_string();
    let decided = final_state(&app, &ticket).await;
    assert_eq!(decided["order"]["status"], "paid", "{decided}");
    let mut ended = false;
    for phase in ["sold out", "ended"] {
        let again = join(&app, &sale, "ann").await;
        assert_eq!(again.status, 200, "{phase}: {}", again.text);
        assert_eq!(again.body["ticket"], json!(ticket), "{phase}");
        assert_eq!(again.body["status"], "decided", "{phase}");
        let code = if ended { "ended" } else { "sold_out" };
        join(&app, &sale, "bob").await.assert_problem(409, code);
        if !ended {
            // Past the end, and its line gone from memory.
            tokio::time::sleep(Duration::from_millis(3_000)).await;
            ended = true;
        }
    }
}
