//! Webhooks in the store: endpoints, the durable delivery queue, and the
//! record of every attempt.
//!
//! Each endpoint has a fan-out cursor on `pgtide.events.seq`. [`Store::fan_out`]
//! reads the events after it, inserts a delivery row for each one the endpoint
//! matches, and advances the cursor in the same transaction; since events
//! commit in `seq` order, nothing matching is ever skipped. Workers on any
//! node claim due rows with `FOR UPDATE SKIP LOCKED` and hold them under a
//! lease (`claim`, `locked_until`) while they send; a worker that dies leaves
//! the lease to expire, and the row is claimed again. Delivered rows are
//! deleted; rows that ran out of retries stay as `dead`, pointed at by their
//! dead letter, so a retry can put them back in the queue. A rate-limited
//! endpoint's claim takes its tokens from the shared bucket
//! ([`crate::webhook_rate`]) in the claim's own transaction.

use std::collections::BTreeMap;
use std::time::Duration;

use pgtide_core::{Event, Pattern};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use tokio_postgres::Row;

use crate::events::{COLUMNS, event_from_row};
use crate::{Result, Store, StoreError, webhook_rate};

/// How deliveries are signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SignatureScheme {
    /// `X-Pgtide-Signature: t=…,v1=…` (HMAC-SHA256 over `"<t>.<body>"`).
    #[serde(rename = "pgtide")]
    Pgtide,
    /// The Standard Webhooks headers (`webhook-id`, `webhook-timestamp`,
    /// `webhook-signature`) with a `whsec_` secret.
    #[serde(rename = "standard-webhooks")]
    StandardWebhooks,
}

impl SignatureScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureScheme::Pgtide => "pgtide",
            SignatureScheme::StandardWebhooks => "standard-webhooks",
        }
    }

    pub fn parse(text: &str) -> Option<SignatureScheme> {
        match text {
            "pgtide" => Some(SignatureScheme::Pgtide),
            "standard-webhooks" => Some(SignatureScheme::StandardWebhooks),
            _ => None,
        }
    }
}

/// At most `requests_per_period` requests per `period_seconds`, with up to
/// `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub requests_per_period: u32,
    pub period_seconds: u32,
    #[serde(default)]
    pub burst: Option<u32>,
}

/// Post events as a JSON array once `max_events` are pending or the oldest
/// has waited `max_age_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    pub max_events: u32,
    pub max_age_ms: u64,
}

/// Everything an endpoint is configured with (SPEC §9).
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookSpec {
    pub url: String,
    pub secret: String,
    /// `None`: every event type.
    pub event_types: Option<Vec<String>>,
    /// Patterns; `None`: every topic.
    pub topics: Option<Vec<Pattern>>,
    pub headers: BTreeMap<String, String>,
    pub max_retries: i32,
    pub timeout_seconds: i32,
    pub rate_limit: Option<RateLimit>,
    pub signature_scheme: SignatureScheme,
    pub ordered: bool,
    pub batch: Option<BatchConfig>,
}

/// A stored endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    pub id: String,
    pub org_id: Option<i64>,
    /// Made by an admin: receives every org's events.
    pub all_orgs: bool,
    pub spec: WebhookSpec,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

impl Webhook {
    /// The endpoint as the API shows it; the secret only when asked (the
    /// create response).
    pub fn to_json(&self, with_secret: bool) -> Value {
        let s = &self.spec;
        let mut v = serde_json::json!({
            "id": self.id,
            "org_id": self.org_id,
            "url": s.url,
            "event_types": s.event_types,
            "topics": s.topics.as_ref().map(|t| t.iter().map(Pattern::as_str).collect::<Vec<_>>()),
            "headers": s.headers,
            "max_retries": s.max_retries,
            "timeout_seconds": s.timeout_seconds,
            "rate_limit": s.rate_limit,
            "signature_scheme": s.signature_scheme.as_str(),
            "ordered": s.ordered,
            "batch": s.batch,
            "created_at": pgtide_core::format_ts(self.created_at),
            "updated_at": pgtide_core::format_ts(self.updated_at),
        });
        if with_secret {
            v["secret"] = Value::String(s.secret.clone());
        }
        v
    }

