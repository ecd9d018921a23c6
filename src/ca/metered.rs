//! The CA set as a worker's request path uses it, wrapped so that every verification is
//! recorded (the cache lookup, the signatures checked and remembered, the time taken), in
//! the manner of linkerd2-proxy's metric layers: the verifier itself ([`CaSet::check`])
//! records nothing, and tests and tools use it bare.

use std::ops::Deref;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;

use super::chain::{CaSet, ChainError};
use super::memo::SignatureMemo;
use crate::clock::UnixTime;
use crate::model::Ca;

/// A CA set whose verifications are recorded; everything else is the set's
/// (`Deref`).
#[derive(Debug, Clone)]
pub struct MeteredCas(Arc<CaSet>);

impl MeteredCas {
    /// Wraps `set`.
    pub fn new(set: Arc<CaSet>) -> Self {
        Self(set)
    }

    /// [`CaSet::verify`], recorded.
    pub fn verify(
        &self,
        chain: &[CertificateDer<'_>],
        now: UnixTime,
        refusal: &str,
        memo: &SignatureMemo,
        accept: impl Fn(&Ca) -> bool,
    ) -> Result<&Ca, ChainError> {
        let started = std::time::Instant::now();
        let v = self.0.check(chain, now, refusal, memo, accept);
        crate::telemetry::chain_verification(
            v.cache_hit,
            v.signatures.checked,
            v.signatures.remembered,
            started.elapsed(),
        );
        v.result
    }
}

impl Deref for MeteredCas {
    type Target = CaSet;

    fn deref(&self) -> &CaSet {
        &self.0
    }
}
