//! The primary index: every record's digest and metadata, in shared memory.
//!
//! Model (after Aerospike's): one index per namespace; each of the 4096
//! partitions is split into `sprigs_per_partition` sprigs chosen by the digest
//! bits that follow the partition bits, and each sprig is a red-black tree of
//! fixed-size entries (`layout.rs`) keyed by digest. Entries live in an arena
//! of System V shared memory stages and link to each other by handle, never
//! by pointer, so a new process can attach the segments at any address.
//!
//! Concurrency: every tree operation holds that sprig's lock (a word beside
//! the root, in the meta segment); there is no lock over the whole index. The
//! arena allocator has its own lock, always taken after a sprig lock, for the
//! few instructions of a free-list push or pop.
//!
//! Life cycle: [`Index::create`] builds an empty index, removing stale
//! segments; [`Index::attach`] re-attaches one that a clean shutdown marked
//! trusted, clears the trusted flag at once (a crash from then on forces a
//! cold start), and walks the arena to rebuild counters; [`Index::mark_trusted`]
//! ends a process's use cleanly; [`Index::destroy`] removes the segments.
//! Anything that does not match is refused with a [`Refusal`], and the caller
//! builds the index again from the devices (cold start).

pub mod config;
pub mod layout;
mod lock;
pub mod tree;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering, Ordering::Relaxed};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use crate::digest::Digest;
use crate::partition::{PartitionId, PARTITION_COUNT};
use crate::shm::{self, Segment, Table};

pub use config::{ConfigError, IndexConfig, PageMode};
pub use layout::{IndexRecord, Location, MAX_SET_ID};

use layout::{
    DigestKey, Entry, Handle, MetaHeader, SetSlot, Sprig, ENTRY_SIZE, FORMAT_VERSION, HEADER_SIZE,
    META_MAGIC, NIL, SET_SLOT_SIZE, SET_TABLE_OFFSET, SPRIGS_OFFSET,
};
use lock::SpinGuard;
use tree::{Nodes, Path};

/// What an [`Index::update`] callback decides for the digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Leave the index as it is.
    Keep,
    /// Store this record (its digest must be the one updated), inserting it
    /// if the digest was absent.
    Put(IndexRecord),
    /// Remove the digest's entry.
    Remove,
}

/// Errors of index operations and of building an index.
#[derive(Debug)]
pub enum IndexError {
    Config(ConfigError),
    /// Every stage is allocated and full.
    Full {
        entries: u64,
        max_stages: u32,
    },
    /// All 4095 set ids are taken.
    TooManySets,
    /// A set name is empty or longer than 63 bytes.
    InvalidSetName(String),
    /// Another process has the index segments attached.
    InUse {
        key: i32,
        attached: u64,
    },
    /// Hugepages were required (`index.pages = "huge"`) and are not there.
    HugePagesUnavailable {
        key: i32,
        needed_bytes: u64,
        free_bytes: u64,
        source: Option<io::Error>,
    },
    /// A shared-memory system call failed.
    Shm {
        op: &'static str,
        key: i32,
        source: io::Error,
    },
}

impl fmt::Display for IndexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IndexError::Config(e) => write!(f, "invalid index config: {e}"),
            IndexError::Full { entries, max_stages } => write!(
                f,
                "index full: {entries} entries fill all {max_stages} stages (raise index.max-stages or index.stage-size)"
            ),
            IndexError::TooManySets => write!(f, "too many sets: all {MAX_SET_ID} set ids are in use"),
            IndexError::InvalidSetName(name) => write!(f, "invalid set name {name:?}: must be 1..=63 bytes"),
            IndexError::InUse { key, attached } => write!(
                f,
                "shared memory segment {key:#010x} is attached by {attached} other process(es): is another ospreyd running with this index.shm-key-base?"
            ),
            IndexError::HugePagesUnavailable { key, needed_bytes, free_bytes, source } => {
                write!(
                    f,
                    "index.pages = \"huge\" but segment {key:#010x} needs {needed_bytes} bytes of hugepages and {free_bytes} are free"
                )?;
                if let Some(e) = source {
                    write!(f, " ({e})")?;
                }
                write!(f, "; reserve more with scripts/setup-hugepages.sh or set index.pages = \"auto\"")
            }
            IndexError::Shm { op, key, source } => write!(f, "{op} of shared memory segment {key:#010x} failed: {source}"),
        }
    }
}

impl std::error::Error for IndexError {}

impl From<ConfigError> for IndexError {
    fn from(e: ConfigError) -> Self {
        IndexError::Config(e)
    }
}

