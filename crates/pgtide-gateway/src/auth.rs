//! Who is calling: the bearer token (header or `?token=`), verified, or the
//! all-powerful caller of `--insecure-no-auth`.

use axum::http::{HeaderMap, StatusCode, header};
use pgtide_core::Pattern;

use crate::ApiError;
use crate::hub::Visibility;

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
