//! Info commands (spec §2): the value for each command a client, `asinfo`
//! or `osprey info` may send. Values never contain tabs or newlines (the
//! codec replaces any that slip through).
//!
//! Errors use Aerospike's `ERROR:<code>:<message>` form. Commands clients
//! send while connecting or tending never answer an error: the C client
//! drops a node whose tend reply holds one.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use osprey_engine::storage::namespace::Namespace;
use osprey_net::wire::info::param;

use crate::state::{percent, NamespaceSnapshot, ServerState, COMPATIBLE_BUILD};

/// Partitions per namespace (fixed by the protocol).
const PARTITIONS: u32 = 4096;
/// Generations of this node's partition map and peer list: a single node's
/// never change.
const PARTITION_GENERATION: u32 = 1;
const PEERS_GENERATION: u32 = 1;
/// Milliseconds from the Unix epoch to 2010-01-01T00:00:00Z.
const CITRUSLEAF_EPOCH_UNIX_MS: u64 = 1_262_304_000_000;

/// A replica bitmap with all 4096 partitions set, in base64 (spec §3):
/// 510 bytes of 0xFF are 680 '/' and the last two bytes are "//8=".
fn all_partitions_b64() -> String {
    let mut s = "/".repeat(680);
    s.push_str("//8=");
    s
}

/// The value answered to command `name` with `params` (the text after ':').
pub fn answer(state: &ServerState, name: &str, params: &str) -> String {
    match name {
        "node" => state.node_name(),
        "build" => COMPATIBLE_BUILD.to_string(),
        "version" => format!(
            "Osprey {} (Aerospike protocol {COMPATIBLE_BUILD})",
            state.version
        ),
        "edition" => "Osprey".to_string(),
        "partition-generation" => PARTITION_GENERATION.to_string(),
        "rebalance-generation" => "0".to_string(),
        "partitions" => PARTITIONS.to_string(),
        "cluster-name" => {
            if state.cluster_name.is_empty() {
                "null".to_string()
            } else {
                state.cluster_name.clone()
            }
        }
        "replicas" => per_namespace(state, |n| format!("{n}:0,1,{}", all_partitions_b64())),
        "replicas-all" => per_namespace(state, |n| format!("{n}:1,{}", all_partitions_b64())),
        "replicas-master" => per_namespace(state, |n| format!("{n}:{}", all_partitions_b64())),
        "peers-generation" => PEERS_GENERATION.to_string(),
        "peers-clear-std" | "peers-clear-alt" | "peers-tls-std" | "peers-tls-alt" => {
            format!("{PEERS_GENERATION},{},[]", state.port)
        }
        "service-clear-std" | "service-clear-alt" | "service" => state.service_address.clone(),
        "services" | "services-alumni" | "services-alternate" => String::new(),
        "features" => [
            "batch-any",
            "batch-index",
            "float",
            "geo",
            "peers",
            "pscans",
            "replicas",
            "replicas-all",
            "replicas-master",
            "truncate-namespace",
        ]
        .join(";"),
        "namespaces" => state
            .namespaces
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>()
            .join(";"),
        "statistics" => statistics(state),
        "sets" => sets(state, params),
        "bins" => state
            .namespaces
            .iter()
            .map(|n| format!("{}:bin_names=0,bin_names_quota=65535", n.name))
            .collect::<Vec<_>>()
            .join(";"),
        "sindex" | "sindex-list" | "udf-list" | "query-show" | "jobs" => String::new(),
        "user-agent-set" => "ok".to_string(),
        "get-config" => get_config(state, params),
        "truncate" => truncate(state, params, false),
        "truncate-namespace" => truncate(state, params, true),
        "shutdown" => {
            state.net.stop();
            "ok".to_string()
        }
        _ => match name.strip_prefix("namespace/") {
            Some(ns) => match state.namespace(ns.as_bytes()) {
                Some(i) => namespace_statistics(state, i),
                None => "ERROR:20:namespace not found".to_string(),
            },
            None => "ERROR:4:unrecognized command".to_string(),
        },
    }
}

fn per_namespace(state: &ServerState, each: impl Fn(&str) -> String) -> String {
    state
        .namespaces
        .iter()
        .map(|n| each(&n.name))
        .collect::<Vec<_>>()
        .join(";")
}

fn statistics(state: &ServerState) -> String {
    let t = state.totals();
    let net = &state.net.stats;
    let mut objects = 0;
    let mut tombstones = 0;
    for n in &state.namespaces {
        let s = n.ns.index.stats();
        objects += s.records;
        tombstones += s.tombstones;
    }
    format!(
        "cluster_size=1;cluster_name={};objects={objects};tombstones={tombstones};\
         uptime={};client_connections={};client_connections_opened={};\
         client_connections_refused={};client_connections_closed={};\
         client_connections_idle_closed={};client_malformed_frames={};\
         client_reads={};client_reads_not_found={};client_writes={};client_deletes={};\
         client_errors={};batch_index_initiate={};batch_index_rows={};scans={};\
         scan_records={};info_requests={};admin_requests={};compressed_requests={};\
         write_backlog_bytes={}",
        if state.cluster_name.is_empty() {
            "null"
        } else {
            &state.cluster_name
        },
        state.started.elapsed().as_secs(),
        state.net.open_connections(),
        net.accepted.load(Relaxed),
        net.refused.load(Relaxed),
        net.closed.load(Relaxed),
        net.idle_closed.load(Relaxed),
        net.malformed.load(Relaxed) + t.malformed,
        t.reads,
        t.reads_not_found,
        t.writes,
        t.deletes,
        t.errors,
        t.batch_requests,
        t.batch_rows,
        t.scans,
        t.scan_records,
        t.info_requests,
        t.admin_requests,
        t.compressed_requests,
        t.write_backlog_bytes,
    )
}

