//! A namespace's storage: its devices, their write-block tables and
//! post-write caches, and the index — everything the cores share — plus
//! start-up (warm or cold) and clean shutdown.
//!
//! Start-up:
//! 1. Read every device's header. A blank device is formatted; one that
//!    belongs to another namespace, position or format is refused unless
//!    `cold_start_empty` says to erase it.
//! 2. If every device says "clean shutdown" with one shutdown id, try to
//!    attach the shared-memory index with that id (warm). The attach walk
//!    rebuilds each write block's in-use bytes from the index.
//! 3. Otherwise (or if the index refuses) build the index from the devices:
//!    scan every write block of every device in parallel, keep the newest
//!    image of each digest (last-update time, then generation), then drop
//!    expired and truncated winners.
//! 4. Before serving, write every header back untrusted, so that a crash
//!    from here on forces the next start to be cold.
//!
//! Shutdown (with every core's [`CoreStorage`](super::core::CoreStorage)
//! flushed): write headers trusted with a new shutdown id, then mark the
//! index trusted with the same id.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::header::{self, DeviceHeader, Expected, HeaderError, HEADER_REGION_BYTES};
use super::wblocks::WblockTable;
use crate::device::{Device, IoKind, IoOp, Queue};
use crate::digest::Digest;
use crate::index::{Change, Index, IndexConfig, IndexError, IndexRecord, Location, Refusal, Start};
use crate::ops::Clock;
use crate::record::{self, RBLOCK_BYTES};

/// Storage settings of one namespace.
#[derive(Clone, Debug)]
pub struct StorageConfig {
    pub namespace: String,
    pub write_block_bytes: u32,
    /// Written write blocks kept in RAM per device, for reads without I/O.
    pub post_write_cache_blocks: u32,
    /// Bytes of buffers submitted to a device and not yet written, per
    /// core and device; past it writes fail with "device overload".
    pub max_write_cache_bytes: u64,
    pub flush_max_ms: u64,
    pub defrag_lwm_pct: u32,
    /// Reply to a write only once it is on the device.
    pub commit_to_device: bool,
    /// Refuse writes ("server full") when this much of the device is used.
    pub stop_writes_pct: u32,
    /// Erase devices that belong to something else instead of refusing.
    pub cold_start_empty: bool,
    pub default_ttl_s: u32,
    /// Threads for the cold-start scan (one device per thread at a time).
    pub scan_threads: usize,
    /// Where a cold scan reports how far it got, for a start-up log that
    /// another thread prints while `Namespace::open` runs.
    pub scan_progress: Option<Arc<ScanProgress>>,
}

/// How far a cold scan has got: records read, and bytes read of each
/// device. Updated once per write block; read by whoever logs it.
#[derive(Debug, Default)]
pub struct ScanProgress {
    records_read: AtomicU64,
    devices: Mutex<Vec<DeviceScan>>,
}

/// One device's part of a [`ScanProgress`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceScan {
    pub name: String,
    pub scanned_bytes: u64,
    pub total_bytes: u64,
}

impl ScanProgress {
    /// Records read so far and each device's progress (devices the scan
    /// has not reached yet are missing).
    pub fn snapshot(&self) -> (u64, Vec<DeviceScan>) {
        let devices = lock(&self.devices).clone();
        (self.records_read.load(Relaxed), devices)
    }

    fn start_device(&self, d: usize, name: &str, total_bytes: u64) {
        let mut devices = lock(&self.devices);
        if devices.len() <= d {
            devices.resize(d + 1, DeviceScan::default());
        }
        devices[d] = DeviceScan {
            name: name.to_string(),
            scanned_bytes: 0,
            total_bytes,
        };
    }

    fn block_done(&self, d: usize, bytes: u64, records: u64) {
        self.records_read.fetch_add(records, Relaxed);
        if let Some(device) = lock(&self.devices).get_mut(d) {
            device.scanned_bytes += bytes;
        }
    }
}

impl StorageConfig {
    pub fn new(namespace: &str) -> StorageConfig {
        StorageConfig {
            namespace: namespace.to_string(),
            write_block_bytes: 1 << 20,
            post_write_cache_blocks: 64,
            max_write_cache_bytes: 64 << 20,
            flush_max_ms: 1000,
            defrag_lwm_pct: 50,
            commit_to_device: false,
            stop_writes_pct: 90,
            cold_start_empty: false,
            default_ttl_s: 0,
            scan_threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            scan_progress: None,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let wb = self.write_block_bytes;
        if !wb.is_power_of_two() || !((128 << 10)..=(8 << 20)).contains(&wb) {
            return Err(format!(
                "write-block-size {wb} must be a power of two from 128 KiB to 8 MiB"
            ));
        }
        if self.defrag_lwm_pct > 99 {
            return Err(format!(
                "defrag-lwm-pct {} must be in 0..=99",
                self.defrag_lwm_pct
            ));
        }
        if !(1..=100).contains(&self.stop_writes_pct) {
            return Err(format!(
                "stop-writes-pct {} must be in 1..=100",
                self.stop_writes_pct
            ));
        }
        if self.max_write_cache_bytes < u64::from(wb) {
            return Err(format!(
                "max-write-cache {} must hold at least one write block",
                self.max_write_cache_bytes
            ));
        }
        if self.namespace.is_empty() || self.namespace.len() > 31 {
            return Err(format!(
                "namespace name {:?} must be 1..=31 bytes",
                self.namespace
            ));
        }
        Ok(())
    }
}

/// A written (or being written) write block held in RAM: the open buffer of
/// a core, then a post-write cache entry. Readers on any core copy records
/// out under the read lock; only the owning core appends.
pub struct Block {
    pub(crate) bytes: RwLock<Box<[u8]>>,
}

/// One device of the namespace and its shared state.
pub struct DeviceSlot {
    pub device: Arc<dyn Device>,
    pub wblocks: WblockTable,
    /// Per write block: its RAM copy while open or post-write cached.
    pub(crate) blocks: Box<[Mutex<Option<Arc<Block>>>]>,
    /// Cached (retired) write blocks, oldest first.
    cache_order: Mutex<VecDeque<(u32, Arc<Block>)>>,
    cache_capacity: usize,
    pub(crate) header: Mutex<DeviceHeader>,
    /// Per writer (core): the free epoch of its oldest record not yet on
    /// this device, or `u64::MAX`. See `wblocks.rs` on reuse.
    pub(crate) writers: Mutex<Vec<Arc<AtomicU64>>>,
    /// The next write-block life to draw, and the end of this run's range
    /// (see [`LIVES_PER_RUN`]).
    next_life: AtomicU64,
    lives_end: u64,
}

impl DeviceSlot {
    /// A new life for a write block being opened for writing: never drawn
    /// before on this device. `None` once this run's range is used up (2^40
    /// openings: not reachable in practice, but never wrap into an old life).
    pub(crate) fn draw_life(&self) -> Option<u64> {
        let life = self.next_life.fetch_add(1, Relaxed);
        (life < self.lives_end).then_some(life)
    }

