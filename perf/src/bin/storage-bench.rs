//! `storage-bench`: the storage engine's figures on a file-backed io_uring
//! device, each printed next to a `fio` baseline measured in the same run on
//! the same file.
//!
//! No network: the bench drives one [`CoreStorage`] (one service core's
//! share of the namespace) with `submit`/`poll`, keeping `--queue-depth`
//! transactions in flight, as a reactor would (it polls without sleeping).
//! The namespace has one [`UringDevice`]: a file `storage-bench-<pid>.dat`
//! under `--dir`, opened with `O_DIRECT`. Write blocks are 1 MiB; the
//! post-write cache holds twice the 1 KiB write phase's key space plus 8
//! blocks (step 5; it is empty after every restart, so the random reads of
//! step 4 go to the device, which the bench checks); `flush-max-ms` is the
//! default 1000 (100 with `--quick`); everything else is the engine's
//! default configuration. Records hold one blob bin; its first 12 bytes are
//! the key number and a version, which every read checks.
//!
//! The run, in order (every phase on the same file):
//!
//! 0. **Prefill.** The whole file is written once with zeros (1 MiB direct
//!    writes), so no later write of the engine or of fio pays for the file
//!    system's first allocation of a block. Not a figure.
//! 1. **fio sequential write** (`--rw=write --bs=1M --iodepth=4`, time
//!    based, over the write-block region), for half of `--seconds`; the
//!    other half runs at the very end, once the file's records are no
//!    longer needed (with `--keep` it runs the whole time here instead).
//!    Baseline of figure 2: the mean of the two halves.
//! 2. **Load.** The namespace is formatted (a cold start on a blank device)
//!    and N records with a 4,026-byte bin — a 4,096-byte image — are
//!    written (about 45% of the device,
//!    sized by `--file-size-mib` or from N), then flushed. Shut down cleanly.
//! 3. **Warm start** (figure 4): `Namespace::open` after the clean shutdown
//!    is timed; it attaches the shared-memory index and walks its N entries.
//!    Target: 1 s at 10M records; at other N the target scales linearly
//!    (the walk is linear in N), i.e. PASS when the time projected to 10M is
//!    at most 1 s. The baseline is the time fio needs to read the device
//!    once sequentially (step 7): the least a cold start would cost.
//! 4. **Random reads** (figure 1): uniformly random gets of the N records,
//!    `--queue-depth` in flight, for `--seconds`. Nothing is in the
//!    post-write cache after the restart. Baseline: `fio --rw=randread
//!    --bs=4k --iodepth=Q` over the byte range the records occupy, run for
//!    half the time just before the engine and half just after (the mean
//!    counts, so drift of the disk cancels). The records' *image* is 4,096
//!    bytes (58-byte header, set name, bin header, a 4,026-byte value), one
//!    4 KiB unit, so the engine reads 4 KiB per get as fio does: the figure
//!    compares the engine's read path with the device's, not two I/O
//!    sizes. (A 4 KiB value makes a 4,176-byte image that crosses a unit
//!    boundary wherever it starts, so its gets read 8 KiB, sometimes 12; an
//!    earlier version of this bench measured those against fio 4k, and
//!    against fio 8k in a second row.) The bytes read per get are printed,
//!    from the records' index entries and from `/proc/self/io`, and must be
//!    4 KiB. Target ratio >= 0.9.
//! 5. **Sustained 1 KiB writes** (figure 2): records with a 1 KiB bin, keys
//!    overwritten in a cycle over a key space of about 5% of the device (at
//!    most 256 MiB, so the device never fills), for `--seconds`: the rate is
//!    acknowledged records × image bytes (1,104) ÷ the window. The writes
//!    run on `--write-cores` storage cores (default: one per CPU core, as
//!    ospreyd runs them), each its own thread, queue and open buffer over
//!    its own share of the keys; fio writes with one job, which is enough
//!    for the device's bandwidth (its CPU share is printed). Writes are
//!    acknowledged from RAM, but the core refuses them ("device overload",
//!    retried by the bench) once 64 MiB of flushes are pending, so at most
//!    that plus the open 1 MiB buffer is counted before it reaches the
//!    device. (`flush_all` is not timed: it also waits for the whole defrag
//!    queue, which drains one block per `flush-max-ms` once writes stop —
//!    see `settle`.) Every write, even a blind upsert of the only bin, first
//!    loads the stored record (`needs_bins` in core.rs); the post-write cache
//!    holds the whole cycle so that those loads come from RAM and the figure
//!    is the write path's, not random reads' (the note line counts where
//!    they came from). Baseline: the fio sequential-write bandwidth of
//!    step 1 (mean of its halves). Target ratio >= 0.8.
//! 6. **Write amplification** (figure 5): with the device about half full
//!    (45% 4 KiB-image records + 5% 1 KiB records; the fill is printed), a 50/50
//!    workload — uniformly random gets and updates (same size, new version)
//!    of the 4 KiB-image records, no key twice in flight — runs for `--seconds` to
//!    warm up (defrag starts once blocks fall below the 50% low-water mark)
//!    and `--seconds` more measured: device bytes written (the namespace's
//!    `device_write_bytes`: flushes, their padding, defrag's copies; counted
//!    when submitted) ÷ client bytes written (image bytes of the updates
//!    acknowledged in the window; the defrag debt carried into and out of
//!    the window roughly cancel once warm). There is no baseline: fio has no
//!    notion of live data, so anything it writes is amplification 1 by
//!    construction; the column says `n/a`. No target.
//! 7. **Cold start** (figure 3): fio reads the write-block region once
//!    (`--rw=read --bs=1M --iodepth=8`, 8 = the engine's scan depth); the
//!    core is polled with nothing new for 2 × `flush-max-ms`, so the flush
//!    timer writes every acknowledged record; the core and the namespace are
//!    dropped without shutdown (the headers stay untrusted, as after a
//!    crash) and `Namespace::open` is timed: it scans every write block and
//!    rebuilds the index. Rate = `ScanSummary::bytes_scanned` ÷ the whole
//!    open's wall time (the scan's own `elapsed` is printed too). Then fio
//!    reads the region again; the baseline is the faster of its two reads
//!    (this disk's sequential rate moves with the host's caching). Target
//!    ratio >= 0.7. The scan must find every key, and a sample of records
//!    (all of them below 20,000 keys) is read back and must carry its last
//!    acknowledged version.
//!
//! Finally the namespace is stopped the same way (with `--keep`: shut down
//! cleanly after `flush_all`, so the kept file's headers are trusted), fio
//! writes the second half of step 1 (not with `--keep`), the
//! index segments are removed (always, also on every error path: a guard's
//! `Drop`; so opening a kept file again starts cold) and the data file is
//! deleted unless `--keep`. Shared-memory keys:
//! `--shm-key-base` (default `0x5B00_0000 + (pid & 0xFF) << 16`) must lie in
//! `0x5B00_0000..=0x5BFF_E000`; the namespace (id 1) uses keys base + 0x1000
//! ..= base + 0x1FFF, so the bench never leaves `0x5B00_0000..0x5C00_0000`
//! (index-bench uses 0x5A…).
//!
//! The CPU other processes used during the run is printed above the table
//! (from /proc/stat): on the 2-core dev VM a concurrent build or test run
//! makes every figure meaningless.
//!
//! When fio is not installed (`--fio` names the program, default `fio`), the
//! engine phases still run, and each figure that needs a baseline is printed
//! as a line `skipped: fio not installed: <figure> …` instead of a table row;
//! the exit code is still 0. Any engine error, or a read that returns the
//! wrong record, stops the bench with exit code 1. Targets are informational
//! (PASS/MISS). Bad flags exit with code 2 and one line on stderr.
//!
//! ```text
//! storage-bench [--records N] [--dir PATH] [--file-size-mib M]
//!               [--queue-depth Q] [--write-cores C] [--seconds S]
//!               [--quick] [--json PATH]
//!               [--keep] [--shm-key-base K] [--fio PROGRAM]
//! ```
#![deny(unsafe_code)]

use std::collections::HashSet;
use std::fmt::Write as _;

