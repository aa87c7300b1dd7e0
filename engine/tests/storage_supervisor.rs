//! The namespace supervisor end to end on memory devices: expiry passes,
//! eviction by shortest TTL, and truncation (set, namespace, with a cutoff,
//! through warm and cold restarts, and its errors). Time is a test clock
//! the tests move by hand.

mod common;

use common::{clean_shutdown, memory_devices, small_config, SegmentsGuard};
use osprey_engine::device::memory::{Faults, MemoryDevice};
use osprey_engine::device::{Device, IoKind};
use osprey_engine::index::IndexConfig;
use osprey_engine::ops::{Clock, Op, Request, Ttl};
use osprey_engine::record::{BinName, Value};
use osprey_engine::result::ResultCode;
use osprey_engine::storage::core::{CoreStorage, Reply, Transaction};
use osprey_engine::storage::header::{HEADER_SLOT_BYTES, MAX_TRUNCATIONS};
use osprey_engine::storage::namespace::{
    system_clock, ClockSource, Namespace, ScanProgress, StartKind, StorageConfig,
};
use osprey_engine::storage::supervisor::{SupervisorConfig, TruncateError};
use osprey_engine::storage::wblocks::WblockState;
use osprey_engine::{Digest, UserKey};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn storage_config() -> StorageConfig {
    let mut c = StorageConfig::new("test");
    c.write_block_bytes = 128 << 10;
    c.flush_max_ms = 1;
    c.post_write_cache_blocks = 4;
    c
}

fn digest(set: &str, n: u64) -> Digest {
    Digest::compute(set, &UserKey::Integer(n as i64))
}

fn bin(name: &str) -> BinName {
    BinName::new(name.as_bytes()).unwrap()
}

fn put(set: &str, n: u64, value: i64, ttl: Ttl) -> Transaction {
    Transaction {
        request: Request {
            digest: digest(set, n),
            ops: vec![
                Op::write(bin("a"), Value::Integer(value)),
                Op::write(bin("s"), Value::String(vec![b'x'; 200])),
            ],
            set_name: set.as_bytes().to_vec(),
            ttl,
            ..Default::default()
        },
        durable_delete: false,
    }
}

fn get(set: &str, n: u64) -> Transaction {
    Transaction {
        request: Request {
            digest: digest(set, n),
            read_all_bins: true,
            set_name: set.as_bytes().to_vec(),
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

/// Writes `keys` of `set` (value = key) and checks every write succeeded.
fn write_all(core: &mut CoreStorage, set: &str, keys: std::ops::Range<u64>, ttl: Ttl) {
    for n in keys {
        let r = core.run(put(set, n, n as i64, ttl));
        assert_eq!(r.result, ResultCode::Ok, "writing {set}:{n}");
    }
}

/// Which of `keys` read back (any value).
fn present(core: &mut CoreStorage, set: &str, keys: std::ops::Range<u64>) -> u64 {
    keys.filter(|n| core.run(get(set, *n)).result == ResultCode::Ok)
        .count() as u64
}

/// Flash bytes of the index entries of `keys`.
fn bytes_of(ns: &Namespace, set: &str, keys: std::ops::Range<u64>) -> u64 {
    keys.filter_map(|n| ns.index.get(&digest(set, n)))
        .map(|r| r.size_bytes())
        .sum()
}

/// Write-block accounting agrees with the index: every byte counted in use
/// belongs to exactly one entry.
fn assert_accounting(ns: &Namespace) {
    let used: u64 = ns.devices.iter().map(|s| s.wblocks.used_bytes()).sum();
    assert_eq!(
        used,
        ns.index.stats().bytes,
        "write blocks' in-use bytes vs the index's"
    );
}

/// A clock the test moves; starts at the real time, counts ms.
#[derive(Clone)]
struct TestClock(Arc<AtomicU64>);

impl TestClock {
    fn new() -> TestClock {
        TestClock(Arc::new(AtomicU64::new(system_clock().now_ms)))
    }
    fn now(&self) -> Clock {
        let ms = self.0.load(Ordering::Relaxed);
        Clock {
            now_s: (ms / 1000) as u32,
            now_ms: ms,
        }
    }
    fn advance_ms(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::Relaxed);
    }
    fn source(&self) -> ClockSource {
        let me = self.clone();
        Arc::new(move || me.now())
    }
}

struct Fixture {
    index: IndexConfig,
    _guard: SegmentsGuard,
    devices: Vec<Arc<dyn Device>>,
    config: StorageConfig,
    clock: TestClock,
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
            clock: TestClock::new(),
        };
        (fixture, memory)
    }

    fn open_core(&self) -> (CoreStorage, StartKind) {
        let (ns, kind) = Namespace::open(
            self.config.clone(),
            &self.index,
            self.devices.clone(),
            self.clock.source(),
        )
        .expect("start");
        (CoreStorage::new(Arc::new(ns)).unwrap(), kind)
    }
}

