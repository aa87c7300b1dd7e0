//! The namespace supervisor ("nsup"): expiry, eviction, truncation and
//! tombstone reclaim.
//!
//! Model (after Aerospike's nsup): records carry an absolute void time; the
//! write and read paths already treat an expired record as absent
//! ([`ops::is_expired`]), so nothing here is needed for correctness of what
//! clients see. What the supervisor does is reclaim: it removes expired
//! entries from the index and releases their bytes in their write blocks, so
//! that the blocks drain, get defragmented or freed, and the space is
//! written again. The daemon calls [`Namespace::run_supervisor_pass`] every
//! `nsup-period` seconds from its own thread (never from a service core: a
//! pass walks the whole index).
//!
//! How a pass walks: partition by partition with
//! [`Index::scan_partition`](crate::index::Index::scan_partition), which
//! copies each sprig out under its lock and visits the copy with no lock
//! held. Cores keep writing meanwhile, so what a pass saw may be stale by
//! the time it acts. Every removal is therefore conditional and made under
//! the sprig lock by [`Namespace::remove_if_unchanged`]: the entry is removed
//! only if it is still the version the pass saw (same location and
//! generation). A record a core rewrote meanwhile (say with a longer TTL) or
//! that defrag moved is kept; the next pass looks at it again. The bytes
//! released are those of the entry actually removed.
//!
//! Only the index entry goes. The image stays on flash until its write block
//! is reused, and a cold start drops it again because it is still expired.
//! Every removal raises the namespace's removed-image watermark
//! (`Namespace::note_removed`), so that a key created again gets a later
//! last-update time than the image left behind and a cold start ranks the
//! new record first.
//!
//! Eviction: when the devices, or the index, are fuller than
//! `evict-used-pct`, records are evicted shortest remaining TTL first, as
//! Aerospike does it: a pass finds the range of void times, a second builds
//! a histogram of void times (bytes and entries per bucket), the void-time
//! threshold whose buckets free enough bytes and entries is picked, and a
//! last pass removes every record whose void time is at or below it (whole
//! buckets, so all partitions are treated alike; it may free up to one
//! bucket more than needed). Records that never expire (void time 0) and
//! tombstones are never evicted. The index's use is its entries in use
//! (records and tombstones) against the most its arena can hold
//! (`max-stages` stages of entries): the shared memory it may grow to, and
//! the point where writes of new keys start failing.
//!
//! Truncation: durable first, then applied. The cutoff goes into every
//! device header's truncation list before any index entry is removed, so a
//! crash at any point leaves a cold start that drops the truncated images it
//! finds on flash (its `drop_dead_winners` checks the header's cutoffs).
//! Then the index is walked and every entry of the set
//! (or of the namespace) last updated before the cutoff is removed.
//! Records written after the cutoff survive.
//!
//! Tombstone reclaim (the "tomb raider", [`Namespace::reclaim_tombstones`]):
//! a durable delete's tombstone entry stays until no image of its key older
//! than the tombstone is left anywhere a cold start could adopt it from.
//! A pass marks the tombstones, reads every write block of every device
//! (free ones too) and every write buffer still in RAM, flushes the
//! devices, and removes — conditionally, like everything here — the
//! tombstones for which it found no older image. The daemon runs it every
//! `tomb-raider-period` from the same control thread. The method's doc
//! (and ARCHITECTURE.md, "Tombstone reclaim") give the safety argument.
//!
//! Limits (as in Aerospike Community):
//! - An evicted record that has not expired yet comes back at a cold start
//!   if its image is still on flash: nothing durable records the eviction.
//!   (Aerospike Enterprise persists an eviction void time for this.)
//! - If an expired record's image is gone from flash (its write block was
//!   reused) while an older, unexpired image of the key remains, a cold
//!   start brings that older version back.
//! - Truncation has neither problem: its cutoff is in the headers.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use super::header::{self, Truncation, MAX_SET_NAME_BYTES, MAX_TRUNCATIONS};
use super::namespace::{lock, newer, Namespace, START_IO_TIMEOUT};
use crate::device::{IoKind, IoOp};
use crate::digest::Digest;
use crate::index::{Change, IndexRecord};
use crate::ops::{self, Clock};
use crate::partition::PartitionId;
use crate::record::{self, RBLOCK_BYTES};

/// Buckets of the eviction histogram (Aerospike's `evict-hist-buckets`
/// default). More buckets evict closer to the mark, at more RAM per pass.
pub const EVICT_HIST_BUCKETS: usize = 10_000;

/// What the daemon passes to every supervisor pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SupervisorConfig {
    /// Evict when the devices are more than this percent used; 0 turns
    /// eviction off (Aerospike's default), as does anything at or above 100.
    pub evict_used_pct: u32,
    /// Most expired records removed by one pass; the rest wait for the next
    /// pass. `u64::MAX` for no limit.
    pub expire_budget: u64,
}

impl Default for SupervisorConfig {
    fn default() -> SupervisorConfig {
        SupervisorConfig {
            evict_used_pct: 0,
            expire_budget: u64::MAX,
        }
    }
}

