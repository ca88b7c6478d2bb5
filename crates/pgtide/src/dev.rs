//! `pgtide dev`: a throwaway PostgreSQL (unless `--database-url`), the demo
//! schema, and pgtide serving on it, with a banner that says what to try.
//!
//! Everything it keeps is in its data directory (`--data-dir`, default
//! `.pgtide/dev`): `jwt-secret` (0600, so tokens survive a restart) and
//! `pg`, the PostgreSQL cluster. Run as root, PostgreSQL runs as the
//! `postgres` OS user; when that user cannot pass through a parent of the
//! data directory, `pg` is a link to a directory under `/var/tmp/pgtide-dev`
//! it can reach. Nothing outside those is changed.

use std::path::{Path, PathBuf};

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
    std::fs::create_dir_all(&args.data_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot create the data directory {}: {e}",
            args.data_dir.display()
        )
    })?;
    // Dev runs with real auth: a secret of its own, kept in the data
    // directory so tokens survive a restart (or PGTIDE_JWT_SECRET).
    let secret = match std::env::var("PGTIDE_JWT_SECRET") {
        Ok(s) if !s.is_empty() => s,
        _ => stored_secret(&args.data_dir.join(SECRET_FILE))?,
    };
    let (url, local) = match &args.database_url {
        Some(url) => (url.clone(), None),
        None => {
            let cluster = cluster_dir(&args.data_dir)?;
            eprintln!(
                "starting a throwaway PostgreSQL in {} ...",
                cluster.display()
            );
            let pg = LocalPostgres::start(&cluster, &LocalOptions::default()).await?;
            (pg.url("postgres"), Some(pg))
        }
    };
    let result = serve(&args, &url, &secret, listener, shutdown).await;
    if let Some(pg) = local {
        pg.stop().await;
    }
    result
}

async fn serve(
    args: &DevArgs,
    url: &str,
    secret: &str,
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
        shutdown_timeout: std::time::Duration::from_secs(10),
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
    // A ready admin token, so what works here works in production.
    let mut request = TokenRequest::new("dev-admin");
    request.role = Role::Admin;
    request.ttl = Some(std::time::Duration::from_secs(30 * 24 * 3600));
    let token = mint_hs256(secret, &request)?;
    let auth = Auth::Jwt(Verifier::hs256(secret));
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
         \n  (mint more with: PGTIDE_JWT_SECRET={secret} pgtide token --sub me --role read;\
         \n   the secret is kept in {secret_file}, so tokens survive a restart)\
         \n\nTry it:\
         \n  export TOKEN={token}\
         \n  curl -s -X POST {api}/v1/events -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' \\\
         \n       -d '{{\"event_type\":\"custom.hello\",\"data\":{{\"hello\":\"world\"}}}}'\
         \n  psql '{url}' -c \"INSERT INTO orders (user_id, total) VALUES (1, 9.99)\"\
         \n  curl -s '{api}/v1/events?topics=**' -H \"Authorization: Bearer $TOKEN\"\
         \n\nCtrl-C stops pgtide and the throwaway PostgreSQL.\n",
        ws = api.replacen("http://", "ws://", 1),
        secret_file = args.data_dir.join(SECRET_FILE).display(),
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

/// The file in the data directory that keeps dev's JWT secret.
const SECRET_FILE: &str = "jwt-secret";

/// The secret kept in `path`, made (32 random bytes, hex, mode 0600) when
/// the file does not exist yet.
fn stored_secret(path: &Path) -> anyhow::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().len() >= 16 => return Ok(text.trim().to_owned()),
        Ok(_) => anyhow::bail!(
            "{} holds no usable secret (at least 16 characters); delete it and pgtide dev makes a new one",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
    }
    let secret = random_secret()?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
    file.write_all(format!("{secret}\n").as_bytes())
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(secret)
}

/// Where the throwaway cluster lives: `DATA/pg`, a directory or a link to
/// one the `postgres` OS user can reach (see the module docs). A data
/// directory made by an older pgtide holds the cluster itself, and is kept.
fn cluster_dir(data_dir: &Path) -> anyhow::Result<PathBuf> {
    if data_dir.join("PG_VERSION").exists() {
        return Ok(data_dir.to_owned());
    }
    let link = data_dir.join("pg");
    if let Ok(target) = std::fs::read_link(&link) {
        // A link made before; its target may be gone (a cleaned /var/tmp).
        std::fs::create_dir_all(&target)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", target.display()))?;
        return Ok(link);
    }
    if link.exists() {
        return Ok(link);
    }
    let absolute = data_dir
        .canonicalize()
        .map_err(|e| anyhow::anyhow!("cannot resolve {}: {e}", data_dir.display()))?;
    let Some(closed) = pgtide_pg::local::unreachable_ancestor(&absolute)? else {
        return Ok(link);
    };
    let target = reachable_home()?.join(format!(
        "{:016x}",
        fnv1a(absolute.as_os_str().as_encoded_bytes())
    ));
    std::fs::create_dir_all(&target)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", target.display()))?;
    std::os::unix::fs::symlink(&target, &link).map_err(|e| {
        anyhow::anyhow!(
            "cannot link {} to {}: {e}",
            link.display(),
            target.display()
        )
    })?;
    eprintln!(
        "the postgres OS user cannot pass through {} (no search permission), so the throwaway PostgreSQL keeps its data in {}, linked from {}",
        closed.display(),
        target.display(),
        link.display()
    );
    Ok(link)
}

/// `/var/tmp/pgtide-dev` (or under the temp directory without `/var/tmp`):
/// root's, mode 0711, so the `postgres` user can pass through to its own
/// cluster but list nothing.
fn reachable_home() -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let base = Path::new("/var/tmp");
    let base = if base.is_dir() {
        base.to_owned()
    } else {
        std::env::temp_dir()
    };
    let home = base.join("pgtide-dev");
    match std::fs::create_dir(&home) {
        Ok(()) => std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o711))
            .map_err(|e| anyhow::anyhow!("cannot set the mode of {}: {e}", home.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => anyhow::bail!("cannot create {}: {e}", home.display()),
    }
    // Not a link, and ours: another user must not choose where it points.
    let meta = std::fs::symlink_metadata(&home)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", home.display()))?;
    if !meta.is_dir() || meta.uid() != 0 {
        anyhow::bail!(
            "{} is not a directory owned by root; remove it, or give pgtide dev a --data-dir the postgres user can reach",
            home.display()
        );
    }
    Ok(home)
}

/// FNV-1a: a stable name for a data directory's cluster outside it.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// 32 random bytes from the OS, hex-encoded.
fn random_secret() -> anyhow::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