/// Why an existing index was not attached (the caller then starts cold).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NoIndex,
    BadMagic,
    TooSmall {
        bytes: usize,
        needed: usize,
    },
    VersionMismatch {
        found: u32,
        expected: u32,
    },
    LayoutMismatch(String),
    NotTrusted,
    ShutdownIdMismatch {
        index: u64,
        devices: u64,
    },
    StageMissing {
        stage: u32,
        key: i32,
    },
    StageSize {
        stage: u32,
        bytes: usize,
        needed: usize,
    },
    TooManyStages {
        found: u32,
        max: u32,
    },
    Corrupt(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NoIndex => write!(f, "no index in shared memory"),
            Refusal::BadMagic => write!(f, "the meta segment is not an Osprey index"),
            Refusal::TooSmall { bytes, needed } => {
                write!(f, "the meta segment has {bytes} bytes, {needed} needed")
            }
            Refusal::VersionMismatch { found, expected } => {
                write!(
                    f,
                    "index format version {found}, this build reads {expected}"
                )
            }
            Refusal::LayoutMismatch(what) => {
                write!(f, "the index was built with another layout: {what}")
            }
            Refusal::NotTrusted => write!(f, "the index was not shut down cleanly (not trusted)"),
            Refusal::ShutdownIdMismatch { index, devices } => {
                write!(
                    f,
                    "index shutdown id {index:#x} does not match the devices' {devices:#x}"
                )
            }
            Refusal::StageMissing { stage, key } => {
                write!(f, "arena stage {stage} (key {key:#010x}) is missing")
            }
            Refusal::StageSize {
                stage,
                bytes,
                needed,
            } => {
                write!(
                    f,
                    "arena stage {stage} has {bytes} bytes, {needed} expected"
                )
            }
            Refusal::TooManyStages { found, max } => {
                write!(
                    f,
                    "the index has {found} stages and index.max-stages is {max}"
                )
            }
            Refusal::Corrupt(what) => write!(f, "the index is inconsistent: {what}"),
        }
    }
}

/// An attach that did not happen.
#[derive(Debug)]
pub enum AttachError {
    /// The index cannot be used; start cold.
    Refused(Refusal),
    /// Something that a cold start would not fix either.
    Fatal(IndexError),
}

impl fmt::Display for AttachError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttachError::Refused(r) => write!(f, "warm start refused: {r}"),
            AttachError::Fatal(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for AttachError {}

/// How [`Index::open`] started.
#[derive(Debug)]
pub enum Start {
    Warm(WalkSummary),
    Cold(Refusal),
}

/// What the start-up walk found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalkSummary {
    pub entries: u64,
    pub records: u64,
    pub tombstones: u64,
    pub bytes: u64,
    pub elapsed: Duration,
}

/// Per-partition counters, kept in process memory and rebuilt at attach.
#[derive(Default)]
struct PartitionCounters {
    records: AtomicU64,
    tombstones: AtomicU64,
    rblocks: AtomicU64,
}

/// Counters of one partition, as read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionStats {
    /// Live records (tombstones not included).
    pub records: u64,
    pub tombstones: u64,
    /// Flash bytes of the records and tombstones.
    pub bytes: u64,
}

/// Whole-index counters, as read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexStats {
    pub records: u64,
    pub tombstones: u64,
    pub bytes: u64,
    /// Entries handed out by the arena (records + tombstones).
    pub entries_in_use: u64,
    pub free_entries: u64,
    pub stages: u32,
    /// Shared memory in use: the meta segment plus the used part of the arena.
    pub shm_bytes_in_use: u64,
    /// Shared memory reserved: the meta segment plus every stage segment.
    pub shm_bytes_reserved: u64,
    pub huge_pages: bool,
}

/// An entry taken from the arena and not yet linked into a tree.
struct Reserved<'a> {
    index: &'a Index,
    handle: Handle,
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        self.index.free(self.handle);
    }
}

/// The primary index of one namespace.
pub struct Index {
    config: IndexConfig,
    meta: Arc<Segment>,
    sprig_table: Table<Sprig>,
    stages: Box<[OnceLock<Table<Entry>>]>,
    entries_per_stage: u32,
    /// `log2(entries_per_stage)`: handle >> shift = stage, handle & mask = slot.
    stage_shift: u32,
    sprig_shift: u32,
    partitions: Box<[PartitionCounters]>,
    set_records: Box<[AtomicU64]>,
    set_ids: RwLock<HashMap<String, u16>>,
}

impl Nodes for Index {
    /// Stage by shift, slot by mask (entries per stage is a power of two).
    #[inline(always)]
    fn node(&self, h: Handle) -> &Entry {
        debug_assert_ne!(h, NIL);
        let (stage, slot) = self.stage_and_slot(h);
        self.stages[stage]
            .get()
            .expect("handle points past the mapped stages")
            .get(slot)
    }
}

fn round_up(value: u64, to: u64) -> u64 {
    value.div_ceil(to) * to
}

fn meta_size(config: &IndexConfig) -> usize {
    SPRIGS_OFFSET + PARTITION_COUNT * config.sprigs_per_partition as usize * layout::SPRIG_SIZE
}

fn shm_error(op: &'static str, key: i32) -> impl FnOnce(io::Error) -> IndexError {
    move |source| IndexError::Shm { op, key, source }
}

