//! The typed HTTP client of flashsale's API: the views the server writes, read back.
//! `load`, `demo`, `check` and the tests all talk to a gateway through it.

use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;
use serde::de::DeserializeOwned;

pub use crate::api::requests::{NewSale, PurchaseRequest};
pub use crate::api::{ItemView, OrderDetail, OrderView, SaleView, TicketView};

/// A refusal as the API writes it (`application/problem+json`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Problem {
    pub status: u16,
    pub code: String,
    #[serde(default)]
    pub detail: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No HTTP answer (connection refused, reset, timed out).
    #[error("no answer from the gateway: {0}")]
    Transport(#[source] reqwest::Error),
    /// The gateway answered with a problem document.
    #[error("{} {}: {}", .0.status, .0.code, .0.detail)]
    Refused(Problem),
    /// An answer that is not what the API promises.
    #[error("unexpected answer ({status}): {reason}")]
    Unexpected { status: u16, reason: String },
}

impl ClientError {
    /// The problem's code, `transport` without an answer, `unexpected` for garbage.
    pub fn code(&self) -> &str {
        match self {
            ClientError::Transport(_) => "transport",
            ClientError::Refused(problem) => &problem.code,
            ClientError::Unexpected { .. } => "unexpected",
        }
    }

    /// The HTTP status, 0 without an answer.
    pub fn status(&self) -> u16 {
        match self {
            ClientError::Transport(_) => 0,
            ClientError::Refused(problem) => problem.status,
            ClientError::Unexpected { status, .. } => *status,
        }
    }
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    admin_token: Option<String>,
    /// Sent as `Authorization: Bearer` on buyer routes (servers with buyer tokens on).
    buyer_token: Option<String>,
    /// Signs payment confirmations as the payment service does.
    payment_secret: Option<String>,
    /// Sends each purchase with a random `X-Forwarded-For`, as a proxy in front of many
    /// clients would (load tests of a gateway that trusts this client as its proxy).
    random_forwarded_for: bool,
}

