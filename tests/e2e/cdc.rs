//! Row changes through real replication into events.

use serde_json::{Value, json};

use crate::harness::{Pgtide, Server, assert_seqs_strictly_increasing};

async fn start(db: &crate::harness::TestDb, capture: &str) -> anyhow::Result<Pgtide> {
    let mut args = db.run_args();
    args.extend(["--capture".to_owned(), capture.to_owned()]);
    Pgtide::start(&args).await
}

/// Every type of SPEC §3 arrives in its contract JSON form.
#[tokio::test]
async fn values_have_their_contract_json_form() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let client = db.client().await?;
    client
        .batch_execute(
            "CREATE TYPE mood AS ENUM ('ok', 'happy');
             CREATE DOMAIN posint AS int CHECK (VALUE > 0);
             CREATE TABLE t (
                id int PRIMARY KEY, b bool, i2 int2, i4 int4, i8 int8, o oid,
                f4 float4, f8 float8, f_nan float8, f_inf float8, f_ninf float8,
                n numeric, j json, jb jsonb, txt text, ts timestamptz, tsn timestamp,
                d date, u uuid, by bytea, iv interval, ia int[], ta text[], na numeric[],
                fa float8[], ja jsonb[], m mood, ma mood[], p posint, nul text, i2d int[][])",
        )
        .await?;
    let pgtide = start(&db, "public.t").await?;
    client
        .batch_execute(
            r#"SET TimeZone = 'America/New_York'; SET DateStyle = 'SQL, DMY';
             INSERT INTO t VALUES (
                1, true, 2, 4, 9007199254740993, 42,
                1.5, 0.1, 'NaN', 'Infinity', '-Infinity',
                '12345678901234567890.000000000000000001', '{"a": 1.000000000000000000001}',
                '{"big": 123456789012345678901234567890}', 'hello "world"',
                '2026-03-04 12:00:00.123456+00', '2026-03-04 12:00:00',
                '2026-03-04', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\xdeadbeef', '1 day 02:03:04',
                '{1,NULL,3}', '{"a b","NULL",NULL,"q\"uote"}', '{1.10,NaN}',
                '{1.5,Infinity}', ARRAY['{"k": [1,2]}'::jsonb], 'happy', '{ok,happy}', 7, NULL, '{{1,2},{3,4}}')"#,
        )
        .await?;
    let events = pgtide.wait_events(1).await?;
    let data = &events[0]["data"];
    let expected = json!({
        "id": 1, "b": true, "i2": 2, "i4": 4, "i8": 9007199254740993_i64, "o": 42,
        "f4": 1.5, "f8": 0.1, "f_nan": "NaN", "f_inf": "Infinity", "f_ninf": "-Infinity",
        "n": "12345678901234567890.000000000000000001",
        "txt": "hello \"world\"",
        "ts": "2026-03-04 12:00:00.123456+00", "tsn": "2026-03-04 12:00:00",
        "d": "2026-03-04", "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "by": "\\xdeadbeef",
        "iv": "1 day 02:03:04", "ia": [1, null, 3], "ta": ["a b", "NULL", null, "q\"uote"],
        "na": ["1.10", "NaN"], "fa": [1.5, "Infinity"], "ja": [{"k": [1, 2]}],
        "m": "happy", "ma": ["ok", "happy"], "p": 7, "nul": null, "i2d": [[1, 2], [3, 4]],
    });
    for (key, want) in expected.as_object().unwrap() {
        assert_eq!(&data[key], want, "column {key}: {data}");
    }
    // JSON numbers keep every digit, end to end through the store and the API.
    let raw = serde_json::to_string(data)?;
    assert!(raw.contains("123456789012345678901234567890"), "{raw}");
    assert!(raw.contains("1.000000000000000000001"), "{raw}");
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// Insert, update, delete and truncate go to `tables.<table>.<op>` with their
/// types, images and `meta`; a non-public schema is prefixed.
#[tokio::test]
async fn row_operations_use_default_topics() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let client = db.client().await?;
    client
        .batch_execute(
            "CREATE TABLE orders (id int PRIMARY KEY, status text, total numeric);
             CREATE SCHEMA audit; CREATE TABLE audit.log (id int PRIMARY KEY, msg text);",
        )
        .await?;
    let pgtide = start(&db, "public.orders,audit.log").await?;
    client
        .batch_execute(
            "INSERT INTO orders VALUES (1, 'new', 9.99);
             UPDATE orders SET status = 'paid' WHERE id = 1;
             DELETE FROM orders WHERE id = 1;
             INSERT INTO audit.log VALUES (1, 'x');
             TRUNCATE orders;",
        )
        .await?;
    let events = pgtide.wait_events(5).await?;
    let summary: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["topic"].as_str().unwrap().to_owned(),
                e["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("tables.orders.insert".into(), "row.inserted".into()),
            ("tables.orders.update".into(), "row.updated".into()),
            ("tables.orders.delete".into(), "row.deleted".into()),
            ("tables.audit_log.insert".into(), "row.inserted".into()),
            ("tables.orders.truncate".into(), "table.truncated".into()),
        ]
    );
    assert_eq!(
        events[0]["data"],
        json!({"id": 1, "status": "new", "total": "9.99"})
    );
    assert_eq!(events[1]["data"]["status"], "paid");
    // REPLICA IDENTITY DEFAULT: the delete carries only the key.
    assert_eq!(events[2]["data"], json!({"id": 1}));
    let meta = &events[0]["meta"];
    assert_eq!(meta["table"], "public.orders");
    assert_eq!(meta["op"], "insert");
    assert!(meta["lsn"].as_str().unwrap().contains('/'), "{meta}");
    assert!(meta["xid"].is_u64());
    assert!(meta["commit_ts"].as_str().unwrap().ends_with('Z'));
    for e in &events {
        assert_eq!(e["source"], "cdc");
        assert_eq!(e["id"].as_str().unwrap().len(), 26);
        let ts = e["ts"].as_str().unwrap();
        assert_eq!(
            ts.len(),
            24,
            "ts with exactly three fractional digits: {ts}"
        );
    }
    assert_seqs_strictly_increasing(&events);
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// Under `REPLICA IDENTITY FULL` updates carry `meta.old` and deletes the whole
/// row; under DEFAULT neither, and an unchanged TOASTed column is left out and
/// named in `meta.unchanged_columns` (FULL fills it from the old row).
#[tokio::test]
async fn replica_identity_default_vs_full() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let client = db.client().await?;
    client
        .batch_execute(
            "CREATE TABLE d (id int PRIMARY KEY, status text, big text);
             CREATE TABLE f (id int PRIMARY KEY, status text, big text);
             ALTER TABLE d ALTER COLUMN big SET STORAGE EXTERNAL;
             ALTER TABLE f ALTER COLUMN big SET STORAGE EXTERNAL;
             ALTER TABLE f REPLICA IDENTITY FULL;",
        )
        .await?;
    let pgtide = start(&db, "d,f").await?;
    client
        .batch_execute(
            "INSERT INTO d VALUES (1, 'a', repeat('x', 10000));
             INSERT INTO f VALUES (1, 'a', repeat('y', 10000));
             UPDATE d SET status = 'b';
             UPDATE f SET status = 'b';
             DELETE FROM d; DELETE FROM f;",
        )
        .await?;
    let events = pgtide.wait_events(6).await?;
    let d_update = &events[2];
    assert_eq!(d_update["topic"], "tables.d.update");
    assert_eq!(d_update["data"], json!({"id": 1, "status": "b"}));
    assert_eq!(d_update["meta"]["unchanged_columns"], json!(["big"]));
    assert!(d_update["meta"].get("old").is_none());

    let f_update = &events[3];
    assert_eq!(f_update["topic"], "tables.f.update");
    assert_eq!(f_update["data"]["status"], "b");
    assert_eq!(f_update["data"]["big"].as_str().map(str::len), Some(10000));
    assert!(f_update["meta"].get("unchanged_columns").is_none());
    assert_eq!(f_update["meta"]["old"]["status"], "a");

    assert_eq!(events[4]["data"], json!({"id": 1}));
    assert_eq!(events[5]["data"]["status"], "b");
    assert_eq!(events[5]["data"]["big"].as_str().map(str::len), Some(10000));
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// An `ALTER TABLE` mid-stream emits `schema.changed` once and later rows use
/// the new column set.
#[tokio::test]
async fn alter_table_mid_stream() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let client = db.client().await?;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, a text)")
        .await?;
    let pgtide = start(&db, "t").await?;
    client
        .batch_execute("INSERT INTO t VALUES (1, 'x')")
        .await?;
    pgtide.wait_events(1).await?;
    client
        .batch_execute("ALTER TABLE t ADD COLUMN b int DEFAULT 5; INSERT INTO t VALUES (2, 'y', 6); INSERT INTO t VALUES (3, 'z');")
        .await?;
    let events = pgtide.wait_events(4).await?;
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "row.inserted",
            "schema.changed",
            "row.inserted",
            "row.inserted"
        ]
    );
    let change = &events[1];
    assert_eq!(change["topic"], "tables.t.schema");
    let names: Vec<&str> = change["data"]["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["id", "a", "b"]);
    assert_eq!(
        change["data"]["previous_columns"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(events[2]["data"], json!({"id": 2, "a": "y", "b": 6}));
    assert_eq!(events[3]["data"], json!({"id": 3, "a": "z", "b": 5}));
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// A rolled-back transaction produces nothing; `pgtide.publish()` is
/// delivered only when its transaction commits.
#[tokio::test]
async fn rollbacks_produce_nothing_and_publish_is_transactional() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let mut client = db.client().await?;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await?;
    let pgtide = start(&db, "t").await?;
    let tx = client.transaction().await?;
    tx.batch_execute(
        "INSERT INTO t VALUES (1); SELECT pgtide.publish('orders.created', '{\"n\": 1}')",
    )
    .await?;
    tx.rollback().await?;
    let tx = client.transaction().await?;
    tx.batch_execute(
        "INSERT INTO t VALUES (2);
         SELECT pgtide.publish('orders/created', '{\"n\": 2}', '{\"region\": \"eu\"}', 'custom.order_created');",
    )
    .await?;
    tx.commit().await?;
    let events = pgtide.wait_events(2).await?;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0]["data"], json!({"id": 2}));
    let published = &events[1];
    assert_eq!(published["topic"], "orders.created");
    assert_eq!(published["type"], "custom.order_created");
    assert_eq!(published["source"], "sql");
    assert_eq!(published["data"], json!({"n": 2}));
    assert_eq!(published["attributes"], json!({"region": "eu"}));
    // Both come from one transaction, so they share its commit LSN.
    assert_eq!(events[0]["meta"]["lsn"], published["meta"]["lsn"]);

    // A bad topic is refused at the call, inside the caller's transaction.
    let err = client
        .batch_execute("SELECT pgtide.publish('bad topic', '{}')")
        .await
        .unwrap_err();
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("invalid topic"),
        "{err}"
    );
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// One 100,000-row transaction arrives whole, in order, with consecutive seqs.
#[tokio::test]
async fn large_transaction() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let client = db.client().await?;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .await?;
    let pgtide = start(&db, "t").await?;
    client
        .batch_execute("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 100000) g")
        .await?;
    let events = pgtide.wait_events(100_000).await?;
    assert_eq!(events.len(), 100_000);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"].as_i64(), Some(i as i64 + 1));
        assert_eq!(e["data"]["id"].as_i64(), Some(i as i64 + 1));
    }
    let lsns: std::collections::HashSet<&Value> =
        events.iter().map(|e| &e["meta"]["lsn"]).collect();
    assert_eq!(lsns.len(), 1, "one transaction, one commit LSN");
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}
