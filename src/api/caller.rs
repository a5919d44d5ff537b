//! Who is calling, decided from the headers before any body is read (so a caller
//! without credentials gets 401 before a malformed body could get 400).

use std::net::{IpAddr, Ipv6Addr};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};

use super::AppState;
use super::error::ApiError;
use super::problems;
use crate::auth::AuthError;
use crate::protect::{Arrival, client_ip};

/// `Authorization: Bearer <token>`, the scheme compared without case (RFC 9110 §11.1).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

pub fn unauthorized(error: AuthError) -> ApiError {
    ApiError::new(problems::UNAUTHORIZED, error.to_string())
}

pub fn forbidden(detail: &'static str) -> ApiError {
    ApiError::new(problems::FORBIDDEN, detail)
}

/// The operator: admin routes take this first.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if state.auth.is_open() {
            return Ok(Admin);
        }
        match bearer(&parts.headers) {
            Some(token) if state.auth.is_admin(token) => Ok(Admin),
            Some(_) => Err(unauthorized(AuthError::Invalid(
                "this route needs the admin token".into(),
            ))),
            None => Err(unauthorized(AuthError::Missing(
                "this route needs `Authorization: Bearer <admin token>`",
            ))),
        }
    }
}

/// The caller of a buyer route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Buyer tokens are off: the body's `user_id` names the buyer.
    Anyone,
    /// A buyer, by the `sub` of a valid token.
    Buyer(String),
    /// The operator, with the admin token.
    Admin,
}

impl Caller {
    /// Whether this caller may see and act on an order of `owner`. Another buyer's
    /// order is answered as missing, so that order ids cannot be probed.
    pub fn may_see(&self, owner: &str) -> bool {
        match self {
            Caller::Buyer(buyer) => buyer == owner,
            Caller::Anyone | Caller::Admin => true,
        }
    }

    /// The caller a token names (`None`: no credentials), as from `Authorization`;
    /// event streams also take it from the query (browsers cannot set headers on an
    /// EventSource).
    pub fn from_token(state: &AppState, token: Option<&str>) -> Result<Caller, ApiError> {
        if let Some(token) = token
            && state.auth.is_admin(token)
        {
            return Ok(Caller::Admin);
        }
        if !state.auth.buyers_need_tokens() {
            return Ok(Caller::Anyone);
        }
        let token = token.ok_or_else(|| {
            unauthorized(AuthError::Missing(
                "buyer routes need `Authorization: Bearer <token>`",
            ))
        })?;
        state
            .auth
            .buyer(token)
            .map(Caller::Buyer)
            .map_err(unauthorized)
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Caller::from_token(state, bearer(&parts.headers))
    }
}

/// The client's address (`crate::protect::client_ip`: the peer, or what a trusted
/// proxy says). A request that did not come through the server's accept loop (no
/// `Arrival` recorded) counts as loopback.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, std::convert::Infallible> {
        let peer = parts
            .extensions
            .get::<Arrival>()
            .map(|arrival| arrival.peer.ip())
            .unwrap_or(IpAddr::V6(Ipv6Addr::LOCALHOST));
        Ok(ClientIp(client_ip(
            peer,
            &parts.headers,
            &state.trusted_proxies,
        )))
    }
}
