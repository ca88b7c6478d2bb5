//! The apply loop. A reader task streams from the slot, decodes, turns changes
//! into events and cuts batches; a writer task stores each batch in one
//! transaction and only then reports the batch's end LSN, which the reader
//! passes on to Postgres as the slot's confirmed position.
//!
//! Batches follow the load: the reader hands a batch over as soon as the
//! socket has nothing more ready (low latency when quiet) and keeps filling it
//! while the writer is busy (large, cheap transactions under load).
//!
//! Every change has a key (commit LSN of its transaction, position in it),
//! stored with the events as [`CdcProgress`]; after a crash, Postgres resends
//! from the confirmed position and whatever the key says is stored is skipped.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use pgtide_core::NewEvent;
use pgtide_pg::pgoutput::{self, PgOutput};
use pgtide_pg::replication::{ReplicationConnection, ReplicationMessage};
use pgtide_pg::{Lsn, PgConfig};
use pgtide_store::{
    CdcProgress, CdcWrite, DeadLetter, DeadLetterKind, KnownRelation, SchemaCache, Store,
    StoreClient, progress,
};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::changes::{self, ChangeImages, HEARTBEAT_PREFIX, Op, PUBLISH_PREFIX, TxContext};
use crate::relations::{RelationInfo, TypeCache};
use crate::setup::TableName;
use crate::setup::{SlotStatus, slot_status};
use crate::{CdcError, Result};
use pgtide_mapping::{Change, MappingSet};
use pgtide_pg::pgoutput::{OldTuple, Tuple};

/// What the pipeline streams and how.
#[derive(Debug, Clone)]
pub struct CdcConfig {
    pub source: PgConfig,
    pub slot: String,
    pub publication: String,
    /// Events per store transaction before the reader hands a batch over
    /// even if more input is ready.
    pub max_batch: usize,
    /// How often to emit a heartbeat message and refresh the slot status.
    pub heartbeat: Duration,
    /// Tables whose changes go to default topics `tables.<table>.<op>`.
    pub capture: Vec<TableName>,
    /// The column default-topic events take their `org_id` from, in
    /// tables that have it (`--capture-org-column`).
    pub capture_org_column: Option<String>,
    /// The running mapping set; replaced whole on reload.
    pub mappings: watch::Receiver<Arc<MappingSet>>,
}

/// The pipeline's health, for `/readyz` and logs.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CdcStatus {
    pub streaming: bool,
    /// Another node streams the slot; this one serves clients and waits to
    /// take over.
    pub standby: bool,
    pub confirmed_lsn: Option<String>,
    pub events_stored: u64,
    pub last_error: Option<String>,
    /// A fault that waiting cannot heal, with its fix (see
    /// [`crate::CdcError::unhealable`]).
    pub problem: Option<String>,
    /// Times the stream was lost and pgtide set out to reconnect.
    pub reconnects: u64,
    pub slot: Option<SlotStatus>,
}

/// How often a standby node tries to take the slot over.
const STANDBY_RETRY: Duration = Duration::from_secs(1);

/// First wait before reconnecting, doubled up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often a fault that cannot heal by waiting is checked again, and
/// said again in the log.
const PROBLEM_RETRY: Duration = Duration::from_secs(5);
const PROBLEM_LOG_EVERY: Duration = Duration::from_secs(60);

