//! RS256/ES256 public keys from a JWKS (RFC 7517), read from a file or an
//! http(s) URL.
//!
//! Keys are loaded once at start, so a wrong `--jwks` fails the start rather
//! than every request. Issuers rotate keys by publishing the new one and then
//! signing with it, so a token naming a `kid` we do not hold makes us read
//! the source again, at most once per [`REFETCH_INTERVAL`]: a flood of tokens
//! with made-up kids costs the issuer one request per interval, not one each.
//!
//! Only signature keys we can verify are kept: RSA (2048–8192 bits) for
//! RS256 and EC P-256 for ES256. Symmetric (`oct`) keys are never taken from a
//! key set, so an attacker cannot turn a published key into an HMAC secret.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

use crate::jws::{Header, quote_short};
use crate::{AuthError, Result};

/// The least time between two reads of the source caused by unknown kids.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// How long one HTTP fetch of the key set may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Key sets are a few KiB; a bigger answer is not one.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// The signature algorithms a key set may serve, each tied to its key type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyAlg {
    Rs256,
    Es256,
}

impl KeyAlg {
    fn from_name(name: &str) -> Option<KeyAlg> {
        match name {
            "RS256" => Some(KeyAlg::Rs256),
            "ES256" => Some(KeyAlg::Es256),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            KeyAlg::Rs256 => "RS256",
            KeyAlg::Es256 => "ES256",
        }
    }

    pub(crate) fn algorithm(self) -> Algorithm {
        match self {
            KeyAlg::Rs256 => Algorithm::RS256,
            KeyAlg::Es256 => Algorithm::ES256,
        }
    }
}

/// One usable public key.
#[derive(Clone)]
pub(crate) struct PublicKey {
    kid: Option<String>,
    pub(crate) alg: KeyAlg,
    pub(crate) key: DecodingKey,
}

/// The usable keys of one read of the source.
#[derive(Clone, Default)]
struct KeySet {
    keys: Vec<PublicKey>,
}

/// What a lookup in the current key set found.
enum Lookup {
    Found(PublicKey),
    /// Never worth a refetch: the key exists but is of another type.
    Refused(AuthError),
    NotFound(String),
}

impl KeySet {
    fn lookup(&self, header: &Header, alg: KeyAlg) -> Lookup {
        match &header.kid {
            Some(kid) => match self.keys.iter().find(|k| k.kid.as_ref() == Some(kid)) {
                Some(key) if key.alg == alg => Lookup::Found(key.clone()),
                Some(key) => Lookup::Refused(AuthError::Malformed(format!(
                    "alg {:?} does not match key {} ({})",
                    alg.name(),
                    quote_short(kid),
                    key.alg.name()
                ))),
                None => Lookup::NotFound(quote_short(kid)),
            },
            // Without a kid, accept only an unambiguous choice.
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.alg == alg);
                match (fitting.next(), fitting.next()) {
                    (Some(key), None) => Lookup::Found(key.clone()),
                    _ => Lookup::NotFound(format!(
                        "the token has no kid and the key set has no single {} key",
                        alg.name()
                    )),
                }
            }
        }
    }
}

enum Source {
    File(PathBuf),
    Url {
        url: String,
        client: reqwest::Client,
    },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(path) => write!(f, "{}", path.display()),
            Source::Url { url, .. } => f.write_str(url),
        }
    }
}

struct Inner {
    source: Source,
    keys: RwLock<Arc<KeySet>>,
    /// When unknown kids last made us read the source; held while reading,
    /// so concurrent requests with the same new kid wait for one read.
    last_refetch: tokio::sync::Mutex<Option<Instant>>,
    refetch_interval: Duration,
}

/// Verification keys from a JWKS file or URL. Cheap to clone: clones share
/// the cache.
#[derive(Clone)]
pub struct JwksVerifier {
    inner: Arc<Inner>,
}

impl fmt::Debug for JwksVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksVerifier")
            .field("source", &self.inner.source.to_string())
            .field("keys", &self.key_count())
            .finish()
    }
}

impl JwksVerifier {
    /// Reads the key set from `source`, an `http://` or `https://` URL or
    /// else a file path. Fails when it cannot be read or holds no usable key.
    pub async fn load(source: &str) -> Result<JwksVerifier> {
        JwksVerifier::load_with_interval(source, REFETCH_INTERVAL).await
    }

