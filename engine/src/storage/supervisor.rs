//! The namespace supervisor ("nsup"): expiry, eviction and truncation.
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
//! Eviction: when the devices are fuller than `evict-used-pct`, records are
//! evicted shortest remaining TTL first, as Aerospike does it: a pass finds
//! the range of void times, a second builds a histogram of void times
//! weighted by bytes, the void-time threshold whose buckets free enough
//! bytes is picked, and a last pass
//! removes every record whose void time is at or below it (whole buckets, so
//! all partitions are treated alike; it may free up to one bucket more than
//! needed). Records that never expire (void time 0) and tombstones are never
//! evicted. Only device usage is watched; index memory is not (there is no
//! index memory limit in the storage config yet).
//!
//! Truncation: durable first, then applied. The cutoff goes into every
//! device header's truncation list before any index entry is removed, so a
//! crash at any point leaves a cold start that drops the truncated images it
//! finds on flash (`Namespace::truncated_before`, used by the cold start's
//! `drop_dead_winners`). Then the index is walked and every entry of the set
//! (or of the namespace) last updated before the cutoff is removed.
//! Records written after the cutoff survive.
//!
//! Limits (as in Aerospike Community):
//! - An evicted record that has not expired yet comes back at a cold start
//!   if its image is still on flash: nothing durable records the eviction.
//!   (Aerospike Enterprise persists an eviction void time for this.)
//! - If an expired record's image is gone from flash (its write block was
//!   reused) while an older, unexpired image of the key remains, a cold
//!   start brings that older version back.
//! - Truncation has neither problem: its cutoff is in the headers.

use std::fmt;
use std::time::{Duration, Instant};

use super::header::{self, Truncation, MAX_SET_NAME_BYTES, MAX_TRUNCATIONS};
use super::namespace::{lock, Namespace};
use crate::index::{Change, IndexRecord};
use crate::ops::{self, Clock};
use crate::partition::PartitionId;

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
        let removed = self.index.modify(&seen.digest, |cur| {
            if (cur.location, cur.generation) == (seen.location, seen.generation) {
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
                // The image stays on flash: a key created again must get a
                // later last-update time, so that a cold start ranks the new
                // record above this image.
                self.note_removed(old.last_update_ms);
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

    /// Evicts if the devices are more than `evict_used_pct` used; returns
    /// how many records were evicted. See [`Namespace::evict`].
    pub fn evict_if_needed(&self, evict_used_pct: u32) -> u64 {
        self.evict(evict_used_pct).evicted
    }

    /// Eviction: if device usage is above `evict_used_pct` percent of
    /// capacity, evicts the records with the earliest void times until
    /// usage is at or below it (see the module doc). Never evicts records
    /// that never expire, nor tombstones.
    ///
    /// It needs no clock: void times are absolute, and records already
    /// expired have the earliest ones, so they go first.
    pub fn evict(&self, evict_used_pct: u32) -> EvictReport {
        let (used, capacity) = self.device_usage();
        let mark = (u128::from(capacity) * u128::from(evict_used_pct) / 100) as u64;
        let mut report = EvictReport {
            used_bytes_before: used,
            used_bytes_after: used,
            mark_bytes: mark,
            ..EvictReport::default()
        };
        if evict_used_pct == 0 || evict_used_pct >= 100 || used <= mark {
            return report;
        }
        let need = used - mark;
        let evictable = |r: &IndexRecord| !r.tombstone && r.void_time != 0;
        let mut buffer = Vec::new();

        // Pass 1: the range of void times, to size the histogram's buckets.
        let (mut min, mut max, mut total) = (u32::MAX, 0u32, 0u64);
        for p in PartitionId::all() {
            self.index.scan_partition(p, None, &mut buffer, |r| {
                if evictable(r) {
                    min = min.min(r.void_time);
                    max = max.max(r.void_time);
                    total += r.size_bytes();
                }
                true
            });
        }
        if total == 0 {
            report.short_of_mark = true;
            return report;
        }
        // Pass 2: bytes per void-time bucket (only if evicting everything
        // that expires is not needed anyway).
        let threshold = if total <= need {
            report.short_of_mark = true;
            max
        } else {
            let width = bucket_width(min, max, EVICT_HIST_BUCKETS);
            let mut hist = vec![0u64; EVICT_HIST_BUCKETS];
            for p in PartitionId::all() {
                self.index.scan_partition(p, None, &mut buffer, |r| {
                    // Records written meanwhile may fall outside [min, max];
                    // clamping keeps them in the first or last bucket.
                    if evictable(r) {
                        let b = ((r.void_time.clamp(min, max) - min) / width) as usize;
                        hist[b.min(EVICT_HIST_BUCKETS - 1)] += r.size_bytes();
                    }
                    true
                });
            }
            pick_threshold(&hist, min, max, width, need)
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
