//! `pgtide bench cdc`: CDC throughput against `pg_recvlogical`, and
//! commit→stored latency at a steady rate, in one run.
//!
//! On a fresh database (of a throwaway local PostgreSQL unless
//! `--database-url`), with both replication slots made first:
//!
//! 1. generate `--rows` inserts in `--tx-rows`-row transactions (~100-byte rows);
//! 2. drain that WAL with `pg_recvlogical` (pgoutput, to /dev/null) and time it;
//! 3. drain the same WAL with pgtide's pipeline into its event store and time it
//!    until the store's committed `seq` covers every row;
//! 4. with the pipeline still running, insert single-row transactions at
//!    `--latency-rate` per second and measure each one's commit→stored delay;
//! 5. print a summary, then drop the slots and the database (and stop the
//!    throwaway server).

use std::fmt;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use pgtide_cdc::{CdcConfig, CdcStatus, TableName, setup};
use pgtide_pg::PgConfig;
use pgtide_pg::local::{LocalOptions, LocalPostgres};
use pgtide_pg::replication::quote_ident;
use pgtide_store::Store;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The publication both readers use.
const PUBLICATION: &str = "bench_pub";

/// The commit->stored target at the latency phase's rate (p99).
const SLOW: Duration = Duration::from_millis(10);

#[derive(Debug, clap::Args)]
pub struct CdcBenchArgs {
    /// Rows to generate before reading, for the throughput comparison.
    #[arg(long, env = "PGTIDE_BENCH_ROWS", default_value_t = 1_000_000)]
    pub rows: u64,
    /// Rows per generated transaction.
    #[arg(long, env = "PGTIDE_BENCH_TX_ROWS", default_value_t = 1000)]
    pub tx_rows: u64,
    /// Single-row transactions per second in the latency phase.
    #[arg(long, env = "PGTIDE_BENCH_LATENCY_RATE", default_value_t = 1000)]
    pub latency_rate: u32,
    /// Length of the latency phase in seconds (0 skips it).
    #[arg(long, env = "PGTIDE_BENCH_LATENCY_SECONDS", default_value_t = 10)]
    pub latency_seconds: u64,
    /// Benchmark on this server (a superuser libpq URL, wal_level=logical)
    /// instead of a throwaway local one. A database `pgtide_bench_*` is
    /// created on it and dropped at the end.
    #[arg(long, env = "PGTIDE_BENCH_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Events per store transaction (the pipeline's --max-batch).
    #[arg(long, env = "PGTIDE_BENCH_MAX_BATCH", default_value_t = 5000)]
    pub max_batch: usize,
    /// Keep pgtide's store in a database of its own on the same server,
    /// instead of in the benchmarked database (as `pgtide dev` and a `run`
    /// without --store-url do). Logical decoding then skips the store's WAL
    /// without decoding it.
    #[arg(long, env = "PGTIDE_BENCH_SEPARATE_STORE")]
    pub separate_store: bool,
}

