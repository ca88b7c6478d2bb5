//! Preparing a database to stream from, checking everything before creating
//! anything, so a failed start leaves nothing half-made.

use std::fmt;

use pgtide_pg::replication::{quote_ident, quote_literal};
use tokio_postgres::Client;

use crate::{CdcError, Result};

/// A schema-qualified table name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

impl TableName {
    /// Reads `schema.table` or a bare `table` (in `public`).
    pub fn parse(text: &str) -> Result<TableName> {
        let text = text.trim();
        let (schema, name) = match text.split_once('.') {
            Some((s, n)) => (s, n),
            None => ("public", text),
        };
        if schema.is_empty() || name.is_empty() || name.contains('.') {
            return Err(CdcError::Setup(format!(
                "invalid table name {text:?}: expected schema.table or table"
            )));
        }
        Ok(TableName {
            schema: schema.to_owned(),
            name: name.to_owned(),
        })
    }

    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// Which tables produce default-topic events (`--capture`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Capture {
    /// Nothing: only `pgtide.publish()` messages (and, later, mappings).
    #[default]
    None,
    /// These tables.
    Tables(Vec<TableName>),
    /// Every user table outside `pgtide`, `pg_catalog` and `information_schema`
    /// that exists at start-up.
    All,
}

impl Capture {
    /// Reads `--capture`: a comma-separated list of tables, or `*`.
    pub fn parse(text: &str) -> Result<Capture> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(Capture::None);
        }
        if text == "*" {
            return Ok(Capture::All);
        }
        let tables = text
            .split(',')
            .filter(|t| !t.trim().is_empty())
            .map(TableName::parse)
            .collect::<Result<Vec<_>>>()?;
        Ok(Capture::Tables(tables))
    }
}

/// Every check that can fail before we create anything.
pub async fn preflight(client: &Client, slot: &str) -> Result<()> {
    let wal_level: String = client.query_one("SHOW wal_level", &[]).await?.get(0);
    if wal_level != "logical" {
        return Err(CdcError::Setup(format!(
            "wal_level is {wal_level:?} but logical replication needs \"logical\": run ALTER SYSTEM SET wal_level = logical; and restart PostgreSQL"
        )));
    }
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await?
        .get(0);
    if version < 140000 {
        return Err(CdcError::Setup(format!(
            "PostgreSQL {} is too old: pgtide needs 14 or newer (for pgoutput messages)",
            version / 10000
        )));
    }
    let row = client
        .query_one(
            "SELECT rolsuper OR rolreplication, current_user::text FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?;
    let (can_replicate, user): (bool, String) = (row.get(0), row.get(1));
    if !can_replicate {
        return Err(CdcError::Setup(format!(
            "role {user:?} may not use replication: run ALTER ROLE {} WITH REPLICATION; as a superuser",
            quote_ident(&user)
        )));
    }
    let existing = client
        .query_opt(
            "SELECT plugin, database, slot_type FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    if let Some(row) = existing {
        let plugin: Option<String> = row.get(0);
        let database: Option<String> = row.get(1);
        let slot_type: String = row.get(2);
        let here: String = client
            .query_one("SELECT current_database()::text", &[])
            .await?
            .get(0);
        if slot_type != "logical" || plugin.as_deref() != Some("pgoutput") {
            return Err(CdcError::Setup(format!(
                "replication slot {slot:?} already exists with {} plugin {:?}, not pgoutput: choose another --slot, or drop it with SELECT pg_drop_replication_slot({})",
                slot_type,
                plugin.unwrap_or_default(),
                quote_literal(slot)
            )));
        }
        if database.as_deref() != Some(here.as_str()) {
            return Err(CdcError::Setup(format!(
                "replication slot {slot:?} belongs to database {:?}, not {here:?}: choose another --slot",
                database.unwrap_or_default()
            )));
        }
    }
    Ok(())
}

/// The tables `capture` names, checked to exist (`All`: every user table now).
pub async fn resolve_tables(client: &Client, capture: &Capture) -> Result<Vec<TableName>> {
    match capture {
        Capture::None => Ok(Vec::new()),
        Capture::Tables(tables) => {
            for t in tables {
                if pgtide_mapping::is_reserved_schema(&t.schema) {
                    return Err(CdcError::Setup(format!(
                        "--capture names table {t}, in schema {:?}, which pgtide never captures (pgtide, pg_catalog, information_schema, pg_toast and other pg_ schemas)",
                        t.schema
                    )));
                }
                let exists: Option<u32> = client
                    .query_one("SELECT to_regclass($1)::oid", &[&t.quoted()])
                    .await?
                    .get(0);
                if exists.is_none() {
                    return Err(CdcError::Setup(format!(
                        "--capture names table {t}, which does not exist"
                    )));
                }
            }
            Ok(tables.clone())
        }
        Capture::All => {
            let rows = client
                .query(
                    "SELECT n.nspname::text, c.relname::text FROM pg_class c
                     JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
                       AND n.nspname NOT IN ('pgtide', 'pg_catalog', 'information_schema')
                       AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
                     ORDER BY 1, 2",
                    &[],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| TableName {
                    schema: r.get(0),
                    name: r.get(1),
                })
                .collect())
        }
    }
}

