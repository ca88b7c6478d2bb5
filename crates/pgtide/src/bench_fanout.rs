//! `pgtide bench fanout`: WebSocket fan-out against a reference Node.js
//! Socket.IO server, and row commit → WebSocket client latency.
//!
//! One load client (this process) drives every target the same way:
//!
//! - `pgtide-ws`: pgtide's `/ws` protocol (SPEC §7);
//! - `pgtide-socketio`: pgtide's Socket.IO v4 endpoint (SPEC §8), spoken over the
//!   raw WebSocket transport;
//! - `node`: `bench/node-socketio/server.mjs`, a plain `socket.io` server with a
//!   room per subscribed pattern and no store, over the same Socket.IO client.
//!
//! For each target the server runs as a child process (pgtide is this binary's
//! `run`, on a throwaway PostgreSQL unless `--database-url`), so its RSS and CPU
//! are its own. The client opens `--connections` WebSockets, subscribes
//! connection `i` to the pattern `fan.<i mod topics>.*` and notes the server's
//! RSS before and after (per idle connection). `--publishers` more connections
//! then publish events to `fan.<k>.tick` at a steady rate, each carrying the
//! time it was sent, in two phases: `--rate` deliveries per second (latency)
//! and `--max-rate` (throughput). Delivered messages per second are counted at
//! the client while the phase publishes; publish→receive latency is taken per
//! message against its send time. Publishers never wait for replies, so only
//! a server that stops reading holds them back: how far sends fell behind
//! their schedule is reported with each phase.
//!
//! pgtide stores every published event in PostgreSQL before delivering it; the
//! Node server keeps nothing. The ratio compares delivered messages per second
//! under the same offered load; pgtide's figures include its store commit.
//!
//! Finally (`pgtide-ws` or `all`), `--e2e-subscribers` `/ws` clients subscribe
//! to a mapped table's topics `bench.e2e.<k>` while rows are inserted at
//! `--e2e-rate` per second (one autocommit INSERT each, over a few
//! connections). Subscribers are split into groups of `--e2e-fanout`, one
//! group per key `k`, and rows take the keys in turn: with the default of 1
//! each row reaches the one subscriber it belongs to (a per-user feed); with
//! `--e2e-fanout` equal to `--e2e-subscribers` every row reaches everyone.
//! Each row carries the time its INSERT was sent, so row commit → client
//! latency is measured from slightly before the commit.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::bench::{Names, Server, cleanup, ms, progress_bar, verdict};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The p99 target, at the latency phase's rate and end to end.
const P99_TARGET: Duration = Duration::from_millis(10);
/// The idle-connection memory target.
const RSS_TARGET_BYTES: f64 = 16.0 * 1024.0;
/// The delivered msgs/s target against the Node server.
const RATIO_TARGET: f64 = 3.0;
/// Bound of every single wait on a server (handshake, reply, start-up).
const WAIT: Duration = Duration::from_secs(60);
/// The table whose inserts the end-to-end phase measures.
const E2E_TABLE: &str = "bench_e2e";
/// Rows of the end-to-end table become events on their key's topic.
const E2E_MAPPING: &str = r#"mappings:
  - name: bench-e2e
    table: public.bench_e2e
    operations: [insert]
    topic: "bench.e2e.{{ new.k }}"
    payload:
      t: new.t
      p: new.p
"#;
/// Connections the end-to-end rows are inserted over.
const E2E_WRITERS: usize = 8;
/// Connections opened at once.
const OPENING: usize = 128;
/// Histogram shards, so 10,000 readers rarely share a lock.
const SHARDS: usize = 32;

/// What a message's `data.p` says it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    WarmUp = 0,
    Latency = 1,
    Throughput = 2,
    EndToEnd = 3,
}
const PHASES: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    PgtideWs,
    PgtideSocketio,
    Node,
    All,
}

#[derive(Debug, clap::Args)]
pub struct FanoutBenchArgs {
    /// Idle-then-subscribed WebSocket connections per target.
    #[arg(long, env = "PGTIDE_BENCH_CONNECTIONS", default_value_t = 10_000)]
    pub connections: usize,
    /// Topics `fan.<k>.tick`; connection i subscribes to `fan.<i mod topics>.*`.
    /// --connections must be a multiple of it.
    #[arg(long, env = "PGTIDE_BENCH_TOPICS", default_value_t = 20)]
    pub topics: usize,
    /// Offered deliveries per second in the latency phase (events/s × subscribers per topic).
    #[arg(long, env = "PGTIDE_BENCH_RATE", default_value_t = 20_000)]
    pub rate: u64,
    /// Offered deliveries per second in the throughput phase (0 skips it).
    #[arg(long, env = "PGTIDE_BENCH_MAX_RATE", default_value_t = 500_000)]
    pub max_rate: u64,
    /// Seconds each phase publishes.
    #[arg(long, env = "PGTIDE_BENCH_DURATION", default_value_t = 10)]
    pub duration: u64,
    /// Publishing connections (pgtide handles one connection's publishes in
    /// order, each after its store commit).
    #[arg(long, env = "PGTIDE_BENCH_PUBLISHERS", default_value_t = 16)]
    pub publishers: usize,
    /// Which servers to measure.
    #[arg(long, value_enum, env = "PGTIDE_BENCH_TARGET", default_value_t = Target::All)]
    pub target: Target,
    /// Rows per second in the end-to-end phase (0 skips it).
    #[arg(long, env = "PGTIDE_BENCH_E2E_RATE", default_value_t = 1000)]
    pub e2e_rate: u32,
    /// `/ws` subscribers of the mapped table in the end-to-end phase.
    #[arg(long, env = "PGTIDE_BENCH_E2E_SUBSCRIBERS", default_value_t = 1000)]
    pub e2e_subscribers: usize,
    /// Subscribers each row reaches (they share its key); must divide
    /// --e2e-subscribers.
    #[arg(long, env = "PGTIDE_BENCH_E2E_FANOUT", default_value_t = 1)]
    pub e2e_fanout: usize,
    /// Benchmark on this server (a superuser libpq URL, wal_level=logical)
    /// instead of a throwaway local one.
    #[arg(long, env = "PGTIDE_BENCH_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Run the throwaway PostgreSQL with fsync and synchronous_commit off, to
    /// see how much of pgtide's latency is the store's commit flush. Not a
    /// setting to run pgtide with.
    #[arg(long, env = "PGTIDE_BENCH_FAST_UNSAFE_POSTGRES")]
    pub fast_unsafe_postgres: bool,
    /// The reference server's directory (server.mjs, package-lock.json);
    /// its npm dependencies are installed if missing.
    #[arg(long, env = "PGTIDE_BENCH_NODE_DIR")]
    pub node_dir: Option<PathBuf>,
}

