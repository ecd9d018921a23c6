//! Third-party CA management (`/edge/management/v1/cas`): create, list, show, update,
//! delete, verify (proof of possession), and the reusable CA JWT. Every change is followed
//! by a reload of the CA cache, which every worker picks up on its next request.

use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::request::{json_body, Request};
use crate::app::WorkerCtx;
use crate::ca::{self, name::validate_format, pop, CaCertError};
use crate::clock::rfc3339;
use crate::enroll::validate_name;
use crate::http::Response;
use crate::model::{Ca, Method, DEFAULT_NAME_FORMAT};
use crate::store::{CaChanges, Command, Outcome};

/// A CA as the management API shows it.
pub fn view(ca: &Ca) -> Value {
    let der = ::pem::parse(&ca.cert_pem).map(|p| p.into_contents()).ok();
    // The CA certificate's dates: outside them it anchors no chain.
    let (not_before, not_after) = match der.as_deref().and_then(ca::validity) {
        Some((b, a)) => (Value::String(rfc3339(b)), Value::String(rfc3339(a))),
        None => (Value::Null, Value::Null),
    };
    json!({
        "notBefore": not_before,
        "notAfter": not_after,
        "id": ca.id,
        "name": ca.name,
        "certPem": ca.cert_pem,
        "fingerprint": der
            .as_deref()
            .map(crate::pki::fingerprint::sha1_hex)
            .unwrap_or_default(),
        "fingerprintSha256": ca.fingerprint,
        "isVerified": ca.is_verified,
        "verificationToken": if ca.is_verified { Value::Null } else { Value::String(ca.verification_token.clone()) },
        "isAutoCaEnrollmentEnabled": ca.is_auto_ca_enrollment_enabled,
        "isOttCaEnrollmentEnabled": ca.is_ott_ca_enrollment_enabled,
        "isAuthEnabled": ca.is_auth_enabled,
        "identityRoles": ca.identity_roles,
        "identityNameFormat": ca.identity_name_format,
        "createdAt": rfc3339(ca.created_at),
        "updatedAt": rfc3339(ca.updated_at),
    })
}

impl From<CaCertError> for ApiError {
    fn from(e: CaCertError) -> Self {
        match e {
            CaCertError::NotPem(m) => Self::ExpectedPemCertificate(m),
            CaCertError::Invalid(m) => Self::CertificateFailedValidation(m),
        }
    }
}

fn check_roles(roles: &[String]) -> Result<(), ApiError> {
    if roles.len() > 100 || roles.iter().any(|a| a.is_empty() || a.len() > 255) {
        return Err(ApiError::CouldNotParseBody(
            "'identityRoles' takes at most 100 non-empty strings of at most 255 bytes".into(),
        ));
    }
    Ok(())
}

fn check_format(f: &str) -> Result<(), ApiError> {
    validate_format(f)
        .map_err(|e| ApiError::CouldNotParseBody(format!("'identityNameFormat': {e}")))
}

/// A CA by id, or 404.
pub async fn find(w: &WorkerCtx, id: &str) -> Result<Ca, ApiError> {
    super::records::find_by_id(w, id, "CA", crate::store::Store::ca).await
}

