//! Postgres text-format values to JSON.
//!
//! The replication connection runs with `DateStyle=ISO`, `TimeZone=UTC`,
//! `bytea_output=hex` and `extra_float_digits=3`, so every column value
//! arrives as Postgres's own text output. This module maps that text onto the
//! JSON the event envelope carries. The rules are the product contract:
//!
//! - `bool` becomes a JSON boolean;
//! - `int2`, `int4`, `int8` and `oid` become JSON numbers;
//! - `float4` and `float8` become JSON numbers, except `NaN`, `Infinity` and
//!   `-Infinity`, which JSON cannot spell and so stay strings;
//! - `numeric` stays a string with its exact text, so nobody rounds it
//!   through a double;
//! - `json` and `jsonb` are embedded as parsed JSON, numbers keeping every
//!   digit (serde_json's `arbitrary_precision`);
//! - arrays become JSON arrays whose elements follow the same rules;
//! - everything else is the text output as a JSON string.
//!
//! It runs per column per row, so it avoids allocating beyond the value it
//! builds.

use serde_json::{Number, Value};

/// How a column's text output maps to JSON. Resolved once per column (from
/// the type OID in a Relation message), then applied to every row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueKind {
    /// `bool`: `t`/`f` become `true`/`false`.
    Bool,
    /// `int2`, `int4`, `int8`, `oid`: JSON numbers.
    Int,
    /// `float4`, `float8`: JSON numbers; `NaN` and `±Infinity` stay strings.
    Float,
    /// `numeric`: the exact text as a string, since it can exceed any double.
    Numeric,
    /// `json`, `jsonb`: the document itself rather than a string holding it.
    Json,
    /// Any other type: its text output as a string.
    Text,
    /// An array (of any number of dimensions) of `element`, whose text form
    /// separates elements with `delimiter` (`;` for `box`, `,` otherwise).
    Array {
        element: Box<ValueKind>,
        delimiter: u8,
    },
}

/// The OID of `box`, the one built-in type whose array delimiter is `;`.
const BOX_OID: u32 = 603;

impl ValueKind {
    /// The kind of a built-in type OID, or None for OIDs not known statically
    /// (user types: the caller resolves those through `pg_type`).
    pub fn builtin(oid: u32) -> Option<ValueKind> {
        if let Some(kind) = builtin_scalar(oid) {
            return Some(kind);
        }
        let element = builtin_array_element(oid)?;
        Some(ValueKind::Array {
            element: Box::new(builtin_scalar(element)?),
            delimiter: if element == BOX_OID { b';' } else { b',' },
        })
    }
}

/// Kinds of the built-in base, range and multirange types (`pg_catalog`
/// types that have an array type), as listed in PostgreSQL's `pg_type.dat`.
fn builtin_scalar(oid: u32) -> Option<ValueKind> {
    Some(match oid {
        16 => ValueKind::Bool,
        20 | 21 | 23 | 26 => ValueKind::Int,
        700 | 701 => ValueKind::Float,
        1700 => ValueKind::Numeric,
        114 | 3802 => ValueKind::Json,
        17      // bytea
        | 18    // char
        | 19    // name
        | 22    // int2vector
        | 24    // regproc
        | 25    // text
        | 27    // tid
        | 28    // xid
        | 29    // cid
        | 30    // oidvector
        | 142   // xml
        | 600   // point
        | 601   // lseg
        | 602   // path
        | 603   // box
        | 604   // polygon
        | 628   // line
        | 650   // cidr
        | 718   // circle
        | 774   // macaddr8
        | 790   // money
        | 829   // macaddr
        | 869   // inet
        | 1033  // aclitem
        | 1042  // bpchar
        | 1043  // varchar
        | 1082  // date
        | 1083  // time
        | 1114  // timestamp
        | 1184  // timestamptz
        | 1186  // interval
        | 1266  // timetz
        | 1560  // bit
        | 1562  // varbit
        | 1790  // refcursor
        | 2202  // regprocedure
        | 2203  // regoper
        | 2204  // regoperator
        | 2205  // regclass
        | 2206  // regtype
        | 2950  // uuid
        | 2970  // txid_snapshot
        | 3220  // pg_lsn
        | 3614  // tsvector
        | 3615  // tsquery
        | 3642  // gtsvector
        | 3734  // regconfig
        | 3769  // regdictionary
        | 3904  // int4range
        | 3906  // numrange
        | 3908  // tsrange
        | 3910  // tstzrange
        | 3912  // daterange
        | 3926  // int8range
        | 4072  // jsonpath
        | 4089  // regnamespace
        | 4096  // regrole
        | 4191  // regcollation
        | 4451  // int4multirange
        | 4532  // nummultirange
        | 4533  // tsmultirange
        | 4534  // tstzmultirange
        | 4535  // datemultirange
        | 4536  // int8multirange
        | 5038  // pg_snapshot
        | 5069  // xid8
        => ValueKind::Text,
        _ => return None,
    })
}

