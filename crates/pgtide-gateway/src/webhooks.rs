//! The webhook API (SPEC §9): endpoints, their delivery attempts, and test
//! deliveries. Operators and admins only; a non-admin sees and changes only
//! the endpoints of its own org, and an endpoint receives only the events its
//! creator could read: its org's, and with a `subscribe` claim only topics the
//! claim covers (the HTTP read rule, [`Caller::require_readable`], checked on
//! create and on every patch). The secret is shown once, in the create response.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use bytes::Bytes;
use pgtide_auth::Role;
use pgtide_core::Pattern;
use pgtide_store::webhooks::{BatchConfig, RateLimit, SignatureScheme, WebhookSpec};
use pgtide_webhooks::signature;
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::events::json_body;
use crate::{ApiError, AppState};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_webhooks, create_webhook))
        .routes(routes!(get_webhook, patch_webhook, delete_webhook))
        .routes(routes!(list_deliveries))
        .routes(routes!(test_webhook))
}

/// `Some(None)` for an explicit `null`, `None` when absent.
fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateWebhook {
    url: String,
    secret: Option<String>,
    event_types: Option<Vec<String>>,
    topics: Option<Vec<String>>,
    headers: Option<BTreeMap<String, String>>,
    max_retries: Option<i32>,
    timeout_seconds: Option<i32>,
    /// `{requests_per_period, period_seconds, burst}`
    #[schema(value_type = Option<Object>)]
    rate_limit: Option<RateLimit>,
    /// `pgtide` (default) or `standard-webhooks`
    signature_scheme: Option<String>,
    ordered: Option<bool>,
    /// `{max_events, max_age_ms}`
    #[schema(value_type = Option<Object>)]
    batch: Option<BatchConfig>,
}

/// Fields to change; `null` clears `event_types`, `topics`, `rate_limit`, `batch`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PatchWebhook {
    url: Option<String>,
    secret: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Vec<String>>)]
    event_types: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Vec<String>>)]
    topics: Option<Option<Vec<String>>>,
    headers: Option<BTreeMap<String, String>>,
    max_retries: Option<i32>,
    timeout_seconds: Option<i32>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Object>)]
    rate_limit: Option<Option<RateLimit>>,
    signature_scheme: Option<String>,
    ordered: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Object>)]
    batch: Option<Option<BatchConfig>>,
}

fn scheme(text: &str) -> Result<SignatureScheme, ApiError> {
    SignatureScheme::parse(text).ok_or_else(|| {
        ApiError::bad_request(format!(
            "signature_scheme {text:?} is not one of pgtide, standard-webhooks"
        ))
    })
}

fn event_types(types: Option<Vec<String>>) -> Result<Option<Vec<String>>, ApiError> {
    match types {
        Some(t) if t.is_empty() => Err(ApiError::bad_request(
            "event_types is empty: omit it to receive every event type",
        )),
        Some(t) if t.iter().any(|x| x.trim().is_empty()) => {
            Err(ApiError::bad_request("event_types holds an empty name"))
        }
        other => Ok(other),
    }
}

