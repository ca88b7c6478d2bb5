//! Throughput of `MappingSet::apply`: changes per second on one core for a
//! table with five mappings, each with `when`, a `payload` and a templated
//! topic. Run with `cargo bench -p pgtide-mapping` (add `-- WORD` to run only
//! the cases whose label contains WORD).
//!
//! Also measured: the same five mappings when only plain column reads are
//! involved (no CEL interpreter at all), and a change on an unmapped table.

use pgtide_mapping::{Change, MappingSet, Op};
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

fn measure(label: &str, set: &MappingSet, change: &Change<'_>, expect_events: usize) {
    // `cargo bench -p pgtide-mapping -- WORD` runs only the cases whose
    // label contains WORD (handy under a profiler).
    if let Some(filter) = std::env::args().skip(1).find(|a| !a.starts_with('-'))
        && !label.contains(&filter)
    {
        return;
    }
    let produced = set.apply(change);
    let ok = produced.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, expect_events, "{label}: {produced:?}");

    // warm up, then run for about two seconds
    for _ in 0..10_000 {
        black_box(set.apply(black_box(change)));
    }
    let mut n: u64 = 0;
    let cpu_start = thread_cpu_ns();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        for _ in 0..1_000 {
            black_box(set.apply(black_box(change)));
        }
        n += 1_000;
    }
    let secs = start.elapsed().as_secs_f64();
    // On a shared machine the thread is not always on a core: the CPU time
    // the thread actually got gives the one-core rate.
    let cpu = match (cpu_start, thread_cpu_ns()) {
        (Some(a), Some(b)) if b > a => {
            let cpu_secs = (b - a) as f64 / 1e9;
            format!("{:>10.0} changes/s per CPU-second", n as f64 / cpu_secs)
        }
        _ => String::new(),
    };
    println!(
        "{label:<52} {:>9.0} changes/s {:>6.0} ns/change ({expect_events} events) {cpu}",
        n as f64 / secs,
        secs * 1e9 / n as f64,
    );
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
    measure(
        "5 mappings (when + payload + template), update",
        &set,
        &change(Op::Update, Some(&new), Some(&old)),
        4,
    );
    measure(
        "5 mappings (when + payload + template), insert",
        &set,
        &change(Op::Insert, Some(&new), None),
        3,
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
    );

    let mut other = change(Op::Insert, Some(&new), None);
    other.table = "unmapped";
    measure("unmapped table", &set, &other, 0);
}
