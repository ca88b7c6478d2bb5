//! The API's one error type, and the layer that gives every answer of the
//! API the contract's error body.
//!
//! Client mistakes carry their explanation. Internal failures (the store,
//! the database, a bug) are logged with the request's id and answered with a
//! bare 500 or 503 that names that id, never with driver text, SQL or an
//! error chain. [`request_id`] gives every request its id (the `x-request-id`
//! response header, and a `request_id` field on every log line of the
//! request); [`error_bodies`] turns the plain-text answers axum gives by
//! itself (extractor rejections, 405, 413, 415, a `/ws` request without an
//! upgrade) into the error body.

use axum::Json;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tracing::Instrument;

/// The response header naming the request's id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being handled, if any.
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// `e` with every error it wraps (`db error: FATAL: ...`), for the log.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

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

    /// A 500 for a failure of pgtide's own: `error` goes to the log (with
    /// the request id), the client gets `internal error` and the id.
    pub fn internal(what: &str, error: &dyn std::fmt::Display) -> ApiError {
        tracing::error!(error = %error, "{what}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }

    /// A 503 for something that may work again soon: `error` goes to the
    /// log, the client gets `message` and the request id.
    pub fn unavailable(
        message: impl Into<String>,
        what: &str,
        error: &dyn std::fmt::Display,
    ) -> ApiError {
        tracing::error!(error = %error, "{what}");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
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
            E::NotFound(m) => ApiError::not_found(m),
            E::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            E::ReadOnly(m) => ApiError::new(StatusCode::CONFLICT, "read_only", m),
            E::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", m),
            E::Invalid(m) => ApiError::bad_request(m),
            E::Incompatible(reasons) => ApiError::new(
                StatusCode::CONFLICT,
                "incompatible",
                "the schema is not compatible with the topic's current one",
            )
            .with_details(reasons.into_iter().map(|r| json!({"reason": r})).collect()),
            E::Query(q) if refused_text(&q) => ApiError::bad_request(
                "a value in the request holds the NUL character (\\u0000), which PostgreSQL cannot store",
            ),
            e if e.is_retryable() => ApiError::unavailable(
                "the event store is unavailable; try again",
                "store error in API request",
                &chain(&e),
            ),
            e => ApiError::internal("store error in API request", &chain(&e)),
        }
    }
}

/// Whether PostgreSQL refused a text or JSON value itself: a NUL
/// character, which only a client can have sent (pgtide never makes one;
/// publishers check for it first, this is the backstop for every other
/// query: filters, schemas, names).
fn refused_text(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|db| matches!(db.code().code(), "22P05" | "22021"))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut message = self.message;
        let mut details = self.details;
        let id = current_request_id();
        if self.status.is_server_error()
            && let Some(id) = &id
        {
            message = format!("{message} (the server log has the detail under request id {id})");
            details.push(json!({"request_id": id}));
        }
        let body = json!({"error": {"code": self.code, "message": message, "details": details}});
        (self.status, Json(body)).into_response()
    }
}

/// Gives the request an id: every log line while it is handled carries it
/// (`request_id`), so does a 5xx body, and the response names it in
/// `x-request-id`.
pub async fn request_id(request: Request, next: Next) -> Response {
    let id = ulid::Ulid::new().to_string().to_lowercase();
    // At error level, so any filter that keeps the errors keeps their id.
    let span = tracing::error_span!("request", request_id = %id);
    let mut response = REQUEST_ID
        .scope(id.clone(), next.run(request))
        .instrument(span)
        .await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

/// The longest plain-text error body read back to become a message.
const MAX_TEXT: usize = 4096;

/// Answers every error in the contract's body: a 4xx or 5xx that is not
/// JSON (axum's own rejections: a path or query that does not parse, a body
/// that is not JSON, a wrong method, a too large body, a missing upgrade)
/// becomes `{"error": {...}}` with its text as the message (a 5xx's text is
/// logged, not sent).
pub async fn error_bodies(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, MAX_TEXT).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_owned(),
        Err(_) => String::new(),
    };
    let error = if status.is_server_error() {
        let text = if text.is_empty() {
            status.to_string()
        } else {
            text
        };
        ApiError::internal("request failed", &text)
    } else {
        let message = if text.is_empty() {
            default_message(status)
        } else {
            text
        };
        ApiError::new(status, code_of(status), message)
    };
    let error = ApiError { status, ..error };
    let new = error.into_response();
    // Keep what the original said about itself (`Allow` of a 405).
    parts.headers.remove(header::CONTENT_TYPE);
    parts.headers.remove(header::CONTENT_LENGTH);
    let (new_parts, body) = new.into_parts();
    parts.headers.extend(new_parts.headers);
    Response::from_parts(parts, Body::new(body))
}

/// The error code of a status axum answers by itself.
fn code_of(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::CONFLICT => "conflict",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "unprocessable",
        StatusCode::UPGRADE_REQUIRED => "upgrade_required",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        _ => "bad_request",
    }
}

/// What an empty-bodied error says.
fn default_message(status: StatusCode) -> String {
    match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            "this method is not allowed here; the Allow header lists those that are".to_owned()
        }
        other => other
            .canonical_reason()
            .unwrap_or("request refused")
            .to_owned(),
    }
}
