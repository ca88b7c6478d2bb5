//! The event envelope, exactly as stored and delivered (SPEC §3).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

/// Where an event entered pgtide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EventSource {
    Cdc,
    Http,
    Ws,
    Socketio,
    Webrtc,
    Sql,
    Trigger,
    Task,
    Sync,
}

impl EventSource {
    pub fn as_str(self) -> &'static str {
        match self {
            EventSource::Cdc => "cdc",
            EventSource::Http => "http",
            EventSource::Ws => "ws",
            EventSource::Socketio => "socketio",
            EventSource::Webrtc => "webrtc",
            EventSource::Sql => "sql",
            EventSource::Trigger => "trigger",
            EventSource::Task => "task",
            EventSource::Sync => "sync",
        }
    }
}

impl fmt::Display for EventSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event before the store gives it its `seq`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub id: ulid::Ulid,
    pub topic: String,
    pub event_type: String,
    pub ts: OffsetDateTime,
    pub source: EventSource,
    pub data: Value,
    pub org_id: Option<i64>,
    pub correlation_id: Option<String>,
    pub attributes: BTreeMap<String, String>,
    pub meta: Map<String, Value>,
}

impl NewEvent {
    /// An event with a fresh id stamped now, empty attributes and meta.
    pub fn new(
        topic: impl Into<String>,
        event_type: impl Into<String>,
        source: EventSource,
        data: Value,
    ) -> NewEvent {
        NewEvent {
            id: ulid::Ulid::new(),
            topic: topic.into(),
            event_type: event_type.into(),
            ts: OffsetDateTime::now_utc(),
            source,
            data,
            org_id: None,
            correlation_id: None,
            attributes: BTreeMap::new(),
            meta: Map::new(),
        }
    }

    pub fn with_seq(self, seq: i64) -> Event {
        Event {
            id: self.id.to_string(),
            seq,
            topic: self.topic,
            event_type: self.event_type,
            ts: format_ts(self.ts),
            source: self.source,
            data: self.data,
            org_id: self.org_id,
            correlation_id: self.correlation_id,
            attributes: self.attributes,
            meta: self.meta,
        }
    }
}

/// A stored event: the envelope every transport sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    pub id: String,
    pub seq: i64,
    pub topic: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// UTC with exactly three fractional digits, e.g. `2026-03-04T12:00:00.123Z`.
    pub ts: String,
    pub source: EventSource,
    /// Any JSON value.
    pub data: Value,
    pub org_id: Option<i64>,
    pub correlation_id: Option<String>,
    pub attributes: BTreeMap<String, String>,
    #[schema(value_type = Object)]
    pub meta: Map<String, Value>,
}

/// RFC 3339 in UTC with millisecond precision, the envelope's `ts` form.
pub fn format_ts(ts: OffsetDateTime) -> String {
    let ts = ts.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        ts.year(),
        u8::from(ts.month()),
        ts.day(),
        ts.hour(),
        ts.minute(),
        ts.second(),
        ts.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn ts_has_exactly_three_fractional_digits_in_utc() {
        assert_eq!(
            format_ts(datetime!(2026-03-04 12:00:00 UTC)),
            "2026-03-04T12:00:00.000Z"
        );
        assert_eq!(
            format_ts(datetime!(2026-03-04 12:00:00.123456 UTC)),
            "2026-03-04T12:00:00.123Z"
        );
        assert_eq!(
            format_ts(datetime!(2026-03-04 13:00:00.5 +01:00)),
            "2026-03-04T12:00:00.500Z"
        );
    }

    #[test]
    fn envelope_serializes_with_contract_names() {
        let mut e = NewEvent::new(
            "custom.x",
            "custom.x",
            EventSource::Http,
            serde_json::json!({"a": 1}),
        );
        e.ts = datetime!(2026-03-04 12:00:00 UTC);
        let json = serde_json::to_value(e.with_seq(7)).unwrap();
        let obj = json.as_object().unwrap();
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "attributes",
                "correlation_id",
                "data",
                "id",
                "meta",
                "org_id",
                "seq",
                "source",
                "topic",
                "ts",
                "type"
            ]
        );
        assert_eq!(obj["type"], "custom.x");
        assert_eq!(obj["source"], "http");
        assert_eq!(obj["seq"], 7);
        assert_eq!(obj["id"].as_str().unwrap().len(), 26);
    }
}
