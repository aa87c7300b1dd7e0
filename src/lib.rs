//! `osprey`: the root package. It owns the build metadata (version and commit,
//! from `build.rs`) and re-exports the engine for tools that want one import.
//! The daemon itself lives in `appliance/`.

#![deny(unsafe_code)]

pub use osprey_engine as engine;

/// The package version, from `Cargo.toml`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit this build came from (`unknown` outside a git checkout).
pub const COMMIT: &str = env!("OSPREY_COMMIT");

#[cfg(test)]
mod tests {
    #[test]
    fn build_metadata_is_present() {
        assert!(!super::VERSION.is_empty());
        assert!(!super::COMMIT.is_empty());
    }
}
