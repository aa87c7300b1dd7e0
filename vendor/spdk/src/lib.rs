//! `osprey-spdk`: the safe face of SPDK for Osprey.
//!
//! What it owns: every call into SPDK (through `spdk-sys`, the raw bindings).
//! Nothing else in Osprey names an SPDK symbol; the engine's `spdk` device
//! backend uses only the types here.
//!
//! - [`Env`]: SPDK's environment (DPDK's EAL: hugepage memory, the core mask,
//!   a shared-memory id). Once per process, never torn down: DPDK cannot be
//!   initialised again in the same process, so the environment lives as long
//!   as the process and everything below may rely on it.
//! - [`DmaBuffer`]: memory from SPDK's DMA allocator, freed on drop.
//! - [`Controller`]: an attached NVMe controller, found by transport id
//!   (PCIe or NVMe over fabrics), shared by every namespace and queue pair
//!   that uses it and detached when the last of them is dropped. A helper
//!   thread polls its admin queue (keep-alive for fabrics, async events).
//! - [`Namespace`]: sector size and capacity of one namespace.
//! - [`QueuePair`]: one I/O queue pair, owned by one core (`Send`, not
//!   `Sync`): submit reads, writes and flushes with a tag and an owned
//!   buffer, poll for completions that hand both back. The buffer stays in
//!   the queue pair until its command completes, so memory under DMA cannot
//!   be freed; dropping a queue pair first waits (bounded) for everything in
//!   flight.
//!
//! Threading: the environment and controllers are shared; a queue pair is
//! used by one thread at a time and is polled, never interrupts. Nothing
//! here blocks except set-up (connect, allocating a queue pair) and
//! tear-down (draining a queue pair, detaching).
//!
//! Every `unsafe` block states why it is sound in a `SAFETY:` comment.
//! Without feature `enabled` the crate is empty.

#[cfg(feature = "enabled")]
mod dma;
#[cfg(feature = "enabled")]
mod env;
#[cfg(feature = "enabled")]
mod nvme;
#[cfg(feature = "enabled")]
mod qpair;
/// Test support: SPDK's `nvmf_tgt` serving a file over NVMe/TCP.
#[cfg(feature = "enabled")]
pub mod testing;

#[cfg(feature = "enabled")]
pub use dma::{DmaBuffer, Release};
#[cfg(feature = "enabled")]
pub use env::{Env, EnvOptions};
#[cfg(feature = "enabled")]
pub use nvme::{Controller, Namespace, NamespaceInfo, TransportId};
#[cfg(feature = "enabled")]
pub use qpair::{Command, Completed, NvmeStatus, QueuePair, QueuePairOptions, Refused};

/// An SPDK operation that failed, with what was being done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub message: String,
}

impl Error {
    pub fn new(message: impl Into<String>) -> Error {
        Error {
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// Text for a negative errno returned by SPDK.
pub fn errno_text(rc: i32) -> String {
    let code = rc.unsigned_abs() as i32;
    format!("{} (errno {code})", std::io::Error::from_raw_os_error(code))
}