/// Creates one segment in the configured page mode.
fn create_segment(config: &IndexConfig, key: i32, bytes: u64) -> Result<Segment, IndexError> {
    let (free_bytes, huge_page) = shm::hugepages_free();
    let huge_bytes = round_up(bytes, huge_page);
    let normal_bytes = round_up(bytes, 4096);
    match config.pages {
        PageMode::Normal => {
            Segment::create(key, normal_bytes as usize, false).map_err(shm_error("shmget", key))
        }
        PageMode::Huge => Segment::create(key, huge_bytes as usize, true).map_err(|e| {
            IndexError::HugePagesUnavailable {
                key,
                needed_bytes: huge_bytes,
                free_bytes,
                source: Some(e),
            }
        }),
        PageMode::Auto => {
            if free_bytes >= huge_bytes {
                if let Ok(segment) = Segment::create(key, huge_bytes as usize, true) {
                    return Ok(segment);
                }
            }
            Segment::create(key, normal_bytes as usize, false).map_err(shm_error("shmget", key))
        }
    }
}

impl Index {
    /// Builds an empty index, first removing any stale segments with its keys.
    pub fn create(config: &IndexConfig) -> Result<Index, IndexError> {
        config.validate()?;
        Index::destroy_segments(config)?;
        let meta = create_segment(config, config.meta_key(), meta_size(config) as u64)?;
        let index = Index::with_meta(config, meta);
        let header = index.header();
        header.format_version.store(FORMAT_VERSION, Relaxed);
        header.entry_size.store(ENTRY_SIZE as u32, Relaxed);
        header.fingerprint.store(config.fingerprint(), Relaxed);
        header.namespace_id.store(config.namespace_id, Relaxed);
        header
            .sprigs_per_partition
            .store(config.sprigs_per_partition, Relaxed);
        header
            .stage_size_bytes
            .store(config.stage_size_bytes, Relaxed);
        header
            .entries_per_stage
            .store(config.entries_per_stage(), Relaxed);
        header.next_unused.store(1, Relaxed);
        header
            .huge_pages
            .store(u32::from(index.meta.huge()), Relaxed);
        // The magic goes last: a process that dies mid-way leaves a segment
        // that is refused as "not an Osprey index".
        header.magic.store(META_MAGIC, Ordering::SeqCst);
        Ok(index)
    }

    /// Wraps a meta segment already checked to be `meta_size(config)` bytes.
    fn with_meta(config: &IndexConfig, meta: Segment) -> Index {
        let meta = Arc::new(meta);
        let sprig_count = PARTITION_COUNT * config.sprigs_per_partition as usize;
        let entries_per_stage = config.entries_per_stage();
        Index {
            config: config.clone(),
            sprig_table: Table::new(meta.clone(), SPRIGS_OFFSET, sprig_count),
            meta,
            stages: (0..config.max_stages).map(|_| OnceLock::new()).collect(),
            entries_per_stage,
            stage_shift: entries_per_stage.trailing_zeros(),
            sprig_shift: 20 - config.sprigs_per_partition.trailing_zeros(),
            partitions: (0..PARTITION_COUNT)
                .map(|_| PartitionCounters::default())
                .collect(),
            set_records: (0..=MAX_SET_ID).map(|_| AtomicU64::new(0)).collect(),
            set_ids: RwLock::new(HashMap::new()),
        }
    }

    /// Re-attaches an index left trusted by a clean shutdown.
    ///
    /// `devices_shutdown_id` is the id the devices' headers carry (the
    /// storage layer passes it; `None` skips the check). `on_entry` sees every
    /// entry during the start-up walk, from `walk_threads` threads.
    pub fn attach(
        config: &IndexConfig,
        devices_shutdown_id: Option<u64>,
        on_entry: &(dyn Fn(&IndexRecord) + Sync),
    ) -> Result<(Index, WalkSummary), AttachError> {
        config
            .validate()
            .map_err(|e| AttachError::Fatal(e.into()))?;
        let key = config.meta_key();
        let info = shm::stat(key)
            .map_err(|e| AttachError::Fatal(shm_error("shmctl(IPC_STAT)", key)(e)))?;
        let Some(info) = info else {
            return Err(AttachError::Refused(Refusal::NoIndex));
        };
        if info.attached > 0 {
            return Err(AttachError::Fatal(IndexError::InUse {
                key,
                attached: info.attached,
            }));
        }
        if info.size_bytes < HEADER_SIZE {
            return Err(AttachError::Refused(Refusal::TooSmall {
                bytes: info.size_bytes,
                needed: HEADER_SIZE,
            }));
        }
        let meta = match Segment::attach(key) {
            Ok(Some(meta)) => meta,
            Ok(None) => return Err(AttachError::Refused(Refusal::NoIndex)),
            Err(e) => return Err(AttachError::Fatal(shm_error("shmat", key)(e))),
        };
        // Two processes starting at once could both pass the check above;
        // after attaching, each sees the other and both back off.
        match shm::stat(key) {
            Ok(Some(now)) if now.attached > 1 => {
                return Err(AttachError::Fatal(IndexError::InUse {
                    key,
                    attached: now.attached - 1,
                }))
            }
            Ok(_) => {}
            Err(e) => return Err(AttachError::Fatal(shm_error("shmctl(IPC_STAT)", key)(e))),
        }
        Index::check_header(
            &meta.slice::<MetaHeader>(0, 1)[0],
            config,
            devices_shutdown_id,
        )
        .map_err(AttachError::Refused)?;
        let needed = meta_size(config);
        if info.size_bytes < needed {
            return Err(AttachError::Refused(Refusal::TooSmall {
                bytes: info.size_bytes,
                needed,
            }));
        }
        let mut index = Index::with_meta(config, meta);
        index.attach_stages()?;
        index.check_locks().map_err(AttachError::Refused)?;
        // From here on, a crash must force a cold start.
        index.header().trusted.store(0, Ordering::SeqCst);
        index.load_set_names().map_err(AttachError::Refused)?;
        let summary = index
            .rebuild(on_entry)
            .map_err(|e| AttachError::Refused(Refusal::Corrupt(e)))?;
        Ok((index, summary))
    }

