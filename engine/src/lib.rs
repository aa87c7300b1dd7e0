//! `osprey-engine`: the storage engine of one Osprey node.
//!
//! What it owns: the record model (digests, partitions), the primary index in
//! System V shared memory (`index`), the device interface and its backends
//! (`device`), and — as later work lands — flash storage, defrag, cold and
//! warm start, expiry.
//!
//! Threading: the engine is called from the service cores' reactors. Index
//! operations take one sprig lock for a few cache misses and never block in
//! the kernel; nothing on the data path may block, sleep, or allocate per
//! request. Start-up walks may use helper threads.
//!
//! Rules: no `unsafe` outside `sys` (System V shared memory, aligned I/O
//! buffers, the io_uring ring, block device ioctls); never call SPDK directly
//! (that is `vendor/`'s job, behind feature `spdk`); depend on nothing above
//! this crate.

#![deny(unsafe_code)]

pub mod device;
pub mod digest;
pub mod index;
pub mod ops;
pub mod partition;
pub mod record;
pub mod result;
pub mod storage;
pub mod sys;

pub use sys::shm;

pub use digest::{Digest, UserKey};
pub use index::{Index, IndexConfig, IndexRecord, Location};
pub use partition::{PartitionId, PARTITION_COUNT};
