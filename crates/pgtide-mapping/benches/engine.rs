//! Throughput of `MappingSet::apply`: changes per second on one core for a
//! table with five mappings, each with `when`, a `payload` and a templated
//! topic. Run with `cargo bench -p pgtide-mapping` (add `-- WORD` to run only
//! the cases whose label contains WORD).
//!
//! Also measured: the same five mappings when only plain column reads are
//! involved (no CEL interpreter at all), and a change on an unmapped table.
//!
//! The machine a bench runs on is often shared, so two more figures are
//! printed. A baseline measured in the same process, cloning the new row into
//! the data of one default (unmapped) event, which pgtide does for every
//! captured change anyway: each case's cost is also given as a multiple of
//! it, a ratio that moves far less with load than the rates do. And with
//! `PGTIDE_BENCH_ITERS=N` each case runs exactly N changes in
//! `run_fixed` instead of for two seconds, so an instruction count is
//! repeatable: `valgrind --tool=callgrind --toggle-collect='*run_fixed*'`
//! on the bench binary with a case filter, then total Ir / N.

use pgtide_mapping::{Change, MappingSet, Op};

/// The allocator the `pgtide` binary runs with: an event is a few dozen small
/// allocations, so the allocator is part of the engine's cost.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use serde_json::{Map, Value, json};
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

const FIVE_MAPPINGS: &str = r#"
mappings:
  - name: started
    table: public.sessions
    operations: [insert, update]
    when: new.status == 'active'
    topic: "session.{{ new.id }}.started"
    payload: {session_id: new.id, status: new.status, org: new.org_id}
    org: new.org_id
    key: new.id
  - name: ended
    table: public.sessions
    operations: [update]
    changed: [status]
    when: new.status in ['completed', 'failed']
    topic: "session.{{ new.id }}.ended"
    payload: {session_id: new.id, status: new.status, previous: old.status}
    org: new.org_id
  - name: by-org
    table: public.sessions
    when: new.org_id == 1
    topic: "org.{{ new.org_id }}.sessions"
    payload: {session_id: new.id, score: new.score}
  - name: audit
    table: public.sessions
    when: op != 'delete'
    topic: "audit.sessions.{{ op }}"
    payload: {id: new.id, user: new.user_id, at: tx.commit_ts}
  - name: big-scores
    table: public.sessions
    when: int(new.score) > 50 && new.status != 'failed'
    topic: "scores.{{ new.user_id }}"
    payload: {id: new.id, score: new.score, user: new.user_id}
"#;

const COLUMN_READS: &str = r#"
mappings:
  - {name: a, table: sessions, topic: "a.{{ new.id }}", payload: {id: new.id, s: new.status}}
  - {name: b, table: sessions, topic: "b.{{ new.id }}", payload: {id: new.id, s: new.status}}
  - {name: c, table: sessions, topic: "c.{{ new.id }}", payload: {id: new.id, s: new.status}}
  - {name: d, table: sessions, topic: "d.{{ new.id }}", payload: {id: new.id, s: new.status}}
  - {name: e, table: sessions, topic: "e.{{ new.id }}", payload: {id: new.id, s: new.status}}
"#;

fn row(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// The changes each case runs under `PGTIDE_BENCH_ITERS`, if set.
fn fixed_iterations() -> Option<u64> {
    std::env::var("PGTIDE_BENCH_ITERS").ok()?.parse().ok()
}

/// Whether the case `label` was asked for: `cargo bench -p pgtide-mapping --
/// WORD` runs only the cases whose label contains WORD (handy under a
/// profiler).
fn selected(label: &str) -> bool {
    match std::env::args().skip(1).find(|a| !a.starts_with('-')) {
        Some(filter) => label.contains(&filter),
        None => true,
    }
}

/// Runs `one` exactly `n` times; the only code a `--toggle-collect` of
/// callgrind counts.
#[inline(never)]
fn run_fixed<R>(n: u64, one: &mut dyn FnMut() -> R) {
    for _ in 0..n {
        black_box(one());
    }
}

/// Nanoseconds per call of `one` (wall clock, and CPU time of the thread when
/// the platform tells it), or `None` in fixed-iteration mode.
fn time(label: &str, one: &mut dyn FnMut() -> usize) -> Option<(f64, Option<f64>)> {
    if let Some(n) = fixed_iterations() {
        run_fixed(n, one);
        println!("{label:<52} ran {n} changes");
        return None;
    }
    // warm up, then run for about two seconds
    for _ in 0..10_000 {
        black_box(one());
    }
    let mut n: u64 = 0;
    let cpu_start = thread_cpu_ns();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        for _ in 0..1_000 {
            black_box(one());
        }
        n += 1_000;
    }
    let wall = start.elapsed().as_secs_f64() * 1e9 / n as f64;
    // On a shared machine the thread is not always on a core: the CPU time
    // the thread actually got gives the one-core rate.
    let cpu = match (cpu_start, thread_cpu_ns()) {
        (Some(a), Some(b)) if b > a => Some((b - a) as f64 / n as f64),
        _ => None,
    };
    Some((wall, cpu))
}

