//! SQL transactions over `/ws` (SPEC §7, §11): only `sql: true` tokens, as
//! `--sql-role`, with the claims visible to row-level security.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{Pgtide, Server, WAIT, run_pgtide, unique};

pub(crate) const SECRET: &str = "sql-test-secret-0123456789abcdef";

pub(crate) async fn token(args: &[&str]) -> anyhow::Result<String> {
    let mut all: Vec<String> = vec!["token".into(), "--jwt-secret".into(), SECRET.into()];
    all.extend(args.iter().map(|s| (*s).to_owned()));
    let out = run_pgtide(&all).await?;
    assert!(out.status.success(), "{out:?}");
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub(crate) struct Client {
    pub(crate) ws: Ws,
    next_id: u64,
}

impl Client {
    pub(crate) async fn connect(pgtide: &Pgtide, token: &str) -> anyhow::Result<Client> {
        let url = format!(
            "{}?token={token}",
            pgtide.url("/ws").replacen("http://", "ws://", 1)
        );
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(Client { ws, next_id: 1 })
    }

    /// Sends `{type, data}` and returns the reply with the same id.
    pub(crate) async fn call(&mut self, kind: &str, data: Value) -> anyhow::Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let frame = json!({"type": kind, "id": id, "data": data});
        self.ws
            .send(Message::Text(frame.to_string().into()))
            .await?;
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await?
                .ok_or_else(|| anyhow::anyhow!("connection ended"))??;
            if let Message::Text(t) = msg {
                let v: Value = serde_json::from_str(t.as_str())?;
                if v["id"] == id {
                    return Ok(v);
                }
            }
        }
    }
}

