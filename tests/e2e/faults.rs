//! PostgreSQL faults at run time (SPEC §13): none ends the process. Under a
//! write load whose every change a row trigger also writes to an uncaptured
//! table (an oracle that does not read pgtide's output), the walsender and
//! the pool backends are terminated, the server restarted fast and crashed,
//! and kept down for seconds; afterwards every committed change is an event
//! exactly once, in strictly increasing `seq`, from the same process. Faults
//! that waiting cannot heal (a dropped slot or publication) keep it up too,
//! with `/readyz` naming the problem and its fix, and the slot is never
//! quietly re-created.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use pgtide_pg::local::LocalOptions;
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::harness::{Pgtide, Server, TestDb, WAIT, assert_seqs_strictly_increasing, connect};

/// `t` is captured; `oracle` is not, and a trigger writes each change of
/// `t` into it in the same transaction.
async fn prepare(db: &TestDb) -> anyhow::Result<()> {
    db.client()
        .await?
        .batch_execute(
            "CREATE TABLE t (id bigserial PRIMARY KEY, v int NOT NULL);
             CREATE TABLE oracle (n bigserial PRIMARY KEY, op text NOT NULL, id bigint NOT NULL, v int NOT NULL);
             CREATE FUNCTION record() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 INSERT INTO oracle (op, id, v) VALUES (lower(TG_OP), NEW.id, NEW.v);
                 RETURN NEW;
             END $$;
             CREATE TRIGGER record AFTER INSERT OR UPDATE ON t FOR EACH ROW EXECUTE FUNCTION record();",
        )
        .await?;
    Ok(())
}

/// Transactions of five inserts and one update, `per_second` of them,
/// until stopped, reconnecting whenever the server goes away.
fn write_load(url: String, stop: Arc<AtomicBool>, per_second: u64) -> JoinHandle<u64> {
    tokio::spawn(async move {
        let mut committed = 0;
        let mut pace = tokio::time::interval(Duration::from_micros(1_000_000 / per_second));
        while !stop.load(Ordering::Relaxed) {
            let Ok(client) = connect(&url).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            while !stop.load(Ordering::Relaxed) {
                pace.tick().await;
                match client
                    .batch_execute(
                        "BEGIN;
                         INSERT INTO t (v) SELECT g FROM generate_series(1, 5) g;
                         UPDATE t SET v = v + 100 WHERE id = (SELECT max(id) - 2 FROM t);
                         COMMIT;",
                    )
                    .await
                {
                    Ok(()) => committed += 1,
                    Err(_) => break,
                }
            }
        }
        committed
    })
}

/// Each committed change as `(op, id, v)`, with how many times it happened.
type Changes = BTreeMap<(String, i64, i64), usize>;

async fn oracle(url: &str) -> anyhow::Result<Changes> {
    let mut out = Changes::new();
    for row in connect(url)
        .await?
        .query("SELECT op, id, v::bigint FROM oracle", &[])
        .await?
    {
        *out.entry((row.get(0), row.get(1), row.get(2))).or_default() += 1;
    }
    Ok(out)
}

fn changes_of(events: &[Value]) -> Changes {
    let mut out = Changes::new();
    for e in events {
        let op = match e["type"].as_str() {
            Some("row.inserted") => "insert",
            Some("row.updated") => "update",
            _ => continue,
        };
        let key = (
            op.to_owned(),
            e["data"]["id"].as_i64().unwrap_or(-1),
            e["data"]["v"].as_i64().unwrap_or(-1),
        );
        *out.entry(key).or_default() += 1;
    }
    out
}

/// Waits until the events cover the oracle, then checks they are exactly
/// its changes, each once, in strictly increasing `seq`.
async fn assert_events_equal_oracle(pgtide: &Pgtide, url: &str) -> anyhow::Result<()> {
    let truth = oracle(url).await?;
    let total: usize = truth.values().sum();
    let events = pgtide.wait_events(total).await?;
    assert_seqs_strictly_increasing(&events);
    let seen = changes_of(&events);
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(3).collect();
    assert!(twice.is_empty(), "changes stored twice: {twice:?}");
    let missing: Vec<_> = truth
        .keys()
        .filter(|k| !seen.contains_key(*k))
        .take(3)
        .collect();
    assert!(
        missing.is_empty(),
        "committed changes never delivered: {missing:?}"
    );
    assert_eq!(seen, truth, "events differ from the committed changes");
    Ok(())
}

