//! The end-to-end harness: a real PostgreSQL (`PGTIDE_TEST_DATABASE_URL`, or a
//! throwaway one per test process), a fresh database and slot per test, and the
//! real `pgtide` binary spawned on port 0.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use pgtide_pg::local::{LocalOptions, LocalPostgres};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Generous bound for anything the tests wait on.
pub const WAIT: Duration = Duration::from_secs(60);

/// A PostgreSQL server for one test: the shared one, or its own.
pub struct Server {
    /// URL of the server's `postgres` database.
    pub admin_url: String,
    pub local: Option<LocalPostgres>,
}

impl Server {
    /// The shared server from `PGTIDE_TEST_DATABASE_URL`, else a new throwaway one.
    pub async fn shared() -> anyhow::Result<Server> {
        match std::env::var("PGTIDE_TEST_DATABASE_URL") {
            Ok(url) => Ok(Server {
                admin_url: url,
                local: None,
            }),
            Err(_) => {
                Server::own(LocalOptions {
                    fast_unsafe: true,
                    settings: Vec::new(),
                })
                .await
            }
        }
    }

    /// A server of the test's own (for tests that restart or misconfigure it).
    pub async fn own(options: LocalOptions) -> anyhow::Result<Server> {
        let dir = std::env::temp_dir().join(format!("pgtide-test-{}", unique()));
        let local = LocalPostgres::start(&dir, &options).await?;
        Ok(Server {
            admin_url: local.url("postgres"),
            local: Some(local),
        })
    }

    pub async fn admin(&self) -> anyhow::Result<tokio_postgres::Client> {
        connect(&self.admin_url).await
    }

    /// A fresh database with its own slot and publication names.
    pub async fn database(&self) -> anyhow::Result<TestDb> {
        let name = format!("t_{}", unique());
        self.admin()
            .await?
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        Ok(TestDb {
            url: with_dbname(&self.admin_url, &name),
            slot: format!("s_{}", unique()),
            publication: format!("p_{}", unique()),
            admin_url: self.admin_url.clone(),
            name,
            dropped: false,
        })
    }
}

/// One test's database, and a guard for it: however the test ends (a
/// panicking assertion included), its replication slots (which would retain
/// WAL) and the database (with its publication) are dropped. [`TestDb::cleanup`]
/// does it earlier, on the test's own runtime.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub slot: String,
    pub publication: String,
    admin_url: String,
    dropped: bool,
}

impl TestDb {
    pub async fn client(&self) -> anyhow::Result<tokio_postgres::Client> {
        connect(&self.url).await
    }

    /// Drops the database's slots and the database now (see [`drop_database`]).
    pub async fn cleanup(mut self) {
        match drop_database(&self.admin_url, &self.name).await {
            Ok(()) => self.dropped = true,
            // Left to `Drop`, which tries again.
            Err(e) => eprintln!("cleanup of {}: {e:#}", self.name),
        }
    }

    /// `pgtide run` arguments for this database, before test-specific ones.
    pub fn run_args(&self) -> Vec<String> {
        vec![
            "run".into(),
            "--database-url".into(),
            self.url.clone(),
            "--slot".into(),
            self.slot.clone(),
            "--publication".into(),
            self.publication.clone(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--insecure-no-auth".into(),
            "--heartbeat".into(),
            "1s".into(),
        ]
    }
}

impl Drop for TestDb {
    /// `Drop` cannot await, and may run on the test's runtime (or while it
    /// unwinds): the drop runs on a thread of its own with its own small
    /// runtime, joined before the test goes on.
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let worker = std::thread::spawn(move || -> anyhow::Result<()> {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(drop_database(&admin_url, &name))
        });
        match worker.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("dropping test database {}: {e:#}", self.name),
            Err(_) => eprintln!(
                "dropping test database {}: the cleanup thread panicked",
                self.name
            ),
        }
    }
}

