//! `/ws`: the WebSocket protocol of SPEC §7. One JSON object per text frame;
//! the verb is `type` or `action`; every request gets one reply with its `id`
//! echoed. Events are the envelope of §3, through the connection's bounded
//! [`Outbox`].

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures_util::stream::SplitStream;
use futures_util::{SinkExt, StreamExt};
use pgtide_core::EventSource;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::hub::{Outgoing, dropped_notice};
use crate::session::{Request, Session};
use crate::{ApiError, AppState};
use pgtide_sql::{Operation, Reply, SqlSession};

/// Largest frame accepted; larger ones close the connection with 1009.
pub const MAX_FRAME: usize = 1024 * 1024;

/// Frames up to this size are read whole, so that one over [`MAX_FRAME`] is
/// refused with 1009 and the connection still closes cleanly (the client
/// reads the close frame rather than a reset of its unfinished send); larger
/// frames are cut off at once rather than buffered.
const READ_FRAME_LIMIT: usize = 2 * MAX_FRAME;

/// How long a refused connection goes on reading (and discarding) after its
/// close frame, waiting for the client's close.
const LINGER: Duration = Duration::from_secs(2);

/// Whether a read error is a message over [`MAX_FRAME`]: `Some(true)` when
/// it was read whole and the stream can still be read to a clean close,
/// `Some(false)` when it was larger still and was cut off.
pub(crate) fn oversized(e: &axum::Error) -> Option<bool> {
    let text = e.to_string().to_lowercase();
    if !(text.contains("too long") || text.contains("too big")) {
        return None;
    }
    Some(!text.contains(&format!("> {READ_FRAME_LIMIT}")))
}

/// The close frame for a message over [`MAX_FRAME`].
pub(crate) fn too_large() -> CloseFrame {
    CloseFrame {
        code: 1009,
        reason: format!("frame larger than {MAX_FRAME} bytes").into(),
    }
}

/// After a close frame: reads and discards until the client's close, the
/// end of the stream, an error or [`LINGER`], so the client sees the close.
pub(crate) async fn linger(stream: &mut SplitStream<WebSocket>) {
    let _ = tokio::time::timeout(LINGER, async {
        while let Some(Ok(message)) = stream.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// Each connection's read buffer. tungstenite fills its whole capacity on
/// every read (128 KiB by default), which made an idle connection cost
/// ~140 KiB of RSS; larger frames still arrive, in more reads.
const READ_BUFFER: usize = 4 * 1024;

#[derive(Debug, Deserialize)]
pub struct TokenQuery {
    pub(crate) token: Option<String>,
}

/// The `/ws` protocol (SPEC §7). Authenticates before upgrading, so a bad
/// token is a plain 401.
#[utoipa::path(get, path = "/ws", tag = "realtime",
    params(("token" = Option<String>, Query, description = "JWT, when no Authorization header can be sent")),
    responses(
        (status = 101, description = "WebSocket: one JSON object per text frame (subscribe, unsubscribe, ping, publish, transactions)"),
    ))]
pub async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    authenticated_upgrade(state, &headers, query, ws, connection).await
}

/// The upgrade both WebSocket endpoints share: authenticate first (401 on a
/// bad token), cap frames at [`MAX_FRAME`], then run `serve` on the socket.
pub(crate) async fn authenticated_upgrade<F, Fut>(
    state: AppState,
    headers: &HeaderMap,
    query: TokenQuery,
    ws: WebSocketUpgrade,
    serve: F,
) -> Result<Response, ApiError>
where
    F: FnOnce(AppState, Caller, WebSocket) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let caller = state
        .auth
        .authenticate(headers, query.token.as_deref())
        .await?;
    Ok(ws
        .read_buffer_size(READ_BUFFER)
        .max_message_size(MAX_FRAME)
        .max_frame_size(READ_FRAME_LIMIT)
        .on_upgrade(move |socket| serve(state, caller, socket))
        .into_response())
}

/// A reply frame: `{"id","status","data","error"}`.
fn reply(id: &Value, result: Result<Value, (&str, String)>) -> String {
    match result {
        Ok(data) => json!({"id": id, "status": "success", "data": data, "error": null}),
        Err((code, message)) => {
            json!({"id": id, "status": "error", "data": null, "error": {"code": code, "message": message}})
        }
    }
    .to_string()
}

