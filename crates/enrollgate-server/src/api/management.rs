//! The management API (`/edge/management/v1`): identities and enrollments. Every request
//! must come with the client certificate of an enrolled identity that `isAdmin`, or the
//! `zt-session` header of such an identity's session (the console; `console::authorize`),
//! and not from another site (`console::refuse_cross_site`).

use serde::Deserialize;
use serde_json::json;

use super::error::{method_not_allowed, ApiError};
use super::filter::NameFilter;
use super::records::{find_enrollment, find_identity, new_enrollment, parse_expires_at};
use super::request::{json_body, Peer, Request};
use super::views;
use crate::app::WorkerCtx;
use crate::enroll::validate_name;
use crate::http::query::param;
use crate::http::Response;
use crate::model::{Enrollment, Identity, IdentityType, Method};
use crate::store::{Command, Outcome};

/// Largest page a list returns.
pub const MAX_LIMIT: usize = 1000;
/// Page size when `limit` is absent.
pub const DEFAULT_LIMIT: usize = 100;

pub(super) async fn route(
    w: &WorkerCtx,
    req: &Request,
    peer: &Peer,
    path: &str,
) -> Result<Response, ApiError> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    super::console::refuse_cross_site(req)?;
    if let Some(signed_in) = super::console::open_route(w, req, peer, &segments).await {
        return signed_in;
    }
    let admin = super::console::authorize(w, req, peer).await?;
    let m = req.head.method.as_str();
    match (segments.as_slice(), m) {
        (["console", rest @ ..], _) => super::console::admin_route(w, req, &admin, rest),
        (["version"], "GET") => Ok(Response::data(
            json!({ "version": env!("CARGO_PKG_VERSION") }),
        )),
        (["identities"], "GET") => list_identities(w, req).await,
        (["identities"], "POST") => create_identity(w, req).await,
        (["identities"], _) => Err(method_not_allowed(req, "GET, POST")),
        (["identities", id], "GET") => show_identity(w, id).await,
        (["identities", id], "DELETE") => delete_identity(w, id).await,
        (["identities", _], _) => Err(method_not_allowed(req, "GET, DELETE")),
        (["identities", id, "disable"], "POST") => super::revoke::disable(w, req, id).await,
        (["identities", id, "enable"], "POST") => super::revoke::enable(w, id).await,
        (["identities", id, "re-enroll"], "POST") => super::revoke::re_enroll(w, req, id).await,
        (["authenticators", id, "re-enroll"], "POST") => {
            super::revoke::re_enroll_authenticator(w, req, id).await
        }
        (["revocations"], "GET") => super::revoke::list(w).await,
        (["revocations", id], "DELETE") => super::revoke::lift(w, id).await,
        (["identities", id, "request-extend"], "POST") => {
            super::extend::request_extend(w, req, &find_identity(w, id).await?).await
        }
        (["authenticators", id, "request-extend"], "POST") => {
            let identity = super::extend::identity_of_authenticator(w, id).await?;
            super::extend::request_extend(w, req, &identity).await
        }
        (["enrollments"], "GET") => list_enrollments(w, req).await,
        (["enrollments"], "POST") => create_enrollment(w, req).await,
        (["enrollments"], _) => Err(method_not_allowed(req, "GET, POST")),
        (["enrollments", id], "GET") => Ok(Response::data(views::enrollment(&revealed(
            w,
            find_enrollment(w, id).await?,
        )?))),
        (["enrollments", id, "jwt"], "GET") => {
            let e = revealed(w, find_enrollment(w, id).await?)?;
            Ok(Response::bytes(200, "application/jwt", e.jwt.into_bytes()))
        }
        (["enrollments", id, "qr.svg"], "GET") => {
            super::console::qr_response(&revealed(w, find_enrollment(w, id).await?)?.jwt)
        }
        (["enrollments", id, "refresh"], "POST") => refresh_enrollment(w, req, id).await,
        (["cas"], "GET") => super::cas::list(w).await,
        (["cas"], "POST") => super::cas::create(w, req).await,
        (["cas"], _) => Err(method_not_allowed(req, "GET, POST")),
        (["cas", id], "GET") => Ok(Response::data(super::cas::view(
            &super::cas::find(w, id).await?,
        ))),
        (["cas", id], "PATCH" | "PUT") => super::cas::update(w, req, id).await,
        (["cas", id], "DELETE") => super::cas::delete(w, id).await,
        (["cas", _], _) => Err(method_not_allowed(req, "GET, PATCH, PUT, DELETE")),
        (["cas", id, "verify"], "POST") => super::cas::verify(w, req, id).await,
        (["cas", id, "jwt"], "GET") => super::cas::jwt(w, id).await,
        (["cas", id, "bound-identities"], "GET") => super::cas::bound_identities(w, id).await,
        _ => Err(ApiError::NotFound(format!(
            "no such resource: {}",
            req.head.path
        ))),
    }
}

