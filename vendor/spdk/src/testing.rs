//! An SPDK NVMe-over-TCP target for tests: SPDK's own `nvmf_tgt`, serving
//! an `aio` bdev backed by a file on 127.0.0.1, so that the SPDK backend is
//! tested exactly as it attaches to a drive, without NVMe hardware.
//!
//! [`NvmfTarget::start`] returns `Err(reason)` when the host cannot run it
//! (no `nvmf_tgt`, no free hugepages); tests print the reason and skip.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The subsystem the target exposes.
pub const SUBSYSTEM_NQN: &str = "nqn.2016-06.io.spdk:osprey-test";

/// How long the target may take to start listening, and to stop.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What to serve.
#[derive(Clone, Debug)]
pub struct TargetOptions {
    /// The backing file; created (sparse) or grown to `size_bytes`.
    pub file: PathBuf,
    pub size_bytes: u64,
    /// The namespace's sector size (512 or 4096).
    pub block_size: u32,
    /// Cores for `nvmf_tgt` (hex mask); keep them apart from Osprey's.
    pub core_mask: String,
    /// Where the JSON config, the RPC socket and the log go.
    pub work_dir: PathBuf,
}

/// A running `nvmf_tgt`; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct NvmfTarget {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

/// Where an installed SPDK's `nvmf_tgt` and libraries are: `OSPREY_NVMF_TGT`,
/// else `<prefix>/bin/nvmf_tgt` of the prefix pkg-config reports, else
/// `$SPDK_DIR/bin/nvmf_tgt`.
pub fn find_nvmf_tgt() -> Result<(PathBuf, Option<PathBuf>), String> {
    let libdir = pkg_config_libdir()
        .or_else(|| std::env::var_os("SPDK_DIR").map(|d| Path::new(&d).join("lib")));
    if let Some(path) = std::env::var_os("OSPREY_NVMF_TGT") {
        return Ok((PathBuf::from(path), libdir));
    }
    let mut tried = Vec::new();
    let prefixes = [
        pkg_config_libdir().and_then(|d| d.parent().map(Path::to_path_buf)),
        std::env::var_os("SPDK_DIR").map(PathBuf::from),
    ];
    for prefix in prefixes.into_iter().flatten() {
        let candidate = prefix.join("bin/nvmf_tgt");
        if candidate.is_file() {
            return Ok((candidate, libdir));
        }
        tried.push(candidate.display().to_string());
    }
    Err(format!(
        "no SPDK nvmf_tgt found (tried {tried:?}); install SPDK with its apps and set \
         PKG_CONFIG_PATH=<prefix>/lib/pkgconfig, SPDK_DIR=<prefix> or OSPREY_NVMF_TGT"
    ))
}

