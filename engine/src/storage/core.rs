//! One core's share of a namespace's storage: its device queues, its open
//! write buffer per device, and its transactions parked on device reads or
//! on a commit.
//!
//! A transaction runs to completion on the core that received it:
//!
//! ```text
//! submit ─► index lookup ─► bins needed? ─no──────────────────────┐
//!                              │ yes: in a RAM block? ─yes─► copy  │
//!                              │ no: read the aligned span, park   │
//!                              ▼ on completion: verify, resume     ▼
//!            ops::apply (policies, generation, TTL, bin ops) ─► read: reply
//!                              │ write / durable delete
//!                              ▼
//!   encode into this core's open buffer under the sprig lock, only if the
//!   index still holds the version we read (else start over); count the new
//!   bytes, release the old ─► reply (or, with commit-to-device, park until
//!   the flush that covers it completes)
//! ```
//!
//! Flushes: an open buffer is written when it is full, when its oldest
//! unwritten record is `flush-max-ms` old, or at every poll with
//! commit-to-device (group commit). The first write of a write block covers
//! all of it (zeros past the data, so no bytes of its previous life remain —
//! unless a volatile drive cache loses part of it at a power cut, which is
//! why every image also carries the block's life, see `record.rs`);
//! later ones cover the new data, and the next record starts on the next
//! minimum-I/O boundary, so a flush never rewrites bytes an earlier flush
//! made durable.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::namespace::{Block, Namespace};
use crate::device::{Completion, IoKind, IoOp, Queue, SubmitError};
use crate::index::{Change, IndexRecord, Location};
use crate::ops::{self, Outcome, ReplyBin};
use crate::record::{self, Record, StoredKey, RBLOCK_BYTES};
use crate::result::ResultCode;

/// A single-record transaction.
#[derive(Clone, Debug)]
pub struct Transaction {
    /// The request, digest included.
    pub request: ops::Request,
    /// A delete that leaves a tombstone on flash, so that no older image of
    /// the record can come back at a cold start.
    pub durable_delete: bool,
}

/// What the client is told.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub result: ResultCode,
    pub generation: u16,
    pub void_time: u32,
    pub bins: Vec<ReplyBin>,
    /// The stored key of a record that was read, when it has one (scan and
    /// batch rows send it back; single-record replies leave it out).
    pub key: Option<StoredKey>,
}

impl Reply {
    fn code(result: ResultCode) -> Reply {
        Reply {
            result,
            generation: 0,
            void_time: 0,
            bins: Vec::new(),
            key: None,
        }
    }
}

/// A transaction restarts from the index when the record changed under it;
/// past this many restarts it answers "key busy" (14).
const MAX_RESTARTS: u8 = 16;
const WRITE_RETRIES: u8 = 3;
/// Completions taken from each device queue per `poll` (SPDK's
/// `max_completions`). Reaping everything at once made a closed loop run in
/// convoys: 32 reads that finished together were all processed before the
/// first new read reached the device, so the device idled for the whole
/// batch and the reads ran at about 18 deep instead of 32. Taking a few at a
/// time lets the caller hand the device new work after each small batch
/// (storage-bench reads: 72k/s at unbounded, 86k/s at 8, against fio's ~95k).
const COMPLETIONS_PER_POLL: usize = 8;
/// Record reads each core keeps a ready buffer for, per device. A random
/// read used to allocate and zero a fresh buffer (and free it after), which
/// showed in profiles of the read path; with SPDK every allocation is a DMA
/// allocation too. The pool is filled when the core starts and bounded: a
/// core with more reads in flight on a device allocates the rest and drops
/// them after use, and a record larger than a pooled buffer gets its own.
const READ_POOL_BUFFERS: usize = 64;
/// Idle write-block buffers kept per device for block writes and defrag
/// reads. Allocating one per flush cost a zeroed megabyte each time (a
/// seventh of the 1 KiB write path's time in storage-bench); the pool fills
/// on demand and keeps at most this many, so its memory stays a few blocks.
const BLOCK_POOL_BUFFERS: usize = 8;
/// Evicted post-write-cache blocks kept per device for reuse as open
/// buffers, instead of allocating and zeroing a new megabyte per block.
const SPARE_BLOCKS: usize = 2;
/// Set names a core remembers (a namespace has at most 1023 sets).
const SET_ID_CACHE: usize = 1024;
/// How long a write block that fell below `defrag-lwm-pct` waits in the
/// defrag queue before defrag copies its live records, as long as free
/// blocks are plentiful (more than twice the writers' reserve).
///
/// A block's records are rewritten in bursts as often as one by one: a
/// client rewriting keys in the order it wrote them (a reload, a cyclic
/// overwrite) empties a block within a few milliseconds of its crossing the
/// low-water mark. Copying its live half out at once moved records that
/// were about to be overwritten anyway: in storage-bench's 1 KiB writes,
/// 0.3 defrag moves per client write (device bytes 1.30 per client byte);
/// with the wait, 0.0004 (1.00), and 10% more writes per second from the
/// CPU no longer spent on the copies. A block that empties while it waits
/// is freed without a read. Under random updates blocks drain slowly and
/// the wait changes nothing (50/50 amplification 1.58 either way). When
/// free blocks run short the wait is skipped: it never holds space that
/// writers need.
const DEFRAG_SETTLE: Duration = Duration::from_millis(50);

/// How a core's defrag runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DefragMode {
    /// Normally: queued blocks settle for [`DEFRAG_SETTLE`] first.
    Running,
    /// `flush_all`: every queued block is taken at once.
    Draining,
    /// Shutdown: defrag under way finishes, none starts.
    Paused,
}
/// Bytes of a pooled read buffer (rounded up to the device's minimum I/O):
/// the aligned span of any record image up to 12 KiB.
const READ_POOL_BUFFER_BYTES: usize = 16 << 10;

struct OpenBuffer {
    wblock: u32,
    /// This opening's life, stamped in every image written into the block
    /// (`record.rs`), so that a cold scan can tell them from images of the
    /// block's earlier lives.
    life: u64,
    block: Arc<Block>,
    /// Bytes holding records (plus padding after each flush).
    used: usize,
    /// Bytes already handed to the device.
    flushed: usize,
    /// When the oldest unflushed record went in.
    dirty_since: Option<Instant>,
    /// The device's free epoch when the oldest unflushed record went in.
    dirty_epoch: Option<u64>,
    writes_in_flight: usize,
}

enum Parked {
    Read {
        txn_id: u64,
        txn: Transaction,
        seen: IndexRecord,
        skip: usize,
        len: usize,
        restarts: u8,
    },
    Write {
        device: usize,
        wblock: u32,
        end: usize,
        bytes: u64,
        op_retries: u8,
        /// The free epoch of the oldest record in the write.
        epoch: Option<u64>,
    },
    /// Defrag's read of a whole write block.
    DefragRead { device: usize, wblock: u32 },
    /// A device cache flush after a commit-to-device write: only its
    /// completion makes the write durable against a power cut.
    Flush {
        device: usize,
        wblock: u32,
        end: usize,
        epoch: Option<u64>,
    },
}

/// A write block being defragmented: its live records were (or are being)
/// copied out; it is freed once every copy is durable.
struct DefragJob {
    device: usize,
    wblock: u32,
    /// Copies not yet on the device: (device, write block, end offset).
    waiting: Vec<(usize, u32, usize)>,
    /// The block has been read and every record offered for moving.
    moved: bool,
    /// A read of the block is in flight.
    reading: bool,
    /// When to try again after running out of room to move records into.
    retry_at: Instant,
}

struct CommitWaiter {
    txn_id: u64,
    device: usize,
    wblock: u32,
    end: usize,
    reply: Reply,
}

