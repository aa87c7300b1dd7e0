//! Fuzzes the wire decoders with random bytes and with damaged valid frames,
//! and round-trips valid frames built by a small independent encoder.
//!
//! Properties: no decoder panics on any input; what a decoder returns is
//! never bigger than its input can justify (checked through the capacities
//! of the returned vectors, since the crate forbids the unsafe code a
//! counting allocator would need); and a valid request decodes to exactly
//! the engine request it was built from.

use std::io::Write;

use flate2::{write::ZlibEncoder, Compression};
use proptest::prelude::*;

use osprey_engine::digest::Digest;
use osprey_engine::ops::{ExistsAction, GenerationCheck, Op, OpKind, Request, Ttl};
use osprey_engine::record::{BinName, StoredKey, Value};
use osprey_net::wire::msg::{self as m, MsgHeader};
use osprey_net::wire::{admin, batch, compress, info, proto, scan};

/// Inflate limit for the fuzz runs: small, so a damaged size claim is
/// refused rather than honoured.
const FUZZ_MAX_INFLATE_BYTES: usize = 1 << 20;

// ---- the decoders under test, driven together -------------------------------

fn exercise_frame(frame: &[u8]) {
    if let Some(header) = frame.first_chunk::<8>() {
        let _ = proto::parse_header(header, proto::MAX_BODY_BYTES);
    }
    let body = frame.get(8..).unwrap_or_default();
    exercise_body(body);
}

fn exercise_body(body: &[u8]) {
    if let Ok(inner) = compress::inflate(body, FUZZ_MAX_INFLATE_BYTES) {
        assert!(inner.len() <= FUZZ_MAX_INFLATE_BYTES);
        assert!(inner.capacity() <= 2 * inner.len() + 4096);
        exercise_msg(inner.get(8..).unwrap_or_default());
    }
    if let Ok(commands) = info::parse_request(body) {
        assert!(commands.len() <= body.len());
    }
    if let Ok(request) = admin::parse(body) {
        assert!(request.fields.len() * 5 <= body.len());
    }
    exercise_msg(body);
    exercise_batch(body, &MsgHeader::default());
}

fn exercise_msg(body: &[u8]) {
    let Ok(msg) = m::parse(body) else { return };
    // Every op takes at least 8 bytes: the op list cannot outgrow the body.
    assert!(msg.ops.capacity() <= body.len() / 8);
    let _ = scan::classify(&msg);
    let _ = m::single_request(&msg);
    if let Ok(scan) = scan::scan_request(&msg) {
        assert!(scan.partitions.len() <= 4096);
        assert!(scan.resume.len() * 20 <= body.len());
        assert!(scan.bins.len() <= msg.ops.len());
    }
    if let Some(field) = msg.fields.batch {
        exercise_batch(field, &msg.header);
    }
}

fn exercise_batch(field: &[u8], outer: &MsgHeader) {
    let Ok(rows) = batch::parse(field, outer) else {
        return;
    };
    // Every row takes at least 25 bytes.
    assert!(rows.capacity() * 25 <= field.len());
    for row in &rows {
        let _ = batch::row_request(row);
    }
}

// ---- a small encoder, independent of the decoder ----------------------------

fn push_field(out: &mut Vec<u8>, field_type: u8, data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32 + 1).to_be_bytes());
    out.push(field_type);
    out.extend_from_slice(data);
}

/// `(op code, particle type, name, value bytes)`.
type RawOp = (u8, u8, Vec<u8>, Vec<u8>);

fn push_op(out: &mut Vec<u8>, (op, particle_type, name, value): &RawOp) {
    out.extend_from_slice(&((4 + name.len() + value.len()) as u32).to_be_bytes());
    out.extend_from_slice(&[*op, *particle_type, 0, name.len() as u8]);
    out.extend_from_slice(name);
    out.extend_from_slice(value);
}

#[allow(clippy::too_many_arguments)]
fn encode_msg(
    info: [u8; 4],
    generation: u32,
    record_ttl: u32,
    transaction_ttl: u32,
    fields: &[(u8, Vec<u8>)],
    ops: &[RawOp],
) -> Vec<u8> {
    let mut body = vec![22, info[0], info[1], info[2], info[3], 0];
    body.extend_from_slice(&generation.to_be_bytes());
    body.extend_from_slice(&record_ttl.to_be_bytes());
    body.extend_from_slice(&transaction_ttl.to_be_bytes());
    body.extend_from_slice(&(fields.len() as u16).to_be_bytes());
    body.extend_from_slice(&(ops.len() as u16).to_be_bytes());
    for (t, data) in fields {
        push_field(&mut body, *t, data);
    }
    for op in ops {
        push_op(&mut body, op);
    }
    let mut frame = vec![2, 3];
    frame.extend_from_slice(&(body.len() as u64).to_be_bytes()[2..]);
    frame.extend_from_slice(&body);
    frame
}

