//! Creates or upgrades the `pgtide` schema. Each file of the repo's `sql/`
//! (`NNN_name.sql`) is one version, applied once, in its own transaction,
//! under an advisory lock so several nodes starting together do not race.

use crate::{Result, StoreError};

/// The migrations in version order; compiled in so the binary is self-contained.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "events", include_str!("../../../sql/001_events.sql")),
    (2, "registry", include_str!("../../../sql/002_registry.sql")),
    (
        3,
        "consumers",
        include_str!("../../../sql/003_consumers.sql"),
    ),
    (4, "webhooks", include_str!("../../../sql/004_webhooks.sql")),
    (
        5,
        "commit_notify",
        include_str!("../../../sql/005_commit_notify.sql"),
    ),
    (
        6,
        "webhook_rate",
        include_str!("../../../sql/006_webhook_rate.sql"),
    ),
    (
        8,
        "mapping_owner",
        include_str!("../../../sql/008_mapping_owner.sql"),
    ),
    (
        9,
        "topic_owner",
        include_str!("../../../sql/009_topic_owner.sql"),
    ),
    (
        10,
        "events_topic",
        include_str!("../../../sql/010_events_topic.sql"),
    ),
];

/// An arbitrary constant shared by every pgtide node for the migration lock.
const MIGRATION_LOCK: i64 = 0x7067_7469_6465_0001;

/// Applies what is missing and returns the versions applied now.
pub async fn migrate(client: &mut tokio_postgres::Client) -> Result<Vec<i32>> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = apply_missing(client).await;
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    result
}

async fn apply_missing(client: &mut tokio_postgres::Client) -> Result<Vec<i32>> {
    client
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS pgtide;
             CREATE TABLE IF NOT EXISTS pgtide.schema_migrations (
                 version    integer     PRIMARY KEY,
                 name       text        NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );",
        )
        .await
        .map_err(|e| StoreError::Migration {
            version: 0,
            message: describe(&e),
        })?;
    let applied: Vec<i32> = client
        .query("SELECT version FROM pgtide.schema_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut now = Vec::new();
    for &(version, name, sql) in MIGRATIONS {
        if applied.contains(&version) {
            continue;
        }
        let tx = client.transaction().await?;
        tx.batch_execute(sql)
            .await
            .map_err(|e| StoreError::Migration {
                version,
                message: describe(&e),
            })?;
        tx.execute(
            "INSERT INTO pgtide.schema_migrations (version, name) VALUES ($1, $2)",
            &[&version, &name],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version, name, "applied migration");
        now.push(version);
    }
    Ok(now)
}

/// Whether the schema is at the newest version (for `run` refusing a stale store).
pub async fn is_current(client: &tokio_postgres::Client) -> Result<bool> {
    let newest = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    match client
        .query_one("SELECT max(version) FROM pgtide.schema_migrations", &[])
        .await
    {
        Ok(row) => Ok(row.get::<_, Option<i32>>(0) == Some(newest)),
        Err(e) if e.as_db_error().is_some() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::MIGRATIONS;
    use pgtide_core::reserved::{RESERVED_TOPIC_PREFIXES, RESERVED_TYPE_PREFIXES};

    fn sql_list(items: &[&str]) -> String {
        let quoted: Vec<String> = items.iter().map(|p| format!("'{p}'")).collect();
        format!("IN ({})", quoted.join(", "))
    }

    /// `pgtide.publish()`'s reserved lists are the Rust rule's, in its order.
    #[test]
    fn sql_publish_refuses_what_the_rust_rule_refuses() {
        let newest_publish = MIGRATIONS
            .iter()
            .rev()
            .find(|(_, _, sql)| sql.contains("FUNCTION pgtide.publish("))
            .map(|(_, _, sql)| *sql)
            .unwrap_or_default();
        assert!(newest_publish.contains(&sql_list(&RESERVED_TOPIC_PREFIXES)));
        assert!(newest_publish.contains(&sql_list(&RESERVED_TYPE_PREFIXES)));
    }
}
