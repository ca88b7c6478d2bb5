//! `/v1/mappings`: the running mappings and the errors of the last load;
//! creating and deleting API-defined mappings. Loading belongs to the binary,
//! which answers [`MappingCommand`]s sent over a channel.

use axum::Json;
use axum::extract::Path;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use bytes::Bytes;
use pgtide_mapping::{LoadError, MappingInfo};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::events::json_body;
use crate::{ApiError, AppState};
use pgtide_auth::Role;

/// A change to the API-defined mappings, answered once it is applied (the
/// new set running) or refused (the running set unchanged).
#[derive(Debug)]
pub enum MappingCommand {
    Create {
        definition: Value,
        respond: oneshot::Sender<Result<MappingInfo, MappingCommandError>>,
    },
    Delete {
        name: String,
        respond: oneshot::Sender<Result<(), MappingCommandError>>,
    },
    /// Runs the mapping a dead letter names over its change again, with the
    /// running set, and stores what it makes.
    Retry {
        letter: Box<pgtide_store::DeadLetterRecord>,
        respond: oneshot::Sender<Result<Vec<pgtide_core::Event>, MappingCommandError>>,
    },
}

/// Why a mapping command was refused.
#[derive(Debug)]
pub enum MappingCommandError {
    /// The set with this change would not load; each error has its place.
    Invalid(Vec<LoadError>),
    Store(pgtide_store::StoreError),
    /// The mapping failed again (or is gone): 422 with the reason.
    Failed(String),
    Internal(String),
}

impl From<MappingCommandError> for ApiError {
    fn from(e: MappingCommandError) -> Self {
        match e {
            MappingCommandError::Invalid(errors) => {
                let first = errors
                    .first()
                    .map(|e| e.message.clone())
                    .unwrap_or_default();
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_mapping",
                    format!("invalid mapping: {first}"),
                )
                .with_details(
                    errors
                        .iter()
                        .map(|e| serde_json::to_value(e).unwrap_or(Value::Null))
                        .collect(),
                )
            }
            MappingCommandError::Store(e) => e.into(),
            MappingCommandError::Failed(m) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "mapping_failed", m)
            }
            MappingCommandError::Internal(m) => {
                tracing::error!(error = %m, "mapping command failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

/// What the API and `/readyz` show of the mappings.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MappingsView {
    pub mappings: Vec<MappingInfo>,
    /// Errors of the most recent load; the running set is the last good one.
    pub errors: Vec<LoadError>,
    pub loaded_at: Option<String>,
}

impl MappingsView {
    /// The view after a successful load (with any registry errors it had).
    pub fn loaded(mappings: Vec<MappingInfo>, errors: Vec<LoadError>) -> MappingsView {
        MappingsView {
            mappings,
            errors,
            loaded_at: Some(pgtide_core::format_ts(time::OffsetDateTime::now_utc())),
        }
    }
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_mappings, create_mapping))
        .routes(routes!(delete_mapping))
}

/// The running mappings (file-defined ones read-only) and the last reload's errors.
#[utoipa::path(get, path = "/v1/mappings", tag = "registry",
    responses((status = 200, description = "`{\"mappings\", \"errors\", \"loaded_at\"}`", body = Object)))]
async fn list_mappings(State(state): State<AppState>, _caller: Caller) -> Json<Value> {
    let view = state.mappings.borrow().clone();
    let mappings: Vec<Value> = view
        .mappings
        .iter()
        .map(|m| {
            let mut v = serde_json::to_value(m).unwrap_or(Value::Null);
            let from_api = m.location.file.starts_with(API_SOURCE_PREFIX);
            if let Value::Object(o) = &mut v {
                o.insert("read_only".into(), Value::Bool(!from_api));
                o.insert(
                    "source".into(),
                    Value::String(if from_api { "api" } else { "file" }.into()),
                );
            }
            v
        })
        .collect();
    Json(json!({"mappings": mappings, "errors": view.errors, "loaded_at": view.loaded_at}))
}

/// API-defined mappings are loaded from sources named `api:<name>`.
pub const API_SOURCE_PREFIX: &str = "api:";

async fn send_command<T>(
    state: &AppState,
    make: impl FnOnce(oneshot::Sender<Result<T, MappingCommandError>>) -> MappingCommand,
) -> Result<T, ApiError> {
    let (respond, answer) = oneshot::channel();
    let unavailable = || {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "mappings cannot be changed right now",
        )
    };
    state
        .mapping_commands
        .send(make(respond))
        .await
        .map_err(|_| unavailable())?;
    Ok(answer.await.map_err(|_| unavailable())??)
}

/// Adds a mapping, in the fields of a mapping file (operator); applied with
/// the running set, all or nothing.
#[utoipa::path(post, path = "/v1/mappings", tag = "registry",
    request_body(content = Object, description = "One mapping: `name`, `table`, `topic`, ... as in a mapping file"),
    responses(
        (status = 201, description = "The mapping as loaded", body = Object),
        (status = 409, description = "Name taken", body = crate::openapi::ErrorBody),
        (status = 422, description = "Invalid mapping", body = crate::openapi::ErrorBody),
    ))]
async fn create_mapping(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(Role::Operator)?;
    let definition: Value = json_body(body)?;
    if !definition.is_object() {
        return Err(ApiError::bad_request(
            "a mapping is a JSON object with name, table, topic, ...",
        ));
    }
    let info = send_command(&state, |respond| MappingCommand::Create {
        definition,
        respond,
    })
    .await?;
    let mut v = serde_json::to_value(info).unwrap_or(Value::Null);
    if let Value::Object(o) = &mut v {
        o.insert("read_only".into(), Value::Bool(false));
        o.insert("source".into(), Value::String("api".into()));
    }
    Ok((StatusCode::CREATED, Json(v)))
}

/// Removes an API-defined mapping (operator).
#[utoipa::path(delete, path = "/v1/mappings/{name}", tag = "registry",
    params(("name" = String, Path, description = "Mapping name")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such mapping", body = crate::openapi::ErrorBody),
        (status = 409, description = "Defined in a file (read-only)", body = crate::openapi::ErrorBody),
    ))]
async fn delete_mapping(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Operator)?;
    send_command(&state, |respond| MappingCommand::Delete { name, respond }).await?;
    Ok(StatusCode::NO_CONTENT)
}
