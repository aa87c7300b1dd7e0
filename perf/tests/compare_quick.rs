//! Runs the whole comparison harness small, so that it cannot rot:
//! `bash perf/compare/run.sh --quick --out <tmp> --bin-dir <tmp>/bin`, then
//! checks the results file it wrote (every comparison present; device
//! limit, flash-resident reads and restart measured, each figure with a
//! finite positive Osprey value, baseline and ratio; redis measured unless
//! it is not installed; SPDK skipped with a reason; the load average at
//! start and end), the markdown table, and that each plot is a PNG.
//!
//! The binaries are this test's own build: `CARGO_BIN_EXE_*` for
//! osprey-bench, storage-bench and perf-report, and ospreyd (another
//! package's binary) built with `cargo build -p osprey-appliance --bin
//! ospreyd` in the same profile; symlinks to the four go into `<tmp>/bin`.
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

use common::{build_ospreyd, segments_in, wait_bounded};
use serde_json::Value;

/// The quick run takes about a minute and a half on the 2-core dev VM with
/// release binaries; debug binaries and a loaded host take longer.
const RUN_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const KEY_RANGE: std::ops::Range<u32> = 0x5E00_0000..0x6000_0000;
const PLOTS: [&str; 4] = ["ratios.png", "throughput.png", "latency.png", "restart.png"];
const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";

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

/// A temp dir removed when dropped (also when an assertion fails).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
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
    let segments_before = segments_in(KEY_RANGE);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("compare/run.sh");
    let started = Instant::now();
    let child = Command::new("bash")
        .arg(&script)
        .arg("--quick")
        .arg("--out")
        .arg(&out)
        .arg("--bin-dir")
        .arg(&bin)
        .env("OSPREY_PERF_NO_INSTALL", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run perf/compare/run.sh");
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
    assert_eq!(comparisons["spdk"]["status"], "skipped");
    assert!(comparisons["spdk"]["reason"]
        .as_str()
        .is_some_and(|r| !r.is_empty()));
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
    for plot in PLOTS {
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
    for plot in PLOTS {
        assert!(md.contains(&format!("({stem}/{plot})")), "md links {plot}");
    }
    drop(guard);
    assert!(!tmp.exists(), "the temp dir is removed");
}
