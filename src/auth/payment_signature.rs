//! The payment service's proof: `Flashsale-Signature: t=<unix seconds>,v1=<hex>` where
//! the hex is HMAC-SHA256 with the payment secret of `<t>.<order id>.<body>` (the way
//! payment webhooks are signed). The order id is signed too, so a signature for one
//! order cannot pay another; `t` must be within the tolerance of this server's clock,
//! so a captured request cannot be replayed later (paying twice is harmless anyway).

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::AuthError;

pub const SIGNATURE_HEADER: &str = "flashsale-signature";

pub struct PaymentSignatures {
    secret: Box<[u8]>,
    tolerance: Duration,
}

fn mac(secret: &[u8], timestamp: i64, order_id: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(order_id.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The header value the payment service sends for `order_id` and `body` at `timestamp`.
pub fn sign_payment(secret: &[u8], timestamp: i64, order_id: &str, body: &[u8]) -> String {
    let tag = mac(secret, timestamp, order_id, body)
        .finalize()
        .into_bytes();
    format!("t={timestamp},v1={}", hex::encode(tag))
}

impl PaymentSignatures {
    pub fn new(secret: &[u8], tolerance: Duration) -> PaymentSignatures {
        PaymentSignatures {
            secret: secret.into(),
            tolerance,
        }
    }

    pub fn verify(
        &self,
        header: &str,
        order_id: &str,
        body: &[u8],
        now_secs: i64,
    ) -> Result<(), AuthError> {
        let malformed = || {
            AuthError::Invalid(format!(
                "{SIGNATURE_HEADER} must be `t=<unix seconds>,v1=<hex HMAC-SHA256>`"
            ))
        };
        let mut timestamp = None;
        let mut tags = Vec::new();
        for part in header.split(',') {
            match part.trim().split_once('=') {
                Some(("t", t)) => timestamp = Some(t.parse::<i64>().map_err(|_| malformed())?),
                Some(("v1", tag)) => tags.push(hex::decode(tag).map_err(|_| malformed())?),
                _ => {}
            }
        }
        let timestamp = timestamp.ok_or_else(malformed)?;
        if tags.is_empty() {
            return Err(malformed());
        }
        if now_secs.abs_diff(timestamp) > self.tolerance.as_secs() {
            return Err(AuthError::Invalid(format!(
                "the payment signature's timestamp is more than {} s from this server's clock",
                self.tolerance.as_secs()
            )));
        }
        // Several v1 tags: a payment service rotating its secret signs with both.
        let expected = mac(&self.secret, timestamp, order_id, body);
        if tags
            .iter()
            .any(|tag| expected.clone().verify_slice(tag).is_ok())
        {
            Ok(())
        } else {
            Err(AuthError::Invalid(
                "the payment signature does not match".into(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"payment-secret-0123";

    fn signatures() -> PaymentSignatures {
        PaymentSignatures::new(SECRET, Duration::from_secs(300))
    }

    #[test]
    fn a_signed_payment_is_accepted() {
        let header = sign_payment(SECRET, 1_000, "o1", b"{}");
        assert_eq!(signatures().verify(&header, "o1", b"{}", 1_100), Ok(()));
    }

    #[test]
    fn another_order_another_body_or_secret_is_refused() {
        let header = sign_payment(SECRET, 1_000, "o1", b"{}");
        assert!(signatures().verify(&header, "o2", b"{}", 1_000).is_err());
        assert!(signatures().verify(&header, "o1", b"{ }", 1_000).is_err());
        let other = sign_payment(b"another-secret-xyz", 1_000, "o1", b"{}");
        assert!(signatures().verify(&other, "o1", b"{}", 1_000).is_err());
    }

    #[test]
    fn an_old_or_future_timestamp_is_refused() {
        let header = sign_payment(SECRET, 1_000, "o1", b"");
        assert!(signatures().verify(&header, "o1", b"", 1_301).is_err());
        assert!(signatures().verify(&header, "o1", b"", 699).is_err());
        assert!(signatures().verify(&header, "o1", b"", 1_300).is_ok());
    }

    #[test]
    fn malformed_headers_are_refused() {
        for header in ["", "t=1", "v1=00", "t=x,v1=00", "t=1000,v1=zz", "garbage"] {
            assert!(
                signatures().verify(header, "o1", b"", 1_000).is_err(),
                "{header}"
            );
        }
    }
}
