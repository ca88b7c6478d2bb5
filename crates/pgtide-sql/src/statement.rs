//! What a client's SQL may be (SPEC §11): exactly one statement, read by
//! PostgreSQL's own parser (`pg_query`, the server's grammar compiled in), of
//! a kind on the allow-list, calling no function that changes settings,
//! reaches outside the database or runs SQL text of its own.
//!
//! Text matching cannot do this: comments, case, quoting, `U&"…"` escapes
//! and nesting all spell the same statement differently, and the parser
//! sees through every one of them. The privileges of the low-privilege login
//! (checked at start, see [`crate::login`]) are the second wall.

use pg_query::NodeEnum;
use serde_json::Value;

/// Why a statement may not run; the message names what was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not valid SQL: PostgreSQL's own syntax error.
    #[error("syntax error: {0}")]
    Syntax(String),
    /// Valid SQL that may not run here.
    #[error("{0}")]
    NotAllowed(String),
}

/// Functions no client statement may call, wherever they appear (select
/// list, `FROM`, a CTE, a subquery, a default): they change settings or
/// session state that outlives the statement, touch other backends, the
/// host's files or the WAL, or run SQL text that this check never sees.
const REFUSED_FUNCTIONS: &[&str] = &[
    // Settings and session state.
    "set_config",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
    "pg_notify",
    // Other backends.
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_signal_backend",
    // The host's files.
    "pg_read_file",
    "pg_read_binary_file",
    "pg_stat_file",
    "pg_ls_dir",
    "pg_ls_logdir",
    "pg_ls_waldir",
    "pg_ls_tmpdir",
    "pg_ls_archive_statusdir",
    "pg_ls_logicalsnapdir",
    "pg_ls_logicalmapdir",
    "pg_ls_replslotdir",
    "lo_import",
    "lo_export",
    "pg_file_write",
    "pg_file_rename",
    "pg_file_unlink",
    "pg_file_sync",
    "pg_logdir_ls",
    // SQL text run by the function itself.
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "table_to_xml",
    "table_to_xmlschema",
    "table_to_xml_and_xmlschema",
    "schema_to_xml",
    "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xmlschema",
    "database_to_xml_and_xmlschema",
    "ts_stat",
    "ts_rewrite",
    "crosstab",
    "crosstab2",
    "crosstab3",
    "crosstab4",
    "connectby",
    "xpath_table",
    // Other sessions' statements (and so other tenants' SQL text).
    "pg_stat_get_activity",
    // Large objects: storage shared by every tenant of the one SQL login.
    "loread",
    "lowrite",
    // The WAL, replication and backups (pgtide's own stream among them).
    "pg_logical_emit_message",
    "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_drop_replication_slot",
    "pg_copy_physical_replication_slot",
    "pg_copy_logical_replication_slot",
    "pg_replication_slot_advance",
    "pg_logical_slot_get_changes",
    "pg_logical_slot_peek_changes",
    "pg_logical_slot_get_binary_changes",
    "pg_logical_slot_peek_binary_changes",
    "pg_switch_wal",
    "pg_promote",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_create_restore_point",
    "pg_wal_replay_pause",
    "pg_wal_replay_resume",
];

/// Function-name prefixes refused the same way (extensions' families).
const REFUSED_PREFIXES: &[&str] = &[
    "dblink",
    "pg_replication_origin_",
    "pg_stat_get_backend_",
    "lo_",
];

/// Relations no client statement may name, in any schema: `pg_settings`
/// is updatable by everyone and its rule calls `set_config` (an `UPDATE`
/// of it changes any setting), and the activity views show other sessions'
/// statements, which here are other tenants'.
const REFUSED_RELATIONS: &[&str] = &[
    "pg_settings",
    "pg_stat_activity",
    "pg_stat_statements",
    "pg_stat_statements_info",
];