/// The element type OID of a built-in array type OID (`typarray` reversed).
fn builtin_array_element(array_oid: u32) -> Option<u32> {
    Some(match array_oid {
        1000 => 16,   // _bool
        1001 => 17,   // _bytea
        1002 => 18,   // _char
        1003 => 19,   // _name
        1016 => 20,   // _int8
        1005 => 21,   // _int2
        1006 => 22,   // _int2vector
        1007 => 23,   // _int4
        1008 => 24,   // _regproc
        1009 => 25,   // _text
        1028 => 26,   // _oid
        1010 => 27,   // _tid
        1011 => 28,   // _xid
        1012 => 29,   // _cid
        1013 => 30,   // _oidvector
        199 => 114,   // _json
        143 => 142,   // _xml
        1017 => 600,  // _point
        1018 => 601,  // _lseg
        1019 => 602,  // _path
        1020 => 603,  // _box
        1027 => 604,  // _polygon
        629 => 628,   // _line
        651 => 650,   // _cidr
        1021 => 700,  // _float4
        1022 => 701,  // _float8
        719 => 718,   // _circle
        775 => 774,   // _macaddr8
        791 => 790,   // _money
        1040 => 829,  // _macaddr
        1041 => 869,  // _inet
        1034 => 1033, // _aclitem
        1014 => 1042, // _bpchar
        1015 => 1043, // _varchar
        1182 => 1082, // _date
        1183 => 1083, // _time
        1115 => 1114, // _timestamp
        1185 => 1184, // _timestamptz
        1187 => 1186, // _interval
        1270 => 1266, // _timetz
        1561 => 1560, // _bit
        1563 => 1562, // _varbit
        1231 => 1700, // _numeric
        2201 => 1790, // _refcursor
        2207 => 2202, // _regprocedure
        2208 => 2203, // _regoper
        2209 => 2204, // _regoperator
        2210 => 2205, // _regclass
        2211 => 2206, // _regtype
        2951 => 2950, // _uuid
        2949 => 2970, // _txid_snapshot
        3221 => 3220, // _pg_lsn
        3643 => 3614, // _tsvector
        3645 => 3615, // _tsquery
        3644 => 3642, // _gtsvector
        3735 => 3734, // _regconfig
        3770 => 3769, // _regdictionary
        3807 => 3802, // _jsonb
        3905 => 3904, // _int4range
        3907 => 3906, // _numrange
        3909 => 3908, // _tsrange
        3911 => 3910, // _tstzrange
        3913 => 3912, // _daterange
        3927 => 3926, // _int8range
        4073 => 4072, // _jsonpath
        4090 => 4089, // _regnamespace
        4097 => 4096, // _regrole
        4192 => 4191, // _regcollation
        6150 => 4451, // _int4multirange
        6151 => 4532, // _nummultirange
        6152 => 4533, // _tsmultirange
        6153 => 4534, // _tstzmultirange
        6155 => 4535, // _datemultirange
        6157 => 4536, // _int8multirange
        5039 => 5038, // _pg_snapshot
        271 => 5069,  // _xid8
        _ => return None,
    })
}

