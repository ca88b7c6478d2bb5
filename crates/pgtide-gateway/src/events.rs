//! The event API: publish and query (SPEC §6).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use bytes::Bytes;
use pgtide_core::{Event, EventSource, NewEvent, Pattern, Topic};
use pgtide_store::EventQuery;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Caller, forbidden};
use crate::{ApiError, AppState};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(query_events, publish_event))
        .routes(routes!(replay_events))
        .routes(routes!(stats))
}

/// The body of `POST /v1/events`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    pub event_type: String,
    /// Any JSON value (null when absent).
    #[serde(default)]
    pub data: Value,
    pub topic: Option<String>,
    pub correlation_id: Option<String>,
    /// The producer's name, kept as `meta.producer`.
    pub source: Option<String>,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    pub org_id: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PublishResponse {
    pub event_id: String,
    pub event_type: String,
    pub timestamp: String,
    pub topic: String,
    pub seq: i64,
}

/// Reads a JSON body, answering 413 past the size limit and 400 with the
/// parser's line and column for anything malformed.
pub fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("request body is larger than {} bytes", crate::MAX_BODY),
            )
        } else {
            ApiError::bad_request(e.body_text())
        }
    })?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// A well-formed event type: dot-separated words, like a topic.
fn check_event_type(event_type: &str) -> Result<(), ApiError> {
    Topic::parse(event_type).map(|_| ()).map_err(|e| {
        ApiError::bad_request(format!("invalid event_type: {e}"))
            .with_details(vec![json!({"field": "event_type"})])
    })
}

/// Publishes one event; its `org_id` is the token's (an admin may set it).
/// pgtide's own topics and types are refused (403 `reserved_topic`), and so
/// are values PostgreSQL cannot store (400, naming the JSON pointer).
#[utoipa::path(post, path = "/v1/events", tag = "events",
    request_body = PublishRequest,
    responses(
        (status = 200, description = "Stored", body = PublishResponse),
        (status = 400, description = "Malformed, or a value PostgreSQL cannot store (NUL, a number out of `numeric`'s range); `details` name the JSON pointer", body = crate::openapi::ErrorBody),
        (status = 403, description = "Not allowed to publish here; `reserved_topic` for pgtide's own topics and types", body = crate::openapi::ErrorBody),
        (status = 422, description = "`data` does not match the topic's active schema", body = crate::openapi::ErrorBody),
    ))]
async fn publish_event(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<PublishResponse>, ApiError> {
    let req: PublishRequest = json_body(body)?;
    check_event_type(&req.event_type)?;
    let topic = match &req.topic {
        Some(t) => Topic::parse(t).map_err(|e| {
            ApiError::bad_request(format!("invalid topic: {e}"))
                .with_details(vec![json!({"field": "topic"})])
        })?,
        None => Topic::parse(&req.event_type)
            .map_err(|e| ApiError::bad_request(format!("invalid event_type: {e}")))?,
    };
    if req.org_id.is_some() && !caller.admin {
        return Err(forbidden(
            "only admins may set org_id; events take the token's org",
        ));
    }
    let mut texts = crate::publish::string_map("/attributes", &req.attributes);
    texts.extend(
        [
            ("/correlation_id", &req.correlation_id),
            ("/source", &req.source),
        ]
        .into_iter()
        .filter_map(|(pointer, text)| Some((pointer.to_owned(), text.as_deref()?))),
    );
    let draft = crate::publish::Draft {
        json: vec![("/data", &req.data)],
        texts,
    };
    crate::publish::check(&state, &caller, &topic, &req.event_type, &req.data, &draft)?;
    let mut event = NewEvent::new(
        topic.into_string(),
        req.event_type,
        EventSource::Http,
        req.data,
    );
    event.correlation_id = req.correlation_id;
    event.attributes = req.attributes;
    event.org_id = req.org_id.or(caller.org_id());
    if let Some(producer) = req.source {
        let mut meta = Map::new();
        meta.insert("producer".into(), Value::String(producer));
        event.meta = meta;
    }
    let stored = state.store.publish(vec![event]).await?;
    let e = stored.into_iter().next().ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    })?;
    Ok(Json(PublishResponse {
        event_id: e.id,
        event_type: e.event_type,
        timestamp: e.ts,
        topic: e.topic,
        seq: e.seq,
    }))
}

/// The query string of `GET /v1/events`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsParams {
    /// Comma-separated event types.
    pub event_types: Option<String>,
    /// Comma-separated topic patterns (`*`, `**`).
    pub topics: Option<String>,
    /// RFC 3339, inclusive.
    pub start_time: Option<String>,
    /// RFC 3339, exclusive.
    pub end_time: Option<String>,
    /// Only events with a greater `seq`.
    pub after_seq: Option<i64>,
    /// 1 to 1000, default 100.
    pub limit: Option<i64>,
}

/// A page of events in ascending `seq`; `next_after_seq` is set when more may follow.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventsPage {
    pub events: Vec<Event>,
    pub next_after_seq: Option<i64>,
}

fn comma_list(text: Option<&str>) -> Vec<&str> {
    text.map(|t| {
        t.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()
    })
    .unwrap_or_default()
}

fn parse_time(field: &str, text: Option<&str>) -> Result<Option<OffsetDateTime>, ApiError> {
    text.map(|t| {
        OffsetDateTime::parse(t, &Rfc3339).map_err(|e| {
            ApiError::bad_request(format!(
                "{field}={t:?} is not an RFC 3339 time like 2026-03-04T12:00:00Z: {e}"
            ))
        })
    })
    .transpose()
}