    /// Attaches the trusted index if there is one, else builds an empty one.
    pub fn open(
        config: &IndexConfig,
        devices_shutdown_id: Option<u64>,
        on_entry: &(dyn Fn(&IndexRecord) + Sync),
    ) -> Result<(Index, Start), IndexError> {
        match Index::attach(config, devices_shutdown_id, on_entry) {
            Ok((index, summary)) => Ok((index, Start::Warm(summary))),
            Err(AttachError::Fatal(e)) => Err(e),
            Err(AttachError::Refused(reason)) => Ok((Index::create(config)?, Start::Cold(reason))),
        }
    }

    fn check_header(
        h: &MetaHeader,
        c: &IndexConfig,
        devices_shutdown_id: Option<u64>,
    ) -> Result<(), Refusal> {
        if h.magic.load(Ordering::SeqCst) != META_MAGIC {
            return Err(Refusal::BadMagic);
        }
        let version = h.format_version.load(Relaxed);
        if version != FORMAT_VERSION {
            return Err(Refusal::VersionMismatch {
                found: version,
                expected: FORMAT_VERSION,
            });
        }
        let checks: [(&str, u64, u64); 5] = [
            (
                "entry size",
                u64::from(h.entry_size.load(Relaxed)),
                ENTRY_SIZE as u64,
            ),
            (
                "namespace id",
                u64::from(h.namespace_id.load(Relaxed)),
                u64::from(c.namespace_id),
            ),
            (
                "index.sprigs",
                u64::from(h.sprigs_per_partition.load(Relaxed)),
                u64::from(c.sprigs_per_partition),
            ),
            (
                "index.stage-size",
                h.stage_size_bytes.load(Relaxed),
                c.stage_size_bytes,
            ),
            (
                "entries per stage",
                u64::from(h.entries_per_stage.load(Relaxed)),
                u64::from(c.entries_per_stage()),
            ),
        ];
        for (what, found, wanted) in checks {
            if found != wanted {
                return Err(Refusal::LayoutMismatch(format!(
                    "{what} is {found} in the index, {wanted} in the config"
                )));
            }
        }
        if h.fingerprint.load(Relaxed) != c.fingerprint() {
            return Err(Refusal::LayoutMismatch("layout fingerprint differs".into()));
        }
        if h.trusted.load(Ordering::SeqCst) != 1 {
            return Err(Refusal::NotTrusted);
        }
        let index_id = h.shutdown_id.load(Relaxed);
        if let Some(devices) = devices_shutdown_id {
            if devices != index_id {
                return Err(Refusal::ShutdownIdMismatch {
                    index: index_id,
                    devices,
                });
            }
        }
        let next_unused = h.next_unused.load(Relaxed);
        let capacity = u64::from(h.stage_count.load(Relaxed)) * u64::from(c.entries_per_stage());
        if next_unused == 0 || next_unused > capacity.max(1) {
            return Err(Refusal::Corrupt(format!(
                "next handle {next_unused} beyond arena capacity {capacity}"
            )));
        }
        Ok(())
    }

    fn attach_stages(&self) -> Result<(), AttachError> {
        let count = self.header().stage_count.load(Relaxed);
        if count > self.config.max_stages {
            return Err(AttachError::Refused(Refusal::TooManyStages {
                found: count,
                max: self.config.max_stages,
            }));
        }
        let needed = self.entries_per_stage as usize * ENTRY_SIZE;
        for stage in 0..count {
            let key = self.config.stage_key(stage);
            let segment = match Segment::attach(key) {
                Ok(Some(s)) => s,
                Ok(None) => return Err(AttachError::Refused(Refusal::StageMissing { stage, key })),
                Err(e) => return Err(AttachError::Fatal(shm_error("shmat", key)(e))),
            };
            if segment.size_bytes() < needed {
                return Err(AttachError::Refused(Refusal::StageSize {
                    stage,
                    bytes: segment.size_bytes(),
                    needed,
                }));
            }
            let table = Table::new(Arc::new(segment), 0, self.entries_per_stage as usize);
            let _ = self.stages[stage as usize].set(table);
        }
        Ok(())
    }

    fn check_locks(&self) -> Result<(), Refusal> {
        if self.header().alloc_lock.load(Relaxed) != 0 {
            return Err(Refusal::Corrupt("the allocator lock was left held".into()));
        }
        if let Some(i) = self.sprigs().iter().position(|s| s.lock.load(Relaxed) != 0) {
            return Err(Refusal::Corrupt(format!("sprig {i} lock was left held")));
        }
        Ok(())
    }

