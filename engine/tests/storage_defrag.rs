//! Defrag: write blocks that fall below the low-water mark are emptied into
//! new ones and freed, with no record lost or brought back — alone, and
//! under concurrent writes, reads and deletes from several cores.

mod common;

use common::{demo_delete, demo_digest as digest, demo_get, small_config, SegmentsGuard};

fn demo_delete_durable(n: u64) -> Transaction {
    demo_delete(n, true)
}
use osprey_engine::device::memory::MemoryDevice;
use osprey_engine::device::Device;
use osprey_engine::ops::{Op, Request};
use osprey_engine::record::{BinName, Value};
use osprey_engine::result::ResultCode;
use osprey_engine::storage::core::{CoreStorage, Reply, Transaction};
use osprey_engine::storage::namespace::{system_clock, Namespace, StartKind, StorageConfig};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn config() -> StorageConfig {
    let mut c = StorageConfig::new("test");
    c.write_block_bytes = 128 << 10;
    c.flush_max_ms = 1;
    c.post_write_cache_blocks = 2;
    c.defrag_lwm_pct = 50;
    c
}

fn bin() -> BinName {
    BinName::new(b"v").unwrap()
}

fn put(n: u64, value: i64) -> Transaction {
    let payload = Value::Blob(4, vec![(value & 0xFF) as u8; 300 + (n % 7) as usize * 50]);
    Transaction {
        request: Request {
            digest: digest(n),
            ops: vec![
                Op::write(bin(), Value::Integer(value)),
                Op::write(BinName::new(b"p").unwrap(), payload),
            ],
            set_name: b"demo".to_vec(),
            ..Default::default()
        },
        durable_delete: false,
    }
}

fn value(r: &Reply) -> Option<i64> {
    if r.result != ResultCode::Ok {
        return None;
    }
    r.bins
        .iter()
        .find(|b| b.name == Some(bin()))
        .and_then(|b| match b.value {
            Some(Value::Integer(v)) => Some(v),
            _ => None,
        })
}

fn open(
    devices: &[Arc<dyn Device>],
    index: &osprey_engine::IndexConfig,
) -> (Arc<Namespace>, StartKind) {
    let (ns, kind) =
        Namespace::open(config(), index, devices.to_vec(), Arc::new(system_clock)).unwrap();
    (Arc::new(ns), kind)
}

