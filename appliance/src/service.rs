//! One core's request handling: frames from its connections in, engine
//! transactions on its own storage queues, replies out.
//!
//! A single-record command becomes one engine transaction. A batch becomes
//! one transaction per row, all submitted at once; the reply stream is
//! written when the last row is done. A scan walks the index partition by
//! partition in digest order, a chunk of digests at a time, reads each
//! chunk's records through the engine and streams them; the next chunk is
//! read only when the socket has taken the last, so a scan holds at most
//! one chunk in memory whatever the namespace's size.
//!
//! Info and admin frames are answered at once on the core that read them.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use osprey_engine::digest::Digest;
use osprey_engine::index::IndexRecord;
use osprey_engine::ops::{self, Op, ReplyBin, Request};
use osprey_engine::partition::PartitionId;
use osprey_engine::record::BinName;
use osprey_engine::result::ResultCode;
use osprey_engine::storage::core::{CoreStorage, Reply, Transaction};
use osprey_net::reactor::{ConnId, Handled, Service};
use osprey_net::wire::proto::{self, FrameKind};
use osprey_net::wire::{admin, batch, compress, info as wire_info, msg, scan};

use crate::info;
use crate::security::privilege::Action;
use crate::security::session::CoreSecurity;
use crate::state::{CoreStats, ServerState};

/// Digests read per scan step.
const SCAN_CHUNK_RECORDS: usize = 256;
/// Index entries looked at per scan step before yielding to other work.
const SCAN_VISIT_BUDGET: usize = 16 * 1024;
/// A reply stream frame is closed and a new one begun past this size.
const STREAM_FRAME_BYTES: usize = 1 << 20;

/// Hashes the core's own ids (connection ids, transaction numbers) with
/// one multiply. Neither is chosen by a client, so the default hasher's
/// flood resistance buys nothing, and every request takes six lookups.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used by the key types here (u64 and ConnId); correct anyway.
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing: odd multiplier, so distinct ids stay distinct,
        // and both the low bits (bucket) and the top bits (tag) vary.
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

fn code_reply(code: ResultCode) -> Reply {
    Reply {
        result: code,
        generation: 0,
        void_time: 0,
        bins: Vec::new(),
        key: None,
    }
}

struct Row {
    /// The batch row index (batch) or the order of the record (scan).
    index: u32,
    reply: Option<Reply>,
    /// Scan rows: the record's digest and set.
    digest: Digest,
    set_id: u16,
}

enum Job {
    Single { reply: Option<Reply> },
    Batch { rows: Vec<Row>, waiting: usize },
    Scan(Box<ScanJob>),
}

struct ScanJob {
    ns: usize,
    /// Only records of this set (`None`: the whole namespace).
    set_id: Option<u16>,
    /// Partitions to visit, each with the digest to resume after.
    partitions: Vec<(u16, Option<Digest>)>,
    next: usize,
    remaining: Option<u64>,
    header_only: bool,
    bins: Vec<BinName>,
    rows: Vec<Row>,
    waiting: usize,
    /// Partitions finished in this chunk, to report when paginating.
    done_partitions: Vec<u16>,
    finished: bool,
    next_row: u32,
}

/// One core's service.
pub struct CoreService {
    state: Arc<ServerState>,
    stats: Arc<CoreStats>,
    storages: Vec<CoreStorage>,
    jobs: IdMap<ConnId, Job>,
    /// Engine transaction id → (connection, row).
    txns: IdMap<u64, (ConnId, usize)>,
    next_txn: u64,
    replies: Vec<(u64, Reply)>,
    /// Connections to report at the next poll (a scan step that yielded).
    yielded: Vec<ConnId>,
    index_buffer: Vec<IndexRecord>,
    /// Sessions of this core's connections and the privilege checks.
    security: CoreSecurity,
}

