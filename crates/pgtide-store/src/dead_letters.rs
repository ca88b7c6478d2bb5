//! Dead letters: changes and events that could not become stored events (a
//! mapping failed on a row, a payload broke its topic's schema) or could not be
//! delivered, kept with the reason so nothing is silently lost.

use serde::Serialize;
use serde_json::Value;
use tokio_postgres::GenericClient;

use crate::{Result, Store, StoreError};

/// Why something is a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeadLetterKind {
    Validation,
    Mapping,
    Webhook,
}

impl DeadLetterKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterKind::Validation => "validation",
            DeadLetterKind::Mapping => "mapping",
            DeadLetterKind::Webhook => "webhook",
        }
    }

    pub fn parse(text: &str) -> Option<DeadLetterKind> {
        match text {
            "validation" => Some(DeadLetterKind::Validation),
            "mapping" => Some(DeadLetterKind::Mapping),
            "webhook" => Some(DeadLetterKind::Webhook),
            _ => None,
        }
    }
}

/// A dead letter about to be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub kind: DeadLetterKind,
    pub topic: Option<String>,
    /// The event (validation) or the change and mapping (mapping) that failed.
    pub event: Value,
    pub error: String,
}

/// A stored dead letter, as `GET /v1/dead-letters` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetterRecord {
    pub id: i64,
    pub kind: DeadLetterKind,
    pub topic: Option<String>,
    pub event: Value,
    pub error: String,
    pub created_at: String,
}

pub(crate) async fn insert(tx: &impl GenericClient, letters: &[DeadLetter]) -> Result<()> {
    if letters.is_empty() {
        return Ok(());
    }
    let stmt = tx
        .prepare(
            "INSERT INTO pgtide.dead_letters (kind, topic, event, error) VALUES ($1, $2, $3, $4)",
        )
        .await?;
    for l in letters {
        tx.execute(&stmt, &[&l.kind.as_str(), &l.topic, &l.event, &l.error])
            .await?;
    }
    Ok(())
}

fn record(row: &tokio_postgres::Row) -> Result<DeadLetterRecord> {
    let kind: String = row.get("kind");
    Ok(DeadLetterRecord {
        id: row.get("id"),
        kind: DeadLetterKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown dead letter kind {kind:?}")))?,
        topic: row.get("topic"),
        event: row.get("event"),
        error: row.get("error"),
        created_at: pgtide_core::format_ts(row.get("created_at")),
    })
}

impl Store {
    /// Dead letters, oldest first, optionally of one kind, after `after_id`.
    /// Dead letters in `id` order. With an `org_scope` (non-admins), only those
    /// whose event carries that org: a letter without an org (a failed
    /// mapping of some table's row) may hold any tenant's data, so only
    /// admins see it.
    pub async fn list_dead_letters(
        &self,
        kind: Option<DeadLetterKind>,
        after_id: i64,
        limit: i64,
        org_scope: Option<Option<i64>>,
    ) -> Result<Vec<DeadLetterRecord>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT id, kind, topic, event, error, created_at FROM pgtide.dead_letters
                 WHERE ($1::text IS NULL OR kind = $1) AND id > $2
                   AND ($4 OR (event ->> 'org_id')::bigint = $5)
                 ORDER BY id LIMIT $3",
                &[
                    &kind.map(DeadLetterKind::as_str),
                    &after_id,
                    &limit,
                    &org_scope.is_none(),
                    &org_scope.flatten(),
                ],
            )
            .await?;
        rows.iter().map(record).collect()
    }

    /// One dead letter, if the caller's `org_scope` may see it (as in
    /// [`Store::list_dead_letters`]); otherwise it does not exist for them.
    pub async fn dead_letter(
        &self,
        id: i64,
        org_scope: Option<Option<i64>>,
    ) -> Result<DeadLetterRecord> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT id, kind, topic, event, error, created_at FROM pgtide.dead_letters
                 WHERE id = $1 AND ($2 OR (event ->> 'org_id')::bigint = $3)",
                &[&id, &org_scope.is_none(), &org_scope.flatten()],
            )
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no dead letter {id}")))?;
        record(&row)
    }

    /// Stores dead letters outside any batch (e.g. from the API).
    pub async fn add_dead_letters(&self, letters: &[DeadLetter]) -> Result<()> {
        let client = self.pool.get().await?;
        insert(&**client, letters).await
    }

    pub async fn delete_dead_letter(&self, id: i64) -> Result<()> {
        let client = self.pool.get().await?;
        client
            .execute("DELETE FROM pgtide.dead_letters WHERE id = $1", &[&id])
            .await?;
        Ok(())
    }
}
