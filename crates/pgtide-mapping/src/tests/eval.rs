//! Running changes through loaded mapping sets: every field of the format,
//! the four patterns of the seed, `changed:` with TOAST, templates, and
//! failures confined to their mapping.

use crate::{Change, MappedEvent, MappingFailure, MappingSet, Op};
use serde_json::{Map, Value, json};
use std::path::Path;

pub(crate) fn load(yaml: &str) -> MappingSet {
    match MappingSet::load_sources(&[("m.yaml".to_owned(), yaml.to_owned())], Path::new(".")) {
        Ok(set) => set,
        Err(errors) => panic!("load failed: {errors:#?}"),
    }
}

fn row(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

/// A change with sensible defaults; tests override what they need.
struct Fixture {
    op: Op,
    schema: &'static str,
    table: &'static str,
    new: Option<Map<String, Value>>,
    old: Option<Map<String, Value>>,
    unchanged: Vec<String>,
}

impl Fixture {
    fn new(op: Op, table: &'static str) -> Fixture {
        Fixture {
            op,
            schema: "public",
            table,
            new: None,
            old: None,
            unchanged: Vec::new(),
        }
    }

    fn new_row(mut self, v: Value) -> Fixture {
        self.new = Some(row(v));
        self
    }

    fn old_row(mut self, v: Value) -> Fixture {
        self.old = Some(row(v));
        self
    }

    fn unchanged(mut self, columns: &[&str]) -> Fixture {
        self.unchanged = columns.iter().map(|c| (*c).to_owned()).collect();
        self
    }

    fn apply(&self, set: &MappingSet) -> Vec<Result<MappedEvent, MappingFailure>> {
        set.apply(&Change {
            op: self.op,
            schema: self.schema,
            table: self.table,
            new: self.new.as_ref(),
            old: self.old.as_ref(),
            unchanged_columns: &self.unchanged,
            xid: 42,
            commit_ts: "2026-03-04T12:00:00.123Z",
            lsn: "16/B374D848",
        })
    }

    /// The events, failing the test on any failure.
    fn events(&self, set: &MappingSet) -> Vec<MappedEvent> {
        self.apply(set)
            .into_iter()
            .map(|r| r.unwrap_or_else(|f| panic!("unexpected failure: {f}")))
            .collect()
    }
}

fn topics(events: &[MappedEvent]) -> Vec<&str> {
    events.iter().map(|e| e.topic.as_str()).collect()
}

const SESSION_STATUS: &str = r#"
topics:
  - name: session.status
    description: Session status changes
mappings:
  - name: session-status
    table: public.sessions
    operations: [insert, update]
    changed: [status]
    when: new.status in ['active', 'completed'] && new.org_id == 1
    topic: session.status
    event_type: session.status_changed
    payload:
      session_id: new.id
      status: new.status
      previous_status: old.status
    org: new.org_id
    key: new.id
"#;

/// The contract's example, field by field.
#[test]
fn contract_example_update() {
    let set = load(SESSION_STATUS);
    let events = Fixture::new(Op::Update, "sessions")
        .new_row(json!({"id": 7, "status": "active", "org_id": 1}))
        .old_row(json!({"id": 7, "status": "pending", "org_id": 1}))
        .events(&set);
    assert_eq!(
        events,
        vec![MappedEvent {
            mapping: "session-status".into(),
            topic: "session.status".into(),
            event_type: "session.status_changed".into(),
            data: json!({"session_id": 7, "status": "active", "previous_status": "pending"}),
            org_id: Some(1),
            key: Some("7".into()),
        }]
    );
}

/// On an insert there is no old row: `old.status` is null, not an error.
#[test]
fn contract_example_insert_has_null_old() {
    let set = load(SESSION_STATUS);
    let events = Fixture::new(Op::Insert, "sessions")
        .new_row(json!({"id": 7, "status": "completed", "org_id": 1}))
        .events(&set);
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].data,
        json!({"session_id": 7, "status": "completed", "previous_status": null})
    );
}

