//! The bodies of the `cargo fuzz` targets in `fuzz/` (one function per target), behind the
//! `fuzzing` feature (never in the daemon: one module of test drivers, long because each
//! target states the invariants it checks beside the inputs it builds): the fuzz crate depends on this crate alone (no RocksDB, so it builds in
//! minutes), and the stable toolchain replays the committed corpus and every regression
//! input in `cargo test` (see the tests at the end), without nightly.
//!
//! Each function feeds arbitrary bytes to the parsers the daemon (or the `enroll` client)
//! runs on peer input, through the same functions the request path calls (never a copy of
//! them), and asserts invariants that must hold for every input: no panic, a refusal is a
//! typed error, and what parses re-serializes consistently.
//!
//! What the daemon's API layer adds on top (the error → status mapping, so that client input
//! is never answered 500; the request body types; EST's checks; the management views) is
//! replayed over the same corpus by the daemon's tests (`enrollgate-server`'s `src/corpus.rs`),
//! which call the helpers here ([`frame`], [`json_request`], [`csr_issued`],
//! [`chain_enrolled`], [`replay_inputs`]) and add the API's checks to each input.
//!
//! | function | what it drives |
//! |---|---|
//! | [`http_request`] | `http::parse_head` over a pipelined byte stream, as `server::conn` frames it |
//! | [`query`] | `http::query::param` and what the handlers do with each parameter |
//! | [`json_bodies`] | a JSON body, then the checks of its fields |
//! | [`pem_der`] | CA upload PEM, proof of possession, PKCS#7 `cacerts`, certificate DER |
//! | [`csr`] | `pki::csr::{decode_body, accept}`, then issuance of an accepted key |
//! | [`chain`] | `ca::chain::CaSet::verify` against a fixed CA set, then the `ca` enrollment's identity (`enroll::auto_enrolled_identity`) |
//! | [`jwt`] | `token::jwt::{peek, verify_with_cert}` and the `enroll` client's claim checks; the same text as an API session token (`token::session::Sessions::get`) |
//! | [`name_template`] | `ca::name::{validate_format, render}` with fuzzed values |
//! | [`enroll`] | an enrollment request read (`enroll::request`) and driven through each method's steps (`enroll::plan`) against fixture tokens and CAs |
//!
//! The fixed keys below are derived from constant scalars, so seeds made by
//! [`seeds::write_all`] (certificates, chains, JWTs) verify against the same fixtures in
//! every process. They are test fixtures, never used by the daemon.

use std::sync::LazyLock;

use rustls_pki_types::CertificateDer;
use x509_parser::prelude::FromDer as _;

use crate::ca::chain::{CaSet, ChainError};
use crate::ca::memo::SignatureMemo;
use crate::ca::name::{self, NameVars};
use crate::clock::UnixTime;
use crate::http::{parse_head, BodyKind, Head, Parsed};
use crate::model::{Ca, Enrollment, Identity, IdentityType, Method};
use crate::pki::{csr as csr_mod, pkcs7};

/// The instant every fuzz target judges validity at (2027-01-15).
pub const NOW: UnixTime = 1_800_000_000;

/// The verification token of the fixed CA (the CN a proof of possession must carry).
pub const POP_TOKEN: &str = "fuzz-verification-token";

const ROOT_SCALAR: u8 = 0x11;
const OTHER_SCALAR: u8 = 0x22;
const NAMED_SCALAR: u8 = 0x88;
const INTERMEDIATE_SCALAR: u8 = 0x33;
const SERVER_SCALAR: u8 = 0x44;

/// A P-256 key pair derived from a constant (`[byte; 32]` as the private scalar).
fn fixed_key(byte: u8) -> rcgen::KeyPair {
    use aws_lc_rs::{agreement, signature};
    let scalar = [byte; 32];
    let ecdh = agreement::PrivateKey::from_private_key(&agreement::ECDH_P256, &scalar)
        .expect("a constant scalar below the group order is a valid P-256 key");
    let public = ecdh
        .compute_public_key()
        .expect("a valid private key has a public key");
    let pair = signature::EcdsaKeyPair::from_private_key_and_public_key(
        &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &scalar,
        public.as_ref(),
    )
    .expect("the public key was computed from this private key");
    let pkcs8 = pair.to_pkcs8v1().expect("a P-256 key serializes to PKCS#8");
    rcgen::KeyPair::try_from(pkcs8.as_ref()).expect("rcgen reads a P-256 PKCS#8 key")
}

fn at(t: UnixTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(t).expect("fixture times are in range")
}

fn ca_params(cn: &str) -> rcgen::CertificateParams {
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.not_before = at(NOW - 365 * 86_400);
    p.not_after = at(NOW + 365 * 86_400);
    p
}

/// A CA of the fixture set: its parameters, key and certificate DER.
struct FixedCa {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    der: Vec<u8>,
}

impl FixedCa {
    fn root(cn: &str, scalar: u8) -> Self {
        let params = ca_params(cn);
        let key = fixed_key(scalar);
        let der = params
            .self_signed(&key)
            .expect("fixture CA signs")
            .der()
            .to_vec();
        Self { params, key, der }
    }

    fn pem(&self) -> String {
        crate::pki::pem_encode("CERTIFICATE", &self.der)
    }

    fn issuer(&self) -> rcgen::Issuer<'_, &rcgen::KeyPair> {
        rcgen::Issuer::from_params(&self.params, &self.key)
    }
}

/// The trusted root (`fuzz root`, verified, every enrollment flag on).
static ROOT: LazyLock<FixedCa> = LazyLock::new(|| FixedCa::root("fuzz root", ROOT_SCALAR));
/// A second root (`fuzz other`), known but not verified.
static OTHER: LazyLock<FixedCa> = LazyLock::new(|| FixedCa::root("fuzz other", OTHER_SCALAR));
/// A third root (`fuzz named`), verified, whose devices name themselves: its name format
/// has `[requestedName]`, so a requested name reaches the name checks.
static NAMED: LazyLock<FixedCa> = LazyLock::new(|| FixedCa::root("fuzz named", NAMED_SCALAR));

fn ca_record(id: &str, ca: &FixedCa, verified: bool) -> Ca {
    Ca {
        id: id.into(),
        name: id.into(),
        cert_pem: ca.pem(),
        fingerprint: crate::pki::fingerprint::sha256_hex(&ca.der),
        is_verified: verified,
        verification_token: POP_TOKEN.into(),
        is_auto_ca_enrollment_enabled: true,
        is_ott_ca_enrollment_enabled: true,
        is_auth_enabled: true,
        identity_roles: vec![],
        identity_name_format: crate::model::DEFAULT_NAME_FORMAT.into(),
        created_at: 0,
        updated_at: 0,
    }
}

/// The memo the `chain` target checks against a memo-less verification.
static MEMO: LazyLock<SignatureMemo> = LazyLock::new(|| SignatureMemo::new(64));

