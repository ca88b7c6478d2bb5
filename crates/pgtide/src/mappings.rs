//! Loading mapping files against a database, reloading them, and `pgtide check`.
//!
//! A load is all or nothing: the files must parse and compile, every mapped
//! table and named column must exist, and a mapping that reads old values
//! needs `REPLICA IDENTITY FULL` on its table. Only then does the new set
//! replace the running one, the publication follow it, and its topics and
//! schemas go into the registry. A failed reload keeps the running set and
//! reports its errors (`/readyz`, `GET /v1/mappings`, the log).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pgtide_cdc::setup::{self, TableName};
use pgtide_gateway::mappings::API_SOURCE_PREFIX;
use pgtide_gateway::{ApiOwner, MappingCommand, MappingCommandError, MappingOwner, MappingsView};
use pgtide_mapping::{LoadError, MappingInfo, MappingSet};
use pgtide_store::{MappingScope, Store};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// What [`check_against_db`] does about a mapping that reads old values of
/// a table without `REPLICA IDENTITY FULL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// Report it as an error.
    Report,
    /// Set `REPLICA IDENTITY FULL` on the table.
    Fix,
    /// Neither: it will be fixed later (a check before anything is changed).
    WillFix,
}

/// Checks `set` against the database: tables and columns exist, old values
/// are available where needed (see [`Identity`]).
pub async fn check_against_db(
    set: &MappingSet,
    client: &tokio_postgres::Client,
    identity_fix: Identity,
) -> anyhow::Result<Vec<LoadError>> {
    let mut errors = Vec::new();
    for m in set.mappings() {
        let table = TableName::parse(&m.table)?;
        let row = client
            .query_opt(
                "SELECT c.oid, c.relreplident::text, c.relpersistence::text, pg_has_role(c.relowner, 'USAGE')
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                &[&table.schema, &table.name],
            )
            .await?;
        let at = |place: &pgtide_mapping::Location, message: String| LoadError {
            file: place.file.clone(),
            line: place.line,
            column: place.column,
            message,
        };
        let at_table = |message: String| at(m.table_place(), message);
        let Some(row) = row else {
            errors.push(at_table(format!(
                "mapping {:?}: table {table} does not exist",
                m.name
            )));
            continue;
        };
        let oid: u32 = row.get(0);
        let identity: String = row.get(1);
        let persistence: String = row.get(2);
        let owned: bool = row.get(3);
        // What ALTER PUBLICATION ... ADD TABLE would refuse, said before anything is changed.
        if persistence != "p" {
            errors.push(at_table(format!(
                "mapping {:?}: table {table} is UNLOGGED or TEMPORARY, and Postgres replicates neither",
                m.name
            )));
            continue;
        }
        if !owned {
            errors.push(at_table(format!(
                "mapping {:?}: pgtide's database role cannot add table {table} to its publication: only the table's owner (or a superuser) may",
                m.name
            )));
            continue;
        }
        let columns: Vec<String> = client
            .query(
                "SELECT attname::text FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped",
                &[&oid],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for column in m.columns.iter().filter(|c| !columns.contains(c)) {
            errors.push(at(
                m.column_place(column),
                format!(
                    "mapping {:?}: table {table} has no column {column:?} (it has {})",
                    m.name,
                    columns.join(", ")
                ),
            ));
        }
        if m.needs_old && identity != "f" {
            let fix = format!("ALTER TABLE {} REPLICA IDENTITY FULL", table.quoted());
            if identity_fix == Identity::Fix {
                client.batch_execute(&fix).await?;
                tracing::info!(%table, "set REPLICA IDENTITY FULL for mapping {:?}", m.name);
            } else if identity_fix == Identity::Report {
                errors.push(at(m.old_place(), format!(
                    "mapping {:?} reads old values (changed: or old.) of {table}, which Postgres sends only with REPLICA IDENTITY FULL: run {fix}; (or start pgtide with --set-replica-identity-full)",
                    m.name
                )));
            }
        }
    }
    Ok(errors)
}

/// The tables the publication must hold: captured ones and mapped ones.
pub fn publication_tables(
    capture: &[TableName],
    set: &MappingSet,
) -> anyhow::Result<Vec<TableName>> {
    let mut tables: Vec<TableName> = capture.to_vec();
    for (schema, name) in set.tables() {
        let t = TableName { schema, name };
        if !tables.contains(&t) {
            tables.push(t);
        }
    }
    tables.sort();
    Ok(tables)
}

/// Mirrors the set's topics (and their schemas) into the registry. A schema
/// the registry refuses is reported at its topic's place in the file.
pub async fn sync_registry(set: &MappingSet, store: &Store) -> Vec<LoadError> {
    let mut errors = Vec::new();
    for topic in set.topics() {
        let result = store
            .sync_file_topic(
                &topic.name,
                topic.description.as_deref(),
                topic.compatibility.as_deref(),
                topic.schema.as_ref(),
                &topic.location.file,
            )
            .await;
        if let Err(e) = result {
            errors.push(LoadError {
                file: topic.location.file.clone(),
                line: topic.location.line,
                column: topic.location.column,
                message: format!("topic {:?}: {}", topic.name, public_reason(&e)),
            });
        }
    }
    errors
}

/// A store error as `/readyz` and `GET /v1/mappings` may show it: the
/// caller's mistake as it is, anything else logged and named only.
fn public_reason(e: &pgtide_store::StoreError) -> String {
    if e.is_client_error() {
        e.to_string()
    } else {
        tracing::error!(error = %e, "the registry could not store a mapping file's topic");
        "the event store refused it (the server log has the detail)".to_owned()
    }
}

/// What changes on disk: names, sizes and modification times of the files.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((e.path(), meta.len(), meta.modified().ok()))
        })
        .collect();
    entries.sort();
    entries
}

