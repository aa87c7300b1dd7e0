//! `osprey-bench`: load for any server that speaks the Aerospike wire
//! protocol, with asbench's flags. See `osprey_perf::bench` for the design
//! and `--help` for the flags.
//!
//! ```text
//! osprey-bench -h 127.0.0.1:3000 -n test -k 100000 -o B512 -w I          # load
//! osprey-bench -h 127.0.0.1:3000 -k 100000 -o B512 -w RU,50 -t 10 -c 16  # 50/50
//! ```
//!
//! Output: one line a second (elapsed, ops/s and p50/p99/max latency per
//! kind, errors by cause, progress % for inserts and timed runs), then a
//! table of HDR percentiles per kind and in total. `--json FILE` writes
//! the same machine-readable; `--hdr-out DIR` writes HdrHistogram interval
//! logs. Bad flags, unreachable hosts or a missing namespace: one line on
//! stderr and exit code 2. A worker's I/O failure (not a server's answer,
//! which is counted) exits with code 1.
#![deny(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use osprey_perf::bench::args::{self, Parsed, Workload};
use osprey_perf::bench::report::{self, HdrLogs, IntervalSummary, RunInfo};
use osprey_perf::bench::stats::{Kind, Tally};
use osprey_perf::bench::worker::{Shared, Worker};
use osprey_perf::bench::{cluster, wire};

const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// How often the tend thread asks the nodes for their partition generation.
const TEND_INTERVAL: Duration = Duration::from_secs(1);

/// Keeps the workers' partition map current until `done`: once a
/// [`TEND_INTERVAL`], if a worker asked for it or a node's
/// `partition-generation` moved (or the node stopped answering), the map is
/// built again from the seeds and the known nodes and handed to the workers.
fn tend(shared: &Shared, done: &AtomicBool) {
    let mut next = Instant::now() + TEND_INTERVAL;
    let mut last_error = String::new();
    while !done.load(Ordering::Relaxed) {
        if Instant::now() < next {
            thread::sleep(Duration::from_millis(50));
            continue;
        }
        next = Instant::now() + TEND_INTERVAL;
        let current = shared.cluster();
        let credential = shared.credential.as_ref();
        let wanted = shared.refresh_wanted.swap(false, Ordering::Relaxed);
        if !wanted && !cluster::generations_changed(&current, credential) {
            continue;
        }
        // The known nodes are seeds too: the given ones may have left.
        let mut seeds = shared.config.hosts.clone();
        seeds.extend(
            current
                .nodes
                .iter()
                .map(|n| (n.addr.ip().to_string(), n.addr.port())),
        );
        match cluster::discover(&seeds, &shared.config.namespace, credential) {
            Ok(map) => {
                if !map.same_routes(&current) {
                    eprintln!(
                        "osprey-bench: new partition map: {} node(s)",
                        map.nodes.len()
                    );
                }
                last_error.clear();
                shared.publish(map);
            }
            Err(e) => {
                // Keep the old map; say so once per distinct problem.
                if e != last_error {
                    eprintln!("osprey-bench: partition map refresh failed: {e}");
                    last_error = e;
                }
            }
        }
    }
}

