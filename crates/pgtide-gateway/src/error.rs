//! The API's one error type. Client mistakes carry their explanation; internal
//! failures are logged and answered with a bare 500.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// An error answered with `{"error": {"code", "message", "details"}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Vec<Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: Vec::new(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 422 with each validator message and its JSON pointer.
    pub fn invalid_payload(topic: &str, issues: Vec<pgtide_store::ValidationIssue>) -> ApiError {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            format!("data does not match the active schema of topic {topic:?}"),
        )
        .with_details(
            issues
                .into_iter()
                .map(|i| json!({"message": i.message, "pointer": i.pointer}))
                .collect(),
        )
    }

    pub fn with_details(mut self, details: Vec<Value>) -> ApiError {
        self.details = details;
        self
    }
}

impl From<pgtide_store::StoreError> for ApiError {
    fn from(e: pgtide_store::StoreError) -> Self {
        use pgtide_store::StoreError as E;
        match e {
            E::NotFound(m) => return ApiError::not_found(m),
            E::Conflict(m) => return ApiError::new(StatusCode::CONFLICT, "conflict", m),
            E::ReadOnly(m) => return ApiError::new(StatusCode::CONFLICT, "read_only", m),
            E::Forbidden(m) => return ApiError::new(StatusCode::FORBIDDEN, "forbidden", m),
            E::Invalid(m) => return ApiError::bad_request(m),
            E::Incompatible(reasons) => {
                return ApiError::new(
                    StatusCode::CONFLICT,
                    "incompatible",
                    "the schema is not compatible with the topic's current one",
                )
                .with_details(reasons.into_iter().map(|r| json!({"reason": r})).collect());
            }
            _ => {}
        }
        tracing::error!(error = %e, "store error in API request");
        if e.is_retryable() {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the event store is unavailable; try again",
            )
        } else {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({"error": {"code": self.code, "message": self.message, "details": self.details}});
        (self.status, Json(body)).into_response()
    }
}
