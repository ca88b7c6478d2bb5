//! `/ws/exactly-once`: durable consumers with acknowledgements (SPEC §7).
//!
//! A connection subscribes as a named `consumer`. Events matching its pattern
//! are sent with at most `max_in_flight` unacknowledged; each is answered with
//! `ack` or `nack`. An acknowledged event is never sent to that consumer again
//! (acks are stored before anything else happens); an unacknowledged one is
//! sent again, marked `"redelivered": true`, after a nack, after
//! `ack_timeout_ms`, or on reconnect. A second connection for the same
//! consumer takes over; the first is closed with 4409.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use pgtide_core::{Event, Pattern};
use pgtide_store::EventQuery;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::auth::Caller;
use crate::hub::Filter;
use crate::ws::{TokenQuery, linger, oversized, too_large};
use crate::{ApiError, AppState};

const DEFAULT_MAX_IN_FLIGHT: u64 = 100;
/// Each consumer holds at most this many events in memory, unacknowledged.
const MAX_IN_FLIGHT: std::ops::RangeInclusive<u64> = 1..=1000;
const DEFAULT_ACK_TIMEOUT_MS: u64 = 30_000;
/// Below a second, timeouts turn into a redelivery storm; above an hour, a
/// lost ack waits for the reconnect anyway.
const ACK_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 1000..=3_600_000;

/// Which connection holds each consumer on this node.
#[derive(Clone, Default)]
pub struct Consumers {
    held: Arc<Mutex<HashMap<String, (u64, CancellationToken)>>>,
    next: Arc<AtomicU64>,
}

impl Consumers {
    /// Takes `name` over: the previous holder's token is cancelled.
    fn take(&self, name: &str) -> (u64, CancellationToken) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, previous)) = held.insert(name.to_owned(), (id, token.clone())) {
            previous.cancel();
        }
        (id, token)
    }

    fn release(&self, name: &str, id: u64) {
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if held.get(name).is_some_and(|(holder, _)| *holder == id) {
            held.remove(name);
        }
    }
}

/// Durable consumers with acknowledgements (SPEC §7).
#[utoipa::path(get, path = "/ws/exactly-once", tag = "realtime",
    params(("token" = Option<String>, Query, description = "JWT, when no Authorization header can be sent")),
    responses(
        (status = 101, description = "WebSocket: subscribe with a durable `consumer`, then ack/nack each event"),
    ))]
pub async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    crate::ws::authenticated_upgrade(state, &headers, query, ws, connection).await
}

#[derive(Debug, Deserialize)]
struct Request {
    #[serde(rename = "type")]
    kind: Option<String>,
    action: Option<String>,
    #[serde(default)]
    id: Value,
    topic: Option<String>,
    consumer: Option<String>,
    from_seq: Option<i64>,
    filter: Option<Value>,
    /// Read as JSON and checked by [`bounded`], so a bad value is named.
    max_in_flight: Option<Value>,
    ack_timeout_ms: Option<Value>,
    seq: Option<i64>,
}

struct InFlight {
    event: Arc<Event>,
    sent_at: Instant,
}

/// One consumer's state on its connection.
struct Active {
    name: String,
    pattern: Pattern,
    filter: Filter,
    max_in_flight: usize,
    ack_timeout: Duration,
    /// Everything at or below is acknowledged or not for this consumer.
    acked_seq: i64,
    acked_above: BTreeSet<i64>,
    /// Sent before this connection: resending these is a redelivery.
    delivered_before: i64,
    /// Highest seq fetched from the store so far.
    fetched: i64,
    in_flight: BTreeMap<i64, InFlight>,
    /// Nacked or timed out, waiting to go again.
    resend: BTreeSet<i64>,
    release: CancellationToken,
    holder: u64,
}

type Sink = SplitSink<WebSocket, Message>;

fn reply(id: &Value, result: Result<Value, (&str, String)>) -> Message {
    let v = match result {
        Ok(data) => json!({"id": id, "status": "success", "data": data, "error": null}),
        Err((code, message)) => {
            json!({"id": id, "status": "error", "data": null, "error": {"code": code, "message": message}})
        }
    };
    Message::Text(v.to_string().into())
}

