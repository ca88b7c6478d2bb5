//! Webhook delivery: events from the store's queue to HTTP endpoints,
//! signed, retried, rate limited (by the store's shared token buckets), and
//! never to a private address unless told.
//!
//! Layout:
//! - [`signature`]: the `X-Pgtide-Signature` and Standard Webhooks signatures, secrets.
//! - [`backoff`]: the retry schedule (2, 4, 8 … s, capped, with jitter).
//! - [`guard`]: which addresses are refused, checked at create and after DNS.
//! - [`sender`]: one HTTP attempt: headers, signature, timeout, no redirects.
//! - [`dispatcher`]: the loop per endpoint: fan-out, claim, send, record.

pub mod backoff;
pub mod dispatcher;
pub mod guard;
pub mod sender;
pub mod signature;

pub use dispatcher::{Config, Dispatcher};
pub use guard::GuardError;
pub use sender::{Attempt, Sender};

/// Webhook failures that are not an endpoint's answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Guard(#[from] GuardError),
    #[error("{0}")]
    Secret(String),
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    #[error(transparent)]
    Store(#[from] pgtide_store::StoreError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