fn compress_frame(frame: &[u8]) -> Vec<u8> {
    let mut z = ZlibEncoder::new(Vec::new(), Compression::fast());
    z.write_all(frame).unwrap();
    let stream = z.finish().unwrap();
    let mut body = (frame.len() as u64).to_be_bytes().to_vec();
    body.extend_from_slice(&stream);
    let mut out = vec![2, 4];
    out.extend_from_slice(&(body.len() as u64).to_be_bytes()[2..]);
    out.extend_from_slice(&body);
    out
}

fn value_bytes(v: &Value) -> (u8, Vec<u8>) {
    let bytes = match v {
        Value::Integer(i) => i.to_be_bytes().to_vec(),
        Value::Double(d) => d.to_be_bytes().to_vec(),
        Value::Bool(b) => vec![u8::from(*b)],
        Value::String(b)
        | Value::Blob(_, b)
        | Value::Hll(b)
        | Value::Map(b)
        | Value::List(b)
        | Value::GeoJson(b) => b.clone(),
    };
    (v.particle_type(), bytes)
}

// ---- generators -------------------------------------------------------------

fn value() -> impl Strategy<Value = Value> {
    let bytes = || proptest::collection::vec(any::<u8>(), 0..12);
    prop_oneof![
        any::<i64>().prop_map(Value::Integer),
        any::<i32>().prop_map(|v| Value::Double(f64::from(v) / 4.0)),
        any::<bool>().prop_map(Value::Bool),
        bytes().prop_map(Value::String),
        (prop_oneof![Just(4u8), 7u8..=12], bytes()).prop_map(|(t, b)| Value::Blob(t, b)),
        bytes().prop_map(Value::Hll),
        bytes().prop_map(Value::Map),
        bytes().prop_map(Value::List),
        bytes().prop_map(Value::GeoJson),
    ]
}

fn bin() -> impl Strategy<Value = BinName> {
    proptest::collection::vec(b'a'..=b'z', 1..=15).prop_map(|n| BinName::new(&n).unwrap())
}

/// An engine op and its wire form.
fn op() -> impl Strategy<Value = (Op, RawOp)> {
    let modify = |kind: OpKind, code: u8| {
        (bin(), value()).prop_map(move |(b, v)| {
            let (t, bytes) = value_bytes(&v);
            (
                Op {
                    kind,
                    bin: Some(b),
                    value: Some(v),
                },
                (code, t, b.as_bytes().to_vec(), bytes),
            )
        })
    };
    prop_oneof![
        bin().prop_map(|b| (Op::read(b), (1, 0, b.as_bytes().to_vec(), vec![]))),
        Just((Op::read_all(), (1, 0, vec![], vec![]))),
        modify(OpKind::Write, 2),
        bin().prop_map(|b| (Op::delete_bin(b), (2, 0, b.as_bytes().to_vec(), vec![]))),
        modify(OpKind::Incr, 5),
        modify(OpKind::Append, 9),
        modify(OpKind::Prepend, 10),
        Just((Op::touch(), (11, 0, vec![], vec![]))),
        Just((Op::delete_all(), (14, 0, vec![], vec![]))),
    ]
}