    /// The lease a claim takes: the request's timeout and a margin, so a
    /// live worker always finishes before another may take the row.
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.spec.timeout_seconds.max(1) as u64 + 10)
    }
}

/// Which org's endpoints a caller sees: `None` every org (admins).
pub type OrgScope = Option<Option<i64>>;

const WEBHOOK_COLUMNS: &str = "id, org_id, all_orgs, url, secret, event_types, topics, headers, \
     max_retries, timeout_seconds, rate_limit, signature_scheme, ordered, batch, created_at, updated_at";

fn webhook_from_row(row: &Row) -> Result<Webhook> {
    let scheme: String = row.get("signature_scheme");
    let topics: Option<Vec<String>> = row.get("topics");
    let topics = topics
        .map(|t| {
            t.iter()
                .map(|p| Pattern::parse(p))
                .collect::<std::result::Result<Vec<_>, _>>()
        })
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("stored webhook pattern: {e}")))?;
    let json = |name: &str| -> Option<Value> { row.get::<_, Option<Value>>(name) };
    let headers: BTreeMap<String, String> = json("headers")
        .and_then(|h| serde_json::from_value(h).ok())
        .unwrap_or_default();
    Ok(Webhook {
        id: row.get("id"),
        org_id: row.get("org_id"),
        all_orgs: row.get("all_orgs"),
        spec: WebhookSpec {
            url: row.get("url"),
            secret: row.get("secret"),
            event_types: row.get("event_types"),
            topics,
            headers,
            max_retries: row.get("max_retries"),
            timeout_seconds: row.get("timeout_seconds"),
            rate_limit: json("rate_limit").and_then(|v| serde_json::from_value(v).ok()),
            signature_scheme: SignatureScheme::parse(&scheme).ok_or_else(|| {
                StoreError::Corrupt(format!("unknown signature scheme {scheme:?}"))
            })?,
            ordered: row.get("ordered"),
            batch: json("batch").and_then(|v| serde_json::from_value(v).ok()),
        },
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    })
}

fn topics_column(spec: &WebhookSpec) -> Option<Vec<String>> {
    spec.topics
        .as_ref()
        .map(|t| t.iter().map(|p| p.as_str().to_owned()).collect())
}

fn jsonb<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// One queued (endpoint, event) pair handed to a worker.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    pub id: i64,
    pub attempts: i32,
    pub event_id: String,
    /// `None` when retention removed the event before it could be delivered.
    pub event: Option<Event>,
}

/// What a claim found.
#[derive(Debug)]
pub struct Claim {
    /// The lease token the rows were taken under.
    pub claim: uuid::Uuid,
    /// Claimed rows in `seq` order; for a batched endpoint, one message.
    pub deliveries: Vec<ClaimedDelivery>,
    /// When nothing (more) is due: how long until something may be.
    pub next_due: Option<Duration>,
    /// When due deliveries wait for the endpoint's rate limit: how long until
    /// its next token. Exact, since every node draws from the same bucket.
    pub throttled: Option<Duration>,
}

/// How to claim for one endpoint.
#[derive(Debug, Clone, Copy)]
pub struct ClaimMode {
    /// At most this many rows (for a batched endpoint: one batch).
    pub limit: i64,
    /// Only the oldest pending row, and only when none is in flight.
    pub ordered: bool,
    pub batch: Option<BatchConfig>,
    pub lease: Duration,
    /// Take a token per message (one per row, or one per batch) from the
    /// endpoint's shared bucket, and claim only as many messages as granted.
    pub rate_limited: bool,
}

