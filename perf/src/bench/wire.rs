//! The client side of the wire protocol that `osprey-bench` needs: request
//! encoders (info, LOGIN, single-key get/put/delete, batch-index reads) and
//! reply decoders (a single-record reply's result code, a batch reply
//! stream's rows). Constants and the frame helpers come from the server's
//! codec (`osprey_net::wire`); everything client-only lives here.
//!
//! Requests are built into a caller's buffer (cleared first) so that a
//! connection reuses one allocation for its whole life.

use osprey_engine::digest::{Digest, DIGEST_LEN, KEY_TYPE_INTEGER};
use osprey_engine::UserKey;
use osprey_net::wire::admin;
use osprey_net::wire::msg::{
    self, MsgHeader, FIELD_BATCH_INDEX, FIELD_DIGEST, FIELD_NAMESPACE, FIELD_SET, INFO1_BATCH,
    INFO1_GET_ALL, INFO1_READ, INFO2_DELETE, INFO2_WRITE, INFO3_CREATE_OR_REPLACE, INFO3_LAST,
    MSG_HEADER_BYTES, OP_WRITE,
};
use osprey_net::wire::proto::{begin_frame, end_frame, FrameKind, PROTO_HEADER_BYTES};

/// Largest reply body the bench accepts (the protocol's limit).
pub const MAX_REPLY_BODY_BYTES: usize = osprey_net::wire::proto::MAX_BODY_BYTES;

/// Result code of a LOGIN to a server without security (spec §9.2): the
/// clients treat it as success.
pub const RESULT_SECURITY_NOT_ENABLED: u8 = 52;
/// Result code "key not found".
pub const RESULT_NOT_FOUND: u8 = 2;

/// Batch field flags the current clients send (spec §6): allow inline,
/// respond all keys, report row errors.
const BATCH_FLAGS: u8 = 0x01 | 0x04 | 0x08;
/// Batch row types: the first row carries info bytes and a TTL, the rest
/// repeat it.
const ROW_INFO_TTL: u8 = 0x02 | 0x08;
const ROW_REPEAT: u8 = 0x01;

/// One bin of the object spec, with the bytes every write sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bin {
    pub name: String,
    pub particle_type: u8,
    pub value: Vec<u8>,
}

/// The digest of integer key `key` in `set` (spec §3).
pub fn key_digest(set: &str, key: i64) -> [u8; DIGEST_LEN] {
    Digest::compute(set, &UserKey::Integer(key)).0
}

/// Partition id of a digest: its first 4 bytes little-endian, mod 4096.
pub fn partition_of(digest: &[u8; DIGEST_LEN]) -> usize {
    let word = u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]]);
    (word & 4095) as usize
}

const _: () = assert!(KEY_TYPE_INTEGER == 1);

/// An info request for `commands` (each sent as one `\n`-terminated line).
pub fn info_request(out: &mut Vec<u8>, commands: &[&str]) {
    out.clear();
    let start = begin_frame(out, FrameKind::Info);
    for command in commands {
        out.extend_from_slice(command.as_bytes());
        out.push(b'\n');
    }
    end_frame(out, start);
}

/// Parses an info reply body into `(command, value)` pairs.
pub fn info_reply(body: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(body)
        .lines()
        .filter(|line| !line.is_empty())
        .map(|line| match line.split_once('\t') {
            Some((name, value)) => (name.to_string(), value.to_string()),
            None => (line.to_string(), String::new()),
        })
        .collect()
}

/// A LOGIN admin request (spec §9.2) with the client-side bcrypt hash.
pub fn login_request(out: &mut Vec<u8>, user: &str, credential: &str) {
    out.clear();
    let start = begin_frame(out, FrameKind::Admin);
    let mut header = [0u8; admin::ADMIN_HEADER_BYTES];
    header[2] = admin::LOGIN;
    header[3] = 2;
    out.extend_from_slice(&header);
    for (id, data) in [
        (admin::FIELD_USER, user.as_bytes()),
        (admin::FIELD_CREDENTIAL, credential.as_bytes()),
    ] {
        let size = u32::try_from(data.len() + 1).expect("admin field under 4 GiB");
        out.extend_from_slice(&size.to_be_bytes());
        out.push(id);
        out.extend_from_slice(data);
    }
    end_frame(out, start);
}