fn page_params(req: &Request) -> Result<(usize, usize), ApiError> {
    let number = |name: &str, default: usize| -> Result<usize, ApiError> {
        match param(&req.head.query, name) {
            None => Ok(default),
            Some(v) => v.parse::<usize>().map_err(|_| {
                ApiError::InvalidParameter(format!("'{name}' must be a whole number"))
            }),
        }
    };
    let limit = number("limit", DEFAULT_LIMIT)?;
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::InvalidParameter(format!(
            "'limit' must be from 1 to {MAX_LIMIT}"
        )));
    }
    Ok((number("offset", 0)?, limit))
}

fn pagination(offset: usize, limit: usize, total: usize) -> serde_json::Value {
    json!({ "pagination": { "limit": limit, "offset": offset, "totalCount": total } })
}

async fn pending_of(w: &WorkerCtx, i: &Identity) -> Result<Option<Enrollment>, ApiError> {
    match &i.enrollment_id {
        Some(eid) => {
            let eid = eid.clone();
            w.shared
                .store
                .read(move |s| s.enrollment(&eid))
                .await?
                .map(|e| with_token(w, e))
                .transpose()
        }
        None => Ok(None),
    }
}

/// A stored enrollment with its token and JWT, which the store does not keep: the token
/// derived again from the token key, the JWT signed again with the same claims.
fn revealed(w: &WorkerCtx, e: Enrollment) -> Result<Enrollment, ApiError> {
    let e = with_token(w, e)?;
    if e.token.is_empty() {
        return Err(ApiError::InvalidState(format!(
            "enrollment {} was made with another token key (pki.token_key); refresh it to \
             download a token",
            e.id
        )));
    }
    Ok(e)
}

/// [`revealed`], or, for an enrollment made under another token key (`pki.token_key`
/// replaced), the enrollment without token and JWT: what the key derives now would not
/// redeem it (the JWT handed out then still does). For listings.
fn with_token(w: &WorkerCtx, mut e: Enrollment) -> Result<Enrollment, ApiError> {
    let token = w.shared.tokens.derive(&e.id);
    if !e.token_sha256.contains(&crate::token::token_sha256(&token)) {
        return Ok(e);
    }
    e.jwt = w
        .jwt
        .sign(&e.identity_id, &token, e.method, Some(e.expires_at))
        .map_err(|e| ApiError::Unhandled(e.to_string()))?;
    e.token = token;
    Ok(e)
}

async fn list_identities(w: &WorkerCtx, req: &Request) -> Result<Response, ApiError> {
    let (offset, limit) = page_params(req)?;
    let filter = match (
        param(&req.head.query, "filter"),
        param(&req.head.query, "name"),
    ) {
        (Some(f), _) => NameFilter::parse(&f).map_err(ApiError::InvalidParameter)?,
        (None, Some(name)) => NameFilter::Eq(name),
        (None, None) => NameFilter::All,
    };
    // type, state, certExpiringWithin (identity_query.rs): one pass over the identity
    // records, off the worker's thread; without them, only the name index is walked.
    let query = super::identity_query::IdentityQuery::parse(&req.head.query)?;
    let store = &w.shared.store;
    let now = w.shared.clock.unix_now();
    let page = if query.is_all() {
        store
            .read(move |s| s.list_identities(offset, limit, &|name| filter.matches(name)))
            .await?
    } else {
        super::identity_query::page_off_worker(store.clone(), filter, query, now, offset, limit)
            .await?
    };
    let mut data = Vec::with_capacity(page.items.len());
    for i in &page.items {
        let mut view = views::identity(i, pending_of(w, i).await?.as_ref());
        super::revoke::with_suspension(&mut view, i, now);
        data.push(view);
    }
    Ok(Response::json(
        200,
        &json!({ "data": data, "meta": pagination(offset, limit, page.total) }),
    ))
}

