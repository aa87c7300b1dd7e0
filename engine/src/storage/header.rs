//! The device header: whose data a device holds, and what the last shutdown
//! left behind.
//!
//! The first 8 MiB of every device ([`HEADER_REGION_BYTES`]) are reserved for
//! the header; write blocks start after them. The header names the namespace
//! the device belongs to and its place in it (device index and count, and an
//! instance id shared by all devices of one namespace format), the geometry it
//! was formatted with (write-block size, device size), whether the last
//! shutdown was clean (the trusted flag and its shutdown id, which a warm
//! start matches against the shared-memory index's) and the namespace's
//! durable truncations.
//!
//! # Two slots
//!
//! The header is rewritten in place at every start-up and shutdown, and such
//! a write can be torn by a power cut or fail outright. With a single copy,
//! that would lose the only record of whose data the device holds. So the
//! region holds two slots of [`HEADER_SLOT_BYTES`], at offsets 0 and 64 KiB.
//! Each write carries a `sequence` one above the current header's and goes to
//! slot `sequence % 2`, which is the slot *not* holding the current header:
//! the current header is untouched until the new one is complete. Reading
//! decodes both slots and keeps the valid one with the higher sequence
//! ([`newest`]). [`write_header`] only advances the caller's sequence once the
//! write and its flush have succeeded, so a retry after a failure targets the
//! same slot again and cannot overwrite the last good header either.
//!
//! A new header replacing an old one (re-formatting a device) must continue
//! from the old header's sequence: a header that starts again at 0 loses to
//! the old one in [`newest`].
//!
//! # Layout of a slot
//!
//! All integers are little-endian.
//!
//! ```text
//! off size field
//!   0   8  magic "OSPRYDEV"
//!   8   4  format version (2)
//!  12   4  used length: bytes of this slot the header occupies,
//!          120 + 72 × truncation count
//!  16   4  CRC-32C of bytes 0..used, computed with this field zero
//!  20   4  truncation count (0..=908)
//!  24   8  sequence (+1 per header write; the slot is sequence % 2)
//!  32   1  namespace name length (1..=31)
//!  33  31  namespace name (UTF-8), zero padded
//!  64   4  device index within the namespace (< device count)
//!  68   4  device count of the namespace
//!  72   8  instance id (random per namespace format; shared by its devices)
//!  80   8  device size in bytes at format time
//!  88   4  write-block size in bytes (non-zero)
//!  92   1  trusted flag: 1 = written by a clean shutdown, else 0
//!  93   3  zero
//!  96   8  shutdown id (meaningful when trusted)
//! 104   8  last-update watermark, ms since 2010-01-01 (set at clean shutdown)
//! 112   8  next life: the first write-block life the next start may draw
//! 120   …  truncations, 72 bytes each:
//!            +0  1  set name length (0 = the whole namespace, else 1..=63)
//!            +1 63  set name (UTF-8), zero padded
//!           +64  8  cutoff: records last updated before this time
//!                   (ms since 2010-01-01) are truncated
//!   used…  zero up to the end of the slot (not covered by the checksum)
//! ```
//!
//! Version 2 added the next life (and image lives, `record.rs`): every start
//! takes the range of lives from it up for its own write blocks and writes
//! the header with the range's end before it writes anything else, so no
//! two openings of a block in the device's history share a life — even
//! across crashes, whatever a cold scan can or cannot see.
//!
//! Bytes 0..20 (magic, version, used length, checksum) keep this meaning in
//! every format version, so a header of another version is still verified by
//! its checksum and reported as [`HeaderError::Version`] rather than as
//! corrupt or blank.
//!
//! # Blank or corrupt
//!
//! A slot that does not start with the magic holds no Osprey header (never
//! written, erased, or another format's bytes): [`HeaderError::Blank`], and a
//! device whose slots are both blank may be formatted. A magic a few bits away
//! from ours, though, is our header damaged, not someone else's bytes: it is
//! [`HeaderError::Corrupt`], so that a device whose only header took a hit is
//! refused rather than silently re-formatted. Every other problem is
//! `Corrupt` with the offset in the slot where decoding stopped. Decoding never
//! trusts the bytes and never panics.

use std::fmt;
use std::time::Duration;

use crate::device::{
    run_to_completion, Device, DeviceError, IoBuffer, IoKind, IoOp, Queue, SetupError,
};

/// Bytes reserved at the start of every device for the header; the first
/// write block starts here.
pub const HEADER_REGION_BYTES: u64 = 8 << 20;
/// Bytes of one header slot; slot `i` starts at `i × HEADER_SLOT_BYTES`.
pub const HEADER_SLOT_BYTES: usize = 64 << 10;
/// Header slots in the region.
pub const HEADER_SLOTS: usize = 2;
pub const HEADER_MAGIC: [u8; 8] = *b"OSPRYDEV";
pub const FORMAT_VERSION: u32 = 2;
/// Bytes of a header without truncations.
pub const HEADER_FIXED_BYTES: usize = 120;
/// Bytes of one truncation entry.
pub const TRUNCATION_ENTRY_BYTES: usize = 72;
/// Truncation entries that fit one slot beside the fixed part.
pub const MAX_TRUNCATIONS: usize =
    (HEADER_SLOT_BYTES - HEADER_FIXED_BYTES) / TRUNCATION_ENTRY_BYTES;
/// Aerospike's limit on namespace names.
pub const MAX_NAMESPACE_NAME_BYTES: usize = 31;
pub const MAX_SET_NAME_BYTES: usize = crate::record::MAX_SET_NAME_BYTES;
/// How long [`read_header`] and [`write_header`] wait for one operation.
pub const HEADER_IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes 0..20: the part of the layout every format version shares.
const PREFIX_BYTES: usize = 20;
/// A magic differing from ours in at most this many bits is ours, damaged.
/// Eight of 64 bits: far more than a media error flips, and far from any
/// other format's signature (or from zeros: our magic has 27 bits set).
const DAMAGED_MAGIC_BITS: u32 = 8;

const _: () = assert!(HEADER_SLOTS as u64 * HEADER_SLOT_BYTES as u64 <= HEADER_REGION_BYTES);
const _: () =
    assert!(HEADER_FIXED_BYTES + MAX_TRUNCATIONS * TRUNCATION_ENTRY_BYTES <= HEADER_SLOT_BYTES);
const _: () = assert!(MAX_TRUNCATIONS == 908);
const _: () = assert!(at::NAMESPACE + MAX_NAMESPACE_NAME_BYTES == at::DEVICE_INDEX);
const _: () = assert!(entry::SET_NAME + MAX_SET_NAME_BYTES == entry::BEFORE_MS);
const _: () = assert!(entry::BEFORE_MS + 8 == TRUNCATION_ENTRY_BYTES);
const _: () = assert!(at::TRUNCATIONS == HEADER_FIXED_BYTES);
const _: () = assert!(u32_fits(HEADER_SLOT_BYTES) && u32_fits(MAX_TRUNCATIONS));

const fn u32_fits(n: usize) -> bool {
    n <= u32::MAX as usize
}

