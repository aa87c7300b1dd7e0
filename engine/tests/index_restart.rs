//! Warm and cold restarts across real processes.
//!
//! The test binary runs itself as a child (`current_exe() --exact <child fn>`)
//! with environment variables naming the child's role and the shared-memory
//! key base; the child builds the same config with that base, works on the
//! index and exits (or is killed). The parent then plays the restarted
//! process. The child test functions return at once when the role variable
//! is absent, so a normal run passes them without doing anything.

mod common;

use common::{digest, record, small_config, SegmentsGuard};
use osprey_engine::index::{AttachError, Change, IndexError, Refusal, Start};
use osprey_engine::{Digest, Index, IndexConfig, IndexRecord, PartitionId, PARTITION_COUNT};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Which child function should act, and as what.
const ROLE_VAR: &str = "OSPREY_RESTART_TEST_ROLE";
/// The parent's `shm_key_base`, in decimal.
const KEY_BASE_VAR: &str = "OSPREY_RESTART_TEST_KEY_BASE";
/// Prefix of every line a child prints for its parent. libtest may print
/// "test name ... " on the same line first, so parents search for it.
const MARK: &str = "OSPREY-CHILD ";

/// Sprigs per partition of every index in this file.
const SPRIGS: u32 = 4;
/// Shutdown id of the clean shutdown in the warm-restart test.
const SHUTDOWN_ID: u64 = 0x05E5_1D00_0000_002A;
/// Records the warm-restart workload starts from.
const N: u64 = 50_000;
/// Extra records inserted (half removed again) to churn the free list.
const EXTRA: u64 = 5_000;

fn config_with_base(base: u32) -> IndexConfig {
    IndexConfig {
        shm_key_base: base,
        ..small_config(SPRIGS)
    }
}

/// In a child: the config the parent asked for, if `role` is this child's.
fn child_config(role: &str) -> Option<IndexConfig> {
    if std::env::var(ROLE_VAR).ok()?.as_str() != role {
        return None;
    }
    let base = std::env::var(KEY_BASE_VAR)
        .expect("child started without a key base")
        .parse()
        .expect("key base is not a decimal u32");
    Some(config_with_base(base))
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "\n{MARK}{line}").unwrap();
    out.flush().unwrap();
}

// ---- child process handling -------------------------------------------------

/// A child test process. Dropping it kills and reaps the child if it still
/// runs, so a failing parent leaves no process (and no attachment) behind.
struct ChildProc {
    child: Child,
    lines: Receiver<String>,
    stderr: Option<JoinHandle<String>>,
}

