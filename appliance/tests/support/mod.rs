//! End-to-end test fixture: one `ospreyd` process with its own config file,
//! device file and shared-memory key range, all under a temp dir that is
//! removed when the fixture drops.
//!
//! * [`Server::start`] writes the config, spawns the daemon with stdout and
//!   stderr captured line by line, and waits (at most [`READY_TIMEOUT`]) for
//!   the `ready` line; a failure panics with the server's output.
//! * [`Server::stop`] sends SIGTERM (to the pid this fixture spawned, and no
//!   other) and waits a bounded time for the exit; [`Server::kill`] sends
//!   SIGKILL; [`Server::restart`] starts the daemon again on the same config,
//!   so with the same device file and shm key base.
//! * Drop kills a still-running daemon, removes its System V segments with
//!   `ipcrm` (the crate forbids `unsafe`, so no direct `shmctl`) and removes
//!   the temp dir. If the test is panicking, the server's output is printed.
//!
//! Key ranges: every fixture takes 0x2000 keys at
//! `0x2A000000 + slot * 0x20000 + test_id * 0x2000`, with `slot` derived from
//! the pid (moved on while the range holds anyone's segments), inside
//! 0x2A000000..0x2C000000. The engine puts namespace `n`'s segments at
//! `base + n * 0x1000 + seg` with `n` counted from 1 (the position in the
//! config); the fixtures configure one namespace, so keys base..base+0x2000.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod client;

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a start may take to print `ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a SIGTERMed server may take to exit.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(60);

const KEY_SPACE: u32 = 0x2A00_0000;
const SLOT_KEYS: u32 = 0x2_0000;
const TEST_KEYS: u32 = 0x2000;
const SLOTS: u32 = 0x100;

/// The namespace every fixture configures.
pub const NAMESPACE: &str = "test";

/// Knobs a test can change in the generated config.
#[derive(Clone, Debug)]
pub struct Options {
    /// `commit-to-device = true` in `[namespace.storage]`: a write is
    /// acknowledged only once it is on the device.
    pub commit_to_device: bool,
    pub file_size: String,
    pub write_block_size: String,
    pub flush_max_ms: u32,
    pub stage_size: String,
    /// Service cores (reactor threads).
    pub cores: u32,
    /// Extra lines for the `[service]` table (e.g. `max-connections = 3`).
    pub service_extra: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            commit_to_device: false,
            file_size: "256M".into(),
            write_block_size: "1M".into(),
            flush_max_ms: 100,
            stage_size: "16M".into(),
            cores: 1,
            service_extra: String::new(),
        }
    }
}

/// How the daemon said it started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartKind {
    Warm,
    Cold,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stream {
    Out,
    Err,
}

/// Every line the daemon printed, over all of its runs.
#[derive(Default)]
struct Log {
    lines: Mutex<Vec<(Stream, String)>>,
    changed: Condvar,
}

impl Log {
    fn push(&self, stream: Stream, line: String) {
        self.lines.lock().unwrap().push((stream, line));
        self.changed.notify_all();
    }
}

pub struct Server {
    dir: PathBuf,
    config_path: PathBuf,
    port: u16,
    key_base: u32,
    child: Option<Child>,
    readers: Vec<JoinHandle<()>>,
    log: Arc<Log>,
    /// Index in `log` of the first line of the current (or last) run.
    run_start: usize,
    runs: u32,
    ready_after: Duration,
    /// A panic message already carried the output (so Drop need not print it).
    log_reported: bool,
}

impl Server {
    /// Starts a server with the default config. `test_id` (0..16) must be
    /// distinct among the tests of one test binary.
    pub fn start(test_id: u32) -> Server {
        Server::start_with(test_id, Options::default())
    }

    pub fn start_with(test_id: u32, options: Options) -> Server {
        assert!(test_id < SLOT_KEYS / TEST_KEYS, "test_id {test_id} >= 16");
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "osprey-e2e-{}-{}-{:08x}",
            std::process::id(),
            test_id,
            nanos
        ));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let key_base = pick_key_base(test_id);
        let port = free_port();
        let config_path = dir.join("ospreyd.toml");
        fs::write(&config_path, config_text(&dir, port, key_base, &options))
            .unwrap_or_else(|e| panic!("write {}: {e}", config_path.display()));
        let mut server = Server {
            dir,
            config_path,
            port,
            key_base,
            child: None,
            readers: Vec::new(),
            log: Arc::default(),
            run_start: 0,
            runs: 0,
            ready_after: Duration::ZERO,
            log_reported: false,
        };
        server.spawn_and_wait_ready();
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`, as a client seed.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn key_base(&self) -> u32 {
        self.key_base
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// How long the last start took from spawn to the `ready` line.
    pub fn ready_after(&self) -> Duration {
        self.ready_after
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }

    /// What the current (or last) run printed about its start.
    pub fn start_kind(&self) -> Option<StartKind> {
        let lines = self.log.lines.lock().unwrap();
        lines[self.run_start..].iter().find_map(|(_, l)| {
            if l.contains("start: warm") {
                Some(StartKind::Warm)
            } else if l.contains("start: cold") {
                Some(StartKind::Cold)
            } else {
                None
            }
        })
    }

    /// Waits (bounded) until the daemon has printed a line containing
    /// `needle`: its output reaches the test through a reader thread, which
    /// can lag behind the replies on a loaded machine. Returns whether it
    /// appeared.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut lines = self.log.lines.lock().unwrap();
        loop {
            if lines.iter().any(|(_, line)| line.contains(needle)) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            lines = self
                .log
                .changed
                .wait_timeout(lines, deadline - now)
                .unwrap()
                .0;
        }
    }

    /// Asserts (waiting up to 10 s) that the daemon printed `needle`.
    pub fn expect_log(&self, needle: &str) {
        assert!(
            self.wait_for_log(needle, Duration::from_secs(10)),
            "ospreyd never printed {needle:?}\n{}",
            self.log_text()
        );
    }

    /// Everything the daemon printed, over all runs, for failure messages.
    pub fn log_text(&self) -> String {
        let lines = self.log.lines.lock().unwrap();
        let mut out = String::new();
        for (stream, line) in lines.iter() {
            let tag = match stream {
                Stream::Out => "out",
                Stream::Err => "err",
            };
            let _ = writeln!(out, "  [ospreyd {tag}] {line}");
        }
        if out.is_empty() {
            out.push_str("  (ospreyd printed nothing)\n");
        }
        out
    }

    /// SIGTERM, then wait (bounded) for the exit. Returns the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let pid = self.child.as_ref().expect("stop: server not running").id();
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .expect("run kill -TERM");
        // kill fails only if the process is gone already (it stays a zombie,
        // so its pid is not reused, until we reap it below).
        let _ = sent;
        self.reap_within(STOP_TIMEOUT, "of SIGTERM")
    }

    /// Waits (bounded) for the exit; past `timeout` kills the server and
    /// fails the test with its log.
    fn reap_within(&mut self, timeout: Duration, after: &str) -> ExitStatus {
        let pid = self.child.as_ref().expect("server not running").id();
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut().unwrap();
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                self.join_readers();
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                self.join_readers();
                self.log_reported = true;
                panic!(
                    "ospreyd (pid {pid}) did not exit within {timeout:?} {after}; killed it\n{}",
                    self.log_text()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and require a clean exit (status 0).
    pub fn stop_clean(&mut self) {
        let status = self.stop();
        assert!(
            status.success(),
            "ospreyd exited with {status} after SIGTERM (want 0)\n{}",
            self.log_text()
        );
    }

    /// Waits (bounded) for the server to exit by itself, e.g. after the
    /// `shutdown` info command.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        self.reap_within(timeout, "of being told to shut down")
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.join_readers();
    }

    /// Starts the daemon again on the same config (device file, port, shm
    /// key base); stops it first (requiring a clean exit) if it is running.
    /// Returns the time from spawn to `ready`.
    pub fn restart(&mut self) -> Duration {
        if self.child.is_some() {
            self.stop_clean();
        }
        self.spawn_and_wait_ready();
        self.ready_after
    }

    /// Keys of the System V segments in this server's key range.
    pub fn segments(&self) -> Vec<u32> {
        segments_in(self.key_base, self.key_base + TEST_KEYS)
    }

    /// Removes this server's segments (the server must not be running), so
    /// that the next start is cold. Returns how many were removed.
    pub fn remove_segments(&mut self) -> usize {
        assert!(
            !self.is_running(),
            "remove_segments while ospreyd is running"
        );
        let keys = self.segments();
        for key in &keys {
            let out = Command::new("ipcrm")
                .arg("-M")
                .arg(format!("0x{key:08x}"))
                .output()
                .expect("run ipcrm");
            assert!(
                out.status.success() || !segments_in(*key, key + 1).contains(key),
                "ipcrm -M 0x{key:08x}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        keys.len()
    }

    fn spawn_and_wait_ready(&mut self) {
        assert!(self.child.is_none(), "ospreyd already running");
        self.run_start = self.log.lines.lock().unwrap().len();
        self.runs += 1;
        if self.runs > 1 {
            self.log.push(
                Stream::Out,
                format!("---- (test) start #{} ----", self.runs),
            );
            self.run_start += 1;
        }
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ospreyd"))
            .arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", env!("CARGO_BIN_EXE_ospreyd")));
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        self.readers
            .push(spawn_reader(out, Stream::Out, self.log.clone()));
        self.readers
            .push(spawn_reader(err, Stream::Err, self.log.clone()));
        self.child = Some(child);

        let port = self.port.to_string();
        let is_ready = |l: &(Stream, String)| {
            l.0 == Stream::Out && l.1.contains("ready") && l.1.contains(port.as_str())
        };
        let deadline = started + READY_TIMEOUT;
        loop {
            {
                let lines = self.log.lines.lock().unwrap();
                if lines[self.run_start..].iter().any(is_ready) {
                    self.ready_after = started.elapsed();
                    return;
                }
                // Wake on the next line, or look at the process again soon.
                let _ = self
                    .log
                    .changed
                    .wait_timeout(lines, Duration::from_millis(50))
                    .unwrap();
            }
            let child = self.child.as_mut().unwrap();
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                self.join_readers();
                self.log_reported = true;
                panic!(
                    "ospreyd exited with {status} before printing a 'ready' line for port {port}\n\
                     config {}:\n{}\noutput:\n{}",
                    self.config_path.display(),
                    fs::read_to_string(&self.config_path).unwrap_or_default(),
                    self.log_text()
                );
            }
            if Instant::now() > deadline {
                self.kill();
                self.log_reported = true;
                panic!(
                    "ospreyd printed no 'ready' line for port {port} within {READY_TIMEOUT:?}; killed it\noutput:\n{}",
                    self.log_text()
                );
            }
        }
    }

    /// Waits (bounded) for the output readers to see EOF.
    fn join_readers(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.readers.iter().any(|h| !h.is_finished()) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        // A reader still blocked (a grandchild holding the pipe) is left
        // detached rather than waited for.
        for h in std::mem::take(&mut self.readers) {
            if h.is_finished() {
                let _ = h.join();
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
        }
        self.join_readers();
        if thread::panicking() && !self.log_reported {
            eprintln!(
                "---- ospreyd output (port {}, config {}) ----\n{}",
                self.port,
                self.config_path.display(),
                self.log_text()
            );
        }
        for key in self.segments() {
            let _ = Command::new("ipcrm")
                .arg("-M")
                .arg(format!("0x{key:08x}"))
                .output();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn spawn_reader(pipe: impl Read + Send + 'static, stream: Stream, log: Arc<Log>) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    log.push(stream, line.trim_end_matches(['\n', '\r']).to_string());
                }
            }
        }
        // Wake a waiter so it looks at the process again at once.
        log.changed.notify_all();
    })
}

