//! Model-based tests of the shared-memory index: random operation sequences
//! against a `BTreeMap`, across many partitions and sprigs, plus the life
//! cycle's edges (index full, stage growth, sets, page modes).

mod common;

use common::{digest, record, small_config, SegmentsGuard};
use osprey_engine::index::{AttachError, Change, IndexError, PageMode, Refusal, Start};
use osprey_engine::{Digest, Index, IndexRecord, PartitionId};
use proptest::prelude::*;
use std::collections::BTreeMap;

/// Digests from a small pool, so that operations hit the same keys again:
/// half spread over all partitions, half crowded into partition 7 so that
/// its sprigs grow deep trees.
fn pool_digest(n: u16) -> Digest {
    if n.is_multiple_of(2) {
        digest(u64::from(n))
    } else {
        let mut d = digest(u64::from(n)).0;
        d[0] = 7;
        d[1] &= 0xF0; // partition 7; the high nibble picks the sprig
        Digest(d)
    }
}

#[derive(Debug, Clone)]
enum Op {
    Put(u16, u64),
    Remove(u16),
    Bump(u16),
    Get(u16),
    Scan(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u16..500, any::<u64>()).prop_map(|(k, s)| Op::Put(k, s)),
        2 => (0u16..500).prop_map(Op::Remove),
        2 => (0u16..500).prop_map(Op::Bump),
        2 => (0u16..500).prop_map(Op::Get),
        1 => (0u16..500).prop_map(Op::Scan),
    ]
}

fn model_stats(model: &BTreeMap<Digest, IndexRecord>) -> (u64, u64, u64) {
    let records = model.values().filter(|r| !r.tombstone).count() as u64;
    let tombstones = model.values().filter(|r| r.tombstone).count() as u64;
    let bytes = model.values().map(|r| r.size_bytes()).sum();
    (records, tombstones, bytes)
}

fn scan(index: &Index, partition: PartitionId, after: Option<&Digest>) -> Vec<IndexRecord> {
    let mut out = Vec::new();
    let mut buffer = Vec::new();
    index.scan_partition(partition, after, &mut buffer, |r| {
        out.push(*r);
        true
    });
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn index_matches_a_btreemap(ops in proptest::collection::vec(op(), 1..800), sprig_log in 0u32..5) {
        let config = small_config(1 << sprig_log);
        let _guard = SegmentsGuard(config.clone());
        let index = Index::create(&config).unwrap();
        for name in ["s1", "s2", "s3"] {
            index.set_id(name).unwrap();
        }
        let mut model: BTreeMap<Digest, IndexRecord> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Put(k, seed) => {
                    let d = pool_digest(k);
                    let r = record(d, seed);
                    prop_assert_eq!(index.put(r).unwrap(), model.insert(d, r));
                }
                Op::Remove(k) => {
                    let d = pool_digest(k);
                    prop_assert_eq!(index.remove(&d), model.remove(&d));
                }
                Op::Bump(k) => {
                    // Read-modify-write through the closure API.
                    let d = pool_digest(k);
                    let got = index.modify(&d, |old| {
                        let mut new = *old;
                        new.generation = new.generation.wrapping_add(1);
                        (Change::Put(new), old.generation)
                    });
                    let want = model.get_mut(&d).map(|r| {
                        let g = r.generation;
                        r.generation = g.wrapping_add(1);
                        g
                    });
                    prop_assert_eq!(got, want);
                }
                Op::Get(k) => {
                    let d = pool_digest(k);
                    prop_assert_eq!(index.get(&d), model.get(&d).copied());
                }
                Op::Scan(k) => {
                    // Scan the partition of a pool key, resuming after it.
                    let d = pool_digest(k);
                    let p = d.partition();
                    let all: Vec<IndexRecord> =
                        model.values().filter(|r| r.digest.partition() == p).copied().collect();
                    prop_assert_eq!(scan(&index, p, None), all.clone());
                    let tail: Vec<IndexRecord> = all.into_iter().filter(|r| r.digest > d).collect();
                    prop_assert_eq!(scan(&index, p, Some(&d)), tail);
                }
            }
        }
        let stats = index.stats();
        let (records, tombstones, bytes) = model_stats(&model);
        prop_assert_eq!((stats.records, stats.tombstones, stats.bytes), (records, tombstones, bytes));
        prop_assert_eq!(stats.entries_in_use, model.len() as u64);
        for set in 1..=3u16 {
            let want = model.values().filter(|r| !r.tombstone && r.set_id == set).count() as u64;
            prop_assert_eq!(index.set_records(set), want);
        }
        prop_assert_eq!(index.verify().map_err(TestCaseError::fail)?, model.len() as u64);

        // A clean shutdown and warm attach give back the same index.
        index.mark_trusted(42);
        let (index, summary) = Index::attach(&config, Some(42), &|_| {}).unwrap();
        prop_assert_eq!(summary.entries, model.len() as u64);
        prop_assert_eq!((summary.records, summary.tombstones, summary.bytes), (records, tombstones, bytes));
        for (d, r) in &model {
            prop_assert_eq!(index.get(d), Some(*r));
        }
        prop_assert_eq!(index.stats().records, records);
        index.destroy().unwrap();
    }
}

