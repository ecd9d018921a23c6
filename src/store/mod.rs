//! The store: an embedded RocksDB holding identities, enrollments and the indexes that keep
//! DESIGN.md's invariants.
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
//! writes the batch as one atomic, synced `WriteBatch` (I3-I5). Reads are lock-free
//! RocksDB gets from any thread.

pub mod apply;
pub mod briefs;
pub mod commit;
pub mod keys;
pub mod revocation;

use std::path::Path;
use std::sync::Arc;

use crate::enroll::EnrollError;
use crate::model::{Ca, Enrollment, Identity};

pub use apply::{CaChanges, Command, Outcome};
pub use commit::{CommitHandle, CommitOptions, Durability};

/// A store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
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
    /// RocksDB failed.
    #[error("storage error: {0}")]
    Db(String),
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

/// Read access to stored values; implemented by RocksDB and, in tests, by a map.
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

impl Snapshot for rocksdb::DB {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(rocksdb::DB::get(self, key)?)
    }

    fn any_under(
        &self,
        prefix: &[u8],
        pred: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<bool, StoreError> {
        let mode = rocksdb::IteratorMode::From(prefix, rocksdb::Direction::Forward);
        for item in self.iterator(mode) {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            if pred(&k, &v) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

impl Snapshot for std::collections::BTreeMap<Vec<u8>, Vec<u8>> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(std::collections::BTreeMap::get(self, key).cloned())
    }

    fn any_under(
        &self,
        prefix: &[u8],
        pred: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<bool, StoreError> {
        Ok(self
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .any(|(k, v)| pred(k, v)))
    }
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

/// Block cache shared by the store's table files (index, filter and data blocks).
const BLOCK_CACHE_BYTES: usize = 64 << 20;
/// One memtable; at most [`MEMTABLES`] of them exist (one filling, one being flushed).
const MEMTABLE_BYTES: usize = 32 << 20;
const MEMTABLES: usize = 2;
/// The most memory the store's caches and memtables take (plus their bloom filters):
/// `limits.max_memory` keeps this much for the store.
pub const MEMORY_BUDGET: u64 = (BLOCK_CACHE_BYTES + MEMTABLES * MEMTABLE_BYTES * 21 / 20) as u64;

/// The RocksDB options of a store (also used for the copy a backup writes).
pub fn options() -> rocksdb::Options {
    let mut opts = rocksdb::Options::default();
    opts.set_keep_log_file_num(4);
    opts.increase_parallelism(2);
    // Most reads are point lookups, and many are of keys that are absent (is this name,
    // certificate, token free?): bloom filters answer those without searching the
    // memtable or reading a block of each table file.
    opts.set_memtable_prefix_bloom_ratio(0.05);
    opts.set_memtable_whole_key_filtering(true);
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_bloom_filter(10.0, false);
    table.set_whole_key_filtering(true);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    table.set_block_cache(&rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES));
    opts.set_block_based_table_factory(&table);
    opts.set_level_compaction_dynamic_level_bytes(true);
    opts.set_write_buffer_size(MEMTABLE_BYTES);
    opts.set_max_write_buffer_number(MEMTABLES as i32);
    opts
}

/// Fills in the content index for the identities bound before it existed, once (the
/// marker key records that it is done): until then, another encoding of such an
/// identity's certificate signature could bind a second identity. Runs at open, before any
/// committer. Two records sharing one content (bound twice before this index) keep their
/// bindings: the first (or the one already indexed) is indexed, and the other is logged
/// for the operator to delete; `fsck` reports the pair until then. A record that does not
/// decode is left to `fsck` too.
fn index_content(db: &rocksdb::DB) -> Result<(), StoreError> {
    if db.get(keys::CONTENT_INDEXED)?.is_some() {
        return Ok(());
    }
    let mut wb = rocksdb::WriteBatch::default();
    let mut indexed: std::collections::HashMap<String, String> = Default::default();
    for item in db.prefix_iterator(keys::IDENTITY) {
        let (k, v) = item?;
        if !k.starts_with(keys::IDENTITY) {
            break;
        }
        let Ok(mut identity) = decode::<Identity>(&k, &v) else {
            tracing::error!(key = %String::from_utf8_lossy(&k), "an identity record does not decode; not indexed by content (see fsck)");
            continue;
        };
        let id = identity.id.clone();
        let Some(auth) = identity.authenticator.as_mut() else {
            continue;
        };
        if !auth.tbs_sha256.is_empty() {
            continue;
        }
        let Some(tbs) = ::pem::parse(&auth.cert_pem)
            .ok()
            .and_then(|p| crate::pki::fingerprint::tbs_sha256_hex(p.contents()))
        else {
            tracing::error!(identity_id = %id, "a bound certificate does not parse; not indexed by content");
            continue;
        };
        let holder = match indexed.get(&tbs) {
            Some(first) => Some(first.clone()),
            None => db
                .get(keys::content(&tbs))?
                .map(|v| String::from_utf8_lossy(&v).into_owned()),
        };
        if let Some(first) = holder {
            tracing::error!(identity_id = %id, other_identity_id = %first, "two identities are bound to encodings of one certificate; delete one");
            continue;
        }
        auth.tbs_sha256 = tbs.clone();
        wb.put(keys::content(&tbs), id.as_bytes());
        wb.put(
            &k,
            serde_json::to_vec(&identity).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        );
        indexed.insert(tbs, id);
    }
    if !indexed.is_empty() {
        tracing::info!(
            identities = indexed.len(),
            "indexed bound certificates by content"
        );
    }
    wb.put(keys::CONTENT_INDEXED, b"1");
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(true);
    db.write_opt(wb, &wo)?;
    Ok(())
}

/// Fills in the admin index for a store from before it, once (the marker key records that
/// it is done). Runs at open, before any committer. A record that does not decode is left
/// to `fsck`.
fn index_admins(db: &rocksdb::DB) -> Result<(), StoreError> {
    if db.get(keys::ADMIN_INDEXED)?.is_some() {
        return Ok(());
    }
    let mut wb = rocksdb::WriteBatch::default();
    let mut admins = 0usize;
    for item in db.prefix_iterator(keys::IDENTITY) {
        let (k, v) = item?;
        if !k.starts_with(keys::IDENTITY) {
            break;
        }
        if let Ok(identity) = decode::<Identity>(&k, &v) {
            if identity.manages() {
                wb.put(keys::admin(&identity.id), b"");
                admins += 1;
            }
        }
    }
    if admins > 0 {
        tracing::info!(admins, "indexed the admin identities");
    }
    wb.put(keys::ADMIN_INDEXED, b"1");
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(true);
    db.write_opt(wb, &wo)?;
    Ok(())
}

/// A handle on the opened database (cheap to clone; all clones share one RocksDB).
#[derive(Clone)]
pub struct Store {
    db: Arc<rocksdb::DB>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.db.path())
            .finish()
    }
}