impl CoreService {
    pub fn new(state: Arc<ServerState>, core: usize) -> Result<CoreService, String> {
        let mut storages = Vec::with_capacity(state.namespaces.len());
        for n in &state.namespaces {
            storages.push(
                CoreStorage::new(n.ns.clone()).map_err(|e| {
                    format!("namespace {}: device queue for core {core}: {e}", n.name)
                })?,
            );
        }
        let stats = state.cores[core].clone();
        let security = CoreSecurity::new(state.security.clone());
        Ok(CoreService {
            state,
            stats,
            storages,
            jobs: IdMap::default(),
            txns: IdMap::default(),
            next_txn: 1,
            replies: Vec::new(),
            yielded: Vec::new(),
            index_buffer: Vec::new(),
            security,
        })
    }

    fn submit(&mut self, conn: ConnId, row: usize, ns: usize, txn: Transaction) {
        let kind = if txn.request.delete {
            &self.stats.deletes
        } else if txn.request.writes() {
            &self.stats.writes
        } else {
            &self.stats.reads
        };
        CoreStats::bump(kind);
        let id = self.next_txn;
        self.next_txn += 1;
        self.txns.insert(id, (conn, row));
        self.storages[ns].submit(id, txn);
    }

    /// Collects finished transactions into their jobs; pushes connections
    /// whose job is complete.
    fn collect(&mut self, ready: &mut Vec<ConnId>) -> bool {
        let mut progressed = false;
        for storage in &mut self.storages {
            if storage.poll(&mut self.replies) {
                progressed = true;
            }
        }
        for (txn, reply) in self.replies.drain(..) {
            progressed = true;
            let Some((conn, row)) = self.txns.remove(&txn) else {
                continue;
            };
            count_reply(&self.stats, &reply);
            let Some(job) = self.jobs.get_mut(&conn) else {
                continue;
            };
            let complete = match job {
                Job::Single { reply: slot } => {
                    *slot = Some(reply);
                    true
                }
                Job::Batch { rows, waiting } => {
                    if let Some(r) = rows.get_mut(row) {
                        r.reply = Some(reply);
                    }
                    *waiting -= 1;
                    *waiting == 0
                }
                Job::Scan(scan) => {
                    if let Some(r) = scan.rows.get_mut(row) {
                        r.reply = Some(reply);
                    }
                    scan.waiting -= 1;
                    scan.waiting == 0
                }
            };
            if complete {
                ready.push(conn);
            }
        }
        progressed
    }

    fn on_message(&mut self, conn: ConnId, body: &[u8], out: &mut Vec<u8>) -> Handled {
        if let Err(code) = self.security.authenticated(conn) {
            msg::write_result_reply(out, code);
            return Handled::Replied;
        }
        let message = match msg::parse(body) {
            Ok(m) => m,
            Err(_) => {
                CoreStats::bump(&self.stats.malformed);
                msg::write_result_reply(out, ResultCode::ParameterError.code());
                return Handled::Close;
            }
        };
        match scan::classify(&message) {
            scan::Kind::Single => self.single(conn, &message, out),
            scan::Kind::Batch => self.batch(conn, &message, out),
            scan::Kind::Scan => self.scan(conn, &message, out),
        }
    }

    fn single(&mut self, conn: ConnId, message: &msg::Message, out: &mut Vec<u8>) -> Handled {
        let request = match msg::single_request(message) {
            Ok(r) => r,
            Err(code) => {
                CoreStats::bump(&self.stats.errors);
                msg::write_single_reply(out, &code_reply(code));
                return Handled::Replied;
            }
        };
        let Some(ns) = self.state.namespace(request.namespace.as_bytes()) else {
            CoreStats::bump(&self.stats.errors);
            msg::write_single_reply(out, &code_reply(ResultCode::NamespaceNotFound));
            return Handled::Replied;
        };
        let request_body = &request.txn.request;
        let set = std::str::from_utf8(&request_body.set_name).unwrap_or("\u{0}");
        let action = if request_body.writes() {
            Action::Write {
                namespace: request.namespace,
                set,
            }
        } else {
            Action::Read {
                namespace: request.namespace,
                set,
            }
        };
        if let Err(code) = self.security.check(conn, action) {
            msg::write_result_reply(out, code);
            return Handled::Replied;
        }
        self.jobs.insert(conn, Job::Single { reply: None });
        self.submit(conn, 0, ns, request.txn);
        self.answer_now_or_park(conn, out)
    }

