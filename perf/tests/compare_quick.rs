//! Runs the whole comparison harness small, so that it cannot rot:
//! `bash perf/compare/run.sh --quick --out <tmp> --bin-dir <tmp>/bin`, then
//! checks the results file it wrote (every comparison present; device
//! limit, flash-resident reads and restart measured, each figure with a
//! finite positive Osprey value, baseline and ratio; redis measured unless
//! it is not installed; SPDK measured or skipped with a reason, see below;
//! the load average at start and end), the markdown table, and that each
//! plot is a PNG.
//!
//! The binaries are this test's own build: `CARGO_BIN_EXE_*` for
//! osprey-bench, storage-bench, spdk-bench and perf-report, and ospreyd
//! (another package's binary) built with `cargo build -p osprey-appliance
//! --bin ospreyd` in the same profile; symlinks to the five go into
//! `<tmp>/bin`.
//!
//! SPDK (comparison 5): when `pkg-config --exists spdk_nvme` fails and
//! `SPDK_DIR` is unset (CI), it must be skipped, the reason saying SPDK was
//! not found. When SPDK is found, this test built with `--features spdk`
//! and the host has 1 GiB of free hugepages or is root (run.sh reserves
//! them), it must be measured (`ok`, with figures); otherwise skipped with
//! a reason (spdk-bench built without SPDK says so).
//!
//! Redis: `scripts/install-deps.sh` installs redis-server and redis-tools.
//! When they are missing anyway, the test does not install them (it sets
//! `OSPREY_PERF_NO_INSTALL=1`), says so, and expects the redis comparison
//! to be "skipped".
//!
//! The harness's ospreyd instances use shared-memory keys in
//! 0x5E000000..0x60000000; after the run no segment there may be left that
//! was not there before. Every wait is bounded: past the limit the script
//! gets SIGTERM (its EXIT trap stops its servers and removes its files),
//! then SIGKILL.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{build_ospreyd, segments_in, spawn_piped, wait_bounded, TempDir};
use serde_json::Value;

/// The quick run takes about a minute and a half on the 2-core dev VM with
/// release binaries; debug binaries and a loaded host take longer.
const RUN_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const KEY_RANGE: std::ops::Range<u32> = 0x5E00_0000..0x6000_0000;
const PLOTS: [&str; 4] = ["ratios.png", "throughput.png", "latency.png", "restart.png"];
const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";
/// spdk-bench's keys under run.sh: bases 0x5A008000 + n << 16, keys at
/// block offset 0x9000..0xA000.
const SPDK_KEY_RANGE: std::ops::Range<u32> = 0x5A00_0000..0x5B00_0000;

/// What comparison 5 must come out as on this host.
#[derive(Debug)]
enum Spdk {
    Measured,
    NotFound,
    Skipped,
}