impl EventsParams {
    /// Validates every parameter into a store query.
    pub fn to_query(&self) -> Result<EventQuery, ApiError> {
        let limit = self.limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(ApiError::bad_request(format!(
                "limit={limit} is out of range: use 1 to 1000"
            )));
        }
        if let Some(after) = self.after_seq
            && after < 0
        {
            return Err(ApiError::bad_request(format!(
                "after_seq={after} must not be negative"
            )));
        }
        let topics = comma_list(self.topics.as_deref())
            .into_iter()
            .map(|p| {
                Pattern::parse(p)
                    .map_err(|e| ApiError::bad_request(format!("invalid topic pattern: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let event_types = comma_list(self.event_types.as_deref())
            .into_iter()
            .map(str::to_owned)
            .collect();
        Ok(EventQuery {
            topics,
            event_types,
            start_time: parse_time("start_time", self.start_time.as_deref())?,
            end_time: parse_time("end_time", self.end_time.as_deref())?,
            after_seq: self.after_seq,
            limit,
            org_scope: None,
        })
    }
}

/// One page of events the caller may see: full pages point to the next one.
async fn page(
    state: &AppState,
    caller: &Caller,
    params: &EventsParams,
) -> Result<Json<EventsPage>, ApiError> {
    let mut query = params.to_query()?;
    caller.require_readable(&query.topics)?;
    query.org_scope = caller.org_scope();
    let events = state.store.query(&query).await?;
    let next_after_seq = if events.len() as i64 == query.limit {
        events.last().map(|e| e.seq)
    } else {
        None
    };
    Ok(Json(EventsPage {
        events,
        next_after_seq,
    }))
}

/// Stored events the caller may see, filtered, in ascending `seq`. A token
/// with a `subscribe` claim must name `topics` its claim covers (403 otherwise).
#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventsParams),
    responses(
        (status = 200, description = "One page", body = EventsPage),
        (status = 403, description = "`topics` absent or wider than the token's `subscribe` claim", body = crate::openapi::ErrorBody),
    ))]
async fn query_events(
    State(state): State<AppState>,
    caller: Caller,
    params: Result<Query<EventsParams>, QueryRejection>,
) -> Result<Json<EventsPage>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    page(&state, &caller, &params).await
}

/// The body of `POST /v1/events/replay`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    pub from_event_id: Option<String>,
    pub from_seq: Option<i64>,
    #[serde(default)]
    pub event_types: Vec<String>,
    #[serde(default)]
    pub topics: Vec<String>,
    pub limit: Option<i64>,
}

/// Events after `from_seq`, or after the event `from_event_id` (exclusive,
/// like `after_seq`), in the `{"events","next_after_seq"}` shape.
#[utoipa::path(post, path = "/v1/events/replay", tag = "events",
    request_body = ReplayRequest,
    responses(
        (status = 200, description = "One page", body = EventsPage),
        (status = 403, description = "`topics` absent or wider than the token's `subscribe` claim", body = crate::openapi::ErrorBody),
        (status = 404, description = "No stored event with `from_event_id` that the caller may read", body = crate::openapi::ErrorBody),
    ))]
async fn replay_events(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<EventsPage>, ApiError> {
    let req: ReplayRequest = json_body(body)?;
    let mut params = EventsParams {
        event_types: (!req.event_types.is_empty()).then(|| req.event_types.join(",")),
        topics: (!req.topics.is_empty()).then(|| req.topics.join(",")),
        start_time: None,
        end_time: None,
        after_seq: None,
        limit: req.limit,
    };
    // The read rule first, so a refused read learns nothing of the id.
    caller.require_readable(&params.to_query()?.topics)?;
    let after = match (&req.from_event_id, req.from_seq) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give from_event_id or from_seq, not both",
            ));
        }
        (Some(id), None) => {
            let ulid: ulid::Ulid = id.parse().map_err(|_| {
                ApiError::bad_request(format!("from_event_id {id:?} is not a ULID"))
            })?;
            // Another org's event, or one of a topic the token may not
            // read, is answered like an unknown id.
            state
                .store
                .seq_of(ulid, caller.org_scope())
                .await?
                .filter(|(_, topic)| caller.may_read_topic(topic))
                .map(|(seq, _)| seq)
                .ok_or_else(|| ApiError::not_found(format!("no stored event {id}")))?
        }
        (None, Some(seq)) if seq >= 0 => seq,
        (None, Some(seq)) => {
            return Err(ApiError::bad_request(format!(
                "from_seq {seq} must not be negative"
            )));
        }
        (None, None) => 0,
    };
    params.after_seq = Some(after);
    page(&state, &caller, &params).await
}

/// Counts by type and source, the stored range, WebSocket figures.
#[utoipa::path(get, path = "/v1/events/stats", tag = "events",
    responses((status = 200, description = "Statistics", body = Object)))]
async fn stats(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    use std::sync::atomic::Ordering;
    let mut stats = state.store.stats(caller.org_scope()).await?;
    if let Value::Object(o) = &mut stats {
        o.insert(
            "websocket".into(),
            json!({
                "active_connections": state.hub.connections.load(Ordering::Relaxed),
                "total_dropped_messages": state.hub.dropped.load(Ordering::Relaxed),
            }),
        );
        o.insert("delivered_seq".into(), json!(state.hub.delivered_seq()));
    }
    Ok(Json(stats))
}
