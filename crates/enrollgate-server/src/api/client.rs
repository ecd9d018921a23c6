//! The client API: `GET /` and `GET /version`, `GET /.well-known/est/cacerts`, enrollment
//! (`POST /enroll?method=...`, `POST /enroll/{method}`), authentication and the current
//! session and identity ([`super::current`]), as OpenZiti clients call them and as
//! OpenZiti's edge client API spec shapes them (docs/openziti-api.md).
//!
//! The enrollment handlers are drivers of the core's steps (`enroll::request` reads the
//! request, `enroll::plan` decides): they read the store, sign on the worker's signing
//! thread, charge rate limits and submit the store command, and decide nothing themselves.

use serde_json::json;

use super::error::{method_not_allowed, ApiError};
use super::request::{Peer, Request};
use crate::app::WorkerCtx;

use crate::clock::UnixTime;
use crate::enroll::plan::{self, ChainForm};
use crate::enroll::request::{self, Endpoint, EnrollRequest};
use crate::http::query::param;
use crate::http::Response;
use crate::model::{Authenticator, Identity, Method};
use crate::pki::csr;
use crate::store::{Command, Outcome};

/// The client API's resources, worked out once from the path below its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resource<'a> {
    /// `/` and `/version`.
    Version,
    /// One of the enrollment routes.
    Enroll(Endpoint),
    /// `/authenticate`.
    Authenticate,
    /// `/crl`.
    Crl,
    /// `/current-identity`.
    CurrentIdentity,
    /// `/current-api-session`.
    CurrentApiSession,
    /// `/current-identity/authenticators...` ([`super::extend`]).
    Authenticators(&'a str),
    /// Nothing here.
    Unknown,
}

impl<'a> Resource<'a> {
    fn of(path: &'a str) -> Self {
        if let Some(endpoint) = Endpoint::of(path) {
            return Resource::Enroll(endpoint);
        }
        match path {
            // `listRoot`: the API's root answers as `/version` does.
            "/" | "/version" => Resource::Version,
            "/authenticate" => Resource::Authenticate,
            "/crl" => Resource::Crl,
            "/current-identity" => Resource::CurrentIdentity,
            "/current-api-session" => Resource::CurrentApiSession,
            p if p.starts_with(super::extend::AUTHENTICATORS) => Resource::Authenticators(p),
            _ => Resource::Unknown,
        }
    }
}

pub(super) async fn route(
    w: &WorkerCtx,
    req: &Request,
    peer: &Peer,
    path: &str,
) -> Result<Response, ApiError> {
    let method = req.head.method.as_str();
    match Resource::of(path) {
        Resource::Version => match method {
            "GET" | "HEAD" => Ok(version()),
            _ => Err(method_not_allowed(req, "GET")),
        },
        Resource::Enroll(endpoint) => {
            if method != "POST" {
                return Err(method_not_allowed(req, "POST"));
            }
            admit_source(w, peer)?;
            enroll(w, peer, request::parse(endpoint, req)?).await
        }
        Resource::Authenticate => {
            if method != "POST" {
                return Err(method_not_allowed(req, "POST"));
            }
            match param(&req.head.query, "method").as_deref() {
                Some("cert") => super::current::authenticate_cert(w, peer).await,
                other => Err(ApiError::InvalidAuth(format!(
                    "authentication method '{}' is not supported; use method=cert",
                    other
                        .unwrap_or_default()
                        .chars()
                        .take(32)
                        .collect::<String>()
                ))),
            }
        }
        Resource::Crl => match method {
            "GET" | "HEAD" => super::crl::get(w).await,
            _ => Err(method_not_allowed(req, "GET")),
        },
        Resource::CurrentIdentity => match method {
            "GET" | "HEAD" => super::current::current_identity(w, req).await,
            _ => Err(method_not_allowed(req, "GET")),
        },
        Resource::CurrentApiSession => match method {
            "GET" | "HEAD" => super::current::current_api_session(w, req).await,
            "DELETE" => super::current::logout(w, req).await,
            _ => Err(method_not_allowed(req, "GET, DELETE")),
        },
        Resource::Authenticators(p) => super::extend::route(w, req, peer, p).await,
        Resource::Unknown => Err(ApiError::NotFound(format!(
            "no such resource: {}",
            req.head.path
        ))),
    }
}

