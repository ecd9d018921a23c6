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

use std::path::Path;

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

/// Why the token key could not be read or made. Never carries key bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenKeyError {
    /// The file could not be read, created or written.
    #[error("token key {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file does not hold a key.
    #[error("token key {path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The system random generator failed.
    #[error(transparent)]
    Random(#[from] crate::ids::RandomError),
}

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
    pub fn generate() -> Result<(Self, String), TokenKeyError> {
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

    /// The key that signs API sessions (`api::session`): derived from this key, so every
    /// node with a copy of the data directory checks the others' sessions.
    pub fn session_key(&self) -> hmac::Key {
        let derived = hmac::sign(&self.key, SESSION_CONTEXT);
        hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())
    }

    /// Reads the key file (one line: base64url of [`KEY_BYTES`] bytes), which only its
    /// owner may read.
    pub fn load(path: &Path) -> Result<Self, TokenKeyError> {
        use std::os::unix::fs::PermissionsExt as _;
        let io = |source| TokenKeyError::Io {
            path: path.display().to_string(),
            source,
        };
        let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(TokenKeyError::Invalid {
                path: path.display().to_string(),
                reason: format!(
                    "mode {mode:04o}; it must not be readable by group or others (chmod 600)"
                ),
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        Self::parse(&text).map_err(|reason| TokenKeyError::Invalid {
            path: path.display().to_string(),
            reason: reason.into(),
        })
    }

    fn parse(text: &str) -> Result<Self, &'static str> {
        let bytes = B64
            .decode(text.trim())
            .map_err(|_| "not one line of URL-safe base64")?;
        let bytes: [u8; KEY_BYTES] = bytes
            .try_into()
            .map_err(|_| "not a 32-byte key (make one with `head -c 32 /dev/urandom | basenc --base64url | tr -d =`)")?;
        Ok(Self::from_bytes(&bytes))
    }

    /// Creates a new key file at `path` (which must not exist), mode 0600.
    pub fn create(path: &Path) -> Result<Self, TokenKeyError> {
        let (key, text) = Self::generate()?;
        crate::identity_file::write_private(path, text.as_bytes()).map_err(|e| {
            TokenKeyError::Io {
                path: path.display().to_string(),
                source: std::io::Error::other(e.to_string()),
            }
        })?;
        Ok(key)
    }

    /// Reads the key file, or creates it when there is none (a data directory made by a
    /// version before hashed tokens). The boolean says whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), TokenKeyError> {
        match Self::load(path) {
            Ok(k) => Ok((k, false)),
            Err(TokenKeyError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok((Self::create(path)?, true))
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

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

    #[test]
    fn the_key_file_is_private_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.key");
        let (made, created) = TokenKey::load_or_create(&path).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (read, created) = TokenKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(made.derive("e"), read.derive("e"));
        assert_eq!(format!("{read:?}"), "TokenKey(...)");
    }

    #[test]
    fn a_bad_key_file_is_named_and_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.key");
        std::fs::write(&path, "c2hvcnQ\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = TokenKey::load_or_create(&path).unwrap_err().to_string();
        assert!(e.contains("token.key") && e.contains("32-byte"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "c2hvcnQ\n");
        // A good key others can read is refused, and its bytes are not in the message.
        let (_, text) = TokenKey::generate().unwrap();
        std::fs::write(&path, &text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = TokenKey::load(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600") && !e.contains(text.trim()), "{e}");
    }
}