/// What one eviction did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvictReport {
    /// Device bytes in use before and after, and the mark (bytes) they were
    /// measured against.
    pub used_bytes_before: u64,
    pub used_bytes_after: u64,
    pub mark_bytes: u64,
    /// Index entries in use before and after, and the mark (entries).
    pub index_entries_before: u64,
    pub index_entries_after: u64,
    pub index_mark_entries: u64,
    /// Records evicted and their flash bytes.
    pub evicted: u64,
    pub evicted_bytes: u64,
    /// Records with void time at or below this were evicted; `None` when no
    /// eviction was needed or nothing could be evicted.
    pub void_threshold: Option<u32>,
    /// Even evicting everything that expires did not reach the mark: the
    /// rest is records that never expire (and tombstones).
    pub short_of_mark: bool,
}

/// What one supervisor pass did, for the log and the statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SupervisorReport {
    /// Index entries the expiry pass looked at.
    pub scanned: u64,
    /// Records removed because their void time had passed, and their bytes.
    pub expired: u64,
    pub expired_bytes: u64,
    /// The expiry budget ran out before the walk ended.
    pub budget_exhausted: bool,
    pub evict: EvictReport,
    pub elapsed: Duration,
}

/// Why a truncate was refused or did not complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TruncateError {
    /// The cutoff lies after the namespace's clock (Aerospike refuses a
    /// `lut` in the future: it would truncate records not yet written).
    FutureCutoff { cutoff_ms: u64, now_ms: u64 },
    /// A cutoff of 0 (before 2010-01-01) truncates nothing.
    CutoffAtEpoch,
    /// The set name is empty or too long for a header truncation entry.
    SetName { name: String },
    /// A device header already holds as many truncations as it can.
    TooManyTruncations { device: String, max: usize },
    /// Writing a device's header failed. Headers are written last device
    /// first, so the one cold start reads (device 0) holds the truncation
    /// only if every other device does too; no index entry was removed.
    /// Retrying the same truncate is safe.
    Device { device: String, error: String },
}

impl fmt::Display for TruncateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TruncateError::FutureCutoff { cutoff_ms, now_ms } => write!(
                f,
                "truncate: last-update cutoff {cutoff_ms} ms is in the future (now {now_ms} ms, both since 2010-01-01)"
            ),
            TruncateError::CutoffAtEpoch => {
                write!(f, "truncate: last-update cutoff is not after 2010-01-01")
            }
            TruncateError::SetName { name } => write!(
                f,
                "truncate: set name {name:?} must be 1..={MAX_SET_NAME_BYTES} bytes"
            ),
            TruncateError::TooManyTruncations { device, max } => write!(
                f,
                "truncate: the header of device {device} already holds {max} truncations, the most it can; truncate the whole namespace to merge them"
            ),
            TruncateError::Device { device, error } => write!(
                f,
                "truncate: header of device {device} not written, the truncate did not happen: {error}"
            ),
        }
    }
}

impl std::error::Error for TruncateError {}

impl Namespace {
    /// Removes `seen`'s digest from the index if the entry is still the
    /// version `seen` describes (same location and generation), and releases
    /// its bytes. Returns whether it was removed. Every supervisor removal
    /// goes through here, so a record rewritten or moved since it was seen
    /// is never lost.
    pub fn remove_if_unchanged(&self, seen: &IndexRecord) -> bool {
        // The image stays on flash: a key created again must get a later
        // last-update time, so that a cold start ranks the new record above
        // this image. Raised before the entry goes (the same location and
        // generation mean the same image, so the same time): a writer that
        // finds the key absent takes the sprig lock after this removal and
        // so sees the raised watermark. Raised after, a writer on another
        // core could create the key in the same millisecond, tie with the
        // old image, and lose to it at a cold start (generation 1 < g).
        self.remove_if(&seen.digest, seen.last_update_ms, |cur| {
            (cur.location, cur.generation) == (seen.location, seen.generation)
        })
    }

    /// Removes `digest`'s entry under its sprig lock if `still(entry)`
    /// holds, after raising the removed-image watermark to `last_update_ms`
    /// (the removed image's time; see `remove_if_unchanged` for why first),
    /// and releases its bytes. Returns whether it was removed.
    fn remove_if(
        &self,
        digest: &Digest,
        last_update_ms: u64,
        still: impl Fn(&IndexRecord) -> bool,
    ) -> bool {
        self.note_removed(last_update_ms);
        let removed = self.index.modify(digest, |cur| {
            if still(cur) {
                (Change::Remove, Some(*cur))
            } else {
                (Change::Keep, None)
            }
        });
        match removed {
            Some(Some(old)) => {
                // Released after the sprig lock: the index no longer points
                // at these bytes, so nobody else will release them.
                self.count_out(&old);
                true
            }
            _ => false,
        }
    }

    /// One expiry pass at the namespace clock's time; see
    /// [`Namespace::expire_at`].
    pub fn expire(&self, budget: u64) -> SupervisorReport {
        self.expire_at((self.clock)(), budget)
    }

