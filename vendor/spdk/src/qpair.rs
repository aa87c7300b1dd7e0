//! One polled I/O queue pair, owned by one core.
//!
//! A command carries a caller's tag and an owned buffer. The buffer is kept
//! in a slot of the queue pair until the command's completion callback has
//! run and [`QueuePair::poll`] hands it back, so the memory a device reads or
//! writes cannot be freed or touched meanwhile. Slots, their callback
//! contexts and the list the callback appends to are allocated once, when
//! the queue pair is opened: the data path allocates nothing.

use std::ffi::c_void;
use std::sync::Arc;
use std::time::{Duration, Instant};

use spdk_sys as sys;

use crate::nvme::Namespace;
use crate::Error;

const OPC_FLUSH: u8 = 0x00;
const OPC_WRITE: u8 = 0x01;
const OPC_READ: u8 = 0x02;

/// How to size a queue pair.
#[derive(Clone, Debug)]
pub struct QueuePairOptions {
    /// Commands in flight at most; one more is refused with [`Refused::Full`].
    pub depth: u32,
    /// The largest command the caller will submit. SPDK splits commands
    /// larger than the controller's transfer size into children, which need
    /// request objects of their own; the queue pair reserves enough.
    pub max_io_bytes: u32,
    /// How long dropping the queue pair waits for commands in flight.
    pub drain_timeout: Duration,
}

impl Default for QueuePairOptions {
    fn default() -> Self {
        QueuePairOptions {
            depth: 128,
            max_io_bytes: 8 << 20,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// What to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Read,
    Write,
    /// Make completed writes durable (volatile write cache flush).
    Flush,
}

/// An NVMe completion status other than success.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NvmeStatus {
    /// Status code type (0 generic, 1 command specific, 2 media, 3 path).
    pub sct: u8,
    /// Status code.
    pub sc: u8,
    /// SPDK's description.
    pub text: String,
}

impl std::fmt::Display for NvmeStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "NVMe status {} (sct {:#x}, sc {:#x})",
            self.text, self.sct, self.sc
        )
    }
}

/// A finished command, with its buffer handed back.
#[derive(Debug)]
pub struct Completed<B> {
    pub tag: u64,
    pub command: Command,
    pub lba: u64,
    pub buffer: B,
    pub result: Result<(), NvmeStatus>,
}

/// A command the queue pair did not take; the buffer comes back.
#[derive(Debug)]
pub enum Refused<B> {
    /// `depth` commands are in flight (or SPDK has no request object
    /// free): poll, then submit again.
    Full(B),
    /// The command can never succeed here (range, length, memory not from
    /// SPDK's DMA allocator).
    Invalid(B, String),
    /// SPDK refused it (the queue pair failed, for one).
    Failed(B, String),
}

struct Slot<B> {
    buffer: Option<B>,
    tag: u64,
    command: Command,
    lba: u64,
}

/// Finished slots and their raw status, appended by the callback.
type DoneList = Vec<(u32, u16)>;

/// What SPDK hands back to [`on_complete`]: where to report, and which slot.
struct CallbackContext {
    done: *mut DoneList,
    slot: u32,
}

/// One I/O queue pair on one namespace's controller.
pub struct QueuePair<B> {
    namespace: Arc<Namespace>,
    qpair: *mut sys::spdk_nvme_qpair,
    slots: Box<[Slot<B>]>,
    free_slots: Vec<u32>,
    /// Never moved or changed after `open`: SPDK holds pointers into it.
    contexts: Box<[CallbackContext]>,
    /// From `Box::into_raw`, freed in `drop`; written only by `on_complete`
    /// (inside SPDK calls made with `&mut self`) and read by `&mut self`.
    done: *mut DoneList,
    in_flight: usize,
    drain_timeout: Duration,
}

// SAFETY: a queue pair is used by one thread at a time (`&mut self` for every
// SPDK call on it); SPDK allows moving a queue pair between threads as long
// as calls on it are not concurrent. The buffers it holds are `Send`.
unsafe impl<B: Send> Send for QueuePair<B> {}

