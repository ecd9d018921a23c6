//! The shared, current CA set and its generation.
//!
//! The CAs are read from the store and parsed once into a [`CaSet`], shared as an `Arc`
//! snapshot. A change to any CA (create, update, verify, delete) rebuilds the set and bumps
//! a generation counter; each worker keeps its own `Arc` and compares one atomic integer per
//! request, so the request path takes no lock and every worker follows CA changes without a
//! restart.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::chain::CaSet;
use crate::store::{Store, StoreError};

/// The shared, current CA set and its generation.
pub struct CaRegistry {
    generation: AtomicU64,
    current: Mutex<Arc<CaSet>>,
}

impl std::fmt::Debug for CaRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaRegistry")
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .finish()
    }
}

impl CaRegistry {
    /// Loads every CA from the store.
    pub fn load(store: &Store) -> Result<Self, StoreError> {
        let set = CaSet::build(store.all_cas()?);
        crate::telemetry::ca_cache(set.len());
        Ok(Self {
            generation: AtomicU64::new(1),
            current: Mutex::new(Arc::new(set)),
        })
    }

    /// Rebuilds the set from the store (after a CA change was committed). Reading and
    /// swapping happen under one lock, so the last rebuild always reflects the last commit.
    pub fn reload(&self, store: &Store) -> Result<(), StoreError> {
        let mut current = match self.current.lock() {
            Ok(g) => g,
            // A panic while swapping cannot leave the Arc half-written: carry on.
            Err(poisoned) => poisoned.into_inner(),
        };
        *current = Arc::new(CaSet::build(store.all_cas()?));
        crate::telemetry::ca_cache(current.len());
        self.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// The generation of the current set: it changes with every reload.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The generation of the current set, and the set.
    pub(crate) fn snapshot(&self) -> (u64, Arc<CaSet>) {
        let current = match self.current.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        (self.generation.load(Ordering::Acquire), current.clone())
    }
}
