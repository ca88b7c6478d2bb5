//! A YAML document as a tree of nodes that each know their line and column.
//!
//! Mapping files are not deserialized straight into structs: serde stops at
//! the first problem, and `pgtide check` must report every problem of every
//! file at once, each at its own key or value. So the parser only builds this
//! tree (failing only on YAML syntax), and `load` walks it, checking fields
//! and types itself and collecting every error.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{DuplicateKeyPolicy, MessageFormatter, Spanned, UserMessageFormatter};
use std::fmt;

/// A YAML node and where it starts (1-based line and column, in characters).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub line: usize,
    pub column: usize,
    pub value: Value,
}

/// The value of a node, with YAML 1.2 core scalars: `yes`/`no`/`on`/`off`
/// stay strings, so a column named `y` or a status `on` is not read as a bool.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in file order; a repeated key is kept so the loader can
    /// report it with both places.
    Map(Vec<(Node, Node)>),
}

impl Value {
    /// What the value is, with an article, for "expected X, found Y" messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) | Value::UInt(_) | Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// The text of a scalar, as a map key or a CEL source: YAML may have
    /// read `1` or `true` as a number or a bool where we want the text back.
    pub fn scalar_text(&self) -> Option<String> {
        match self {
            Value::Str(s) => Some(s.clone()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Int(i) => Some(i.to_string()),
            Value::UInt(u) => Some(u.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Null | Value::Seq(_) | Value::Map(_) => None,
        }
    }

    /// The value as JSON, for an inline JSON Schema.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Int(i) => serde_json::Value::from(*i),
            Value::UInt(u) => serde_json::Value::from(*u),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Value::Str(s) => serde_json::Value::String(s.clone()),
            Value::Seq(items) => items.iter().map(|n| n.value.to_json()).collect(),
            Value::Map(entries) => serde_json::Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| {
                        let key = k.value.scalar_text().unwrap_or_default();
                        (key, v.value.to_json())
                    })
                    .collect(),
            ),
        }
    }
}

/// A YAML syntax error and where the parser noticed it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SyntaxError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Parses one YAML document. An empty document (or one of only comments) is
/// `Value::Null`.
pub(crate) fn parse(source: &str) -> Result<Node, SyntaxError> {
    let options = serde_saphyr::options! {
        strict_booleans: true,
        duplicate_keys: DuplicateKeyPolicy::PassThrough,
        with_snippet: false,
    };
    serde_saphyr::from_str_with_options::<Node>(source, options).map_err(|err| {
        let (line, column) = err
            .location()
            .map(|l| (to_usize(l.line()), to_usize(l.column())))
            .unwrap_or((1, 1));
        let message = UserMessageFormatter
            .format_message(err.without_snippet())
            .into_owned();
        SyntaxError {
            line: line.max(1),
            column: column.max(1),
            message,
        }
    })
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<Value>::deserialize(deserializer)?;
        Ok(Node {
            line: to_usize(spanned.referenced.line()),
            column: to_usize(spanned.referenced.column()),
            value: spanned.value,
        })
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        Value::deserialize(deserializer)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::UInt(v))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        Ok(u64::try_from(v).map_or(Value::Float(v as f64), Value::UInt))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(Value::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry::<Node, Node>()? {
            entries.push(entry);
        }
        Ok(Value::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: usize, column: usize, value: Value) -> Node {
        Node {
            line,
            column,
            value,
        }
    }

    /// Every node carries the place it starts, keys included.
    #[test]
    fn nodes_know_where_they_are() {
        let node = parse("a: x\nb: [1, yes]\n").expect("valid YAML");
        let Value::Map(entries) = node.value else {
            panic!("not a map");
        };
        assert_eq!(entries[0].0, at(1, 1, Value::Str("a".into())));
        assert_eq!(entries[0].1, at(1, 4, Value::Str("x".into())));
        assert_eq!(
            entries[1].1,
            at(
                2,
                4,
                Value::Seq(vec![
                    at(2, 5, Value::UInt(1)),
                    at(2, 8, Value::Str("yes".into()))
                ])
            )
        );
    }

    /// A repeated key reaches the loader instead of failing the parse.
    #[test]
    fn duplicate_keys_pass_through() {
        let node = parse("a: 1\na: 2\n").expect("valid YAML");
        let Value::Map(entries) = node.value else {
            panic!("not a map");
        };
        assert_eq!(entries.len(), 2);
    }

    /// Syntax errors come with a place and a message without the place in it.
    #[test]
    fn syntax_errors_have_a_place() {
        let err = parse("a: x\n  b: y\n").expect_err("invalid YAML");
        assert_eq!((err.line, err.column), (2, 4));
        assert_eq!(
            err.message,
            "mapping values are not allowed in this context"
        );
    }

    /// An empty file is null, not an error.
    #[test]
    fn empty_is_null() {
        assert_eq!(parse("").expect("empty").value, Value::Null);
        assert_eq!(
            parse("# only a comment\n").expect("comment").value,
            Value::Null
        );
    }
}
