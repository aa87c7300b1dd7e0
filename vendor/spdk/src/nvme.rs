//! Controllers (attached by transport id, shared, detached when the last
//! user goes) and their namespaces.

use std::collections::HashMap;
use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use spdk_sys as sys;

use crate::qpair::{QueuePair, QueuePairOptions};
use crate::{Env, Error};

/// How often the helper thread polls a controller's admin queue. Fabrics
/// controllers need a keep-alive well within their timeout (10 s by default).
const ADMIN_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// A parsed SPDK transport id (`trtype:PCIe traddr:0000:01:00.0`,
/// `trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420 subnqn:...`).
#[derive(Clone)]
pub struct TransportId {
    raw: sys::spdk_nvme_transport_id,
    /// The text it was parsed from, whitespace normalised: its identity.
    text: String,
}

impl TransportId {
    /// Parses `text` with SPDK's own parser (keys `trtype`, `adrfam`,
    /// `traddr`, `trsvcid`, `subnqn`, ..., separated by `:` or `=`).
    pub fn parse(text: &str) -> Result<TransportId, Error> {
        let normalised = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let c = CString::new(normalised.as_str())
            .map_err(|_| Error::new(format!("transport id {text:?} contains a NUL byte")))?;
        let mut raw = sys::spdk_nvme_transport_id::default();
        // SAFETY: `raw` is a valid, writable transport id and `c` a
        // NUL-terminated string; the parser only reads the string.
        let rc = unsafe { sys::spdk_nvme_transport_id_parse(&mut raw, c.as_ptr()) };
        if rc != 0 {
            return Err(Error::new(format!(
                "{text:?} is not a valid SPDK transport id: {}",
                crate::errno_text(rc)
            )));
        }
        Ok(TransportId {
            raw,
            text: normalised,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Debug for TransportId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TransportId({:?})", self.text)
    }
}

/// An attached NVMe controller.
pub struct Controller {
    ctrlr: *mut sys::spdk_nvme_ctrlr,
    transport_id: String,
    stop_admin: Arc<AtomicBool>,
    admin_poller: Mutex<Option<JoinHandle<()>>>,
}

// SAFETY: the calls made on `ctrlr` from several threads (allocating and
// freeing I/O queue pairs, admin completions, namespace lookups) take SPDK's
// controller lock or only read data fixed at attach time.
unsafe impl Send for Controller {}
// SAFETY: as above.
unsafe impl Sync for Controller {}

/// Controllers attached in this process, by transport id, so that several
/// devices on one controller (namespaces, LBA ranges) share one attachment.
static ATTACHED: Mutex<Option<HashMap<String, Weak<Controller>>>> = Mutex::new(None);

/// `*mut spdk_nvme_ctrlr` that may move to the admin thread.
struct CtrlrPtr(*mut sys::spdk_nvme_ctrlr);
// SAFETY: `spdk_nvme_ctrlr_process_admin_completions` takes the controller
// lock; the thread is joined before the controller is detached.
unsafe impl Send for CtrlrPtr {}

impl Controller {
    /// The controller at `transport_id`, attaching it if no one in this
    /// process has it attached yet. Blocks while connecting.
    pub fn attach(env: &'static Env, transport_id: &TransportId) -> Result<Arc<Controller>, Error> {
        let mut attached = ATTACHED.lock().unwrap_or_else(|e| e.into_inner());
        let map = attached.get_or_insert_with(HashMap::new);
        let key = transport_id.as_str().to_ascii_lowercase();
        if let Some(existing) = map.get(&key).and_then(Weak::upgrade) {
            return Ok(existing);
        }
        let controller = Arc::new(Controller::connect(env, transport_id)?);
        map.retain(|_, weak| weak.strong_count() > 0);
        map.insert(key, Arc::downgrade(&controller));
        Ok(controller)
    }

    fn connect(_env: &'static Env, transport_id: &TransportId) -> Result<Controller, Error> {
        let mut opts = sys::spdk_nvme_ctrlr_opts::default();
        let opts_size = std::mem::size_of::<sys::spdk_nvme_ctrlr_opts>();
        // SAFETY: `opts` is a valid, writable options struct of `opts_size`
        // bytes.
        unsafe { sys::spdk_nvme_ctrlr_get_default_ctrlr_opts(&mut opts, opts_size) };
        // SAFETY: the environment is running (`_env`); `raw` and `opts` are
        // valid for the call, which copies what it keeps. NULL means failure.
        let ctrlr = unsafe { sys::spdk_nvme_connect(&transport_id.raw, &opts, opts_size) };
        if ctrlr.is_null() {
            return Err(Error::new(format!(
                "cannot attach NVMe controller {}: not found, not bound to vfio-pci/uio (PCIe), \
                 or the target refused the connection (fabrics)",
                transport_id.as_str()
            )));
        }
        let stop_admin = Arc::new(AtomicBool::new(false));
        let stop = stop_admin.clone();
        let handle = CtrlrPtr(ctrlr);
        let poller = std::thread::Builder::new()
            .name("spdk-admin".to_string())
            .spawn(move || {
                let handle = handle;
                while !stop.load(Ordering::Acquire) {
                    // SAFETY: see `CtrlrPtr`: the controller outlives this
                    // thread, and the call is thread-safe.
                    unsafe { sys::spdk_nvme_ctrlr_process_admin_completions(handle.0) };
                    std::thread::sleep(ADMIN_POLL_INTERVAL);
                }
            })
            .map_err(|e| Error::new(format!("cannot start the admin poller: {e}")));
        let poller = match poller {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: just attached, nothing else uses it.
                unsafe { sys::spdk_nvme_detach(ctrlr) };
                return Err(e);
            }
        };
        Ok(Controller {
            ctrlr,
            transport_id: transport_id.as_str().to_string(),
            stop_admin,
            admin_poller: Mutex::new(Some(poller)),
        })
    }

    pub fn transport_id(&self) -> &str {
        &self.transport_id
    }

    /// Namespace `id` (from 1), if active.
    pub fn namespace(self: &Arc<Self>, id: u32) -> Result<Namespace, Error> {
        // SAFETY: `ctrlr` is attached for as long as `self` lives.
        let count = unsafe { sys::spdk_nvme_ctrlr_get_num_ns(self.ctrlr) };
        // SAFETY: as above; any id may be asked about.
        let active = id != 0 && unsafe { sys::spdk_nvme_ctrlr_is_active_ns(self.ctrlr, id) };
        if !active {
            return Err(Error::new(format!(
                "{}: namespace {id} is not active (the controller has {count} namespace ids)",
                self.transport_id
            )));
        }
        // SAFETY: as above; `id` is active so a handle exists.
        let ns = unsafe { sys::spdk_nvme_ctrlr_get_ns(self.ctrlr, id) };
        if ns.is_null() {
            return Err(Error::new(format!(
                "{}: no handle for namespace {id}",
                self.transport_id
            )));
        }
        // SAFETY: `ns` is a live namespace handle of the attached controller.
        let (sector, extended, sectors, max_transfer) = unsafe {
            (
                sys::spdk_nvme_ns_get_sector_size(ns),
                sys::spdk_nvme_ns_get_extended_sector_size(ns),
                sys::spdk_nvme_ns_get_num_sectors(ns),
                sys::spdk_nvme_ns_get_max_io_xfer_size(ns),
            )
        };
        if extended != sector {
            return Err(Error::new(format!(
                "{}: namespace {id} is formatted with {} bytes of metadata per sector; \
                 format it without metadata (Osprey checksums records itself)",
                self.transport_id,
                extended - sector
            )));
        }
        Ok(Namespace {
            controller: self.clone(),
            ns,
            info: NamespaceInfo {
                id,
                sector_bytes: sector,
                sectors,
                max_transfer_bytes: max_transfer,
            },
        })
    }

    pub(crate) fn raw(&self) -> *mut sys::spdk_nvme_ctrlr {
        self.ctrlr
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.stop_admin.store(true, Ordering::Release);
        if let Some(handle) = self
            .admin_poller
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = handle.join();
        }
        // SAFETY: the last reference is gone: every namespace and queue pair
        // holds an `Arc` to this controller, so all queue pairs are freed, and
        // the admin thread has been joined.
        let rc = unsafe { sys::spdk_nvme_detach(self.ctrlr) };
        if rc != 0 {
            eprintln!(
                "osprey-spdk: detaching {} failed: {}",
                self.transport_id,
                crate::errno_text(rc)
            );
        }
    }
}