/// The result code of an admin reply body (byte 1 of the admin header).
pub fn admin_result(body: &[u8]) -> Option<u8> {
    body.get(1).copied()
}

/// What a single-key command does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SingleKind {
    /// Get all bins.
    Read,
    /// Put every bin, merging with the record (exists policy UPDATE).
    Update,
    /// Put every bin, replacing the record (CREATE_OR_REPLACE).
    Replace,
    Delete,
}

fn push_key_fields(out: &mut Vec<u8>, namespace: &str, set: &str, digest: &[u8; DIGEST_LEN]) {
    msg::write_field(out, FIELD_NAMESPACE, namespace.as_bytes());
    msg::write_field(out, FIELD_SET, set.as_bytes());
    msg::write_field(out, FIELD_DIGEST, digest);
}

/// A single-key AS_MSG request (spec §5). `bins` are written by Update
/// and Replace and ignored otherwise.
pub fn single_request(
    out: &mut Vec<u8>,
    kind: SingleKind,
    namespace: &str,
    set: &str,
    digest: &[u8; DIGEST_LEN],
    bins: &[Bin],
) {
    out.clear();
    let start = begin_frame(out, FrameKind::Msg);
    let mut header = MsgHeader {
        n_fields: 3,
        ..MsgHeader::default()
    };
    match kind {
        SingleKind::Read => header.info1 = INFO1_READ | INFO1_GET_ALL,
        SingleKind::Update => header.info2 = INFO2_WRITE,
        SingleKind::Replace => {
            header.info2 = INFO2_WRITE;
            header.info3 = INFO3_CREATE_OR_REPLACE;
        }
        SingleKind::Delete => header.info2 = INFO2_WRITE | INFO2_DELETE,
    }
    let writes = matches!(kind, SingleKind::Update | SingleKind::Replace);
    if writes {
        header.n_ops = u16::try_from(bins.len()).expect("under 65536 bins");
    }
    header.write(out);
    push_key_fields(out, namespace, set, digest);
    if writes {
        for bin in bins {
            let size =
                u32::try_from(4 + bin.name.len() + bin.value.len()).expect("bin under 4 GiB");
            out.extend_from_slice(&size.to_be_bytes());
            out.extend_from_slice(&[
                OP_WRITE,
                bin.particle_type,
                0,
                u8::try_from(bin.name.len()).expect("bin name under 256 bytes"),
            ]);
            out.extend_from_slice(bin.name.as_bytes());
            out.extend_from_slice(&bin.value);
        }
    }
    end_frame(out, start);
}

/// A batch-index read of all bins of `digests` (spec §6): the first row
/// carries namespace, set and info bytes, the others repeat it.
pub fn batch_read_request(
    out: &mut Vec<u8>,
    namespace: &str,
    set: &str,
    digests: &[[u8; DIGEST_LEN]],
) {
    assert!(!digests.is_empty(), "a batch of no keys");
    out.clear();
    let start = begin_frame(out, FrameKind::Msg);
    MsgHeader {
        info1: INFO1_BATCH,
        n_fields: 1,
        ..MsgHeader::default()
    }
    .write(out);
    let field_start = out.len();
    out.extend_from_slice(&[0; 5]); // size and type, patched below
    out.extend_from_slice(
        &u32::try_from(digests.len())
            .expect("batch count")
            .to_be_bytes(),
    );
    out.push(BATCH_FLAGS);
    for (index, digest) in digests.iter().enumerate() {
        out.extend_from_slice(&u32::try_from(index).expect("row index").to_be_bytes());
        out.extend_from_slice(digest);
        if index == 0 {
            out.push(ROW_INFO_TTL);
            out.extend_from_slice(&[INFO1_READ | INFO1_GET_ALL, 0, 0]);
            out.extend_from_slice(&0u32.to_be_bytes()); // ttl
            out.extend_from_slice(&2u16.to_be_bytes()); // fields
            out.extend_from_slice(&0u16.to_be_bytes()); // ops
            msg::write_field(out, FIELD_NAMESPACE, namespace.as_bytes());
            msg::write_field(out, FIELD_SET, set.as_bytes());
        } else {
            out.push(ROW_REPEAT);
        }
    }
    let field_size = u32::try_from(out.len() - field_start - 4).expect("batch field under 4 GiB");
    out[field_start..field_start + 4].copy_from_slice(&field_size.to_be_bytes());
    out[field_start + 4] = FIELD_BATCH_INDEX;
    end_frame(out, start);
}

