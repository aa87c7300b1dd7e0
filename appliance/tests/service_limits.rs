//! The reactor's bounds and the daemon's stop paths, seen from raw
//! sockets: `max-connections`, `proto-fd-idle-ms`, several service cores
//! sharing connections, and `osprey shutdown` leading to a warm start.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Options, Server, StartKind};

/// Sends one info request and returns the reply body.
fn info(stream: &mut TcpStream, command: &str) -> std::io::Result<String> {
    let body = format!("{command}\n");
    let mut frame = vec![2u8, 1, 0, 0, 0, 0, 0, 0];
    frame[2..8].copy_from_slice(&(body.len() as u64).to_be_bytes()[2..8]);
    frame.extend_from_slice(body.as_bytes());
    stream.write_all(&frame)?;
    let mut head = [0u8; 8];
    stream.read_exact(&mut head)?;
    let mut size = [0u8; 8];
    size[2..8].copy_from_slice(&head[2..8]);
    let mut reply = vec![0u8; u64::from_be_bytes(size) as usize];
    stream.read_exact(&mut reply)?;
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

fn connect(server: &Server) -> TcpStream {
    let s = TcpStream::connect(server.addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// A statistic from `statistics`.
fn statistic(server: &Server, name: &str) -> u64 {
    try_statistic(server, name).expect("statistics")
}

fn try_statistic(server: &Server, name: &str) -> std::io::Result<u64> {
    let mut s = TcpStream::connect(server.addr())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let reply = info(&mut s, "statistics")?;
    let value = reply
        .trim_end()
        .split_once('\t')
        .map(|(_, v)| v)
        .unwrap_or("")
        .split(';')
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in {reply:?}"));
    Ok(value.parse().unwrap())
}

/// Whether the server closed `stream` (EOF) within `timeout`.
fn closed_within(stream: &mut TcpStream, timeout: Duration) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + timeout;
    let mut byte = [0u8; 1];
    while Instant::now() < deadline {
        match stream.read(&mut byte) {
            Ok(0) => return true,
            Ok(_) => return false,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn connections_past_the_limit_are_refused_and_counted() {
    let server = Server::start_with(
        0,
        Options {
            service_extra: "max-connections = 3".into(),
            ..Options::default()
        },
    );
    let mut held: Vec<TcpStream> = (0..3).map(|_| connect(&server)).collect();
    for s in &mut held {
        assert!(info(s, "node").unwrap().starts_with("node\t"));
    }
    let mut extra = connect(&server);
    assert!(
        closed_within(&mut extra, Duration::from_secs(5)),
        "the fourth connection is closed at once"
    );
    // The held ones still work.
    for s in &mut held {
        assert!(info(s, "build").unwrap().starts_with("build\t"));
    }
    drop(held);
    // Room again: the statistics connection itself is accepted.
    let deadline = Instant::now() + Duration::from_secs(5);
    let refused = loop {
        // The slots free up as the server sees the closes.
        match try_statistic(&server, "client_connections_refused") {
            Ok(n) => break n,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("statistics: {e}"),
        }
    };
    assert!(refused >= 1, "refused connections are counted: {refused}");
}

#[test]
fn idle_connections_are_closed_and_busy_ones_kept() {
    let server = Server::start_with(
        1,
        Options {
            service_extra: "proto-fd-idle-ms = 500".into(),
            ..Options::default()
        },
    );
    let mut idle = connect(&server);
    let mut busy = connect(&server);
    let started = Instant::now();
    // The busy one talks every 200 ms for 2.5 s; the idle one says nothing.
    while started.elapsed() < Duration::from_millis(2500) {
        assert!(
            info(&mut busy, "node").unwrap().starts_with("node\t"),
            "a connection in use is kept"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The ticker checks idleness once a second: 0.5 s + up to 1 s.
    assert!(
        closed_within(&mut idle, Duration::from_secs(3)),
        "an idle connection is closed after proto-fd-idle-ms"
    );
    assert!(statistic(&server, "client_connections_idle_closed") >= 1);
}

#[test]
fn two_cores_share_the_connections() {
    let server = Server::start_with(
        2,
        Options {
            cores: 2,
            ..Options::default()
        },
    );
    let mut streams: Vec<TcpStream> = (0..8).map(|_| connect(&server)).collect();
    for round in 0..3 {
        for (i, s) in streams.iter_mut().enumerate() {
            let reply = info(s, "namespaces").unwrap();
            assert_eq!(reply, "namespaces\ttest\n", "connection {i}, round {round}");
        }
    }
    server.expect_log("2 service core(s)");
}

#[test]
fn osprey_shutdown_stops_cleanly_and_the_next_start_is_warm() {
    let mut server = Server::start(3);
    let output = Command::new(env!("CARGO_BIN_EXE_osprey"))
        .args([
            "shutdown",
            "-h",
            "127.0.0.1",
            "-p",
            &server.port().to_string(),
        ])
        .output()
        .expect("run osprey shutdown");
    assert!(
        output.status.success(),
        "osprey shutdown: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let status = server.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "exit status {status}");
    server.expect_log("clean shutdown");
    server.restart();
    assert_eq!(server.start_kind(), Some(StartKind::Warm));
}