    /// Removes every record whose void time has passed at `now`, at most
    /// `budget` of them. Tombstones (void time 0) are never expired: they
    /// stay until no older image of their key is left on flash.
    pub fn expire_at(&self, now: Clock, budget: u64) -> SupervisorReport {
        let started = Instant::now();
        let mut report = SupervisorReport::default();
        let mut buffer = Vec::new();
        for p in PartitionId::all() {
            if report.expired >= budget {
                report.budget_exhausted = true;
                break;
            }
            self.index.scan_partition(p, None, &mut buffer, |r| {
                report.scanned += 1;
                if !r.tombstone
                    && ops::is_expired(r.void_time, now.now_s)
                    && self.remove_if_unchanged(r)
                {
                    report.expired += 1;
                    report.expired_bytes += r.size_bytes();
                }
                report.expired < budget
            });
        }
        report.elapsed = started.elapsed();
        report
    }

    /// Device bytes in use and the devices' capacity (write blocks only).
    pub fn device_usage(&self) -> (u64, u64) {
        self.devices.iter().fold((0, 0), |(used, cap), slot| {
            let w = &slot.wblocks;
            (
                used + w.used_bytes(),
                cap + u64::from(w.count()) * u64::from(w.wblock_bytes()),
            )
        })
    }

    /// Index entries in use (records and tombstones) and the most the
    /// index can hold (`max-stages` full stages; handle 0 is never used).
    pub fn index_usage(&self) -> (u64, u64) {
        let config = self.index.config();
        let capacity = u64::from(config.max_stages) * u64::from(config.entries_per_stage()) - 1;
        (self.index.stats().entries_in_use, capacity)
    }

    /// Evicts if the devices or the index are more than `evict_used_pct`
    /// used; returns how many records were evicted. See [`Namespace::evict`].
    pub fn evict_if_needed(&self, evict_used_pct: u32) -> u64 {
        self.evict(evict_used_pct).evicted
    }

    /// Eviction: if device usage or index usage is above `evict_used_pct`
    /// percent of its capacity, evicts the records with the earliest void
    /// times until both are at or below it (see the module doc). Never
    /// evicts records that never expire, nor tombstones.
    ///
    /// It needs no clock: void times are absolute, and records already
    /// expired have the earliest ones, so they go first.
    pub fn evict(&self, evict_used_pct: u32) -> EvictReport {
        let pct = |of: u64| (u128::from(of) * u128::from(evict_used_pct) / 100) as u64;
        let (used, capacity) = self.device_usage();
        let (entries, entry_capacity) = self.index_usage();
        let (mark, entry_mark) = (pct(capacity), pct(entry_capacity));
        let mut report = EvictReport {
            used_bytes_before: used,
            used_bytes_after: used,
            mark_bytes: mark,
            index_entries_before: entries,
            index_entries_after: entries,
            index_mark_entries: entry_mark,
            ..EvictReport::default()
        };
        if evict_used_pct == 0 || evict_used_pct >= 100 || (used <= mark && entries <= entry_mark) {
            return report;
        }
        let need_bytes = used.saturating_sub(mark);
        let need_entries = entries.saturating_sub(entry_mark);
        let evictable = |r: &IndexRecord| !r.tombstone && r.void_time != 0;
        let mut buffer = Vec::new();

        // Pass 1: the range of void times, to size the histogram's buckets.
        let (mut min, mut max, mut total_bytes, mut total_entries) = (u32::MAX, 0u32, 0u64, 0u64);
        for p in PartitionId::all() {
            self.index.scan_partition(p, None, &mut buffer, |r| {
                if evictable(r) {
                    min = min.min(r.void_time);
                    max = max.max(r.void_time);
                    total_bytes += r.size_bytes();
                    total_entries += 1;
                }
                true
            });
        }
        if total_entries == 0 {
            report.short_of_mark = true;
            return report;
        }
        // Pass 2: bytes and entries per void-time bucket (only if evicting
        // everything that expires is not needed anyway).
        let threshold = if total_bytes <= need_bytes || total_entries <= need_entries {
            report.short_of_mark = true;
            max
        } else {
            let width = bucket_width(min, max, EVICT_HIST_BUCKETS);
            let mut hist_bytes = vec![0u64; EVICT_HIST_BUCKETS];
            let mut hist_entries = vec![0u64; EVICT_HIST_BUCKETS];
            for p in PartitionId::all() {
                self.index.scan_partition(p, None, &mut buffer, |r| {
                    // Records written meanwhile may fall outside [min, max];
                    // clamping keeps them in the first or last bucket.
                    if evictable(r) {
                        let b = ((r.void_time.clamp(min, max) - min) / width) as usize;
                        let b = b.min(EVICT_HIST_BUCKETS - 1);
                        hist_bytes[b] += r.size_bytes();
                        hist_entries[b] += 1;
                    }
                    true
                });
            }
            // Whichever resource needs more of the histogram decides; one
            // already under its mark needs none of it.
            let for_bytes =
                (need_bytes > 0).then(|| pick_threshold(&hist_bytes, min, max, width, need_bytes));
            let for_entries = (need_entries > 0)
                .then(|| pick_threshold(&hist_entries, min, max, width, need_entries));
            for_bytes.max(for_entries).unwrap_or(min)
        };
        report.void_threshold = Some(threshold);

        // Pass 3: evict every record at or below the threshold.
        for p in PartitionId::all() {
            self.index.scan_partition(p, None, &mut buffer, |r| {
                if evictable(r) && r.void_time <= threshold && self.remove_if_unchanged(r) {
                    report.evicted += 1;
                    report.evicted_bytes += r.size_bytes();
                }
                true
            });
        }
        report.used_bytes_after = self.device_usage().0;
        report.index_entries_after = self.index_usage().0;
        report
    }

