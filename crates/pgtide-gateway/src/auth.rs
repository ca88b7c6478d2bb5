//! Who is calling: the bearer token (header or `?token=`), verified, or the
//! all-powerful caller of `--insecure-no-auth`.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use pgtide_core::Pattern;

use crate::hub::Visibility;
use crate::{ApiError, AppState};

/// How callers are authenticated.
#[derive(Clone)]
pub enum Auth {
    /// `--insecure-no-auth`: everyone is an admin.
    Insecure,
}

impl Auth {
    /// The caller of a request, or 401 with the contract's error body.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
    ) -> Result<Caller, ApiError> {
        match self {
            Auth::Insecure => {
                let _ = (headers.get(header::AUTHORIZATION), query_token);
                Ok(Caller::insecure())
            }
        }
    }
}

/// A verified caller and what it may do.
#[derive(Debug, Clone)]
pub struct Caller {
    pub sub: String,
    pub admin: bool,
    pub org: Option<i64>,
    pub subscribe: Option<Vec<Pattern>>,
    pub publish: Option<Vec<Pattern>>,
}

impl Caller {
    pub fn insecure() -> Caller {
        Caller {
            sub: "insecure".into(),
            admin: true,
            org: None,
            subscribe: None,
            publish: None,
        }
    }

    pub fn org_id(&self) -> Option<i64> {
        self.org
    }

    pub fn visibility(&self) -> Visibility {
        Visibility {
            admin: self.admin,
            org_id: self.org,
        }
    }

    pub fn may_subscribe(&self, pattern: &Pattern) -> bool {
        match &self.subscribe {
            None => true,
            Some(allowed) => allowed.iter().any(|a| a.as_str() == "**" || a == pattern),
        }
    }

    /// What the caller may read: `None` is every org (admins).
    pub fn org_scope(&self) -> Option<Option<i64>> {
        if self.admin { None } else { Some(self.org) }
    }

    pub fn may_publish(&self, topic: &str) -> bool {
        match &self.publish {
            None => true,
            Some(allowed) => allowed.iter().any(|a| a.matches(topic)),
        }
    }
}

/// 401 with the contract's body.
pub fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

/// The `token` query parameter, for clients that cannot set headers.
pub fn query_token(query: Option<&str>) -> Option<String> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == "token")
        .map(|(_, v)| v.replace("%2E", ".").replace("%2e", "."))
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

/// 403 with the contract's body.
pub fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}