#[tokio::test]
async fn transactions_run_as_the_sql_role_with_claims() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let role = format!("app_{}", unique());
    db.client()
        .await?
        .batch_execute(&format!(
            "CREATE TABLE orders (id serial PRIMARY KEY, product text NOT NULL, qty int NOT NULL,
                                  price numeric, org_id int NOT NULL);
             INSERT INTO orders (product, qty, org_id) VALUES ('secret', 1, 2);
             DO $$ BEGIN CREATE ROLE {role} NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
             GRANT SELECT, INSERT, UPDATE ON orders TO {role};
             GRANT USAGE ON SEQUENCE orders_id_seq TO {role};
             ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
             CREATE POLICY by_org ON orders TO {role}
                 USING (org_id = (current_setting('request.jwt.claims')::jsonb ->> 'org_id')::int)
                 WITH CHECK (org_id = (current_setting('request.jwt.claims')::jsonb ->> 'org_id')::int);"
        ))
        .await?;
    let login = db.sql_login(&role).await?;
    let mut args = db.run_args();
    args.retain(|a| a != "--insecure-no-auth");
    args.extend([
        "--jwt-secret".into(),
        SECRET.into(),
        "--sql-role".into(),
        role.clone(),
        "--sql-database-url".into(),
        login,
    ]);
    let pgtide = Pgtide::start(&args).await?;
    let sql_token = token(&["--sub", "u1", "--org", "1", "--sql"]).await?;
    let mut c = Client::connect(&pgtide, &sql_token).await?;

    // The seed's flow: begin, execute, commit, each a TransactionResult.
    let r = c
        .call("BeginTransaction", json!({"transaction_id": "tx-001"}))
        .await?;
    assert_eq!(r["type"], "TransactionResult", "{r}");
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(r["data"]["operation"], "begin");
    assert!(r["data"]["duration_ms"].is_u64());
    let r = c
        .call(
            "ExecuteInTransaction",
            json!({"transaction_id": "tx-001",
                   "sql": "INSERT INTO orders (product, qty, price, org_id) VALUES ($1, $2, $3, 1) RETURNING product, qty, price",
                   "params": ["widget", 5, 12.5]}),
        )
        .await?;
    assert_eq!(r["data"]["success"], true, "{r}");
    assert_eq!(r["data"]["result"][0]["product"], "widget", "{r}");
    assert_eq!(r["data"]["result"][0]["qty"], 5, "{r}");
    assert_eq!(r["data"]["result"][0]["price"].to_string(), "12.5", "{r}");
    // Row-level security sees the token's org: org 2's row is invisible.
    let r = c
        .call(
            "ExecuteInTransaction",
            json!({"transaction_id": "tx-001", "sql": "SELECT product, current_user AS who FROM orders ORDER BY id"}),
        )
        .await?;
    assert_eq!(
        r["data"]["result"],
        json!([{"product": "widget", "who": role}]),
        "{r}"
    );
    let r = c
        .call("CommitTransaction", json!({"transaction_id": "tx-001"}))
        .await?;
    assert_eq!(r["status"], "success", "{r}");
    let count: i64 = db
        .client()
        .await?
        .query_one("SELECT count(*) FROM orders WHERE product = 'widget'", &[])
        .await?
        .get(0);
    assert_eq!(count, 1);

    // Rollback leaves nothing behind; statements without rows report a count.
    c.call("BeginTransaction", json!({"transaction_id": "t2"}))
        .await?;
    let r = c
        .call(
            "ExecuteInTransaction",
            json!({"transaction_id": "t2", "sql": "UPDATE orders SET qty = qty + 1"}),
        )
        .await?;
    assert_eq!(r["data"]["result"], json!({"rows_affected": 1}), "{r}");
    let r = c
        .call("RollbackTransaction", json!({"transaction_id": "t2"}))
        .await?;
    assert_eq!(r["status"], "success");
    let qty: i32 = db
        .client()
        .await?
        .query_one("SELECT qty FROM orders WHERE product = 'widget'", &[])
        .await?
        .get(0);
    assert_eq!(qty, 5);

    // A failed statement is reported with its SQLSTATE; commit then rolls back.
    c.call("BeginTransaction", json!({"transaction_id": "t3"}))
        .await?;
    c.call(
        "ExecuteInTransaction",
        json!({"transaction_id": "t3", "sql": "INSERT INTO orders (product, qty, org_id) VALUES ('x', 1, 1)"}),
    )
    .await?;
    let r = c
        .call(
            "ExecuteInTransaction",
            json!({"transaction_id": "t3", "sql": "INSERT INTO orders (product, qty, org_id) VALUES ('y', 1, 2)"}),
        )
        .await?;
    assert_eq!(r["status"], "error", "{r}");
    assert_eq!(
        r["data"]["sqlstate"], "42501",
        "RLS WITH CHECK refuses org 2: {r}"
    );
    let r = c
        .call("CommitTransaction", json!({"transaction_id": "t3"}))
        .await?;
    assert_eq!(r["error"]["code"], "transaction_aborted", "{r}");
    let x: i64 = db
        .client()
        .await?
        .query_one("SELECT count(*) FROM orders WHERE product = 'x'", &[])
        .await?
        .get(0);
    assert_eq!(x, 0);

    // Bad requests: clear errors, the connection stays usable.
    for (kind, data, code) in [
        (
            "ExecuteInTransaction",
            json!({"transaction_id": "nope", "sql": "SELECT 1"}),
            "unknown_transaction",
        ),
        ("BeginTransaction", json!({}), "invalid_message"),
        (
            "BeginTransaction",
            json!({"transaction_id": "a", "bogus": 1}),
            "invalid_message",
        ),
    ] {
        let r = c.call(kind, data).await?;
        assert_eq!(r["error"]["code"], code, "{r}");
    }
    c.call("BeginTransaction", json!({"transaction_id": "t4"}))
        .await?;
    for sql in ["SET ROLE postgres", "RESET ROLE", "COMMIT"] {
        let r = c
            .call(
                "ExecuteInTransaction",
                json!({"transaction_id": "t4", "sql": sql}),
            )
            .await?;
        assert_eq!(r["error"]["code"], "forbidden_statement", "{sql}: {r}");
    }
    let r = c
        .call(
            "ExecuteInTransaction",
            json!({"transaction_id": "t4", "sql": "SELEC 1"}),
        )
        .await?;
    assert_eq!(r["data"]["sqlstate"], "42601", "{r}");
    let r = c.call("ping", json!({})).await?;
    assert_eq!(r["data"]["pong"], true);

    // A token without `sql: true` is refused.
    let plain = token(&["--sub", "u2", "--org", "1"]).await?;
    let mut p = Client::connect(&pgtide, &plain).await?;
    let r = p
        .call("BeginTransaction", json!({"transaction_id": "t"}))
        .await?;
    assert_eq!(r["error"]["code"], "forbidden", "{r}");

    // Closing the socket rolls open transactions back (t4 is still open).
    let open_transactions = async || -> anyhow::Result<i64> {
        Ok(db
            .client()
            .await?
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
                &[],
            )
            .await?
            .get(0))
    };
    assert_eq!(open_transactions().await?, 1);
    c.ws.close(None).await?;
    drop(c);
    let deadline = std::time::Instant::now() + WAIT;
    while open_transactions().await? != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "transaction left open"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn sql_is_off_without_a_role() -> anyhow::Result<()> {
    let server = Server::shared().await?;
    let db = server.database().await?;
    let mut args = db.run_args();
    args.retain(|a| a != "--insecure-no-auth");
    args.extend(["--jwt-secret".into(), SECRET.into()]);
    let pgtide = Pgtide::start(&args).await?;
    let t = token(&["--sub", "u", "--sql", "--role", "admin"]).await?;
    let mut c = Client::connect(&pgtide, &t).await?;
    let r = c
        .call("BeginTransaction", json!({"transaction_id": "t"}))
        .await?;
    assert_eq!(r["error"]["code"], "sql_disabled", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("--sql-role")
    );
    pgtide.stop().await?;
    db.cleanup().await;
    Ok(())
}
