//! The dispatcher: one task per endpoint on every node, each looping over
//! fan-out (events after the endpoint's cursor become queued deliveries),
//! claim (due rows under a lease, as many as the endpoint's concurrency, the
//! node's concurrency and the rate limit allow), send (spawned, bounded) and
//! record (the attempt, then delete, reschedule or dead-letter). Several
//! nodes run the same loops over the same queue; `SKIP LOCKED` claims and
//! leases keep them from sending a row twice while its worker lives, and a
//! rate-limited endpoint's claims draw from one token bucket in the store,
//! so the nodes together keep to its limit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgtide_core::{Event, EventSource};
use pgtide_store::Store;
use pgtide_store::webhooks::{AttemptRecord, AttemptResult, ClaimMode, ClaimedDelivery, Webhook};
use serde_json::json;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::Result;
use crate::backoff::{self, Next};
use crate::sender::{Attempt, Outgoing, Sender};

/// How the dispatcher runs on this node.
#[derive(Debug, Clone)]
pub struct Config {
    /// The first retry's delay; later ones double (`--webhook-backoff-base`).
    pub backoff_base: Duration,
    /// Deliver to private, loopback and link-local addresses too.
    pub allow_private: bool,
    /// Most requests in flight on this node, over all endpoints.
    pub workers: usize,
    /// Most requests in flight per endpoint (an ordered endpoint has one).
    pub per_endpoint: usize,
    /// How often to look for work that no local signal announces (events
    /// and retries from other nodes, expired leases).
    pub poll: Duration,
    /// How long attempt records are kept (the events' `--retention`).
    pub retention: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            backoff_base: Duration::from_secs(2),
            allow_private: false,
            workers: 256,
            per_endpoint: 64,
            poll: Duration::from_millis(250),
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// A handle on webhook delivery: runs the loops, and lets the API check
/// targets, send test deliveries and announce endpoint changes.
#[derive(Clone)]
pub struct Dispatcher {
    store: Store,
    sender: Sender,
    config: Arc<Config>,
    changed: Arc<Notify>,
}

/// Events considered per fan-out transaction.
const FAN_OUT_WINDOW: i64 = 2000;

/// How often old attempt records are pruned (at most).
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Most attempts recorded in one transaction.
const RECORD_BATCH: usize = 500;

impl Dispatcher {
    pub fn new(store: Store, config: Config) -> Result<Dispatcher> {
        Ok(Dispatcher {
            sender: Sender::new(config.allow_private)?,
            store,
            config: Arc::new(config),
            changed: Arc::new(Notify::new()),
        })
    }

    pub fn allow_private(&self) -> bool {
        self.config.allow_private
    }

    /// Wakes the loops after an endpoint was created, changed or deleted,
    /// or a dead letter was put back in its queue.
    pub fn endpoints_changed(&self) {
        self.changed.notify_one();
    }

    /// Sends one synthetic `system.webhook_test` event to the endpoint now,
    /// outside the queue, and records the attempt.
    pub async fn test(&self, webhook: &Webhook) -> Result<(String, Attempt)> {
        let id = ulid::Ulid::new();
        let event = Event {
            id: id.to_string(),
            seq: 0,
            topic: "system.webhook_test".into(),
            event_type: "system.webhook_test".into(),
            ts: pgtide_core::format_ts(time::OffsetDateTime::now_utc()),
            source: EventSource::Http,
            data: json!({"webhook_id": webhook.id, "message": "a test delivery from pgtide"}),
            org_id: webhook.org_id,
            correlation_id: None,
            attributes: Default::default(),
            meta: Default::default(),
        };
        let delivery_id = ulid::Ulid::new().to_string();
        let body = serde_json::to_vec(&event).unwrap_or_default();
        let attempt = self
            .sender
            .send(&outgoing(webhook, &delivery_id, &event, body.into()))
            .await;
        let record = AttemptRecord {
            id: delivery_id.clone(),
            webhook_id: webhook.id.clone(),
            claim: uuid::Uuid::nil(),
            deliveries: Vec::new(),
            event_ids: vec![event.id.clone()],
            attempt: 1,
            status_code: attempt.status_code.map(i32::from),
            latency_ms: attempt.latency.as_millis() as i64,
            error: attempt.error.clone(),
            response: attempt.response.clone(),
            result: AttemptResult::Delivered,
            dead: Vec::new(),
        };
        self.store.record_test_attempt(&record).await?;
        Ok((delivery_id, attempt))
    }

