//! The command line. Every flag also reads `PGTIDE_<FLAG>`; `DATABASE_URL` is
//! accepted for `--database-url`; `--config pgtide.toml` supplies the same
//! settings from a file (flags and environment win over the file).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "pgtide",
    version,
    about = "Change feeds, events and webhooks from your own PostgreSQL"
)]
pub struct Cli {
    /// A TOML file with the same settings as the flags (e.g. `database_url = "…"`).
    #[arg(long, global = true, env = "PGTIDE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach to a PostgreSQL, stream its changes into events and serve them.
    Run(Box<RunArgs>),
    /// Zero-setup local instance: a throwaway PostgreSQL, the demo schema, the API.
    Dev(DevArgs),
    /// Validate mapping files without running (with --database-url, also
    /// against the database). Exit 1 on any error.
    Check {
        /// The mappings directory.
        #[arg(default_value = "./mappings")]
        dir: PathBuf,
        /// Also check tables, columns and REPLICA IDENTITY in this database.
        #[arg(long, env = "PGTIDE_DATABASE_URL")]
        database_url: Option<String>,
    },
    /// Print a signed JWT for the configured secret, alone on one line.
    Token(TokenArgs),
    /// Create or upgrade the `pgtide` schema (idempotent).
    Migrate(DbArgs),
    /// Inspect or drop the replication slot.
    Slot {
        #[command(subcommand)]
        action: SlotAction,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        which: BenchWhich,
    },
}

#[derive(Debug, Args, Clone)]
pub struct DbArgs {
    /// The PostgreSQL to stream from (libpq URL; sslmode honoured). DATABASE_URL also works.
    #[arg(long, env = "PGTIDE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Where pgtide keeps its state (default: --database-url).
    #[arg(long, env = "PGTIDE_STORE_URL")]
    pub store_url: Option<String>,
}

#[derive(Debug, Args, Clone)]
pub struct SlotArgs {
    /// Replication slot name (created if missing).
    #[arg(long, env = "PGTIDE_SLOT", default_value = "pgtide")]
    pub slot: String,
    /// Publication name (created if missing).
    #[arg(long, env = "PGTIDE_PUBLICATION", default_value = "pgtide")]
    pub publication: String,
}

