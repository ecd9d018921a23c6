//! The records enrollgate keeps: identities, their authenticators and pending enrollments.
//!
//! These are the stored forms (serde, JSON in RocksDB). The API's JSON views are built
//! from them in `api::views`, so the storage format and the wire format can evolve apart.

use serde::{Deserialize, Serialize};

use crate::clock::UnixTime;

/// What an identity stands for. Functionally identical; the type records intent and never
/// changes after creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdentityType {
    /// A person.
    User,
    /// A device (the usual subject of fleet enrollment).
    Device,
    /// A service.
    Service,
}

impl IdentityType {
    /// Parses the API and CLI spelling, case-insensitively (`user`, `User`, `DEVICE`, ...).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "user" => Some(Self::User),
            "device" => Some(Self::Device),
            "service" => Some(Self::Service),
            _ => None,
        }
    }

    /// The canonical spelling (`User`, `Device`, `Service`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "User",
            Self::Device => "Device",
            Self::Service => "Service",
        }
    }
}

/// The enrollment method a token or request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// One-time token redeemed with a CSR that enrollgate signs.
    Ott,
    /// One-time token redeemed with a certificate from the operator's CA.
    Ottca,
    /// Auto-enrollment with a certificate from a verified third-party CA.
    Ca,
}

impl Method {
    /// Parses the wire spelling (`ott`, `ottca`, `ca`); anything else is not a method.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ott" => Some(Self::Ott),
            "ottca" => Some(Self::Ottca),
            "ca" => Some(Self::Ca),
            _ => None,
        }
    }

    /// The wire spelling, as in the JWT's `em` claim.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ott => "ott",
            Self::Ottca => "ottca",
            Self::Ca => "ca",
        }
    }
}

/// The certificate an identity authenticates with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authenticator {
    /// Lower-case hex SHA-256 of the certificate's DER: the key of the fingerprint index (I1).
    pub fingerprint_sha256: String,
    /// Lower-case hex SHA-1 of the DER, shown because OpenZiti clients display it.
    pub fingerprint_sha1: String,
    /// Lower-case hex SHA-256 of the certificate's to-be-signed part: the key of the
    /// content index (I1). Unlike the DER, it is the same for every encoding of the
    /// certificate's signature: an ECDSA signature (r, s) verifies as (r, n - s) too, so
    /// the fingerprint alone would let one device certificate bind twice. Empty in
    /// records written before it existed, until the store's next open fills it in (and in
    /// a record whose certificate another identity was bound to first: see `fsck`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tbs_sha256: String,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// True when enrollgate's internal PKI signed it (method `ott`).
    pub issued_by_network: bool,
    /// Start of validity (Unix seconds).
    pub not_before: UnixTime,
    /// End of validity (Unix seconds).
    pub not_after: UnixTime,
    /// How it was bound.
    pub method: Method,
    /// For a third-party certificate: the CA whose chain check bound it (`ottca`, `ca`).
    /// Absent in records written before it existed, and for `ott`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_id: Option<String>,
    /// When it was bound.
    pub created_at: UnixTime,
}

/// A named principal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Opaque, URL-safe, unique.
    pub id: String,
    /// Unique (I2).
    pub name: String,
    /// Immutable.
    #[serde(rename = "type")]
    pub kind: IdentityType,
    /// May use the management API.
    pub is_admin: bool,
    /// Free-form attributes used by policy elsewhere in the network.
    pub role_attributes: Vec<String>,
    /// Creation time.
    pub created_at: UnixTime,
    /// Last change.
    pub updated_at: UnixTime,
    /// The id of the pending enrollment, while there is one.
    pub enrollment_id: Option<String>,
    /// The bound certificate, once enrolled.
    pub authenticator: Option<Authenticator>,
    /// Renewal and suspension state; empty (and not stored) for most identities.
    #[serde(default, skip_serializing_if = "Lifecycle::is_empty")]
    pub lifecycle: Lifecycle,
}

/// How a renewed certificate becomes an identity's active one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// By `extend-verify` with the new certificate, as OpenZiti's clients renew.
    Verify,
    /// By the new certificate's first use (EST `simplereenroll`): an answer lost in
    /// transit cannot lock the device out, since its old certificate works until then.
    FirstUse,
}

