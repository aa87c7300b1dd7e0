//! Tombstone reclaim (the "tomb raider", `Namespace::reclaim_tombstones`)
//! end to end on memory devices, as a user would notice it: a durably
//! deleted key must stay deleted through every reclaim pass and every crash
//! and cold start that follows, a re-created key must survive them, and a
//! tombstone goes only once no older image of its key is left anywhere a
//! cold scan could find it — a used block, a free block, or a write buffer
//! not yet on the device.

mod common;

use common::{clean_shutdown, demo_delete, demo_digest, demo_get};
use osprey_engine::device::memory::Faults;
use osprey_engine::device::IoKind;
use osprey_engine::ops::{Op, Request};
use osprey_engine::record::{BinName, Value};
use osprey_engine::result::ResultCode;
use osprey_engine::storage::core::{CoreStorage, Reply, Transaction};
use osprey_engine::storage::namespace::{Namespace, StartKind, StorageConfig};
use osprey_engine::storage::supervisor::{TombRaiderConfig, TombRaiderReport};
use osprey_engine::storage::wblocks::WblockState;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
/// Write blocks of 128 KiB: a 16 MiB device has 64 of them.
const WBLOCK: u32 = 128 << 10;

type Fixture = common::MemoryFixture;

/// The fixture with 128 KiB write blocks (64 on the device), a 1 ms flush
/// timer and 2 cached blocks, then `configure`.
fn fixture(configure: impl FnOnce(&mut StorageConfig)) -> Fixture {
    let mut config = StorageConfig::new("test");
    config.write_block_bytes = WBLOCK;
    config.flush_max_ms = 1;
    config.post_write_cache_blocks = 2;
    configure(&mut config);
    Fixture::new(config)
}

impl Fixture {
    /// Everything written reaches the device, then the process "dies": no
    /// clean shutdown, so the next start is a cold scan of the device.
    fn crash_and_restart(&self, mut core: CoreStorage) -> CoreStorage {
        core.flush_all(Duration::from_secs(10)).unwrap();
        drop(core);
        self.mem.power_cycle();
        let (core, kind) = self.open();
        assert!(matches!(kind, StartKind::Cold { .. }), "{kind:?}");
        core
    }
}

fn put(n: u64, value: i64, pad_bytes: usize) -> Transaction {
    Transaction {
        request: Request {
            digest: demo_digest(n),
            ops: vec![
                Op::write(BinName::new(b"a").unwrap(), Value::Integer(value)),
                Op::write(
                    BinName::new(b"pad").unwrap(),
                    Value::Blob(4, vec![7; pad_bytes]),
                ),
            ],
            set_name: b"demo".to_vec(),
            ..Default::default()
        },
        durable_delete: false,
    }
}

fn value_of(reply: &Reply) -> Option<i64> {
    (reply.result == ResultCode::Ok)
        .then(|| {
            reply.bins.iter().find_map(|b| match (&b.name, &b.value) {
                (Some(name), Some(Value::Integer(v))) if name.as_bytes() == b"a" => Some(*v),
                _ => None,
            })
        })
        .flatten()
}

/// Runs `txn` until it is not refused as overloaded (defrag or writes in
/// flight will make room), and returns its reply.
fn run_patiently(core: &mut CoreStorage, txn: Transaction) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = core.run(txn.clone());
        if reply.result != ResultCode::DeviceOverload {
            return reply;
        }
        assert!(Instant::now() < deadline, "writes stay overloaded");
        let mut out = Vec::new();
        core.poll(&mut out);
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn raid(core: &CoreStorage) -> TombRaiderReport {
    let report = core
        .namespace()
        .reclaim_tombstones(&TombRaiderConfig::default(), &|| false);
    assert_eq!(report.aborted, None, "{report:?}");
    report
}

/// Overwrites a few filler keys (ids from 10 000) with 2 KiB records until
/// twice the device's capacity has been written: every write block is
/// reopened (and its first write covers it whole) along the way.
fn churn(core: &mut CoreStorage) {
    let rounds = 2 * 16 * MIB / 2048;
    for i in 0..rounds {
        let reply = run_patiently(core, put(10_000 + i % 200, i as i64, 2000));
        assert_eq!(reply.result, ResultCode::Ok, "churn write {i}");
    }
    core.flush_all(Duration::from_secs(10)).unwrap();
}

