//! Limits that keep one client from hurting pgtide or reaching what it
//! should not: webhook targets on special-purpose addresses, the Socket.IO
//! frame limit on every transport, slow headers and the connection limit,
//! tokens without `exp`, and the bounds of `/ws/exactly-once` flow control.

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::harness::{Pgtide, Server, TestDb, WAIT, run_pgtide};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Creating a webhook on an address of the IANA special-purpose registries
/// is refused with 400 naming the range, also in the IPv6 forms that carry
/// an IPv4 address (IPv4-compatible, 6to4, NAT64, mapped), and nothing is
/// stored; a public address is still accepted.
#[tokio::test]
async fn webhooks_to_special_purpose_addresses_are_refused() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let pgtide = Pgtide::start(&db.run_args()).await?;
    for (url, named) in [
        ("http://[::127.0.0.1]/hook", "loopback"),
        ("http://[2002:7f00:1::]/hook", "loopback"),
        ("http://[64:ff9b::a9fe:a9fe]/latest", "link-local"),
        ("http://[::ffff:10.0.0.1]/hook", "private-use"),
        ("http://198.18.0.1/hook", "benchmarking"),
        ("http://198.19.255.254/hook", "benchmarking"),
        ("http://192.0.0.1/hook", "IPv4 service continuity"),
        ("http://192.0.0.100/hook", "IETF protocol assignment"),
        ("http://192.0.2.1/hook", "TEST-NET-1"),
        ("http://198.51.100.7/hook", "TEST-NET-2"),
        ("http://203.0.113.7/hook", "TEST-NET-3"),
        ("http://192.88.99.1/hook", "6to4 relay"),
        ("http://240.0.0.1/hook", "reserved"),
        ("http://224.0.0.1/hook", "multicast"),
        ("http://[2001:db8::1]/hook", "documentation"),
        ("http://[2001::1]/hook", "Teredo"),
        ("http://[100::1]/hook", "discard-only"),
        ("http://[fd12::1]/hook", "unique-local"),
        ("http://[ff02::1]/hook", "multicast"),
    ] {
        let r = pgtide
            .http()
            .post(pgtide.url("/v1/webhooks"))
            .json(&json!({"url": url}))
            .send()
            .await?;
        let status = r.status().as_u16();
        let body: Value = r.json().await?;
        assert_eq!(status, 400, "{url} -> {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(named) && message.contains("--webhook-allow-private"),
            "{url}: {message}"
        );
    }
    let listed: Value = pgtide
        .http()
        .get(pgtide.url("/v1/webhooks"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(listed["webhooks"], json!([]), "nothing was stored: {listed}");
    let r = pgtide
        .http()
        .post(pgtide.url("/v1/webhooks"))
        .json(&json!({"url": "https://[64:ff9b::808:808]/hook"}))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 201, "NAT64 of a public address is public");
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// The next JSON text frame of a WebSocket, within [`WAIT`].
async fn next_json(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .context("no frame in time")?;
        match msg {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(t.as_str())?),
            Some(Ok(Message::Close(frame))) => bail!("closed: {frame:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => bail!("read error: {e}"),
            None => bail!("connection ended"),
        }
    }
}

