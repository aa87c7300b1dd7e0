//! Admin / security protocol (type 2, spec §9): a 16-byte admin header,
//! then fields of `u32 size (1 + data length), u8 id, data`.
//!
//! ```text
//! admin header byte 0 scheme (0)   1 result (replies)   2 command (requests)
//!                   3 field count  4..=15 zero
//! ```
//!
//! Plain replies are exactly the 24 bytes of proto + admin header: the
//! clients read that much and no more, so [`write_reply`] with no fields
//! must add nothing else.

use super::proto::{begin_frame, end_frame, FrameError, FrameKind};
use super::reader::Reader;

/// Size of the admin header in bytes.
pub const ADMIN_HEADER_BYTES: usize = 16;

// Commands (spec §9).
pub const AUTHENTICATE: u8 = 0;
pub const CREATE_USER: u8 = 1;
pub const DROP_USER: u8 = 2;
pub const SET_PASSWORD: u8 = 3;
pub const CHANGE_PASSWORD: u8 = 4;
pub const GRANT_ROLES: u8 = 5;
pub const REVOKE_ROLES: u8 = 6;
pub const QUERY_USERS: u8 = 9;
pub const CREATE_ROLE: u8 = 10;
pub const DROP_ROLE: u8 = 11;
pub const GRANT_PRIVILEGES: u8 = 12;
pub const REVOKE_PRIVILEGES: u8 = 13;
pub const SET_ALLOWLIST: u8 = 14;
pub const SET_QUOTAS: u8 = 15;
pub const QUERY_ROLES: u8 = 16;
pub const LOGIN: u8 = 20;

// Field ids (spec §9).
pub const FIELD_USER: u8 = 0;
pub const FIELD_PASSWORD: u8 = 1;
pub const FIELD_OLD_PASSWORD: u8 = 2;
pub const FIELD_CREDENTIAL: u8 = 3;
pub const FIELD_CLEAR_PASSWORD: u8 = 4;
pub const FIELD_SESSION_TOKEN: u8 = 5;
pub const FIELD_SESSION_TTL: u8 = 6;
pub const FIELD_ROLES: u8 = 10;
pub const FIELD_ROLE: u8 = 11;
pub const FIELD_PRIVILEGES: u8 = 12;
pub const FIELD_ALLOWLIST: u8 = 13;
pub const FIELD_READ_QUOTA: u8 = 14;
pub const FIELD_WRITE_QUOTA: u8 = 15;
pub const FIELD_READ_INFO: u8 = 16;
pub const FIELD_WRITE_INFO: u8 = 17;
pub const FIELD_CONNECTIONS: u8 = 18;

/// A parsed admin request; field data borrows from the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminRequest<'a> {
    pub command: u8,
    /// `(field id, data)` in the order received.
    pub fields: Vec<(u8, &'a [u8])>,
}

impl<'a> AdminRequest<'a> {
    /// The data of the first field with this id.
    pub fn field(&self, id: u8) -> Option<&'a [u8]> {
        self.fields.iter().find(|(f, _)| *f == id).map(|(_, d)| *d)
    }
}

/// Parses a type-2 body (after the proto header). Every field must lie
/// within the body and the body must end with the last field.
pub fn parse(body: &[u8]) -> Result<AdminRequest<'_>, FrameError> {
    let mut r = Reader::new(body);
    let header = r.take(ADMIN_HEADER_BYTES, "admin header")?;
    let command = header[2];
    let n_fields = header[3];
    let mut fields = Vec::with_capacity(usize::from(n_fields));
    for _ in 0..n_fields {
        let at = r.offset();
        let size = r.u32("admin field size")? as usize;
        if size == 0 {
            return Err(FrameError::Malformed {
                offset: at,
                what: "admin field size 0 leaves no room for its id",
            });
        }
        let id = r.u8("admin field id")?;
        let data = r.take(size - 1, "admin field data")?;
        fields.push((id, data));
    }
    if r.remaining() != 0 {
        return Err(FrameError::Malformed {
            offset: r.offset(),
            what: "bytes after the last admin field",
        });
    }
    Ok(AdminRequest { command, fields })
}

