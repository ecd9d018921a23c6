//! The API layer's share of the fuzz targets, replayed over the committed corpus.
//!
//! The targets themselves (`enrollgate_proto::fuzzing`, run by `cargo fuzz` in `fuzz/`)
//! drive the protocol crate alone, so they build without RocksDB. What this crate adds on
//! top of those parsers is checked here, over the same inputs, with the same helpers: every
//! refusal of client input maps to a 4xx status (never `UNHANDLED`/500) and its envelope
//! serializes; the request body types the handlers read; the refusals of the enrollment
//! core (`enroll::request`, `enroll::plan`) as the API answers them; EST's
//! credentials and name comparison, identity list filters, `expiresAt`; the management
//! view of an auto-enrolled identity; the `enroll` client's reading of a JWT's `iss`.

use serde::Deserialize;

use crate::api::{self, ApiError, Request};
use crate::http::Response;
use enrollgate_proto::fuzzing::{self, NOW};

/// Asserts that a refusal of client input is the client's fault (4xx), as the issue's
/// contract demands: never `UNHANDLED`/500.
fn assert_client_error(err: &ApiError) {
    let (status, code) = err.status_and_code();
    assert!(
        (400..500).contains(&status),
        "client input answered {status} {code}: {err}"
    );
    // The envelope a refusal is answered with serializes for any message.
    let _ = Response::json(status, &err.envelope("fuzz")).serialize(false, false);
}

fn check<T>(r: Result<T, ApiError>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            assert_client_error(&e);
            None
        }
    }
}

/// `http_request`: each request framed with the configured limits, then the parts of
/// routing that need no worker.
fn http_request(data: &[u8]) {
    let limits = crate::config::Limits::default();
    fuzzing::frame(
        data,
        limits.max_header_bytes,
        limits.max_body_bytes,
        |head, body| route_pure(&Request { head, body }),
    );
}

/// The metrics label, and what each enrollment route reads of the request before it
/// touches the store (`enroll::request`, whatever the path: the fuzzer's paths are not
/// always enrollment routes), as the API answers its refusals.
fn route_pure(req: &Request) {
    use crate::enroll::request::{self, Endpoint};
    let _ = api::Route::of(req).enrollment_method(req);
    let _ = format!("{req:?}");
    check(request::check_csr_media(req).map_err(ApiError::from));
    for endpoint in [
        Endpoint::Enroll,
        Endpoint::Ott,
        Endpoint::Ottca,
        Endpoint::Ca,
    ] {
        check(request::parse(endpoint, req).map_err(ApiError::from));
    }
    check(api::request::json_body::<serde_json::Value>(req));
    query_str(&req.head.query);
}

/// `enroll`: every refusal of the enrollment core answers 4xx, and an enrollment's answer
/// is OpenZiti's (`{"data":...}` JSON, or a PEM chain for a client that asked for one).
fn enroll(data: &[u8]) {
    let limits = crate::config::Limits::default();
    fuzzing::enroll_each(
        data,
        limits.max_header_bytes,
        limits.max_body_bytes,
        |_, answer| match answer {
            Ok(response) => assert_eq!(response.status, 200),
            Err(fuzzing::EnrollRefused::Request(e)) => assert_client_error(&e.into()),
            Err(fuzzing::EnrollRefused::Plan(e)) => assert_client_error(&e.into()),
            Err(fuzzing::EnrollRefused::Csr(e)) => assert_client_error(&e.into()),
        },
    );
}

/// `query`: what the API's handlers do with a query string beyond the protocol crate.
fn query(data: &[u8]) {
    if let Ok(q) = std::str::from_utf8(data) {
        query_str(q);
    }
}

fn query_str(q: &str) {
    use crate::http::query::param;
    // An `Authorization` header's value, as EST simpleenroll reads it.
    if let Ok(password) = api::est::basic_password(q) {
        assert!(!password.is_empty());
    }
    let filter = match (param(q, "filter"), param(q, "name")) {
        (Some(f), _) => api::filter::NameFilter::parse(&f).ok(),
        (None, Some(n)) => Some(api::filter::NameFilter::Eq(n)),
        (None, None) => Some(api::filter::NameFilter::All),
    };
    if let Some(f) = filter {
        let _ = f.matches(q);
        let _ = f.matches("");
    }
}

/// `POST /enrollments`' body (declared inside its handler in `api::management`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct CreateEnrollmentBody {
    identity_id: Option<String>,
    method: Option<String>,
    ca_id: Option<String>,
    expires_at: Option<String>,
}

