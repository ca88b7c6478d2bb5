//! Who is calling: the bearer token (`Authorization: Bearer` or `?token=`),
//! verified, or the all-powerful caller of `--insecure-no-auth`.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use pgtide_auth::{AuthError, Claims, Role, Verifier};
use pgtide_core::Pattern;

use crate::hub::Visibility;
use crate::{ApiError, AppState};

/// How callers are authenticated.
#[derive(Clone)]
pub enum Auth {
    /// `--insecure-no-auth`: everyone is an admin.
    Insecure,
    /// JWTs checked by the verifier (HS256 secret or JWKS keys).
    Jwt(Verifier),
}

impl Auth {
    /// The caller of a request, or 401 with the contract's error body.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
    ) -> Result<Caller, ApiError> {
        let verifier = match self {
            Auth::Insecure => return Ok(Caller::new(Claims::insecure())),
            Auth::Jwt(v) => v,
        };
        let token = match headers.get(header::AUTHORIZATION) {
            Some(value) => {
                let value = value
                    .to_str()
                    .map_err(|_| unauthorized("the Authorization header is not valid text"))?;
                pgtide_auth::bearer(value).map_err(|e| unauthorized(e.to_string()))?
            }
            None => query_token.filter(|t| !t.is_empty()).ok_or_else(|| {
                unauthorized("missing token: send Authorization: Bearer <JWT> (or ?token=<JWT>)")
            })?,
        };
        match verifier.verify(token).await {
            Ok(claims) => Ok(Caller::new(claims)),
            Err(e @ AuthError::Jwks(_)) => {
                tracing::error!(error = %e, "JWKS unavailable");
                Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "token keys are unavailable; try again",
                ))
            }
            Err(e) => Err(unauthorized(e.to_string())),
        }
    }
}

/// A verified caller and what it may do.
#[derive(Debug, Clone)]
pub struct Caller {
    pub claims: Claims,
    pub admin: bool,
}

impl Caller {
    pub fn new(claims: Claims) -> Caller {
        Caller {
            admin: claims.is_admin(),
            claims,
        }
    }

    pub fn org_id(&self) -> Option<i64> {
        self.claims.org_id
    }

    pub fn visibility(&self) -> Visibility {
        Visibility {
            admin: self.admin,
            org_id: self.claims.org_id,
        }
    }

    /// What the caller may read: `None` is every org (admins).
    pub fn org_scope(&self) -> Option<Option<i64>> {
        if self.admin {
            None
        } else {
            Some(self.claims.org_id)
        }
    }

    pub fn may_subscribe(&self, pattern: &Pattern) -> bool {
        self.claims.may_subscribe(pattern)
    }

    pub fn may_publish(&self, topic: &str) -> bool {
        self.claims.may_publish(topic)
    }

    /// Whether the token may publish to every topic `pattern` matches.
    pub fn may_publish_all(&self, pattern: &Pattern) -> bool {
        self.claims.may_publish_all(pattern)
    }

    /// Whether the token's `subscribe` claim lets it read `topic`'s events.
    pub fn may_read_topic(&self, topic: &str) -> bool {
        self.claims.may_read_topic(topic)
    }

    /// The rule of `/ws` subscriptions, for reads of stored events: every
    /// requested pattern must be covered by the token's `subscribe` claim;
    /// a read wider than the grant is refused (403), never silently
    /// narrowed, and so is a read of every topic (`topics` absent) by a
    /// token with such a claim.
    pub fn require_readable(&self, topics: &[Pattern]) -> Result<(), ApiError> {
        let Some(grants) = &self.claims.subscribe else {
            return Ok(());
        };
        let may_read = || {
            if grants.is_empty() {
                "this token may read no topics".to_owned()
            } else {
                let list: Vec<&str> = grants.iter().map(Pattern::as_str).collect();
                format!("this token may read only {}", list.join(", "))
            }
        };
        if topics.is_empty() {
            return Err(forbidden(format!(
                "{}: name them (or narrower patterns) in topics",
                may_read()
            )));
        }
        match topics.iter().find(|p| !self.may_subscribe(p)) {
            Some(wide) => Err(forbidden(format!(
                "this token may not read {wide}; {}",
                may_read()
            ))),
            None => Ok(()),
        }
    }

    /// 403 unless the caller's role is at least `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.claims.role >= role {
            Ok(())
        } else {
            Err(forbidden(format!(
                "this needs the {} role; the token has {}",
                role.as_str(),
                self.claims.role.as_str()
            )))
        }
    }
}

/// The `token` query parameter, for clients that cannot set headers.
pub fn query_token(query: Option<&str>) -> Option<String> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == "token")
        .map(|(_, v)| v.to_owned())
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = query_token(parts.uri.query());
        state
            .auth
            .authenticate(&parts.headers, token.as_deref())
            .await
    }
}

/// 401 with the contract's body.
pub fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

/// 403 with the contract's body.
pub fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}
