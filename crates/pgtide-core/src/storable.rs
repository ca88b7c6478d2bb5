//! What PostgreSQL can store: a JSON value is checked before it is written to
//! a `jsonb` (or `text`) column, so a client's unstorable value is answered
//! as the client's mistake, with its JSON pointer, instead of failing in the
//! database.
//!
//! Two things JSON allows and PostgreSQL refuses:
//! - the NUL character (`\u0000`) in any string or object key: neither `text`
//!   nor `jsonb` can hold it;
//! - numbers `numeric` cannot represent (jsonb keeps numbers as `numeric`):
//!   a magnitude of 10^131072 or more (more than 131072 digits before the
//!   decimal point), more than 16383 digits after the decimal point as
//!   written (`0.10e-16382` has 16384), or an exponent of ±1073741823 or
//!   beyond (even on zero). These are PostgreSQL's own limits
//!   (`NUMERIC_WEIGHT_MAX`, `NUMERIC_DSCALE_MAX`, and the `INT_MAX / 2`
//!   exponent guard of `numeric_in`).

use std::fmt;

use serde_json::Value;

/// Most significant digit position (10^N) `numeric` can hold.
const MAX_DIGIT_POSITION: i64 = 131_071;
/// Most digits after the decimal point `numeric` can hold.
const MAX_SCALE: i64 = 16_383;
/// `numeric_in` refuses exponents this large in magnitude outright.
const EXPONENT_LIMIT: i64 = 1_073_741_823;

/// Why a value cannot be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A string holds U+0000.
    NulInString,
    /// An object key holds U+0000.
    NulInKey,
    /// A number outside what `numeric` represents.
    NumberOutOfRange(String),
}

/// An unstorable value: where (an RFC 6901 JSON pointer) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{pointer}: {problem}")]
pub struct Unstorable {
    pub pointer: String,
    pub problem: Problem,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::NulInString => f.write_str(
                "the string holds a NUL character (\\u0000), which PostgreSQL cannot store in text or jsonb",
            ),
            Problem::NulInKey => f.write_str(
                "the object key holds a NUL character (\\u0000), which PostgreSQL cannot store in jsonb",
            ),
            Problem::NumberOutOfRange(n) => {
                let shown: String = n.chars().take(40).collect();
                let ellipsis = if shown.len() < n.len() { "…" } else { "" };
                write!(
                    f,
                    "the number {shown}{ellipsis} is out of the range PostgreSQL's numeric (and so jsonb) can store: \
                     below 10^131072 in magnitude, at most 16383 digits after the decimal point"
                )
            }
        }
    }
}

/// Appends one reference token to a pointer, escaped as RFC 6901 says.
pub fn push_pointer(pointer: &str, token: &str) -> String {
    let mut out = String::with_capacity(pointer.len() + token.len() + 1);
    out.push_str(pointer);
    out.push('/');
    for ch in token.chars() {
        match ch {
            '~' => out.push_str("~0"),
            '/' => out.push_str("~1"),
            c => out.push(c),
        }
    }
    out
}

/// A string PostgreSQL's `text` can hold; `pointer` names it in the error.
pub fn check_text(pointer: &str, text: &str) -> Result<(), Unstorable> {
    if text.contains('\0') {
        return Err(Unstorable {
            pointer: pointer.to_owned(),
            problem: Problem::NulInString,
        });
    }
    Ok(())
}

/// The first part of `value` that `jsonb` cannot hold, in document order;
/// `pointer` is where `value` itself sits (`""` for the root, `/data`, …).
pub fn check_json(pointer: &str, value: &Value) -> Result<(), Unstorable> {
    match value {
        Value::Null | Value::Bool(_) => Ok(()),
        Value::String(s) => check_text(pointer, s),
        Value::Number(n) => {
            let text = n.to_string();
            if number_fits(&text) {
                Ok(())
            } else {
                Err(Unstorable {
                    pointer: pointer.to_owned(),
                    problem: Problem::NumberOutOfRange(text),
                })
            }
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, item)| check_json(&push_pointer(pointer, &i.to_string()), item)),
        Value::Object(map) => map.iter().try_for_each(|(key, item)| {
            let here = push_pointer(pointer, key);
            if key.contains('\0') {
                return Err(Unstorable {
                    pointer: here,
                    problem: Problem::NulInKey,
                });
            }
            check_json(&here, item)
        }),
    }
}

