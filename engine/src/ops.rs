//! The semantics of one single-record transaction, free of I/O.
//!
//! [`apply`] takes the record as it is (or `None`), a decoded [`Request`], the
//! clock and the namespace default TTL, and says what to write and what to
//! reply ([`Outcome`]) or which result code to answer. The storage engine
//! calls it under the record's index lock, after it has loaded the bins; the
//! wire layer builds the [`Request`] and writes the reply.
//!
//! The rules are those of the spec (§4.3, §5.1–§5.5). Where the spec is
//! silent or loose, this module follows the observable behaviour of the
//! Aerospike server (CE 8.1) as a client sees it. The places where that
//! matters are marked "Aerospike:" below; the main ones are:
//!
//! * A record is expired when `void_time != 0 && void_time < now`: it is
//!   still live during its void-time second.
//! * Deleting a bin moves the record's last bin into its slot; new bins go
//!   to the end. Get-all replies show this order.
//! * With RESPOND_ALL_OPS a TOUCH op yields no reply entry (it is skipped
//!   when replies are built); every other op yields exactly one.
//! * INCR/APPEND/PREPEND on a bin that does not exist store the op's value
//!   whatever its type (on a missing bin every modify is a create); type
//!   checks apply only against an existing bin. On an
//!   existing GeoJSON bin they fail with 1 (the GeoJSON particle answers -1).
//! * A write whose ops leave no bins deletes an existing record; on a record
//!   that did not exist it answers 2 and creates nothing.
//! * Delete replies (a delete request, or a write that deleted the record)
//!   carry generation 0 and void time 0.
//! * An empty-named READ (`Op { bin: None }`) reads all bins only when the
//!   request has GET_ALL; otherwise it names no bin and finds nothing (this is
//!   the Rust client's `get_header()` op inside an operate).
//! * NOBINDATA only affects read-only requests; GET_ALL in a read-only request
//!   returns all bins and ignores the ops, even with RESPOND_ALL_OPS.
//!
//! Result codes on errors: the real server also sends the stored generation
//! and void time with some errors (e.g. 3); no client reads them, and
//! [`apply`] returns only the code.

use crate::digest::Digest;
use crate::record::{Bin, BinName, Record, StoredKey, Value};
use crate::result::ResultCode;

/// Largest TTL a request may carry, in seconds (10 years; spec §5.4).
pub const MAX_TTL_S: u32 = 315_360_000;
/// Most bins a record may have (Aerospike's limit).
pub const MAX_BINS: usize = 0x7FFF;
/// Most ops a request may carry (Aerospike's limit).
pub const MAX_OPS: usize = 32 * 1024;

/// Wire `record_ttl` value meaning "namespace default".
pub const TTL_WIRE_DEFAULT: u32 = 0;
/// Wire `record_ttl` value meaning "never expire" (-1).
pub const TTL_WIRE_NEVER_EXPIRE: u32 = 0xFFFF_FFFF;
/// Wire `record_ttl` value meaning "keep the current void time" (-2).
pub const TTL_WIRE_KEEP_CURRENT: u32 = 0xFFFF_FFFE;

/// What one op does (spec §4.3). CDT, bit, HLL, expression and string ops
/// are not modelled here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// READ (1).
    Read,
    /// WRITE (2); a nil value deletes the bin.
    Write,
    /// INCR (5).
    Incr,
    /// APPEND (9).
    Append,
    /// PREPEND (10).
    Prepend,
    /// TOUCH (11).
    Touch,
    /// DELETE (14): removes all bins.
    DeleteAll,
}

impl OpKind {
    /// Whether the op makes the request a write transaction.
    pub fn is_write(self) -> bool {
        !matches!(self, OpKind::Read)
    }
}

/// One op of a request.
///
/// * `Read` with `bin: None` is an op with an empty bin name. With
///   [`Request::read_all_bins`] (GET_ALL) it reads all bins (the operate
///   "empty name + GET_ALL" form); without it, it names no bin and reads
///   nothing (Aerospike: an empty name is a valid, never-present bin name).
/// * `Write` with `value: None` (particle type nil) deletes the bin.
/// * `Write`, `Incr`, `Append`, `Prepend` need a bin name (else 4).
/// * `Touch` and `DeleteAll` take no value; a bin name, if any, is only echoed
///   in a RESPOND_ALL_OPS entry (DeleteAll).
#[derive(Clone, Debug, PartialEq)]
pub struct Op {
    pub kind: OpKind,
    pub bin: Option<BinName>,
    pub value: Option<Value>,
}

impl Op {
    pub fn read(bin: BinName) -> Op {
        Op {
            kind: OpKind::Read,
            bin: Some(bin),
            value: None,
        }
    }
    /// An empty-named READ: read-all with GET_ALL, reads nothing without.
    pub fn read_all() -> Op {
        Op {
            kind: OpKind::Read,
            bin: None,
            value: None,
        }
    }
    pub fn write(bin: BinName, value: Value) -> Op {
        Op {
            kind: OpKind::Write,
            bin: Some(bin),
            value: Some(value),
        }
    }
    /// A WRITE of nil: deletes the bin.
    pub fn delete_bin(bin: BinName) -> Op {
        Op {
            kind: OpKind::Write,
            bin: Some(bin),
            value: None,
        }
    }
    pub fn incr(bin: BinName, value: Value) -> Op {
        Op {
            kind: OpKind::Incr,
            bin: Some(bin),
            value: Some(value),
        }
    }
    pub fn append(bin: BinName, value: Value) -> Op {
        Op {
            kind: OpKind::Append,
            bin: Some(bin),
            value: Some(value),
        }
    }
    pub fn prepend(bin: BinName, value: Value) -> Op {
        Op {
            kind: OpKind::Prepend,
            bin: Some(bin),
            value: Some(value),
        }
    }
    pub fn touch() -> Op {
        Op {
            kind: OpKind::Touch,
            bin: None,
            value: None,
        }
    }
    pub fn delete_all() -> Op {
        Op {
            kind: OpKind::DeleteAll,
            bin: None,
            value: None,
        }
    }
}

/// Record-exists action (spec §5.2), checked before the ops are applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ExistsAction {
    /// No flag: create or merge.
    #[default]
    Update,
    /// info3 0x08: missing → 2, else merge.
    UpdateOnly,
    /// info3 0x10: create, or replace all bins.
    CreateOrReplace,
    /// info3 0x20: missing → 2, else replace all bins.
    ReplaceOnly,
    /// info2 0x20: existing → 5, else create.
    CreateOnly,
}

impl ExistsAction {
    fn replaces(self) -> bool {
        matches!(
            self,
            ExistsAction::CreateOrReplace | ExistsAction::ReplaceOnly
        )
    }
}

/// Generation requirement (spec §5.3). The value is the header's 32-bit
/// generation field, compared with the stored 16-bit generation as Aerospike
/// does (`m->generation == r->generation`), without truncating it first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum GenerationCheck {
    #[default]
    None,
    /// info2 0x04: proceed only if the stored generation equals this.
    Equal(u32),
    /// info2 0x08: proceed only if this is greater than the stored generation.
    Greater(u32),
}

/// TTL of a write or touch (spec §5.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Ttl {
    /// Wire 0: the namespace default (a default of 0 means never expire).
    #[default]
    NamespaceDefault,
    /// Wire 0xFFFFFFFF.
    NeverExpire,
    /// Wire 0xFFFFFFFE: keep the current void time; on a new record, as
    /// `NamespaceDefault`.
    KeepCurrent,
    /// Wire 1..=315_360_000: expire this many seconds from now. Any other
    /// value here (0 or over 10 years) makes [`apply`] answer 4.
    Seconds(u32),
}

impl Ttl {
    /// Decodes the header's `record_ttl` of a write or touch; anything that is
    /// not a special value or 1..=10 years is a parameter error (4).
    ///
    /// Aerospike checks the TTL after the existence, generation and key
    /// checks, so it answers e.g. 2 rather than 4 for an UPDATE_ONLY with a
    /// bad TTL on a missing record. A caller that wants that exact order can
    /// pass `Ttl::Seconds(record_ttl)` for an invalid value instead: [`apply`]
    /// rejects it at the same point as Aerospike does.
    pub fn from_wire(record_ttl: u32) -> Result<Ttl, ResultCode> {
        match record_ttl {
            TTL_WIRE_DEFAULT => Ok(Ttl::NamespaceDefault),
            TTL_WIRE_NEVER_EXPIRE => Ok(Ttl::NeverExpire),
            TTL_WIRE_KEEP_CURRENT => Ok(Ttl::KeepCurrent),
            s if s <= MAX_TTL_S => Ok(Ttl::Seconds(s)),
            _ => Err(ResultCode::ParameterError),
        }
    }

    /// The void time a write gives the record: `current` is the live
    /// record's void time, `None` when the write creates the record.
    pub fn void_time(
        self,
        current: Option<u32>,
        now_s: u32,
        default_ttl_s: u32,
    ) -> Result<u32, ResultCode> {
        let default = || {
            if default_ttl_s == 0 {
                0
            } else {
                now_s.saturating_add(default_ttl_s)
            }
        };
        match self {
            Ttl::NamespaceDefault => Ok(default()),
            Ttl::NeverExpire => Ok(0),
            Ttl::KeepCurrent => Ok(current.unwrap_or_else(default)),
            Ttl::Seconds(n) if (1..=MAX_TTL_S).contains(&n) => Ok(now_s.saturating_add(n)),
            Ttl::Seconds(_) => Err(ResultCode::ParameterError),
        }
    }
}