async fn connection(state: AppState, caller: Caller, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let mut session = Session::new(state.clone(), caller, EventSource::Ws);
    state.hub.connections.fetch_add(1, Ordering::Relaxed);
    let writer_outbox = session.outbox.clone();
    let writer = tokio::spawn(async move {
        while let Some(batch) = writer_outbox.drain().await {
            for item in batch {
                let text: Utf8Bytes = match item {
                    Outgoing::Event(d) => d.json(),
                    Outgoing::Frame(f) => f.as_ref().into(),
                    Outgoing::Dropped(n) => dropped_notice(n).into(),
                };
                // Queued, not flushed: one write for the whole batch.
                if sink.feed(Message::Text(text)).await.is_err() {
                    return sink;
                }
            }
            if sink.flush().await.is_err() {
                return sink;
            }
        }
        sink
    });
    let mut close: Option<(CloseFrame, bool)> = None;
    // Started by the first transaction message; dropped (cancelling its
    // running statement, rolling back) when the socket closes.
    let mut sql: Option<SqlSession> = None;
    let _open = state.sockets.token();
    loop {
        let message = tokio::select! {
            message = stream.next() => message,
            () = state.shutdown.cancelled() => {
                close = Some((crate::going_away(), false));
                break;
            }
        };
        let Some(message) = message else { break };
        match message {
            Ok(Message::Text(text)) => {
                // Boxed: its state is large and an idle connection need not carry it.
                Box::pin(handle(&mut session, &mut sql, text.as_str())).await;
            }
            Ok(Message::Binary(_)) => session.outbox.push_frame(reply(
                &Value::Null,
                Err((
                    "unsupported_frame",
                    "binary frames are not supported; send JSON text frames".into(),
                )),
            )),
            Ok(Message::Close(_)) => break,
            Ok(Message::Ping(_) | Message::Pong(_)) => {}
            Err(e) => {
                close = oversized(&e).map(|drain| (too_large(), drain));
                tracing::debug!(error = %e, "websocket read ended");
                break;
            }
        }
    }
    drop(sql);
    session.close();
    if let Ok(mut sink) = writer.await {
        Box::pin(async {
            if let Some((frame, drain)) = close {
                let _ = sink.send(Message::Close(Some(frame))).await;
                if drain {
                    linger(&mut stream).await;
                }
            }
            let _ = sink.close().await;
        })
        .await;
    }
    state.hub.connections.fetch_sub(1, Ordering::Relaxed);
}

/// A `/ws` frame: the verb (`type` or `action`), the echoed `id`, and the
/// operation's fields.
#[derive(Debug, Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: Option<String>,
    action: Option<String>,
    #[serde(default)]
    id: Value,
    #[serde(flatten)]
    request: Request,
}

async fn handle(session: &mut Session, sql: &mut Option<SqlSession>, text: &str) {
    let frame: Frame = match serde_json::from_str(text) {
        Ok(f) => f,
        Err(e) => {
            let id = serde_json::from_str::<Value>(text)
                .ok()
                .and_then(|v| v.get("id").cloned())
                .unwrap_or(Value::Null);
            session.outbox.push_frame(reply(
                &id,
                Err(("invalid_message", format!("not a valid request: {e}"))),
            ));
            return;
        }
    };
    let id = frame.id;
    let kind = frame.kind.or(frame.action);
    if let Some(operation) = kind.as_deref().and_then(Operation::from_type) {
        transaction(session, sql, id, operation, frame.request.data);
        return;
    }
    let result = match kind.as_deref() {
        Some("subscribe") => match session.subscribe(&frame.request) {
            Ok((data, replay)) => {
                // The reply precedes the replayed events.
                session.outbox.push_frame(reply(&id, Ok(data)));
                if let Some(replay) = replay {
                    session.replay(replay).await;
                }
                return;
            }
            Err(e) => Err(e),
        },
        Some("unsubscribe") => session.unsubscribe(&frame.request),
        Some("ping") => Ok(json!({"pong": true})),
        Some("publish") => session.publish(frame.request).await,
        Some(other) => Err((
            "unknown_type",
            format!(
                "unknown message type {other:?}: use subscribe, unsubscribe, ping, publish or the transaction messages"
            ),
        )),
        None => Err((
            "invalid_message",
            "the message has no \"type\" (or \"action\")".into(),
        )),
    };
    session.outbox.push_frame(reply(&id, result));
}

/// Hands a transaction message to the connection's SQL worker (started on
/// first use), whose replies go out through the outbox as
/// `TransactionResult` frames.
fn transaction(
    session: &Session,
    sql: &mut Option<SqlSession>,
    id: Value,
    operation: Operation,
    data: Option<Value>,
) {
    let outbox = session.outbox.clone();
    let send = move |reply: Reply| outbox.push_frame(transaction_result(reply));
    let Some(access) = session.state.sql.clone() else {
        send(Reply {
            id,
            outcome: pgtide_sql::transactions::refused(
                operation,
                pgtide_sql::SqlFailure::new(
                    "sql_disabled",
                    "SQL over WebSocket is off on this server (start it with --sql-role ROLE)",
                ),
            ),
        });
        return;
    };
    let worker = sql.get_or_insert_with(|| {
        SqlSession::spawn(access, session.caller.claims.clone(), send.clone())
    });
    if let Err(reply) = worker.submit(id, operation, data) {
        send(*reply);
    }
}

fn transaction_result(reply: Reply) -> String {
    let error = reply
        .outcome
        .failure
        .map(|f| json!({"code": f.code, "message": f.message}));
    let status = if error.is_some() { "error" } else { "success" };
    json!({"id": reply.id, "type": "TransactionResult", "status": status, "data": reply.outcome.data, "error": error})
        .to_string()
}
