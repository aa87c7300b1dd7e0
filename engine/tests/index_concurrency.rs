//! Several threads on the same few sprigs: disjoint owners checked against
//! their own sequential models, contended read-modify-write counters, and
//! partition scans under concurrent writes.
//!
//! Every key lies in partitions 0..4, and the configs have one or two sprigs
//! per partition, so all threads meet in the same handful of trees. The
//! machine the suite runs on has two cores; four threads oversubscribe it on
//! purpose (a lock holder may be preempted). Every loop is bounded in time.

mod common;

use common::{small_config, SegmentsGuard};
use osprey_engine::index::Change;
use osprey_engine::{Digest, Index, IndexConfig, IndexRecord, Location, PartitionId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const THREADS: usize = 4;
/// Partitions every key falls in.
const HOT_PARTITIONS: u16 = 4;

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A digest for key `k` in partitions 0..4 (byte 0 in 0..4, the low nibble
/// of byte 1 zero); the high nibble of byte 1 and the rest are pseudo-random,
/// so the key's sprig and place in the tree do not depend on who owns it.
fn hot_digest(k: u64) -> Digest {
    let mut d = [0u8; 20];
    for (i, chunk) in d.chunks_mut(8).enumerate() {
        let word = splitmix(k.wrapping_mul(3).wrapping_add(i as u64)).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    d[0] %= HOT_PARTITIONS as u8;
    d[1] &= 0xF0;
    Digest(d)
}

fn hot_digests(count: u64) -> Vec<Digest> {
    let digests: Vec<Digest> = (0..count).map(hot_digest).collect();
    let distinct: HashSet<&Digest> = digests.iter().collect();
    assert_eq!(distinct.len(), digests.len(), "digest collision");
    assert!(digests.iter().all(|d| d.partition().get() < HOT_PARTITIONS));
    digests
}

fn random_record(rng: &mut StdRng, digest: Digest) -> IndexRecord {
    IndexRecord {
        digest,
        location: Location {
            device: rng.gen_range(0..8),
            rblock_id: rng.gen_range(0..1 << 40),
            n_rblocks: rng.gen_range(1..1_000),
        },
        generation: rng.gen(),
        void_time: rng.gen_range(0..3) * 1_000,
        last_update_ms: rng.gen_range(0..1 << 47),
        set_id: rng.gen_range(0..4),
        tombstone: rng.gen_ratio(1, 8),
        key_stored: rng.gen(),
    }
}

/// Keys of the config's namespace left on the host (`/proc/sysvipc/shm`:
/// a header line, then `key shmid perms size cpid lpid nattch ...`, the key
/// in decimal).
fn assert_keys_gone(config: &IndexConfig) {
    let low = i64::from(config.key(0));
    let text = std::fs::read_to_string("/proc/sysvipc/shm").expect("no /proc/sysvipc/shm");
    let left: Vec<&str> = text
        .lines()
        .skip(1)
        .filter(|line| {
            line.split_whitespace()
                .next()
                .and_then(|k| k.parse::<i64>().ok())
                .is_some_and(|k| (low..low + 0x1000).contains(&k))
        })
        .collect();
    assert!(left.is_empty(), "segments left behind: {left:?}");
}

fn totals(records: impl Iterator<Item = IndexRecord>) -> (u64, u64, u64, [u64; 4]) {
    let (mut live, mut tombstones, mut bytes, mut sets) = (0, 0, 0, [0u64; 4]);
    for r in records {
        if r.tombstone {
            tombstones += 1;
        } else {
            live += 1;
            sets[r.set_id as usize] += 1;
        }
        bytes += r.size_bytes();
    }
    (live, tombstones, bytes, sets)
}

/// Checks the index against `model` (the whole expected content over
/// `keys`) and its own invariants.
fn assert_index_equals(index: &Index, keys: &[Digest], model: &HashMap<Digest, IndexRecord>) {
    for d in keys {
        assert_eq!(index.get(d), model.get(d).copied(), "digest {d}");
    }
    let (live, tombstones, bytes, sets) = totals(model.values().copied());
    let stats = index.stats();
    assert_eq!(
        (stats.records, stats.tombstones, stats.bytes),
        (live, tombstones, bytes)
    );
    assert_eq!(stats.entries_in_use, model.len() as u64);
    for s in 1..4u16 {
        assert_eq!(index.set_records(s), sets[s as usize], "set {s}");
    }
    for p in PartitionId::all() {
        let (live, tombstones, bytes, _) = totals(
            model
                .values()
                .filter(|r| r.digest.partition() == p)
                .copied(),
        );
        let got = index.partition_stats(p);
        assert_eq!(
            (got.records, got.tombstones, got.bytes),
            (live, tombstones, bytes),
            "partition {}",
            p.get()
        );
    }
    assert_eq!(index.verify(), Ok(model.len() as u64));
}

fn make_sets(index: &Index) {
    for (i, name) in ["s1", "s2", "s3"].iter().enumerate() {
        assert_eq!(index.set_id(name).unwrap(), i as u16 + 1);
    }
}

// ---- disjoint owners -----------------------------------------------------

const OWNER_KEYS: u64 = 6_000;
const OWNER_OPS: u64 = 100_000;

/// One owner's run: a seeded random sequence over its own keys, each result
/// checked against its sequential model, plus reads of other owners' keys.
fn owner_run(
    index: &Index,
    keys: &[Digest],
    owner: usize,
    deadline: Instant,
) -> (HashMap<Digest, IndexRecord>, u64) {
    let mut rng = StdRng::seed_from_u64(0x0517_0000 + owner as u64);
    let mine: Vec<Digest> = keys.iter().skip(owner).step_by(THREADS).copied().collect();
    let mut model: HashMap<Digest, IndexRecord> = HashMap::new();
    let mut ops = 0;
    while ops < OWNER_OPS && Instant::now() < deadline {
        for _ in 0..256 {
            ops += 1;
            let d = mine[rng.gen_range(0..mine.len())];
            let want = model.get(&d).copied();
            match rng.gen_range(0..100) {
                0..=29 => {
                    let r = random_record(&mut rng, d);
                    assert_eq!(index.put(r).unwrap(), want, "put {d}");
                    model.insert(d, r);
                }
                30..=44 => {
                    assert_eq!(index.remove(&d), want, "remove {d}");
                    model.remove(&d);
                }
                45..=64 => {
                    // Bump the generation when present, insert when absent.
                    let fresh = random_record(&mut rng, d);
                    let new = match want {
                        Some(mut r) => {
                            r.generation = r.generation.wrapping_add(1);
                            r
                        }
                        None => fresh,
                    };
                    index
                        .update(&d, |old| {
                            assert_eq!(old.copied(), want, "update {d} saw another record");
                            (Change::Put(new), ())
                        })
                        .unwrap();
                    model.insert(d, new);
                }
                65..=74 => {
                    // Remove tombstones, touch live records; never inserts.
                    let out = index.modify(&d, |old| {
                        assert_eq!(Some(*old), want, "modify {d} saw another record");
                        if old.tombstone {
                            (Change::Remove, None)
                        } else {
                            let mut r = *old;
                            r.last_update_ms += 1;
                            r.set_id = (r.set_id + 1) % 4;
                            (Change::Put(r), Some(r))
                        }
                    });
                    match out {
                        None => assert_eq!(want, None, "modify {d} found nothing"),
                        Some(None) => {
                            model.remove(&d);
                        }
                        Some(Some(r)) => {
                            model.insert(d, r);
                        }
                    }
                }
                75..=94 => assert_eq!(index.get(&d), want, "get {d}"),
                _ => {
                    // Another owner's key: whatever is there is whole.
                    let other = keys[rng.gen_range(0..keys.len())];
                    if let Some(r) = index.get(&other) {
                        assert_eq!(r.digest, other);
                        assert!(r.location.n_rblocks >= 1 && r.set_id < 4, "{r:?}");
                    }
                }
            }
        }
    }
    (model, ops)
}

#[test]
fn disjoint_owners_in_shared_sprigs_match_their_models() {
    let config = small_config(2);
    let guard = SegmentsGuard(config.clone());
    let started = Instant::now();
    let keys = hot_digests(OWNER_KEYS);
    let index = Index::create(&config).unwrap();
    make_sets(&index);
    let deadline = started + Duration::from_secs(7);
    let results: Vec<(HashMap<Digest, IndexRecord>, u64)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (index, keys) = (&index, &keys);
                s.spawn(move || owner_run(index, keys, t, deadline))
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let mut union = HashMap::new();
    let mut ops = 0;
    for (model, n) in results {
        ops += n;
        let before = union.len();
        let added = model.len();
        union.extend(model);
        assert_eq!(union.len(), before + added, "owners overlapped");
    }
    assert!(
        ops >= THREADS as u64 * 10_000,
        "only {ops} operations ran before the deadline"
    );
    assert!(union.len() > 1_000);
    assert_index_equals(&index, &keys, &union);
    drop(index);
    drop(guard);
    assert_keys_gone(&config);
    eprintln!(
        "disjoint owners: {ops} ops, {} keys left, {:?}",
        union.len(),
        started.elapsed()
    );
}

// ---- contended read-modify-write -----------------------------------------

const COUNTER_KEYS: u64 = 32;
const COUNTER_OPS: u64 = 100_000;

/// A counter record: the count in `last_update_ms`, its low 16 bits again in
/// `generation` (a torn or lost write shows as a mismatch), one rblock.
fn counter(digest: Digest, count: u64) -> IndexRecord {
    IndexRecord {
        digest,
        location: Location {
            device: 0,
            rblock_id: count,
            n_rblocks: 1,
        },
        generation: count as u16,
        void_time: 0,
        last_update_ms: count,
        set_id: 0,
        tombstone: false,
        key_stored: false,
    }
}

fn check_counter(r: &IndexRecord, d: &Digest) -> u64 {
    assert_eq!(r.digest, *d, "closure got another key's record");
    assert_eq!(r.generation, r.last_update_ms as u16, "torn counter {r:?}");
    assert_eq!(r.location.rblock_id, r.last_update_ms, "torn counter {r:?}");
    r.last_update_ms
}

/// Increments (inserting at 1) and removes random shared keys; returns how
/// many increments it did per key and the counts it removed per key.
fn counter_run(
    index: &Index,
    keys: &[Digest],
    t: usize,
    deadline: Instant,
) -> (Vec<u64>, Vec<u64>) {
    let mut rng = StdRng::seed_from_u64(0xC0C0 + t as u64);
    let mut increments = vec![0u64; keys.len()];
    let mut banked = vec![0u64; keys.len()];
    let mut ops = 0;
    while ops < COUNTER_OPS && Instant::now() < deadline {
        for _ in 0..256 {
            ops += 1;
            let k = rng.gen_range(0..keys.len());
            let d = keys[k];
            match rng.gen_range(0..100) {
                0..=79 => {
                    index
                        .update(&d, |old| {
                            let count = old.map_or(0, |r| check_counter(r, &d));
                            (Change::Put(counter(d, count + 1)), ())
                        })
                        .unwrap();
                    increments[k] += 1;
                }
                80..=89 => {
                    let done = index.modify(&d, |old| {
                        let count = check_counter(old, &d);
                        (Change::Put(counter(d, count + 1)), ())
                    });
                    if done.is_some() {
                        increments[k] += 1;
                    }
                }
                _ => {
                    if let Some(count) =
                        index.modify(&d, |old| (Change::Remove, check_counter(old, &d)))
                    {
                        banked[k] += count;
                    }
                }
            }
        }
    }
    (increments, banked)
}

#[test]
fn contended_update_closures_count_exactly() {
    let config = small_config(1);
    let guard = SegmentsGuard(config.clone());
    let started = Instant::now();
    let keys = hot_digests(COUNTER_KEYS);
    let index = Index::create(&config).unwrap();
    let deadline = started + Duration::from_secs(7);
    let results: Vec<(Vec<u64>, Vec<u64>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (index, keys) = (&index, &keys);
                s.spawn(move || counter_run(index, keys, t, deadline))
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let mut all_increments = 0;
    let mut present = HashMap::new();
    for (k, d) in keys.iter().enumerate() {
        let done: u64 = results.iter().map(|(inc, _)| inc[k]).sum();
        let banked: u64 = results.iter().map(|(_, bank)| bank[k]).sum();
        let now = index.get(d).map_or(0, |r| check_counter(&r, d));
        assert_eq!(
            now + banked,
            done,
            "key {k}: {now} in the index + {banked} removed != {done} increments"
        );
        all_increments += done;
        if let Some(r) = index.get(d) {
            present.insert(*d, r);
        }
    }
    assert!(
        all_increments >= THREADS as u64 * 10_000,
        "only {all_increments} increments ran before the deadline"
    );
    assert_index_equals(&index, &keys, &present);
    drop(index);
    drop(guard);
    assert_keys_gone(&config);
    eprintln!(
        "contended counters: {all_increments} increments, {:?}",
        started.elapsed()
    );
}

// ---- scans under writes --------------------------------------------------

/// Keys inserted before the writers start and never written again.
const STABLE_KEYS: u64 = 2_000;
/// Keys the writers churn.
const VOLATILE_KEYS: u64 = 6_000;
const WRITERS: usize = THREADS - 1;
/// Partitions the scanner visits: the hot ones and a few empty ones.
const SCANNED_PARTITIONS: u16 = 8;

/// Scans `p` whole, or in pieces of `piece` records resumed after the last
/// digest seen; checks order and placement; returns the digests.
fn scan_checked(
    index: &Index,
    p: PartitionId,
    piece: Option<usize>,
    buffer: &mut Vec<IndexRecord>,
) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::new();
    loop {
        let after = if piece.is_some() {
            out.last().copied()
        } else {
            None
        };
        let mut taken = 0;
        index.scan_partition(p, after.as_ref(), buffer, |r| {
            if let Some(last) = out.last() {
                assert!(
                    *last < r.digest,
                    "partition {}: {} after {last} (resumed after {after:?})",
                    p.get(),
                    r.digest
                );
            }
            assert_eq!(
                r.digest.partition(),
                p,
                "{} in the scan of {}",
                r.digest,
                p.get()
            );
            out.push(r.digest);
            taken += 1;
            piece.is_none_or(|n| taken < n)
        });
        match piece {
            Some(n) if taken == n => continue,
            _ => return out,
        }
    }
}

#[test]
fn partition_scans_stay_ordered_under_writes() {
    let config = small_config(2);
    let guard = SegmentsGuard(config.clone());
    let started = Instant::now();
    let all = hot_digests(STABLE_KEYS + VOLATILE_KEYS);
    let (stable, volatile) = all.split_at(STABLE_KEYS as usize);
    let stable_set: HashSet<Digest> = stable.iter().copied().collect();
    let index = Index::create(&config).unwrap();
    make_sets(&index);
    let mut rng = StdRng::seed_from_u64(5);
    for d in stable {
        index.put(random_record(&mut rng, *d)).unwrap();
    }
    for d in volatile.iter().step_by(2) {
        index.put(random_record(&mut rng, *d)).unwrap();
    }
    let mut stable_per_partition = [0usize; SCANNED_PARTITIONS as usize];
    for d in stable {
        stable_per_partition[d.partition().index()] += 1;
    }

    let writers_done = AtomicBool::new(false);
    let writes = AtomicU64::new(0);
    let deadline = started + Duration::from_secs(4);
    let scans = std::thread::scope(|s| {
        let writers: Vec<_> = (0..WRITERS)
            .map(|t| {
                let (index, writes) = (&index, &writes);
                s.spawn(move || {
                    let mut rng = StdRng::seed_from_u64(0x5CA7 + t as u64);
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        for _ in 0..256 {
                            let d = volatile[rng.gen_range(0..volatile.len())];
                            match rng.gen_range(0..4) {
                                0 => {
                                    index.put(random_record(&mut rng, d)).unwrap();
                                }
                                1 => {
                                    index.remove(&d);
                                }
                                2 => {
                                    let fresh = random_record(&mut rng, d);
                                    index
                                        .update(&d, |old| match old {
                                            Some(_) => (Change::Remove, ()),
                                            None => (Change::Put(fresh), ()),
                                        })
                                        .unwrap();
                                }
                                _ => {
                                    index.modify(&d, |old| {
                                        let mut r = *old;
                                        r.generation = r.generation.wrapping_add(1);
                                        (Change::Put(r), ())
                                    });
                                }
                            }
                            n += 1;
                        }
                    }
                    writes.fetch_add(n, Ordering::Relaxed);
                })
            })
            .collect();
        let scanner = s.spawn(|| {
            let mut buffer = Vec::new();
            let mut scans = 0u64;
            let mut round = 0usize;
            // Scan while the writers run, and at least a few rounds.
            while !writers_done.load(Ordering::Relaxed) || round < 3 {
                for p in 0..SCANNED_PARTITIONS {
                    let p = PartitionId::new(u32::from(p)).unwrap();
                    let piece = [None, Some(1), Some(7), Some(100)][(round + p.index()) % 4];
                    let got = scan_checked(&index, p, piece, &mut buffer);
                    scans += 1;
                    let stable_seen = got.iter().filter(|d| stable_set.contains(d)).count();
                    assert_eq!(
                        stable_seen,
                        stable_per_partition[p.index()],
                        "partition {}: the scan (pieces {piece:?}) missed stable keys",
                        p.get()
                    );
                    if p.get() >= HOT_PARTITIONS {
                        assert!(got.is_empty());
                    }
                    // The visitor may use the index: a stable key is there.
                    if let Some(d) = got.iter().find(|d| stable_set.contains(d)) {
                        assert!(index.get(d).is_some());
                    }
                }
                round += 1;
                assert!(
                    Instant::now() < deadline + Duration::from_secs(5),
                    "scanner overran its time"
                );
            }
            scans
        });
        for w in writers {
            w.join().unwrap();
        }
        writers_done.store(true, Ordering::Relaxed);
        scanner.join().unwrap()
    });
    let writes = writes.load(Ordering::Relaxed);
    assert!(scans >= 3 * u64::from(SCANNED_PARTITIONS));
    assert!(writes > 10_000, "only {writes} writes");
    for d in stable {
        assert!(index.get(d).is_some());
    }
    assert!(index.verify().is_ok());
    let stats = index.stats();
    assert_eq!(stats.records + stats.tombstones, stats.entries_in_use);
    drop(index);
    drop(guard);
    assert_keys_gone(&config);
    eprintln!(
        "scans under writes: {scans} scans, {writes} writes, {:?}",
        started.elapsed()
    );
}
