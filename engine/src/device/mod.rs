//! The device interface: one asynchronous shape for every backend.
//!
//! It is cut to SPDK's model, because that is the backend the product is for:
//! - buffers come from the device ([`Device::alloc_buffer`]), aligned to its
//!   minimum I/O size, because SPDK needs DMA-able memory from its allocator
//!   and `O_DIRECT` needs aligned memory;
//! - I/O is submitted on a [`Queue`] that belongs to one core (an SPDK queue
//!   pair, one io_uring ring), with a caller's token, and completes later;
//!   the owner polls its queue for [`Completion`]s in its reactor loop. A
//!   queue is `Send` (built on one thread, moved to its core) but not shared;
//! - a submitted buffer is owned by the queue until its completion hands it
//!   back, so no backend can see memory freed under an in-flight I/O;
//! - nothing blocks: a full queue refuses the submission and returns the op.
//!
//! Backends: `memory` (RAM with fault injection, for tests), `uring`
//! (io_uring on a file, partition or block device with `O_DIRECT`), and the
//! SPDK backend behind feature `spdk` (its own issue). All pass
//! `tests/device_conformance.rs`.

pub mod memory;
#[cfg(feature = "spdk")]
pub mod spdk;
pub mod uring;

use std::fmt;

pub use crate::sys::dma::IoBuffer;

/// What a device is and what it accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// How the config names it (a path, or an SPDK transport id).
    pub name: String,
    pub size_bytes: u64,
    /// Offsets, lengths and buffer addresses must be multiples of this.
    pub min_io_bytes: u32,
    /// The largest single I/O.
    pub max_io_bytes: u32,
    /// Submissions a queue accepts before refusing with [`SubmitError::Full`].
    pub queue_depth: u32,
}

/// The kind of an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoKind {
    Read,
    Write,
    /// Make every write completed before it durable (a volatile cache
    /// flush). Offset and buffer are ignored.
    Flush,
}

impl fmt::Display for IoKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoKind::Read => "read",
            IoKind::Write => "write",
            IoKind::Flush => "flush",
        })
    }
}

/// One operation: read into or write from `buffer` (its whole length) at
/// `offset`; `token` comes back in the completion.
#[derive(Debug)]
pub struct IoOp {
    pub kind: IoKind,
    pub offset: u64,
    pub buffer: IoBuffer,
    pub token: u64,
}

impl IoOp {
    /// The completion of this op failing with `error`, buffer handed back:
    /// for ops refused before they reached a device.
    pub fn into_failed(self, error: DeviceError) -> Completion {
        Completion {
            token: self.token,
            kind: self.kind,
            offset: self.offset,
            buffer: self.buffer,
            result: Err(error),
        }
    }
}

/// A finished operation, with its buffer handed back.
#[derive(Debug)]
pub struct Completion {
    pub token: u64,
    pub kind: IoKind,
    pub offset: u64,
    pub buffer: IoBuffer,
    pub result: Result<(), DeviceError>,
}

/// Why a device operation failed: enough to find the bad sector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceError {
    pub device: String,
    pub op: IoKind,
    pub offset: u64,
    pub len: u64,
    pub kind: DeviceErrorKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceErrorKind {
    /// The operating system or the drive reported an error (errno or NVMe
    /// status, as text).
    Io(String),
    /// Offset + length past the end of the device.
    OutOfRange { size_bytes: u64 },
    /// Offset, length or buffer not a multiple of the minimum I/O size.
    Misaligned { min_io_bytes: u32 },
    /// Longer than the device's maximum I/O.
    TooLarge { max_io_bytes: u32 },
    /// Fewer bytes transferred than asked.
    Short { done: u64 },
    /// Fault injection: the simulated machine has crashed; nothing more
    /// reaches the device.
    Crashed,
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} bytes at offset {} on {} failed: ",
            self.op, self.len, self.offset, self.device
        )?;
        match &self.kind {
            DeviceErrorKind::Io(e) => write!(f, "{e}"),
            DeviceErrorKind::OutOfRange { size_bytes } => {
                write!(f, "beyond the device's {size_bytes} bytes")
            }
            DeviceErrorKind::Misaligned { min_io_bytes } => {
                write!(f, "offset, length and buffer must be multiples of {min_io_bytes} bytes, and the length non-zero")
            }
            DeviceErrorKind::TooLarge { max_io_bytes } => {
                write!(f, "larger than the device's {max_io_bytes}-byte maximum")
            }
            DeviceErrorKind::Short { done } => write!(f, "only {done} bytes transferred"),
            DeviceErrorKind::Crashed => write!(f, "the device is crashed (fault injection)"),
        }
    }
}

impl std::error::Error for DeviceError {}

/// A device that cannot be opened, or a queue or buffer it cannot provide.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetupError {
    pub device: String,
    pub message: String,
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "device {}: {}", self.device, self.message)
    }
}