fn spdk_expected() -> Spdk {
    let found = Command::new("pkg-config")
        .args(["--exists", "spdk_nvme"])
        .status()
        .is_ok_and(|s| s.success())
        || std::env::var_os("SPDK_DIR").is_some();
    if !found {
        return Spdk::NotFound;
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |key: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let free_mb = field("HugePages_Free:") * field("Hugepagesize:") / 1024;
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if cfg!(feature = "spdk") && (root || free_mb >= 1024) {
        Spdk::Measured
    } else {
        Spdk::Skipped
    }
}

fn installed(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A figure must carry finite, positive numbers.
fn check_figures(name: &str, comparison: &Value) {
    let figures = comparison["figures"]
        .as_array()
        .unwrap_or_else(|| panic!("{name}: no figures"));
    assert!(!figures.is_empty(), "{name}: no figures");
    for f in figures {
        for key in ["osprey", "baseline", "ratio"] {
            let v = f[key].as_f64();
            assert!(
                v.is_some_and(|v| v.is_finite() && v > 0.0),
                "{name}: figure {} has {key} = {}",
                f["name"],
                f[key]
            );
        }
        assert!(
            f["baseline_what"].as_str().is_some_and(|s| !s.is_empty()),
            "{name}: figure {} does not say what its baseline is",
            f["name"]
        );
    }
}

#[test]
fn quick_run_writes_every_comparison_and_its_plots() {
    let ospreyd = build_ospreyd();
    let guard =
        TempDir(std::env::temp_dir().join(format!("osprey-compare-quick-{}", std::process::id())));
    let tmp = guard.0.clone();
    let _ = std::fs::remove_dir_all(&tmp);
    let (bin, out) = (tmp.join("bin"), tmp.join("out"));
    std::fs::create_dir_all(&bin).expect("create bin dir");
    std::fs::create_dir_all(&out).expect("create out dir");
    for (name, path) in [
        ("ospreyd", ospreyd.as_path()),
        (
            "osprey-bench",
            Path::new(env!("CARGO_BIN_EXE_osprey-bench")),
        ),
        (
            "storage-bench",
            Path::new(env!("CARGO_BIN_EXE_storage-bench")),
        ),
        ("spdk-bench", Path::new(env!("CARGO_BIN_EXE_spdk-bench"))),
        ("perf-report", Path::new(env!("CARGO_BIN_EXE_perf-report"))),
    ] {
        std::os::unix::fs::symlink(path, bin.join(name)).expect("symlink a binary");
    }
    let redis_present = installed("redis-server") && installed("redis-benchmark");
    if !redis_present {
        eprintln!(
            "compare_quick: redis-server/redis-benchmark not installed and this test does not \
             install packages: the redis comparison is expected to be skipped \
             (scripts/install-deps.sh installs them)"
        );
    }
    let spdk_expected = spdk_expected();
    eprintln!("compare_quick: SPDK comparison expected to be {spdk_expected:?}");
    let segments_before = segments_in(KEY_RANGE);
    let spdk_segments_before = segments_in(SPDK_KEY_RANGE);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("compare/run.sh");
    let started = Instant::now();
    let child = spawn_piped(
        Command::new("bash")
            .arg(&script)
            .arg("--quick")
            .arg("--out")
            .arg(&out)
            .arg("--bin-dir")
            .arg(&bin)
            .env("OSPREY_PERF_NO_INSTALL", "1"),
        "run perf/compare/run.sh",
    );
    let output = wait_bounded(child, RUN_TIMEOUT)
        .unwrap_or_else(|| panic!("run.sh --quick took over {RUN_TIMEOUT:?}"));
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("---- run.sh --quick ({elapsed:.1?}) ----\n{stdout}\n---- stderr ----\n{stderr}");
    assert!(output.status.success(), "run.sh --quick failed");

    let leaked: Vec<String> = segments_in(KEY_RANGE)
        .into_iter()
        .filter(|k| !segments_before.contains(k))
        .map(|k| format!("{k:#010x}"))
        .collect();
    assert!(
        leaked.is_empty(),
        "run.sh left shared-memory segments: {leaked:?}"
    );
    let leaked: Vec<String> = segments_in(SPDK_KEY_RANGE)
        .into_iter()
        .filter(|k| !spdk_segments_before.contains(k) && k & 0xF000 == 0x9000)
        .map(|k| format!("{k:#010x}"))
        .collect();
    assert!(
        leaked.is_empty(),
        "run.sh (spdk-bench) left shared-memory segments: {leaked:?}"
    );

    let results: Vec<PathBuf> = std::fs::read_dir(&out)
        .expect("read out dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    assert_eq!(results.len(), 1, "one results file, got {results:?}");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&results[0]).unwrap())
        .expect("results are JSON");
    assert_eq!(doc["schema"], 1);
    assert_eq!(doc["mode"], "quick");
    for when in ["start", "end"] {
        let load = doc["load_average"][when].as_array().expect("load average");
        assert_eq!(load.len(), 3, "load average at {when}");
        assert!(load.iter().all(|v| v.as_f64().is_some()));
    }
    let comparisons = &doc["comparisons"];
    for name in ["device_limit", "flash_reads", "restart"] {
        assert_eq!(
            comparisons[name]["status"], "ok",
            "{name}: {}",
            comparisons[name]["reason"]
        );
        check_figures(name, &comparisons[name]);
    }
    if redis_present {
        assert_eq!(
            comparisons["redis"]["status"], "ok",
            "redis: {}",
            comparisons["redis"]["reason"]
        );
        check_figures("redis", &comparisons["redis"]);
    } else {
        assert_eq!(comparisons["redis"]["status"], "skipped");
    }
    let spdk = &comparisons["spdk"];
    match spdk_expected {
        Spdk::Measured => {
            assert_eq!(spdk["status"], "ok", "spdk: {}", spdk["reason"]);
            check_figures("spdk", spdk);
        }
        Spdk::NotFound => {
            assert_eq!(spdk["status"], "skipped");
            assert!(
                spdk["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("SPDK was not found")),
                "spdk: {}",
                spdk["reason"]
            );
        }
        Spdk::Skipped => {
            assert_eq!(spdk["status"], "skipped", "spdk: {}", spdk["reason"]);
            assert!(spdk["reason"].as_str().is_some_and(|r| !r.is_empty()));
        }
    }
    // The restart comparison has a warm and a cold figure per record count.
    let points = comparisons["restart"]["detail"]["points"]
        .as_array()
        .expect("restart points");
    assert_eq!(points.len(), 2);

    let stem = results[0]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let mut plots = PLOTS.to_vec();
    if redis_present {
        plots.push("redis-latency.png");
    }
    for plot in plots.iter().copied() {
        let path = out.join(&stem).join(plot);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            bytes.len() > 1000 && bytes.starts_with(PNG_MAGIC),
            "{} is not a PNG",
            path.display()
        );
    }
    let md = std::fs::read_to_string(out.join(format!("{stem}.md"))).expect("markdown table");
    assert!(md.contains("| comparison | figure |"));
    for plot in plots {
        assert!(md.contains(&format!("({stem}/{plot})")), "md links {plot}");
    }
    drop(guard);
    assert!(!tmp.exists(), "the temp dir is removed");
}
