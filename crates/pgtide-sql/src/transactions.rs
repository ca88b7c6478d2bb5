//! One socket's SQL transactions: the seed's `BeginTransaction` /
//! `ExecuteInTransaction` / `CommitTransaction`, plus `RollbackTransaction`.
//!
//! Each transaction holds a pooled connection of its own, runs as the SQL
//! role (`SET LOCAL ROLE`) with a `statement_timeout` and an idle timeout,
//! and sees the token's claims in `request.jwt.claims` and through
//! `pgtide.claims()`. Every statement passes [`crate::statement::check`]
//! first, so none of those can be changed from inside.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgtide_auth::Claims;
use pgtide_pg::replication::quote_ident;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_postgres::types::{ToSql, Type};
use tokio_util::sync::CancellationToken;

use crate::access::{OrgSlot, SqlAccess};
use crate::param::JsonParam;
use crate::statement;

/// How long ending a transaction may take before its connection is
/// discarded instead of returned.
const FINISH_TIMEOUT: Duration = Duration::from_secs(5);

/// The four transaction verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Begin,
    Execute,
    Commit,
    Rollback,
}

impl Operation {
    /// The operation a message type names, if it is one of them.
    pub fn from_type(kind: &str) -> Option<Operation> {
        match kind {
            "BeginTransaction" => Some(Operation::Begin),
            "ExecuteInTransaction" => Some(Operation::Execute),
            "CommitTransaction" => Some(Operation::Commit),
            "RollbackTransaction" => Some(Operation::Rollback),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Operation::Begin => "begin",
            Operation::Execute => "execute",
            Operation::Commit => "commit",
            Operation::Rollback => "rollback",
        }
    }
}

/// The `data` of a transaction message.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransactionRequest {
    pub transaction_id: String,
    pub sql: Option<String>,
    pub params: Option<Vec<Value>>,
}

/// A failed operation: the contract's error code and message, plus the
/// SQLSTATE when Postgres refused the statement.
#[derive(Debug)]
pub struct SqlFailure {
    pub code: &'static str,
    pub message: String,
    pub sqlstate: Option<String>,
}

impl SqlFailure {
    pub fn new(code: &'static str, message: impl Into<String>) -> SqlFailure {
        SqlFailure {
            code,
            message: message.into(),
            sqlstate: None,
        }
    }

    fn from_postgres(e: &tokio_postgres::Error) -> SqlFailure {
        match e.as_db_error() {
            Some(db) => {
                let mut message = db.message().to_owned();
                if let Some(detail) = db.detail() {
                    message.push_str(&format!(" ({detail})"));
                }
                SqlFailure {
                    code: "sql_error",
                    message,
                    sqlstate: Some(db.code().code().to_owned()),
                }
            }
            None => {
                tracing::warn!(error = %e, source = ?e.source(), "SQL connection failed");
                SqlFailure::new("unavailable", "the database connection failed; try again")
            }
        }
    }
}

struct Open {
    client: deadpool_postgres::Object,
    /// A statement failed: Postgres ignores the rest, so commit rolls back.
    failed: bool,
    /// The claims row's key, deleted when the transaction ends.
    nonce: String,
    _slot: OrgSlot,
}

/// What a transaction message answers: `TransactionResult` data, or a failure.
pub struct Outcome {
    pub data: Value,
    pub failure: Option<SqlFailure>,
}

/// One socket's open transactions, by the client's `transaction_id`.
pub struct Transactions {
    access: Arc<SqlAccess>,
    claims: Claims,
    open: HashMap<String, Open>,
}

impl Transactions {
    pub fn new(access: Arc<SqlAccess>, claims: Claims) -> Transactions {
        Transactions {
            access,
            claims,
            open: HashMap::new(),
        }
    }