/// Why a captured table's default-topic events (some or all) have no
/// `org_id`, and so reach every tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrgGap {
    /// The table has no org column (or none is configured).
    NoColumn(TableName),
    /// Its deletes send only key columns, and the org column is not one.
    DeletesWithoutOrg(TableName),
}

/// The captured tables whose default-topic events would have no org with
/// `org_column` (`--capture-org-column`): all of them without one.
pub async fn org_gaps(
    client: &Client,
    tables: &[TableName],
    org_column: Option<&str>,
) -> Result<Vec<OrgGap>> {
    let Some(column) = org_column else {
        return Ok(tables.iter().cloned().map(OrgGap::NoColumn).collect());
    };
    let mut gaps = Vec::new();
    for t in tables {
        // Columns of the replica identity: the whole row under FULL, else the
        // key (the primary key, or the index REPLICA IDENTITY USING names).
        let row = client
            .query_one(
                "SELECT a.attnum IS NOT NULL,
                        c.relreplident = 'f' OR EXISTS (
                            SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid
                              AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident))
                              AND a.attnum = ANY (i.indkey))
                 FROM pg_class c
                 LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped
                 WHERE c.oid = to_regclass($1)",
                &[&t.quoted(), &column],
            )
            .await?;
        let (has, in_identity): (bool, bool) = (row.get(0), row.get(1));
        if !has {
            gaps.push(OrgGap::NoColumn(t.clone()));
        } else if !in_identity {
            gaps.push(OrgGap::DeletesWithoutOrg(t.clone()));
        }
    }
    Ok(gaps)
}

/// What [`ensure_publication`] did, so a later failure can undo it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicationChange {
    Created,
    Existing,
}

/// Makes the publication hold exactly `tables`.
pub async fn ensure_publication(
    client: &Client,
    name: &str,
    tables: &[TableName],
) -> Result<PublicationChange> {
    let existing = client
        .query_opt(
            "SELECT puballtables FROM pg_publication WHERE pubname = $1",
            &[&name],
        )
        .await?;
    let list = tables
        .iter()
        .map(TableName::quoted)
        .collect::<Vec<_>>()
        .join(", ");
    match existing {
        None => {
            let sql = if tables.is_empty() {
                format!("CREATE PUBLICATION {}", quote_ident(name))
            } else {
                format!("CREATE PUBLICATION {} FOR TABLE {list}", quote_ident(name))
            };
            client.batch_execute(&sql).await?;
            Ok(PublicationChange::Created)
        }
        Some(row) => {
            let all: bool = row.get(0);
            if all {
                return Err(CdcError::Setup(format!(
                    "publication {name:?} is FOR ALL TABLES, which would stream pgtide's own writes back to it: drop it (DROP PUBLICATION {}) or choose another --publication",
                    quote_ident(name)
                )));
            }
            let rows = client
                .query(
                    "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
                    &[&name],
                )
                .await?;
            let current: Vec<TableName> = rows
                .iter()
                .map(|r| TableName {
                    schema: r.get(0),
                    name: r.get(1),
                })
                .collect();
            let add: Vec<String> = tables
                .iter()
                .filter(|t| !current.contains(t))
                .map(TableName::quoted)
                .collect();
            let drop: Vec<String> = current
                .iter()
                .filter(|t| !tables.contains(t))
                .map(TableName::quoted)
                .collect();
            if !add.is_empty() {
                client
                    .batch_execute(&format!(
                        "ALTER PUBLICATION {} ADD TABLE {}",
                        quote_ident(name),
                        add.join(", ")
                    ))
                    .await?;
            }
            if !drop.is_empty() {
                client
                    .batch_execute(&format!(
                        "ALTER PUBLICATION {} DROP TABLE {}",
                        quote_ident(name),
                        drop.join(", ")
                    ))
                    .await?;
            }
            Ok(PublicationChange::Existing)
        }
    }
}

