//! The Aerospike wire codec (spec: `shared/specs/aerospike-wire.md`), free of
//! I/O: frames in, typed requests out; replies written into caller buffers.
//!
//! Layering, in the order a connection uses it:
//!
//! * [`proto`]: the 8-byte header every frame starts with, and the frame
//!   writer helpers every reply uses.
//! * [`compress`]: type-4 bodies inflated back into a whole type-3 frame.
//! * [`info`] (type 1), [`admin`] (type 2), [`msg`] (type 3 AS_MSG), with
//!   [`batch`] (field 41 of an AS_MSG) and [`scan`] (partition scans).
//!
//! Decoders borrow from the received bytes and never trust a length: every
//! size is checked against what is actually there before anything is
//! sliced or allocated, so the worst a hostile frame can make us allocate is
//! proportional to its real size. Framing damage is an error value
//! ([`proto::FrameError`], [`msg::MsgError`]) after which the caller closes
//! the connection; a well-framed request that asks for something wrong is a
//! [`osprey_engine::result::ResultCode`] that the caller answers.

pub mod admin;
pub mod batch;
pub mod compress;
pub mod info;
pub mod msg;
pub mod proto;
mod reader;
pub mod scan;
