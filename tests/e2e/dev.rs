//! `pgtide dev`: the zero-setup default works as its banner says.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::WAIT;

/// A private (0700) temporary directory for `pgtide dev --data-dir DIR/pg`.
/// Run as root, dev keeps the cluster outside it (the `postgres` user cannot
/// pass through a 0700 directory) behind the link `DIR/pg/pg`; dropping
/// this removes that too.
struct DevDir(tempfile::TempDir);

impl DevDir {
    fn new() -> anyhow::Result<DevDir> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        // Private, as `mktemp -d` makes it (tempfile's are 0755).
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
        Ok(DevDir(dir))
    }

    fn path(&self) -> &std::path::Path {
        self.0.path()
    }
}

impl Drop for DevDir {
    fn drop(&mut self) {
        if let Ok(target) = std::fs::read_link(self.0.path().join("pg").join("pg")) {
            let _ = std::fs::remove_dir_all(target);
        }
    }
}

/// A running `pgtide dev`, its banner, and its stderr as it is read.
struct Dev {
    child: tokio::process::Child,
    banner: String,
    stderr: tokio::task::JoinHandle<String>,
}

impl Dev {
    /// Starts `pgtide dev --data-dir DATA` at the default log level and
    /// reads its banner.
    async fn start(data: &std::path::Path) -> anyhow::Result<Dev> {
        use tokio::io::AsyncReadExt;
        let mut child = Command::new(env!("CARGO_BIN_EXE_pgtide"))
            .args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .env_remove("PGTIDE_LOG")
            .env_remove("RUST_LOG")
            .env_remove("PGTIDE_JWT_SECRET")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut err = child
            .stderr
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stderr"))?;
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text).await;
            text
        });
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let mut banner = Vec::new();
        tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await? {
                let done = line.starts_with("Ctrl-C");
                banner.push(line);
                if done {
                    return anyhow::Ok(());
                }
            }
            anyhow::bail!("pgtide dev exited before its banner")
        })
        .await??;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Dev {
            child,
            banner: banner.join("\n"),
            stderr,
        })
    }

    /// The value after `label` on its banner line.
    fn banner_value(&self, label: &str) -> anyhow::Result<String> {
        self.banner
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(|s| s.trim().to_owned())
            .ok_or_else(|| anyhow::anyhow!("the banner has no {label}: {}", self.banner))
    }

    /// SIGTERM; asserts a clean exit and returns everything it logged.
    async fn stop(mut self) -> anyhow::Result<String> {
        let pid = self
            .child
            .id()
            .ok_or_else(|| anyhow::anyhow!("not running"))?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        let status = tokio::time::timeout(WAIT, self.child.wait()).await??;
        let text = tokio::time::timeout(WAIT, self.stderr).await??;
        anyhow::ensure!(status.success(), "{status}: {text}");
        Ok(text)
    }
}

