//! `pgtide dev`: a throwaway PostgreSQL (unless `--database-url`), the demo
//! schema, and pgtide serving on it, with a banner that says what to try.

use pgtide_pg::PgConfig;
use pgtide_pg::local::{LocalOptions, LocalPostgres};
use tokio_util::sync::CancellationToken;

use pgtide_auth::{Role, TokenRequest, Verifier, mint_hs256};
use pgtide_gateway::auth::Auth;

use crate::cli::{DevArgs, ServeArgs, SlotArgs, WebhookArgs};
use crate::server;

const DEMO_SQL: &str = include_str!("../../../sql/demo.sql");

pub async fn run(args: DevArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = server::bind(args.listen).await?;
    let (url, local) = match &args.database_url {
        Some(url) => (url.clone(), None),
        None => {
            eprintln!(
                "starting a throwaway PostgreSQL in {} ...",
                args.data_dir.display()
            );
            let pg = LocalPostgres::start(&args.data_dir, &LocalOptions::default()).await?;
            (pg.url("postgres"), Some(pg))
        }
    };
    let result = serve(&args, &url, listener, shutdown).await;
    if let Some(pg) = local {
        pg.stop().await;
    }
    result
}

async fn serve(
    args: &DevArgs,
    url: &str,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let source = PgConfig::parse(url)?;
    let client = source.connect().await?;
    client.batch_execute(DEMO_SQL).await?;
    let sql_login = sql_login(&client, url).await;
    let serve = ServeArgs {
        listen: args.listen,
        mappings: args.mappings.clone(),
        capture: args.capture.clone(),
        capture_org_column: None,
        api_mapping_tables: Vec::new(),
        retention: std::time::Duration::from_secs(7 * 24 * 3600),
        insecure_no_auth: false,
        jwt_secret: None,
        jwks: None,
        allow_tokens_without_exp: false,
        max_connections: 10_000,
        header_read_timeout: std::time::Duration::from_secs(10),
        max_batch: 5000,
        set_replica_identity_full: true,
        heartbeat: std::time::Duration::from_secs(10),
        allow_reserved_publish: false,
        sql_role: sql_login.as_ref().map(|_| SQL_ROLE.to_owned()),
        sql_database_url: sql_login,
        sql_pool_size: 32,
        sql_max_transactions_per_org: 8,
        sql_statement_timeout: std::time::Duration::from_secs(5),
        webhooks: WebhookArgs {
            webhook_backoff_base: std::time::Duration::from_secs(2),
            // Local receivers are the point of dev.
            webhook_allow_private: true,
            webhook_workers: 256,
        },
    };
    let slot = SlotArgs {
        slot: "pgtide".into(),
        publication: "pgtide".into(),
    };
    // Dev runs with real auth: a secret of its own (or PGTIDE_JWT_SECRET)
    // and a ready admin token, so what works here works in production.
    let secret = match std::env::var("PGTIDE_JWT_SECRET") {
        Ok(s) if !s.is_empty() => s,
        _ => random_secret()?,
    };
    let mut request = TokenRequest::new("dev-admin");
    request.role = Role::Admin;
    request.ttl = Some(std::time::Duration::from_secs(30 * 24 * 3600));
    let token = mint_hs256(&secret, &request)?;
    let auth = Auth::Jwt(Verifier::hs256(&secret));
    let running = server::start(&source, &source, &slot, &serve, auth, listener, shutdown).await?;
    let api = format!("http://{}", running.addr);
    println!("pgtide listening on {api}");
    println!(
        "\npgtide dev is ready\n\
         \n  Admin page:  {api}/#token={token}\
         \n  API:         {api}\
         \n  WebSocket:   {ws}/ws?token=$TOKEN   Socket.IO: {api}/socket.io/\
         \n  PostgreSQL:  {url}\
         \n  Admin token: {token}\
         \n  (mint more with: PGTIDE_JWT_SECRET={secret} pgtide token --sub me --role read)\
         \n\nTry it:\
         \n  export TOKEN={token}\
         \n  curl -s -X POST {api}/v1/events -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' \\\
         \n       -d '{{\"event_type\":\"custom.hello\",\"data\":{{\"hello\":\"world\"}}}}'\
         \n  psql '{url}' -c \"INSERT INTO orders (user_id, total) VALUES (1, 9.99)\"\
         \n  curl -s '{api}/v1/events?topics=**' -H \"Authorization: Bearer $TOKEN\"\
         \n\nCtrl-C stops pgtide and the throwaway PostgreSQL.\n",
        ws = api.replacen("http://", "ws://", 1),
    );
    running.wait().await
}

/// The role SQL over WebSocket runs as in dev, and the login it connects as.
const SQL_ROLE: &str = "pgtide_app";
const SQL_LOGIN: &str = "pgtide_sql";

/// Makes the low-privilege login SQL over WebSocket needs (SPEC §11): a
/// login that owns nothing and can only become `pgtide_app`, which may read
/// and write the demo tables. Returns its URL, or `None` (SQL stays off,
/// with a warning) when the database would not allow it or `url` is not a
/// `postgres://` URL whose user can be swapped.
async fn sql_login(client: &tokio_postgres::Client, url: &str) -> Option<String> {
    let password = random_secret().ok()?;
    let setup = format!(
        "SET client_min_messages = warning;
         DO $$ BEGIN CREATE ROLE {SQL_ROLE} NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         DO $$ BEGIN CREATE ROLE {SQL_LOGIN} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         ALTER ROLE {SQL_LOGIN} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS PASSWORD '{password}';
         GRANT {SQL_ROLE} TO {SQL_LOGIN};
         GRANT USAGE ON SCHEMA public TO {SQL_ROLE};
         GRANT SELECT, INSERT, UPDATE, DELETE ON public.users, public.orders, public.sessions TO {SQL_ROLE};
         GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {SQL_ROLE};
         RESET client_min_messages;"
    );
    let login_url = url.split_once("://").and_then(|(scheme, rest)| {
        let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        (scheme == "postgres" || scheme == "postgresql")
            .then(|| format!("{scheme}://{SQL_LOGIN}:{password}@{host}"))
    });
    let Some(login_url) = login_url else {
        tracing::warn!("SQL over WebSocket stays off: the database URL is not a postgres:// URL");
        return None;
    };
    match client.batch_execute(&setup).await {
        Ok(()) => Some(login_url),
        Err(e) => {
            tracing::warn!(error = %e, "SQL over WebSocket stays off: creating its login failed");
            None
        }
    }
}

/// 32 random bytes from the OS, hex-encoded.
fn random_secret() -> anyhow::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
