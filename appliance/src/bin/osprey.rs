//! `osprey`: the command-line tool for a running `ospreyd`.
//!
//! - `osprey info [-h HOST] [-p PORT] [COMMAND ...]` sends one Aerospike
//!   info request (like `asinfo`) and prints the reply.
//! - `osprey shutdown [-h HOST] [-p PORT]` asks the daemon to shut down
//!   cleanly and waits until it stops accepting connections.
//!
//! The info frame is encoded here in a few lines (8-byte header: version 2,
//! type 1, 48-bit big-endian body length) so that the tool depends on no
//! server code. Every network wait is bounded: 5 s to connect, 5 s per read
//! and 30 s for a whole reply, replies over 16 MiB refused, 120 s for a
//! shutdown to finish.
#![deny(unsafe_code)]

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const DEFAULT_HOST: &str = "127.0.0.1";
const DEFAULT_PORT: u16 = 3000;
const PROTO_VERSION: u8 = 2;
const PROTO_TYPE_INFO: u8 = 1;
const HEADER_BYTES: usize = 8;
/// Bodies are at most 48 bits long by the framing.
const MAX_BODY_BYTES_FRAME: u64 = (1 << 48) - 1;
/// Replies larger than this are refused: no info reply is near it.
const MAX_REPLY_BYTES: u64 = 16 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(5);
const REPLY_DEADLINE: Duration = Duration::from_secs(30);
const SHUTDOWN_WAIT: Duration = Duration::from_secs(120);
const SHUTDOWN_PROBE_INTERVAL: Duration = Duration::from_millis(200);
const SHUTDOWN_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

const USAGE: &str = "\
usage: osprey info [-h HOST] [-p PORT] [COMMAND ...]
       osprey shutdown [-h HOST] [-p PORT]
       osprey --help

  info      send one info request and print the reply: the value alone when
            one COMMAND is given, `command: value` lines otherwise (no
            COMMAND asks for the summary). Exit status 1 when a value starts
            with ERROR:.
  shutdown  ask ospreyd to shut down cleanly and wait (up to 120 s) until it
            stops accepting connections.

  -h, --host HOST   address or name of ospreyd (default 127.0.0.1)
  -p, --port PORT   its service port (default 3000)
  --                end of options; what follows are commands
";

/// A failure, with the exit status it maps to.
struct Failure {
    message: String,
    status: u8,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            status: 2,
        }
    }

    fn runtime(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            status: 1,
        }
    }
}

enum Action {
    Info,
    Shutdown,
}

struct Args {
    action: Action,
    host: String,
    port: u16,
    commands: Vec<String>,
}

fn parse_args(args: &[String]) -> Result<Args, Failure> {
    let mut rest = args.iter();
    let action = match rest.next().map(String::as_str) {
        Some("info") => Action::Info,
        Some("shutdown") => Action::Shutdown,
        Some("--help") | Some("help") => return Err(Failure::usage("")),
        None => return Err(Failure::usage("no command given")),
        Some(other) => return Err(Failure::usage(format!("unknown command {other:?}"))),
    };
    let mut host = DEFAULT_HOST.to_string();
    let mut port = DEFAULT_PORT;
    let mut commands = Vec::new();
    let mut options_done = false;
    while let Some(arg) = rest.next() {
        if options_done || !arg.starts_with('-') || arg == "-" {
            commands.push(arg.clone());
            continue;
        }
        match arg.as_str() {
            "--" => options_done = true,
            "-h" | "--host" => {
                host = rest
                    .next()
                    .ok_or_else(|| Failure::usage(format!("{arg} needs a HOST")))?
                    .clone();
            }
            "-p" | "--port" => {
                let text = rest
                    .next()
                    .ok_or_else(|| Failure::usage(format!("{arg} needs a PORT")))?;
                port = match text.parse::<u16>() {
                    Ok(p) if p != 0 => p,
                    _ => return Err(Failure::usage(format!("port {text:?} is not in 1..=65535"))),
                };
            }
            "--help" => return Err(Failure::usage("")),
            other => return Err(Failure::usage(format!("unknown option {other:?}"))),
        }
    }
    if matches!(action, Action::Shutdown) && !commands.is_empty() {
        return Err(Failure::usage(format!(
            "shutdown takes no commands (got {:?})",
            commands.join(" ")
        )));
    }
    for command in &commands {
        if command.contains('\n') || command.contains('\t') {
            return Err(Failure::usage(format!(
                "command {command:?} may not contain a newline or tab"
            )));
        }
    }
    Ok(Args {
        action,
        host,
        port,
        commands,
    })
}

