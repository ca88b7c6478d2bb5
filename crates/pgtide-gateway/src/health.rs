//! Liveness, readiness (slot streaming, store reachable, replication lag) and
//! Prometheus metrics.

use std::fmt::Write;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "`{\"status\": \"ok\"}`", body = Object)))]
async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when the slot streams (or another node streams it) and the store answers.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready, with replication lag and mapping state", body = Object),
        (status = 503, description = "Not ready, with the reason", body = Object),
    ))]
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let cdc = state.cdc.borrow().clone();
    let mappings = state.mappings.borrow().clone();
    let store = state.store.ping().await;
    // A standby node serves clients while another node streams the slot.
    let ready = (cdc.streaming || cdc.standby) && store.is_ok();
    // The reasons, without driver text: that goes to the log, under the
    // request id the answer names.
    let see_log = match crate::error::current_request_id() {
        Some(id) => format!("the server log has the detail under request id {id}"),
        None => "the server log has the detail".to_owned(),
    };
    let store = match &store {
        Ok(()) => "ok".to_owned(),
        Err(e) => {
            let e = crate::error::chain(e);
            tracing::warn!(error = %e, "readiness: the event store does not answer");
            format!("unreachable ({see_log})")
        }
    };
    let last_error = cdc.last_error.as_ref().map(|e| {
        tracing::info!(error = %e, "readiness: replication's last error");
        format!("replication was interrupted ({see_log})")
    });
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "store": store,
        "replication": {
            "streaming": cdc.streaming,
            "standby": cdc.standby,
            "confirmed_lsn": cdc.confirmed_lsn,
            "events_stored": cdc.events_stored,
            "last_error": last_error,
            "problem": cdc.problem,
            "reconnects": cdc.reconnects,
            "slot": cdc.slot.as_ref().map(|s| s.slot.clone()),
            "lag_bytes": cdc.slot.as_ref().map(|s| s.lag_bytes),
            "retained_wal_bytes": cdc.slot.as_ref().map(|s| s.retained_wal_bytes),
        },
        "mappings": {
            "loaded": mappings.mappings.len(),
            "loaded_at": mappings.loaded_at,
            "errors": mappings.errors,
        },
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// Prometheus text.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let cdc = state.cdc.borrow().clone();
    let committed = *state.store.committed_seq().borrow();
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, kind: &str, value: i64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    gauge(
        "pgtide_replication_streaming",
        "1 while the slot is streaming",
        "gauge",
        i64::from(cdc.streaming),
    );
    gauge(
        "pgtide_replication_reconnects_total",
        "Times the replication stream was lost and pgtide reconnected",
        "counter",
        i64::try_from(cdc.reconnects).unwrap_or(i64::MAX),
    );
    gauge(
        "pgtide_cdc_events_stored_total",
        "Events the CDC pipeline stored",
        "counter",
        cdc.events_stored as i64,
    );
    gauge(
        "pgtide_store_last_seq",
        "Highest seq this node has seen committed",
        "gauge",
        committed,
    );
    if let Some(slot) = &cdc.slot {
        gauge(
            "pgtide_replication_lag_bytes",
            "WAL bytes after the slot's confirmed position",
            "gauge",
            slot.lag_bytes,
        );
        gauge(
            "pgtide_replication_retained_wal_bytes",
            "WAL bytes the slot holds back",
            "gauge",
            slot.retained_wal_bytes,
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
