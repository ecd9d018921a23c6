//! Conformance with OpenZiti's published edge client API (openziti/edge-api, `client.yml`,
//! Swagger 2.0): every operation the gateway serves under `/edge/client/v1` (and at the
//! root) answers, on the real daemon, with the spec's required fields, field types and
//! listed statuses, for successes and for the error envelope.
//!
//! The schemas below are written here from the spec's facts (definition names, required
//! fields, types, enums, nullability); the spec file itself is not in this repository.
//! Swagger 2.0 objects accept extra properties, so extra keys pass; an absent required
//! key, a wrong type, a `null` where the spec does not allow one, or a status the spec does
//! not list for the operation (beyond the deviations docs/openziti-api.md gives) fails.

use std::process::Command;

use serde_json::{json, Value};

use crate::fleet::*;
use crate::support::*;

// ---------------------------------------------------------------------------------------
// A small schema language, enough for the definitions these operations use.

#[derive(Clone, Debug)]
enum S {
    Str,
    /// `format: date-time` (RFC 3339).
    DateTime,
    Bool,
    /// `type: integer` within bounds.
    Int(i64, i64),
    /// `type: number`.
    Num,
    Enum(&'static [&'static str]),
    Arr(Box<S>),
    /// `additionalProperties`: an object whose every value has this schema.
    Map(Box<S>),
    /// Properties: (name, required, schema).
    Obj(Vec<(&'static str, bool, S)>),
    /// `x-nullable: true`.
    Nullable(Box<S>),
    /// Any JSON value (no type given).
    Any,
}

use S::*;

fn arr(s: S) -> S {
    Arr(Box::new(s))
}
fn map(s: S) -> S {
    Map(Box::new(s))
}
fn nullable(s: S) -> S {
    Nullable(Box::new(s))
}
fn req(name: &'static str, s: S) -> (&'static str, bool, S) {
    (name, true, s)
}
fn opt(name: &'static str, s: S) -> (&'static str, bool, S) {
    (name, false, s)
}

/// The problems of `v` against `s`, with JSON paths.
fn check(v: &Value, s: &S, path: &str, out: &mut Vec<String>) {
    let wrong = |want: &str| format!("{path}: expected {want}, got {v}");
    match s {
        Any => {}
        Nullable(inner) => {
            if !v.is_null() {
                check(v, inner, path, out);
            }
        }
        Str => {
            if !v.is_string() {
                out.push(wrong("a string"));
            }
        }
        DateTime => match v.as_str() {
            Some(t) if humantime::parse_rfc3339_weak(t).is_ok() => {}
            _ => out.push(wrong("an RFC 3339 date-time")),
        },
        Bool => {
            if !v.is_boolean() {
                out.push(wrong("a boolean"));
            }
        }
        Int(lo, hi) => match v.as_i64() {
            Some(n) if (*lo..=*hi).contains(&n) => {}
            _ => out.push(wrong(&format!("an integer in {lo}..={hi}"))),
        },
        Num => {
            if !v.is_number() {
                out.push(wrong("a number"));
            }
        }
        Enum(values) => match v.as_str() {
            Some(x) if values.contains(&x) => {}
            _ => out.push(wrong(&format!("one of {values:?}"))),
        },
        Arr(item) => match v.as_array() {
            Some(items) => {
                for (i, x) in items.iter().enumerate() {
                    check(x, item, &format!("{path}[{i}]"), out);
                }
            }
            None => out.push(wrong("an array")),
        },
        Map(value) => match v.as_object() {
            Some(m) => {
                for (k, x) in m {
                    check(x, value, &format!("{path}.{k}"), out);
                }
            }
            None => out.push(wrong("an object")),
        },
        Obj(props) => match v.as_object() {
            Some(m) => {
                for (name, required, schema) in props {
                    match m.get(*name) {
                        Some(x) => check(x, schema, &format!("{path}.{name}"), out),
                        None if *required => {
                            out.push(format!("{path}: required field '{name}' is absent"))
                        }
                        None => {}
                    }
                }
            }
            None => out.push(wrong("an object")),
        },
    }
}

fn problems(v: &Value, s: &S) -> Vec<String> {
    let mut out = Vec::new();
    check(v, s, "$", &mut out);
    out
}

// ---------------------------------------------------------------------------------------
// The spec's definitions (client.yml and source/shared/*.yml), as facts.

fn meta() -> S {
    Obj(vec![
        opt("apiEnrollmentVersion", Str),
        opt("apiVersion", Str),
        opt("filterableFields", arr(Str)),
        opt(
            "pagination",
            Obj(vec![
                req("limit", Num),
                req("offset", Num),
                req("totalCount", Num),
            ]),
        ),
    ])
}

/// `data` and `meta`, both required (`empty`, `listVersionEnvelope`,
/// `currentApiSessionDetailEnvelope`, `currentIdentityDetailEnvelope`).
fn envelope(data: S) -> S {
    Obj(vec![req("data", data), req("meta", meta())])
}

/// `empty`: `data` is any object.
fn empty() -> S {
    envelope(Obj(vec![]))
}

/// `enrollmentCertsEnvelope`: neither `data` nor `meta` is required.
fn enrollment_certs_envelope() -> S {
    Obj(vec![
        opt(
            "data",
            Obj(vec![
                opt("ca", Str),
                opt("cert", Str),
                opt("serverCert", Str),
            ]),
        ),
        opt("meta", meta()),
    ])
}

fn api_error_args() -> S {
    Obj(vec![opt("urlVars", map(Str))])
}

/// `apiErrorEnvelope`: `error` and `meta` required; no field of `apiError` is.
fn api_error_envelope() -> S {
    Obj(vec![
        req(
            "error",
            Obj(vec![
                opt("args", api_error_args()),
                opt("cause", Any),
                opt("causeMessage", Str),
                opt("code", Str),
                opt("data", map(Any)),
                opt("message", Str),
                opt("requestId", Str),
            ]),
        ),
        req("meta", meta()),
    ])
}

fn list_version_envelope() -> S {
    let api_version = Obj(vec![
        opt("apiBaseUrls", arr(Str)),
        req("path", Str),
        opt("version", Str),
    ]);
    envelope(Obj(vec![
        opt("apiVersions", map(map(api_version))),
        opt("buildDate", Str),
        opt("capabilities", arr(Str)),
        opt("revision", Str),
        opt("runtimeVersion", Str),
        opt("version", Str),
    ]))
}

/// `links`: a map of `link`, whose `href` is required.
fn links() -> S {
    map(Obj(vec![
        opt("comment", Str),
        req("href", Str),
        opt("method", Str),
    ]))
}

fn entity_ref() -> S {
    Obj(vec![
        opt("_links", links()),
        opt("entity", Str),
        opt("id", Str),
        opt("name", Str),
    ])
}

/// `tags`: nullable; values null, string, boolean (or number).
fn tags() -> S {
    nullable(map(Any))
}

/// `baseEntity`'s fields, then the definition's own.
fn base_entity(mut own: Vec<(&'static str, bool, S)>) -> S {
    let mut props = vec![
        req("_links", links()),
        req("createdAt", DateTime),
        req("id", Str),
        opt("tags", tags()),
        req("updatedAt", DateTime),
    ];
    props.append(&mut own);
    Obj(props)
}

fn auth_query_detail() -> S {
    Obj(vec![
        opt("clientId", Str),
        opt("format", Enum(&["numeric", "alpha", "alphaNumeric"])),
        opt("httpMethod", Str),
        opt("httpUrl", Str),
        opt("id", Str),
        opt("isTotpEnrolled", Bool),
        opt("maxLength", Int(i64::MIN, i64::MAX)),
        opt("minLength", Int(i64::MIN, i64::MAX)),
        req("provider", Enum(&["ziti", "url"])),
        opt("scopes", arr(Str)),
        opt("typeId", Enum(&["MFA", "TOTP", "EXT-JWT"])),
    ])
}

/// `currentApiSessionDetail`: `apiSessionDetail` (over `baseEntity`) plus
/// `expirationSeconds` and `expiresAt`. `cachedUpdatedAt` is required by the spec without
/// a property of that name (so without a type).
fn current_api_session_detail() -> S {
    base_entity(vec![
        req("authQueries", arr(auth_query_detail())),
        req("authenticatorId", Str),
        opt("cachedLastActivityAt", DateTime),
        req("cachedUpdatedAt", Any),
        req("configTypes", arr(Str)),
        req("identity", entity_ref()),
        req("identityId", Str),
        opt("improperClientCertChain", Bool),
        req("ipAddress", Str),
        opt("isCertExtendRequested", Bool),
        req("isCertExtendable", Bool),
        opt("isCertKeyRollRequested", Bool),
        req("isMfaComplete", Bool),
        req("isMfaRequired", Bool),
        opt("lastActivityAt", DateTime),
        req("token", Str),
        req("expirationSeconds", Int(i64::MIN, i64::MAX)),
        req("expiresAt", DateTime),
    ])
}

/// `identityDetail` (over `baseEntity`).
fn identity_detail() -> S {
    let cost = || Int(0, 65535);
    let precedence = || Enum(&["default", "required", "failed"]);
    let pending = |ca: bool| {
        let mut p = vec![
            opt("expiresAt", DateTime),
            opt("id", Str),
            opt("jwt", Str),
            opt("token", Str),
        ];
        if ca {
            p.push(opt("ca", entity_ref()));
            p.push(opt("caId", Str));
        }
        Obj(p)
    };
    let info = |fields: &[&'static str]| Obj(fields.iter().map(|f| opt(f, Str)).collect());
    base_entity(vec![
        opt("appData", tags()),
        req("authPolicy", entity_ref()),
        req("authPolicyId", Str),
        req(
            "authenticators",
            Obj(vec![
                opt("cert", Obj(vec![opt("fingerprint", Str), opt("id", Str)])),
                opt("updb", Obj(vec![opt("id", Str), opt("username", Str)])),
            ]),
        ),
        req("defaultHostingCost", cost()),
        opt("defaultHostingPrecedence", precedence()),
        req("disabled", Bool),
        opt("disabledAt", nullable(DateTime)),
        opt("disabledUntil", nullable(DateTime)),
        req(
            "edgeRouterConnectionStatus",
            Enum(&["online", "offline", "unknown"]),
        ),
        req(
            "enrollment",
            Obj(vec![
                opt("ott", pending(false)),
                opt("ottca", pending(true)),
                opt("updb", pending(false)),
            ]),
        ),
        req(
            "envInfo",
            info(&["arch", "domain", "hostname", "os", "osRelease", "osVersion"]),
        ),
        req("externalId", nullable(Str)),
        req("hasApiSession", Bool),
        req("hasEdgeRouterConnection", Bool),
        opt("interfaces", arr(Any)),
        req("isAdmin", Bool),
        req("isDefaultAdmin", Bool),
        req("isMfaEnabled", Bool),
        req("name", Str),
        // An enum of permission names; the values are checked against none of them here
        // because the gateway grants none through this list.
        req("permissions", nullable(arr(Str))),
        req("roleAttributes", nullable(arr(Str))),
        req(
            "sdkInfo",
            info(&[
                "appId",
                "appVersion",
                "branch",
                "revision",
                "type",
                "version",
            ]),
        ),
        req("serviceHostingCosts", map(cost())),
        req("serviceHostingPrecedences", map(precedence())),
        req("type", entity_ref()),
        req("typeId", Str),
    ])
}

/// `authenticatorDetail` (over `baseEntity`). The spec requires `method`, `identityId` and
/// `identity`; the certificate fields are required here too, as a certificate
/// authenticator always has them (clients read them to renew).
fn authenticator_detail() -> S {
    base_entity(vec![
        req("method", Enum(&["cert", "updb"])),
        req("identityId", Str),
        req("identity", entity_ref()),
        req("certPem", Str),
        req("fingerprint", Str),
        opt("username", Str),
        req("isIssuedByNetwork", Bool),
        req("isExtendRequested", Bool),
        req("isKeyRollRequested", Bool),
        opt("extendRequestedAt", nullable(DateTime)),
        opt("lastAuthResolvedToRoot", Bool),
    ])
}

// ---------------------------------------------------------------------------------------
// The operations and the statuses the spec lists for each.

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    ListRoot,
    ListVersion,
    ListWellKnownCas,
    Enroll,
    EnrollOtt,
    EnrollOttCa,
    EnrollCa,
    Authenticate,
    GetCurrentIdentity,
    GetCurrentApiSession,
    DeleteCurrentApiSession,
    ListCurrentIdentityAuthenticators,
    DetailCurrentIdentityAuthenticator,
    ExtendCurrentIdentityAuthenticator,
    ExtendVerifyCurrentIdentityAuthenticator,
}

impl Op {
    /// The statuses `client.yml` lists.
    fn listed(self) -> &'static [u16] {
        match self {
            Op::ListRoot | Op::ListVersion | Op::ListWellKnownCas => &[200],
            Op::Enroll => &[200, 400, 404, 409, 410, 429, 503],
            Op::EnrollOtt | Op::EnrollCa => &[200, 400, 404, 429, 503],
            Op::EnrollOttCa => &[200, 400, 429, 503],
            Op::Authenticate => &[200, 400, 401, 429],
            Op::GetCurrentIdentity | Op::GetCurrentApiSession | Op::DeleteCurrentApiSession => {
                &[200, 401]
            }
            Op::ListCurrentIdentityAuthenticators => &[200, 400, 401],
            Op::DetailCurrentIdentityAuthenticator => &[200, 401, 404],
            Op::ExtendCurrentIdentityAuthenticator
            | Op::ExtendVerifyCurrentIdentityAuthenticator => &[200, 401],
        }
    }

    /// Other statuses the gateway answers on purpose, each with the one error code it
    /// carries (docs/openziti-api.md says why). A 500 or a 503 is never expected here.
    fn deviations(self) -> Vec<(u16, &'static str)> {
        // HTTP-level refusals any operation may get, before the operation is chosen.
        let mut d = vec![
            (400, "MALFORMED_REQUEST"),
            (405, "METHOD_NOT_ALLOWED"),
            (411, "LENGTH_REQUIRED"),
            (413, "REQUEST_TOO_LARGE"),
            (431, "HEADERS_TOO_LARGE"),
        ];
        match self {
            // A body of a type the operation does not take.
            Op::Enroll | Op::EnrollOtt => d.push((415, "UNSUPPORTED_MEDIA")),
            // ... and a certificate already bound: 409, as OpenZiti's controller answers
            // it and as the Go SDK reads it ("already enrolled").
            Op::EnrollOttCa => d.extend([(415, "UNSUPPORTED_MEDIA"), (409, "CERT_IN_USE")]),
            Op::EnrollCa => d.push((409, "CERT_IN_USE")),
            // The spec lists only 200 and 401 for extend and extend-verify; a bad body, an
            // authenticator the identity does not have, a third-party certificate and a
            // stale or replayed renewal get their own codes (docs/openziti-api.md).
            Op::ExtendCurrentIdentityAuthenticator => d.extend([
                (400, "COULD_NOT_PARSE_BODY"),
                (400, "COULD_NOT_PROCESS_CSR"),
                (404, "NOT_FOUND"),
                (409, "CERT_NOT_RENEWABLE"),
                (409, "INVALID_STATE"),
                (415, "UNSUPPORTED_MEDIA"),
                (429, "RATE_LIMITED"),
            ]),
            Op::ExtendVerifyCurrentIdentityAuthenticator => d.extend([
                (400, "COULD_NOT_PARSE_BODY"),
                (400, "EXPECTED_PEM_CERTIFICATE"),
                (404, "NOT_FOUND"),
                (409, "INVALID_STATE"),
                (415, "UNSUPPORTED_MEDIA"),
            ]),
            _ => {}
        }
        d
    }

    /// The 200 answer's schema.
    fn ok_schema(self) -> S {
        match self {
            Op::ListRoot | Op::ListVersion => list_version_envelope(),
            Op::ListWellKnownCas => Str,
            Op::Enroll | Op::EnrollOtt => enrollment_certs_envelope(),
            Op::EnrollOttCa | Op::EnrollCa | Op::DeleteCurrentApiSession => empty(),
            Op::Authenticate | Op::GetCurrentApiSession => envelope(current_api_session_detail()),
            Op::GetCurrentIdentity => envelope(identity_detail()),
            Op::ListCurrentIdentityAuthenticators => envelope(arr(authenticator_detail())),
            Op::DetailCurrentIdentityAuthenticator => envelope(authenticator_detail()),
            Op::ExtendCurrentIdentityAuthenticator => {
                envelope(Obj(vec![req("ca", Str), req("clientCert", Str)]))
            }
            Op::ExtendVerifyCurrentIdentityAuthenticator => empty(),
        }
    }
}

/// Checks an answer of `op`: a listed status (or a documented deviation with its code),
/// and the body in the shape the spec gives for that status. Returns the body.
#[track_caller]
fn conforms(op: Op, r: &enrollgate::client::HttpResponse) -> Value {
    let text = String::from_utf8_lossy(&r.body).into_owned();
    if op == Op::ListWellKnownCas && r.status == 200 {
        // `produces: application/pkcs7-mime`, a base64 string.
        assert_eq!(r.header("content-type"), Some("application/pkcs7-mime"));
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=\r\n".contains(&b)),
            "{op:?}: not base64: {text}"
        );
        return Value::String(text);
    }
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "{op:?} {}: {text}",
        r.status
    );
    let v: Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("{op:?} {}: not JSON ({e}): {text}", r.status));
    let schema = if r.status == 200 {
        op.ok_schema()
    } else {
        let code = v["error"]["code"].as_str().unwrap_or_default();
        assert!(
            op.listed().contains(&r.status) || op.deviations().contains(&(r.status, code)),
            "{op:?}: status {} ({code}) is neither listed by the spec ({:?}) nor a documented \
             deviation ({:?})",
            r.status,
            op.listed(),
            op.deviations()
        );
        // The gateway's own contract on top of the spec: code, message and requestId.
        for field in ["code", "message", "requestId"] {
            assert!(
                v["error"][field].as_str().is_some_and(|s| !s.is_empty()),
                "{op:?}: error.{field} missing: {text}"
            );
        }
        api_error_envelope()
    };
    let found = problems(&v, &schema);
    assert!(
        found.is_empty(),
        "{op:?} {} leaves the spec's shape:\n  {}\n{text}",
        r.status,
        found.join("\n  ")
    );
    v
}