#[derive(Debug, Args, Clone)]
pub struct ServeArgs {
    /// Address to serve HTTP on.
    #[arg(long, env = "PGTIDE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory of mapping files.
    #[arg(long, env = "PGTIDE_MAPPINGS", default_value = "./mappings")]
    pub mappings: PathBuf,
    /// Tables whose changes go to default topics `tables.<table>.<op>`: a
    /// comma-separated list (`public.orders,users`) or `*` for every table.
    #[arg(long, env = "PGTIDE_CAPTURE", default_value = "")]
    pub capture: String,
    /// The column of captured tables that holds the org id: default-topic
    /// events of a table that has it take their `org_id` from the row
    /// (without it they have none, and reach every tenant).
    #[arg(long, env = "PGTIDE_CAPTURE_ORG_COLUMN")]
    pub capture_org_column: Option<String>,
    /// Tables operators may map through `POST /v1/mappings` (otherwise only
    /// admins may), schema-qualified; repeatable or comma-separated. An
    /// operator's mapping always emits events of the operator's org.
    #[arg(long, env = "PGTIDE_API_MAPPING_TABLES", value_delimiter = ',')]
    pub api_mapping_tables: Vec<String>,
    /// How long events are kept (e.g. `7d`, `12h`).
    #[arg(long, env = "PGTIDE_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub retention: Duration,
    /// How long a stop (SIGTERM, Ctrl-C) waits for open connections to
    /// finish; WebSocket clients are sent a 1001 close at once.
    #[arg(long, env = "PGTIDE_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// Serve without authentication. For local use only.
    #[arg(long, env = "PGTIDE_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// Database role SQL over WebSocket runs as, for `sql: true` tokens; SQL
    /// over WebSocket is off without it.
    #[arg(long, env = "PGTIDE_SQL_ROLE")]
    pub sql_role: Option<String>,
    /// The low-privilege login SQL over WebSocket connects as (libpq URL; it
    /// must be able to `SET ROLE` to `--sql-role` and be neither a superuser
    /// nor `BYPASSRLS`/`CREATEROLE` nor own tables). Default: `--database-url`,
    /// which is refused when its login has any of those powers.
    #[arg(long, env = "PGTIDE_SQL_DATABASE_URL", hide_env_values = true)]
    pub sql_database_url: Option<String>,
    /// Connections SQL over WebSocket may hold (one per open transaction).
    #[arg(long, env = "PGTIDE_SQL_POOL_SIZE", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub sql_pool_size: u16,
    /// Open SQL transactions one org may hold at once, over all its sockets.
    #[arg(long, env = "PGTIDE_SQL_MAX_TRANSACTIONS_PER_ORG", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    pub sql_max_transactions_per_org: u16,
    /// `statement_timeout` of SQL over WebSocket.
    #[arg(long, env = "PGTIDE_SQL_STATEMENT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub sql_statement_timeout: Duration,
    /// HS256 secret for JWT authentication.
    #[arg(long, env = "PGTIDE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// JWKS file or URL for RS256/ES256 JWT authentication.
    #[arg(long, env = "PGTIDE_JWKS")]
    pub jwks: Option<String>,
    /// Accept tokens without an `exp` claim (they never expire). By default
    /// they are refused with 401.
    #[arg(long, env = "PGTIDE_ALLOW_TOKENS_WITHOUT_EXP")]
    pub allow_tokens_without_exp: bool,
    /// Most client connections open at once (HTTP, WebSocket and Socket.IO
    /// together); more wait in the listen backlog until one closes.
    #[arg(long, env = "PGTIDE_MAX_CONNECTIONS", default_value_t = 10_000,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// How long a client may take to send a request's headers (also how long
    /// an idle keep-alive connection stays open).
    #[arg(long, env = "PGTIDE_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// Most events per store transaction.
    #[arg(long, env = "PGTIDE_MAX_BATCH", default_value_t = 5000)]
    pub max_batch: usize,
    /// Set `REPLICA IDENTITY FULL` on tables whose mappings read old values,
    /// instead of refusing them.
    #[arg(long, env = "PGTIDE_SET_REPLICA_IDENTITY_FULL")]
    pub set_replica_identity_full: bool,
    /// Let admin tokens publish to pgtide's own topics (`meta.`, `system.`,
    /// `connections.`, `tables.`, `presence.`, `sync.`) and types (`row.*`,
    /// `table.*`, `schema.*`) over HTTP and sockets; refused by default.
    /// SQL `pgtide.publish()` always refuses them.
    #[arg(long, env = "PGTIDE_ALLOW_RESERVED_PUBLISH")]
    pub allow_reserved_publish: bool,
    /// Interval of the heartbeat that keeps an idle slot moving.
    #[arg(long, env = "PGTIDE_HEARTBEAT", default_value = "10s", value_parser = parse_duration)]
    pub heartbeat: Duration,
    #[command(flatten)]
    pub webhooks: WebhookArgs,
}