fn config_text(dir: &Path, port: u16, key_base: u32, o: &Options) -> String {
    let device = toml_string(&dir.join("dev0.dat").to_string_lossy());
    let commit = if o.commit_to_device {
        "commit-to-device = true\n"
    } else {
        ""
    };
    format!(
        r#"# Written by appliance/tests/support for one end-to-end test.
[service]
address = "127.0.0.1"
port = {port}
cores = {cores}
poll-mode = "adaptive"
{service_extra}

[logging]
level = "info"
ticker-interval = 10

[[namespace]]
name = "{NAMESPACE}"
default-ttl = 0
nsup-period = 1

[namespace.storage]
devices = [{device}]
file-size = "{file_size}"
write-block-size = "{wbs}"
flush-max-ms = {flush}
{commit}
[namespace.index]
shm-key-base = 0x{key_base:08X}
stage-size = "{stage}"
sprigs = 16
"#,
        file_size = o.file_size,
        wbs = o.write_block_size,
        flush = o.flush_max_ms,
        stage = o.stage_size,
        cores = o.cores,
        service_extra = o.service_extra,
    )
}

fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// Keys of the System V shm segments with `lo <= key < hi`.
pub fn segments_in(lo: u32, hi: u32) -> Vec<u32> {
    let text = fs::read_to_string("/proc/sysvipc/shm").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next()?.parse::<i64>().ok())
        .map(|k| k as u32) // keys are printed as signed ints
        .filter(|k| (lo..hi).contains(k))
        .collect()
}

