//! System V shared memory segments.
//!
//! The primary index lives in segments that outlive the process, so that a
//! restarted process can re-attach them (warm start). A segment is named by a
//! `key_t`; `ipcs -m` lists them. This module offers exactly three things:
//! create a segment, attach an existing one, remove one; plus a typed view of
//! a mapped segment as a slice of a [`ShmSafe`] type.
//!
//! Why slices of atomics: the index is read and written from several threads
//! at once (each tree under its own lock), and a segment may be attached at any
//! address. Types made only of atomics can be shared as `&[T]` soundly and
//! cost nothing extra on x86-64 for relaxed loads and stores. Everything above
//! this module is safe code.

use std::io;

/// Marker for types that may be viewed in place inside a shared segment.
///
/// # Safety
/// Implementors must be `#[repr(C)]`, contain only atomics (or arrays of
/// them), have no padding that matters, and accept every bit pattern as a
/// valid value — in particular the all-zero pattern of a fresh segment.
pub unsafe trait ShmSafe: Sync {}

// The types that live in shared memory. Each was checked to be `repr(C)`,
// made of atomics only (arrays of atomics included), and valid for every bit
// pattern; the zero pattern of a fresh segment means "empty / unused".
// SAFETY: see above; `Entry` is 5×AtomicU32 digest words, 3×AtomicU32, 3×AtomicU64.
unsafe impl ShmSafe for crate::index::layout::Entry {}
// SAFETY: see above; two AtomicU32 (lock word, root handle).
unsafe impl ShmSafe for crate::index::layout::Sprig {}
// SAFETY: see above; 64 AtomicU8.
unsafe impl ShmSafe for crate::index::layout::SetSlot {}
// SAFETY: see above; AtomicU32 and AtomicU64 fields only.
unsafe impl ShmSafe for crate::index::layout::MetaHeader {}

/// What the kernel says about an existing segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    pub id: i32,
    pub size_bytes: usize,
    /// Number of processes that have it attached right now.
    pub attached: u64,
}

/// A mapped System V shared memory segment. Dropping it detaches the mapping;
/// the segment itself stays until [`remove`] is called.
pub struct Segment {
    key: i32,
    id: i32,
    addr: *mut u8,
    size_bytes: usize,
    huge: bool,
}

// SAFETY: the mapping is plain memory owned by the kernel; every view handed
// out is of `ShmSafe` types (atomics only), so sharing across threads is sound.
unsafe impl Send for Segment {}
// SAFETY: as above; `&Segment` only yields `&[T]` with `T: ShmSafe` (Sync).
unsafe impl Sync for Segment {}

impl Segment {
    /// Creates a new segment of `size_bytes` (zero-filled by the kernel) and
    /// attaches it. Fails with `AlreadyExists` if the key is taken.
    /// With `huge`, the segment is backed by hugetlb pages and `size_bytes`
    /// must be a multiple of the huge page size.
    pub fn create(key: i32, size_bytes: usize, huge: bool) -> io::Result<Segment> {
        let mut flags = libc::IPC_CREAT | libc::IPC_EXCL | 0o600;
        if huge {
            flags |= libc::SHM_HUGETLB;
        }
        // SAFETY: shmget takes plain integers and has no memory effects here.
        let id = unsafe { libc::shmget(key, size_bytes, flags) };
        if id < 0 {
            return Err(io::Error::last_os_error());
        }
        match Self::map(key, id, size_bytes, huge) {
            Ok(segment) => Ok(segment),
            Err(err) => {
                // Do not leave a segment nobody can reach.
                // SAFETY: `id` came from shmget above; IPC_RMID takes no buffer.
                unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
                Err(err)
            }
        }
    }

    /// Attaches the existing segment with `key`; `Ok(None)` if there is none.
    pub fn attach(key: i32) -> io::Result<Option<Segment>> {
        let Some(info) = stat(key)? else {
            return Ok(None);
        };
        Self::map(key, info.id, info.size_bytes, false).map(Some)
    }

    fn map(key: i32, id: i32, size_bytes: usize, huge: bool) -> io::Result<Segment> {
        // SAFETY: attaching at an address the kernel chooses; no existing
        // Rust memory is affected. The result is checked below.
        let addr = unsafe { libc::shmat(id, std::ptr::null(), 0) };
        if addr as isize == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(Segment {
            key,
            id,
            addr: addr.cast::<u8>(),
            size_bytes,
            huge,
        })
    }

    pub fn key(&self) -> i32 {
        self.key
    }

    pub fn id(&self) -> i32 {
        self.id
    }

    pub fn size_bytes(&self) -> usize {
        self.size_bytes
    }

    /// Whether this process created it with hugetlb pages (unknown, so
    /// `false`, for attached segments).
    pub fn huge(&self) -> bool {
        self.huge
    }

    /// Views `len` values of `T` starting `offset` bytes into the segment.
    ///
    /// Panics if the range is out of bounds or misaligned: both are
    /// programming errors in the layout code, never data-dependent.
    pub fn slice<T: ShmSafe>(&self, offset: usize, len: usize) -> &[T] {
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .expect("segment view size overflows");
        let end = offset
            .checked_add(bytes)
            .expect("segment view end overflows");
        assert!(
            end <= self.size_bytes,
            "segment view {offset}..{end} exceeds {} bytes",
            self.size_bytes
        );
        let start = self.addr.wrapping_add(offset);
        assert_eq!(
            start as usize % std::mem::align_of::<T>(),
            0,
            "segment view misaligned"
        );
        // SAFETY: the range is inside the mapping (checked), aligned (checked),
        // the mapping lives as long as `self`, and `T: ShmSafe` means every
        // bit pattern is a valid `T` made of atomics, so shared references
        // from many threads are sound.
        unsafe { std::slice::from_raw_parts(start.cast::<T>(), len) }
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: `addr` came from a successful shmat and is detached once.
        // Views borrowed from `self` cannot outlive it.
        unsafe { libc::shmdt(self.addr.cast()) };
    }
}

