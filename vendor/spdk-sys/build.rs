//! Finds the installed SPDK, generates bindings for the part of it Osprey
//! uses, and links it — only with feature `enabled`; otherwise it does nothing,
//! so hosts without SPDK build the workspace unchanged.
//!
//! Where SPDK is looked for, in order:
//! 1. `pkg-config` (`spdk_nvme`, `spdk_env_dpdk`): point `PKG_CONFIG_PATH` at
//!    `<prefix>/lib/pkgconfig`;
//! 2. `SPDK_DIR=<prefix>` (with `include/spdk/nvme.h`, and `lib/pkgconfig`
//!    or the libraries in `lib/`).
//!
//! Linking: SPDK's static archives (`libspdk_*.a`) with `+whole-archive`,
//! because the NVMe transports (PCIe, TCP) and the posix socket layer
//! register themselves from constructors that nothing references (with
//! SPDK's shared libraries, the linker's `--as-needed` would drop
//! `libspdk_sock_posix.so` and NVMe/TCP would find no socket layer); DPDK
//! and the system libraries as shared libraries. DPDK's drivers (the ring
//! mempool, the PCI bus) are either referenced by SPDK's env or loaded by
//! DPDK's EAL from its driver directory at start-up, as Debian builds it.
//!
//! Bindings: bindgen over a wrapper header that includes `spdk/env.h` and
//! `spdk/nvme.h`, with an allowlist of exactly the functions the safe
//! wrapper (`vendor/spdk`) calls; controller, namespace and queue pair are
//! opaque.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every SPDK function the safe wrapper calls. Adding a call to the wrapper
/// means adding it here: nothing else is generated.
#[cfg(feature = "enabled")]
const FUNCTIONS: &[&str] = &[
    "spdk_env_opts_init",
    "spdk_env_init",
    "spdk_zmalloc",
    "spdk_free",
    "spdk_vtophys",
    "spdk_nvme_transport_id_parse",
    "spdk_nvme_ctrlr_get_default_ctrlr_opts",
    "spdk_nvme_connect",
    "spdk_nvme_detach",
    "spdk_nvme_ctrlr_get_num_ns",
    "spdk_nvme_ctrlr_is_active_ns",
    "spdk_nvme_ctrlr_get_ns",
    "spdk_nvme_ctrlr_process_admin_completions",
    "spdk_nvme_ctrlr_get_default_io_qpair_opts",
    "spdk_nvme_ctrlr_alloc_io_qpair",
    "spdk_nvme_ctrlr_free_io_qpair",
    "spdk_nvme_ns_get_sector_size",
    "spdk_nvme_ns_get_extended_sector_size",
    "spdk_nvme_ns_get_num_sectors",
    "spdk_nvme_ns_get_max_io_xfer_size",
    "spdk_nvme_ns_cmd_read",
    "spdk_nvme_ns_cmd_write",
    "spdk_nvme_ns_cmd_flush",
    "spdk_nvme_qpair_process_completions",
    "spdk_nvme_cpl_get_status_string_ext",
];

#[cfg(feature = "enabled")]
const VARS: &[&str] = &[
    "SPDK_MALLOC_DMA",
    "SPDK_ENV_NUMA_ID_ANY",
    "SPDK_VTOPHYS_ERROR",
];

/// Handles the wrapper only passes back to SPDK, and command and feature
/// layouts whose bitfields bindgen sizes wrongly (the wrapper never reads them).
#[cfg(feature = "enabled")]
const OPAQUE: &[&str] = &[
    "spdk_nvme_ctrlr",
    "spdk_nvme_ns",
    "spdk_nvme_qpair",
    "spdk_nvme_cmd",
    "spdk_nvme_cmd_cdw11",
    "spdk_nvme_feat_async_event_configuration",
];

/// System libraries SPDK's static archives need (uuid, OpenSSL for NVMe/TCP
/// TLS and the keyring, libnuma for the env, fuse3 for NVMe CUSE).
const SYSTEM_LIBS: &[&str] = &[
    "uuid", "ssl", "crypto", "numa", "fuse3", "m", "dl", "rt", "pthread",
];

const ADVICE: &str = "Install SPDK under a prefix (built against Debian's libdpdk-dev), then either\n\
  export PKG_CONFIG_PATH=<prefix>/lib/pkgconfig   (so `pkg-config --exists spdk_nvme spdk_env_dpdk` succeeds)\n\
or\n\
  export SPDK_DIR=<prefix>                          (containing include/spdk/nvme.h and lib/)\n\
bindgen also needs libclang (Debian: apt-get install libclang-dev).\n\
Without `--features spdk`, Osprey builds and runs on the io_uring and memory backends.";

fn main() {
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo:rerun-if-env-changed=SPDK_DIR");
    println!("cargo:rerun-if-changed=build.rs");
    if env::var_os("CARGO_FEATURE_ENABLED").is_none() {
        return;
    }
    let install = find_spdk().unwrap_or_else(|why| panic!("spdk-sys: {why}\n{ADVICE}"));
    link(&install);
    #[cfg(feature = "enabled")]
    generate_bindings(&install);
}

/// What the build needs to know about an SPDK installation.
struct Install {
    include_dirs: Vec<PathBuf>,
    lib_dirs: Vec<PathBuf>,
    /// Library names (no `lib` prefix), in link order.
    libs: Vec<String>,
}

