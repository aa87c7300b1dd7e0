//! `osprey-net`: the Aerospike wire protocol and the per-core polling loop.
//!
//! Contract (filled in by the server issue):
//! - Owns the codec for info (type 1), admin (type 2) and AS_MSG (types 3
//!   and 4) frames as specified in `shared/specs/aerospike-wire.md`, and the
//!   connection state machines driven by one reactor per service core.
//! - Threading: a connection belongs to exactly one core for its whole life;
//!   nothing here blocks or allocates per request on the data path.
//! - Imports only `osprey-engine` (for the record model); never `appliance`.
//! - No `unsafe` except in one named socket-syscall module.
#![deny(unsafe_code)]

pub mod reactor;
mod sys;
pub mod wire;

pub use osprey_engine::digest::Digest;
