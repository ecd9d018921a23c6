//! The storage seam: what a backend offers the committer, and nothing of how it keeps it.
//!
//! The decisions (`apply`) read through a [`Source`] and produce a [`WriteSet`]: the
//! changes, each saying what it replaces (an insert replaces nothing, an update or a
//! delete one version), and the expectations, the version or the absence of every key the
//! decisions read and did not change. A backend applies a write set all or nothing, or
//! reports the keys whose expectations failed ([`CommitError::Conflict`]); the committer
//! then reads again and decides the batch again. This is Teleport's `AtomicWrite`, with
//! the decision logic above it written once.
//!
//! - RocksDB ([`super::rocks`]) has one writer, the committer of the one process that holds
//!   the database's lock: every expectation holds by construction, and it checks none.
//! - The in-memory backend ([`super::memory`]) checks every expectation, and can be told
//!   to make a commit fail, so that the committer's retry and the contract tests run
//!   without a database.
//! - PostgreSQL ([`super::pg`]) checks them under row locks, in one transaction per
//!   write set, because other gateways commit to the same database.
//!
//! Index keys are never written blind: a key the decisions did not read is read before its
//! change is recorded, so a create is always an insert that fails on a conflict, never an
//! overwrite (an upsert would let two nodes each bind one certificate).

use super::StoreError;

/// A record's version: a number that changes whenever the record is written, and is never
/// given twice to one key (a key deleted and created again has a new one). Backends with
/// one writer give every record version 0.
pub type Version = i64;

/// A stored value and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The value.
    pub value: Vec<u8>,
    /// Its version.
    pub version: Version,
}

/// What a decision read, which must still hold when its write set commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// The key was absent.
    Absent(Vec<u8>),
    /// The key was at this version.
    At(Vec<u8>, Version),
}

impl Expect {
    /// The key expected.
    pub fn key(&self) -> &[u8] {
        match self {
            Expect::Absent(k) | Expect::At(k, _) => k,
        }
    }
}

/// One change of a write set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Create a key that is absent; a conflict if it exists.
    Insert(Vec<u8>, Vec<u8>),
    /// Replace the value of a key at this version; a conflict otherwise.
    Update(Vec<u8>, Vec<u8>, Version),
    /// Delete a key at this version; a conflict otherwise.
    Delete(Vec<u8>, Version),
}

impl Change {
    /// The key changed.
    pub fn key(&self) -> &[u8] {
        match self {
            Change::Insert(k, _) | Change::Update(k, _, _) | Change::Delete(k, _) => k,
        }
    }
}

/// What one atomic commit writes and what it expects: at most one entry per key, each list
/// sorted by key (the order in which a backend takes its locks).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteSet {
    /// Keys read and left unchanged, with what was read.
    pub expect: Vec<Expect>,
    /// The changes.
    pub changes: Vec<Change>,
}

impl WriteSet {
    /// True when nothing changes.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Every key the write set expects or changes, sorted.
    pub fn keys(&self) -> Vec<&[u8]> {
        let mut keys: Vec<&[u8]> = self
            .expect
            .iter()
            .map(Expect::key)
            .chain(self.changes.iter().map(Change::key))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }
}

/// A commit that did not happen, or may not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    /// Another writer changed what the decisions read: nothing was written. The keys are
    /// those found changed.
    #[error("conflict on {} key(s)", .0.len())]
    Conflict(Vec<Vec<u8>>),
    /// The backend refused or failed before committing: nothing was written.
    #[error(transparent)]
    Failed(StoreError),
    /// The connection dropped while the commit was under way and the backend could not
    /// learn whether it landed. The committer never acknowledges such a write.
    #[error("the outcome of a commit is unknown: {0}")]
    Unknown(StoreError),
}

/// What a scan calls on each record (key, value, version): true to go on.
pub type Visit<'a> = dyn FnMut(&[u8], &[u8], Version) -> bool + 'a;

/// Reads with versions: what a batch decides over.
pub trait Source {
    /// The record at `key`, with its version.
    fn read(&self, key: &[u8]) -> Result<Option<Versioned>, StoreError>;