pub async fn cdc(args: CdcBenchArgs) -> anyhow::Result<()> {
    validate(&args)?;
    let names = Names::new();
    let server = Server::start(args.database_url.as_deref(), &names.suffix).await?;
    let shutdown = CancellationToken::new();
    let result = tokio::select! {
        r = bench(&args, &server, &names, &shutdown) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    // Stops a pipeline an interruption left running, so its slot can go.
    shutdown.cancel();
    cleanup(&server, &names, args.separate_store).await;
    server.stop().await;
    let report = result?;
    print!("{report}");
    Ok(())
}

fn validate(args: &CdcBenchArgs) -> anyhow::Result<()> {
    if args.rows == 0 || args.rows > i32::MAX as u64 {
        bail!("--rows must be between 1 and {}", i32::MAX);
    }
    if args.tx_rows == 0 {
        bail!("--tx-rows must be at least 1");
    }
    if args.latency_rate == 0 {
        bail!("--latency-rate must be at least 1");
    }
    if args.max_batch == 0 {
        bail!("--max-batch must be at least 1");
    }
    let latency_rows = u64::from(args.latency_rate).saturating_mul(args.latency_seconds);
    if latency_rows > i32::MAX as u64 {
        bail!("--latency-rate × --latency-seconds is too large");
    }
    Ok(())
}

/// The names of everything the run creates, unique per run.
pub(crate) struct Names {
    pub(crate) suffix: String,
    pub(crate) database: String,
    pub(crate) store_database: String,
    recv_slot: String,
    pub(crate) pgtide_slot: String,
}

impl Names {
    pub(crate) fn new() -> Names {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        let suffix = format!("{:012x}", h.finish() & 0xffff_ffff_ffff);
        Names {
            database: format!("pgtide_bench_{suffix}"),
            store_database: format!("pgtide_bench_{suffix}_store"),
            recv_slot: format!("bench_recv_{suffix}"),
            pgtide_slot: format!("bench_pgtide_{suffix}"),
            suffix,
        }
    }
}

/// Where the benchmark runs: a throwaway local server, or one given by URL.
pub(crate) struct Server {
    /// The database we connect to for creating and dropping the bench database.
    pub(crate) admin: PgConfig,
    admin_url: String,
    recvlogical: PathBuf,
    local: Option<(LocalPostgres, PathBuf)>,
}

impl Server {
    pub(crate) async fn start(url: Option<&str>, suffix: &str) -> anyhow::Result<Server> {
        Server::start_with(url, suffix, &LocalOptions::default()).await
    }

    /// [`Server::start`], with these settings for a throwaway server.
    pub(crate) async fn start_with(
        url: Option<&str>,
        suffix: &str,
        options: &LocalOptions,
    ) -> anyhow::Result<Server> {
        if let Some(url) = url {
            let admin = PgConfig::parse(url)?;
            let recvlogical = LocalPostgres::bin_dir()
                .context("pg_recvlogical is needed for the comparison")?
                .join("pg_recvlogical");
            tracing::info!(server = %admin.display_target(), "benchmarking on the given server");
            return Ok(Server {
                admin,
                admin_url: url.to_owned(),
                recvlogical,
                local: None,
            });
        }
        let dir = std::env::temp_dir().join(format!("pgtide-bench-{suffix}"));
        tracing::info!(dir = %dir.display(), "starting a throwaway PostgreSQL");
        let pg = match LocalPostgres::start(&dir, options).await {
            Ok(pg) => pg,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(anyhow!(e).context("starting a throwaway PostgreSQL"));
            }
        };
        let admin_url = pg.url("postgres");
        let admin = match PgConfig::parse(&admin_url) {
            Ok(c) => c,
            Err(e) => {
                pg.stop().await;
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e.into());
            }
        };
        let recvlogical = pg.bin_path("pg_recvlogical");
        Ok(Server {
            admin,
            admin_url,
            recvlogical,
            local: Some((pg, dir)),
        })
    }

    /// A libpq connection string for `db` on this server (for `pg_recvlogical`).
    pub(crate) fn url(&self, db: &str) -> String {
        match &self.local {
            Some((pg, _)) => pg.url(db),
            None => url_with_dbname(&self.admin_url, db),
        }
    }

    /// The throwaway server's data directory (none for a given server).
    pub(crate) fn local_data_dir(&self) -> Option<&Path> {
        self.local.as_ref().map(|(pg, _)| pg.data_dir())
    }

    pub(crate) async fn stop(self) {
        if let Some((pg, dir)) = self.local {
            pg.stop().await;
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove the throwaway data directory");
            }
        }
    }
}

/// `url` pointed at database `db`: the path of a `postgres://` URL replaced,
/// or `dbname=` appended to a `key=value` string (the last one wins in libpq).
fn url_with_dbname(url: &str, db: &str) -> String {
    for scheme in ["postgres://", "postgresql://"] {
        if let Some(rest) = url.strip_prefix(scheme) {
            let (main, query) = match rest.split_once('?') {
                Some((m, q)) => (m, Some(q)),
                None => (rest, None),
            };
            let authority = main.split_once('/').map_or(main, |(a, _)| a);
            return match query {
                Some(q) => format!("{scheme}{authority}/{db}?{q}"),
                None => format!("{scheme}{authority}/{db}"),
            };
        }
    }
    format!(
        "{url} dbname='{}'",
        db.replace('\\', "\\\\").replace('\'', "\\'")
    )
}

/// What the run measured.
struct Report {
    rows: u64,
    tx_rows: u64,
    row_bytes: f64,
    wal_bytes: i64,
    recv: Duration,
    pgtide: Duration,
    /// From the last row stored until the slot passed the WAL written by then
    /// (the store's own writes, decoded and skipped when in the same database).
    caught_up: Duration,
    separate_store: bool,
    latency: Option<LatencyReport>,
}