/// Appends one admin record (16-byte header plus fields) without a proto
/// header: the unit of a QUERY_USERS / QUERY_ROLES reply stream, several of
/// which may share a frame.
pub fn push_record(out: &mut Vec<u8>, result: u8, fields: &[(u8, &[u8])]) {
    let n_fields = u8::try_from(fields.len()).expect("at most 255 admin fields");
    let mut header = [0u8; ADMIN_HEADER_BYTES];
    header[1] = result;
    header[3] = n_fields;
    out.extend_from_slice(&header);
    for (id, data) in fields {
        let size = u32::try_from(data.len() + 1).expect("admin field under 4 GiB");
        out.extend_from_slice(&size.to_be_bytes());
        out.push(*id);
        out.extend_from_slice(data);
    }
}

/// Appends a whole type-2 reply frame: proto header, admin header with
/// `result` and the field count, then the fields.
pub fn write_reply(out: &mut Vec<u8>, result: u8, fields: &[(u8, &[u8])]) {
    let start = begin_frame(out, FrameKind::Admin);
    push_record(out, result, fields);
    end_frame(out, start);
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN_HASH: &[u8] = b"$2a$10$7EqJtq98hPqEX7fNZaFWoO1mVO/4MLpGzsqojz6E9Gef6iXDjXdDa";

    /// §11: LOGIN admin/admin as the Python and Rust clients send it.
    fn login_frame() -> Vec<u8> {
        let mut frame = vec![0x02, 0x02, 0, 0, 0, 0, 0, 0x5b, 0, 0, 0x14, 0x02];
        frame.extend_from_slice(&[0; 12]);
        frame.extend_from_slice(&[0, 0, 0, 6, 0]);
        frame.extend_from_slice(b"admin");
        frame.extend_from_slice(&[0, 0, 0, 0x3d, 3]);
        frame.extend_from_slice(ADMIN_HASH);
        frame
    }

    #[test]
    fn spec_login_parses() {
        let frame = login_frame();
        assert_eq!(frame.len(), 8 + 0x5b);
        let request = parse(&frame[8..]).unwrap();
        assert_eq!(request.command, LOGIN);
        assert_eq!(
            request.fields,
            [(FIELD_USER, &b"admin"[..]), (FIELD_CREDENTIAL, ADMIN_HASH)]
        );
        assert_eq!(request.field(FIELD_CREDENTIAL), Some(ADMIN_HASH));
        assert_eq!(request.field(FIELD_PASSWORD), None);
    }

    #[test]
    fn spec_security_not_enabled_reply() {
        let mut out = Vec::new();
        write_reply(&mut out, 52, &[]);
        let mut expected = vec![0x02, 0x02, 0, 0, 0, 0, 0, 0x10, 0, 0x34, 0, 0];
        expected.extend_from_slice(&[0; 12]);
        assert_eq!(out, expected);
    }

    #[test]
    fn spec_login_success_reply() {
        let mut out = Vec::new();
        write_reply(
            &mut out,
            0,
            &[
                (FIELD_SESSION_TOKEN, b"TOKEN"),
                (FIELD_SESSION_TTL, &86400u32.to_be_bytes()),
            ],
        );
        let mut expected = vec![0x02, 0x02, 0, 0, 0, 0, 0, 0x23, 0, 0, 0, 2];
        expected.extend_from_slice(&[0; 12]);
        expected.extend_from_slice(&[0, 0, 0, 6, 5, b'T', b'O', b'K', b'E', b'N']);
        expected.extend_from_slice(&[0, 0, 0, 5, 6, 0, 1, 0x51, 0x80]);
        assert_eq!(out, expected);
    }

    #[test]
    fn damaged_bodies_are_refused_with_their_offset() {
        let frame = login_frame();
        let body = &frame[8..];
        assert!(parse(&body[..15]).is_err());
        let e = parse(&body[..body.len() - 1]).unwrap_err();
        assert_eq!(
            e,
            FrameError::Malformed {
                offset: 31,
                what: "admin field data"
            }
        );
        let mut zero = body.to_vec();
        zero[16..20].fill(0);
        assert!(matches!(
            parse(&zero),
            Err(FrameError::Malformed { offset: 16, .. })
        ));
        let mut huge = body.to_vec();
        huge[16..20].fill(0xFF);
        assert!(parse(&huge).is_err());
        let mut trailing = body.to_vec();
        trailing.push(0);
        assert!(parse(&trailing).is_err());
    }
}
