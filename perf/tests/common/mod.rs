//! What the perf tests share: starting a child process with piped output
//! and waiting for it within a bound, building ospreyd in the test's own
//! profile, a temporary directory removed on drop, and listing System V
//! segments in a key range.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Building ospreyd may compile the whole server first.
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Starts `command` with stdin from /dev/null and stdout and stderr
/// piped; panics, naming `what`, if it cannot start.
pub fn spawn_piped(command: &mut Command, what: &str) -> Child {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// A temporary directory, removed when dropped (also when an assertion
/// fails).
pub struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits for `child` at most `limit`, reading its output meanwhile. Past
/// the limit: SIGTERM (by pid), 30 s more, then SIGKILL; returns `None`.
pub fn wait_bounded(mut child: Child, limit: Duration) -> Option<Output> {
    let pipe_reader = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = pipe_reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let err = pipe_reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let deadline = Instant::now() + limit;
    let mut termed = false;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let output = Output {
                status,
                stdout: out.join().unwrap_or_default(),
                stderr: err.join().unwrap_or_default(),
            };
            return (!termed).then_some(output);
        }
        if Instant::now() > deadline {
            if termed {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            termed = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The directory of this test's own binaries (`target/<profile>`).
pub fn profile_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_osprey-bench"))
        .parent()
        .expect("a directory")
        .to_path_buf()
}

/// Builds ospreyd in this test's profile; returns the path cargo reports.
pub fn build_ospreyd() -> PathBuf {
    let mut args = vec![
        "build",
        "-p",
        "osprey-appliance",
        "--bin",
        "ospreyd",
        "--message-format=json",
    ];
    if profile_dir().file_name().and_then(|n| n.to_str()) == Some("release") {
        args.push("--release");
    }
    let child = spawn_piped(
        Command::new(env!("CARGO"))
            .args(&args)
            .current_dir(env!("CARGO_MANIFEST_DIR")),
        "run cargo build",
    );
    let out = wait_bounded(child, BUILD_TIMEOUT)
        .unwrap_or_else(|| panic!("cargo build of ospreyd took over {BUILD_TIMEOUT:?}"));
    assert!(
        out.status.success(),
        "cargo build of ospreyd failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "ospreyd")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .expect("cargo reported no ospreyd executable");
    assert!(path.exists(), "{} does not exist", path.display());
    path
}

/// Keys of System V segments in `range`.
pub fn segments_in(range: std::ops::Range<u32>) -> Vec<u32> {
    let text = std::fs::read_to_string("/proc/sysvipc/shm").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next()?.parse::<i64>().ok())
        .map(|k| k as u32) // printed as signed ints
        .filter(|k| range.contains(k))
        .collect()
}