fn report(label: &str, wall: f64, cpu: Option<f64>, baseline: Option<f64>, what: &str) {
    let per_cpu = cpu.map_or(String::new(), |ns| {
        format!("{:>10.0} changes/s per CPU-second", 1e9 / ns)
    });
    // The ratio compares CPU times where known, which load disturbs less.
    let ratio = baseline.map_or(String::new(), |b| {
        format!(" {:>5.1}x baseline", cpu.unwrap_or(wall) / b)
    });
    println!(
        "{label:<52} {:>9.0} changes/s {:>6.0} ns/change ({what}) {per_cpu}{ratio}",
        1e9 / wall,
        wall,
    );
}

fn measure(
    label: &str,
    set: &MappingSet,
    change: &Change<'_>,
    expect_events: usize,
    baseline: Option<f64>,
) {
    if !selected(label) {
        return;
    }
    let produced = set.apply(change);
    let ok = produced.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, expect_events, "{label}: {produced:?}");
    // The events are counted so that building them cannot be skipped.
    let mut one = || black_box(set.apply(black_box(change))).len();
    if let Some((wall, cpu)) = time(label, &mut one) {
        report(
            label,
            wall,
            cpu,
            baseline,
            &format!("{expect_events} events"),
        );
    }
}

/// What the cases are compared with: the new row cloned into the data of
/// one default event, the least any captured change costs.
fn measure_baseline(row: &Map<String, Value>) -> Option<f64> {
    let label = "baseline: clone the row into one default event";
    // Timed runs always measure it, for the ratios; a counted run only
    // when asked for.
    if fixed_iterations().is_some() && !selected(label) {
        return None;
    }
    let mut one = || match black_box(Value::Object(black_box(row).clone())) {
        Value::Object(m) => m.len(),
        _ => 0,
    };
    let (wall, cpu) = time(label, &mut one)?;
    report(label, wall, cpu, None, "1 event");
    Some(cpu.unwrap_or(wall))
}

/// CPU time of this thread in nanoseconds (Linux), from
/// `/proc/thread-self/schedstat`.
fn thread_cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

fn main() {
    let set = match MappingSet::load_sources(
        &[("bench.yaml".to_owned(), FIVE_MAPPINGS.to_owned())],
        Path::new("."),
    ) {
        Ok(set) => set,
        Err(e) => panic!("{e:?}"),
    };
    let new = row(json!({
        "id": 123456, "status": "completed", "org_id": 1, "user_id": 99,
        "score": "75", "title": "A session", "created_at": "2026-03-04 12:00:00+00",
        "notes": null, "tags": ["a", "b"], "duration": 3600
    }));
    let old = row(json!({
        "id": 123456, "status": "active", "org_id": 1, "user_id": 99,
        "score": "75", "title": "A session", "created_at": "2026-03-04 12:00:00+00",
        "notes": null, "tags": ["a", "b"], "duration": 3600
    }));
    let change = |op, new, old| Change {
        op,
        schema: "public",
        table: "sessions",
        new,
        old,
        unchanged_columns: &[],
        xid: 1234,
        commit_ts: "2026-03-04T12:00:00.123Z",
        lsn: "16/B374D848",
    };

    println!("pgtide-mapping engine benchmark (one core)");
    let baseline = measure_baseline(&new);
    measure(
        "5 mappings (when + payload + template), update",
        &set,
        &change(Op::Update, Some(&new), Some(&old)),
        4,
        baseline,
    );
    measure(
        "5 mappings (when + payload + template), insert",
        &set,
        &change(Op::Insert, Some(&new), None),
        3,
        baseline,
    );

    let mut quiet_new = new.clone();
    quiet_new.insert("status".into(), json!("pending"));
    quiet_new.insert("org_id".into(), json!(2));
    quiet_new.insert("score".into(), json!("10"));
    let mut quiet_old = quiet_new.clone();
    quiet_old.insert("title".into(), json!("Before"));
    measure(
        "5 mappings, update where only 1 fires",
        &set,
        &change(Op::Update, Some(&quiet_new), Some(&quiet_old)),
        1,
        baseline,
    );

    let plain = match MappingSet::load_sources(
        &[("plain.yaml".to_owned(), COLUMN_READS.to_owned())],
        Path::new("."),
    ) {
        Ok(set) => set,
        Err(e) => panic!("{e:?}"),
    };
    measure(
        "5 mappings, column reads only (no CEL interpreter)",
        &plain,
        &change(Op::Insert, Some(&new), None),
        5,
        baseline,
    );

    let mut other = change(Op::Insert, Some(&new), None);
    other.table = "unmapped";
    measure("unmapped table", &set, &other, 0, baseline);
}
