//! Connection settings: the libpq URL (or `key=value` string), `sslmode`, and
//! the rustls client configuration both our connection kinds use.
//!
//! `tokio-postgres` parses most of the URL but knows only `disable|prefer|require`;
//! we take `sslmode` and `sslrootcert` out first so `verify-ca` and `verify-full`
//! work the way libpq users expect.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// The TLS connector type ordinary connections use.
pub type MakeTls = tokio_postgres_rustls::MakeRustlsConnect;

/// How hard to insist on TLS, with libpq's meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never use TLS.
    Disable,
    /// Use TLS when the server offers it, without verifying the certificate.
    Prefer,
    /// Always use TLS, without verifying the certificate.
    Require,
    /// Always use TLS and verify the chain, but not the host name.
    VerifyCa,
    /// Always use TLS and verify the chain and the host name.
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = ConnectError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "disable" | "allow" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(ConnectError::Config(format!(
                    "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
                )));
            }
        })
    }
}

/// Why connecting failed, phrased for the person who has to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid database URL: {0}")]
    Config(String),
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("{0}")]
    Postgres(String),
}

impl ConnectError {
    /// Turns a driver error into one line naming the problem and, where we
    /// know it, the fix.
    pub fn from_postgres(err: &tokio_postgres::Error, target: &str) -> ConnectError {
        if let Some(db) = err.as_db_error() {
            return ConnectError::Postgres(explain_sqlstate(
                db.code().code(),
                db.message(),
                target,
            ));
        }
        let text = err.to_string();
        let source = std::error::Error::source(err)
            .map(|s| s.to_string())
            .unwrap_or_default();
        if source.contains("Connection refused") || text.contains("Connection refused") {
            return ConnectError::Postgres(format!(
                "cannot reach PostgreSQL at {target}: connection refused (is the server running, and are host and port right?)"
            ));
        }
        ConnectError::Postgres(
            format!("cannot connect to PostgreSQL at {target}: {text} {source}")
                .trim_end()
                .to_owned(),
        )
    }
}

/// One clear line for the server errors people hit when first attaching.
pub fn explain_sqlstate(code: &str, message: &str, target: &str) -> String {
    match code {
        "28P01" | "28000" => format!(
            "PostgreSQL at {target} refused the login: {message} (check the user and password in --database-url)"
        ),
        "3D000" => {
            format!("{message} at {target} (create it, or fix the database name in --database-url)")
        }
        "42501" => format!(
            "permission denied: {message} (the user needs the REPLICATION attribute: ALTER ROLE <user> WITH REPLICATION, and CREATE on the database)"
        ),
        "53300" => format!("PostgreSQL at {target} has no free connection slots: {message}"),
        "55000" if message.contains("wal_level") => format!(
            "{message}: set wal_level = logical in postgresql.conf (ALTER SYSTEM SET wal_level = logical) and restart PostgreSQL"
        ),
        _ => format!("PostgreSQL error {code} at {target}: {message}"),
    }
}

/// Parsed connection settings for one database.
#[derive(Clone)]
pub struct PgConfig {
    inner: tokio_postgres::Config,
    ssl_mode: SslMode,
    root_cert: Option<PathBuf>,
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display_target())
    }
}

impl PgConfig {
    /// Parses a libpq URL (`postgres://user:pass@host:port/db?sslmode=require`) or a
    /// `key=value` connection string.
    pub fn parse(url: &str) -> Result<PgConfig, ConnectError> {
        let mut ssl_mode = SslMode::Prefer;
        let mut root_cert = None;
        let rest = strip_tls_params(url, &mut |key, value| {
            match key {
                "sslmode" => ssl_mode = value.parse()?,
                "sslrootcert" => root_cert = Some(PathBuf::from(value)),
                _ => {}
            }
            Ok(())
        })?;
        if let Some(problem) = url_problem(url) {
            return Err(ConnectError::Config(format!(
                "{problem}, in {}",
                redact(url)
            )));
        }
        let mut inner = tokio_postgres::Config::from_str(&rest).map_err(|e| {
            // The driver's own text is only "invalid connection string"; what
            // is wrong with it is in the source.
            let why = std::error::Error::source(&e)
                .map(|s| format!("{e}: {s}"))
                .unwrap_or_else(|| e.to_string());
            ConnectError::Config(format!("{why}, in {}", redact(url)))
        })?;
        inner.ssl_mode(match ssl_mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        if inner.get_hosts().is_empty() {
            inner.host("localhost");
        }
        if inner.get_user().is_none() {
            let user = std::env::var("PGUSER")
                .or_else(|_| std::env::var("USER"))
                .unwrap_or_else(|_| "postgres".to_owned());
            inner.user(&user);
        }
        if inner.get_password().is_none()
            && let Ok(password) = std::env::var("PGPASSWORD")
        {
            inner.password(password);
        }
        if inner.get_application_name().is_none() {
            inner.application_name("pgtide");
        }
        Ok(PgConfig {
            inner,
            ssl_mode,
            root_cert,
        })
    }

    pub fn ssl_mode(&self) -> SslMode {
        self.ssl_mode
    }

    pub fn user(&self) -> &str {
        self.inner.get_user().unwrap_or("postgres")
    }

    pub fn password(&self) -> Option<&[u8]> {
        self.inner.get_password()
    }

    pub fn dbname(&self) -> &str {
        self.inner.get_dbname().unwrap_or_else(|| self.user())
    }

    pub fn hosts(&self) -> &[tokio_postgres::config::Host] {
        self.inner.get_hosts()
    }

    pub fn port(&self) -> u16 {
        self.inner.get_ports().first().copied().unwrap_or(5432)
    }

    /// The same settings pointed at another database of the same server.
    pub fn with_dbname(&self, dbname: &str) -> PgConfig {
        let mut copy = self.clone();
        copy.inner.dbname(dbname);
        copy
    }

    /// `user@host:port/db`, never the password: safe for logs and errors.
    pub fn display_target(&self) -> String {
        let host = match self.hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".to_owned(),
        };
        format!("{}@{}:{}/{}", self.user(), host, self.port(), self.dbname())
    }

