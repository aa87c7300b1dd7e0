//! The storage engine end to end on real device backends: transactions
//! through `CoreStorage`, restarts (warm after a clean shutdown, cold after a
//! crash), commit-to-device under crash injection, deletes, expiry.

mod common;

use common::{
    clean_shutdown, demo_delete, demo_digest as digest, demo_get, memory_devices, small_config,
    SegmentsGuard,
};
use osprey_engine::device::memory::{Faults, MemoryDevice};
use osprey_engine::device::uring::{UringDevice, UringOptions};
use osprey_engine::device::Device;
use osprey_engine::index::IndexConfig;
use osprey_engine::ops::{Clock, ExistsAction, Op, Request, Ttl};
use osprey_engine::record::{BinName, Value};
use osprey_engine::result::ResultCode;
use osprey_engine::storage::core::{CoreStorage, Reply, Transaction};
use osprey_engine::storage::namespace::{
    system_clock, ClockSource, Namespace, StartKind, StorageConfig,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const MIB: u64 = 1 << 20;

fn storage_config() -> StorageConfig {
    let mut c = StorageConfig::new("test");
    c.write_block_bytes = 128 << 10;
    c.flush_max_ms = 1;
    c.post_write_cache_blocks = 4;
    c
}

fn bin(name: &str) -> BinName {
    BinName::new(name.as_bytes()).unwrap()
}

fn put(n: u64, value: i64) -> Transaction {
    Transaction {
        request: Request {
            digest: digest(n),
            ops: vec![
                Op::write(bin("a"), Value::Integer(value)),
                Op::write(bin("s"), Value::String(vec![b'x'; 200])),
            ],
            set_name: b"demo".to_vec(),
            ..Default::default()
        },
        durable_delete: false,
    }
}

fn value_of(reply: &Reply) -> Option<i64> {
    reply
        .bins
        .iter()
        .find(|b| b.name == Some(bin("a")))
        .and_then(|b| match b.value {
            Some(Value::Integer(v)) => Some(v),
            _ => None,
        })
}

struct Fixture {
    index: IndexConfig,
    _guard: SegmentsGuard,
    devices: Vec<Arc<dyn Device>>,
    config: StorageConfig,
    clock: ClockSource,
}

impl Fixture {
    fn memory(n_devices: usize, config: StorageConfig) -> (Fixture, Vec<MemoryDevice>) {
        let (memory, devices) = memory_devices(n_devices);
        let index = small_config(16);
        let fixture = Fixture {
            _guard: SegmentsGuard(index.clone()),
            index,
            devices,
            config,
            clock: Arc::new(system_clock),
        };
        (fixture, memory)
    }

    fn open(&self) -> (Arc<Namespace>, StartKind) {
        let (ns, kind) = Namespace::open(
            self.config.clone(),
            &self.index,
            self.devices.clone(),
            self.clock.clone(),
        )
        .expect("start");
        (Arc::new(ns), kind)
    }

    fn open_core(&self) -> (CoreStorage, StartKind) {
        let (ns, kind) = self.open();
        (CoreStorage::new(ns).unwrap(), kind)
    }
}

/// Lets the flush timer fire and the writes complete, as a crash would find them.
fn settle(core: &mut CoreStorage) {
    let mut out = Vec::new();
    for _ in 0..200 {
        core.poll(&mut out);
        std::thread::sleep(Duration::from_millis(1));
        if !core.busy() {
            core.poll(&mut out);
        }
    }
}

#[test]
fn records_round_trip_and_a_clean_restart_is_warm() {
    let (fx, _mem) = Fixture::memory(1, storage_config());
    let (mut core, kind) = fx.open_core();
    assert!(
        matches!(kind, StartKind::Cold { .. }),
        "first start formats: {kind:?}"
    );
    for n in 0..500 {
        assert_eq!(core.run(put(n, n as i64)).result, ResultCode::Ok);
    }
    for n in 0..500 {
        let r = core.run(demo_get(n));
        assert_eq!(
            (r.result, r.generation, value_of(&r)),
            (ResultCode::Ok, 1, Some(n as i64))
        );
    }
    assert_eq!(core.run(demo_get(9999)).result, ResultCode::KeyNotFound);
    assert_eq!(core.run(put(7, 70)).generation, 2);
    clean_shutdown(core);

    let (mut core, kind) = fx.open_core();
    assert!(matches!(kind, StartKind::Warm { entries: 500 }), "{kind:?}");
    for n in 0..500 {
        let r = core.run(demo_get(n));
        let want = if n == 7 {
            (2, Some(70))
        } else {
            (1, Some(n as i64))
        };
        assert_eq!(
            (r.generation, value_of(&r)),
            want,
            "record {n} after a warm restart"
        );
    }
    clean_shutdown(core);
}

#[test]
fn a_crash_restarts_cold_with_every_flushed_record() {
    let (fx, _mem) = Fixture::memory(2, storage_config());
    let (mut core, _) = fx.open_core();
    for n in 0..2000 {
        assert_eq!(core.run(put(n, n as i64)).result, ResultCode::Ok);
    }
    for n in 0..100 {
        assert_eq!(core.run(put(n, -(n as i64))).result, ResultCode::Ok);
    }
    settle(&mut core);
    drop(core); // no shutdown: the headers stay untrusted

    let (mut core, kind) = fx.open_core();
    let StartKind::Cold { scan, .. } = kind else {
        panic!("a crash must force a cold start: {kind:?}")
    };
    assert_eq!(scan.unique, 2000);
    assert_eq!(
        scan.replaced + scan.older,
        100,
        "each overwritten key has one older image"
    );
    for n in 0..2000 {
        let r = core.run(demo_get(n));
        let want = if n < 100 {
            (2, Some(-(n as i64)))
        } else {
            (1, Some(n as i64))
        };
        assert_eq!(
            (r.generation, value_of(&r)),
            want,
            "record {n} after a cold start"
        );
    }
    clean_shutdown(core);
}

#[test]
fn reads_past_the_post_write_cache_go_to_the_device() {
    let mut config = storage_config();
    config.post_write_cache_blocks = 1;
    let (fx, mem) = Fixture::memory(1, config);
    let (mut core, _) = fx.open_core();
    for n in 0..3000 {
        core.run(put(n, n as i64));
    }
    settle(&mut core);
    let reads_before = mem[0].stats().reads;
    for n in 0..3000 {
        assert_eq!(value_of(&core.run(demo_get(n))), Some(n as i64));
    }
    let device_reads = mem[0].stats().reads - reads_before;
    assert!(
        device_reads > 2000,
        "most records are only on the device: {device_reads} device reads"
    );
    clean_shutdown(core);
}

#[test]
fn a_corrupt_image_is_an_error_and_never_data() {
    let mut config = storage_config();
    config.post_write_cache_blocks = 1;
    let (fx, mem) = Fixture::memory(1, config);
    let (mut core, _) = fx.open_core();
    for n in 0..3000 {
        core.run(put(n, n as i64));
    }
    settle(&mut core);
    // The first write block (records 0..) is long out of the cache.
    mem[0].corrupt(8 * MIB + 100..8 * MIB + 101);
    let r = core.run(demo_get(0));
    assert_eq!(r.result, ResultCode::ServerError);
    assert!(r.bins.is_empty());
    assert_eq!(
        core.namespace()
            .stats
            .checksum_failures
            .load(Ordering::Relaxed),
        1
    );
    clean_shutdown(core);
}

#[test]
fn records_larger_than_a_write_block_are_refused() {
    let (fx, _mem) = Fixture::memory(1, storage_config());
    let (mut core, _) = fx.open_core();
    let mut txn = put(1, 1);
    txn.request.ops = vec![Op::write(bin("big"), Value::Blob(4, vec![0; 200 << 10]))];
    assert_eq!(core.run(txn).result, ResultCode::RecordTooBig);
    assert_eq!(core.run(demo_get(1)).result, ResultCode::KeyNotFound);
    clean_shutdown(core);
}

#[test]
fn acknowledged_commits_survive_a_power_cut_at_any_point() {
    let mut config = storage_config();
    config.commit_to_device = true;
    let mut total_acked = 0;
    for crash_after in [3u64, 7, 12, 20, 40] {
        let (fx, mem) = Fixture::memory(1, config.clone());
        let (mut core, _) = fx.open_core();
        // From here: the drive has a volatile cache and dies after N ops.
        mem[0].set_faults(Faults {
            crash_after_ops: Some(crash_after),
            torn_crash: true,
            volatile_cache: true,
            seed: crash_after,
            ..Default::default()
        });
        let mut acked = Vec::new();
        for n in 0..300 {
            let r = core.run(put(n, n as i64 * 3));
            if r.result == ResultCode::Ok {
                acked.push(n);
            }
        }
        assert!(mem[0].is_crashed(), "crash point {crash_after} was reached");
        assert!(
            acked.len() < 300,
            "writes after the crash are not acknowledged"
        );
        total_acked += acked.len();
        drop(core);
        mem[0].power_cycle();
        let (mut core, kind) = fx.open_core();
        assert!(matches!(kind, StartKind::Cold { .. }));
        for n in &acked {
            assert_eq!(
                value_of(&core.run(demo_get(*n))),
                Some(*n as i64 * 3),
                "acked record {n} (crash after {crash_after})"
            );
        }
        clean_shutdown(core);
    }
    assert!(
        total_acked >= 10,
        "the crash points leave acknowledged writes to check ({total_acked})"
    );
}

#[test]
fn durable_deletes_stay_deleted_and_plain_deletes_may_return_after_a_cold_start() {
    let (fx, _mem) = Fixture::memory(1, storage_config());
    let (mut core, _) = fx.open_core();
    for n in 0..10 {
        core.run(put(n, n as i64));
    }
    settle(&mut core);
    assert_eq!(core.run(demo_delete(1, true)).result, ResultCode::Ok);
    assert_eq!(core.run(demo_delete(2, false)).result, ResultCode::Ok);
    assert_eq!(core.run(demo_delete(3, false)).result, ResultCode::Ok);
    assert_eq!(
        core.run(demo_delete(3, false)).result,
        ResultCode::KeyNotFound
    );
    assert_eq!(core.run(demo_get(1)).result, ResultCode::KeyNotFound);
    assert_eq!(core.run(demo_get(2)).result, ResultCode::KeyNotFound);
    settle(&mut core);
    drop(core);

    let (mut core, _) = fx.open_core();
    assert_eq!(
        core.run(demo_get(1)).result,
        ResultCode::KeyNotFound,
        "a durable delete survives a cold start"
    );
    // As in Aerospike: a plain delete only drops the index entry, so the
    // record's image on flash comes back when the index is rebuilt.
    assert_eq!(value_of(&core.run(demo_get(2))), Some(2));
    assert_eq!(value_of(&core.run(demo_get(0))), Some(0));
    // A tombstone is not a record: writing the key again starts a new life.
    assert_eq!(core.run(put(1, 11)).result, ResultCode::Ok);
    assert_eq!(value_of(&core.run(demo_get(1))), Some(11));
    // Regression: the re-created record starts again at generation 1, below
    // its tombstone's; a cold start that ranked images by generation first
    // brought the tombstone back and lost this acknowledged write. The same
    // for a key re-created after a plain delete.
    assert_eq!(core.run(put(2, 22)).result, ResultCode::Ok);
    settle(&mut core);
    drop(core);
    let (mut core, _) = fx.open_core();
    assert_eq!(
        value_of(&core.run(demo_get(1))),
        Some(11),
        "re-created after a durable delete"
    );
    assert_eq!(
        value_of(&core.run(demo_get(2))),
        Some(22),
        "re-created after a plain delete"
    );
    clean_shutdown(core);
}

#[test]
fn expired_records_are_never_returned_and_are_dropped_by_a_cold_start() {
    let (mut fx, _mem) = Fixture::memory(1, storage_config());
    let now = Arc::new(AtomicU64::new(u64::from(system_clock().now_s)));
    let clock_now = now.clone();
    fx.clock = Arc::new(move || {
        let s = clock_now.load(Ordering::Relaxed);
        Clock {
            now_s: s as u32,
            now_ms: s * 1000,
        }
    });
    let (mut core, _) = fx.open_core();
    let mut short = put(1, 1);
    short.request.ttl = Ttl::Seconds(10);
    let r = core.run(short);
    assert_eq!(r.void_time as u64, now.load(Ordering::Relaxed) + 10);
    core.run(put(2, 2));
    now.fetch_add(11, Ordering::Relaxed);
    assert_eq!(core.run(demo_get(1)).result, ResultCode::KeyNotFound);
    assert_eq!(value_of(&core.run(demo_get(2))), Some(2));
    // Creating it again works (the expired record counts as absent).
    let mut create = put(1, 5);
    create.request.exists = ExistsAction::CreateOnly;
    assert_eq!(core.run(create).result, ResultCode::Ok);
    let mut short = put(3, 3);
    short.request.ttl = Ttl::Seconds(10);
    core.run(short);
    settle(&mut core);
    drop(core);
    now.fetch_add(11, Ordering::Relaxed);
    let (mut core, kind) = fx.open_core();
    let StartKind::Cold { scan, .. } = kind else {
        panic!("{kind:?}")
    };
    assert_eq!(scan.expired, 1, "record 3 expired while down");
    assert_eq!(core.run(demo_get(3)).result, ResultCode::KeyNotFound);
    assert_eq!(value_of(&core.run(demo_get(1))), Some(5));
    clean_shutdown(core);
}

#[test]
fn devices_of_another_namespace_are_refused_unless_erasing_is_allowed() {
    let (fx, _mem) = Fixture::memory(1, storage_config());
    let (core, _) = fx.open_core();
    clean_shutdown(core);
    let mut other = storage_config();
    other.namespace = "other".into();
    let err = Namespace::open(
        other.clone(),
        &fx.index,
        fx.devices.clone(),
        fx.clock.clone(),
    )
    .err()
    .expect("refused");
    let text = err.to_string();
    assert!(
        text.contains("namespace") && text.contains("cold-start-empty"),
        "{text}"
    );
    other.cold_start_empty = true;
    let (ns, kind) =
        Namespace::open(other, &fx.index, fx.devices.clone(), fx.clock.clone()).expect("erased");
    assert!(matches!(kind, StartKind::Cold { .. }));
    assert_eq!(ns.index.len(), 0);
}

#[test]
fn the_uring_backend_serves_and_restarts_warm_and_cold() {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("storage-{}.dat", std::process::id()));
    let _ = std::fs::remove_file(&path);
    struct Remove(std::path::PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _remove = Remove(path.clone());
    let open_device = || -> Arc<dyn Device> {
        Arc::new(
            UringDevice::open(
                &path,
                &UringOptions {
                    file_size_bytes: Some(32 * MIB),
                    ..Default::default()
                },
            )
            .unwrap(),
        )
    };
    let index = small_config(16);
    let _guard = SegmentsGuard(index.clone());
    let mut config = storage_config();
    config.post_write_cache_blocks = 1;
    let start = |config: &StorageConfig| {
        let (ns, kind) = Namespace::open(
            config.clone(),
            &index,
            vec![open_device()],
            Arc::new(system_clock),
        )
        .unwrap();
        (CoreStorage::new(Arc::new(ns)).unwrap(), kind)
    };
    let (mut core, _) = start(&config);
    for n in 0..3000 {
        assert_eq!(core.run(put(n, n as i64)).result, ResultCode::Ok);
    }
    clean_shutdown(core);
    let (mut core, kind) = start(&config);
    assert!(
        matches!(kind, StartKind::Warm { entries: 3000 }),
        "{kind:?}"
    );
    for n in (0..3000).step_by(7) {
        assert_eq!(value_of(&core.run(demo_get(n))), Some(n as i64));
    }
    core.run(put(5, 55));
    settle(&mut core);
    drop(core);
    let (mut core, kind) = start(&config);
    assert!(matches!(kind, StartKind::Cold { .. }), "{kind:?}");
    assert_eq!(value_of(&core.run(demo_get(5))), Some(55));
    assert_eq!(value_of(&core.run(demo_get(2999))), Some(2999));
    clean_shutdown(core);
}

/// Regression (found by review, then reproduced here): a block freed the
/// moment its last record was rewritten elsewhere could be reused — and
/// overwritten by its first whole-block write — before the new copy reached
/// the device. A crash in that window lost the record entirely, its older
/// durable image included. Freed blocks now wait for every writer's
/// pending records (`wblocks.rs`, free epochs).
#[test]
fn a_block_emptied_by_an_unflushed_rewrite_is_not_reused_before_it_is_durable() {
    let mut config = storage_config();
    config.flush_max_ms = 60_000; // core A never flushes by timer here
    config.defrag_lwm_pct = 0;
    config.stop_writes_pct = 100;
    // Header region + exactly three 128 KiB write blocks.
    let mem = MemoryDevice::new("mem0", 8 * MIB + 3 * (128 << 10), 4096, 64);
    let index = small_config(16);
    let _guard = SegmentsGuard(index.clone());
    let devices: Vec<Arc<dyn Device>> = vec![Arc::new(mem.clone())];
    let open = || {
        let (ns, kind) = Namespace::open(
            config.clone(),
            &index,
            devices.clone(),
            Arc::new(system_clock),
        )
        .unwrap();
        (Arc::new(ns), kind)
    };
    let (ns, _) = open();
    let mut a = CoreStorage::new(ns.clone()).unwrap();
    let mut b = CoreStorage::new(ns.clone()).unwrap();
    const K: u64 = 1_000_000;
    assert_eq!(a.run(put(K, 1)).result, ResultCode::Ok);
    // Fill past the first block so it is retired, written and closed.
    for n in 0..600 {
        assert_eq!(a.run(put(n, 0)).result, ResultCode::Ok);
    }
    settle(&mut a);
    // Empty the first block of everything but K, then rewrite K: the new
    // copy waits in A's unflushed buffer and the first block is freed.
    for n in 0..600 {
        assert_eq!(a.run(demo_delete(n, false)).result, ResultCode::Ok);
    }
    assert_eq!(a.run(put(K, 2)).result, ResultCode::Ok);
    // Core B fills the never-used block, then wants the freed one.
    let mut overloaded = false;
    for n in 2000..3000 {
        match b.run(put(n, 0)).result {
            ResultCode::Ok => {}
            ResultCode::DeviceOverload => {
                overloaded = true;
                break;
            }
            ResultCode::ServerFull => break,
            other => panic!("unexpected {other:?}"),
        }
        // B keeps its own writes flushed, so only A's pending record matters.
        let mut out = Vec::new();
        b.poll(&mut out);
    }
    assert!(
        overloaded,
        "B must not get the block whose last durable image of K is unprotected"
    );
    assert!(
        ns.stats.free_block_waits.load(Ordering::Relaxed) > 0,
        "the refusal is counted as a wait for a free block, not a full backlog"
    );
    // Crash now: A's rewrite of K was never flushed.
    drop(a);
    drop(b);
    drop(ns);
    let (ns, kind) = open();
    assert!(matches!(kind, StartKind::Cold { .. }));
    let mut core = CoreStorage::new(ns).unwrap();
    assert_eq!(
        value_of(&core.run(demo_get(K))),
        Some(1),
        "K's last durable image survives"
    );
}

/// A memory device whose completions are held back while its gate is shut:
/// writes stay in flight, as on a device that cannot keep up.
#[derive(Clone)]
struct GatedDevice {
    inner: MemoryDevice,
    open: Arc<std::sync::atomic::AtomicBool>,
}

struct GatedQueue {
    inner: Box<dyn osprey_engine::device::Queue>,
    open: Arc<std::sync::atomic::AtomicBool>,
}

impl Device for GatedDevice {
    fn info(&self) -> &osprey_engine::device::DeviceInfo {
        self.inner.info()
    }
    fn alloc_buffer(
        &self,
        len: usize,
    ) -> Result<osprey_engine::device::IoBuffer, osprey_engine::device::SetupError> {
        self.inner.alloc_buffer(len)
    }
    fn open_queue(
        &self,
    ) -> Result<Box<dyn osprey_engine::device::Queue>, osprey_engine::device::SetupError> {
        Ok(Box::new(GatedQueue {
            inner: self.inner.open_queue()?,
            open: self.open.clone(),
        }))
    }
}

impl osprey_engine::device::Queue for GatedQueue {
    fn submit(
        &mut self,
        op: osprey_engine::device::IoOp,
    ) -> Result<(), osprey_engine::device::SubmitError> {
        self.inner.submit(op)
    }
    fn poll(&mut self, out: &mut Vec<osprey_engine::device::Completion>, max: usize) -> usize {
        if self.open.load(Ordering::SeqCst) {
            self.inner.poll(out, max)
        } else {
            0
        }
    }
    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }
}