/// A valid single-record request: the expected engine request, its
/// namespace, and the frame a client would send for it.
fn single() -> impl Strategy<Value = (Request, bool, String, Vec<u8>)> {
    let exists = prop_oneof![
        Just((ExistsAction::Update, 0u8, 0u8)),
        Just((ExistsAction::CreateOnly, m::INFO2_CREATE_ONLY, 0)),
        Just((ExistsAction::UpdateOnly, 0, m::INFO3_UPDATE_ONLY)),
        Just((ExistsAction::CreateOrReplace, 0, m::INFO3_CREATE_OR_REPLACE)),
        Just((ExistsAction::ReplaceOnly, 0, m::INFO3_REPLACE_ONLY)),
    ];
    let generation_flag = prop_oneof![
        Just(0u8),
        Just(m::INFO2_GENERATION),
        Just(m::INFO2_GENERATION_GT)
    ];
    (
        (
            proptest::collection::vec(b'a'..=b'z', 1..=31),
            proptest::collection::vec(any::<u8>(), 0..=63),
            any::<[u8; 20]>(),
            proptest::option::of(prop_oneof![
                any::<i64>().prop_map(|i| StoredKey {
                    particle_type: 1,
                    bytes: i.to_be_bytes().to_vec()
                }),
                proptest::collection::vec(any::<u8>(), 0..10).prop_map(|b| StoredKey {
                    particle_type: 3,
                    bytes: b
                }),
                proptest::collection::vec(any::<u8>(), 0..10).prop_map(|b| StoredKey {
                    particle_type: 4,
                    bytes: b
                }),
            ]),
        ),
        (
            proptest::collection::vec(op(), 0..6),
            prop_oneof![Just(0u8), Just(1), Just(3), Just(0x21), Just(0x23)],
            exists,
            generation_flag,
            any::<[bool; 3]>(),
            any::<u32>(),
            prop_oneof![Just(0u32), Just(u32::MAX), Just(u32::MAX - 1), any::<u32>()],
        ),
    )
        .prop_map(
            |(
                (namespace, set, digest, key),
                (ops, info1, (exists, info2_exists, info3), generation_flag, flags, gen, ttl),
            )| {
                let [delete, durable, respond_all] = flags;
                let mut info2 = info2_exists | generation_flag;
                if ops.iter().any(|(o, _)| o.kind.is_write()) || delete {
                    info2 |= m::INFO2_WRITE;
                }
                if delete {
                    info2 |= m::INFO2_DELETE;
                }
                if durable {
                    info2 |= m::INFO2_DURABLE_DELETE;
                }
                if respond_all {
                    info2 |= m::INFO2_RESPOND_ALL_OPS;
                }
                let mut fields = vec![(0u8, namespace.clone()), (1, set.clone())];
                if let Some(k) = &key {
                    let mut data = vec![k.particle_type];
                    data.extend_from_slice(&k.bytes);
                    fields.push((2, data));
                }
                fields.push((4, digest.to_vec()));
                let raw_ops: Vec<RawOp> = ops.iter().map(|(_, raw)| raw.clone()).collect();
                let frame = encode_msg([info1, info2, info3, 0], gen, ttl, 1000, &fields, &raw_ops);
                let mut request = Request {
                    digest: Digest(digest),
                    ops: ops.into_iter().map(|(o, _)| o).collect(),
                    read_all_bins: info1 & 0x02 != 0,
                    header_only: info1 & 0x20 != 0,
                    exists,
                    generation: match generation_flag {
                        0 => GenerationCheck::None,
                        m::INFO2_GENERATION => GenerationCheck::Equal(gen),
                        _ => GenerationCheck::Greater(gen),
                    },
                    ttl: Ttl::NamespaceDefault,
                    respond_all_ops: respond_all,
                    set_name: set,
                    key,
                    delete,
                };
                if request.writes() {
                    request.ttl = match ttl {
                        0 => Ttl::NamespaceDefault,
                        u32::MAX => Ttl::NeverExpire,
                        x if x == u32::MAX - 1 => Ttl::KeepCurrent,
                        x => Ttl::Seconds(x),
                    };
                }
                (
                    request,
                    durable,
                    String::from_utf8(namespace).unwrap(),
                    frame,
                )
            },
        )
}

/// What a batch row should decode to: index, digest, info1, op count.
type ExpectedRow = (u32, [u8; 20], u8, usize);

