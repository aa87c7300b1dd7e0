//! Records and bins, and the flat image a record has on flash.
//!
//! A record is written as one contiguous image, a whole number of 16-byte
//! rblocks, never updated in place. All integers are little-endian.
//!
//! ```text
//! off size field
//!   0   4  magic "OSRC"
//!   4   4  size of the image in rblocks (16 bytes each)
//!   8   4  CRC-32C of the whole image, computed with this field zero
//!  12   2  generation
//!  14   1  flags: 0x01 tombstone, 0x02 user key stored
//!  15   1  set name length (0..=63; 0 = no set)
//!  16  20  digest
//!  36   4  void time (s since 2010-01-01, 0 = never)
//!  40   8  last-update time (ms since 2010-01-01)
//!  48   2  bin count
//!  50   8  life of the write block the image was written into (see below)
//!  58   …  set name bytes
//!       …  user key, if stored: particle type u8, length u32, bytes
//!       …  bins: name length u8 (1..=15), name, particle type u8,
//!          value length u32, value bytes
//!       …  zeros up to the next multiple of 16
//! ```
//!
//! Decoding never trusts the bytes: every length is bounds-checked and any
//! inconsistency is an [`ImageError`] naming the offset, never a panic.
//!
//! # Life
//!
//! A write block is reused after it empties, and its new life's first write
//! is meant to erase the old one. A drive with a volatile cache can lose any
//! part of that write at a power cut, so sectors of the old life can come
//! back from the media behind records of the new one. Every image therefore
//! carries the *life* of the block it sits in: a number the writer draws
//! each time it opens a block (unique per device, see `storage::namespace`),
//! and a cold scan of a block adopts only images of its first image's life.
//! The life is a property of where an image is stored, not of the record: a
//! copy into another block (defrag) is restamped with [`restamp_life`].

use std::fmt;

use crate::digest::{Digest, DIGEST_LEN};

pub const RBLOCK_BYTES: usize = 16;
pub const IMAGE_MAGIC: u32 = u32::from_le_bytes(*b"OSRC");
pub const IMAGE_HEADER_BYTES: usize = 58;
/// Offset of the life field in an image.
const LIFE_AT: usize = 50;
pub const MAX_BIN_NAME_BYTES: usize = 15;
pub const MAX_SET_NAME_BYTES: usize = 63;

const FLAG_TOMBSTONE: u8 = 0x01;
const FLAG_KEY_STORED: u8 = 0x02;

/// Particle types (spec §4.4).
pub mod particle {
    pub const NIL: u8 = 0;
    pub const INTEGER: u8 = 1;
    pub const DOUBLE: u8 = 2;
    pub const STRING: u8 = 3;
    pub const BLOB: u8 = 4;
    /// 7..=12: language-specific blobs (Java, C#, Python, Ruby, PHP, Erlang).
    pub const LANGUAGE_BLOBS: std::ops::RangeInclusive<u8> = 7..=12;
    pub const BOOL: u8 = 17;
    pub const HLL: u8 = 18;
    pub const MAP: u8 = 19;
    pub const LIST: u8 = 20;
    pub const GEOJSON: u8 = 23;
}

/// A bin value. Strings, blobs and the msgpack-encoded collections are kept
/// as the bytes the client sent.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Integer(i64),
    Double(f64),
    Bool(bool),
    String(Vec<u8>),
    /// A blob with its particle type: 4, or a language blob (7..=12).
    Blob(u8, Vec<u8>),
    Hll(Vec<u8>),
    Map(Vec<u8>),
    List(Vec<u8>),
    GeoJson(Vec<u8>),
}

/// Why bytes do not make a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueError {
    UnknownParticleType(u8),
    /// Integers and doubles are 8 bytes, bools 1.
    BadLength {
        particle_type: u8,
        len: usize,
    },
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueError::UnknownParticleType(t) => write!(f, "unknown particle type {t}"),
            ValueError::BadLength { particle_type, len } => {
                write!(
                    f,
                    "particle type {particle_type} cannot be {len} bytes long"
                )
            }
        }
    }
}

