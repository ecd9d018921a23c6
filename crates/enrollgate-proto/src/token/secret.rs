//! Enrollment tokens that a copy of the store does not give away.
//!
//! The store never holds a token: it indexes the SHA-256 of each one ([`token_sha256`]) and
//! keeps neither the token nor its JWT in the enrollment record. So that an admin can still
//! download a pending JWT again, the token is not random but derived from the enrollment id
//! with a secret kept beside the keys ([`TokenKey`]): `token = base64url(HMAC-SHA256(key,
//! "enrollgate-token-v1:" || enrollment id))`. Whoever holds a copy of the store without
//! that file learns only hashes of 256-bit values; whoever holds both can mint tokens for
//! the pending enrollments, as whoever holds the CA key can mint certificates: the key file
//! is guarded like the CA key (mode 0600, or a systemd credential).
//!
//! This module is the derivation and the hash, over bytes; reading and creating the key
//! file is the daemon's (`token::secret` there).

use aws_lc_rs::{digest, hmac};
use base64::Engine as _;

/// Bytes of the token key (HMAC-SHA256 keys gain nothing beyond the hash's block size,
/// and 256 bits match the random tokens this replaces).
pub const KEY_BYTES: usize = 32;

/// Domain separation: the key signs nothing else, but a future use of it would not collide.
const CONTEXT: &[u8] = b"enrollgate-token-v1:";
/// What the session key is derived for (never a prefix of a token's input: those start
/// with [`CONTEXT`]).
const SESSION_CONTEXT: &[u8] = b"enrollgate-session-key-v1";

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The secret tokens are derived from (`pki.token_key`).
pub struct TokenKey {
    key: hmac::Key,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(...)")
    }
}

/// Lower-case hex SHA-256 of a token: the only form of it the store keeps.
pub fn token_sha256(token: &str) -> String {
    hex::encode(digest::digest(&digest::SHA256, token.as_bytes()))
}

impl TokenKey {
    /// A key from its bytes.
    pub fn from_bytes(bytes: &[u8; KEY_BYTES]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        }
    }

    /// A new random key and the text of its file.
    pub fn generate() -> Result<(Self, String), crate::ids::RandomError> {
        let mut bytes = [0u8; KEY_BYTES];
        crate::ids::fill_random(&mut bytes)?;
        let text = format!("{}\n", B64.encode(bytes));
        Ok((Self::from_bytes(&bytes), text))
    }

    /// The token of the enrollment `enrollment_id` (43 URL-safe characters, like the
    /// random tokens of earlier versions).
    pub fn derive(&self, enrollment_id: &str) -> String {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(CONTEXT);
        ctx.update(enrollment_id.as_bytes());
        B64.encode(ctx.sign().as_ref())
    }

    /// The key that signs API sessions (`session`): derived from this key, so every
    /// node with a copy of the data directory checks the others' sessions.
    pub fn session_key(&self) -> hmac::Key {
        let derived = hmac::sign(&self.key, SESSION_CONTEXT);
        hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())
    }

    /// The key in the text of its file (one line: base64url of [`KEY_BYTES`] bytes), or
    /// why not (never the key's bytes).
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        let bytes = B64
            .decode(text.trim())
            .map_err(|_| "not one line of URL-safe base64")?;
        let bytes: [u8; KEY_BYTES] = bytes
            .try_into()
            .map_err(|_| "not a 32-byte key (make one with `head -c 32 /dev/urandom | basenc --base64url | tr -d =`)")?;
        Ok(Self::from_bytes(&bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_derived_per_enrollment_and_per_key() {
        let a = TokenKey::from_bytes(&[1; KEY_BYTES]);
        let b = TokenKey::from_bytes(&[2; KEY_BYTES]);
        let t = a.derive("e1");
        assert_eq!(t, a.derive("e1"), "the same token on every download");
        assert_eq!(t.len(), 43);
        assert!(crate::ids::is_well_formed(&t));
        assert_ne!(t, a.derive("e2"));
        assert_ne!(t, b.derive("e1"));
        assert_eq!(token_sha256(&t).len(), 64);
        assert_ne!(token_sha256(&t), token_sha256(&a.derive("e2")));
    }
}