/// A certificate issued to renew an identity's, bound to the identity (indexed like the
/// active one, I1) but not yet active: it authenticates nothing until activated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Renewal {
    /// The new certificate.
    pub authenticator: Authenticator,
    /// What activates it.
    pub activation: Activation,
}

/// An identity suspended by an admin: it cannot authenticate, renew or enroll.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suspension {
    /// When it was disabled.
    pub since: UnixTime,
    /// When it ends by itself; `None`: until enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<UnixTime>,
}

impl Suspension {
    /// Whether the suspension holds at `now`.
    pub fn holds_at(&self, now: UnixTime) -> bool {
        self.until.is_none_or(|until| now < until)
    }
}

/// What happens to an enrolled identity's certificate after enrollment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifecycle {
    /// A renewed certificate waiting to replace the active one (at most one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal: Option<Renewal>,
    /// An admin asked the identity to renew its certificate (`isCertExtendRequested`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub extend_requested: bool,
    /// ... with a new key (`isCertKeyRollRequested`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub key_roll_requested: bool,
    /// Set while an admin has disabled the identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<Suspension>,
    /// The third-party certificate (an IDevID) that enrolled this identity by EST
    /// `simpleenroll` and was replaced by the certificate enrollgate issued for it. It stays
    /// bound (indexed, I1), so it can never auto-enroll another identity, and it may ask
    /// for a new certificate again (device recovery); it authenticates nothing else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<Authenticator>,
    /// API sessions opened at or before this time are over (the identity was disabled or
    /// re-enrolled then): sessions are tokens every node checks, not records to delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions_after: Option<crate::clock::UnixTime>,
}

impl Lifecycle {
    /// Nothing to record: an identity that never renewed nor was disabled.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl Identity {
    /// Whether this identity can manage the gateway: an admin that has enrolled (one still
    /// waiting for its token cannot authenticate yet).
    pub fn manages(&self) -> bool {
        self.is_admin && self.authenticator.is_some()
    }

    /// Every certificate bound to this identity and indexed to it (I1): the active one, a
    /// renewal's while one is pending, and the bootstrap certificate it enrolled with by EST.
    pub fn certificates(&self) -> impl Iterator<Item = &Authenticator> {
        self.authenticator
            .iter()
            .chain(self.lifecycle.renewal.iter().map(|r| &r.authenticator))
            .chain(self.lifecycle.bootstrap.iter())
    }

    /// Whether an admin's suspension holds at `now`.
    pub fn is_disabled_at(&self, now: UnixTime) -> bool {
        self.lifecycle.disabled.is_some_and(|d| d.holds_at(now))
    }
}

/// A pending, single-use right to enroll.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrollment {
    /// Opaque id (management API).
    pub id: String,
    /// The secret redeemed by the device (the JWT's `jti`). Never stored: derived from
    /// the token key when an admin asks for it (`token::secret`), empty in a record read
    /// from the store. Read from records of versions that stored it, to migrate them.
    #[serde(default, skip_serializing)]
    pub token: String,
    /// `ott` or `ottca`.
    pub method: Method,
    /// The identity it enrolls.
    pub identity_id: String,
    /// For `ottca`: the CA whose certificates may redeem it.
    pub ca_id: Option<String>,
    /// Creation time.
    pub created_at: UnixTime,
    /// After this instant the token is refused with `ENROLLMENT_EXPIRED`.
    pub expires_at: UnixTime,
    /// The signed JWT carrying the token. Never stored: signed anew when an admin fetches
    /// it (same claims). Read from records of versions that stored it, to migrate them.
    #[serde(default, skip_serializing)]
    pub jwt: String,
    /// Lower-case hex SHA-256 of each token that redeems this enrollment, each indexed by
    /// the store (I3): the derived token and, for an enrollment made before tokens were
    /// hashed, its old random token too. Redeeming consumes them all at once.
    #[serde(default)]
    pub token_sha256: Vec<String>,
}

impl std::fmt::Debug for Enrollment {
    // The token and the JWT are bearer secrets: never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrollment")
            .field("id", &self.id)
            .field("token", &"...")
            .field("method", &self.method)
            .field("identity_id", &self.identity_id)
            .field("ca_id", &self.ca_id)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .field("jwt", &"...")
            .field("token_sha256", &self.token_sha256)
            .finish()
    }
}

