//! Client parameters (JSON values) bound to whatever type PostgreSQL
//! inferred for each placeholder, so `$1` never needs a cast for the common
//! types and values never travel inside the SQL text.

use std::error::Error as StdError;

use bytes::{BufMut, BytesMut};
use serde_json::Value;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

/// A JSON parameter, encoded for whatever type Postgres inferred for its
/// placeholder.
#[derive(Debug)]
pub(crate) struct JsonParam<'a>(pub(crate) &'a Value);

type BoxError = Box<dyn StdError + Sync + Send>;

impl ToSql for JsonParam<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        let v = self.0;
        if v.is_null() {
            return Ok(IsNull::Yes);
        }
        let wrong = |want: &str| -> BoxError {
            format!("expected {want} for a parameter of type {ty}, got {v}").into()
        };
        let int = || v.as_i64().ok_or_else(|| wrong("an integer"));
        let float = || v.as_f64().ok_or_else(|| wrong("a number"));
        match *ty {
            Type::BOOL => v
                .as_bool()
                .ok_or_else(|| wrong("true or false"))?
                .to_sql(ty, out),
            Type::INT2 => i16::try_from(int()?)?.to_sql(ty, out),
            Type::INT4 => i32::try_from(int()?)?.to_sql(ty, out),
            Type::INT8 => int()?.to_sql(ty, out),
            Type::OID => u32::try_from(int()?)?.to_sql(ty, out),
            Type::FLOAT4 => (float()? as f32).to_sql(ty, out),
            Type::FLOAT8 => float()?.to_sql(ty, out),
            Type::JSON | Type::JSONB => v.to_sql(ty, out),
            Type::NUMERIC => {
                let text = match v {
                    Value::Number(n) => n.to_string(),
                    Value::String(s) => s.clone(),
                    _ => return Err(wrong("a number")),
                };
                encode_numeric(&text, out)?;
                Ok(IsNull::No)
            }
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => match v {
                Value::String(s) => s.to_sql(ty, out),
                other => other.to_string().to_sql(ty, out),
            },
            _ => {
                // Everything else travels as text and Postgres parses it.
                let text = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                Err(format!(
                    "parameters of type {ty} are not supported; send {text:?} as text and cast it in the SQL (e.g. $1::text::{ty})"
                )
                .into())
            }
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// Postgres's binary `numeric`: base-10000 digits with a weight, sign and
/// display scale.
fn encode_numeric(text: &str, out: &mut BytesMut) -> Result<(), BoxError> {
    let invalid = || -> BoxError { format!("{text:?} is not a decimal number").into() };
    let t = text.trim();
    let (negative, t) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let (mantissa, exponent) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], t[i + 1..].parse::<i32>().map_err(|_| invalid())?),
        None => (t, 0),
    };
    // Far past what `numeric` holds (131072 digits before the point, 16383
    // after), and small enough that the arithmetic below cannot overflow.
    if exponent.unsigned_abs() > 1_000_000 || t.len() > 1_000_000 {
        return Err(format!("{text:?} is outside the range of numeric").into());
    }
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if (int_part.is_empty() && frac_part.is_empty())
        || !int_part
            .bytes()
            .chain(frac_part.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return Err(invalid());
    }
    // All decimal digits, and where the decimal point falls among them.
    let digits: Vec<u8> = int_part
        .bytes()
        .chain(frac_part.bytes())
        .map(|b| b - b'0')
        .collect();
    let point = int_part.len() as i32 + exponent;
    let scale = (frac_part.len() as i32 - exponent).max(0);
    // Pad on both sides so the point sits on a base-10000 group boundary.
    let lead = (4 - point.rem_euclid(4)) % 4;
    let mut padded = vec![0u8; lead as usize];
    padded.extend_from_slice(&digits);
    while !padded.len().is_multiple_of(4) {
        padded.push(0);
    }
    let groups: Vec<i16> = padded
        .chunks(4)
        .map(|c| c.iter().fold(0i16, |acc, &d| acc * 10 + i16::from(d)))
        .collect();
    let mut weight = (point + lead) / 4 - 1;
    let mut start = 0;
    while start < groups.len() && groups[start] == 0 {
        start += 1;
        weight -= 1;
    }
    let mut end = groups.len();
    while end > start && groups[end - 1] == 0 {
        end -= 1;
    }
    let groups = &groups[start..end];
    if groups.is_empty() {
        weight = 0;
    }
    out.put_i16(i16::try_from(groups.len())?);
    out.put_i16(i16::try_from(weight)?);
    out.put_u16(if negative && !groups.is_empty() {
        0x4000
    } else {
        0
    });
    out.put_u16(u16::try_from(scale)?);
    for g in groups {
        out.put_i16(*g);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(text: &str) -> Vec<i16> {
        let mut out = BytesMut::new();
        encode_numeric(text, &mut out).unwrap();
        out.chunks(2)
            .map(|c| i16::from_be_bytes([c[0], c[1]]))
            .collect()
    }

    #[test]
    fn numeric_encoding_matches_postgres() {
        // ndigits, weight, sign, dscale, digits...
        assert_eq!(numeric("0"), vec![0, 0, 0, 0]);
        assert_eq!(numeric("12345.678"), vec![3, 1, 0, 3, 1, 2345, 6780]);
        assert_eq!(numeric("-0.0001"), vec![1, -1, 0x4000, 4, 1]);
        assert_eq!(numeric("10000"), vec![1, 1, 0, 0, 1]);
        assert_eq!(numeric("1.5e3"), vec![1, 0, 0, 0, 1500]);
        assert_eq!(numeric("42"), vec![1, 0, 0, 0, 42]);
        let mut out = BytesMut::new();
        assert!(encode_numeric("1.2.3", &mut out).is_err());
        assert!(encode_numeric("abc", &mut out).is_err());
        assert!(encode_numeric("1e2147483647", &mut out).is_err());
        assert!(encode_numeric("1e-2147483648", &mut out).is_err());
    }
}
