//! `osprey-bench`'s flags (asbench's names) and their checked form,
//! [`Config`]. Every refusal is one line naming the flag and what it
//! accepts; the binary prints it and exits with code 2.

use std::path::PathBuf;
use std::time::Duration;

use super::wire::Bin;

pub const USAGE: &str = "\
usage: osprey-bench [-h HOST[:PORT][,HOST...]] [-p PORT] [-n NAMESPACE] [-s SET]
                    [-k KEYS] [-K START_KEY] [-o OBJECT_SPEC] [-w WORKLOAD]
                    [-z THREADS] [-c COMMANDS_PER_THREAD] [-t SECONDS] [-g OPS_PER_S]
                    [--batch-size N] [--keys-distribution uniform|zipf[,THETA]]
                    [--user USER --password PASSWORD] [--json FILE] [--hdr-out DIR]
                    [--spin-us MICROSECONDS] [--quiet] [--help]
  -o   I (8-byte integer bin), B<n> (blob of n bytes), S<n> (string of n bytes);
       a comma list makes several bins. Default I.
  -w   I (insert the key range once), RU,<read%> (read/update),
       RR,<read%> (read/replace), RUD,<read%>,<write%> (read/update/delete).
       Default RU,50.
  -c   commands in flight per thread, each on its own connection. Default 1.
  -t   seconds to run; 0 = until the workload ends (I: all keys inserted).
  --spin-us  with commands in flight, poll without sleeping for this long
       after the last reply (a thread on a core of its own then takes the
       server's replies without being woken). Default 0: sleep at once.";

/// Largest blob or string bin `-o` accepts (the protocol allows more; a
/// server refuses records over its write block anyway).
pub const MAX_BIN_BYTES: usize = 8 << 20;
pub const MAX_THREADS: usize = 1024;
pub const MAX_COMMANDS_PER_THREAD: usize = 4096;
pub const MAX_BATCH_SIZE: usize = 5000;
pub const MAX_BINS: usize = 64;
/// Longest `--spin-us`: beyond a second a spinning thread is just a busy loop.
pub const MAX_SPIN_US: u64 = 1_000_000;

/// One bin of `-o`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinSpec {
    Integer,
    Blob(usize),
    String(usize),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Workload {
    /// Insert every key of the range once, then stop.
    Insert,
    /// Random reads (`read_pct`) and updates.
    ReadUpdate { read_pct: u32 },
    /// Random reads and replaces (CREATE_OR_REPLACE).
    ReadReplace { read_pct: u32 },
    /// Random reads, updates (`write_pct`) and deletes (the rest).
    ReadUpdateDelete { read_pct: u32, write_pct: u32 },
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Distribution {
    Uniform,
    /// YCSB's zipfian generator with this theta, scrambled over the range.
    Zipf {
        theta: f64,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Seed hosts as given (`host`, `port`).
    pub hosts: Vec<(String, u16)>,
    pub namespace: String,
    pub set: String,
    pub keys: u64,
    pub start_key: i64,
    pub bins: Vec<BinSpec>,
    pub workload: Workload,
    pub threads: usize,
    pub commands_per_thread: usize,
    /// `None`: until the workload ends.
    pub duration: Option<Duration>,
    /// Ops/s across all threads; 0 = no cap.
    pub throughput: u64,
    /// Keys per batch read; 0 = single-key reads.
    pub batch_size: usize,
    pub distribution: Distribution,
    /// `(user, password)` for LOGIN on every connection.
    pub credentials: Option<(String, String)>,
    pub json: Option<PathBuf>,
    pub hdr_out: Option<PathBuf>,
    /// How long a thread with commands in flight polls without sleeping
    /// after its last reply.
    pub spin: Duration,
    pub quiet: bool,
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Parsed {
    Run(Box<Config>),
    Help,
}

impl Config {
    /// The bins every write sends: `testbin`, `testbin_2`, ...; integers
    /// are patched with the key per write (see the worker), blobs and
    /// strings carry fixed filler.
    pub fn template_bins(&self) -> Vec<Bin> {
        self.bins
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let name = if i == 0 {
                    "testbin".to_string()
                } else {
                    format!("testbin_{}", i + 1)
                };
                let (particle_type, value) = match *spec {
                    BinSpec::Integer => (1, vec![0; 8]),
                    BinSpec::Blob(n) => (4, (0..n).map(|j| (j * 131 + 7) as u8).collect()),
                    BinSpec::String(n) => (3, (0..n).map(|j| b'a' + (j % 26) as u8).collect()),
                };
                Bin {
                    name,
                    particle_type,
                    value,
                }
            })
            .collect()
    }

    /// Whether the workload reads at all.
    pub fn reads(&self) -> bool {
        match self.workload {
            Workload::Insert => false,
            Workload::ReadUpdate { read_pct }
            | Workload::ReadReplace { read_pct }
            | Workload::ReadUpdateDelete { read_pct, .. } => read_pct > 0,
        }
    }
}

fn parse_number<T: std::str::FromStr>(flag: &str, text: &str, what: &str) -> Result<T, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("{flag}: {text:?} is not {what}"))
}

fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    flag: &str,
    value: T,
    low: T,
    high: T,
) -> Result<T, String> {
    if value < low || value > high {
        return Err(format!("{flag}: {value} is outside {low}..={high}"));
    }
    Ok(value)
}

fn parse_hosts(text: &str, default_port: u16) -> Result<Vec<(String, u16)>, String> {
    let mut hosts = Vec::new();
    for item in text.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(format!("-h: empty host in {text:?}"));
        }
        // "[v6]:port", "[v6]", "host:port", "host"; a bare v6 address has
        // several colons and no port.
        let (host, port) = if let Some(rest) = item.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("-h: {item:?} has no closing ']'"))?;
            match after.strip_prefix(':') {
                Some(port) => (host.to_string(), Some(port)),
                None if after.is_empty() => (host.to_string(), None),
                None => return Err(format!("-h: {item:?} has junk after ']'")),
            }
        } else if item.matches(':').count() == 1 {
            let (host, port) = item.split_once(':').expect("one colon");
            (host.to_string(), Some(port))
        } else {
            (item.to_string(), None)
        };
        let port = match port {
            Some(p) => {
                let port: u32 = parse_number("-h", p, "a port number")?;
                in_range("-h (port)", port, 1, 65535)? as u16
            }
            None => default_port,
        };
        if host.is_empty() {
            return Err(format!("-h: empty host name in {item:?}"));
        }
        hosts.push((host, port));
    }
    Ok(hosts)
}

fn parse_object_spec(text: &str) -> Result<Vec<BinSpec>, String> {
    let mut bins = Vec::new();
    for item in text.split(',') {
        let item = item.trim();
        let size = |rest: &str| -> Result<usize, String> {
            let n: usize = parse_number("-o", rest, "a byte count")?;
            in_range("-o (bin size)", n, 1, MAX_BIN_BYTES)
        };
        let bin = match item.as_bytes().first() {
            Some(b'I') if item.len() == 1 => BinSpec::Integer,
            Some(b'I') if item == "I8" => BinSpec::Integer,
            Some(b'B') => BinSpec::Blob(size(&item[1..])?),
            Some(b'S') => BinSpec::String(size(&item[1..])?),
            _ => {
                return Err(format!(
                    "-o: {item:?} is not I, B<bytes> or S<bytes> (comma separated)"
                ))
            }
        };
        bins.push(bin);
    }
    if bins.len() > MAX_BINS {
        return Err(format!("-o: {} bins, at most {MAX_BINS}", bins.len()));
    }
    Ok(bins)
}

fn parse_workload(text: &str) -> Result<Workload, String> {
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    let pct = |text: &str| -> Result<u32, String> {
        let n: u32 = parse_number("-w", text, "a percentage")?;
        in_range("-w (percentage)", n, 0, 100)
    };
    match parts.as_slice() {
        ["I"] => Ok(Workload::Insert),
        ["RU", read] => Ok(Workload::ReadUpdate {
            read_pct: pct(read)?,
        }),
        ["RR", read] => Ok(Workload::ReadReplace {
            read_pct: pct(read)?,
        }),
        ["RUD", read, write] => {
            let (read_pct, write_pct) = (pct(read)?, pct(write)?);
            if read_pct + write_pct > 100 {
                return Err(format!(
                    "-w: RUD read% {read_pct} + write% {write_pct} is over 100"
                ));
            }
            Ok(Workload::ReadUpdateDelete {
                read_pct,
                write_pct,
            })
        }
        _ => Err(format!(
            "-w: {text:?} is not I, RU,<read%>, RR,<read%> or RUD,<read%>,<write%>"
        )),
    }
}

