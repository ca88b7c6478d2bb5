//! The event store: everything pgtide keeps lives in the `pgtide` schema.
//!
//! - [`migrate`]: versioned, idempotent migrations from the repo's `sql/`.
//! - [`events`]: writing events under the global `seq`, and reading them back.
//! - [`progress`]: the CDC pipeline's stored position and known relations, kept
//!   in the same transactions as the events so replays store nothing twice.
//! - [`registry`]: topics, versioned JSON Schemas, compatibility, validators.
//! - [`dead_letters`]: what could not become an event, with the reason.
//! - [`webhooks`]: endpoints, the durable delivery queue and its fan-out cursors, attempts.
//! - [`webhook_rate`]: the endpoints' rate-limit token buckets, shared by every node.
//!
//! Every write that assigns `seq` takes the `seq_counter` row lock until it
//! commits, so commits happen in `seq` order and `seq > N` readers miss nothing.

pub mod consumers;
pub mod dead_letters;
pub mod events;
mod live;
pub mod mappings;
pub mod migrate;
pub mod notify;
pub mod progress;
pub mod registry;
pub mod webhook_rate;
pub mod webhooks;

use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod};
use pgtide_pg::PgConfig;
use tokio::sync::watch;

pub use consumers::ConsumerState;
pub use dead_letters::{DeadLetter, DeadLetterKind, DeadLetterRecord, LetterScope};
pub use events::{CdcWrite, EventQuery, StoredBatch};
pub use mappings::{ApiMapping, MappingScope};
pub use progress::{CdcProgress, KnownRelation};
pub use registry::{Owner, SchemaCache, ValidationIssue};

/// Store failures. `Unavailable` is worth retrying; the others are not.
///
/// The caller's mistakes (`Invalid`, `NotFound`, `Conflict`, `ReadOnly`,
/// `Forbidden`, `Incompatible`) carry a message meant for the client; the
/// rest (`Unavailable`, `Query`, `Corrupt`, `Migration`) are pgtide's or the
/// database's, with detail for the log only.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("event store unavailable: {0}")]
    Unavailable(String),
    #[error("event store query failed: {0}")]
    Query(#[from] tokio_postgres::Error),
    /// What the caller sent is wrong (a client error, 400).
    #[error("{0}")]
    Invalid(String),
    /// A stored row is not what pgtide wrote, or the store answered what
    /// cannot happen (an internal error, 500).
    #[error("corrupt store state: {0}")]
    Corrupt(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    ReadOnly(String),
    /// The caller may not do this (a topic of another org).
    #[error("{0}")]
    Forbidden(String),
    #[error("incompatible schema: {}", .0.join("; "))]
    Incompatible(Vec<String>),
    #[error("migration {version} failed: {message}")]
    Migration { version: i32, message: String },
}

impl StoreError {
    /// Whether a retry may succeed (the connection dropped, the server restarted).
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Query(e) => {
                e.is_closed()
                    || e.as_db_error().is_none_or(|db| {
                        let code = db.code().code();
                        code.starts_with("08")
                            || code.starts_with("57P")
                            || code == "40001"
                            || code == "40P01"
                    })
            }
            StoreError::Invalid(_)
            | StoreError::Corrupt(_)
            | StoreError::NotFound(_)
            | StoreError::Conflict(_)
            | StoreError::ReadOnly(_)
            | StoreError::Forbidden(_)
            | StoreError::Incompatible(_)
            | StoreError::Migration { .. } => false,
        }
    }
}

impl StoreError {
    /// Whether this is the caller's mistake, whose message the client may see.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            StoreError::Invalid(_)
                | StoreError::NotFound(_)
                | StoreError::Conflict(_)
                | StoreError::ReadOnly(_)
                | StoreError::Forbidden(_)
                | StoreError::Incompatible(_)
        )
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => StoreError::Query(e),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

/// A pooled store connection, for work that keeps one (the CDC writer).
pub type StoreClient = deadpool_postgres::Object;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A handle on the store: a connection pool plus the highest committed `seq`
/// this process knows of, which live readers watch.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    config: PgConfig,
    committed: watch::Sender<i64>,
    live: live::LiveBatches,
    schemas: SchemaCache,
    /// The publish writer, started on first use (it needs a runtime).
    publisher:
        std::sync::Arc<std::sync::OnceLock<tokio::sync::mpsc::Sender<events::PublishRequest>>>,
}

impl Store {
    /// Connects a pool of up to `max_size` connections (lazily opened).
    pub fn new(config: &PgConfig, max_size: usize) -> Result<Store> {
        let pool = connect_pool(config, max_size)?;
        let (committed, _) = watch::channel(0);
        Ok(Store {
            pool,
            config: config.clone(),
            committed,
            live: live::LiveBatches::default(),
            schemas: SchemaCache::default(),
            publisher: Default::default(),
        })
    }

    fn publisher(&self) -> &tokio::sync::mpsc::Sender<events::PublishRequest> {
        self.publisher.get_or_init(|| {
            let (tx, rx) = tokio::sync::mpsc::channel(1024);
            tokio::spawn(events::run_publish_writer(self.clone(), rx));
            tx
        })
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// A connection of the pool to keep (the CDC writer's).
    pub async fn client(&self) -> Result<StoreClient> {
        Ok(self.pool.get().await?)
    }

    /// The highest `seq` known committed; changes after every stored batch.
    pub fn committed_seq(&self) -> watch::Receiver<i64> {
        self.committed.subscribe()
    }

    /// From now on, keeps the batches this process commits for
    /// [`Store::take_committed_after`] (the live delivery tailer's).
    pub fn follow_committed(&self) {
        self.live.follow();
    }

    /// The events committed by this process right after `seq`, as stored,
    /// when still kept; otherwise read them with [`Store::query`].
    pub fn take_committed_after(&self, seq: i64) -> Option<Vec<pgtide_core::Event>> {
        self.live.take_after(seq)
    }

    pub(crate) fn note_committed(&self, seq: i64) {
        self.committed.send_if_modified(|current| {
            if seq > *current {
                *current = seq;
                true
            } else {
                false
            }
        });
    }

    /// A quick round trip, for `/readyz`.
    pub async fn ping(&self) -> Result<()> {
        let client = self.pool.get().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }
}

/// Pooled connections unused for longer are checked with a round trip before
/// they are handed out.
const VERIFY_IDLE_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// A pool of up to `max_size` connections (lazily opened) honouring the
/// config's `sslmode`.
pub fn connect_pool(config: &PgConfig, max_size: usize) -> Result<Pool> {
    let tls = tokio_postgres_rustls_connector(config)?;
    let manager = Manager::from_config(
        config_for_pool(config),
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(max_size)
        .post_recycle(Hook::async_fn(|client, metrics| {
            Box::pin(async move {
                // A connection cut while idle in the pool is noticed at checkout
                // and replaced, rather than failing the request that drew it; one
                // in steady use skips the extra round trip (a closed socket is
                // still seen at once).
                if metrics.last_used() > VERIFY_IDLE_AFTER {
                    client.simple_query("").await.map_err(HookError::Backend)?;
                }
                Ok(())
            })
        }))
        .build()
        .map_err(|e| StoreError::Unavailable(e.to_string()))
}

fn config_for_pool(config: &PgConfig) -> tokio_postgres::Config {
    config.tokio_config().clone()
}

fn tokio_postgres_rustls_connector(config: &PgConfig) -> Result<pgtide_pg::config::MakeTls> {
    config
        .make_tls()
        .map_err(|e| StoreError::Unavailable(e.to_string()))
}
