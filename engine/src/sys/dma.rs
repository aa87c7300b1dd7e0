//! I/O buffers: aligned memory that a device reads into or writes from.
//!
//! A buffer is allocated by a device (`Device::alloc_buffer`) so that each
//! backend can use the memory its hardware path needs: aligned heap memory
//! for io_uring with `O_DIRECT` and for the memory backend; SPDK's DMA
//! allocator for SPDK (through [`IoBuffer::from_raw`] and a release hook).

use std::alloc::Layout;
use std::fmt;
use std::ptr::NonNull;

enum Release {
    Heap(Layout),
    External(Option<Box<dyn FnOnce(NonNull<u8>) + Send>>),
}

/// An owned, aligned byte buffer. Its length can be changed within the
/// capacity it was allocated with (so one buffer serves I/Os of several sizes).
pub struct IoBuffer {
    ptr: NonNull<u8>,
    len: usize,
    capacity: usize,
    release: Release,
}

// SAFETY: the buffer exclusively owns its memory (no aliasing handles
// exist), and the release hook is `Send`.
unsafe impl Send for IoBuffer {}
// SAFETY: `&IoBuffer` only gives shared reads of the bytes.
unsafe impl Sync for IoBuffer {}

impl IoBuffer {
    /// Zeroed heap memory of `len` bytes aligned to `align` (a power of two).
    /// `None` if the allocation fails or the arguments are invalid.
    pub fn zeroed(len: usize, align: usize) -> Option<IoBuffer> {
        let layout = Layout::from_size_align(len.max(1), align).ok()?;
        // SAFETY: the layout has a non-zero size.
        let ptr = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })?;
        Some(IoBuffer {
            ptr,
            len,
            capacity: len,
            release: Release::Heap(layout),
        })
    }

    /// Wraps memory from another allocator (SPDK's DMA allocator).
    ///
    /// # Safety
    /// `ptr` must point to `capacity` bytes, readable and writable, owned by
    /// no one else until `release` is called with it, which happens exactly
    /// once, when the buffer is dropped.
    pub unsafe fn from_raw(
        ptr: NonNull<u8>,
        capacity: usize,
        release: Box<dyn FnOnce(NonNull<u8>) + Send>,
    ) -> IoBuffer {
        IoBuffer {
            ptr,
            len: capacity,
            capacity,
            release: Release::External(Some(release)),
        }
    }

    /// Wraps a buffer from SPDK's DMA allocator; the memory goes back to
    /// SPDK when the `IoBuffer` drops.
    #[cfg(feature = "spdk")]
    pub fn from_dma(buffer: osprey_spdk::DmaBuffer) -> IoBuffer {
        let (ptr, capacity, release) = buffer.into_raw_parts();
        // SAFETY: `into_raw_parts` hands over `capacity` readable, writable
        // bytes that nothing else owns or uses, and a release that frees
        // exactly them, once — what `from_raw` requires.
        unsafe { IoBuffer::from_raw(ptr, capacity, release) }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Sets the length used by the next I/O; must not exceed the capacity.
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.capacity,
            "buffer length {len} over its capacity {}",
            self.capacity
        );
        self.len = len;
    }

    /// The address, for alignment checks.
    pub fn address(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// Raw pointer for a device to transfer into; only `sys` uses it.
    pub(crate) fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl std::ops::Deref for IoBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` points to `capacity >= len` initialised bytes we own.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for IoBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for IoBuffer {
    fn drop(&mut self) {
        match &mut self.release {
            // SAFETY: allocated in `zeroed` with exactly this layout.
            Release::Heap(layout) => unsafe { std::alloc::dealloc(self.ptr.as_ptr(), *layout) },
            Release::External(hook) => {
                if let Some(hook) = hook.take() {
                    hook(self.ptr);
                }
            }
        }
    }
}

impl fmt::Debug for IoBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "IoBuffer {{ len: {}, capacity: {}, address: {:#x} }}",
            self.len,
            self.capacity,
            self.address()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_zeroed_and_resizable() {
        let mut b = IoBuffer::zeroed(8192, 4096).unwrap();
        assert_eq!(b.address() % 4096, 0);
        assert!(b.iter().all(|&x| x == 0));
        b[100] = 7;
        b.set_len(4096);
        assert_eq!(b.len(), 4096);
        assert_eq!(b[100], 7);
        assert!(
            IoBuffer::zeroed(10, 3).is_none(),
            "alignment must be a power of two"
        );
    }

    #[test]
    fn external_memory_is_released_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let released = Arc::new(AtomicUsize::new(0));
        let backing = IoBuffer::zeroed(4096, 4096).unwrap();
        let r = released.clone();
        // SAFETY: `backing` outlives the wrapper and is not touched meanwhile.
        let wrapped = unsafe {
            IoBuffer::from_raw(
                NonNull::new(backing.address() as *mut u8).unwrap(),
                4096,
                Box::new(move |_| {
                    r.fetch_add(1, Ordering::SeqCst);
                }),
            )
        };
        drop(wrapped);
        assert_eq!(released.load(Ordering::SeqCst), 1);
        drop(backing);
    }
}
