//! The memory backend: a device in RAM, with injectable faults, for tests.
//!
//! Operations queue on submit and execute, in order, at the next `poll`, so
//! callers see the same asynchronous shape as real devices. Faults:
//! - `crash_after_ops = Some(n)`: the first `n` operations execute; from the
//!   next one on, the device is "crashed": every operation fails with
//!   [`DeviceErrorKind::Crashed`] and nothing reaches the media. With
//!   `torn_crash`, the write that hits the crash first lands its leading half
//!   (whole sectors), as a write interrupted by a power cut can.
//! - `error_ranges`: operations of a kind overlapping a byte range fail with
//!   an I/O error and change nothing (a flush fault range hits every flush).
//! - `volatile_cache`: writes reach a volatile cache first; a flush makes
//!   them durable. [`MemoryDevice::power_cycle`] then loses an arbitrary
//!   (seeded) subset of the sectors written since the last flush — what a
//!   drive with a volatile write cache does on a power cut.
//!
//! [`MemoryDevice::power_cycle`] "restarts the machine": the crash ends and
//! the device holds what was durable.

use std::collections::{BTreeSet, VecDeque};
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{
    check_op, heap_buffer, Completion, Device, DeviceError, DeviceErrorKind, DeviceInfo, IoBuffer,
    IoKind, IoOp, Queue, SetupError, SubmitError,
};

/// Faults to inject; the default injects none.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    pub crash_after_ops: Option<u64>,
    pub torn_crash: bool,
    pub error_ranges: Vec<(IoKind, Range<u64>)>,
    pub volatile_cache: bool,
    /// Chooses which unflushed sectors survive a power cycle.
    pub seed: u64,
}

/// Operation counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

struct State {
    /// What reads see.
    current: Vec<u8>,
    /// What survives a power cycle.
    durable: Vec<u8>,
    /// Sectors written since the last flush (volatile cache only).
    dirty: BTreeSet<u64>,
    ops: u64,
    crashed: bool,
    faults: Faults,
    stats: MemoryStats,
}

/// A RAM device. Cloning gives another handle to the same device.
#[derive(Clone)]
pub struct MemoryDevice {
    info: Arc<DeviceInfo>,
    state: Arc<Mutex<State>>,
}

