//! `pgtide run` and the commands that share its wiring (`migrate`, `slot`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use pgtide_auth::Verifier;
use pgtide_cdc::{Capture, CdcConfig, CdcStatus, setup};
use pgtide_gateway::auth::Auth;
use pgtide_gateway::hub::Hub;
use pgtide_gateway::{AppState, MappingsView, Services};
use pgtide_mapping::MappingSet;
use pgtide_pg::PgConfig;
use pgtide_store::Store;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cli::{DbArgs, RunArgs, ServeArgs, SlotArgs};
use crate::mappings;

pub async fn run(args: RunArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let missing = missing_settings(&args);
    match missing.as_slice() {
        [] => {}
        [one] => bail!("{one}"),
        many => bail!(
            "pgtide run is missing {} settings:\n  - {}",
            many.len(),
            many.join("\n  - ")
        ),
    }
    let auth = auth(&args.serve).await?;
    let source = PgConfig::parse(&args.db.source_url()?)?;
    let store = PgConfig::parse(&args.db.store_url()?)?;
    let listener = bind(args.serve.listen).await?;
    let running = start(
        &source,
        &store,
        &args.slot,
        &args.serve,
        auth,
        listener,
        shutdown,
    )
    .await?;
    // One stable stdout line, so scripts (and the test harness) can find a port-0 address.
    println!("pgtide listening on http://{}", running.addr);
    running.wait().await
}

/// Every setting `pgtide run` cannot start without and was not given, each
/// as a line saying how to give it, so one attempt shows them all.
fn missing_settings(args: &RunArgs) -> Vec<String> {
    let mut missing = Vec::new();
    if let Err(e) = args.db.source_url() {
        missing.push(e.to_string());
    }
    let serve = &args.serve;
    if serve.jwt_secret.is_none() && serve.jwks.is_none() && !serve.insecure_no_auth {
        missing.push(NO_AUTH.to_owned());
    }
    missing
}

const NO_AUTH: &str = "refusing to serve without authentication: pass --jwt-secret SECRET or --jwks FILE|URL, or --insecure-no-auth for local use";

/// The configured authentication; `run` refuses to start without one unless
/// `--insecure-no-auth` says so out loud.
pub async fn auth(serve: &ServeArgs) -> anyhow::Result<Auth> {
    let allow = serve.allow_tokens_without_exp;
    if allow && !serve.insecure_no_auth {
        tracing::warn!(
            "--allow-tokens-without-exp: tokens without exp are accepted and never expire"
        );
    }
    match (&serve.jwt_secret, &serve.jwks, serve.insecure_no_auth) {
        (Some(_), Some(_), _) => bail!("give --jwt-secret or --jwks, not both"),
        (Some(secret), None, _) => {
            if secret.len() < 16 {
                bail!(
                    "--jwt-secret is too short: use at least 16 characters (32 random bytes is better)"
                );
            }
            Ok(Auth::Jwt(
                Verifier::hs256(secret).allow_tokens_without_exp(allow),
            ))
        }
        (None, Some(source), _) => Ok(Auth::Jwt(
            Verifier::jwks(source)
                .await
                .map_err(|e| anyhow::anyhow!("--jwks {source}: {e}"))?
                .allow_tokens_without_exp(allow),
        )),
        (None, None, true) => {
            tracing::warn!(
                "--insecure-no-auth: every client may read and publish every event; do not expose this port"
            );
            Ok(Auth::Insecure)
        }
        (None, None, false) => bail!("{NO_AUTH}"),
    }
}

pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!(
            "cannot listen on {addr} (is another process using it? choose another with --listen)"
        )
    })
}

/// A started pgtide: the CDC pipeline and the HTTP server, running.
pub struct Running {
    pub addr: SocketAddr,
    cdc: JoinHandle<pgtide_cdc::Result<()>>,
    http: JoinHandle<std::io::Result<()>>,
    shutdown: CancellationToken,
    sockets: tokio_util::task::TaskTracker,
    shutdown_timeout: Duration,
}

