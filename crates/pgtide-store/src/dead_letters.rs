//! Dead letters: changes and events that could not become stored events (a
//! mapping failed on a row, a payload broke its topic's schema) or could not be
//! delivered, kept with the reason so nothing is silently lost.

use pgtide_core::Pattern;
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

/// Which dead letters a caller may see.
#[derive(Debug, Clone, Copy, Default)]
pub struct LetterScope<'a> {
    /// `None` sees every org (admins); `Some(org)` only letters whose event
    /// carries that org. A letter without an org (a failed mapping of some
    /// table's row) may hold any tenant's data, so only admins see it.
    pub org_scope: Option<Option<i64>>,
    /// `None`: any topic. `Some(grants)` (a token's `subscribe` claim): only
    /// letters whose topic one of the grants matches; letters without a
    /// topic are hidden, as nothing says who may read them.
    pub topics: Option<&'a [Pattern]>,
}

impl LetterScope<'_> {
    /// The SQL regex for `topic ~ $n` (`None`: no topic filter), or
    /// `Err(())` when the scope admits no topic at all.
    fn topic_regex(&self) -> std::result::Result<Option<String>, ()> {
        match self.topics {
            None => Ok(None),
            Some([]) => Err(()),
            Some(grants) => Ok(Some(
                grants
                    .iter()
                    .map(|p| format!("({})", p.to_sql_regex()))
                    .collect::<Vec<_>>()
                    .join("|"),
            )),
        }
    }
}

impl Store {
    /// Dead letters in `id` order, optionally of one kind, after `after_id`,
    /// those `scope` may see (filtered in SQL, so a page is a full page).
    pub async fn list_dead_letters(
        &self,
        kind: Option<DeadLetterKind>,
        after_id: i64,
        limit: i64,
        scope: LetterScope<'_>,
    ) -> Result<Vec<DeadLetterRecord>> {
        let Ok(topic_regex) = scope.topic_regex() else {
            return Ok(Vec::new());
        };
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT id, kind, topic, event, error, created_at FROM pgtide.dead_letters
                 WHERE ($1::text IS NULL OR kind = $1) AND id > $2
                   AND ($4 OR (event ->> 'org_id')::bigint = $5)
                   AND ($6::text IS NULL OR topic ~ $6)
                 ORDER BY id LIMIT $3",
                &[
                    &kind.map(DeadLetterKind::as_str),
                    &after_id,
                    &limit,
                    &scope.org_scope.is_none(),
                    &scope.org_scope.flatten(),
                    &topic_regex,
                ],
            )
            .await?;
        rows.iter().map(record).collect()
    }

    /// One dead letter, if `scope` may see it (as in
    /// [`Store::list_dead_letters`]); otherwise it does not exist for them.
    pub async fn dead_letter(&self, id: i64, scope: LetterScope<'_>) -> Result<DeadLetterRecord> {
        let missing = || StoreError::NotFound(format!("no dead letter {id}"));
        let topic_regex = scope.topic_regex().map_err(|()| missing())?;
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT id, kind, topic, event, error, created_at FROM pgtide.dead_letters
                 WHERE id = $1 AND ($2 OR (event ->> 'org_id')::bigint = $3)
                   AND ($4::text IS NULL OR topic ~ $4)",
                &[
                    &id,
                    &scope.org_scope.is_none(),
                    &scope.org_scope.flatten(),
                    &topic_regex,
                ],
            )
            .await?
            .ok_or_else(missing)?;
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