    /// Calls `f` on every record under `prefix` in key order, until it returns false.
    fn scan(&self, prefix: &[u8], f: &mut Visit<'_>) -> Result<(), StoreError>;

    /// The records at `keys`, in order: one round trip where the backend has them.
    fn read_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Versioned>>, StoreError> {
        keys.iter().map(|k| self.read(k)).collect()
    }
}

/// What a change feed calls on a change: true to go on listening.
pub type Changed = dyn FnMut() -> bool + Send;

/// A change feed's thread, if the backend has one.
pub type Watching = Option<std::thread::JoinHandle<()>>;

/// A store backend.
pub trait Backend: Source + Send + Sync + std::fmt::Debug {
    /// Applies `set` entirely, or nothing of it. `durable`: the write is on stable storage
    /// when this returns (the backend's own meaning of it: an fsync, a synchronous
    /// replica).
    fn commit(&self, set: &WriteSet, durable: bool) -> Result<(), CommitError>;

    /// Whether other processes may write the same data, so that expectations must be
    /// checked (and reads may be stale by the time a batch commits).
    fn shared(&self) -> bool;

    /// The backend's name, for logs and metrics: `rocksdb`, `memory`, `postgresql`.
    fn kind(&self) -> &'static str;

    /// Whether the backend takes writes now: a write that leaves nothing behind, or a
    /// round trip. The committer asks, once a second, while writes are being refused, so
    /// that readiness follows the store and not the traffic.
    fn probe(&self) -> bool;

    /// The change feed: calls `changed`, on a thread of its own, soon after another process
    /// changed a CA record (at most `poll` late), until it returns false. A backend with
    /// one writer has none: its own committer's changes are seen where they are made.
    fn watch_cas(
        &self,
        _poll: std::time::Duration,
        _changed: Box<Changed>,
    ) -> std::io::Result<Watching> {
        Ok(None)
    }

    /// Round trips to the database the calling thread made so far (0 for an embedded
    /// one): the committer reports its own per batch.
    fn round_trips(&self) -> u64 {
        0
    }
}

impl<T: Source + ?Sized> super::Snapshot for T {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.read(key)?.map(|v| v.value))
    }

    fn any_under(
        &self,
        prefix: &[u8],
        pred: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<bool, StoreError> {
        let mut found = false;
        self.scan(prefix, &mut |k, v, _| {
            found = pred(k, v);
            !found
        })?;
        Ok(found)
    }
}

/// A source whose records at some keys were read ahead, all in one round trip: reads of
/// those keys are answered from memory (with the version read then), others go through.
pub struct Prefetched<'a> {
    source: &'a dyn Backend,
    known: std::collections::HashMap<Vec<u8>, Option<Versioned>>,
}

impl<'a> Prefetched<'a> {
    /// Reads `keys` from `source` at once.
    pub fn read(source: &'a dyn Backend, mut keys: Vec<Vec<u8>>) -> Result<Self, StoreError> {
        keys.sort_unstable();
        keys.dedup();
        let values = if keys.is_empty() {
            Vec::new()
        } else {
            source.read_many(&keys)?
        };
        Ok(Self {
            source,
            known: keys.into_iter().zip(values).collect(),
        })
    }
}

impl Source for Prefetched<'_> {
    fn read(&self, key: &[u8]) -> Result<Option<Versioned>, StoreError> {
        match self.known.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.source.read(key),
        }
    }

    fn scan(&self, prefix: &[u8], f: &mut Visit<'_>) -> Result<(), StoreError> {
        self.source.scan(prefix, f)
    }
}

/// A map as a source, every record at version 0: for the decisions' unit tests.
impl Source for std::collections::BTreeMap<Vec<u8>, Vec<u8>> {
    fn read(&self, key: &[u8]) -> Result<Option<Versioned>, StoreError> {
        Ok(self.get(key).map(|v| Versioned {
            value: v.clone(),
            version: 0,
        }))
    }

    fn scan(&self, prefix: &[u8], f: &mut Visit<'_>) -> Result<(), StoreError> {
        for (k, v) in self
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
        {
            if !f(k, v, 0) {
                break;
            }
        }
        Ok(())
    }
}
