//! Start-up, the control thread, and clean shutdown.
//!
//! ```text
//! load config ─► open devices ─► Namespace::open (warm attach or cold scan)
//!   ─► bind ─► one reactor thread per service core (pinned), each with its
//!      own CoreService and device queues ─► "ready"
//! control thread (this one): signals, ticker, namespace supervisor
//! stop (SIGTERM, SIGINT, `shutdown` info command):
//!   reactors stop reading, finish parked requests, flush open buffers,
//!   drop their queues ─► Namespace::shutdown (device headers + trusted
//!   index with the same shutdown id) ─► exit 0; the next start is warm
//! ```
//!
//! The control thread never touches a client request; it reads counters,
//! runs expiry and eviction through the index, and sleeps in between.

use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8};
use std::sync::Arc;
use std::time::{Duration, Instant};

use osprey_engine::device::uring::UringDevice;
use osprey_engine::device::Device;
use osprey_engine::storage::namespace::{system_clock, Namespace, ScanProgress, StartKind};
use osprey_engine::storage::supervisor::TombRaiderReport;
use osprey_net::reactor::{self, NetShared, Reactor, ReactorConfig};

use crate::config::{self, Config, DeviceSpec};
use crate::service::CoreService;
use crate::state::{percent, CoreStats, NamespaceRuntime, NamespaceSnapshot, ServerState};

/// Why the daemon could not start or stop cleanly; the message is printed
/// as is and names the key, device or address at fault.
#[derive(Debug)]
pub struct DaemonError(pub String);

impl std::fmt::Display for DaemonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The most verbose level printed (`logging.level`): 0 error .. 3 debug.
static LOG_LEVEL: AtomicU8 = AtomicU8::new(2);

fn level_rank(level: &str) -> u8 {
    match level {
        "error" => 0,
        "warn" => 1,
        "info" => 2,
        _ => 3,
    }
}

/// Prints a log line with the wall-clock time (UTC) and the level, if the
/// configured `logging.level` lets it through. The data path never logs.
pub fn log(level: &str, message: &str) {
    if level_rank(level) > LOG_LEVEL.load(Relaxed) {
        return;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let s = now.as_secs();
    println!(
        "{:02}:{:02}:{:02}.{:03} {level:<5} {message}",
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60,
        now.subsec_millis()
    );
}

fn open_device(spec: &DeviceSpec) -> Result<Arc<dyn Device>, DaemonError> {
    match spec {
        DeviceSpec::File { path, .. } | DeviceSpec::BlockDevice { path } => {
            let options = spec.uring_options().unwrap_or_default();
            if let DeviceSpec::File { path, .. } = spec {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        DaemonError(format!(
                            "device {}: cannot create directory {}: {e}",
                            path.display(),
                            dir.display()
                        ))
                    })?;
                }
            }
            let device = UringDevice::open(path, &options)
                .map_err(|e| DaemonError(format!("device {}: {e}", path.display())))?;
            Ok(Arc::new(device))
        }
        #[cfg(feature = "spdk")]
        DeviceSpec::Spdk { transport_id } => {
            // SPDK's environment covers the cores the reactors pin to (the
            // process's CPUs, or OSPREY_SPDK_CORE_MASK), with a private
            // per-process shared-memory id so several daemons coexist.
            use osprey_engine::device::spdk::{EnvOptions, SpdkDevice, SpdkOptions};
            let core_mask = std::env::var("OSPREY_SPDK_CORE_MASK")
                .unwrap_or_else(|_| EnvOptions::core_mask_for_first(usize::MAX));
            let options = SpdkOptions {
                env: EnvOptions {
                    name: "ospreyd".to_string(),
                    core_mask,
                    ..EnvOptions::default()
                },
                ..SpdkOptions::default()
            };
            let device = SpdkDevice::open(transport_id, &options)
                .map_err(|e| DaemonError(format!("device {transport_id:?}: {e}")))?;
            Ok(Arc::new(device))
        }
        #[cfg(not(feature = "spdk"))]
        DeviceSpec::Spdk { transport_id } => Err(DaemonError(format!(
            "device {transport_id:?}: this ospreyd was built without SPDK; \
             rebuild with `cargo build --release --features spdk` on a host with SPDK installed"
        ))),
    }
}