    fn load_set_names(&self) -> Result<(), Refusal> {
        let count = self.header().set_count.load(Relaxed);
        if count > u32::from(MAX_SET_ID) {
            return Err(Refusal::Corrupt(format!("{count} sets recorded")));
        }
        let mut map = HashMap::new();
        for id in 1..=count as u16 {
            let name = self
                .read_set_name(id)
                .ok_or_else(|| Refusal::Corrupt(format!("set id {id} has no valid name")))?;
            map.insert(name, id);
        }
        *self.set_ids.write().unwrap_or_else(|e| e.into_inner()) = map;
        Ok(())
    }

    fn header(&self) -> &MetaHeader {
        &self.meta.slice::<MetaHeader>(0, 1)[0]
    }

    fn sprigs(&self) -> &[Sprig] {
        self.sprig_table.as_slice()
    }

    fn set_slot(&self, id: u16) -> &SetSlot {
        &self
            .meta
            .slice::<SetSlot>(SET_TABLE_OFFSET, MAX_SET_ID as usize + 1)[id as usize]
    }

    #[inline]
    fn sprig_index(&self, digest: &Digest) -> usize {
        let partition = digest.partition().index();
        partition * self.config.sprigs_per_partition as usize
            + (digest.sprig_bits() >> self.sprig_shift) as usize
    }

    #[inline]
    fn sprig(&self, digest: &Digest) -> &Sprig {
        &self.sprigs()[self.sprig_index(digest)]
    }

    pub fn config(&self) -> &IndexConfig {
        &self.config
    }

    // ---- arena ----------------------------------------------------------

    /// Takes a free entry (marked in use, black, unlinked).
    fn alloc(&self) -> Result<Handle, IndexError> {
        let header = self.header();
        let _guard = SpinGuard::lock(&header.alloc_lock);
        let free = header.free_head.load(Relaxed);
        let handle = if free != NIL {
            header.free_head.store(self.node(free).left(), Relaxed);
            header.free_count.fetch_sub(1, Relaxed);
            free
        } else {
            let next = header.next_unused.load(Relaxed);
            let stage = next / u64::from(self.entries_per_stage);
            let stage_count = u64::from(header.stage_count.load(Relaxed));
            if stage >= stage_count {
                if stage >= u64::from(self.config.max_stages) {
                    return Err(IndexError::Full {
                        entries: next - 1,
                        max_stages: self.config.max_stages,
                    });
                }
                let stage = stage as u32;
                let key = self.config.stage_key(stage);
                // A stale segment here would be one this index never counted.
                shm::remove(key).map_err(shm_error("shmctl(IPC_RMID)", key))?;
                let bytes = u64::from(self.entries_per_stage) * ENTRY_SIZE as u64;
                let segment = create_segment(&self.config, key, bytes)?;
                let table = Table::new(Arc::new(segment), 0, self.entries_per_stage as usize);
                let _ = self.stages[stage as usize].set(table);
                header.stage_count.store(stage + 1, Relaxed);
            }
            header.next_unused.store(next + 1, Relaxed);
            next as Handle
        };
        header.in_use.fetch_add(1, Relaxed);
        self.node(handle).reset_in_use();
        Ok(handle)
    }

    fn free(&self, handle: Handle) {
        let header = self.header();
        let _guard = SpinGuard::lock(&header.alloc_lock);
        self.node(handle).reset_free(header.free_head.load(Relaxed));
        header.free_head.store(handle, Relaxed);
        header.free_count.fetch_add(1, Relaxed);
        header.in_use.fetch_sub(1, Relaxed);
    }

    // ---- counters -------------------------------------------------------

    fn count(&self, record: &IndexRecord, add: bool) {
        let p = &self.partitions[record.digest.partition().index()];
        let apply = |counter: &AtomicU64, by: u64| {
            if add {
                counter.fetch_add(by, Relaxed);
            } else {
                counter.fetch_sub(by, Relaxed);
            }
        };
        if record.tombstone {
            apply(&p.tombstones, 1);
        } else {
            apply(&p.records, 1);
            // Set id 0 counts the records that have no set.
            apply(&self.set_records[record.set_id as usize], 1);
        }
        apply(&p.rblocks, u64::from(record.location.n_rblocks));
    }

    // ---- operations -----------------------------------------------------

    /// The record stored for `digest`, if any.
    ///
    /// Takes the sprig lock even though it only reads. An optimistic
    /// (sequence-lock) read was tried and measured: on the 2-core test
    /// machine it made single-thread lookups at 10 M entries 1.9× slower
    /// (0.96 vs 1.81 M/s, `index-bench`), because without the locked
    /// instruction the CPU runs ahead into lookups whose speculative misses
    /// are thrown away. Revisit with several reader threads per sprig.
    /// Where handle `h` lives: its stage, and its slot in the stage
    /// (entries per stage is a power of two).
    #[inline(always)]
    fn stage_and_slot(&self, h: Handle) -> (usize, usize) {
        (
            (h >> self.stage_shift) as usize,
            (h & (self.entries_per_stage - 1)) as usize,
        )
    }