impl std::error::Error for SetupError {}

/// A refused submission; the op comes back so its buffer is not lost.
#[derive(Debug)]
pub enum SubmitError {
    /// The queue holds `queue_depth` operations: poll, then resubmit.
    Full(IoOp),
    /// The op can never succeed (range, alignment, size).
    Invalid(IoOp, Box<DeviceError>),
}

/// A device: shared by every core; each core opens its own [`Queue`].
pub trait Device: Send + Sync {
    fn info(&self) -> &DeviceInfo;

    /// A zeroed buffer of `len` bytes (rounded up to the minimum I/O size),
    /// aligned for this device's I/O.
    fn alloc_buffer(&self, len: usize) -> Result<IoBuffer, SetupError>;

    /// A new queue for the calling core.
    fn open_queue(&self) -> Result<Box<dyn Queue>, SetupError>;
}

/// One core's submission and completion queue on one device.
///
/// Dropping a queue first waits for its in-flight operations: they take
/// effect (or fail) as if polled, and their buffers are then freed.
pub trait Queue: Send {
    /// Queues `op`; it completes in a later [`Queue::poll`].
    fn submit(&mut self, op: IoOp) -> Result<(), SubmitError>;

    /// Moves up to `max` finished operations into `out`; returns how many.
    /// Never blocks.
    fn poll(&mut self, out: &mut Vec<Completion>, max: usize) -> usize;

    /// Operations submitted and not yet returned by `poll`.
    fn in_flight(&self) -> usize;
}

/// A heap buffer for `info`'s device: `len` rounded up to the minimum I/O
/// size, aligned to at least 4 KiB (what `O_DIRECT` wants everywhere).
pub fn heap_buffer(info: &DeviceInfo, len: usize) -> Result<IoBuffer, SetupError> {
    let unit = info.min_io_bytes as usize;
    let rounded = len.max(1).div_ceil(unit) * unit;
    IoBuffer::zeroed(rounded, unit.max(4096)).ok_or_else(|| SetupError {
        device: info.name.clone(),
        message: format!("cannot allocate a {rounded}-byte I/O buffer"),
    })
}

/// Checks an op against a device's limits; shared by the backends so that
/// they refuse exactly the same things.
pub fn check_op(info: &DeviceInfo, op: &IoOp) -> Result<(), DeviceError> {
    let len = op.buffer.len() as u64;
    let error = |kind| DeviceError {
        device: info.name.clone(),
        op: op.kind,
        offset: op.offset,
        len,
        kind,
    };
    if op.kind == IoKind::Flush {
        return Ok(());
    }
    let unit = u64::from(info.min_io_bytes);
    if !op.offset.is_multiple_of(unit)
        || !len.is_multiple_of(unit)
        || len == 0
        || !op.buffer.address().is_multiple_of(unit)
    {
        return Err(error(DeviceErrorKind::Misaligned {
            min_io_bytes: info.min_io_bytes,
        }));
    }
    if len > u64::from(info.max_io_bytes) {
        return Err(error(DeviceErrorKind::TooLarge {
            max_io_bytes: info.max_io_bytes,
        }));
    }
    if op
        .offset
        .checked_add(len)
        .is_none_or(|end| end > info.size_bytes)
    {
        return Err(error(DeviceErrorKind::OutOfRange {
            size_bytes: info.size_bytes,
        }));
    }
    Ok(())
}

/// Runs ops to completion on `queue`, polling until every one is back.
/// For start-up, tests and tools — never the data path, which polls in its
/// reactor loop. The queue must be idle (nothing in flight), since every
/// completion polled is counted as one of `ops`. Gives up after `timeout`.
pub fn run_to_completion(
    queue: &mut dyn Queue,
    ops: Vec<IoOp>,
    timeout: std::time::Duration,
) -> Result<Vec<Completion>, String> {
    if queue.in_flight() != 0 {
        return Err(format!(
            "run_to_completion needs an idle queue; {} operations in flight",
            queue.in_flight()
        ));
    }
    let deadline = std::time::Instant::now() + timeout;
    let total = ops.len();
    let mut pending: std::collections::VecDeque<IoOp> = ops.into();
    let mut done = Vec::with_capacity(total);
    while done.len() < total {
        while let Some(op) = pending.pop_front() {
            match queue.submit(op) {
                Ok(()) => {}
                Err(SubmitError::Full(op)) => {
                    pending.push_front(op);
                    break;
                }
                Err(SubmitError::Invalid(op, e)) => done.push(op.into_failed(*e)),
            }
        }
        if queue.poll(&mut done, usize::MAX) == 0 {
            if std::time::Instant::now() > deadline {
                return Err(format!(
                    "{} of {total} operations still pending after {timeout:?}",
                    total - done.len()
                ));
            }
            std::thread::yield_now();
        }
    }
    Ok(done)
}
