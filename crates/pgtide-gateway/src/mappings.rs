//! `/v1/mappings`: the running mappings and the errors of the last load;
//! creating and deleting API-defined mappings. Loading belongs to the binary,
//! which answers [`MappingCommand`]s sent over a channel.
//!
//! Who may do what (a mapping reads a whole table of the user's database):
//! an admin may create a mapping on any table outside the reserved schemas;
//! an operator only on a table listed with `--api-mapping-tables`, and its
//! mapping's `org` is always the operator's own org (an `org` it sends is
//! replaced), and its `topic` and `event_type` follow the publish rules (the
//! token's `publish` claim, no reserved topics or types; see
//! [`crate::publish::check_mapping`]). An API mapping is owned by its
//! creator's org: non-admins see
//! the file mappings and their own org's API mappings only, and another
//! org's mapping is "not found".

use axum::Json;
use axum::extract::Path;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use bytes::Bytes;
use pgtide_mapping::{LoadError, MappingInfo};
use pgtide_store::MappingScope;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use tokio::sync::oneshot;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Caller, forbidden};
use crate::events::json_body;
use crate::{ApiError, AppState};
use pgtide_auth::Role;

/// A change to the API-defined mappings, answered once it is applied (the
/// new set running) or refused (the running set unchanged).
#[derive(Debug)]
pub enum MappingCommand {
    Create {
        definition: Value,
        /// Who will own it.
        owner: MappingOwner,
        respond: oneshot::Sender<Result<MappingInfo, MappingCommandError>>,
    },
    Delete {
        name: String,
        /// Whose mappings the caller may delete.
        scope: MappingScope,
        respond: oneshot::Sender<Result<(), MappingCommandError>>,
    },
    /// Runs the mapping a dead letter names over its change again, with the
    /// running set, and stores what it makes.
    Retry {
        letter: Box<pgtide_store::DeadLetterRecord>,
        respond: oneshot::Sender<Result<Vec<pgtide_core::Event>, MappingCommandError>>,
    },
}

/// The org that owns a new API mapping, and the role of the token that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappingOwner {
    pub org_id: Option<i64>,
    pub role: Role,
}

/// Who owns a stored API mapping, as the list and delete checks need it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiOwner {
    pub org_id: Option<i64>,
    /// `schema.table`, when known.
    pub table: Option<String>,
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
    /// Every stored API mapping (running or skipped) by name, with its owner.
    #[serde(skip)]
    pub owners: BTreeMap<String, ApiOwner>,
}

impl MappingsView {
    /// The view after a successful load (with any registry errors it had).
    pub fn loaded(
        mappings: Vec<MappingInfo>,
        errors: Vec<LoadError>,
        owners: BTreeMap<String, ApiOwner>,
    ) -> MappingsView {
        MappingsView {
            mappings,
            errors,
            loaded_at: Some(pgtide_core::format_ts(time::OffsetDateTime::now_utc())),
            owners,
        }
    }

    /// The API mapping a source name (`api:<name>`) stands for, if it is one.
    fn api_name(file: &str) -> Option<&str> {
        file.strip_prefix(API_SOURCE_PREFIX)
    }

    /// Whether `caller` may see what came from `file`: every file mapping;
    /// an API mapping only for admins and its owning org.
    pub fn visible(&self, caller: &Caller, file: &str) -> bool {
        match MappingsView::api_name(file) {
            None => true,
            Some(_) if caller.admin => true,
            Some(name) => match (caller.org_id(), self.owners.get(name)) {
                (Some(org), Some(owner)) => owner.org_id == Some(org),
                _ => false,
            },
        }
    }

    /// The view as `caller` may see it.
    pub fn for_caller(&self, caller: &Caller) -> (Vec<&MappingInfo>, Vec<&LoadError>) {
        (
            self.mappings
                .iter()
                .filter(|m| self.visible(caller, &m.location.file))
                .collect(),
            self.errors
                .iter()
                .filter(|e| self.visible(caller, &e.file))
                .collect(),
        )
    }
}

/// 403 unless `caller` may create or delete a mapping on `table`
/// (`schema.table`, `None` when unknown): admins anywhere, operators with an
/// org on the tables of `--api-mapping-tables`.
pub fn may_map(caller: &Caller, allowed: &[String], table: Option<&str>) -> Result<(), ApiError> {
    caller.require(Role::Operator)?;
    if caller.admin {
        return Ok(());
    }
    if caller.org_id().is_none() {
        return Err(forbidden(
            "an operator's mapping belongs to the operator's org, and this token has no org_id; ask an admin",
        ));
    }
    match table {
        Some(t) if allowed.iter().any(|a| a == t) => Ok(()),
        _ => {
            let listed = if allowed.is_empty() {
                "none are listed".to_owned()
            } else {
                allowed.join(", ")
            };
            Err(forbidden(format!(
                "a mapping on {} needs the admin role: it reads the whole table; operators may map only the tables an admin listed with --api-mapping-tables ({listed})",
                table.unwrap_or("this table")
            )))
        }
    }
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_mappings, create_mapping))
        .routes(routes!(delete_mapping))
}

/// The running mappings (file-defined ones read-only) and the last reload's
/// errors; non-admins see file mappings and their own org's API mappings.
#[utoipa::path(get, path = "/v1/mappings", tag = "registry",
    responses((status = 200, description = "`{\"mappings\", \"errors\", \"loaded_at\"}`", body = Object)))]