/// `HOST:PORT` for messages (IPv6 literals in brackets).
fn endpoint(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, Failure> {
    let addresses: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| Failure::runtime(format!("cannot resolve {host:?}: {e}")))?
        .collect();
    if addresses.is_empty() {
        return Err(Failure::runtime(format!("{host:?} has no address")));
    }
    Ok(addresses)
}

fn connect(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, Failure> {
    let shown = endpoint(host, port);
    let mut last: Option<io::Error> = None;
    for address in resolve(host, port)? {
        match TcpStream::connect_timeout(&address, timeout) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    let message = match last {
        Some(e) if e.kind() == ErrorKind::ConnectionRefused => {
            format!("no ospreyd listening on {shown} (connection refused)")
        }
        Some(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => format!(
            "cannot connect to {shown}: no answer within {} s",
            timeout.as_secs()
        ),
        Some(e) => format!("cannot connect to {shown}: {e}"),
        None => format!("cannot connect to {shown}"),
    };
    Err(Failure::runtime(message))
}

fn encode_info_request(commands: &[String]) -> Vec<u8> {
    let body: String = commands.iter().map(|c| format!("{c}\n")).collect();
    let length = body.len() as u64;
    assert!(length <= MAX_BODY_BYTES_FRAME);
    let header = (u64::from(PROTO_VERSION) << 56) | (u64::from(PROTO_TYPE_INFO) << 48) | length;
    let mut frame = Vec::with_capacity(HEADER_BYTES + body.len());
    frame.extend_from_slice(&header.to_be_bytes());
    frame.extend_from_slice(body.as_bytes());
    frame
}

/// Reads exactly `buffer.len()` bytes before `deadline`.
fn read_full(
    stream: &mut TcpStream,
    buffer: &mut [u8],
    deadline: Instant,
    shown: &str,
) -> Result<(), Failure> {
    let mut filled = 0;
    while filled < buffer.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Failure::runtime(format!(
                "{shown} did not send its whole reply within {} s",
                REPLY_DEADLINE.as_secs()
            )));
        }
        stream
            .set_read_timeout(Some(left.min(IO_TIMEOUT)))
            .map_err(|e| Failure::runtime(format!("cannot set a read timeout: {e}")))?;
        match stream.read(&mut buffer[filled..]) {
            Ok(0) => {
                return Err(Failure::runtime(format!(
                    "{shown} closed the connection before the reply was complete ({filled} of {} bytes)",
                    buffer.len()
                )))
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(Failure::runtime(format!(
                    "no reply from {shown} within {} s",
                    IO_TIMEOUT.as_secs()
                )))
            }
            Err(e) => return Err(Failure::runtime(format!("reading from {shown}: {e}"))),
        }
    }
    Ok(())
}

/// Sends one info request and returns the reply body as text.
fn info_request(host: &str, port: u16, commands: &[String]) -> Result<String, Failure> {
    let shown = endpoint(host, port);
    let mut stream = connect(host, port, CONNECT_TIMEOUT)?;
    stream
        .set_write_timeout(Some(IO_TIMEOUT))
        .map_err(|e| Failure::runtime(format!("cannot set a write timeout: {e}")))?;
    stream
        .write_all(&encode_info_request(commands))
        .map_err(|e| Failure::runtime(format!("sending to {shown}: {e}")))?;
    let deadline = Instant::now() + REPLY_DEADLINE;
    let mut header = [0u8; HEADER_BYTES];
    read_full(&mut stream, &mut header, deadline, &shown)?;
    let word = u64::from_be_bytes(header);
    let (version, kind, length) = (header[0], header[1], word & MAX_BODY_BYTES_FRAME);
    if version != PROTO_VERSION || kind != PROTO_TYPE_INFO {
        return Err(Failure::runtime(format!(
            "{shown} answered with a frame of version {version} type {kind}, not an info reply (version 2 type 1); is it an Aerospike-protocol server?"
        )));
    }
    if length > MAX_REPLY_BYTES {
        return Err(Failure::runtime(format!(
            "{shown} announced a reply of {length} bytes, over the {} MiB limit",
            MAX_REPLY_BYTES >> 20
        )));
    }
    let mut body = vec![0u8; length as usize];
    read_full(&mut stream, &mut body, deadline, &shown)?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// One `command\tvalue` line of a reply.
struct ReplyLine<'a> {
    command: Option<&'a str>,
    value: &'a str,
}