/// The storage state of one service core.
pub struct CoreStorage {
    ns: Arc<Namespace>,
    queues: Vec<Box<dyn Queue>>,
    open: Vec<Option<OpenBuffer>>,
    /// Buffers no longer appended to, waiting for their last writes.
    retiring: Vec<(usize, OpenBuffer)>,
    parked: HashMap<u64, Parked>,
    /// Ops a queue refused as full, with their device, retried in order at
    /// the next poll.
    unsubmitted: Vec<(usize, IoOp)>,
    next_token: u64,
    completions: Vec<Completion>,
    ready: Vec<(u64, Reply)>,
    commit_waiters: Vec<CommitWaiter>,
    /// Per device: (write block, bytes durable from its start).
    durable: Vec<HashMap<u32, usize>>,
    backlog_bytes: Vec<u64>,
    defrag_jobs: Vec<DefragJob>,
    /// Per device, published to the namespace: the free epoch of this
    /// core's oldest record not yet durable (`u64::MAX` if none).
    pending_epoch: Vec<Arc<AtomicU64>>,
    /// Per device, the epochs of writes in flight.
    inflight_epochs: Vec<Vec<u64>>,
    /// Writes the device refused repeatedly, resubmitted when due.
    delayed: Vec<(Instant, usize, IoOp)>,
    /// Per device: idle record-read buffers (see `READ_POOL_BUFFERS`), all
    /// of capacity `read_buffer_bytes[d]`.
    read_pool: Vec<Vec<crate::device::IoBuffer>>,
    read_buffer_bytes: Vec<usize>,
    /// Per device: idle write-block-sized buffers for block writes and
    /// defrag reads (see `BLOCK_POOL_BUFFERS`).
    block_pool: Vec<Vec<crate::device::IoBuffer>>,
    /// Per device: RAM of blocks evicted from the post-write cache, reused
    /// for the next open buffers (see `SPARE_BLOCKS`).
    spare_blocks: Vec<Vec<Box<[u8]>>>,
    /// Set names this core has written, with their ids (an id never
    /// changes once given): the index's table sits behind a lock that every
    /// core's every write would otherwise take.
    set_ids: HashMap<Vec<u8>, u16>,
    /// Submitted, not started yet (see [`CoreStorage::submit`]).
    accepted: Vec<(u64, Transaction)>,
    defrag_mode: DefragMode,
    /// Counters bumped on every transaction, added to the namespace's
    /// shared ones once per `poll`.
    hot: HotCounters,
}

/// The namespace counters every transaction bumps. Cores adding to the
/// shared atomics directly made every write pull the same cache lines from
/// the other core (two cores wrote 1.57x, not 2x, one core's 1 KiB writes);
/// each core counts here and publishes once per poll instead.
#[derive(Default)]
struct HotCounters {
    reads: u64,
    writes: u64,
    deletes: u64,
    cache_hits: u64,
    device_reads: u64,
    defrag_moved: u64,
}

impl HotCounters {
    fn publish(&mut self, stats: &crate::storage::namespace::StorageStats) {
        let counters = [
            (&mut self.reads, &stats.reads),
            (&mut self.writes, &stats.writes),
            (&mut self.deletes, &stats.deletes),
            (&mut self.cache_hits, &stats.cache_hits),
            (&mut self.device_reads, &stats.device_reads),
            (&mut self.defrag_moved, &stats.defrag_moved),
        ];
        for (count, shared) in counters {
            if *count > 0 {
                shared.fetch_add(std::mem::take(count), Relaxed);
            }
        }
    }
}

impl Drop for CoreStorage {
    fn drop(&mut self) {
        self.hot.publish(&self.ns.stats);
        for (slot, mine) in self.ns.devices.iter().zip(&self.pending_epoch) {
            crate::storage::namespace::lock(&slot.writers).retain(|w| !Arc::ptr_eq(w, mine));
        }
    }
}

impl CoreStorage {
    pub fn new(ns: Arc<Namespace>) -> Result<CoreStorage, crate::device::SetupError> {
        let mut queues = Vec::with_capacity(ns.devices.len());
        let mut read_pool = Vec::with_capacity(ns.devices.len());
        let mut read_buffer_bytes = Vec::with_capacity(ns.devices.len());
        for slot in &ns.devices {
            queues.push(slot.device.open_queue()?);
            let unit = slot.device.info().min_io_bytes.max(1) as usize;
            let bytes = READ_POOL_BUFFER_BYTES.div_ceil(unit) * unit;
            let pool = (0..READ_POOL_BUFFERS)
                .map(|_| slot.device.alloc_buffer(bytes))
                .collect::<Result<Vec<_>, _>>()?;
            read_pool.push(pool);
            read_buffer_bytes.push(bytes);
        }
        let n = ns.devices.len();
        let pending_epoch: Vec<Arc<AtomicU64>> =
            (0..n).map(|_| Arc::new(AtomicU64::new(u64::MAX))).collect();
        for (slot, mine) in ns.devices.iter().zip(&pending_epoch) {
            crate::storage::namespace::lock(&slot.writers).push(mine.clone());
        }
        Ok(CoreStorage {
            ns,
            queues,
            open: (0..n).map(|_| None).collect(),
            retiring: Vec::new(),
            parked: HashMap::new(),
            unsubmitted: Vec::new(),
            next_token: 1,
            completions: Vec::new(),
            ready: Vec::new(),
            commit_waiters: Vec::new(),
            durable: (0..n).map(|_| HashMap::new()).collect(),
            backlog_bytes: vec![0; n],
            defrag_jobs: Vec::new(),
            pending_epoch,
            inflight_epochs: vec![Vec::new(); n],
            delayed: Vec::new(),
            read_pool,
            read_buffer_bytes,
            block_pool: (0..n).map(|_| Vec::new()).collect(),
            spare_blocks: (0..n).map(|_| Vec::new()).collect(),
            set_ids: HashMap::new(),
            accepted: Vec::new(),
            defrag_mode: DefragMode::Running,
            hot: HotCounters::default(),
        })
    }

    pub fn namespace(&self) -> &Arc<Namespace> {
        &self.ns
    }

    /// Bytes this core has handed to its devices and not yet seen written
    /// (the write backlog that `max-write-cache` bounds), over all devices.
    pub fn write_backlog_bytes(&self) -> u64 {
        self.backlog_bytes.iter().sum()
    }

    /// Accepts a transaction; it starts at the next [`CoreStorage::poll`],
    /// whose replies include it if it needed no device I/O.
    ///
    /// Why not start it here: its index lookup misses the cache twice (the
    /// sprig, then the tree node: random digests over megabytes), which
    /// was a fifth of the 1 KiB write path. Accepted transactions are
    /// started together in `poll`, after a hint for every sprig here and
    /// for every node at the start of `poll`, so that their misses overlap
    /// instead of following one another. A reactor submits what one turn
    /// of its loop read and then polls, so nothing waits longer than that.
    pub fn submit(&mut self, txn_id: u64, txn: Transaction) {
        self.ns.index.prefetch_sprig(&txn.request.digest);
        self.accepted.push((txn_id, txn));
    }

    /// Starts the accepted transactions (see [`CoreStorage::submit`]).
    fn start_accepted(&mut self) {
        if self.accepted.is_empty() {
            return;
        }
        let mut batch = std::mem::take(&mut self.accepted);
        for (_, txn) in &batch {
            self.ns.index.prefetch_entry(&txn.request.digest);
        }
        for (txn_id, txn) in batch.drain(..) {
            self.start(txn_id, txn, 0);
        }
        // Keep the allocation (nothing submits while this runs).
        if self.accepted.is_empty() {
            self.accepted = batch;
        }
    }

    /// Drives device completions and flush timers; moves finished replies
    /// into `out`. Never blocks. Returns whether anything happened.
    pub fn poll(&mut self, out: &mut Vec<(u64, Reply)>) -> bool {
        let mut progressed = !self.ready.is_empty() || !self.accepted.is_empty();
        self.start_accepted();
        self.retry_delayed();
        self.retry_unsubmitted();
        self.flush_due();
        for d in 0..self.queues.len() {
            self.completions.clear();
            let mut completions = std::mem::take(&mut self.completions);
            if self.queues[d].poll(&mut completions, COMPLETIONS_PER_POLL) > 0 {
                progressed = true;
            }
            for c in completions.drain(..) {
                self.complete(c);
            }
            self.completions = completions;
        }
        self.defrag_tick();
        self.hot.publish(&self.ns.stats);
        out.append(&mut self.ready);
        progressed
    }