    /// Starts loading the cache line of `digest`'s sprig (its lock and
    /// root), without waiting: the first step of [`Index::prefetch_entry`].
    /// A lookup of a random digest misses the cache there, then again on
    /// the tree node; a caller that knows its next digests issues both
    /// hints ahead of the lookups so the misses overlap (see
    /// `CoreStorage::submit`).
    #[inline]
    pub fn prefetch_sprig(&self, digest: &Digest) {
        crate::sys::prefetch::prefetch(self.sprig(digest));
    }

    /// Starts loading the root node of `digest`'s tree — the entry itself
    /// whenever the sprig holds one record, as it mostly does. Reads the
    /// root without the lock: a stale root only makes the hint useless.
    #[inline]
    pub fn prefetch_entry(&self, digest: &Digest) {
        let root = self.sprig(digest).root.load(Relaxed);
        if root != NIL {
            let (stage, slot) = self.stage_and_slot(root);
            if let Some(stage) = self.stages.get(stage) {
                if let Some(entries) = stage.get() {
                    if slot < entries.len() {
                        crate::sys::prefetch::prefetch(entries.get(slot));
                    }
                }
            }
        }
    }

    pub fn get(&self, digest: &Digest) -> Option<IndexRecord> {
        let key = DigestKey::new(digest);
        let sprig = self.sprig(digest);
        let _guard = SpinGuard::lock(&sprig.lock);
        let h = tree::find(self, sprig.root.load(Relaxed), &key);
        (h != NIL).then(|| self.node(h).record())
    }

    /// Runs `decide` under the digest's sprig lock with the current record
    /// (or `None`) and applies the [`Change`] it returns; returns what
    /// `decide` returned alongside.
    ///
    /// When the digest is absent an entry is reserved before `decide` runs,
    /// so a full index fails with [`IndexError::Full`] without calling it:
    /// the caller never acts (for example writes a record to flash) on an
    /// insert the index then refuses.
    pub fn update<R>(
        &self,
        digest: &Digest,
        decide: impl FnOnce(Option<&IndexRecord>) -> (Change, R),
    ) -> Result<R, IndexError> {
        let key = DigestKey::new(digest);
        let sprig = self.sprig(digest);
        let _guard = SpinGuard::lock(&sprig.lock);
        let mut path = Path::new();
        let found = tree::search(self, sprig.root.load(Relaxed), &key, &mut path);
        if found != NIL {
            let old = self.node(found).record();
            let (change, out) = decide(Some(&old));
            self.apply_existing(sprig, &mut path, found, &old, change);
            return Ok(out);
        }
        // The reservation goes back to the free list unless it is linked,
        // even if `decide` panics: an entry marked in use but in no tree
        // would come back as a live record after a warm restart.
        let fresh = Reserved {
            index: self,
            handle: self.alloc()?,
        };
        let (change, out) = decide(None);
        if let Change::Put(record) = change {
            assert_eq!(
                record.digest, *digest,
                "update put a record under another digest"
            );
            self.node(fresh.handle).store_record(&record);
            tree::insert(self, &sprig.root, &mut path, fresh.handle);
            self.count(&record, true);
            std::mem::forget(fresh);
        }
        Ok(out)
    }

    /// Like [`Index::update`] but never inserts: `decide` runs only when the
    /// digest is present (`None` is returned otherwise). Used by deletes,
    /// touches and defrag's re-pointing, which must not allocate.
    pub fn modify<R>(
        &self,
        digest: &Digest,
        decide: impl FnOnce(&IndexRecord) -> (Change, R),
    ) -> Option<R> {
        let key = DigestKey::new(digest);
        let sprig = self.sprig(digest);
        let _guard = SpinGuard::lock(&sprig.lock);
        let mut path = Path::new();
        let found = tree::search(self, sprig.root.load(Relaxed), &key, &mut path);
        if found == NIL {
            return None;
        }
        let old = self.node(found).record();
        let (change, out) = decide(&old);
        self.apply_existing(sprig, &mut path, found, &old, change);
        Some(out)
    }

    fn apply_existing(
        &self,
        sprig: &Sprig,
        path: &mut Path,
        found: Handle,
        old: &IndexRecord,
        change: Change,
    ) {
        match change {
            Change::Keep => {}
            Change::Put(record) => {
                assert_eq!(
                    record.digest, old.digest,
                    "update put a record under another digest"
                );
                self.node(found).store_record(&record);
                self.count(old, false);
                self.count(&record, true);
            }
            Change::Remove => {
                let gone = tree::remove(self, &sprig.root, path, found);
                self.free(gone);
                self.count(old, false);
            }
        }
    }

    /// Stores `record`, replacing any record with its digest; returns the old one.
    pub fn put(&self, record: IndexRecord) -> Result<Option<IndexRecord>, IndexError> {
        self.update(&record.digest, |old| (Change::Put(record), old.copied()))
    }

    /// Removes `digest`; returns the record it had.
    pub fn remove(&self, digest: &Digest) -> Option<IndexRecord> {
        self.modify(digest, |old| (Change::Remove, *old))
    }