/// Whether the JSON number `text` fits PostgreSQL's `numeric`. Text that is
/// not a JSON number (which serde never produces) is answered `false`.
pub fn number_fits(text: &str) -> bool {
    let body = text.strip_prefix('-').unwrap_or(text);
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !digits(int) || !digits(frac) {
        return false;
    }
    let exponent = match exponent {
        None => 0,
        Some(e) => {
            let (negative, magnitude) = match e.as_bytes().first() {
                Some(b'-') => (true, &e[1..]),
                Some(b'+') => (false, &e[1..]),
                _ => (false, e),
            };
            if magnitude.is_empty() || !digits(magnitude) {
                return false;
            }
            let magnitude = magnitude.trim_start_matches('0');
            // More than 10 digits is beyond the limit whatever they are.
            if magnitude.len() > 10 {
                return false;
            }
            let m: i64 = magnitude.parse().unwrap_or(0);
            if negative { -m } else { m }
        }
    };
    if exponent.abs() >= EXPONENT_LIMIT {
        return false;
    }
    let frac_len = i64::try_from(frac.len()).unwrap_or(i64::MAX);
    if frac_len.saturating_sub(exponent) > MAX_SCALE {
        return false;
    }
    let int_len = i64::try_from(int.len()).unwrap_or(i64::MAX);
    let position = if let Some(i) = int.bytes().position(|b| b != b'0') {
        int_len - 1 - i as i64
    } else if let Some(j) = frac.bytes().position(|b| b != b'0') {
        -(j as i64) - 1
    } else {
        // Zero: any (guarded) exponent is fine.
        return true;
    };
    position.saturating_add(exponent) <= MAX_DIGIT_POSITION
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The limits, checked against PostgreSQL 15 (`'[N]'::jsonb`).
    #[test]
    fn numbers_fit_exactly_where_postgres_accepts_them() {
        for ok in [
            "0",
            "-0",
            "1",
            "1.5",
            "-12.25e3",
            "1e131071",
            "9e131071",
            "-1e131071",
            "10e131070",
            "12e131070",
            "0.0001e131075",
            "1E+131071",
            "1e-16383",
            "0e-16383",
            "1.5e-16382",
            "0.5e-16382",
            "0e999999",
            "0e1073741822",
            "-0.0e5",
        ] {
            assert!(number_fits(ok), "{ok} fits");
        }
        for bad in [
            "1e131072",
            "100e131070",
            "0.0001e131076",
            "1e-16384",
            "0e-16384",
            "1.0e-16383",
            "1.5e-16383",
            "0.0000e-16380",
            "0e1073741823",
            "1e-1073741823",
            "1e999999",
            "1e99999999999999999999",
            "-1e999999",
        ] {
            assert!(!number_fits(bad), "{bad} does not fit");
        }
        assert!(number_fits(&"9".repeat(131_072)));
        assert!(!number_fits(&format!("1{}", "0".repeat(131_072))));
        assert!(number_fits(&format!("0.{}1", "0".repeat(16_382))));
        assert!(!number_fits(&format!("0.{}1", "0".repeat(16_383))));
    }

    #[test]
    fn nul_anywhere_is_found_with_its_pointer() {
        let v: Value =
            serde_json::from_str(r#"{"ok": [1, "x"], "a/b": {"c~d": ["fine", "a\u0000b"]}}"#)
                .unwrap();
        let e = check_json("/data", &v).unwrap_err();
        assert_eq!(e.pointer, "/data/a~1b/c~0d/1");
        assert_eq!(e.problem, Problem::NulInString);
        let v: Value = serde_json::from_str(r#"{"k\u0000": 1}"#).unwrap();
        let e = check_json("", &v).unwrap_err();
        assert_eq!(e.pointer, "/k\u{0}");
        assert_eq!(e.problem, Problem::NulInKey);
        assert!(check_text("/correlation_id", "a\0").is_err());
        assert!(check_json("", &json!({"a": ["b", 1, null, true]})).is_ok());
    }

    #[test]
    fn out_of_range_numbers_are_found_with_their_pointer() {
        let v: Value = serde_json::from_str(r#"{"n": [1, 1e999999]}"#).unwrap();
        let e = check_json("/data", &v).unwrap_err();
        assert_eq!(e.pointer, "/data/n/1");
        assert!(e.to_string().contains("999999"), "{e}");
        assert!(e.to_string().contains("numeric"), "{e}");
    }
}