fn topics(topics: Option<Vec<String>>) -> Result<Option<Vec<Pattern>>, ApiError> {
    match topics {
        None => Ok(None),
        Some(t) if t.is_empty() => Err(ApiError::bad_request(
            "topics is empty: omit it to receive every topic",
        )),
        Some(t) => t
            .iter()
            .map(|p| {
                Pattern::parse(p)
                    .map_err(|e| ApiError::bad_request(format!("topics: pattern {p:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
    }
}

/// Checks everything a spec holds except the URL's addresses.
fn validate(spec: &WebhookSpec) -> Result<(), ApiError> {
    if spec.secret.is_empty() || spec.secret.len() > 1024 {
        return Err(ApiError::bad_request(
            "secret must be 1 to 1024 characters (omit it to have one generated)",
        ));
    }
    if spec.signature_scheme == SignatureScheme::StandardWebhooks {
        signature::standard_key(&spec.secret)
            .map_err(|e| ApiError::bad_request(format!("secret: {e}")))?;
    }
    if !(0..=100).contains(&spec.max_retries) {
        return Err(ApiError::bad_request("max_retries must be 0 to 100"));
    }
    if !(1..=300).contains(&spec.timeout_seconds) {
        return Err(ApiError::bad_request("timeout_seconds must be 1 to 300"));
    }
    for (name, value) in &spec.headers {
        let lower = name.to_ascii_lowercase();
        if lower.starts_with("x-pgtide-")
            || lower.starts_with("webhook-")
            || matches!(lower.as_str(), "content-type" | "content-length" | "host")
        {
            return Err(ApiError::bad_request(format!(
                "headers: {name:?} is set by pgtide and cannot be overridden"
            )));
        }
        if axum::http::HeaderName::try_from(name.as_str()).is_err()
            || axum::http::HeaderValue::try_from(value.as_str()).is_err()
        {
            return Err(ApiError::bad_request(format!(
                "headers: {name:?} is not a valid HTTP header"
            )));
        }
    }
    if let Some(r) = &spec.rate_limit
        && (r.requests_per_period == 0 || r.period_seconds == 0 || r.burst == Some(0))
    {
        return Err(ApiError::bad_request(
            "rate_limit: requests_per_period, period_seconds and burst must be at least 1",
        ));
    }
    if let Some(b) = &spec.batch
        && (!(1..=1000).contains(&b.max_events) || !(1..=3_600_000).contains(&b.max_age_ms))
    {
        return Err(ApiError::bad_request(
            "batch: max_events must be 1 to 1000 and max_age_ms 1 to 3600000",
        ));
    }
    Ok(())
}

/// 400 unless the URL is http(s) and, without `--webhook-allow-private`,
/// not on a private, loopback or link-local address.
async fn check_url(state: &AppState, url: &str) -> Result<(), ApiError> {
    pgtide_webhooks::guard::check_url(url, state.webhooks.allow_private())
        .await
        .map(|_| ())
        .map_err(|e| ApiError::bad_request(e.to_string()))
}

/// Creates an endpoint; the response is the only one that shows its secret.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", request_body = CreateWebhook,
    responses(
        (status = 201, description = "The endpoint with its `id` and `secret`", body = Object),
        (status = 400, description = "Invalid field, or a private target without --webhook-allow-private", body = crate::openapi::ErrorBody),
        (status = 403, description = "`topics` absent or wider than the token's `subscribe` claim", body = crate::openapi::ErrorBody),
    ))]
async fn create_webhook(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(Role::Operator)?;
    let req: CreateWebhook = json_body(body)?;
    let spec = WebhookSpec {
        url: req.url,
        secret: req.secret.unwrap_or_else(signature::generate_secret),
        event_types: event_types(req.event_types)?,
        topics: topics(req.topics)?,
        headers: req.headers.unwrap_or_default(),
        max_retries: req.max_retries.unwrap_or(5),
        timeout_seconds: req.timeout_seconds.unwrap_or(15),
        rate_limit: req.rate_limit,
        signature_scheme: scheme(req.signature_scheme.as_deref().unwrap_or("pgtide"))?,
        ordered: req.ordered.unwrap_or(false),
        batch: req.batch,
    };
    // An endpoint receives what its topics match: the same rule as reads.
    caller.require_readable(spec.topics.as_deref().unwrap_or_default())?;
    validate(&spec)?;
    check_url(&state, &spec.url).await?;
    let webhook = state
        .store
        .create_webhook(caller.org_id(), caller.admin, &spec)
        .await?;
    state.webhooks.endpoints_changed();
    Ok((StatusCode::CREATED, Json(webhook.to_json(true))))
}

/// The caller's endpoints (admins: all), without secrets.
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks",
    responses((status = 200, description = "`{\"webhooks\": [...]}`", body = Object)))]
async fn list_webhooks(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Operator)?;
    let list = state.store.list_webhooks(caller.org_scope()).await?;
    let webhooks: Vec<Value> = list.iter().map(|w| w.to_json(false)).collect();
    Ok(Json(json!({"webhooks": webhooks})))
}

/// One endpoint, without its secret.
#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path, description = "Endpoint id")),
    responses(
        (status = 200, description = "The endpoint", body = Object),
        (status = 404, description = "No such endpoint", body = crate::openapi::ErrorBody),
    ))]
async fn get_webhook(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Operator)?;
    let webhook = state.store.webhook(&id, caller.org_scope()).await?;
    Ok(Json(webhook.to_json(false)))
}