/// A column's text did not have the form its type promises. Since Postgres
/// produced the text, this means the kind was resolved wrongly (or the
/// server encoding is not UTF-8), so the messages name what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    #[error("value is not valid UTF-8")]
    InvalidUtf8,
    #[error("invalid bool {0:?}: expected 't' or 'f'")]
    BadBool(String),
    #[error("invalid integer {0:?}")]
    BadInt(String),
    #[error("invalid floating-point number {0:?}")]
    BadFloat(String),
    #[error("invalid JSON: {0}")]
    BadJson(#[source] serde_json::Error),
    #[error("malformed array at byte {at}: {reason}")]
    MalformedArray { at: usize, reason: &'static str },
}

/// Converts one value's text output to JSON according to `kind`. SQL NULLs
/// never get here (pgoutput marks them separately); NULL array elements do.
pub fn text_to_json(kind: &ValueKind, text: &[u8]) -> Result<Value, ValueError> {
    match kind {
        ValueKind::Bool => match text {
            b"t" => Ok(Value::Bool(true)),
            b"f" => Ok(Value::Bool(false)),
            _ => Err(ValueError::BadBool(excerpt(text))),
        },
        ValueKind::Int => int_to_json(text),
        ValueKind::Float => float_to_json(text),
        ValueKind::Numeric | ValueKind::Text => Ok(Value::String(utf8(text)?.to_owned())),
        ValueKind::Json => serde_json::from_slice(text).map_err(ValueError::BadJson),
        ValueKind::Array { element, delimiter } => array_to_json(element, *delimiter, text),
    }
}

fn utf8(text: &[u8]) -> Result<&str, ValueError> {
    std::str::from_utf8(text).map_err(|_| ValueError::InvalidUtf8)
}

/// The start of an offending value, for error messages that stay short.
fn excerpt(text: &[u8]) -> String {
    const MAX: usize = 64;
    let mut s = String::from_utf8_lossy(&text[..text.len().min(MAX)]).into_owned();
    if text.len() > MAX {
        s.push('…');
    }
    s
}

/// Integers go through `i64` (every integer type fits), never through `f64`.
fn int_to_json(text: &[u8]) -> Result<Value, ValueError> {
    let bad = || ValueError::BadInt(excerpt(text));
    let s = std::str::from_utf8(text).map_err(|_| bad())?;
    let n: i64 = s.parse().map_err(|_| bad())?;
    Ok(Value::Number(Number::from(n)))
}

/// Floats keep Postgres's shortest exact digits: with `arbitrary_precision`
/// a `Number` parsed from text holds that text rather than an `f64`.
fn float_to_json(text: &[u8]) -> Result<Value, ValueError> {
    match text {
        b"NaN" | b"Infinity" | b"-Infinity" => Ok(Value::String(utf8(text)?.to_owned())),
        _ => {
            let bad = || ValueError::BadFloat(excerpt(text));
            let s = std::str::from_utf8(text).map_err(|_| bad())?;
            s.parse::<Number>().map(Value::Number).map_err(|_| bad())
        }
    }
}

/// Postgres allows 6 dimensions; the limit here only guards the recursive
/// drop and serialization of `Value` against absurd nesting.
const MAX_ARRAY_DEPTH: usize = 32;

/// Where the array parser is between tokens.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ArrayState {
    /// Before the outermost `{`.
    Start,
    /// Just after a `{`: an element, a nested `{` or `}` may follow.
    Open,
    /// Just after a delimiter: an element or a nested `{` must follow.
    Item,
    /// Just after an element or a nested `}`: a delimiter or `}` must follow.
    After,
}

/// Where a quoted element's content ended up.
enum Quoted {
    /// No escapes: the content is this range of the input.
    Slice(std::ops::Range<usize>),
    /// Escapes removed: the content is in the scratch buffer.
    Scratch,
}

fn malformed(at: usize, reason: &'static str) -> ValueError {
    ValueError::MalformedArray { at, reason }
}

/// Whitespace as Postgres's array parser skips it.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn skip_space(text: &[u8], mut pos: usize) -> usize {
    while text.get(pos).is_some_and(|&b| is_space(b)) {
        pos += 1;
    }
    pos
}

