//! `index-bench`: the primary index's figures, each printed next to a baseline
//! measured in the same run on the same keys.
//!
//! What is measured, for every record count N of `--records`:
//!
//! 1. **inserts/s and lookups/s on one thread.** N 20-byte digests
//!    (`Digest::compute("bench", Integer(i))`, computed before any timing) are
//!    put into a fresh Osprey index, then looked up in a seeded random order
//!    (three rounds of at least 200,000 lookups each, interleaved with the
//!    baseline's rounds; the median round counts). The baseline is a
//!    `std::collections::HashMap<[u8; 20], Meta>` with the default SipHash
//!    hasher, fed the same keys in the same orders, where `Meta` is a 32-byte
//!    `Copy` struct carrying the same metadata as an index entry. It is the
//!    structure a process would use if the index did not have to live in
//!    shared memory, so the ratio (osprey ÷ HashMap) is what shared memory
//!    and red-black trees cost. The issue's target: lookups at 10M entries at
//!    least 0.5 of the HashMap's rate. The sprig count (trees per partition)
//!    is the lever, so at the largest N the lookups are repeated for each
//!    `--sprig-sweep` count (the `--sprigs` count reuses the main figures),
//!    each next to HashMap rounds of its own, with the bytes per record each
//!    count costs.
//! 2. **warm attach + walk.** The filled index is marked trusted and detached,
//!    then `Index::attach` is timed: it maps every segment, checks the
//!    header, and walks the whole arena with `walk_threads` threads to
//!    rebuild the counters (the callback does nothing). The baseline is the
//!    time the HashMap insert pass took: what a process without shared memory
//!    pays just to build its index from keys already in memory, before reading
//!    a byte of flash. Target ≤ 0.2 s at 10M entries, never above 1 s.
//! 3. **bytes/record.** From `Index::stats()`: bytes in use (meta segment plus
//!    the used part of the arena) and bytes reserved (meta plus whole stage
//!    segments), each ÷ records; and the resident bytes of the segments as
//!    the kernel reports them in `/proc/sysvipc/shm`, ÷ records. The baseline
//!    is the HashMap's heap estimated from its table: buckets × (size of a
//!    `([u8; 20], Meta)` slot + 1 control byte) ÷ len, with buckets derived
//!    from `capacity()` (hashbrown keeps 1/8 of the buckets empty). Target
//!    ≤ 64 bytes in use per record at 10M.
//!
//! Every lookup must find its key (and the same metadata), the walk must see
//! exactly N entries: otherwise the bench stops with exit code 1. Targets are
//! informational (PASS/MISS); the exit code is 0 whatever they say. Bad flags
//! exit with code 2. The segments are removed at the end and on every error
//! path (a guard's `Drop`), so `ipcs -m` is clean afterwards, except after a
//! kill by signal.
//!
//! ```text
//! index-bench [--records 1000000,10000000] [--sprigs 256]
//!             [--sprig-sweep 256,1024,4096] [--pages auto|huge|normal]
//!             [--stage-size-mib 1024] [--shm-key-base 0x5A..] [--quick]
//!             [--json PATH]
//! ```
#![deny(unsafe_code)]

use std::collections::HashMap;
use std::fmt::Write as _;

use osprey_perf::flags::{parse_in, parse_list, parse_number, Usage};
use osprey_perf::json_string;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use osprey_engine::index::config::MAX_STAGES;
use osprey_engine::index::layout::ENTRY_SIZE;
use osprey_engine::index::{IndexConfig, IndexStats, PageMode};
use osprey_engine::{Digest, Index, IndexRecord, Location};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// Lookup timing: the median of this many rounds...
const LOOKUP_ROUNDS: usize = 3;
/// ...each of at least this many lookups (several passes when N is small).
const MIN_LOOKUPS_PER_ROUND: usize = 200_000;
/// Seed of the lookup orders.
const SEED: u64 = 0x05B2_E7BE_0000_0001;
/// The shutdown id the bench's "clean shutdown" records and attach checks.
const SHUTDOWN_ID: u64 = 0x5EED_0F05_B2E7_0001;
const NAMESPACE_ID: u32 = 1;
const MAX_STAGES_WANTED: u32 = 128;
/// Last-update times of the bench records (some day in 2024, ms since 2010).
const BASE_LAST_UPDATE_MS: u64 = 441_763_200_000;

