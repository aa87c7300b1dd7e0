//! Session tokens: what LOGIN hands out and AUTHENTICATE takes back.
//!
//! ```text
//! byte 0      version (1)
//!      1..9   expiry, Unix seconds (u64 BE)
//!      9..17  password generation of the user (u64 BE)
//!     17..33  random nonce
//!     33..65  HMAC-SHA256(node secret, "osprey session v1" | user | bytes 0..33)
//! ```
//!
//! The node secret is 32 random bytes drawn at start and never stored, so a
//! restart invalidates every token (clients log in again by themselves). A
//! token is bound to its user (in the MAC) and to the user's password
//! generation: a password change or a drop (and re-create, which takes a new
//! generation) makes the old tokens fail.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

pub const TOKEN_BYTES: usize = 65;
const VERSION: u8 = 1;
const SIGNED_BYTES: usize = 33;

/// Why a token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenError {
    /// Wrong length, version or MAC: not a token this node issued for this
    /// user (result 65).
    Forged,
    /// Past its expiry (result 66).
    Expired,
}

/// A token's checked contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claims {
    pub expiry_unix_s: u64,
    pub generation: u64,
}

fn mac(secret: &[u8; 32], user: &str, signed: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(secret).expect("any key length");
    mac.update(b"osprey session v1\0");
    mac.update(&(user.len() as u64).to_be_bytes());
    mac.update(user.as_bytes());
    mac.update(signed);
    mac.finalize().into_bytes().into()
}

/// Issues a token for `user` valid until `expiry_unix_s`.
pub fn issue(
    secret: &[u8; 32],
    user: &str,
    expiry_unix_s: u64,
    generation: u64,
    nonce: [u8; 16],
) -> Vec<u8> {
    let mut token = Vec::with_capacity(TOKEN_BYTES);
    token.push(VERSION);
    token.extend_from_slice(&expiry_unix_s.to_be_bytes());
    token.extend_from_slice(&generation.to_be_bytes());
    token.extend_from_slice(&nonce);
    debug_assert_eq!(token.len(), SIGNED_BYTES);
    let tag = mac(secret, user, &token);
    token.extend_from_slice(&tag);
    assert_eq!(token.len(), TOKEN_BYTES);
    token
}

/// Checks a token for `user` at `now_unix_s`. The MAC is checked before the
/// expiry, so a forged token never learns whether its time would be valid.
pub fn check(
    secret: &[u8; 32],
    user: &str,
    token: &[u8],
    now_unix_s: u64,
) -> Result<Claims, TokenError> {
    if token.len() != TOKEN_BYTES || token[0] != VERSION {
        return Err(TokenError::Forged);
    }
    let (signed, tag) = token.split_at(SIGNED_BYTES);
    if !bool::from(mac(secret, user, signed).ct_eq(tag)) {
        return Err(TokenError::Forged);
    }
    let word = |at: usize| u64::from_be_bytes(token[at..at + 8].try_into().expect("8 bytes"));
    let claims = Claims {
        expiry_unix_s: word(1),
        generation: word(9),
    };
    if now_unix_s >= claims.expiry_unix_s {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: [u8; 32] = [42; 32];

    #[test]
    fn a_token_checks_for_its_user_until_it_expires() {
        let t = issue(&SECRET, "alice", 1000, 7, [1; 16]);
        assert_eq!(t.len(), TOKEN_BYTES);
        assert_eq!(
            check(&SECRET, "alice", &t, 999),
            Ok(Claims {
                expiry_unix_s: 1000,
                generation: 7
            })
        );
        assert_eq!(check(&SECRET, "alice", &t, 1000), Err(TokenError::Expired));
        assert_eq!(check(&SECRET, "bob", &t, 999), Err(TokenError::Forged));
    }

    #[test]
    fn forged_tokens_are_refused() {
        let t = issue(&SECRET, "alice", 1000, 7, [1; 16]);
        // Another node's (or a restarted node's) secret.
        assert_eq!(check(&[43; 32], "alice", &t, 1), Err(TokenError::Forged));
        // Every single-bit change, including pushing the expiry later.
        for byte in 0..t.len() {
            let mut bad = t.clone();
            bad[byte] ^= 0x01;
            assert_eq!(
                check(&SECRET, "alice", &bad, 1),
                Err(TokenError::Forged),
                "byte {byte}"
            );
        }
        assert_eq!(
            check(&SECRET, "alice", &t[..64], 1),
            Err(TokenError::Forged)
        );
        assert_eq!(
            check(&SECRET, "alice", b"TOKEN", 1),
            Err(TokenError::Forged)
        );
        // An expired forgery is reported as forged, not expired.
        let mut late = t.clone();
        late[8] ^= 0x80;
        assert_eq!(
            check(&SECRET, "alice", &late, 5000),
            Err(TokenError::Forged)
        );
    }

    #[test]
    fn nonces_make_tokens_distinct() {
        let a = issue(&SECRET, "alice", 1000, 7, [1; 16]);
        let b = issue(&SECRET, "alice", 1000, 7, [2; 16]);
        assert_ne!(a, b);
        assert!(check(&SECRET, "alice", &b, 1).is_ok());
    }
}