/// A complete frame at the front of `buf`: its type and body range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub body_start: usize,
    pub body_end: usize,
}

/// Why a reply cannot be read; the connection is closed after any of these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyError {
    BadVersion(u8),
    TooLarge(u64),
    UnexpectedKind(u8),
    Malformed(&'static str),
}

impl std::fmt::Display for ReplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplyError::BadVersion(v) => write!(f, "reply with protocol version {v}"),
            ReplyError::TooLarge(n) => write!(f, "reply of {n} bytes"),
            ReplyError::UnexpectedKind(k) => write!(f, "reply of frame type {k}"),
            ReplyError::Malformed(what) => write!(f, "malformed reply: {what}"),
        }
    }
}

/// The first complete frame in `buf`, or `None` if more bytes are needed.
pub fn next_frame(buf: &[u8]) -> Result<Option<Frame>, ReplyError> {
    if buf.len() < PROTO_HEADER_BYTES {
        return Ok(None);
    }
    if buf[0] != 2 {
        return Err(ReplyError::BadVersion(buf[0]));
    }
    let mut word = [0u8; 8];
    word.copy_from_slice(&buf[..8]);
    let size = u64::from_be_bytes(word) & ((1 << 48) - 1);
    if size > MAX_REPLY_BODY_BYTES as u64 {
        return Err(ReplyError::TooLarge(size));
    }
    let body_end = PROTO_HEADER_BYTES + size as usize;
    if buf.len() < body_end {
        return Ok(None);
    }
    Ok(Some(Frame {
        kind: buf[1],
        body_start: PROTO_HEADER_BYTES,
        body_end,
    }))
}

/// The result code of a single-record reply body.
pub fn single_result(body: &[u8]) -> Result<u8, ReplyError> {
    if body.len() < MSG_HEADER_BYTES || usize::from(body[0]) != MSG_HEADER_BYTES {
        return Err(ReplyError::Malformed("short message header"));
    }
    Ok(body[5])
}

/// Row counts of a batch reply, accumulated over its frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchTally {
    pub found: u64,
    pub not_found: u64,
    /// Rows with another result code; the last such code.
    pub row_errors: u64,
    pub last_row_error: u8,
    /// Set by the LAST record: the batch-level result code.
    pub done: Option<u8>,
}

/// Adds the records of one batch reply frame body to `tally`.
pub fn batch_frame(body: &[u8], tally: &mut BatchTally) -> Result<(), ReplyError> {
    let mut at = 0;
    while at < body.len() {
        if tally.done.is_some() {
            return Err(ReplyError::Malformed("records after the LAST record"));
        }
        let header = body
            .get(at..at + MSG_HEADER_BYTES)
            .ok_or(ReplyError::Malformed("short batch record header"))?;
        if usize::from(header[0]) != MSG_HEADER_BYTES {
            return Err(ReplyError::Malformed("batch record header size"));
        }
        let (info3, result) = (header[3], header[5]);
        let n_fields = u16::from_be_bytes([header[18], header[19]]);
        let n_ops = u16::from_be_bytes([header[20], header[21]]);
        at += MSG_HEADER_BYTES;
        // Fields and ops both start with a u32 size that counts what follows.
        for _ in 0..u32::from(n_fields) + u32::from(n_ops) {
            let size = body
                .get(at..at + 4)
                .ok_or(ReplyError::Malformed("short field or op size"))?;
            let size = u32::from_be_bytes([size[0], size[1], size[2], size[3]]) as usize;
            at = at
                .checked_add(4 + size)
                .filter(|&end| end <= body.len())
                .ok_or(ReplyError::Malformed("field or op past the frame"))?;
        }
        if info3 & INFO3_LAST != 0 {
            tally.done = Some(result);
        } else {
            match result {
                0 => tally.found += 1,
                RESULT_NOT_FOUND => tally.not_found += 1,
                code => {
                    tally.row_errors += 1;
                    tally.last_row_error = code;
                }
            }
        }
    }
    Ok(())
}