const USAGE: &str = "usage: index-bench [--records N[,N..]] [--sprigs S] [--sprig-sweep S[,S..]] \
[--pages auto|huge|normal] [--stage-size-mib M] [--shm-key-base K] [--quick] [--json PATH]";

// ---- options --------------------------------------------------------------

struct Options {
    records: Vec<usize>,
    sprigs: u32,
    sweep: Vec<u32>,
    pages: PageMode,
    stage_size_bytes: u64,
    shm_key_base: u32,
    json: Option<PathBuf>,
    quick: bool,
}

fn parse_sprigs(flag: &str, value: u64) -> Result<u32, Usage> {
    if value == 0 || value > 4096 || !value.is_power_of_two() {
        return Err(Usage(format!(
            "{flag}: {value} must be a power of two in 1..=4096"
        )));
    }
    Ok(value as u32)
}

fn default_key_base() -> u32 {
    // 0x5A00_0000..=0x5AFF_0000: clear of the tests' 0x2000_0000..0x3000_0000
    // and of the default 0x4F50_0000; the top namespace key stays < i32::MAX.
    0x5A00_0000 + ((std::process::id() & 0xFF) << 16)
}

fn parse_options(args: &[String]) -> Result<Options, Usage> {
    let mut records = None;
    let mut sprigs = None;
    let mut sweep = None;
    let mut pages = None;
    let mut stage_mib = None;
    let mut shm_key_base = None;
    let mut json = None;
    let mut quick = false;
    osprey_perf::flags::parse_args(
        args,
        USAGE,
        &mut [("--quick", &mut quick)],
        &[
            "--records",
            "--sprigs",
            "--sprig-sweep",
            "--pages",
            "--stage-size-mib",
            "--shm-key-base",
            "--json",
        ],
        |flag, value| {
            match flag {
                "--records" => {
                    let list = parse_list(flag, &value)?;
                    if list.is_empty() || list.contains(&0) {
                        return Err(Usage(format!(
                            "{flag}: {value:?} must list record counts above 0"
                        )));
                    }
                    records = Some(list.into_iter().map(|n| n as usize).collect::<Vec<_>>());
                }
                "--sprigs" => sprigs = Some(parse_sprigs(flag, parse_number(flag, &value)?)?),
                "--sprig-sweep" => {
                    sweep = Some(
                        parse_list(flag, &value)?
                            .into_iter()
                            .map(|s| parse_sprigs(flag, s))
                            .collect::<Result<Vec<_>, _>>()?,
                    )
                }
                "--pages" => {
                    pages = Some(PageMode::parse(&value).ok_or_else(|| {
                        Usage(format!(
                            "{flag}: {value:?} is not one of auto, huge, normal"
                        ))
                    })?)
                }
                "--stage-size-mib" => {
                    let mib = parse_in(flag, &value, 1..=16 * 1024)?;
                    stage_mib = Some(mib);
                }
                "--shm-key-base" => {
                    let base = parse_number(flag, &value)?;
                    shm_key_base = Some(
                        u32::try_from(base)
                            .map_err(|_| Usage(format!("{flag}: {value} does not fit 32 bits")))?,
                    );
                }
                "--json" => json = Some(PathBuf::from(value)),
                _ => unreachable!("flag list and match disagree"),
            }
            Ok(())
        },
    )?;
    let options = Options {
        records: records.unwrap_or_else(|| {
            if quick {
                vec![20_000]
            } else {
                vec![1_000_000, 10_000_000]
            }
        }),
        sprigs: sprigs.unwrap_or(256),
        sweep: sweep.unwrap_or_else(|| {
            if quick {
                vec![16, 64]
            } else {
                vec![256, 1024, 4096]
            }
        }),
        pages: pages.unwrap_or(PageMode::Auto),
        stage_size_bytes: stage_mib.unwrap_or(if quick { 1 } else { 1024 }) << 20,
        shm_key_base: shm_key_base.unwrap_or_else(default_key_base),
        json,
        quick,
    };
    // Every config the run will use must be valid and hold the largest N.
    let largest = options.records.iter().copied().max().unwrap_or(0);
    for sprigs in std::iter::once(options.sprigs).chain(options.sweep.iter().copied()) {
        let config = index_config(&options, sprigs);
        config
            .validate()
            .map_err(|e| Usage(format!("invalid index config: {e}")))?;
        let capacity = u64::from(config.max_stages) * u64::from(config.entries_per_stage()) - 1;
        if largest as u64 > capacity {
            return Err(Usage(format!(
                "--records {largest} does not fit {} stages of {} entries; raise --stage-size-mib",
                config.max_stages,
                config.entries_per_stage()
            )));
        }
    }
    Ok(options)
}