fn reply_lines(body: &str) -> Vec<ReplyLine<'_>> {
    body.split('\n')
        .filter(|line| !line.is_empty())
        .map(|line| match line.split_once('\t') {
            Some((command, value)) => ReplyLine {
                command: Some(command),
                value,
            },
            None => ReplyLine {
                command: None,
                value: line,
            },
        })
        .collect()
}

fn run_info(args: &Args) -> Result<u8, Failure> {
    let body = info_request(&args.host, args.port, &args.commands)?;
    let lines = reply_lines(&body);
    let mut out = io::stdout().lock();
    let mut failed = false;
    for line in &lines {
        failed |= line.value.starts_with("ERROR:");
        let written = match (args.commands.len(), line.command) {
            (1, _) | (_, None) => writeln!(out, "{}", line.value),
            (_, Some(command)) => writeln!(out, "{command}: {}", line.value),
        };
        written.map_err(|e| Failure::runtime(format!("writing to stdout: {e}")))?;
    }
    Ok(if failed { 1 } else { 0 })
}

fn run_shutdown(args: &Args) -> Result<u8, Failure> {
    let shown = endpoint(&args.host, args.port);
    let body = info_request(&args.host, args.port, &["shutdown".to_string()])?;
    let lines = reply_lines(&body);
    let value = lines.first().map_or("", |l| l.value);
    if value != "ok" {
        return Err(Failure::runtime(format!(
            "ospreyd on {shown} refused to shut down: {:?}",
            if value.is_empty() { body.trim() } else { value }
        )));
    }
    println!(
        "ospreyd on {shown} is shutting down; waiting (up to {} s) until it stops accepting connections",
        SHUTDOWN_WAIT.as_secs()
    );
    let started = Instant::now();
    let addresses = resolve(&args.host, args.port)?;
    let mut last_report = started;
    while started.elapsed() < SHUTDOWN_WAIT {
        let accepting = addresses
            .iter()
            .any(|a| TcpStream::connect_timeout(a, SHUTDOWN_PROBE_TIMEOUT).is_ok());
        if !accepting {
            println!(
                "ospreyd on {shown} has stopped ({:.1} s)",
                started.elapsed().as_secs_f64()
            );
            return Ok(0);
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            println!(
                "still waiting for ospreyd on {shown} to close its port ({} s so far): it flushes write buffers and writes device headers first",
                started.elapsed().as_secs()
            );
            last_report = Instant::now();
        }
        std::thread::sleep(SHUTDOWN_PROBE_INTERVAL);
    }
    Err(Failure::runtime(format!(
        "ospreyd on {shown} still accepts connections after {} s",
        SHUTDOWN_WAIT.as_secs()
    )))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = parse_args(&args).and_then(|args| match args.action {
        Action::Info => run_info(&args),
        Action::Shutdown => run_shutdown(&args),
    });
    match result {
        Ok(status) => ExitCode::from(status),
        Err(failure) => {
            if failure.status == 2 && failure.message.is_empty() {
                // Asked for: usage on stdout (still status 2, as asinfo-style
                // tools treat "no action taken").
                print!("{USAGE}");
            } else if failure.status == 2 {
                eprintln!("osprey: {}", failure.message);
                eprint!("{USAGE}");
            } else {
                eprintln!("osprey: {}", failure.message);
            }
            ExitCode::from(failure.status)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_frame_layout() {
        let frame = encode_info_request(&["node".into(), "build".into()]);
        assert_eq!(&frame[..8], &[2, 1, 0, 0, 0, 0, 0, 11]);
        assert_eq!(&frame[8..], b"node\nbuild\n");
        assert_eq!(encode_info_request(&[]), vec![2, 1, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn reply_lines_split_on_the_first_tab() {
        let lines = reply_lines("a\t1\nb\tx\ty\nbare\n");
        assert_eq!(lines.len(), 3);
        assert_eq!((lines[1].command, lines[1].value), (Some("b"), "x\ty"));
        assert_eq!((lines[2].command, lines[2].value), (None, "bare"));
    }
}
