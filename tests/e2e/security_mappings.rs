//! Mappings and captured tables under attack, from outside: the real binary
//! with JWTs for two orgs, real SQL writes and real logical replication.
//! A mapping reads a whole table, so who may create one, what it may read,
//! whose it is and what a broken one may break are all checked here.

use std::process::Stdio;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{Pgtide, Server, TestDb, WAIT, run_pgtide};

const SECRET: &str = "security-secret-0123456789abcdef";

const SCHEMA: &str = "
    CREATE TABLE secrets (id int PRIMARY KEY, org_id int NOT NULL, secret text);
    CREATE TABLE notes (id int PRIMARY KEY, org_id int NOT NULL, body text);
    CREATE TABLE orders (id int PRIMARY KEY, org_id int NOT NULL, total int);
    CREATE TABLE plain (id int PRIMARY KEY, v text);";

/// A token signed with [`SECRET`], minted by `pgtide token`.
async fn token(args: &[&str]) -> anyhow::Result<String> {
    let mut all: Vec<String> = vec!["token".into(), "--jwt-secret".into(), SECRET.into()];
    all.extend(args.iter().map(|s| (*s).to_owned()));
    let out = run_pgtide(&all).await?;
    if !out.status.success() {
        bail!("pgtide token failed: {out:?}");
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// The tokens of the attack: an admin, and per org an operator and a reader.
struct Tokens {
    admin: String,
    op1: String,
    op2: String,
    read1: String,
    read2: String,
}

async fn tokens() -> anyhow::Result<Tokens> {
    Ok(Tokens {
        admin: token(&["--sub", "admin", "--role", "admin"]).await?,
        op1: token(&["--sub", "op1", "--org", "1", "--role", "operator"]).await?,
        op2: token(&["--sub", "op2", "--org", "2", "--role", "operator"]).await?,
        read1: token(&["--sub", "r1", "--org", "1", "--role", "read"]).await?,
        read2: token(&["--sub", "r2", "--org", "2", "--role", "read"]).await?,
    })
}

/// `pgtide run` with JWT auth (no `--insecure-no-auth`) and `extra` flags.
fn args(db: &TestDb, dir: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let mut args = db.run_args();
    args.retain(|a| a != "--insecure-no-auth");
    args.extend(["--jwt-secret".into(), SECRET.into()]);
    args.extend(["--mappings".into(), dir.display().to_string()]);
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

async fn setup() -> anyhow::Result<(TestDb, tokio_postgres::Client, tempfile::TempDir)> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let client = db.client().await?;
    client.batch_execute(SCHEMA).await?;
    Ok((db, client, tempfile::tempdir()?))
}

/// `POST /v1/mappings` as `token`: status and body.
async fn create(pgtide: &Pgtide, token: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
    let r = pgtide
        .http()
        .post(pgtide.url("/v1/mappings"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await?;
    Ok((r.status().as_u16(), r.json().await?))
}

async fn delete(pgtide: &Pgtide, token: &str, name: &str) -> anyhow::Result<(u16, Value)> {
    let r = pgtide
        .http()
        .delete(pgtide.url(&format!("/v1/mappings/{name}")))
        .bearer_auth(token)
        .send()
        .await?;
    let status = r.status().as_u16();
    let text = r.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

async fn get(pgtide: &Pgtide, token: &str, path: &str) -> anyhow::Result<Value> {
    let r = pgtide
        .http()
        .get(pgtide.url(path))
        .bearer_auth(token)
        .send()
        .await?;
    let status = r.status();
    let body: Value = r.json().await?;
    if !status.is_success() {
        bail!("GET {path} -> {status}: {body}");
    }
    Ok(body)
}

fn names(view: &Value) -> Vec<String> {
    view["mappings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["name"].as_str().map(str::to_owned))
        .collect()
}

/// Asserts an error body of the contract's shape with this code.
fn assert_error(body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    assert!(body["error"]["details"].is_array(), "{body}");
}

async fn in_publication(
    client: &tokio_postgres::Client,
    db: &TestDb,
    table: &str,
) -> anyhow::Result<bool> {
    Ok(client
        .query_one(
            "SELECT count(*) FROM pg_publication_tables WHERE pubname = $1 AND tablename = $2",
            &[&db.publication, &table],
        )
        .await?
        .get::<_, i64>(0)
        == 1)
}

async fn stored_mappings(client: &tokio_postgres::Client) -> anyhow::Result<Vec<String>> {
    Ok(client
        .query(
            "SELECT name FROM pgtide.mappings WHERE owner = 'api' ORDER BY name",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// A live subscription to `**` as `token`, ready once it answers.
struct Tail {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl Tail {
    async fn open(pgtide: &Pgtide, token: &str, pattern: &str) -> anyhow::Result<Tail> {
        let url = pgtide
            .url(&format!("/ws?token={token}"))
            .replacen("http://", "ws://", 1);
        let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(&url))
            .await
            .context("connecting the WebSocket")??;
        ws.send(Message::Text(
            json!({"type": "subscribe", "topic": pattern, "id": 1})
                .to_string()
                .into(),
        ))
        .await?;
        let reply = tokio::time::timeout(WAIT, ws.next())
            .await
            .context("no subscribe reply")?;
        match reply {
            Some(Ok(Message::Text(t))) if t.contains("success") => Ok(Tail { ws }),
            other => bail!("subscribe refused: {other:?}"),
        }
    }

    /// The events received until one on `topic` (which is not included).
    /// Only [`marker`]s end it: an org-less event reaches every subscriber.
    async fn until(&mut self, topic: &str) -> anyhow::Result<Vec<Value>> {
        let mut events = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .with_context(|| format!("no event on {topic} within {WAIT:?}: {events:?}"))?;
            let Some(Ok(frame)) = frame else {
                bail!("the WebSocket ended: {frame:?}");
            };
            let Message::Text(text) = frame else {
                continue;
            };
            let e: Value = serde_json::from_str(text.as_str())?;
            if e["topic"] == topic {
                return Ok(events);
            }
            if e.get("seq").is_some() {
                events.push(e);
            }
        }
    }
}

/// Commits a `pgtide.publish` marker after everything written so far: once
/// a subscriber has it, every earlier commit's events are stored and sent.
async fn marker(client: &tokio_postgres::Client, topic: &str) -> anyhow::Result<()> {
    client
        .execute("SELECT pgtide.publish($1, '{}'::jsonb)", &[&topic])
        .await?;
    Ok(())
}

fn topics_of(events: &[Value]) -> Vec<(String, Value)> {
    events
        .iter()
        .map(|e| {
            (
                e["topic"].as_str().unwrap_or("").to_owned(),
                e["org_id"].clone(),
            )
        })
        .collect()
}

/// Finding 2: an org-2 operator (and a reader) cannot map an arbitrary
/// table — 403, nothing stored, the table never joins the publication, even
/// asking for another org's events; an admin can, and its mapping runs.
#[tokio::test]
async fn operator_cannot_map_arbitrary_tables_admin_can() -> anyhow::Result<()> {
    let (db, client, dir) = setup().await?;
    let t = tokens().await?;
    let pgtide = Pgtide::start(&args(&db, dir.path(), &[])).await?;

    for (who, body) in [
        (
            &t.op2,
            json!({"name": "leak", "table": "public.secrets", "topic": "leak.secrets"}),
        ),
        (
            &t.op2,
            json!({"name": "leak2", "table": "secrets", "topic": "leak.secrets", "org": "2"}),
        ),
        (
            &t.read2,
            json!({"name": "leak3", "table": "public.secrets", "topic": "leak.secrets"}),
        ),
    ] {
        let (status, err) = create(&pgtide, who, &body).await?;
        assert_eq!(status, 403, "{body}: {err}");
        assert_error(&err, "forbidden");
    }
    let (_, err) = create(
        &pgtide,
        &t.op2,
        &json!({"name": "leak", "table": "public.secrets", "topic": "leak.secrets"}),
    )
    .await?;
    let message = err["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("admin") && message.contains("--api-mapping-tables"),
        "{err}"
    );
    assert!(stored_mappings(&client).await?.is_empty());
    assert!(!in_publication(&client, &db, "secrets").await?);

    let (status, created) = create(
        &pgtide,
        &t.admin,
        &json!({"name": "secrets-admin", "table": "public.secrets", "topic": "admin.secrets", "org": "new.org_id"}),
    )
    .await?;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["source"], "api");
    assert!(in_publication(&client, &db, "secrets").await?);
    let mut tail = Tail::open(&pgtide, &t.admin, "**").await?;
    client
        .batch_execute("INSERT INTO secrets VALUES (1, 1, 's1'), (2, 2, 's2')")
        .await?;
    marker(&client, "test.done").await?;
    let events = tail.until("test.done").await?;
    assert_eq!(
        topics_of(&events),
        [
            ("admin.secrets".into(), json!(1)),
            ("admin.secrets".into(), json!(2))
        ]
    );
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// Finding 2/3: tables in `pgtide`, `pg_catalog`, `information_schema` and
/// `pg_toast` are refused for every mapping: through the API with 400 naming
/// the table (nothing stored, later writes unaffected); in a file by `pgtide
/// check` and by `pgtide run` at `file:line:column`.
#[tokio::test]
async fn system_tables_are_refused_for_api_and_file_mappings() -> anyhow::Result<()> {
    let (db, client, dir) = setup().await?;
    let t = tokens().await?;
    let pgtide = Pgtide::start(&args(&db, dir.path(), &[])).await?;
    for table in [
        "pg_catalog.pg_authid",
        "pgtide.webhooks",
        "information_schema.tables",
        "pg_toast.pg_toast_1260",
    ] {
        let body = json!({"name": "sys", "table": table, "topic": "sys.rows"});
        let (status, err) = create(&pgtide, &t.admin, &body).await?;
        assert_eq!(status, 400, "{table}: {err}");
        assert_error(&err, "invalid_mapping");
        assert!(
            err["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(&format!("`{table}`"))),
            "{err}"
        );
        assert!(
            !err["error"]["details"]
                .as_array()
                .is_none_or(|d| d.is_empty())
        );
    }
    assert!(stored_mappings(&client).await?.is_empty());
    // Writes still work afterwards.
    let (status, created) = create(
        &pgtide,
        &t.admin,
        &json!({"name": "plain", "table": "plain", "topic": "plain.rows"}),
    )
    .await?;
    assert_eq!(status, 201, "{created}");
    pgtide.stop().await?;

    let yaml = "mappings:\n  - name: hooks\n    table: pgtide.webhooks\n    topic: hooks.rows\n";
    std::fs::write(dir.path().join("a.yaml"), yaml)?;
    let check = run_pgtide(&["check".into(), dir.path().display().to_string()]).await?;
    assert_eq!(check.status.code(), Some(1));
    let stdout = String::from_utf8(check.stdout)?;
    assert!(
        stdout.contains("a.yaml:3:12: table `pgtide.webhooks` is in schema `pgtide`"),
        "{stdout}"
    );
    let run = run_pgtide(&args(&db, dir.path(), &[])).await?;
    assert!(!run.status.success());
    let stderr = String::from_utf8(run.stderr)?;
    assert!(
        stderr.contains("a.yaml:3:12: table `pgtide.webhooks`"),
        "{stderr}"
    );
    db.cleanup().await;
    Ok(())
}

/// Finding 2: an API mapping belongs to its creator's org. Org 2 neither
/// sees org 1's mapping in `GET /v1/mappings` nor deletes it (404, as for a
/// mapping that does not exist); org 1 and admins see it; org 1 deletes it.
#[tokio::test]
async fn mappings_are_scoped_to_their_org() -> anyhow::Result<()> {
    let (db, client, dir) = setup().await?;
    let t = tokens().await?;
    std::fs::write(
        dir.path().join("a.yaml"),
        "mappings:\n  - name: file-plain\n    table: plain\n    topic: plain.rows\n",
    )?;
    let pgtide = Pgtide::start(&args(
        &db,
        dir.path(),
        &["--api-mapping-tables", "public.notes"],
    ))
    .await?;
    let (status, created) = create(
        &pgtide,
        &t.op1,
        &json!({"name": "notes-1", "table": "notes", "topic": "notes.one"}),
    )
    .await?;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["owner_org_id"], 1);
    let (status, created) = create(
        &pgtide,
        &t.op2,
        &json!({"name": "notes-2", "table": "public.notes", "topic": "notes.two"}),
    )
    .await?;
    assert_eq!(status, 201, "{created}");

    assert_eq!(
        names(&get(&pgtide, &t.op2, "/v1/mappings").await?),
        ["file-plain", "notes-2"]
    );
    assert_eq!(
        names(&get(&pgtide, &t.read2, "/v1/mappings").await?),
        ["file-plain", "notes-2"]
    );
    let org1 = get(&pgtide, &t.read1, "/v1/mappings").await?;
    assert_eq!(names(&org1), ["file-plain", "notes-1"]);
    assert_eq!(org1["mappings"][1]["owner_org_id"], 1);
    assert_eq!(
        names(&get(&pgtide, &t.admin, "/v1/mappings").await?),
        ["file-plain", "notes-1", "notes-2"]
    );

    let (status, err) = delete(&pgtide, &t.op2, "notes-1").await?;
    assert_eq!(status, 404, "{err}");
    assert_error(&err, "not_found");
    let (_, missing) = delete(&pgtide, &t.op2, "no-such-mapping").await?;
    assert_eq!(
        err["error"]["message"]
            .as_str()
            .map(|m| m.replace("notes-1", "X")),
        missing["error"]["message"]
            .as_str()
            .map(|m| m.replace("no-such-mapping", "X")),
        "another org's mapping answers as a missing one"
    );
    let (status, err) = delete(&pgtide, &t.read1, "notes-1").await?;
    assert_eq!(status, 403, "{err}");
    assert_eq!(
        stored_mappings(&client).await?,
        ["notes-1", "notes-2"],
        "nothing deleted"
    );
    let (status, _) = delete(&pgtide, &t.op1, "notes-1").await?;
    assert_eq!(status, 204);
    let (status, _) = delete(&pgtide, &t.admin, "notes-2").await?;
    assert_eq!(status, 204);
    assert!(stored_mappings(&client).await?.is_empty());
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// Finding 2: an operator's mapping on an `--api-mapping-tables` table emits
/// every event with the operator's org, even when it asks for another org
/// (its `org` is replaced, and the reply says so): org 1's reader never sees
/// them, org 2's sees all of them.
#[tokio::test]
async fn operator_mapping_emits_its_own_org() -> anyhow::Result<()> {
    let (db, client, dir) = setup().await?;
    let t = tokens().await?;
    let pgtide = Pgtide::start(&args(
        &db,
        dir.path(),
        &["--api-mapping-tables", "public.plain,public.notes"],
    ))
    .await?;
    let (status, created) = create(
        &pgtide,
        &t.op2,
        &json!({"name": "notes-as-1", "table": "notes", "topic": "notes.rows", "org": "1"}),
    )
    .await?;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["owner_org_id"], 2);
    assert!(
        created["notices"][0]
            .as_str()
            .is_some_and(|n| n.contains("replaced by 2")),
        "{created}"
    );
    let (status, created) = create(
        &pgtide,
        &t.op2,
        &json!({"name": "notes-by-row", "table": "notes", "topic": "notes.by_row", "org": "new.org_id"}),
    )
    .await?;
    assert_eq!(status, 201, "{created}");

    let mut tail = Tail::open(&pgtide, &t.admin, "**").await?;
    let mut tail1 = Tail::open(&pgtide, &t.read1, "**").await?;
    client
        .batch_execute("INSERT INTO notes VALUES (1, 1, 'one'), (2, 2, 'two')")
        .await?;
    marker(&client, "test.done").await?;
    let events = tail.until("test.done").await?;
    assert_eq!(
        topics_of(&events),
        [
            ("notes.rows".into(), json!(2)),
            ("notes.by_row".into(), json!(2)),
            ("notes.rows".into(), json!(2)),
            ("notes.by_row".into(), json!(2)),
        ]
    );
    assert!(
        tail1.until("test.done").await?.is_empty(),
        "org 1 receives none"
    );
    let org1 = get(&pgtide, &t.read1, "/v1/events?topics=notes.**").await?;
    assert_eq!(org1["events"], json!([]), "{org1}");
    let org2 = get(&pgtide, &t.read2, "/v1/events?topics=notes.**").await?;
    assert_eq!(org2["events"].as_array().map(Vec::len), Some(4), "{org2}");
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// Finding 3: stored mappings that can no longer apply — one whose table
/// was dropped, one on `pg_catalog.pg_authid` written straight into the
/// store — do not stop a restart: pgtide comes up, lists each in `GET
/// /v1/mappings` errors and `/readyz`, runs the other mappings, and takes
/// new mappings and deletes.
#[tokio::test]
async fn unappliable_stored_mappings_do_not_stop_a_restart() -> anyhow::Result<()> {
    let (db, client, dir) = setup().await?;
    let t = tokens().await?;
    client
        .batch_execute("CREATE TABLE doomed (id int PRIMARY KEY)")
        .await?;
    let pgtide = Pgtide::start(&args(&db, dir.path(), &[])).await?;
    for body in [
        json!({"name": "doomed", "table": "doomed", "topic": "doomed.rows"}),
        json!({"name": "plain", "table": "plain", "topic": "plain.rows"}),
    ] {
        let (status, created) = create(&pgtide, &t.admin, &body).await?;
        assert_eq!(status, 201, "{created}");
    }
    pgtide.stop().await?;
    client.batch_execute("DROP TABLE doomed").await?;
    client
        .execute(
            "INSERT INTO pgtide.mappings (name, owner, definition, source, org_id)
             VALUES ('authid', 'api', '{}', $1, 1)",
            &[&json!({"mappings": [{"name": "authid", "table": "pg_catalog.pg_authid", "topic": "x.y"}]}).to_string()],
        )
        .await?;

    let pgtide = Pgtide::start(&args(&db, dir.path(), &[])).await?;
    let view = get(&pgtide, &t.admin, "/v1/mappings").await?;
    assert_eq!(names(&view), ["plain"], "{view}");
    let errors = view["errors"].as_array().cloned().unwrap_or_default();
    let files: Vec<&str> = errors.iter().filter_map(|e| e["file"].as_str()).collect();
    assert_eq!(files, ["api:authid", "api:doomed"], "{view}");
    assert!(
        errors
            .iter()
            .all(|e| e["message"].as_str().is_some_and(|m| m.contains("skipped"))),
        "{view}"
    );
    let ready = pgtide.http().get(pgtide.url("/readyz")).send().await?;
    assert_eq!(ready.status().as_u16(), 200);
    let ready: Value = ready.json().await?;
    assert_eq!(
        ready["mappings"]["errors"].as_array().map(Vec::len),
        Some(2)
    );
    // Org 2 sees neither org 1's broken mapping nor its error.
    let org2 = get(&pgtide, &t.read2, "/v1/mappings").await?;
    assert!(
        org2["errors"]
            .as_array()
            .is_some_and(|e| e.iter().all(|e| e["file"] != "api:authid")),
        "{org2}"
    );

    let mut tail = Tail::open(&pgtide, &t.admin, "**").await?;
    client
        .batch_execute("INSERT INTO plain VALUES (1, 'x')")
        .await?;
    marker(&client, "test.done").await?;
    let events = tail.until("test.done").await?;
    assert_eq!(topics_of(&events), [("plain.rows".into(), Value::Null)]);

    client
        .batch_execute("CREATE TABLE fresh (id int PRIMARY KEY)")
        .await?;
    let (status, created) = create(
        &pgtide,
        &t.admin,
        &json!({"name": "fresh", "table": "fresh", "topic": "fresh.rows"}),
    )
    .await?;
    assert_eq!(status, 201, "writes still work: {created}");
    let (status, _) = delete(&pgtide, &t.admin, "authid").await?;
    assert_eq!(status, 204);
    let view = get(&pgtide, &t.admin, "/v1/mappings").await?;
    assert_eq!(names(&view), ["fresh", "plain"]);
    assert_eq!(view["errors"].as_array().map(Vec::len), Some(1), "{view}");
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// Finding 14: with `--capture-org-column org_id`, a captured table's
/// default-topic events carry the row's org, so org 2's subscriber and
/// reader get only org 2's rows (a table without the column stays org-less).
#[tokio::test]
async fn capture_org_column_scopes_default_topics() -> anyhow::Result<()> {
    let (db, client, dir) = setup().await?;
    let t = tokens().await?;
    let pgtide = Pgtide::start(&args(
        &db,
        dir.path(),
        &[
            "--capture",
            "public.orders,public.plain",
            "--capture-org-column",
            "org_id",
        ],
    ))
    .await?;
    let mut tail2 = Tail::open(&pgtide, &t.read2, "**").await?;
    let mut tail = Tail::open(&pgtide, &t.admin, "**").await?;
    client
        .batch_execute(
            "INSERT INTO orders VALUES (1, 1, 100), (2, 2, 200);
             UPDATE orders SET total = 101 WHERE id = 1;
             INSERT INTO plain VALUES (1, 'x');",
        )
        .await?;
    marker(&client, "test.done").await?;
    let all = tail.until("test.done").await?;
    assert_eq!(
        topics_of(&all),
        [
            ("tables.orders.insert".into(), json!(1)),
            ("tables.orders.insert".into(), json!(2)),
            ("tables.orders.update".into(), json!(1)),
            ("tables.plain.insert".into(), Value::Null),
        ]
    );
    let seen2 = tail2.until("test.done").await?;
    assert_eq!(
        topics_of(&seen2),
        [
            ("tables.orders.insert".into(), json!(2)),
            ("tables.plain.insert".into(), Value::Null),
        ]
    );
    assert_eq!(seen2[0]["data"]["total"], 200);
    let read2 = get(&pgtide, &t.read2, "/v1/events?topics=tables.orders.*").await?;
    let ids: Vec<&Value> = read2["events"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| &e["data"]["id"])
        .collect();
    assert_eq!(ids, [&json!(2)], "{read2}");
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// Finding 14: on a server with tokens (not `--insecure-no-auth`), pgtide
/// warns at start-up about captured tables whose default-topic events will
/// have no org: without `--capture-org-column` all of them; with it, those
/// lacking the column.
#[tokio::test]
async fn warns_about_captured_tables_without_an_org() -> anyhow::Result<()> {
    let (db, _client, dir) = setup().await?;
    for (extra, expected, unexpected) in [
        (
            vec!["--capture", "public.orders"],
            "--capture-org-column is not set",
            "",
        ),
        (
            vec![
                "--capture",
                "public.orders,public.plain",
                "--capture-org-column",
                "org_id",
            ],
            "have no column \"org_id\"",
            "public.orders",
        ),
    ] {
        let line = startup_warning(&args(&db, dir.path(), &extra)).await?;
        assert!(line.contains(expected), "{line}");
        assert!(line.contains("org_id null"), "{line}");
        if !unexpected.is_empty() {
            assert!(line.contains("public.plain"), "{line}");
            assert!(!line.contains(unexpected), "{line}");
        }
    }
    db.cleanup().await;
    Ok(())
}

/// Starts pgtide with its log piped and returns the first line warning
/// about captured tables, read until the start-up's `capturing` line.
async fn startup_warning(args: &[String]) -> anyhow::Result<String> {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgtide"))
        .args(args)
        .env("PGTIDE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stderr = child.stderr.take().context("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let found = tokio::time::timeout(WAIT, async {
        let mut warning = None;
        while let Some(line) = lines.next_line().await? {
            if line.contains("WARN") && line.contains("captured tables") && warning.is_none() {
                warning = Some(line.clone());
            }
            if line.contains("capturing") {
                return Ok::<_, anyhow::Error>(warning);
            }
        }
        bail!("pgtide exited before capturing")
    })
    .await
    .context("pgtide did not start in time")??;
    let _ = child.start_kill();
    let _ = child.wait().await;
    found.context("no warning about captured tables")
}

/// Finding 12 through mappings: an operator's mapping on an
/// `--api-mapping-tables` table publishes in the operator's name, so it
/// follows the publish rules. A topic or template that is or could become
/// one of pgtide's own (`meta.ws`, `tables.notes.insert`, a template
/// starting with a hole or with `ta…`) and an explicit reserved
/// `event_type` (`row.inserted`, `schema.changed`) are 403
/// `reserved_topic`; with a `publish` claim, a topic (or every topic a
/// template can render) outside it is 403 `forbidden`. None of them is
/// stored. Mappings within the rules, the operation's default `row.*` type
/// included, are created, and an admin may still map to `tables.*` with
/// `row.*` types.
#[tokio::test]
async fn operator_mappings_follow_the_publish_rules() -> anyhow::Result<()> {
    let (db, client, dir) = setup().await?;
    let t = tokens().await?;
    let narrow = token(&[
        "--sub",
        "n2",
        "--org",
        "2",
        "--role",
        "operator",
        "--publish",
        "orgdata.op2.**",
    ])
    .await?;
    let pgtide = Pgtide::start(&args(
        &db,
        dir.path(),
        &["--api-mapping-tables", "public.notes"],
    ))
    .await?;
    let mapping = |name: &str, topic: &str, event_type: Option<&str>| {
        let mut m = json!({"name": name, "table": "notes", "topic": topic});
        if let Some(t) = event_type {
            m["event_type"] = json!(t);
        }
        m
    };

    for (who, body) in [
        (&t.op2, mapping("r1", "meta.ws", None)),
        (&t.op2, mapping("r2", "tables.notes.insert", None)),
        (
            &t.op2,
            mapping("r3", "tables/notes/insert", Some("custom.x")),
        ),
        (&t.op2, mapping("r4", "system.{{ new.body }}", None)),
        (&t.op2, mapping("r5", "{{ new.body }}.insert", None)),
        (&t.op2, mapping("r6", "ta{{ new.body }}.notes", None)),
        (&t.op2, mapping("r7", "notes.copy", Some("row.inserted"))),
        (&t.op2, mapping("r8", "notes.copy", Some("schema/changed"))),
        (
            &narrow,
            mapping("r9", "orgdata.op2.x", Some("table.truncated")),
        ),
    ] {
        let (status, err) = create(&pgtide, who, &body).await?;
        assert_eq!(status, 403, "{body}: {err}");
        assert_error(&err, "reserved_topic");
        assert!(
            err["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("reserved")),
            "{err}"
        );
    }
    for body in [
        mapping("f1", "notes.rows", None),
        mapping("f2", "orgdata.op1.rows", Some("note.added")),
        mapping("f3", "orgdata.{{ new.body }}.rows", None),
    ] {
        let (status, err) = create(&pgtide, &narrow, &body).await?;
        assert_eq!(status, 403, "{body}: {err}");
        assert_error(&err, "forbidden");
        assert!(
            err["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("orgdata.op2.**") && m.contains("publish")),
            "{err}"
        );
    }
    assert!(
        stored_mappings(&client).await?.is_empty(),
        "nothing refused is stored"
    );

    for (who, body) in [
        (
            &narrow,
            mapping("ok1", "orgdata.op2.notes", Some("note.added")),
        ),
        // Every topic it can render, orgdata.op2.*.x, is within the claim.
        (
            &narrow,
            mapping("ok5", "orgdata.op2.{{ new.body }}.x", None),
        ),
        (&t.op2, mapping("ok2", "notes.rows", None)),
        (
            &t.op2,
            mapping("ok3", "n{{ new.body }}.rows", Some("note.added")),
        ),
        (
            &t.admin,
            mapping("ok4", "tables.notes.copy", Some("row.inserted")),
        ),
    ] {
        let (status, created) = create(&pgtide, who, &body).await?;
        assert_eq!(status, 201, "{body}: {created}");
    }
    let mut tail = Tail::open(&pgtide, &t.admin, "**").await?;
    client
        .batch_execute("INSERT INTO notes VALUES (1, 2, 'hello')")
        .await?;
    marker(&client, "test.done").await?;
    let mut seen: Vec<(String, String)> = tail
        .until("test.done")
        .await?
        .iter()
        .map(|e| {
            (
                e["topic"].as_str().unwrap_or("").to_owned(),
                e["type"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("nhello.rows".to_owned(), "note.added".to_owned()),
            ("notes.rows".into(), "row.inserted".into()),
            ("orgdata.op2.hello.x".into(), "row.inserted".into()),
            ("orgdata.op2.notes".into(), "note.added".into()),
            ("tables.notes.copy".into(), "row.inserted".into()),
        ]
    );
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}