impl Running {
    /// Runs until shutdown or a fatal pipeline error, then stops everything.
    pub async fn wait(self) -> anyhow::Result<()> {
        let Running {
            mut cdc,
            mut http,
            shutdown,
            sockets,
            shutdown_timeout,
            ..
        } = self;
        let result = tokio::select! {
            r = &mut cdc => {
                shutdown.cancel();
                let _ = http.await;
                match r {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(anyhow::anyhow!(e).context("replication stopped")),
                    Err(e) => Err(anyhow::anyhow!("replication task failed: {e}")),
                }
            }
            r = &mut http => {
                shutdown.cancel();
                let _ = cdc.await;
                match r {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(anyhow::anyhow!(e).context("HTTP server stopped")),
                    Err(e) => Err(anyhow::anyhow!("HTTP task failed: {e}")),
                }
            }
        };
        // Open WebSockets were told to close (1001); wait for them, within bounds.
        sockets.close();
        if tokio::time::timeout(shutdown_timeout, sockets.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = sockets.len(),
                timeout = ?shutdown_timeout,
                "WebSockets still open at the shutdown timeout; leaving them"
            );
        }
        tracing::info!("stopped");
        result
    }
}

/// Checks the source, migrates the store, prepares publication and slot, and
/// starts the pipeline and the HTTP server.
pub async fn start(
    source: &PgConfig,
    store_config: &PgConfig,
    slot: &SlotArgs,
    serve: &ServeArgs,
    auth: Auth,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    let capture = Capture::parse(&serve.capture)?;
    let api_tables = api_mapping_tables(&serve.api_mapping_tables)?;
    let client = source.connect().await?;
    setup::preflight(&client, &slot.slot).await?;
    let captured = setup::resolve_tables(&client, &capture).await?;
    if matches!(auth, Auth::Jwt(_)) {
        warn_org_gaps(&client, &captured, serve.capture_org_column.as_deref()).await?;
    }
    // Everything that can be checked is checked before anything is created
    // (schema, claims table, publication, slot).
    mappings::precheck(&serve.mappings, &client, serve.set_replica_identity_full).await?;
    let sql = sql_access(source, serve).await?;
    migrate_store(store_config).await?;
    let store = Store::new(store_config, 16)?;
    let (set_tx, set_rx) = watch::channel(Arc::new(MappingSet::empty()));
    let (view_tx, view_rx) = watch::channel(MappingsView::default());
    let reloader = mappings::Reloader {
        dir: serve.mappings.clone(),
        source: client,
        store: store.clone(),
        publication: slot.publication.clone(),
        capture: captured.clone(),
        fix_identity: serve.set_replica_identity_full,
        api_tables: api_tables.clone(),
        set: set_tx,
        view: view_tx,
    };
    let candidate = match reloader.candidate(None).await? {
        Ok(candidate) => candidate,
        Err(errors) => {
            let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
            bail!(
                "the mappings in {} have {} error(s):\n{}",
                serve.mappings.display(),
                errors.len(),
                lines.join("\n")
            );
        }
    };
    // The captured tables and the file mappings' ones make the publication;
    // the API mappings' tables join it in `apply`, which skips any of them
    // Postgres refuses rather than stopping.
    let base = reloader.base_tables(&candidate.set)?;
    setup::prepare(&reloader.source, &slot.slot, &slot.publication, &base).await?;
    reloader.apply(candidate).await?;
    let set = reloader.set.borrow().clone();
    if captured.is_empty() && set.mappings().is_empty() {
        tracing::warn!(
            mappings = %serve.mappings.display(),
            "nothing to capture: no --capture tables and no mappings, so no row change becomes an event (events published through the API, sockets and pgtide.publish() are still stored); pass --capture TABLES or --mappings DIR"
        );
    }
    tracing::info!(
        slot = %slot.slot,
        publication = %slot.publication,
        tables = ?mappings::publication_tables(&captured, &set)?.iter().map(ToString::to_string).collect::<Vec<_>>(),
        mappings = set.mappings().len(),
        "capturing"
    );
    store.reload_schemas().await?;

    let (status_tx, status_rx) = watch::channel(CdcStatus::default());
    let config = CdcConfig {
        source: source.clone(),
        slot: slot.slot.clone(),
        publication: slot.publication.clone(),
        max_batch: serve.max_batch,
        heartbeat: serve.heartbeat,
        capture: captured,
        capture_org_column: serve.capture_org_column.clone(),
        mappings: set_rx,
    };
    let cdc = tokio::spawn(pgtide_cdc::run(
        config,
        store.clone(),
        status_tx,
        shutdown.clone(),
    ));
    spawn_retention(store.clone(), serve.retention, shutdown.clone());
    let (commands_tx, commands_rx) = mpsc::channel(16);
    let hub = Hub::default();
    tokio::spawn(store.clone().follow_commits(shutdown.clone()));
    // Where live delivery starts is settled before anything is served, so no
    // event committed once clients can subscribe falls before it.
    store.follow_committed();
    let live_from = store.last_seq().await?;
    tokio::spawn(
        hub.clone()
            .run_tailer(store.clone(), live_from, shutdown.clone()),
    );
    let webhooks = pgtide_webhooks::Dispatcher::new(
        store.clone(),
        pgtide_webhooks::Config {
            backoff_base: serve.webhooks.webhook_backoff_base,
            allow_private: serve.webhooks.webhook_allow_private,
            workers: serve.webhooks.webhook_workers,
            retention: serve.retention,
            ..Default::default()
        },
    )?;
    tokio::spawn(webhooks.clone().run(shutdown.clone()));
    let state = AppState::from(Services {
        store,
        cdc: status_rx,
        mappings: view_rx,
        mapping_commands: commands_tx,
        api_mapping_tables: api_tables,
        hub,
        auth,
        exactly_once: Default::default(),
        webhooks,
        sql,
        allow_reserved_publish: serve.allow_reserved_publish,
        shutdown: shutdown.clone(),
        sockets: tokio_util::task::TaskTracker::new(),
    });
    let sockets = state.sockets.clone();
    tokio::spawn(reloader.run(commands_rx, shutdown.clone()));
    let addr = listener.local_addr()?;
    let limits = pgtide_gateway::ConnectionLimits {
        max_connections: serve.max_connections as usize,
        header_read_timeout: serve.header_read_timeout,
    };
    let http = tokio::spawn(pgtide_gateway::serve(
        listener,
        state,
        limits,
        shutdown.clone(),
    ));
    Ok(Running {
        addr,
        cdc,
        http,
        shutdown,
        sockets,
        shutdown_timeout: serve.shutdown_timeout,
    })
}

