//! The registry: topics, their versioned JSON Schemas (draft 2020-12 and 7),
//! compatibility checks, and the compiled validators events pass through.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use tokio_postgres::GenericClient;

use crate::{Result, Store, StoreError};

/// A topic as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopicRecord {
    pub name: String,
    pub description: Option<String>,
    pub compatibility: String,
    pub active_schema_version: i32,
    /// True for topics declared in mapping files: the API may not change them.
    pub read_only: bool,
    /// The org that owns the topic: only it, or an admin, may change or
    /// delete it. `None`: only admins may.
    pub org_id: Option<i64>,
    pub source_file: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// One registered schema version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SchemaRecord {
    pub topic: String,
    pub version: i32,
    pub schema: Value,
    pub created_at: String,
}

/// Changes to a topic; `None` leaves a field alone.
#[derive(Debug, Clone, Default)]
pub struct TopicPatch {
    pub description: Option<String>,
    pub compatibility: Option<String>,
    pub active_schema_version: Option<i32>,
}

/// Who is writing: the API may not touch file-owned topics; file loads may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// An API caller.
    Api {
        /// `None` for admins, who may change any topic not declared in a
        /// file; `Some(org)` for others, who may change only topics `org`
        /// owns (never those without an owner org).
        org_scope: Option<Option<i64>>,
        /// Whether the caller may read the topic's events at all (its
        /// token's `subscribe` claim covers the topic); if not, error texts
        /// quote none of them, and a non-admin's compatibility check reads
        /// none of them.
        reads_topic: bool,
    },
    File,
}

impl Owner {
    /// Whether an error text may quote a stored event of `event_org`.
    fn may_quote(self, event_org: Option<i64>) -> bool {
        match self {
            // A file load's errors are shown to any caller of
            // `GET /v1/mappings`: quote only events of no org.
            Owner::File => event_org.is_none(),
            Owner::Api {
                org_scope,
                reads_topic,
            } => {
                reads_topic
                    && match org_scope {
                        None => true,
                        Some(org) => event_org.is_none() || event_org == org,
                    }
            }
        }
    }
}

pub const COMPATIBILITY_MODES: [&str; 4] = ["backward", "none", "forward", "full"];

/// One reason an instance failed its schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ValidationIssue {
    pub message: String,
    /// JSON pointer into the instance (`""` for the root).
    pub pointer: String,
}

/// Compiles a schema (draft detected from `$schema`, default 2020-12), with a
/// message that says what is wrong with it.
pub fn compile(schema: &Value) -> std::result::Result<jsonschema::Validator, String> {
    if !schema.is_object() && !schema.is_boolean() {
        return Err("a JSON Schema must be an object (or a boolean)".into());
    }
    jsonschema::validator_for(schema)
        .map_err(|e| format!("invalid JSON Schema: {e} (at {})", e.instance_path()))
}

/// Every problem `validator` finds in `instance`.
pub fn issues(validator: &jsonschema::Validator, instance: &Value) -> Vec<ValidationIssue> {
    validator
        .iter_errors(instance)
        .map(|e| ValidationIssue {
            message: e.to_string(),
            pointer: e.instance_path().to_string(),
        })
        .collect()
}

/// A topic's active version and its compiled validator.
type ActiveSchema = (i32, Arc<jsonschema::Validator>);

/// Compiled validators of the topics with an active schema, shared by the CDC
/// pipeline and the API. Reloaded after every registry change on this node and
/// periodically (for changes made by other nodes).
#[derive(Clone, Default)]
pub struct SchemaCache {
    inner: Arc<RwLock<HashMap<String, ActiveSchema>>>,
}

impl SchemaCache {
    /// Validates `data` for `topic`; topics without an active schema accept anything.
    pub fn validate(
        &self,
        topic: &str,
        data: &Value,
    ) -> std::result::Result<(), Vec<ValidationIssue>> {
        let validator = match self.inner.read() {
            Ok(map) => map.get(topic).map(|(_, v)| v.clone()),
            Err(poisoned) => poisoned.into_inner().get(topic).map(|(_, v)| v.clone()),
        };
        match validator {
            None => Ok(()),
            Some(v) if v.is_valid(data) => Ok(()),
            Some(v) => Err(issues(&v, data)),
        }
    }

