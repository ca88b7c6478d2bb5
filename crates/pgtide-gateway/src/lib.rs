//! pgtide's HTTP surface.
//!
//! - [`error`]: the one API error type, the contract's JSON error body on
//!   every error answer, and request ids.
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
//! - [`openapi`]: the document at `/v1/openapi.json`.
//!
//! `/` serves the admin page (`admin.html`).
//! - [`webhooks`]: `/v1/webhooks`, their deliveries and test sends.
//!
//! [`serve`] takes a bound listener so tests can bind port 0, and the
//! [`ConnectionLimits`]: at most so many connections, and a bound on how
//! long a client may take to send its headers.

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
pub mod webhooks;
pub mod ws;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::header;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use pgtide_cdc::CdcStatus;
use pgtide_store::Store;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::ApiError;
pub use mappings::{ApiOwner, MappingCommand, MappingCommandError, MappingOwner, MappingsView};

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
    /// Tables operators may map through the API (`--api-mapping-tables`),
    /// as `schema.table`.
    pub api_mapping_tables: Vec<String>,
    pub hub: hub::Hub,
    pub auth: auth::Auth,
    pub exactly_once: exactly_once::Consumers,
    pub webhooks: pgtide_webhooks::Dispatcher,
    /// SQL over WebSocket, when `--sql-role` turns it on.
    pub sql: Option<Arc<pgtide_sql::SqlAccess>>,
    /// `--allow-reserved-publish`: admins may publish to pgtide's own
    /// topics and types (see [`publish`]).
    pub allow_reserved_publish: bool,
    /// Fires on SIGTERM: open WebSockets close with 1001 (going away).
    pub shutdown: CancellationToken,
    /// Open WebSockets, so shutdown can wait for their close frames.
    pub sockets: tokio_util::task::TaskTracker,
}

/// The close frame a WebSocket gets when pgtide shuts down.
pub(crate) fn going_away() -> axum::extract::ws::CloseFrame {
    axum::extract::ws::CloseFrame {
        code: 1001,
        reason: "pgtide is shutting down".into(),
    }
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
        .route("/favicon.ico", axum::routing::get(favicon))
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(error::error_bodies))
        .layer(socketio::layer(state.clone()))
        .layer(axum::middleware::from_fn(error::request_id))
        .with_state(state)
}

/// The admin page: registry, mappings, webhooks and their deliveries, dead
/// letters and a live tail, all through the public API with the token the
/// user pastes (or passes as `#token=` in the address, which never reaches
/// the server).
async fn admin_page() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("admin.html"))
}

/// The admin page's icon (SVG, which browsers take at any address), so a
/// browser's request for it is not a 404.
async fn favicon() -> impl axum::response::IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        include_str!("favicon.svg"),
    )
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

/// Limits on client connections, so slow or many clients cannot exhaust the
/// server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most connections open at once (HTTP, WebSocket and Socket.IO
    /// together, counted until the socket closes, upgraded or not); further
    /// ones wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers, from when the
    /// server starts waiting for them: the first request, and every next one
    /// on a keep-alive connection (so it is the idle timeout too).
    pub header_read_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> ConnectionLimits {
        ConnectionLimits {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves until `shutdown`, then stops accepting and finishes in-flight
/// requests (upgraded WebSockets end with their own shutdown handling).
///
/// HTTP/1.1 with upgrades, one task per connection. A connection holds a
/// permit of `limits.max_connections` in its socket, so the permit is
/// returned when the socket closes, after an upgrade too.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = router(state);
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    // Each connection task holds a receiver; all dropped means all finished.
    let (finished_tx, finished_rx) = watch::channel(());
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
        };
        // Without TCP_NODELAY a frame written while the previous one is not
        // yet acknowledged waits for the peer's delayed ACK (~40 ms): an
        // event right after a reply arrived that late.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY could not be set");
        }
        let io = TokioIo::new(Counted {
            tcp,
            _permit: permit,
        });
        let connection = http
            .serve_connection(io, TowerToHyperService::new(app.clone()))
            .with_upgrades();
        let shutdown = shutdown.clone();
        let finished = finished_rx.clone();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(finished);
        });
    }
    drop(listener);
    drop(finished_rx);
    finished_tx.closed().await;
    Ok(())
}

/// After a failed accept: errors of the one connection (reset before
/// accepted) are skipped; others (out of file descriptors) are logged and
/// waited out for a moment instead of spinning.
async fn accept_failed(e: &std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// A client socket that holds its connection permit until it is dropped.
struct Counted {
    tcp: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}