/// Drops every replication slot of database `name` (slots are cluster-wide
/// and retain WAL until dropped), first ending any backend still streaming
/// one, then the database itself (its publications go with it), ending its
/// connections. Waits at most [`WAIT`].
pub async fn drop_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let work = async {
        let admin = connect(admin_url).await?;
        let deadline = Instant::now() + WAIT;
        loop {
            admin
                .execute(
                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
                     WHERE database = $1 AND active_pid IS NOT NULL",
                    &[&name],
                )
                .await?;
            // Fails if one became active again meanwhile: the next round ends it.
            let _ = admin
                .execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                     WHERE database = $1 AND NOT active",
                    &[&name],
                )
                .await;
            // A slot whose walsender is still exiting stays active a moment.
            let left: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_replication_slots WHERE database = $1",
                    &[&name],
                )
                .await?
                .get(0);
            if left == 0 {
                break;
            }
            if Instant::now() > deadline {
                bail!("{left} slot(s) of {name} still active after {WAIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await?;
        anyhow::Ok(())
    };
    tokio::time::timeout(WAIT * 2, work)
        .await
        .with_context(|| format!("dropping {name} took longer than {:?}", WAIT * 2))?
}

/// `url` with its user (and password) replaced.
pub fn with_user(url: &str, user: &str, password: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            format!("{scheme}://{user}:{password}@{host}")
        }
        None => url.to_owned(),
    }
}

impl TestDb {
    /// A low-privilege login for SQL over sockets that can `SET ROLE` to
    /// `role` (created NOLOGIN if missing); its URL for `--sql-database-url`.
    pub async fn sql_login(&self, role: &str) -> anyhow::Result<String> {
        let login = format!("login_{}", unique());
        self.client()
            .await?
            .batch_execute(&format!(
                "DO $$ BEGIN CREATE ROLE {role} NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
                 CREATE ROLE {login} LOGIN PASSWORD 'pw';
                 GRANT {role} TO {login};
                 GRANT CONNECT ON DATABASE {db} TO {login};",
                db = self.name
            ))
            .await?;
        Ok(with_user(&self.url, &login, "pw"))
    }
}

pub async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(conn);
    Ok(client)
}

