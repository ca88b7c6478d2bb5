//! One decoded change → its events. Pure functions over a resolved relation,
//! so the rules of SPEC §3 (default topics, row images, `meta`) are unit-tested
//! without a database.

use std::collections::BTreeMap;

use pgtide_core::{EventSource, NewEvent, format_ts};
use pgtide_mapping::MappedEvent;
use pgtide_pg::Lsn;
use pgtide_pg::pgoutput::{LogicalMessage, OldTuple, Tuple, TupleValue};
use pgtide_pg::replication::PG_EPOCH_OFFSET_MICROS;
use pgtide_pg::value::text_to_json;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use crate::relations::RelationInfo;

/// The logical message prefix `pgtide.publish()` uses.
pub const PUBLISH_PREFIX: &str = "pgtide.publish";
/// The prefix of the non-transactional messages that keep an idle slot moving.
pub const HEARTBEAT_PREFIX: &str = "pgtide.heartbeat";

/// The transaction a change belongs to.
#[derive(Debug, Clone)]
pub struct TxContext {
    pub xid: u32,
    pub commit_lsn: Lsn,
    pub commit_ts: OffsetDateTime,
}

impl TxContext {
    /// From the fields of a Begin message (commit time in µs since 2000-01-01).
    pub fn new(xid: u32, commit_lsn: Lsn, commit_ts_pg_micros: i64) -> TxContext {
        let unix_nanos = i128::from(commit_ts_pg_micros + PG_EPOCH_OFFSET_MICROS) * 1000;
        let commit_ts = OffsetDateTime::from_unix_timestamp_nanos(unix_nanos)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        TxContext {
            xid,
            commit_lsn,
            commit_ts,
        }
    }
}

pub use pgtide_mapping::Op;

/// A row as JSON plus the columns left out because Postgres did not send them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowImage {
    pub row: Map<String, Value>,
    pub unchanged: Vec<String>,
}

/// Builds a row image. Unchanged TOAST values come from `old` when Postgres
/// sent a full old row, else they are left out and named in `unchanged`.
/// With `key_only`, only the replica identity's columns are kept (the old row
/// of a delete under `REPLICA IDENTITY DEFAULT`).
pub fn row_image(
    rel: &RelationInfo,
    tuple: &Tuple,
    old: Option<&Tuple>,
    key_only: bool,
) -> RowImage {
    let mut image = RowImage::default();
    for (i, (column, value)) in rel.columns.iter().zip(&tuple.0).enumerate() {
        if key_only && !column.is_key {
            continue;
        }
        let json = match value {
            TupleValue::Null => Value::Null,
            TupleValue::Text(bytes) | TupleValue::Binary(bytes) => {
                convert(rel, &column.name, &column.kind, bytes)
            }
            TupleValue::UnchangedToast => match old.and_then(|o| o.0.get(i)) {
                Some(TupleValue::Text(bytes)) => convert(rel, &column.name, &column.kind, bytes),
                Some(TupleValue::Null) => Value::Null,
                _ => {
                    image.unchanged.push(column.name.clone());
                    continue;
                }
            },
        };
        image.row.insert(column.name.clone(), json);
    }
    image
}

fn convert(
    rel: &RelationInfo,
    column: &str,
    kind: &pgtide_pg::value::ValueKind,
    bytes: &[u8],
) -> Value {
    match text_to_json(kind, bytes) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(table = %rel.qualified_name(), column, error = %e, "value kept as text");
            Value::String(String::from_utf8_lossy(bytes).into_owned())
        }
    }
}

/// `tables.<table>` (schema `public` omitted, else `tables.<schema>_<table>`),
/// with characters a topic segment cannot hold replaced by `_`.
pub fn default_topic_prefix(rel: &RelationInfo) -> String {
    let segment = if rel.schema == "public" {
        rel.name.clone()
    } else {
        format!("{}_{}", rel.schema, rel.name)
    };
    let clean: String = segment
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("tables.{clean}")
}

/// The row images of one change, computed once and shared by the default
/// topic and every mapping on the table.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeImages {
    pub op: Op,
    /// The new row (insert, update), unchanged TOAST filled from a full old row.
    pub new: Option<RowImage>,
    /// The old row: whole under `REPLICA IDENTITY FULL`, else only the key
    /// columns (delete; update when the key changed); absent otherwise.
    pub old: Option<Map<String, Value>>,
}

impl ChangeImages {
    /// Columns Postgres left out of the new row because they did not change.
    pub fn unchanged(&self) -> &[String] {
        self.new.as_ref().map_or(&[], |n| n.unchanged.as_slice())
    }
}