impl FanoutBenchArgs {
    fn wants(&self, target: Target) -> bool {
        self.target == Target::All || self.target == target
    }

    fn per_topic(&self) -> usize {
        self.connections / self.topics
    }

    /// Events per second that offer `deliveries` per second.
    fn events_per_s(&self, deliveries: u64) -> f64 {
        deliveries as f64 / self.per_topic() as f64
    }
}

fn validate(args: &FanoutBenchArgs) -> anyhow::Result<()> {
    if args.topics == 0 || args.connections == 0 || !args.connections.is_multiple_of(args.topics) {
        bail!("--connections must be a positive multiple of --topics");
    }
    if args.rate == 0 || args.duration == 0 || args.publishers == 0 {
        bail!("--rate, --duration and --publishers must be at least 1");
    }
    if args.e2e_rate > 0 && args.e2e_subscribers == 0 {
        bail!("--e2e-subscribers must be at least 1 (or skip the phase with --e2e-rate 0)");
    }
    if args.e2e_fanout == 0 || !args.e2e_subscribers.is_multiple_of(args.e2e_fanout) {
        bail!("--e2e-fanout must be a positive divisor of --e2e-subscribers");
    }
    Ok(())
}

pub async fn fanout(args: FanoutBenchArgs) -> anyhow::Result<()> {
    validate(&args)?;
    raise_nofile()?;
    let node_dir = if args.wants(Target::Node) {
        Some(node_dir(&args).await?)
    } else {
        None
    };
    let names = Names::new();
    let options = pgtide_pg::local::LocalOptions {
        fast_unsafe: args.fast_unsafe_postgres,
        ..Default::default()
    };
    let server = Server::start_with(args.database_url.as_deref(), &names.suffix, &options).await?;
    let work = std::env::temp_dir().join(format!("pgtide-bench-fanout-{}", names.suffix));
    let result = tokio::select! {
        r = bench(&args, &server, &names, &work, node_dir.as_deref()) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    cleanup(&server, &names, true).await;
    server.stop().await;
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        eprintln!("server logs kept in {}", work.display());
    }
    let report = result?;
    print!("{report}");
    Ok(())
}

/// 10,000 connections need as many descriptors here and in each server.
fn raise_nofile() -> anyhow::Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("reading RLIMIT_NOFILE")?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("raising RLIMIT_NOFILE")?;
    }
    tracing::debug!(soft, hard, "open file limit");
    Ok(())
}

/// The reference server's directory, with its npm dependencies installed.
async fn node_dir(args: &FanoutBenchArgs) -> anyhow::Result<PathBuf> {
    let dir = match &args.node_dir {
        Some(d) => d.clone(),
        None => {
            let here = Path::new("bench/node-socketio");
            if here.join("server.mjs").exists() {
                here.to_owned()
            } else {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/node-socketio")
            }
        }
    };
    if !dir.join("server.mjs").exists() {
        bail!(
            "no reference server at {} (run from the repository root, or pass --node-dir)",
            dir.display()
        );
    }
    if !dir.join("node_modules/socket.io").exists() {
        tracing::info!(dir = %dir.display(), "installing the Node server's dependencies (npm ci)");
        let out = Command::new("npm")
            .arg("ci")
            .arg("--prefix")
            .arg(&dir)
            .args(["--no-audit", "--no-fund", "--loglevel=error"])
            .stdin(Stdio::null())
            .output()
            .await
            .context("running npm ci (are Node.js and npm installed?)")?;
        if !out.status.success() {
            bail!(
                "npm ci in {} failed: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(dir)
}

async fn bench(
    args: &FanoutBenchArgs,
    server: &Server,
    names: &Names,
    work: &Path,
    node_dir: Option<&Path>,
) -> anyhow::Result<Report> {
    std::fs::create_dir_all(work.join("mappings"))
        .with_context(|| format!("creating {}", work.display()))?;
    let admin = server.admin.connect().await?;
    for db in [&names.database, &names.store_database] {
        admin
            .batch_execute(&format!(
                "CREATE DATABASE {}",
                pgtide_pg::replication::quote_ident(db)
            ))
            .await
            .with_context(|| format!("creating database {db}"))?;
    }
    drop(admin);
    let db = server.admin.with_dbname(&names.database).connect().await?;
    db.batch_execute(&format!(
        "CREATE TABLE public.{E2E_TABLE} (id bigserial PRIMARY KEY, k int4 NOT NULL, t int8 NOT NULL, p int4 NOT NULL, pad text NOT NULL)"
    ))
    .await
    .context("creating the end-to-end table")?;
    std::fs::write(work.join("mappings").join("bench_e2e.yaml"), E2E_MAPPING)
        .context("writing the end-to-end mapping")?;
    let pgtide = PgtideCommand {
        database: server.url(&names.database),
        store: server.url(&names.store_database),
        slot: names.pgtide_slot.clone(),
        work: work.to_owned(),
    };
    let postgres_pid = server.local_data_dir().and_then(postmaster_pid);

    let mut runs = Vec::new();
    for (target, proto) in [
        (Target::PgtideWs, Proto::Ws),
        (Target::PgtideSocketio, Proto::SocketIo),
        (Target::Node, Proto::SocketIo),
    ] {
        if !args.wants(target) {
            continue;
        }
        let child = match target {
            Target::Node => {
                let dir = node_dir.ok_or_else(|| anyhow!("no Node server directory"))?;
                ServerProcess::node(dir, work).await?
            }
            _ => pgtide.spawn(&format!("{target:?}")).await?,
        };
        let run = Box::pin(fanout_target(args, target, proto, child, postgres_pid)).await?;
        runs.push(run);
    }
    let e2e = if args.e2e_rate > 0 && args.wants(Target::PgtideWs) {
        let child = pgtide.spawn("e2e").await?;
        let writer_config = server.admin.with_dbname(&names.database);
        Some(Box::pin(end_to_end(args, child, &db, &writer_config, postgres_pid)).await?)
    } else {
        None
    };
    Ok(Report {
        connections: args.connections,
        topics: args.topics,
        publishers: args.publishers,
        rate: args.rate,
        max_rate: args.max_rate,
        duration: args.duration,
        runs,
        e2e,
        postgres_measured: postgres_pid.is_some(),
        fast_unsafe: args.fast_unsafe_postgres,
    })
}

/// How pgtide children are started: `run` on the bench database, the store in
/// a database of its own, no auth, a port of its own.
struct PgtideCommand {
    database: String,
    store: String,
    slot: String,
    work: PathBuf,
}

impl PgtideCommand {
    async fn spawn(&self, label: &str) -> anyhow::Result<ServerProcess> {
        let exe = std::env::current_exe().context("finding the pgtide binary")?;
        let mut cmd = Command::new(exe);
        cmd.arg("run")
            .args(["--database-url", &self.database])
            .args(["--store-url", &self.store])
            .args(["--slot", &self.slot, "--publication", &self.slot])
            .arg("--mappings")
            .arg(self.work.join("mappings"))
            .args(["--insecure-no-auth", "--listen", "127.0.0.1:0"])
            // The bench measures fan-out, not the connection limit.
            .args(["--max-connections", "1000000"])
            .env("PGTIDE_LOG", "warn")
            .env_remove("TOKIO_WORKER_THREADS");
        let log = self.work.join(format!("pgtide-{label}.log"));
        ServerProcess::spawn(cmd, "pgtide listening on http://", &log).await
    }
}

/// A server under test, in a process of its own.
struct ServerProcess {
    child: Child,
    pid: i32,
    addr: String,
    log: PathBuf,
}

impl ServerProcess {
    async fn node(dir: &Path, work: &Path) -> anyhow::Result<ServerProcess> {
        let mut cmd = Command::new("node");
        cmd.arg(dir.join("server.mjs")).arg("0");
        ServerProcess::spawn(
            cmd,
            "node socket.io listening on http://",
            &work.join("node.log"),
        )
        .await
    }

    /// Starts `cmd` and waits for the stdout line `<prefix>ADDR`.
    async fn spawn(mut cmd: Command, prefix: &str, log: &Path) -> anyhow::Result<ServerProcess> {
        let stderr =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("starting the server under test")?;
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| anyhow!("the server under test exited at once"))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(addr) = line.strip_prefix(prefix) {
                    return Ok(addr.trim().to_owned());
                }
            }
            bail!("it exited before listening; see {}", log.display())
        })
        .await
        .map_err(|_| anyhow!("it did not listen within {} s", WAIT.as_secs()))
        .and_then(|r| r)
        .context("starting the server under test")?;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(ServerProcess {
            child,
            pid,
            addr,
            log: log.to_owned(),
        })
    }

    /// SIGTERM, then a kill if it lingers.
    async fn stop(mut self) {
        use nix::sys::signal::{Signal, kill};
        let _ = kill(nix::unistd::Pid::from_raw(self.pid), Signal::SIGTERM);
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                pid = self.pid,
                "the server under test ignored SIGTERM; killing it"
            );
            let _ = self.child.kill().await;
        }
    }

    fn alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!(
                "the server under test exited ({status}); see {}",
                self.log.display()
            ),
            Err(e) => Err(e).context("checking the server under test"),
        }
    }
}

