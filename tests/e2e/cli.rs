//! The command line's answers to a database that is not fit to stream from:
//! one clear line naming the problem and the fix, a non-zero exit, and
//! nothing created.

use pgtide_pg::local::LocalOptions;

use anyhow::Context;

use crate::harness::{Server, TestDb, WAIT, run_pgtide};

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

/// Runs `pgtide` to completion in `dir`, with no `PGTIDE_*` or `DATABASE_URL`
/// setting from the test's environment.
async fn run_bare(args: &[&str], dir: &std::path::Path) -> anyhow::Result<std::process::Output> {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgtide"));
    cmd.args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("PGTIDE_") || key == "DATABASE_URL" || key == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
    Ok(tokio::time::timeout(WAIT, cmd.spawn()?.wait_with_output()).await??)
}

/// Starts `pgtide` with `args` in `dir` at its default log level, waits
/// until `/readyz` answers 200, stops it with SIGTERM and returns its stderr
/// (after asserting a clean exit).
async fn start_and_stop(args: &[String], dir: &std::path::Path) -> anyhow::Result<String> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgtide"))
        .args(args)
        .current_dir(dir)
        .env_remove("PGTIDE_LOG")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stderr = child.stderr.take().context("piped stderr")?;
    let errors = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut lines = BufReader::new(child.stdout.take().context("piped stdout")?).lines();
    let base = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(url) = line.strip_prefix("pgtide listening on ") {
                return Ok(url.trim().to_owned());
            }
        }
        anyhow::bail!("pgtide exited before listening")
    })
    .await;
    let base = match base {
        Ok(Ok(base)) => base,
        other => {
            let _ = child.start_kill();
            anyhow::bail!("{other:?}; stderr: {}", errors.await?);
        }
    };
    let deadline = std::time::Instant::now() + WAIT;
    while !reqwest::get(format!("{base}/readyz"))
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "not ready within {WAIT:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let pid = child.id().context("running")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let status = tokio::time::timeout(WAIT, child.wait()).await??;
    let text = errors.await?;
    anyhow::ensure!(status.success(), "{status}: {text}");
    Ok(text)
}

/// `pgtide check` of a directory that does not exist is an error naming
/// it (exit 1), not "0 mapping(s) OK".
#[tokio::test]
async fn check_refuses_a_missing_directory() -> anyhow::Result<()> {
    let here = tempfile::tempdir()?;
    let missing = here.path().join("nonexistent");
    let missing = missing.to_string_lossy().into_owned();
    let out = run_bare(&["check", &missing], here.path()).await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&missing) && stderr.contains("does not exist"),
        "{stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("OK"));
    Ok(())
}

/// `pgtide run` with nothing given names every missing setting, the
/// database and the authentication, in one answer.
#[tokio::test]
async fn run_lists_every_missing_setting_at_once() -> anyhow::Result<()> {
    let here = tempfile::tempdir()?;
    let out = run_bare(&["run"], here.path()).await?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("missing 2 settings"), "{stderr}");
    assert!(stderr.contains("--database-url"), "{stderr}");
    assert!(
        stderr.contains("refusing to serve without authentication"),
        "{stderr}"
    );
    Ok(())
}

/// A malformed database URL is refused with what is wrong with it: an
/// unknown scheme, no host, a port that is not a number.
#[tokio::test]
async fn malformed_database_urls_say_what_is_wrong() -> anyhow::Result<()> {
    let here = tempfile::tempdir()?;
    for (url, expected) in [
        ("postgress://nope", "unknown scheme \"postgress://\""),
        ("postgres://user@/db", "names no host"),
        (
            "postgres://localhost:54x2/db",
            "port \"54x2\" is not a port number",
        ),
    ] {
        let out = run_bare(
            &["run", "--insecure-no-auth", "--database-url", url],
            here.path(),
        )
        .await?;
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = error_line(&stderr);
        assert!(line.contains(expected), "{url}: {stderr}");
    }
    Ok(())
}

/// `pgtide run` from the repository against a database without the demo
/// tables refuses the default `./mappings` with their errors before it
/// creates anything: no schema, no publication, no slot.
#[tokio::test]
async fn run_with_mappings_that_do_not_fit_creates_nothing() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let owned = db.run_args();
    let args: Vec<&str> = owned.iter().map(String::as_str).collect();
    let out = run_bare(&args, &repo).await?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = error_line(&stderr);
    assert!(
        line.contains("the mappings in ./mappings have") && stderr.contains("does not exist"),
        "{stderr}"
    );
    assert!(
        stderr.contains("--mappings defaults to ./mappings"),
        "{stderr}"
    );
    assert_nothing_created(&db).await?;
    db.cleanup().await;
    Ok(())
}

/// A start with nothing to capture (no `--capture`, no mappings) says so;
/// a start and stop on an existing store logs no `already exists,
/// skipping` NOTICE and no pool connection errors.
#[tokio::test]
async fn quiet_starts_and_a_warning_when_nothing_is_captured() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let empty = tempfile::tempdir()?;
    let mut args = db.run_args();
    args.extend(["--mappings".into(), empty.path().display().to_string()]);
    let first = start_and_stop(&args, empty.path()).await?;
    assert!(first.contains("nothing to capture"), "{first}");
    let second = start_and_stop(&args, empty.path()).await?;
    for stderr in [&first, &second] {
        assert!(!stderr.contains("already exists, skipping"), "{stderr}");
        assert!(!stderr.contains("NOTICE"), "{stderr}");
        assert!(!stderr.contains("deadpool"), "{stderr}");
    }
    db.client()
        .await?
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await?;
    args.extend(["--capture".into(), "public.t".into()]);
    let captured = start_and_stop(&args, empty.path()).await?;
    assert!(!captured.contains("nothing to capture"), "{captured}");
    db.cleanup().await;
    Ok(())
}
