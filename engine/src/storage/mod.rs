//! Flash storage: device headers, write blocks, the write and read paths.

pub mod core;
pub mod header;
pub mod namespace;
pub mod supervisor;
pub mod wblocks;
