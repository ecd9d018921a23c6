//! # enrollgate-store
//!
//! The store: identities, enrollments, CAs and the indexes that keep DESIGN.md's
//! invariants, the one committer that takes every write, and the backends it writes to
//! (an embedded RocksDB, PostgreSQL for several gateways, a checking in-memory one for
//! tests). A crate of its own so that the compiler keeps the layering: it uses the protocol
//! crate (`enrollgate-proto`: the records, ids, time, the enrollment rules its decisions
//! call again) and never the daemon's API, server, CLI or configuration, which are not
//! among its dependencies; nor is monoio. The daemon re-exports it as `crate::store`.
//!
//! ```text
//!  API handler (daemon) ──Command──▶ commit (one thread) ──▶ apply: decide against the
//!        ▲                               │                   store + the batch so far
//!        │ Outcome, once durable         ▼
//!        └──────────────────────── backend::WriteSet ──▶ rocks │ pg │ memory
//! ```
//!
//! ## Schema (one column family, prefixed keys, JSON values)
//!
//! | key | value | keeps |
//! |---|---|---|
//! | `i:<identity id>` | `Identity` | |
//! | `n:<name>` | identity id | I2: names are unique |
//! | `e:<enrollment id>` | `Enrollment` (no token, no JWT) | a pending enrollment |
//! | `h:<sha-256 hex of a token>` | enrollment id | I3: a token exists until it is redeemed, once |
//! | `f:<sha-256 hex>` | identity id | I1: a certificate belongs to one identity |
//! | `b:<sha-256 hex of the to-be-signed part>` | identity id | I1 whatever the encoding of the certificate's signature |
//! | `m:admin:<identity id>` | empty | the enrolled admins: deleting one finds another without a scan |
//! | `r:<serial hex>` | `revocation::Revoked` | I7: a revoked certificate enrollgate issued, on the CRL until it expires |
//! | `x:<sha-256 hex of the to-be-signed part>` | `revocation::Blocked` | I7: a third-party certificate that binds no identity again until an admin lifts it |
//! | `m:revocations` | generation (decimal) | bumped with each revoked serial: the CRL is regenerated when it moves |
//! | `m:content-index` | `1` | every record written before the content index is indexed |
//! | `m:admin-index` | `1` | every admin enrolled before the admin index is indexed |
//!
//! No token is stored: the gateway derives each from the enrollment id with the token key
//! (`token::secret`). Versions before that kept `t:<token>` → `Enrollment` (with token and
//! JWT) and `e:<enrollment id>` → token; [`Store::hash_tokens`] migrates them when the
//! gateway opens the store.
//!
//! Every change goes through the single committer thread (`commit`), which decides each
//! command against the store *plus the writes already decided in its batch* (`apply`) and
//! writes the batch as one atomic, synced `WriteBatch` (I3-I5). Reads are RocksDB
//! gets from any thread (lock-free), or, on PostgreSQL, queries on the store's reader
//! threads (`Store::read`).

// The protocol crate's modules under the names the daemon gives them, so that a path
// reads the same on both sides of the crate boundary (`crate::model::Identity`).
use enrollgate_proto::{clock, enroll, ids, model, pki, token};

pub mod apply;
pub mod backend;
pub mod briefs;
pub mod commit;
pub mod fsck;
pub mod keys;
pub mod memory;
pub mod metrics;
pub mod pg;
mod reads;
pub mod refusing;
pub mod revocation;
pub mod rocks;

use std::sync::Arc;

use crate::enroll::EnrollError;
use crate::model::{Ca, Enrollment, Identity};

pub use apply::{CaChanges, Command, Outcome};
pub use backend::{Backend, CommitError};
pub use commit::{CommitHandle, CommitOptions, Durability};

/// One stored key and its value.
pub type Record = (Vec<u8>, Vec<u8>);

