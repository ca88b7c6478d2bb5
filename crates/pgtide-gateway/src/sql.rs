//! SQL transactions over WebSocket (SPEC §7, §11): the seed's
//! `BeginTransaction` / `ExecuteInTransaction` / `CommitTransaction`, plus
//! `RollbackTransaction`.
//!
//! Only `sql: true` tokens may use it, and only when the server names a
//! database role with `--sql-role`. Each transaction holds one connection of
//! its own; it runs as that role (`SET LOCAL ROLE`), with a
//! `statement_timeout`, and with the token's claims in `request.jwt.claims`
//! so row-level security policies can read them. Statements that would leave
//! those bounds (transaction control, `SET ROLE`, `RESET`) are refused. As
//! with PostgREST, the connecting user should be a low-privilege
//! "authenticator" role that can only switch to `--sql-role`.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use deadpool_postgres::Pool;
use pgtide_pg::PgConfig;
use pgtide_pg::replication::quote_ident;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use crate::auth::Caller;

/// Open transactions one connection may hold at once.
pub const MAX_OPEN_PER_CONNECTION: usize = 8;
/// An open transaction left idle this long is ended by the server.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Where SQL runs, and as whom.
pub struct SqlAccess {
    pool: Pool,
    role: String,
    statement_timeout: Duration,
}

impl SqlAccess {
    pub fn new(
        config: &PgConfig,
        role: &str,
        statement_timeout: Duration,
        max_connections: usize,
    ) -> Result<SqlAccess, String> {
        let pool =
            pgtide_store::connect_pool(config, max_connections).map_err(|e| e.to_string())?;
        Ok(SqlAccess {
            pool,
            role: role.to_owned(),
            statement_timeout,
        })
    }
}

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
    fn new(code: &'static str, message: impl Into<String>) -> SqlFailure {
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
            None => SqlFailure::new(
                "sql_error",
                e.source()
                    .map_or_else(|| e.to_string(), |s| format!("{e}: {s}")),
            ),
        }
    }
}

struct Open {
    client: deadpool_postgres::Object,
    /// A statement failed: Postgres ignores the rest, so commit rolls back.
    failed: bool,
}

/// One connection's open transactions, by the client's `transaction_id`.
#[derive(Default)]
pub struct Transactions {
    open: HashMap<String, Open>,
}

/// What a transaction message answers: `TransactionResult` data, or a failure.
pub struct Outcome {
    pub data: Value,
    pub failure: Option<SqlFailure>,
}

impl Transactions {
    /// Runs one transaction message for `caller`.
    pub async fn handle(
        &mut self,
        access: Option<&SqlAccess>,
        caller: &Caller,
        operation: Operation,
        data: Option<Value>,
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
            Ok(request) => self.run(access, caller, operation, request).await,
            Err(e) => Err(e),
        };
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

    async fn run(
        &mut self,
        access: Option<&SqlAccess>,
        caller: &Caller,
        operation: Operation,
        request: TransactionRequest,
    ) -> Result<Value, SqlFailure> {
        let access = access.ok_or_else(|| {
            SqlFailure::new(
                "sql_disabled",
                "SQL over WebSocket is off on this server (start it with --sql-role ROLE)",
            )
        })?;
        if !caller.claims.sql {
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
                if self.open.len() >= MAX_OPEN_PER_CONNECTION {
                    return Err(SqlFailure::new(
                        "too_many_transactions",
                        format!(
                            "at most {MAX_OPEN_PER_CONNECTION} transactions may be open on one connection"
                        ),
                    ));
                }
                let client = begin(access, caller).await?;
                self.open.insert(
                    id,
                    Open {
                        client,
                        failed: false,
                    },
                );
                Ok(Value::Null)
            }
            Operation::Execute => {
                let sql = request.sql.ok_or_else(|| {
                    SqlFailure::new("invalid_message", "ExecuteInTransaction needs \"sql\"")
                })?;
                let open = self.open.get_mut(&id).ok_or_else(|| unknown(&id))?;
                let params = request.params.unwrap_or_default();
                let result = execute(&open.client, &sql, &params).await;
                if let Err(f) = &result
                    && f.sqlstate.is_some()
                {
                    open.failed = true;
                }
                result
            }
            Operation::Commit => {
                let open = self.open.remove(&id).ok_or_else(|| unknown(&id))?;
                if open.failed {
                    finish(open.client, "ROLLBACK").await;
                    return Err(SqlFailure::new(
                        "transaction_aborted",
                        format!("transaction {id:?} had a failed statement; it was rolled back"),
                    ));
                }
                match open.client.batch_execute("COMMIT").await {
                    Ok(()) => Ok(Value::Null),
                    Err(e) => Err(SqlFailure::from_postgres(&e)),
                }
            }
            Operation::Rollback => {
                let open = self.open.remove(&id).ok_or_else(|| unknown(&id))?;
                finish(open.client, "ROLLBACK").await;
                Ok(Value::Null)
            }
        }
    }

    /// Rolls back whatever is still open (the WebSocket closed).
    pub async fn close(&mut self) {
        for (_, open) in self.open.drain() {
            finish(open.client, "ROLLBACK").await;
        }
    }
}

