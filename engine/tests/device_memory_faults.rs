//! The memory backend's injected faults, as the storage engine's crash tests
//! rely on them: crashes after a number of operations (whole or torn),
//! injected I/O errors on byte ranges, a volatile write cache that loses
//! unflushed sectors at a power cycle, and corruption of the media.
//!
//! Every wait for completions is bounded by [`TIMEOUT`].

use std::ops::Range;
use std::time::Duration;

use osprey_engine::device::memory::{Faults, MemoryDevice};
use osprey_engine::device::{
    run_to_completion, Completion, Device, DeviceError, DeviceErrorKind, IoBuffer, IoKind, IoOp,
    Queue,
};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

const MIB: u64 = 1 << 20;
/// Sector (minimum I/O) size of every device here.
const S: u64 = 4096;
const TIMEOUT: Duration = Duration::from_secs(10);
const NAME: &str = "mem-faults";

fn device() -> MemoryDevice {
    MemoryDevice::new(NAME, 16 * MIB, S as u32, 32)
}

fn open_queue(device: &MemoryDevice) -> Box<dyn Queue> {
    device
        .open_queue()
        .unwrap_or_else(|e| panic!("open_queue: {e}"))
}

fn buffer_with(device: &MemoryDevice, data: &[u8]) -> IoBuffer {
    let mut buffer = device.alloc_buffer(data.len()).unwrap();
    assert_eq!(buffer.len(), data.len());
    buffer.copy_from_slice(data);
    buffer
}

fn random_bytes(rng: &mut StdRng, len: u64) -> Vec<u8> {
    let mut data = vec![0; len as usize];
    rng.fill_bytes(&mut data);
    data
}

fn write_op(device: &MemoryDevice, offset: u64, data: &[u8], token: u64) -> IoOp {
    IoOp {
        kind: IoKind::Write,
        offset,
        buffer: buffer_with(device, data),
        token,
    }
}

fn read_op(device: &MemoryDevice, offset: u64, len: u64, token: u64) -> IoOp {
    let mut buffer = device.alloc_buffer(len as usize).unwrap();
    buffer.fill(0x5A);
    IoOp {
        kind: IoKind::Read,
        offset,
        buffer,
        token,
    }
}

fn flush_op(device: &MemoryDevice, token: u64) -> IoOp {
    IoOp {
        kind: IoKind::Flush,
        offset: 0,
        buffer: device.alloc_buffer(0).unwrap(),
        token,
    }
}

