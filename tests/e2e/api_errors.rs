//! Every error of the HTTP API says what is wrong and nothing more: the
//! contract's body on every 4xx (axum's own rejections too), 5xx and
//! `/readyz` without driver text but with a request id the log has, and a
//! property-based fuzz run of the API from its own OpenAPI document.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::harness::{Server, TestDb, WAIT, connect, run_pgtide, unique};

const SECRET: &str = "api-errors-secret-0123456789abcdef";

/// A `pgtide run` whose log (stderr) the test reads.
struct Logged {
    child: Child,
    base: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Logged {
    async fn start(args: &[String]) -> anyhow::Result<Logged> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pgtide"))
            .args(args)
            .env("PGTIDE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().context("no stderr")?;
        let keep = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(mut log) = keep.lock() {
                    log.push(line);
                }
            }
        });
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let base = tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.strip_prefix("pgtide listening on ") {
                    return Ok(url.trim().to_owned());
                }
            }
            bail!("pgtide exited before listening")
        })
        .await
        .context("pgtide did not start listening in time")??;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let logged = Logged { child, base, log };
        logged.wait_ready().await?;
        Ok(logged)
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(r) = http.get(self.url("/readyz")).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("pgtide not ready within {WAIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The log lines that mention `needle`, waiting a bounded time for one.
    async fn log_lines(&self, needle: &str) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found: Vec<String> = self
                .log
                .lock()
                .map(|l| l.iter().filter(|l| l.contains(needle)).cloned().collect())
                .unwrap_or_default();
            if !found.is_empty() || Instant::now() > deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

async fn admin_token() -> anyhow::Result<String> {
    let out = run_pgtide(&[
        "token".into(),
        "--jwt-secret".into(),
        SECRET.into(),
        "--sub".into(),
        "fuzz".into(),
        "--role".into(),
        "admin".into(),
    ])
    .await?;
    anyhow::ensure!(out.status.success(), "{out:?}");
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

fn run_args(db: &TestDb, mappings: &Path) -> Vec<String> {
    let mut args = db.run_args();
    args.retain(|a| a != "--insecure-no-auth");
    args.extend([
        "--jwt-secret".into(),
        SECRET.into(),
        "--mappings".into(),
        mappings.display().to_string(),
    ]);
    args
}

/// Asserts the contract's error body and returns it.
#[track_caller]
fn assert_error_body(what: &str, content_type: Option<&str>, body: &Value) {
    assert!(
        content_type.is_some_and(|c| c.starts_with("application/json")),
        "{what}: content type {content_type:?}: {body}"
    );
    let error = &body["error"];
    assert!(
        error["code"].is_string() && error["message"].is_string() && error["details"].is_array(),
        "{what}: not the error body: {body}"
    );
}

async fn call(
    http: &reqwest::Client,
    request: reqwest::RequestBuilder,
) -> anyhow::Result<(StatusCode, reqwest::header::HeaderMap, Value)> {
    let response = http.execute(request.build()?).await?;
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, headers, body))
}

/// axum's own answers (a path or query that does not parse, a body that is
/// not JSON, a wrong method or media type, an unknown route, `/ws` without
/// an upgrade) come in the contract's error body; a mapping whose `when` is
/// a number is a 400.
#[tokio::test]
async fn rejections_use_the_error_body() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    db.client()
        .await?
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await?;
    let dir = tempfile::tempdir()?;
    let pgtide = Logged::start(&run_args(&db, dir.path())).await?;
    let token = admin_token().await?;
    let http = reqwest::Client::new();
    let auth = |r: reqwest::RequestBuilder| r.bearer_auth(&token);
    let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        (
            "a path id that is not a number",
            auth(http.post(pgtide.url("/v1/dead-letters/-71249999999999999999999/retry"))),
            400,
        ),
        (
            "a query that does not parse",
            auth(http.get(pgtide.url("/v1/events?limit=lots"))),
            400,
        ),
        (
            "a body that is not JSON",
            auth(http.post(pgtide.url("/v1/topics")))
                .header("content-type", "application/json")
                .body("{nope"),
            400,
        ),
        (
            "a method the route lacks",
            auth(http.put(pgtide.url("/v1/events"))),
            405,
        ),
        (
            "an unknown route",
            auth(http.get(pgtide.url("/v1/nope"))),
            404,
        ),
        (
            "/ws without an upgrade",
            auth(http.get(pgtide.url("/ws"))),
            400,
        ),
        (
            "a mapping whose when is a number",
            auth(http.post(pgtide.url("/v1/mappings")))
                .json(&json!({"name": "m", "table": "t", "topic": "t.x", "when": 3})),
            400,
        ),
    ];
    for (what, request, status) in cases {
        let (got, headers, body) = call(&http, request).await?;
        assert_eq!(got.as_u16(), status, "{what}: {body}");
        let content_type = headers.get("content-type").and_then(|v| v.to_str().ok());
        assert_error_body(what, content_type, &body);
        assert!(
            headers.contains_key("x-request-id"),
            "{what}: no request id"
        );
        if status == 405 {
            assert!(headers.contains_key("allow"), "{what}: keeps Allow");
        }
    }
    let (_, _, body) = call(
        &http,
        auth(http.post(pgtide.url("/v1/mappings")))
            .json(&json!({"name": "m", "table": "t", "topic": "t.x", "when": 3})),
    )
    .await?;
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("`when` must be a CEL expression that gives a bool")),
        "{body}"
    );
    pgtide.stop().await;
    db.cleanup().await;
    Ok(())
}