/// `--api-mapping-tables` as `schema.table` (bare names are in `public`);
/// tables of the reserved schemas are refused.
fn api_mapping_tables(given: &[String]) -> anyhow::Result<Vec<String>> {
    let mut tables = Vec::new();
    for text in given.iter().map(|t| t.trim()).filter(|t| !t.is_empty()) {
        let (schema, name) = pgtide_mapping::parse_table(text)
            .map_err(|e| anyhow::anyhow!("--api-mapping-tables: {e}"))?;
        if pgtide_mapping::is_reserved_schema(&schema) {
            bail!(
                "--api-mapping-tables names {text}, in schema {schema:?}, which pgtide never maps"
            );
        }
        let table = format!("{schema}.{name}");
        if !tables.contains(&table) {
            tables.push(table);
        }
    }
    Ok(tables)
}

/// With tokens that are not all admins, says which captured tables'
/// default-topic events will have no `org_id` and so reach every tenant.
async fn warn_org_gaps(
    client: &tokio_postgres::Client,
    captured: &[setup::TableName],
    column: Option<&str>,
) -> anyhow::Result<()> {
    let mut without = Vec::new();
    let mut deletes = Vec::new();
    for gap in setup::org_gaps(client, captured, column).await? {
        match gap {
            setup::OrgGap::NoColumn(t) => without.push(t.to_string()),
            setup::OrgGap::DeletesWithoutOrg(t) => deletes.push(t.to_string()),
        }
    }
    if !without.is_empty() {
        let why = match column {
            Some(c) => format!("have no column {c:?} (--capture-org-column)"),
            None => "have no org: --capture-org-column is not set".to_owned(),
        };
        tracing::warn!(
            tables = %without.join(", "),
            "these captured tables {why}, so their default-topic events have org_id null and every tenant's subscribers and readers receive them"
        );
    }
    if !deletes.is_empty() {
        tracing::warn!(
            tables = %deletes.join(", "),
            "deletes of these captured tables send only key columns, which do not include the org column: their events have org_id null; set REPLICA IDENTITY FULL"
        );
    }
    Ok(())
}