/// A store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
// Not `#[non_exhaustive]`: the daemon maps every variant to a response (`api::error`), and
// a new one must fail its build until it has one.
pub enum StoreError {
    /// A token rule refused the redemption inside the atomic write.
    #[error(transparent)]
    Enroll(#[from] EnrollError),
    /// I2, for identities.
    #[error("an identity named '{0}' already exists")]
    NameInUse(String),
    /// I2, for CAs.
    #[error("a CA named '{0}' already exists")]
    CaNameInUse(String),
    /// I1.
    #[error("this certificate is already bound to an identity")]
    CertInUse,
    /// No such record.
    #[error("{0}")]
    NotFound(String),
    /// The record is not in a state the command applies to.
    #[error("{0}")]
    InvalidState(String),
    /// A CA with this certificate already exists.
    #[error("a CA with this certificate already exists")]
    CaExists,
    /// The CA was verified already.
    #[error("the CA is already verified")]
    CaAlreadyVerified,
    /// The CA no longer allows what the request needs (deleted or a flag turned off).
    #[error("{0}")]
    CaNotUsable(String),
    /// The identity is disabled: it cannot authenticate, renew or enroll.
    #[error("{0}")]
    Disabled(String),
    /// The certificate was revoked (its identity deleted or re-enrolled) and cannot bind
    /// again until an admin lifts the block.
    #[error("{0}")]
    CertRevoked(String),
    /// The commit queue is full (admission control).
    #[error("the gateway is busy committing enrollments; retry shortly")]
    Busy,
    /// The committer has stopped.
    #[error("the gateway is shutting down")]
    ShuttingDown,
    /// The database failed.
    #[error("storage error: {0}")]
    Db(String),
    /// The database cannot be reached now (a shared database down, or failing over):
    /// nothing was written; the request can be retried.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// There is no store at the path (no RocksDB `CURRENT` file).
    #[error("the store does not exist (no RocksDB CURRENT file)")]
    Absent,
    /// Another process holds the store open (RocksDB's lock).
    #[error("the store is locked by another process: {0}")]
    Locked(String),
    /// A stored value does not decode: the store was damaged or written by another version.
    #[error("corrupt record at {0}")]
    Corrupt(String),
}

impl From<rocksdb::Error> for StoreError {
    fn from(e: rocksdb::Error) -> Self {
        Self::Db(e.into_string())
    }
}

impl From<CommitError> for StoreError {
    /// For a caller that does not retry: a conflict means others are writing the same
    /// records now (retry shortly); an unknown outcome, that the database went away.
    fn from(e: CommitError) -> Self {
        match e {
            CommitError::Conflict(_) => Self::Busy,
            CommitError::Failed(e) => e,
            CommitError::Unknown(e) => Self::Unavailable(e.to_string()),
        }
    }
}

/// Read access to stored values, without versions: every [`backend::Source`] (a backend,
/// a map in tests) and a [`apply::Batch`] (the store plus the writes decided so far).
pub trait Snapshot {
    /// The value at `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Whether some record under `prefix` satisfies `pred` (key, value), stopping at the
    /// first that does. A scan of the prefix: for small ones (the admin index).
    fn any_under(
        &self,
        prefix: &[u8],
        pred: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<bool, StoreError>;
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    key: &[u8],
    value: &[u8],
) -> Result<T, StoreError> {
    // Name the record's kind only: the rest of a key can be a token.
    serde_json::from_slice(value).map_err(|_| {
        let kind = key.split(|&b| b == b':').next().unwrap_or_default();
        StoreError::Corrupt(format!("a '{}:' record", String::from_utf8_lossy(kind)))
    })
}

/// The pending enrollment `token` redeems: the token's hash in the token index, then the
/// record, which must list that hash.
pub(crate) fn pending_by_token(
    snap: &(impl Snapshot + ?Sized),
    token: &str,
) -> Result<Option<Enrollment>, StoreError> {
    let hash = crate::token::token_sha256(token);
    let Some(id) = snap.get(&keys::token_hash(&hash))? else {
        return Ok(None);
    };
    let e: Option<Enrollment> = get_json(snap, &keys::enrollment(&String::from_utf8_lossy(&id)))?;
    Ok(e.filter(|e| e.token_sha256.contains(&hash)))
}

pub(crate) fn get_json<T: serde::de::DeserializeOwned>(
    snap: &(impl Snapshot + ?Sized),
    key: &[u8],
) -> Result<Option<T>, StoreError> {
    match snap.get(key)? {
        Some(v) => decode(key, &v).map(Some),
        None => Ok(None),
    }
}

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The items of the page.
    pub items: Vec<T>,
    /// How many items match in all.
    pub total: usize,
}

/// What [`Store::each_under`] calls on each record (key, value): true to go on.
pub type Each<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool, StoreError> + 'a;

/// A handle on the opened store (cheap to clone; all clones share one backend).
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    /// The same database, when it is the embedded RocksDB: for what only RocksDB does
    /// (backups through a secondary instance, its memory, migrations at open).
    rocks: Option<Arc<rocksdb::DB>>,
    /// The same database, when it is a shared PostgreSQL: for its change feed.
    pg: Option<Arc<pg::Postgres>>,
    /// The threads that run the workers' reads of a shared database (see [`Store::read`]).
    readers: Option<reads::Readers>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish()
    }
}