fn args(db: &TestDb) -> Vec<String> {
    let mut args = db.run_args();
    args.extend(["--capture".to_owned(), "t".to_owned()]);
    args
}

/// The highest `seq` stored so far (0 when none).
async fn last_seq(pgtide: &Pgtide) -> anyhow::Result<i64> {
    let stats: Value = pgtide
        .http()
        .get(pgtide.url("/v1/events/stats"))
        .send()
        .await?
        .json()
        .await?;
    Ok(stats["last_seq"].as_i64().unwrap_or(0))
}

/// After a fault: the stream resumed (more events than before it) and the
/// process is the same one, still running.
async fn recovered(pgtide: &mut Pgtide, fault: &str) -> anyhow::Result<()> {
    let before = loop {
        match last_seq(pgtide).await {
            Ok(n) => break n,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    pgtide.wait_seq(before + 300).await?;
    pgtide.wait_ready().await?;
    if let Some(status) = pgtide.child.try_wait()? {
        bail!("pgtide exited after {fault}: {status}");
    }
    Ok(())
}

async fn readyz(pgtide: &Pgtide) -> anyhow::Result<(u16, Value)> {
    let r = pgtide.http().get(pgtide.url("/readyz")).send().await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await?))
}

/// Waits until `/readyz` answers `want`, returning its body.
async fn wait_readyz(pgtide: &Pgtide, want: u16) -> anyhow::Result<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok((status, body)) = readyz(pgtide).await
            && status == want
        {
            return Ok(body);
        }
        if Instant::now() > deadline {
            bail!("/readyz never answered {want}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metric(pgtide: &Pgtide, name: &str) -> anyhow::Result<i64> {
    let text = pgtide
        .http()
        .get(pgtide.url("/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(-1))
}

/// The whole fault matrix under a write load, one pgtide process through
/// all of it: walsender terminated, pool backends terminated, fast restart,
/// crash (immediate) restart, the server down for five seconds (`/readyz`
/// 503 meanwhile). Every committed change is an event exactly once.
#[tokio::test]
async fn postgres_faults_never_end_the_process() -> anyhow::Result<()> {
    let mut server = Server::own(LocalOptions {
        fast_unsafe: true,
        settings: Vec::new(),
    })
    .await?;
    let db = server.database().await?;
    prepare(&db).await?;
    let mut pgtide = Pgtide::start(&args(&db)).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let writer_url = format!("{}&application_name=oracle-writer", db.url);
    let load = write_load(writer_url, stop.clone(), 300);
    pgtide.wait_seq(300).await?;
    let admin = db.client().await?;

    admin
        .execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
              WHERE slot_name = $1 AND active_pid IS NOT NULL",
            &[&db.slot],
        )
        .await?;
    recovered(&mut pgtide, "the walsender was terminated").await?;

    admin
        .batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE datname = current_database() AND pid <> pg_backend_pid()
                AND backend_type = 'client backend' AND application_name <> 'oracle-writer'",
        )
        .await?;
    recovered(&mut pgtide, "its pool backends were terminated").await?;
    drop(admin);

    let local = server.local.as_mut().expect("own server");
    local.restart().await?;
    recovered(&mut pgtide, "a fast restart").await?;

    let local = server.local.as_mut().expect("own server");
    local.crash_restart().await?;
    recovered(&mut pgtide, "a crash restart").await?;

    let local = server.local.as_mut().expect("own server");
    let down = Instant::now();
    local.stop_for_now().await;
    let body = wait_readyz(&pgtide, 503).await?;
    assert_eq!(body["status"], "not_ready", "{body}");
    // The outage lasts five seconds; nothing waits on this for a signal.
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(down.elapsed())).await;
    let local = server.local.as_mut().expect("own server");
    local.start_again().await?;
    recovered(&mut pgtide, "five seconds down").await?;

    stop.store(true, Ordering::Relaxed);
    let committed = load.await?;
    assert!(committed > 300, "the load ran ({committed} transactions)");
    assert_events_equal_oracle(&pgtide, &db.url).await?;
    let reconnects = metric(&pgtide, "pgtide_replication_reconnects_total").await?;
    assert!(reconnects >= 4, "reconnects counted: {reconnects}");
    assert!(
        pgtide.child.try_wait()?.is_none(),
        "pgtide is still running"
    );
    pgtide.stop().await?;
    Ok(())
}