/// Everything a reload needs.
pub struct Reloader {
    pub dir: PathBuf,
    pub source: tokio_postgres::Client,
    pub store: Store,
    pub publication: String,
    pub capture: Vec<TableName>,
    pub fix_identity: bool,
    /// Tables operators may map (`--api-mapping-tables`), as `schema.table`.
    pub api_tables: Vec<String>,
    pub set: watch::Sender<Arc<MappingSet>>,
    pub view: watch::Sender<MappingsView>,
}

/// A set that loaded and checked against the database, and the stored API
/// mappings left out of it because they cannot be applied now.
pub struct Candidate {
    pub set: MappingSet,
    /// What `set` was loaded from: the files, then the API mappings kept.
    sources: Vec<(String, String)>,
    /// One error (or more) per stored API mapping left out.
    skipped: Vec<LoadError>,
    owners: BTreeMap<String, ApiOwner>,
}

/// Said of a stored API mapping that is left out of the running set.
const SKIPPED: &str = "(this API-defined mapping is skipped until it is fixed or deleted)";

impl Reloader {
    /// Loads the files, the stored API mappings and `extra` (a mapping being
    /// created), and checks them against the database. The files and `extra`
    /// must be whole (their errors are the answer); a stored API mapping that
    /// no longer loads or fits the database (its table dropped, a column gone,
    /// a name a file took since, a system table written into the store by
    /// hand) is left out with its error, and never stops the others.
    pub async fn candidate(
        &self,
        extra: Option<(String, String)>,
    ) -> anyhow::Result<Result<Candidate, Vec<LoadError>>> {
        // The file names come back already joined to the directory.
        let files = match pgtide_mapping::load::read_dir(&self.dir) {
            Ok(files) => files,
            Err(errors) => return Ok(Err(errors)),
        };
        if let Err(errors) = MappingSet::load_sources(&files, &self.dir) {
            return Ok(Err(errors));
        }
        let stored = self.store.api_mappings().await?;
        let owners: BTreeMap<String, ApiOwner> = stored
            .iter()
            .map(|m| {
                let owner = ApiOwner {
                    org_id: m.org_id,
                    table: m.table.clone(),
                };
                (m.name.clone(), owner)
            })
            .collect();
        let mut skipped = Vec::new();
        let mut accepted: Vec<(String, String)> = Vec::new();
        for m in &stored {
            let file = format!("{API_SOURCE_PREFIX}{}", m.name);
            if let Some(message) = self.out_of_bounds(m) {
                skipped.push(LoadError {
                    file,
                    line: 1,
                    column: 1,
                    message,
                });
                continue;
            }
            let mut trial = files.clone();
            trial.push((file.clone(), m.source.clone()));
            match MappingSet::load_sources(&trial, &self.dir) {
                Ok(_) => accepted.push((file, m.source.clone())),
                Err(errors) => skipped.extend(errors),
            }
        }
        loop {
            let mut sources = files.clone();
            sources.extend(accepted.iter().cloned());
            sources.extend(extra.iter().cloned());
            let set = match MappingSet::load_sources(&sources, &self.dir) {
                Ok(set) => set,
                Err(errors) => return Ok(Err(errors)),
            };
            let identity = if self.fix_identity {
                Identity::Fix
            } else {
                Identity::Report
            };
            let errors = check_against_db(&set, &self.source, identity).await?;
            let (stale, fatal): (Vec<LoadError>, Vec<LoadError>) = errors
                .into_iter()
                .partition(|e| accepted.iter().any(|(file, _)| *file == e.file));
            if !fatal.is_empty() {
                return Ok(Err(fatal));
            }
            if stale.is_empty() {
                return Ok(Ok(Candidate {
                    set,
                    sources,
                    skipped,
                    owners,
                }));
            }
            accepted.retain(|(file, _)| !stale.iter().any(|e| e.file == *file));
            skipped.extend(stale);
        }
    }

