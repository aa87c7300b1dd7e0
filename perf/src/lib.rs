//! `osprey-perf`: benchmarks that print their figures next to a baseline
//! measured in the same run. Shared helpers live here; each benchmark is a
//! binary under `src/bin/`.
#![deny(unsafe_code)]
