//! Key layout of the store (see the table in `store`).

/// Prefix of identity records.
pub const IDENTITY: &[u8] = b"i:";
/// Prefix of the name index (I2).
pub const NAME: &[u8] = b"n:";
/// Prefix of pending enrollments by token, as versions before hashed tokens kept them
/// (the token in the key, the token and JWT in the record): migrated when the gateway
/// opens the store (`Store::hash_tokens`), never written.
pub const TOKEN: &[u8] = b"t:";
/// Prefix of pending enrollments, by enrollment id. (Before hashed tokens: an index from
/// the id to the token.)
pub const ENROLLMENT: &[u8] = b"e:";
/// Prefix of the token index (I3): the SHA-256 of a token, to its enrollment's id.
pub const TOKEN_HASH: &[u8] = b"h:";
/// Prefix of the fingerprint index (I1).
pub const FINGERPRINT: &[u8] = b"f:";
/// Prefix of the content index (I1 whatever the encoding of the certificate's signature).
pub const CONTENT: &[u8] = b"b:";
/// The marker of a store whose content index is complete (records written before it
/// existed were indexed when the store was opened).
pub const CONTENT_INDEXED: &[u8] = b"m:content-index";

/// Prefix of the admin index: one key per identity that can manage the gateway (an
/// enrolled admin), so that deleting one finds another without a scan of every identity.
/// Under `m:`, which `fsck` before the index ignores: a store written by this version
/// still passes the previous version's `fsck` and `restore`.
pub const ADMIN: &[u8] = b"m:admin:";
/// The marker of a store whose admin index is complete (the admins of a store from before
/// the index were indexed when it was opened).
pub const ADMIN_INDEXED: &[u8] = b"m:admin-index";

/// Prefix of revoked certificates that enrollgate issued, by serial: what the CRL lists (I7).
pub const REVOKED: &[u8] = b"r:";
/// Prefix of blocked third-party certificates, by content (the SHA-256 of the
/// to-be-signed part, whatever the encoding of the signature): such a certificate binds
/// no identity again until an admin lifts the block (I7).
pub const BLOCKED: &[u8] = b"x:";
/// The revocation generation, bumped in the batch that revokes a serial: the CRL is
/// regenerated when it moves. Under `m:`, which `fsck` and `restore` of versions before it
/// ignore.
pub const REVOCATIONS: &[u8] = b"m:revocations";

/// Prefix of ended API sessions, by session id: a logout, until the session would have
/// expired (its time, decimal). Sessions are signed tokens; only their early end is stored.
pub const SESSION_ENDED: &[u8] = b"sr:";

/// The record of the session `id`'s logout.
pub fn session_ended(id: &str) -> Vec<u8> {
    [SESSION_ENDED, id.as_bytes()].concat()
}

/// Prefix of third-party CA records.
pub const CA: &[u8] = b"c:";
/// Prefix of the CA name index.
pub const CA_NAME: &[u8] = b"cn:";
/// Prefix of the CA fingerprint index.
pub const CA_FINGERPRINT: &[u8] = b"cf:";

fn key(prefix: &[u8], s: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + s.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(s.as_bytes());
    k
}

/// `i:<id>`
pub fn identity(id: &str) -> Vec<u8> {
    key(IDENTITY, id)
}
/// `n:<name>`
pub fn name(name: &str) -> Vec<u8> {
    key(NAME, name)
}
/// `t:<token>` (before hashed tokens)
pub fn token(token: &str) -> Vec<u8> {
    key(TOKEN, token)
}
/// `h:<sha-256 hex of a token>`
pub fn token_hash(sha256_hex: &str) -> Vec<u8> {
    key(TOKEN_HASH, sha256_hex)
}
/// `e:<enrollment id>`
pub fn enrollment(id: &str) -> Vec<u8> {
    key(ENROLLMENT, id)
}
/// `f:<sha-256 hex>`
pub fn fingerprint(sha256_hex: &str) -> Vec<u8> {
    key(FINGERPRINT, sha256_hex)
}
/// `b:<sha-256 hex of the to-be-signed part>`
pub fn content(tbs_sha256_hex: &str) -> Vec<u8> {
    key(CONTENT, tbs_sha256_hex)
}
/// The index keys binding a certificate to its identity: its fingerprint and, when known,
/// its content.
pub fn bound(auth: &crate::model::Authenticator) -> Vec<Vec<u8>> {
    let mut keys = vec![fingerprint(&auth.fingerprint_sha256)];
    if !auth.tbs_sha256.is_empty() {
        keys.push(content(&auth.tbs_sha256));
    }
    keys
}
/// `m:admin:<identity id>`
pub fn admin(id: &str) -> Vec<u8> {
    key(ADMIN, id)
}
/// `c:<ca id>`
pub fn ca(id: &str) -> Vec<u8> {
    key(CA, id)
}
/// `cn:<ca name>`
pub fn ca_name(name: &str) -> Vec<u8> {
    key(CA_NAME, name)
}
/// `cf:<sha-256 hex>`
pub fn ca_fingerprint(sha256_hex: &str) -> Vec<u8> {
    key(CA_FINGERPRINT, sha256_hex)
}
/// `r:<serial, lower-case hex of its DER content octets>`
pub fn revoked(serial_hex: &str) -> Vec<u8> {
    key(REVOKED, serial_hex)
}
/// `x:<sha-256 hex of the to-be-signed part>`
pub fn blocked(tbs_sha256_hex: &str) -> Vec<u8> {
    key(BLOCKED, tbs_sha256_hex)
}