    /// Why a stored mapping an operator made may no longer run: its table
    /// left `--api-mapping-tables`.
    fn out_of_bounds(&self, m: &pgtide_store::ApiMapping) -> Option<String> {
        if m.created_role.as_deref() != Some("operator") {
            return None;
        }
        let table = m.table.as_deref().unwrap_or("an unknown table");
        if self.api_tables.iter().any(|t| t == table) {
            return None;
        }
        Some(format!(
            "mapping {:?} was made by an operator on {table}, which --api-mapping-tables no longer lists",
            m.name
        ))
    }

    /// The captured tables and those of file mappings: what the publication
    /// must hold whatever the API mappings are.
    pub fn base_tables(&self, set: &MappingSet) -> anyhow::Result<Vec<TableName>> {
        let infos = set.mappings();
        let mut tables = publication_tables(&self.capture, set)?;
        tables.retain(|t| {
            let name = t.to_string();
            self.capture.contains(t)
                || infos
                    .iter()
                    .any(|m| m.table == name && !m.location.file.starts_with(API_SOURCE_PREFIX))
        });
        Ok(tables)
    }

    /// Makes the publication hold the candidate's tables. When Postgres
    /// refuses them, the base tables are published alone (a failure there is
    /// the caller's error, as before API mappings existed), then each table
    /// that only API mappings read, one at a time; the API mappings of a
    /// table Postgres refuses leave the candidate, each with its error.
    pub async fn publish(&self, c: &mut Candidate) -> anyhow::Result<()> {
        let tables = publication_tables(&self.capture, &c.set)?;
        let Err(e) = setup::ensure_publication(&self.source, &self.publication, &tables).await
        else {
            return Ok(());
        };
        tracing::warn!(error = %e, "the publication refused the mapped tables; publishing them one by one");
        let mut ok = self.base_tables(&c.set)?;
        setup::ensure_publication(&self.source, &self.publication, &ok).await?;
        let mut refused = Vec::new();
        for table in tables
            .iter()
            .filter(|t| !ok.contains(t))
            .cloned()
            .collect::<Vec<_>>()
        {
            let mut trial = ok.clone();
            trial.push(table.clone());
            match setup::ensure_publication(&self.source, &self.publication, &trial).await {
                Ok(_) => ok = trial,
                Err(e) => {
                    tracing::error!(%table, error = %e, "the publication refuses this table; its API mappings are skipped");
                    refused.push(table.to_string());
                }
            }
        }
        for m in c.set.mappings() {
            if m.location.file.starts_with(API_SOURCE_PREFIX) && refused.contains(&m.table) {
                c.skipped.push(LoadError {
                    file: m.location.file.clone(),
                    line: m.location.line,
                    column: m.location.column,
                    message: format!(
                        "mapping {:?}: table {} cannot be added to publication {:?} (the server log has the database's reason)",
                        m.name, m.table, self.publication
                    ),
                });
                c.sources.retain(|(file, _)| *file != m.location.file);
            }
        }
        c.set = MappingSet::load_sources(&c.sources, &self.dir).map_err(|errors| {
            anyhow::anyhow!(
                "the mappings without the refused ones do not load: {}",
                errors.first().map(ToString::to_string).unwrap_or_default()
            )
        })?;
        Ok(())
    }

