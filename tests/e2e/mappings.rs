//! Mapping files through real replication: the four patterns, `changed:`,
//! templates, failures into dead letters, reloads, and `pgtide check`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{Value, json};

use crate::harness::{Pgtide, Server, TestDb, WAIT, run_pgtide};

const SCHEMA: &str = "
    CREATE TABLE sessions (id int PRIMARY KEY, org_id int NOT NULL, status text, notes text);
    ALTER TABLE sessions ALTER COLUMN notes SET STORAGE EXTERNAL;
    ALTER TABLE sessions REPLICA IDENTITY FULL;
    CREATE TABLE users (id int PRIMARY KEY, org_id int NOT NULL, email text);
    CREATE TABLE addresses (id int PRIMARY KEY, user_id int, city text);
    CREATE TABLE plain (id int PRIMARY KEY, v text);";

const MAPPINGS: &str = r#"
topics:
  - name: session.ended
    schema:
      type: object
      required: [session_id]
      properties:
        session_id: { type: integer }
  - name: report.generated
    description: API-only topic
mappings:
  # Pattern 1: one table, one topic, with changed:, payload, org and key.
  - name: session-status
    table: sessions
    operations: [insert, update]
    changed: [status]
    topic: session.status
    event_type: session.status_changed
    payload:
      session_id: new.id
      status: new.status
      previous: "op == 'update' ? old.status : null"
    org: new.org_id
    key: new.id
  # Pattern 3: one table, several topics by `when`.
  - name: session-started
    table: sessions
    operations: [insert]
    when: new.status == 'active'
    topic: session.started
  - name: session-ended
    table: sessions
    operations: [update]
    when: new.status == 'completed'
    topic: session.ended
    payload:
      session_id: "new.notes == 'bad' ? 'not-a-number' : new.id"
  # Templated topic; a row without the column fails at runtime.
  - name: session-by-status
    table: sessions
    operations: [insert, update]
    topic: "sessions.{{ new.status }}"
  # Pattern 2: several tables, one topic.
  - name: user-profile
    table: users
    topic: user.profile.changed
    payload: { user_id: new.id, email: new.email }
  - name: address-profile
    table: addresses
    operations: [insert, update]
    topic: user.profile.changed
    payload: { user_id: new.user_id, city: new.city }
"#;

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    Ok(std::fs::write(dir.join(name), text)?)
}

async fn start(db: &TestDb, dir: &Path, extra: &[&str]) -> anyhow::Result<Pgtide> {
    let mut args = db.run_args();
    args.push("--mappings".into());
    args.push(dir.display().to_string());
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    Pgtide::start(&args).await
}

fn summary(events: &[Value]) -> Vec<(String, Value)> {
    events
        .iter()
        .map(|e| {
            (
                e["topic"].as_str().unwrap_or("").to_owned(),
                e["data"].clone(),
            )
        })
        .collect()
}

