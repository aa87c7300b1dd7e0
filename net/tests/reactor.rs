//! The reactor with a stand-in service: replies of a turn are sent at its
//! end (so several connections served in one turn all get theirs), a
//! request parked on "the device" is answered when `poll` reports it, and a
//! client that shuts down its sending side after a request answered at once
//! still gets the reply before the connection closes. (One whose request is
//! parked does not: the end of stream closes the connection first. No
//! Aerospike client half-closes.)

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use osprey_net::reactor::{ConnId, Handled, NetShared, Reactor, ReactorConfig, Service};
use osprey_net::wire::proto::{self, FrameKind};

/// Echoes info bodies; a body starting with `park` is answered through
/// `poll` on the next turn, as a device read would be.
#[derive(Default)]
struct Echo {
    parked: Vec<(ConnId, Vec<u8>)>,
    due: Vec<(ConnId, Vec<u8>)>,
}

fn reply(out: &mut Vec<u8>, body: &[u8]) {
    let start = proto::begin_frame(out, FrameKind::Info);
    out.extend_from_slice(body);
    proto::end_frame(out, start);
}

impl Service for Echo {
    fn on_frame(
        &mut self,
        conn: ConnId,
        _kind: FrameKind,
        body: &[u8],
        out: &mut Vec<u8>,
    ) -> Handled {
        if body.starts_with(b"park") {
            self.parked.push((conn, body.to_vec()));
            return Handled::Pending;
        }
        reply(out, body);
        Handled::Replied
    }

    fn poll(&mut self, ready: &mut Vec<ConnId>) -> bool {
        let any = !self.parked.is_empty();
        for (conn, body) in self.parked.drain(..) {
            ready.push(conn);
            self.due.push((conn, body));
        }
        any
    }

    fn resume(&mut self, conn: ConnId, out: &mut Vec<u8>) -> Handled {
        match self.due.iter().position(|(c, _)| *c == conn) {
            Some(i) => {
                let (_, body) = self.due.swap_remove(i);
                reply(out, &body);
                Handled::Replied
            }
            None => Handled::Replied,
        }
    }

    fn closed(&mut self, conn: ConnId) {
        self.parked.retain(|(c, _)| *c != conn);
        self.due.retain(|(c, _)| *c != conn);
    }

    fn busy(&self) -> bool {
        !self.parked.is_empty() || !self.due.is_empty()
    }

    fn shutdown(&mut self) {}
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    reply(&mut out, body);
    out
}

fn read_frame(stream: &mut TcpStream) -> Vec<u8> {
    let mut head = [0u8; 8];
    stream.read_exact(&mut head).expect("a reply header");
    assert_eq!(head[0], 2, "protocol version");
    let size = (u64::from_be_bytes(head) & ((1 << 48) - 1)) as usize;
    let mut body = vec![0; size];
    stream.read_exact(&mut body).expect("a reply body");
    body
}

fn start() -> (
    Arc<NetShared>,
    std::net::SocketAddr,
    thread::JoinHandle<Echo>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let shared = NetShared::new(1).unwrap();
    let reactor = Reactor::new(
        0,
        ReactorConfig::default(),
        shared.clone(),
        Some(listener),
        Echo::default(),
    )
    .unwrap();
    let handle = thread::spawn(move || reactor.run());
    (shared, addr, handle)
}

fn connect(addr: std::net::SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

#[test]
fn every_connection_gets_its_reply_and_parked_ones_resume() {
    let (shared, addr, handle) = start();
    let mut clients: Vec<TcpStream> = (0..8).map(|_| connect(addr)).collect();
    for round in 0..50 {
        // All requests first, so that the reactor tends to find several
        // in one turn; odd clients' requests are parked.
        for (i, c) in clients.iter_mut().enumerate() {
            let body = if i % 2 == 1 {
                format!("park {i} {round}")
            } else {
                format!("echo {i} {round}")
            };
            c.write_all(&frame(body.as_bytes())).unwrap();
        }
        for (i, c) in clients.iter_mut().enumerate() {
            let want = if i % 2 == 1 {
                format!("park {i} {round}")
            } else {
                format!("echo {i} {round}")
            };
            assert_eq!(read_frame(c), want.as_bytes());
        }
    }
    shared.stop();
    handle.join().unwrap();
}

#[test]
fn a_client_that_shuts_down_its_side_still_gets_the_reply() {
    let (shared, addr, handle) = start();
    for body in [&b"echo half-closed"[..], b"echo again"] {
        let mut c = connect(addr);
        c.write_all(&frame(body)).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_frame(&mut c), body);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut rest = Vec::new();
        // Then the server closes: end of stream, nothing more.
        assert_eq!(c.read_to_end(&mut rest).unwrap(), 0);
        assert!(Instant::now() < deadline);
    }
    shared.stop();
    handle.join().unwrap();
}