fn assert_deleted(core: &mut CoreStorage, n: u64, when: &str) {
    let reply = core.run(demo_get(n));
    assert_eq!(
        reply.result,
        ResultCode::KeyNotFound,
        "key {n} {when}: a durably deleted key came back ({reply:?})"
    );
}

#[test]
fn a_tombstone_hiding_an_image_on_flash_is_kept_and_the_key_stays_deleted() {
    let fx = fixture(|_| {});
    let (mut core, _) = fx.open();
    assert_eq!(core.run(put(1, 1, 100)).result, ResultCode::Ok);
    core.flush_all(Duration::from_secs(10)).unwrap();
    assert_eq!(core.run(demo_delete(1, true)).result, ResultCode::Ok);
    core.flush_all(Duration::from_secs(10)).unwrap();

    let report = raid(&core);
    assert_eq!(
        (report.marked, report.kept, report.reclaimed),
        (1, 1, 0),
        "{report:?}"
    );
    let entry = core.namespace().index.get(&demo_digest(1)).unwrap();
    assert!(entry.tombstone, "the tombstone entry stays");
    assert_eq!(
        core.namespace()
            .stats
            .tombstones_kept
            .load(Ordering::Relaxed),
        1
    );

    let mut core = fx.crash_and_restart(core);
    assert_deleted(&mut core, 1, "after a pass and a cold start");
    clean_shutdown(core);
}

#[test]
fn an_older_image_still_in_a_write_buffer_keeps_the_tombstone() {
    // Nothing is flushed by the timer: the record and its tombstone sit in
    // the core's open buffer, and the device holds neither yet. A pass that
    // read only the device would find nothing older and reclaim the
    // tombstone; the buffer is written later, and a cold start whose
    // tombstone image is gone would bring the record back.
    let mut fx = fixture(|c| c.flush_max_ms = 60_000);
    let (mut core, _) = fx.open();
    assert_eq!(core.run(put(1, 1, 100)).result, ResultCode::Ok);
    assert_eq!(core.run(demo_delete(1, true)).result, ResultCode::Ok);
    assert_eq!(
        core.namespace().stats.device_writes.load(Ordering::Relaxed),
        0,
        "precondition: nothing written to the device yet"
    );
    let report = raid(&core);
    assert_eq!((report.kept, report.reclaimed), (1, 0), "{report:?}");

    // (The restarted store flushes at once again: `flush_all` waits for
    // defrag copies in an open buffer for `flush-max-ms`.)
    fx.config.flush_max_ms = 1;
    let mut core = fx.crash_and_restart(core);
    assert_deleted(&mut core, 1, "after a pass and a cold start");
    clean_shutdown(core);
}

