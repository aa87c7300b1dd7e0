//! Finds the installed SPDK when feature `enabled` is on; does nothing otherwise.
//!
//! Search order: `pkg-config` (`spdk_nvme`, `spdk_env_dpdk`; point
//! `PKG_CONFIG_PATH` at `<prefix>/lib/pkgconfig`), then `SPDK_DIR=<prefix>`.
//! Bindings over the headers come with the SPDK backend issue.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo:rerun-if-env-changed=SPDK_DIR");
    if std::env::var_os("CARGO_FEATURE_ENABLED").is_none() {
        return;
    }
    let via_pkg_config = Command::new("pkg-config")
        .args(["--exists", "spdk_nvme", "spdk_env_dpdk"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let via_dir = std::env::var_os("SPDK_DIR")
        .map(PathBuf::from)
        .filter(|dir| dir.join("include/spdk/nvme.h").exists());
    if !via_pkg_config && via_dir.is_none() {
        panic!(
            "spdk-sys: no SPDK installation found. Install SPDK under a prefix and set \
             PKG_CONFIG_PATH=<prefix>/lib/pkgconfig or SPDK_DIR=<prefix>, or build without `--features spdk`."
        );
    }
}
