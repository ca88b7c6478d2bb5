//! Our client for PostgreSQL's streaming replication protocol.
//!
//! `tokio-postgres` does not speak it, and the stream is the heart of pgtide, so
//! this module owns it on top of `postgres-protocol`: a `replication=database`
//! connection (plain, TLS, or Unix socket; cleartext, MD5 or SCRAM-SHA-256 auth),
//! simple queries (`IDENTIFY_SYSTEM`, `CREATE_REPLICATION_SLOT`, …) and, after
//! `START_REPLICATION`, the CopyBoth stream of `XLogData` and keepalives, to
//! which we answer with standby status updates.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::backend::{ErrorFields, Message};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::config::Host;
use tokio_rustls::client::TlsStream;

use crate::config::{PgConfig, SslMode, explain_sqlstate};
use crate::lsn::Lsn;

/// Microseconds between the Unix epoch and Postgres's epoch (2000-01-01).
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// What can go wrong on the replication connection, split by whether trying
/// again later can help.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("replication connection I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("{message}")]
    Server { code: String, message: String },
    #[error("replication protocol error: {0}")]
    Protocol(String),
    /// The stream stopped in a way a shutting-down or cut-off server ends it
    /// (CopyDone, CommandComplete, a truncated or garbled frame): reconnect.
    #[error("the replication stream ended: {0}")]
    Ended(String),
    #[error("{0}")]
    Setup(String),
}

impl ReplicationError {
    /// Connection-level failures (a restart, a cut network) are worth retrying;
    /// a wrong password or a missing slot is not.
    pub fn is_retryable(&self) -> bool {
        match self {
            ReplicationError::Io(_) | ReplicationError::Ended(_) => true,
            ReplicationError::Server { code, .. } => {
                // admin shutdown, crash shutdown, cannot connect now, too many connections,
                // slot in use by another walsender (a previous pgtide still shutting down).
                matches!(
                    code.as_str(),
                    "57P01" | "57P02" | "57P03" | "53300" | "55006"
                ) || code.starts_with("08")
            }
            ReplicationError::Protocol(_) | ReplicationError::Setup(_) => false,
        }
    }
}

pub type Result<T, E = ReplicationError> = std::result::Result<T, E>;

enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One backend message as our framing sees it: the two kinds `postgres-protocol`
/// does not parse (CopyBothResponse, and CopyData which we keep zero-copy), or
/// anything else it does.
enum Frame {
    CopyBoth,
    CopyData(Bytes),
    Other(Message),
}

/// A `replication=database` connection before streaming starts.
pub struct ReplicationConnection {
    socket: Socket,
    read: BytesMut,
    write: BytesMut,
    target: String,
}

/// The answer to `IDENTIFY_SYSTEM`.
#[derive(Debug, Clone)]
pub struct SystemIdentity {
    pub system_id: String,
    pub timeline: u32,
    pub xlog_pos: Lsn,
    pub dbname: Option<String>,
}

impl ReplicationConnection {
    /// Connects, negotiates TLS as `sslmode` says, and authenticates.
    pub async fn connect(config: &PgConfig) -> Result<ReplicationConnection> {
        let target = config.display_target();
        let mut last_err = None;
        for host in config.hosts() {
            match Self::connect_host(config, host, &target).await {
                Ok(conn) => return Ok(conn),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err
            .unwrap_or_else(|| ReplicationError::Setup("no host in the database URL".into())))
    }

    async fn connect_host(
        config: &PgConfig,
        host: &Host,
        target: &str,
    ) -> Result<ReplicationConnection> {
        let port = config.port();
        let socket = match host {
            Host::Tcp(name) => {
                let tcp = TcpStream::connect((name.as_str(), port)).await.map_err(|e| {
                    if e.kind() == io::ErrorKind::ConnectionRefused {
                        ReplicationError::Setup(format!(
                            "cannot reach PostgreSQL at {target}: connection refused (is the server running, and are host and port right?)"
                        ))
                    } else {
                        ReplicationError::Io(e)
                    }
                })?;
                tcp.set_nodelay(true)?;
                match config.ssl_mode() {
                    SslMode::Disable => Socket::Tcp(tcp),
                    mode => Self::start_tls(config, tcp, name, mode == SslMode::Prefer).await?,
                }
            }
            Host::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                Socket::Unix(UnixStream::connect(path).await?)
            }
        };
        let mut conn = ReplicationConnection {
            socket,
            read: BytesMut::with_capacity(64 * 1024),
            write: BytesMut::with_capacity(1024),
            target: target.to_owned(),
        };
        conn.startup(config).await?;
        Ok(conn)
    }

