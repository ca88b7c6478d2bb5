//! The security findings of the API, reproduced from outside as an attacker
//! would: the real `pgtide` binary with `--jwt-secret`, tokens minted by
//! `pgtide token` for two orgs, real HTTP, a real WebSocket, real SQL.

use std::time::Instant;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_postgres::error::SqlState;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::harness::{Pgtide, Server, TestDb, WAIT, run_pgtide};

const SECRET: &str = "security-secret-0123456789abcdef";

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A token from `pgtide token` for `SECRET`.
async fn token(args: &[&str]) -> anyhow::Result<String> {
    let mut all: Vec<String> = vec!["token".into(), "--jwt-secret".into(), SECRET.into()];
    all.extend(args.iter().map(|s| (*s).to_owned()));
    let out = run_pgtide(&all).await?;
    if !out.status.success() {
        bail!("pgtide token failed: {out:?}");
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// The three callers of most tests: an operator of org 1, one of org 2, an admin.
struct Tokens {
    op1: String,
    op2: String,
    admin: String,
}

async fn tokens() -> anyhow::Result<Tokens> {
    Ok(Tokens {
        op1: token(&["--sub", "op1", "--org", "1", "--role", "operator"]).await?,
        op2: token(&["--sub", "op2", "--org", "2", "--role", "operator"]).await?,
        admin: token(&["--sub", "root", "--role", "admin"]).await?,
    })
}

/// `pgtide run` with JWT auth and `extra` arguments.
async fn start(db: &TestDb, extra: &[&str]) -> anyhow::Result<Pgtide> {
    let mut args = db.run_args();
    args.retain(|a| a != "--insecure-no-auth");
    args.extend(["--jwt-secret".into(), SECRET.into()]);
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    Pgtide::start(&args).await
}

/// One request with a JSON body given as text (so it can hold what
/// `json!` cannot, like `1e999999`); the status and the JSON answer.
async fn call_text(
    pgtide: &Pgtide,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&str>,
) -> anyhow::Result<(u16, Value)> {
    let url = pgtide.url(path);
    let http = pgtide.http();
    let req = match method {
        "POST" => http.post(url),
        "PATCH" => http.patch(url),
        "DELETE" => http.delete(url),
        _ => http.get(url),
    }
    .bearer_auth(token);
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(b.to_owned()),
        None => req,
    };
    let r = req.send().await?;
    let status = r.status().as_u16();
    let text = r.text().await?;
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).with_context(|| format!("{status}: {text}"))?
    };
    Ok((status, value))
}