impl Value {
    /// Builds a value from a particle type and the value bytes as they are
    /// on the wire (integers and doubles big-endian).
    pub fn from_wire(particle_type: u8, bytes: &[u8]) -> Result<Value, ValueError> {
        let fixed = |n: usize| -> Result<(), ValueError> {
            if bytes.len() == n {
                Ok(())
            } else {
                Err(ValueError::BadLength {
                    particle_type,
                    len: bytes.len(),
                })
            }
        };
        Ok(match particle_type {
            particle::INTEGER => {
                fixed(8)?;
                Value::Integer(i64::from_be_bytes(
                    bytes.try_into().expect("checked length"),
                ))
            }
            particle::DOUBLE => {
                fixed(8)?;
                Value::Double(f64::from_be_bytes(
                    bytes.try_into().expect("checked length"),
                ))
            }
            particle::BOOL => {
                fixed(1)?;
                Value::Bool(bytes[0] != 0)
            }
            particle::STRING => Value::String(bytes.to_vec()),
            particle::BLOB => Value::Blob(particle::BLOB, bytes.to_vec()),
            t if particle::LANGUAGE_BLOBS.contains(&t) => Value::Blob(t, bytes.to_vec()),
            particle::HLL => Value::Hll(bytes.to_vec()),
            particle::MAP => Value::Map(bytes.to_vec()),
            particle::LIST => Value::List(bytes.to_vec()),
            particle::GEOJSON => Value::GeoJson(bytes.to_vec()),
            t => return Err(ValueError::UnknownParticleType(t)),
        })
    }

    pub fn particle_type(&self) -> u8 {
        match self {
            Value::Integer(_) => particle::INTEGER,
            Value::Double(_) => particle::DOUBLE,
            Value::Bool(_) => particle::BOOL,
            Value::String(_) => particle::STRING,
            Value::Blob(t, _) => *t,
            Value::Hll(_) => particle::HLL,
            Value::Map(_) => particle::MAP,
            Value::List(_) => particle::LIST,
            Value::GeoJson(_) => particle::GEOJSON,
        }
    }

    /// Length of the wire (and image) form of the value.
    pub fn wire_len(&self) -> usize {
        match self {
            Value::Integer(_) | Value::Double(_) => 8,
            Value::Bool(_) => 1,
            Value::String(b)
            | Value::Blob(_, b)
            | Value::Hll(b)
            | Value::Map(b)
            | Value::List(b)
            | Value::GeoJson(b) => b.len(),
        }
    }

    /// Appends the wire form of the value to `out`.
    pub fn write_wire(&self, out: &mut Vec<u8>) {
        match self {
            Value::Integer(v) => out.extend_from_slice(&v.to_be_bytes()),
            Value::Double(v) => out.extend_from_slice(&v.to_be_bytes()),
            Value::Bool(v) => out.push(u8::from(*v)),
            Value::String(b)
            | Value::Blob(_, b)
            | Value::Hll(b)
            | Value::Map(b)
            | Value::List(b)
            | Value::GeoJson(b) => out.extend_from_slice(b),
        }
    }

    fn write_into(&self, out: &mut [u8]) {
        match self {
            Value::Integer(v) => out.copy_from_slice(&v.to_be_bytes()),
            Value::Double(v) => out.copy_from_slice(&v.to_be_bytes()),
            Value::Bool(v) => out[0] = u8::from(*v),
            Value::String(b)
            | Value::Blob(_, b)
            | Value::Hll(b)
            | Value::Map(b)
            | Value::List(b)
            | Value::GeoJson(b) => out.copy_from_slice(b),
        }
    }
}

/// A bin name: 1..=15 bytes, stored inline.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BinName {
    len: u8,
    bytes: [u8; MAX_BIN_NAME_BYTES],
}

