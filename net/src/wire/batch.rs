//! Batch-index requests (spec §6): field 41 of an AS_MSG whose info1 has
//! BATCH, holding one row per key.
//!
//! ```text
//! u32 row count, u8 batch flags, then per row:
//!   u32 row index, 20-byte digest, u8 row type, and by type:
//!   0x01 REPEAT  nothing: namespace, set, info bits, generation, TTL and
//!                ops are the previous row's
//!   0x00 (old)   u8 info1, u16 n_fields, u16 n_ops, fields, ops
//!   otherwise    bit flags: 0x02 → u8 info1, info2, info3; 0x10 → u8 info4;
//!                0x04 → u16 generation; 0x08 → u32 ttl;
//!                then u16 n_fields, u16 n_ops, fields, ops
//! ```
//!
//! Offsets in errors count from the first byte of field 41's data. The row
//! count is checked against the bytes present before any row is reserved.
//! A REPEAT row shares its predecessor's ops (an `Arc`), so a run of 25-byte
//! REPEAT rows cannot multiply one large op list into a large allocation.
//!
//! The outer message's own fields (a filter, 43) are the caller's to judge,
//! with [`crate::wire::msg::Fields::refusal`].

use std::sync::Arc;

use osprey_engine::digest::DIGEST_LEN;
use osprey_engine::result::ResultCode;

use super::msg::{
    read_fields, read_ops, record_request, MsgError, MsgHeader, RecordCommand, SingleRequest,
    WireOp, INFO1_BATCH, INFO1_COMPRESS_RESPONSE,
};
use super::reader::Reader;

// Batch flags (the byte after the row count).
pub const FLAG_ALLOW_INLINE: u8 = 0x01;
pub const FLAG_ALLOW_INLINE_SSD: u8 = 0x02;
pub const FLAG_RESPOND_ALL_KEYS: u8 = 0x04;
pub const FLAG_REPORT_ROW_ERRORS: u8 = 0x08;

// Row types.
pub const ROW_OLD_FORM: u8 = 0x00;
pub const ROW_REPEAT: u8 = 0x01;
pub const ROW_HAS_INFO: u8 = 0x02;
pub const ROW_HAS_GENERATION: u8 = 0x04;
pub const ROW_HAS_TTL: u8 = 0x08;
pub const ROW_HAS_INFO4: u8 = 0x10;
const ROW_FLAG_BITS: u8 = ROW_HAS_INFO | ROW_HAS_GENERATION | ROW_HAS_TTL | ROW_HAS_INFO4;

/// Smallest row: index, digest, type (a REPEAT row).
const MIN_ROW_BYTES: usize = 4 + DIGEST_LEN + 1;