/// Driver text, SQL, connection strings and error chains never reach a
/// response: with the store refusing connections, `/readyz` (no token) is
/// 503 and an API call is a 5xx, each naming a request id, and the log has
/// the database's reason under that id.
#[tokio::test]
async fn internal_errors_name_a_request_id_the_log_has() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let store = format!("st_{}", unique());
    let admin = server.admin().await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {store}"))
        .await?;
    let store_url = db
        .url
        .replacen(&format!("/{}", db.name), &format!("/{store}"), 1);
    let dir = tempfile::tempdir()?;
    let mut args = run_args(&db, dir.path());
    args.extend(["--store-url".into(), store_url.clone()]);
    let pgtide = Logged::start(&args).await?;
    let token = admin_token().await?;
    let http = reqwest::Client::new();

    // The store goes away: no new connections, the open ones cut.
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {store} ALLOW_CONNECTIONS false;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{store}';"
        ))
        .await?;

    let forbidden = [
        "db error",
        "FATAL",
        "not currently accepting",
        "SELECT",
        "postgres://",
        &store,
        "pgtide.",
        "error communicating",
    ];
    let assert_clean = |what: &str, body: &Value| {
        let text = body.to_string();
        for f in forbidden {
            assert!(!text.contains(f), "{what} shows {f:?}: {text}");
        }
    };

    // /readyz: 503 with the reason, and the id.
    let deadline = Instant::now() + WAIT;
    let (ready, ready_id) = loop {
        let r = http.get(pgtide.url("/readyz")).send().await?;
        let id = r
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let status = r.status();
        let body: Value = r.json().await?;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            break (body, id.context("/readyz names no request id")?);
        }
        if Instant::now() > deadline {
            bail!("/readyz stayed {status}: {body}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_clean("/readyz", &ready);
    assert!(
        ready["store"]
            .as_str()
            .is_some_and(|s| s.starts_with("unreachable") && s.contains(&ready_id)),
        "{ready}"
    );
    let logged = pgtide.log_lines(&ready_id).await;
    assert!(
        logged
            .iter()
            .any(|l| l.contains("event store does not answer") && l.contains("error=event store")),
        "the log has the reason under {ready_id}: {logged:?}"
    );

    // An API call: a 5xx in the error body, naming its id.
    let (status, headers, body) = call(
        &http,
        http.get(pgtide.url("/v1/topics")).bearer_auth(&token),
    )
    .await?;
    assert!(status.is_server_error(), "{status}: {body}");
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok());
    assert_error_body("GET /v1/topics", content_type, &body);
    assert_clean("GET /v1/topics", &body);
    let id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .context("no x-request-id")?
        .to_owned();
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&id)),
        "{body}"
    );
    assert_eq!(body["error"]["details"], json!([{"request_id": id}]));
    let logged = pgtide.log_lines(&id).await;
    assert!(
        logged
            .iter()
            .any(|l| l.contains("store error in API request") && l.contains("error=event store")),
        "the log has the reason under {id}: {logged:?}"
    );

    pgtide.stop().await;
    admin
        .batch_execute(&format!("ALTER DATABASE {store} ALLOW_CONNECTIONS true"))
        .await?;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {store} WITH (FORCE)"))
        .await?;
    db.cleanup().await;
    Ok(())
}

