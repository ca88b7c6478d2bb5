//! Socket.IO v4 (path `/socket.io/`) with `socketioxide`, as SPEC §8: the
//! token in the handshake `auth: {token}` (or `?token=`); `subscribe`,
//! `unsubscribe` and `publish` answered through the acknowledgement callback
//! with `{status: "success", data}` or `{status: "error", error: {code,
//! message}}`; events arrive as `event` with the envelope. Same sessions,
//! delivery path and bounded outbox as `/ws`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pgtide_core::EventSource;
use serde_json::{Value, json};
use socketioxide::extract::{AckSender, Data, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::layer::SocketIoLayer;
use socketioxide::socket::Sid;
use socketioxide::{ParserConfig, SendError, SocketError, SocketIo};
use tokio::sync::Mutex;

use crate::AppState;
use crate::auth::{Caller, query_token};
use crate::hub::{Outgoing, dropped_notice};
use crate::session::{Refusal, Request, Session};

/// The Socket.IO layer to put on the router.
///
/// Every transport takes at most [`crate::MAX_BODY`] (1 MiB) per message, as
/// the handshake's `maxPayload` says: an HTTP long-polling body is cut off
/// once it passes the limit, and over WebSocket a frame whose header declares
/// more, or a fragmented message that grows past it, closes the connection
/// before its payload is read (the WebSocket default would buffer 64 MiB).
/// Binary attachments together are held to the same limit.
pub fn layer(state: AppState) -> SocketIoLayer {
    let (layer, io) = SocketIo::builder()
        .max_payload(crate::MAX_BODY as u64)
        .ws_max_message_size(crate::MAX_BODY)
        .ws_max_frame_size(crate::MAX_BODY)
        .with_parser(ParserConfig::common().max_incoming_binary_buf_size(crate::MAX_BODY))
        .build_layer();
    // The middleware authenticates (it may await a JWKS fetch) and leaves the
    // caller here; the connect handler then registers the event handlers
    // without awaiting anything, so no packet the client sends right after
    // connecting can arrive before its handler exists.
    let callers: Arc<std::sync::Mutex<HashMap<Sid, Caller>>> = Arc::default();
    let auth_state = state.clone();
    let checked = callers.clone();
    let check = move |s: SocketRef, TryData(auth): TryData<Value>| {
        let state = auth_state.clone();
        let checked = checked.clone();
        async move {
            let caller = authenticate(&state, &s, auth.ok().as_ref()).await?;
            lock(&checked).insert(s.id, caller);
            Ok::<(), Refused>(())
        }
    };
    // socketioxide spawns the future a connect handler returns, so the
    // registering happens in the closure itself, before it returns.
    let on_connect = move |s: SocketRef| {
        match lock(&callers).remove(&s.id) {
            Some(caller) => connected(state.clone(), s, caller),
            None => {
                let _ = s.disconnect();
            }
        }
        std::future::ready(())
    };
    io.ns("/", on_connect.with(check));
    layer
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Why a handshake was refused; Socket.IO sends it as `connect_error`.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

async fn authenticate(
    state: &AppState,
    s: &SocketRef,
    auth: Option<&Value>,
) -> Result<Caller, Refused> {
    let parts = s.req_parts();
    let token = auth
        .and_then(|a| a.get("token"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| query_token(parts.uri.query()));
    state
        .auth
        .authenticate(&parts.headers, token.as_deref())
        .await
        .map_err(|e| Refused(format!("{}: {}", e.code, e.message)))
}

fn answer(result: Result<Value, Refusal>) -> Value {
    match result {
        Ok(data) => json!({"status": "success", "data": data}),
        Err((code, message)) => {
            json!({"status": "error", "error": {"code": code, "message": message}})
        }
    }
}

fn request(data: Value) -> Result<Request, Refusal> {
    serde_json::from_value(data)
        .map_err(|e| ("invalid_message", format!("not a valid request: {e}")))
}

/// How long an emit waits before trying again while the socket's engine.io
/// queue is full.
const FULL_RETRY: Duration = Duration::from_millis(5);

/// Emits an `event`, waiting while the socket's engine.io queue is full (a
/// client reading slower than its events come): meanwhile the outbox drops
/// its oldest events and counts them in a `meta.ws` notice, as on `/ws`,
/// rather than the connection going quiet. `Err` once the socket is closed.
/// socketioxide offers no way to await room, hence the short retry.
async fn emit<T: ?Sized + serde::Serialize>(socket: &SocketRef, data: &T) -> Result<(), ()> {
    loop {
        match socket.emit("event", data) {
            Ok(()) => return Ok(()),
            Err(SendError::Socket(SocketError::InternalChannelFull)) => {
                tokio::time::sleep(FULL_RETRY).await;
            }
            Err(SendError::Socket(SocketError::Closed)) => return Err(()),
            Err(SendError::Serialize(e)) => {
                tracing::warn!(error = ?e, "an event could not be encoded for Socket.IO");
                return Ok(());
            }
        }
    }
}

fn connected(state: AppState, s: SocketRef, caller: Caller) {
    state.hub.connections.fetch_add(1, Ordering::Relaxed);
    let session = Session::new(state.clone(), caller, EventSource::Socketio);
    let outbox = session.outbox.clone();
    let session = Arc::new(Mutex::new(session));
    let writer_socket = s.clone();
    tokio::spawn(async move {
        while let Some(batch) = outbox.drain().await {
            for item in batch {
                let sent = match item {
                    Outgoing::Event(d) => match d.raw_json() {
                        Some(raw) => emit(&writer_socket, raw).await,
                        None => emit(&writer_socket, d.event()).await,
                    },
                    Outgoing::Dropped(n) => {
                        let notice: Value =
                            serde_json::from_str(&dropped_notice(n)).unwrap_or(Value::Null);
                        emit(&writer_socket, &notice).await
                    }
                    Outgoing::Frame(_) => Ok(()),
                };
                if sent.is_err() {
                    return;
                }
            }
        }
    });

    let sub = session.clone();
    s.on(
        "subscribe",
        move |Data(data): Data<Value>, ack: AckSender| {
            let session = sub.clone();
            async move {
                let mut session = session.lock().await;
                match request(data).and_then(|r| session.subscribe(&r)) {
                    Ok((data, replay)) => {
                        let _ = ack.send(&answer(Ok(data)));
                        if let Some(replay) = replay {
                            session.replay(replay).await;
                        }
                    }
                    Err(e) => {
                        let _ = ack.send(&answer(Err(e)));
                    }
                }
            }
        },
    );
    let unsub = session.clone();
    s.on(
        "unsubscribe",
        move |Data(data): Data<Value>, ack: AckSender| {
            let session = unsub.clone();
            async move {
                let result = match request(data) {
                    Ok(r) => session.lock().await.unsubscribe(&r),
                    Err(e) => Err(e),
                };
                let _ = ack.send(&answer(result));
            }
        },
    );
    let publisher = session.clone();
    s.on("publish", move |Data(data): Data<Value>, ack: AckSender| {
        let session = publisher.clone();
        async move {
            let result = match request(data) {
                Ok(r) => session.lock().await.publish(r).await,
                Err(e) => Err(e),
            };
            let _ = ack.send(&answer(result));
        }
    });
    let closing = session.clone();
    let counter = state.hub.connections.clone();
    s.on_disconnect(move || {
        let session = closing.clone();
        let counter = counter.clone();
        async move {
            session.lock().await.close();
            counter.fetch_sub(1, Ordering::Relaxed);
        }
    });
}