/// A batch frame whose field 41 has up to 5 rows of the flagged, old and REPEAT forms,
/// and the rows' (index, digest, info1, ops count) as expected back.
fn batch_frame() -> impl Strategy<Value = (Vec<u8>, Vec<ExpectedRow>)> {
    let row = (
        any::<[u8; 20]>(),
        0u8..3,
        prop_oneof![Just(0x01u8), Just(0x03), Just(0x21)],
        proptest::collection::vec(bin(), 0..3),
    );
    proptest::collection::vec(row, 0..6).prop_map(|rows| {
        let mut field = (rows.len() as u32).to_be_bytes().to_vec();
        field.push(0x0d);
        let mut expected: Vec<ExpectedRow> = Vec::new();
        for (i, (digest, form, info1, bins)) in rows.into_iter().enumerate() {
            field.extend_from_slice(&(i as u32).to_be_bytes());
            field.extend_from_slice(&digest);
            // A REPEAT needs a previous row.
            let form = if i == 0 && form == 2 { 0 } else { form };
            let ops: Vec<RawOp> = bins
                .iter()
                .map(|b| (1, 0, b.as_bytes().to_vec(), vec![]))
                .collect();
            match form {
                0 => {
                    field.push(0x0a);
                    field.extend_from_slice(&[info1, 0, 0]);
                    field.extend_from_slice(&0u32.to_be_bytes());
                }
                1 => {
                    field.push(0x00);
                    field.push(info1);
                }
                _ => {
                    field.push(0x01);
                    let (_, _, prev_info1, prev_ops) = expected[i - 1];
                    expected.push((i as u32, digest, prev_info1, prev_ops));
                    continue;
                }
            }
            field.extend_from_slice(&2u16.to_be_bytes());
            field.extend_from_slice(&(ops.len() as u16).to_be_bytes());
            push_field(&mut field, 0, b"test");
            push_field(&mut field, 1, b"demo");
            for op in &ops {
                push_op(&mut field, op);
            }
            expected.push((i as u32, digest, info1, ops.len()));
        }
        let frame = encode_msg([0x08, 0, 0, 0], 0, 0, 1000, &[(41, field)], &[]);
        (frame, expected)
    })
}

fn admin_frame() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..70)),
        0..4,
    )
    .prop_map(|fields| {
        let mut out = Vec::new();
        admin::write_reply(
            &mut out,
            0,
            &fields
                .iter()
                .map(|(id, d)| (*id, d.as_slice()))
                .collect::<Vec<_>>(),
        );
        out
    })
}

fn scan_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec(0u16..4096, 0..20),
        proptest::collection::vec(any::<[u8; 20]>(), 0..3),
        proptest::collection::vec(bin(), 0..3),
    )
        .prop_map(|(pids, digests, bins)| {
            let mut fields = vec![(0u8, b"test".to_vec()), (9, 1000u32.to_be_bytes().to_vec())];
            fields.push((11, pids.iter().flat_map(|p| p.to_le_bytes()).collect()));
            fields.push((12, digests.concat()));
            fields.push((13, 10u64.to_be_bytes().to_vec()));
            let ops: Vec<RawOp> = bins
                .iter()
                .map(|b| (1, 0, b.as_bytes().to_vec(), vec![]))
                .collect();
            encode_msg([1, 0, 4, 0], 0, u32::MAX, 1000, &fields, &ops)
        })
}

/// Any valid frame the codec reads.
fn valid_frame() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        single().prop_map(|(_, _, _, frame)| frame),
        single().prop_map(|(_, _, _, frame)| compress_frame(&frame)),
        batch_frame().prop_map(|(frame, _)| frame),
        scan_frame(),
        admin_frame(),
        Just(b"\x02\x01\0\0\0\0\0\x1anode\nbuild\ntruncate:ns=test\n".to_vec()),
    ]
}

#[derive(Clone, Debug)]
enum Damage {
    FlipBit(prop::sample::Index, u8),
    Truncate(prop::sample::Index),
    /// Overwrite 4 bytes with a large size claim.
    BigSize(prop::sample::Index, u32),
    SetByte(prop::sample::Index, u8),
}

fn damage() -> impl Strategy<Value = Damage> {
    let claims = prop_oneof![
        Just(u32::MAX),
        Just(0x8000_0000u32),
        Just(0x00FF_FFFF),
        Just(0xFFFF),
        Just(0),
        1u32..64,
    ];
    prop_oneof![
        (any::<prop::sample::Index>(), 0u8..8).prop_map(|(i, b)| Damage::FlipBit(i, b)),
        any::<prop::sample::Index>().prop_map(Damage::Truncate),
        (any::<prop::sample::Index>(), claims).prop_map(|(i, v)| Damage::BigSize(i, v)),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, v)| Damage::SetByte(i, v)),
    ]
}