fn parse_distribution(text: &str) -> Result<Distribution, String> {
    let flag = "--keys-distribution";
    match text.split_once(',') {
        None if text == "uniform" => Ok(Distribution::Uniform),
        None if text == "zipf" => Ok(Distribution::Zipf { theta: 0.99 }),
        Some(("zipf", theta)) => {
            let theta: f64 = parse_number(flag, theta, "a number")?;
            if !(theta > 0.0 && theta < 1.0) {
                return Err(format!("{flag}: zipf theta {theta} is outside (0, 1)"));
            }
            Ok(Distribution::Zipf { theta })
        }
        _ => Err(format!("{flag}: {text:?} is not uniform or zipf[,THETA]")),
    }
}

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Parsed, String> {
    let mut hosts_text = "127.0.0.1".to_string();
    let mut port: u16 = 3000;
    let mut namespace = "test".to_string();
    let mut set = "testset".to_string();
    let mut keys: u64 = 100_000;
    let mut start_key: i64 = 0;
    let mut bins = vec![BinSpec::Integer];
    let mut workload = Workload::ReadUpdate { read_pct: 50 };
    let mut threads: usize = 1;
    let mut commands: usize = 1;
    let mut seconds: u64 = 0;
    let mut throughput: u64 = 0;
    let mut batch_size: usize = 0;
    let mut distribution = Distribution::Uniform;
    let (mut user, mut password) = (None, None);
    let (mut json, mut hdr_out) = (None, None);
    let mut quiet = false;
    let mut spin_us: u64 = 0;

    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        // "--flag=value" and "--flag value" both work; short flags take the
        // next argument.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let no_value = |flag: &str| -> Result<(), String> {
            match inline {
                Some(_) => Err(format!("{flag} takes no value")),
                None => Ok(()),
            }
        };
        match flag.as_str() {
            "--help" => {
                no_value("--help")?;
                return Ok(Parsed::Help);
            }
            "--quiet" => {
                no_value("--quiet")?;
                quiet = true;
                continue;
            }
            _ => {}
        }
        let mut value = || -> Result<String, String> {
            if let Some(v) = inline.clone() {
                return Ok(v);
            }
            let v = args
                .get(i)
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))?;
            i += 1;
            Ok(v)
        };
        match flag.as_str() {
            "-h" | "--hosts" => hosts_text = value()?,
            "-p" | "--port" => {
                let p: u32 = parse_number(&flag, &value()?, "a port number")?;
                port = in_range(&flag, p, 1, 65535)? as u16;
            }
            "-n" | "--namespace" => {
                namespace = value()?;
                if namespace.is_empty() || namespace.len() > 31 {
                    return Err(format!("{flag}: a namespace name is 1..=31 bytes"));
                }
            }
            "-s" | "--set" => {
                set = value()?;
                if set.len() > 63 {
                    return Err(format!("{flag}: a set name is at most 63 bytes"));
                }
            }
            "-k" | "--keys" => {
                keys = parse_number(&flag, &value()?, "a key count")?;
                keys = in_range(&flag, keys, 1, 1 << 40)?;
            }
            "-K" | "--start-key" => {
                start_key = parse_number(&flag, &value()?, "an integer key")?;
            }
            "-o" | "--object-spec" => bins = parse_object_spec(&value()?)?,
            "-w" | "--workload" => workload = parse_workload(&value()?)?,
            "-z" | "--threads" => {
                threads = parse_number(&flag, &value()?, "a thread count")?;
                threads = in_range(&flag, threads, 1, MAX_THREADS)?;
            }
            "-c" | "--commands" => {
                commands = parse_number(&flag, &value()?, "a command count")?;
                commands = in_range(&flag, commands, 1, MAX_COMMANDS_PER_THREAD)?;
            }
            "-t" | "--duration" => {
                seconds = parse_number(&flag, &value()?, "a whole number of seconds")?;
                seconds = in_range(&flag, seconds, 0, 365 * 86_400)?;
            }
            "-g" | "--throughput" => {
                throughput = parse_number(&flag, &value()?, "a rate in ops/s")?;
            }
            "--batch-size" => {
                batch_size = parse_number(&flag, &value()?, "a key count")?;
                batch_size = in_range(&flag, batch_size, 1, MAX_BATCH_SIZE)?;
            }
            "--keys-distribution" => distribution = parse_distribution(&value()?)?,
            "-U" | "--user" => user = Some(value()?),
            "-P" | "--password" => password = Some(value()?),
            "--json" => json = Some(PathBuf::from(value()?)),
            "--hdr-out" => hdr_out = Some(PathBuf::from(value()?)),
            "--spin-us" => {
                spin_us = parse_number(&flag, &value()?, "a whole number of microseconds")?;
                spin_us = in_range(&flag, spin_us, 0, MAX_SPIN_US)?;
            }
            other => return Err(format!("unknown flag {other:?} (see --help)")),
        }
    }

    let hosts = parse_hosts(&hosts_text, port)?;
    let start_end = i128::from(start_key) + i128::from(keys);
    if start_end > i128::from(i64::MAX) + 1 {
        return Err(format!(
            "-K {start_key} + -k {keys} runs past the largest integer key"
        ));
    }
    let credentials = match (user, password) {
        (None, None) => None,
        (Some(u), Some(p)) => {
            if u.is_empty() || u.len() > 63 {
                return Err("--user: a user name is 1..=63 bytes".into());
            }
            if p.len() > 63 {
                return Err("--password: a password is at most 63 bytes".into());
            }
            Some((u, p))
        }
        (Some(_), None) => return Err("--user needs --password".into()),
        (None, Some(_)) => return Err("--password needs --user".into()),
    };
    if batch_size > 0 && workload == Workload::Insert {
        return Err("--batch-size: workload I does no reads to batch".into());
    }
    if distribution != Distribution::Uniform && workload == Workload::Insert {
        return Err("--keys-distribution: workload I inserts the range in order".into());
    }
    if seconds == 0 && workload != Workload::Insert && json.is_some() {
        // Not an error: runs until killed; the JSON would never be written.
        return Err("--json needs -t SECONDS for a workload that never ends".into());
    }
    Ok(Parsed::Run(Box::new(Config {
        hosts,
        namespace,
        set,
        keys,
        start_key,
        bins,
        workload,
        threads,
        commands_per_thread: commands,
        duration: (seconds > 0).then(|| Duration::from_secs(seconds)),
        throughput,
        batch_size,
        distribution,
        credentials,
        json,
        hdr_out,
        spin: Duration::from_micros(spin_us),
        quiet,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Config, String> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        match parse(&args)? {
            Parsed::Run(c) => Ok(*c),
            Parsed::Help => Err("help".into()),
        }
    }

    #[test]
    fn defaults_are_asbenchs() {
        let c = run(&[]).unwrap();
        assert_eq!(c.hosts, vec![("127.0.0.1".to_string(), 3000)]);
        assert_eq!((c.namespace.as_str(), c.set.as_str()), ("test", "testset"));
        assert_eq!((c.keys, c.start_key), (100_000, 0));
        assert_eq!(c.bins, vec![BinSpec::Integer]);
        assert_eq!((c.threads, c.commands_per_thread), (1, 1));
        assert_eq!(c.duration, None);
        assert_eq!(c.spin, Duration::ZERO);
    }

    #[test]
    fn flags_parse() {
        let c = run(&[
            "-h",
            "a:1,[::1]:2,b",
            "-p",
            "4000",
            "-o",
            "I,B512,S10",
            "-w",
            "RUD,50,30",
            "-z",
            "2",
            "-c",
            "16",
            "-t",
            "5",
            "--batch-size=8",
            "--keys-distribution",
            "zipf,0.8",
            "--spin-us",
            "250",
        ])
        .unwrap();
        assert_eq!(
            c.hosts,
            vec![
                ("a".to_string(), 1),
                ("::1".to_string(), 2),
                ("b".to_string(), 4000)
            ]
        );
        assert_eq!(
            c.bins,
            vec![BinSpec::Integer, BinSpec::Blob(512), BinSpec::String(10)]
        );
        assert_eq!(
            c.workload,
            Workload::ReadUpdateDelete {
                read_pct: 50,
                write_pct: 30
            }
        );
        assert_eq!(c.batch_size, 8);
        assert_eq!(c.distribution, Distribution::Zipf { theta: 0.8 });
        assert_eq!(c.spin, Duration::from_micros(250));
        assert_eq!(c.template_bins()[1].value.len(), 512);
    }

    #[test]
    fn bad_flags_are_refused_with_the_flag_named() {
        for (args, needle) in [
            (&["-w", "XX"][..], "-w"),
            (&["-w", "RU,101"], "-w"),
            (&["-w", "RUD,60,50"], "over 100"),
            (&["-o", "Q4"], "-o"),
            (&["-o", "B0"], "-o"),
            (&["-z", "0"], "-z"),
            (&["-c"], "-c needs a value"),
            (&["-p", "70000"], "-p"),
            (&["--keys-distribution", "zipf,1.5"], "theta"),
            (&["--user", "u"], "--password"),
            (&["--bogus"], "unknown flag"),
            (&["-w", "I", "--batch-size", "4"], "--batch-size"),
            (&["-K", "9223372036854775807", "-k", "2"], "-K"),
            (&["--quiet=yes"], "--quiet"),
            (&["--spin-us", "2000000"], "--spin-us"),
            (&["--spin-us", "-1"], "--spin-us"),
        ] {
            let err = run(args).unwrap_err();
            assert!(err.contains(needle), "{args:?}: {err}");
            assert!(!err.contains('\n'), "{args:?}: {err}");
        }
    }
}