/// Decodes the bcrypt flavour of base64 (alphabet `./A-Za-z0-9`, no
/// padding), as the 22-character salt of a bcrypt string uses it.
pub fn bcrypt_base64_decode(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8; 64] = b"./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let value = ALPHABET.iter().position(|&a| a == c)? as u32;
        acc = (acc << 6) | value;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Decodes standard base64 with `=` padding (the `replicas` bitmaps).
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let value = ALPHABET.iter().position(|&a| a == c)? as u32;
        acc = (acc << 6) | value;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// The fixed salt every Aerospike client hashes passwords with (spec §9.1).
const CLIENT_SALT: &str = "7EqJtq98hPqEX7fNZaFWoO";

/// The credential a client sends in LOGIN: bcrypt, cost 10, fixed salt,
/// formatted as `$2a$`.
pub fn client_password_hash(password: &str) -> String {
    let salt = bcrypt_base64_decode(CLIENT_SALT).expect("the fixed salt is valid");
    let salt: [u8; 16] = salt.try_into().expect("the fixed salt is 16 bytes");
    bcrypt::hash_with_salt(password, 10, salt)
        .expect("cost 10 is valid")
        .format_for_version(bcrypt::Version::TwoA)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_hashes_match_the_spec_vectors() {
        assert_eq!(
            client_password_hash("admin"),
            "$2a$10$7EqJtq98hPqEX7fNZaFWoO1mVO/4MLpGzsqojz6E9Gef6iXDjXdDa"
        );
        assert_eq!(
            client_password_hash(""),
            "$2a$10$7EqJtq98hPqEX7fNZaFWoOLCkFexA7A9eoJ0Ew.mTDdk.E60D.9zS"
        );
    }

    #[test]
    fn digests_and_partitions_match_the_spec_vectors() {
        let d = key_digest("set", 1);
        assert_eq!(partition_of(&d), 1922);
    }

    #[test]
    fn replicas_bitmaps_decode() {
        let all = format!("{}//8=", "/".repeat(680));
        let bytes = base64_decode(&all).unwrap();
        assert_eq!(bytes.len(), 512);
        assert!(bytes.iter().all(|&b| b == 0xFF));
        let none = format!("{}AAA=", "A".repeat(680));
        assert!(base64_decode(&none).unwrap().iter().all(|&b| b == 0));
        assert_eq!(base64_decode("qqqq").unwrap(), vec![0xAA, 0xAA, 0xAA]);
    }

    #[test]
    fn a_put_is_framed_like_the_python_client() {
        let digest: [u8; 20] = Digest::from_hex("ec91192d4b7f8ce35d5d78d34bca65cbaaaac960")
            .unwrap()
            .0;
        let bin = Bin {
            name: "a".into(),
            particle_type: 1,
            value: 1i64.to_be_bytes().to_vec(),
        };
        let mut out = Vec::new();
        single_request(
            &mut out,
            SingleKind::Update,
            "test",
            "demo",
            &digest,
            &[bin],
        );
        // As the spec's capture, but with transaction_ttl 0 (no timeout).
        assert_eq!(out.len(), 90);
        assert_eq!(&out[..8], &[2, 3, 0, 0, 0, 0, 0, 0x52]);
        assert_eq!(&out[8..12], &[0x16, 0, 1, 0]);
        assert_eq!(&out[26..30], &[0, 3, 0, 1]);
    }

    #[test]
    fn a_batch_reply_is_tallied() {
        let mut body = Vec::new();
        for rc in [0u8, 2, 0, 9] {
            MsgHeader {
                result_code: rc,
                n_ops: 1,
                ..MsgHeader::default()
            }
            .write(&mut body);
            body.extend_from_slice(&[0, 0, 0, 5, 1, 4, 0, 1, b'x']);
        }
        MsgHeader {
            info3: INFO3_LAST,
            ..MsgHeader::default()
        }
        .write(&mut body);
        let mut tally = BatchTally::default();
        batch_frame(&body, &mut tally).unwrap();
        assert_eq!(
            tally,
            BatchTally {
                found: 2,
                not_found: 1,
                row_errors: 1,
                last_row_error: 9,
                done: Some(0),
            }
        );
        let mut truncated = BatchTally::default();
        assert!(batch_frame(&body[..30], &mut truncated).is_err());
    }
}