#[derive(Debug, Args, Clone)]
pub struct WebhookArgs {
    /// Delay before a failed webhook delivery's first retry; each later one
    /// doubles (2s: 2, 4, 8, 16, 32 … s, capped at 300 s).
    #[arg(long, env = "PGTIDE_WEBHOOK_BACKOFF_BASE", default_value = "2s", value_parser = parse_duration)]
    pub webhook_backoff_base: Duration,
    /// Deliver webhooks to private, loopback and link-local addresses too
    /// (refused by default; on in `pgtide dev`).
    #[arg(long, env = "PGTIDE_WEBHOOK_ALLOW_PRIVATE")]
    pub webhook_allow_private: bool,
    /// Most webhook requests in flight on this node, over all endpoints.
    #[arg(long, env = "PGTIDE_WEBHOOK_WORKERS", default_value_t = 256)]
    pub webhook_workers: usize,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub slot: SlotArgs,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Use this PostgreSQL instead of starting a throwaway one.
    #[arg(long, env = "PGTIDE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Where the throwaway PostgreSQL keeps its data.
    #[arg(long, env = "PGTIDE_DEV_DATA", default_value = ".pgtide/dev")]
    pub data_dir: PathBuf,
    /// Address to serve HTTP on.
    #[arg(long, env = "PGTIDE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory of mapping files.
    #[arg(long, env = "PGTIDE_MAPPINGS", default_value = "./mappings")]
    pub mappings: PathBuf,
    /// Tables to capture to default topics (default: every demo table).
    #[arg(long, env = "PGTIDE_CAPTURE", default_value = "*")]
    pub capture: String,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The subject (`sub`).
    #[arg(long)]
    pub sub: String,
    /// The organization (`org_id`); events of other orgs stay invisible.
    #[arg(long)]
    pub org: Option<i64>,
    /// admin, operator or read.
    #[arg(long, default_value = "read")]
    pub role: String,
    /// A pattern the token may subscribe to (repeatable; none: every topic of its org).
    #[arg(long)]
    pub subscribe: Vec<String>,
    /// A pattern the token may publish to (repeatable; none: the role decides).
    #[arg(long)]
    pub publish: Vec<String>,
    /// Allow SQL over WebSocket/WebRTC.
    #[arg(long)]
    pub sql: bool,
    /// Lifetime, e.g. 1h, 30d.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,
    /// The HS256 secret pgtide runs with.
    #[arg(long, env = "PGTIDE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum SlotAction {
    /// Print the slot's confirmed position, lag and retained WAL.
    Status {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        slot: SlotArgs,
    },
    /// Drop the slot and the publication (pgtide's stored events stay).
    Drop {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        slot: SlotArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchWhich {
    /// CDC throughput against pg_recvlogical, and commit→stored latency.
    Cdc(crate::bench::CdcBenchArgs),
    /// WebSocket fan-out against a Node.js socket.io server, and row commit → client latency.
    Fanout(crate::bench_fanout::FanoutBenchArgs),
    /// Webhook deliveries per second to a local receiver, and commit → delivery latency.
    Webhooks(crate::bench_webhooks::WebhookBenchArgs),
}

/// `7d`, `12h`, `30s`, `500ms` (humantime, plus a bare `d` suffix).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration like 7d, 12h or 30s: {e}"))
}

impl DbArgs {
    /// The source URL: the flag, `PGTIDE_DATABASE_URL`, or `DATABASE_URL`.
    pub fn source_url(&self) -> anyhow::Result<String> {
        self.database_url
            .clone()
            .or_else(|| std::env::var("DATABASE_URL").ok())
            .ok_or_else(|| anyhow::anyhow!("no database given: pass --database-url postgres://user:pass@host/db (or set PGTIDE_DATABASE_URL)"))
    }

    /// The store URL, defaulting to the source.
    pub fn store_url(&self) -> anyhow::Result<String> {
        match &self.store_url {
            Some(url) => Ok(url.clone()),
            None => self.source_url(),
        }
    }
}

/// Loads `--config` (TOML) into `PGTIDE_*` variables that are not already set,
/// so the precedence is flag > environment > file.
pub fn apply_config_file(path: &std::path::Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?;
    for (key, value) in table {
        let var = format!("PGTIDE_{}", key.to_uppercase().replace('-', "_"));
        let value = match value {
            toml::Value::Array(items) => items
                .iter()
                .map(scalar)
                .collect::<anyhow::Result<Vec<_>>>()?
                .join(","),
            other => scalar(&other)?,
        };
        if std::env::var_os(&var).is_none() {
            // SAFETY-free: set before any thread is started (called first thing in main).
            set_env(&var, &value);
        }
    }
    Ok(())
}

/// A TOML scalar as the text a flag would take.
fn scalar(value: &toml::Value) -> anyhow::Result<String> {
    Ok(match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        other => anyhow::bail!("config value {other:?} is not a string, number or boolean"),
    })
}

fn set_env(key: &str, value: &str) {
    // Rust 2024 marks set_var unsafe because other threads may read the
    // environment concurrently; we call this before the runtime starts.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var(key, value);
    }
}
