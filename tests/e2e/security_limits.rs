//! Limits that keep one client from hurting pgtide or reaching what it
//! should not: webhook targets on special-purpose addresses, the Socket.IO
//! frame limit on every transport, slow headers and the connection limit,
//! tokens without `exp`, and the bounds of `/ws/exactly-once` flow control.

use std::time::Duration;

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
    assert_eq!(
        listed["webhooks"],
        json!([]),
        "nothing was stored: {listed}"
    );
    let r = pgtide
        .http()
        .post(pgtide.url("/v1/webhooks"))
        .json(&json!({"url": "https://[64:ff9b::808:808]/hook"}))
        .send()
        .await?;
    assert_eq!(
        r.status().as_u16(),
        201,
        "NAT64 of a public address is public"
    );
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
        (
            json!({"ack_timeout_ms": 1}),
            "ack_timeout_ms must be an integer from 1000 to 3600000 (got 1)",
        ),
        (
            json!({"ack_timeout_ms": 999}),
            "ack_timeout_ms must be an integer from 1000 to 3600000 (got 999)",
        ),
        (
            json!({"ack_timeout_ms": -1}),
            "ack_timeout_ms must be an integer from 1000 to 3600000 (got -1)",
        ),
        (
            json!({"max_in_flight": 10_000}),
            "max_in_flight must be an integer from 1 to 1000 (got 10000)",
        ),
        (
            json!({"max_in_flight": 0}),
            "max_in_flight must be an integer from 1 to 1000 (got 0)",
        ),
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
            (
                reply["id"].as_str(),
                reply["status"].as_str(),
                reply["error"]["code"].as_str()
            ),
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
    let r = pgtide
        .http()
        .get(&events)
        .bearer_auth(&forever)
        .send()
        .await?;
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
    let r = pgtide
        .http()
        .get(&events)
        .bearer_auth(&minted)
        .send()
        .await?;
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

/// Runs `tests/clients/socketio-oversize.mjs` for `phase` against pgtide;
/// it must exit 0 and print one JSON line, which is returned.
async fn oversize_script(pgtide: &Pgtide, phase: &str) -> anyhow::Result<Value> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/clients/socketio-oversize.mjs");
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new("node")
            .arg(&script)
            .arg(&pgtide.base)
            .arg(phase)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("the node script did not finish in time")??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_str(stdout.trim())?)
}

/// A `/proc/<pid>/status` figure of the pgtide process, in KiB.
fn proc_status_kib(pgtide: &Pgtide, field: &str) -> anyhow::Result<u64> {
    let pid = pgtide.child.id().context("pgtide has exited")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// Stored events whose topic matches `pattern`.
async fn stored(pgtide: &Pgtide, pattern: &str) -> anyhow::Result<Vec<Value>> {
    let page = pgtide
        .events(&format!("topics={pattern}&limit=1000"))
        .await?;
    Ok(page["events"].as_array().cloned().unwrap_or_default())
}

/// The official `socket.io-client` publishing 10 MB over WebSocket and over
/// HTTP long-polling: both are refused (the connection is closed, no
/// success ack) and nothing is stored, while 512 KiB publishes on both
/// transports, sent first, are stored. Once those have warmed the buffers,
/// the 10 MB publishes raise the process's peak memory by less than 20 MB
/// (the issue saw 76 MB: 85 → 161 MB); the allocator's own growth is too
/// noisy for a tighter bound, and that the payload is never read whole is
/// shown by the frame-header test below.
#[tokio::test]
async fn socket_io_publishes_over_1_mib_are_refused_on_every_transport() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let pgtide = Pgtide::start(&db.run_args()).await?;
    let fits = oversize_script(&pgtide, "fits").await?;
    let peak_before = proc_status_kib(&pgtide, "VmHWM:")?;
    let big = oversize_script(&pgtide, "big").await?;
    let peak_after = proc_status_kib(&pgtide, "VmHWM:")?;
    for transport in ["websocket", "polling"] {
        assert_eq!(fits[transport], "acked:success", "{fits}");
        assert_eq!(
            stored(&pgtide, &format!("fits.{transport}")).await?.len(),
            1
        );
        let outcome = big[transport].as_str().unwrap_or_default();
        assert!(outcome.starts_with("disconnected:"), "{transport}: {big}");
    }
    let stored_big = stored(&pgtide, "big.*").await?;
    assert!(
        stored_big.is_empty(),
        "a 10 MB publish was stored: {:?}",
        stored_big.first().map(|e| &e["topic"])
    );
    assert!(
        peak_after.saturating_sub(peak_before) < 20 * 1000,
        "peak memory grew {peak_before} → {peak_after} KiB"
    );
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// The next engine.io text frame of a hand-spoken Socket.IO connection.
async fn engine_io_frame(ws: &mut Ws) -> anyhow::Result<String> {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .context("no frame in time")?;
        match msg {
            Some(Ok(Message::Text(t))) if t.as_str() == "2" => {
                ws.send(Message::Text("3".into())).await?;
            }
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => bail!("read error: {e}"),
            None => bail!("connection ended"),
        }
    }
}