/// Field offsets in a slot (see the module table).
mod at {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 8;
    pub const USED: usize = 12;
    pub const CRC: usize = 16;
    pub const TRUNCATION_COUNT: usize = 20;
    pub const SEQUENCE: usize = 24;
    pub const NAMESPACE_LEN: usize = 32;
    pub const NAMESPACE: usize = 33;
    pub const DEVICE_INDEX: usize = 64;
    pub const DEVICE_COUNT: usize = 68;
    pub const INSTANCE_ID: usize = 72;
    pub const DEVICE_BYTES: usize = 80;
    pub const WRITE_BLOCK_BYTES: usize = 88;
    pub const TRUSTED: usize = 92;
    pub const RESERVED: usize = 93;
    pub const SHUTDOWN_ID: usize = 96;
    pub const LUT_WATERMARK: usize = 104;
    pub const NEXT_LIFE: usize = 112;
    pub const TRUNCATIONS: usize = 120;
}

/// Field offsets within one truncation entry.
mod entry {
    pub const SET_NAME_LEN: usize = 0;
    pub const SET_NAME: usize = 1;
    pub const BEFORE_MS: usize = 64;
}

/// The byte offset of header slot `slot` on the device.
pub fn slot_offset(slot: usize) -> u64 {
    (slot * HEADER_SLOT_BYTES) as u64
}

/// One device's header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceHeader {
    /// One more than the header it replaced; chooses the slot
    /// (`sequence % 2`) and the newer of the two slots.
    pub sequence: u64,
    pub namespace: String,
    /// This device's place in the namespace's device list.
    pub device_index: u32,
    pub device_count: u32,
    /// Drawn at format ([`new_instance_id`]) and shared by all devices of the
    /// namespace, so that a device from another format of the same namespace
    /// is not taken for one of this format's.
    pub instance_id: u64,
    pub write_block_bytes: u32,
    /// The device's size when it was formatted; write blocks beyond it were
    /// never written by this format.
    pub device_bytes: u64,
    /// Set only by a clean shutdown; a start-up writes a header without it
    /// before changing anything on the device.
    pub trusted: bool,
    /// The clean shutdown's id, matched against the shared-memory index's.
    pub shutdown_id: u64,
    /// At a clean shutdown: no image on the device has a later last-update
    /// time (ms since 2010-01-01). A warm start resumes stamping new images
    /// after it, so a key re-created after a plain delete outranks the
    /// deleted image even when times ran ahead of the clock.
    pub lut_watermark_ms: u64,
    /// The first write-block life (see `record.rs`) the next start may draw:
    /// above every life any earlier start could have stamped on the device.
    pub next_life: u64,
    pub truncations: Vec<Truncation>,
}

/// A durable truncate: records of the set (or the whole namespace) last
/// updated before `before_ms` are gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncation {
    /// `None`: the whole namespace.
    pub set_name: Option<String>,
    /// Last-update cutoff, ms since 2010-01-01; records last updated strictly
    /// before it are truncated.
    pub before_ms: u64,
}

/// Why a slot holds no usable header, or why a header cannot be encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// No Osprey header: the slot does not start with the magic (never
    /// written, erased, or another format's bytes).
    Blank,
    /// An Osprey header that is damaged or inconsistent; `offset` is the byte
    /// in the slot where decoding stopped.
    Corrupt { offset: usize, what: HeaderProblem },
    /// A verified header of a format version this build does not read.
    Version { found: u32 },
    /// Encoding: the slot given is not [`HEADER_SLOT_BYTES`] long.
    SlotSize { len: usize },
    /// Encoding: the namespace name must be 1..=31 bytes.
    NamespaceName { len: usize },
    /// Encoding: truncation `entry`'s set name must be 1..=63 bytes (use
    /// `None` for the whole namespace).
    SetName { entry: usize, len: usize },
    /// Encoding: more truncations than fit a slot.
    TooManyTruncations { count: usize, max: usize },
    /// Encoding: the device index must be below the device count.
    DeviceIndex { index: u32, count: u32 },
    /// Encoding: the write-block size must not be zero.
    WriteBlockSize,
}

/// What is wrong with a corrupt header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderProblem {
    /// The magic is a few bits off ours.
    DamagedMagic([u8; 8]),
    /// The slot is shorter than the header's fixed part.
    Truncated {
        len: usize,
    },
    /// The used length is impossible, or disagrees with the truncation count.
    UsedLength {
        used: u32,
    },
    ChecksumMismatch {
        stored: u32,
        computed: u32,
    },
    TruncationCount {
        count: u32,
    },
    /// A namespace or set name has an invalid length or is not UTF-8.
    BadName,
    DeviceIndex {
        index: u32,
        count: u32,
    },
    ZeroWriteBlockSize,
    TrustedFlag(u8),
    /// A byte that must be zero (reserved, or name padding) is not.
    NonZeroPadding,
    /// The header's sequence belongs in the other slot (read from a device).
    WrongSlot {
        sequence: u64,
        slot: usize,
    },
}

impl fmt::Display for HeaderProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderProblem::DamagedMagic(m) => {
                write!(
                    f,
                    "magic \"{}\" is a damaged \"OSPRYDEV\"",
                    m.escape_ascii()
                )
            }
            HeaderProblem::Truncated { len } => {
                write!(f, "only {len} bytes, shorter than a header")
            }
            HeaderProblem::UsedLength { used } => {
                write!(f, "used length {used} is impossible for this header")
            }
            HeaderProblem::ChecksumMismatch { stored, computed } => {
                write!(
                    f,
                    "checksum {stored:#010x} stored, {computed:#010x} computed"
                )
            }
            HeaderProblem::TruncationCount { count } => {
                write!(
                    f,
                    "{count} truncations, more than the {MAX_TRUNCATIONS} a slot holds"
                )
            }
            HeaderProblem::BadName => write!(f, "a name has an invalid length or is not UTF-8"),
            HeaderProblem::DeviceIndex { index, count } => {
                write!(
                    f,
                    "device index {index} is not below the device count {count}"
                )
            }
            HeaderProblem::ZeroWriteBlockSize => write!(f, "write-block size is zero"),
            HeaderProblem::TrustedFlag(v) => write!(f, "trusted flag is {v}, not 0 or 1"),
            HeaderProblem::NonZeroPadding => write!(f, "a reserved or padding byte is not zero"),
            HeaderProblem::WrongSlot { sequence, slot } => {
                write!(
                    f,
                    "sequence {sequence} found in slot {slot}, belongs in slot {}",
                    sequence % 2
                )
            }
        }
    }
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::Blank => write!(f, "no device header (blank, or not an Osprey device)"),
            HeaderError::Corrupt { offset, what } => {
                write!(f, "corrupt device header at byte {offset} of its slot: {what}")
            }
            HeaderError::Version { found } => write!(
                f,
                "device header format version {found}; this build reads version {FORMAT_VERSION}"
            ),
            HeaderError::SlotSize { len } => write!(
                f,
                "a header slot is {HEADER_SLOT_BYTES} bytes, not {len}"
            ),
            HeaderError::NamespaceName { len } => write!(
                f,
                "namespace name of {len} bytes; it must be 1..={MAX_NAMESPACE_NAME_BYTES}"
            ),
            HeaderError::SetName { entry, len } => write!(
                f,
                "truncation {entry}: set name of {len} bytes; it must be 1..={MAX_SET_NAME_BYTES} (no set name for the whole namespace)"
            ),
            HeaderError::TooManyTruncations { count, max } => {
                write!(f, "{count} truncations; a device header holds at most {max}")
            }
            HeaderError::DeviceIndex { index, count } => {
                write!(f, "device index {index} is not below the device count {count}")
            }
            HeaderError::WriteBlockSize => write!(f, "write-block size must not be zero"),
        }
    }
}

impl std::error::Error for HeaderError {}

