//! Writing events under the global `seq`, and reading them back.

use std::collections::BTreeMap;

use bytes::BytesMut;
use deadpool_postgres::ClientWrapper;
use futures_util::pin_mut;
use pgtide_core::{Event, EventSource, NewEvent, Pattern, format_ts};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{GenericClient, Row};

use crate::dead_letters::DeadLetter;
use crate::progress::{CdcProgress, KnownRelation};
use crate::{Result, Store, StoreClient, StoreError};

/// What a CDC batch writes beside its events, in the same transaction.
#[derive(Debug, Clone, Copy)]
pub struct CdcWrite<'a> {
    pub slot: &'a str,
    pub relations: &'a [KnownRelation],
    pub dead_letters: &'a [DeadLetter],
    pub progress: Option<&'a CdcProgress>,
}

/// What one stored batch was given: `first_seq ..= last_seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredBatch {
    pub first_seq: i64,
    pub last_seq: i64,
}

pub(crate) const COLUMNS: &str =
    "seq, id, topic, type, ts, source, data, org_id, correlation_id, attributes, meta";

/// Takes `n` numbers from the counter. The row lock it takes is held until the
/// caller's transaction ends, which is what keeps commits in `seq` order.
async fn reserve_seq(tx: &impl GenericClient, n: usize) -> Result<i64> {
    let n = i64::try_from(n).map_err(|_| StoreError::Corrupt("batch too large".into()))?;
    let row = tx
        .query_one(
            "UPDATE pgtide.seq_counter SET last_seq = last_seq + $1 RETURNING last_seq",
            &[&n],
        )
        .await?;
    let last: i64 = row.get(0);
    Ok(last - n + 1)
}

/// A written batch, with the stored rows when the insert returned them (a
/// small batch's statement does; COPY does not).
struct Written {
    batch: StoredBatch,
    rows: Vec<Row>,
}

/// Writes `events` in one transaction on `client` (a dedicated connection), with
/// the CDC position when given, and returns the seqs they got. Uses binary COPY,
/// the fastest way into Postgres.
async fn insert_batch(
    client: &mut ClientWrapper,
    events: &[NewEvent],
    cdc: Option<CdcWrite<'_>>,
) -> Result<Option<Written>> {
    let only_events = cdc.is_none_or(|c| c.relations.is_empty() && c.dead_letters.is_empty());
    if !events.is_empty() && events.len() <= SMALL_BATCH && only_events {
        return insert_small_batch(client, events, cdc.and_then(|c| c.progress))
            .await
            .map(Some);
    }
    let client: &mut tokio_postgres::Client = client;
    let tx = client.transaction().await?;
    let batch = if events.is_empty() {
        None
    } else {
        let first = reserve_seq(&tx, events.len()).await?;
        copy_events(&tx, events, first).await?;
        Some(Written {
            batch: StoredBatch {
                first_seq: first,
                last_seq: first + events.len() as i64 - 1,
            },
            rows: Vec::new(),
        })
    };
    if let Some(cdc) = cdc {
        for rel in cdc.relations {
            crate::progress::save_relation(&tx, cdc.slot, rel).await?;
        }
        crate::dead_letters::insert(&tx, cdc.dead_letters).await?;
        if let Some(p) = cdc.progress {
            crate::progress::save(&tx, p).await?;
        }
    }
    tx.commit().await?;
    Ok(batch)
}

/// Batches up to this many events are written in one statement: at low
/// rates a round trip costs more than COPY saves.
const SMALL_BATCH: usize = 64;

