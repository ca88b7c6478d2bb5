//! Mapping files: YAML + CEL turned into a pure function from a row change
//! to topic events (contract §4).
//!
//! # Layout
//!
//! The data flows from a directory of files to events:
//!
//! - `yaml`: parses a file into a tree of nodes that know their line and
//!   column, failing only on YAML syntax.
//! - `load`: walks the trees, checks every field (names, types, topics,
//!   tables, operations, schemas) and compiles the CEL, collecting every
//!   problem as a [`LoadError`] at its place.
//! - `expr` and `template`: one CEL expression, and a topic template
//!   with `{{ expr }}` holes, as compiled at load; `fast` evaluates the
//!   everyday subset of CEL natively, falling back to CEL when unsure.
//! - `engine`: runs one [`Change`] through the mappings of its table and
//!   returns a [`MappedEvent`] or a [`MappingFailure`] per matching mapping.
//! - `value`: converts between JSON rows and CEL values.
//! - `set`: [`MappingSet`], the API the rest of pgtide uses.
//!
//! Nothing here touches the database: whether tables and columns exist and
//! whether `old` values are available (`REPLICA IDENTITY FULL`) is checked
//! by the caller with [`MappingSet::tables`], [`MappingSet::mappings`]
//! (`columns`, `needs_old`) and [`MappingSet::needs_old_values`].
//!
//! # Load errors
//!
//! Every problem of every file is a [`LoadError`], displayed as
//! `file:line:column: message` and pointing at the offending key or value.
//! The messages follow a few shapes:
//!
//! - `YAML syntax error: <parser message>`
//! - ``unknown field `x` in a mapping; expected one of `name`, … (did you mean `y`?)``
//! - ``mapping `m` is missing required field `topic` `` (at the entry)
//! - ``duplicate field `x` (first at line L, column C)``
//! - ``duplicate mapping name `m`; first defined at file:line:column``,
//!   ``duplicate topic `t`; first declared at file:line:column``
//! - `` `x` must be a string, found a list``, `` `x` is empty``
//! - `invalid topic: <pgtide-core's topic error>`, ``invalid topic template `…`: …``
//! - ``invalid table `…`; …``, ``table `pgtide.x` is in schema `pgtide`, which pgtide never maps: …``,
//!   ``unknown operation `x`; …``,
//!   `` `changed` only filters updates, but `operations` does not include `update` ``
//! - ``in `when`: invalid CEL expression `…`: <CEL parser message> (column N of the expression)``,
//!   ``in `payload.f`: unknown variable `x` in `…`; …``
//! - ``schema file `p` not found``, ``… is not valid JSON: …``, ``… must hold a JSON object, found …``
//!
//! # Evaluation
//!
//! CEL sees `new`, `old`, `op`, `table` (`schema.table`) and `tx` (`xid`,
//! `commit_ts`, `lsn`). A row that is absent (`old` on an insert, `new` on a
//! delete) is `null`, and reading a column of it gives `null` rather than an
//! error, so `previous: old.status` works on inserts too. JSON numbers become
//! `int`, else `uint`, else `double`; numeric columns arrive as strings and
//! compare as strings. Results become JSON: numbers, strings, bools, null,
//! lists, maps (non-string keys as text); a non-finite double becomes
//! `"NaN"`/`"Infinity"`/`"-Infinity"`; bytes are refused with an error. A
//! plain column read (`new.total`) is copied from the row, keeping a JSON
//! number's digits exactly.
//!
//! A mapping that fails at run time yields a [`MappingFailure`] whose message
//! names the field: ``in `when`: No such key: status``,
//! `` `when` must be a bool, got string``, ``in `payload.x`: …``,
//! ``topic template `{{ new.slug }}` gave "a.b"; it may hold only letters, digits, '_' and '-'``,
//! `` `org` must be an int or null, got string (…)``,
//! `` `key` must be a string, a number, a bool or null, got list``.

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
pub use load::{is_reserved_schema, parse_table};
pub use set::{MappingInfo, MappingSet, Places, TopicDecl};
pub use template::{TopicReach, topic_reach};
