//! `pgtide bench webhooks`: webhook deliveries per second to a local
//! receiver, and event commit → delivery latency at a steady rate.
//!
//! On a fresh database (of a throwaway local PostgreSQL unless
//! `--database-url`), in this process:
//!
//! 0. the baseline: `--events` plain POSTs of the same body to the same
//!    receiver, `--workers` at a time, from one HTTP client (no queue, no
//!    signature, no records), so the deliveries/s below can be read as a
//!    share of what this machine's HTTP stack manages on its own;
//! 1. an endpoint (pgtide signatures) is created and `--events` events are
//!    stored for it before the dispatcher starts; then the dispatcher runs and
//!    the clock runs until every event has reached the receiver and every
//!    attempt is recorded (fan-out, claim, signed POST, attempt record);
//! 2. a second endpoint gets single events committed at `--latency-rate` per
//!    second for `--latency-seconds`; each one's delay from its commit
//!    returning to its arrival at the receiver is measured;
//! 3. a summary is printed, the database dropped (and the throwaway server
//!    stopped).

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use hdrhistogram::Histogram;
use pgtide_core::{EventSource, NewEvent, Pattern};
use pgtide_pg::PgConfig;
use pgtide_pg::replication::quote_ident;
use pgtide_store::Store;
use pgtide_store::webhooks::{SignatureScheme, WebhookSpec};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::bench::{Names, Server, cleanup, ms, progress_bar, verdict};

/// The throughput target (deliveries per second).
const RATE_TARGET: f64 = 5000.0;
/// The commit → delivery target (p99) at the latency phase's rate.
const P99_TARGET: Duration = Duration::from_millis(50);

const THROUGHPUT_TOPIC: &str = "bench.throughput";
const LATENCY_TOPIC: &str = "bench.latency";

#[derive(Debug, clap::Args)]
pub struct WebhookBenchArgs {
    /// Events queued for the throughput phase.
    #[arg(long, env = "PGTIDE_BENCH_EVENTS", default_value_t = 50_000)]
    pub events: u64,
    /// Events per second in the latency phase.
    #[arg(long, env = "PGTIDE_BENCH_LATENCY_RATE", default_value_t = 500)]
    pub latency_rate: u32,
    /// Length of the latency phase in seconds (0 skips it).
    #[arg(long, env = "PGTIDE_BENCH_LATENCY_SECONDS", default_value_t = 10)]
    pub latency_seconds: u64,
    /// Most requests in flight (the dispatcher's --webhook-workers).
    #[arg(long, env = "PGTIDE_WEBHOOK_WORKERS", default_value_t = 256)]
    pub workers: usize,
    /// Benchmark on this server (a superuser libpq URL) instead of a throwaway
    /// local one. A database `pgtide_bench_*` is created on it and dropped.
    #[arg(long, env = "PGTIDE_BENCH_DATABASE_URL")]
    pub database_url: Option<String>,
}

