//! Write-block bookkeeping of one device: bytes in use, state, and the free
//! and defrag queues.
//!
//! After the 8 MiB header region a device is cut into write blocks of
//! `write-block-size` bytes. Each is in one state:
//!
//! ```text
//!   Free ──take_free──► Open ──close──► Used ──release below lwm──► Defrag
//!    ▲                                   │                            │
//!    └──────── release to 0 bytes ───────┘◄──────── finish_defrag ────┘
//! ```
//!
//! - `Open`: a core is filling its buffer; it is never freed or defragmented
//!   however empty it gets, because the writer still appends to it.
//! - `Used`: written; freed the moment its in-use bytes reach zero, queued
//!   for defrag when they fall below `defrag-lwm-pct`.
//! - `Defrag`: owned by the defragmenter, which copies the live records out
//!   and calls `finish_defrag` only once their new copies are on the device.
//!
//! Reuse waits for durability: a block that empties because its records
//! were rewritten elsewhere still holds their last durable images until the
//! new copies reach the device. Each freed block is stamped with the
//! device's free epoch, and [`WblockTable::take_free`] hands it out only
//! once every writer's oldest not-yet-durable record is younger than that
//! stamp (the caller passes that horizon). Blocks never written carry 0.
//!
//! In-use bytes and states are atomics (many cores release bytes at once);
//! the queues are short critical sections taken once per write block, not
//! once per record.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::record::RBLOCK_BYTES;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum WblockState {
    Free = 0,
    Open = 1,
    Used = 2,
    Defrag = 3,
}

impl WblockState {
    fn from_u8(v: u8) -> WblockState {
        match v {
            0 => WblockState::Free,
            1 => WblockState::Open,
            2 => WblockState::Used,
            _ => WblockState::Defrag,
        }
    }
}

/// What releasing bytes did to the write block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Released {
    Kept,
    Freed,
    QueuedForDefrag,
}

pub struct WblockTable {
    first_offset: u64,
    wblock_bytes: u32,
    in_use: Box<[AtomicU32]>,
    state: Box<[AtomicU8]>,
    /// Free blocks in the order they were freed, with their free epoch.
    free: Mutex<VecDeque<(u32, u64)>>,
    /// Stamps freed blocks; writers read it when a buffer gets its first
    /// unflushed record.
    epoch: AtomicU64,
    /// Blocks waiting for defrag, oldest first, each with when it fell
    /// below the low-water mark (`None`: eligible at once — requeued,
    /// queued by a start-up walk or by the emergency path).
    defrag: Mutex<VecDeque<(u32, Option<Instant>)>>,
    lwm_bytes: u32,
}

impl WblockTable {
    /// A table for a device of `device_bytes` whose write blocks start at
    /// `first_offset`; every block starts `Free` and empty.
    pub fn new(
        first_offset: u64,
        device_bytes: u64,
        wblock_bytes: u32,
        defrag_lwm_pct: u32,
    ) -> Result<Self, String> {
        if wblock_bytes == 0 || !(wblock_bytes as usize).is_multiple_of(RBLOCK_BYTES) {
            return Err(format!(
                "write-block size {wblock_bytes} is not a multiple of {RBLOCK_BYTES}"
            ));
        }
        if defrag_lwm_pct > 100 {
            return Err(format!("defrag-lwm-pct {defrag_lwm_pct} is over 100"));
        }
        let count = device_bytes.saturating_sub(first_offset) / u64::from(wblock_bytes);
        if count == 0 || count > u64::from(u32::MAX) {
            return Err(format!(
                "a device of {device_bytes} bytes holds {count} write blocks of {wblock_bytes} bytes after its {first_offset}-byte header; at least 1 is needed"
            ));
        }
        let count = count as u32;
        Ok(WblockTable {
            first_offset,
            wblock_bytes,
            in_use: (0..count).map(|_| AtomicU32::new(0)).collect(),
            state: (0..count)
                .map(|_| AtomicU8::new(WblockState::Free as u8))
                .collect(),
            free: Mutex::new((0..count).map(|id| (id, 0)).collect()),
            epoch: AtomicU64::new(1),
            defrag: Mutex::new(VecDeque::new()),
            lwm_bytes: (u64::from(wblock_bytes) * u64::from(defrag_lwm_pct) / 100) as u32,
        })
    }

