//! The per-core polling loop.
//!
//! Each service core runs one [`Reactor`] on its own thread. The reactor
//! owns its client connections for their whole life, and a [`Service`] (the
//! daemon's request handling, with that core's device queues inside it). One
//! turn of the loop:
//!
//! ```text
//!   epoll (timeout 0 while there is work)  ─► read frames ─► Service::on_frame
//!   Service::poll (device completions)     ─► Service::resume
//!   send every reply of the turn, back to back
//!   every second: idle connections, the stop flag
//! ```
//!
//! A connection carries one request at a time (the protocol is strictly
//! request then reply); while its request is parked on the device the
//! reactor reads no further frame from it, which also bounds what a client
//! can make the server buffer. Scans stream: the service writes a chunk,
//! and is asked for the next only when the socket has taken the last.
//!
//! Replies are sent at the end of the turn, all together: the first send to
//! a sleeping client pays for waking it (on a virtual machine, an
//! inter-processor interrupt and an exit), and the sends right after it find
//! it awake; sends spread over the turn, between requests, would each pay
//! again. One clock read per turn serves every timestamp of the turn.
//!
//! `PollMode::Busy` never sleeps. `PollMode::Adaptive` spins for
//! `spin` after the last piece of work, then sleeps in `epoll_wait` until a
//! socket or a wake-up (new connection handed over, shutdown) arrives. It
//! never sleeps while a request waits on the device ([`Service::busy`]),
//! since device completions do not wake epoll; background device work
//! ([`Service::background`]: defrag, flush timers) only shortens the sleep
//! to [`BACKGROUND_POLL`].
//!
//! Connections are accepted by core 0 and handed round-robin to the cores
//! through a small mutex-guarded inbox and an eventfd; that is the only
//! cross-core traffic and it is off the request path.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::sys::{Epoll, Event, EventFd, READABLE, WRITABLE};
use crate::wire::proto::{self, FrameKind};

/// How a reactor waits for work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollMode {
    /// Spin forever (a dedicated core, lowest latency).
    Busy,
    /// Spin briefly after the last work, then sleep in the kernel.
    Adaptive,
}

/// Settings every reactor shares.
#[derive(Clone, Debug)]
pub struct ReactorConfig {
    pub poll_mode: PollMode,
    /// Open client connections across all cores; more are accepted and
    /// closed at once, and counted.
    pub max_connections: usize,
    /// Close a connection with no request for this long (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// Largest frame body accepted; a larger claim closes the connection.
    pub max_body_bytes: usize,
    /// Adaptive mode: how long to keep spinning after the last work.
    pub spin: Duration,
    /// How long a stopping reactor waits for parked requests.
    pub drain_timeout: Duration,
}