fn unknown(id: &str) -> SqlFailure {
    SqlFailure::new(
        "unknown_transaction",
        format!("no open transaction {id:?} (begin it with BeginTransaction)"),
    )
}

async fn begin(
    access: &SqlAccess,
    caller: &Caller,
) -> Result<deadpool_postgres::Object, SqlFailure> {
    let client = access.pool.get().await.map_err(|e| {
        tracing::warn!(error = %e, "no connection for an SQL transaction");
        SqlFailure::new("unavailable", "the database is not reachable right now")
    })?;
    let setup = format!(
        "BEGIN; SET LOCAL ROLE {}; SET LOCAL statement_timeout = {}; \
         SET LOCAL idle_in_transaction_session_timeout = {}",
        quote_ident(&access.role),
        access.statement_timeout.as_millis(),
        IDLE_TIMEOUT.as_millis(),
    );
    let claims = caller.claims.to_json().to_string();
    let result = async {
        client.batch_execute(&setup).await?;
        client
            .execute(
                "SELECT set_config('request.jwt.claims', $1, true)",
                &[&claims],
            )
            .await
    }
    .await;
    match result {
        Ok(_) => Ok(client),
        Err(e) => {
            let failure = SqlFailure::from_postgres(&e);
            finish(client, "ROLLBACK").await;
            Err(failure)
        }
    }
}

/// Ends a transaction and returns the connection to the pool, or drops the
/// connection when even that fails, so no pooled connection stays mid-transaction.
async fn finish(client: deadpool_postgres::Object, statement: &str) {
    if let Err(e) = client.batch_execute(statement).await {
        tracing::debug!(error = %e, "closing an SQL transaction failed; discarding its connection");
        let _ = deadpool_postgres::Object::take(client);
    }
}

/// Statements that would step outside the transaction, role or limits
/// pgtide set up.
fn refused(sql: &str) -> Option<&'static str> {
    let words: Vec<String> = sql
        .split(|c: char| c.is_whitespace() || c == ';')
        .filter(|w| !w.is_empty())
        .take(3)
        .map(str::to_ascii_uppercase)
        .collect();
    let first = words.first().map(String::as_str).unwrap_or("");
    let rest: Vec<&str> = words.iter().skip(1).map(String::as_str).collect();
    let setting = match rest.as_slice() {
        ["LOCAL", s, ..] | ["SESSION", s, ..] => *s,
        [s, ..] => *s,
        [] => "",
    };
    match first {
        "BEGIN" | "START" | "COMMIT" | "END" | "ROLLBACK" | "ABORT" | "SAVEPOINT" | "RELEASE"
        | "PREPARE" => Some("transaction control is done with the transaction messages"),
        "RESET" | "DISCARD" => Some("resetting session state is not allowed here"),
        "SET"
            if matches!(
                setting,
                "ROLE"
                    | "SESSION"
                    | "STATEMENT_TIMEOUT"
                    | "IDLE_IN_TRANSACTION_SESSION_TIMEOUT"
                    | "TRANSACTION"
            ) || (rest.first() == Some(&"SESSION")) =>
        {
            Some("changing the role, session or limits pgtide set is not allowed here")
        }
        _ => None,
    }
}