/// What became of an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptResult {
    Delivered,
    /// Failed; try again after this long.
    Retry(Duration),
    /// Failed for the last time: the deliveries go to the dead letters.
    Dead,
}

/// One attempt to record, for every delivery of the message it carried.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    /// The attempt's `X-Pgtide-Delivery-Id`.
    pub id: String,
    pub webhook_id: String,
    pub claim: uuid::Uuid,
    pub deliveries: Vec<i64>,
    pub event_ids: Vec<String>,
    pub attempt: i32,
    pub status_code: Option<i32>,
    pub latency_ms: i64,
    pub error: Option<String>,
    /// The first 1 KiB of the response body.
    pub response: Option<String>,
    pub result: AttemptResult,
    /// For [`AttemptResult::Dead`]: the dead letters' topic and event, per delivery.
    pub dead: Vec<(Option<String>, Value)>,
}

/// An attempt as `GET /v1/webhooks/{id}/deliveries` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptView {
    pub id: String,
    pub event_id: Option<String>,
    pub event_ids: Vec<String>,
    pub attempt: i32,
    pub status: String,
    pub status_code: Option<i32>,
    pub latency_ms: i64,
    pub error: Option<String>,
    pub response: Option<String>,
    pub created_at: String,
    pub next_attempt_at: Option<String>,
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn duration_from_secs(secs: Option<f64>) -> Option<Duration> {
    secs.map(|s| Duration::from_secs_f64(s.max(0.0)))
}