impl Default for ReactorConfig {
    fn default() -> ReactorConfig {
        ReactorConfig {
            poll_mode: PollMode::Adaptive,
            max_connections: 10_000,
            idle_timeout: Some(Duration::from_secs(60)),
            max_body_bytes: proto::MAX_BODY_BYTES,
            // Long enough to catch a client's next request over loopback
            // or a LAN without a sleep and wake-up; short enough that a
            // core serving a trickle of requests mostly sleeps.
            spin: Duration::from_micros(50),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Connection counters, summed over cores.
#[derive(Debug, Default)]
pub struct NetStats {
    pub accepted: AtomicU64,
    /// Refused because `max_connections` were open.
    pub refused: AtomicU64,
    pub closed: AtomicU64,
    pub idle_closed: AtomicU64,
    /// Closed for a frame that could not be parsed.
    pub malformed: AtomicU64,
    pub frames: AtomicU64,
}

/// What the reactors share: the stop flag, the hand-over inboxes, counters.
pub struct NetShared {
    pub stats: NetStats,
    open: AtomicUsize,
    stop: AtomicBool,
    wakers: Vec<EventFd>,
    inboxes: Vec<Mutex<Vec<TcpStream>>>,
}

impl NetShared {
    pub fn new(cores: usize) -> io::Result<Arc<NetShared>> {
        let cores = cores.max(1);
        let mut wakers = Vec::with_capacity(cores);
        for _ in 0..cores {
            wakers.push(EventFd::new()?);
        }
        Ok(Arc::new(NetShared {
            stats: NetStats::default(),
            open: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            wakers,
            inboxes: (0..cores).map(|_| Mutex::new(Vec::new())).collect(),
        }))
    }

    /// Open client connections now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Relaxed)
    }

    /// Asks every reactor to stop: no new connections or requests, parked
    /// requests finish, then the service shuts down and the thread returns.
    pub fn stop(&self) {
        self.stop.store(true, SeqCst);
        for w in &self.wakers {
            w.wake();
        }
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(SeqCst)
    }

    fn cores(&self) -> usize {
        self.wakers.len()
    }
}

/// A connection's identity on its core: slot and a generation, so that a
/// completion for a closed connection never reaches its slot's next owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl ConnId {
    fn new(slot: usize, generation: u32) -> ConnId {
        ConnId((u64::from(generation) << 32) | slot as u64)
    }

    fn slot(self) -> usize {
        (self.0 & 0xFFFF_FFFF) as usize
    }

    fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// What the service did with a frame (or a resumed request).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handled {
    /// The whole reply is in `out`.
    Replied,
    /// Waiting on the device; `poll` reports the connection when it can go on.
    Pending,
    /// Part of a stream is in `out`; call `resume` for more once it is sent.
    Streaming,
    /// Send what is in `out`, then close the connection.
    Close,
}

/// The daemon's side of a core: turns frames into replies.
pub trait Service {
    /// A whole frame arrived. `body` is only valid during the call.
    fn on_frame(
        &mut self,
        conn: ConnId,
        kind: FrameKind,
        body: &[u8],
        out: &mut Vec<u8>,
    ) -> Handled;
    /// Drives device work; pushes the connections whose parked request can
    /// go on. Returns whether anything happened.
    fn poll(&mut self, ready: &mut Vec<ConnId>) -> bool;
    /// Continues a `Pending` or `Streaming` request.
    fn resume(&mut self, conn: ConnId, out: &mut Vec<u8>) -> Handled;
    /// A client connected from `peer` (before any frame of it).
    fn opened(&mut self, _conn: ConnId, _peer: Option<std::net::SocketAddr>) {}
    /// The connection closed; forget its request.
    fn closed(&mut self, conn: ConnId);
    /// A request waits on device work, whose completions do not wake
    /// epoll: the reactor must not sleep.
    fn busy(&self) -> bool;
    /// Background work (defrag, flush timers) wants polling, but no request
    /// waits on it: an adaptive reactor may sleep, for at most
    /// [`BACKGROUND_POLL`].
    fn background(&self) -> bool {
        false
    }
    /// Called every second or so with the reactor idle or not.
    fn tick(&mut self) {}
    /// The reactor is stopping: finish device work (write open buffers).
    fn shutdown(&mut self);
}

const LISTENER: u64 = u64::MAX;
const WAKE: u64 = u64::MAX - 1;
const INITIAL_BUFFER_BYTES: usize = 16 << 10;
/// Connections accepted per loop turn, so accepting never starves requests.
const ACCEPTS_PER_TURN: usize = 64;
/// Longest adaptive sleep, so timers still run.
const MAX_SLEEP: Duration = Duration::from_millis(100);
/// Longest adaptive sleep while the service has background work: short
/// enough for defrag and flush timers, long enough that an idle core with a
/// defrag job waiting on a flush costs well under 1% of a CPU.
pub const BACKGROUND_POLL: Duration = Duration::from_millis(1);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Idle,
    Pending,
    Streaming,
}

struct Conn {
    stream: TcpStream,
    generation: u32,
    input: Vec<u8>,
    input_len: usize,
    out: Vec<u8>,
    out_sent: usize,
    state: State,
    /// Close once `out` is sent.
    closing: bool,
    want_write: bool,
    /// In `Reactor::to_flush`.
    flush_queued: bool,
    last_active: Instant,
}

/// One core's loop.
pub struct Reactor<S: Service> {
    core: usize,
    config: ReactorConfig,
    shared: Arc<NetShared>,
    listener: Option<TcpListener>,
    epoll: Epoll,
    conns: Vec<Option<Conn>>,
    free_slots: Vec<usize>,
    next_generation: u32,
    next_core: usize,
    /// The clock at the start of this loop turn.
    now: Instant,
    /// Connections with replies to send at the end of this turn.
    to_flush: Vec<ConnId>,
    service: S,
}

