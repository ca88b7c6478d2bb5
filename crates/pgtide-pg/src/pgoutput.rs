//! Decoder for the pgoutput logical replication protocol.
//!
//! Each `XLogData` message of a `START_REPLICATION ... (proto_version ...)`
//! stream carries one pgoutput message; [`decode`] turns its bytes into a
//! [`PgOutput`]. The layouts follow PostgreSQL's "Logical Replication Message
//! Formats" for protocol versions 1 and 2 (version 2 adds streaming of large
//! in-progress transactions). All integers are big-endian, strings are
//! NUL-terminated, and column values stay as `Bytes` slices of the input
//! rather than copies.
//!
//! Decoding is pure: it never panics on malformed or truncated input, it
//! returns a [`DecodeError`] saying what it was reading.

use bytes::Bytes;

use crate::lsn::Lsn;

/// A Postgres object identifier (relation, type).
pub type Oid = u32;

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgOutput {
    Begin(Begin),
    Commit(Commit),
    Origin(Origin),
    Relation(Relation),
    Type(TypeInfo),
    Insert(Insert),
    Update(Update),
    Delete(Delete),
    Truncate(Truncate),
    Message(LogicalMessage),
    StreamStart(StreamStart),
    StreamStop,
    StreamCommit(StreamCommit),
    StreamAbort(StreamAbort),
}

/// Start of a transaction; its changes follow until the matching [`Commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// The LSN of the transaction's commit record.
    pub final_lsn: Lsn,
    /// Commit time in microseconds since 2000-01-01 00:00 UTC, as sent.
    pub commit_ts: i64,
    pub xid: u32,
}

/// End of a transaction; `end_lsn` is what to confirm once it is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Currently unused by Postgres (always 0).
    pub flags: u8,
    pub commit_lsn: Lsn,
    /// The LSN just past the commit record.
    pub end_lsn: Lsn,
    /// Microseconds since 2000-01-01 00:00 UTC.
    pub commit_ts: i64,
}

/// The replication origin a transaction came from (for loop avoidance).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub commit_lsn: Lsn,
    pub name: String,
}

/// A table's shape. Sent before the first change to the relation in a
/// session, and again whenever it changed; changes only carry its `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Present inside a streamed transaction (protocol 2).
    pub xid: Option<u32>,
    pub id: Oid,
    /// The schema; empty for `pg_catalog`.
    pub namespace: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<RelationColumn>,
}

/// What the old tuple of updates and deletes holds (`REPLICA IDENTITY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// The primary key columns (`'d'`).
    Default,
    /// Nothing (`'n'`).
    Nothing,
    /// All columns (`'f'`).
    Full,
    /// The columns of a chosen unique index (`'i'`).
    Index,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Part of the replica identity key.
    pub is_key: bool,
    pub name: String,
    pub type_oid: Oid,
    /// `atttypmod`: e.g. the length of a `varchar(n)`; -1 when none.
    pub type_modifier: i32,
}

/// A non-built-in type's name, sent before a relation using it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeInfo {
    /// Present inside a streamed transaction (protocol 2).
    pub xid: Option<u32>,
    pub id: Oid,
    /// The schema; empty for `pg_catalog`.
    pub namespace: String,
    pub name: String,
}

/// A new row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    /// Present inside a streamed transaction (protocol 2).
    pub xid: Option<u32>,
    pub relation_id: Oid,
    pub new: Tuple,
}

/// A changed row. `old` is present only when the replica identity is FULL
/// or the update changed key columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// Present inside a streamed transaction (protocol 2).
    pub xid: Option<u32>,
    pub relation_id: Oid,
    pub old: Option<OldTuple>,
    pub new: Tuple,
}

/// A removed row, identified by its replica identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// Present inside a streamed transaction (protocol 2).
    pub xid: Option<u32>,
    pub relation_id: Oid,
    pub old: OldTuple,
}

/// The before-image of an updated or deleted row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// Only the key columns have values; the others are null (`'K'`).
    Key(Tuple),
    /// The whole old row, under `REPLICA IDENTITY FULL` (`'O'`).
    Full(Tuple),
}