/// One row of a batch, borrowed from field 41.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchRow<'a> {
    /// The client's row index, echoed as `transaction_ttl` in the reply.
    pub index: u32,
    pub digest: [u8; DIGEST_LEN],
    pub namespace: &'a [u8],
    /// Empty when the row names no set.
    pub set: &'a [u8],
    pub info1: u8,
    pub info2: u8,
    pub info3: u8,
    pub info4: u8,
    pub generation: u32,
    pub record_ttl: u32,
    /// Field 2 of this row. A REPEAT row has none: a key belongs to one
    /// record.
    pub key: Option<(u8, &'a [u8])>,
    /// Shared with the rows that repeat this one.
    pub ops: Arc<[WireOp<'a>]>,
    /// The row's fields make it unanswerable (4 or 16, as
    /// [`crate::wire::msg::Fields::refusal`]); a REPEAT row inherits it.
    pub refusal: Option<ResultCode>,
}

/// The batch flags byte of field 41 (`FLAG_*`), if the field holds one.
pub fn batch_flags(field41: &[u8]) -> Option<u8> {
    field41.get(4).copied()
}

/// Parses field 41. Items a row does not carry (info bits without 0x02, a
/// generation without 0x04, a TTL without 0x08) come from the outer header;
/// BATCH and COMPRESS_RESPONSE are never inherited into a row's info1, as
/// they describe the outer message only.
pub fn parse<'a>(field41: &'a [u8], outer: &MsgHeader) -> Result<Vec<BatchRow<'a>>, MsgError> {
    let mut r = Reader::new(field41);
    let count = r.u32("batch row count")? as usize;
    let _flags = r.u8("batch flags")?;
    if count > r.remaining() / MIN_ROW_BYTES {
        return Err(MsgError::Malformed {
            offset: 0,
            what: "batch row count claims more rows than the field holds",
        });
    }
    let mut rows: Vec<BatchRow<'a>> = Vec::with_capacity(count);
    for _ in 0..count {
        let row_at = r.offset();
        let index = r.u32("batch row index")?;
        let digest = r.array::<DIGEST_LEN>("batch row digest")?;
        let row_type = r.u8("batch row type")?;
        let row = match row_type {
            ROW_REPEAT => {
                let previous = rows.last().ok_or(MsgError::Malformed {
                    offset: row_at,
                    what: "the first batch row repeats a previous one",
                })?;
                BatchRow {
                    index,
                    digest,
                    key: None,
                    ..previous.clone()
                }
            }
            _ if row_type & !ROW_FLAG_BITS != 0 => {
                return Err(MsgError::Malformed {
                    offset: row_at + 24,
                    what: "unknown batch row type bits",
                });
            }
            _ => {
                let mut info1 = outer.info1 & !(INFO1_BATCH | INFO1_COMPRESS_RESPONSE);
                let mut info2 = outer.info2;
                let mut info3 = outer.info3;
                let mut info4 = outer.info4;
                let mut generation = outer.generation;
                let mut record_ttl = outer.record_ttl;
                if row_type == ROW_OLD_FORM {
                    info1 = r.u8("batch row info1")?;
                } else {
                    if row_type & ROW_HAS_INFO != 0 {
                        info1 = r.u8("batch row info1")?;
                        info2 = r.u8("batch row info2")?;
                        info3 = r.u8("batch row info3")?;
                    }
                    if row_type & ROW_HAS_INFO4 != 0 {
                        info4 = r.u8("batch row info4")?;
                    }
                    if row_type & ROW_HAS_GENERATION != 0 {
                        generation = u32::from(r.u16("batch row generation")?);
                    }
                    if row_type & ROW_HAS_TTL != 0 {
                        record_ttl = r.u32("batch row ttl")?;
                    }
                }
                let n_fields = r.u16("batch row field count")?;
                let n_ops = r.u16("batch row op count")?;
                let fields = read_fields(&mut r, n_fields)?;
                let ops = read_ops(&mut r, n_ops)?;
                let namespace = fields.namespace.ok_or(MsgError::Malformed {
                    offset: row_at,
                    what: "batch row without a namespace field",
                })?;
                BatchRow {
                    index,
                    digest,
                    namespace,
                    set: fields.set.unwrap_or_default(),
                    info1,
                    info2,
                    info3,
                    info4,
                    generation,
                    record_ttl,
                    key: fields.key,
                    ops: ops.into(),
                    refusal: fields.refusal().err(),
                }
            }
        };
        rows.push(row);
    }
    if r.remaining() != 0 {
        return Err(MsgError::Malformed {
            offset: r.offset(),
            what: "bytes after the last batch row",
        });
    }
    Ok(rows)
}