/// The CA set chains are verified against, built once per process.
static CA_SET: LazyLock<CaSet> = LazyLock::new(|| {
    CaSet::build(vec![
        ca_record("ROOT", &ROOT, true),
        ca_record("OTHER", &OTHER, false),
        Ca {
            identity_name_format: "[caName]-[requestedName]".into(),
            ..ca_record("NAMED", &NAMED, true)
        },
    ])
});

/// The internal signer `csr` issues with (the fixed root as its CA).
static SIGNER: LazyLock<crate::pki::issue::Signer> = LazyLock::new(|| {
    crate::pki::issue::Signer::new(
        &ROOT.der,
        fixed_key(ROOT_SCALAR),
        crate::pki::IssuePolicy {
            trust_domain: "fuzz.example".into(),
            lifetime_secs: 86_400,
            crl_url: None,
        },
    )
    .expect("the fixture CA and its key make a signer")
});

/// The enrollment listener's certificate that JWTs are verified with.
static SERVER_CERT: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut p = rcgen::CertificateParams::new(vec!["gw.fuzz.example".to_string()])
        .expect("a DNS name is a valid SAN");
    p.not_before = at(NOW - 86_400);
    p.not_after = at(NOW + 365 * 86_400);
    p.self_signed(&fixed_key(SERVER_SCALAR))
        .expect("fixture server certificate signs")
        .der()
        .to_vec()
});

/// A refusal of peer input: its message is what the client reads, so it must format for any
/// input. (That it maps to a 4xx status is the daemon's API layer's to check.)
fn refused(err: &impl std::fmt::Display) {
    let _ = err.to_string();
}

// ---------------------------------------------------------------------------------------
// HTTP framing

/// HTTP/1.1 request framing, as `server::conn` does it: heads are parsed from the bytes
/// received, a complete head is drained with its `Content-Length` body, and pipelined
/// requests follow, until the buffer ends or the connection would be closed.
pub fn http_request(data: &[u8]) {
    frame(data, usize::MAX, usize::MAX, |_, _| {});
}

/// Frames `data` as [`http_request`] does, with the daemon's limits on a head and a body,
/// and hands `each` every complete request after the checks of this crate.
pub fn frame(
    data: &[u8],
    max_header_bytes: usize,
    max_body_bytes: usize,
    mut each: impl FnMut(Head, Vec<u8>),
) {
    let mut buf = data.to_vec();
    for _ in 0..32 {
        let (head, n) = match parse_head(&buf) {
            Ok(Parsed::Complete(head, n)) => (head, n),
            Ok(Parsed::Partial) => {
                // A partial head within the limit waits for more bytes; beyond it, 431.
                return;
            }
            Err(e) => {
                refused(&e);
                return;
            }
        };
        assert!(n > 0 && n <= buf.len(), "head length {n} of {}", buf.len());
        // The head's own bytes parse to the same head: nothing after it changed it.
        assert_eq!(
            parse_head(&buf[..n]),
            Ok(Parsed::Complete(head.clone(), n)),
            "the head parses differently without what follows it"
        );
        assert!(head.path.starts_with('/'));
        assert!(!head.path.contains('?'));
        if n > max_header_bytes {
            // conn.rs refuses a head that needed more than the limit to complete.
            return;
        }
        buf.drain(..n);
        let body = match head.body {
            BodyKind::None => Vec::new(),
            // Refused: 411 (chunked) and 413 (too large).
            BodyKind::Chunked => return,
            BodyKind::Length(len) if len > max_body_bytes => return,
            BodyKind::Length(len) => {
                assert!(len > 0);
                if buf.len() < len {
                    return;
                }
                buf.drain(..len).collect()
            }
        };
        let keep_alive = head.keep_alive;
        head_pure(&head);
        each(head, body);
        if !keep_alive {
            return;
        }
    }
}

/// What every handler may read of a head before it touches the store.
fn head_pure(head: &Head) {
    let _ = head.content_type();
    let _ = head.accepts("application/x-pem-file");
    let _ = head.accepts("application/json");
    let _ = head.header("zt-session");
    let _ = format!("{head:?}");
    query_str(&head.query);
}

// ---------------------------------------------------------------------------------------
// Query strings

/// Query strings: every parameter a handler reads, and what it does with the value.
pub fn query(data: &[u8]) {
    if let Ok(q) = std::str::from_utf8(data) {
        query_str(q);
    }
}

fn query_str(q: &str) {
    use crate::http::query::param;
    if let Some(m) = param(q, "method") {
        if let Some(parsed) = Method::parse(&m) {
            assert_eq!(parsed.as_str(), m);
        }
    }
    if let Some(token) = param(q, "token") {
        if crate::ids::is_well_formed(&token) {
            // The `enroll` client's encoding of a token reads back as the same token.
            let encoded: String = form_urlencoded::byte_serialize(token.as_bytes()).collect();
            assert_eq!(
                param(&format!("method=ott&token={encoded}"), "token").as_deref(),
                Some(token.as_str())
            );
        }
    }
    for name in ["limit", "offset"] {
        if let Some(v) = param(q, name) {
            let _ = v.parse::<usize>();
        }
    }
}

// ---------------------------------------------------------------------------------------
// JSON bodies

/// The `Content-Type` a [`json_bodies`] input's first byte picks.
pub const CONTENT_TYPES: [Option<&str>; 5] = [
    None,
    Some("application/json"),
    Some("application/json; charset=utf-8"),
    Some("text/plain"),
    Some("application/x-www-form-urlencoded"),
];

/// A [`json_bodies`] input as the `POST` request it stands for: the first byte picks the
/// `Content-Type` ([`CONTENT_TYPES`]), the rest is the body.
pub fn json_request(data: &[u8]) -> Option<(Head, Vec<u8>)> {
    let (&selector, body) = data.split_first()?;
    let content_type = CONTENT_TYPES[usize::from(selector) % CONTENT_TYPES.len()];
    let headers = content_type
        .map(|ct| vec![("content-type".to_string(), ct.to_string())])
        .unwrap_or_default();
    let head = Head {
        method: "POST".into(),
        path: "/".into(),
        query: String::new(),
        version: 1,
        headers,
        body: BodyKind::Length(body.len()),
        keep_alive: true,
        expect_continue: false,
    };
    Some((head, body.to_vec()))
}

