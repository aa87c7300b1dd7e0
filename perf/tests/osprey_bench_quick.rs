//! Runs `osprey-bench` against a real `ospreyd` that the test starts
//! itself: an insert of N keys must report N successes and no errors; a
//! read run, a batch-read run (with LOGIN, answered "security not enabled")
//! and a mixed run must report no errors and find every key; `--json` and
//! `--hdr-out` must write their files. Bad flags and unreachable hosts
//! must exit with code 2 and one line on stderr.
//!
//! `ospreyd` is another package's binary, so `CARGO_BIN_EXE_ospreyd` does
//! not exist here: the test builds it with `cargo build -p
//! osprey-appliance --bin ospreyd` (debug; a no-op when the workspace
//! build made it already) and takes the path cargo reports. The server
//! gets a temp dir with a 256 MiB file device, a free port and a
//! shared-memory key base of its own in 0x5C000000..0x5E000000 (a slot
//! whose keys nobody holds); its segments are removed with `ipcrm -M` at
//! the end. Every wait is bounded; only the pids this test spawned are
//! signalled.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{build_ospreyd, segments_in, spawn_piped, wait_bounded};

const BENCH: &str = env!("CARGO_BIN_EXE_osprey-bench");
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const BENCH_TIMEOUT: Duration = Duration::from_secs(120);
/// This test's shared-memory key range, in slots of 0x2000 keys (one
/// namespace uses base + 0x1000 ..= base + 0x1FFF).
const KEY_RANGE: std::ops::Range<u32> = 0x5C00_0000..0x5E00_0000;
const SLOT_KEYS: u32 = 0x2000;
const KEYS: u64 = 3000;

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// A key base whose slot holds no segments, starting from one derived
/// from the pid and `salt`.
fn pick_key_base(salt: u32) -> u32 {
    let slots = (KEY_RANGE.end - KEY_RANGE.start) / SLOT_KEYS;
    let first = (std::process::id().wrapping_mul(7) + salt) % slots;
    (0..slots)
        .map(|i| KEY_RANGE.start + ((first + i) % slots) * SLOT_KEYS)
        .find(|&base| segments_in(base..base + SLOT_KEYS).is_empty())
        .expect("a free shared-memory slot")
}

/// One ospreyd for one test; stopped (SIGTERM to its pid, then SIGKILL),
/// its segments removed and its dir deleted on drop.
struct Server {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
    key_base: u32,
    log: mpsc::Receiver<String>,
    lines: Vec<String>,
}

