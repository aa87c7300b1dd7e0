//! Byte layout of the index as it lies in shared memory.
//!
//! Everything here is made of atomics so that the segments can be viewed as
//! `&[T]` from several threads (see `shm.rs`). Multi-byte fields are in the
//! host's byte order (x86-64: little-endian): the index never leaves the host
//! that wrote it, and the format version plus the layout fingerprint refuse
//! any mismatch.
//!
//! ```text
//! Entry (56 bytes, align 8)              Sprig (8 bytes)
//! off size field                         off size field
//!   0  20  digest, as 5 big-endian u32     0   4  lock word (0 free, 1 held)
//!          words (compare = memcmp)        4   4  root handle (0 = empty)
//!  20   4  left handle  (0 = nil)
//!  24   4  right handle (0 = nil)        Meta segment
//!  28   4  void time, s since 2010-01-01   0        MetaHeader (padded to 4 KiB)
//!          (0 = never expires)             4 KiB    set table: 4096 × 64 B
//!  32   8  location: bits 0..40 rblock     260 KiB  sprigs: 4096 × sprigs × 8 B
//!          id, bits 40..64 size in rblocks
//!  40   8  bits 0..48 last-update time,  Stage segment s (of stage-size bytes)
//!          ms since 2010-01-01;            entry i holds handle s × per_stage + i;
//!          bits 48..64 generation          handle 0 is reserved as nil
//!  48   8  bits 0..16 set id, 16..24
//!          device index, 24..32 flags
//!          (red, tombstone, key stored,
//!          in use), 32..64 reserved (0)
//! ```

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};

use crate::digest::{Digest, DIGEST_LEN};

/// A handle names an entry: `stage × entries_per_stage + slot`. 0 is nil.
pub type Handle = u32;
pub const NIL: Handle = 0;

pub const ENTRY_SIZE: usize = 56;
pub const SPRIG_SIZE: usize = 8;
pub const HEADER_SIZE: usize = 4096;
pub const SET_SLOT_SIZE: usize = 64;
/// Set ids run 1..=MAX_SET_ID; 0 means "no set".
pub const MAX_SET_ID: u16 = 4095;
pub const SET_TABLE_OFFSET: usize = HEADER_SIZE;
pub const SPRIGS_OFFSET: usize = SET_TABLE_OFFSET + (MAX_SET_ID as usize + 1) * SET_SLOT_SIZE;

pub const MAX_RBLOCK_ID: u64 = (1 << 40) - 1;
pub const MAX_N_RBLOCKS: u32 = (1 << 24) - 1;
pub const MAX_LAST_UPDATE_MS: u64 = (1 << 48) - 1;

pub const FLAG_RED: u8 = 0x01;
pub const FLAG_TOMBSTONE: u8 = 0x02;
pub const FLAG_KEY_STORED: u8 = 0x04;
pub const FLAG_IN_USE: u8 = 0x08;

/// "OSPRYIX1" — the first word of the meta segment.
pub const META_MAGIC: u64 = u64::from_le_bytes(*b"OSPRYIX1");
/// Bumped whenever any layout in this file changes meaning.
pub const FORMAT_VERSION: u32 = 1;

const _: () = assert!(std::mem::size_of::<Entry>() == ENTRY_SIZE);
const _: () = assert!(ENTRY_SIZE <= 64, "the issue bounds an entry at 64 bytes");
const _: () = assert!(std::mem::size_of::<Sprig>() == SPRIG_SIZE);
const _: () = assert!(std::mem::size_of::<MetaHeader>() <= HEADER_SIZE);
const _: () = assert!(std::mem::size_of::<SetSlot>() == SET_SLOT_SIZE);
const _: () = assert!(SPRIGS_OFFSET.is_multiple_of(8));

/// One index entry: a tree node and the record's metadata.
#[repr(C, align(8))]
#[derive(Default)]
pub struct Entry {
    digest: [AtomicU32; 5],
    pub(crate) left: AtomicU32,
    pub(crate) right: AtomicU32,
    void_time: AtomicU32,
    location: AtomicU64,
    lut_gen: AtomicU64,
    meta: AtomicU64,
}

/// A digest prepared for comparison against entries: five big-endian words,
/// whose lexicographic order equals the bytes' memcmp order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct DigestKey([u32; 5]);