impl BinName {
    /// `None` if `name` is empty or longer than 15 bytes.
    pub fn new(name: &[u8]) -> Option<BinName> {
        if name.is_empty() || name.len() > MAX_BIN_NAME_BYTES {
            return None;
        }
        let mut bytes = [0u8; MAX_BIN_NAME_BYTES];
        bytes[..name.len()].copy_from_slice(name);
        Some(BinName {
            len: name.len() as u8,
            bytes,
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl fmt::Debug for BinName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Bin {
    pub name: BinName,
    pub value: Value,
}

/// A stored user key: particle type and value bytes as sent in field 2.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredKey {
    pub particle_type: u8,
    pub bytes: Vec<u8>,
}

/// A whole record as the storage engine writes and reads it.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Record {
    pub digest: Digest,
    pub generation: u16,
    pub void_time: u32,
    pub last_update_ms: u64,
    /// Empty = no set.
    pub set_name: Vec<u8>,
    pub key: Option<StoredKey>,
    pub tombstone: bool,
    pub bins: Vec<Bin>,
}

/// Why an image is not a valid record, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageError {
    /// Byte offset within the image where decoding stopped.
    pub offset: usize,
    pub what: ImageProblem,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageProblem {
    BadMagic(u32),
    /// The header's size runs past the bytes given, or is too small.
    BadSize {
        n_rblocks: u32,
        available: usize,
    },
    ChecksumMismatch {
        stored: u32,
        computed: u32,
    },
    Truncated,
    BadName,
    BadValue(ValueError),
    DigestMismatch {
        expected: Digest,
        found: Digest,
    },
    TrailingBytes,
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad record image at byte {}: ", self.offset)?;
        match &self.what {
            ImageProblem::BadMagic(m) => write!(f, "magic {m:#010x} is not a record's"),
            ImageProblem::BadSize {
                n_rblocks,
                available,
            } => {
                write!(
                    f,
                    "size of {n_rblocks} rblocks does not fit the {available} bytes available"
                )
            }
            ImageProblem::ChecksumMismatch { stored, computed } => {
                write!(
                    f,
                    "checksum {stored:#010x} stored, {computed:#010x} computed"
                )
            }
            ImageProblem::Truncated => write!(f, "a field runs past the end of the image"),
            ImageProblem::BadName => write!(f, "a set or bin name has an invalid length"),
            ImageProblem::BadValue(e) => write!(f, "{e}"),
            ImageProblem::DigestMismatch { expected, found } => {
                write!(f, "digest {found}, expected {expected}")
            }
            ImageProblem::TrailingBytes => write!(f, "non-zero bytes after the last bin"),
        }
    }
}

impl std::error::Error for ImageError {}

/// Why a record cannot be encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EncodeError {
    SetNameTooLong(usize),
    TooManyBins(usize),
}

impl Record {
    /// Bytes of the image, a multiple of 16.
    pub fn image_len(&self) -> usize {
        let mut len = IMAGE_HEADER_BYTES + self.set_name.len();
        if let Some(key) = &self.key {
            len += 5 + key.bytes.len();
        }
        for bin in &self.bins {
            len += 1 + bin.name.as_bytes().len() + 5 + bin.value.wire_len();
        }
        len.div_ceil(RBLOCK_BYTES) * RBLOCK_BYTES
    }

    /// Writes the image into `out`, which must be exactly `image_len()` bytes,
    /// stamped with the `life` of the write block it goes into.
    pub fn encode_into(&self, out: &mut [u8], life: u64) -> Result<(), EncodeError> {
        if self.set_name.len() > MAX_SET_NAME_BYTES {
            return Err(EncodeError::SetNameTooLong(self.set_name.len()));
        }
        if self.bins.len() > usize::from(u16::MAX) {
            return Err(EncodeError::TooManyBins(self.bins.len()));
        }
        let len = out.len();
        assert_eq!(
            len,
            self.image_len(),
            "encode_into needs a buffer of exactly image_len() bytes"
        );
        out[0..4].copy_from_slice(&IMAGE_MAGIC.to_le_bytes());
        out[4..8].copy_from_slice(&((len / RBLOCK_BYTES) as u32).to_le_bytes());
        out[8..12].fill(0);
        out[12..14].copy_from_slice(&self.generation.to_le_bytes());
        let mut flags = 0;
        if self.tombstone {
            flags |= FLAG_TOMBSTONE;
        }
        if self.key.is_some() {
            flags |= FLAG_KEY_STORED;
        }
        out[14] = flags;
        out[15] = self.set_name.len() as u8;
        out[16..36].copy_from_slice(&self.digest.0);
        out[36..40].copy_from_slice(&self.void_time.to_le_bytes());
        out[40..48].copy_from_slice(&self.last_update_ms.to_le_bytes());
        out[48..50].copy_from_slice(&(self.bins.len() as u16).to_le_bytes());
        out[LIFE_AT..LIFE_AT + 8].copy_from_slice(&life.to_le_bytes());
        let mut at = IMAGE_HEADER_BYTES;
        fn put(out: &mut [u8], at: &mut usize, bytes: &[u8]) {
            out[*at..*at + bytes.len()].copy_from_slice(bytes);
            *at += bytes.len();
        }
        put(out, &mut at, &self.set_name);
        if let Some(key) = &self.key {
            put(out, &mut at, &[key.particle_type]);
            put(out, &mut at, &(key.bytes.len() as u32).to_le_bytes());
            put(out, &mut at, &key.bytes);
        }
        for bin in &self.bins {
            let name = bin.name.as_bytes();
            put(out, &mut at, &[name.len() as u8]);
            put(out, &mut at, name);
            put(out, &mut at, &[bin.value.particle_type()]);
            put(out, &mut at, &(bin.value.wire_len() as u32).to_le_bytes());
            let end = at + bin.value.wire_len();
            bin.value.write_into(&mut out[at..end]);
            at = end;
        }
        out[at..].fill(0);
        let crc = checksum(out);
        out[8..12].copy_from_slice(&crc.to_le_bytes());
        Ok(())
    }

