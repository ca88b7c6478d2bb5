//! The second wall around client SQL: the login it runs under. Checked once
//! at start, so a login that could undo the statement check's work (by
//! being a superuser, bypassing row-level security, creating roles, owning
//! the tables whose policies should bind it, or switching to a role that
//! can) never serves SQL. Also installs `pgtide.claims()`.

use tokio_postgres::Client;

use crate::SetupError;

/// Predefined roles whose members read or write past privileges, or reach
/// the host.
const PRIVILEGED_PREDEFINED: &[&str] = &[
    "pg_read_all_data",
    "pg_read_all_stats",
    "pg_read_all_settings",
    "pg_monitor",
    "pg_write_all_data",
    "pg_read_server_files",
    "pg_write_server_files",
    "pg_execute_server_program",
    "pg_signal_backend",
];

/// Refuses a login that could escape the sandbox, naming why; checks that
/// it can `SET ROLE` to `role`. Runs on a connection made as that login.
pub async fn verify(login: &Client, role: &str) -> Result<(), SetupError> {
    let me: String = login
        .query_one("SELECT current_user::text", &[])
        .await?
        .get(0);
    let reachable = login
        .query(
            "SELECT r.rolname::text, r.rolsuper, r.rolbypassrls, r.rolcreaterole
               FROM pg_roles r
              WHERE pg_has_role(current_user, r.oid, 'MEMBER')
              ORDER BY r.rolname <> current_user, r.rolname",
            &[],
        )
        .await?;
    for row in &reachable {
        let name: String = row.get(0);
        let how = if name == me {
            format!("the SQL login {me:?}")
        } else {
            format!("the SQL login {me:?} can SET ROLE to {name:?}, which")
        };
        let refuse = |what: &str| {
            Err(SetupError::UnsafeLogin(format!(
                "{how} {what}; give --sql-database-url a login without it"
            )))
        };
        if row.get::<_, bool>(1) {
            return refuse("is a superuser");
        }
        if row.get::<_, bool>(2) {
            return refuse("has BYPASSRLS");
        }
        if row.get::<_, bool>(3) {
            return refuse("has CREATEROLE");
        }
        if PRIVILEGED_PREDEFINED.contains(&name.as_str()) {
            return Err(SetupError::UnsafeLogin(format!(
                "the SQL login {me:?} is a member of {name}; give --sql-database-url a login without it"
            )));
        }
    }
    let owned = login
        .query(
            "SELECT c.oid::regclass::text, pg_get_userbyid(c.relowner)::text
               FROM pg_class c
              WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
                AND pg_has_role(current_user, c.relowner, 'MEMBER')
                AND c.relnamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
              ORDER BY 1
              LIMIT 3",
            &[],
        )
        .await?;
    if let Some(row) = owned.first() {
        let table: String = row.get(0);
        let owner: String = row.get(1);
        return Err(SetupError::UnsafeLogin(format!(
            "the SQL login {me:?} owns (or can SET ROLE to {owner:?}, which owns) the table {table}, \
             and a table's owner is not bound by its row-level security; \
             give --sql-database-url a login that owns no tables"
        )));
    }
    let target = login
        .query_opt(
            "SELECT pg_has_role(current_user, r.oid, 'MEMBER') FROM pg_roles r WHERE r.rolname = $1",
            &[&role],
        )
        .await?;
    match target {
        None => Err(SetupError::UnsafeLogin(format!(
            "--sql-role {role:?} does not exist"
        ))),
        Some(row) if !row.get::<_, bool>(0) => Err(SetupError::UnsafeLogin(format!(
            "the SQL login {me:?} cannot SET ROLE to --sql-role {role:?} (GRANT {role} TO {me})"
        ))),
        Some(_) => Ok(()),
    }
}

/// An arbitrary constant shared by every pgtide node, so nodes starting
/// together do not race to create the claims function.
const INSTALL_LOCK: i64 = 0x7067_7469_6465_0007;

/// Creates `pgtide.sql_claims` and `pgtide.claims()` in the SQL database
/// (as the owner connection) and lets `role` call the function only.
///
/// A claims row is found by a random nonce that pgtide puts in the
/// transaction's settings (as a parameter, never in statement text), and
/// only from the backend it was written for: the client cannot read the
/// table, and another backend's nonce would not match its own `pid`, so it
/// cannot forge claims even if it could change the setting.
pub async fn install_claims(owner: &mut Client, role: &str) -> Result<(), SetupError> {
    let role = pgtide_pg::replication::quote_ident(role);
    let tx = owner.transaction().await?;
    tx.batch_execute(&format!(
        "SET LOCAL client_min_messages = warning;
         SELECT pg_advisory_xact_lock({INSTALL_LOCK});
         CREATE SCHEMA IF NOT EXISTS pgtide;
         CREATE TABLE IF NOT EXISTS pgtide.sql_claims (
             nonce      text        PRIMARY KEY,
             pid        integer,
             claims     jsonb       NOT NULL,
             created_at timestamptz NOT NULL DEFAULT now()
         );
         ALTER TABLE pgtide.sql_claims ADD COLUMN IF NOT EXISTS pid integer;
         REVOKE ALL ON pgtide.sql_claims FROM PUBLIC;
         CREATE OR REPLACE FUNCTION pgtide.claims() RETURNS jsonb
             LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog AS
             $$ SELECT c.claims FROM pgtide.sql_claims c
                 WHERE c.nonce = current_setting('pgtide.claims_nonce', true)
                   AND c.pid = pg_backend_pid() $$;
         REVOKE ALL ON FUNCTION pgtide.claims() FROM PUBLIC;
         GRANT USAGE ON SCHEMA pgtide TO {role};
         GRANT EXECUTE ON FUNCTION pgtide.claims() TO {role};
         DELETE FROM pgtide.sql_claims WHERE created_at < now() - interval '1 day';"
    ))
    .await?;
    tx.commit().await?;
    Ok(())
}