impl DigestKey {
    pub fn new(digest: &Digest) -> DigestKey {
        let d = &digest.0;
        let word = |i: usize| u32::from_be_bytes([d[i], d[i + 1], d[i + 2], d[i + 3]]);
        DigestKey([word(0), word(4), word(8), word(12), word(16)])
    }

    pub fn digest(&self) -> Digest {
        let mut out = [0u8; DIGEST_LEN];
        for (i, w) in self.0.iter().enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&w.to_be_bytes());
        }
        Digest(out)
    }
}

/// Where a record's image lies on flash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct Location {
    /// Index of the device within the namespace.
    pub device: u8,
    /// Offset on the device in 16-byte rblocks (40 bits: 16 TiB per device).
    pub rblock_id: u64,
    /// Size of the record image in rblocks (24 bits).
    pub n_rblocks: u32,
}

/// The metadata of one record as the index keeps it (a copy, not a view).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct IndexRecord {
    pub digest: Digest,
    pub location: Location,
    /// Wraps at 16 bits, as on the wire.
    pub generation: u16,
    /// Expiry, seconds since 2010-01-01 UTC; 0 = never.
    pub void_time: u32,
    /// Last update, milliseconds since 2010-01-01 UTC (48 bits).
    pub last_update_ms: u64,
    /// 0 = no set.
    pub set_id: u16,
    pub tombstone: bool,
    pub key_stored: bool,
}

impl IndexRecord {
    /// Panics when a field does not fit its bits: the storage layer computes
    /// these values and a misfit is a bug there, not bad input.
    pub(crate) fn assert_fits(&self) {
        assert!(
            self.location.rblock_id <= MAX_RBLOCK_ID,
            "rblock id {} over 40 bits",
            self.location.rblock_id
        );
        assert!(
            self.location.n_rblocks <= MAX_N_RBLOCKS,
            "record of {} rblocks over 24 bits",
            self.location.n_rblocks
        );
        assert!(
            self.last_update_ms <= MAX_LAST_UPDATE_MS,
            "last-update time over 48 bits"
        );
        assert!(
            self.set_id <= MAX_SET_ID,
            "set id {} over {MAX_SET_ID}",
            self.set_id
        );
    }

    /// Bytes the record occupies on flash.
    pub fn size_bytes(&self) -> u64 {
        u64::from(self.location.n_rblocks) * 16
    }
}

impl Entry {
    #[inline]
    pub fn key(&self) -> DigestKey {
        DigestKey(std::array::from_fn(|i| self.digest[i].load(Relaxed)))
    }

    /// Compares `key` with this entry's digest, word by word.
    #[inline]
    pub fn compare(&self, key: &DigestKey) -> std::cmp::Ordering {
        for (i, want) in key.0.iter().enumerate() {
            let have = self.digest[i].load(Relaxed);
            if *want != have {
                return want.cmp(&have);
            }
        }
        std::cmp::Ordering::Equal
    }

    #[inline]
    pub fn left(&self) -> Handle {
        self.left.load(Relaxed)
    }
    #[inline]
    pub fn right(&self) -> Handle {
        self.right.load(Relaxed)
    }
    #[inline]
    pub fn set_left(&self, h: Handle) {
        self.left.store(h, Relaxed)
    }
    #[inline]
    pub fn set_right(&self, h: Handle) {
        self.right.store(h, Relaxed)
    }
    #[inline]
    pub fn child(&self, right: bool) -> Handle {
        if right {
            self.right()
        } else {
            self.left()
        }
    }
    #[inline]
    pub fn set_child(&self, right: bool, h: Handle) {
        if right {
            self.set_right(h)
        } else {
            self.set_left(h)
        }
    }

    #[inline]
    pub fn flags(&self) -> u8 {
        (self.meta.load(Relaxed) >> 24) as u8
    }

    #[inline]
    fn set_flags(&self, flags: u8) {
        let meta = self.meta.load(Relaxed);
        self.meta
            .store((meta & !(0xFF << 24)) | (u64::from(flags) << 24), Relaxed);
    }

    #[inline]
    pub fn is_red(&self) -> bool {
        self.flags() & FLAG_RED != 0
    }

    #[inline]
    pub fn set_red(&self, red: bool) {
        let flags = self.flags();
        self.set_flags(if red {
            flags | FLAG_RED
        } else {
            flags & !FLAG_RED
        });
    }

