//! `spdk-bench`: random 4 KiB reads through the storage engine on the SPDK
//! backend, next to SPDK's own `spdk_nvme_perf` on the same NVMe/TCP target
//! at the same queue depth, and the same engine workload on the `uring`
//! backend over the target's backing file, all in one run.
//!
//! There is no NVMe drive on these machines: SPDK's `nvmf_tgt` serves a
//! file (an `aio` bdev, 4 KiB sectors) as an NVMe/TCP namespace on
//! 127.0.0.1, and the SPDK NVMe driver attaches to it exactly as it would
//! to a local drive (`osprey_spdk::testing::NvmfTarget`). `nvmf_tgt` runs on
//! one core (`--target-core`, default 0); `spdk_nvme_perf` and the engine on
//! the other (`--core`, default 1; the bench pins itself there).
//!
//! The run, in order:
//!
//! 1. **Prefill.** The backing file `namespace.img` (in a work directory
//!    `spdk-bench-<pid>` under `--dir`, default `/var/tmp`, removed at the
//!    end) is written once with zeros, O_DIRECT, so no read lands on a hole.
//! 2. `nvmf_tgt` starts serving it.
//! 3. **spdk_nvme_perf, first half**: `-q Q -o 4096 -w randread -t T -c
//!    <core>` against the target (T = half the phase, whole seconds). Its
//!    IOPS is the mean of this half and the second (step 6), so drift of
//!    the host's disk cancels. It reads the whole namespace (it has no range
//!    option); the file is prefilled, so every read is a real one.
//! 4. **Load** through the engine on the SPDK device (a cold start on a
//!    blank device formats it): N records whose image is exactly 4,096
//!    bytes (one sector, as in storage-bench), then a clean shutdown and a
//!    warm restart, so that the post-write cache is empty and every get
//!    goes to the device.
//! 5. **Engine on SPDK**: uniformly random gets of the N records, Q in
//!    flight, for `--seconds`, one `CoreStorage` polled without sleeping as
//!    a reactor would. Each get is checked to return its own key's value.
//!    Then a clean shutdown (the index stays in shared memory, trusted) and
//!    the device is detached.
//! 6. **spdk_nvme_perf, second half.**
//! 7. `nvmf_tgt` is stopped; nothing else has the file open.
//! 8. **Engine on uring**: the same file opened as a `UringDevice`
//!    (O_DIRECT io_uring); the namespace starts warm from the same index
//!    (it must: same headers, same shared-memory index), and the same gets
//!    (same seed, same depth, same records at the same offsets) run for
//!    `--seconds`. This is the fair pairing: identical data and bytes read
//!    per get, the only difference is the path to them. With SPDK, the
//!    kernel's work (TCP loopback, the aio read of the file) happens in
//!    `nvmf_tgt` on the other core; with uring, in the engine's process.
//!    So both the engine's CPU per get and `nvmf_tgt`'s are reported.
//!
//! CPU: user and system time of the bench process (all threads, from
//! /proc/self/stat) over each engine phase; of `spdk_nvme_perf` and
//! `nvmf_tgt` from /proc/<pid>/stat sampled every 20 ms while they run
//! (`spdk_nvme_perf`'s over the last `-t` seconds before it exits: its I/O
//! phase, without its start-up). CPU per operation = CPU seconds ÷
//! operations, in µs. Read it with care: every side here polls (the
//! engine's loop on either backend, `spdk_nvme_perf`, `nvmf_tgt`), so each
//! burns what CPU the scheduler gives it, idle polls included, and on a
//! shared host its CPU per op follows its share of the core. The split into
//! user and system time is where the kernel's part shows: over NVMe/TCP the
//! SPDK initiator still makes socket calls (system time in this process; on
//! PCIe it makes none), and the file read happens in `nvmf_tgt`; with uring
//! the read is a system call of this process.
//!
//! Figures (printed as a table, and in `--json PATH` as `figures`, the
//! shape perf/compare/run.sh puts into its results):
//! - gets/s, engine on SPDK vs `spdk_nvme_perf` IOPS (target ratio ≥ 0.9);
//! - CPU µs per get, engine on SPDK vs `spdk_nvme_perf` per read;
//! - CPU µs per get, engine on SPDK vs engine on uring (same file);
//! - gets/s, engine on SPDK vs engine on uring.
//!
//! Shared memory: the namespace's index uses keys `--shm-key-base` + 0x1000
//! ..= + 0x1FFF; the default base is `0x5A00_8000 + (pid & 0xFF) << 16`,
//! which keeps the keys in `0x5A00_9000..0x5B00_0000` at offsets index-bench
//! (base `0x5A00_0000 + (pid & 0xFF) << 16`, keys + 0x1000..) never uses.
//! The segments are removed at the end, also on errors.
//!
//! Exit codes: 0 measured; 1 an error (an engine error, a wrong record, a
//! tool that failed); 2 bad flags; 3 skipped: built without SPDK (feature
//! `spdk`), or the host cannot run SPDK (no free hugepages, no `nvmf_tgt` or
//! `spdk_nvme_perf`); one line `spdk-bench: skipped: <reason>` on stdout.
//!
//! ```text
//! spdk-bench [--quick] [--records N] [--queue-depth Q] [--seconds S]
//!            [--dir PATH] [--json PATH] [--shm-key-base K] [--core C]
//!            [--target-core C]
//! ```
//!
//! Build: `PKG_CONFIG_PATH=<spdk prefix>/lib/pkgconfig cargo build --release
//! -p osprey-perf --features spdk --bin spdk-bench`; SPDK needs hugepages
//! (`sudo scripts/setup-hugepages.sh --pages 1024`).
#![deny(unsafe_code)]

