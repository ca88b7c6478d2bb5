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
    /// Found before streaming: the slot or publication is gone, or the slot
    /// lost its WAL. The text names the problem and the fix.
    #[error("{0}")]
    Unhealable(String),
}

impl CdcError {
    /// Whether the pipeline should reconnect and resume rather than stop.
    pub fn is_retryable(&self) -> bool {
        match self {
            CdcError::Replication(e) => e.is_retryable(),
            CdcError::Store(e) => e.is_retryable(),
            CdcError::Connect(_) => true,
            CdcError::Source(e) => e.is_closed() || e.as_db_error().is_none(),
            CdcError::Decode(_) | CdcError::Setup(_) | CdcError::Unhealable(_) => false,
        }
    }

    /// A fault that waiting cannot heal, said as the problem and its fix:
    /// the slot or publication dropped by someone, or the slot invalidated
    /// (it fell behind `max_slot_wal_keep_size`). pgtide stays up and keeps
    /// checking, but never re-creates the slot by itself: a new slot would
    /// silently skip every change made in between.
    pub fn unhealable(&self, slot: &str, publication: &str) -> Option<String> {
        let (code, message) = match self {
            CdcError::Unhealable(problem) => return Some(problem.clone()),
            CdcError::Replication(pgtide_pg::replication::ReplicationError::Server {
                code,
                message,
            }) => (code.as_str(), message.as_str()),
            _ => return None,
        };
        let message = message.to_lowercase();
        if code == "42704" && message.contains("replication slot") {
            return Some(slot_dropped(slot));
        }
        if code == "42704" && message.contains("publication") {
            return Some(publication_dropped(publication));
        }
        if code == "55000"
            && (message.contains("can no longer get changes")
                || message.contains("invalidated")
                || message.contains("max_slot_wal_keep_size"))
        {
            return Some(slot_invalidated(slot));
        }
        None
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

pub(crate) fn slot_dropped(slot: &str) -> String {
    format!(
        "the replication slot {slot:?} no longer exists (it was dropped while pgtide used it); \
         pgtide will not re-create it by itself, since a new slot would skip every change made \
         since. Fix: restart pgtide, which creates a new slot (then backfill what changed in between)"
    )
}

pub(crate) fn publication_dropped(publication: &str) -> String {
    format!(
        "the publication {publication:?} no longer exists (it was dropped while pgtide used it). \
         Fix: restart pgtide, which creates it again"
    )
}

pub(crate) fn slot_invalidated(slot: &str) -> String {
    format!(
        "the replication slot {slot:?} was invalidated (it fell behind max_slot_wal_keep_size and \
         the WAL it needed is gone). Fix: pgtide slot drop, then restart pgtide to create a new \
         slot (then backfill what changed in between)"
    )
}