/// What the config (and the namespace's other devices) say a device's
/// header must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    pub namespace: String,
    pub device_index: u32,
    pub device_count: u32,
    pub write_block_bytes: u32,
    /// The device's size now.
    pub device_bytes: u64,
    /// The instance id of the namespace's other devices; `None` for the first
    /// device read, which sets it for the rest.
    pub instance_id: Option<u64>,
}

/// A header that does not match the config: the device holds data of
/// another namespace, position or geometry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderMismatch {
    /// The header field, named as in the config.
    pub field: &'static str,
    pub on_device: String,
    pub in_config: String,
}

impl fmt::Display for HeaderMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let HeaderMismatch {
            field,
            on_device,
            in_config,
        } = self;
        if *field == "device size" {
            write!(
                f,
                "the device was formatted with {on_device} bytes but now has {in_config}; a device cannot shrink under its data"
            )?;
        } else {
            write!(
                f,
                "the device header's {field} is {on_device}, the config's is {in_config}"
            )?;
        }
        write!(
            f,
            ". Fix the config, or set `cold-start-empty = true` in the namespace's storage settings to erase the device and start it empty"
        )
    }
}

impl std::error::Error for HeaderMismatch {}

impl DeviceHeader {
    /// Bytes of the slot this header occupies (the checksummed part).
    pub fn used_bytes(&self) -> usize {
        HEADER_FIXED_BYTES + self.truncations.len() * TRUNCATION_ENTRY_BYTES
    }

