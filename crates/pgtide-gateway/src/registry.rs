//! The registry API: topics and their schema versions, and dead letters.

use axum::Json;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use bytes::Bytes;
use pgtide_core::{NewEvent, Topic};
use pgtide_store::registry::TopicPatch;
use pgtide_store::{DeadLetterKind, LetterScope, Owner};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::events::json_body;
use crate::{ApiError, AppState};
use pgtide_auth::Role;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_topics, create_topic))
        .routes(routes!(get_topic, patch_topic, delete_topic))
        .routes(routes!(list_schemas, register_schema))
        .routes(routes!(list_dead_letters))
        .routes(routes!(retry_dead_letter))
}

fn topic_name(text: &str) -> Result<String, ApiError> {
    Topic::parse(text)
        .map(Topic::into_string)
        .map_err(|e| ApiError::bad_request(format!("invalid topic: {e}")))
}

/// Every registered topic.
#[utoipa::path(get, path = "/v1/topics", tag = "registry",
    responses((status = 200, description = "`{\"topics\": [...]}`", body = Object)))]
async fn list_topics(
    State(state): State<AppState>,
    _caller: Caller,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"topics": state.store.list_topics().await?})))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateTopic {
    name: String,
    description: Option<String>,
    compatibility: Option<String>,
    /// The owner org (admins only; default: none, so only admins may
    /// change the topic). Other callers' topics are owned by their org.
    org_id: Option<i64>,
}

/// The registry writer a caller is: it may change only topics its org owns
/// (admins: any not declared in a file), and error texts quote only events
/// it may read.
fn writer(caller: &Caller, topic: &str) -> Owner {
    Owner::Api {
        org_scope: caller.org_scope(),
        reads_topic: caller.may_read_topic(topic),
    }
}

/// Registers a topic (operator), owned by the caller's org. A non-admin may
/// not register a topic that already carries stored events of other orgs
/// (or of none): their publishers would have to follow its schemas.
#[utoipa::path(post, path = "/v1/topics", tag = "registry", request_body = CreateTopic,
    responses(
        (status = 201, description = "The topic", body = Object),
        (status = 409, description = "Already registered, or (non-admins) already carrying other orgs' events", body = crate::openapi::ErrorBody),
    ))]
async fn create_topic(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(Role::Operator)?;
    let req: CreateTopic = json_body(body)?;
    let name = topic_name(&req.name)?;
    let owner_org = if caller.admin {
        req.org_id
    } else if req.org_id.is_some() && req.org_id != caller.org_id() {
        return Err(crate::auth::forbidden(
            "only admins may set org_id; topics are owned by the token's org",
        ));
    } else {
        caller.org_id()
    };
    let topic = state
        .store
        .create_topic(
            &name,
            req.description.as_deref(),
            req.compatibility.as_deref(),
            owner_org,
            writer(&caller, &name),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::to_value(topic).unwrap_or(Value::Null)),
    ))
}

/// One topic with its active schema version.
#[utoipa::path(get, path = "/v1/topics/{topic}", tag = "registry",
    params(("topic" = String, Path, description = "Topic name")),
    responses(
        (status = 200, description = "The topic", body = Object),
        (status = 404, description = "Unknown topic", body = crate::openapi::ErrorBody),
    ))]