    /// Collects what the engine finished (most transactions need no device
    /// I/O and are done already) and answers `conn` in this turn if its job
    /// is complete. Other connections completed meanwhile are reported at
    /// the next poll.
    fn answer_now_or_park(&mut self, conn: ConnId, out: &mut Vec<u8>) -> Handled {
        let mut ready = std::mem::take(&mut self.yielded);
        self.collect(&mut ready);
        let mine = ready.iter().position(|c| *c == conn);
        if let Some(i) = mine {
            ready.swap_remove(i);
        }
        self.yielded = ready;
        if mine.is_some() {
            self.finish(conn, out)
        } else {
            Handled::Pending
        }
    }

    fn batch(&mut self, conn: ConnId, message: &msg::Message, out: &mut Vec<u8>) -> Handled {
        CoreStats::bump(&self.stats.batch_requests);
        let Some(field) = message.fields.batch else {
            msg::write_single_reply(out, &code_reply(ResultCode::ParameterError));
            return Handled::Replied;
        };
        let parsed = match batch::parse(field, &message.header) {
            Ok(rows) => rows,
            Err(_) => {
                CoreStats::bump(&self.stats.malformed);
                write_stream_end(out, ResultCode::ParameterError);
                return Handled::Close;
            }
        };
        self.stats
            .batch_rows
            .fetch_add(parsed.len() as u64, Relaxed);
        let mut rows = Vec::with_capacity(parsed.len());
        let mut submits = Vec::new();
        let mut refused = None;
        for (i, row) in parsed.iter().enumerate() {
            let mut slot = Row {
                index: row.index,
                reply: None,
                digest: Digest::default(),
                set_id: 0,
            };
            match batch::row_request(row) {
                Err(code) => slot.reply = Some(code_reply(code)),
                Ok(request) => match self.state.namespace(request.namespace.as_bytes()) {
                    None => slot.reply = Some(code_reply(ResultCode::NamespaceNotFound)),
                    Some(ns) => {
                        let set =
                            std::str::from_utf8(&request.txn.request.set_name).unwrap_or("\u{0}");
                        let namespace = request.namespace;
                        let action = if request.txn.request.writes() {
                            Action::Write { namespace, set }
                        } else {
                            Action::Read { namespace, set }
                        };
                        if let Err(code) = self.security.check(conn, action) {
                            refused = Some(code);
                        }
                        submits.push((i, ns, request.txn))
                    }
                },
            }
            rows.push(slot);
        }
        if let Some(code) = refused {
            // One row the user may not touch refuses the whole batch.
            let start = proto::begin_frame(out, FrameKind::Msg);
            msg::write_last(out, code);
            proto::end_frame(out, start);
            return Handled::Replied;
        }
        let waiting = submits.len();
        self.jobs.insert(conn, Job::Batch { rows, waiting });
        if waiting == 0 {
            return self.finish(conn, out);
        }
        for (i, ns, txn) in submits {
            self.submit(conn, i, ns, txn);
        }
        self.answer_now_or_park(conn, out)
    }

    fn scan(&mut self, conn: ConnId, message: &msg::Message, out: &mut Vec<u8>) -> Handled {
        CoreStats::bump(&self.stats.scans);
        let request = match scan::scan_request(message) {
            Ok(r) => r,
            Err(code) => {
                write_stream_end(out, code);
                return Handled::Replied;
            }
        };
        let Some(ns) = self.state.namespace(request.namespace.as_bytes()) else {
            write_stream_end(out, ResultCode::NamespaceNotFound);
            return Handled::Replied;
        };
        let set = request
            .set
            .map_or(Some(""), |s| std::str::from_utf8(s).ok())
            .unwrap_or("\u{0}");
        let action = Action::Read {
            namespace: request.namespace,
            set,
        };
        if let Err(code) = self.security.check(conn, action) {
            let start = proto::begin_frame(out, FrameKind::Msg);
            msg::write_last(out, code);
            proto::end_frame(out, start);
            return Handled::Replied;
        }
        let index = &self.state.namespaces[ns].ns.index;
        // A set no record was ever written to has no id: nothing to scan.
        let set_id = request.set.map(|name| {
            std::str::from_utf8(name)
                .ok()
                .and_then(|n| index.find_set(n))
        });
        let no_such_set = matches!(set_id, Some(None));
        let set_id = set_id.flatten();
        let partitions: Vec<(u16, Option<Digest>)> = request
            .partitions
            .iter()
            .filter(|_| !no_such_set)
            .map(|&p| (p, request.resume_after(p)))
            .collect();
        let job = ScanJob {
            ns,
            set_id,
            partitions,
            next: 0,
            remaining: request.max_records,
            header_only: request.header_only,
            bins: request.bins.clone(),
            rows: Vec::new(),
            waiting: 0,
            done_partitions: Vec::new(),
            finished: false,
            next_row: 0,
        };
        self.jobs.insert(conn, Job::Scan(Box::new(job)));
        self.scan_step(conn, out)
    }

