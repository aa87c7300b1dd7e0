//! Record digests and user keys.
//!
//! A record is identified by the RIPEMD-160 of `set || key particle type ||
//! key bytes` (spec §3). The namespace is not hashed. Clients compute the
//! digest themselves and send it; the server computes it only to check a sent
//! key or to build test data.

use ripemd::{Digest as _, Ripemd160};
use std::fmt;

use crate::partition::PartitionId;

/// Length of a digest in bytes.
pub const DIGEST_LEN: usize = 20;

/// Particle type of an integer key (8-byte big-endian two's complement).
pub const KEY_TYPE_INTEGER: u8 = 1;
/// Particle type of a string key (UTF-8).
pub const KEY_TYPE_STRING: u8 = 3;
/// Particle type of a blob key (raw bytes).
pub const KEY_TYPE_BLOB: u8 = 4;

/// A 20-byte record digest. Ordered as bytes (memcmp order), which is the
/// order of partition scans and of the index trees.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Digest(pub [u8; DIGEST_LEN]);

/// A user key as the clients send it: the three key types the clients allow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserKey {
    Integer(i64),
    String(String),
    Blob(Vec<u8>),
}

impl UserKey {
    /// The key's particle type byte, as hashed and as sent in field 2.
    pub fn particle_type(&self) -> u8 {
        match self {
            UserKey::Integer(_) => KEY_TYPE_INTEGER,
            UserKey::String(_) => KEY_TYPE_STRING,
            UserKey::Blob(_) => KEY_TYPE_BLOB,
        }
    }

    /// Calls `f` with the key's value bytes as hashed (integers big-endian).
    fn with_value_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        match self {
            UserKey::Integer(v) => f(&v.to_be_bytes()),
            UserKey::String(s) => f(s.as_bytes()),
            UserKey::Blob(b) => f(b),
        }
    }
}

impl Digest {
    /// Computes the digest of `key` in `set` (empty set name = no set).
    pub fn compute(set: &str, key: &UserKey) -> Digest {
        key.with_value_bytes(|value| {
            Digest::compute_raw(set.as_bytes(), key.particle_type(), value)
        })
    }

    /// Computes the digest from raw parts, as a key field on the wire holds
    /// them (`particle type`, `value bytes`).
    pub fn compute_raw(set: &[u8], particle_type: u8, value: &[u8]) -> Digest {
        let mut hasher = Ripemd160::new();
        hasher.update(set);
        hasher.update([particle_type]);
        hasher.update(value);
        Digest(hasher.finalize().into())
    }

    /// The partition this digest belongs to: the first two bytes read
    /// little-endian, masked to 12 bits (spec §3).
    #[inline]
    pub fn partition(&self) -> PartitionId {
        PartitionId::from_digest(self)
    }

    /// The 20 bits that follow the partition bits in memcmp order: the high
    /// nibble of byte 1, then bytes 2 and 3. Within one partition, digests
    /// ordered by these bits are ordered by the whole digest's leading bits,
    /// which is why sprigs are chosen from them (an in-order walk of sprigs
    /// 0..n is an in-order walk of the partition).
    #[inline]
    pub fn sprig_bits(&self) -> u32 {
        let d = &self.0;
        (u32::from(d[1] >> 4) << 16) | (u32::from(d[2]) << 8) | u32::from(d[3])
    }

    /// Parses 40 hex digits.
    pub fn from_hex(hex: &str) -> Option<Digest> {
        let bytes = hex.as_bytes();
        if bytes.len() != DIGEST_LEN * 2 {
            return None;
        }
        let mut out = [0u8; DIGEST_LEN];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Some(Digest(out))
    }

    pub fn as_bytes(&self) -> &[u8; DIGEST_LEN] {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(set: &str, key: UserKey) -> String {
        Digest::compute(set, &key).to_string()
    }

    // The spec's test vectors (§11), taken from the Rust client's own tests
    // and checked against traffic captured from the Python and Rust clients.
    #[test]
    fn integer_keys_match_the_clients() {
        assert_eq!(
            hex("set", UserKey::Integer(0)),
            "93d943aae37b017ad7e011b0c1d2e2143c2fb37d"
        );
        assert_eq!(
            hex("set", UserKey::Integer(-1)),
            "22116d253745e29fc63fdf760b6e26f7e197e01d"
        );
        assert_eq!(
            hex("set", UserKey::Integer(1)),
            "82d7213b469812947c109a6d341e3b5b1dedec1f"
        );
        assert_eq!(
            hex("set", UserKey::Integer(i64::MIN)),
            "7185c2a47fb02c996daed26b4e01b83240aee9d4"
        );
        assert_eq!(
            hex("set", UserKey::Integer(i64::MAX)),
            "1698328974afa62c8e069860c1516f780d63dbb8"
        );
    }

    #[test]
    fn string_keys_match_the_clients() {
        assert_eq!(
            hex("set", UserKey::String(String::new())),
            "2819b1ff6e346a43b4f5f6b77a88bc3eaac22a83"
        );
        assert_eq!(
            hex("set", UserKey::String("haha".into())),
            "36eb02a807dbade8cd784e7800d76308b4e89212"
        );
        assert_eq!(
            hex("set", UserKey::String("a".repeat(10))),
            "5979fb32a80da070ff356f7695455592272e36c2"
        );
        assert_eq!(
            hex("demo", UserKey::String("key1".into())),
            "ec91192d4b7f8ce35d5d78d34bca65cbaaaac960"
        );
        assert_eq!(
            hex("", UserKey::String("key1".into())),
            "579f05ecf9e6a9e796f4da2ab0b1323364df5c10"
        );
    }

    #[test]
    fn blob_keys_match_the_clients() {
        assert_eq!(
            hex("set", UserKey::Blob(vec![])),
            "327e2877b8815c7aeede0d5a8620d4ef8df4a4b4"
        );
        assert_eq!(
            hex("set", UserKey::Blob(vec![b'a'; 10])),
            "d10982327b2b04c7360579f252e164a75f83cd99"
        );
    }

    #[test]
    fn partition_ids_match_the_clients() {
        assert_eq!(
            Digest::compute("set", &UserKey::Integer(1))
                .partition()
                .get(),
            1922
        );
        assert_eq!(
            Digest::compute("set", &UserKey::String("haha".into()))
                .partition()
                .get(),
            2870
        );
        assert_eq!(
            Digest::compute("demo", &UserKey::String("key1".into()))
                .partition()
                .get(),
            492
        );
        assert_eq!(
            Digest::compute("", &UserKey::String("key1".into()))
                .partition()
                .get(),
            3927
        );
    }

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        let d = Digest::compute("demo", &UserKey::String("key1".into()));
        assert_eq!(Digest::from_hex(&d.to_string()), Some(d));
        assert_eq!(Digest::from_hex("zz"), None);
        assert_eq!(Digest::from_hex(&"g".repeat(40)), None);
    }

    #[test]
    fn sprig_bits_follow_memcmp_order_within_a_partition() {
        let mut a = Digest([0u8; 20]);
        let mut b = a;
        a.0[1] = 0x1f; // same partition bits (low nibble f), high nibble 1
        b.0[1] = 0x2f;
        assert_eq!(a.partition(), b.partition());
        assert!(a < b);
        assert!(a.sprig_bits() < b.sprig_bits());
    }
}