use osprey_perf::flags::{parse_in, parse_number, Usage};
use osprey_perf::json_string;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use osprey_engine::device::Device;
use osprey_engine::index::IndexConfig;
use osprey_engine::storage::core::{CoreStorage, Reply, Transaction};
use osprey_engine::storage::header::HEADER_REGION_BYTES;
use osprey_engine::storage::namespace::{system_clock, Namespace, StartKind, StorageConfig};
use osprey_engine::Digest;
use osprey_perf::engine_load::{
    self, drive, io_bytes, proc_times, shutdown, uring_device, write_done, Done, DriveStats, Load,
    RandomGets, Records, SegmentsGuard, Workload, TIMEOUT, USER_HZ,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const MIB: u64 = 1 << 20;
/// Seed of every random choice (keys of gets and updates, the verify sample).
const SEED: u64 = 0x05B5_70BE_0000_0001;
const NAMESPACE: &str = "bench";
const SET: &str = "bench";
const BIN: &[u8] = b"v";
const RECORDS: Records = Records { set: SET, bin: BIN };
/// Bytes of the image of a read/update record: exactly one 4 KiB I/O unit,
/// the size of fio's reads in the baseline. A 4 KiB *value* would make a
/// 4,176-byte image, which no aligned 4 KiB read can cover: the engine would
/// have to read 8 KiB per get against fio's 4 KiB (the old figure did).
const BIG_IMAGE: usize = 4096;
/// Value bytes of the read/update records: what the image leaves after the
/// record header, the set name and the bin's header (name length, name,
/// particle type, value length). Checked against `Record::image_len`.
const BIG_VALUE: usize =
    BIG_IMAGE - osprey_engine::record::IMAGE_HEADER_BYTES - SET.len() - (1 + BIN.len() + 1 + 4);
/// Value bytes of the sustained writes.
const SMALL_VALUE: usize = 1024;
/// Share of the write-block region the 4 KiB records fill when the file
/// size is derived from `--records`, and the share of the 1 KiB key space.
const LOAD_FILL: f64 = 0.45;
const SMALL_FILL: f64 = 0.05;
/// Largest share of the region `--file-size-mib` may leave to the load.
const MAX_LOAD_FILL: f64 = 0.80;
/// The 1 KiB key space is at most this many bytes of images (it has to fit
/// the post-write cache).
const MAX_SMALL_BYTES: u64 = 256 * MIB;
const WRITE_BLOCK_BYTES: u32 = 1 << 20;
/// The cold-start scan's read depth (`SCAN_DEPTH` in namespace.rs): fio's
/// sequential read uses the same.
const SCAN_DEPTH: u32 = 8;
const SEQ_WRITE_DEPTH: u32 = 4;
/// Records read back after the cold start (all of them below this).
const VERIFY_SAMPLE: usize = 20_000;
const WARM_TARGET_RECORDS: f64 = 10_000_000.0;
const MAX_RECORDS: u64 = 10_000_000;
const KEY_RANGE: std::ops::Range<u32> = 0x5B00_0000..0x5C00_0000;
/// The top base whose namespace-1 keys (base + 0x1000..=base + 0x1FFF) stay in range.
const MAX_KEY_BASE: u32 = KEY_RANGE.end - 0x2000;
const NAMESPACE_ID: u32 = 1;

const USAGE: &str = "usage: storage-bench [--records N] [--dir PATH] [--file-size-mib M] \
[--queue-depth Q] [--write-cores C] [--seconds S] [--quick] [--json PATH] [--keep] [--shm-key-base K] [--fio PROGRAM]";

// ---- options --------------------------------------------------------------

struct Options {
    records: u64,
    dir: PathBuf,
    file_size_mib: Option<u64>,
    queue_depth: u32,
    /// Storage cores (threads) of the sustained-write phase.
    write_cores: usize,
    seconds: f64,
    quick: bool,
    json: Option<PathBuf>,
    keep: bool,
    shm_key_base: u32,
    fio: String,
}

fn default_key_base() -> u32 {
    KEY_RANGE.start + ((std::process::id() & 0xFF) << 16)
}

fn parse_options(args: &[String]) -> Result<Options, Usage> {
    let mut records = None;
    let mut dir = None;
    let mut file_size_mib = None;
    let mut queue_depth = None;
    let mut write_cores = None;
    let mut seconds = None;
    let mut json = None;
    let mut shm_key_base = None;
    let mut fio = None;
    let mut quick = false;
    let mut keep = false;
    osprey_perf::flags::parse_args(
        args,
        USAGE,
        &mut [("--quick", &mut quick), ("--keep", &mut keep)],
        &[
            "--records",
            "--dir",
            "--file-size-mib",
            "--queue-depth",
            "--write-cores",
            "--seconds",
            "--json",
            "--shm-key-base",
            "--fio",
        ],
        |flag, value| {
            match flag {
                "--records" => {
                    let n = parse_in(flag, &value, 1_000..=MAX_RECORDS)?;
                    records = Some(n);
                }
                "--dir" => {
                    if value.is_empty() {
                        return Err(Usage(format!("{flag} needs a directory")));
                    }
                    dir = Some(PathBuf::from(value));
                }
                "--file-size-mib" => {
                    let mib = parse_in(flag, &value, 32..=64 << 20)?;
                    file_size_mib = Some(mib);
                }
                "--queue-depth" => {
                    let q = parse_in(flag, &value, 1..=1024)?;
                    queue_depth = Some(q as u32);
                }
                "--write-cores" => {
                    let c = parse_in(flag, &value, 1..=64)?;
                    write_cores = Some(c as usize);
                }
                "--seconds" => {
                    let s: f64 = value
                        .parse()
                        .map_err(|_| Usage(format!("{flag}: {value:?} is not a number")))?;
                    if !(0.1..=3600.0).contains(&s) {
                        return Err(Usage(format!("{flag}: {s} is not in 0.1..=3600")));
                    }
                    seconds = Some(s);
                }
                "--json" => json = Some(PathBuf::from(value)),
                "--shm-key-base" => {
                    let base = parse_number(flag, &value)?;
                    if !(u64::from(KEY_RANGE.start)..=u64::from(MAX_KEY_BASE)).contains(&base) {
                        return Err(Usage(format!(
                            "{flag}: {value} is not in {:#x}..={MAX_KEY_BASE:#x}",
                            KEY_RANGE.start
                        )));
                    }
                    shm_key_base = Some(base as u32);
                }
                "--fio" => {
                    if value.is_empty() {
                        return Err(Usage(format!("{flag} needs a program")));
                    }
                    fio = Some(value);
                }
                _ => unreachable!("flag list and match disagree"),
            }
            Ok(())
        },
    )?;
    let queue_depth = queue_depth.unwrap_or(32);
    let records = records.unwrap_or(if quick { 6_000 } else { 500_000 });
    if records < 4 * u64::from(queue_depth) {
        return Err(Usage(format!(
            "--records {records} must be at least 4 × --queue-depth ({queue_depth})"
        )));
    }
    let options = Options {
        records,
        dir: dir.unwrap_or_else(|| PathBuf::from("./data/bench")),
        file_size_mib,
        queue_depth,
        // Default: one storage core per CPU core, as ospreyd runs them.
        write_cores: write_cores.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(64)
        }),
        seconds: seconds.unwrap_or(if quick { 0.3 } else { 10.0 }),
        quick,
        json,
        keep,
        shm_key_base: shm_key_base.unwrap_or_else(default_key_base),
        fio: fio.unwrap_or_else(|| "fio".into()),
    };
    let layout = Layout::of(&options);
    if layout.big_bytes as f64 > MAX_LOAD_FILL * layout.region_bytes as f64 {
        return Err(Usage(format!(
            "--file-size-mib {}: {} records of {} bytes need more than {:.0}% of its {} MiB of write blocks",
            layout.file_bytes / MIB,
            options.records,
            layout.big_image,
            MAX_LOAD_FILL * 100.0,
            layout.region_bytes / MIB
        )));
    }
    Ok(options)
}

/// Sizes derived from the options.
struct Layout {
    file_bytes: u64,
    /// Bytes of write blocks (the file after the header region).
    region_bytes: u64,
    big_image: u64,
    small_image: u64,
    /// Bytes the N 4 KiB-image records take.
    big_bytes: u64,
    /// Keys of the 1 KiB write phase.
    small_keys: u64,
    /// Post-write cache, in write blocks: twice the 1 KiB cycle and a margin.
    cache_blocks: u32,
    flush_max_ms: u64,
}

impl Layout {
    fn of(options: &Options) -> Layout {
        let big_image = RECORDS.image_len(BIG_VALUE);
        assert_eq!(
            big_image, BIG_IMAGE as u64,
            "the read records' image must be exactly one 4 KiB unit"
        );
        let small_image = RECORDS.image_len(SMALL_VALUE);
        let big_bytes = options.records * big_image;
        let file_bytes = match options.file_size_mib {
            Some(mib) => mib * MIB,
            None => {
                let region = (big_bytes as f64 / LOAD_FILL).ceil() as u64;
                (HEADER_REGION_BYTES + region.div_ceil(MIB) * MIB).max(32 * MIB)
            }
        };
        let wblocks = file_bytes.saturating_sub(HEADER_REGION_BYTES) / u64::from(WRITE_BLOCK_BYTES);
        let region_bytes = wblocks * u64::from(WRITE_BLOCK_BYTES);
        let small_bytes = ((SMALL_FILL * region_bytes as f64) as u64).min(MAX_SMALL_BYTES);
        let small_keys = (small_bytes / small_image).max(4 * u64::from(options.queue_depth));
        // Twice the cycle: defrag's copies are interleaved with it.
        let cache_blocks =
            2 * (small_keys * small_image).div_ceil(u64::from(WRITE_BLOCK_BYTES)) as u32 + 8;
        Layout {
            file_bytes,
            region_bytes,
            big_image,
            small_image,
            big_bytes,
            small_keys,
            cache_blocks,
            // The quiet periods before a crash-like stop last 2 × this.
            flush_max_ms: if options.quick { 100 } else { 1000 },
        }
    }
}