/// Writes everything out and lets it complete, as a crash would find it.
fn settle(core: &mut CoreStorage) {
    core.flush_all(Duration::from_secs(10)).unwrap();
}

// ---- expiry -------------------------------------------------------------

#[test]
fn an_expiry_pass_removes_exactly_the_expired_records_and_frees_their_blocks() {
    let mut config = storage_config();
    // Blocks free the moment they empty (no defrag queue in between), so
    // the test sees the freeing itself.
    config.defrag_lwm_pct = 0;
    let (fx, _mem) = Fixture::memory(1, config);
    let (mut core, _) = fx.open_core();
    let ns = core.namespace().clone();
    let t0 = fx.clock.now().now_s;

    // Enough short-lived records to fill several write blocks, then close
    // the buffer so the later records go to other blocks.
    write_all(&mut core, "demo", 0..1500, Ttl::Seconds(10));
    settle(&mut core);
    write_all(&mut core, "demo", 1500..2000, Ttl::NeverExpire);
    write_all(&mut core, "demo", 2000..2200, Ttl::Seconds(1000));
    settle(&mut core);

    let slot = &ns.devices[0];
    let block_of = |n: u64| {
        let r = ns.index.get(&digest("demo", n)).unwrap();
        slot.wblocks.wblock_of(r.location.rblock_id).unwrap()
    };
    let short_blocks: BTreeSet<u32> = (0..1500).map(block_of).collect();
    let long_blocks: BTreeSet<u32> = (1500..2200).map(block_of).collect();
    assert!(short_blocks.len() >= 2, "{short_blocks:?}");
    assert!(short_blocks.is_disjoint(&long_blocks));
    let short_bytes = bytes_of(&ns, "demo", 0..1500);
    let used_before = slot.wblocks.used_bytes();
    let free_before = slot.wblocks.free_count();

    // Not yet: a record is live during the second of its void time.
    let report = ns.expire(u64::MAX);
    assert_eq!((report.scanned, report.expired), (2200, 0));
    fx.clock.advance_ms(10_000);
    assert_eq!(fx.clock.now().now_s, t0 + 10);
    assert_eq!(ns.expire(u64::MAX).expired, 0, "at the void time itself");

    fx.clock.advance_ms(1000);
    let report = ns.expire(u64::MAX);
    assert_eq!((report.scanned, report.expired), (2200, 1500));
    assert_eq!(report.expired_bytes, short_bytes);
    assert!(!report.budget_exhausted);
    assert_eq!(slot.wblocks.used_bytes(), used_before - short_bytes);
    for b in &short_blocks {
        assert_eq!(slot.wblocks.state(*b), WblockState::Free, "block {b}");
        assert_eq!(slot.wblocks.in_use_bytes(*b), 0);
    }
    assert_eq!(
        slot.wblocks.free_count(),
        free_before + short_blocks.len(),
        "every fully expired block went back to the free queue"
    );
    assert_eq!(ns.index.len(), 700);
    assert_accounting(&ns);

    assert_eq!(present(&mut core, "demo", 0..1500), 0);
    assert_eq!(present(&mut core, "demo", 1500..2200), 700);
    let again = ns.expire(u64::MAX);
    assert_eq!((again.scanned, again.expired), (700, 0));
    drop(ns);
    clean_shutdown(core);
}