struct LatencyReport {
    target_rate: u32,
    seconds: u64,
    inserts: usize,
    achieved_rate: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
    /// When the slowest row was committed, from the start of the phase.
    max_at: Duration,
    /// Rows slower than [`SLOW`].
    slow: usize,
    /// Rows seen stored before their COMMIT had returned to us (counted as 0).
    early: usize,
}

fn rate(rows: u64, elapsed: Duration) -> f64 {
    rows as f64 / elapsed.as_secs_f64().max(1e-9)
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(crate) fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let recv_rate = rate(self.rows, self.recv);
        let pgtide_rate = rate(self.rows, self.pgtide);
        // Rounded down, so the printed figure agrees with the verdict.
        let ratio = (pgtide_rate / recv_rate.max(1e-9) * 100.0).floor() / 100.0;
        writeln!(
            f,
            "pgtide bench cdc: {} rows in {}-row transactions (~{:.0}-byte rows, {:.0} MB of WAL)",
            self.rows,
            self.tx_rows,
            self.row_bytes,
            self.wal_bytes as f64 / 1e6
        )?;
        writeln!(
            f,
            "  pg_recvlogical (pgoutput -> /dev/null): {:.1} s  {:.0} rows/s",
            self.recv.as_secs_f64(),
            recv_rate
        )?;
        writeln!(
            f,
            "  pgtide (pgoutput -> event store):       {:.1} s  {:.0} rows/s  (store in {})",
            self.pgtide.as_secs_f64(),
            pgtide_rate,
            if self.separate_store {
                "a separate database"
            } else {
                "the source database"
            }
        )?;
        writeln!(
            f,
            "  ratio pgtide / pg_recvlogical:          {ratio:.2}  (target >= 0.5: {})",
            verdict(ratio >= 0.5)
        )?;
        writeln!(
            f,
            "  pgtide then caught up with the WAL (its own store writes included) in {:.1} s",
            self.caught_up.as_secs_f64()
        )?;
        match &self.latency {
            None => writeln!(f, "  commit->stored latency: skipped (--latency-seconds 0)")?,
            Some(l) => {
                writeln!(
                    f,
                    "  commit->stored latency at {} rows/s over {} s: p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  (target p99 <= 10 ms: {})",
                    l.target_rate,
                    l.seconds,
                    ms(l.p50),
                    ms(l.p99),
                    ms(l.max),
                    verdict(l.p99 <= SLOW)
                )?;
                writeln!(
                    f,
                    "    {} single-row transactions, achieved {:.0} rows/s; {} over {} ms; the slowest committed {:.1} s into the phase",
                    l.inserts,
                    l.achieved_rate,
                    l.slow,
                    SLOW.as_millis(),
                    l.max_at.as_secs_f64()
                )?;
                writeln!(
                    f,
                    "    commit time taken when COMMIT returned to the client,"
                )?;
                write!(
                    f,
                    "    so these figures are slightly below the true commit->stored latency"
                )?;
                if l.early > 0 {
                    write!(
                        f,
                        " ({} rows were stored before their COMMIT returned; counted as 0)",
                        l.early
                    )?;
                }
                writeln!(f)?;
            }
        }
        Ok(())
    }
}