impl Store {
    /// A store on `backend`.
    pub fn on(backend: Arc<dyn Backend>) -> Self {
        let readers = backend.shared().then(reads::Readers::start);
        Self {
            backend,
            rocks: None,
            pg: None,
            readers,
        }
    }

    /// Opens the configured store: the PostgreSQL database at `url` if there is one, else
    /// the RocksDB at `path`. `gateway` names the gateway a shared database belongs to
    /// ([`pg::gateway_of`]); `create` makes a new store (and refuses an existing one).
    pub fn open_configured(
        path: &std::path::Path,
        url: Option<&pg::StoreUrl>,
        gateway: &str,
        create: bool,
    ) -> Result<Self, StoreError> {
        match url {
            None => Self::open(path, create),
            Some(url) => {
                let pg = Arc::new(pg::Postgres::open(url.clone(), gateway, create)?);
                Ok(Self {
                    pg: Some(pg.clone()),
                    ..Self::on(pg)
                })
            }
        }
    }

    /// The shared PostgreSQL database, if the store is one.
    pub fn postgres(&self) -> Option<&Arc<pg::Postgres>> {
        self.pg.as_ref()
    }

    /// Runs the reads of `f` where they do not stall a worker, and waits (asynchronously)
    /// for them: at once on the calling thread for RocksDB (lock-free reads from memory or
    /// the page cache), on the store's reader threads for a shared database (a round trip
    /// each). What a monoio worker reads goes through here.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        match &self.readers {
            None => f(self),
            Some(readers) => readers.run(self.clone(), f).await,
        }
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The embedded RocksDB, if the store is one.
    pub fn rocks(&self) -> Option<&rocksdb::DB> {
        self.rocks.as_deref()
    }

    fn source(&self) -> &dyn Backend {
        &*self.backend
    }

    /// The value at `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Snapshot::get(self.source(), key)
    }

    /// Calls `f` on every record under `prefix` in key order until it returns false or
    /// fails.
    pub fn each_under(&self, prefix: &[u8], f: &mut Each<'_>) -> Result<(), StoreError> {
        let mut failed = None;
        self.backend.scan(prefix, &mut |k, v, _| match f(k, v) {
            Ok(go_on) => go_on,
            Err(e) => {
                failed = Some(e);
                false
            }
        })?;
        failed.map_or(Ok(()), Err)
    }
}

impl Store {
    /// An identity by id.
    pub fn identity(&self, id: &str) -> Result<Option<Identity>, StoreError> {
        get_json(self.source(), &keys::identity(id))
    }

    /// What a request with an API session needs from the store, in one read: the
    /// session's identity, and whether the session was logged out.
    pub fn session_state(
        &self,
        identity_id: &str,
        session_id: &str,
    ) -> Result<(Option<Identity>, bool), StoreError> {
        let found = self
            .backend
            .read_many(&[keys::identity(identity_id), keys::session_ended(session_id)])?;
        let identity = match &found[0] {
            Some(v) => Some(decode(&keys::identity(identity_id), &v.value)?),
            None => None,
        };
        Ok((identity, found[1].is_some()))
    }

