//! The registry's copy of the mappings: file-defined ones mirrored on every
//! load (read-only through the API), API-defined ones kept here as their
//! source, which the loader reads together with the files.

use serde_json::Value;

use crate::{Result, Store, StoreError};

/// A mapping created through the API: its name, its source document and
/// who owns it.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiMapping {
    pub name: String,
    pub source: String,
    /// The org of the token that created it; `None` (an admin without an
    /// org): visible to admins only.
    pub org_id: Option<i64>,
    /// The creating token's role (`admin`, `operator`); `None` for rows
    /// written before owners were kept, or by hand.
    pub created_role: Option<String>,
    /// `schema.table` as the mapping was loaded when created, if known.
    pub table: Option<String>,
}

/// Who is deleting a mapping: anyone's (admins) or one org's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MappingScope {
    All,
    /// Only mappings owned by this org; `None` owns nothing.
    Org(Option<i64>),
}

impl Store {
    /// The API-defined mappings, by name.
    pub async fn api_mappings(&self) -> Result<Vec<ApiMapping>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT name, source, org_id, created_role, definition->>'table'
                 FROM pgtide.mappings WHERE owner = 'api' ORDER BY name",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| ApiMapping {
                name: r.get(0),
                source: r.get::<_, Option<String>>(1).unwrap_or_default(),
                org_id: r.get(2),
                created_role: r.get(3),
                table: r.get(4),
            })
            .collect())
    }

    /// Stores an API-defined mapping owned by `org_id`, made by a token of
    /// `role`; 409 when a mapping of that name exists.
    pub async fn save_api_mapping(
        &self,
        name: &str,
        source: &str,
        definition: &Value,
        org_id: Option<i64>,
        role: &str,
    ) -> Result<()> {
        let client = self.pool.get().await?;
        let inserted = client
            .execute(
                "INSERT INTO pgtide.mappings (name, owner, definition, source, org_id, created_role)
                 VALUES ($1, 'api', $2, $3, $4, $5)
                 ON CONFLICT (name) DO NOTHING",
                &[&name, definition, &source, &org_id, &role],
            )
            .await?;
        if inserted == 0 {
            return Err(StoreError::Conflict(format!(
                "a mapping named {name:?} already exists"
            )));
        }
        Ok(())
    }

    /// Deletes an API-defined mapping within `scope`; file-defined ones are
    /// read-only, and another org's is not found (its existence stays hidden).
    pub async fn delete_api_mapping(&self, name: &str, scope: MappingScope) -> Result<()> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT owner, org_id FROM pgtide.mappings WHERE name = $1",
                &[&name],
            )
            .await?;
        let not_found = || StoreError::NotFound(format!("no mapping {name:?}"));
        let Some(row) = row else {
            return Err(not_found());
        };
        let (owner, org_id): (String, Option<i64>) = (row.get(0), row.get(1));
        if owner == "file" {
            return Err(StoreError::ReadOnly(format!(
                "mapping {name:?} is defined in a mapping file and can only be changed there"
            )));
        }
        let deleted = match scope {
            MappingScope::All => {
                client
                    .execute(
                        "DELETE FROM pgtide.mappings WHERE name = $1 AND owner = 'api'",
                        &[&name],
                    )
                    .await?
            }
            MappingScope::Org(org) => {
                if org.is_none() || org != org_id {
                    return Err(not_found());
                }
                client
                    .execute(
                        "DELETE FROM pgtide.mappings WHERE name = $1 AND owner = 'api' AND org_id = $2",
                        &[&name, &org],
                    )
                    .await?
            }
        };
        if deleted == 0 {
            return Err(not_found());
        }
        Ok(())
    }

    /// Mirrors the file-defined mappings of a successful load: `(name, file,
    /// definition)`; file mappings no longer defined are removed.
    pub async fn sync_file_mappings(&self, mappings: &[(String, String, Value)]) -> Result<()> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let names: Vec<&str> = mappings.iter().map(|m| m.0.as_str()).collect();
        tx.execute(
            "DELETE FROM pgtide.mappings WHERE owner = 'file' AND NOT (name = ANY($1))",
            &[&names],
        )
        .await?;
        for (name, file, definition) in mappings {
            tx.execute(
                "INSERT INTO pgtide.mappings (name, owner, source_file, definition) VALUES ($1, 'file', $2, $3)
                 ON CONFLICT (name) DO UPDATE SET owner = 'file', source_file = excluded.source_file,
                     definition = excluded.definition, source = NULL, updated_at = now()",
                &[name, file, definition],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
