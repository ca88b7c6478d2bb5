//! Where client SQL runs: a pool of connections made as the low-privilege
//! SQL login, reset (`DISCARD ALL`) before each reuse so nothing one
//! transaction leaves in a session reaches the next; a small pool as the
//! owner login that records each transaction's claims; and the limits that
//! keep one org or one socket from taking every connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use pgtide_pg::PgConfig;
use pgtide_pg::config::MakeTls;

use crate::{SetupError, login};

/// How client SQL is bounded.
#[derive(Debug, Clone)]
pub struct SqlConfig {
    /// The role every transaction runs as (`SET LOCAL ROLE`).
    pub role: String,
    pub statement_timeout: Duration,
    /// Connections to the database as the SQL login.
    pub pool_size: usize,
    /// Open transactions one org may hold at once, over all its sockets.
    pub max_per_org: usize,
    /// Open transactions one socket may hold at once.
    pub max_per_connection: usize,
    /// How long a request waits for a free connection before `busy`.
    pub acquire_timeout: Duration,
    /// An open transaction left idle this long is ended by the server.
    pub idle_timeout: Duration,
}

impl SqlConfig {
    pub fn new(role: &str, statement_timeout: Duration) -> SqlConfig {
        SqlConfig {
            role: role.to_owned(),
            statement_timeout,
            pool_size: 32,
            max_per_org: 8,
            max_per_connection: 8,
            acquire_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// The SQL service shared by every socket.
pub struct SqlAccess {
    pub(crate) pool: Pool,
    /// Connections as the owner login, for writing claims rows.
    pub(crate) owner: Pool,
    pub(crate) tls: MakeTls,
    pub(crate) config: SqlConfig,
    open_by_org: Mutex<HashMap<Option<i64>, usize>>,
}

impl SqlAccess {
    /// Checks the SQL login (see [`login::verify`]), installs
    /// `pgtide.claims()` as `owner`, and builds the pools. `login` is the
    /// low-privilege login's URL; `owner` the one pgtide itself uses (its
    /// database name is replaced by the login's).
    pub async fn start(
        owner: &PgConfig,
        login: &PgConfig,
        config: SqlConfig,
    ) -> Result<SqlAccess, SetupError> {
        let probe = login.connect().await.map_err(SetupError::Connect)?;
        login::verify(&probe, &config.role).await?;
        drop(probe);
        let owner = owner.with_dbname(login.dbname());
        let mut setup = owner.connect().await.map_err(SetupError::Connect)?;
        login::install_claims(&mut setup, &config.role).await?;
        drop(setup);
        let pool = build_pool(
            login,
            config.pool_size,
            RecyclingMethod::Custom("DISCARD ALL".into()),
            Some(config.acquire_timeout),
        )?;
        let owner_pool = build_pool(
            &owner,
            4,
            RecyclingMethod::Fast,
            Some(config.acquire_timeout),
        )?;
        Ok(SqlAccess {
            pool,
            owner: owner_pool,
            tls: login.make_tls().map_err(SetupError::Connect)?,
            config,
            open_by_org: Mutex::new(HashMap::new()),
        })
    }

    pub fn config(&self) -> &SqlConfig {
        &self.config
    }

    /// Takes one of `org`'s open-transaction places, if it has one left.
    pub(crate) fn claim_org_slot(self: &Arc<Self>, org: Option<i64>) -> Option<OrgSlot> {
        let mut open = self.open_by_org.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(org).or_default();
        if *count >= self.config.max_per_org {
            return None;
        }
        *count += 1;
        Some(OrgSlot {
            access: self.clone(),
            org,
        })
    }
}

/// One of an org's open-transaction places, given back when dropped.
pub(crate) struct OrgSlot {
    access: Arc<SqlAccess>,
    org: Option<i64>,
}

impl Drop for OrgSlot {
    fn drop(&mut self) {
        let mut open = self
            .access
            .open_by_org
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.org) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.org);
            }
        }
    }
}

fn build_pool(
    config: &PgConfig,
    size: usize,
    recycling_method: RecyclingMethod,
    wait: Option<Duration>,
) -> Result<Pool, SetupError> {
    let manager = Manager::from_config(
        config.tokio_config().clone(),
        config.make_tls().map_err(SetupError::Connect)?,
        ManagerConfig { recycling_method },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .timeouts(Timeouts {
            wait,
            create: Some(Duration::from_secs(5)),
            recycle: Some(Duration::from_secs(5)),
        })
        .build()
        .map_err(|e| SetupError::Pool(e.to_string()))
}