/// SPDK's library directory, from `pkg-config --libs-only-L spdk_nvme`
/// (SPDK's .pc files set no `libdir` variable).
fn pkg_config_libdir() -> Option<PathBuf> {
    let out = Command::new("pkg-config")
        .args(["--libs-only-L", "spdk_nvme"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find_map(|f| f.strip_prefix("-L"))
        .map(PathBuf::from)
}

/// Free hugepage memory in MiB, and whether hugetlbfs is mounted.
pub fn hugepages_free_mb() -> (u64, bool) {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |key: &str| {
        meminfo
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let free_mb = field("HugePages_Free:") * field("Hugepagesize:") / 1024;
    let mounted = std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("hugetlbfs"));
    (free_mb, mounted)
}

/// Why this host cannot run SPDK tests, if it cannot.
pub fn host_unready(min_hugepages_mb: u64) -> Option<String> {
    let (free_mb, mounted) = hugepages_free_mb();
    if !mounted || free_mb < min_hugepages_mb {
        return Some(format!(
            "SPDK needs {min_hugepages_mb} MiB of free hugepages and hugetlbfs mounted (have {free_mb} MiB, \
             mounted: {mounted}); run: sudo scripts/setup-hugepages.sh --pages {}",
            min_hugepages_mb.div_ceil(2).max(512)
        ));
    }
    if let Err(e) = find_nvmf_tgt() {
        return Some(e);
    }
    None
}

fn free_port() -> Result<u16, String> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot find a free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port: {e}"))
}

impl NvmfTarget {
    /// Starts `nvmf_tgt` serving `options.file` and waits (bounded) until it
    /// listens.
    pub fn start(options: &TargetOptions) -> Result<NvmfTarget, String> {
        let (binary, libdir) = find_nvmf_tgt()?;
        std::fs::create_dir_all(&options.work_dir)
            .map_err(|e| format!("{}: {e}", options.work_dir.display()))?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&options.file)
            .map_err(|e| format!("{}: {e}", options.file.display()))?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < options.size_bytes {
            file.set_len(options.size_bytes)
                .map_err(|e| format!("{}: {e}", options.file.display()))?;
        }
        drop(file);
        let port = free_port()?;
        let config = options.work_dir.join("nvmf_tgt.json");
        let rpc = options.work_dir.join("rpc.sock");
        let log = options.work_dir.join("nvmf_tgt.log");
        std::fs::write(&config, config_json(options, port))
            .map_err(|e| format!("{}: {e}", config.display()))?;
        let log_file =
            std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let log_err = log_file
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let mut command = Command::new(&binary);
        command
            .arg("-m")
            .arg(&options.core_mask)
            .arg("-c")
            .arg(&config)
            .arg("-r")
            .arg(&rpc)
            // Several targets may share a core (tests running side by side);
            // SPDK apps otherwise lock their cores against each other.
            .arg("--disable-cpumask-locks")
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err);
        if let Some(dir) = libdir {
            let mut path = dir.into_os_string();
            if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
                path.push(":");
                path.push(old);
            }
            command.env("LD_LIBRARY_PATH", path);
        }
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let mut target = NvmfTarget {
            child: Some(child),
            port,
            log,
        };
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                return Ok(target);
            }
            let exited = target
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                let why = match exited {
                    Some(status) => format!("nvmf_tgt exited ({status})"),
                    None => format!("nvmf_tgt did not listen within {START_TIMEOUT:?}"),
                };
                return Err(format!("{why}; its log:\n{}", target.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The transport id that reaches namespace 1 of the subsystem.
    pub fn transport_id(&self) -> String {
        format!(
            "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{} subnqn:{SUBSYSTEM_NQN}",
            self.port
        )
    }

    /// The last lines of the target's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Stops the target: SIGTERM, then SIGKILL after a bounded wait.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: sending a signal has no memory-safety preconditions;
            // `pid` is our own child, not yet reaped, so it names no one else.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for NvmfTarget {
    fn drop(&mut self) {
        self.stop();
    }
}

fn config_json(options: &TargetOptions, port: u16) -> String {
    let file = options.file.display().to_string().replace('"', "\\\"");
    format!(
        r#"{{"subsystems": [
  {{"subsystem": "bdev", "config": [
    {{"method": "bdev_aio_create", "params": {{"name": "osprey0", "filename": "{file}", "block_size": {block}}}}}
  ]}},
  {{"subsystem": "nvmf", "config": [
    {{"method": "nvmf_create_transport", "params": {{"trtype": "TCP"}}}},
    {{"method": "nvmf_create_subsystem", "params": {{"nqn": "{nqn}", "allow_any_host": true, "serial_number": "OSPREY00000001", "model_number": "Osprey test target"}}}},
    {{"method": "nvmf_subsystem_add_ns", "params": {{"nqn": "{nqn}", "namespace": {{"bdev_name": "osprey0"}}}}}},
    {{"method": "nvmf_subsystem_add_listener", "params": {{"nqn": "{nqn}", "listen_address": {{"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": "{port}"}}}}}}
  ]}}
]}}
"#,
        block = options.block_size,
        nqn = SUBSYSTEM_NQN,
    )
}