fn fail(code: i32, message: &str) -> ! {
    eprintln!("osprey-bench: {message}");
    std::process::exit(code);
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let config = match args::parse(&argv) {
        Ok(Parsed::Run(config)) => *config,
        Ok(Parsed::Help) => {
            println!("{}", args::USAGE);
            return;
        }
        Err(e) => fail(2, &e),
    };
    // Refuse an unwritable --json before the run rather than after it.
    if let Some(path) = &config.json {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => std::path::Path::new("."),
        };
        if !parent.is_dir() || path.is_dir() {
            fail(
                2,
                &format!(
                    "--json {}: not a file in an existing directory",
                    path.display()
                ),
            );
        }
    }
    let credential = config
        .credentials
        .as_ref()
        .map(|(user, password)| (user.clone(), wire::client_password_hash(password)));
    let cluster = match cluster::discover(&config.hosts, &config.namespace, credential.as_ref()) {
        Ok(c) => c,
        Err(e) => fail(2, &e),
    };
    let started_wall = SystemTime::now();
    let mut hdr = match &config.hdr_out {
        Some(dir) => match HdrLogs::create(dir, started_wall) {
            Ok(h) => Some(h),
            Err(e) => fail(2, &format!("--hdr-out {}: {e}", dir.display())),
        },
        None => None,
    };
    let nodes: Vec<(String, String)> = cluster
        .nodes
        .iter()
        .map(|n| (n.id.clone(), n.addr.to_string()))
        .collect();
    let kinds = report::kinds_of(&config);
    println!(
        "osprey-bench: {} node(s) [{}], namespace {}, set {}, keys {}..{}, object {}, workload {}, \
         {} thread(s) x {} command(s) in flight, {}{}{}",
        nodes.len(),
        nodes
            .iter()
            .map(|(id, addr)| format!("{id}@{addr}"))
            .collect::<Vec<_>>()
            .join(" "),
        config.namespace,
        config.set,
        config.start_key,
        i128::from(config.start_key) + i128::from(config.keys),
        report::object_text(&config.bins),
        report::workload_text(config.workload),
        config.threads,
        config.commands_per_thread,
        config
            .duration
            .map_or("until done".to_string(), |d| format!("{} s", d.as_secs())),
        if config.throughput > 0 {
            format!(", capped at {} ops/s", config.throughput)
        } else {
            String::new()
        },
        if config.batch_size > 0 {
            format!(
                ", batch reads of {} keys, keys {}",
                config.batch_size,
                report::distribution_text(config.distribution)
            )
        } else {
            format!(", keys {}", report::distribution_text(config.distribution))
        },
    );

    let shared = Arc::new(Shared::new(config, cluster, credential));
    let tend_done = Arc::new(AtomicBool::new(false));
    let tend = {
        let (shared, done) = (shared.clone(), tend_done.clone());
        thread::Builder::new()
            .name("tend".into())
            .spawn(move || tend(&shared, &done))
            .unwrap_or_else(|e| fail(1, &format!("spawn the tend thread: {e}")))
    };
    let config = &shared.config;
    let start = Instant::now();
    let mut handles = Vec::new();
    for index in 0..config.threads {
        let shared = shared.clone();
        let handle = thread::Builder::new()
            .name(format!("bench-{index}"))
            .spawn(move || Worker::new(shared, index)?.run())
            .unwrap_or_else(|e| fail(1, &format!("spawn a worker thread: {e}")));
        handles.push(handle);
    }

    let mut total = Tally::default();
    let mut interval_tally = Tally::default();
    let mut intervals: Vec<IntervalSummary> = Vec::new();
    let mut last_report = start;
    let mut next_report = start + REPORT_INTERVAL;
    let mut stop_at = config.duration.map(|d| start + d);
    let mut run_elapsed = None;
    loop {
        let finished = handles.iter().all(|h| h.is_finished());
        let now = Instant::now();
        if let Some(at) = stop_at {
            if now >= at {
                shared.stop.store(true, Ordering::Relaxed);
                run_elapsed.get_or_insert(now - start);
                stop_at = None;
            }
        }
        if finished || now >= next_report {
            if finished {
                run_elapsed.get_or_insert(now - start);
            }
            for slot in &shared.slots {
                let taken = std::mem::take(&mut *slot.lock().unwrap_or_else(|e| e.into_inner()));
                interval_tally.add(&taken);
            }
            let length = now - last_report;
            // The drain after the stop (or the end of an insert) is
            // counted in the totals; it gets a line only if it is long
            // enough for its rates to mean something, or is the only one.
            total.add(&interval_tally);
            let worth_a_line = !finished
                || (!interval_tally.is_empty()
                    && (length >= REPORT_INTERVAL / 4 || intervals.is_empty()));
            if worth_a_line {
                let progress = match config.workload {
                    Workload::Insert => {
                        let done = total.ops(Kind::Write) + total.total_errors();
                        Some(100.0 * done as f64 / config.keys as f64)
                    }
                    _ => config.duration.map(|d| {
                        (100.0 * (now - start).as_secs_f64() / d.as_secs_f64()).min(100.0)
                    }),
                };
                let (line, summary) =
                    report::interval_line(&kinds, &interval_tally, now - start, length, progress);
                if !config.quiet {
                    println!("{line}");
                }
                intervals.push(summary);
                if let Some(h) = hdr.as_mut() {
                    if let Err(e) = h.interval(&kinds, &interval_tally, last_report - start, length)
                    {
                        fail(1, &format!("--hdr-out: {e}"));
                    }
                }
            }
            interval_tally.clear();
            last_report = now;
            next_report = now + REPORT_INTERVAL;
            if finished {
                break;
            }
        }
        let wait = next_report
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(10));
        thread::sleep(wait);
    }
    for handle in handles {
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => fail(1, &format!("worker: {e}")),
            Err(_) => fail(1, "a worker thread panicked"),
        }
    }
    // Not joined: it may be inside an info call to a node that hangs, and
    // the run is over; it sees the flag within 50 ms otherwise.
    tend_done.store(true, Ordering::Relaxed);
    drop(tend);
    let elapsed = run_elapsed.unwrap_or_else(|| start.elapsed());

    println!();
    println!(
        "osprey-bench: {:.1} s, {} ops ({:.0}/s), {} errors",
        elapsed.as_secs_f64(),
        total.total_ops(),
        total.total_ops() as f64 / elapsed.as_secs_f64().max(1e-9),
        total.total_errors()
    );
    report::print_final(&kinds, &total, elapsed);
    if let Some(h) = hdr {
        if let Err(e) = h.finish(&kinds, &total, elapsed) {
            fail(1, &format!("--hdr-out: {e}"));
        }
    }
    if let Some(path) = &config.json {
        let info = RunInfo {
            config,
            nodes: &nodes,
            elapsed,
            intervals: &intervals,
        };
        let text = report::json_document(&info, &kinds, &total);
        if let Err(e) = std::fs::write(path, text) {
            fail(1, &format!("--json {}: {e}", path.display()));
        }
    }
}
