//! Restarts of ospreyd, driven through the official Rust client:
//!
//! * SIGTERM → start again: the log says `start: warm`, every record and its
//!   generation is intact, and the warm start is faster than a cold start of
//!   the same data (forced by removing the shm segments while it is down).
//! * SIGKILL while writers run (with `commit-to-device = true`) → the log says
//!   `start: cold`, and every acknowledged write is there with its value.

mod support;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aerospike::{
    as_bin, Bins, Client, ClientPolicy, Key, ReadPolicy, ResultCode, Value, WritePolicy,
};
use support::{Options, Server, StartKind, NAMESPACE as NS};

const RECORDS: i64 = 100_000;
const TASKS: i64 = 32;

async fn connect(server: &Server) -> Arc<Client> {
    let policy = ClientPolicy {
        timeout: 5_000,
        ..ClientPolicy::default()
    };
    let addr = server.addr();
    match tokio::time::timeout(Duration::from_secs(30), Client::new(&policy, &addr)).await {
        Ok(Ok(client)) => Arc::new(client),
        Ok(Err(e)) => panic!("Client::new({addr}) failed: {e}"),
        Err(_) => panic!("Client::new({addr}) did not return within 30 s"),
    }
}

async fn close(client: Arc<Client>) {
    let _ = tokio::time::timeout(Duration::from_secs(10), client.close()).await;
}

async fn bounded<T, F: Future<Output = T>>(what: &str, limit: Duration, body: F) -> T {
    match tokio::time::timeout(limit, body).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within {limit:?}"),
    }
}

fn wp(timeout_ms: u32) -> WritePolicy {
    let mut p = WritePolicy::default();
    p.base_policy.total_timeout = timeout_ms;
    p
}

fn rp() -> ReadPolicy {
    let mut p = ReadPolicy::default();
    p.base_policy.total_timeout = 5_000;
    p
}

fn load_key(i: i64) -> Key {
    Key::new(NS, "restart", Value::from(i)).unwrap()
}