fn index_config(options: &Options) -> IndexConfig {
    engine_load::index_config(
        NAMESPACE_ID,
        options.shm_key_base,
        if options.quick { MIB } else { 64 * MIB },
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(256),
    )
}

fn storage_config(layout: &Layout) -> StorageConfig {
    let mut config = StorageConfig::new(NAMESPACE);
    config.write_block_bytes = WRITE_BLOCK_BYTES;
    config.post_write_cache_blocks = layout.cache_blocks;
    config.flush_max_ms = layout.flush_max_ms;
    config
}

// ---- guards ---------------------------------------------------------------

/// Deletes the data file when dropped, unless told to keep it.
struct FileGuard {
    path: PathBuf,
    keep: bool,
}

impl Drop for FileGuard {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("storage-bench: kept {}", self.path.display());
        } else if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!(
                    "storage-bench: could not remove {}: {e}",
                    self.path.display()
                );
            }
        }
    }
}

// ---- process counters -----------------------------------------------------

/// User + system CPU ticks of this process (all threads).
fn cpu_ticks() -> Option<u64> {
    proc_times(None).map(|t| t[0] + t[1])
}

/// Ticks the host spent running processes (user, nice, system) other than
/// this one and its waited-for children (fio), from /proc/stat.
fn others_ticks() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu: Vec<u64> = text
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    let busy = cpu.first()? + cpu.get(1)? + cpu.get(2)?;
    let own: u64 = proc_times(None)?.iter().sum();
    Some(busy.saturating_sub(own))
}

struct Snapshot {
    at: Instant,
    cpu: Option<u64>,
    io: Option<(u64, u64)>,
    device_write_bytes: u64,
    device_writes: u64,
    device_reads: u64,
    cache_hits: u64,
    read_retries: u64,
    defrag_reads: u64,
    defrag_moved: u64,
    defrag_freed: u64,
    free_block_waits: u64,
}

impl Snapshot {
    fn take(ns: &Namespace) -> Snapshot {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &ns.stats;
        Snapshot {
            at: Instant::now(),
            cpu: cpu_ticks(),
            io: io_bytes(),
            device_write_bytes: s.device_write_bytes.load(Relaxed),
            device_writes: s.device_writes.load(Relaxed),
            device_reads: s.device_reads.load(Relaxed),
            cache_hits: s.cache_hits.load(Relaxed),
            read_retries: s.read_retries.load(Relaxed),
            defrag_reads: s.defrag_reads.load(Relaxed),
            defrag_moved: s.defrag_moved.load(Relaxed),
            defrag_freed: s.defrag_freed.load(Relaxed),
            free_block_waits: s.free_block_waits.load(Relaxed),
        }
    }

    /// The counters' growth since `self`.
    fn delta(&self, ns: &Namespace) -> Delta {
        let now = Snapshot::take(ns);
        let elapsed = now.at - self.at;
        let cpu_pct = match (self.cpu, now.cpu) {
            (Some(a), Some(b)) => {
                Some((b - a) as f64 / USER_HZ / elapsed.as_secs_f64().max(1e-9) * 100.0)
            }
            _ => None,
        };
        let io = match (self.io, now.io) {
            (Some(a), Some(b)) => Some((b.0 - a.0, b.1 - a.1)),
            _ => None,
        };
        Delta {
            elapsed,
            cpu_pct,
            io,
            device_write_bytes: now.device_write_bytes - self.device_write_bytes,
            device_writes: now.device_writes - self.device_writes,
            device_reads: now.device_reads - self.device_reads,
            cache_hits: now.cache_hits - self.cache_hits,
            read_retries: now.read_retries - self.read_retries,
            defrag_reads: now.defrag_reads - self.defrag_reads,
            defrag_moved: now.defrag_moved - self.defrag_moved,
            defrag_freed: now.defrag_freed - self.defrag_freed,
            free_block_waits: now.free_block_waits - self.free_block_waits,
        }
    }
}

struct Delta {
    elapsed: Duration,
    cpu_pct: Option<f64>,
    io: Option<(u64, u64)>,
    device_write_bytes: u64,
    device_writes: u64,
    device_reads: u64,
    cache_hits: u64,
    read_retries: u64,
    defrag_reads: u64,
    defrag_moved: u64,
    defrag_freed: u64,
    free_block_waits: u64,
}

fn percent(value: Option<f64>) -> String {
    value.map_or_else(|| "?".into(), |v| format!("{v:.0}%"))
}

// ---- fio ------------------------------------------------------------------

/// A minimal JSON value: enough to read fio's `--output-format=json`.
#[derive(Debug)]
enum Json {
    /// A string, true, false or null: fio's figures are all numbers.
    Other,
    Number(f64),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    fn parse(text: &str) -> Result<Json, String> {
        let mut p = JsonParser {
            bytes: text.as_bytes(),
            at: 0,
        };
        let value = p.value()?;
        p.skip_space();
        if p.at != p.bytes.len() {
            return Err(format!("trailing bytes at {}", p.at));
        }
        Ok(value)
    }

    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn at(&self, i: usize) -> Option<&Json> {
        match self {
            Json::Array(items) => items.get(i),
            _ => None,
        }
    }

    fn number(&self) -> Option<f64> {
        match self {
            Json::Number(n) => Some(*n),
            _ => None,
        }
    }
}

struct JsonParser<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl JsonParser<'_> {
    fn skip_space(&mut self) {
        while self.at < self.bytes.len() && self.bytes[self.at].is_ascii_whitespace() {
            self.at += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), String> {
        self.skip_space();
        if self.bytes.get(self.at) == Some(&byte) {
            self.at += 1;
            Ok(())
        } else {
            Err(format!("expected {:?} at byte {}", byte as char, self.at))
        }
    }

    fn value(&mut self) -> Result<Json, String> {
        self.skip_space();
        match self.bytes.get(self.at) {
            None => Err("unexpected end".into()),
            Some(b'{') => {
                self.at += 1;
                let mut fields = Vec::new();
                self.skip_space();
                if self.bytes.get(self.at) == Some(&b'}') {
                    self.at += 1;
                    return Ok(Json::Object(fields));
                }
                loop {
                    self.skip_space();
                    let key = self.string()?;
                    self.expect(b':')?;
                    fields.push((key, self.value()?));
                    self.skip_space();
                    match self.bytes.get(self.at) {
                        Some(b',') => self.at += 1,
                        Some(b'}') => {
                            self.at += 1;
                            return Ok(Json::Object(fields));
                        }
                        _ => return Err(format!("bad object at byte {}", self.at)),
                    }
                }
            }
            Some(b'[') => {
                self.at += 1;
                let mut items = Vec::new();
                self.skip_space();
                if self.bytes.get(self.at) == Some(&b']') {
                    self.at += 1;
                    return Ok(Json::Array(items));
                }
                loop {
                    items.push(self.value()?);
                    self.skip_space();
                    match self.bytes.get(self.at) {
                        Some(b',') => self.at += 1,
                        Some(b']') => {
                            self.at += 1;
                            return Ok(Json::Array(items));
                        }
                        _ => return Err(format!("bad array at byte {}", self.at)),
                    }
                }
            }
            Some(b'"') => {
                self.string()?;
                Ok(Json::Other)
            }
            Some(_) => {
                // A bare literal: a number, true, false, null (or fio's
                // occasional nan / inf, read as numbers).
                let start = self.at;
                while self.at < self.bytes.len()
                    && (self.bytes[self.at].is_ascii_alphanumeric()
                        || b"+-.".contains(&self.bytes[self.at]))
                {
                    self.at += 1;
                }
                let token = std::str::from_utf8(&self.bytes[start..self.at])
                    .map_err(|_| "bad literal".to_string())?;
                Ok(match token {
                    "true" | "false" | "null" => Json::Other,
                    _ => Json::Number(
                        token
                            .parse()
                            .map_err(|_| format!("bad literal {token:?} at byte {start}"))?,
                    ),
                })
            }
        }
    }

    fn string(&mut self) -> Result<String, String> {
        if self.bytes.get(self.at) != Some(&b'"') {
            return Err(format!("expected a string at byte {}", self.at));
        }
        self.at += 1;
        let mut out = Vec::new();
        loop {
            let Some(&b) = self.bytes.get(self.at) else {
                return Err("unterminated string".into());
            };
            self.at += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    let Some(&e) = self.bytes.get(self.at) else {
                        return Err("unterminated escape".into());
                    };
                    self.at += 1;
                    match e {
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'u' => {
                            let hex = self
                                .bytes
                                .get(self.at..self.at + 4)
                                .and_then(|h| std::str::from_utf8(h).ok())
                                .and_then(|h| u32::from_str_radix(h, 16).ok())
                                .ok_or("bad \\u escape")?;
                            self.at += 4;
                            let c = char::from_u32(hex).unwrap_or('\u{fffd}');
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        }
                        other => out.push(other),
                    }
                }
                other => out.push(other),
            }
        }
        String::from_utf8(out).map_err(|_| "a string is not UTF-8".into())
    }
}

