//! JWT authentication and tenancy over HTTP and WebSocket, with tokens
//! minted by `pgtide token`.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{Pgtide, Server, TestDb, WAIT, run_pgtide};

const SECRET: &str = "test-secret-0123456789abcdef";

async fn token(args: &[&str]) -> anyhow::Result<String> {
    let mut all: Vec<String> = vec!["token".into(), "--jwt-secret".into(), SECRET.into()];
    all.extend(args.iter().map(|s| (*s).to_owned()));
    let out = run_pgtide(&all).await?;
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout)?;
    assert_eq!(stdout.lines().count(), 1, "the token alone on one line");
    Ok(stdout.trim().to_owned())
}

async fn start(db: &TestDb) -> anyhow::Result<Pgtide> {
    let mut args = db.run_args();
    args.retain(|a| a != "--insecure-no-auth");
    args.extend(["--jwt-secret".into(), SECRET.into()]);
    Pgtide::start(&args).await
}

/// Missing, malformed, wrongly signed and expired tokens get 401 with the
/// contract's body (also at the WebSocket upgrade); forbidden actions 403.
#[tokio::test]
async fn auth_failures() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let pgtide = start(&db).await?;
    let http = pgtide.http();
    let url = pgtide.url("/v1/events");
    let other = {
        let out = run_pgtide(&[
            "token".into(),
            "--jwt-secret".into(),
            "another-secret-0123456789".into(),
            "--sub".into(),
            "x".into(),
        ])
        .await?;
        String::from_utf8(out.stdout)?.trim().to_owned()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let expired = pgtide_auth::sign_hs256_claims(SECRET, &json!({"sub": "x", "exp": now - 120}))?;
    for (auth, needle) in [
        (None, "missing token"),
        (Some("Bearer not.a.jwt".to_owned()), ""),
        (Some(format!("Bearer {other}")), "signature"),
        (Some(format!("Bearer {expired}")), "expired"),
        (Some("Basic abc".to_owned()), ""),
    ] {
        let mut req = http.get(&url);
        if let Some(a) = &auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await?;
        assert_eq!(r.status().as_u16(), 401, "{auth:?}");
        let body: Value = r.json().await?;
        assert_eq!(body["error"]["code"], "unauthorized", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .to_lowercase()
                .contains(needle),
            "{auth:?}: {body}"
        );
        assert!(body["error"]["details"].is_array());
    }
    // The WebSocket upgrade itself is refused.
    let ws_url = pgtide.url("/ws").replacen("http://", "ws://", 1);
    match tokio_tungstenite::connect_async(&ws_url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 401)
        }
        other => panic!("expected 401 at the upgrade, got {other:?}"),
    }

    let read = token(&["--sub", "reader"]).await?;
    let r = http
        .post(&url)
        .bearer_auth(&read)
        .json(&json!({"event_type": "a.b", "data": 1}))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 403);
    let body: Value = r.json().await?;
    assert_eq!(body["error"]["code"], "forbidden");
    let r = http
        .post(pgtide.url("/v1/topics"))
        .bearer_auth(&read)
        .json(&json!({"name": "a.b"}))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 403);
    let r = http.get(&url).bearer_auth(&read).send().await?;
    assert_eq!(r.status().as_u16(), 200);
    let operator = token(&["--sub", "op", "--role", "operator", "--org", "1"]).await?;
    let r = http
        .post(&url)
        .bearer_auth(&operator)
        .json(&json!({"event_type": "a.b", "data": 1, "org_id": 2}))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 403, "only admins set org_id");
    let r = http
        .post(&url)
        .bearer_auth(&operator)
        .json(&json!({"event_type": "a.b", "data": 1}))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 200);
    let bad = run_pgtide(&[
        "token".into(),
        "--jwt-secret".into(),
        SECRET.into(),
        "--sub".into(),
        "x".into(),
        "--role".into(),
        "boss".into(),
    ])
    .await?;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown role"));
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// An org 2 token never sees org 1 events: not by subscription, query,
/// replay or stats; `subscribe` claims are enforced, never narrowed.
#[tokio::test]
async fn tenants_are_isolated() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let pgtide = start(&db).await?;
    let http = pgtide.http();
    let admin = token(&["--sub", "admin", "--role", "admin"]).await?;
    let org2 = token(&["--sub", "t2", "--org", "2"]).await?;
    let narrow = token(&["--sub", "n", "--org", "2", "--subscribe", "orders.**"]).await?;

    let ws_url = pgtide
        .url(&format!("/ws?token={org2}"))
        .replacen("http://", "ws://", 1);
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await?;
    ws.send(Message::Text(
        json!({"type": "subscribe", "topic": "**"})
            .to_string()
            .into(),
    ))
    .await?;
    let reply = tokio::time::timeout(WAIT, ws.next()).await?;
    assert!(
        matches!(reply, Some(Ok(Message::Text(ref t))) if t.contains("success")),
        "{reply:?}"
    );

    for (org, n) in [(Some(1), 1), (Some(2), 2), (None, 3), (Some(1), 4)] {
        let mut body = json!({"event_type": "orders.placed", "data": {"n": n}});
        if let Some(org) = org {
            body["org_id"] = json!(org);
        }
        let r = http
            .post(pgtide.url("/v1/events"))
            .bearer_auth(&admin)
            .json(&body)
            .send()
            .await?;
        assert_eq!(r.status().as_u16(), 200);
    }
    let marker = json!({"event_type": "done", "data": {}});
    http.post(pgtide.url("/v1/events"))
        .bearer_auth(&admin)
        .json(&marker)
        .send()
        .await?;

    let mut live = Vec::new();
    loop {
        let Some(Ok(Message::Text(t))) = tokio::time::timeout(WAIT, ws.next()).await? else {
            panic!("connection ended");
        };
        let e: Value = serde_json::from_str(t.as_str())?;
        if e["topic"] == "done" {
            break;
        }
        live.push(e["data"]["n"].as_i64().unwrap());
    }
    assert_eq!(live, [2, 3], "live: only org 2 and org-less events");

    let page: Value = http
        .get(pgtide.url("/v1/events"))
        .bearer_auth(&org2)
        .send()
        .await?
        .json()
        .await?;
    let queried: Vec<i64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["data"]["n"].as_i64())
        .collect();
    assert_eq!(queried, [2, 3]);
    let replay: Value = http
        .post(pgtide.url("/v1/events/replay"))
        .bearer_auth(&org2)
        .json(&json!({"from_seq": 0}))
        .send()
        .await?
        .json()
        .await?;
    let replayed: Vec<i64> = replay["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["data"]["n"].as_i64())
        .collect();
    assert_eq!(replayed, [2, 3]);
    let stats: Value = http
        .get(pgtide.url("/v1/events/stats"))
        .bearer_auth(&org2)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        stats["total_events"], 3,
        "org 2, org-less and the marker: {stats}"
    );

    // A WebSocket replay is scoped too.
    ws.send(Message::Text(
        json!({"type": "subscribe", "topic": "orders.*", "from_seq": 0, "id": 9})
            .to_string()
            .into(),
    ))
    .await?;
    let mut replayed_ws = Vec::new();
    while replayed_ws.len() < 2 {
        let Some(Ok(Message::Text(t))) = tokio::time::timeout(WAIT, ws.next()).await? else {
            panic!("connection ended");
        };
        let e: Value = serde_json::from_str(t.as_str())?;
        if let Some(n) = e["data"]["n"].as_i64() {
            replayed_ws.push(n);
        }
    }
    assert_eq!(replayed_ws, [2, 3]);

    // Subscribe claims: covered patterns pass, wider ones are refused.
    let ws_url = pgtide
        .url(&format!("/ws?token={narrow}"))
        .replacen("http://", "ws://", 1);
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await?;
    for (topic, status) in [
        ("orders.*", "success"),
        ("**", "error"),
        ("users.*", "error"),
    ] {
        ws.send(Message::Text(
            json!({"type": "subscribe", "topic": topic})
                .to_string()
                .into(),
        ))
        .await?;
        let Some(Ok(Message::Text(t))) = tokio::time::timeout(WAIT, ws.next()).await? else {
            panic!("connection ended");
        };
        let r: Value = serde_json::from_str(t.as_str())?;
        assert_eq!(r["status"], status, "{topic}: {r}");
        if status == "error" {
            assert_eq!(r["error"]["code"], "forbidden");
        }
    }
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// Dead letters are tenant data too: an operator sees and retries only its
/// org's; letters without an org (failed mappings of any table) are admin-only.
#[tokio::test]
async fn dead_letters_are_scoped_to_the_org() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let pgtide = start(&db).await?;
    let client = db.client().await?;
    let mut ids = Vec::new();
    for org in [json!(1), json!(2), Value::Null] {
        let event = json!({"id": "01HZZZZZZZZZZZZZZZZZZZZZZZ", "seq": 0, "topic": "t", "type": "t",
                           "ts": "2026-01-01T00:00:00.000Z", "source": "http", "data": {},
                           "org_id": org, "correlation_id": null, "attributes": {}, "meta": {}});
        let row = client
            .query_one(
                "INSERT INTO pgtide.dead_letters (kind, topic, event, error)
                 VALUES ('validation', 't', $1, 'bad') RETURNING id",
                &[&event],
            )
            .await?;
        ids.push(row.get::<_, i64>(0));
    }
    let list = |token: String| {
        let http = pgtide.http().clone();
        let url = pgtide.url("/v1/dead-letters");
        async move {
            let v: Value = http
                .get(url)
                .bearer_auth(token)
                .send()
                .await?
                .json()
                .await?;
            let ids: Vec<i64> = v["dead_letters"]
                .as_array()
                .map(|a| a.iter().filter_map(|d| d["id"].as_i64()).collect())
                .unwrap_or_default();
            anyhow::Ok(ids)
        }
    };
    let admin = token(&["--sub", "a", "--role", "admin"]).await?;
    let op2 = token(&["--sub", "o", "--org", "2", "--role", "operator"]).await?;
    assert_eq!(list(admin).await?, ids);
    assert_eq!(list(op2.clone()).await?, vec![ids[1]]);
    let r = pgtide
        .http()
        .post(pgtide.url(&format!("/v1/dead-letters/{}/retry", ids[0])))
        .bearer_auth(&op2)
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 404);
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}
