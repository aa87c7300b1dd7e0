//! Driving the storage engine without a network, shared by storage-bench
//! and spdk-bench: the bench records (one blob bin in one set) and their
//! put/get transactions, the [`Workload`] trait and the [`drive`] loop that
//! keeps a queue depth of transactions in flight on one [`CoreStorage`]
//! (polling without sleeping, as a reactor does), the load and random-get
//! workloads, the O_DIRECT prefill of a device, clean shutdown, a guard
//! that removes the index's shared-memory segments, and readers of this
//! process's CPU ticks and I/O bytes from /proc.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use osprey_engine::device::uring::{UringDevice, UringOptions};
use osprey_engine::device::{Device, IoKind, IoOp, Queue, SubmitError};
use osprey_engine::index::{IndexConfig, PageMode};
use osprey_engine::ops::{Op, Request};
use osprey_engine::record::{BinName, Value};
use osprey_engine::result::ResultCode;
use osprey_engine::storage::core::{CoreStorage, Reply, Transaction};
use osprey_engine::storage::namespace::Namespace;
use osprey_engine::{Digest, Index, UserKey};
use rand::rngs::StdRng;
use rand::Rng;

const MIB: u64 = 1 << 20;

/// How long transactions (or the prefill's writes) may make no progress
/// before the bench gives up.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// Clock ticks per second of /proc/<pid>/stat (USER_HZ, 100 on Linux).
pub const USER_HZ: f64 = 100.0;

// ---- records --------------------------------------------------------------

/// The bench's records: set `set`, one blob bin named `bin`.
#[derive(Clone, Copy)]
pub struct Records {
    pub set: &'static str,
    pub bin: &'static [u8],
}

impl Records {
    pub fn bin_name(&self) -> BinName {
        BinName::new(self.bin).expect("a valid bin name")
    }

    /// Bytes of the image of a record with a `value_len`-byte blob.
    pub fn image_len(&self, value_len: usize) -> u64 {
        let record = osprey_engine::record::Record {
            set_name: self.set.as_bytes().to_vec(),
            bins: vec![osprey_engine::record::Bin {
                name: self.bin_name(),
                value: Value::Blob(4, vec![0; value_len]),
            }],
            ..Default::default()
        };
        record.image_len() as u64
    }

    /// A write of `value` as the blob bin.
    pub fn put_txn(&self, digest: Digest, value: Vec<u8>) -> Transaction {
        self.txn(Request {
            digest,
            ops: vec![Op::write(self.bin_name(), Value::Blob(4, value))],
            set_name: self.set.as_bytes().to_vec(),
            ..Default::default()
        })
    }

    /// A read of all bins.
    pub fn get_txn(&self, digest: Digest) -> Transaction {
        self.txn(Request {
            digest,
            read_all_bins: true,
            set_name: self.set.as_bytes().to_vec(),
            ..Default::default()
        })
    }

    fn txn(&self, request: Request) -> Transaction {
        Transaction {
            request,
            durable_delete: false,
        }
    }

    /// Checks that a get of key `key` returned a `len`-byte blob whose
    /// first 8 bytes are `key`; returns the blob.
    pub fn read_back<'r>(
        &self,
        key: u64,
        len: usize,
        reply: &'r Reply,
    ) -> Result<&'r [u8], String> {
        if reply.result != ResultCode::Ok {
            return Err(format!("get of key {key}: {}", reply.result));
        }
        let value = reply.bins.iter().find_map(|b| match (&b.name, &b.value) {
            (Some(name), Some(Value::Blob(4, bytes))) if name.as_bytes() == self.bin => Some(bytes),
            _ => None,
        });
        let Some(bytes) = value else {
            return Err(format!("get of key {key}: no blob bin in {:?}", reply.bins));
        };
        if bytes.len() != len {
            return Err(format!(
                "get of key {key}: a {}-byte value, {len} written",
                bytes.len()
            ));
        }
        let found = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        if found != key {
            return Err(format!("get of key {key} returned key {found}'s record"));
        }
        Ok(bytes)
    }

    /// The digests of integer keys 0..n of the set.
    pub fn digests(&self, n: usize) -> Vec<Digest> {
        compute_digests(self.set, n)
    }
}

/// The digests of integer keys 0..n in `set`, computed on all cores.
pub fn compute_digests(set: &str, n: usize) -> Vec<Digest> {
    let mut keys = vec![Digest::default(); n];
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let chunk = n.div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        for (c, slice) in keys.chunks_mut(chunk).enumerate() {
            scope.spawn(move || {
                for (j, d) in slice.iter_mut().enumerate() {
                    *d = Digest::compute(set, &UserKey::Integer((c * chunk + j) as i64));
                }
            });
        }
    });
    keys
}

// ---- the drive loop -------------------------------------------------------

/// What became of a transaction of a [`Workload`].
pub enum Done {
    Finished,
    /// Submit the same job again (the device was busy).
    Retry,
}