    /// Whether `encode` accepts the header: exactly what `decode` would.
    pub fn validate(&self) -> Result<(), HeaderError> {
        let ns = self.namespace.len();
        if ns == 0 || ns > MAX_NAMESPACE_NAME_BYTES {
            return Err(HeaderError::NamespaceName { len: ns });
        }
        if self.device_index >= self.device_count {
            return Err(HeaderError::DeviceIndex {
                index: self.device_index,
                count: self.device_count,
            });
        }
        if self.write_block_bytes == 0 {
            return Err(HeaderError::WriteBlockSize);
        }
        if self.truncations.len() > MAX_TRUNCATIONS {
            return Err(HeaderError::TooManyTruncations {
                count: self.truncations.len(),
                max: MAX_TRUNCATIONS,
            });
        }
        for (i, t) in self.truncations.iter().enumerate() {
            if let Some(set) = &t.set_name {
                // An empty set name would read back as the whole namespace.
                if set.is_empty() || set.len() > MAX_SET_NAME_BYTES {
                    return Err(HeaderError::SetName {
                        entry: i,
                        len: set.len(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Writes the header into `slot`, exactly [`HEADER_SLOT_BYTES`] long;
    /// the bytes after the header are zeroed.
    pub fn encode(&self, slot: &mut [u8]) -> Result<(), HeaderError> {
        if slot.len() != HEADER_SLOT_BYTES {
            return Err(HeaderError::SlotSize { len: slot.len() });
        }
        self.validate()?;
        let used = self.used_bytes();
        slot.fill(0);
        put(slot, at::MAGIC, &HEADER_MAGIC);
        put(slot, at::VERSION, &FORMAT_VERSION.to_le_bytes());
        put(slot, at::USED, &(used as u32).to_le_bytes());
        put(
            slot,
            at::TRUNCATION_COUNT,
            &(self.truncations.len() as u32).to_le_bytes(),
        );
        put(slot, at::SEQUENCE, &self.sequence.to_le_bytes());
        slot[at::NAMESPACE_LEN] = self.namespace.len() as u8;
        put(slot, at::NAMESPACE, self.namespace.as_bytes());
        put(slot, at::DEVICE_INDEX, &self.device_index.to_le_bytes());
        put(slot, at::DEVICE_COUNT, &self.device_count.to_le_bytes());
        put(slot, at::INSTANCE_ID, &self.instance_id.to_le_bytes());
        put(slot, at::DEVICE_BYTES, &self.device_bytes.to_le_bytes());
        put(
            slot,
            at::WRITE_BLOCK_BYTES,
            &self.write_block_bytes.to_le_bytes(),
        );
        slot[at::TRUSTED] = u8::from(self.trusted);
        put(slot, at::SHUTDOWN_ID, &self.shutdown_id.to_le_bytes());
        put(
            slot,
            at::LUT_WATERMARK,
            &self.lut_watermark_ms.to_le_bytes(),
        );
        put(slot, at::NEXT_LIFE, &self.next_life.to_le_bytes());
        for (i, t) in self.truncations.iter().enumerate() {
            let base = at::TRUNCATIONS + i * TRUNCATION_ENTRY_BYTES;
            let set = t.set_name.as_deref().unwrap_or("");
            slot[base + entry::SET_NAME_LEN] = set.len() as u8;
            put(slot, base + entry::SET_NAME, set.as_bytes());
            put(slot, base + entry::BEFORE_MS, &t.before_ms.to_le_bytes());
        }
        let crc = checksum(&slot[..used]);
        put(slot, at::CRC, &crc.to_le_bytes());
        Ok(())
    }

    /// Whether this header, written by a format, fits the config; the first
    /// mismatch found is returned.
    pub fn check(&self, expected: &Expected) -> Result<(), HeaderMismatch> {
        fn mismatch(field: &'static str, on_device: String, in_config: String) -> HeaderMismatch {
            HeaderMismatch {
                field,
                on_device,
                in_config,
            }
        }
        if self.namespace != expected.namespace {
            return Err(mismatch(
                "namespace",
                format!("{:?}", self.namespace),
                format!("{:?}", expected.namespace),
            ));
        }
        if self.device_count != expected.device_count {
            return Err(mismatch(
                "device count",
                self.device_count.to_string(),
                expected.device_count.to_string(),
            ));
        }
        if self.device_index != expected.device_index {
            return Err(mismatch(
                "device index (position in the namespace's device list)",
                self.device_index.to_string(),
                expected.device_index.to_string(),
            ));
        }
        if let Some(id) = expected.instance_id {
            if self.instance_id != id {
                return Err(mismatch(
                    "instance id",
                    format!("{:#018x}", self.instance_id),
                    format!("{id:#018x} (that of the namespace's other devices)"),
                ));
            }
        }
        if self.write_block_bytes != expected.write_block_bytes {
            return Err(mismatch(
                "write-block-size",
                self.write_block_bytes.to_string(),
                expected.write_block_bytes.to_string(),
            ));
        }
        // A grown device is fine: the data written stays where it was, and
        // the new space is free write blocks. A shrunk one lost data.
        if expected.device_bytes < self.device_bytes {
            return Err(mismatch(
                "device size",
                self.device_bytes.to_string(),
                expected.device_bytes.to_string(),
            ));
        }
        Ok(())
    }

    /// Bytes the device has grown by since it was formatted, if it has.
    pub fn grown_bytes(&self, expected: &Expected) -> Option<u64> {
        expected
            .device_bytes
            .checked_sub(self.device_bytes)
            .filter(|&grown| grown > 0)
    }
}

fn put(slot: &mut [u8], offset: usize, bytes: &[u8]) {
    slot[offset..offset + bytes.len()].copy_from_slice(bytes);
}

/// CRC-32C of a header's used bytes with its checksum field taken as zero.
fn checksum(used: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&used[..at::CRC]);
    let crc = crc32c::crc32c_append(crc, &[0; 4]);
    crc32c::crc32c_append(crc, &used[at::CRC + 4..])
}

// Readers for offsets the caller has bounds-checked.
fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    let mut v = [0; 4];
    v.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(v)
}

fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    let mut v = [0; 8];
    v.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(v)
}

/// A name stored as a length byte at `len_at` and a zero-padded field of
/// `max` bytes after it; `min` is the shortest valid length.
fn name_at(bytes: &[u8], len_at: usize, min: usize, max: usize) -> Result<&str, HeaderError> {
    let corrupt = |offset, what| HeaderError::Corrupt { offset, what };
    let len = usize::from(bytes[len_at]);
    if len < min || len > max {
        return Err(corrupt(len_at, HeaderProblem::BadName));
    }
    let field = &bytes[len_at + 1..len_at + 1 + max];
    if let Some(i) = field[len..].iter().position(|&b| b != 0) {
        return Err(corrupt(len_at + 1 + len + i, HeaderProblem::NonZeroPadding));
    }
    std::str::from_utf8(&field[..len])
        .map_err(|e| corrupt(len_at + 1 + e.valid_up_to(), HeaderProblem::BadName))
}

/// Decodes and verifies the header in `slot` (the bytes of one slot).
pub fn decode(slot: &[u8]) -> Result<DeviceHeader, HeaderError> {
    let corrupt = |offset, what| Err(HeaderError::Corrupt { offset, what });
    let Some(magic) = slot.get(at::MAGIC..at::MAGIC + 8) else {
        return Err(HeaderError::Blank);
    };
    if magic != HEADER_MAGIC {
        let bits: u32 = magic
            .iter()
            .zip(HEADER_MAGIC)
            .map(|(a, b)| (a ^ b).count_ones())
            .sum();
        if bits <= DAMAGED_MAGIC_BITS {
            let mut found = [0; 8];
            found.copy_from_slice(magic);
            return corrupt(at::MAGIC, HeaderProblem::DamagedMagic(found));
        }
        return Err(HeaderError::Blank);
    }
    if slot.len() < PREFIX_BYTES {
        return corrupt(slot.len(), HeaderProblem::Truncated { len: slot.len() });
    }
    // The checksum comes before the version: a flipped bit in the version is
    // damage, not a header from another build.
    let used = u32_at(slot, at::USED);
    let limit = slot.len().min(HEADER_SLOT_BYTES);
    if (used as usize) < PREFIX_BYTES || used as usize > limit {
        return corrupt(at::USED, HeaderProblem::UsedLength { used });
    }
    let bytes = &slot[..used as usize];
    let stored = u32_at(bytes, at::CRC);
    let computed = checksum(bytes);
    if stored != computed {
        return corrupt(
            at::CRC,
            HeaderProblem::ChecksumMismatch { stored, computed },
        );
    }
    let version = u32_at(bytes, at::VERSION);
    if version != FORMAT_VERSION {
        return Err(HeaderError::Version { found: version });
    }
    // From here on, the checksum held: a problem is a writer's bug or a
    // deliberate edit, still refused by offset rather than trusted.
    if bytes.len() < HEADER_FIXED_BYTES {
        return corrupt(at::USED, HeaderProblem::UsedLength { used });
    }
    let count = u32_at(bytes, at::TRUNCATION_COUNT);
    if count as usize > MAX_TRUNCATIONS {
        return corrupt(
            at::TRUNCATION_COUNT,
            HeaderProblem::TruncationCount { count },
        );
    }
    if bytes.len() != HEADER_FIXED_BYTES + count as usize * TRUNCATION_ENTRY_BYTES {
        return corrupt(at::USED, HeaderProblem::UsedLength { used });
    }
    let namespace = name_at(bytes, at::NAMESPACE_LEN, 1, MAX_NAMESPACE_NAME_BYTES)?.to_string();
    let device_index = u32_at(bytes, at::DEVICE_INDEX);
    let device_count = u32_at(bytes, at::DEVICE_COUNT);
    if device_index >= device_count {
        return corrupt(
            at::DEVICE_INDEX,
            HeaderProblem::DeviceIndex {
                index: device_index,
                count: device_count,
            },
        );
    }
    let write_block_bytes = u32_at(bytes, at::WRITE_BLOCK_BYTES);
    if write_block_bytes == 0 {
        return corrupt(at::WRITE_BLOCK_BYTES, HeaderProblem::ZeroWriteBlockSize);
    }
    let trusted = match bytes[at::TRUSTED] {
        0 => false,
        1 => true,
        v => return corrupt(at::TRUSTED, HeaderProblem::TrustedFlag(v)),
    };
    if let Some(i) = bytes[at::RESERVED..at::SHUTDOWN_ID]
        .iter()
        .position(|&b| b != 0)
    {
        return corrupt(at::RESERVED + i, HeaderProblem::NonZeroPadding);
    }
    let mut truncations = Vec::with_capacity(count as usize);
    for i in 0..count as usize {
        let base = at::TRUNCATIONS + i * TRUNCATION_ENTRY_BYTES;
        let set = name_at(bytes, base + entry::SET_NAME_LEN, 0, MAX_SET_NAME_BYTES)?;
        truncations.push(Truncation {
            set_name: (!set.is_empty()).then(|| set.to_string()),
            before_ms: u64_at(bytes, base + entry::BEFORE_MS),
        });
    }
    Ok(DeviceHeader {
        sequence: u64_at(bytes, at::SEQUENCE),
        namespace,
        device_index,
        device_count,
        instance_id: u64_at(bytes, at::INSTANCE_ID),
        write_block_bytes,
        device_bytes: u64_at(bytes, at::DEVICE_BYTES),
        trusted,
        shutdown_id: u64_at(bytes, at::SHUTDOWN_ID),
        lut_watermark_ms: u64_at(bytes, at::LUT_WATERMARK),
        next_life: u64_at(bytes, at::NEXT_LIFE),
        truncations,
    })
}

/// The header a device holds, given what its two slots decoded to: the
/// valid one with the higher sequence.
///
/// With no valid slot the most telling error wins: `Version` over `Corrupt`
/// over `Blank` (both blank is a blank device). A `Version` slot wins even
/// over a valid one: it can only have been written by a newer build after
/// the valid one (this build refuses such a device, so never writes after
/// it), and falling back to the older header would undo what that build did.
pub fn newest(
    a: Result<DeviceHeader, HeaderError>,
    b: Result<DeviceHeader, HeaderError>,
) -> Result<DeviceHeader, HeaderError> {
    fn rank(r: &Result<DeviceHeader, HeaderError>) -> u8 {
        match r {
            Err(HeaderError::Version { .. }) => 3,
            Ok(_) => 2,
            Err(HeaderError::Blank) => 0,
            Err(_) => 1,
        }
    }
    match (a, b) {
        (Ok(a), Ok(b)) => Ok(if b.sequence > a.sequence { b } else { a }),
        (a, b) => {
            if rank(&b) > rank(&a) {
                b
            } else {
                a
            }
        }
    }
}

/// Draws an instance id for a new namespace format: unpredictable, non-zero.
pub fn new_instance_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // `RandomState` is keyed from the operating system's random source; the
    // clock and process id separate two formats even if it were not.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(now);
    hasher.write_u32(std::process::id());
    hasher.finish().max(1)
}

/// Why a header could not be read from or written to a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderIoError {
    /// No buffer, or a device whose I/O sizes cannot address header slots.
    Setup(SetupError),
    /// A read, write or flush failed; the error names device, op and offset.
    Device(DeviceError),
    /// The operation could not be run, or did not finish within
    /// [`HEADER_IO_TIMEOUT`].
    Stalled {
        device: String,
        op: IoKind,
        offset: u64,
        message: String,
    },
    /// The header to write does not encode.
    Encode {
        device: String,
        offset: u64,
        error: HeaderError,
    },
    /// The header's sequence is at its maximum; no newer header can be told apart.
    SequenceExhausted { device: String },
}

impl fmt::Display for HeaderIoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderIoError::Setup(e) => write!(f, "device header: {e}"),
            HeaderIoError::Device(e) => write!(f, "device header: {e}"),
            HeaderIoError::Stalled {
                device,
                op,
                offset,
                message,
            } => write!(
                f,
                "device header: {op} at offset {offset} on {device} did not complete: {message}"
            ),
            HeaderIoError::Encode {
                device,
                offset,
                error,
            } => write!(
                f,
                "device header for {device} (slot at offset {offset}) not written: {error}"
            ),
            HeaderIoError::SequenceExhausted { device } => {
                write!(f, "device header on {device}: sequence number exhausted")
            }
        }
    }
}

