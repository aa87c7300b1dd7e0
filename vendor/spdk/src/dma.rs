//! Memory from SPDK's DMA allocator (pinned hugepage memory the NVMe driver
//! can hand to a device), owned by one [`DmaBuffer`] and freed when it drops.

use std::ptr::NonNull;

use spdk_sys as sys;

use crate::{Env, Error};

/// Frees DMA memory given up by [`DmaBuffer::into_raw_parts`].
pub type Release = Box<dyn FnOnce(NonNull<u8>) + Send>;

/// `len` bytes of zeroed DMA memory, freed on drop.
#[derive(Debug)]
pub struct DmaBuffer {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer exclusively owns its memory, and `spdk_free` may be
// called from any thread.
unsafe impl Send for DmaBuffer {}
// SAFETY: `&DmaBuffer` only gives shared reads of the bytes.
unsafe impl Sync for DmaBuffer {}

impl DmaBuffer {
    /// Zeroed DMA memory of `len` bytes (at least 1) aligned to `align` (a
    /// power of two). The environment must be running, hence `_env`.
    pub fn zeroed(_env: &'static Env, len: usize, align: usize) -> Result<DmaBuffer, Error> {
        if len == 0 || !align.is_power_of_two() {
            return Err(Error::new(format!(
                "a DMA buffer needs a non-zero length and a power-of-two alignment (asked {len} bytes aligned to {align})"
            )));
        }
        // SAFETY: the environment is running (we hold `&Env`, only handed out
        // after a successful init); the arguments are valid for
        // `spdk_zmalloc`, which returns zeroed memory or NULL.
        let raw = unsafe {
            sys::spdk_zmalloc(
                len,
                align,
                std::ptr::null_mut(),
                sys::SPDK_ENV_NUMA_ID_ANY,
                sys::SPDK_MALLOC_DMA,
            )
        };
        let ptr = NonNull::new(raw.cast::<u8>()).ok_or_else(|| {
            Error::new(format!(
                "SPDK's DMA allocator has no {len} bytes (aligned to {align}) left; reserve more hugepages"
            ))
        })?;
        Ok(DmaBuffer { ptr, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Gives up ownership: the pointer to `len` readable, writable
    /// (zeroed) bytes that nothing else owns or uses, and the [`Release`]
    /// that frees exactly this memory, once. Safe in itself (nothing is
    /// freed or touched here); whoever builds a buffer from the parts takes
    /// on the `unsafe` of using them (the engine does, in its `sys` module).
    pub fn into_raw_parts(self) -> (NonNull<u8>, usize, Release) {
        let this = std::mem::ManuallyDrop::new(self);
        let (ptr, len) = (this.ptr, this.len);
        let address = ptr.as_ptr() as usize;
        let release: Release = Box::new(move |given: NonNull<u8>| {
            debug_assert_eq!(given.as_ptr() as usize, address, "released another pointer");
            free(address as *mut u8);
        });
        (ptr, len, release)
    }
}

impl std::ops::Deref for DmaBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` points to `len` initialised (zeroed) bytes we own.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for DmaBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above; `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for DmaBuffer {
    fn drop(&mut self) {
        free(self.ptr.as_ptr());
    }
}

fn free(ptr: *mut u8) {
    // SAFETY: `ptr` came from `spdk_zmalloc` and is freed once: by
    // `DmaBuffer::drop` or by the `Release` of an adopted buffer, never both.
    unsafe { sys::spdk_free(ptr.cast()) };
}

/// Whether SPDK's address translation is running: it is not when the
/// environment started with `no_pci` (NVMe over fabrics only), and
/// `spdk_vtophys` then fails for every buffer, its own included.
pub(crate) static TRANSLATION: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(true);

/// Whether `bytes` lie in memory SPDK can DMA to (registered in its memory
/// map: its allocator, or memory registered with it). Without address
/// translation (`no_pci`) this cannot be checked and nothing needs it: the
/// fabrics transports address buffers by virtual address.
pub(crate) fn is_dma_memory(bytes: &[u8]) -> bool {
    if !TRANSLATION.load(std::sync::atomic::Ordering::Relaxed) {
        return true;
    }
    let mut size = bytes.len() as u64;
    // SAFETY: `spdk_vtophys` only looks the address up in SPDK's memory map;
    // `size` is a valid in/out parameter.
    let address = unsafe { sys::spdk_vtophys(bytes.as_ptr().cast(), &mut size) };
    address != u64::MAX
}
