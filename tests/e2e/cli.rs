//! The command line's answers to a database that is not fit to stream from:
//! one clear line naming the problem and the fix, a non-zero exit, and
//! nothing created.

use pgtide_pg::local::LocalOptions;

use crate::harness::{Server, TestDb, run_pgtide};

/// Runs `pgtide run` against `url` and returns (exit success, stderr).
async fn run_against(db: &TestDb, url: &str) -> anyhow::Result<(bool, String)> {
    let mut args = db.run_args();
    args[2] = url.to_owned();
    let out = run_pgtide(&args).await?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Nothing of pgtide's exists in the database.
async fn assert_nothing_created(db: &TestDb) -> anyhow::Result<()> {
    let client = db.client().await?;
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1),
                    (SELECT count(*) FROM pg_publication WHERE pubname = $2),
                    (SELECT count(*) FROM pg_namespace WHERE nspname = 'pgtide')",
            &[&db.slot, &db.publication],
        )
        .await?;
    let counts: (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(counts, (0, 0, 0), "slot, publication, schema");
    Ok(())
}

fn error_line(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A wrong password, a missing privilege, and a slot made by another plugin.
#[tokio::test]
async fn refuses_bad_credentials_privileges_and_foreign_slots() -> anyhow::Result<()> {
    let server = Server::own(LocalOptions {
        fast_unsafe: true,
        settings: vec![("password_encryption".into(), "scram-sha-256".into())],
    })
    .await?;
    let db = server.database().await?;
    let admin = db.client().await?;
    // Password auth for one role, through a pg_hba rule prepended for it.
    admin
        .batch_execute(
            "CREATE ROLE app LOGIN PASSWORD 'right';
             CREATE ROLE plain LOGIN PASSWORD 'pw';
             GRANT CREATE ON DATABASE postgres TO plain;",
        )
        .await?;
    let local = server.local.as_ref().expect("own server");
    let hba = local.data_dir().join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba)?;
    std::fs::write(
        &hba,
        format!("host all app,plain 127.0.0.1/32 scram-sha-256\n{old}"),
    )?;
    admin.batch_execute("SELECT pg_reload_conf()").await?;

    let port = local.port();
    let wrong = format!(
        "postgres://app:wrong@127.0.0.1:{port}/{}?sslmode=disable",
        db.name
    );
    let (ok, stderr) = run_against(&db, &wrong).await?;
    assert!(!ok);
    let line = error_line(&stderr);
    assert!(
        line.contains("refused the login") && line.contains("password"),
        "{stderr}"
    );

    let plain = format!(
        "postgres://plain:pw@127.0.0.1:{port}/{}?sslmode=disable",
        db.name
    );
    let (ok, stderr) = run_against(&db, &plain).await?;
    assert!(!ok);
    let line = error_line(&stderr);
    assert!(
        line.contains("may not use replication") && line.contains("WITH REPLICATION"),
        "{stderr}"
    );
    assert_nothing_created(&db).await?;

    admin
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'test_decoding')",
            &[&db.slot],
        )
        .await?;
    let (ok, stderr) = run_against(&db, &db.url).await?;
    assert!(!ok);
    let line = error_line(&stderr);
    assert!(
        line.contains("test_decoding") && line.contains("pg_drop_replication_slot"),
        "{stderr}"
    );
    admin
        .execute("SELECT pg_drop_replication_slot($1)", &[&db.slot])
        .await?;
    assert_nothing_created(&db).await?;

    let unreachable = "postgres://postgres@127.0.0.1:1/x?sslmode=disable".to_owned();
    let (ok, stderr) = run_against(&db, &unreachable).await?;
    assert!(!ok);
    assert!(
        error_line(&stderr).contains("connection refused"),
        "{stderr}"
    );

    let mut args = db.run_args();
    args.retain(|a| a != "--insecure-no-auth");
    let out = run_pgtide(&args).await?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refusing to serve without authentication")
    );
    Ok(())
}

/// A server without `wal_level=logical` is refused with the setting to change.
#[tokio::test]
async fn refuses_without_logical_wal_level() -> anyhow::Result<()> {
    let server = Server::own(LocalOptions {
        fast_unsafe: true,
        settings: vec![("wal_level".into(), "replica".into())],
    })
    .await?;
    let db = server.database().await?;
    let (ok, stderr) = run_against(&db, &db.url).await?;
    assert!(!ok);
    let line = error_line(&stderr);
    assert!(
        line.contains("wal_level") && line.contains("ALTER SYSTEM SET wal_level = logical"),
        "{stderr}"
    );
    assert_eq!(line.lines().count(), 1, "one line: {stderr}");
    assert_nothing_created(&db).await?;
    Ok(())
}

/// `pgtide migrate` is idempotent, and `pgtide slot status|drop` work.
#[tokio::test]
async fn migrate_and_slot_commands() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let url = db.url.clone();
    let first = run_pgtide(&["migrate".into(), "--database-url".into(), url.clone()]).await?;
    assert!(first.status.success(), "{first:?}");
    assert!(String::from_utf8_lossy(&first.stdout).contains("applied migrations"));
    let second = run_pgtide(&["migrate".into(), "--database-url".into(), url.clone()]).await?;
    assert!(String::from_utf8_lossy(&second.stdout).contains("up to date"));

    let client = db.client().await?;
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&db.slot],
        )
        .await?;
    client
        .batch_execute(&format!("CREATE PUBLICATION {}", db.publication))
        .await?;
    let slot_args = |action: &str| -> Vec<String> {
        vec![
            "slot".into(),
            action.into(),
            "--database-url".into(),
            url.clone(),
            "--slot".into(),
            db.slot.clone(),
            "--publication".into(),
            db.publication.clone(),
        ]
    };
    let status = run_pgtide(&slot_args("status")).await?;
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success() && text.contains("retained WAL") && text.contains("lag"),
        "{text}"
    );
    let dropped = run_pgtide(&slot_args("drop")).await?;
    assert!(dropped.status.success(), "{dropped:?}");
    let left: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&db.slot],
        )
        .await?
        .get(0);
    assert_eq!(left, 0);
    let missing = run_pgtide(&slot_args("status")).await?;
    assert!(!missing.status.success());
    db.cleanup().await;
    Ok(())
}