/// `when` filters; `changed` filters updates; operations filter.
#[test]
fn contract_example_filters() {
    let set = load(SESSION_STATUS);
    // status not in the list
    let none = Fixture::new(Op::Insert, "sessions")
        .new_row(json!({"id": 1, "status": "pending", "org_id": 1}))
        .events(&set);
    assert!(none.is_empty());
    // another org
    let none = Fixture::new(Op::Insert, "sessions")
        .new_row(json!({"id": 1, "status": "active", "org_id": 2}))
        .events(&set);
    assert!(none.is_empty());
    // status did not change
    let none = Fixture::new(Op::Update, "sessions")
        .new_row(json!({"id": 1, "status": "active", "org_id": 1, "n": 2}))
        .old_row(json!({"id": 1, "status": "active", "org_id": 1, "n": 1}))
        .events(&set);
    assert!(none.is_empty());
    // delete is not among the operations
    let none = Fixture::new(Op::Delete, "sessions")
        .old_row(json!({"id": 1, "status": "active", "org_id": 1}))
        .events(&set);
    assert!(none.is_empty());
    // another table
    let none = Fixture::new(Op::Insert, "users")
        .new_row(json!({"id": 1, "status": "active", "org_id": 1}))
        .events(&set);
    assert!(none.is_empty());
}

/// Topics, description and the set's bookkeeping.
#[test]
fn contract_example_metadata() {
    let set = load(SESSION_STATUS);
    assert_eq!(set.topics().len(), 1);
    assert_eq!(set.topics()[0].name, "session.status");
    assert_eq!(
        set.topics()[0].description.as_deref(),
        Some("Session status changes")
    );
    assert_eq!(set.topics()[0].location.line, 3);
    let infos = set.mappings();
    assert_eq!(infos.len(), 1);
    let info = &infos[0];
    assert_eq!(info.name, "session-status");
    assert_eq!(info.table, "public.sessions");
    assert_eq!(info.operations, vec!["insert", "update"]);
    assert_eq!(info.topic, "session.status");
    assert_eq!(info.event_type.as_deref(), Some("session.status_changed"));
    assert!(info.needs_old);
    assert_eq!(info.changed, vec!["status"]);
    assert_eq!(info.columns, vec!["id", "org_id", "status"]);
    assert_eq!((info.location.line, info.location.column), (6, 5));
    assert_eq!(set.tables(), vec![("public".into(), "sessions".into())]);
    assert!(set.covers("public", "sessions"));
    assert!(!set.covers("public", "users"));
    assert!(set.needs_old_values("public", "sessions"));
    assert!(!set.needs_old_values("public", "users"));
}

/// Defaults: all of insert/update/delete, default event types, the whole
/// row (old for delete), no org, no key.
#[test]
fn defaults() {
    let set = load("mappings:\n  - name: orders\n    table: orders\n    topic: orders.changed\n");
    let info = &set.mappings()[0];
    assert_eq!(info.operations, vec!["insert", "update", "delete"]);
    assert!(!info.needs_old);
    assert!(!set.needs_old_values("public", "orders"));

    let new = json!({"id": 1, "total": "12.50"});
    let e = Fixture::new(Op::Insert, "orders")
        .new_row(new.clone())
        .events(&set);
    assert_eq!(e[0].event_type, "row.inserted");
    assert_eq!(e[0].data, new);
    assert_eq!((e[0].org_id, e[0].key.as_deref()), (None, None));

    let e = Fixture::new(Op::Update, "orders")
        .new_row(new.clone())
        .events(&set);
    assert_eq!(e[0].event_type, "row.updated");
    assert_eq!(e[0].data, new);

    let old = json!({"id": 1});
    let e = Fixture::new(Op::Delete, "orders")
        .old_row(old.clone())
        .events(&set);
    assert_eq!(e[0].event_type, "row.deleted");
    assert_eq!(e[0].data, old);

    // truncate is not a default operation
    assert!(Fixture::new(Op::Truncate, "orders").events(&set).is_empty());
}