    /// An identity by exact name.
    pub fn identity_by_name(&self, name: &str) -> Result<Option<Identity>, StoreError> {
        match self.get(&keys::name(name))? {
            Some(id) => self.identity(&String::from_utf8_lossy(&id)),
            None => Ok(None),
        }
    }

    /// The identity a certificate (by SHA-256 hex fingerprint) is bound to.
    pub fn identity_by_fingerprint(
        &self,
        sha256_hex: &str,
    ) -> Result<Option<Identity>, StoreError> {
        match self.get(&keys::fingerprint(sha256_hex))? {
            Some(id) => self.identity(&String::from_utf8_lossy(&id)),
            None => Ok(None),
        }
    }

    /// Whether the certificate of `auth` is bound to an identity, by its fingerprint or its
    /// content.
    pub fn is_bound(&self, auth: &crate::model::Authenticator) -> Result<bool, StoreError> {
        for k in keys::bound(auth) {
            if self.get(&k)?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The pending enrollment with this token (found by the token's hash; the record
    /// holds no token).
    pub fn enrollment_by_token(&self, token: &str) -> Result<Option<Enrollment>, StoreError> {
        pending_by_token(self.source(), token)
    }

    /// The pending enrollment with this id (the record holds no token).
    pub fn enrollment(&self, id: &str) -> Result<Option<Enrollment>, StoreError> {
        get_json(self.source(), &keys::enrollment(id))
    }

    /// Identities in name order whose name satisfies `filter`, `limit` from `offset`.
    pub fn list_identities(
        &self,
        offset: usize,
        limit: usize,
        filter: &dyn Fn(&str) -> bool,
    ) -> Result<Page<Identity>, StoreError> {
        self.list_identities_where(offset, limit, filter, None)
    }

    /// As [`Self::list_identities`], keeping only the identities for which `keep` holds
    /// too. With `keep`, every identity whose name passes is read and decoded (a scan,
    /// for administrative filters such as a certificate's expiry); without, only the page.
    pub fn list_identities_where(
        &self,
        offset: usize,
        limit: usize,
        filter: &dyn Fn(&str) -> bool,
        keep: Option<&dyn Fn(&Identity) -> bool>,
    ) -> Result<Page<Identity>, StoreError> {
        let mut total = 0usize;
        let mut ids = Vec::new();
        let mut items = Vec::new();
        self.each_under(keys::NAME, &mut |k, v| {
            let name = String::from_utf8_lossy(&k[keys::NAME.len()..]);
            if !filter(&name) {
                return Ok(true);
            }
            let id = String::from_utf8_lossy(v);
            if let Some(keep) = keep {
                match self.identity(&id)? {
                    Some(identity) if keep(&identity) => {
                        if total >= offset && items.len() < limit {
                            items.push(identity);
                        }
                        total += 1;
                    }
                    _ => {}
                }
                return Ok(true);
            }
            if total >= offset && ids.len() < limit {
                ids.push(id.into_owned());
            }
            total += 1;
            Ok(true)
        })?;
        for id in ids {
            if let Some(identity) = self.identity(&id)? {
                items.push(identity);
            }
        }
        Ok(Page { items, total })
    }

    /// A CA by id.
    pub fn ca(&self, id: &str) -> Result<Option<Ca>, StoreError> {
        get_json(self.source(), &keys::ca(id))
    }

    /// A CA by exact name.
    pub fn ca_by_name(&self, name: &str) -> Result<Option<Ca>, StoreError> {
        match self.get(&keys::ca_name(name))? {
            Some(id) => self.ca(&String::from_utf8_lossy(&id)),
            None => Ok(None),
        }
    }

    /// Every CA, in id order.
    pub fn all_cas(&self) -> Result<Vec<Ca>, StoreError> {
        let mut out = Vec::new();
        self.each_under(keys::CA, &mut |k, v| {
            out.push(decode(k, v)?);
            Ok(true)
        })?;
        Ok(out)
    }

    /// Every identity for which `keep` holds, in id order. A scan of every identity: for
    /// rare administrative questions (what deleting a CA touches), never the request path.
    pub fn identities_where(
        &self,
        keep: &mut dyn FnMut(&Identity) -> bool,
    ) -> Result<Vec<Identity>, StoreError> {
        let mut out = Vec::new();
        self.each_under(keys::IDENTITY, &mut |k, v| {
            let identity: Identity = decode(k, v)?;
            if keep(&identity) {
                out.push(identity);
            }
            Ok(true)
        })?;
        Ok(out)
    }

    /// Every pending enrollment for which `keep` holds, in id order (a scan, as above).
    pub fn enrollments_where(
        &self,
        keep: &dyn Fn(&Enrollment) -> bool,
    ) -> Result<Vec<Enrollment>, StoreError> {
        let mut out = Vec::new();
        self.each_under(keys::ENROLLMENT, &mut |k, v| {
            let enrollment: Enrollment = decode(k, v)?;
            if keep(&enrollment) {
                out.push(enrollment);
            }
            Ok(true)
        })?;
        Ok(out)
    }

    /// Pending enrollments, ordered by id, `limit` from `offset`.
    pub fn list_enrollments(
        &self,
        offset: usize,
        limit: usize,
    ) -> Result<Page<Enrollment>, StoreError> {
        let mut total = 0usize;
        let mut items = Vec::new();
        self.each_under(keys::ENROLLMENT, &mut |k, v| {
            if total >= offset && items.len() < limit {
                items.push(decode(k, v)?);
            }
            total += 1;
            Ok(true)
        })?;
        Ok(Page { items, total })
    }

    /// Applies commands at once, in one durable commit, on the calling thread (used by
    /// `init` and `migrate`, before any committer runs). Refused on a conflict: nobody
    /// else writes a store being made.
    pub fn apply_now(
        &self,
        cmds: Vec<Command>,
    ) -> Result<Vec<Result<Outcome, StoreError>>, StoreError> {
        let mut batch = apply::Batch::new(self.source());
        let results: Vec<_> = cmds.into_iter().map(|c| batch.apply(c)).collect();
        let set = batch.into_write_set()?;
        self.backend.commit(&set, true).map_err(StoreError::from)?;
        Ok(results)
    }
}

/// A self-signed certificate for the DNS name `name`, with a new P-256 key (the tests of
/// the store and of fsck; the protocol crate's own tests have theirs).
#[cfg(test)]
pub(crate) fn self_signed_for_tests(name: &str) -> rcgen::Certificate {
    let key = rcgen::KeyPair::generate().expect("key");
    rcgen::CertificateParams::new(vec![name.into()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Authenticator, IdentityType, Method};

    fn bound_identity(id: &str, cert_der: &[u8]) -> Identity {
        let mut auth: Authenticator =
            crate::pki::fingerprint::authenticator(cert_der, false, Method::Ca, 1).unwrap();
        // As written before the content index existed.
        auth.tbs_sha256 = String::new();
        Identity {
            id: id.into(),
            name: id.into(),
            kind: IdentityType::Device,
            is_admin: false,
            role_attributes: vec![],
            created_at: 1,
            updated_at: 1,
            enrollment_id: None,
            lifecycle: Default::default(),
            authenticator: Some(auth),
        }
    }

    /// A store from before the content index: its bound identities are indexed by content
    /// when it is opened, once; two bound to one content keep their bindings, and only the
    /// first is indexed.
    #[test]
    fn opening_an_older_store_indexes_its_certificates_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let cert = crate::self_signed_for_tests("dev");
        let other = crate::self_signed_for_tests("other");
        let tbs = crate::pki::fingerprint::tbs_sha256_hex(cert.der()).unwrap();
        {
            let store = Store::open(&path, true).unwrap();
            let db = store.rocks().unwrap();
            assert!(
                db.get(keys::CONTENT_INDEXED).unwrap().is_some(),
                "a new store is complete"
            );
            for (id, der) in [("a", cert.der()), ("b", cert.der()), ("c", other.der())] {
                let i = bound_identity(id, der);
                let fp = &i.authenticator.as_ref().unwrap().fingerprint_sha256;
                db.put(keys::identity(id), serde_json::to_vec(&i).unwrap())
                    .unwrap();
                db.put(keys::fingerprint(&format!("{fp}-{id}")), id)
                    .unwrap();
            }
            db.delete(keys::CONTENT_INDEXED).unwrap();
        }
        let store = Store::open(&path, false).unwrap();
        assert_eq!(
            store
                .rocks()
                .unwrap()
                .get(keys::content(&tbs))
                .unwrap()
                .unwrap(),
            b"a"
        );
        let a = store.identity("a").unwrap().unwrap();
        assert_eq!(a.authenticator.unwrap().tbs_sha256, tbs);
        let b = store.identity("b").unwrap().unwrap();
        assert!(
            b.authenticator.unwrap().tbs_sha256.is_empty(),
            "left for the operator"
        );
        let c = store.identity("c").unwrap().unwrap();
        let c_tbs = c.authenticator.unwrap().tbs_sha256;
        assert_eq!(
            store
                .rocks()
                .unwrap()
                .get(keys::content(&c_tbs))
                .unwrap()
                .unwrap(),
            b"c"
        );
        assert!(store
            .rocks()
            .unwrap()
            .get(keys::CONTENT_INDEXED)
            .unwrap()
            .is_some());
    }

    /// Every file under `dir`, read whole.
    fn files_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(files_under(&path));
            } else {
                let bytes = std::fs::read(&path).unwrap();
                out.push((path, bytes));
            }
        }
        out
    }