/// Creates the slot if missing. Returns whether it was created now.
pub async fn ensure_slot(client: &Client, slot: &str) -> Result<bool> {
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?
        .is_some();
    if exists {
        return Ok(false);
    }
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await?;
    Ok(true)
}

/// Publication, then slot (after [`preflight`]); undoes a publication it
/// created if the slot cannot be made.
pub async fn prepare(
    client: &Client,
    slot: &str,
    publication: &str,
    tables: &[TableName],
) -> Result<()> {
    let change = ensure_publication(client, publication, tables).await?;
    if let Err(e) = ensure_slot(client, slot).await {
        if change == PublicationChange::Created {
            let _ = client
                .batch_execute(&format!(
                    "DROP PUBLICATION IF EXISTS {}",
                    quote_ident(publication)
                ))
                .await;
        }
        return Err(e);
    }
    Ok(())
}

/// The slot as `pgtide slot status` and `/readyz` show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SlotStatus {
    pub slot: String,
    pub active: bool,
    pub confirmed_flush_lsn: Option<String>,
    /// Bytes of WAL written after the slot's confirmed position.
    pub lag_bytes: i64,
    /// Bytes of WAL the server keeps for this slot.
    pub retained_wal_bytes: i64,
}

/// Reads the slot's position and the WAL it holds back; `None` if it is gone.
pub async fn slot_status(client: &Client, slot: &str) -> Result<Option<SlotStatus>> {
    let row = client
        .query_opt(
            "SELECT active, confirmed_flush_lsn::text,
                    coalesce((pg_current_wal_lsn() - confirmed_flush_lsn)::bigint, 0),
                    coalesce((pg_current_wal_lsn() - restart_lsn)::bigint, 0)
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(row.map(|r| SlotStatus {
        slot: slot.to_owned(),
        active: r.get(0),
        confirmed_flush_lsn: r.get(1),
        lag_bytes: r.get(2),
        retained_wal_bytes: r.get(3),
    }))
}

/// Drops the slot and the publication (`pgtide slot drop`).
pub async fn drop_slot(client: &Client, slot: &str, publication: &str) -> Result<bool> {
    let existed = client
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?
        .is_some();
    if existed {
        client
            .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
            .await
            .map_err(|e| match e.as_db_error() {
                Some(db) if db.code().code() == "55006" => CdcError::Setup(format!(
                    "slot {slot:?} is in use by a running pgtide; stop it first"
                )),
                _ => CdcError::Source(e),
            })?;
    }
    client
        .batch_execute(&format!(
            "DROP PUBLICATION IF EXISTS {}",
            quote_ident(publication)
        ))
        .await?;
    Ok(existed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_capture_lists() {
        assert_eq!(Capture::parse("").unwrap(), Capture::None);
        assert_eq!(Capture::parse("*").unwrap(), Capture::All);
        let Capture::Tables(t) = Capture::parse("public.orders, users,audit.log").unwrap() else {
            panic!("expected tables");
        };
        assert_eq!(
            t.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["public.orders", "public.users", "audit.log"]
        );
        assert!(Capture::parse("a.b.c").is_err());
        assert!(Capture::parse(".x").is_err());
    }
}