    /// The image as a new vector (tests and tools; the write path encodes in place).
    pub fn encode(&self, life: u64) -> Result<Vec<u8>, EncodeError> {
        let mut out = vec![0u8; self.image_len()];
        self.encode_into(&mut out, life)?;
        Ok(out)
    }
}

/// The write-block life stamped in an image (see the module doc). The
/// caller has verified the image ([`decode`]); a shorter slice has none.
pub fn image_life(image: &[u8]) -> Option<u64> {
    let field = image.get(LIFE_AT..LIFE_AT + 8)?;
    Some(u64::from_le_bytes(field.try_into().ok()?))
}

/// Restamps a whole, verified image with another block's life and
/// recomputes its checksum: defrag copies an image unchanged but for the
/// life of the block it moves into, or a cold scan of that block would stop
/// at the copy and lose it (and every record after it).
pub fn restamp_life(image: &mut [u8], life: u64) {
    assert!(
        image.len() >= IMAGE_HEADER_BYTES,
        "restamping a {}-byte slice, not an image",
        image.len()
    );
    image[LIFE_AT..LIFE_AT + 8].copy_from_slice(&life.to_le_bytes());
    image[8..12].fill(0);
    let crc = checksum(image);
    image[8..12].copy_from_slice(&crc.to_le_bytes());
}

/// An image's checksum: CRC-32C (Castagnoli) over the whole image with its
/// checksum field (bytes 8..12) zero, as it is when this is called.
///
/// `crc-fast` rather than the `crc32c` crate: folding with carry-less
/// multiplies runs 1 KiB in about 20 ns here against 53 ns for `crc32c`'s
/// three interleaved CRC32 streams, and the checksum was an eighth of the
/// 1 KiB write path (storage-bench, perf). The value is the same CRC-32C;
/// `checksum_is_crc32c` checks it against the `crc32c` crate.
fn checksum(image: &[u8]) -> u32 {
    crc_fast::crc32_iscsi(image)
}

/// [`checksum`] of an image read back, whose field holds the stored value:
/// computed as if the field were zero, without copying the image.
fn checksum_as_stored(image: &[u8]) -> u32 {
    let mut digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
    digest.update(&image[..8]);
    digest.update(&[0; 4]);
    digest.update(&image[12..]);
    digest.finalize() as u32
}

/// The size in bytes of the image starting at `bytes`, if it starts with a
/// record's magic and a plausible size; scanners use it to step from record
/// to record. Does not verify the checksum.
pub fn peek_image_len(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < 8 || u32::from_le_bytes(bytes[0..4].try_into().ok()?) != IMAGE_MAGIC {
        return None;
    }
    let n = u32::from_le_bytes(bytes[4..8].try_into().ok()?) as usize;
    let len = n.checked_mul(RBLOCK_BYTES)?;
    (len >= IMAGE_HEADER_BYTES).then_some(len)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ImageError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(ImageError {
                offset: self.at,
                what: ImageProblem::Truncated,
            });
        };
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, ImageError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, ImageError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
}

/// Decodes and verifies the image at the start of `bytes` (which may run on
/// past the image). With `expected`, the image's digest must equal it.
pub fn decode(bytes: &[u8], expected: Option<&Digest>) -> Result<Record, ImageError> {
    decode_checked(bytes, expected, true)
}