/// Runs one statement; rows come back as JSON objects (column name → value),
/// other statements as `{"rows_affected": n}`.
async fn execute(
    client: &deadpool_postgres::Object,
    sql: &str,
    params: &[Value],
) -> Result<Value, SqlFailure> {
    let sql = sql.trim().trim_end_matches(';').trim_end();
    if sql.is_empty() {
        return Err(SqlFailure::new("invalid_message", "\"sql\" is empty"));
    }
    if let Some(why) = refused(sql) {
        return Err(SqlFailure::new("forbidden_statement", why));
    }
    let params: Vec<JsonParam<'_>> = params.iter().map(JsonParam).collect();
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    // Rows as JSON without per-type decoding here: let Postgres build them.
    // Statements that cannot sit in a WITH (DDL, DML without RETURNING) are
    // prepared as they are; the savepoint keeps the probe's failure from
    // aborting the caller's transaction.
    let wrapped =
        format!("WITH pgtide_rows AS ({sql}) SELECT to_jsonb(pgtide_rows) FROM pgtide_rows");
    let probe = async {
        client.batch_execute("SAVEPOINT pgtide_probe").await?;
        client.prepare(&wrapped).await
    }
    .await;
    match probe {
        Ok(statement) => {
            client
                .batch_execute("RELEASE SAVEPOINT pgtide_probe")
                .await
                .map_err(|e| SqlFailure::from_postgres(&e))?;
            let rows = client
                .query(&statement, &refs)
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
            let statement = client
                .prepare(sql)
                .await
                .map_err(|e| SqlFailure::from_postgres(&e))?;
            if !statement.columns().is_empty() {
                return Err(SqlFailure::new(
                    "unsupported_statement",
                    "this statement returns rows that cannot be turned into JSON objects \
                     (are two columns named alike?); give every column its own name",
                ));
            }
            let n = client
                .execute(&statement, &refs)
                .await
                .map_err(|e| SqlFailure::from_postgres(&e))?;
            Ok(json!({"rows_affected": n}))
        }
    }
}

/// A JSON parameter, encoded for whatever type Postgres inferred for its
/// placeholder.
#[derive(Debug)]
struct JsonParam<'a>(&'a Value);

type BoxError = Box<dyn StdError + Sync + Send>;