async fn show_identity(w: &WorkerCtx, id: &str) -> Result<Response, ApiError> {
    let i = find_identity(w, id).await?;
    let mut view = views::identity(&i, pending_of(w, &i).await?.as_ref());
    super::revoke::with_suspension(&mut view, &i, w.shared.clock.unix_now());
    Ok(Response::data(view))
}

async fn delete_identity(w: &WorkerCtx, id: &str) -> Result<Response, ApiError> {
    find_identity(w, id).await?;
    w.shared
        .commit
        .submit(Command::DeleteIdentity {
            id: id.to_string(),
            now: w.shared.clock.unix_now(),
        })
        .await?;
    // Its sessions end with it: a session's identity is read on every request.
    tracing::info!(identity_id = %id, "identity deleted");
    Ok(Response::data(json!({})))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnrollmentSpec {
    #[serde(default)]
    ott: Option<serde_json::Value>,
    #[serde(default)]
    ottca: Option<serde_json::Value>,
    #[serde(default)]
    updb: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreateIdentity {
    name: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    is_admin: bool,
    #[serde(default)]
    role_attributes: Option<Vec<String>>,
    #[serde(default)]
    enrollment: Option<EnrollmentSpec>,
}

async fn create_identity(w: &WorkerCtx, req: &Request) -> Result<Response, ApiError> {
    let body: CreateIdentity = json_body(req)?;
    let name = body
        .name
        .ok_or_else(|| ApiError::CouldNotParseBody("the body has no 'name'".into()))?;
    validate_name(&name)?;
    let kind_text = body.kind.unwrap_or_else(|| "User".into());
    let kind = IdentityType::parse(&kind_text).ok_or_else(|| {
        ApiError::CouldNotParseBody(format!(
            "'type' must be User, Device or Service, not '{}'",
            kind_text.chars().take(32).collect::<String>()
        ))
    })?;
    let role_attributes = body.role_attributes.unwrap_or_default();
    if role_attributes.len() > 100
        || role_attributes
            .iter()
            .any(|a| a.is_empty() || a.len() > 255)
    {
        return Err(ApiError::CouldNotParseBody(
            "'roleAttributes' takes at most 100 non-empty strings of at most 255 bytes".into(),
        ));
    }
    let wanted = match &body.enrollment {
        None => None,
        Some(spec) => {
            if spec.updb.is_some() {
                return Err(ApiError::InvalidEnrollMethod(
                    "enrollment method 'updb' (passwords) is not supported: enrollgate enrolls certificates".into(),
                ));
            }
            let ott = !matches!(
                spec.ott,
                None | Some(serde_json::Value::Bool(false)) | Some(serde_json::Value::Null)
            );
            match (&spec.ottca, ott) {
                (Some(_), true) => {
                    return Err(ApiError::InvalidEnrollMethod(
                        "choose one enrollment method: 'ott' or 'ottca'".into(),
                    ))
                }
                (Some(serde_json::Value::String(ca_id)), false) => {
                    let ca = super::cas::find(w, ca_id).await.map_err(|_| {
                        ApiError::EnrollmentCaNotValid(format!(
                            "no CA with id '{}' for the ottca enrollment",
                            ca_id.chars().take(64).collect::<String>()
                        ))
                    })?;
                    Some((Method::Ottca, Some(ca.id)))
                }
                (Some(_), false) => {
                    return Err(ApiError::CouldNotParseBody(
                        "'enrollment.ottca' must be the id of a CA".into(),
                    ))
                }
                (None, true) => Some((Method::Ott, None)),
                (None, false) => None,
            }
        }
    };

    let now = w.shared.clock.unix_now();
    let id = crate::ids::new_id().map_err(|e| ApiError::Unhandled(e.to_string()))?;
    let enrollment = match wanted {
        Some((method, ca_id)) => Some(new_enrollment(w, &id, method, ca_id, now, None)?),
        None => None,
    };
    let identity = Identity {
        id,
        name,
        kind,
        is_admin: body.is_admin,
        role_attributes,
        created_at: now,
        updated_at: now,
        enrollment_id: None,
        lifecycle: Default::default(),
        authenticator: None,
    };
    let outcome = w
        .shared
        .commit
        .submit(Command::CreateIdentity {
            identity,
            enrollment: enrollment.clone(),
        })
        .await?;
    let Outcome::Identity(created) = outcome else {
        return Err(ApiError::Unhandled("unexpected store outcome".into()));
    };
    tracing::info!(identity_id = %created.id, kind = created.kind.as_str(), "identity created");
    let mut view = views::identity(&created, enrollment.as_ref());
    super::revoke::with_suspension(&mut view, &created, now);
    Ok(Response::json(201, &json!({ "data": view, "meta": {} })))
}

async fn list_enrollments(w: &WorkerCtx, req: &Request) -> Result<Response, ApiError> {
    let (offset, limit) = page_params(req)?;
    let page = w
        .shared
        .store
        .read(move |s| s.list_enrollments(offset, limit))
        .await?;
    let mut data = Vec::with_capacity(page.items.len());
    for e in page.items {
        data.push(views::enrollment(&with_token(w, e)?));
    }
    Ok(Response::json(
        200,
        &json!({ "data": data, "meta": pagination(offset, limit, page.total) }),
    ))
}

async fn replace_enrollment(
    w: &WorkerCtx,
    identity_id: &str,
    method: Method,
    ca_id: Option<String>,
    expires_at: Option<&str>,
) -> Result<Response, ApiError> {
    let now = w.shared.clock.unix_now();
    let expires_at = parse_expires_at(expires_at, now)?;
    let e = new_enrollment(w, identity_id, method, ca_id, now, expires_at)?;
    w.shared
        .commit
        .submit(Command::ReplaceEnrollment {
            identity_id: identity_id.to_string(),
            enrollment: e.clone(),
        })
        .await?;
    tracing::info!(identity_id = %identity_id, method = method.as_str(), "enrollment token issued");
    Ok(Response::json(
        201,
        &json!({ "data": views::enrollment(&e), "meta": {} }),
    ))
}

async fn create_enrollment(w: &WorkerCtx, req: &Request) -> Result<Response, ApiError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Body {
        identity_id: Option<String>,
        method: Option<String>,
        ca_id: Option<String>,
        expires_at: Option<String>,
    }
    let body: Body = json_body(req)?;
    let identity_id = body
        .identity_id
        .ok_or_else(|| ApiError::CouldNotParseBody("the body has no 'identityId'".into()))?;
    let (method, ca_id) = match body.method.as_deref() {
        None | Some("ott") => (Method::Ott, None),
        Some("ottca") => {
            let ca_id = body.ca_id.ok_or_else(|| {
                ApiError::CouldNotParseBody("an ottca enrollment needs 'caId'".into())
            })?;
            let ca = super::cas::find(w, &ca_id).await.map_err(|_| {
                ApiError::EnrollmentCaNotValid(format!(
                    "no CA with id '{}'",
                    ca_id.chars().take(64).collect::<String>()
                ))
            })?;
            (Method::Ottca, Some(ca.id))
        }
        Some(other) => {
            return Err(ApiError::InvalidEnrollMethod(format!(
                "only 'ott' and 'ottca' enrollments can be created, not '{}'",
                other.chars().take(32).collect::<String>()
            )))
        }
    };
    find_identity(w, &identity_id).await?;
    replace_enrollment(w, &identity_id, method, ca_id, body.expires_at.as_deref()).await
}

async fn refresh_enrollment(w: &WorkerCtx, req: &Request, id: &str) -> Result<Response, ApiError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Body {
        expires_at: Option<String>,
    }
    let body: Body = json_body(req)?;
    let e = find_enrollment(w, id).await?;
    // The new token keeps the method (and CA) of the one it replaces: not a CA that is
    // gone, whose token nobody could redeem.
    if let Some(ca_id) = &e.ca_id {
        super::cas::find(w, ca_id).await.map_err(|e| match e {
            ApiError::NotFound(_) => ApiError::EnrollmentCaNotValid(format!(
                "the enrollment's CA (id '{ca_id}') no longer exists: delete this enrollment \
                 and create another (ott, or ottca with an existing CA)"
            )),
            other => other,
        })?;
    }
    replace_enrollment(
        w,
        &e.identity_id,
        e.method,
        e.ca_id,
        body.expires_at.as_deref(),
    )
    .await
}