/// Streams until `shutdown`. Once running, no fault of the database or the
/// network ends it: a lost stream (a restart, a terminated walsender, a cut
/// or garbled connection, the store away) is reconnected with capped,
/// jittered backoff; a fault waiting cannot heal (see
/// [`crate::CdcError::unhealable`]) is reported in the status and the log
/// and checked again every few seconds. What is fatal was refused at start.
pub async fn run(
    config: CdcConfig,
    store: Store,
    status: watch::Sender<CdcStatus>,
    shutdown: CancellationToken,
) -> Result<()> {
    let mut backoff = BACKOFF_MIN;
    let mut problem_logged: Option<std::time::Instant> = None;
    loop {
        let started = std::time::Instant::now();
        let error = match run_once(&config, &store, &status, &shutdown).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if error.is_slot_in_use() {
            if !status.borrow().standby {
                tracing::info!(slot = %config.slot, "another pgtide node streams the slot; standing by to take over");
            }
            status.send_modify(|s| {
                s.streaming = false;
                s.standby = true;
                s.last_error = None;
                s.problem = None;
            });
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(STANDBY_RETRY) => {}
            }
            continue;
        }
        let problem = error.unhealable(&config.slot, &config.publication);
        status.send_modify(|s| {
            s.streaming = false;
            s.standby = false;
            s.last_error = Some(error.to_string());
            s.problem = problem.clone();
            s.reconnects += 1;
        });
        let wait = match &problem {
            Some(problem) => {
                if problem_logged.is_none_or(|at| at.elapsed() >= PROBLEM_LOG_EVERY) {
                    tracing::error!(%problem, "replication cannot resume until this is fixed");
                    problem_logged = Some(std::time::Instant::now());
                }
                PROBLEM_RETRY
            }
            None => {
                problem_logged = None;
                if started.elapsed() > Duration::from_secs(30) {
                    backoff = BACKOFF_MIN;
                }
                let wait = jittered(backoff);
                tracing::warn!(error = %error, retry_in = ?wait, "replication interrupted; reconnecting");
                backoff = (backoff * 2).min(BACKOFF_MAX);
                wait
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Before streaming: the slot and the publication still exist and the slot
/// still has its WAL. Without this a dropped publication would only show
/// at the next change, and the status would look healthy until then.
async fn check_slot_and_publication(
    source: &tokio_postgres::Client,
    config: &CdcConfig,
) -> Result<()> {
    let row = source
        .query_one(
            "SELECT (SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1),
                    EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1),
                    EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $2)",
            &[&config.slot, &config.publication],
        )
        .await?;
    let wal_status: Option<String> = row.get(0);
    if !row.get::<_, bool>(1) {
        return Err(CdcError::Unhealable(crate::slot_dropped(&config.slot)));
    }
    if wal_status.as_deref() == Some("lost") {
        return Err(CdcError::Unhealable(crate::slot_invalidated(&config.slot)));
    }
    if !row.get::<_, bool>(2) {
        return Err(CdcError::Unhealable(crate::publication_dropped(
            &config.publication,
        )));
    }
    Ok(())
}

/// `base` with up to a quarter more or less, so nodes that lost the server
/// together do not all come back at the same instant.
fn jittered(base: Duration) -> Duration {
    let quarter = base / 4;
    let spread = rand::random_range(0..=quarter.as_micros() as u64 * 2);
    base - quarter + Duration::from_micros(spread)
}

/// A batch on its way to the writer.
#[derive(Default)]
struct Batch {
    events: Vec<NewEvent>,
    relations: Vec<KnownRelation>,
    dead_letters: Vec<DeadLetter>,
    progress: Option<CdcProgress>,
    /// The end LSN of the last complete transaction in the batch: the slot may
    /// be confirmed up to here once the batch is stored.
    ack: Option<Lsn>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.relations.is_empty()
            && self.dead_letters.is_empty()
            && self.ack.is_none()
    }
}

/// The transaction being received.
struct OpenTx {
    ctx: TxContext,
    pos: i32,
}

struct Reader<'a> {
    config: &'a CdcConfig,
    source: tokio_postgres::Client,
    types: TypeCache,
    relations: HashMap<u32, RelationInfo>,
    known: HashMap<u32, Value>,
    stored: Option<CdcProgress>,
    tx: Option<OpenTx>,
    pending: Batch,
    schemas: SchemaCache,
    store: Store,
    /// Relations whose changes go to default topics.
    captured: HashSet<u32>,
    mappings: watch::Receiver<Arc<MappingSet>>,
}