fn index_config(options: &Options, sprigs: u32) -> IndexConfig {
    let per_stage = (options.stage_size_bytes / ENTRY_SIZE as u64).max(1);
    // Stages × entries per stage must stay within the 2^32 handles.
    let max_stages = (u64::from(u32::MAX) / per_stage)
        .min(u64::from(MAX_STAGES_WANTED))
        .min(u64::from(MAX_STAGES)) as u32;
    IndexConfig {
        namespace_id: NAMESPACE_ID,
        shm_key_base: options.shm_key_base,
        pages: options.pages,
        sprigs_per_partition: sprigs,
        stage_size_bytes: options.stage_size_bytes,
        max_stages: max_stages.max(1),
        walk_threads: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(256),
    }
}

fn page_mode_name(mode: PageMode) -> &'static str {
    match mode {
        PageMode::Auto => "auto",
        PageMode::Huge => "huge",
        PageMode::Normal => "normal",
    }
}

// ---- segments -------------------------------------------------------------

/// Removes every segment of `config` when dropped, so that an early return
/// or a panic leaves `ipcs -m` clean. Declare it before the `Index` it
/// guards: the index must be detached (dropped) first.
struct SegmentsGuard(IndexConfig);

impl Drop for SegmentsGuard {
    fn drop(&mut self) {
        if let Err(e) = Index::destroy_segments(&self.0) {
            eprintln!(
                "index-bench: could not remove the segments of key base {:#x}: {e}",
                self.0.shm_key_base
            );
        }
    }
}

/// Resident bytes of the index's segments, from `/proc/sysvipc/shm`.
fn segments_rss(config: &IndexConfig, stats: &IndexStats) -> Result<u64, String> {
    let keys: Vec<i64> = std::iter::once(config.meta_key())
        .chain((0..stats.stages).map(|s| config.stage_key(s)))
        .map(i64::from)
        .collect();
    let text = std::fs::read_to_string("/proc/sysvipc/shm")
        .map_err(|e| format!("reading /proc/sysvipc/shm: {e}"))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    let column = |name: &str| {
        header
            .iter()
            .position(|c| *c == name)
            .ok_or_else(|| format!("/proc/sysvipc/shm has no {name} column"))
    };
    let (key_col, rss_col) = (column("key")?, column("rss")?);
    let mut total = 0u64;
    let mut seen = 0usize;
    for line in lines {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (Some(key), Some(rss)) = (cols.get(key_col), cols.get(rss_col)) else {
            continue;
        };
        if key.parse::<i64>().is_ok_and(|k| keys.contains(&k)) {
            total += rss
                .parse::<u64>()
                .map_err(|_| format!("/proc/sysvipc/shm: bad rss {rss:?}"))?;
            seen += 1;
        }
    }
    if seen != keys.len() {
        return Err(format!(
            "/proc/sysvipc/shm lists {seen} of the index's {} segments",
            keys.len()
        ));
    }
    Ok(total)
}

// ---- the structures under test --------------------------------------------

/// The baseline's value: the metadata an index entry carries, 32 bytes.
/// Only its size and its copy matter; one field is read back as a check.
#[derive(Clone, Copy)]
#[allow(dead_code)]
struct Meta {
    rblock_id: u64,
    last_update_ms: u64,
    void_time: u32,
    n_rblocks: u32,
    generation: u16,
    set_id: u16,
    device: u8,
    flags: u8,
}

const _: () = assert!(std::mem::size_of::<Meta>() == 32);