    async fn start_tls(
        config: &PgConfig,
        mut tcp: TcpStream,
        host: &str,
        optional: bool,
    ) -> Result<Socket> {
        let mut buf = BytesMut::new();
        frontend::ssl_request(&mut buf);
        tcp.write_all(&buf).await?;
        let answer = tcp.read_u8().await?;
        if answer != b'S' {
            if optional {
                return Ok(Socket::Tcp(tcp));
            }
            return Err(ReplicationError::Setup(format!(
                "the server at {host} does not accept TLS but sslmode requires it (enable ssl on the server or use sslmode=prefer)"
            )));
        }
        let tls = config
            .rustls_config()
            .map_err(|e| ReplicationError::Setup(e.to_string()))?;
        let name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|e| ReplicationError::Setup(format!("invalid TLS server name {host}: {e}")))?;
        let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
            .connect(name, tcp)
            .await
            .map_err(|e| {
                ReplicationError::Setup(format!("TLS handshake with {host} failed: {e}"))
            })?;
        Ok(Socket::Tls(Box::new(stream)))
    }

    async fn startup(&mut self, config: &PgConfig) -> Result<()> {
        let params = [
            ("user", config.user()),
            ("database", config.dbname()),
            ("replication", "database"),
            ("application_name", "pgtide"),
            // Output functions run in the walsender, so these make every value's
            // text form the one the event contract specifies.
            ("DateStyle", "ISO"),
            ("TimeZone", "UTC"),
            ("IntervalStyle", "postgres"),
            ("bytea_output", "hex"),
            ("extra_float_digits", "3"),
            ("client_encoding", "UTF8"),
        ];
        frontend::startup_message(params.iter().copied(), &mut self.write)?;
        self.flush().await?;
        let mut scram: Option<ScramSha256> = None;
        loop {
            match self.next_frame().await? {
                Frame::Other(Message::AuthenticationOk) => {}
                Frame::Other(Message::AuthenticationCleartextPassword) => {
                    let password = self.password(config)?;
                    frontend::password_message(&password, &mut self.write)?;
                    self.flush().await?;
                }
                Frame::Other(Message::AuthenticationMd5Password(body)) => {
                    let password = self.password(config)?;
                    let hash = postgres_protocol::authentication::md5_hash(
                        config.user().as_bytes(),
                        &password,
                        body.salt(),
                    );
                    frontend::password_message(hash.as_bytes(), &mut self.write)?;
                    self.flush().await?;
                }
                Frame::Other(Message::AuthenticationSasl(body)) => {
                    let mut mechanisms = body.mechanisms();
                    let mut has_scram = false;
                    while let Some(m) = mechanisms.next()? {
                        has_scram |= m == "SCRAM-SHA-256";
                    }
                    if !has_scram {
                        return Err(ReplicationError::Setup(
                            "the server offers no SASL mechanism pgtide supports (SCRAM-SHA-256)"
                                .into(),
                        ));
                    }
                    let password = self.password(config)?;
                    let s = ScramSha256::new(&password, ChannelBinding::unsupported());
                    frontend::sasl_initial_response("SCRAM-SHA-256", s.message(), &mut self.write)?;
                    self.flush().await?;
                    scram = Some(s);
                }
                Frame::Other(Message::AuthenticationSaslContinue(body)) => {
                    let s = scram.as_mut().ok_or_else(|| {
                        ReplicationError::Protocol("SASL continue before start".into())
                    })?;
                    s.update(body.data())?;
                    frontend::sasl_response(s.message(), &mut self.write)?;
                    self.flush().await?;
                }
                Frame::Other(Message::AuthenticationSaslFinal(body)) => {
                    let s = scram.as_mut().ok_or_else(|| {
                        ReplicationError::Protocol("SASL final before start".into())
                    })?;
                    s.finish(body.data())?;
                }
                Frame::Other(Message::ParameterStatus(_))
                | Frame::Other(Message::BackendKeyData(_))
                | Frame::Other(Message::NoticeResponse(_)) => {}
                Frame::Other(Message::ReadyForQuery(_)) => return Ok(()),
                Frame::Other(Message::ErrorResponse(body)) => {
                    return Err(self.server_error(body.fields()));
                }
                _ => {
                    return Err(ReplicationError::Protocol(
                        "unexpected message during startup".into(),
                    ));
                }
            }
        }
    }

    fn password(&self, config: &PgConfig) -> Result<Vec<u8>> {
        config.password().map(<[u8]>::to_vec).ok_or_else(|| {
            ReplicationError::Setup(format!(
                "PostgreSQL at {} asks for a password but none was given (add it to --database-url)",
                self.target
            ))
        })
    }

    fn server_error(&self, mut fields: ErrorFields<'_>) -> ReplicationError {
        let mut code = String::new();
        let mut message = String::new();
        let mut detail = String::new();
        let mut hint = String::new();
        while let Ok(Some(field)) = fields.next() {
            let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
            match field.type_() {
                b'C' => code = value,
                b'M' => message = value,
                b'D' => detail = value,
                b'H' => hint = value,
                _ => {}
            }
        }
        let mut text = explain_sqlstate(&code, &message, &self.target);
        if !detail.is_empty() {
            text.push_str(&format!(" ({detail})"));
        }
        if !hint.is_empty() {
            text.push_str(&format!(" hint: {hint}"));
        }
        ReplicationError::Server {
            code,
            message: text,
        }
    }

    async fn flush(&mut self) -> Result<()> {
        self.socket.write_all(&self.write).await?;
        self.socket.flush().await?;
        self.write.clear();
        Ok(())
    }

    /// Reads one backend message. Cancel-safe: partial input stays in the buffer.
    async fn next_frame(&mut self) -> Result<Frame> {
        loop {
            if let Some(frame) = self.parse_frame()? {
                return Ok(frame);
            }
            if self.socket.read_buf(&mut self.read).await? == 0 {
                return Err(ReplicationError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the replication connection",
                )));
            }
        }
    }

    fn frame_buffered(&self) -> bool {
        if self.read.len() < 5 {
            return false;
        }
        let len =
            u32::from_be_bytes([self.read[1], self.read[2], self.read[3], self.read[4]]) as usize;
        self.read.len() > len
    }

    fn parse_frame(&mut self) -> Result<Option<Frame>> {
        if self.read.len() < 5 {
            return Ok(None);
        }
        let tag = self.read[0];
        let len =
            u32::from_be_bytes([self.read[1], self.read[2], self.read[3], self.read[4]]) as usize;
        if len < 4 {
            return Err(ReplicationError::Ended(format!(
                "invalid message length {len}"
            )));
        }
        if self.read.len() < len + 1 {
            self.read.reserve(len + 1 - self.read.len());
            return Ok(None);
        }
        match tag {
            b'd' => {
                let mut frame = self.read.split_to(len + 1);
                frame.advance(5);
                Ok(Some(Frame::CopyData(frame.freeze())))
            }
            b'W' => {
                self.read.advance(len + 1);
                Ok(Some(Frame::CopyBoth))
            }
            _ => match Message::parse(&mut self.read)? {
                Some(message) => Ok(Some(Frame::Other(message))),
                None => Ok(None),
            },
        }
    }

    /// Runs one simple-protocol command and returns its rows as text.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        frontend::query(sql, &mut self.write)?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.next_frame().await? {
                Frame::Other(Message::DataRow(row)) => {
                    let buf = row.buffer();
                    let mut values = Vec::new();
                    let mut ranges = row.ranges();
                    while let Some(range) = ranges.next()? {
                        values.push(range.map(|r| String::from_utf8_lossy(&buf[r]).into_owned()));
                    }
                    rows.push(values);
                }
                Frame::Other(Message::ErrorResponse(body)) => {
                    error = Some(self.server_error(body.fields()))
                }
                Frame::Other(Message::ReadyForQuery(_)) => break,
                Frame::CopyBoth => {
                    return Err(ReplicationError::Protocol(
                        "unexpected CopyBoth in a simple query".into(),
                    ));
                }
                _ => {}
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    pub async fn identify_system(&mut self) -> Result<SystemIdentity> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = rows
            .first()
            .ok_or_else(|| ReplicationError::Protocol("IDENTIFY_SYSTEM returned no row".into()))?;
        let field = |i: usize| row.get(i).cloned().flatten();
        let xlog_pos = field(2).and_then(|s| s.parse().ok()).ok_or_else(|| {
            ReplicationError::Protocol("IDENTIFY_SYSTEM returned no xlogpos".into())
        })?;
        Ok(SystemIdentity {
            system_id: field(0).unwrap_or_default(),
            timeline: field(1).and_then(|s| s.parse().ok()).unwrap_or(0),
            xlog_pos,
            dbname: field(3),
        })
    }

    /// Starts logical decoding with pgoutput from `start` (0/0: the slot's
    /// confirmed position).
    pub async fn start_logical(
        mut self,
        slot: &str,
        start: Lsn,
        publication: &str,
    ) -> Result<ReplicationStream> {
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {start} (proto_version '1', publication_names {}, messages 'true')",
            quote_ident(slot),
            quote_literal(&quote_ident(publication)),
        );
        frontend::query(&sql, &mut self.write)?;
        self.flush().await?;
        loop {
            match self.next_frame().await? {
                Frame::CopyBoth => break,
                Frame::Other(Message::ErrorResponse(body)) => {
                    let err = self.server_error(body.fields());
                    return Err(err);
                }
                Frame::Other(Message::NoticeResponse(_))
                | Frame::Other(Message::ParameterStatus(_)) => {}
                _ => {
                    return Err(ReplicationError::Protocol(
                        "unexpected reply to START_REPLICATION".into(),
                    ));
                }
            }
        }
        Ok(ReplicationStream { conn: self })
    }
}