/// JSON request bodies: the first byte picks the `Content-Type`, the rest is the body. A
/// body that is JSON is checked field by field as the handlers check it before they touch
/// the store. (Which content types a handler accepts, and the body types it reads, are the
/// API layer's.)
pub fn json_bodies(data: &[u8]) {
    let Some((_, body)) = json_request(data) else {
        return;
    };
    let value: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return refused(&e),
    };
    // What parsed serializes and parses back to the same value (floats aside: without
    // serde_json's `float_roundtrip` a float may come back one unit off, by design).
    let text = serde_json::to_vec(&value).expect("a JSON value serializes");
    let again: serde_json::Value =
        serde_json::from_slice(&text).expect("serialized JSON parses back");
    if !has_float(&value) {
        assert_eq!(again, value);
    }

    let field = |k: &str| value.get(k).and_then(serde_json::Value::as_str);
    if let Some(n) = field("name") {
        if let Err(e) = crate::enroll::validate_name(n) {
            refused(&e);
        }
    }
    if let Some(t) = field("type") {
        if let Some(kind) = IdentityType::parse(t) {
            assert!(kind.as_str().eq_ignore_ascii_case(t));
        }
    }
    if let Some(pem) = field("certPem") {
        if let Err(e) = crate::ca::parse_ca_pem(pem.as_bytes()) {
            refused(&e);
        }
    }
    if let Some(f) = field("identityNameFormat") {
        if let Err(e) = name::validate_format(f) {
            refused(&e);
        }
    }
    if let Some(token) = field("token") {
        let _ = crate::ids::is_well_formed(token);
    }
    if let Some(csr) = field("clientCsr") {
        match csr_mod::decode_body(csr.as_bytes()) {
            Ok(der) => {
                if let Err(e) = csr_mod::accept(&der) {
                    refused(&e);
                }
            }
            Err(e) => refused(&e),
        }
    }
}

fn has_float(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Number(n) => n.is_f64(),
        serde_json::Value::Array(a) => a.iter().any(has_float),
        serde_json::Value::Object(o) => o.values().any(has_float),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------
// PEM and DER

/// PEM and DER from peers: an uploaded CA certificate, a proof of possession of the fixed
/// CA's key, the base64 PKCS#7 `cacerts` answer the `enroll` client reads, and a raw
/// certificate as the chain code reads it.
pub fn pem_der(data: &[u8]) {
    let _ = crate::ca::single_pem_cert(data);
    if let Ok(parsed) = crate::ca::parse_ca_pem(data) {
        // The normalised PEM that is stored parses back to the same certificate.
        let again = crate::ca::parse_ca_pem(parsed.pem.as_bytes())
            .expect("a stored CA's normalised PEM is accepted again");
        assert_eq!(again.der, parsed.der);
        assert_eq!(again.fingerprint, parsed.fingerprint);
    }
    let _ = crate::ca::pop::check(data, &ROOT.der, POP_TOKEN, NOW);

    pkcs7_round_trip(data);
    // The `enroll` client: base64 (white space ignored), then PKCS#7.
    use base64::Engine as _;
    let compact: Vec<u8> = data
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if let Ok(p7) = base64::engine::general_purpose::STANDARD.decode(compact) {
        pkcs7_round_trip(&p7);
    }

    let _ = crate::ca::chain::common_name(data);
    let _ = crate::pki::is_self_signed(data);
    if let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(data) {
        let v = cert.validity();
        let _ = (v.not_before.timestamp(), v.not_after.timestamp());
    }
}

fn pkcs7_round_trip(der: &[u8]) {
    let Ok(certs) = pkcs7::read_certs(der) else {
        return;
    };
    if let Ok(rebuilt) = pkcs7::certs_only(&certs) {
        let mut again = pkcs7::read_certs(&rebuilt).expect("a PKCS#7 we built reads back");
        let mut certs = certs;
        certs.sort();
        again.sort();
        assert_eq!(again, certs, "PKCS#7 certificates change in a round trip");
    }
}

// ---------------------------------------------------------------------------------------
// CSRs

/// A CSR body as `ott` enrollment handles it: decode (PEM, base64 or DER), verify and
/// classify (`accept`, on the signing thread), then issue for the accepted key. An
/// accepted key must always be issuable, and the certificate must carry that key.
pub fn csr(data: &[u8]) {
    let _ = csr_issued(data);
}

/// [`csr`], answering the CSR's DER and the certificate issued for it, if it was accepted.
pub fn csr_issued(data: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let der = match csr_mod::decode_body(data) {
        Ok(der) => der,
        Err(e) => {
            refused(&e);
            return None;
        }
    };
    let accepted = match csr_mod::accept(&der) {
        Ok(a) => a,
        Err(e) => {
            refused(&e);
            return None;
        }
    };
    let issued = SIGNER
        .issue_client(&accepted.spki_der, "fuzz-identity", NOW)
        .expect("an accepted CSR's key is issuable");
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&issued.der)
        .expect("an issued certificate parses");
    assert_eq!(cert.public_key().raw, accepted.spki_der.as_slice());
    Some((der, issued.der))
}

// ---------------------------------------------------------------------------------------
// Certificate chains

/// Splits `data` into DER elements (tag, length, value), as a TLS `Certificate` message
/// delivers a chain; what does not fit is one last element.
fn split_der(mut data: &[u8]) -> Vec<CertificateDer<'_>> {
    let mut out = Vec::new();
    while !data.is_empty() && out.len() <= crate::ca::chain::MAX_CHAIN_LEN {
        let n = der_len(data).unwrap_or(data.len()).clamp(1, data.len());
        let (one, rest) = data.split_at(n);
        out.push(CertificateDer::from(one));
        data = rest;
    }
    out
}

fn der_len(d: &[u8]) -> Option<usize> {
    let first = usize::from(*d.get(1)?);
    if first < 0x80 {
        return Some(2 + first);
    }
    let k = first & 0x7f;
    if k == 0 || k > 4 {
        return None;
    }
    let len = d
        .get(2..2 + k)?
        .iter()
        .fold(0usize, |a, &b| (a << 8) | usize::from(b));
    len.checked_add(2 + k)
}