type Map = HashMap<[u8; 20], Meta>;

fn n_rblocks_of(i: usize) -> u32 {
    4 + (i % 8) as u32
}

fn record_of(i: usize, digest: Digest) -> IndexRecord {
    IndexRecord {
        digest,
        location: Location {
            device: (i % 4) as u8,
            rblock_id: i as u64 * 12,
            n_rblocks: n_rblocks_of(i),
        },
        generation: 1,
        void_time: 0,
        last_update_ms: BASE_LAST_UPDATE_MS + i as u64,
        set_id: 0,
        tombstone: false,
        key_stored: false,
    }
}

fn meta_of(i: usize) -> Meta {
    Meta {
        rblock_id: i as u64 * 12,
        last_update_ms: BASE_LAST_UPDATE_MS + i as u64,
        void_time: 0,
        n_rblocks: n_rblocks_of(i),
        generation: 1,
        set_id: 0,
        device: (i % 4) as u8,
        flags: 0,
    }
}

/// What one lookup pass saw.
struct Lookups {
    elapsed: Duration,
    found: usize,
    /// Sum of the n_rblocks found: equals the inserted sum when every lookup
    /// returned its own record.
    checksum: u64,
}

fn compute_digests(n: usize) -> Vec<Digest> {
    osprey_perf::engine_load::compute_digests("bench", n)
}

#[inline(never)]
fn map_insert(keys: &[Digest]) -> Result<(Map, Duration), String> {
    let started = Instant::now();
    let mut map = Map::new();
    let mut replaced = 0usize;
    for (i, d) in keys.iter().enumerate() {
        replaced += usize::from(map.insert(d.0, meta_of(i)).is_some());
    }
    let elapsed = started.elapsed();
    if replaced != 0 || map.len() != keys.len() {
        return Err(format!(
            "HashMap: {replaced} of {} inserts replaced a key",
            keys.len()
        ));
    }
    Ok((map, elapsed))
}

// Inlined into its one caller on purpose: LLVM then inlines SipHash into the
// loop, and the HashMap's lookups run ~1.5× faster than with an out-of-line
// `hash_one` call (measured at 1M entries). The baseline is the stronger one.
#[inline(always)]
fn map_lookup(map: &Map, order: &[Digest]) -> Lookups {
    let started = Instant::now();
    let mut found = 0usize;
    let mut checksum = 0u64;
    for d in order {
        if let Some(meta) = black_box(map.get(&d.0)) {
            found += 1;
            checksum += u64::from(meta.n_rblocks);
        }
    }
    let elapsed = started.elapsed();
    Lookups {
        elapsed,
        found: black_box(found),
        checksum: black_box(checksum),
    }
}

#[inline(never)]
fn osprey_insert(index: &Index, keys: &[Digest]) -> Result<Duration, String> {
    let started = Instant::now();
    let mut replaced = 0usize;
    for (i, d) in keys.iter().enumerate() {
        let old = index
            .put(record_of(i, *d))
            .map_err(|e| format!("insert {i} of {}: {e}", keys.len()))?;
        replaced += usize::from(old.is_some());
    }
    let elapsed = started.elapsed();
    if replaced != 0 {
        return Err(format!(
            "Osprey index: {replaced} of {} inserts replaced a key",
            keys.len()
        ));
    }
    Ok(elapsed)
}

#[inline(never)]
fn osprey_lookup(index: &Index, order: &[Digest]) -> Lookups {
    let started = Instant::now();
    let mut found = 0usize;
    let mut checksum = 0u64;
    for d in order {
        if let Some(record) = black_box(index.get(d)) {
            // The digest check costs little: the record is in registers.
            if record.digest == *d {
                found += 1;
                checksum += u64::from(record.location.n_rblocks);
            }
        }
    }
    let elapsed = started.elapsed();
    Lookups {
        elapsed,
        found: black_box(found),
        checksum: black_box(checksum),
    }
}

fn check_lookups(what: &str, seen: &Lookups, n: usize, checksum: u64) -> Result<(), String> {
    if seen.found != n || seen.checksum != checksum {
        return Err(format!(
            "{what}: lookups found {}/{n} keys (metadata checksum {} != {checksum})",
            seen.found, seen.checksum
        ));
    }
    Ok(())
}