impl std::error::Error for HeaderIoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HeaderIoError::Setup(e) => Some(e),
            HeaderIoError::Device(e) => Some(e),
            HeaderIoError::Encode { error, .. } => Some(error),
            HeaderIoError::Stalled { .. } | HeaderIoError::SequenceExhausted { .. } => None,
        }
    }
}

/// A slot-sized buffer, after checking that the device can do slot-sized
/// I/O at slot offsets at all.
fn slot_buffer(device: &dyn Device) -> Result<IoBuffer, HeaderIoError> {
    let info = device.info();
    let refuse = |message: String| {
        Err(HeaderIoError::Setup(SetupError {
            device: info.name.clone(),
            message,
        }))
    };
    if info.min_io_bytes == 0 || !HEADER_SLOT_BYTES.is_multiple_of(info.min_io_bytes as usize) {
        return refuse(format!(
            "minimum I/O size {} does not divide the {HEADER_SLOT_BYTES}-byte header slot",
            info.min_io_bytes
        ));
    }
    if (info.max_io_bytes as usize) < HEADER_SLOT_BYTES {
        return refuse(format!(
            "maximum I/O size {} is below the {HEADER_SLOT_BYTES}-byte header slot",
            info.max_io_bytes
        ));
    }
    let buffer = device
        .alloc_buffer(HEADER_SLOT_BYTES)
        .map_err(HeaderIoError::Setup)?;
    if buffer.len() != HEADER_SLOT_BYTES {
        return refuse(format!(
            "asked for a {HEADER_SLOT_BYTES}-byte buffer, got {} bytes",
            buffer.len()
        ));
    }
    Ok(buffer)
}

/// Runs one operation to completion and hands its buffer back.
fn run_one(
    device: &dyn Device,
    queue: &mut dyn Queue,
    kind: IoKind,
    offset: u64,
    buffer: IoBuffer,
) -> Result<IoBuffer, HeaderIoError> {
    let stalled = |message: String| HeaderIoError::Stalled {
        device: device.info().name.clone(),
        op: kind,
        offset,
        message,
    };
    let op = IoOp {
        kind,
        offset,
        buffer,
        token: offset,
    };
    let mut done = run_to_completion(queue, vec![op], HEADER_IO_TIMEOUT).map_err(stalled)?;
    let Some(completion) = done.pop() else {
        return Err(stalled("the queue returned no completion".into()));
    };
    completion.result.map_err(HeaderIoError::Device)?;
    Ok(completion.buffer)
}

/// Reads both header slots of `device` and returns the newest header, or
/// why there is none. The outer error is an I/O failure; the inner one what
/// the slots hold (blank, corrupt, another version).
///
/// A slot that cannot be read is an error, not a slot to skip: it may hold
/// the newer header, and the older one in the other slot could carry a stale
/// trusted flag or miss a truncation. For start-up only: `queue` must be
/// idle, and this blocks until both reads finish.
pub fn read_header(
    device: &dyn Device,
    queue: &mut dyn Queue,
) -> Result<Result<DeviceHeader, HeaderError>, HeaderIoError> {
    let mut read = |slot: usize| -> Result<Result<DeviceHeader, HeaderError>, HeaderIoError> {
        let buffer = slot_buffer(device)?;
        let buffer = run_one(device, queue, IoKind::Read, slot_offset(slot), buffer)?;
        // A header in the wrong slot breaks the alternation write_header
        // relies on: its next write would overwrite it.
        Ok(decode(&buffer).and_then(|header| {
            if header.sequence % HEADER_SLOTS as u64 == slot as u64 {
                Ok(header)
            } else {
                Err(HeaderError::Corrupt {
                    offset: at::SEQUENCE,
                    what: HeaderProblem::WrongSlot {
                        sequence: header.sequence,
                        slot,
                    },
                })
            }
        }))
    };
    let first = read(0)?;
    let second = read(1)?;
    Ok(newest(first, second))
}

