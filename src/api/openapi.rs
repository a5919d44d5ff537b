//! The API's description (`GET /openapi.json`, OpenAPI 3.1 by utoipa, from the handlers'
//! own annotations) and an explorer to try it (`GET /docs`, Swagger UI, vendored into
//! the binary: no CDN, works offline).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use super::events::{Resync, SaleEvent, StockChange};
use super::queue::NewRate;
use super::requests::{AddStock, NewItem, NewQueue, NewSale, PurchaseRequest, RateLimits};
use super::views::OrderEventView;
use super::views::{
    HistoryEntry, ItemView, LineView, OrderDetail, OrderView, QueueView, RefusalView, SaleView,
    TicketView,
};
use crate::domain::{Admit, LineOrder, OrderStatus, SaleStatus, TicketStatus};

/// Every refusal: `application/problem+json` (RFC 9457) with a stable `code`.
#[derive(ToSchema)]
#[allow(dead_code)] // Described, not built: `error::Problem` writes the same fields.
pub struct Problem {
    /// Always `about:blank`.
    #[schema(rename = "type")]
    kind: String,
    /// The HTTP reason phrase.
    title: String,
    status: u16,
    /// The stable error code (`sold_out`, `rate_limited`, …).
    code: String,
    /// For people: what went wrong.
    detail: String,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "flashsale",
        description = "A flash-sale engine: every unit sold once, to buyers who may buy. \
                       Refusals are problem documents with a stable `code`."
    ),
    paths(
        super::sales::create_sale,
        super::sales::list_sales,
        super::sales::get_sale,
        super::events::sale_events,
        super::controls::end_sale,
        super::controls::pause_sale,
        super::controls::resume_sale,
        super::controls::add_stock,
        super::purchase::purchase,
        super::orders::get_order,
        super::orders::pay_order,
        super::orders::cancel_order,
        super::queue::join,
        super::queue::get_ticket,
        super::queue::ticket_events,
        super::queue::line_figures,
        super::queue::set_rate,
        super::operations::healthz,
        super::operations::readyz,
        super::operations::openapi_json,
        super::operations::metrics,
        super::pages::index,
        super::pages::admin,
        super::pages::asset,
    ),
    components(schemas(
        NewSale, NewItem, AddStock, RateLimits, PurchaseRequest, SaleView, ItemView, SaleStatus,
        OrderView, OrderDetail, HistoryEntry, OrderStatus, Problem, SaleEvent, StockChange,
        OrderEventView, Resync, NewQueue, Admit, LineOrder, QueueView, TicketView, TicketStatus,
        RefusalView, LineView, NewRate
    )),
    modifiers(&Credentials, &ProblemResponses, &AnyRoute),
    tags(
        (name = "sales", description = "Creating and reading sales"),
        (name = "controls", description = "An operator's controls of a running sale (admin)"),
        (name = "purchases", description = "Buying"),
        (name = "orders", description = "An order's life: read, pay, cancel"),
        (name = "queue", description = "A sale's line: join, follow a ticket, the line's figures and rate"),
        (name = "operations", description = "Probes, metrics and this document"),
        (name = "pages", description = "The buyer page and the operator dashboard"),
    )
)]
pub struct ApiDoc;

/// The two bearer credentials: buyer tokens (JWT) and the admin token.
struct Credentials;

impl Modify for Credentials {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "buyer_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A buyer's token (`sub` is the buyer), when buyer tokens are on",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The operator's admin token"))
                    .build(),
            ),
        );
    }
}

/// Each route's problem answers, from `problems::ROUTES`, one response per status whose
/// description names its codes (the annotations leave them out).
struct ProblemResponses;

impl Modify for ProblemResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use std::collections::BTreeMap;
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        for (method, path, groups) in super::problems::ROUTES {
            let Some(item) = openapi.paths.paths.get_mut(*path) else {
                continue;
            };
            let operation = match *method {
                "get" => item.get.as_mut(),
                "post" => item.post.as_mut(),
                _ => None,
            };
            let Some(operation) = operation else { continue };
            let mut by_status: BTreeMap<u16, Vec<String>> = BTreeMap::new();
            for problem in groups.iter().flat_map(|g| g.iter()) {
                by_status
                    .entry(problem.status.as_u16())
                    .or_default()
                    .push(format!("`{}`: {}", problem.code, problem.meaning));
            }
            for (status, codes) in by_status {
                let response = ResponseBuilder::new()
                    .description(codes.join("; "))
                    .content(
                        "application/problem+json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("Problem")))
                            .build(),
                    )
                    .build();
                operation
                    .responses
                    .responses
                    .insert(status.to_string(), response.into());
            }
        }
    }
}

/// The problems any route may answer, in the document's description.
struct AnyRoute;

impl Modify for AnyRoute {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let any: Vec<String> = super::problems::ANY_ROUTE
            .iter()
            .map(|p| format!("`{}` ({}): {}", p.code, p.status.as_u16(), p.meaning))
            .collect();
        let description = openapi.info.description.get_or_insert_with(String::new);
        description.push_str(&format!(" Any route may also answer {}.", any.join("; ")));
    }
}

/// The document, as served.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