    /// Transactions and writes not finished yet.
    pub fn busy(&self) -> bool {
        !self.accepted.is_empty()
            || !self.parked.is_empty()
            || !self.unsubmitted.is_empty()
            || !self.commit_waiters.is_empty()
            || !self.defrag_jobs.is_empty()
            || !self.delayed.is_empty()
    }

    /// Runs one transaction to its reply, polling (tests and tools; a
    /// reactor calls `submit` and `poll` instead).
    pub fn run(&mut self, txn: Transaction) -> Reply {
        let id = self.next_token;
        self.submit(id, txn);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut out = Vec::new();
        loop {
            self.poll(&mut out);
            if let Some(i) = out.iter().position(|(t, _)| *t == id) {
                return out.swap_remove(i).1;
            }
            if Instant::now() > deadline {
                return Reply::code(ResultCode::Timeout);
            }
            std::thread::yield_now();
        }
    }

    /// Writes every open buffer and waits for all device work, defrag
    /// included (tests and tools that want a quiet device).
    pub fn flush_all(&mut self, timeout: Duration) -> Result<(), String> {
        self.flush_everything(timeout, true)
    }

    /// Writes every open buffer and waits for client writes and for defrag
    /// already under way, but starts no further defrag: the daemon's clean
    /// shutdown. Blocks still queued for defrag stay queued; the next start
    /// queues them again from its walk. (Draining the whole queue could take
    /// a `flush-max-ms` per block.)
    pub fn flush_for_shutdown(&mut self, timeout: Duration) -> Result<(), String> {
        self.flush_everything(timeout, false)
    }