async fn run_once(
    config: &CdcConfig,
    store: &Store,
    status: &watch::Sender<CdcStatus>,
    shutdown: &CancellationToken,
) -> Result<()> {
    let source = config.source.connect().await?;
    check_slot_and_publication(&source, config).await?;
    let writer_client = store.client().await?;
    let stored = progress::load(&**writer_client, &config.slot).await?;
    let known = progress::load_relations(&**writer_client, &config.slot)
        .await?
        .into_iter()
        .map(|r| (r.relid, r.columns))
        .collect();
    let conn = ReplicationConnection::connect(&config.source).await?;
    let mut stream = conn
        .start_logical(&config.slot, Lsn::ZERO, &config.publication)
        .await?;
    tracing::info!(slot = %config.slot, resume_after = ?stored.as_ref().map(|p| p.commit_lsn.to_string()), "replication streaming");
    status.send_modify(|s| {
        s.streaming = true;
        s.standby = false;
        s.last_error = None;
        s.problem = None;
    });

    // One batch in flight beside the one being written: a deeper queue only
    // adds latency, the reader keeps batching meanwhile.
    let (batch_tx, batch_rx) = mpsc::channel::<Batch>(1);
    let (flushed_tx, mut flushed_rx) = watch::channel(Lsn::ZERO);
    let mut writer = tokio::spawn(write_batches(
        store.clone(),
        config.slot.clone(),
        writer_client,
        batch_rx,
        flushed_tx,
        status.clone(),
    ));

    let mut reader = Reader {
        config,
        source,
        types: TypeCache::default(),
        relations: HashMap::new(),
        known,
        stored,
        tx: None,
        pending: Batch::default(),
        schemas: store.schemas().clone(),
        store: store.clone(),
        captured: HashSet::new(),
        mappings: config.mappings.clone(),
    };
    store.reload_schemas().await?;
    let mut heartbeat = tokio::time::interval(config.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut confirmed = Lsn::ZERO;
    let max_batch = config.max_batch.max(1);

    let result: Result<()> = loop {
        let full = reader.pending.events.len() >= max_batch;
        let ready_to_send = !reader.pending.is_empty() && (full || !stream.has_ready_message());
        let may_read = reader.pending.events.len() < max_batch * 4;
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ok(()),
            joined = &mut writer => {
                break Err(match joined {
                    Ok(Err(e)) => e,
                    Ok(Ok(())) => CdcError::Setup("store writer stopped".into()),
                    Err(e) => CdcError::Setup(format!("store writer panicked: {e}")),
                });
            }
            permit = batch_tx.reserve(), if ready_to_send => {
                match permit {
                    Ok(permit) => permit.send(std::mem::take(&mut reader.pending)),
                    Err(_) => break Err(CdcError::Setup("store writer stopped".into())),
                }
            }
            changed = flushed_rx.changed() => {
                if changed.is_err() {
                    continue;
                }
                let flushed = *flushed_rx.borrow_and_update();
                if flushed > confirmed {
                    confirmed = flushed;
                    if let Err(e) = stream.send_status(confirmed, false).await {
                        break Err(e.into());
                    }
                    status.send_modify(|s| s.confirmed_lsn = Some(confirmed.to_string()));
                }
            }
            message = stream.next(), if may_read => {
                let outcome = match message {
                    Ok(ReplicationMessage::XLogData { data, .. }) => reader.handle(data).await,
                    Ok(ReplicationMessage::Keepalive { wal_end, reply_requested }) => {
                        reader.idle_ack(wal_end);
                        if reply_requested {
                            stream.send_status(confirmed, false).await.map_err(CdcError::from)
                        } else {
                            Ok(())
                        }
                    }
                    Err(e) => Err(e.into()),
                };
                if let Err(e) = outcome {
                    break Err(e);
                }
            }
            _ = heartbeat.tick() => {
                if let Err(e) = reader.heartbeat(status).await {
                    break Err(e);
                }
                if let Err(e) = stream.send_status(confirmed, false).await {
                    break Err(e.into());
                }
            }
        }
    };

    // Drain: let the writer store what it has, then confirm it.
    drop(batch_tx);
    if result.is_ok() {
        if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(30), &mut writer)
            .await
            .unwrap_or(Ok(Ok(())))
        {
            let flushed = *flushed_rx.borrow();
            if flushed > confirmed {
                let _ = stream.send_status(flushed, false).await;
            }
        }
        stream.close().await;
    } else {
        writer.abort();
    }
    status.send_modify(|s| s.streaming = false);
    result
}