impl ChildProc {
    fn spawn(test_fn: &str, role: &str, config: &IndexConfig) -> ChildProc {
        let exe = std::env::current_exe().expect("no current_exe");
        let mut child = Command::new(exe)
            .args(["--exact", test_fn, "--nocapture", "--test-threads=1"])
            .env(ROLE_VAR, role)
            .env(KEY_BASE_VAR, config.shm_key_base.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot spawn the child test process");
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        ChildProc {
            child,
            lines,
            stderr: Some(stderr),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for a line carrying `MARK` + `what`; returns
    /// the rest of it. Panics (with the child's stderr) on timeout or exit.
    fn wait_for(&mut self, what: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let wanted = format!("{MARK}{what}");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(at) = line.find(&wanted) {
                        return line[at + wanted.len()..].trim().to_string();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.kill_and_reap();
                    panic!(
                        "child {} did not print {wanted:?} within {timeout:?}; stderr:\n{}",
                        self.pid(),
                        self.stderr_text()
                    );
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.wait_exit(Duration::from_secs(10));
                    panic!(
                        "child {} exited ({status}) before printing {wanted:?}; stderr:\n{}",
                        self.pid(),
                        self.stderr_text()
                    );
                }
            }
        }
    }

    /// Waits up to `timeout` for the child to exit, killing it after that.
    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait failed") {
                return status;
            }
            if Instant::now() >= deadline {
                self.kill_and_reap();
                panic!("child {} still running after {timeout:?}", self.pid());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL (what `Child::kill` sends on Unix) and reap.
    fn kill_and_reap(&mut self) -> ExitStatus {
        let _ = self.child.kill();
        self.child.wait().expect("wait failed")
    }

    /// Everything the child wrote to stderr (call once it has exited).
    fn stderr_text(&mut self) -> String {
        self.stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

// ---- shared-memory bookkeeping ------------------------------------------

/// Keys of the config's namespace that exist on the host right now, from
/// `/proc/sysvipc/shm` (header line, then `key shmid perms size cpid lpid
/// nattch ...` with the key in decimal).
fn live_keys(config: &IndexConfig) -> Vec<(i64, u64)> {
    let low = i64::from(config.key(0));
    let high = low + 0x1000;
    let text = std::fs::read_to_string("/proc/sysvipc/shm").expect("no /proc/sysvipc/shm");
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let key: i64 = cols.first()?.parse().ok()?;
            let nattch: u64 = cols.get(6)?.parse().ok()?;
            (low..high).contains(&key).then_some((key, nattch))
        })
        .collect()
}

fn assert_keys_gone(config: &IndexConfig) {
    let left = live_keys(config);
    assert!(
        left.is_empty(),
        "segments left behind (key, nattch): {left:?}"
    );
}

// ---- the warm-restart workload ------------------------------------------

type Model = HashMap<Digest, IndexRecord>;

/// Applies one operation to the model and, when given, the index, checking
/// that the index returns what the model says.
fn apply(index: Option<&Index>, model: &mut Model, op: Op) {
    match op {
        Op::Put(r) => {
            let old = model.insert(r.digest, r);
            if let Some(index) = index {
                assert_eq!(index.put(r).unwrap(), old, "put {}", r.digest);
            }
        }
        Op::Remove(d) => {
            let old = model.remove(&d);
            if let Some(index) = index {
                assert_eq!(index.remove(&d), old, "remove {d}");
            }
        }
        Op::Update(d, insert_seed) => {
            let old = model.get(&d).copied();
            let change = update_change(old.as_ref(), d, insert_seed);
            if let Change::Put(r) = change {
                model.insert(d, r);
            }
            if let Some(index) = index {
                let seen = index
                    .update(&d, |cur| (update_change(cur, d, insert_seed), cur.copied()))
                    .unwrap();
                assert_eq!(seen, old, "update {d}");
            }
        }
        Op::Modify(d) => {
            let old = model.get(&d).copied();
            match old.as_ref().map(modify_change) {
                Some(Change::Put(r)) => {
                    model.insert(d, r);
                }
                Some(Change::Remove) => {
                    model.remove(&d);
                }
                _ => {}
            }
            if let Some(index) = index {
                let seen = index.modify(&d, |cur| (modify_change(cur), *cur));
                assert_eq!(seen, old, "modify {d}");
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Op {
    Put(IndexRecord),
    Remove(Digest),
    /// Bump when present; insert `record(d, seed)` when absent and a seed is given.
    Update(Digest, Option<u64>),
    /// Remove tombstones, move live records to the next set.
    Modify(Digest),
}

fn update_change(cur: Option<&IndexRecord>, d: Digest, insert_seed: Option<u64>) -> Change {
    match (cur, insert_seed) {
        (Some(r), _) => {
            let mut r = *r;
            r.generation = r.generation.wrapping_add(1);
            r.last_update_ms += 1;
            r.location.rblock_id += 1;
            Change::Put(r)
        }
        (None, Some(seed)) => Change::Put(record(d, seed)),
        (None, None) => Change::Keep,
    }
}

fn modify_change(cur: &IndexRecord) -> Change {
    if cur.tombstone {
        Change::Remove
    } else {
        let mut r = *cur;
        r.set_id = (r.set_id + 1) % 4;
        r.void_time += 5;
        Change::Put(r)
    }
}

/// The deterministic sequence both processes compute: applied to `index`
/// in the child, to the model only in the parent.
fn workload(index: Option<&Index>) -> Model {
    let mut model = Model::new();
    let mut run = |op| apply(index, &mut model, op);
    for i in 0..N {
        run(Op::Put(record(digest(i), i * 7 + 1)));
    }
    for i in (0..N).step_by(5) {
        run(Op::Remove(digest(i)));
    }
    for i in (0..N).step_by(3) {
        // Absent (removed) ones are inserted again for even i only.
        run(Op::Update(digest(i), (i % 2 == 0).then_some(i * 7 + 2)));
    }
    for i in (0..N).step_by(7) {
        run(Op::Modify(digest(i)));
    }
    for i in N..N + EXTRA {
        run(Op::Put(record(digest(i), i * 7 + 3)));
    }
    for i in (N..N + EXTRA).step_by(2) {
        run(Op::Remove(digest(i)));
    }
    for i in 0..100 {
        let absent = digest(10_000_000 + i);
        run(Op::Remove(absent));
        run(Op::Modify(absent));
        run(Op::Update(absent, None));
    }
    model
}

/// All digests the workload ever touches.
fn touched_digests() -> impl Iterator<Item = Digest> {
    (0..N + EXTRA).chain(10_000_000..10_000_100).map(digest)
}

fn set_counts_of(model: &Model) -> [u64; 5] {
    let mut counts = [0u64; 5];
    for r in model.values().filter(|r| !r.tombstone) {
        counts[r.set_id as usize] += 1;
    }
    counts
}

fn partition_stats_of(model: &Model) -> Vec<(u64, u64, u64)> {
    let mut out = vec![(0u64, 0u64, 0u64); PARTITION_COUNT];
    for r in model.values() {
        let p = &mut out[r.digest.partition().index()];
        if r.tombstone {
            p.1 += 1;
        } else {
            p.0 += 1;
        }
        p.2 += r.size_bytes();
    }
    out
}

const SET_NAMES: [&str; 4] = ["s1", "s2", "s3", "s4"];

/// Child of `warm_restart_across_processes`: builds the index, shuts down
/// cleanly.
#[test]
fn child_build_and_shut_down_cleanly() {
    let Some(config) = child_config("build") else {
        return;
    };
    let index = Index::create(&config).unwrap();
    for (i, name) in SET_NAMES.iter().enumerate() {
        assert_eq!(index.set_id(name).unwrap(), i as u16 + 1);
    }
    let model = workload(Some(&index));
    assert_eq!(index.verify().unwrap(), model.len() as u64);
    let sets: Vec<String> = (1..=4u16)
        .map(|s| index.set_records(s).to_string())
        .collect();
    say(&format!("sets {}", sets.join(",")));
    say(&format!("stats {:?}", index.stats()));
    index.mark_trusted(SHUTDOWN_ID);
    say("done");
}

#[test]
fn warm_restart_across_processes() {
    let config = small_config(SPRIGS);
    let guard = SegmentsGuard(config.clone());
    let started = Instant::now();

    // Process A builds the index and shuts down cleanly.
    let mut child = ChildProc::spawn("child_build_and_shut_down_cleanly", "build", &config);
    let child_sets = child.wait_for("sets ", Duration::from_secs(60));
    let child_stats = child.wait_for("stats ", Duration::from_secs(10));
    child.wait_for("done", Duration::from_secs(10));
    let status = child.wait_exit(Duration::from_secs(30));
    assert!(
        status.success(),
        "child failed: {status}\n{}",
        child.stderr_text()
    );
    drop(child);
    let model = workload(None);
    assert!(model.len() > 40_000, "workload too small: {}", model.len());

    // This process is B: attach warm and compare with the model.
    let walked = AtomicU64::new(0);
    let seen = Mutex::new(HashMap::<Digest, IndexRecord>::new());
    let duplicates = AtomicU64::new(0);
    let on_entry = |r: &IndexRecord| {
        walked.fetch_add(1, Ordering::Relaxed);
        if seen.lock().unwrap().insert(r.digest, *r).is_some() {
            duplicates.fetch_add(1, Ordering::Relaxed);
        }
    };
    let (index, summary) = Index::attach(&config, Some(SHUTDOWN_ID), &on_entry)
        .unwrap_or_else(|e| panic!("warm attach failed: {e}"));

    // The callback saw every entry once, with its exact content.
    assert_eq!(duplicates.load(Ordering::Relaxed), 0);
    assert_eq!(walked.load(Ordering::Relaxed), model.len() as u64);
    assert!(
        *seen.lock().unwrap() == model,
        "walked entries differ from the model"
    );

    let (records, tombstones, bytes) = partition_stats_of(&model)
        .iter()
        .fold((0, 0, 0), |a, p| (a.0 + p.0, a.1 + p.1, a.2 + p.2));
    assert!(tombstones > 0 && records > 0);
    assert_eq!(summary.entries, model.len() as u64);
    assert_eq!(
        (summary.records, summary.tombstones, summary.bytes),
        (records, tombstones, bytes)
    );

    // Same content, record by record.
    for d in touched_digests() {
        assert_eq!(index.get(&d), model.get(&d).copied(), "digest {d}");
    }
    // Same order per partition.
    let mut sorted: Vec<BTreeMap<Digest, IndexRecord>> = vec![BTreeMap::new(); PARTITION_COUNT];
    for (d, r) in &model {
        sorted[d.partition().index()].insert(*d, *r);
    }
    let mut buffer = Vec::new();
    for p in PartitionId::all() {
        let mut got = Vec::new();
        index.scan_partition(p, None, &mut buffer, |r| {
            got.push(*r);
            true
        });
        let want: Vec<IndexRecord> = sorted[p.index()].values().copied().collect();
        assert_eq!(got, want, "scan of partition {}", p.get());
    }

    // Same statistics: the whole struct as process A printed it, and each
    // partition and set as the model says.
    let stats = index.stats();
    assert_eq!(format!("{stats:?}"), child_stats);
    assert_eq!(
        (stats.records, stats.tombstones, stats.bytes),
        (records, tombstones, bytes)
    );
    assert_eq!(stats.entries_in_use, model.len() as u64);
    assert!(
        stats.stages > 1,
        "the workload should span stages: {stats:?}"
    );
    for (p, want) in PartitionId::all().zip(partition_stats_of(&model)) {
        let got = index.partition_stats(p);
        assert_eq!(
            (got.records, got.tombstones, got.bytes),
            want,
            "partition {}",
            p.get()
        );
    }
    let sets = set_counts_of(&model);
    let got: Vec<String> = (1..=4u16)
        .map(|s| index.set_records(s).to_string())
        .collect();
    assert_eq!(got.join(","), child_sets);
    for s in 1..=4u16 {
        assert_eq!(index.set_records(s), sets[s as usize], "set {s}");
    }
    assert_eq!(sets[4], 0);
    for (i, name) in SET_NAMES.iter().enumerate() {
        let id = i as u16 + 1;
        assert_eq!(index.set_name(id).as_deref(), Some(*name));
        assert_eq!(index.find_set(name), Some(id));
        assert_eq!(index.set_id(name).unwrap(), id);
    }
    assert_eq!(index.set_name(5), None);
    assert_eq!(index.verify().unwrap(), model.len() as u64);

    // While B holds it, nobody else may attach, create or open it (B
    // itself included: the meta segment's attach count is B's).
    match Index::attach(&config, Some(SHUTDOWN_ID), &|_| {}) {
        Err(AttachError::Fatal(IndexError::InUse { key, attached })) => {
            assert_eq!((key, attached), (config.meta_key(), 1));
        }
        other => panic!("expected InUse, got {:?}", other.map(|_| ())),
    }
    assert!(matches!(
        Index::create(&config),
        Err(IndexError::InUse { .. })
    ));
    assert!(matches!(
        Index::open(&config, Some(SHUTDOWN_ID), &|_| {}),
        Err(IndexError::InUse { .. })
    ));

    // The warm index takes writes: new sets, inserts into the free list.
    assert_eq!(index.set_id("s5").unwrap(), 5);
    let fresh = record(digest(20_000_000), 99);
    assert_eq!(index.put(fresh).unwrap(), None);
    assert_eq!(index.get(&fresh.digest), Some(fresh));
    assert_eq!(index.stats().entries_in_use, model.len() as u64 + 1);
    assert_eq!(index.verify().unwrap(), model.len() as u64 + 1);

    // B ends without a clean shutdown: the flag cleared at attach stays
    // cleared, and the next start is cold.
    drop(index);
    match Index::attach(&config, Some(SHUTDOWN_ID), &|_| {}) {
        Err(AttachError::Refused(Refusal::NotTrusted)) => {}
        other => panic!("expected NotTrusted, got {:?}", other.map(|_| ())),
    }
    let (index, start) = Index::open(&config, Some(SHUTDOWN_ID), &|_| {}).unwrap();
    assert!(
        matches!(start, Start::Cold(Refusal::NotTrusted)),
        "{start:?}"
    );
    assert_cold_and_empty(&index);
    drop(index);

    drop(guard);
    assert_keys_gone(&config);
    eprintln!("warm_restart_across_processes took {:?}", started.elapsed());
}

fn assert_cold_and_empty(index: &Index) {
    let stats = index.stats();
    assert_eq!(
        (
            stats.records,
            stats.tombstones,
            stats.bytes,
            stats.entries_in_use,
            stats.stages
        ),
        (0, 0, 0, 0, 0),
        "{stats:?}"
    );
    assert!(index.is_empty());
    assert_eq!(index.get(&digest(1)), None);
    assert_eq!(index.set_name(1), None);
    assert_eq!(index.find_set("s1"), None);
    assert_eq!(index.verify().unwrap(), 0);
    for p in PartitionId::all() {
        assert_eq!(index.partition_stats(p), Default::default());
    }
    for s in 0..=4 {
        assert_eq!(index.set_records(s), 0);
    }
}

// ---- crashes ------------------------------------------------------------

/// Keys the filling child cycles through (bounded so the index never fills).
const FILL_KEYS: u64 = 100_000;
/// Inserts after which the filling child reports.
const FILL_REPORT_AFTER: u64 = 10_000;
const FILL_SHUTDOWN_ID: u64 = 0xF111;

fn fill_op(index: &Index, i: u64) {
    let d = digest(i % FILL_KEYS);
    if i % 3 == 2 {
        index.remove(&digest((i * 7) % FILL_KEYS));
    } else {
        index.put(record(d, i + 1)).unwrap();
    }
}

/// Child of the SIGKILL tests: fills an index until killed (at most 20 s).
/// With role "fill-reattached" it first shuts down cleanly after 10,000
/// inserts and attaches again warm, so the index it is killed in was
/// trusted once.
#[test]
fn child_fill_until_killed() {
    let (config, reattach) = if let Some(c) = child_config("fill-fresh") {
        (c, false)
    } else if let Some(c) = child_config("fill-reattached") {
        (c, true)
    } else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut index = Index::create(&config).unwrap();
    index.set_id("s1").unwrap();
    let mut i = 0u64;
    while i < FILL_REPORT_AFTER {
        fill_op(&index, i);
        i += 1;
    }
    if reattach {
        index.mark_trusted(FILL_SHUTDOWN_ID);
        index = Index::attach(&config, Some(FILL_SHUTDOWN_ID), &|_| {})
            .unwrap_or_else(|e| panic!("child re-attach failed: {e}"))
            .0;
    }
    say("filling");
    while Instant::now() < deadline {
        for _ in 0..1_000 {
            fill_op(&index, i);
            i += 1;
        }
    }
    // Not killed in time: end without a clean shutdown; the parent fails
    // anyway because it finds the child gone.
    say("timeout");
}

fn sigkill_mid_way(role: &str) {
    let config = small_config(SPRIGS);
    let guard = SegmentsGuard(config.clone());
    let started = Instant::now();

    let mut child = ChildProc::spawn("child_fill_until_killed", role, &config);
    child.wait_for("filling", Duration::from_secs(30));
    // Let it write a little more, so that the kill lands mid-operation.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        child.child.try_wait().unwrap().is_none(),
        "the child ended before the kill"
    );
    let status = child.kill_and_reap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    drop(child);

    // The segments outlive the process, detached.
    let left = live_keys(&config);
    assert!(!left.is_empty(), "the killed child's segments are gone");
    assert!(left.iter().all(|&(_, nattch)| nattch == 0), "{left:?}");

    for id in [Some(FILL_SHUTDOWN_ID), None] {
        match Index::attach(&config, id, &|_| {}) {
            Err(AttachError::Refused(Refusal::NotTrusted)) => {}
            other => panic!("expected NotTrusted, got {:?}", other.map(|_| ())),
        }
    }
    let (index, start) = Index::open(&config, Some(FILL_SHUTDOWN_ID), &|_| {}).unwrap();
    assert!(
        matches!(start, Start::Cold(Refusal::NotTrusted)),
        "{start:?}"
    );
    assert_cold_and_empty(&index);
    // The cold index's stage segments are fresh: only the ones it uses exist.
    assert_eq!(live_keys(&config).len(), 1);
    drop(index);

    drop(guard);
    assert_keys_gone(&config);
    eprintln!("sigkill_mid_way({role}) took {:?}", started.elapsed());
}

#[test]
fn sigkill_while_filling_a_fresh_index_forces_a_cold_start() {
    sigkill_mid_way("fill-fresh");
}

#[test]
fn sigkill_after_a_warm_reattach_forces_a_cold_start() {
    sigkill_mid_way("fill-reattached");
}

/// In-process refusals of a trusted index: a wrong shutdown id, another
/// sprig count. Refusals leave the index trusted; the right attach works.
#[test]
fn mismatching_shutdown_id_or_layout_is_refused() {
    let config = small_config(SPRIGS);
    let guard = SegmentsGuard(config.clone());
    let index = Index::create(&config).unwrap();
    for i in 0..1_000 {
        index.put(record(digest(i), i + 1)).unwrap();
    }
    let want = index.stats();
    index.mark_trusted(77);

    match Index::attach(&config, Some(78), &|_| {}) {
        Err(AttachError::Refused(Refusal::ShutdownIdMismatch { index, devices })) => {
            assert_eq!((index, devices), (77, 78));
        }
        other => panic!("expected ShutdownIdMismatch, got {:?}", other.map(|_| ())),
    }
    // Fewer sprigs: the meta segment is big enough, the header disagrees.
    let fewer = IndexConfig {
        sprigs_per_partition: SPRIGS / 2,
        ..config.clone()
    };
    match Index::attach(&fewer, Some(77), &|_| {}) {
        Err(AttachError::Refused(Refusal::LayoutMismatch(why))) => {
            assert!(why.contains("index.sprigs"), "{why}");
        }
        other => panic!("expected LayoutMismatch, got {:?}", other.map(|_| ())),
    }
    // More sprigs: the meta segment is too small for them, refused earlier.
    let more = IndexConfig {
        sprigs_per_partition: SPRIGS * 2,
        ..config.clone()
    };
    match Index::attach(&more, Some(77), &|_| {}) {
        Err(AttachError::Refused(Refusal::TooSmall { .. } | Refusal::LayoutMismatch(_))) => {}
        other => panic!(
            "expected TooSmall or LayoutMismatch, got {:?}",
            other.map(|_| ())
        ),
    }

    let walked = AtomicU64::new(0);
    let (index, summary) = Index::attach(&config, Some(77), &|_| {
        walked.fetch_add(1, Ordering::Relaxed);
    })
    .unwrap();
    assert_eq!(walked.load(Ordering::Relaxed), 1_000);
    assert_eq!(summary.entries, 1_000);
    assert_eq!(index.stats(), want);
    for i in 0..1_000 {
        assert_eq!(index.get(&digest(i)), Some(record(digest(i), i + 1)));
    }
    drop(index);
    drop(guard);
    assert_keys_gone(&config);
}

/// Live records without a set (set id 0) are counted the same before and
/// after a warm restart.
#[test]
fn records_without_a_set_count_the_same_after_a_warm_restart() {
    let config = small_config(SPRIGS);
    let guard = SegmentsGuard(config.clone());
    let index = Index::create(&config).unwrap();
    let mut r = record(digest(1), 1);
    r.set_id = 0;
    r.tombstone = false;
    index.put(r).unwrap();
    let before = index.set_records(0);
    index.mark_trusted(1);
    let (index, _) = Index::attach(&config, Some(1), &|_| {}).unwrap();
    let after = index.set_records(0);
    drop(index);
    drop(guard);
    assert_keys_gone(&config);
    assert_eq!(
        before, after,
        "set_records(0) is {before} in the process that wrote the record, {after} after a warm attach"
    );
}

/// `index_huge_pages` in the namespace info read false after every warm
/// start: an attached segment cannot tell its page size, so the stat came
/// from the attaching process's own (unknown) view. The creator now records
/// it in the header. Without reserved hugepages both sides are false; run
/// after `scripts/setup-hugepages.sh --pages 64` to see the hugepage case.
#[test]
fn a_warm_attach_reports_the_pages_the_index_was_created_on() {
    let config = IndexConfig {
        pages: osprey_engine::index::PageMode::Auto,
        ..small_config(SPRIGS)
    };
    let guard = SegmentsGuard(config.clone());
    let index = Index::create(&config).unwrap();
    index.put(record(digest(1), 1)).unwrap();
    let created_on_huge = index.stats().huge_pages;
    index.mark_trusted(4);
    let (index, _) = Index::attach(&config, Some(4), &|_| {}).unwrap();
    let attached_says = index.stats().huge_pages;
    drop(index);
    drop(guard);
    assert_keys_gone(&config);
    say(&format!("index created on hugepages: {created_on_huge}"));
    assert_eq!(attached_says, created_on_huge);
}

/// A panic in an `update` callback for an absent digest must not leave the
/// entry reserved for it in use: the next warm start would walk it as a
/// live record (here: the stale contents of a record removed earlier).
#[test]
fn a_panicking_update_callback_leaks_no_entry_into_the_restart_walk() {
    let config = small_config(SPRIGS);
    let guard = SegmentsGuard(config.clone());
    let index = Index::create(&config).unwrap();
    // Leave a removed record's bytes in the free entry the update reuses.
    let removed = record(digest(1), 2);
    index.put(removed).unwrap();
    index.remove(&removed.digest);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        index.update(&digest(2), |_| -> (Change, ()) {
            panic!("callback fails (expected in this test)")
        })
    }));
    assert!(outcome.is_err());
    assert_eq!(index.get(&digest(2)), None);
    let in_use = index.stats().entries_in_use;
    let verified = index.verify();
    index.mark_trusted(3);
    let walked = Mutex::new(Vec::new());
    let (index, summary) = Index::attach(&config, Some(3), &|r| {
        walked.lock().unwrap().push(*r);
    })
    .unwrap();
    let records_after = index.stats().records;
    drop(index);
    drop(guard);
    assert_keys_gone(&config);
    let walked = walked.into_inner().unwrap();
    assert!(
        in_use == 0 && verified.is_ok() && walked.is_empty() && records_after == 0,
        "after the panic: entries_in_use {in_use}, verify {verified:?}; \
         after a warm restart: {} records, walk {summary:?} saw {walked:?} \
         (removed before the panic: {removed:?})",
        records_after
    );
}