    /// Sends what a scan has read, or reads its next chunk, or ends it.
    fn scan_step(&mut self, conn: ConnId, out: &mut Vec<u8>) -> Handled {
        let Some(Job::Scan(job)) = self.jobs.get_mut(&conn) else {
            return Handled::Replied;
        };
        if job.waiting > 0 {
            return Handled::Pending;
        }
        let runtime = &self.state.namespaces[job.ns];
        if !job.rows.is_empty() || !job.done_partitions.is_empty() {
            let start = proto::begin_frame(out, FrameKind::Msg);
            let mut sent = 0u64;
            for row in job.rows.drain(..) {
                let Some(reply) = row.reply else { continue };
                if reply.result != ResultCode::Ok {
                    // Deleted or expired since the index walk: leave it out.
                    continue;
                }
                let set_name = runtime.ns.index.set_name(row.set_id).unwrap_or_default();
                let identity = msg::RowIdentity {
                    namespace: runtime.name.as_bytes(),
                    set: set_name.as_bytes(),
                    digest: &row.digest,
                    key: reply.key.as_ref(),
                };
                let bins: &[ReplyBin] = if job.header_only { &[] } else { &reply.bins };
                msg::write_scan_row(out, &identity, reply.generation, reply.void_time, bins);
                sent += 1;
            }
            for pid in job.done_partitions.drain(..) {
                msg::write_partition_done(out, u32::from(pid), 0);
            }
            proto::end_frame(out, start);
            self.stats.scan_records.fetch_add(sent, Relaxed);
            return Handled::Streaming;
        }
        if job.finished {
            self.jobs.remove(&conn);
            write_stream_end(out, ResultCode::Ok);
            return Handled::Replied;
        }
        // Choose the next chunk of digests from the index.
        let now_s = (runtime.ns.clock)().now_s;
        let paginating = job.remaining.is_some();
        let mut chosen: Vec<IndexRecord> = Vec::with_capacity(SCAN_CHUNK_RECORDS);
        let mut visited = 0usize;
        let mut buffer = std::mem::take(&mut self.index_buffer);
        while chosen.len() < SCAN_CHUNK_RECORDS && visited < SCAN_VISIT_BUDGET {
            if job.remaining == Some(0) {
                job.finished = true;
                break;
            }
            let Some(&(pid, after)) = job.partitions.get(job.next) else {
                job.finished = true;
                break;
            };
            let mut last = None;
            let mut stopped = false;
            let want = job.remaining.map_or(SCAN_CHUNK_RECORDS, |r| {
                r.min(SCAN_CHUNK_RECORDS as u64) as usize
            });
            let Some(partition) = PartitionId::new(u32::from(pid)) else {
                job.next += 1;
                continue;
            };
            runtime
                .ns
                .index
                .scan_partition(partition, after.as_ref(), &mut buffer, |entry| {
                    visited += 1;
                    last = Some(entry.digest);
                    let wanted = !entry.tombstone
                        && !ops::is_expired(entry.void_time, now_s)
                        && job.set_id.is_none_or(|s| s == entry.set_id);
                    if wanted {
                        chosen.push(*entry);
                    }
                    if chosen.len() >= want || visited >= SCAN_VISIT_BUDGET {
                        stopped = true;
                        return false;
                    }
                    true
                });
            if let Some(r) = job.remaining.as_mut() {
                *r = r.saturating_sub(chosen.len() as u64);
            }
            if stopped {
                job.partitions[job.next].1 = last;
            } else {
                job.next += 1;
                if paginating {
                    job.done_partitions.push(pid);
                }
            }
            if stopped {
                break;
            }
        }
        self.index_buffer = buffer;
        if chosen.is_empty() {
            // Nothing to read in this step: yield, and go on at the next poll.
            self.yielded.push(conn);
            return Handled::Pending;
        }
        let ns = job.ns;
        let header_only = job.header_only;
        let bins = job.bins.clone();
        let first = job.next_row;
        job.next_row += chosen.len() as u32;
        job.waiting = chosen.len();
        job.rows = chosen
            .iter()
            .enumerate()
            .map(|(i, e)| Row {
                index: first + i as u32,
                reply: None,
                digest: e.digest,
                set_id: e.set_id,
            })
            .collect();
        for (i, entry) in chosen.iter().enumerate() {
            // A metadata-only row still carries its stored key, which is in
            // the record image: load the record, then send no bins.
            let load_for_key = header_only && entry.key_stored;
            let request = Request {
                digest: entry.digest,
                ops: bins.iter().map(|b| Op::read(*b)).collect(),
                read_all_bins: (bins.is_empty() && !header_only) || load_for_key,
                header_only: header_only && !load_for_key,
                ..Request::default()
            };
            self.submit(
                conn,
                i,
                ns,
                Transaction {
                    request,
                    durable_delete: false,
                },
            );
        }
        Handled::Pending
    }