/// One fio job: `rw` with blocks of `bs` and `iodepth` in flight over
/// `[offset, offset + size)` of the file, for `seconds` if given (looping
/// over the range), else once over it.
#[derive(Clone, Copy)]
struct FioSpec {
    rw: &'static str,
    bs: &'static str,
    iodepth: u32,
    offset: u64,
    size: u64,
    seconds: Option<f64>,
}

struct Fio {
    program: String,
    version: String,
}

/// What one fio job measured.
struct FioJob {
    read_iops: f64,
    read_bw: f64,
    write_bw: f64,
    /// fio's own CPU use (usr + sys), percent of one core.
    cpu_pct: f64,
    command: String,
}

impl Fio {
    /// The fio to use, or `None` if the program is not installed.
    fn detect(program: &str) -> Result<Option<Fio>, String> {
        match Command::new(program).arg("--version").output() {
            Ok(out) if out.status.success() => Ok(Some(Fio {
                program: program.to_string(),
                version: String::from_utf8_lossy(&out.stdout).trim().to_string(),
            })),
            Ok(out) => Err(format!(
                "{program} --version failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot run {program}: {e}")),
        }
    }

    /// Runs one fio job on `file`.
    fn run(&self, file: &Path, spec: FioSpec) -> Result<FioJob, String> {
        let FioSpec {
            rw,
            bs,
            iodepth,
            offset,
            size,
            seconds,
        } = spec;
        // fio splits file names at ':'.
        let filename = file.display().to_string().replace(':', "\\:");
        let mut args = vec![
            format!("--name={rw}-{bs}"),
            format!("--filename={filename}"),
            format!("--rw={rw}"),
            format!("--bs={bs}"),
            "--direct=1".into(),
            "--ioengine=io_uring".into(),
            format!("--iodepth={iodepth}"),
            format!("--offset={offset}"),
            format!("--size={size}"),
        ];
        if let Some(s) = seconds {
            args.push(format!("--runtime={}ms", (s * 1000.0).round() as u64));
            args.push("--time_based".into());
        }
        args.push("--output-format=json".into());
        let command = format!("{} {}", self.program, args.join(" "));
        eprintln!("storage-bench:   {command}");
        let out = Command::new(&self.program)
            .args(&args)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.program))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!(
                "{command} failed ({}): {}{}",
                out.status,
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let json = stdout
            .find('{')
            .ok_or_else(|| format!("{command}: no JSON in its output: {stdout}"))
            .and_then(|start| {
                Json::parse(&stdout[start..]).map_err(|e| format!("{command}: bad JSON: {e}"))
            })?;
        let job = json
            .get("jobs")
            .and_then(|j| j.at(0))
            .ok_or_else(|| format!("{command}: no jobs[0] in its JSON"))?;
        if let Some(error) = job.get("error").and_then(Json::number) {
            if error != 0.0 {
                return Err(format!("{command}: the job reports error {error}"));
            }
        }
        let number = |path: &[&str]| -> Result<f64, String> {
            let mut at = job;
            for key in path {
                at = at.get(key).ok_or_else(|| {
                    format!("{command}: no jobs[0].{} in its JSON", path.join("."))
                })?;
            }
            at.number()
                .ok_or_else(|| format!("{command}: jobs[0].{} is not a number", path.join(".")))
        };
        let result = FioJob {
            read_iops: number(&["read", "iops"])?,
            read_bw: number(&["read", "bw_bytes"])?,
            write_bw: number(&["write", "bw_bytes"])?,
            cpu_pct: number(&["usr_cpu"])? + number(&["sys_cpu"])?,
            command,
        };
        Ok(result)
    }
}

/// Runs `spec` if fio is installed.
fn fio_job(fio: Option<&Fio>, file: &Path, spec: FioSpec) -> Result<Option<FioJob>, String> {
    fio.map(|f| f.run(file, spec)).transpose()
}

// ---- the workloads --------------------------------------------------------

fn value_bytes(len: usize, key: u64, version: u32) -> Vec<u8> {
    let mut v = vec![0xA5u8; len];
    v[..8].copy_from_slice(&key.to_le_bytes());
    v[8..12].copy_from_slice(&version.to_le_bytes());
    v
}

/// The version a read of key `key` returned, after checking its shape.
fn read_back(key: u64, len: usize, reply: &Reply) -> Result<u32, String> {
    let bytes = RECORDS.read_back(key, len, reply)?;
    Ok(u32::from_le_bytes(
        bytes[8..12].try_into().expect("4 bytes"),
    ))
}

/// 1 KiB writes cycling over keys `first..first + count`; the value carries
/// the write's sequence number, remembered per key once acknowledged.
struct CyclicWrites<'a> {
    digests: &'a [Digest],
    first: u64,
    count: u64,
    seq: u32,
    /// Per key of the cycle: the sequence number acknowledged last.
    acked: &'a mut [Option<u32>],
}

impl Workload for CyclicWrites<'_> {
    type Job = (u64, u32);
    fn next(&mut self) -> Option<(u64, u32)> {
        let seq = self.seq;
        self.seq = self.seq.checked_add(1)?;
        Some((self.first + u64::from(seq) % self.count, seq))
    }
    fn txn(&self, (key, seq): (u64, u32)) -> Transaction {
        RECORDS.put_txn(
            self.digests[key as usize],
            value_bytes(SMALL_VALUE, key, seq),
        )
    }
    fn done(&mut self, (key, seq): (u64, u32), reply: &Reply) -> Result<Done, String> {
        let done = write_done("1 KiB write", key, reply)?;
        if let Done::Finished = done {
            // One core applies writes in the order it acknowledges them: the
            // last acknowledged is the stored one.
            self.acked[(key - self.first) as usize] = Some(seq);
        }
        Ok(done)
    }
}

#[derive(Clone, Copy)]
enum MixJob {
    Get(u64),
    Update(u64, u32),
}

/// Half gets, half updates of uniformly random keys 0..n; no key twice in
/// flight, so each key's last acknowledged version is known.
struct Mix<'a> {
    digests: &'a [Digest],
    n: u64,
    rng: StdRng,
    versions: &'a mut [u32],
    busy: HashSet<u64>,
    gets: u64,
    updates: u64,
}

impl Workload for Mix<'_> {
    type Job = MixJob;
    fn next(&mut self) -> Option<MixJob> {
        let key = loop {
            let key = self.rng.gen_range(0..self.n);
            if self.busy.insert(key) {
                break key;
            }
        };
        Some(if self.rng.gen::<bool>() {
            MixJob::Get(key)
        } else {
            MixJob::Update(key, self.versions[key as usize] + 1)
        })
    }
    fn txn(&self, job: MixJob) -> Transaction {
        match job {
            MixJob::Get(key) => RECORDS.get_txn(self.digests[key as usize]),
            MixJob::Update(key, version) => RECORDS.put_txn(
                self.digests[key as usize],
                value_bytes(BIG_VALUE, key, version),
            ),
        }
    }
    fn done(&mut self, job: MixJob, reply: &Reply) -> Result<Done, String> {
        let done = match job {
            MixJob::Get(key) => {
                let version = read_back(key, BIG_VALUE, reply)?;
                let want = self.versions[key as usize];
                if version != want {
                    return Err(format!(
                        "get of key {key}: version {version}, last acknowledged {want}"
                    ));
                }
                self.gets += 1;
                Done::Finished
            }
            MixJob::Update(key, version) => {
                let done = write_done("update", key, reply)?;
                if let Done::Finished = done {
                    self.versions[key as usize] = version;
                    self.updates += 1;
                }
                done
            }
        };
        if let Done::Finished = done {
            let key = match job {
                MixJob::Get(k) | MixJob::Update(k, _) => k,
            };
            self.busy.remove(&key);
        }
        Ok(done)
    }
}