/// Truncate: its own event type and `{"table": ...}` as data.
#[test]
fn truncate() {
    let set = load(
        "mappings:\n  - name: t\n    table: app.orders\n    operations: [truncate]\n    topic: orders.truncated\n",
    );
    let mut f = Fixture::new(Op::Truncate, "orders");
    f.schema = "app";
    let e = f.events(&set);
    assert_eq!(e[0].event_type, "table.truncated");
    assert_eq!(e[0].data, json!({"table": "app.orders"}));
}

/// Pattern 1: one table, one topic (with the whole row).
/// Pattern 2: several tables feeding one topic.
#[test]
fn several_tables_one_topic() {
    let set = load(
        r#"
mappings:
  - name: profile-users
    table: users
    topic: user.profile.changed
    payload: {user_id: new.id, source: "'users'"}
  - name: profile-addresses
    table: addresses
    topic: user.profile.changed
    payload: {user_id: new.user_id, source: "'addresses'"}
  - name: profile-preferences
    table: preferences
    topic: user.profile.changed
    payload: {user_id: new.user_id, source: table}
"#,
    );
    let users = Fixture::new(Op::Update, "users")
        .new_row(json!({"id": 5, "name": "a"}))
        .events(&set);
    let addresses = Fixture::new(Op::Insert, "addresses")
        .new_row(json!({"id": 9, "user_id": 5}))
        .events(&set);
    let preferences = Fixture::new(Op::Insert, "preferences")
        .new_row(json!({"id": 3, "user_id": 5}))
        .events(&set);
    for (events, source) in [
        (&users, "users"),
        (&addresses, "addresses"),
        (&preferences, "public.preferences"),
    ] {
        assert_eq!(topics(events), vec!["user.profile.changed"]);
        assert_eq!(events[0].data, json!({"user_id": 5, "source": source}));
    }
    assert_eq!(set.tables().len(), 3);
}

/// Pattern 3: one table routed to several topics by `when`.
#[test]
fn one_table_several_topics() {
    let set = load(
        r#"
mappings:
  - name: started
    table: sessions
    operations: [update]
    when: new.status == 'active'
    topic: session.started
  - name: ended
    table: sessions
    operations: [update]
    when: new.status == 'completed'
    topic: session.ended
  - name: audit
    table: sessions
    operations: [update]
    topic: session.audit.log
"#,
    );
    let status = |s: &str| {
        Fixture::new(Op::Update, "sessions")
            .new_row(json!({"id": 1, "status": s}))
            .events(&set)
    };
    assert_eq!(
        topics(&status("active")),
        vec!["session.started", "session.audit.log"]
    );
    assert_eq!(
        topics(&status("completed")),
        vec!["session.ended", "session.audit.log"]
    );
    assert_eq!(topics(&status("pending")), vec!["session.audit.log"]);
}

/// Pattern 4: topics declared for API publishing only, with no mapping;
/// a schema inline or from a file, and a compatibility mode.
#[test]
fn api_only_topics() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("schemas")).expect("mkdir");
    std::fs::write(
        dir.path().join("schemas/report.json"),
        r#"{"type": "object", "required": ["reportId"]}"#,
    )
    .expect("write schema");
    std::fs::write(
        dir.path().join("topics.yaml"),
        r#"
topics:
  - name: report.generated
    description: Reports generated by background jobs
    schema: schemas/report.json
    compatibility: full
  - name: chat/room/message
    schema:
      type: object
      properties:
        text: {type: string, maxLength: 500}
  - name: plain
"#,
    )
    .expect("write yaml");
    let set = MappingSet::load_dir(dir.path()).expect("loads");
    assert!(set.mappings().is_empty());
    assert!(set.tables().is_empty());
    let t = set.topics();
    assert_eq!(t.len(), 3);
    assert_eq!(t[0].name, "report.generated");
    assert_eq!(
        t[0].schema,
        Some(json!({"type": "object", "required": ["reportId"]}))
    );
    assert_eq!(t[0].compatibility.as_deref(), Some("full"));
    assert_eq!(t[1].name, "chat.room.message");
    assert_eq!(
        t[1].schema,
        Some(
            json!({"type": "object", "properties": {"text": {"type": "string", "maxLength": 500}}})
        )
    );
    assert_eq!(t[1].compatibility, None);
    assert_eq!(t[2].schema, None);
    assert!(t[0].location.file.ends_with("topics.yaml"));
}

