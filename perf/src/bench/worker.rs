//! One load thread: a poll loop over non-blocking connections that keeps up
//! to `-c` commands in flight.
//!
//! The protocol allows one outstanding request per connection, so
//! pipelining means connections: the thread keeps a pool of idle
//! connections per node and takes one (or opens one) for each command it
//! starts; when the reply is complete the connection goes back to its
//! node's pool. A command is routed by its key's partition (the first four
//! digest bytes, little-endian, mod 4096) to that partition's master; a
//! batch read is split into one request per node.
//!
//! Each connection is a small state machine:
//!
//! ```text
//! Connecting --writable--> [LoggingIn --admin reply 0/52-->] Busy --reply--> Idle
//!      Idle --command--> Busy        any error --> closed (command counted failed)
//! ```
//!
//! Errors close the connection; the next command for that node opens a new
//! one (after [`RECONNECT_BACKOFF`] if connecting failed). A connection
//! error or a partition-ownership error (result 11) asks the tend thread for
//! a new partition map; a thread takes a new map at its next loop turn
//! (one relaxed load per turn when nothing changed). A command not
//! answered within [`COMMAND_TIMEOUT`] is counted as a timeout and its
//! connection closed. Nothing here blocks except `poll` itself.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use osprey_engine::digest::DIGEST_LEN;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::args::{BinSpec, Config, Workload};
use super::cluster::ClusterMap;
use super::keys::KeyChooser;
use super::stats::{ErrorKind, Kind, Tally, FLUSH_INTERVAL};
use super::wire::{self, BatchTally, Bin, SingleKind};

/// A command unanswered for this long is a timeout.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed connect, the node gets no new connection for this long.
pub const RECONNECT_BACKOFF: Duration = Duration::from_millis(200);
/// Longest sleep in `poll`, so that stop flags and timeouts are seen.
const MAX_POLL_WAIT: Duration = Duration::from_millis(50);
const READ_CHUNK_BYTES: usize = 64 << 10;
const SEED: u64 = 0x05B5_BE4C_0000_0000;

/// Everything the threads share.
pub struct Shared {
    pub config: Config,
    /// The current partition map, replaced by the tend thread.
    cluster: Mutex<Arc<ClusterMap>>,
    /// Bumped with every new map.
    map_version: AtomicU64,
    /// Set by a worker that saw a sign of a changed cluster.
    pub refresh_wanted: AtomicBool,
    /// `(user, client hash)` when `--user` is given.
    pub credential: Option<(String, String)>,
    pub chooser: KeyChooser,
    /// Set by the main thread when the run's time is up.
    pub stop: AtomicBool,
    /// Next key offset of the insert workload.
    pub next_insert: AtomicU64,
    /// Each thread's tally since the reporter last took it.
    pub slots: Vec<Mutex<Tally>>,
}

impl Shared {
    pub fn new(
        config: Config,
        cluster: ClusterMap,
        credential: Option<(String, String)>,
    ) -> Shared {
        let chooser = KeyChooser::new(config.keys, config.distribution);
        let slots = (0..config.threads)
            .map(|_| Mutex::new(Tally::default()))
            .collect();
        Shared {
            config,
            cluster: Mutex::new(Arc::new(cluster)),
            map_version: AtomicU64::new(0),
            refresh_wanted: AtomicBool::new(false),
            credential,
            chooser,
            stop: AtomicBool::new(false),
            next_insert: AtomicU64::new(0),
            slots,
        }
    }

    /// The current partition map.
    pub fn cluster(&self) -> Arc<ClusterMap> {
        self.cluster
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Hands the workers a new partition map.
    pub fn publish(&self, map: ClusterMap) {
        *self.cluster.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
        self.map_version.fetch_add(1, Ordering::Release);
    }
}

/// Result code "partition unavailable": the node does not hold the
/// partition (the map is stale, or a migration is under way).
const RESULT_PARTITION_UNAVAILABLE: u8 = 11;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Connecting,
    LoggingIn,
    Busy,
    Idle,
}