async fn call(
    pgtide: &Pgtide,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> anyhow::Result<(u16, Value)> {
    let text = body.map(|b| b.to_string());
    call_text(pgtide, method, path, token, text.as_deref()).await
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or("")
}

/// The events of `topics` (patterns, comma-separated) an admin reads.
async fn events(pgtide: &Pgtide, admin: &str, topics: &str) -> anyhow::Result<Vec<Value>> {
    let (s, page) = call(
        pgtide,
        "GET",
        &format!("/v1/events?topics={topics}&limit=1000"),
        admin,
        None,
    )
    .await?;
    if s != 200 {
        bail!("GET /v1/events?topics={topics} -> {s}: {page}");
    }
    Ok(page["events"].as_array().cloned().unwrap_or_default())
}

/// Waits (bounded by [`WAIT`]) until an event of `topic` is stored.
async fn wait_for(pgtide: &Pgtide, admin: &str, topic: &str) -> anyhow::Result<Vec<Value>> {
    let deadline = Instant::now() + WAIT;
    loop {
        let found = events(pgtide, admin, topic).await?;
        if !found.is_empty() {
            return Ok(found);
        }
        if Instant::now() > deadline {
            bail!("no event on {topic} within {WAIT:?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn ws_connect(pgtide: &Pgtide, token: &str) -> anyhow::Result<Ws> {
    let url = pgtide
        .url(&format!("/ws?token={token}"))
        .replacen("http://", "ws://", 1);
    let (ws, _) = tokio_tungstenite::connect_async(url).await?;
    Ok(ws)
}

/// Sends one text frame and returns the reply (the first frame with a
/// `status`), bounded by [`WAIT`].
async fn ws_request(ws: &mut Ws, frame: &str) -> anyhow::Result<Value> {
    ws.send(Message::Text(frame.to_owned().into())).await?;
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .context("no reply in time")?;
        match msg {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str())?;
                if v.get("status").is_some() {
                    return Ok(v);
                }
            }
            Some(Ok(Message::Close(frame))) => bail!("closed: {frame:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => bail!("read error: {e}"),
            None => bail!("connection ended"),
        }
    }
}

/// Finding 7: a topic belongs to the org that created it. Org 2's operator
/// can read org 1's topic but not change its compatibility, register a
/// schema on it or delete it (403); org 1 and admins can. A topic an admin
/// created without `org_id` has no owner org and only admins may change it;
/// only admins may give a topic to an org. A non-admin's compatibility
/// check runs over the stored events it may read only, so org 1's data
/// never appears in org 2's error, not even as a count.
#[tokio::test]
async fn topics_belong_to_the_org_that_created_them() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let pgtide = start(&db, &[]).await?;
    let t = tokens().await?;
    let number_schema =
        json!({"schema": {"type": "object", "properties": {"v": {"type": "number"}}}});

    let (s, topic) = call(
        &pgtide,
        "POST",
        "/v1/topics",
        &t.op1,
        Some(json!({"name": "orgdata.op1"})),
    )
    .await?;
    assert_eq!(s, 201, "{topic}");
    assert_eq!(topic["org_id"], 1, "{topic}");
    let (s, _) = call(
        &pgtide,
        "POST",
        "/v1/events",
        &t.op1,
        Some(json!({"event_type": "orgdata.op1", "data": {"v": "org1 cdc secret"}})),
    )
    .await?;
    assert_eq!(s, 200);

    // Org 2 reads the definition, but every write is refused.
    let (s, _) = call(&pgtide, "GET", "/v1/topics/orgdata.op1", &t.op2, None).await?;
    assert_eq!(s, 200);
    for (method, path, body) in [
        (
            "PATCH",
            "/v1/topics/orgdata.op1",
            Some(json!({"compatibility": "none"})),
        ),
        (
            "POST",
            "/v1/topics/orgdata.op1/schemas",
            Some(number_schema.clone()),
        ),
        ("DELETE", "/v1/topics/orgdata.op1", None),
    ] {
        let (s, body) = call(&pgtide, method, path, &t.op2, body).await?;
        assert_eq!(s, 403, "{method} {path}: {body}");
        assert_eq!(code(&body), "forbidden", "{body}");
        assert!(message(&body).contains("another org"), "{body}");
        assert!(!body.to_string().contains("org1 cdc secret"), "{body}");
    }
    let (_, topic) = call(&pgtide, "GET", "/v1/topics/orgdata.op1", &t.admin, None).await?;
    assert_eq!(topic["compatibility"], "backward", "{topic}");
    assert_eq!(topic["active_schema_version"], 0, "{topic}");
    // So org 1's publishes still pass.
    let (s, _) = call(
        &pgtide,
        "POST",
        "/v1/events",
        &t.op1,
        Some(json!({"event_type": "orgdata.op1", "data": {"v": "still text"}})),
    )
    .await?;
    assert_eq!(s, 200);
    // The owner and admins may change it.
    let (s, _) = call(
        &pgtide,
        "PATCH",
        "/v1/topics/orgdata.op1",
        &t.op1,
        Some(json!({"description": "mine"})),
    )
    .await?;
    assert_eq!(s, 200);
    let (s, _) = call(
        &pgtide,
        "PATCH",
        "/v1/topics/orgdata.op1",
        &t.admin,
        Some(json!({"description": "checked"})),
    )
    .await?;
    assert_eq!(s, 200);

    // No owner org: admins only. Giving a topic to an org: admins only.
    let (s, topic) = call(
        &pgtide,
        "POST",
        "/v1/topics",
        &t.admin,
        Some(json!({"name": "shared.admin"})),
    )
    .await?;
    assert_eq!((s, &topic["org_id"]), (201, &Value::Null), "{topic}");
    let (s, body) = call(
        &pgtide,
        "PATCH",
        "/v1/topics/shared.admin",
        &t.op1,
        Some(json!({"compatibility": "none"})),
    )
    .await?;
    assert_eq!(s, 403, "{body}");
    assert!(message(&body).contains("no owner org"), "{body}");
    let (s, body) = call(
        &pgtide,
        "POST",
        "/v1/topics",
        &t.op1,
        Some(json!({"name": "given.away", "org_id": 2})),
    )
    .await?;
    assert_eq!(s, 403, "{body}");
    let (s, topic) = call(
        &pgtide,
        "POST",
        "/v1/topics",
        &t.admin,
        Some(json!({"name": "given.to2", "org_id": 2})),
    )
    .await?;
    assert_eq!((s, &topic["org_id"]), (201, &json!(2)), "{topic}");
    let (s, _) = call(
        &pgtide,
        "PATCH",
        "/v1/topics/given.to2",
        &t.op2,
        Some(json!({"description": "ours"})),
    )
    .await?;
    assert_eq!(s, 200);

    // Org 2 owns a topic org 1 also publishes to: its compatibility error
    // quotes its own event and says nothing of org 1's.
    let (s, _) = call(
        &pgtide,
        "POST",
        "/v1/topics",
        &t.op2,
        Some(json!({"name": "shared.mixed"})),
    )
    .await?;
    assert_eq!(s, 201);
    let (_, theirs) = call(
        &pgtide,
        "POST",
        "/v1/events",
        &t.op1,
        Some(json!({"event_type": "shared.mixed", "data": {"v": "org1 cdc secret"}})),
    )
    .await?;
    let (_, ours) = call(
        &pgtide,
        "POST",
        "/v1/events",
        &t.op2,
        Some(json!({"event_type": "shared.mixed", "data": {"v": "org2 text"}})),
    )
    .await?;
    let (theirs, ours) = (
        theirs["seq"].as_i64().context("seq")?,
        ours["seq"].as_i64().context("seq")?,
    );
    let (s, refused) = call(
        &pgtide,
        "POST",
        "/v1/topics/shared.mixed/schemas",
        &t.op2,
        Some(number_schema.clone()),
    )
    .await?;
    assert_eq!(s, 409, "{refused}");
    assert_eq!(code(&refused), "incompatible");
    let text = refused["error"]["details"].to_string();
    assert!(
        text.contains(&format!("rejects stored event seq {ours}:")),
        "{refused}"
    );
    assert!(!text.contains("org1 cdc secret"), "{refused}");
    assert!(!text.contains(&format!("seq {theirs}")), "{refused}");
    // Org 1's event is not checked at all, so not counted either.
    assert!(!text.contains("cannot read"), "{refused}");
    assert!(!text.contains("in all"), "{refused}");
    // An admin may read both, so both are quoted.
    let (s, refused) = call(
        &pgtide,
        "POST",
        "/v1/topics/shared.mixed/schemas",
        &t.admin,
        Some(number_schema),
    )
    .await?;
    assert_eq!(s, 409, "{refused}");
    let text = refused["error"]["details"].to_string();
    assert!(
        text.contains(&format!("seq {theirs}:")) && text.contains(&format!("seq {ours}:")),
        "{refused}"
    );

    let (s, _) = call(&pgtide, "DELETE", "/v1/topics/orgdata.op1", &t.op1, None).await?;
    assert_eq!(s, 204);
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// Finding 8: HTTP reads follow the token's `subscribe` claim exactly as
/// `/ws` subscriptions do. A token limited to `orgdata.op2.**` cannot read
/// the (org-less, so otherwise visible) CDC events of `tables.docs.insert`
/// through `GET /v1/events` or `/v1/events/replay`: a read without
/// `topics`, or with any pattern the claim does not cover, is 403 naming the
/// patterns it may read, never silently narrowed; covered reads pass; and a
/// replay from the id of an event it may not read is 404.
#[tokio::test]
async fn http_reads_follow_the_subscribe_claim() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    db.client()
        .await?
        .batch_execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
        .await?;
    let pgtide = start(&db, &["--capture", "docs"]).await?;
    let t = tokens().await?;
    let narrow = token(&[
        "--sub",
        "n",
        "--org",
        "2",
        "--role",
        "operator",
        "--subscribe",
        "orgdata.op2.**",
    ])
    .await?;
    db.client()
        .await?
        .batch_execute("INSERT INTO docs VALUES (1, 'a document')")
        .await?;
    let cdc = wait_for(&pgtide, &t.admin, "tables.docs.insert").await?;
    let cdc_id = cdc[0]["id"].as_str().context("id")?.to_owned();
    let (s, _) = call(
        &pgtide,
        "POST",
        "/v1/events",
        &narrow,
        Some(json!({"event_type": "orgdata.op2.a", "data": {"n": 1}})),
    )
    .await?;
    assert_eq!(s, 200);

    // Without the claim, org 2 reads the org-less CDC event.
    let (s, page) = call(
        &pgtide,
        "GET",
        "/v1/events?topics=tables.docs.insert",
        &t.op2,
        None,
    )
    .await?;
    assert_eq!(
        (s, page["events"].as_array().map(Vec::len)),
        (200, Some(1)),
        "{page}"
    );

    for query in [
        "",
        "?after_seq=0",
        "?topics=tables.docs.insert",
        "?topics=**",
        "?topics=orgdata.op2.**,tables.docs.*",
        "?topics=orgdata.*.a",
    ] {
        let (s, body) = call(&pgtide, "GET", &format!("/v1/events{query}"), &narrow, None).await?;
        assert_eq!(s, 403, "{query}: {body}");
        assert_eq!(code(&body), "forbidden", "{body}");
        assert!(message(&body).contains("orgdata.op2.**"), "{query}: {body}");
        assert!(!body.to_string().contains("a document"), "{body}");
    }
    for query in [
        "?topics=orgdata.op2.**",
        "?topics=orgdata.op2.a",
        "?topics=orgdata/op2/*",
    ] {
        let (s, page) = call(&pgtide, "GET", &format!("/v1/events{query}"), &narrow, None).await?;
        assert_eq!(s, 200, "{query}: {page}");
        let topics: Vec<&str> = page["events"]
            .as_array()
            .context("events")?
            .iter()
            .filter_map(|e| e["topic"].as_str())
            .collect();
        assert_eq!(topics, ["orgdata.op2.a"], "{query}");
    }

    for body in [
        json!({}),
        json!({"from_seq": 0}),
        json!({"topics": ["tables.docs.insert"], "from_seq": 0}),
        json!({"topics": ["**"]}),
    ] {
        let (s, answer) = call(
            &pgtide,
            "POST",
            "/v1/events/replay",
            &narrow,
            Some(body.clone()),
        )
        .await?;
        assert_eq!(s, 403, "{body}: {answer}");
        assert!(message(&answer).contains("orgdata.op2.**"), "{answer}");
    }
    let (s, page) = call(
        &pgtide,
        "POST",
        "/v1/events/replay",
        &narrow,
        Some(json!({"topics": ["orgdata.op2.**"], "from_seq": 0})),
    )
    .await?;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["events"].as_array().map(Vec::len), Some(1), "{page}");
    let (s, answer) = call(
        &pgtide,
        "POST",
        "/v1/events/replay",
        &narrow,
        Some(json!({"topics": ["orgdata.op2.**"], "from_event_id": cdc_id})),
    )
    .await?;
    assert_eq!(s, 404, "{answer}");

    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// Finding 10: a NUL character (`\u0000`) anywhere PostgreSQL would store it
/// (a string or key of `data`, an attribute, `correlation_id`) and numbers
/// outside what `numeric`/jsonb holds (`1e999999`; the bounds are exactly
/// PostgreSQL's: `9e131071` and `1e-16383` pass, `1e131072` and `1e-16384`
/// do not) are the client's error: 400 over HTTP and `invalid_message` over
/// `/ws`, naming the JSON pointer and why, never 503 / `internal`. The
/// connection stays usable, nothing bad is stored, the store stays ready.
#[tokio::test]
async fn unstorable_values_are_the_clients_error() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let pgtide = start(&db, &[]).await?;
    let t = tokens().await?;

    for (body, pointer, why) in [
        (
            r#"{"event_type":"custom.nul","data":{"a":{"b":["x","a\u0000b"]}}}"#,
            "/data/a/b/1",
            "NUL",
        ),
        (
            r#"{"event_type":"custom.nul","data":{"k\u0000":1}}"#,
            "/data/k\u{0}",
            "NUL",
        ),
        (
            r#"{"event_type":"custom.nul","data":{},"attributes":{"region":"eu\u0000"}}"#,
            "/attributes/region",
            "NUL",
        ),
        (
            r#"{"event_type":"custom.nul","data":{},"correlation_id":"c\u0000"}"#,
            "/correlation_id",
            "NUL",
        ),
        (
            r#"{"event_type":"custom.big","data":{"n":1e999999}}"#,
            "/data/n",
            "numeric",
        ),
        (
            r#"{"event_type":"custom.big","data":[1e-16384]}"#,
            "/data/0",
            "numeric",
        ),
        (
            r#"{"event_type":"custom.big","data":1e131072}"#,
            "/data",
            "numeric",
        ),
    ] {
        let (s, answer) = call_text(&pgtide, "POST", "/v1/events", &t.op1, Some(body)).await?;
        assert_eq!(s, 400, "{body}: {answer}");
        assert_eq!(code(&answer), "bad_request", "{answer}");
        assert_eq!(
            answer["error"]["details"][0]["pointer"], pointer,
            "{answer}"
        );
        assert!(message(&answer).contains(why), "{answer}");
        assert!(message(&answer).contains("PostgreSQL"), "{answer}");
    }
    let (s, answer) = call_text(
        &pgtide,
        "POST",
        "/v1/events",
        &t.op1,
        Some(r#"{"event_type":"custom.edge","data":{"max":9e131071,"min":1e-16383}}"#),
    )
    .await?;
    assert_eq!(
        s, 200,
        "the largest and smallest storable numbers pass: {answer}"
    );

    let mut ws = ws_connect(&pgtide, &t.op1).await?;
    for (frame, pointer) in [
        (
            r#"{"type":"publish","id":1,"topic":"custom.nul","data":{"s":"a\u0000b"}}"#,
            "/data/s",
        ),
        (
            r#"{"type":"publish","id":2,"topic":"custom.nul","data":{"\u0000":true}}"#,
            "/data/\u{0}",
        ),
        (
            r#"{"type":"publish","id":3,"topic":"custom.nul","data":{},"attributes":{"k":"\u0000"}}"#,
            "/attributes/k",
        ),
        (
            r#"{"type":"publish","id":4,"topic":"custom.big","data":{"n":1e999999}}"#,
            "/data/n",
        ),
    ] {
        let reply = ws_request(&mut ws, frame).await?;
        assert_eq!(reply["status"], "error", "{frame}: {reply}");
        assert_eq!(reply["error"]["code"], "invalid_message", "{reply}");
        let text = reply["error"]["message"].as_str().unwrap_or("");
        assert!(
            text.starts_with(&format!("{pointer} cannot be stored")),
            "{reply}"
        );
        assert!(text.contains("PostgreSQL"), "{reply}");
    }
    let reply = ws_request(&mut ws, r#"{"type":"ping","id":5}"#).await?;
    assert_eq!(reply["status"], "success", "{reply}");
    let reply = ws_request(
        &mut ws,
        r#"{"type":"publish","id":6,"topic":"custom.ok","data":{"n":1e3}}"#,
    )
    .await?;
    assert_eq!(reply["status"], "success", "{reply}");

    let stored: Vec<String> = events(&pgtide, &t.admin, "custom.**")
        .await?
        .iter()
        .filter_map(|e| e["topic"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(stored, ["custom.edge", "custom.ok"]);
    let ready = pgtide.http().get(pgtide.url("/readyz")).send().await?;
    assert_eq!(ready.status().as_u16(), 200);
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// Finding 11: a replay from the id of another org's event is answered
/// exactly like one from an unknown id (404, same code, same message but
/// for the id), so event ids of other orgs cannot be probed. The event's own
/// org, and anyone for an org-less event, still replay from it.
#[tokio::test]
async fn replay_does_not_reveal_other_orgs_event_ids() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let pgtide = start(&db, &[]).await?;
    let t = tokens().await?;
    let (_, org1) = call(
        &pgtide,
        "POST",
        "/v1/events",
        &t.op1,
        Some(json!({"event_type": "custom.a", "data": 1})),
    )
    .await?;
    let (_, no_org) = call(
        &pgtide,
        "POST",
        "/v1/events",
        &t.admin,
        Some(json!({"event_type": "custom.b", "data": 2})),
    )
    .await?;
    let org1 = org1["event_id"].as_str().context("event_id")?.to_owned();
    let no_org = no_org["event_id"].as_str().context("event_id")?.to_owned();
    let unknown = ulid::Ulid::new().to_string();

    let (s1, foreign) = call(
        &pgtide,
        "POST",
        "/v1/events/replay",
        &t.op2,
        Some(json!({"from_event_id": org1})),
    )
    .await?;
    let (s2, missing) = call(
        &pgtide,
        "POST",
        "/v1/events/replay",
        &t.op2,
        Some(json!({"from_event_id": unknown})),
    )
    .await?;
    assert_eq!((s1, s2), (404, 404), "{foreign} / {missing}");
    assert_eq!(foreign["error"]["code"], missing["error"]["code"]);
    assert_eq!(
        message(&foreign).replace(&org1, "ID"),
        message(&missing).replace(&unknown, "ID")
    );
    assert_eq!(foreign["error"]["details"], missing["error"]["details"]);

    let (s, page) = call(
        &pgtide,
        "POST",
        "/v1/events/replay",
        &t.op1,
        Some(json!({"from_event_id": org1})),
    )
    .await?;
    assert_eq!(s, 200, "{page}");
    let (s, page) = call(
        &pgtide,
        "POST",
        "/v1/events/replay",
        &t.op2,
        Some(json!({"from_event_id": no_org})),
    )
    .await?;
    assert_eq!(s, 200, "{page}");
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// Finding 12: nobody, admins included, forges pgtide's own events. Publishes
/// to `meta.`, `system.`, `connections.`, `tables.`, `presence.` and `sync.`
/// topics and of `row.*`/`table.*`/`schema.*` types are 403 `reserved_topic`
/// over HTTP and `reserved_topic` over `/ws`; SQL `pgtide.publish()` raises
/// `insufficient_privilege`; a logical message forged with
/// `pg_logical_emit_message` directly is never stored. None of the attempts
/// leaves an event, while pgtide's own CDC events still arrive.
#[tokio::test]
async fn reserved_topics_are_refused_on_every_path() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    db.client()
        .await?
        .batch_execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
        .await?;
    let pgtide = start(&db, &["--capture", "docs"]).await?;
    let t = tokens().await?;
    let forged = [
        json!({"event_type": "custom.x", "topic": "meta.ws", "data": {"dropped": 1}}),
        json!({"event_type": "system.webhook_test", "data": {}}),
        json!({"event_type": "websocket.connected", "topic": "connections.abc.connected", "data": {}}),
        json!({"event_type": "custom.x", "topic": "tables/docs/insert", "data": {"id": 1}}),
        json!({"event_type": "custom.x", "topic": "presence.lobby", "data": {}}),
        json!({"event_type": "custom.x", "topic": "sync.doc1", "data": {}}),
        json!({"event_type": "row.inserted", "topic": "docs.copy", "data": {"id": 1}}),
        json!({"event_type": "table.truncated", "data": {}}),
        json!({"event_type": "schema.changed", "topic": "orders.x", "data": {}}),
    ];
    for token in [&t.op1, &t.admin] {
        for body in &forged {
            let (s, answer) =
                call(&pgtide, "POST", "/v1/events", token, Some(body.clone())).await?;
            assert_eq!(s, 403, "{body}: {answer}");
            assert_eq!(code(&answer), "reserved_topic", "{answer}");
        }
        let mut ws = ws_connect(&pgtide, token).await?;
        for frame in [
            json!({"type": "publish", "id": 1, "topic": "meta.ws", "data": {}}),
            json!({"type": "publish", "id": 2, "topic": "connections.abc.connected", "data": {}}),
            json!({"type": "publish", "id": 3, "topic": "orders.x", "event_type": "row.inserted", "data": {}}),
        ] {
            let reply = ws_request(&mut ws, &frame.to_string()).await?;
            assert_eq!(reply["error"]["code"], "reserved_topic", "{frame}: {reply}");
        }
    }

    let client = db.client().await?;
    for sql in [
        "SELECT pgtide.publish('meta.ws', '{}')",
        "SELECT pgtide.publish('system/webhook_test', '{}')",
        "SELECT pgtide.publish('tables.docs.insert', '{\"id\": 1}')",
        "SELECT pgtide.publish('orders.x', '{}', '{}', 'row.inserted')",
        "SELECT pgtide.publish('schema.changed', '{}')",
    ] {
        let err = client.batch_execute(sql).await.err().context(sql)?;
        assert_eq!(
            err.code(),
            Some(&SqlState::INSUFFICIENT_PRIVILEGE),
            "{sql}: {err:?}"
        );
    }
    // Any role may call pg_logical_emit_message: pgtide refuses what it forges.
    client
        .batch_execute(
            r#"SELECT pg_logical_emit_message(true, 'pgtide.publish', '{"topic": "system.forged", "data": 1}');
               SELECT pg_logical_emit_message(true, 'pgtide.publish', '{"topic": "docs.forged", "data": 1, "event_type": "row.inserted"}');
               INSERT INTO docs VALUES (1, 'real');
               SELECT pgtide.publish('orders.marker', '{}');"#,
        )
        .await?;
    wait_for(&pgtide, &t.admin, "orders.marker").await?;

    let own = events(&pgtide, &t.admin, "tables.**").await?;
    assert_eq!(own.len(), 1, "{own:?}");
    assert_eq!(
        (&own[0]["type"], &own[0]["source"]),
        (&json!("row.inserted"), &json!("cdc"))
    );
    for topics in [
        "meta.**,system.**,connections.**,presence.**,sync.**",
        "docs.**,orders.x,table.**,schema.**",
    ] {
        assert_eq!(
            events(&pgtide, &t.admin, topics).await?,
            Vec::<Value>::new(),
            "{topics}"
        );
    }
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// Finding 12, the escape hatch: with `--allow-reserved-publish` an admin
/// may publish to reserved topics and types (HTTP and `/ws`); operators are
/// still refused, and SQL `pgtide.publish()` still refuses everyone (the
/// flag cannot reach inside the database).
#[tokio::test]
async fn allow_reserved_publish_admits_only_admins() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let pgtide = start(&db, &["--allow-reserved-publish"]).await?;
    let t = tokens().await?;
    let (s, answer) = call(
        &pgtide,
        "POST",
        "/v1/events",
        &t.admin,
        Some(json!({"event_type": "system.maintenance", "data": {}})),
    )
    .await?;
    assert_eq!(s, 200, "{answer}");
    let mut ws = ws_connect(&pgtide, &t.admin).await?;
    let reply = ws_request(
        &mut ws,
        r#"{"type":"publish","id":1,"topic":"meta.notice","event_type":"row.inserted","data":{}}"#,
    )
    .await?;
    assert_eq!(reply["status"], "success", "{reply}");
    let (s, answer) = call(
        &pgtide,
        "POST",
        "/v1/events",
        &t.op1,
        Some(json!({"event_type": "system.maintenance", "data": {}})),
    )
    .await?;
    assert_eq!((s, code(&answer)), (403, "reserved_topic"), "{answer}");
    let mut ws = ws_connect(&pgtide, &t.op1).await?;
    let reply = ws_request(
        &mut ws,
        r#"{"type":"publish","id":1,"topic":"meta.notice","data":{}}"#,
    )
    .await?;
    assert_eq!(reply["error"]["code"], "reserved_topic", "{reply}");
    let err = db
        .client()
        .await?
        .batch_execute("SELECT pgtide.publish('system.maintenance', '{}')")
        .await
        .err()
        .context("SQL must refuse")?;
    assert_eq!(
        err.code(),
        Some(&SqlState::INSUFFICIENT_PRIVILEGE),
        "{err:?}"
    );
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// A URL on 127.0.0.1 where nothing listens, so every delivery fails at once.
fn closed_url() -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    drop(listener);
    Ok(format!("http://127.0.0.1:{port}/hook"))
}

/// The dead letters `token` lists: `(id, topic)`.
async fn letters(pgtide: &Pgtide, token: &str) -> anyhow::Result<Vec<(i64, String)>> {
    let (s, body) = call(pgtide, "GET", "/v1/dead-letters", token, None).await?;
    if s != 200 {
        bail!("GET /v1/dead-letters -> {s}: {body}");
    }
    Ok(body["dead_letters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            (
                l["id"].as_i64().unwrap_or(-1),
                l["topic"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect())
}

/// Finding 8 through the other endpoints: the `subscribe` claim bounds
/// webhooks and dead letters as it bounds HTTP reads. A token limited to
/// `orgdata.op2.**` may not create a webhook on `secret.**` or on every
/// topic (403 naming its patterns, nothing stored), nor patch one (its own,
/// or a wider one of its org) so that it reaches other topics; within its
/// claim it may. Of org 2's dead letters it lists only those of topics it
/// may read, and retrying another one is 404 exactly as an unknown id, while
/// an unrestricted org-2 token still sees and retries all of them.
#[tokio::test]
async fn webhooks_and_dead_letters_follow_the_subscribe_claim() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let pgtide = start(&db, &["--webhook-allow-private"]).await?;
    let t = tokens().await?;
    let narrow = token(&[
        "--sub",
        "n",
        "--org",
        "2",
        "--role",
        "operator",
        "--subscribe",
        "orgdata.op2.**",
    ])
    .await?;
    let url = closed_url()?;

    // Webhooks: every pattern must be covered, and "all topics" is not.
    for body in [
        json!({"url": url, "topics": ["secret.**"]}),
        json!({"url": url, "topics": ["orgdata.op2.**", "secret.docs"]}),
        json!({"url": url, "topics": ["orgdata.*.a"]}),
        json!({"url": url}),
    ] {
        let (s, answer) =
            call(&pgtide, "POST", "/v1/webhooks", &narrow, Some(body.clone())).await?;
        assert_eq!(s, 403, "{body}: {answer}");
        assert_eq!(code(&answer), "forbidden", "{answer}");
        assert!(message(&answer).contains("orgdata.op2.**"), "{answer}");
    }
    let (_, listed) = call(&pgtide, "GET", "/v1/webhooks", &t.op2, None).await?;
    assert_eq!(listed["webhooks"], json!([]), "nothing stored: {listed}");
    let (s, own) = call(
        &pgtide,
        "POST",
        "/v1/webhooks",
        &narrow,
        Some(json!({"url": url, "topics": ["orgdata.op2.*"], "max_retries": 0})),
    )
    .await?;
    assert_eq!(s, 201, "{own}");
    let own = own["id"].as_str().context("id")?.to_owned();
    // Org 2's unrestricted operator: an endpoint on every topic.
    let (s, wide) = call(
        &pgtide,
        "POST",
        "/v1/webhooks",
        &t.op2,
        Some(json!({"url": url, "max_retries": 0})),
    )
    .await?;
    assert_eq!(s, 201, "{wide}");
    let wide = wide["id"].as_str().context("id")?.to_owned();
    for (id, body) in [
        (&own, json!({"topics": ["**"]})),
        (&own, json!({"topics": null})),
        (&own, json!({"topics": ["orgdata.op2.*", "secret.docs"]})),
        // Pointing org 2's wider endpoint elsewhere would hand its events over.
        (&wide, json!({"url": url, "max_retries": 1})),
    ] {
        let (s, answer) = call(
            &pgtide,
            "PATCH",
            &format!("/v1/webhooks/{id}"),
            &narrow,
            Some(body.clone()),
        )
        .await?;
        assert_eq!(s, 403, "{body}: {answer}");
        assert!(message(&answer).contains("orgdata.op2.**"), "{answer}");
    }
    let (_, stored) = call(&pgtide, "GET", &format!("/v1/webhooks/{own}"), &t.op2, None).await?;
    assert_eq!(stored["topics"], json!(["orgdata.op2.*"]), "{stored}");
    let (s, answer) = call(
        &pgtide,
        "PATCH",
        &format!("/v1/webhooks/{own}"),
        &narrow,
        Some(json!({"topics": ["orgdata.op2.**"], "max_retries": 0})),
    )
    .await?;
    assert_eq!(s, 200, "{answer}");

    // Dead letters: org 2's deliveries to the closed port die at once.
    for (who, event_type, data) in [
        (&t.op2, "secret.docs", json!({"body": "org2 secret doc"})),
        (&narrow, "orgdata.op2.a", json!({"n": 1})),
    ] {
        let (s, answer) = call(
            &pgtide,
            "POST",
            "/v1/events",
            who,
            Some(json!({"event_type": event_type, "data": data})),
        )
        .await?;
        assert_eq!(s, 200, "{answer}");
    }
    // Three: `wide` gets both events, `own` the orgdata one.
    let deadline = Instant::now() + WAIT;
    let all = loop {
        let all = letters(&pgtide, &t.op2).await?;
        if all.len() >= 3 {
            break all;
        }
        if Instant::now() > deadline {
            bail!("no dead letters within {WAIT:?}: {all:?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let secret_letter = all
        .iter()
        .find(|(_, topic)| topic == "secret.docs")
        .map(|(id, _)| *id)
        .context("a secret.docs letter")?;
    let seen = letters(&pgtide, &narrow).await?;
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen.iter().all(|(_, topic)| topic == "orgdata.op2.a"),
        "{seen:?}"
    );
    let (s, body) = call(&pgtide, "GET", "/v1/dead-letters", &narrow, None).await?;
    assert_eq!(s, 200);
    assert!(!body.to_string().contains("org2 secret doc"), "{body}");

    let unknown = all.iter().map(|(id, _)| id).max().copied().unwrap_or(0) + 1000;
    let (s1, hidden) = call(
        &pgtide,
        "POST",
        &format!("/v1/dead-letters/{secret_letter}/retry"),
        &narrow,
        None,
    )
    .await?;
    let (s2, missing) = call(
        &pgtide,
        "POST",
        &format!("/v1/dead-letters/{unknown}/retry"),
        &narrow,
        None,
    )
    .await?;
    assert_eq!((s1, s2), (404, 404), "{hidden} / {missing}");
    assert_eq!(
        message(&hidden).replace(&secret_letter.to_string(), "ID"),
        message(&missing).replace(&unknown.to_string(), "ID")
    );
    let (s, answer) = call(
        &pgtide,
        "POST",
        &format!("/v1/dead-letters/{}/retry", seen[0].0),
        &narrow,
        None,
    )
    .await?;
    assert_eq!(s, 200, "its own topic's letter: {answer}");
    let (s, answer) = call(
        &pgtide,
        "POST",
        &format!("/v1/dead-letters/{secret_letter}/retry"),
        &t.op2,
        None,
    )
    .await?;
    assert_eq!(s, 200, "the unrestricted token may: {answer}");

    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// Finding 7, squatting and the oracle: org 2 cannot register (with
/// `compatibility: none` or any other) a topic org 1 already publishes to, or
/// one carrying org-less events, so it never chooses the schema their
/// publishers must follow: 409 `conflict` saying the topic carries other
/// orgs' events without saying whose, nothing created, org 1's publishes
/// still pass; org 1 itself, and an admin, may register it. On a topic org 2
/// does own, its compatibility check reads only the events it may read:
/// whether org 1's stored event would pass a schema org 2 chose changes
/// nothing in the answer (no count, no mention), so the check is no oracle.
#[tokio::test]
async fn topics_cannot_be_squatted_and_checks_are_no_oracle() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let pgtide = start(&db, &[]).await?;
    let t = tokens().await?;
    let publish = |token: &str, topic: &'static str, data: Value| {
        let token = token.to_owned();
        let pgtide = &pgtide;
        async move {
            let (s, answer) = call(
                pgtide,
                "POST",
                "/v1/events",
                &token,
                Some(json!({"event_type": topic, "data": data})),
            )
            .await?;
            anyhow::ensure!(s == 200, "publish to {topic}: {s} {answer}");
            anyhow::Ok(answer)
        }
    };
    publish(&t.op1, "squat.target", json!({"v": "org1 secret"})).await?;
    publish(&t.admin, "squat.shared", json!({"v": "no org"})).await?;

    for (name, compatibility) in [
        ("squat.target", "none"),
        ("squat.target", "backward"),
        ("squat/target", "none"),
        ("squat.shared", "none"),
    ] {
        let (s, answer) = call(
            &pgtide,
            "POST",
            "/v1/topics",
            &t.op2,
            Some(json!({"name": name, "compatibility": compatibility})),
        )
        .await?;
        assert_eq!(s, 409, "{name}: {answer}");
        assert_eq!(code(&answer), "conflict", "{answer}");
        assert!(message(&answer).contains("other orgs"), "{answer}");
        assert!(!message(&answer).contains("already exists"), "{answer}");
        assert!(!answer.to_string().contains('1'), "names no org: {answer}");
    }
    for name in ["squat.target", "squat.shared"] {
        let (s, _) = call(&pgtide, "GET", &format!("/v1/topics/{name}"), &t.op2, None).await?;
        assert_eq!(s, 404, "{name} was not created");
    }
    publish(&t.op1, "squat.target", json!({"v": "still text"})).await?;
    // The org whose events they are may, and so may an admin.
    let (s, topic) = call(
        &pgtide,
        "POST",
        "/v1/topics",
        &t.op1,
        Some(json!({"name": "squat.target"})),
    )
    .await?;
    assert_eq!((s, &topic["org_id"]), (201, &json!(1)), "{topic}");
    let (s, topic) = call(
        &pgtide,
        "POST",
        "/v1/topics",
        &t.admin,
        Some(json!({"name": "squat.shared", "org_id": 2})),
    )
    .await?;
    assert_eq!(s, 201, "{topic}");

    // A topic org 2 registered first; org 1 publishes to it afterwards.
    let (s, _) = call(
        &pgtide,
        "POST",
        "/v1/topics",
        &t.op2,
        Some(json!({"name": "oracle.probe"})),
    )
    .await?;
    assert_eq!(s, 201);
    let theirs = publish(&t.op1, "oracle.probe", json!({"v": "org1 secret"})).await?;
    let ours = publish(&t.op2, "oracle.probe", json!({"v": 5})).await?;
    let (theirs, ours) = (
        theirs["seq"].as_i64().context("seq")?,
        ours["seq"].as_i64().context("seq")?,
    );
    // Rejects only org 1's event: no answer tells it (before: 409 with
    // "rejects 1 stored events … that this token cannot read").
    let (s, answer) = call(
        &pgtide,
        "POST",
        "/v1/topics/oracle.probe/schemas",
        &t.op2,
        Some(json!({"schema": {"type": "object", "properties": {"v": {"type": "number"}}}})),
    )
    .await?;
    assert_eq!(s, 201, "{answer}");
    // Rejects only org 2's own event: quoted, and nothing else said.
    let (s, refused) = call(
        &pgtide,
        "POST",
        "/v1/topics/oracle.probe/schemas",
        &t.op2,
        Some(json!({"schema": {"type": "object", "properties": {"v": {"type": "string"}}}})),
    )
    .await?;
    assert_eq!((s, code(&refused)), (409, "incompatible"), "{refused}");
    let reasons: Vec<&str> = refused["error"]["details"]
        .as_array()
        .context("details")?
        .iter()
        .filter_map(|d| d["reason"].as_str())
        .collect();
    assert_eq!(reasons.len(), 1, "{refused}");
    assert!(
        reasons[0].starts_with(&format!("rejects stored event seq {ours}:")),
        "{refused}"
    );
    let text = refused.to_string();
    assert!(!text.contains(&format!("seq {theirs}")), "{refused}");
    assert!(
        !text.contains("org1 secret") && !text.contains("cannot read"),
        "{refused}"
    );

    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}
