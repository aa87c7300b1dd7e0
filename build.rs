//! Build metadata for the `osprey` package: the version and the commit the
//! binary was built from, and, with feature `spdk`, an early and clear check
//! that an SPDK installation can be found (the real probing and linking is
//! done by `vendor/spdk-sys/build.rs`; this check only fails fast with advice).

use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=OSPREY_COMMIT={commit}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo:rerun-if-env-changed=SPDK_DIR");

    if std::env::var_os("CARGO_FEATURE_SPDK").is_some() {
        let found_by_pkg_config = Command::new("pkg-config")
            .args(["--exists", "spdk_nvme", "spdk_env_dpdk"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        let found_by_dir = std::env::var_os("SPDK_DIR")
            .map(|dir| {
                std::path::Path::new(&dir)
                    .join("include/spdk/nvme.h")
                    .exists()
            })
            .unwrap_or(false);
        if !found_by_pkg_config && !found_by_dir {
            panic!(
                "feature `spdk` needs an installed SPDK, and none was found.\n\
                 Install SPDK (built against Debian's libdpdk-dev) under a prefix, then either\n\
                 \x20 export PKG_CONFIG_PATH=<prefix>/lib/pkgconfig   (so `pkg-config --exists spdk_nvme spdk_env_dpdk` succeeds)\n\
                 or\n\
                 \x20 export SPDK_DIR=<prefix>                          (containing include/spdk/nvme.h and lib/)\n\
                 Without `--features spdk`, Osprey builds and runs on the io_uring and memory backends."
            );
        }
    }
}
