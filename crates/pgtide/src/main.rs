//! The `pgtide` binary: command line, wiring and signals.
//!
//! - [`cli`]: flags, environment variables and the config file.
//! - [`server`]: `pgtide run`: checks, migrations, slot, CDC pipeline, HTTP.
//! - [`dev`]: `pgtide dev`: the same on a throwaway local PostgreSQL.
//! - [`mappings`]: loading and reloading mapping files; `pgtide check`.
//! - [`bench`]: `pgtide bench cdc`; [`bench_fanout`]: `pgtide bench fanout`;
//!   [`bench_webhooks`]: `pgtide bench webhooks`.

mod bench;
mod bench_fanout;
mod bench_webhooks;
mod cli;
mod dev;
mod mappings;
mod server;

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use crate::cli::{Cli, Command, SlotAction};

/// Every event is a few dozen small allocations, often freed on another
/// thread than the one that made them: mimalloc handles both far better than
/// glibc's malloc (the mapping engine runs ~1.5x faster with it).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    if let Err(e) = load_config_file() {
        eprintln!("error: {e:#}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--config FILE` (or `PGTIDE_CONFIG`) must be applied before clap reads the
/// environment, so it is found by hand first.
fn load_config_file() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mut path = std::env::var("PGTIDE_CONFIG").ok();
    for (i, arg) in args.iter().enumerate() {
        if let Some(p) = arg.strip_prefix("--config=") {
            path = Some(p.to_owned());
        } else if arg == "--config" {
            path = args.get(i + 1).cloned();
        }
    }
    match path {
        Some(p) => cli::apply_config_file(std::path::Path::new(&p)),
        None => Ok(()),
    }
}

fn init_tracing() {
    let given = std::env::var("PGTIDE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_default();
    let mut filter = tracing_subscriber::EnvFilter::try_new(&given)
        .ok()
        .filter(|_| !given.trim().is_empty())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    // The pool logs "Connection error: db error" for every pooled connection
    // the server closes, without saying which or why: at each `pgtide dev`
    // stop (its PostgreSQL goes first) and at every server restart. The
    // query that meets a broken connection reports it with the cause, so the
    // pool's line is kept for those who ask for it by name.
    if !given.contains("deadpool")
        && let Ok(quiet) = "deadpool.postgres=error".parse()
    {
        filter = filter.add_directive(quiet);
    }
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => {
            let shutdown = shutdown_on_signals()?;
            server::run(*args, shutdown).await
        }
        Command::Dev(args) => {
            let shutdown = shutdown_on_signals()?;
            dev::run(args, shutdown).await
        }
        Command::Migrate(db) => server::migrate_only(&db).await,
        Command::Token(args) => token(args),
        Command::Check { dir, database_url } => {
            let url = database_url.or_else(|| std::env::var("DATABASE_URL").ok());
            if mappings::check(&dir, url.as_deref()).await? {
                Ok(())
            } else {
                std::process::exit(1);
            }
        }
        Command::Slot {
            action: SlotAction::Status { db, slot },
        } => server::slot_status(&db, &slot).await,
        Command::Slot {
            action: SlotAction::Drop { db, slot },
        } => server::slot_drop(&db, &slot).await,
        Command::Bench {
            which: cli::BenchWhich::Cdc(args),
        } => bench::cdc(args).await,
        Command::Bench {
            which: cli::BenchWhich::Fanout(args),
        } => bench_fanout::fanout(args).await,
        Command::Bench {
            which: cli::BenchWhich::Webhooks(args),
        } => bench_webhooks::webhooks(args).await,
    }
}

/// `pgtide token`: mints an HS256 token and prints it alone on stdout.
fn token(args: cli::TokenArgs) -> anyhow::Result<()> {
    let secret = args.jwt_secret.ok_or_else(|| {
        anyhow::anyhow!(
            "pgtide token needs the secret pgtide runs with: --jwt-secret or PGTIDE_JWT_SECRET"
        )
    })?;
    let parse = |patterns: &[String]| -> anyhow::Result<Option<Vec<pgtide_core::Pattern>>> {
        if patterns.is_empty() {
            return Ok(None);
        }
        patterns
            .iter()
            .map(|p| {
                pgtide_core::Pattern::parse(p).map_err(|e| anyhow::anyhow!("invalid pattern: {e}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .map(Some)
    };
    let mut request = pgtide_auth::TokenRequest::new(args.sub);
    request.org_id = args.org;
    request.role = args
        .role
        .parse()
        .map_err(|e| anyhow::anyhow!("--role: {e}"))?;
    request.subscribe = parse(&args.subscribe)?;
    request.publish = parse(&args.publish)?;
    request.sql = args.sql;
    request.ttl = Some(args.ttl);
    println!("{}", pgtide_auth::mint_hs256(&secret, &request)?);
    Ok(())
}

/// One cancellation token for the whole process, cancelled by SIGINT or SIGTERM.
fn shutdown_on_signals() -> anyhow::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        }
        cancel.cancel();
    });
    Ok(token)
}
