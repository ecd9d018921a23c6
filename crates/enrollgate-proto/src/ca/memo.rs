//! Remembered signature checks, for chains that share their upper certificates.
//!
//! A fleet's devices present chains that differ only in the leaf: the intermediate, and its
//! signature by the CA, are the same for thousands of them. Checking that signature again
//! for each device costs an ECDSA verification (about 50 µs of P-256, half of the chain's
//! cost) for an answer already known: signature verification is a pure function of the
//! algorithm, the public key, the message and the signature.
//!
//! [`SignatureMemo`] wraps the signature algorithms handed to rustls-webpki: each check is
//! keyed by a SHA-256 of exactly those inputs, and a key is remembered only after the real
//! check succeeded. Everything else webpki does (path building, validity at the request's
//! time, basic and name constraints, path length, EKU) still runs for every chain; only the
//! arithmetic of a signature already verified is skipped. A failed check is never
//! remembered.
//!
//! The memo is per worker (its lock is never contended) and bounded: two generations of at
//! most `per_generation` keys; when the current one is full it becomes the previous one and
//! the older is dropped, and a key found in the previous generation moves back to the
//! current one. An intermediate used by every device therefore stays, while the leaves'
//! signatures, each seen once, pass through.

use std::collections::HashSet;
use std::sync::Mutex;

use aws_lc_rs::digest;
use rustls_pki_types::{AlgorithmIdentifier, InvalidSignature, SignatureVerificationAlgorithm};

/// Keys per generation of a worker's memo: at most twice as many are kept (about 80 KiB).
/// Each new device adds its leaf's key, so a generation turns over every 1,024 chains; a
/// CA signature used at least once in that time stays.
pub const PER_GENERATION: usize = 1024;

type Key = [u8; 32];

#[derive(Default)]
struct Generations {
    current: HashSet<Key>,
    previous: HashSet<Key>,
}

/// A bounded set of signature checks that succeeded. See the module documentation.
pub struct SignatureMemo {
    per_generation: usize,
    keys: Mutex<Generations>,
}

impl std::fmt::Debug for SignatureMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (current, previous) = self.lens();
        f.debug_struct("SignatureMemo")
            .field("per_generation", &self.per_generation)
            .field("current", &current)
            .field("previous", &previous)
            .finish()
    }
}

impl Default for SignatureMemo {
    fn default() -> Self {
        Self::new(PER_GENERATION)
    }
}

/// How the signatures of one chain verification were settled.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MemoCounts {
    /// Signatures checked (their arithmetic ran).
    pub checked: u32,
    /// Signatures found already checked.
    pub remembered: u32,
}

impl SignatureMemo {
    /// A memo of at most `2 * per_generation` keys; 0 remembers nothing.
    pub fn new(per_generation: usize) -> Self {
        Self {
            per_generation,
            keys: Mutex::new(Generations::default()),
        }
    }

    /// A memo that remembers nothing: every signature is checked.
    pub fn off() -> Self {
        Self::new(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        // Sets of hashes are never left half-updated by a panic: carry on.
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lens(&self) -> (usize, usize) {
        let g = self.lock();
        (g.current.len(), g.previous.len())
    }

    fn key(alg: usize, public_key: &[u8], message: &[u8], signature: &[u8]) -> Key {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(&(alg as u32).to_be_bytes());
        for part in [public_key, message, signature] {
            // Length-prefixed, so that no two different inputs hash the same bytes.
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(ctx.finish().as_ref());
        key
    }

    /// Whether `key` was remembered (only asked of a memo that remembers: see
    /// [`Remembering`], which checks every signature of one that does not).
    fn recall(&self, key: &Key) -> bool {
        let mut g = self.lock();
        if g.current.contains(key) {
            return true;
        }
        if g.previous.remove(key) {
            Self::insert(&mut g, *key, self.per_generation);
            return true;
        }
        false
    }

    fn remember(&self, key: Key) {
        let mut g = self.lock();
        Self::insert(&mut g, key, self.per_generation);
    }

    fn insert(g: &mut Generations, key: Key, per_generation: usize) {
        if g.current.len() >= per_generation {
            g.previous = std::mem::take(&mut g.current);
        }
        g.current.insert(key);
    }

    /// The chain verification algorithms ([`signature_algorithms`]), each
    /// wrapped to consult and feed this memo; the wrappers count what they did into
    /// `counts`. The list is fixed here, not taken from callers: a key holds an algorithm's
    /// position in it, which must always mean the same algorithm.
    pub(crate) fn wrap<'a>(&'a self, counts: &'a Counts) -> Vec<Remembering<'a>> {
        self.wrap_list(signature_algorithms(), counts)
    }

    fn wrap_list<'a>(
        &'a self,
        algs: &'a [&'a dyn SignatureVerificationAlgorithm],
        counts: &'a Counts,
    ) -> Vec<Remembering<'a>> {
        algs.iter()
            .enumerate()
            .map(|(index, &inner)| Remembering {
                inner,
                index,
                memo: self,
                counts,
            })
            .collect()
    }
}

/// Counters shared by the wrappers of one verification (webpki needs `Sync` algorithms).
#[derive(Debug, Default)]
pub(crate) struct Counts {
    checked: std::sync::atomic::AtomicU32,
    remembered: std::sync::atomic::AtomicU32,
}