    /// The active version per topic (for tests and `/readyz`).
    pub fn active_versions(&self) -> HashMap<String, i32> {
        match self.inner.read() {
            Ok(map) => map.iter().map(|(k, (v, _))| (k.clone(), *v)).collect(),
            Err(_) => HashMap::new(),
        }
    }

    /// Reloads from the store, reusing compiled validators whose version is unchanged.
    pub async fn reload(&self, client: &impl GenericClient) -> Result<()> {
        let rows = client
            .query(
                "SELECT t.name, t.active_schema_version, s.schema FROM pgtide.topics t
                 JOIN pgtide.schema_versions s ON s.topic = t.name AND s.version = t.active_schema_version
                 WHERE t.active_schema_version > 0",
                &[],
            )
            .await?;
        let current = self.active_versions();
        let mut next = HashMap::new();
        for row in rows {
            let name: String = row.get(0);
            let version: i32 = row.get(1);
            if current.get(&name) == Some(&version)
                && let Ok(map) = self.inner.read()
                && let Some(existing) = map.get(&name)
            {
                next.insert(name, existing.clone());
                continue;
            }
            let schema: Value = row.get(2);
            match compile(&schema) {
                Ok(v) => {
                    next.insert(name, (version, Arc::new(v)));
                }
                Err(e) => {
                    tracing::error!(topic = %name, version, error = %e, "stored schema does not compile; topic left unvalidated")
                }
            }
        }
        match self.inner.write() {
            Ok(mut map) => *map = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
        Ok(())
    }
}

fn ts(t: OffsetDateTime) -> String {
    pgtide_core::format_ts(t)
}

fn topic_from_row(row: &tokio_postgres::Row) -> TopicRecord {
    let owner: String = row.get("owner");
    TopicRecord {
        name: row.get("name"),
        description: row.get("description"),
        compatibility: row.get("compatibility"),
        active_schema_version: row.get("active_schema_version"),
        read_only: owner == "file",
        org_id: row.get("org_id"),
        source_file: row.get("source_file"),
        created_at: ts(row.get("created_at")),
        updated_at: ts(row.get("updated_at")),
    }
}

const TOPIC_COLUMNS: &str = "name, description, compatibility, active_schema_version, owner, org_id, source_file, created_at, updated_at";

fn check_compatibility_mode(mode: &str) -> Result<()> {
    if COMPATIBILITY_MODES.contains(&mode) {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "compatibility {mode:?} is not one of backward, none, forward, full"
        )))
    }
}