    /// Writes the reply of a finished single or batch job.
    fn finish(&mut self, conn: ConnId, out: &mut Vec<u8>) -> Handled {
        match self.jobs.get(&conn) {
            Some(Job::Scan(_)) => return self.scan_step(conn, out),
            None => return Handled::Replied,
            _ => {}
        }
        match self.jobs.remove(&conn) {
            Some(Job::Single { reply }) => {
                let reply = reply.unwrap_or_else(|| code_reply(ResultCode::ServerError));
                msg::write_single_reply(out, &reply);
                Handled::Replied
            }
            Some(Job::Batch { rows, .. }) => {
                let mut start = proto::begin_frame(out, FrameKind::Msg);
                for row in rows {
                    let reply = row
                        .reply
                        .unwrap_or_else(|| code_reply(ResultCode::ServerError));
                    msg::write_record(
                        out,
                        0,
                        reply.result.code(),
                        u32::from(reply.generation),
                        reply.void_time,
                        row.index,
                        &[],
                        &reply.bins,
                    );
                    if out.len() - start > STREAM_FRAME_BYTES {
                        proto::end_frame(out, start);
                        start = proto::begin_frame(out, FrameKind::Msg);
                    }
                }
                msg::write_last(out, 0);
                proto::end_frame(out, start);
                Handled::Replied
            }
            _ => Handled::Replied,
        }
    }

    fn on_info(&mut self, conn: ConnId, body: &[u8], out: &mut Vec<u8>) -> Handled {
        CoreStats::bump(&self.stats.info_requests);
        let commands = match wire_info::parse_request(body) {
            Ok(c) => c,
            Err(_) => {
                CoreStats::bump(&self.stats.malformed);
                return Handled::Close;
            }
        };
        let start = proto::begin_frame(out, FrameKind::Info);
        if commands.is_empty() {
            for name in ["node", "build", "edition", "version"] {
                let value = match self.security.info_refusal(conn, name, "") {
                    Some(refusal) => refusal,
                    None => info::answer(&self.state, name, ""),
                };
                wire_info::push_line(out, name, &value);
            }
        }
        for command in &commands {
            let value = match self
                .security
                .info_refusal(conn, command.name, command.params)
            {
                Some(refusal) => refusal,
                None => info::answer(&self.state, command.name, command.params),
            };
            wire_info::push_line(out, command.text, &value);
        }
        proto::end_frame(out, start);
        Handled::Replied
    }

