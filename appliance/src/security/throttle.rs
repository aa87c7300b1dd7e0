//! Login throttling per client address, so that a password cannot be
//! guessed at network speed.
//!
//! An address with failed logins has each further LOGIN held back: the
//! first waits `base`, and each failure doubles the wait up to `max`. The
//! waits of one address are serialised (each attempt reserves the next
//! slot), so opening many connections does not run guesses in parallel.
//! The wait applies to every LOGIN from the address, right or wrong, so a
//! guesser cannot tell a success by its quick reply and give up waiting on
//! the others. A success clears the address; failures are forgotten after
//! [`FORGET_AFTER`] without one.
//!
//! Sans-IO: callers pass the time and park the connection until the time
//! [`Throttle::schedule`] returns; nothing here sleeps. The table is
//! bounded: when full, the address whose last failure is oldest is dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Failures older than this (with none since) are forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);

struct Entry {
    failures: u32,
    last_failure: Instant,
    /// The earliest time the next attempt from this address may run.
    next_slot: Instant,
}

pub struct Throttle {
    base: Duration,
    max: Duration,
    capacity: usize,
    entries: HashMap<IpAddr, Entry>,
}

impl Throttle {
    /// `base` zero turns throttling off.
    pub fn new(base: Duration, max: Duration, capacity: usize) -> Throttle {
        assert!(max >= base && capacity > 0);
        Throttle {
            base,
            max,
            capacity,
            entries: HashMap::new(),
        }
    }

    /// The wait after `failures` failures.
    pub fn delay(&self, failures: u32) -> Duration {
        if failures == 0 || self.base.is_zero() {
            return Duration::ZERO;
        }
        let doublings = (failures - 1).min(20);
        self.base.saturating_mul(1 << doublings).min(self.max)
    }

    /// When a LOGIN from `address` arriving at `now` may be answered.
    pub fn schedule(&mut self, address: Option<IpAddr>, now: Instant) -> Instant {
        let Some(address) = address else { return now };
        let delay = match self.entries.get(&address) {
            None => return now,
            Some(e) if now.duration_since(e.last_failure) > FORGET_AFTER => {
                self.entries.remove(&address);
                return now;
            }
            Some(e) => self.delay(e.failures),
        };
        let entry = self.entries.get_mut(&address).expect("looked up above");
        let due = entry.next_slot.max(now);
        entry.next_slot = due + delay;
        due
    }

    /// A LOGIN from `address` failed at `now`.
    pub fn failed(&mut self, address: Option<IpAddr>, now: Instant) {
        let Some(address) = address else { return };
        if self.base.is_zero() {
            return;
        }
        if !self.entries.contains_key(&address) && self.entries.len() >= self.capacity {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_failure)
                .map(|(a, _)| *a);
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
        let entry = self.entries.entry(address).or_insert(Entry {
            failures: 0,
            last_failure: now,
            next_slot: now,
        });
        entry.failures = entry.failures.saturating_add(1);
        entry.last_failure = now;
        let failures = entry.failures;
        let delay = self.delay(failures);
        let entry = self.entries.get_mut(&address).expect("inserted above");
        entry.next_slot = entry.next_slot.max(now + delay);
    }

    /// A LOGIN from `address` succeeded.
    pub fn succeeded(&mut self, address: Option<IpAddr>) {
        if let Some(address) = address {
            self.entries.remove(&address);
        }
    }

    /// Failures counted for `address` now.
    pub fn failures(&self, address: IpAddr) -> u32 {
        self.entries.get(&address).map_or(0, |e| e.failures)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, last]))
    }

    #[test]
    fn failures_delay_later_attempts_exponentially() {
        let mut t = Throttle::new(100 * MS, 1000 * MS, 16);
        let t0 = Instant::now();
        assert_eq!(t.schedule(ip(1), t0), t0, "no failures: at once");
        t.failed(ip(1), t0);
        assert_eq!(t.schedule(ip(1), t0), t0 + 100 * MS);
        t.failed(ip(1), t0 + 100 * MS);
        t.failed(ip(1), t0 + 100 * MS);
        assert_eq!(t.failures(ip(1).unwrap()), 3);
        assert_eq!(t.delay(3), 400 * MS);
        assert_eq!(t.delay(30), 1000 * MS, "capped");
        // Other addresses are not slowed.
        assert_eq!(t.schedule(ip(2), t0), t0);
        t.succeeded(ip(1));
        assert_eq!(t.schedule(ip(1), t0), t0);
    }

    #[test]
    fn parallel_attempts_are_serialised() {
        let mut t = Throttle::new(100 * MS, 1000 * MS, 16);
        let t0 = Instant::now();
        t.failed(ip(1), t0);
        let slots: Vec<_> = (0..5).map(|_| t.schedule(ip(1), t0)).collect();
        for pair in slots.windows(2) {
            assert!(pair[1] >= pair[0] + 100 * MS, "{slots:?}");
        }
    }

    #[test]
    fn old_failures_are_forgotten_and_the_table_is_bounded() {
        let mut t = Throttle::new(100 * MS, 1000 * MS, 4);
        let t0 = Instant::now();
        t.failed(ip(1), t0);
        let later = t0 + FORGET_AFTER + MS;
        assert_eq!(t.schedule(ip(1), later), later);
        for i in 0..10 {
            t.failed(ip(i), t0 + u32::from(i) * MS);
        }
        assert_eq!(t.len(), 4);
        assert_eq!(t.failures(ip(9).unwrap()), 1, "the newest stay");
        assert_eq!(t.failures(ip(0).unwrap()), 0, "the oldest went");
        let mut off = Throttle::new(Duration::ZERO, Duration::ZERO, 4);
        off.failed(ip(1), t0);
        assert_eq!(off.schedule(ip(1), t0), t0);
        assert!(off.is_empty());
    }
}
