//! Webhooks end to end: a real HTTP receiver on 127.0.0.1 that checks the
//! signatures with its own HMAC code (and with the Standard Webhooks reference
//! library), retries on the backoff schedule, dead letters and their retry,
//! rate limits (the shared bucket's SQL, and two nodes keeping to one limit),
//! ordering, batching, the private-address guard, and `kill -9` of pgtide in
//! the middle of deliveries.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::{Mutex, mpsc};

use crate::harness::{Pgtide, Server, TestDb, WAIT};

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    at: Instant,
    headers: BTreeMap<String, String>,
    body: String,
    /// The status the receiver answered with.
    status: u16,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
}

/// How the receiver answers.
#[derive(Default)]
struct Behaviour {
    /// Answer 500 to this many requests first.
    fail_first: AtomicUsize,
    /// Answer 500 to everything while set.
    fail_all: AtomicBool,
    /// Count `fail_first` only against events whose `data.n` is this.
    fail_n: Mutex<Option<i64>>,
    /// Answer after this many milliseconds.
    delay_ms: std::sync::atomic::AtomicU64,
    /// Requests being answered now, and the most at once.
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// A webhook receiver on 127.0.0.1:0.
struct Receiver {
    url: String,
    behaviour: Arc<Behaviour>,
    rx: mpsc::UnboundedReceiver<Received>,
    got: Vec<Received>,
}

impl Receiver {
    async fn start() -> anyhow::Result<Receiver> {
        let behaviour = Arc::new(Behaviour::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let b = behaviour.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let b = b.clone();
                let tx = tx.clone();
                async move {
                    let now = b.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    b.max_in_flight.fetch_max(now, Ordering::SeqCst);
                    let delay = b.delay_ms.load(Ordering::SeqCst);
                    if delay > 0 {
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                    }
                    b.in_flight.fetch_sub(1, Ordering::SeqCst);
                    let body = String::from_utf8_lossy(&body).into_owned();
                    let n = serde_json::from_str::<Value>(&body)
                        .ok()
                        .and_then(|v| v["data"]["n"].as_i64());
                    let targeted = match *b.fail_n.lock().await {
                        Some(want) => n == Some(want),
                        None => true,
                    };
                    let fail = b.fail_all.load(Ordering::SeqCst)
                        || (targeted
                            && b.fail_first
                                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                                    n.checked_sub(1)
                                })
                                .is_ok());
                    let status = if fail {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::OK
                    };
                    let _ = tx.send(Received {
                        at: Instant::now(),
                        headers: headers
                            .iter()
                            .map(|(k, v)| {
                                (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())
                            })
                            .collect(),
                        body,
                        status: status.as_u16(),
                    });
                    (status, if fail { "nope" } else { "ok" })
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Receiver {
            url,
            behaviour,
            rx,
            got: Vec::new(),
        })
    }

    /// The next request, within [`WAIT`].
    async fn next(&mut self) -> anyhow::Result<Received> {
        let r = tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .context("no webhook request in time")?
            .context("receiver stopped")?;
        self.got.push(r.clone());
        Ok(r)
    }

    /// Waits until `pred` holds over everything received so far.
    async fn until(&mut self, pred: impl Fn(&[Received]) -> bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + WAIT;
        while !pred(&self.got) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(r)) => self.got.push(r),
                Ok(None) => bail!("receiver stopped"),
                Err(_) => bail!(
                    "condition not met in {WAIT:?}; got {} requests",
                    self.got.len()
                ),
            }
        }
        Ok(())
    }

    /// Nothing more arrives within `d`.
    async fn quiet_for(&mut self, d: Duration) -> anyhow::Result<()> {
        if let Ok(Some(r)) = tokio::time::timeout(d, self.rx.recv()).await {
            bail!("unexpected webhook request: {}", r.body);
        }
        Ok(())
    }
}

/// The receiver's own check of `X-Pgtide-Signature` (as the seed's Node
/// example does it): HMAC-SHA256 keyed with the secret's UTF-8 bytes over
/// `"<t>.<body>"`, hex, and a timestamp within 5 minutes.
fn verify_pgtide_signature(r: &Received, secret: &str) -> anyhow::Result<()> {
    let header = r.header("x-pgtide-signature");
    let parts: BTreeMap<&str, &str> = header
        .split(',')
        .filter_map(|p| p.split_once('='))
        .collect();
    let t = parts.get("t").context("no t=")?;
    let v1 = parts.get("v1").context("no v1=")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())?;
    mac.update(format!("{t}.{}", r.body).as_bytes());
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    anyhow::ensure!(*v1 == expected, "bad signature {header}");
    let age = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64
        - t.parse::<i64>()?;
    anyhow::ensure!(age.abs() <= 300, "timestamp {t} is {age}s old");
    Ok(())
}

