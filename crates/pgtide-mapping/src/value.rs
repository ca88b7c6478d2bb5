//! Values crossing between JSON rows and CEL.
//!
//! Rows arrive as JSON objects (numeric columns as exact strings, per the
//! contract). They are turned into CEL values that borrow the row's strings,
//! so binding a row costs one small allocation per column and no copy of its
//! text. Results go back to JSON by walking the CEL value directly.
//!
//! `serde_json` is built with `arbitrary_precision` in this workspace, so a
//! `Number` must never go through serde here (it would serialize as a magic
//! struct); numbers are read with `as_i64`/`as_u64`/`as_f64`.

use cel::ExecutionError;
use cel::common::traits::Indexer;
use cel::common::types::{
    CelBool, CelBytes, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelOptional,
    CelString, CelUInt, NULL_TYPE, Type,
};
use cel::common::value::{CowVal, StaticVal, Val};
use serde_json::{Map, Number, Value as Json};
use std::any::Any;
use std::collections::HashMap;
use std::fmt::Write as _;

/// A JSON value as a CEL value: numbers that fit `i64` are `int`, else those
/// that fit `u64` are `uint`, else `double`; strings borrow from `value`.
pub(crate) fn json_to_cel<'a>(value: &'a Json) -> Box<dyn Val + 'a> {
    match value {
        Json::Null => Box::new(CelNull),
        Json::Bool(b) => Box::new(CelBool::from(*b)),
        Json::Number(n) => number_to_cel(n),
        Json::String(s) => Box::new(CelString::from(s.as_str())),
        Json::Array(items) => Box::new(CelList::from(
            items.iter().map(json_to_cel).collect::<Vec<_>>(),
        )),
        Json::Object(map) => Box::new(object_to_cel(map)),
    }
}

/// A JSON object as a CEL map with string keys borrowed from it.
pub(crate) fn object_to_cel(map: &Map<String, Json>) -> CelMap<'_> {
    let mut out: HashMap<CelMapKey<'_>, Box<dyn Val + '_>> = HashMap::with_capacity(map.len());
    for (k, v) in map {
        out.insert(
            CelMapKey::String(CelString::from(k.as_str())),
            json_to_cel(v),
        );
    }
    CelMap::from(out)
}

fn number_to_cel(n: &Number) -> Box<dyn Val + 'static> {
    if let Some(i) = n.as_i64() {
        Box::new(CelInt::from(i))
    } else if let Some(u) = n.as_u64() {
        Box::new(CelUInt::from(u))
    } else if let Some(f) = n.as_f64() {
        Box::new(CelDouble::from(f))
    } else {
        // Only reachable for numbers beyond f64's range: keep the digits.
        Box::new(CelString::from(n.to_string()))
    }
}

/// What a CEL value cannot become in JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ToJsonError {
    #[error("bytes cannot be put in an event; convert them with string(...) or base64 yourself")]
    Bytes,
    #[error("a value of type {0} cannot be put in an event")]
    Unsupported(String),
}

/// A CEL result as JSON: ints, uints and doubles become numbers (a
/// non-finite double becomes the string `NaN`, `Infinity` or `-Infinity`,
/// as Postgres floats do), lists arrays, maps objects (non-string keys
/// written as text), an optional its value or null. Bytes are refused
/// rather than guessed at.
pub(crate) fn cel_to_json(value: &dyn Val) -> Result<Json, ToJsonError> {
    if let Some(s) = value.downcast_ref::<CelString>() {
        return Ok(Json::String(s.inner().to_owned()));
    }
    if let Some(i) = value.downcast_ref::<CelInt>() {
        return Ok(Json::from(*i.inner()));
    }
    if let Some(b) = value.downcast_ref::<CelBool>() {
        return Ok(Json::Bool(*b.inner()));
    }
    if let Some(u) = value.downcast_ref::<CelUInt>() {
        return Ok(Json::from(*u.inner()));
    }
    if let Some(d) = value.downcast_ref::<CelDouble>() {
        return Ok(double_to_json(*d.inner()));
    }
    if value.downcast_ref::<CelNull>().is_some() || value.downcast_ref::<AbsentRow>().is_some() {
        return Ok(Json::Null);
    }
    if let Some(list) = value.downcast_ref::<CelList>() {
        return list
            .iter()
            .map(|v| cel_to_json(v.as_ref()))
            .collect::<Result<Vec<_>, _>>()
            .map(Json::Array);
    }
    if let Some(map) = value.downcast_ref::<CelMap>() {
        let mut out = Map::new();
        for (k, v) in map.inner() {
            out.insert(key_text(k), cel_to_json(v.as_ref())?);
        }
        return Ok(Json::Object(out));
    }
    if let Some(opt) = value.downcast_ref::<CelOptional>() {
        return opt.inner().map_or(Ok(Json::Null), cel_to_json);
    }
    if value.downcast_ref::<CelBytes>().is_some() {
        return Err(ToJsonError::Bytes);
    }
    Err(ToJsonError::Unsupported(value.get_type().name().to_owned()))
}