async fn connection(state: AppState, caller: Caller, socket: WebSocket) {
    state.hub.connections.fetch_add(1, Ordering::Relaxed);
    let (mut sink, mut stream) = socket.split();
    let mut active: Option<Active> = None;
    let mut committed = state.store.committed_seq();
    let mut poll = tokio::time::interval(Duration::from_millis(200));
    let mut close: Option<(CloseFrame, bool)> = None;
    let _open = state.sockets.token();
    loop {
        if let Some(a) = active.as_mut()
            && let Err(e) = fill(&state, &caller, a, &mut sink).await
        {
            tracing::debug!(error = %e, "exactly-once delivery ended");
            break;
        }
        let taken_over = async {
            match &active {
                Some(a) => a.release.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            message = stream.next() => {
                let Some(Ok(message)) = message else {
                    if let Some(Err(e)) = message {
                        close = oversized(&e).map(|drain| (too_large(), drain));
                    }
                    break;
                };
                let text = match message {
                    Message::Text(t) => t,
                    Message::Close(_) => break,
                    Message::Binary(_) => {
                        let r = reply(&Value::Null, Err(("unsupported_frame", "binary frames are not supported".into())));
                        if sink.send(r).await.is_err() { break; }
                        continue;
                    }
                    _ => continue,
                };
                if let Some(r) = handle(&state, &caller, &mut active, text.as_str()).await
                    && sink.send(r).await.is_err()
                {
                    break;
                }
            }
            () = state.shutdown.cancelled() => {
                close = Some((crate::going_away(), false));
                break;
            }
            _ = taken_over => {
                close = Some((CloseFrame { code: 4409, reason: "another connection took over this consumer".into() }, false));
                break;
            }
            _ = committed.changed() => {}
            _ = poll.tick() => {}
        }
    }
    if let Some(a) = &active {
        state.exactly_once.release(&a.name, a.holder);
    }
    if let Some((frame, drain)) = close {
        let _ = sink.send(Message::Close(Some(frame))).await;
        if drain {
            linger(&mut stream).await;
        }
    }
    let _ = sink.close().await;
    state.hub.connections.fetch_sub(1, Ordering::Relaxed);
}

/// Handles one client frame; returns the reply, if one is owed.
async fn handle(
    state: &AppState,
    caller: &Caller,
    active: &mut Option<Active>,
    text: &str,
) -> Option<Message> {
    let request: Request = match serde_json::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            return Some(reply(
                &Value::Null,
                Err(("invalid_message", format!("not a valid request: {e}"))),
            ));
        }
    };
    let id = request.id.clone();
    match request.kind.as_deref().or(request.action.as_deref()) {
        Some("subscribe") => Some(reply(&id, subscribe(state, caller, active, &request).await)),
        Some("ack") | Some("nack") => {
            let nack = request.kind.as_deref().or(request.action.as_deref()) == Some("nack");
            match acknowledge(state, active, request.seq, nack).await {
                Ok(()) => None,
                Err(e) => Some(reply(&id, Err(e))),
            }
        }
        Some("ping") => Some(reply(&id, Ok(json!({"pong": true})))),
        Some(other) => Some(reply(
            &id,
            Err((
                "unknown_type",
                format!("unknown message type {other:?}: use subscribe, ack, nack or ping"),
            )),
        )),
        None => Some(reply(
            &id,
            Err((
                "invalid_message",
                "the message has no \"type\" (or \"action\")".into(),
            )),
        )),
    }
}