/// Schemas whose tables no client statement may write.
const UNWRITABLE_SCHEMAS: &[&str] = &["pg_catalog", "information_schema", "pg_toast", "pgtide"];

/// The only function of the `pgtide` schema a client may call.
/// (`pgtide.publish()` is for applications' own connections: an event it
/// emits carries no org, so from a tenant's socket it would reach every
/// tenant; sockets publish with the `publish` verb, under the token's org.)
const PGTIDE_FUNCTIONS: &[&str] = &["claims"];

/// Checks `sql`; `Ok` means it is one allowed statement. The parser reads
/// strings with `standard_conforming_strings = on`, which every SQL
/// transaction sets for itself, so the server reads them the same way.
pub fn check(sql: &str) -> Result<(), Refused> {
    if sql.contains('\0') {
        return Err(Refused::NotAllowed(
            "the statement contains a NUL character".into(),
        ));
    }
    let parsed = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT).map_err(|e| match e {
        pg_query::Error::Parse(message) => Refused::Syntax(message),
        other => Refused::NotAllowed(format!("the statement could not be read: {other}")),
    })?;
    let stmts = &parsed.protobuf.stmts;
    match stmts.len() {
        0 => return Err(Refused::NotAllowed("the statement is empty".into())),
        1 => {}
        n => {
            return Err(Refused::NotAllowed(format!(
                "send one statement per request (this text holds {n})"
            )));
        }
    }
    let Some(node) = stmts[0].stmt.as_ref().and_then(|n| n.node.as_ref()) else {
        return Err(Refused::NotAllowed("the statement is empty".into()));
    };
    if !allowed(node) {
        return Err(Refused::NotAllowed(format!(
            "only SELECT, INSERT, UPDATE, DELETE, MERGE, VALUES, TABLE or WITH of those may run here, \
             not {}",
            describe(&node_name(node))
        )));
    }
    let tree = serde_json::to_value(&parsed.protobuf)
        .map_err(|e| Refused::NotAllowed(format!("the statement could not be read: {e}")))?;
    walk(&tree)
}

/// The statement kinds that may run. `VALUES` and `TABLE` parse as
/// `SelectStmt`; `WITH` hangs off each of them.
fn allowed(node: &NodeEnum) -> bool {
    matches!(
        node,
        NodeEnum::SelectStmt(_)
            | NodeEnum::InsertStmt(_)
            | NodeEnum::UpdateStmt(_)
            | NodeEnum::DeleteStmt(_)
            | NodeEnum::MergeStmt(_)
    )
}