/// One message of the CopyBoth stream.
#[derive(Debug, Clone)]
pub enum ReplicationMessage {
    /// A chunk of decoded WAL: one pgoutput message in `data`.
    XLogData {
        wal_start: Lsn,
        wal_end: Lsn,
        data: Bytes,
    },
    /// The server's heartbeat; `reply_requested` means answer now or be dropped.
    Keepalive { wal_end: Lsn, reply_requested: bool },
}

/// A running `START_REPLICATION … LOGICAL` stream.
pub struct ReplicationStream {
    conn: ReplicationConnection,
}

impl ReplicationStream {
    /// The next message from the server. Cancel-safe, so it can sit in a
    /// `select!` beside timers.
    pub async fn next(&mut self) -> Result<ReplicationMessage> {
        loop {
            match self.conn.next_frame().await? {
                Frame::CopyData(mut data) => {
                    if data.is_empty() {
                        continue;
                    }
                    let kind = data.get_u8();
                    match kind {
                        b'w' => {
                            if data.len() < 24 {
                                return Err(ReplicationError::Ended(
                                    "short XLogData header".into(),
                                ));
                            }
                            let wal_start = Lsn(data.get_u64());
                            let wal_end = Lsn(data.get_u64());
                            let _server_time = data.get_i64();
                            return Ok(ReplicationMessage::XLogData {
                                wal_start,
                                wal_end,
                                data,
                            });
                        }
                        b'k' => {
                            if data.len() < 17 {
                                return Err(ReplicationError::Ended("short keepalive".into()));
                            }
                            let wal_end = Lsn(data.get_u64());
                            let _server_time = data.get_i64();
                            let reply_requested = data.get_u8() == 1;
                            return Ok(ReplicationMessage::Keepalive {
                                wal_end,
                                reply_requested,
                            });
                        }
                        other => {
                            return Err(ReplicationError::Ended(format!(
                                "unknown CopyData message kind {other:#x}"
                            )));
                        }
                    }
                }
                Frame::Other(Message::ErrorResponse(body)) => {
                    return Err(self.conn.server_error(body.fields()));
                }
                Frame::Other(Message::CopyDone) => {
                    return Err(ReplicationError::Ended("the server sent CopyDone".into()));
                }
                Frame::Other(Message::NoticeResponse(_))
                | Frame::Other(Message::ParameterStatus(_)) => {}
                // A server shutting down may end the COPY with CommandComplete
                // and ReadyForQuery: whatever it is, the stream is over.
                Frame::Other(_) | Frame::CopyBoth => {
                    return Err(ReplicationError::Ended(
                        "the server sent a message that ends streaming".into(),
                    ));
                }
            }
        }
    }

