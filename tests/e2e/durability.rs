//! Nothing lost, nothing twice: crashes, server restarts, cut connections,
//! and idle slots that must keep moving.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use pgtide_pg::local::LocalOptions;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::harness::{Pgtide, Server, TestDb, WAIT, assert_seqs_strictly_increasing, connect};

/// Inserts 5-row transactions into `t` at about 400 a second until stopped,
/// riding out errors (a restarting server) by reconnecting. The table is the
/// truth afterwards. The pace only keeps the volume checkable; nothing waits
/// on it.
fn write_load(url: String, stop: Arc<AtomicBool>) -> JoinHandle<u64> {
    tokio::spawn(async move {
        let mut committed = 0;
        let mut pace = tokio::time::interval(Duration::from_micros(2500));
        while !stop.load(Ordering::Relaxed) {
            let Ok(client) = connect(&url).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            while !stop.load(Ordering::Relaxed) {
                pace.tick().await;
                match client
                    .batch_execute(
                        "BEGIN; INSERT INTO t (v) SELECT g FROM generate_series(1, 5) g; COMMIT;",
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

/// The ids in `t`, the truth the events must equal.
async fn table_ids(url: &str) -> anyhow::Result<BTreeSet<i64>> {
    let client = connect(url).await?;
    Ok(client
        .query("SELECT id FROM t", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Waits until the events cover every row of `t`, then checks they are
/// exactly those rows, each once, in strictly increasing `seq`.
async fn assert_events_equal_rows(pgtide: &Pgtide, url: &str) -> anyhow::Result<()> {
    let ids = table_ids(url).await?;
    let events = pgtide.wait_events(ids.len()).await?;
    let seen: Vec<i64> = events
        .iter()
        .map(|e| e["data"]["id"].as_i64().unwrap_or(-1))
        .collect();
    let unique: BTreeSet<i64> = seen.iter().copied().collect();
    assert_eq!(seen.len(), unique.len(), "an event was stored twice");
    assert_eq!(unique, ids, "events differ from the table's rows");
    assert_seqs_strictly_increasing(&events);
    Ok(())
}

async fn prepare(db: &TestDb) -> anyhow::Result<()> {
    db.client()
        .await?
        .batch_execute("CREATE TABLE t (id bigserial PRIMARY KEY, v int)")
        .await?;
    Ok(())
}

fn args(db: &TestDb, url: &str) -> Vec<String> {
    let mut args = db.run_args();
    args[2] = url.to_owned();
    args.extend(["--capture".to_owned(), "t".to_owned()]);
    args
}

/// `kill -9` of pgtide under a write load, five times, then a restart: the
/// events equal the changes, none twice, `seq` strictly increasing.
#[tokio::test]
async fn kill_9_under_load_loses_nothing_and_duplicates_nothing() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    prepare(&db).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut pgtide = Pgtide::start(&args(&db, &db.url)).await?;
    let load = write_load(db.url.clone(), stop.clone());
    for round in 1..=5 {
        // Let some events be stored, so the crash lands mid-stream.
        pgtide.wait_seq(round * 500).await?;
        pgtide.kill9().await;
        pgtide = Pgtide::start(&args(&db, &db.url)).await?;
    }
    stop.store(true, Ordering::Relaxed);
    let committed = load.await?;
    assert!(committed > 100, "the load ran ({committed} transactions)");
    assert_events_equal_rows(&pgtide, &db.url).await?;
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// PostgreSQL restarted mid-stream: pgtide reconnects and resumes.
#[tokio::test]
async fn postgres_restart_mid_stream() -> anyhow::Result<()> {
    let mut server = Server::own(LocalOptions {
        fast_unsafe: true,
        settings: Vec::new(),
    })
    .await?;
    let db = server.database().await?;
    prepare(&db).await?;
    let pgtide = Pgtide::start(&args(&db, &db.url)).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let load = write_load(db.url.clone(), stop.clone());
    pgtide.wait_seq(500).await?;
    let local = server.local.as_mut().expect("own server");
    local.restart().await?;
    // After the restart, more writes must still flow through.
    let after_restart = table_ids(&db.url).await?.len();
    pgtide.wait_seq(after_restart as i64 + 500).await?;
    stop.store(true, Ordering::Relaxed);
    load.await?;
    assert_events_equal_rows(&pgtide, &db.url).await?;
    pgtide.stop().await?;
    Ok(())
}

/// A TCP proxy whose connections the test can cut, like a network failure.
struct CuttableProxy {
    port: u16,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl CuttableProxy {
    async fn start(upstream_port: u16) -> anyhow::Result<CuttableProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let registry = conns.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", upstream_port)).await
                else {
                    continue;
                };
                let handle = tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
                registry.lock().await.push(handle);
            }
        });
        Ok(CuttableProxy { port, conns })
    }

    /// Drops every open connection at once.
    async fn cut(&self) -> usize {
        let mut conns = self.conns.lock().await;
        let n = conns.len();
        for c in conns.drain(..) {
            c.abort();
        }
        n
    }
}

/// Every connection pgtide has (replication and store) cut mid-stream:
/// it reconnects, and the events still equal the rows.
#[tokio::test]
async fn connection_cut_mid_stream() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    prepare(&db).await?;
    let port: u16 = {
        let client = db.client().await?;
        client
            .query_one("SELECT current_setting('port')::int", &[])
            .await?
            .get::<_, i32>(0) as u16
    };
    let proxy = CuttableProxy::start(port).await?;
    let proxied = db
        .url
        .replacen(&format!(":{port}/"), &format!(":{}/", proxy.port), 1);
    assert_ne!(proxied, db.url, "proxy URL rewrite");
    let pgtide = Pgtide::start(&args(&db, &proxied)).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let load = write_load(db.url.clone(), stop.clone());
    for round in 1..=2 {
        pgtide.wait_seq(round * 500).await?;
        assert!(proxy.cut().await > 0, "there were connections to cut");
    }
    pgtide
        .wait_events(table_ids(&db.url).await?.len() + 100)
        .await?;
    stop.store(true, Ordering::Relaxed);
    load.await?;
    assert_events_equal_rows(&pgtide, &db.url).await?;
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// While captured tables are idle and others write WAL, the slot's confirmed
/// position still moves, so WAL does not pile up behind it.
#[tokio::test]
async fn idle_slot_keeps_moving() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    prepare(&db).await?;
    let client = db.client().await?;
    client
        .batch_execute("CREATE TABLE other (id serial PRIMARY KEY, v text)")
        .await?;
    let pgtide = Pgtide::start(&args(&db, &db.url)).await?;
    client
        .batch_execute("INSERT INTO other (v) SELECT md5(g::text) FROM generate_series(1, 20000) g")
        .await?;
    let target: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    let deadline = Instant::now() + WAIT;
    loop {
        let passed: bool = client
            .query_one(
                "SELECT coalesce(confirmed_flush_lsn >= $1::text::pg_lsn, false) FROM pg_replication_slots WHERE slot_name = $2",
                &[&target, &db.slot],
            )
            .await?
            .get(0);
        if passed {
            break;
        }
        if Instant::now() > deadline {
            bail!("slot did not move past {target} while idle");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready: Value = pgtide
        .http()
        .get(pgtide.url("/readyz"))
        .send()
        .await?
        .json()
        .await?;
    assert!(ready["replication"]["lag_bytes"].is_i64(), "{ready}");
    assert_eq!(
        pgtide.all_events(0).await?.len(),
        0,
        "no events from an uncaptured table"
    );
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}
