//! The one delivery path: a tailer follows the store by `seq` (every event,
//! whatever its source, after it is committed, in `seq` order) and hands each
//! event to the subscriptions whose pattern and filter match, through an
//! index of patterns rather than a scan of every subscriber.
//!
//! Each connection has a bounded [`Outbox`] (256): when full, the oldest event
//! is dropped and a `meta.ws` notice counts the drops; notices are never dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use pgtide_core::{Event, Pattern, format_ts};
use pgtide_store::{EventQuery, Store};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Bound of each connection's queue.
pub const OUTBOX_CAPACITY: usize = 256;

/// Events dispatched between looks at the outboxes a burst is filling.
const BURST_CHUNK: usize = OUTBOX_CAPACITY / 4;

/// How long, in all, one burst may wait for filled outboxes to drain.
const BURST_PATIENCE: Duration = Duration::from_millis(20);

/// An event serialized once, shared by every subscriber it goes to: a
/// clone is one reference count, and no recipient serializes it again.
#[derive(Debug, Clone)]
pub struct Delivery(Arc<Prepared>);

#[derive(Debug)]
struct Prepared {
    event: Event,
    /// The envelope as a WebSocket text frame's payload.
    json: Utf8Bytes,
    /// The same JSON as Socket.IO emits it, made on first use.
    raw: OnceLock<Option<Box<RawValue>>>,
}

impl Delivery {
    pub fn new(event: Event) -> Delivery {
        let json = serde_json::to_string(&event).unwrap_or_default().into();
        Delivery(Arc::new(Prepared {
            event,
            json,
            raw: OnceLock::new(),
        }))
    }

    pub fn event(&self) -> &Event {
        &self.0.event
    }

    /// The serialized envelope (a WebSocket frame's payload, shared).
    pub fn json(&self) -> Utf8Bytes {
        self.0.json.clone()
    }

    /// The serialized envelope as a JSON value to embed verbatim.
    pub fn raw_json(&self) -> Option<&RawValue> {
        self.0
            .raw
            .get_or_init(|| RawValue::from_string(self.0.json.as_str().to_owned()).ok())
            .as_deref()
    }
}

/// What a connection sends, in order.
#[derive(Debug, Clone)]
pub enum Outgoing {
    Event(Delivery),
    /// A reply or other frame that must not be dropped.
    Frame(Arc<str>),
    /// `meta.ws` drop notice; its count grows while it waits.
    Dropped(u64),
}

/// A connection's bounded queue with drop-oldest.
#[derive(Debug, Default)]
pub struct Outbox {
    queue: Mutex<Queue>,
    notify: Notify,
    room: Notify,
    /// Subscriptions in the hub that feed this outbox.
    subscriptions: AtomicUsize,
    closed: std::sync::atomic::AtomicBool,
}

impl Outbox {
    /// Queues an event; when full, drops the oldest event and counts it in
    /// the pending notice. Returns how many events were dropped (0 or 1)
    /// and how many are queued now.
    pub fn push_event(&self, delivery: Delivery) -> (u64, usize) {
        let mut dropped = 0;
        let queued = {
            let mut q = lock(&self.queue);
            if q.events >= OUTBOX_CAPACITY {
                if let Some(i) = q.items.iter().position(|o| matches!(o, Outgoing::Event(_))) {
                    q.items.remove(i);
                    q.events -= 1;
                    dropped = 1;
                }
                match q.items.iter_mut().rev().find_map(|o| match o {
                    Outgoing::Dropped(n) => Some(n),
                    _ => None,
                }) {
                    Some(n) => *n += dropped,
                    None => q.items.push_back(Outgoing::Dropped(dropped)),
                }
            }
            q.items.push_back(Outgoing::Event(delivery));
            q.events += 1;
            q.events
        };
        self.notify.notify_one();
        (dropped, queued)
    }

    /// Queues a frame that is never dropped (replies).
    pub fn push_frame(&self, frame: impl Into<Arc<str>>) {
        lock(&self.queue)
            .items
            .push_back(Outgoing::Frame(frame.into()));
        self.notify.notify_one();
    }