/// Drives the enrollment `request` asks for to its answer.
async fn enroll(
    w: &WorkerCtx,
    peer: &Peer,
    request: EnrollRequest<'_>,
) -> Result<Response, ApiError> {
    match request {
        EnrollRequest::Ott { token, csr, form } => enroll_ott(w, token, &csr, form).await,
        EnrollRequest::Ottca { token } => enroll_ottca(w, peer, token).await,
        EnrollRequest::Ca { requested_name } => {
            let now = w.shared.clock.unix_now();
            let ca = auto_enrollment_ca(w, peer, now)?;
            let created = auto_enroll(w, peer, &ca, requested_name, now).await?;
            Ok(plan::ca_reply(&created))
        }
    }
}

/// The per-source rate limit, checked before any enrollment work.
pub(crate) fn admit_source(w: &WorkerCtx, peer: &Peer) -> Result<(), ApiError> {
    match peer.addr {
        Some(addr) => Ok(w.shared.rates.source(addr.ip())?),
        None => Ok(()),
    }
}

fn version() -> Response {
    let v1 = |path: &str| json!({ "v1": { "path": path, "apiBaseUrls": [] } });
    Response::data(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "runtimeVersion": "rust",
        "apiVersions": {
            "edge": v1(super::request::CLIENT_PREFIX),
            "edge-client": v1(super::request::CLIENT_PREFIX),
            "edge-management": v1(super::request::MANAGEMENT_PREFIX),
        },
        // OpenZiti's capabilities name controller features (HA_CONTROLLER, OIDC_AUTH...)
        // that this gateway does not have; the C SDK warns of every name it does not know
        // on each fetch, so the list is empty rather than one of our own.
        "capabilities": [],
    }))
}

/// Refuses a certificate already bound, as it is or in another encoding of its signature,
/// or revoked, before the CA's rate budget is charged: a device retrying cannot spend it.
/// The committer decides again, atomically; this only answers the common case early.
async fn refuse_bound(shared: &crate::app::Shared, auth: &Authenticator) -> Result<(), ApiError> {
    let auth = auth.clone();
    let (bound, blocked) = shared
        .store
        .read(move |s| s.bound_or_blocked(&auth))
        .await?;
    if bound {
        return Err(ApiError::CertInUse(
            "this certificate is already bound to an identity".into(),
        ));
    }
    if blocked {
        return Err(ApiError::CertRevoked(
            crate::store::revocation::REVOKED_MESSAGE.into(),
        ));
    }
    Ok(())
}

/// The pending enrollment `token` redeems, read off the worker.
async fn pending(
    shared: &crate::app::Shared,
    token: &str,
) -> Result<Option<crate::model::Enrollment>, ApiError> {
    let token = token.to_string();
    Ok(shared
        .store
        .read(move |s| s.enrollment_by_token(&token))
        .await?)
}

/// Redeems an `ottca` token with the client certificate chain of the token's CA.
async fn enroll_ottca(
    w: &WorkerCtx,
    peer: &Peer,
    token: Option<String>,
) -> Result<Response, ApiError> {
    let token = plan::token(token)?;
    let shared = &w.shared;
    let now = shared.clock.unix_now();
    let enrollment = pending(shared, &token).await?;
    let cas = w.cas.current(&shared.cas);
    let redemption = plan::ottca(token, enrollment.as_ref(), &peer.chain, &cas, now)?;
    refuse_bound(shared, &redemption.authenticator).await?;
    // Charged once the request could succeed: whoever holds the token cannot spend the
    // CA's budget with certificates that fail, or that are bound already.
    // (`plan::ottca` always names the token's CA; an empty id is a budget of its own.)
    shared
        .rates
        .ca(redemption.ca_id.as_deref().unwrap_or_default())?;
    let identity_id = redemption.identity_id.clone();
    shared.commit.submit(Command::from(redemption)).await?;
    tracing::info!(identity_id = %identity_id, method = "ottca", "identity enrolled");
    Ok(plan::ottca_reply())
}