/// Builds the images of a change from its tuples.
pub fn images(
    rel: &RelationInfo,
    op: Op,
    new: Option<&Tuple>,
    old: Option<&OldTuple>,
) -> ChangeImages {
    let full_old = match old {
        Some(OldTuple::Full(t)) => Some(t),
        _ => None,
    };
    ChangeImages {
        op,
        new: new.map(|t| row_image(rel, t, full_old, false)),
        old: old.map(|o| match o {
            OldTuple::Full(t) => row_image(rel, t, None, false).row,
            OldTuple::Key(t) => row_image(rel, t, None, true).row,
        }),
    }
}

/// `meta.lsn`, `meta.xid` and `meta.commit_ts`: what every event from the
/// stream carries about its transaction.
fn tx_meta(tx: &TxContext) -> Map<String, Value> {
    let mut meta = Map::new();
    meta.insert("lsn".into(), Value::String(tx.commit_lsn.to_string()));
    meta.insert("xid".into(), json!(tx.xid));
    meta.insert("commit_ts".into(), Value::String(format_ts(tx.commit_ts)));
    meta
}

/// [`tx_meta`] plus the row change's `meta.table` and `meta.op`.
fn cdc_meta(rel: &RelationInfo, tx: &TxContext, op: Op) -> Map<String, Value> {
    let mut meta = tx_meta(tx);
    meta.insert("table".into(), Value::String(rel.qualified_name()));
    meta.insert("op".into(), Value::String(op.as_str().into()));
    meta
}

fn truncate_data(rel: &RelationInfo, cascade: bool, restart_identity: bool) -> Value {
    json!({
        "table": rel.qualified_name(),
        "cascade": cascade,
        "restart_identity": restart_identity,
    })
}

/// The default-topic event (`tables.<table>.<op>`) of a change on a captured
/// table: the new row, or the old one for a delete; an update's old row, when
/// Postgres sent one, in `meta.old`.
pub fn default_event(rel: &RelationInfo, tx: &TxContext, images: &ChangeImages) -> NewEvent {
    let op = images.op;
    let mut meta = cdc_meta(rel, tx, op);
    let data = match op {
        Op::Insert | Op::Update => {
            if op == Op::Update
                && let Some(old) = &images.old
            {
                meta.insert("old".into(), Value::Object(old.clone()));
            }
            Value::Object(
                images
                    .new
                    .as_ref()
                    .map(|n| n.row.clone())
                    .unwrap_or_default(),
            )
        }
        Op::Delete => Value::Object(images.old.clone().unwrap_or_default()),
        Op::Truncate => truncate_data(rel, false, false),
    };
    add_unchanged(&mut meta, images.unchanged());
    let mut event = NewEvent::new(
        format!("{}.{}", default_topic_prefix(rel), op.as_str()),
        op.default_event_type(),
        EventSource::Cdc,
        data,
    );
    event.ts = tx.commit_ts;
    event.meta = meta;
    event
}

/// The org a change's row belongs to, read from its `column`
/// (`--capture-org-column`): the new row (insert, update) or the old one
/// (delete; under `REPLICA IDENTITY DEFAULT` only if the column is part of
/// the key). An integer, or text holding one; anything else is no org.
pub fn row_org(images: &ChangeImages, column: &str) -> Option<i64> {
    let row = match images.op {
        Op::Insert | Op::Update => images.new.as_ref().map(|n| &n.row),
        Op::Delete => images.old.as_ref(),
        Op::Truncate => None,
    }?;
    match row.get(column)? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The envelope of an event a mapping made, with `meta.mapping` and `meta.key`.
pub fn mapped_event(
    rel: &RelationInfo,
    tx: &TxContext,
    images: &ChangeImages,
    mapped: MappedEvent,
) -> NewEvent {
    let mut meta = cdc_meta(rel, tx, images.op);
    meta.insert("mapping".into(), Value::String(mapped.mapping));
    if let Some(key) = mapped.key {
        meta.insert("key".into(), Value::String(key));
    }
    add_unchanged(&mut meta, images.unchanged());
    let mut event = NewEvent::new(
        mapped.topic,
        mapped.event_type,
        EventSource::Cdc,
        mapped.data,
    );
    event.ts = tx.commit_ts;
    event.org_id = mapped.org_id;
    event.meta = meta;
    event
}

/// What a dead letter keeps of a change a mapping failed on: enough to see
/// why, and to run the mapping again.
pub fn failed_change(
    rel: &RelationInfo,
    tx: &TxContext,
    images: &ChangeImages,
    mapping: &str,
) -> Value {
    json!({
        "mapping": mapping,
        "change": {
            "op": images.op.as_str(),
            "table": rel.qualified_name(),
            "new": images.new.as_ref().map(|n| Value::Object(n.row.clone())),
            "old": images.old.clone().map(Value::Object),
            "unchanged_columns": images.unchanged(),
            "xid": tx.xid,
            "lsn": tx.commit_lsn.to_string(),
            "commit_ts": format_ts(tx.commit_ts),
        },
    })
}

/// The default-topic event of a truncate of one table.
pub fn truncate_event(
    rel: &RelationInfo,
    tx: &TxContext,
    cascade: bool,
    restart_identity: bool,
) -> NewEvent {
    let images = ChangeImages {
        op: Op::Truncate,
        new: None,
        old: None,
    };
    let mut event = default_event(rel, tx, &images);
    event.data = truncate_data(rel, cascade, restart_identity);
    event
}

/// `schema.changed` on `tables.<table>.schema`: the new column set and the previous one.
pub fn schema_changed_event(rel: &RelationInfo, tx: &TxContext, previous: &Value) -> NewEvent {
    let data = json!({
        "table": rel.qualified_name(),
        "columns": rel.columns_json(),
        "previous_columns": previous,
    });
    let mut event = NewEvent::new(
        format!("{}.schema", default_topic_prefix(rel)),
        "schema.changed",
        EventSource::Cdc,
        data,
    );
    event.ts = tx.commit_ts;
    let mut meta = tx_meta(tx);
    meta.insert("table".into(), Value::String(rel.qualified_name()));
    event.meta = meta;
    event
}

fn add_unchanged(meta: &mut Map<String, Value>, unchanged: &[String]) {
    if !unchanged.is_empty() {
        meta.insert(
            "unchanged_columns".into(),
            Value::Array(unchanged.iter().cloned().map(Value::String).collect()),
        );
    }
}

/// The body `pgtide.publish()` writes into its logical message.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishMessage {
    topic: String,
    data: Value,
    #[serde(default)]
    attributes: Map<String, Value>,
    event_type: Option<String>,
}