// ---------------------------------------------------------------------------------------
// The checker fails where it should.

#[test]
fn the_schema_check_catches_what_a_spec_typed_client_would_fail_on() {
    let identity = identity_detail();
    // The identity as the gateway answered before (issue 24): `type` a string, 5 fields.
    let old = json!({
        "id": "i1", "name": "dev", "type": "Device", "isAdmin": false, "roleAttributes": []
    });
    let found = problems(&old, &identity);
    assert!(
        found
            .iter()
            .any(|p| p == "$.type: expected an object, got \"Device\""),
        "{found:?}"
    );
    assert!(
        found.contains(&"$: required field 'authenticators' is absent".to_string()),
        "{found:?}"
    );
    // The session without an id.
    let session = problems(
        &json!({"token": "t", "expiresAt": "2026-01-01T00:00:00Z"}),
        &current_api_session_detail(),
    );
    assert!(
        session.contains(&"$: required field 'id' is absent".to_string()),
        "{session:?}"
    );
    // null only where the spec allows it; enums; integer bounds; dates.
    let s = Obj(vec![
        req("a", Str),
        req("b", nullable(Str)),
        req("c", Enum(&["x"])),
        req("d", Int(0, 65535)),
        req("e", DateTime),
    ]);
    assert!(problems(
        &json!({"a": "", "b": null, "c": "x", "d": 0, "e": "2026-12-06T04:00:00Z"}),
        &s
    )
    .is_empty());
    let found = problems(
        &json!({"a": null, "b": 1, "c": "y", "d": 70000, "e": "yesterday"}),
        &s,
    );
    assert_eq!(found.len(), 5, "{found:?}");
}

