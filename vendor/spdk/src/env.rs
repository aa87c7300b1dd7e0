//! SPDK's environment: initialised once per process, kept until exit.

use std::ffi::CString;
use std::sync::Mutex;

use spdk_sys as sys;

use crate::Error;

/// How to start SPDK's environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvOptions {
    /// The process name DPDK uses in its logs and files.
    pub name: String,
    /// The cores SPDK may use, as a hex mask (`0x2`): the service cores.
    /// DPDK pins the initialising thread to the first of them; [`Env::init`]
    /// gives that thread its previous affinity back, so the caller's own
    /// pinning of reactors decides where work runs.
    pub core_mask: String,
    /// `None`: a private environment per process (DPDK's files are named
    /// after the pid), so several instances run side by side. `Some(id)`:
    /// a fixed id; two processes with the same id share memory as DPDK
    /// primary and secondary, which Osprey does not use — give every
    /// instance its own id.
    pub shm_id: Option<u16>,
    /// Hugepage memory to reserve at start, MiB; `None` lets DPDK grow on
    /// demand.
    pub mem_size_mb: Option<u32>,
    /// Where hugetlbfs is mounted, if not the default (`/dev/hugepages`).
    pub hugepage_dir: Option<String>,
    /// Skip PCI probing entirely (NVMe over fabrics only).
    pub no_pci: bool,
}

impl EnvOptions {
    /// The core mask for the first `cores` CPUs this thread may run on (the
    /// cores Osprey's reactors pin themselves to), as `0x...`.
    pub fn core_mask_for_first(cores: usize) -> String {
        let allowed: Vec<usize> = match current_affinity() {
            Some(set) => (0..libc::CPU_SETSIZE as usize)
                // SAFETY: `set` is a valid `cpu_set_t` and `cpu` is below
                // `CPU_SETSIZE`.
                .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
                .collect(),
            None => (0..cores).collect(),
        };
        let mut mask: u128 = 0;
        for &cpu in allowed.iter().take(cores.max(1)) {
            if cpu < 128 {
                mask |= 1 << cpu;
            }
        }
        if mask == 0 {
            mask = 1;
        }
        format!("{mask:#x}")
    }
}

impl Default for EnvOptions {
    fn default() -> Self {
        EnvOptions {
            name: "osprey".to_string(),
            core_mask: "0x1".to_string(),
            shm_id: None,
            mem_size_mb: None,
            hugepage_dir: None,
            no_pci: false,
        }
    }
}

/// The process's SPDK environment. Obtained from [`Env::init`]; lives until
/// the process exits.
#[derive(Debug)]
pub struct Env {
    options: EnvOptions,
}

/// `None` until the first `init`; then the outcome, kept for every later
/// caller (DPDK cannot retry after a failed init either).
static ENV: Mutex<Option<Result<&'static Env, Error>>> = Mutex::new(None);

impl Env {
    /// Starts the environment with `options`, or returns the running one if
    /// it was started with the same options. Blocks while DPDK maps its
    /// hugepage memory (a few hundred milliseconds).
    pub fn init(options: &EnvOptions) -> Result<&'static Env, Error> {
        let mut slot = ENV.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(outcome) = slot.as_ref() {
            return match outcome {
                Ok(env) if env.options == *options => Ok(env),
                Ok(env) => Err(Error::new(format!(
                    "the SPDK environment is already running with {:?}; a process has one environment \
                     (asked for {options:?})",
                    env.options
                ))),
                Err(e) => Err(e.clone()),
            };
        }
        let outcome = start(options).map(|()| {
            &*Box::leak(Box::new(Env {
                options: options.clone(),
            }))
        });
        *slot = Some(outcome.clone());
        outcome
    }

    /// The running environment, if [`Env::init`] succeeded.
    pub fn get() -> Option<&'static Env> {
        let slot = ENV.lock().unwrap_or_else(|e| e.into_inner());
        slot.as_ref().and_then(|o| o.as_ref().ok().copied())
    }

    pub fn options(&self) -> &EnvOptions {
        &self.options
    }
}

fn cstring(what: &str, text: &str) -> Result<CString, Error> {
    CString::new(text).map_err(|_| Error::new(format!("{what} {text:?} contains a NUL byte")))
}

fn start(options: &EnvOptions) -> Result<(), Error> {
    let name = cstring("name", &options.name)?;
    let core_mask = cstring("core mask", &options.core_mask)?;
    let hugedir = options
        .hugepage_dir
        .as_deref()
        .map(|d| cstring("hugepage dir", d))
        .transpose()?;
    // Quiet DPDK's start-up banner; errors are still logged.
    let eal_args = cstring("EAL arguments", "--log-level=lib.eal:4")?;

    let mut opts = sys::spdk_env_opts {
        opts_size: std::mem::size_of::<sys::spdk_env_opts>(),
        ..Default::default()
    };
    // SAFETY: `opts` is a valid, writable `spdk_env_opts` whose `opts_size`
    // is the size of the struct these bindings were generated from.
    unsafe { sys::spdk_env_opts_init(&mut opts) };
    opts.name = name.as_ptr();
    opts.core_mask = core_mask.as_ptr();
    opts.shm_id = options.shm_id.map_or(-1, i32::from);
    opts.mem_size = options.mem_size_mb.map_or(-1, |mb| mb as i32);
    opts.no_pci = options.no_pci;
    crate::dma::TRANSLATION.store(!options.no_pci, std::sync::atomic::Ordering::Relaxed);
    opts.env_context = eal_args.as_ptr() as *mut libc::c_void;
    if let Some(dir) = &hugedir {
        opts.hugedir = dir.as_ptr();
    }

    let affinity = current_affinity();
    // SAFETY: `opts` was initialised by `spdk_env_opts_init` and every string
    // it points to (`name`, `core_mask`, `eal_args`, `hugedir`) outlives the
    // call; SPDK copies what it keeps. `ENV`'s lock makes this the only
    // initialisation in the process.
    let rc = unsafe { sys::spdk_env_init(&opts) };
    if let Some(set) = affinity {
        restore_affinity(&set);
    }
    if rc != 0 {
        return Err(Error::new(format!(
            "cannot start SPDK's environment (core mask {}, shm id {:?}): {}; \
             check hugepages (scripts/setup-hugepages.sh) and that no other process uses the same shm id",
            options.core_mask,
            options.shm_id,
            crate::errno_text(rc)
        )));
    }
    Ok(())
}

fn current_affinity() -> Option<libc::cpu_set_t> {
    // SAFETY: an all-zero `cpu_set_t` is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a writable `cpu_set_t` of the size passed.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    (rc == 0).then_some(set)
}

fn restore_affinity(set: &libc::cpu_set_t) {
    // SAFETY: `set` is a valid `cpu_set_t` of the size passed; failure only
    // leaves the thread where DPDK pinned it.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
}