impl Reader<'_> {
    async fn handle(&mut self, data: bytes::Bytes) -> Result<()> {
        match pgoutput::decode(data, false)? {
            PgOutput::Begin(b) => {
                self.tx = Some(OpenTx {
                    ctx: TxContext::new(b.xid, b.final_lsn, b.commit_ts),
                    pos: 0,
                });
            }
            PgOutput::Commit(c) => {
                self.tx = None;
                self.pending.ack = Some(self.pending.ack.map_or(c.end_lsn, |a| a.max(c.end_lsn)));
            }
            PgOutput::Relation(r) => {
                let info = self.types.relation(&self.source, &r).await?;
                let columns = info.columns_json();
                let previous = self.known.get(&r.id).cloned();
                if previous.as_ref() != Some(&columns) {
                    if let Some(previous) = previous
                        && let Some(pos) = self.next_pos()
                    {
                        let ctx = self.ctx();
                        self.push(changes::schema_changed_event(&info, &ctx, &previous), pos);
                    }
                    self.pending.relations.push(KnownRelation {
                        relid: r.id,
                        name: info.qualified_name(),
                        columns: columns.clone(),
                    });
                    self.known.insert(r.id, columns);
                }
                let captured = self
                    .config
                    .capture
                    .iter()
                    .any(|t| t.schema == info.schema && t.name == info.name);
                if captured {
                    self.captured.insert(r.id);
                } else {
                    self.captured.remove(&r.id);
                }
                self.relations.insert(r.id, info);
            }
            PgOutput::Insert(i) => self.change(i.relation_id, Op::Insert, Some(&i.new), None)?,
            PgOutput::Update(u) => {
                self.change(u.relation_id, Op::Update, Some(&u.new), u.old.as_ref())?
            }
            PgOutput::Delete(d) => self.change(d.relation_id, Op::Delete, None, Some(&d.old))?,
            PgOutput::Truncate(t) => {
                for id in &t.relation_ids {
                    if let Some(pos) = self.next_pos() {
                        let rel = self.relation(*id)?;
                        let ctx = self.ctx();
                        let mut events = Vec::new();
                        if self.captured.contains(id) {
                            events.push(changes::truncate_event(
                                rel,
                                &ctx,
                                t.cascade,
                                t.restart_identity,
                            ));
                        }
                        let images = ChangeImages {
                            op: Op::Truncate,
                            new: None,
                            old: None,
                        };
                        let letters = self.map_change(rel, &ctx, &images, &mut events);
                        for event in events {
                            self.push(event, pos);
                        }
                        for letter in letters {
                            self.push_dead_letter(letter, pos);
                        }
                    }
                }
            }
            PgOutput::Message(m) if m.transactional && m.prefix == PUBLISH_PREFIX => {
                if let Some(pos) = self.next_pos() {
                    match changes::publish_event(&m, &self.ctx()) {
                        Ok(event) => self.push(event, pos),
                        Err(e) => {
                            tracing::warn!(error = %e, "ignored a malformed pgtide.publish message")
                        }
                    }
                }
            }
            PgOutput::Message(m) if !m.transactional => {
                if m.prefix == HEARTBEAT_PREFIX {
                    tracing::trace!(lsn = %m.lsn, "heartbeat");
                }
                self.idle_ack(m.lsn);
            }
            PgOutput::Message(_) | PgOutput::Origin(_) | PgOutput::Type(_) => {}
            PgOutput::StreamStart(_)
            | PgOutput::StreamStop
            | PgOutput::StreamCommit(_)
            | PgOutput::StreamAbort(_) => {
                return Err(CdcError::Setup(
                    "unexpected streamed transaction on a protocol 1 stream".into(),
                ));
            }
        }
        Ok(())
    }

    /// One row change: the default-topic event when the table is captured,
    /// and the events of every mapping on the table (failures become dead
    /// letters; the stream goes on).
    fn change(
        &mut self,
        relation_id: u32,
        op: Op,
        new: Option<&Tuple>,
        old: Option<&OldTuple>,
    ) -> Result<()> {
        let Some(pos) = self.next_pos() else {
            return Ok(());
        };
        let rel = self.relation(relation_id)?;
        let captured = self.captured.contains(&relation_id);
        if !captured && !self.mappings.borrow().covers(&rel.schema, &rel.name) {
            return Ok(());
        }
        let images = changes::images(rel, op, new, old);
        let ctx = self.ctx();
        let mut events = Vec::new();
        if captured {
            let mut event = changes::default_event(rel, &ctx, &images);
            if let Some(column) = &self.config.capture_org_column {
                event.org_id = changes::row_org(&images, column);
            }
            events.push(event);
        }
        let letters = self.map_change(rel, &ctx, &images, &mut events);
        for event in events {
            self.push(event, pos);
        }
        for letter in letters {
            self.push_dead_letter(letter, pos);
        }
        Ok(())
    }

    /// Runs the table's mappings over one change, appending their events and
    /// returning a dead letter per failed mapping.
    fn map_change(
        &self,
        rel: &RelationInfo,
        ctx: &TxContext,
        images: &ChangeImages,
        events: &mut Vec<NewEvent>,
    ) -> Vec<DeadLetter> {
        let mappings = self.mappings.borrow().clone();
        if !mappings.covers(&rel.schema, &rel.name) {
            return Vec::new();
        }
        let commit_ts = pgtide_core::format_ts(ctx.commit_ts);
        let lsn = ctx.commit_lsn.to_string();
        let change = Change {
            op: images.op,
            schema: &rel.schema,
            table: &rel.name,
            new: images.new.as_ref().map(|n| &n.row),
            old: images.old.as_ref(),
            unchanged_columns: images.unchanged(),
            xid: ctx.xid,
            commit_ts: &commit_ts,
            lsn: &lsn,
        };
        let mut letters = Vec::new();
        for result in mappings.apply(&change) {
            match result {
                Ok(mapped) => events.push(changes::mapped_event(rel, ctx, images, mapped)),
                Err(failure) => {
                    tracing::warn!(mapping = %failure.mapping, error = %failure.message, "mapping failed on a change; kept as a dead letter");
                    letters.push(DeadLetter {
                        kind: DeadLetterKind::Mapping,
                        topic: None,
                        event: changes::failed_change(rel, ctx, images, &failure.mapping),
                        error: failure.message,
                    });
                }
            }
        }
        letters
    }

    fn push_dead_letter(&mut self, letter: DeadLetter, pos: i32) {
        self.pending.dead_letters.push(letter);
        self.note_position(pos);
    }

    /// Between transactions nothing is owed, so the slot may move to `lsn`
    /// (a keepalive's WAL end or a heartbeat) once earlier batches are stored.
    fn idle_ack(&mut self, lsn: Lsn) {
        if self.tx.is_none() && self.pending.events.is_empty() {
            self.pending.ack = Some(self.pending.ack.map_or(lsn, |a| a.max(lsn)));
        }
    }

    fn ctx(&self) -> TxContext {
        match &self.tx {
            Some(tx) => tx.ctx.clone(),
            None => TxContext::new(0, Lsn::ZERO, pgtide_pg::replication::pg_now_micros()),
        }
    }

    /// The next change position in the open transaction, or None when the
    /// store already has that change (a replay after a crash).
    fn next_pos(&mut self) -> Option<i32> {
        let tx = self.tx.as_mut()?;
        tx.pos += 1;
        match &self.stored {
            Some(p) if p.covers(tx.ctx.commit_lsn, tx.pos) => None,
            _ => Some(tx.pos),
        }
    }

    /// Queues an event for the store, or, when its topic's schema rejects it,
    /// a dead letter with the validator's messages.
    fn push(&mut self, event: NewEvent, pos: i32) {
        match self.schemas.validate(&event.topic, &event.data) {
            Ok(()) => self.pending.events.push(event),
            Err(issues) => {
                let error = issues
                    .iter()
                    .map(|i| format!("{} (at {:?})", i.message, i.pointer))
                    .collect::<Vec<_>>()
                    .join("; ");
                tracing::warn!(topic = %event.topic, %error, "event rejected by its topic's schema; kept as a dead letter");
                let topic = event.topic.clone();
                let envelope = serde_json::to_value(event.with_seq(0)).unwrap_or(Value::Null);
                self.pending.dead_letters.push(DeadLetter {
                    kind: DeadLetterKind::Validation,
                    topic: Some(topic),
                    event: envelope,
                    error,
                });
            }
        }
        self.note_position(pos);
    }

    /// Records that everything of the open transaction up to `pos` is in the
    /// pending batch, so the batch's progress row covers it.
    fn note_position(&mut self, pos: i32) {
        let commit_lsn = self.tx.as_ref().map_or(Lsn::ZERO, |t| t.ctx.commit_lsn);
        self.pending.progress = Some(CdcProgress {
            slot: self.config.slot.clone(),
            commit_lsn,
            tx_pos: pos,
        });
    }

    fn relation(&self, id: u32) -> Result<&RelationInfo> {
        self.relations.get(&id).ok_or_else(|| {
            CdcError::Setup(format!(
                "change for relation {id} before its Relation message"
            ))
        })
    }

    async fn heartbeat(&mut self, status: &watch::Sender<CdcStatus>) -> Result<()> {
        self.source
            .execute(
                "SELECT pg_logical_emit_message(false, $1, '')",
                &[&HEARTBEAT_PREFIX],
            )
            .await?;
        let slot = slot_status(&self.source, &self.config.slot).await?;
        status.send_modify(|s| s.slot = slot);
        // Schema changes made through other nodes reach this one here.
        self.store.reload_schemas().await?;
        Ok(())
    }
}

async fn write_batches(
    store: Store,
    slot: String,
    mut client: StoreClient,
    mut batches: mpsc::Receiver<Batch>,
    flushed: watch::Sender<Lsn>,
    status: watch::Sender<CdcStatus>,
) -> Result<()> {
    while let Some(batch) = batches.recv().await {
        if !batch.events.is_empty() || !batch.relations.is_empty() || !batch.dead_letters.is_empty()
        {
            let write = CdcWrite {
                slot: &slot,
                relations: &batch.relations,
                dead_letters: &batch.dead_letters,
                progress: batch.progress.as_ref(),
            };
            store
                .insert_cdc_batch(&mut client, &batch.events, write)
                .await?;
            let n = batch.events.len() as u64;
            status.send_modify(|s| s.events_stored += n);
        }
        if let Some(ack) = batch.ack {
            flushed.send_if_modified(|f| {
                if ack > *f {
                    *f = ack;
                    true
                } else {
                    false
                }
            });
        }
    }
    Ok(())
}