impl ToSql for JsonParam<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        let v = self.0;
        if v.is_null() {
            return Ok(IsNull::Yes);
        }
        let wrong = |want: &str| -> BoxError {
            format!("expected {want} for a parameter of type {ty}, got {v}").into()
        };
        let int = || v.as_i64().ok_or_else(|| wrong("an integer"));
        let float = || v.as_f64().ok_or_else(|| wrong("a number"));
        match *ty {
            Type::BOOL => v
                .as_bool()
                .ok_or_else(|| wrong("true or false"))?
                .to_sql(ty, out),
            Type::INT2 => i16::try_from(int()?)?.to_sql(ty, out),
            Type::INT4 => i32::try_from(int()?)?.to_sql(ty, out),
            Type::INT8 => int()?.to_sql(ty, out),
            Type::OID => u32::try_from(int()?)?.to_sql(ty, out),
            Type::FLOAT4 => (float()? as f32).to_sql(ty, out),
            Type::FLOAT8 => float()?.to_sql(ty, out),
            Type::JSON | Type::JSONB => v.to_sql(ty, out),
            Type::NUMERIC => {
                let text = match v {
                    Value::Number(n) => n.to_string(),
                    Value::String(s) => s.clone(),
                    _ => return Err(wrong("a number")),
                };
                encode_numeric(&text, out)?;
                Ok(IsNull::No)
            }
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => match v {
                Value::String(s) => s.to_sql(ty, out),
                other => other.to_string().to_sql(ty, out),
            },
            _ => {
                // Everything else travels as text and Postgres parses it.
                let text = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                Err(format!(
                    "parameters of type {ty} are not supported; send {text:?} as text and cast it in the SQL (e.g. $1::text::{ty})"
                )
                .into())
            }
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// Postgres's binary `numeric`: base-10000 digits with a weight, sign and
/// display scale.
fn encode_numeric(text: &str, out: &mut BytesMut) -> Result<(), BoxError> {
    let invalid = || -> BoxError { format!("{text:?} is not a decimal number").into() };
    let t = text.trim();
    let (negative, t) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let (mantissa, exponent) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], t[i + 1..].parse::<i32>().map_err(|_| invalid())?),
        None => (t, 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if (int_part.is_empty() && frac_part.is_empty())
        || !int_part
            .bytes()
            .chain(frac_part.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return Err(invalid());
    }
    // All decimal digits, and where the decimal point falls among them.
    let digits: Vec<u8> = int_part
        .bytes()
        .chain(frac_part.bytes())
        .map(|b| b - b'0')
        .collect();
    let point = int_part.len() as i32 + exponent;
    let scale = (frac_part.len() as i32 - exponent).max(0);
    // Pad on both sides so the point sits on a base-10000 group boundary.
    let lead = (4 - point.rem_euclid(4)) % 4;
    let mut padded = vec![0u8; lead as usize];
    padded.extend_from_slice(&digits);
    while !padded.len().is_multiple_of(4) {
        padded.push(0);
    }
    let groups: Vec<i16> = padded
        .chunks(4)
        .map(|c| c.iter().fold(0i16, |acc, &d| acc * 10 + i16::from(d)))
        .collect();
    let mut weight = (point + lead) / 4 - 1;
    let mut start = 0;
    while start < groups.len() && groups[start] == 0 {
        start += 1;
        weight -= 1;
    }
    let mut end = groups.len();
    while end > start && groups[end - 1] == 0 {
        end -= 1;
    }
    let groups = &groups[start..end];
    if groups.is_empty() {
        weight = 0;
    }
    out.put_i16(i16::try_from(groups.len())?);
    out.put_i16(i16::try_from(weight)?);
    out.put_u16(if negative && !groups.is_empty() {
        0x4000
    } else {
        0
    });
    out.put_u16(u16::try_from(scale)?);
    for g in groups {
        out.put_i16(*g);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(text: &str) -> Vec<i16> {
        let mut out = BytesMut::new();
        encode_numeric(text, &mut out).unwrap();
        out.chunks(2)
            .map(|c| i16::from_be_bytes([c[0], c[1]]))
            .collect()
    }

    #[test]
    fn numeric_encoding_matches_postgres() {
        // ndigits, weight, sign, dscale, digits...
        assert_eq!(numeric("0"), vec![0, 0, 0, 0]);
        assert_eq!(numeric("12345.678"), vec![3, 1, 0, 3, 1, 2345, 6780]);
        assert_eq!(numeric("-0.0001"), vec![1, -1, 0x4000, 4, 1]);
        assert_eq!(numeric("10000"), vec![1, 1, 0, 0, 1]);
        assert_eq!(numeric("1.5e3"), vec![1, 0, 0, 0, 1500]);
        assert_eq!(numeric("42"), vec![1, 0, 0, 0, 42]);
        let mut out = BytesMut::new();
        assert!(encode_numeric("1.2.3", &mut out).is_err());
        assert!(encode_numeric("abc", &mut out).is_err());
    }

    #[test]
    fn statements_leaving_the_sandbox_are_refused() {
        for sql in [
            "COMMIT",
            "rollback",
            "begin",
            "SET ROLE postgres",
            "set local role postgres",
            "SET SESSION AUTHORIZATION postgres",
            "RESET ROLE",
            "reset all",
            "SET statement_timeout = 0",
            "SAVEPOINT x",
            "DISCARD ALL",
        ] {
            assert!(refused(sql).is_some(), "{sql}");
        }
        for sql in [
            "SELECT 1",
            "INSERT INTO t VALUES (1)",
            "SET LOCAL search_path = app",
            "WITH x AS (SELECT 1) SELECT * FROM x",
        ] {
            assert!(refused(sql).is_none(), "{sql}");
        }
    }
}