impl MemoryDevice {
    /// A zeroed device of `size_bytes` (rounded down to `min_io_bytes`).
    pub fn new(name: &str, size_bytes: u64, min_io_bytes: u32, queue_depth: u32) -> MemoryDevice {
        assert!(
            min_io_bytes.is_power_of_two() && min_io_bytes >= 512,
            "min I/O must be a power of two >= 512"
        );
        let size = (size_bytes - size_bytes % u64::from(min_io_bytes)) as usize;
        let info = DeviceInfo {
            name: name.to_string(),
            size_bytes: size as u64,
            min_io_bytes,
            max_io_bytes: 8 << 20,
            queue_depth: queue_depth.max(1),
        };
        let state = State {
            current: vec![0; size],
            durable: vec![0; size],
            dirty: BTreeSet::new(),
            ops: 0,
            crashed: false,
            faults: Faults::default(),
            stats: MemoryStats::default(),
        };
        MemoryDevice {
            info: Arc::new(info),
            state: Arc::new(Mutex::new(state)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not hide the device from the others.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the fault plan; the operation count restarts at zero.
    pub fn set_faults(&self, faults: Faults) {
        let mut state = self.lock();
        state.faults = faults;
        state.ops = 0;
    }

    /// Crashes the device now: later operations fail, nothing more lands.
    pub fn crash_now(&self) {
        self.lock().crashed = true;
    }

    pub fn is_crashed(&self) -> bool {
        self.lock().crashed
    }

    /// Operations executed since the fault plan was set.
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    pub fn stats(&self) -> MemoryStats {
        self.lock().stats
    }

    /// Restarts after a crash or a power cut: unflushed cached sectors are
    /// lost or kept by the seed, the crash ends, and faults are cleared.
    pub fn power_cycle(&self) {
        let mut state = self.lock();
        let sector = self.info.min_io_bytes as usize;
        let mut rng = state.faults.seed ^ 0x9E37_79B9_7F4A_7C15;
        let dirty: Vec<u64> = std::mem::take(&mut state.dirty).into_iter().collect();
        for offset in dirty {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            if rng >> 63 == 1 {
                let at = offset as usize;
                let (current, durable) =
                    (&state.current[at..at + sector].to_vec(), &mut state.durable);
                durable[at..at + sector].copy_from_slice(current);
            }
        }
        state.current = state.durable.clone();
        state.crashed = false;
        state.faults = Faults::default();
        state.ops = 0;
    }

    /// A copy of the durable bytes in `range`, for inspection by tests.
    pub fn durable_bytes(&self, range: Range<u64>) -> Vec<u8> {
        self.lock().durable[range.start as usize..range.end as usize].to_vec()
    }

    /// Flips bits of the bytes in `range`, on the media (current and
    /// durable), as a failing drive might: for checksum tests.
    pub fn corrupt(&self, range: Range<u64>) {
        let mut state = self.lock();
        for i in range.start as usize..range.end as usize {
            state.current[i] ^= 0xA5;
            state.durable[i] ^= 0xA5;
        }
    }

    fn execute(&self, mut op: IoOp) -> Completion {
        let mut state = self.lock();
        let len = op.buffer.len() as u64;
        let error = |kind| DeviceError {
            device: self.info.name.clone(),
            op: op.kind,
            offset: op.offset,
            len,
            kind,
        };
        let mut result = Ok(());
        let crashing =
            !state.crashed && state.faults.crash_after_ops.is_some_and(|n| state.ops >= n);
        if state.crashed || crashing {
            if crashing && state.faults.torn_crash && op.kind == IoKind::Write {
                let sector = u64::from(self.info.min_io_bytes);
                let kept = (len / sector / 2 * sector) as usize;
                apply_write(
                    &mut state,
                    op.offset as usize,
                    &op.buffer[..kept],
                    self.info.min_io_bytes,
                );
            }
            state.crashed = true;
            result = Err(error(DeviceErrorKind::Crashed));
        } else if state.faults.error_ranges.iter().any(|(kind, range)| {
            // A flush has no range of its own: any flush fault range hits it.
            *kind == op.kind
                && (op.kind == IoKind::Flush
                    || (op.offset < range.end && range.start < op.offset + len))
        }) {
            state.ops += 1;
            result = Err(error(DeviceErrorKind::Io("injected I/O error".into())));
        } else {
            state.ops += 1;
            let at = op.offset as usize;
            match op.kind {
                IoKind::Read => {
                    op.buffer
                        .copy_from_slice(&state.current[at..at + len as usize]);
                    state.stats.reads += 1;
                    state.stats.bytes_read += len;
                }
                IoKind::Write => {
                    apply_write(&mut state, at, &op.buffer, self.info.min_io_bytes);
                    state.stats.writes += 1;
                    state.stats.bytes_written += len;
                }
                IoKind::Flush => {
                    let sector = self.info.min_io_bytes as usize;
                    let dirty: Vec<u64> = std::mem::take(&mut state.dirty).into_iter().collect();
                    for offset in dirty {
                        let at = offset as usize;
                        let bytes = state.current[at..at + sector].to_vec();
                        state.durable[at..at + sector].copy_from_slice(&bytes);
                    }
                    state.stats.flushes += 1;
                }
            }
        }
        Completion {
            token: op.token,
            kind: op.kind,
            offset: op.offset,
            buffer: op.buffer,
            result,
        }
    }
}

fn apply_write(state: &mut State, at: usize, bytes: &[u8], sector: u32) {
    state.current[at..at + bytes.len()].copy_from_slice(bytes);
    if state.faults.volatile_cache {
        let sector = u64::from(sector);
        let first = at as u64 / sector;
        let count = bytes.len() as u64 / sector;
        state
            .dirty
            .extend((first..first + count).map(|s| s * sector));
    } else {
        state.durable[at..at + bytes.len()].copy_from_slice(bytes);
    }
}

impl Device for MemoryDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn alloc_buffer(&self, len: usize) -> Result<IoBuffer, SetupError> {
        heap_buffer(&self.info, len)
    }

    fn open_queue(&self) -> Result<Box<dyn Queue>, SetupError> {
        Ok(Box::new(MemoryQueue {
            device: self.clone(),
            pending: VecDeque::new(),
        }))
    }
}

struct MemoryQueue {
    device: MemoryDevice,
    pending: VecDeque<IoOp>,
}

impl Queue for MemoryQueue {
    fn submit(&mut self, op: IoOp) -> Result<(), SubmitError> {
        if let Err(e) = check_op(&self.device.info, &op) {
            return Err(SubmitError::Invalid(op, Box::new(e)));
        }
        if self.pending.len() >= self.device.info.queue_depth as usize {
            return Err(SubmitError::Full(op));
        }
        self.pending.push_back(op);
        Ok(())
    }

    fn poll(&mut self, out: &mut Vec<Completion>, max: usize) -> usize {
        let n = self.pending.len().min(max);
        for _ in 0..n {
            let op = self.pending.pop_front().expect("counted above");
            out.push(self.device.execute(op));
        }
        n
    }

    fn in_flight(&self) -> usize {
        self.pending.len()
    }
}

impl Drop for MemoryQueue {
    /// Like a real queue's drop: the pending operations still happen.
    fn drop(&mut self) {
        while let Some(op) = self.pending.pop_front() {
            drop(self.device.execute(op));
        }
    }
}