    /// Makes `c` the running set: publication, registry, then the swap.
    pub async fn apply(&self, mut c: Candidate) -> anyhow::Result<()> {
        self.publish(&mut c).await?;
        self.install(c).await;
        Ok(())
    }

    /// Registry and swap, once the publication holds the set's tables.
    async fn install(&self, c: Candidate) {
        let Candidate {
            set,
            skipped,
            owners,
            ..
        } = c;
        let mut registry_errors = sync_registry(&set, &self.store).await;
        let infos = set.mappings();
        let files: Vec<(String, String, serde_json::Value)> = infos
            .iter()
            .filter(|m| !m.location.file.starts_with(API_SOURCE_PREFIX))
            .map(|m| {
                (
                    m.name.clone(),
                    m.location.file.clone(),
                    serde_json::to_value(m).unwrap_or_default(),
                )
            })
            .collect();
        if let Err(e) = self.store.sync_file_mappings(&files).await {
            registry_errors.push(LoadError {
                file: self.dir.display().to_string(),
                line: 1,
                column: 1,
                message: format!(
                    "mirroring the mappings into the registry failed: {}",
                    public_reason(&e)
                ),
            });
        }
        for mut e in skipped {
            e.message = format!("{} {SKIPPED}", e.message);
            registry_errors.push(e);
        }
        for e in &registry_errors {
            tracing::error!("{e}");
        }
        tracing::info!(mappings = infos.len(), topics = set.topics().len(), dir = %self.dir.display(), "mappings loaded");
        self.set.send_replace(Arc::new(set));
        self.view
            .send_replace(MappingsView::loaded(infos, registry_errors, owners));
    }

    /// One reload: swap in the new set if it is whole, else keep the running one.
    pub async fn reload(&self) -> anyhow::Result<bool> {
        match self.candidate(None).await? {
            Ok(c) => {
                self.apply(c).await?;
                Ok(true)
            }
            Err(errors) => {
                for e in &errors {
                    tracing::error!("{e}");
                }
                tracing::error!(
                    count = errors.len(),
                    "mapping reload failed; the running mappings stay"
                );
                self.view.send_modify(|v| v.errors = errors);
                Ok(false)
            }
        }
    }

    /// Validates the new mapping completely (with the database, and the
    /// publication taking its table) before storing it; then applies it.
    async fn create(
        &self,
        definition: serde_json::Value,
        owner: MappingOwner,
    ) -> Result<MappingInfo, MappingCommandError> {
        let internal = |e: anyhow::Error| MappingCommandError::Internal(format!("{e:#}"));
        let Some(name) = definition
            .get("name")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
        else {
            return Err(MappingCommandError::Invalid(vec![LoadError {
                file: format!("{API_SOURCE_PREFIX}(unnamed)"),
                line: 1,
                column: 1,
                message: "missing field `name`".into(),
            }]));
        };
        let file = format!("{API_SOURCE_PREFIX}{name}");
        let source = serde_json::to_string(&serde_json::json!({ "mappings": [definition] }))
            .map_err(|e| internal(e.into()))?;
        let mut candidate = match self
            .candidate(Some((file.clone(), source.clone())))
            .await
            .map_err(internal)?
        {
            Ok(c) => c,
            Err(errors) => return Err(MappingCommandError::Invalid(errors)),
        };
        self.publish(&mut candidate).await.map_err(internal)?;
        let refused: Vec<LoadError> = candidate
            .skipped
            .iter()
            .filter(|e| e.file == file)
            .cloned()
            .collect();
        if !refused.is_empty() {
            // Back to what the running set needs; nothing was stored.
            let running = self.set.borrow().clone();
            if let Ok(tables) = publication_tables(&self.capture, &running)
                && let Err(e) =
                    setup::ensure_publication(&self.source, &self.publication, &tables).await
            {
                tracing::warn!(error = %e, "could not restore the publication");
            }
            return Err(MappingCommandError::Invalid(refused));
        }
        let info = candidate
            .set
            .mappings()
            .into_iter()
            .find(|m| m.name == name)
            .ok_or_else(|| {
                MappingCommandError::Internal("the new mapping is missing from its own set".into())
            })?;
        self.store
            .save_api_mapping(
                &name,
                &source,
                &serde_json::to_value(&info).unwrap_or_default(),
                owner.org_id,
                owner.role.as_str(),
            )
            .await
            .map_err(MappingCommandError::Store)?;
        candidate.owners.insert(
            name,
            ApiOwner {
                org_id: owner.org_id,
                table: Some(info.table.clone()),
            },
        );
        self.install(candidate).await;
        Ok(info)
    }