/// The wire protocol the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    /// pgtide's `/ws` (SPEC §7).
    Ws,
    /// Socket.IO v4 over the raw WebSocket transport.
    SocketIo,
}

impl Proto {
    fn url(self, addr: &str) -> String {
        match self {
            Proto::Ws => format!("ws://{addr}/ws"),
            Proto::SocketIo => format!("ws://{addr}/socket.io/?EIO=4&transport=websocket"),
        }
    }
}

/// What one target measured.
struct Run {
    target: Target,
    rss_before: u64,
    rss_after: u64,
    /// Socket.IO subscribes sent again after going unanswered.
    resubscribed: u64,
    latency: PhaseReport,
    throughput: Option<PhaseReport>,
}

impl Run {
    fn rss_per_connection(&self, connections: usize) -> f64 {
        self.rss_after.saturating_sub(self.rss_before) as f64 / connections as f64
    }
}

struct PhaseReport {
    /// Events per second offered.
    offered_events: f64,
    /// Events the server accepted (acknowledged publishes).
    published: u64,
    /// Publishes refused or unanswered.
    failed: u64,
    /// From the phase's start until its last message arrived.
    completed_in: Duration,
    /// Messages received while the phase published, per second.
    delivered_per_s: f64,
    /// Messages of the phase received in the end, and expected.
    received: u64,
    expected: u64,
    /// Drop notices' counts (pgtide's bounded outbox).
    dropped: u64,
    p50: Duration,
    p99: Duration,
    max: Duration,
    /// Scheduled publish → its reply.
    /// The furthest a publish fell behind its schedule.
    behind: Duration,
    ack_p50: Duration,
    ack_p99: Duration,
    cpu: Cpu,
}

/// CPU seconds used while a phase published.
#[derive(Default, Clone, Copy)]
struct Cpu {
    wall: f64,
    server: f64,
    client: f64,
    postgres: Option<f64>,
}

async fn fanout_target(
    args: &FanoutBenchArgs,
    target: Target,
    proto: Proto,
    mut server: ServerProcess,
    postgres_pid: Option<i32>,
) -> anyhow::Result<Run> {
    let label = match target {
        Target::PgtideWs => "pgtide /ws",
        Target::PgtideSocketio => "pgtide sio",
        _ => "node sio",
    };
    tracing::info!(target = label, addr = %server.addr, "measuring");
    let stats = Arc::new(Stats::new()?);
    let mut readers = JoinSet::new();
    let url = proto.url(&server.addr);
    let measured = async {
        let rss_before = rss(server.pid)?;
        let bar = progress_bar(args.connections as u64, label);
        bar.set_message("connect");
        let patterns: Vec<String> = (0..args.connections)
            .map(|i| format!("fan.{}.*", i % args.topics))
            .collect();
        let resent = AtomicU64::new(0);
        let mut opening = futures_util::stream::iter(patterns.iter().enumerate())
            .map(|(i, pattern)| {
                let url = url.clone();
                let resent = &resent;
                async move { (i, subscriber(&url, proto, pattern, resent).await) }
            })
            .buffer_unordered(OPENING);
        while let Some((i, ws)) = opening.next().await {
            let ws = ws.with_context(|| format!("opening connection {i} to {label}"))?;
            readers.spawn(receive(ws, proto, stats.clone(), i % SHARDS));
            bar.inc(1);
        }
        bar.finish_and_clear();
        drop(opening);
        server.alive()?;
        let rss_after = rss(server.pid)?;
        tracing::info!(
            target = label,
            rss_before_kib = rss_before / 1024,
            rss_after_kib = rss_after / 1024,
            "connections open"
        );
        let mut publishers = Vec::with_capacity(args.publishers);
        for _ in 0..args.publishers {
            let mut ws = connect(&url).await?;
            if proto == Proto::SocketIo {
                sio_handshake(&mut ws).await?;
            }
            publishers.push(ws);
        }
        // Every subscriber gets one event of its topic before measuring.
        let warm = Phased {
            phase: Phase::WarmUp,
            events: args.topics as u64,
            events_per_s: args.topics as f64,
        };
        let (publishers2, _) =
            publish(publishers, proto, warm, args.topics, &stats, server.pid).await?;
        publishers = publishers2;
        let expected = args.connections as u64;
        wait_received(&stats, Phase::WarmUp, expected, &mut server, "warm-up").await?;

        let events_per_s = args.events_per_s(args.rate);
        let latency = Phased {
            phase: Phase::Latency,
            events: (events_per_s * args.duration as f64).round() as u64,
            events_per_s,
        };
        let (publishers2, latency) = run_phase(
            args,
            publishers,
            proto,
            latency,
            &stats,
            &mut server,
            postgres_pid,
            label,
        )
        .await?;
        publishers = publishers2;
        let throughput = if args.max_rate > 0 {
            let events_per_s = args.events_per_s(args.max_rate);
            let phase = Phased {
                phase: Phase::Throughput,
                events: (events_per_s * args.duration as f64).round() as u64,
                events_per_s,
            };
            let (_, report) = run_phase(
                args,
                publishers,
                proto,
                phase,
                &stats,
                &mut server,
                postgres_pid,
                label,
            )
            .await?;
            Some(report)
        } else {
            None
        };
        anyhow::Ok(Run {
            target,
            rss_before,
            rss_after,
            resubscribed: resent.load(Ordering::Relaxed),
            latency,
            throughput,
        })
    }
    .await;
    readers.abort_all();
    while readers.join_next().await.is_some() {}
    server.stop().await;
    measured
}

