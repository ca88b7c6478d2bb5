//! `GET /v1/mappings`: the running mappings and the errors of the last load.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use pgtide_mapping::{LoadError, MappingInfo};
use serde::Serialize;
use serde_json::{Value, json};

use crate::AppState;

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

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/mappings", get(list_mappings))
}

async fn list_mappings(State(state): State<AppState>) -> Json<Value> {
    let view = state.mappings.borrow().clone();
    let mappings: Vec<Value> = view
        .mappings
        .iter()
        .map(|m| {
            let mut v = serde_json::to_value(m).unwrap_or(Value::Null);
            if let Value::Object(o) = &mut v {
                o.insert("read_only".into(), Value::Bool(true));
                o.insert("source".into(), Value::String("file".into()));
            }
            v
        })
        .collect();
    Json(json!({"mappings": mappings, "errors": view.errors, "loaded_at": view.loaded_at}))
}