    fn flush_everything(&mut self, timeout: Duration, drain_defrag: bool) -> Result<(), String> {
        self.defrag_mode = if drain_defrag {
            DefragMode::Draining
        } else {
            DefragMode::Paused
        };
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        // Open buffers are written now; during a shutdown also the ones
        // the defrag under way fills later (see below).
        for d in 0..self.open.len() {
            if let Some(buffer) = self.open[d].take() {
                self.retiring.push((d, buffer));
            }
        }
        let result = loop {
            if self.defrag_mode == DefragMode::Paused {
                // Jobs neither reading nor moving (not begun, or waiting
                // for room) go back to the queue.
                let ns = Arc::clone(&self.ns);
                self.defrag_jobs.retain(|job| {
                    let started = job.reading || job.moved;
                    if !started {
                        ns.devices[job.device].wblocks.requeue_defrag(job.wblock);
                    }
                    started
                });
                // Copies of the defrag under way land in open buffers:
                // write them at once rather than a flush-max-ms later.
                for d in 0..self.open.len() {
                    if let Some(buffer) = self.open[d].take() {
                        self.retiring.push((d, buffer));
                    }
                }
            }
            if self.defrag_mode != DefragMode::Paused && !self.defrag_jobs.is_empty() {
                // Draining defrag: its copies land in open buffers, which
                // would otherwise wait `flush-max-ms` (each) to be written;
                // a flush writes them now without retiring the block.
                for d in 0..self.open.len() {
                    if let Some(mut buffer) = self.open[d].take() {
                        self.flush(d, &mut buffer);
                        self.open[d] = Some(buffer);
                    }
                }
            }
            self.settle_retiring();
            if !self.busy() && self.retiring.is_empty() {
                break Ok(());
            }
            self.poll(&mut out);
            if Instant::now() > deadline {
                break Err(format!(
                    "{} device operations still pending after {timeout:?}",
                    self.parked.len()
                ));
            }
            std::thread::yield_now();
        };
        self.defrag_mode = DefragMode::Running;
        self.ready.extend(out);
        result
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    fn reply(&mut self, txn_id: u64, reply: Reply) {
        self.ready.push((txn_id, reply));
    }

    // ---- transactions ---------------------------------------------------

    fn start(&mut self, txn_id: u64, txn: Transaction, restarts: u8) {
        if restarts > MAX_RESTARTS {
            return self.reply(txn_id, Reply::code(ResultCode::KeyBusy));
        }
        if self.backlog_refuses(&txn) {
            self.ns.stats.overloads.fetch_add(1, Relaxed);
            return self.reply(txn_id, Reply::code(ResultCode::DeviceOverload));
        }
        let seen = self.ns.index.get(&txn.request.digest);
        let Some(seen) = seen.filter(|r| needs_bins(&txn) && !r.tombstone) else {
            let loaded = seen.map(|r| self.record_from_meta(&r));
            return self.finish(txn_id, txn, loaded, seen, restarts);
        };
        let slot = &self.ns.devices[seen.location.device as usize];
        let Some(wblock) = slot.wblocks.wblock_of(seen.location.rblock_id) else {
            return self.reply(txn_id, Reply::code(ResultCode::ServerError));
        };
        let offset = seen.location.rblock_id * RBLOCK_BYTES as u64;
        let in_block = (offset - slot.wblocks.offset_of(wblock)) as usize;
        let len = seen.size_bytes() as usize;
        if let Some(block) = slot.block(wblock) {
            self.hot.cache_hits += 1;
            let decoded = {
                let bytes = block.bytes.read().unwrap_or_else(|e| e.into_inner());
                record::decode_cached(&bytes[in_block..in_block + len], Some(&txn.request.digest))
            };
            return self.loaded(txn_id, txn, seen, decoded.ok(), restarts);
        }
        // Read the smallest aligned span that covers the record.
        let unit = u64::from(slot.device.info().min_io_bytes);
        let start = offset / unit * unit;
        let end = (offset + len as u64).div_ceil(unit) * unit;
        let device = seen.location.device as usize;
        let buffer = match self.read_buffer(device, (end - start) as usize) {
            Ok(b) => b,
            Err(_) => return self.reply(txn_id, Reply::code(ResultCode::ServerError)),
        };
        let token = self.token();
        self.hot.device_reads += 1;
        self.parked.insert(
            token,
            Parked::Read {
                txn_id,
                txn,
                seen,
                skip: (offset - start) as usize,
                len,
                restarts,
            },
        );
        if let Err((op, _)) = self.submit_io(
            device,
            IoOp {
                kind: IoKind::Read,
                offset: start,
                buffer,
                token,
            },
        ) {
            // The index points outside the device: corrupt metadata.
            self.recycle_read_buffer(device, op.buffer);
            self.parked.remove(&token);
            self.reply(txn_id, Reply::code(ResultCode::ServerError));
        }
    }

    /// A buffer for a record read of `len` bytes on device `d`: from the
    /// pool if one is idle and large enough, else a new one.
    fn read_buffer(
        &mut self,
        d: usize,
        len: usize,
    ) -> Result<crate::device::IoBuffer, crate::device::SetupError> {
        if len <= self.read_buffer_bytes[d] {
            if let Some(mut buffer) = self.read_pool[d].pop() {
                // Not zeroed: a successful read overwrites all `len` bytes,
                // and a failed one is never decoded.
                buffer.set_len(len);
                return Ok(buffer);
            }
        }
        self.ns.devices[d].device.alloc_buffer(len)
    }

    /// A buffer of `len` bytes (at most a write block) for a block write or
    /// a defrag read on device `d`: a pooled one if idle, else a new one.
    /// Its bytes are stale, not zeroed: every caller overwrites all `len`.
    fn block_buffer(
        &mut self,
        d: usize,
        len: usize,
    ) -> Result<crate::device::IoBuffer, crate::device::SetupError> {
        if let Some(mut buffer) = self.block_pool[d].pop() {
            if len <= buffer.capacity() {
                buffer.set_len(len);
                return Ok(buffer);
            }
        }
        let wb_bytes = self.ns.config.write_block_bytes as usize;
        let mut buffer = self.ns.devices[d].device.alloc_buffer(wb_bytes.max(len))?;
        buffer.set_len(len);
        Ok(buffer)
    }

    /// Returns a block write's or defrag read's buffer to the pool, while
    /// the pool is below its bound.
    fn recycle_block_buffer(&mut self, d: usize, buffer: crate::device::IoBuffer) {
        if buffer.capacity() == self.ns.config.write_block_bytes as usize
            && self.block_pool[d].len() < BLOCK_POOL_BUFFERS
        {
            self.block_pool[d].push(buffer);
        }
    }

    /// Returns a record read's buffer to the pool (a pooled size, while the
    /// pool is below its bound), or drops it.
    fn recycle_read_buffer(&mut self, d: usize, buffer: crate::device::IoBuffer) {
        if buffer.capacity() == self.read_buffer_bytes[d]
            && self.read_pool[d].len() < READ_POOL_BUFFERS
        {
            self.read_pool[d].push(buffer);
        }
    }

    /// A record's bins arrived (or failed to decode).
    fn loaded(
        &mut self,
        txn_id: u64,
        txn: Transaction,
        seen: IndexRecord,
        image: Option<Record>,
        restarts: u8,
    ) {
        // A write re-checks the entry under the sprig lock when it commits
        // (and starts over if it changed), so a decoded image needs no check
        // here; a read replies with what it read, so it must re-check now.
        let checked_later = image.is_some() && txn.request.writes();
        let still = if checked_later {
            Some(seen)
        } else {
            self.ns.index.get(&txn.request.digest)
        };
        if still.map(|r| (r.location, r.generation)) != Some((seen.location, seen.generation)) {
            // Moved (defrag) or rewritten meanwhile: the bytes we read may be
            // another record's. Start again from the index.
            self.ns.stats.read_retries.fetch_add(1, Relaxed);
            return self.start(txn_id, txn, restarts + 1);
        }
        match image {
            Some(record) => self.finish(txn_id, txn, Some(record), Some(seen), restarts),
            None => {
                self.ns.stats.checksum_failures.fetch_add(1, Relaxed);
                self.reply(txn_id, Reply::code(ResultCode::ServerError));
            }
        }
    }

    /// A record known only from its index entry (no bins loaded).
    fn record_from_meta(&self, r: &IndexRecord) -> Record {
        Record {
            digest: r.digest,
            generation: r.generation,
            void_time: r.void_time,
            last_update_ms: r.last_update_ms,
            set_name: self
                .ns
                .index
                .set_name(r.set_id)
                .unwrap_or_default()
                .into_bytes(),
            key: None,
            tombstone: r.tombstone,
            bins: Vec::new(),
        }
    }

    fn finish(
        &mut self,
        txn_id: u64,
        txn: Transaction,
        loaded: Option<Record>,
        seen: Option<IndexRecord>,
        restarts: u8,
    ) {
        let clock = (self.ns.clock)();
        let outcome = match ops::apply(
            loaded.as_ref(),
            &txn.request,
            clock,
            self.ns.config.default_ttl_s,
        ) {
            Ok(o) => o,
            Err(code) => {
                let mut reply = Reply::code(code);
                if let Some(r) = loaded.as_ref().filter(|r| !r.tombstone) {
                    reply.generation = r.generation;
                }
                return self.reply(txn_id, reply);
            }
        };
        match outcome {
            Outcome::Read {
                bins,
                generation,
                void_time,
            } => {
                self.hot.reads += 1;
                let key = loaded.and_then(|r| r.key);
                self.reply(
                    txn_id,
                    Reply {
                        result: ResultCode::Ok,
                        generation,
                        void_time,
                        bins,
                        key,
                    },
                )
            }
            Outcome::Write { record, bins } => {
                let reply = Reply {
                    result: ResultCode::Ok,
                    generation: record.generation,
                    void_time: record.void_time,
                    bins,
                    key: None,
                };
                self.write(txn_id, txn, record, seen, reply, restarts)
            }
            Outcome::Delete { bins, generation } => {
                let reply = Reply {
                    result: ResultCode::Ok,
                    generation,
                    void_time: 0,
                    bins,
                    key: None,
                };
                if txn.durable_delete {
                    let tombstone = Record {
                        digest: txn.request.digest,
                        generation: ops::next_generation(seen.map_or(0, |s| s.generation)),
                        void_time: 0,
                        last_update_ms: clock.now_ms,
                        set_name: loaded.map(|r| r.set_name).unwrap_or_default(),
                        key: None,
                        tombstone: true,
                        bins: Vec::new(),
                    };
                    self.write(txn_id, txn, tombstone, seen, reply, restarts)
                } else {
                    self.delete(txn_id, txn, seen, reply, restarts)
                }
            }
        }
    }

    fn delete(
        &mut self,
        txn_id: u64,
        txn: Transaction,
        seen: Option<IndexRecord>,
        reply: Reply,
        restarts: u8,
    ) {
        let Some(seen) = seen else {
            return self.reply(txn_id, reply);
        };
        // The watermark rises before the entry goes: a core re-creating the
        // key right after the removal must stamp its image later than the
        // one left on flash, or a cold start could rank the deleted image
        // first. (Raising it for a removal that then fails is harmless.)
        self.ns.note_removed(seen.last_update_ms);
        let removed = self.ns.index.modify(&txn.request.digest, |cur| {
            if (cur.location, cur.generation) != (seen.location, seen.generation) {
                (Change::Keep, None)
            } else {
                (Change::Remove, Some(*cur))
            }
        });
        match removed {
            Some(Some(old)) => {
                self.release(&old);
                self.hot.deletes += 1;
                self.reply(txn_id, reply);
            }
            // Changed or removed by another core meanwhile.
            _ => self.start(txn_id, txn, restarts + 1),
        }
    }

    fn write(
        &mut self,
        txn_id: u64,
        txn: Transaction,
        mut record: Record,
        seen: Option<IndexRecord>,
        reply: Reply,
        restarts: u8,
    ) {
        // A new image must rank above every older image of the key at a cold
        // start: strictly later than the stored one, or than any removed one.
        record.last_update_ms = record
            .last_update_ms
            .max(self.ns.min_next_lut(seen.as_ref()));
        let len = record.image_len();
        let wb_bytes = self.ns.config.write_block_bytes as usize;
        if len > wb_bytes {
            return self.reply(txn_id, Reply::code(ResultCode::RecordTooBig));
        }
        let set_id = match self.set_ids.get(record.set_name.as_slice()) {
            Some(&id) => id,
            None => match std::str::from_utf8(&record.set_name) {
                Ok("") => 0,
                Ok(name) => match self.ns.index.set_id(name) {
                    Ok(id) => {
                        if self.set_ids.len() < SET_ID_CACHE {
                            self.set_ids.insert(record.set_name.clone(), id);
                        }
                        id
                    }
                    Err(_) => return self.reply(txn_id, Reply::code(ResultCode::ParameterError)),
                },
                Err(_) => return self.reply(txn_id, Reply::code(ResultCode::ParameterError)),
            },
        };
        let d = self.ns.device_for(&txn.request.digest);
        if self.ns.config.commit_to_device && self.delayed.iter().any(|(_, dd, _)| *dd == d) {
            // The device is refusing writes and this write would wait behind
            // the failing one: refuse it at once (retryable). Without
            // commit-to-device, writes are acknowledged from RAM and the
            // bounded write backlog turns a dead device into overload.
            self.ns.stats.overloads.fetch_add(1, Relaxed);
            return self.reply(txn_id, Reply::code(ResultCode::DeviceOverload));
        }
        if let Err(code) = self.make_room(d, len, false) {
            return self.reply(txn_id, Reply::code(code));
        }
        let buffer = self.open[d].as_ref().expect("make_room opened a buffer");
        let (wblock, at, block, life) = (
            buffer.wblock,
            buffer.used,
            buffer.block.clone(),
            buffer.life,
        );
        let slot = &self.ns.devices[d];
        let rblock_id = (slot.wblocks.offset_of(wblock) + at as u64) / RBLOCK_BYTES as u64;
        let meta = IndexRecord {
            digest: txn.request.digest,
            location: Location {
                device: d as u8,
                rblock_id,
                n_rblocks: (len / RBLOCK_BYTES) as u32,
            },
            generation: record.generation,
            void_time: record.void_time,
            last_update_ms: record.last_update_ms,
            set_id,
            tombstone: record.tombstone,
            key_stored: record.key.is_some(),
        };
        // Count the bytes before the index can point at them: another core
        // may replace the record (and release them) the moment it does.
        slot.wblocks.add(wblock, len as u32);
        let outcome = self.ns.index.update(&txn.request.digest, |cur| {
            if cur.map(|c| (c.location, c.generation)) != seen.map(|s| (s.location, s.generation)) {
                return (Change::Keep, Err(()));
            }
            let mut bytes = block.bytes.write().unwrap_or_else(|e| e.into_inner());
            match record.encode_into(&mut bytes[at..at + len], life) {
                Ok(()) => (Change::Put(meta), Ok(cur.copied())),
                Err(_) => (Change::Keep, Err(())),
            }
        });
        match outcome {
            Ok(Ok(old)) => {
                self.note_append(d);
                let buffer = self.open[d].as_mut().expect("open buffer");
                buffer.used += len;
                buffer.dirty_since.get_or_insert_with(Instant::now);
                if let Some(old) = old {
                    self.release(&old);
                }
                if record.tombstone {
                    self.hot.deletes += 1;
                } else {
                    self.hot.writes += 1;
                }
                if self.ns.config.commit_to_device {
                    let end = at + len;
                    self.commit_waiters.push(CommitWaiter {
                        txn_id,
                        device: d,
                        wblock,
                        end,
                        reply,
                    });
                } else {
                    self.reply(txn_id, reply);
                }
            }
            Ok(Err(())) => {
                // The record changed since we read it: start over.
                slot.wblocks.release(wblock, len as u32);
                self.start(txn_id, txn, restarts + 1);
            }
            Err(_) => {
                slot.wblocks.release(wblock, len as u32);
                self.reply(txn_id, Reply::code(ResultCode::ServerFull));
            }
        }
    }

    /// Releases the bytes of a replaced or removed record's old image.
    fn release(&self, old: &IndexRecord) {
        let slot = &self.ns.devices[old.location.device as usize];
        if let Some(wb) = slot.wblocks.wblock_of(old.location.rblock_id) {
            slot.wblocks.release(wb, old.size_bytes() as u32);
        }
    }

    // ---- write buffers --------------------------------------------------

    /// Makes sure device `d`'s open buffer has `len` bytes free.
    /// Makes sure this core's open buffer for device `d` has room for
    /// `len` bytes, opening a new write block if needed. Client writes
    /// (`for_defrag` false) leave the last few free blocks to defrag: defrag
    /// needs a block to move records into before it frees any, so if client
    /// writes took every free block, light blocks could never be freed and
    /// writes would be refused for good.
    /// Whether `txn` writes to flash and would be refused by
    /// [`Self::make_room`] for the write backlog anyway: the backlog has no
    /// room for another block and the open buffer not even for the
    /// request's own bytes. Checked before the index lookup and the load of
    /// the stored record, so that a client retrying against a saturated
    /// device costs next to nothing: storage-bench's writers spent a
    /// quarter of their CPU loading records only to refuse the write.
    /// (`make_room` still decides for the writes this lets through.)
    fn backlog_refuses(&self, txn: &Transaction) -> bool {
        let r = &txn.request;
        let writes_flash = if r.delete {
            txn.durable_delete
        } else {
            r.ops.iter().any(|op| op.kind.is_write())
        };
        if !writes_flash {
            return false;
        }
        let d = self.ns.device_for(&r.digest);
        let wb_bytes = self.ns.config.write_block_bytes as usize;
        if !self.backlog_full(d) {
            return false;
        }
        let request_bytes = record::IMAGE_HEADER_BYTES
            + r.ops
                .iter()
                .filter_map(|op| op.value.as_ref())
                .map(|v| v.wire_len())
                .sum::<usize>();
        self.open[d]
            .as_ref()
            .is_none_or(|b| b.used + request_bytes > wb_bytes)
    }

    /// Whether device `d`'s write backlog has no room for another block.
    fn backlog_full(&self, d: usize) -> bool {
        self.backlog_bytes[d] + u64::from(self.ns.config.write_block_bytes)
            > self.ns.config.max_write_cache_bytes
    }

    fn make_room(&mut self, d: usize, len: usize, for_defrag: bool) -> Result<(), ResultCode> {
        let wb_bytes = self.ns.config.write_block_bytes as usize;
        if self.open[d]
            .as_ref()
            .is_some_and(|b| b.used + len <= wb_bytes)
        {
            return Ok(());
        }
        if self.backlog_full(d) {
            self.ns.stats.overloads.fetch_add(1, Relaxed);
            return Err(ResultCode::DeviceOverload);
        }
        let slot = &self.ns.devices[d];
        let capacity = u64::from(slot.wblocks.count()) * u64::from(slot.wblocks.wblock_bytes());
        if slot.wblocks.used_bytes() * 100 >= capacity * u64::from(self.ns.config.stop_writes_pct) {
            self.ns.stats.stop_writes.fetch_add(1, Relaxed);
            return Err(ResultCode::ServerFull);
        }
        // Retire the full buffer; `settle_retiring` writes what is left.
        if let Some(buffer) = self.open[d].take() {
            // Readers of a closed block (defrag, the cache) parse it to its
            // end: zero what recycled memory left past the last record.
            buffer
                .block
                .bytes
                .write()
                .unwrap_or_else(|e| e.into_inner())[buffer.used..]
                .fill(0);
            self.retiring.push((d, buffer));
            self.settle_retiring();
        }
        let slot = &self.ns.devices[d];
        if !for_defrag && slot.wblocks.free_count() <= self.defrag_reserve_blocks(d) {
            // Below stop-writes-pct the space exists, spread over blocks
            // none of which is under the low-water mark: defragment the
            // lightest, if moving it frees at least a tenth of a block.
            let worth_moving = (wb_bytes as u64 * 9 / 10) as u32;
            if slot.wblocks.defrag_queue_len() == 0
                && slot.wblocks.queue_lightest(worth_moving).is_some()
            {
                self.ns.stats.emergency_defrags.fetch_add(1, Relaxed);
            }
            if slot.wblocks.defrag_queue_len() > 0 || self.backlog_bytes[d] > 0 {
                // Defrag (or writes in flight) will free blocks: retry.
                self.ns.stats.overloads.fetch_add(1, Relaxed);
                self.ns.stats.free_block_waits.fetch_add(1, Relaxed);
                return Err(ResultCode::DeviceOverload);
            }
            self.ns.stats.stop_writes.fetch_add(1, Relaxed);
            return Err(ResultCode::ServerFull);
        }
        let Some(life) = slot.draw_life() else {
            return Err(ResultCode::ServerError);
        };
        let Some(wblock) = slot.wblocks.take_free(slot.durable_horizon()) else {
            if slot.wblocks.free_count() > 0
                || self.backlog_bytes[d] > 0
                || slot.wblocks.defrag_queue_len() > 0
            {
                // Free blocks exist but still hold the last durable images
                // of records whose new copies are not on the device yet; or
                // none is free only for now: this core's writes are in
                // flight, or light blocks wait for defrag (a cyclic
                // overwrite empties blocks faster than defrag, which yields
                // to client writes, frees them). Retryable, not "server
                // full" — storage-bench's 1 KiB phase met it once its loop
                // got faster. Below stop-writes-pct the space is there.
                self.ns.stats.overloads.fetch_add(1, Relaxed);
                self.ns.stats.free_block_waits.fetch_add(1, Relaxed);
                return Err(ResultCode::DeviceOverload);
            }
            self.ns.stats.stop_writes.fetch_add(1, Relaxed);
            return Err(ResultCode::ServerFull);
        };
        // A recycled buffer holds a previous block's bytes. Only `[0, used)`
        // of an open block is ever read or written out: `flush` copies up to
        // `used` and zeroes the rest of the write, and `retire` zeroes the
        // tail before the block is shared as a cached, closed block.
        let bytes = match self.spare_blocks[d].pop() {
            Some(bytes) if bytes.len() == wb_bytes => bytes,
            _ => vec![0u8; wb_bytes].into_boxed_slice(),
        };
        let block = Arc::new(Block {
            bytes: RwLock::new(bytes),
        });
        slot.set_block(wblock, Some(block.clone()));
        self.durable[d].remove(&wblock);
        self.open[d] = Some(OpenBuffer {
            wblock,
            life,
            block,
            used: 0,
            flushed: 0,
            dirty_since: None,
            dirty_epoch: None,
            writes_in_flight: 0,
        });
        Ok(())
    }

    /// Free blocks of device `d` that client writes leave to defrag: one
    /// per core writing to the device (each defragments into its own open
    /// buffer), plus one — but never more than a sixteenth of the device,
    /// so that a device of a handful of blocks (tests) stays writable.
    fn defrag_reserve_blocks(&self, d: usize) -> usize {
        let slot = &self.ns.devices[d];
        let cores = crate::storage::namespace::lock(&slot.writers).len();
        let count = slot.wblocks.count() as usize;
        // At least one block even on a device of fewer than 16 (a reserve of
        // zero wedged such a device for good once it filled with light
        // blocks: `writes_to_a_device_of_fewer_than_16_blocks_never_wedge`),
        // and never all of them.
        (cores + 1)
            .min((count / 16).max(1))
            .min(count.saturating_sub(1))
    }

    /// Flushes the open buffers that are due.
    fn flush_due(&mut self) {
        let max_age = Duration::from_millis(self.ns.config.flush_max_ms);
        let commit = self.ns.config.commit_to_device;
        for d in 0..self.open.len() {
            let due = self.open[d].as_ref().is_some_and(|b| {
                b.used > b.flushed
                    && (commit || b.dirty_since.is_some_and(|t| t.elapsed() >= max_age))
            });
            if due {
                if let Some(mut buffer) = self.open[d].take() {
                    self.flush(d, &mut buffer);
                    self.open[d] = Some(buffer);
                }
            }
        }
        self.settle_retiring();
    }

    /// Submits a buffer's unwritten bytes, unless a write of it is still in
    /// flight: two writes of one block in flight could land in either order,
    /// and the first (whole-block) write would then zero newer records. The
    /// next flush picks up whatever accumulated meanwhile (group commit).
    /// The first write of a block covers all of it; the next record starts
    /// on a fresh I/O unit.
    fn flush(&mut self, d: usize, buffer: &mut OpenBuffer) {
        if buffer.writes_in_flight > 0 || buffer.used <= buffer.flushed {
            return;
        }
        let unit = self.ns.devices[d].device.info().min_io_bytes as usize;
        let wb_bytes = self.ns.config.write_block_bytes as usize;
        let end = buffer.used.div_ceil(unit) * unit;
        let (start, write_end) = if buffer.flushed == 0 {
            (0, wb_bytes)
        } else {
            (buffer.flushed, end)
        };
        let ns = Arc::clone(&self.ns);
        let slot = &ns.devices[d];
        let mut io = match self.block_buffer(d, write_end - start) {
            Ok(b) => b,
            Err(_) => return self.fail_commits(d, buffer.wblock),
        };
        // Only the records are copied; the rest of the write (the padding to
        // the next I/O unit, and all the rest of a first, whole-block write,
        // which erases the block's previous life) is zeroed in place: the
        // open buffer may be recycled memory with stale bytes past `used`.
        let data_end = buffer.used.min(write_end);
        io[..data_end - start].copy_from_slice(
            &buffer.block.bytes.read().unwrap_or_else(|e| e.into_inner())[start..data_end],
        );
        io[data_end - start..].fill(0);
        if end > buffer.used {
            // The next record starts at `end`: the padding must read as
            // zeros in RAM too (defrag and the cache parse closed blocks).
            buffer
                .block
                .bytes
                .write()
                .unwrap_or_else(|e| e.into_inner())[buffer.used..end]
                .fill(0);
        }
        buffer.flushed = end;
        buffer.used = end;
        buffer.dirty_since = None;
        buffer.writes_in_flight += 1;
        let epoch = buffer.dirty_epoch.take();
        if let Some(e) = epoch {
            self.inflight_epochs[d].push(e);
        }
        let token = self.token();
        let bytes = (write_end - start) as u64;
        self.backlog_bytes[d] += bytes;
        let wblock = buffer.wblock;
        self.parked.insert(
            token,
            Parked::Write {
                device: d,
                wblock,
                end,
                bytes,
                op_retries: 0,
                epoch,
            },
        );
        self.ns.stats.device_writes.fetch_add(1, Relaxed);
        self.ns.stats.device_write_bytes.fetch_add(bytes, Relaxed);
        let offset = slot.wblocks.offset_of(wblock) + start as u64;
        if let Err((_, e)) = self.submit_io(
            d,
            IoOp {
                kind: IoKind::Write,
                offset,
                buffer: io,
                token,
            },
        ) {
            // Our own write out of the device's range: a bug, but never
            // acknowledge what is not on the device.
            debug_assert!(false, "flush produced an invalid write: {e}");
            self.parked.remove(&token);
            self.backlog_bytes[d] -= bytes;
            buffer.writes_in_flight -= 1;
            self.fail_commits(d, wblock);
            self.settle_epoch(d, epoch);
        }
    }

    /// Retired buffers: write what is left; once their writes are all done
    /// their blocks become `Used` (or free) and stay readable from the
    /// post-write cache.
    fn settle_retiring(&mut self) {
        let mut i = 0;
        while i < self.retiring.len() {
            let (d, mut buffer) = self.retiring.swap_remove(i);
            if buffer.used > buffer.flushed {
                self.flush(d, &mut buffer);
            }
            if buffer.writes_in_flight == 0 && buffer.used <= buffer.flushed {
                let slot = &self.ns.devices[d];
                if let Some(bytes) = slot.cache_retired(buffer.wblock, &buffer.block) {
                    if self.spare_blocks[d].len() < SPARE_BLOCKS {
                        self.spare_blocks[d].push(bytes);
                    }
                }
                slot.wblocks.close(buffer.wblock);
                self.durable[d].remove(&buffer.wblock);
            } else {
                let last = self.retiring.len();
                self.retiring.push((d, buffer));
                self.retiring.swap(i, last);
                i += 1;
            }
        }
    }

    /// Submits `op` on device `d`'s queue, or keeps it for the next poll
    /// while the queue is full (in order). An op the device can never take
    /// comes back.
    fn submit_io(
        &mut self,
        d: usize,
        op: IoOp,
    ) -> Result<(), (IoOp, Box<crate::device::DeviceError>)> {
        if !self.unsubmitted.is_empty() {
            self.unsubmitted.push((d, op));
            return Ok(());
        }
        match self.queues[d].submit(op) {
            Ok(()) => Ok(()),
            Err(SubmitError::Full(op)) => {
                self.unsubmitted.push((d, op));
                Ok(())
            }
            Err(SubmitError::Invalid(op, e)) => Err((op, e)),
        }
    }

    fn retry_delayed(&mut self) {
        if self.delayed.is_empty() {
            // The common case, on every poll: no clock read.
            return;
        }
        let now = Instant::now();
        let mut i = 0;
        while i < self.delayed.len() {
            if self.delayed[i].0 <= now {
                let (_, d, op) = self.delayed.swap_remove(i);
                if let Err((op, e)) = self.submit_io(d, op) {
                    self.complete(op.into_failed(*e));
                }
            } else {
                i += 1;
            }
        }
    }

    fn retry_unsubmitted(&mut self) {
        let pending = std::mem::take(&mut self.unsubmitted);
        let mut full = false;
        for (d, op) in pending {
            if full {
                self.unsubmitted.push((d, op));
                continue;
            }
            match self.queues[d].submit(op) {
                Ok(()) => {}
                Err(SubmitError::Full(op)) => {
                    full = true;
                    self.unsubmitted.push((d, op));
                }
                Err(SubmitError::Invalid(op, e)) => self.complete(op.into_failed(*e)),
            }
        }
    }

    fn complete(&mut self, c: Completion) {
        let Some(parked) = self.parked.remove(&c.token) else {
            return;
        };
        match parked {
            Parked::Read {
                txn_id,
                txn,
                seen,
                skip,
                len,
                restarts,
            } => {
                let image = match c.result {
                    Ok(()) => {
                        record::decode(&c.buffer[skip..skip + len], Some(&txn.request.digest)).ok()
                    }
                    Err(_) => None,
                };
                self.recycle_read_buffer(seen.location.device as usize, c.buffer);
                match c.result {
                    Ok(()) => self.loaded(txn_id, txn, seen, image, restarts),
                    Err(_) => self.reply(txn_id, Reply::code(ResultCode::ServerError)),
                }
            }
            Parked::Write {
                device,
                wblock,
                end,
                bytes,
                op_retries,
                epoch,
            } => match c.result {
                Ok(()) => {
                    self.backlog_bytes[device] -= bytes;
                    if self.ns.config.commit_to_device {
                        // The drive may hold the data in a volatile cache:
                        // flush it before anyone is told it is safe.
                        let token = self.token();
                        self.parked.insert(
                            token,
                            Parked::Flush {
                                device,
                                wblock,
                                end,
                                epoch,
                            },
                        );
                        let op = IoOp {
                            kind: IoKind::Flush,
                            offset: 0,
                            buffer: c.buffer,
                            token,
                        };
                        if self.submit_io(device, op).is_err() {
                            self.parked.remove(&token);
                            self.written(device, wblock);
                            self.fail_commits(device, wblock);
                            self.settle_epoch(device, epoch);
                        }
                    } else {
                        self.recycle_block_buffer(device, c.buffer);
                        self.made_durable(device, wblock, end);
                        self.settle_epoch(device, epoch);
                    }
                }
                Err(_) if op_retries < WRITE_RETRIES => {
                    let token = self.token();
                    let retry = Parked::Write {
                        device,
                        wblock,
                        end,
                        bytes,
                        op_retries: op_retries + 1,
                        epoch,
                    };
                    self.parked.insert(token, retry);
                    let op = IoOp {
                        kind: IoKind::Write,
                        offset: c.offset,
                        buffer: c.buffer,
                        token,
                    };
                    if self.submit_io(device, op).is_err() {
                        self.parked.remove(&token);
                        self.backlog_bytes[device] -= bytes;
                        self.written(device, wblock);
                        self.fail_commits(device, wblock);
                        self.settle_epoch(device, epoch);
                    }
                }
                Err(_) => {
                    // The device keeps refusing the write. Commit waiters are
                    // told (their outcome is unknown now), but the write is
                    // never abandoned: the block's flushed mark is already
                    // past it, so giving up would let a later write of the
                    // block count this range as durable, and defrag wait
                    // forever. It is retried with backoff until it lands; a
                    // dead device shows up as a growing backlog (overload).
                    self.ns.stats.write_errors.fetch_add(1, Relaxed);
                    self.fail_commits(device, wblock);
                    let token = self.token();
                    let op_retries = op_retries.saturating_add(1);
                    let retry = Parked::Write {
                        device,
                        wblock,
                        end,
                        bytes,
                        op_retries,
                        epoch,
                    };
                    self.parked.insert(token, retry);
                    let backoff = Duration::from_millis(
                        100 << op_retries.saturating_sub(WRITE_RETRIES).min(5),
                    );
                    let op = IoOp {
                        kind: IoKind::Write,
                        offset: c.offset,
                        buffer: c.buffer,
                        token,
                    };
                    self.delayed.push((Instant::now() + backoff, device, op));
                }
            },
            Parked::DefragRead { device, wblock } => match c.result {
                Ok(()) => {
                    self.defrag_block(device, wblock, &c.buffer, true);
                    self.recycle_block_buffer(device, c.buffer);
                }
                // Unreadable now: try again later; the block stays in defrag.
                Err(_) => self.defrag_retry_later(device, wblock),
            },
            Parked::Flush {
                device,
                wblock,
                end,
                epoch,
            } => {
                self.recycle_block_buffer(device, c.buffer);
                match c.result {
                    Ok(()) => self.made_durable(device, wblock, end),
                    Err(_) => {
                        self.written(device, wblock);
                        self.fail_commits(device, wblock);
                    }
                }
                self.settle_epoch(device, epoch);
            }
        }
    }

    /// A record went into device `d`'s open buffer: if it is the buffer's
    /// first unflushed one, note the free epoch so that no block freed from
    /// now on is reused before this record is durable.
    fn note_append(&mut self, d: usize) {
        let buffer = self.open[d].as_mut().expect("open buffer");
        if buffer.dirty_epoch.is_none() {
            let e = self.ns.devices[d].wblocks.epoch();
            buffer.dirty_epoch = Some(e);
            self.pending_epoch[d].fetch_min(e, SeqCst);
        }
    }

    /// A write (with its records' epoch) is durable, or abandoned: publish
    /// this core's new oldest pending epoch for the device.
    fn settle_epoch(&mut self, d: usize, epoch: Option<u64>) {
        if let Some(e) = epoch {
            if let Some(i) = self.inflight_epochs[d].iter().position(|&x| x == e) {
                self.inflight_epochs[d].swap_remove(i);
            }
        }
        let open = self.open[d].as_ref().and_then(|b| b.dirty_epoch);
        let retiring = self
            .retiring
            .iter()
            .filter(|(rd, _)| *rd == d)
            .filter_map(|(_, b)| b.dirty_epoch)
            .min();
        let inflight = self.inflight_epochs[d].iter().copied().min();
        let oldest = [open, retiring, inflight]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(u64::MAX);
        self.pending_epoch[d].store(oldest, SeqCst);
    }

    /// `end` bytes of the block are on the device: wake the commits they cover.
    fn made_durable(&mut self, device: usize, wblock: u32, end: usize) {
        let durable = self.durable[device].entry(wblock).or_insert(0);
        *durable = (*durable).max(end);
        let durable = *durable;
        for job in &mut self.defrag_jobs {
            job.waiting
                .retain(|&(d, w, e)| !(d == device && w == wblock && e <= durable));
        }
        self.written(device, wblock);
        let mut i = 0;
        while i < self.commit_waiters.len() {
            let w = &self.commit_waiters[i];
            if w.device == device && w.wblock == wblock && w.end <= durable {
                let w = self.commit_waiters.swap_remove(i);
                self.ready.push((w.txn_id, w.reply));
            } else {
                i += 1;
            }
        }
    }

    fn written(&mut self, device: usize, wblock: u32) {
        for buffer in self.open[device].iter_mut().chain(
            self.retiring
                .iter_mut()
                .filter(|(d, _)| *d == device)
                .map(|(_, b)| b),
        ) {
            if buffer.wblock == wblock {
                buffer.writes_in_flight -= 1;
                return;
            }
        }
    }

    fn fail_commits(&mut self, device: usize, wblock: u32) {
        let mut i = 0;
        while i < self.commit_waiters.len() {
            if self.commit_waiters[i].device == device && self.commit_waiters[i].wblock == wblock {
                let w = self.commit_waiters.swap_remove(i);
                self.ready
                    .push((w.txn_id, Reply::code(ResultCode::ServerError)));
            } else {
                i += 1;
            }
        }
    }
}

impl CoreStorage {
    // ---- defrag ---------------------------------------------------------

