//! The API description (issue "What people see", rule 5): `/openapi.json` describes
//! every route the router serves, each described route exists, and the explorer page is
//! served from the binary (no CDN).

use std::collections::BTreeSet;

use crate::helpers::TestServer;

/// Every `.route("PATH", METHOD(handler))` of the router's source, as (METHOD, PATH).
fn routes_in_the_router() -> BTreeSet<(String, String)> {
    let source = include_str!("../../src/api/mod.rs");
    let mut routes = BTreeSet::new();
    for piece in source.split(".route(").skip(1) {
        let Some(path) = piece
            .trim_start()
            .strip_prefix('"')
            .and_then(|p| p.split('"').next())
        else {
            continue;
        };
        let rest = piece
            .split_once(',')
            .map(|(_, r)| r.trim_start())
            .unwrap_or("");
        let method = rest.split('(').next().unwrap_or("").trim();
        if ["get", "post", "put", "delete", "patch"].contains(&method) {
            routes.insert((method.to_string(), path.to_string()));
        }
    }
    routes
}

#[tokio::test]
async fn every_route_of_the_router_is_described_and_every_described_route_exists() {
    let app = TestServer::start().await;
    let doc = app.get("/openapi.json").await;
    assert_eq!(doc.status, 200, "{}", doc.text);
    assert!(
        doc.body["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.")),
        "{}",
        doc.text
    );
    let described: BTreeSet<(String, String)> = doc.body["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect();
    let served = routes_in_the_router();
    assert!(served.len() >= 9, "the source scan found {served:?}");
    let missing: Vec<_> = served.difference(&described).collect();
    assert!(
        missing.is_empty(),
        "routes without a description: {missing:?}"
    );

    // Each described route is served: not the router's 404 `not_found` or 405.
    for (method, path) in &described {
        let url = app.url(
            &path
                .replace("{id}", "no-such-id")
                .replace("{file}", "app.js"),
        );
        let request = match method.as_str() {
            "get" => app.client.get(url),
            "post" => app
                .client
                .post(url)
                .header("content-type", "application/json")
                .body("{}"),
            other => panic!("unexpected method {other}"),
        };
        let reply = app.send(request).await;
        assert_ne!(reply.status, 405, "{method} {path}: {}", reply.text);
        assert!(
            !(reply.status == 404 && reply.code() == "not_found"),
            "{method} {path} is described but not served"
        );
    }
    // Every refusal is described with its problem document.
    let purchase = &doc.body["paths"]["/api/sales/{id}/purchase"]["post"]["responses"];
    for status in ["202", "400", "409", "429", "503"] {
        assert!(
            purchase.get(status).is_some(),
            "purchase: no {status} in {purchase}"
        );
    }
    assert!(doc.body["components"]["schemas"]["Problem"]["properties"]["code"].is_object());
}

#[tokio::test]
async fn the_explorer_is_served_from_the_binary() {
    let app = TestServer::start().await;
    let page = app.get("/docs/").await;
    assert_eq!(page.status, 200, "{}", page.text);
    assert!(page.text.contains("swagger"), "{}", page.text);
    // Its scripts come from this server, not a CDN.
    assert!(!page.text.contains("src=\"http"), "{}", page.text);
    let script = app.get("/docs/swagger-ui-bundle.js").await;
    assert_eq!(script.status, 200);
    assert!(script.text.len() > 100_000, "the bundle is vendored");
}

/// The event stream is described event by event (issue #22 item 8): its 200 is
/// `text/event-stream` with an `itemSchema` whose alternatives name each event and give
/// its `data` (JSON) a schema, not a plain string.
#[tokio::test]
async fn the_event_stream_is_described_event_by_event() {
    let app = TestServer::spawn().await;
    let doc = app.get("/openapi.json").await;
    assert_eq!(doc.status, 200, "{}", doc.text);
    let ok = &doc.body["paths"]["/api/sales/{id}/events"]["get"]["responses"]["200"];
    let content = ok["content"].as_object().expect("content");
    assert_eq!(
        content.keys().collect::<Vec<_>>(),
        ["text/event-stream"],
        "{ok}"
    );
    let stream = &content["text/event-stream"];
    // `schema` would describe the whole stream (and a string is what was wrong).
    assert!(stream.get("schema").is_none(), "{stream}");
    assert_eq!(
        stream["itemSchema"]["$ref"], "#/components/schemas/SaleEvent",
        "{stream}"
    );
    let schemas = &doc.body["components"]["schemas"];
    let events = schemas["SaleEvent"]["oneOf"].as_array().expect("oneOf");
    let mut described = Vec::new();
    for event in events {
        let name = event["properties"]["event"]["enum"][0].as_str().unwrap();
        let data = &event["properties"]["data"];
        assert_eq!(data["type"], "string", "{event}");
        assert_eq!(data["contentMediaType"], "application/json", "{event}");
        let schema = data["contentSchema"]["$ref"].as_str().unwrap();
        let component = schema.strip_prefix("#/components/schemas/").unwrap();
        assert!(
            schemas[component].is_object(),
            "{schema} is not a component"
        );
        described.push((name, component));
    }
    assert_eq!(
        described,
        [
            ("sale", "SaleView"),
            ("stock", "StockChange"),
            ("order", "OrderEvent"),
            ("resync", "Resync")
        ]
    );
}
