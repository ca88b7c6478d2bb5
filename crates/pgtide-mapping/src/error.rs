//! The two kinds of problems this crate reports: a [`LoadError`] names the
//! place in a mapping file that is wrong, a [`MappingFailure`] names the
//! mapping that could not turn one change into an event.

use std::fmt;

/// A place in a mapping file: the file as it was named to the loader, and a
/// 1-based line and column (in characters).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Location {
    pub file: String,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// One problem found while loading mapping files, pointing at the key or
/// value that causes it. Displayed as `file:line:column: message`, the form
/// editors and terminals turn into a link.
///
/// Serialized with the fields `file`, `line`, `column` and `message`: this is
/// the shape `GET /v1/mappings` reports under `errors`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct LoadError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl LoadError {
    pub(crate) fn at(location: &Location, message: impl Into<String>) -> LoadError {
        LoadError {
            file: location.file.clone(),
            line: location.line,
            column: location.column,
            message: message.into(),
        }
    }

    /// The place this error points at.
    pub fn location(&self) -> Location {
        Location {
            file: self.file.clone(),
            line: self.line,
            column: self.column,
        }
    }
}

/// A mapping that matched a change but could not produce its event: a CEL
/// error at run time (a missing column, a type mismatch, a `when` that is not
/// a bool, an `org` that is not an int, a rendered topic that is not a valid
/// topic). Only this mapping's event is lost; the others of the same change
/// are still produced, so the caller decides what to do with it (the CDC
/// pipeline keeps it in the dead-letter store).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, thiserror::Error)]
#[error("mapping `{mapping}`: {message}")]
pub struct MappingFailure {
    pub mapping: String,
    pub message: String,
}