/// One phase's publishing plan.
#[derive(Clone, Copy)]
struct Phased {
    phase: Phase,
    events: u64,
    events_per_s: f64,
}

#[allow(clippy::too_many_arguments)]
async fn run_phase(
    args: &FanoutBenchArgs,
    publishers: Vec<Ws>,
    proto: Proto,
    plan: Phased,
    stats: &Arc<Stats>,
    server: &mut ServerProcess,
    postgres_pid: Option<i32>,
    label: &str,
) -> anyhow::Result<(Vec<Ws>, PhaseReport)> {
    let per_topic = args.per_topic() as u64;
    let name = match plan.phase {
        Phase::Latency => "latency",
        _ => "throughput",
    };
    tracing::info!(
        target = label,
        phase = name,
        events_per_s = plan.events_per_s,
        deliveries_per_s = plan.events_per_s * per_topic as f64,
        "publishing"
    );
    let dropped_before = stats.dropped.load(Ordering::Relaxed);
    let bar = progress_bar(plan.events * per_topic, "");
    bar.set_prefix(format!("{label} {name}"));
    let monitor = monitor(stats.clone(), plan.phase, bar.clone());
    let cpu_before = cpu_sample(server.pid, postgres_pid);
    let received_before = stats.total.load(Ordering::Relaxed);
    let started = Instant::now();
    // Publishing starts 20 ms in; the window ends with the last scheduled publish.
    let window_end = Duration::from_millis(20)
        + Duration::from_secs_f64(plan.events as f64 / plan.events_per_s.max(1e-3));
    let window_sample = async {
        tokio::time::sleep(window_end).await;
        (
            stats.total.load(Ordering::Relaxed),
            cpu_sample(server.pid, postgres_pid),
        )
    };
    let (published, (received_at_end, cpu_after)) = tokio::join!(
        publish(publishers, proto, plan, args.topics, stats, server.pid),
        window_sample
    );
    let (publishers, published) = published?;
    let window = cpu_after.at.duration_since(started);
    let received_in_window = received_at_end - received_before;
    let expected = published.acked * per_topic;
    let waited = wait_received(stats, plan.phase, expected, server, name).await;
    monitor.abort();
    bar.finish_and_clear();
    if let Err(e) = waited {
        // Losses are reported, not fatal: pgtide drops from full outboxes.
        tracing::warn!(error = format!("{e:#}"), "not every message arrived");
    }
    server.alive()?;
    let histogram = stats.histogram(plan.phase)?;
    let report = PhaseReport {
        offered_events: plan.events_per_s,
        published: published.acked,
        failed: published.failed,
        completed_in: Duration::from_micros(
            stats.last_at[plan.phase as usize].load(Ordering::Relaxed),
        )
        .saturating_sub(started.duration_since(stats.base)),
        delivered_per_s: received_in_window as f64 / window.as_secs_f64().max(1e-3),
        received: stats.per_phase[plan.phase as usize].load(Ordering::Relaxed),
        expected,
        dropped: stats.dropped.load(Ordering::Relaxed) - dropped_before,
        p50: Duration::from_micros(histogram.value_at_quantile(0.5)),
        p99: Duration::from_micros(histogram.value_at_quantile(0.99)),
        max: Duration::from_micros(histogram.max()),
        behind: published.behind,
        ack_p50: Duration::from_micros(published.ack.value_at_quantile(0.5)),
        ack_p99: Duration::from_micros(published.ack.value_at_quantile(0.99)),
        cpu: cpu_after.since(&cpu_before),
    };
    tracing::info!(
        target = label,
        phase = name,
        delivered_per_s = report.delivered_per_s as u64,
        p50_ms = ms(report.p50),
        p99_ms = ms(report.p99),
        received = report.received,
        expected = report.expected,
        "phase done"
    );
    Ok((publishers, report))
}

/// Shows a phase's deliveries on the progress bar.
fn monitor(stats: Arc<Stats>, phase: Phase, bar: ProgressBar) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            bar.set_position(stats.per_phase[phase as usize].load(Ordering::Relaxed));
        }
    })
}

/// Waits until `expected` messages of `phase` have arrived, or until none
/// arrived for 3 s (then fails, saying how many).
async fn wait_received(
    stats: &Stats,
    phase: Phase,
    expected: u64,
    server: &mut ServerProcess,
    what: &str,
) -> anyhow::Result<()> {
    let counter = &stats.per_phase[phase as usize];
    let mut last = counter.load(Ordering::Relaxed);
    let mut progressed = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        let now = counter.load(Ordering::Relaxed);
        if now >= expected {
            return Ok(());
        }
        if now != last {
            last = now;
            progressed = Instant::now();
        }
        server.alive()?;
        if progressed.elapsed() > Duration::from_secs(3) {
            bail!("{what}: {now} of {expected} messages arrived, then nothing for 3 s");
        }
        tick.tick().await;
    }
}

/// What a phase's publishers achieved.
struct Published {
    /// Send → reply, per acknowledged publish (for pgtide: the store commit and the queue before it).
    ack: Histogram<u64>,
    /// The furthest any send fell behind its schedule (a server holding
    /// publishers back shows here).
    behind: Duration,
    acked: u64,
    failed: u64,
}