/// Runs `f(i)` for every i in 0..n on TASKS concurrent tasks.
async fn for_all<F, Fut>(client: &Arc<Client>, n: i64, f: F)
where
    F: Fn(Arc<Client>, i64) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = ()> + Send,
{
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (client, f) = (client.clone(), f.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = t;
            while i < n {
                f(client.clone(), i).await;
                i += TASKS;
            }
        }));
    }
    for t in tasks {
        if let Err(e) = t.await {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

/// Record i holds {i, v: "value-i"}; every tenth record is written twice, so
/// its generation is 2.
async fn load(client: &Arc<Client>) {
    for_all(client, RECORDS, |client, i| async move {
        let writes = if i % 10 == 0 { 2 } else { 1 };
        for w in 0..writes {
            client
                .put(
                    &wp(5_000),
                    &load_key(i),
                    &[as_bin!("i", i), as_bin!("v", format!("value-{i}-{w}"))],
                )
                .await
                .unwrap_or_else(|e| panic!("load record {i}: {e}"));
        }
    })
    .await;
}

async fn verify(client: &Arc<Client>, when: &str) {
    let when = when.to_string();
    for_all(client, RECORDS, move |client, i| {
        let when = when.clone();
        async move {
            let rec = client
                .get(&rp(), &load_key(i), Bins::All)
                .await
                .unwrap_or_else(|e| panic!("{when}: record {i}: {e}"));
            let (gen, last) = if i % 10 == 0 { (2, 1) } else { (1, 0) };
            assert_eq!(rec.generation, gen, "{when}: record {i} generation");
            assert_eq!(
                rec.bins.get("i"),
                Some(&Value::Int(i)),
                "{when}: record {i}"
            );
            assert_eq!(
                rec.bins.get("v"),
                Some(&Value::from(format!("value-{i}-{last}"))),
                "{when}: record {i}"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_then_warm_start_keeps_everything_and_beats_cold_start() {
    let mut server = Server::start(0);
    assert_eq!(
        server.start_kind(),
        Some(StartKind::Cold),
        "first start of an empty device"
    );

    let client = connect(&server).await;
    let t = Instant::now();
    bounded(
        "loading 100k records",
        Duration::from_secs(300),
        load(&client),
    )
    .await;
    println!("loaded {RECORDS} records in {:?}", t.elapsed());
    close(client).await;
    assert!(
        !server.segments().is_empty(),
        "ospreyd holds no shm segments in its key range 0x{:08x}..",
        server.key_base()
    );

    // Two warm starts, then two cold ones; compare the fastest of each.
    let mut warm = Vec::new();
    let mut cold = Vec::new();
    for round in 0..2 {
        server.stop_clean();
        warm.push(server.restart());
        assert_eq!(
            server.start_kind(),
            Some(StartKind::Warm),
            "start after a clean shutdown (round {round})\n{}",
            server.log_text()
        );
        if round == 0 {
            let client = connect(&server).await;
            bounded(
                "verifying after a warm start",
                Duration::from_secs(300),
                verify(&client, "after warm start"),
            )
            .await;
            close(client).await;
        }
    }
    for round in 0..2 {
        server.stop_clean();
        let removed = server.remove_segments();
        assert!(removed > 0, "no segments to remove after a clean shutdown");
        cold.push(server.restart());
        assert_eq!(
            server.start_kind(),
            Some(StartKind::Cold),
            "start with the shm segments removed (round {round})\n{}",
            server.log_text()
        );
        if round == 0 {
            let client = connect(&server).await;
            bounded(
                "verifying after a cold start",
                Duration::from_secs(300),
                verify(&client, "after cold start"),
            )
            .await;
            close(client).await;
        }
    }
    let (w, c) = (*warm.iter().min().unwrap(), *cold.iter().min().unwrap());
    println!("time to ready with {RECORDS} records: warm {warm:?}, cold {cold:?}");
    assert!(
        w < c,
        "warm start ({warm:?}) is not faster than cold start ({cold:?}) with {RECORDS} records"
    );
    server.stop_clean();
}

const WRITERS: u32 = 8;
const KEYS_PER_WRITER: u64 = 2_000;

fn crash_key(writer: u32, slot: u64) -> Key {
    Key::new(NS, "crash", Value::from(format!("w{writer}-k{slot}"))).unwrap()
}

/// Per key: the last write the server acknowledged, and the last one sent.
#[derive(Default)]
struct WriterLog {
    acked: HashMap<u64, u64>,
    sent: HashMap<u64, u64>,
    acks: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_writes_loses_no_acknowledged_write() {
    let options = Options {
        commit_to_device: true,
        ..Options::default()
    };
    let mut server = Server::start_with(1, options);
    let client = connect(&server).await;

    // Writer w writes n = 0, 1, 2, ... to key slot n % KEYS_PER_WRITER, one
    // write at a time, until a write fails (the server is gone) or it is told
    // to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (client, stop) = (client.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut log = WriterLog::default();
            let policy = wp(2_000);
            let mut n: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                let slot = n % KEYS_PER_WRITER;
                log.sent.insert(slot, n);
                let bins = [
                    as_bin!("w", i64::from(w)),
                    as_bin!("n", n as i64),
                    as_bin!("pad", "p".repeat(100)),
                ];
                match client.put(&policy, &crash_key(w, slot), &bins).await {
                    Ok(()) => {
                        log.acked.insert(slot, n);
                        log.acks += 1;
                    }
                    Err(_) => break,
                }
                n += 1;
            }
            log
        }));
    }

    // Let them write for a while, then SIGKILL the server under them.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            server.is_running(),
            "ospreyd died under the writers\n{}",
            server.log_text()
        );
    }
    server.kill();
    stop.store(true, Ordering::Relaxed);
    let mut logs = Vec::new();
    for w in writers {
        logs.push(
            bounded("writers to stop", Duration::from_secs(60), w)
                .await
                .expect("writer task panicked"),
        );
    }
    close(client).await;
    let acks: u64 = logs.iter().map(|l| l.acks).sum();
    println!("{acks} writes acknowledged before SIGKILL");
    assert!(acks > 0, "no write was acknowledged in 3 s");

    server.restart();
    assert_eq!(
        server.start_kind(),
        Some(StartKind::Cold),
        "start after SIGKILL\n{}",
        server.log_text()
    );
    let client = connect(&server).await;
    let logs = Arc::new(logs);
    let c2 = client.clone();
    let problems = bounded("checking acknowledged writes", Duration::from_secs(300), async move {
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let (client, logs) = (c2.clone(), logs.clone());
            tasks.push(tokio::spawn(async move {
                let log = &logs[w as usize];
                let mut problems = Vec::new();
                for (&slot, &sent) in &log.sent {
                    let acked = log.acked.get(&slot).copied();
                    let name = format!("w{w}-k{slot}");
                    match client.get(&rp(), &crash_key(w, slot), Bins::All).await {
                        Ok(rec) => {
                            let n = match rec.bins.get("n") {
                                Some(Value::Int(n)) => *n as u64,
                                other => {
                                    problems.push(format!("{name}: bin n = {other:?}"));
                                    continue;
                                }
                            };
                            if rec.bins.get("w") != Some(&Value::Int(i64::from(w)))
                                || n % KEYS_PER_WRITER != slot
                                || n > sent
                            {
                                problems.push(format!(
                                    "{name}: holds {:?}, which was never written to it (last sent n = {sent})",
                                    rec.bins
                                ));
                            } else if acked.is_some_and(|a| n < a) {
                                problems.push(format!(
                                    "{name}: holds n = {n}, older than the acknowledged n = {}",
                                    acked.unwrap()
                                ));
                            }
                        }
                        Err(e) if e.server_result_code() == Some(ResultCode::KeyNotFoundError) => {
                            if let Some(a) = acked {
                                problems.push(format!("{name}: missing, but n = {a} was acknowledged"));
                            }
                        }
                        Err(e) => problems.push(format!("{name}: get failed: {e}")),
                    }
                }
                problems
            }));
        }
        let mut problems = Vec::new();
        for t in tasks {
            problems.extend(t.await.expect("checker task panicked"));
        }
        problems
    })
    .await;
    assert!(
        problems.is_empty(),
        "{} of the keys written before SIGKILL are wrong after the restart; the first ones:\n  {}\n{}",
        problems.len(),
        problems.iter().take(20).cloned().collect::<Vec<_>>().join("\n  "),
        server.log_text()
    );

    // The restarted server takes writes again.
    let k = crash_key(99, 0);
    client
        .put(&wp(5_000), &k, &[as_bin!("after", 1)])
        .await
        .expect("write after the restart");
    close(client).await;
    server.stop_clean();
}
