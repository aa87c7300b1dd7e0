//! AS_MSG (type 3, spec §4–§5): the 22-byte message header, fields and ops,
//! decoded into engine requests; and the writers for replies.
//!
//! ```text
//! body off size
//!   0   1  header_sz = 22
//!   1   1  info1        2  1  info2        3  1  info3        4  1  info4
//!   5   1  result code
//!   6   4  generation        10  4  record_ttl        14  4  transaction_ttl
//!  18   2  n_fields          20  2  n_ops
//!  22      fields: u32 size (1 + data), u8 type, data
//!          ops:    u32 size (4 + name + value), u8 op, u8 particle type,
//!                  u8 flags, u8 name length, name, value
//! ```
//!
//! Decoding happens in two steps with different failure modes:
//!
//! 1. [`parse`] checks the framing only. A size that runs past the body is
//!    a [`MsgError`]: the stream is no longer trustworthy and the caller
//!    closes the connection (after answering 4 if it can).
//! 2. [`single_request`] (and [`crate::wire::batch::row_request`],
//!    [`crate::wire::scan::scan_request`]) map a well-framed message to an
//!    engine request. What a client asked wrongly (a long bin name, an
//!    unknown op, a bad value) is a [`ResultCode`] to answer on a connection
//!    that stays open.
//!
//! Offsets in errors count from the first byte of the body (the byte after
//! the 8-byte proto header); add 8 for the offset within the frame.

use std::fmt;

use osprey_engine::digest::{Digest, DIGEST_LEN, KEY_TYPE_BLOB, KEY_TYPE_INTEGER, KEY_TYPE_STRING};
use osprey_engine::ops::{self, ExistsAction, GenerationCheck, Op, OpKind, ReplyBin, Request, Ttl};
use osprey_engine::record::MAX_SET_NAME_BYTES;
use osprey_engine::record::{particle, BinName, StoredKey, Value, MAX_BIN_NAME_BYTES};
use osprey_engine::result::ResultCode;
use osprey_engine::storage::core::{Reply, Transaction};

use super::proto::{begin_frame, end_frame, FrameKind};
use super::reader::{Reader, Short};

/// The only header size clients send (byte 0 of every message).
pub const MSG_HEADER_BYTES: usize = 22;
/// Namespace names are shorter than this (spec §4.2).
pub const MAX_NAMESPACE_BYTES: usize = 31;

// info1 (spec §4.1).
pub const INFO1_READ: u8 = 0x01;
pub const INFO1_GET_ALL: u8 = 0x02;
pub const INFO1_SHORT_QUERY: u8 = 0x04;
pub const INFO1_BATCH: u8 = 0x08;
pub const INFO1_XDR: u8 = 0x10;
pub const INFO1_NOBINDATA: u8 = 0x20;
pub const INFO1_READ_MODE_AP_ALL: u8 = 0x40;
pub const INFO1_COMPRESS_RESPONSE: u8 = 0x80;

// info2.
pub const INFO2_WRITE: u8 = 0x01;
pub const INFO2_DELETE: u8 = 0x02;
pub const INFO2_GENERATION: u8 = 0x04;
pub const INFO2_GENERATION_GT: u8 = 0x08;
pub const INFO2_DURABLE_DELETE: u8 = 0x10;
pub const INFO2_CREATE_ONLY: u8 = 0x20;
pub const INFO2_RELAX_AP_LONG_QUERY: u8 = 0x40;
pub const INFO2_RESPOND_ALL_OPS: u8 = 0x80;

// info3.
pub const INFO3_LAST: u8 = 0x01;
pub const INFO3_COMMIT_MASTER: u8 = 0x02;
pub const INFO3_PARTITION_DONE: u8 = 0x04;
pub const INFO3_UPDATE_ONLY: u8 = 0x08;
pub const INFO3_CREATE_OR_REPLACE: u8 = 0x10;
pub const INFO3_REPLACE_ONLY: u8 = 0x20;
pub const INFO3_SC_READ_TYPE: u8 = 0x40;
pub const INFO3_SC_READ_RELAX: u8 = 0x80;

// info4.
pub const INFO4_TXN_VERIFY_READ: u8 = 0x01;
pub const INFO4_TXN_ROLL_FORWARD: u8 = 0x02;
pub const INFO4_TXN_ROLL_BACK: u8 = 0x04;
pub const INFO4_TXN_ON_LOCKING_ONLY: u8 = 0x10;
/// Bits 5–6: how much error detail the client wants (ignored).
pub const INFO4_ERROR_DETAIL_MASK: u8 = 0x60;
/// The info4 bits of multi-record transactions, which Osprey lacks.
const INFO4_TXN_BITS: u8 = INFO4_TXN_VERIFY_READ
    | INFO4_TXN_ROLL_FORWARD
    | INFO4_TXN_ROLL_BACK
    | INFO4_TXN_ON_LOCKING_ONLY;

// Field types (spec §4.2).
pub const FIELD_NAMESPACE: u8 = 0;
pub const FIELD_SET: u8 = 1;
pub const FIELD_KEY: u8 = 2;
pub const FIELD_RECORD_VERSION: u8 = 3;
pub const FIELD_DIGEST: u8 = 4;
pub const FIELD_TXN_ID: u8 = 5;
pub const FIELD_TXN_DEADLINE: u8 = 6;
pub const FIELD_TASK_ID: u8 = 7;
pub const FIELD_SOCKET_TIMEOUT: u8 = 9;
pub const FIELD_RECORDS_PER_SECOND: u8 = 10;
pub const FIELD_PID_ARRAY: u8 = 11;
pub const FIELD_DIGEST_ARRAY: u8 = 12;
pub const FIELD_MAX_RECORDS: u8 = 13;
pub const FIELD_BVAL_ARRAY: u8 = 15;
pub const FIELD_INDEX_NAME: u8 = 21;
pub const FIELD_INDEX_RANGE: u8 = 22;
pub const FIELD_INDEX_CONTEXT: u8 = 23;
pub const FIELD_INDEX_EXPRESSION: u8 = 24;
pub const FIELD_INDEX_TYPE: u8 = 26;
pub const FIELD_UDF_PACKAGE: u8 = 30;
pub const FIELD_UDF_FUNCTION: u8 = 31;
pub const FIELD_UDF_ARGLIST: u8 = 32;
pub const FIELD_UDF_OP: u8 = 33;
pub const FIELD_BATCH_INDEX: u8 = 41;
pub const FIELD_FILTER: u8 = 43;
pub const FIELD_ERROR_DETAIL: u8 = 45;

