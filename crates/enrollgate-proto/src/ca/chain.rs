//! Client chain verification against the cached third-party CAs.
//!
//! The CAs are parsed once into a [`CaSet`] (trust anchors indexed by subject). Where the
//! set comes from, how it is shared between workers and rebuilt when a CA changes, is the
//! daemon's business (`enrollgate::ca::registry`); this module only answers "which CA, if
//! any, does this chain verify against, now, for this purpose".
//!
//! Verification (rustls-webpki) builds a path from the leaf through the intermediates the
//! client sent to a CA accepted for the purpose, checks validity at the given time, the
//! clientAuth EKU where present, and name and path-length constraints. Only anchors whose
//! subject is the issuer of a certificate in the chain are tried, so the cost does not grow
//! with the number of cached CAs. Each worker's [`SignatureMemo`] skips the arithmetic of a
//! signature it already verified (a fleet's shared intermediate), never any other check.

use std::collections::HashMap;

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime as PkiTime};
use x509_parser::prelude::*;

use super::memo::{Counts, MemoCounts, SignatureMemo};
use crate::clock::UnixTime;
use crate::model::Ca;

/// Certificates a client chain may hold at most (leaf included).
pub const MAX_CHAIN_LEN: usize = 10;

/// One cached CA.
pub struct CachedCa {
    /// The stored record (flags, name, roles, format).
    pub ca: Ca,
    anchor: TrustAnchor<'static>,
    /// The CA certificate's validity (Unix seconds): a trust anchor carries no dates, so
    /// these are checked here (as OpenZiti's Go verifier does for its roots).
    not_before: UnixTime,
    not_after: UnixTime,
}

/// How a certificate is outside its validity, with the date that says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutOfDate {
    /// Its `notAfter` has passed.
    Expired {
        /// `notAfter` (Unix seconds).
        not_after: UnixTime,
    },
    /// Its `notBefore` is still ahead.
    NotYetValid {
        /// `notBefore` (Unix seconds).
        not_before: UnixTime,
    },
}

impl std::fmt::Display for OutOfDate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Self::Expired { not_after } => {
                write!(f, "expired on {}", crate::clock::rfc3339(not_after))
            }
            Self::NotYetValid { not_before } => {
                write!(
                    f,
                    "is not valid until {}",
                    crate::clock::rfc3339(not_before)
                )
            }
        }
    }
}

/// Whether `now` is within `[not_before, not_after]`, and if not, how.
fn outside_validity(not_before: UnixTime, not_after: UnixTime, now: UnixTime) -> Option<OutOfDate> {
    if now > not_after {
        Some(OutOfDate::Expired { not_after })
    } else if now < not_before {
        Some(OutOfDate::NotYetValid { not_before })
    } else {
        None
    }
}

/// A certificate name for a message: at most 200 characters, control characters replaced.
fn printable(name: &X509Name<'_>) -> String {
    let text = name.to_string();
    let mut out: String = text
        .chars()
        .take(200)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.chars().count() > 200 {
        out.push_str("...");
    }
    if out.is_empty() {
        out.push_str("(empty name)");
    }
    out
}

/// Every CA, parsed, indexed by subject.
#[derive(Default)]
pub struct CaSet {
    cas: Vec<CachedCa>,
    by_subject: HashMap<Vec<u8>, Vec<usize>>,
    by_id: HashMap<String, usize>,
}

impl std::fmt::Debug for CaSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaSet")
            .field("cas", &self.cas.len())
            .finish()
    }
}

/// What path building found wrong (webpki's error, named for an operator).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathFault {
    /// A certificate of the path has expired (webpki did not say which).
    Expired,
    /// A certificate of the path is not valid yet (webpki did not say which).
    NotYetValid,
    /// No path to an accepted CA: a missing intermediate, or another CA.
    UnknownIssuer,
    /// The client certificate lacks the clientAuth extended key usage.
    NotForClientAuth,
    /// A CA certificate was presented as the client certificate.
    CaAsEndEntity,
    /// The chain is deeper than allowed.
    TooDeep,
    /// A signature does not verify under its issuer's key.
    BadSignature,
    /// The certificate is not X.509 version 3.
    NotVersion3,
    /// Anything else webpki reports, as it names it.
    Other(String),
}