/// `changed:` fires only when a listed column differs; a TOAST-unchanged
/// column counts as unchanged, even without an old row.
#[test]
fn changed_with_toast() {
    let set = load(
        r#"
mappings:
  - name: doc-body
    table: docs
    operations: [update]
    changed: [body, title]
    topic: docs.changed
"#,
    );
    let base = || Fixture::new(Op::Update, "docs");
    // title changed
    let e = base()
        .new_row(json!({"id": 1, "title": "b", "body": "x"}))
        .old_row(json!({"id": 1, "title": "a", "body": "x"}))
        .events(&set);
    assert_eq!(e.len(), 1);
    // nothing listed changed
    let e = base()
        .new_row(json!({"id": 1, "title": "a", "body": "x", "n": 2}))
        .old_row(json!({"id": 1, "title": "a", "body": "x", "n": 1}))
        .events(&set);
    assert!(e.is_empty());
    // body is an unchanged TOASTed value (left out of new), title same
    let e = base()
        .new_row(json!({"id": 1, "title": "a"}))
        .old_row(json!({"id": 1, "title": "a"}))
        .unchanged(&["body"])
        .events(&set);
    assert!(e.is_empty());
    // body unchanged TOAST but title changed
    let e = base()
        .new_row(json!({"id": 1, "title": "c"}))
        .old_row(json!({"id": 1, "title": "a"}))
        .unchanged(&["body"])
        .events(&set);
    assert_eq!(e.len(), 1);
    // no old row: counts as changed, except the TOAST-unchanged column
    let e = base().new_row(json!({"id": 1, "title": "a"})).events(&set);
    assert_eq!(e.len(), 1);
    let set = load(
        "mappings:\n  - name: b\n    table: docs\n    operations: [update]\n    changed: [body]\n    topic: docs.body\n",
    );
    let e = base()
        .new_row(json!({"id": 1}))
        .unchanged(&["body"])
        .events(&set);
    assert!(e.is_empty());
}

/// Templates fill whole segments or parts; numbers render as digits.
#[test]
fn templated_topics() {
    let set = load(
        r#"
mappings:
  - name: per-session
    table: sessions
    topic: "session.{{ new.id }}.status"
  - name: per-org
    table: sessions
    topic: org-{{ new.org_id }}.sessions.{{ op }}
  - name: computed
    table: sessions
    topic: "s.{{ new.name.lowerAscii() }}_{{ new.id * 2 }}"
  - name: unknown-function
    table: sessions
    topic: "s.{{ new.name.lowerAsci() }}"
  - name: slashes
    table: sessions
    topic: jobs/{{ new.id }}
"#,
    );
    let e = Fixture::new(Op::Insert, "sessions")
        .new_row(json!({"id": 12, "org_id": 3, "name": "Ab"}))
        .apply(&set);
    let topics: Vec<_> = e
        .into_iter()
        .map(|r| r.map(|e| e.topic).map_err(|f| f.message))
        .collect();
    assert_eq!(
        topics,
        vec![
            Ok("session.12.status".to_owned()),
            Ok("org-3.sessions.insert".to_owned()),
            Ok("s.ab_24".to_owned()),
            Err("in topic template `{{ new.name.lowerAsci() }}`: Undeclared reference to 'lowerAsci'".to_owned()),
            Ok("jobs.12".to_owned()),
        ]
    );
}

