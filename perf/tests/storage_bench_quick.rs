//! Runs `storage-bench --quick` end to end: every figure is printed (or, when
//! fio is not installed, a `skipped: fio not installed` line for each figure
//! that needs it), the bench's own checks passed (every read found its
//! record, the cold start found every key and the last acknowledged
//! versions), the JSON is written, the data file is gone, and no shared
//! memory segment of the bench's key range is left in `/proc/sysvipc/shm`.
//! A second run names a fio that does not exist and must skip the baselines
//! and still exit 0. Bad flags exit with code 2 and one line on stderr.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BENCH: &str = env!("CARGO_BIN_EXE_storage-bench");
/// `--quick`'s record count.
const QUICK_RECORDS: u64 = 6_000;
/// The bench's shared-memory key range (index-bench uses 0x5A…).
const KEY_RANGE: std::ops::Range<i64> = 0x5B00_0000..0x5C00_0000;

/// Figures with a fio baseline, then the one without.
const FIO_FIGURES: [&str; 4] = [
    "random 4 KiB-record reads",
    "sustained 1 KiB writes",
    "cold start scan",
    "warm start",
];
const WA_FIGURE: &str = "write amplification";

const VERIFIED: [&str; 6] = [
    "verified load:",
    "verified warm start:",
    "verified reads:",
    "verified 1 KiB writes:",
    "verified 50/50:",
    "verified cold start:",
];

/// A key base of this test's own in the upper half of the bench's range:
/// the namespace's keys are base + 0x1000 ..= base + 0x1FFF.
fn key_base(salt: u32) -> u32 {
    0x5B80_0000 + (((std::process::id() + salt) & 0x7F) << 16)
}

/// Segments in the bench's range that `pid` created, or whose key lies in
/// `base`'s block.
fn leftover_segments(pid: u32, base: u32) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/sysvipc/shm").expect("read /proc/sysvipc/shm");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|c| *c == name)
            .unwrap_or_else(|| panic!("/proc/sysvipc/shm has no {name} column"))
    };
    let (key_col, cpid_col) = (col("key"), col("cpid"));
    let block = i64::from(base)..i64::from(base) + 0x2000;
    lines
        .filter(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let key = cols.get(key_col).and_then(|k| k.parse::<i64>().ok());
            let cpid = cols.get(cpid_col).and_then(|p| p.parse::<u32>().ok());
            match key {
                Some(key) => {
                    block.contains(&key) || (KEY_RANGE.contains(&key) && cpid == Some(pid))
                }
                None => false,
            }
        })
        .map(str::to_string)
        .collect()
}

fn fio_installed() -> bool {
    Command::new("fio")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs the bench; returns its output, stdout, stderr and process id.
fn run(args: &[&str]) -> (Output, String, String, u32) {
    let child = Command::new(BENCH)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start storage-bench");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for storage-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr, pid)
}

/// A fresh directory for one run's data file.
fn data_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("storage-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn dir_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The table row of `figure`: exactly one, with a result column.
fn assert_row(stdout: &str, figure: &str) {
    let n = QUICK_RECORDS.to_string();
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with(figure) && l.split_whitespace().any(|c| c == n))
        .collect();
    assert_eq!(rows.len(), 1, "want one {figure:?} row:\n{stdout}");
    let row = rows[0].trim_end();
    assert!(
        row.ends_with("PASS") || row.ends_with("MISS") || row.ends_with('-'),
        "{figure:?} row has no result column: {row}"
    );
}

fn assert_skipped(stdout: &str, figure: &str) {
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("skipped: fio not installed") && l.contains(figure))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "want one skipped line for {figure:?}:\n{stdout}"
    );
    assert!(
        !stdout
            .lines()
            .any(|l| l.starts_with(figure) && l.split_whitespace().count() > 3),
        "{figure:?} has a table row although fio is missing:\n{stdout}"
    );
}