async fn migrate_store(config: &PgConfig) -> anyhow::Result<Vec<i32>> {
    let mut client = config.connect().await?;
    Ok(pgtide_store::migrate::migrate(&mut client).await?)
}

/// SQL over WebSocket runs as `--sql-role`, connected as the low-privilege
/// `--sql-database-url` login, which is checked here before anything else
/// starts: a login that could escape is refused with one line.
async fn sql_access(
    source: &PgConfig,
    serve: &ServeArgs,
) -> anyhow::Result<Option<Arc<pgtide_sql::SqlAccess>>> {
    let Some(role) = &serve.sql_role else {
        return Ok(None);
    };
    let login = match &serve.sql_database_url {
        Some(url) => {
            PgConfig::parse(url).map_err(|e| anyhow::anyhow!("--sql-database-url: {e}"))?
        }
        None => source.clone(),
    };
    let mut config = pgtide_sql::SqlConfig::new(role, serve.sql_statement_timeout);
    config.pool_size = usize::from(serve.sql_pool_size);
    config.max_per_org = usize::from(serve.sql_max_transactions_per_org);
    let access = pgtide_sql::SqlAccess::start(source, &login, config).await?;
    tracing::info!(
        role,
        login = login.user(),
        "SQL over WebSocket is on for tokens with \"sql\": true"
    );
    Ok(Some(Arc::new(access)))
}

/// Deletes expired events every minute (or every half retention period, when
/// that is shorter).
fn spawn_retention(store: Store, max_age: Duration, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let period = (max_age / 2).clamp(Duration::from_millis(500), Duration::from_secs(60));
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => match store.apply_retention(max_age).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "retention removed expired events"),
                    Err(e) => tracing::warn!(error = %e, "retention pass failed"),
                },
            }
        }
    });
}

pub async fn migrate_only(db: &DbArgs) -> anyhow::Result<()> {
    let config = PgConfig::parse(&db.store_url()?)?;
    let applied = migrate_store(&config).await?;
    if applied.is_empty() {
        println!("pgtide schema is up to date");
    } else {
        println!("applied migrations {applied:?}");
    }
    Ok(())
}

pub async fn slot_status(db: &DbArgs, slot: &SlotArgs) -> anyhow::Result<()> {
    let client = PgConfig::parse(&db.source_url()?)?.connect().await?;
    match setup::slot_status(&client, &slot.slot).await? {
        None => bail!("no replication slot named {:?}", slot.slot),
        Some(s) => {
            println!("slot:               {}", s.slot);
            println!("active:             {}", s.active);
            println!(
                "confirmed position: {}",
                s.confirmed_flush_lsn.as_deref().unwrap_or("-")
            );
            println!("lag:                {} bytes", s.lag_bytes);
            println!("retained WAL:       {} bytes", s.retained_wal_bytes);
            Ok(())
        }
    }
}

pub async fn slot_drop(db: &DbArgs, slot: &SlotArgs) -> anyhow::Result<()> {
    let source = PgConfig::parse(&db.source_url()?)?;
    let client = source.connect().await?;
    let existed = setup::drop_slot(&client, &slot.slot, &slot.publication).await?;
    if let Ok(store) = PgConfig::parse(&db.store_url()?)?.connect().await {
        let _ = pgtide_store::progress::forget(&store, &slot.slot).await;
    }
    if existed {
        println!(
            "dropped slot {:?} and publication {:?}",
            slot.slot, slot.publication
        );
    } else {
        println!(
            "no slot {:?}; dropped publication {:?} if it existed",
            slot.slot, slot.publication
        );
    }
    Ok(())
}