/// `namespace/<ns>`: Aerospike-style statistic names where one exists.
pub fn namespace_statistics(state: &ServerState, i: usize) -> String {
    let runtime = &state.namespaces[i];
    let ns: &Namespace = &runtime.ns;
    let snap = NamespaceSnapshot::of(ns);
    let (used, capacity) = (snap.used_bytes, snap.capacity_bytes);
    let (free_wblocks, defrag_queue) = (snap.free_wblocks, snap.defrag_queue);
    let s = &ns.stats;
    let reads = s.reads.load(Relaxed);
    let mut out = String::new();
    let _ = write!(
        out,
        "ns_cluster_size=1;objects={};tombstones={};replication-factor={};default-ttl={};\
         nsup-period={};device_total_bytes={capacity};device_used_bytes={used};\
         device_free_pct={};device_available_pct={};free_wblocks={free_wblocks};\
         defrag_q={defrag_queue};index_used_bytes={};index_shm_reserved_bytes={};\
         index_huge_pages={};client_reads={reads};cache_read_pct={};device_reads={};\
         device_writes={};device_write_bytes={};client_writes={};client_deletes={};\
         checksum_failures={};device_overloads={};free_wblock_waits={};stop_writes_refusals={};\
         defrag_reads={};defrag_moved={};defrag_freed={};emergency_defrags={};\
         tombstones_reclaimed={};tombstones_kept={};tomb_raider_passes={};\
         tomb_raider_aborts={}",
        snap.objects,
        snap.tombstones,
        runtime.replication_factor,
        runtime.default_ttl_s,
        runtime.nsup_period_s,
        100 - percent(used, capacity),
        percent(snap.free_bytes, capacity),
        snap.index_shm_bytes_in_use,
        snap.index_shm_bytes_reserved,
        snap.index_huge_pages,
        snap.cache_hit_pct,
        s.device_reads.load(Relaxed),
        s.device_writes.load(Relaxed),
        s.device_write_bytes.load(Relaxed),
        s.writes.load(Relaxed),
        s.deletes.load(Relaxed),
        s.checksum_failures.load(Relaxed),
        s.overloads.load(Relaxed),
        s.free_block_waits.load(Relaxed),
        s.stop_writes.load(Relaxed),
        s.defrag_reads.load(Relaxed),
        s.defrag_moved.load(Relaxed),
        s.defrag_freed.load(Relaxed),
        s.emergency_defrags.load(Relaxed),
        s.tombstones_reclaimed.load(Relaxed),
        s.tombstones_kept.load(Relaxed),
        s.tomb_raider_passes.load(Relaxed),
        s.tomb_raider_aborts.load(Relaxed),
    );
    out
}

/// `sets` or `sets/<ns>` or `sets/<ns>/<set>`: one entry per set,
/// `ns=..:set=..:objects=..;`.
fn sets(state: &ServerState, _params: &str) -> String {
    let mut out = String::new();
    for n in &state.namespaces {
        let index = &n.ns.index;
        let mut id = 1u16;
        while let Some(name) = index.set_name(id) {
            let _ = write!(
                out,
                "ns={}:set={}:objects={}:tombstones=0:truncate_lut=0:sindexes=0:index_populating=false;",
                n.name,
                name,
                index.set_records(id)
            );
            id = id.saturating_add(1);
            if id == u16::MAX {
                break;
            }
        }
    }
    out
}

fn get_config(state: &ServerState, params: &str) -> String {
    let context = param(params, "context").unwrap_or("service");
    match context {
        "service" => format!(
            "cluster-name={};port={};service-threads={};proto-fd-max={}",
            if state.cluster_name.is_empty() {
                "null"
            } else {
                &state.cluster_name
            },
            state.port,
            state.cores.len(),
            state.max_connections,
        ),
        "namespace" => {
            let Some(name) = param(params, "namespace").or_else(|| param(params, "id")) else {
                return "ERROR:4:namespace not given".to_string();
            };
            let Some(i) = state.namespace(name.as_bytes()) else {
                return "ERROR:20:namespace not found".to_string();
            };
            state.namespaces[i]
                .config_pairs
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(";")
        }
        _ => format!("ERROR:4:unknown context {context}"),
    }
}

/// `truncate:namespace=<ns>;set=<set>[;lut=<ns since Unix epoch>]` and
/// `truncate-namespace:namespace=<ns>[;lut=...]`.
fn truncate(state: &ServerState, params: &str, whole_namespace: bool) -> String {
    let Some(name) = param(params, "namespace") else {
        return "ERROR:4:namespace not given".to_string();
    };
    let Some(i) = state.namespace(name.as_bytes()) else {
        return "ERROR:20:namespace not found".to_string();
    };
    let set = if whole_namespace {
        None
    } else {
        match param(params, "set") {
            Some(s) if !s.is_empty() => Some(s),
            _ => None,
        }
    };
    let before_ms = match param(params, "lut") {
        None => None,
        Some(text) => match text.parse::<u64>() {
            // A lut of 0 means "now", as the clients send it.
            Ok(0) => None,
            Ok(unix_ns) => {
                let unix_ms = unix_ns / 1_000_000;
                if unix_ms <= CITRUSLEAF_EPOCH_UNIX_MS {
                    return format!("ERROR:4:lut {text} is before 2010-01-01");
                }
                Some(unix_ms - CITRUSLEAF_EPOCH_UNIX_MS)
            }
            Err(_) => return format!("ERROR:4:lut {text} is not a number"),
        },
    };
    match state.namespaces[i].ns.truncate(set, before_ms) {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("ERROR:4:{e:?}"),
    }
}
