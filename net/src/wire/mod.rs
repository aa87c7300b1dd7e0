//! The Aerospike wire codec (spec: `shared/specs/aerospike-wire.md`), free of
//! I/O: frames in, typed requests out; replies written into caller buffers.