/// A segment viewed as an array of `T`, checked once at construction so that
/// each access is one bounds check and a pointer offset (the index's handle
/// to entry mapping is on every tree step).
pub struct Table<T: ShmSafe> {
    segment: std::sync::Arc<Segment>,
    ptr: *const T,
    len: usize,
}

// SAFETY: the table only hands out `&T` with `T: ShmSafe` (Sync: atomics
// only), into memory that `segment` keeps mapped.
unsafe impl<T: ShmSafe> Send for Table<T> {}
// SAFETY: as above.
unsafe impl<T: ShmSafe> Sync for Table<T> {}

impl<T: ShmSafe> Table<T> {
    /// Views `len` values of `T` starting `offset` bytes into `segment`;
    /// panics if they do not fit (a layout bug, never data-dependent).
    pub fn new(segment: std::sync::Arc<Segment>, offset: usize, len: usize) -> Table<T> {
        let ptr = segment.slice::<T>(offset, len).as_ptr();
        Table { segment, ptr, len }
    }

    pub fn as_slice(&self) -> &[T] {
        self.segment
            .slice::<T>(self.ptr as usize - self.segment.addr as usize, self.len)
    }

    #[inline(always)]
    pub fn get(&self, i: usize) -> &T {
        assert!(i < self.len, "table index {i} out of {}", self.len);
        // SAFETY: `i < len`, and `new` checked that `len` values of `T` fit
        // the mapping, aligned; the mapping lives as long as `self.segment`.
        unsafe { &*self.ptr.add(i) }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn segment(&self) -> &Segment {
        &self.segment
    }
}

impl<T: ShmSafe> std::ops::Index<usize> for Table<T> {
    type Output = T;
    #[inline(always)]
    fn index(&self, i: usize) -> &T {
        self.get(i)
    }
}

/// What the kernel knows about the segment with `key`; `Ok(None)` if absent.
pub fn stat(key: i32) -> io::Result<Option<SegmentInfo>> {
    // SAFETY: plain integer arguments.
    let id = unsafe { libc::shmget(key, 0, 0) };
    if id < 0 {
        let err = io::Error::last_os_error();
        return if err.raw_os_error() == Some(libc::ENOENT) {
            Ok(None)
        } else {
            Err(err)
        };
    }
    // SAFETY: shmid_ds is a plain C struct; all-zero is a valid value.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: `ds` is a valid, writable shmid_ds for IPC_STAT to fill.
    if unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Some(SegmentInfo {
        id,
        size_bytes: ds.shm_segsz,
        attached: ds.shm_nattch,
    }))
}

/// Marks the segment with `key` for removal (it disappears once the last
/// process detaches). Returns whether there was one.
pub fn remove(key: i32) -> io::Result<bool> {
    let Some(info) = stat(key)? else {
        return Ok(false);
    };
    // SAFETY: `info.id` names an existing segment; IPC_RMID takes no buffer.
    if unsafe { libc::shmctl(info.id, libc::IPC_RMID, std::ptr::null_mut()) } < 0 {
        let err = io::Error::last_os_error();
        // Removed by someone else in between: the goal is reached.
        return if err.raw_os_error() == Some(libc::EINVAL)
            || err.raw_os_error() == Some(libc::EIDRM)
        {
            Ok(false)
        } else {
            Err(err)
        };
    }
    Ok(true)
}

/// Bytes of hugetlb pages free on the host and the huge page size, from
/// `/proc/meminfo`. `(0, 2 MiB)` when the file cannot be read.
pub fn hugepages_free() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l[name.len()..].split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    let page_bytes = field("Hugepagesize:")
        .map(|kib| kib * 1024)
        .unwrap_or(2 << 20);
    let free = field("HugePages_Free:").unwrap_or(0);
    (free * page_bytes, page_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[repr(C)]
    struct Word(AtomicU64);
    // SAFETY: a single atomic, any bit pattern valid.
    unsafe impl ShmSafe for Word {}

    fn test_key(slot: i32) -> i32 {
        0x3E00_0000 + ((std::process::id() as i32 & 0xFFFF) << 8) + slot
    }

    #[test]
    fn create_attach_remove_round_trip() {
        let key = test_key(1);
        let _ = remove(key);
        let a = Segment::create(key, 4096, false).expect("create");
        a.slice::<Word>(0, 512)[7].0.store(42, Ordering::Relaxed);
        assert!(
            Segment::create(key, 4096, false).is_err(),
            "second create must fail"
        );
        let b = Segment::attach(key).unwrap().expect("exists");
        assert_eq!(b.slice::<Word>(0, 512)[7].0.load(Ordering::Relaxed), 42);
        assert_eq!(stat(key).unwrap().unwrap().attached, 2);
        drop(a);
        drop(b);
        assert!(remove(key).unwrap());
        assert!(stat(key).unwrap().is_none());
        assert!(Segment::attach(key).unwrap().is_none());
    }

    #[test]
    #[should_panic(expected = "exceeds")]
    fn out_of_bounds_views_panic() {
        let key = test_key(2);
        let _ = remove(key);
        let seg = Segment::create(key, 4096, false).unwrap();
        remove(key).unwrap(); // gone once detached, even though we panic below
        let _ = seg.slice::<Word>(0, 513);
    }
}