/// Someone drops the slot while pgtide streams it: pgtide stays up,
/// `/readyz` is 503 naming the slot and the fix, and pgtide does not create
/// a new slot by itself (that would skip every change made meanwhile).
/// Someone drops the publication: the same, naming the publication.
#[tokio::test]
async fn a_dropped_slot_or_publication_is_reported_not_papered_over() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    prepare(&db).await?;
    let mut pgtide = Pgtide::start(&args(&db)).await?;
    let admin = db.client().await?;
    admin
        .batch_execute("INSERT INTO t (v) SELECT g FROM generate_series(1, 10) g")
        .await?;
    pgtide.wait_seq(10).await?;

    // Drop the publication first: the slot goes on, the stream cannot.
    admin
        .batch_execute(&format!("DROP PUBLICATION {}", db.publication))
        .await?;
    admin
        .execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
              WHERE slot_name = $1 AND active_pid IS NOT NULL",
            &[&db.slot],
        )
        .await?;
    let body = wait_readyz(&pgtide, 503).await?;
    let problem = wait_problem(&pgtide, "publication").await?;
    assert!(problem.contains(&db.publication), "{problem} / {body}");
    assert!(problem.contains("Fix:"), "{problem}");
    assert!(pgtide.child.try_wait()?.is_none(), "pgtide exited");

    // Now the slot: end its walsender and drop it (it may be taken again
    // between the two, so until the drop succeeds).
    let deadline = Instant::now() + WAIT;
    loop {
        admin
            .execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
                  WHERE slot_name = $1 AND active_pid IS NOT NULL",
                &[&db.slot],
            )
            .await?;
        if admin
            .execute("SELECT pg_drop_replication_slot($1)", &[&db.slot])
            .await
            .is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "the slot could not be dropped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let problem = wait_problem(&pgtide, "replication slot").await?;
    assert!(problem.contains(&db.slot), "{problem}");
    assert!(problem.contains("will not re-create"), "{problem}");
    // Through another retry, the slot stays gone and pgtide stays up.
    let reconnects = metric(&pgtide, "pgtide_replication_reconnects_total").await?;
    let deadline = Instant::now() + WAIT;
    while metric(&pgtide, "pgtide_replication_reconnects_total").await? <= reconnects {
        assert!(Instant::now() < deadline, "no further retry");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let slots: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&db.slot],
        )
        .await?
        .get(0);
    assert_eq!(slots, 0, "pgtide re-created the slot by itself");
    assert!(pgtide.child.try_wait()?.is_none(), "pgtide exited");
    let (status, _) = readyz(&pgtide).await?;
    assert_eq!(status, 503);
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// Waits until `/readyz` reports a problem mentioning `about`.
async fn wait_problem(pgtide: &Pgtide, about: &str) -> anyhow::Result<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, body) = readyz(pgtide).await?;
        if let Some(problem) = body["replication"]["problem"].as_str()
            && problem.contains(about)
        {
            return Ok(problem.to_owned());
        }
        if Instant::now() > deadline {
            bail!("/readyz never named a problem about {about}: {body}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket on `path` of `pgtide` whose `subscribe` (with `fields`) was
/// answered: the connection is fully open.
async fn subscribed(pgtide: &Pgtide, path: &str, fields: &str) -> anyhow::Result<Ws> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let url = pgtide.url(path).replacen("http://", "ws://", 1);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    let frame = format!(r#"{{"type":"subscribe","id":1,{fields}}}"#);
    ws.send(Message::Text(frame.into())).await?;
    let reply = tokio::time::timeout(WAIT, ws.next())
        .await?
        .ok_or_else(|| anyhow::anyhow!("connection ended"))??;
    anyhow::ensure!(reply.is_text(), "subscribe answered {reply:?}");
    Ok(ws)
}

/// SIGTERM: every open WebSocket (`/ws` and `/ws/exactly-once`) gets a
/// 1001 close frame, and the process exits cleanly within
/// `--shutdown-timeout`.
#[tokio::test]
async fn sigterm_closes_websockets_with_1001_in_time() -> anyhow::Result<()> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    let server = Server::shared().await?;
    let db = server.database().await?;
    let mut args = db.run_args();
    args.extend(["--shutdown-timeout".into(), "5s".into()]);
    let pgtide = Pgtide::start(&args).await?;
    let mut live = subscribed(&pgtide, "/ws", r#""topic":"**""#).await?;
    let mut durable = subscribed(
        &pgtide,
        "/ws/exactly-once",
        r#""topic":"**","consumer":"c1""#,
    )
    .await?;
    let asked = Instant::now();
    let pid = pgtide.child.id().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    for ws in [&mut live, &mut durable] {
        let code = tokio::time::timeout(WAIT, async {
            while let Some(message) = ws.next().await {
                if let Message::Close(frame) = message? {
                    return anyhow::Ok(frame.map(|f| f.code));
                }
            }
            anyhow::Ok(None)
        })
        .await??;
        assert_eq!(code, Some(CloseCode::Away), "close frame");
    }
    let status = pgtide.stop().await?;
    assert!(status.success(), "{status}");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    db.cleanup().await;
    Ok(())
}

/// Two nodes under a write load; the one streaming the slot is killed
/// (`kill -9`). The other takes the slot over within 10 seconds, and a
/// WebSocket subscriber on it receives every committed change exactly once,
/// in `seq` order, across the takeover.
#[tokio::test]
async fn the_streaming_node_dies_and_the_other_takes_over() -> anyhow::Result<()> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;

    let server = Server::shared().await?;
    let db = server.database().await?;
    prepare(&db).await?;
    let first = Pgtide::start(&args(&db)).await?;
    let mut second = Pgtide::spawn(&args(&db)).await?;
    second.wait_ready().await?;
    let (_, body) = readyz(&second).await?;
    assert_eq!(body["replication"]["standby"], true, "{body}");

    let mut ws = subscribed(&second, "/ws", r#""topic":"tables.t.*""#).await?;
    let (received_tx, mut received) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let reader = tokio::spawn(async move {
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Text(text) = message
                && let Ok(v) = serde_json::from_str::<Value>(text.as_str())
                && v.get("topic").is_some()
                && received_tx.send(v).is_err()
            {
                break;
            }
        }
    });

    let stop = Arc::new(AtomicBool::new(false));
    let load = write_load(db.url.clone(), stop.clone(), 100);
    first.wait_seq(300).await?;
    first.kill9().await;
    let killed = Instant::now();
    let deadline = killed + WAIT;
    loop {
        let (_, body) = readyz(&second).await?;
        if body["replication"]["streaming"] == true {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slot was never taken over: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(10), "takeover took {took:?}");
    let after = last_seq(&second).await?;
    second.wait_seq(after + 300).await?;
    stop.store(true, Ordering::Relaxed);
    load.await?;

    let truth = oracle(&db.url).await?;
    let total: usize = truth.values().sum();
    let mut events = Vec::new();
    let deadline = Instant::now() + WAIT;
    while events.len() < total {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, received.recv()).await {
            Ok(Some(e)) => {
                assert_ne!(
                    e["topic"], "meta.ws",
                    "the subscriber was dropped events: {e}"
                );
                events.push(e);
            }
            _ => bail!("the subscriber got {} of {total} changes", events.len()),
        }
    }
    assert_seqs_strictly_increasing(&events);
    assert_eq!(
        changes_of(&events),
        truth,
        "the subscriber's events differ from the changes"
    );
    reader.abort();
    second.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// A burst larger than a connection's queue (one transaction of 2,000 rows
/// is one batch for the tailer) reaches a subscriber that reads as fast as
/// it can whole: the queue's bound drops events only for a client that
/// really falls behind, not for a burst a fast one absorbs.
#[tokio::test]
async fn a_fast_subscriber_absorbs_a_burst_larger_than_its_queue() -> anyhow::Result<()> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;

    let server = Server::shared().await?;
    let db = server.database().await?;
    prepare(&db).await?;
    let pgtide = Pgtide::start(&args(&db)).await?;
    let mut ws = subscribed(&pgtide, "/ws", r#""topic":"tables.t.insert""#).await?;
    db.client()
        .await?
        .batch_execute("INSERT INTO t (v) SELECT g FROM generate_series(1, 2000) g")
        .await?;
    let mut events = Vec::new();
    tokio::time::timeout(WAIT, async {
        while events.len() < 2000 {
            let Some(message) = ws.next().await else {
                bail!("connection ended after {} events", events.len());
            };
            if let Message::Text(text) = message? {
                let v: Value = serde_json::from_str(text.as_str())?;
                assert_ne!(
                    v["topic"], "meta.ws",
                    "a fast subscriber was dropped events: {v}"
                );
                events.push(v);
            }
        }
        anyhow::Ok(())
    })
    .await??;
    assert_seqs_strictly_increasing(&events);
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}