/// One statement, so one round trip and an implicit transaction: take the
/// seqs (holding the counter's row lock until commit, as every writer does),
/// save the CDC position, insert the events from parallel arrays, and return
/// the stored rows (for the live tailer, which then need not read them back).
async fn insert_small_batch(
    client: &ClientWrapper,
    events: &[NewEvent],
    progress: Option<&CdcProgress>,
) -> Result<Written> {
    let n = events.len() as i64;
    let ids: Vec<uuid::Uuid> = events.iter().map(|e| uuid::Uuid::from(e.id)).collect();
    let topics: Vec<&str> = events.iter().map(|e| e.topic.as_str()).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    let ts: Vec<OffsetDateTime> = events.iter().map(|e| e.ts).collect();
    let sources: Vec<&str> = events.iter().map(|e| e.source.as_str()).collect();
    let data: Vec<JsonbOf<'_, Value>> = events.iter().map(|e| JsonbOf(&e.data)).collect();
    let orgs: Vec<Option<i64>> = events.iter().map(|e| e.org_id).collect();
    let correlations: Vec<Option<&str>> =
        events.iter().map(|e| e.correlation_id.as_deref()).collect();
    let attributes: Vec<JsonbOf<'_, BTreeMap<String, String>>> =
        events.iter().map(|e| JsonbOf(&e.attributes)).collect();
    let metas: Vec<JsonbOf<'_, Map<String, Value>>> =
        events.iter().map(|e| JsonbOf(&e.meta)).collect();
    let slot = progress.map(|p| p.slot.as_str());
    let lsn = progress.map(|p| p.commit_lsn.to_string());
    let pos = progress.map(|p| p.tx_pos);
    let sql = format!(
            "WITH counter AS (
                 UPDATE pgtide.seq_counter SET last_seq = last_seq + $1 RETURNING last_seq - $1 AS base
             ), position AS (
                 INSERT INTO pgtide.cdc_progress (slot, commit_lsn, tx_pos, updated_at)
                 SELECT $2, $3::text::pg_lsn, $4, now() WHERE $2::text IS NOT NULL
                 ON CONFLICT (slot) DO UPDATE
                     SET commit_lsn = excluded.commit_lsn, tx_pos = excluded.tx_pos, updated_at = now()
             )
             INSERT INTO pgtide.events ({COLUMNS})
             SELECT counter.base + e.n, e.id, e.topic, e.type, e.ts, e.source, e.data, e.org_id,
                    e.correlation_id, e.attributes, e.meta
               FROM counter,
                    unnest($5::uuid[], $6::text[], $7::text[], $8::timestamptz[], $9::text[],
                           $10::jsonb[], $11::int8[], $12::text[], $13::jsonb[], $14::jsonb[])
                        WITH ORDINALITY
                        AS e(id, topic, type, ts, source, data, org_id, correlation_id, attributes, meta, n)
             RETURNING {COLUMNS}"
    );
    // Prepared once per connection: planning this statement costs more
    // than executing it. Then bind and execute are one round trip.
    let statement = client
        .prepare_typed_cached(
            &sql,
            &[
                Type::INT8,
                Type::TEXT,
                Type::TEXT,
                Type::INT4,
                Type::UUID_ARRAY,
                Type::TEXT_ARRAY,
                Type::TEXT_ARRAY,
                Type::TIMESTAMPTZ_ARRAY,
                Type::TEXT_ARRAY,
                Type::JSONB_ARRAY,
                Type::INT8_ARRAY,
                Type::TEXT_ARRAY,
                Type::JSONB_ARRAY,
                Type::JSONB_ARRAY,
            ],
        )
        .await?;
    let rows = client
        .query(
            &statement,
            &[
                &n,
                &slot,
                &lsn,
                &pos,
                &ids,
                &topics,
                &types,
                &ts,
                &sources,
                &data,
                &orgs,
                &correlations,
                &attributes,
                &metas,
            ],
        )
        .await?;
    let first_seq = rows
        .iter()
        .map(|r| r.get::<_, i64>(0))
        .min()
        .ok_or_else(|| StoreError::Corrupt("no events were stored".into()))?;
    Ok(Written {
        batch: StoredBatch {
            first_seq,
            last_seq: first_seq + n - 1,
        },
        rows,
    })
}