/// Polls until defrag has nothing left to do (bounded).
fn drain(core: &mut CoreStorage) {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        core.poll(&mut out);
        let ns = core.namespace().clone();
        let queued: usize = ns
            .devices
            .iter()
            .map(|s| s.wblocks.defrag_queue_len())
            .sum();
        if queued == 0 && !core.busy() {
            return;
        }
        assert!(Instant::now() < deadline, "defrag did not finish");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A fresh namespace on one memory device of `mib` MiB, and a core on it.
struct OneDevice {
    devices: Vec<Arc<dyn Device>>,
    index: osprey_engine::IndexConfig,
    _guard: SegmentsGuard,
    ns: Arc<Namespace>,
    core: CoreStorage,
}

fn one_device(mib: u64) -> OneDevice {
    let mem = MemoryDevice::new("mem0", mib * MIB, 4096, 64);
    let devices: Vec<Arc<dyn Device>> = vec![Arc::new(mem)];
    let index = small_config(16);
    let guard = SegmentsGuard(index.clone());
    let (ns, _) = open(&devices, &index);
    let core = CoreStorage::new(ns.clone()).unwrap();
    OneDevice {
        devices,
        index,
        _guard: guard,
        ns,
        core,
    }
}

#[test]
fn defrag_frees_light_blocks_and_loses_nothing_across_a_cold_start() {
    let OneDevice {
        devices,
        index,
        _guard,
        ns,
        mut core,
    } = one_device(16);
    let keys = 2000u64;
    let mut model = HashMap::new();
    for n in 0..keys {
        assert_eq!(core.run(put(n, n as i64)).result, ResultCode::Ok);
        model.insert(n, n as i64);
    }
    // Rewrite 3 keys in 4: the first blocks fall to a quarter live.
    for round in 1..=2i64 {
        for n in (0..keys).filter(|n| n % 4 != 0) {
            let v = n as i64 + 1_000_000 * round;
            assert_eq!(core.run(put(n, v)).result, ResultCode::Ok);
            model.insert(n, v);
        }
    }
    drain(&mut core);
    let stats = &ns.stats;
    assert!(
        stats.defrag_freed.load(Relaxed) > 0,
        "defrag freed no block"
    );
    assert!(
        stats.defrag_moved.load(Relaxed) > 0,
        "defrag moved no record"
    );
    assert_eq!(stats.defrag_stuck.load(Relaxed), 0);
    for (n, v) in &model {
        assert_eq!(
            value(&core.run(demo_get(*n))),
            Some(*v),
            "record {n} after defrag"
        );
    }
    // Used bytes equal the live records' images: freed blocks hold none.
    let used = ns.devices[0].wblocks.used_bytes();
    assert_eq!(
        used,
        ns.index.stats().bytes,
        "write-block usage matches the index"
    );
    drop(core);
    drop(ns); // crash: no clean shutdown

    let (ns, kind) = open(&devices, &index);
    assert!(matches!(kind, StartKind::Cold { .. }));
    let mut core = CoreStorage::new(ns.clone()).unwrap();
    for (n, v) in &model {
        assert_eq!(
            value(&core.run(demo_get(*n))),
            Some(*v),
            "record {n} after defrag and a cold start"
        );
    }
}

/// Keys rewritten in the order they were written (a reload, a cyclic
/// overwrite) empty each block within moments of its falling below the
/// low-water mark. Defrag waits a little before copying a queued block, so
/// such blocks are freed without their last live records being copied —
/// records about to be overwritten anyway. (Without the wait storage-bench
/// wrote 1.3 device bytes per client byte in exactly this pattern.)
#[test]
fn blocks_rewritten_in_order_are_freed_without_copying_their_records() {
    let OneDevice {
        _guard,
        ns,
        mut core,
        ..
    } = one_device(32);
    let keys = 4000u64;
    for round in 0..4i64 {
        for n in 0..keys {
            let v = n as i64 + 1_000_000 * round;
            assert_eq!(core.run(put(n, v)).result, ResultCode::Ok);
        }
    }
    drain(&mut core);
    let stats = &ns.stats;
    let (moved, freed) = (
        stats.defrag_moved.load(Relaxed),
        stats.defrag_freed.load(Relaxed),
    );
    assert!(freed >= 20, "rewritten blocks are freed: {freed}");
    // A block whose rewrite a slow machine stretched past the wait may be
    // copied; nothing like the half of every block a prompt defrag moved.
    assert!(
        moved <= keys / 20,
        "{moved} records copied by defrag for {} writes",
        4 * keys
    );
    for n in 0..keys {
        assert_eq!(
            value(&core.run(demo_get(n))),
            Some(n as i64 + 3_000_000),
            "record {n}"
        );
    }
}

#[test]
fn defrag_under_concurrent_writes_reads_and_deletes_loses_and_resurrects_nothing() {
    let mem = MemoryDevice::new("mem0", 24 * MIB, 4096, 64);
    let devices: Vec<Arc<dyn Device>> = vec![Arc::new(mem.clone())];
    let index = small_config(4);
    let _guard = SegmentsGuard(index.clone());
    let (ns, _) = open(&devices, &index);
    let threads = 3u64;
    let keys_per_thread = 600u64;
    let models: Vec<HashMap<u64, Option<i64>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let ns = ns.clone();
                s.spawn(move || {
                    let mut core = CoreStorage::new(ns).unwrap();
                    let mut rng = rand::rngs::StdRng::seed_from_u64(t);
                    let mut model: HashMap<u64, Option<i64>> = HashMap::new();
                    let deadline = Instant::now() + Duration::from_secs(8);
                    for i in 0..12_000u64 {
                        if Instant::now() > deadline {
                            break;
                        }
                        // Keys interleave across threads: n = k * threads + t.
                        let n = rng.gen_range(0..keys_per_thread) * threads + t;
                        match rng.gen_range(0..10) {
                            0..=5 => {
                                let v = (i as i64) << 8 | t as i64;
                                let r = core.run(put(n, v));
                                assert_eq!(r.result, ResultCode::Ok, "put {n}");
                                model.insert(n, Some(v));
                            }
                            6 => {
                                let r = core.run(demo_delete_durable(n));
                                let want = if model.get(&n).copied().flatten().is_some() {
                                    ResultCode::Ok
                                } else {
                                    ResultCode::KeyNotFound
                                };
                                assert_eq!(r.result, want, "delete {n}");
                                model.insert(n, None);
                            }
                            _ => {
                                let got = value(&core.run(demo_get(n)));
                                assert_eq!(
                                    got,
                                    model.get(&n).copied().flatten(),
                                    "thread {t} reads key {n}"
                                );
                            }
                        }
                    }
                    drain(&mut core);
                    core.flush_all(Duration::from_secs(10)).unwrap();
                    model
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        ns.stats.defrag_freed.load(Relaxed) > 0,
        "the workload drove defrag"
    );
    let mut core = CoreStorage::new(ns.clone()).unwrap();
    for model in &models {
        for (n, v) in model {
            assert_eq!(value(&core.run(demo_get(*n))), *v, "key {n} after the run");
        }
    }
    core.flush_all(Duration::from_secs(10)).unwrap();
    drop(core);
    drop(ns);
    // And the same after a cold start: nothing lost, no deleted key back.
    let (ns, kind) = open(&devices, &index);
    assert!(matches!(kind, StartKind::Cold { .. }));
    let mut core = CoreStorage::new(ns).unwrap();
    for model in &models {
        for (n, v) in model {
            assert_eq!(
                value(&core.run(demo_get(*n))),
                *v,
                "key {n} after a cold start"
            );
        }
    }
}

/// `ospreyd` took tens of seconds to stop after a cold start: its clean
/// shutdown flushed with `flush_all`, which also drained the whole defrag
/// queue, and each defragmented block's copies sat in an open buffer for
/// `flush-max-ms` before being written. A shutdown now finishes only the
/// defrag under way; the queued blocks are found again by the next start.
#[test]
fn a_shutdown_flush_does_not_wait_for_the_defrag_queue() {
    let mem = MemoryDevice::new("mem0", 16 * MIB, 4096, 64);
    let devices: Vec<Arc<dyn Device>> = vec![Arc::new(mem.clone())];
    let index = small_config(16);
    let _guard = SegmentsGuard(index.clone());
    let start = |c: StorageConfig| {
        let (ns, kind) =
            Namespace::open(c, &index, devices.clone(), Arc::new(system_clock)).unwrap();
        (Arc::new(ns), kind)
    };
    // Leave many light blocks: rewrite 3 keys in 4 with defrag off.
    let mut no_defrag = config();
    no_defrag.defrag_lwm_pct = 0;
    let (ns, _) = start(no_defrag);
    let mut core = CoreStorage::new(ns.clone()).unwrap();
    let keys = 2000u64;
    let mut model = HashMap::new();
    for n in 0..keys {
        assert_eq!(core.run(put(n, n as i64)).result, ResultCode::Ok);
        model.insert(n, n as i64);
    }
    for n in (0..keys).filter(|n| n % 4 != 0) {
        let v = n as i64 + 1_000_000;
        assert_eq!(core.run(put(n, v)).result, ResultCode::Ok);
        model.insert(n, v);
    }
    core.flush_all(Duration::from_secs(60)).unwrap();
    // A crash: the next start is cold and queues the light blocks.
    drop(core);
    drop(ns);
    let mut slow = config();
    slow.flush_max_ms = 1000;
    let (ns, kind) = start(slow.clone());
    assert!(matches!(kind, StartKind::Cold { .. }), "{kind:?}");
    let queued: usize = ns
        .devices
        .iter()
        .map(|s| s.wblocks.defrag_queue_len())
        .sum();
    assert!(queued > 3, "the cold start queued light blocks: {queued}");
    let mut core = CoreStorage::new(ns.clone()).unwrap();
    // Serving: defrag is under way when the stop comes.
    let mut out = Vec::new();
    for _ in 0..100 {
        core.poll(&mut out);
    }
    assert!(core.busy(), "a defrag job is under way");
    let started = Instant::now();
    core.flush_for_shutdown(Duration::from_secs(60)).unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "a shutdown flush took {took:?} with {queued} blocks queued: it waited for the queue"
    );
    drop(core);
    Arc::try_unwrap(ns).ok().unwrap().shutdown().unwrap();
    // Warm: every record is there, and defrag carries on from the walk.
    let (ns, kind) = start(slow);
    assert!(matches!(kind, StartKind::Warm { .. }), "{kind:?}");
    let mut core = CoreStorage::new(ns.clone()).unwrap();
    for (n, v) in &model {
        assert_eq!(value(&core.run(demo_get(*n))), Some(*v), "record {n}");
    }
    assert!(
        ns.devices[0].wblocks.defrag_queue_len() > 0 || core.busy(),
        "the light blocks are queued again after the warm start"
    );
    drop(core);
    drop(ns);
}

/// Overwrites keys at random on a device of `blocks` write blocks filled
/// to `fill_pct` of them with live records (1 KiB each), writing three
/// times the device's capacity, retrying writes refused as overloaded.
/// Returns the overloads met, or, if writes wedged (refused for a whole
/// second: thousands of polls in which defrag could have moved), how it
/// wedged. Checks that nothing acknowledged is lost, also across a clean
/// restart.
fn overwrite_a_nearly_full_device(blocks: u64, fill_pct: u64, lwm_pct: u32) -> Result<u64, String> {
    let index = small_config(16);
    let _guard = SegmentsGuard(index.clone());
    let wblock = 128 << 10;
    let mem = MemoryDevice::new("mem0", 8 * MIB + blocks * wblock, 4096, 64);
    let devices = vec![Arc::new(mem) as Arc<dyn Device>];
    let mut config = config();
    config.defrag_lwm_pct = lwm_pct;
    let open = |devices: &[Arc<dyn Device>]| {
        let (ns, kind) = Namespace::open(
            config.clone(),
            &index,
            devices.to_vec(),
            Arc::new(system_clock),
        )
        .unwrap();
        (Arc::new(ns), kind)
    };
    let (ns, _) = open(&devices);
    let mut core = CoreStorage::new(ns.clone()).unwrap();
    let record = |n: u64, v: i64| Transaction {
        request: Request {
            digest: digest(n),
            ops: vec![
                Op::write(bin(), Value::Integer(v)),
                Op::write(BinName::new(b"p").unwrap(), Value::Blob(4, vec![1; 900])),
            ],
            set_name: b"demo".to_vec(),
            ..Default::default()
        },
        durable_delete: false,
    };
    let keys = blocks * wblock * fill_pct / 100 / 1024;
    let mut model = vec![0i64; keys as usize];
    let mut rng = rand::rngs::StdRng::seed_from_u64(blocks);
    let mut overloads = 0;
    let writes = keys + 3 * blocks * wblock / 1024;
    for i in 0..writes {
        let n = if i < keys { i } else { rng.gen_range(0..keys) };
        let refused_since = Instant::now();
        loop {
            let reply = core.run(record(n, i as i64));
            match reply.result {
                ResultCode::Ok => break,
                ResultCode::DeviceOverload => {
                    overloads += 1;
                    if refused_since.elapsed() > Duration::from_secs(1) {
                        let w = &ns.devices[0].wblocks;
                        return Err(format!(
                            "write {i} of {writes} refused for 1 s: {} free blocks, {} queued \
                             for defrag, {} moved and {} freed by defrag so far",
                            w.free_count(),
                            w.defrag_queue_len(),
                            ns.stats.defrag_moved.load(Relaxed),
                            ns.stats.defrag_freed.load(Relaxed)
                        ));
                    }
                    // Let the writes in flight and defrag move on.
                    let mut out = Vec::new();
                    core.poll(&mut out);
                    std::thread::sleep(Duration::from_micros(100));
                }
                other => panic!("write {i} of key {n} answered {other:?} ({blocks} blocks)"),
            }
        }
        model[n as usize] = i as i64;
    }
    // Nothing lost: every key reads back its last value, now and after a
    // clean restart.
    for (n, want) in model.iter().enumerate() {
        assert_eq!(value(&core.run(demo_get(n as u64))), Some(*want), "key {n}");
    }
    assert!(
        ns.stats.defrag_freed.load(Relaxed) > 0,
        "defrag freed blocks"
    );
    core.flush_all(Duration::from_secs(10)).unwrap();
    drop(core);
    Arc::try_unwrap(ns).ok().unwrap().shutdown().unwrap();
    let (ns, kind) = open(&devices);
    assert!(matches!(kind, StartKind::Warm { .. }), "{kind:?}");
    let mut core = CoreStorage::new(ns.clone()).unwrap();
    for (n, want) in model.iter().enumerate() {
        assert_eq!(value(&core.run(demo_get(n as u64))), Some(*want), "key {n}");
    }
    core.flush_all(Duration::from_secs(10)).unwrap();
    Ok(overloads)
}

/// Defrag needs a free block to move records into before it can free
/// any. If client writes took the last free block while the used blocks
/// still held live records, nothing could be freed again and every write
/// would be refused for good. `CoreStorage::make_room` keeps
/// `defrag_reserve_blocks` free blocks (one per writing core, plus one, at
/// most a sixteenth of the device) from client writes. On a device of 32
/// blocks (a reserve of 2), 60 % full of live records and overwritten at
/// random three times over, writes are refused now and then (overload,
/// retryable) while defrag catches up, but always accepted again, and
/// nothing is lost.
#[test]
fn writes_to_a_nearly_full_device_never_wedge_while_defrag_has_its_reserve() {
    match overwrite_a_nearly_full_device(32, 60, 50) {
        Ok(overloads) => assert!(overloads > 0, "the reserve was reached"),
        Err(wedged) => panic!("{wedged}"),
    }
    // Fuller, with a low-water mark that gives defrag candidates there.
    overwrite_a_nearly_full_device(32, 75, 85).unwrap();
}

/// The same load on a device of 15 write blocks used to wedge: the reserve
/// was capped at a sixteenth of the device, which is 0 blocks below 16, so
/// client writes took the last free block, defrag had nowhere to move
/// records to, and every write was refused (overload) from then on. Found
/// writing the test above; `defrag_reserve_blocks` now leaves a small
/// device at least one block.
#[test]
fn writes_to_a_device_of_fewer_than_16_blocks_never_wedge() {
    if let Err(wedged) = overwrite_a_nearly_full_device(15, 60, 50) {
        panic!("{wedged}");
    }
}