// Op codes (spec §4.3).
pub const OP_READ: u8 = 1;
pub const OP_WRITE: u8 = 2;
pub const OP_CDT_READ: u8 = 3;
pub const OP_CDT_MODIFY: u8 = 4;
pub const OP_INCR: u8 = 5;
pub const OP_EXP_READ: u8 = 7;
pub const OP_EXP_MODIFY: u8 = 8;
pub const OP_APPEND: u8 = 9;
pub const OP_PREPEND: u8 = 10;
pub const OP_TOUCH: u8 = 11;
pub const OP_BIT_READ: u8 = 12;
pub const OP_BIT_MODIFY: u8 = 13;
pub const OP_DELETE: u8 = 14;
pub const OP_HLL_READ: u8 = 15;
pub const OP_HLL_MODIFY: u8 = 16;
pub const OP_STRING_READ: u8 = 17;
pub const OP_STRING_MODIFY: u8 = 18;
pub const OP_TO_STRING: u8 = 19;

/// Smallest op on the wire: size, op, particle type, flags, name length.
const MIN_OP_BYTES: usize = 8;

/// The 22-byte message header (spec §4.1), for requests and replies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsgHeader {
    pub info1: u8,
    pub info2: u8,
    pub info3: u8,
    pub info4: u8,
    pub result_code: u8,
    /// Request: expected generation. Reply: record generation; partition id
    /// in a partition-done marker.
    pub generation: u32,
    /// Request: TTL of a write (read: read-touch-ttl-percent). Reply: void
    /// time.
    pub record_ttl: u32,
    /// Request: server-side timeout in ms. Batch reply: row index.
    pub transaction_ttl: u32,
    pub n_fields: u16,
    pub n_ops: u16,
}

impl MsgHeader {
    fn read(r: &mut Reader<'_>) -> Result<MsgHeader, MsgError> {
        let header_sz = r.u8("message header size")?;
        if usize::from(header_sz) != MSG_HEADER_BYTES {
            return Err(MsgError::Malformed {
                offset: 0,
                what: "message header size is not 22",
            });
        }
        Ok(MsgHeader {
            info1: r.u8("info1")?,
            info2: r.u8("info2")?,
            info3: r.u8("info3")?,
            info4: r.u8("info4")?,
            result_code: r.u8("result code")?,
            generation: r.u32("generation")?,
            record_ttl: r.u32("record ttl")?,
            transaction_ttl: r.u32("transaction ttl")?,
            n_fields: r.u16("field count")?,
            n_ops: r.u16("op count")?,
        })
    }

    /// Appends the 22 header bytes.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.push(MSG_HEADER_BYTES as u8);
        out.extend_from_slice(&[
            self.info1,
            self.info2,
            self.info3,
            self.info4,
            self.result_code,
        ]);
        out.extend_from_slice(&self.generation.to_be_bytes());
        out.extend_from_slice(&self.record_ttl.to_be_bytes());
        out.extend_from_slice(&self.transaction_ttl.to_be_bytes());
        out.extend_from_slice(&self.n_fields.to_be_bytes());
        out.extend_from_slice(&self.n_ops.to_be_bytes());
    }
}

/// Why a body is not a well-framed AS_MSG. The caller answers 4 if it can
/// and closes the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsgError {
    /// `offset` is where the broken item starts, from the start of the
    /// bytes parsed (the body, or field 41's data for a batch).
    Malformed { offset: usize, what: &'static str },
}

impl fmt::Display for MsgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MsgError::Malformed { offset, what } => {
                write!(f, "malformed message at byte {offset}: {what}")
            }
        }
    }
}

impl std::error::Error for MsgError {}

impl From<Short> for MsgError {
    fn from(short: Short) -> MsgError {
        MsgError::Malformed {
            offset: short.offset,
            what: short.what,
        }
    }
}

/// A known field whose data cannot be what its type says (a 19-byte digest,
/// an odd-length PID array): framing is intact, the request answers 4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadField {
    pub field_type: u8,
    /// Where the field starts.
    pub offset: usize,
}

/// The fields of a message, borrowed from the body. A repeated field keeps
/// the last value sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fields<'a> {
    pub namespace: Option<&'a [u8]>,
    pub set: Option<&'a [u8]>,
    /// Field 2: particle type and value bytes.
    pub key: Option<(u8, &'a [u8])>,
    pub digest: Option<[u8; DIGEST_LEN]>,
    /// Field 41, raw; see [`crate::wire::batch::parse`].
    pub batch: Option<&'a [u8]>,
    /// Field 11, raw: LE u16 partition ids (length checked even).
    pub pid_array: Option<&'a [u8]>,
    /// Field 12, raw: 20-byte digests (length checked a multiple of 20).
    pub digest_array: Option<&'a [u8]>,
    pub max_records: Option<u64>,
    pub socket_timeout_ms: Option<u32>,
    pub task_id: Option<u64>,
    pub records_per_second: Option<u32>,
    /// Field 43, raw msgpack expression.
    pub filter: Option<&'a [u8]>,
    /// Fields of a type this codec does not know, skipped.
    pub unknown: u16,
    /// The first known field with data of the wrong size.
    pub invalid: Option<BadField>,
    /// The first field that asks for a feature Osprey lacks: transactions
    /// (3, 5, 6), secondary-index queries (15, 21–26) or UDFs (30–33).
    pub unsupported: Option<u8>,
}

impl Fields<'_> {
    /// Whether these fields can be served at all: a field with bad data is
    /// 4; one that needs transactions, secondary indexes, UDFs or filter
    /// expressions is 16. Ignoring any of those would silently answer a
    /// different question than the client asked.
    pub fn refusal(&self) -> Result<(), ResultCode> {
        if self.invalid.is_some() {
            return Err(ResultCode::ParameterError);
        }
        if self.unsupported.is_some() || self.filter.is_some() {
            return Err(ResultCode::Unsupported);
        }
        Ok(())
    }
}

/// One op as sent, borrowed from the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireOp<'a> {
    pub op: u8,
    pub particle_type: u8,
    pub name: &'a [u8],
    pub value: &'a [u8],
}

/// A well-framed AS_MSG.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    pub header: MsgHeader,
    pub fields: Fields<'a>,
    pub ops: Vec<WireOp<'a>>,
}

/// Parses a type-3 body (after the proto header). The header must say 22
/// bytes, every field and op must lie within the body, and the body must end
/// with the last op. Field and op contents are not judged here.
pub fn parse(body: &[u8]) -> Result<Message<'_>, MsgError> {
    let mut r = Reader::new(body);
    let header = MsgHeader::read(&mut r)?;
    let fields = read_fields(&mut r, header.n_fields)?;
    let ops = read_ops(&mut r, header.n_ops)?;
    if r.remaining() != 0 {
        return Err(MsgError::Malformed {
            offset: r.offset(),
            what: "bytes after the last op",
        });
    }
    Ok(Message {
        header,
        fields,
        ops,
    })
}

