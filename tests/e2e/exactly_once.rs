//! `/ws/exactly-once`: durable consumers, acks and nacks, redelivery after
//! nack, timeout and reconnect, takeover, and survival across `kill -9`.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::harness::{Pgtide, Server, WAIT};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn connect(pgtide: &Pgtide) -> anyhow::Result<Ws> {
    let url = pgtide
        .url("/ws/exactly-once")
        .replacen("http://", "ws://", 1);
    Ok(tokio_tungstenite::connect_async(url).await?.0)
}

async fn send(ws: &mut Ws, v: Value) -> anyhow::Result<()> {
    Ok(ws.send(Message::Text(v.to_string().into())).await?)
}

async fn next_within(ws: &mut Ws, limit: Duration) -> anyhow::Result<Option<Value>> {
    match tokio::time::timeout(limit, ws.next()).await {
        Err(_) => Ok(None),
        Ok(Some(Ok(Message::Text(t)))) => Ok(Some(serde_json::from_str(t.as_str())?)),
        Ok(Some(Ok(Message::Close(f)))) => bail!("closed: {f:?}"),
        Ok(other) => bail!("unexpected {other:?}"),
    }
}

async fn next(ws: &mut Ws) -> anyhow::Result<Value> {
    next_within(ws, WAIT).await?.context("no frame in time")
}

async fn publish(pgtide: &Pgtide, topic: &str, n: i64) -> anyhow::Result<i64> {
    let r: Value = pgtide
        .http()
        .post(pgtide.url("/v1/events"))
        .json(&json!({"event_type": "custom.job", "topic": topic, "data": {"n": n}}))
        .send()
        .await?
        .json()
        .await?;
    r["seq"].as_i64().context("seq")
}

async fn subscribe(ws: &mut Ws, consumer: &str, extra: Value) -> anyhow::Result<Value> {
    let mut body = json!({"type": "subscribe", "topic": "q.*", "consumer": consumer, "id": 1});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    send(ws, body).await?;
    let r = next(ws).await?;
    assert_eq!(r["status"], "success", "{r}");
    Ok(r)
}

