//! What `osprey-bench` prints and writes: the once-a-second line, the final
//! percentile table, the `--json` document and the `--hdr-out` logs.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;

use super::args::{BinSpec, Config, Distribution, Workload};
use super::stats::{Kind, Tally};
use crate::{json_string, print_table};

/// The percentiles of the final table and the JSON.
pub const PERCENTILES: [(&str, f64); 5] = [
    ("p50", 50.0),
    ("p90", 90.0),
    ("p99", 99.0),
    ("p99.9", 99.9),
    ("p99.99", 99.99),
];

/// The kinds of command a workload issues.
pub fn kinds_of(config: &Config) -> Vec<Kind> {
    let read = if config.batch_size > 0 {
        Kind::Batch
    } else {
        Kind::Read
    };
    match config.workload {
        Workload::Insert => vec![Kind::Write],
        Workload::ReadUpdate { read_pct } | Workload::ReadReplace { read_pct } => {
            let mut kinds = Vec::new();
            if read_pct > 0 {
                kinds.push(read);
            }
            if read_pct < 100 {
                kinds.push(Kind::Write);
            }
            kinds
        }
        Workload::ReadUpdateDelete {
            read_pct,
            write_pct,
        } => {
            let mut kinds = Vec::new();
            if read_pct > 0 {
                kinds.push(read);
            }
            if write_pct > 0 {
                kinds.push(Kind::Write);
            }
            if read_pct + write_pct < 100 {
                kinds.push(Kind::Delete);
            }
            kinds
        }
    }
}

pub fn workload_text(workload: Workload) -> String {
    match workload {
        Workload::Insert => "I".into(),
        Workload::ReadUpdate { read_pct } => format!("RU,{read_pct}"),
        Workload::ReadReplace { read_pct } => format!("RR,{read_pct}"),
        Workload::ReadUpdateDelete {
            read_pct,
            write_pct,
        } => format!("RUD,{read_pct},{write_pct}"),
    }
}

pub fn object_text(bins: &[BinSpec]) -> String {
    bins.iter()
        .map(|b| match b {
            BinSpec::Integer => "I".to_string(),
            BinSpec::Blob(n) => format!("B{n}"),
            BinSpec::String(n) => format!("S{n}"),
        })
        .collect::<Vec<_>>()
        .join(",")
}

pub fn distribution_text(d: Distribution) -> String {
    match d {
        Distribution::Uniform => "uniform".into(),
        Distribution::Zipf { theta } => format!("zipf,{theta}"),
    }
}

fn rate(count: u64, elapsed: Duration) -> f64 {
    let s = elapsed.as_secs_f64();
    if s > 0.0 {
        count as f64 / s
    } else {
        0.0
    }
}

/// One second's summary, kept for the JSON.
#[derive(Clone, Debug)]
pub struct IntervalSummary {
    pub elapsed_s: f64,
    pub ops_per_s: Vec<(Kind, f64)>,
    /// (kind, p50, p99, max) in µs.
    pub latency_us: Vec<(Kind, u64, u64, u64)>,
    pub errors: Vec<(String, u64)>,
}

/// The once-a-second line for `tally` (the last `interval` of the run).
pub fn interval_line(
    kinds: &[Kind],
    tally: &Tally,
    elapsed: Duration,
    interval: Duration,
    progress_pct: Option<f64>,
) -> (String, IntervalSummary) {
    let mut line = format!("[{:>5.0}s]", elapsed.as_secs_f64());
    let mut summary = IntervalSummary {
        elapsed_s: elapsed.as_secs_f64(),
        ops_per_s: Vec::new(),
        latency_us: Vec::new(),
        errors: tally
            .errors
            .iter()
            .map(|(e, n)| (e.to_string(), *n))
            .collect(),
    };
    for &kind in kinds {
        let ops = rate(tally.ops(kind), interval);
        let h = tally.latency(kind);
        let (p50, p99, max) = if h.is_empty() {
            (0, 0, 0)
        } else {
            (h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max())
        };
        let _ = write!(
            line,
            " {} {:.0}/s p50/p99/max {p50}/{p99}/{max} us |",
            kind.name(),
            ops
        );
        summary.ops_per_s.push((kind, ops));
        summary.latency_us.push((kind, p50, p99, max));
    }
    let _ = write!(line, " errors {}", tally.errors_text());
    if let Some(pct) = progress_pct {
        let _ = write!(line, " | {pct:5.1}%");
    }
    (line, summary)
}

