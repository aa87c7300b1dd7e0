//! The `osprey` tool against a fake info server: a thread on 127.0.0.1:0
//! that answers one request with a fixed reply. Every wait is bounded.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

struct Run {
    status: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the built binary, killing it if it outlives `limit`.
fn osprey(args: &[&str], limit: Duration) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_osprey"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start osprey");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for osprey") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("osprey {args:?} ran longer than {limit:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    Run {
        status: status.code(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// What the fake server received: the 8-byte header and the body.
struct Request {
    header: [u8; 8],
    body: Vec<u8>,
}

/// Serves one connection: stops listening, reads one info request (sent
/// back through the channel) and writes `reply` (raw bytes, header
/// included).
fn fake_server(reply: Vec<u8>) -> (u16, mpsc::Receiver<Request>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else {
            return;
        };
        drop(listener);
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_write_timeout(Some(WAIT)).unwrap();
        let mut header = [0u8; 8];
        if stream.read_exact(&mut header).is_err() {
            return;
        }
        let length = (u64::from_be_bytes(header) & ((1 << 48) - 1)) as usize;
        let mut body = vec![0u8; length.min(1 << 20)];
        if stream.read_exact(&mut body).is_err() {
            return;
        }
        let _ = sender.send(Request { header, body });
        let _ = stream.write_all(&reply);
        // Let the client read before the socket goes away.
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
    });
    (port, receiver)
}

fn info_frame(body: &str) -> Vec<u8> {
    let mut frame = ((2u64 << 56) | (1u64 << 48) | body.len() as u64)
        .to_be_bytes()
        .to_vec();
    frame.extend_from_slice(body.as_bytes());
    frame
}

fn received(receiver: &mpsc::Receiver<Request>) -> Request {
    receiver
        .recv_timeout(WAIT)
        .expect("the fake server got no request")
}

#[test]
fn one_command_prints_the_value_alone() {
    let (port, requests) = fake_server(info_frame("build\t8.1.0.0\n"));
    let run = osprey(
        &["info", "-h", "127.0.0.1", "-p", &port.to_string(), "build"],
        WAIT,
    );
    assert_eq!(run.status, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout, "8.1.0.0\n");
    let request = received(&requests);
    assert_eq!(request.header, [2, 1, 0, 0, 0, 0, 0, 6]);
    assert_eq!(request.body, b"build\n");
}

#[test]
fn several_commands_print_command_and_value() {
    let (port, requests) = fake_server(info_frame("node\tBB9020011AC4202\nbuild\t8.1.0.0\n"));
    let run = osprey(
        &["info", "--port", &port.to_string(), "node", "build"],
        WAIT,
    );
    assert_eq!(run.status, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout, "node: BB9020011AC4202\nbuild: 8.1.0.0\n");
    assert_eq!(received(&requests).body, b"node\nbuild\n");
}

#[test]
fn no_command_sends_an_empty_body() {
    let (port, requests) = fake_server(info_frame("node\tA1\nedition\tOsprey\n"));
    let run = osprey(&["info", "-p", &port.to_string()], WAIT);
    assert_eq!(run.status, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout, "node: A1\nedition: Osprey\n");
    let request = received(&requests);
    assert_eq!(request.header, [2, 1, 0, 0, 0, 0, 0, 0]);
    assert!(request.body.is_empty());
}

#[test]
fn an_error_value_exits_1() {
    let (port, _requests) = fake_server(info_frame("rack-ids\tERROR:25:enterprise only\n"));
    let run = osprey(&["info", "-p", &port.to_string(), "rack-ids"], WAIT);
    assert_eq!(run.status, Some(1));
    assert_eq!(run.stdout, "ERROR:25:enterprise only\n");
}

#[test]
fn oversized_and_foreign_replies_are_refused() {
    // 17 MiB announced, nothing sent: refused on the header alone.
    let header = ((2u64 << 56) | (1u64 << 48) | (17 << 20))
        .to_be_bytes()
        .to_vec();
    let (port, _requests) = fake_server(header);
    let run = osprey(&["info", "-p", &port.to_string(), "statistics"], WAIT);
    assert_eq!(run.status, Some(1));
    assert!(
        run.stderr.contains("over the 16 MiB limit"),
        "{}",
        run.stderr
    );

    let mut data_frame = info_frame("x\ty\n");
    data_frame[1] = 3;
    let (port, _requests) = fake_server(data_frame);
    let run = osprey(&["info", "-p", &port.to_string(), "x"], WAIT);
    assert_eq!(run.status, Some(1));
    assert!(run.stderr.contains("not an info reply"), "{}", run.stderr);

    // Closed halfway through the body.
    let mut short = info_frame("build\t8.1.0.0\n");
    short.truncate(12);
    let (port, _requests) = fake_server(short);
    let listener_gone = osprey(&["info", "-p", &port.to_string(), "build"], WAIT);
    assert_eq!(listener_gone.status, Some(1));
}

#[test]
fn a_silent_server_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let holder = thread::spawn(move || {
        // Accept and hold the connection without answering.
        let accepted = listener.accept();
        thread::sleep(Duration::from_secs(7));
        drop(accepted);
    });
    let started = Instant::now();
    let run = osprey(&["info", "-p", &port.to_string(), "build"], WAIT);
    assert_eq!(run.status, Some(1));
    assert!(run.stderr.contains("within 5 s"), "{}", run.stderr);
    assert!(started.elapsed() < Duration::from_secs(15));
    holder.join().unwrap();
}

#[test]
fn connection_refused_says_no_ospreyd_is_listening() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let run = osprey(&["info", "-p", &port.to_string(), "build"], WAIT);
    assert_eq!(run.status, Some(1));
    assert!(
        run.stderr
            .contains(&format!("no ospreyd listening on 127.0.0.1:{port}")),
        "{}",
        run.stderr
    );
}

#[test]
fn shutdown_waits_until_the_port_closes() {
    let (port, requests) = fake_server(info_frame("shutdown\tok\n"));
    let run = osprey(&["shutdown", "-p", &port.to_string()], WAIT);
    assert_eq!(run.status, Some(0), "{}", run.stderr);
    assert_eq!(received(&requests).body, b"shutdown\n");
    assert!(run.stdout.contains("waiting"), "{}", run.stdout);
    assert!(run.stdout.contains("has stopped"), "{}", run.stdout);
    // Nothing listens there any more.
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn a_refused_shutdown_exits_1() {
    let (port, _requests) = fake_server(info_frame("shutdown\tERROR:4:not now\n"));
    let run = osprey(&["shutdown", "-p", &port.to_string()], WAIT);
    assert_eq!(run.status, Some(1));
    assert!(
        run.stderr.contains("refused to shut down"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("ERROR:4:not now"), "{}", run.stderr);
}

#[test]
fn usage_errors_exit_2() {
    let help = osprey(&["--help"], WAIT);
    assert_eq!(help.status, Some(2));
    assert!(
        help.stdout.contains("usage: osprey info"),
        "{}",
        help.stdout
    );
    for args in [
        &[][..],
        &["bogus"][..],
        &["info", "--bogus"][..],
        &["info", "-p"][..],
        &["info", "-p", "0"][..],
        &["info", "-p", "http"][..],
        &["info", "-p", "70000"][..],
        &["shutdown", "now"][..],
        &["info", "--help"][..],
    ] {
        let run = osprey(args, WAIT);
        assert_eq!(run.status, Some(2), "{args:?}: {}", run.stderr);
        let text = format!("{}{}", run.stdout, run.stderr);
        assert!(text.contains("usage: osprey"), "{args:?}: {text}");
    }
}