/// Maps a row to an engine transaction, with the same rules and result
/// codes as [`crate::wire::msg::single_request`].
pub fn row_request<'a>(row: &BatchRow<'a>) -> Result<SingleRequest<'a>, ResultCode> {
    if let Some(code) = row.refusal {
        return Err(code);
    }
    record_request(&RecordCommand {
        info1: row.info1,
        info2: row.info2,
        info3: row.info3,
        info4: row.info4,
        generation: row.generation,
        record_ttl: row.record_ttl,
        namespace: Some(row.namespace),
        set: Some(row.set),
        key: row.key,
        digest: Some(row.digest),
        ops: &row.ops,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::msg::tests::{body, hex};
    use crate::wire::msg::{
        parse as parse_msg, FIELD_BATCH_INDEX, FIELD_KEY, FIELD_NAMESPACE, FIELD_SET,
        INFO1_GET_ALL, INFO1_READ, INFO2_RESPOND_ALL_OPS, INFO2_WRITE, OP_READ, OP_WRITE,
    };
    use osprey_engine::digest::{Digest, UserKey};
    use osprey_engine::ops::{Op, Ttl};
    use osprey_engine::record::{BinName, Value};

    fn digest_of(key: &str) -> [u8; 20] {
        Digest::compute("demo", &UserKey::String(key.into())).0
    }

    fn hexs(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// §11: the batch field the Python client sends for 2 keys.
    fn python_two_keys() -> Vec<u8> {
        let (d1, d2) = (hexs(&digest_of("key1")), hexs(&digest_of("key2")));
        hex(&format!(
            "00 00 00 02 0d | 00 00 00 00 {d1} 0a 03 00 00 00000000 00 02 00 00
             00000005 00 74657374 00000005 01 64656d6f | 00 00 00 01 {d2} 01"
        ))
    }

    fn outer() -> MsgHeader {
        MsgHeader {
            info1: INFO1_BATCH,
            transaction_ttl: 1000,
            n_fields: 1,
            ..MsgHeader::default()
        }
    }

    #[test]
    fn spec_python_batch_of_two_keys() {
        let field = python_two_keys();
        assert_eq!(batch_flags(&field), Some(0x0d));
        let rows = parse(&field, &outer()).unwrap();
        assert_eq!(rows.len(), 2);
        for (i, row) in rows.iter().enumerate() {
            assert_eq!(row.index, i as u32);
            assert_eq!(row.namespace, b"test");
            assert_eq!(row.set, b"demo");
            assert_eq!((row.info1, row.info2, row.info3), (0x03, 0, 0));
            assert!(row.ops.is_empty());
        }
        assert_eq!(rows[0].digest, digest_of("key1"));
        assert_eq!(rows[1].digest, digest_of("key2"));
        let second = row_request(&rows[1]).unwrap();
        assert_eq!(second.namespace, "test");
        assert!(second.txn.request.read_all_bins);
        assert_eq!(second.txn.request.digest, Digest(digest_of("key2")));
        assert_eq!(second.txn.request.set_name, b"demo");

        // The same field inside a whole batch message.
        let msg_body = body(outer(), &[(FIELD_BATCH_INDEX, &field)], &[]);
        let msg = parse_msg(&msg_body).unwrap();
        assert_eq!(msg.fields.batch, Some(&field[..]));
        assert_eq!(parse(msg.fields.batch.unwrap(), &msg.header).unwrap(), rows);
    }

    fn row(out: &mut Vec<u8>, index: u32, key: &str, row_type: u8) {
        out.extend_from_slice(&index.to_be_bytes());
        out.extend_from_slice(&digest_of(key));
        out.push(row_type);
    }

    fn field(out: &mut Vec<u8>, t: u8, data: &[u8]) {
        out.extend_from_slice(&((data.len() + 1) as u32).to_be_bytes());
        out.push(t);
        out.extend_from_slice(data);
    }

    #[test]
    fn write_rows_old_rows_and_repeats() {
        let mut f = 3u32.to_be_bytes().to_vec();
        f.push(0x0d);
        // Row 0: a write with INFO|GEN|TTL, a key and one op.
        row(
            &mut f,
            0,
            "key1",
            ROW_HAS_INFO | ROW_HAS_GENERATION | ROW_HAS_TTL,
        );
        f.extend_from_slice(&[0, INFO2_WRITE | INFO2_RESPOND_ALL_OPS, 0]);
        f.extend_from_slice(&7u16.to_be_bytes());
        f.extend_from_slice(&60u32.to_be_bytes());
        f.extend_from_slice(&3u16.to_be_bytes());
        f.extend_from_slice(&1u16.to_be_bytes());
        field(&mut f, FIELD_NAMESPACE, b"test");
        field(&mut f, FIELD_SET, b"demo");
        field(&mut f, FIELD_KEY, b"\x03key1");
        f.extend_from_slice(&13u32.to_be_bytes());
        f.extend_from_slice(&[OP_WRITE, 1, 0, 1, b'a']);
        f.extend_from_slice(&5i64.to_be_bytes());
        // Row 1 repeats it for another digest, without the key.
        row(&mut f, 1, "key2", ROW_REPEAT);
        // Row 2: the old form, a read of bin "a" without a set field.
        row(&mut f, 2, "key3", ROW_OLD_FORM);
        f.push(INFO1_READ);
        f.extend_from_slice(&1u16.to_be_bytes());
        f.extend_from_slice(&1u16.to_be_bytes());
        field(&mut f, FIELD_NAMESPACE, b"test");
        f.extend_from_slice(&5u32.to_be_bytes());
        f.extend_from_slice(&[OP_READ, 0, 0, 1, b'a']);

        let rows = parse(&f, &outer()).unwrap();
        assert_eq!(rows.len(), 3);
        let a = BinName::new(b"a").unwrap();
        let write = row_request(&rows[0]).unwrap().txn.request;
        assert_eq!(write.ops, [Op::write(a, Value::Integer(5))]);
        assert_eq!(write.ttl, Ttl::Seconds(60));
        assert_eq!(
            write.generation,
            osprey_engine::ops::GenerationCheck::None,
            "gen is only checked with info2 GENERATION"
        );
        assert_eq!(rows[0].generation, 7);
        assert!(write.respond_all_ops);
        assert!(write.key.is_some());
        let repeat = row_request(&rows[1]).unwrap().txn.request;
        assert_eq!(repeat.ops, write.ops);
        assert_eq!(repeat.digest, Digest(digest_of("key2")));
        assert_eq!(repeat.key, None);
        assert!(Arc::ptr_eq(&rows[0].ops, &rows[1].ops));
        let old = row_request(&rows[2]).unwrap().txn.request;
        assert_eq!(old.ops, [Op::read(a)]);
        assert!(old.set_name.is_empty());
        assert!(!old.writes());
    }

    #[test]
    fn rows_without_info_inherit_the_outer_header() {
        let mut f = 1u32.to_be_bytes().to_vec();
        f.push(0);
        row(&mut f, 9, "key1", ROW_HAS_TTL);
        f.extend_from_slice(&0u32.to_be_bytes());
        f.extend_from_slice(&1u16.to_be_bytes());
        f.extend_from_slice(&0u16.to_be_bytes());
        field(&mut f, FIELD_NAMESPACE, b"test");
        let header = MsgHeader {
            info1: INFO1_BATCH | INFO1_READ | INFO1_GET_ALL | INFO1_COMPRESS_RESPONSE,
            ..outer()
        };
        let rows = parse(&f, &header).unwrap();
        assert_eq!(rows[0].info1, INFO1_READ | INFO1_GET_ALL);
        assert_eq!(rows[0].index, 9);
    }

    #[test]
    fn row_result_codes_match_single_requests() {
        let mut f = 2u32.to_be_bytes().to_vec();
        f.push(0);
        row(&mut f, 0, "key1", ROW_HAS_INFO);
        f.extend_from_slice(&[0, INFO2_WRITE, 0]);
        f.extend_from_slice(&1u16.to_be_bytes());
        f.extend_from_slice(&1u16.to_be_bytes());
        field(&mut f, FIELD_NAMESPACE, b"test");
        let name = [b'n'; 16];
        f.extend_from_slice(&(4 + 16 + 8u32).to_be_bytes());
        f.extend_from_slice(&[OP_WRITE, 1, 0, 16]);
        f.extend_from_slice(&name);
        f.extend_from_slice(&1i64.to_be_bytes());
        row(&mut f, 1, "key2", ROW_HAS_INFO);
        f.extend_from_slice(&[INFO1_READ, 0, 0]);
        f.extend_from_slice(&2u16.to_be_bytes());
        f.extend_from_slice(&0u16.to_be_bytes());
        field(&mut f, FIELD_NAMESPACE, b"test");
        field(&mut f, 43, b"\x93");
        let rows = parse(&f, &outer()).unwrap();
        assert_eq!(
            row_request(&rows[0]).unwrap_err(),
            ResultCode::BinNameTooLong
        );
        assert_eq!(row_request(&rows[1]).unwrap_err(), ResultCode::Unsupported);
    }

    #[test]
    fn damaged_batch_fields_are_malformed() {
        let field = python_two_keys();
        for cut in 0..field.len() {
            assert!(parse(&field[..cut], &outer()).is_err(), "cut at {cut}");
        }
        // A count claiming more rows than bytes: refused before reserving.
        let mut lying = field.clone();
        lying[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            parse(&lying, &outer()).unwrap_err(),
            MsgError::Malformed {
                offset: 0,
                what: "batch row count claims more rows than the field holds"
            }
        );
        // A first row that repeats.
        let mut repeat_first = 1u32.to_be_bytes().to_vec();
        repeat_first.push(0);
        row(&mut repeat_first, 0, "key1", ROW_REPEAT);
        assert!(matches!(
            parse(&repeat_first, &outer()),
            Err(MsgError::Malformed { offset: 5, .. })
        ));
        // Unknown row type bits.
        let mut unknown = field.clone();
        unknown[29] = 0x40;
        assert!(parse(&unknown, &outer()).is_err());
        let mut trailing = field.clone();
        trailing.push(0);
        assert!(parse(&trailing, &outer()).is_err());
        // A row without a namespace.
        let mut no_ns = 1u32.to_be_bytes().to_vec();
        no_ns.push(0);
        row(&mut no_ns, 0, "key1", ROW_HAS_INFO);
        no_ns.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0]);
        assert!(parse(&no_ns, &outer()).is_err());
    }
}
