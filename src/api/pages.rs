//! The pages the binary serves itself (no build step, no CDN, works offline): the buyer
//! page at `/` and the operator dashboard at `/admin`, from `web/`, built in.

use axum::extract::Path;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};

use super::ApiError;
use super::problems;

const INDEX: &str = include_str!("../../web/index.html");
const ADMIN: &str = include_str!("../../web/admin.html");
/// (name, content type, body) of every asset.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/app.js"),
    ),
    (
        "admin.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/admin.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../web/style.css"),
    ),
];

/// The live sale page: the sales on offer, their stock live, Buy, seat maps, your orders.
#[utoipa::path(get, path = "/", tag = "pages",
    responses((status = 200, description = "The buyer page", body = String, content_type = "text/html")))]
pub(super) async fn index() -> Html<&'static str> {
    Html(INDEX)
}

/// The operator dashboard: live charts, creating sales, ending, pausing, adding stock
/// (its calls carry the admin token given on the page).
#[utoipa::path(get, path = "/admin", tag = "pages",
    responses((status = 200, description = "The operator dashboard", body = String, content_type = "text/html")))]
pub(super) async fn admin() -> Html<&'static str> {
    Html(ADMIN)
}

/// The pages' scripts and style sheet.
#[utoipa::path(get, path = "/assets/{file}", tag = "pages",
    params(("file" = String, Path, description = "`app.js`, `admin.js` or `style.css`")),
    responses(
        (status = 200, description = "The file", body = String)
    ))]
pub(super) async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => ApiError::new(problems::NOT_FOUND, "no such file").into_response(),
    }
}
