//! The configured way to check a token, end to end.
//!
//! Order matters: the header picks the algorithm, and it must be the one the
//! configured key is for (an HS256 server never runs RS256, and a key set never
//! yields an HMAC secret, which closes the classic trick of signing HS256 with
//! a published RSA key). Then the signature; only then is the payload trusted
//! enough to read its claims and times.

use std::fmt;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey};

use crate::claims::unix_now;
use crate::jwks::JwksVerifier;
use crate::jws::{self, Compact, quote_short};
use crate::{AuthError, Claims, Result};

/// An HS256 secret. Its `Debug` form hides the bytes, so configs and
/// verifiers can be logged.
#[derive(Clone)]
pub struct Secret(Arc<[u8]>);

impl Secret {
    pub fn new(secret: &str) -> Secret {
        Secret(Arc::from(secret.as_bytes()))
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Configured verification: the `--jwt-secret` or the `--jwks` keys, and
/// whether a token must carry `exp` (it must, unless
/// `--allow-tokens-without-exp`: a token that never expires cannot be taken
/// back short of changing the key).
#[derive(Debug, Clone)]
pub struct Verifier {
    keys: Keys,
    require_exp: bool,
}

#[derive(Debug, Clone)]
enum Keys {
    Hs256 { secret: Secret },
    Jwks(JwksVerifier),
}

impl Verifier {
    /// Verifies HS256 tokens signed with `secret`. An empty or short secret
    /// is the caller's to refuse; this type takes what it is given.
    pub fn hs256(secret: &str) -> Verifier {
        Verifier {
            keys: Keys::Hs256 {
                secret: Secret::new(secret),
            },
            require_exp: true,
        }
    }

    /// `source` is a file path or an http(s) URL; keys RS256 and ES256,
    /// selected by `kid`; URL keys are fetched at start, cached, and refetched
    /// (at most once per 30 s) when a token names an unknown kid.
    pub async fn jwks(source: &str) -> Result<Verifier> {
        Ok(Verifier {
            keys: Keys::Jwks(JwksVerifier::load(source).await?),
            require_exp: true,
        })
    }

    /// With `allow`, tokens without `exp` are accepted (and never expire);
    /// by default they are refused.
    pub fn allow_tokens_without_exp(mut self, allow: bool) -> Verifier {
        self.require_exp = !allow;
        self
    }

    /// The verified claims of `token` (the bare JWT, without `Bearer`).
    pub async fn verify(&self, token: &str) -> Result<Claims> {
        self.verify_at(token, unix_now()).await
    }

    pub(crate) async fn verify_at(&self, token: &str, now: i64) -> Result<Claims> {
        let compact = jws::split(token)?;
        match &self.keys {
            Keys::Hs256 { secret } => {
                if compact.header.alg != "HS256" {
                    return Err(AuthError::Malformed(format!(
                        "alg {} is not accepted: this server verifies HS256 tokens",
                        quote_short(&compact.header.alg)
                    )));
                }
                let key = DecodingKey::from_secret(secret.as_bytes());
                check_signature(&compact, &key, Algorithm::HS256)?;
            }
            Keys::Jwks(jwks) => {
                let key = jwks.key_for(&compact.header).await?;
                check_signature(&compact, &key.key, key.alg.algorithm())?;
            }
        }
        Claims::from_payload(&compact.payload()?, now, self.require_exp)
    }
}

/// `algorithm` must be the one `key` was made for: the caller guarantees it,
/// having chosen both from the configured key, never from the token alone.
fn check_signature(compact: &Compact<'_>, key: &DecodingKey, algorithm: Algorithm) -> Result<()> {
    match jsonwebtoken::crypto::verify(
        compact.signature,
        compact.signing_input.as_bytes(),
        key,
        algorithm,
    ) {
        Ok(true) => Ok(()),
        Ok(false) | Err(_) => Err(AuthError::BadSignature),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::EncodingKey;
    use pgtide_core::Pattern;
    use serde_json::{Value, json};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::test_keys::*;
    use crate::{Role, TokenRequest, mint_hs256};

    const SECRET: &str = "test-secret-of-reasonable-length";

    /// Claims with an `exp` an hour ahead, which `extra` may override.
    fn claims_json(extra: Value) -> Value {
        let mut base =
            json!({"sub": "user-1", "org_id": 5, "role": "operator", "exp": unix_now() + 3600});
        if let (Value::Object(base), Value::Object(extra)) = (&mut base, extra) {
            base.extend(extra);
        }
        base
    }

    fn hs256(secret: &str, payload: &Value) -> String {
        sign(
            jsonwebtoken::Header::new(Algorithm::HS256),
            payload,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
    }

    async fn verify_hs(token: &str) -> Result<Claims> {
        Verifier::hs256(SECRET).verify(token).await
    }

    fn message(result: Result<Claims>) -> String {
        match result {
            Err(AuthError::Malformed(m)) => m,
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn hs256_round_trip_through_mint() {
        let request = TokenRequest {
            org_id: Some(42),
            role: Role::Operator,
            subscribe: Some(vec![Pattern::parse("orders/**").unwrap()]),
            publish: Some(vec![Pattern::parse("jobs.*").unwrap()]),
            sql: true,
            ttl: Some(Duration::from_secs(3600)),
            ..TokenRequest::new("user-1")
        };
        let token = mint_hs256(SECRET, &request).unwrap();
        let claims = verify_hs(&token).await.unwrap();
        assert_eq!(claims.sub, "user-1");
        assert_eq!(claims.org_id, Some(42));
        assert_eq!(claims.role, Role::Operator);
        assert_eq!(claims.subscribe, request.subscribe);
        assert_eq!(claims.publish, request.publish);
        assert!(claims.sql);
        let exp = claims.exp.unwrap();
        assert!((exp - unix_now() - 3600).abs() <= 5, "{exp}");

        // The bare minimum: a reader with no expiry, accepted only when
        // tokens without exp are allowed.
        let token = mint_hs256(SECRET, &TokenRequest::new("r")).unwrap();
        let claims = Verifier::hs256(SECRET)
            .allow_tokens_without_exp(true)
            .verify(&token)
            .await
            .unwrap();
        assert_eq!(
            (claims.role, claims.exp, claims.sql, claims.subscribe),
            (Role::Read, None, false, None)
        );
    }

    #[tokio::test]
    async fn tokens_without_exp_are_refused_unless_allowed() {
        for payload in [json!({"sub": "s"}), json!({"sub": "s", "exp": null})] {
            let token = hs256(SECRET, &payload);
            let err = verify_hs(&token).await.unwrap_err();
            assert!(
                matches!(&err, AuthError::InvalidClaims(m)
                    if m.contains("exp is missing") && m.contains("--allow-tokens-without-exp")),
                "{err}"
            );
            let allowing = Verifier::hs256(SECRET).allow_tokens_without_exp(true);
            assert_eq!(allowing.verify(&token).await.unwrap().exp, None);
        }
    }

    #[tokio::test]
    async fn expired_tokens_are_refused() {
        let now = unix_now();
        let old = hs256(SECRET, &claims_json(json!({"exp": now - 120})));
        assert_eq!(verify_hs(&old).await, Err(AuthError::Expired));
        // Inside the leeway still passes.
        let recent = hs256(SECRET, &claims_json(json!({"exp": now - 10})));
        assert!(verify_hs(&recent).await.is_ok());
        let future = hs256(SECRET, &claims_json(json!({"nbf": now + 600})));
        assert!(matches!(
            verify_hs(&future).await,
            Err(AuthError::InvalidClaims(m)) if m.contains("nbf")
        ));
    }

    #[tokio::test]
    async fn bad_signatures_are_refused() {
        let payload = claims_json(json!({}));
        let other = hs256("another-secret", &payload);
        assert_eq!(verify_hs(&other).await, Err(AuthError::BadSignature));

        // A payload swapped under a valid signature.
        let good = hs256(SECRET, &payload);
        let (head, rest) = good.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let admin = URL_SAFE_NO_PAD.encode(claims_json(json!({"role": "admin"})).to_string());
        let forged = format!("{head}.{admin}.{sig}");
        assert_eq!(verify_hs(&forged).await, Err(AuthError::BadSignature));

        let truncated = format!("{head}.{}.{}", rest.split_once('.').unwrap().0, &sig[..12]);
        assert_eq!(verify_hs(&truncated).await, Err(AuthError::BadSignature));
    }

    #[tokio::test]
    async fn wrong_algorithms_are_refused() {
        let payload = claims_json(json!({}));
        // RS256 token presented to an HS256 server.
        let rs = sign(rs256_header("rsa"), &payload, &rsa_encoding_key());
        let m = message(verify_hs(&rs).await);
        assert!(m.contains("\"RS256\" is not accepted"), "{m}");
        // HS384 with the right secret is still not HS256.
        let hs384 = sign(
            jsonwebtoken::Header::new(Algorithm::HS384),
            &payload,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        );
        assert!(message(verify_hs(&hs384).await).contains("\"HS384\""));
        // `alg: none`, with and without a signature part.
        let none_head = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(payload.to_string());
        for unsigned in [
            format!("{none_head}.{body}."),
            format!("{none_head}.{body}.c2ln"),
        ] {
            assert!(message(verify_hs(&unsigned).await).contains("alg \"none\""));
        }
    }

    #[tokio::test]
    async fn malformed_tokens_are_refused() {
        assert_eq!(verify_hs("").await, Err(AuthError::Missing));
        for text in ["abc", "a.b", "a.b.c.d", "###.###.###"] {
            assert!(
                matches!(verify_hs(text).await, Err(AuthError::Malformed(_))),
                "{text}"
            );
        }
        // A signed payload that is not a JSON object.
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        let head = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256"}"#);
        let body = URL_SAFE_NO_PAD.encode("[1,2]");
        let input = format!("{head}.{body}");
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key, Algorithm::HS256).unwrap();
        let m = message(verify_hs(&format!("{input}.{sig}")).await);
        assert!(m.contains("payload is not a JSON object"), "{m}");
    }

    #[tokio::test]
    async fn claims_are_validated_after_the_signature() {
        let bad = |extra: Value| hs256(SECRET, &claims_json(extra));
        for (extra, needle) in [
            (json!({"role": "superuser"}), "unknown role"),
            (json!({"org_id": "acme"}), "org_id"),
            (json!({"subscribe": ["ok", "no..no"]}), "subscribe[1]"),
            (json!({"publish": "jobs.*"}), "publish must be an array"),
        ] {
            match verify_hs(&bad(extra.clone())).await {
                Err(AuthError::InvalidClaims(m)) => assert!(m.contains(needle), "{extra}: {m}"),
                other => panic!("{extra}: {other:?}"),
            }
        }
        let claims = verify_hs(&bad(json!({"org_id": "77"}))).await.unwrap();
        assert_eq!(claims.org_id, Some(77));
        // The same bad claims under the wrong key are a signature failure:
        // nothing of an unverified payload is read.
        let forged = hs256("wrong", &claims_json(json!({"role": "superuser"})));
        assert_eq!(verify_hs(&forged).await, Err(AuthError::BadSignature));
    }

    fn write_jwks(dir: &tempfile::TempDir, keys: Vec<Value>) -> String {
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, json!({ "keys": keys }).to_string()).unwrap();
        path.to_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn rs256_and_es256_from_a_jwks_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_jwks(&dir, vec![rsa_jwk("rsa"), ec1_jwk("ec1")]);
        let verifier = Verifier::jwks(&path).await.unwrap();
        let payload = claims_json(json!({"exp": unix_now() + 60}));

        let rs = sign(rs256_header("rsa"), &payload, &rsa_encoding_key());
        let claims = verifier.verify(&rs).await.unwrap();
        assert_eq!((claims.sub.as_str(), claims.org_id), ("user-1", Some(5)));
        let es = sign(es256_header("ec1"), &payload, &ec1_encoding_key());
        assert_eq!(verifier.verify(&es).await.unwrap().role, Role::Operator);

        // Signed by a key that is not in the set, under a kid that is.
        let wrong_key = sign(es256_header("ec1"), &payload, &ec2_encoding_key());
        assert_eq!(
            verifier.verify(&wrong_key).await,
            Err(AuthError::BadSignature)
        );
        // The header's alg must be the named key's.
        let mixed = sign(es256_header("rsa"), &payload, &ec1_encoding_key());
        let m = message(verifier.verify(&mixed).await);
        assert!(m.contains("does not match key"), "{m}");
        // An unknown kid, after re-reading the file, is still unknown.
        let unknown = sign(es256_header("ec2"), &payload, &ec2_encoding_key());
        assert_eq!(
            verifier.verify(&unknown).await,
            Err(AuthError::UnknownKey("\"ec2\"".into()))
        );
        // Expiry is enforced for key-set tokens too.
        let old = claims_json(json!({"exp": unix_now() - 3600}));
        let expired = sign(rs256_header("rsa"), &old, &rsa_encoding_key());
        assert_eq!(verifier.verify(&expired).await, Err(AuthError::Expired));
    }

    #[tokio::test]
    async fn a_key_set_never_yields_an_hmac_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_jwks(&dir, vec![rsa_jwk("rsa")]);
        let verifier = Verifier::jwks(&path).await.unwrap();
        let payload = claims_json(json!({"role": "admin"}));
        // The public key material an attacker can read, used as an HMAC
        // secret: the n member, the whole JWK, and the file itself.
        let file = std::fs::read(&path).unwrap();
        for secret in [
            RSA_N.as_bytes(),
            rsa_jwk("rsa").to_string().as_bytes(),
            &file,
        ] {
            let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
            header.kid = Some("rsa".into());
            let token = sign(header, &payload, &EncodingKey::from_secret(secret));
            let m = message(verifier.verify(&token).await);
            assert!(m.contains("\"HS256\" is not accepted"), "{m}");
        }
        let none_head = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"rsa"}"#);
        let body = URL_SAFE_NO_PAD.encode(payload.to_string());
        assert!(message(verifier.verify(&format!("{none_head}.{body}.")).await).contains("none"));
    }

    #[tokio::test]
    async fn a_jwks_file_is_reread_for_an_unknown_kid() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_jwks(&dir, vec![rsa_jwk("rsa")]);
        let verifier = Verifier::jwks(&path).await.unwrap();
        write_jwks(&dir, vec![rsa_jwk("rsa"), ec2_jwk("ec2")]);
        let token = sign(
            es256_header("ec2"),
            &claims_json(json!({})),
            &ec2_encoding_key(),
        );
        assert_eq!(verifier.verify(&token).await.unwrap().sub, "user-1");
    }

    #[tokio::test]
    async fn unusable_jwks_sources_fail_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.json");
        let err = Verifier::jwks(missing.to_str().unwrap()).await.unwrap_err();
        assert!(
            matches!(&err, AuthError::Jwks(m) if m.contains("cannot read")),
            "{err}"
        );
        let path = write_jwks(&dir, vec![json!({"kty": "oct", "k": "c2VjcmV0"})]);
        let err = Verifier::jwks(&path).await.unwrap_err();
        assert!(
            matches!(&err, AuthError::Jwks(m) if m.contains("no usable key")),
            "{err}"
        );
    }