    /// Everything queued, oldest first; waits while empty. `None` once closed.
    pub async fn drain(&self) -> Option<VecDeque<Outgoing>> {
        loop {
            let notified = self.notify.notified();
            {
                let mut q = lock(&self.queue);
                if !q.items.is_empty() {
                    let all = std::mem::take(&mut q.items);
                    q.events = 0;
                    self.room.notify_waiters();
                    return Some(all);
                }
            }
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            notified.await;
        }
    }

    /// Waits until the queue is at most half full (replays use this instead
    /// of dropping), or the connection closed.
    pub async fn wait_for_room(&self) {
        loop {
            let room = self.room.notified();
            if self.len() < OUTBOX_CAPACITY / 2 || self.closed.load(Ordering::Acquire) {
                return;
            }
            room.await;
        }
    }

    pub fn close(&self) {
        self.room.notify_waiters();
        self.closed.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    pub fn len(&self) -> usize {
        lock(&self.queue).items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An outbox's items, with its events counted (the bound is on events;
/// replies and notices are never dropped).
#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Outgoing>,
    events: usize,
}

/// The `meta.ws` notice frame.
pub fn dropped_notice(count: u64) -> String {
    json!({
        "topic": "meta.ws",
        "seq": 0,
        "ts": format_ts(time::OffsetDateTime::now_utc()),
        "data": {"event": "dropped", "count": count},
    })
    .to_string()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The `filter` object of a subscription (SPEC §7; the seed's filters).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Table names, bare (`orders`) or qualified (`public.orders`), matched
    /// against `meta.table`.
    #[serde(default)]
    pub tables: Vec<String>,
    /// `insert`, `update`, `delete`, `truncate` (any case), against `meta.op`.
    #[serde(default)]
    pub operations: Vec<String>,
    #[serde(default)]
    pub event_types: Vec<String>,
    /// Every pair must be present in the event's attributes.
    #[serde(default)]
    pub attributes: HashMap<String, String>,
}

impl Filter {
    pub fn matches(&self, event: &Event) -> bool {
        if !self.tables.is_empty() {
            let Some(table) = event.meta.get("table").and_then(Value::as_str) else {
                return false;
            };
            let bare = table.split_once('.').map_or(table, |(_, t)| t);
            if !self.tables.iter().any(|t| t == table || t == bare) {
                return false;
            }
        }
        if !self.operations.is_empty() {
            let Some(op) = event.meta.get("op").and_then(Value::as_str) else {
                return false;
            };
            if !self.operations.iter().any(|o| o.eq_ignore_ascii_case(op)) {
                return false;
            }
        }
        if !self.event_types.is_empty() && !self.event_types.contains(&event.event_type) {
            return false;
        }
        self.attributes
            .iter()
            .all(|(k, v)| event.attributes.get(k) == Some(v))
    }
}

/// Who may see what: the connection's tenancy, checked per event.
#[derive(Debug, Clone, Copy)]
pub struct Visibility {
    pub admin: bool,
    pub org_id: Option<i64>,
}

impl Visibility {
    pub fn may_see(&self, org: Option<i64>) -> bool {
        self.admin || org.is_none() || org == self.org_id
    }
}

/// One subscription of one connection.
pub struct Subscription {
    pub pattern: Pattern,
    pub filter: Filter,
    pub visibility: Visibility,
    pub outbox: Arc<Outbox>,
    /// While a `from_seq` replay runs, live events wait here.
    held: Mutex<Option<Vec<Delivery>>>,
    /// The last seq a replay sent: the tailer may still be behind it, and
    /// must not send those events a second time.
    replayed_through: AtomicI64,
    dropped: Arc<AtomicU64>,
}

impl Subscription {
    /// Offers an event; `seen` holds the outboxes this event already went to,
    /// so a connection whose subscriptions overlap gets it once.
    fn offer(&self, delivery: &Delivery, seen: &mut Vec<*const Outbox>, pressured: &mut Pressured) {
        if !self.pattern.matches(&delivery.event().topic)
            || delivery.event().seq <= self.replayed_through.load(Ordering::Acquire)
            || !self.visibility.may_see(delivery.event().org_id)
            || !self.filter.matches(delivery.event())
        {
            return;
        }
        {
            let mut held = lock(&self.held);
            if let Some(held) = held.as_mut() {
                held.push(delivery.clone());
                return;
            }
        }
        // Only a connection with overlapping subscriptions can be offered an
        // event twice; the others skip the (quadratic) check.
        if self.outbox.subscriptions.load(Ordering::Relaxed) > 1 {
            let outbox = Arc::as_ptr(&self.outbox);
            if seen.contains(&outbox) {
                return;
            }
            seen.push(outbox);
        }
        let (n, queued) = self.outbox.push_event(delivery.clone());
        if n > 0 {
            self.dropped.fetch_add(n, Ordering::Relaxed);
        }
        pressured.note(&self.outbox, queued);
    }
}

/// Outboxes a burst has filled past half, so the tailer can give their
/// writers a moment before it goes on (see [`Hub::dispatch_burst`]).
#[derive(Default)]
pub struct Pressured(Vec<Arc<Outbox>>);

impl Pressured {
    fn note(&mut self, outbox: &Arc<Outbox>, queued: usize) {
        if queued >= OUTBOX_CAPACITY / 2 && !self.0.iter().any(|o| Arc::ptr_eq(o, outbox)) {
            self.0.push(outbox.clone());
        }
    }
}

/// Subscriptions indexed by their pattern's literal prefix (`fan.3` of
/// `fan.3.*`; empty for `*.x` and `**`). An event is offered only to the
/// buckets of its topic's prefixes (`""`, `fan`, `fan.3`, `fan.3.tick`), so
/// 10,000 subscribers of other topics cost it nothing.
#[derive(Default)]
struct Index {
    by_prefix: HashMap<String, Vec<(u64, Arc<Subscription>)>>,
}

impl Index {
    fn bucket(&mut self, pattern: &Pattern) -> &mut Vec<(u64, Arc<Subscription>)> {
        self.by_prefix
            .entry(pattern.literal_prefix().to_owned())
            .or_default()
    }

    /// Whether the subscription was there.
    fn remove(&mut self, pattern: &Pattern, id: u64) -> bool {
        let prefix = pattern.literal_prefix();
        let Some(bucket) = self.by_prefix.get_mut(prefix) else {
            return false;
        };
        let before = bucket.len();
        bucket.retain(|(i, _)| *i != id);
        let removed = bucket.len() < before;
        if bucket.is_empty() {
            self.by_prefix.remove(prefix);
        }
        removed
    }

    /// The buckets whose subscriptions may match `topic`.
    fn candidates<'a>(
        &'a self,
        topic: &'a str,
    ) -> impl Iterator<Item = &'a Vec<(u64, Arc<Subscription>)>> + 'a {
        let prefixes = std::iter::once("")
            .chain(topic.match_indices('.').map(|(i, _)| &topic[..i]))
            .chain(std::iter::once(topic));
        prefixes.filter_map(|p| self.by_prefix.get(p))
    }
}

/// The fan-out point shared by every transport.
#[derive(Clone)]
pub struct Hub {
    index: Arc<RwLock<Index>>,
    next_id: Arc<AtomicU64>,
    /// Highest seq handed to subscribers.
    delivered: Arc<AtomicI64>,
    pub dropped: Arc<AtomicU64>,
    pub connections: Arc<AtomicI64>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            index: Arc::default(),
            next_id: Arc::new(AtomicU64::new(1)),
            delivered: Arc::new(AtomicI64::new(0)),
            dropped: Arc::new(AtomicU64::new(0)),
            connections: Arc::new(AtomicI64::new(0)),
        }
    }
}

