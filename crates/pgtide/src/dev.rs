//! `pgtide dev`: a throwaway PostgreSQL (unless `--database-url`), the demo
//! schema, and pgtide serving on it, with a banner that says what to try.

use pgtide_pg::PgConfig;
use pgtide_pg::local::{LocalOptions, LocalPostgres};
use tokio_util::sync::CancellationToken;

use crate::cli::{DevArgs, ServeArgs, SlotArgs};
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
    let serve = ServeArgs {
        listen: args.listen,
        mappings: args.mappings.clone(),
        capture: args.capture.clone(),
        retention: std::time::Duration::from_secs(7 * 24 * 3600),
        insecure_no_auth: true,
        jwt_secret: None,
        jwks: None,
        max_batch: 5000,
        set_replica_identity_full: true,
        heartbeat: std::time::Duration::from_secs(10),
    };
    let slot = SlotArgs {
        slot: "pgtide".into(),
        publication: "pgtide".into(),
    };
    let running = server::start(&source, &source, &slot, &serve, listener, shutdown).await?;
    let api = format!("http://{}", running.addr);
    println!("pgtide listening on {api}");
    println!(
        "\npgtide dev is ready\n\
         \n  API:         {api}\
         \n  PostgreSQL:  {url}\
         \n  Auth:        off (dev mode: every client may read and publish)\
         \n\nTry it:\
         \n  curl -s -X POST {api}/v1/events -H 'Content-Type: application/json' \\\
         \n       -d '{{\"event_type\":\"custom.hello\",\"data\":{{\"hello\":\"world\"}}}}'\
         \n  psql '{url}' -c \"INSERT INTO orders (user_id, total) VALUES (1, 9.99)\"\
         \n  curl -s '{api}/v1/events?topics=**'\
         \n\nCtrl-C stops pgtide and the throwaway PostgreSQL.\n"
    );
    running.wait().await
}