async fn copy_events(
    tx: &tokio_postgres::Transaction<'_>,
    events: &[NewEvent],
    first_seq: i64,
) -> Result<()> {
    let sink = tx
        .copy_in(&format!("COPY pgtide.events ({COLUMNS}) FROM STDIN BINARY"))
        .await?;
    let writer = BinaryCopyInWriter::new(
        sink,
        &[
            Type::INT8,
            Type::UUID,
            Type::TEXT,
            Type::TEXT,
            Type::TIMESTAMPTZ,
            Type::TEXT,
            Type::JSONB,
            Type::INT8,
            Type::TEXT,
            Type::JSONB,
            Type::JSONB,
        ],
    );
    pin_mut!(writer);
    for (i, e) in events.iter().enumerate() {
        let seq = first_seq + i as i64;
        let id = uuid::Uuid::from(e.id);
        let attributes = JsonbOf(&e.attributes);
        let meta = JsonbOf(&e.meta);
        let data = JsonbOf(&e.data);
        writer
            .as_mut()
            .write(&[
                &seq,
                &id,
                &e.topic,
                &e.event_type,
                &e.ts,
                &e.source.as_str(),
                &data,
                &e.org_id,
                &e.correlation_id,
                &attributes,
                &meta,
            ])
            .await?;
    }
    writer.finish().await?;
    Ok(())
}

/// Serializes any serde value straight into the jsonb wire format (version byte
/// 1, then the text), without an intermediate `Value`.
#[derive(Debug)]
struct JsonbOf<'a, T: serde::Serialize + std::fmt::Debug>(&'a T);

impl<T: serde::Serialize + std::fmt::Debug> ToSql for JsonbOf<'_, T> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use bytes::BufMut;
        out.put_u8(1);
        serde_json::to_writer(out.writer(), self.0)?;
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    to_sql_checked!();
}

/// One caller's events waiting for the publish writer.
pub(crate) struct PublishRequest {
    events: Vec<NewEvent>,
    reply: tokio::sync::oneshot::Sender<Result<Vec<Event>>>,
}

/// Publishes waiting together are written in one statement, up to this many events.
const PUBLISH_GROUP: usize = SMALL_BATCH;

/// The publish writer: takes whatever publishes are waiting and writes them
/// in one statement (one round trip, one commit), so concurrent publishers
/// share a commit instead of queueing one by one on the `seq` row lock.
pub(crate) async fn run_publish_writer(
    store: Store,
    mut requests: tokio::sync::mpsc::Receiver<PublishRequest>,
) {
    while let Some(first) = requests.recv().await {
        let mut group = vec![first];
        let mut n = group[0].events.len();
        while n < PUBLISH_GROUP {
            match requests.try_recv() {
                Ok(r) => {
                    n += r.events.len();
                    group.push(r);
                }
                Err(_) => break,
            }
        }
        let all: Vec<NewEvent> = group
            .iter()
            .flat_map(|r| r.events.iter().cloned())
            .collect();
        match store.write_published(&all).await {
            Ok(mut first) => {
                for r in group {
                    let n = r.events.len() as i64;
                    let _ = r.reply.send(Ok(stamped(r.events, first)));
                    first += n;
                }
            }
            // One bad event (a duplicate id, say) must not fail the others:
            // write each request alone.
            Err(_) if group.len() > 1 => {
                for r in group {
                    let result = store
                        .write_published(&r.events)
                        .await
                        .map(|first| stamped(r.events, first));
                    let _ = r.reply.send(result);
                }
            }
            // Alone, the request gets the error itself: a value PostgreSQL
            // cannot store is the client's mistake, not an outage.
            Err(e) => {
                if let Some(r) = group.into_iter().next() {
                    let _ = r.reply.send(Err(e));
                }
            }
        }
    }
}

/// A value PostgreSQL refused to store (a NUL character, a number `numeric`
/// cannot hold) as the caller's mistake. Publishers check for these first
/// (`pgtide_core::storable`); this is the backstop.
fn unstorable(e: StoreError) -> StoreError {
    let refused = match &e {
        StoreError::Query(q) => q.as_db_error().and_then(|db| {
            matches!(db.code().code(), "22P05" | "22021" | "22003" | "22P02")
                .then(|| format!("PostgreSQL cannot store this event: {}", db.message()))
        }),
        _ => None,
    };
    refused.map_or(e, StoreError::Invalid)
}

/// The stored form of events given consecutive seqs from `first`.
fn stamped(events: Vec<NewEvent>, first: i64) -> Vec<Event> {
    events
        .into_iter()
        .enumerate()
        .map(|(i, e)| e.with_seq(first + i as i64))
        .collect()
}