fn with_dbname(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let base = match base.rfind('/') {
        Some(i) if i > base.find("//").map_or(0, |j| j + 1) => &base[..i],
        _ => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

pub fn unique() -> String {
    ulid::Ulid::new().to_string().to_lowercase()
}

/// A running `pgtide` process.
pub struct Pgtide {
    pub child: Child,
    pub base: String,
    http: reqwest::Client,
}

impl Pgtide {
    /// Spawns `pgtide` with `args` and waits for it to listen and be ready.
    pub async fn start(args: &[String]) -> anyhow::Result<Pgtide> {
        let mut pgtide = Pgtide::spawn(args).await?;
        pgtide.wait_ready().await?;
        Ok(pgtide)
    }

    /// Spawns and waits only for the listening line.
    pub async fn spawn(args: &[String]) -> anyhow::Result<Pgtide> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pgtide"))
            .args(args)
            .env("PGTIDE_LOG", "info,pgtide_cdc=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let base = tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.strip_prefix("pgtide listening on ") {
                    return Ok(url.trim().to_owned());
                }
            }
            bail!("pgtide exited before listening")
        })
        .await
        .context("pgtide did not start listening in time")??;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Pgtide {
            child,
            base,
            http: reqwest::Client::new(),
        })
    }

    /// Waits until `/readyz` says the slot is streaming.
    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(r) = self.http.get(format!("{}/readyz", self.base)).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("pgtide exited with {status} before it was ready");
            }
            if Instant::now() > deadline {
                bail!("pgtide not ready within {WAIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// `GET /v1/events` with a raw query string. A 503 (the store briefly
    /// unreachable, as right after a cut connection) is retried within [`WAIT`].
    pub async fn events(&self, query: &str) -> anyhow::Result<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let r = self
                .http
                .get(self.url(&format!("/v1/events?{query}")))
                .send()
                .await?;
            let status = r.status();
            if status == reqwest::StatusCode::SERVICE_UNAVAILABLE && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let body: Value = r.json().await?;
            if !status.is_success() {
                bail!("GET /v1/events?{query} -> {status}: {body}");
            }
            return Ok(body);
        }
    }

    /// Every stored event after `after`, following pages.
    pub async fn all_events(&self, after: i64) -> anyhow::Result<Vec<Value>> {
        let mut out = Vec::new();
        let mut after = after;
        loop {
            let page = self
                .events(&format!("after_seq={after}&limit=1000"))
                .await?;
            let events = page["events"].as_array().cloned().unwrap_or_default();
            out.extend(events);
            match page["next_after_seq"].as_i64() {
                Some(next) => after = next,
                None => return Ok(out),
            }
        }
    }

    /// Waits until at least `n` events are stored, then returns them all.
    pub async fn wait_events(&self, n: usize) -> anyhow::Result<Vec<Value>> {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.has_seq(n as i64).await? {
                return self.all_events(0).await;
            }
            if Instant::now() > deadline {
                let have = self.all_events(0).await?;
                bail!(
                    "expected {n} events, have {} after {WAIT:?}: {:?}",
                    have.len(),
                    have.last()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether an event with `seq >= n` is stored. A 503 (store briefly
    /// unreachable, as during a cut connection) counts as "not yet".
    pub async fn has_seq(&self, n: i64) -> anyhow::Result<bool> {
        let r = self
            .http
            .get(self.url(&format!("/v1/events?after_seq={}&limit=1", (n - 1).max(0))))
            .send()
            .await?;
        if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE {
            return Ok(false);
        }
        if !r.status().is_success() {
            bail!("GET /v1/events -> {}", r.status());
        }
        let page: Value = r.json().await?;
        Ok(page["events"].as_array().is_some_and(|e| !e.is_empty()))
    }

    /// Waits until an event with `seq >= n` is stored, without fetching them all.
    pub async fn wait_seq(&self, n: i64) -> anyhow::Result<()> {
        let deadline = Instant::now() + WAIT;
        while !self.has_seq(n).await? {
            if Instant::now() > deadline {
                bail!("no event with seq >= {n} after {WAIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// SIGKILL, as a crash.
    pub async fn kill9(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// SIGTERM, waiting for a clean exit.
    pub async fn stop(mut self) -> anyhow::Result<std::process::ExitStatus> {
        if let Some(pid) = self.child.id() {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            )?;
        }
        Ok(tokio::time::timeout(WAIT, self.child.wait()).await??)
    }
}

/// Runs `pgtide` to completion (for commands that should fail fast).
pub async fn run_pgtide(args: &[String]) -> anyhow::Result<std::process::Output> {
    let child = Command::new(env!("CARGO_BIN_EXE_pgtide"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    Ok(tokio::time::timeout(WAIT, child.wait_with_output()).await??)
}

/// The events' `seq`s are 1..=n strictly increasing, and all the same `source`.
pub fn assert_seqs_strictly_increasing(events: &[Value]) {
    let seqs: Vec<i64> = events
        .iter()
        .map(|e| e["seq"].as_i64().unwrap_or(-1))
        .collect();
    for pair in seqs.windows(2) {
        assert!(pair[0] < pair[1], "seq not strictly increasing: {pair:?}");
    }
}

/// A test that panics still leaves nothing behind: its database, its
/// publication and its replication slot (here held by a running pgtide) are
/// dropped by the [`TestDb`] guard as the panic unwinds.
#[tokio::test]
async fn a_panicking_test_leaves_no_database_or_slot() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let (name, slot, publication) = (db.name.clone(), db.slot.clone(), db.publication.clone());
    let task = tokio::spawn(async move {
        let _pgtide = Pgtide::start(&db.run_args()).await?;
        let client = db.client().await?;
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1 AND active),
                        (SELECT count(*) FROM pg_publication WHERE pubname = $2)",
                &[&db.slot, &db.publication],
            )
            .await?;
        assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (1, 1));
        if std::env::var_os("PGTIDE_NEVER_SET").is_none() {
            panic!("a failing assertion, on purpose");
        }
        anyhow::Ok(())
    });
    let outcome = task.await;
    assert!(
        outcome.is_err_and(|e| e.is_panic()),
        "the child test panics"
    );
    let admin = server.admin().await?;
    let row = admin
        .query_one(
            "SELECT (SELECT count(*) FROM pg_database WHERE datname = $1),
                    (SELECT count(*) FROM pg_replication_slots WHERE slot_name = $2 OR database = $1)",
            &[&name, &slot],
        )
        .await?;
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1)),
        (0, 0),
        "database {name} and slot {slot} (publication {publication}) are gone"
    );
    Ok(())
}
