//! Minting HS256 tokens, for `pgtide token` and the ready admin token that
//! `pgtide dev` prints.
//!
//! The claims are written by [`Claims::to_json`], the same canonical form the
//! verifier reads, so whatever is minted here verifies to the same claims.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use pgtide_core::Pattern;
use serde_json::Value;

use crate::claims::unix_now;
use crate::{AuthError, Claims, Result, Role};

/// What a minted token should say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    pub sub: String,
    pub org_id: Option<i64>,
    pub role: Role,
    /// `None` leaves the claim out (no restriction); `Some(vec![])` allows
    /// no subscription at all.
    pub subscribe: Option<Vec<Pattern>>,
    /// `None` leaves the claim out (the role decides).
    pub publish: Option<Vec<Pattern>>,
    pub sql: bool,
    /// Lifetime from now; `None` mints a token that never expires.
    pub ttl: Option<Duration>,
}

impl TokenRequest {
    /// A `read` token for `sub`, with no org, no restrictions, no SQL and no
    /// expiry; set the other fields as needed.
    pub fn new(sub: impl Into<String>) -> TokenRequest {
        TokenRequest {
            sub: sub.into(),
            org_id: None,
            role: Role::Read,
            subscribe: None,
            publish: None,
            sql: false,
            ttl: None,
        }
    }
}

/// Mints an HS256 token signed with `secret`, carrying `iat` and, with a
/// `ttl`, `exp`.
pub fn mint_hs256(secret: &str, request: &TokenRequest) -> Result<String> {
    if request.sub.is_empty() {
        return Err(AuthError::InvalidClaims("sub is empty".into()));
    }
    let now = unix_now();
    let exp = match request.ttl {
        None => None,
        Some(ttl) => Some(
            i64::try_from(ttl.as_secs())
                .ok()
                .and_then(|secs| now.checked_add(secs))
                .ok_or_else(|| AuthError::InvalidClaims("ttl is too long".into()))?,
        ),
    };
    let claims = Claims {
        sub: request.sub.clone(),
        org_id: request.org_id,
        role: request.role,
        subscribe: request.subscribe.clone(),
        publish: request.publish.clone(),
        sql: request.sql,
        exp,
    };
    let mut json = claims.to_json();
    if let Value::Object(map) = &mut json {
        map.insert("iat".into(), Value::from(now));
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| AuthError::InvalidClaims(format!("cannot encode the token: {e}")))
}

/// Signs exactly these claims with HS256, unchecked: for tests and tools
/// that need tokens `pgtide token` would not make (already expired, odd claims).
pub fn sign_hs256_claims(secret: &str, claims: &Value) -> Result<String> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| AuthError::Malformed(format!("cannot sign the claims: {e}")))
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::json;

    use super::*;

    fn parts(token: &str) -> (Value, Value) {
        let mut it = token.split('.');
        let mut decode = || -> Value {
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap()).unwrap()
        };
        (decode(), decode())
    }

    #[test]
    fn mints_the_canonical_claims() {
        let request = TokenRequest {
            org_id: Some(3),
            role: Role::Admin,
            subscribe: Some(vec![Pattern::parse("a/**").unwrap()]),
            ttl: Some(Duration::from_secs(60)),
            ..TokenRequest::new("svc")
        };
        let token = mint_hs256("s", &request).unwrap();
        let (header, payload) = parts(&token);
        assert_eq!(header, json!({"alg": "HS256", "typ": "JWT"}));
        let iat = payload["iat"].as_i64().unwrap();
        assert!((iat - unix_now()).abs() <= 5);
        assert_eq!(payload["exp"].as_i64(), Some(iat + 60));
        assert_eq!(payload["sub"], "svc");
        assert_eq!(payload["org_id"].as_i64(), Some(3));
        assert_eq!(payload["role"], "admin");
        assert_eq!(payload["subscribe"], json!(["a.**"]));
        for absent in ["publish", "sql", "nbf"] {
            assert!(payload.get(absent).is_none(), "{absent}");
        }
    }

    #[test]
    fn refuses_what_cannot_be_a_token() {
        assert_eq!(
            mint_hs256("s", &TokenRequest::new("")),
            Err(AuthError::InvalidClaims("sub is empty".into()))
        );
        let forever = TokenRequest {
            ttl: Some(Duration::from_secs(u64::MAX)),
            ..TokenRequest::new("x")
        };
        assert_eq!(
            mint_hs256("s", &forever),
            Err(AuthError::InvalidClaims("ttl is too long".into()))
        );
    }
}