/// The default `identityNameFormat` of a third-party CA.
pub const DEFAULT_NAME_FORMAT: &str = "[caName]-[commonName]";

/// A third-party CA uploaded by an operator, whose certificates may enroll (`ottca`, `ca`)
/// and authenticate.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ca {
    /// Opaque id.
    pub id: String,
    /// Unique name (I2).
    pub name: String,
    /// The CA certificate, PEM.
    pub cert_pem: String,
    /// Lower-case hex SHA-256 of the CA certificate's DER (unique among CAs).
    pub fingerprint: String,
    /// The operator proved possession of the CA key (`POST /cas/{id}/verify`).
    pub is_verified: bool,
    /// The common name the proof-of-possession certificate must carry, until verified.
    pub verification_token: String,
    /// Certificates from this CA may create identities on the spot (method `ca`).
    pub is_auto_ca_enrollment_enabled: bool,
    /// Certificates from this CA may redeem `ottca` tokens.
    pub is_ott_ca_enrollment_enabled: bool,
    /// Identities bound to certificates from this CA may authenticate.
    pub is_auth_enabled: bool,
    /// Role attributes given to identities this CA auto-enrolls.
    pub identity_roles: Vec<String>,
    /// Template of auto-enrolled identities' names.
    pub identity_name_format: String,
    /// Creation time.
    pub created_at: UnixTime,
    /// Last change.
    pub updated_at: UnixTime,
}

impl std::fmt::Debug for Ca {
    // The verification token is a (weak) secret until the CA is verified.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("fingerprint", &self.fingerprint)
            .field("is_verified", &self.is_verified)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_types_parse_case_insensitively() {
        assert_eq!(IdentityType::parse("user"), Some(IdentityType::User));
        assert_eq!(IdentityType::parse("DEVICE"), Some(IdentityType::Device));
        assert_eq!(IdentityType::parse("Service"), Some(IdentityType::Service));
        assert_eq!(IdentityType::parse("router"), None);
    }

    #[test]
    fn methods_parse_exactly() {
        assert_eq!(Method::parse("ott"), Some(Method::Ott));
        assert_eq!(Method::parse("ottca"), Some(Method::Ottca));
        assert_eq!(Method::parse("ca"), Some(Method::Ca));
        assert_eq!(Method::parse("OTT"), None);
        assert_eq!(Method::parse("updb"), None);
    }

    #[test]
    fn enrollment_debug_hides_secrets() {
        let e = Enrollment {
            id: "e1".into(),
            token: "SECRET-TOKEN".into(),
            method: Method::Ott,
            identity_id: "i1".into(),
            ca_id: None,
            created_at: 0,
            expires_at: 1,
            jwt: "SECRET.JWT.VALUE".into(),
            token_sha256: vec![],
        };
        let s = format!("{e:?}");
        assert!(!s.contains("SECRET"), "{s}");
    }

    /// The stored form holds neither the token nor the JWT; a record of an older version,
    /// which held both, still reads (to be migrated).
    #[test]
    fn a_stored_enrollment_holds_no_token_and_old_records_read() {
        let e = Enrollment {
            id: "e1".into(),
            token: "SECRET-TOKEN".into(),
            method: Method::Ott,
            identity_id: "i1".into(),
            ca_id: None,
            created_at: 0,
            expires_at: 1,
            jwt: "SECRET.JWT.VALUE".into(),
            token_sha256: vec!["ab".into()],
        };
        let stored = serde_json::to_string(&e).unwrap();
        assert!(!stored.contains("SECRET"), "{stored}");
        let back: Enrollment = serde_json::from_str(&stored).unwrap();
        assert_eq!(back.token_sha256, ["ab"]);
        assert!(back.token.is_empty() && back.jwt.is_empty());
        let old = r#"{"id":"e1","token":"T","method":"ott","identity_id":"i1","ca_id":null,
            "created_at":0,"expires_at":1,"jwt":"J"}"#;
        let old: Enrollment = serde_json::from_str(old).unwrap();
        assert_eq!((old.token.as_str(), old.jwt.as_str()), ("T", "J"));
        assert!(old.token_sha256.is_empty());
    }
}