impl Store {
    /// Stores a new endpoint. Its cursor starts after the newest committed
    /// event: it receives what is committed from now on.
    pub async fn create_webhook(
        &self,
        org_id: Option<i64>,
        all_orgs: bool,
        spec: &WebhookSpec,
    ) -> Result<Webhook> {
        let client = self.pool.get().await?;
        let id = ulid::Ulid::new().to_string();
        let row = client
            .query_one(
                &format!(
                    "INSERT INTO pgtide.webhooks (id, org_id, all_orgs, url, secret, event_types, topics,
                         headers, max_retries, timeout_seconds, rate_limit, signature_scheme, ordered,
                         batch, cursor_seq)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
                         (SELECT last_seq FROM pgtide.seq_counter))
                     RETURNING {WEBHOOK_COLUMNS}"
                ),
                &[
                    &id,
                    &org_id,
                    &all_orgs,
                    &spec.url,
                    &spec.secret,
                    &spec.event_types,
                    &topics_column(spec),
                    &jsonb(&spec.headers),
                    &spec.max_retries,
                    &spec.timeout_seconds,
                    &spec.rate_limit.as_ref().map(jsonb),
                    &spec.signature_scheme.as_str(),
                    &spec.ordered,
                    &spec.batch.as_ref().map(jsonb),
                ],
            )
            .await?;
        webhook_from_row(&row)
    }

    /// Endpoints the scope sees, oldest first.
    pub async fn list_webhooks(&self, scope: OrgScope) -> Result<Vec<Webhook>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {WEBHOOK_COLUMNS} FROM pgtide.webhooks
                     WHERE $1 OR org_id IS NOT DISTINCT FROM $2 ORDER BY created_at, id"
                ),
                &[&scope.is_none(), &scope.flatten()],
            )
            .await?;
        rows.iter().map(webhook_from_row).collect()
    }

    /// One endpoint, if the scope sees it.
    pub async fn webhook(&self, id: &str, scope: OrgScope) -> Result<Webhook> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT {WEBHOOK_COLUMNS} FROM pgtide.webhooks
                     WHERE id = $1 AND ($2 OR org_id IS NOT DISTINCT FROM $3)"
                ),
                &[&id, &scope.is_none(), &scope.flatten()],
            )
            .await?
            .ok_or_else(|| no_webhook(id))?;
        webhook_from_row(&row)
    }

    /// Replaces an endpoint's configuration (the cursor and queue stay). A
    /// changed `rate_limit` needs nothing more: every take reads the stored
    /// limit and caps the bucket at its burst ([`crate::webhook_rate`]).
    pub async fn update_webhook(
        &self,
        id: &str,
        scope: OrgScope,
        spec: &WebhookSpec,
    ) -> Result<Webhook> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &format!(
                    "UPDATE pgtide.webhooks SET url = $4, secret = $5, event_types = $6, topics = $7,
                         headers = $8, max_retries = $9, timeout_seconds = $10, rate_limit = $11,
                         signature_scheme = $12, ordered = $13, batch = $14, updated_at = now()
                     WHERE id = $1 AND ($2 OR org_id IS NOT DISTINCT FROM $3)
                     RETURNING {WEBHOOK_COLUMNS}"
                ),
                &[
                    &id,
                    &scope.is_none(),
                    &scope.flatten(),
                    &spec.url,
                    &spec.secret,
                    &spec.event_types,
                    &topics_column(spec),
                    &jsonb(&spec.headers),
                    &spec.max_retries,
                    &spec.timeout_seconds,
                    &spec.rate_limit.as_ref().map(jsonb),
                    &spec.signature_scheme.as_str(),
                    &spec.ordered,
                    &spec.batch.as_ref().map(jsonb),
                ],
            )
            .await?
            .ok_or_else(|| no_webhook(id))?;
        webhook_from_row(&row)
    }

    /// Deletes an endpoint with its queue and attempts.
    pub async fn delete_webhook(&self, id: &str, scope: OrgScope) -> Result<()> {
        let client = self.pool.get().await?;
        let n = client
            .execute(
                "DELETE FROM pgtide.webhooks WHERE id = $1 AND ($2 OR org_id IS NOT DISTINCT FROM $3)",
                &[&id, &scope.is_none(), &scope.flatten()],
            )
            .await?;
        if n == 0 {
            return Err(no_webhook(id));
        }
        Ok(())
    }

    /// Queues the endpoint's matching events after its cursor, up to `limit`
    /// events considered, and advances the cursor in the same transaction.
    /// Returns how many deliveries were queued and whether more events wait.
    /// A second node doing the same for this endpoint at the same moment
    /// skips it (the endpoint row is locked with SKIP LOCKED).
    pub async fn fan_out(&self, webhook_id: &str, limit: i64) -> Result<(u64, bool)> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        relaxed_commit(&tx).await?;
        let Some(row) = tx
            .query_opt(
                "SELECT cursor_seq, event_types, topics, org_id, all_orgs FROM pgtide.webhooks
                 WHERE id = $1 FOR UPDATE SKIP LOCKED",
                &[&webhook_id],
            )
            .await?
        else {
            return Ok((0, false));
        };
        let cursor: i64 = row.get(0);
        let types: Option<Vec<String>> = row.get(1);
        let topics: Option<Vec<String>> = row.get(2);
        let org: Option<i64> = row.get(3);
        let all_orgs: bool = row.get(4);
        let topic_regex = match topics {
            None => None,
            Some(t) => {
                let patterns = t
                    .iter()
                    .map(|p| Pattern::parse(p))
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| StoreError::Corrupt(format!("stored webhook pattern: {e}")))?;
                if patterns.iter().any(Pattern::matches_all) {
                    None
                } else {
                    Some(
                        patterns
                            .iter()
                            .map(|p| format!("({})", p.to_sql_regex()))
                            .collect::<Vec<_>>()
                            .join("|"),
                    )
                }
            }
        };
        // One statement: the window of events after the cursor, the
        // deliveries for those that match, and the cursor moved past them all.
        let row = tx
            .query_one(
                "WITH w AS (
                     SELECT seq, id, type, topic, org_id FROM pgtide.events
                     WHERE seq > $2 ORDER BY seq LIMIT $3
                 ), ins AS (
                     INSERT INTO pgtide.webhook_deliveries (webhook_id, event_seq, event_id)
                     SELECT $1, seq, id FROM w
                     WHERE ($4::text[] IS NULL OR type = ANY($4))
                       AND ($5::text IS NULL OR topic ~ $5)
                       AND ($6 OR org_id IS NULL OR org_id = $7)
                     ORDER BY seq
                     ON CONFLICT (webhook_id, event_seq) DO NOTHING
                     RETURNING 1
                 ), cur AS (
                     UPDATE pgtide.webhooks SET cursor_seq = (SELECT max(seq) FROM w)
                     WHERE id = $1 AND EXISTS (SELECT 1 FROM w)
                     RETURNING 1
                 )
                 SELECT (SELECT count(*) FROM w), (SELECT count(*) FROM ins),
                        (SELECT count(*) FROM cur)",
                &[
                    &webhook_id,
                    &cursor,
                    &limit,
                    &types,
                    &topic_regex,
                    &all_orgs,
                    &org,
                ],
            )
            .await?;
        let considered: i64 = row.get(0);
        let inserted: i64 = row.get(1);
        if considered == 0 {
            return Ok((0, false));
        }
        tx.commit().await?;
        Ok((inserted as u64, considered >= limit))
    }

    /// Claims due deliveries of one endpoint under a fresh lease.
    pub async fn claim_deliveries(&self, webhook_id: &str, mode: ClaimMode) -> Result<Claim> {
        let claim = uuid::Uuid::from(ulid::Ulid::new());
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        relaxed_commit(&tx).await?;
        let nothing = |next_due| Claim {
            claim,
            deliveries: Vec::new(),
            next_due,
            throttled: None,
        };
        if mode.ordered {
            // One claimer at a time decides what the head is.
            if tx
                .query_opt(
                    "SELECT 1 FROM pgtide.webhooks WHERE id = $1 FOR UPDATE SKIP LOCKED",
                    &[&webhook_id],
                )
                .await?
                .is_none()
            {
                return Ok(nothing(Some(Duration::from_millis(50))));
            }
            let head = tx
                .query_opt(
                    "SELECT extract(epoch FROM next_attempt_at - now())::float8,
                            extract(epoch FROM locked_until - now())::float8
                     FROM pgtide.webhook_deliveries
                     WHERE webhook_id = $1 AND state = 'pending' ORDER BY event_seq LIMIT 1",
                    &[&webhook_id],
                )
                .await?;
            let Some(head) = head else {
                return Ok(nothing(None));
            };
            let due_in: f64 = head.get(0);
            let locked_for: Option<f64> = head.get(1);
            if let Some(l) = locked_for.filter(|l| *l > 0.0) {
                return Ok(nothing(duration_from_secs(Some(l))));
            }
            if due_in > 0.0 {
                return Ok(nothing(duration_from_secs(Some(due_in))));
            }
        }
        let limit = match (mode.ordered, mode.batch) {
            (_, Some(b)) => i64::from(b.max_events.max(1)),
            (true, None) => 1,
            (false, None) => mode.limit.max(1),
        };
        let rows = tx
            .query(
                "SELECT id, attempts, extract(epoch FROM now() - created_at)::float8
                 FROM pgtide.webhook_deliveries
                 WHERE webhook_id = $1 AND state = 'pending' AND next_attempt_at <= now()
                   AND (locked_until IS NULL OR locked_until < now())
                 ORDER BY event_seq LIMIT $2 FOR UPDATE SKIP LOCKED",
                &[&webhook_id, &limit],
            )
            .await?;
        if rows.is_empty() {
            let next = tx
                .query_one(
                    "SELECT extract(epoch FROM min(greatest(next_attempt_at,
                                 coalesce(locked_until, next_attempt_at))) - now())::float8
                     FROM pgtide.webhook_deliveries WHERE webhook_id = $1 AND state = 'pending'",
                    &[&webhook_id],
                )
                .await?;
            return Ok(nothing(duration_from_secs(next.get(0))));
        }
        if let Some(b) = mode.batch {
            let oldest_age = rows.iter().map(|r| r.get::<_, f64>(2)).fold(0.0, f64::max);
            let retried = rows.iter().any(|r| r.get::<_, i32>(1) > 0);
            let max_age = b.max_age_ms as f64 / 1000.0;
            if (rows.len() as i64) < limit && !retried && oldest_age < max_age {
                return Ok(nothing(duration_from_secs(Some(max_age - oldest_age))));
            }
        }
        let mut ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        if mode.rate_limited {
            // Taken here, with the rows locked, so that only claimed messages
            // spend tokens and nothing has to be given back. The bucket row
            // stays locked until this transaction ends: claims of the same
            // endpoint on other nodes queue behind it for a moment.
            let messages = if mode.batch.is_some() { 1 } else { ids.len() };
            let wanted = u32::try_from(messages).unwrap_or(u32::MAX);
            let taken = webhook_rate::take(&tx, webhook_id, wanted).await?;
            if taken.granted == 0 {
                return Ok(Claim {
                    throttled: Some(taken.wait.unwrap_or(Duration::ZERO)),
                    ..nothing(None)
                });
            }
            if mode.batch.is_none() {
                ids.truncate(taken.granted as usize);
            }
        }
        let claimed = tx
            .query(
                &format!(
                    "WITH c AS (
                         UPDATE pgtide.webhook_deliveries
                         SET claim = $2, locked_until = now() + make_interval(secs => $3)
                         WHERE id = ANY($1)
                         RETURNING id, attempts, event_seq, event_id)
                     SELECT c.id AS delivery_id, c.attempts, c.event_seq, c.event_id AS delivery_event_id,
                            e.{} FROM c LEFT JOIN pgtide.events e ON e.seq = c.event_seq
                     ORDER BY c.event_seq",
                    COLUMNS.replace(", ", ", e.")
                ),
                &[&ids, &claim, &seconds(mode.lease)],
            )
            .await?;
        tx.commit().await?;
        let mut deliveries = Vec::with_capacity(claimed.len());
        for row in &claimed {
            let event_id: uuid::Uuid = row.get("delivery_event_id");
            let present: Option<i64> = row.get("seq");
            deliveries.push(ClaimedDelivery {
                id: row.get("delivery_id"),
                attempts: row.get("attempts"),
                event_id: ulid::Ulid::from(event_id).to_string(),
                event: match present {
                    Some(_) => Some(event_from_row(row)?),
                    None => None,
                },
            });
        }
        Ok(Claim {
            claim,
            deliveries,
            next_due: None,
            throttled: None,
        })
    }

    /// Records attempts, in one transaction, and moves their deliveries on:
    /// deleted when delivered, rescheduled, or dead-lettered. Rows whose
    /// lease was taken over by another worker are left to it.
    pub async fn record_attempts(&self, records: &[AttemptRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        relaxed_commit(&tx).await?;
        let retry_in = |a: &AttemptRecord| match &a.result {
            AttemptResult::Retry(d) => Some(seconds(*d)),
            _ => None,
        };
        let status = |a: &AttemptRecord| match &a.result {
            AttemptResult::Delivered => "delivered",
            AttemptResult::Retry(_) => "failed",
            AttemptResult::Dead => "dead",
        };
        let col = |f: &dyn Fn(&AttemptRecord) -> Option<String>| -> Vec<Option<String>> {
            records.iter().map(f).collect()
        };
        // ULIDs hold no comma, so a batch's event ids travel as one string each.
        tx.execute(
            "INSERT INTO pgtide.webhook_attempts (id, webhook_id, event_ids, attempt, status,
                 status_code, latency_ms, error, response, next_attempt_at)
             SELECT x.id, x.webhook_id, string_to_array(x.event_ids, ','), x.attempt, x.status,
                    x.status_code, x.latency_ms, x.error, x.response,
                    now() + make_interval(secs => x.retry_in)
             FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[], $5::text[], $6::int4[],
                         $7::int8[], $8::text[], $9::text[], $10::float8[])
                  AS x(id, webhook_id, event_ids, attempt, status, status_code, latency_ms,
                       error, response, retry_in)",
            &[
                &col(&|a| Some(a.id.clone())),
                &col(&|a| Some(a.webhook_id.clone())),
                &col(&|a| Some(a.event_ids.join(","))),
                &records.iter().map(|a| a.attempt).collect::<Vec<_>>(),
                &col(&|a| Some(status(a).to_owned())),
                &records.iter().map(|a| a.status_code).collect::<Vec<_>>(),
                &records.iter().map(|a| a.latency_ms).collect::<Vec<_>>(),
                &col(&|a| a.error.clone()),
                &col(&|a| a.response.clone()),
                &records.iter().map(retry_in).collect::<Vec<_>>(),
            ],
        )
        .await?;
        let (mut ids, mut claims) = (Vec::new(), Vec::new());
        for a in records
            .iter()
            .filter(|a| a.result == AttemptResult::Delivered)
        {
            for d in &a.deliveries {
                ids.push(*d);
                claims.push(a.claim);
            }
        }
        if !ids.is_empty() {
            tx.execute(
                "DELETE FROM pgtide.webhook_deliveries d
                 USING unnest($1::int8[], $2::uuid[]) AS x(id, claim)
                 WHERE d.id = x.id AND d.claim = x.claim",
                &[&ids, &claims],
            )
            .await?;
        }
        for a in records {
            match &a.result {
                AttemptResult::Delivered => {}
                AttemptResult::Retry(_) => {
                    tx.execute(
                        "UPDATE pgtide.webhook_deliveries
                         SET attempts = $3, next_attempt_at = now() + make_interval(secs => $4),
                             claim = NULL, locked_until = NULL
                         WHERE id = ANY($1) AND claim = $2",
                        &[
                            &a.deliveries,
                            &a.claim,
                            &a.attempt,
                            &retry_in(a).unwrap_or(0.0),
                        ],
                    )
                    .await?;
                }
                AttemptResult::Dead => dead_letter(&tx, a).await?,
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records a test delivery (`POST /v1/webhooks/{id}/test`), which is not queued.
    pub async fn record_test_attempt(&self, a: &AttemptRecord) -> Result<()> {
        let client = self.pool.get().await?;
        client
            .execute(
                "INSERT INTO pgtide.webhook_attempts (id, webhook_id, event_ids, attempt, status,
                     status_code, latency_ms, error, response)
                 VALUES ($1, $2, $3, 1, 'test', $4, $5, $6, $7)",
                &[
                    &a.id,
                    &a.webhook_id,
                    &a.event_ids,
                    &a.status_code,
                    &a.latency_ms,
                    &a.error,
                    &a.response,
                ],
            )
            .await?;
        Ok(())
    }

    /// Attempts of one endpoint, newest first, before `before` (an attempt id).
    pub async fn webhook_attempts(
        &self,
        webhook_id: &str,
        before: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AttemptView>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT id, event_ids, attempt, status, status_code, latency_ms, error, response,
                        created_at, next_attempt_at
                 FROM pgtide.webhook_attempts
                 WHERE webhook_id = $1 AND ($2::text IS NULL OR id < $2)
                 ORDER BY id DESC LIMIT $3",
                &[&webhook_id, &before, &limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let event_ids: Vec<String> = r.get("event_ids");
                AttemptView {
                    id: r.get("id"),
                    event_id: event_ids.first().cloned(),
                    event_ids,
                    attempt: r.get("attempt"),
                    status: r.get("status"),
                    status_code: r.get("status_code"),
                    latency_ms: r.get("latency_ms"),
                    error: r.get("error"),
                    response: r.get("response"),
                    created_at: pgtide_core::format_ts(r.get("created_at")),
                    next_attempt_at: r
                        .get::<_, Option<OffsetDateTime>>("next_attempt_at")
                        .map(pgtide_core::format_ts),
                }
            })
            .collect())
    }

    /// Deletes attempt records older than `max_age`, in bounded batches, so
    /// the history follows the events' retention. Returns how many.
    pub async fn prune_webhook_attempts(&self, max_age: Duration) -> Result<u64> {
        let client = self.pool.get().await?;
        let cutoff = OffsetDateTime::now_utc() - max_age;
        let mut total = 0;
        loop {
            let n = client
                .execute(
                    "DELETE FROM pgtide.webhook_attempts WHERE id IN (
                         SELECT id FROM pgtide.webhook_attempts WHERE created_at < $1 LIMIT 10000)",
                    &[&cutoff],
                )
                .await?;
            total += n;
            if n < 10_000 {
                return Ok(total);
            }
        }
    }

    /// Puts a webhook dead letter's delivery back in its queue, due now with
    /// fresh retries, and removes the dead letter. Returns the endpoint's id.
    pub async fn requeue_webhook_dead_letter(&self, letter_id: i64) -> Result<String> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                "UPDATE pgtide.webhook_deliveries d
                 SET state = 'pending', attempts = 0, next_attempt_at = now(),
                     claim = NULL, locked_until = NULL
                 FROM pgtide.dead_letters l
                 WHERE l.id = $1 AND l.kind = 'webhook' AND d.id = l.webhook_delivery_id
                   AND d.state = 'dead'
                 RETURNING d.webhook_id",
                &[&letter_id],
            )
            .await?
            .ok_or_else(|| {
                StoreError::NotFound(format!(
                    "dead letter {letter_id} has no delivery to retry (its webhook was deleted)"
                ))
            })?;
        tx.execute(
            "DELETE FROM pgtide.dead_letters WHERE id = $1",
            &[&letter_id],
        )
        .await?;
        tx.commit().await?;
        Ok(row.get(0))
    }
}

