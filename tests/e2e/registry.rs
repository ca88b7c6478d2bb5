//! Topics, schema versions and validation, through the API and the CDC path.

use serde_json::{Value, json};

use crate::harness::{Pgtide, Server};

async fn send(
    pgtide: &Pgtide,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<(u16, Value)> {
    let url = pgtide.url(path);
    let http = pgtide.http();
    let req = match method {
        "POST" => http.post(url),
        "PATCH" => http.patch(url),
        "DELETE" => http.delete(url),
        _ => http.get(url),
    };
    let req = match body {
        Some(b) => req.json(&b),
        None => req,
    };
    let r = req.send().await?;
    let status = r.status().as_u16();
    let text = r.text().await?;
    Ok((
        status,
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)?
        },
    ))
}

/// A topic with an active schema rejects bad API payloads with 422 and each
/// message's JSON pointer, dead-letters bad CDC/SQL events, refuses an
/// incompatible new version with 409 and its reasons, and a dead letter can be
/// retried once the schema allows it.
#[tokio::test]
async fn schemas_gate_every_source() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let pgtide = Pgtide::start(&db.run_args()).await?;

    let (s, topic) = send(
        &pgtide,
        "POST",
        "/v1/topics",
        Some(json!({"name": "orders/placed", "description": "x"})),
    )
    .await?;
    assert_eq!(s, 201, "{topic}");
    assert_eq!(topic["name"], "orders.placed");
    assert_eq!(topic["active_schema_version"], 0);
    assert_eq!(topic["compatibility"], "backward");
    let (s, dup) = send(
        &pgtide,
        "POST",
        "/v1/topics",
        Some(json!({"name": "orders.placed"})),
    )
    .await?;
    assert_eq!(s, 409, "{dup}");

    // Before any schema, anything goes.
    let (s, _) = send(
        &pgtide,
        "POST",
        "/v1/events",
        Some(json!({"event_type": "orders.placed", "data": {"id": "x"}})),
    )
    .await?;
    assert_eq!(s, 200);

    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {"id": {"type": "integer"}, "total": {"type": "number"}},
    });
    // The stored event {"id": "x"} breaks it: refused under `backward`.
    let (s, refused) = send(
        &pgtide,
        "POST",
        "/v1/topics/orders.placed/schemas",
        Some(json!({"schema": schema})),
    )
    .await?;
    assert_eq!(s, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "incompatible");
    assert!(
        refused["error"]["details"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("rejects stored event seq 1"),
        "{refused}"
    );

    let (s, _) = send(
        &pgtide,
        "PATCH",
        "/v1/topics/orders.placed",
        Some(json!({"compatibility": "none"})),
    )
    .await?;
    assert_eq!(s, 200);
    let (s, registered) = send(
        &pgtide,
        "POST",
        "/v1/topics/orders.placed/schemas",
        Some(json!({"schema": schema})),
    )
    .await?;
    assert_eq!(s, 201, "{registered}");
    assert_eq!(registered, json!({"topic": "orders.placed", "version": 1}));

    let (s, invalid) = send(
        &pgtide,
        "POST",
        "/v1/events",
        Some(json!({"event_type": "orders.placed", "data": {"id": "seven", "total": true}})),
    )
    .await?;
    assert_eq!(s, 422, "{invalid}");
    assert_eq!(invalid["error"]["code"], "validation_failed");
    let pointers: Vec<&str> = invalid["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["pointer"].as_str().unwrap())
        .collect();
    assert!(
        pointers.contains(&"/id") && pointers.contains(&"/total"),
        "{invalid}"
    );
    let (s, _) = send(
        &pgtide,
        "POST",
        "/v1/events",
        Some(json!({"event_type": "orders.placed", "data": {"id": 7}})),
    )
    .await?;
    assert_eq!(s, 200);

    // From SQL: never delivered, kept as a dead letter with the error.
    let client = db.client().await?;
    client
        .batch_execute("SELECT pgtide.publish('orders.placed', '{\"id\": \"bad\"}')")
        .await?;
    client
        .batch_execute("SELECT pgtide.publish('orders.placed', '{\"id\": 8}')")
        .await?;
    let events = pgtide.wait_events(3).await?;
    let ids: Vec<&Value> = events.iter().map(|e| &e["data"]["id"]).collect();
    assert_eq!(
        ids,
        [&json!("x"), &json!(7), &json!(8)],
        "the invalid SQL event was not stored"
    );
    let (_, letters) = send(&pgtide, "GET", "/v1/dead-letters?kind=validation", None).await?;
    let letters = letters["dead_letters"].as_array().unwrap().clone();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["topic"], "orders.placed");
    assert_eq!(letters[0]["kind"], "validation");
    assert_eq!(letters[0]["event"]["data"], json!({"id": "bad"}));
    assert!(
        letters[0]["error"].as_str().unwrap().contains("/id"),
        "{letters:?}"
    );

    // Still invalid: the retry is refused and the letter stays.
    let id = letters[0]["id"].as_i64().unwrap();
    let (s, _) = send(
        &pgtide,
        "POST",
        &format!("/v1/dead-letters/{id}/retry"),
        None,
    )
    .await?;
    assert_eq!(s, 422);
    // Validation off (version 0): the retry stores it under its original id.
    let (s, _) = send(
        &pgtide,
        "PATCH",
        "/v1/topics/orders.placed",
        Some(json!({"active_schema_version": 0})),
    )
    .await?;
    assert_eq!(s, 200);
    let (s, retried) = send(
        &pgtide,
        "POST",
        &format!("/v1/dead-letters/{id}/retry"),
        None,
    )
    .await?;
    assert_eq!(s, 200, "{retried}");
    assert_eq!(retried["events"][0]["id"], letters[0]["event"]["id"]);
    let (_, after) = send(&pgtide, "GET", "/v1/dead-letters", None).await?;
    assert_eq!(after["dead_letters"].as_array().unwrap().len(), 0);

    let (s, versions) = send(&pgtide, "GET", "/v1/topics/orders.placed/schemas", None).await?;
    assert_eq!(s, 200);
    assert_eq!(versions["schemas"].as_array().unwrap().len(), 1);
    let (s, _) = send(
        &pgtide,
        "PATCH",
        "/v1/topics/orders.placed",
        Some(json!({"active_schema_version": 9})),
    )
    .await?;
    assert_eq!(s, 400);
    let (s, _) = send(&pgtide, "GET", "/v1/topics/no.such", None).await?;
    assert_eq!(s, 404);
    let (s, _) = send(&pgtide, "DELETE", "/v1/topics/orders.placed", None).await?;
    assert_eq!(s, 204);
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// Under `backward`, a new version that adds a required property is refused.
#[tokio::test]
async fn backward_refuses_new_required_properties() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let pgtide = Pgtide::start(&db.run_args()).await?;
    send(&pgtide, "POST", "/v1/topics", Some(json!({"name": "a.b"}))).await?;
    let v1 = json!({"type": "object", "properties": {"x": {"type": "integer"}}});
    let (s, _) = send(
        &pgtide,
        "POST",
        "/v1/topics/a.b/schemas",
        Some(json!({"schema": v1})),
    )
    .await?;
    assert_eq!(s, 201);
    let v2 = json!({"type": "object", "required": ["y"], "properties": {"x": {"type": "integer"}}});
    let (s, body) = send(
        &pgtide,
        "POST",
        "/v1/topics/a.b/schemas",
        Some(json!({"schema": v2})),
    )
    .await?;
    assert_eq!(s, 409, "{body}");
    assert!(
        body["error"]["details"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("adds required property \"y\"")
    );
    let (s, body) = send(
        &pgtide,
        "POST",
        "/v1/topics/a.b/schemas",
        Some(json!({"schema": {"type": "nonsense"}})),
    )
    .await?;
    assert_eq!(s, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid JSON Schema")
    );
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}
