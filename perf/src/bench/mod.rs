//! `osprey-bench`: a load generator for any server that speaks the
//! Aerospike wire protocol (asbench's flags), with its own lean client.
//!
//! * [`args`]: flags and their checked form.
//! * [`cluster`]: seeding — `node`, `partition-generation`, `replicas`,
//!   `peers-clear-std` on blocking connections; the partition → node map.
//! * [`worker`]: one thread's poll loop (mio, edge-triggered epoll) with up
//!   to `-c` commands in flight, one per connection, connections pooled per
//!   node; routing by partition; reconnects after errors.
//! * [`wire`]: the client-side encoders and reply decoders.
//! * [`keys`]: uniform and scrambled-zipfian key choice.
//! * [`stats`]: per-kind counts and HDR latency histograms, handed from the
//!   workers to the reporter every 20 ms.
//! * [`report`]: the per-second line, the final table, JSON, HDR logs.
//!
//! Threading: `-z` worker threads and the main thread, which reports once a
//! second and sets the stop flag when `-t` is up. Workers share only the
//! read-only config and cluster map, the insert counter and one mutex-held
//! tally slot each.

pub mod args;
pub mod cluster;
pub mod keys;
pub mod report;
pub mod stats;
pub mod wire;
pub mod worker;
