//! pgtide's HTTP surface.
//!
//! - [`error`]: the one API error type and the contract's JSON error body.
//! - [`events`]: `POST /v1/events` and `GET /v1/events`.
//! - [`publish`]: the checks every client publish passes, on every transport.
//! - [`health`]: `/healthz`, `/readyz` and `/metrics`.
//! - [`mappings`]: `GET /v1/mappings`, the running set and the last reload's errors.
//! - [`hub`]: the one delivery path: store tailer, pattern index, bounded outboxes.
//! - [`ws`]: the `/ws` protocol.
//! - [`socketio`]: Socket.IO v4 on `/socket.io/`.
//! - [`exactly_once`]: `/ws/exactly-once`, durable consumers with acks.
//! - [`auth`]: who is calling.
//! - [`registry`]: `/v1/topics`, `/v1/topics/{topic}/schemas`, `/v1/dead-letters`.
//! - [`sql`]: SQL transactions over `/ws`.
//! - [`openapi`]: the document at `/v1/openapi.json`.
//!
//! `/` serves the admin page (`admin.html`).
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
pub mod openapi;
pub mod publish;
pub mod registry;
pub mod session;
pub mod socketio;
pub mod sql;
pub mod webhooks;
pub mod ws;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::header;
use pgtide_cdc::CdcStatus;
use pgtide_store::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::ApiError;
pub use mappings::{MappingCommand, MappingCommandError, MappingsView};

/// Largest request body accepted (the contract's frame limit).
pub const MAX_BODY: usize = 1024 * 1024;

/// What every handler can reach, shared: each connection and request holds
/// one pointer to it rather than its own copy (an idle WebSocket held two).
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl From<Services> for AppState {
    fn from(services: Services) -> AppState {
        AppState(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// The services behind [`AppState`].
pub struct Services {
    pub store: Store,
    pub cdc: watch::Receiver<CdcStatus>,
    pub mappings: watch::Receiver<MappingsView>,
    pub mapping_commands: tokio::sync::mpsc::Sender<mappings::MappingCommand>,
    pub hub: hub::Hub,
    pub auth: auth::Auth,
    pub exactly_once: exactly_once::Consumers,
    pub webhooks: pgtide_webhooks::Dispatcher,
    /// SQL over WebSocket, when `--sql-role` turns it on.
    pub sql: Option<Arc<sql::SqlAccess>>,
    /// `--allow-reserved-publish`: admins may publish to pgtide's own
    /// topics and types (see [`publish`]).
    pub allow_reserved_publish: bool,
}

/// The whole router, and the OpenAPI document its annotated routes make.
pub fn router(state: AppState) -> Router {
    let (routes, api) = OpenApiRouter::with_openapi(openapi::base())
        .merge(health::routes())
        .merge(events::routes())
        .merge(registry::routes())
        .merge(mappings::routes())
        .merge(webhooks::routes())
        .routes(routes!(ws::upgrade))
        .routes(routes!(exactly_once::upgrade))
        .routes(routes!(ws_metrics))
        .split_for_parts();
    let document: Arc<str> = openapi::finish(api)
        .to_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
        .into();
    routes
        .route(
            "/v1/openapi.json",
            axum::routing::get(move || {
                let document = document.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        document.to_string(),
                    )
                }
            }),
        )
        .route("/", axum::routing::get(admin_page))
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(socketio::layer(state.clone()))
        .with_state(state)
}

/// The admin page: registry, mappings, webhooks and their deliveries, dead
/// letters and a live tail, all through the public API with the token the
/// user pastes (or passes as `#token=` in the address, which never reaches
/// the server).
async fn admin_page() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("admin.html"))
}

/// Live connection and drop counts for `/ws`, `/ws/exactly-once` and Socket.IO.
#[utoipa::path(get, path = "/v1/metrics/ws", tag = "realtime",
    responses((status = 200, description = "`{\"active_connections\", \"total_dropped_messages\"}`", body = Object)))]
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
    use axum::serve::ListenerExt;
    // Without TCP_NODELAY a frame written while the previous one is not yet
    // acknowledged waits for the peer's delayed ACK (~40 ms): an event right
    // after a reply arrived that late.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY could not be set");
        }
    });
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