/// `TRUNCATE` of one or more tables at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// Present inside a streamed transaction (protocol 2).
    pub xid: Option<u32>,
    pub cascade: bool,
    pub restart_identity: bool,
    pub relation_ids: Vec<Oid>,
}

/// A `pg_logical_emit_message` payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    /// Present inside a streamed transaction (protocol 2).
    pub xid: Option<u32>,
    /// Part of a transaction, rather than emitted immediately.
    pub transactional: bool,
    pub lsn: Lsn,
    pub prefix: String,
    pub content: Bytes,
}

/// Start of a block of changes of an in-progress transaction (protocol 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStart {
    pub xid: u32,
    /// The first block streamed for this transaction.
    pub first_segment: bool,
}

/// A streamed transaction committed; its blocks can be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamCommit {
    pub xid: u32,
    /// Currently unused by Postgres (always 0).
    pub flags: u8,
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    /// Microseconds since 2000-01-01 00:00 UTC.
    pub commit_ts: i64,
}

/// A streamed (sub)transaction aborted; its blocks must be discarded.
/// `subxid == xid` when the whole transaction aborted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAbort {
    pub xid: u32,
    pub subxid: u32,
}

/// A row's column values, in the relation's column order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuple(pub Vec<TupleValue>);

/// One column value of a [`Tuple`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TupleValue {
    /// SQL NULL (`'n'`).
    Null,
    /// A TOASTed value the change did not touch, so Postgres did not send it (`'u'`).
    UnchangedToast,
    /// The type's text output (`'t'`).
    Text(Bytes),
    /// The type's binary send format (`'b'`), only with `binary 'true'`.
    Binary(Bytes),
}

