//! The compact JWS form of a JWT (`header.payload.signature`, each base64url
//! without padding), taken apart before any key is chosen.
//!
//! We read the header ourselves rather than through a typed library header so
//! that `alg: none`, unknown algorithms and `crit` extensions are refused with
//! a message that says so, instead of a generic parse error.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::{AuthError, Result};

/// Longer tokens are refused before any decoding; real ones are a few KiB.
pub const MAX_TOKEN_LEN: usize = 64 * 1024;

/// The protected header members that choose the key and algorithm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub alg: String,
    pub kid: Option<String>,
}

/// A token split into its parts, with the header decoded.
#[derive(Debug, Clone)]
pub struct Compact<'a> {
    pub header: Header,
    /// `header.payload` as sent: the bytes the signature covers.
    pub signing_input: &'a str,
    /// The signature part, still base64url.
    pub signature: &'a str,
    payload: &'a str,
}

fn malformed(message: impl Into<String>) -> AuthError {
    AuthError::Malformed(message.into())
}

/// Splits a compact JWS and decodes its header. An empty token is
/// [`AuthError::Missing`]; anything else that is not three base64url parts
/// with a JSON header is [`AuthError::Malformed`].
pub fn split(token: &str) -> Result<Compact<'_>> {
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(malformed(format!(
            "token is longer than {MAX_TOKEN_LEN} bytes"
        )));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed(
            "expected a signed JWT: three base64url parts separated by dots",
        ));
    };
    let header_json = decode_json_object(header, "header")?;
    URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| malformed("the signature is not base64url"))?;
    let signing_input = &token[..header.len() + 1 + payload.len()];
    Ok(Compact {
        header: read_header(&header_json)?,
        signing_input,
        signature,
        payload,
    })
}

impl Compact<'_> {
    /// The claim set. Call only after the signature has been checked: before
    /// that, its content is whatever the sender chose.
    pub fn payload(&self) -> Result<Map<String, Value>> {
        decode_json_object(self.payload, "payload")
    }
}

fn decode_json_object(part: &str, name: &str) -> Result<Map<String, Value>> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| malformed(format!("the {name} is not base64url")))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(malformed(format!("the {name} is not a JSON object"))),
    }
}

fn read_header(json: &Map<String, Value>) -> Result<Header> {
    let alg = match json.get("alg") {
        Some(Value::String(alg)) => alg.clone(),
        Some(_) => return Err(malformed("the header's alg must be a string")),
        None => return Err(malformed("the header has no alg")),
    };
    if alg.eq_ignore_ascii_case("none") {
        return Err(malformed("unsigned tokens (alg \"none\") are not accepted"));
    }
    // RFC 7515 §4.1.11: extensions listed in `crit` must be understood, and
    // we understand none.
    if json.contains_key("crit") {
        return Err(malformed(
            "the header lists critical extensions (crit), which are not supported",
        ));
    }
    let kid = match json.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(malformed("the header's kid must be a string")),
    };
    Ok(Header { alg, kid })
}

/// A short, quoted form of an untrusted string for error messages.
pub(crate) fn quote_short(text: &str) -> String {
    const MAX: usize = 64;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{:?}…", &text[..cut]),
        None => format!("{text:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(value: &Value) -> String {
        URL_SAFE_NO_PAD.encode(value.to_string())
    }

    fn token(header: Value, payload: Value) -> String {
        format!("{}.{}.c2ln", b64(&header), b64(&payload))
    }

    fn malformed_message(token: &str) -> String {
        match split(token) {
            Err(AuthError::Malformed(message)) => message,
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn splits_a_token() {
        let text = token(
            json!({"alg": "HS256", "typ": "JWT", "kid": "k1"}),
            json!({"sub": "s"}),
        );
        let compact = split(&text).unwrap();
        assert_eq!(
            compact.header,
            Header {
                alg: "HS256".into(),
                kid: Some("k1".into())
            }
        );
        assert_eq!(compact.signature, "c2ln");
        assert_eq!(
            format!("{}.{}", compact.signing_input, compact.signature),
            text
        );
        assert_eq!(compact.payload().unwrap()["sub"], "s");
    }

    #[test]
    fn refuses_malformed_tokens() {
        assert_eq!(split("  ").unwrap_err(), AuthError::Missing);
        for text in ["abc", "a.b", "a.b.c.d", "a.b.c.d.e"] {
            assert!(
                malformed_message(text).contains("three base64url parts"),
                "{text}"
            );
        }
        assert!(malformed_message("!!.e30.c2ln").contains("header is not base64url"));
        let not_json = format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode("nope"));
        assert!(malformed_message(&not_json).contains("header is not a JSON object"));
        let array = format!("{}.e30.c2ln", b64(&json!(["HS256"])));
        assert!(malformed_message(&array).contains("not a JSON object"));
        let bad_sig = format!("{}.e30.c2ln=", b64(&json!({"alg": "HS256"})));
        assert!(malformed_message(&bad_sig).contains("signature is not base64url"));
        assert!(malformed_message(&"a".repeat(MAX_TOKEN_LEN + 1)).contains("longer"));
        // A payload that does not decode shows up when it is read.
        let bad_payload = format!("{}.%%%.c2ln", b64(&json!({"alg": "HS256"})));
        let compact = split(&bad_payload).unwrap();
        assert!(matches!(compact.payload(), Err(AuthError::Malformed(m)) if m.contains("payload")));
    }

    #[test]
    fn refuses_bad_headers() {
        let payload = json!({"sub": "s"});
        for alg in ["none", "None", "NONE"] {
            let text = token(json!({"alg": alg}), payload.clone());
            assert!(malformed_message(&text).contains("alg \"none\""), "{alg}");
        }
        let text = token(json!({"typ": "JWT"}), payload.clone());
        assert!(malformed_message(&text).contains("no alg"));
        let text = token(json!({"alg": 256}), payload.clone());
        assert!(malformed_message(&text).contains("alg must be a string"));
        let text = token(json!({"alg": "HS256", "kid": 1}), payload.clone());
        assert!(malformed_message(&text).contains("kid must be a string"));
        let text = token(json!({"alg": "HS256", "crit": ["exp"]}), payload);
        assert!(malformed_message(&text).contains("crit"));
    }

    #[test]
    fn quotes_untrusted_text_briefly() {
        assert_eq!(quote_short("k1"), "\"k1\"");
        assert_eq!(quote_short("a\nb"), "\"a\\nb\"");
        let long = quote_short(&"x".repeat(500));
        assert!(long.len() < 80 && long.ends_with('…'), "{long}");
    }
}
