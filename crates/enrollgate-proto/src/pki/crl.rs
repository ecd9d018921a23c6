//! The certificate revocation list served at `GET /crl` (I7): the serials of the revoked,
//! unexpired certificates enrollgate issued, signed by the internal CA.
//!
//! ```text
//! DeleteIdentity / ReEnroll ──(same batch)──> r:<serial>, m:revocations += 1
//! GET /crl ──> generation == cached? ──yes, and fresh──> cached DER
//!                    └──no──> read r:*, drop expired, sign (CA key or PKCS#11 token)
//! ```
//!
//! The CRL is signed when the revocation generation moves, or when half of its validity
//! has passed, never on every request. Its number only increases: it is the time of
//! signing in milliseconds, or one more than the last number this process signed.

use std::sync::{Arc, Mutex};

use rcgen::{
    CertificateRevocationListParams, Issuer, KeyIdMethod, RevokedCertParams, SerialNumber,
};

use super::issue::{offset_time, IssueError};
use crate::clock::UnixTime;

/// How long a CRL is valid (`nextUpdate - thisUpdate`); it is signed again after half of it.
pub const CRL_VALIDITY_SECS: i64 = 7 * 24 * 3600;

/// One revoked certificate as the CRL lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The serial's DER content octets.
    pub serial: Vec<u8>,
    /// When it was revoked.
    pub revoked_at: UnixTime,
    /// When it expires: from then on it is left out.
    pub not_after: UnixTime,
}

/// Signs a CRL at `now` numbered `number`, listing the entries of `entries` that have not
/// expired, with the CA certificate `ca_der` and its key.
pub fn sign(
    ca_der: &[u8],
    key: super::CaKey,
    entries: &[Entry],
    now: UnixTime,
    number: u64,
) -> Result<Vec<u8>, IssueError> {
    let issuer = Issuer::from_ca_cert_der(&ca_der.into(), key)?;
    let mut revoked_certs = Vec::new();
    for e in entries.iter().filter(|e| e.not_after > now) {
        revoked_certs.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(&e.serial),
            revocation_time: offset_time(e.revoked_at)?,
            // Superseded: the identity's certificate was replaced or withdrawn; no key
            // is known to be compromised.
            reason_code: Some(rcgen::RevocationReason::Superseded),
            invalidity_date: None,
        });
    }
    let params = CertificateRevocationListParams {
        this_update: offset_time(now)?,
        next_update: offset_time(now.saturating_add(CRL_VALIDITY_SECS))?,
        crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    Ok(params.signed_by(&issuer)?.der().to_vec())
}

struct Cached {
    generation: u64,
    signed_at: UnixTime,
    number: u64,
    der: Arc<Vec<u8>>,
}

/// The last CRL signed, shared by the workers.
#[derive(Default)]
pub struct CrlCache {
    // A lock on the path of `GET /crl` only, held while a CRL is signed: concurrent
    // requests after a change wait for one signature instead of each making one.
    last: Mutex<Option<Cached>>,
}

impl std::fmt::Debug for CrlCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrlCache").finish_non_exhaustive()
    }
}

impl CrlCache {
    /// The cached CRL, if it is of generation `generation` and fresh at `now` (what
    /// [`Self::get`] answers without signing).
    pub fn cached(&self, generation: u64, now: UnixTime) -> Option<Arc<Vec<u8>>> {
        let last = match self.last.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        last.as_ref()
            .filter(|c| {
                c.generation == generation
                    && now >= c.signed_at
                    && now - c.signed_at < CRL_VALIDITY_SECS / 2
            })
            .map(|c| c.der.clone())
    }

    /// The CRL for revocation generation `generation` at `now`: the cached one while it is
    /// of that generation and younger than half its validity, else one `sign(number)`
    /// makes (and the cache keeps).
    pub fn get<E>(
        &self,
        generation: u64,
        now: UnixTime,
        sign: impl FnOnce(u64) -> Result<Vec<u8>, E>,
    ) -> Result<Arc<Vec<u8>>, E> {
        let mut last = match self.last.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(c) = last.as_ref() {
            let fresh = now >= c.signed_at && now - c.signed_at < CRL_VALIDITY_SECS / 2;
            if c.generation == generation && fresh {
                return Ok(c.der.clone());
            }
        }
        let by_time = u64::try_from(now).unwrap_or(0).saturating_mul(1000);
        let number = match last.as_ref() {
            Some(c) => by_time.max(c.number + 1),
            None => by_time,
        };
        let der = Arc::new(sign(number)?);
        *last = Some(Cached {
            generation,
            signed_at: now,
            number,
            der: der.clone(),
        });
        Ok(der)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    #[test]
    fn the_cache_signs_on_change_and_before_half_its_validity_only() {
        let cache = CrlCache::default();
        let mut numbers = Vec::new();
        let mut get = |generation, now| {
            cache
                .get(generation, now, |n| {
                    numbers.push(n);
                    Ok::<_, ()>(n.to_be_bytes().to_vec())
                })
                .unwrap()
        };
        let a = get(0, 1000);
        assert_eq!(get(0, 1001), a, "unchanged: the same CRL");
        let b = get(1, 1001);
        assert_ne!(b, a, "a revocation: signed again");
        get(1, 1001 + CRL_VALIDITY_SECS / 2);
        assert_eq!(numbers.len(), 3);
        assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
    }

    #[test]
    fn the_crl_lists_unexpired_serials_and_verifies() {
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = crate::pki::root_ca_params("root", 1_700_000_000)
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let entries = [
            Entry {
                serial: vec![0x41, 1, 2],
                revoked_at: 1_700_000_100,
                not_after: 1_800_000_000,
            },
            Entry {
                serial: vec![0x42, 3],
                revoked_at: 1_700_000_100,
                not_after: 1_700_000_150,
            },
        ];
        let now = 1_700_000_200;
        let der = sign(ca.der(), key.into(), &entries, now, 7).unwrap();
        let (_, crl) = CertificateRevocationList::from_der(&der).unwrap();
        let serials: Vec<Vec<u8>> = crl
            .iter_revoked_certificates()
            .map(|r| r.raw_serial().to_vec())
            .collect();
        assert_eq!(serials, vec![vec![0x41, 1, 2]], "the expired one is pruned");
        assert_eq!(crl.last_update().timestamp(), now);
        assert_eq!(
            crl.next_update().unwrap().timestamp(),
            now + CRL_VALIDITY_SECS
        );
        assert_eq!(crl.crl_number().unwrap().to_u64_digits(), vec![7]);
        let (_, ca_cert) = X509Certificate::from_der(ca.der()).unwrap();
        crl.verify_signature(ca_cert.public_key()).unwrap();
    }

    /// How long signing a CRL takes with many entries (run by hand: `--ignored`).
    #[test]
    #[ignore]
    fn measure_signing() {
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = crate::pki::root_ca_params("root", 1_700_000_000)
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let pem = key.serialize_pem();
        for n in [0usize, 1_000, 10_000, 100_000] {
            let entries: Vec<Entry> = (0..n)
                .map(|i| Entry {
                    serial: [&[0x41u8][..], &(i as u64).to_be_bytes(), &[7u8; 7]].concat(),
                    revoked_at: 1_700_000_100,
                    not_after: 1_800_000_000,
                })
                .collect();
            let key = rcgen::KeyPair::from_pem(&pem).unwrap();
            let t = std::time::Instant::now();
            let der = sign(ca.der(), key.into(), &entries, 1_700_000_200, 1).unwrap();
            eprintln!("{n} entries: {:?}, {} bytes", t.elapsed(), der.len());
        }
    }
}