    async fn delete(&self, name: &str, scope: MappingScope) -> Result<(), MappingCommandError> {
        self.store
            .delete_api_mapping(name, scope)
            .await
            .map_err(MappingCommandError::Store)?;
        self.reload()
            .await
            .map_err(|e| MappingCommandError::Internal(format!("{e:#}")))?;
        Ok(())
    }

    /// Reloads on SIGHUP and whenever the directory's files change (polled
    /// every second), and applies API commands, until shutdown.
    pub async fn run(
        self,
        mut commands: mpsc::Receiver<MappingCommand>,
        shutdown: CancellationToken,
    ) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reloading on file changes only");
                None
            }
        };
        let mut seen = fingerprint(&self.dir);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let hangup = async {
                match hup.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                command = commands.recv() => {
                    match command {
                        Some(MappingCommand::Create { definition, owner, respond }) => {
                            let _ = respond.send(self.create(definition, owner).await);
                        }
                        Some(MappingCommand::Delete { name, scope, respond }) => {
                            let _ = respond.send(self.delete(&name, scope).await);
                        }
                        Some(MappingCommand::Retry { letter, respond }) => {
                            let _ = respond.send(self.retry(&letter).await);
                        }
                        None => std::future::pending::<()>().await,
                    }
                    continue;
                }
                _ = hangup => {
                    tracing::info!("SIGHUP: reloading mappings");
                    seen = fingerprint(&self.dir);
                }
                _ = tick.tick() => {
                    let now = fingerprint(&self.dir);
                    if now == seen {
                        continue;
                    }
                    tracing::info!(dir = %self.dir.display(), "mapping files changed: reloading");
                    seen = now;
                }
            }
            if let Err(e) = self.reload().await {
                tracing::error!(error = %e, "mapping reload failed");
            }
        }
    }
}

/// `pgtide check [DIR] [--database-url]`: every error on its own line as
/// `file:line:column: message`; exit 1 on any.
pub async fn check(dir: &Path, database_url: Option<&str>) -> anyhow::Result<bool> {
    if !dir.is_dir() {
        let what = if dir.exists() {
            "is not a directory"
        } else {
            "does not exist"
        };
        eprintln!("error: the mappings directory {} {what}", dir.display());
        return Ok(false);
    }
    let set = match MappingSet::load_dir(dir) {
        Ok(set) => set,
        Err(errors) => {
            for e in &errors {
                println!("{e}");
            }
            eprintln!("{} error(s) in {}", errors.len(), dir.display());
            return Ok(false);
        }
    };
    if let Some(url) = database_url {
        let client = pgtide_pg::PgConfig::parse(url)?.connect().await?;
        let errors = check_against_db(&set, &client, Identity::Report).await?;
        if !errors.is_empty() {
            for e in &errors {
                println!("{e}");
            }
            eprintln!("{} error(s) in {}", errors.len(), dir.display());
            return Ok(false);
        }
    }
    println!(
        "{}: {} mapping(s), {} topic(s) OK{}",
        dir.display(),
        set.mappings().len(),
        set.topics().len(),
        if database_url.is_some() {
            " (checked against the database)"
        } else {
            ""
        }
    );
    Ok(true)
}

/// Loads the mapping files in `dir` and checks them against the source
/// database, changing nothing: `pgtide run` does this before it creates its
/// schema, publication or slot, so a directory that does not fit the
/// database (the demo `./mappings` against another one) leaves no trace. A
/// missing directory has no mappings; with `fix_identity`, tables that lack
/// `REPLICA IDENTITY FULL` are not errors (they are fixed later).
pub async fn precheck(
    dir: &Path,
    client: &tokio_postgres::Client,
    fix_identity: bool,
) -> anyhow::Result<()> {
    let identity = if fix_identity {
        Identity::WillFix
    } else {
        Identity::Report
    };
    let errors = match MappingSet::load_dir(dir) {
        Ok(set) => check_against_db(&set, client, identity).await?,
        Err(errors) => errors,
    };
    if errors.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let hint = if dir == Path::new("./mappings") {
        "\n(--mappings defaults to ./mappings: point it at your own mapping files, or at an empty directory to capture with --capture only)"
    } else {
        ""
    };
    anyhow::bail!(
        "the mappings in {} have {} error(s), so nothing was created:\n{}{hint}",
        dir.display(),
        errors.len(),
        lines.join("\n")
    )
}