    /// Finishes defrag jobs whose copies are durable and starts the next one
    /// (one at a time per core, and only while the write backlog is low, so
    /// that defrag yields to client writes).
    fn defrag_tick(&mut self) {
        let ns = Arc::clone(&self.ns);
        let mut i = 0;
        while i < self.defrag_jobs.len() {
            let job = &self.defrag_jobs[i];
            if !(job.moved && job.waiting.is_empty()) {
                i += 1;
                continue;
            }
            let job = self.defrag_jobs.swap_remove(i);
            let wblocks = &ns.devices[job.device].wblocks;
            if wblocks.in_use_bytes(job.wblock) == 0 {
                wblocks.finish_defrag(job.wblock);
                ns.stats.defrag_freed.fetch_add(1, Relaxed);
            } else {
                // A live record in it could not be moved (its image did not
                // verify): keep the block, never free live data.
                ns.stats.defrag_stuck.fetch_add(1, Relaxed);
            }
        }
        if self.defrag_mode == DefragMode::Paused {
            return;
        }
        // Jobs interrupted for lack of room keep their copies' bookkeeping
        // and are retried in place: the block is never freed before every
        // copy made from it is durable.
        if !self.defrag_jobs.is_empty() {
            // (The clock is read only here: this runs on every poll.)
            let now = Instant::now();
            for i in 0..self.defrag_jobs.len() {
                let job = &self.defrag_jobs[i];
                if !job.moved && !job.reading && now >= job.retry_at {
                    self.start_defrag_read(i);
                    return;
                }
            }
            return;
        }
        for d in 0..ns.devices.len() {
            if self.backlog_bytes[d] * 2 > ns.config.max_write_cache_bytes {
                continue;
            }
            // While free blocks are plentiful a light block waits in the
            // queue for DEFRAG_SETTLE before its records are copied out.
            let settle = if self.defrag_mode == DefragMode::Running
                && ns.devices[d].wblocks.free_count() > 2 * self.defrag_reserve_blocks(d)
            {
                DEFRAG_SETTLE
            } else {
                Duration::ZERO
            };
            let Some(wblock) = ns.devices[d].wblocks.take_defrag(settle) else {
                continue;
            };
            if ns.devices[d].wblocks.in_use_bytes(wblock) == 0 {
                // Emptied after it was queued: nothing to move, free it now.
                ns.devices[d].wblocks.finish_defrag(wblock);
                ns.stats.defrag_freed.fetch_add(1, Relaxed);
                continue;
            }
            ns.stats.defrag_reads.fetch_add(1, Relaxed);
            self.defrag_jobs.push(DefragJob {
                device: d,
                wblock,
                waiting: Vec::new(),
                moved: false,
                reading: false,
                retry_at: Instant::now(),
            });
            self.start_defrag_read(self.defrag_jobs.len() - 1);
            return;
        }
    }