/// Reads keys and checks each carries its expected version.
struct Verify<'a> {
    digests: &'a [Digest],
    keys: Vec<(u64, usize, u32)>,
    next: usize,
}

impl Workload for Verify<'_> {
    type Job = usize;
    fn next(&mut self) -> Option<usize> {
        (self.next < self.keys.len()).then(|| {
            self.next += 1;
            self.next - 1
        })
    }
    fn txn(&self, i: usize) -> Transaction {
        RECORDS.get_txn(self.digests[self.keys[i].0 as usize])
    }
    fn done(&mut self, i: usize, reply: &Reply) -> Result<Done, String> {
        let (key, len, want) = self.keys[i];
        let version = read_back(key, len, reply)?;
        if version != want {
            return Err(format!(
                "after the cold start key {key} has version {version}, {want} was acknowledged"
            ));
        }
        Ok(Done::Finished)
    }
}

// ---- namespace helpers ----------------------------------------------------

fn open_device(path: &Path, layout: &Layout, queue_depth: u32) -> Result<Arc<dyn Device>, String> {
    // Reads in flight, plus the write backlog's 1 MiB writes.
    uring_device(path, layout.file_bytes, queue_depth + 128)
}

fn open_namespace(
    path: &Path,
    layout: &Layout,
    options: &Options,
    index: &IndexConfig,
) -> Result<(Arc<Namespace>, StartKind, Duration), String> {
    let device = open_device(path, layout, options.queue_depth)?;
    let started = Instant::now();
    let (ns, kind) = Namespace::open(
        storage_config(layout),
        index,
        vec![device],
        Arc::new(system_clock),
    )
    .map_err(|e| format!("Namespace::open: {e}"))?;
    let elapsed = started.elapsed();
    Ok((Arc::new(ns), kind, elapsed))
}

/// Polls `core` for `quiet` without starting anything: flush timers fire
/// and device work completes.
fn settle(core: &mut CoreStorage, quiet: Duration) {
    let until = Instant::now() + quiet;
    let mut out = Vec::new();
    while Instant::now() < until {
        if !core.poll(&mut out) {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// `flush_all`, timed.
fn flush(core: &mut CoreStorage) -> Result<Duration, String> {
    let started = Instant::now();
    core.flush_all(TIMEOUT)?;
    let elapsed = started.elapsed();
    eprintln!(
        "storage-bench:   flush_all took {:.3} s",
        elapsed.as_secs_f64()
    );
    Ok(elapsed)
}

fn new_core(ns: &Arc<Namespace>) -> Result<CoreStorage, String> {
    CoreStorage::new(ns.clone()).map_err(|e| e.to_string())
}

/// Writes the whole file once with zeros (1 MiB direct writes, 4 in flight).
fn prefill(path: &Path, layout: &Layout) -> Result<Duration, String> {
    let device = open_device(path, layout, 8)?;
    let started = Instant::now();
    engine_load::prefill(&*device, SEQ_WRITE_DEPTH as usize)?;
    Ok(started.elapsed())
}

// ---- figures --------------------------------------------------------------

#[derive(Clone, Copy)]
enum Unit {
    OpsPerSecond,
    BytesPerSecond,
    Seconds,
    Times,
}

#[derive(Clone, Copy)]
enum Baseline {
    Measured(f64),
    /// No baseline exists for this figure.
    NotApplicable,
    /// fio is not installed.
    Skipped,
}

#[derive(Clone, Copy)]
enum Target {
    None,
    /// osprey ÷ baseline at least this.
    RatioAtLeast(f64),
    /// osprey at most this; `note` says where it comes from.
    AtMost {
        target: f64,
        note: &'static str,
    },
}

struct Figure {
    name: &'static str,
    records: u64,
    unit: Unit,
    osprey: f64,
    baseline: Baseline,
    baseline_what: &'static str,
    target: Target,
}

impl Figure {
    fn ratio(&self) -> Option<f64> {
        match self.baseline {
            Baseline::Measured(b) => Some(self.osprey / b),
            _ => None,
        }
    }

    fn format_value(&self, value: f64) -> String {
        match self.unit {
            Unit::OpsPerSecond => format!("{:.1} k/s", value / 1e3),
            Unit::BytesPerSecond => format!("{:.0} MB/s", value / 1e6),
            Unit::Seconds => format!("{value:.3} s"),
            Unit::Times => format!("{value:.2}x"),
        }
    }

    fn baseline_text(&self) -> String {
        match self.baseline {
            Baseline::Measured(b) => self.format_value(b),
            Baseline::NotApplicable => "n/a".into(),
            Baseline::Skipped => "skipped".into(),
        }
    }

    fn target_text(&self) -> String {
        match self.target {
            Target::None => "-".into(),
            Target::RatioAtLeast(r) => format!("ratio >= {r:.2}"),
            Target::AtMost { target, note } => {
                format!("<= {} ({note})", self.format_value(target))
            }
        }
    }

    fn result(&self) -> &'static str {
        match (self.target, self.ratio()) {
            (Target::None, _) => "-",
            (Target::RatioAtLeast(_), None) => "skipped",
            (Target::RatioAtLeast(r), Some(ratio)) if ratio >= r => "PASS",
            (Target::RatioAtLeast(_), Some(_)) => "MISS",
            (Target::AtMost { target, .. }, _) if self.osprey <= target => "PASS",
            (Target::AtMost { .. }, _) => "MISS",
        }
    }
}

fn print_table(figures: &[&Figure]) {
    let rows: Vec<[String; 7]> = figures
        .iter()
        .map(|f| {
            [
                f.name.to_string(),
                f.records.to_string(),
                f.format_value(f.osprey),
                f.baseline_text(),
                f.ratio()
                    .map_or_else(|| "n/a".into(), |r| format!("{r:.2}")),
                f.target_text(),
                f.result().to_string(),
            ]
        })
        .collect();
    let header = [
        "figure", "records", "osprey", "baseline", "ratio", "target", "result",
    ];
    osprey_perf::print_table(&header, &rows, &[0, 5, 6]);
}

fn json_number(value: Option<f64>) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v}"),
        _ => "null".into(),
    }
}

fn write_json(path: &Path, run: &Run) -> Result<(), String> {
    let o = run.options;
    let mut out = String::new();
    let _ = writeln!(out, "{{");
    let _ = writeln!(out, "  \"bench\": \"storage-bench\",");
    let _ = writeln!(out, "  \"quick\": {},", o.quick);
    let _ = writeln!(out, "  \"seed\": {SEED},");
    let _ = writeln!(out, "  \"other_cpu_pct\": {},", json_number(run.others_pct));
    let _ = writeln!(
        out,
        "  \"fio\": {},",
        run.fio
            .as_ref()
            .map_or_else(|| "null".into(), |f| json_string(&f.version))
    );
    let _ = writeln!(
        out,
        "  \"config\": {{\"records\": {}, \"file_bytes\": {}, \"queue_depth\": {}, \"seconds\": {}, \"write_block_bytes\": {WRITE_BLOCK_BYTES}, \"big_image_bytes\": {}, \"small_image_bytes\": {}, \"small_keys\": {}, \"shm_key_base\": {}}},",
        o.records,
        run.layout.file_bytes,
        o.queue_depth,
        o.seconds,
        run.layout.big_image,
        run.layout.small_image,
        run.layout.small_keys,
        o.shm_key_base
    );
    let notes: Vec<String> = run.notes.iter().map(|n| json_string(n)).collect();
    let _ = writeln!(out, "  \"notes\": [{}],", notes.join(", "));
    let _ = writeln!(out, "  \"figures\": [");
    for (i, f) in run.figures.iter().enumerate() {
        let unit = match f.unit {
            Unit::OpsPerSecond => "ops/s",
            Unit::BytesPerSecond => "bytes/s",
            Unit::Seconds => "s",
            Unit::Times => "ratio",
        };
        let baseline = match f.baseline {
            Baseline::Measured(b) => Some(b),
            _ => None,
        };
        let _ = write!(
            out,
            "    {{\"name\": {}, \"records\": {}, \"unit\": {}, \"osprey\": {}, \"baseline\": {}, \"baseline_what\": {}, \"ratio\": {}, \"target\": {}, \"result\": {}}}",
            json_string(f.name),
            f.records,
            json_string(unit),
            json_number(Some(f.osprey)),
            json_number(baseline),
            json_string(f.baseline_what),
            json_number(f.ratio()),
            json_string(&f.target_text()),
            json_string(f.result())
        );
        let _ = writeln!(out, "{}", if i + 1 < run.figures.len() { "," } else { "" });
    }
    let _ = writeln!(out, "  ]");
    let _ = writeln!(out, "}}");
    std::fs::write(path, out).map_err(|e| format!("writing {}: {e}", path.display()))
}