impl Store {
    pub async fn list_topics(&self) -> Result<Vec<TopicRecord>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!("SELECT {TOPIC_COLUMNS} FROM pgtide.topics ORDER BY name"),
                &[],
            )
            .await?;
        Ok(rows.iter().map(topic_from_row).collect())
    }

    pub async fn get_topic(&self, name: &str) -> Result<TopicRecord> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &format!("SELECT {TOPIC_COLUMNS} FROM pgtide.topics WHERE name = $1"),
                &[&name],
            )
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no topic {name:?}")))?;
        Ok(topic_from_row(&row))
    }

    /// Creates a topic owned by `org_id` (`None`: no owner org, so only
    /// admins may change it); 409 when it exists. A non-admin `creator`
    /// (`Owner::Api` with an `org_scope`) may not take a topic that already
    /// carries stored events not of its org (another org's, or of no org):
    /// owning it would let it choose the schema those publishers must
    /// follow. That refusal is 409 too and says nothing of whose events.
    pub async fn create_topic(
        &self,
        name: &str,
        description: Option<&str>,
        compatibility: Option<&str>,
        org_id: Option<i64>,
        creator: Owner,
    ) -> Result<TopicRecord> {
        let compatibility = compatibility.unwrap_or("backward");
        check_compatibility_mode(compatibility)?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                &format!(
                    "INSERT INTO pgtide.topics (name, description, compatibility, org_id) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (name) DO NOTHING RETURNING {TOPIC_COLUMNS}"
                ),
                &[&name, &description, &compatibility, &org_id],
            )
            .await?
            .ok_or_else(|| StoreError::Conflict(format!("topic {name:?} already exists")))?;
        if let Owner::Api {
            org_scope: Some(org),
            ..
        } = creator
            && has_foreign_events(&*tx, name, org).await?
        {
            return Err(StoreError::Conflict(format!(
                "topic {name:?} already carries stored events of other orgs (or of none): \
                 only an admin may register it"
            )));
        }
        tx.commit().await?;
        Ok(topic_from_row(&row))
    }

    /// Applies `patch`; the active version must exist (0 turns validation off).
    pub async fn patch_topic(
        &self,
        name: &str,
        patch: &TopicPatch,
        owner: Owner,
    ) -> Result<TopicRecord> {
        if let Some(mode) = &patch.compatibility {
            check_compatibility_mode(mode)?;
        }
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let current = lock_topic(&*tx, name, owner).await?;
        if let Some(version) = patch.active_schema_version
            && version != 0
        {
            let exists = tx
                .query_opt(
                    "SELECT 1 FROM pgtide.schema_versions WHERE topic = $1 AND version = $2",
                    &[&name, &version],
                )
                .await?
                .is_some();
            if !exists {
                return Err(StoreError::Invalid(format!(
                    "topic {name:?} has no schema version {version}"
                )));
            }
        }
        let row = tx
            .query_one(
                &format!(
                    "UPDATE pgtide.topics SET description = coalesce($2, description),
                         compatibility = coalesce($3, compatibility),
                         active_schema_version = coalesce($4, active_schema_version),
                         updated_at = now()
                     WHERE name = $1 RETURNING {TOPIC_COLUMNS}"
                ),
                &[
                    &name,
                    &patch.description,
                    &patch.compatibility,
                    &patch.active_schema_version,
                ],
            )
            .await?;
        tx.commit().await?;
        drop(current);
        self.reload_schemas().await?;
        Ok(topic_from_row(&row))
    }

    pub async fn delete_topic(&self, name: &str, owner: Owner) -> Result<()> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        lock_topic(&*tx, name, owner).await?;
        tx.execute("DELETE FROM pgtide.topics WHERE name = $1", &[&name])
            .await?;
        tx.commit().await?;
        self.reload_schemas().await
    }

    pub async fn list_schemas(&self, topic: &str) -> Result<Vec<SchemaRecord>> {
        self.get_topic(topic).await?;
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT topic, version, schema, created_at FROM pgtide.schema_versions WHERE topic = $1 ORDER BY version",
                &[&topic],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| SchemaRecord {
                topic: r.get(0),
                version: r.get(1),
                schema: r.get(2),
                created_at: ts(r.get(3)),
            })
            .collect())
    }

    /// Registers the next version and makes it active, after the topic's
    /// compatibility checks; `Incompatible` carries every reason.
    pub async fn register_schema(&self, topic: &str, schema: &Value, owner: Owner) -> Result<i32> {
        compile(schema).map_err(StoreError::Invalid)?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let current = lock_topic(&*tx, topic, owner).await?;
        let previous: Option<Value> = tx
            .query_opt(
                "SELECT schema FROM pgtide.schema_versions WHERE topic = $1 ORDER BY version DESC LIMIT 1",
                &[&topic],
            )
            .await?
            .map(|r| r.get(0));
        let reasons = compatibility_problems(
            &*tx,
            topic,
            &current.compatibility,
            previous.as_ref(),
            schema,
            owner,
        )
        .await?;
        if !reasons.is_empty() {
            return Err(StoreError::Incompatible(reasons));
        }
        let version: i32 = tx
            .query_one(
                "INSERT INTO pgtide.schema_versions (topic, version, schema)
                 SELECT $1, coalesce(max(version), 0) + 1, $2 FROM pgtide.schema_versions WHERE topic = $1
                 RETURNING version",
                &[&topic, schema],
            )
            .await?
            .get(0);
        tx.execute(
            "UPDATE pgtide.topics SET active_schema_version = $2, updated_at = now() WHERE name = $1",
            &[&topic, &version],
        )
        .await?;
        tx.commit().await?;
        self.reload_schemas().await?;
        Ok(version)
    }

    /// Mirrors a topic declared in a mapping file: creates or updates it as
    /// file-owned, and registers its schema when it differs from the newest version.
    pub async fn sync_file_topic(
        &self,
        name: &str,
        description: Option<&str>,
        compatibility: Option<&str>,
        schema: Option<&Value>,
        source_file: &str,
    ) -> Result<()> {
        let compatibility = compatibility.unwrap_or("backward");
        check_compatibility_mode(compatibility)?;
        {
            let client = self.pool.get().await?;
            client
                .execute(
                    "INSERT INTO pgtide.topics (name, description, compatibility, owner, source_file)
                     VALUES ($1, $2, $3, 'file', $4)
                     ON CONFLICT (name) DO UPDATE SET description = excluded.description,
                         compatibility = excluded.compatibility, owner = 'file', org_id = NULL,
                         source_file = excluded.source_file, updated_at = now()",
                    &[&name, &description, &compatibility, &source_file],
                )
                .await?;
        }
        if let Some(schema) = schema {
            let client = self.pool.get().await?;
            let newest: Option<Value> = client
                .query_opt(
                    "SELECT schema FROM pgtide.schema_versions WHERE topic = $1 ORDER BY version DESC LIMIT 1",
                    &[&name],
                )
                .await?
                .map(|r| r.get(0));
            if newest.as_ref() != Some(schema) {
                self.register_schema(name, schema, Owner::File).await?;
            }
        }
        Ok(())
    }

    /// Refreshes this node's compiled validators.
    pub async fn reload_schemas(&self) -> Result<()> {
        let client = self.pool.get().await?;
        self.schemas.reload(&**client).await
    }

    /// The validators events pass through.
    pub fn schemas(&self) -> &SchemaCache {
        &self.schemas
    }
}