/// Changes an endpoint's fields. The endpoint's topics after the change must
/// be covered by the token's `subscribe` claim, whatever the patch changes
/// (a narrow token may not point a wider endpoint at its own receiver).
#[utoipa::path(patch, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path, description = "Endpoint id")), request_body = PatchWebhook,
    responses(
        (status = 200, description = "The endpoint", body = Object),
        (status = 403, description = "The endpoint's `topics` absent or wider than the token's `subscribe` claim", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such endpoint", body = crate::openapi::ErrorBody),
    ))]
async fn patch_webhook(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Operator)?;
    let req: PatchWebhook = json_body(body)?;
    let current = state.store.webhook(&id, caller.org_scope()).await?;
    let mut spec = current.spec;
    if let Some(url) = req.url {
        check_url(&state, &url).await?;
        spec.url = url;
    }
    if let Some(secret) = req.secret {
        spec.secret = secret;
    }
    if let Some(t) = req.event_types {
        spec.event_types = event_types(t)?;
    }
    if let Some(t) = req.topics {
        spec.topics = topics(t)?;
    }
    if let Some(h) = req.headers {
        spec.headers = h;
    }
    if let Some(n) = req.max_retries {
        spec.max_retries = n;
    }
    if let Some(n) = req.timeout_seconds {
        spec.timeout_seconds = n;
    }
    if let Some(r) = req.rate_limit {
        spec.rate_limit = r;
    }
    if let Some(s) = req.signature_scheme {
        spec.signature_scheme = scheme(&s)?;
    }
    if let Some(o) = req.ordered {
        spec.ordered = o;
    }
    if let Some(b) = req.batch {
        spec.batch = b;
    }
    caller.require_readable(spec.topics.as_deref().unwrap_or_default())?;
    validate(&spec)?;
    let webhook = state
        .store
        .update_webhook(&id, caller.org_scope(), &spec)
        .await?;
    state.webhooks.endpoints_changed();
    Ok(Json(webhook.to_json(false)))
}

/// Deletes an endpoint and its pending deliveries.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path, description = "Endpoint id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such endpoint", body = crate::openapi::ErrorBody),
    ))]
async fn delete_webhook(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Operator)?;
    state.store.delete_webhook(&id, caller.org_scope()).await?;
    state.webhooks.endpoints_changed();
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct DeliveryParams {
    /// Attempts older than this attempt id (paging, newest first).
    before: Option<String>,
    limit: Option<i64>,
}

/// Every attempt, newest first: status, status code, latency, the first
/// KiB of the response, and when the next attempt is due.
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = String, Path, description = "Endpoint id"), DeliveryParams),
    responses(
        (status = 200, description = "`{\"deliveries\": [...]}`", body = Object),
        (status = 404, description = "No such endpoint", body = crate::openapi::ErrorBody),
    ))]
async fn list_deliveries(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    params: Result<Query<DeliveryParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Operator)?;
    let Query(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit={limit} is out of range: use 1 to 1000"
        )));
    }
    let webhook = state.store.webhook(&id, caller.org_scope()).await?;
    let attempts = state
        .store
        .webhook_attempts(&webhook.id, params.before.as_deref(), limit)
        .await?;
    Ok(Json(json!({"deliveries": attempts})))
}

/// Sends a `system.webhook_test` event to the endpoint now and answers
/// with how it went.
#[utoipa::path(post, path = "/v1/webhooks/{id}/test", tag = "webhooks", params(("id" = String, Path, description = "Endpoint id")),
    responses(
        (status = 200, description = "The test delivery's outcome", body = Object),
        (status = 404, description = "No such endpoint", body = crate::openapi::ErrorBody),
    ))]
async fn test_webhook(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Operator)?;
    let webhook = state.store.webhook(&id, caller.org_scope()).await?;
    let (delivery_id, attempt) = state.webhooks.test(&webhook).await.map_err(|e| match e {
        pgtide_webhooks::Error::Store(e) => ApiError::from(e),
        other => {
            tracing::error!(error = %other, "webhook test failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
        }
    })?;
    Ok(Json(json!({
        "id": delivery_id,
        "delivered": attempt.succeeded(),
        "status_code": attempt.status_code,
        "latency_ms": attempt.latency.as_millis() as u64,
        "response": attempt.response,
        "error": attempt.error,
    })))
}
