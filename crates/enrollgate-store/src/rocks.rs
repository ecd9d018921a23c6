//! The embedded RocksDB backend, and what only RocksDB does: its table and cache options,
//! its memory budget, the migrations of older stores at open, and the reading of a store
//! beside the daemon through a secondary instance (for `backup` and `fsck`, which
//! `ops::backup` orchestrates).
//!
//! One process holds the database's lock, and its one committer thread writes: every
//! expectation of a write set holds by construction, so a commit is one `WriteBatch`,
//! synced or not, with no check. Every record is at version 0.

use std::path::Path;
use std::sync::Arc;

use super::backend::{Backend, Change, CommitError, Source, Versioned, Visit, WriteSet};
use super::{decode, keys, Store, StoreError};
use crate::model::{Enrollment, Identity};

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

/// Whether `path` surely holds no store: no RocksDB `CURRENT` file. A permission error
/// is not an answer, and is left to RocksDB, which names it.
pub fn absent(path: &Path) -> bool {
    std::fs::metadata(path.join("CURRENT")).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
}

/// Every record of the store at `path`, read consistently beside the daemon that holds it
/// open: a RocksDB *secondary* instance (made for reading while the primary writes; it takes
/// no lock) caught up with the primary's WAL, iterated at one point in time. For `backup`
/// and `fsck`.
pub fn read_all_beside(path: &Path) -> Result<Vec<super::Record>, StoreError> {
    let scratch = tempfile::Builder::new()
        .prefix("enrollgate-secondary-")
        .tempdir()
        .map_err(|e| StoreError::Db(format!("scratch directory: {e}")))?;
    let mut opts = rocksdb::Options::default();
    opts.set_max_open_files(-1);
    let db = rocksdb::DB::open_as_secondary(&opts, path, scratch.path()).map_err(|e| {
        StoreError::Db(format!(
            "cannot open the store at {}: {}",
            path.display(),
            e.into_string()
        ))
    })?;
    db.try_catch_up_with_primary()?;
    // An iterator reads one consistent point in time (it pins an implicit snapshot;
    // secondary instances do not offer explicit ones).
    let mut out = Vec::new();
    for item in db.iterator(rocksdb::IteratorMode::Start) {
        let (k, v) = item?;
        out.push((k.to_vec(), v.to_vec()));
    }
    Ok(out)
}

/// Writes `records` into a new RocksDB store at `out` (this module's options), synced and
/// flushed: a backup's copy.
pub fn write_new(out: &Path, records: &[super::Record]) -> Result<(), StoreError> {
    let mut opts = options();
    opts.create_if_missing(true);
    let db = rocksdb::DB::open(&opts, out)?;
    for chunk in records.chunks(4096) {
        let mut wb = rocksdb::WriteBatch::default();
        for (k, v) in chunk {
            wb.put(k, v);
        }
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(true);
        db.write_opt(wb, &wo)?;
    }
    db.flush()?;
    Ok(())
}

/// The backend on an opened RocksDB.
pub struct Rocks {
    db: Arc<rocksdb::DB>,
    synced: rocksdb::WriteOptions,
    relaxed: rocksdb::WriteOptions,
}

impl std::fmt::Debug for Rocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rocks")
            .field("path", &self.db.path())
            .finish()
    }
}

impl Rocks {
    /// The backend on `db`.
    pub fn new(db: Arc<rocksdb::DB>) -> Self {
        let mut synced = rocksdb::WriteOptions::default();
        synced.set_sync(true);
        Self {
            db,
            synced,
            relaxed: rocksdb::WriteOptions::default(),
        }
    }
}

impl Source for rocksdb::DB {
    fn read(&self, key: &[u8]) -> Result<Option<Versioned>, StoreError> {
        Ok(self.get(key)?.map(|value| Versioned { value, version: 0 }))
    }

    fn scan(&self, prefix: &[u8], f: &mut Visit<'_>) -> Result<(), StoreError> {
        let mode = rocksdb::IteratorMode::From(prefix, rocksdb::Direction::Forward);
        for item in self.iterator(mode) {
            let (k, v) = item?;
            if !k.starts_with(prefix) || !f(&k, &v, 0) {
                break;
            }
        }
        Ok(())
    }
}

impl Source for Rocks {
    fn read(&self, key: &[u8]) -> Result<Option<Versioned>, StoreError> {
        self.db.read(key)
    }

    fn scan(&self, prefix: &[u8], f: &mut Visit<'_>) -> Result<(), StoreError> {
        self.db.scan(prefix, f)
    }
}

impl Backend for Rocks {
    fn commit(&self, set: &WriteSet, durable: bool) -> Result<(), CommitError> {
        let mut wb = rocksdb::WriteBatch::default();
        for change in &set.changes {
            match change {
                Change::Insert(k, v) | Change::Update(k, v, _) => wb.put(k, v),
                Change::Delete(k, _) => wb.delete(k),
            }
        }
        let opts = if durable { &self.synced } else { &self.relaxed };
        self.db
            .write_opt(wb, opts)
            .map_err(|e| CommitError::Failed(e.into()))
    }

    fn shared(&self) -> bool {
        false
    }

    fn kind(&self) -> &'static str {
        "rocksdb"
    }

    fn probe(&self) -> bool {
        let mut wb = rocksdb::WriteBatch::default();
        wb.put(PROBE_KEY, b"");
        wb.delete(PROBE_KEY);
        self.db.write_opt(wb, &self.relaxed).is_ok()
    }
}

/// The key [`Rocks::probe`] writes and deletes at once.
pub(crate) const PROBE_KEY: &[u8] = b"m:probe";

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
        let db = Arc::new(db);
        Ok(Store {
            rocks: Some(db.clone()),
            ..Store::on(Arc::new(Rocks::new(db)))
        })
    }

    /// Bytes held now by the store's memtables and block cache (at most
    /// [`MEMORY_BUDGET`]); 0 where RocksDB does not say.
    pub fn memory_bytes(&self) -> u64 {
        let Some(db) = self.rocks() else {
            return 0;
        };
        let property = |name: &str| db.property_int_value(name).ok().flatten().unwrap_or(0);
        property("rocksdb.cur-size-all-mem-tables") + property("rocksdb.block-cache-usage")
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
        let Some(db) = self.rocks else {
            return Ok((self, 0));
        };
        let path = db.path().to_path_buf();
        // Both handles (ours and the backend's) must go for the database to close.
        drop(self.backend);
        let db = Arc::try_unwrap(db).map_err(|_| {
            StoreError::InvalidState("the store is in use; tokens are hashed at open".into())
        })?;
        drop(db);
        Ok((Self::open(&path, false)?, migrated))
    }

    fn hash_tokens_in_place(&self, key: &crate::token::TokenKey) -> Result<usize, StoreError> {
        let Some(db) = self.rocks() else {
            return Ok(0);
        };
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
}