#[test]
fn the_expiry_budget_spreads_the_work_over_passes() {
    let (fx, _mem) = Fixture::memory(1, storage_config());
    let (mut core, _) = fx.open_core();
    let ns = core.namespace().clone();
    write_all(&mut core, "demo", 0..100, Ttl::Seconds(5));
    write_all(&mut core, "demo", 100..120, Ttl::NeverExpire);
    fx.clock.advance_ms(6000);
    let mut total = 0;
    let mut passes = 0;
    for _ in 0..10 {
        let report = ns.expire(30);
        assert!(report.expired <= 30);
        total += report.expired;
        passes += 1;
        if !report.budget_exhausted {
            break;
        }
    }
    assert_eq!(total, 100);
    assert_eq!(passes, 4, "30 + 30 + 30 + 10");
    assert_eq!(ns.index.len(), 20);
    assert_accounting(&ns);
    drop(ns);
    clean_shutdown(core);
}

#[test]
fn a_record_rewritten_after_the_scan_saw_it_is_kept() {
    let (fx, _mem) = Fixture::memory(1, storage_config());
    let (mut core, _) = fx.open_core();
    let ns = core.namespace().clone();
    write_all(&mut core, "demo", 0..2, Ttl::Seconds(10));
    // What a pass would have copied out of the sprig.
    let seen_0 = ns.index.get(&digest("demo", 0)).unwrap();
    let seen_1 = ns.index.get(&digest("demo", 1)).unwrap();
    // A core rewrites record 0 with no expiry before the pass acts on it.
    assert_eq!(
        core.run(put("demo", 0, 42, Ttl::NeverExpire)).result,
        ResultCode::Ok
    );
    fx.clock.advance_ms(11_000);
    assert!(
        !ns.remove_if_unchanged(&seen_0),
        "the pass's copy is stale: keep"
    );
    assert!(ns.remove_if_unchanged(&seen_1), "unchanged: removed");
    assert!(!ns.remove_if_unchanged(&seen_1), "already gone");
    assert_eq!(value_of(&core.run(get("demo", 0))), Some(42));
    assert_eq!(core.run(get("demo", 1)).result, ResultCode::KeyNotFound);
    assert_eq!(ns.expire(u64::MAX).expired, 0);
    assert_accounting(&ns);
    drop(ns);
    clean_shutdown(core);
}

#[test]
fn expiry_racing_a_core_that_rewrites_the_records_loses_none() {
    let (fx, _mem) = Fixture::memory(2, storage_config());
    let (mut core, _) = fx.open_core();
    let ns = core.namespace().clone();
    const N: u64 = 3000;
    write_all(&mut core, "demo", 0..N, Ttl::Seconds(10));
    fx.clock.advance_ms(11_000);
    let mut expired = 0;
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            // Every record is rewritten to never expire, whether nsup got
            // to it first (then this creates it again) or not.
            let mut core = CoreStorage::new(ns.clone()).unwrap();
            for n in 0..N {
                let r = core.run(put("demo", n, 1_000_000 + n as i64, Ttl::NeverExpire));
                assert_eq!(r.result, ResultCode::Ok, "rewrite {n}");
            }
            core.flush_all(Duration::from_secs(10)).unwrap();
        });
        for _ in 0..100_000 {
            expired += ns.expire(u64::MAX).expired;
            if writer.is_finished() {
                break;
            }
        }
        writer.join().unwrap();
    });
    // One more pass after the writer: nothing left to expire.
    assert_eq!(ns.expire(u64::MAX).expired, 0);
    assert!(expired <= N);
    eprintln!("expired while racing the writer: {expired} of {N}");
    assert_eq!(ns.index.len(), N);
    for n in (0..N).step_by(7) {
        assert_eq!(
            value_of(&core.run(get("demo", n))),
            Some(1_000_000 + n as i64),
            "record {n}"
        );
    }
    assert_accounting(&ns);
    drop(ns);
    clean_shutdown(core);
}

// ---- eviction -----------------------------------------------------------