async fn list_mappings(State(state): State<AppState>, caller: Caller) -> Json<Value> {
    let view = state.mappings.borrow().clone();
    let (mappings, errors) = view.for_caller(&caller);
    let mappings: Vec<Value> = mappings
        .into_iter()
        .map(|m| {
            let owner = MappingsView::api_name(&m.location.file).map(|n| view.owners.get(n));
            describe(m, owner)
        })
        .collect();
    Json(json!({"mappings": mappings, "errors": errors, "loaded_at": view.loaded_at}))
}

/// A mapping as the API shows it: `source` (`file` or `api`), `read_only`,
/// and for API mappings the owning org as `owner_org_id`.
fn describe(m: &MappingInfo, api_owner: Option<Option<&ApiOwner>>) -> Value {
    let mut v = serde_json::to_value(m).unwrap_or(Value::Null);
    if let Value::Object(o) = &mut v {
        o.insert("read_only".into(), Value::Bool(api_owner.is_none()));
        o.insert(
            "source".into(),
            Value::String(if api_owner.is_some() { "api" } else { "file" }.into()),
        );
        if let Some(owner) = api_owner {
            o.insert("owner_org_id".into(), json!(owner.and_then(|o| o.org_id)));
        }
    }
    v
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

/// The `schema.table` a definition names, when it names one the loader
/// would accept (else the load reports it).
fn definition_table(definition: &Value) -> Option<String> {
    let text = definition.get("table")?.as_str()?;
    let (schema, table) = pgtide_mapping::parse_table(text).ok()?;
    Some(format!("{schema}.{table}"))
}

/// Adds a mapping, in the fields of a mapping file; applied with the running
/// set, all or nothing, checked against the database before it is stored.
/// Admins may map any table outside `pgtide`, `pg_catalog`,
/// `information_schema` and `pg_toast`; operators only the tables of
/// `--api-mapping-tables`, and their mapping's `org` is set to their own org.
#[utoipa::path(post, path = "/v1/mappings", tag = "registry",
    request_body(content = Object, description = "One mapping: `name`, `table`, `topic`, ... as in a mapping file"),
    responses(
        (status = 201, description = "The mapping as loaded", body = Object),
        (status = 400, description = "Invalid mapping (with each error's place)", body = crate::openapi::ErrorBody),
        (status = 403, description = "The table needs the admin role; (non-admins) a topic outside the token's `publish` claim, or `reserved_topic` for pgtide's own topics and types", body = crate::openapi::ErrorBody),
        (status = 409, description = "Name taken", body = crate::openapi::ErrorBody),
    ))]
async fn create_mapping(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(Role::Operator)?;
    let mut definition: Value = json_body(body)?;
    if !definition.is_object() {
        return Err(ApiError::bad_request(
            "a mapping is a JSON object with name, table, topic, ...",
        ));
    }
    let table = definition_table(&definition);
    // Without a table the loader can parse, the load refuses the mapping
    // whoever asks; with one, the caller must be allowed to map it.
    if !caller.admin && (table.is_some() || caller.org_id().is_none()) {
        may_map(&caller, &state.api_mapping_tables, table.as_deref())?;
    }
    // An operator's mapping publishes in its name: the publish rules apply.
    // Admins' (and file) mappings are pgtide's operators' own and may use
    // any topic, `tables.*` and `row.*` included.
    if !caller.admin {
        let text = |field: &str| definition.get(field).and_then(Value::as_str);
        crate::publish::check_mapping(&caller, text("topic"), text("event_type"))?;
    }
    let mut notices = Vec::new();
    if !caller.admin
        && let (Some(org), Value::Object(fields)) = (caller.org_id(), &mut definition)
    {
        let asked = fields.insert("org".into(), json!(org));
        if asked
            .as_ref()
            .is_some_and(|a| a != &json!(org) && a != &json!(org.to_string()))
        {
            notices.push(Value::String(format!(
                "`org` was replaced by {org}: an operator's mapping always emits events of the operator's org"
            )));
        }
    }
    let owner = MappingOwner {
        org_id: caller.org_id(),
        role: caller.claims.role,
    };
    let info = send_command(&state, |respond| MappingCommand::Create {
        definition,
        owner,
        respond,
    })
    .await?;
    let api_owner = ApiOwner {
        org_id: owner.org_id,
        table: Some(info.table.clone()),
    };
    let mut v = describe(&info, Some(Some(&api_owner)));
    if let (Value::Object(o), false) = (&mut v, notices.is_empty()) {
        o.insert("notices".into(), Value::Array(notices));
    }
    Ok((StatusCode::CREATED, Json(v)))
}

/// Removes an API-defined mapping: an admin any, an operator its own org's
/// on the tables of `--api-mapping-tables`; another org's is not found.
#[utoipa::path(delete, path = "/v1/mappings/{name}", tag = "registry",
    params(("name" = String, Path, description = "Mapping name")),
    responses(
        (status = 204, description = "Removed"),
        (status = 403, description = "The mapping's table needs the admin role", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such mapping (or another org's)", body = crate::openapi::ErrorBody),
        (status = 409, description = "Defined in a file (read-only)", body = crate::openapi::ErrorBody),
    ))]
async fn delete_mapping(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Operator)?;
    let scope = if caller.admin {
        MappingScope::All
    } else {
        MappingScope::Org(caller.org_id())
    };
    if !caller.admin {
        let owner = state.mappings.borrow().owners.get(&name).cloned();
        // Another org's mapping (or none) is left to the store to answer 404.
        if let Some(owner) = owner
            && owner.org_id.is_some()
            && owner.org_id == caller.org_id()
        {
            may_map(&caller, &state.api_mapping_tables, owner.table.as_deref())?;
        }
    }
    send_command(&state, |respond| MappingCommand::Delete {
        name,
        scope,
        respond,
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