/// Reads `n` fields. Shared with batch rows, whose fields have the same
/// layout.
pub(crate) fn read_fields<'a>(r: &mut Reader<'a>, n: u16) -> Result<Fields<'a>, MsgError> {
    let mut fields = Fields::default();
    for _ in 0..n {
        let at = r.offset();
        let size = r.u32("field size")? as usize;
        if size == 0 {
            return Err(MsgError::Malformed {
                offset: at,
                what: "field size 0 leaves no room for its type",
            });
        }
        let field_type = r.u8("field type")?;
        let data = r.take(size - 1, "field data")?;
        let bad = BadField {
            field_type,
            offset: at,
        };
        let mut invalid = false;
        match field_type {
            FIELD_NAMESPACE => fields.namespace = Some(data),
            FIELD_SET => fields.set = Some(data),
            FIELD_KEY => match data.split_first() {
                Some((t, bytes)) => fields.key = Some((*t, bytes)),
                None => invalid = true,
            },
            FIELD_DIGEST => match <[u8; DIGEST_LEN]>::try_from(data) {
                Ok(d) => fields.digest = Some(d),
                Err(_) => invalid = true,
            },
            FIELD_BATCH_INDEX => fields.batch = Some(data),
            FIELD_PID_ARRAY if data.len() % 2 == 0 => fields.pid_array = Some(data),
            FIELD_DIGEST_ARRAY if data.len() % DIGEST_LEN == 0 => fields.digest_array = Some(data),
            FIELD_PID_ARRAY | FIELD_DIGEST_ARRAY => invalid = true,
            FIELD_MAX_RECORDS => match data.try_into() {
                Ok(b) => fields.max_records = Some(u64::from_be_bytes(b)),
                Err(_) => invalid = true,
            },
            FIELD_TASK_ID => match data.try_into() {
                Ok(b) => fields.task_id = Some(u64::from_be_bytes(b)),
                Err(_) => invalid = true,
            },
            FIELD_SOCKET_TIMEOUT => match data.try_into() {
                Ok(b) => fields.socket_timeout_ms = Some(u32::from_be_bytes(b)),
                Err(_) => invalid = true,
            },
            FIELD_RECORDS_PER_SECOND => match data.try_into() {
                Ok(b) => fields.records_per_second = Some(u32::from_be_bytes(b)),
                Err(_) => invalid = true,
            },
            FIELD_FILTER => fields.filter = Some(data),
            FIELD_RECORD_VERSION
            | FIELD_TXN_ID
            | FIELD_TXN_DEADLINE
            | FIELD_BVAL_ARRAY
            | FIELD_INDEX_NAME..=FIELD_INDEX_TYPE
            | FIELD_UDF_PACKAGE..=FIELD_UDF_OP => {
                fields.unsupported.get_or_insert(field_type);
            }
            _ => fields.unknown = fields.unknown.saturating_add(1),
        }
        if invalid {
            fields.invalid.get_or_insert(bad);
        }
    }
    Ok(fields)
}

/// Reads `n` ops. Shared with batch rows.
pub(crate) fn read_ops<'a>(r: &mut Reader<'a>, n: u16) -> Result<Vec<WireOp<'a>>, MsgError> {
    // The count is only a claim: never reserve more ops than the bytes left
    // could hold.
    let mut ops = Vec::with_capacity(usize::from(n).min(r.remaining() / MIN_OP_BYTES));
    for _ in 0..n {
        let at = r.offset();
        let size = r.u32("op size")? as usize;
        let Some(rest_bytes) = size.checked_sub(4) else {
            return Err(MsgError::Malformed {
                offset: at,
                what: "op size under 4",
            });
        };
        let op = r.u8("op code")?;
        let particle_type = r.u8("op particle type")?;
        let _flags = r.u8("op flags")?;
        let name_len = usize::from(r.u8("op name length")?);
        let Some(value_len) = rest_bytes.checked_sub(name_len) else {
            return Err(MsgError::Malformed {
                offset: at,
                what: "op name runs past the op's size",
            });
        };
        let name = r.take(name_len, "op name")?;
        let value = r.take(value_len, "op value")?;
        ops.push(WireOp {
            op,
            particle_type,
            name,
            value,
        });
    }
    Ok(ops)
}

/// A decoded single-record command.
#[derive(Clone, Debug)]
pub struct SingleRequest<'a> {
    pub namespace: &'a str,
    pub txn: Transaction,
}

/// Maps a single-record message to an engine transaction (spec §4–§5).
///
/// Result codes, checked in this order:
/// * a field with bad data → 4; a transaction, UDF, secondary-index or
///   filter-expression field, or info4 transaction bits → 16 Unsupported;
/// * namespace missing or not UTF-8 → 4; empty or 32 bytes or longer → 20
///   (no namespace can have that name, so it is "not found", as the real
///   server answers any name it does not know);
/// * digest missing → 4 (a key field does not replace it: the client's
///   digest is the record's identity);
/// * set over 63 bytes → 4; key of an unknown type, or an integer key that
///   is not 8 bytes → 4;
/// * more than `ops::MAX_OPS` ops → 4; per op, in order: an op code
///   Osprey does not model (CDT 3/4, expression 7/8, bit 12/13, HLL 15/16,
///   string 17/18/19) → 16, any other unknown code → 4, a bin name over 15
///   bytes → 21, value bytes that do not fit the particle type → 4;
/// * more than one exists flag, or both generation flags → 4.
pub fn single_request<'a>(msg: &Message<'a>) -> Result<SingleRequest<'a>, ResultCode> {
    msg.fields.refusal()?;
    let h = &msg.header;
    record_request(&RecordCommand {
        info1: h.info1,
        info2: h.info2,
        info3: h.info3,
        info4: h.info4,
        generation: h.generation,
        record_ttl: h.record_ttl,
        namespace: msg.fields.namespace,
        set: msg.fields.set,
        key: msg.fields.key,
        digest: msg.fields.digest,
        ops: &msg.ops,
    })
}

/// What a single-record command is made of, wherever it was read from: a
/// whole message or a batch row. Both map through [`record_request`].
pub(crate) struct RecordCommand<'a, 'o> {
    pub info1: u8,
    pub info2: u8,
    pub info3: u8,
    pub info4: u8,
    pub generation: u32,
    pub record_ttl: u32,
    pub namespace: Option<&'a [u8]>,
    pub set: Option<&'a [u8]>,
    pub key: Option<(u8, &'a [u8])>,
    pub digest: Option<[u8; DIGEST_LEN]>,
    pub ops: &'o [WireOp<'a>],
}

