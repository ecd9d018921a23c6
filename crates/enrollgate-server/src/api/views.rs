//! JSON views of stored records, with the field names of DESIGN.md and OpenZiti.

use serde_json::{json, Value};

use crate::clock::rfc3339;
use crate::model::{Authenticator, Enrollment, Identity};

/// An enrollment as the management API shows it (admins only: it carries the token).
pub fn enrollment(e: &Enrollment) -> Value {
    json!({
        "id": e.id,
        "method": e.method.as_str(),
        "identityId": e.identity_id,
        "caId": e.ca_id,
        "token": e.token,
        "jwt": e.jwt,
        "createdAt": rfc3339(e.created_at),
        "expiresAt": rfc3339(e.expires_at),
    })
}

/// An authenticator.
pub fn authenticator(a: &Authenticator) -> Value {
    json!({
        "fingerprint": a.fingerprint_sha1,
        "fingerprintSha256": a.fingerprint_sha256,
        "issuedByNetwork": a.issued_by_network,
        "method": a.method.as_str(),
        "caId": a.ca_id,
        "notBefore": rfc3339(a.not_before),
        "notAfter": rfc3339(a.not_after),
        "createdAt": rfc3339(a.created_at),
        "certPem": a.cert_pem,
    })
}

/// What an identity's certificate renewal stands at: the admin's request and a renewal
/// issued by `extend` and not yet verified.
pub fn renewal(i: &Identity) -> Value {
    json!({
        "isCertExtendRequested": i.lifecycle.extend_requested,
        "isCertKeyRollRequested": i.lifecycle.key_roll_requested,
        "pending": i.lifecycle.renewal.as_ref().map(|r| authenticator(&r.authenticator)),
    })
}

/// An identity, with its pending enrollment (if `pending` is given) and authenticator.
pub fn identity(i: &Identity, pending: Option<&Enrollment>) -> Value {
    let enrollment = match pending {
        Some(e) => json!({ e.method.as_str(): enrollment(e) }),
        None => json!({}),
    };
    let authenticators = match &i.authenticator {
        Some(a) => json!({ "cert": authenticator(a) }),
        None => json!({}),
    };
    json!({
        "id": i.id,
        "name": i.name,
        "type": i.kind.as_str(),
        "isAdmin": i.is_admin,
        "roleAttributes": i.role_attributes,
        "hasEnrolled": i.authenticator.is_some(),
        "createdAt": rfc3339(i.created_at),
        "updatedAt": rfc3339(i.updated_at),
        "enrollment": enrollment,
        "authenticators": authenticators,
        "renewal": renewal(i),
    })
}