fn percentile_cells(h: &Histogram<u64>) -> Vec<String> {
    let mut cells: Vec<String> = PERCENTILES
        .iter()
        .map(|(_, q)| {
            if h.is_empty() {
                "-".into()
            } else {
                h.value_at_percentile(*q).to_string()
            }
        })
        .collect();
    cells.push(if h.is_empty() {
        "-".into()
    } else {
        h.max().to_string()
    });
    cells
}

/// The final table: one row per kind and a total.
pub fn print_final(kinds: &[Kind], total: &Tally, elapsed: Duration) {
    let header = [
        "kind",
        "ops",
        "ops/s",
        "not found",
        "p50 us",
        "p90 us",
        "p99 us",
        "p99.9 us",
        "p99.99 us",
        "max us",
    ];
    let mut rows: Vec<Vec<String>> = Vec::new();
    for &kind in kinds {
        let mut row = vec![
            kind.name().to_string(),
            total.ops(kind).to_string(),
            format!("{:.0}", rate(total.ops(kind), elapsed)),
            total.not_found(kind).to_string(),
        ];
        row.extend(percentile_cells(total.latency(kind)));
        rows.push(row);
    }
    let all = total.all_latency();
    let mut row = vec![
        "total".to_string(),
        total.total_ops().to_string(),
        format!("{:.0}", rate(total.total_ops(), elapsed)),
        total.not_found.iter().sum::<u64>().to_string(),
    ];
    row.extend(percentile_cells(&all));
    rows.push(row);
    print_table(&header, &rows, &[0]);
    println!("errors: {} ({})", total.total_errors(), total.errors_text());
    if kinds.contains(&Kind::Batch) {
        let keys = total.batch_keys_found + total.batch_keys_not_found;
        println!(
            "batch keys: {keys} ({:.0}/s), found {}, not found {}",
            rate(keys, elapsed),
            total.batch_keys_found,
            total.batch_keys_not_found
        );
    }
}

fn latency_json(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "null".into();
    }
    let mut out = String::from("{");
    for (name, q) in PERCENTILES {
        let _ = write!(out, "\"{name}\": {}, ", h.value_at_percentile(q));
    }
    let _ = write!(out, "\"max\": {}, \"mean\": {:.1}}}", h.max(), h.mean());
    out
}

/// What the JSON document describes besides the tallies.
pub struct RunInfo<'a> {
    pub config: &'a Config,
    pub nodes: &'a [(String, String)],
    pub elapsed: Duration,
    pub intervals: &'a [IntervalSummary],
}

pub fn json_document(info: &RunInfo<'_>, kinds: &[Kind], total: &Tally) -> String {
    let c = info.config;
    let mut out = String::from("{\n");
    let _ = writeln!(out, "  \"bench\": \"osprey-bench\",");
    let nodes: Vec<String> = info
        .nodes
        .iter()
        .map(|(id, addr)| {
            format!(
                "{{\"id\": {}, \"addr\": {}}}",
                json_string(id),
                json_string(addr)
            )
        })
        .collect();
    let _ = writeln!(out, "  \"nodes\": [{}],", nodes.join(", "));
    let _ = writeln!(
        out,
        "  \"config\": {{\"namespace\": {}, \"set\": {}, \"keys\": {}, \"start_key\": {}, \
         \"object_spec\": {}, \"workload\": {}, \"threads\": {}, \"commands_per_thread\": {}, \
         \"duration_s\": {}, \"throughput_cap\": {}, \"batch_size\": {}, \"keys_distribution\": {}}},",
        json_string(&c.namespace),
        json_string(&c.set),
        c.keys,
        c.start_key,
        json_string(&object_text(&c.bins)),
        json_string(&workload_text(c.workload)),
        c.threads,
        c.commands_per_thread,
        c.duration.map_or(0, |d| d.as_secs()),
        c.throughput,
        c.batch_size,
        json_string(&distribution_text(c.distribution)),
    );
    let _ = writeln!(out, "  \"elapsed_s\": {:.3},", info.elapsed.as_secs_f64());
    let _ = writeln!(out, "  \"kinds\": [");
    let rows: Vec<String> = kinds
        .iter()
        .map(|&k| {
            format!(
                "    {{\"kind\": \"{}\", \"ops\": {}, \"ops_per_s\": {:.1}, \"not_found\": {}, \"latency_us\": {}}}",
                k.name(),
                total.ops(k),
                rate(total.ops(k), info.elapsed),
                total.not_found(k),
                latency_json(total.latency(k))
            )
        })
        .collect();
    let _ = writeln!(out, "{}\n  ],", rows.join(",\n"));
    let _ = writeln!(
        out,
        "  \"total\": {{\"ops\": {}, \"ops_per_s\": {:.1}, \"errors\": {}, \"latency_us\": {}}},",
        total.total_ops(),
        rate(total.total_ops(), info.elapsed),
        total.total_errors(),
        latency_json(&total.all_latency())
    );
    let errors: Vec<String> = total
        .errors
        .iter()
        .map(|(e, n)| format!("{}: {n}", json_string(&e.to_string())))
        .collect();
    let _ = writeln!(out, "  \"errors\": {{{}}},", errors.join(", "));
    let _ = writeln!(
        out,
        "  \"batch_keys\": {{\"found\": {}, \"not_found\": {}}},",
        total.batch_keys_found, total.batch_keys_not_found
    );
    let _ = writeln!(out, "  \"intervals\": [");
    let rows: Vec<String> = info
        .intervals
        .iter()
        .map(|i| {
            let ops: Vec<String> = i
                .ops_per_s
                .iter()
                .map(|(k, r)| format!("\"{}\": {r:.1}", k.name()))
                .collect();
            let lat: Vec<String> = i
                .latency_us
                .iter()
                .map(|(k, p50, p99, max)| {
                    format!("\"{}\": {{\"p50\": {p50}, \"p99\": {p99}, \"max\": {max}}}", k.name())
                })
                .collect();
            let errors: Vec<String> = i
                .errors
                .iter()
                .map(|(e, n)| format!("{}: {n}", json_string(e)))
                .collect();
            format!(
                "    {{\"elapsed_s\": {:.3}, \"ops_per_s\": {{{}}}, \"latency_us\": {{{}}}, \"errors\": {{{}}}}}",
                i.elapsed_s,
                ops.join(", "),
                lat.join(", "),
                errors.join(", ")
            )
        })
        .collect();
    let _ = writeln!(out, "{}\n  ]", rows.join(",\n"));
    out.push_str("}\n");
    out
}