/// A rendered hole must stay inside a segment, and give a scalar.
#[test]
fn template_runtime_errors() {
    let set = load("mappings:\n  - name: t\n    table: s\n    topic: a.{{ new.v }}.b\n");
    let failure = |v: Value| {
        Fixture::new(Op::Insert, "s")
            .new_row(json!({ "v": v }))
            .apply(&set)
            .remove(0)
            .map(|e| e.topic)
            .map_err(|f| f.message)
    };
    assert_eq!(failure(json!("x-1")), Ok("a.x-1.b".to_owned()));
    assert_eq!(failure(json!(true)), Ok("a.true.b".to_owned()));
    assert_eq!(
        failure(json!("x.y")),
        Err("topic template `{{ new.v }}` gave \"x.y\"; it may hold only letters, digits, '_' and '-'".to_owned())
    );
    assert_eq!(
        failure(json!(null)),
        Err(
            "topic template `{{ new.v }}` gave null; it must give a string, a number or a bool"
                .to_owned()
        )
    );
    assert_eq!(
        failure(json!([1])),
        Err(
            "topic template `{{ new.v }}` gave list; it must give a string, a number or a bool"
                .to_owned()
        )
    );
    assert_eq!(
        failure(json!("")),
        Err("rendered topic is invalid: \"a..b\" has an empty segment (two dots in a row, or a dot at an end)".to_owned())
    );
}

/// A hole may be empty where it shares its segment with fixed text, and a
/// rendered topic is still held to the length limit.
#[test]
fn template_empty_part_and_length() {
    let set = load("mappings:\n  - name: t\n    table: s\n    topic: a.x{{ new.v }}.b\n");
    let topic = |v: Value| {
        Fixture::new(Op::Insert, "s")
            .new_row(json!({ "v": v }))
            .apply(&set)
            .remove(0)
            .map(|e| e.topic)
            .map_err(|f| f.message)
    };
    assert_eq!(topic(json!("")), Ok("a.x.b".to_owned()));
    assert_eq!(topic(json!("y".repeat(250))).map(|t| t.len()), Ok(255));
    assert!(
        topic(json!("y".repeat(251))).is_err_and(|e| e.starts_with("rendered topic is invalid:")),
        "256 characters"
    );
}

/// Payloads read `old`, `op`, `table`, `tx`, and build lists and maps.
#[test]
fn payload_with_old_and_context() {
    let set = load(
        r#"
mappings:
  - name: p
    table: accounts
    operations: [update, delete]
    payload:
      id: "old.id"
      before: old.balance
      after: new.balance
      delta_positive: "double(new.balance) > double(old.balance)"
      op: op
      table: table
      xid: tx.xid
      lsn: tx.lsn
      commit_ts: tx.commit_ts
      both: "[old.balance, new.balance]"
      nested: "{'old': old, 'n': 1}"
      whole_new: new
    topic: accounts.balance
"#,
    );
    assert!(set.needs_old_values("public", "accounts"));
    let e = Fixture::new(Op::Update, "accounts")
        .new_row(json!({"id": 1, "balance": "20.00"}))
        .old_row(json!({"id": 1, "balance": "10.50"}))
        .events(&set);
    assert_eq!(
        e[0].data,
        json!({
            "id": 1,
            "before": "10.50",
            "after": "20.00",
            "delta_positive": true,
            "op": "update",
            "table": "public.accounts",
            "xid": 42,
            "lsn": "16/B374D848",
            "commit_ts": "2026-03-04T12:00:00.123Z",
            "both": ["10.50", "20.00"],
            "nested": {"old": {"id": 1, "balance": "10.50"}, "n": 1},
            "whole_new": {"id": 1, "balance": "20.00"},
        })
    );
    // delete: new is absent, so `new.balance` is null and `new` is null
    let e = Fixture::new(Op::Delete, "accounts")
        .old_row(json!({"id": 1, "balance": "10.50"}))
        .apply(&set);
    assert_eq!(
        e[0].as_ref().map_err(|f| f.message.clone()),
        Err("in `payload.delta_positive`: found no matching overload for 'double' applied to '(null_type)'".to_owned())
    );
}