/// Locks the topic's row for the rest of the transaction and refuses API
/// writes to file-owned topics and, for non-admins, to topics their org
/// does not own.
async fn lock_topic(tx: &impl GenericClient, name: &str, owner: Owner) -> Result<TopicRecord> {
    let row = tx
        .query_opt(
            &format!("SELECT {TOPIC_COLUMNS} FROM pgtide.topics WHERE name = $1 FOR UPDATE"),
            &[&name],
        )
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no topic {name:?}")))?;
    let topic = topic_from_row(&row);
    let Owner::Api { org_scope, .. } = owner else {
        return Ok(topic);
    };
    if topic.read_only {
        return Err(StoreError::ReadOnly(format!(
            "topic {name:?} is declared in {} and can only be changed there",
            topic.source_file.as_deref().unwrap_or("a mapping file")
        )));
    }
    if let Some(org) = org_scope
        && (topic.org_id.is_none() || topic.org_id != org)
    {
        return Err(StoreError::Forbidden(match topic.org_id {
            None => format!("topic {name:?} has no owner org: only admins may change it"),
            Some(_) => format!(
                "topic {name:?} is owned by another org: only that org or an admin may change it"
            ),
        }));
    }
    Ok(topic)
}

/// Whether `topic` has a stored event whose org is not `org` (another org's,
/// or of no org when `org` is one; any org's when it is `None`). Each
/// `EXISTS` is one probe of `events_topic_org`, so this costs the same on a
/// topic of ten events and of ten million.
async fn has_foreign_events(
    tx: &impl GenericClient,
    topic: &str,
    org: Option<i64>,
) -> Result<bool> {
    let row = match org {
        Some(org) => {
            tx.query_one(
                "SELECT EXISTS (SELECT 1 FROM pgtide.events WHERE topic = $1 AND org_id < $2)
                     OR EXISTS (SELECT 1 FROM pgtide.events WHERE topic = $1 AND org_id > $2)
                     OR EXISTS (SELECT 1 FROM pgtide.events WHERE topic = $1 AND org_id IS NULL)",
                &[&topic, &org],
            )
            .await?
        }
        None => {
            tx.query_one(
                "SELECT EXISTS (SELECT 1 FROM pgtide.events WHERE topic = $1 AND org_id IS NOT NULL)",
                &[&topic],
            )
            .await?
        }
    };
    Ok(row.get(0))
}