/// Histogram logs under `--hdr-out`: `intervals.hlog` gets each second's
/// histogram per kind (tagged with the kind's name) as the run goes;
/// `total.hlog` the whole run's, per kind and `total`. Both are
/// HdrHistogram interval logs of V2-deflate histograms (values in µs), as
/// `HistogramLogProcessor` and the hdrhistogram crates read.
pub struct HdrLogs {
    dir: std::path::PathBuf,
    intervals: BufWriter<File>,
    serializer: V2DeflateSerializer,
    base: SystemTime,
    header_written: bool,
}

fn io_error<E: std::fmt::Debug>(e: E) -> std::io::Error {
    std::io::Error::other(format!("{e:?}"))
}

impl HdrLogs {
    pub fn create(dir: &Path, base: SystemTime) -> std::io::Result<HdrLogs> {
        std::fs::create_dir_all(dir)?;
        let intervals = BufWriter::new(File::create(dir.join("intervals.hlog"))?);
        Ok(HdrLogs {
            dir: dir.to_path_buf(),
            intervals,
            serializer: V2DeflateSerializer::new(),
            base,
            header_written: false,
        })
    }

    /// Appends one interval's histograms (`start` counted from the run's
    /// start).
    pub fn interval(
        &mut self,
        kinds: &[Kind],
        tally: &Tally,
        start: Duration,
        length: Duration,
    ) -> std::io::Result<()> {
        let mut builder = IntervalLogWriterBuilder::new();
        if !self.header_written {
            builder
                .add_comment("osprey-bench latency, microseconds, one interval per kind per second")
                .with_start_time(self.base)
                .with_base_time(self.base);
            self.header_written = true;
        }
        let mut writer = builder.begin_log_with(&mut self.intervals, &mut self.serializer)?;
        for &kind in kinds {
            writer
                .write_histogram(tally.latency(kind), start, length, Tag::new(kind.name()))
                .map_err(io_error)?;
        }
        Ok(())
    }

    pub fn finish(
        mut self,
        kinds: &[Kind],
        total: &Tally,
        elapsed: Duration,
    ) -> std::io::Result<()> {
        self.intervals.flush()?;
        let mut file = BufWriter::new(File::create(self.dir.join("total.hlog"))?);
        let mut builder = IntervalLogWriterBuilder::new();
        builder
            .add_comment("osprey-bench latency over the whole run, microseconds")
            .with_start_time(self.base)
            .with_base_time(self.base);
        let mut writer = builder.begin_log_with(&mut file, &mut self.serializer)?;
        for &kind in kinds {
            writer
                .write_histogram(
                    total.latency(kind),
                    Duration::ZERO,
                    elapsed,
                    Tag::new(kind.name()),
                )
                .map_err(io_error)?;
        }
        writer
            .write_histogram(
                &total.all_latency(),
                Duration::ZERO,
                elapsed,
                Tag::new("total"),
            )
            .map_err(io_error)?;
        drop(writer);
        file.flush()
    }
}