pub(crate) fn record_request<'a>(
    c: &RecordCommand<'a, '_>,
) -> Result<SingleRequest<'a>, ResultCode> {
    if c.info4 & INFO4_TXN_BITS != 0 {
        return Err(ResultCode::Unsupported);
    }
    let namespace = namespace_name(c.namespace)?;
    let digest = Digest(c.digest.ok_or(ResultCode::ParameterError)?);
    let set_name = match c.set {
        Some(set) if set.len() > MAX_SET_NAME_BYTES => return Err(ResultCode::ParameterError),
        Some(set) => set.to_vec(),
        None => Vec::new(),
    };
    let key = c.key.map(stored_key).transpose()?;
    let ops = convert_ops(c.ops)?;
    let mut request = Request {
        digest,
        ops,
        read_all_bins: c.info1 & INFO1_GET_ALL != 0,
        header_only: c.info1 & INFO1_NOBINDATA != 0,
        exists: exists_action(c.info2, c.info3)?,
        generation: generation_check(c.info2, c.generation)?,
        ttl: Ttl::default(),
        respond_all_ops: c.info2 & INFO2_RESPOND_ALL_OPS != 0,
        set_name,
        key,
        delete: c.info2 & INFO2_DELETE != 0,
    };
    // A read carries read-touch-ttl-percent in record_ttl, not a TTL. For a
    // write, an out-of-range TTL goes to the engine as `Seconds` so that it
    // is refused at the point Aerospike refuses it (after the existence and
    // generation checks), as `Ttl::from_wire` documents.
    if request.writes() {
        request.ttl = Ttl::from_wire(c.record_ttl).unwrap_or(Ttl::Seconds(c.record_ttl));
    }
    Ok(SingleRequest {
        namespace,
        txn: Transaction {
            request,
            durable_delete: c.info2 & INFO2_DURABLE_DELETE != 0,
        },
    })
}

/// The namespace field as a name: missing or not UTF-8 → 4; empty or 32
/// bytes or longer → 20 (no namespace can be called that).
pub(crate) fn namespace_name(field: Option<&[u8]>) -> Result<&str, ResultCode> {
    let bytes = field.ok_or(ResultCode::ParameterError)?;
    let name = std::str::from_utf8(bytes).map_err(|_| ResultCode::ParameterError)?;
    if name.is_empty() || name.len() > MAX_NAMESPACE_BYTES {
        return Err(ResultCode::NamespaceNotFound);
    }
    Ok(name)
}

/// The user key of field 2: only the three key types clients send (spec
/// §3), an integer as its 8 bytes.
fn stored_key((particle_type, bytes): (u8, &[u8])) -> Result<StoredKey, ResultCode> {
    let valid = match particle_type {
        KEY_TYPE_INTEGER => bytes.len() == 8,
        KEY_TYPE_STRING | KEY_TYPE_BLOB => true,
        _ => false,
    };
    if !valid {
        return Err(ResultCode::ParameterError);
    }
    Ok(StoredKey {
        particle_type,
        bytes: bytes.to_vec(),
    })
}

/// Exactly one exists policy may be asked for; clients never send two.
fn exists_action(info2: u8, info3: u8) -> Result<ExistsAction, ResultCode> {
    let asked = [
        (info2 & INFO2_CREATE_ONLY != 0, ExistsAction::CreateOnly),
        (info3 & INFO3_UPDATE_ONLY != 0, ExistsAction::UpdateOnly),
        (
            info3 & INFO3_CREATE_OR_REPLACE != 0,
            ExistsAction::CreateOrReplace,
        ),
        (info3 & INFO3_REPLACE_ONLY != 0, ExistsAction::ReplaceOnly),
    ];
    let mut chosen = asked.iter().filter(|(set, _)| *set).map(|(_, a)| *a);
    match (chosen.next(), chosen.next()) {
        (None, _) => Ok(ExistsAction::Update),
        (Some(action), None) => Ok(action),
        (Some(_), Some(_)) => Err(ResultCode::ParameterError),
    }
}

fn generation_check(info2: u8, generation: u32) -> Result<GenerationCheck, ResultCode> {
    match (
        info2 & INFO2_GENERATION != 0,
        info2 & INFO2_GENERATION_GT != 0,
    ) {
        (false, false) => Ok(GenerationCheck::None),
        (true, false) => Ok(GenerationCheck::Equal(generation)),
        (false, true) => Ok(GenerationCheck::Greater(generation)),
        (true, true) => Err(ResultCode::ParameterError),
    }
}

fn convert_ops(wire: &[WireOp<'_>]) -> Result<Vec<Op>, ResultCode> {
    if wire.len() > ops::MAX_OPS {
        return Err(ResultCode::ParameterError);
    }
    wire.iter().map(convert_op).collect()
}

/// One wire op as an engine op. Which ops need a name or a value is the
/// engine's rule (`ops.rs`), not this function's: it passes an empty name
/// as `None` and a nil value as `None` and lets `ops::apply` decide.
fn convert_op(op: &WireOp<'_>) -> Result<Op, ResultCode> {
    let kind = match op.op {
        OP_READ => OpKind::Read,
        OP_WRITE => OpKind::Write,
        OP_INCR => OpKind::Incr,
        OP_APPEND => OpKind::Append,
        OP_PREPEND => OpKind::Prepend,
        OP_TOUCH => OpKind::Touch,
        OP_DELETE => OpKind::DeleteAll,
        OP_CDT_READ | OP_CDT_MODIFY | OP_EXP_READ | OP_EXP_MODIFY | OP_BIT_READ | OP_BIT_MODIFY
        | OP_HLL_READ | OP_HLL_MODIFY | OP_STRING_READ | OP_STRING_MODIFY | OP_TO_STRING => {
            return Err(ResultCode::Unsupported)
        }
        _ => return Err(ResultCode::ParameterError),
    };
    let bin = bin_name(op.name)?;
    let value = match kind {
        // A READ's, TOUCH's or DELETE's value bytes mean nothing; clients
        // send none.
        OpKind::Read | OpKind::Touch | OpKind::DeleteAll => None,
        _ => wire_value(op.particle_type, op.value)?,
    };
    Ok(Op { kind, bin, value })
}

/// An empty name is `None` (a READ of it reads all bins with GET_ALL);
/// over 15 bytes is 21.
pub(crate) fn bin_name(name: &[u8]) -> Result<Option<BinName>, ResultCode> {
    if name.is_empty() {
        return Ok(None);
    }
    if name.len() > MAX_BIN_NAME_BYTES {
        return Err(ResultCode::BinNameTooLong);
    }
    BinName::new(name)
        .map(Some)
        .ok_or(ResultCode::BinNameTooLong)
}

/// Particle type 0 (nil) is `None`, and must carry no bytes; anything else
/// must decode as its particle type.
fn wire_value(particle_type: u8, bytes: &[u8]) -> Result<Option<Value>, ResultCode> {
    if particle_type == particle::NIL {
        return if bytes.is_empty() {
            Ok(None)
        } else {
            Err(ResultCode::ParameterError)
        };
    }
    Value::from_wire(particle_type, bytes)
        .map(Some)
        .map_err(|_| ResultCode::ParameterError)
}

// ---- replies --------------------------------------------------------------

/// Appends one field: `u32 size (1 + data)`, type, data.
pub fn write_field(out: &mut Vec<u8>, field_type: u8, data: &[u8]) {
    let size = u32::try_from(data.len() + 1).expect("field under 4 GiB");
    out.extend_from_slice(&size.to_be_bytes());
    out.push(field_type);
    out.extend_from_slice(data);
}

/// Appends one reply bin as a READ op with the value's particle type and
/// wire bytes; `None` is particle type 0 with no bytes.
pub fn write_bin(out: &mut Vec<u8>, name: &[u8], value: Option<&Value>) {
    let name_len = u8::try_from(name.len()).expect("bin name under 256 bytes");
    let value_len = value.map_or(0, Value::wire_len);
    let size = u32::try_from(4 + name.len() + value_len).expect("bin under 4 GiB");
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&[
        OP_READ,
        value.map_or(particle::NIL, Value::particle_type),
        0,
        name_len,
    ]);
    out.extend_from_slice(name);
    if let Some(value) = value {
        value.write_wire(out);
    }
}

