//! `osprey`: the command-line tool for a running `ospreyd`.
//!
//! - `osprey info [-h HOST] [-p PORT] [COMMAND ...]` sends one Aerospike
//!   info request (like `asinfo`) and prints the reply.
//! - `osprey shutdown [-h HOST] [-p PORT]` asks the daemon to shut down
//!   cleanly and waits until it stops accepting connections.
//!
//! - `osprey user create|drop|password|grant|revoke|list ...` and
//!   `osprey role create|drop|grant|revoke|list ...` administer users and
//!   roles over the admin protocol (spec §9): LOGIN as `--user` (password
//!   from `--password` or `$OSPREY_PASSWORD`), then the command on the same
//!   socket. New passwords come from `--new-password` or
//!   `$OSPREY_NEW_PASSWORD`, never from a default.
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
       osprey user create NAME [ROLE ...]      (password: --new-password)
       osprey user drop NAME
       osprey user password NAME               (password: --new-password)
       osprey user grant|revoke NAME ROLE ...
       osprey user list [NAME]
       osprey role create NAME [PRIVILEGE ...]
       osprey role drop NAME
       osprey role grant|revoke NAME PRIVILEGE ...
       osprey role list [NAME]
       osprey --help

  info      send one info request and print the reply: the value alone when
            one COMMAND is given, `command: value` lines otherwise (no
            COMMAND asks for the summary). Exit status 1 when a value starts
            with ERROR:.
  shutdown  ask ospreyd to shut down cleanly and wait (up to 120 s) until it
            stops accepting connections.

  user, role  administer users and roles (security enabled). ROLE is a
            predefined role (user-admin sys-admin data-admin udf-admin
            sindex-admin read read-write read-write-udf write truncate) or
            a custom one; PRIVILEGE is CODE, CODE:NAMESPACE or
            CODE:NAMESPACE:SET with CODE one of the role names above.

  -h, --host HOST   address or name of ospreyd (default 127.0.0.1)
  -p, --port PORT   its service port (default 3000)
  -U, --user USER   log in as USER first (info, shutdown, user and role);
                    its password from --password or $OSPREY_PASSWORD
  -P, --password PW the password of --user
  --new-password PW the new password for user create / user password
                    (else $OSPREY_NEW_PASSWORD)
  --                end of options; what follows are commands
";

/// A failure, with the exit status it maps to.
#[derive(Debug)]
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
    User,
    Role,
}

struct Args {
    action: Action,
    host: String,
    port: u16,
    commands: Vec<String>,
    user: Option<String>,
    password: Option<String>,
    new_password: Option<String>,
}