    /// A one-route HTTP server on a free loopback port: every GET is answered
    /// with the current `body` (or `status` when it is not 200), and counted.
    struct JwksServer {
        url: String,
        body: Arc<Mutex<(u16, String)>>,
        hits: Arc<AtomicUsize>,
        task: tokio::task::JoinHandle<()>,
    }

    impl JwksServer {
        async fn start(status: u16, body: String) -> JwksServer {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!(
                "http://{}/.well-known/jwks.json",
                listener.local_addr().unwrap()
            );
            let body = Arc::new(Mutex::new((status, body)));
            let hits = Arc::new(AtomicUsize::new(0));
            let (shared, counter) = (Arc::clone(&body), Arc::clone(&hits));
            let task = tokio::spawn(async move {
                while let Ok((mut socket, _)) = listener.accept().await {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = shared.lock().unwrap().clone();
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(reply.as_bytes()).await;
                    let _ = socket.shutdown().await;
                }
            });
            JwksServer {
                url,
                body,
                hits,
                task,
            }
        }

        fn serve(&self, keys: Vec<Value>) {
            *self.body.lock().unwrap() = (200, json!({ "keys": keys }).to_string());
        }

        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }
    }

    impl Drop for JwksServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    #[tokio::test]
    async fn a_jwks_url_is_fetched_at_start_and_refetched_for_a_new_kid() {
        let keys = json!({"keys": [rsa_jwk("rsa")]}).to_string();
        let server = JwksServer::start(200, keys).await;
        let verifier = Verifier::jwks(&server.url).await.unwrap();
        assert_eq!(server.hits(), 1);
        let payload = claims_json(json!({}));

        let rs = sign(rs256_header("rsa"), &payload, &rsa_encoding_key());
        verifier.verify(&rs).await.unwrap();
        verifier.verify(&rs).await.unwrap();
        assert_eq!(server.hits(), 1, "known kids are served from the cache");

        // The issuer rotates in a new key; the first token naming it makes us
        // fetch again, right away.
        server.serve(vec![rsa_jwk("rsa"), ec1_jwk("ec1")]);
        let es = sign(es256_header("ec1"), &payload, &ec1_encoding_key());
        assert_eq!(verifier.verify(&es).await.unwrap().sub, "user-1");
        assert_eq!(server.hits(), 2);

        // Within the interval another unknown kid does not fetch again.
        server.serve(vec![rsa_jwk("rsa"), ec1_jwk("ec1"), ec2_jwk("ec2")]);
        let es2 = sign(es256_header("ec2"), &payload, &ec2_encoding_key());
        assert_eq!(
            verifier.verify(&es2).await,
            Err(AuthError::UnknownKey("\"ec2\"".into()))
        );
        assert_eq!(server.hits(), 2, "refetches are throttled");
        // Cached keys keep working meanwhile.
        verifier.verify(&es).await.unwrap();
    }

    #[tokio::test]
    async fn a_failed_refetch_keeps_the_old_keys() {
        let keys = json!({"keys": [rsa_jwk("rsa")]}).to_string();
        let server = JwksServer::start(200, keys).await;
        // No throttle, to see every refetch.
        let jwks = JwksVerifier::load_with_interval(&server.url, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(jwks.key_count(), 1);
        let verifier = Verifier {
            keys: Keys::Jwks(jwks),
            require_exp: true,
        };
        let payload = claims_json(json!({}));
        let rs = sign(rs256_header("rsa"), &payload, &rsa_encoding_key());

        *server.body.lock().unwrap() = (500, "oops".into());
        let unknown = sign(es256_header("ec1"), &payload, &ec1_encoding_key());
        assert!(matches!(
            verifier.verify(&unknown).await,
            Err(AuthError::UnknownKey(_))
        ));
        let before = server.hits();
        assert!(matches!(
            verifier.verify(&unknown).await,
            Err(AuthError::UnknownKey(_))
        ));
        assert_eq!(
            server.hits(),
            before + 1,
            "no throttle with a zero interval"
        );
        verifier.verify(&rs).await.unwrap();

        server.serve(vec![ec1_jwk("ec1")]);
        verifier.verify(&unknown).await.unwrap();
        // The new set replaced the old one: the rotated-out key is gone.
        assert!(matches!(
            verifier.verify(&rs).await,
            Err(AuthError::UnknownKey(_))
        ));
    }

    #[tokio::test]
    async fn an_unreachable_or_failing_jwks_url_fails_at_start() {
        let server = JwksServer::start(404, "not here".into()).await;
        let err = Verifier::jwks(&server.url).await.unwrap_err();
        assert!(
            matches!(&err, AuthError::Jwks(m) if m.contains("404")),
            "{err}"
        );
        let server = JwksServer::start(200, "<html>".into()).await;
        let err = Verifier::jwks(&server.url).await.unwrap_err();
        assert!(
            matches!(&err, AuthError::Jwks(m) if m.contains("not JSON")),
            "{err}"
        );

        // A port that was just free and is now closed.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = Verifier::jwks(&format!("http://{addr}/jwks"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, AuthError::Jwks(m) if m.contains("cannot fetch")),
            "{err}"
        );
        // https builds its TLS client (ring-backed rustls) and fails the same way.
        let err = Verifier::jwks(&format!("https://{addr}/jwks"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, AuthError::Jwks(m) if m.contains("cannot fetch")),
            "{err}"
        );
    }

    #[test]
    fn secrets_are_not_printed() {
        let verifier = Verifier::hs256("hunter2-secret");
        let text = format!("{verifier:?}");
        assert!(!text.contains("hunter2"), "{text}");
    }
}
