//! Who is calling pgtide and what they may do.
//!
//! Every transport (HTTP, WebSocket, Socket.IO, WebRTC) authenticates the same
//! way: a JWT, signed with the HS256 secret or with an RS256/ES256 key from a
//! JWKS file or URL, whose claims name the caller's org, role and the topic
//! patterns it may subscribe and publish to. This crate turns a token into
//! verified [`Claims`] and answers the permission questions on them; it knows
//! nothing about HTTP beyond the `Authorization: Bearer` form ([`bearer`]).
//!
//! # Layout
//! - [`claims`]: [`Role`] and [`Claims`]: reading the claim set of a token,
//!   strictly, and the checks built on it (`may_subscribe`, `may_publish`,
//!   `may_see`).
//! - [`jws`]: the compact JWS form (`header.payload.signature`), split and
//!   decoded, before any key is chosen.
//! - [`jwks`]: the RS256/ES256 key set from a file or URL, cached and
//!   refetched when a token names a key it does not know.
//! - [`verifier`]: [`Verifier`], the configured way to check a token, end to
//!   end: algorithm, key, signature, then claims and times.
//! - [`mint`]: [`mint_hs256`], the tokens `pgtide token` prints.

pub mod claims;
pub mod jwks;
pub mod jws;
pub mod mint;
pub mod verifier;

#[cfg(test)]
mod test_keys;

pub use claims::{Claims, Role};
pub use jwks::JwksVerifier;
pub use mint::{TokenRequest, mint_hs256, sign_hs256_claims};
pub use verifier::{Secret, Verifier};

/// Why a token was not accepted. Every message is one line that a client may
/// see: none repeats the token, the secret or key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token: send `Authorization: Bearer <JWT>`")]
    Missing,
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is signed with an unknown key: {0}")]
    UnknownKey(String),
    #[error("invalid token claims: {0}")]
    InvalidClaims(String),
    #[error("JWKS: {0}")]
    Jwks(String),
}

pub type Result<T, E = AuthError> = std::result::Result<T, E>;

/// The token of an `Authorization` header value of the form `Bearer <token>`
/// (the scheme in any case, as RFC 7235 allows). An empty header or an empty
/// token is [`AuthError::Missing`]; another scheme is [`AuthError::Malformed`],
/// so a client that sent `Basic …` learns why it was refused.
pub fn bearer(header_value: &str) -> Result<&str> {
    let value = header_value.trim();
    if value.is_empty() {
        return Err(AuthError::Missing);
    }
    let (scheme, rest) = value
        .split_once(|c: char| c.is_ascii_whitespace())
        .unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed(
            "the Authorization header must be `Bearer <JWT>`".into(),
        ));
    }
    let token = rest.trim();
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_extracts_the_token() {
        assert_eq!(bearer("Bearer abc.def.ghi"), Ok("abc.def.ghi"));
        assert_eq!(bearer("bearer   abc.def.ghi  "), Ok("abc.def.ghi"));
        assert_eq!(bearer("BEARER\tx"), Ok("x"));
        assert_eq!(bearer(""), Err(AuthError::Missing));
        assert_eq!(bearer("   "), Err(AuthError::Missing));
        assert_eq!(bearer("Bearer"), Err(AuthError::Missing));
        assert_eq!(bearer("Bearer   "), Err(AuthError::Missing));
        assert!(matches!(
            bearer("Basic dXNlcjpwYXNz"),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(bearer("Bearerx"), Err(AuthError::Malformed(_))));
    }

    #[test]
    fn error_messages_are_one_line() {
        let all = [
            AuthError::Missing,
            AuthError::Malformed("m".into()),
            AuthError::BadSignature,
            AuthError::Expired,
            AuthError::UnknownKey("k".into()),
            AuthError::InvalidClaims("c".into()),
            AuthError::Jwks("j".into()),
        ];
        for err in all {
            let text = err.to_string();
            assert!(!text.is_empty() && !text.contains('\n'), "{text:?}");
        }
    }
}