fn parse_args(args: &[String]) -> Result<Args, Failure> {
    let mut rest = args.iter();
    let action = match rest.next().map(String::as_str) {
        Some("info") => Action::Info,
        Some("shutdown") => Action::Shutdown,
        Some("user") => Action::User,
        Some("role") => Action::Role,
        Some("--help") | Some("help") => return Err(Failure::usage("")),
        None => return Err(Failure::usage("no command given")),
        Some(other) => return Err(Failure::usage(format!("unknown command {other:?}"))),
    };
    let mut host = DEFAULT_HOST.to_string();
    let mut port = DEFAULT_PORT;
    let mut commands = Vec::new();
    let mut user = None;
    let mut password = None;
    let mut new_password = None;
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
            "-U" | "--user" | "-P" | "--password" | "--new-password" => {
                let value = rest
                    .next()
                    .ok_or_else(|| Failure::usage(format!("{arg} needs a value")))?
                    .clone();
                match arg.as_str() {
                    "-U" | "--user" => user = Some(value),
                    "-P" | "--password" => password = Some(value),
                    _ => new_password = Some(value),
                }
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
    if user.is_some() && password.is_none() {
        password = std::env::var("OSPREY_PASSWORD").ok();
        if password.is_none() {
            return Err(Failure::usage(
                "--user needs a password: give --password or set OSPREY_PASSWORD",
            ));
        }
    }
    if new_password.is_none() {
        new_password = std::env::var("OSPREY_NEW_PASSWORD").ok();
    }
    Ok(Args {
        action,
        host,
        port,
        commands,
        user,
        password,
        new_password,
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

/// Reads one frame of type `want` and returns its body.
fn read_frame(stream: &mut TcpStream, want: u8, shown: &str) -> Result<Vec<u8>, Failure> {
    let deadline = Instant::now() + REPLY_DEADLINE;
    let mut header = [0u8; HEADER_BYTES];
    read_full(stream, &mut header, deadline, shown)?;
    let word = u64::from_be_bytes(header);
    let (version, kind, length) = (header[0], header[1], word & MAX_BODY_BYTES_FRAME);
    if version != PROTO_VERSION || kind != want {
        return Err(Failure::runtime(format!(
            "{shown} answered with a frame of version {version} type {kind}, not an {} reply (version 2 type {want}); is it an Aerospike-protocol server?",
            if want == PROTO_TYPE_INFO { "info" } else { "admin" }
        )));
    }
    if length > MAX_REPLY_BYTES {
        return Err(Failure::runtime(format!(
            "{shown} announced a reply of {length} bytes, over the {} MiB limit",
            MAX_REPLY_BYTES >> 20
        )));
    }
    let mut body = vec![0u8; length as usize];
    read_full(stream, &mut body, deadline, shown)?;
    Ok(body)
}

/// Connects and, with `--user`, logs in (spec §9.2). With security off
/// the server answers LOGIN with 52 and the socket goes on unauthenticated.
fn open_session(args: &Args) -> Result<(TcpStream, bool), Failure> {
    let shown = endpoint(&args.host, args.port);
    let mut stream = connect(&args.host, args.port, CONNECT_TIMEOUT)?;
    stream
        .set_write_timeout(Some(IO_TIMEOUT))
        .map_err(|e| Failure::runtime(format!("cannot set a write timeout: {e}")))?;
    let (Some(user), Some(password)) = (&args.user, &args.password) else {
        return Ok((stream, false));
    };
    let credential = client_hash(password)?;
    let body = admin_call(
        &mut stream,
        &shown,
        LOGIN,
        &[
            (FIELD_USER, user.as_bytes()),
            (FIELD_CREDENTIAL, credential.as_bytes()),
        ],
    )?;
    match body.get(1).copied().unwrap_or(255) {
        0 => Ok((stream, true)),
        52 => Ok((stream, false)),
        code => Err(Failure::runtime(format!(
            "login to {shown} as {user:?} failed: {}",
            admin_result_text(code)
        ))),
    }
}

/// Sends one info request and returns the reply body as text.
fn info_request(args: &Args, commands: &[String]) -> Result<String, Failure> {
    let shown = endpoint(&args.host, args.port);
    let (mut stream, _) = open_session(args)?;
    stream
        .write_all(&encode_info_request(commands))
        .map_err(|e| Failure::runtime(format!("sending to {shown}: {e}")))?;
    let body = read_frame(&mut stream, PROTO_TYPE_INFO, &shown)?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

// ---------------------------------------------------------------------------
// Admin protocol (spec §9): a 16-byte header (byte 2 command, byte 3 field
// count; replies carry the result in byte 1), then fields of u32 size
// (1 + data length), u8 id, data.

const PROTO_TYPE_ADMIN: u8 = 2;
const ADMIN_HEADER_BYTES: usize = 16;
const CREATE_USER: u8 = 1;
const DROP_USER: u8 = 2;
const SET_PASSWORD: u8 = 3;
const CHANGE_PASSWORD: u8 = 4;
const GRANT_ROLES: u8 = 5;
const REVOKE_ROLES: u8 = 6;
const QUERY_USERS: u8 = 9;
const CREATE_ROLE: u8 = 10;
const DROP_ROLE: u8 = 11;
const GRANT_PRIVILEGES: u8 = 12;
const REVOKE_PRIVILEGES: u8 = 13;
const QUERY_ROLES: u8 = 16;
const LOGIN: u8 = 20;
const FIELD_USER: u8 = 0;
const FIELD_PASSWORD: u8 = 1;
const FIELD_OLD_PASSWORD: u8 = 2;
const FIELD_CREDENTIAL: u8 = 3;
const FIELD_ROLES: u8 = 10;
const FIELD_ROLE: u8 = 11;
const FIELD_PRIVILEGES: u8 = 12;
const QUERY_END: u8 = 50;
/// Privilege codes by role name (spec §9.3).
const PRIVILEGE_CODES: [(&str, u8); 10] = [
    ("user-admin", 0),
    ("sys-admin", 1),
    ("data-admin", 2),
    ("udf-admin", 3),
    ("sindex-admin", 4),
    ("read", 10),
    ("read-write", 11),
    ("read-write-udf", 12),
    ("write", 13),
    ("truncate", 14),
];

/// The hash clients send instead of a password (bcrypt, fixed salt).
fn client_hash(password: &str) -> Result<String, Failure> {
    if password.is_empty() || password.len() > 63 {
        return Err(Failure::usage("a password must be 1..=63 bytes"));
    }
    Ok(osprey_appliance::security::password::client_hash(password))
}

fn encode_admin(command: u8, fields: &[(u8, &[u8])]) -> Vec<u8> {
    let mut body = vec![0u8; ADMIN_HEADER_BYTES];
    body[2] = command;
    body[3] = fields.len() as u8;
    for (id, data) in fields {
        body.extend_from_slice(&(data.len() as u32 + 1).to_be_bytes());
        body.push(*id);
        body.extend_from_slice(data);
    }
    let header =
        (u64::from(PROTO_VERSION) << 56) | (u64::from(PROTO_TYPE_ADMIN) << 48) | body.len() as u64;
    let mut frame = header.to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

/// Sends an admin command and returns the reply body (result in byte 1).
fn admin_call(
    stream: &mut TcpStream,
    shown: &str,
    command: u8,
    fields: &[(u8, &[u8])],
) -> Result<Vec<u8>, Failure> {
    stream
        .write_all(&encode_admin(command, fields))
        .map_err(|e| Failure::runtime(format!("sending to {shown}: {e}")))?;
    let body = read_frame(stream, PROTO_TYPE_ADMIN, shown)?;
    if body.len() < ADMIN_HEADER_BYTES {
        return Err(Failure::runtime(format!(
            "{shown} sent an admin reply of {} bytes, shorter than its header",
            body.len()
        )));
    }
    Ok(body)
}

fn admin_result_text(code: u8) -> String {
    let text = match code {
        0 => "ok",
        16 => "not supported by this server",
        52 => "security is not enabled on this server",
        54 => "invalid command",
        55 => "invalid field",
        60 => "no such user (or an invalid user name)",
        61 => "the user exists already",
        62 => "invalid password",
        65 => "wrong user name or password",
        66 => "session expired",
        70 => "no such role (or an invalid role name)",
        71 => "the role exists already",
        72 => "invalid privilege",
        80 => "not authenticated: give --user and a password",
        81 => "not allowed: the user lacks the role for this (role violation)",
        _ => "error",
    };
    format!("{text} (result {code})")
}

fn encode_roles(roles: &[String]) -> Result<Vec<u8>, Failure> {
    if roles.len() > 255 {
        return Err(Failure::usage("at most 255 roles at a time"));
    }
    let mut out = vec![roles.len() as u8];
    for role in roles {
        if role.is_empty() || role.len() > 63 {
            return Err(Failure::usage(format!(
                "role name {role:?} must be 1..=63 bytes"
            )));
        }
        out.push(role.len() as u8);
        out.extend_from_slice(role.as_bytes());
    }
    Ok(out)
}

/// `CODE`, `CODE:NAMESPACE` or `CODE:NAMESPACE:SET` to the wire form.
fn encode_privileges(texts: &[String]) -> Result<Vec<u8>, Failure> {
    if texts.len() > 255 {
        return Err(Failure::usage("at most 255 privileges at a time"));
    }
    let mut out = vec![texts.len() as u8];
    for text in texts {
        let mut parts = text.splitn(3, ':');
        let name = parts.next().unwrap_or_default();
        let code = PRIVILEGE_CODES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| *c)
            .ok_or_else(|| Failure::usage(format!("unknown privilege {name:?} in {text:?}")))?;
        let namespace = parts.next().unwrap_or_default();
        let set = parts.next().unwrap_or_default();
        out.push(code);
        if code >= 10 {
            for part in [namespace, set] {
                if part.len() > 255 {
                    return Err(Failure::usage(format!("{part:?} is too long")));
                }
                out.push(part.len() as u8);
                out.extend_from_slice(part.as_bytes());
            }
        } else if !namespace.is_empty() {
            return Err(Failure::usage(format!(
                "{name} is a global privilege and takes no namespace ({text:?})"
            )));
        }
    }
    Ok(out)
}

/// `(field id, data)` pairs of an admin record.
type Fields = Vec<(u8, Vec<u8>)>;

/// Fields of one admin record (after its 16-byte header) and the record's
/// length.
fn record_fields(record: &[u8], n_fields: u8) -> Option<(Fields, usize)> {
    let mut at = ADMIN_HEADER_BYTES;
    let mut fields = Vec::new();
    for _ in 0..n_fields {
        let size = u32::from_be_bytes(record.get(at..at + 4)?.try_into().ok()?) as usize;
        let id = *record.get(at + 4)?;
        let data = record.get(at + 5..at + 4 + size)?.to_vec();
        fields.push((id, data));
        at += 4 + size;
    }
    Some((fields, at))
}

fn decode_roles(data: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut at = 1;
    for _ in 0..data.first().copied().unwrap_or(0) {
        let Some(&len) = data.get(at) else { break };
        let len = usize::from(len);
        let Some(name) = data.get(at + 1..at + 1 + len) else {
            break;
        };
        out.push(String::from_utf8_lossy(name).into_owned());
        at += 1 + len;
    }
    out
}

fn decode_privileges(data: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut at = 1;
    for _ in 0..data.first().copied().unwrap_or(0) {
        let Some(&code) = data.get(at) else { break };
        at += 1;
        let name = PRIVILEGE_CODES
            .iter()
            .find(|(_, c)| *c == code)
            .map_or_else(|| format!("code-{code}"), |(n, _)| n.to_string());
        let mut text = name;
        if code >= 10 {
            let mut scope = Vec::new();
            for _ in 0..2 {
                let Some(&len) = data.get(at) else { break };
                let len = usize::from(len);
                let part = data.get(at + 1..at + 1 + len).unwrap_or_default();
                scope.push(String::from_utf8_lossy(part).into_owned());
                at += 1 + len;
            }
            for part in scope.iter().filter(|p| !p.is_empty()) {
                text.push(':');
                text.push_str(part);
            }
        }
        out.push(text);
    }
    out
}

/// Runs QUERY_USERS / QUERY_ROLES and prints one line per record.
fn run_query(
    stream: &mut TcpStream,
    shown: &str,
    command: u8,
    fields: &[(u8, &[u8])],
) -> Result<u8, Failure> {
    stream
        .write_all(&encode_admin(command, fields))
        .map_err(|e| Failure::runtime(format!("sending to {shown}: {e}")))?;
    let mut out = io::stdout().lock();
    loop {
        let body = read_frame(stream, PROTO_TYPE_ADMIN, shown)?;
        let mut at = 0;
        while at + ADMIN_HEADER_BYTES <= body.len() {
            let record = &body[at..];
            let result = record[1];
            if result == QUERY_END {
                return Ok(0);
            }
            if result != 0 {
                return Err(Failure::runtime(admin_result_text(result)));
            }
            let (fields, used) = record_fields(record, record[3])
                .ok_or_else(|| Failure::runtime(format!("{shown} sent a damaged admin record")))?;
            let mut name = String::new();
            let mut list = Vec::new();
            for (id, data) in fields {
                match (command, id) {
                    (QUERY_USERS, FIELD_USER) | (QUERY_ROLES, FIELD_ROLE) => {
                        name = String::from_utf8_lossy(&data).into_owned()
                    }
                    (QUERY_USERS, FIELD_ROLES) => list = decode_roles(&data),
                    (QUERY_ROLES, FIELD_PRIVILEGES) => list = decode_privileges(&data),
                    _ => {}
                }
            }
            writeln!(out, "{name}: {}", list.join(" "))
                .map_err(|e| Failure::runtime(format!("writing to stdout: {e}")))?;
            at += used;
        }
    }
}

/// `osprey user ...` and `osprey role ...`.
fn run_admin(args: &Args) -> Result<u8, Failure> {
    let shown = endpoint(&args.host, args.port);
    let words = &args.commands;
    let verb = words.first().map(String::as_str).unwrap_or("");
    let name = words.get(1).cloned().unwrap_or_default();
    let rest = words.get(2..).unwrap_or_default().to_vec();
    let is_user = matches!(args.action, Action::User);
    let need_name = |what: &str| -> Result<(), Failure> {
        if name.is_empty() {
            Err(Failure::usage(format!("{what} needs a NAME")))
        } else {
            Ok(())
        }
    };
    let new_password = || -> Result<String, Failure> {
        let password = args.new_password.as_deref().ok_or_else(|| {
            Failure::usage("give the new password with --new-password or OSPREY_NEW_PASSWORD")
        })?;
        client_hash(password)
    };
    // Check the arguments before connecting.
    let (command, fields): (u8, Vec<(u8, Vec<u8>)>) = match (is_user, verb) {
        (_, "list") => {
            let (command, id) = if is_user {
                (QUERY_USERS, FIELD_USER)
            } else {
                (QUERY_ROLES, FIELD_ROLE)
            };
            let fields = if name.is_empty() {
                vec![]
            } else {
                vec![(id, name.clone().into_bytes())]
            };
            let (mut stream, _) = open_session(args)?;
            let borrowed: Vec<(u8, &[u8])> = fields.iter().map(|(i, d)| (*i, &d[..])).collect();
            return run_query(&mut stream, &shown, command, &borrowed);
        }
        (true, "create") => {
            need_name("user create")?;
            (
                CREATE_USER,
                vec![
                    (FIELD_USER, name.clone().into_bytes()),
                    (FIELD_PASSWORD, new_password()?.into_bytes()),
                    (FIELD_ROLES, encode_roles(&rest)?),
                ],
            )
        }
        (true, "drop") => {
            need_name("user drop")?;
            (DROP_USER, vec![(FIELD_USER, name.clone().into_bytes())])
        }
        (true, "password") => {
            need_name("user password")?;
            let new = new_password()?.into_bytes();
            if args.user.as_deref() == Some(name.as_str()) {
                // Your own password: CHANGE_PASSWORD, which needs the old one.
                let old = client_hash(args.password.as_deref().unwrap_or_default())?;
                (
                    CHANGE_PASSWORD,
                    vec![
                        (FIELD_USER, name.clone().into_bytes()),
                        (FIELD_OLD_PASSWORD, old.into_bytes()),
                        (FIELD_PASSWORD, new),
                    ],
                )
            } else {
                (
                    SET_PASSWORD,
                    vec![
                        (FIELD_USER, name.clone().into_bytes()),
                        (FIELD_PASSWORD, new),
                    ],
                )
            }
        }
        (true, "grant") | (true, "revoke") => {
            need_name("user grant/revoke")?;
            if rest.is_empty() {
                return Err(Failure::usage(format!(
                    "user {verb} needs at least one ROLE"
                )));
            }
            (
                if verb == "grant" {
                    GRANT_ROLES
                } else {
                    REVOKE_ROLES
                },
                vec![
                    (FIELD_USER, name.clone().into_bytes()),
                    (FIELD_ROLES, encode_roles(&rest)?),
                ],
            )
        }
        (false, "create") => {
            need_name("role create")?;
            let mut fields = vec![(FIELD_ROLE, name.clone().into_bytes())];
            if !rest.is_empty() {
                fields.push((FIELD_PRIVILEGES, encode_privileges(&rest)?));
            }
            (CREATE_ROLE, fields)
        }
        (false, "drop") => {
            need_name("role drop")?;
            (DROP_ROLE, vec![(FIELD_ROLE, name.clone().into_bytes())])
        }
        (false, "grant") | (false, "revoke") => {
            need_name("role grant/revoke")?;
            if rest.is_empty() {
                return Err(Failure::usage(format!(
                    "role {verb} needs at least one PRIVILEGE"
                )));
            }
            (
                if verb == "grant" {
                    GRANT_PRIVILEGES
                } else {
                    REVOKE_PRIVILEGES
                },
                vec![
                    (FIELD_ROLE, name.clone().into_bytes()),
                    (FIELD_PRIVILEGES, encode_privileges(&rest)?),
                ],
            )
        }
        (_, "") => return Err(Failure::usage("which action? (create, drop, list, ...)")),
        (_, other) => return Err(Failure::usage(format!("unknown action {other:?}"))),
    };
    let (mut stream, _) = open_session(args)?;
    let borrowed: Vec<(u8, &[u8])> = fields.iter().map(|(i, d)| (*i, &d[..])).collect();
    let body = admin_call(&mut stream, &shown, command, &borrowed)?;
    match body[1] {
        0 => {
            println!("ok");
            Ok(0)
        }
        code => Err(Failure::runtime(format!(
            "{} {verb} {name:?} on {shown}: {}",
            if is_user { "user" } else { "role" },
            admin_result_text(code)
        ))),
    }
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
    let body = info_request(args, &args.commands)?;
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
    let body = info_request(args, &["shutdown".to_string()])?;
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
        Action::User | Action::Role => run_admin(&args),
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
    fn admin_frames_and_privileges() {
        let frame = encode_admin(DROP_USER, &[(FIELD_USER, b"bob")]);
        assert_eq!(&frame[..8], &[2, 2, 0, 0, 0, 0, 0, 24]);
        assert_eq!(frame[10], DROP_USER);
        assert_eq!(frame[11], 1);
        assert_eq!(&frame[24..], &[0, 0, 0, 4, 0, b'b', b'o', b'b']);
        let p = encode_privileges(&["read:test:demo".into(), "user-admin".into()]).unwrap();
        assert_eq!(p, b"\x02\x0a\x04test\x04demo\x00");
        assert_eq!(decode_privileges(&p), ["read:test:demo", "user-admin"]);
        assert!(encode_privileges(&["sys-admin:test".into()]).is_err());
        assert!(encode_privileges(&["root".into()]).is_err());
        let roles = encode_roles(&["read".into(), "write".into()]).unwrap();
        assert_eq!(decode_roles(&roles), ["read", "write"]);
    }

    #[test]
    fn reply_lines_split_on_the_first_tab() {
        let lines = reply_lines("a\t1\nb\tx\ty\nbare\n");
        assert_eq!(lines.len(), 3);
        assert_eq!((lines[1].command, lines[1].value), (Some("b"), "x\ty"));
        assert_eq!((lines[2].command, lines[2].value), (None, "bare"));
    }
}
