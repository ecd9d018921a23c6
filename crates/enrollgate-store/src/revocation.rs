//! Revoked certificates (I7): what deleting or re-enrolling an identity leaves behind.
//!
//! - A certificate enrollgate issued is recorded by serial (`r:<serial hex>`): the CRL
//!   (`GET /crl`, `pki::crl`) lists it until it expires. It is unbound in the same write,
//!   so it authenticates nothing from that moment.
//! - A third-party certificate (bound by `ottca` or auto-enrollment) is recorded by content
//!   (`x:<tbs sha-256>`): the device still holds it, and its CA still vouches for it, so
//!   without the record it would auto-enroll a new identity by itself. The content, not the
//!   DER fingerprint: an ECDSA signature (r, s) also verifies as (r, n - s), which changes
//!   the DER but not the content. An admin can lift the block (`revocation lift`).
//!
//! Both are written in the atomic batch that unbinds the certificate (`store::apply`).

use serde::{Deserialize, Serialize};

use super::{decode, keys, Store, StoreError};
use crate::clock::UnixTime;
use crate::model::{Authenticator, Identity};

/// What a client presenting a blocked certificate is told (`CERT_REVOKED`).
pub const REVOKED_MESSAGE: &str = "this certificate was revoked (its identity was deleted or \
     re-enrolled); an admin can lift that with `enrollgate revocation lift`";

/// Why a certificate was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Its identity was deleted.
    Deleted,
    /// Its identity was re-enrolled: a new token replaced the certificate.
    ReEnrolled,
}

impl Reason {
    /// The API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deleted => "deleted",
            Self::ReEnrolled => "re_enrolled",
        }
    }
}

/// A revoked certificate that enrollgate issued (`r:<serial>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    /// Lower-case hex of the serial's DER content octets (the key).
    pub serial: String,
    /// Its SHA-256 fingerprint, to find it by the certificate.
    pub fingerprint_sha256: String,
    /// The identity it was bound to.
    pub identity_id: String,
    /// When it expires: from then on the CRL leaves it out.
    pub not_after: UnixTime,
    /// When it was revoked.
    pub revoked_at: UnixTime,
    /// Why.
    pub reason: Reason,
}

/// A third-party certificate that binds no identity again by itself (`x:<tbs sha-256>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocked {
    /// SHA-256 hex of the certificate's to-be-signed part (the key).
    pub tbs_sha256: String,
    /// Its SHA-256 fingerprint, as the admin saw it.
    pub fingerprint_sha256: String,
    /// The identity it was bound to.
    pub identity_id: String,
    /// That identity's name, for the admin reading the list.
    pub identity_name: String,
    /// The CA whose chain check bound it, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_id: Option<String>,
    /// When the certificate expires.
    pub not_after: UnixTime,
    /// When it was blocked.
    pub revoked_at: UnixTime,
    /// Why.
    pub reason: Reason,
}

/// Lower-case hex of the serial of the PEM certificate `cert_pem` (its DER content octets,
/// as the CRL carries them).
pub fn serial_hex(cert_pem: &str) -> Option<String> {
    let der = ::pem::parse(cert_pem).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.contents()).ok()?;
    Some(hex::encode(cert.tbs_certificate.raw_serial()))
}

/// The content hash of `a`: as recorded, or read from its PEM for a record from before the
/// content index.
pub(crate) fn content_of(a: &Authenticator) -> Option<String> {
    if !a.tbs_sha256.is_empty() {
        return Some(a.tbs_sha256.clone());
    }
    ::pem::parse(&a.cert_pem)
        .ok()
        .and_then(|p| crate::pki::fingerprint::tbs_sha256_hex(p.contents()))
}

/// Revocation records to write: `(key, record JSON)`.
pub(crate) type Records = Vec<(Vec<u8>, Vec<u8>)>;

/// The records revoking every certificate of `identity` (active and pending renewal):
/// `(key, record JSON)`, and whether a serial is among them (the CRL changes).
pub(crate) fn records(identity: &Identity, reason: Reason, now: UnixTime) -> (Records, bool) {
    let mut out = Vec::new();
    let mut serials = false;
    for a in identity.certificates() {
        if a.issued_by_network {
            // Our own PEM: it parses. One that did not could not be listed on a CRL anyway,
            // and it is unbound all the same.
            let Some(serial) = serial_hex(&a.cert_pem) else {
                tracing::error!(identity_id = %identity.id, "an issued certificate does not parse; unbound but not on the CRL");
                continue;
            };
            let r = Revoked {
                serial: serial.clone(),
                fingerprint_sha256: a.fingerprint_sha256.clone(),
                identity_id: identity.id.clone(),
                not_after: a.not_after,
                revoked_at: now,
                reason,
            };
            out.push((keys::revoked(&serial), to_json(&r)));
            serials = true;
        } else if let Some(tbs) = content_of(a) {
            let b = Blocked {
                tbs_sha256: tbs.clone(),
                fingerprint_sha256: a.fingerprint_sha256.clone(),
                identity_id: identity.id.clone(),
                identity_name: identity.name.clone(),
                ca_id: a.ca_id.clone(),
                not_after: a.not_after,
                revoked_at: now,
                reason,
            };
            out.push((keys::blocked(&tbs), to_json(&b)));
        }
    }
    (out, serials)
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    // Plain structs of strings and numbers always serialize.
    serde_json::to_vec(v).expect("records serialize to JSON")
}

impl Store {
    fn all_under<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &[u8],
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        self.each_under(prefix, &mut |k, v| {
            out.push(decode(k, v)?);
            Ok(true)
        })?;
        Ok(out)
    }

    /// Every revoked certificate enrollgate issued, expired ones too.
    pub fn revoked(&self) -> Result<Vec<Revoked>, StoreError> {
        self.all_under(keys::REVOKED)
    }

    /// Every blocked third-party certificate.
    pub fn blocked(&self) -> Result<Vec<Blocked>, StoreError> {
        self.all_under(keys::BLOCKED)
    }

    /// Whether `auth` is bound to an identity (as it is, or another encoding of its
    /// signature: I1), and whether its content is blocked: one round trip on a database.
    pub fn bound_or_blocked(&self, auth: &Authenticator) -> Result<(bool, bool), StoreError> {
        let mut wanted = keys::bound(auth);
        let bound = wanted.len();
        if let Some(tbs) = content_of(auth) {
            wanted.push(keys::blocked(&tbs));
        }
        let found = self.backend().read_many(&wanted)?;
        Ok((
            found[..bound].iter().any(Option::is_some),
            found[bound..].iter().any(Option::is_some),
        ))
    }

    /// Whether `auth`'s content is blocked (its identity was deleted or re-enrolled).
    pub fn is_blocked(&self, auth: &Authenticator) -> Result<bool, StoreError> {
        match content_of(auth) {
            Some(tbs) => Ok(self.get(&keys::blocked(&tbs))?.is_some()),
            None => Ok(false),
        }
    }

    /// The revocation generation: moves whenever a serial is revoked (0 before the first).
    pub fn revocation_generation(&self) -> Result<u64, StoreError> {
        Ok(generation(self.get(keys::REVOCATIONS)?.as_deref()))
    }
}

/// The generation a `m:revocations` value holds (0 when absent or unreadable: the next
/// revocation writes a good one, and the CRL is regenerated on its own schedule anyway).
pub(crate) fn generation(v: Option<&[u8]>) -> u64 {
    v.and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}