    /// Runs one transaction message. When `cancel` fires (the socket
    /// closed), a running statement is cancelled on the server and the
    /// failure is returned at once.
    pub async fn handle(
        &mut self,
        operation: Operation,
        data: Option<Value>,
        cancel: &CancellationToken,
    ) -> Outcome {
        let started = Instant::now();
        let parsed = data
            .ok_or_else(|| {
                SqlFailure::new("invalid_message", "missing \"data\" with a transaction_id")
            })
            .and_then(|d| {
                serde_json::from_value::<TransactionRequest>(d).map_err(|e| {
                    SqlFailure::new("invalid_message", format!("invalid transaction data: {e}"))
                })
            });
        let transaction_id = parsed.as_ref().ok().map(|r| r.transaction_id.clone());
        let result = match parsed {
            Ok(request) => self.run(operation, request, cancel).await,
            Err(e) => Err(e),
        };
        outcome(operation, transaction_id, started, result)
    }

    async fn run(
        &mut self,
        operation: Operation,
        request: TransactionRequest,
        cancel: &CancellationToken,
    ) -> Result<Value, SqlFailure> {
        if !self.claims.sql {
            return Err(SqlFailure::new(
                "forbidden",
                "this token may not run SQL (it needs the claim \"sql\": true)",
            ));
        }
        let id = request.transaction_id;
        if id.is_empty() || id.len() > 128 {
            return Err(SqlFailure::new(
                "invalid_message",
                "transaction_id must be 1 to 128 characters",
            ));
        }
        match operation {
            Operation::Begin => {
                if self.open.contains_key(&id) {
                    return Err(SqlFailure::new(
                        "transaction_exists",
                        format!("transaction {id:?} is already open"),
                    ));
                }
                let most = self.access.config.max_per_connection;
                if self.open.len() >= most {
                    return Err(SqlFailure::new(
                        "too_many_transactions",
                        format!("at most {most} transactions may be open on one connection"),
                    ));
                }
                let open = begin(&self.access, &self.claims).await?;
                self.open.insert(id, open);
                Ok(Value::Null)
            }
            Operation::Execute => {
                let sql = request.sql.ok_or_else(|| {
                    SqlFailure::new("invalid_message", "ExecuteInTransaction needs \"sql\"")
                })?;
                let open = self.open.get_mut(&id).ok_or_else(|| unknown(&id))?;
                let params = request.params.unwrap_or_default();
                let result = tokio::select! {
                    result = execute(&open.client, &sql, &params) => result,
                    () = cancel.cancelled() => {
                        cancel_running(&self.access, &open.client).await;
                        Err(SqlFailure::new("cancelled", "the connection closed; the statement was cancelled"))
                    }
                };
                // As in Postgres, a failed statement dooms its transaction,
                // also when pgtide refused it before Postgres saw it.
                if result.is_err() {
                    open.failed = true;
                }
                result
            }
            Operation::Commit => {
                let open = self.open.remove(&id).ok_or_else(|| unknown(&id))?;
                if open.failed {
                    finish(&self.access, open, "ROLLBACK").await;
                    return Err(SqlFailure::new(
                        "transaction_aborted",
                        format!("transaction {id:?} had a failed statement; it was rolled back"),
                    ));
                }
                let result = open.client.batch_execute("COMMIT").await;
                forget_claims(&self.access, &open.nonce);
                match result {
                    Ok(()) => Ok(Value::Null),
                    Err(e) => {
                        let failure = SqlFailure::from_postgres(&e);
                        let _ = deadpool_postgres::Object::take(open.client);
                        Err(failure)
                    }
                }
            }
            Operation::Rollback => {
                let open = self.open.remove(&id).ok_or_else(|| unknown(&id))?;
                finish(&self.access, open, "ROLLBACK").await;
                Ok(Value::Null)
            }
        }
    }

    /// Rolls back whatever is still open (the socket closed).
    pub async fn close(&mut self) {
        for (_, open) in self.open.drain() {
            finish(&self.access, open, "ROLLBACK").await;
        }
    }
}

/// The reply to a request refused before it ran.
pub fn refused(operation: Operation, failure: SqlFailure) -> Outcome {
    outcome(operation, None, Instant::now(), Err(failure))
}

fn outcome(
    operation: Operation,
    transaction_id: Option<String>,
    started: Instant,
    result: Result<Value, SqlFailure>,
) -> Outcome {
    let mut data = json!({
        "transaction_id": transaction_id,
        "operation": operation.as_str(),
        "success": result.is_ok(),
        "result": null,
        "duration_ms": started.elapsed().as_millis() as u64,
    });
    match result {
        Ok(value) => {
            data["result"] = value;
            Outcome {
                data,
                failure: None,
            }
        }
        Err(failure) => {
            data["error"] = json!(failure.message);
            data["sqlstate"] = json!(failure.sqlstate);
            Outcome {
                data,
                failure: Some(failure),
            }
        }
    }
}

