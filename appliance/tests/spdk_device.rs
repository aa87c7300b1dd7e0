//! ospreyd on an SPDK device (feature `spdk`), end to end: SPDK's own
//! `nvmf_tgt` serves a file as an NVMe/TCP namespace on 127.0.0.1, ospreyd
//! attaches to it as to a drive, and the official Rust client writes and
//! reads records through a cold start, a warm restart (SIGTERM, start
//! again: `start: warm`) and a forced cold restart (shared memory removed
//! while it is down: `start: cold`, everything rebuilt from the device).
//!
//! Skipped, with the reason printed, when built without `--features spdk` or
//! when the host has no SPDK `nvmf_tgt` or no free hugepages.

mod support;

#[cfg(feature = "spdk")]
use std::sync::Arc;
#[cfg(feature = "spdk")]
use std::time::Duration;

#[cfg(feature = "spdk")]
use aerospike::{as_bin, Bins, Client, Key, ReadPolicy, Value, WritePolicy};
#[cfg(feature = "spdk")]
use osprey_engine::device::spdk::testing::{host_unready, NvmfTarget, TargetOptions};
#[cfg(feature = "spdk")]
use support::client::connect;
#[cfg(feature = "spdk")]
use support::{Options, Server, StartKind, NAMESPACE as NS};

#[cfg(feature = "spdk")]
const RECORDS: i64 = 2_000;

#[cfg(feature = "spdk")]
fn key(i: i64) -> Key {
    Key::new(NS, "spdk", Value::from(i)).unwrap()
}

#[cfg(feature = "spdk")]
async fn write_all(client: &Client) {
    let mut policy = WritePolicy::default();
    policy.base_policy.total_timeout = 5_000;
    for i in 0..RECORDS {
        let bins = [
            as_bin!("i", i),
            as_bin!("s", format!("value-{i}-{}", "x".repeat((i % 300) as usize))),
        ];
        tokio::time::timeout(Duration::from_secs(10), client.put(&policy, &key(i), &bins))
            .await
            .unwrap_or_else(|_| panic!("put {i} timed out"))
            .unwrap_or_else(|e| panic!("put {i}: {e}"));
    }
}

#[cfg(feature = "spdk")]
async fn verify_all(client: &Client, when: &str) {
    let mut policy = ReadPolicy::default();
    policy.base_policy.total_timeout = 5_000;
    for i in 0..RECORDS {
        let record = tokio::time::timeout(
            Duration::from_secs(10),
            client.get(&policy, &key(i), Bins::All),
        )
        .await
        .unwrap_or_else(|_| panic!("{when}: get {i} timed out"))
        .unwrap_or_else(|e| panic!("{when}: get {i}: {e}"));
        assert_eq!(
            record.bins.get("i"),
            Some(&Value::from(i)),
            "{when}: record {i}"
        );
        let want = format!("value-{i}-{}", "x".repeat((i % 300) as usize));
        assert_eq!(
            record.bins.get("s"),
            Some(&Value::from(want)),
            "{when}: record {i}"
        );
    }
}

/// Points the fixture's config at `device` instead of its file.
#[cfg(feature = "spdk")]
fn use_device(server: &Server, device: &str) {
    let path = server.config_path();
    let text = std::fs::read_to_string(path).unwrap();
    let mut replaced = false;
    let text: Vec<String> = text
        .lines()
        .map(|line| {
            if line.trim_start().starts_with("devices") {
                replaced = true;
                format!("devices = [\"{device}\"]")
            } else {
                line.to_string()
            }
        })
        .collect();
    assert!(replaced, "no devices line in {}", path.display());
    std::fs::write(path, text.join("\n") + "\n").unwrap();
}

/// Says why a test did nothing, past the test harness's output capture
/// (which takes `eprintln!`), so a plain `cargo test` shows it.
#[allow(dead_code)] // unused in some feature combinations
fn skip(why: std::fmt::Arguments) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ospreyd_serves_from_an_spdk_device_through_warm_and_cold_restarts() {
    #[cfg(not(feature = "spdk"))]
    skip(format_args!(
        "skipped: built without `--features spdk` (needs an installed SPDK: \
         PKG_CONFIG_PATH=<prefix>/lib/pkgconfig cargo test -p osprey-appliance --features spdk)"
    ));
    #[cfg(feature = "spdk")]
    spdk_end_to_end().await;
}

#[cfg(feature = "spdk")]
async fn spdk_end_to_end() {
    if let Some(why) = host_unready(1024) {
        skip(format_args!("skipped: {why}"));
        return;
    }
    let work_dir = std::env::temp_dir().join(format!("osprey-spdk-e2e-{}", std::process::id()));
    let target = NvmfTarget::start(&TargetOptions {
        file: work_dir.join("namespace.img"),
        size_bytes: 256 << 20,
        block_size: 4096,
        core_mask: "0x1".to_string(),
        work_dir: work_dir.clone(),
    })
    .unwrap_or_else(|e| panic!("cannot start nvmf_tgt: {e}"));
    let device = format!("{} ns=1", target.transport_id());

    // The fixture starts on its own file; stop it, point it at the SPDK
    // device, and start again: a cold start on a blank namespace.
    let mut server = Server::start_with(0, Options::default());
    server.stop_clean();
    use_device(&server, &device);
    server.remove_segments();
    server.restart();
    assert_eq!(
        server.start_kind(),
        Some(StartKind::Cold),
        "{}",
        server.log_text()
    );
    assert!(
        server.log_text().contains("trtype:TCP"),
        "the log does not name the SPDK device\n{}",
        server.log_text()
    );
    let client = connect(&server).await;
    write_all(&client).await;
    verify_all(&client, "after writing").await;
    let _ = tokio::time::timeout(Duration::from_secs(10), client.close()).await;

    // SIGTERM and start again: warm, from the shared-memory index.
    let warm_after = server.restart();
    assert_eq!(
        server.start_kind(),
        Some(StartKind::Warm),
        "{}",
        server.log_text()
    );
    let client = connect(&server).await;
    verify_all(&client, "after a warm restart").await;
    let _ = tokio::time::timeout(Duration::from_secs(10), client.close()).await;

    // Stop, remove the index, start again: cold, everything read back from
    // the SPDK device.
    server.stop_clean();
    assert!(server.remove_segments() > 0, "no index segments to remove");
    let cold_after = server.restart();
    assert_eq!(
        server.start_kind(),
        Some(StartKind::Cold),
        "{}",
        server.log_text()
    );
    let client = Arc::new(connect(&server).await);
    verify_all(&client, "after a cold restart").await;
    eprintln!(
        "spdk end to end: {RECORDS} records; ready after a warm restart in {warm_after:?}, \
         after a cold restart in {cold_after:?}"
    );
    server.stop_clean();
    drop(server);
    drop(target);
    let _ = std::fs::remove_dir_all(&work_dir);
}