    /// A store of a version that kept tokens: at open its pending enrollment keeps only
    /// hashes, redeemable by the old token and by the derived one; the old token and JWT
    /// are in no file of the store any more; an id index left without its enrollment (it
    /// holds a token too) goes; a second pass finds nothing to do.
    #[test]
    fn opening_a_store_that_kept_tokens_hashes_them_and_forgets_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let old_token = "OLDxTOKENxqYp3v9cZ2fA7mN1kL8sRtUwE4hJgBdQoXiPV0";
        let old_jwt = "eyJOLDxJWTxHEADER.eyJOLDxJWTxCLAIMS.OLDxJWTxSIGNATURE";
        let dangling = "DANGLINGxTOKENxa8b7c6d5e4f3g2h1";
        {
            let store = Store::open(&path, true).unwrap();
            let db = store.rocks().unwrap();
            let identity = Identity {
                id: "i1".into(),
                name: "dev1".into(),
                kind: IdentityType::Device,
                is_admin: false,
                role_attributes: vec![],
                created_at: 1,
                updated_at: 1,
                enrollment_id: Some("e1".into()),
                lifecycle: Default::default(),
                authenticator: None,
            };
            db.put(keys::identity("i1"), serde_json::to_vec(&identity).unwrap())
                .unwrap();
            db.put(keys::name("dev1"), "i1").unwrap();
            // The records exactly as the previous version wrote them.
            let old = format!(
                r#"{{"id":"e1","token":"{old_token}","method":"ott","identity_id":"i1","ca_id":null,"created_at":1,"expires_at":4000000000,"jwt":"{old_jwt}"}}"#
            );
            db.put(keys::token(old_token), old).unwrap();
            db.put(keys::enrollment("e1"), old_token).unwrap();
            db.put(keys::enrollment("e-gone"), dangling).unwrap();
            // Into table files, as a store that ran a while has them.
            db.flush().unwrap();
        }
        let key = crate::token::TokenKey::from_bytes(&[7; crate::token::secret::KEY_BYTES]);
        let derived = key.derive("e1");
        {
            let store = Store::open(&path, false).unwrap();
            let (store, migrated) = store.hash_tokens(&key).unwrap();
            assert_eq!(migrated, 1);
            let (store, migrated) = store.hash_tokens(&key).unwrap();
            assert_eq!(migrated, 0, "done once");
            for token in [old_token, derived.as_str()] {
                let e = store.enrollment_by_token(token).unwrap().unwrap();
                assert_eq!(e.id, "e1");
                assert!(e.token.is_empty() && e.jwt.is_empty());
            }
            assert!(store.enrollment_by_token(dangling).unwrap().is_none());
            let page = store.list_enrollments(0, 10).unwrap();
            assert_eq!(page.total, 1);
            assert_eq!(page.items[0].token_sha256.len(), 2);
            assert!(store.enrollment("e1").unwrap().is_some());
        }
        for (file, bytes) in files_under(&path) {
            for secret in [old_token, old_jwt, dangling, derived.as_str()] {
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{} holds a token",
                    file.display()
                );
            }
        }
        let records = crate::rocks::read_all_beside(&path).unwrap();
        let report = crate::fsck::check(records);
        assert_eq!(report.violations, vec![]);
        assert_eq!(report.enrollments, 1);
    }

    /// A store from before the admin index: its enrolled admins are indexed when it is
    /// opened, once; a pending admin and a device are not.
    #[test]
    fn opening_an_older_store_indexes_its_admins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let cert = crate::self_signed_for_tests("dev");
        {
            let store = Store::open(&path, true).unwrap();
            let db = store.rocks().unwrap();
            assert!(
                db.get(keys::ADMIN_INDEXED).unwrap().is_some(),
                "a new store is complete"
            );
            let enrolled = Identity {
                is_admin: true,
                ..bound_identity("admin", cert.der())
            };
            let pending = Identity {
                is_admin: true,
                lifecycle: Default::default(),
                authenticator: None,
                ..bound_identity("pending", cert.der())
            };
            for i in [enrolled, pending, bound_identity("device", cert.der())] {
                db.put(keys::identity(&i.id), serde_json::to_vec(&i).unwrap())
                    .unwrap();
            }
            db.delete(keys::ADMIN_INDEXED).unwrap();
        }
        let store = Store::open(&path, false).unwrap();
        let indexed: Vec<Vec<u8>> = store
            .rocks()
            .unwrap()
            .prefix_iterator(keys::ADMIN)
            .map(|item| item.unwrap().0.to_vec())
            .take_while(|k| k.starts_with(keys::ADMIN))
            .collect();
        assert_eq!(indexed, vec![keys::admin("admin")]);
        assert!(store
            .rocks()
            .unwrap()
            .get(keys::ADMIN_INDEXED)
            .unwrap()
            .is_some());
    }

    /// The marker missing from a store whose newer records are indexed (written by this
    /// version, the marker lost): an older record with the same content is not indexed
    /// over the one already there, and a record that does not decode does not stop the
    /// open.
    #[test]
    fn an_indexed_record_keeps_its_content_and_a_broken_record_does_not_stop_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let cert = crate::self_signed_for_tests("dev");
        let tbs = crate::pki::fingerprint::tbs_sha256_hex(cert.der()).unwrap();
        {
            let store = Store::open(&path, true).unwrap();
            let db = store.rocks().unwrap();
            // "z" is indexed; "a" (sorted first) is an older record of the same content.
            let mut z = bound_identity("z", cert.der());
            if let Some(auth) = z.authenticator.as_mut() {
                auth.tbs_sha256 = tbs.clone();
            }
            db.put(keys::identity("z"), serde_json::to_vec(&z).unwrap())
                .unwrap();
            db.put(keys::content(&tbs), "z").unwrap();
            let a = bound_identity("a", cert.der());
            db.put(keys::identity("a"), serde_json::to_vec(&a).unwrap())
                .unwrap();
            db.put(keys::identity("broken"), b"{not json").unwrap();
            db.delete(keys::CONTENT_INDEXED).unwrap();
        }
        let store = Store::open(&path, false).unwrap();
        assert_eq!(
            store
                .rocks()
                .unwrap()
                .get(keys::content(&tbs))
                .unwrap()
                .unwrap(),
            b"z"
        );
        let a = store.identity("a").unwrap().unwrap();
        assert!(a.authenticator.unwrap().tbs_sha256.is_empty());
        assert!(store
            .rocks()
            .unwrap()
            .get(keys::CONTENT_INDEXED)
            .unwrap()
            .is_some());
    }
}