    /// The driver's view of these settings (TLS negotiated by [`Self::make_tls`]).
    pub fn tokio_config(&self) -> &tokio_postgres::Config {
        &self.inner
    }

    /// The TLS connector for ordinary connections; unused when `sslmode=disable`.
    pub fn make_tls(&self) -> Result<MakeTls, ConnectError> {
        Ok(MakeTls::new(self.rustls_config()?))
    }

    /// Opens an ordinary (non-replication) connection and drives it on a task.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, ConnectError> {
        let target = self.display_target();
        let (client, conn) = self
            .inner
            .connect(self.make_tls()?)
            .await
            .map_err(|e| ConnectError::from_postgres(&e, &target))?;
        tokio::spawn(async move {
            let mut conn = conn;
            loop {
                match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                    Some(Ok(tokio_postgres::AsyncMessage::Notice(notice))) => log_notice(&notice),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "postgres connection ended");
                        return;
                    }
                    None => return,
                }
            }
        });
        Ok(client)
    }

    /// The rustls configuration `sslmode` asks for.
    pub fn rustls_config(&self) -> Result<ClientConfig, ConnectError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ConnectError::Tls(e.to_string()))?;
        let config = match self.ssl_mode {
            SslMode::Disable | SslMode::Prefer | SslMode::Require => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate { provider }))
                .with_no_client_auth(),
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let roots = Arc::new(self.root_store()?);
                let webpki =
                    rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
                        .build()
                        .map_err(|e| ConnectError::Tls(e.to_string()))?;
                let verifier: Arc<dyn ServerCertVerifier> = if self.ssl_mode == SslMode::VerifyCa {
                    Arc::new(ChainOnly(webpki))
                } else {
                    webpki
                };
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(verifier)
                    .with_no_client_auth()
            }
        };
        Ok(config)
    }

    fn root_store(&self) -> Result<RootCertStore, ConnectError> {
        let mut roots = RootCertStore::empty();
        match &self.root_cert {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    ConnectError::Tls(format!("cannot read sslrootcert {}: {e}", path.display()))
                })?;
                for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                    let cert = cert.map_err(|e| {
                        ConnectError::Tls(format!("bad certificate in {}: {e}", path.display()))
                    })?;
                    roots.add(cert).map_err(|e| {
                        ConnectError::Tls(format!("bad certificate in {}: {e}", path.display()))
                    })?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        Ok(roots)
    }
}

/// Removes `sslmode`/`sslrootcert` from a URL's query or a key=value string,
/// handing each to `take`, and returns what is left for tokio-postgres.
fn strip_tls_params(
    url: &str,
    take: &mut dyn FnMut(&str, &str) -> Result<(), ConnectError>,
) -> Result<String, ConnectError> {
    const OURS: [&str; 2] = ["sslmode", "sslrootcert"];
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return Ok(url.to_owned());
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if OURS.contains(&key) {
                take(key, value)?;
            } else {
                kept.push(pair);
            }
        }
        Ok(if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        })
    } else {
        let mut kept = Vec::new();
        for pair in url.split_whitespace() {
            match pair.split_once('=') {
                Some((key, value)) if OURS.contains(&key.trim()) => take(key.trim(), value.trim())?,
                _ => kept.push(pair),
            }
        }
        Ok(kept.join(" "))
    }
}

/// A server notice on one of our connections. The driver would log every
/// one at `info`, so each idempotent `CREATE … IF NOT EXISTS` of a start on
/// an existing store said "already exists, skipping"; only warnings are
/// worth a reader's attention, the rest is for debugging.
fn log_notice(notice: &tokio_postgres::error::DbError) {
    if notice.severity() == "WARNING" {
        tracing::warn!(
            code = notice.code().code(),
            "postgres: {}",
            notice.message()
        );
    } else {
        tracing::debug!(
            severity = notice.severity(),
            code = notice.code().code(),
            "postgres: {}",
            notice.message()
        );
    }
}