// ---- the run --------------------------------------------------------------

const READS: &str = "random 4 KiB-record reads";
const WRITES: &str = "sustained 1 KiB writes";
const COLD: &str = "cold start scan";
const WARM: &str = "warm start";
const WA: &str = "write amplification";

struct Run<'a> {
    options: &'a Options,
    layout: Layout,
    fio: Option<Fio>,
    figures: Vec<Figure>,
    /// Lines describing what was checked, printed before the table.
    notes: Vec<String>,
    /// CPU other processes used during the run, % of one core.
    others_pct: Option<f64>,
}

impl Run<'_> {
    fn note(&mut self, line: String) {
        println!("{line}");
        self.notes.push(line);
    }

    fn baseline(&self, value: Option<f64>) -> Baseline {
        match (&self.fio, value) {
            (Some(_), Some(v)) => Baseline::Measured(v),
            _ => Baseline::Skipped,
        }
    }
}

fn seconds_from_now(s: f64) -> Instant {
    Instant::now() + Duration::from_secs_f64(s)
}

fn thousands(value: Option<f64>) -> String {
    value.map_or_else(|| "?".into(), |v| format!("{:.1}", v / 1e3))
}

fn kib(bytes: f64) -> String {
    format!("{:.2} KiB", bytes / 1024.0)
}