fn args(db: &TestDb, extra: &[&str]) -> Vec<String> {
    let mut a = db.run_args();
    a.extend(extra.iter().map(|s| (*s).to_owned()));
    a
}

/// pgtide allowed to deliver to 127.0.0.1, with a fast retry schedule.
fn local_args(db: &TestDb) -> Vec<String> {
    args(
        db,
        &["--webhook-allow-private", "--webhook-backoff-base", "200ms"],
    )
}

async fn create(pgtide: &Pgtide, body: Value) -> anyhow::Result<(u16, Value)> {
    let r = pgtide
        .http()
        .post(pgtide.url("/v1/webhooks"))
        .json(&body)
        .send()
        .await?;
    Ok((r.status().as_u16(), r.json().await?))
}

async fn create_ok(pgtide: &Pgtide, body: Value) -> anyhow::Result<Value> {
    let (status, v) = create(pgtide, body).await?;
    anyhow::ensure!(status == 201, "create webhook -> {status}: {v}");
    Ok(v)
}

async fn publish(pgtide: &Pgtide, topic: &str, n: i64) -> anyhow::Result<Value> {
    let r = pgtide
        .http()
        .post(pgtide.url("/v1/events"))
        .json(&json!({"event_type": "order.created", "topic": topic, "data": {"n": n}}))
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "publish -> {}", r.status());
    Ok(r.json().await?)
}

async fn get_json(pgtide: &Pgtide, path: &str) -> anyhow::Result<(u16, Value)> {
    let r = pgtide.http().get(pgtide.url(path)).send().await?;
    Ok((r.status().as_u16(), r.json().await?))
}

async fn attempts(pgtide: &Pgtide, id: &str) -> anyhow::Result<Vec<Value>> {
    let (status, v) = get_json(pgtide, &format!("/v1/webhooks/{id}/deliveries")).await?;
    anyhow::ensure!(status == 200, "deliveries -> {status}: {v}");
    Ok(v["deliveries"].as_array().cloned().unwrap_or_default())
}

