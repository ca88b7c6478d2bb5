//! `pgtide dev`: the zero-setup default works as its banner says.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::WAIT;

/// `pgtide dev` starts its own PostgreSQL, prints a curl that publishes an
/// event, captures the demo tables, serves SQL over `/ws` through a
/// low-privilege login of its own, and SIGTERM stops the server it started.
#[tokio::test]
async fn dev_starts_everything_and_its_curl_works() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
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
