//! A backend in memory that checks every expectation, as a shared database would, and can
//! be told to fail its next commits: the committer's conflict handling and the backend
//! contract are tested on it without a database. Not offered to operators.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use super::backend::{
    Backend, Change, CommitError, Expect, Source, Version, Versioned, Visit, WriteSet,
};
use super::StoreError;

/// What the next commit does instead of its work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Reports every key of the write set as conflicting, writing nothing (as if another
    /// writer had just changed them all).
    Conflict,
    /// Fails before writing (the database unreachable).
    Fail,
    /// Applies the write set (`landed`) or not, and reports the outcome unknown.
    Unknown {
        /// Whether the write set was applied.
        landed: bool,
    },
    /// Another writer commits this change first (`None` deletes), then the commit goes on
    /// and meets it.
    Behind(Vec<u8>, Option<Vec<u8>>),
}

#[derive(Debug, Default)]
struct State {
    records: BTreeMap<Vec<u8>, (Vec<u8>, Version)>,
    last_version: Version,
    faults: VecDeque<Fault>,
    commits: u64,
}

/// The in-memory backend.
#[derive(Debug, Default)]
pub struct Memory {
    state: Mutex<State>,
}

impl Memory {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while the lock was held leaves the map consistent (writes are applied
        // after every check): carry on with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the next commit fail with `fault` (faults queue up, one per commit).
    pub fn inject(&self, fault: Fault) {
        self.state().faults.push_back(fault);
    }

    /// Commits that reached the backend, applied or not.
    pub fn commits(&self) -> u64 {
        self.state().commits
    }

    /// Writes `key` as another writer would, outside any write set (`None` deletes).
    pub fn write_behind(&self, key: &[u8], value: Option<&[u8]>) {
        self.state().put(key.to_vec(), value.map(<[u8]>::to_vec));
    }
}

impl State {
    fn version(&self, key: &[u8]) -> Option<Version> {
        self.records.get(key).map(|(_, v)| *v)
    }

    /// The keys of `set` whose expectation does not hold now.
    fn conflicts(&self, set: &WriteSet) -> Vec<Vec<u8>> {
        let expected = set.expect.iter().map(|e| match e {
            Expect::Absent(k) => (k, None),
            Expect::At(k, v) => (k, Some(*v)),
        });
        let changed = set.changes.iter().map(|c| match c {
            Change::Insert(k, _) => (k, None),
            Change::Update(k, _, v) | Change::Delete(k, v) => (k, Some(*v)),
        });
        expected
            .chain(changed)
            .filter(|(k, want)| self.version(k) != *want)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Writes `key` at a new version (`None` deletes).
    fn put(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        match value {
            Some(v) => {
                self.last_version += 1;
                let version = self.last_version;
                self.records.insert(key, (v, version));
            }
            None => {
                self.records.remove(&key);
            }
        }
    }

    fn apply(&mut self, set: &WriteSet) {
        for change in &set.changes {
            match change {
                Change::Insert(k, v) | Change::Update(k, v, _) => {
                    self.put(k.clone(), Some(v.clone()));
                }
                Change::Delete(k, _) => self.put(k.clone(), None),
            }
        }
    }
}

impl Source for Memory {
    fn read(&self, key: &[u8]) -> Result<Option<Versioned>, StoreError> {
        Ok(self
            .state()
            .records
            .get(key)
            .map(|(value, version)| Versioned {
                value: value.clone(),
                version: *version,
            }))
    }

    fn scan(&self, prefix: &[u8], f: &mut Visit<'_>) -> Result<(), StoreError> {
        // A copy: `f` may read the backend again.
        let under: Vec<(Vec<u8>, Vec<u8>, Version)> = self
            .state()
            .records
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (v, version))| (k.clone(), v.clone(), *version))
            .collect();
        for (k, v, version) in under {
            if !f(&k, &v, version) {
                break;
            }
        }
        Ok(())
    }
}

impl Backend for Memory {
    fn commit(&self, set: &WriteSet, _durable: bool) -> Result<(), CommitError> {
        let mut state = self.state();
        state.commits += 1;
        match state.faults.pop_front() {
            Some(Fault::Conflict) => {
                return Err(CommitError::Conflict(
                    set.keys().into_iter().map(<[u8]>::to_vec).collect(),
                ))
            }
            Some(Fault::Fail) => {
                return Err(CommitError::Failed(StoreError::Unavailable(
                    "injected failure".into(),
                )))
            }
            Some(Fault::Unknown { landed }) => {
                if landed && state.conflicts(set).is_empty() {
                    state.apply(set);
                }
                return Err(CommitError::Unknown(StoreError::Unavailable(
                    "injected: the connection dropped during the commit".into(),
                )));
            }
            Some(Fault::Behind(key, value)) => state.put(key, value),
            None => {}
        }
        let conflicts = state.conflicts(set);
        if !conflicts.is_empty() {
            return Err(CommitError::Conflict(conflicts));
        }
        state.apply(set);
        Ok(())
    }

    fn shared(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    fn probe(&self) -> bool {
        !matches!(self.state().faults.front(), Some(Fault::Fail))
    }
}
