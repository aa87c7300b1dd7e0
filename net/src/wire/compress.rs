//! Compressed AS_MSG requests (type 4, spec §1): the body is a big-endian
//! u64 giving the inflated size, then a zlib stream that inflates to a
//! complete type-3 frame, its own 8-byte header included.
//!
//! The size in the body is only a claim. It is checked against the limit
//! before anything is inflated, and the output buffer grows with the bytes
//! the stream actually produces (doubling, capped at the claim plus one),
//! so a small frame claiming a huge size costs nothing and a stream that
//! runs past its claim is caught after one extra byte.

use flate2::{Decompress, FlushDecompress, Status};

use super::proto::{parse_header, FrameError, FrameKind, PROTO_HEADER_BYTES};

/// Bytes of the inflated-size prefix.
const SIZE_PREFIX_BYTES: usize = 8;
/// First output allocation; later ones double.
const FIRST_CHUNK_BYTES: usize = 4096;

/// Inflates a type-4 body into the inner type-3 frame (header included).
/// `max` bounds the inflated frame; the inner header must agree with the
/// inflated length.
pub fn inflate(body: &[u8], max: usize) -> Result<Vec<u8>, FrameError> {
    let malformed = |offset, what| FrameError::Malformed { offset, what };
    let (size, stream) = body
        .split_first_chunk::<SIZE_PREFIX_BYTES>()
        .ok_or(malformed(
            0,
            "compressed body is shorter than its size prefix",
        ))?;
    let claimed_bytes = u64::from_be_bytes(*size);
    let claimed = usize::try_from(claimed_bytes)
        .ok()
        .filter(|&n| n <= max)
        .ok_or(FrameError::TooLarge {
            claimed_bytes,
            max_bytes: max,
        })?;
    if claimed < PROTO_HEADER_BYTES {
        return Err(malformed(0, "inflated size cannot hold a proto header"));
    }

    // One byte past the claim is enough to tell a stream that runs over.
    let limit = claimed + 1;
    let mut out: Vec<u8> = Vec::new();
    let mut zlib = Decompress::new(true);
    loop {
        let consumed = usize::try_from(zlib.total_in()).unwrap_or(usize::MAX);
        let stream_at = SIZE_PREFIX_BYTES.saturating_add(consumed);
        let input = stream
            .get(consumed..)
            .ok_or(malformed(stream_at, "zlib consumed past the body"))?;
        if out.len() == out.capacity() {
            if out.len() >= limit {
                return Err(malformed(stream_at, "inflates past its stated size"));
            }
            let grow = out.capacity().max(FIRST_CHUNK_BYTES).min(limit - out.len());
            out.reserve_exact(grow);
        }
        let before = (zlib.total_in(), zlib.total_out());
        let status = zlib
            .decompress_vec(input, &mut out, FlushDecompress::None)
            .map_err(|_| malformed(stream_at, "zlib stream is corrupt"))?;
        if out.len() > claimed {
            return Err(malformed(stream_at, "inflates past its stated size"));
        }
        match status {
            Status::StreamEnd => break,
            Status::Ok | Status::BufError => {
                // With room left in `out`, no progress means the stream
                // needs input that is not there.
                let stalled = before == (zlib.total_in(), zlib.total_out());
                if stalled && out.len() < out.capacity() {
                    return Err(malformed(
                        SIZE_PREFIX_BYTES + stream.len(),
                        "zlib stream ends early",
                    ));
                }
            }
        }
    }
    let used = usize::try_from(zlib.total_in()).unwrap_or(usize::MAX);
    if used != stream.len() {
        return Err(malformed(
            SIZE_PREFIX_BYTES.saturating_add(used),
            "bytes after the zlib stream",
        ));
    }
    if out.len() != claimed {
        return Err(malformed(0, "inflated size differs from the stated size"));
    }
    let inner: &[u8; PROTO_HEADER_BYTES] = out
        .first_chunk()
        .ok_or(malformed(0, "inflated frame has no header"))?;
    let header = parse_header(inner, max)?;
    if header.kind != FrameKind::Msg {
        return Err(malformed(
            SIZE_PREFIX_BYTES,
            "inflated frame is not an AS_MSG (type 3)",
        ));
    }
    if header.body_len != out.len() - PROTO_HEADER_BYTES {
        return Err(malformed(
            SIZE_PREFIX_BYTES,
            "inflated frame's header size differs from its length",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::proto::{encode_header, MAX_BODY_BYTES};
    use flate2::{write::ZlibEncoder, Compression};
    use std::io::Write;

    fn zlib(bytes: &[u8]) -> Vec<u8> {
        let mut e = ZlibEncoder::new(Vec::new(), Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn compressed_body(inner: &[u8], claimed: u64) -> Vec<u8> {
        let mut body = claimed.to_be_bytes().to_vec();
        body.extend_from_slice(&zlib(inner));
        body
    }

    fn inner_frame(body_len: usize) -> Vec<u8> {
        let mut frame = encode_header(FrameKind::Msg, body_len).to_vec();
        frame.extend((0..body_len).map(|i| (i % 251) as u8));
        frame
    }

    #[test]
    fn inflates_to_the_inner_frame() {
        for body_len in [0, 22, 5000, 100_000] {
            let inner = inner_frame(body_len);
            let body = compressed_body(&inner, inner.len() as u64);
            assert_eq!(inflate(&body, MAX_BODY_BYTES).unwrap(), inner);
        }
    }

    #[test]
    fn size_claims_are_checked() {
        let inner = inner_frame(100);
        let ok = inner.len() as u64;
        for claimed in [ok - 1, ok + 1, 8] {
            let e = inflate(&compressed_body(&inner, claimed), MAX_BODY_BYTES).unwrap_err();
            assert!(matches!(e, FrameError::Malformed { .. }), "{claimed}: {e}");
        }
        // Over the limit: refused before inflating.
        let e = inflate(&compressed_body(&inner, u64::MAX), MAX_BODY_BYTES).unwrap_err();
        assert!(matches!(e, FrameError::TooLarge { .. }), "{e}");
        let e = inflate(&compressed_body(&inner, ok), 50).unwrap_err();
        assert!(matches!(e, FrameError::TooLarge { .. }), "{e}");
        assert!(inflate(&compressed_body(&inner, 7), MAX_BODY_BYTES).is_err());
        assert!(inflate(&[0, 0, 0], MAX_BODY_BYTES).is_err());
    }

    #[test]
    fn damaged_streams_are_refused() {
        let inner = inner_frame(300);
        let body = compressed_body(&inner, inner.len() as u64);
        for cut in [8, 9, 12, body.len() - 1] {
            assert!(
                inflate(&body[..cut], MAX_BODY_BYTES).is_err(),
                "cut at {cut}"
            );
        }
        let mut trailing = body.clone();
        trailing.push(0);
        assert!(inflate(&trailing, MAX_BODY_BYTES).is_err());
        let mut garbage = body.clone();
        garbage[8] ^= 0xFF;
        assert!(inflate(&garbage, MAX_BODY_BYTES).is_err());
    }

    #[test]
    fn inner_header_must_be_an_as_msg_of_the_right_size() {
        let mut inner = inner_frame(40);
        inner[1] = FrameKind::Compressed.code();
        assert!(inflate(&compressed_body(&inner, inner.len() as u64), MAX_BODY_BYTES).is_err());
        let mut inner = inner_frame(40);
        inner[7] = 39;
        assert!(inflate(&compressed_body(&inner, inner.len() as u64), MAX_BODY_BYTES).is_err());
    }

    #[test]
    fn a_small_frame_claiming_a_large_size_allocates_little() {
        // 128 MiB claimed, a few bytes delivered: refused as short, and the
        // loop only ever allocated for what the stream produced.
        let inner = inner_frame(10);
        let body = compressed_body(&inner, MAX_BODY_BYTES as u64);
        assert!(inflate(&body, MAX_BODY_BYTES).is_err());
    }
}