/// `pgtide dev` keeps its JWT secret (0600) in its data directory, so a
/// token from the first start still works after a restart, and the data
/// persists; it changes nothing outside the data directory (a 0700 parent
/// stays 0700); its start and stop log no NOTICE and no pool connection
/// errors; it serves a favicon; and the admin page's live tail asks for
/// the latest stored events (`/v1/events/stats`, then `from_seq`) and shows
/// each webhook delivery's error.
#[tokio::test]
async fn dev_restart_keeps_its_secret_and_data() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = DevDir::new()?;
    let mode = |p: &std::path::Path| -> anyhow::Result<u32> {
        Ok(std::fs::metadata(p)?.permissions().mode() & 0o777)
    };
    let parent_mode = mode(dir.path())?;
    let data = dir.path().join("pg");

    let first = Dev::start(&data).await?;
    let token = first.banner_value("Admin token:")?;
    let api = first.banner_value("API:")?;
    let http = reqwest::Client::new();
    let published: serde_json::Value = http
        .post(format!("{api}/v1/events"))
        .bearer_auth(&token)
        .json(&json!({"event_type": "custom.before_restart", "data": {}}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let icon = http.get(format!("{api}/favicon.ico")).send().await?;
    assert!(icon.status().is_success(), "{}", icon.status());
    assert_eq!(icon.headers()["content-type"], "image/svg+xml");
    let html = http.get(format!("{api}/")).send().await?.text().await?;
    for needle in [
        "/v1/events/stats",
        "from_seq: fromSeq",
        "TAIL_BACKLOG = 100",
        "esc(d.error)",
        "rel=\"icon\"",
    ] {
        assert!(html.contains(needle), "admin page lacks {needle}");
    }
    let first_log = first.stop().await?;

    let secret_file = data.join("jwt-secret");
    assert_eq!(mode(&secret_file)?, 0o600);
    assert_eq!(mode(dir.path())?, parent_mode, "the parent's mode changed");

    let second = Dev::start(&data).await?;
    second.banner_value("Admin token:")?;
    let api = second.banner_value("API:")?;
    let page: serde_json::Value = http
        .get(format!("{api}/v1/events?event_types=custom.before_restart"))
        .bearer_auth(&token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(
        page["events"][0]["id"], published["event_id"],
        "the first start's token reads the first start's event: {page}"
    );
    let second_log = second.stop().await?;
    for log in [&first_log, &second_log] {
        assert!(!log.contains("already exists, skipping"), "{log}");
        assert!(!log.contains("NOTICE"), "{log}");
        assert!(!log.contains("deadpool"), "{log}");
        assert!(!log.contains("o+x"), "{log}");
    }
    assert_eq!(mode(dir.path())?, parent_mode, "the parent's mode changed");
    if nix::unistd::Uid::effective().is_root() {
        // The postgres user cannot pass through the 0700 parent: the
        // cluster is elsewhere, and the first start said where.
        assert!(first_log.contains("keeps its data in"), "{first_log}");
        assert!(std::fs::read_link(data.join("pg")).is_ok());
    }
    Ok(())
}

/// `pgtide dev` starts its own PostgreSQL, prints a curl that publishes an
/// event, captures the demo tables, serves SQL over `/ws` through a
/// low-privilege login of its own, and SIGTERM stops the server it started.
#[tokio::test]
async fn dev_starts_everything_and_its_curl_works() -> anyhow::Result<()> {
    let dir = DevDir::new()?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgtide"))
        .args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("pg"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut banner = Vec::new();
    tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await? {
            let done = line.starts_with("Ctrl-C");
            banner.push(line);
            if done {
                break;
            }
        }
        anyhow::Ok(())
    })
    .await??;
    let text = banner.join("\n");
    let api = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("API:"))
        .map(|s| s.trim().to_owned())
        .expect("banner names the API");
    let pg_url = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("PostgreSQL:"))
        .map(|s| s.trim().to_owned())
        .expect("banner names the database");
    // The printed curl, run as printed (its line continuation joined).
    let start = text.find("curl -s -X POST").expect("a publishing curl");
    let export = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("export TOKEN="))
        .expect("a token export");
    let token = export.trim_start_matches("export TOKEN=").to_owned();
    let curl = format!(
        "{export}\n{}",
        text[start..].lines().take(2).collect::<Vec<_>>().join("\n")
    );
    let out = Command::new("sh").arg("-c").arg(&curl).output().await?;
    let body: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(body["event_type"], "custom.hello", "{curl} -> {body}");
    assert!(body["seq"].as_i64().is_some());

    // The admin page is served, and the banner links to it with the token.
    let admin = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Admin page:"))
        .map(|s| s.trim().to_owned())
        .expect("banner names the admin page");
    assert_eq!(admin, format!("{api}/#token={token}"));
    let page = reqwest::get(format!("{api}/")).await?;
    assert!(
        page.headers()["content-type"]
            .to_str()?
            .starts_with("text/html")
    );
    let html = page.text().await?;
    for needle in [
        "/v1/topics",
        "/v1/webhooks",
        "/ws?token=",
        "/v1/dead-letters",
    ] {
        assert!(html.contains(needle), "admin page lacks {needle}");
    }

    // The demo tables are captured.
    let client = crate::harness::connect(&pg_url).await?;
    client
        .batch_execute("INSERT INTO orders (user_id, total) VALUES (1, 9.99)")
        .await?;
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let page: serde_json::Value = http
            .get(format!("{api}/v1/events?topics=tables.orders.insert"))
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        if page["events"].as_array().is_some_and(|e| !e.is_empty()) {
            assert_eq!(page["events"][0]["data"]["total"], "9.99");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no CDC event from the demo schema"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(client);

    // SQL over /ws is on, through the low-privilege login dev made itself.
    let secret = text
        .split("PGTIDE_JWT_SECRET=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("banner names the secret")
        .to_owned();
    let out = crate::harness::run_pgtide(&[
        "token".into(),
        "--jwt-secret".into(),
        secret,
        "--sub".into(),
        "me".into(),
        "--org".into(),
        "1".into(),
        "--sql".into(),
    ])
    .await?;
    let sql_token = String::from_utf8(out.stdout)?.trim().to_owned();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "{}/ws?token={sql_token}",
        api.replacen("http://", "ws://", 1)
    ))
    .await?;
    for (id, frame) in [
        (
            1,
            json!({"type": "BeginTransaction", "id": 1, "data": {"transaction_id": "t"}}),
        ),
        (
            2,
            json!({"type": "ExecuteInTransaction", "id": 2, "data": {"transaction_id": "t",
            "sql": "SELECT current_user::text AS who, count(*) AS orders FROM orders"}}),
        ),
    ] {
        ws.send(Message::Text(frame.to_string().into())).await?;
        let reply = loop {
            let msg = tokio::time::timeout(WAIT, ws.next())
                .await?
                .ok_or_else(|| anyhow::anyhow!("connection ended"))??;
            if let Message::Text(t) = msg {
                let v: serde_json::Value = serde_json::from_str(t.as_str())?;
                if v["id"] == id {
                    break v;
                }
            }
        };
        assert_eq!(reply["status"], "success", "{reply}");
        if id == 2 {
            assert_eq!(reply["data"]["result"][0]["who"], "pgtide_app", "{reply}");
            assert_eq!(reply["data"]["result"][0]["orders"], 1, "{reply}");
        }
    }
    drop(ws);

    let pid = child.id().expect("running");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let status = tokio::time::timeout(WAIT, child.wait()).await??;
    assert!(status.success(), "{status}");
    // The throwaway server is gone with it.
    assert!(
        crate::harness::connect(&pg_url).await.is_err(),
        "dev's PostgreSQL still running"
    );
    Ok(())
}