/// max_in_flight bounds what is unacknowledged; nacked and timed-out events
/// come again marked redelivered; acked ones never do.
#[tokio::test]
async fn acks_nacks_timeouts_and_flow_control() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let pgtide = Pgtide::start(&db.run_args()).await?;
    publish(&pgtide, "q.old", 0).await?;
    let mut ws = connect(&pgtide).await?;
    subscribe(
        &mut ws,
        "c1",
        json!({"max_in_flight": 2, "ack_timeout_ms": 1000}),
    )
    .await?;
    let mut seqs = Vec::new();
    for n in 1..=4 {
        seqs.push(publish(&pgtide, "q.new", n).await?);
    }
    let a = next(&mut ws).await?;
    let b = next(&mut ws).await?;
    assert_eq!(
        (a["seq"].as_i64(), b["seq"].as_i64()),
        (Some(seqs[0]), Some(seqs[1])),
        "a new consumer starts after the newest event"
    );
    assert!(a.get("redelivered").is_none());
    assert!(
        next_within(&mut ws, Duration::from_millis(400))
            .await?
            .is_none(),
        "max_in_flight 2 holds the third back"
    );

    send(&mut ws, json!({"type": "ack", "seq": seqs[0]})).await?;
    let c = next(&mut ws).await?;
    assert_eq!(c["seq"].as_i64(), Some(seqs[2]));
    send(&mut ws, json!({"type": "nack", "seq": seqs[1]})).await?;
    let again = next(&mut ws).await?;
    assert_eq!(
        (again["seq"].as_i64(), again["redelivered"].as_bool()),
        (Some(seqs[1]), Some(true))
    );
    send(&mut ws, json!({"type": "ack", "seq": seqs[1]})).await?;
    let d = next(&mut ws).await?;
    assert_eq!(d["seq"].as_i64(), Some(seqs[3]));
    // c is never acked: it comes back after the timeout.
    send(&mut ws, json!({"type": "ack", "seq": seqs[3]})).await?;
    let late = next(&mut ws).await?;
    assert_eq!(
        (late["seq"].as_i64(), late["redelivered"].as_bool()),
        (Some(seqs[2]), Some(true))
    );
    // Acking something not in flight is an error reply.
    send(&mut ws, json!({"type": "ack", "seq": seqs[0], "id": "dup"})).await?;
    let r = next(&mut ws).await?;
    assert_eq!(
        (r["id"].as_str(), r["error"]["code"].as_str()),
        (Some("dup"), Some("not_in_flight"))
    );
    send(&mut ws, json!({"type": "ack", "seq": seqs[2]})).await?;
    assert!(
        next_within(&mut ws, Duration::from_millis(1000))
            .await?
            .is_none(),
        "all acked: nothing more"
    );
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// A second connection for the same consumer takes over; the first is closed
/// with 4409, and the unacked event goes to the new one as a redelivery.
#[tokio::test]
async fn takeover_closes_the_first_connection() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let pgtide = Pgtide::start(&db.run_args()).await?;
    let mut first = connect(&pgtide).await?;
    subscribe(&mut first, "c2", json!({})).await?;
    let seq = publish(&pgtide, "q.x", 1).await?;
    assert_eq!(next(&mut first).await?["seq"].as_i64(), Some(seq));
    let mut second = connect(&pgtide).await?;
    subscribe(&mut second, "c2", json!({})).await?;
    let code = loop {
        match tokio::time::timeout(WAIT, first.next()).await? {
            Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
            Some(Ok(_)) => continue,
            other => bail!("expected close, got {other:?}"),
        }
    };
    assert_eq!(code, 4409);
    let e = next(&mut second).await?;
    assert_eq!(
        (e["seq"].as_i64(), e["redelivered"].as_bool()),
        (Some(seq), Some(true))
    );
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// Across `kill -9` of pgtide: acknowledged events are never sent again,
/// every unacknowledged one is, and nothing is skipped.
#[tokio::test]
async fn cursors_survive_kill_9() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let pgtide = Pgtide::start(&db.run_args()).await?;
    let mut ws = connect(&pgtide).await?;
    subscribe(&mut ws, "c3", json!({"max_in_flight": 5})).await?;
    let mut all = Vec::new();
    for n in 0..20 {
        all.push(publish(&pgtide, "q.work", n).await?);
    }
    let mut acked = BTreeSet::new();
    // Ack three of the first five, leave two unacknowledged.
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(next(&mut ws).await?["seq"].as_i64().unwrap());
    }
    for seq in [got[0], got[2], got[4]] {
        send(&mut ws, json!({"type": "ack", "seq": seq})).await?;
        acked.insert(seq);
    }
    // Let the acks land: the freed slots bring three more events.
    for _ in 0..3 {
        got.push(next(&mut ws).await?["seq"].as_i64().unwrap());
    }
    pgtide.kill9().await;
    drop(ws);

    let pgtide = Pgtide::start(&db.run_args()).await?;
    let mut ws = connect(&pgtide).await?;
    subscribe(&mut ws, "c3", json!({"max_in_flight": 5})).await?;
    let mut seen = BTreeSet::new();
    while seen.len() + acked.len() < all.len() {
        let e = next(&mut ws).await?;
        let seq = e["seq"].as_i64().unwrap();
        assert!(!acked.contains(&seq), "acknowledged event {seq} sent again");
        assert!(
            seen.insert(seq),
            "event {seq} sent twice after the restart without a nack"
        );
        // Sent before the crash and never acknowledged: marked as a redelivery.
        assert_eq!(
            e["redelivered"].as_bool().unwrap_or(false),
            got.contains(&seq),
            "{e}"
        );
        send(&mut ws, json!({"type": "ack", "seq": seq})).await?;
    }
    let expected: BTreeSet<i64> = all.iter().copied().filter(|s| !acked.contains(s)).collect();
    assert_eq!(seen, expected);
    assert!(
        next_within(&mut ws, Duration::from_millis(800))
            .await?
            .is_none()
    );
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}
