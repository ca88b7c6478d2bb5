//! The registry's copy of the mappings: file-defined ones mirrored on every
//! load (read-only through the API), API-defined ones kept here as their
//! source, which the loader reads together with the files.

use serde_json::Value;

use crate::{Result, Store, StoreError};

/// A mapping created through the API: its name and its source document.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiMapping {
    pub name: String,
    pub source: String,
}

impl Store {
    /// The API-defined mappings, by name.
    pub async fn api_mappings(&self) -> Result<Vec<ApiMapping>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT name, source FROM pgtide.mappings WHERE owner = 'api' ORDER BY name",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| ApiMapping {
                name: r.get(0),
                source: r.get::<_, Option<String>>(1).unwrap_or_default(),
            })
            .collect())
    }

    /// Stores an API-defined mapping; 409 when a mapping of that name exists.
    pub async fn save_api_mapping(
        &self,
        name: &str,
        source: &str,
        definition: &Value,
    ) -> Result<()> {
        let client = self.pool.get().await?;
        let inserted = client
            .execute(
                "INSERT INTO pgtide.mappings (name, owner, definition, source) VALUES ($1, 'api', $2, $3)
                 ON CONFLICT (name) DO NOTHING",
                &[&name, definition, &source],
            )
            .await?;
        if inserted == 0 {
            return Err(StoreError::Conflict(format!(
                "a mapping named {name:?} already exists"
            )));
        }
        Ok(())
    }

    /// Deletes an API-defined mapping; file-defined ones are read-only.
    pub async fn delete_api_mapping(&self, name: &str) -> Result<()> {
        let client = self.pool.get().await?;
        let owner: Option<String> = client
            .query_opt(
                "SELECT owner FROM pgtide.mappings WHERE name = $1",
                &[&name],
            )
            .await?
            .map(|r| r.get(0));
        match owner.as_deref() {
            None => Err(StoreError::NotFound(format!("no mapping {name:?}"))),
            Some("file") => Err(StoreError::ReadOnly(format!(
                "mapping {name:?} is defined in a mapping file and can only be changed there"
            ))),
            Some(_) => {
                client
                    .execute(
                        "DELETE FROM pgtide.mappings WHERE name = $1 AND owner = 'api'",
                        &[&name],
                    )
                    .await?;
                Ok(())
            }
        }
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