impl<S: Service> Reactor<S> {
    /// `listener` is given to core 0 only.
    pub fn new(
        core: usize,
        config: ReactorConfig,
        shared: Arc<NetShared>,
        listener: Option<TcpListener>,
        service: S,
    ) -> io::Result<Reactor<S>> {
        let epoll = Epoll::new(256)?;
        epoll.add(&shared.wakers[core], WAKE, READABLE)?;
        if let Some(l) = &listener {
            l.set_nonblocking(true)?;
            epoll.add(l, LISTENER, READABLE)?;
        }
        Ok(Reactor {
            core,
            config,
            shared,
            listener,
            epoll,
            conns: Vec::new(),
            free_slots: Vec::new(),
            next_generation: 1,
            next_core: 0,
            now: Instant::now(),
            to_flush: Vec::new(),
            service,
        })
    }

    /// Runs until [`NetShared::stop`], then drains and returns the service.
    pub fn run(mut self) -> S {
        let mut events = Vec::with_capacity(256);
        let mut ready = Vec::new();
        let mut last_work = self.now;
        let mut next_tick = self.now + Duration::from_secs(1);
        let mut drain_deadline: Option<Instant> = None;
        loop {
            // One clock read per turn (`self.now`, taken after the wait):
            // a turn is short, and clock reads are a visible share of an
            // empty turn's cost on virtual machines.
            let sleep = match self.config.poll_mode {
                PollMode::Busy => Duration::ZERO,
                PollMode::Adaptive => {
                    if self.service.busy()
                        || self.now.duration_since(last_work) < self.config.spin
                        || drain_deadline.is_some()
                    {
                        Duration::ZERO
                    } else if self.service.background() {
                        BACKGROUND_POLL
                    } else {
                        next_tick.saturating_duration_since(self.now).min(MAX_SLEEP)
                    }
                }
            };
            events.clear();
            if let Err(e) = self.epoll.wait(&mut events, sleep) {
                eprintln!("core {}: epoll_wait failed: {e}", self.core);
            }
            self.now = Instant::now();
            let mut worked = !events.is_empty();
            for &event in &events {
                self.dispatch(event);
            }
            ready.clear();
            if self.service.poll(&mut ready) {
                worked = true;
            }
            for &id in &ready {
                self.resume(id);
            }
            self.flush_queued();
            let now = self.now;
            if worked {
                last_work = now;
            }
            if now >= next_tick {
                next_tick = now + Duration::from_secs(1);
                self.service.tick();
                self.close_idle(now);
            }
            if self.shared.stopping() {
                let deadline = *drain_deadline.get_or_insert_with(|| {
                    if let Some(l) = self.listener.take() {
                        let _ = self.epoll.delete(&l);
                    }
                    now + self.config.drain_timeout
                });
                let parked = self
                    .conns
                    .iter()
                    .flatten()
                    .any(|c| c.state == State::Pending && !c.closing);
                if !parked || now >= deadline {
                    break;
                }
            }
        }
        for slot in 0..self.conns.len() {
            if self.conns[slot].is_some() {
                self.close(slot);
            }
        }
        self.service.shutdown();
        self.service
    }

