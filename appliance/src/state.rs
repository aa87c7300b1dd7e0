//! What every core of the daemon shares: identity, the namespaces, the
//! network counters and each core's statistics.
//!
//! Counters are per core (one writer each, relaxed atomics) and summed when
//! the ticker or an info command reads them, so the data path never writes a
//! cache line another core writes.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use osprey_engine::storage::namespace::Namespace;
use osprey_engine::storage::supervisor::SupervisorConfig;
use osprey_net::reactor::NetShared;

use crate::security::Security;

/// The Aerospike server version the daemon reports to `build`: clients
/// check it to decide which protocol features to use (spec §2.1, §10.3).
/// 7.2 gives the batch and partition-scan forms the codec implements,
/// without the 8.1 `user-agent-set` handshake (which is answered anyway).
pub const COMPATIBLE_BUILD: &str = "7.2.0.0";

/// One namespace as the daemon runs it.
pub struct NamespaceRuntime {
    pub name: String,
    pub ns: Arc<Namespace>,
    pub replication_factor: u32,
    pub default_ttl_s: u32,
    pub nsup_period_s: u32,
    pub supervisor: SupervisorConfig,
    /// Summary lines of the config, for `get-config`.
    pub config_pairs: Vec<(String, String)>,
}

/// Client requests one core handled, by kind and outcome.
#[derive(Default)]
pub struct CoreStats {
    pub reads: AtomicU64,
    pub reads_not_found: AtomicU64,
    pub writes: AtomicU64,
    pub deletes: AtomicU64,
    pub udf_or_unsupported: AtomicU64,
    pub errors: AtomicU64,
    pub batch_requests: AtomicU64,
    pub batch_rows: AtomicU64,
    pub scans: AtomicU64,
    pub scan_records: AtomicU64,
    pub info_requests: AtomicU64,
    pub admin_requests: AtomicU64,
    pub compressed_requests: AtomicU64,
    /// Frames that could not be parsed (the connection was closed).
    pub malformed: AtomicU64,
    /// A gauge, set once a second: this core's device write backlog.
    pub write_backlog_bytes: AtomicU64,
}

impl CoreStats {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }
}

/// Sums of all cores' [`CoreStats`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Totals {
    pub reads: u64,
    pub reads_not_found: u64,
    pub writes: u64,
    pub deletes: u64,
    pub errors: u64,
    pub batch_requests: u64,
    pub batch_rows: u64,
    pub scans: u64,
    pub scan_records: u64,
    pub info_requests: u64,
    pub admin_requests: u64,
    pub compressed_requests: u64,
    pub malformed: u64,
    pub write_backlog_bytes: u64,
}

/// The daemon's shared state.
pub struct ServerState {
    /// The `node` id, fixed for the life of the process.
    pub node_id: u64,
    pub cluster_name: String,
    /// Address clients reach this node at (`service-clear-std`).
    pub service_address: String,
    pub port: u16,
    pub namespaces: Vec<NamespaceRuntime>,
    pub net: Arc<NetShared>,
    pub cores: Vec<Arc<CoreStats>>,
    pub started: Instant,
    pub version: String,
    pub max_connections: usize,
    /// Users, roles and sessions' shared half (`crate::security`).
    pub security: Arc<Security>,
}

impl ServerState {
    pub fn node_name(&self) -> String {
        format!("{:X}", self.node_id)
    }

    pub fn namespace(&self, name: &[u8]) -> Option<usize> {
        self.namespaces
            .iter()
            .position(|n| n.name.as_bytes() == name)
    }

    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for c in &self.cores {
            t.reads += c.reads.load(Relaxed);
            t.reads_not_found += c.reads_not_found.load(Relaxed);
            t.writes += c.writes.load(Relaxed);
            t.deletes += c.deletes.load(Relaxed);
            t.errors += c.errors.load(Relaxed);
            t.batch_requests += c.batch_requests.load(Relaxed);
            t.batch_rows += c.batch_rows.load(Relaxed);
            t.scans += c.scans.load(Relaxed);
            t.scan_records += c.scan_records.load(Relaxed);
            t.info_requests += c.info_requests.load(Relaxed);
            t.admin_requests += c.admin_requests.load(Relaxed);
            t.compressed_requests += c.compressed_requests.load(Relaxed);
            t.malformed += c.malformed.load(Relaxed);
            t.write_backlog_bytes += c.write_backlog_bytes.load(Relaxed);
        }
        t
    }
}

/// `part` as a whole percentage of `whole` (0 when `whole` is 0).
pub fn percent(part: u64, whole: u64) -> u64 {
    part.saturating_mul(100).checked_div(whole).unwrap_or(0)
}

/// A namespace's storage figures at one moment, for the ticker and the
/// `namespace/<ns>` info command.
pub struct NamespaceSnapshot {
    pub objects: u64,
    pub tombstones: u64,
    pub index_shm_bytes_in_use: u64,
    pub index_shm_bytes_reserved: u64,
    pub index_huge_pages: bool,
    pub used_bytes: u64,
    pub capacity_bytes: u64,
    pub free_wblocks: usize,
    pub free_bytes: u64,
    pub defrag_queue: usize,
    /// Reads served from RAM blocks, as a percentage of all record loads.
    pub cache_hit_pct: u64,
}

impl NamespaceSnapshot {
    pub fn of(ns: &Namespace) -> NamespaceSnapshot {
        let index = ns.index.stats();
        let (used_bytes, capacity_bytes) = ns.device_usage();
        let free_wblocks: usize = ns.devices.iter().map(|d| d.wblocks.free_count()).sum();
        let defrag_queue = ns
            .devices
            .iter()
            .map(|d| d.wblocks.defrag_queue_len())
            .sum();
        let hits = ns.stats.cache_hits.load(Relaxed);
        let device_reads = ns.stats.device_reads.load(Relaxed);
        NamespaceSnapshot {
            objects: index.records,
            tombstones: index.tombstones,
            index_shm_bytes_in_use: index.shm_bytes_in_use,
            index_shm_bytes_reserved: index.shm_bytes_reserved,
            index_huge_pages: index.huge_pages,
            used_bytes,
            capacity_bytes,
            free_wblocks,
            free_bytes: free_wblocks as u64 * u64::from(ns.config.write_block_bytes),
            defrag_queue,
            cache_hit_pct: percent(hits, hits + device_reads),
        }
    }
}