// ---------------------------------------------------------------------------------------
// The real daemon.

/// A verified CA that allows auto-enrollment, ottca and authentication, with its fleet.
fn fleet(gw: &Gateway, name: &str) -> (Fleet, String) {
    let fleet = Fleet::new(name);
    let ca_id = fleet.register(gw, &format!("{name}-ca"), true, true, true);
    (fleet, ca_id)
}

/// A new identity with an ottca enrollment for `ca_id`; returns its token.
fn ottca_token(gw: &Gateway, name: &str, ca_id: &str) -> String {
    let r = gw.mgmt(
        "POST",
        "/identities",
        Some(&json!({"name": name, "type": "Device", "enrollment": {"ottca": ca_id}})),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.json().unwrap()["data"]["enrollment"]["ottca"]["token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Lower-case hex SHA-1 of the first certificate in `pem`, by `openssl`.
fn sha1_fingerprint(dir: &std::path::Path, pem: &str) -> String {
    let path = dir.join("fp.pem");
    std::fs::write(&path, pem).unwrap();
    let out = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha1", "-in"])
            .arg(&path),
    );
    out.trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_ascii_lowercase()
}

const PREFIXES: [&str; 2] = ["", "/edge/client/v1"];

#[test]
fn every_client_operation_answers_in_the_spec_shape() {
    let gw = Gateway::start();
    let dir = gw.dir.path();
    let (fleet, ca_id) = fleet(&gw, "conform");

    for p in PREFIXES {
        // listRoot: `GET /edge/client/v1/` (and `/edge/client/v1`, and the root alias).
        for root in [format!("{p}/"), p.to_string()] {
            if root.is_empty() {
                continue;
            }
            let v = conforms(Op::ListRoot, &gw.request("GET", &root, &[], b""));
            assert_eq!(
                v["data"]["apiVersions"]["edge"]["v1"]["path"],
                "/edge/client/v1"
            );
        }
        conforms(
            Op::ListVersion,
            &gw.request("GET", &format!("{p}/version"), &[], b""),
        );
        conforms(
            Op::ListWellKnownCas,
            &gw.request("GET", &format!("{p}/.well-known/est/cacerts"), &[], b""),
        );
    }

    // enroll (ott), enrollOtt: successes and errors.
    let (_, _, t1) = gw.create_identity("conform-ott-1", "Device", false);
    let (_, _, t2) = gw.create_identity("conform-ott-2", "Device", false);
    let v = conforms(
        Op::Enroll,
        &gw.request(
            "POST",
            &format!("/edge/client/v1/enroll?method=ott&token={t1}"),
            &[("Content-Type", "text/plain")],
            &new_csr_pem(),
        ),
    );
    assert!(v["data"]["cert"]
        .as_str()
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    assert!(v["data"]["ca"]
        .as_str()
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    let csr = String::from_utf8(new_csr_pem()).unwrap();
    let v = conforms(
        Op::EnrollOtt,
        &gw.request(
            "POST",
            "/enroll/ott",
            &[("Content-Type", "application/json")],
            json!({"token": t2, "clientCsr": csr})
                .to_string()
                .as_bytes(),
        ),
    );
    assert!(v["data"]["cert"]
        .as_str()
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    for p in PREFIXES {
        let r = gw.request(
            "POST",
            &format!("{p}/enroll?method=ott&token={t1}"),
            &[],
            &new_csr_pem(),
        );
        assert_eq!(code(&r), "INVALID_ENROLLMENT_TOKEN");
        conforms(Op::Enroll, &r);
        let r = gw.request(
            "POST",
            &format!("{p}/enroll?method=ott&token={t1}"),
            &[("Content-Type", "application/octet-stream")],
            &new_csr_pem(),
        );
        assert_eq!((r.status, code(&r).as_str()), (415, "UNSUPPORTED_MEDIA"));
        conforms(Op::Enroll, &r);
        let r = gw.request(
            "POST",
            &format!("{p}/enroll/ott"),
            &[("Content-Type", "application/json")],
            json!({"token": t1, "clientCsr": csr})
                .to_string()
                .as_bytes(),
        );
        assert_eq!(code(&r), "INVALID_ENROLLMENT_TOKEN");
        conforms(Op::EnrollOtt, &r);
    }

    // HTTP-level refusals and a JSON operation sent another type.
    let r = gw.request("GET", "/edge/client/v1/enroll", &[], b"");
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
    conforms(Op::Enroll, &r);
    let r = gw.request(
        "POST",
        &format!("/edge/client/v1/enroll?method=ott&token={t1}"),
        &[],
        &vec![b'A'; 70 * 1024],
    );
    assert_eq!((r.status, code(&r).as_str()), (413, "REQUEST_TOO_LARGE"));
    conforms(Op::Enroll, &r);
    let r = gw.request(
        "POST",
        "/edge/client/v1/enroll/ott",
        &[("Content-Type", "text/plain")],
        csr.as_bytes(),
    );
    assert_eq!((r.status, code(&r).as_str()), (415, "UNSUPPORTED_MEDIA"));
    conforms(Op::EnrollOtt, &r);

    // enroll (ottca), enrollOttCa.
    let d1 = fleet.device(&Spec::new("conform-ottca-1"));
    let d2 = fleet.device(&Spec::new("conform-ottca-2"));
    let t = ottca_token(&gw, "conform-ottca-1", &ca_id);
    let r = d1.request(
        &gw,
        "POST",
        &format!("/edge/client/v1/enroll?method=ottca&token={t}"),
        &[("Content-Type", "application/json")],
        b"",
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    conforms(Op::Enroll, &r);
    let t = ottca_token(&gw, "conform-ottca-2", &ca_id);
    let r = d2.request(
        &gw,
        "POST",
        "/edge/client/v1/enroll/ottca",
        &[("Content-Type", "application/json")],
        json!({ "token": t }).to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    conforms(Op::EnrollOttCa, &r);
    // The same certificate for another token: CERT_IN_USE (409, a documented deviation).
    let t = ottca_token(&gw, "conform-ottca-3", &ca_id);
    let r = d2.request(
        &gw,
        "POST",
        "/edge/client/v1/enroll/ottca",
        &[("Content-Type", "application/json")],
        json!({ "token": t }).to_string().as_bytes(),
    );
    assert_eq!((r.status, code(&r).as_str()), (409, "CERT_IN_USE"));
    conforms(Op::EnrollOttCa, &r);
    let r = gw.request(
        "POST",
        "/enroll/ottca",
        &[("Content-Type", "application/json")],
        br#"{"token":"nope"}"#,
    );
    assert_eq!(code(&r), "INVALID_ENROLLMENT_TOKEN");
    conforms(Op::EnrollOttCa, &r);

    // enroll (ca), enrollCa.
    let auto1 = fleet.device(&Spec::new("conform-auto-1"));
    let auto2 = fleet.device(&Spec::new("conform-auto-2"));
    let r = auto1.request(&gw, "POST", "/edge/client/v1/enroll?method=ca", &[], b"");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    conforms(Op::Enroll, &r);
    let r = auto2.request(&gw, "POST", "/edge/client/v1/enroll/ca", &[], b"");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    conforms(Op::EnrollCa, &r);
    for p in PREFIXES {
        // Bound already: 409 CERT_IN_USE, listed for `enroll`, a deviation for `enrollCa`.
        let r = auto2.request(&gw, "POST", &format!("{p}/enroll?method=ca"), &[], b"");
        assert_eq!((r.status, code(&r).as_str()), (409, "CERT_IN_USE"));
        conforms(Op::Enroll, &r);
        let r = auto2.request(&gw, "POST", &format!("{p}/enroll/ca"), &[], b"");
        assert_eq!((r.status, code(&r).as_str()), (409, "CERT_IN_USE"));
        conforms(Op::EnrollCa, &r);
        // Without a certificate.
        let r = gw.request("POST", &format!("{p}/enroll/ca"), &[], b"");
        assert_eq!(
            (r.status, code(&r).as_str()),
            (400, "CERT_FAILED_VALIDATION")
        );
        conforms(Op::EnrollCa, &r);
    }

    // authenticate, getCurrentAPISession, getCurrentIdentity, deleteCurrentAPISession.
    for p in PREFIXES {
        let r = auto1.request(
            &gw,
            "POST",
            &format!("{p}/authenticate?method=cert"),
            &[],
            b"",
        );
        let session = conforms(Op::Authenticate, &r)["data"].clone();
        let token = session["token"].as_str().unwrap().to_string();
        assert_eq!(r.header("zt-session"), Some(token.as_str()));
        assert_eq!(session["ipAddress"], "127.0.0.1");
        assert_eq!(session["identity"]["name"], "conform-ca-conform-auto-1");
        assert_eq!(session["identityId"], session["identity"]["id"]);
        let created =
            humantime::parse_rfc3339_weak(session["createdAt"].as_str().unwrap()).unwrap();
        let expires =
            humantime::parse_rfc3339_weak(session["expiresAt"].as_str().unwrap()).unwrap();
        assert_eq!(
            expires.duration_since(created).unwrap().as_secs() as i64,
            session["expirationSeconds"].as_i64().unwrap()
        );
        let zt = [("zt-session", token.as_str())];

        let r = gw.request("GET", &format!("{p}/current-api-session"), &zt, b"");
        let again = conforms(Op::GetCurrentApiSession, &r)["data"].clone();
        // The C SDK compares the ids of the session it holds and the one it is shown.
        assert_eq!(again["id"], session["id"]);
        assert_eq!(again["token"], session["token"]);
        assert_eq!(again["authenticatorId"], session["authenticatorId"]);

        let r = gw.request("GET", &format!("{p}/current-identity"), &zt, b"");
        let me = conforms(Op::GetCurrentIdentity, &r)["data"].clone();
        assert_eq!(me["id"], session["identityId"]);
        assert_eq!(me["type"]["id"], "Device");
        assert_eq!(me["typeId"], "Device");
        assert_eq!(me["roleAttributes"], json!(["fleet", "conform-ca"]));
        assert_eq!(
            me["authenticators"]["cert"]["fingerprint"]
                .as_str()
                .unwrap(),
            sha1_fingerprint(dir, &auto1.chain_pem)
        );
        assert_eq!(
            me["authenticators"]["cert"]["id"],
            session["authenticatorId"]
        );

        let r = gw.request("DELETE", &format!("{p}/current-api-session"), &zt, b"");
        conforms(Op::DeleteCurrentApiSession, &r);

        // Errors: no session, no certificate, an unbound certificate, a wrong method.
        for (op, method, path) in [
            (Op::GetCurrentApiSession, "GET", "/current-api-session"),
            (
                Op::DeleteCurrentApiSession,
                "DELETE",
                "/current-api-session",
            ),
            (Op::GetCurrentIdentity, "GET", "/current-identity"),
        ] {
            let r = gw.request(method, &format!("{p}{path}"), &zt, b"");
            assert_eq!((r.status, code(&r).as_str()), (401, "UNAUTHORIZED"));
            conforms(op, &r);
        }
        let r = gw.request("POST", &format!("{p}/authenticate?method=cert"), &[], b"");
        assert_eq!((r.status, code(&r).as_str()), (401, "INVALID_AUTH"));
        conforms(Op::Authenticate, &r);
        let stranger = fleet.device(&Spec::new("conform-stranger"));
        let r = stranger.request(
            &gw,
            "POST",
            &format!("{p}/authenticate?method=cert"),
            &[],
            b"",
        );
        assert_eq!((r.status, code(&r).as_str()), (401, "INVALID_AUTH"));
        conforms(Op::Authenticate, &r);
        let r = gw.request("PUT", &format!("{p}/current-api-session"), &[], b"");
        assert_eq!((r.status, r.header("allow")), (405, Some("GET, DELETE")));
        conforms(Op::GetCurrentApiSession, &r);
    }
}

/// Logout ends the session on the daemon: its token opens nothing afterwards, while
/// another session of the same identity lives on.
#[test]
fn logout_ends_the_session_and_only_that_one() {
    let gw = Gateway::start();
    let (fleet, _) = fleet(&gw, "logout");
    let dev = fleet.device(&Spec::new("dev"));
    let r = dev.request(&gw, "POST", "/enroll/ca", &[], b"");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let login = || {
        let r = dev.request(
            &gw,
            "POST",
            "/edge/client/v1/authenticate?method=cert",
            &[],
            b"",
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json().unwrap()["data"].clone()
    };
    let (a, b) = (login(), login());
    assert_ne!(a["id"], b["id"], "each session has its own id");
    let (ta, tb) = (a["token"].as_str().unwrap(), b["token"].as_str().unwrap());
    let get = |token: &str, path: &str| {
        gw.request(
            "GET",
            &format!("/edge/client/v1{path}"),
            &[("zt-session", token)],
            b"",
        )
    };
    assert_eq!(get(ta, "/current-api-session").status, 200);
    assert_eq!(get(ta, "/current-identity").status, 200);

    let r = gw.request(
        "DELETE",
        "/edge/client/v1/current-api-session",
        &[("zt-session", ta)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json().unwrap(), json!({"data": {}, "meta": {}}));

    for path in ["/current-api-session", "/current-identity"] {
        let r = get(ta, path);
        assert_eq!(
            (r.status, code(&r).as_str()),
            (401, "UNAUTHORIZED"),
            "{path}"
        );
        assert_eq!(get(tb, path).status, 200, "the other session lives: {path}");
    }
    let r = gw.request("DELETE", "/current-api-session", &[("zt-session", ta)], b"");
    assert_eq!((r.status, code(&r).as_str()), (401, "UNAUTHORIZED"));
    // The other session's id is the one it was given.
    assert_eq!(
        get(tb, "/current-api-session").json().unwrap()["data"]["id"],
        b["id"]
    );
}

/// The enrollment forms the spec lists for `POST /enroll` all enroll: a JSON
/// `genericEnroll` body, `application/pkcs7`, no `method` at all; and the C SDK's and Go
/// SDK's own forms still do, in the shapes they read.
#[test]
fn the_spec_enrollment_forms_and_the_sdk_forms_enroll() {
    let gw = Gateway::start();
    let csr = || String::from_utf8(new_csr_pem()).unwrap();
    let token = |name: &str| gw.create_identity(name, "Device", false).2;
    let enrolled = |name: &str| {
        let shown = gw
            .mgmt(
                "GET",
                &format!("/identities?filter=name%20%3D%20%22{name}%22"),
                None,
            )
            .json()
            .unwrap()["data"][0]
            .clone();
        shown["hasEnrolled"] == json!(true)
    };
    // (name, query, content type, body)
    let forms: Vec<(&str, String, Option<&str>, Vec<u8>)> = vec![
        // The spec's JSON form, with and without a method.
        (
            "json",
            "method=ott&token=".into(),
            Some("application/json"),
            json!({"clientCsr": csr()}).to_string().into_bytes(),
        ),
        (
            "json-no-method",
            "token=".into(),
            Some("application/json; charset=utf-8"),
            json!({"clientCsr": csr()}).to_string().into_bytes(),
        ),
        // application/pkcs7, read as text/plain.
        (
            "pkcs7",
            "method=ott&token=".into(),
            Some("application/pkcs7"),
            csr().into_bytes(),
        ),
        // No method: ott.
        (
            "no-method",
            "token=".into(),
            Some("text/plain"),
            csr().into_bytes(),
        ),
        (
            "empty-method",
            "method=&token=".into(),
            None,
            csr().into_bytes(),
        ),
        // The C SDK: text/plain.
        (
            "c-sdk",
            "method=ott&token=".into(),
            Some("text/plain"),
            csr().into_bytes(),
        ),
        // The Go SDK: application/x-pem-file.
        (
            "go-sdk",
            "method=ott&token=".into(),
            Some("application/x-pem-file"),
            csr().into_bytes(),
        ),
    ];
    for (name, query, ct, body) in forms {
        let name = format!("form-{name}");
        let t = token(&name);
        let headers: Vec<(&str, &str)> = ct.map(|c| ("Content-Type", c)).into_iter().collect();
        let r = gw.request(
            "POST",
            &format!("/edge/client/v1/enroll?{query}{t}"),
            &headers,
            &body,
        );
        assert_eq!(
            r.status,
            200,
            "{name}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let v = conforms(Op::Enroll, &r);
        assert!(
            v["data"]["cert"]
                .as_str()
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE-----"),
            "{name}"
        );
        assert!(enrolled(&name), "{name}");
    }
    // A client that asks for PEM gets the chain as the body, typed application/x-pem-file,
    // which the C SDK and the Go SDK both read as the certificate.
    let t = token("form-c-sdk-pem");
    let r = gw.request(
        "POST",
        &format!("/enroll?method=ott&token={t}"),
        &[
            ("Content-Type", "text/plain"),
            ("Accept", "application/x-pem-file"),
        ],
        csr().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("application/x-pem-file"));
    assert!(r.body.starts_with(b"-----BEGIN CERTIFICATE-----"));
    // An ottca token without a method is judged as an ott token (the default method).
    let (fleet, ca_id) = fleet(&gw, "forms");
    let t = ottca_token(&gw, "form-ottca", &ca_id);
    let dev = fleet.device(&Spec::new("form-ottca"));
    let r = dev.request(
        &gw,
        "POST",
        &format!("/enroll?token={t}"),
        &[],
        csr().as_bytes(),
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        r.api_error().unwrap(),
        (
            "INVALID_ENROLL_METHOD".to_string(),
            "this token is for method 'ottca', not 'ott'".to_string()
        )
    );
    assert!(!enrolled("form-ottca"));
}

/// The renewal operations (`listCurrentIdentityAuthenticators`,
/// `detailCurrentIdentityAuthenticator`, `extendCurrentIdentityAuthenticator`,
/// `extendVerifyCurrentIdentityAuthenticator`) answer in the spec's shapes, under both
/// prefixes, for successes and refusals.
#[test]
fn the_renewal_operations_answer_in_the_spec_shape() {
    use crate::renewal::{call, csr_for, enrolled, fingerprint, key_of, session};
    let gw = Gateway::start();
    let (_, file) = enrolled(&gw, "conform-renew");
    let (token, _) = session(&gw, &file);
    for p in PREFIXES {
        let base = format!("{p}/current-identity/authenticators");
        let id = fingerprint(&file);
        let r = call(&gw, &file, "GET", &base, Some(&token), None);
        let list = conforms(Op::ListCurrentIdentityAuthenticators, &r);
        assert_eq!(list["data"][0]["id"], id.as_str());
        let r = call(
            &gw,
            &file,
            "GET",
            &format!("{base}/{id}"),
            Some(&token),
            None,
        );
        conforms(Op::DetailCurrentIdentityAuthenticator, &r);
        let r = call(
            &gw,
            &file,
            "GET",
            &format!("{base}/nope"),
            Some(&token),
            None,
        );
        assert_eq!(r.status, 404);
        conforms(Op::DetailCurrentIdentityAuthenticator, &r);
        let r = call(&gw, &file, "GET", &base, None, None);
        assert_eq!(r.status, 401);
        conforms(Op::ListCurrentIdentityAuthenticators, &r);

        let body = json!({ "clientCertCsr": csr_for(&key_of(&file)) });
        let r = call(
            &gw,
            &file,
            "POST",
            &format!("{base}/{id}/extend"),
            Some(&token),
            Some(&body),
        );
        let cert = conforms(Op::ExtendCurrentIdentityAuthenticator, &r)["data"]["clientCert"]
            .as_str()
            .unwrap()
            .to_string();
        let r = call(
            &gw,
            &file,
            "POST",
            &format!("{base}/{id}/extend"),
            None,
            Some(&body),
        );
        assert_eq!(r.status, 401);
        conforms(Op::ExtendCurrentIdentityAuthenticator, &r);
        let bad = json!({ "clientCert": 7 });
        let r = call(
            &gw,
            &file,
            "POST",
            &format!("{base}/{id}/extend-verify"),
            Some(&token),
            Some(&bad),
        );
        assert_eq!(code(&r), "COULD_NOT_PARSE_BODY");
        conforms(Op::ExtendVerifyCurrentIdentityAuthenticator, &r);
        let ok = json!({ "clientCert": cert });
        let r = call(
            &gw,
            &file,
            "POST",
            &format!("{base}/{id}/extend-verify"),
            Some(&token),
            Some(&ok),
        );
        conforms(Op::ExtendVerifyCurrentIdentityAuthenticator, &r);
        let r = call(
            &gw,
            &file,
            "POST",
            &format!("{base}/{id}/extend-verify"),
            Some(&token),
            Some(&ok),
        );
        assert_eq!(code(&r), "INVALID_STATE");
        conforms(Op::ExtendVerifyCurrentIdentityAuthenticator, &r);
        // The renewed certificate is the file's from now on.
        let mut f = enrollgate::identity_file::IdentityFile::read(&file).unwrap();
        f.id.cert = format!("pem:{cert}");
        std::fs::write(&file, serde_json::to_vec(&f).unwrap()).unwrap();
    }
}