    /// Whether another message can be read without waiting: a complete frame is
    /// buffered, or the socket has bytes ready right now. The pipeline flushes
    /// its batch when this turns false, so batches grow with the load.
    pub fn has_ready_message(&mut self) -> bool {
        loop {
            if self.conn.frame_buffered() {
                return true;
            }
            if self.conn.read.len() > 8 * 1024 * 1024 {
                return false;
            }
            let conn = &mut self.conn;
            match futures_util::FutureExt::now_or_never(conn.socket.read_buf(&mut conn.read)) {
                Some(Ok(n)) if n > 0 => continue,
                _ => return false,
            }
        }
    }

    /// Tells the server how far we have durably processed. Postgres may recycle
    /// WAL before `flushed`, so only pass positions whose events are committed.
    pub async fn send_status(&mut self, flushed: Lsn, reply_requested: bool) -> Result<()> {
        let mut body = BytesMut::with_capacity(34);
        body.put_u8(b'r');
        body.put_u64(flushed.0); // written
        body.put_u64(flushed.0); // flushed
        body.put_u64(flushed.0); // applied
        body.put_i64(pg_now_micros());
        body.put_u8(u8::from(reply_requested));
        frontend::CopyData::new(body.freeze())?.write(&mut self.conn.write);
        self.conn.flush().await
    }