impl Store {
    /// Stores published events (API, sockets, retries) and returns them with
    /// their seqs. Small publishes go through the shared publish writer.
    pub async fn publish(&self, events: Vec<NewEvent>) -> Result<Vec<Event>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        if events.len() > PUBLISH_GROUP {
            let first = self.write_published(&events).await?;
            return Ok(stamped(events, first));
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.publisher()
            .send(PublishRequest { events, reply })
            .await
            .map_err(|_| StoreError::Unavailable("the publish writer stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the publish writer stopped".into()))?
    }

    /// Writes published events in one transaction (one statement when few,
    /// COPY when many) and wakes live readers; returns the first seq.
    async fn write_published(&self, events: &[NewEvent]) -> Result<i64> {
        let mut client = self.pool.get().await?;
        let written = insert_batch(&mut client, events, None)
            .await
            .map_err(unstorable)?
            .ok_or_else(|| StoreError::Corrupt("no events to publish".into()))?;
        Ok(self.committed(written).first_seq)
    }

    /// After a commit: keeps the stored rows for the live tailer (when one
    /// follows), then wakes live readers.
    fn committed(&self, written: Written) -> StoredBatch {
        if !written.rows.is_empty() && self.live.is_following() {
            let mut events: Vec<Event> = written
                .rows
                .iter()
                .filter_map(|row| event_from_row(row).ok())
                .collect();
            events.sort_unstable_by_key(|e| e.seq);
            if events.len() == written.rows.len() {
                self.live.keep(events);
            }
        }
        self.note_committed(written.batch.last_seq);
        written.batch
    }

    /// Writes a CDC batch on the pipeline's own connection and wakes live readers.
    /// The relations' column sets and the progress are saved in the same
    /// transaction as the events.
    pub async fn insert_cdc_batch(
        &self,
        client: &mut StoreClient,
        events: &[NewEvent],
        cdc: CdcWrite<'_>,
    ) -> Result<Option<StoredBatch>> {
        let written = insert_batch(client, events, Some(cdc)).await?;
        Ok(written.map(|w| self.committed(w)))
    }

