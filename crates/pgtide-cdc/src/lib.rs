//! The CDC pipeline: replication stream → decoded changes → events → store.
//!
//! - [`setup`]: checks a database is fit to stream from (wal_level, privileges,
//!   an existing slot's plugin) before creating anything, then creates or
//!   adjusts the publication and the slot.
//! - [`relations`]: the column sets pgoutput announces, with each column's JSON
//!   conversion resolved once (user types through `pg_type`).
//! - [`changes`]: turns one decoded change into its events (default topics
//!   `tables.<table>.<op>`, `schema.changed`, `pgtide.publish()` messages).
//! - [`pipeline`]: the reader (stream, decode, batch) and the writer (store),
//!   which together acknowledge a transaction to Postgres only after all its
//!   events are committed in the store.

pub mod changes;
pub mod pipeline;
pub mod relations;
pub mod setup;

pub use pipeline::{CdcConfig, CdcStatus, run};
pub use setup::{Capture, SlotStatus, TableName};

/// Pipeline failures, split by whether reconnecting may help.
#[derive(Debug, thiserror::Error)]
pub enum CdcError {
    #[error(transparent)]
    Replication(#[from] pgtide_pg::replication::ReplicationError),
    #[error(transparent)]
    Store(#[from] pgtide_store::StoreError),
    #[error(transparent)]
    Connect(#[from] pgtide_pg::ConnectError),
    #[error("source database query failed: {0}")]
    Source(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Decode(#[from] pgtide_pg::pgoutput::DecodeError),
    #[error("{0}")]
    Setup(String),
}

impl CdcError {
    /// Whether the pipeline should reconnect and resume rather than stop.
    pub fn is_retryable(&self) -> bool {
        match self {
            CdcError::Replication(e) => e.is_retryable(),
            CdcError::Store(e) => e.is_retryable(),
            CdcError::Connect(_) => true,
            CdcError::Source(e) => e.is_closed() || e.as_db_error().is_none(),
            CdcError::Decode(_) | CdcError::Setup(_) => false,
        }
    }

    /// Whether another node holds the slot: this one stands by and takes over
    /// when that node goes away.
    pub fn is_slot_in_use(&self) -> bool {
        matches!(
            self,
            CdcError::Replication(pgtide_pg::replication::ReplicationError::Server { code, .. })
                if code == "55006"
        )
    }
}

pub type Result<T, E = CdcError> = std::result::Result<T, E>;