/// A decoded single-record request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Request {
    /// The record's digest (field 4); a created record gets it.
    pub digest: Digest,
    /// The ops in request order. A request is a *write* if any op is not a
    /// READ (or if `delete`); otherwise it is a *read*.
    pub ops: Vec<Op>,
    /// info1 GET_ALL. In a read it returns all bins and the ops are ignored;
    /// in a write it must come with exactly one empty-named READ (else 4).
    pub read_all_bins: bool,
    /// info1 NOBINDATA: a read replies with no bins. Ignored by writes, as in
    /// Aerospike.
    pub header_only: bool,
    pub exists: ExistsAction,
    pub generation: GenerationCheck,
    /// Used only when the transaction writes.
    pub ttl: Ttl,
    /// info2 RESPOND_ALL_OPS (0x80).
    pub respond_all_ops: bool,
    /// Field 1 (empty = no set). Given to a created record. An update must
    /// name the record's set exactly; a read or delete that names a set must
    /// name the record's (else 4).
    pub set_name: Vec<u8>,
    /// Field 2 (send-key). Stored on create, and on update when the record
    /// has none; differing from a stored key → 19 (reads and deletes too).
    pub key: Option<StoredKey>,
    /// info2 DELETE: a plain delete; `ops` are ignored.
    pub delete: bool,
}

impl Request {
    /// Whether the request is a write transaction (or a delete).
    pub fn writes(&self) -> bool {
        self.delete || self.ops.iter().any(|op| op.kind.is_write())
    }
}

/// The time of the transaction. Both fields count from 2010-01-01T00:00:00Z
/// (the Citrusleaf epoch) and should describe the same instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    pub now_s: u32,
    pub now_ms: u64,
}

/// One op of the reply. The wire layer writes it as a READ op with the
/// value's particle type, or type 0 and no value for `None`; `name: None` is
/// an empty name.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplyBin {
    pub name: Option<BinName>,
    pub value: Option<Value>,
}

/// What the transaction does.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Nothing changes (a read). Reply 0 with these bins and the record's
    /// generation and void time.
    Read {
        bins: Vec<ReplyBin>,
        generation: u16,
        void_time: u32,
    },
    /// Write this record (generation bumped, last update = now, void time per
    /// TTL). Reply 0 with the record's generation and void time and these bins.
    Write { record: Record, bins: Vec<ReplyBin> },
    /// Remove the record, which exists (a delete request, or a write that
    /// left no bins). Reply 0 with `generation`, void time 0 and these bins.
    /// `generation` is always 0: Aerospike's delete replies carry no
    /// metadata.
    /// A delete of a missing record is `Err(KeyNotFound)`, never this.
    Delete {
        bins: Vec<ReplyBin>,
        generation: u16,
    },
}

/// Whether a record with this void time has expired at `now_s`.
/// Aerospike: `void_time != 0 && void_time < now`,
/// so a record is still readable during the second of its void time.
pub fn is_expired(void_time: u32, now_s: u32) -> bool {
    void_time != 0 && void_time < now_s
}

/// The generation after a write of a record whose generation is `stored`
/// (0 for a new record, giving 1). It wraps from 65535 to 1, never 0: 0 means
/// "no record" to generation checks (an EQUAL check of 0 succeeds only on a
/// missing record) and marks an uninitialised index entry in Aerospike.
pub fn next_generation(stored: u16) -> u16 {
    match stored.wrapping_add(1) {
        0 => 1,
        g => g,
    }
}

/// Applies `request` to `existing` (the record as stored, or `None`) at
/// `clock`, with the namespace's default TTL in seconds (0 = never expire).
///
/// An expired or tombstoned `existing` is treated as absent everywhere.
/// Returns what to write and reply, or the result code to answer; on an
/// error nothing changes.
pub fn apply(
    existing: Option<&Record>,
    request: &Request,
    clock: Clock,
    default_ttl_s: u32,
) -> Result<Outcome, ResultCode> {
    // Aerospike answers an expired record that nsup has not reaped yet like
    // a missing one for reads and writes; a CE delete of such a record may
    // still answer 0 until nsup runs. Treating it as absent everywhere is
    // what a client sees once nsup has run, so it is Aerospike behaviour too.
    let live = existing.filter(|r| !r.tombstone && !is_expired(r.void_time, clock.now_s));
    if request.delete {
        apply_delete(live, request)
    } else if request.writes() {
        apply_write(live, request, clock, default_ttl_s)
    } else {
        apply_read(live, request)
    }
}

fn apply_read(live: Option<&Record>, request: &Request) -> Result<Outcome, ResultCode> {
    // Aerospike read_local: not found, set name, key, NOBINDATA, op count,
    // GET_ALL, then the ops.
    let record = live.ok_or(ResultCode::KeyNotFound)?;
    check_named_set(record, request)?;
    check_key(record, request)?;
    let mut bins = Vec::new();
    if !request.header_only {
        if request.ops.len() > MAX_OPS {
            return Err(ResultCode::ParameterError);
        }
        if request.read_all_bins {
            // Aerospike: GET_ALL in a read ignores the ops (and does not
            // refuse RESPOND_ALL_OPS, which only the write path checks).
            read_all(&record.bins, &mut bins);
        } else {
            if request.ops.is_empty() {
                return Err(ResultCode::ParameterError);
            }
            for op in &request.ops {
                read_named(&record.bins, op.bin, request.respond_all_ops, &mut bins);
            }
        }
    }
    Ok(Outcome::Read {
        bins,
        generation: record.generation,
        void_time: record.void_time,
    })
}

fn apply_delete(live: Option<&Record>, request: &Request) -> Result<Outcome, ResultCode> {
    // Aerospike delete_master / drop_master: not found, set name,
    // generation, key. Exists actions do not apply to deletes.
    let record = live.ok_or(ResultCode::KeyNotFound)?;
    check_named_set(record, request)?;
    check_generation(request.generation, record.generation)?;
    check_key(record, request)?;
    Ok(Outcome::Delete {
        bins: Vec::new(),
        generation: 0,
    })
}

fn apply_write(
    live: Option<&Record>,
    request: &Request,
    clock: Clock,
    default_ttl_s: u32,
) -> Result<Outcome, ResultCode> {
    // Checks in Aerospike's order (write_master_policies, then write_master,
    // then write_master_apply).
    let must_not_create = check_write_policies(request)?;
    if must_not_create && live.is_none() {
        return Err(ResultCode::KeyNotFound);
    }
    if request.exists == ExistsAction::CreateOnly && live.is_some() {
        return Err(ResultCode::KeyExists);
    }
    check_generation(request.generation, live.map_or(0, |r| r.generation))?;
    let key = match live {
        Some(record) => {
            if request.set_name != record.set_name {
                return Err(ResultCode::ParameterError);
            }
            check_key(record, request)?;
            record.key.clone().or_else(|| request.key.clone())
        }
        None => request.key.clone(),
    };
    let void_time = request
        .ttl
        .void_time(live.map(|r| r.void_time), clock.now_s, default_ttl_s)?;

    // A replace starts from no bins (Aerospike does not even read them).
    let mut bins = match live {
        Some(record) if !request.exists.replaces() => record.bins.clone(),
        _ => Vec::new(),
    };
    let loaded_bins = bins.len();
    let mut reply = Vec::new();
    let respond_all = request.respond_all_ops;
    for op in &request.ops {
        match op.kind {
            OpKind::Read => {
                if op.bin.is_none() && request.read_all_bins {
                    read_all(&bins, &mut reply);
                } else {
                    read_named(&bins, op.bin, respond_all, &mut reply);
                }
                continue;
            }
            // Aerospike: a touch changes nothing but the record metadata,
            // which every write updates, and yields no reply entry even with
            // RESPOND_ALL_OPS.
            OpKind::Touch => continue,
            OpKind::DeleteAll => bins.clear(),
            OpKind::Write => {
                let name = op.bin.ok_or(ResultCode::ParameterError)?;
                match (&op.value, position(&bins, &name)) {
                    (Some(value), Some(i)) => bins[i].value = value.clone(),
                    (Some(value), None) => bins.push(Bin {
                        name,
                        value: value.clone(),
                    }),
                    // Aerospike: the last bin takes the removed bin's slot.
                    (None, Some(i)) => {
                        bins.swap_remove(i);
                    }
                    (None, None) => {}
                }
            }
            OpKind::Incr | OpKind::Append | OpKind::Prepend => {
                let name = op.bin.ok_or(ResultCode::ParameterError)?;
                // Aerospike: a nil op value is a bad particle type (4), even
                // for a bin that does not exist.
                let value = op.value.as_ref().ok_or(ResultCode::ParameterError)?;
                match position(&bins, &name) {
                    // Aerospike: every modify of a missing bin creates it
                    // with the op's value, whatever its type.
                    None => bins.push(Bin {
                        name,
                        value: value.clone(),
                    }),
                    Some(i) => modify(op.kind, &mut bins[i].value, value)?,
                }
            }
        }
        if respond_all {
            reply.push(ReplyBin {
                name: op.bin,
                value: None,
            });
        }
    }
    if bins.len() > MAX_BINS {
        return Err(ResultCode::ParameterError);
    }
    if bins.is_empty() {
        // Aerospike write_master_apply: a write that leaves no bins deletes
        // the record, or answers 2 if there was nothing to delete.
        if loaded_bins == 0 {
            return Err(ResultCode::KeyNotFound);
        }
        return Ok(Outcome::Delete {
            bins: reply,
            generation: 0,
        });
    }
    let record = Record {
        digest: request.digest,
        generation: next_generation(live.map_or(0, |r| r.generation)),
        void_time,
        // Aerospike: the last-update time never goes back.
        last_update_ms: live.map_or(clock.now_ms, |r| r.last_update_ms.max(clock.now_ms)),
        set_name: live.map_or_else(|| request.set_name.clone(), |r| r.set_name.clone()),
        key,
        tombstone: false,
        bins,
    };
    Ok(Outcome::Write {
        record,
        bins: reply,
    })
}