/// Runs the publishers for one phase, each on its own connection at its share
/// of the rate, and returns them with the counts once every publish was
/// answered (or 30 s passed).
async fn publish(
    publishers: Vec<Ws>,
    proto: Proto,
    plan: Phased,
    topics: usize,
    stats: &Arc<Stats>,
    server_pid: i32,
) -> anyhow::Result<(Vec<Ws>, Published)> {
    let n = publishers.len() as u64;
    let empty = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut tasks = JoinSet::new();
    let start = Instant::now() + Duration::from_millis(20);
    for (j, ws) in publishers.into_iter().enumerate() {
        let j = j as u64;
        let quota = plan.events / n + u64::from(j < plan.events % n);
        let period = Duration::from_secs_f64(n as f64 / plan.events_per_s.max(1e-3));
        // Publishers are spread over the period so the total rate is smooth.
        let first = start + period.mul_f64(j as f64 / n as f64);
        tasks.spawn(publisher(
            ws,
            proto,
            PublisherPlan {
                phase: plan.phase,
                quota,
                first,
                period,
                first_topic: j,
                step: n,
                topics: topics as u64,
            },
            stats.base,
            empty.clone(),
        ));
    }
    let mut back = Vec::new();
    let mut published = Published {
        ack: empty,
        behind: Duration::ZERO,
        acked: 0,
        failed: 0,
    };
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let (ws, outcome) = joined.context("a publisher task failed")?;
        let outcome = outcome.with_context(|| format!("publishing (server pid {server_pid})"))?;
        published.acked += outcome.acked;
        published.behind = published.behind.max(outcome.behind);
        published
            .ack
            .add(&outcome.ack)
            .context("merging publish latency histograms")?;
        published.failed += outcome.failed;
        if first_error.is_none() {
            first_error = outcome.error;
        }
        back.push(ws);
    }
    if let Some(e) = first_error {
        tracing::warn!(failed = published.failed, first = %e, "some publishes failed");
    }
    Ok((back, published))
}

struct PublisherPlan {
    phase: Phase,
    quota: u64,
    first: Instant,
    period: Duration,
    first_topic: u64,
    step: u64,
    topics: u64,
}

struct PublisherOutcome {
    ack: Histogram<u64>,
    /// The furthest a send fell behind its scheduled time.
    behind: Duration,
    acked: u64,
    failed: u64,
    error: Option<String>,
}

/// Publishes `quota` events on a steady schedule, each stamped with the time
/// it was sent, noting how far sends fell behind the schedule, reading
/// replies as they come.
async fn publisher(
    mut ws: Ws,
    proto: Proto,
    plan: PublisherPlan,
    base: Instant,
    ack: Histogram<u64>,
) -> (Ws, anyhow::Result<PublisherOutcome>) {
    let mut outcome = PublisherOutcome {
        ack,
        behind: Duration::ZERO,
        acked: 0,
        failed: 0,
        error: None,
    };
    // Replies come in publish order: each connection's publishes are handled in turn.
    let mut scheduled = std::collections::VecDeque::new();
    let result = async {
        let mut tick = tokio::time::interval_at(plan.first.into(), plan.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut sent = 0u64;
        let mut drain_until: Option<tokio::time::Instant> = None;
        loop {
            if sent == plan.quota && outcome.acked + outcome.failed >= sent {
                return Ok(());
            }
            if sent == plan.quota && drain_until.is_none() {
                drain_until = Some(tokio::time::Instant::now() + Duration::from_secs(30));
            }
            let drain = async {
                match drain_until {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                message = ws.next() => {
                    let text = match message {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Close(_))) | None => bail!("the server closed a publishing connection"),
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => return Err(e).context("reading publish replies"),
                    };
                    match proto {
                        Proto::SocketIo if text.as_str() == "2" => ws.send(Message::text("3")).await?,
                        Proto::SocketIo if !text.as_str().starts_with("43") => {}
                        _ => {
                            if let Some(at) = scheduled.pop_front() {
                                let waited = Instant::now().saturating_duration_since(at);
                                outcome.ack.saturating_record(waited.as_micros() as u64);
                            }
                            if text.as_str().contains("\"status\":\"success\"") {
                                outcome.acked += 1;
                            } else {
                                outcome.failed += 1;
                                if outcome.error.is_none() {
                                    outcome.error = Some(text.as_str().to_owned());
                                }
                            }
                        }
                    }
                }
                at = tick.tick(), if sent < plan.quota => {
                    let k = (plan.first_topic + sent * plan.step) % plan.topics;
                    // Latency counts from the send itself, not from the tick
                    // (the timer fires up to a millisecond late); how far
                    // sends fell behind their schedule is reported beside it.
                    let now = Instant::now();
                    outcome.behind = outcome.behind.max(now.saturating_duration_since(at.into_std()));
                    let t = now.saturating_duration_since(base).as_micros() as u64;
                    let p = plan.phase as u8;
                    let body = format!(
                        r#"{{"topic":"fan.{k}.tick","event_type":"fan.tick","data":{{"t":{t},"p":{p}}}}}"#
                    );
                    let id = sent + 1;
                    let frame = match proto {
                        Proto::Ws => format!(
                            r#"{{"type":"publish","id":{id},"topic":"fan.{k}.tick","event_type":"fan.tick","data":{{"t":{t},"p":{p}}}}}"#
                        ),
                        Proto::SocketIo => format!(r#"42{id}["publish",{body}]"#),
                    };
                    ws.send(Message::text(frame)).await.context("sending a publish")?;
                    sent += 1;
                    scheduled.push_back(now);
                }
                _ = drain => {
                    outcome.failed += sent - outcome.acked - outcome.failed;
                    outcome.error.get_or_insert_with(|| "no reply within 30 s".to_owned());
                    return Ok(());
                }
            }
        }
    }
    .await;
    (ws, result.map(|()| outcome))
}

async fn connect(url: &str) -> anyhow::Result<Ws> {
    let config = WebSocketConfig::default().read_buffer_size(16 * 1024);
    let (ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async_with_config(url, Some(config), true),
    )
    .await
    .map_err(|_| anyhow!("connecting to {url} timed out"))?
    .with_context(|| format!("connecting to {url}"))?;
    Ok(ws)
}

/// The next text frame (answering Socket.IO pings on the way).
async fn next_text(ws: &mut Ws) -> anyhow::Result<String> {
    tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.as_str() == "2" => {
                    ws.send(Message::text("3")).await?;
                }
                Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
                Some(Ok(Message::Close(_))) | None => bail!("the server closed the connection"),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
            }
        }
    })
    .await
    .map_err(|_| anyhow!("no reply within {} s", WAIT.as_secs()))?
}

/// Engine.IO open (`0{...}`), then the Socket.IO connect to `/` (`40`).
async fn sio_handshake(ws: &mut Ws) -> anyhow::Result<()> {
    let open = next_text(ws).await?;
    if !open.starts_with('0') {
        bail!("expected an Engine.IO open packet, got {open:?}");
    }
    ws.send(Message::text("40")).await?;
    loop {
        let reply = next_text(ws).await?;
        if reply.starts_with("40") {
            return Ok(());
        }
        if reply.starts_with("44") {
            bail!("the Socket.IO connect was refused: {reply}");
        }
    }
}

