//! Certificate fingerprints: SHA-256 (the key of the fingerprint index, invariant I1) and
//! SHA-1 (shown because OpenZiti clients display it).

use aws_lc_rs::digest;

/// Lower-case hex SHA-256 of a certificate's DER.
pub fn sha256_hex(der: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, der))
}

/// Lower-case hex SHA-1 of a certificate's DER.
pub fn sha1_hex(der: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, der))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(sha1_hex(b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
    }
}
