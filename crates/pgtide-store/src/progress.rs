//! The CDC pipeline's stored position and the relations it has seen, written in
//! the same transaction as the events they describe.

use pgtide_pg::Lsn;
use serde_json::Value;
use tokio_postgres::GenericClient;

use crate::Result;

/// The last stored event of the CDC pipeline: its transaction's commit LSN and
/// its position in that transaction. Replayed changes at or before it are skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdcProgress {
    pub slot: String,
    pub commit_lsn: Lsn,
    pub tx_pos: i32,
}

impl CdcProgress {
    /// Whether the change at (`commit_lsn`, `pos`) is already stored.
    pub fn covers(&self, commit_lsn: Lsn, pos: i32) -> bool {
        (commit_lsn, pos) <= (self.commit_lsn, self.tx_pos)
    }
}

pub(crate) async fn save(tx: &impl GenericClient, p: &CdcProgress) -> Result<()> {
    tx.execute(
        "INSERT INTO pgtide.cdc_progress (slot, commit_lsn, tx_pos, updated_at)
         VALUES ($1, $2::text::pg_lsn, $3, now())
         ON CONFLICT (slot) DO UPDATE SET commit_lsn = excluded.commit_lsn, tx_pos = excluded.tx_pos, updated_at = now()",
        &[&p.slot, &p.commit_lsn.to_string(), &p.tx_pos],
    )
    .await?;
    Ok(())
}

/// The stored position for `slot`, if the pipeline ever stored anything.
pub async fn load(client: &impl GenericClient, slot: &str) -> Result<Option<CdcProgress>> {
    let row = client
        .query_opt(
            "SELECT commit_lsn::text, tx_pos FROM pgtide.cdc_progress WHERE slot = $1",
            &[&slot],
        )
        .await?;
    Ok(row.and_then(|r| {
        let lsn: String = r.get(0);
        Some(CdcProgress {
            slot: slot.to_owned(),
            commit_lsn: lsn.parse().ok()?,
            tx_pos: r.get(1),
        })
    }))
}

/// A relation's column set as last seen, to notice `ALTER TABLE`.
#[derive(Debug, Clone, PartialEq)]
pub struct KnownRelation {
    pub relid: u32,
    pub name: String,
    pub columns: Value,
}

pub async fn load_relations(client: &impl GenericClient, slot: &str) -> Result<Vec<KnownRelation>> {
    let rows = client
        .query(
            "SELECT relid, name, columns FROM pgtide.relations WHERE slot = $1",
            &[&slot],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| KnownRelation {
            relid: r.get(0),
            name: r.get(1),
            columns: r.get(2),
        })
        .collect())
}

pub async fn save_relation(
    client: &impl GenericClient,
    slot: &str,
    rel: &KnownRelation,
) -> Result<()> {
    client
        .execute(
            "INSERT INTO pgtide.relations (slot, relid, name, columns) VALUES ($1, $2, $3, $4)
             ON CONFLICT (slot, relid) DO UPDATE SET name = excluded.name, columns = excluded.columns",
            &[&slot, &rel.relid, &rel.name, &rel.columns],
        )
        .await?;
    Ok(())
}

/// Forgets everything about `slot` (when the slot is dropped).
pub async fn forget(client: &impl GenericClient, slot: &str) -> Result<()> {
    client
        .execute("DELETE FROM pgtide.cdc_progress WHERE slot = $1", &[&slot])
        .await?;
    client
        .execute("DELETE FROM pgtide.relations WHERE slot = $1", &[&slot])
        .await?;
    Ok(())
}
