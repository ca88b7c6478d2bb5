//! `/ws`: the WebSocket protocol of SPEC §7. One JSON object per text frame;
//! the verb is `type` or `action`; every request gets one reply with its `id`
//! echoed. Events are the envelope of §3, through the connection's bounded
//! [`Outbox`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use pgtide_core::{EventSource, NewEvent, Pattern, Topic};
use pgtide_store::EventQuery;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::auth::Caller;
use crate::hub::{Delivery, Filter, Outbox, Outgoing, SubscriptionHandle, dropped_notice};
use crate::{ApiError, AppState};

/// Largest frame accepted; larger ones close the connection with 1009.
pub const MAX_FRAME: usize = 1024 * 1024;

#[derive(Debug, Deserialize)]
pub struct TokenQuery {
    pub(crate) token: Option<String>,
}

/// Authenticates before upgrading, so a bad token is a plain 401.
pub async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let caller = state
        .auth
        .authenticate(&headers, query.token.as_deref())
        .await?;
    Ok(ws
        .max_message_size(MAX_FRAME)
        .max_frame_size(MAX_FRAME)
        .on_upgrade(move |socket| connection(state, caller, socket))
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

struct Connection {
    state: AppState,
    caller: Caller,
    outbox: Arc<Outbox>,
    subscriptions: HashMap<String, SubscriptionHandle>,
}

async fn connection(state: AppState, caller: Caller, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let outbox = Arc::new(Outbox::default());
    state.hub.connections.fetch_add(1, Ordering::Relaxed);
    let writer_outbox = outbox.clone();
    let writer = tokio::spawn(async move {
        while let Some(batch) = writer_outbox.drain().await {
            for item in batch {
                let text: Arc<str> = match item {
                    Outgoing::Event(d) => d.json,
                    Outgoing::Frame(f) => f,
                    Outgoing::Dropped(n) => dropped_notice(n).into(),
                };
                if sink
                    .send(Message::Text(text.as_ref().into()))
                    .await
                    .is_err()
                {
                    return sink;
                }
            }
        }
        sink
    });
    let mut conn = Connection {
        state: state.clone(),
        caller,
        outbox: outbox.clone(),
        subscriptions: HashMap::new(),
    };
    let mut close: Option<CloseFrame> = None;
    while let Some(message) = stream.next().await {
        match message {
            Ok(Message::Text(text)) => conn.handle(text.as_str()).await,
            Ok(Message::Binary(_)) => conn.outbox.push_frame(reply(
                &Value::Null,
                Err((
                    "unsupported_frame",
                    "binary frames are not supported; send JSON text frames".into(),
                )),
            )),
            Ok(Message::Close(_)) => break,
            Ok(Message::Ping(_) | Message::Pong(_)) => {}
            Err(e) => {
                let too_big = e.to_string().to_lowercase().contains("too long")
                    || e.to_string().to_lowercase().contains("too big");
                if too_big {
                    close = Some(CloseFrame {
                        code: 1009,
                        reason: format!("frame larger than {MAX_FRAME} bytes").into(),
                    });
                }
                tracing::debug!(error = %e, "websocket read ended");
                break;
            }
        }
    }
    for handle in conn.subscriptions.values() {
        state.hub.unsubscribe(handle);
    }
    outbox.close();
    if let Ok(mut sink) = writer.await {
        if let Some(frame) = close {
            let _ = sink.send(Message::Close(Some(frame))).await;
        }
        let _ = sink.close().await;
    }
    state.hub.connections.fetch_sub(1, Ordering::Relaxed);
}

/// A client request, before its verb is known.
#[derive(Debug, Deserialize)]
struct Request {
    #[serde(rename = "type")]
    kind: Option<String>,
    action: Option<String>,
    #[serde(default)]
    id: Value,
    topic: Option<String>,
    from_seq: Option<i64>,
    filter: Option<Value>,
    event_type: Option<String>,
    data: Option<Value>,
    #[serde(default)]
    attributes: Option<Map<String, Value>>,
}

impl Connection {
    async fn handle(&mut self, text: &str) {
        let request: Request = match serde_json::from_str(text) {
            Ok(r) => r,
            Err(e) => {
                let id = serde_json::from_str::<Value>(text)
                    .ok()
                    .and_then(|v| v.get("id").cloned())
                    .unwrap_or(Value::Null);
                self.outbox.push_frame(reply(
                    &id,
                    Err(("invalid_message", format!("not a valid request: {e}"))),
                ));
                return;
            }
        };
        let id = request.id.clone();
        let verb = request.kind.clone().or_else(|| request.action.clone());
        let result = match verb.as_deref() {
            Some("subscribe") => {
                // Replies itself: with from_seq the reply precedes the replay.
                self.subscribe(&request).await;
                return;
            }
            Some("unsubscribe") => self.unsubscribe(&request),
            Some("ping") => Ok(json!({"pong": true})),
            Some("publish") => self.publish(request).await,
            Some(other) => Err((
                "unknown_type",
                format!(
                    "unknown message type {other:?}: use subscribe, unsubscribe, ping or publish"
                ),
            )),
            None => Err((
                "invalid_message",
                "the message has no \"type\" (or \"action\")".into(),
            )),
        };
        self.outbox.push_frame(reply(&id, result));
    }

    fn pattern(request: &Request) -> Result<Pattern, (&'static str, String)> {
        let topic = request
            .topic
            .as_deref()
            .ok_or(("invalid_message", "missing \"topic\"".to_owned()))?;
        Pattern::parse(topic).map_err(|e| ("invalid_topic", e.to_string()))
    }

    async fn subscribe(&mut self, request: &Request) {
        let (pattern, filter) = match self.check_subscription(request) {
            Ok(checked) => checked,
            Err(e) => {
                self.outbox.push_frame(reply(&request.id, Err(e)));
                return;
            }
        };
        let key = pattern.as_str().to_owned();
        if let Some(old) = self.subscriptions.remove(&key) {
            self.state.hub.unsubscribe(&old);
        }
        let handle = self.state.hub.subscribe(
            pattern.clone(),
            filter.clone(),
            self.caller.visibility(),
            self.outbox.clone(),
            request.from_seq.is_some(),
        );
        let data = json!({"action": "subscribed", "topic": key});
        self.outbox.push_frame(reply(&request.id, Ok(data)));
        if let Some(from) = request.from_seq {
            let last = self.replay(&pattern, &filter, from).await;
            self.state.hub.finish_replay(&handle, last);
        }
        self.subscriptions.insert(key, handle);
    }

    fn check_subscription(
        &self,
        request: &Request,
    ) -> Result<(Pattern, Filter), (&'static str, String)> {
        let pattern = Self::pattern(request)?;
        if !self.caller.may_subscribe(&pattern) {
            return Err((
                "forbidden",
                format!("this token may not subscribe to {pattern}"),
            ));
        }
        let filter: Filter = match &request.filter {
            None | Some(Value::Null) => Filter::default(),
            Some(v) => {
                serde_json::from_value(v.clone()).map_err(|e| ("invalid_filter", e.to_string()))?
            }
        };
        if let Some(from) = request.from_seq
            && from < 0
        {
            return Err((
                "invalid_message",
                format!("from_seq {from} must not be negative"),
            ));
        }
        Ok((pattern, filter))
    }

    /// Sends stored events after `from` that the subscription would see,
    /// waiting for room rather than dropping; returns the last seq sent.
    async fn replay(&self, pattern: &Pattern, filter: &Filter, from: i64) -> i64 {
        let mut last = from;
        let visibility = self.caller.visibility();
        loop {
            let query = EventQuery {
                topics: vec![pattern.clone()],
                after_seq: Some(last),
                limit: 1000,
                org_scope: self.caller.org_scope(),
                ..EventQuery::default()
            };
            let events = match self.state.store.query(&query).await {
                Ok(events) => events,
                Err(e) => {
                    tracing::warn!(error = %e, "replay query failed");
                    return last;
                }
            };
            let n = events.len();
            for event in events {
                last = event.seq;
                if visibility.may_see(event.org_id) && filter.matches(&event) {
                    self.outbox.wait_for_room().await;
                    self.outbox.push_event(Delivery::new(event));
                }
            }
            if n < 1000 {
                return last;
            }
        }
    }

    fn unsubscribe(&mut self, request: &Request) -> Result<Value, (&'static str, String)> {
        let pattern = Self::pattern(request)?;
        match self.subscriptions.remove(pattern.as_str()) {
            Some(handle) => {
                self.state.hub.unsubscribe(&handle);
                Ok(json!({"action": "unsubscribed", "topic": pattern.as_str()}))
            }
            None => Err(("not_subscribed", format!("not subscribed to {pattern}"))),
        }
    }

    async fn publish(&self, request: Request) -> Result<Value, (&'static str, String)> {
        let topic = request
            .topic
            .as_deref()
            .ok_or(("invalid_message", "missing \"topic\"".to_owned()))?;
        let topic = Topic::parse(topic).map_err(|e| ("invalid_topic", e.to_string()))?;
        if !self.caller.may_publish(topic.as_str()) {
            return Err((
                "forbidden",
                format!("this token may not publish to {topic}"),
            ));
        }
        let event_type = request
            .event_type
            .unwrap_or_else(|| topic.as_str().to_owned());
        Topic::parse(&event_type)
            .map_err(|e| ("invalid_message", format!("invalid event_type: {e}")))?;
        let data = request.data.unwrap_or(Value::Null);
        if let Err(issues) = self.state.store.schemas().validate(topic.as_str(), &data) {
            let text: Vec<String> = issues
                .iter()
                .map(|i| format!("{} (at {:?})", i.message, i.pointer))
                .collect();
            return Err(("validation_failed", text.join("; ")));
        }
        let mut event = NewEvent::new(topic.into_string(), event_type, EventSource::Ws, data);
        event.org_id = self.caller.org_id();
        if let Some(attributes) = request.attributes {
            event.attributes = attributes
                .into_iter()
                .map(|(k, v)| match v {
                    Value::String(s) => (k, s),
                    other => (k, other.to_string()),
                })
                .collect();
        }
        let stored = self.state.store.publish(vec![event]).await.map_err(|e| {
            tracing::error!(error = %e, "publish over websocket failed");
            ("internal", "the event could not be stored".to_owned())
        })?;
        let e = stored
            .first()
            .ok_or(("internal", "nothing stored".to_owned()))?;
        Ok(
            json!({"event_id": e.id, "event_type": e.event_type, "topic": e.topic, "seq": e.seq, "timestamp": e.ts}),
        )
    }
}