/// `/ws/exactly-once` refuses `ack_timeout_ms` below 1000 (1 ms made
/// 500–800 redeliveries a second) or above an hour, and `max_in_flight`
/// outside 1–1000, with `invalid_message` naming the field and its bounds;
/// the connection stays usable and a subscribe within the bounds succeeds.
#[tokio::test]
async fn exactly_once_flow_control_is_bounded() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let pgtide = Pgtide::start(&db.run_args()).await?;
    let url = pgtide
        .url("/ws/exactly-once")
        .replacen("http://", "ws://", 1);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    for (setting, needle) in [
        (json!({"ack_timeout_ms": 1}), "ack_timeout_ms must be an integer from 1000 to 3600000 (got 1)"),
        (json!({"ack_timeout_ms": 999}), "ack_timeout_ms must be an integer from 1000 to 3600000 (got 999)"),
        (json!({"ack_timeout_ms": -1}), "ack_timeout_ms must be an integer from 1000 to 3600000 (got -1)"),
        (json!({"max_in_flight": 10_000}), "max_in_flight must be an integer from 1 to 1000 (got 10000)"),
        (json!({"max_in_flight": 0}), "max_in_flight must be an integer from 1 to 1000 (got 0)"),
        (
            json!({"max_in_flight": 18_446_744_073_709_551_615u64}),
            "max_in_flight must be an integer from 1 to 1000",
        ),
    ] {
        let mut request = json!({"type": "subscribe", "topic": "q.*", "consumer": "c", "id": "s"});
        if let (Some(r), Some(s)) = (request.as_object_mut(), setting.as_object()) {
            r.extend(s.clone());
        }
        ws.send(Message::Text(request.to_string().into())).await?;
        let reply = next_json(&mut ws).await?;
        assert_eq!(
            (reply["id"].as_str(), reply["status"].as_str(), reply["error"]["code"].as_str()),
            (Some("s"), Some("error"), Some("invalid_message")),
            "{setting}: {reply}"
        );
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{setting}: {message}");
    }
    let ok = json!({"type": "subscribe", "topic": "q.*", "consumer": "c", "id": "ok",
        "ack_timeout_ms": 1000, "max_in_flight": 1000});
    ws.send(Message::Text(ok.to_string().into())).await?;
    let reply = next_json(&mut ws).await?;
    assert_eq!(reply["status"], "success", "{reply}");
    assert_eq!(reply["data"]["max_in_flight"], 1000);
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

const SECRET: &str = "test-secret-0123456789abcdef";

fn with_secret(db: &TestDb, extra: &[&str]) -> Vec<String> {
    let mut args = db.run_args();
    args.retain(|a| a != "--insecure-no-auth");
    args.extend(["--jwt-secret".into(), SECRET.into()]);
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

/// A correctly signed token without `exp` is refused with 401 naming why
/// (over HTTP and at the WebSocket upgrade), while a `pgtide token` one
/// (which always carries `exp`) is accepted; with
/// `--allow-tokens-without-exp` the token without `exp` is accepted.
#[tokio::test]
async fn tokens_without_exp_are_refused_by_default() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let forever = pgtide_auth::sign_hs256_claims(SECRET, &json!({"sub": "x", "role": "admin"}))?;
    let minted = {
        let out = run_pgtide(&[
            "token".into(),
            "--jwt-secret".into(),
            SECRET.into(),
            "--sub".into(),
            "x".into(),
        ])
        .await?;
        anyhow::ensure!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout)?.trim().to_owned()
    };
    let pgtide = Pgtide::start(&with_secret(&db, &[])).await?;
    let events = pgtide.url("/v1/events");
    let r = pgtide.http().get(&events).bearer_auth(&forever).send().await?;
    assert_eq!(r.status().as_u16(), 401);
    let body: Value = r.json().await?;
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("exp is missing") && message.contains("--allow-tokens-without-exp"),
        "{message}"
    );
    let ws_url = pgtide.url("/ws").replacen("http://", "ws://", 1);
    match tokio_tungstenite::connect_async(format!("{ws_url}?token={forever}")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 401)
        }
        other => panic!("expected 401 at the upgrade, got {other:?}"),
    }
    let r = pgtide.http().get(&events).bearer_auth(&minted).send().await?;
    assert_eq!(r.status().as_u16(), 200, "pgtide token sets exp");
    pgtide.stop().await?;

    let pgtide = Pgtide::start(&with_secret(&db, &["--allow-tokens-without-exp"])).await?;
    let r = pgtide
        .http()
        .get(pgtide.url("/v1/events"))
        .bearer_auth(&forever)
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 200, "allowed by the flag");
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}
