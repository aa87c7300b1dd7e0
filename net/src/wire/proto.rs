//! The 8-byte proto header that starts every frame in both directions
//! (spec §1): version (2), type, and a 48-bit big-endian body size.
//!
//! ```text
//! byte 0    1     2 ..= 7
//!      ver  type  body size (bytes after this header), big-endian
//! ```
//!
//! Replies are built in place: [`begin_frame`] pushes a placeholder header,
//! the caller appends the body, and [`end_frame`] patches the size in, so a
//! body is never copied to learn its length.

use std::fmt;

use super::reader::Short;

/// The only protocol version either side speaks.
pub const PROTO_VERSION: u8 = 2;
/// Size of the proto header in bytes.
pub const PROTO_HEADER_BYTES: usize = 8;
/// Largest body a frame may carry: the server's and the C client's
/// `PROTO_SIZE_MAX` (spec §1).
pub const MAX_BODY_BYTES: usize = 128 << 20;
/// Largest value the 48-bit size field can hold.
pub const MAX_SIZE_FIELD: u64 = (1 << 48) - 1;

const _: () = assert!(MAX_BODY_BYTES as u64 <= MAX_SIZE_FIELD);

/// The frame types a client may send (type 5, XDR, is server to server).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    Info = 1,
    Admin = 2,
    Msg = 3,
    Compressed = 4,
}

impl FrameKind {
    pub fn from_wire(kind: u8) -> Option<FrameKind> {
        match kind {
            1 => Some(FrameKind::Info),
            2 => Some(FrameKind::Admin),
            3 => Some(FrameKind::Msg),
            4 => Some(FrameKind::Compressed),
            _ => None,
        }
    }

    pub fn code(self) -> u8 {
        self as u8
    }
}

/// A parsed proto header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: FrameKind,
    /// Bytes of body that follow the header.
    pub body_len: usize,
}

/// Why bytes are not a frame the server can read. After any of these the
/// stream can no longer be trusted to be in step, so the caller closes the
/// connection.
///
/// Offsets count from the start of what the failing function was given:
/// the 8 header bytes for [`parse_header`], the body for the others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Header byte 0 is not [`PROTO_VERSION`].
    BadVersion { version: u8 },
    /// Header byte 1 is not a type a client sends.
    UnknownKind { kind: u8 },
    /// A size (the header's, or a compressed body's inflated size) is over
    /// the limit.
    TooLarge {
        claimed_bytes: u64,
        max_bytes: usize,
    },
    /// The bytes break the frame's layout at `offset`.
    Malformed { offset: usize, what: &'static str },
    /// Text that must be UTF-8 is not, from `offset` on.
    InvalidUtf8 { offset: usize },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::BadVersion { version } => {
                write!(
                    f,
                    "byte 0: proto version {version}, expected {PROTO_VERSION}"
                )
            }
            FrameError::UnknownKind { kind } => write!(f, "byte 1: unknown frame type {kind}"),
            FrameError::TooLarge {
                claimed_bytes,
                max_bytes,
            } => write!(
                f,
                "size of {claimed_bytes} bytes is over the limit of {max_bytes} bytes"
            ),
            FrameError::Malformed { offset, what } => write!(f, "byte {offset}: {what}"),
            FrameError::InvalidUtf8 { offset } => write!(f, "byte {offset}: text is not UTF-8"),
        }
    }
}

impl std::error::Error for FrameError {}

impl From<Short> for FrameError {
    fn from(short: Short) -> FrameError {
        FrameError::Malformed {
            offset: short.offset,
            what: short.what,
        }
    }
}

/// Parses a proto header. A body over `max_body` bytes is refused before
/// anything is allocated for it.
pub fn parse_header(bytes: &[u8; 8], max_body: usize) -> Result<Header, FrameError> {
    let word = u64::from_be_bytes(*bytes);
    let version = bytes[0];
    if version != PROTO_VERSION {
        return Err(FrameError::BadVersion { version });
    }
    let kind = FrameKind::from_wire(bytes[1]).ok_or(FrameError::UnknownKind { kind: bytes[1] })?;
    let claimed_bytes = word & MAX_SIZE_FIELD;
    let body_len = usize::try_from(claimed_bytes)
        .ok()
        .filter(|&n| n <= max_body)
        .ok_or(FrameError::TooLarge {
            claimed_bytes,
            max_bytes: max_body,
        })?;
    Ok(Header { kind, body_len })
}

