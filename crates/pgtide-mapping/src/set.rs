//! [`MappingSet`]: the loaded mapping files, and what callers ask of them.

use crate::engine::{Change, Engine, MappedEvent};
use crate::error::{LoadError, Location, MappingFailure};
use crate::load;
use cel::{Env, extensions};
use std::path::Path;
use std::sync::Arc;

/// A topic declared in a mapping file. The file owns it: the registry
/// mirrors it and refuses API writes to it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TopicDecl {
    /// In dotted form.
    pub name: String,
    pub description: Option<String>,
    /// The JSON Schema, read from its file or written inline; always an
    /// object.
    pub schema: Option<serde_json::Value>,
    /// `backward` (the registry's default when absent), `none`, `forward` or
    /// `full`.
    pub compatibility: Option<String>,
    pub location: Location,
}

/// What a mapping is, for the API, the admin page and the caller's database
/// checks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MappingInfo {
    pub name: String,
    /// `schema.table`, unquoted.
    pub table: String,
    /// In the order `insert`, `update`, `delete`, `truncate`.
    pub operations: Vec<String>,
    /// As written in the file (a name or a template).
    pub topic: String,
    pub event_type: Option<String>,
    /// Whether the mapping needs the old row of an update: it has
    /// `changed:`, or an expression refers to the variable `old`. The
    /// caller then requires `REPLICA IDENTITY FULL` on the table.
    pub needs_old: bool,
    /// The `changed:` columns (empty without `changed:`).
    pub changed: Vec<String>,
    /// Every column the mapping names: `changed:` and the columns its
    /// expressions read by name from `new` or `old`, sorted. Columns reached
    /// by a computed key (`new[k]`) are not listed.
    pub columns: Vec<String>,
    pub location: Location,
    /// Where the database checks point: not part of the API's view.
    #[serde(skip)]
    pub places: Places,
}

/// The places in a mapping's file that the database checks point at, so a
/// missing table, a missing column or a missing `REPLICA IDENTITY FULL` is
/// reported where it is written rather than at the mapping's first line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Places {
    /// The `table:` value.
    pub table: Option<Location>,
    /// Each column of [`MappingInfo::columns`] with the first place (in file
    /// order) that names it: a `changed:` entry or the expression reading it.
    pub columns: Vec<(String, Location)>,
    /// The first place that needs old values: the `changed:` key or an
    /// expression reading `old`.
    pub old: Option<Location>,
}

impl MappingInfo {
    /// Where `table:` is written (the mapping's place when unknown).
    pub fn table_place(&self) -> &Location {
        self.places.table.as_ref().unwrap_or(&self.location)
    }

    /// Where `column` is first named (the mapping's place when unknown).
    pub fn column_place(&self, column: &str) -> &Location {
        self.places
            .columns
            .iter()
            .find(|(c, _)| c == column)
            .map_or(&self.location, |(_, at)| at)
    }

    /// Where old values are first needed (the mapping's place when unknown).
    pub fn old_place(&self) -> &Location {
        self.places.old.as_ref().unwrap_or(&self.location)
    }
}

/// The mappings and topics of a directory of mapping files, compiled.
///
/// Loading checks everything that can be checked without a database and
/// reports every problem at once; a set that loaded is a pure function from
/// a change to events ([`MappingSet::apply`]). It is immutable: a reload
/// builds a new set, and the caller swaps it in only if it loaded.
#[derive(Debug)]
pub struct MappingSet {
    pub(crate) topics: Vec<TopicDecl>,
    pub(crate) engine: Engine,
}

impl MappingSet {
    /// Loads every `*.yaml` / `*.yml` file of `dir` (not recursive, sorted by
    /// name; names starting with `.`, such as editor swap files, are
    /// skipped). A missing directory is an empty set. Every error of every
    /// file is reported; schema paths are relative to `dir`.
    pub fn load_dir(dir: &Path) -> Result<MappingSet, Vec<LoadError>> {
        let sources = load::read_dir(dir)?;
        MappingSet::load_sources(&sources, dir)
    }

    /// Loads from in-memory `(file name, contents)` pairs, in order; schema
    /// paths are resolved relative to `base_dir`. File names are only used
    /// in errors and locations.
    pub fn load_sources(
        sources: &[(String, String)],
        base_dir: &Path,
    ) -> Result<MappingSet, Vec<LoadError>> {
        let env = Arc::new(cel_env());
        let loaded = load::load(&env, sources, base_dir)?;
        Ok(MappingSet {
            topics: loaded.topics,
            engine: Engine::new(env, loaded.mappings),
        })
    }

    /// A set with no topics and no mappings.
    pub fn empty() -> MappingSet {
        MappingSet {
            topics: Vec::new(),
            engine: Engine::new(Arc::new(cel_env()), Vec::new()),
        }
    }

    /// The declared topics, in file order.
    pub fn topics(&self) -> &[TopicDecl] {
        &self.topics
    }

    /// The mappings, in file order.
    pub fn mappings(&self) -> Vec<MappingInfo> {
        self.engine
            .mappings
            .iter()
            .map(|m| m.info.clone())
            .collect()
    }

    /// Tables the mappings read, as `(schema, table)`, deduplicated, sorted.
    pub fn tables(&self) -> Vec<(String, String)> {
        let mut tables: Vec<(String, String)> = self
            .engine
            .by_table
            .iter()
            .flat_map(|(schema, tables)| tables.keys().map(|t| (schema.clone(), t.clone())))
            .collect();
        tables.sort();
        tables
    }

    /// Whether any mapping on this table needs old values (`changed:` or a
    /// reference to `old`), so the table needs `REPLICA IDENTITY FULL`.
    pub fn needs_old_values(&self, schema: &str, table: &str) -> bool {
        self.engine.table(schema, table).is_some_and(|t| {
            t.mappings
                .iter()
                .any(|p| self.engine.mappings[p.index].info.needs_old)
        })
    }

    /// Whether any mapping covers this table (the caller then skips default
    /// topics for it).
    pub fn covers(&self, schema: &str, table: &str) -> bool {
        self.engine.table(schema, table).is_some()
    }

    /// The events of every mapping of the change's table whose operations
    /// include the change's, whose `changed:` columns changed (updates
    /// only) and whose `when` holds, in file order. A mapping that fails at
    /// run time yields its [`MappingFailure`] in its place; the others are
    /// unaffected.
    pub fn apply(&self, change: &Change<'_>) -> Vec<Result<MappedEvent, MappingFailure>> {
        self.engine.apply(change)
    }
}

/// The CEL environment of mapping expressions: the standard library and
/// the `strings` (`lowerAscii`, `replace`, `split`, …), `lists` and `math`
/// extensions.
pub(crate) fn cel_env() -> Env {
    let mut env = Env::stdlib();
    // Declaring an extension fails only on a name declared twice, which a
    // fresh standard environment cannot have (see the test below).
    let _ = env.add_extension(extensions::strings);
    let _ = env.add_extension(extensions::lists);
    let _ = env.add_extension(extensions::math);
    env
}

impl Default for MappingSet {
    fn default() -> Self {
        MappingSet::empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The extensions declare without conflicts, so `cel_env` loses none.
    #[test]
    fn extensions_declare() {
        let mut env = Env::stdlib();
        assert_eq!(env.add_extension(extensions::strings), Ok(()));
        assert_eq!(env.add_extension(extensions::lists), Ok(()));
        assert_eq!(env.add_extension(extensions::math), Ok(()));
    }
}
