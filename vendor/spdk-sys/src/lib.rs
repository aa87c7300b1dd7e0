//! Raw bindings to SPDK. This crate (and the safe wrapper that will sit beside
//! it in `vendor/`) is the only place in Osprey that names an SPDK symbol.
//! Without feature `enabled` it is empty, so the workspace builds on hosts
//! without SPDK.
#![no_std]