/// The verified CA with auto-enrollment that `peer`'s chain verifies against now
/// ([`plan::auto_enrollment_ca`]).
pub(crate) fn auto_enrollment_ca(
    w: &WorkerCtx,
    peer: &Peer,
    now: UnixTime,
) -> Result<crate::model::Ca, plan::Refusal> {
    let cas = w.cas.current(&w.shared.cas);
    plan::auto_enrollment_ca(&peer.chain, &cas, now).cloned()
}

/// Creates the identity `peer`'s certificate auto-enrolls through `ca` (from
/// [`auto_enrollment_ca`]), bound to it: the name from the CA's template, its roles, and
/// the rule that a certificate binds once (`CERT_IN_USE`). For `/enroll?method=ca` and
/// EST's `simpleenroll` by a bootstrap certificate.
pub(crate) async fn auto_enroll(
    w: &WorkerCtx,
    peer: &Peer,
    ca: &crate::model::Ca,
    requested: Option<String>,
    now: UnixTime,
) -> Result<Identity, ApiError> {
    let shared = &w.shared;
    let leaf = peer
        .chain
        .first()
        .ok_or(plan::Refusal::NoClientCertificate(Method::Ca))?;
    let authenticator = plan::presented(leaf, Method::Ca, now)?;
    refuse_bound(shared, &authenticator).await?;
    let identity_id = crate::ids::new_id().map_err(|e| ApiError::Unhandled(e.to_string()))?;
    let identity = plan::auto_identity(
        ca,
        leaf,
        requested.as_deref(),
        identity_id,
        authenticator,
        now,
    )?;
    // Charged once the request could succeed (after the bound check and the name's), so a
    // device retrying a refusal does not spend its CA's budget for the devices waiting.
    shared.rates.ca(&ca.id)?;
    let outcome = shared
        .commit
        .submit(Command::AutoEnroll {
            ca_id: ca.id.clone(),
            identity,
        })
        .await
        .map_err(|e| match e {
            crate::store::StoreError::CaNotUsable(m) => ApiError::CertFailedValidation(m),
            other => other.into(),
        })?;
    let Outcome::Identity(created) = outcome else {
        return Err(ApiError::Unhandled("unexpected store outcome".into()));
    };
    tracing::info!(identity_id = %created.id, ca_id = %ca.id, method = "ca", "identity auto-enrolled");
    Ok(*created)
}

/// Redeems a one-time token with a CSR: token rules, CSR checks, signing, then the atomic
/// redemption (which re-checks the token: only one of many racing requests wins). The one
/// redemption of an `ott` token, for OpenZiti's `/enroll` and EST's `simpleenroll`
/// (`protocol` names the caller in the log).
pub(crate) async fn redeem_ott(
    w: &WorkerCtx,
    token: Option<String>,
    csr_body: &[u8],
    protocol: &'static str,
) -> Result<crate::pki::issue::IssuedCert, ApiError> {
    let token = plan::token(token)?;
    let shared = &w.shared;
    let now = shared.clock.unix_now();
    let enrollment = pending(shared, &token).await?;
    let ott = plan::ott(token, enrollment.as_ref(), now)?;

    // Decoding the body is cheap and stays here; the CSR's signature check and the
    // certificate's signature run on this worker's signing thread.
    let der = csr::decode_body(csr_body)?;
    let (_, issued) = w.signer.sign(der, ott.identity_id(), now).await?;
    let redemption = ott
        .signed(&issued, now)
        .ok_or_else(|| ApiError::Unhandled("the issued certificate does not parse".into()))?;
    let identity_id = redemption.identity_id.clone();
    shared.commit.submit(Command::from(redemption)).await?;
    tracing::info!(identity_id = %identity_id, method = "ott", protocol, "identity enrolled");
    Ok(issued)
}

/// Answers an `ott` enrollment on `/enroll` and `/enroll/ott`: [`redeem_ott`], then the
/// certificate chain as OpenZiti clients read it.
async fn enroll_ott(
    w: &WorkerCtx,
    token: Option<String>,
    csr_body: &[u8],
    form: ChainForm,
) -> Result<Response, ApiError> {
    let issued = redeem_ott(w, token, csr_body, "ott").await?;
    let shared = &w.shared;
    Ok(plan::ott_reply(
        &issued,
        &shared.issued_chain_tail_pem,
        &shared.ca_bundle_pem,
        form,
    ))
}