impl<B> QueuePair<B>
where
    B: std::ops::DerefMut<Target = [u8]> + Send + 'static,
{
    pub(crate) fn open(
        namespace: Arc<Namespace>,
        options: &QueuePairOptions,
    ) -> Result<QueuePair<B>, Error> {
        let depth = options.depth.max(1);
        let controller = namespace.controller().raw();
        let mut opts = sys::spdk_nvme_io_qpair_opts::default();
        let opts_size = std::mem::size_of::<sys::spdk_nvme_io_qpair_opts>();
        // SAFETY: the controller is attached (the namespace holds it) and
        // `opts` is a writable struct of `opts_size` bytes.
        unsafe { sys::spdk_nvme_ctrlr_get_default_io_qpair_opts(controller, &mut opts, opts_size) };
        let transfer = namespace.info().max_transfer_bytes.max(4096);
        let children = options.max_io_bytes.div_ceil(transfer) + 1;
        opts.io_queue_requests = opts.io_queue_requests.max(depth.saturating_mul(children));
        // SAFETY: as above; `opts` is initialised. NULL means failure.
        let qpair = unsafe { sys::spdk_nvme_ctrlr_alloc_io_qpair(controller, &opts, opts_size) };
        if qpair.is_null() {
            return Err(Error::new(format!(
                "{}: cannot allocate an I/O queue pair (the controller's queues may all be in use)",
                namespace.controller().transport_id()
            )));
        }
        let done = Box::into_raw(Box::new(DoneList::with_capacity(depth as usize)));
        let slots = (0..depth)
            .map(|_| Slot {
                buffer: None,
                tag: 0,
                command: Command::Flush,
                lba: 0,
            })
            .collect();
        let contexts = (0..depth)
            .map(|slot| CallbackContext { done, slot })
            .collect();
        Ok(QueuePair {
            namespace,
            qpair,
            slots,
            free_slots: (0..depth).rev().collect(),
            contexts,
            done,
            in_flight: 0,
            drain_timeout: options.drain_timeout,
        })
    }

    pub fn namespace(&self) -> &Arc<Namespace> {
        &self.namespace
    }

    /// Commands submitted and not yet handed back by `poll`.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Submits `command` at `lba` for the whole of `buffer` (a multiple of
    /// the sector size; ignored for a flush). It completes in a later
    /// [`QueuePair::poll`] with `tag`.
    pub fn submit(
        &mut self,
        command: Command,
        lba: u64,
        buffer: B,
        tag: u64,
    ) -> Result<(), Refused<B>> {
        let Some(slot_index) = self.free_slots.pop() else {
            return Err(Refused::Full(buffer));
        };
        // The buffer moves into its slot first and everything about its
        // bytes (address, length, being DMA memory) is taken from there, once:
        // the slot does not move (a boxed slice) and the owner is neither
        // touched nor dropped until the completion. Being SPDK DMA memory
        // also means the bytes are not inline in the owner (which lives in
        // this slot, on the heap, not in SPDK's memory).
        let slot = &mut self.slots[slot_index as usize];
        debug_assert!(slot.buffer.is_none(), "slot {slot_index} in use");
        *slot = Slot {
            buffer: Some(buffer),
            tag,
            command,
            lba,
        };
        let bytes: &mut [u8] = slot.buffer.as_mut().expect("just stored");
        let payload = bytes.as_mut_ptr().cast::<c_void>();
        let problem = match command {
            Command::Flush => Ok(0),
            _ => check_io(self.namespace.info(), lba, bytes),
        };
        let lba_count = match problem {
            Ok(n) => n,
            Err(why) => {
                let buffer = slot.buffer.take().expect("just stored");
                self.free_slots.push(slot_index);
                return Err(Refused::Invalid(buffer, why));
            }
        };
        let context = (&self.contexts[slot_index as usize] as *const CallbackContext)
            .cast_mut()
            .cast::<c_void>();
        let ns = self.namespace.raw();
        // SAFETY: `ns` and `qpair` are live (the namespace `Arc` keeps the
        // controller attached; `qpair` is freed only in `drop`), and this
        // thread has exclusive use of the queue pair (`&mut self`).
        // `payload` points to `lba_count` sectors of DMA memory owned by the
        // slot until `on_complete` reports the slot done. `context` points
        // into `contexts`, which outlives every command (drained in `drop`).
        let rc = unsafe {
            match command {
                Command::Read => sys::spdk_nvme_ns_cmd_read(
                    ns,
                    self.qpair,
                    payload,
                    lba,
                    lba_count,
                    Some(on_complete),
                    context,
                    0,
                ),
                Command::Write => sys::spdk_nvme_ns_cmd_write(
                    ns,
                    self.qpair,
                    payload,
                    lba,
                    lba_count,
                    Some(on_complete),
                    context,
                    0,
                ),
                Command::Flush => {
                    sys::spdk_nvme_ns_cmd_flush(ns, self.qpair, Some(on_complete), context)
                }
            }
        };
        if rc == 0 || self.reported(slot_index) {
            // Accepted, or failed and already completed through the
            // callback: either way `poll` hands it back.
            self.in_flight += 1;
            return Ok(());
        }
        let buffer = self.slots[slot_index as usize]
            .buffer
            .take()
            .expect("the slot holds the buffer just put in");
        self.free_slots.push(slot_index);
        if rc == -libc::ENOMEM {
            Err(Refused::Full(buffer))
        } else {
            Err(Refused::Failed(
                buffer,
                format!("SPDK refused the {command:?}: {}", crate::errno_text(rc)),
            ))
        }
    }

    fn reported(&self, slot: u32) -> bool {
        // SAFETY: `done` is live; no callback runs now (we are not inside an
        // SPDK call), so this shared read does not race a write.
        unsafe { (*self.done).iter().any(|&(s, _)| s == slot) }
    }

    /// Processes up to `max` completions (0: all that are ready), handing
    /// each finished command to `sink`. Returns how many were handed over,
    /// or an error if the queue pair has failed (its commands then complete
    /// with an abort status).
    pub fn poll(&mut self, max: u32, sink: &mut dyn FnMut(Completed<B>)) -> Result<usize, Error> {
        if self.in_flight == 0 {
            return Ok(0);
        }
        // SAFETY: exclusive use of a live queue pair; the callbacks this runs
        // write to `done` through their context, and nothing else holds a
        // reference to `done` during the call.
        let rc = unsafe { sys::spdk_nvme_qpair_process_completions(self.qpair, max) };
        let handed = self.drain(sink);
        if rc < 0 {
            return Err(Error::new(format!(
                "{}: the I/O queue pair failed: {}",
                self.namespace.controller().transport_id(),
                crate::errno_text(rc)
            )));
        }
        Ok(handed)
    }

    fn drain(&mut self, sink: &mut dyn FnMut(Completed<B>)) -> usize {
        // SAFETY: no SPDK call is running, so no callback writes `done`
        // while we hold this reference.
        let done = unsafe { &mut *self.done };
        let mut handed = 0;
        for (slot_index, status_raw) in done.drain(..) {
            let slot = &mut self.slots[slot_index as usize];
            let buffer = slot
                .buffer
                .take()
                .expect("a completion for a slot with no command");
            self.free_slots.push(slot_index);
            self.in_flight -= 1;
            handed += 1;
            sink(Completed {
                tag: slot.tag,
                command: slot.command,
                lba: slot.lba,
                buffer,
                result: decode_status(status_raw, slot.command),
            });
        }
        handed
    }
}