/// The checks Aerospike makes on a write's ops before it looks at the record
///. Returns whether the request must not create the
/// record (UPDATE_ONLY, REPLACE_ONLY, or a TOUCH op).
fn check_write_policies(request: &Request) -> Result<bool, ResultCode> {
    let bad = Err(ResultCode::ParameterError);
    if request.ops.len() > MAX_OPS {
        return bad;
    }
    let replace = request.exists.replaces();
    let mut must_not_create = matches!(
        request.exists,
        ExistsAction::UpdateOnly | ExistsAction::ReplaceOnly
    );
    let mut has_read_all = false;
    let mut has_named_read = false;
    for op in &request.ops {
        match op.kind {
            OpKind::Touch => {
                if replace {
                    return bad;
                }
                must_not_create = true;
            }
            OpKind::Write => {
                // Osprey: Aerospike would create a bin with an empty name; a
                // record here cannot hold one.
                if op.bin.is_none() || (op.value.is_none() && replace) {
                    return bad;
                }
            }
            OpKind::Incr | OpKind::Append | OpKind::Prepend => {
                if op.bin.is_none() || replace {
                    return bad;
                }
            }
            OpKind::DeleteAll => {
                if replace {
                    return bad;
                }
            }
            OpKind::Read => {
                if op.bin.is_none() && request.read_all_bins {
                    if request.respond_all_ops || has_read_all {
                        return bad;
                    }
                    has_read_all = true;
                } else {
                    has_named_read = true;
                }
            }
        }
    }
    // A read-all cannot be mixed with ops that produce named reply entries,
    // and GET_ALL in a write needs its read-all op.
    if (has_read_all && has_named_read) || (request.read_all_bins && !has_read_all) {
        return bad;
    }
    Ok(must_not_create)
}

fn check_generation(check: GenerationCheck, stored: u16) -> Result<(), ResultCode> {
    let ok = match check {
        GenerationCheck::None => true,
        GenerationCheck::Equal(g) => g == u32::from(stored),
        GenerationCheck::Greater(g) => g > u32::from(stored),
    };
    if ok {
        Ok(())
    } else {
        Err(ResultCode::GenerationError)
    }
}

/// Reads and deletes (Aerospike behaviour): a request that names a
/// set must name the record's; one that names none matches any record.
fn check_named_set(record: &Record, request: &Request) -> Result<(), ResultCode> {
    if request.set_name.is_empty() || request.set_name == record.set_name {
        Ok(())
    } else {
        Err(ResultCode::ParameterError)
    }
}

/// A sent key must equal the stored one, if one is stored.
fn check_key(record: &Record, request: &Request) -> Result<(), ResultCode> {
    match (&record.key, &request.key) {
        (Some(stored), Some(sent)) if stored != sent => Err(ResultCode::KeyMismatch),
        _ => Ok(()),
    }
}

fn position(bins: &[Bin], name: &BinName) -> Option<usize> {
    bins.iter().position(|b| b.name == *name)
}

fn read_all(bins: &[Bin], reply: &mut Vec<ReplyBin>) {
    reply.extend(bins.iter().map(|b| ReplyBin {
        name: Some(b.name),
        value: Some(b.value.clone()),
    }));
}

/// A named READ: the bin's value; a missing bin (or an empty name) gives a
/// nil entry with RESPOND_ALL_OPS and nothing without.
fn read_named(bins: &[Bin], name: Option<BinName>, respond_all: bool, reply: &mut Vec<ReplyBin>) {
    match name.and_then(|n| position(bins, &n)) {
        Some(i) => reply.push(ReplyBin {
            name,
            value: Some(bins[i].value.clone()),
        }),
        None if respond_all => reply.push(ReplyBin { name, value: None }),
        None => {}
    }
}