/// Transactions to keep in flight: jobs, each turned into a transaction
/// and checked when its reply comes back.
pub trait Workload {
    type Job: Copy;
    fn next(&mut self) -> Option<Self::Job>;
    fn txn(&self, job: Self::Job) -> Transaction;
    fn done(&mut self, job: Self::Job, reply: &Reply) -> Result<Done, String>;
}

/// A write's reply: done, or again if the device could not take it now.
pub fn write_done(what: &str, key: u64, reply: &Reply) -> Result<Done, String> {
    match reply.result {
        ResultCode::Ok => Ok(Done::Finished),
        ResultCode::DeviceOverload => Ok(Done::Retry),
        other => Err(format!("{what} of key {key}: {other}")),
    }
}

pub struct DriveStats {
    pub finished: u64,
    pub retries: u64,
}

/// Keeps `depth` transactions of `w` in flight on `core` until `w` has no
/// more (and all are answered), or until `deadline`: then no new ones start
/// and those in flight finish.
pub fn drive<W: Workload>(
    core: &mut CoreStorage,
    w: &mut W,
    depth: usize,
    deadline: Option<Instant>,
) -> Result<DriveStats, String> {
    let mut slots: Vec<Option<W::Job>> = (0..depth).map(|_| None).collect();
    let mut in_flight = 0usize;
    for (s, slot) in slots.iter_mut().enumerate() {
        let Some(job) = w.next() else { break };
        core.submit(s as u64, w.txn(job));
        *slot = Some(job);
        in_flight += 1;
    }
    let mut stats = DriveStats {
        finished: 0,
        retries: 0,
    };
    let mut out = Vec::with_capacity(depth);
    let mut stopping = false;
    let mut last_progress = Instant::now();
    // Retries count as replies: a core refusing every write as retryable
    // overload forever must end the run too, not spin it.
    let mut last_finished = Instant::now();
    let mut idle_polls = 0u32;
    while in_flight > 0 {
        // The clock is read only when replies came back (the deadline only
        // matters then: no new transaction starts otherwise) and every few
        // thousand idle polls: on a VM a clock read costs about as much as
        // an idle poll, and the loop used to spend a fifth of its time there.
        if !core.poll(&mut out) && out.is_empty() {
            idle_polls += 1;
            if idle_polls.is_multiple_of(4096) && last_progress.elapsed() > TIMEOUT {
                return Err(format!(
                    "{in_flight} transactions made no progress for {TIMEOUT:?}"
                ));
            }
            std::hint::spin_loop();
            continue;
        }
        idle_polls = 0;
        let now = Instant::now();
        last_progress = now;
        if !stopping && deadline.is_some_and(|d| now >= d) {
            stopping = true;
        }
        if now.duration_since(last_finished) > TIMEOUT {
            return Err(format!(
                "no transaction finished for {TIMEOUT:?} ({} retries so far)",
                stats.retries
            ));
        }
        for (id, reply) in out.drain(..) {
            let s = id as usize;
            let job = slots
                .get_mut(s)
                .and_then(Option::take)
                .ok_or_else(|| format!("a reply for transaction {id}, which is not in flight"))?;
            match w.done(job, &reply)? {
                Done::Retry => {
                    stats.retries += 1;
                    core.submit(id, w.txn(job));
                    slots[s] = Some(job);
                    continue;
                }
                Done::Finished => {
                    stats.finished += 1;
                    last_finished = now;
                }
            }
            match if stopping { None } else { w.next() } {
                Some(next) => {
                    core.submit(id, w.txn(next));
                    slots[s] = Some(next);
                }
                None => in_flight -= 1,
            }
        }
    }
    Ok(stats)
}

// ---- workloads ------------------------------------------------------------

/// Writes keys `next..end` once, key `k` with the value `value(k)`.
pub struct Load<'a> {
    pub records: Records,
    pub digests: &'a [Digest],
    pub next: u64,
    pub end: u64,
    pub value: fn(u64) -> Vec<u8>,
}

impl Workload for Load<'_> {
    type Job = u64;
    fn next(&mut self) -> Option<u64> {
        (self.next < self.end).then(|| {
            self.next += 1;
            self.next - 1
        })
    }
    fn txn(&self, key: u64) -> Transaction {
        self.records
            .put_txn(self.digests[key as usize], (self.value)(key))
    }
    fn done(&mut self, key: u64, reply: &Reply) -> Result<Done, String> {
        write_done("load", key, reply)
    }
}

/// Uniformly random gets of keys 0..n, each checked to return its own
/// key's `value_len`-byte value.
pub struct RandomGets<'a> {
    pub records: Records,
    pub digests: &'a [Digest],
    pub n: u64,
    pub value_len: usize,
    pub rng: StdRng,
}

impl Workload for RandomGets<'_> {
    type Job = u64;
    fn next(&mut self) -> Option<u64> {
        Some(self.rng.gen_range(0..self.n))
    }
    fn txn(&self, key: u64) -> Transaction {
        self.records.get_txn(self.digests[key as usize])
    }
    fn done(&mut self, key: u64, reply: &Reply) -> Result<Done, String> {
        self.records.read_back(key, self.value_len, reply)?;
        Ok(Done::Finished)
    }
}