/// The event a committed `pgtide.publish()` call stands for.
pub fn publish_event(msg: &LogicalMessage, tx: &TxContext) -> Result<NewEvent, String> {
    let body: PublishMessage = serde_json::from_slice(&msg.content)
        .map_err(|e| format!("pgtide.publish message at {} is not valid: {e}", msg.lsn))?;
    let topic =
        pgtide_core::Topic::parse(&body.topic).map_err(|e| format!("pgtide.publish: {e}"))?;
    let event_type = body.event_type.unwrap_or_else(|| topic.as_str().to_owned());
    // `pgtide.publish()` refuses these already; a message written with
    // `pg_logical_emit_message` directly (open to every role) is refused here.
    pgtide_core::reserved::check_reserved(&topic, &event_type)
        .map_err(|e| format!("pgtide.publish message at {}: {e}", msg.lsn))?;
    let mut event = NewEvent::new(topic.into_string(), event_type, EventSource::Sql, body.data);
    event.ts = tx.commit_ts;
    event.attributes = body
        .attributes
        .into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => (k, s),
            other => (k, other.to_string()),
        })
        .collect::<BTreeMap<_, _>>();
    event.meta = tx_meta(tx);
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relations::Column;
    use bytes::Bytes;
    use pgtide_pg::pgoutput::ReplicaIdentity;
    use pgtide_pg::value::ValueKind;

    fn rel(schema: &str) -> RelationInfo {
        RelationInfo {
            id: 1,
            schema: schema.into(),
            name: "orders".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                Column {
                    name: "id".into(),
                    type_oid: 23,
                    is_key: true,
                    kind: ValueKind::Int,
                },
                Column {
                    name: "note".into(),
                    type_oid: 25,
                    is_key: false,
                    kind: ValueKind::Text,
                },
                Column {
                    name: "total".into(),
                    type_oid: 1700,
                    is_key: false,
                    kind: ValueKind::Numeric,
                },
            ],
        }
    }

    fn text(s: &str) -> TupleValue {
        TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn event(op: Op, new: Option<&Tuple>, old: Option<&OldTuple>) -> NewEvent {
        let r = rel("public");
        default_event(&r, &tx(), &images(&r, op, new, old))
    }

    fn tx() -> TxContext {
        TxContext::new(42, Lsn(0x16_B374_D848), 0)
    }

    #[test]
    fn insert_uses_default_topic_and_meta() {
        let new = Tuple(vec![text("7"), TupleValue::Null, text("1.50")]);
        let e = default_event(
            &rel("public"),
            &tx(),
            &images(&rel("public"), Op::Insert, Some(&new), None),
        );
        assert_eq!(e.topic, "tables.orders.insert");
        assert_eq!(e.event_type, "row.inserted");
        assert_eq!(e.data, json!({"id": 7, "note": null, "total": "1.50"}));
        assert_eq!(e.meta["lsn"], "16/B374D848");
        assert_eq!(e.meta["xid"], 42);
        assert_eq!(e.meta["table"], "public.orders");
        assert_eq!(e.meta["op"], "insert");
        assert_eq!(e.meta["commit_ts"], "2000-01-01T00:00:00.000Z");
        assert_eq!(e.source, EventSource::Cdc);
    }

    /// `--capture-org-column`: the org comes from the new row, or the old
    /// one of a delete; absent, null or not an integer, there is none.
    #[test]
    fn org_comes_from_the_row() {
        let r = rel("public");
        let row = Tuple(vec![text("1"), text("a"), text("2")]);
        let i = images(&r, Op::Insert, Some(&row), None);
        assert_eq!(row_org(&i, "id"), Some(1));
        assert_eq!(
            row_org(&i, "total"),
            Some(2),
            "numeric text holding an integer"
        );
        assert_eq!(row_org(&i, "note"), None, "not an integer");
        assert_eq!(row_org(&i, "nowhere"), None);
        let d = images(&r, Op::Delete, None, Some(&OldTuple::Key(row.clone())));
        assert_eq!(row_org(&d, "id"), Some(1), "a key column survives a delete");
        assert_eq!(row_org(&d, "total"), None, "only key columns under DEFAULT");
    }

    #[test]
    fn other_schemas_prefix_the_table() {
        let e = default_event(
            &rel("audit"),
            &tx(),
            &images(
                &rel("audit"),
                Op::Insert,
                Some(&Tuple(vec![text("1"), text("x"), text("2")])),
                None,
            ),
        );
        assert_eq!(e.topic, "tables.audit_orders.insert");
    }

    #[test]
    fn unchanged_toast_is_left_out_and_named_or_taken_from_old() {
        let new = Tuple(vec![text("7"), TupleValue::UnchangedToast, text("2")]);
        let e = event(Op::Update, Some(&new), None);
        assert_eq!(e.data, json!({"id": 7, "total": "2"}));
        assert_eq!(e.meta["unchanged_columns"], json!(["note"]));
        let old = OldTuple::Full(Tuple(vec![text("7"), text("long"), text("1")]));
        let e = event(Op::Update, Some(&new), Some(&old));
        assert_eq!(e.data, json!({"id": 7, "note": "long", "total": "2"}));
        assert!(!e.meta.contains_key("unchanged_columns"));
        assert_eq!(
            e.meta["old"],
            json!({"id": 7, "note": "long", "total": "1"})
        );
    }

    #[test]
    fn delete_under_default_identity_keeps_only_keys() {
        let old = OldTuple::Key(Tuple(vec![text("7"), TupleValue::Null, TupleValue::Null]));
        let e = event(Op::Delete, None, Some(&old));
        assert_eq!(e.topic, "tables.orders.delete");
        assert_eq!(e.event_type, "row.deleted");
        assert_eq!(e.data, json!({"id": 7}));
    }

    #[test]
    fn truncate_and_schema_change_events() {
        let e = truncate_event(&rel("public"), &tx(), true, false);
        assert_eq!(
            (e.topic.as_str(), e.event_type.as_str()),
            ("tables.orders.truncate", "table.truncated")
        );
        assert_eq!(e.data["cascade"], true);
        let e = schema_changed_event(&rel("public"), &tx(), &json!([]));
        assert_eq!(
            (e.topic.as_str(), e.event_type.as_str()),
            ("tables.orders.schema", "schema.changed")
        );
        assert_eq!(e.data["columns"][2]["name"], "total");
    }

    #[test]
    fn publish_messages_become_sql_events() {
        let msg = LogicalMessage {
            xid: None,
            transactional: true,
            lsn: Lsn(1),
            prefix: PUBLISH_PREFIX.into(),
            content: Bytes::from_static(br#"{"topic":"orders.created","data":{"n":1},"attributes":{"a":"b","n":2},"event_type":null}"#),
        };
        let e = publish_event(&msg, &tx()).unwrap();
        assert_eq!(e.topic, "orders.created");
        assert_eq!(e.event_type, "orders.created");
        assert_eq!(e.source, EventSource::Sql);
        assert_eq!(e.attributes["a"], "b");
        assert_eq!(e.attributes["n"], "2");
        let bad = LogicalMessage {
            content: Bytes::from_static(br#"{"topic":"a..b","data":1}"#),
            ..msg.clone()
        };
        assert!(
            publish_event(&bad, &tx())
                .unwrap_err()
                .contains("empty segment")
        );
        // Forged messages for pgtide's own topics and types are refused.
        for content in [
            &br#"{"topic":"meta.ws","data":1}"#[..],
            br#"{"topic":"orders.x","data":1,"event_type":"row.inserted"}"#,
        ] {
            let forged = LogicalMessage {
                content: Bytes::from_static(content),
                ..msg.clone()
            };
            assert!(
                publish_event(&forged, &tx())
                    .unwrap_err()
                    .contains("reserved")
            );
        }
    }
}
