//! A throwaway local PostgreSQL started from the installed server binaries, for
//! `pgtide dev`, the test harness and benchmarks: `wal_level=logical`, TCP on
//! 127.0.0.1 only, trust auth. As root, the server runs as the `postgres` OS
//! user, because PostgreSQL refuses to run as root.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, Uid, User, chown};
use tokio::process::{Child, Command};

/// Why the local server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error(
        "PostgreSQL server binaries not found (looked in $PGTIDE_PG_BIN, /usr/lib/postgresql/*/bin and PATH); install them, e.g. `apt-get install postgresql`, or point PGTIDE_PG_BIN at the directory holding `postgres` and `initdb`"
    )]
    NoBinaries,
    #[error("{0}")]
    Io(String),
    #[error("initdb failed: {0}")]
    Initdb(String),
    #[error("PostgreSQL did not start within {seconds} s; its log is {log}")]
    Timeout { seconds: u64, log: String },
    #[error("PostgreSQL exited during start-up; its log {log} ends with: {tail}")]
    Exited { log: String, tail: String },
}

/// Settings of the throwaway server.
#[derive(Debug, Clone, Default)]
pub struct LocalOptions {
    /// `fsync=off` and friends: much faster, safe only for data we may lose.
    pub fast_unsafe: bool,
    /// Extra `-c name=value` settings.
    pub settings: Vec<(String, String)>,
}

/// A running local server; stopped (fast shutdown) by [`LocalPostgres::stop`],
/// killed if dropped.
pub struct LocalPostgres {
    child: Option<Child>,
    port: u16,
    data_dir: PathBuf,
    bin_dir: PathBuf,
    options: LocalOptions,
}