#[test]
fn a_tombstone_goes_only_once_the_free_block_holding_the_old_image_is_reused() {
    // Blocks free the moment they empty, with no defrag in between.
    let fx = fixture(|c| c.defrag_lwm_pct = 0);
    let (mut core, _) = fx.open();
    let ns = core.namespace().clone();
    // Key 1 and fillers 100.. in the first block, then more fillers until
    // the next write opens another block.
    assert_eq!(core.run(put(1, 1, 100)).result, ResultCode::Ok);
    let old = ns.index.get(&demo_digest(1)).unwrap().location;
    let block = ns.devices[0].wblocks.wblock_of(old.rblock_id).unwrap();
    let mut fillers = Vec::new();
    for n in 100.. {
        assert_eq!(core.run(put(n, 0, 3000)).result, ResultCode::Ok);
        let at = ns.index.get(&demo_digest(n)).unwrap().location;
        if ns.devices[0].wblocks.wblock_of(at.rblock_id) != Some(block) {
            break;
        }
        fillers.push(n);
    }
    core.flush_all(Duration::from_secs(10)).unwrap();
    // Everything in that block is rewritten elsewhere, key 1 durably
    // deleted: the block empties and is freed, its images still on flash.
    for &n in &fillers {
        assert_eq!(core.run(put(n, 1, 3000)).result, ResultCode::Ok);
    }
    assert_eq!(core.run(demo_delete(1, true)).result, ResultCode::Ok);
    core.flush_all(Duration::from_secs(10)).unwrap();
    assert_eq!(
        ns.devices[0].wblocks.state(block),
        WblockState::Free,
        "precondition: the old image's block is free"
    );

    // A pass that skipped free blocks would reclaim here; a cold start
    // after the tombstone's own block is rewritten would then adopt the
    // free block's old image of key 1.
    let report = raid(&core);
    assert_eq!((report.kept, report.reclaimed), (1, 0), "{report:?}");
    assert!(ns.index.get(&demo_digest(1)).unwrap().tombstone);

    // Rewrite every block: the old image is gone, and the next pass
    // reclaims the tombstone.
    churn(&mut core);
    let report = raid(&core);
    assert_eq!((report.kept, report.reclaimed), (0, 1), "{report:?}");
    assert_eq!(ns.index.get(&demo_digest(1)), None);
    assert_eq!(ns.index.stats().tombstones, 0);
    drop(ns);

    let mut core = fx.crash_and_restart(core);
    assert_deleted(&mut core, 1, "after the reclaim and a cold start");
    // And after its tombstone image is gone from flash too.
    churn(&mut core);
    let mut core = fx.crash_and_restart(core);
    assert_deleted(&mut core, 1, "after the tombstone's block was rewritten");

    // A live key cannot vanish: re-created after the reclaim, it survives a
    // pass and a cold start.
    assert_eq!(core.run(put(1, 42, 100)).result, ResultCode::Ok);
    raid(&core);
    let mut core = fx.crash_and_restart(core);
    assert_eq!(value_of(&core.run(demo_get(1))), Some(42));
    clean_shutdown(core);
}

#[test]
fn a_device_error_or_a_stop_reclaims_nothing() {
    let fx = fixture(|_| {});
    let (mut core, _) = fx.open();
    let ns = core.namespace().clone();
    assert_eq!(core.run(put(1, 1, 100)).result, ResultCode::Ok);
    assert_eq!(core.run(demo_delete(1, true)).result, ResultCode::Ok);
    core.flush_all(Duration::from_secs(10)).unwrap();
    let reclaimable = |ns: &Namespace| {
        ns.reclaim_tombstones(&TombRaiderConfig::default(), &|| false)
            .aborted
            .is_none()
    };

    // A pass with device errors at `range` for `kind`: it must abort,
    // saying `why`.
    let pass_with_errors = |kind: IoKind, range: std::ops::Range<u64>, why: &str| {
        fx.mem.set_faults(Faults {
            error_ranges: vec![(kind, range)],
            ..Default::default()
        });
        let report = ns.reclaim_tombstones(&TombRaiderConfig::default(), &|| false);
        fx.mem.set_faults(Faults::default());
        assert!(
            report
                .aborted
                .as_deref()
                .is_some_and(|aborted| aborted.contains(why)),
            "{report:?}"
        );
        report
    };
    // A read error anywhere keeps everything.
    let last_block = 8 * MIB + 63 * u64::from(WBLOCK);
    let report = pass_with_errors(IoKind::Read, last_block..last_block + 4096, "read");
    assert_eq!((report.reclaimed, report.kept), (0, 0));
    assert!(ns.index.get(&demo_digest(1)).unwrap().tombstone);
    assert_eq!(ns.stats.tomb_raider_aborts.load(Ordering::Relaxed), 1);
    // So does a failed flush of the device after the reads.
    pass_with_errors(IoKind::Flush, 0..16 * MIB, "flush");

    // Told to stop: the same.
    let report = ns.reclaim_tombstones(&TombRaiderConfig::default(), &|| true);
    assert_eq!(report.aborted.as_deref(), Some("stopped"));
    assert!(ns.index.get(&demo_digest(1)).unwrap().tombstone);

    // A whole pass reads every block, then flushes the device: an
    // overwrite of an old image that the reads saw must not be undone by a
    // power cut once the tombstone hiding it may be gone.
    assert!(reclaimable(&ns));
    let flushes = fx.mem.stats().flushes;
    let report = raid(&core);
    assert_eq!(report.blocks_read, 64, "{report:?}");
    assert_eq!(fx.mem.stats().flushes, flushes + 1, "one flush per pass");
    drop(ns);
    clean_shutdown(core);
}

