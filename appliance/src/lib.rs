//! `osprey-appliance`: the `ospreyd` daemon — TOML config, start-up (warm or
//! cold) and shutdown, the service that routes requests to the engine, info
//! commands, statistics and security.
//!
//! Contract: the top of the dependency graph (`appliance → cluster, net,
//! engine`); nothing depends on it. No `unsafe`.
#![deny(unsafe_code)]

pub mod config;
pub mod daemon;
pub mod info;
pub mod security;
pub mod service;
pub mod state;

pub use osprey_cluster as cluster;
pub use osprey_engine as engine;
pub use osprey_net as net;
