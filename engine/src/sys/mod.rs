//! The one module of `osprey-engine` that may use `unsafe`: everything that
//! talks to the kernel below what `std` offers, each behind a safe API.
//!
//! - `shm`: System V shared memory segments and typed views of them (the
//!   primary index).
//! - `dma`: aligned I/O buffers, owned by whoever holds them, handed to a
//!   device queue for the duration of an I/O.
//! - `ring`: an io_uring queue that keeps each buffer alive until the kernel
//!   has finished with it.
//! - `blockdev`: the size and sector size of a block device (ioctls).
//! - `prefetch`: a cache prefetch hint (for index lookups).
//!
//! Every `unsafe` block carries a `// SAFETY:` comment.

#![allow(unsafe_code)]

pub mod blockdev;
pub mod dma;
pub mod prefetch;
pub mod ring;
pub mod shm;
