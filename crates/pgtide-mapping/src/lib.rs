//! Mapping files: YAML + CEL turned into a pure function from a row change
//! to topic events (contract §4).
//!
//! # Layout
//!
//! The data flows from a directory of files to events:
//!
//! - [`yaml`]: parses a file into a tree of nodes that know their line and
//!   column, failing only on YAML syntax.
//! - [`load`]: walks the trees, checks every field (names, types, topics,
//!   tables, operations, schemas) and compiles the CEL, collecting every
//!   problem as a [`LoadError`] at its place.
//! - [`expr`] and [`template`]: one CEL expression, and a topic template
//!   with `{{ expr }}` holes, as compiled at load; [`fast`] evaluates the
//!   everyday subset of CEL natively, falling back to CEL when unsure.
//! - [`engine`]: runs one [`Change`] through the mappings of its table and
//!   returns a [`MappedEvent`] or a [`MappingFailure`] per matching mapping.
//! - [`value`]: converts between JSON rows and CEL values.
//! - [`set`]: [`MappingSet`], the API the rest of pgtide uses.
//!
//! Nothing here touches the database: whether tables and columns exist and
//! whether `old` values are available (`REPLICA IDENTITY FULL`) is checked
//! by the caller with [`MappingSet::tables`], [`MappingSet::mappings`] and
//! [`MappingSet::needs_old_values`].

mod engine;
mod error;
mod expr;
mod fast;
pub mod load;
mod set;
mod template;
mod value;
mod yaml;

#[cfg(test)]
mod tests;

pub use engine::{Change, MappedEvent, Op};
pub use error::{LoadError, Location, MappingFailure};
pub use set::{MappingInfo, MappingSet, TopicDecl};