/// A request for one node: a single-key command or one node's share of a
/// batch read.
#[derive(Clone, Debug)]
enum Request {
    Single {
        kind: SingleKind,
        key: i64,
        digest: [u8; DIGEST_LEN],
        node: usize,
    },
    Batch {
        digests: Vec<[u8; DIGEST_LEN]>,
        node: usize,
    },
}

impl Request {
    fn node(&self) -> usize {
        match self {
            Request::Single { node, .. } | Request::Batch { node, .. } => *node,
        }
    }

    fn kind(&self) -> Kind {
        match self {
            Request::Single { kind, .. } => match kind {
                SingleKind::Read => Kind::Read,
                SingleKind::Update | SingleKind::Replace => Kind::Write,
                SingleKind::Delete => Kind::Delete,
            },
            Request::Batch { .. } => Kind::Batch,
        }
    }
}

struct InFlight {
    kind: Kind,
    started: Instant,
    batch: BatchTally,
}

struct Conn {
    stream: TcpStream,
    node: usize,
    state: State,
    /// Bytes to send; `written` of them are sent.
    out: Vec<u8>,
    written: usize,
    /// The command frame waiting behind LOGIN on a new connection.
    after_login: Vec<u8>,
    input: Vec<u8>,
    command: Option<InFlight>,
}

/// What a read did to the connection's command.
enum Outcome {
    Pending,
    Done,
    Failed(ErrorKind),
}

pub struct Worker {
    shared: Arc<Shared>,
    /// This thread's copy of the partition map and its version.
    map: Arc<ClusterMap>,
    map_version: u64,
    index: usize,
    poll: Poll,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    idle: Vec<Vec<usize>>,
    backoff_until: Vec<Option<Instant>>,
    ready: VecDeque<Request>,
    in_flight: usize,
    bins: Vec<Bin>,
    rng: StdRng,
    tally: Tally,
    scratch: Vec<u8>,
    /// No more ops to generate (insert range done, or stopping).
    exhausted: bool,
    ops_started: u64,
    started: Instant,
}

impl Worker {
    pub fn new(shared: Arc<Shared>, index: usize) -> io::Result<Worker> {
        let map_version = shared.map_version.load(Ordering::Acquire);
        let map = shared.cluster();
        let nodes = map.nodes.len();
        let bins = shared.config.template_bins();
        Ok(Worker {
            poll: Poll::new()?,
            conns: Vec::new(),
            free: Vec::new(),
            idle: vec![Vec::new(); nodes],
            backoff_until: vec![None; nodes],
            ready: VecDeque::new(),
            in_flight: 0,
            bins,
            rng: StdRng::seed_from_u64(SEED ^ index as u64),
            tally: Tally::default(),
            scratch: vec![0; READ_CHUNK_BYTES],
            exhausted: false,
            ops_started: 0,
            started: Instant::now(),
            shared,
            map,
            map_version,
            index,
        })
    }