// ---- namespace and device helpers -----------------------------------------

/// The index of a bench namespace: automatic page size, 256 sprigs per
/// partition, at most 128 stages of `stage_size_bytes`.
pub fn index_config(
    namespace_id: u32,
    shm_key_base: u32,
    stage_size_bytes: u64,
    walk_threads: usize,
) -> IndexConfig {
    IndexConfig {
        namespace_id,
        shm_key_base,
        pages: PageMode::Auto,
        sprigs_per_partition: 256,
        stage_size_bytes,
        max_stages: 128,
        walk_threads,
    }
}

/// Where the index puts key `key`'s record: (byte offset on the device,
/// image bytes).
pub fn record_place(ns: &Namespace, key: usize, digest: &Digest) -> Result<(u64, u64), String> {
    let r = ns
        .index
        .get(digest)
        .ok_or_else(|| format!("key {key} is not in the index after the load"))?;
    Ok((r.location.rblock_id * 16, r.size_bytes()))
}

/// Flushes the core and shuts the namespace down cleanly.
pub fn shutdown(mut core: CoreStorage, ns: Arc<Namespace>) -> Result<(), String> {
    core.flush_all(TIMEOUT)?;
    drop(core);
    Arc::try_unwrap(ns)
        .map_err(|_| "the namespace is still shared at shutdown".to_string())?
        .shutdown()
        .map_err(|e| format!("shutdown: {e}"))?;
    Ok(())
}

/// `path` as an O_DIRECT io_uring device of `file_bytes` (8 MiB I/Os at
/// most), `queue_depth` operations in flight.
pub fn uring_device(
    path: &Path,
    file_bytes: u64,
    queue_depth: u32,
) -> Result<Arc<dyn Device>, String> {
    let device = UringDevice::open(
        path,
        &UringOptions {
            file_size_bytes: Some(file_bytes),
            queue_depth,
            max_io_bytes: 8 << 20,
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(Arc::new(device))
}

/// Writes the whole device once with zeros: 1 MiB writes, `depth` in
/// flight.
pub fn prefill(device: &dyn Device, depth: usize) -> Result<(), String> {
    let mut queue: Box<dyn Queue> = device.open_queue().map_err(|e| e.to_string())?;
    let size = device.info().size_bytes;
    let (mut next, mut in_flight) = (0u64, 0usize);
    let mut free = Vec::new();
    let mut done = Vec::new();
    let mut last_progress = Instant::now();
    while next < size || in_flight > 0 {
        while next < size && in_flight < depth {
            let len = MIB.min(size - next) as usize;
            let mut buffer = match free.pop() {
                Some(b) => b,
                None => device
                    .alloc_buffer(MIB as usize)
                    .map_err(|e| e.to_string())?,
            };
            buffer.set_len(len);
            let op = IoOp {
                kind: IoKind::Write,
                offset: next,
                buffer,
                token: next,
            };
            match queue.submit(op) {
                Ok(()) => {
                    next += len as u64;
                    in_flight += 1;
                }
                Err(SubmitError::Full(op)) => {
                    free.push(op.buffer);
                    break;
                }
                Err(SubmitError::Invalid(_, e)) => return Err(format!("prefill: {e}")),
            }
        }
        done.clear();
        if queue.poll(&mut done, usize::MAX) == 0 {
            if last_progress.elapsed() > TIMEOUT {
                return Err("prefill: writes stalled".into());
            }
            std::thread::yield_now();
            continue;
        }
        last_progress = Instant::now();
        for c in done.drain(..) {
            in_flight -= 1;
            c.result.map_err(|e| format!("prefill: {e}"))?;
            free.push(c.buffer);
        }
    }
    Ok(())
}

/// Removes the index segments when dropped (early return, panic or not).
/// Declare it before the namespace it guards: the index must be detached
/// (dropped) first. `program` names the bench in its message.
pub struct SegmentsGuard {
    pub program: &'static str,
    pub config: IndexConfig,
}

impl Drop for SegmentsGuard {
    fn drop(&mut self) {
        if let Err(e) = Index::destroy_segments(&self.config) {
            eprintln!(
                "{}: could not remove the segments of key base {:#x}: {e}",
                self.program, self.config.shm_key_base
            );
        }
    }
}

// ---- process counters -----------------------------------------------------

/// Fields 14..=17 of `/proc/<pid>/stat` (`None`: this process): utime,
/// stime, cutime, cstime, in ticks ([`USER_HZ`]).
pub fn proc_times(pid: Option<u32>) -> Option<[u64; 4]> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): field k is fields[k - 3].
    let mut times = [0u64; 4];
    for (i, t) in times.iter_mut().enumerate() {
        *t = fields.get(11 + i)?.parse().ok()?;
    }
    Some(times)
}

/// Bytes this process read from / wrote to storage, from /proc/self/io.
pub fn io_bytes() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/io").ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Some((field("read_bytes:")?, field("write_bytes:")?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_counters_are_readable() {
        assert!(super::proc_times(None).is_some());
        assert!(super::proc_times(Some(std::process::id())).is_some());
    }
}
