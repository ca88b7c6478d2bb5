//! pgtide's HTTP surface.
//!
//! - [`error`]: the one API error type and the contract's JSON error body.
//! - [`events`]: `POST /v1/events` and `GET /v1/events`.
//! - [`health`]: `/healthz`, `/readyz` and `/metrics`.
//! - [`mappings`]: `GET /v1/mappings`, the running set and the last reload's errors.
//! - [`hub`]: the one delivery path: store tailer, pattern index, bounded outboxes.
//! - [`ws`]: the `/ws` protocol.
//! - [`socketio`]: Socket.IO v4 on `/socket.io/`.
//! - [`exactly_once`]: `/ws/exactly-once`, durable consumers with acks.
//! - [`auth`]: who is calling.
//! - [`registry`]: `/v1/topics`, `/v1/topics/{topic}/schemas`, `/v1/dead-letters`.
//! - [`webhooks`]: `/v1/webhooks`, their deliveries and test sends.
//!
//! [`serve`] takes a bound listener so tests can bind port 0.

pub mod auth;
pub mod error;
pub mod events;
pub mod exactly_once;
pub mod health;
pub mod hub;
pub mod mappings;
pub mod registry;
pub mod session;
pub mod socketio;
pub mod webhooks;
pub mod ws;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use pgtide_cdc::CdcStatus;
use pgtide_store::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use error::ApiError;
pub use mappings::{MappingCommand, MappingCommandError, MappingsView};

/// Largest request body accepted (the contract's frame limit).
pub const MAX_BODY: usize = 1024 * 1024;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub cdc: watch::Receiver<CdcStatus>,
    pub mappings: watch::Receiver<MappingsView>,
    pub mapping_commands: tokio::sync::mpsc::Sender<mappings::MappingCommand>,
    pub hub: hub::Hub,
    pub auth: auth::Auth,
    pub exactly_once: exactly_once::Consumers,
    pub webhooks: pgtide_webhooks::Dispatcher,
}

/// The whole router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(health::routes())
        .merge(events::routes())
        .merge(registry::routes())
        .merge(mappings::routes())
        .merge(webhooks::routes())
        .route("/ws", axum::routing::get(ws::upgrade))
        .route(
            "/ws/exactly-once",
            axum::routing::get(exactly_once::upgrade),
        )
        .route("/v1/metrics/ws", axum::routing::get(ws_metrics))
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(socketio::layer(state.clone()))
        .with_state(state)
}

async fn ws_metrics(
    axum::extract::State(state): axum::extract::State<AppState>,
    _caller: auth::Caller,
) -> axum::Json<serde_json::Value> {
    use std::sync::atomic::Ordering;
    axum::Json(serde_json::json!({
        "active_connections": state.hub.connections.load(Ordering::Relaxed),
        "total_dropped_messages": state.hub.dropped.load(Ordering::Relaxed),
    }))
}

/// Serves until `shutdown`, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