impl Server {
    fn start(binary: &Path, salt: u32) -> Server {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("osprey-bench-{}-{salt}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the server dir");
        let port = free_port();
        let key_base = pick_key_base(salt);
        let config = dir.join("ospreyd.toml");
        std::fs::write(
            &config,
            format!(
                r#"# Written by perf/tests/osprey_bench_quick.rs.
[service]
address = "127.0.0.1"
port = {port}
cores = 1
poll-mode = "adaptive"

[logging]
level = "info"
ticker-interval = 10

[[namespace]]
name = "test"
default-ttl = 0
nsup-period = 1

[namespace.storage]
devices = ["{device}"]
file-size = "256M"
write-block-size = "1M"
flush-max-ms = 100

[namespace.index]
shm-key-base = 0x{key_base:08X}
stage-size = "16M"
sprigs = 16
"#,
                device = dir.join("dev0.dat").display()
            ),
        )
        .expect("write the config");
        let mut child = spawn_piped(
            Command::new(binary).arg("--config").arg(&config),
            "spawn ospreyd",
        );
        let (tx, rx) = mpsc::channel();
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let mut server = Server {
            child: Some(child),
            dir,
            port,
            key_base,
            log: rx,
            lines: Vec::new(),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        let ready = format!("ready on 127.0.0.1:{port}");
        loop {
            match server.log.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    let done = line.contains(&ready);
                    server.lines.push(line);
                    if done {
                        return server;
                    }
                }
                Err(_) => {
                    let exited = server.child.as_mut().unwrap().try_wait().expect("try_wait");
                    assert!(
                        exited.is_none(),
                        "ospreyd exited ({exited:?}) before ready:\n{}",
                        server.output()
                    );
                    assert!(
                        Instant::now() < deadline,
                        "ospreyd not ready within {READY_TIMEOUT:?}:\n{}",
                        server.output()
                    );
                }
            }
        }
    }

    fn output(&mut self) -> String {
        while let Ok(line) = self.log.try_recv() {
            self.lines.push(line);
        }
        self.lines.join("\n")
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + STOP_TIMEOUT;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- ospreyd output ----\n{}", self.output());
        }
        for key in segments_in(self.key_base..self.key_base + SLOT_KEYS) {
            let _ = Command::new("ipcrm")
                .arg("-M")
                .arg(format!("0x{key:08x}"))
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs osprey-bench; returns (exit code, stdout, stderr).
fn bench(args: &[&str]) -> (Option<i32>, String, String) {
    let child = spawn_piped(Command::new(BENCH).args(args), "spawn osprey-bench");
    let out = wait_bounded(child, BENCH_TIMEOUT)
        .unwrap_or_else(|| panic!("osprey-bench {args:?} ran over {BENCH_TIMEOUT:?}"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs osprey-bench with `--json`; requires exit 0; returns the JSON.
fn bench_json(server: &mut Server, name: &str, args: &[&str]) -> String {
    let json = server.dir.join(format!("{name}.json"));
    let host = server.host();
    let mut all = vec!["-h", host.as_str(), "--json", json.to_str().unwrap()];
    all.extend_from_slice(args);
    let (code, stdout, stderr) = bench(&all);
    assert_eq!(
        code,
        Some(0),
        "osprey-bench {all:?}:\n{stdout}\n{stderr}\n---- server ----\n{}",
        server.output()
    );
    let text = std::fs::read_to_string(&json).expect("osprey-bench wrote its JSON");
    assert!(
        text.trim_start().starts_with('{') && text.trim_end().ends_with('}'),
        "{text}"
    );
    for bad in ["NaN", "inf"] {
        assert!(!text.contains(bad), "{text}");
    }
    println!("{stdout}");
    text
}

/// The integer after `"key": ` in the first line of `text` that contains
/// `line_marker`.
fn number(text: &str, line_marker: &str, key: &str) -> u64 {
    let line = text
        .lines()
        .find(|l| l.contains(line_marker))
        .unwrap_or_else(|| panic!("no line with {line_marker:?}:\n{text}"));
    let pattern = format!("\"{key}\": ");
    let start = line
        .find(&pattern)
        .unwrap_or_else(|| panic!("no {key:?} in {line}"))
        + pattern.len();
    let digits: String = line[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("{key:?} is not a number in {line}"))
}

fn assert_no_errors(text: &str) {
    assert_eq!(number(text, "\"total\": {", "errors"), 0, "{text}");
    assert!(text.contains("  \"errors\": {},"), "{text}");
}

#[test]
fn insert_then_reads_against_a_real_ospreyd() {
    let binary = build_ospreyd();
    let mut server = Server::start(&binary, 0);
    let keys = KEYS.to_string();

    let text = bench_json(
        &mut server,
        "insert",
        &["-w", "I", "-k", &keys, "-o", "B100,I", "-z", "2", "-c", "4"],
    );
    assert_eq!(number(&text, "\"kind\": \"write\"", "ops"), KEYS, "{text}");
    assert_eq!(number(&text, "\"total\": {", "ops"), KEYS, "{text}");
    assert_no_errors(&text);

    let hdr_dir = server.dir.join("hdr");
    let hdr = hdr_dir.to_str().unwrap().to_string();
    let text = bench_json(
        &mut server,
        "read",
        &[
            "-w",
            "RU,100",
            "-k",
            &keys,
            "-t",
            "2",
            "-c",
            "4",
            "--quiet",
            "--hdr-out",
            &hdr,
        ],
    );
    assert!(number(&text, "\"kind\": \"read\"", "ops") > 0, "{text}");
    assert_eq!(
        number(&text, "\"kind\": \"read\"", "not_found"),
        0,
        "{text}"
    );
    assert_no_errors(&text);
    for file in ["intervals.hlog", "total.hlog"] {
        let log = std::fs::read_to_string(hdr_dir.join(file)).expect("an hdr log");
        assert!(
            log.lines().any(|l| l.starts_with("Tag=read,")),
            "{file}:\n{log}"
        );
    }

    let text = bench_json(
        &mut server,
        "batch",
        &[
            "-w",
            "RU,100",
            "-k",
            &keys,
            "-t",
            "1",
            "--batch-size",
            "8",
            "--keys-distribution",
            "zipf",
            "--user",
            "admin",
            "--password",
            "admin",
        ],
    );
    assert!(number(&text, "\"kind\": \"batch\"", "ops") > 0, "{text}");
    assert!(number(&text, "\"batch_keys\"", "found") > 0, "{text}");
    assert_eq!(number(&text, "\"batch_keys\"", "not_found"), 0, "{text}");
    assert_no_errors(&text);

    let text = bench_json(
        &mut server,
        "mixed",
        &[
            "-w",
            "RUD,60,30",
            "-k",
            &keys,
            "-t",
            "1",
            "-z",
            "2",
            "-c",
            "2",
            "-o",
            "S20",
        ],
    );
    for kind in ["read", "write", "delete"] {
        assert!(
            number(&text, &format!("\"kind\": \"{kind}\""), "ops") > 0,
            "{text}"
        );
    }
    assert_no_errors(&text);
}

#[test]
fn bad_flags_and_unreachable_hosts_exit_2_with_one_line() {
    let nobody = format!("127.0.0.1:{}", free_port());
    let cases: [&[&str]; 8] = [
        &["--bogus"],
        &["-w", "XY"],
        &["-w", "RU,50", "-z", "0"],
        &["-o", "B"],
        &["-k"],
        &["--keys-distribution", "zipf,2"],
        &["-h", &nobody],
        &["-h", "127.0.0.1:0"],
    ];
    for args in cases {
        let (code, stdout, stderr) = bench(args);
        assert_eq!(code, Some(2), "{args:?}: {stdout}{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("osprey-bench: "), "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
    }
}
