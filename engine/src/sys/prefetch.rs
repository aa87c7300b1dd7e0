//! A cache prefetch hint: start loading the line holding a value without
//! waiting for it. Index lookups miss the cache on the sprig and on the
//! tree node (random digests over megabytes), and a core that knows the
//! next transactions' digests can overlap those misses with other work.

/// Hints that `value` will be read soon. Never faults, never blocks, and
/// changes no memory: on other architectures it does nothing.
#[inline(always)]
pub fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` only hints the cache; it cannot fault (even on an
    // unmapped address) and has no architectural effect. The address comes
    // from a reference, so it is valid anyway. SSE is part of the x86_64
    // baseline, the target feature `_mm_prefetch` requires.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
            (value as *const T).cast::<i8>(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}