    /// One supervisor pass: expiry, then eviction if still above the mark.
    /// The daemon calls this every `nsup-period` seconds.
    pub fn run_supervisor_pass(&self, now: Clock, config: &SupervisorConfig) -> SupervisorReport {
        let started = Instant::now();
        // Expire first: expired records are the cheapest space to take back,
        // and removing them may bring usage under the mark without evicting.
        let mut report = self.expire_at(now, config.expire_budget);
        report.evict = self.evict(config.evict_used_pct);
        report.elapsed = started.elapsed();
        report
    }

    /// Truncates the set `set_name` (or the whole namespace with `None`):
    /// every record last updated before `before_ms` (ms since 2010-01-01;
    /// now when `None`) is removed. Returns how many records (tombstones not
    /// counted, though they go too) were removed from the index.
    ///
    /// The truncation is written to every device header before any entry
    /// is removed, so it survives any restart: a cold start drops the
    /// truncated images it finds. Blocks while the headers are written;
    /// call it from a control thread, not a service core.
    ///
    /// A record a core writes concurrently with a last-update time before
    /// the cutoff (its clock read just before the truncate's) can be missed
    /// by the walk; a cold start drops it, a warm one keeps it.
    pub fn truncate(
        &self,
        set_name: Option<&str>,
        before_ms: Option<u64>,
    ) -> Result<u64, TruncateError> {
        let now = (self.clock)();
        // "Now" covers records written in this very millisecond: a client
        // that writes and then truncates expects the write gone.
        let cutoff = before_ms.unwrap_or(now.now_ms + 1);
        if before_ms.is_some_and(|c| c > now.now_ms) {
            return Err(TruncateError::FutureCutoff {
                cutoff_ms: cutoff,
                now_ms: now.now_ms,
            });
        }
        if cutoff == 0 {
            return Err(TruncateError::CutoffAtEpoch);
        }
        if let Some(name) = set_name {
            if name.is_empty() || name.len() > MAX_SET_NAME_BYTES {
                return Err(TruncateError::SetName {
                    name: name.to_string(),
                });
            }
        }
        let cutoff = self.record_truncation(set_name, cutoff)?;
        // Records created from now on must rank after the cutoff, or a cold
        // start would drop them as truncated: a new key's last-update time
        // is above every removed one (see `min_next_lut`).
        self.note_removed(cutoff - 1);

        // Durable: now drop what the index still holds of it.
        let set_id = match set_name {
            None => None,
            Some(name) => match self.index.find_set(name) {
                Some(id) => Some(id),
                // No record was ever stored in this set by this index.
                None => return Ok(0),
            },
        };
        let doomed =
            |r: &IndexRecord| set_id.is_none_or(|id| r.set_id == id) && r.last_update_ms < cutoff;
        let mut removed = 0u64;
        let mut buffer = Vec::new();
        for p in PartitionId::all() {
            self.index.scan_partition(p, None, &mut buffer, |seen| {
                if !doomed(seen) {
                    return true;
                }
                // Decided again under the sprig lock on the current entry: a
                // record rewritten since the scan has a newer last-update
                // time and stays. Unlike expiry, the version need not match:
                // any version last updated before the cutoff is truncated.
                let gone = self.index.modify(&seen.digest, |cur| {
                    if doomed(cur) {
                        (Change::Remove, Some(*cur))
                    } else {
                        (Change::Keep, None)
                    }
                });
                if let Some(Some(old)) = gone {
                    self.count_out(&old);
                    self.note_removed(old.last_update_ms);
                    if !old.tombstone {
                        removed += 1;
                    }
                }
                true
            });
        }
        Ok(removed)
    }