    pub(crate) async fn load_with_interval(
        source: &str,
        refetch_interval: Duration,
    ) -> Result<JwksVerifier> {
        let lower = source.to_ascii_lowercase();
        let source = if lower.starts_with("http://") || lower.starts_with("https://") {
            let client = reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .user_agent(concat!("pgtide/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| AuthError::Jwks(format!("cannot build an HTTP client: {e}")))?;
            Source::Url {
                url: source.to_owned(),
                client,
            }
        } else {
            Source::File(PathBuf::from(source))
        };
        let keys = fetch(&source).await?;
        tracing::info!(source = %source, keys = keys.keys.len(), "loaded JWKS");
        Ok(JwksVerifier {
            inner: Arc::new(Inner {
                source,
                keys: RwLock::new(Arc::new(keys)),
                last_refetch: tokio::sync::Mutex::new(None),
                refetch_interval,
            }),
        })
    }

    /// How many usable keys are held now.
    pub fn key_count(&self) -> usize {
        self.current().keys.len()
    }

    fn current(&self) -> Arc<KeySet> {
        // A poisoned lock still holds a whole key set: the writer only swaps
        // an `Arc`.
        let guard = self.inner.keys.read().unwrap_or_else(|e| e.into_inner());
        Arc::clone(&guard)
    }

    fn replace(&self, keys: KeySet) {
        let mut guard = self.inner.keys.write().unwrap_or_else(|e| e.into_inner());
        *guard = Arc::new(keys);
    }

    /// The key that must have signed a token with this header, reading the
    /// source again (throttled) when the header names a key we do not hold.
    pub(crate) async fn key_for(&self, header: &Header) -> Result<PublicKey> {
        let alg = KeyAlg::from_name(&header.alg).ok_or_else(|| {
            AuthError::Malformed(format!(
                "alg {} is not accepted: this server verifies RS256 and ES256 tokens against its key set",
                quote_short(&header.alg)
            ))
        })?;
        match self.current().lookup(header, alg) {
            Lookup::Found(key) => return Ok(key),
            Lookup::Refused(err) => return Err(err),
            Lookup::NotFound(_) => {}
        }
        let mut last = self.inner.last_refetch.lock().await;
        // Another request may have read the source while we waited.
        let missing = match self.current().lookup(header, alg) {
            Lookup::Found(key) => return Ok(key),
            Lookup::Refused(err) => return Err(err),
            Lookup::NotFound(missing) => missing,
        };
        let due = last.is_none_or(|at| at.elapsed() >= self.inner.refetch_interval);
        if !due {
            return Err(AuthError::UnknownKey(missing));
        }
        *last = Some(Instant::now());
        match fetch(&self.inner.source).await {
            Ok(keys) => {
                tracing::info!(source = %self.inner.source, keys = keys.keys.len(), "reloaded JWKS for an unknown key");
                self.replace(keys);
            }
            Err(err) => {
                tracing::warn!(error = %err, "reloading the JWKS failed; keeping the keys we have");
            }
        }
        drop(last);
        match self.current().lookup(header, alg) {
            Lookup::Found(key) => Ok(key),
            Lookup::Refused(err) => Err(err),
            Lookup::NotFound(missing) => Err(AuthError::UnknownKey(missing)),
        }
    }
}

/// Reads and parses the key set from its source.
async fn fetch(source: &Source) -> Result<KeySet> {
    let bytes = match source {
        Source::File(path) => tokio::fs::read(path)
            .await
            .map_err(|e| AuthError::Jwks(format!("cannot read {}: {e}", path.display())))?,
        Source::Url { url, client } => fetch_url(client, url).await?,
    };
    parse_key_set(&bytes).map_err(|e| match e {
        AuthError::Jwks(message) => AuthError::Jwks(format!("{source}: {message}")),
        other => other,
    })
}

async fn fetch_url(client: &reqwest::Client, url: &str) -> Result<Vec<u8>> {
    let failed = |e: reqwest::Error| AuthError::Jwks(format!("cannot fetch {url}: {}", chain(&e)));
    let mut response = client.get(url).send().await.map_err(failed)?;
    let status = response.status();
    if !status.is_success() {
        return Err(AuthError::Jwks(format!(
            "cannot fetch {url}: HTTP {status}"
        )));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(failed)? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(AuthError::Jwks(format!(
                "{url} answered more than {MAX_JWKS_BYTES} bytes; that is not a key set"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// An error with its causes, on one line (reqwest's own message leaves out
/// the cause, such as "connection refused").
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

/// Parses a JWKS document, keeping the keys we can verify with and logging
/// why each other one was skipped. No usable key at all is an error.
fn parse_key_set(bytes: &[u8]) -> Result<KeySet> {
    let doc: Value =
        serde_json::from_slice(bytes).map_err(|e| AuthError::Jwks(format!("not JSON: {e}")))?;
    let Some(Value::Array(entries)) = doc.get("keys") else {
        return Err(AuthError::Jwks(
            "expected a JSON object with a \"keys\" array".into(),
        ));
    };
    let mut set = KeySet::default();
    for (i, entry) in entries.iter().enumerate() {
        let Value::Object(jwk) = entry else {
            tracing::warn!(index = i, "skipping a JWKS entry that is not an object");
            continue;
        };
        match parse_key(jwk) {
            Ok(key) => {
                if key.kid.is_some() && set.keys.iter().any(|k| k.kid == key.kid) {
                    tracing::warn!(index = i, kid = ?key.kid, "skipping a JWKS key whose kid repeats an earlier one");
                    continue;
                }
                set.keys.push(key);
            }
            Err(reason) => {
                tracing::warn!(index = i, kid = ?jwk.get("kid"), "skipping a JWKS key: {reason}");
            }
        }
    }
    if set.keys.is_empty() {
        return Err(AuthError::Jwks(
            "no usable key: expected RSA (RS256) or EC P-256 (ES256) signature keys".into(),
        ));
    }
    Ok(set)
}

/// One JWK as a verification key, or why it cannot be one.
fn parse_key(jwk: &Map<String, Value>) -> std::result::Result<PublicKey, String> {
    let text = |name: &str| -> std::result::Result<Option<&str>, String> {
        match jwk.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(format!("{name} is not a string")),
        }
    };
    let required = |name: &str| -> std::result::Result<&str, String> {
        text(name)?.ok_or_else(|| format!("{name} is missing"))
    };
    if let Some(usage) = text("use")?.filter(|usage| *usage != "sig") {
        return Err(format!("use is {usage:?}, not \"sig\""));
    }
    if matches!(jwk.get("key_ops"), Some(Value::Array(ops)) if !ops.iter().any(|op| op == "verify"))
    {
        return Err("key_ops does not include \"verify\"".into());
    }
    let kid = text("kid")?.map(str::to_owned);
    let (alg, key) = match required("kty")? {
        "RSA" => {
            let n = b64_field(required("n")?, "n")?;
            let e = b64_field(required("e")?, "e")?;
            let bits = bit_length(&n);
            if !(2048..=8192).contains(&bits) {
                return Err(format!(
                    "RSA modulus of {bits} bits; 2048 to 8192 are accepted"
                ));
            }
            (KeyAlg::Rs256, DecodingKey::from_rsa_raw_components(&n, &e))
        }
        "EC" => {
            let crv = required("crv")?;
            if crv != "P-256" {
                return Err(format!("curve {crv:?}; only P-256 (ES256) is accepted"));
            }
            let (x, y) = (required("x")?, required("y")?);
            if b64_field(x, "x")?.len() != 32 || b64_field(y, "y")?.len() != 32 {
                return Err("P-256 coordinates must be 32 bytes each".into());
            }
            let key = DecodingKey::from_ec_components(x, y)
                .map_err(|_| "x or y is not base64url".to_owned())?;
            (KeyAlg::Es256, key)
        }
        other => return Err(format!("key type {other:?} is not RSA or EC")),
    };
    if let Some(declared) = text("alg")?.filter(|declared| *declared != alg.name()) {
        return Err(format!(
            "alg {declared:?} is not accepted for this key; only {} is",
            alg.name()
        ));
    }
    Ok(PublicKey { kid, alg, key })
}

fn b64_field(value: &str, name: &str) -> std::result::Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(value)
        .map_err(|_| format!("{name} is not base64url"))
}

/// The bit length of a big-endian unsigned integer.
fn bit_length(bytes: &[u8]) -> usize {
    let Some(first) = bytes.iter().position(|b| *b != 0) else {
        return 0;
    };
    (bytes.len() - first) * 8 - bytes[first].leading_zeros() as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_keys::*;
    use serde_json::json;

    fn header(alg: &str, kid: Option<&str>) -> Header {
        Header {
            alg: alg.into(),
            kid: kid.map(str::to_owned),
        }
    }

    fn parse(doc: Value) -> Result<KeySet> {
        parse_key_set(doc.to_string().as_bytes())
    }

    #[test]
    fn keeps_usable_keys_and_skips_the_rest() {
        let set = parse(json!({"keys": [
            rsa_jwk("rsa"),
            ec1_jwk("ec1"),
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "AAAA"},
            {"kty": "EC", "kid": "p384", "crv": "P-384", "x": EC1_X, "y": EC1_Y},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": RSA_N, "e": RSA_E},
            {"kty": "RSA", "kid": "ops", "key_ops": ["encrypt"], "n": RSA_N, "e": RSA_E},
            {"kty": "RSA", "kid": "rs384", "alg": "RS384", "n": RSA_N, "e": RSA_E},
            {"kty": "RSA", "kid": "ec-alg", "alg": "ES256", "n": RSA_N, "e": RSA_E},
            {"kty": "RSA", "kid": "small", "n": "AQAB", "e": RSA_E},
            {"kty": "RSA", "kid": "nomod", "e": RSA_E},
            {"kty": "EC", "kid": "short", "crv": "P-256", "x": "AAAA", "y": EC1_Y},
            {"kty": "RSA", "kid": "rsa", "n": RSA_N, "e": RSA_E},
            "not an object",
        ]}))
        .unwrap();
        let kept: Vec<_> = set
            .keys
            .iter()
            .map(|k| (k.kid.clone().unwrap(), k.alg))
            .collect();
        assert_eq!(
            kept,
            vec![("rsa".into(), KeyAlg::Rs256), ("ec1".into(), KeyAlg::Es256)]
        );
    }

    #[test]
    fn refuses_documents_without_usable_keys() {
        for doc in [
            json!({"keys": []}),
            json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}),
            json!({"nokeys": 1}),
            json!([1, 2]),
        ] {
            assert!(matches!(parse(doc), Err(AuthError::Jwks(_))));
        }
        assert!(matches!(
            parse_key_set(b"<html>"),
            Err(AuthError::Jwks(m)) if m.starts_with("not JSON")
        ));
    }

    #[test]
    fn looks_keys_up_by_kid_and_algorithm() {
        let set = parse(json!({"keys": [rsa_jwk("rsa"), ec1_jwk("ec1"), ec2_jwk("ec2")]})).unwrap();
        let found = |h: Header| match set.lookup(&h, KeyAlg::from_name(&h.alg).unwrap()) {
            Lookup::Found(key) => Ok(key.kid),
            Lookup::Refused(err) => Err(err.to_string()),
            Lookup::NotFound(what) => Err(format!("not found: {what}")),
        };
        assert_eq!(found(header("RS256", Some("rsa"))), Ok(Some("rsa".into())));
        assert_eq!(found(header("ES256", Some("ec2"))), Ok(Some("ec2".into())));
        // No kid: the one RSA key is unambiguous, the two EC keys are not.
        assert_eq!(found(header("RS256", None)), Ok(Some("rsa".into())));
        assert!(
            found(header("ES256", None))
                .unwrap_err()
                .contains("no single ES256 key")
        );
        assert_eq!(
            found(header("RS256", Some("nope"))),
            Err("not found: \"nope\"".into())
        );
        let refused = found(header("ES256", Some("rsa"))).unwrap_err();
        assert!(
            refused.contains("does not match key \"rsa\" (RS256)"),
            "{refused}"
        );
    }

    #[test]
    fn bit_length_counts_from_the_top_bit() {
        assert_eq!(bit_length(&[]), 0);
        assert_eq!(bit_length(&[0, 0]), 0);
        assert_eq!(bit_length(&[1]), 1);
        assert_eq!(bit_length(&[0, 0x80, 0]), 16);
        assert_eq!(bit_length(&[0x7f, 0xff]), 15);
    }
}