/// Parses `array_out` text: an optional dimension decoration
/// (`[0:2]=`, present when a lower bound is not 1), then nested braces.
/// Elements are bare (`NULL` unquoted means SQL NULL) or double-quoted with
/// backslash escapes. Iterative, so nesting cannot overflow the stack.
fn array_to_json(element: &ValueKind, delimiter: u8, text: &[u8]) -> Result<Value, ValueError> {
    let mut pos = skip_dimensions(text)?;
    // The arrays still open, innermost last.
    let mut levels: Vec<Vec<Value>> = Vec::new();
    let mut scratch = Vec::new();
    let mut state = ArrayState::Start;
    loop {
        pos = skip_space(text, pos);
        let Some(&c) = text.get(pos) else {
            return Err(malformed(pos, "unterminated array"));
        };
        match state {
            ArrayState::Start if c != b'{' => return Err(malformed(pos, "expected '{'")),
            ArrayState::Start | ArrayState::Open | ArrayState::Item if c == b'{' => {
                if levels.len() == MAX_ARRAY_DEPTH {
                    return Err(malformed(pos, "array nested too deeply"));
                }
                levels.push(Vec::new());
                pos += 1;
                state = ArrayState::Open;
            }
            ArrayState::Open | ArrayState::After if c == b'}' => {
                pos += 1;
                let done = Value::Array(levels.pop().unwrap_or_default());
                match levels.last_mut() {
                    Some(parent) => parent.push(done),
                    None if skip_space(text, pos) == text.len() => return Ok(done),
                    None => return Err(malformed(pos, "trailing characters after array")),
                }
                state = ArrayState::After;
            }
            ArrayState::After if c == delimiter => {
                pos += 1;
                state = ArrayState::Item;
            }
            ArrayState::After => return Err(malformed(pos, "expected delimiter or '}'")),
            ArrayState::Start | ArrayState::Open | ArrayState::Item => {
                let value = if c == b'"' {
                    let (quoted, next) = unquote(text, pos, &mut scratch)?;
                    pos = next;
                    let content = match quoted {
                        Quoted::Slice(range) => &text[range],
                        Quoted::Scratch => &scratch[..],
                    };
                    text_to_json(element, content)?
                } else {
                    let start = pos;
                    while let Some(&b) = text.get(pos) {
                        if b == delimiter || b == b'}' {
                            break;
                        }
                        if matches!(b, b'{' | b'"' | b'\\') {
                            return Err(malformed(pos, "unexpected character in unquoted element"));
                        }
                        pos += 1;
                    }
                    let mut end = pos;
                    while end > start && is_space(text[end - 1]) {
                        end -= 1;
                    }
                    let content = &text[start..end];
                    if content.is_empty() {
                        return Err(malformed(start, "empty unquoted element"));
                    }
                    if content.eq_ignore_ascii_case(b"NULL") {
                        Value::Null
                    } else {
                        text_to_json(element, content)?
                    }
                };
                let Some(level) = levels.last_mut() else {
                    return Err(malformed(pos, "element outside braces"));
                };
                level.push(value);
                state = ArrayState::After;
            }
        }
    }
}

/// Skips a leading `[lo:hi][lo:hi]=` decoration, returning where `{` should be.
fn skip_dimensions(text: &[u8]) -> Result<usize, ValueError> {
    let mut pos = 0;
    if text.first() != Some(&b'[') {
        return Ok(pos);
    }
    while text.get(pos) == Some(&b'[') {
        let Some(len) = text[pos..].iter().position(|&b| b == b']') else {
            return Err(malformed(pos, "unterminated dimension"));
        };
        let bounds = &text[pos + 1..pos + len];
        if !bounds
            .iter()
            .all(|&b| b.is_ascii_digit() || matches!(b, b':' | b'-' | b'+'))
        {
            return Err(malformed(pos, "invalid dimension"));
        }
        pos += len + 1;
    }
    if text.get(pos) != Some(&b'=') {
        return Err(malformed(pos, "expected '=' after dimensions"));
    }
    Ok(pos + 1)
}