    /// Adds (or raises) the truncation in every device header and writes
    /// the headers; returns the cutoff now in force for that set (or the
    /// namespace).
    ///
    /// Each header is rewritten as it is (same trusted flag and shutdown
    /// id — untrusted while running) with only its truncation list changed.
    /// Devices are written last to first: cold start reads truncations from
    /// device 0, so device 0 gets it only once every other device has it.
    fn record_truncation(&self, set_name: Option<&str>, cutoff: u64) -> Result<u64, TruncateError> {
        // Refuse before writing anything if any header is full.
        for slot in &self.devices {
            let mut list = lock(&slot.header).truncations.clone();
            if add_truncation(&mut list, set_name, cutoff).is_err() {
                return Err(TruncateError::TooManyTruncations {
                    device: slot.device.info().name.clone(),
                    max: MAX_TRUNCATIONS,
                });
            }
        }
        let mut in_force = cutoff;
        for slot in self.devices.iter().rev() {
            let name = || slot.device.info().name.clone();
            let mut queue = slot
                .device
                .open_queue()
                .map_err(|e| TruncateError::Device {
                    device: name(),
                    error: e.to_string(),
                })?;
            // Held across the write: another truncate or a shutdown writing
            // this header waits, so neither loses the other's change and the
            // sequence (which picks the slot) stays in step.
            let mut current = lock(&slot.header);
            let mut next = current.clone();
            // Checked again: a concurrent truncate may have added one.
            in_force = add_truncation(&mut next.truncations, set_name, cutoff).map_err(|max| {
                TruncateError::TooManyTruncations {
                    device: name(),
                    max,
                }
            })?;
            // On failure `next` is dropped and the header in RAM stays the
            // one on the device (write_header leaves the sequence alone).
            header::write_header(&*slot.device, &mut *queue, &mut next).map_err(|e| {
                TruncateError::Device {
                    device: name(),
                    error: e.to_string(),
                }
            })?;
            *current = next;
        }
        Ok(in_force)
    }
}

/// Settings of a tomb-raider pass (tombstone reclaim).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TombRaiderConfig {
    /// Write-block reads in flight per device.
    pub read_depth: usize,
    /// Pause after each write block read (Aerospike's `tomb-raider-sleep`),
    /// so that the pass's reads do not crowd out client I/O.
    pub sleep_per_block: Duration,
}

impl Default for TombRaiderConfig {
    fn default() -> TombRaiderConfig {
        TombRaiderConfig {
            read_depth: 4,
            sleep_per_block: Duration::ZERO,
        }
    }
}

/// What one tomb-raider pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TombRaiderReport {
    /// Tombstone entries in the index when the pass marked them.
    pub marked: u64,
    /// Entries removed: no older image of their key was found.
    pub reclaimed: u64,
    /// Entries kept because an older image of their key is still on a
    /// device (or in a write buffer on its way there).
    pub kept: u64,
    /// Entries that changed after the mark (re-created, deleted again):
    /// left alone; the next pass looks at them again.
    pub changed: u64,
    pub blocks_read: u64,
    pub bytes_read: u64,
    /// Why the pass reclaimed nothing: a device error, or it was stopped.
    pub aborted: Option<String>,
    pub elapsed: Duration,
}

/// A tombstone as the mark phase saw it, and whether an older image of its
/// key has been found.
struct Marked {
    generation: u16,
    last_update_ms: u64,
    needed: bool,
}

impl Namespace {
    /// One tomb-raider pass: removes the tombstone entries that no longer
    /// hide anything, i.e. no image of their key older than the tombstone is
    /// left on any device. Blocks for the whole pass (it reads every write
    /// block of every device); call it from a control thread, never from a
    /// service core. `stop` is asked between write blocks: once it says
    /// yes the pass ends at once and reclaims nothing.
    ///
    /// Why it is safe (ARCHITECTURE.md, "Deletes, defrag and cold start"):
    ///
    /// 1. Mark: collect every tombstone entry (digest, generation,
    ///    last-update time). An image of such a key older than its
    ///    tombstone was appended to a write buffer before the tombstone was
    ///    written (under the same sprig lock), so before the mark; images
    ///    appended after the mark are newer: client writes rank after the
    ///    tombstone (or, once it is reclaimed, after the removed-image
    ///    watermark it raised), and defrag copies only what the index points
    ///    at, which for these keys is the tombstone or something newer.
    /// 2. Scan: for every write block of every device — free ones too: a
    ///    free block's old images are still there and a cold scan would
    ///    adopt them — take its RAM copy if it has one (an open buffer, or
    ///    the post-write cache), then read it from the device on this
    ///    thread's own queue. Every image appended before the mark is in one
    ///    of the two: a RAM copy is dropped only after all its writes
    ///    completed, and it is looked at before the read is submitted. Every
    ///    valid image is decoded as a cold scan would, but the walk never
    ///    stops at a blank unit or another life (it skips to the next unit),
    ///    so it sees every image any cold scan could adopt and more. An
    ///    image of a marked key older than its tombstone marks it needed.
    /// 3. Flush each device, so that what the reads saw (old images already
    ///    overwritten, in particular) is what a power cut leaves.
    /// 4. Reclaim the tombstones not needed: first raise the removed-image
    ///    watermark to the tombstone's time (before the entry goes, so that
    ///    a writer that finds the key absent already creates it later than
    ///    the tombstone), then remove the entry under the sprig lock only if
    ///    it is still the same tombstone (generation and last-update time;
    ///    defrag may have moved it, which changes nothing it hides).
    ///
    /// Any device error, a stalled read or `stop` reclaims nothing: keeping
    /// a tombstone costs an index entry, dropping one too early brings a
    /// deleted record back.
    pub fn reclaim_tombstones(
        &self,
        config: &TombRaiderConfig,
        stop: &dyn Fn() -> bool,
    ) -> TombRaiderReport {
        let started = Instant::now();
        let mut report = TombRaiderReport::default();
        let mut marked = self.mark_tombstones();
        report.marked = marked.len() as u64;
        if marked.is_empty() {
            report.elapsed = started.elapsed();
            return report;
        }
        for d in 0..self.devices.len() {
            if let Err(why) = self.raid_device(d, config, stop, &mut marked, &mut report) {
                report.aborted = Some(why);
                self.stats.tomb_raider_aborts.fetch_add(1, Relaxed);
                report.elapsed = started.elapsed();
                return report;
            }
        }
        for (digest, m) in &marked {
            if m.needed {
                report.kept += 1;
                continue;
            }
            // The watermark is raised first (see step 4 above); raising it
            // for a tombstone that then turns out changed is harmless (new
            // keys just get a later time).
            let removed = self.remove_if(digest, m.last_update_ms, |cur| {
                cur.tombstone
                    && cur.generation == m.generation
                    && cur.last_update_ms == m.last_update_ms
            });
            if removed {
                report.reclaimed += 1;
            } else {
                report.changed += 1;
            }
        }
        self.stats
            .tombstones_reclaimed
            .fetch_add(report.reclaimed, Relaxed);
        self.stats.tombstones_kept.fetch_add(report.kept, Relaxed);
        self.stats.tomb_raider_passes.fetch_add(1, Relaxed);
        report.elapsed = started.elapsed();
        report
    }