async fn subscribe(
    state: &AppState,
    caller: &Caller,
    active: &mut Option<Active>,
    request: &Request,
) -> Result<Value, (&'static str, String)> {
    if active.is_some() {
        return Err((
            "already_subscribed",
            "this connection already serves a consumer; open another".into(),
        ));
    }
    let name = request
        .consumer
        .as_deref()
        .filter(|c| !c.is_empty() && c.len() <= 200)
        .ok_or((
            "invalid_message",
            "missing \"consumer\" (a durable consumer name)".to_owned(),
        ))?;
    let topic = request
        .topic
        .as_deref()
        .ok_or(("invalid_message", "missing \"topic\"".to_owned()))?;
    let pattern = Pattern::parse(topic).map_err(|e| ("invalid_topic", e.to_string()))?;
    if !caller.may_subscribe(&pattern) {
        return Err((
            "forbidden",
            format!("this token may not subscribe to {pattern}"),
        ));
    }
    let filter_json = request.filter.clone().unwrap_or(json!({}));
    let filter: Filter = serde_json::from_value(filter_json.clone())
        .map_err(|e| ("invalid_filter", e.to_string()))?;
    let max_in_flight = bounded(
        "max_in_flight",
        request.max_in_flight.as_ref(),
        DEFAULT_MAX_IN_FLIGHT,
        &MAX_IN_FLIGHT,
    )
    .map_err(|m| ("invalid_message", m))?;
    let max_in_flight = usize::try_from(max_in_flight).unwrap_or(usize::MAX);
    let ack_timeout_ms = bounded(
        "ack_timeout_ms",
        request.ack_timeout_ms.as_ref(),
        DEFAULT_ACK_TIMEOUT_MS,
        &ACK_TIMEOUT_MS,
    )
    .map_err(|m| ("invalid_message", m))?;
    if let Some(from) = request.from_seq
        && from < 0
    {
        return Err((
            "invalid_message",
            format!("from_seq {from} must not be negative"),
        ));
    }
    let consumer = state
        .store
        .open_consumer(
            name,
            caller.org_id(),
            caller.admin,
            pattern.as_str(),
            &filter_json,
            request.from_seq,
        )
        .await
        .map_err(|e| match e {
            pgtide_store::StoreError::ReadOnly(m) => ("forbidden", m),
            other => {
                tracing::error!(error = %other, "opening a consumer failed");
                ("internal", "the consumer could not be opened".to_owned())
            }
        })?;
    let (holder, release) = state.exactly_once.take(name);
    *active = Some(Active {
        name: name.to_owned(),
        pattern: pattern.clone(),
        filter,
        max_in_flight,
        ack_timeout: Duration::from_millis(ack_timeout_ms),
        acked_seq: consumer.acked_seq,
        acked_above: consumer.acked_above,
        delivered_before: consumer.delivered_seq,
        fetched: consumer.acked_seq,
        in_flight: BTreeMap::new(),
        resend: BTreeSet::new(),
        release,
        holder,
    });
    Ok(json!({
        "action": "subscribed",
        "topic": pattern.as_str(),
        "consumer": name,
        "acked_seq": consumer.acked_seq,
        "max_in_flight": max_in_flight,
    }))
}

/// A flow-control setting: `default` when absent or null, else an integer
/// within `range`; the error names the field and the bounds.
fn bounded(
    name: &str,
    value: Option<&Value>,
    default: u64,
    range: &std::ops::RangeInclusive<u64>,
) -> Result<u64, String> {
    let value = match value {
        None | Some(Value::Null) => return Ok(default),
        Some(v) => v,
    };
    match value.as_u64() {
        Some(n) if range.contains(&n) => Ok(n),
        _ => Err(format!(
            "{name} must be an integer from {} to {} (got {value})",
            range.start(),
            range.end()
        )),
    }
}

async fn acknowledge(
    state: &AppState,
    active: &mut Option<Active>,
    seq: Option<i64>,
    nack: bool,
) -> Result<(), (&'static str, String)> {
    let a = active.as_mut().ok_or((
        "not_subscribed",
        "subscribe with a consumer first".to_owned(),
    ))?;
    let seq = seq.ok_or(("invalid_message", "missing \"seq\"".to_owned()))?;
    if !a.in_flight.contains_key(&seq) || a.resend.contains(&seq) {
        return Err((
            "not_in_flight",
            format!("event {seq} is not awaiting an acknowledgement"),
        ));
    }
    if nack {
        a.resend.insert(seq);
        return Ok(());
    }
    a.in_flight.remove(&seq);
    a.acked_above.insert(seq);
    let floor = a
        .in_flight
        .keys()
        .next()
        .map_or(a.fetched, |lowest| lowest - 1);
    state
        .store
        .ack_consumer(&a.name, seq, floor)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "storing an ack failed");
            (
                "internal",
                "the acknowledgement could not be stored".to_owned(),
            )
        })?;
    a.acked_seq = a.acked_seq.max(floor);
    a.acked_above.retain(|s| *s > a.acked_seq);
    Ok(())
}

fn envelope(event: &Event, redelivered: bool) -> Message {
    let mut v = serde_json::to_value(event).unwrap_or(Value::Null);
    if redelivered && let Value::Object(o) = &mut v {
        o.insert("redelivered".into(), Value::Bool(true));
    }
    Message::Text(v.to_string().into())
}