async fn get_topic(
    State(state): State<AppState>,
    _caller: Caller,
    Path(topic): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let topic = state.store.get_topic(&topic_name(&topic)?).await?;
    Ok(Json(serde_json::to_value(topic).unwrap_or(Value::Null)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PatchTopic {
    description: Option<String>,
    compatibility: Option<String>,
    active_schema_version: Option<i32>,
}

/// Changes a topic's description, compatibility or active schema (operator
/// of the owner org, or admin).
#[utoipa::path(patch, path = "/v1/topics/{topic}", tag = "registry", request_body = PatchTopic,
    params(("topic" = String, Path, description = "Topic name")),
    responses(
        (status = 200, description = "The topic", body = Object),
        (status = 403, description = "Owned by another org, or by none (admins only)", body = crate::openapi::ErrorBody),
        (status = 404, description = "Unknown topic or schema version", body = crate::openapi::ErrorBody),
        (status = 409, description = "Declared in a mapping file (read-only)", body = crate::openapi::ErrorBody),
    ))]
async fn patch_topic(
    State(state): State<AppState>,
    caller: Caller,
    Path(topic): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Operator)?;
    let req: PatchTopic = json_body(body)?;
    if let Some(v) = req.active_schema_version
        && v < 0
    {
        return Err(ApiError::bad_request(
            "active_schema_version must be 0 (none) or a registered version",
        ));
    }
    let patch = TopicPatch {
        description: req.description,
        compatibility: req.compatibility,
        active_schema_version: req.active_schema_version,
    };
    let name = topic_name(&topic)?;
    let topic = state
        .store
        .patch_topic(&name, &patch, writer(&caller, &name))
        .await?;
    Ok(Json(serde_json::to_value(topic).unwrap_or(Value::Null)))
}

/// Deletes a topic and its schemas (operator of the owner org, or admin);
/// stored events stay.
#[utoipa::path(delete, path = "/v1/topics/{topic}", tag = "registry",
    params(("topic" = String, Path, description = "Topic name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Owned by another org, or by none (admins only)", body = crate::openapi::ErrorBody),
        (status = 404, description = "Unknown topic", body = crate::openapi::ErrorBody),
    ))]
async fn delete_topic(
    State(state): State<AppState>,
    caller: Caller,
    Path(topic): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Operator)?;
    let name = topic_name(&topic)?;
    state
        .store
        .delete_topic(&name, writer(&caller, &name))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every schema version of a topic.
#[utoipa::path(get, path = "/v1/topics/{topic}/schemas", tag = "registry",
    params(("topic" = String, Path, description = "Topic name")),
    responses((status = 200, description = "`{\"schemas\": [...]}`", body = Object)))]
async fn list_schemas(
    State(state): State<AppState>,
    _caller: Caller,
    Path(topic): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let schemas = state.store.list_schemas(&topic_name(&topic)?).await?;
    Ok(Json(json!({"schemas": schemas})))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RegisterSchema {
    /// A JSON Schema (2020-12 or draft 7).
    #[schema(value_type = Object)]
    schema: Value,
}

/// Registers the next schema version and makes it active (operator of the
/// owner org, or admin). A non-admin's compatibility check runs over the
/// stored events it may read only, and its reasons mention no others; an
/// admin's runs over all, quoting those its token may read.
#[utoipa::path(post, path = "/v1/topics/{topic}/schemas", tag = "registry", request_body = RegisterSchema,
    params(("topic" = String, Path, description = "Topic name")),
    responses(
        (status = 201, description = "`{\"topic\", \"version\"}`", body = Object),
        (status = 403, description = "Owned by another org, or by none (admins only)", body = crate::openapi::ErrorBody),
        (status = 409, description = "Incompatible with the topic's compatibility mode; `details` hold the reasons", body = crate::openapi::ErrorBody),
    ))]
async fn register_schema(
    State(state): State<AppState>,
    caller: Caller,
    Path(topic): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(Role::Operator)?;
    let req: RegisterSchema = json_body(body)?;
    let topic = topic_name(&topic)?;
    let version = state
        .store
        .register_schema(&topic, &req.schema, writer(&caller, &topic))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"topic": topic, "version": version})),
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct DeadLetterParams {
    /// `validation`, `mapping` or `webhook`.
    kind: Option<String>,
    after_id: Option<i64>,
    limit: Option<i64>,
}