    /// Step 1 of a pass: every tombstone entry, by digest.
    fn mark_tombstones(&self) -> HashMap<Digest, Marked> {
        let mut marked = HashMap::new();
        let mut buffer = Vec::new();
        for p in PartitionId::all() {
            self.index.scan_partition(p, None, &mut buffer, |r| {
                if r.tombstone {
                    marked.insert(
                        r.digest,
                        Marked {
                            generation: r.generation,
                            last_update_ms: r.last_update_ms,
                            needed: false,
                        },
                    );
                }
                true
            });
        }
        marked
    }

    /// Steps 2 and 3 for device `d`: reads every write block (and its RAM
    /// copy) and marks the tombstones whose keys have older images in them,
    /// then flushes the device.
    fn raid_device(
        &self,
        d: usize,
        config: &TombRaiderConfig,
        stop: &dyn Fn() -> bool,
        marked: &mut HashMap<Digest, Marked>,
        report: &mut TombRaiderReport,
    ) -> Result<(), String> {
        let slot = &self.devices[d];
        let name = slot.device.info().name.clone();
        let unit = (slot.device.info().min_io_bytes as usize).max(RBLOCK_BYTES);
        let mut queue = slot
            .device
            .open_queue()
            .map_err(|e| format!("device {name}: tomb raider queue: {e}"))?;
        let mut ram = Vec::new();
        let marked = std::cell::RefCell::new(marked);
        self.read_blocks(
            d,
            &mut *queue,
            0..slot.wblocks.count(),
            config.read_depth,
            "tomb raider",
            |wblock| {
                if stop() {
                    return Err("stopped".to_string());
                }
                // The RAM copy first, then the read (see step 2).
                if let Some(block) = slot.block(wblock) {
                    ram.clear();
                    ram.extend_from_slice(&block.bytes.read().unwrap_or_else(|e| e.into_inner()));
                    find_older_images(&ram, unit, &mut marked.borrow_mut());
                }
                Ok(())
            },
            |_, bytes| {
                report.blocks_read += 1;
                report.bytes_read += bytes.len() as u64;
                find_older_images(bytes, unit, &mut marked.borrow_mut());
                if !config.sleep_per_block.is_zero() {
                    std::thread::sleep(config.sleep_per_block);
                }
                Ok(())
            },
        )?;
        // Step 3: what the reads saw of overwritten blocks must be what a
        // power cut leaves, not an undo from a volatile cache.
        let buffer = slot
            .device
            .alloc_buffer(unit)
            .map_err(|e| format!("device {name}: tomb raider buffer: {e}"))?;
        let flush = IoOp {
            kind: IoKind::Flush,
            offset: 0,
            buffer,
            token: u64::MAX,
        };
        if queue.submit(flush).is_err() {
            return Err(format!("device {name}: tomb raider flush not accepted"));
        }
        let deadline = Instant::now() + START_IO_TIMEOUT;
        let mut done = Vec::new();
        loop {
            done.clear();
            if queue.poll(&mut done, usize::MAX) > 0 {
                for completion in done.drain(..) {
                    completion
                        .result
                        .map_err(|e| format!("tomb raider flush: {e}"))?;
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("device {name}: tomb raider flush stalled"));
            }
            std::thread::yield_now();
        }
    }
}