/// [`decode`] for an image in the post-write cache: everything but the
/// checksum is checked. The checksum guards what a device returns; an image
/// in this process's RAM was checksummed as it was built, and verifying it
/// again on every cached read-modify-write was a tenth of the 1 KiB write
/// path's time. Images read from a device always go through [`decode`].
pub fn decode_cached(bytes: &[u8], expected: Option<&Digest>) -> Result<Record, ImageError> {
    decode_checked(bytes, expected, false)
}

/// What a cold scan needs of an image: its header fields and set name,
/// without the bins. The checksum is verified (the bytes come from a
/// device); the bins are not parsed or copied — a scan that decoded every
/// bin of every record spent most of its time allocating and copying values
/// it then threw away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageMeta<'a> {
    pub digest: Digest,
    pub generation: u16,
    pub void_time: u32,
    pub last_update_ms: u64,
    pub set_name: &'a [u8],
    pub tombstone: bool,
    pub key_stored: bool,
    /// Bytes of the whole image (a multiple of [`RBLOCK_BYTES`]).
    pub len: usize,
    /// The life of the write block it was written in.
    pub life: u64,
}

/// Decodes the header of the image at the start of `bytes` and verifies its
/// magic, size and checksum; see [`ImageMeta`].
pub fn decode_meta(bytes: &[u8]) -> Result<ImageMeta<'_>, ImageError> {
    header(bytes, true)
}

/// The header checks every decode makes: magic, size within `bytes`, the
/// checksum (when asked), and a set name that fits the image.
fn header(bytes: &[u8], verify_checksum: bool) -> Result<ImageMeta<'_>, ImageError> {
    let fail = |offset, what| Err(ImageError { offset, what });
    if bytes.len() < IMAGE_HEADER_BYTES {
        return fail(0, ImageProblem::Truncated);
    }
    let magic = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
    if magic != IMAGE_MAGIC {
        return fail(0, ImageProblem::BadMagic(magic));
    }
    let n_rblocks = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    let len = n_rblocks as usize * RBLOCK_BYTES;
    if len < IMAGE_HEADER_BYTES || len > bytes.len() {
        return fail(
            4,
            ImageProblem::BadSize {
                n_rblocks,
                available: bytes.len(),
            },
        );
    }
    let image = &bytes[..len];
    if verify_checksum {
        let stored = u32::from_le_bytes(image[8..12].try_into().expect("4 bytes"));
        let crc = checksum_as_stored(image);
        if crc != stored {
            return fail(
                8,
                ImageProblem::ChecksumMismatch {
                    stored,
                    computed: crc,
                },
            );
        }
    }
    let flags = image[14];
    let set_len = image[15] as usize;
    if set_len > MAX_SET_NAME_BYTES || IMAGE_HEADER_BYTES + set_len > len {
        return fail(15, ImageProblem::BadName);
    }
    let mut digest = Digest::default();
    digest.0.copy_from_slice(&image[16..16 + DIGEST_LEN]);
    Ok(ImageMeta {
        digest,
        generation: u16::from_le_bytes(image[12..14].try_into().expect("2 bytes")),
        void_time: u32::from_le_bytes(image[36..40].try_into().expect("4 bytes")),
        last_update_ms: u64::from_le_bytes(image[40..48].try_into().expect("8 bytes")),
        set_name: &image[IMAGE_HEADER_BYTES..IMAGE_HEADER_BYTES + set_len],
        tombstone: flags & FLAG_TOMBSTONE != 0,
        key_stored: flags & FLAG_KEY_STORED != 0,
        len,
        life: u64::from_le_bytes(image[LIFE_AT..LIFE_AT + 8].try_into().expect("8 bytes")),
    })
}