/// The parser's name of a refused statement's node (`VariableSetStmt`, …).
fn node_name(node: &NodeEnum) -> String {
    let debug = format!("{node:?}");
    debug
        .split(|c: char| !c.is_ascii_alphanumeric())
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn describe(kind: &str) -> String {
    let plain = match kind {
        "VariableSetStmt" => "SET / RESET (settings and the role are fixed by pgtide)",
        "VariableShowStmt" => "SHOW",
        "TransactionStmt" => {
            "transaction control (use BeginTransaction / CommitTransaction / RollbackTransaction)"
        }
        "DoStmt" => "DO",
        "ExplainStmt" => "EXPLAIN",
        "CopyStmt" => "COPY",
        "LockStmt" => "LOCK",
        "CallStmt" => "CALL",
        "DiscardStmt" => "DISCARD",
        "CreateTableAsStmt" => "CREATE TABLE AS",
        "PrepareStmt" | "ExecuteStmt" | "DeallocateStmt" => "PREPARE / EXECUTE / DEALLOCATE",
        "ListenStmt" | "NotifyStmt" | "UnlistenStmt" => "LISTEN / NOTIFY",
        "DeclareCursorStmt" | "FetchStmt" | "ClosePortalStmt" => "cursors",
        other => {
            return match other.strip_suffix("Stmt") {
                Some(base) => format!("{base} (DDL and utility statements)"),
                None => other.to_owned(),
            };
        }
    };
    plain.to_owned()
}

/// Walks the whole parse tree: an `INTO` anywhere, or a call of a refused
/// function anywhere, refuses the statement.
fn walk(value: &Value) -> Result<(), Refused> {
    match value {
        Value::Object(map) => {
            if let Some(name) = map.get("relname").and_then(Value::as_str) {
                check_relation(name)?;
            }
            for (key, child) in map {
                match key.as_str() {
                    "FuncCall" => check_call(child)?,
                    "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" => {
                        check_write_target(child)?;
                    }
                    "into_clause" if !child.is_null() => {
                        return Err(Refused::NotAllowed(
                            "SELECT … INTO creates a table; it may not run here".into(),
                        ));
                    }
                    _ => {}
                }
                walk(child)?;
            }
            Ok(())
        }
        Value::Array(items) => items.iter().try_for_each(walk),
        _ => Ok(()),
    }
}

/// A relation named anywhere in the statement (a `RangeVar`).
fn check_relation(name: &str) -> Result<(), Refused> {
    if REFUSED_RELATIONS.contains(&name.to_lowercase().as_str()) {
        return Err(Refused::NotAllowed(format!(
            "{name} may not be used here (it changes settings or shows other sessions' statements)"
        )));
    }
    Ok(())
}

/// The table an `INSERT`, `UPDATE`, `DELETE` or `MERGE` writes (top level
/// or in a CTE).
fn check_write_target(statement: &Value) -> Result<(), Refused> {
    let schema = statement
        .pointer("/relation/schemaname")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_lowercase();
    if UNWRITABLE_SCHEMAS.contains(&schema.as_str()) {
        let table = statement
            .pointer("/relation/relname")
            .and_then(Value::as_str)
            .unwrap_or_default();
        return Err(Refused::NotAllowed(format!(
            "tables of the {schema} schema may not be written here ({schema}.{table})"
        )));
    }
    Ok(())
}

/// A `FuncCall` node: its `funcname` is a list of `String` nodes, the schema
/// (when given) then the name.
fn check_call(call: &Value) -> Result<(), Refused> {
    let parts: Vec<&str> = call
        .get("funcname")
        .and_then(Value::as_array)
        .map(|names| {
            names
                .iter()
                .filter_map(|n| n.pointer("/node/String/sval").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    let Some(name) = parts.last() else {
        return Ok(());
    };
    let name = name.to_lowercase();
    let schema = parts
        .len()
        .checked_sub(2)
        .and_then(|i| parts.get(i))
        .map(|s| s.to_lowercase());
    let shown = parts.join(".");
    if REFUSED_FUNCTIONS.contains(&name.as_str())
        || REFUSED_PREFIXES.iter().any(|p| name.starts_with(p))
    {
        return Err(Refused::NotAllowed(format!(
            "the function {shown}() may not be called here (it changes settings or session state, \
             or reaches outside this transaction)"
        )));
    }
    if schema.as_deref() == Some("pgtide") && !PGTIDE_FUNCTIONS.contains(&name.as_str()) {
        return Err(Refused::NotAllowed(format!(
            "the function {shown}() is pgtide's own; only pgtide.claims() may be called here \
             (publish with the socket's \"publish\" message, which stamps the token's org)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_statements_pass() {
        for sql in [
            "SELECT 1",
            "select * from orders where id = $1",
            "INSERT INTO orders (product) VALUES ('x') RETURNING id",
            "UPDATE orders SET qty = qty + 1 WHERE id = 1",
            "DELETE FROM orders WHERE id = 1",
            "VALUES (1, 2), (3, 4)",
            "TABLE orders",
            "WITH x AS (SELECT 1 AS a) SELECT * FROM x",
            "WITH d AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM d",
            "MERGE INTO orders o USING (VALUES (1)) v(id) ON o.id = v.id WHEN MATCHED THEN DELETE",
            "SELECT * FROM orders FOR UPDATE",
            "SELECT pgtide.claims()",
            "SELECT pgtide.claims() ->> 'org_id'",
            "SELECT current_setting('request.jwt.claims', true)",
            "SELECT pg_sleep(0.01)",
            "SELECT pg_advisory_xact_lock(1)",
            "SELECT setting FROM settings",
            "UPDATE app.settings SET v = 1",
            "SELECT count(*) FROM pg_class",
            "SELECT 'set_config(''role'',''none'',true)' AS harmless_text",
            "SELECT 1 -- trailing comment",
            "/* leading */ SELECT 1;",
        ] {
            assert_eq!(check(sql), Ok(()), "{sql}");
        }
    }

    /// The escape attempts the security review found, and more spellings of
    /// each: all refused by what they are, not by how they are written.
    #[test]
    fn escape_corpus_is_refused() {
        for sql in [
            // Settings, the role, session authorization.
            "SELECT set_config('request.jwt.claims','{\"org_id\":\"1\"}',true)",
            "SELECT set_config('role','postgres',true)",
            "SELECT set_config('role','none',true)",
            "SELECT set_config('session_authorization','postgres',true)",
            "SELECT set_config('statement_timeout','0',true)",
            "SELECT SET_CONFIG('role','none',true)",
            "SELECT pg_catalog.set_config('role','none',true)",
            "SELECT \"set_config\"('role','none',true)",
            "SELECT \"pg_catalog\".\"set_config\"('role','none',true)",
            "SELECT U&\"set\\005fconfig\"('role','none',true)",
            "SELECT/**/set_config('role','none',true)",
            "SELECT * FROM set_config('role','none',true)",
            "SELECT 1 WHERE set_config('role','none',true) IS NOT NULL",
            "WITH x AS (SELECT set_config('role','none',true)) SELECT * FROM x",
            "SELECT (SELECT set_config('role','none',true))",
            "SELECT * FROM (SELECT set_config('role','none',true)) s",
            "INSERT INTO t SELECT set_config('role','none',true)",
            "UPDATE t SET a = set_config('role','none',true)",
            "DELETE FROM t WHERE a = set_config('role','none',true)",
            "VALUES (set_config('role','none',true))",
            "SELECT coalesce(null, set_config('role','none',true))",
            "SELECT CASE WHEN true THEN set_config('role','none',true) END",
            "SELECT array[set_config('role','none',true)]",
            "SELECT 1 FROM t ORDER BY set_config('role','none',true)",
            // Statements that are not on the list, however spelled.
            "SET ROLE postgres",
            "/**/SET/**/ROLE postgres",
            "set local role postgres",
            "SeT sEsSiOn AuThOrIzAtIoN postgres",
            "/**/RESET/**/ROLE",
            "RESET ALL",
            "SET statement_timeout = 0",
            "SET LOCAL search_path = app",
            "/**/COMMIT",
            "COMMIT",
            "ROLLBACK",
            "BEGIN",
            "START TRANSACTION",
            "SAVEPOINT x",
            "PREPARE TRANSACTION 'x'",
            "END",
            "DO $$ BEGIN PERFORM set_config('role','none',true); END $$",
            "do language plpgsql $x$ begin null; end $x$",
            "EXPLAIN ANALYZE SELECT set_config('role','none',true)",
            "EXPLAIN ANALYZE DELETE FROM t",
            "COPY (SELECT 1) TO PROGRAM 'id > /tmp/x'",
            "copy t from program 'id'",
            "LOCK TABLE t IN ACCESS EXCLUSIVE MODE",
            "DISCARD ALL",
            "CREATE TEMP TABLE docs (a int) ON COMMIT PRESERVE ROWS",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "CREATE OR REPLACE FUNCTION pg_temp.f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN PERFORM set_config('role','none',true); END $$",
            "SELECT 1 INTO TEMP t",
            "SELECT * INTO t FROM orders",
            "CREATE TABLE t AS SELECT 1",
            "CALL p()",
            "LISTEN x",
            "NOTIFY pgtide_committed",
            "PREPARE p AS SELECT 1",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "GRANT ALL ON t TO public",
            "ALTER ROLE me SUPERUSER",
            "SHOW ALL",
            "TRUNCATE t",
            "VACUUM",
            "LOAD 'x'",
            // Several statements in one text.
            "SELECT 1; SET ROLE postgres",
            "SELECT 1;SELECT 2",
            "SELECT 1; COMMIT; SET ROLE postgres",
            // Functions that reach outside, or run SQL text of their own.
            "SELECT pg_read_file('/etc/passwd')",
            "SELECT pg_ls_dir('.')",
            "SELECT lo_import('/etc/passwd')",
            "SELECT query_to_xml('SET ROLE postgres', true, true, '')",
            "SELECT * FROM ts_stat('SELECT 1')",
            "SELECT ts_rewrite('a'::tsquery, 'SELECT set_config(''role'',''none'',true)::tsquery, ''b''::tsquery')",
            "SELECT dblink_exec('host=x', 'SELECT 1')",
            "SELECT pg_terminate_backend(1)",
            "SELECT pg_logical_emit_message(true, 'pgtide.publish', '{}')",
            "SELECT pg_advisory_lock(1)",
            "SELECT pg_notify('pgtide_committed', '1')",
            // Settings through pg_settings' update rule; other sessions' SQL.
            "UPDATE pg_settings SET setting = '0' WHERE name = 'statement_timeout'",
            "update PG_CATALOG.PG_SETTINGS set setting = 'off' where name = 'standard_conforming_strings'",
            "WITH s AS (UPDATE pg_settings SET setting = 'none' WHERE name = 'role' RETURNING 1) SELECT * FROM s",
            "SELECT * FROM pg_settings",
            "SELECT query FROM pg_stat_activity",
            "SELECT query FROM pg_catalog.pg_stat_activity",
            "SELECT * FROM pg_stat_get_activity(NULL)",
            "SELECT pg_stat_get_backend_activity(1)",
            "INSERT INTO pgtide.sql_claims VALUES ('n', '{}')",
            "DELETE FROM pg_catalog.pg_largeobject",
            "UPDATE information_schema.sql_features SET comments = 'x'",
            // Large objects, shared by every tenant.
            "SELECT lo_create(0)",
            "SELECT lo_from_bytea(0, 'x')",
            "SELECT lo_get(16400)",
            "SELECT lo_unlink(16400)",
            "SELECT loread(lo_open(16400, 262144), 10)",
            // tablefunc and xml2 run SQL text of their own.
            "SELECT * FROM crosstab('SELECT set_config(''role'',''none'',true)') AS t(a text)",
            "SELECT * FROM connectby('t', 'a', 'b', '1', 0) AS t(a text, b text, l int)",
            "SELECT pgtide.notify_committed()",
            "SELECT pgtide.publish('x', '{}')",
            // Not SQL at all.
            "",
            ";",
            "   ",
            "SELEC 1",
            "SELECT 'unterminated",
            "SELECT 1\0; SET ROLE postgres",
        ] {
            assert!(check(sql).is_err(), "not refused: {sql}");
        }
    }

    #[test]
    fn refusals_name_what_was_found() {
        let message = |sql: &str| check(sql).err().map(|r| r.to_string()).unwrap_or_default();
        assert!(message("SELECT 1; SELECT 2").contains("holds 2"));
        assert!(message("SET ROLE x").contains("SET / RESET"));
        assert!(message("COMMIT").contains("transaction control"));
        assert!(message("DO $$ BEGIN END $$").contains("not DO"));
        assert!(message("SELECT pg_catalog.set_config('a','b',true)").contains("set_config"));
        assert!(message("SELECT * INTO t FROM x").contains("INTO"));
        assert!(message("SELEC 1").starts_with("syntax error"));
    }
}
