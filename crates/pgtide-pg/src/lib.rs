//! PostgreSQL plumbing for pgtide.
//!
//! Layout, in the order data flows:
//! - [`config`]: the libpq URL, `sslmode`, and the rustls setup both connection kinds share.
//! - [`replication`]: our own client for the streaming replication protocol
//!   (`replication=database`), built on `postgres-protocol`: auth, slot and
//!   publication commands, `START_REPLICATION`, keepalives and status updates.
//! - [`pgoutput`]: decodes the bytes of each `XLogData` message into typed changes.
//! - [`value`]: turns Postgres text values into the JSON the event envelope carries.
//! - [`local`]: a throwaway local PostgreSQL for `pgtide dev`, tests and benchmarks.
//! - [`lsn`]: WAL positions.

pub mod config;
pub mod local;
pub mod lsn;
pub mod pgoutput;
pub mod replication;
pub mod value;

pub use config::{ConnectError, PgConfig};
pub use lsn::Lsn;