/// A connection subscribed to `pattern`.
/// A Socket.IO subscribe unanswered this long is sent again (and counted).
const RESUBSCRIBE: Duration = Duration::from_secs(5);

/// A connection subscribed to `pattern`. A Socket.IO subscribe that gets no
/// ack within [`RESUBSCRIBE`] is sent again, up to three times, and counted
/// in `resent`: a server that registers its event handlers only after sending
/// the connect packet can miss an event sent right after it.
async fn subscriber(
    url: &str,
    proto: Proto,
    pattern: &str,
    resent: &AtomicU64,
) -> anyhow::Result<Ws> {
    let mut ws = connect(url).await?;
    match proto {
        Proto::Ws => {
            let frame = format!(r#"{{"type":"subscribe","topic":"{pattern}","id":1}}"#);
            ws.send(Message::text(frame)).await?;
            let reply = next_text(&mut ws)
                .await
                .context("waiting for the subscribe reply")?;
            if !reply.contains("\"status\":\"success\"") {
                bail!("subscribe refused: {reply}");
            }
        }
        Proto::SocketIo => {
            sio_handshake(&mut ws)
                .await
                .context("in the Socket.IO handshake")?;
            let mut attempt = 0;
            'sent: loop {
                let frame = format!(r#"42{attempt}["subscribe",{{"topic":"{pattern}"}}]"#);
                ws.send(Message::text(frame)).await?;
                let deadline = tokio::time::Instant::now() + RESUBSCRIBE;
                loop {
                    let reply = match tokio::time::timeout_at(deadline, next_text(&mut ws)).await {
                        Ok(reply) => reply.context("waiting for the subscribe ack")?,
                        Err(_) if attempt < 2 => {
                            resent.fetch_add(1, Ordering::Relaxed);
                            attempt += 1;
                            continue 'sent;
                        }
                        Err(_) => bail!("three subscribes went unanswered"),
                    };
                    if reply.starts_with("43") {
                        if !reply.contains("\"success\"") {
                            bail!("subscribe refused: {reply}");
                        }
                        break 'sent;
                    }
                }
            }
        }
    }
    Ok(ws)
}

/// Reads events until the connection ends (or the task is aborted).
async fn receive(mut ws: Ws, proto: Proto, stats: Arc<Stats>, shard: usize) {
    while let Some(message) = ws.next().await {
        let text = match message {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        match proto {
            Proto::Ws => {
                if let Ok(envelope) = serde_json::from_str::<Envelope>(text.as_str()) {
                    stats.record(&envelope, shard);
                }
            }
            Proto::SocketIo => {
                let text = text.as_str();
                if text == "2" {
                    if ws.send(Message::text("3")).await.is_err() {
                        break;
                    }
                } else if let Some(packet) = text.strip_prefix("42")
                    && let Ok(SioEvent(_, envelope)) = serde_json::from_str::<SioEvent>(packet)
                {
                    stats.record(&envelope, shard);
                }
            }
        }
    }
}

/// The fields of an event envelope the client reads.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    topic: Option<Cow<'a, str>>,
    data: Option<Payload>,
}

/// `data` of a bench event (`t`, `p`), or of a drop notice (`count`).
#[derive(Deserialize)]
struct Payload {
    t: Option<u64>,
    p: Option<usize>,
    count: Option<u64>,
}

/// `["event", envelope]`.
#[derive(Deserialize)]
struct SioEvent<'a>(serde::de::IgnoredAny, #[serde(borrow)] Envelope<'a>);

/// What the readers saw, shared by all of them.
struct Stats {
    base: Instant,
    /// Every bench message received, whatever its phase.
    total: AtomicU64,
    per_phase: [AtomicU64; PHASES],
    /// When each phase's latest message arrived (µs after `base`).
    last_at: [AtomicU64; PHASES],
    dropped: AtomicU64,
    shards: Vec<Mutex<Vec<Histogram<u64>>>>,
}

impl Stats {
    fn new() -> anyhow::Result<Stats> {
        let mut shards = Vec::with_capacity(SHARDS);
        for _ in 0..SHARDS {
            let mut phases = Vec::with_capacity(PHASES);
            for _ in 0..PHASES {
                phases.push(
                    Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
                        .context("creating a latency histogram")?,
                );
            }
            shards.push(Mutex::new(phases));
        }
        Ok(Stats {
            base: Instant::now(),
            total: AtomicU64::new(0),
            per_phase: Default::default(),
            last_at: Default::default(),
            dropped: AtomicU64::new(0),
            shards,
        })
    }

    fn record(&self, envelope: &Envelope<'_>, shard: usize) {
        let Some(data) = &envelope.data else {
            return;
        };
        if envelope.topic.as_deref() == Some("meta.ws") {
            self.dropped
                .fetch_add(data.count.unwrap_or(0), Ordering::Relaxed);
            return;
        }
        let (Some(t), Some(p)) = (data.t, data.p) else {
            return;
        };
        if p >= PHASES {
            return;
        }
        let now = self.base.elapsed().as_micros() as u64;
        self.total.fetch_add(1, Ordering::Relaxed);
        self.per_phase[p].fetch_add(1, Ordering::Relaxed);
        self.last_at[p].fetch_max(now, Ordering::Relaxed);
        let mut phases = self.shards[shard]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        phases[p].saturating_record(now.saturating_sub(t).max(1));
    }

    fn histogram(&self, phase: Phase) -> anyhow::Result<Histogram<u64>> {
        let mut all = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
        for shard in &self.shards {
            let phases = shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            all.add(&phases[phase as usize])
                .context("merging latency histograms")?;
        }
        Ok(all)
    }
}

/// A process's resident set in bytes (`VmRSS`).
fn rss(pid: i32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))
}

/// User + system CPU seconds of a process (`/proc/PID/stat` counts in
/// USER_HZ, 100 per second on Linux).
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields after it are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// The postmaster's and its backends' CPU seconds together.
fn postgres_cpu(postmaster: i32) -> f64 {
    let mut total = cpu_seconds(&postmaster.to_string()).unwrap_or(0.0);
    let parent = postmaster.to_string();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let ppid = stat
                .rfind(')')
                .and_then(|i| stat.get(i + 2..))
                .and_then(|rest| rest.split(' ').nth(1));
            if ppid == Some(parent.as_str()) {
                total += cpu_seconds(pid).unwrap_or(0.0);
            }
        }
    }
    total
}