/// A store whose one tombstone has no older image left: key 1 written,
/// durably deleted, and every block rewritten since.
fn a_reclaimable_tombstone(fx: &Fixture) -> CoreStorage {
    let (mut core, _) = fx.open();
    assert_eq!(core.run(put(1, 1, 100)).result, ResultCode::Ok);
    assert_eq!(core.run(demo_delete(1, true)).result, ResultCode::Ok);
    churn(&mut core);
    assert!(
        core.namespace()
            .index
            .get(&demo_digest(1))
            .unwrap()
            .tombstone
    );
    core
}

#[test]
fn a_key_re_created_during_a_pass_is_not_lost() {
    let fx = fixture(|_| {});
    let core = std::cell::RefCell::new(a_reclaimable_tombstone(&fx));
    let ns = core.borrow().namespace().clone();
    // The pass has marked the tombstone when it asks whether to stop for
    // the first time; the key is written again right then.
    let recreated = std::cell::Cell::new(false);
    let stop = || {
        if !recreated.replace(true) {
            let reply = core.borrow_mut().run(put(1, 7, 100));
            assert_eq!(reply.result, ResultCode::Ok);
        }
        false
    };
    let report = ns.reclaim_tombstones(&TombRaiderConfig::default(), &stop);
    assert_eq!(
        (report.marked, report.reclaimed, report.changed),
        (1, 0, 1),
        "{report:?}"
    );
    let mut core = core.into_inner();
    assert_eq!(value_of(&core.run(demo_get(1))), Some(7));
    drop(ns);
    let mut core = fx.crash_and_restart(core);
    assert_eq!(
        value_of(&core.run(demo_get(1))),
        Some(7),
        "after a cold start"
    );
    clean_shutdown(core);
}

#[test]
fn a_tombstone_moved_by_defrag_during_a_pass_is_still_reclaimed_safely() {
    let fx = fixture(|_| {});
    let core = std::cell::RefCell::new(a_reclaimable_tombstone(&fx));
    let ns = core.borrow().namespace().clone();
    let location = || ns.index.get(&demo_digest(1)).unwrap().location;
    let before = location();
    let block = ns.devices[0].wblocks.wblock_of(before.rblock_id).unwrap();
    // Mid-pass, every other record in the tombstone's block is rewritten:
    // the block drops below the low-water mark and defrag moves the
    // tombstone out.
    let moved = std::cell::Cell::new(false);
    let stop = || {
        if !moved.replace(true) {
            let mut core = core.borrow_mut();
            for n in 10_000..10_200 {
                let at = ns.index.get(&demo_digest(n)).unwrap().location;
                if ns.devices[0].wblocks.wblock_of(at.rblock_id) == Some(block) {
                    assert_eq!(
                        run_patiently(&mut core, put(n, 0, 2000)).result,
                        ResultCode::Ok
                    );
                }
            }
            // Defrag takes the block once it has settled in the queue.
            let deadline = Instant::now() + Duration::from_secs(10);
            while location() == before && Instant::now() < deadline {
                core.poll(&mut Vec::new());
                std::thread::sleep(Duration::from_millis(1));
            }
            core.flush_all(Duration::from_secs(10)).unwrap();
            assert_ne!(location(), before, "defrag moved the tombstone");
        }
        false
    };
    let report = ns.reclaim_tombstones(&TombRaiderConfig::default(), &stop);
    assert!(moved.get());
    // The move changes nothing the tombstone hides: it goes.
    assert_eq!((report.reclaimed, report.changed), (1, 0), "{report:?}");
    assert_eq!(ns.index.get(&demo_digest(1)), None);
    drop(ns);
    let mut core = fx.crash_and_restart(core.into_inner());
    assert_deleted(&mut core, 1, "after the reclaim and a cold start");
    clean_shutdown(core);
}

