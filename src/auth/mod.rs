//! Who is calling (docs/architecture.md §3, "Who is the buyer"): buyers by a signed token (JWT),
//! the payment service by an HMAC signature of what it sends, operators by the admin
//! token. The API's extractors (`api::caller`) ask `Auth`; nothing here knows HTTP
//! beyond header values.
//!
//! With none of the three configured the server is in development mode: the buyer is
//! the body's `user_id`, every route is open, and `serve` refuses to listen beyond
//! loopback (unless `--insecure`).

mod buyer_token;
mod payment_signature;

use std::path::Path;
use std::time::Duration;

pub use buyer_token::{BuyerTokens, Claims, TokenScope, mint as mint_buyer_token};
pub use payment_signature::{PaymentSignatures, SIGNATURE_HEADER, sign_payment};

/// Shortest admin token accepted: anything shorter can be guessed.
pub const MIN_ADMIN_TOKEN: usize = 16;
/// Shortest HS256 secret accepted (RFC 7518 §3.2: a key as long as the hash, 256 bits).
pub const MIN_AUTH_SECRET: usize = 32;
/// Shortest payment secret accepted.
pub const MIN_PAYMENT_SECRET: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No credential where one is needed.
    #[error("{0}")]
    Missing(&'static str),
    /// A credential that is malformed, expired, or signed by someone else.
    #[error("{0}")]
    Invalid(String),
    /// A setting that cannot be used (a key file that does not parse).
    #[error("{0}")]
    Setting(String),
}

/// The credentials a server checks, built once at start.
pub struct Auth {
    admin_token: Option<Box<[u8]>>,
    buyers: Option<BuyerTokens>,
    payments: Option<PaymentSignatures>,
}

/// How buyers prove who they are.
pub enum BuyerKey<'a> {
    /// HS256 with a shared secret.
    Secret(&'a str),
    /// RS256 / ES256 with an identity provider's public key (PEM file).
    PublicKeyFile(&'a Path),
}

impl Auth {
    pub fn new(
        admin_token: Option<&str>,
        buyer_key: Option<BuyerKey<'_>>,
        buyer_scope: &TokenScope,
        payment_secret: Option<&str>,
        payment_tolerance: Duration,
    ) -> Result<Auth, AuthError> {
        let buyers = match buyer_key {
            None => None,
            Some(BuyerKey::Secret(secret)) => Some(BuyerTokens::hs256(secret.as_bytes())),
            Some(BuyerKey::PublicKeyFile(path)) => {
                let pem = std::fs::read(path).map_err(|e| {
                    AuthError::Setting(format!("cannot read {}: {e}", path.display()))
                })?;
                Some(BuyerTokens::public_key(&pem)?)
            }
        }
        .map(|tokens| tokens.scoped(buyer_scope));
        Ok(Auth {
            admin_token: admin_token.map(|t| t.as_bytes().into()),
            buyers,
            payments: payment_secret
                .map(|secret| PaymentSignatures::new(secret.as_bytes(), payment_tolerance)),
        })
    }

    /// Development mode: nothing configured, every route open.
    pub fn open() -> Auth {
        Auth {
            admin_token: None,
            buyers: None,
            payments: None,
        }
    }

    /// Nothing configured: the body names the buyer and every route is open.
    pub fn is_open(&self) -> bool {
        self.admin_token.is_none() && self.buyers.is_none() && self.payments.is_none()
    }

    /// Whether buyers must show a token (else the body's `user_id` is the buyer).
    pub fn buyers_need_tokens(&self) -> bool {
        self.buyers.is_some()
    }

    /// Whether `bearer` is the admin token (compared in constant time). Without a
    /// configured token nobody is admin: open routes do not ask.
    pub fn is_admin(&self, bearer: &str) -> bool {
        self.admin_token
            .as_deref()
            .is_some_and(|expected| constant_time_eq(bearer.as_bytes(), expected))
    }

    /// The buyer a token names (its `sub`), if buyer tokens are configured.
    pub fn buyer(&self, bearer: &str) -> Result<String, AuthError> {
        match &self.buyers {
            Some(tokens) => tokens.verify(bearer),
            None => Err(AuthError::Invalid(
                "buyer tokens are not in use here".into(),
            )),
        }
    }

    /// Checks the payment service's signature of `order_id` and `body`.
    pub fn payment(
        &self,
        signature: &str,
        order_id: &str,
        body: &[u8],
        now_secs: i64,
    ) -> Result<(), AuthError> {
        match &self.payments {
            Some(payments) => payments.verify(signature, order_id, body, now_secs),
            None => Err(AuthError::Invalid(
                "payment signatures are not in use here (no payment secret)".into(),
            )),
        }
    }
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
