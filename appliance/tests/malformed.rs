//! Malformed input on raw TCP connections: each bad connection must be closed
//! or answered with an error (never hang, never crash the server), while a
//! real client on other connections keeps working throughout.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use aerospike::{as_bin, Bins, Client, Key, ReadPolicy, Value, WritePolicy};
use support::client::connect;
use support::{Server, NAMESPACE as NS};

/// How long the server may take to close or answer a bad connection.
const VERDICT_TIMEOUT: Duration = Duration::from_secs(10);

fn proto(kind: u8, body: &[u8]) -> Vec<u8> {
    let word = (2u64 << 56) | (u64::from(kind) << 48) | body.len() as u64;
    let mut v = word.to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

fn header_word(version: u8, kind: u8, size: u64) -> [u8; 8] {
    ((u64::from(version) << 56) | (u64::from(kind) << 48) | size).to_be_bytes()
}

/// A 22-byte as_msg header.
fn msg_header(info1: u8, info2: u8, n_fields: u16, n_ops: u16) -> Vec<u8> {
    let mut h = vec![22, info1, info2, 0, 0, 0];
    h.extend_from_slice(&0u32.to_be_bytes()); // generation
    h.extend_from_slice(&0u32.to_be_bytes()); // ttl
    h.extend_from_slice(&1000u32.to_be_bytes()); // transaction ttl
    h.extend_from_slice(&n_fields.to_be_bytes());
    h.extend_from_slice(&n_ops.to_be_bytes());
    h
}

fn field(kind: u8, data: &[u8]) -> Vec<u8> {
    let mut f = ((data.len() + 1) as u32).to_be_bytes().to_vec();
    f.push(kind);
    f.extend_from_slice(data);
    f
}

fn raw(server: &Server) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", server.port())).expect("raw connect");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s.set_write_timeout(Some(VERDICT_TIMEOUT)).unwrap();
    s
}

#[derive(Debug)]
enum Verdict {
    Closed,
    /// An AS_MSG reply with this result code.
    MsgError(u8),
    /// Some other frame type (type, first bytes of the body).
    Other(u8, Vec<u8>),
}

/// Reads until the server closes the connection or sends a complete reply
/// frame, within VERDICT_TIMEOUT; panics on silence.
fn verdict(s: &mut TcpStream, what: &str) -> Verdict {
    let deadline = Instant::now() + VERDICT_TIMEOUT;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if buf.len() >= 8 {
            let word = u64::from_be_bytes(buf[..8].try_into().unwrap());
            let kind = (word >> 48) as u8;
            let size = (word & 0xFFFF_FFFF_FFFF) as usize;
            if buf.len() >= 8 + size.min(1 << 20) {
                let body = &buf[8..];
                if kind == 3 && body.len() >= 22 {
                    return Verdict::MsgError(body[5]);
                }
                return Verdict::Other(kind, body[..body.len().min(64)].to_vec());
            }
        }
        match s.read(&mut chunk) {
            Ok(0) => return Verdict::Closed,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Verdict::Closed, // reset
        }
        if Instant::now() > deadline {
            panic!(
                "{what}: the server neither closed the connection nor answered within \
                 {VERDICT_TIMEOUT:?} (got {} bytes: {:02x?})",
                buf.len(),
                &buf[..buf.len().min(64)]
            );
        }
    }
}

/// Closed, or answered with an AS_MSG error code (non-zero).
fn assert_rejected(s: &mut TcpStream, what: &str) {
    match verdict(s, what) {
        Verdict::Closed => {}
        Verdict::MsgError(rc) if rc != 0 => {}
        v => panic!("{what}: want the connection closed or an error reply, got {v:?}"),
    }
}