/// A change as a mapping dead letter keeps it (see `pgtide_cdc::changes::failed_change`).
#[derive(serde::Deserialize)]
struct FailedChange {
    mapping: String,
    change: StoredChange,
}

#[derive(serde::Deserialize)]
struct StoredChange {
    op: String,
    table: String,
    new: Option<serde_json::Map<String, serde_json::Value>>,
    old: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    unchanged_columns: Vec<String>,
    xid: u32,
    lsn: String,
    commit_ts: String,
}

impl Reloader {
    /// Runs the dead letter's mapping again over its change with the running
    /// set; stores the events it makes (source `cdc`, with `meta.retried_from`).
    async fn retry(
        &self,
        letter: &pgtide_store::DeadLetterRecord,
    ) -> Result<Vec<pgtide_core::Event>, MappingCommandError> {
        let failed: FailedChange = serde_json::from_value(letter.event.clone()).map_err(|e| {
            MappingCommandError::Failed(format!(
                "dead letter {} does not hold a change: {e}",
                letter.id
            ))
        })?;
        let c = &failed.change;
        let table =
            TableName::parse(&c.table).map_err(|e| MappingCommandError::Failed(e.to_string()))?;
        let op = pgtide_mapping::Op::parse(&c.op)
            .ok_or_else(|| MappingCommandError::Failed(format!("unknown operation {:?}", c.op)))?;
        let set = self.set.borrow().clone();
        let change = pgtide_mapping::Change {
            op,
            schema: &table.schema,
            table: &table.name,
            new: c.new.as_ref(),
            old: c.old.as_ref(),
            unchanged_columns: &c.unchanged_columns,
            xid: c.xid,
            commit_ts: &c.commit_ts,
            lsn: &c.lsn,
        };
        let results: Vec<_> = set
            .apply(&change)
            .into_iter()
            .filter(|r| match r {
                Ok(e) => e.mapping == failed.mapping,
                Err(f) => f.mapping == failed.mapping,
            })
            .collect();
        if results.is_empty() {
            return Err(MappingCommandError::Failed(format!(
                "mapping {:?} no longer maps this change (removed, or its conditions no longer hold)",
                failed.mapping
            )));
        }
        let mut events = Vec::new();
        for result in results {
            let mapped = result.map_err(|f| {
                MappingCommandError::Failed(format!(
                    "mapping {:?} failed again: {}",
                    f.mapping, f.message
                ))
            })?;
            if let Err(issues) = self.store.schemas().validate(&mapped.topic, &mapped.data) {
                let text: Vec<String> = issues
                    .iter()
                    .map(|i| format!("{} (at {:?})", i.message, i.pointer))
                    .collect();
                return Err(MappingCommandError::Failed(format!(
                    "the event breaks the schema of {}: {}",
                    mapped.topic,
                    text.join("; ")
                )));
            }
            let mut event = pgtide_core::NewEvent::new(
                mapped.topic,
                mapped.event_type,
                pgtide_core::EventSource::Cdc,
                mapped.data,
            );
            event.org_id = mapped.org_id;
            let meta = &mut event.meta;
            meta.insert("lsn".into(), c.lsn.clone().into());
            meta.insert("xid".into(), c.xid.into());
            meta.insert("table".into(), c.table.clone().into());
            meta.insert("op".into(), c.op.clone().into());
            meta.insert("commit_ts".into(), c.commit_ts.clone().into());
            meta.insert("mapping".into(), mapped.mapping.into());
            if let Some(key) = mapped.key {
                meta.insert("key".into(), key.into());
            }
            meta.insert("retried_from".into(), letter.id.into());
            events.push(event);
        }
        self.store
            .publish(events)
            .await
            .map_err(MappingCommandError::Store)
    }
}
