//! One delivery attempt over HTTP: the body, the `X-Pgtide-*` headers, the
//! endpoint's own headers, the signature, the endpoint's timeout. Redirects
//! are not followed (a 3xx is a failure like any other non-2xx), proxies from
//! the environment are not used, and every address is checked by the guard.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pgtide_store::webhooks::SignatureScheme;
use reqwest::header::{CONTENT_TYPE, HeaderName, HeaderValue};

use crate::guard::{self, GuardedResolver};
use crate::{Error, Result, signature};

/// The most of a response body kept with an attempt.
pub const RESPONSE_KEEP: usize = 1024;

/// Sends signed webhook requests. Cheap to clone; shares one connection pool.
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    allow_private: bool,
}

/// What goes out in one attempt.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    pub url: &'a str,
    pub secret: &'a str,
    pub scheme: SignatureScheme,
    pub headers: &'a BTreeMap<String, String>,
    pub timeout: Duration,
    /// `X-Pgtide-Delivery-Id`: new for every attempt.
    pub delivery_id: &'a str,
    /// `X-Pgtide-Event-Id` and the Standard Webhooks `webhook-id` (the same
    /// on every attempt, so receivers can deduplicate).
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub body: Bytes,
}

/// How an attempt went.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub status_code: Option<u16>,
    pub latency: Duration,
    /// The first [`RESPONSE_KEEP`] bytes of the response body.
    pub response: Option<String>,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

impl Attempt {
    pub fn succeeded(&self) -> bool {
        self.error.is_none()
    }
}

impl Sender {
    pub fn new(allow_private: bool) -> Result<Sender> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(GuardedResolver::shared(allow_private))
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(64)
            .user_agent(concat!("pgtide-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Client(e.to_string()))?;
        Ok(Sender {
            client,
            allow_private,
        })
    }

    pub fn allow_private(&self) -> bool {
        self.allow_private
    }

    /// Makes one attempt. Never fails: a refused address, a network error,
    /// a timeout and a non-2xx answer are all failed attempts.
    pub async fn send(&self, out: &Outgoing<'_>) -> Attempt {
        let started = Instant::now();
        let failed = |error: String, status_code: Option<u16>, response: Option<String>| Attempt {
            status_code,
            latency: started.elapsed(),
            response,
            error: Some(error),
        };
        let url = match guard::parse_url(out.url) {
            Ok(u) => u,
            Err(e) => return failed(e.to_string(), None, None),
        };
        if let Err(e) = guard::check_literal(&url, self.allow_private) {
            return failed(e.to_string(), None, None);
        }
        let headers = match headers(out) {
            Ok(h) => h,
            Err(e) => return failed(e, None, None),
        };
        let result = self
            .client
            .post(url)
            .headers(headers)
            .timeout(out.timeout)
            .body(out.body.clone())
            .send()
            .await;
        let mut response = match result {
            Ok(r) => r,
            Err(e) => return failed(describe(&e), None, None),
        };
        let status = response.status();
        let mut kept = Vec::new();
        // A body cut short still leaves the status, which decides.
        while kept.len() < RESPONSE_KEEP {
            match response.chunk().await {
                Ok(Some(chunk)) => kept.extend_from_slice(&chunk),
                Ok(None) | Err(_) => break,
            }
        }
        kept.truncate(RESPONSE_KEEP);
        let body = Some(String::from_utf8_lossy(&kept).into_owned());
        if !status.is_success() {
            return failed(
                format!("HTTP {}", status.as_u16()),
                Some(status.as_u16()),
                body,
            );
        }
        Attempt {
            status_code: Some(status.as_u16()),
            latency: started.elapsed(),
            response: body,
            error: None,
        }
    }
}

/// The request headers: the endpoint's own first, then ours, which win.
fn headers(out: &Outgoing<'_>) -> Result<reqwest::header::HeaderMap, String> {
    let mut map = reqwest::header::HeaderMap::new();
    for (k, v) in out.headers {
        let name = HeaderName::try_from(k.as_str()).map_err(|e| format!("header {k:?}: {e}"))?;
        let value = HeaderValue::try_from(v.as_str()).map_err(|e| format!("header {k:?}: {e}"))?;
        map.insert(name, value);
    }
    let t = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut ours: Vec<(&str, String)> = vec![
        ("x-pgtide-event-type", out.event_type.to_owned()),
        ("x-pgtide-event-id", out.event_id.to_owned()),
        ("x-pgtide-delivery-id", out.delivery_id.to_owned()),
    ];
    match out.scheme {
        SignatureScheme::Pgtide => {
            ours.push((
                "x-pgtide-signature",
                signature::pgtide(out.secret, t, &out.body),
            ));
        }
        SignatureScheme::StandardWebhooks => {
            let sig = signature::standard(out.secret, out.event_id, t, &out.body)
                .map_err(|e| e.to_string())?;
            ours.push(("webhook-id", out.event_id.to_owned()));
            ours.push(("webhook-timestamp", t.to_string()));
            ours.push(("webhook-signature", sig));
        }
    }
    map.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for (k, v) in ours {
        let value = HeaderValue::try_from(v).map_err(|e| format!("header {k}: {e}"))?;
        map.insert(HeaderName::from_static(k), value);
    }
    Ok(map)
}

/// A reqwest error with its causes, which hold the useful part (a refused
/// address, connection refused, a timeout).
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_owned()
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