/// Lookup rates of both structures over the same order.
struct LookupRates {
    osprey: f64,
    map: f64,
    /// The fewest keys any pass found (each pass must find all n).
    osprey_found: usize,
    map_found: usize,
    passes: usize,
}

/// Times `LOOKUP_ROUNDS` rounds; a round is `passes` passes over `order`
/// through the Osprey index and as many through the HashMap, alternating
/// which goes first. Reports each structure's median round: on the 2-core
/// dev VM single passes move by up to ±20%.
fn lookup_rates(
    index: &Index,
    map: &Map,
    order: &[Digest],
    checksum: u64,
) -> Result<LookupRates, String> {
    let n = order.len();
    let passes = (MIN_LOOKUPS_PER_ROUND / n).max(1);
    let mut osprey = Vec::new();
    let mut hashmap = Vec::new();
    let (mut osprey_found, mut map_found) = (n, n);
    for round in 0..LOOKUP_ROUNDS {
        for osprey_turn in [round % 2 == 0, round % 2 == 1] {
            let mut elapsed = Duration::ZERO;
            for _ in 0..passes {
                let seen = if osprey_turn {
                    let seen = osprey_lookup(index, order);
                    check_lookups("Osprey index", &seen, n, checksum)?;
                    osprey_found = osprey_found.min(seen.found);
                    seen
                } else {
                    let seen = map_lookup(map, order);
                    check_lookups("HashMap", &seen, n, checksum)?;
                    map_found = map_found.min(seen.found);
                    seen
                };
                elapsed += seen.elapsed;
            }
            let rates = if osprey_turn {
                &mut osprey
            } else {
                &mut hashmap
            };
            rates.push(rate(n * passes, elapsed));
        }
    }
    let millions = |rates: &[f64]| {
        rates
            .iter()
            .map(|r| format!("{:.2}", r / 1e6))
            .collect::<Vec<_>>()
            .join(" ")
    };
    eprintln!(
        "index-bench:   lookup rounds (M/s): osprey {}; hashmap {}",
        millions(&osprey),
        millions(&hashmap)
    );
    Ok(LookupRates {
        osprey: median(osprey),
        map: median(hashmap),
        osprey_found,
        map_found,
        passes: LOOKUP_ROUNDS * passes,
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The HashMap's heap: buckets × (slot + 1 control byte).
fn map_heap_bytes(map: &Map) -> u64 {
    let capacity = map.capacity();
    let buckets = match capacity {
        0 => 0,
        1..=7 => (capacity + 1).next_power_of_two(),
        _ => (capacity * 8 / 7).next_power_of_two(),
    };
    (buckets * (std::mem::size_of::<([u8; 20], Meta)>() + 1)) as u64
}

fn rate(ops: usize, elapsed: Duration) -> f64 {
    ops as f64 / elapsed.as_secs_f64().max(1e-9)
}

// ---- figures --------------------------------------------------------------

#[derive(Clone, Copy)]
enum Unit {
    PerSecond,
    Seconds,
    Bytes,
}

#[derive(Clone, Copy)]
enum Target {
    None,
    /// osprey ÷ baseline at least this.
    RatioAtLeast(f64),
    /// osprey at most `target`, and never above `limit`.
    AtMost {
        target: f64,
        limit: Option<f64>,
    },
}

struct Figure {
    name: &'static str,
    records: usize,
    sprigs: u32,
    unit: Unit,
    osprey: f64,
    baseline: f64,
    baseline_what: &'static str,
    target: Target,
}

impl Figure {
    fn ratio(&self) -> f64 {
        self.osprey / self.baseline
    }

    fn format_value(&self, value: f64) -> String {
        match self.unit {
            Unit::PerSecond => format!("{:.2} M/s", value / 1e6),
            Unit::Seconds => format!("{value:.3} s"),
            Unit::Bytes => format!("{value:.1} B"),
        }
    }

    fn target_text(&self) -> String {
        match self.target {
            Target::None => "-".into(),
            Target::RatioAtLeast(r) => format!("ratio >= {r:.2}"),
            Target::AtMost { target, limit } => {
                let mut text = format!("<= {}", self.format_value(target));
                if let Some(limit) = limit {
                    let _ = write!(text, " (max {})", self.format_value(limit));
                }
                text
            }
        }
    }

    fn result(&self) -> &'static str {
        match self.target {
            Target::None => "-",
            Target::RatioAtLeast(r) if self.ratio() >= r => "PASS",
            Target::RatioAtLeast(_) => "MISS",
            Target::AtMost { target, .. } if self.osprey <= target => "PASS",
            Target::AtMost {
                limit: Some(limit), ..
            } if self.osprey > limit => "MISS>MAX",
            Target::AtMost { .. } => "MISS",
        }
    }
}

fn print_table(figures: &[Figure]) {
    let rows: Vec<[String; 8]> = figures
        .iter()
        .map(|f| {
            [
                f.name.to_string(),
                f.records.to_string(),
                f.sprigs.to_string(),
                f.format_value(f.osprey),
                f.format_value(f.baseline),
                format!("{:.2}", f.ratio()),
                f.target_text(),
                f.result().to_string(),
            ]
        })
        .collect();
    let header = [
        "figure", "records", "sprigs", "osprey", "baseline", "ratio", "target", "result",
    ];
    osprey_perf::print_table(&header, &rows, &[0, 6, 7]);
}

fn json_number(value: f64) -> String {
    if value.is_finite() {
        format!("{value}")
    } else {
        "null".into()
    }
}

fn write_json(
    path: &PathBuf,
    options: &Options,
    huge_pages: bool,
    figures: &[Figure],
) -> Result<(), String> {
    let config = index_config(options, options.sprigs);
    let mut out = String::new();
    let _ = writeln!(out, "{{");
    let _ = writeln!(out, "  \"bench\": \"index-bench\",");
    let _ = writeln!(out, "  \"quick\": {},", options.quick);
    let _ = writeln!(out, "  \"seed\": {SEED},");
    let _ = writeln!(
        out,
        "  \"config\": {{\"sprigs\": {}, \"pages\": {}, \"huge_pages\": {huge_pages}, \"stage_size_bytes\": {}, \"max_stages\": {}, \"walk_threads\": {}, \"shm_key_base\": {}}},",
        options.sprigs,
        json_string(page_mode_name(options.pages)),
        options.stage_size_bytes,
        config.max_stages,
        config.walk_threads,
        options.shm_key_base
    );
    let _ = writeln!(out, "  \"figures\": [");
    for (i, f) in figures.iter().enumerate() {
        let unit = match f.unit {
            Unit::PerSecond => "ops/s",
            Unit::Seconds => "s",
            Unit::Bytes => "bytes",
        };
        let _ = write!(
            out,
            "    {{\"name\": {}, \"records\": {}, \"sprigs\": {}, \"unit\": {}, \"osprey\": {}, \"baseline\": {}, \"baseline_what\": {}, \"ratio\": {}, \"target\": {}, \"result\": {}}}",
            json_string(f.name),
            f.records,
            f.sprigs,
            json_string(unit),
            json_number(f.osprey),
            json_number(f.baseline),
            json_string(f.baseline_what),
            json_number(f.ratio()),
            json_string(&f.target_text()),
            json_string(f.result())
        );
        let _ = writeln!(out, "{}", if i + 1 < figures.len() { "," } else { "" });
    }
    let _ = writeln!(out, "  ]");
    let _ = writeln!(out, "}}");
    std::fs::write(path, out).map_err(|e| format!("writing {}: {e}", path.display()))
}

// ---- the run --------------------------------------------------------------

const MAP_NAME: &str = "HashMap<[u8;20],Meta> SipHash";
const MAP_HEAP: &str = "HashMap heap estimate";

struct Run<'a> {
    options: &'a Options,
    figures: Vec<Figure>,
    huge_pages: bool,
}

/// The lookup figures of one sprig count at the sweep's N.
#[derive(Clone, Copy)]
struct SprigPoint {
    osprey_lookups: f64,
    map_lookups: f64,
    bytes_in_use: f64,
}

impl Run<'_> {
    fn bench_size(&mut self, keys: &[Digest], sweep: bool) -> Result<(), String> {
        let n = keys.len();
        let sprigs = self.options.sprigs;
        let checksum: u64 = (0..n).map(|i| u64::from(n_rblocks_of(i))).sum();
        let mut order = keys.to_vec();
        order.shuffle(&mut StdRng::seed_from_u64(SEED ^ n as u64));

        eprintln!("index-bench: N={n}: HashMap inserts");
        let (map, map_build) = map_insert(keys)?;
        let map_bytes = map_heap_bytes(&map) as f64 / n as f64;

        eprintln!("index-bench: N={n}: Osprey inserts (sprigs {sprigs})");
        let config = index_config(self.options, sprigs);
        let guard = SegmentsGuard(config.clone());
        let index = Index::create(&config).map_err(|e| e.to_string())?;
        let insert = osprey_insert(&index, keys)?;
        eprintln!("index-bench: N={n}: lookups, both structures");
        let lookups = lookup_rates(&index, &map, &order, checksum)?;
        let stats = index.stats();
        if stats.records != n as u64 || stats.entries_in_use != n as u64 {
            return Err(format!(
                "Osprey index: stats count {} records, {} entries after {n} inserts",
                stats.records, stats.entries_in_use
            ));
        }
        self.huge_pages |= stats.huge_pages;
        let rss = segments_rss(&config, &stats)?;

        eprintln!("index-bench: N={n}: mark trusted, warm attach");
        index.mark_trusted(SHUTDOWN_ID);
        let started = Instant::now();
        let (index, summary) = Index::attach(&config, Some(SHUTDOWN_ID), &|_record| {})
            .map_err(|e| format!("warm attach: {e}"))?;
        let attach = started.elapsed();
        if summary.entries != n as u64 || summary.records != n as u64 || index.len() != n as u64 {
            return Err(format!(
                "warm attach: the walk saw {} entries ({} records), the index counts {}, {n} were inserted",
                summary.entries,
                summary.records,
                index.len()
            ));
        }
        index.destroy().map_err(|e| e.to_string())?;
        drop(guard);

        println!(
            "verified records={n} sprigs={sprigs}: osprey lookups found {}/{n}, hashmap lookups found {}/{n} (each of {} passes), walk entries {}/{n} (walk {:.3} s of the attach)",
            lookups.osprey_found,
            lookups.map_found,
            lookups.passes,
            summary.entries,
            summary.elapsed.as_secs_f64()
        );
        let figure = |name, unit, osprey, baseline, baseline_what, target| Figure {
            name,
            records: n,
            sprigs,
            unit,
            osprey,
            baseline,
            baseline_what,
            target,
        };
        let per_record = |bytes: u64| bytes as f64 / n as f64;
        self.figures.extend([
            figure(
                "inserts/s (1 thread)",
                Unit::PerSecond,
                rate(n, insert),
                rate(n, map_build),
                MAP_NAME,
                Target::None,
            ),
            figure(
                "lookups/s (1 thread)",
                Unit::PerSecond,
                lookups.osprey,
                lookups.map,
                MAP_NAME,
                Target::RatioAtLeast(0.5),
            ),
            figure(
                "warm attach + walk",
                Unit::Seconds,
                attach.as_secs_f64(),
                map_build.as_secs_f64(),
                "HashMap build from keys in memory",
                Target::AtMost {
                    target: 0.2,
                    limit: Some(1.0),
                },
            ),
            figure(
                "bytes/record in use",
                Unit::Bytes,
                per_record(stats.shm_bytes_in_use),
                map_bytes,
                MAP_HEAP,
                Target::AtMost {
                    target: 64.0,
                    limit: None,
                },
            ),
            figure(
                "bytes/record reserved",
                Unit::Bytes,
                per_record(stats.shm_bytes_reserved),
                map_bytes,
                MAP_HEAP,
                Target::None,
            ),
            figure(
                "bytes/record rss",
                Unit::Bytes,
                per_record(rss),
                map_bytes,
                MAP_HEAP,
                Target::None,
            ),
        ]);

        if sweep {
            let main = SprigPoint {
                osprey_lookups: lookups.osprey,
                map_lookups: lookups.map,
                bytes_in_use: per_record(stats.shm_bytes_in_use),
            };
            self.sprig_sweep(keys, &order, &map, checksum, main)?;
        }
        Ok(())
    }

    /// Lookups (and bytes in use) at each sweep sprig count, each next to
    /// HashMap lookups timed in the same rounds. The main sprig count's
    /// figures are taken from the main measurement rather than built again.
    fn sprig_sweep(
        &mut self,
        keys: &[Digest],
        order: &[Digest],
        map: &Map,
        checksum: u64,
        main: SprigPoint,
    ) -> Result<(), String> {
        let n = keys.len();
        let map_bytes = map_heap_bytes(map) as f64 / n as f64;
        for &sprigs in &self.options.sweep {
            let point = if sprigs == self.options.sprigs {
                main
            } else {
                eprintln!("index-bench: N={n}: sprig sweep, sprigs {sprigs}");
                let config = index_config(self.options, sprigs);
                let guard = SegmentsGuard(config.clone());
                let index = Index::create(&config).map_err(|e| e.to_string())?;
                osprey_insert(&index, keys)?;
                let lookups = lookup_rates(&index, map, order, checksum)?;
                let stats = index.stats();
                index.destroy().map_err(|e| e.to_string())?;
                drop(guard);
                println!(
                    "verified sweep records={n} sprigs={sprigs}: osprey lookups found {}/{n}, hashmap lookups found {}/{n} (each of {} passes)",
                    lookups.osprey_found, lookups.map_found, lookups.passes
                );
                SprigPoint {
                    osprey_lookups: lookups.osprey,
                    map_lookups: lookups.map,
                    bytes_in_use: stats.shm_bytes_in_use as f64 / n as f64,
                }
            };
            self.figures.extend([
                Figure {
                    name: "sweep: lookups/s (1 thread)",
                    records: n,
                    sprigs,
                    unit: Unit::PerSecond,
                    osprey: point.osprey_lookups,
                    baseline: point.map_lookups,
                    baseline_what: MAP_NAME,
                    target: Target::RatioAtLeast(0.5),
                },
                Figure {
                    name: "sweep: bytes/record in use",
                    records: n,
                    sprigs,
                    unit: Unit::Bytes,
                    osprey: point.bytes_in_use,
                    baseline: map_bytes,
                    baseline_what: MAP_HEAP,
                    target: Target::AtMost {
                        target: 64.0,
                        limit: None,
                    },
                },
            ]);
        }
        Ok(())
    }
}