/// The seed's four patterns, `changed:` (with an unchanged TOASTed column),
/// `when` routing, templates, org/key, mapped-only tables producing only
/// mapping events, a schema rejecting a mapped payload, and a CEL runtime
/// failure: both become dead letters and the stream goes on.
#[tokio::test]
async fn mapping_patterns_end_to_end() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let client = db.client().await?;
    client.batch_execute(SCHEMA).await?;
    let dir = tempfile::tempdir()?;
    write(dir.path(), "app.yaml", MAPPINGS)?;
    let pgtide = start(&db, dir.path(), &[]).await?;

    client
        .batch_execute(
            "INSERT INTO sessions VALUES (1, 7, 'active', repeat('n', 5000));
             UPDATE sessions SET org_id = 8 WHERE id = 1;            -- status unchanged: no session.status
             UPDATE sessions SET status = 'completed' WHERE id = 1;  -- notes unchanged (TOAST)
             INSERT INTO users VALUES (1, 7, 'a@example.com');
             INSERT INTO addresses VALUES (1, 1, 'Oslo');
             INSERT INTO plain VALUES (1, 'x');
             INSERT INTO sessions VALUES (2, 7, NULL, 'x');          -- template has no status: dead letter
             UPDATE sessions SET notes = 'bad', status = 'completed' WHERE id = 2; -- schema rejects session.ended
             INSERT INTO sessions VALUES (3, 7, 'active', 'ok');",
        )
        .await?;
    let events = pgtide.wait_events(12).await?;
    let got = summary(&events);
    let expected: Vec<(String, Value)> = vec![
        (
            "session.status".into(),
            json!({"session_id": 1, "status": "active", "previous": null}),
        ),
        (
            "session.started".into(),
            json!({"id": 1, "org_id": 7, "status": "active", "notes": "n".repeat(5000)}),
        ),
        (
            "sessions.active".into(),
            json!({"id": 1, "org_id": 7, "status": "active", "notes": "n".repeat(5000)}),
        ),
        (
            "sessions.active".into(),
            json!({"id": 1, "org_id": 8, "status": "active", "notes": "n".repeat(5000)}),
        ),
        (
            "session.status".into(),
            json!({"session_id": 1, "status": "completed", "previous": "active"}),
        ),
        ("session.ended".into(), json!({"session_id": 1})),
        (
            "sessions.completed".into(),
            json!({"id": 1, "org_id": 8, "status": "completed", "notes": "n".repeat(5000)}),
        ),
        (
            "user.profile.changed".into(),
            json!({"user_id": 1, "email": "a@example.com"}),
        ),
        (
            "user.profile.changed".into(),
            json!({"user_id": 1, "city": "Oslo"}),
        ),
        (
            "session.status".into(),
            json!({"session_id": 2, "status": null, "previous": null}),
        ),
        (
            "session.status".into(),
            json!({"session_id": 2, "status": "completed", "previous": null}),
        ),
        (
            "sessions.completed".into(),
            json!({"id": 2, "org_id": 7, "status": "completed", "notes": "bad"}),
        ),
    ];
    assert_eq!(got[..expected.len()], expected[..], "{got:#?}");
    let first = &events[0];
    assert_eq!(first["type"], "session.status_changed");
    assert_eq!(first["org_id"], 7);
    assert_eq!(first["meta"]["mapping"], "session-status");
    assert_eq!(first["meta"]["key"], "1");
    assert_eq!(first["meta"]["table"], "public.sessions");
    assert_eq!(events[1]["type"], "row.inserted");
    // No default-topic events: these tables are only mapped.
    assert!(
        events
            .iter()
            .all(|e| !e["topic"].as_str().unwrap().starts_with("tables."))
    );

    // The stream went on past both failures.
    let tail = pgtide.wait_events(15).await?;
    assert!(
        summary(&tail)
            .iter()
            .any(|(t, d)| t == "session.started" && d["id"] == 3),
        "{tail:#?}"
    );

    let letters: Value = pgtide
        .http()
        .get(pgtide.url("/v1/dead-letters"))
        .send()
        .await?
        .json()
        .await?;
    let letters = letters["dead_letters"].as_array().unwrap();
    let kinds: Vec<(&str, &str)> = letters
        .iter()
        .map(|l| (l["kind"].as_str().unwrap(), l["error"].as_str().unwrap()))
        .collect();
    assert_eq!(kinds.len(), 2, "{letters:#?}");
    assert_eq!(kinds[0].0, "mapping");
    assert_eq!(letters[0]["event"]["mapping"], "session-by-status");
    assert_eq!(letters[0]["event"]["change"]["new"]["id"], 2);
    assert_eq!(kinds[1].0, "validation");
    assert_eq!(letters[1]["topic"], "session.ended");
    assert!(kinds[1].1.contains("/session_id"), "{kinds:?}");

    // Retrying the mapping failure before the mapping changes fails again (422);
    // after a fix, the retry stores the event and removes the dead letter.
    let mapping_letter = letters[0]["id"].as_i64().unwrap();
    let retry_url = pgtide.url(&format!("/v1/dead-letters/{mapping_letter}/retry"));
    let again = pgtide.http().post(&retry_url).send().await?;
    assert_eq!(again.status().as_u16(), 422);
    write(
        dir.path(),
        "app.yaml",
        &MAPPINGS.replace(
            "\"sessions.{{ new.status }}\"",
            "\"sessions.{{ new.status == null ? 'none' : new.status }}\"",
        ),
    )?;
    let deadline = Instant::now() + WAIT;
    loop {
        let retried = pgtide.http().post(&retry_url).send().await?;
        if retried.status().is_success() {
            let body: Value = retried.json().await?;
            assert_eq!(body["events"][0]["topic"], "sessions.none", "{body}");
            assert_eq!(body["events"][0]["meta"]["retried_from"], mapping_letter);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the fixed mapping was not reloaded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left: Value = pgtide
        .http()
        .get(pgtide.url("/v1/dead-letters?kind=mapping"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(left["dead_letters"].as_array().unwrap().len(), 0);

    // File topics are in the registry, read-only.
    let topic: Value = pgtide
        .http()
        .get(pgtide.url("/v1/topics/report.generated"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(topic["read_only"], true);
    let r = pgtide
        .http()
        .patch(pgtide.url("/v1/topics/report.generated"))
        .json(&json!({"description": "x"}))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 409);
    let body: Value = r.json().await?;
    assert_eq!(body["error"]["code"], "read_only");
    let listed: Value = pgtide
        .http()
        .get(pgtide.url("/v1/mappings"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(listed["mappings"].as_array().unwrap().len(), 6);
    assert_eq!(listed["errors"], json!([]));
    assert_eq!(listed["mappings"][0]["read_only"], true);
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

async fn mappings_view(pgtide: &Pgtide) -> anyhow::Result<Value> {
    Ok(pgtide
        .http()
        .get(pgtide.url("/v1/mappings"))
        .send()
        .await?
        .json()
        .await?)
}

async fn wait_view(
    pgtide: &Pgtide,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let view = mappings_view(pgtide).await?;
        if done(&view) {
            return Ok(view);
        }
        if Instant::now() > deadline {
            bail!("{what} did not happen: {view}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Editing the files reloads them: a new mapping on a new table adds the
/// table to the publication and its events flow; a broken edit keeps the
/// running set and shows its errors in `/v1/mappings` and `/readyz`; SIGHUP
/// reloads too.
#[tokio::test]
async fn reload_good_and_bad() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let client = db.client().await?;
    client.batch_execute(SCHEMA).await?;
    let dir = tempfile::tempdir()?;
    write(
        dir.path(),
        "a.yaml",
        "mappings:\n  - name: users\n    table: users\n    topic: users.changed\n",
    )?;
    let pgtide = start(&db, dir.path(), &[]).await?;

    write(
        dir.path(),
        "b.yaml",
        "mappings:\n  - name: plain\n    table: plain\n    topic: plain.changed\n    payload: { v: new.v }\n",
    )?;
    wait_view(&pgtide, "reload with the new mapping", |v| {
        v["mappings"].as_array().is_some_and(|m| m.len() == 2)
    })
    .await?;
    let in_publication: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_publication_tables WHERE pubname = $1 AND tablename = 'plain'",
            &[&db.publication],
        )
        .await?
        .get(0);
    assert_eq!(in_publication, 1, "the publication follows the mappings");
    client
        .batch_execute("INSERT INTO plain VALUES (1, 'x'); INSERT INTO users VALUES (1, 1, 'e')")
        .await?;
    let events = pgtide.wait_events(2).await?;
    assert_eq!(
        summary(&events),
        [
            ("plain.changed".into(), json!({"v": "x"})),
            (
                "users.changed".into(),
                json!({"id": 1, "org_id": 1, "email": "e"})
            )
        ]
    );

    // A broken edit: the running set stays, the errors are shown with their place.
    write(
        dir.path(),
        "b.yaml",
        "mappings:\n  - name: plain\n    table: plain\n    topic: plain..changed\n",
    )?;
    let view = wait_view(&pgtide, "the failed reload", |v| {
        v["errors"].as_array().is_some_and(|e| !e.is_empty())
    })
    .await?;
    let error = &view["errors"][0];
    assert!(
        error["file"].as_str().unwrap().ends_with("b.yaml"),
        "{view}"
    );
    assert_eq!(error["line"], 4);
    assert!(
        error["message"].as_str().unwrap().contains("empty segment"),
        "{view}"
    );
    assert_eq!(
        view["mappings"].as_array().unwrap().len(),
        2,
        "running set kept"
    );
    let ready = pgtide.http().get(pgtide.url("/readyz")).send().await?;
    assert_eq!(ready.status().as_u16(), 200);
    let ready: Value = ready.json().await?;
    assert_eq!(ready["mappings"]["errors"][0]["line"], 4);
    client
        .batch_execute("INSERT INTO plain VALUES (2, 'y')")
        .await?;
    let events = pgtide.wait_events(3).await?;
    assert_eq!(events[2]["topic"], "plain.changed", "old set still maps");

    // SIGHUP reloads (after fixing the file the watcher also would).
    std::fs::remove_file(dir.path().join("b.yaml"))?;
    let pid = pgtide.child.id().expect("running");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )?;
    wait_view(&pgtide, "reload after SIGHUP", |v| {
        v["errors"].as_array().is_some_and(Vec::is_empty)
            && v["mappings"].as_array().is_some_and(|m| m.len() == 1)
    })
    .await?;
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// A mapping that reads old values on a table without REPLICA IDENTITY FULL
/// is refused with the statement to run; `--set-replica-identity-full` runs it.
#[tokio::test]
async fn old_values_need_replica_identity_full() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let client = db.client().await?;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, status text)")
        .await?;
    let dir = tempfile::tempdir()?;
    write(
        dir.path(),
        "t.yaml",
        "mappings:\n  - name: t-status\n    table: t\n    operations: [update]\n    changed: [status]\n    topic: t.status\n",
    )?;
    let mut args = db.run_args();
    args.extend(["--mappings".into(), dir.path().display().to_string()]);
    let out = run_pgtide(&args).await?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ALTER TABLE \"public\".\"t\" REPLICA IDENTITY FULL"),
        "{stderr}"
    );
    assert!(stderr.contains("t.yaml:5:5:"), "at `changed:`: {stderr}");

    let pgtide = start(&db, dir.path(), &["--set-replica-identity-full"]).await?;
    let identity: String = client
        .query_one(
            "SELECT relreplident::text FROM pg_class WHERE relname = 't'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(identity, "f");
    client
        .batch_execute(
            "INSERT INTO t VALUES (1, 'a'); UPDATE t SET status = 'a'; UPDATE t SET status = 'b';",
        )
        .await?;
    let events = pgtide.wait_events(1).await?;
    assert_eq!(
        events.len(),
        1,
        "only the update that changed status: {events:?}"
    );
    assert_eq!(events[0]["data"]["status"], "b");
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// `pgtide check`: broken files are reported as `file:line:column: message`
/// with exit 1; with `--database-url`, missing tables and columns too.
#[tokio::test]
async fn check_reports_every_error_with_its_place() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    write(
        dir.path(),
        "bad.yaml",
        "mappings:\n  - name: a\n    table: t\n    topic: a.b\n    colour: red\n  - name: a\n    table: t\n    topic: x\n    when: 'new.id =='\n",
    )?;
    let out = run_pgtide(&["check".into(), dir.path().display().to_string()]).await?;
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("bad.yaml:5:5:") && l.contains("colour")),
        "{stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("bad.yaml:6:") && l.contains("duplicate")),
        "{stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("bad.yaml:9:") && l.to_lowercase().contains("cel")),
        "{stdout}"
    );

    let server = Server::shared().await?;
    let db = server.database().await?;
    db.client()
        .await?
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await?;
    let good = tempfile::tempdir()?;
    write(
        good.path(),
        "m.yaml",
        "mappings:\n  - name: ok\n    table: t\n    topic: t.x\n    payload: { id: new.id, nope: new.missing }\n  - name: gone\n    table: nowhere\n    topic: n.x\n",
    )?;
    let out = run_pgtide(&["check".into(), good.path().display().to_string()]).await?;
    assert!(
        out.status.success(),
        "without a database the files are fine: {out:?}"
    );
    let out = run_pgtide(&[
        "check".into(),
        good.path().display().to_string(),
        "--database-url".into(),
        db.url.clone(),
    ])
    .await?;
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("m.yaml:5:34: ") && stdout.contains("no column \"missing\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("m.yaml:7:12: ") && stdout.contains("table public.nowhere does not exist"),
        "{stdout}"
    );

    // The shipped examples are valid against the demo schema.
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../mappings");
    let out = run_pgtide(&["check".into(), examples.display().to_string()]).await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    db.cleanup().await;
    Ok(())
}

/// Every live-database error of `pgtide check --database-url` points at what
/// names the missing thing: a missing table at its `table:` value, a missing
/// column at the payload value, `changed:` entry, `when` or `key` that names
/// it, a missing REPLICA IDENTITY FULL at the first `changed:` or `old.` use;
/// `GET /v1/mappings` reports a failed reload at the same places.
#[tokio::test]
async fn database_errors_point_at_their_line() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let client = db.client().await?;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, status text);
             CREATE UNLOGGED TABLE u (id int PRIMARY KEY);
             CREATE TABLE ok (id int PRIMARY KEY);
             CREATE TABLE f (id int PRIMARY KEY, status text);
             ALTER TABLE f REPLICA IDENTITY FULL;",
        )
        .await?;
    let cases: &[(&str, &str, &str)] = &[
        (
            "missing-table.yaml",
            "mappings:\n  - name: a\n    table: nowhere\n    topic: a.x\n",
            "missing-table.yaml:3:12: mapping \"a\": table public.nowhere does not exist",
        ),
        (
            "unlogged.yaml",
            "mappings:\n  - name: a\n    topic: a.x\n    table: u\n",
            "unlogged.yaml:4:12: mapping \"a\": table public.u is UNLOGGED",
        ),
        (
            "payload.yaml",
            "mappings:\n  - name: a\n    table: t\n    topic: a.x\n    payload:\n      id: new.id\n      colour: new.colour\n",
            "payload.yaml:7:15: mapping \"a\": table public.t has no column \"colour\"",
        ),
        (
            "changed.yaml",
            "mappings:\n  - name: a\n    table: f\n    topic: a.x\n    operations: [update]\n    changed:\n      - status\n      - colour\n",
            "changed.yaml:8:9: mapping \"a\": table public.f has no column \"colour\"",
        ),
        (
            "when.yaml",
            "mappings:\n  - name: a\n    table: t\n    topic: a.x\n    when: new.colour == 'red'\n",
            "when.yaml:5:11: mapping \"a\": table public.t has no column \"colour\"",
        ),
        (
            "key.yaml",
            "mappings:\n  - name: a\n    table: t\n    topic: a.x\n    key: new.colour\n",
            "key.yaml:5:10: mapping \"a\": table public.t has no column \"colour\"",
        ),
        (
            "identity-changed.yaml",
            "mappings:\n  - name: a\n    table: t\n    topic: a.x\n    operations: [update]\n    changed: [status]\n",
            "identity-changed.yaml:6:5: mapping \"a\" reads old values",
        ),
        (
            "identity-old.yaml",
            "mappings:\n  - name: a\n    table: t\n    topic: a.x\n    payload:\n      id: new.id\n      before: old.status\n",
            "identity-old.yaml:7:15: mapping \"a\" reads old values",
        ),
    ];
    for (file, yaml, expected) in cases {
        let dir = tempfile::tempdir()?;
        write(dir.path(), file, yaml)?;
        let out = run_pgtide(&[
            "check".into(),
            dir.path().display().to_string(),
            "--database-url".into(),
            db.url.clone(),
        ])
        .await?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{file}: {stdout}");
        let line = stdout.lines().next().unwrap_or_default();
        let line = line.rsplit_once('/').map_or(line, |(_, l)| l);
        assert!(line.starts_with(expected), "{file}: {stdout}");
        assert_eq!(stdout.lines().count(), 1, "{file}: one error: {stdout}");
    }

    // The same places in a failed reload's errors.
    let dir = tempfile::tempdir()?;
    write(
        dir.path(),
        "a.yaml",
        "mappings:\n  - name: ok\n    table: ok\n    topic: ok.x\n",
    )?;
    let pgtide = start(&db, dir.path(), &[]).await?;
    write(dir.path(), "b.yaml", cases[2].1)?;
    let view = wait_view(&pgtide, "the failed reload", |v| {
        v["errors"].as_array().is_some_and(|e| !e.is_empty())
    })
    .await?;
    let error = &view["errors"][0];
    assert!(
        error["file"].as_str().unwrap_or("").ends_with("b.yaml"),
        "{view}"
    );
    assert_eq!(
        (&error["line"], &error["column"]),
        (&json!(7), &json!(15)),
        "{view}"
    );
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// Mappings created through the API run like file ones, are listed as
/// `source: api`, survive a restart, and can be deleted; bad ones are
/// refused with their errors; file mappings are read-only.
#[tokio::test]
async fn api_defined_mappings() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let client = db.client().await?;
    client.batch_execute(SCHEMA).await?;
    let dir = tempfile::tempdir()?;
    write(
        dir.path(),
        "a.yaml",
        "mappings:\n  - name: users\n    table: users\n    topic: users.changed\n",
    )?;
    let pgtide = start(&db, dir.path(), &[]).await?;
    let http = pgtide.http();

    let created = http
        .post(pgtide.url("/v1/mappings"))
        .json(&json!({"name": "plain-api", "table": "public.plain", "topic": "plain.api", "payload": {"v": "new.v"}}))
        .send()
        .await?;
    assert_eq!(created.status().as_u16(), 201);
    let created: Value = created.json().await?;
    assert_eq!(created["source"], "api");
    assert_eq!(created["read_only"], false);
    client
        .batch_execute("INSERT INTO plain VALUES (1, 'x')")
        .await?;
    let events = pgtide.wait_events(1).await?;
    assert_eq!(summary(&events), [("plain.api".into(), json!({"v": "x"}))]);

    for (body, needle) in [
        (
            json!({"name": "users", "table": "plain", "topic": "x.y"}),
            "duplicate",
        ),
        (
            json!({"name": "bad", "table": "plain", "topic": "x.y", "colour": 1}),
            "colour",
        ),
        (
            json!({"name": "bad", "table": "nowhere", "topic": "x.y"}),
            "does not exist",
        ),
        (
            json!({"name": "bad", "table": "plain", "topic": "x.y", "when": "new.v =="}),
            "",
        ),
    ] {
        let r = http
            .post(pgtide.url("/v1/mappings"))
            .json(&body)
            .send()
            .await?;
        assert_eq!(r.status().as_u16(), 400, "{body}");
        let err: Value = r.json().await?;
        assert_eq!(err["error"]["code"], "invalid_mapping");
        assert!(
            err["error"]["message"].as_str().unwrap().contains(needle),
            "{err}"
        );
        assert!(!err["error"]["details"].as_array().unwrap().is_empty());
    }
    let r = http.delete(pgtide.url("/v1/mappings/users")).send().await?;
    assert_eq!(r.status().as_u16(), 409);
    let listed = mappings_view(&pgtide).await?;
    let names: Vec<(&str, &str)> = listed["mappings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap(), m["source"].as_str().unwrap()))
        .collect();
    assert_eq!(names, [("users", "file"), ("plain-api", "api")]);

    // Kept across a restart.
    pgtide.stop().await?;
    let pgtide = start(&db, dir.path(), &[]).await?;
    assert_eq!(
        mappings_view(&pgtide).await?["mappings"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let r = pgtide
        .http()
        .delete(pgtide.url("/v1/mappings/plain-api"))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(
        mappings_view(&pgtide).await?["mappings"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let r = pgtide
        .http()
        .delete(pgtide.url("/v1/mappings/plain-api"))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 404);
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// A topic declared in a file is registered with its schema; editing the
/// schema registers a new version; events are validated against it.
#[tokio::test]
async fn file_schemas_are_versioned() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let dir = tempfile::tempdir()?;
    let v1 = "topics:\n  - name: report.generated\n    schema:\n      type: object\n      required: [id]\n      properties:\n        id: { type: integer }\n";
    write(dir.path(), "t.yaml", v1)?;
    let pgtide = start(&db, dir.path(), &[]).await?;
    let schemas = |pgtide: &Pgtide| {
        let req = pgtide
            .http()
            .get(pgtide.url("/v1/topics/report.generated/schemas"));
        async move {
            anyhow::Ok(
                req.send().await?.json::<Value>().await?["schemas"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            )
        }
    };
    assert_eq!(schemas(&pgtide).await?.len(), 1);
    let r = pgtide
        .http()
        .post(pgtide.url("/v1/events"))
        .json(&json!({"event_type": "report.generated", "data": {"id": "x"}}))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 422);
    write(
        dir.path(),
        "t.yaml",
        &format!("{v1}        format: {{ type: string }}\n"),
    )?;
    let deadline = Instant::now() + WAIT;
    while schemas(&pgtide).await?.len() < 2 {
        assert!(Instant::now() < deadline, "no new version after the edit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let topic: Value = pgtide
        .http()
        .get(pgtide.url("/v1/topics/report.generated"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(topic["active_schema_version"], 2);
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}