fn unknown(id: &str) -> SqlFailure {
    SqlFailure::new(
        "unknown_transaction",
        format!("no open transaction {id:?} (begin it with BeginTransaction)"),
    )
}

/// A random key for a claims row.
fn nonce() -> String {
    format!("{:032x}", rand::random::<u128>())
}

async fn begin(access: &Arc<SqlAccess>, claims: &Claims) -> Result<Open, SqlFailure> {
    let slot = access.claim_org_slot(claims.org_id).ok_or_else(|| {
        SqlFailure::new(
            "busy",
            format!(
                "this org already has {} SQL transactions open; finish one first",
                access.config.max_per_org
            ),
        )
    })?;
    let client = access.pool.get().await.map_err(|e| {
        tracing::warn!(error = %e, "no connection for an SQL transaction");
        SqlFailure::new("busy", "every SQL connection is in use; try again shortly")
    })?;
    let open = Open {
        client,
        failed: false,
        nonce: nonce(),
        _slot: slot,
    };
    match setup(access, &open, &claims.to_json().to_string()).await {
        Ok(()) => Ok(open),
        Err(failure) => {
            finish(access, open, "ROLLBACK").await;
            Err(failure)
        }
    }
}

/// Opens the transaction on its connection: the role, the limits, and the
/// claims. The claims row names this backend and is written (and
/// committed) before `BEGIN`, so even a `REPEATABLE READ` snapshot sees it;
/// the claims and the nonce travel as parameters, never in the statement
/// text that other sessions could read from `pg_stat_activity`.
async fn setup(access: &SqlAccess, open: &Open, claims: &str) -> Result<(), SqlFailure> {
    let failed = |e: &tokio_postgres::Error| SqlFailure::from_postgres(e);
    let pid: i32 = open
        .client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .map_err(|e| failed(&e))?
        .get(0);
    record_claims(access, &open.nonce, pid, claims).await?;
    let limits = format!(
        "BEGIN; SET LOCAL ROLE {role}; SET LOCAL statement_timeout = {timeout}; \
         SET LOCAL idle_in_transaction_session_timeout = {idle}; \
         SET LOCAL standard_conforming_strings = on",
        role = quote_ident(&access.config.role),
        timeout = access.config.statement_timeout.as_millis(),
        idle = access.config.idle_timeout.as_millis(),
    );
    // Sent together: one round trip.
    let params: [(&(dyn ToSql + Sync), Type); 2] =
        [(&claims, Type::TEXT), (&open.nonce, Type::TEXT)];
    let settings = open.client.query_typed(
        "SELECT set_config('request.jwt.claims', $1, true), set_config('pgtide.claims_nonce', $2, true)",
        &params,
    );
    tokio::try_join!(open.client.batch_execute(&limits), settings).map_err(|e| failed(&e))?;
    Ok(())
}

/// Writes a claims row as the owner login, committed before the client's
/// first statement takes its snapshot.
async fn record_claims(
    access: &SqlAccess,
    nonce: &str,
    pid: i32,
    claims: &str,
) -> Result<(), SqlFailure> {
    let unavailable = |e: &dyn std::fmt::Display| {
        tracing::warn!(error = %e, "recording SQL claims failed");
        SqlFailure::new("unavailable", "the database is not reachable right now")
    };
    let owner = access.owner.get().await.map_err(|e| unavailable(&e))?;
    owner
        .execute(
            "INSERT INTO pgtide.sql_claims (nonce, pid, claims) VALUES ($1, $2, $3::text::jsonb)",
            &[&nonce, &pid, &claims],
        )
        .await
        .map_err(|e| unavailable(&e))?;
    Ok(())
}