/// One mapping's runtime error leaves the others alone.
#[test]
fn failures_are_per_mapping() {
    let set = load(
        r#"
mappings:
  - name: missing-column
    table: t
    topic: a
    payload: {x: new.nope}
  - name: good
    table: t
    topic: b
  - name: when-not-bool
    table: t
    when: new.id
    topic: c
  - name: org-not-int
    table: t
    topic: d
    org: new.org
  - name: type-error
    table: t
    when: new.id + 'x' == 'y'
    topic: e
  - name: key-list
    table: t
    topic: f
    key: "[new.id]"
  - name: missing-in-cel
    table: t
    when: new.nope == 1
    topic: g
  - name: bytes
    table: t
    topic: h
    payload: {b: "b'abc'"}
"#,
    );
    let results = Fixture::new(Op::Insert, "t")
        .new_row(json!({"id": 1, "org": "12"}))
        .apply(&set);
    let summary: Vec<Result<String, (String, String)>> = results
        .into_iter()
        .map(|r| r.map(|e| e.topic).map_err(|f| (f.mapping, f.message)))
        .collect();
    let err = |m: &str, msg: &str| Err((m.to_owned(), msg.to_owned()));
    assert_eq!(
        summary,
        vec![
            err("missing-column", "in `payload.x`: No such key: nope"),
            Ok("b".to_owned()),
            err("when-not-bool", "`when` must be a bool, got number"),
            err(
                "org-not-int",
                "`org` must be an int or null, got string (a numeric column arrives as a string: use int(...))"
            ),
            err(
                "type-error",
                "in `when`: Unsupported binary operator 'add': Int(1), String(\"x\")"
            ),
            err(
                "key-list",
                "`key` must be a string, a number, a bool or null, got list"
            ),
            err("missing-in-cel", "in `when`: No such key: nope"),
            err(
                "bytes",
                "in `payload.b`: bytes cannot be put in an event; convert them with string(...) or base64 yourself"
            ),
        ]
    );
}

/// When several payload fields fail, the error names the first in file
/// order, whatever order the event's object keeps its keys in.
#[test]
fn first_failing_payload_field_in_file_order() {
    let set = load(
        r#"
mappings:
  - name: m
    table: t
    topic: a
    payload: {zeta: new.nope, ok: new.id, alpha: "new.id + 'x'"}
"#,
    );
    let results = Fixture::new(Op::Insert, "t")
        .new_row(json!({"id": 1}))
        .apply(&set);
    let messages: Vec<_> = results
        .into_iter()
        .map(|r| r.map(|e| e.data).map_err(|f| f.message))
        .collect();
    assert_eq!(
        messages,
        vec![Err("in `payload.zeta`: No such key: nope".to_owned())]
    );
}

/// Wide tables: more columns read than fit the engine's stack slots, and
/// rows too wide for one pass over them, give the same events.
#[test]
fn many_columns() {
    let fields: Vec<String> = (0..20).map(|i| format!("c{i}: new.c{i}")).collect();
    let yaml = format!(
        "mappings:\n  - name: m\n    table: t\n    changed: [c19]\n    when: old.c0 == 0\n    topic: a\n    payload: {{{}}}\n",
        fields.join(", ")
    );
    let set = load(&yaml);
    let mut new = Map::new();
    let mut old = Map::new();
    for i in 0..40 {
        new.insert(format!("c{i}"), json!(i));
        old.insert(format!("c{i}"), json!(i));
    }
    let fixture = Fixture::new(Op::Update, "t")
        .new_row(Value::Object(new.clone()))
        .old_row(Value::Object(old.clone()));
    assert!(fixture.events(&set).is_empty(), "c19 did not change");
    old.insert("c19".to_owned(), json!("before"));
    let e = Fixture::new(Op::Update, "t")
        .new_row(Value::Object(new))
        .old_row(Value::Object(old))
        .events(&set);
    let expected: Map<String, Value> = (0..20).map(|i| (format!("c{i}"), json!(i))).collect();
    assert_eq!(
        e.into_iter().map(|e| e.data).collect::<Vec<_>>(),
        vec![Value::Object(expected)]
    );
}