/// The CEL type of a value for messages, with `null` for `null_type`.
pub(crate) fn type_name(value: &dyn Val) -> String {
    if value.downcast_ref::<CelNull>().is_some() || value.downcast_ref::<AbsentRow>().is_some() {
        return "null".to_owned();
    }
    value.get_type().name().to_owned()
}

fn key_text(key: &CelMapKey<'_>) -> String {
    match key {
        CelMapKey::String(s) => s.inner().to_owned(),
        CelMapKey::Int(i) => i.inner().to_string(),
        CelMapKey::UInt(u) => u.inner().to_string(),
        CelMapKey::Bool(b) => b.inner().to_string(),
    }
}

pub(crate) fn double_to_json(d: f64) -> Json {
    match Number::from_f64(d) {
        Some(n) => Json::Number(n),
        None if d.is_nan() => Json::String("NaN".into()),
        None if d > 0.0 => Json::String("Infinity".into()),
        None => Json::String("-Infinity".into()),
    }
}

/// Appends a CEL scalar as text to `out`, for topic template holes and
/// `key`: strings as they are, numbers in decimal, bools as `true`/`false`.
/// Null, lists, maps and bytes have no obvious text and are refused: the
/// error is the name of the value's type. Appending rather than returning a
/// string lets a topic be rendered in one buffer.
pub(crate) fn write_cel_text(value: &dyn Val, out: &mut String) -> Result<(), String> {
    // Writing to a String cannot fail.
    if let Some(s) = value.downcast_ref::<CelString>() {
        out.push_str(s.inner());
    } else if let Some(i) = value.downcast_ref::<CelInt>() {
        _ = write!(out, "{}", i.inner());
    } else if let Some(u) = value.downcast_ref::<CelUInt>() {
        _ = write!(out, "{}", u.inner());
    } else if let Some(d) = value.downcast_ref::<CelDouble>() {
        _ = write!(out, "{}", d.inner());
    } else if let Some(b) = value.downcast_ref::<CelBool>() {
        _ = write!(out, "{}", b.inner());
    } else {
        return Err(type_name(value));
    }
    Ok(())
}

/// Appends a JSON scalar as text to `out`, the same way as
/// [`write_cel_text`], for the fast path that reads a column without CEL.
pub(crate) fn write_json_text(value: &Json, out: &mut String) -> Result<(), &'static str> {
    // Writing to a String cannot fail.
    match value {
        Json::String(s) => out.push_str(s),
        Json::Bool(b) => _ = write!(out, "{b}"),
        // A number in canonical integer form short enough for an `i64` is
        // its own decimal text (the common case, an integer column).
        Json::Number(n) if is_plain_int(n.as_str()) => out.push_str(n.as_str()),
        Json::Number(n) => {
            _ = if let Some(i) = n.as_i64() {
                write!(out, "{i}")
            } else if let Some(u) = n.as_u64() {
                write!(out, "{u}")
            } else if let Some(f) = n.as_f64() {
                write!(out, "{f}")
            } else {
                write!(out, "{n}")
            }
        }
        Json::Null => return Err("null"),
        Json::Array(_) => return Err("list"),
        Json::Object(_) => return Err("map"),
    }
    Ok(())
}

/// Whether `text` is an integer as Rust prints an `i64`: an optional `-`,
/// then digits without a leading zero, at most 18 of them (so it fits).
fn is_plain_int(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text).as_bytes();
    match digits {
        [] => false,
        [b'0'] => text.len() == 1,
        [b'0', ..] => false,
        _ => digits.len() <= 18 && digits.iter().all(u8::is_ascii_digit),
    }
}