/// Runs the daemon with the config at `path` until it is told to stop.
pub fn run(path: &Path, stop_signal: Arc<AtomicBool>) -> Result<(), DaemonError> {
    let config = Config::load(path).map_err(|e| DaemonError(format!("{}: {e}", path.display())))?;
    LOG_LEVEL.store(level_rank(&config.logging.level.to_string()), Relaxed);
    log(
        "info",
        &format!("ospreyd {} starting", env!("CARGO_PKG_VERSION")),
    );
    for line in config.summary().lines() {
        log("info", &format!("config: {line}"));
    }

    let security = crate::security::Security::start(
        &config.security,
        std::env::var(crate::security::ADMIN_PASSWORD_ENV).ok(),
    )
    .map_err(DaemonError)?;

    let cores = config.service.cores.max(1);
    let net = NetShared::new(cores).map_err(|e| DaemonError(format!("reactor set-up: {e}")))?;

    let mut namespaces = Vec::with_capacity(config.namespaces.len());
    for ns_config in &config.namespaces {
        let mut devices = Vec::with_capacity(ns_config.devices.len());
        for spec in &ns_config.devices {
            devices.push(open_device(spec)?);
        }
        let started = Instant::now();
        log(
            "info",
            &format!(
                "namespace {}: starting on {} device(s)",
                ns_config.name,
                devices.len()
            ),
        );
        let mut storage_config = ns_config.storage_config();
        let progress = Arc::new(ScanProgress::default());
        storage_config.scan_progress = Some(progress.clone());
        // Dropping the sender ends the reporter at once (it used to poll a
        // flag every 50 ms, and every start, warm ones too, waited for it).
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let opened = std::thread::scope(|scope| {
            let (name, progress) = (&ns_config.name, &progress);
            scope.spawn(move || report_scan_progress(name, progress, finished));
            let opened = Namespace::open(
                storage_config,
                &ns_config.index_config(ns_config.namespace_id),
                devices,
                Arc::new(system_clock),
            );
            drop(done);
            opened
        });
        let (ns, kind) =
            opened.map_err(|e| DaemonError(format!("namespace {}: {e}", ns_config.name)))?;
        match &kind {
            StartKind::Warm { entries } => log(
                "info",
                &format!(
                    "namespace {}: start: warm ({entries} index entries re-attached in {:.3} s)",
                    ns_config.name,
                    started.elapsed().as_secs_f64()
                ),
            ),
            StartKind::Cold { reason, scan } => log(
                "info",
                &format!(
                    "namespace {}: start: cold ({reason}); scanned {} MiB in {:.3} s: \
                     {} images read, {} unique, {} replaced, {} older, {} expired, \
                     {} truncated, {} unreadable",
                    ns_config.name,
                    scan.bytes_scanned >> 20,
                    started.elapsed().as_secs_f64(),
                    scan.records_read,
                    scan.unique,
                    scan.replaced,
                    scan.older,
                    scan.expired,
                    scan.truncated,
                    scan.bad_images
                ),
            ),
        }
        namespaces.push(NamespaceRuntime {
            name: ns_config.name.clone(),
            ns: Arc::new(ns),
            replication_factor: ns_config.replication_factor,
            default_ttl_s: ns_config.default_ttl_s.min(u64::from(u32::MAX)) as u32,
            nsup_period_s: ns_config.nsup_period_s.min(u64::from(u32::MAX)) as u32,
            supervisor: ns_config.supervisor_config(),
            config_pairs: config_pairs(ns_config),
        });
    }

    let address = config.service.listen_address();
    let listener = TcpListener::bind(address).map_err(|e| {
        DaemonError(format!(
            "service.address/port: cannot listen on {address}: {e}"
        ))
    })?;
    let bound = listener
        .local_addr()
        .map_err(|e| DaemonError(format!("listener: {e}")))?;
    let service_address = if bound.ip().is_unspecified() {
        // Clients reach some address of this host; an empty value tells
        // them "not supported" and they keep the seed address (spec §2.1).
        String::new()
    } else {
        bound.to_string()
    };
    let state = Arc::new(ServerState {
        node_id: config.service.node_id,
        cluster_name: config.service.cluster_name.clone().unwrap_or_default(),
        service_address,
        port: bound.port(),
        namespaces,
        net: net.clone(),
        cores: (0..cores).map(|_| Arc::new(CoreStats::default())).collect(),
        started: Instant::now(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        max_connections: config.service.max_connections as usize,
        security: Arc::new(security),
    });

    let reactor_config = ReactorConfig {
        poll_mode: match config.service.poll_mode {
            config::PollMode::Busy => reactor::PollMode::Busy,
            config::PollMode::Adaptive => reactor::PollMode::Adaptive,
        },
        max_connections: config.service.max_connections as usize,
        idle_timeout: match config.service.proto_fd_idle_ms {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        },
        ..ReactorConfig::default()
    };

    let mut listener = Some(listener);
    let mut threads = Vec::with_capacity(cores);
    let failed = Arc::new(AtomicU64::new(0));
    for core in 0..cores {
        let state = state.clone();
        let core_net = net.clone();
        let reactor_config = reactor_config.clone();
        let listener = listener.take();
        let failed = failed.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let thread = std::thread::Builder::new()
            .name(format!("core-{core}"))
            .spawn(move || {
                let pinned = reactor::pin_to_core(core);
                let service = match CoreService::new(state, core) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        failed.fetch_add(1, Relaxed);
                        return;
                    }
                };
                let reactor = match Reactor::new(core, reactor_config, core_net, listener, service)
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("core {core}: {e}")));
                        failed.fetch_add(1, Relaxed);
                        return;
                    }
                };
                if !pinned {
                    log(
                        "warn",
                        &format!("core {core}: could not pin the reactor thread"),
                    );
                }
                let _ = ready_tx.send(Ok(()));
                drop(reactor.run());
            })
            .map_err(|e| DaemonError(format!("cannot start reactor thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                net.stop();
                return Err(DaemonError(e));
            }
            Err(_) => return Err(DaemonError(format!("core {core} failed to start"))),
        }
        threads.push(thread);
    }
    log(
        "info",
        &format!(
            "ready on {bound} (node {}, {cores} service core(s), {:?} polling)",
            state.node_name(),
            reactor_config.poll_mode
        ),
    );

    control_loop(&state, &config, &stop_signal);

    log(
        "info",
        "shutting down: finishing requests and writing open buffers",
    );
    net.stop();
    for t in threads {
        let _ = t.join();
    }
    let state = Arc::try_unwrap(state)
        .map_err(|_| DaemonError("shutdown: a core still holds the namespaces".to_string()))?;
    for runtime in state.namespaces {
        let name = runtime.name;
        let ns = Arc::try_unwrap(runtime.ns)
            .map_err(|_| DaemonError(format!("namespace {name}: still in use at shutdown")))?;
        let id = ns
            .shutdown()
            .map_err(|e| DaemonError(format!("namespace {name}: shutdown: {e}")))?;
        log(
            "info",
            &format!("namespace {name}: clean shutdown, id {id:016x}; the next start is warm"),
        );
    }
    log("info", "stopped");
    Ok(())
}