/// The header of a frame of `kind` with a `body_len`-byte body.
pub fn encode_header(kind: FrameKind, body_len: usize) -> [u8; 8] {
    let size = body_len as u64;
    assert!(size <= MAX_SIZE_FIELD, "a frame body of {body_len} bytes");
    let word = (u64::from(PROTO_VERSION) << 56) | (u64::from(kind.code()) << 48) | size;
    word.to_be_bytes()
}

/// Appends a header of `kind` with a zero size; returns its offset in
/// `out`, to hand to [`end_frame`] once the body is written.
pub fn begin_frame(out: &mut Vec<u8>, kind: FrameKind) -> usize {
    let start = out.len();
    out.extend_from_slice(&encode_header(kind, 0));
    start
}

/// Patches the size of the frame begun at `start` to cover everything
/// appended since. Takes a slice (a `&mut Vec<u8>` coerces to it): the
/// frame is complete, nothing more is appended.
pub fn end_frame(out: &mut [u8], start: usize) {
    let body_start = start + PROTO_HEADER_BYTES;
    assert!(
        body_start <= out.len(),
        "end_frame at {start} without a begun frame"
    );
    let body_len = (out.len() - body_start) as u64;
    assert!(
        body_len <= MAX_SIZE_FIELD,
        "a frame body of {body_len} bytes"
    );
    let mut word = u64::from_be_bytes(out[start..body_start].try_into().expect("8 bytes"));
    word = (word & !MAX_SIZE_FIELD) | body_len;
    out[start..body_start].copy_from_slice(&word.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_request_header_from_the_spec() {
        // §11: info request `node`.
        let frame = [
            0x02, 0x01, 0, 0, 0, 0, 0, 0x05, b'n', b'o', b'd', b'e', b'\n',
        ];
        let header = parse_header(frame[..8].try_into().unwrap(), MAX_BODY_BYTES).unwrap();
        assert_eq!(
            header,
            Header {
                kind: FrameKind::Info,
                body_len: 5
            }
        );
    }

    #[test]
    fn bad_headers_are_refused() {
        let e = parse_header(&[3, 1, 0, 0, 0, 0, 0, 0], MAX_BODY_BYTES).unwrap_err();
        assert_eq!(e, FrameError::BadVersion { version: 3 });
        assert!(e.to_string().contains("byte 0"), "{e}");
        for kind in [0u8, 5, 6, 255] {
            assert_eq!(
                parse_header(&[2, kind, 0, 0, 0, 0, 0, 0], MAX_BODY_BYTES),
                Err(FrameError::UnknownKind { kind })
            );
        }
        let mut big = encode_header(FrameKind::Msg, MAX_BODY_BYTES + 1);
        assert_eq!(
            parse_header(&big, MAX_BODY_BYTES),
            Err(FrameError::TooLarge {
                claimed_bytes: MAX_BODY_BYTES as u64 + 1,
                max_bytes: MAX_BODY_BYTES
            })
        );
        big[2..].fill(0xFF);
        assert!(matches!(
            parse_header(&big, MAX_BODY_BYTES),
            Err(FrameError::TooLarge { .. })
        ));
        let exact = encode_header(FrameKind::Msg, MAX_BODY_BYTES);
        assert_eq!(
            parse_header(&exact, MAX_BODY_BYTES).unwrap().body_len,
            MAX_BODY_BYTES
        );
    }

    #[test]
    fn frames_are_patched_in_place() {
        let mut out = vec![0xAA];
        let start = begin_frame(&mut out, FrameKind::Admin);
        out.extend_from_slice(&[1, 2, 3]);
        end_frame(&mut out, start);
        assert_eq!(out, [0xAA, 2, 2, 0, 0, 0, 0, 0, 3, 1, 2, 3]);
        let second = begin_frame(&mut out, FrameKind::Msg);
        end_frame(&mut out, second);
        assert_eq!(&out[12..], [2, 3, 0, 0, 0, 0, 0, 0]);
    }
}