/// `old` when the change has no old row (an insert, or an update without
/// `REPLICA IDENTITY FULL`), and `new` on a delete or truncate.
///
/// It is `null` (`old == null` holds, and it becomes JSON `null`), with one
/// leniency: selecting a field of it, `old.status`, gives `null` instead of
/// an error. That is what lets a mapping on `[insert, update]` write
/// `previous_status: old.status`, as the contract's own example does, and get
/// `null` on inserts. `has(old.status)` is therefore `true` on an absent row.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct AbsentRow;

impl Val for AbsentRow {
    fn get_type(&self) -> &Type {
        <Self as Val>::cel_type()
    }

    fn cel_type() -> &'static Type {
        &NULL_TYPE
    }

    fn as_indexer<'b, 'v>(&'b self) -> Option<&'b (dyn Indexer + 'v)>
    where
        Self: 'v,
    {
        Some(self)
    }

    fn equals(&self, other: &dyn Val) -> bool {
        other.downcast_ref::<CelNull>().is_some() || other.downcast_ref::<AbsentRow>().is_some()
    }

    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v>
    where
        Self: 'v,
    {
        Box::new(AbsentRow)
    }

    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }
}

impl StaticVal for AbsentRow {}

impl Indexer for AbsentRow {
    fn get<'b, 'v>(&'b self, _idx: &dyn Val) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        Ok(CowVal::owned(CelNull))
    }

    fn steal<'v>(self: Box<Self>, _idx: &dyn Val) -> Result<Box<dyn Val + 'v>, ExecutionError>
    where
        Self: 'v,
    {
        Ok(Box::new(CelNull))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Numbers pick the narrowest CEL type that holds them exactly.
    #[test]
    fn json_numbers() {
        let v = json!(-3);
        assert_eq!(
            json_to_cel(&v).downcast_ref::<CelInt>().map(|i| *i.inner()),
            Some(-3)
        );
        let v = json!(u64::MAX);
        assert_eq!(
            json_to_cel(&v)
                .downcast_ref::<CelUInt>()
                .map(|u| *u.inner()),
            Some(u64::MAX)
        );
        let v = json!(1.5);
        assert_eq!(
            json_to_cel(&v)
                .downcast_ref::<CelDouble>()
                .map(|d| *d.inner()),
            Some(1.5)
        );
    }

    /// A JSON row survives the trip to CEL and back.
    #[test]
    fn round_trip() {
        let v = json!({"a": "x", "b": [1, 2.5, true, null], "c": {"d": "12.50"}});
        let cel = json_to_cel(&v);
        assert_eq!(cel_to_json(cel.as_ref()), Ok(v.clone()));
    }

    #[test]
    fn non_finite_doubles_become_strings() {
        assert_eq!(double_to_json(f64::NAN), json!("NaN"));
        assert_eq!(double_to_json(f64::INFINITY), json!("Infinity"));
        assert_eq!(double_to_json(f64::NEG_INFINITY), json!("-Infinity"));
    }

    #[test]
    fn bytes_are_refused() {
        let b = CelBytes::from(vec![1u8, 2]);
        assert_eq!(cel_to_json(&b), Err(ToJsonError::Bytes));
    }

    #[test]
    fn text() {
        fn cel(v: &dyn Val) -> Result<String, String> {
            let mut out = "x.".to_owned();
            write_cel_text(v, &mut out).map(|()| out)
        }
        fn json(v: &Json) -> Result<String, &'static str> {
            let mut out = "x.".to_owned();
            write_json_text(v, &mut out).map(|()| out)
        }
        assert_eq!(cel(&CelInt::from(7)), Ok("x.7".into()));
        assert_eq!(cel(&CelDouble::from(2.0)), Ok("x.2".into()));
        assert_eq!(cel(&CelNull), Err("null".into()));
        assert_eq!(json(&json!(7)), Ok("x.7".into()));
        assert_eq!(json(&json!("1.50")), Ok("x.1.50".into()));
        assert_eq!(
            json(&"2.50".parse::<Json>().expect("number")),
            Ok("x.2.5".into())
        );
        assert_eq!(json(&json!(null)), Err("null"));
        for (text, printed) in [
            ("-0", "x.0"),
            ("-12", "x.-12"),
            ("0", "x.0"),
            ("1e3", "x.1000"),
            ("123456789012345678", "x.123456789012345678"),
            ("9223372036854775807", "x.9223372036854775807"),
        ] {
            let n = Json::Number(text.parse().expect("number"));
            assert_eq!(json(&n), Ok(printed.into()), "{text}");
        }
    }
}