/// INCR, APPEND or PREPEND of `with` into an existing bin value.
fn modify(kind: OpKind, current: &mut Value, with: &Value) -> Result<(), ResultCode> {
    // Aerospike: every modify of a GeoJSON bin fails,
    // which the client sees as result 1.
    if matches!(current, Value::GeoJson(_)) {
        return Err(ResultCode::ServerError);
    }
    if kind == OpKind::Incr {
        match (current, with) {
            (Value::Integer(a), Value::Integer(b)) => *a = a.wrapping_add(*b),
            (Value::Double(a), Value::Double(b)) => *a += *b,
            _ => return Err(ResultCode::BinTypeError),
        }
        return Ok(());
    }
    let (bytes, more) = match (current, with) {
        (Value::String(a), Value::String(b)) => (a, b),
        (Value::Blob(ta, a), Value::Blob(tb, b)) if *ta == *tb => (a, b),
        _ => return Err(ResultCode::BinTypeError),
    };
    if kind == OpKind::Append {
        bytes.extend_from_slice(more);
    } else {
        bytes.splice(0..0, more.iter().copied());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::particle;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const NOW_S: u32 = 500_000_000;
    const CLOCK: Clock = Clock {
        now_s: NOW_S,
        now_ms: NOW_S as u64 * 1000 + 250,
    };

    fn name(s: &str) -> BinName {
        BinName::new(s.as_bytes()).unwrap()
    }

    fn int(v: i64) -> Value {
        Value::Integer(v)
    }

    fn string(s: &str) -> Value {
        Value::String(s.as_bytes().to_vec())
    }

    fn key(s: &str) -> StoredKey {
        StoredKey {
            particle_type: particle::STRING,
            bytes: s.as_bytes().to_vec(),
        }
    }

    /// A live record in set "demo" with generation 5, never expiring.
    fn record(bins: &[(&str, Value)]) -> Record {
        Record {
            digest: Digest([7; 20]),
            generation: 5,
            void_time: 0,
            last_update_ms: 1_000,
            set_name: b"demo".to_vec(),
            key: None,
            tombstone: false,
            bins: bins
                .iter()
                .map(|(n, v)| Bin {
                    name: name(n),
                    value: v.clone(),
                })
                .collect(),
        }
    }

    fn req(ops: Vec<Op>) -> Request {
        Request {
            digest: Digest([7; 20]),
            ops,
            set_name: b"demo".to_vec(),
            ..Request::default()
        }
    }

    fn get_all() -> Request {
        Request {
            read_all_bins: true,
            ..req(vec![])
        }
    }

    fn run(existing: Option<&Record>, request: &Request) -> Result<Outcome, ResultCode> {
        apply(existing, request, CLOCK, 0)
    }

    fn written(outcome: Result<Outcome, ResultCode>) -> (Record, Vec<ReplyBin>) {
        match outcome {
            Ok(Outcome::Write { record, bins }) => (record, bins),
            other => panic!("expected a write, got {other:?}"),
        }
    }

    fn read_bins(outcome: Result<Outcome, ResultCode>) -> Vec<ReplyBin> {
        match outcome {
            Ok(Outcome::Read { bins, .. }) => bins,
            other => panic!("expected a read, got {other:?}"),
        }
    }

    fn bin_list(record: &Record) -> Vec<(String, Value)> {
        record
            .bins
            .iter()
            .map(|b| {
                (
                    String::from_utf8_lossy(b.name.as_bytes()).into_owned(),
                    b.value.clone(),
                )
            })
            .collect()
    }

    fn pairs(list: &[(&str, Value)]) -> Vec<(String, Value)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.clone()))
            .collect()
    }

    fn entry(n: &str, v: Option<Value>) -> ReplyBin {
        ReplyBin {
            name: Some(name(n)),
            value: v,
        }
    }

    // ---- expiry and tombstones -------------------------------------------

    #[test]
    fn an_expired_record_is_not_found_by_reads_deletes_touches_and_update_only() {
        let mut r = record(&[("a", int(1))]);
        r.void_time = NOW_S - 1;
        assert_eq!(run(Some(&r), &get_all()), Err(ResultCode::KeyNotFound));
        let exists = Request {
            header_only: true,
            ..req(vec![])
        };
        assert_eq!(run(Some(&r), &exists), Err(ResultCode::KeyNotFound));
        let delete = Request {
            delete: true,
            ..req(vec![])
        };
        assert_eq!(run(Some(&r), &delete), Err(ResultCode::KeyNotFound));
        assert_eq!(
            run(Some(&r), &req(vec![Op::touch()])),
            Err(ResultCode::KeyNotFound)
        );
        let update_only = Request {
            exists: ExistsAction::UpdateOnly,
            ..req(vec![Op::write(name("b"), int(2))])
        };
        assert_eq!(run(Some(&r), &update_only), Err(ResultCode::KeyNotFound));
    }

    #[test]
    fn writing_over_an_expired_record_creates_a_fresh_one() {
        let mut r = record(&[("a", int(1))]);
        r.void_time = NOW_S - 1;
        r.key = Some(key("old"));
        let create_only = Request {
            exists: ExistsAction::CreateOnly,
            generation: GenerationCheck::Equal(0),
            key: Some(key("new")),
            ..req(vec![Op::write(name("b"), int(2))])
        };
        let (w, _) = written(run(Some(&r), &create_only));
        assert_eq!(w.generation, 1);
        assert_eq!(bin_list(&w), pairs(&[("b", int(2))]));
        assert_eq!(w.key, Some(key("new")));
        assert_eq!(w.last_update_ms, CLOCK.now_ms);
    }

    #[test]
    fn a_record_is_still_readable_during_its_void_time_second() {
        let mut r = record(&[("a", int(1))]);
        r.void_time = NOW_S;
        assert!(run(Some(&r), &get_all()).is_ok());
        assert!(!is_expired(NOW_S, NOW_S));
        assert!(is_expired(NOW_S - 1, NOW_S));
        assert!(!is_expired(0, NOW_S));
    }

    #[test]
    fn a_tombstone_is_not_found_and_a_write_recreates_from_generation_1() {
        let mut r = record(&[("a", int(1))]);
        r.tombstone = true;
        assert_eq!(run(Some(&r), &get_all()), Err(ResultCode::KeyNotFound));
        let (w, _) = written(run(Some(&r), &req(vec![Op::write(name("b"), int(2))])));
        assert_eq!(w.generation, 1);
        assert!(!w.tombstone);
        assert_eq!(bin_list(&w), pairs(&[("b", int(2))]));
    }

    // ---- reads ------------------------------------------------------------

    #[test]
    fn get_of_a_missing_record_is_key_not_found() {
        assert_eq!(run(None, &get_all()), Err(ResultCode::KeyNotFound));
        assert_eq!(
            run(None, &req(vec![Op::read(name("a"))])),
            Err(ResultCode::KeyNotFound)
        );
    }

    #[test]
    fn exists_answers_found_with_metadata_and_no_bins_or_key_not_found() {
        let mut r = record(&[("a", int(1))]);
        r.void_time = NOW_S + 100;
        // C `exists`: NOBINDATA, no ops; Rust get(Bins::None): one empty READ.
        for ops in [vec![], vec![Op::read_all()]] {
            let exists = Request {
                header_only: true,
                ..req(ops)
            };
            assert_eq!(
                run(Some(&r), &exists),
                Ok(Outcome::Read {
                    bins: vec![],
                    generation: 5,
                    void_time: NOW_S + 100
                })
            );
            assert_eq!(run(None, &exists), Err(ResultCode::KeyNotFound));
        }
    }

    #[test]
    fn get_all_returns_every_bin_in_stored_order() {
        let r = record(&[("z", int(1)), ("a", string("x")), ("m", Value::Bool(true))]);
        assert_eq!(
            read_bins(run(Some(&r), &get_all())),
            vec![
                entry("z", Some(int(1))),
                entry("a", Some(string("x"))),
                entry("m", Some(Value::Bool(true)))
            ]
        );
    }

    #[test]
    fn get_of_selected_bins_skips_missing_bins() {
        let r = record(&[("a", int(1)), ("b", int(2))]);
        let get = req(vec![
            Op::read(name("b")),
            Op::read(name("nope")),
            Op::read(name("a")),
        ]);
        assert_eq!(
            read_bins(run(Some(&r), &get)),
            vec![entry("b", Some(int(2))), entry("a", Some(int(1)))]
        );
    }

    #[test]
    fn respond_all_ops_read_gives_a_nil_entry_for_a_missing_bin() {
        let r = record(&[("a", int(1))]);
        let get = Request {
            respond_all_ops: true,
            ..req(vec![Op::read(name("nope")), Op::read(name("a"))])
        };
        assert_eq!(
            read_bins(run(Some(&r), &get)),
            vec![entry("nope", None), entry("a", Some(int(1)))]
        );
    }

    #[test]
    fn a_read_with_no_ops_and_no_get_all_is_a_parameter_error() {
        let r = record(&[("a", int(1))]);
        assert_eq!(run(Some(&r), &req(vec![])), Err(ResultCode::ParameterError));
    }

    #[test]
    fn get_all_in_a_read_ignores_ops_even_with_respond_all_ops() {
        // Aerospike read_local: only the write path refuses the mix.
        let r = record(&[("a", int(1)), ("b", int(2))]);
        let get = Request {
            read_all_bins: true,
            respond_all_ops: true,
            ..req(vec![Op::read(name("b"))])
        };
        assert_eq!(
            read_bins(run(Some(&r), &get)),
            vec![entry("a", Some(int(1))), entry("b", Some(int(2)))]
        );
    }

    #[test]
    fn an_empty_named_read_without_get_all_reads_nothing() {
        let r = record(&[("a", int(1))]);
        assert_eq!(read_bins(run(Some(&r), &req(vec![Op::read_all()]))), vec![]);
        let respond_all = Request {
            respond_all_ops: true,
            ..req(vec![Op::read_all()])
        };
        assert_eq!(
            read_bins(run(Some(&r), &respond_all)),
            vec![ReplyBin {
                name: None,
                value: None
            }]
        );
    }

    // ---- operate ------------------------------------------------------------

    #[test]
    fn operate_read_sees_the_value_after_earlier_ops() {
        let r = record(&[("a", int(1))]);
        let ops = req(vec![
            Op::read(name("a")),
            Op::incr(name("a"), int(10)),
            Op::read(name("a")),
            Op::delete_bin(name("a")),
            Op::read(name("a")),
            Op::write(name("b"), string("x")),
        ]);
        let (w, reply) = written(run(Some(&r), &ops));
        assert_eq!(
            reply,
            vec![entry("a", Some(int(1))), entry("a", Some(int(11)))]
        );
        assert_eq!(bin_list(&w), pairs(&[("b", string("x"))]));
    }

    #[test]
    fn operate_with_respond_all_ops_answers_every_op_in_order_except_touch() {
        let r = record(&[("a", int(1)), ("s", string("x"))]);
        let ops = Request {
            respond_all_ops: true,
            ..req(vec![
                Op::write(name("b"), int(2)),
                Op::incr(name("a"), int(1)),
                Op::append(name("s"), string("y")),
                Op::prepend(name("s"), string("w")),
                Op::touch(),
                Op::read(name("nope")),
                Op::read(name("a")),
                Op::delete_bin(name("b")),
                Op::delete_all(),
                Op::write(name("c"), int(3)),
            ])
        };
        let (w, reply) = written(run(Some(&r), &ops));
        assert_eq!(
            reply,
            vec![
                entry("b", None),
                entry("a", None),
                entry("s", None),
                entry("s", None),
                entry("nope", None),
                entry("a", Some(int(2))),
                entry("b", None),
                ReplyBin {
                    name: None,
                    value: None
                },
                entry("c", None),
            ]
        );
        assert_eq!(bin_list(&w), pairs(&[("c", int(3))]));
    }

    #[test]
    fn operate_without_respond_all_ops_answers_only_reads() {
        let r = record(&[("a", int(1))]);
        let ops = req(vec![
            Op::write(name("b"), int(2)),
            Op::read(name("b")),
            Op::touch(),
            Op::read(name("nope")),
        ]);
        let (_, reply) = written(run(Some(&r), &ops));
        assert_eq!(reply, vec![entry("b", Some(int(2)))]);
    }

    #[test]
    fn operate_read_all_returns_the_bins_after_earlier_ops() {
        let r = record(&[("a", int(1)), ("b", int(2))]);
        let ops = Request {
            read_all_bins: true,
            ..req(vec![Op::write(name("c"), int(3)), Op::read_all()])
        };
        let (_, reply) = written(run(Some(&r), &ops));
        assert_eq!(
            reply,
            vec![
                entry("a", Some(int(1))),
                entry("b", Some(int(2))),
                entry("c", Some(int(3)))
            ]
        );
    }

    #[test]
    fn operate_respond_all_ops_with_read_all_is_a_parameter_error() {
        let r = record(&[("a", int(1))]);
        let ops = Request {
            read_all_bins: true,
            respond_all_ops: true,
            ..req(vec![Op::write(name("c"), int(3)), Op::read_all()])
        };
        assert_eq!(run(Some(&r), &ops), Err(ResultCode::ParameterError));
    }

    #[test]
    fn operate_read_all_mixed_with_named_reads_or_missing_is_a_parameter_error() {
        let r = record(&[("a", int(1))]);
        let mixed = Request {
            read_all_bins: true,
            ..req(vec![
                Op::write(name("c"), int(3)),
                Op::read_all(),
                Op::read(name("a")),
            ])
        };
        assert_eq!(run(Some(&r), &mixed), Err(ResultCode::ParameterError));
        let twice = Request {
            read_all_bins: true,
            ..req(vec![
                Op::write(name("c"), int(3)),
                Op::read_all(),
                Op::read_all(),
            ])
        };
        assert_eq!(run(Some(&r), &twice), Err(ResultCode::ParameterError));
        let flag_only = Request {
            read_all_bins: true,
            ..req(vec![Op::write(name("c"), int(3))])
        };
        assert_eq!(run(Some(&r), &flag_only), Err(ResultCode::ParameterError));
    }

    #[test]
    fn operate_header_op_is_an_empty_named_read_that_finds_nothing() {
        // Rust operate([put, get_header()]): NOBINDATA + an empty READ, and
        // RESPOND_ALL_OPS because a write is present.
        let r = record(&[("a", int(1))]);
        let ops = Request {
            header_only: true,
            respond_all_ops: true,
            ..req(vec![Op::write(name("a"), int(2)), Op::read_all()])
        };
        let (w, reply) = written(run(Some(&r), &ops));
        assert_eq!(
            reply,
            vec![
                entry("a", None),
                ReplyBin {
                    name: None,
                    value: None
                }
            ]
        );
        assert_eq!(w.generation, 6);
    }

    #[test]
    fn write_ops_without_a_bin_name_are_a_parameter_error() {
        let r = record(&[("a", int(1))]);
        for kind in [OpKind::Write, OpKind::Incr, OpKind::Append, OpKind::Prepend] {
            let op = Op {
                kind,
                bin: None,
                value: Some(int(1)),
            };
            assert_eq!(
                run(Some(&r), &req(vec![op])),
                Err(ResultCode::ParameterError),
                "{kind:?}"
            );
        }
    }

    // ---- exists actions -----------------------------------------------------

    #[test]
    fn update_only_and_replace_only_on_a_missing_record_are_key_not_found() {
        for exists in [ExistsAction::UpdateOnly, ExistsAction::ReplaceOnly] {
            let put = Request {
                exists,
                ..req(vec![Op::write(name("a"), int(1))])
            };
            assert_eq!(run(None, &put), Err(ResultCode::KeyNotFound), "{exists:?}");
        }
    }

    #[test]
    fn create_only_on_an_existing_record_is_key_exists() {
        let r = record(&[("a", int(1))]);
        let put = Request {
            exists: ExistsAction::CreateOnly,
            ..req(vec![Op::write(name("a"), int(2))])
        };
        assert_eq!(run(Some(&r), &put), Err(ResultCode::KeyExists));
        let (w, _) = written(run(None, &put));
        assert_eq!(w.generation, 1);
    }

    #[test]
    fn update_and_update_only_merge_bins() {
        let r = record(&[("a", int(1)), ("b", int(2))]);
        for exists in [ExistsAction::Update, ExistsAction::UpdateOnly] {
            let put = Request {
                exists,
                ..req(vec![
                    Op::write(name("b"), int(20)),
                    Op::write(name("c"), int(3)),
                ])
            };
            let (w, _) = written(run(Some(&r), &put));
            assert_eq!(
                bin_list(&w),
                pairs(&[("a", int(1)), ("b", int(20)), ("c", int(3))])
            );
        }
    }

    #[test]
    fn replace_drops_the_bins_not_written() {
        let r = record(&[("a", int(1)), ("b", int(2))]);
        for exists in [ExistsAction::CreateOrReplace, ExistsAction::ReplaceOnly] {
            let put = Request {
                exists,
                ..req(vec![Op::write(name("b"), int(20))])
            };
            let (w, _) = written(run(Some(&r), &put));
            assert_eq!(bin_list(&w), pairs(&[("b", int(20))]), "{exists:?}");
            assert_eq!(w.generation, 6);
        }
        let put = Request {
            exists: ExistsAction::CreateOrReplace,
            ..req(vec![Op::write(name("b"), int(20))])
        };
        assert_eq!(written(run(None, &put)).0.generation, 1);
    }

    #[test]
    fn replace_with_touch_bin_delete_modify_or_delete_all_is_a_parameter_error() {
        let r = record(&[("a", int(1))]);
        let bad = [
            Op::touch(),
            Op::delete_bin(name("a")),
            Op::incr(name("a"), int(1)),
            Op::append(name("a"), string("x")),
            Op::prepend(name("a"), string("x")),
            Op::delete_all(),
        ];
        for exists in [ExistsAction::CreateOrReplace, ExistsAction::ReplaceOnly] {
            for op in &bad {
                let put = Request {
                    exists,
                    ..req(vec![Op::write(name("b"), int(2)), op.clone()])
                };
                assert_eq!(
                    run(Some(&r), &put),
                    Err(ResultCode::ParameterError),
                    "{exists:?} {op:?}"
                );
                // Checked before the record: even a missing record gets 4.
                assert_eq!(run(None, &put), Err(ResultCode::ParameterError));
            }
        }
    }

    // ---- generation ---------------------------------------------------------

    #[test]
    fn generation_equal_must_match_the_stored_generation() {
        let r = record(&[("a", int(1))]);
        let put = |g| Request {
            generation: GenerationCheck::Equal(g),
            ..req(vec![Op::write(name("a"), int(2))])
        };
        assert_eq!(run(Some(&r), &put(4)), Err(ResultCode::GenerationError));
        assert_eq!(run(Some(&r), &put(6)), Err(ResultCode::GenerationError));
        // The 32-bit header value is not truncated to 16 bits.
        assert_eq!(
            run(Some(&r), &put(65_536 + 5)),
            Err(ResultCode::GenerationError)
        );
        assert_eq!(written(run(Some(&r), &put(5))).0.generation, 6);
    }

    #[test]
    fn generation_equal_zero_creates_a_missing_record() {
        let put = Request {
            generation: GenerationCheck::Equal(0),
            ..req(vec![Op::write(name("a"), int(2))])
        };
        assert_eq!(written(run(None, &put)).0.generation, 1);
        let put1 = Request {
            generation: GenerationCheck::Equal(1),
            ..put
        };
        assert_eq!(run(None, &put1), Err(ResultCode::GenerationError));
    }

    #[test]
    fn generation_greater_must_exceed_the_stored_generation() {
        let r = record(&[("a", int(1))]);
        let put = |g| Request {
            generation: GenerationCheck::Greater(g),
            ..req(vec![Op::write(name("a"), int(2))])
        };
        assert_eq!(run(Some(&r), &put(5)), Err(ResultCode::GenerationError));
        assert!(run(Some(&r), &put(6)).is_ok());
        assert!(run(Some(&r), &put(70_000)).is_ok());
        assert!(run(None, &put(1)).is_ok());
        assert_eq!(run(None, &put(0)), Err(ResultCode::GenerationError));
    }

    #[test]
    fn generation_checks_apply_to_deletes_and_touches_but_not_reads() {
        let r = record(&[("a", int(1))]);
        let delete = Request {
            delete: true,
            generation: GenerationCheck::Equal(4),
            ..req(vec![])
        };
        assert_eq!(run(Some(&r), &delete), Err(ResultCode::GenerationError));
        let touch = Request {
            generation: GenerationCheck::Equal(4),
            ..req(vec![Op::touch()])
        };
        assert_eq!(run(Some(&r), &touch), Err(ResultCode::GenerationError));
        let read = Request {
            generation: GenerationCheck::Equal(4),
            ..get_all()
        };
        assert!(run(Some(&r), &read).is_ok());
    }

    #[test]
    fn generation_wraps_from_65535_to_1() {
        let mut r = record(&[("a", int(1))]);
        r.generation = u16::MAX;
        let (w, _) = written(run(Some(&r), &req(vec![Op::write(name("a"), int(2))])));
        assert_eq!(w.generation, 1);
        assert_eq!(next_generation(0), 1);
        assert_eq!(next_generation(1), 2);
        assert_eq!(next_generation(u16::MAX), 1);
    }

    // ---- incr / append / prepend --------------------------------------------

    #[test]
    fn incr_adds_integers_with_wrapping_and_doubles() {
        let r = record(&[("i", int(i64::MAX)), ("d", Value::Double(1.5))]);
        let ops = req(vec![
            Op::incr(name("i"), int(1)),
            Op::incr(name("d"), Value::Double(0.25)),
        ]);
        let (w, _) = written(run(Some(&r), &ops));
        assert_eq!(
            bin_list(&w),
            pairs(&[("i", int(i64::MIN)), ("d", Value::Double(1.75))])
        );
    }

    #[test]
    fn incr_creates_a_missing_bin_with_the_given_value() {
        let (w, _) = written(run(None, &req(vec![Op::incr(name("n"), int(-3))])));
        assert_eq!(bin_list(&w), pairs(&[("n", int(-3))]));
        // Aerospike: the create path does not check the type.
        let (w, _) = written(run(None, &req(vec![Op::incr(name("n"), string("x"))])));
        assert_eq!(bin_list(&w), pairs(&[("n", string("x"))]));
    }

    #[test]
    fn incr_of_mismatched_types_is_a_bin_type_error() {
        let r = record(&[
            ("i", int(1)),
            ("d", Value::Double(1.0)),
            ("s", string("x")),
            ("b", Value::Bool(true)),
            ("l", Value::List(vec![0x90])),
        ]);
        let cases = [
            ("i", Value::Double(1.0)),
            ("i", string("1")),
            ("d", int(1)),
            ("s", string("1")),
            ("b", Value::Bool(true)),
            ("l", int(1)),
        ];
        for (bin, v) in cases {
            assert_eq!(
                run(Some(&r), &req(vec![Op::incr(name(bin), v.clone())])),
                Err(ResultCode::BinTypeError),
                "{bin} += {v:?}"
            );
        }
    }

    #[test]
    fn modify_ops_with_a_nil_value_are_a_parameter_error() {
        let r = record(&[("a", int(1))]);
        for kind in [OpKind::Incr, OpKind::Append, OpKind::Prepend] {
            for bin in ["a", "missing"] {
                let op = Op {
                    kind,
                    bin: Some(name(bin)),
                    value: None,
                };
                assert_eq!(
                    run(Some(&r), &req(vec![op])),
                    Err(ResultCode::ParameterError)
                );
            }
        }
    }

    #[test]
    fn append_and_prepend_concatenate_strings_and_same_type_blobs() {
        let r = record(&[("s", string("mid")), ("b", Value::Blob(9, vec![2]))]);
        let ops = req(vec![
            Op::append(name("s"), string(">")),
            Op::prepend(name("s"), string("<")),
            Op::append(name("b"), Value::Blob(9, vec![3])),
            Op::prepend(name("b"), Value::Blob(9, vec![1])),
            Op::append(name("new"), string("n")),
        ]);
        let (w, _) = written(run(Some(&r), &ops));
        assert_eq!(
            bin_list(&w),
            pairs(&[
                ("s", string("<mid>")),
                ("b", Value::Blob(9, vec![1, 2, 3])),
                ("new", string("n"))
            ])
        );
    }

    #[test]
    fn append_or_prepend_of_mismatched_types_is_a_bin_type_error() {
        let r = record(&[
            ("s", string("x")),
            ("b", Value::Blob(4, vec![1])),
            ("i", int(1)),
            ("d", Value::Double(1.0)),
            ("m", Value::Map(vec![0x80])),
        ]);
        let cases = [
            ("s", Value::Blob(4, vec![1])),
            ("b", string("x")),
            ("b", Value::Blob(9, vec![1])),
            ("i", int(1)),
            ("d", Value::Double(1.0)),
            ("m", Value::Map(vec![0x80])),
        ];
        for (bin, v) in cases {
            for op in [
                Op::append(name(bin), v.clone()),
                Op::prepend(name(bin), v.clone()),
            ] {
                assert_eq!(
                    run(Some(&r), &req(vec![op.clone()])),
                    Err(ResultCode::BinTypeError),
                    "{op:?}"
                );
            }
        }
    }

    #[test]
    fn modifying_a_geojson_bin_is_a_server_error() {
        let r = record(&[("g", Value::GeoJson(b"\0\0\0{}".to_vec()))]);
        for op in [
            Op::incr(name("g"), int(1)),
            Op::append(name("g"), string("x")),
            Op::prepend(name("g"), Value::GeoJson(vec![])),
        ] {
            assert_eq!(run(Some(&r), &req(vec![op])), Err(ResultCode::ServerError));
        }
    }

    #[test]
    fn a_failed_op_changes_nothing() {
        let r = record(&[("a", int(1)), ("s", string("x"))]);
        let ops = req(vec![
            Op::write(name("a"), int(9)),
            Op::incr(name("s"), int(1)),
        ]);
        assert_eq!(run(Some(&r), &ops), Err(ResultCode::BinTypeError));
    }

    // ---- touch --------------------------------------------------------------

    #[test]
    fn touch_of_a_missing_record_is_key_not_found() {
        assert_eq!(
            run(None, &req(vec![Op::touch()])),
            Err(ResultCode::KeyNotFound)
        );
        // Also when the touch comes with writes that would create it.
        let ops = req(vec![Op::write(name("a"), int(1)), Op::touch()]);
        assert_eq!(run(None, &ops), Err(ResultCode::KeyNotFound));
    }

    #[test]
    fn touch_keeps_the_bins_bumps_the_generation_and_resets_the_ttl() {
        let mut r = record(&[("a", int(1)), ("b", int(2))]);
        r.void_time = NOW_S + 10;
        let touch = Request {
            ttl: Ttl::Seconds(3600),
            ..req(vec![Op::touch()])
        };
        let (w, reply) = written(run(Some(&r), &touch));
        assert_eq!(w.bins, r.bins);
        assert_eq!(w.generation, 6);
        assert_eq!(w.void_time, NOW_S + 3600);
        assert_eq!(reply, vec![]);
        // Touch with the namespace default.
        let (w, _) = written(apply(Some(&r), &req(vec![Op::touch()]), CLOCK, 60));
        assert_eq!(w.void_time, NOW_S + 60);
    }

    #[test]
    fn touch_with_create_only_on_an_existing_record_is_key_exists() {
        let r = record(&[("a", int(1))]);
        let touch = Request {
            exists: ExistsAction::CreateOnly,
            ..req(vec![Op::touch()])
        };
        assert_eq!(run(Some(&r), &touch), Err(ResultCode::KeyExists));
    }

    // ---- bins left / deletes -----------------------------------------------

    #[test]
    fn delete_all_then_write_leaves_only_the_new_bins() {
        let r = record(&[("a", int(1)), ("b", int(2))]);
        let ops = req(vec![Op::delete_all(), Op::write(name("c"), int(3))]);
        let (w, _) = written(run(Some(&r), &ops));
        assert_eq!(bin_list(&w), pairs(&[("c", int(3))]));
    }

    #[test]
    fn a_write_that_removes_every_bin_deletes_the_record() {
        let r = record(&[("a", int(1)), ("b", int(2))]);
        let ops = req(vec![Op::delete_bin(name("a")), Op::delete_bin(name("b"))]);
        assert_eq!(
            run(Some(&r), &ops),
            Ok(Outcome::Delete {
                bins: vec![],
                generation: 0
            })
        );
        assert_eq!(
            run(Some(&r), &req(vec![Op::delete_all()])),
            Ok(Outcome::Delete {
                bins: vec![],
                generation: 0
            })
        );
        // Reads in the same request still answer.
        let ops = Request {
            respond_all_ops: true,
            ..req(vec![Op::read(name("a")), Op::delete_all()])
        };
        assert_eq!(
            run(Some(&r), &ops),
            Ok(Outcome::Delete {
                bins: vec![
                    entry("a", Some(int(1))),
                    ReplyBin {
                        name: None,
                        value: None
                    }
                ],
                generation: 0,
            })
        );
    }

    #[test]
    fn a_write_of_only_nil_bins_to_a_missing_record_is_key_not_found() {
        // Aerospike write_master_apply: nothing to delete answers 2 and
        // creates nothing.
        let put = req(vec![Op::delete_bin(name("a"))]);
        assert_eq!(run(None, &put), Err(ResultCode::KeyNotFound));
        assert_eq!(
            run(None, &req(vec![Op::delete_all()])),
            Err(ResultCode::KeyNotFound)
        );
        let put_then_remove = req(vec![
            Op::write(name("a"), int(1)),
            Op::delete_bin(name("a")),
        ]);
        assert_eq!(run(None, &put_then_remove), Err(ResultCode::KeyNotFound));
    }

    #[test]
    fn delete_answers_key_not_found_or_deletes() {
        let delete = Request {
            delete: true,
            ..req(vec![])
        };
        assert_eq!(run(None, &delete), Err(ResultCode::KeyNotFound));
        let r = record(&[("a", int(1))]);
        assert_eq!(
            run(Some(&r), &delete),
            Ok(Outcome::Delete {
                bins: vec![],
                generation: 0
            })
        );
        let with_gen = Request {
            generation: GenerationCheck::Equal(5),
            ..delete
        };
        assert_eq!(
            run(Some(&r), &with_gen),
            Ok(Outcome::Delete {
                bins: vec![],
                generation: 0
            })
        );
    }

    // ---- TTL ----------------------------------------------------------------

    #[test]
    fn ttl_wire_values_decode_per_the_spec() {
        assert_eq!(Ttl::from_wire(0), Ok(Ttl::NamespaceDefault));
        assert_eq!(Ttl::from_wire(0xFFFF_FFFF), Ok(Ttl::NeverExpire));
        assert_eq!(Ttl::from_wire(0xFFFF_FFFE), Ok(Ttl::KeepCurrent));
        assert_eq!(Ttl::from_wire(1), Ok(Ttl::Seconds(1)));
        assert_eq!(Ttl::from_wire(315_360_000), Ok(Ttl::Seconds(315_360_000)));
        for bad in [315_360_001, 0xFFFF_FFFD, 0x8000_0000] {
            assert_eq!(Ttl::from_wire(bad), Err(ResultCode::ParameterError));
        }
    }

    #[test]
    fn write_void_time_follows_the_ttl() {
        let mut r = record(&[("a", int(1))]);
        r.void_time = NOW_S + 777;
        let put = |ttl| Request {
            ttl,
            ..req(vec![Op::write(name("a"), int(2))])
        };
        let void = |existing: Option<&Record>, ttl, default| {
            written(apply(existing, &put(ttl), CLOCK, default))
                .0
                .void_time
        };
        assert_eq!(void(Some(&r), Ttl::NamespaceDefault, 0), 0);
        assert_eq!(void(Some(&r), Ttl::NamespaceDefault, 100), NOW_S + 100);
        assert_eq!(void(Some(&r), Ttl::NeverExpire, 100), 0);
        assert_eq!(void(Some(&r), Ttl::KeepCurrent, 100), NOW_S + 777);
        assert_eq!(void(None, Ttl::KeepCurrent, 100), NOW_S + 100);
        assert_eq!(void(None, Ttl::KeepCurrent, 0), 0);
        assert_eq!(void(Some(&r), Ttl::Seconds(5), 100), NOW_S + 5);
        for bad in [0, MAX_TTL_S + 1] {
            assert_eq!(
                run(Some(&r), &put(Ttl::Seconds(bad))),
                Err(ResultCode::ParameterError)
            );
        }
    }

    #[test]
    fn an_invalid_ttl_is_checked_after_existence_like_aerospike() {
        let put = Request {
            exists: ExistsAction::UpdateOnly,
            ttl: Ttl::Seconds(u32::MAX - 5),
            ..req(vec![Op::write(name("a"), int(2))])
        };
        assert_eq!(run(None, &put), Err(ResultCode::KeyNotFound));
    }

    #[test]
    fn last_update_time_is_now_and_never_goes_back() {
        let mut r = record(&[("a", int(1))]);
        let put = req(vec![Op::write(name("a"), int(2))]);
        assert_eq!(written(run(Some(&r), &put)).0.last_update_ms, CLOCK.now_ms);
        r.last_update_ms = CLOCK.now_ms + 5_000;
        assert_eq!(
            written(run(Some(&r), &put)).0.last_update_ms,
            CLOCK.now_ms + 5_000
        );
    }

    // ---- stored key and set -------------------------------------------------

    #[test]
    fn send_key_is_stored_on_create_and_on_update_without_a_stored_key() {
        let put = Request {
            key: Some(key("k1")),
            ..req(vec![Op::write(name("a"), int(1))])
        };
        let (w, _) = written(run(None, &put));
        assert_eq!(w.key, Some(key("k1")));
        assert_eq!(w.set_name, b"demo".to_vec());
        assert_eq!(w.digest, Digest([7; 20]));
        let r = record(&[("a", int(1))]);
        assert_eq!(written(run(Some(&r), &put)).0.key, Some(key("k1")));
        // An update without a key keeps the stored one.
        let mut stored = r.clone();
        stored.key = Some(key("k1"));
        let plain = req(vec![Op::write(name("a"), int(1))]);
        assert_eq!(written(run(Some(&stored), &plain)).0.key, Some(key("k1")));
        assert_eq!(written(run(Some(&stored), &put)).0.key, Some(key("k1")));
    }

    #[test]
    fn a_sent_key_differing_from_the_stored_key_is_key_mismatch() {
        let mut r = record(&[("a", int(1))]);
        r.key = Some(key("k1"));
        let with_key = |request: Request| Request {
            key: Some(key("k2")),
            ..request
        };
        let write = with_key(req(vec![Op::write(name("a"), int(2))]));
        assert_eq!(run(Some(&r), &write), Err(ResultCode::KeyMismatch));
        assert_eq!(
            run(Some(&r), &with_key(get_all())),
            Err(ResultCode::KeyMismatch)
        );
        let delete = with_key(Request {
            delete: true,
            ..req(vec![])
        });
        assert_eq!(run(Some(&r), &delete), Err(ResultCode::KeyMismatch));
        let exists = with_key(Request {
            header_only: true,
            ..req(vec![])
        });
        assert_eq!(run(Some(&r), &exists), Err(ResultCode::KeyMismatch));
    }

    #[test]
    fn a_set_name_differing_from_the_records_is_a_parameter_error() {
        let r = record(&[("a", int(1))]);
        let other = |request: Request| Request {
            set_name: b"other".to_vec(),
            ..request
        };
        let no_set = |request: Request| Request {
            set_name: vec![],
            ..request
        };
        let write = req(vec![Op::write(name("a"), int(2))]);
        assert_eq!(
            run(Some(&r), &other(write.clone())),
            Err(ResultCode::ParameterError)
        );
        // An update must name the set; a read or delete may leave it out.
        assert_eq!(
            run(Some(&r), &no_set(write)),
            Err(ResultCode::ParameterError)
        );
        assert_eq!(
            run(Some(&r), &other(get_all())),
            Err(ResultCode::ParameterError)
        );
        assert!(run(Some(&r), &no_set(get_all())).is_ok());
        let delete = Request {
            delete: true,
            ..req(vec![])
        };
        assert_eq!(
            run(Some(&r), &other(delete.clone())),
            Err(ResultCode::ParameterError)
        );
        assert!(run(Some(&r), &no_set(delete)).is_ok());
    }

    // ---- bin order and limits -----------------------------------------------

    #[test]
    fn new_bins_go_last_and_a_deleted_bin_takes_the_last_bins_place() {
        let r = record(&[("a", int(1)), ("b", int(2)), ("c", int(3)), ("d", int(4))]);
        let ops = req(vec![
            Op::write(name("e"), int(5)),
            Op::write(name("b"), int(20)),
            Op::delete_bin(name("a")),
            Op::write(name("a"), int(10)),
        ]);
        let (w, _) = written(run(Some(&r), &ops));
        assert_eq!(
            bin_list(&w),
            pairs(&[
                ("e", int(5)),
                ("b", int(20)),
                ("c", int(3)),
                ("d", int(4)),
                ("a", int(10))
            ])
        );
    }

    #[test]
    fn more_than_32767_bins_is_a_parameter_error() {
        let names: Vec<BinName> = (0..=MAX_BINS)
            .map(|i| BinName::new(format!("b{i}").as_bytes()).unwrap())
            .collect();
        let mut r = record(&[]);
        r.bins = names[..MAX_BINS - 1]
            .iter()
            .map(|n| Bin {
                name: *n,
                value: int(0),
            })
            .collect();
        let one_more = req(vec![Op::write(names[MAX_BINS - 1], int(0))]);
        assert_eq!(written(run(Some(&r), &one_more)).0.bins.len(), MAX_BINS);
        let two_more = req(vec![
            Op::write(names[MAX_BINS - 1], int(0)),
            Op::write(names[MAX_BINS], int(0)),
        ]);
        assert_eq!(run(Some(&r), &two_more), Err(ResultCode::ParameterError));
    }

    #[test]
    fn too_many_ops_is_a_parameter_error() {
        let r = record(&[("a", int(1))]);
        let reads = req(vec![Op::read(name("a")); MAX_OPS + 1]);
        assert_eq!(run(Some(&r), &reads), Err(ResultCode::ParameterError));
        let writes = req(vec![Op::write(name("a"), int(1)); MAX_OPS + 1]);
        assert_eq!(run(Some(&r), &writes), Err(ResultCode::ParameterError));
    }

    // ---- property tests -------------------------------------------------------

    const NAMES: [&str; 3] = ["a", "b", "c"];

    fn small_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            (-3i64..3).prop_map(Value::Integer),
            Just(Value::Integer(i64::MAX)),
            (-4i32..4).prop_map(|v| Value::Double(f64::from(v) * 0.5)),
            proptest::collection::vec(b'x'..=b'z', 0..3).prop_map(Value::String),
            (
                prop_oneof![Just(4u8), Just(9u8)],
                proptest::collection::vec(0u8..3, 0..3)
            )
                .prop_map(|(t, b)| Value::Blob(t, b)),
            any::<bool>().prop_map(Value::Bool),
            Just(Value::GeoJson(b"{}".to_vec())),
        ]
    }

    fn model_op() -> impl Strategy<Value = Op> {
        let bin = || (0..NAMES.len()).prop_map(|i| name(NAMES[i]));
        prop_oneof![
            3 => (bin(), proptest::option::weighted(0.8, small_value())).prop_map(|(b, v)| Op {
                kind: OpKind::Write,
                bin: Some(b),
                value: v,
            }),
            2 => (bin(), small_value()).prop_map(|(b, v)| Op::incr(b, v)),
            1 => (bin(), small_value()).prop_map(|(b, v)| Op::append(b, v)),
            1 => (bin(), small_value()).prop_map(|(b, v)| Op::prepend(b, v)),
            3 => bin().prop_map(Op::read),
            1 => Just(Op::delete_all()),
        ]
    }

    /// The reference: bins as a map plus an order list; a removed bin's slot
    /// is taken by the last one (Aerospike's order).
    #[derive(Default)]
    struct Model {
        values: BTreeMap<BinName, Value>,
        order: Vec<BinName>,
    }

    impl Model {
        fn set(&mut self, n: BinName, v: Value) {
            if self.values.insert(n, v).is_none() {
                self.order.push(n);
            }
        }
        fn remove(&mut self, n: BinName) {
            if self.values.remove(&n).is_some() {
                let at = self.order.iter().position(|x| *x == n).unwrap();
                let last = self.order.pop().unwrap();
                if at < self.order.len() {
                    self.order[at] = last;
                }
            }
        }
        /// Applies one op; `Err` is the result code of a failed op.
        fn step(&mut self, op: &Op) -> Result<Option<Value>, ResultCode> {
            let n = op.bin.unwrap_or_else(|| name("unused"));
            match op.kind {
                OpKind::Read => return Ok(self.values.get(&n).cloned()),
                OpKind::DeleteAll => {
                    self.values.clear();
                    self.order.clear();
                }
                OpKind::Write => match &op.value {
                    Some(v) => self.set(n, v.clone()),
                    None => self.remove(n),
                },
                OpKind::Touch => unreachable!("not generated"),
                kind => {
                    let v = op.value.clone().unwrap();
                    let new = match (self.values.get(&n), &v, kind) {
                        (None, _, _) => v,
                        (Some(Value::GeoJson(_)), _, _) => return Err(ResultCode::ServerError),
                        (Some(Value::Integer(a)), Value::Integer(b), OpKind::Incr) => {
                            Value::Integer(a.wrapping_add(*b))
                        }
                        (Some(Value::Double(a)), Value::Double(b), OpKind::Incr) => {
                            Value::Double(a + b)
                        }
                        (Some(Value::String(a)), Value::String(b), OpKind::Append) => {
                            Value::String([a.as_slice(), b].concat())
                        }
                        (Some(Value::String(a)), Value::String(b), OpKind::Prepend) => {
                            Value::String([b.as_slice(), a].concat())
                        }
                        (Some(Value::Blob(ta, a)), Value::Blob(tb, b), OpKind::Append)
                            if ta == tb =>
                        {
                            Value::Blob(*ta, [a.as_slice(), b].concat())
                        }
                        (Some(Value::Blob(ta, a)), Value::Blob(tb, b), OpKind::Prepend)
                            if ta == tb =>
                        {
                            Value::Blob(*ta, [b.as_slice(), a].concat())
                        }
                        _ => return Err(ResultCode::BinTypeError),
                    };
                    self.set(n, new);
                }
            }
            Ok(None)
        }
    }

    fn initial_bins() -> impl Strategy<Value = Vec<(usize, Value)>> {
        proptest::collection::vec((0..NAMES.len(), small_value()), 0..4)
    }

    fn any_value() -> impl Strategy<Value = Value> {
        let bytes = || proptest::collection::vec(any::<u8>(), 0..6);
        prop_oneof![
            any::<i64>().prop_map(Value::Integer),
            any::<u64>().prop_map(|b| Value::Double(f64::from_bits(b))),
            any::<bool>().prop_map(Value::Bool),
            bytes().prop_map(Value::String),
            (prop_oneof![Just(4u8), 7u8..=12], bytes()).prop_map(|(t, b)| Value::Blob(t, b)),
            bytes().prop_map(Value::Hll),
            bytes().prop_map(Value::Map),
            bytes().prop_map(Value::List),
            bytes().prop_map(Value::GeoJson),
        ]
    }

    fn any_op() -> impl Strategy<Value = Op> {
        let kind = prop_oneof![
            Just(OpKind::Read),
            Just(OpKind::Write),
            Just(OpKind::Incr),
            Just(OpKind::Append),
            Just(OpKind::Prepend),
            Just(OpKind::Touch),
            Just(OpKind::DeleteAll),
        ];
        let bin = proptest::option::weighted(
            0.8,
            (0..4usize).prop_map(|i| name(["a", "b", "c", "d"][i])),
        );
        (kind, bin, proptest::option::weighted(0.8, any_value()))
            .prop_map(|(kind, bin, value)| Op { kind, bin, value })
    }

    fn any_record() -> impl Strategy<Value = Record> {
        (
            any::<u16>(),
            prop_oneof![Just(0u32), NOW_S - 2..NOW_S + 2, any::<u32>()],
            any::<u64>(),
            prop_oneof![Just(b"demo".to_vec()), Just(vec![])],
            proptest::option::of(prop_oneof![Just(key("k1")), Just(key("k2"))]),
            proptest::bool::weighted(0.2),
            proptest::collection::vec(((0..4usize), any_value()), 0..5),
        )
            .prop_map(
                |(generation, void_time, lut, set_name, key, tombstone, bins)| {
                    let mut r = Record {
                        generation,
                        void_time,
                        last_update_ms: lut,
                        set_name,
                        key,
                        tombstone,
                        ..Record::default()
                    };
                    for (i, value) in bins {
                        let n = name(["a", "b", "c", "d"][i]);
                        if !r.bins.iter().any(|b| b.name == n) {
                            r.bins.push(Bin { name: n, value });
                        }
                    }
                    r
                },
            )
    }

    fn any_request() -> impl Strategy<Value = Request> {
        let exists = prop_oneof![
            Just(ExistsAction::Update),
            Just(ExistsAction::UpdateOnly),
            Just(ExistsAction::CreateOrReplace),
            Just(ExistsAction::ReplaceOnly),
            Just(ExistsAction::CreateOnly),
        ];
        let generation = prop_oneof![
            Just(GenerationCheck::None),
            (0u32..4).prop_map(GenerationCheck::Equal),
            any::<u32>().prop_map(GenerationCheck::Greater),
        ];
        let ttl = prop_oneof![
            Just(Ttl::NamespaceDefault),
            Just(Ttl::NeverExpire),
            Just(Ttl::KeepCurrent),
            any::<u32>().prop_map(Ttl::Seconds),
        ];
        (
            proptest::collection::vec(any_op(), 0..8),
            any::<[bool; 4]>(),
            exists,
            generation,
            ttl,
            prop_oneof![Just(b"demo".to_vec()), Just(vec![]), Just(b"x".to_vec())],
            proptest::option::of(prop_oneof![Just(key("k1")), Just(key("k2"))]),
        )
            .prop_map(
                |(ops, flags, exists, generation, ttl, set_name, key)| Request {
                    digest: Digest([1; 20]),
                    ops,
                    read_all_bins: flags[0],
                    header_only: flags[1],
                    exists,
                    generation,
                    ttl,
                    respond_all_ops: flags[2],
                    set_name,
                    key,
                    delete: flags[3],
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn operate_matches_the_reference_model(
            initial in initial_bins(),
            exists in any::<bool>(),
            ops in proptest::collection::vec(model_op(), 1..10),
            respond_all in any::<bool>(),
        ) {
            let mut model = Model::default();
            for (i, v) in &initial {
                model.set(name(NAMES[*i]), v.clone());
            }
            let existed = exists && !model.order.is_empty();
            if !existed {
                model = Model::default();
            }
            let existing = existed.then(|| {
                let mut r = record(&[]);
                r.bins = model
                    .order
                    .iter()
                    .map(|n| Bin { name: *n, value: model.values[n].clone() })
                    .collect();
                r
            });

            let mut expected_reply = Vec::new();
            let mut failure = None;
            for op in &ops {
                match model.step(op) {
                    Err(code) => {
                        failure = Some(code);
                        break;
                    }
                    Ok(value) => {
                        let is_read = op.kind == OpKind::Read;
                        if respond_all || (is_read && value.is_some()) {
                            expected_reply.push(ReplyBin { name: op.bin, value });
                        }
                    }
                }
            }
            let request = Request { respond_all_ops: respond_all, ..req(ops.clone()) };
            let got = run(existing.as_ref(), &request);
            let writes = ops.iter().any(|op| op.kind != OpKind::Read);
            let expected = if let Some(code) = failure {
                Err(code)
            } else if !writes {
                match &existing {
                    None => Err(ResultCode::KeyNotFound),
                    Some(r) => Ok(Outcome::Read {
                        bins: expected_reply,
                        generation: r.generation,
                        void_time: r.void_time,
                    }),
                }
            } else if model.order.is_empty() {
                if existed {
                    Ok(Outcome::Delete { bins: expected_reply, generation: 0 })
                } else {
                    Err(ResultCode::KeyNotFound)
                }
            } else {
                let mut r = existing.clone().unwrap_or_else(|| record(&[]));
                r.generation = if existed { 6 } else { 1 };
                r.void_time = 0;
                r.last_update_ms = CLOCK.now_ms;
                r.bins = model
                    .order
                    .iter()
                    .map(|n| Bin { name: *n, value: model.values[n].clone() })
                    .collect();
                Ok(Outcome::Write { record: r, bins: expected_reply })
            };
            prop_assert_eq!(got, expected);
        }

        #[test]
        fn apply_never_panics_and_keeps_records_sound(
            existing in proptest::option::of(any_record()),
            request in any_request(),
            now_s in prop_oneof![Just(NOW_S), any::<u32>()],
            now_ms in any::<u64>(),
            default_ttl_s in prop_oneof![Just(0u32), Just(3600u32), any::<u32>()],
        ) {
            let clock = Clock { now_s, now_ms };
            let live = existing
                .as_ref()
                .filter(|r| !r.tombstone && !is_expired(r.void_time, now_s));
            match apply(existing.as_ref(), &request, clock, default_ttl_s) {
                Ok(Outcome::Write { record, .. }) => {
                    prop_assert!(request.writes() && !request.delete);
                    prop_assert!(!record.bins.is_empty() && record.bins.len() <= MAX_BINS);
                    prop_assert_ne!(record.generation, 0);
                    prop_assert!(!record.tombstone);
                    prop_assert!(record.last_update_ms >= now_ms);
                    prop_assert_eq!(record.digest, request.digest);
                    for (i, b) in record.bins.iter().enumerate() {
                        prop_assert!(record.bins[..i].iter().all(|o| o.name != b.name));
                    }
                    prop_assert_eq!(
                        record.generation,
                        next_generation(live.map_or(0, |r| r.generation))
                    );
                }
                Ok(Outcome::Delete { .. }) => prop_assert!(live.is_some()),
                Ok(Outcome::Read { generation, .. }) => {
                    prop_assert!(!request.writes());
                    prop_assert_eq!(Some(generation), live.map(|r| r.generation));
                }
                Err(_) => {}
            }
        }
    }
}