/// Waits until the endpoint's attempt list satisfies `pred`.
async fn wait_attempts(
    pgtide: &Pgtide,
    id: &str,
    pred: impl Fn(&[Value]) -> bool,
) -> anyhow::Result<Vec<Value>> {
    let deadline = Instant::now() + WAIT;
    loop {
        let list = attempts(pgtide, id).await?;
        if pred(&list) {
            return Ok(list);
        }
        if Instant::now() > deadline {
            bail!("attempts never matched: {list:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Create, list, get, patch, delete; a matching event arrives signed with
/// every `X-Pgtide-*` header and the endpoint's own header, a non-matching
/// one does not; the attempt is recorded; the secret is only in the create
/// response; a test send works.
#[tokio::test]
async fn webhook_delivers_signed_events_and_records_attempts() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let pgtide = Pgtide::start(&local_args(&db)).await?;
    let mut rx = Receiver::start().await?;
    let secret = "whsec_your_signing_secret";
    let created = create_ok(
        &pgtide,
        json!({"url": rx.url, "secret": secret, "topics": ["orders/**"],
               "event_types": ["order.created"], "headers": {"X-Custom-Header": "my-value"},
               "max_retries": 5, "timeout_seconds": 15}),
    )
    .await?;
    let id = created["id"].as_str().context("id")?.to_owned();
    assert_eq!(created["secret"], secret);
    assert_eq!(created["topics"], json!(["orders.**"]));
    assert_eq!(created["signature_scheme"], "pgtide");
    assert_eq!(created["ordered"], false);

    let (_, list) = get_json(&pgtide, "/v1/webhooks").await?;
    let listed = &list["webhooks"][0];
    assert_eq!(listed["id"], id.as_str());
    assert!(listed.get("secret").is_none(), "secret listed: {listed}");
    let (_, got) = get_json(&pgtide, &format!("/v1/webhooks/{id}")).await?;
    assert!(got.get("secret").is_none(), "secret returned: {got}");
    assert_eq!(got["url"], rx.url.as_str());

    publish(&pgtide, "other.created", 0).await?;
    let published = publish(&pgtide, "orders.eu.created", 1).await?;
    let r = rx.next().await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(r.header("x-pgtide-event-type"), "order.created");
    assert_eq!(r.header("x-pgtide-event-id"), published["event_id"]);
    assert_eq!(r.header("x-custom-header"), "my-value");
    assert_eq!(r.header("x-pgtide-delivery-id").len(), 26);
    verify_pgtide_signature(&r, secret)?;
    let envelope = r.json();
    assert_eq!(envelope["id"], published["event_id"]);
    assert_eq!(envelope["seq"], published["seq"]);
    assert_eq!(envelope["topic"], "orders.eu.created");
    assert_eq!(envelope["data"], json!({"n": 1}));
    rx.quiet_for(Duration::from_millis(500)).await?;

    let list = wait_attempts(&pgtide, &id, |a| !a.is_empty()).await?;
    let a = &list[0];
    assert_eq!(a["id"], r.header("x-pgtide-delivery-id"));
    assert_eq!(a["event_id"], published["event_id"]);
    assert_eq!(a["attempt"], 1);
    assert_eq!(a["status"], "delivered");
    assert_eq!(a["status_code"], 200);
    assert_eq!(a["response"], "ok");
    assert!(a["latency_ms"].is_u64());
    assert!(a["created_at"].is_string());
    assert!(a["next_attempt_at"].is_null());

    // A test send goes out now, signed, and is answered.
    let t: Value = pgtide
        .http()
        .post(pgtide.url(&format!("/v1/webhooks/{id}/test")))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(t["delivered"], true, "{t}");
    assert_eq!(t["status_code"], 200);
    let r = rx.next().await?;
    assert_eq!(r.header("x-pgtide-event-type"), "system.webhook_test");
    verify_pgtide_signature(&r, secret)?;

    // Patch: now only other.* topics; a bad pattern is refused.
    let r = pgtide
        .http()
        .patch(pgtide.url(&format!("/v1/webhooks/{id}")))
        .json(&json!({"topics": ["a..b"]}))
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    let patched: Value = pgtide
        .http()
        .patch(pgtide.url(&format!("/v1/webhooks/{id}")))
        .json(&json!({"topics": ["other.*"], "event_types": null}))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(patched["topics"], json!(["other.*"]));
    assert!(patched["event_types"].is_null());
    assert!(patched.get("secret").is_none());
    let published = publish(&pgtide, "other.created", 2).await?;
    let r = rx.next().await?;
    assert_eq!(r.header("x-pgtide-event-id"), published["event_id"]);

    // Bad input is explained.
    for bad in [
        json!({"url": "ftp://x/"}),
        json!({"url": rx.url, "signature_scheme": "nope"}),
        json!({"url": rx.url, "signature_scheme": "standard-webhooks", "secret": "plain"}),
        json!({"url": rx.url, "rate_limit": {"requests_per_period": 0, "period_seconds": 1}}),
        json!({"url": rx.url, "headers": {"X-Pgtide-Signature": "forged"}}),
        json!({"url": rx.url, "surprise": 1}),
    ] {
        let (status, body) = create(&pgtide, bad.clone()).await?;
        assert_eq!(status, 400, "{bad} -> {body}");
        assert!(body["error"]["message"].is_string());
        assert!(body["error"]["details"].is_array());
    }

    let r = pgtide
        .http()
        .delete(pgtide.url(&format!("/v1/webhooks/{id}")))
        .send()
        .await?;
    assert_eq!(r.status(), 204);
    let (status, body) = get_json(&pgtide, &format!("/v1/webhooks/{id}")).await?;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// A receiver that fails three times then succeeds: four attempts of the
/// same event, each with a new delivery id, spaced by the schedule (with a
/// 200 ms base: 0.2, 0.4, 0.8 s, ±10 %), all recorded.
#[tokio::test]
async fn failing_receiver_is_retried_on_the_backoff_schedule() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let pgtide = Pgtide::start(&local_args(&db)).await?;
    let mut rx = Receiver::start().await?;
    rx.behaviour.fail_first.store(3, Ordering::SeqCst);
    let created = create_ok(&pgtide, json!({"url": rx.url, "secret": "s3cret"})).await?;
    let id = created["id"].as_str().context("id")?.to_owned();
    let published = publish(&pgtide, "orders.created", 1).await?;
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(rx.next().await?);
    }
    assert_eq!(
        got.iter().map(|r| r.status).collect::<Vec<_>>(),
        [500, 500, 500, 200]
    );
    let delivery_ids: BTreeSet<&str> = got
        .iter()
        .map(|r| r.header("x-pgtide-delivery-id"))
        .collect();
    assert_eq!(delivery_ids.len(), 4, "one delivery id per attempt");
    for r in &got {
        assert_eq!(r.header("x-pgtide-event-id"), published["event_id"]);
        verify_pgtide_signature(r, "s3cret")?;
    }
    for (i, expected) in [0.2, 0.4, 0.8].iter().enumerate() {
        let gap = got[i + 1].at.duration_since(got[i].at).as_secs_f64();
        assert!(
            gap >= expected * 0.85 && gap <= expected * 1.1 + 0.7,
            "retry {} came after {gap:.3}s, expected about {expected}s",
            i + 1
        );
    }
    rx.quiet_for(Duration::from_millis(500)).await?;
    let list = wait_attempts(&pgtide, &id, |a| a.len() == 4).await?;
    // Newest first.
    let statuses: Vec<&str> = list.iter().filter_map(|a| a["status"].as_str()).collect();
    assert_eq!(statuses, ["delivered", "failed", "failed", "failed"]);
    let numbers: Vec<i64> = list.iter().filter_map(|a| a["attempt"].as_i64()).collect();
    assert_eq!(numbers, [4, 3, 2, 1]);
    for a in &list[1..] {
        assert_eq!(a["status_code"], 500);
        assert_eq!(a["response"], "nope");
        assert!(a["next_attempt_at"].is_string(), "{a}");
    }
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// After `max_retries` retries the delivery is a `webhook` dead letter;
/// retrying it from the dead-letter store delivers the same event again.
#[tokio::test]
async fn exhausted_deliveries_are_dead_lettered_and_can_be_retried() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let pgtide = Pgtide::start(&local_args(&db)).await?;
    let mut rx = Receiver::start().await?;
    rx.behaviour.fail_all.store(true, Ordering::SeqCst);
    let created = create_ok(&pgtide, json!({"url": rx.url, "max_retries": 2})).await?;
    let id = created["id"].as_str().context("id")?.to_owned();
    let secret = created["secret"]
        .as_str()
        .context("generated secret")?
        .to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    let published = publish(&pgtide, "orders.created", 7).await?;
    for _ in 0..3 {
        let r = rx.next().await?;
        assert_eq!(r.status, 500);
        verify_pgtide_signature(&r, &secret)?;
    }
    let deadline = Instant::now() + WAIT;
    let letter = loop {
        let (_, v) = get_json(&pgtide, "/v1/dead-letters?kind=webhook").await?;
        if let Some(l) = v["dead_letters"].as_array().and_then(|a| a.first()) {
            break l.clone();
        }
        anyhow::ensure!(Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(letter["kind"], "webhook");
    assert_eq!(letter["topic"], "orders.created");
    assert_eq!(letter["event"]["id"], published["event_id"]);
    assert!(
        letter["error"]
            .as_str()
            .is_some_and(|e| e.contains("HTTP 500")),
        "{letter}"
    );
    rx.quiet_for(Duration::from_millis(1500)).await?;
    let list = attempts(&pgtide, &id).await?;
    assert_eq!(list.len(), 3);
    assert_eq!(list[0]["status"], "dead");

    rx.behaviour.fail_all.store(false, Ordering::SeqCst);
    let r = pgtide
        .http()
        .post(pgtide.url(&format!(
            "/v1/dead-letters/{}/retry",
            letter["id"].as_i64().context("letter id")?
        )))
        .send()
        .await?;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let r = rx.next().await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-pgtide-event-id"), published["event_id"]);
    let (_, v) = get_json(&pgtide, "/v1/dead-letters?kind=webhook").await?;
    assert_eq!(v["dead_letters"], json!([]));
    wait_attempts(&pgtide, &id, |a| {
        a.first().is_some_and(|x| x["status"] == "delivered")
    })
    .await?;
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// With 5 requests a second and no burst, ten events take about two
/// seconds, and every one of them arrives.
#[tokio::test]
async fn rate_limited_deliveries_wait_and_none_is_lost() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let pgtide = Pgtide::start(&local_args(&db)).await?;
    let mut rx = Receiver::start().await?;
    create_ok(
        &pgtide,
        json!({"url": rx.url,
               "rate_limit": {"requests_per_period": 5, "period_seconds": 1, "burst": 1}}),
    )
    .await?;
    let mut ids = BTreeSet::new();
    for n in 0..10 {
        let p = publish(&pgtide, "orders.created", n).await?;
        ids.insert(p["event_id"].as_str().context("id")?.to_owned());
    }
    rx.until(|got| got.len() >= 10).await?;
    let got: BTreeSet<String> = rx
        .got
        .iter()
        .map(|r| r.header("x-pgtide-event-id").to_owned())
        .collect();
    assert_eq!(got, ids, "every event arrives once");
    let span = rx.got[9].at.duration_since(rx.got[0].at).as_secs_f64();
    assert!(span >= 1.6, "ten requests at 5/s took only {span:.2}s");
    for pair in rx.got.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at).as_secs_f64();
        assert!(gap >= 0.15, "two requests {gap:.3}s apart");
    }
    rx.quiet_for(Duration::from_millis(500)).await?;
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// `ordered: true`: one request at a time in `seq` order; a failing event
/// holds back the ones after it until it succeeds.
#[tokio::test]
async fn ordered_endpoint_delivers_in_seq_order_through_failures() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let pgtide = Pgtide::start(&local_args(&db)).await?;
    let mut rx = Receiver::start().await?;
    *rx.behaviour.fail_n.lock().await = Some(2);
    rx.behaviour.fail_first.store(2, Ordering::SeqCst);
    create_ok(&pgtide, json!({"url": rx.url, "ordered": true})).await?;
    let mut seqs = Vec::new();
    for n in 0..8 {
        let p = publish(&pgtide, "orders.created", n).await?;
        seqs.push(p["seq"].as_i64().context("seq")?);
    }
    rx.until(|got| got.iter().filter(|r| r.status == 200).count() >= 8)
        .await?;
    let order: Vec<(i64, u16)> = rx
        .got
        .iter()
        .map(|r| (r.json()["seq"].as_i64().unwrap_or(-1), r.status))
        .collect();
    let delivered: Vec<i64> = order
        .iter()
        .filter(|(_, s)| *s == 200)
        .map(|(q, _)| *q)
        .collect();
    assert_eq!(delivered, seqs, "delivered in seq order: {order:?}");
    // Nothing after the failing event was sent before it succeeded.
    for pair in order.windows(2) {
        assert!(pair[0].0 <= pair[1].0, "out of order: {order:?}");
    }
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// `batch`: JSON arrays of at most `max_events`, in `seq` order, the rest
/// sent once the oldest has waited `max_age_ms`.
#[tokio::test]
async fn batched_endpoint_posts_arrays() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let pgtide = Pgtide::start(&local_args(&db)).await?;
    let mut rx = Receiver::start().await?;
    let secret = "batch-secret";
    create_ok(
        &pgtide,
        json!({"url": rx.url, "secret": secret, "batch": {"max_events": 5, "max_age_ms": 1000}}),
    )
    .await?;
    // One transaction of 12 events, so all are pending at once.
    let client = db.client().await?;
    client
        .batch_execute(
            "SELECT pgtide.publish('orders.created', jsonb_build_object('n', g), '{}', 'order.created')
             FROM generate_series(1, 12) g",
        )
        .await?;
    let count = |got: &[Received]| -> usize {
        got.iter()
            .map(|r| r.json().as_array().map_or(0, Vec::len))
            .sum()
    };
    rx.until(|got| count(got) >= 12).await?;
    let mut ns = Vec::new();
    let mut sizes = Vec::new();
    for r in &rx.got {
        verify_pgtide_signature(r, secret)?;
        let batch = r.json();
        let items = batch.as_array().context("a batch is a JSON array")?;
        sizes.push(items.len());
        let batch_ns: Vec<i64> = items
            .iter()
            .filter_map(|e| e["data"]["n"].as_i64())
            .collect();
        assert!(
            batch_ns.is_sorted(),
            "a batch holds its events in seq order: {batch_ns:?}"
        );
        ns.extend(batch_ns);
    }
    // Batches of an unordered endpoint travel concurrently and may arrive in
    // any order; every event arrives exactly once.
    ns.sort_unstable();
    assert_eq!(ns, (1..=12).collect::<Vec<_>>(), "sizes {sizes:?}");
    assert!(sizes.iter().all(|s| *s <= 5), "{sizes:?}");
    assert!(sizes.contains(&5), "{sizes:?}");
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// Without `--webhook-allow-private`, loopback, private and link-local
/// targets are refused with 400, also when a name resolves to one.
#[tokio::test]
async fn private_targets_are_refused_without_the_flag() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let pgtide = Pgtide::start(&db.run_args()).await?;
    for url in [
        "http://127.0.0.1:9000/hook",
        "http://localhost:9000/hook",
        "http://[::1]/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::ffff:127.0.0.1]/hook",
    ] {
        let (status, body) = create(&pgtide, json!({"url": url})).await?;
        assert_eq!(status, 400, "{url} -> {body}");
        assert_eq!(body["error"]["code"], "bad_request");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("--webhook-allow-private")),
            "{body}"
        );
    }
    let (status, body) = create(&pgtide, json!({"url": "https://93.184.215.14/hook"})).await?;
    assert_eq!(status, 201, "{body}");
    // The patch is checked the same way.
    let r = pgtide
        .http()
        .patch(pgtide.url(&format!(
            "/v1/webhooks/{}",
            body["id"].as_str().context("id")?
        )))
        .json(&json!({"url": "http://127.0.0.1/hook"}))
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// `signature_scheme: standard-webhooks`: the reference library
/// (npm `standardwebhooks`) verifies a real delivery and rejects a tampered one.
#[tokio::test]
async fn standard_webhooks_reference_library_verifies_deliveries() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let pgtide = Pgtide::start(&local_args(&db)).await?;
    let mut rx = Receiver::start().await?;
    let created = create_ok(
        &pgtide,
        json!({"url": rx.url, "signature_scheme": "standard-webhooks"}),
    )
    .await?;
    let secret = created["secret"].as_str().context("secret")?.to_owned();
    let published = publish(&pgtide, "orders.created", 3).await?;
    let r = rx.next().await?;
    assert_eq!(r.header("webhook-id"), published["event_id"]);
    let headers: BTreeMap<&str, &str> = ["webhook-id", "webhook-timestamp", "webhook-signature"]
        .into_iter()
        .map(|h| (h, r.header(h)))
        .collect();
    let input = json!({"secret": secret, "headers": headers, "body": r.body});
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/clients/standardwebhooks-check.mjs");
    let mut child = tokio::process::Command::new("node")
        .arg(&script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("node (run ./scripts/test once to install the test clients)")?;
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().context("stdin")?;
        stdin.write_all(input.to_string().as_bytes()).await?;
    }
    let out = tokio::time::timeout(WAIT, child.wait_with_output()).await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "standardwebhooks-check failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verified: Value = serde_json::from_str(stdout.trim())?;
    assert_eq!(verified["payload"]["id"], published["event_id"]);
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// `kill -9` of pgtide while it delivers 300 events (slow answers keep
/// several in flight, so their leases must run out first), then a restart:
/// every event reaches the receiver at least once, with its original event id.
#[tokio::test]
async fn kill_9_during_deliveries_then_restart_delivers_every_event() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let pgtide = Pgtide::start(&local_args(&db)).await?;
    let mut rx = Receiver::start().await?;
    rx.behaviour.delay_ms.store(100, Ordering::SeqCst);
    create_ok(
        &pgtide,
        json!({"url": rx.url, "timeout_seconds": 1,
               "rate_limit": {"requests_per_period": 200, "period_seconds": 1, "burst": 10}}),
    )
    .await?;
    db.client()
        .await?
        .batch_execute(
            "SELECT pgtide.publish('load.x', jsonb_build_object('n', g)) FROM generate_series(1, 300) g",
        )
        .await?;
    rx.until(|got| got.len() >= 40).await?;
    pgtide.kill9().await;
    let pgtide = Pgtide::start(&local_args(&db)).await?;
    let stored: BTreeSet<String> = pgtide
        .wait_events(300)
        .await?
        .iter()
        .filter(|e| e["topic"] == "load.x")
        .filter_map(|e| e["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(stored.len(), 300);
    rx.until(|got| {
        let ids: BTreeSet<&str> = got.iter().map(|r| r.header("x-pgtide-event-id")).collect();
        stored.iter().all(|id| ids.contains(id.as_str()))
    })
    .await?;
    for r in &rx.got {
        assert_eq!(r.json()["id"], r.header("x-pgtide-event-id"));
    }
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// Attempt records follow the events' `--retention`.
#[tokio::test]
async fn attempt_history_follows_retention() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let mut a = local_args(&db);
    a.extend(["--retention".to_owned(), "2s".to_owned()]);
    let pgtide = Pgtide::start(&a).await?;
    let mut rx = Receiver::start().await?;
    let created = create_ok(&pgtide, json!({"url": rx.url})).await?;
    let id = created["id"].as_str().context("id")?.to_owned();
    publish(&pgtide, "orders.created", 1).await?;
    rx.next().await?;
    wait_attempts(&pgtide, &id, |a| a.len() == 1).await?;
    wait_attempts(&pgtide, &id, <[Value]>::is_empty).await?;
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// Two nodes on one database, each with at most `workers` requests in
/// flight; the second one is standing by for the slot.
async fn two_nodes(db: &TestDb, workers: usize) -> anyhow::Result<(Pgtide, Pgtide)> {
    let mut a = local_args(db);
    a.extend(["--webhook-workers".to_owned(), workers.to_string()]);
    let first = Pgtide::start(&a).await?;
    let mut second = Pgtide::spawn(&a).await?;
    second.wait_ready().await?;
    Ok((first, second))
}

/// Two nodes on one database share one queue: each may have 4 requests in
/// flight, yet the receiver sees more than 4 at once, so both deliver; no
/// event goes out twice while both live; when one is killed, the other
/// delivers the rest, including what the dead one had claimed.
#[tokio::test]
async fn two_nodes_share_the_queue_and_survive_one_dying() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let (first, second) = two_nodes(&db, 4).await?;
    let mut rx = Receiver::start().await?;
    rx.behaviour.delay_ms.store(100, Ordering::SeqCst);
    create_ok(&first, json!({"url": rx.url, "timeout_seconds": 1})).await?;
    db.client()
        .await?
        .batch_execute(
            "SELECT pgtide.publish('load.x', jsonb_build_object('n', g)) FROM generate_series(1, 80) g",
        )
        .await?;
    // The second node learns of the new endpoint at its next listing (up to
    // about a second): wait until both deliver at once rather than assuming
    // the first 30 requests overlap.
    let behaviour = rx.behaviour.clone();
    rx.until(|got| got.len() >= 30 && behaviour.max_in_flight.load(Ordering::SeqCst) > 4)
        .await?;
    let before_kill: Vec<String> = rx
        .got
        .iter()
        .map(|r| r.header("x-pgtide-event-id").to_owned())
        .collect();
    let unique: BTreeSet<&String> = before_kill.iter().collect();
    assert_eq!(unique.len(), before_kill.len(), "an event went out twice");
    let most = rx.behaviour.max_in_flight.load(Ordering::SeqCst);
    assert!((5..=8).contains(&most), "{most} requests at once");
    first.kill9().await;
    let stored: BTreeSet<String> = second
        .wait_events(80)
        .await?
        .iter()
        .filter_map(|e| e["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(stored.len(), 80);
    rx.until(|got| {
        let ids: BTreeSet<&str> = got.iter().map(|r| r.header("x-pgtide-event-id")).collect();
        stored.iter().all(|id| ids.contains(id.as_str()))
    })
    .await?;
    // Only what the dead node had in flight may have gone out twice.
    assert!(
        rx.got.len() <= 80 + 4,
        "{} requests for 80 events",
        rx.got.len()
    );
    second.stop().await?;
    db.cleanup().await;
    Ok(())
}

/// The shared bucket's SQL on its own (through the store, on a database of
/// its own, time moved by back-dating `refilled_at`): a first take finds the
/// bucket full at `burst`; an empty bucket grants nothing and says how long
/// until the next token; refills follow the elapsed time and stop at the
/// burst; a patched limit applies at the next take; concurrent takes over
/// many connections never grant more than the bucket holds; an endpoint
/// without a limit is granted everything and gets no row.
#[tokio::test]
async fn rate_tokens_are_shared_refilled_and_capped_in_the_store() -> anyhow::Result<()> {
    use pgtide_store::Store;
    use pgtide_store::webhooks::{RateLimit, SignatureScheme, WebhookSpec};

    let server = Server::shared().await?;
    let db = server.database().await?;
    let mut client = db.client().await?;
    pgtide_store::migrate::migrate(&mut client).await?;
    let store = Store::new(&pgtide_pg::PgConfig::parse(&db.url)?, 24)?;
    let spec = |rate_limit: Option<RateLimit>| WebhookSpec {
        url: "http://127.0.0.1:9/hook".into(),
        secret: "s".into(),
        event_types: None,
        topics: None,
        headers: Default::default(),
        max_retries: 5,
        timeout_seconds: 15,
        rate_limit,
        signature_scheme: SignatureScheme::Pgtide,
        ordered: false,
        batch: None,
    };
    let limit = |requests_per_period, period_seconds, burst| {
        Some(RateLimit {
            requests_per_period,
            period_seconds,
            burst,
        })
    };
    let back_date = |id: String, by: &'static str| {
        let client = &client;
        async move {
            let n = client
                .execute(
                    &format!(
                        "UPDATE pgtide.webhook_rate SET refilled_at = refilled_at - interval '{by}'
                         WHERE webhook_id = $1"
                    ),
                    &[&id],
                )
                .await?;
            anyhow::ensure!(n == 1, "no bucket row for {id}");
            anyhow::Ok(())
        }
    };

    // 2 per second, burst 3.
    let a = store
        .create_webhook(None, false, &spec(limit(2, 1, Some(3))))
        .await?;
    let first = store.take_rate_tokens(&a.id, 5).await?;
    assert_eq!(
        (first.granted, first.wait),
        (3, None),
        "a new bucket is full"
    );
    let empty = store.take_rate_tokens(&a.id, 1).await?;
    assert_eq!(empty.granted, 0);
    let wait = empty
        .wait
        .context("an empty bucket says how long to wait")?;
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_millis(500),
        "next token in {wait:?}"
    );
    back_date(a.id.clone(), "1 second").await?;
    let refilled = store.take_rate_tokens(&a.id, 5).await?;
    assert_eq!(refilled.granted, 2, "a second at 2/s refills 2 tokens");
    back_date(a.id.clone(), "1 hour").await?;
    assert_eq!(
        store.take_rate_tokens(&a.id, 10).await?.granted,
        3,
        "an idle bucket holds no more than the burst"
    );

    // Patched to burst 1 and 1 per minute: the next take obeys both.
    store
        .update_webhook(&a.id, None, &spec(limit(1, 60, None)))
        .await?;
    back_date(a.id.clone(), "1 hour").await?;
    assert_eq!(store.take_rate_tokens(&a.id, 10).await?.granted, 1);
    let slow = store.take_rate_tokens(&a.id, 1).await?;
    assert_eq!(slow.granted, 0);
    let wait = slow.wait.context("wait")?;
    assert!(
        wait > Duration::from_secs(55) && wait <= Duration::from_secs(60),
        "next token in {wait:?}"
    );

    // Takes racing on 20 connections share 5 tokens (the refill, 1 per
    // hour, adds nothing meanwhile).
    let b = store
        .create_webhook(None, false, &spec(limit(1, 3600, Some(5))))
        .await?;
    let takes = (0..20).map(|_| {
        let store = store.clone();
        let id = b.id.clone();
        tokio::spawn(async move { store.take_rate_tokens(&id, 2).await })
    });
    let mut granted = 0;
    for t in takes.collect::<Vec<_>>() {
        granted += tokio::time::timeout(WAIT, t).await???.granted;
    }
    assert_eq!(granted, 5, "concurrent takes granted {granted} of 5 tokens");

    // No limit: everything, and no bucket row.
    let c = store.create_webhook(None, false, &spec(None)).await?;
    assert_eq!(
        store.take_rate_tokens(&c.id, 7).await?,
        pgtide_store::webhook_rate::Taken {
            granted: 7,
            wait: None
        }
    );
    assert_eq!(bucket_rows(&client, &c.id).await?, 0);

    // Deleting an endpoint deletes its bucket.
    store.delete_webhook(&a.id, None).await?;
    assert_eq!(bucket_rows(&client, &a.id).await?, 0);
    drop(store);
    drop(client);
    db.cleanup().await;
    Ok(())
}

/// How many rate buckets the store holds for an endpoint.
async fn bucket_rows(client: &tokio_postgres::Client, webhook_id: &str) -> anyhow::Result<i64> {
    Ok(client
        .query_one(
            "SELECT count(*) FROM pgtide.webhook_rate WHERE webhook_id = $1",
            &[&webhook_id],
        )
        .await?
        .get(0))
}

/// Two nodes on one database, one endpoint limited to 5 requests a second
/// with no burst: together they keep to the limit. Each node may send one
/// request at a time and the receiver takes 300 ms to answer, so one node
/// alone could not keep up 5 a second: both must deliver (the receiver sees
/// two requests at once), yet 20 events take at least 19 × 200 ms, no two
/// requests start much closer than 200 ms apart, and every event arrives
/// exactly once.
#[tokio::test]
async fn two_nodes_share_one_rate_limit() -> anyhow::Result<()> {
    const EVENTS: usize = 20;
    const PER_SECOND: f64 = 5.0;
    let server = Server::shared().await?;
    let db = server.database().await?;
    let (first, second) = two_nodes(&db, 1).await?;
    let mut rx = Receiver::start().await?;
    rx.behaviour.delay_ms.store(300, Ordering::SeqCst);
    create_ok(
        &first,
        json!({"url": rx.url,
               "rate_limit": {"requests_per_period": 5, "period_seconds": 1, "burst": 1}}),
    )
    .await?;
    db.client()
        .await?
        .batch_execute(&format!(
            "SELECT pgtide.publish('load.x', jsonb_build_object('n', g)) FROM generate_series(1, {EVENTS}) g"
        ))
        .await?;
    let stored: BTreeSet<String> = first
        .wait_events(EVENTS)
        .await?
        .iter()
        .filter_map(|e| e["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(stored.len(), EVENTS);
    rx.until(|got| got.len() >= EVENTS).await?;
    // Anything sent twice would come within a lease; none may.
    rx.quiet_for(Duration::from_secs(1)).await?;
    let got: Vec<&str> = rx
        .got
        .iter()
        .map(|r| r.header("x-pgtide-event-id"))
        .collect();
    let unique: BTreeSet<String> = got.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(
        got.len(),
        EVENTS,
        "{} requests for {EVENTS} events",
        got.len()
    );
    assert_eq!(unique, stored, "every event arrives once");
    let most = rx.behaviour.max_in_flight.load(Ordering::SeqCst);
    assert!(
        most >= 2,
        "only {most} request at a time: one node sent them all"
    );
    // The receiver stamps a request once answered, 300 ms after it began,
    // so the stamps keep the spacing of the starts, give or take jitter.
    let mut at: Vec<Instant> = rx.got.iter().map(|r| r.at).collect();
    at.sort();
    let span = at[EVENTS - 1].duration_since(at[0]).as_secs_f64();
    let least = (EVENTS - 1) as f64 / PER_SECOND;
    assert!(
        span >= least - 0.2,
        "{EVENTS} requests at {PER_SECOND}/s over two nodes took only {span:.2}s (at least {least:.2}s)"
    );
    for pair in at.windows(2) {
        let gap = pair[1].duration_since(pair[0]).as_secs_f64();
        assert!(
            gap >= 0.1,
            "two requests {gap:.3}s apart with burst 1 at 5/s"
        );
    }
    first.stop().await?;
    second.stop().await?;
    db.cleanup().await;
    Ok(())
}