impl Counts {
    pub(crate) fn get(&self) -> MemoCounts {
        use std::sync::atomic::Ordering::Relaxed;
        MemoCounts {
            checked: self.checked.load(Relaxed),
            remembered: self.remembered.load(Relaxed),
        }
    }
}

/// One signature algorithm, consulting a [`SignatureMemo`] before its arithmetic.
#[derive(Debug)]
pub(crate) struct Remembering<'a> {
    inner: &'a dyn SignatureVerificationAlgorithm,
    /// Its position in the fixed algorithm list: part of the key, so that a key remembered
    /// by one algorithm never answers for another.
    index: usize,
    memo: &'a SignatureMemo,
    counts: &'a Counts,
}

impl SignatureVerificationAlgorithm for Remembering<'_> {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.memo.per_generation == 0 {
            self.counts.checked.fetch_add(1, Relaxed);
            return self.inner.verify_signature(public_key, message, signature);
        }
        let key = SignatureMemo::key(self.index, public_key, message, signature);
        if self.memo.recall(&key) {
            self.counts.remembered.fetch_add(1, Relaxed);
            return Ok(());
        }
        self.counts.checked.fetch_add(1, Relaxed);
        self.inner
            .verify_signature(public_key, message, signature)?;
        self.memo.remember(key);
        Ok(())
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        self.inner.public_key_alg_id()
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        self.inner.signature_alg_id()
    }

    fn fips(&self) -> bool {
        self.inner.fips()
    }
}

/// The signature algorithms chains are verified with (aws-lc-rs, built once).
pub fn signature_algorithms(
) -> &'static [&'static dyn rustls_pki_types::SignatureVerificationAlgorithm] {
    static ALGS: std::sync::LazyLock<rustls::crypto::WebPkiSupportedAlgorithms> =
        std::sync::LazyLock::new(|| {
            rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms
        });
    ALGS.all
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An algorithm that accepts exactly one signature and counts its real checks.
    #[derive(Debug, Default)]
    struct Exact {
        checks: std::sync::atomic::AtomicU32,
    }

    impl SignatureVerificationAlgorithm for Exact {
        fn verify_signature(&self, _: &[u8], _: &[u8], sig: &[u8]) -> Result<(), InvalidSignature> {
            self.checks
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if sig == b"good" {
                Ok(())
            } else {
                Err(InvalidSignature)
            }
        }
        fn public_key_alg_id(&self) -> AlgorithmIdentifier {
            rustls_pki_types::alg_id::ECDSA_P256
        }
        fn signature_alg_id(&self) -> AlgorithmIdentifier {
            rustls_pki_types::alg_id::ECDSA_SHA256
        }
    }

    fn check(memo: &SignatureMemo, alg: &Exact, index: usize, msg: &[u8], sig: &[u8]) -> bool {
        let counts = Counts::default();
        let algs: Vec<&dyn SignatureVerificationAlgorithm> = vec![alg; index + 1];
        let wrapped = memo.wrap_list(&algs, &counts);
        wrapped[index].verify_signature(b"key", msg, sig).is_ok()
    }

    fn real_checks(alg: &Exact) -> u32 {
        alg.checks.load(std::sync::atomic::Ordering::Relaxed)
    }

    #[test]
    fn a_success_is_remembered_and_a_failure_never() {
        let memo = SignatureMemo::new(8);
        let alg = Exact::default();
        assert!(check(&memo, &alg, 0, b"m", b"good"));
        assert!(check(&memo, &alg, 0, b"m", b"good"));
        assert_eq!(real_checks(&alg), 1, "the second check was remembered");
        assert!(!check(&memo, &alg, 0, b"m", b"bad"));
        assert!(!check(&memo, &alg, 0, b"m", b"bad"));
        assert_eq!(real_checks(&alg), 3, "failures are checked every time");
    }

    #[test]
    fn any_change_of_input_or_algorithm_is_a_new_check() {
        let memo = SignatureMemo::new(8);
        let alg = Exact::default();
        assert!(check(&memo, &alg, 0, b"m", b"good"));
        assert!(check(&memo, &alg, 0, b"n", b"good"), "another message");
        assert!(check(&memo, &alg, 1, b"m", b"good"), "another algorithm");
        assert_eq!(real_checks(&alg), 3);
        // Length prefixes: moving a byte from the message to the key is another input.
        assert_ne!(
            SignatureMemo::key(0, b"ab", b"c", b"s"),
            SignatureMemo::key(0, b"a", b"bc", b"s")
        );
    }

    #[test]
    fn bounded_and_a_key_in_use_survives_the_turnover() {
        let memo = SignatureMemo::new(4);
        let alg = Exact::default();
        assert!(check(&memo, &alg, 0, b"intermediate", b"good"));
        for i in 0..100u32 {
            // A new leaf each time, and the shared intermediate.
            assert!(check(&memo, &alg, 0, &i.to_be_bytes(), b"good"));
            assert!(check(&memo, &alg, 0, b"intermediate", b"good"));
            let (current, previous) = memo.lens();
            assert!(current <= 4 && previous <= 4, "{current} + {previous}");
        }
        assert_eq!(real_checks(&alg), 101, "the intermediate was checked once");
    }

    #[test]
    fn off_checks_everything() {
        let memo = SignatureMemo::off();
        let alg = Exact::default();
        for _ in 0..3 {
            assert!(check(&memo, &alg, 0, b"m", b"good"));
        }
        assert_eq!(real_checks(&alg), 3);
        assert_eq!(memo.lens(), (0, 0));
    }
}
