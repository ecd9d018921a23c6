//! The client API: `GET /version`, `GET /.well-known/est/cacerts`, and enrollment
//! (`POST /enroll?method=...`, `POST /enroll/{method}`), as OpenZiti clients call them.

use serde::Deserialize;
use serde_json::json;

use super::{json_body, method_not_allowed, ApiError, Peer, Request};
use crate::app::WorkerCtx;
use crate::enroll::check_token;
use crate::http::query::param;
use crate::http::Response;
use crate::model::{Authenticator, Method};
use crate::pki::{csr, fingerprint};
use crate::store::Command;

/// Media types accepted for a CSR body (and none at all).
pub const CSR_MEDIA_TYPES: [&str; 3] =
    ["text/plain", "application/x-pem-file", "application/pkcs10"];

pub(super) async fn route(
    w: &WorkerCtx,
    req: &Request,
    peer: &Peer,
    path: &str,
) -> Result<Response, ApiError> {
    let method = req.head.method.as_str();
    match path {
        "/version" => match method {
            "GET" | "HEAD" => Ok(version()),
            _ => Err(method_not_allowed(req, "GET")),
        },
        "/.well-known/est/cacerts" => match method {
            "GET" | "HEAD" => Ok(Response::bytes(
                200,
                "application/pkcs7-mime",
                w.shared.cacerts_b64.clone().into_bytes(),
            )),
            _ => Err(method_not_allowed(req, "GET")),
        },
        "/enroll" => {
            if method != "POST" {
                return Err(method_not_allowed(req, "POST"));
            }
            let name = param(&req.head.query, "method").unwrap_or_default();
            let em = Method::parse(&name).ok_or_else(|| {
                ApiError::InvalidEnrollMethod(format!(
                    "unknown enrollment method '{}': use ott, ottca or ca",
                    name.chars().take(32).collect::<String>()
                ))
            })?;
            match em {
                Method::Ott => {
                    check_csr_media(req)?;
                    let token = param(&req.head.query, "token");
                    let want_pem = req.head.accepts("application/x-pem-file")
                        && !req.head.accepts("application/json");
                    enroll_ott(w, token, &req.body, want_pem).await
                }
                other => not_enabled(other),
            }
        }
        "/enroll/ott" => {
            if method != "POST" {
                return Err(method_not_allowed(req, "POST"));
            }
            #[derive(Deserialize)]
            #[serde(rename_all = "camelCase")]
            struct Body {
                token: Option<String>,
                client_csr: Option<String>,
            }
            let body: Body = json_body(req)?;
            let csr = body.client_csr.ok_or_else(|| {
                ApiError::CouldNotProcessCsr("the body has no 'clientCsr' field".into())
            })?;
            enroll_ott(w, body.token, csr.as_bytes(), false).await
        }
        "/enroll/ottca" | "/enroll/ca" => {
            if method != "POST" {
                return Err(method_not_allowed(req, "POST"));
            }
            let em = if path == "/enroll/ca" {
                Method::Ca
            } else {
                Method::Ottca
            };
            let _ = peer;
            not_enabled(em)
        }
        _ => Err(ApiError::NotFound(format!(
            "no such resource: {}",
            req.head.path
        ))),
    }
}

fn version() -> Response {
    let v1 = |path: &str| json!({ "v1": { "path": path, "apiBaseUrls": [] } });
    Response::data(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "runtimeVersion": "rust",
        "apiVersions": {
            "edge": v1(super::CLIENT_PREFIX),
            "edge-client": v1(super::CLIENT_PREFIX),
            "edge-management": v1(super::MANAGEMENT_PREFIX),
        },
        "capabilities": ["OTT_ENROLLMENT"],
    }))
}

fn not_enabled(em: Method) -> Result<Response, ApiError> {
    Err(ApiError::InvalidEnrollMethod(format!(
        "enrollment method '{}' is not available on this gateway: it has no third-party CAs",
        em.as_str()
    )))
}

fn check_csr_media(req: &Request) -> Result<(), ApiError> {
    match req.head.content_type() {
        None => Ok(()),
        Some(t) if CSR_MEDIA_TYPES.contains(&t.as_str()) => Ok(()),
        Some(t) => Err(ApiError::UnsupportedMedia(format!(
            "content type '{}' is not accepted for a CSR; send text/plain, application/x-pem-file or application/pkcs10",
            t.chars().take(64).collect::<String>()
        ))),
    }
}

/// Redeems a one-time token with a CSR: token rules, CSR checks, signing, then the atomic
/// redemption (which re-checks the token: only one of many racing requests wins).
async fn enroll_ott(
    w: &WorkerCtx,
    token: Option<String>,
    csr_body: &[u8],
    want_pem: bool,
) -> Result<Response, ApiError> {
    let token = token.filter(|t| !t.is_empty()).ok_or_else(|| {
        ApiError::InvalidEnrollmentToken("the request has no enrollment token".into())
    })?;
    if !crate::ids::is_well_formed(&token) {
        return Err(crate::enroll::EnrollError::UnknownToken.into());
    }
    let shared = &w.shared;
    let now = shared.clock.unix_now();
    let enrollment = shared.store.enrollment_by_token(&token)?;
    let enrollment = check_token(enrollment.as_ref(), Method::Ott, now)?;

    let der = csr::decode_body(csr_body)?;
    let accepted = csr::accept(&der)?;
    let issued = w
        .signer
        .issue_client(&accepted.spki_der, &enrollment.identity_id, now)
        .map_err(|e| ApiError::Unhandled(e.to_string()))?;

    let authenticator = Authenticator {
        fingerprint_sha256: fingerprint::sha256_hex(&issued.der),
        fingerprint_sha1: fingerprint::sha1_hex(&issued.der),
        cert_pem: issued.pem.clone(),
        issued_by_network: true,
        not_before: issued.not_before,
        not_after: issued.not_after,
        method: Method::Ott,
        created_at: now,
    };
    shared
        .commit
        .submit(Command::RedeemOtt {
            token,
            identity_id: enrollment.identity_id.clone(),
            authenticator,
            now,
        })
        .await?;
    tracing::info!(identity_id = %enrollment.identity_id, method = "ott", "identity enrolled");

    if want_pem {
        return Ok(Response::bytes(
            200,
            "application/x-pem-file",
            issued.pem.into_bytes(),
        ));
    }
    Ok(Response::data(json!({
        "cert": issued.pem,
        "ca": shared.ca_bundle_pem,
    })))
}