/// Appends one reply record (22-byte header, fields, bins) without a proto
/// header: callers wrap one or more in [`begin_frame`] / [`end_frame`].
/// `fields` are `(type, data)`; `bins` become READ ops.
#[allow(clippy::too_many_arguments)]
pub fn write_record(
    out: &mut Vec<u8>,
    info3: u8,
    result: u8,
    generation: u32,
    void_time: u32,
    transaction_ttl: u32,
    fields: &[(u8, &[u8])],
    bins: &[ReplyBin],
) {
    let header = MsgHeader {
        info3,
        result_code: result,
        generation,
        record_ttl: void_time,
        transaction_ttl,
        n_fields: u16::try_from(fields.len()).expect("at most 65535 reply fields"),
        n_ops: u16::try_from(bins.len()).expect("at most 65535 reply bins"),
        ..MsgHeader::default()
    };
    header.write(out);
    for (field_type, data) in fields {
        write_field(out, *field_type, data);
    }
    for bin in bins {
        let name = bin.name.as_ref().map_or(&[][..], BinName::as_bytes);
        write_bin(out, name, bin.value.as_ref());
    }
}

/// What a scan (or query) row identifies its record by (spec §7): the
/// namespace and digest always, the set when the record has one, the
/// stored key when there is one.
#[derive(Clone, Copy, Debug)]
pub struct RowIdentity<'r> {
    pub namespace: &'r [u8],
    /// Empty = no set (the field is left out).
    pub set: &'r [u8],
    pub digest: &'r Digest,
    pub key: Option<&'r StoredKey>,
}

/// Appends one scan row record (no proto header): rc 0, the record's
/// generation and void time, the identity fields, then the bins. Writes
/// the fields in place, so a row costs no allocation.
pub fn write_scan_row(
    out: &mut Vec<u8>,
    row: &RowIdentity<'_>,
    generation: u16,
    void_time: u32,
    bins: &[ReplyBin],
) {
    let n_fields = 2 + u16::from(!row.set.is_empty()) + u16::from(row.key.is_some());
    MsgHeader {
        generation: u32::from(generation),
        record_ttl: void_time,
        n_fields,
        n_ops: u16::try_from(bins.len()).expect("at most 65535 reply bins"),
        ..MsgHeader::default()
    }
    .write(out);
    write_field(out, FIELD_NAMESPACE, row.namespace);
    write_field(out, FIELD_DIGEST, row.digest.as_bytes());
    if !row.set.is_empty() {
        write_field(out, FIELD_SET, row.set);
    }
    if let Some(key) = row.key {
        // Field 2 is the particle type followed by the value bytes.
        let size = u32::try_from(key.bytes.len() + 2).expect("key under 4 GiB");
        out.extend_from_slice(&size.to_be_bytes());
        out.extend_from_slice(&[FIELD_KEY, key.particle_type]);
        out.extend_from_slice(&key.bytes);
    }
    for bin in bins {
        let name = bin.name.as_ref().map_or(&[][..], BinName::as_bytes);
        write_bin(out, name, bin.value.as_ref());
    }
}

/// Appends the whole frame answering a single-record command.
pub fn write_single_reply(out: &mut Vec<u8>, reply: &Reply) {
    let start = begin_frame(out, FrameKind::Msg);
    write_record(
        out,
        0,
        reply.result.code(),
        u32::from(reply.generation),
        reply.void_time,
        0,
        &[],
        &reply.bins,
    );
    end_frame(out, start);
}

/// Appends the whole frame answering a single-record command with only a
/// result code (an error found before the engine ran).
pub fn write_result_reply(out: &mut Vec<u8>, result: u8) {
    let start = begin_frame(out, FrameKind::Msg);
    write_record(out, 0, result, 0, 0, 0, &[], &[]);
    end_frame(out, start);
}

/// Appends a scan stream's partition-done marker (no proto header): rc 0
/// for done, 11 for a partition this node cannot serve.
pub fn write_partition_done(out: &mut Vec<u8>, pid: u32, result: u8) {
    write_record(out, INFO3_PARTITION_DONE, result, pid, 0, 0, &[], &[]);
}