/// Reads the double-quoted element starting at `start` (the opening quote).
/// Returns where its content is and the position after the closing quote.
fn unquote(
    text: &[u8],
    start: usize,
    scratch: &mut Vec<u8>,
) -> Result<(Quoted, usize), ValueError> {
    let body = start + 1;
    // Fast path: no backslash before the closing quote, so no copy.
    let mut pos = body;
    loop {
        match text.get(pos) {
            None => return Err(malformed(start, "unterminated quoted element")),
            Some(b'"') => return Ok((Quoted::Slice(body..pos), pos + 1)),
            Some(b'\\') => break,
            Some(_) => pos += 1,
        }
    }
    scratch.clear();
    scratch.extend_from_slice(&text[body..pos]);
    loop {
        match text.get(pos) {
            None => return Err(malformed(start, "unterminated quoted element")),
            Some(b'"') => return Ok((Quoted::Scratch, pos + 1)),
            Some(b'\\') => {
                let Some(&escaped) = text.get(pos + 1) else {
                    return Err(malformed(pos, "backslash at end of input"));
                };
                scratch.push(escaped);
                pos += 2;
            }
            Some(&b) => {
                scratch.push(b);
                pos += 1;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use serde_json::json;

    fn conv(oid: u32, text: &str) -> Value {
        let kind = ValueKind::builtin(oid).unwrap();
        text_to_json(&kind, text.as_bytes()).unwrap()
    }

    fn conv_err(oid: u32, text: &str) -> ValueError {
        let kind = ValueKind::builtin(oid).unwrap();
        text_to_json(&kind, text.as_bytes()).unwrap_err()
    }

    #[test]
    fn builtin_kinds() {
        use ValueKind::*;
        assert_eq!(ValueKind::builtin(16), Some(Bool));
        for oid in [20, 21, 23, 26] {
            assert_eq!(ValueKind::builtin(oid), Some(Int), "oid {oid}");
        }
        assert_eq!(ValueKind::builtin(700), Some(Float));
        assert_eq!(ValueKind::builtin(701), Some(Float));
        assert_eq!(ValueKind::builtin(1700), Some(Numeric));
        assert_eq!(ValueKind::builtin(114), Some(Json));
        assert_eq!(ValueKind::builtin(3802), Some(Json));
        let texts = [
            25, 1043, 1042, 19, 2950, 17, 1082, 1083, 1266, 1114, 1184, 1186, 869, 650, 829, 790,
            1560, 1562, 142, 600, 603, 3614, 18, 3904,
        ];
        for oid in texts {
            assert_eq!(ValueKind::builtin(oid), Some(Text), "oid {oid}");
        }
        assert_eq!(ValueKind::builtin(0), None);
        assert_eq!(ValueKind::builtin(16_384), None);
    }

    #[test]
    fn builtin_array_kinds() {
        use ValueKind::*;
        let arr = |element: ValueKind, delimiter: u8| {
            Some(Array {
                element: Box::new(element),
                delimiter,
            })
        };
        let cases = [
            (1000, Bool),
            (1005, Int),
            (1007, Int),
            (1016, Int),
            (1028, Int),
            (1021, Float),
            (1022, Float),
            (1231, Numeric),
            (199, Json),
            (3807, Json),
            (1009, Text),
            (1015, Text),
            (2951, Text),
            (1185, Text),
            (1115, Text),
            (1182, Text),
            (1001, Text),
            (1014, Text),
            (1003, Text),
            (1041, Text),
            (1187, Text),
            (1183, Text),
            (1270, Text),
            (791, Text),
            (1002, Text),
            (1017, Text),
        ];
        for (oid, element) in cases {
            assert_eq!(ValueKind::builtin(oid), arr(element, b','), "oid {oid}");
        }
        assert_eq!(ValueKind::builtin(1020), arr(Text, b';'));
    }

    #[test]
    fn every_builtin_array_element_is_known() {
        for oid in 0..10_000 {
            if let Some(element) = builtin_array_element(oid) {
                assert!(builtin_scalar(element).is_some(), "array {oid}");
            }
        }
    }

    #[test]
    fn bools() {
        assert_eq!(conv(16, "t"), json!(true));
        assert_eq!(conv(16, "f"), json!(false));
        assert!(matches!(conv_err(16, "true"), ValueError::BadBool(_)));
    }

    #[test]
    fn ints() {
        assert_eq!(conv(23, "42"), json!(42));
        assert_eq!(conv(21, "-32768"), json!(-32768));
        assert_eq!(conv(26, "4294967295"), json!(4_294_967_295_u64));
        let min = conv(20, "-9223372036854775808");
        assert_eq!(serde_json::to_string(&min).unwrap(), "-9223372036854775808");
        let max = conv(20, "9223372036854775807");
        assert_eq!(serde_json::to_string(&max).unwrap(), "9223372036854775807");
        for bad in ["", "-", "1.5", "12a", "9223372036854775808", " 1"] {
            assert!(
                matches!(conv_err(23, bad), ValueError::BadInt(_)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn floats() {
        for text in ["1.5", "-0", "1e+20", "1.2345678901234567e-05", "0.1"] {
            assert_eq!(serde_json::to_string(&conv(701, text)).unwrap(), text);
        }
        assert_eq!(conv(700, "NaN"), json!("NaN"));
        assert_eq!(conv(701, "Infinity"), json!("Infinity"));
        assert_eq!(conv(701, "-Infinity"), json!("-Infinity"));
        for bad in ["", "inf", "1.5x", "nan"] {
            assert!(
                matches!(conv_err(701, bad), ValueError::BadFloat(_)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn numeric_is_exact_string() {
        let text = "123456789012345678901234567890.000000000000000001";
        assert_eq!(conv(1700, text), json!(text));
        assert_eq!(conv(1700, "NaN"), json!("NaN"));
        assert_eq!(conv(1700, "Infinity"), json!("Infinity"));
    }

    #[test]
    fn json_is_embedded() {
        assert_eq!(
            conv(3802, r#"{"a": [1, "x", null], "b": {"c": true}}"#),
            json!({"a": [1, "x", null], "b": {"c": true}})
        );
        assert_eq!(conv(114, "\"just a string\""), json!("just a string"));
        assert!(matches!(conv_err(3802, "{"), ValueError::BadJson(_)));
    }

    #[test]
    fn json_numbers_keep_all_digits() {
        let v = conv(
            3802,
            r#"{"big": 123456789012345678901234567890, "f": 0.12345678901234567890123}"#,
        );
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"big":123456789012345678901234567890,"f":0.12345678901234567890123}"#
        );
    }

    #[test]
    fn text_types_are_strings() {
        assert_eq!(conv(25, "hello"), json!("hello"));
        assert_eq!(conv(25, ""), json!(""));
        assert_eq!(conv(17, "\\xdeadbeef"), json!("\\xdeadbeef"));
        assert_eq!(
            conv(1184, "2024-01-02 03:04:05.123456+00"),
            json!("2024-01-02 03:04:05.123456+00")
        );
        assert!(matches!(
            text_to_json(&ValueKind::Text, b"\xff"),
            Err(ValueError::InvalidUtf8)
        ));
    }

    #[test]
    fn arrays_of_scalars() {
        assert_eq!(conv(1007, "{1,2,3}"), json!([1, 2, 3]));
        assert_eq!(conv(1000, "{t,f,NULL}"), json!([true, false, null]));
        assert_eq!(conv(1231, "{1.50,NaN}"), json!(["1.50", "NaN"]));
        assert_eq!(conv(1007, "{}"), json!([]));
        assert_eq!(conv(1009, "{}"), json!([]));
    }

    #[test]
    fn float_arrays_with_special_values() {
        assert_eq!(
            serde_json::to_string(&conv(1022, "{1.5,NaN,Infinity,-Infinity,NULL,1e+100}")).unwrap(),
            r#"[1.5,"NaN","Infinity","-Infinity",null,1e+100]"#
        );
    }

    #[test]
    fn quoted_null_is_a_string_bare_null_is_null() {
        assert_eq!(
            conv(1009, r#"{"NULL",NULL,null,"null"}"#),
            json!(["NULL", null, null, "null"])
        );
    }

    #[test]
    fn quoted_elements_with_escapes() {
        assert_eq!(
            conv(
                1009,
                r#"{"a,b","say \"hi\"","back\\slash","","{x}"," sp "}"#
            ),
            json!(["a,b", "say \"hi\"", "back\\slash", "", "{x}", " sp "])
        );
        assert_eq!(conv(1009, r#"{"é",ü}"#), json!(["é", "ü"]));
    }

    #[test]
    fn arrays_of_json_with_nested_quotes() {
        // What `select array['{"a": "x\"y", "b": [1, 2]}'::jsonb, 'null', '"s"', NULL]` prints.
        let text = r#"{"{\"a\": \"x\\\"y\", \"b\": [1, 2]}","null","\"s\"",NULL}"#;
        assert_eq!(
            conv(3807, text),
            json!([{"a": "x\"y", "b": [1, 2]}, null, "s", null])
        );
        // Bare JSON scalars need no quoting, and NULL is SQL NULL.
        assert_eq!(conv(199, "{1,true,NULL}"), json!([1, true, null]));
        let big = conv(3807, r#"{"{\"n\": 1234567890123456789012}"}"#);
        assert_eq!(
            serde_json::to_string(&big).unwrap(),
            r#"[{"n":1234567890123456789012}]"#
        );
    }

    #[test]
    fn multi_dimensional_arrays() {
        assert_eq!(conv(1007, "{{1,2},{3,4}}"), json!([[1, 2], [3, 4]]));
        assert_eq!(
            conv(1009, r#"{{{a,"b c"}},{{NULL,d}}}"#),
            json!([[["a", "b c"]], [[null, "d"]]])
        );
    }

    #[test]
    fn dimension_decoration_is_skipped() {
        assert_eq!(conv(1007, "[0:2]={1,2,3}"), json!([1, 2, 3]));
        assert_eq!(
            conv(1007, "[-1:0][2:3]={{1,2},{3,4}}"),
            json!([[1, 2], [3, 4]])
        );
    }

    #[test]
    fn box_arrays_use_semicolons() {
        assert_eq!(
            conv(1020, "{(1,1),(0,0);(3,3),(2,2)}"),
            json!(["(1,1),(0,0)", "(3,3),(2,2)"])
        );
        assert_eq!(
            conv(1017, r#"{"(1,2)","(3,4)"}"#),
            json!(["(1,2)", "(3,4)"])
        );
        assert_eq!(conv(3905, r#"{"[1,5)",NULL}"#), json!(["[1,5)", null]));
    }

    #[test]
    fn whitespace_around_elements_is_ignored() {
        assert_eq!(conv(1007, "{ 1 , 2 }"), json!([1, 2]));
        assert_eq!(conv(1009, "{a b, c}"), json!(["a b", "c"]));
    }

    #[test]
    fn malformed_arrays_are_errors() {
        for bad in [
            "", "1,2", "{1,2", "{1,,2}", "{1,}", "{,1}", "{1}x", "{\"a}", "{a\"b}", "[1:2{1}",
            "[1:2]{1}", "[x]={1}", "{{1},2", "{1 {2}}", "{\"a\\",
        ] {
            let err = text_to_json(&ValueKind::builtin(1009).unwrap(), bad.as_bytes());
            assert!(
                matches!(err, Err(ValueError::MalformedArray { .. })),
                "{bad:?}: {err:?}"
            );
        }
        // Element errors surface as the element's own error.
        assert!(matches!(conv_err(1007, "{1,x}"), ValueError::BadInt(_)));
    }

    #[test]
    fn deep_nesting_is_rejected_not_overflowed() {
        let text = format!("{}{}", "{".repeat(10_000), "}".repeat(10_000));
        assert!(matches!(
            conv_err(1007, &text),
            ValueError::MalformedArray { .. }
        ));
        let ok = format!("{}1{}", "{".repeat(6), "}".repeat(6));
        assert_eq!(conv(1007, &ok), json!([[[[[[1]]]]]]));
    }

    #[test]
    fn error_messages_are_clear() {
        assert_eq!(
            conv_err(1007, "{1,,2}").to_string(),
            "malformed array at byte 3: empty unquoted element"
        );
        assert_eq!(conv_err(23, "x").to_string(), "invalid integer \"x\"");
    }
}