/// A purpose a chain is verified for, and which CAs it accepts.
type Purpose = (&'static str, fn(&Ca) -> bool);

/// A client certificate chain (DER certificates back to back) verified against the fixed
/// CA set for each purpose, then, as `ca` auto-enrollment does, the identity made from the
/// leaf.
pub fn chain(data: &[u8]) {
    let _ = chain_enrolled(data);
}

/// [`chain`], answering the identities a `ca` auto-enrollment would create (one per purpose
/// the chain verified for, when the CA's template gives it a name).
pub fn chain_enrolled(data: &[u8]) -> Vec<Identity> {
    let chain = split_der(data);
    let purposes: [Purpose; 4] = [
        ("any", |_| true),
        ("auto-enrollment", |c| {
            c.is_verified && c.is_auto_ca_enrollment_enabled
        }),
        ("authentication", |c| c.is_verified && c.is_auth_enabled),
        ("ottca enrollment", |c| {
            c.is_verified && c.is_ott_ca_enrollment_enabled
        }),
    ];
    let mut enrolled = Vec::new();
    for (purpose, accept) in purposes {
        // Remembered signatures never change an answer: the same chain checked with every
        // signature verified gives the same result.
        let remembered = CA_SET.verify(&chain, NOW, purpose, &MEMO, accept);
        let checked = CA_SET.verify(&chain, NOW, purpose, &SignatureMemo::off(), accept);
        assert_eq!(
            remembered.as_ref().map(|ca| &ca.id),
            checked.as_ref().map(|ca| &ca.id),
            "the signature memo changed the answer for {purpose}"
        );
        match remembered {
            Ok(ca) => {
                assert!(accept(ca), "a CA refused for {purpose} verified a chain");
                let leaf = chain.first().expect("a verified chain has a leaf");
                match auto_enroll(ca, leaf, None) {
                    Ok(identity) => enrolled.push(identity),
                    Err(e) => refused(&e),
                }
            }
            Err(e) => {
                if chain.is_empty() {
                    assert_eq!(e, ChainError::NoCertificate);
                }
                refused(&e);
            }
        }
    }
    enrolled
}

/// What `ca` auto-enrollment does with a leaf that verified for `ca` before the store: the
/// same steps the handler takes (`enroll::plan`).
fn auto_enroll(
    ca: &Ca,
    leaf: &[u8],
    requested_name: Option<&str>,
) -> Result<Identity, crate::enroll::plan::Refusal> {
    use crate::enroll::plan;
    let authenticator = plan::presented(leaf, Method::Ca, NOW)?;
    let identity = plan::auto_identity(
        ca,
        leaf,
        requested_name,
        "fuzzIdentity".into(),
        authenticator,
        NOW,
    )?;
    // The name leaves room for the suffix the store may have to append.
    let suffixed = crate::enroll::suffixed_name(&identity.name, crate::enroll::MAX_NAME_SUFFIX);
    assert!(crate::enroll::validate_name(&suffixed).is_ok());
    Ok(identity)
}

// ---------------------------------------------------------------------------------------
// Enrollment requests, through the core

/// The token of the fixture `ott` enrollment.
pub const OTT_TOKEN: &str = "fuzzOttToken";
/// The token of the fixture `ottca` enrollment (for the CA `ROOT`).
pub const OTTCA_TOKEN: &str = "fuzzOttcaToken";
/// The token of a fixture `ott` enrollment that expired at [`NOW`].
pub const EXPIRED_TOKEN: &str = "fuzzExpiredToken";
/// The token of a fixture `ottca` enrollment for the CA `OTHER`, which is not verified.
pub const UNUSABLE_CA_TOKEN: &str = "fuzzUnusableCaToken";
/// The token of a fixture `ottca` enrollment for a CA since deleted.
pub const GONE_CA_TOKEN: &str = "fuzzGoneCaToken";
/// The identity the fixture enrollments enroll.
const ENROLLED_ID: &str = "fuzzEnrolled";

/// The pending enrollment the store would hold for `token`.
fn pending(token: &str) -> Option<Enrollment> {
    let (method, ca_id, expires_at) = match token {
        OTT_TOKEN => (Method::Ott, None, NOW + 86_400),
        OTTCA_TOKEN => (Method::Ottca, Some("ROOT".to_string()), NOW + 86_400),
        EXPIRED_TOKEN => (Method::Ott, None, NOW),
        UNUSABLE_CA_TOKEN => (Method::Ottca, Some("OTHER".to_string()), NOW + 86_400),
        GONE_CA_TOKEN => (Method::Ottca, Some("GONE".to_string()), NOW + 86_400),
        _ => return None,
    };
    Some(Enrollment {
        id: "fuzzEnrollment".into(),
        token: String::new(),
        method,
        identity_id: ENROLLED_ID.into(),
        ca_id,
        created_at: NOW - 60,
        expires_at,
        jwt: String::new(),
        token_sha256: vec![],
    })
}

/// Why the core refused a fuzzed enrollment request.
#[derive(Debug, thiserror::Error)]
pub enum EnrollRefused {
    /// Reading the request.
    #[error(transparent)]
    Request(#[from] crate::enroll::request::RequestError),
    /// A step of the plan.
    #[error(transparent)]
    Plan(#[from] crate::enroll::plan::Refusal),
    /// The CSR.
    #[error(transparent)]
    Csr(#[from] csr_mod::CsrError),
}

/// An enrollment request driven through the core as the daemon's handlers drive it
/// (`api::client`): read ([`crate::enroll::request::parse`]), then each method's steps
/// ([`crate::enroll::plan`]) with the store's part played by fixtures ([`OTT_TOKEN`],
/// [`OTTCA_TOKEN`], [`EXPIRED_TOKEN`], [`UNUSABLE_CA_TOKEN`], [`GONE_CA_TOKEN`], the fixed
/// CA set). The input is a client chain and
/// the bytes of the connection: two bytes (big-endian) give the length of the chain (DER
/// certificates back to back), the rest is framed as [`http_request`] frames it.
pub fn enroll(data: &[u8]) {
    enroll_each(data, usize::MAX, usize::MAX, |_, result| {
        if let Err(e) = result {
            refused(&e);
        }
    });
}

/// [`enroll`], with the daemon's limits on a head and a body, handing `each` every
/// enrollment request and what the core answered it.
pub fn enroll_each(
    data: &[u8],
    max_header_bytes: usize,
    max_body_bytes: usize,
    mut each: impl FnMut(&crate::http::Request, Result<crate::http::Response, EnrollRefused>),
) {
    let (chain, stream) = match data {
        [hi, lo, rest @ ..] => {
            let n = (usize::from(*hi) << 8 | usize::from(*lo)).min(rest.len());
            rest.split_at(n)
        }
        _ => (&[][..], data),
    };
    let chain = split_der(chain);
    frame(stream, max_header_bytes, max_body_bytes, |head, body| {
        let req = crate::http::Request { head, body };
        if let Some(endpoint) = crate::enroll::request::Endpoint::of(&req.head.path) {
            let answer = enroll_one(endpoint, &req, &chain);
            if let Ok(response) = &answer {
                let _ = response.serialize(true, false);
            }
            each(&req, answer);
        }
    });
}

fn enroll_one(
    endpoint: crate::enroll::request::Endpoint,
    req: &crate::http::Request,
    chain: &[CertificateDer<'_>],
) -> Result<crate::http::Response, EnrollRefused> {
    use crate::enroll::plan;
    use crate::enroll::request::{self, EnrollRequest};
    use crate::pki::fingerprint::sha256_hex;
    let cas = crate::ca::chain::Memoized {
        set: &CA_SET,
        memo: &MEMO,
    };
    Ok(match request::parse(endpoint, req)? {
        EnrollRequest::Ott { token, csr, form } => {
            let token = plan::token(token)?;
            let enrollment = pending(&token);
            let ott = plan::ott(token, enrollment.as_ref(), NOW)?;
            let der = csr_mod::decode_body(&csr)?;
            let accepted = csr_mod::accept(&der)?;
            let issued = SIGNER
                .issue_client(&accepted.spki_der, ott.identity_id(), NOW)
                .expect("an accepted CSR's key is issuable");
            let redemption = ott
                .signed(&issued, NOW)
                .expect("an issued certificate parses");
            assert_eq!(redemption.method, Method::Ott);
            assert_eq!(redemption.identity_id, ENROLLED_ID);
            assert!(redemption.authenticator.issued_by_network);
            assert_eq!(
                redemption.authenticator.fingerprint_sha256,
                sha256_hex(&issued.der)
            );
            plan::ott_reply(&issued, "", &ROOT.pem(), form)
        }
        EnrollRequest::Ottca { token } => {
            let token = plan::token(token)?;
            let enrollment = pending(&token);
            let redemption = plan::ottca(token, enrollment.as_ref(), chain, &cas, NOW)?;
            // Only the token's CA (`ROOT`) admits the chain: the chain verifies to it, not
            // to another CA that allows ottca (`OTHER` does, unverified), and the leaf is
            // what binds.
            let verified_to = CA_SET
                .verify(chain, NOW, "any", &SignatureMemo::off(), |_| true)
                .map(|ca| ca.id.as_str());
            assert_eq!(verified_to, Ok("ROOT"));
            assert_eq!(redemption.ca_id.as_deref(), Some("ROOT"));
            assert_eq!(redemption.identity_id, ENROLLED_ID);
            assert!(!redemption.authenticator.issued_by_network);
            assert_eq!(
                redemption.authenticator.fingerprint_sha256,
                sha256_hex(&chain[0])
            );
            plan::ottca_reply()
        }
        EnrollRequest::Ca { requested_name } => {
            let ca = plan::auto_enrollment_ca(chain, &cas, NOW)?;
            assert!(ca.is_verified && ca.is_auto_ca_enrollment_enabled);
            plan::ca_reply(&auto_enroll(ca, &chain[0], requested_name.as_deref())?)
        }
    })
}

// ---------------------------------------------------------------------------------------
// JWTs

/// An enrollment JWT as the `enroll` client handles it: read without verification (to
/// learn `iss`, `em`, `exp`), checked, then verified with the fixed server certificate.
pub fn jwt(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let token = text.trim();
    if token.is_empty() {
        return;
    }
    let peeked = crate::token::jwt::peek(token);
    if let Ok((_, claims)) = &peeked {
        let _ = format!("{claims:?}");
        let _ = Method::parse(&claims.em);
        if let Some(exp) = claims.exp {
            if NOW >= exp {
                // The client's refusal names the expiry.
                let _ = crate::clock::rfc3339(exp);
            }
        }
    }
    if let Ok(verified) = crate::token::jwt::verify_with_cert(token, &SERVER_CERT) {
        let (_, claims) = peeked.expect("a JWT that verifies can be read");
        assert_eq!(verified, claims, "verified and peeked claims differ");
    }
    session_token(token);
}

/// The `zt-session` header's value, as the API reads it, for a panic in `Sessions::get`
/// (the checks below restate what it promises: a token is accepted only under the key that
/// signed it, and only before it expires).
fn session_token(token: &str) {
    let ours = SESSIONS.get(token, NOW);
    if let Some(session) = &ours {
        assert!(session.expires_at > NOW, "an expired session was accepted");
    }
    let theirs = OTHER_SESSIONS.get(token, NOW);
    assert!(
        ours.is_none() || theirs.is_none(),
        "a session token verified under two keys"
    );
}

/// The session keys of two gateways (derived from fixed token keys).
static SESSIONS: LazyLock<crate::token::session::Sessions> = LazyLock::new(|| sessions_of(0x77));
static OTHER_SESSIONS: LazyLock<crate::token::session::Sessions> =
    LazyLock::new(|| sessions_of(0x78));

fn sessions_of(byte: u8) -> crate::token::session::Sessions {
    crate::token::session::Sessions::new(&crate::token::TokenKey::from_bytes(
        &[byte; crate::token::secret::KEY_BYTES],
    ))
}

// ---------------------------------------------------------------------------------------
// CA name templates

/// A CA's `identityNameFormat` and the values it is rendered with. The input is UTF-8
/// lines: format, CA name, CA id, CN (empty: none), requested name (absent: none),
/// identity id.
pub fn name_template(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let format = lines.next().unwrap_or_default();
    let ca_name = lines.next().unwrap_or("fleet");
    let ca_id = lines.next().unwrap_or("CA1");
    let common_name = lines.next().filter(|s| !s.is_empty());
    let requested_name = lines.next();
    let identity_id = lines.next().unwrap_or("ID9");
    let vars = NameVars {
        ca_name,
        ca_id,
        common_name,
        requested_name,
        identity_id,
    };
    let valid = name::validate_format(format);
    match name::render(format, &vars) {
        Ok(base) => {
            assert!(valid.is_ok(), "a refused format rendered");
            // A requested name counts only where the format asks for it.
            if !format.contains("[requestedName]") {
                let without = NameVars {
                    requested_name: None,
                    ..vars
                };
                assert_eq!(name::render(format, &without).ok(), Some(base.clone()));
            }
            if !format.contains('[') {
                assert_eq!(base, format);
            }
            let _ = crate::enroll::validate_name(&base);
        }
        Err(e) => {
            if valid.is_ok() {
                assert_eq!(e, name::NameFormatError::NoCommonName);
            }
            refused(&e);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Seeds

/// The seed corpus: valid (and a few near-valid) inputs for each target, made from the
/// fixtures above. `cargo test --release -p enrollgate-proto --lib fuzzing::tests::write_seeds -- --ignored`
/// writes them to `fuzz/corpus/<target>/`.
pub mod seeds {
    use super::*;

    /// Every seed: (target, file name, bytes).
    pub fn all() -> Vec<(&'static str, String, Vec<u8>)> {
        let mut out = Vec::new();
        let mut add = |target: &'static str, name: &str, bytes: Vec<u8>| {
            out.push((target, name.to_string(), bytes));
        };

        // CSRs of each key type, in each body encoding.
        let p256 = fixed_key(0x55);
        let csr_of = |key: &rcgen::KeyPair| {
            let mut p = rcgen::CertificateParams::new(vec!["device.example".to_string()])
                .expect("a DNS name is a valid SAN");
            p.distinguished_name
                .push(rcgen::DnType::CommonName, "device");
            p.serialize_request(key).expect("a CSR signs")
        };
        let p256_csr = csr_of(&p256);
        let p256_pem = p256_csr.pem().expect("a CSR has PEM");
        let p256_der = p256_csr.der().to_vec();
        add("csr", "p256.pem", p256_pem.clone().into_bytes());
        add("csr", "p256.der", p256_der.clone());
        {
            use base64::Engine as _;
            add(
                "csr",
                "p256.b64",
                base64::engine::general_purpose::STANDARD
                    .encode(&p256_der)
                    .into_bytes(),
            );
        }
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("Ed25519 key");
        add("csr", "ed25519.der", csr_of(&ed).der().to_vec());
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("P-384");
        add("csr", "p384.der", csr_of(&p384).der().to_vec());
        let rsa =
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .expect("RSA key");
        add("csr", "rsa2048.der", csr_of(&rsa).der().to_vec());

        // Chains: leaf of the root, leaf via an intermediate, leaf of the unverified root,
        // an expired leaf, a CA presented as a leaf.
        let leaf = |issuer: &rcgen::Issuer<'_, &rcgen::KeyPair>, cn: &str, not_after| {
            let mut p = rcgen::CertificateParams::default();
            p.distinguished_name = rcgen::DistinguishedName::new();
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
            p.not_before = at(NOW - 86_400);
            p.not_after = at(not_after);
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            p.signed_by(&fixed_key(0x66), issuer)
                .expect("a leaf signs")
                .der()
                .to_vec()
        };
        let root_leaf = leaf(&ROOT.issuer(), "dev-7", NOW + 86_400);
        add("chain", "root-leaf.der", root_leaf.clone());
        let inter_params = ca_params("fuzz intermediate");
        let inter_key = fixed_key(INTERMEDIATE_SCALAR);
        let inter_der = inter_params
            .signed_by(&inter_key, &ROOT.issuer())
            .expect("intermediate signs")
            .der()
            .to_vec();
        let inter = rcgen::Issuer::from_params(&inter_params, &inter_key);
        let via = leaf(&inter, "dev-8", NOW + 86_400);
        add(
            "chain",
            "intermediate.der",
            [via.clone(), inter_der.clone()].concat(),
        );
        let other_leaf = leaf(&OTHER.issuer(), "dev-9", NOW + 86_400);
        add("chain", "other-leaf.der", other_leaf.clone());
        add(
            "chain",
            "expired.der",
            leaf(&ROOT.issuer(), "old", NOW - 10),
        );
        add("chain", "ca-as-leaf.der", inter_der.clone());

        // Enrollment requests: a chain (length-prefixed) and the bytes of a connection.
        let request = |chain: &[u8], target: &str, headers: &str, body: &str| {
            let len = u16::try_from(chain.len()).expect("a fixture chain is short");
            let http = format!(
                "POST {target} HTTP/1.1\r\nHost: gw\r\n{headers}Content-Length: {}\r\n\r\n{body}",
                body.len()
            );
            [&len.to_be_bytes()[..], chain, http.as_bytes()].concat()
        };
        let json = "Content-Type: application/json\r\n";
        add(
            "enroll",
            "ott.http",
            request(
                &[],
                &format!("/enroll?method=ott&token={OTT_TOKEN}"),
                "Content-Type: application/x-pem-file\r\n",
                &p256_pem,
            ),
        );
        add(
            "enroll",
            "ott-pem-wanted.http",
            request(
                &[],
                &format!("/enroll?token={OTT_TOKEN}"),
                "Accept: application/x-pem-file\r\n",
                &p256_pem,
            ),
        );
        let ott_body = format!(
            r#"{{"token":"{OTT_TOKEN}","clientCsr":{}}}"#,
            serde_json::Value::from(p256_pem.clone())
        );
        add(
            "enroll",
            "ott-json.http",
            request(&[], "/enroll/ott", json, &ott_body),
        );
        add(
            "enroll",
            "ott-expired.http",
            request(
                &[],
                &format!("/enroll?token={EXPIRED_TOKEN}"),
                "",
                &p256_pem,
            ),
        );
        add(
            "enroll",
            "ottca.http",
            request(
                &root_leaf,
                &format!("/enroll?method=ottca&token={OTTCA_TOKEN}"),
                "",
                "",
            ),
        );
        add(
            "enroll",
            "ottca-json.http",
            request(
                &root_leaf,
                "/enroll/ottca",
                json,
                &format!(r#"{{"token":"{OTTCA_TOKEN}"}}"#),
            ),
        );
        add(
            "enroll",
            "ottca-wrong-method.http",
            request(
                &root_leaf,
                &format!("/enroll?method=ottca&token={OTT_TOKEN}"),
                "",
                "",
            ),
        );
        add(
            "enroll",
            "ottca-unusable-ca.http",
            request(
                &root_leaf,
                &format!("/enroll?method=ottca&token={UNUSABLE_CA_TOKEN}"),
                "",
                "",
            ),
        );
        add(
            "enroll",
            "ottca-gone-ca.http",
            request(
                &root_leaf,
                &format!("/enroll?method=ottca&token={GONE_CA_TOKEN}"),
                "",
                "",
            ),
        );
        add(
            "enroll",
            "ca.http",
            request(&root_leaf, "/enroll?method=ca", "", ""),
        );
        add(
            "enroll",
            "ca-named.http",
            request(
                &[via.clone(), inter_der.clone()].concat(),
                "/enroll/ca",
                json,
                r#"{"name":"mine"}"#,
            ),
        );
        let named_leaf = leaf(&NAMED.issuer(), "dev-10", NOW + 86_400);
        add(
            "enroll",
            "ca-requested-name.http",
            request(&named_leaf, "/enroll/ca", json, r#"{"name":"kiosk 7"}"#),
        );
        add(
            "enroll",
            "ca-requested-name-bad.http",
            request(
                &named_leaf,
                "/enroll/ca",
                json,
                "{\"name\":\"kiosk\\u200b7\"}",
            ),
        );
        add(
            "enroll",
            "ca-unverified.http",
            request(&other_leaf, "/enroll/ca", "", ""),
        );

        // PEM and DER.
        add("pem_der", "ca.pem", ROOT.pem().into_bytes());
        let mut pop = rcgen::CertificateParams::default();
        pop.distinguished_name = rcgen::DistinguishedName::new();
        pop.distinguished_name
            .push(rcgen::DnType::CommonName, POP_TOKEN);
        pop.not_before = at(NOW - 86_400);
        pop.not_after = at(NOW + 86_400);
        let pop_pem = pop
            .signed_by(&fixed_key(0x77), &ROOT.issuer())
            .expect("a proof signs")
            .pem();
        add("pem_der", "proof.pem", pop_pem.into_bytes());
        let p7 = pkcs7::certs_only(&[ROOT.der.clone(), inter_der.clone()]).expect("PKCS#7");
        add("pem_der", "cacerts.p7", p7.clone());
        {
            use base64::Engine as _;
            add(
                "pem_der",
                "cacerts.b64",
                base64::engine::general_purpose::STANDARD
                    .encode(&p7)
                    .into_bytes(),
            );
        }
        add("pem_der", "leaf.der", root_leaf);

        // JWTs signed with the fixed server key, and one from another key.
        let server_key = fixed_key(SERVER_SCALAR);
        let signer = crate::token::JwtSigner::new(
            &server_key,
            &server_key.serialize_pem(),
            &SERVER_CERT,
            "https://gw.fuzz.example:8443".into(),
        )
        .expect("fixture JWT signer");
        let ott = signer
            .sign("identity1", "tokenAbc_-1", Method::Ott, Some(NOW + 3600))
            .expect("JWT signs");
        add("jwt", "ott.jwt", ott.into_bytes());
        let ca_jwt = signer
            .sign("CA1", "CA1", Method::Ca, None)
            .expect("JWT signs");
        add("jwt", "ca.jwt", ca_jwt.into_bytes());
        let expired = signer
            .sign("identity2", "tok2", Method::Ottca, Some(NOW - 3600))
            .expect("JWT signs");
        add("jwt", "expired.jwt", expired.into_bytes());
        let other_key = fixed_key(0x88);
        let other = crate::token::JwtSigner::new(
            &other_key,
            &other_key.serialize_pem(),
            &SERVER_CERT,
            "https://elsewhere.example".into(),
        )
        .expect("fixture JWT signer")
        .sign("x", "y", Method::Ott, Some(NOW + 60))
        .expect("JWT signs");
        add("jwt", "other-key.jwt", other.into_bytes());

        // JSON bodies (first byte: content type selector, see CONTENT_TYPES).
        let ca_pem_json = serde_json::to_string(&ROOT.pem()).expect("JSON string");
        let csr_json = serde_json::to_string(&p256_pem).expect("JSON string");
        let bodies: [(&str, u8, String); 8] = [
            (
                "identity.json",
                1,
                r#"{"name":"dev-1","type":"Device","isAdmin":false,"roleAttributes":["a","b"],"enrollment":{"ott":true}}"#.into(),
            ),
            (
                "identity-ottca.json",
                0,
                r#"{"name":"dev-2","type":"user","enrollment":{"ottca":"CA1"}}"#.into(),
            ),
            (
                "ca-create.json",
                1,
                format!(r#"{{"name":"fleet","certPem":{ca_pem_json},"isAutoCaEnrollmentEnabled":true,"identityRoles":["r"],"identityNameFormat":"[caName]-[commonName]"}}"#),
            ),
            (
                "ca-update.json",
                2,
                r#"{"name":"fleet2","isAuthEnabled":false,"identityNameFormat":"[requestedName]"}"#.into(),
            ),
            (
                "enroll-ott.json",
                1,
                format!(r#"{{"token":"tokenAbc_-1","clientCsr":{csr_json}}}"#),
            ),
            (
                "enrollment.json",
                1,
                r#"{"identityId":"ID1","method":"ottca","caId":"CA1","expiresAt":"2030-01-01T00:00:00Z"}"#.into(),
            ),
            ("ca-name.json", 0, r#"{"name":"requested-name"}"#.into()),
            ("empty-text.json", 3, " \n".into()),
        ];
        for (name, selector, body) in bodies {
            add(
                "json_bodies",
                name,
                [vec![selector], body.into_bytes()].concat(),
            );
        }

        // HTTP requests of each route, and framing edge cases.
        let csr_body = p256_pem.as_bytes();
        let http = |head: &str, body: &[u8]| [head.as_bytes(), body].concat();
        add(
            "http_request",
            "version.http",
            http("GET /version HTTP/1.1\r\nHost: gw\r\n\r\n", b""),
        );
        add(
            "http_request",
            "enroll-ott.http",
            http(
                &format!(
                    "POST /edge/client/v1/enroll?method=ott&token=tokenAbc_-1 HTTP/1.1\r\nHost: gw\r\nContent-Type: application/x-pem-file\r\nAccept: application/x-pem-file\r\nContent-Length: {}\r\n\r\n",
                    csr_body.len()
                ),
                csr_body,
            ),
        );
        let ca_body = br#"{"name":"mine"}"#;
        add(
            "http_request",
            "enroll-ca.http",
            http(
                &format!(
                    "POST /enroll?method=ca HTTP/1.1\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
                    ca_body.len()
                ),
                ca_body,
            ),
        );
        add(
            "http_request",
            "pipelined.http",
            http(
                "GET /version HTTP/1.1\r\n\r\nPOST /edge/client/v1/authenticate?method=cert HTTP/1.1\r\nContent-Length: 0\r\n\r\nGET /edge/client/v1/current-identity HTTP/1.1\r\nzt-session: abc\r\nConnection: close\r\n\r\n",
                b"",
            ),
        );
        add(
            "http_request",
            "management.http",
            http(
                "GET /edge/management/v1/identities?filter=name%20contains%20%22dev%22&limit=10&offset=0 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
                b"",
            ),
        );
        add(
            "http_request",
            "chunked.http",
            http(
                "POST /enroll/ott HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                b"",
            ),
        );

        // Query strings.
        for (name, q) in [
            ("ott.q", "method=ott&token=tokenAbc_-1"),
            (
                "list.q",
                "filter=name%20startswith%20%22dev%5C%22%22&limit=25&offset=5",
            ),
            ("name.q", "name=a%2Bb+c&method=ca&method=ott"),
        ] {
            add("query", name, q.as_bytes().to_vec());
        }

        // Name templates: format, CA name, CA id, CN, requested name, identity id.
        for (name, t) in [
            ("default.txt", "[caName]-[commonName]\nfleet\nCA1\ndev-7\n\nID9"),
            (
                "every-symbol.txt",
                "[caName]/[caId]/[commonName]/[requestedName]/[identityId]\nfleet\nCA1\ncn\nreq\nID9",
            ),
            ("requested.txt", "[caName]-[commonName]\nfleet\nCA1\ncn\nmine\nID9"),
            ("unknown.txt", "[caName]-[serial\nfleet\nCA1\ncn"),
        ] {
            add("name_template", name, t.as_bytes().to_vec());
        }
        // An API session token of the fixture gateway, live at NOW.
        let (session, _) = SESSIONS
            .create(
                crate::token::session::Opening {
                    identity_id: "fuzzIdentity",
                    authenticator_id: "fuzzAuthenticator",
                    ip_address: None,
                },
                NOW - 60,
            )
            .expect("a session opens");
        add("jwt", "session.tok", session.into_bytes());
        out
    }

    /// Inputs that crashed a target once (see fuzz/README.md), made from the fixtures:
    /// (target, file name, bytes).
    pub fn regressions() -> Vec<(&'static str, String, Vec<u8>)> {
        let mut out = Vec::new();
        // An enrollment JWT whose `exp` is before 1970: the client's "expired at" message
        // formatted it, which panicked.
        let jwt = |claims: &str| {
            use base64::Engine as _;
            let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
            format!(
                "{}.{}.{}",
                b64(r#"{"alg":"ES256","typ":"JWT"}"#),
                b64(claims),
                b64("not a signature")
            )
        };
        for (name, exp) in [
            ("exp-negative.jwt", "-1"),
            ("exp-i64-min.jwt", "-9223372036854775808"),
        ] {
            let claims = format!(
                r#"{{"iss":"https://gw.example","sub":"s","jti":"t","em":"ott","exp":{exp}}}"#
            );
            out.push(("jwt", name.to_string(), jwt(&claims).into_bytes()));
        }
        out
    }

    /// Writes every seed to `<dir>/<target>/<name>`.
    pub fn write_all(dir: &std::path::Path) -> std::io::Result<usize> {
        let seeds = all();
        for (target, name, bytes) in &seeds {
            let d = dir.join(target);
            std::fs::create_dir_all(&d)?;
            std::fs::write(d.join(name), bytes)?;
        }
        Ok(seeds.len())
    }
}

// ---------------------------------------------------------------------------------------
// Replay

/// A target's name and function.
pub type Target = (&'static str, fn(&[u8]));

/// Every target by name, as `fuzz/fuzz_targets/<name>.rs` calls it.
pub const TARGETS: [Target; 9] = [
    ("http_request", http_request),
    ("enroll", enroll),
    ("query", query),
    ("json_bodies", json_bodies),
    ("pem_der", pem_der),
    ("csr", csr),
    ("chain", chain),
    ("jwt", jwt),
    ("name_template", name_template),
];

/// The fuzz crate's directory, `fuzz/` at the root of the repository.
pub fn fuzz_dir() -> std::path::PathBuf {
    // The checkout the tests run in (cargo sets the variable when it runs them), not the
    // one this crate was compiled in: a target directory shared by several checkouts
    // (CI's clean clones) may hold a build from a checkout since removed.
    let compiled = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let running = std::env::var_os("CARGO_MANIFEST_DIR").map(std::path::PathBuf::from);
    running
        .as_deref()
        .unwrap_or(compiled)
        .ancestors()
        .map(|d| d.join("fuzz"))
        .find(|f| f.join("corpus").is_dir())
        .unwrap_or_else(|| compiled.join("../../fuzz"))
}

/// The committed seeds (`fuzz/corpus/<target>/`) and regression inputs
/// (`fuzz/regressions/<target>/`) of `target`: (path, bytes).
pub fn replay_inputs(target: &str) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut inputs = Vec::new();
    for kind in ["corpus", "regressions"] {
        let dir = fuzz_dir().join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if !path.is_file() {
                continue;
            }
            let bytes = std::fs::read(&path).expect("readable input");
            inputs.push((path, bytes));
        }
    }
    inputs
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replays the committed corpus and every regression input through its target.
    #[test]
    fn replays_corpus_and_regressions() {
        let mut replayed = 0;
        for (target, run) in TARGETS {
            for (path, bytes) in replay_inputs(target) {
                eprintln!("replaying {}", path.display());
                run(&bytes);
                replayed += 1;
            }
        }
        assert!(replayed >= TARGETS.len(), "only {replayed} inputs replayed");
    }

    /// The seeds exercise the success paths they were made for.
    #[test]
    fn seeds_reach_their_success_paths() {
        let seeds = seeds::all();
        let get = |t: &str, n: &str| {
            seeds
                .iter()
                .find(|(target, name, _)| *target == t && name == n)
                .map(|(_, _, b)| b.clone())
                .expect("seed exists")
        };
        let chain_der = get("chain", "intermediate.der");
        let chain = split_der(&chain_der);
        assert_eq!(chain.len(), 2);
        assert_eq!(
            CA_SET
                .verify(&chain, NOW, "t", &SignatureMemo::off(), |_| true)
                .expect("verifies")
                .id,
            "ROOT"
        );
        let other_der = get("chain", "other-leaf.der");
        let other = split_der(&other_der);
        assert!(matches!(
            CA_SET.verify(&other, NOW, "t", &SignatureMemo::off(), |c| c.is_verified),
            Err(ChainError::CaRefused { .. } | ChainError::UnknownIssuer { .. })
        ));
        let session = String::from_utf8(get("jwt", "session.tok")).expect("UTF-8");
        assert!(SESSIONS.get(&session, NOW).is_some());
        assert!(OTHER_SESSIONS.get(&session, NOW).is_none());
        let jwt = String::from_utf8(get("jwt", "ott.jwt")).expect("UTF-8");
        assert_eq!(
            crate::token::jwt::verify_with_cert(&jwt, &SERVER_CERT)
                .expect("verifies")
                .sub,
            "identity1"
        );
        for n in ["p256.pem", "p256.der", "p256.b64", "rsa2048.der"] {
            let der = csr_mod::decode_body(&get("csr", n)).expect("decodes");
            csr_mod::accept(&der).expect("accepted");
        }
        crate::ca::parse_ca_pem(&get("pem_der", "ca.pem")).expect("a CA");
        crate::ca::pop::check(&get("pem_der", "proof.pem"), &ROOT.der, POP_TOKEN, NOW)
            .expect("a valid proof");
        assert_eq!(
            pkcs7::read_certs(&get("pem_der", "cacerts.p7"))
                .expect("reads")
                .len(),
            2
        );
    }

    /// Each enrollment seed ends where it was made to: enrolled, or refused for its reason.
    #[test]
    fn enrollment_seeds_reach_their_answers() {
        use crate::enroll::plan::Refusal;
        use crate::enroll::EnrollError;
        let seeds = seeds::all();
        let answer = |name: &str| {
            let (_, _, bytes) = seeds
                .iter()
                .find(|(t, n, _)| *t == "enroll" && n == name)
                .expect("seed exists");
            let mut answers = Vec::new();
            enroll_each(bytes, usize::MAX, usize::MAX, |_, a| answers.push(a));
            assert_eq!(answers.len(), 1, "{name}");
            answers.pop().expect("one answer")
        };
        for name in [
            "ott.http",
            "ott-json.http",
            "ottca.http",
            "ottca-json.http",
            "ca.http",
        ] {
            let response = answer(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(response.content_type, "application/json", "{name}");
        }
        let pem = answer("ott-pem-wanted.http").expect("enrolled");
        assert_eq!(pem.content_type, "application/x-pem-file");
        let named = answer("ca-named.http").expect("enrolled");
        assert!(String::from_utf8_lossy(&named.body).contains("fuzzIdentity"));
        assert!(answer("ca-requested-name.http").is_ok());
        assert!(matches!(
            answer("ca-requested-name-bad.http"),
            Err(EnrollRefused::Plan(Refusal::Name(_)))
        ));
        assert!(matches!(
            answer("ott-expired.http"),
            Err(EnrollRefused::Plan(Refusal::Token(
                EnrollError::Expired { .. }
            )))
        ));
        assert!(matches!(
            answer("ottca-wrong-method.http"),
            Err(EnrollRefused::Plan(Refusal::Token(
                EnrollError::WrongMethod(_)
            )))
        ));
        assert!(matches!(
            answer("ottca-unusable-ca.http"),
            Err(EnrollRefused::Plan(Refusal::TokenCaNotUsable))
        ));
        assert!(matches!(
            answer("ottca-gone-ca.http"),
            Err(EnrollRefused::Plan(Refusal::TokenCaGone))
        ));
        assert!(matches!(
            answer("ca-unverified.http"),
            Err(EnrollRefused::Plan(Refusal::Chain {
                method: Method::Ca,
                ..
            }))
        ));
    }

    /// Writes the seed corpus (run by hand; the files are committed).
    #[test]
    #[ignore = "writes fuzz/corpus; run by hand after changing the seeds"]
    fn write_seeds() {
        let n = seeds::write_all(&fuzz_dir().join("corpus")).expect("seeds written");
        assert!(n > 0);
    }

    /// Writes the regression inputs that are made from the fixtures (run by hand).
    #[test]
    #[ignore = "writes fuzz/regressions; run by hand after adding a regression"]
    fn write_regressions() {
        for (target, name, bytes) in seeds::regressions() {
            let d = fuzz_dir().join("regressions").join(target);
            std::fs::create_dir_all(&d).expect("regressions directory");
            std::fs::write(d.join(name), bytes).expect("regression written");
        }
    }
}