impl Client {
    /// A client of the gateway at `base_url` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base_url: &str) -> Client {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("a default HTTP client builds");
        Client::with_http(base_url, http)
    }

    /// The same, over an HTTP client of the caller's (pool size, timeouts).
    pub fn with_http(base_url: &str, http: reqwest::Client) -> Client {
        Client {
            http,
            base: base_url.trim_end_matches('/').to_string(),
            random_forwarded_for: false,
            admin_token: None,
            buyer_token: None,
            payment_secret: None,
        }
    }

    /// Sends `Authorization: Bearer <token>` on admin routes.
    /// Each purchase as from a random client address behind a proxy (see the field).
    pub fn with_random_forwarded_for(mut self, on: bool) -> Self {
        self.random_forwarded_for = on;
        self
    }

    pub fn with_admin_token(mut self, token: Option<String>) -> Client {
        self.admin_token = token;
        self
    }

    /// Buys and reads orders as the buyer this token names.
    pub fn with_buyer_token(mut self, token: Option<String>) -> Client {
        self.buyer_token = token;
        self
    }

    /// Confirms payments with the payment service's signature (else with the admin
    /// token, if any).
    pub fn with_payment_secret(mut self, secret: Option<String>) -> Client {
        self.payment_secret = secret;
        self
    }

    fn as_buyer(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.buyer_token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The underlying HTTP client, for requests the API does not type (probes, tests
    /// of malformed input).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub async fn create_sale(&self, sale: &NewSale) -> Result<SaleView, ClientError> {
        let mut request = self.http.post(self.url("/api/sales")).json(sale);
        if let Some(token) = &self.admin_token {
            request = request.bearer_auth(token);
        }
        answer(request.send().await, StatusCode::CREATED).await
    }

    pub async fn sale(&self, id: &str) -> Result<SaleView, ClientError> {
        let request = self.http.get(self.url(&format!("/api/sales/{id}")));
        answer(request.send().await, StatusCode::OK).await
    }

    /// Buys; 202 gives the order, anything else the refusal.
    pub async fn purchase(
        &self,
        sale_id: &str,
        purchase: &PurchaseRequest,
        key: Option<&str>,
    ) -> Result<OrderView, ClientError> {
        let mut request = self
            .http
            .post(self.url(&format!("/api/sales/{sale_id}/purchase")))
            .json(purchase);
        request = self.with_some_address(self.as_buyer(request));
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        answer(request.send().await, StatusCode::ACCEPTED).await
    }

    /// Joins a sale's line: the ticket, and whether it is new (202) or the buyer's
    /// ticket already (200).
    pub async fn join(
        &self,
        sale_id: &str,
        purchase: &PurchaseRequest,
    ) -> Result<(TicketView, bool), ClientError> {
        let request = self
            .http
            .post(self.url(&format!("/api/sales/{sale_id}/queue")))
            .json(purchase);
        let sent = self.with_some_address(self.as_buyer(request)).send().await;
        let new = sent
            .as_ref()
            .is_ok_and(|r| r.status() == StatusCode::ACCEPTED);
        let expected = if new {
            StatusCode::ACCEPTED
        } else {
            StatusCode::OK
        };
        Ok((answer(sent, expected).await?, new))
    }

    /// A ticket of the caller's.
    pub async fn ticket(&self, ticket: &str) -> Result<TicketView, ClientError> {
        let request = self.http.get(self.url(&format!("/api/tickets/{ticket}")));
        let request = self.with_some_address(self.as_buyer(request));
        answer(request.send().await, StatusCode::OK).await
    }

    /// With `with_random_forwarded_for`: a random `X-Forwarded-For` among 65,536
    /// addresses, many clients each coming back (as behind real proxies).
    fn with_some_address(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if !self.random_forwarded_for {
            return request;
        }
        let client = std::net::Ipv4Addr::new(10, fastrand::u8(..), fastrand::u8(..), 1);
        request.header("X-Forwarded-For", client.to_string())
    }

    pub async fn order(&self, id: &str) -> Result<OrderDetail, ClientError> {
        let request = self.http.get(self.url(&format!("/api/orders/{id}")));
        let request = self.with_some_address(self.as_buyer(request));
        answer(request.send().await, StatusCode::OK).await
    }

    /// Confirms payment as the payment service (signed) or the operator (admin token).
    pub async fn pay(&self, id: &str) -> Result<OrderDetail, ClientError> {
        let mut request = self.http.post(self.url(&format!("/api/orders/{id}/pay")));
        if let Some(secret) = &self.payment_secret {
            let now = chrono::Utc::now().timestamp();
            let signature = crate::auth::sign_payment(secret.as_bytes(), now, id, b"");
            request = request.header(crate::auth::SIGNATURE_HEADER, signature);
        } else if let Some(token) = &self.admin_token {
            request = request.bearer_auth(token);
        }
        answer(request.send().await, StatusCode::OK).await
    }

    pub async fn cancel(&self, id: &str) -> Result<OrderDetail, ClientError> {
        let request = self
            .http
            .post(self.url(&format!("/api/orders/{id}/cancel")));
        answer(self.as_buyer(request).send().await, StatusCode::OK).await
    }
}

/// Reads an answer: the view on `expected`, the problem document otherwise.
async fn answer<T: DeserializeOwned>(
    sent: Result<reqwest::Response, reqwest::Error>,
    expected: StatusCode,
) -> Result<T, ClientError> {
    let response = sent.map_err(ClientError::Transport)?;
    let status = response.status();
    let body = response.bytes().await.map_err(ClientError::Transport)?;
    let unexpected = |reason: String| ClientError::Unexpected {
        status: status.as_u16(),
        reason,
    };
    if status == expected {
        return serde_json::from_slice(&body).map_err(|e| unexpected(e.to_string()));
    }
    match serde_json::from_slice::<Problem>(&body) {
        Ok(problem) => Err(ClientError::Refused(problem)),
        Err(_) => Err(unexpected(String::from_utf8_lossy(&body).into_owned())),
    }
}