use osprey_perf::flags::{parse_in, parse_number, Usage};
use std::path::PathBuf;

/// Exit code of a run that did not measure because it cannot here.
const EXIT_SKIPPED: i32 = 3;
/// Keys of the default bases: `KEY_BASE_FIRST + (pid & 0xFF) << 16`.
const KEY_BASE_FIRST: u32 = 0x5A00_8000;
/// Bases must keep the namespace's keys (base + 0x1000 ..= base + 0x1FFF)
/// inside 0x5A00_0000..0x5B00_0000, at block offset 0x8000 (see the doc).
const KEY_RANGE: std::ops::Range<u32> = 0x5A00_0000..0x5B00_0000;
const MAX_RECORDS: u64 = 2_000_000;

const USAGE: &str = "usage: spdk-bench [--quick] [--records N] [--queue-depth Q] [--seconds S] \
[--dir PATH] [--json PATH] [--shm-key-base K] [--core C] [--target-core C]";

#[cfg(not(feature = "spdk"))]
const BUILD_HINT: &str = "build it with `PKG_CONFIG_PATH=<spdk prefix>/lib/pkgconfig cargo build \
--release -p osprey-perf --features spdk --bin spdk-bench` on a host with SPDK installed";

// ---- options --------------------------------------------------------------

#[cfg_attr(not(feature = "spdk"), allow(dead_code))]
struct Options {
    quick: bool,
    records: u64,
    queue_depth: u32,
    /// Seconds of each engine phase; spdk_nvme_perf runs half of it (whole
    /// seconds, at least 1) before the engine and half after.
    seconds: u64,
    dir: PathBuf,
    json: Option<PathBuf>,
    shm_key_base: u32,
    core: usize,
    target_core: usize,
}