async fn commit_ca(w: &WorkerCtx, cmd: Command) -> Result<Option<Ca>, ApiError> {
    let outcome = w.shared.commit.submit(cmd).await?;
    // The change is committed whatever happens next; a failed reload leaves the old set in
    // force until the next change, and is logged, not answered as a failure of the change.
    let cas = w.shared.cas.clone();
    if let Err(e) = w.shared.store.read(move |s| cas.reload(s)).await {
        tracing::error!(error = %e, "CA cache reload failed; the previous CA set stays in force");
    }
    Ok(match outcome {
        Outcome::Ca(ca) => Some(*ca),
        _ => None,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreateBody {
    name: Option<String>,
    cert_pem: Option<String>,
    #[serde(default)]
    is_auto_ca_enrollment_enabled: bool,
    #[serde(default)]
    is_ott_ca_enrollment_enabled: bool,
    #[serde(default)]
    is_auth_enabled: bool,
    #[serde(default)]
    identity_roles: Vec<String>,
    identity_name_format: Option<String>,
}

/// `POST /cas`
pub async fn create(w: &WorkerCtx, req: &Request) -> Result<Response, ApiError> {
    let body: CreateBody = json_body(req)?;
    let name = body
        .name
        .ok_or_else(|| ApiError::CouldNotParseBody("the body has no 'name'".into()))?;
    validate_name(&name)?;
    let cert_pem = body
        .cert_pem
        .ok_or_else(|| ApiError::CouldNotParseBody("the body has no 'certPem'".into()))?;
    let parsed = ca::parse_ca_pem(cert_pem.as_bytes())?;
    let now = w.shared.clock.unix_now();
    // No chain ends at an expired CA (chain::CaSet checks each CA's dates): refused here
    // rather than registered to verify nothing. One not valid yet may be registered ahead.
    if now > parsed.not_after {
        return Err(ca::CaCertError::Invalid(format!(
            "the CA certificate expired on {}",
            crate::clock::rfc3339(parsed.not_after)
        ))
        .into());
    }
    check_roles(&body.identity_roles)?;
    let format = body
        .identity_name_format
        .unwrap_or_else(|| DEFAULT_NAME_FORMAT.to_string());
    check_format(&format)?;
    let rand = |e: crate::ids::RandomError| ApiError::Unhandled(e.to_string());
    let ca = Ca {
        id: crate::ids::new_id().map_err(rand)?,
        name,
        cert_pem: parsed.pem,
        fingerprint: parsed.fingerprint,
        is_verified: false,
        verification_token: crate::ids::new_id().map_err(rand)?,
        is_auto_ca_enrollment_enabled: body.is_auto_ca_enrollment_enabled,
        is_ott_ca_enrollment_enabled: body.is_ott_ca_enrollment_enabled,
        is_auth_enabled: body.is_auth_enabled,
        identity_roles: body.identity_roles,
        identity_name_format: format,
        created_at: now,
        updated_at: now,
    };
    let created = commit_ca(w, Command::CreateCa { ca })
        .await?
        .ok_or_else(|| ApiError::Unhandled("unexpected store outcome".into()))?;
    tracing::info!(ca_id = %created.id, "CA created");
    Ok(Response::json(
        201,
        &json!({ "data": view(&created), "meta": {} }),
    ))
}

/// `GET /cas`
pub async fn list(w: &WorkerCtx) -> Result<Response, ApiError> {
    let cas = w.shared.store.read(|s| s.all_cas()).await?;
    let data: Vec<Value> = cas.iter().map(view).collect();
    let n = data.len();
    Ok(Response::json(
        200,
        &json!({ "data": data, "meta": { "pagination": { "limit": n, "offset": 0, "totalCount": n } } }),
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UpdateBody {
    name: Option<String>,
    is_auto_ca_enrollment_enabled: Option<bool>,
    is_ott_ca_enrollment_enabled: Option<bool>,
    is_auth_enabled: Option<bool>,
    identity_roles: Option<Vec<String>>,
    identity_name_format: Option<String>,
}

/// `PATCH /cas/{id}` (and `PUT`: fields not sent are left as they are).
pub async fn update(w: &WorkerCtx, req: &Request, id: &str) -> Result<Response, ApiError> {
    find(w, id).await?;
    let body: UpdateBody = json_body(req)?;
    if let Some(n) = &body.name {
        validate_name(n)?;
    }
    if let Some(r) = &body.identity_roles {
        check_roles(r)?;
    }
    if let Some(f) = &body.identity_name_format {
        check_format(f)?;
    }
    let changes = CaChanges {
        name: body.name,
        auto: body.is_auto_ca_enrollment_enabled,
        ottca: body.is_ott_ca_enrollment_enabled,
        auth: body.is_auth_enabled,
        identity_roles: body.identity_roles,
        identity_name_format: body.identity_name_format,
    };
    let now = w.shared.clock.unix_now();
    let ca = commit_ca(
        w,
        Command::UpdateCa {
            id: id.to_string(),
            changes,
            now,
        },
    )
    .await?
    .ok_or_else(|| ApiError::Unhandled("unexpected store outcome".into()))?;
    tracing::info!(ca_id = %ca.id, "CA updated");
    Ok(Response::data(view(&ca)))
}

/// `DELETE /cas/{id}`
pub async fn delete(w: &WorkerCtx, id: &str) -> Result<Response, ApiError> {
    find(w, id).await?;
    commit_ca(w, Command::DeleteCa { id: id.to_string() }).await?;
    tracing::info!(ca_id = %id, "CA deleted");
    Ok(Response::data(json!({})))
}

/// How many names of each kind `GET /cas/{id}/bound-identities` lists (the counts are whole).
const BOUND_SAMPLE: usize = 20;

/// `GET /cas/{id}/bound-identities`: what deleting the CA touches. `enrolled`: identities
/// bound through the CA by `ottca` or auto-enrollment (deleting the CA stops their
/// authentication through it); `pendingOttca`: identities whose pending `ottca` token names the CA (no
/// certificate can redeem it once the CA is gone). Each with its whole count and the first
/// few `{id, name}`. It scans every identity: an administrative question, not a hot path.
pub async fn bound_identities(w: &WorkerCtx, id: &str) -> Result<Response, ApiError> {
    let ca = find(w, id).await?;
    let ca_der = ::pem::parse(&ca.cert_pem)
        .map(|p| p.into_contents())
        .map_err(|_| ApiError::Unhandled("a stored CA certificate is not PEM".into()))?;
    let (enrolled, pending) = {
        let id = id.to_string();
        w.shared
            .store
            .read(move |store| bound_to_ca(store, &id, &ca_der))
            .await?
    };
    let sample = |list: &[crate::model::Identity]| -> Vec<Value> {
        list.iter()
            .take(BOUND_SAMPLE)
            .map(|i| json!({ "id": i.id, "name": i.name }))
            .collect()
    };
    Ok(Response::data(json!({
        "enrolledCount": enrolled.len(),
        "enrolled": sample(&enrolled),
        "pendingOttcaCount": pending.len(),
        "pendingOttca": sample(&pending),
    })))
}

/// `POST /cas/{id}/verify` with a PEM certificate whose CN is the verification token,
/// signed by the CA.
pub async fn verify(w: &WorkerCtx, req: &Request, id: &str) -> Result<Response, ApiError> {
    let ca = find(w, id).await?;
    match req.head.content_type().as_deref() {
        None
        | Some("text/plain")
        | Some("application/x-pem-file")
        | Some("application/x-x509-ca-cert") => {}
        Some(other) => {
            return Err(ApiError::UnsupportedMedia(format!(
                "content type '{}' is not accepted; send the PEM certificate as text/plain",
                other.chars().take(64).collect::<String>()
            )))
        }
    }
    if ca.is_verified {
        return Err(ApiError::CaAlreadyVerified(
            "the CA is already verified".into(),
        ));
    }
    let ca_der = pem::parse(&ca.cert_pem)
        .map_err(|_| ApiError::Unhandled("stored CA certificate is not PEM".into()))?
        .into_contents();
    let now = w.shared.clock.unix_now();
    pop::check(&req.body, &ca_der, &ca.verification_token, now).map_err(|e| match e {
        pop::PopError::NotPem(m) => ApiError::ExpectedPemCertificate(m),
        pop::PopError::WrongCommonName => ApiError::InvalidCommonName(e.to_string()),
        pop::PopError::DoesNotVerify(_) => ApiError::CertificateFailedValidation(e.to_string()),
    })?;
    let verified = commit_ca(
        w,
        Command::VerifyCa {
            id: id.to_string(),
            verification_token: ca.verification_token,
            now,
        },
    )
    .await?
    .ok_or_else(|| ApiError::Unhandled("unexpected store outcome".into()))?;
    tracing::info!(ca_id = %id, "CA verified");
    Ok(Response::data(view(&verified)))
}

/// `GET /cas/{id}/jwt`: the reusable CA JWT (`em=ca`, `sub`=`jti`= CA id, no expiry).
pub async fn jwt(w: &WorkerCtx, id: &str) -> Result<Response, ApiError> {
    let ca = find(w, id).await?;
    let jwt = w
        .jwt
        .sign(&ca.id, &ca.id, Method::Ca, None)
        .map_err(|e| ApiError::Unhandled(e.to_string()))?;
    Ok(Response::bytes(200, "application/jwt", jwt.into_bytes()))
}

/// The identities bound through CA `id` (whose certificate is `ca_der`), and those whose
/// pending enrollment names it: a scan of every identity, run on the store's side.
type Bound = (Vec<crate::model::Identity>, Vec<crate::model::Identity>);

fn bound_to_ca(
    store: &crate::store::Store,
    id: &str,
    ca_der: &[u8],
) -> Result<Bound, crate::store::StoreError> {
    // The CA recorded at binding. A record from before it was recorded, or bound through a
    // CA since deleted (a CA registered again under a renewed certificate, say), counts when
    // this CA signed its certificate itself (one issued through an intermediate cannot be
    // told: only the leaf is stored).
    let registered: std::collections::HashSet<String> =
        store.all_cas()?.into_iter().map(|c| c.id).collect();
    let enrolled = store.identities_where(&mut |i| {
        i.authenticator.as_ref().is_some_and(|a| match &a.ca_id {
            Some(bound_by) if bound_by == id => true,
            Some(bound_by) if registered.contains(bound_by) => false,
            _ => !a.issued_by_network && ca::issued_directly(ca_der, &a.cert_pem),
        })
    })?;
    let mut pending = Vec::new();
    for e in store.enrollments_where(&|e| e.ca_id.as_deref() == Some(id))? {
        if let Some(i) = store.identity(&e.identity_id)? {
            pending.push(i);
        }
    }
    Ok((enrolled, pending))
}
