//! Write buffers on recycled memory.
//!
//! A core reuses the RAM of blocks evicted from the post-write cache as its
//! next open buffers, without zeroing them, and takes its device-write
//! buffers from a pool, also unzeroed. The story this guards: an open
//! buffer's bytes past its last record are the previous block's records.
//! If a flush copied them out, or a whole-block write did not zero its
//! tail, the device would hold images of other blocks' records where a cold
//! scan reads — harmless only as long as block lives stay distinct, and a
//! waste of the guarantee that a block holds its records and zeros. So the
//! device must hold nothing but this run's images and zeros, through
//! partial flushes, whole-block writes and defrag, and every record must
//! read back.

mod common;

use common::{clean_shutdown, demo_digest as digest, demo_get, small_config, SegmentsGuard};
use osprey_engine::device::memory::MemoryDevice;
use osprey_engine::device::Device;
use osprey_engine::ops::{Op, Request};
use osprey_engine::record::{self, BinName, Value};
use osprey_engine::result::ResultCode;
use osprey_engine::storage::core::{CoreStorage, Reply, Transaction};
use osprey_engine::storage::header::HEADER_REGION_BYTES;
use osprey_engine::storage::namespace::{system_clock, Namespace, StorageConfig};
use std::sync::Arc;
use std::time::Duration;

const WBLOCK_BYTES: u32 = 128 << 10;
const DEVICE_BYTES: u64 = 16 << 20;
const UNIT: usize = 4096;
/// The byte every value is made of: what stale memory would show.
const FILL: u8 = 0xAB;

fn put(n: u64, len: usize) -> Transaction {
    let mut value = vec![FILL; len];
    value[..8].copy_from_slice(&n.to_le_bytes());
    Transaction {
        request: Request {
            digest: digest(n),
            ops: vec![Op::write(
                BinName::new(b"v").unwrap(),
                Value::Blob(4, value),
            )],
            set_name: b"demo".to_vec(),
            ..Default::default()
        },
        durable_delete: false,
    }
}

fn key_of(reply: &Reply) -> Option<u64> {
    reply.bins.iter().find_map(|b| match &b.value {
        Some(Value::Blob(4, v)) if v.len() >= 8 => {
            Some(u64::from_le_bytes(v[..8].try_into().unwrap()))
        }
        _ => None,
    })
}

/// Polls until the flush timer has fired and the writes are done.
fn settle(core: &mut CoreStorage) {
    let mut out = Vec::new();
    for _ in 0..20 {
        core.poll(&mut out);
        std::thread::sleep(Duration::from_millis(2));
    }
    core.flush_all(Duration::from_secs(10)).unwrap();
}

/// Every byte of every write block is either inside an image that decodes
/// (checksum included) or zero. Returns the images found.
fn check_only_images_and_zeros(device: &MemoryDevice) -> usize {
    let bytes = device.durable_bytes(HEADER_REGION_BYTES..DEVICE_BYTES);
    let mut images = 0;
    for (b, block) in bytes.chunks(WBLOCK_BYTES as usize).enumerate() {
        let mut at = 0;
        while at < block.len() {
            match record::peek_image_len(&block[at..]) {
                Some(len)
                    if at + len <= block.len()
                        && record::decode(&block[at..at + len], None).is_ok() =>
                {
                    images += 1;
                    at += len;
                }
                _ => {
                    let next = (at / UNIT + 1) * UNIT;
                    let gap = &block[at..next.min(block.len())];
                    if let Some(i) = gap.iter().position(|&x| x != 0) {
                        panic!(
                            "write block {b}, offset {}: byte {:#04x} outside any image \
                             (stale memory written to the device)",
                            at + i,
                            gap[i]
                        );
                    }
                    at = next;
                }
            }
        }
    }
    images
}

#[test]
fn recycled_buffers_put_only_records_and_zeros_on_the_device() {
    let index = small_config(16);
    let _guard = SegmentsGuard(index.clone());
    let memory = MemoryDevice::new("mem0", DEVICE_BYTES, UNIT as u32, 64);
    let devices = vec![Arc::new(memory.clone()) as Arc<dyn Device>];
    let mut config = StorageConfig::new("test");
    config.write_block_bytes = WBLOCK_BYTES;
    config.flush_max_ms = 1;
    // One cached block: every retirement evicts one, whose memory the next
    // open buffer reuses.
    config.post_write_cache_blocks = 1;
    let (ns, _) = Namespace::open(config, &index, devices, Arc::new(system_clock)).unwrap();
    let mut core = CoreStorage::new(Arc::new(ns)).unwrap();

    // Fill several blocks with big records: their memory, full of FILL
    // bytes, goes back to the core as blocks leave the cache.
    let big = 3000;
    for n in 0..300 {
        assert_eq!(core.run(put(n, big)).result, ResultCode::Ok);
    }
    // Small records one at a time, each flushed on its own by the timer:
    // partial flushes of recycled buffers, padding to the next unit.
    for n in 300..340 {
        assert_eq!(core.run(put(n, 100)).result, ResultCode::Ok);
        settle(&mut core);
    }
    // Overwrite most big records so that blocks empty and defrag moves
    // the rest into (recycled) buffers too.
    for n in 0..280 {
        assert_eq!(core.run(put(n, big)).result, ResultCode::Ok);
    }
    settle(&mut core);

    for n in 0..340 {
        let reply = core.run(demo_get(n));
        assert_eq!(reply.result, ResultCode::Ok, "key {n}");
        assert_eq!(key_of(&reply), Some(n), "key {n} read back its own value");
    }
    clean_shutdown(core);
    let images = check_only_images_and_zeros(&memory);
    assert!(images >= 340, "found {images} images on the device");
}