    fn dispatch(&mut self, event: Event) {
        match event.token {
            LISTENER => self.accept(),
            WAKE => {
                self.shared.wakers[self.core].drain();
                let arrived = std::mem::take(
                    &mut *self.shared.inboxes[self.core]
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()),
                );
                for stream in arrived {
                    self.adopt(stream);
                }
            }
            token => {
                let id = ConnId(token);
                let Some(conn) = self.conn(id) else { return };
                if event.events & WRITABLE != 0 && conn.want_write {
                    // Sent: a stream may have ended, and a frame that
                    // arrived meanwhile may be waiting.
                    self.handle_frames(id.slot());
                }
                if event.events & !WRITABLE != 0 {
                    self.read(id.slot());
                }
            }
        }
    }

    fn conn(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns
            .get_mut(id.slot())
            .and_then(|c| c.as_mut())
            .filter(|c| c.generation == id.generation())
    }

    fn id(&self, slot: usize) -> ConnId {
        let generation = self.conns[slot].as_ref().map_or(0, |c| c.generation);
        ConnId::new(slot, generation)
    }

    fn accept(&mut self) {
        let cores = self.shared.cores();
        for _ in 0..ACCEPTS_PER_TURN {
            let Some(listener) = &self.listener else {
                return;
            };
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // Out of descriptors and the like: the next turn retries.
                    eprintln!("accept failed: {e}");
                    return;
                }
            };
            if self.shared.open.load(Relaxed) >= self.config.max_connections {
                self.shared.stats.refused.fetch_add(1, Relaxed);
                drop(stream);
                continue;
            }
            self.shared.open.fetch_add(1, Relaxed);
            self.shared.stats.accepted.fetch_add(1, Relaxed);
            let target = self.next_core % cores;
            self.next_core = self.next_core.wrapping_add(1);
            if target == self.core {
                self.adopt(stream);
            } else {
                self.shared.inboxes[target]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(stream);
                self.shared.wakers[target].wake();
            }
        }
    }

    fn adopt(&mut self, stream: TcpStream) {
        if self.shared.stopping()
            || stream.set_nonblocking(true).is_err()
            || stream.set_nodelay(true).is_err()
        {
            self.shared.open.fetch_sub(1, Relaxed);
            return;
        }
        let slot = self.free_slots.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        let id = ConnId::new(slot, generation);
        if self.epoll.add(&stream, id.0, READABLE).is_err() {
            self.free_slots.push(slot);
            self.shared.open.fetch_sub(1, Relaxed);
            return;
        }
        let peer = stream.peer_addr().ok();
        self.conns[slot] = Some(Conn {
            stream,
            generation,
            input: vec![0; INITIAL_BUFFER_BYTES],
            input_len: 0,
            out: Vec::with_capacity(INITIAL_BUFFER_BYTES),
            out_sent: 0,
            state: State::Idle,
            closing: false,
            want_write: false,
            flush_queued: false,
            last_active: self.now,
        });
        self.service.opened(id, peer);
    }

    fn close(&mut self, slot: usize) {
        let Some(conn) = self.conns[slot].take() else {
            return;
        };
        let id = ConnId::new(slot, conn.generation);
        let _ = self.epoll.delete(&conn.stream);
        drop(conn);
        self.service.closed(id);
        self.free_slots.push(slot);
        self.shared.open.fetch_sub(1, Relaxed);
        self.shared.stats.closed.fetch_add(1, Relaxed);
    }

    /// Reads what the socket has, then handles whole frames.
    fn read(&mut self, slot: usize) {
        let Some(conn) = self.conns[slot].as_mut() else {
            return;
        };
        let mut eof = false;
        loop {
            if conn.input_len == conn.input.len() {
                // Full: frames are handled first, which frees room (or
                // grows the buffer to a frame's size), and the level-
                // triggered epoll reports the rest of the data again.
                break;
            }
            let room = conn.input.len() - conn.input_len;
            match conn.stream.read(&mut conn.input[conn.input_len..]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    conn.input_len += n;
                    conn.last_active = self.now;
                    if n < room {
                        // A short read emptied the socket; what arrives
                        // later is reported again (level-triggered), so a
                        // second read that would only say WouldBlock is
                        // saved.
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
        self.handle_frames(slot);
        if eof {
            // The client shut down its side: send what it asked for (a
            // half-closed client may still read), then close.
            self.flush(slot);
            self.close(slot);
        }
    }

    /// Hands each whole frame to the service while the connection is idle.
    fn handle_frames(&mut self, slot: usize) {
        let id = self.id(slot);
        loop {
            let Some(conn) = self.conns[slot].as_mut() else {
                return;
            };
            if conn.state != State::Idle || conn.closing || self.shared.stopping() {
                break;
            }
            if conn.input_len < 8 {
                break;
            }
            let mut head = [0u8; 8];
            head.copy_from_slice(&conn.input[..8]);
            let header = match proto::parse_header(&head, self.config.max_body_bytes) {
                Ok(h) => h,
                Err(_) => {
                    self.shared.stats.malformed.fetch_add(1, Relaxed);
                    conn.closing = true;
                    conn.input_len = 0;
                    break;
                }
            };
            let frame_len = 8 + header.body_len;
            if frame_len > conn.input.len() {
                conn.input.resize(frame_len, 0);
            }
            if conn.input_len < frame_len {
                break;
            }
            self.shared.stats.frames.fetch_add(1, Relaxed);
            let handled =
                self.service
                    .on_frame(id, header.kind, &conn.input[8..frame_len], &mut conn.out);
            conn.input.copy_within(frame_len..conn.input_len, 0);
            conn.input_len -= frame_len;
            if conn.input.len() > INITIAL_BUFFER_BYTES && conn.input_len <= INITIAL_BUFFER_BYTES {
                // A big frame is done: give its memory back.
                conn.input.truncate(INITIAL_BUFFER_BYTES);
                conn.input.shrink_to_fit();
            }
            self.after(slot, handled);
        }
        self.queue_flush(slot);
    }

    /// Sends the connection's replies at the end of this loop turn, with
    /// the other connections' replies. Back-to-back sends matter: the first
    /// one wakes a sleeping client, and the next ones find it awake, where
    /// sends spread over the turn would each pay a wake-up.
    fn queue_flush(&mut self, slot: usize) {
        let Some(conn) = self.conns[slot].as_mut() else {
            return;
        };
        if !conn.flush_queued {
            conn.flush_queued = true;
            let id = ConnId::new(slot, conn.generation);
            self.to_flush.push(id);
        }
    }

    fn flush_queued(&mut self) {
        let mut queued = std::mem::take(&mut self.to_flush);
        for &id in &queued {
            let Some(conn) = self.conn(id) else {
                continue; // closed meanwhile
            };
            conn.flush_queued = false;
            self.flush(id.slot());
        }
        // Keep the allocation. `flush` queues nothing, but were anything
        // queued meanwhile it stays queued for the next turn.
        queued.clear();
        queued.append(&mut self.to_flush);
        self.to_flush = queued;
    }

    fn after(&mut self, slot: usize, handled: Handled) {
        let Some(conn) = self.conns[slot].as_mut() else {
            return;
        };
        conn.state = match handled {
            Handled::Replied => State::Idle,
            Handled::Pending => State::Pending,
            Handled::Streaming => State::Streaming,
            Handled::Close => {
                conn.closing = true;
                State::Idle
            }
        };
    }

    /// The service says a parked request can go on.
    fn resume(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id.slot()).and_then(|c| c.as_mut()) else {
            return;
        };
        if conn.generation != id.generation() || conn.state != State::Pending {
            return;
        }
        let handled = self.service.resume(id, &mut conn.out);
        self.after(id.slot(), handled);
        // Sends the reply, then takes the next frame if one is waiting.
        self.handle_frames(id.slot());
    }

    /// Sends what is queued; asks a stream for more while the socket takes
    /// it. Never handles input (callers do, after it).
    fn flush(&mut self, slot: usize) {
        let id = self.id(slot);
        loop {
            let Some(conn) = self.conns[slot].as_mut() else {
                return;
            };
            while conn.out_sent < conn.out.len() {
                match conn.stream.write(&conn.out[conn.out_sent..]) {
                    Ok(0) => {
                        self.close(slot);
                        return;
                    }
                    Ok(n) => conn.out_sent += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        self.close(slot);
                        return;
                    }
                }
            }
            if conn.out_sent < conn.out.len() {
                if !conn.want_write {
                    conn.want_write = true;
                    let _ = self.epoll.modify(&conn.stream, id.0, READABLE | WRITABLE);
                }
                return;
            }
            conn.out.clear();
            conn.out_sent = 0;
            if conn.out.capacity() > 4 * INITIAL_BUFFER_BYTES {
                conn.out.shrink_to(INITIAL_BUFFER_BYTES);
            }
            if conn.want_write {
                conn.want_write = false;
                let _ = self.epoll.modify(&conn.stream, id.0, READABLE);
            }
            if conn.closing {
                self.close(slot);
                return;
            }
            if conn.state != State::Streaming {
                break;
            }
            let handled = self.service.resume(id, &mut conn.out);
            self.after(slot, handled);
            if handled == Handled::Pending
                && self.conns[slot].as_ref().is_some_and(|c| c.out.is_empty())
            {
                return;
            }
        }
    }

    fn close_idle(&mut self, now: Instant) {
        let Some(limit) = self.config.idle_timeout else {
            return;
        };
        for slot in 0..self.conns.len() {
            let idle = self.conns[slot].as_ref().is_some_and(|c| {
                c.state == State::Idle
                    && c.out.is_empty()
                    && now.duration_since(c.last_active) > limit
            });
            if idle {
                self.shared.stats.idle_closed.fetch_add(1, Relaxed);
                self.close(slot);
            }
        }
    }
}

/// Pins the calling thread to the `core`-th CPU the process may run on.
/// Returns false (and the thread runs unpinned) when that is not possible.
pub fn pin_to_core(core: usize) -> bool {
    match core_affinity::get_core_ids() {
        Some(ids) if !ids.is_empty() => core_affinity::set_for_current(ids[core % ids.len()]),
        _ => false,
    }
}
