//! The sprig and allocator locks: one 32-bit word each, in shared memory.
//!
//! Critical sections are a handful of cache misses long (a tree search, a
//! few rotations), so a test-and-test-and-set spin lock beats parking. After
//! a short spin the waiter yields, so that a lock holder preempted on a small
//! machine (2 cores, more threads) gets its core back quickly.
//! A lock word left held by a crashed process is harmless: a crash leaves the
//! index untrusted, and an untrusted index is never attached.

use std::sync::atomic::{AtomicU32, Ordering};

const SPINS_BEFORE_YIELD: u32 = 64;

pub struct SpinGuard<'a> {
    word: &'a AtomicU32,
}

impl<'a> SpinGuard<'a> {
    #[inline]
    pub fn lock(word: &'a AtomicU32) -> SpinGuard<'a> {
        if word
            .compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            Self::lock_contended(word);
        }
        SpinGuard { word }
    }

    #[cold]
    fn lock_contended(word: &AtomicU32) {
        let mut spins = 0u32;
        loop {
            while word.load(Ordering::Relaxed) != 0 {
                if spins < SPINS_BEFORE_YIELD {
                    std::hint::spin_loop();
                    spins += 1;
                } else {
                    std::thread::yield_now();
                }
            }
            if word
                .compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
        }
    }
}

impl Drop for SpinGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        self.word.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excludes_other_threads() {
        let word = AtomicU32::new(0);
        let counter = AtomicU32::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..20_000 {
                        let _g = SpinGuard::lock(&word);
                        // A non-atomic read-modify-write made of two atomic steps:
                        // only mutual exclusion keeps it exact.
                        let v = counter.load(Ordering::Relaxed);
                        counter.store(v + 1, Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(counter.load(Ordering::Relaxed), 80_000);
        assert_eq!(word.load(Ordering::Relaxed), 0);
    }
}