#[test]
fn eviction_takes_the_shortest_ttl_first_and_never_records_that_never_expire() {
    let (fx, _mem) = Fixture::memory(2, storage_config());
    let (mut core, _) = fx.open_core();
    let ns = core.namespace().clone();
    const G: u64 = 2000;
    write_all(&mut core, "never", 0..G, Ttl::NeverExpire);
    write_all(&mut core, "t4000", 0..G, Ttl::Seconds(4000));
    write_all(&mut core, "t1000", 0..G, Ttl::Seconds(1000));
    write_all(&mut core, "t2000", 0..G, Ttl::Seconds(2000));
    let (used, capacity) = ns.device_usage();
    let shortest = bytes_of(&ns, "t1000", 0..G);

    // Below the mark (or eviction off): nothing happens.
    assert_eq!(ns.evict_if_needed(0), 0);
    assert_eq!(ns.evict_if_needed(99), 0);

    // A mark that needs at least half of the shortest group, at most all.
    let pct = ((used - shortest / 2) * 100 / capacity) as u32;
    assert!(pct > 0);
    let report = ns.evict(pct);
    assert!(
        report.used_bytes_before - report.mark_bytes <= shortest,
        "{report:?}"
    );
    assert_eq!(report.evicted, G, "{report:?}");
    assert_eq!(report.evicted_bytes, shortest);
    assert!(report.used_bytes_after <= report.mark_bytes, "{report:?}");
    assert!(!report.short_of_mark);
    assert_eq!(present(&mut core, "t1000", 0..G), 0);
    for set in ["never", "t2000", "t4000"] {
        assert_eq!(present(&mut core, set, 0..G), G, "set {set}");
    }
    assert_accounting(&ns);

    // A mark that cannot be reached: everything that expires goes, nothing
    // that never expires does.
    let report = ns.evict(1);
    assert_eq!(report.evicted, 2 * G);
    assert!(report.short_of_mark);
    assert_eq!(present(&mut core, "t2000", 0..G), 0);
    assert_eq!(present(&mut core, "t4000", 0..G), 0);
    assert_eq!(present(&mut core, "never", 0..G), G);
    assert_eq!(ns.evict_if_needed(1), 0, "nothing left to evict");
    assert_accounting(&ns);
    drop(ns);
    clean_shutdown(core);
}

#[test]
fn eviction_also_keeps_the_index_under_the_mark() {
    // An index of one 1 MiB stage: 16 383 entries. 12 000 small records
    // fill 73 % of it and well under half of the device.
    let (mut fx, _mem) = Fixture::memory(1, storage_config());
    fx.index.max_stages = 1;
    let (mut core, _) = fx.open_core();
    let ns = core.namespace().clone();
    assert_eq!(ns.index_usage(), (0, 16_383));
    const G: u64 = 3000;
    write_all(&mut core, "never", 0..G, Ttl::NeverExpire);
    write_all(&mut core, "t3000", 0..G, Ttl::Seconds(3000));
    write_all(&mut core, "t1000", 0..G, Ttl::Seconds(1000));
    write_all(&mut core, "t2000", 0..G, Ttl::Seconds(2000));
    assert_eq!(ns.evict_if_needed(80), 0, "under both marks");

    let report = ns.evict(50);
    assert!(
        report.used_bytes_before <= report.mark_bytes,
        "the devices are not what is full: {report:?}"
    );
    assert_eq!(
        (report.index_entries_before, report.index_mark_entries),
        (4 * G, 8191)
    );
    // 3809 entries over: the shortest group is not enough, the next one
    // (a whole bucket) goes too.
    assert_eq!(report.evicted, 2 * G, "{report:?}");
    assert_eq!(report.index_entries_after, 2 * G);
    assert!(!report.short_of_mark);
    assert_eq!(present(&mut core, "t1000", 0..G), 0);
    assert_eq!(present(&mut core, "t2000", 0..G), 0);
    assert_eq!(present(&mut core, "t3000", 0..G), G);
    assert_eq!(present(&mut core, "never", 0..G), G);
    assert_accounting(&ns);

    // Records that never expire are never evicted, even over the mark.
    let report = ns.evict(10);
    assert_eq!(report.evicted, G);
    assert!(report.short_of_mark, "{report:?}");
    assert_eq!(present(&mut core, "never", 0..G), G);
    drop(ns);
    clean_shutdown(core);
}