/// The raider thread of the test below, stopped and joined however the
/// test ends: a raider left running after a failed assertion would keep the
/// index attached, and its segments would outlive the test.
struct Raider {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<TombRaiderReport>>,
}

impl Raider {
    fn finish(mut self) -> TombRaiderReport {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("running");
        thread.join().expect("the raider thread")
    }
}

impl Drop for Raider {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Passes run back to back on another thread while one core re-creates,
/// updates and durably deletes a small set of keys, and overwrites fillers
/// so that blocks are rewritten (old images vanish, tombstones become
/// reclaimable) and defrag keeps moving records and tombstones around.
/// Whatever the interleaving, the keys end as the core last left them —
/// after a crash and cold start and after a clean warm restart.
#[test]
fn passes_racing_re_creates_deletes_and_defrag_lose_nothing_and_resurrect_nothing() {
    let fx = fixture(|c| c.defrag_lwm_pct = 60);
    let (mut core, _) = fx.open();
    let ns = core.namespace().clone();
    const KEYS: u64 = 24;
    let stop = Arc::new(AtomicBool::new(false));
    let raider = {
        let ns = ns.clone();
        let stop = stop.clone();
        Raider {
            stop: stop.clone(),
            thread: Some(std::thread::spawn(move || {
                let mut totals = TombRaiderReport::default();
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let r = ns.reclaim_tombstones(&TombRaiderConfig::default(), &|| false);
                    assert_eq!(r.aborted, None);
                    totals.reclaimed += r.reclaimed;
                    totals.kept += r.kept;
                    totals.changed += r.changed;
                    totals.marked += r.marked;
                }
                totals
            })),
        }
    };
    // The model: each key's last acknowledged value (None: deleted).
    let mut model: Vec<Option<i64>> = vec![None; KEYS as usize];
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let started = Instant::now();
    let mut i = 0i64;
    // Until passes have reclaimed a good number of tombstones (while keys
    // are being re-created and deleted again), within a time bound.
    while i < 2000
        || (ns.stats.tombstones_reclaimed.load(Ordering::Relaxed) < 30
            && started.elapsed() < Duration::from_secs(20))
    {
        i += 1;
        let r = next();
        let key = (r >> 32) % KEYS;
        match r % 100 {
            0..=1 => {
                let reply = run_patiently(&mut core, demo_delete(key, true));
                let expected = match model[key as usize] {
                    Some(_) => ResultCode::Ok,
                    None => ResultCode::KeyNotFound,
                };
                assert_eq!(reply.result, expected, "durable delete of key {key}");
                model[key as usize] = None;
            }
            2..=3 => {
                let reply = run_patiently(&mut core, put(key, i, 200));
                assert_eq!(reply.result, ResultCode::Ok);
                model[key as usize] = Some(i);
            }
            _ => {
                let reply = run_patiently(&mut core, put(1000 + (r >> 40) % 300, i, 2000));
                assert_eq!(reply.result, ResultCode::Ok);
            }
        }
        if i % 64 == 0 {
            // Let the flush timer fire so blocks are written and reused.
            std::thread::sleep(Duration::from_millis(1));
            let mut out = Vec::new();
            core.poll(&mut out);
        }
    }
    let totals = raider.finish();
    assert!(totals.reclaimed >= 30, "the race ran: {totals:?}, {i} ops");
    assert!(
        ns.stats.defrag_moved.load(Ordering::Relaxed) > 0,
        "defrag moved records during the race"
    );
    let check = |core: &mut CoreStorage, when: &str| {
        for key in 0..KEYS {
            let got = value_of(&core.run(demo_get(key)));
            assert_eq!(got, model[key as usize], "key {key} {when}");
        }
    };
    check(&mut core, "after the race");
    drop(ns);
    let mut core = fx.crash_and_restart(core);
    check(&mut core, "after a crash and cold start");
    raid(&core);
    check(&mut core, "after another pass");
    let mut core = fx.crash_and_restart(core);
    check(&mut core, "after another crash and cold start");
    clean_shutdown(core);
    let (mut core, kind) = fx.open();
    assert!(matches!(kind, StartKind::Warm { .. }), "{kind:?}");
    check(&mut core, "after a warm restart");
    clean_shutdown(core);
}