/// The bytes were not a well-formed pgoutput message.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("pgoutput message truncated while reading {what}")]
    Truncated { what: &'static str },
    #[error("unknown pgoutput message type {:?}", char::from(*.0))]
    UnknownMessage(u8),
    #[error("unknown tuple column kind {:?}", char::from(*.0))]
    UnknownTupleKind(u8),
    #[error("unknown replica identity {:?}", char::from(*.0))]
    UnknownReplicaIdentity(u8),
    #[error("unexpected tuple marker {:?} in {message} message", char::from(*found))]
    UnexpectedTupleMarker { message: &'static str, found: u8 },
    #[error("{what} is not valid UTF-8")]
    InvalidUtf8 { what: &'static str },
    #[error("negative {what}: {value}")]
    NegativeCount { what: &'static str, value: i32 },
    #[error("{count} unexpected trailing bytes after {message} message")]
    TrailingBytes { message: &'static str, count: usize },
}

/// Decodes one pgoutput message.
///
/// `in_stream`: true between StreamStart and StreamStop, where (protocol 2)
/// Relation/Type/Insert/Update/Delete/Truncate/Message carry an xid right
/// after the type byte.
pub fn decode(buf: Bytes, in_stream: bool) -> Result<PgOutput, DecodeError> {
    let mut r = Reader { buf, pos: 0 };
    let tag = r.u8("message type")?;
    let (message, decoded) = match tag {
        b'B' => (
            "Begin",
            PgOutput::Begin(Begin {
                final_lsn: r.lsn("Begin final LSN")?,
                commit_ts: r.i64("Begin timestamp")?,
                xid: r.u32("Begin xid")?,
            }),
        ),
        b'C' => (
            "Commit",
            PgOutput::Commit(Commit {
                flags: r.u8("Commit flags")?,
                commit_lsn: r.lsn("Commit LSN")?,
                end_lsn: r.lsn("Commit end LSN")?,
                commit_ts: r.i64("Commit timestamp")?,
            }),
        ),
        b'O' => (
            "Origin",
            PgOutput::Origin(Origin {
                commit_lsn: r.lsn("Origin commit LSN")?,
                name: r.string("Origin name")?,
            }),
        ),
        b'R' => ("Relation", PgOutput::Relation(relation(&mut r, in_stream)?)),
        b'Y' => (
            "Type",
            PgOutput::Type(TypeInfo {
                xid: r.stream_xid(in_stream, "Type xid")?,
                id: r.u32("Type oid")?,
                namespace: r.string("Type namespace")?,
                name: r.string("Type name")?,
            }),
        ),
        b'I' => {
            let xid = r.stream_xid(in_stream, "Insert xid")?;
            let relation_id = r.u32("Insert relation oid")?;
            match r.u8("Insert tuple marker")? {
                b'N' => {}
                found => {
                    return Err(DecodeError::UnexpectedTupleMarker {
                        message: "Insert",
                        found,
                    });
                }
            }
            let new = r.tuple()?;
            (
                "Insert",
                PgOutput::Insert(Insert {
                    xid,
                    relation_id,
                    new,
                }),
            )
        }
        b'U' => ("Update", PgOutput::Update(update(&mut r, in_stream)?)),
        b'D' => {
            let xid = r.stream_xid(in_stream, "Delete xid")?;
            let relation_id = r.u32("Delete relation oid")?;
            let old = match r.u8("Delete tuple marker")? {
                b'K' => OldTuple::Key(r.tuple()?),
                b'O' => OldTuple::Full(r.tuple()?),
                found => {
                    return Err(DecodeError::UnexpectedTupleMarker {
                        message: "Delete",
                        found,
                    });
                }
            };
            (
                "Delete",
                PgOutput::Delete(Delete {
                    xid,
                    relation_id,
                    old,
                }),
            )
        }
        b'T' => ("Truncate", PgOutput::Truncate(truncate(&mut r, in_stream)?)),
        b'M' => {
            let xid = r.stream_xid(in_stream, "Message xid")?;
            let transactional = r.u8("Message flags")? & 1 != 0;
            let lsn = r.lsn("Message LSN")?;
            let prefix = r.string("Message prefix")?;
            let len = r.count("Message content length")?;
            let content = r.bytes(len, "Message content")?;
            (
                "Message",
                PgOutput::Message(LogicalMessage {
                    xid,
                    transactional,
                    lsn,
                    prefix,
                    content,
                }),
            )
        }
        b'S' => (
            "Stream Start",
            PgOutput::StreamStart(StreamStart {
                xid: r.u32("Stream Start xid")?,
                first_segment: r.u8("Stream Start first-segment flag")? == 1,
            }),
        ),
        b'E' => ("Stream Stop", PgOutput::StreamStop),
        b'c' => (
            "Stream Commit",
            PgOutput::StreamCommit(StreamCommit {
                xid: r.u32("Stream Commit xid")?,
                flags: r.u8("Stream Commit flags")?,
                commit_lsn: r.lsn("Stream Commit LSN")?,
                end_lsn: r.lsn("Stream Commit end LSN")?,
                commit_ts: r.i64("Stream Commit timestamp")?,
            }),
        ),
        b'A' => (
            "Stream Abort",
            PgOutput::StreamAbort(StreamAbort {
                xid: r.u32("Stream Abort xid")?,
                subxid: r.u32("Stream Abort subtransaction xid")?,
            }),
        ),
        other => return Err(DecodeError::UnknownMessage(other)),
    };
    // A well-formed message is consumed exactly; leftovers mean we misread it.
    let count = r.buf.len() - r.pos;
    if count != 0 {
        return Err(DecodeError::TrailingBytes { message, count });
    }
    Ok(decoded)
}

fn relation(r: &mut Reader, in_stream: bool) -> Result<Relation, DecodeError> {
    let xid = r.stream_xid(in_stream, "Relation xid")?;
    let id = r.u32("Relation oid")?;
    let namespace = r.string("Relation namespace")?;
    let name = r.string("Relation name")?;
    let replica_identity = match r.u8("Relation replica identity")? {
        b'd' => ReplicaIdentity::Default,
        b'n' => ReplicaIdentity::Nothing,
        b'f' => ReplicaIdentity::Full,
        b'i' => ReplicaIdentity::Index,
        other => return Err(DecodeError::UnknownReplicaIdentity(other)),
    };
    let n = r.count16("Relation column count")?;
    let mut columns = Vec::with_capacity(n);
    for _ in 0..n {
        columns.push(RelationColumn {
            is_key: r.u8("Relation column flags")? & 1 != 0,
            name: r.string("Relation column name")?,
            type_oid: r.u32("Relation column type oid")?,
            type_modifier: r.i32("Relation column type modifier")?,
        });
    }
    Ok(Relation {
        xid,
        id,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn update(r: &mut Reader, in_stream: bool) -> Result<Update, DecodeError> {
    let xid = r.stream_xid(in_stream, "Update xid")?;
    let relation_id = r.u32("Update relation oid")?;
    let mut marker = r.u8("Update tuple marker")?;
    let old = match marker {
        b'K' => Some(OldTuple::Key(r.tuple()?)),
        b'O' => Some(OldTuple::Full(r.tuple()?)),
        _ => None,
    };
    if old.is_some() {
        marker = r.u8("Update new tuple marker")?;
    }
    if marker != b'N' {
        return Err(DecodeError::UnexpectedTupleMarker {
            message: "Update",
            found: marker,
        });
    }
    let new = r.tuple()?;
    Ok(Update {
        xid,
        relation_id,
        old,
        new,
    })
}

fn truncate(r: &mut Reader, in_stream: bool) -> Result<Truncate, DecodeError> {
    let xid = r.stream_xid(in_stream, "Truncate xid")?;
    let n = r.count("Truncate relation count")?;
    let options = r.u8("Truncate options")?;
    // Cap the reservation by what the input can hold, whatever `n` claims.
    let mut relation_ids = Vec::with_capacity(n.min(r.remaining() / 4));
    for _ in 0..n {
        relation_ids.push(r.u32("Truncate relation oid")?);
    }
    Ok(Truncate {
        xid,
        cascade: options & 1 != 0,
        restart_identity: options & 2 != 0,
        relation_ids,
    })
}

/// A bounds-checked big-endian cursor over the message.
struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let bytes = self
            .buf
            .get(self.pos..self.pos + N)
            .and_then(|b| <[u8; N]>::try_from(b).ok())
            .ok_or(DecodeError::Truncated { what })?;
        self.pos += N;
        Ok(bytes)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn i16(&mut self, what: &'static str) -> Result<i16, DecodeError> {
        self.array(what).map(i16::from_be_bytes)
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        self.array(what).map(i32::from_be_bytes)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        self.array(what).map(u32::from_be_bytes)
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        self.array(what).map(i64::from_be_bytes)
    }

    fn lsn(&mut self, what: &'static str) -> Result<Lsn, DecodeError> {
        self.array(what).map(|b| Lsn(u64::from_be_bytes(b)))
    }

    /// The xid protocol 2 puts first in changes inside a streamed block.
    fn stream_xid(
        &mut self,
        in_stream: bool,
        what: &'static str,
    ) -> Result<Option<u32>, DecodeError> {
        if in_stream {
            self.u32(what).map(Some)
        } else {
            Ok(None)
        }
    }

    /// An Int32 count or length, which must not be negative.
    fn count(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let value = self.i32(what)?;
        usize::try_from(value).map_err(|_| DecodeError::NegativeCount { what, value })
    }

    /// An Int16 count, which must not be negative.
    fn count16(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let value = self.i16(what)?;
        usize::try_from(value).map_err(|_| DecodeError::NegativeCount {
            what,
            value: value.into(),
        })
    }

    /// `len` bytes as a slice sharing the input's buffer.
    fn bytes(&mut self, len: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        if len > self.remaining() {
            return Err(DecodeError::Truncated { what });
        }
        let bytes = self.buf.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(bytes)
    }

    /// A NUL-terminated UTF-8 string.
    fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::Truncated { what })?;
        let s = std::str::from_utf8(&rest[..len])
            .map_err(|_| DecodeError::InvalidUtf8 { what })?
            .to_owned();
        self.pos += len + 1;
        Ok(s)
    }

    /// TupleData: an Int16 column count, then each column's kind and value.
    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let n = self.count16("tuple column count")?;
        let mut values = Vec::with_capacity(n);
        for _ in 0..n {
            values.push(match self.u8("tuple column kind")? {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::UnchangedToast,
                b't' => {
                    let len = self.count("tuple text value length")?;
                    TupleValue::Text(self.bytes(len, "tuple text value")?)
                }
                b'b' => {
                    let len = self.count("tuple binary value length")?;
                    TupleValue::Binary(self.bytes(len, "tuple binary value")?)
                }
                other => return Err(DecodeError::UnknownTupleKind(other)),
            });
        }
        Ok(Tuple(values))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    /// Builds a message the way Postgres writes it: big-endian integers,
    /// NUL-terminated strings.
    struct Msg(Vec<u8>);

    impl Msg {
        fn new(tag: u8) -> Self {
            Msg(vec![tag])
        }
        fn u8(mut self, v: u8) -> Self {
            self.0.push(v);
            self
        }
        fn i16(mut self, v: i16) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i32(mut self, v: i32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u32(mut self, v: u32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u64(mut self, v: u64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i64(mut self, v: i64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn str(mut self, s: &str) -> Self {
            self.0.extend_from_slice(s.as_bytes());
            self.0.push(0);
            self
        }
        fn raw(mut self, b: &[u8]) -> Self {
            self.0.extend_from_slice(b);
            self
        }
        fn text(self, s: &str) -> Self {
            self.u8(b't').i32(s.len() as i32).raw(s.as_bytes())
        }
        fn bytes(self) -> Bytes {
            Bytes::from(self.0)
        }
    }

    fn text(s: &str) -> TupleValue {
        TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    const TS: i64 = 767_000_000_000_000;

    fn begin() -> Msg {
        Msg::new(b'B').u64(0x16_B374_D848).i64(TS).u32(742)
    }

    fn commit() -> Msg {
        Msg::new(b'C')
            .u8(0)
            .u64(0x16_B374_D848)
            .u64(0x16_B374_D880)
            .i64(TS)
    }

    fn origin() -> Msg {
        Msg::new(b'O').u64(0x10).str("upstream")
    }

    fn relation(xid: Option<u32>) -> Msg {
        let mut m = Msg::new(b'R');
        if let Some(x) = xid {
            m = m.u32(x);
        }
        m.u32(16_385)
            .str("public")
            .str("users")
            .u8(b'f')
            .i16(2)
            .u8(1)
            .str("id")
            .u32(23)
            .i32(-1)
            .u8(0)
            .str("name")
            .u32(1043)
            .i32(68)
    }

    fn type_info(xid: Option<u32>) -> Msg {
        let mut m = Msg::new(b'Y');
        if let Some(x) = xid {
            m = m.u32(x);
        }
        m.u32(16_400).str("public").str("mood")
    }

    fn insert(xid: Option<u32>) -> Msg {
        let mut m = Msg::new(b'I');
        if let Some(x) = xid {
            m = m.u32(x);
        }
        m.u32(16_385)
            .u8(b'N')
            .i16(4)
            .text("1")
            .u8(b'n')
            .u8(b'u')
            .u8(b'b')
            .i32(2)
            .raw(&[0xde, 0xad])
    }

    fn update(xid: Option<u32>, old: Option<u8>) -> Msg {
        let mut m = Msg::new(b'U');
        if let Some(x) = xid {
            m = m.u32(x);
        }
        m = m.u32(16_385);
        if let Some(kind) = old {
            m = m.u8(kind).i16(2).text("1").u8(b'n');
        }
        m.u8(b'N').i16(2).text("1").text("bob")
    }

    fn delete(xid: Option<u32>, kind: u8) -> Msg {
        let mut m = Msg::new(b'D');
        if let Some(x) = xid {
            m = m.u32(x);
        }
        m.u32(16_385).u8(kind).i16(2).text("1").u8(b'n')
    }

    fn truncate(xid: Option<u32>) -> Msg {
        let mut m = Msg::new(b'T');
        if let Some(x) = xid {
            m = m.u32(x);
        }
        m.i32(2).u8(3).u32(16_385).u32(16_390)
    }

    fn message(xid: Option<u32>) -> Msg {
        let mut m = Msg::new(b'M');
        if let Some(x) = xid {
            m = m.u32(x);
        }
        m.u8(1).u64(0x20).str("pgtide").i32(5).raw(b"hello")
    }

    fn stream_start() -> Msg {
        Msg::new(b'S').u32(900).u8(1)
    }

    fn stream_commit() -> Msg {
        Msg::new(b'c').u32(900).u8(0).u64(0x30).u64(0x38).i64(TS)
    }

    fn stream_abort() -> Msg {
        Msg::new(b'A').u32(900).u32(901)
    }

    /// Every message kind, with whether it is decoded inside a stream block.
    fn all_messages() -> Vec<(Msg, bool)> {
        let mut all = vec![
            (begin(), false),
            (commit(), false),
            (origin(), false),
            (stream_start(), false),
            (Msg::new(b'E'), true),
            (stream_commit(), false),
            (stream_abort(), false),
        ];
        for (xid, in_stream) in [(None, false), (Some(900), true)] {
            all.push((relation(xid), in_stream));
            all.push((type_info(xid), in_stream));
            all.push((insert(xid), in_stream));
            all.push((update(xid, None), in_stream));
            all.push((update(xid, Some(b'K')), in_stream));
            all.push((update(xid, Some(b'O')), in_stream));
            all.push((delete(xid, b'K'), in_stream));
            all.push((delete(xid, b'O'), in_stream));
            all.push((truncate(xid), in_stream));
            all.push((message(xid), in_stream));
        }
        all
    }

    #[test]
    fn begin_commit_origin() {
        assert_eq!(
            decode(begin().bytes(), false).unwrap(),
            PgOutput::Begin(Begin {
                final_lsn: Lsn(0x16_B374_D848),
                commit_ts: TS,
                xid: 742,
            })
        );
        assert_eq!(
            decode(commit().bytes(), false).unwrap(),
            PgOutput::Commit(Commit {
                flags: 0,
                commit_lsn: Lsn(0x16_B374_D848),
                end_lsn: Lsn(0x16_B374_D880),
                commit_ts: TS,
            })
        );
        assert_eq!(
            decode(origin().bytes(), false).unwrap(),
            PgOutput::Origin(Origin {
                commit_lsn: Lsn(0x10),
                name: "upstream".into(),
            })
        );
    }

    #[test]
    fn relation_and_type() {
        for (xid, in_stream) in [(None, false), (Some(900), true)] {
            assert_eq!(
                decode(relation(xid).bytes(), in_stream).unwrap(),
                PgOutput::Relation(Relation {
                    xid,
                    id: 16_385,
                    namespace: "public".into(),
                    name: "users".into(),
                    replica_identity: ReplicaIdentity::Full,
                    columns: vec![
                        RelationColumn {
                            is_key: true,
                            name: "id".into(),
                            type_oid: 23,
                            type_modifier: -1,
                        },
                        RelationColumn {
                            is_key: false,
                            name: "name".into(),
                            type_oid: 1043,
                            type_modifier: 68,
                        },
                    ],
                })
            );
            assert_eq!(
                decode(type_info(xid).bytes(), in_stream).unwrap(),
                PgOutput::Type(TypeInfo {
                    xid,
                    id: 16_400,
                    namespace: "public".into(),
                    name: "mood".into(),
                })
            );
        }
    }

    #[test]
    fn replica_identities() {
        for (byte, expected) in [
            (b'd', ReplicaIdentity::Default),
            (b'n', ReplicaIdentity::Nothing),
            (b'f', ReplicaIdentity::Full),
            (b'i', ReplicaIdentity::Index),
        ] {
            let m = Msg::new(b'R').u32(1).str("").str("t").u8(byte).i16(0);
            match decode(m.bytes(), false).unwrap() {
                PgOutput::Relation(r) => assert_eq!(r.replica_identity, expected),
                other => panic!("{other:?}"),
            }
        }
        let m = Msg::new(b'R').u32(1).str("").str("t").u8(b'x').i16(0);
        assert!(matches!(
            decode(m.bytes(), false),
            Err(DecodeError::UnknownReplicaIdentity(b'x'))
        ));
    }

    #[test]
    fn insert_with_every_value_kind() {
        for (xid, in_stream) in [(None, false), (Some(900), true)] {
            assert_eq!(
                decode(insert(xid).bytes(), in_stream).unwrap(),
                PgOutput::Insert(Insert {
                    xid,
                    relation_id: 16_385,
                    new: Tuple(vec![
                        text("1"),
                        TupleValue::Null,
                        TupleValue::UnchangedToast,
                        TupleValue::Binary(Bytes::from_static(&[0xde, 0xad])),
                    ]),
                })
            );
        }
    }

    #[test]
    fn text_values_share_the_input_buffer() {
        let input = insert(None).bytes();
        let Ok(PgOutput::Insert(insert)) = decode(input.clone(), false) else {
            panic!("not an insert");
        };
        let TupleValue::Text(value) = &insert.new.0[0] else {
            panic!("not text");
        };
        let range = input.as_ptr_range();
        assert!(range.contains(&value.as_ptr()));
    }

    #[test]
    fn updates_with_and_without_old_tuple() {
        let old = Tuple(vec![text("1"), TupleValue::Null]);
        let new = Tuple(vec![text("1"), text("bob")]);
        for (xid, in_stream) in [(None, false), (Some(900), true)] {
            for (marker, expected_old) in [
                (None, None),
                (Some(b'K'), Some(OldTuple::Key(old.clone()))),
                (Some(b'O'), Some(OldTuple::Full(old.clone()))),
            ] {
                assert_eq!(
                    decode(update(xid, marker).bytes(), in_stream).unwrap(),
                    PgOutput::Update(Update {
                        xid,
                        relation_id: 16_385,
                        old: expected_old,
                        new: new.clone(),
                    })
                );
            }
        }
    }

    #[test]
    fn deletes_with_key_and_full_old_tuple() {
        let old = Tuple(vec![text("1"), TupleValue::Null]);
        for (xid, in_stream) in [(None, false), (Some(900), true)] {
            assert_eq!(
                decode(delete(xid, b'K').bytes(), in_stream).unwrap(),
                PgOutput::Delete(Delete {
                    xid,
                    relation_id: 16_385,
                    old: OldTuple::Key(old.clone()),
                })
            );
            assert_eq!(
                decode(delete(xid, b'O').bytes(), in_stream).unwrap(),
                PgOutput::Delete(Delete {
                    xid,
                    relation_id: 16_385,
                    old: OldTuple::Full(old.clone()),
                })
            );
        }
        assert!(matches!(
            decode(delete(None, b'N').bytes(), false),
            Err(DecodeError::UnexpectedTupleMarker {
                message: "Delete",
                found: b'N'
            })
        ));
    }

    #[test]
    fn truncate_and_message() {
        for (xid, in_stream) in [(None, false), (Some(900), true)] {
            assert_eq!(
                decode(truncate(xid).bytes(), in_stream).unwrap(),
                PgOutput::Truncate(Truncate {
                    xid,
                    cascade: true,
                    restart_identity: true,
                    relation_ids: vec![16_385, 16_390],
                })
            );
            assert_eq!(
                decode(message(xid).bytes(), in_stream).unwrap(),
                PgOutput::Message(LogicalMessage {
                    xid,
                    transactional: true,
                    lsn: Lsn(0x20),
                    prefix: "pgtide".into(),
                    content: Bytes::from_static(b"hello"),
                })
            );
        }
        let m = Msg::new(b'T').i32(0).u8(0);
        assert_eq!(
            decode(m.bytes(), false).unwrap(),
            PgOutput::Truncate(Truncate {
                xid: None,
                cascade: false,
                restart_identity: false,
                relation_ids: vec![],
            })
        );
    }

    #[test]
    fn streaming_messages() {
        assert_eq!(
            decode(stream_start().bytes(), false).unwrap(),
            PgOutput::StreamStart(StreamStart {
                xid: 900,
                first_segment: true,
            })
        );
        assert_eq!(
            decode(Msg::new(b'S').u32(900).u8(0).bytes(), false).unwrap(),
            PgOutput::StreamStart(StreamStart {
                xid: 900,
                first_segment: false,
            })
        );
        assert_eq!(
            decode(Msg::new(b'E').bytes(), true).unwrap(),
            PgOutput::StreamStop
        );
        assert_eq!(
            decode(stream_commit().bytes(), false).unwrap(),
            PgOutput::StreamCommit(StreamCommit {
                xid: 900,
                flags: 0,
                commit_lsn: Lsn(0x30),
                end_lsn: Lsn(0x38),
                commit_ts: TS,
            })
        );
        assert_eq!(
            decode(stream_abort().bytes(), false).unwrap(),
            PgOutput::StreamAbort(StreamAbort {
                xid: 900,
                subxid: 901,
            })
        );
    }

    #[test]
    fn every_truncated_prefix_is_an_error() {
        for (msg, in_stream) in all_messages() {
            let full = msg.bytes();
            assert!(decode(full.clone(), in_stream).is_ok(), "{full:?}");
            for len in 0..full.len() {
                let result = decode(full.slice(..len), in_stream);
                assert!(result.is_err(), "prefix {len} of {full:?}: {result:?}");
            }
        }
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        for (msg, in_stream) in all_messages() {
            let result = decode(msg.u8(0).bytes(), in_stream);
            assert!(
                matches!(result, Err(DecodeError::TrailingBytes { count: 1, .. })),
                "{result:?}"
            );
        }
    }

    #[test]
    fn malformed_input_errors() {
        assert!(matches!(
            decode(Bytes::new(), false),
            Err(DecodeError::Truncated {
                what: "message type"
            })
        ));
        assert!(matches!(
            decode(Msg::new(b'Z').bytes(), false),
            Err(DecodeError::UnknownMessage(b'Z'))
        ));
        let bad_kind = Msg::new(b'I').u32(1).u8(b'N').i16(1).u8(b'x');
        assert!(matches!(
            decode(bad_kind.bytes(), false),
            Err(DecodeError::UnknownTupleKind(b'x'))
        ));
        let negative_len = Msg::new(b'I').u32(1).u8(b'N').i16(1).u8(b't').i32(-1);
        assert!(matches!(
            decode(negative_len.bytes(), false),
            Err(DecodeError::NegativeCount { value: -1, .. })
        ));
        let huge_len = Msg::new(b'I').u32(1).u8(b'N').i16(1).u8(b't').i32(i32::MAX);
        assert!(matches!(
            decode(huge_len.bytes(), false),
            Err(DecodeError::Truncated { .. })
        ));
        let negative_cols = Msg::new(b'I').u32(1).u8(b'N').i16(-2);
        assert!(matches!(
            decode(negative_cols.bytes(), false),
            Err(DecodeError::NegativeCount { value: -2, .. })
        ));
        let huge_truncate = Msg::new(b'T').i32(i32::MAX).u8(0).u32(1);
        assert!(matches!(
            decode(huge_truncate.bytes(), false),
            Err(DecodeError::Truncated { .. })
        ));
        let bad_utf8 = Msg::new(b'O').u64(1).raw(b"\xff\xfe\0");
        assert!(matches!(
            decode(bad_utf8.bytes(), false),
            Err(DecodeError::InvalidUtf8 {
                what: "Origin name"
            })
        ));
        let bad_marker = Msg::new(b'U').u32(1).u8(b'X');
        assert!(matches!(
            decode(bad_marker.bytes(), false),
            Err(DecodeError::UnexpectedTupleMarker {
                message: "Update",
                found: b'X'
            })
        ));
        let insert_marker = Msg::new(b'I').u32(1).u8(b'K').i16(0);
        assert!(matches!(
            decode(insert_marker.bytes(), false),
            Err(DecodeError::UnexpectedTupleMarker {
                message: "Insert",
                ..
            })
        ));
    }

    #[test]
    fn error_messages_are_clear() {
        assert_eq!(
            DecodeError::UnknownMessage(b'Z').to_string(),
            "unknown pgoutput message type 'Z'"
        );
        assert_eq!(
            decode(begin().bytes().slice(..5), false)
                .unwrap_err()
                .to_string(),
            "pgoutput message truncated while reading Begin final LSN"
        );
    }
}
