//! Password hashes (spec §9.1).
//!
//! Clients never send a password: they send the *client hash*, bcrypt of
//! the password with the fixed salt `$2a$10$7EqJtq98hPqEX7fNZaFWoO`, a
//! 60-character string that is the same on every Aerospike deployment. The
//! client hash is therefore a password equivalent and the fixed salt makes
//! one precomputed table work against every server, so the store keeps only
//! the *server hash*: bcrypt of the client hash with a random salt.
//!
//! Verifying a server hash costs one bcrypt (~50-100 ms at cost 10, on the
//! reactor thread). [`VerifiedCache`] remembers, per user, a keyed MAC of
//! the client hash that last verified, so later logins of that user cost a
//! MAC instead (the node secret keys it, so a memory dump gives no table to
//! precompute against; the MAC never reaches the disk).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// bcrypt cost of the fixed-salt client hash.
pub const CLIENT_HASH_COST: u32 = 10;
/// The fixed salt every client uses.
pub const CLIENT_SALT_TEXT: &str = "$2a$10$7EqJtq98hPqEX7fNZaFWoO";
/// Lowest server-side bcrypt cost accepted.
pub const MIN_SERVER_COST: u32 = 10;
/// Length of a client hash.
pub const CLIENT_HASH_BYTES: usize = 60;
/// Clients refuse passwords this long or longer before hashing.
pub const MAX_PASSWORD_BYTES: usize = 63;

/// The raw 16 salt bytes of [`CLIENT_SALT_TEXT`]: parse a whole hash that
/// carries it (the §11 vector of the empty password) and take its salt.
fn client_salt() -> [u8; 16] {
    let vector = "$2a$10$7EqJtq98hPqEX7fNZaFWoOLCkFexA7A9eoJ0Ew.mTDdk.E60D.9zS";
    vector
        .parse::<bcrypt::HashParts>()
        .expect("the spec vector is a bcrypt hash")
        .get_salt_raw()
}

/// What a client sends for `password`: the fixed-salt bcrypt (`$2a$`).
pub fn client_hash(password: &str) -> String {
    bcrypt::hash_with_salt(password, CLIENT_HASH_COST, client_salt())
        .expect("cost 10 is valid")
        .format_for_version(bcrypt::Version::TwoA)
}

/// Whether `credential` has the shape of a client hash (60 printable bytes
/// starting `$2`). Anything else is refused before hashing.
pub fn is_client_hash(credential: &[u8]) -> bool {
    credential.len() == CLIENT_HASH_BYTES
        && credential.starts_with(b"$2")
        && credential.iter().all(|b| b.is_ascii_graphic())
}

/// The server hash of a client hash: bcrypt with a random salt.
pub fn server_hash(credential: &[u8], cost: u32) -> Result<String, String> {
    assert!(cost >= MIN_SERVER_COST);
    bcrypt::hash(credential, cost).map_err(|e| format!("bcrypt: {e}"))
}

/// Whether `credential` is the client hash `server_hash` was made from.
pub fn verify(credential: &[u8], server_hash: &str) -> bool {
    bcrypt::verify(credential, server_hash).unwrap_or(false)
}

type HmacSha256 = Hmac<Sha256>;

/// Per user: the password generation and a MAC of the client hash that was
/// last verified (or set) for it.
pub struct VerifiedCache {
    key: [u8; 32],
    entries: std::collections::HashMap<String, (u64, [u8; 32])>,
}

impl VerifiedCache {
    pub fn new(key: [u8; 32]) -> VerifiedCache {
        VerifiedCache {
            key,
            entries: std::collections::HashMap::new(),
        }
    }

    fn mac(&self, credential: &[u8]) -> [u8; 32] {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("any key length");
        mac.update(b"osprey verified credential v1\0");
        mac.update(credential);
        mac.finalize().into_bytes().into()
    }

    /// `Some(matches)` when this user's generation has a verified value;
    /// `None` when a bcrypt verify is needed. Only one client hash is right
    /// for a password, so a mismatch is a wrong password.
    pub fn check(&self, user: &str, generation: u64, credential: &[u8]) -> Option<bool> {
        let (g, mac) = self.entries.get(user)?;
        if *g != generation {
            return None;
        }
        Some(bool::from(self.mac(credential).ct_eq(mac)))
    }

    pub fn remember(&mut self, user: &str, generation: u64, credential: &[u8]) {
        let mac = self.mac(credential);
        self.entries.insert(user.to_string(), (generation, mac));
    }

    pub fn forget(&mut self, user: &str) {
        self.entries.remove(user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_hashes_match_the_spec_vectors() {
        // Spec §11 (aerospike-core's test and Python bcrypt agree).
        assert_eq!(
            client_hash("password"),
            "$2a$10$7EqJtq98hPqEX7fNZaFWoOqUH6KN8IKy3Yk5Kz..RHGKNAUCoP/LG"
        );
        assert_eq!(
            client_hash("admin"),
            "$2a$10$7EqJtq98hPqEX7fNZaFWoO1mVO/4MLpGzsqojz6E9Gef6iXDjXdDa"
        );
        assert!(client_hash("").starts_with(CLIENT_SALT_TEXT));
        assert!(is_client_hash(client_hash("x").as_bytes()));
        assert!(!is_client_hash(b"admin"));
    }

    #[test]
    fn server_hashes_are_salted_and_verify() {
        let credential = client_hash("secret");
        let a = server_hash(credential.as_bytes(), 10).unwrap();
        let b = server_hash(credential.as_bytes(), 10).unwrap();
        assert_ne!(a, b, "random salts");
        assert!(
            !a.contains(&credential[29..]),
            "the client hash is not stored"
        );
        assert!(verify(credential.as_bytes(), &a));
        assert!(!verify(client_hash("other").as_bytes(), &a));
        assert!(!verify(credential.as_bytes(), "not a hash"));
    }

    #[test]
    fn verified_cache_is_per_generation() {
        let mut cache = VerifiedCache::new([7; 32]);
        assert_eq!(cache.check("u", 1, b"x"), None);
        cache.remember("u", 1, b"x");
        assert_eq!(cache.check("u", 1, b"x"), Some(true));
        assert_eq!(cache.check("u", 1, b"y"), Some(false));
        assert_eq!(cache.check("u", 2, b"x"), None);
        cache.forget("u");
        assert_eq!(cache.check("u", 1, b"x"), None);
    }
}