fn parse_options(args: &[String]) -> Result<Options, Usage> {
    let mut quick = false;
    let mut records = None;
    let mut queue_depth = None;
    let mut seconds = None;
    let mut dir = None;
    let mut json = None;
    let mut shm_key_base = None;
    let mut core = None;
    let mut target_core = None;
    osprey_perf::flags::parse_args(
        args,
        USAGE,
        &mut [("--quick", &mut quick)],
        &[
            "--records",
            "--queue-depth",
            "--seconds",
            "--dir",
            "--json",
            "--shm-key-base",
            "--core",
            "--target-core",
        ],
        |flag, value| {
            match flag {
                "--records" => {
                    let n = parse_in(flag, &value, 1_000..=MAX_RECORDS)?;
                    records = Some(n);
                }
                "--queue-depth" => {
                    // The NVMe/TCP target's queues hold 128 commands.
                    let q = parse_in(flag, &value, 1..=127)?;
                    queue_depth = Some(q as u32);
                }
                "--seconds" => {
                    let s = parse_number(flag, &value)?;
                    if !(2..=3600).contains(&s) {
                        return Err(Usage(format!(
                            "{flag}: {s} is not a whole number in 2..=3600"
                        )));
                    }
                    seconds = Some(s);
                }
                "--dir" | "--json" if value.is_empty() => {
                    return Err(Usage(format!("{flag} needs a path")))
                }
                "--dir" => dir = Some(PathBuf::from(value)),
                "--json" => json = Some(PathBuf::from(value)),
                "--shm-key-base" => {
                    let base = parse_number(flag, &value)?;
                    let ok = (u64::from(KEY_RANGE.start)..=u64::from(KEY_RANGE.end - 0x2000))
                        .contains(&base);
                    if !ok {
                        return Err(Usage(format!(
                            "{flag}: {value} is not in {:#x}..={:#x}",
                            KEY_RANGE.start,
                            KEY_RANGE.end - 0x2000
                        )));
                    }
                    shm_key_base = Some(base as u32);
                }
                "--core" | "--target-core" => {
                    let c = parse_number(flag, &value)?;
                    if c > 1023 {
                        return Err(Usage(format!("{flag}: {c} is not a core number")));
                    }
                    if flag == "--core" {
                        core = Some(c as usize);
                    } else {
                        target_core = Some(c as usize);
                    }
                }
                _ => unreachable!("flag list and match disagree"),
            }
            Ok(())
        },
    )?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let core = core.unwrap_or(if cores > 1 { 1 } else { 0 });
    let target_core = target_core.unwrap_or(if core == 0 && cores > 1 { 1 } else { 0 });
    let queue_depth = queue_depth.unwrap_or(32);
    let records = records.unwrap_or(if quick { 4_000 } else { 100_000 });
    if records < 4 * u64::from(queue_depth) {
        return Err(Usage(format!(
            "--records {records} must be at least 4 × --queue-depth ({queue_depth})"
        )));
    }
    Ok(Options {
        quick,
        records,
        queue_depth,
        seconds: seconds.unwrap_or(if quick { 2 } else { 10 }),
        dir: dir.unwrap_or_else(|| PathBuf::from("/var/tmp")),
        json,
        shm_key_base: shm_key_base.unwrap_or(KEY_BASE_FIRST + ((std::process::id() & 0xFF) << 16)),
        core,
        target_core,
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse_options(&args) {
        Ok(o) => o,
        Err(Usage(e)) => {
            eprintln!("spdk-bench: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    #[cfg(not(feature = "spdk"))]
    {
        let _ = options;
        println!("spdk-bench: skipped: built without SPDK (cargo feature `spdk`); {BUILD_HINT}");
        std::process::exit(EXIT_SKIPPED);
    }
    #[cfg(feature = "spdk")]
    match bench::run(&options) {
        Ok(()) => {}
        Err(bench::Stop::Skip(why)) => {
            println!("spdk-bench: skipped: {why}");
            std::process::exit(EXIT_SKIPPED);
        }
        Err(bench::Stop::Fail(why)) => {
            eprintln!("spdk-bench: error: {why}");
            std::process::exit(1);
        }
    }
}

#[cfg(feature = "spdk")]
mod bench {
    use super::Options;

    use std::io::BufRead as _;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::sync::mpsc;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use osprey_engine::device::spdk::testing::{
        find_nvmf_tgt, host_unready, NvmfTarget, TargetOptions,
    };
    use osprey_engine::device::spdk::{EnvOptions, SpdkDevice, SpdkOptions};
    use osprey_engine::device::Device;
    use osprey_engine::index::IndexConfig;
    use osprey_engine::storage::core::CoreStorage;
    use osprey_engine::storage::header::HEADER_REGION_BYTES;
    use osprey_engine::storage::namespace::{system_clock, Namespace, StartKind, StorageConfig};
    use osprey_engine::Digest;
    use osprey_perf::engine_load::{
        self, drive, io_bytes, proc_times, record_place, shutdown, uring_device, Load, RandomGets,
        Records, SegmentsGuard, TIMEOUT, USER_HZ,
    };
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use serde_json::{json, Value as Json};

    const MIB: u64 = 1 << 20;
    const SEED: u64 = 0x05B5_5DB0_0000_0001;
    const NAMESPACE: &str = "bench";
    const SET: &str = "bench";
    const BIN: &[u8] = b"v";
    /// The records' image: exactly one 4 KiB sector, so a get reads 4 KiB
    /// as spdk_nvme_perf's reads do (see storage-bench).
    const IMAGE: u64 = 4096;
    const VALUE: usize = IMAGE as usize
        - osprey_engine::record::IMAGE_HEADER_BYTES
        - SET.len()
        - (1 + BIN.len() + 1 + 4);
    const SECTOR: u32 = 4096;
    /// Share of the write-block region the records fill.
    const LOAD_FILL: f64 = 0.45;
    const WRITE_BLOCK_BYTES: u32 = 1 << 20;
    /// Small: DMA memory (hugepages) holds it on the SPDK side, and the
    /// measured gets go to the device anyway (after a restart it is empty).
    const POST_WRITE_CACHE_BLOCKS: u32 = 8;
    /// Free hugepage memory the bench needs: nvmf_tgt, spdk_nvme_perf and
    /// this process each run an SPDK environment.
    pub const HUGEPAGES_MB: u64 = 1024;
    const NAMESPACE_ID: u32 = 1;
    /// Commands per SPDK queue pair: the NVMe/TCP target's queue size.
    const SPDK_QUEUE: u32 = 128;

    pub enum Stop {
        /// Cannot measure on this host (exit code 3).
        Skip(String),
        /// Something failed (exit code 1).
        Fail(String),
    }

    impl From<String> for Stop {
        fn from(e: String) -> Stop {
            Stop::Fail(e)
        }
    }

    // ---- guards -----------------------------------------------------------

    /// Removes the work directory (backing file, target's config and log).
    struct DirGuard(PathBuf);

    impl Drop for DirGuard {
        fn drop(&mut self) {
            if let Err(e) = std::fs::remove_dir_all(&self.0) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    eprintln!("spdk-bench: could not remove {}: {e}", self.0.display());
                }
            }
        }
    }

    // ---- CPU --------------------------------------------------------------

    /// utime and stime (ticks) of `/proc/<pid>/stat` (`None`: this process).
    fn cpu_ticks(pid: Option<u32>) -> Option<(u64, u64)> {
        proc_times(pid).map(|t| (t[0], t[1]))
    }

    /// A point in time with a process's CPU ticks.
    #[derive(Clone, Copy)]
    struct Sample {
        at: Instant,
        ticks: (u64, u64),
    }

    impl Sample {
        fn take(pid: Option<u32>) -> Option<Sample> {
            Some(Sample {
                at: Instant::now(),
                ticks: cpu_ticks(pid)?,
            })
        }
    }

    /// CPU used between two samples.
    #[derive(Clone, Copy, Default)]
    struct Cpu {
        user_s: f64,
        sys_s: f64,
        wall_s: f64,
    }

    impl Cpu {
        fn between(a: Sample, b: Sample) -> Cpu {
            Cpu {
                user_s: b.ticks.0.saturating_sub(a.ticks.0) as f64 / USER_HZ,
                sys_s: b.ticks.1.saturating_sub(a.ticks.1) as f64 / USER_HZ,
                wall_s: (b.at - a.at).as_secs_f64(),
            }
        }

        fn total_s(&self) -> f64 {
            self.user_s + self.sys_s
        }

        /// Percent of one core.
        fn pct(&self) -> f64 {
            self.total_s() / self.wall_s.max(1e-9) * 100.0
        }

        /// µs of CPU per operation at `rate` operations per second
        /// (user, system, total), from the share of a core used.
        fn per_op_us(&self, rate: f64) -> (f64, f64, f64) {
            let w = self.wall_s.max(1e-9) * rate.max(1e-9);
            (
                self.user_s / w * 1e6,
                self.sys_s / w * 1e6,
                self.total_s() / w * 1e6,
            )
        }

        fn json(&self, rate: f64) -> Json {
            let (u, s, t) = self.per_op_us(rate);
            json!({
                "cpu_pct": self.pct(),
                "user_s": self.user_s, "sys_s": self.sys_s, "wall_s": self.wall_s,
                "user_us_per_op": u, "sys_us_per_op": s, "cpu_us_per_op": t,
            })
        }
    }

    /// The 1, 5 and 15 minute load averages (the host is shared).
    fn loadavg() -> Vec<f64> {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .filter_map(|v| v.parse().ok())
            .collect()
    }

    // ---- records and the workload ------------------------------------------

    const RECORDS: Records = Records { set: SET, bin: BIN };

    /// Key `key`'s value: its number, then 0xA5 bytes.
    fn value_bytes(key: u64) -> Vec<u8> {
        let mut v = vec![0xA5u8; VALUE];
        v[..8].copy_from_slice(&key.to_le_bytes());
        v
    }

    // ---- the namespace ---------------------------------------------------------

    fn index_config(options: &Options) -> IndexConfig {
        engine_load::index_config(
            NAMESPACE_ID,
            options.shm_key_base,
            if options.quick { MIB } else { 16 * MIB },
            1,
        )
    }

    fn storage_config() -> StorageConfig {
        let mut config = StorageConfig::new(NAMESPACE);
        config.write_block_bytes = WRITE_BLOCK_BYTES;
        config.post_write_cache_blocks = POST_WRITE_CACHE_BLOCKS;
        config.scan_threads = 1;
        config
    }

    fn open_namespace(
        device: Arc<dyn Device>,
        index: &IndexConfig,
    ) -> Result<(Arc<Namespace>, StartKind), String> {
        let (ns, kind) = Namespace::open(
            storage_config(),
            index,
            vec![device],
            Arc::new(system_clock),
        )
        .map_err(|e| format!("Namespace::open: {e}"))?;
        Ok((Arc::new(ns), kind))
    }

    /// Writes the whole file once with zeros (1 MiB O_DIRECT writes).
    fn prefill(path: &Path, file_bytes: u64) -> Result<(), String> {
        let device = uring_device(path, file_bytes, 8)?;
        engine_load::prefill(&*device, 4)
    }

    // ---- spdk_nvme_perf ---------------------------------------------------------

    struct PerfRun {
        pid: u32,
        iops: f64,
        avg_latency_us: Option<f64>,
        cpu: Cpu,
        target_cpu: Option<Cpu>,
        command: String,
    }

    /// Runs spdk_nvme_perf randread 4k at depth `q` for `seconds` on `core`,
    /// sampling its CPU (and the target's) while it runs.
    fn run_perf(
        perf: &Path,
        libdir: Option<&Path>,
        target: &NvmfTarget,
        q: u32,
        seconds: u64,
        core: usize,
    ) -> Result<PerfRun, String> {
        let mask = format!("{:#x}", 1u128 << core);
        let trid = target.transport_id();
        let args = [
            "-q".to_string(),
            q.to_string(),
            "-o".into(),
            "4096".into(),
            "-w".into(),
            "randread".into(),
            "-t".into(),
            seconds.to_string(),
            "-c".into(),
            mask,
            "-r".into(),
            trid,
        ];
        let command = format!(
            "{} {} '{}'",
            perf.display(),
            args[..args.len() - 1].join(" "),
            args[args.len() - 1]
        );
        eprintln!("spdk-bench:   {command}");
        let mut cmd = Command::new(perf);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(dir) = libdir {
            let mut path = dir.as_os_str().to_owned();
            if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
                path.push(":");
                path.push(old);
            }
            cmd.env("LD_LIBRARY_PATH", path);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", perf.display()))?;
        let pid = child.id();
        // Its output, read while it runs (a full pipe would stall it).
        let (tx, rx) = mpsc::channel::<String>();
        let stdout = child.stdout.take().expect("piped");
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = child.stderr.take().expect("piped");
        let err_reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut { stderr }, &mut text);
            text
        });
        let limit = Instant::now() + Duration::from_secs(seconds) + TIMEOUT;
        let mut samples: Vec<(Sample, Option<Sample>)> = Vec::new();
        let mut lines: Vec<String> = Vec::new();
        let status = loop {
            if let Some(s) = Sample::take(Some(pid)) {
                samples.push((s, target.pid().and_then(|p| Sample::take(Some(p)))));
            }
            lines.extend(rx.try_iter());
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => {}
                Err(e) => return Err(format!("waiting for spdk_nvme_perf: {e}")),
            }
            if Instant::now() > limit {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{command} did not finish within {seconds} s + {TIMEOUT:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let _ = reader.join();
        lines.extend(rx.try_iter());
        let stderr = err_reader.join().unwrap_or_default();
        let text: Vec<&str> = lines.iter().map(String::as_str).collect();
        if !status.success() {
            return Err(format!(
                "{command} failed ({status}): {}\n{}",
                text.join("\n"),
                stderr.trim()
            ));
        }
        let total = text
            .iter()
            .find(|l| l.trim_start().starts_with("Total"))
            .ok_or_else(|| {
                format!(
                    "{command}: no Total line in its output:\n{}",
                    text.join("\n")
                )
            })?;
        // "Total : IOPS MiB/s Average min max"
        let numbers: Vec<f64> = total
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        let iops = *numbers
            .first()
            .ok_or_else(|| format!("{command}: no IOPS in {total:?}"))?;
        // Its I/O runs for the last `seconds` before it exits (tear-down is
        // brief): the CPU of that window, from the samples around it. (Its
        // "Initialization complete" line cannot mark the start: piped, its
        // output is block-buffered and arrives at exit.)
        let last = samples.last().copied();
        let first = last.and_then(|(end, _)| {
            let from = end.at.checked_sub(Duration::from_secs(seconds))?;
            samples.iter().find(|(s, _)| s.at >= from).copied()
        });
        let (cpu, target_cpu) = match (first, last) {
            (Some(a), Some(b)) if b.0.at > a.0.at => (
                Cpu::between(a.0, b.0),
                a.1.zip(b.1).map(|(x, y)| Cpu::between(x, y)),
            ),
            _ => return Err(format!("{command}: too few CPU samples while it ran")),
        };
        Ok(PerfRun {
            pid,
            iops,
            avg_latency_us: numbers.get(2).copied(),
            cpu,
            target_cpu,
            command,
        })
    }

    // ---- engine phases ---------------------------------------------------------

    struct GetRun {
        gets: u64,
        rate: f64,
        cpu: Cpu,
        target_cpu: Option<Cpu>,
        kernel_read_bytes_per_get: Option<f64>,
        device_reads: u64,
        cache_hits: u64,
    }

    impl GetRun {
        /// The phase's line of notes, as on `backend`.
        fn note(&self, backend: &str) -> String {
            let (user, sys, _) = self.cpu.per_op_us(self.rate);
            format!(
                "{backend} backend: {} gets, {:.1} k/s, CPU {:.0}% of a core: {user:.2} µs user + {sys:.2} µs system per get; kernel read bytes per get {}",
                self.gets,
                self.rate / 1e3,
                self.cpu.pct(),
                self.kernel_read_bytes_per_get.map_or("?".into(), |b| format!("{b:.0}")),
            )
        }

        fn json(&self) -> Json {
            let mut j = self.cpu.json(self.rate);
            j["gets"] = json!(self.gets);
            j["gets_per_s"] = json!(self.rate);
            j["device_reads"] = json!(self.device_reads);
            j["cache_hits"] = json!(self.cache_hits);
            j["kernel_read_bytes_per_get"] = json!(self.kernel_read_bytes_per_get);
            if let Some(t) = self.target_cpu {
                j["nvmf_tgt"] = t.json(self.rate);
            }
            j
        }
    }

    /// Random gets of keys 0..n for `seconds` on a fresh core of `ns`.
    fn random_gets(
        ns: &Arc<Namespace>,
        digests: &[Digest],
        n: u64,
        depth: usize,
        seconds: u64,
        target_pid: Option<u32>,
    ) -> Result<GetRun, String> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut core = CoreStorage::new(ns.clone()).map_err(|e| e.to_string())?;
        let reads0 = ns.stats.device_reads.load(Relaxed);
        let hits0 = ns.stats.cache_hits.load(Relaxed);
        let io0 = io_bytes().map(|(read, _)| read);
        let target0 = target_pid.and_then(|p| Sample::take(Some(p)));
        let own0 = Sample::take(None).ok_or("cannot read /proc/self/stat")?;
        let gets = drive(
            &mut core,
            &mut RandomGets {
                records: RECORDS,
                digests,
                n,
                value_len: VALUE,
                rng: StdRng::seed_from_u64(SEED),
            },
            depth,
            Some(Instant::now() + Duration::from_secs(seconds)),
        )?
        .finished;
        let own1 = Sample::take(None).ok_or("cannot read /proc/self/stat")?;
        let target1 = target_pid.and_then(|p| Sample::take(Some(p)));
        let io1 = io_bytes().map(|(read, _)| read);
        let cpu = Cpu::between(own0, own1);
        let run = GetRun {
            gets,
            rate: gets as f64 / cpu.wall_s,
            cpu,
            target_cpu: target0.zip(target1).map(|(a, b)| Cpu::between(a, b)),
            kernel_read_bytes_per_get: io0
                .zip(io1)
                .map(|(a, b)| (b - a) as f64 / gets.max(1) as f64),
            device_reads: ns.stats.device_reads.load(Relaxed) - reads0,
            cache_hits: ns.stats.cache_hits.load(Relaxed) - hits0,
        };
        drop(core);
        Ok(run)
    }

    fn load(ns: &Arc<Namespace>, digests: &[Digest], n: u64, depth: usize) -> Result<(), String> {
        let mut core = CoreStorage::new(ns.clone()).map_err(|e| e.to_string())?;
        let done = drive(
            &mut core,
            &mut Load {
                records: RECORDS,
                digests,
                next: 0,
                end: n,
                value: value_bytes,
            },
            depth,
            None,
        )?
        .finished;
        if done != n {
            return Err(format!("load: {done} of {n} records acknowledged"));
        }
        core.flush_all(TIMEOUT)?;
        // Every record's image is one aligned sector: a get reads 4 KiB.
        let unit = u64::from(SECTOR);
        for (key, digest) in digests[..n as usize].iter().enumerate() {
            let (offset, size) = record_place(ns, key, digest)?;
            if size != IMAGE || offset % unit != 0 {
                return Err(format!(
                    "key {key}: a {size}-byte image at offset {offset}, not one aligned {IMAGE}-byte sector"
                ));
            }
        }
        drop(core);
        Ok(())
    }

    /// Shuts `ns` down cleanly through a fresh core.
    fn close(ns: Arc<Namespace>) -> Result<(), String> {
        shutdown(CoreStorage::new(ns.clone()).map_err(|e| e.to_string())?, ns)
    }

    /// A warm start that found all `n` records (on `backend`), or a failure.
    fn expect_warm(kind: StartKind, n: u64, backend: &str) -> Result<(), Stop> {
        match kind {
            StartKind::Warm { entries } if entries == n => Ok(()),
            other => Err(Stop::Fail(format!(
                "expected a warm start with {n} entries on {backend}: {other:?}"
            ))),
        }
    }

    // ---- the run ---------------------------------------------------------------

    fn core_mask(core: usize) -> String {
        format!("{:#x}", 1u128 << core)
    }

    struct Figure {
        name: &'static str,
        unit: &'static str,
        osprey: f64,
        baseline: f64,
        baseline_what: String,
        better: &'static str,
        target: Option<f64>,
    }

    impl Figure {
        fn ratio(&self) -> f64 {
            self.osprey / self.baseline
        }

        fn result(&self) -> &'static str {
            match self.target {
                None => "-",
                Some(t) if self.ratio() >= t => "PASS",
                Some(_) => "MISS",
            }
        }

        fn json(&self) -> Json {
            let ratio = self.ratio();
            json!({
                "name": self.name, "unit": self.unit, "osprey": self.osprey,
                "baseline": self.baseline, "baseline_what": self.baseline_what,
                "ratio": if ratio.is_finite() { json!(ratio) } else { Json::Null },
                "better": self.better,
                "target": self.target.map_or("-".to_string(), |t| format!("ratio >= {t:.2}")),
                "result": self.result(),
            })
        }

        fn value(&self, v: f64) -> String {
            match self.unit {
                "ops/s" => format!("{:.1} k/s", v / 1e3),
                _ => format!("{v:.2} µs"),
            }
        }
    }

    /// Removes DPDK's run-time directory (`/var/run/dpdk/spdk_pid<pid>`)
    /// of each SPDK process this run started once it has exited, and this
    /// process's own (it is about to exit): DPDK leaves them behind.
    struct RuntimeDirs(Vec<u32>);

    impl Drop for RuntimeDirs {
        fn drop(&mut self) {
            for pid in self.0.iter().copied().chain([std::process::id()]) {
                for root in ["/var/run/dpdk", "/run/dpdk"] {
                    let dir = Path::new(root).join(format!("spdk_pid{pid}"));
                    if dir.is_dir() {
                        let _ = std::fs::remove_dir_all(&dir);
                    }
                }
            }
        }
    }

    pub fn run(options: &Options) -> Result<(), Stop> {
        if let Some(why) = host_unready(HUGEPAGES_MB) {
            return Err(Stop::Skip(why));
        }
        let (tgt, libdir) = find_nvmf_tgt().map_err(Stop::Skip)?;
        let perf = tgt.with_file_name("spdk_nvme_perf");
        if !perf.is_file() {
            return Err(Stop::Skip(format!(
                "{} not found next to nvmf_tgt: install SPDK with its examples",
                perf.display()
            )));
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if options.core == options.target_core && cores > 1 {
            return Err(Stop::Fail(format!(
                "--core and --target-core are both {}: give nvmf_tgt its own core",
                options.core
            )));
        }
        let image = RECORDS.image_len(VALUE);
        if image != IMAGE {
            return Err(Stop::Fail(format!(
                "the records' image is {image} bytes, not {IMAGE}"
            )));
        }
        let n = options.records;
        let q = options.queue_depth;
        let secs = options.seconds;
        let perf_secs = secs.div_ceil(2).max(1);
        let region = ((n * IMAGE) as f64 / LOAD_FILL).ceil() as u64;
        let file_bytes = (HEADER_REGION_BYTES + region.div_ceil(MIB) * MIB).max(32 * MIB);

        let work = options
            .dir
            .join(format!("spdk-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
        let _work_guard = DirGuard(work.clone());
        let file = work.join("namespace.img");
        let index = index_config(options);
        index.validate().map_err(|e| format!("index config: {e}"))?;
        let _segments = SegmentsGuard {
            program: "spdk-bench",
            config: index.clone(),
        };

        eprintln!(
            "spdk-bench: {n} records of {IMAGE}-byte images, file {} ({} MiB), queue depth {q}, \
             {secs} s per engine phase, spdk_nvme_perf {perf_secs} s before and after; \
             nvmf_tgt on core {}, engine and spdk_nvme_perf on core {}",
            file.display(),
            file_bytes / MIB,
            options.target_core,
            options.core
        );
        let load_start = loadavg();
        let mut runtime_dirs = RuntimeDirs(Vec::new());
        let digests = RECORDS.digests(n as usize);
        if !osprey_net::reactor::pin_to_core(options.core) {
            eprintln!("spdk-bench: could not pin to core {}", options.core);
        }

        eprintln!("spdk-bench: prefill (zeros over the whole file, O_DIRECT)");
        prefill(&file, file_bytes)?;

        eprintln!("spdk-bench: starting nvmf_tgt");
        let mut target = NvmfTarget::start(&TargetOptions {
            file: file.clone(),
            size_bytes: file_bytes,
            block_size: SECTOR,
            core_mask: core_mask(options.target_core),
            work_dir: work.clone(),
        })
        .map_err(|e| format!("cannot start nvmf_tgt: {e}"))?;
        let transport_id = target.transport_id();
        runtime_dirs.0.extend(target.pid());

        let perf_half = |target: &NvmfTarget, which: &str| {
            eprintln!("spdk-bench: spdk_nvme_perf, {which} half");
            run_perf(&perf, libdir.as_deref(), target, q, perf_secs, options.core)
        };
        let perf_a = perf_half(&target, "first")?;
        runtime_dirs.0.push(perf_a.pid);

        eprintln!("spdk-bench: engine on SPDK: format and load {n} records");
        let spdk_options = SpdkOptions {
            env: EnvOptions {
                name: "spdk-bench".to_string(),
                core_mask: core_mask(options.core),
                ..EnvOptions::default()
            },
            queue_depth: SPDK_QUEUE,
            ..SpdkOptions::default()
        };
        let name = format!("{transport_id} ns=1");
        let open_spdk = || -> Result<Arc<dyn Device>, String> {
            let device = SpdkDevice::open(&name, &spdk_options)
                .map_err(|e| format!("{e}\nnvmf_tgt's log:\n{}", target.log_tail()))?;
            Ok(Arc::new(device))
        };
        let (ns, kind) = open_namespace(open_spdk()?, &index)?;
        if !matches!(kind, StartKind::Cold { .. }) {
            return Err(Stop::Fail(format!(
                "a blank device must start cold: {kind:?}"
            )));
        }
        let started = Instant::now();
        load(&ns, &digests, n, q as usize)?;
        let load_s = started.elapsed().as_secs_f64();
        close(ns)?;

        eprintln!("spdk-bench: engine on SPDK: warm restart, random gets ({q} in flight)");
        let (ns, kind) = open_namespace(open_spdk()?, &index)?;
        expect_warm(kind, n, "SPDK")?;
        let spdk = random_gets(&ns, &digests, n, q as usize, secs, target.pid())?;
        close(ns)?;

        let perf_b = perf_half(&target, "second")?;
        runtime_dirs.0.push(perf_b.pid);
        target.stop();
        drop(target);

        eprintln!("spdk-bench: engine on uring over the same file: warm start, random gets");
        let (ns, kind) = open_namespace(uring_device(&file, file_bytes, q + 128)?, &index)?;
        expect_warm(kind, n, "uring")?;
        let uring = random_gets(&ns, &digests, n, q as usize, secs, None)?;
        close(ns)?;

        // ---- figures ----
        let perf_iops = (perf_a.iops + perf_b.iops) / 2.0;
        let perf_cpu_us =
            (perf_a.cpu.per_op_us(perf_a.iops).2 + perf_b.cpu.per_op_us(perf_b.iops).2) / 2.0;
        let spdk_us = spdk.cpu.per_op_us(spdk.rate);
        let uring_us = uring.cpu.per_op_us(uring.rate);
        let figures = [
            Figure {
                name: "random 4 KiB gets, SPDK backend",
                unit: "ops/s",
                osprey: spdk.rate,
                baseline: perf_iops,
                baseline_what: format!(
                    "spdk_nvme_perf randread 4k IOPS, QD {q}, same NVMe/TCP target (mean of before and after)"
                ),
                better: "higher",
                target: Some(0.9),
            },
            Figure {
                name: "CPU per get, SPDK backend vs spdk_nvme_perf",
                unit: "us",
                osprey: spdk_us.2,
                baseline: perf_cpu_us,
                baseline_what: "spdk_nvme_perf CPU µs per read (user+sys)".to_string(),
                better: "lower",
                target: None,
            },
            Figure {
                name: "CPU per get, SPDK vs uring backend",
                unit: "us",
                osprey: spdk_us.2,
                baseline: uring_us.2,
                baseline_what: format!(
                    "the engine on io_uring (O_DIRECT) over the target's backing file, same records, QD {q}"
                ),
                better: "lower",
                target: None,
            },
            Figure {
                name: "random 4 KiB gets, SPDK vs uring backend",
                unit: "ops/s",
                osprey: spdk.rate,
                baseline: uring.rate,
                baseline_what: format!(
                    "the engine on io_uring (O_DIRECT) over the target's backing file, same records, QD {q}"
                ),
                better: "higher",
                target: None,
            },
        ];
        let notes = vec![
            format!(
                "verified: {n} records loaded through SPDK in {load_s:.2} s, warm restarts on SPDK and then on uring over the same file found all {n}; every get returned its own key's record"
            ),
            format!(
                "{}; nvmf_tgt (core {}) {}",
                spdk.note("SPDK"),
                options.target_core,
                spdk.target_cpu.map_or("?".into(), |t| {
                    let (_, s, total) = t.per_op_us(spdk.rate);
                    format!("{:.0}% of a core, {total:.2} µs per get ({s:.2} µs system)", t.pct())
                })
            ),
            uring.note("uring"),
            format!(
                "spdk_nvme_perf before/after: {:.1} / {:.1} k IOPS, CPU {:.0}% / {:.0}% of a core, average latency {} µs",
                perf_a.iops / 1e3,
                perf_b.iops / 1e3,
                perf_a.cpu.pct(),
                perf_b.cpu.pct(),
                perf_a
                    .avg_latency_us
                    .zip(perf_b.avg_latency_us)
                    .map_or("?".into(), |(a, b)| format!("{:.0}", (a + b) / 2.0))
            ),
        ];
        for line in &notes {
            println!("{line}");
        }
        let rows: Vec<[String; 6]> = figures
            .iter()
            .map(|f| {
                [
                    f.name.to_string(),
                    f.value(f.osprey),
                    f.value(f.baseline),
                    format!("{:.2}", f.ratio()),
                    f.target.map_or("-".into(), |t| format!("ratio >= {t:.2}")),
                    f.result().to_string(),
                ]
            })
            .collect();
        osprey_perf::print_table(
            &["figure", "osprey", "baseline", "ratio", "target", "result"],
            &rows,
            &[0, 4, 5],
        );
        if let Some(path) = &options.json {
            let perf_json = |p: &PerfRun| {
                let mut j = p.cpu.json(p.iops);
                j["iops"] = json!(p.iops);
                j["avg_latency_us"] = json!(p.avg_latency_us);
                j["command"] = json!(p.command);
                if let Some(t) = p.target_cpu {
                    j["nvmf_tgt"] = t.json(p.iops);
                }
                j
            };
            let doc = json!({
                "bench": "spdk-bench",
                "quick": options.quick,
                "seed": SEED,
                "config": {
                    "records": n, "image_bytes": IMAGE, "file_bytes": file_bytes,
                    "queue_depth": q, "seconds": secs, "perf_seconds_each": perf_secs,
                    "core": options.core, "target_core": options.target_core,
                    "shm_key_base": options.shm_key_base,
                    "target": "nvmf_tgt, aio bdev on a file, NVMe/TCP on 127.0.0.1",
                    "post_write_cache_blocks": POST_WRITE_CACHE_BLOCKS,
                },
                "spdk_nvme_perf": {
                    "iops": perf_iops, "cpu_us_per_op": perf_cpu_us,
                    "runs": [perf_json(&perf_a), perf_json(&perf_b)],
                },
                "engine_spdk": spdk.json(),
                "engine_uring": uring.json(),
                "load_average": {"start": load_start, "end": loadavg()},
                "notes": notes,
                "figures": figures.iter().map(Figure::json).collect::<Vec<_>>(),
            });
            let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
            std::fs::write(path, text + "\n")
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
        }
        Ok(())
    }
}