fn run(options: &Options) -> Result<(), String> {
    let largest = options.records.iter().copied().max().unwrap_or(0);
    let config = index_config(options, options.sprigs);
    eprintln!("index-bench: computing {largest} digests (not timed)");
    let keys = compute_digests(largest);
    let mut run = Run {
        options,
        figures: Vec::new(),
        huge_pages: false,
    };
    let mut swept = false;
    for &n in &options.records {
        let sweep = n == largest && !swept && !options.sweep.is_empty();
        run.bench_size(&keys[..n], sweep)?;
        swept |= sweep;
    }

    println!();
    println!(
        "index-bench: seed {SEED:#x}; pages {} ({}); stage {} MiB, max {} stages; walk threads {}; key base {:#x}",
        page_mode_name(options.pages),
        if run.huge_pages { "hugetlb" } else { "normal pages" },
        options.stage_size_bytes >> 20,
        config.max_stages,
        config.walk_threads,
        options.shm_key_base
    );
    println!(
        "baselines: rates and bytes vs {MAP_NAME} ({} B slots + 1 control byte); warm attach vs the HashMap's build time",
        std::mem::size_of::<([u8; 20], Meta)>()
    );
    println!("ratio = osprey / baseline; targets are informational\n");
    print_table(&run.figures);
    if let Some(path) = &options.json {
        write_json(path, options, run.huge_pages, &run.figures)?;
        eprintln!("index-bench: wrote {}", path.display());
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse_options(&args) {
        Ok(options) => options,
        Err(Usage(message)) => {
            eprintln!("index-bench: {message} (try --help)");
            std::process::exit(2);
        }
    };
    if let Err(message) = run(&options) {
        eprintln!("index-bench: error: {message}");
        std::process::exit(1);
    }
}
