//! Socket readiness syscalls: the crate's only `unsafe` module.
//!
//! A reactor asks the kernel which of its sockets are readable or writable
//! with `epoll`, and other threads wake a sleeping reactor through an
//! `eventfd` registered in the same set. Both are thin: a file descriptor
//! owned by a struct, closed on drop, every call checked.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

/// Readable (or a hang-up / error, which a read then reports).
pub const READABLE: u32 = libc::EPOLLIN as u32 | libc::EPOLLRDHUP as u32;
/// Writable.
pub const WRITABLE: u32 = libc::EPOLLOUT as u32;

/// One readiness report: the token given at registration and the events.
#[derive(Clone, Copy, Debug)]
pub struct Event {
    pub token: u64,
    pub events: u32,
}

/// An epoll set, level-triggered.
pub struct Epoll {
    fd: RawFd,
    raw: Vec<libc::epoll_event>,
}

impl Epoll {
    pub fn new(capacity: usize) -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes no pointers; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll {
            fd,
            raw: vec![libc::epoll_event { events: 0, u64: 0 }; capacity.max(1)],
        })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        let mut event = libc::epoll_event { events, u64: token };
        // SAFETY: `event` is a valid epoll_event for the duration of the
        // call; the kernel copies it. `self.fd` is an open epoll fd.
        let rc = unsafe { libc::epoll_ctl(self.fd, op, fd, &mut event) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn add(&self, fd: &impl AsRawFd, token: u64, events: u32) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd.as_raw_fd(), token, events)
    }

    pub fn modify(&self, fd: &impl AsRawFd, token: u64, events: u32) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd.as_raw_fd(), token, events)
    }

    pub fn delete(&self, fd: &impl AsRawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd.as_raw_fd(), 0, 0)
    }

    /// Waits up to `timeout` (zero: just look) and appends what is ready
    /// to `out`. An interrupted wait reports nothing.
    pub fn wait(&mut self, out: &mut Vec<Event>, timeout: Duration) -> io::Result<usize> {
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: `raw` has `raw.len()` initialised epoll_event slots that
        // the kernel may overwrite; the count passed matches it.
        let n = unsafe {
            libc::epoll_wait(
                self.fd,
                self.raw.as_mut_ptr(),
                self.raw.len() as libc::c_int,
                ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(e);
        }
        for e in &self.raw[..n as usize] {
            out.push(Event {
                token: e.u64,
                events: e.events,
            });
        }
        Ok(n as usize)
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: `fd` is owned by this struct and closed exactly once.
        unsafe { libc::close(self.fd) };
    }
}

/// A counter another thread bumps to wake a reactor out of `epoll_wait`.
pub struct EventFd {
    fd: RawFd,
}

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: no pointers; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(EventFd { fd })
    }

    /// Wakes the reactor; never blocks (a saturated counter is still set).
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
        unsafe { libc::write(self.fd, (&one as *const u64).cast(), 8) };
    }

    /// Clears pending wake-ups.
    pub fn drain(&self) {
        let mut value: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64; non-blocking.
        unsafe { libc::read(self.fd, (&mut value as *mut u64).cast(), 8) };
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd
    }
}

impl Drop for EventFd {
    fn drop(&mut self) {
        // SAFETY: `fd` is owned by this struct and closed exactly once.
        unsafe { libc::close(self.fd) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_eventfd_wakes_a_waiting_epoll() {
        let mut epoll = Epoll::new(4).unwrap();
        let wake = EventFd::new().unwrap();
        epoll.add(&wake, 7, READABLE).unwrap();
        let mut events = Vec::new();
        epoll.wait(&mut events, Duration::ZERO).unwrap();
        assert!(events.is_empty(), "nothing is ready before the wake");
        wake.wake();
        epoll.wait(&mut events, Duration::from_secs(5)).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].token, 7);
        wake.drain();
        events.clear();
        epoll.wait(&mut events, Duration::ZERO).unwrap();
        assert!(events.is_empty(), "drained");
    }
}
