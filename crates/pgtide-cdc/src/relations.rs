//! The relations pgoutput announces, with each column's JSON conversion
//! resolved once. Built-in types are known statically; user types (domains,
//! enums, arrays of them) are looked up in `pg_type` and cached.

use std::collections::HashMap;

use pgtide_pg::pgoutput::{Relation, ReplicaIdentity};
use pgtide_pg::value::ValueKind;
use serde_json::{Value, json};
use tokio_postgres::Client;

use crate::Result;

/// One column, ready for conversion.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
    pub is_key: bool,
    pub kind: ValueKind,
}

/// A captured relation as last announced.
#[derive(Debug, Clone)]
pub struct RelationInfo {
    pub id: u32,
    pub schema: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<Column>,
}

impl RelationInfo {
    /// `schema.table`, as in `meta.table`.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// The column set as stored in `pgtide.relations` and sent in `schema.changed`.
    pub fn columns_json(&self) -> Value {
        Value::Array(
            self.columns
                .iter()
                .map(|c| json!({"name": c.name, "type_oid": c.type_oid, "key": c.is_key}))
                .collect(),
        )
    }
}

/// Type OID → conversion, filled lazily from `pg_type`.
#[derive(Default)]
pub struct TypeCache {
    kinds: HashMap<u32, ValueKind>,
}

impl TypeCache {
    /// The conversion for `oid`, asking the server about types we do not know.
    pub async fn kind(&mut self, client: &Client, oid: u32) -> Result<ValueKind> {
        if let Some(kind) = ValueKind::builtin(oid) {
            return Ok(kind);
        }
        if let Some(kind) = self.kinds.get(&oid) {
            return Ok(kind.clone());
        }
        let kind = resolve(client, oid, 0).await?;
        self.kinds.insert(oid, kind.clone());
        Ok(kind)
    }

    /// Resolves every column of a Relation message.
    pub async fn relation(&mut self, client: &Client, rel: &Relation) -> Result<RelationInfo> {
        let mut columns = Vec::with_capacity(rel.columns.len());
        for c in &rel.columns {
            columns.push(Column {
                name: c.name.clone(),
                type_oid: c.type_oid,
                is_key: c.is_key,
                kind: self.kind(client, c.type_oid).await?,
            });
        }
        Ok(RelationInfo {
            id: rel.id,
            schema: rel.namespace.clone(),
            name: rel.name.clone(),
            replica_identity: rel.replica_identity,
            columns,
        })
    }
}

/// Domains become their base type; arrays of user types become arrays of
/// their element's kind; anything else (enums, composites, …) is text.
fn resolve(
    client: &Client,
    oid: u32,
    depth: u8,
) -> std::pin::Pin<Box<dyn Future<Output = Result<ValueKind>> + Send + '_>> {
    Box::pin(async move {
        if let Some(kind) = ValueKind::builtin(oid) {
            return Ok(kind);
        }
        if depth > 8 {
            return Ok(ValueKind::Text);
        }
        let row = client
            .query_opt(
                "SELECT t.typtype::text, t.typbasetype, t.typelem, t.typcategory::text, coalesce(e.typdelim, ',')::text
                 FROM pg_type t LEFT JOIN pg_type e ON e.oid = t.typelem WHERE t.oid = $1",
                &[&oid],
            )
            .await?;
        let Some(row) = row else {
            return Ok(ValueKind::Text);
        };
        let typtype: String = row.get(0);
        let base: u32 = row.get(1);
        let elem: u32 = row.get(2);
        let category: String = row.get(3);
        let delim: String = row.get(4);
        if typtype == "d" {
            return resolve(client, base, depth + 1).await;
        }
        if category == "A" && elem != 0 {
            let element = resolve(client, elem, depth + 1).await?;
            return Ok(ValueKind::Array {
                element: Box::new(element),
                delimiter: delim.bytes().next().unwrap_or(b','),
            });
        }
        Ok(ValueKind::Text)
    })
}