/// Sends what is owed: nacked and timed-out events again, then new ones up to
/// `max_in_flight`.
async fn fill(
    state: &AppState,
    caller: &Caller,
    a: &mut Active,
    sink: &mut Sink,
) -> Result<(), axum::Error> {
    let now = Instant::now();
    let timed_out: Vec<i64> = a
        .in_flight
        .iter()
        .filter(|(seq, f)| {
            now.duration_since(f.sent_at) >= a.ack_timeout && !a.resend.contains(seq)
        })
        .map(|(seq, _)| *seq)
        .collect();
    a.resend.extend(timed_out);
    for seq in std::mem::take(&mut a.resend) {
        if let Some(f) = a.in_flight.get_mut(&seq) {
            f.sent_at = Instant::now();
            sink.send(envelope(&f.event, true)).await?;
        }
    }
    let visibility = caller.visibility();
    let mut recorded = a.delivered_before;
    while a.in_flight.len() < a.max_in_flight {
        let room = (a.max_in_flight - a.in_flight.len()) as i64;
        let query = EventQuery {
            topics: vec![a.pattern.clone()],
            after_seq: Some(a.fetched),
            limit: room.clamp(1, 1000),
            org_scope: caller.org_scope(),
            ..EventQuery::default()
        };
        let events = match state.store.query(&query).await {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(error = %e, "exactly-once fetch failed");
                break;
            }
        };
        let n = events.len() as i64;
        let fetched = events.last().map_or(a.fetched, |e| e.seq);
        let events: Vec<Event> = events
            .into_iter()
            .filter(|e| {
                !a.acked_above.contains(&e.seq)
                    && visibility.may_see(e.org_id)
                    && a.filter.matches(e)
            })
            .collect();
        // Recorded before sending: after a crash, whatever the client may have
        // received is marked `redelivered` when sent again.
        if let Some(last) = events.last()
            && last.seq > recorded
        {
            if let Err(e) = state.store.consumer_delivered(&a.name, last.seq).await {
                tracing::warn!(error = %e, "exactly-once delivery mark failed");
                break;
            }
            recorded = last.seq;
        }
        a.fetched = fetched;
        for event in events {
            let redelivered = event.seq <= a.delivered_before;
            sink.send(envelope(&event, redelivered)).await?;
            a.in_flight.insert(
                event.seq,
                InFlight {
                    event: Arc::new(event),
                    sent_at: Instant::now(),
                },
            );
        }
        if n < room.clamp(1, 1000) {
            break;
        }
    }
    if a.in_flight.is_empty() && a.fetched > a.acked_seq {
        // Everything fetched was acknowledged or not for this consumer.
        let floor = a.fetched;
        if state
            .store
            .ack_consumer(&a.name, floor, floor)
            .await
            .is_ok()
        {
            a.acked_seq = floor;
            a.acked_above.retain(|s| *s > floor);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_control_settings_are_bounded_and_named() {
        let check = |v: Value| bounded("ack_timeout_ms", Some(&v), 30_000, &ACK_TIMEOUT_MS);
        assert_eq!(
            bounded("ack_timeout_ms", None, 30_000, &ACK_TIMEOUT_MS),
            Ok(30_000)
        );
        assert_eq!(check(Value::Null), Ok(30_000));
        assert_eq!(check(json!(1000)), Ok(1000));
        assert_eq!(check(json!(3_600_000)), Ok(3_600_000));
        for bad in [
            json!(1),
            json!(999),
            json!(3_600_001),
            json!(-5),
            json!(1.5),
            json!("2000"),
        ] {
            let message = check(bad.clone()).unwrap_err();
            assert_eq!(
                message,
                format!("ack_timeout_ms must be an integer from 1000 to 3600000 (got {bad})")
            );
        }
        let in_flight = |v: Value| bounded("max_in_flight", Some(&v), 100, &MAX_IN_FLIGHT);
        assert_eq!(in_flight(json!(1000)), Ok(1000));
        assert!(in_flight(json!(0)).is_err());
        assert_eq!(
            in_flight(json!(1_000_000_000_000u64)).unwrap_err(),
            "max_in_flight must be an integer from 1 to 1000 (got 1000000000000)"
        );
    }
}