    pub fn count(&self) -> u32 {
        self.in_use.len() as u32
    }

    pub fn wblock_bytes(&self) -> u32 {
        self.wblock_bytes
    }

    /// Device byte offset of write block `id`.
    pub fn offset_of(&self, id: u32) -> u64 {
        self.first_offset + u64::from(id) * u64::from(self.wblock_bytes)
    }

    /// The write block holding rblock `rblock_id` (an absolute rblock number
    /// on the device), or `None` if it is in the header region or past the end.
    pub fn wblock_of(&self, rblock_id: u64) -> Option<u32> {
        let offset = rblock_id.checked_mul(RBLOCK_BYTES as u64)?;
        let id = offset.checked_sub(self.first_offset)? / u64::from(self.wblock_bytes);
        (id < u64::from(self.count())).then_some(id as u32)
    }

    pub fn state(&self, id: u32) -> WblockState {
        WblockState::from_u8(self.state[id as usize].load(Ordering::Acquire))
    }

    pub fn in_use_bytes(&self, id: u32) -> u32 {
        self.in_use[id as usize].load(Ordering::Relaxed)
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current free epoch (see the module doc).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    fn push_free(&self, id: u32) {
        let stamp = self.epoch.fetch_add(1, Ordering::SeqCst);
        Self::lock(&self.free).push_back((id, stamp));
    }

    /// Takes the oldest free write block for a writer (it becomes `Open`),
    /// if it was freed before `durable_horizon`: every record written before
    /// that epoch is on the device. Blocks are freed in epoch order, so if
    /// the oldest is not yet reusable none is.
    pub fn take_free(&self, durable_horizon: u64) -> Option<u32> {
        let id = {
            let mut free = Self::lock(&self.free);
            match free.front() {
                Some(&(id, stamp)) if stamp < durable_horizon => {
                    free.pop_front();
                    id
                }
                _ => return None,
            }
        };
        let was = self.state[id as usize].swap(WblockState::Open as u8, Ordering::AcqRel);
        assert_eq!(
            was,
            WblockState::Free as u8,
            "write block {id} on the free queue was not free"
        );
        Some(id)
    }

    /// Counts `bytes` more in use in block `id` (a record written into it, or
    /// found in it by a start-up walk).
    pub fn add(&self, id: u32, bytes: u32) {
        let old = self.in_use[id as usize].fetch_add(bytes, Ordering::Relaxed);
        debug_assert!(
            old.checked_add(bytes)
                .is_some_and(|n| n <= self.wblock_bytes),
            "write block {id} over-full"
        );
    }

    /// Counts `bytes` fewer in use in block `id` (a record replaced, deleted
    /// or moved away) and frees or queues the block as its state allows.
    pub fn release(&self, id: u32, bytes: u32) -> Released {
        let old = self.in_use[id as usize].fetch_sub(bytes, Ordering::AcqRel);
        assert!(
            old >= bytes,
            "write block {id}: releasing {bytes} bytes of {old} in use"
        );
        let new = old - bytes;
        if new == 0 && self.transition(id, WblockState::Used, WblockState::Free) {
            self.push_free(id);
            return Released::Freed;
        }
        if new < self.lwm_bytes
            && old >= self.lwm_bytes
            && self.transition(id, WblockState::Used, WblockState::Defrag)
        {
            Self::lock(&self.defrag).push_back((id, Some(Instant::now())));
            return Released::QueuedForDefrag;
        }
        Released::Kept
    }

    fn transition(&self, id: u32, from: WblockState, to: WblockState) -> bool {
        self.state[id as usize]
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The writer is done with block `id` (its buffer is full or retired):
    /// it becomes `Used`, and is freed or queued at once if already light.
    pub fn close(&self, id: u32) -> Released {
        let closed = self.transition(id, WblockState::Open, WblockState::Used);
        assert!(closed, "closing write block {id}, which is not open");
        self.settle(id, Some(Instant::now()))
    }

    fn settle(&self, id: u32, queued_at: Option<Instant>) -> Released {
        let in_use = self.in_use_bytes(id);
        if in_use == 0 && self.transition(id, WblockState::Used, WblockState::Free) {
            self.push_free(id);
            Released::Freed
        } else if in_use < self.lwm_bytes
            && self.transition(id, WblockState::Used, WblockState::Defrag)
        {
            Self::lock(&self.defrag).push_back((id, queued_at));
            Released::QueuedForDefrag
        } else {
            Released::Kept
        }
    }

    /// The next block to defragment, if any: the oldest in the queue, once
    /// it has waited there for `settle` (see `DEFRAG_SETTLE` in core.rs).
    pub fn take_defrag(&self, settle: Duration) -> Option<u32> {
        let mut queue = Self::lock(&self.defrag);
        let &(id, queued_at) = queue.front()?;
        if settle > Duration::ZERO && queued_at.is_some_and(|t| t.elapsed() < settle) {
            return None;
        }
        queue.pop_front();
        Some(id)
    }

    /// Puts a block taken by `take_defrag` back at the end of the queue
    /// (defrag could not finish it now, e.g. no room to move records to).
    pub fn requeue_defrag(&self, id: u32) {
        assert_eq!(
            self.state(id),
            WblockState::Defrag,
            "requeueing write block {id}, which is not in defrag"
        );
        Self::lock(&self.defrag).push_back((id, None));
    }

    /// Defrag of block `id` is complete and every record it held is durable
    /// elsewhere: the block is free.
    pub fn finish_defrag(&self, id: u32) {
        let done = self.transition(id, WblockState::Defrag, WblockState::Free);
        assert!(
            done,
            "finishing defrag of write block {id}, which is not being defragmented"
        );
        self.in_use[id as usize].store(0, Ordering::Release);
        self.push_free(id);
    }

    /// After a start-up walk has `add`ed every record: empty blocks go to the
    /// free queue, light ones to the defrag queue, the rest are `Used`.
    /// Every block must still be `Free` (fresh table).
    pub fn settle_after_load(&self) {
        Self::lock(&self.free).clear();
        // Nothing is pending at start-up: every block freed here is reusable.
        self.epoch.store(1, Ordering::SeqCst);
        for id in 0..self.count() {
            let was = self.state[id as usize].swap(WblockState::Used as u8, Ordering::AcqRel);
            assert_eq!(
                was,
                WblockState::Free as u8,
                "settle_after_load on a table in use"
            );
            // Nothing is being overwritten yet: no reason to wait.
            self.settle(id, None);
        }
    }

    /// Queues the lightest `Used` block for defrag if it holds at most
    /// `max_in_use_bytes`, and returns it. For when writers are out of free
    /// blocks while none is below the low-water mark: a device of a few
    /// blocks that are each, say, 60% full has the space but no defrag
    /// candidate, and without this it refuses writes for good. O(blocks):
    /// only that rare path calls it.
    pub fn queue_lightest(&self, max_in_use_bytes: u32) -> Option<u32> {
        let lightest = (0..self.count())
            .filter(|&id| self.state(id) == WblockState::Used)
            .min_by_key(|&id| self.in_use_bytes(id))?;
        if self.in_use_bytes(lightest) > max_in_use_bytes
            || !self.transition(lightest, WblockState::Used, WblockState::Defrag)
        {
            return None;
        }
        Self::lock(&self.defrag).push_back((lightest, None));
        Some(lightest)
    }

    pub fn free_count(&self) -> usize {
        Self::lock(&self.free).len()
    }

    pub fn defrag_queue_len(&self) -> usize {
        Self::lock(&self.defrag).len()
    }

    /// Bytes of live records (and tombstones) on the device.
    pub fn used_bytes(&self) -> u64 {
        self.in_use
            .iter()
            .map(|b| u64::from(b.load(Ordering::Relaxed)))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn table() -> WblockTable {
        // 4 blocks of 1 MiB after an 8 MiB header; lwm 50%.
        WblockTable::new(8 * MIB, 12 * MIB + 100, MIB as u32, 50).unwrap()
    }

    #[test]
    fn geometry() {
        let t = table();
        assert_eq!(t.count(), 4);
        assert_eq!(t.offset_of(2), 10 * MIB);
        assert_eq!(t.wblock_of(10 * MIB / 16), Some(2));
        assert_eq!(t.wblock_of(10 * MIB / 16 - 1), Some(1));
        assert_eq!(t.wblock_of(0), None, "header region");
        assert_eq!(t.wblock_of(12 * MIB / 16), None, "past the end");
        assert!(WblockTable::new(8 * MIB, 8 * MIB, MIB as u32, 50)
            .err()
            .unwrap()
            .contains("at least 1"));
        assert!(WblockTable::new(8 * MIB, 9 * MIB, 1000, 50).is_err());
    }

    #[test]
    fn an_open_block_is_never_freed_or_queued() {
        let t = table();
        let id = t.take_free(u64::MAX).unwrap();
        assert_eq!(t.state(id), WblockState::Open);
        t.add(id, 1000);
        assert_eq!(t.release(id, 1000), Released::Kept);
        assert_eq!(t.state(id), WblockState::Open);
        // Closing an empty block frees it at once.
        assert_eq!(t.close(id), Released::Freed);
        assert_eq!(t.state(id), WblockState::Free);
        assert_eq!(t.free_count(), 4);
    }

    #[test]
    fn used_blocks_go_to_defrag_below_the_lwm_and_free_at_zero() {
        let t = table();
        let id = t.take_free(u64::MAX).unwrap();
        t.add(id, 600_000);
        t.add(id, 300_000);
        assert_eq!(t.close(id), Released::Kept);
        assert_eq!(t.release(id, 300_000), Released::Kept); // 600 000 >= 524 288
        assert_eq!(t.release(id, 100_000), Released::QueuedForDefrag);
        assert_eq!(t.state(id), WblockState::Defrag);
        assert_eq!(t.take_defrag(Duration::ZERO), Some(id));
        // Releases during defrag neither free nor re-queue it.
        assert_eq!(t.release(id, 500_000), Released::Kept);
        t.finish_defrag(id);
        assert_eq!(t.state(id), WblockState::Free);
        assert_eq!(t.in_use_bytes(id), 0);

        let id = t.take_free(u64::MAX).unwrap();
        t.add(id, 900_000);
        t.close(id);
        assert_eq!(t.release(id, 900_000), Released::Freed);
        assert_eq!(t.take_defrag(Duration::ZERO), None);
    }

    #[test]
    fn a_freed_block_waits_for_the_durable_horizon() {
        let t = table();
        let ids: Vec<u32> = (0..4).map(|_| t.take_free(1).unwrap()).collect();
        assert_eq!(t.take_free(u64::MAX), None, "all four are open");
        t.add(ids[0], 900_000);
        assert_eq!(t.close(ids[0]), Released::Kept);
        // A writer appended newer copies of those records at epoch e.
        let e = t.epoch();
        assert_eq!(t.release(ids[0], 900_000), Released::Freed);
        assert_eq!(
            t.take_free(e),
            None,
            "the newer copy (epoch {e}) is not durable yet"
        );
        assert_eq!(t.take_free(e + 1), Some(ids[0]), "durable: reusable");
    }

    #[test]
    fn settle_after_load_sorts_blocks() {
        let t = table();
        t.add(0, 900_000);
        t.add(1, 10);
        t.settle_after_load();
        assert_eq!(t.state(0), WblockState::Used);
        assert_eq!(t.state(1), WblockState::Defrag);
        assert_eq!(t.state(2), WblockState::Free);
        assert_eq!(t.free_count(), 2);
        assert_eq!(t.defrag_queue_len(), 1);
        assert_eq!(t.used_bytes(), 900_010);
    }

    #[test]
    fn concurrent_releases_queue_a_block_for_defrag_exactly_once() {
        let t = table();
        let id = t.take_free(u64::MAX).unwrap();
        for _ in 0..4000 {
            t.add(id, 256);
        }
        t.close(id);
        let queued = AtomicU32::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        match t.release(id, 256) {
                            Released::QueuedForDefrag => {
                                queued.fetch_add(1, Ordering::Relaxed);
                            }
                            Released::Freed => {
                                panic!("a block queued for defrag belongs to the defragmenter")
                            }
                            Released::Kept => {}
                        }
                    }
                });
            }
        });
        // Crossing the low-water mark queued it once; emptying it later did
        // not free it behind the defragmenter's back.
        assert_eq!(queued.load(Ordering::Relaxed), 1);
        assert_eq!(t.state(id), WblockState::Defrag);
        assert_eq!(t.in_use_bytes(id), 0);
        assert_eq!(t.take_defrag(Duration::ZERO), Some(id));
        t.finish_defrag(id);
        assert_eq!(t.free_count(), 4);
    }
}
