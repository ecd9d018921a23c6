//! Random identifiers and tokens, from the operating system's CSPRNG through aws-lc-rs.

use base64::Engine as _;

/// The alphabet of every id and token: URL-safe base64 without padding, so ids and tokens
/// go into paths and query strings unescaped.
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Bytes of randomness in an identity, CA or enrollment id (96 bits: unique without a
/// coordinating counter, and short enough to read).
pub const ID_BYTES: usize = 12;

/// Bytes of randomness in an enrollment token (256 bits; DESIGN.md asks for at least 128).
pub const TOKEN_BYTES: usize = 32;

/// An error from the system random generator (it does not fail on Linux in practice).
#[derive(Debug, thiserror::Error)]
#[error("the system random number generator failed")]
pub struct RandomError;

/// Fills `buf` with random bytes.
pub fn fill_random(buf: &mut [u8]) -> Result<(), RandomError> {
    aws_lc_rs::rand::fill(buf).map_err(|_| RandomError)
}

fn random_b64(n: usize) -> Result<String, RandomError> {
    let mut buf = vec![0u8; n];
    fill_random(&mut buf)?;
    Ok(B64.encode(&buf))
}

/// A new opaque, URL-safe id (16 characters) that starts with a letter or a digit: an id
/// that started with `-` would read as an option on a command line (`identity show -Jx...`),
/// so such draws (2 in 64) are drawn again.
pub fn new_id() -> Result<String, RandomError> {
    loop {
        let id = random_b64(ID_BYTES)?;
        if id.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Ok(id);
        }
    }
}

/// A new enrollment token (43 characters, 256 bits).
pub fn new_token() -> Result<String, RandomError> {
    random_b64(TOKEN_BYTES)
}

/// True when `s` has the shape of an identity id (16 URL-safe base64 characters).
pub fn is_id_shaped(s: &str) -> bool {
    s.len() == ID_BYTES / 3 * 4 && is_well_formed(s)
}

/// True when `s` could be an id or token we issued: non-empty, bounded, URL-safe base64.
/// Checked before any store lookup so junk never reaches RocksDB keys or logs.
pub fn is_well_formed(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_tokens_are_url_safe_and_distinct() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(is_well_formed(&a));
        assert_eq!(new_id().unwrap().len(), 16);
    }

    #[test]
    fn ids_never_start_like_an_option() {
        for _ in 0..2000 {
            let id = new_id().unwrap();
            assert!(id.starts_with(|c: char| c.is_ascii_alphanumeric()), "{id}");
            assert!(is_id_shaped(&id));
        }
    }

    #[test]
    fn junk_is_not_well_formed() {
        for s in ["", "a b", "x/y", "é", &"a".repeat(129)] {
            assert!(!is_well_formed(s), "{s:?}");
        }
    }
}