#[test]
fn a_full_write_backlog_refuses_writes_cheaply_until_the_device_catches_up() {
    let mut config = storage_config();
    config.max_write_cache_bytes = 4 * (128 << 10);
    let gate = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let device = GatedDevice {
        inner: MemoryDevice::new("mem0", 64 * MIB, 4096, 256),
        open: gate.clone(),
    };
    let index = small_config(16);
    let _guard = SegmentsGuard(index.clone());
    let (ns, _) = Namespace::open(
        config,
        &index,
        vec![Arc::new(device) as Arc<dyn Device>],
        Arc::new(system_clock),
    )
    .unwrap();
    let ns = Arc::new(ns);
    let mut core = CoreStorage::new(ns.clone()).unwrap();
    const K: u64 = 1_000_000;
    assert_eq!(core.run(put(K, 1)).result, ResultCode::Ok);

    // The device stops completing: writes are acknowledged from RAM until
    // four blocks wait for it and the open one is full, then refused.
    gate.store(false, Ordering::SeqCst);
    let mut acked = Vec::new();
    let refused_at = (0..10_000u64).find(|&n| {
        let reply = core.run(put(n, n as i64));
        match reply.result {
            ResultCode::Ok => {
                acked.push(n);
                false
            }
            ResultCode::DeviceOverload => true,
            other => panic!("write {n}: {other:?}"),
        }
    });
    assert!(
        refused_at.is_some(),
        "a stalled device never refused a write"
    );
    let per_block = (128 << 10) / 256; // records are about 256 bytes
    assert!(
        acked.len() <= 6 * per_block,
        "{} writes acknowledged past a 4-block backlog",
        acked.len()
    );
    // Refused writes of a stored key do not load it first: no cache hit,
    // no device read, only the overload count moves.
    let stats = &ns.stats;
    let loads =
        || stats.cache_hits.load(Ordering::Relaxed) + stats.device_reads.load(Ordering::Relaxed);
    let (loads_before, overloads_before) = (loads(), stats.overloads.load(Ordering::Relaxed));
    for _ in 0..100 {
        assert_eq!(core.run(put(K, 2)).result, ResultCode::DeviceOverload);
    }
    assert_eq!(loads(), loads_before, "a refused write loaded the record");
    assert_eq!(
        stats.overloads.load(Ordering::Relaxed) - overloads_before,
        100
    );
    assert_eq!(
        stats.free_block_waits.load(Ordering::Relaxed),
        0,
        "a full backlog is not a wait for a free block"
    );
    // The device catches up: writes go through again, and every
    // acknowledged record reads back.
    gate.store(true, Ordering::SeqCst);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while core.run(put(K, 3)).result == ResultCode::DeviceOverload {
        assert!(std::time::Instant::now() < deadline, "still refused");
    }
    assert_eq!(value_of(&core.run(demo_get(K))), Some(3));
    for n in acked {
        assert_eq!(value_of(&core.run(demo_get(n))), Some(n as i64), "{n}");
    }
}