    /// Ends the stream politely so the slot is released at once.
    pub async fn close(mut self) {
        frontend::copy_done(&mut self.conn.write);
        frontend::terminate(&mut self.conn.write);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.conn.flush()).await;
    }
}

/// Now, in microseconds since the Postgres epoch.
pub fn pg_now_micros() -> i64 {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    unix - PG_EPOCH_OFFSET_MICROS
}

/// Quotes an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(&quote_ident("pgtide")), "'\"pgtide\"'");
    }

    /// A stream over a loopback socket whose server side writes `bytes`,
    /// then closes.
    async fn stream_receiving(bytes: Vec<u8>) -> ReplicationStream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut server, _) = listener.accept().await.unwrap();
            server.write_all(&bytes).await.unwrap();
        });
        let socket = TcpStream::connect(addr).await.unwrap();
        ReplicationStream {
            conn: ReplicationConnection {
                socket: Socket::Tcp(socket),
                read: BytesMut::new(),
                write: BytesMut::new(),
                target: "test".into(),
            },
        }
    }

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    /// Whatever a stopping server sends instead of data ends the stream as
    /// something to reconnect after, never as a fatal protocol error: the
    /// issue's "unexpected message in the replication stream" exit.
    #[tokio::test]
    async fn a_stopping_server_is_a_reconnect_whatever_it_sends() {
        let keepalive = {
            let mut body = vec![b'k'];
            body.extend_from_slice(&[0; 17]);
            message(b'd', &body)
        };
        let ends: Vec<(&str, Vec<u8>)> = vec![
            ("CopyDone", message(b'c', &[])),
            ("CommandComplete", message(b'C', b"COPY 0\0")),
            ("ReadyForQuery", message(b'Z', b"I")),
            (
                "a truncated frame then EOF",
                message(b'd', b"w12")[..7].to_vec(),
            ),
            ("a short XLogData", message(b'd', b"w12")),
            ("an unknown CopyData kind", message(b'd', b"x")),
            ("a bad length", vec![b'd', 0, 0, 0, 1]),
            ("EOF", Vec::new()),
            (
                "an admin shutdown",
                message(
                    b'E',
                    b"SFATAL\0C57P01\0Mterminating connection due to administrator command\0\0",
                ),
            ),
        ];
        for (what, tail) in ends {
            let mut bytes = keepalive.clone();
            bytes.extend_from_slice(&tail);
            let mut stream = stream_receiving(bytes).await;
            assert!(matches!(
                stream.next().await,
                Ok(ReplicationMessage::Keepalive { .. })
            ));
            let Err(err) = stream.next().await else {
                panic!("{what}: the stream went on");
            };
            assert!(err.is_retryable(), "{what}: {err}");
        }
    }

    #[test]
    fn only_connection_failures_are_retryable() {
        let io = ReplicationError::Io(io::Error::new(io::ErrorKind::ConnectionReset, "x"));
        assert!(io.is_retryable());
        let shutdown = ReplicationError::Server {
            code: "57P01".into(),
            message: String::new(),
        };
        assert!(shutdown.is_retryable());
        let auth = ReplicationError::Server {
            code: "28P01".into(),
            message: String::new(),
        };
        assert!(!auth.is_retryable());
    }
}