/// What a namespace is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub id: u32,
    pub sector_bytes: u32,
    pub sectors: u64,
    /// The largest transfer the controller takes in one command; SPDK
    /// splits larger commands.
    pub max_transfer_bytes: u32,
}

impl NamespaceInfo {
    pub fn size_bytes(&self) -> u64 {
        self.sectors * u64::from(self.sector_bytes)
    }
}

/// One namespace of an attached controller.
pub struct Namespace {
    controller: Arc<Controller>,
    ns: *mut sys::spdk_nvme_ns,
    info: NamespaceInfo,
}

// SAFETY: the namespace handle is only read (its geometry) or passed to
// commands on a queue pair owned by one thread; the controller keeps it alive.
unsafe impl Send for Namespace {}
// SAFETY: as above.
unsafe impl Sync for Namespace {}

impl Namespace {
    pub fn info(&self) -> &NamespaceInfo {
        &self.info
    }

    pub fn controller(&self) -> &Arc<Controller> {
        &self.controller
    }

    /// A new I/O queue pair on this namespace's controller, for the calling
    /// core. Blocks while the queue is created (a fabrics connect).
    pub fn open_queue_pair<B>(
        self: &Arc<Self>,
        options: &QueuePairOptions,
    ) -> Result<QueuePair<B>, Error>
    where
        B: std::ops::DerefMut<Target = [u8]> + Send + 'static,
    {
        QueuePair::open(self.clone(), options)
    }

    pub(crate) fn raw(&self) -> *mut sys::spdk_nvme_ns {
        self.ns
    }
}