    /// Events matching `query`, ascending by `seq`.
    pub async fn query(&self, query: &EventQuery) -> Result<Vec<Event>> {
        let client = self.pool.get().await?;
        let topic_regex = query.topic_regex();
        let types: Option<Vec<&str>> = if query.event_types.is_empty() {
            None
        } else {
            Some(query.event_types.iter().map(String::as_str).collect())
        };
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM pgtide.events
                 WHERE seq > $1
                   AND ($2::text[] IS NULL OR type = ANY($2))
                   AND ($3::text IS NULL OR topic ~ $3)
                   AND ($4::timestamptz IS NULL OR ts >= $4)
                   AND ($5::timestamptz IS NULL OR ts < $5)
                   AND ($7 OR org_id IS NULL OR org_id = $8)
                 ORDER BY seq
                 LIMIT $6"
            ))
            .await?;
        let rows = client
            .query(
                &stmt,
                &[
                    &query.after_seq.unwrap_or(0),
                    &types,
                    &topic_regex,
                    &query.start_time,
                    &query.end_time,
                    &query.limit,
                    &query.org_scope.is_none(),
                    &query.org_scope.flatten(),
                ],
            )
            .await?;
        rows.iter().map(event_from_row).collect()
    }

    /// The `seq` and topic of the event with this id, for replays that start
    /// from an id; `None` as well when the event is outside `org_scope` (as
    /// in [`EventQuery::org_scope`]), so another org's ids are not revealed.
    pub async fn seq_of(
        &self,
        id: ulid::Ulid,
        org_scope: Option<Option<i64>>,
    ) -> Result<Option<(i64, String)>> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT seq, topic FROM pgtide.events
                 WHERE id = $1 AND ($2 OR org_id IS NULL OR org_id = $3)",
                &[
                    &uuid::Uuid::from(id),
                    &org_scope.is_none(),
                    &org_scope.flatten(),
                ],
            )
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Counts for `GET /v1/events/stats`, within a tenancy scope.
    pub async fn stats(&self, org_scope: Option<Option<i64>>) -> Result<Value> {
        let client = self.pool.get().await?;
        let all = org_scope.is_none();
        let org = org_scope.flatten();
        let totals = client
            .query_one(
                "SELECT count(*), min(ts), max(ts), coalesce(max(seq), 0) FROM pgtide.events
                 WHERE ($1 OR org_id IS NULL OR org_id = $2)",
                &[&all, &org],
            )
            .await?;
        let by = |column: &str| {
            format!(
                "SELECT {column}, count(*) FROM pgtide.events WHERE ($1 OR org_id IS NULL OR org_id = $2)
                 GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 100"
            )
        };
        let mut by_type = Map::new();
        for row in client.query(&by("type"), &[&all, &org]).await? {
            by_type.insert(row.get(0), Value::from(row.get::<_, i64>(1)));
        }
        let mut by_source = Map::new();
        for row in client.query(&by("source"), &[&all, &org]).await? {
            by_source.insert(row.get(0), Value::from(row.get::<_, i64>(1)));
        }
        let dead_letters: i64 = client
            .query_one("SELECT count(*) FROM pgtide.dead_letters", &[])
            .await?
            .get(0);
        let ts = |i: usize| totals.get::<_, Option<OffsetDateTime>>(i).map(format_ts);
        Ok(serde_json::json!({
            "total_events": totals.get::<_, i64>(0),
            "last_seq": totals.get::<_, i64>(3),
            "oldest_event_ts": ts(1),
            "newest_event_ts": ts(2),
            "events_by_type": by_type,
            "events_by_source": by_source,
            "dead_letters": if all { Value::from(dead_letters) } else { Value::Null },
        }))
    }

    /// The newest stored `seq` (0 when empty).
    pub async fn last_seq(&self) -> Result<i64> {
        let client = self.pool.get().await?;
        let row = client
            .query_one("SELECT last_seq FROM pgtide.seq_counter", &[])
            .await?;
        Ok(row.get(0))
    }

    /// Deletes events older than `max_age` in bounded batches; returns how many.
    pub async fn apply_retention(&self, max_age: std::time::Duration) -> Result<u64> {
        let client = self.pool.get().await?;
        let cutoff = OffsetDateTime::now_utc() - max_age;
        let mut total = 0;
        loop {
            let n = client
                .execute(
                    "DELETE FROM pgtide.events WHERE seq IN (
                         SELECT seq FROM pgtide.events WHERE ts < $1 ORDER BY seq LIMIT 10000)",
                    &[&cutoff],
                )
                .await?;
            total += n;
            if n < 10_000 {
                return Ok(total);
            }
        }
    }
}

/// Filters for reading the store; every field narrows.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub topics: Vec<Pattern>,
    pub event_types: Vec<String>,
    pub start_time: Option<OffsetDateTime>,
    pub end_time: Option<OffsetDateTime>,
    pub after_seq: Option<i64>,
    pub limit: i64,
    /// Tenancy: `None` sees every org (admins); `Some(org)` sees that org's
    /// events and events with no org.
    pub org_scope: Option<Option<i64>>,
}

impl EventQuery {
    fn topic_regex(&self) -> Option<String> {
        if self.topics.is_empty() || self.topics.iter().any(Pattern::matches_all) {
            return None;
        }
        Some(
            self.topics
                .iter()
                .map(|p| format!("({})", p.to_sql_regex()))
                .collect::<Vec<_>>()
                .join("|"),
        )
    }
}

pub(crate) fn event_from_row(row: &Row) -> Result<Event> {
    let id: uuid::Uuid = row.get("id");
    let source: String = row.get("source");
    let source: EventSource =
        serde_json::from_value(Value::String(source.clone())).map_err(|_| {
            StoreError::Corrupt(format!("unknown event source {source:?} in the store"))
        })?;
    let attributes: Value = row.get("attributes");
    let attributes: BTreeMap<String, String> =
        serde_json::from_value(attributes).unwrap_or_default();
    let meta: Value = row.get("meta");
    let meta = match meta {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let ts: OffsetDateTime = row.get("ts");
    Ok(Event {
        id: ulid::Ulid::from(id).to_string(),
        seq: row.get("seq"),
        topic: row.get("topic"),
        event_type: row.get("type"),
        ts: format_ts(ts),
        source,
        data: row.get("data"),
        org_id: row.get("org_id"),
        correlation_id: row.get("correlation_id"),
        attributes,
        meta,
    })
}