/// Appends the record that ends a scan or batch stream (no proto header).
pub fn write_last(out: &mut Vec<u8>, result: u8) {
    write_record(out, INFO3_LAST, result, 0, 0, 0, &[], &[]);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Hex digits, ignoring spaces and `|` separators.
    pub(crate) fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect()
    }

    const KEY1_DIGEST: &str = "ec91192d4b7f8ce35d5d78d34bca65cbaaaac960";

    /// §11: Python `put(('test','demo','key1'), {'a': 1})`.
    fn put_frame() -> Vec<u8> {
        hex(&format!(
            "02 03 00 00 00 00 00 52 | 16 00 01 00 00 00 00 00 00 00 00 00 00 00 00 00 03 e8 00 03 00 01 |
             00 00 00 05 00 74 65 73 74 | 00 00 00 05 01 64 65 6d 6f | 00 00 00 15 04 {KEY1_DIGEST} |
             00 00 00 0d 02 01 00 01 61 00 00 00 00 00 00 00 01"
        ))
    }

    /// A message body built from parts, for the mapping tests.
    pub(crate) fn body(
        header: MsgHeader,
        fields: &[(u8, &[u8])],
        ops: &[(u8, u8, &[u8], &[u8])],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        MsgHeader {
            n_fields: fields.len() as u16,
            n_ops: ops.len() as u16,
            ..header
        }
        .write(&mut out);
        for (t, data) in fields {
            write_field(&mut out, *t, data);
        }
        for (op, particle_type, name, value) in ops {
            out.extend_from_slice(&((4 + name.len() + value.len()) as u32).to_be_bytes());
            out.extend_from_slice(&[*op, *particle_type, 0, name.len() as u8]);
            out.extend_from_slice(name);
            out.extend_from_slice(value);
        }
        out
    }

    fn digest() -> [u8; 20] {
        hex(KEY1_DIGEST).try_into().unwrap()
    }

    /// A write of `ops` to test/demo/key1.
    fn request_with(
        header: MsgHeader,
        ops: &[(u8, u8, &[u8], &[u8])],
    ) -> Result<SingleRequest<'static>, ResultCode> {
        let d = digest();
        let bytes = body(
            header,
            &[
                (FIELD_NAMESPACE, b"test"),
                (FIELD_SET, b"demo"),
                (FIELD_DIGEST, &d),
            ],
            ops,
        );
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        single_request(&parse(bytes).unwrap())
    }

    fn write_header() -> MsgHeader {
        MsgHeader {
            info2: INFO2_WRITE,
            ..MsgHeader::default()
        }
    }

    fn a() -> BinName {
        BinName::new(b"a").unwrap()
    }

    #[test]
    fn spec_put_decodes_to_a_write_of_a_equals_1() {
        let frame = put_frame();
        assert_eq!(frame.len(), 90);
        let msg = parse(&frame[8..]).unwrap();
        assert_eq!(
            msg.header,
            MsgHeader {
                info2: INFO2_WRITE,
                transaction_ttl: 1000,
                n_fields: 3,
                n_ops: 1,
                ..MsgHeader::default()
            }
        );
        assert_eq!(msg.fields.namespace, Some(&b"test"[..]));
        assert_eq!(msg.fields.set, Some(&b"demo"[..]));
        assert_eq!(msg.fields.digest, Some(digest()));
        let single = single_request(&msg).unwrap();
        assert_eq!(single.namespace, "test");
        assert!(!single.txn.durable_delete);
        assert_eq!(
            single.txn.request,
            Request {
                digest: Digest::from_hex(KEY1_DIGEST).unwrap(),
                ops: vec![Op::write(a(), Value::Integer(1))],
                set_name: b"demo".to_vec(),
                ttl: Ttl::NamespaceDefault,
                ..Request::default()
            }
        );
    }

    #[test]
    fn spec_get_all_decodes_to_a_read_of_all_bins() {
        let mut frame =
            hex("02 03 00 00 00 00 00 41 | 16 03 00 00 00 00 00000000 00000000 000003e8 0003 0000");
        frame.extend_from_slice(&put_frame()[30..73]);
        assert_eq!(frame.len(), 8 + 0x41);
        let msg = parse(&frame[8..]).unwrap();
        let request = single_request(&msg).unwrap().txn.request;
        assert!(request.read_all_bins);
        assert!(!request.writes());
        assert!(request.ops.is_empty());
        assert_eq!(request.set_name, b"demo");
    }

    #[test]
    fn spec_reply_frames_are_byte_exact() {
        let mut out = Vec::new();
        write_single_reply(
            &mut out,
            &Reply {
                result: ResultCode::Ok,
                generation: 1,
                void_time: 0,
                bins: vec![],
                key: None,
            },
        );
        assert_eq!(
            out,
            hex("02 03 00 00 00 00 00 16 16 00 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 00 00 00 00 00")
        );

        out.clear();
        write_single_reply(
            &mut out,
            &Reply {
                result: ResultCode::Ok,
                generation: 1,
                void_time: 0,
                bins: vec![ReplyBin {
                    name: Some(a()),
                    value: Some(Value::Integer(1)),
                }],
                key: None,
            },
        );
        assert_eq!(
            out,
            hex("02 03 00 00 00 00 00 27 16 00 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 00 00 00 00 01 00 00 00 0d 01 01 00 01 61 00 00 00 00 00 00 00 01")
        );

        let mut not_found = hex("02 03 00 00 00 00 00 16 16 00 00 00 00 02");
        not_found.extend_from_slice(&[0; 16]);
        out.clear();
        write_single_reply(
            &mut out,
            &Reply {
                result: ResultCode::KeyNotFound,
                generation: 0,
                void_time: 0,
                bins: vec![],
                key: None,
            },
        );
        assert_eq!(out, not_found);
        out.clear();
        write_result_reply(&mut out, 2);
        assert_eq!(out, not_found);
    }

    #[test]
    fn reply_bins_carry_their_particle_types() {
        let bins = vec![
            ReplyBin {
                name: Some(a()),
                value: Some(Value::Bool(true)),
            },
            ReplyBin {
                name: None,
                value: None,
            },
            ReplyBin {
                name: Some(a()),
                value: Some(Value::Blob(9, b"py".to_vec())),
            },
            ReplyBin {
                name: Some(a()),
                value: Some(Value::Double(1.5)),
            },
        ];
        let mut out = Vec::new();
        write_record(
            &mut out,
            0,
            0,
            3,
            77,
            5,
            &[(FIELD_NAMESPACE, b"test")],
            &bins,
        );
        let msg = parse(&out).unwrap();
        assert_eq!(msg.header.generation, 3);
        assert_eq!(msg.header.record_ttl, 77);
        assert_eq!(msg.header.transaction_ttl, 5);
        assert_eq!(msg.fields.namespace, Some(&b"test"[..]));
        let ops: Vec<_> = msg
            .ops
            .iter()
            .map(|o| (o.op, o.particle_type, o.name, o.value))
            .collect();
        assert_eq!(
            ops,
            [
                (OP_READ, 17, &b"a"[..], &[1u8][..]),
                (OP_READ, 0, &b""[..], &[][..]),
                (OP_READ, 9, &b"a"[..], &b"py"[..]),
                (OP_READ, 2, &b"a"[..], &1.5f64.to_be_bytes()[..]),
            ]
        );
    }

    #[test]
    fn scan_rows_carry_their_identity() {
        let d = Digest(digest());
        let key = StoredKey {
            particle_type: 3,
            bytes: b"key1".to_vec(),
        };
        let bins = [ReplyBin {
            name: Some(a()),
            value: Some(Value::Integer(1)),
        }];
        let mut out = Vec::new();
        let row = RowIdentity {
            namespace: b"test",
            set: b"demo",
            digest: &d,
            key: Some(&key),
        };
        write_scan_row(&mut out, &row, 4, 99, &bins);
        let msg = parse(&out).unwrap();
        assert_eq!((msg.header.generation, msg.header.record_ttl), (4, 99));
        assert_eq!(msg.fields.namespace, Some(&b"test"[..]));
        assert_eq!(msg.fields.set, Some(&b"demo"[..]));
        assert_eq!(msg.fields.digest, Some(d.0));
        assert_eq!(msg.fields.key, Some((3, &b"key1"[..])));
        assert_eq!(msg.ops.len(), 1);

        out.clear();
        let bare = RowIdentity {
            set: b"",
            key: None,
            ..row
        };
        write_scan_row(&mut out, &bare, 1, 0, &[]);
        let msg = parse(&out).unwrap();
        assert_eq!(msg.header.n_fields, 2);
        assert_eq!((msg.fields.set, msg.fields.key), (None, None));
    }

    #[test]
    fn stream_markers() {
        let mut out = Vec::new();
        write_partition_done(&mut out, 4095, 11);
        write_last(&mut out, 0);
        let done = parse(&out[..22]).unwrap().header;
        assert_eq!(
            (done.info3, done.generation, done.result_code),
            (INFO3_PARTITION_DONE, 4095, 11)
        );
        let last = parse(&out[22..]).unwrap().header;
        assert_eq!((last.info3, last.result_code), (INFO3_LAST, 0));
    }

    #[test]
    fn bin_name_of_16_bytes_is_21() {
        let r = request_with(
            write_header(),
            &[(OP_WRITE, 1, b"sixteen_chars_xx", &1i64.to_be_bytes())],
        );
        assert_eq!(r.unwrap_err(), ResultCode::BinNameTooLong);
        // 15 bytes is fine.
        assert!(request_with(
            write_header(),
            &[(OP_WRITE, 1, b"fifteen_chars_x", &1i64.to_be_bytes())]
        )
        .is_ok());
        let long_read = request_with(MsgHeader::default(), &[(OP_READ, 0, &[b'r'; 200], b"")]);
        assert_eq!(long_read.unwrap_err(), ResultCode::BinNameTooLong);
    }

    #[test]
    fn modelled_elsewhere_op_codes_are_16_unknown_ones_4() {
        for code in [3u8, 4, 7, 8, 12, 13, 15, 16, 17, 18, 19] {
            let r = request_with(write_header(), &[(code, 20, b"a", b"\x90")]);
            assert_eq!(r.unwrap_err(), ResultCode::Unsupported, "op {code}");
        }
        for code in [0u8, 6, 20, 21, 100, 255] {
            let r = request_with(write_header(), &[(code, 0, b"a", b"")]);
            assert_eq!(r.unwrap_err(), ResultCode::ParameterError, "op {code}");
        }
    }

    #[test]
    fn bad_particle_bytes_are_4() {
        let cases: [(u8, &[u8]); 5] = [
            (1, &[0, 1]), // integer of 2 bytes
            (2, &[0; 9]), // double of 9 bytes
            (17, &[]),    // bool of 0 bytes
            (5, b"x"),    // unknown particle type
            (0, b"x"),    // nil with bytes
        ];
        for (particle_type, value) in cases {
            let r = request_with(write_header(), &[(OP_WRITE, particle_type, b"a", value)]);
            assert_eq!(
                r.unwrap_err(),
                ResultCode::ParameterError,
                "{particle_type} {value:?}"
            );
            let r = request_with(write_header(), &[(OP_INCR, particle_type, b"a", value)]);
            assert_eq!(r.unwrap_err(), ResultCode::ParameterError);
        }
    }

    #[test]
    fn ops_map_to_engine_ops() {
        let one = 1i64.to_be_bytes();
        let r = request_with(
            MsgHeader {
                info1: INFO1_READ,
                info2: INFO2_WRITE | INFO2_RESPOND_ALL_OPS,
                record_ttl: 3600,
                ..MsgHeader::default()
            },
            &[
                (OP_WRITE, 0, b"gone", b""),
                (OP_INCR, 1, b"a", &one),
                (OP_APPEND, 3, b"s", b"x"),
                (OP_PREPEND, 4, b"b", b"y"),
                (OP_TOUCH, 0, b"", b""),
                (OP_READ, 0, b"a", b""),
                (OP_READ, 0, b"", b""),
                (OP_DELETE, 0, b"", b""),
            ],
        )
        .unwrap();
        let name = |n: &[u8]| BinName::new(n).unwrap();
        let request = r.txn.request;
        assert_eq!(
            request.ops,
            [
                Op::delete_bin(name(b"gone")),
                Op::incr(name(b"a"), Value::Integer(1)),
                Op::append(name(b"s"), Value::String(b"x".to_vec())),
                Op::prepend(name(b"b"), Value::Blob(4, b"y".to_vec())),
                Op::touch(),
                Op::read(name(b"a")),
                Op::read_all(),
                Op::delete_all(),
            ]
        );
        assert!(request.respond_all_ops);
        assert_eq!(request.ttl, Ttl::Seconds(3600));
    }

    #[test]
    fn info_bits_map_to_policies() {
        let put = |info2: u8, info3: u8, generation: u32, record_ttl: u32| {
            request_with(
                MsgHeader {
                    info2: INFO2_WRITE | info2,
                    info3,
                    generation,
                    record_ttl,
                    ..MsgHeader::default()
                },
                &[(OP_WRITE, 3, b"a", b"v")],
            )
            .map(|s| s.txn.request)
        };
        assert_eq!(put(0, 0, 0, 0).unwrap().exists, ExistsAction::Update);
        assert_eq!(
            put(INFO2_CREATE_ONLY, 0, 0, 0).unwrap().exists,
            ExistsAction::CreateOnly
        );
        assert_eq!(
            put(0, INFO3_UPDATE_ONLY, 0, 0).unwrap().exists,
            ExistsAction::UpdateOnly
        );
        assert_eq!(
            put(0, INFO3_CREATE_OR_REPLACE, 0, 0).unwrap().exists,
            ExistsAction::CreateOrReplace
        );
        assert_eq!(
            put(0, INFO3_REPLACE_ONLY, 0, 0).unwrap().exists,
            ExistsAction::ReplaceOnly
        );
        assert_eq!(
            put(INFO2_CREATE_ONLY, INFO3_REPLACE_ONLY, 0, 0).unwrap_err(),
            ResultCode::ParameterError
        );
        assert_eq!(
            put(INFO2_GENERATION, 0, 7, 0).unwrap().generation,
            GenerationCheck::Equal(7)
        );
        assert_eq!(
            put(INFO2_GENERATION_GT, 0, 7, 0).unwrap().generation,
            GenerationCheck::Greater(7)
        );
        assert_eq!(
            put(INFO2_GENERATION | INFO2_GENERATION_GT, 0, 7, 0).unwrap_err(),
            ResultCode::ParameterError
        );
        assert_eq!(put(0, 0, 0, u32::MAX).unwrap().ttl, Ttl::NeverExpire);
        assert_eq!(put(0, 0, 0, u32::MAX - 1).unwrap().ttl, Ttl::KeepCurrent);
        // Out of range: handed on for the engine to refuse in Aerospike's order.
        assert_eq!(
            put(0, 0, 0, ops::MAX_TTL_S + 1).unwrap().ttl,
            Ttl::Seconds(ops::MAX_TTL_S + 1)
        );

        // Reads ignore record_ttl (read-touch-ttl-percent) and map info1.
        let read = request_with(
            MsgHeader {
                info1: INFO1_READ | INFO1_NOBINDATA,
                record_ttl: 50,
                ..MsgHeader::default()
            },
            &[],
        )
        .unwrap()
        .txn
        .request;
        assert!(read.header_only && !read.read_all_bins);
        assert_eq!(read.ttl, Ttl::NamespaceDefault);

        let delete = request_with(
            MsgHeader {
                info2: INFO2_WRITE | INFO2_DELETE | INFO2_DURABLE_DELETE,
                ..MsgHeader::default()
            },
            &[],
        )
        .unwrap();
        assert!(delete.txn.request.delete && delete.txn.durable_delete);

        let txn = request_with(
            MsgHeader {
                info4: INFO4_TXN_VERIFY_READ,
                ..MsgHeader::default()
            },
            &[],
        );
        assert_eq!(txn.unwrap_err(), ResultCode::Unsupported);
        // Error-detail verbosity bits are harmless.
        assert!(request_with(
            MsgHeader {
                info4: INFO4_ERROR_DETAIL_MASK,
                ..MsgHeader::default()
            },
            &[]
        )
        .is_ok());
    }

    #[test]
    fn too_many_ops_is_4() {
        let ops = vec![(OP_READ, 0u8, &b"a"[..], &b""[..]); ops::MAX_OPS + 1];
        let r = request_with(MsgHeader::default(), &ops);
        assert_eq!(r.unwrap_err(), ResultCode::ParameterError);
    }

    fn fields_request(fields: &[(u8, &[u8])]) -> Result<SingleRequest<'static>, ResultCode> {
        let bytes = body(MsgHeader::default(), fields, &[]);
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        single_request(&parse(bytes).unwrap())
    }

    #[test]
    fn namespace_digest_set_and_key_checks() {
        let d = digest();
        let ns = |n: &'static [u8]| fields_request(&[(FIELD_NAMESPACE, n), (FIELD_DIGEST, &d)]);
        assert!(ns(b"test").is_ok());
        assert_eq!(ns(b"\xFF\xFE").unwrap_err(), ResultCode::ParameterError);
        assert_eq!(ns(b"").unwrap_err(), ResultCode::NamespaceNotFound);
        assert!(ns(&[b'n'; 31]).is_ok());
        assert_eq!(ns(&[b'n'; 32]).unwrap_err(), ResultCode::NamespaceNotFound);
        assert_eq!(
            fields_request(&[(FIELD_DIGEST, &d)]).unwrap_err(),
            ResultCode::ParameterError
        );
        assert_eq!(
            fields_request(&[(FIELD_NAMESPACE, b"test")]).unwrap_err(),
            ResultCode::ParameterError
        );
        // A digest of the wrong size is a bad field: 4.
        assert_eq!(
            fields_request(&[(FIELD_NAMESPACE, b"test"), (FIELD_DIGEST, &d[..19])]).unwrap_err(),
            ResultCode::ParameterError
        );
        let set_of = |len: usize| {
            let set: &'static [u8] = Box::leak(vec![b's'; len].into_boxed_slice());
            fields_request(&[
                (FIELD_NAMESPACE, b"test"),
                (FIELD_SET, set),
                (FIELD_DIGEST, &d),
            ])
        };
        assert!(set_of(63).is_ok());
        assert_eq!(set_of(64).unwrap_err(), ResultCode::ParameterError);

        let key = |k: &'static [u8]| {
            fields_request(&[
                (FIELD_NAMESPACE, b"test"),
                (FIELD_KEY, k),
                (FIELD_DIGEST, &d),
            ])
        };
        // §5.5: Python POLICY_KEY_SEND with int 5.
        let sent = key(&[1, 0, 0, 0, 0, 0, 0, 0, 5]).unwrap().txn.request;
        assert_eq!(
            sent.key,
            Some(StoredKey {
                particle_type: 1,
                bytes: vec![0, 0, 0, 0, 0, 0, 0, 5]
            })
        );
        // The client's digest stands even when a key is sent.
        assert_eq!(sent.digest, Digest(d));
        assert!(key(b"\x03key1").is_ok());
        assert!(key(b"\x04").is_ok());
        assert_eq!(key(&[1, 0, 5]).unwrap_err(), ResultCode::ParameterError);
        assert_eq!(
            key(b"\x02abcdefgh").unwrap_err(),
            ResultCode::ParameterError
        );
        assert_eq!(key(b"").unwrap_err(), ResultCode::ParameterError);
    }

    #[test]
    fn fields_asking_for_missing_features_are_16() {
        let d = digest();
        for field_type in [
            FIELD_RECORD_VERSION,
            FIELD_TXN_ID,
            FIELD_TXN_DEADLINE,
            FIELD_BVAL_ARRAY,
            FIELD_INDEX_NAME,
            FIELD_UDF_PACKAGE,
            FIELD_UDF_OP,
            FIELD_FILTER,
        ] {
            let r = fields_request(&[
                (FIELD_NAMESPACE, b"test"),
                (FIELD_DIGEST, &d),
                (field_type, b"x"),
            ]);
            assert_eq!(
                r.unwrap_err(),
                ResultCode::Unsupported,
                "field {field_type}"
            );
        }
        // Unknown fields are skipped and counted.
        let bytes = body(
            MsgHeader::default(),
            &[
                (FIELD_NAMESPACE, b"test"),
                (FIELD_DIGEST, &d),
                (200, b"?"),
                (45, b""),
            ],
            &[],
        );
        let msg = parse(&bytes).unwrap();
        assert_eq!(msg.fields.unknown, 2);
        assert!(single_request(&msg).is_ok());
    }

    #[test]
    fn framing_errors_name_their_offset() {
        let frame = put_frame();
        let body = &frame[8..];
        // Every truncation is malformed, never a panic.
        for cut in 0..body.len() {
            assert!(parse(&body[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad_size = body.to_vec();
        bad_size[0] = 23;
        assert_eq!(
            parse(&bad_size).unwrap_err(),
            MsgError::Malformed {
                offset: 0,
                what: "message header size is not 22"
            }
        );
        // The op at body offset 65 claims a huge size: its value (at 74) runs
        // past the body.
        let mut huge = body.to_vec();
        huge[65..69].copy_from_slice(&u32::MAX.to_be_bytes());
        let e = parse(&huge).unwrap_err();
        assert!(matches!(e, MsgError::Malformed { offset: 74, .. }), "{e}");
        assert!(e.to_string().contains("byte 74"), "{e}");
        // An op size under 4.
        let mut small = body.to_vec();
        small[65..69].copy_from_slice(&3u32.to_be_bytes());
        assert_eq!(
            parse(&small).unwrap_err(),
            MsgError::Malformed {
                offset: 65,
                what: "op size under 4"
            }
        );
        // A name longer than the op.
        let mut name = body.to_vec();
        name[72] = 200;
        assert!(matches!(
            parse(&name).unwrap_err(),
            MsgError::Malformed { offset: 65, .. }
        ));
        // A field of size 0.
        let mut zero = body.to_vec();
        zero[22..26].fill(0);
        assert!(matches!(
            parse(&zero).unwrap_err(),
            MsgError::Malformed { offset: 22, .. }
        ));
        // More ops claimed than present, and trailing bytes.
        let mut more = body.to_vec();
        more[21] = 0xFF;
        assert!(parse(&more).is_err());
        let mut trailing = body.to_vec();
        trailing.push(0);
        assert!(parse(&trailing).is_err());
    }
}