/// How often a cold start says how far its device scan got.
const SCAN_PROGRESS_EVERY: Duration = Duration::from_secs(3);

/// Logs a cold scan's progress every few seconds until `finished` says the
/// start is over (its sender is dropped).
fn report_scan_progress(
    namespace: &str,
    progress: &ScanProgress,
    finished: std::sync::mpsc::Receiver<()>,
) {
    let mut next = Instant::now() + SCAN_PROGRESS_EVERY;
    loop {
        let wait = next.saturating_duration_since(Instant::now());
        match finished.recv_timeout(wait) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        next += SCAN_PROGRESS_EVERY;
        let (records, devices) = progress.snapshot();
        if devices.is_empty() {
            // Warm, or the scan has not begun.
            continue;
        }
        let per_device: Vec<String> = devices
            .iter()
            .filter(|d| !d.name.is_empty())
            .map(|d| format!("{} {}%", d.name, percent(d.scanned_bytes, d.total_bytes)))
            .collect();
        log(
            "info",
            &format!(
                "namespace {namespace}: cold start: {records} records read; {}",
                per_device.join(", ")
            ),
        );
    }
}

fn config_pairs(ns: &config::NamespaceConfig) -> Vec<(String, String)> {
    let storage = ns.storage_config();
    vec![
        (
            "replication-factor".into(),
            ns.replication_factor.to_string(),
        ),
        ("default-ttl".into(), ns.default_ttl_s.to_string()),
        ("nsup-period".into(), ns.nsup_period_s.to_string()),
        (
            "tomb-raider-period".into(),
            ns.tomb_raider_period_s.to_string(),
        ),
        ("evict-used-pct".into(), ns.evict_used_pct.to_string()),
        ("storage-engine".into(), "device".into()),
        (
            "storage-engine.device".into(),
            ns.devices
                .iter()
                .map(|d| d.name())
                .collect::<Vec<_>>()
                .join(","),
        ),
        (
            "storage-engine.write-block-size".into(),
            storage.write_block_bytes.to_string(),
        ),
        (
            "storage-engine.post-write-cache".into(),
            storage.post_write_cache_blocks.to_string(),
        ),
        (
            "storage-engine.max-write-cache".into(),
            storage.max_write_cache_bytes.to_string(),
        ),
        (
            "storage-engine.flush-max-ms".into(),
            storage.flush_max_ms.to_string(),
        ),
        (
            "storage-engine.defrag-lwm-pct".into(),
            storage.defrag_lwm_pct.to_string(),
        ),
        (
            "storage-engine.commit-to-device".into(),
            storage.commit_to_device.to_string(),
        ),
        (
            "storage-engine.stop-writes-pct".into(),
            storage.stop_writes_pct.to_string(),
        ),
    ]
}