fn postmaster_pid(data_dir: &Path) -> Option<i32> {
    std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

struct CpuSample {
    at: Instant,
    server: f64,
    client: f64,
    postgres: Option<f64>,
}

fn cpu_sample(server: i32, postgres: Option<i32>) -> CpuSample {
    CpuSample {
        at: Instant::now(),
        server: cpu_seconds(&server.to_string()).unwrap_or(0.0),
        client: cpu_seconds("self").unwrap_or(0.0),
        postgres: postgres.map(postgres_cpu),
    }
}

impl CpuSample {
    fn since(&self, before: &CpuSample) -> Cpu {
        Cpu {
            wall: self.at.duration_since(before.at).as_secs_f64(),
            server: self.server - before.server,
            client: self.client - before.client,
            postgres: self.postgres.zip(before.postgres).map(|(a, b)| a - b),
        }
    }
}

/// What the end-to-end phase measured.
struct EndToEnd {
    subscribers: usize,
    fanout: usize,
    rate: u32,
    rows: u64,
    achieved_rate: f64,
    received: u64,
    expected: u64,
    dropped: u64,
    p50: Duration,
    p99: Duration,
    max: Duration,
    insert_p50: Duration,
    cpu: Cpu,
}

/// Row commit → `/ws` client: `--e2e-subscribers` clients on the mapped
/// table's key topics, rows inserted one per transaction at `--e2e-rate`,
/// each reaching the `--e2e-fanout` subscribers of its key.
async fn end_to_end(
    args: &FanoutBenchArgs,
    mut server: ServerProcess,
    db: &tokio_postgres::Client,
    writer_config: &pgtide_pg::PgConfig,
    postgres_pid: Option<i32>,
) -> anyhow::Result<EndToEnd> {
    let stats = Arc::new(Stats::new()?);
    let mut readers = JoinSet::new();
    let url = Proto::Ws.url(&server.addr);
    let keys = args.e2e_subscribers / args.e2e_fanout;
    let measured = async {
        let bar = progress_bar(args.e2e_subscribers as u64, "e2e");
        let resent = AtomicU64::new(0);
        let mut opening = futures_util::stream::iter(0..args.e2e_subscribers)
            .map(|i| {
                let url = url.clone();
                let pattern = format!("bench.e2e.{}", i % keys);
                let resent = &resent;
                async move { (i, subscriber(&url, Proto::Ws, &pattern, resent).await) }
            })
            .buffer_unordered(OPENING);
        while let Some((i, ws)) = opening.next().await {
            let ws = ws.with_context(|| format!("opening end-to-end connection {i}"))?;
            readers.spawn(receive(ws, Proto::Ws, stats.clone(), i % SHARDS));
            bar.inc(1);
        }
        bar.finish_and_clear();
        drop(opening);
        let insert_sql = format!(
            "INSERT INTO public.{E2E_TABLE} (k, t, p, pad) VALUES ($3::int4, $1::int8, $2::int4, md5($1::int8::text))"
        );
        // One row per key, until the slot streams and a row reaches every subscriber.
        let insert_round = db
            .prepare(&format!(
                "INSERT INTO public.{E2E_TABLE} (k, t, p, pad)
                 SELECT g, $1::int8, $2::int4, md5($1::int8::text) FROM generate_series(0, {keys} - 1) g"
            ))
            .await
            .context("preparing the end-to-end warm-up insert")?;
        let warm_phase = Phase::WarmUp as i32;
        let mut warm = 0u64;
        let deadline = Instant::now() + WAIT;
        while stats.per_phase[Phase::WarmUp as usize].load(Ordering::Relaxed)
            < args.e2e_subscribers as u64
        {
            if Instant::now() > deadline {
                bail!(
                    "no inserted row reached the subscribers within {} s",
                    WAIT.as_secs()
                );
            }
            server.alive()?;
            let t = stats.base.elapsed().as_micros() as i64;
            db.execute(&insert_round, &[&t, &warm_phase]).await?;
            warm += 1;
            tokio::time::sleep(Duration::from_millis(if warm < 10 { 10 } else { 100 })).await;
        }
        // Stragglers of the warm-up would count in the phase's window.
        let _ = wait_received(
            &stats,
            Phase::WarmUp,
            warm * args.e2e_subscribers as u64,
            &mut server,
            "e2e warm-up",
        )
        .await;

        let rows = u64::from(args.e2e_rate) * args.duration;
        tracing::info!(
            rate = args.e2e_rate,
            subscribers = args.e2e_subscribers,
            "measuring row commit -> client latency"
        );
        let bar = progress_bar(rows * args.e2e_fanout as u64, "e2e");
        let monitor = monitor(stats.clone(), Phase::EndToEnd, bar.clone());
        let phase = Phase::EndToEnd as i32;
        let mut inserts = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
        let mut tick =
            tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(args.e2e_rate)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let cpu_before = cpu_sample(server.pid, postgres_pid);
        let started = Instant::now();
        // Inserts go out on schedule over several connections, so one slow
        // commit does not hold the next rows back; each row carries its
        // scheduled time.
        let mut writers = Vec::with_capacity(E2E_WRITERS);
        for _ in 0..E2E_WRITERS {
            let client = writer_config.connect().await?;
            let statement = client.prepare(&insert_sql).await?;
            writers.push((client, statement));
        }
        let mut in_flight = futures_util::stream::FuturesUnordered::new();
        let mut issued = 0u64;
        while issued < rows || !in_flight.is_empty() {
            tokio::select! {
                _ = tick.tick(), if issued < rows => {
                    let (client, statement) = &writers[issued as usize % E2E_WRITERS];
                    // From when the INSERT goes out (the timer fires up to a
                    // millisecond after its tick).
                    let sent = Instant::now();
                    let t = sent.saturating_duration_since(stats.base).as_micros() as i64;
                    let key = (issued % keys as u64) as i32;
                    in_flight.push(async move {
                        let done = client.execute(statement, &[&t, &phase, &key]).await;
                        (sent, done)
                    });
                    issued += 1;
                }
                Some((sent, done)) = in_flight.next(), if !in_flight.is_empty() => {
                    done.context("inserting an end-to-end row")?;
                    inserts.saturating_record(sent.elapsed().as_micros() as u64);
                }
            }
        }
        let elapsed = started.elapsed();
        let cpu = cpu_sample(server.pid, postgres_pid).since(&cpu_before);
        let expected = rows * args.e2e_fanout as u64;
        let waited = wait_received(&stats, Phase::EndToEnd, expected, &mut server, "e2e").await;
        monitor.abort();
        bar.finish_and_clear();
        if let Err(e) = waited {
            tracing::warn!(error = format!("{e:#}"), "not every row arrived");
        }
        let histogram = stats.histogram(Phase::EndToEnd)?;
        anyhow::Ok(EndToEnd {
            subscribers: args.e2e_subscribers,
            fanout: args.e2e_fanout,
            rate: args.e2e_rate,
            rows,
            achieved_rate: rows as f64 / elapsed.as_secs_f64().max(1e-9),
            received: stats.per_phase[Phase::EndToEnd as usize].load(Ordering::Relaxed),
            expected,
            dropped: stats.dropped.load(Ordering::Relaxed),
            p50: Duration::from_micros(histogram.value_at_quantile(0.5)),
            p99: Duration::from_micros(histogram.value_at_quantile(0.99)),
            max: Duration::from_micros(histogram.max()),
            insert_p50: Duration::from_micros(inserts.value_at_quantile(0.5)),
            cpu,
        })
    }
    .await;
    readers.abort_all();
    while readers.join_next().await.is_some() {}
    server.stop().await;
    measured
}

struct Report {
    connections: usize,
    topics: usize,
    publishers: usize,
    rate: u64,
    max_rate: u64,
    duration: u64,
    runs: Vec<Run>,
    e2e: Option<EndToEnd>,
    postgres_measured: bool,
    fast_unsafe: bool,
}

fn target_name(target: Target) -> &'static str {
    match target {
        Target::PgtideWs => "pgtide /ws",
        Target::PgtideSocketio => "pgtide Socket.IO",
        Target::Node => "node socket.io",
        Target::All => "all",
    }
}

