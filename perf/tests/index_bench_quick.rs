//! Runs `index-bench --quick` end to end: every figure is printed, the bench's
//! own checks passed (every lookup found its key, the warm attach walked every
//! entry), the JSON is written, and no segment of its key range is left in
//! `/proc/sysvipc/shm`. Bad flags exit with code 2 and one line on stderr.

use std::path::PathBuf;
use std::process::{Command, Output};

const BENCH: &str = env!("CARGO_BIN_EXE_index-bench");
const QUICK_RECORDS: usize = 20_000;

/// A key base of this test process's own: clear of the engine tests'
/// 0x2000_0000..0x3000_0000, of the shm unit tests' 0x3E00_0000.., of the
/// default 0x4F50_0000 and of the bench's own default 0x5A00_0000..; all 33
/// namespaces' keys stay below i32::MAX.
fn key_base() -> u32 {
    0x5C00_0000 + ((std::process::id() & 0xFF) << 16)
}

/// Lines of `/proc/sysvipc/shm` whose key lies in the bench's key range.
fn segments_in_range(base: u32) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/sysvipc/shm").expect("read /proc/sysvipc/shm");
    let range = i64::from(base)..i64::from(base) + 33 * 0x1000;
    text.lines()
        .skip(1)
        .filter(|line| {
            line.split_whitespace()
                .next()
                .and_then(|key| key.parse::<i64>().ok())
                .is_some_and(|key| range.contains(&key))
        })
        .map(str::to_string)
        .collect()
}

fn run(args: &[&str]) -> (Output, String, String) {
    let out = Command::new(BENCH)
        .args(args)
        .output()
        .expect("start index-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

#[test]
fn quick_run_prints_every_figure_and_leaves_no_segments() {
    let base = key_base();
    let json = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("index-bench-quick-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&json);
    let base_arg = format!("{base:#x}");
    let json_arg = json.to_str().expect("utf-8 temp path");
    let (out, stdout, stderr) = run(&["--quick", "--shm-key-base", &base_arg, "--json", json_arg]);
    let leftover = segments_in_range(base);
    assert!(
        out.status.success(),
        "index-bench --quick failed ({}):\n{stdout}\n{stderr}",
        out.status
    );

    let n = QUICK_RECORDS;
    // One table line per figure, at the quick record count.
    let figures = [
        "inserts/s (1 thread)",
        "lookups/s (1 thread)",
        "warm attach + walk",
        "bytes/record in use",
        "bytes/record reserved",
        "bytes/record rss",
    ];
    for figure in figures {
        let lines: Vec<&str> = stdout
            .lines()
            .filter(|l| l.starts_with(figure) && l.contains(&format!(" {n} ")))
            .collect();
        assert_eq!(lines.len(), 1, "want one {figure:?} line:\n{stdout}");
        let line = lines[0];
        assert!(
            line.contains("PASS") || line.contains("MISS") || line.trim_end().ends_with('-'),
            "{figure:?} line has no result column: {line}"
        );
    }
    for sprigs in [16, 64] {
        for figure in ["sweep: lookups/s (1 thread)", "sweep: bytes/record in use"] {
            assert!(
                stdout.lines().any(|l| l.starts_with(figure)
                    && l.split_whitespace().any(|c| c == sprigs.to_string())),
                "no {figure:?} line for sprigs {sprigs}:\n{stdout}"
            );
        }
    }

    // The bench's own checks: every lookup found its key, the warm attach
    // walked every inserted entry.
    let found = format!("osprey lookups found {n}/{n}, hashmap lookups found {n}/{n}");
    assert!(
        stdout.lines().any(
            |l| l.starts_with(&format!("verified records={n} sprigs=256:"))
                && l.contains(&found)
                && l.contains(&format!("walk entries {n}/{n}"))
        ),
        "no verification line for the main run:\n{stdout}"
    );
    for sprigs in [16, 64] {
        assert!(
            stdout.lines().any(|l| l
                .starts_with(&format!("verified sweep records={n} sprigs={sprigs}:"))
                && l.contains(&found)),
            "no verification line for sweep sprigs {sprigs}:\n{stdout}"
        );
    }

    let text = std::fs::read_to_string(&json).expect("the bench wrote its JSON");
    let _ = std::fs::remove_file(&json);
    assert!(text.trim_start().starts_with('{') && text.trim_end().ends_with('}'));
    assert!(text.contains("\"figures\": ["), "{text}");
    assert_eq!(
        text.matches("\"name\": ").count(),
        figures.len() + 2 * 2,
        "{text}"
    );
    assert!(!text.contains("NaN") && !text.contains("inf"), "{text}");

    assert!(
        leftover.is_empty(),
        "index-bench left segments in {base:#x}..:\n{}",
        leftover.join("\n")
    );
}

#[test]
fn bad_flags_exit_2_with_one_line() {
    let bad: [&[&str]; 6] = [
        &["--bogus"],
        &["--records"],
        &["--records", "ten"],
        &["--sprigs", "300"],
        &["--pages", "big"],
        &["--quick", "--shm-key-base", "0x7fff0000"],
    ];
    for args in bad {
        let (out, stdout, stderr) = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stdout}{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
    }
}
