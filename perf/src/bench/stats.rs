//! What the workers measure: per kind of command, completions, "not found"
//! answers and a latency histogram (microseconds); errors by cause.
//!
//! Each worker records into a thread-local [`Tally`] and adds it into its
//! shared slot every [`FLUSH_INTERVAL`] (one uncontended lock per flush,
//! none per command). The reporter takes every slot's tally once a second
//! (leaving an empty one), prints the interval and adds it to the run's
//! totals.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;

/// How often a worker hands its tally to the reporter.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(20);
/// Histogram range: 1 µs to 60 s at 3 significant digits.
const HIST_MAX_US: u64 = 60_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Read,
    Write,
    Delete,
    Batch,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Read, Kind::Write, Kind::Delete, Kind::Batch];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Read => "read",
            Kind::Write => "write",
            Kind::Delete => "delete",
            Kind::Batch => "batch",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why a command failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorKind {
    /// The server answered this result code (batch: the batch's code, or a
    /// row's).
    Result(u8),
    /// No answer within the command timeout; the connection was closed.
    Timeout,
    /// Connecting failed, or the connection broke with the command in flight.
    Connection,
    /// The reply could not be read; the connection was closed.
    Protocol,
    /// LOGIN was refused (neither 0 nor 52).
    Login(u8),
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Result(code) => write!(f, "rc{code}"),
            ErrorKind::Timeout => write!(f, "timeout"),
            ErrorKind::Connection => write!(f, "connection"),
            ErrorKind::Protocol => write!(f, "protocol"),
            ErrorKind::Login(code) => write!(f, "login-rc{code}"),
        }
    }
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds")
}

/// Counts of one interval (or of the whole run).
#[derive(Clone, Debug)]
pub struct Tally {
    /// Commands answered with success (including "not found" reads and
    /// deletes), per kind.
    pub ops: [u64; 4],
    pub not_found: [u64; 4],
    /// Latency of the successful commands, µs.
    pub latency: [Histogram<u64>; 4],
    /// Failed commands (and failed batch rows) by cause.
    pub errors: BTreeMap<ErrorKind, u64>,
    /// Rows of batch reads: found and not found.
    pub batch_keys_found: u64,
    pub batch_keys_not_found: u64,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            ops: [0; 4],
            not_found: [0; 4],
            latency: std::array::from_fn(|_| new_histogram()),
            errors: BTreeMap::new(),
            batch_keys_found: 0,
            batch_keys_not_found: 0,
        }
    }
}

impl Tally {
    pub fn success(&mut self, kind: Kind, latency: Duration, not_found: bool) {
        let i = kind.index();
        self.ops[i] += 1;
        if not_found {
            self.not_found[i] += 1;
        }
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency[i].saturating_record(us.max(1));
    }

    pub fn error(&mut self, error: ErrorKind, count: u64) {
        *self.errors.entry(error).or_insert(0) += count;
    }

    pub fn ops(&self, kind: Kind) -> u64 {
        self.ops[kind.index()]
    }

    pub fn not_found(&self, kind: Kind) -> u64 {
        self.not_found[kind.index()]
    }

    pub fn latency(&self, kind: Kind) -> &Histogram<u64> {
        &self.latency[kind.index()]
    }

    pub fn total_ops(&self) -> u64 {
        self.ops.iter().sum()
    }

    pub fn total_errors(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Every kind's latencies in one histogram.
    pub fn all_latency(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for h in &self.latency {
            all.add(h).expect("same bounds");
        }
        all
    }

    pub fn is_empty(&self) -> bool {
        self.total_ops() == 0 && self.errors.is_empty()
    }

    pub fn add(&mut self, other: &Tally) {
        for i in 0..4 {
            self.ops[i] += other.ops[i];
            self.not_found[i] += other.not_found[i];
            self.latency[i]
                .add(&other.latency[i])
                .expect("histograms with the same bounds");
        }
        for (error, count) in &other.errors {
            self.error(*error, *count);
        }
        self.batch_keys_found += other.batch_keys_found;
        self.batch_keys_not_found += other.batch_keys_not_found;
    }

    /// Empties the tally, keeping the histograms' allocations.
    pub fn clear(&mut self) {
        self.ops = [0; 4];
        self.not_found = [0; 4];
        for h in &mut self.latency {
            h.reset();
        }
        self.errors.clear();
        self.batch_keys_found = 0;
        self.batch_keys_not_found = 0;
    }

    /// `rc2:3 timeout:1`, or `0`.
    pub fn errors_text(&self) -> String {
        if self.errors.is_empty() {
            return "0".into();
        }
        self.errors
            .iter()
            .map(|(e, n)| format!("{e}:{n}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_add_and_clear() {
        let mut a = Tally::default();
        a.success(Kind::Read, Duration::from_micros(100), false);
        a.success(Kind::Read, Duration::from_micros(300), true);
        a.error(ErrorKind::Result(9), 2);
        let mut b = Tally::default();
        b.success(Kind::Write, Duration::from_nanos(10), false);
        b.error(ErrorKind::Result(9), 1);
        b.error(ErrorKind::Timeout, 1);
        a.add(&b);
        assert_eq!((a.ops(Kind::Read), a.ops(Kind::Write)), (2, 1));
        assert_eq!(a.not_found(Kind::Read), 1);
        assert_eq!(a.errors_text(), "rc9:3 timeout:1");
        assert_eq!(a.latency(Kind::Write).max(), 1);
        assert_eq!(a.all_latency().len(), 3);
        a.clear();
        assert!(a.is_empty());
    }
}