/// The dead letters `caller` may see: its org's (admins: all), and with a
/// `subscribe` claim only those of topics the claim lets it read (the rule of
/// [`Caller::may_read_topic`]); the others do not exist for it.
fn letter_scope(caller: &Caller) -> LetterScope<'_> {
    LetterScope {
        org_scope: caller.org_scope(),
        topics: caller.claims.subscribe.as_deref(),
    }
}

/// What could not become or be delivered as an event (operator): the
/// caller's org's, within its token's `subscribe` claim.
#[utoipa::path(get, path = "/v1/dead-letters", tag = "registry", params(DeadLetterParams),
    responses((status = 200, description = "`{\"dead_letters\": [...]}`", body = Object)))]
async fn list_dead_letters(
    State(state): State<AppState>,
    caller: Caller,
    params: Result<Query<DeadLetterParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Operator)?;
    let Query(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let kind = params
        .kind
        .as_deref()
        .map(|k| {
            DeadLetterKind::parse(k).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "kind={k:?} is not one of validation, mapping, webhook"
                ))
            })
        })
        .transpose()?;
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit={limit} is out of range: use 1 to 1000"
        )));
    }
    let letters = state
        .store
        .list_dead_letters(
            kind,
            params.after_id.unwrap_or(0),
            limit,
            letter_scope(&caller),
        )
        .await?;
    Ok(Json(json!({"dead_letters": letters})))
}

/// Retries a dead letter. A validation failure is validated again against
/// the topic's current schema and, if it now passes, stored as an event (with
/// its original id) and removed from the dead letters. A webhook dead letter
/// goes back into its endpoint's delivery queue.
#[utoipa::path(post, path = "/v1/dead-letters/{id}/retry", tag = "registry",
    params(("id" = i64, Path, description = "Dead letter id")),
    responses(
        (status = 200, description = "Retried", body = Object),
        (status = 404, description = "Unknown dead letter, or one the caller may not see (another org's, or a topic outside its `subscribe` claim)", body = crate::openapi::ErrorBody),
        (status = 422, description = "Still invalid", body = crate::openapi::ErrorBody),
    ))]
async fn retry_dead_letter(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Operator)?;
    let letter = state.store.dead_letter(id, letter_scope(&caller)).await?;
    match letter.kind {
        DeadLetterKind::Validation => {
            let stored: pgtide_core::Event =
                serde_json::from_value(letter.event.clone()).map_err(|e| {
                    ApiError::bad_request(format!("dead letter {id} does not hold an event: {e}"))
                })?;
            if let Err(issues) = state.store.schemas().validate(&stored.topic, &stored.data) {
                return Err(ApiError::invalid_payload(&stored.topic, issues));
            }
            let mut event =
                NewEvent::new(stored.topic, stored.event_type, stored.source, stored.data);
            if let Ok(original) = stored.id.parse() {
                event.id = original;
            }
            event.org_id = stored.org_id;
            event.correlation_id = stored.correlation_id;
            event.attributes = stored.attributes;
            event.meta = stored.meta;
            let published = state.store.publish(vec![event]).await?;
            state.store.delete_dead_letter(id).await?;
            Ok(Json(json!({"retried": id, "events": published})))
        }
        DeadLetterKind::Mapping => {
            let (respond, answer) = tokio::sync::oneshot::channel();
            let unavailable = || {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "mappings are not running right now",
                )
            };
            state
                .mapping_commands
                .send(crate::MappingCommand::Retry {
                    letter: Box::new(letter),
                    respond,
                })
                .await
                .map_err(|_| unavailable())?;
            let events = answer.await.map_err(|_| unavailable())??;
            state.store.delete_dead_letter(id).await?;
            Ok(Json(json!({"retried": id, "events": events})))
        }
        DeadLetterKind::Webhook => {
            // Back in its endpoint's queue, due now, with fresh retries.
            let webhook_id = state.store.requeue_webhook_dead_letter(id).await?;
            state.webhooks.endpoints_changed();
            Ok(Json(json!({"retried": id, "webhook_id": webhook_id})))
        }
    }
}