/// Deletes a finished transaction's claims row, off the request's path.
fn forget_claims(access: &Arc<SqlAccess>, nonce: &str) {
    let access = access.clone();
    let nonce = nonce.to_owned();
    tokio::spawn(async move {
        if let Ok(owner) = access.owner.get().await
            && let Err(e) = owner
                .execute("DELETE FROM pgtide.sql_claims WHERE nonce = $1", &[&nonce])
                .await
        {
            tracing::debug!(error = %e, "deleting an SQL claims row failed");
        }
    });
}

/// Asks the server to cancel whatever `client` is running.
async fn cancel_running(access: &SqlAccess, client: &deadpool_postgres::Object) {
    let token = client.cancel_token();
    if let Err(e) = token.cancel_query(access.tls.clone()).await {
        tracing::warn!(error = %e, "cancelling an SQL statement failed");
    }
}

/// Ends a transaction and returns the connection to the pool (reset before
/// reuse), or drops the connection when that fails or hangs, so no pooled
/// connection stays mid-transaction.
async fn finish(access: &Arc<SqlAccess>, open: Open, statement: &str) {
    forget_claims(access, &open.nonce);
    match tokio::time::timeout(FINISH_TIMEOUT, open.client.batch_execute(statement)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "ending an SQL transaction failed; discarding its connection");
            let _ = deadpool_postgres::Object::take(open.client);
        }
        Err(_) => {
            tracing::warn!("ending an SQL transaction timed out; discarding its connection");
            let _ = deadpool_postgres::Object::take(open.client);
        }
    }
}

/// Runs one statement; rows come back as JSON objects (column name → value),
/// other statements as `{"rows_affected": n}`.
async fn execute(
    client: &deadpool_postgres::Object,
    sql: &str,
    params: &[Value],
) -> Result<Value, SqlFailure> {
    let sql = sql.trim();
    if sql.is_empty() {
        return Err(SqlFailure::new("invalid_message", "\"sql\" is empty"));
    }
    statement::check(sql).map_err(|refused| match refused {
        statement::Refused::Syntax(message) => SqlFailure {
            code: "sql_error",
            message,
            sqlstate: Some("42601".into()),
        },
        statement::Refused::NotAllowed(message) => SqlFailure::new("forbidden_statement", message),
    })?;
    let sql = sql.trim_end_matches(|c: char| c == ';' || c.is_whitespace());
    let params: Vec<JsonParam<'_>> = params.iter().map(JsonParam).collect();
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    // Rows as JSON without per-type decoding here: let Postgres build them.
    // Statements that cannot sit in a WITH (DML without RETURNING) are
    // prepared as they are; the savepoint keeps the probe's failure from
    // aborting the caller's transaction. The newline ends a trailing `--`
    // comment before the closing parenthesis.
    let wrapped =
        format!("WITH pgtide_rows AS ({sql}\n) SELECT to_jsonb(pgtide_rows) FROM pgtide_rows");
    client
        .batch_execute("SAVEPOINT pgtide_probe")
        .await
        .map_err(|e| SqlFailure::from_postgres(&e))?;
    match client.prepare(&wrapped).await {
        Ok(prepared) => {
            client
                .batch_execute("RELEASE SAVEPOINT pgtide_probe")
                .await
                .map_err(|e| SqlFailure::from_postgres(&e))?;
            let rows = client
                .query(&prepared, &refs)
                .await
                .map_err(|e| SqlFailure::from_postgres(&e))?;
            Ok(Value::Array(
                rows.iter()
                    .map(|r| r.try_get::<_, Value>(0).unwrap_or(Value::Null))
                    .collect(),
            ))
        }
        Err(_) => {
            client
                .batch_execute("ROLLBACK TO SAVEPOINT pgtide_probe; RELEASE SAVEPOINT pgtide_probe")
                .await
                .map_err(|e| SqlFailure::from_postgres(&e))?;
            let prepared = client
                .prepare(sql)
                .await
                .map_err(|e| SqlFailure::from_postgres(&e))?;
            if !prepared.columns().is_empty() {
                return Err(SqlFailure::new(
                    "unsupported_statement",
                    "this statement returns rows that cannot be turned into JSON objects \
                     (are two columns named alike?); give every column its own name",
                ));
            }
            let n = client
                .execute(&prepared, &refs)
                .await
                .map_err(|e| SqlFailure::from_postgres(&e))?;
            Ok(json!({"rows_affected": n}))
        }
    }
}