    /// Gets job `i`'s block: from RAM if cached, else by a device read.
    fn start_defrag_read(&mut self, i: usize) {
        let ns = Arc::clone(&self.ns);
        let (d, wblock) = (self.defrag_jobs[i].device, self.defrag_jobs[i].wblock);
        if let Some(block) = ns.devices[d].block(wblock) {
            // A block in defrag is closed: nobody writes it, so reading it
            // under its lock (instead of copying its megabyte out) blocks
            // no one. Were it freed and reused meanwhile, the reuse would get
            // a new `Block`, not this one.
            let bytes = block.bytes.read().unwrap_or_else(|e| e.into_inner());
            return self.defrag_block(d, wblock, &bytes, false);
        }
        let buffer = match self.block_buffer(d, ns.config.write_block_bytes as usize) {
            Ok(b) => b,
            Err(_) => return self.defrag_retry_later(d, wblock),
        };
        let token = self.token();
        self.parked
            .insert(token, Parked::DefragRead { device: d, wblock });
        let offset = ns.devices[d].wblocks.offset_of(wblock);
        if self
            .submit_io(
                d,
                IoOp {
                    kind: IoKind::Read,
                    offset,
                    buffer,
                    token,
                },
            )
            .is_err()
        {
            self.parked.remove(&token);
            return self.defrag_retry_later(d, wblock);
        }
        self.defrag_jobs[i].reading = true;
    }

