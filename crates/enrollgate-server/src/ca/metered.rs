//! A worker's view of the CA registry ([`WorkerCas`]), and the CA set as its request path
//! uses it, wrapped so that every verification is recorded (the cache lookup, the signatures checked and remembered, the time taken), in
//! the manner of linkerd2-proxy's metric layers: the verifier itself ([`CaSet::check`])
//! records nothing, and tests and tools use it bare.

use std::cell::{Cell, RefCell};
use std::ops::Deref;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;

use super::chain::{CaSet, ChainError, Verifier};
use super::memo::SignatureMemo;
use super::registry::CaRegistry;
use crate::clock::UnixTime;
use crate::model::Ca;

/// A worker's CA set as its request path uses it: its verifications use the worker's
/// memo and are recorded; everything else is the set's (`Deref`).
#[derive(Debug, Clone)]
pub struct MeteredCas<'w> {
    set: Arc<CaSet>,
    memo: &'w SignatureMemo,
}

impl MeteredCas<'_> {
    /// [`CaSet::verify`] with the worker's memo, recorded.
    pub fn verify(
        &self,
        chain: &[CertificateDer<'_>],
        now: UnixTime,
        refusal: &str,
        accept: impl Fn(&Ca) -> bool,
    ) -> Result<&Ca, ChainError> {
        let started = std::time::Instant::now();
        let v = self.set.check(chain, now, refusal, self.memo, accept);
        crate::telemetry::chain_verification(
            v.cache_hit,
            v.signatures.checked,
            v.signatures.remembered,
            started.elapsed(),
        );
        v.result
    }
}

impl Verifier for MeteredCas<'_> {
    fn verify(
        &self,
        chain: &[CertificateDer<'_>],
        now: UnixTime,
        refusal: &str,
        accept: &dyn Fn(&Ca) -> bool,
    ) -> Result<&Ca, ChainError> {
        MeteredCas::verify(self, chain, now, refusal, accept)
    }

    fn ca(&self, id: &str) -> Option<&Ca> {
        self.set.get(id)
    }
}

impl Deref for MeteredCas<'_> {
    type Target = CaSet;

    fn deref(&self) -> &CaSet {
        &self.set
    }
}

/// One worker's view of the registry, and the signatures it already checked.
pub struct WorkerCas {
    generation: Cell<u64>,
    set: RefCell<Arc<CaSet>>,
    memo: SignatureMemo,
}

impl std::fmt::Debug for WorkerCas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerCas")
            .field("generation", &self.generation.get())
            .finish()
    }
}

impl WorkerCas {
    /// A view that loads on first use.
    pub fn new() -> Self {
        Self {
            generation: Cell::new(0),
            set: RefCell::new(Arc::new(CaSet::default())),
            memo: SignatureMemo::default(),
        }
    }

    /// The current set, its verifications recorded: one atomic load when nothing changed.
    pub fn current(&self, registry: &CaRegistry) -> MeteredCas<'_> {
        if registry.generation() != self.generation.get() {
            let (generation, set) = registry.snapshot();
            self.generation.set(generation);
            *self.set.borrow_mut() = set;
        }
        MeteredCas {
            set: self.set.borrow().clone(),
            memo: &self.memo,
        }
    }
}

impl Default for WorkerCas {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::Store;

    fn root_pem(cn: &str) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.self_signed(&key).unwrap().pem()
    }

    fn ca(id: &str, pem: &str) -> Ca {
        Ca {
            id: id.into(),
            name: id.into(),
            cert_pem: pem.into(),
            fingerprint: id.into(),
            is_verified: true,
            verification_token: "t".into(),
            is_auto_ca_enrollment_enabled: true,
            is_ott_ca_enrollment_enabled: false,
            is_auth_enabled: true,
            identity_roles: vec![],
            identity_name_format: crate::model::DEFAULT_NAME_FORMAT.into(),
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn workers_follow_the_registry_generation() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), true).unwrap();
        let registry = CaRegistry::load(&store).unwrap();
        let view = WorkerCas::new();
        assert!(view.current(&registry).is_empty());
        let a = root_pem("a");
        store
            .apply_now(vec![crate::store::Command::CreateCa { ca: ca("A", &a) }])
            .unwrap()
            .pop()
            .unwrap()
            .unwrap();
        assert!(view.current(&registry).is_empty(), "not reloaded yet");
        registry.reload(&store).unwrap();
        assert_eq!(view.current(&registry).len(), 1);
    }
}