/// Lets the queue's own transactions (fan-out, claims, attempt records)
/// commit without waiting for the WAL flush. A PostgreSQL crash can then
/// lose only the last of them, and each loss only repeats work: a fan-out
/// is redone from the (durable) events, a lost claim frees its rows, a lost
/// record leaves its delivery leased, to be sent again. At least once holds;
/// only a retry asked for through the API commits synchronously.
async fn relaxed_commit(tx: &tokio_postgres::Transaction<'_>) -> Result<()> {
    tx.batch_execute("SET LOCAL synchronous_commit = off")
        .await?;
    Ok(())
}

/// Marks an attempt's deliveries dead and stores a dead letter for each.
async fn dead_letter(tx: &tokio_postgres::Transaction<'_>, a: &AttemptRecord) -> Result<()> {
    let moved = tx
        .query(
            "UPDATE pgtide.webhook_deliveries
             SET state = 'dead', attempts = $3, claim = NULL, locked_until = NULL
             WHERE id = ANY($1) AND claim = $2 RETURNING id",
            &[&a.deliveries, &a.claim, &a.attempt],
        )
        .await?;
    let moved: Vec<i64> = moved.iter().map(|r| r.get(0)).collect();
    let error = format!(
        "webhook {}: gave up after {} attempt(s): {}",
        a.webhook_id,
        a.attempt,
        a.error.as_deref().unwrap_or("failed")
    );
    let stmt = tx
        .prepare(
            "INSERT INTO pgtide.dead_letters (kind, topic, event, error, webhook_delivery_id)
             VALUES ('webhook', $1, $2, $3, $4)",
        )
        .await?;
    for (delivery, (topic, event)) in a.deliveries.iter().zip(&a.dead) {
        if moved.contains(delivery) {
            tx.execute(&stmt, &[topic, event, &error, delivery]).await?;
        }
    }
    Ok(())
}

fn no_webhook(id: &str) -> StoreError {
    StoreError::NotFound(format!("no webhook {id:?}"))
}