fn apply(frame: &mut Vec<u8>, damage: &Damage) {
    if frame.is_empty() {
        return;
    }
    match damage {
        Damage::FlipBit(i, bit) => {
            let i = i.index(frame.len());
            frame[i] ^= 1 << bit;
        }
        Damage::Truncate(i) => frame.truncate(i.index(frame.len())),
        Damage::BigSize(i, v) => {
            let i = i.index(frame.len());
            for (k, b) in v.to_be_bytes().into_iter().enumerate() {
                if let Some(slot) = frame.get_mut(i + k) {
                    *slot = b;
                }
            }
        }
        Damage::SetByte(i, v) => {
            let i = i.index(frame.len());
            frame[i] = *v;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        exercise_frame(&bytes);
        exercise_body(&bytes);
    }

    #[test]
    fn damaged_frames_never_panic(
        frame in valid_frame(),
        damages in proptest::collection::vec(damage(), 1..4),
    ) {
        let mut frame = frame;
        for d in &damages {
            apply(&mut frame, d);
        }
        exercise_frame(&frame);
    }

    #[test]
    fn damaged_batch_fields_never_panic(
        (frame, _) in batch_frame(),
        damages in proptest::collection::vec(damage(), 1..4),
    ) {
        // Damage field 41's data itself (it starts after the 8-byte proto
        // header, the 22-byte message header and the field's 5-byte head).
        let mut field = frame[35..].to_vec();
        for d in &damages {
            apply(&mut field, d);
        }
        exercise_batch(&field, &MsgHeader { info1: 0x08, ..MsgHeader::default() });
    }

    #[test]
    fn valid_single_requests_round_trip((request, durable, namespace, frame) in single()) {
        let header = proto::parse_header(frame[..8].try_into().unwrap(), proto::MAX_BODY_BYTES).unwrap();
        prop_assert_eq!(header.kind, proto::FrameKind::Msg);
        prop_assert_eq!(header.body_len, frame.len() - 8);
        let msg = m::parse(&frame[8..]).unwrap();
        prop_assert_eq!(scan::classify(&msg), scan::Kind::Single);
        let single = m::single_request(&msg).unwrap();
        prop_assert_eq!(single.namespace, namespace.as_str());
        prop_assert_eq!(single.txn.durable_delete, durable);
        prop_assert_eq!(&single.txn.request, &request);

        // The same frame compressed inflates back to itself.
        let compressed = compress_frame(&frame);
        let inner = compress::inflate(&compressed[8..], proto::MAX_BODY_BYTES).unwrap();
        prop_assert_eq!(inner, frame);
    }

    #[test]
    fn valid_batches_round_trip((frame, expected) in batch_frame()) {
        let msg = m::parse(&frame[8..]).unwrap();
        prop_assert_eq!(scan::classify(&msg), scan::Kind::Batch);
        let rows = batch::parse(msg.fields.batch.unwrap(), &msg.header).unwrap();
        let got: Vec<_> = rows.iter().map(|r| (r.index, r.digest, r.info1, r.ops.len())).collect();
        prop_assert_eq!(got, expected);
        for row in &rows {
            let single = batch::row_request(row).unwrap();
            prop_assert_eq!(single.namespace, "test");
            prop_assert_eq!(single.txn.request.digest, Digest(row.digest));
            prop_assert_eq!(single.txn.request.ops.len(), row.ops.len());
        }
    }

    #[test]
    fn reply_records_parse_back(
        bins in proptest::collection::vec((proptest::option::of(bin()), proptest::option::of(value())), 0..6),
        generation in any::<u16>(),
        void_time in any::<u32>(),
    ) {
        let bins: Vec<_> = bins
            .into_iter()
            .map(|(name, value)| osprey_engine::ops::ReplyBin { name, value })
            .collect();
        let mut out = Vec::new();
        let start = proto::begin_frame(&mut out, proto::FrameKind::Msg);
        m::write_record(&mut out, 0, 0, u32::from(generation), void_time, 0, &[], &bins);
        proto::end_frame(&mut out, start);
        let header = proto::parse_header(out[..8].try_into().unwrap(), proto::MAX_BODY_BYTES).unwrap();
        prop_assert_eq!(header.body_len, out.len() - 8);
        let msg = m::parse(&out[8..]).unwrap();
        prop_assert_eq!(msg.header.generation, u32::from(generation));
        prop_assert_eq!(msg.header.record_ttl, void_time);
        prop_assert_eq!(msg.ops.len(), bins.len());
        for (op, bin) in msg.ops.iter().zip(&bins) {
            prop_assert_eq!(op.op, m::OP_READ);
            prop_assert_eq!(op.name, bin.name.as_ref().map_or(&[][..], BinName::as_bytes));
            match &bin.value {
                None => prop_assert_eq!((op.particle_type, op.value.len()), (0, 0)),
                Some(v) => prop_assert_eq!(&Value::from_wire(op.particle_type, op.value).unwrap(), v),
            }
        }
    }
}