/// A registered subscription; dropping it does not unregister (call [`Hub::unsubscribe`]).
pub struct SubscriptionHandle {
    pub id: u64,
    pub subscription: Arc<Subscription>,
}

impl Hub {
    /// Registers a subscription. With `replay`, live events are held until
    /// [`Hub::finish_replay`], so a replay can be sent first with no gap and
    /// no duplicate.
    pub fn subscribe(
        &self,
        pattern: Pattern,
        filter: Filter,
        visibility: Visibility,
        outbox: Arc<Outbox>,
        replay: bool,
    ) -> SubscriptionHandle {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let subscription = Arc::new(Subscription {
            pattern,
            filter,
            visibility,
            outbox,
            held: Mutex::new(replay.then(Vec::new)),
            replayed_through: AtomicI64::new(0),
            dropped: self.dropped.clone(),
        });
        subscription
            .outbox
            .subscriptions
            .fetch_add(1, Ordering::Relaxed);
        let mut index = self
            .index
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        index
            .bucket(&subscription.pattern)
            .push((id, subscription.clone()));
        SubscriptionHandle { id, subscription }
    }

    pub fn unsubscribe(&self, handle: &SubscriptionHandle) {
        let mut index = self
            .index
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if index.remove(&handle.subscription.pattern, handle.id) {
            handle
                .subscription
                .outbox
                .subscriptions
                .fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Ends a replay: held live events newer than `last_replayed` follow it.
    pub fn finish_replay(&self, handle: &SubscriptionHandle, last_replayed: i64) {
        // The lock stays held while the held events go out: a live event the
        // tailer offers meanwhile waits, then follows them, never overtakes.
        let mut guard = lock(&handle.subscription.held);
        handle
            .subscription
            .replayed_through
            .store(last_replayed, Ordering::Release);
        for d in guard.take().unwrap_or_default() {
            if d.event().seq > last_replayed {
                let (n, _) = handle.subscription.outbox.push_event(d);
                if n > 0 {
                    self.dropped.fetch_add(n, Ordering::Relaxed);
                }
            }
        }
    }

    /// Hands one committed event to every matching subscription.
    pub fn dispatch(&self, delivery: &Delivery) {
        self.dispatch_noting(delivery, &mut Pressured::default());
    }

    fn dispatch_noting(&self, delivery: &Delivery, pressured: &mut Pressured) {
        let index = self
            .index
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut seen = Vec::new();
        for bucket in index.candidates(&delivery.event().topic) {
            for (_, s) in bucket {
                s.offer(delivery, &mut seen, pressured);
            }
        }
        self.delivered
            .fetch_max(delivery.event().seq, Ordering::Relaxed);
    }

    /// Dispatches a burst (a page of the store, or a large batch) in chunks.
    /// The outbox bound is for clients that read slower than events come,
    /// not for a burst a fast client can absorb: after each chunk, an outbox
    /// it filled past half gets up to [`BURST_PATIENCE`] in all (per burst,
    /// shared by every such outbox) for its writer to drain before the next
    /// chunk, so only a client that really falls behind drops events.
    pub async fn dispatch_burst(&self, events: Vec<pgtide_core::Event>, last: &mut i64) {
        let deadline = tokio::time::Instant::now() + BURST_PATIENCE;
        let mut pressured = Pressured::default();
        let mut events = events.into_iter().peekable();
        while events.peek().is_some() {
            for event in events.by_ref().take(BURST_CHUNK) {
                *last = event.seq;
                self.dispatch_noting(&Delivery::new(event), &mut pressured);
            }
            for outbox in std::mem::take(&mut pressured.0) {
                let _ = tokio::time::timeout_at(deadline, outbox.wait_for_room()).await;
            }
        }
    }

    /// The highest seq dispatched so far.
    pub fn delivered_seq(&self) -> i64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Follows the store from `from`, dispatching every later event in `seq`
    /// order: woken by every commit this node hears of (its own, and other
    /// nodes' through the store's commit notices), polling once a second in
    /// case a notice is lost. This node's own commits come with their stored
    /// rows, so they are dispatched without reading them back.
    ///
    /// `from` must be read (after [`Store::follow_committed`]) before clients
    /// are served: an event committed after a client subscribed but before
    /// the tailer knew where to start would never reach it.
    pub async fn run_tailer(self, store: Store, from: i64, shutdown: CancellationToken) {
        let mut committed = store.committed_seq();
        let mut last = from;
        self.delivered.store(last, Ordering::Relaxed);
        let mut poll = tokio::time::interval(Duration::from_secs(1));
        let mut query_due = true;
        loop {
            while let Some(events) = store.take_committed_after(last) {
                self.dispatch_burst(events, &mut last).await;
            }
            while query_due || *committed.borrow_and_update() > last {
                query_due = false;
                let query = EventQuery {
                    after_seq: Some(last),
                    limit: 1000,
                    ..EventQuery::default()
                };
                match store.query(&query).await {
                    Ok(events) => {
                        let n = events.len();
                        self.dispatch_burst(events, &mut last).await;
                        if n < 1000 {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "delivery tailer query failed");
                        break;
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = committed.changed() => {}
                _ = poll.tick() => query_due = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgtide_core::{EventSource, NewEvent};

    fn event(seq: i64, topic: &str) -> Delivery {
        Delivery::new(NewEvent::new(topic, "t", EventSource::Http, json!({})).with_seq(seq))
    }

    fn all() -> Visibility {
        Visibility {
            admin: true,
            org_id: None,
        }
    }

    #[test]
    fn full_outbox_drops_oldest_and_counts_in_one_notice() {
        let outbox = Outbox::default();
        for seq in 1..=(OUTBOX_CAPACITY as i64 + 5) {
            outbox.push_event(event(seq, "a"));
        }
        let q = lock(&outbox.queue);
        let seqs: Vec<i64> = q
            .items
            .iter()
            .filter_map(|o| match o {
                Outgoing::Event(d) => Some(d.event().seq),
                _ => None,
            })
            .collect();
        assert_eq!(seqs.len(), OUTBOX_CAPACITY);
        assert_eq!(seqs[0], 6, "the five oldest were dropped");
        let notices: Vec<u64> = q
            .items
            .iter()
            .filter_map(|o| match o {
                Outgoing::Dropped(n) => Some(*n),
                _ => None,
            })
            .collect();
        assert_eq!(notices, [5]);
    }

    #[test]
    fn dispatch_uses_patterns_filters_and_tenancy() {
        let hub = Hub::default();
        let outbox = Arc::new(Outbox::default());
        let p = |s: &str| Pattern::parse(s).unwrap();
        hub.subscribe(p("jobs.*"), Filter::default(), all(), outbox.clone(), false);
        hub.subscribe(
            p("**"),
            Filter {
                event_types: vec!["x".into()],
                ..Filter::default()
            },
            all(),
            outbox.clone(),
            false,
        );
        let org2 = Visibility {
            admin: false,
            org_id: Some(2),
        };
        hub.subscribe(
            p("tenant.**"),
            Filter::default(),
            org2,
            outbox.clone(),
            false,
        );
        hub.dispatch(&event(1, "jobs.a"));
        hub.dispatch(&event(2, "jobs.a.b"));
        let mut org1 = NewEvent::new("tenant.x", "t", EventSource::Http, json!({}));
        org1.org_id = Some(1);
        hub.dispatch(&Delivery::new(org1.with_seq(3)));
        let mut shared = NewEvent::new("tenant.y", "t", EventSource::Http, json!({}));
        shared.org_id = None;
        hub.dispatch(&Delivery::new(shared.with_seq(4)));
        assert_eq!(queued_seqs(&outbox), [1, 4]);
    }

    #[test]
    fn prefix_index_offers_each_event_once_to_the_right_subscriptions() {
        let hub = Hub::default();
        let p = |s: &str| Pattern::parse(s).unwrap();
        let sub = |pattern: &str| {
            let outbox = Arc::new(Outbox::default());
            let handle = hub.subscribe(p(pattern), Filter::default(), all(), outbox.clone(), false);
            (outbox, handle)
        };
        let (fan3, _) = sub("fan.3.*");
        let (exact, _) = sub("fan.3.tick");
        let (any_tick, _) = sub("*.*.tick");
        let (gone, gone_handle) = sub("fan.**");
        // Overlapping subscriptions of one connection: each event once.
        let overlapping = Arc::new(Outbox::default());
        for pattern in ["fan.**", "fan.3.*", "**"] {
            hub.subscribe(
                p(pattern),
                Filter::default(),
                all(),
                overlapping.clone(),
                false,
            );
        }
        hub.unsubscribe(&gone_handle);
        hub.dispatch(&event(1, "fan.3.tick"));
        hub.dispatch(&event(2, "fan.30.tick"));
        hub.dispatch(&event(3, "fan.3"));
        hub.dispatch(&event(4, "fan.3.tock"));
        assert_eq!(queued_seqs(&fan3), [1, 4]);
        assert_eq!(queued_seqs(&exact), [1]);
        assert_eq!(queued_seqs(&any_tick), [1, 2]);
        assert!(gone.is_empty(), "unsubscribed");
        assert_eq!(queued_seqs(&overlapping), [1, 2, 3, 4]);
    }

    /// The seqs of the events waiting in an outbox.
    fn queued_seqs(outbox: &Outbox) -> Vec<i64> {
        lock(&outbox.queue)
            .items
            .iter()
            .filter_map(|o| match o {
                Outgoing::Event(d) => Some(d.event().seq),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn replay_holds_live_events_and_drops_duplicates() {
        let hub = Hub::default();
        let outbox = Arc::new(Outbox::default());
        let h = hub.subscribe(
            Pattern::parse("**").unwrap(),
            Filter::default(),
            all(),
            outbox.clone(),
            true,
        );
        hub.dispatch(&event(5, "a"));
        hub.dispatch(&event(6, "a"));
        assert!(outbox.is_empty(), "held during the replay");
        // The replay itself sent up to 5.
        hub.finish_replay(&h, 5);
        hub.dispatch(&event(7, "a"));
        assert_eq!(queued_seqs(&outbox), [6, 7]);
    }

    #[test]
    fn replay_ahead_of_the_tailer_is_not_sent_twice() {
        let hub = Hub::default();
        let outbox = Arc::new(Outbox::default());
        let h = hub.subscribe(
            Pattern::parse("**").unwrap(),
            Filter::default(),
            all(),
            outbox.clone(),
            true,
        );
        // The replay read up to 8 from the store before the tailer got there.
        hub.finish_replay(&h, 8);
        for seq in 7..=9 {
            hub.dispatch(&event(seq, "a"));
        }
        assert_eq!(queued_seqs(&outbox), [9]);
    }

    #[test]
    fn filters() {
        let mut e = NewEvent::new(
            "tables.orders.insert",
            "row.inserted",
            EventSource::Cdc,
            json!({}),
        );
        e.meta.insert("table".into(), json!("public.orders"));
        e.meta.insert("op".into(), json!("insert"));
        e.attributes.insert("region".into(), "eu".into());
        let e = e.with_seq(1);
        let f = |v: Value| serde_json::from_value::<Filter>(v).unwrap();
        assert!(f(json!({"tables": ["orders"], "operations": ["INSERT"]})).matches(&e));
        assert!(
            f(json!({"tables": ["public.orders"], "attributes": {"region": "eu"}})).matches(&e)
        );
        assert!(!f(json!({"operations": ["delete"]})).matches(&e));
        assert!(!f(json!({"attributes": {"region": "us"}})).matches(&e));
        assert!(!f(json!({"event_types": ["row.deleted"]})).matches(&e));
        assert!(serde_json::from_value::<Filter>(json!({"colour": 1})).is_err());
    }
}