    /// Visits partition `partition` in digest order, starting after `after`
    /// (exclusive; it must be a digest of this partition) when given.
    /// `visit` returns `false` to stop. Each sprig is copied out under its
    /// lock into `buffer` and visited with no lock held, so `visit` may use
    /// the index.
    pub fn scan_partition(
        &self,
        partition: PartitionId,
        after: Option<&Digest>,
        buffer: &mut Vec<IndexRecord>,
        mut visit: impl FnMut(&IndexRecord) -> bool,
    ) {
        let sprigs = self.config.sprigs_per_partition as usize;
        let first = partition.index() * sprigs;
        let (start, after_key) = match after {
            Some(d) if d.partition() == partition => (self.sprig_index(d), Some(DigestKey::new(d))),
            Some(d) => panic!("resume digest {d} is not in partition {}", partition.get()),
            None => (first, None),
        };
        for (i, sprig) in self.sprigs()[start..first + sprigs].iter().enumerate() {
            buffer.clear();
            {
                let _guard = SpinGuard::lock(&sprig.lock);
                let bound = if i == 0 { after_key.as_ref() } else { None };
                tree::walk_from(self, sprig.root.load(Relaxed), bound, |_, entry| {
                    buffer.push(entry.record());
                    true
                });
            }
            for record in buffer.iter() {
                if !visit(record) {
                    return;
                }
            }
        }
    }

