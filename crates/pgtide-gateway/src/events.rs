//! The event API: publish and query (SPEC §6).

use std::collections::BTreeMap;

use axum::Json;
use axum::Router;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use bytes::Bytes;
use pgtide_core::{Event, EventSource, NewEvent, Pattern, Topic};
use pgtide_store::EventQuery;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/events", get(query_events).post(publish_event))
}

/// The body of `POST /v1/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    pub event_type: String,
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

#[derive(Debug, Serialize)]
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

async fn publish_event(
    State(state): State<AppState>,
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
    if let Err(issues) = state.store.schemas().validate(topic.as_str(), &req.data) {
        return Err(ApiError::invalid_payload(topic.as_str(), issues));
    }
    let mut event = NewEvent::new(
        topic.into_string(),
        req.event_type,
        EventSource::Http,
        req.data,
    );
    event.correlation_id = req.correlation_id;
    event.attributes = req.attributes;
    event.org_id = req.org_id;
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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsParams {
    pub event_types: Option<String>,
    pub topics: Option<String>,
    pub start_time: Option<String>,
    pub end_time: Option<String>,
    pub after_seq: Option<i64>,
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize)]
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
        })
    }
}

async fn query_events(
    State(state): State<AppState>,
    params: Result<Query<EventsParams>, QueryRejection>,
) -> Result<Json<EventsPage>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let query = params.to_query()?;
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