/// Whether `path` surely holds no store: no RocksDB `CURRENT` file. A permission error
/// is not an answer, and is left to RocksDB, which names it.
pub fn absent(path: &Path) -> bool {
    std::fs::metadata(path.join("CURRENT")).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
}

impl Store {
    /// Opens the store at `path`; `create` makes a new one (and refuses an existing one).
    pub fn open(path: &Path, create: bool) -> Result<Self, StoreError> {
        // RocksDB would make the directory and its LOCK and LOG files before finding no
        // store there: a store that is not there is left not there.
        if !create && absent(path) {
            return Err(StoreError::Absent);
        }
        let mut opts = options();
        opts.create_if_missing(create);
        opts.set_error_if_exists(create);
        let db = rocksdb::DB::open(&opts, path).map_err(|e| {
            // RocksDB says only in words that another process holds the store: read them
            // here, once, so that callers match a variant.
            let text = e.into_string();
            if text.contains("lock file") || text.contains("LOCK:") {
                StoreError::Locked(text)
            } else {
                StoreError::Db(text)
            }
        })?;
        index_content(&db)?;
        index_admins(&db)?;
        Ok(Self { db: Arc::new(db) })
    }

    /// The underlying database (for the committer and maintenance tools).
    pub fn db(&self) -> &rocksdb::DB {
        &self.db
    }