    /// Runs until the workload ends or the stop flag is set and every
    /// command in flight has been answered (or timed out).
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut next_flush = Instant::now() + FLUSH_INTERVAL;
        let mut next_timeout_check = Instant::now() + MAX_POLL_WAIT;
        let commands = self.shared.config.commands_per_thread;
        let spin = self.shared.config.spin;
        let mut last_event = Instant::now();
        loop {
            if self.shared.map_version.load(Ordering::Relaxed) != self.map_version {
                self.adopt_map();
            }
            let now = Instant::now();
            if self.shared.stop.load(Ordering::Relaxed) {
                self.exhausted = true;
                self.ready.clear();
            }
            let mut wait = MAX_POLL_WAIT;
            while self.in_flight < commands {
                if self.ready.is_empty() {
                    if self.exhausted {
                        break;
                    }
                    if let Some(delay) = self.throttle_delay(now) {
                        wait = wait.min(delay);
                        break;
                    }
                    if !self.generate() {
                        self.exhausted = true;
                        break;
                    }
                }
                let request = self.ready.pop_front().expect("a request is ready");
                match self.acquire(request.node(), now) {
                    Ok(index) => self.start(index, request, now),
                    Err(delay) => {
                        self.ready.push_front(request);
                        wait = wait.min(delay);
                        break;
                    }
                }
            }
            if self.exhausted && self.ready.is_empty() && self.in_flight == 0 {
                break;
            }
            wait = wait.min(next_flush.saturating_duration_since(now));
            if self.in_flight > 0 && now.duration_since(last_event) < spin {
                // --spin-us: a reply that finds this thread polling costs
                // the server no wake-up, and this thread no sleep.
                wait = Duration::ZERO;
            }
            self.poll.poll(&mut events, Some(wait))?;
            for event in events.iter() {
                self.on_event(event.token().0);
            }
            let now = Instant::now();
            if !events.is_empty() {
                last_event = now;
            }
            if now >= next_timeout_check {
                self.expire(now);
                next_timeout_check = now + MAX_POLL_WAIT;
            }
            if now >= next_flush {
                self.flush_tally();
                next_flush = now + FLUSH_INTERVAL;
            }
        }
        for index in 0..self.conns.len() {
            self.close(index, None);
        }
        self.flush_tally();
        Ok(())
    }

    fn flush_tally(&mut self) {
        if self.tally.is_empty() {
            return;
        }
        let mut slot = self.shared.slots[self.index]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        slot.add(&self.tally);
        drop(slot);
        self.tally.clear();
    }

    /// With `-g`, how long until this thread may start its next op.
    fn throttle_delay(&self, now: Instant) -> Option<Duration> {
        let config = &self.shared.config;
        if config.throughput == 0 {
            return None;
        }
        let rate = config.throughput as f64 / config.threads as f64;
        let due = self.started + Duration::from_secs_f64(self.ops_started as f64 / rate);
        (due > now).then(|| due - now)
    }

    fn key(&mut self) -> i64 {
        let offset = self.shared.chooser.next(&mut self.rng);
        self.shared.config.start_key + offset as i64
    }

    fn single(&mut self, kind: SingleKind, key: i64) {
        let digest = wire::key_digest(&self.shared.config.set, key);
        let node = self.map.node_of(wire::partition_of(&digest));
        self.ready.push_back(Request::Single {
            kind,
            key,
            digest,
            node,
        });
    }

    /// Queues the requests of the workload's next op; false when there is
    /// none (the insert range is done).
    fn generate(&mut self) -> bool {
        let config = &self.shared.config;
        let (read_pct, write_kind, write_pct) = match config.workload {
            Workload::Insert => {
                let offset = self.shared.next_insert.fetch_add(1, Ordering::Relaxed);
                if offset >= config.keys {
                    return false;
                }
                let key = config.start_key + offset as i64;
                self.ops_started += 1;
                self.single(SingleKind::Update, key);
                return true;
            }
            Workload::ReadUpdate { read_pct } => (read_pct, SingleKind::Update, 100 - read_pct),
            Workload::ReadReplace { read_pct } => (read_pct, SingleKind::Replace, 100 - read_pct),
            Workload::ReadUpdateDelete {
                read_pct,
                write_pct,
            } => (read_pct, SingleKind::Update, write_pct),
        };
        let batch_size = config.batch_size;
        self.ops_started += 1;
        let roll = self.rng.gen_range(0..100u32);
        if roll < read_pct {
            if batch_size == 0 {
                let key = self.key();
                self.single(SingleKind::Read, key);
            } else {
                let nodes = self.map.nodes.len();
                let mut groups: Vec<Vec<[u8; DIGEST_LEN]>> = vec![Vec::new(); nodes];
                for _ in 0..batch_size {
                    let key = self.key();
                    let digest = wire::key_digest(&self.shared.config.set, key);
                    let node = self.map.node_of(wire::partition_of(&digest));
                    groups[node].push(digest);
                }
                for (node, digests) in groups.into_iter().enumerate() {
                    if !digests.is_empty() {
                        self.ready.push_back(Request::Batch { digests, node });
                    }
                }
            }
        } else if roll < read_pct + write_pct {
            let key = self.key();
            self.single(write_kind, key);
        } else {
            let key = self.key();
            self.single(SingleKind::Delete, key);
        }
        true
    }

    /// No new connection to `node` for [`RECONNECT_BACKOFF`] (a node that
    /// left the map has no entry: nothing to do).
    fn back_off(&mut self, node: usize, now: Instant) {
        if let Some(until) = self.backoff_until.get_mut(node) {
            *until = Some(now + RECONNECT_BACKOFF);
        }
    }

    /// An idle connection to `node`, or a new one; `Err(wait)` while the
    /// node is backing off after a failed connect.
    fn acquire(&mut self, node: usize, now: Instant) -> Result<usize, Duration> {
        if let Some(index) = self.idle[node].pop() {
            return Ok(index);
        }
        if let Some(until) = self.backoff_until[node] {
            if until > now {
                return Err(until - now);
            }
            self.backoff_until[node] = None;
        }
        let addr = self.map.nodes[node].addr;
        let mut stream = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(_) => {
                self.tally.error(ErrorKind::Connection, 1);
                self.backoff_until[node] = Some(now + RECONNECT_BACKOFF);
                return Err(RECONNECT_BACKOFF);
            }
        };
        let index = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        if self
            .poll
            .registry()
            .register(
                &mut stream,
                Token(index),
                Interest::READABLE | Interest::WRITABLE,
            )
            .is_err()
        {
            self.free.push(index);
            self.tally.error(ErrorKind::Connection, 1);
            self.backoff_until[node] = Some(now + RECONNECT_BACKOFF);
            return Err(RECONNECT_BACKOFF);
        }
        self.conns[index] = Some(Conn {
            stream,
            node,
            state: State::Connecting,
            out: Vec::new(),
            written: 0,
            after_login: Vec::new(),
            input: Vec::new(),
            command: None,
        });
        Ok(index)
    }

    /// Encodes `request` on connection `index` and sends what the socket
    /// takes now.
    fn start(&mut self, index: usize, request: Request, now: Instant) {
        let config = &self.shared.config;
        let kind = request.kind();
        let conn = self.conns[index].as_mut().expect("acquired connection");
        match &request {
            Request::Single {
                kind, key, digest, ..
            } => {
                if matches!(kind, SingleKind::Update | SingleKind::Replace) {
                    for (bin, spec) in self.bins.iter_mut().zip(&config.bins) {
                        if *spec == BinSpec::Integer {
                            bin.value.copy_from_slice(&key.to_be_bytes());
                        }
                    }
                }
                wire::single_request(
                    &mut conn.out,
                    *kind,
                    &config.namespace,
                    &config.set,
                    digest,
                    &self.bins,
                );
            }
            Request::Batch { digests, .. } => {
                wire::batch_read_request(&mut conn.out, &config.namespace, &config.set, digests);
            }
        }
        conn.written = 0;
        conn.input.clear();
        conn.command = Some(InFlight {
            kind,
            started: now,
            batch: BatchTally::default(),
        });
        self.in_flight += 1;
        match conn.state {
            State::Connecting => {
                if let Some((user, hash)) = &self.shared.credential {
                    conn.after_login = std::mem::take(&mut conn.out);
                    wire::login_request(&mut conn.out, user, hash);
                }
                // Sent once the connect completes (a writable event).
            }
            State::Idle => {
                conn.state = State::Busy;
                if send(conn).is_err() {
                    self.close(index, Some(ErrorKind::Connection));
                }
            }
            State::Busy | State::LoggingIn => unreachable!("a connection with a command in flight"),
        }
    }

    fn on_event(&mut self, index: usize) {
        let Some(conn) = self.conns.get_mut(index).and_then(Option::as_mut) else {
            return; // closed earlier in this batch of events
        };
        if conn.state == State::Connecting {
            match conn.stream.take_error() {
                Ok(None) => {}
                Ok(Some(_)) | Err(_) => {
                    let node = conn.node;
                    self.back_off(node, Instant::now());
                    self.close(index, Some(ErrorKind::Connection));
                    return;
                }
            }
            match conn.stream.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return, // not yet
                Err(_) => {
                    let node = conn.node;
                    self.back_off(node, Instant::now());
                    self.close(index, Some(ErrorKind::Connection));
                    return;
                }
            }
            if conn.stream.set_nodelay(true).is_err() {
                self.close(index, Some(ErrorKind::Connection));
                return;
            }
            conn.state = if self.shared.credential.is_some() {
                State::LoggingIn
            } else {
                State::Busy
            };
        }
        if send(conn).is_err() {
            self.close(index, Some(ErrorKind::Connection));
            return;
        }
        // Read everything the socket has (mio is edge-triggered). A short
        // read emptied the socket buffer, so anything later raises a new
        // event: stop there rather than pay a read that says WouldBlock.
        let mut eof = false;
        loop {
            match conn.stream.read(&mut self.scratch) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    conn.input.extend_from_slice(&self.scratch[..n]);
                    if n < self.scratch.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        let outcome = if conn.input.is_empty() {
            Outcome::Pending
        } else {
            self.consume(index)
        };
        match outcome {
            Outcome::Failed(error) => self.close(index, Some(error)),
            Outcome::Done => {
                let conn = self.conns[index].as_mut().expect("open connection");
                conn.state = State::Idle;
                let node = conn.node;
                self.in_flight -= 1;
                if eof || node >= self.idle.len() {
                    // Closed by the peer, or its node left the map.
                    self.close(index, None);
                } else {
                    self.idle[node].push(index);
                }
            }
            Outcome::Pending if eof => {
                let error = self.conns[index]
                    .as_ref()
                    .and_then(|c| c.command.as_ref())
                    .map(|_| ErrorKind::Connection);
                self.close(index, error);
            }
            Outcome::Pending => {}
        }
    }

    /// Decodes the complete frames in connection `index`'s input.
    fn consume(&mut self, index: usize) -> Outcome {
        let conn = self.conns[index].as_mut().expect("open connection");
        let mut at = 0;
        let mut outcome = Outcome::Pending;
        while at < conn.input.len() {
            let frame = match wire::next_frame(&conn.input[at..]) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => return Outcome::Failed(ErrorKind::Protocol),
            };
            let body = &conn.input[at + frame.body_start..at + frame.body_end];
            at += frame.body_end;
            let Some(command) = conn.command.as_mut() else {
                return Outcome::Failed(ErrorKind::Protocol); // unasked-for bytes
            };
            match conn.state {
                State::LoggingIn => {
                    if frame.kind != 2 {
                        return Outcome::Failed(ErrorKind::Protocol);
                    }
                    match wire::admin_result(body) {
                        Some(0) | Some(wire::RESULT_SECURITY_NOT_ENABLED) => {
                            conn.out = std::mem::take(&mut conn.after_login);
                            conn.written = 0;
                            conn.state = State::Busy;
                            if send(conn).is_err() {
                                return Outcome::Failed(ErrorKind::Connection);
                            }
                        }
                        code => return Outcome::Failed(ErrorKind::Login(code.unwrap_or(255))),
                    }
                }
                State::Busy if frame.kind == 3 => {
                    let latency = command.started.elapsed();
                    if command.kind == Kind::Batch {
                        if wire::batch_frame(body, &mut command.batch).is_err() {
                            return Outcome::Failed(ErrorKind::Protocol);
                        }
                        let Some(code) = command.batch.done else {
                            continue;
                        };
                        let b = command.batch;
                        if code == 0 {
                            self.tally.success(Kind::Batch, latency, false);
                            self.tally.batch_keys_found += b.found;
                            self.tally.batch_keys_not_found += b.not_found;
                            if b.row_errors > 0 {
                                self.tally
                                    .error(ErrorKind::Result(b.last_row_error), b.row_errors);
                            }
                        } else {
                            self.tally.error(ErrorKind::Result(code), 1);
                        }
                    } else {
                        let Ok(code) = wire::single_result(body) else {
                            return Outcome::Failed(ErrorKind::Protocol);
                        };
                        if code == RESULT_PARTITION_UNAVAILABLE {
                            self.shared.refresh_wanted.store(true, Ordering::Relaxed);
                        }
                        let not_found = code == wire::RESULT_NOT_FOUND
                            && matches!(command.kind, Kind::Read | Kind::Delete);
                        if code == 0 || not_found {
                            self.tally.success(command.kind, latency, not_found);
                        } else {
                            self.tally.error(ErrorKind::Result(code), 1);
                        }
                    }
                    conn.command = None;
                    outcome = Outcome::Done;
                    if at != conn.input.len() {
                        return Outcome::Failed(ErrorKind::Protocol); // bytes after the reply
                    }
                }
                _ => return Outcome::Failed(ErrorKind::Protocol),
            }
        }
        conn.input.drain(..at);
        outcome
    }

    /// Closes connection `index`; a command in flight on it is counted as
    /// failed with `error` (or with a connection error if `error` is None
    /// but a command was in flight).
    fn close(&mut self, index: usize, error: Option<ErrorKind>) {
        let Some(mut conn) = self.conns.get_mut(index).and_then(Option::take) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        if conn.command.is_some() {
            self.in_flight -= 1;
            self.tally.error(error.unwrap_or(ErrorKind::Connection), 1);
        }
        if conn.state == State::Idle {
            if let Some(idle) = self.idle.get_mut(conn.node) {
                idle.retain(|&i| i != index);
            }
        }
        if error == Some(ErrorKind::Connection) {
            self.shared.refresh_wanted.store(true, Ordering::Relaxed);
        }
        self.free.push(index);
    }

    /// Switches to the tend thread's newest map: connections keep their
    /// node if it is still in the map (matched by id and address), idle
    /// ones to a node that left are closed, busy ones are closed when their
    /// reply is in; queued requests are routed again.
    fn adopt_map(&mut self) {
        self.map_version = self.shared.map_version.load(Ordering::Acquire);
        let map = self.shared.cluster();
        let moved: Vec<Option<usize>> = self
            .map
            .nodes
            .iter()
            .map(|old| map.nodes.iter().position(|n| n == old))
            .collect();
        let mut idle = vec![Vec::new(); map.nodes.len()];
        let mut backoff_until = vec![None; map.nodes.len()];
        for (old, until) in self.backoff_until.iter().enumerate() {
            if let Some(Some(new)) = moved.get(old) {
                backoff_until[*new] = *until;
            }
        }
        let mut orphans = Vec::new();
        for (index, slot) in self.conns.iter_mut().enumerate() {
            let Some(conn) = slot.as_mut() else { continue };
            match moved.get(conn.node).copied().flatten() {
                Some(new) => {
                    conn.node = new;
                    if conn.state == State::Idle {
                        idle[new].push(index);
                    }
                }
                None => {
                    conn.node = usize::MAX;
                    if conn.state == State::Idle {
                        orphans.push(index);
                    }
                }
            }
        }
        self.map = map;
        self.idle = idle;
        self.backoff_until = backoff_until;
        for index in orphans {
            self.close(index, None);
        }
        for request in self.ready.iter_mut() {
            match request {
                Request::Single { digest, node, .. } => {
                    *node = self.map.node_of(wire::partition_of(digest));
                }
                Request::Batch { digests, node } => {
                    // Kept whole: the first key's master takes it, and a
                    // node answers keys it does not own (Osprey: always).
                    *node = self.map.node_of(wire::partition_of(&digests[0]));
                }
            }
        }
    }

    /// Times out commands in flight too long.
    fn expire(&mut self, now: Instant) {
        for index in 0..self.conns.len() {
            let late = self.conns[index]
                .as_ref()
                .and_then(|c| c.command.as_ref())
                .is_some_and(|cmd| now.duration_since(cmd.started) > COMMAND_TIMEOUT);
            if late {
                self.close(index, Some(ErrorKind::Timeout));
            }
        }
    }
}

/// Writes what the socket takes of the connection's pending bytes.
fn send(conn: &mut Conn) -> io::Result<()> {
    if conn.state == State::Connecting || conn.state == State::Idle {
        return Ok(());
    }
    while conn.written < conn.out.len() {
        match conn.stream.write(&conn.out[conn.written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => conn.written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