    /// Runs until `shutdown`: keeps one loop per endpoint, following
    /// creations, changes and deletions.
    pub async fn run(self, shutdown: CancellationToken) {
        let global = Arc::new(Semaphore::new(self.config.workers.max(1)));
        let mut loops: HashMap<String, (watch::Sender<Arc<Webhook>>, CancellationToken)> =
            HashMap::new();
        let mut pruned = Instant::now();
        loop {
            if pruned.elapsed() >= PRUNE_EVERY.min(self.config.retention / 2) {
                pruned = Instant::now();
                match self
                    .store
                    .prune_webhook_attempts(self.config.retention)
                    .await
                {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "retention removed old webhook attempts"),
                    Err(e) => tracing::warn!(error = %e, "pruning webhook attempts failed"),
                }
            }
            match self.store.list_webhooks(None).await {
                Ok(list) => {
                    let mut seen = std::collections::HashSet::new();
                    for webhook in list {
                        seen.insert(webhook.id.clone());
                        let webhook = Arc::new(webhook);
                        match loops.get(&webhook.id) {
                            Some((config, _)) => {
                                config.send_if_modified(|current| {
                                    if **current == *webhook {
                                        false
                                    } else {
                                        *current = webhook.clone();
                                        true
                                    }
                                });
                            }
                            None => {
                                let (config, config_rx) = watch::channel(webhook.clone());
                                let cancel = shutdown.child_token();
                                tokio::spawn(self.clone().endpoint_loop(
                                    config_rx,
                                    global.clone(),
                                    cancel.clone(),
                                ));
                                loops.insert(webhook.id.clone(), (config, cancel));
                            }
                        }
                    }
                    loops.retain(|id, (_, cancel)| {
                        let keep = seen.contains(id);
                        if !keep {
                            cancel.cancel();
                        }
                        keep
                    });
                }
                Err(e) => tracing::warn!(error = %e, "cannot list webhooks; trying again"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        tracing::debug!("webhook dispatcher stopped");
    }

    async fn endpoint_loop(
        self,
        mut config: watch::Receiver<Arc<Webhook>>,
        global: Arc<Semaphore>,
        cancel: CancellationToken,
    ) {
        let done = Arc::new(Notify::new());
        let (records, to_record) = mpsc::unbounded_channel();
        tokio::spawn(self.clone().recorder(to_record, done.clone()));
        let mut committed = self.store.committed_seq();
        let mut webhook = config.borrow_and_update().clone();
        let mut state = EndpointState::new(&webhook, &self.config);
        let mut fan_out_due = true;
        loop {
            if cancel.is_cancelled() {
                return;
            }
            if fan_out_due {
                self.fan_out(&webhook.id).await;
            }
            let wait = self
                .claim_and_send(&webhook, &mut state, &global, &records)
                .await;
            let Some(wait) = wait else {
                // Claimed something: look for more at once.
                fan_out_due = false;
                continue;
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                Ok(()) = committed.changed() => fan_out_due = true,
                _ = done.notified() => fan_out_due = false,
                Ok(()) = config.changed() => {
                    webhook = config.borrow_and_update().clone();
                    state = EndpointState::new(&webhook, &self.config);
                    fan_out_due = true;
                }
                _ = tokio::time::sleep(wait) => fan_out_due = true,
            }
        }
    }

    async fn fan_out(&self, id: &str) {
        loop {
            match self.store.fan_out(id, FAN_OUT_WINDOW).await {
                Ok((_, true)) => continue,
                Ok((_, false)) => return,
                Err(e) => {
                    tracing::warn!(webhook = id, error = %e, "webhook fan-out failed; will retry");
                    return;
                }
            }
        }
    }

    /// Claims what may go now and spawns the sends. `None` when something
    /// was claimed (look again at once), else how long to wait at most.
    async fn claim_and_send(
        &self,
        webhook: &Arc<Webhook>,
        state: &mut EndpointState,
        global: &Arc<Semaphore>,
        records: &mpsc::UnboundedSender<AttemptRecord>,
    ) -> Option<Duration> {
        let poll = self.config.poll;
        let free = state
            .permits
            .available_permits()
            .min(global.available_permits());
        // Under load, claim in batches rather than one row per finished
        // request; when idle, at once.
        let busy = state.permits.available_permits() < state.capacity;
        if free == 0 || (busy && free < state.capacity.div_ceil(4)) {
            return Some(poll);
        }
        let spec = &webhook.spec;
        // A claim is never granted more tokens than the burst, so it need
        // not lock more rows than that.
        let most = match &spec.rate_limit {
            Some(r) => free.min(r.burst.unwrap_or(1).max(1) as usize),
            None => free,
        };
        let mode = ClaimMode {
            limit: most as i64,
            ordered: spec.ordered,
            batch: spec.batch,
            lease: webhook.lease(),
            rate_limited: spec.rate_limit.is_some(),
        };
        let claim = match self.store.claim_deliveries(&webhook.id, mode).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(webhook = %webhook.id, error = %e, "claiming webhook deliveries failed");
                return Some(Duration::from_secs(1));
            }
        };
        if let Some(wait) = claim.throttled {
            // The shared bucket's own answer: no node gets a token sooner.
            return Some(wait);
        }
        if claim.deliveries.is_empty() {
            return Some(claim.next_due.map_or(poll, |d| d.min(poll)));
        }
        let messages: Vec<Vec<ClaimedDelivery>> = if spec.batch.is_some() {
            vec![claim.deliveries]
        } else {
            claim.deliveries.into_iter().map(|d| vec![d]).collect()
        };
        for message in messages {
            let (Ok(mine), Ok(node)) = (
                state.permits.clone().acquire_owned().await,
                global.clone().acquire_owned().await,
            ) else {
                return Some(poll);
            };
            let this = self.clone();
            let webhook = webhook.clone();
            let records = records.clone();
            let claim_id = claim.claim;
            tokio::spawn(async move {
                this.deliver(&webhook, claim_id, message, [mine, node], &records)
                    .await;
            });
        }
        None
    }