impl PathFault {
    fn of(e: &webpki::Error) -> Self {
        match e {
            webpki::Error::CertExpired { .. } => Self::Expired,
            webpki::Error::CertNotValidYet { .. } => Self::NotYetValid,
            webpki::Error::UnknownIssuer => Self::UnknownIssuer,
            webpki::Error::RequiredEkuNotFoundContext(_) => Self::NotForClientAuth,
            webpki::Error::CaUsedAsEndEntity => Self::CaAsEndEntity,
            webpki::Error::MaximumPathDepthExceeded => Self::TooDeep,
            webpki::Error::InvalidSignatureForPublicKey => Self::BadSignature,
            webpki::Error::UnsupportedCertVersion => Self::NotVersion3,
            other => Self::Other(format!("{other:?}")),
        }
    }
}

impl std::fmt::Display for PathFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Expired => "the certificate has expired",
            Self::NotYetValid => "the certificate is not valid yet",
            Self::UnknownIssuer => "no path to the CA (a missing intermediate, or another CA)",
            Self::NotForClientAuth => {
                "the certificate is not for client authentication (extended key usage)"
            }
            Self::CaAsEndEntity => "a CA certificate was presented as the client certificate",
            Self::TooDeep => "the chain is too deep",
            Self::BadSignature => {
                "a signature in the chain does not verify under its issuer's key (signed by \
                 another key of the same name, or altered)"
            }
            Self::NotVersion3 => {
                "the certificate is not X.509 version 3 (openssl x509 -req makes version 1 \
                 unless given extensions, e.g. -extfile)"
            }
            Self::Other(what) => what,
        })
    }
}

/// A CA named in a refusal: out of its validity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleCa {
    /// The CA's name.
    pub name: String,
    /// How it is out of date.
    pub why: OutOfDate,
}

/// Why a chain is refused: the facts, formatted once (`Display`) for the answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// No client certificate was presented.
    #[error("no client certificate was presented")]
    NoCertificate,
    /// More certificates than [`MAX_CHAIN_LEN`].
    #[error("the client certificate chain is malformed: {len} certificates; at most {MAX_CHAIN_LEN} are accepted")]
    TooLong {
        /// Certificates sent.
        len: usize,
    },
    /// A certificate of the chain is not X.509.
    #[error("the client certificate chain is malformed: a certificate does not parse")]
    Unparsable,
    /// The client certificate cannot be an end entity.
    #[error("the client certificate chain is malformed: {0}")]
    BadLeaf(PathFault),
    /// No CA here has the name of the certificate's issuer.
    #[error("the certificate was not issued by any CA known to this gateway: no CA here has its issuer's name ({issuer}); if that is an intermediate, send it after the certificate")]
    UnknownIssuer {
        /// The issuer's name, printable.
        issuer: String,
    },
    /// The CAs named as issuers do not allow what the request is for.
    #[error("the certificate's CA ({}) {purpose}", quoted(cas))]
    CaRefused {
        /// Their names.
        cas: Vec<String>,
        /// What they do not allow, as the caller put it ("is not verified or does not
        /// allow authentication").
        purpose: String,
    },
    /// The only CA that issued the chain is outside its validity.
    #[error("the client certificate chain does not verify: the certificate of CA '{}', which issued this chain, {}", .0.name, .0.why)]
    CaOutOfDate(StaleCa),
    /// The client certificate is outside its validity.
    #[error("the client certificate chain does not verify: the certificate {0}")]
    LeafOutOfDate(OutOfDate),
    /// An intermediate the client sent is outside its validity.
    #[error("the client certificate chain does not verify: the intermediate certificate '{subject}' {why}")]
    IntermediateOutOfDate {
        /// Its subject, printable.
        subject: String,
        /// How.
        why: OutOfDate,
    },
    /// No valid path; `stale` names a CA out of date that was named as an issuer (a CA
    /// renewed with a new key does not anchor what the old key signed).
    #[error(
        "the client certificate chain does not verify: {fault}{}",
        stale_suffix(stale)
    )]
    Path {
        /// What path building found.
        fault: PathFault,
        /// A CA named in the chain, out of its validity.
        stale: Option<StaleCa>,
    },
    /// The verified path ends at an anchor no candidate CA has (a defect, never expected).
    #[error("the client certificate chain does not verify: the path ends at an unexpected anchor")]
    UnexpectedAnchor,
}

fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn stale_suffix(stale: &Option<StaleCa>) -> String {
    match stale {
        Some(s) => format!(
            "; the certificate of CA '{}', named as an issuer in this chain, {}",
            s.name, s.why
        ),
        None => String::new(),
    }
}

/// The refusal for webpki's error `e`, naming the certificate outside its validity (the
/// client's own, or an intermediate it sent; `certs`: leaf first) or a CA out of date
/// that was named as an issuer (`out_of_date`).
fn path_refusal(
    e: &webpki::Error,
    certs: &[X509Certificate<'_>],
    out_of_date: &[(usize, OutOfDate)],
    set: &CaSet,
    now: UnixTime,
) -> ChainError {
    let fault = PathFault::of(e);
    match fault {
        PathFault::Expired | PathFault::NotYetValid => {
            // webpki checks the leaf first, then each certificate up the path.
            for (n, cert) in certs.iter().enumerate() {
                let validity = cert.validity();
                let (not_before, not_after) = (
                    validity.not_before.timestamp(),
                    validity.not_after.timestamp(),
                );
                if let Some(why) = outside_validity(not_before, not_after, now) {
                    return if n == 0 {
                        ChainError::LeafOutOfDate(why)
                    } else {
                        ChainError::IntermediateOutOfDate {
                            subject: printable(cert.subject()),
                            why,
                        }
                    };
                }
            }
            ChainError::Path { fault, stale: None }
        }
        // No path among the CAs in date, and one out of date was named: say so.
        PathFault::UnknownIssuer | PathFault::BadSignature => ChainError::Path {
            fault,
            stale: out_of_date.first().map(|&(i, why)| StaleCa {
                name: set.cas[i].ca.name.clone(),
                why,
            }),
        },
        _ => ChainError::Path { fault, stale: None },
    }
}

impl CaSet {
    /// Parses `cas` into a set. A stored CA whose certificate no longer parses is skipped
    /// with a log line (it was checked when it was created).
    pub fn build(cas: Vec<Ca>) -> Self {
        let mut set = CaSet::default();
        for ca in cas {
            let Some(der) = ::pem::parse(&ca.cert_pem).ok().map(|p| p.into_contents()) else {
                tracing::error!(ca_id = %ca.id, "stored CA certificate is not PEM; skipped");
                continue;
            };
            let (subject, not_before, not_after) = match X509Certificate::from_der(&der) {
                Ok((_, c)) => (
                    c.subject().as_raw().to_vec(),
                    c.validity().not_before.timestamp(),
                    c.validity().not_after.timestamp(),
                ),
                Err(_) => {
                    tracing::error!(ca_id = %ca.id, "stored CA certificate does not parse; skipped");
                    continue;
                }
            };
            let der = CertificateDer::from(der);
            let anchor = match webpki::anchor_from_trusted_cert(&der) {
                Ok(a) => a.to_owned(),
                Err(e) => {
                    tracing::error!(ca_id = %ca.id, error = ?e, "stored CA is not a trust anchor; skipped");
                    continue;
                }
            };
            let i = set.cas.len();
            set.by_subject.entry(subject).or_default().push(i);
            set.by_id.insert(ca.id.clone(), i);
            set.cas.push(CachedCa {
                ca,
                anchor,
                not_before,
                not_after,
            });
        }
        set
    }

    /// Number of CAs.
    pub fn len(&self) -> usize {
        self.cas.len()
    }

    /// True when there is no CA.
    pub fn is_empty(&self) -> bool {
        self.cas.is_empty()
    }

    /// A CA by id.
    pub fn get(&self, id: &str) -> Option<&Ca> {
        self.by_id.get(id).map(|&i| &self.cas[i].ca)
    }

    /// Verifies `chain` (leaf first) at `now` against the CAs for which `accept` is true,
    /// and returns the CA the path ends at. `refusal` says why a CA `accept` refuses is
    /// refused ("is not verified or does not allow authentication"), after its name.
    /// Signatures `memo` holds are not checked again ([`SignatureMemo::off`] checks every
    /// one). Records nothing: a worker's request path verifies through
    /// the daemon's `ca::metered::MeteredCas`, which records what [`CaSet::check`] reports.
    pub fn verify(
        &self,
        chain: &[CertificateDer<'_>],
        now: UnixTime,
        refusal: &str,
        memo: &SignatureMemo,
        accept: impl Fn(&Ca) -> bool,
    ) -> Result<&Ca, ChainError> {
        self.check(chain, now, refusal, memo, accept).result
    }

    /// [`CaSet::verify`], with what it did: whether the cache knew an issuer named in the
    /// chain, and the signatures it checked and found remembered.
    pub fn check(
        &self,
        chain: &[CertificateDer<'_>],
        now: UnixTime,
        refusal: &str,
        memo: &SignatureMemo,
        accept: impl Fn(&Ca) -> bool,
    ) -> Verification<'_> {
        let mut cache_hit = false;
        let counts = Counts::default();
        let result = self.verify_inner(chain, now, refusal, memo, &counts, accept, &mut cache_hit);
        Verification {
            result,
            cache_hit,
            signatures: counts.get(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn verify_inner(
        &self,
        chain: &[CertificateDer<'_>],
        now: UnixTime,
        refusal: &str,
        memo: &SignatureMemo,
        counts: &Counts,
        accept: impl Fn(&Ca) -> bool,
        cache_hit: &mut bool,
    ) -> Result<&Ca, ChainError> {
        let leaf = chain.first().ok_or(ChainError::NoCertificate)?;
        if chain.len() > MAX_CHAIN_LEN {
            return Err(ChainError::TooLong { len: chain.len() });
        }
        // Issuers named anywhere in the chain select the candidate anchors; a CA outside
        // its own validity is never one.
        let mut candidates: Vec<usize> = Vec::new();
        let mut refused: Vec<usize> = Vec::new();
        let mut out_of_date: Vec<(usize, OutOfDate)> = Vec::new();
        // Parsed once; their names are formatted only for a refusal's message.
        let mut certs: Vec<X509Certificate<'_>> = Vec::with_capacity(chain.len());
        for der in chain {
            let (_, cert) = X509Certificate::from_der(der).map_err(|_| ChainError::Unparsable)?;
            certs.push(cert);
        }
        for cert in &certs {
            for &i in self
                .by_subject
                .get(cert.issuer().as_raw())
                .into_iter()
                .flatten()
            {
                if candidates.contains(&i)
                    || refused.contains(&i)
                    || out_of_date.iter().any(|(j, _)| *j == i)
                {
                    continue;
                }
                let c = &self.cas[i];
                if !accept(&c.ca) {
                    refused.push(i);
                } else if let Some(why) = outside_validity(c.not_before, c.not_after, now) {
                    out_of_date.push((i, why));
                } else {
                    candidates.push(i);
                }
            }
        }
        *cache_hit = !(candidates.is_empty() && refused.is_empty() && out_of_date.is_empty());
        if candidates.is_empty() {
            if let Some(&(i, why)) = out_of_date.first() {
                return Err(ChainError::CaOutOfDate(StaleCa {
                    name: self.cas[i].ca.name.clone(),
                    why,
                }));
            }
            return Err(if refused.is_empty() {
                ChainError::UnknownIssuer {
                    issuer: printable(certs[0].issuer()),
                }
            } else {
                ChainError::CaRefused {
                    cas: refused
                        .iter()
                        .map(|&i| self.cas[i].ca.name.clone())
                        .collect(),
                    purpose: refusal.to_owned(),
                }
            });
        }
        let anchors: Vec<TrustAnchor<'_>> = candidates
            .iter()
            .map(|&i| self.cas[i].anchor.clone())
            .collect();
        let end_entity = webpki::EndEntityCert::try_from(leaf)
            .map_err(|e| ChainError::BadLeaf(PathFault::of(&e)))?;
        let remembering = memo.wrap(counts);
        let algs: Vec<&dyn rustls_pki_types::SignatureVerificationAlgorithm> = remembering
            .iter()
            .map(|a| a as &dyn rustls_pki_types::SignatureVerificationAlgorithm)
            .collect();
        let time =
            PkiTime::since_unix_epoch(std::time::Duration::from_secs(now.max(0).unsigned_abs()));
        let path = end_entity
            .verify_for_usage(
                &algs,
                &anchors,
                &chain[1..],
                time,
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .map_err(|e| path_refusal(&e, &certs, &out_of_date, self, now))?;
        let anchor = path.anchor();
        candidates
            .iter()
            .map(|&i| &self.cas[i])
            .find(|c| {
                c.anchor.subject == anchor.subject
                    && c.anchor.subject_public_key_info == anchor.subject_public_key_info
            })
            .map(|c| &c.ca)
            .ok_or(ChainError::UnexpectedAnchor)
    }
}

/// A CA set as enrollment consults it ([`crate::enroll::plan`]): a chain verified for the
/// CAs `accept` admits, and a CA found by id. [`Memoized`] is the bare one; the daemon's
/// records each verification, in the manner of a metrics layer around the verifier.
pub trait Verifier {
    /// [`CaSet::verify`], with the implementation's memo.
    fn verify(
        &self,
        chain: &[CertificateDer<'_>],
        now: UnixTime,
        refusal: &str,
        accept: &dyn Fn(&Ca) -> bool,
    ) -> Result<&Ca, ChainError>;

    /// [`CaSet::get`].
    fn ca(&self, id: &str) -> Option<&Ca>;
}

/// A CA set with the signatures already checked, recording nothing.
#[derive(Debug, Clone, Copy)]
pub struct Memoized<'a> {
    /// The CAs.
    pub set: &'a CaSet,
    /// The signatures already checked.
    pub memo: &'a SignatureMemo,
}

impl Verifier for Memoized<'_> {
    fn verify(
        &self,
        chain: &[CertificateDer<'_>],
        now: UnixTime,
        refusal: &str,
        accept: &dyn Fn(&Ca) -> bool,
    ) -> Result<&Ca, ChainError> {
        self.set.verify(chain, now, refusal, self.memo, accept)
    }

    fn ca(&self, id: &str) -> Option<&Ca> {
        self.set.get(id)
    }
}

/// What one verification found ([`CaSet::check`]) and did.
#[derive(Debug)]
pub struct Verification<'a> {
    /// The CA the path ends at, or why there is none.
    pub result: Result<&'a Ca, ChainError>,
    /// Some CA of the cache is named as an issuer in the chain.
    pub cache_hit: bool,
    /// Signatures checked, and found already checked.
    pub signatures: MemoCounts,
}

/// The subject common name of a certificate, if it has one.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

    const NOW: UnixTime = 1_800_000_000;

    fn at(t: i64) -> ::time::OffsetDateTime {
        ::time::OffsetDateTime::from_unix_timestamp(t).unwrap()
    }

    pub(crate) fn root(cn: &str) -> (CertificateParams, KeyPair, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.not_before = at(NOW - 1000);
        p.not_after = at(NOW + 100_000);
        let pem = p.self_signed(&key).unwrap().pem();
        (p, key, pem)
    }

    fn leaf(
        issuer: &(CertificateParams, KeyPair, String),
        not_after: i64,
    ) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, "dev");
        p.not_before = at(NOW - 100);
        p.not_after = at(not_after);
        let i = Issuer::from_params(&issuer.0, &issuer.1);
        p.signed_by(&key, &i).unwrap().der().clone()
    }

    pub(crate) fn ca(id: &str, pem: &str, verified: bool) -> Ca {
        Ca {
            id: id.into(),
            name: id.into(),
            cert_pem: pem.into(),
            fingerprint: id.into(),
            is_verified: verified,
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
    fn finds_the_issuing_ca_among_many() {
        let a = root("a");
        let b = root("b");
        let mut cas: Vec<Ca> = (0..50)
            .map(|i| ca(&format!("x{i}"), &root(&format!("x{i}")).2, true))
            .collect();
        cas.push(ca("A", &a.2, true));
        cas.push(ca("B", &b.2, true));
        let set = CaSet::build(cas);
        assert_eq!(set.len(), 52);
        let chain = [leaf(&b, NOW + 1000)];
        assert_eq!(
            set.verify(&chain, NOW, "test", &SignatureMemo::off(), |_| true)
                .unwrap()
                .id,
            "B"
        );
    }

    #[test]
    fn refuses_for_purpose_time_and_unknown_issuers() {
        let a = root("a");
        let set = CaSet::build(vec![ca("A", &a.2, false)]);
        let chain = [leaf(&a, NOW + 1000)];
        assert!(matches!(
            set.verify(&chain, NOW, "does not allow auto-enrollment", &SignatureMemo::off(), |c| c.is_verified),
            Err(ChainError::CaRefused { cas, purpose })
                if cas == ["A"] && purpose == "does not allow auto-enrollment"
        ));
        assert!(matches!(
            set.verify(&chain, NOW + 5000, "x", &SignatureMemo::off(), |_| true),
            Err(ChainError::LeafOutOfDate(OutOfDate::Expired { not_after })) if not_after == NOW + 1000
        ));
        let stranger = root("stranger");
        let chain = [leaf(&stranger, NOW + 1000)];
        assert!(matches!(
            set.verify(&chain, NOW, "x", &SignatureMemo::off(), |_| true),
            Err(ChainError::UnknownIssuer { issuer }) if issuer.contains("stranger")
        ));
        assert_eq!(
            set.verify(&[], NOW, "x", &SignatureMemo::off(), |_| true)
                .unwrap_err(),
            ChainError::NoCertificate
        );
    }

    /// root -> intermediate (valid until `inter_not_after`) -> `leaves` leaves.
    fn fleet(
        inter_not_after: i64,
        leaves: usize,
    ) -> (
        String,
        CertificateDer<'static>,
        Vec<CertificateDer<'static>>,
    ) {
        let r = root("fleet-root");
        let inter_key = KeyPair::generate().unwrap();
        let mut inter = CertificateParams::default();
        inter
            .distinguished_name
            .push(DnType::CommonName, "fleet-intermediate");
        inter.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        inter.not_before = at(NOW - 1000);
        inter.not_after = at(inter_not_after);
        let inter_der = inter
            .signed_by(&inter_key, &Issuer::from_params(&r.0, &r.1))
            .unwrap()
            .der()
            .clone();
        let issuer = (inter, inter_key, String::new());
        let leaves = (0..leaves).map(|_| leaf(&issuer, NOW + 50_000)).collect();
        (r.2, inter_der, leaves)
    }

    fn verify_counted(
        set: &CaSet,
        chain: &[CertificateDer<'_>],
        at: UnixTime,
        memo: &SignatureMemo,
    ) -> (Result<String, ChainError>, MemoCounts) {
        let counts = Counts::default();
        let mut hit = false;
        let r = set
            .verify_inner(chain, at, "t", memo, &counts, |_| true, &mut hit)
            .map(|ca| ca.id.clone());
        (r, counts.get())
    }

    #[test]
    fn a_fleet_intermediate_is_checked_once_per_worker() {
        let (root_pem, inter, leaves) = fleet(NOW + 100_000, 3);
        let set = CaSet::build(vec![ca("R", &root_pem, true)]);
        let memo = SignatureMemo::default();
        let mut checked = Vec::new();
        for l in &leaves {
            let (r, counts) = verify_counted(&set, &[l.clone(), inter.clone()], NOW, &memo);
            assert_eq!(r.unwrap(), "R");
            checked.push((counts.checked, counts.remembered));
        }
        // The first device pays for both signatures; the next ones only for their leaf.
        assert_eq!(checked, vec![(2, 0), (1, 1), (1, 1)]);
        // The same chain again: both known, and the answer is still computed in full.
        let (r, counts) = verify_counted(&set, &[leaves[0].clone(), inter.clone()], NOW, &memo);
        assert_eq!(
            (r.unwrap().as_str(), counts.checked, counts.remembered),
            ("R", 0, 2)
        );
        // Without a memo every signature is checked.
        let (_, counts) = verify_counted(
            &set,
            &[leaves[1].clone(), inter.clone()],
            NOW,
            &SignatureMemo::off(),
        );
        assert_eq!((counts.checked, counts.remembered), (2, 0));
    }

    #[test]
    fn a_remembered_intermediate_is_still_checked_for_time_and_leaves_for_signatures() {
        let (root_pem, inter, leaves) = fleet(NOW + 2_000, 1);
        let set = CaSet::build(vec![ca("R", &root_pem, true)]);
        let memo = SignatureMemo::default();
        let chain = [leaves[0].clone(), inter.clone()];
        assert_eq!(verify_counted(&set, &chain, NOW, &memo).0.unwrap(), "R");
        // The intermediate's signature is remembered, its validity is not: expired later.
        let (r, counts) = verify_counted(&set, &chain, NOW + 3_000, &memo);
        assert!(
            matches!(&r, Err(ChainError::IntermediateOutOfDate { subject, why: OutOfDate::Expired { .. } })
                if subject == "CN=fleet-intermediate"),
            "{r:?}"
        );
        assert_eq!(counts.checked, 0, "refused on time, before any signature");
        // A leaf whose signature was tampered with fails, with its intermediate remembered.
        let mut forged = leaves[0].to_vec();
        let last = forged.len() - 2;
        forged[last] ^= 0x01;
        let (r, _) = verify_counted(&set, &[CertificateDer::from(forged), inter], NOW, &memo);
        assert!(
            matches!(
                &r,
                Err(ChainError::Path {
                    fault: PathFault::BadSignature,
                    stale: None
                })
            ),
            "a forged leaf: {r:?}"
        );
    }

    /// A trust anchor carries no dates: the CA's own validity is checked, as OpenZiti's
    /// verifier does. A chain whose only CA expired (or is not valid yet) is refused and
    /// the message names the CA; another CA with the same name that is valid still serves.
    #[test]
    fn a_ca_outside_its_validity_anchors_nothing() {
        let a = root("a");
        let set = CaSet::build(vec![ca("A", &a.2, true)]);
        // The root is valid until NOW + 100_000; the leaf a while longer.
        let chain = [leaf(&a, NOW + 300_000)];
        let verify_at = |t| set.verify(&chain, t, "x", &SignatureMemo::off(), |_| true);
        assert_eq!(verify_at(NOW).unwrap().id, "A");
        let r = verify_at(NOW + 200_000);
        assert!(
            matches!(&r, Err(ChainError::CaOutOfDate(StaleCa { name, why: OutOfDate::Expired { .. } }))
                if name == "A"),
            "{r:?}"
        );
        let r = verify_at(NOW - 500);
        assert!(
            // Before the leaf's own notBefore (the root's is earlier): the leaf is named.
            matches!(
                &r,
                Err(ChainError::LeafOutOfDate(OutOfDate::NotYetValid { .. }))
            ),
            "{r:?}"
        );
        // The CA renewed with the same key and name, registered beside the expired one.
        let mut renewed = a.0.clone();
        renewed.not_after = at(NOW + 400_000);
        let renewed_pem = renewed.self_signed(&a.1).unwrap().pem();
        let set = CaSet::build(vec![ca("A", &a.2, true), ca("A2", &renewed_pem, true)]);
        assert_eq!(
            set.verify(&chain, NOW + 200_000, "x", &SignatureMemo::off(), |_| true)
                .unwrap()
                .id,
            "A2"
        );
        // Renewed with a new key: what the old key signed has no CA in date, and the
        // refusal says which CA expired.
        let new_key = KeyPair::generate().unwrap();
        let rekeyed_pem = renewed.self_signed(&new_key).unwrap().pem();
        let set = CaSet::build(vec![ca("A", &a.2, true), ca("A3", &rekeyed_pem, true)]);
        let r = set.verify(&chain, NOW + 200_000, "x", &SignatureMemo::off(), |_| true);
        assert!(
            matches!(&r, Err(ChainError::Path { fault: PathFault::UnknownIssuer | PathFault::BadSignature, stale: Some(StaleCa { name, why: OutOfDate::Expired { .. } }) })
                if name == "A"),
            "{r:?}"
        );
    }

    /// The messages say what an operator needs: which certificate is out of date, which CA
    /// refused and for what, and the issuer nobody here knows.
    #[test]
    fn refusals_name_the_certificate_or_ca_at_fault() {
        let a = root("a");
        let set = CaSet::build(vec![ca("A", &a.2, false)]);
        let expired = [leaf(&a, NOW - 10)];
        let r = set.verify(&expired, NOW, "x", &SignatureMemo::off(), |_| true);
        assert!(
            matches!(&r, Err(ChainError::LeafOutOfDate(OutOfDate::Expired { not_after })) if *not_after == NOW - 10),
            "{r:?}"
        );
        let chain = [leaf(&a, NOW + 1000)];
        let r = set.verify(
            &chain,
            NOW,
            "is not verified or does not allow ottca enrollment",
            &SignatureMemo::off(),
            |c| c.is_verified,
        );
        assert!(
            matches!(&r, Err(ChainError::CaRefused { cas, .. }) if cas == &["A"]),
            "{r:?}"
        );
        // Issued by an intermediate the client did not send.
        let (root_pem, _inter, leaves) = fleet(NOW + 100_000, 1);
        let set = CaSet::build(vec![ca("R", &root_pem, true)]);
        let r = set.verify(&leaves[..1], NOW, "x", &SignatureMemo::off(), |_| true);
        assert!(
            matches!(&r, Err(ChainError::UnknownIssuer { issuer }) if issuer == "CN=fleet-intermediate"),
            "{r:?}"
        );
    }

    /// Each refusal is formatted once, from its facts, as the answer shows it.
    #[test]
    fn refusals_read_as_the_answer_shows_them() {
        let expired = OutOfDate::Expired {
            not_after: 1_700_000_000,
        };
        let cases = [
            (
                ChainError::CaRefused {
                    cas: vec!["A".into(), "B".into()],
                    purpose: "is not verified or does not allow ottca enrollment".into(),
                },
                "the certificate's CA ('A', 'B') is not verified or does not allow ottca enrollment",
            ),
            (
                ChainError::LeafOutOfDate(expired),
                "the client certificate chain does not verify: the certificate expired on 2023-11-14T22:13:20Z",
            ),
            (
                ChainError::Path {
                    fault: PathFault::UnknownIssuer,
                    stale: Some(StaleCa {
                        name: "A".into(),
                        why: expired,
                    }),
                },
                "the client certificate chain does not verify: no path to the CA (a missing \
                 intermediate, or another CA); the certificate of CA 'A', named as an issuer in \
                 this chain, expired on 2023-11-14T22:13:20Z",
            ),
            (
                ChainError::UnknownIssuer {
                    issuer: "CN=x".into(),
                },
                "the certificate was not issued by any CA known to this gateway: no CA here has \
                 its issuer's name (CN=x); if that is an intermediate, send it after the \
                 certificate",
            ),
        ];
        for (e, text) in cases {
            assert_eq!(e.to_string(), text);
        }
    }
}