/// The first slot, starting from one derived from the pid, whose range for
/// `test_id` holds no segments.
fn pick_key_base(test_id: u32) -> u32 {
    let first = std::process::id() % SLOTS;
    for i in 0..SLOTS {
        let slot = (first + i) % SLOTS;
        let base = KEY_SPACE + slot * SLOT_KEYS + test_id * TEST_KEYS;
        if segments_in(base, base + TEST_KEYS).is_empty() {
            return base;
        }
    }
    panic!("no free shm key range for test {test_id} in 0x2A000000..0x2C000000; remove old segments with ipcrm");
}

/// Runs a command with stdout and stderr captured; kills it (by its own pid)
/// if it has not finished within `timeout`. Returns the output and whether it
/// timed out.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> (Output, bool) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_reader = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_reader = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("wait");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    (
        Output {
            status,
            stdout,
            stderr,
        },
        timed_out,
    )
}

/// The workspace root (the parent of this package's directory).
/// The Python interpreter with the official `aerospike` client:
/// `$OSPREY_PYTHON`, or the venv `scripts/install-deps.sh` makes. Fails the
/// test, saying how to get one, if it is missing or cannot import the client.
pub fn python() -> PathBuf {
    let python = match std::env::var_os("OSPREY_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => workspace_root().join("target/python-venv/bin/python3"),
    };
    assert!(
        python.exists(),
        "no Python interpreter with the aerospike client at {}: run scripts/install-deps.sh \
         (or set OSPREY_PYTHON)",
        python.display()
    );
    let (out, timed_out) = run_bounded(
        Command::new(&python).args(["-c", "import aerospike, aerospike_helpers"]),
        Duration::from_secs(60),
    );
    assert!(
        !timed_out && out.status.success(),
        "{} cannot import the aerospike client: run scripts/install-deps.sh\n{}",
        python.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    python
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}