/// Signals, the ticker and the namespace supervisors, until stopped.
fn control_loop(state: &ServerState, config: &Config, stop_signal: &AtomicBool) {
    let ticker = Duration::from_secs(config.logging.ticker_interval_s.max(1));
    let mut next_ticker = Instant::now() + ticker;
    let mut next_nsup: Vec<Option<Instant>> = state
        .namespaces
        .iter()
        .map(|n| {
            (n.nsup_period_s > 0)
                .then(|| Instant::now() + Duration::from_secs(n.nsup_period_s.into()))
        })
        .collect();
    // Tomb-raider passes (tombstone reclaim), per namespace; config and
    // state list the namespaces in the same order.
    let mut next_tomb_raid: Vec<Option<Instant>> = config
        .namespaces
        .iter()
        .map(|n| {
            (n.tomb_raider_period_s > 0)
                .then(|| Instant::now() + Duration::from_secs(n.tomb_raider_period_s))
        })
        .collect();
    let stop = || stop_signal.load(Relaxed) || state.net.stopping();
    let mut last = Ticker::default();
    // A tomb-raider pass reads every device (paced), which can take minutes:
    // it runs on a thread of its own so that signals, the ticker and the
    // expiry passes go on meanwhile. Leaving the scope waits for a pass
    // under way; a stop request ends it between write blocks.
    std::thread::scope(|scope| {
        let mut raids: Vec<Option<std::thread::ScopedJoinHandle<'_, TombRaiderReport>>> =
            config.namespaces.iter().map(|_| None).collect();
        loop {
            if stop_signal.load(Relaxed) {
                log("info", "stop signal received");
                return;
            }
            if state.net.stopping() {
                log("info", "shutdown requested by an info command");
                return;
            }
            let now = Instant::now();
            if now >= next_ticker {
                next_ticker = now + ticker;
                last = ticker_lines(state, &last, ticker);
            }
            for (i, due) in next_nsup.iter_mut().enumerate() {
                let Some(at) = *due else { continue };
                if now < at {
                    continue;
                }
                let runtime = &state.namespaces[i];
                let report = runtime
                    .ns
                    .run_supervisor_pass((runtime.ns.clock)(), &runtime.supervisor);
                if report.expired > 0 || report.evict.evicted > 0 {
                    log(
                        "info",
                        &format!(
                            "namespace {}: supervisor: {} expired, {} evicted in {:.3} s",
                            runtime.name,
                            report.expired,
                            report.evict.evicted,
                            report.elapsed.as_secs_f64()
                        ),
                    );
                }
                *due = Some(Instant::now() + Duration::from_secs(runtime.nsup_period_s.into()));
            }
            for (i, due) in next_tomb_raid.iter_mut().enumerate() {
                let (runtime, ns_config) = (&state.namespaces[i], &config.namespaces[i]);
                if raids[i].as_ref().is_some_and(|h| h.is_finished()) {
                    if let Some(Ok(report)) = raids[i].take().map(|h| h.join()) {
                        log_tomb_raid(&runtime.name, &report);
                    }
                    *due =
                        Some(Instant::now() + Duration::from_secs(ns_config.tomb_raider_period_s));
                }
                let Some(at) = *due else { continue };
                if now < at || raids[i].is_some() {
                    continue;
                }
                let (ns, raider) = (&runtime.ns, ns_config.tomb_raider_config());
                let stop = &stop;
                raids[i] = Some(scope.spawn(move || ns.reclaim_tombstones(&raider, stop)));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
}

fn log_tomb_raid(namespace: &str, report: &TombRaiderReport) {
    log(
        match report.aborted.as_deref() {
            Some(why) if why != "stopped" => "warn",
            _ => "info",
        },
        &format!(
            "namespace {namespace}: tomb raider: {} tombstones, {} reclaimed, {} kept (older images on the devices), {} changed meanwhile; read {} MiB in {:.3} s{}",
            report.marked,
            report.reclaimed,
            report.kept,
            report.changed,
            report.bytes_read >> 20,
            report.elapsed.as_secs_f64(),
            report
                .aborted
                .as_ref()
                .map_or(String::new(), |why| format!("; ended early, nothing reclaimed: {why}"))
        ),
    );
}

/// Counters at the previous ticker line, for rates.
#[derive(Default, Clone, Copy)]
struct Ticker {
    reads: u64,
    writes: u64,
    deletes: u64,
    batch: u64,
    scans: u64,
}

fn ticker_lines(state: &ServerState, last: &Ticker, period: Duration) -> Ticker {
    let t = state.totals();
    let secs = period.as_secs_f64().max(0.001);
    let rate = |now: u64, before: u64| (now.saturating_sub(before)) as f64 / secs;
    let net = &state.net.stats;
    log(
        "info",
        &format!(
            "ticker: connections {} (opened {}, refused {}, malformed {}); \
             ops/s read {:.0} write {:.0} delete {:.0} batch {:.0} scan {:.1}; errors {}; \
             write backlog {}",
            state.net.open_connections(),
            net.accepted.load(Relaxed),
            net.refused.load(Relaxed),
            net.malformed.load(Relaxed) + t.malformed,
            rate(t.reads, last.reads),
            rate(t.writes, last.writes),
            rate(t.deletes, last.deletes),
            rate(t.batch_requests, last.batch),
            rate(t.scans, last.scans),
            t.errors,
            config::human_bytes(t.write_backlog_bytes),
        ),
    );
    for runtime in &state.namespaces {
        let ns = &runtime.ns;
        let snap = NamespaceSnapshot::of(ns);
        let s = &ns.stats;
        log(
            "info",
            &format!(
                "ticker: namespace {}: objects {} tombstones {} (reclaimed {}); device used {} \
                 of {} ({}%), free wblocks {}, defrag queue {} (moved {}, freed {}); \
                 cache hits {}%; device reads {} writes {}; overloads {}",
                runtime.name,
                snap.objects,
                snap.tombstones,
                s.tombstones_reclaimed.load(Relaxed),
                config::human_bytes(snap.used_bytes),
                config::human_bytes(snap.capacity_bytes),
                percent(snap.used_bytes, snap.capacity_bytes),
                snap.free_wblocks,
                snap.defrag_queue,
                s.defrag_moved.load(Relaxed),
                s.defrag_freed.load(Relaxed),
                snap.cache_hit_pct,
                s.device_reads.load(Relaxed),
                s.device_writes.load(Relaxed),
                s.overloads.load(Relaxed),
            ),
        );
    }
    Ticker {
        reads: t.reads,
        writes: t.writes,
        deletes: t.deletes,
        batch: t.batch_requests,
        scans: t.scans,
    }
}