#[test]
fn a_supervisor_pass_expires_first_then_evicts_what_is_still_over() {
    let (fx, _mem) = Fixture::memory(1, storage_config());
    let (mut core, _) = fx.open_core();
    let ns = core.namespace().clone();
    const G: u64 = 2000;
    write_all(&mut core, "never", 0..G, Ttl::NeverExpire);
    write_all(&mut core, "t10", 0..G, Ttl::Seconds(10));
    write_all(&mut core, "t500", 0..G, Ttl::Seconds(500));
    write_all(&mut core, "t900", 0..G, Ttl::Seconds(900));
    fx.clock.advance_ms(20_000);
    let (used, capacity) = ns.device_usage();
    let expiring = bytes_of(&ns, "t10", 0..G);
    let next = bytes_of(&ns, "t500", 0..G);
    // After expiry, still over by about half of the next group.
    let pct = ((used - expiring - next / 2) * 100 / capacity) as u32;
    let config = SupervisorConfig {
        evict_used_pct: pct,
        ..SupervisorConfig::default()
    };
    let report = ns.run_supervisor_pass(fx.clock.now(), &config);
    assert_eq!(report.expired, G, "{report:?}");
    assert_eq!(report.evict.evicted, G, "{report:?}");
    assert_eq!(present(&mut core, "t500", 0..G), 0);
    assert_eq!(present(&mut core, "t900", 0..G), G);
    assert_eq!(present(&mut core, "never", 0..G), G);
    let report = ns.run_supervisor_pass(fx.clock.now(), &config);
    assert_eq!((report.expired, report.evict.evicted), (0, 0));
    assert_accounting(&ns);
    drop(ns);
    clean_shutdown(core);
}

// ---- truncation ---------------------------------------------------------

/// The Python client test wrote ten records and truncated their set at
/// once: the last record, written in the same millisecond as the truncate,
/// survived, because "now" was taken as the cutoff and only records last
/// updated *before* it went. A truncate without a cutoff now covers the
/// current millisecond, and records written after it still rank above the
/// cutoff, so a cold start keeps them.
#[test]
fn a_truncate_covers_writes_of_its_own_millisecond_and_spares_later_ones() {
    let (fx, _mem) = Fixture::memory(1, storage_config());
    let (mut core, _) = fx.open_core();
    let ns = core.namespace().clone();
    write_all(&mut core, "a", 0..10, Ttl::NeverExpire);
    // Same millisecond: no clock advance.
    assert_eq!(ns.truncate(Some("a"), None), Ok(10));
    assert_eq!(present(&mut core, "a", 0..10), 0);
    write_all(&mut core, "a", 10..20, Ttl::NeverExpire);
    assert_eq!(present(&mut core, "a", 10..20), 10);
    // Everything on the device, then a crash: the next start is cold, and
    // it honours the truncation yet keeps the later writes.
    settle(&mut core);
    drop(ns);
    drop(core);
    let (mut core, kind) = fx.open_core();
    assert!(matches!(kind, StartKind::Cold { .. }), "{kind:?}");
    assert_eq!(present(&mut core, "a", 0..10), 0);
    assert_eq!(present(&mut core, "a", 10..20), 10);
    clean_shutdown(core);
}