async fn bench(
    args: &CdcBenchArgs,
    server: &Server,
    names: &Names,
    shutdown: &CancellationToken,
) -> anyhow::Result<Report> {
    let admin = server.admin.connect().await?;
    let mut databases = vec![&names.database];
    if args.separate_store {
        databases.push(&names.store_database);
    }
    for db in databases {
        admin
            .batch_execute(&format!("CREATE DATABASE {}", quote_ident(db)))
            .await
            .with_context(|| format!("creating database {db}"))?;
    }
    drop(admin);
    let config = server.admin.with_dbname(&names.database);
    let store_config = if args.separate_store {
        server.admin.with_dbname(&names.store_database)
    } else {
        config.clone()
    };
    let mut store_client = store_config.connect().await?;
    pgtide_store::migrate::migrate(&mut store_client)
        .await
        .context("creating pgtide's store schema")?;
    drop(store_client);
    let client = config.connect().await?;
    prepare(&client, names).await?;

    let generated = generate(&client, args.rows, args.tx_rows).await?;

    let limit = Duration::from_secs(600 + args.rows / 1000);
    let recv = pg_recvlogical(
        &server.recvlogical,
        &server.url(&names.database),
        &names.recv_slot,
        &generated.end_lsn,
        limit,
    )
    .await?;
    tracing::info!(
        seconds = recv.as_secs_f64(),
        rows_per_s = rate(args.rows, recv) as u64,
        "pg_recvlogical done"
    );
    drop_slot(&client, &names.recv_slot).await?;

    let store = Store::new(&store_config, 4)?;
    let base = store.last_seq().await?;
    let mut committed = store.committed_seq();
    let cdc_config = CdcConfig {
        source: config.clone(),
        slot: names.pgtide_slot.clone(),
        publication: PUBLICATION.to_owned(),
        max_batch: args.max_batch,
        heartbeat: Duration::from_secs(10),
        capture: vec![bench_table()],
        capture_org_column: None,
        mappings: tokio::sync::watch::channel(std::sync::Arc::new(
            pgtide_mapping::MappingSet::empty(),
        ))
        .1,
    };
    let started = Instant::now();
    let mut pipeline = Pipeline::start(cdc_config, store, shutdown.child_token());
    let measured = async {
        let bar = progress_bar(args.rows, "pgtide");
        let limit = Duration::from_secs(600).max(recv * 20);
        let waited = wait_stored(
            &mut committed,
            base,
            base + args.rows as i64,
            &mut pipeline,
            limit,
            &bar,
        )
        .await;
        bar.finish_and_clear();
        waited?;
        let pgtide = started.elapsed();
        tracing::info!(
            seconds = pgtide.as_secs_f64(),
            rows_per_s = rate(args.rows, pgtide) as u64,
            "pgtide done"
        );
        let caught_up = caught_up(&client, &names.pgtide_slot, &mut pipeline, limit).await?;
        tracing::info!(
            seconds = caught_up.as_secs_f64(),
            "pgtide caught up with the WAL, its own store writes included"
        );
        let latency = if args.latency_seconds == 0 {
            None
        } else {
            Some(
                latency(
                    &client,
                    committed,
                    args.latency_rate,
                    args.latency_seconds,
                    &mut pipeline,
                )
                .await?,
            )
        };
        anyhow::Ok((pgtide, caught_up, latency))
    }
    .await;
    pipeline.stop().await;
    let (pgtide, caught_up, latency) = measured?;
    Ok(Report {
        rows: args.rows,
        tx_rows: args.tx_rows,
        row_bytes: generated.row_bytes,
        wal_bytes: generated.wal_bytes,
        recv,
        pgtide,
        caught_up,
        separate_store: args.separate_store,
        latency,
    })
}

/// The table, the publication and both slots, all before any row exists.
async fn prepare(client: &tokio_postgres::Client, names: &Names) -> anyhow::Result<()> {
    client
        .batch_execute(&format!(
            "CREATE TABLE public.bench_rows (
                 id bigserial PRIMARY KEY,
                 a  int         NOT NULL,
                 b  text        NOT NULL,
                 c  timestamptz NOT NULL DEFAULT now()
             );
             CREATE PUBLICATION {} FOR TABLE public.bench_rows;",
            quote_ident(PUBLICATION)
        ))
        .await
        .context("creating the bench table and publication")?;
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&names.recv_slot],
        )
        .await
        .context("creating the pg_recvlogical slot")?;
    setup::preflight(client, &names.pgtide_slot)
        .await
        .context("checking the database")?;
    setup::prepare(client, &names.pgtide_slot, PUBLICATION, &[bench_table()])
        .await
        .context("preparing pgtide's slot")?;
    tracing::info!(recv_slot = %names.recv_slot, pgtide_slot = %names.pgtide_slot, database = %names.database, "slots ready");
    Ok(())
}

struct Generated {
    end_lsn: String,
    wal_bytes: i64,
    row_bytes: f64,
}