impl<B> Drop for QueuePair<B> {
    fn drop(&mut self) {
        // Let everything in flight finish, so no device still reads or
        // writes the buffers we are about to free.
        let deadline = Instant::now() + self.drain_timeout;
        let mut discard = |c: Completed<B>| drop(c);
        while self.in_flight > 0 && Instant::now() < deadline {
            // SAFETY: as in `poll`.
            let rc = unsafe { sys::spdk_nvme_qpair_process_completions(self.qpair, 0) };
            drain_untyped(self, &mut discard);
            if rc < 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // SAFETY: the queue pair is live and used by no one else; freeing it
        // aborts what is still queued, completing it through `on_complete`
        // into `done`, which is still alive.
        unsafe { sys::spdk_nvme_ctrlr_free_io_qpair(self.qpair) };
        drain_untyped(self, &mut discard);
        if self.in_flight > 0 {
            eprintln!(
                "osprey-spdk: {} commands still in flight on {} after {:?}; leaking their buffers",
                self.in_flight,
                self.namespace.controller().transport_id(),
                self.drain_timeout
            );
            for slot in self.slots.iter_mut() {
                if let Some(buffer) = slot.buffer.take() {
                    std::mem::forget(buffer);
                }
            }
        }
        // SAFETY: from `Box::into_raw` in `open`; the queue pair is freed, so
        // no callback can write it any more.
        drop(unsafe { Box::from_raw(self.done) });
    }
}

/// `drain` without the `DerefMut` bound, for `drop`.
fn drain_untyped<B>(qp: &mut QueuePair<B>, sink: &mut dyn FnMut(Completed<B>)) {
    // SAFETY: as in `QueuePair::drain`.
    let done = unsafe { &mut *qp.done };
    for (slot_index, status_raw) in done.drain(..) {
        let slot = &mut qp.slots[slot_index as usize];
        if let Some(buffer) = slot.buffer.take() {
            qp.free_slots.push(slot_index);
            qp.in_flight -= 1;
            sink(Completed {
                tag: slot.tag,
                command: slot.command,
                lba: slot.lba,
                buffer,
                result: decode_status(status_raw, slot.command),
            });
        }
    }
}

/// Checks a read or write of `bytes` at `lba`; returns its sector count.
fn check_io(info: &crate::NamespaceInfo, lba: u64, bytes: &[u8]) -> Result<u32, String> {
    let sector = u64::from(info.sector_bytes);
    let len = bytes.len() as u64;
    if len == 0 || !len.is_multiple_of(sector) || len / sector > u64::from(u32::MAX) {
        return Err(format!(
            "length {len} is not a non-zero multiple of the {sector}-byte sector"
        ));
    }
    let lba_count = (len / sector) as u32;
    if lba
        .checked_add(u64::from(lba_count))
        .is_none_or(|end| end > info.sectors)
    {
        return Err(format!(
            "sectors {lba}..+{lba_count} beyond the namespace's {}",
            info.sectors
        ));
    }
    if !crate::dma::is_dma_memory(bytes) {
        return Err("the buffer is not memory from SPDK's DMA allocator".to_string());
    }
    Ok(lba_count)
}

fn decode_status(raw: u16, command: Command) -> Result<(), NvmeStatus> {
    let sc = ((raw >> 1) & 0xff) as u8;
    let sct = ((raw >> 9) & 0x7) as u8;
    if sc == 0 && sct == 0 {
        return Ok(());
    }
    let opc = match command {
        Command::Read => OPC_READ,
        Command::Write => OPC_WRITE,
        Command::Flush => OPC_FLUSH,
    };
    let status = sys::spdk_nvme_cpl__bindgen_ty_1 { status_raw: raw };
    // SAFETY: both union members are plain 16-bit data, so reading the
    // bitfield view of an initialised `status_raw` is fine; SPDK returns a
    // pointer to a static NUL-terminated string (never NULL).
    let text = unsafe {
        let s = sys::spdk_nvme_cpl_get_status_string_ext(&status.status, opc);
        if s.is_null() {
            String::new()
        } else {
            std::ffi::CStr::from_ptr(s).to_string_lossy().into_owned()
        }
    };
    Err(NvmeStatus { sct, sc, text })
}

/// SPDK's completion callback: records which slot finished and how.
///
/// # Safety
/// `arg` is a `CallbackContext` of a live queue pair (see `submit`) and
/// `cpl` a valid completion; SPDK calls this only from inside calls made
/// on that queue pair, by the thread that owns it.
unsafe extern "C" fn on_complete(arg: *mut c_void, cpl: *const sys::spdk_nvme_cpl) {
    // SAFETY: see the function's contract.
    unsafe {
        let context = &*(arg as *const CallbackContext);
        let status_raw = (*cpl).__bindgen_anon_1.status_raw;
        (*context.done).push((context.slot, status_raw));
    }
}