#[test]
fn truncating_a_set_keeps_the_others_and_the_namespace_takes_all() {
    let (fx, _mem) = Fixture::memory(2, storage_config());
    let (mut core, _) = fx.open_core();
    let ns = core.namespace().clone();
    write_all(&mut core, "a", 0..300, Ttl::NeverExpire);
    write_all(&mut core, "b", 0..300, Ttl::NeverExpire);
    write_all(&mut core, "", 0..100, Ttl::NeverExpire);
    fx.clock.advance_ms(1);
    let used = ns.device_usage().0;
    let a_bytes = bytes_of(&ns, "a", 0..300);

    assert_eq!(ns.truncate(Some("a"), None), Ok(300));
    assert_eq!(ns.device_usage().0, used - a_bytes);
    assert_eq!(present(&mut core, "a", 0..300), 0);
    assert_eq!(present(&mut core, "b", 0..300), 300);
    assert_eq!(present(&mut core, "", 0..100), 100);
    assert_eq!(ns.index.set_records(ns.index.find_set("a").unwrap()), 0);
    // Without a cutoff, "now" includes the current millisecond.
    assert_eq!(ns.truncated_before(b"a"), fx.clock.now().now_ms + 1);
    assert_eq!(ns.truncated_before(b"b"), 0);
    assert_accounting(&ns);
    // A set the index never saw: recorded, nothing to remove.
    assert_eq!(ns.truncate(Some("never-used"), None), Ok(0));
    assert!(ns.truncated_before(b"never-used") > 0);

    // The set takes writes again at once.
    fx.clock.advance_ms(1);
    write_all(&mut core, "a", 0..10, Ttl::NeverExpire);
    assert_eq!(present(&mut core, "a", 0..300), 10);

    fx.clock.advance_ms(1);
    assert_eq!(ns.truncate(None, None), Ok(410));
    assert_eq!(ns.index.len(), 0);
    assert_eq!(ns.device_usage().0, 0);
    assert_eq!(ns.truncated_before(b"b"), fx.clock.now().now_ms + 1);
    assert_eq!(ns.truncated_before(b""), fx.clock.now().now_ms + 1);
    // The namespace truncation absorbed the older set truncations.
    for slot in &ns.devices {
        let d = slot.device.info().name.clone();
        let header = osprey_engine::storage::header::read_header(
            &*slot.device,
            &mut *slot.device.open_queue().unwrap(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(header.truncations.len(), 1, "{d}: {:?}", header.truncations);
        assert!(
            !header.trusted,
            "{d}: a running namespace's header stays untrusted"
        );
    }
    assert_accounting(&ns);
    drop(ns);
    clean_shutdown(core);
}

#[test]
fn a_truncate_with_a_cutoff_keeps_newer_records() {
    let (fx, _mem) = Fixture::memory(1, storage_config());
    let (mut core, _) = fx.open_core();
    let ns = core.namespace().clone();
    write_all(&mut core, "a", 0..100, Ttl::NeverExpire);
    fx.clock.advance_ms(5000);
    let cutoff = fx.clock.now().now_ms;
    write_all(&mut core, "a", 100..200, Ttl::NeverExpire);
    fx.clock.advance_ms(5000);
    // An old record updated after the cutoff is new again.
    assert_eq!(
        core.run(put("a", 5, 55, Ttl::NeverExpire)).result,
        ResultCode::Ok
    );
    fx.clock.advance_ms(5000);

    let now = fx.clock.now().now_ms;
    assert_eq!(
        ns.truncate(Some("a"), Some(now + 1)),
        Err(TruncateError::FutureCutoff {
            cutoff_ms: now + 1,
            now_ms: now
        })
    );
    assert_eq!(
        ns.truncate(Some("a"), Some(0)),
        Err(TruncateError::CutoffAtEpoch)
    );
    assert!(matches!(
        ns.truncate(Some(""), None),
        Err(TruncateError::SetName { .. })
    ));
    assert!(matches!(
        ns.truncate(Some(&"s".repeat(64)), None),
        Err(TruncateError::SetName { .. })
    ));
    assert_eq!(ns.index.len(), 200, "refused truncates change nothing");
    assert_eq!(ns.truncated_before(b"a"), 0);

    assert_eq!(ns.truncate(Some("a"), Some(cutoff)), Ok(99));
    assert_eq!(present(&mut core, "a", 0..100), 1);
    assert_eq!(value_of(&core.run(get("a", 5))), Some(55));
    assert_eq!(
        present(&mut core, "a", 100..200),
        100,
        "lut == cutoff stays"
    );
    // An older cutoff for the same set changes nothing.
    assert_eq!(ns.truncate(Some("a"), Some(cutoff - 1000)), Ok(0));
    assert_eq!(ns.truncated_before(b"a"), cutoff);
    assert_accounting(&ns);
    drop(ns);
    clean_shutdown(core);
}

#[test]
fn a_truncation_survives_a_warm_restart_and_a_crash() {
    let mut config = storage_config();
    // No defrag: it would move records into the write blocks the truncate
    // emptied, and erase the truncated images this test wants a cold start
    // to find. (With defrag those images may be gone, which is fine too.)
    config.defrag_lwm_pct = 0;
    let (fx, _mem) = Fixture::memory(2, config);
    let (mut core, _) = fx.open_core();
    write_all(&mut core, "a", 0..200, Ttl::NeverExpire);
    // Keys 0..50 get a second image (generation 2).
    write_all(&mut core, "a", 0..50, Ttl::NeverExpire);
    write_all(&mut core, "b", 0..100, Ttl::NeverExpire);
    settle(&mut core);
    fx.clock.advance_ms(1000);
    let ns = core.namespace().clone();
    assert_eq!(ns.truncate(Some("a"), None), Ok(200));
    let cutoff = ns.truncated_before(b"a");
    drop(ns);
    // After the truncate: new keys, and keys 150..160 written again.
    fx.clock.advance_ms(1000);
    for n in (150..160).chain(1000..1050) {
        let r = core.run(put("a", n, -(n as i64), Ttl::NeverExpire));
        assert_eq!((r.result, r.generation), (ResultCode::Ok, 1), "a:{n}");
    }
    clean_shutdown(core);

    let check = |core: &mut CoreStorage, when: &str| {
        for n in 0..200 {
            let want = (150..160).contains(&n).then_some(-(n as i64));
            assert_eq!(value_of(&core.run(get("a", n))), want, "a:{n} {when}");
        }
        assert_eq!(present(core, "a", 1000..1050), 50, "{when}");
        assert_eq!(present(core, "b", 0..100), 100, "{when}");
        assert_eq!(core.namespace().truncated_before(b"a"), cutoff, "{when}");
        assert_accounting(core.namespace());
    };

    let (mut core, kind) = fx.open_core();
    assert!(matches!(kind, StartKind::Warm { .. }), "{kind:?}");
    check(&mut core, "after a warm restart");
    // A crash. Only reads since the warm start: the images of the truncated
    // records are still on flash.
    drop(core);

    let (mut core, kind) = fx.open_core();
    let StartKind::Cold { scan, .. } = kind else {
        panic!("a crash forces a cold start: {kind:?}")
    };
    assert_eq!(
        scan.truncated, 190,
        "the truncated records found on flash and dropped: {scan:?}"
    );
    check(&mut core, "after a crash and a cold start");
    clean_shutdown(core);
}

#[test]
fn a_truncated_key_written_again_survives_a_cold_start() {
    // The key's old image has generation 2, its new life generation 1: the
    // cold start must not let the truncated (dead) image win by generation.
    let (fx, _mem) = Fixture::memory(1, storage_config());
    let (mut core, _) = fx.open_core();
    write_all(&mut core, "a", 0..10, Ttl::NeverExpire);
    write_all(&mut core, "a", 0..10, Ttl::NeverExpire);
    settle(&mut core);
    fx.clock.advance_ms(1000);
    assert_eq!(core.namespace().truncate(Some("a"), None), Ok(10));
    fx.clock.advance_ms(1000);
    for n in 0..10 {
        let r = core.run(put("a", n, 100 + n as i64, Ttl::NeverExpire));
        assert_eq!((r.result, r.generation), (ResultCode::Ok, 1));
    }
    settle(&mut core);
    drop(core);
    let (mut core, kind) = fx.open_core();
    let StartKind::Cold { scan, .. } = kind else {
        panic!("{kind:?}")
    };
    assert_eq!(
        scan.replaced + scan.older,
        20,
        "both old images of every key were found: {scan:?}"
    );
    for n in 0..10 {
        assert_eq!(
            value_of(&core.run(get("a", n))),
            Some(100 + n as i64),
            "a:{n}, written after the truncate"
        );
    }
    clean_shutdown(core);
}

#[test]
fn too_many_truncations_are_refused_until_a_namespace_truncate_merges_them() {
    let (fx, _mem) = Fixture::memory(1, storage_config());
    let (core, _) = fx.open_core();
    let ns = core.namespace().clone();
    for i in 0..MAX_TRUNCATIONS {
        assert_eq!(ns.truncate(Some(&format!("set-{i}")), None), Ok(0));
    }
    let err = ns.truncate(Some("one-more"), None).unwrap_err();
    assert_eq!(
        err,
        TruncateError::TooManyTruncations {
            device: "mem0".into(),
            max: MAX_TRUNCATIONS
        }
    );
    assert!(err.to_string().contains("mem0"), "{err}");
    assert_eq!(ns.truncated_before(b"one-more"), 0);
    // Raising an existing one still fits.
    fx.clock.advance_ms(10);
    assert_eq!(ns.truncate(Some("set-7"), None), Ok(0));
    assert_eq!(ns.truncated_before(b"set-7"), fx.clock.now().now_ms + 1);
    // A namespace truncate at or above every set's cutoff replaces them all.
    assert_eq!(ns.truncate(None, None), Ok(0));
    assert_eq!(ns.truncate(Some("one-more"), None), Ok(0));
    drop(ns);
    clean_shutdown(core);
    let (core, kind) = fx.open_core();
    assert!(matches!(kind, StartKind::Warm { .. }), "{kind:?}");
    assert_eq!(
        core.namespace().truncated_before(b"set-500"),
        fx.clock.now().now_ms + 1
    );
    clean_shutdown(core);
}

#[test]
fn a_header_write_failure_fails_the_truncate_and_removes_nothing() {
    let (fx, mem) = Fixture::memory(2, storage_config());
    let (mut core, _) = fx.open_core();
    let ns = core.namespace().clone();
    write_all(&mut core, "a", 0..50, Ttl::NeverExpire);
    fx.clock.advance_ms(1);
    let header_writes_fail = Faults {
        error_ranges: vec![(IoKind::Write, 0..2 * HEADER_SLOT_BYTES as u64)],
        ..Default::default()
    };
    for (d, name) in [(1, "mem1"), (0, "mem0")] {
        mem[d].set_faults(header_writes_fail.clone());
        let err = ns.truncate(Some("a"), None).unwrap_err();
        assert!(
            matches!(&err, TruncateError::Device { device, .. } if device == name),
            "{err:?}"
        );
        assert!(err.to_string().contains(name), "{err}");
        mem[d].set_faults(Faults::default());
        assert_eq!(ns.index.len(), 50, "nothing removed");
        assert_eq!(
            ns.truncated_before(b"a"),
            0,
            "device 0, which a cold start reads, does not have it"
        );
    }
    // Retrying after the fault is gone works.
    assert_eq!(ns.truncate(Some("a"), None), Ok(50));
    drop(ns);
    clean_shutdown(core);
    let (core, kind) = fx.open_core();
    assert!(matches!(kind, StartKind::Warm { .. }), "{kind:?}");
    assert!(core.namespace().truncated_before(b"a") > 0);
    assert_eq!(core.namespace().index.len(), 0);
    clean_shutdown(core);
}

// ---- start-up progress ----------------------------------------------------

#[test]
fn a_cold_scan_reports_its_progress_per_device() {
    let (mut fx, _mem) = Fixture::memory(2, storage_config());
    let (mut core, _) = fx.open_core();
    write_all(&mut core, "a", 0..300, Ttl::NeverExpire);
    settle(&mut core);
    drop(core);
    // A crash, then a cold start that reports into `progress`.
    let progress = Arc::new(ScanProgress::default());
    fx.config.scan_progress = Some(progress.clone());
    let (core, kind) = fx.open_core();
    let StartKind::Cold { scan, .. } = kind else {
        panic!("a crash forces a cold start: {kind:?}")
    };
    let (records, devices) = progress.snapshot();
    assert_eq!(records, scan.records_read);
    assert_eq!(devices.len(), 2);
    for d in &devices {
        assert!(d.total_bytes > 0, "{d:?}");
        assert_eq!(d.scanned_bytes, d.total_bytes, "{d:?}");
        assert!(d.name.starts_with("mem"), "{d:?}");
    }
    assert_eq!(
        devices.iter().map(|d| d.scanned_bytes).sum::<u64>(),
        scan.bytes_scanned
    );
    clean_shutdown(core);
}