/// Over Socket.IO's WebSocket transport, a frame whose header declares
/// 10 MB is refused on the header: having sent the header and only 256 KiB
/// of the payload, the client sees the connection closed, so the server
/// never waits for (or buffers) the other 9.7 MB. Nothing is stored.
#[tokio::test]
async fn socket_io_websocket_frame_declaring_10_mb_is_cut_off_on_its_header() -> anyhow::Result<()>
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let server = Server::shared().await?;
    let db = server.database().await?;
    let pgtide = Pgtide::start(&db.run_args()).await?;
    let url = pgtide
        .url("/socket.io/?EIO=4&transport=websocket")
        .replacen("http://", "ws://", 1);
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .context("no WebSocket in time")??;
    let open = engine_io_frame(&mut ws).await?;
    anyhow::ensure!(open.starts_with('0'), "no engine.io open packet: {open}");
    ws.send(Message::Text("40".into())).await?;
    let connected = engine_io_frame(&mut ws).await?;
    anyhow::ensure!(connected.starts_with("40"), "not connected: {connected}");

    // From here on the client writes raw frames: a masked text frame
    // declaring 10 MB, and only the first 256 KiB of it.
    let MaybeTlsStream::Plain(tcp) = ws.get_mut() else {
        bail!("expected a plain TCP stream");
    };
    const DECLARED: u64 = 10 * 1000 * 1000;
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x81u8, 0x80 | 127];
    frame.extend_from_slice(&DECLARED.to_be_bytes());
    frame.extend_from_slice(&mask);
    let mut payload = br#"42["publish",{"topic":"big.raw","data":{"blob":""#.to_vec();
    payload.resize(256 * 1024, b'x');
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    let written = tokio::time::timeout(WAIT, tcp.write_all(&frame)).await;
    let cut_off = match written {
        Ok(Err(_)) => true, // reset while writing: refused
        Err(_) => bail!("writing 256 KiB took longer than {WAIT:?}"),
        Ok(Ok(())) => {
            // Closed means EOF, a reset, or a close frame (opcode 8).
            tokio::time::timeout(Duration::from_secs(10), async {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return true,
                        Ok(_) if buf[0] == 0x88 => return true,
                        Ok(_) => continue,
                    }
                }
            })
            .await
            .unwrap_or(false)
        }
    };
    assert!(
        cut_off,
        "the server kept the connection open, waiting for the rest of the 10 MB frame"
    );
    assert!(stored(&pgtide, "big.*").await?.is_empty());
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// Over Socket.IO's HTTP long-polling transport, a POST declaring a 10 MB
/// body gets 413 once the first MiB is past, while the client has sent only
/// 2 MiB: the body is refused as it streams, never read whole. Nothing is
/// stored.
#[tokio::test]
async fn socket_io_polling_body_over_1_mib_is_refused_as_it_streams() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let server = Server::shared().await?;
    let db = server.database().await?;
    let pgtide = Pgtide::start(&db.run_args()).await?;
    let polling = pgtide.url("/socket.io/?EIO=4&transport=polling");
    let open = pgtide.http().get(&polling).send().await?.text().await?;
    let sid = open
        .strip_prefix('0')
        .and_then(|json| serde_json::from_str::<Value>(json).ok())
        .and_then(|v| v["sid"].as_str().map(str::to_owned))
        .with_context(|| format!("no engine.io open packet: {open}"))?;
    let with_sid = format!("{polling}&sid={sid}");
    let r = pgtide.http().post(&with_sid).body("40").send().await?;
    anyhow::ensure!(r.status().is_success(), "connect packet -> {}", r.status());

    let addr = pgtide.base.trim_start_matches("http://");
    let mut tcp = TcpStream::connect(addr).await?;
    let path = with_sid.trim_start_matches(pgtide.base.as_str());
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: 10000000\r\n\r\n"
    );
    let mut body = br#"42["publish",{"topic":"big.poll","data":{"blob":""#.to_vec();
    body.resize(2 * 1024 * 1024, b'x');
    let mut request = head.into_bytes();
    request.extend_from_slice(&body);
    // The server may answer and close while this is still being written.
    let _ = tokio::time::timeout(WAIT, tcp.write_all(&request)).await;
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        while !response.windows(4).any(|w| w == b"\r\n\r\n") {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => response.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&response);
    assert!(
        read.is_ok() && text.starts_with("HTTP/1.1 413"),
        "no 413 while the body was unfinished: {text:?}"
    );
    assert!(stored(&pgtide, "big.*").await?.is_empty());
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// A client sending its request headers one byte a second is cut off once
/// `--header-read-timeout` (2 s here) has passed, long before its headers
/// (about 40 bytes) are complete; a client on time is served.
#[tokio::test]
async fn slow_headers_are_cut_off_at_the_header_read_timeout() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let server = Server::shared().await?;
    let db = server.database().await?;
    let mut args = db.run_args();
    args.extend(["--header-read-timeout".into(), "2s".into()]);
    let pgtide = Pgtide::start(&args).await?;
    let addr = pgtide.base.trim_start_matches("http://").to_owned();
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n");

    let started = std::time::Instant::now();
    let tcp = TcpStream::connect(&addr).await?;
    let (mut read, mut write) = tcp.into_split();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let dribble = async {
        for byte in request.as_bytes() {
            tick.tick().await;
            if write.write_all(&[*byte]).await.is_err() {
                break;
            }
        }
        std::future::pending::<()>().await
    };
    let closed = async {
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return answer,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    };
    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::select! {
            answer = closed => answer,
            () = dribble => unreachable!("dribbling never ends by itself"),
        }
    })
    .await;
    let elapsed = started.elapsed();
    let answer = outcome.map_err(|_| {
        anyhow::anyhow!("a slow client kept its connection for 10 s with a 2 s header read timeout")
    })?;
    let text = String::from_utf8_lossy(&answer);
    assert!(
        !text.contains("200 OK"),
        "the slow request was served: {text:?}"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "cut off only after {elapsed:?}"
    );

    // A fresh client: the harness's pooled connection has been idle past
    // the header read timeout, which also ends idle keep-alive connections.
    let r = reqwest::Client::new()
        .get(pgtide.url("/healthz"))
        .send()
        .await?;
    assert!(r.status().is_success());
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// With `--max-connections 3`, no more than three connections are open at
/// once, upgraded WebSockets included: the next client waits (its upgrade
/// does not complete) until one closes, and then is served.
#[tokio::test]
async fn connections_beyond_the_limit_wait_until_one_closes() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let mut args = db.run_args();
    args.extend(["--max-connections".into(), "3".into()]);
    let pgtide = Pgtide::start(&args).await?;
    let url = pgtide.url("/ws").replacen("http://", "ws://", 1);
    // The harness's own keep-alive connection (from waiting for readiness)
    // may hold one of the three.
    let mut held = Vec::new();
    let mut pending = loop {
        let mut attempt = Box::pin(tokio_tungstenite::connect_async(url.clone()));
        match tokio::time::timeout(Duration::from_secs(1), &mut attempt).await {
            Ok(ws) => held.push(ws?.0),
            Err(_) => break attempt,
        }
        anyhow::ensure!(
            held.len() <= 3,
            "{} WebSockets open with --max-connections 3",
            held.len()
        );
    };
    assert!(
        held.len() >= 2,
        "only {} WebSockets before the limit",
        held.len()
    );
    let mut first = held.remove(0);
    first.close(None).await?;
    tokio::time::timeout(WAIT, async { while first.next().await.is_some() {} })
        .await
        .context("the closed WebSocket did not end")?;
    let (mut waiting, _) = tokio::time::timeout(WAIT, &mut pending)
        .await
        .context("the waiting client was not served after a connection closed")??;
    waiting
        .send(Message::Text(
            json!({"type": "ping", "id": 1}).to_string().into(),
        ))
        .await?;
    let pong = next_json(&mut waiting).await?;
    assert_eq!(pong["data"]["pong"], true, "{pong}");
    drop(held);
    drop(waiting);
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}