    /// Sends one message (one event, or a batch) and records how it went.
    async fn deliver(
        &self,
        webhook: &Webhook,
        claim: uuid::Uuid,
        message: Vec<ClaimedDelivery>,
        permits: [OwnedSemaphorePermit; 2],
        records: &mpsc::UnboundedSender<AttemptRecord>,
    ) {
        let attempt_no = message.iter().map(|d| d.attempts).max().unwrap_or(0) + 1;
        let (present, expired): (Vec<_>, Vec<_>) =
            message.into_iter().partition(|d| d.event.is_some());
        if !expired.is_empty() {
            let _ = records.send(expired_record(webhook, claim, &expired, attempt_no));
        }
        let events: Vec<&Event> = present.iter().filter_map(|d| d.event.as_ref()).collect();
        let Some(first) = events.first() else {
            drop(permits);
            return;
        };
        let body = if webhook.spec.batch.is_some() {
            serde_json::to_vec(&events)
        } else {
            serde_json::to_vec(first)
        }
        .unwrap_or_default();
        let delivery_id = ulid::Ulid::new().to_string();
        let attempt = self
            .sender
            .send(&outgoing(webhook, &delivery_id, first, body.into()))
            .await;
        drop(permits);
        let result = if attempt.succeeded() {
            AttemptResult::Delivered
        } else {
            match backoff::after_failure(
                self.config.backoff_base,
                attempt_no,
                webhook.spec.max_retries,
                rand::random(),
            ) {
                Next::Retry(d) => AttemptResult::Retry(d),
                Next::GiveUp => AttemptResult::Dead,
            }
        };
        let record = AttemptRecord {
            id: delivery_id,
            webhook_id: webhook.id.clone(),
            claim,
            deliveries: present.iter().map(|d| d.id).collect(),
            event_ids: events.iter().map(|e| e.id.clone()).collect(),
            attempt: attempt_no,
            status_code: attempt.status_code.map(i32::from),
            latency_ms: attempt.latency.as_millis() as i64,
            error: attempt.error.clone(),
            response: attempt.response.clone(),
            dead: if result == AttemptResult::Dead {
                events
                    .iter()
                    .map(|e| {
                        (
                            Some(e.topic.clone()),
                            serde_json::to_value(e).unwrap_or_default(),
                        )
                    })
                    .collect()
            } else {
                Vec::new()
            },
            result,
        };
        if let Some(e) = &record.error {
            tracing::debug!(webhook = %webhook.id, attempt = attempt_no, error = %e, "webhook attempt failed");
        }
        let _ = records.send(record);
    }