    fn on_admin(&mut self, conn: ConnId, body: &[u8], out: &mut Vec<u8>) -> Handled {
        CoreStats::bump(&self.stats.admin_requests);
        match admin::parse(body) {
            // With security off, every admin command (LOGIN and
            // AUTHENTICATE included) is answered 52 "security not enabled",
            // which clients with credentials accept.
            Ok(request) => self.security.on_admin(conn, &request, out),
            Err(_) => {
                CoreStats::bump(&self.stats.malformed);
                Handled::Close
            }
        }
    }
}

fn write_stream_end(out: &mut Vec<u8>, code: ResultCode) {
    let start = proto::begin_frame(out, FrameKind::Msg);
    msg::write_last(out, code.code());
    proto::end_frame(out, start);
}

fn count_reply(stats: &CoreStats, reply: &Reply) {
    match reply.result {
        ResultCode::Ok => {}
        ResultCode::KeyNotFound => CoreStats::bump(&stats.reads_not_found),
        _ => CoreStats::bump(&stats.errors),
    }
}

impl Service for CoreService {
    fn on_frame(
        &mut self,
        conn: ConnId,
        kind: FrameKind,
        body: &[u8],
        out: &mut Vec<u8>,
    ) -> Handled {
        match kind {
            FrameKind::Info => self.on_info(conn, body, out),
            FrameKind::Admin => self.on_admin(conn, body, out),
            FrameKind::Msg => self.on_message(conn, body, out),
            FrameKind::Compressed => {
                CoreStats::bump(&self.stats.compressed_requests);
                let inner = match compress::inflate(body, proto::MAX_BODY_BYTES) {
                    Ok(f) => f,
                    Err(_) => {
                        CoreStats::bump(&self.stats.malformed);
                        return Handled::Close;
                    }
                };
                let head: Option<[u8; 8]> = inner.get(..8).and_then(|h| h.try_into().ok());
                match head.map(|h| proto::parse_header(&h, proto::MAX_BODY_BYTES)) {
                    Some(Ok(h)) if h.kind == FrameKind::Msg && inner.len() == 8 + h.body_len => {
                        self.on_message(conn, &inner[8..], out)
                    }
                    _ => {
                        CoreStats::bump(&self.stats.malformed);
                        Handled::Close
                    }
                }
            }
        }
    }

    fn poll(&mut self, ready: &mut Vec<ConnId>) -> bool {
        let mut progressed = !self.yielded.is_empty();
        ready.append(&mut self.yielded);
        if self.collect(ready) {
            progressed = true;
        }
        // Throttled LOGINs whose wait is over.
        if self.security.poll(ready) {
            progressed = true;
        }
        progressed
    }

    fn resume(&mut self, conn: ConnId, out: &mut Vec<u8>) -> Handled {
        if let Some(handled) = self.security.resume(conn, out) {
            return handled;
        }
        self.finish(conn, out)
    }

    fn opened(&mut self, conn: ConnId, peer: Option<std::net::SocketAddr>) {
        self.security.opened(conn, peer);
    }

    fn closed(&mut self, conn: ConnId) {
        self.security.closed(conn);
        // Transactions in flight still finish in the engine; their replies
        // find no job and are dropped.
        self.jobs.remove(&conn);
    }

    fn busy(&self) -> bool {
        // Every request waiting on the device (a parked read, a commit
        // waiting for its flush, a scan step) has an entry in `txns`.
        !self.txns.is_empty() || !self.yielded.is_empty()
    }

    fn background(&self) -> bool {
        // Defrag jobs waiting for their copies to be flushed (up to
        // flush-max-ms), writes the device refused, and the like: they need
        // polls, not a spinning core.
        self.storages.iter().any(|s| s.busy())
    }

    fn tick(&mut self) {
        let backlog: u64 = self.storages.iter().map(|s| s.write_backlog_bytes()).sum();
        self.stats.write_backlog_bytes.store(backlog, Relaxed);
    }

    fn shutdown(&mut self) {
        for (storage, runtime) in self.storages.iter_mut().zip(&self.state.namespaces) {
            if let Err(e) = storage.flush_for_shutdown(std::time::Duration::from_secs(120)) {
                eprintln!("namespace {}: flush at shutdown: {e}", runtime.name);
            }
        }
    }
}