/// Writes `header` as the device's new header: with the next sequence, into
/// the slot the current header is not in, then flushes the device so the
/// header is durable before this returns. On success `header.sequence` is
/// the sequence written; on failure it is unchanged, so that a retry writes
/// the same slot and the last good header survives.
///
/// `header.sequence` must be that of the device's current header (or the
/// one being replaced; 0 for a blank device). For start-up and shutdown
/// only: `queue` must be idle, and this blocks until the flush finishes.
pub fn write_header(
    device: &dyn Device,
    queue: &mut dyn Queue,
    header: &mut DeviceHeader,
) -> Result<(), HeaderIoError> {
    let name = || device.info().name.clone();
    let Some(sequence) = header.sequence.checked_add(1) else {
        return Err(HeaderIoError::SequenceExhausted { device: name() });
    };
    let offset = slot_offset((sequence % HEADER_SLOTS as u64) as usize);
    let mut buffer = slot_buffer(device)?;
    let encoded = {
        let current = header.sequence;
        header.sequence = sequence;
        let encoded = header.encode(&mut buffer);
        header.sequence = current;
        encoded
    };
    encoded.map_err(|error| HeaderIoError::Encode {
        device: name(),
        offset,
        error,
    })?;
    let buffer = run_one(device, queue, IoKind::Write, offset, buffer)?;
    // The flush's offset is ignored by the device; it names the slot in errors.
    run_one(device, queue, IoKind::Flush, offset, buffer)?;
    header.sequence = sequence;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::memory::{Faults, MemoryDevice};
    use proptest::prelude::*;

    fn sample() -> DeviceHeader {
        DeviceHeader {
            sequence: 0,
            namespace: "test".into(),
            device_index: 1,
            device_count: 3,
            instance_id: 0x1234_5678_9abc_def0,
            write_block_bytes: 1 << 20,
            device_bytes: 64 << 20,
            trusted: false,
            shutdown_id: 0,
            lut_watermark_ms: 533_000_000_000,
            next_life: 3 << 40,
            truncations: vec![
                Truncation {
                    set_name: None,
                    before_ms: 1_000,
                },
                Truncation {
                    set_name: Some("users".into()),
                    before_ms: 2_000,
                },
                Truncation {
                    set_name: Some("s".repeat(MAX_SET_NAME_BYTES)),
                    before_ms: u64::MAX,
                },
            ],
        }
    }

    fn expected_for(h: &DeviceHeader) -> Expected {
        Expected {
            namespace: h.namespace.clone(),
            device_index: h.device_index,
            device_count: h.device_count,
            write_block_bytes: h.write_block_bytes,
            device_bytes: h.device_bytes,
            instance_id: Some(h.instance_id),
        }
    }

    fn encoded(h: &DeviceHeader) -> Vec<u8> {
        let mut slot = vec![0xEE; HEADER_SLOT_BYTES];
        h.encode(&mut slot).unwrap();
        slot
    }

    /// Re-checksums the first `used` bytes of `slot` after an edit, so that
    /// only the field checks can catch the edit.
    fn reseal(slot: &mut [u8], used: usize) {
        let crc = checksum(&slot[..used]);
        put(slot, at::CRC, &crc.to_le_bytes());
    }

    /// Names of 1..=max bytes, ASCII or not.
    fn name(max: usize) -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::string::string_regex(&format!("[a-zA-Z0-9_.-]{{1,{max}}}")).unwrap(),
            proptest::collection::vec(any::<char>(), 1..=max / 4)
                .prop_map(String::from_iter)
                .prop_filter("fits", move |s| s.len() <= max),
        ]
    }

    fn header() -> impl Strategy<Value = DeviceHeader> {
        (
            any::<u64>(),
            name(MAX_NAMESPACE_NAME_BYTES),
            (1u32.., any::<u32>()),
            any::<u64>(),
            1u32..,
            any::<u64>(),
            any::<bool>(),
            (any::<u64>(), any::<u64>(), any::<u64>()),
            proptest::collection::vec(
                (proptest::option::of(name(MAX_SET_NAME_BYTES)), any::<u64>()),
                0..40,
            ),
        )
            .prop_map(
                |(
                    sequence,
                    namespace,
                    (device_count, index),
                    instance_id,
                    write_block_bytes,
                    device_bytes,
                    trusted,
                    (shutdown_id, lut_watermark_ms, next_life),
                    truncations,
                )| DeviceHeader {
                    sequence,
                    namespace,
                    device_index: index % device_count,
                    device_count,
                    instance_id,
                    write_block_bytes,
                    device_bytes,
                    trusted,
                    shutdown_id,
                    lut_watermark_ms,
                    next_life,
                    truncations: truncations
                        .into_iter()
                        .map(|(set_name, before_ms)| Truncation {
                            set_name,
                            before_ms,
                        })
                        .collect(),
                },
            )
    }

    proptest! {
        #[test]
        fn headers_round_trip(h in header()) {
            let slot = encoded(&h);
            prop_assert_eq!(h.used_bytes(), u32_at(&slot, at::USED) as usize);
            prop_assert!(slot[h.used_bytes()..].iter().all(|&b| b == 0), "rest of the slot zeroed");
            prop_assert_eq!(decode(&slot).unwrap(), h);
        }

        #[test]
        fn a_flipped_bit_is_corrupt(h in header(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut slot = encoded(&h);
            slot[at.index(h.used_bytes())] ^= 1 << bit;
            let result = decode(&slot);
            prop_assert!(matches!(result, Err(HeaderError::Corrupt { .. })), "{:?}", result);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode(&bytes);
            // The same behind a good magic and plausible length, to get past
            // the first checks.
            let mut slot = bytes.clone();
            if slot.len() >= PREFIX_BYTES {
                put(&mut slot, at::MAGIC, &HEADER_MAGIC);
                let used = (u32_at(&slot, at::USED) as usize % slot.len()).max(PREFIX_BYTES) as u32;
                put(&mut slot, at::USED, &used.to_le_bytes());
                put(&mut slot, at::VERSION, &FORMAT_VERSION.to_le_bytes());
                reseal(&mut slot, used as usize);
                let _ = decode(&slot);
            }
        }

        #[test]
        fn resealed_edits_are_refused_or_canonical(
            h in header(),
            at in any::<prop::sample::Index>(),
            value in any::<u8>(),
        ) {
            // An edit the checksum does not catch: every field check must
            // refuse it cleanly, or it decodes to a header that encodes back
            // to exactly these bytes.
            let mut slot = encoded(&h);
            let i = at.index(h.used_bytes());
            slot[i] = value;
            reseal(&mut slot, h.used_bytes());
            if let Ok(decoded) = decode(&slot) {
                prop_assert_eq!(encoded(&decoded), slot);
            }
        }
    }

    #[test]
    fn every_bit_flip_in_the_used_part_is_caught() {
        let h = sample();
        let slot = encoded(&h);
        for i in 0..h.used_bytes() {
            for bit in 0..8 {
                let mut damaged = slot.clone();
                damaged[i] ^= 1 << bit;
                match decode(&damaged) {
                    Err(HeaderError::Corrupt { .. }) => {}
                    other => panic!("flip of bit {bit} of byte {i}: {other:?}"),
                }
            }
        }
        // Past the used part the bytes are not the header's.
        let mut tail = slot.clone();
        tail[h.used_bytes()] = 0xFF;
        assert_eq!(decode(&tail), Ok(h));
    }

    #[test]
    fn blank_corrupt_and_version_are_told_apart() {
        assert_eq!(decode(&vec![0; HEADER_SLOT_BYTES]), Err(HeaderError::Blank));
        assert_eq!(decode(&[]), Err(HeaderError::Blank));
        // Another format's superblock is not ours.
        let mut foreign = vec![0; HEADER_SLOT_BYTES];
        foreign[..8].copy_from_slice(b"XFSB\0\0\x10\0");
        assert_eq!(decode(&foreign), Err(HeaderError::Blank));

        let slot = encoded(&sample());
        let mut magic = slot.clone();
        magic[3] ^= 0x40;
        let e = decode(&magic).unwrap_err();
        assert!(
            matches!(
                e,
                HeaderError::Corrupt {
                    offset: 0,
                    what: HeaderProblem::DamagedMagic(_)
                }
            ),
            "{e}"
        );
        assert!(decode(&slot[..12]).is_err());

        // Version 1 (before write-block lives) is refused as another format.
        let mut v1 = slot.clone();
        put(&mut v1, at::VERSION, &1u32.to_le_bytes());
        let e = decode(&v1).unwrap_err();
        assert!(
            matches!(e, HeaderError::Corrupt { offset: 16, .. }),
            "unsealed: {e}"
        );
        reseal(&mut v1, sample().used_bytes());
        assert_eq!(decode(&v1), Err(HeaderError::Version { found: 1 }));
    }

    #[test]
    fn errors_name_the_offset() {
        let mut slot = encoded(&sample());
        slot[at::TRUSTED] = 2;
        reseal(&mut slot, sample().used_bytes());
        let e = decode(&slot).unwrap_err();
        assert_eq!(
            e,
            HeaderError::Corrupt {
                offset: at::TRUSTED,
                what: HeaderProblem::TrustedFlag(2)
            }
        );
        assert!(e.to_string().contains("byte 92"), "{e}");

        let mut slot = encoded(&sample());
        let second_set = at::TRUNCATIONS + TRUNCATION_ENTRY_BYTES + entry::SET_NAME;
        slot[second_set] = 0xFF; // not UTF-8
        reseal(&mut slot, sample().used_bytes());
        assert_eq!(
            decode(&slot),
            Err(HeaderError::Corrupt {
                offset: second_set,
                what: HeaderProblem::BadName
            })
        );

        let mut slot = encoded(&sample());
        put(
            &mut slot,
            at::USED,
            &(HEADER_SLOT_BYTES as u32 + 1).to_le_bytes(),
        );
        assert!(matches!(
            decode(&slot),
            Err(HeaderError::Corrupt {
                offset: 12,
                what: HeaderProblem::UsedLength { .. }
            })
        ));
    }

    #[test]
    fn encode_refuses_what_decode_would() {
        let h = sample();
        let mut slot = vec![0; HEADER_SLOT_BYTES];
        assert_eq!(
            h.encode(&mut slot[..4096]),
            Err(HeaderError::SlotSize { len: 4096 })
        );
        let refused = |edit: fn(&mut DeviceHeader)| {
            let mut h = sample();
            edit(&mut h);
            h.encode(&mut vec![0; HEADER_SLOT_BYTES]).unwrap_err()
        };
        assert_eq!(
            refused(|h| h.namespace = String::new()),
            HeaderError::NamespaceName { len: 0 }
        );
        assert_eq!(
            refused(|h| h.namespace = "n".repeat(32)),
            HeaderError::NamespaceName { len: 32 }
        );
        assert_eq!(
            refused(|h| h.truncations[1].set_name = Some(String::new())),
            HeaderError::SetName { entry: 1, len: 0 }
        );
        assert_eq!(
            refused(|h| h.truncations[2].set_name = Some("s".repeat(64))),
            HeaderError::SetName { entry: 2, len: 64 }
        );
        assert_eq!(
            refused(|h| h.device_index = 3),
            HeaderError::DeviceIndex { index: 3, count: 3 }
        );
        assert_eq!(
            refused(|h| h.write_block_bytes = 0),
            HeaderError::WriteBlockSize
        );
    }

    #[test]
    fn truncations_are_limited_to_what_fits_a_slot() {
        let mut h = sample();
        h.truncations = (0..MAX_TRUNCATIONS)
            .map(|i| Truncation {
                set_name: Some(format!("{i:0>63}")),
                before_ms: i as u64,
            })
            .collect();
        let slot = encoded(&h);
        assert_eq!(decode(&slot), Ok(h.clone()));
        h.truncations.push(Truncation {
            set_name: None,
            before_ms: 0,
        });
        let e = h.encode(&mut vec![0; HEADER_SLOT_BYTES]).unwrap_err();
        assert_eq!(
            e,
            HeaderError::TooManyTruncations {
                count: MAX_TRUNCATIONS + 1,
                max: MAX_TRUNCATIONS
            }
        );
        assert!(e.to_string().contains("at most 908"), "{e}");
    }

    #[test]
    fn newest_picks_the_valid_header_with_the_highest_sequence() {
        let at_seq = |sequence| {
            Ok(DeviceHeader {
                sequence,
                ..sample()
            })
        };
        let corrupt = || {
            Err(HeaderError::Corrupt {
                offset: 16,
                what: HeaderProblem::ChecksumMismatch {
                    stored: 1,
                    computed: 2,
                },
            })
        };
        let seq = |r: Result<DeviceHeader, HeaderError>| r.map(|h| h.sequence);
        assert_eq!(seq(newest(at_seq(4), at_seq(5))), Ok(5));
        assert_eq!(seq(newest(at_seq(5), at_seq(4))), Ok(5));
        assert_eq!(seq(newest(at_seq(7), Err(HeaderError::Blank))), Ok(7));
        assert_eq!(seq(newest(Err(HeaderError::Blank), at_seq(7))), Ok(7));
        assert_eq!(seq(newest(at_seq(3), corrupt())), Ok(3));
        assert_eq!(seq(newest(corrupt(), at_seq(3))), Ok(3));
        assert_eq!(
            seq(newest(Err(HeaderError::Blank), Err(HeaderError::Blank))),
            Err(HeaderError::Blank)
        );
        assert_eq!(
            seq(newest(corrupt(), Err(HeaderError::Blank))),
            seq(corrupt())
        );
        assert_eq!(
            seq(newest(Err(HeaderError::Blank), corrupt())),
            seq(corrupt())
        );
        assert_eq!(seq(newest(corrupt(), corrupt())), seq(corrupt()));
        let v2 = || Err(HeaderError::Version { found: 2 });
        for other in [at_seq(9), corrupt(), Err(HeaderError::Blank)] {
            assert_eq!(
                seq(newest(v2(), other.clone())),
                Err(HeaderError::Version { found: 2 })
            );
            assert_eq!(
                seq(newest(other, v2())),
                Err(HeaderError::Version { found: 2 })
            );
        }
    }

    #[test]
    fn check_names_the_mismatched_field() {
        let h = sample();
        assert_eq!(h.check(&expected_for(&h)), Ok(()));
        let unpinned = Expected {
            instance_id: None,
            ..expected_for(&h)
        };
        assert_eq!(h.check(&unpinned), Ok(()));

        let mismatch = |edit: fn(&mut Expected)| {
            let mut expected = expected_for(&sample());
            edit(&mut expected);
            let e = sample().check(&expected).unwrap_err();
            let text = e.to_string();
            assert!(text.contains("cold-start-empty = true"), "{text}");
            assert!(
                text.contains(&e.on_device) && text.contains(&e.in_config),
                "{text}"
            );
            (e.field, text)
        };
        let (field, text) = mismatch(|e| e.namespace = "bar".into());
        assert_eq!(field, "namespace");
        assert!(
            text.contains("\"test\"") && text.contains("\"bar\""),
            "{text}"
        );
        assert_eq!(mismatch(|e| e.device_count = 4).0, "device count");
        assert!(mismatch(|e| e.device_index = 0)
            .0
            .starts_with("device index"));
        let (field, text) = mismatch(|e| e.instance_id = Some(7));
        assert_eq!(field, "instance id");
        assert!(text.contains("0x123456789abcdef0"), "{text}");
        let (field, text) = mismatch(|e| e.write_block_bytes = 128 << 10);
        assert_eq!(field, "write-block-size");
        assert!(
            text.contains("1048576") && text.contains("131072"),
            "{text}"
        );
        let (field, text) = mismatch(|e| e.device_bytes = 32 << 20);
        assert_eq!(field, "device size");
        assert!(text.contains("shrink"), "{text}");

        // Growth is allowed, and reported.
        let mut grown = expected_for(&h);
        grown.device_bytes += 16 << 20;
        assert_eq!(h.check(&grown), Ok(()));
        assert_eq!(h.grown_bytes(&grown), Some(16 << 20));
        assert_eq!(h.grown_bytes(&expected_for(&h)), None);
    }

    #[test]
    fn instance_ids_differ() {
        let a = new_instance_id();
        let b = new_instance_id();
        assert_ne!(a, 0);
        assert_ne!(a, b);
    }

    // Device tests, on the memory backend.

    const DEVICE: &str = "mem";

    fn device() -> (MemoryDevice, Box<dyn Queue>) {
        let device = MemoryDevice::new(DEVICE, 64 << 20, 4096, 8);
        let queue = device.open_queue().unwrap();
        (device, queue)
    }

    fn slot_on(device: &MemoryDevice, slot: usize) -> Result<DeviceHeader, HeaderError> {
        let start = slot_offset(slot);
        decode(&device.durable_bytes(start..start + HEADER_SLOT_BYTES as u64))
    }

    #[test]
    fn a_fresh_device_is_blank() {
        let (device, mut queue) = device();
        assert_eq!(
            read_header(&device, queue.as_mut()),
            Ok(Err(HeaderError::Blank))
        );
    }

    #[test]
    fn a_written_header_reads_back() {
        let (device, mut queue) = device();
        let mut h = sample();
        write_header(&device, queue.as_mut(), &mut h).unwrap();
        assert_eq!(h.sequence, 1);
        assert_eq!(read_header(&device, queue.as_mut()), Ok(Ok(h.clone())));
        assert_eq!(device.stats().flushes, 1, "the header is flushed");
        // Only the header region was touched.
        assert_eq!(device.stats().bytes_written, HEADER_SLOT_BYTES as u64);
    }

    #[test]
    fn writes_alternate_slots_and_the_newer_wins() {
        let (device, mut queue) = device();
        let mut h = sample();
        write_header(&device, queue.as_mut(), &mut h).unwrap();
        assert_eq!(slot_on(&device, 0), Err(HeaderError::Blank));
        assert_eq!(slot_on(&device, 1), Ok(h.clone()));
        let first = h.clone();

        h.trusted = true;
        h.shutdown_id = 42;
        write_header(&device, queue.as_mut(), &mut h).unwrap();
        assert_eq!(h.sequence, 2);
        assert_eq!(slot_on(&device, 0), Ok(h.clone()));
        assert_eq!(
            slot_on(&device, 1),
            Ok(first),
            "the previous header is kept"
        );
        assert_eq!(read_header(&device, queue.as_mut()), Ok(Ok(h.clone())));

        h.trusted = false;
        write_header(&device, queue.as_mut(), &mut h).unwrap();
        assert_eq!(slot_on(&device, 1), Ok(h.clone()));
        assert_eq!(read_header(&device, queue.as_mut()), Ok(Ok(h)));
    }

    #[test]
    fn a_torn_header_write_keeps_the_previous_header() {
        let (device, mut queue) = device();
        let mut h = sample();
        write_header(&device, queue.as_mut(), &mut h).unwrap();
        let first = h.clone();

        // A header longer than half a slot, so that the torn write (which
        // lands its leading half) really cuts the header.
        h.truncations = (0..600)
            .map(|i| Truncation {
                set_name: Some(format!("set-{i}")),
                before_ms: i,
            })
            .collect();
        assert!(h.used_bytes() > HEADER_SLOT_BYTES / 2);
        device.set_faults(Faults {
            crash_after_ops: Some(0),
            torn_crash: true,
            ..Default::default()
        });
        let e = write_header(&device, queue.as_mut(), &mut h).unwrap_err();
        assert!(
            matches!(&e, HeaderIoError::Device(d) if d.device == DEVICE && d.offset == 0),
            "{e}"
        );
        assert_eq!(
            h.sequence, 1,
            "a failed write does not advance the sequence"
        );
        device.power_cycle();

        // The torn slot holds the magic but not a whole header.
        assert!(matches!(
            slot_on(&device, 0),
            Err(HeaderError::Corrupt { .. })
        ));
        assert_eq!(read_header(&device, queue.as_mut()), Ok(Ok(first)));

        // The retry goes to the same slot, and then wins.
        write_header(&device, queue.as_mut(), &mut h).unwrap();
        assert_eq!(h.sequence, 2);
        assert_eq!(read_header(&device, queue.as_mut()), Ok(Ok(h)));
    }

    #[test]
    fn a_short_torn_header_is_whole_or_absent() {
        // A header shorter than the half that lands is written whole even by a
        // torn write: reading gives one of the two headers, never a mix.
        let (device, mut queue) = device();
        let mut h = sample();
        write_header(&device, queue.as_mut(), &mut h).unwrap();
        let first = h.clone();
        h.trusted = true;
        device.set_faults(Faults {
            crash_after_ops: Some(0),
            torn_crash: true,
            ..Default::default()
        });
        assert!(write_header(&device, queue.as_mut(), &mut h).is_err());
        device.power_cycle();
        let read = read_header(&device, queue.as_mut()).unwrap().unwrap();
        let second = DeviceHeader {
            sequence: 2,
            ..h.clone()
        };
        assert!(read == first || read == second, "{read:?}");
    }

    #[test]
    fn io_errors_name_the_device_and_the_offset() {
        let (device, mut queue) = device();
        let mut h = sample();
        write_header(&device, queue.as_mut(), &mut h).unwrap();
        write_header(&device, queue.as_mut(), &mut h).unwrap();
        let good = h.clone();

        // The third header goes to slot 1, at 64 KiB.
        device.set_faults(Faults {
            error_ranges: vec![(IoKind::Write, 0..HEADER_REGION_BYTES)],
            ..Default::default()
        });
        let e = write_header(&device, queue.as_mut(), &mut h).unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(&e, HeaderIoError::Device(d) if d.op == IoKind::Write && d.offset == 65536),
            "{text}"
        );
        assert!(
            text.contains(DEVICE) && text.contains("offset 65536"),
            "{text}"
        );
        assert_eq!(h, good);

        // A failed flush fails the write too, naming the slot.
        device.set_faults(Faults {
            error_ranges: vec![(IoKind::Flush, 0..1)],
            ..Default::default()
        });
        let e = write_header(&device, queue.as_mut(), &mut h).unwrap_err();
        assert!(
            matches!(&e, HeaderIoError::Device(d) if d.op == IoKind::Flush && d.offset == 65536),
            "{e}"
        );
        assert_eq!(h.sequence, 2);

        // An unreadable slot fails the read rather than being skipped.
        device.set_faults(Faults {
            error_ranges: vec![(IoKind::Read, 65536..65537)],
            ..Default::default()
        });
        let e = read_header(&device, queue.as_mut()).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains(DEVICE) && text.contains("offset 65536"),
            "{text}"
        );

        device.set_faults(Faults::default());
        let read = read_header(&device, queue.as_mut()).unwrap().unwrap();
        assert!(read.sequence == 2 || read.sequence == 3, "{read:?}");
    }

    #[test]
    fn a_header_in_the_wrong_slot_is_refused() {
        let (device, mut queue) = device();
        let mut h = sample();
        write_header(&device, queue.as_mut(), &mut h).unwrap();
        // Copy slot 1 (sequence 1) into slot 0 behind the writer's back.
        let bytes = device.durable_bytes(slot_offset(1)..slot_offset(2));
        let mut buffer = device.alloc_buffer(HEADER_SLOT_BYTES).unwrap();
        buffer.copy_from_slice(&bytes);
        run_one(&device, queue.as_mut(), IoKind::Write, 0, buffer).unwrap();
        // Slot 1 still wins; slot 0's copy is refused, not trusted.
        assert_eq!(read_header(&device, queue.as_mut()), Ok(Ok(h.clone())));
        device.corrupt(slot_offset(1)..slot_offset(1) + 8);
        let e = read_header(&device, queue.as_mut()).unwrap().unwrap_err();
        assert!(
            matches!(
                e,
                HeaderError::Corrupt {
                    what: HeaderProblem::WrongSlot {
                        sequence: 1,
                        slot: 0
                    },
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn small_devices_and_exhausted_sequences_are_errors() {
        let small = MemoryDevice::new("tiny", 64 << 10, 4096, 8);
        let mut queue = small.open_queue().unwrap();
        let e = read_header(&small, queue.as_mut()).unwrap_err();
        assert!(
            matches!(&e, HeaderIoError::Device(d) if d.offset == 65536 && d.device == "tiny"),
            "{e}"
        );
        let mut h = sample();
        h.sequence = u64::MAX;
        let (device, mut queue) = device();
        assert_eq!(
            write_header(&device, queue.as_mut(), &mut h),
            Err(HeaderIoError::SequenceExhausted {
                device: DEVICE.into()
            })
        );
    }
}
