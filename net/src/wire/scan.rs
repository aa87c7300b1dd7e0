//! Partition scans (spec §7), and telling a scan from a single-record or a
//! batch command.
//!
//! A scan names a namespace, optionally a set, and the partitions to walk:
//! the PID array (field 11, LE u16 ids) lists partitions to scan from the
//! start; the digest array (field 12) lists resume points, each continuing
//! its own partition after that digest. With neither, all 4096 partitions.

use osprey_engine::digest::{Digest, DIGEST_LEN};
use osprey_engine::ops;
use osprey_engine::partition::{PartitionId, PARTITION_COUNT};
use osprey_engine::record::BinName;
use osprey_engine::result::ResultCode;

use super::msg::{
    bin_name, namespace_name, Message, INFO1_BATCH, INFO1_GET_ALL, INFO1_NOBINDATA,
    INFO3_PARTITION_DONE, OP_READ,
};

/// What kind of command a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Single,
    Batch,
    Scan,
}

/// Classifies a message, in this order:
/// * **Batch**: info1 BATCH and a batch field (41).
/// * **Scan**: no digest field, a namespace field, and at least one of a
///   PID array, a digest array, or info3 PARTITION_DONE (which both
///   clients set on every scan and query).
/// * **Single**: everything else; a single command without a digest then
///   answers 4 from [`crate::wire::msg::single_request`].
pub fn classify(msg: &Message<'_>) -> Kind {
    let f = &msg.fields;
    if msg.header.info1 & INFO1_BATCH != 0 && f.batch.is_some() {
        return Kind::Batch;
    }
    let partition_hints = f.pid_array.is_some()
        || f.digest_array.is_some()
        || msg.header.info3 & INFO3_PARTITION_DONE != 0;
    if f.digest.is_none() && f.namespace.is_some() && partition_hints {
        return Kind::Scan;
    }
    Kind::Single
}

/// A decoded partition scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanRequest<'a> {
    pub namespace: &'a str,
    /// `None` when the set field is absent or empty (the whole namespace).
    pub set: Option<&'a [u8]>,
    /// Partitions to scan, each once: the PID array in the order sent, then
    /// the partitions of resume digests not already listed. All 4096 in
    /// order when the request gives neither array.
    pub partitions: Vec<u16>,
    /// Resume digests (field 12): scan each one's partition after it.
    pub resume: Vec<[u8; DIGEST_LEN]>,
    /// Field 13; the client pages when it is set.
    pub max_records: Option<u64>,
    /// info1 NOBINDATA: metadata only.
    pub header_only: bool,
    /// Bins to return; empty = all bins.
    pub bins: Vec<BinName>,
    /// 0 = unlimited.
    pub records_per_second: u32,
    pub task_id: u64,
    /// 0 = none.
    pub socket_timeout_ms: u32,
}

impl ScanRequest<'_> {
    /// The digest to resume `pid` after, if the request gave one for it.
    pub fn resume_after(&self, pid: u16) -> Option<Digest> {
        self.resume
            .iter()
            .map(|d| Digest(*d))
            .find(|d| d.partition().get() == pid)
    }
}

