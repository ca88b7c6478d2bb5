//! The event API over real HTTP.

use serde_json::{Value, json};

use crate::harness::{Pgtide, Server};

async fn post(pgtide: &Pgtide, body: &str) -> anyhow::Result<(u16, Value)> {
    let r = pgtide
        .http()
        .post(pgtide.url("/v1/events"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await?))
}

fn assert_error(body: &Value, code: &str, needle: &str) {
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains(needle),
        "{body}"
    );
    assert!(body["error"]["details"].is_array(), "{body}");
}

/// Publish, then query with each filter; the envelope and paging match SPEC §6.
#[tokio::test]
async fn publish_and_query() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let pgtide = Pgtide::start(&db.run_args()).await?;
    let (status, first) = post(
        &pgtide,
        r#"{"event_type":"custom.order_placed","data":{"order_id":"ord-123","total":49.99},
            "correlation_id":"req-abc","source":"checkout-service","attributes":{"region":"us-east"}}"#,
    )
    .await?;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["event_type"], "custom.order_placed");
    assert_eq!(first["topic"], "custom.order_placed");
    assert_eq!(first["seq"], 1);
    assert_eq!(first["event_id"].as_str().map(str::len), Some(26));
    assert_eq!(first["timestamp"].as_str().map(str::len), Some(24));
    let (_, second) = post(
        &pgtide,
        r#"{"event_type":"job.created","topic":"jobs/abc-123","data":{"n":1}}"#,
    )
    .await?;
    assert_eq!(second["topic"], "jobs.abc-123");
    let (_, _third) = post(
        &pgtide,
        r#"{"event_type":"job.completed","topic":"jobs.abc-123.done","data":null}"#,
    )
    .await?;

    let all = pgtide.events("").await?;
    let events = all["events"].as_array().unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(all["next_after_seq"], Value::Null);
    let e = &events[0];
    assert_eq!(e["id"], first["event_id"]);
    assert_eq!(e["type"], "custom.order_placed");
    assert_eq!(e["source"], "http");
    assert_eq!(e["correlation_id"], "req-abc");
    assert_eq!(e["attributes"], json!({"region": "us-east"}));
    assert_eq!(e["meta"]["producer"], "checkout-service");
    assert_eq!(e["data"], json!({"order_id": "ord-123", "total": 49.99}));
    assert_eq!(e["org_id"], Value::Null);

    let by_type = pgtide
        .events("event_types=job.created,job.completed")
        .await?;
    assert_eq!(by_type["events"].as_array().unwrap().len(), 2);
    let one_level = pgtide.events("topics=jobs/*").await?;
    assert_eq!(one_level["events"].as_array().unwrap().len(), 1);
    let any_depth = pgtide.events("topics=jobs.**").await?;
    assert_eq!(any_depth["events"].as_array().unwrap().len(), 2);
    let page = pgtide.events("limit=2").await?;
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
    assert_eq!(page["next_after_seq"], 2);
    let rest = pgtide.events("after_seq=2").await?;
    assert_eq!(rest["events"][0]["seq"], 3);
    let ts = e["ts"].as_str().unwrap();
    let later = pgtide
        .events(&format!(
            "start_time=2999-01-01T00:00:00Z&end_time={}",
            "3000-01-01T00:00:00Z"
        ))
        .await?;
    assert_eq!(
        later["events"].as_array().unwrap().len(),
        0,
        "start_time filters ({ts})"
    );
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// Bad requests get the contract's error body naming what is wrong, and store nothing.
#[tokio::test]
async fn bad_requests_are_explained_and_change_nothing() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let pgtide = Pgtide::start(&db.run_args()).await?;
    let (s, b) = post(&pgtide, r#"{"event_type": "x.y", "data": "#).await?;
    assert_eq!(s, 400);
    assert_error(&b, "bad_request", "invalid JSON body");
    let (s, b) = post(&pgtide, r#"{"event_type": "x.y", "dta": 1}"#).await?;
    assert_eq!(s, 400);
    assert_error(&b, "bad_request", "unknown field `dta`");
    let (s, b) = post(&pgtide, r#"{"data": 1}"#).await?;
    assert_eq!(s, 400);
    assert_error(&b, "bad_request", "missing field `event_type`");
    let (s, b) = post(
        &pgtide,
        r#"{"event_type": "x.y", "topic": "a..b", "data": 1}"#,
    )
    .await?;
    assert_eq!(s, 400);
    assert_error(&b, "bad_request", "empty segment");
    let (s, b) = post(&pgtide, r#"{"event_type": "bad type!", "data": 1}"#).await?;
    assert_eq!(s, 400);
    assert_error(&b, "bad_request", "invalid event_type");
    let huge = format!(
        r#"{{"event_type":"x.y","data":"{}"}}"#,
        "a".repeat(1_100_000)
    );
    let (s, b) = post(&pgtide, &huge).await?;
    assert_eq!(s, 413);
    assert_error(&b, "payload_too_large", "larger than");

    for (query, needle) in [
        ("limit=0", "limit=0"),
        ("limit=1001", "limit=1001"),
        ("topics=a.**.b", "'**' is allowed only as the last segment"),
        ("start_time=yesterday", "start_time"),
        ("after_seq=-1", "after_seq"),
        ("colour=red", "unknown field `colour`"),
    ] {
        let r = pgtide
            .http()
            .get(pgtide.url(&format!("/v1/events?{query}")))
            .send()
            .await?;
        assert_eq!(r.status().as_u16(), 400, "{query}");
        let body: Value = r.json().await?;
        assert_error(&body, "bad_request", needle);
    }
    let r = pgtide.http().get(pgtide.url("/v1/nope")).send().await?;
    assert_eq!(r.status().as_u16(), 404);
    assert_error(&r.json().await?, "not_found", "no such route");

    assert_eq!(
        pgtide.events("").await?["events"].as_array().unwrap().len(),
        0,
        "nothing stored"
    );
    let health: Value = pgtide
        .http()
        .get(pgtide.url("/healthz"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(health["status"], "ok");
    let metrics = pgtide
        .http()
        .get(pgtide.url("/metrics"))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("pgtide_replication_streaming 1"),
        "{metrics}"
    );
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// `POST /v1/events/replay` from a seq or an event id, and `GET /v1/events/stats`.
#[tokio::test]
async fn replay_and_stats() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let pgtide = Pgtide::start(&db.run_args()).await?;
    let mut ids = Vec::new();
    for i in 0..5 {
        let kind = if i % 2 == 0 {
            "job.created"
        } else {
            "job.completed"
        };
        let (_, r) = post(
            &pgtide,
            &format!(r#"{{"event_type":"{kind}","topic":"jobs.j{i}","data":{{"i":{i}}}}}"#),
        )
        .await?;
        ids.push(r["event_id"].as_str().unwrap().to_owned());
    }
    let replay = |body: Value| {
        let req = pgtide
            .http()
            .post(pgtide.url("/v1/events/replay"))
            .json(&body);
        async move {
            let r = req.send().await?;
            let status = r.status().as_u16();
            anyhow::Ok((status, r.json::<Value>().await?))
        }
    };
    let (s, page) = replay(json!({"from_seq": 2})).await?;
    assert_eq!(s, 200);
    let seqs: Vec<i64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [3, 4, 5]);
    let (_, page) =
        replay(json!({"from_event_id": ids[1], "event_types": ["job.created"]})).await?;
    let seqs: Vec<i64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [3, 5]);
    let (_, page) = replay(json!({"topics": ["jobs.j4"], "limit": 1})).await?;
    assert_eq!(page["events"][0]["seq"], 5);
    assert_eq!(page["next_after_seq"], 5);
    let (s, body) = replay(json!({"from_seq": 1, "from_event_id": ids[0]})).await?;
    assert_eq!(s, 400, "{body}");
    let (s, _) = replay(json!({"from_event_id": "01ARZ3NDEKTSV4RRFFQ69G5FAV"})).await?;
    assert_eq!(s, 404);
    let (s, body) = replay(json!({"from_event_id": "nope"})).await?;
    assert_eq!(s, 400, "{body}");

    let stats: Value = pgtide
        .http()
        .get(pgtide.url("/v1/events/stats"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(stats["total_events"], 5);
    assert_eq!(stats["last_seq"], 5);
    assert_eq!(
        stats["events_by_type"],
        json!({"job.created": 3, "job.completed": 2})
    );
    assert_eq!(stats["events_by_source"], json!({"http": 5}));
    assert!(stats["websocket"]["active_connections"].is_i64());
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// `--retention` deletes events older than the period, and only those.
#[tokio::test]
async fn retention_removes_old_events() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let mut args = db.run_args();
    args.extend(["--retention".into(), "1h".into()]);
    let pgtide = Pgtide::start(&args).await?;
    post(&pgtide, r#"{"event_type":"a.old","data":1}"#).await?;
    post(&pgtide, r#"{"event_type":"a.new","data":2}"#).await?;
    pgtide.stop().await?;
    // Age the first event by two hours, then run with a one-hour retention.
    db.client()
        .await?
        .batch_execute("UPDATE pgtide.events SET ts = ts - interval '2 hours' WHERE type = 'a.old'")
        .await?;
    let pgtide = Pgtide::start(&args).await?;
    let deadline = std::time::Instant::now() + crate::harness::WAIT;
    loop {
        let events = pgtide.all_events(0).await?;
        let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
        if types == ["a.new"] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "retention did not run: {types:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// `/v1/openapi.json` is an OpenAPI 3 document with every route, the bearer
/// scheme on every non-public one, and the contract's error body.
#[tokio::test]
async fn openapi_document_covers_every_route() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let pgtide = Pgtide::start(&db.run_args()).await?;
    let r = pgtide
        .http()
        .get(pgtide.url("/v1/openapi.json"))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()?
            .starts_with("application/json")
    );
    let doc: Value = r.json().await?;
    assert!(
        doc["openapi"].as_str().unwrap_or("").starts_with("3."),
        "{doc}"
    );
    let routes = [
        ("/v1/events", &["get", "post"][..]),
        ("/v1/events/replay", &["post"]),
        ("/v1/events/stats", &["get"]),
        ("/v1/topics", &["get", "post"]),
        ("/v1/topics/{topic}", &["get", "patch", "delete"]),
        ("/v1/topics/{topic}/schemas", &["get", "post"]),
        ("/v1/mappings", &["get", "post"]),
        ("/v1/mappings/{name}", &["delete"]),
        ("/v1/dead-letters", &["get"]),
        ("/v1/dead-letters/{id}/retry", &["post"]),
        ("/v1/metrics/ws", &["get"]),
        ("/v1/webhooks", &["get", "post"]),
        ("/v1/webhooks/{id}", &["get", "patch", "delete"]),
        ("/v1/webhooks/{id}/deliveries", &["get"]),
        ("/v1/webhooks/{id}/test", &["post"]),
        ("/ws", &["get"]),
        ("/ws/exactly-once", &["get"]),
        ("/healthz", &["get"]),
        ("/readyz", &["get"]),
        ("/metrics", &["get"]),
    ];
    let paths = doc["paths"].as_object().expect("paths");
    for (path, methods) in routes {
        for method in methods {
            let op = &paths
                .get(path)
                .unwrap_or_else(|| panic!("{path} missing from the document"))[method];
            assert!(op.is_object(), "{method} {path} missing");
            let public = ["/healthz", "/readyz", "/metrics"].contains(&path);
            assert_eq!(
                op["security"].is_array(),
                !public,
                "{method} {path} security"
            );
            if !public {
                assert_eq!(
                    op["responses"]["401"]["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{method} {path}"
                );
            }
        }
    }
    // The document describes what the server really does: every documented
    // path answers something other than the router's "no such route".
    for path in paths.keys() {
        let concrete = path
            .replace("{topic}", "x")
            .replace("{name}", "x")
            .replace("{id}", "1");
        let r = pgtide.http().get(pgtide.url(&concrete)).send().await?;
        if r.status().as_u16() == 404 {
            let body: Value = r.json().await.unwrap_or(Value::Null);
            assert_ne!(body["error"]["message"], "no such route", "{path}");
        }
    }
    let schema = &doc["components"]["schemas"]["ErrorBody"];
    assert!(schema["properties"]["error"].is_object(), "{schema}");
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}