    /// Bytes held now by the store's memtables and block cache (at most
    /// [`MEMORY_BUDGET`]); 0 where RocksDB does not say.
    pub fn memory_bytes(&self) -> u64 {
        let property = |name: &str| self.db.property_int_value(name).ok().flatten().unwrap_or(0);
        property("rocksdb.cur-size-all-mem-tables") + property("rocksdb.block-cache-usage")
    }

    /// An identity by id.
    pub fn identity(&self, id: &str) -> Result<Option<Identity>, StoreError> {
        get_json(&*self.db, &keys::identity(id))
    }

    /// An identity by exact name.
    pub fn identity_by_name(&self, name: &str) -> Result<Option<Identity>, StoreError> {
        match self.db.get(keys::name(name))? {
            Some(id) => self.identity(&String::from_utf8_lossy(&id)),
            None => Ok(None),
        }
    }

    /// The identity a certificate (by SHA-256 hex fingerprint) is bound to.
    pub fn identity_by_fingerprint(
        &self,
        sha256_hex: &str,
    ) -> Result<Option<Identity>, StoreError> {
        match self.db.get(keys::fingerprint(sha256_hex))? {
            Some(id) => self.identity(&String::from_utf8_lossy(&id)),
            None => Ok(None),
        }
    }

    /// Whether the certificate of `auth` is bound to an identity, by its fingerprint or its
    /// content.
    pub fn is_bound(&self, auth: &crate::model::Authenticator) -> Result<bool, StoreError> {
        for k in keys::bound(auth) {
            if self.db.get(k)?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The pending enrollment with this token (found by the token's hash; the record
    /// holds no token).
    pub fn enrollment_by_token(&self, token: &str) -> Result<Option<Enrollment>, StoreError> {
        pending_by_token(&*self.db, token)
    }

    /// The pending enrollment with this id (the record holds no token).
    pub fn enrollment(&self, id: &str) -> Result<Option<Enrollment>, StoreError> {
        get_json(&*self.db, &keys::enrollment(id))
    }

    /// Moves the pending enrollments of a version that stored tokens to the hashed form,
    /// before any committer runs (`serve` calls it right after [`Store::open`], on the
    /// only handle). An old random token cannot be derived from the token key, so both its
    /// hash (devices holding the old JWT still redeem) and the derived token's hash (a JWT
    /// an admin downloads again redeems too) are indexed, and consumed together. The
    /// stored tokens and JWTs are dropped, the table files compacted and the store opened
    /// again (RocksDB's MANIFEST names the first and last key of every table file, and a
    /// new one is written at open), so that no copy of the store taken after this holds
    /// them. No marker: a scan of an empty prefix costs one seek, and records an older
    /// binary wrote after a downgrade are migrated at the next open all the same.
    /// Returns the store and how many enrollments were migrated.
    pub fn hash_tokens(self, key: &crate::token::TokenKey) -> Result<(Self, usize), StoreError> {
        let migrated = self.hash_tokens_in_place(key)?;
        if migrated == 0 {
            return Ok((self, 0));
        }
        let path = self.db.path().to_path_buf();
        let db = Arc::try_unwrap(self.db).map_err(|_| {
            StoreError::InvalidState("the store is in use; tokens are hashed at open".into())
        })?;
        drop(db);
        Ok((Self::open(&path, false)?, migrated))
    }

    fn hash_tokens_in_place(&self, key: &crate::token::TokenKey) -> Result<usize, StoreError> {
        let db = &*self.db;
        let mut wb = rocksdb::WriteBatch::default();
        let mut migrated = std::collections::HashSet::new();
        for item in db.prefix_iterator(keys::TOKEN) {
            let (k, v) = item?;
            if !k.starts_with(keys::TOKEN) {
                break;
            }
            let Ok(mut e) = decode::<Enrollment>(&k, &v) else {
                // Never the key: it holds the token.
                tracing::error!("a pending enrollment from before hashed tokens does not decode; left in place (see fsck)");
                continue;
            };
            let old = String::from_utf8_lossy(&k[keys::TOKEN.len()..]).into_owned();
            e.token_sha256 = vec![
                crate::token::token_sha256(&old),
                crate::token::token_sha256(&key.derive(&e.id)),
            ];
            e.token.clear();
            e.jwt.clear();
            for h in &e.token_sha256 {
                wb.put(keys::token_hash(h), e.id.as_bytes());
            }
            wb.put(
                keys::enrollment(&e.id),
                serde_json::to_vec(&e).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            );
            wb.delete(&k);
            migrated.insert(e.id);
        }
        // An id index of the old form left without its enrollment still holds a token.
        let mut dangling = 0usize;
        for item in db.prefix_iterator(keys::ENROLLMENT) {
            let (k, v) = item?;
            if !k.starts_with(keys::ENROLLMENT) {
                break;
            }
            let id = String::from_utf8_lossy(&k[keys::ENROLLMENT.len()..]).into_owned();
            if !v.starts_with(b"{") && !migrated.contains(&id) {
                wb.delete(&k);
                dangling += 1;
            }
        }
        if migrated.is_empty() && dangling == 0 {
            return Ok(0);
        }
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(true);
        db.write_opt(wb, &wo)?;
        // The old values stay in the memtable, the WAL and table files until compacted away.
        db.flush()?;
        let mut compact = rocksdb::CompactOptions::default();
        compact.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        db.compact_range_opt::<&[u8], &[u8]>(None, None, &compact);
        tracing::info!(
            enrollments = migrated.len(),
            dangling_indexes = dangling,
            "pending enrollments now keep only hashes of their tokens"
        );
        Ok(migrated.len())
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
        for item in self.db.prefix_iterator(keys::NAME) {
            let (k, v) = item?;
            if !k.starts_with(keys::NAME) {
                break;
            }
            let name = String::from_utf8_lossy(&k[keys::NAME.len()..]);
            if !filter(&name) {
                continue;
            }
            let id = String::from_utf8_lossy(&v);
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
                continue;
            }
            if total >= offset && ids.len() < limit {
                ids.push(id.into_owned());
            }
            total += 1;
        }
        for id in ids {
            if let Some(identity) = self.identity(&id)? {
                items.push(identity);
            }
        }
        Ok(Page { items, total })
    }

    /// A CA by id.
    pub fn ca(&self, id: &str) -> Result<Option<Ca>, StoreError> {
        get_json(&*self.db, &keys::ca(id))
    }

    /// A CA by exact name.
    pub fn ca_by_name(&self, name: &str) -> Result<Option<Ca>, StoreError> {
        match self.db.get(keys::ca_name(name))? {
            Some(id) => self.ca(&String::from_utf8_lossy(&id)),
            None => Ok(None),
        }
    }

    /// Every CA, in id order.
    pub fn all_cas(&self) -> Result<Vec<Ca>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.prefix_iterator(keys::CA) {
            let (k, v) = item?;
            if !k.starts_with(keys::CA) {
                break;
            }
            out.push(decode(&k, &v)?);
        }
        Ok(out)
    }

    /// Every identity for which `keep` holds, in id order. A scan of every identity: for
    /// rare administrative questions (what deleting a CA touches), never the request path.
    pub fn identities_where(
        &self,
        keep: &mut dyn FnMut(&Identity) -> bool,
    ) -> Result<Vec<Identity>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.prefix_iterator(keys::IDENTITY) {
            let (k, v) = item?;
            if !k.starts_with(keys::IDENTITY) {
                break;
            }
            let identity: Identity = decode(&k, &v)?;
            if keep(&identity) {
                out.push(identity);
            }
        }
        Ok(out)
    }