/// Maps a scan message to a [`ScanRequest`].
///
/// Result codes: bad field data → 4; transaction, secondary-index, UDF or
/// filter fields → 16 (a query Osprey cannot run); namespace as in a
/// single command (missing/not UTF-8 → 4, empty/≥ 32 bytes → 20); a
/// partition id ≥ 4096 → 4; more than `ops::MAX_OPS` ops → 4; an op that is
/// not READ → 16 (background scans that write are not supported); a READ
/// with an empty name → 4; a bin name over 15 bytes → 21.
pub fn scan_request<'a>(msg: &Message<'a>) -> Result<ScanRequest<'a>, ResultCode> {
    let f = &msg.fields;
    f.refusal()?;
    let namespace = namespace_name(f.namespace)?;
    let set = f.set.filter(|s| !s.is_empty());

    // Each partition once, whichever array names it first.
    let mut listed = [0u64; PARTITION_COUNT / 64];
    let mut partitions = Vec::new();
    let mut add = |pid: u16| {
        let (word, bit) = (usize::from(pid) / 64, pid % 64);
        if let Some(w) = listed.get_mut(word) {
            if *w & (1 << bit) == 0 {
                *w |= 1 << bit;
                partitions.push(pid);
            }
        }
    };
    for pair in f.pid_array.unwrap_or_default().chunks_exact(2) {
        let raw = u16::from_le_bytes([pair[0], pair[1]]);
        let pid = PartitionId::new(u32::from(raw)).ok_or(ResultCode::ParameterError)?;
        add(pid.get());
    }
    let mut resume = Vec::new();
    for chunk in f.digest_array.unwrap_or_default().chunks_exact(DIGEST_LEN) {
        let mut digest = [0u8; DIGEST_LEN];
        digest.copy_from_slice(chunk);
        add(Digest(digest).partition().get());
        resume.push(digest);
    }
    if f.pid_array.is_none() && f.digest_array.is_none() {
        partitions.extend(PartitionId::all().map(PartitionId::get));
    }

    if msg.ops.len() > ops::MAX_OPS {
        return Err(ResultCode::ParameterError);
    }
    let mut bins = Vec::new();
    if msg.header.info1 & INFO1_GET_ALL == 0 {
        for op in &msg.ops {
            if op.op != OP_READ {
                return Err(ResultCode::Unsupported);
            }
            bins.push(bin_name(op.name)?.ok_or(ResultCode::ParameterError)?);
        }
    }

    Ok(ScanRequest {
        namespace,
        set,
        partitions,
        resume,
        max_records: f.max_records,
        header_only: msg.header.info1 & INFO1_NOBINDATA != 0,
        bins,
        records_per_second: f.records_per_second.unwrap_or(0),
        task_id: f.task_id.unwrap_or(0),
        socket_timeout_ms: f.socket_timeout_ms.unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::msg::tests::body;
    use crate::wire::msg::{
        parse, MsgHeader, FIELD_BATCH_INDEX, FIELD_DIGEST, FIELD_DIGEST_ARRAY, FIELD_INDEX_NAME,
        FIELD_MAX_RECORDS, FIELD_NAMESPACE, FIELD_PID_ARRAY, FIELD_RECORDS_PER_SECOND, FIELD_SET,
        FIELD_SOCKET_TIMEOUT, FIELD_TASK_ID, INFO1_READ, OP_WRITE,
    };

    fn scan_header() -> MsgHeader {
        MsgHeader {
            info1: INFO1_READ,
            info3: INFO3_PARTITION_DONE,
            record_ttl: u32::MAX,
            transaction_ttl: 1000,
            ..MsgHeader::default()
        }
    }

    fn scan_of(
        header: MsgHeader,
        fields: &[(u8, &[u8])],
        ops: &[(u8, u8, &[u8], &[u8])],
    ) -> Result<ScanRequest<'static>, ResultCode> {
        let bytes: &'static [u8] = Box::leak(body(header, fields, ops).into_boxed_slice());
        let msg = parse(bytes).unwrap();
        assert_eq!(classify(&msg), Kind::Scan);
        scan_request(&msg)
    }

    #[test]
    fn python_style_scan_of_every_partition() {
        // As the C client sends it: all 4096 pids, LE, starting 00 00 01 00.
        let pids: Vec<u8> = (0u16..4096).flat_map(u16::to_le_bytes).collect();
        assert_eq!(&pids[..6], [0, 0, 1, 0, 2, 0]);
        let scan = scan_of(
            scan_header(),
            &[
                (FIELD_NAMESPACE, b"test"),
                (FIELD_SET, b"demo"),
                (FIELD_SOCKET_TIMEOUT, &30_000u32.to_be_bytes()),
                (FIELD_TASK_ID, &77u64.to_be_bytes()),
                (FIELD_PID_ARRAY, &pids),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(scan.namespace, "test");
        assert_eq!(scan.set, Some(&b"demo"[..]));
        assert_eq!(scan.partitions, (0..4096).collect::<Vec<u16>>());
        assert!(scan.resume.is_empty() && scan.bins.is_empty() && !scan.header_only);
        assert_eq!((scan.task_id, scan.socket_timeout_ms), (77, 30_000));
        assert_eq!((scan.max_records, scan.records_per_second), (None, 0));
    }

    #[test]
    fn resume_digests_add_their_partitions() {
        let mut digest = [0xAB; 20];
        digest[0] = 0x34;
        digest[1] = 0xF2; // partition 0x234
        let pids: Vec<u8> = [5u16, 7, 5].iter().flat_map(|p| p.to_le_bytes()).collect();
        let scan = scan_of(
            MsgHeader {
                info1: INFO1_READ | INFO1_NOBINDATA,
                ..scan_header()
            },
            &[
                (FIELD_NAMESPACE, b"test"),
                (FIELD_SET, b""),
                (FIELD_PID_ARRAY, &pids),
                (FIELD_DIGEST_ARRAY, &digest),
                (FIELD_MAX_RECORDS, &100u64.to_be_bytes()),
                (FIELD_RECORDS_PER_SECOND, &50u32.to_be_bytes()),
            ],
            &[(OP_READ, 0, b"a", b""), (OP_READ, 0, b"b", b"")],
        )
        .unwrap();
        assert_eq!(scan.set, None);
        assert_eq!(scan.partitions, [5, 7, 0x234]);
        assert_eq!(scan.resume, [digest]);
        assert_eq!(scan.resume_after(0x234), Some(Digest(digest)));
        assert_eq!(scan.resume_after(5), None);
        assert!(scan.header_only);
        assert_eq!(
            scan.bins,
            [BinName::new(b"a").unwrap(), BinName::new(b"b").unwrap()]
        );
        assert_eq!((scan.max_records, scan.records_per_second), (Some(100), 50));
    }

    #[test]
    fn no_arrays_means_every_partition() {
        let scan = scan_of(scan_header(), &[(FIELD_NAMESPACE, b"test")], &[]).unwrap();
        assert_eq!(scan.partitions.len(), PARTITION_COUNT);
        assert_eq!(scan.set, None);
    }

    #[test]
    fn scan_result_codes() {
        let ns = (FIELD_NAMESPACE, &b"test"[..]);
        let pid_4096 = 4096u16.to_le_bytes();
        assert_eq!(
            scan_of(scan_header(), &[ns, (FIELD_PID_ARRAY, &pid_4096)], &[]).unwrap_err(),
            ResultCode::ParameterError
        );
        assert_eq!(
            scan_of(scan_header(), &[ns, (FIELD_PID_ARRAY, &[1, 0, 2])], &[]).unwrap_err(),
            ResultCode::ParameterError,
            "odd-length PID array"
        );
        assert_eq!(
            scan_of(scan_header(), &[ns, (FIELD_DIGEST_ARRAY, &[0; 21])], &[]).unwrap_err(),
            ResultCode::ParameterError
        );
        assert_eq!(
            scan_of(scan_header(), &[ns, (FIELD_TASK_ID, &[0; 4])], &[]).unwrap_err(),
            ResultCode::ParameterError
        );
        assert_eq!(
            scan_of(scan_header(), &[ns, (FIELD_INDEX_NAME, b"idx")], &[]).unwrap_err(),
            ResultCode::Unsupported
        );
        assert_eq!(
            scan_of(scan_header(), &[ns], &[(OP_WRITE, 1, b"a", &[0; 8])]).unwrap_err(),
            ResultCode::Unsupported
        );
        assert_eq!(
            scan_of(scan_header(), &[ns], &[(OP_READ, 0, &[b'x'; 16], b"")]).unwrap_err(),
            ResultCode::BinNameTooLong
        );
        assert_eq!(
            scan_of(scan_header(), &[ns], &[(OP_READ, 0, b"", b"")]).unwrap_err(),
            ResultCode::ParameterError
        );
        assert_eq!(
            scan_of(scan_header(), &[(FIELD_NAMESPACE, &[b'n'; 40])], &[]).unwrap_err(),
            ResultCode::NamespaceNotFound
        );
    }

    #[test]
    fn classification() {
        let digest = [1u8; 20];
        let kind = |header: MsgHeader, fields: &[(u8, &[u8])]| {
            let bytes = body(header, fields, &[]);
            classify(&parse(&bytes).unwrap())
        };
        let ns = (FIELD_NAMESPACE, &b"test"[..]);
        let batch = MsgHeader {
            info1: INFO1_BATCH,
            ..MsgHeader::default()
        };
        assert_eq!(kind(batch, &[(FIELD_BATCH_INDEX, b"")]), Kind::Batch);
        assert_eq!(kind(batch, &[ns]), Kind::Single);
        assert_eq!(
            kind(MsgHeader::default(), &[ns, (FIELD_DIGEST, &digest)]),
            Kind::Single
        );
        assert_eq!(
            kind(scan_header(), &[ns, (FIELD_DIGEST, &digest)]),
            Kind::Single
        );
        assert_eq!(kind(scan_header(), &[ns]), Kind::Scan);
        assert_eq!(kind(scan_header(), &[]), Kind::Single);
        assert_eq!(
            kind(MsgHeader::default(), &[ns, (FIELD_PID_ARRAY, &[0, 0])]),
            Kind::Scan
        );
        assert_eq!(kind(MsgHeader::default(), &[ns]), Kind::Single);
    }
}