pub async fn webhooks(args: WebhookBenchArgs) -> anyhow::Result<()> {
    if args.events == 0 || args.events > 10_000_000 {
        bail!("--events must be between 1 and 10000000");
    }
    if args.latency_rate == 0 || args.latency_rate > 100_000 {
        bail!("--latency-rate must be between 1 and 100000");
    }
    let names = Names::new();
    let server = Server::start(args.database_url.as_deref(), &names.suffix).await?;
    let shutdown = CancellationToken::new();
    let result = tokio::select! {
        r = bench(&args, &server, &names, &shutdown) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    shutdown.cancel();
    cleanup(&server, &names, false).await;
    server.stop().await;
    let report = result?;
    print!("{report}");
    Ok(())
}

/// What the receiver saw: the event's topic phase, its `data.n`, and when.
struct Arrival {
    latency_phase: bool,
    n: i64,
    at: Instant,
}

/// A receiver on 127.0.0.1:0 that answers 200 and reports each event.
async fn receiver(
    shutdown: CancellationToken,
) -> anyhow::Result<(String, mpsc::UnboundedReceiver<Arrival>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let tx = tx.clone();
            async move {
                let at = Instant::now();
                if let Ok(event) = serde_json::from_slice::<serde_json::Value>(&body) {
                    let _ = tx.send(Arrival {
                        latency_phase: event["topic"] == LATENCY_TOPIC,
                        n: event["data"]["n"].as_i64().unwrap_or(-1),
                        at,
                    });
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    });
    Ok((url, rx))
}

fn spec(url: &str, topic: &str) -> anyhow::Result<WebhookSpec> {
    Ok(WebhookSpec {
        url: url.to_owned(),
        secret: pgtide_webhooks::signature::generate_secret(),
        event_types: None,
        topics: Some(vec![Pattern::parse(topic)?]),
        headers: Default::default(),
        max_retries: 5,
        timeout_seconds: 15,
        rate_limit: None,
        signature_scheme: SignatureScheme::Pgtide,
        ordered: false,
        batch: None,
    })
}

fn event(topic: &str, n: i64) -> NewEvent {
    NewEvent::new(
        topic,
        "bench.webhook",
        EventSource::Http,
        json!({"n": n, "pad": "x".repeat(64)}),
    )
}

async fn bench(
    args: &WebhookBenchArgs,
    server: &Server,
    names: &Names,
    shutdown: &CancellationToken,
) -> anyhow::Result<Report> {
    let admin = server.admin.connect().await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {}", quote_ident(&names.database)))
        .await?;
    let config = PgConfig::parse(&server.url(&names.database))?;
    let mut client = config.connect().await?;
    pgtide_store::migrate::migrate(&mut client).await?;
    let store = Store::new(&config, 32)?;
    let (url, mut arrivals) = receiver(shutdown.clone()).await?;
    let baseline = plain_posts(args, &url).await?;
    while arrivals.try_recv().is_ok() {}

    // 1. Throughput: a backlog queued before the dispatcher starts.
    let throughput = store
        .create_webhook(None, true, &spec(&url, THROUGHPUT_TOPIC)?)
        .await?;
    let bar = progress_bar(args.events, "storing");
    let mut n = 0i64;
    while (n as u64) < args.events {
        let chunk = (args.events - n as u64).min(1000) as i64;
        store
            .publish((n..n + chunk).map(|i| event(THROUGHPUT_TOPIC, i)).collect())
            .await?;
        n += chunk;
        bar.set_position(n as u64);
    }
    bar.finish_and_clear();
    let dispatcher = pgtide_webhooks::Dispatcher::new(
        store.clone(),
        pgtide_webhooks::Config {
            allow_private: true,
            workers: args.workers,
            ..Default::default()
        },
    )?;
    let started = Instant::now();
    tokio::spawn(dispatcher.clone().run(shutdown.clone()));
    let bar = progress_bar(args.events, "delivering");
    let mut seen = vec![false; args.events as usize];
    let mut distinct = 0u64;
    let mut received = 0u64;
    let deadline = started + Duration::from_secs(600);
    while distinct < args.events {
        let a = tokio::time::timeout_at(deadline.into(), arrivals.recv())
            .await
            .context("deliveries stalled")?
            .context("receiver stopped")?;
        received += 1;
        if let Some(slot) = seen.get_mut(a.n as usize)
            && !a.latency_phase
            && !*slot
        {
            *slot = true;
            distinct += 1;
            bar.set_position(distinct);
        }
    }
    let delivered_in = started.elapsed();
    // The attempts are recorded just after each answer; wait for the last.
    let counter = config.connect().await?;
    loop {
        let row = counter
            .query_one(
                "SELECT count(*) FROM pgtide.webhook_attempts WHERE webhook_id = $1",
                &[&throughput.id],
            )
            .await?;
        if row.get::<_, i64>(0) as u64 >= args.events {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("attempts were not all recorded");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recorded_in = started.elapsed();
    bar.finish_and_clear();
    store.delete_webhook(&throughput.id, None).await?;

    // 2. Latency at a steady rate.
    let latency = if args.latency_seconds > 0 {
        store
            .create_webhook(None, true, &spec(&url, LATENCY_TOPIC)?)
            .await?;
        dispatcher.endpoints_changed();
        // Let the endpoint's loop start before the clock does.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        while arrivals.try_recv().is_ok() {}
        Some(latency(args, &store, &mut arrivals).await?)
    } else {
        None
    };
    Ok(Report {
        events: args.events,
        baseline,
        received,
        delivered_in,
        recorded_in,
        workers: args.workers,
        latency,
    })
}

/// The baseline: `--events` POSTs of an event body, `--workers` at a time.
async fn plain_posts(args: &WebhookBenchArgs, url: &str) -> anyhow::Result<Duration> {
    use futures_util::StreamExt;
    let client = reqwest::Client::new();
    let body = serde_json::to_vec(&event("bench.baseline", -1).with_seq(0))?;
    let bar = progress_bar(args.events, "baseline");
    let started = Instant::now();
    let mut posts = futures_util::stream::iter(0..args.events)
        .map(|_| {
            client
                .post(url)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
        })
        .buffer_unordered(args.workers.max(1));
    while let Some(response) = posts.next().await {
        let response = response.context("a baseline POST failed")?;
        response
            .bytes()
            .await
            .context("reading a baseline answer")?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(started.elapsed())
}

async fn latency(
    args: &WebhookBenchArgs,
    store: &Store,
    arrivals: &mut mpsc::UnboundedReceiver<Arrival>,
) -> anyhow::Result<LatencyReport> {
    let total = u64::from(args.latency_rate) * args.latency_seconds;
    let mut committed: Vec<Option<Instant>> = vec![None; total as usize];
    let mut arrived: Vec<Option<Instant>> = vec![None; total as usize];
    let mut tick =
        tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(args.latency_rate)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let bar = progress_bar(total, "latency");
    let note = |a: Arrival, arrived: &mut Vec<Option<Instant>>| {
        if a.latency_phase
            && let Some(slot) = arrived.get_mut(a.n as usize)
            && slot.is_none()
        {
            *slot = Some(a.at);
        }
    };
    let started = Instant::now();
    for n in 0..total as i64 {
        tick.tick().await;
        store.publish(vec![event(LATENCY_TOPIC, n)]).await?;
        committed[n as usize] = Some(Instant::now());
        while let Ok(a) = arrivals.try_recv() {
            note(a, &mut arrived);
        }
        bar.set_position(n as u64 + 1);
    }
    let published_in = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(60);
    while arrived.iter().any(Option::is_none) {
        let a = tokio::time::timeout_at(deadline.into(), arrivals.recv())
            .await
            .context("latency-phase deliveries stalled")?
            .context("receiver stopped")?;
        note(a, &mut arrived);
    }
    bar.finish_and_clear();
    let mut histogram = Histogram::<u64>::new(3)?;
    let mut early = 0;
    for (c, a) in committed.iter().zip(&arrived) {
        let (Some(c), Some(a)) = (c, a) else { continue };
        // An event can arrive before `publish` returns to us: count it as 0.
        let d = a.checked_duration_since(*c).unwrap_or_else(|| {
            early += 1;
            Duration::ZERO
        });
        histogram.record(d.as_micros() as u64)?;
    }
    let us = |q: f64| Duration::from_micros(histogram.value_at_quantile(q));
    Ok(LatencyReport {
        rate: args.latency_rate,
        events: total,
        achieved_rate: total as f64 / published_in.as_secs_f64().max(1e-9),
        p50: us(0.5),
        p99: us(0.99),
        max: Duration::from_micros(histogram.max()),
        early,
    })
}

struct Report {
    events: u64,
    /// How long the baseline's plain POSTs took.
    baseline: Duration,
    received: u64,
    delivered_in: Duration,
    recorded_in: Duration,
    workers: usize,
    latency: Option<LatencyReport>,
}

struct LatencyReport {
    rate: u32,
    events: u64,
    achieved_rate: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
    early: usize,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rate = self.events as f64 / self.recorded_in.as_secs_f64().max(1e-9);
        writeln!(f, "pgtide bench webhooks")?;
        writeln!(
            f,
            "  throughput: {} events, signed POSTs to a local receiver, {} workers",
            self.events, self.workers
        )?;
        writeln!(
            f,
            "    all delivered in {:.2} s, all attempts recorded in {:.2} s ({} requests)",
            self.delivered_in.as_secs_f64(),
            self.recorded_in.as_secs_f64(),
            self.received
        )?;
        writeln!(
            f,
            "    {rate:.0} deliveries/s (target ≥ {RATE_TARGET:.0}): {}",
            verdict(rate >= RATE_TARGET)
        )?;
        let plain = self.events as f64 / self.baseline.as_secs_f64().max(1e-9);
        writeln!(
            f,
            "    baseline, the same number of plain POSTs to the same receiver ({} at a time): {plain:.0}/s; deliveries/s are {:.2} of it",
            self.workers,
            rate / plain.max(1e-9)
        )?;
        if let Some(l) = &self.latency {
            writeln!(
                f,
                "  latency: {} events at {}/s (achieved {:.0}/s), commit → receiver",
                l.events, l.rate, l.achieved_rate
            )?;
            writeln!(
                f,
                "    p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (target p99 ≤ {} ms): {}",
                ms(l.p50),
                ms(l.p99),
                ms(l.max),
                P99_TARGET.as_millis(),
                verdict(l.p99 <= P99_TARGET)
            )?;
            if l.early > 0 {
                writeln!(
                    f,
                    "    {} arrived before publish returned (counted as 0)",
                    l.early
                )?;
            }
        }
        Ok(())
    }
}