    /// Every pending enrollment for which `keep` holds, in id order (a scan, as above).
    pub fn enrollments_where(
        &self,
        keep: &dyn Fn(&Enrollment) -> bool,
    ) -> Result<Vec<Enrollment>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.prefix_iterator(keys::ENROLLMENT) {
            let (k, v) = item?;
            if !k.starts_with(keys::ENROLLMENT) {
                break;
            }
            let enrollment: Enrollment = decode(&k, &v)?;
            if keep(&enrollment) {
                out.push(enrollment);
            }
        }
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
        for item in self.db.prefix_iterator(keys::ENROLLMENT) {
            let (k, v) = item?;
            if !k.starts_with(keys::ENROLLMENT) {
                break;
            }
            if total >= offset && items.len() < limit {
                items.push(decode(&k, &v)?);
            }
            total += 1;
        }
        Ok(Page { items, total })
    }

    /// Applies commands at once, in one synced write, on the calling thread (used by
    /// `init`, before any committer runs).
    pub fn apply_now(
        &self,
        cmds: Vec<Command>,
    ) -> Result<Vec<Result<Outcome, StoreError>>, StoreError> {
        let mut batch = apply::Batch::new(&*self.db);
        let results: Vec<_> = cmds.into_iter().map(|c| batch.apply(c)).collect();
        let wb = batch.into_write_batch();
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(wb, &wo)?;
        Ok(results)
    }
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
        let cert = crate::pki::self_signed_for_tests("dev");
        let other = crate::pki::self_signed_for_tests("other");
        let tbs = crate::pki::fingerprint::tbs_sha256_hex(cert.der()).unwrap();
        {
            let store = Store::open(&path, true).unwrap();
            let db = store.db();
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
        assert_eq!(store.db().get(keys::content(&tbs)).unwrap().unwrap(), b"a");
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
            store.db().get(keys::content(&c_tbs)).unwrap().unwrap(),
            b"c"
        );
        assert!(store.db().get(keys::CONTENT_INDEXED).unwrap().is_some());
    }

    /// Every file under `dir`, read whole.
    fn files_under(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
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
            let db = store.db();
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
        let records = crate::ops::backup::read_all(&path).unwrap();
        let report = crate::ops::fsck::check(records);
        assert_eq!(report.violations, vec![]);
        assert_eq!(report.enrollments, 1);
    }

    /// A store from before the admin index: its enrolled admins are indexed when it is
    /// opened, once; a pending admin and a device are not.
    #[test]
    fn opening_an_older_store_indexes_its_admins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let cert = crate::pki::self_signed_for_tests("dev");
        {
            let store = Store::open(&path, true).unwrap();
            let db = store.db();
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
            .db()
            .prefix_iterator(keys::ADMIN)
            .map(|item| item.unwrap().0.to_vec())
            .take_while(|k| k.starts_with(keys::ADMIN))
            .collect();
        assert_eq!(indexed, vec![keys::admin("admin")]);
        assert!(store.db().get(keys::ADMIN_INDEXED).unwrap().is_some());
    }

    /// The marker missing from a store whose newer records are indexed (written by this
    /// version, the marker lost): an older record with the same content is not indexed
    /// over the one already there, and a record that does not decode does not stop the
    /// open.
    #[test]
    fn an_indexed_record_keeps_its_content_and_a_broken_record_does_not_stop_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let cert = crate::pki::self_signed_for_tests("dev");
        let tbs = crate::pki::fingerprint::tbs_sha256_hex(cert.der()).unwrap();
        {
            let store = Store::open(&path, true).unwrap();
            let db = store.db();
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
        assert_eq!(store.db().get(keys::content(&tbs)).unwrap().unwrap(), b"z");
        let a = store.identity("a").unwrap().unwrap();
        assert!(a.authenticator.unwrap().tbs_sha256.is_empty());
        assert!(store.db().get(keys::CONTENT_INDEXED).unwrap().is_some());
    }
}