/// What is wrong with a connection string, said for the person who typed
/// it, when we can tell before the driver parses it: an unknown scheme, a
/// URL without a host, a port that is not a number, text that is neither a
/// URL nor `key=value` settings. `None` when nothing is obviously wrong.
fn url_problem(url: &str) -> Option<String> {
    let url = url.trim();
    if url.is_empty() {
        return Some("the database URL is empty".to_owned());
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        if !url.contains('=') {
            return Some(
                "this is neither a postgres:// URL nor key=value settings (host=... dbname=...)"
                    .to_owned(),
            );
        }
        return None;
    };
    if scheme != "postgres" && scheme != "postgresql" {
        return Some(format!(
            "unknown scheme \"{scheme}://\": a database URL starts with postgres:// or postgresql://"
        ));
    }
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let query = tail.split_once('?').map_or("", |(_, q)| q);
    let host_in_query = query
        .split('&')
        .any(|p| p.starts_with("host=") || p.starts_with("hostaddr="));
    // Several hosts are comma-separated; each may carry a port.
    for host in host_port.split(',') {
        let (name, port) = if let Some(v6) = host.strip_prefix('[') {
            match v6.split_once(']') {
                Some((name, after)) => (name, after.strip_prefix(':')),
                None => return Some(format!("the IPv6 host \"{host}\" lacks its closing ]")),
            }
        } else {
            match host.split_once(':') {
                Some((name, port)) => (name, Some(port)),
                None => (host, None),
            }
        };
        if name.is_empty() && !host_in_query {
            return Some(
                "the URL names no host: write postgres://user:password@HOST:5432/database"
                    .to_owned(),
            );
        }
        if let Some(port) = port
            && (port.is_empty() || port.parse::<u16>().is_err())
        {
            return Some(format!("port \"{port}\" is not a port number (1 to 65535)"));
        }
    }
    None
}

/// The URL with any password replaced by `***`.
pub fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((userinfo, host)) = rest.split_once('@')
        && let Some((user, _)) = userinfo.split_once(':')
    {
        return format!("{scheme}://{user}:***@{host}");
    }
    url.to_owned()
}

/// libpq's `require`: encrypt, but trust whatever certificate is presented.
/// Signatures are still checked so the handshake itself is sound.
#[derive(Debug)]
struct AcceptAnyCertificate {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// libpq's `verify-ca`: the chain must lead to a trusted root; the name may differ.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_sslmode_out_of_urls() {
        let cfg = PgConfig::parse(
            "postgres://u:p@db.example:6543/app?sslmode=verify-full&connect_timeout=5",
        )
        .unwrap();
        assert_eq!(cfg.ssl_mode(), SslMode::VerifyFull);
        assert_eq!(cfg.user(), "u");
        assert_eq!(cfg.port(), 6543);
        assert_eq!(cfg.dbname(), "app");
        assert_eq!(cfg.display_target(), "u@db.example:6543/app");
    }

    #[test]
    fn takes_sslmode_out_of_key_value_strings() {
        let cfg = PgConfig::parse("host=localhost user=me dbname=x sslmode=disable").unwrap();
        assert_eq!(cfg.ssl_mode(), SslMode::Disable);
        assert_eq!(cfg.dbname(), "x");
    }

    #[test]
    fn rejects_unknown_sslmode() {
        let err = PgConfig::parse("postgres://u@h/db?sslmode=sometimes").unwrap_err();
        assert!(err.to_string().contains("sslmode=sometimes"), "{err}");
    }

    /// Each malformed connection string is refused with what is wrong
    /// with it, not only "invalid connection string".
    #[test]
    fn says_what_is_wrong_with_a_url() {
        let cases = [
            ("postgress://nope", "unknown scheme \"postgress://\""),
            ("mysql://u@h/db", "unknown scheme \"mysql://\""),
            ("postgres://u:p@/db", "names no host"),
            ("postgres://", "names no host"),
            ("postgres://h:abc/db", "port \"abc\" is not a port number"),
            ("postgres://h:99999/db", "port \"99999\""),
            ("postgres://[::1/db", "closing ]"),
            ("nope", "neither a postgres:// URL nor key=value"),
            ("", "empty"),
            (
                "postgres://h/db?bogus=1",
                "invalid connection string: unknown option",
            ),
            ("postgres://u:secret@h:x/db", "postgres://u:***@h:x/db"),
        ];
        for (url, expected) in cases {
            let err = PgConfig::parse(url).err().map(|e| e.to_string());
            assert!(
                err.as_deref().is_some_and(|e| e.contains(expected)),
                "{url:?} -> {err:?}, expected {expected:?}"
            );
        }
        for fine in [
            "postgres://u@h/db",
            "postgresql://u@[::1]:5433/db",
            "postgres:///db?host=/var/run/postgresql",
            "postgres://h1:5432,h2:5433/db",
            "host=localhost dbname=x",
        ] {
            assert!(PgConfig::parse(fine).is_ok(), "{fine}");
        }
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