/// A put and a get through the real client.
async fn client_works(client: &Client, server: &mut Server, step: &str) {
    let mut wp = WritePolicy::default();
    wp.base_policy.total_timeout = 5_000;
    let mut rp = ReadPolicy::default();
    rp.base_policy.total_timeout = 5_000;
    let k = Key::new(NS, "good", Value::from(step)).unwrap();
    client
        .put(&wp, &k, &[as_bin!("step", step)])
        .await
        .unwrap_or_else(|e| panic!("client put after {step}: {e}"));
    let rec = client
        .get(&rp, &k, Bins::All)
        .await
        .unwrap_or_else(|e| panic!("client get after {step}: {e}"));
    assert_eq!(
        rec.bins.get("step"),
        Some(&Value::from(step)),
        "after {step}"
    );
    assert!(
        server.is_running(),
        "ospreyd exited after {step}\n{}",
        server.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_connections_do_not_disturb_good_ones() {
    let mut server = Server::start(0);
    let client = connect(&server).await;
    client_works(&client, &mut server, "start").await;

    // Sanity: a well-formed info request on a raw connection is answered.
    {
        let mut s = raw(&server);
        s.write_all(&proto(1, b"build\n")).unwrap();
        match verdict(&mut s, "info build") {
            Verdict::Other(1, body) => assert!(
                body.starts_with(b"build\t"),
                "info reply {:?}",
                String::from_utf8_lossy(&body)
            ),
            v => panic!("info build on a raw connection: {v:?}"),
        }
    }

    // A connection held open with half a frame must not block the others.
    let mut held = raw(&server);
    held.write_all(&header_word(2, 3, 100)).unwrap();
    held.write_all(&[22, 0, 0]).unwrap();
    client_works(
        &client,
        &mut server,
        "a half-sent frame on another connection",
    )
    .await;

    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "garbage (an HTTP request)",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "random bytes",
            (0..512u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
        ),
        ("bad version 3", {
            let mut v = header_word(3, 1, 6).to_vec();
            v.extend_from_slice(b"build\n");
            v
        }),
        ("bad version 0", {
            let mut v = header_word(0, 3, 22).to_vec();
            v.extend_from_slice(&msg_header(3, 0, 0, 0));
            v
        }),
        ("unknown type 9", {
            let mut v = header_word(2, 9, 4).to_vec();
            v.extend_from_slice(&[1, 2, 3, 4]);
            v
        }),
        ("size of 2^47 bytes", header_word(2, 3, 1 << 47).to_vec()),
        ("size over the 128 MiB limit", {
            let mut v = header_word(2, 3, (128 << 20) + 1).to_vec();
            v.extend_from_slice(&msg_header(3, 0, 0, 0));
            v
        }),
        (
            "as_msg body shorter than its header",
            proto(3, &[22, 3, 0, 0, 0]),
        ),
        (
            "as_msg with fields past the end of the frame",
            proto(3, &msg_header(3, 0, 5, 0)),
        ),
        ("as_msg with a field size past the end", {
            let mut body = msg_header(3, 0, 1, 0);
            body.extend_from_slice(&1_000_000u32.to_be_bytes());
            body.push(0);
            body.extend_from_slice(b"test");
            proto(3, &body)
        }),
        ("as_msg with an op size past the end", {
            let mut body = msg_header(0, 1, 3, 1);
            body.extend(field(0, NS.as_bytes()));
            body.extend(field(1, b"bad"));
            body.extend(field(4, &[9u8; 20]));
            body.extend_from_slice(&500u32.to_be_bytes());
            body.extend_from_slice(&[2, 1, 0, 1, b'a']);
            proto(3, &body)
        }),
        ("as_msg with a header size of 0", {
            let mut body = msg_header(3, 0, 0, 0);
            body[0] = 0;
            proto(3, &body)
        }),
        ("compressed frame that does not inflate", {
            let mut body = 100u64.to_be_bytes().to_vec();
            body.extend_from_slice(b"this is not a zlib stream");
            proto(4, &body)
        }),
    ];
    for (what, bytes) in &cases {
        let mut s = raw(&server);
        // The server may close before taking all of it; that is fine.
        let _ = s.write_all(bytes);
        assert_rejected(&mut s, what);
        drop(s);
        client_works(&client, &mut server, what).await;
    }

    // Half a header, then the client hangs up.
    {
        let mut s = raw(&server);
        s.write_all(&[2, 3, 0]).unwrap();
        s.shutdown(Shutdown::Both).unwrap();
    }
    client_works(&client, &mut server, "half a header then hang-up").await;

    // Many bad connections at once, while the client keeps going.
    let mut many: Vec<TcpStream> = (0..50)
        .map(|i| {
            let mut s = raw(&server);
            let _ = s.write_all(&cases[i % cases.len()].1);
            s
        })
        .collect();
    client_works(&client, &mut server, "50 bad connections").await;
    for (i, s) in many.iter_mut().enumerate() {
        assert_rejected(s, cases[i % cases.len()].0);
    }
    drop(many);

    // The held connection: complete nothing, just close it.
    drop(held);
    client_works(&client, &mut server, "the end").await;
    let _ = tokio::time::timeout(Duration::from_secs(10), client.close()).await;
    server.stop_clean();
}