    /// Records the endpoint's attempts in batches (what finished while the
    /// previous batch was written), then wakes the endpoint loop. Ends when
    /// the loop and its in-flight sends are gone.
    async fn recorder(self, mut rx: mpsc::UnboundedReceiver<AttemptRecord>, done: Arc<Notify>) {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < RECORD_BATCH {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.record(&batch).await;
            done.notify_one();
        }
    }

    /// Records attempts, retrying while the store is briefly unavailable.
    /// If they cannot be recorded, the leases expire and the deliveries are
    /// sent again: at least once, never lost.
    async fn record(&self, batch: &[AttemptRecord]) {
        for wait in [100, 500, 2000, 5000] {
            match self.store.record_attempts(batch).await {
                Ok(()) => return,
                Err(e) if e.is_retryable() => {
                    tracing::warn!(error = %e, "recording webhook attempts failed; retrying");
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
                Err(e) => {
                    // E.g. the endpoint was deleted meanwhile.
                    tracing::warn!(error = %e, "recording webhook attempts failed");
                    return;
                }
            }
        }
    }
}

/// What an endpoint loop keeps between rounds.
struct EndpointState {
    permits: Arc<Semaphore>,
    capacity: usize,
}

impl EndpointState {
    fn new(webhook: &Webhook, config: &Config) -> EndpointState {
        let n = if webhook.spec.ordered {
            1
        } else {
            config.per_endpoint.max(1)
        };
        EndpointState {
            permits: Arc::new(Semaphore::new(n)),
            capacity: n,
        }
    }
}

fn outgoing<'a>(
    webhook: &'a Webhook,
    delivery_id: &'a str,
    first: &'a Event,
    body: bytes::Bytes,
) -> Outgoing<'a> {
    Outgoing {
        url: &webhook.spec.url,
        secret: &webhook.spec.secret,
        scheme: webhook.spec.signature_scheme,
        headers: &webhook.spec.headers,
        timeout: Duration::from_secs(webhook.spec.timeout_seconds.max(1) as u64),
        delivery_id,
        event_id: &first.id,
        event_type: &first.event_type,
        body,
    }
}

/// Deliveries whose event retention removed first: dead-lettered unsent.
fn expired_record(
    webhook: &Webhook,
    claim: uuid::Uuid,
    expired: &[ClaimedDelivery],
    attempt: i32,
) -> AttemptRecord {
    AttemptRecord {
        id: ulid::Ulid::new().to_string(),
        webhook_id: webhook.id.clone(),
        claim,
        deliveries: expired.iter().map(|d| d.id).collect(),
        event_ids: expired.iter().map(|d| d.event_id.clone()).collect(),
        attempt,
        status_code: None,
        latency_ms: 0,
        error: Some("the event was removed by retention before it could be delivered".into()),
        response: None,
        result: AttemptResult::Dead,
        dead: expired
            .iter()
            .map(|d| (None, json!({"id": d.event_id})))
            .collect(),
    }
}