    #[inline]
    pub fn in_use(&self) -> bool {
        self.flags() & FLAG_IN_USE != 0
    }

    /// Reads the record stored in this entry.
    pub fn record(&self) -> IndexRecord {
        let location = self.location.load(Relaxed);
        let lut_gen = self.lut_gen.load(Relaxed);
        let meta = self.meta.load(Relaxed);
        let flags = (meta >> 24) as u8;
        IndexRecord {
            digest: self.key().digest(),
            location: Location {
                device: (meta >> 16) as u8,
                rblock_id: location & MAX_RBLOCK_ID,
                n_rblocks: (location >> 40) as u32,
            },
            generation: (lut_gen >> 48) as u16,
            void_time: self.void_time.load(Relaxed),
            last_update_ms: lut_gen & MAX_LAST_UPDATE_MS,
            set_id: meta as u16,
            tombstone: flags & FLAG_TOMBSTONE != 0,
            key_stored: flags & FLAG_KEY_STORED != 0,
        }
    }

    /// Stores `record` (digest included), keeping the tree links and colour.
    pub fn store_record(&self, record: &IndexRecord) {
        record.assert_fits();
        let key = DigestKey::new(&record.digest);
        for (i, w) in key.0.iter().enumerate() {
            self.digest[i].store(*w, Relaxed);
        }
        self.void_time.store(record.void_time, Relaxed);
        self.location.store(
            record.location.rblock_id | (u64::from(record.location.n_rblocks) << 40),
            Relaxed,
        );
        self.lut_gen.store(
            record.last_update_ms | (u64::from(record.generation) << 48),
            Relaxed,
        );
        let mut flags = (self.flags() & FLAG_RED) | FLAG_IN_USE;
        if record.tombstone {
            flags |= FLAG_TOMBSTONE;
        }
        if record.key_stored {
            flags |= FLAG_KEY_STORED;
        }
        let meta = u64::from(record.set_id)
            | (u64::from(record.location.device) << 16)
            | (u64::from(flags) << 24);
        self.meta.store(meta, Relaxed);
    }

    /// Resets a fresh allocation: in use, black, no children.
    pub fn reset_in_use(&self) {
        self.set_left(NIL);
        self.set_right(NIL);
        self.meta.store(u64::from(FLAG_IN_USE) << 24, Relaxed);
    }

    /// Marks the entry free, linking it to `next_free` through `left`.
    pub fn reset_free(&self, next_free: Handle) {
        self.set_left(next_free);
        self.set_right(NIL);
        self.meta.store(0, Relaxed);
    }
}

/// One sprig: its lock word and its tree's root.
#[repr(C)]
pub struct Sprig {
    pub lock: AtomicU32,
    pub root: AtomicU32,
}

/// A set name slot: byte 0 = length (0 = unused), bytes 1..64 the name.
#[repr(C)]
pub struct SetSlot {
    pub bytes: [AtomicU8; SET_SLOT_SIZE],
}

/// The first bytes of the meta segment.
#[repr(C)]
pub struct MetaHeader {
    pub magic: AtomicU64,
    pub format_version: AtomicU32,
    pub entry_size: AtomicU32,
    pub fingerprint: AtomicU64,
    pub namespace_id: AtomicU32,
    pub sprigs_per_partition: AtomicU32,
    pub stage_size_bytes: AtomicU64,
    pub entries_per_stage: AtomicU32,
    /// Stage segments that exist (0..stage_count).
    pub stage_count: AtomicU32,
    /// 1 after a clean shutdown; cleared as soon as a process attaches.
    pub trusted: AtomicU32,
    pub alloc_lock: AtomicU32,
    pub shutdown_id: AtomicU64,
    /// Head of the free list (linked through `Entry::left`).
    pub free_head: AtomicU32,
    pub set_count: AtomicU32,
    /// Next never-used handle (starts at 1; 0 is nil).
    pub next_unused: AtomicU64,
    pub free_count: AtomicU64,
    /// Entries handed out and not freed.
    pub in_use: AtomicU64,
    /// 1 if the creating process got hugetlb pages for the meta segment
    /// (an attaching process cannot tell; 0 in segments from before this
    /// field, read as "normal pages").
    pub huge_pages: AtomicU32,
}