/// The schemathesis CLI in a virtualenv under `target/`, installed from
/// PyPI on first use (pinned below); `Err` says why it cannot be had.
async fn schemathesis() -> anyhow::Result<PathBuf> {
    const VERSION: &str = "4.32.5";
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/schemathesis");
    let venv = target.join(format!("venv-{VERSION}"));
    let bin = venv.join("bin/schemathesis");
    let ready = venv.join(".installed");
    if !(ready.exists() && bin.exists()) {
        std::fs::create_dir_all(&target)?;
        let run = |program: PathBuf, args: Vec<String>| async move {
            let out = tokio::time::timeout(
                Duration::from_secs(600),
                Command::new(&program)
                    .args(&args)
                    .stdin(Stdio::null())
                    .kill_on_drop(true)
                    .output(),
            )
            .await
            .with_context(|| format!("{} {args:?} took over 10 minutes", program.display()))?
            .with_context(|| format!("running {}", program.display()))?;
            anyhow::ensure!(
                out.status.success(),
                "{} {args:?} failed: {}",
                program.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(())
        };
        run(
            "python3".into(),
            vec!["-m".into(), "venv".into(), venv.display().to_string()],
        )
        .await?;
        run(
            venv.join("bin/pip"),
            vec![
                "install".into(),
                "--quiet".into(),
                "--disable-pip-version-check".into(),
                format!("schemathesis=={VERSION}"),
            ],
        )
        .await?;
        std::fs::write(&ready, VERSION)?;
    }
    Ok(bin)
}

/// Property-based fuzzing of the whole HTTP API from its own OpenAPI
/// document (schemathesis, deterministic, at most 30 cases per operation and
/// phase and 2 minutes in all, on 2 workers): no 5xx, every status and response body as the document says, and
/// every error in the contract's body (`fuzz/schemathesis_hooks.py`).
/// Without Python or PyPI the test fails, saying why; it never passes
/// without having run.
#[tokio::test]
async fn fuzz_the_api_from_its_openapi_document() -> anyhow::Result<()> {
    let bin = schemathesis()
        .await
        .context("schemathesis (from PyPI) is needed for this test and could not be installed")?;
    let server = Server::shared().await?;
    let db = server.database().await?;
    let client = connect(&db.url).await?;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, status text)")
        .await?;
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("t.yaml"),
        "topics:\n  - name: t.changed\nmappings:\n  - name: t\n    table: t\n    topic: t.changed\n",
    )?;
    let pgtide = Logged::start(&run_args(&db, dir.path())).await?;
    let token = admin_token().await?;
    let hooks = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/e2e/fuzz");
    let report = tempfile::tempdir()?;
    let mut command = Command::new(&bin);
    command
        .args([
            "run".to_owned(),
            pgtide.url("/v1/openapi.json"),
            "--url".into(),
            pgtide.base.clone(),
            "-H".into(),
            format!("Authorization: Bearer {token}"),
            "--checks".into(),
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,error_body_shape".into(),
            "--phases".into(),
            "examples,coverage,fuzzing".into(),
            // Deterministic generation: the same cases in the same order on
            // every run (schemathesis then ignores --seed).
            "--generation-deterministic".into(),
            "--max-examples".into(),
            "30".into(),
            "--max-time".into(),
            "120".into(),
            "--request-timeout".into(),
            "10".into(),
            "--workers".into(),
            "2".into(),
            "--no-color".into(),
            "--report-dir".into(),
            report.path().display().to_string(),
        ])
        // Its cache of past failures stays out of the checkout (and out of
        // the next run, which would replay them first).
        .current_dir(report.path())
        .env("SCHEMATHESIS_HOOKS", "schemathesis_hooks")
        .env("PYTHONPATH", &hooks)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(240), command.output())
        .await
        .context("schemathesis ran over 4 minutes")??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<String> = pgtide
        .log
        .lock()
        .map(|l| l.iter().filter(|l| l.contains("ERROR")).cloned().collect())
        .unwrap_or_default();
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{stderr}\npgtide's errors:\n{}",
        errors.join("\n")
    );
    pgtide.stop().await;
    db.cleanup().await;
    Ok(())
}