fn run(options: &Options) -> Result<(), String> {
    let fio = Fio::detect(&options.fio)?;
    let layout = Layout::of(options);
    let mut run = Run {
        options,
        layout,
        fio,
        figures: Vec::new(),
        notes: Vec::new(),
        others_pct: None,
    };
    let n = options.records;
    let q = options.queue_depth as usize;
    let secs = options.seconds;
    let small_keys = run.layout.small_keys;
    let total_keys = n + small_keys;

    std::fs::create_dir_all(&options.dir)
        .map_err(|e| format!("creating {}: {e}", options.dir.display()))?;
    let path = options
        .dir
        .join(format!("storage-bench-{}.dat", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let _file = FileGuard {
        path: path.clone(),
        keep: options.keep,
    };
    let index = index_config(options);
    index.validate().map_err(|e| format!("index config: {e}"))?;
    let _segments = SegmentsGuard {
        program: "storage-bench",
        config: index.clone(),
    };

    match &run.fio {
        Some(f) => eprintln!("storage-bench: {} found", f.version),
        None => eprintln!(
            "storage-bench: {} not found: the engine phases run, the fio baselines are skipped",
            options.fio
        ),
    }
    eprintln!(
        "storage-bench: {} records, file {} ({} MiB), queue depth {q}, {secs} s per phase",
        n,
        path.display(),
        run.layout.file_bytes / MIB
    );
    eprintln!("storage-bench: computing {total_keys} digests (not timed)");
    let digests = RECORDS.digests(total_keys as usize);
    let others_before = (Instant::now(), others_ticks());

    // 0. Prefill.
    eprintln!("storage-bench: prefill (zeros over the whole file)");
    let prefill_time = prefill(&path, &run.layout)?;
    let region_offset = HEADER_REGION_BYTES;
    let region_bytes = run.layout.region_bytes;

    // 1. fio sequential write, first half (the second half runs once the
    // file's records are no longer needed, at the very end).
    let seq_write = FioSpec {
        rw: "write",
        bs: "1M",
        iodepth: SEQ_WRITE_DEPTH,
        offset: region_offset,
        size: region_bytes,
        seconds: Some(if options.keep { secs } else { secs / 2.0 }),
    };
    if run.fio.is_some() {
        eprintln!("storage-bench: fio sequential write (first half)");
    }
    let fio_write_a = fio_job(run.fio.as_ref(), &path, seq_write)?;

    // 2. Format and load.
    eprintln!("storage-bench: format, load {n} records of {BIG_VALUE}-byte bins");
    let (ns, kind, format_time) = open_namespace(&path, &run.layout, options, &index)?;
    if !matches!(kind, StartKind::Cold { .. }) {
        return Err(format!("a fresh file must start cold: {kind:?}"));
    }
    // Known for segments this process created (an attach cannot tell).
    let index_huge = ns.index.stats().huge_pages;
    let mut core = new_core(&ns)?;
    let before = Snapshot::take(&ns);
    let loaded = drive(
        &mut core,
        &mut Load {
            records: RECORDS,
            digests: &digests,
            next: 0,
            end: n,
            value: |key| value_bytes(BIG_VALUE, key, 0),
        },
        q,
        None,
    )?;
    flush(&mut core)?;
    let load = before.delta(&ns);
    // Where the records are: the read span of each, and the end of the data.
    let unit = u64::from(ns.devices[0].device.info().min_io_bytes);
    let (mut span_sum, mut data_end, mut image_sum) = (0u64, 0u64, 0u64);
    for (key, digest) in digests[..n as usize].iter().enumerate() {
        let (offset, size) = engine_load::record_place(&ns, key, digest)?;
        let end = offset + size;
        span_sum += end.div_ceil(unit) * unit - offset / unit * unit;
        data_end = data_end.max(end.div_ceil(unit) * unit);
        image_sum += size;
    }
    if image_sum != n * run.layout.big_image {
        return Err(format!(
            "the index counts {image_sum} image bytes for {n} records, expected {} each",
            run.layout.big_image
        ));
    }
    if span_sum != n * run.layout.big_image {
        return Err(format!(
            "the records' aligned read spans add up to {span_sum} bytes, not one {}-byte unit each: some record crosses a unit boundary",
            run.layout.big_image
        ));
    }
    let span_per_read = span_sum as f64 / n as f64;
    let data_span = data_end - region_offset;
    run.note(format!(
        "verified load: {} records acknowledged ({} retried for device overload), {} image bytes each; {:.1} k records/s, {:.0} MB/s incl. flush; format (cold start on a blank device) {:.3} s; prefill {:.0} MB/s",
        loaded.finished,
        loaded.retries,
        run.layout.big_image,
        n as f64 / load.elapsed.as_secs_f64() / 1e3,
        (n * run.layout.big_image) as f64 / load.elapsed.as_secs_f64() / 1e6,
        format_time.as_secs_f64(),
        run.layout.file_bytes as f64 / prefill_time.as_secs_f64() / 1e6,
    ));
    shutdown(core, ns)?;

    // 3. Warm start.
    eprintln!("storage-bench: warm start");
    let (ns, kind, warm_time) = open_namespace(&path, &run.layout, options, &index)?;
    match kind {
        StartKind::Warm { entries } if entries == n => {}
        other => return Err(format!("expected a warm start with {n} entries: {other:?}")),
    }
    run.note(format!(
        "verified warm start: {n} index entries attached and walked in {:.3} s (projected to 10M records: {:.3} s); index on {}",
        warm_time.as_secs_f64(),
        warm_time.as_secs_f64() * WARM_TARGET_RECORDS / n as f64,
        if index_huge {
            "hugepages"
        } else {
            "normal pages (no hugepages reserved: scripts/setup-hugepages.sh)"
        }
    ));

    // 4. Random reads: fio 4k for half the time before the engine and half
    // after (drift of the device cancels).
    let randread = |bs: &'static str, seconds: f64| FioSpec {
        rw: "randread",
        bs,
        iodepth: q as u32,
        offset: region_offset,
        size: data_span,
        seconds: Some(seconds),
    };
    if run.fio.is_some() {
        eprintln!("storage-bench: fio random reads (4k, first half)");
    }
    let fio_read4k_a = fio_job(run.fio.as_ref(), &path, randread("4k", secs / 2.0))?;
    eprintln!("storage-bench: random reads ({q} in flight)");
    let mut core = new_core(&ns)?;
    let before = Snapshot::take(&ns);
    let gets = drive(
        &mut core,
        &mut RandomGets {
            records: RECORDS,
            digests: &digests,
            n,
            value_len: BIG_VALUE,
            rng: StdRng::seed_from_u64(SEED),
        },
        q,
        Some(seconds_from_now(secs)),
    )?;
    let reads = before.delta(&ns);
    let read_rate = gets.finished as f64 / reads.elapsed.as_secs_f64();
    if run.fio.is_some() {
        eprintln!("storage-bench: fio random reads (4k, second half)");
    }
    let fio_read4k_b = fio_job(run.fio.as_ref(), &path, randread("4k", secs / 2.0))?;
    let fio_read4k = fio_read4k_a.as_ref().zip(fio_read4k_b.as_ref());
    let fio_read4k_iops = fio_read4k.map(|(a, b)| (a.read_iops + b.read_iops) / 2.0);
    let io_per_read = reads
        .io
        .map(|(r, _)| r as f64 / gets.finished.max(1) as f64)
        .filter(|b| *b > 0.0);
    run.note(format!(
        "verified reads: {} gets, each returned its own key's {BIG_VALUE}-byte value ({BIG_IMAGE}-byte image); {} device reads, {} post-write cache hits, {} retries; bytes read per get: {} (index spans), {} (/proc/self/io), fio 4.00 KiB; fio 4k before/after the engine: {} / {} k IOPS; CPU: bench {}, fio 4k {}",
        gets.finished,
        reads.device_reads,
        reads.cache_hits,
        reads.read_retries,
        kib(span_per_read),
        io_per_read.map_or_else(|| "?".into(), kib),
        thousands(fio_read4k.map(|(a, _)| a.read_iops)),
        thousands(fio_read4k.map(|(_, b)| b.read_iops)),
        percent(reads.cpu_pct),
        percent(fio_read4k.map(|(a, b)| (a.cpu_pct + b.cpu_pct) / 2.0)),
    ));
    run.figures.push(Figure {
        name: READS,
        records: n,
        unit: Unit::OpsPerSecond,
        osprey: read_rate,
        baseline: run.baseline(fio_read4k_iops),
        baseline_what: "fio randread 4k IOPS",
        target: Target::RatioAtLeast(0.9),
    });

    // 5. Sustained 1 KiB writes.
    eprintln!("storage-bench: sustained 1 KiB writes over {small_keys} keys");
    let mut small_acked: Vec<Option<u32>> = vec![None; small_keys as usize];
    // One storage core per CPU core, as ospreyd runs them: this core's and
    // one more per extra core, each on its own thread, queue and open
    // buffer, over its own share of the keys. The extra cores flush what
    // they hold after the measured window (like the backlog, not timed).
    let write_cores = options.write_cores.max(1);
    let share = small_keys.div_ceil(write_cores as u64) as usize;
    let before = Snapshot::take(&ns);
    let deadline = seconds_from_now(secs);
    let written = std::thread::scope(|scope| -> Result<DriveStats, String> {
        let mut chunks = small_acked.chunks_mut(share);
        let mine = chunks.next().ok_or("no 1 KiB keys")?;
        let mut others = Vec::new();
        for (i, acked) in chunks.enumerate() {
            let (ns, digests) = (&ns, &digests);
            others.push(scope.spawn(move || -> Result<DriveStats, String> {
                let mut extra = new_core(ns)?;
                let mut cyclic = CyclicWrites {
                    digests,
                    first: n + ((i + 1) * share) as u64,
                    count: acked.len() as u64,
                    seq: 0,
                    acked,
                };
                let stats = drive(&mut extra, &mut cyclic, q, Some(deadline))?;
                extra.flush_all(TIMEOUT)?;
                Ok(stats)
            }));
        }
        let mut cyclic = CyclicWrites {
            digests: &digests,
            first: n,
            count: mine.len() as u64,
            seq: 0,
            acked: mine,
        };
        let mut total = drive(&mut core, &mut cyclic, q, Some(deadline))?;
        // Keep this core polling while the others flush: a core that stops
        // polling never writes its open buffer, and until it does the
        // blocks freed since its first unwritten record stay unusable — the
        // others' defrag (which flush_all drains) waited for a free block
        // for good on the small device of --quick.
        let mut out = Vec::new();
        while !others.iter().all(|o| o.is_finished()) {
            core.poll(&mut out);
            out.clear();
            std::thread::sleep(Duration::from_micros(200));
        }
        for other in others {
            let stats = other
                .join()
                .map_err(|_| "a write core panicked".to_string())??;
            total.finished += stats.finished;
            total.retries += stats.retries;
        }
        Ok(total)
    })?;
    let writes = before.delta(&ns);
    let small_image = ns
        .index
        .get(&digests[n as usize])
        .map(|r| r.size_bytes())
        .ok_or("the first 1 KiB key is not in the index")?;
    if small_image != run.layout.small_image {
        return Err(format!(
            "a 1 KiB record's image is {small_image} bytes, expected {}",
            run.layout.small_image
        ));
    }
    let client_bytes = written.finished * small_image;
    let write_rate = client_bytes as f64 / writes.elapsed.as_secs_f64();
    let small_written = small_acked.iter().filter(|s| s.is_some()).count() as u64;
    run.note(format!(
        "verified 1 KiB writes: {} acknowledged over {small_written} keys ({:.2} cycles) by {write_cores} storage cores, {} retried for device overload ({} of them waiting for a usable free block, the rest for the write backlog); {:.1} k records/s × {small_image} B over {:.3} s (not counting the write backlog still in flight at the end, at most {} MiB); device wrote {:.2} B per client byte ({} writes, {} defrag moves, {} blocks freed by defrag); old records loaded: {} from the post-write cache, {} from the device; CPU: bench {}, fio write {}",
        written.finished,
        written.finished as f64 / small_keys as f64,
        written.retries,
        writes.free_block_waits,
        written.finished as f64 / writes.elapsed.as_secs_f64() / 1e3,
        writes.elapsed.as_secs_f64(),
        (storage_config(&run.layout).max_write_cache_bytes + u64::from(WRITE_BLOCK_BYTES)) / MIB,
        writes.device_write_bytes as f64 / client_bytes.max(1) as f64,
        writes.device_writes,
        writes.defrag_moved,
        writes.defrag_freed,
        writes.cache_hits,
        writes.device_reads,
        percent(writes.cpu_pct),
        percent(fio_write_a.as_ref().map(|f| f.cpu_pct)),
    ));

    // 6. Write amplification under a 50/50 mix.
    let slot = &ns.devices[0];
    let capacity = u64::from(slot.wblocks.count()) * u64::from(slot.wblocks.wblock_bytes());
    let fill = slot.wblocks.used_bytes() as f64 / capacity as f64;
    eprintln!(
        "storage-bench: 50/50 gets and updates at {:.0}% full ({secs} s warm-up, {secs} s measured)",
        fill * 100.0
    );
    let mut versions = vec![0u32; n as usize];
    let mut mix = Mix {
        digests: &digests,
        n,
        rng: StdRng::seed_from_u64(SEED ^ 0x50_50),
        versions: &mut versions,
        busy: HashSet::with_capacity(q * 2),
        gets: 0,
        updates: 0,
    };
    let warm_up = Snapshot::take(&ns);
    drive(&mut core, &mut mix, q, Some(seconds_from_now(secs)))?;
    let warm_up = warm_up.delta(&ns);
    let warm_up_updates = mix.updates;
    let before = Snapshot::take(&ns);
    let (gets_before, updates_before) = (mix.gets, mix.updates);
    let mixed = drive(&mut core, &mut mix, q, Some(seconds_from_now(secs)))?;
    // Every acknowledged update's bytes reach the device before counting.
    let wa = before.delta(&ns);
    let (mix_gets, mix_updates) = (mix.gets - gets_before, mix.updates - updates_before);
    let client = mix_updates * run.layout.big_image;
    let amplification = wa.device_write_bytes as f64 / client.max(1) as f64;
    let warm_up_amplification =
        warm_up.device_write_bytes as f64 / (warm_up_updates * run.layout.big_image).max(1) as f64;
    let fill_after = slot.wblocks.used_bytes() as f64 / capacity as f64;
    run.note(format!(
        "verified 50/50: measured {mix_gets} gets (each returned the last acknowledged version) and {mix_updates} updates ({} retried), {:.1} k ops/s over {:.3} s, {:.2} updates per record; device {:.0} MB written for {:.0} MB of client images; defrag read {} blocks, moved {} records, freed {} blocks; records loaded by gets and updates: {} from the post-write cache, {} from the device; warm-up: {warm_up_updates} updates, amplification {warm_up_amplification:.2}; fill {:.1}% -> {:.1}%; CPU {}",
        mixed.retries,
        mixed.finished as f64 / wa.elapsed.as_secs_f64() / 1e3,
        wa.elapsed.as_secs_f64(),
        mix_updates as f64 / n as f64,
        wa.device_write_bytes as f64 / 1e6,
        client as f64 / 1e6,
        wa.defrag_reads,
        wa.defrag_moved,
        wa.defrag_freed,
        wa.cache_hits,
        wa.device_reads,
        fill * 100.0,
        fill_after * 100.0,
        percent(wa.cpu_pct),
    ));
    run.figures.push(Figure {
        name: WA,
        records: n,
        unit: Unit::Times,
        osprey: amplification,
        baseline: Baseline::NotApplicable,
        baseline_what: "none: fio has no live data to move",
        target: Target::None,
    });

    // 7. Crash-like stop and cold start, with fio's sequential read of the
    // same region before and after the scan (the faster one counts: this
    // disk's sequential rate moves with the host's caching).
    let seq_read = || FioSpec {
        rw: "read",
        bs: "1M",
        iodepth: SCAN_DEPTH,
        offset: region_offset,
        size: region_bytes,
        seconds: None,
    };
    if run.fio.is_some() {
        eprintln!("storage-bench: fio sequential read (before the scan)");
    }
    let fio_seq_before = fio_job(run.fio.as_ref(), &path, seq_read())?;
    eprintln!("storage-bench: crash-like stop (no shutdown), cold start");
    // Not flush_all: it also waits for the whole defrag queue, which drains
    // one block per flush-max-ms once client writes stop (see the report).
    // Polling past one flush-max-ms writes every acknowledged record.
    let quiet = Duration::from_millis(2 * run.layout.flush_max_ms);
    settle(&mut core, quiet);
    drop(core);
    drop(ns);
    let cpu_before = cpu_ticks();
    let (ns, kind, cold_time) = open_namespace(&path, &run.layout, options, &index)?;
    let cold_cpu = cpu_before
        .zip(cpu_ticks())
        .map(|(a, b)| (b - a) as f64 / USER_HZ / cold_time.as_secs_f64().max(1e-9) * 100.0);
    let scan = match kind {
        StartKind::Cold { scan, .. } => scan,
        other => {
            return Err(format!(
                "a stop without shutdown must start cold: {other:?}"
            ))
        }
    };
    if scan.unique != n + small_written {
        return Err(format!(
            "the cold start found {} records, {} were written ({scan:?})",
            scan.unique,
            n + small_written
        ));
    }
    let cold_rate = scan.bytes_scanned as f64 / cold_time.as_secs_f64();
    if run.fio.is_some() {
        eprintln!("storage-bench: fio sequential read (after the scan)");
    }
    let fio_seq = fio_job(run.fio.as_ref(), &path, seq_read())?;
    // Read back a sample: every record carries its last acknowledged version.
    let mut expected: Vec<(u64, usize, u32)> = Vec::new();
    let mut rng = StdRng::seed_from_u64(SEED ^ 0xC01D);
    let sample = |count: u64, rng: &mut StdRng| -> Vec<u64> {
        if count as usize <= VERIFY_SAMPLE {
            (0..count).collect()
        } else {
            (0..VERIFY_SAMPLE)
                .map(|_| rng.gen_range(0..count))
                .collect()
        }
    };
    for key in sample(n, &mut rng) {
        expected.push((key, BIG_VALUE, versions[key as usize]));
    }
    for i in sample(small_keys, &mut rng) {
        if let Some(seq) = small_acked[i as usize] {
            expected.push((n + i, SMALL_VALUE, seq));
        }
    }
    let checked = expected.len();
    let mut core = new_core(&ns)?;
    drive(
        &mut core,
        &mut Verify {
            digests: &digests,
            keys: expected,
            next: 0,
        },
        q,
        None,
    )?;
    run.note(format!(
        "verified cold start: {} unique records found ({} images read, {} replaced, {} older, {} bad), {:.0} MB scanned in {:.3} s (open {:.3} s, CPU {} of one core); {checked} records read back with their last acknowledged version; fio sequential read before/after the scan: {} / {} MB/s",
        scan.unique,
        scan.records_read,
        scan.replaced,
        scan.older,
        scan.bad_images,
        scan.bytes_scanned as f64 / 1e6,
        scan.elapsed.as_secs_f64(),
        cold_time.as_secs_f64(),
        percent(cold_cpu),
        fio_seq_before
            .as_ref()
            .map_or_else(|| "?".into(), |f| format!("{:.0}", f.read_bw / 1e6)),
        fio_seq
            .as_ref()
            .map_or_else(|| "?".into(), |f| format!("{:.0}", f.read_bw / 1e6)),
    ));
    if options.keep {
        // A clean shutdown: the kept file's headers are trusted.
        flush(&mut core)?;
        shutdown(core, ns)?;
    } else {
        // The file goes: another crash-like stop spares the defrag drain.
        settle(&mut core, quiet);
        drop(core);
        drop(ns);
    }

    // 1 (continued). fio sequential write, second half: the data is no
    // longer needed (with --keep it is, and the first half ran the whole
    // time). The baseline is the mean of the halves, as for random reads:
    // this disk's write rate drifts by half between runs.
    if run.fio.is_some() && !options.keep {
        eprintln!("storage-bench: fio sequential write (second half)");
    }
    let fio_write_b = if options.keep {
        None
    } else {
        fio_job(run.fio.as_ref(), &path, seq_write)?
    };
    let fio_write_bw = fio_write_a.as_ref().map(|a| {
        fio_write_b
            .as_ref()
            .map_or(a.write_bw, |b| (a.write_bw + b.write_bw) / 2.0)
    });
    if let Some(a) = &fio_write_a {
        run.note(format!(
            "fio sequential write before the load / at the end: {:.0} / {} MB/s",
            a.write_bw / 1e6,
            fio_write_b.as_ref().map_or_else(
                || "skipped (--keep)".into(),
                |b| format!("{:.0}", b.write_bw / 1e6)
            ),
        ));
    }
    run.figures.push(Figure {
        name: WRITES,
        records: n,
        unit: Unit::BytesPerSecond,
        osprey: write_rate,
        baseline: run.baseline(fio_write_bw),
        baseline_what: "fio write 1M QD4 bandwidth",
        target: Target::RatioAtLeast(0.8),
    });
    let fio_seq_bw = fio_seq_before
        .as_ref()
        .zip(fio_seq.as_ref())
        .map(|(a, b)| a.read_bw.max(b.read_bw));
    run.figures.push(Figure {
        name: COLD,
        records: n,
        unit: Unit::BytesPerSecond,
        osprey: cold_rate,
        baseline: run.baseline(fio_seq_bw),
        baseline_what: "fio read 1M QD8 bandwidth",
        target: Target::RatioAtLeast(0.7),
    });
    let warm_target = n as f64 / WARM_TARGET_RECORDS;
    run.figures.push(Figure {
        name: WARM,
        records: n,
        unit: Unit::Seconds,
        osprey: warm_time.as_secs_f64(),
        baseline: run.baseline(fio_seq_bw.map(|bw| region_bytes as f64 / bw)),
        baseline_what: "fio time to read the device once (a cold start's floor)",
        target: Target::AtMost {
            target: warm_target,
            note: "1 s at 10M, linear",
        },
    });
    // Table order: the brief's.
    let order = [READS, WRITES, COLD, WARM, WA];
    run.figures
        .sort_by_key(|f| order.iter().position(|o| *o == f.name));

    println!();
    println!(
        "storage-bench: seed {SEED:#x}; {n} records of {} B images, 1 KiB phase over {small_keys} keys of {} B; file {} MiB ({} write blocks of 1 MiB); queue depth {q}; {secs} s per phase; key base {:#x}; {}",
        run.layout.big_image,
        run.layout.small_image,
        run.layout.file_bytes / MIB,
        region_bytes / MIB,
        options.shm_key_base,
        run.fio.as_ref().map_or("fio not installed", |f| f.version.as_str()),
    );
    if run.fio.is_some() {
        println!("baselines (same file, same run):");
        for job in [
            &fio_write_a,
            &fio_read4k_a,
            &fio_read4k_b,
            &fio_seq_before,
            &fio_seq,
            &fio_write_b,
        ]
        .into_iter()
        .flatten()
        {
            println!("  {}", job.command);
        }
    }
    run.others_pct = others_before.1.zip(others_ticks()).map(|(a, b)| {
        (b.saturating_sub(a)) as f64 / USER_HZ / others_before.0.elapsed().as_secs_f64() * 100.0
    });
    println!(
        "other processes on the host: {} of one core on average during the run ({} cores; /proc/stat; more than a few % makes the figures suspect)",
        percent(run.others_pct),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("ratio = osprey / baseline; targets are informational\n");
    let (rows, skipped): (Vec<&Figure>, Vec<&Figure>) = run
        .figures
        .iter()
        .partition(|f| !matches!(f.baseline, Baseline::Skipped));
    print_table(&rows);
    for f in skipped {
        println!(
            "skipped: fio not installed: {} (osprey {}; the baseline would be the {})",
            f.name,
            f.format_value(f.osprey),
            f.baseline_what
        );
    }
    if let Some(path) = &options.json {
        write_json(path, &run)?;
        eprintln!("storage-bench: wrote {}", path.display());
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse_options(&args) {
        Ok(options) => options,
        Err(Usage(message)) => {
            eprintln!("storage-bench: {message} (try --help)");
            std::process::exit(2);
        }
    };
    if let Err(message) = run(&options) {
        eprintln!("storage-bench: error: {message}");
        std::process::exit(1);
    }
}
