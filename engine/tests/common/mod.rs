//! Shared helpers for the engine's integration tests.
//!
//! Every test gets its own block of System V keys (derived from the process id
//! and a counter) so that tests can run in parallel, and a guard that removes
//! the segments when the test ends, panicking or not: the suite must leave
//! `ipcs -m` clean.

#![allow(dead_code)]

use osprey_engine::index::{IndexConfig, PageMode};
use osprey_engine::{Digest, Index, IndexRecord, Location};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT_SLOT: AtomicU32 = AtomicU32::new(0);

/// A key base no other live test in this run uses.
pub fn unique_key_base() -> u32 {
    let slot = NEXT_SLOT.fetch_add(1, Ordering::Relaxed) & 0x7F;
    0x2000_0000 + ((std::process::id() & 0xFF) << 20) + (slot << 13)
}

/// A small-stage config for tests: 1 MiB stages on normal pages.
pub fn small_config(sprigs: u32) -> IndexConfig {
    IndexConfig {
        namespace_id: 1,
        shm_key_base: unique_key_base(),
        pages: PageMode::Normal,
        sprigs_per_partition: sprigs,
        stage_size_bytes: 1 << 20,
        max_stages: 64,
        walk_threads: 2,
    }
}

/// Removes the config's segments when dropped.
pub struct SegmentsGuard(pub IndexConfig);

impl Drop for SegmentsGuard {
    fn drop(&mut self) {
        let _ = Index::destroy_segments(&self.0);
    }
}

/// A deterministic digest for `n` (RIPEMD-160 of an integer key in set "t").
pub fn digest(n: u64) -> Digest {
    Digest::compute("t", &osprey_engine::UserKey::Integer(n as i64))
}

/// A record for `digest` whose fields all derive from `seed`.
pub fn record(digest: Digest, seed: u64) -> IndexRecord {
    IndexRecord {
        digest,
        location: Location {
            device: (seed % 7) as u8,
            rblock_id: seed.wrapping_mul(3) % (1 << 40),
            n_rblocks: 1 + (seed % 500) as u32,
        },
        generation: (seed % 65_536) as u16,
        void_time: (seed % 3) as u32 * 1_000,
        last_update_ms: seed.wrapping_mul(11) % (1 << 48),
        set_id: (seed % 4) as u16,
        tombstone: seed.is_multiple_of(13),
        key_stored: seed.is_multiple_of(2),
    }
}

// ---- storage fixtures ------------------------------------------------------

use osprey_engine::device::memory::MemoryDevice;
use osprey_engine::device::Device;
use osprey_engine::ops::Request;
use osprey_engine::storage::core::{CoreStorage, Transaction};
use std::sync::Arc;
use std::time::Duration;

pub const MIB: u64 = 1 << 20;

/// `n` memory devices of 16 MiB (4 KiB units, 64-deep queues), and the same
/// devices as the engine takes them.
pub fn memory_devices(n: usize) -> (Vec<MemoryDevice>, Vec<Arc<dyn Device>>) {
    let memory: Vec<MemoryDevice> = (0..n)
        .map(|i| MemoryDevice::new(&format!("mem{i}"), 16 * MIB, 4096, 64))
        .collect();
    let devices = memory
        .iter()
        .map(|m| Arc::new(m.clone()) as Arc<dyn Device>)
        .collect();
    (memory, devices)
}

/// The digest of integer key `n` in set "demo".
pub fn demo_digest(n: u64) -> Digest {
    Digest::compute("demo", &osprey_engine::UserKey::Integer(n as i64))
}

/// Reads all bins of key `n` in set "demo".
pub fn demo_get(n: u64) -> Transaction {
    Transaction {
        request: Request {
            digest: demo_digest(n),
            read_all_bins: true,
            set_name: b"demo".to_vec(),
            ..Default::default()
        },
        durable_delete: false,
    }
}

/// Deletes key `n` in set "demo", leaving a tombstone when `durable`.
pub fn demo_delete(n: u64, durable: bool) -> Transaction {
    Transaction {
        request: Request {
            digest: demo_digest(n),
            delete: true,
            set_name: b"demo".to_vec(),
            ..Default::default()
        },
        durable_delete: durable,
    }
}

/// Flushes the core and shuts its namespace down cleanly (the next start
/// is warm).
pub fn clean_shutdown(mut core: CoreStorage) {
    core.flush_all(Duration::from_secs(10)).unwrap();
    let ns = core.namespace().clone();
    drop(core);
    Arc::try_unwrap(ns)
        .ok()
        .expect("no other references")
        .shutdown()
        .unwrap();
}

/// One 16 MiB memory device (4 KiB units, 64-deep queue), a namespace
/// config and a small index config with its segments guard: the fixture of
/// tests that stop and start one namespace again and again.
pub struct MemoryFixture {
    pub index: IndexConfig,
    pub _guard: SegmentsGuard,
    pub mem: MemoryDevice,
    pub config: osprey_engine::storage::namespace::StorageConfig,
}

impl MemoryFixture {
    pub fn new(config: osprey_engine::storage::namespace::StorageConfig) -> MemoryFixture {
        let index = small_config(16);
        MemoryFixture {
            _guard: SegmentsGuard(index.clone()),
            index,
            mem: MemoryDevice::new("mem0", 16 * MIB, 4096, 64),
            config,
        }
    }

    /// Starts the namespace on the device (warm or cold, as it finds it).
    pub fn open(&self) -> (CoreStorage, osprey_engine::storage::namespace::StartKind) {
        let (ns, kind) = osprey_engine::storage::namespace::Namespace::open(
            self.config.clone(),
            &self.index,
            vec![Arc::new(self.mem.clone()) as Arc<dyn Device>],
            Arc::new(osprey_engine::storage::namespace::system_clock),
        )
        .expect("start");
        (CoreStorage::new(Arc::new(ns)).unwrap(), kind)
    }
}