/// Marks needed every tombstone in `marked` whose key has an image older
/// than it in `bytes` (one write block, from the device or RAM).
///
/// The walk follows the cold scan's (`Namespace::scan_block`): images are
/// decoded and checksummed, a bad one mid-unit skips to the next unit. But
/// where the cold scan stops (a blank or bad unit start, an image of another
/// life) this walk goes on at the next unit, so it visits every position a
/// cold scan of this block could adopt an image from, and then some:
/// seeing too much only keeps a tombstone longer.
fn find_older_images(bytes: &[u8], unit: usize, marked: &mut HashMap<Digest, Marked>) {
    let mut at = 0usize;
    while at + record::IMAGE_HEADER_BYTES <= bytes.len() {
        let image = match record::peek_image_len(&bytes[at..]) {
            Some(len) if at + len <= bytes.len() => record::decode(&bytes[at..at + len], None)
                .ok()
                .map(|r| (r, len)),
            _ => None,
        };
        let Some((image, len)) = image else {
            at = (at / unit + 1) * unit;
            continue;
        };
        at += len;
        if let Some(m) = marked.get_mut(&image.digest) {
            let tombstone = IndexRecord {
                generation: m.generation,
                last_update_ms: m.last_update_ms,
                ..IndexRecord::default()
            };
            let found = IndexRecord {
                generation: image.generation,
                last_update_ms: image.last_update_ms,
                ..IndexRecord::default()
            };
            if newer(&tombstone, &found) {
                m.needed = true;
            }
        }
    }
}

/// Adds the truncation of `set_name` (or the namespace) at `cutoff` to a
/// header's list: an existing entry for it is raised, never lowered (an
/// older cutoff changes nothing). A namespace-wide entry makes set entries
/// at or below its cutoff redundant, and they are dropped (or not added)
/// to keep room. Returns the cutoff in force for the entry, or the maximum
/// number of entries if the list is full.
fn add_truncation(
    list: &mut Vec<Truncation>,
    set_name: Option<&str>,
    cutoff: u64,
) -> Result<u64, usize> {
    let whole = list
        .iter()
        .find(|t| t.set_name.is_none())
        .map(|t| t.before_ms);
    if let (Some(_), Some(whole)) = (set_name, whole) {
        if whole >= cutoff {
            return Ok(whole);
        }
    }
    let in_force = match list.iter_mut().find(|t| t.set_name.as_deref() == set_name) {
        Some(t) => {
            t.before_ms = t.before_ms.max(cutoff);
            t.before_ms
        }
        None => {
            list.push(Truncation {
                set_name: set_name.map(str::to_string),
                before_ms: cutoff,
            });
            cutoff
        }
    };
    if set_name.is_none() {
        list.retain(|t| t.set_name.is_none() || t.before_ms > in_force);
    }
    if list.len() > MAX_TRUNCATIONS {
        return Err(MAX_TRUNCATIONS);
    }
    Ok(in_force)
}

/// Seconds per histogram bucket so that `buckets` cover `min..=max`.
fn bucket_width(min: u32, max: u32, buckets: usize) -> u32 {
    let span = u64::from(max - min) + 1;
    span.div_ceil(buckets as u64).max(1) as u32
}

