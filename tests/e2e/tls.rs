//! TLS and password authentication on both connection kinds (replication and
//! store): `sslmode=verify-full` with a private CA, SCRAM-SHA-256 and MD5.

use std::path::Path;

use anyhow::bail;
use pgtide_pg::local::LocalOptions;
use tokio::process::Command;

use crate::harness::{Pgtide, Server};

async fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .await?;
    if !out.status.success() {
        bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A CA and a server certificate for localhost/127.0.0.1 signed by it.
async fn make_certs(dir: &Path) -> anyhow::Result<()> {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=pgtide test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    )
    .await?;
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    )
    .await?;
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ],
    )
    .await?;
    Ok(())
}

/// Streams over TLS with a verified certificate and SCRAM, then with MD5 and
/// `sslmode=require`; the walsender's connection is encrypted both times.
#[tokio::test]
async fn streams_over_tls_with_scram_and_md5() -> anyhow::Result<()> {
    let certs = tempfile::tempdir()?;
    make_certs(certs.path()).await?;
    let server = Server::own(LocalOptions {
        fast_unsafe: true,
        settings: Vec::new(),
    })
    .await?;
    let local = server.local.as_ref().expect("own server");
    let data = local.data_dir().to_owned();
    for f in ["server.pem", "server.key"] {
        std::fs::copy(certs.path().join(f), data.join(f))?;
    }
    let admin = server.admin().await?;
    // The server runs as `postgres` when we are root: hand it the key.
    let owner = std::fs::metadata(&data)?;
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        for f in ["server.pem", "server.key"] {
            let p = data.join(f);
            nix::unistd::chown(&p, Some(owner.uid().into()), Some(owner.gid().into()))?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    for setting in [
        "ssl = on",
        "ssl_cert_file = 'server.pem'",
        "ssl_key_file = 'server.key'",
    ] {
        admin
            .batch_execute(&format!("ALTER SYSTEM SET {setting}"))
            .await?;
    }
    admin
        .batch_execute(
            "SET password_encryption = 'scram-sha-256';
             CREATE ROLE scram_user LOGIN REPLICATION PASSWORD 'scram-pw';
             SET password_encryption = 'md5';
             CREATE ROLE md5_user LOGIN REPLICATION PASSWORD 'md5-pw';",
        )
        .await?;
    let hba = data.join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba)?;
    std::fs::write(
        &hba,
        format!(
            "hostssl all scram_user 127.0.0.1/32 scram-sha-256\nhostssl all md5_user 127.0.0.1/32 md5\n{old}"
        ),
    )?;
    admin.batch_execute("SELECT pg_reload_conf()").await?;

    for (user, password, mode) in [
        ("scram_user", "scram-pw", "verify-full"),
        ("md5_user", "md5-pw", "require"),
    ] {
        let db = server.database().await?;
        let client = db.client().await?;
        client
            .batch_execute(&format!(
                "CREATE TABLE t (id int PRIMARY KEY); GRANT ALL ON SCHEMA public TO {user}; ALTER TABLE t OWNER TO {user};
                 GRANT CREATE ON DATABASE {} TO {user};",
                db.name
            ))
            .await?;
        let url = format!(
            "postgres://{user}:{password}@localhost:{}/{}?sslmode={mode}&sslrootcert={}",
            local.port(),
            db.name,
            certs.path().join("ca.pem").display()
        );
        let mut args = db.run_args();
        args[2] = url;
        args.extend(["--capture".into(), "t".into()]);
        let pgtide = Pgtide::start(&args).await?;
        client.batch_execute("INSERT INTO t VALUES (1)").await?;
        let events = pgtide.wait_events(1).await?;
        assert_eq!(events[0]["data"]["id"], 1, "{user}");
        let ssl: bool = client
            .query_one(
                "SELECT bool_and(s.ssl) FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) WHERE r.usename = $1",
                &[&user],
            )
            .await?
            .get(0);
        assert!(ssl, "{user}: walsender connection is not encrypted");
        pgtide.stop().await?;
    }

    // verify-full refuses a certificate from a CA it was not told to trust.
    let other = tempfile::tempdir()?;
    openssl(
        other.path(),
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=other CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    )
    .await?;
    let db = server.database().await?;
    let mut args = db.run_args();
    args[2] = format!(
        "postgres://scram_user:scram-pw@localhost:{}/{}?sslmode=verify-full&sslrootcert={}",
        local.port(),
        db.name,
        other.path().join("ca.pem").display()
    );
    let out = crate::harness::run_pgtide(&args).await?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error:") && stderr.to_lowercase().contains("certificate"),
        "{stderr}"
    );
    Ok(())
}