async fn generate(
    client: &tokio_postgres::Client,
    rows: u64,
    tx_rows: u64,
) -> anyhow::Result<Generated> {
    let start_lsn: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    let insert = client
        .prepare(
            "INSERT INTO public.bench_rows (a, b)
             SELECT g::int, md5(g::text) || md5((g + 1)::text) FROM generate_series($1::int8, $2::int8) g",
        )
        .await?;
    tracing::info!(rows, tx_rows, "generating rows");
    let bar = progress_bar(rows, "generate");
    let started = Instant::now();
    let mut next = 1u64;
    while next <= rows {
        let last = (next + tx_rows - 1).min(rows);
        let (from, to) = (next as i64, last as i64);
        client
            .execute(&insert, &[&from, &to])
            .await
            .context("generating rows")?;
        bar.set_position(last);
        next = last + 1;
    }
    bar.finish_and_clear();
    let row = client
        .query_one(
            "SELECT pg_current_wal_lsn()::text, (pg_current_wal_lsn() - $1::text::pg_lsn)::int8",
            &[&start_lsn],
        )
        .await?;
    let (end_lsn, wal_bytes): (String, i64) = (row.get(0), row.get(1));
    let row_bytes: f64 = client
        .query_one(
            "SELECT coalesce(avg(pg_column_size(t.*)), 0)::float8 FROM (SELECT * FROM public.bench_rows LIMIT 1000) t",
            &[],
        )
        .await?
        .get(0);
    tracing::info!(seconds = started.elapsed().as_secs_f64(), %end_lsn, wal_mb = wal_bytes / 1_000_000, "rows generated");
    Ok(Generated {
        end_lsn,
        wal_bytes,
        row_bytes,
    })
}