/// `POST /enrollments/{id}/refresh`'s body (declared inside its handler).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct RefreshBody {
    expires_at: Option<String>,
}

/// `json_bodies`: the body read into every type the API deserializes, and the refusals of
/// its fields as the handlers answer them.
fn json_bodies(data: &[u8]) {
    let Some((head, body)) = fuzzing::json_request(data) else {
        return;
    };
    let req = Request { head, body };
    check(api::request::json_body::<api::management::CreateIdentity>(
        &req,
    ));
    check(api::request::json_body::<api::cas::CreateBody>(&req));
    check(api::request::json_body::<api::cas::UpdateBody>(&req));
    {
        use crate::enroll::request::{parse, Endpoint};
        for endpoint in [Endpoint::Ott, Endpoint::Ottca, Endpoint::Ca] {
            check(parse(endpoint, &req).map_err(ApiError::from));
        }
    }
    check(api::request::json_body::<CreateEnrollmentBody>(&req));
    check(api::request::json_body::<RefreshBody>(&req));
    let Some(value) = check(api::request::json_body::<serde_json::Value>(&req)) else {
        return;
    };
    let field = |k: &str| value.get(k).and_then(serde_json::Value::as_str);
    if let Some(n) = field("name") {
        check(crate::enroll::validate_name(n).map_err(ApiError::from));
    }
    if let Some(pem) = field("certPem") {
        check(crate::ca::parse_ca_pem(pem.as_bytes()).map_err(ApiError::from));
    }
    if let Some(at) = field("expiresAt") {
        if let Some(Some(t)) = check(api::records::parse_expires_at(Some(at), NOW)) {
            assert!(t > NOW);
            let _ = crate::clock::rfc3339(t);
        }
    }
    if let Some(csr) = field("clientCsr") {
        csr_refusals(csr.as_bytes());
    }
}

/// A CSR's refusals as the API answers them.
fn csr_refusals(data: &[u8]) {
    use crate::pki::csr;
    if let Some(der) = check(csr::decode_body(data).map_err(ApiError::from)) {
        check(csr::accept(&der).map_err(ApiError::from));
    }
}

/// `csr`: the refusals, then EST simplereenroll's comparison of the CSR's names with the
/// certificate issued for it: a refusal, never a failure.
fn csr(data: &[u8]) {
    csr_refusals(data);
    if let Some((der, cert)) = fuzzing::csr_issued(data) {
        check(api::est::same_names(&der, &cert));
    }
}

/// `chain`: the identity an auto-enrollment creates, as the management API shows it.
fn chain(data: &[u8]) {
    for identity in fuzzing::chain_enrolled(data) {
        let view = api::views::identity(&identity, None);
        let _ = Response::data(view).serialize(true, false);
    }
}

/// `jwt`: the `enroll` client reads `iss` as the URL it enrolls at.
fn jwt(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok((_, claims)) = crate::token::jwt::peek(text.trim()) {
        let _ = crate::config::PublicUrl::parse(&claims.iss);
    }
}

/// The API's share of each target, by the target's name.
const API_CHECKS: [fuzzing::Target; 7] = [
    ("http_request", http_request),
    ("enroll", enroll),
    ("query", query),
    ("json_bodies", json_bodies),
    ("csr", csr),
    ("chain", chain),
    ("jwt", jwt),
];

/// Replays the committed corpus and every regression input through its target and through
/// the API's share of it.
#[test]
fn replays_corpus_and_regressions() {
    let mut replayed = 0;
    for (target, run) in fuzzing::TARGETS {
        let api_check = API_CHECKS.iter().find(|(t, _)| *t == target);
        for (path, bytes) in fuzzing::replay_inputs(target) {
            eprintln!("replaying {}", path.display());
            run(&bytes);
            if let Some((_, check)) = api_check {
                check(&bytes);
            }
            replayed += 1;
        }
    }
    assert!(
        replayed >= fuzzing::TARGETS.len(),
        "only {replayed} inputs replayed"
    );
}

/// The refusals the targets end in without an API call of their own answer 4xx: framing
/// (431, 400, 411, 413), a chain no CA accepts, a template the certificate cannot fill.
#[test]
fn refusals_of_the_protocol_crate_are_client_errors() {
    for err in [
        ApiError::HeadersTooLarge("h".into()),
        ApiError::MalformedRequest("m".into()),
        ApiError::LengthRequired("chunked".into()),
        ApiError::RequestTooLarge("1".into()),
        ApiError::CertFailedValidation("c".into()),
        ApiError::InvalidCommonName("n".into()),
    ] {
        assert_client_error(&err);
    }
}