impl fmt::Display for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let share = |s: f64| s / self.wall.max(1e-9) * 100.0;
        write!(
            f,
            "server {:.0}%, load client {:.0}%",
            share(self.server),
            share(self.client)
        )?;
        if let Some(pg) = self.postgres {
            write!(f, ", postgres {:.0}%", share(pg))?;
        }
        write!(f, " of one core")
    }
}

impl PhaseReport {
    fn line(&self, f: &mut fmt::Formatter<'_>, name: &str) -> fmt::Result {
        writeln!(
            f,
            "    {name:<17} {:>9.0} msgs/s  p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms  ({} of {} delivered{}, the last {:.1} s after the start; {} events published at {:.0}/s{})",
            self.delivered_per_s,
            ms(self.p50),
            ms(self.p99),
            ms(self.max),
            self.received,
            self.expected,
            if self.dropped > 0 {
                format!(", {} dropped by full outboxes", self.dropped)
            } else {
                String::new()
            },
            self.completed_in.as_secs_f64(),
            self.published,
            self.offered_events,
            if self.failed > 0 {
                format!(", {} publishes failed", self.failed)
            } else {
                String::new()
            },
        )?;
        writeln!(
            f,
            "    {:<17} publish -> reply p50 {:.1} ms  p99 {:.1} ms; sends up to {:.1} ms behind schedule; cpu: {}",
            "",
            ms(self.ack_p50),
            ms(self.ack_p99),
            ms(self.behind),
            self.cpu
        )
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per_topic = self.connections / self.topics;
        writeln!(
            f,
            "pgtide bench fanout: {} connections, each subscribed to one of {} patterns fan.<k>.* ({} per topic); {} publishing connections; {} s per phase",
            self.connections, self.topics, per_topic, self.publishers, self.duration
        )?;
        writeln!(
            f,
            "  pgtide stores every event (PostgreSQL commit) before delivering it; the Node server keeps nothing"
        )?;
        if self.fast_unsafe {
            writeln!(
                f,
                "  PostgreSQL ran with fsync=off and synchronous_commit=off (--fast-unsafe-postgres): a diagnostic, not a deployment"
            )?;
        }
        for run in &self.runs {
            let per_conn = run.rss_per_connection(self.connections);
            writeln!(f, "  {}:", target_name(run.target))?;
            writeln!(
                f,
                "    idle connections: RSS {:.1} -> {:.1} MiB, {:.1} KiB per connection{}",
                run.rss_before as f64 / 1048576.0,
                run.rss_after as f64 / 1048576.0,
                per_conn / 1024.0,
                if run.target == Target::Node {
                    String::new()
                } else {
                    format!(
                        " (target <= 16 KiB: {})",
                        verdict(per_conn <= RSS_TARGET_BYTES)
                    )
                }
            )?;
            if run.resubscribed > 0 {
                writeln!(
                    f,
                    "    {} subscribes got no ack within {} s and were sent again (the server missed an event sent right after its connect packet)",
                    run.resubscribed,
                    RESUBSCRIBE.as_secs()
                )?;
            }
            run.latency.line(f, &format!("at {} deliv/s", self.rate))?;
            if let Some(t) = &run.throughput {
                t.line(f, &format!("at {} deliv/s", self.max_rate))?;
            }
            if run.target != Target::Node {
                writeln!(
                    f,
                    "    p99 at {} deliveries/s: {:.1} ms (target <= 10 ms at 20,000/s: {})",
                    self.rate,
                    ms(run.latency.p99),
                    verdict(run.latency.p99 <= P99_TARGET)
                )?;
            }
        }
        let node = self.runs.iter().find(|r| r.target == Target::Node);
        for run in self.runs.iter().filter(|r| r.target != Target::Node) {
            let Some(node) = node else { break };
            let (Some(ours), Some(theirs)) = (&run.throughput, &node.throughput) else {
                continue;
            };
            let ratio =
                (ours.delivered_per_s / theirs.delivered_per_s.max(1e-9) * 100.0).floor() / 100.0;
            writeln!(
                f,
                "  ratio {} / node socket.io, delivered msgs/s at {} offered: {ratio:.2} (target >= 3: {})",
                target_name(run.target),
                self.max_rate,
                verdict(ratio >= RATIO_TARGET)
            )?;
        }
        if let Some(e) = &self.e2e {
            writeln!(
                f,
                "  end to end (row INSERT sent -> /ws client), {} rows/s ({:.0} achieved), {} subscribers of bench.e2e.<key>, each row to {} ({:.0} deliveries/s):",
                e.rate,
                e.achieved_rate,
                e.subscribers,
                e.fanout,
                f64::from(e.rate) * e.fanout as f64
            )?;
            writeln!(
                f,
                "    p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms (target p99 <= 10 ms: {}); {} of {} delivered{}; INSERT (autocommit) p50 {:.2} ms; {} rows over {E2E_WRITERS} connections",
                ms(e.p50),
                ms(e.p99),
                ms(e.max),
                verdict(e.p99 <= P99_TARGET),
                e.received,
                e.expected,
                if e.dropped > 0 {
                    format!(", {} dropped", e.dropped)
                } else {
                    String::new()
                },
                ms(e.insert_p50),
                e.rows
            )?;
            writeln!(f, "    cpu: {}", e.cpu)?;
        }
        if !self.postgres_measured {
            writeln!(
                f,
                "  (PostgreSQL's CPU is not shown for a --database-url server)"
            )?;
        }
        Ok(())
    }
}