/// Runs `pg_recvlogical` from the slot to `end_lsn`, output to /dev/null, and
/// returns how long it took.
async fn pg_recvlogical(
    bin: &Path,
    url: &str,
    slot: &str,
    end_lsn: &str,
    limit: Duration,
) -> anyhow::Result<Duration> {
    let publications = format!("publication_names={PUBLICATION}");
    let mut cmd = tokio::process::Command::new(bin);
    cmd.arg("--dbname")
        .arg(url)
        .args(["--slot", slot, "--start", "--plugin=pgoutput"])
        .args([
            "-o",
            "proto_version=1",
            "-o",
            &publications,
            "-o",
            "messages=true",
        ])
        .args(["--file", "/dev/null", "--endpos", end_lsn, "--no-loop"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    tracing::info!(%end_lsn, "draining with pg_recvlogical");
    let spinner = spinner("pg_recvlogical");
    let started = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("running {}", bin.display()))?;
    let waited = tokio::time::timeout(limit, child.wait_with_output()).await;
    let elapsed = started.elapsed();
    spinner.finish_and_clear();
    let out = waited
        .map_err(|_| {
            anyhow!(
                "pg_recvlogical did not reach {end_lsn} within {} s",
                limit.as_secs()
            )
        })?
        .context("waiting for pg_recvlogical")?;
    if !out.status.success() {
        bail!(
            "pg_recvlogical failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(elapsed)
}

/// pgtide's pipeline running in this process.
struct Pipeline {
    handle: Option<JoinHandle<pgtide_cdc::Result<()>>>,
    status: watch::Receiver<CdcStatus>,
    shutdown: CancellationToken,
}

impl Pipeline {
    fn start(config: CdcConfig, store: Store, shutdown: CancellationToken) -> Pipeline {
        let (status_tx, status) = watch::channel(CdcStatus::default());
        let handle = tokio::spawn(pgtide_cdc::run(config, store, status_tx, shutdown.clone()));
        Pipeline {
            handle: Some(handle),
            status,
            shutdown,
        }
    }

    /// Resolves only if the pipeline stops by itself, with why.
    async fn exited(&mut self) -> anyhow::Error {
        let Some(handle) = self.handle.as_mut() else {
            return std::future::pending().await;
        };
        let joined = handle.await;
        self.handle = None;
        match joined {
            Ok(Ok(())) => anyhow!("the CDC pipeline stopped unexpectedly"),
            Ok(Err(e)) => anyhow!(e).context("the CDC pipeline failed"),
            Err(e) => anyhow!("the CDC pipeline task failed: {e}"),
        }
    }

    /// The pipeline's last (retried) error, for a timeout message.
    fn last_error(&self) -> String {
        match &self.status.borrow().last_error {
            Some(e) => format!(" (last pipeline error: {e})"),
            None => String::new(),
        }
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            match tokio::time::timeout(Duration::from_secs(60), handle).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => {
                    tracing::warn!(error = %e, "the CDC pipeline stopped with an error")
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "the CDC pipeline task failed"),
                Err(_) => tracing::warn!("the CDC pipeline did not stop within 60 s"),
            }
        }
    }
}

/// Waits until the store's committed `seq` reaches `target`.
async fn wait_stored(
    committed: &mut watch::Receiver<i64>,
    base: i64,
    target: i64,
    pipeline: &mut Pipeline,
    limit: Duration,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    loop {
        let seq = *committed.borrow_and_update();
        bar.set_position((seq - base).max(0) as u64);
        if seq >= target {
            return Ok(());
        }
        tokio::select! {
            changed = committed.changed() => changed.context("the event store handle closed")?,
            e = pipeline.exited() => return Err(e),
            _ = &mut deadline => bail!(
                "pgtide stored {} of {} events within {} s{}",
                seq - base,
                target - base,
                limit.as_secs(),
                pipeline.last_error()
            ),
        }
    }
}

/// Waits until pgtide's slot is confirmed past the WAL written so far, so the
/// latency phase starts from a pipeline with no backlog; returns how long that took.
async fn caught_up(
    client: &tokio_postgres::Client,
    slot: &str,
    pipeline: &mut Pipeline,
    limit: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let target: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    let check = client
        .prepare(
            "SELECT coalesce(confirmed_flush_lsn >= $2::text::pg_lsn, false)
             FROM pg_replication_slots WHERE slot_name = $1",
        )
        .await?;
    loop {
        let done: Option<bool> = client
            .query_opt(&check, &[&slot, &target])
            .await?
            .map(|r| r.get(0));
        match done {
            Some(true) => return Ok(started.elapsed()),
            Some(false) => {}
            None => bail!("replication slot {slot} disappeared"),
        }
        if started.elapsed() > limit {
            bail!(
                "pgtide's slot did not reach {target} within {} s{}",
                limit.as_secs(),
                pipeline.last_error()
            );
        }
        tokio::select! {
            e = pipeline.exited() => return Err(e),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
}

/// Inserts single-row transactions at `rate` per second for `seconds` while a
/// watcher notes when each one's event is committed in the store.
async fn latency(
    client: &tokio_postgres::Client,
    mut committed: watch::Receiver<i64>,
    rate: u32,
    seconds: u64,
    pipeline: &mut Pipeline,
) -> anyhow::Result<LatencyReport> {
    let total = usize::try_from(u64::from(rate) * seconds).context("too many latency rows")?;
    let insert = client
        .prepare("INSERT INTO public.bench_rows (a, b) VALUES ($1::int4, md5($1::int4::text) || md5(($1::int4 + 1)::text))")
        .await
        .context("preparing the latency insert")?;
    let base = *committed.borrow_and_update();
    let stop = CancellationToken::new();
    let watcher = tokio::spawn(watch_stored(committed, base, total, stop.clone()));
    tracing::info!(rate, seconds, "measuring commit->stored latency");

    let bar = progress_bar(total as u64, "latency");
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut commits = Vec::with_capacity(total);
    let started = Instant::now();
    let inserted: anyhow::Result<()> = async {
        for i in 0..total {
            tokio::select! {
                biased;
                e = pipeline.exited() => return Err(e),
                _ = tick.tick() => {}
            }
            let a = i as i32;
            client
                .execute(&insert, &[&a])
                .await
                .context("inserting a latency row")?;
            commits.push(Instant::now());
            if i % 100 == 0 {
                bar.set_position(i as u64);
            }
        }
        Ok(())
    }
    .await;
    bar.finish_and_clear();
    let elapsed = commits
        .last()
        .map_or(Duration::ZERO, |last| last.duration_since(started));
    if let Err(e) = inserted {
        stop.cancel();
        let _ = watcher.await;
        return Err(e);
    }

    let mut watcher = watcher;
    let stored = tokio::select! {
        joined = &mut watcher => joined.context("the latency watcher failed")?,
        e = pipeline.exited() => {
            stop.cancel();
            let _ = watcher.await;
            return Err(e);
        }
        _ = tokio::time::sleep(Duration::from_secs(30)) => {
            stop.cancel();
            let stored = watcher.await.context("the latency watcher failed")?;
            bail!(
                "only {} of {total} latency rows were stored within 30 s of the last insert{}",
                stored.len(),
                pipeline.last_error()
            );
        }
    };

    let mut histogram = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
        .context("creating the latency histogram")?;
    let mut early = 0;
    let mut slow = 0;
    let mut worst = (Duration::ZERO, Duration::ZERO);
    for (commit, stored) in commits.iter().zip(&stored) {
        if stored < commit {
            early += 1;
        }
        let latency = stored.saturating_duration_since(*commit);
        if latency > SLOW {
            slow += 1;
        }
        if latency > worst.0 {
            worst = (latency, commit.duration_since(started));
        }
        let micros = latency.as_micros();
        histogram.saturating_record(u64::try_from(micros).unwrap_or(u64::MAX));
    }
    let report = LatencyReport {
        target_rate: rate,
        seconds,
        inserts: total,
        achieved_rate: rate_of(total, elapsed),
        p50: Duration::from_micros(histogram.value_at_quantile(0.5)),
        p99: Duration::from_micros(histogram.value_at_quantile(0.99)),
        max: Duration::from_micros(histogram.max()),
        max_at: worst.1,
        slow,
        early,
    };
    tracing::info!(
        p50_ms = ms(report.p50),
        p99_ms = ms(report.p99),
        max_ms = ms(report.max),
        achieved_rate = report.achieved_rate as u64,
        "latency measured"
    );
    Ok(report)
}

fn rate_of(n: usize, elapsed: Duration) -> f64 {
    rate(n as u64, elapsed)
}

/// Notes when each of the `total` events after `base` is committed in the
/// store: the i-th entry is when `seq` first reached `base + i + 1`. Inserts
/// are serial, so the i-th new event is the i-th inserted row.
async fn watch_stored(
    mut committed: watch::Receiver<i64>,
    base: i64,
    total: usize,
    stop: CancellationToken,
) -> Vec<Instant> {
    let mut stored = Vec::with_capacity(total);
    while stored.len() < total {
        tokio::select! {
            _ = stop.cancelled() => break,
            changed = committed.changed() => {
                if changed.is_err() {
                    break;
                }
                let now = Instant::now();
                let seq = *committed.borrow_and_update();
                let n = usize::try_from(seq - base).unwrap_or(0).min(total);
                while stored.len() < n {
                    stored.push(now);
                }
            }
        }
    }
    stored
}

/// Drops a slot, waiting while a just-stopped reader still holds it.
async fn drop_slot(client: &tokio_postgres::Client, slot: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let dropped = client
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await;
        match dropped {
            Ok(_) => return Ok(()),
            Err(e)
                if Instant::now() < deadline
                    && e.as_db_error()
                        .is_some_and(|db| db.code().code() == "55006") =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("dropping replication slot {slot}")),
        }
    }
}

/// Drops what the run created on the server; failures are only logged.
pub(crate) async fn cleanup(server: &Server, names: &Names, separate_store: bool) {
    let admin = match server.admin.connect().await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, database = %names.database, "cannot connect to clean up; drop the bench database and slots by hand");
            return;
        }
    };
    for slot in [&names.recv_slot, &names.pgtide_slot] {
        if let Err(e) = drop_slot(&admin, slot).await {
            tracing::warn!(error = format!("{e:#}"), %slot, "could not drop a bench slot");
        }
    }
    let mut databases = vec![&names.database];
    if separate_store {
        databases.push(&names.store_database);
    }
    for db in databases {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(db));
        if let Err(e) = admin.batch_execute(&sql).await {
            tracing::warn!(error = %e, database = %db, "could not drop a bench database");
        }
    }
}