fn decode_checked(
    bytes: &[u8],
    expected: Option<&Digest>,
    verify_checksum: bool,
) -> Result<Record, ImageError> {
    let fail = |offset, what| Err(ImageError { offset, what });
    let meta = header(bytes, verify_checksum)?;
    if let Some(expected) = expected {
        if *expected != meta.digest {
            return fail(
                16,
                ImageProblem::DigestMismatch {
                    expected: *expected,
                    found: meta.digest,
                },
            );
        }
    }
    let (image, len) = (&bytes[..meta.len], meta.len);
    let n_bins = u16::from_le_bytes(image[48..50].try_into().expect("2 bytes"));
    let mut r = Reader {
        bytes: image,
        at: IMAGE_HEADER_BYTES + meta.set_name.len(),
    };
    let key = if meta.key_stored {
        let particle_type = r.u8()?;
        let n = r.u32()? as usize;
        Some(StoredKey {
            particle_type,
            bytes: r.take(n)?.to_vec(),
        })
    } else {
        None
    };
    let mut bins = Vec::with_capacity(usize::from(n_bins).min(len / 7));
    for _ in 0..n_bins {
        let name_at = r.at;
        let name_len = r.u8()? as usize;
        let name = BinName::new(r.take(name_len)?).ok_or(ImageError {
            offset: name_at,
            what: ImageProblem::BadName,
        })?;
        let particle_type = r.u8()?;
        let value_at = r.at;
        let n = r.u32()? as usize;
        let value = Value::from_wire(particle_type, r.take(n)?).map_err(|e| ImageError {
            offset: value_at,
            what: ImageProblem::BadValue(e),
        })?;
        bins.push(Bin { name, value });
    }
    if image[r.at..].iter().any(|&b| b != 0) || len - r.at >= RBLOCK_BYTES {
        return fail(r.at, ImageProblem::TrailingBytes);
    }
    Ok(Record {
        digest: meta.digest,
        generation: meta.generation,
        void_time: meta.void_time,
        last_update_ms: meta.last_update_ms,
        set_name: meta.set_name.to_vec(),
        key,
        tombstone: meta.tombstone,
        bins,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::UserKey;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = Value> {
        let bytes = || proptest::collection::vec(any::<u8>(), 0..40);
        prop_oneof![
            any::<i64>().prop_map(Value::Integer),
            any::<u64>()
                .prop_map(|b| Value::Double(f64::from_bits(b)))
                .prop_filter("NaN != NaN", |v| match v {
                    Value::Double(d) => !d.is_nan(),
                    _ => true,
                }),
            any::<bool>().prop_map(Value::Bool),
            bytes().prop_map(Value::String),
            (prop_oneof![Just(4u8), 7u8..=12], bytes()).prop_map(|(t, b)| Value::Blob(t, b)),
            bytes().prop_map(Value::Hll),
            bytes().prop_map(Value::Map),
            bytes().prop_map(Value::List),
            bytes().prop_map(Value::GeoJson),
        ]
    }

    fn record() -> impl Strategy<Value = Record> {
        (
            any::<[u8; 20]>(),
            any::<u16>(),
            any::<u32>(),
            any::<u64>(),
            proptest::collection::vec(b'a'..=b'z', 0..=63),
            proptest::option::of((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..30))),
            any::<bool>(),
            proptest::collection::vec(
                (proptest::collection::vec(b'a'..=b'z', 1..=15), value()),
                0..8,
            ),
        )
            .prop_map(
                |(d, generation, void_time, lut, set_name, key, tombstone, bins)| Record {
                    digest: Digest(d),
                    generation,
                    void_time,
                    last_update_ms: lut,
                    set_name,
                    key: key.map(|(particle_type, bytes)| StoredKey {
                        particle_type,
                        bytes,
                    }),
                    tombstone,
                    bins: bins
                        .into_iter()
                        .map(|(n, value)| Bin {
                            name: BinName::new(&n).unwrap(),
                            value,
                        })
                        .collect(),
                },
            )
    }

    proptest! {
        /// The on-flash format says CRC-32C: `crc-fast` must agree with the
        /// `crc32c` crate on every length, and the stored-field variant with
        /// zeroing the field by hand.
        #[test]
        fn checksum_is_crc32c(bytes in proptest::collection::vec(any::<u8>(), 12..9000)) {
            prop_assert_eq!(checksum(&bytes), crc32c::crc32c(&bytes));
            let mut zeroed = bytes.clone();
            zeroed[8..12].fill(0);
            prop_assert_eq!(checksum_as_stored(&bytes), crc32c::crc32c(&zeroed));
        }

        #[test]
        fn images_round_trip(r in record()) {
            let image = r.encode(7).unwrap();
            prop_assert_eq!(image.len() % RBLOCK_BYTES, 0);
            prop_assert_eq!(peek_image_len(&image), Some(image.len()));
            prop_assert_eq!(decode(&image, Some(&r.digest)).unwrap(), r.clone());
            // Trailing bytes after the image (the rest of a write block) are ignored.
            let mut longer = image.clone();
            longer.extend_from_slice(&[0xEE; 48]);
            prop_assert_eq!(decode(&longer, None).unwrap(), r);
        }

        #[test]
        fn a_restamped_image_is_the_same_record_with_another_life(r in record(), life in any::<u64>()) {
            let mut image = r.encode(7).unwrap();
            prop_assert_eq!(image_life(&image), Some(7));
            restamp_life(&mut image, life);
            prop_assert_eq!(image_life(&image), Some(life));
            prop_assert_eq!(decode(&image, Some(&r.digest)).unwrap(), r.clone());
            prop_assert_eq!(image, r.encode(life).unwrap());
        }

        #[test]
        fn the_scan_decode_agrees_with_the_full_one(r in record(), life in any::<u64>()) {
            let mut image = r.encode(life).unwrap();
            image.extend_from_slice(&[0xEE; 32]);
            let meta = decode_meta(&image).unwrap();
            prop_assert_eq!(meta.digest, r.digest);
            prop_assert_eq!(meta.generation, r.generation);
            prop_assert_eq!(meta.void_time, r.void_time);
            prop_assert_eq!(meta.last_update_ms, r.last_update_ms);
            prop_assert_eq!(meta.set_name, r.set_name.as_slice());
            prop_assert_eq!(meta.tombstone, r.tombstone);
            prop_assert_eq!(meta.key_stored, r.key.is_some());
            prop_assert_eq!(meta.len, r.image_len());
            prop_assert_eq!(meta.life, life);
        }

        #[test]
        fn any_flipped_byte_is_caught(r in record(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut image = r.encode(7).unwrap();
            let i = at.index(image.len());
            image[i] ^= 1 << bit;
            prop_assert!(decode(&image, None).is_err());
            prop_assert!(decode_meta(&image).is_err());
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&bytes, None);
            let _ = decode_meta(&bytes);
            let _ = peek_image_len(&bytes);
        }

        #[test]
        fn consistent_images_with_bad_fields_are_refused_cleanly(r in record(), cut in 0usize..64) {
            // Re-checksum a damaged image so that only the structure check can
            // catch it: a shortened bin count region or a lying length.
            let mut image = r.encode(7).unwrap();
            if image.len() > IMAGE_HEADER_BYTES + cut {
                let i = IMAGE_HEADER_BYTES + cut;
                image[i] = image[i].wrapping_add(1);
                image[8..12].fill(0);
                let crc = crc32c::crc32c(&image);
                image[8..12].copy_from_slice(&crc.to_le_bytes());
                let _ = decode(&image, None); // must not panic; may or may not decode
            }
        }
    }

    #[test]
    fn wire_values_check_their_lengths_and_types() {
        assert_eq!(
            Value::from_wire(1, &7i64.to_be_bytes()),
            Ok(Value::Integer(7))
        );
        assert_eq!(
            Value::from_wire(1, &[1, 2]),
            Err(ValueError::BadLength {
                particle_type: 1,
                len: 2
            })
        );
        assert_eq!(Value::from_wire(17, &[1]), Ok(Value::Bool(true)));
        assert_eq!(
            Value::from_wire(9, b"py"),
            Ok(Value::Blob(9, b"py".to_vec()))
        );
        assert_eq!(
            Value::from_wire(5, b""),
            Err(ValueError::UnknownParticleType(5))
        );
        let mut wire = Vec::new();
        Value::Double(1.5).write_wire(&mut wire);
        assert_eq!(Value::from_wire(2, &wire), Ok(Value::Double(1.5)));
    }

    #[test]
    fn errors_name_the_offset() {
        let r = Record {
            digest: Digest::compute("demo", &UserKey::String("key1".into())),
            bins: vec![Bin {
                name: BinName::new(b"a").unwrap(),
                value: Value::Integer(1),
            }],
            ..Default::default()
        };
        let mut image = r.encode(7).unwrap();
        assert_eq!(
            image.len(),
            80,
            "58-byte header + 15-byte bin, rounded to rblocks"
        );
        let other = Digest::compute("demo", &UserKey::String("key2".into()));
        let e = decode(&image, Some(&other)).unwrap_err();
        assert_eq!(e.offset, 16);
        assert!(e.to_string().contains("digest"), "{e}");
        image[40] ^= 1;
        let e = decode(&image, None).unwrap_err();
        assert!(
            matches!(e.what, ImageProblem::ChecksumMismatch { .. }),
            "{e}"
        );
        assert_eq!(BinName::new(b"sixteen_chars_xx"), None);
        assert_eq!(BinName::new(b""), None);
    }
}
