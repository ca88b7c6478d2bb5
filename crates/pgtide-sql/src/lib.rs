//! SQL over pgtide's sockets (SPEC §7, §11), whatever the transport.
//!
//! Layout, in the order a request meets it:
//! - [`session`]: a socket's SQL worker, beside the socket's read loop, so a
//!   closed socket cancels its running statement at once.
//! - [`transactions`]: the transaction verbs, each transaction on a pooled
//!   connection of its own, as the SQL role, with its limits and claims.
//! - [`statement`]: PostgreSQL's own parser decides whether a statement may
//!   run (one statement, of an allowed kind, calling no refused function).
//! - [`access`]: the pools (the SQL login's, reset before reuse; the owner's,
//!   for claims) and the per-org and per-socket limits.
//! - [`login`]: the start-up check that the SQL login cannot escape, and
//!   `pgtide.claims()`.
//!
//! Two walls: the statement check keeps a client from changing its role,
//! limits or claims; the login check makes sure that even a statement that
//! got past it would find nothing more than the SQL role may do.

pub mod access;
pub mod login;
mod param;
pub mod session;
pub mod statement;
pub mod transactions;

pub use access::{SqlAccess, SqlConfig};
pub use session::{Reply, SqlSession};
pub use transactions::{Operation, Outcome, SqlFailure};

/// Why SQL could not be turned on.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The login could escape the sandbox; the text says how and the fix.
    #[error("SQL over sockets stays off: {0}")]
    UnsafeLogin(String),
    #[error("SQL over sockets: {0}")]
    Connect(pgtide_pg::config::ConnectError),
    #[error("SQL over sockets: checking the SQL login failed: {0}")]
    Query(#[from] tokio_postgres::Error),
    #[error("SQL over sockets: {0}")]
    Pool(String),
}