/// Runs `ops` (all accepted by the queue) and returns their completions in
/// token order.
fn run(queue: &mut dyn Queue, ops: Vec<IoOp>) -> Vec<Completion> {
    let n = ops.len();
    let mut done = run_to_completion(queue, ops, TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(done.len(), n);
    done.sort_by_key(|c| c.token);
    done
}

fn run_one(queue: &mut dyn Queue, op: IoOp) -> Completion {
    run(queue, vec![op]).pop().unwrap()
}

fn write(
    q: &mut dyn Queue,
    device: &MemoryDevice,
    offset: u64,
    data: &[u8],
) -> Result<(), DeviceError> {
    run_one(q, write_op(device, offset, data, 0)).result
}

fn read(
    q: &mut dyn Queue,
    device: &MemoryDevice,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>, DeviceError> {
    let c = run_one(q, read_op(device, offset, len, 0));
    c.result.map(|()| c.buffer.to_vec())
}

fn flush(q: &mut dyn Queue, device: &MemoryDevice) -> Result<(), DeviceError> {
    run_one(q, flush_op(device, 0)).result
}

fn is_crashed_error(result: &Result<(), DeviceError>) -> bool {
    matches!(result, Err(e) if e.kind == DeviceErrorKind::Crashed && e.device == NAME)
}

fn range(offset: u64, len: u64) -> Range<u64> {
    offset..offset + len
}

#[test]
fn crash_after_n_ops_lets_exactly_n_through() {
    const REGION: u64 = 2 * S;
    for n in [0u64, 1, 5, 31] {
        let dev = device();
        let mut q = open_queue(&dev);
        let mut rng = StdRng::seed_from_u64(n);
        // Operations before the fault plan is set do not count.
        let before = random_bytes(&mut rng, S);
        write(&mut *q, &dev, 15 * MIB, &before).unwrap();
        dev.set_faults(Faults {
            crash_after_ops: Some(n),
            ..Faults::default()
        });
        assert!(!dev.is_crashed());
        // n + 4 writes, each to its own region, in one batch.
        let total = n + 4;
        let datas: Vec<Vec<u8>> = (0..total).map(|_| random_bytes(&mut rng, REGION)).collect();
        let ops = datas
            .iter()
            .enumerate()
            .map(|(i, d)| write_op(&dev, i as u64 * REGION, d, i as u64))
            .collect();
        let done = run(&mut *q, ops);
        for (i, c) in done.iter().enumerate() {
            if (i as u64) < n {
                assert!(
                    c.result.is_ok(),
                    "n = {n}: write {i} must succeed: {:?}",
                    c.result
                );
            } else {
                assert!(
                    is_crashed_error(&c.result),
                    "n = {n}: write {i} must fail as crashed: {:?}",
                    c.result
                );
                let e = c.result.as_ref().unwrap_err();
                assert_eq!(
                    (e.op, e.offset, e.len),
                    (IoKind::Write, i as u64 * REGION, REGION)
                );
                assert!(e.to_string().contains("crashed"), "{e}");
            }
        }
        assert!(dev.is_crashed(), "n = {n}");
        assert_eq!(dev.ops(), n, "n = {n}: operations executed");
        for (i, d) in datas.iter().enumerate() {
            let durable = dev.durable_bytes(range(i as u64 * REGION, REGION));
            if (i as u64) < n {
                assert_eq!(durable, *d, "n = {n}: write {i} not on the media");
            } else {
                assert!(
                    durable.iter().all(|&b| b == 0),
                    "n = {n}: failed write {i} reached the media"
                );
            }
        }
        // Once crashed, everything fails and nothing lands.
        let late = 8 * MIB;
        assert!(is_crashed_error(&write(
            &mut *q,
            &dev,
            late,
            &random_bytes(&mut rng, S)
        )));
        assert!(is_crashed_error(&read(&mut *q, &dev, 0, S).map(|_| ())));
        assert!(is_crashed_error(&flush(&mut *q, &dev)));
        assert!(dev.durable_bytes(range(late, S)).iter().all(|&b| b == 0));
        assert!(dev.is_crashed());
        assert_eq!(dev.ops(), n);
        // A new queue on the crashed device fails too.
        let mut q2 = open_queue(&dev);
        assert!(is_crashed_error(&write(
            &mut *q2,
            &dev,
            late,
            &random_bytes(&mut rng, S)
        )));
        assert!(dev.durable_bytes(range(late, S)).iter().all(|&b| b == 0));

        dev.power_cycle();
        assert!(!dev.is_crashed(), "n = {n}: power_cycle must end the crash");
        for (i, d) in datas.iter().enumerate() {
            let got = read(&mut *q, &dev, i as u64 * REGION, REGION).unwrap();
            if (i as u64) < n {
                assert_eq!(got, *d, "n = {n}: write {i} lost by the power cycle");
            } else {
                assert!(
                    got.iter().all(|&b| b == 0),
                    "n = {n}: failed write {i} visible after the power cycle"
                );
            }
        }
        assert!(read(&mut *q, &dev, late, S)
            .unwrap()
            .iter()
            .all(|&b| b == 0));
        assert_eq!(read(&mut *q, &dev, 15 * MIB, S).unwrap(), before);
        // The fault plan is gone: more than n operations go through.
        for i in 0..n + 3 {
            write(&mut *q, &dev, late + i * S, &[1; S as usize]).unwrap();
        }
        assert!(!dev.is_crashed());
    }
}

#[test]
fn crash_after_ops_counts_reads_and_flushes_too() {
    let dev = device();
    let mut q = open_queue(&dev);
    dev.set_faults(Faults {
        crash_after_ops: Some(3),
        ..Faults::default()
    });
    let done = run(
        &mut *q,
        vec![
            read_op(&dev, 0, S, 0),
            flush_op(&dev, 1),
            write_op(&dev, S, &[9; S as usize], 2),
            read_op(&dev, S, S, 3),
        ],
    );
    assert!(
        done[..3].iter().all(|c| c.result.is_ok()),
        "{:?}",
        done.iter().map(|c| &c.result).collect::<Vec<_>>()
    );
    assert!(is_crashed_error(&done[3].result));
    assert_eq!(dev.durable_bytes(range(S, S)), vec![9; S as usize]);
}

#[test]
fn crash_now_stops_everything_until_power_cycle() {
    let dev = device();
    let mut q = open_queue(&dev);
    write(&mut *q, &dev, 0, &[3; S as usize]).unwrap();
    // Submitted before the crash, executed after it: fails.
    q.submit(write_op(&dev, S, &[4; S as usize], 1)).unwrap();
    dev.crash_now();
    assert!(dev.is_crashed());
    let mut out = Vec::new();
    assert_eq!(q.poll(&mut out, usize::MAX), 1);
    assert!(is_crashed_error(&out[0].result));
    assert!(is_crashed_error(&write(&mut *q, &dev, 0, &[5; S as usize])));
    assert_eq!(
        dev.durable_bytes(range(0, 2 * S)),
        [[3; S as usize], [0; S as usize]].concat()
    );
    dev.power_cycle();
    assert!(!dev.is_crashed());
    assert_eq!(
        read(&mut *q, &dev, 0, 2 * S).unwrap(),
        [[3; S as usize], [0; S as usize]].concat()
    );
}

#[test]
fn a_torn_crash_lands_the_leading_half_of_the_write() {
    // (sectors written, sectors that land): the leading half, whole sectors.
    for (sectors, landed) in [(8u64, 4u64), (7, 3), (2, 1), (1, 0)] {
        let dev = device();
        let mut q = open_queue(&dev);
        let mut rng = StdRng::seed_from_u64(sectors);
        let base = 64 * S;
        let len = sectors * S;
        let old = random_bytes(&mut rng, len);
        write(&mut *q, &dev, base, &old).unwrap();
        dev.set_faults(Faults {
            crash_after_ops: Some(1),
            torn_crash: true,
            ..Faults::default()
        });
        // Op 1 goes through; op 2 is the torn write; op 3 is after the crash.
        let first = random_bytes(&mut rng, S);
        let new = random_bytes(&mut rng, len);
        let after = random_bytes(&mut rng, len);
        let done = run(
            &mut *q,
            vec![
                write_op(&dev, 0, &first, 0),
                write_op(&dev, base, &new, 1),
                write_op(&dev, base, &after, 2),
            ],
        );
        assert!(done[0].result.is_ok());
        assert!(
            is_crashed_error(&done[1].result),
            "the torn write must report the crash"
        );
        assert!(is_crashed_error(&done[2].result));
        dev.power_cycle();
        let got = read(&mut *q, &dev, base, len).unwrap();
        let cut = (landed * S) as usize;
        let want = [&new[..cut], &old[cut..]].concat();
        if got != want {
            let lands: Vec<&str> = got
                .chunks(S as usize)
                .zip(new.chunks(S as usize).zip(old.chunks(S as usize)))
                .map(|(g, (n, o))| {
                    if g == n {
                        "new"
                    } else if g == o {
                        "old"
                    } else {
                        "other"
                    }
                })
                .collect();
            panic!("a torn {sectors}-sector write must land exactly its first {landed} sectors; got {lands:?}");
        }
        assert_eq!(dev.durable_bytes(range(base, len)), want);
        assert_eq!(read(&mut *q, &dev, 0, S).unwrap(), first);
    }
}

#[test]
fn a_torn_crash_of_a_read_or_flush_changes_nothing() {
    let dev = device();
    let mut q = open_queue(&dev);
    write(&mut *q, &dev, 0, &[6; 8 * S as usize]).unwrap();
    dev.set_faults(Faults {
        crash_after_ops: Some(0),
        torn_crash: true,
        ..Faults::default()
    });
    assert!(is_crashed_error(&read(&mut *q, &dev, 0, 8 * S).map(|_| ())));
    dev.power_cycle();
    dev.set_faults(Faults {
        crash_after_ops: Some(0),
        torn_crash: true,
        ..Faults::default()
    });
    assert!(is_crashed_error(&flush(&mut *q, &dev)));
    dev.power_cycle();
    assert_eq!(
        read(&mut *q, &dev, 0, 8 * S).unwrap(),
        vec![6; 8 * S as usize]
    );
}

#[test]
fn injected_errors_hit_their_range_and_kind_only() {
    let dev = device();
    let mut q = open_queue(&dev);
    let mut rng = StdRng::seed_from_u64(0xE2);
    // Bytes 10 S + 100 .. 12 S: sectors 10 and 11.
    let bad = 10 * S + 100..12 * S;
    let old = random_bytes(&mut rng, 16 * S);
    write(&mut *q, &dev, 0, &old).unwrap();
    let injected = |result: &Result<(), DeviceError>, kind: IoKind, offset: u64| match result {
        Err(e) => {
            assert!(
                matches!(&e.kind, DeviceErrorKind::Io(text) if text.starts_with("injected")),
                "{kind} at {offset}: {e:?}"
            );
            assert_eq!((e.device.as_str(), e.op, e.offset), (NAME, kind, offset));
        }
        Ok(()) => panic!("{kind} at {offset} must fail with an injected error"),
    };

    dev.set_faults(Faults {
        error_ranges: vec![(IoKind::Read, bad.clone()), (IoKind::Write, bad.clone())],
        ..Faults::default()
    });
    // Reads overlapping the range fail: the first byte's sector, the last
    // byte's sector, and one spanning it.
    for (offset, len) in [(10 * S, S), (11 * S, S), (8 * S, 8 * S)] {
        injected(
            &read(&mut *q, &dev, offset, len).map(|_| ()),
            IoKind::Read,
            offset,
        );
    }
    // Reads beside it succeed: the sector before, and at its end.
    assert_eq!(
        read(&mut *q, &dev, 9 * S, S).unwrap(),
        old[9 * S as usize..10 * S as usize]
    );
    assert_eq!(
        read(&mut *q, &dev, 12 * S, 4 * S).unwrap(),
        old[12 * S as usize..]
    );
    // A write into the range fails and changes nothing; one beside it lands.
    let new = random_bytes(&mut rng, 4 * S);
    injected(&write(&mut *q, &dev, 9 * S, &new), IoKind::Write, 9 * S);
    assert_eq!(
        dev.durable_bytes(0..16 * S),
        old,
        "a failed write changed the media"
    );
    write(&mut *q, &dev, 12 * S, &new).unwrap();
    let mut now = old.clone();
    now[12 * S as usize..].copy_from_slice(&new);
    assert_eq!(dev.durable_bytes(0..16 * S), now);
    // Flushes are another kind: unaffected.
    flush(&mut *q, &dev).unwrap();

    // A range of exactly one sector: its neighbours, ending at its start or
    // starting at its end, are outside it.
    dev.set_faults(Faults {
        error_ranges: vec![(IoKind::Read, 5 * S..6 * S)],
        ..Faults::default()
    });
    injected(
        &read(&mut *q, &dev, 5 * S, S).map(|_| ()),
        IoKind::Read,
        5 * S,
    );
    injected(
        &read(&mut *q, &dev, 4 * S, 2 * S).map(|_| ()),
        IoKind::Read,
        4 * S,
    );
    assert_eq!(
        read(&mut *q, &dev, 4 * S, S).unwrap(),
        now[4 * S as usize..5 * S as usize]
    );
    assert_eq!(
        read(&mut *q, &dev, 6 * S, S).unwrap(),
        now[6 * S as usize..7 * S as usize]
    );

    // Ranges are per kind: with only reads failing, writes go through.
    dev.set_faults(Faults {
        error_ranges: vec![(IoKind::Read, bad.clone())],
        ..Faults::default()
    });
    let newer = random_bytes(&mut rng, 2 * S);
    write(&mut *q, &dev, 10 * S, &newer).unwrap();
    injected(
        &read(&mut *q, &dev, 10 * S, S).map(|_| ()),
        IoKind::Read,
        10 * S,
    );
    now[10 * S as usize..12 * S as usize].copy_from_slice(&newer);
    dev.set_faults(Faults::default());
    assert_eq!(read(&mut *q, &dev, 0, 16 * S).unwrap(), now);

    // Flush errors: a flush has no range of its own, so a range covering
    // every offset catches every flush.
    dev.set_faults(Faults {
        error_ranges: vec![(IoKind::Flush, 0..u64::MAX)],
        ..Faults::default()
    });
    injected(&flush(&mut *q, &dev), IoKind::Flush, 0);
    write(&mut *q, &dev, 0, &now[..S as usize]).unwrap();
}

#[test]
fn volatile_cache_writes_are_visible_at_once_and_durable_after_flush() {
    let dev = device();
    let mut q = open_queue(&dev);
    let mut rng = StdRng::seed_from_u64(0xCAC4E);
    dev.set_faults(Faults {
        volatile_cache: true,
        seed: 1,
        ..Faults::default()
    });
    let data = random_bytes(&mut rng, 16 * S);
    // Several writes and a read of them in one batch: the read sees them.
    let mut ops: Vec<IoOp> = (0..4)
        .map(|i| {
            write_op(
                &dev,
                i * 4 * S,
                &data[(i * 4 * S) as usize..((i + 1) * 4 * S) as usize],
                i,
            )
        })
        .collect();
    ops.push(read_op(&dev, 0, 16 * S, 4));
    let done = run(&mut *q, ops);
    assert!(done.iter().all(|c| c.result.is_ok()));
    assert_eq!(
        *done[4].buffer, *data,
        "cached writes must be visible to reads at once"
    );
    assert!(
        dev.durable_bytes(0..16 * S).iter().all(|&b| b == 0),
        "unflushed writes must not be durable yet"
    );
    flush(&mut *q, &dev).unwrap();
    assert_eq!(
        dev.durable_bytes(0..16 * S),
        data,
        "a flush must make every earlier write durable"
    );
    dev.power_cycle();
    assert_eq!(read(&mut *q, &dev, 0, 16 * S).unwrap(), data);
}

/// Writes `old` to 16 sectors and flushes, then `new` (some sectors alone,
/// some in one 8-sector write) without a flush, then power cycles; returns,
/// per sector, whether the new content survived (panicking if a sector holds
/// anything but the old or the new content).
fn unflushed_outcome(seed: u64) -> Vec<bool> {
    const SECTORS: u64 = 16;
    let dev = device();
    let mut q = open_queue(&dev);
    let mut rng = StdRng::seed_from_u64(1000 + seed);
    let base = 32 * S;
    let old = random_bytes(&mut rng, SECTORS * S);
    let new = random_bytes(&mut rng, SECTORS * S);
    dev.set_faults(Faults {
        volatile_cache: true,
        seed,
        ..Faults::default()
    });
    write(&mut *q, &dev, base, &old).unwrap();
    flush(&mut *q, &dev).unwrap();
    // Sectors 0..8 one by one, 8..16 in one write.
    let mut ops: Vec<IoOp> = (0..8)
        .map(|i| {
            write_op(
                &dev,
                base + i * S,
                &new[(i * S) as usize..((i + 1) * S) as usize],
                i,
            )
        })
        .collect();
    ops.push(write_op(&dev, base + 8 * S, &new[8 * S as usize..], 8));
    assert!(run(&mut *q, ops).iter().all(|c| c.result.is_ok()));
    assert_eq!(read(&mut *q, &dev, base, SECTORS * S).unwrap(), new);
    dev.power_cycle();
    let got = read(&mut *q, &dev, base, SECTORS * S).unwrap();
    assert_eq!(dev.durable_bytes(range(base, SECTORS * S)), got);
    let chunks = |v: &[u8]| v.chunks(S as usize).map(<[u8]>::to_vec).collect::<Vec<_>>();
    let (got, old, new) = (chunks(&got), chunks(&old), chunks(&new));
    (0..SECTORS as usize)
        .map(|i| {
            assert!(
                got[i] == old[i] || got[i] == new[i],
                "seed {seed}: sector {i} after the power cycle is neither its old nor its new content"
            );
            got[i] == new[i]
        })
        .collect()
}

#[test]
fn unflushed_writes_lose_or_keep_whole_sectors_by_seed() {
    let mut outcomes = Vec::new();
    for seed in [1u64, 2, 3, 4] {
        let kept = unflushed_outcome(seed);
        assert_eq!(
            kept,
            unflushed_outcome(seed),
            "seed {seed}: the outcome must be deterministic"
        );
        let n = kept.iter().filter(|&&k| k).count();
        assert!(
            n > 0 && n < kept.len(),
            "seed {seed}: expected some unflushed sectors lost and some kept, kept {n} of {}",
            kept.len()
        );
        outcomes.push(kept);
    }
    outcomes.dedup();
    assert!(
        outcomes.len() > 1,
        "different seeds should lose different sectors"
    );
}

#[test]
fn corrupt_flips_bytes_that_reads_see() {
    let dev = device();
    let mut q = open_queue(&dev);
    let mut rng = StdRng::seed_from_u64(0xC0);
    let base = 100 * S;
    let data = random_bytes(&mut rng, 4 * S);
    write(&mut *q, &dev, base, &data).unwrap();
    let bad = 100..300usize;
    dev.corrupt(base + bad.start as u64..base + bad.end as u64);
    let check = |got: &[u8], when: &str| {
        for (i, (&g, &d)) in got.iter().zip(&data).enumerate() {
            if bad.contains(&i) {
                assert_ne!(g, d, "{when}: byte {i} in the corrupted range is unchanged");
            } else {
                assert_eq!(g, d, "{when}: byte {i} outside the corrupted range changed");
            }
        }
    };
    check(&read(&mut *q, &dev, base, 4 * S).unwrap(), "read");
    check(&dev.durable_bytes(range(base, 4 * S)), "durable bytes");
    // It is on the media: a power cycle keeps it.
    dev.power_cycle();
    check(
        &read(&mut *q, &dev, base, 4 * S).unwrap(),
        "after a power cycle",
    );
    // Rewriting repairs it.
    write(&mut *q, &dev, base, &data).unwrap();
    assert_eq!(read(&mut *q, &dev, base, 4 * S).unwrap(), data);
}