/// The void time at or below which evicting frees at least `need` bytes:
/// the end of the first bucket where the running total reaches it (capped
/// at `max`), or `max` if no bucket does.
fn pick_threshold(hist: &[u64], min: u32, max: u32, width: u32, need: u64) -> u32 {
    let mut freed = 0u64;
    for (i, bytes) in hist.iter().enumerate() {
        freed += bytes;
        if freed >= need {
            let end = u64::from(min) + (i as u64 + 1) * u64::from(width) - 1;
            return end.min(u64::from(max)) as u32;
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(set: Option<&str>, before_ms: u64) -> Truncation {
        Truncation {
            set_name: set.map(str::to_string),
            before_ms,
        }
    }

    #[test]
    fn truncations_are_added_raised_never_lowered() {
        let mut list = Vec::new();
        assert_eq!(add_truncation(&mut list, Some("a"), 100), Ok(100));
        assert_eq!(add_truncation(&mut list, Some("b"), 50), Ok(50));
        assert_eq!(add_truncation(&mut list, Some("a"), 200), Ok(200));
        assert_eq!(add_truncation(&mut list, Some("a"), 150), Ok(200));
        assert_eq!(list, vec![t(Some("a"), 200), t(Some("b"), 50)]);
    }

    #[test]
    fn a_namespace_truncation_absorbs_older_set_truncations() {
        let mut list = vec![t(Some("a"), 100), t(Some("b"), 300)];
        assert_eq!(add_truncation(&mut list, None, 200), Ok(200));
        assert_eq!(list, vec![t(Some("b"), 300), t(None, 200)]);
        // A set truncation the namespace's already covers is not added.
        assert_eq!(add_truncation(&mut list, Some("c"), 150), Ok(200));
        assert_eq!(add_truncation(&mut list, Some("c"), 250), Ok(250));
        assert_eq!(
            list,
            vec![t(Some("b"), 300), t(None, 200), t(Some("c"), 250)]
        );
    }

    #[test]
    fn a_full_list_refuses_a_new_set_but_takes_a_raise() {
        let mut list: Vec<Truncation> = (0..MAX_TRUNCATIONS)
            .map(|i| t(Some(&format!("s{i}")), 10))
            .collect();
        assert_eq!(
            add_truncation(&mut list.clone(), Some("new"), 20),
            Err(MAX_TRUNCATIONS)
        );
        assert_eq!(add_truncation(&mut list, Some("s7"), 20), Ok(20));
        // A namespace truncation above every set's cutoff makes room.
        assert_eq!(add_truncation(&mut list, None, 30), Ok(30));
        assert_eq!(list, vec![t(None, 30)]);
    }

    #[test]
    fn histogram_buckets_cover_the_range() {
        assert_eq!(bucket_width(10, 10, 100), 1);
        assert_eq!(bucket_width(0, 99, 100), 1);
        assert_eq!(bucket_width(0, 100, 100), 2);
        assert_eq!(bucket_width(0, u32::MAX, EVICT_HIST_BUCKETS), 429_497);
        // The last void time lands in the last bucket at most.
        let w = bucket_width(0, u32::MAX, EVICT_HIST_BUCKETS);
        assert!(((u32::MAX / w) as usize) < EVICT_HIST_BUCKETS);
    }

    #[test]
    fn the_threshold_is_the_end_of_the_bucket_that_frees_enough() {
        // Buckets of 10 s from void time 1000.
        let hist = [5, 0, 7, 3];
        assert_eq!(pick_threshold(&hist, 1000, 1035, 10, 1), 1009);
        assert_eq!(pick_threshold(&hist, 1000, 1035, 10, 5), 1009);
        assert_eq!(pick_threshold(&hist, 1000, 1035, 10, 6), 1029);
        assert_eq!(
            pick_threshold(&hist, 1000, 1035, 10, 15),
            1035,
            "capped at max"
        );
        assert_eq!(pick_threshold(&hist, 1000, 1035, 10, 99), 1035);
    }

    fn image(key: u8, generation: u16, lut_ms: u64, life: u64) -> Vec<u8> {
        let record = crate::record::Record {
            digest: Digest([key; 20]),
            generation,
            last_update_ms: lut_ms,
            ..Default::default()
        };
        record.encode(life).unwrap()
    }

    fn tombstone(generation: u16, lut_ms: u64) -> Marked {
        Marked {
            generation,
            last_update_ms: lut_ms,
            needed: false,
        }
    }

    /// The walk sees every image a cold scan of the block could adopt, and
    /// goes on where the scan stops: past a blank unit (the rest of a torn
    /// first write), an image of another life (the block's previous life),
    /// and a corrupt image. Only images older than their key's tombstone
    /// count.
    #[test]
    fn the_walk_finds_older_images_wherever_a_cold_scan_might_adopt_them() {
        const UNIT: usize = 4096;
        let mut block = vec![0u8; 8 * UNIT];
        let mut put = |at: usize, bytes: &[u8]| block[at..at + bytes.len()].copy_from_slice(bytes);
        // Unit 0: key 1 at the tombstone's own time (a defrag copy of it)
        // and key 2, newer than its tombstone (re-created meanwhile).
        let a = image(1, 3, 500, 7);
        put(0, &a);
        put(a.len(), &image(2, 1, 900, 7));
        // Unit 1 blank. Unit 2: key 3, older, after the blank.
        put(2 * UNIT, &image(3, 1, 100, 7));
        // Unit 3: another life first, then key 4 (older) behind it.
        let other = image(9, 1, 50, 6);
        put(3 * UNIT, &other);
        put(3 * UNIT + other.len(), &image(4, 1, 100, 6));
        // Unit 5: a corrupt image, then key 5 (older) on the next unit.
        let mut bad = image(8, 1, 50, 7);
        bad[40] ^= 1;
        put(5 * UNIT, &bad);
        put(6 * UNIT, &image(5, 2, 400, 7));
        let mut marked: HashMap<Digest, Marked> = (1..=6u8)
            .map(|k| (Digest([k; 20]), tombstone(3, 500)))
            .collect();
        find_older_images(&block, UNIT, &mut marked);
        let needed = |k: u8| marked[&Digest([k; 20])].needed;
        assert!(!needed(1), "the tombstone's own copy hides nothing");
        assert!(!needed(2), "a newer image is not an older one");
        assert!(needed(3), "past a blank unit");
        assert!(needed(4), "past an image of another life");
        assert!(needed(5), "past a corrupt image");
        assert!(!needed(6), "never written");
    }

    #[test]
    fn errors_say_what_to_do() {
        let e = TruncateError::Device {
            device: "nvme1".into(),
            error: "write failed".into(),
        };
        assert!(e.to_string().contains("nvme1"));
        let e = TruncateError::TooManyTruncations {
            device: "nvme0".into(),
            max: MAX_TRUNCATIONS,
        };
        assert!(e.to_string().contains("908") && e.to_string().contains("nvme0"));
        let e = TruncateError::FutureCutoff {
            cutoff_ms: 5,
            now_ms: 4,
        };
        assert!(e.to_string().contains("future"));
    }
}