/// `org` accepts ints (and `int()` of a numeric string) and null; `key`
/// stringifies scalars and is absent when null.
#[test]
fn org_and_key() {
    let set = load(
        r#"
mappings:
  - name: a
    table: t
    topic: a
    org: int(new.org)
    key: new.k
  - name: b
    table: t
    topic: b
    org: new.maybe
    key: new.maybe
  - name: c
    table: t
    topic: c
    org: "new.n + 1"
    key: "double(new.n) * 2.5"
"#,
    );
    let e = Fixture::new(Op::Insert, "t")
        .new_row(json!({"org": "77", "k": "abc", "maybe": null, "n": 2}))
        .events(&set);
    assert_eq!(
        e.iter()
            .map(|e| (e.org_id, e.key.clone()))
            .collect::<Vec<_>>(),
        vec![
            (Some(77), Some("abc".to_owned())),
            (None, None),
            (Some(3), Some("5".to_owned()))
        ]
    );
}

/// CEL sees `op`, `table` and `tx`; `when: true` as a YAML bool works.
#[test]
fn variables_op_table_tx() {
    let set = load(
        r#"
mappings:
  - name: a
    table: app.t
    when: op == 'insert' && table == 'app.t' && tx.xid == 42 && tx.lsn.startsWith('16/')
    topic: a
  - name: b
    table: app.t
    when: true
    topic: b
  - name: c
    table: app.t
    when: old == null && null != old
    topic: c
"#,
    );
    let mut f = Fixture::new(Op::Insert, "t").new_row(json!({"id": 1}));
    f.schema = "app";
    assert_eq!(topics(&f.events(&set)), vec!["a", "b", "c"]);
}

/// Numeric columns arrive as strings and compare as strings; JSON numbers
/// keep their digits when passed through.
#[test]
fn numbers() {
    let set = load(
        r#"
mappings:
  - name: a
    table: t
    when: new.price == '12.50' && new.qty == 3 && new.big == 18446744073709551615u
    topic: a
    payload:
      price: new.price
      exact: new.exact
      big: new.big
      computed: "new.qty * 2"
"#,
    );
    let new: Value = serde_json::from_str(
        r#"{"price": "12.50", "qty": 3, "big": 18446744073709551615, "exact": 1.10}"#,
    )
    .expect("json");
    let e = Fixture::new(Op::Insert, "t").new_row(new).events(&set);
    assert_eq!(e.len(), 1);
    let expected: Value = serde_json::from_str(
        r#"{"price": "12.50", "exact": 1.10, "big": 18446744073709551615, "computed": 6}"#,
    )
    .expect("json");
    assert_eq!(e[0].data, expected);
}

/// Files are read in name order, `.yml` too; a missing directory is empty.
#[test]
fn load_dir_order_and_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("b.yml"),
        "mappings:\n  - {name: b, table: t, topic: b}\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("a.yaml"),
        "mappings:\n  - {name: a, table: t, topic: a}\n",
    )
    .expect("write");
    std::fs::write(dir.path().join("notes.txt"), "not yaml: [").expect("write");
    std::fs::write(dir.path().join(".swap.yaml"), "broken: [").expect("write");
    let set = MappingSet::load_dir(dir.path()).expect("loads");
    let names: Vec<_> = set.mappings().into_iter().map(|m| m.name).collect();
    assert_eq!(names, vec!["a", "b"]);

    let missing = MappingSet::load_dir(&dir.path().join("nope")).expect("empty");
    assert!(missing.mappings().is_empty() && missing.topics().is_empty());
    assert!(
        MappingSet::empty()
            .apply(&Change {
                op: Op::Insert,
                schema: "public",
                table: "t",
                new: None,
                old: None,
                unchanged_columns: &[],
                xid: 1,
                commit_ts: "",
                lsn: "",
            })
            .is_empty()
    );
}

/// The set can be shared between threads (swapped in on reload).
#[test]
fn set_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<MappingSet>();
}

/// Errors serialize with the fields the API reports.
#[test]
fn error_serialization() {
    let e = crate::LoadError {
        file: "m.yaml".into(),
        line: 3,
        column: 5,
        message: "bad".into(),
    };
    assert_eq!(
        serde_json::to_value(&e).expect("serializes"),
        json!({"file": "m.yaml", "line": 3, "column": 5, "message": "bad"})
    );
    assert_eq!(e.to_string(), "m.yaml:3:5: bad");
}
