//! Buyer tokens: JWTs with `sub` (the buyer) and `exp`, checked by jsonwebtoken.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::AuthError;
use crate::domain::valid_user_id;

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
}

/// Verifies buyer tokens with one key.
pub struct BuyerTokens {
    key: DecodingKey,
    validation: Validation,
}

/// Who must have issued a buyer token, and for whom (`auth_issuer`, `auth_audience`):
/// when set, a token without that `iss` / `aud` is refused, so that a token the same
/// identity provider issued for another service does not buy here.
#[derive(Debug, Clone, Default)]
pub struct TokenScope {
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

impl BuyerTokens {
    pub fn hs256(secret: &[u8]) -> BuyerTokens {
        Self::with(DecodingKey::from_secret(secret), &[Algorithm::HS256])
    }

    /// An identity provider's public key: RSA (RS256/384/512) or EC (ES256/384).
    pub fn public_key(pem: &[u8]) -> Result<BuyerTokens, AuthError> {
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            return Ok(Self::with(
                key,
                &[Algorithm::RS256, Algorithm::RS384, Algorithm::RS512],
            ));
        }
        if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            return Ok(Self::with(key, &[Algorithm::ES256, Algorithm::ES384]));
        }
        Err(AuthError::Setting(
            "auth_public_key: not an RSA or EC public key in PEM".into(),
        ))
    }

    fn with(key: DecodingKey, algorithms: &[Algorithm]) -> BuyerTokens {
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms.to_vec();
        validation.set_required_spec_claims(&["exp", "sub"]);
        // Clocks of the identity provider and of this server differ by a little.
        validation.leeway = 30;
        validation.validate_aud = false;
        // A token not valid yet is refused too (its `nbf`, when it has one).
        validation.validate_nbf = true;
        BuyerTokens { key, validation }
    }

    /// Requires the scope's issuer and audience, when set.
    pub fn scoped(mut self, scope: &TokenScope) -> BuyerTokens {
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = &scope.issuer {
            self.validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        if let Some(audience) = &scope.audience {
            self.validation.set_audience(&[audience]);
            self.validation.validate_aud = true;
            required.push("aud");
        }
        self.validation.set_required_spec_claims(&required);
        self
    }

    /// The buyer the token names.
    pub fn verify(&self, token: &str) -> Result<String, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token.as_bytes(), &self.key, &self.validation)
            .map_err(|e| AuthError::Invalid(format!("buyer token refused: {e}")))?;
        let buyer = data.claims.sub;
        if !valid_user_id(&buyer) {
            return Err(AuthError::Invalid(
                "the token's `sub` is not a buyer id (1 to 128 characters, no control \
                 characters)"
                    .into(),
            ));
        }
        Ok(buyer)
    }
}

/// Mints an HS256 buyer token (`flashsale token`, demos, tests).
pub fn mint(secret: &[u8], buyer: &str, expires_at_secs: u64) -> String {
    let claims = Claims {
        sub: buyer.to_string(),
        exp: expires_at_secs,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("HS256 signing does not fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn in_an_hour() -> u64 {
        jsonwebtoken::get_current_timestamp() + 3600
    }

    #[test]
    fn a_token_names_its_buyer() {
        let tokens = BuyerTokens::hs256(SECRET);
        assert_eq!(
            tokens.verify(&mint(SECRET, "ann", in_an_hour())),
            Ok("ann".into())
        );
    }

    #[test]
    fn expired_forged_and_malformed_tokens_are_refused() {
        let tokens = BuyerTokens::hs256(SECRET);
        let expired = mint(SECRET, "ann", jsonwebtoken::get_current_timestamp() - 120);
        let forged = mint(b"another secret, just as long....", "ann", in_an_hour());
        for token in [expired.as_str(), forged.as_str(), "not.a.token", ""] {
            assert!(tokens.verify(token).is_err(), "{token} was accepted");
        }
        // A token without `exp` is refused, however well signed.
        let no_exp = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "ann"}),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert!(tokens.verify(&no_exp).is_err());
        // `alg: none` and other algorithms than the key's are refused.
        let mut parts: Vec<String> = mint(SECRET, "ann", in_an_hour())
            .split('.')
            .map(String::from)
            .collect();
        parts[0] = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0".into(); // {"alg":"none","typ":"JWT"}
        parts[2] = String::new();
        assert!(tokens.verify(&parts.join(".")).is_err());
    }

    #[test]
    fn a_sub_that_is_no_buyer_id_is_refused() {
        let tokens = BuyerTokens::hs256(SECRET);
        assert!(tokens.verify(&mint(SECRET, "", in_an_hour())).is_err());
        assert!(tokens.verify(&mint(SECRET, "a\nb", in_an_hour())).is_err());
    }

    fn signed(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    /// Issue #21: `nbf` always; `iss` and `aud` when configured.
    #[test]
    fn not_yet_valid_and_out_of_scope_tokens_are_refused() {
        let exp = in_an_hour();
        let later = jsonwebtoken::get_current_timestamp() + 600;
        let tokens = BuyerTokens::hs256(SECRET);
        assert!(
            tokens
                .verify(&signed(
                    serde_json::json!({"sub": "ann", "exp": exp, "nbf": later})
                ))
                .is_err()
        );

        let scoped = BuyerTokens::hs256(SECRET).scoped(&TokenScope {
            issuer: Some("https://id.example".into()),
            audience: Some("flashsale".into()),
        });
        let good = serde_json::json!({"sub": "ann", "exp": exp,
            "iss": "https://id.example", "aud": "flashsale"});
        assert_eq!(scoped.verify(&signed(good.clone())), Ok("ann".into()));
        for (claim, value) in [
            ("iss", serde_json::json!("https://other.example")),
            ("aud", serde_json::json!("another-service")),
            ("iss", serde_json::Value::Null),
            ("aud", serde_json::Value::Null),
        ] {
            let mut claims = good.clone();
            if value.is_null() {
                claims.as_object_mut().unwrap().remove(claim);
            } else {
                claims[claim] = value;
            }
            assert!(scoped.verify(&signed(claims.clone())).is_err(), "{claims}");
        }
        // Unscoped, a token that names an audience is still accepted.
        assert_eq!(tokens.verify(&signed(good)), Ok("ann".into()));
    }
}
