//! Flash storage: device headers, write blocks, the write and read paths.

pub mod header;
pub mod wblocks;
