//! `osprey-cluster`: heartbeat, membership, partition map, replication,
//! migration and proxying.
//!
//! Contract (filled in by the cluster work):
//! - Its core is a pure state machine: events in, commands out, no I/O and no
//!   clock of its own, so a seeded simulation drives the production code.
//! - Imports `osprey-engine` (model) and `osprey-net` (codec); never `appliance`.
#![deny(unsafe_code)]

pub use osprey_engine::partition::PARTITION_COUNT;