    /// Walks the whole arena with `walk_threads` threads, rebuilding every
    /// counter and calling `on_entry` for each entry, and checks the arena's
    /// own bookkeeping. Needs exclusive use (start-up).
    fn rebuild(&mut self, on_entry: &(dyn Fn(&IndexRecord) + Sync)) -> Result<WalkSummary, String> {
        let started = Instant::now();
        let header = self.header();
        let next_unused = header.next_unused.load(Relaxed);
        let threads = self.config.walk_threads.max(1) as u64;
        let chunk = (next_unused - 1).div_ceil(threads).max(1);
        struct Local {
            partitions: Vec<[u64; 3]>,
            sets: Vec<u64>,
            entries: u64,
            bad: Option<String>,
        }
        let this = &*self;
        let locals: Vec<Local> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let begin = 1 + t * chunk;
                    let end = (begin + chunk).min(next_unused);
                    scope.spawn(move || {
                        let mut local = Local {
                            partitions: vec![[0; 3]; PARTITION_COUNT],
                            sets: vec![0; MAX_SET_ID as usize + 1],
                            entries: 0,
                            bad: None,
                        };
                        for h in begin..end {
                            let entry = this.node(h as Handle);
                            if !entry.in_use() {
                                continue;
                            }
                            let record = entry.record();
                            if record.set_id > MAX_SET_ID {
                                local.bad = Some(format!("entry {h} has set id {}", record.set_id));
                                break;
                            }
                            local.entries += 1;
                            let p = &mut local.partitions[record.digest.partition().index()];
                            if record.tombstone {
                                p[1] += 1;
                            } else {
                                p[0] += 1;
                                local.sets[record.set_id as usize] += 1;
                            }
                            p[2] += u64::from(record.location.n_rblocks);
                            on_entry(&record);
                        }
                        local
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("index walk thread panicked"))
                .collect()
        });
        let mut summary = WalkSummary::default();
        for local in &locals {
            if let Some(bad) = &local.bad {
                return Err(bad.clone());
            }
            summary.entries += local.entries;
        }
        let in_use = header.in_use.load(Relaxed);
        let free = header.free_count.load(Relaxed);
        if summary.entries != in_use || in_use + free != next_unused - 1 {
            return Err(format!(
                "the arena holds {} entries in use, its header says {in_use} in use and {free} free of {}",
                summary.entries,
                next_unused - 1
            ));
        }
        for (p, counters) in self.partitions.iter().enumerate() {
            let sum = |k: usize| locals.iter().map(|l| l.partitions[p][k]).sum::<u64>();
            counters.records.store(sum(0), Relaxed);
            counters.tombstones.store(sum(1), Relaxed);
            counters.rblocks.store(sum(2), Relaxed);
            summary.records += sum(0);
            summary.tombstones += sum(1);
            summary.bytes += sum(2) * 16;
        }
        for (s, counter) in self.set_records.iter().enumerate() {
            counter.store(locals.iter().map(|l| l.sets[s]).sum(), Relaxed);
        }
        summary.elapsed = started.elapsed();
        Ok(summary)
    }

    /// Checks every tree (colours, order, placement of each digest in its
    /// partition and sprig) and that the trees hold every entry in use.
    /// Takes each sprig's lock in turn; meant for tests and diagnostics.
    pub fn verify(&self) -> Result<u64, String> {
        let mut total = 0u64;
        for (i, sprig) in self.sprigs().iter().enumerate() {
            let _guard = SpinGuard::lock(&sprig.lock);
            let root = sprig.root.load(Relaxed);
            total += tree::verify(self, root).map_err(|e| format!("sprig {i}: {e}"))? as u64;
            let mut misplaced = None;
            tree::walk_from(self, root, None, |h, entry| {
                if self.sprig_index(&entry.key().digest()) != i {
                    misplaced = Some(h);
                    return false;
                }
                true
            });
            if let Some(h) = misplaced {
                return Err(format!(
                    "handle {h} sits in sprig {i}, which its digest does not map to"
                ));
            }
        }
        let in_use = self.header().in_use.load(Relaxed);
        if total != in_use {
            return Err(format!(
                "trees hold {total} entries, the arena has {in_use} in use"
            ));
        }
        Ok(total)
    }

    // ---- sets -----------------------------------------------------------

    /// The id of set `name`, assigning the next free one on first use.
    pub fn set_id(&self, name: &str) -> Result<u16, IndexError> {
        if name.is_empty() || name.len() >= SET_SLOT_SIZE {
            return Err(IndexError::InvalidSetName(name.to_string()));
        }
        if let Some(id) = self
            .set_ids
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return Ok(*id);
        }
        let mut map = self.set_ids.write().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = map.get(name) {
            return Ok(*id);
        }
        let header = self.header();
        let id = header.set_count.load(Relaxed) + 1;
        if id > u32::from(MAX_SET_ID) {
            return Err(IndexError::TooManySets);
        }
        let id = id as u16;
        let slot = self.set_slot(id);
        for (i, byte) in name.bytes().enumerate() {
            slot.bytes[i + 1].store(byte, Relaxed);
        }
        slot.bytes[0].store(name.len() as u8, Relaxed);
        header.set_count.store(u32::from(id), Relaxed);
        map.insert(name.to_string(), id);
        Ok(id)
    }

    /// The id of set `name` if it has one.
    pub fn find_set(&self, name: &str) -> Option<u16> {
        self.set_ids
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .copied()
    }

    /// The name of set `id`.
    pub fn set_name(&self, id: u16) -> Option<String> {
        if id == 0 || u32::from(id) > self.header().set_count.load(Relaxed) {
            return None;
        }
        self.read_set_name(id)
    }

    fn read_set_name(&self, id: u16) -> Option<String> {
        let slot = self.set_slot(id);
        let len = slot.bytes[0].load(Relaxed) as usize;
        if len == 0 || len >= SET_SLOT_SIZE {
            return None;
        }
        let bytes: Vec<u8> = (1..=len).map(|i| slot.bytes[i].load(Relaxed)).collect();
        String::from_utf8(bytes).ok()
    }

    // ---- statistics -----------------------------------------------------

    pub fn partition_stats(&self, partition: PartitionId) -> PartitionStats {
        let p = &self.partitions[partition.index()];
        PartitionStats {
            records: p.records.load(Relaxed),
            tombstones: p.tombstones.load(Relaxed),
            bytes: p.rblocks.load(Relaxed) * 16,
        }
    }

    /// Live records in set `id`.
    pub fn set_records(&self, id: u16) -> u64 {
        self.set_records
            .get(id as usize)
            .map_or(0, |c| c.load(Relaxed))
    }

    pub fn stats(&self) -> IndexStats {
        let header = self.header();
        let mut stats = IndexStats::default();
        for p in PartitionId::all() {
            let s = self.partition_stats(p);
            stats.records += s.records;
            stats.tombstones += s.tombstones;
            stats.bytes += s.bytes;
        }
        stats.entries_in_use = header.in_use.load(Relaxed);
        stats.free_entries = header.free_count.load(Relaxed);
        stats.stages = header.stage_count.load(Relaxed);
        let meta_bytes = self.meta.size_bytes() as u64;
        let used_handles = header.next_unused.load(Relaxed);
        stats.shm_bytes_in_use = meta_bytes + used_handles * ENTRY_SIZE as u64;
        stats.shm_bytes_reserved = meta_bytes
            + (0..stats.stages as usize)
                .filter_map(|s| self.stages[s].get())
                .map(|s| s.segment().size_bytes() as u64)
                .sum::<u64>();
        // An attached segment does not know its pages; its creator wrote
        // them in the header.
        stats.huge_pages = self.meta.huge() || self.header().huge_pages.load(Relaxed) == 1;
        stats
    }

    /// Live records (tombstones not included).
    pub fn len(&self) -> u64 {
        self.partitions
            .iter()
            .map(|p| p.records.load(Relaxed))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    // ---- shutdown -------------------------------------------------------

    /// Ends this process's use after a clean shutdown: records the shutdown
    /// id (the one written to the devices' headers) and marks the index
    /// trusted, then detaches. The next [`Index::attach`] with the same id
    /// starts warm.
    pub fn mark_trusted(self, shutdown_id: u64) {
        let header = self.header();
        header.shutdown_id.store(shutdown_id, Relaxed);
        header.trusted.store(1, Ordering::SeqCst);
        drop(self);
    }

    /// Removes this index's segments from the host.
    pub fn destroy(self) -> Result<(), IndexError> {
        let config = self.config.clone();
        drop(self);
        Index::destroy_segments(&config)
    }

    /// Removes every segment that `config`'s keys name (meta and all
    /// possible stages). Refuses while another process has one attached.
    pub fn destroy_segments(config: &IndexConfig) -> Result<(), IndexError> {
        for segment in 0..=config::MAX_STAGES {
            let key = config.key(segment);
            let info = shm::stat(key).map_err(shm_error("shmctl(IPC_STAT)", key))?;
            if let Some(info) = info {
                if info.attached > 0 {
                    return Err(IndexError::InUse {
                        key,
                        attached: info.attached,
                    });
                }
                shm::remove(key).map_err(shm_error("shmctl(IPC_RMID)", key))?;
            }
        }
        Ok(())
    }
}