#[test]
fn update_on_an_absent_key_can_decline_without_inserting() {
    let config = small_config(4);
    let _guard = SegmentsGuard(config.clone());
    let index = Index::create(&config).unwrap();
    let d = digest(1);
    let existed = index
        .update(&d, |old| (Change::Keep, old.is_some()))
        .unwrap();
    assert!(!existed);
    index.update(&d, |_| (Change::Remove, ())).unwrap();
    assert_eq!(index.get(&d), None);
    assert_eq!(index.stats().entries_in_use, 0);
    assert_eq!(
        index.stats().free_entries,
        1,
        "the reserved entry went back to the free list"
    );
    assert_eq!(index.modify(&d, |_| (Change::Remove, ())), None);
}

#[test]
fn the_arena_grows_stage_by_stage_then_reports_index_full() {
    let mut config = small_config(16);
    config.stage_size_bytes = 64 << 10; // 1024 entries per stage (a power of two)
    config.max_stages = 3;
    let _guard = SegmentsGuard(config.clone());
    let index = Index::create(&config).unwrap();
    let capacity = u64::from(config.entries_per_stage()) * 3 - 1; // handle 0 is nil
    for n in 0..capacity {
        index.put(record(digest(n), n)).unwrap();
    }
    assert_eq!(index.stats().stages, 3);
    // One more insert is refused and the callback is never run.
    let mut ran = false;
    let err = index
        .update(&digest(capacity), |_| {
            ran = true;
            (Change::Put(record(digest(capacity), 0)), ())
        })
        .unwrap_err();
    assert!(!ran, "decide must not run when no entry can be had");
    assert!(
        matches!(err, IndexError::Full { max_stages: 3, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("index full"), "{err}");
    // Nothing is corrupted, and freed entries are reused.
    assert_eq!(index.verify().unwrap(), capacity);
    assert!(index.remove(&digest(5)).is_some());
    index.put(record(digest(capacity), 1)).unwrap();
    assert_eq!(index.stats().stages, 3);
    assert_eq!(index.verify().unwrap(), capacity);
    // Several stages attach again after a clean shutdown.
    index.mark_trusted(7);
    let (index, summary) = Index::attach(&config, Some(7), &|_| {}).unwrap();
    assert_eq!(summary.entries, capacity);
    assert_eq!(
        index.get(&digest(capacity)),
        Some(record(digest(capacity), 1))
    );
    index.destroy().unwrap();
}

#[test]
fn set_names_are_checked_and_survive_a_warm_restart() {
    let config = small_config(4);
    let _guard = SegmentsGuard(config.clone());
    let index = Index::create(&config).unwrap();
    assert!(matches!(
        index.set_id(""),
        Err(IndexError::InvalidSetName(_))
    ));
    assert!(matches!(
        index.set_id(&"x".repeat(64)),
        Err(IndexError::InvalidSetName(_))
    ));
    let demo = index.set_id("demo").unwrap();
    let other = index.set_id(&"y".repeat(63)).unwrap();
    assert_eq!(index.set_id("demo").unwrap(), demo);
    assert_ne!(demo, other);
    assert_eq!(index.find_set("nope"), None);
    index.mark_trusted(1);
    let (index, _) = Index::attach(&config, Some(1), &|_| {}).unwrap();
    assert_eq!(index.find_set("demo"), Some(demo));
    assert_eq!(
        index.set_name(other).as_deref(),
        Some("y".repeat(63).as_str())
    );
    assert_eq!(index.set_name(99), None);
    assert_eq!(index.set_id("new").unwrap(), other + 1);
    index.destroy().unwrap();
}

#[test]
fn attach_refusals_name_their_reason() {
    let config = small_config(8);
    let _guard = SegmentsGuard(config.clone());
    match Index::attach(&config, None, &|_| {}) {
        Err(AttachError::Refused(Refusal::NoIndex)) => {}
        other => panic!("expected NoIndex, got {:?}", other.map(|_| ())),
    }
    let index = Index::create(&config).unwrap();
    index.put(record(digest(1), 1)).unwrap();
    // While attached here, another create or attach is refused, not forced.
    assert!(matches!(
        Index::create(&config),
        Err(IndexError::InUse { .. })
    ));
    index.mark_trusted(5);

    let mut other_layout = config.clone();
    other_layout.stage_size_bytes = 2 << 20;
    match Index::attach(&other_layout, Some(5), &|_| {}) {
        Err(AttachError::Refused(Refusal::LayoutMismatch(why))) => {
            assert!(why.contains("index.stage-size"), "{why}")
        }
        other => panic!("expected LayoutMismatch, got {:?}", other.map(|_| ())),
    }
    match Index::attach(&config, Some(6), &|_| {}) {
        Err(AttachError::Refused(
            r @ Refusal::ShutdownIdMismatch {
                index: 5,
                devices: 6,
            },
        )) => {
            assert!(r.to_string().contains("does not match"), "{r}")
        }
        other => panic!("expected ShutdownIdMismatch, got {:?}", other.map(|_| ())),
    }
    // The refused attaches left the trusted flag alone: a matching one works.
    let (index, summary) = Index::attach(&config, Some(5), &|_| {}).unwrap();
    assert_eq!(summary.entries, 1);
    drop(index); // no mark_trusted: as after a crash
    let (index, start) = Index::open(&config, Some(5), &|_| {}).unwrap();
    assert!(
        matches!(start, Start::Cold(Refusal::NotTrusted)),
        "{start:?}"
    );
    assert!(index.is_empty());
    index.destroy().unwrap();
}

#[test]
fn huge_pages_required_but_absent_is_a_clear_error() {
    let (free, _) = osprey_engine::shm::hugepages_free();
    if free >= 64 << 20 {
        eprintln!("skipped: this host has {free} bytes of hugepages free, so the refusal cannot be provoked");
        return;
    }
    let mut config = small_config(4);
    config.pages = PageMode::Huge;
    let _guard = SegmentsGuard(config.clone());
    let err = Index::create(&config)
        .err()
        .expect("huge pages are not available");
    let text = err.to_string();
    assert!(
        matches!(err, IndexError::HugePagesUnavailable { .. }),
        "{text}"
    );
    assert!(text.contains("setup-hugepages.sh"), "{text}");
    // Auto falls back to normal pages.
    config.pages = PageMode::Auto;
    let index = Index::create(&config).unwrap();
    assert!(!index.stats().huge_pages);
    index.destroy().unwrap();
}

#[test]
fn invalid_config_is_refused_with_the_key() {
    let mut config = small_config(4);
    config.sprigs_per_partition = 3;
    match Index::create(&config) {
        Err(IndexError::Config(e)) => assert_eq!(e.key, "index.sprigs"),
        other => panic!("expected a config error, got {:?}", other.map(|_| ())),
    }
}