fn assert_verified(stdout: &str) {
    for prefix in VERIFIED {
        assert!(
            stdout.lines().any(|l| l.starts_with(prefix)),
            "no {prefix:?} line:\n{stdout}"
        );
    }
    let n = QUICK_RECORDS;
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("verified load:")
                && l.contains(&format!("{n} records acknowledged"))),
        "the load did not acknowledge {n} records:\n{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("verified warm start:")
                && l.contains(&format!("{n} index entries"))),
        "the warm start did not attach {n} entries:\n{stdout}"
    );
}

#[test]
fn quick_run_prints_every_figure_and_leaves_nothing_behind() {
    let base = key_base(0);
    let dir = data_dir("quick");
    let json = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("storage-bench-quick-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&json);
    let base_arg = format!("{base:#x}");
    let (out, stdout, stderr, pid) = run(&[
        "--quick",
        "--shm-key-base",
        &base_arg,
        "--dir",
        dir.to_str().expect("utf-8 temp path"),
        "--json",
        json.to_str().expect("utf-8 temp path"),
    ]);
    let leftover = leftover_segments(pid, base);
    let files = dir_entries(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "storage-bench --quick failed ({}):\n{stdout}\n{stderr}",
        out.status
    );

    assert_verified(&stdout);
    if fio_installed() {
        for figure in FIO_FIGURES {
            assert_row(&stdout, figure);
        }
        assert!(
            !stdout.contains("skipped: fio not installed"),
            "fio is installed:\n{stdout}"
        );
    } else {
        for figure in FIO_FIGURES {
            assert_skipped(&stdout, figure);
        }
    }
    assert_row(&stdout, WA_FIGURE);

    let text = std::fs::read_to_string(&json).expect("the bench wrote its JSON");
    let _ = std::fs::remove_file(&json);
    assert!(text.trim_start().starts_with('{') && text.trim_end().ends_with('}'));
    assert!(text.contains("\"figures\": ["), "{text}");
    assert_eq!(
        text.matches("\"name\": ").count(),
        FIO_FIGURES.len() + 1,
        "{text}"
    );
    for bad in [": NaN", ": inf", ": -inf"] {
        assert!(!text.contains(bad), "{text}");
    }

    assert!(
        files.is_empty(),
        "storage-bench left files in {}: {files:?}",
        dir.display()
    );
    assert!(
        leftover.is_empty(),
        "storage-bench left segments (key base {base:#x}, pid {pid}):\n{}",
        leftover.join("\n")
    );
}

#[test]
fn without_fio_the_baselines_are_skipped_and_the_exit_code_is_0() {
    let base = key_base(0x40);
    let dir = data_dir("nofio");
    let base_arg = format!("{base:#x}");
    let (out, stdout, stderr, pid) = run(&[
        "--quick",
        "--shm-key-base",
        &base_arg,
        "--dir",
        dir.to_str().expect("utf-8 temp path"),
        "--fio",
        "/nonexistent/fio-for-storage-bench-test",
    ]);
    let leftover = leftover_segments(pid, base);
    let files = dir_entries(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "storage-bench --quick without fio failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert_verified(&stdout);
    for figure in FIO_FIGURES {
        assert_skipped(&stdout, figure);
    }
    assert_row(&stdout, WA_FIGURE);
    assert!(files.is_empty(), "left files: {files:?}");
    assert!(
        leftover.is_empty(),
        "left segments:\n{}",
        leftover.join("\n")
    );
}

#[test]
fn bad_flags_exit_2_with_one_line() {
    let bad: [&[&str]; 9] = [
        &["--bogus"],
        &["--records"],
        &["--records", "ten"],
        &["--records", "20000000"],
        &["--queue-depth", "0"],
        &["--seconds", "-1"],
        &["--quick", "--shm-key-base", "0x5a000000"],
        &["--quick", "--file-size-mib", "40", "--records", "8000"],
        &["--keep=yes"],
    ];
    for args in bad {
        let (out, stdout, stderr, _) = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stdout}{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
    }
}