    /// Free blocks stamped before this epoch may be reused: every record
    /// any writer appended before it is on the device.
    pub(crate) fn durable_horizon(&self) -> u64 {
        lock(&self.writers)
            .iter()
            .map(|w| w.load(std::sync::atomic::Ordering::SeqCst))
            .min()
            .unwrap_or(u64::MAX)
    }

    pub(crate) fn block(&self, wblock: u32) -> Option<Arc<Block>> {
        lock(&self.blocks[wblock as usize]).clone()
    }

    pub(crate) fn set_block(&self, wblock: u32, block: Option<Arc<Block>>) {
        *lock(&self.blocks[wblock as usize]) = block;
    }

    /// Keeps a retired write block readable from RAM, evicting the oldest.
    /// An evicted block is dropped from its slot only if the slot still holds
    /// it: the write block may have been freed and reopened by a writer since.
    /// Returns the evicted block's memory when no reader holds it any more,
    /// for the caller to reuse.
    pub(crate) fn cache_retired(&self, wblock: u32, block: &Arc<Block>) -> Option<Box<[u8]>> {
        let evicted = {
            let mut order = lock(&self.cache_order);
            order.push_back((wblock, block.clone()));
            if order.len() > self.cache_capacity {
                order.pop_front()
            } else {
                None
            }
        };
        let (old, old_block) = evicted?;
        {
            let mut slot = lock(&self.blocks[old as usize]);
            if slot.as_ref().is_some_and(|b| Arc::ptr_eq(b, &old_block)) {
                *slot = None;
            }
        }
        Arc::try_unwrap(old_block)
            .ok()
            .map(|b| b.bytes.into_inner().unwrap_or_else(|e| e.into_inner()))
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counters summed over the cores.
#[derive(Default)]
pub struct StorageStats {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub deletes: AtomicU64,
    pub cache_hits: AtomicU64,
    pub device_reads: AtomicU64,
    pub device_writes: AtomicU64,
    pub device_write_bytes: AtomicU64,
    pub checksum_failures: AtomicU64,
    pub read_retries: AtomicU64,
    pub overloads: AtomicU64,
    /// The part of `overloads` refused for want of a usable free block (at
    /// the defrag reserve, or free blocks still holding the last durable
    /// images of records in flight) rather than a full write backlog.
    pub free_block_waits: AtomicU64,
    pub stop_writes: AtomicU64,
    /// Device writes that failed their immediate retries (and are retried
    /// with backoff until they land).
    pub write_errors: AtomicU64,
    pub defrag_reads: AtomicU64,
    pub defrag_moved: AtomicU64,
    pub defrag_freed: AtomicU64,
    /// Blocks left in defrag because a live record in them could not be
    /// read back (a corrupt image): they are never freed.
    pub defrag_stuck: AtomicU64,
    /// Blocks above the low-water mark queued for defrag because writers
    /// had run out of free blocks and no block was under the mark.
    pub emergency_defrags: AtomicU64,
    /// Tombstone entries reclaimed by tomb-raider passes, and those kept
    /// because an older image of their key was still found (summed over
    /// passes: a tombstone kept by three passes counts three times).
    pub tombstones_reclaimed: AtomicU64,
    pub tombstones_kept: AtomicU64,
    /// Tomb-raider passes that finished, and those that reclaimed nothing
    /// because a device read failed or the pass was stopped.
    pub tomb_raider_passes: AtomicU64,
    pub tomb_raider_aborts: AtomicU64,
}

/// How the namespace started, for the log.
#[derive(Debug, Clone)]
pub enum StartKind {
    Warm { entries: u64 },
    Cold { reason: String, scan: ScanSummary },
}

/// What a cold start found on the devices.
#[derive(Debug, Clone, Default)]
pub struct ScanSummary {
    pub records_read: u64,
    pub unique: u64,
    pub replaced: u64,
    pub older: u64,
    pub expired: u64,
    pub truncated: u64,
    pub bad_images: u64,
    pub bytes_scanned: u64,
    /// Valid images a block's scan stopped at because they carry another
    /// life than the block's first image: left from an earlier life of the
    /// block (its new first write did not land whole), never adopted.
    pub other_life: u64,
    /// The latest last-update time of any image found, adopted or not.
    pub max_lut_ms: u64,
    pub elapsed: Duration,
}

/// Why storage could not start.
#[derive(Debug)]
pub enum StartError {
    Config(String),
    Index(IndexError),
    /// A device belongs to something else; the message names the field.
    Device(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Config(e) => write!(f, "storage config: {e}"),
            StartError::Index(e) => write!(f, "{e}"),
            StartError::Device(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// The clock the engine reads (seconds and ms since 2010-01-01); tests
/// replace it to make records expire.
pub type ClockSource = Arc<dyn Fn() -> Clock + Send + Sync>;

/// The system clock in the Citrusleaf epoch.
pub fn system_clock() -> Clock {
    const CITRUSLEAF_EPOCH_UNIX_S: u64 = 1_262_304_000;
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let ms = (unix.as_millis() as u64).saturating_sub(CITRUSLEAF_EPOCH_UNIX_S * 1000);
    Clock {
        now_s: (ms / 1000) as u32,
        now_ms: ms,
    }
}

/// A namespace's shared storage state.
pub struct Namespace {
    pub config: StorageConfig,
    pub index: Index,
    pub devices: Vec<DeviceSlot>,
    pub stats: StorageStats,
    pub clock: ClockSource,
    /// The latest last-update time of any record whose index entry was
    /// removed while its image may still be on flash (plain delete, expiry,
    /// eviction, truncation). A record created afterwards gets a later time,
    /// so a cold start ranks it above every such image (see `newer`).
    removed_lut_ms: AtomicU64,
}

pub(crate) const START_IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Write-block lives each start takes for itself (see [`DeviceSlot::draw_life`]).
///
/// Why a range per start written to the header, not "the highest life a cold
/// scan saw, plus one": the images that most need a life different from the
/// new one are those the scan could *not* see — stale images hidden behind a
/// gap, the very ones this defends against — and if the newest life's images
/// were all lost or hidden, the scan would hand that life out again, to a
/// block that may still hold hidden images of it. The header write at the
/// end of `open` is flushed before any record is written, so the range's end
/// is durable before any life in it is used, and a crash at any point leaves
/// the next start above every life this one drew.
pub const LIVES_PER_RUN: u64 = 1 << 40;
/// Write blocks read at once per device during a cold scan.
const SCAN_DEPTH: usize = 8;

impl Namespace {
    /// Starts the namespace on `devices` (its config order is the device
    /// index). See the module doc for the steps.
    pub fn open(
        config: StorageConfig,
        index_config: &IndexConfig,
        devices: Vec<Arc<dyn Device>>,
        clock: ClockSource,
    ) -> Result<(Namespace, StartKind), StartError> {
        config.validate().map_err(StartError::Config)?;
        if devices.is_empty() || devices.len() > 255 {
            return Err(StartError::Config(format!(
                "{} devices; 1..=255 allowed",
                devices.len()
            )));
        }
        let count = devices.len() as u32;
        let mut headers = Vec::with_capacity(devices.len());
        let mut prior_lives = Vec::with_capacity(devices.len());
        let mut instance_id = None;
        for (i, device) in devices.iter().enumerate() {
            let mut queue = device
                .open_queue()
                .map_err(|e| StartError::Device(e.to_string()))?;
            let read = header::read_header(&**device, &mut *queue)
                .map_err(|e| StartError::Device(e.to_string()))?;
            let expected = Expected {
                namespace: config.namespace.clone(),
                device_index: i as u32,
                device_count: count,
                write_block_bytes: config.write_block_bytes,
                device_bytes: device.info().size_bytes,
                instance_id,
            };
            // A header being replaced (cold-start-empty) still bounds the
            // lives its images may carry: the new format continues above them.
            if let Ok(h) = &read {
                prior_lives.push(h.next_life);
            } else {
                prior_lives.push(0);
            }
            let found = match read {
                Ok(h) => match h.check(&expected) {
                    Ok(()) => Some(h),
                    Err(_) if config.cold_start_empty => None,
                    Err(mismatch) => return Err(StartError::Device(mismatch.to_string())),
                },
                Err(HeaderError::Blank) => None,
                Err(e) if config.cold_start_empty => {
                    let _ = e;
                    None
                }
                Err(e) => {
                    return Err(StartError::Device(format!(
                    "device {}: unreadable header ({e}); set cold-start-empty = true to erase it",
                    device.info().name
                )))
                }
            };
            if let Some(h) = &found {
                instance_id.get_or_insert(h.instance_id);
            }
            headers.push(found);
        }
        // Devices without a usable header are (re)formatted into the
        // namespace's instance. Any such device makes the start cold.
        let instance_id = instance_id.unwrap_or_else(header::new_instance_id);
        let all_formatted = headers.iter().all(Option::is_some);
        let shutdown_ids: Vec<Option<u64>> = headers
            .iter()
            .map(|h| h.as_ref().filter(|h| h.trusted).map(|h| h.shutdown_id))
            .collect();
        let warm_id = match shutdown_ids.first() {
            Some(Some(id)) if all_formatted && shutdown_ids.iter().all(|s| *s == Some(*id)) => {
                Some(*id)
            }
            _ => None,
        };
        // Truncations are written to every device, but a device may have
        // been replaced or erased since: merge every header's list (latest
        // cutoff per set) so that no truncation is forgotten.
        let mut truncations: Vec<header::Truncation> = Vec::new();
        for t in headers.iter().flatten().flat_map(|h| h.truncations.iter()) {
            match truncations.iter_mut().find(|m| m.set_name == t.set_name) {
                Some(m) => m.before_ms = m.before_ms.max(t.before_ms),
                None => truncations.push(t.clone()),
            }
        }
        let mut slots = Vec::with_capacity(devices.len());
        for (i, ((device, found), prior_life)) in devices
            .into_iter()
            .zip(headers)
            .zip(prior_lives)
            .enumerate()
        {
            let size = device.info().size_bytes;
            let header = found.unwrap_or_else(|| DeviceHeader {
                sequence: 0,
                namespace: config.namespace.clone(),
                device_index: i as u32,
                device_count: count,
                instance_id,
                write_block_bytes: config.write_block_bytes,
                device_bytes: size,
                trusted: false,
                shutdown_id: 0,
                lut_watermark_ms: 0,
                next_life: prior_life,
                truncations: Vec::new(),
            });
            let mut header = header;
            header.truncations = truncations.clone();
            // This run's lives; the header written before serving records
            // the range's end (see `LIVES_PER_RUN`).
            let lives_start = header.next_life;
            let Some(lives_end) = lives_start.checked_add(LIVES_PER_RUN) else {
                return Err(StartError::Device(format!(
                    "device {}: write-block lives exhausted (next life {lives_start}); the device must be re-formatted",
                    device.info().name
                )));
            };
            header.next_life = lives_end;
            let wblocks = WblockTable::new(
                HEADER_REGION_BYTES,
                size,
                config.write_block_bytes,
                config.defrag_lwm_pct,
            )
            .map_err(|e| StartError::Device(format!("device {}: {e}", device.info().name)))?;
            let n = wblocks.count() as usize;
            slots.push(DeviceSlot {
                device,
                wblocks,
                blocks: (0..n).map(|_| Mutex::new(None)).collect(),
                cache_order: Mutex::new(VecDeque::new()),
                cache_capacity: config.post_write_cache_blocks as usize,
                header: Mutex::new(header),
                writers: Mutex::new(Vec::new()),
                next_life: AtomicU64::new(lives_start),
                lives_end,
            });
        }

        // Warm if possible: the attach walk rebuilds write-block usage.
        let rebuild = |r: &IndexRecord| {
            let slot = &slots[r.location.device as usize];
            if let Some(wb) = slot.wblocks.wblock_of(r.location.rblock_id) {
                slot.wblocks.add(wb, r.size_bytes() as u32);
            }
        };
        let (index, start) = match warm_id {
            Some(id) => Index::open(index_config, Some(id), &rebuild).map_err(StartError::Index)?,
            None => (
                Index::create(index_config).map_err(StartError::Index)?,
                Start::Cold(Refusal::NotTrusted),
            ),
        };
        let mut namespace = Namespace {
            config,
            index,
            devices: slots,
            stats: StorageStats::default(),
            clock,
            removed_lut_ms: AtomicU64::new(0),
        };
        let kind = match start {
            Start::Warm(summary) => {
                // No image on flash is later than what the clean shutdown
                // recorded (see `DeviceHeader::lut_watermark_ms`).
                let watermark = namespace
                    .devices
                    .iter()
                    .map(|d| lock(&d.header).lut_watermark_ms)
                    .max()
                    .unwrap_or(0);
                namespace.removed_lut_ms.store(watermark, Relaxed);
                StartKind::Warm {
                    entries: summary.entries,
                }
            }
            Start::Cold(refusal) => {
                let reason = if warm_id.is_none() {
                    if all_formatted {
                        "the devices were not shut down cleanly".to_string()
                    } else {
                        "some devices were blank or erased".to_string()
                    }
                } else {
                    format!("the index was refused: {refusal}")
                };
                // A refused warm attach may have counted usage already.
                for slot in &mut namespace.devices {
                    let fresh = WblockTable::new(
                        HEADER_REGION_BYTES,
                        slot.device.info().size_bytes,
                        namespace.config.write_block_bytes,
                        namespace.config.defrag_lwm_pct,
                    )
                    .map_err(StartError::Device)?;
                    slot.wblocks = fresh;
                }
                let scan = namespace.cold_scan()?;
                // Every image on flash was seen: none is later than this.
                namespace.removed_lut_ms.fetch_max(scan.max_lut_ms, Relaxed);
                StartKind::Cold { reason, scan }
            }
        };
        for slot in &namespace.devices {
            slot.wblocks.settle_after_load();
        }
        namespace.write_headers(false, 0)?;
        Ok((namespace, kind))
    }

    /// Writes every device's header (trusted with `shutdown_id`, or untrusted).
    pub(crate) fn write_headers(&self, trusted: bool, shutdown_id: u64) -> Result<(), StartError> {
        for slot in &self.devices {
            let mut queue = slot
                .device
                .open_queue()
                .map_err(|e| StartError::Device(e.to_string()))?;
            let mut h = lock(&slot.header);
            h.trusted = trusted;
            h.shutdown_id = shutdown_id;
            h.lut_watermark_ms = h.lut_watermark_ms.max(self.removed_lut_ms.load(Relaxed));
            header::write_header(&*slot.device, &mut *queue, &mut h)
                .map_err(|e| StartError::Device(e.to_string()))?;
        }
        Ok(())
    }

    /// Which device holds `digest`: bits the partition and sprig choice do
    /// not use, so devices fill evenly within every partition.
    pub fn device_for(&self, digest: &Digest) -> usize {
        let d = &digest.0;
        u32::from_le_bytes([d[4], d[5], d[6], d[7]]) as usize % self.devices.len()
    }

    /// Records that the index entry of a record last updated at `lut_ms`
    /// was removed while its image stays on flash.
    pub fn note_removed(&self, lut_ms: u64) {
        self.removed_lut_ms.fetch_max(lut_ms, Relaxed);
    }

    /// The earliest last-update time a new image of a key may carry: after
    /// its stored entry's (`stored`, tombstones and expired entries
    /// included), or, for a key with no entry, after every removed image.
    pub fn min_next_lut(&self, stored: Option<&IndexRecord>) -> u64 {
        match stored {
            Some(r) => r.last_update_ms + 1,
            None => self.removed_lut_ms.load(Relaxed) + 1,
        }
    }

    /// Marks everything trusted after a clean shutdown. Every core must have
    /// flushed and dropped its `CoreStorage` first.
    pub fn shutdown(self) -> Result<u64, StartError> {
        let id = header::new_instance_id() | 1;
        self.write_headers(true, id)?;
        self.index.mark_trusted(id);
        Ok(id)
    }

    /// Every truncation cutoff, for checking many records at once.
    fn truncation_cutoffs(&self) -> Cutoffs {
        let mut cutoffs = Cutoffs::default();
        for slot in self.devices.iter().take(1) {
            for t in &lock(&slot.header).truncations {
                match &t.set_name {
                    None => cutoffs.namespace = cutoffs.namespace.max(t.before_ms),
                    Some(s) => cutoffs.sets.push((s.as_bytes().to_vec(), t.before_ms)),
                }
            }
        }
        cutoffs
    }

    /// The truncation cutoff (ms) that applies to `set_name`, if any.
    pub fn truncated_before(&self, set_name: &[u8]) -> u64 {
        self.truncation_cutoffs().before(set_name)
    }

    /// Builds the index from the devices (cold start).
    fn cold_scan(&self) -> Result<ScanSummary, StartError> {
        let started = Instant::now();
        let totals = Mutex::new(ScanSummary::default());
        // Winners that are dead (expired, truncated) must go after the scan.
        // A winner is an adopted image, so only keys whose adopted image was
        // dead, or could be by the end of the scan, need a second look; the
        // scan lists them rather than walking the whole index afterwards (a
        // walk of every entry, cache miss after cache miss, was a third of
        // a cold start of small records). Past `MAYBE_DEAD_LIMIT` listed
        // keys it walks instead.
        let cutoffs = self.truncation_cutoffs();
        let scan_clock = (self.clock)();
        let maybe_dead = Mutex::new(Some(Vec::<Digest>::new()));
        let next_job = AtomicU64::new(0);
        let failure = Mutex::new(None::<String>);
        let threads = self.config.scan_threads.max(1);
        // Jobs: every device, and with more threads than devices each device
        // cut into as many contiguous runs of blocks as it gets threads. A
        // scan is CPU-bound on index inserts long before the device is busy
        // (storage-bench: one thread at 100% of a core, fio 1.5x faster),
        // and the outcome does not depend on the order images are offered
        // in: the newest image wins whichever comes first.
        let per_device = (threads / self.devices.len()).max(1) as u32;
        // A device's runs share its read depth: SCAN_DEPTH in flight per
        // device however many threads scan it.
        let depth = (SCAN_DEPTH / per_device as usize).max(1);
        let mut jobs = Vec::new();
        for (d, slot) in self.devices.iter().enumerate() {
            let count = slot.wblocks.count();
            let step = count.div_ceil(per_device).max(1);
            let mut first = 0;
            while first < count {
                jobs.push((d, first..(first + step).min(count)));
                first += step;
            }
            if let Some(p) = &self.config.scan_progress {
                let wb_bytes = u64::from(self.config.write_block_bytes);
                p.start_device(d, &slot.device.info().name, u64::from(count) * wb_bytes);
            }
        }
        std::thread::scope(|scope| {
            for _ in 0..threads.min(jobs.len()) {
                scope.spawn(|| loop {
                    let j = next_job.fetch_add(1, Relaxed) as usize;
                    let Some((d, blocks)) = jobs.get(j).cloned() else {
                        return;
                    };
                    if lock(&failure).is_some() {
                        return;
                    }
                    match self.scan_device(d, blocks, depth, &cutoffs, scan_clock.now_s) {
                        Ok((s, dead)) => {
                            {
                                let mut listed = lock(&maybe_dead);
                                match (listed.as_mut(), dead) {
                                    (Some(all), Some(dead))
                                        if all.len() + dead.len() <= MAYBE_DEAD_LIMIT =>
                                    {
                                        all.extend(dead)
                                    }
                                    _ => *listed = None,
                                }
                            }
                            let mut t = lock(&totals);
                            t.records_read += s.records_read;
                            t.unique += s.unique;
                            t.replaced += s.replaced;
                            t.older += s.older;
                            t.bad_images += s.bad_images;
                            t.bytes_scanned += s.bytes_scanned;
                            t.other_life += s.other_life;
                            t.max_lut_ms = t.max_lut_ms.max(s.max_lut_ms);
                        }
                        Err(e) => {
                            *lock(&failure) = Some(e);
                            return;
                        }
                    }
                });
            }
        });
        if let Some(e) = lock(&failure).take() {
            return Err(StartError::Device(e));
        }
        let mut summary = totals.into_inner().unwrap_or_else(|e| e.into_inner());
        let listed = maybe_dead.into_inner().unwrap_or_else(|e| e.into_inner());
        let (expired, truncated) = self.drop_dead_winners(listed.as_deref());
        summary.unique -= expired + truncated;
        summary.expired = expired;
        summary.truncated = truncated;
        summary.elapsed = started.elapsed();
        Ok(summary)
    }

    /// Reads write blocks `blocks` of device `d` and offers their records to
    /// the index, newest image winning.
    fn scan_device(
        &self,
        d: usize,
        blocks: std::ops::Range<u32>,
        depth: usize,
        cutoffs: &Cutoffs,
        now_s: u32,
    ) -> Result<(ScanSummary, Option<Vec<Digest>>), String> {
        let slot = &self.devices[d];
        let unit = slot.device.info().min_io_bytes as usize;
        let mut queue: Box<dyn Queue> = slot.device.open_queue().map_err(|e| e.to_string())?;
        let mut state = ScanState {
            summary: ScanSummary::default(),
            maybe_dead: Some(Vec::new()),
            images: Vec::new(),
            last_set: None,
            cutoffs,
            now_s,
        };
        let progress = self.config.scan_progress.clone();
        self.read_blocks(
            d,
            &mut *queue,
            blocks,
            depth,
            "cold scan",
            |_| Ok(()),
            |wblock, bytes| {
                state.summary.bytes_scanned += bytes.len() as u64;
                let records_before = state.summary.records_read;
                self.scan_block(d, wblock, bytes, unit, &mut state);
                if let Some(p) = &progress {
                    p.block_done(
                        d,
                        bytes.len() as u64,
                        state.summary.records_read - records_before,
                    );
                }
                Ok(())
            },
        )?;
        Ok((state.summary, state.maybe_dead))
    }

    /// Reads write blocks `blocks` of device `d` on `queue`, at most `depth`
    /// in flight, and hands each block's bytes to `on_block` as its read
    /// completes (in completion order). `before_read(wblock)` runs just
    /// before each block's read is submitted. An error from either, a failed
    /// read, or no completion for `START_IO_TIMEOUT` ends the walk; `what`
    /// names the caller in the error. The cold scan and the tomb raider
    /// both walk devices with it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn read_blocks(
        &self,
        d: usize,
        queue: &mut dyn Queue,
        blocks: std::ops::Range<u32>,
        depth: usize,
        what: &str,
        mut before_read: impl FnMut(u32) -> Result<(), String>,
        mut on_block: impl FnMut(u32, &[u8]) -> Result<(), String>,
    ) -> Result<(), String> {
        let slot = &self.devices[d];
        let name = &slot.device.info().name;
        let wb_bytes = slot.wblocks.wblock_bytes() as usize;
        let depth = depth.max(1);
        let (mut next, mut in_flight) = (blocks.start, 0usize);
        let mut free_buffers = Vec::new();
        let mut done = Vec::new();
        // Tops the queue up to `depth` reads.
        let mut submit = |queue: &mut dyn Queue,
                          next: &mut u32,
                          in_flight: &mut usize,
                          free_buffers: &mut Vec<crate::device::IoBuffer>|
         -> Result<(), String> {
            while *next < blocks.end && *in_flight < depth {
                before_read(*next)?;
                let buffer = match free_buffers.pop() {
                    Some(b) => b,
                    None => slot
                        .device
                        .alloc_buffer(wb_bytes)
                        .map_err(|e| format!("device {name}: {what} buffer: {e}"))?,
                };
                let op = IoOp {
                    kind: IoKind::Read,
                    offset: slot.wblocks.offset_of(*next),
                    buffer,
                    token: u64::from(*next),
                };
                match queue.submit(op) {
                    Ok(()) => {
                        *next += 1;
                        *in_flight += 1;
                    }
                    Err(crate::device::SubmitError::Full(op)) => {
                        free_buffers.push(op.buffer);
                        break;
                    }
                    Err(crate::device::SubmitError::Invalid(_, e)) => {
                        return Err(format!("device {name}: {what} read: {e}"))
                    }
                }
            }
            Ok(())
        };
        // A stall is no completion for this long (a big device takes far
        // longer than that to read in all).
        let mut deadline = Instant::now() + START_IO_TIMEOUT;
        while next < blocks.end || in_flight > 0 {
            submit(&mut *queue, &mut next, &mut in_flight, &mut free_buffers)?;
            done.clear();
            if queue.poll(&mut done, usize::MAX) == 0 {
                if Instant::now() > deadline {
                    return Err(format!("device {name}: {what} reads stalled"));
                }
                std::thread::yield_now();
                continue;
            }
            deadline = Instant::now() + START_IO_TIMEOUT;
            for completion in done.drain(..) {
                in_flight -= 1;
                completion.result.map_err(|e| format!("{what} read: {e}"))?;
                // The next read goes out before this block is processed
                // (in a buffer of its own): processing a megabyte takes a
                // few hundred microseconds, and with several completions
                // reaped together the device used to sit idle through all
                // of them.
                submit(&mut *queue, &mut next, &mut in_flight, &mut free_buffers)?;
                on_block(completion.token as u32, &completion.buffer)?;
                free_buffers.push(completion.buffer);
            }
        }
        Ok(())
    }

    /// Offers the records of one write block to the index. Records start at
    /// 16-byte steps; a flush pads to the device's minimum I/O unit, so a
    /// blank or bad image mid-unit skips to the next unit, and one at a unit
    /// start ends the block's data.
    ///
    /// The block's life is that of its first image, and the first image of
    /// another life ends the block's data too. The whole-block first write
    /// of a reused block is meant to erase its previous life, but with a
    /// volatile drive cache a power cut can keep some of that write's
    /// sectors and lose others, which revert to the previous life's bytes;
    /// a record of the new life can then fill what would have been the gap
    /// the scan stops at, and without lives the scan would walk on into the
    /// stale images behind it — records that may have been superseded,
    /// deleted, or found absent by an earlier cold start, brought back.
    /// Lives are never reused on a device (`LIVES_PER_RUN`), so an image of
    /// the first image's life was written in the same opening of the block,
    /// after it: what the block held before is never adopted past the point
    /// where its current life's data stops.
    fn scan_block(
        &self,
        d: usize,
        wblock: u32,
        bytes: &[u8],
        unit: usize,
        state: &mut ScanState<'_>,
    ) {
        let slot = &self.devices[d];
        let base_rblock = slot.wblocks.offset_of(wblock) / RBLOCK_BYTES as u64;
        let summary = &mut state.summary;
        let mut images = std::mem::take(&mut state.images);
        images.clear();
        let mut at = 0usize;
        let mut block_life = None;
        while at + record::IMAGE_HEADER_BYTES <= bytes.len() {
            let image = match record::peek_image_len(&bytes[at..]) {
                Some(len) if at + len <= bytes.len() => {
                    record::decode_meta(&bytes[at..at + len]).ok()
                }
                _ => None,
            };
            if let Some(image) = &image {
                if *block_life.get_or_insert(image.life) != image.life {
                    summary.other_life += 1;
                    break;
                }
            }
            let Some(image) = image else {
                if at.is_multiple_of(unit) {
                    if bytes[at..at + RBLOCK_BYTES].iter().any(|&b| b != 0) {
                        summary.bad_images += 1;
                    }
                    break;
                }
                at = at.div_ceil(unit) * unit;
                continue;
            };
            let len = image.len;
            summary.records_read += 1;
            summary.max_lut_ms = summary.max_lut_ms.max(image.last_update_ms);
            // Consecutive images mostly share a set: one name lookup each run.
            let set_id = match &state.last_set {
                _ if image.set_name.is_empty() => 0,
                Some((name, id)) if name.as_slice() == image.set_name => *id,
                _ => {
                    let id = std::str::from_utf8(image.set_name)
                        .ok()
                        .and_then(|s| self.index.set_id(s).ok())
                        .unwrap_or(0);
                    state.last_set = Some((image.set_name.to_vec(), id));
                    id
                }
            };
            let candidate = IndexRecord {
                digest: image.digest,
                location: Location {
                    device: d as u8,
                    rblock_id: base_rblock + (at / RBLOCK_BYTES) as u64,
                    n_rblocks: (len / RBLOCK_BYTES) as u32,
                },
                generation: image.generation,
                void_time: image.void_time,
                last_update_ms: image.last_update_ms,
                set_id,
                tombstone: image.tombstone,
                key_stored: image.key_stored,
            };
            // Dead already, or expiring within the hour the scan may take.
            let maybe_dead = (candidate.void_time != 0
                && candidate.void_time < state.now_s.saturating_add(3600))
                || candidate.last_update_ms < state.cutoffs.before(image.set_name);
            images.push((candidate, maybe_dead));
            at += len;
        }
        // Offer the images to the index, hinting each one's sprig and tree
        // root a few images ahead: a block holds up to thousands of small
        // records with random digests, and their lookups' cache misses
        // overlap instead of following one another.
        for (i, (candidate, maybe_dead)) in images.iter().enumerate() {
            if let Some((ahead, _)) = images.get(i + SCAN_PREFETCH_SPRIGS) {
                self.index.prefetch_sprig(&ahead.digest);
            }
            if let Some((ahead, _)) = images.get(i + SCAN_PREFETCH_ROOTS) {
                self.index.prefetch_entry(&ahead.digest);
            }
            let candidate = *candidate;
            let outcome = self.index.update(&candidate.digest, |old| match old {
                Some(old) if !newer(&candidate, old) => (Change::Keep, Offer::Older),
                Some(old) => (Change::Put(candidate), Offer::Replaced(*old)),
                None => (Change::Put(candidate), Offer::New),
            });
            let adopted = match outcome {
                Ok(Offer::New) => {
                    summary.unique += 1;
                    self.count_in(&candidate);
                    true
                }
                Ok(Offer::Replaced(old)) => {
                    summary.replaced += 1;
                    self.count_out(&old);
                    self.count_in(&candidate);
                    true
                }
                Ok(Offer::Older) => {
                    summary.older += 1;
                    false
                }
                Err(_) => {
                    summary.bad_images += 1;
                    false
                }
            };
            if adopted && *maybe_dead {
                if let Some(list) = &mut state.maybe_dead {
                    if list.len() < MAYBE_DEAD_LIMIT {
                        list.push(candidate.digest);
                    } else {
                        state.maybe_dead = None;
                    }
                }
            }
        }
        state.images = images;
    }

    pub(crate) fn count_in(&self, r: &IndexRecord) {
        let slot = &self.devices[r.location.device as usize];
        if let Some(wb) = slot.wblocks.wblock_of(r.location.rblock_id) {
            slot.wblocks.add(wb, r.size_bytes() as u32);
        }
    }

    pub(crate) fn count_out(&self, r: &IndexRecord) {
        let slot = &self.devices[r.location.device as usize];
        if let Some(wb) = slot.wblocks.wblock_of(r.location.rblock_id) {
            slot.wblocks.release(wb, r.size_bytes() as u32);
        }
    }

    /// After a scan: removes winners that are expired or truncated (they had
    /// to win first, so that no older image of them survives).
    ///
    /// `listed`: the only keys whose winner can be dead (see `cold_scan`);
    /// `None` walks the whole index.
    fn drop_dead_winners(&self, listed: Option<&[Digest]>) -> (u64, u64) {
        let clock = (self.clock)();
        let cutoffs = self.truncation_cutoffs();
        let mut dead = Vec::new();
        let mut consider = |r: &IndexRecord| {
            if crate::ops::is_expired(r.void_time, clock.now_s) {
                dead.push((*r, true));
            } else if cutoffs.any() {
                let set = self.index.set_name(r.set_id).unwrap_or_default();
                if r.last_update_ms < cutoffs.before(set.as_bytes()) {
                    dead.push((*r, false));
                }
            }
        };
        match listed {
            Some(digests) => {
                for digest in digests {
                    if let Some(r) = self.index.get(digest) {
                        consider(&r);
                    }
                }
            }
            None => {
                let mut buffer = Vec::new();
                for p in crate::partition::PartitionId::all() {
                    self.index.scan_partition(p, None, &mut buffer, |r| {
                        consider(r);
                        true
                    });
                }
            }
        }
        let (mut expired, mut truncated) = (0, 0);
        for (r, is_expired) in dead {
            if let Some(old) = self.index.remove(&r.digest) {
                self.count_out(&old);
                self.note_removed(old.last_update_ms);
                if is_expired {
                    expired += 1;
                } else {
                    truncated += 1;
                }
            }
        }
        (expired, truncated)
    }
}

/// Truncation cutoffs taken once (they cannot change during a start).
#[derive(Default)]
struct Cutoffs {
    namespace: u64,
    sets: Vec<(Vec<u8>, u64)>,
}

impl Cutoffs {
    fn any(&self) -> bool {
        self.namespace > 0 || !self.sets.is_empty()
    }

    /// Records of `set_name` last updated before this are truncated.
    fn before(&self, set_name: &[u8]) -> u64 {
        self.sets
            .iter()
            .filter(|(name, _)| name.as_slice() == set_name)
            .fold(self.namespace, |cutoff, (_, before)| cutoff.max(*before))
    }
}

/// One scan thread's state across the blocks it reads.
struct ScanState<'a> {
    summary: ScanSummary,
    /// Keys whose adopted image was dead or could be by the scan's end;
    /// `None` once past `MAYBE_DEAD_LIMIT`.
    maybe_dead: Option<Vec<Digest>>,
    /// One block's images, kept for its allocation.
    images: Vec<(IndexRecord, bool)>,
    /// The last set name looked up and its id.
    last_set: Option<(Vec<u8>, u16)>,
    cutoffs: &'a Cutoffs,
    now_s: u32,
}

/// Keys a cold scan lists for a second look before it walks the whole
/// index instead (20 bytes each: 80 MiB at most).
const MAYBE_DEAD_LIMIT: usize = 4 << 20;

/// How many images ahead the scan hints a sprig, and a tree root.
const SCAN_PREFETCH_SPRIGS: usize = 16;
const SCAN_PREFETCH_ROOTS: usize = 8;

enum Offer {
    New,
    Replaced(IndexRecord),
    Older,
}

/// Whether image `a` is newer than `b`: last-update time first, then
/// generation (as a wrapping 16-bit sequence).
///
/// Not generation first: a key re-created after a durable delete, a plain
/// delete or an expiry starts again at generation 1, below its older images
/// (its tombstone included), and ranking by generation would let a cold
/// start resurrect an old image and lose the acknowledged new write. The
/// last-update time of a record never goes backwards (`ops::apply` keeps it
/// at least the stored one), so it orders the images of one key — provided
/// the host clock does not jump back across the delete and re-create.
/// More exactly, the write path makes every new image's time later than its
/// stored entry's, or than every removed image's (`min_next_lut`), so two
/// images of one key never tie.
pub(crate) fn newer(a: &IndexRecord, b: &IndexRecord) -> bool {
    if a.last_update_ms != b.last_update_ms {
        return a.last_update_ms > b.last_update_ms;
    }
    let ahead = a.generation.wrapping_sub(b.generation);
    ahead != 0 && ahead < 0x8000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(generation: u16, lut: u64) -> IndexRecord {
        IndexRecord {
            generation,
            last_update_ms: lut,
            ..Default::default()
        }
    }

    #[test]
    fn newest_image_wins_by_time_then_generation() {
        assert!(
            newer(&rec(1, 10), &rec(5, 9)),
            "a re-created record (gen 1) beats its older images"
        );
        assert!(!newer(&rec(5, 9), &rec(1, 10)));
        assert!(
            newer(&rec(2, 9), &rec(1, 9)),
            "same millisecond: the later generation"
        );
        assert!(!newer(&rec(1, 9), &rec(1, 9)));
        // Generation 1 after 65535 (it skips 0) is newer.
        assert!(newer(&rec(1, 5), &rec(65535, 5)));
    }

    #[test]
    fn config_errors_name_the_setting() {
        let mut c = StorageConfig::new("test");
        c.write_block_bytes = 3 << 20;
        assert!(c.validate().unwrap_err().contains("write-block-size"));
        let mut c = StorageConfig::new("test");
        c.max_write_cache_bytes = 1;
        assert!(c.validate().unwrap_err().contains("max-write-cache"));
    }
}