/// The stored events of the last 7 days (newest first, at most 10000) a
/// backward check runs over: `(seq, data, org_id)`. For a non-admin only the
/// events it may read (its org's and org-less ones, and none when its token
/// may not read the topic): the others are neither checked nor counted, as
/// a count of events the caller cannot read, with a schema it chose, would
/// be a yes/no oracle on their content. Admins and file loads check all.
async fn checked_events(
    tx: &impl GenericClient,
    topic: &str,
    owner: Owner,
) -> Result<Vec<tokio_postgres::Row>> {
    let org_scope = match owner {
        Owner::Api {
            org_scope: Some(_),
            reads_topic: false,
        } => return Ok(Vec::new()),
        Owner::Api { org_scope, .. } => org_scope,
        Owner::File => None,
    };
    Ok(tx
        .query(
            "SELECT seq, data, org_id FROM pgtide.events
             WHERE topic = $1 AND ts > now() - interval '7 days'
               AND ($2 OR org_id IS NULL OR org_id = $3)
             ORDER BY seq DESC LIMIT 10000",
            &[&topic, &org_scope.is_none(), &org_scope.flatten()],
        )
        .await?)
}

/// Why `new` may not follow `previous` under `mode`.
async fn compatibility_problems(
    tx: &impl GenericClient,
    topic: &str,
    mode: &str,
    previous: Option<&Value>,
    new: &Value,
    owner: Owner,
) -> Result<Vec<String>> {
    let mut reasons = Vec::new();
    if mode == "none" {
        return Ok(reasons);
    }
    let required = |schema: Option<&Value>| -> Vec<String> {
        schema
            .and_then(|s| s.get("required"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let old_required = required(previous);
    let new_required = required(Some(new));
    if matches!(mode, "backward" | "full") {
        if previous.is_some() {
            for name in new_required.iter().filter(|n| !old_required.contains(n)) {
                reasons.push(format!(
                    "adds required property {name:?}, which existing events may lack"
                ));
            }
        }
        let validator = compile(new).map_err(StoreError::Invalid)?;
        let (mut rejected, mut quoted) = (0, 0);
        for row in &checked_events(tx, topic, owner).await? {
            let data: Value = row.get(1);
            let found = issues(&validator, &data);
            if let Some(first) = found.first() {
                rejected += 1;
                if owner.may_quote(row.get(2)) && quoted < 5 {
                    quoted += 1;
                    let seq: i64 = row.get(0);
                    reasons.push(format!(
                        "rejects stored event seq {seq}: {} (at {:?})",
                        first.message, first.pointer
                    ));
                }
            }
        }
        if rejected > quoted {
            reasons.push(format!(
                "rejects {rejected} stored events of the last 7 days in all"
            ));
        }
    }
    if matches!(mode, "forward" | "full") && previous.is_some() {
        for name in old_required.iter().filter(|n| !new_required.contains(n)) {
            reasons.push(format!(
                "no longer requires {name:?}, which consumers of earlier versions rely on"
            ));
        }
    }
    Ok(reasons)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn validators_report_each_problem_with_its_pointer() {
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {"id": {"type": "integer"}, "total": {"type": "number"}},
        });
        let v = compile(&schema).unwrap();
        assert!(v.is_valid(&json!({"id": 7})));
        let found = issues(&v, &json!({"id": "seven", "total": true}));
        let pointers: Vec<&str> = found.iter().map(|i| i.pointer.as_str()).collect();
        assert_eq!(pointers, ["/id", "/total"]);
        let draft7 =
            json!({"$schema": "http://json-schema.org/draft-07/schema#", "type": "string"});
        assert!(compile(&draft7).unwrap().is_valid(&json!("x")));
        assert!(
            compile(&json!({"type": "nonsense"}))
                .unwrap_err()
                .contains("invalid JSON Schema")
        );
        assert!(compile(&json!([1])).is_err());
    }
}
