//! An io_uring queue that owns the buffers of its in-flight operations.
//!
//! The kernel reads and writes a buffer between submission and completion,
//! so the buffer must stay alive and unmoved for that long. Each submitted
//! [`IoOp`] (buffer included) is parked in a slot whose index is the
//! submission's user data, and is handed back only when the completion with
//! that user data is reaped. Dropping the queue first waits for every
//! in-flight operation; buffers that the kernel still holds after a time
//! limit are leaked rather than freed under it.
//!
//! Submissions are batched: `submit` only fills the submission ring, and the
//! next `poll` enters the kernel once for all of them.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};

use crate::device::{
    check_op, Completion, DeviceError, DeviceErrorKind, DeviceInfo, IoKind, IoOp, SubmitError,
};

const DRAIN_LIMIT: Duration = Duration::from_secs(30);

pub struct UringQueue {
    ring: IoUring,
    file: Arc<File>,
    info: Arc<DeviceInfo>,
    slots: Vec<Option<IoOp>>,
    free_slots: Vec<u32>,
    unsubmitted: usize,
    reaped: Vec<(u64, i32)>,
}

impl UringQueue {
    pub fn new(file: Arc<File>, info: Arc<DeviceInfo>) -> std::io::Result<UringQueue> {
        let depth = info.queue_depth.max(1);
        let ring = new_ring(depth.next_power_of_two())?;
        Ok(UringQueue {
            ring,
            file,
            info,
            slots: (0..depth).map(|_| None).collect(),
            free_slots: (0..depth).rev().collect(),
            unsubmitted: 0,
            reaped: Vec::with_capacity(depth as usize),
        })
    }

    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free_slots.len()
    }

    pub fn submit(&mut self, mut op: IoOp) -> Result<(), SubmitError> {
        if let Err(e) = check_op(&self.info, &op) {
            return Err(SubmitError::Invalid(op, Box::new(e)));
        }
        let Some(slot) = self.free_slots.pop() else {
            return Err(SubmitError::Full(op));
        };
        let fd = types::Fd(self.file.as_raw_fd());
        let len = op.buffer.len() as u32;
        let entry = match op.kind {
            IoKind::Read => opcode::Read::new(fd, op.buffer.as_mut_ptr(), len)
                .offset(op.offset)
                .build(),
            IoKind::Write => opcode::Write::new(fd, op.buffer.as_mut_ptr(), len)
                .offset(op.offset)
                .build(),
            IoKind::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
        }
        .user_data(u64::from(slot));
        // SAFETY: the entry points into `op.buffer`'s heap memory, which does
        // not move when the `IoOp` moves into `slots[slot]` below, and stays
        // there until the completion carrying `slot` is reaped in `poll` (or
        // the queue's drop waits for it). The file descriptor is kept open by
        // `self.file`. The ring has at least `depth` entries and at most
        // `depth` operations are in flight, so the push cannot overflow.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        pushed.expect("submission ring has room for every free slot");
        self.slots[slot as usize] = Some(op);
        self.unsubmitted += 1;
        Ok(())
    }

    pub fn poll(&mut self, out: &mut Vec<Completion>, max: usize) -> usize {
        // With cooperative task running the kernel does not interrupt this
        // (busy-polling) thread to post completions: it raises the TASKRUN
        // flag and the completions are posted by our next enter, which
        // `submit` makes with GETEVENTS when the flag is up.
        if self.unsubmitted > 0 || self.ring.submission().taskrun() {
            // On a transient failure (EAGAIN, EBUSY) the entries stay in the
            // ring and the next poll tries again.
            if let Ok(n) = self.ring.submit() {
                self.unsubmitted = self.unsubmitted.saturating_sub(n);
            }
        }
        self.reap(out, max)
    }

    fn reap(&mut self, out: &mut Vec<Completion>, max: usize) -> usize {
        self.reaped.clear();
        for cqe in self.ring.completion().take(max) {
            self.reaped.push((cqe.user_data(), cqe.result()));
        }
        for i in 0..self.reaped.len() {
            let (slot, res) = self.reaped[i];
            let op = self.slots[slot as usize]
                .take()
                .expect("completion for an empty slot");
            self.free_slots.push(slot as u32);
            let len = op.buffer.len() as u64;
            let error = |kind| DeviceError {
                device: self.info.name.clone(),
                op: op.kind,
                offset: op.offset,
                len,
                kind,
            };
            let result = if res < 0 {
                Err(error(DeviceErrorKind::Io(
                    std::io::Error::from_raw_os_error(-res).to_string(),
                )))
            } else if op.kind != IoKind::Flush && res as u64 != len {
                Err(error(DeviceErrorKind::Short { done: res as u64 }))
            } else {
                Ok(())
            };
            out.push(Completion {
                token: op.token,
                kind: op.kind,
                offset: op.offset,
                buffer: op.buffer,
                result,
            });
        }
        self.reaped.len()
    }
}

/// A ring with cooperative task running and the TASKRUN flag (Linux 5.19+):
/// a completion no longer sends an inter-processor interrupt to a thread
/// that is busy polling (on a VM each one is an exit and a reschedule), it
/// sets a flag that `poll` checks. Older kernels refuse the flags with
/// EINVAL; they get a plain ring.
fn new_ring(entries: u32) -> std::io::Result<IoUring> {
    match IoUring::builder()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .build(entries)
    {
        Ok(ring) => Ok(ring),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => IoUring::new(entries),
        Err(e) => Err(e),
    }
}

impl Drop for UringQueue {
    fn drop(&mut self) {
        let started = Instant::now();
        let mut sink = Vec::new();
        while self.in_flight() > 0 && started.elapsed() < DRAIN_LIMIT {
            let _ = self.ring.submit_and_wait(1);
            self.unsubmitted = 0;
            sink.clear();
            self.reap(&mut sink, usize::MAX);
        }
        for op in self.slots.iter_mut().filter_map(Option::take) {
            // The kernel may still write into it: never free it.
            std::mem::forget(op);
        }
    }
}