    fn defrag_retry_later(&mut self, d: usize, wblock: u32) {
        if let Some(job) = self
            .defrag_jobs
            .iter_mut()
            .find(|j| j.device == d && j.wblock == wblock)
        {
            job.reading = false;
            job.retry_at = Instant::now() + Duration::from_millis(100);
        }
    }

    /// Moves the live records of write block `wblock` (its bytes read into
    /// `bytes`): each image whose digest the index still maps to this very
    /// spot is copied, unchanged but for its life (that of the block it goes
    /// into), into this core's open buffer, and the index is
    /// re-pointed under the sprig lock only if it still points at the old
    /// copy. A record rewritten or deleted meanwhile is left behind.
    ///
    /// `from_device`: the bytes came from the device, so every image's
    /// checksum is verified; a cached block's images were checksummed when
    /// this process built them (see [`record::decode_cached`]).
    fn defrag_block(&mut self, d: usize, wblock: u32, bytes: &[u8], from_device: bool) {
        // Device bytes: magic, size and checksum of every image (its bins
        // are not needed: the image is copied as it is). Cached bytes were
        // built here, past their last record they are zeros: the magic and
        // size are enough.
        let valid = |image: &[u8]| !from_device || record::decode_meta(image).is_ok();
        let ns = Arc::clone(&self.ns);
        let slot = &ns.devices[d];
        let unit = slot.device.info().min_io_bytes as usize;
        let base_rblock = slot.wblocks.offset_of(wblock) / RBLOCK_BYTES as u64;
        let mut at = 0usize;
        while at + record::IMAGE_HEADER_BYTES <= bytes.len() {
            let len = match record::peek_image_len(&bytes[at..]) {
                Some(len) if at + len <= bytes.len() && valid(&bytes[at..at + len]) => len,
                _ => {
                    if at.is_multiple_of(unit) {
                        break;
                    }
                    at = at.div_ceil(unit) * unit;
                    continue;
                }
            };
            let image = &bytes[at..at + len];
            let mut digest = crate::digest::Digest::default();
            digest.0.copy_from_slice(&image[16..36]);
            let old = Location {
                device: d as u8,
                rblock_id: base_rblock + (at / RBLOCK_BYTES) as u64,
                n_rblocks: (len / RBLOCK_BYTES) as u32,
            };
            at += len;
            if ns.index.get(&digest).map(|r| r.location) != Some(old) {
                continue;
            }
            if self.make_room(d, len, true).is_err() {
                // No room to move into now: the job stays, and tries again.
                return self.defrag_retry_later(d, wblock);
            }
            let buffer = self.open[d].as_ref().expect("make_room opened a buffer");
            let (dest, dest_at, block, life) = (
                buffer.wblock,
                buffer.used,
                buffer.block.clone(),
                buffer.life,
            );
            let new = Location {
                device: d as u8,
                rblock_id: (slot.wblocks.offset_of(dest) + dest_at as u64) / RBLOCK_BYTES as u64,
                n_rblocks: old.n_rblocks,
            };
            slot.wblocks.add(dest, len as u32);
            let moved = ns.index.modify(&digest, |cur| {
                if cur.location != old {
                    return (Change::Keep, false);
                }
                let mut bytes = block.bytes.write().unwrap_or_else(|e| e.into_inner());
                let copy = &mut bytes[dest_at..dest_at + len];
                copy.copy_from_slice(image);
                // The copy belongs to the destination's life: a scan of that
                // block stops at the first image of any other life.
                record::restamp_life(copy, life);
                (
                    Change::Put(IndexRecord {
                        location: new,
                        ..*cur
                    }),
                    true,
                )
            });
            if moved == Some(true) {
                self.note_append(d);
                let buffer = self.open[d].as_mut().expect("open buffer");
                buffer.used += len;
                buffer.dirty_since.get_or_insert_with(Instant::now);
                slot.wblocks.release(wblock, len as u32);
                self.hot.defrag_moved += 1;
                let end = dest_at + len;
                if let Some(job) = self
                    .defrag_jobs
                    .iter_mut()
                    .find(|j| j.device == d && j.wblock == wblock)
                {
                    match job
                        .waiting
                        .iter_mut()
                        .find(|(wd, ww, _)| *wd == d && *ww == dest)
                    {
                        Some(w) => w.2 = w.2.max(end),
                        None => job.waiting.push((d, dest, end)),
                    }
                }
            } else {
                slot.wblocks.release(dest, len as u32);
            }
        }
        if let Some(job) = self
            .defrag_jobs
            .iter_mut()
            .find(|j| j.device == d && j.wblock == wblock)
        {
            job.moved = true;
            job.reading = false;
        }
    }
}

/// Whether a transaction needs the stored record (bins and key), not just
/// its index entry: every write does (a replace must keep a stored key, a
/// touch rewrites the bins), reads unless they ask for the header only.
fn needs_bins(txn: &Transaction) -> bool {
    let r = &txn.request;
    if r.delete {
        return false;
    }
    r.writes() || !r.header_only
}