/// A progress bar on stderr, drawn only when stderr is a terminal.
pub(crate) fn progress_bar(len: u64, prefix: &'static str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix:>14} [{bar:40}] {human_pos}/{human_len} {per_sec:>14} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(prefix);
    bar
}

fn spinner(prefix: &'static str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{prefix:>14} {spinner} {elapsed}") {
        bar.set_style(style);
    }
    bar.set_prefix(prefix);
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// The table the benchmark writes and captures.
fn bench_table() -> TableName {
    TableName {
        schema: "public".into(),
        name: "bench_rows".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_urls_at_another_database() {
        assert_eq!(
            url_with_dbname("postgres://u:p@h:5/app?sslmode=require", "x"),
            "postgres://u:p@h:5/x?sslmode=require"
        );
        assert_eq!(url_with_dbname("postgresql://h", "x"), "postgresql://h/x");
        assert_eq!(
            url_with_dbname("postgres://h/?a=b", "x"),
            "postgres://h/x?a=b"
        );
        assert_eq!(
            url_with_dbname("host=h dbname=app", "x"),
            "host=h dbname=app dbname='x'"
        );
    }

    #[test]
    fn names_are_valid_identifiers() {
        let n = Names::new();
        for name in [&n.database, &n.recv_slot, &n.pgtide_slot] {
            assert!(name.len() <= 63);
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            );
        }
    }
}
