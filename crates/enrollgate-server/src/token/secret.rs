//! The token key's file (`pki.token_key`): read, created, refused when others can read it.
//! The key and what it derives (tokens, their hashes, the session key) are the protocol
//! crate's ([`enrollgate_proto::token::secret`], re-exported here); the file is guarded like
//! the CA key (mode 0600, or a systemd credential).

use std::path::Path;

pub use enrollgate_proto::token::secret::*;

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

/// Reads the key file (one line: base64url of [`KEY_BYTES`] bytes), which only its owner
/// may read.
pub fn load(path: &Path) -> Result<TokenKey, TokenKeyError> {
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
    TokenKey::parse(&text).map_err(|reason| TokenKeyError::Invalid {
        path: path.display().to_string(),
        reason: reason.into(),
    })
}

/// Creates a new key file at `path` (which must not exist), mode 0600.
pub fn create(path: &Path) -> Result<TokenKey, TokenKeyError> {
    let (key, text) = TokenKey::generate()?;
    crate::identity_file::write_private(path, text.as_bytes()).map_err(|e| TokenKeyError::Io {
        path: path.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(key)
}

/// Reads the key file, or creates it when there is none (a data directory made by a
/// version before hashed tokens). The boolean says whether it was created.
pub fn load_or_create(path: &Path) -> Result<(TokenKey, bool), TokenKeyError> {
    match load(path) {
        Ok(k) => Ok((k, false)),
        Err(TokenKeyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok((create(path)?, true))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn the_key_file_is_private_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.key");
        let (made, created) = load_or_create(&path).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (read, created) = load_or_create(&path).unwrap();
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
        let e = load_or_create(&path).unwrap_err().to_string();
        assert!(e.contains("token.key") && e.contains("32-byte"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "c2hvcnQ\n");
        // A good key others can read is refused, and its bytes are not in the message.
        let (_, text) = TokenKey::generate().unwrap();
        std::fs::write(&path, &text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600") && !e.contains(text.trim()), "{e}");
    }
}