fn pkg_config(pc_path: Option<&Path>, args: &[&str]) -> Result<String, String> {
    let mut command = Command::new("pkg-config");
    if let Some(dir) = pc_path {
        let mut path = dir.as_os_str().to_owned();
        if let Some(old) = env::var_os("PKG_CONFIG_PATH") {
            path.push(":");
            path.push(old);
        }
        command.env("PKG_CONFIG_PATH", path);
    }
    let out = command
        .args(args)
        .output()
        .map_err(|e| format!("cannot run pkg-config ({e}); install pkgconf"))?;
    if !out.status.success() {
        return Err(format!(
            "pkg-config {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn find_spdk() -> Result<Install, String> {
    const MODULES: [&str; 2] = ["spdk_nvme", "spdk_env_dpdk"];
    let spdk_dir = env::var_os("SPDK_DIR").map(PathBuf::from);
    let mut attempts = Vec::new();
    let pc_dirs: Vec<Option<PathBuf>> = match &spdk_dir {
        Some(dir) => vec![None, Some(dir.join("lib/pkgconfig"))],
        None => vec![None],
    };
    for pc_dir in pc_dirs {
        let mut args = vec!["--cflags", "--libs"];
        args.extend(MODULES);
        match pkg_config(pc_dir.as_deref(), &args) {
            Ok(flags) => {
                let mut install = Install {
                    include_dirs: Vec::new(),
                    lib_dirs: Vec::new(),
                    libs: Vec::new(),
                };
                for flag in flags.split_whitespace() {
                    if let Some(dir) = flag.strip_prefix("-I") {
                        install.include_dirs.push(dir.into());
                    } else if let Some(dir) = flag.strip_prefix("-L") {
                        install.lib_dirs.push(dir.into());
                    } else if let Some(lib) = flag.strip_prefix("-l") {
                        if !install.libs.iter().any(|l| l == lib) {
                            install.libs.push(lib.to_string());
                        }
                    }
                }
                if !install.libs.iter().any(|l| l == "spdk_nvme") {
                    return Err(format!("pkg-config gave no -lspdk_nvme: {flags}"));
                }
                return Ok(install);
            }
            Err(e) => attempts.push(e),
        }
    }
    if let Some(dir) = spdk_dir {
        if dir.join("include/spdk/nvme.h").exists() {
            // No .pc files: the libraries a default SPDK build puts in lib/.
            let libs = [
                "spdk_nvme",
                "spdk_keyring",
                "spdk_sock",
                "spdk_sock_posix",
                "spdk_trace",
                "spdk_rpc",
                "spdk_jsonrpc",
                "spdk_json",
                "spdk_dma",
                "spdk_env_dpdk",
                "spdk_util",
                "spdk_log",
            ];
            let dpdk = pkg_config(None, &["--libs", "libdpdk"]).unwrap_or_default();
            let mut all: Vec<String> = libs.iter().map(|s| s.to_string()).collect();
            all.extend(
                dpdk.split_whitespace()
                    .filter_map(|f| f.strip_prefix("-l"))
                    .map(str::to_string),
            );
            return Ok(Install {
                include_dirs: vec![dir.join("include")],
                lib_dirs: vec![dir.join("lib")],
                libs: all,
            });
        }
        attempts.push(format!(
            "SPDK_DIR={} has no include/spdk/nvme.h",
            dir.display()
        ));
    }
    Err(format!(
        "no SPDK installation found ({})",
        attempts.join("; ")
    ))
}

fn link(install: &Install) {
    for dir in &install.lib_dirs {
        println!("cargo:rustc-link-search=native={}", dir.display());
    }
    for lib in &install.libs {
        let archive = install
            .lib_dirs
            .iter()
            .map(|d| d.join(format!("lib{lib}.a")))
            .find(|p| p.exists());
        if lib.starts_with("spdk_") {
            match archive {
                Some(_) => println!("cargo:rustc-link-lib=static:+whole-archive,-bundle={lib}"),
                None => panic!(
                    "spdk-sys: lib{lib}.a not found in {:?}; Osprey links SPDK's static \
                     libraries (an SPDK build installs them by default)",
                    install.lib_dirs
                ),
            }
        } else {
            println!("cargo:rustc-link-lib=dylib={lib}");
        }
    }
    for lib in SYSTEM_LIBS {
        println!("cargo:rustc-link-lib=dylib={lib}");
    }
    // Dependents' build scripts can read these as DEP_SPDK_*.
    if let Some(dir) = install.lib_dirs.first() {
        println!("cargo:libdir={}", dir.display());
    }
}

#[cfg(feature = "enabled")]
fn generate_bindings(install: &Install) {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let header = out.join("osprey_spdk.h");
    std::fs::write(
        &header,
        "#include <spdk/stdinc.h>\n#include <spdk/env.h>\n#include <spdk/nvme.h>\n",
    )
    .expect("write the wrapper header");
    let mut builder = bindgen::Builder::default()
        .header(header.display().to_string())
        .use_core()
        .layout_tests(true)
        .derive_default(true)
        .generate_comments(false)
        .prepend_enum_name(false)
        .default_enum_style(bindgen::EnumVariation::Consts)
        .allowlist_recursively(true);
    for dir in &install.include_dirs {
        builder = builder.clang_arg(format!("-I{}", dir.display()));
    }
    for f in FUNCTIONS {
        builder = builder.allowlist_function(f);
    }
    for v in VARS {
        builder = builder.allowlist_var(v);
    }
    for t in OPAQUE {
        builder = builder.opaque_type(t);
    }
    let bindings = builder
        .generate()
        .unwrap_or_else(|e| panic!("spdk-sys: bindgen failed: {e}\n{ADVICE}"));
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("write bindings.rs");
}