impl LocalPostgres {
    /// Finds the directory holding `postgres`, `initdb` and `pg_recvlogical`.
    pub fn bin_dir() -> Result<PathBuf, LocalError> {
        if let Ok(dir) = std::env::var("PGTIDE_PG_BIN") {
            return Ok(PathBuf::from(dir));
        }
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let v = e.file_name().to_str()?.parse::<u32>().ok()?;
                let bin = e.path().join("bin");
                bin.join("postgres").exists().then_some((v, bin))
            })
            .collect();
        versions.sort();
        if let Some((_, bin)) = versions.pop() {
            return Ok(bin);
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .find(|dir| dir.join("postgres").exists() && dir.join("initdb").exists())
            .ok_or(LocalError::NoBinaries)
    }

    /// Starts a server on `data_dir`, creating the cluster if the directory
    /// holds none, on a free port.
    pub async fn start(
        data_dir: &Path,
        options: &LocalOptions,
    ) -> Result<LocalPostgres, LocalError> {
        let bin_dir = Self::bin_dir()?;
        let io = |what: &str, e: std::io::Error| LocalError::Io(format!("{what}: {e}"));
        std::fs::create_dir_all(data_dir)
            .map_err(|e| io(&format!("creating {}", data_dir.display()), e))?;
        let data_dir = data_dir
            .canonicalize()
            .map_err(|e| io(&format!("resolving {}", data_dir.display()), e))?;
        let run_as = run_as_user()?;
        if let Some(user) = &run_as {
            if let Some(closed) = closed_ancestor(&data_dir, user) {
                return Err(LocalError::Io(format!(
                    "the postgres OS user cannot reach {}: {} is closed to it (no search permission); choose a data directory it can reach, or allow it with chmod o+x {}",
                    data_dir.display(),
                    closed.display(),
                    closed.display()
                )));
            }
            chown_tree(&data_dir, user)?;
        }
        if !data_dir.join("PG_VERSION").exists() {
            let mut initdb = Command::new(bin_dir.join("initdb"));
            initdb
                .arg("-D")
                .arg(&data_dir)
                .args([
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            as_user(&mut initdb, &run_as);
            let out = initdb.output().await.map_err(|e| io("running initdb", e))?;
            if !out.status.success() {
                return Err(LocalError::Initdb(
                    String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                ));
            }
        }
        let port = free_port().map_err(|e| io("finding a free port", e))?;
        let log = data_dir.join("server.log");
        std::fs::File::create(&log).map_err(|e| io("creating the server log", e))?;
        if let Some(user) = &run_as {
            let _ = chown(&log, Some(user.uid), Some(user.gid));
        }
        let mut server = LocalPostgres {
            child: None,
            port,
            data_dir,
            bin_dir,
            options: options.clone(),
        };
        server.spawn()?;
        server.wait_ready(&log).await?;
        Ok(server)
    }

    async fn wait_ready(&mut self, log: &Path) -> Result<(), LocalError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = self.url("postgres");
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(5).collect();
                return Err(LocalError::Exited {
                    log: log.display().to_string(),
                    tail: tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
                });
            }
            if tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(LocalError::Timeout {
                    seconds: 60,
                    log: log.display().to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server binaries in use (for `pg_recvlogical` in benchmarks).
    pub fn bin_path(&self, program: &str) -> PathBuf {
        self.bin_dir.join(program)
    }

    /// A libpq URL for `dbname` as the superuser `postgres`.
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{dbname}?sslmode=disable",
            self.port
        )
    }

    /// Fast shutdown (SIGINT), waiting for the server to exit.
    pub async fn stop(mut self) {
        self.shutdown().await;
    }

    /// Fast shutdown, then start again on the same port: for tests of a
    /// server restart under load.
    pub async fn restart(&mut self) -> Result<(), LocalError> {
        self.shutdown().await;
        self.spawn()?;
        let log = self.data_dir.join("server.log");
        self.wait_ready(&log).await
    }

    /// Immediate shutdown (SIGQUIT: no checkpoint, crash recovery at the
    /// next start), then start again on the same port.
    pub async fn crash_restart(&mut self) -> Result<(), LocalError> {
        self.shutdown_with(Signal::SIGQUIT).await;
        self.start_again().await
    }

    /// Fast shutdown, leaving the server down until [`Self::start_again`].
    pub async fn stop_for_now(&mut self) {
        self.shutdown().await;
    }

    /// Starts a server stopped with [`Self::stop_for_now`] again.
    pub async fn start_again(&mut self) -> Result<(), LocalError> {
        self.spawn()?;
        let log = self.data_dir.join("server.log");
        self.wait_ready(&log).await
    }

    fn spawn(&mut self) -> Result<(), LocalError> {
        let run_as = run_as_user()?;
        let io = |what: &str, e: std::io::Error| LocalError::Io(format!("{what}: {e}"));
        let log = self.data_dir.join("server.log");
        let log_file = std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .map_err(|e| io("opening the server log", e))?;
        let stderr = log_file
            .try_clone()
            .map_err(|e| io("opening the server log", e))?;
        let mut cmd = Command::new(self.bin_dir.join("postgres"));
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-p")
            .arg(self.port.to_string());
        let mut settings = vec![
            ("listen_addresses", "127.0.0.1"),
            ("unix_socket_directories", ""),
            ("wal_level", "logical"),
            ("max_replication_slots", "64"),
            ("max_wal_senders", "64"),
            ("max_connections", "200"),
        ];
        if self.options.fast_unsafe {
            settings.extend([
                ("fsync", "off"),
                ("synchronous_commit", "off"),
                ("full_page_writes", "off"),
            ]);
        }
        for (k, v) in settings {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        for (k, v) in &self.options.settings {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        cmd.stdin(Stdio::null())
            .stdout(log_file)
            .stderr(stderr)
            .kill_on_drop(true);
        as_user(&mut cmd, &run_as);
        self.child = Some(cmd.spawn().map_err(|e| io("starting postgres", e))?);
        Ok(())
    }

    async fn shutdown(&mut self) {
        self.shutdown_with(Signal::SIGINT).await;
    }

    async fn shutdown_with(&mut self, signal: Signal) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let _ = kill(Pid::from_raw(pid as i32), signal);
            }
            if tokio::time::timeout(Duration::from_secs(30), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}

struct OsUser {
    uid: Uid,
    gid: nix::unistd::Gid,
}

/// PostgreSQL will not run as root; as root we run it as `postgres`.
fn run_as_user() -> Result<Option<OsUser>, LocalError> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    let user = User::from_name("postgres")
        .map_err(|e| LocalError::Io(format!("looking up the postgres OS user: {e}")))?
        .ok_or_else(|| {
            LocalError::Io(
                "running as root, and there is no `postgres` OS user to run PostgreSQL as (create one, or run as a normal user)".into(),
            )
        })?;
    Ok(Some(OsUser {
        uid: user.uid,
        gid: user.gid,
    }))
}

fn as_user(cmd: &mut Command, user: &Option<OsUser>) {
    if let Some(user) = user {
        // Our working directory may be closed to that user (initdb changes
        // back to it and fails); every path we pass is absolute.
        cmd.uid(user.uid.as_raw())
            .gid(user.gid.as_raw())
            .current_dir("/");
    }
}

/// When the server would run as the `postgres` OS user (we are root), the
/// first existing ancestor of `dir` that user may not pass through (a
/// project checked out under a private directory: `mktemp -d` is 0700), so
/// the caller can put the data elsewhere or say what to change. `None` when
/// not root, or when every ancestor lets it through. Nothing is changed.
pub fn unreachable_ancestor(dir: &Path) -> Result<Option<PathBuf>, LocalError> {
    Ok(match run_as_user()? {
        Some(user) => closed_ancestor(dir, &user),
        None => None,
    })
}

fn closed_ancestor(dir: &Path, user: &OsUser) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    dir.ancestors()
        .skip(1)
        .filter_map(|d| Some((d, std::fs::metadata(d).ok()?)))
        .find(|(_, meta)| {
            let mode = meta.mode();
            let searchable = if meta.uid() == user.uid.as_raw() {
                mode & 0o100 != 0
            } else if meta.gid() == user.gid.as_raw() {
                mode & 0o010 != 0
            } else {
                mode & 0o001 != 0
            };
            !searchable
        })
        .map(|(d, _)| d.to_owned())
}

fn chown_tree(dir: &Path, user: &OsUser) -> Result<(), LocalError> {
    let err = |e: nix::Error| {
        LocalError::Io(format!(
            "giving {} to the postgres user: {e}",
            dir.display()
        ))
    };
    chown(dir, Some(user.uid), Some(user.gid)).map_err(err)?;
    // initdb wants the data directory to be 0700 and owned by the server's user.
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                chown_tree(&path, user)?;
            } else {
                chown(&path, Some(user.uid), Some(user.gid)).map_err(err)?;
            }
        }
    }
    Ok(())
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
