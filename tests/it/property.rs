//! Property test (issue #7, item 5): whatever a client sends, the answer is HTTP, never a
//! 500 or `UNHANDLED`, always a documented error code with its documented status, the
//! daemon stays up, and a request that must not write leaves the store as it was.
//!
//! Three generators, each run against ONE daemon started for its test: HTTP framing
//! (request lines, methods, targets, percent-encoding, headers, Content-Length lies,
//! bad UTF-8, huge values), the client API (query strings, tokens that are garbage,
//! truncated, altered, re-signed, expired, used or of another method; CSR and JSON bodies
//! of every wrong shape) and the management API with the admin certificate (ids, paging
//! and filter parameters, JSON bodies of wrong shapes, types, nesting and size).
//!
//! Cases per generator: `PROPTEST_CASES` (default 150). A failure prints the smallest
//! request proptest could shrink it to.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use enrollgate::client::{self, HttpResponse};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use rustls::ClientConfig;
use serde_json::{json, Value};

use crate::fleet::{admin_credentials, Fleet};
use crate::support::*;

/// Every error code with its status, as README's error table documents them (DESIGN.md
/// lists the enrollment ones; README's table is the complete list).
const DOCUMENTED: &[(&str, u16)] = &[
    ("INVALID_ENROLLMENT_TOKEN", 400),
    ("ENROLLMENT_EXPIRED", 400),
    ("INVALID_ENROLL_METHOD", 400),
    ("CERT_FAILED_VALIDATION", 400),
    ("CERTIFICATE_FAILED_VALIDATION", 400),
    ("ENROLLMENT_CA_NOT_VALID", 400),
    ("INVALID_COMMON_NAME", 400),
    ("EXPECTED_PEM_CERTIFICATE", 400),
    ("COULD_NOT_PROCESS_CSR", 400),
    ("COULD_NOT_PARSE_BODY", 400),
    ("INVALID_NAME", 400),
    ("INVALID_PARAMETER", 400),
    ("MALFORMED_REQUEST", 400),
    ("UNAUTHORIZED", 401),
    ("INVALID_AUTH", 401),
    ("NOT_FOUND", 404),
    ("METHOD_NOT_ALLOWED", 405),
    ("CERT_IN_USE", 409),
    ("NAME_IN_USE", 409),
    ("CA_EXISTS", 409),
    ("CA_ALREADY_VERIFIED", 409),
    ("INVALID_STATE", 409),
    ("LENGTH_REQUIRED", 411),
    ("REQUEST_TOO_LARGE", 413),
    ("UNSUPPORTED_MEDIA", 415),
    ("HEADERS_TOO_LARGE", 431),
    ("RATE_LIMITED", 429),
];

fn runner() -> TestRunner {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    TestRunner::new(Config {
        cases,
        // Nothing is written next to the sources; a failure prints its minimal case.
        failure_persistence: None,
        max_shrink_iters: 300,
        ..Config::default()
    })
}

fn timeouts(cfg: &mut String) {
    set_limits(&[
        ("handshake_timeout", "\"3s\""),
        ("header_timeout", "\"2s\""),
        ("body_timeout", "\"2s\""),
        ("idle_timeout", "\"2s\""),
        ("write_timeout", "\"3s\""),
    ])(cfg)
}

/// One generated request: its bytes, and who sends it.
#[derive(Clone)]
struct Req {
    bytes: Vec<u8>,
    admin: bool,
    /// Whether the request may change the store (then only a 2xx answer may).
    may_write: bool,
}

impl std::fmt::Debug for Req {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = String::from_utf8_lossy(&self.bytes);
        let shown: String = text.chars().take(600).collect();
        write!(
            f,
            "Req {{ admin: {}, {} bytes: {:?}{} }}",
            self.admin,
            self.bytes.len(),
            shown,
            if text.chars().count() > 600 {
                "..."
            } else {
                ""
            }
        )
    }
}

/// Sends `bytes` on a new TLS connection, then close_notify (so the daemon sees the end
/// of the request stream at once instead of waiting for a timeout), and reads to the end.
fn exchange(port: u16, cfg: &Arc<ClientConfig>, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(15)))
        .map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(Duration::from_secs(15)))
        .map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(cfg.clone(), "127.0.0.1".try_into().unwrap())
        .map_err(|e| e.to_string())?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    // The daemon may refuse and close before it has read everything: not an error here.
    let _ = s.write_all(bytes).and_then(|_| s.flush());
    s.conn.send_close_notify();
    let _ = s.flush();
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return Ok(raw),
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return Err(format!(
                    "no end of the answer within 15 s: the daemon hangs ({} bytes read)",
                    raw.len()
                ))
            }
            // A reset or a close without close_notify after the answers.
            Err(_) => return Ok(raw),
        }
    }
}

/// The answers in `raw`. An answer to HEAD has a Content-Length but no body: an answer
/// whose announced body is not there because the next answer starts right after its
/// head is read as one.
fn responses(raw: &[u8]) -> Result<Vec<HttpResponse>, String> {
    let fail = |why: String| {
        format!(
            "the answer is not a sequence of whole HTTP responses ({why}): {:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(400)])
        )
    };
    let mut out = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        let head_len = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| p + 4)
            .ok_or_else(|| fail("no end of a head".into()))?;
        let after = &rest[head_len..];
        let head_only = after.is_empty() || after.starts_with(b"HTTP/1.");
        // The head alone first, for its Content-Length.
        let (mut heads, _) = split_responses(&rest[..head_len], |_| true).map_err(fail)?;
        let head = heads
            .pop()
            .ok_or_else(|| fail("a head that does not parse".into()))?;
        let len: usize = match head.header("content-length") {
            Some(v) => v
                .parse()
                .map_err(|_| fail(format!("Content-Length {v:?}")))?,
            None => return Err(fail("no Content-Length".into())),
        };
        let body = if head_only { 0 } else { len };
        if after.len() < body {
            return Err(fail("a truncated body".into()));
        }
        let (mut one, _) =
            split_responses(&rest[..head_len + body], |_| head_only).map_err(fail)?;
        out.extend(one.pop());
        rest = &after[body..];
    }
    Ok(out)
}

/// Every answer is HTTP, and every error is documented, with its status, and never a 500.
fn check_answers(raw: &[u8]) -> Result<Vec<HttpResponse>, TestCaseError> {
    let rs = responses(raw).map_err(TestCaseError::fail)?;
    for r in &rs {
        prop_assert!(
            r.status != 500,
            "HTTP 500: {}",
            String::from_utf8_lossy(&r.body)
        );
        prop_assert!(
            (200..300).contains(&r.status) || (400..500).contains(&r.status),
            "status {}",
            r.status
        );
        if r.status >= 400 && !r.body.is_empty() {
            let (code, _) = r.api_error().ok_or_else(|| {
                TestCaseError::fail(format!(
                    "a {} without an error envelope: {}",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                ))
            })?;
            prop_assert!(code != "UNHANDLED", "UNHANDLED");
            prop_assert!(
                DOCUMENTED.contains(&(code.as_str(), r.status)),
                "undocumented error {code} with status {}",
                r.status
            );
        }
    }
    Ok(rs)
}

/// The store as the management API shows it: identities, pending enrollments and CAs.
fn store(gw: &Gateway) -> (Value, Value, Value) {
    let (ids, ens) = gw.snapshot();
    let cas = gw.mgmt("GET", "/cas", None).json().expect("json");
    (ids, ens, cas["data"].clone())
}

/// Runs `strategy` against `gw`; checks every answer and the store.
fn run(gw: &Gateway, label: &str, strategy: impl Strategy<Value = Req>) {
    let anon = client::config(&gw.ca_certs(), None).unwrap();
    let admin = client::config(&gw.ca_certs(), Some(admin_credentials(gw))).unwrap();
    let state = std::cell::RefCell::new(store(gw));
    let counts = std::cell::RefCell::new(std::collections::BTreeMap::<String, usize>::new());
    let result = runner().run(&strategy, |req| {
        let cfg = if req.admin { &admin } else { &anon };
        let raw = exchange(gw.port, cfg, &req.bytes).map_err(TestCaseError::fail)?;
        let rs = check_answers(&raw)?;
        for r in &rs {
            let key = if r.status < 300 {
                r.status.to_string()
            } else if r.body.is_empty() {
                format!("{} (HEAD: no body)", r.status)
            } else {
                code(r)
            };
            *counts.borrow_mut().entry(key).or_default() += 1;
        }
        if rs.is_empty() {
            *counts
                .borrow_mut()
                .entry("(closed, no answer)".into())
                .or_default() += 1;
        }
        let wrote = req.may_write && rs.iter().any(|r| (200..300).contains(&r.status));
        let now = store(gw);
        let before = state.replace(now.clone());
        if !wrote && before != now {
            // The new state is the baseline from here on, so that shrinking looks for a
            // request that changes the store, not for any request at all.
            let what = [
                ("identities", &before.0, &now.0),
                ("enrollments", &before.1, &now.1),
                ("CAs", &before.2, &now.2),
            ]
            .iter()
            .filter(|(_, a, b)| a != b)
            .map(|(n, a, b)| format!("{n}: {a} -> {b}"))
            .collect::<Vec<_>>();
            return Err(TestCaseError::fail(format!(
                "a request answered {:?} ({}) changed the store: {what:?}",
                rs.iter().map(|r| r.status).collect::<Vec<_>>(),
                rs.iter().map(code).collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(())
    });
    eprintln!("[{label}] answers: {:?}", counts.borrow());
    if let Err(e) = result {
        panic!("[{label}] {e}\n\ndaemon log tail:\n{}", tail(&gw.log()));
    }
    assert!(!gw.log().contains("panicked"), "{}", gw.log());
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The daemon still enrolls.
fn still_enrolls(gw: &Gateway, name: &str) {
    let (_, _, token) = gw.create_identity(name, "Device", false);
    let r = gw.request(
        "POST",
        &format!("/enroll?method=ott&token={token}"),
        &[("Content-Type", "application/x-pem-file")],
        &new_csr_pem(),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

// ---------------------------------------------------------------------------------------
// Building blocks.

fn pick(options: &[&str]) -> BoxedStrategy<String> {
    let v: Vec<String> = options.iter().map(|s| s.to_string()).collect();
    proptest::sample::select(v).boxed()
}

/// Printable or not, valid UTF-8 or not: any short byte string.
fn any_bytes(max: usize) -> BoxedStrategy<Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max).boxed()
}

/// Percent-encodes every byte that is not unreserved.
fn pct(s: &[u8]) -> String {
    s.iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// How a query value is written: encoded properly, raw, or with broken percent-escapes.
#[derive(Clone, Copy, Debug)]
enum Encoding {
    Percent,
    Raw,
    BrokenEscape,
    BadBytes,
}

impl Encoding {
    fn apply(self, v: &str) -> String {
        match self {
            Self::Percent => pct(v.as_bytes()),
            Self::Raw => v.replace([' ', '#', '\r', '\n'], ""),
            Self::BrokenEscape => format!("{}%zz%", pct(v.as_bytes())),
            Self::BadBytes => format!("%ff%fe{}%00", pct(v.as_bytes())),
        }
    }
}

fn encoding() -> BoxedStrategy<Encoding> {
    prop_oneof![
        5 => Just(Encoding::Percent),
        1 => Just(Encoding::Raw),
        1 => Just(Encoding::BrokenEscape),
        1 => Just(Encoding::BadBytes),
    ]
    .boxed()
}

/// A JSON value of any shape, nested a little.
fn any_json() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        2 => Just(Value::Null),
        2 => any::<bool>().prop_map(Value::Bool),
        2 => any::<i64>().prop_map(|n| json!(n)),
        1 => any::<f64>().prop_map(|f| json!(f)),
        4 => "[ -~]{0,40}".prop_map(Value::String),
        2 => ".{0,20}".prop_map(Value::String),
        1 => (200usize..2_000).prop_map(|n| Value::String("x".repeat(n))),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(".{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

/// Bodies that look like JSON but are not, or nest past any parser's patience.
fn broken_json() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        (1usize..5_000).prop_map(|d| format!("{}{}", "[".repeat(d), "]".repeat(d)).into_bytes()),
        (1usize..5_000).prop_map(|d| "{\"a\":".repeat(d).into_bytes()),
        (60_000usize..70_000)
            .prop_map(|n| format!("{{\"name\":\"{}\"}}", "x".repeat(n)).into_bytes()),
        Just(b"{\"name\":\"\xff\xfe\"}".to_vec()),
        Just(b"{\"name\":\"a\" \"type\":1}".to_vec()),
        Just(b"{\"name\":\"\\ud800\"}".to_vec()),
        Just(b"\xef\xbb\xbf{}".to_vec()),
        Just(b"nul\x00l".to_vec()),
        any_bytes(300),
    ]
    .boxed()
}

/// An object with the expected keys holding values of any type.
fn shaped(keys: &'static [&'static str]) -> BoxedStrategy<Value> {
    proptest::collection::vec(
        (proptest::sample::select(keys), any_json()),
        0..keys.len() + 2,
    )
    .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
    .boxed()
}

/// A request with a correct Content-Length around `body`.
fn request(method: &str, target: &str, headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PATCH" || method == "PUT" {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

// ---------------------------------------------------------------------------------------
// 1. HTTP framing.

const KNOWN_PATHS: &[&str] = &[
    "/version",
    "/edge/client/v1/version",
    "/.well-known/est/cacerts",
    "/enroll",
    "/edge/client/v1/enroll",
    "/enroll/ott",
    "/enroll/ottca",
    "/enroll/ca",
    "/authenticate",
    "/current-identity",
    "/current-api-session",
    "/edge/client/v1/",
    "/edge/management/v1/identities",
    "/edge/management/v1/enrollments",
    "/edge/management/v1/cas",
];

fn framing() -> BoxedStrategy<Req> {
    let method = prop_oneof![
        4 => pick(&["GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"]),
        1 => "[a-zA-Z]{1,12}",
        1 => "[!-~]{1,10}",
        1 => pick(&["", "G ET", "GET\0", "\u{00e9}GET"]),
        1 => (1usize..20_000).prop_map(|n| "X".repeat(n)),
    ];
    let path = prop_oneof![
        4 => pick(KNOWN_PATHS),
        2 => (pick(KNOWN_PATHS), "(/|%[0-9a-fA-FzZ]{0,2}|[a-z.]{0,4}){0,6}")
            .prop_map(|(p, s)| format!("{p}{s}")),
        1 => "/[a-zA-Z0-9%._~/-]{0,40}",
        1 => pick(&["*", "", "version", "http://127.0.0.1/version", "//version", "/edge/management/v1/../../version", "/%2e%2e/%2e%2e/etc/passwd", "/\u{1F600}"]),
        1 => (1usize..20_000).prop_map(|n| format!("/{}", "a".repeat(n))),
    ];
    let query = prop_oneof![
        3 => Just(String::new()),
        2 => "\\?[ -~&&[^ #]]{0,60}",
        1 => "\\?(method|token|limit|offset|filter|name)=(%[0-9a-fA-Fz]{0,2}|[a-z0-9]{0,8}){0,4}(&[a-z]{0,6}=?[a-z%]{0,6}){0,3}",
    ];
    let version = prop_oneof![
        6 => Just("HTTP/1.1".to_string()),
        2 => pick(&["HTTP/1.0", "HTTP/2.0", "HTTP/1.2", "HTTP/1", "http/1.1", "HTTP/1.1 ", "", "HTTP/1.1\0"]),
    ];
    let eol = prop_oneof![8 => Just("\r\n"), 1 => Just("\n"), 1 => Just("\r")];
    let header = prop_oneof![
        2 => (pick(&["Content-Length"]), pick(&["0", "5", "-1", "+5", "0x10", " 7 ", "99999999999999999999999", "1, 2", "abc", "4294967296", "18446744073709551615"])).prop_map(|(n, v)| (n.into_bytes(), v.into_bytes())),
        1 => (pick(&["Transfer-Encoding"]), pick(&["chunked", "gzip", "chunked, identity", "identity", "CHUNKED", " chunked"])).prop_map(|(n, v)| (n.into_bytes(), v.into_bytes())),
        1 => (pick(&["Content-Type"]), pick(&["application/json", "text/plain", "application/x-pem-file", "application/pkcs10", "multipart/form-data; boundary=x", "", ";;;", "application/json; charset=\u{00ff}"])).prop_map(|(n, v)| (n.into_bytes(), v.into_bytes())),
        1 => (pick(&["Expect", "Connection", "Accept", "zt-session", "Host"]), pick(&["100-continue", "close", "keep-alive", "upgrade", "*/*", "application/x-pem-file", "garbage", ""])).prop_map(|(n, v)| (n.into_bytes(), v.into_bytes())),
        1 => ("[!-~&&[^:]]{1,20}", any_bytes(64)).prop_map(|(n, v)| (n.into_bytes(), v)),
        1 => (1usize..20_000).prop_map(|n| (b"X-Big".to_vec(), vec![b'a'; n])),
        1 => Just((b"NoColonHeader".to_vec(), Vec::new())),
        1 => Just((b" folded".to_vec(), b"continuation".to_vec())),
        1 => Just((b"Bad Name".to_vec(), b"x".to_vec())),
        1 => (0u8..=255).prop_map(|b| (b"X-Byte".to_vec(), vec![b'a', b, b'z'])),
    ]
    .boxed();
    let headers = proptest::collection::vec(header, 0..8);
    let body = prop_oneof![3 => Just(Vec::new()), 2 => any_bytes(512), 1 => broken_json()];
    // How the body is framed: as sent, Content-Length exact, or a lie either way.
    let length = prop_oneof![Just(None), Just(Some(0i64)), (-20i64..20).prop_map(Some)];
    let second = prop_oneof![
        3 => Just(Vec::new()),
        1 => Just(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        1 => any_bytes(64),
    ];
    (
        method,
        path,
        query,
        version,
        eol,
        headers,
        body,
        length,
        second,
        any::<bool>(),
    )
        .prop_map(
            |(method, path, query, version, eol, headers, body, length, second, admin)| {
                let mut b = format!("{method} {path}{query} {version}{eol}").into_bytes();
                for (n, v) in headers {
                    b.extend_from_slice(&n);
                    if !v.is_empty() || n != b"NoColonHeader" {
                        b.extend_from_slice(b": ");
                    }
                    b.extend_from_slice(&v);
                    b.extend_from_slice(eol.as_bytes());
                }
                if let Some(delta) = length {
                    let len = (body.len() as i64 + delta).max(0);
                    b.extend_from_slice(format!("Content-Length: {len}{eol}").as_bytes());
                }
                b.extend_from_slice(eol.as_bytes());
                b.extend_from_slice(&body);
                b.extend_from_slice(&second);
                Req {
                    bytes: b,
                    admin,
                    // A framing case can be a valid management POST by chance (e.g. an
                    // identity with a random name): only a 2xx answer may write.
                    may_write: true,
                }
            },
        )
        .boxed()
}

/// Broken request lines, methods, targets, percent-encoding, headers, Content-Length
/// lies, bad UTF-8, huge values and pipelined leftovers, anonymous or as the admin.
#[test]
fn malformed_http_framing_gets_documented_answers() {
    let gw = Gateway::start_with(timeouts, &[]);
    run(&gw, "framing", framing());
    still_enrolls(&gw, "after-framing");
}

// ---------------------------------------------------------------------------------------
// 2. The client API.

/// What the daemon knows about tokens, for the generators.
#[derive(Clone, Debug)]
struct Tokens {
    pending: String,
    pending_jwt: String,
    resigned_jwt: String,
    expired: String,
    used: String,
    ottca: String,
}

fn resign(jwt: &str) -> String {
    let mut parts = jwt.split('.');
    let (_, payload) = (parts.next().unwrap(), parts.next().unwrap());
    use base64::Engine as _;
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let enc = jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    let header = jsonwebtoken::decode_header(jwt).unwrap();
    jsonwebtoken::encode(&header, &claims, &enc).unwrap()
}

fn token_value(t: &Tokens) -> BoxedStrategy<String> {
    let t = t.clone();
    let p = t.pending.clone();
    prop_oneof![
        2 => Just(t.pending.clone()),
        1 => Just(t.pending_jwt.clone()),
        1 => Just(t.resigned_jwt.clone()),
        1 => Just(t.expired.clone()),
        1 => Just(t.used.clone()),
        1 => Just(t.ottca.clone()),
        1 => (0..p.len()).prop_map(move |k| p[..k].to_string()),
        1 => (0..t.pending.len(), "[A-Za-z0-9_-]").prop_map({
            let p = t.pending.clone();
            move |(i, c)| {
                let mut s: Vec<char> = p.chars().collect();
                s[i] = c.chars().next().unwrap();
                s.into_iter().collect()
            }
        }),
        2 => "[ -~]{0,80}",
        1 => ".{0,20}",
        1 => (1usize..20_000).prop_map(|n| "t".repeat(n)),
    ]
    .boxed()
}

/// CSR bodies that are not a usable CSR.
fn bad_csr(good: Vec<u8>, cert_pem: Vec<u8>) -> BoxedStrategy<Vec<u8>> {
    let g = good.clone();
    let der: Vec<u8> = pem::parse(&good).unwrap().into_contents();
    prop_oneof![
        Just(Vec::new()),
        Just(b"this is not PEM".to_vec()),
        Just(cert_pem.clone()),
        Just(
            b"-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"
                .to_vec()
        ),
        Just(b"-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n".to_vec()),
        // Truncated inside the base64 (a PEM missing only its last newline is whole).
        (1..good.len() - 40).prop_map(move |k| g[..k].to_vec()),
        // One bit of the DER flipped, re-encoded as PEM (the signature no longer verifies).
        (0..der.len(), 0u8..8).prop_map({
            let der = der.clone();
            move |(i, bit)| {
                let mut d = der.clone();
                d[i] ^= 1 << bit;
                pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", d)).into_bytes()
            }
        }),
        // The right DER under another label.
        Just(pem::encode(&pem::Pem::new("CERTIFICATE", der.clone())).into_bytes()),
        // The right PEM with another block, or anything but whitespace, after it (only
        // whitespace may follow the one block), or with data before it.
        Just([good.clone(), good.clone()].concat()),
        Just([good.clone(), cert_pem.clone()].concat()),
        any_bytes(400).prop_map({
            let g = good.clone();
            move |b| [g.clone(), b"x".to_vec(), b].concat()
        }),
        any_bytes(400).prop_map({
            let g = good.clone();
            move |b| [b"x".to_vec(), b, g.clone()].concat()
        }),
        any_bytes(400),
        (60_000usize..70_000).prop_map(|n| vec![b'A'; n]),
    ]
    .boxed()
}

fn client_api(t: &Tokens, good_csr: Vec<u8>, cert_pem: Vec<u8>) -> BoxedStrategy<Req> {
    let path = prop_oneof![
        4 => pick(&["/enroll", "/edge/client/v1/enroll"]),
        2 => pick(&["/enroll/ott", "/edge/client/v1/enroll/ott", "/enroll/ottca", "/enroll/ca"]),
        1 => pick(&[
        "/enroll/ott",
        "/edge/client/v1/enroll/ott",
        "/enroll/ottca",
        "/enroll/ca",
        "/edge/client/v1/enroll/ca",
        "/authenticate",
        "/current-identity",
        "/current-api-session",
        "/edge/client/v1/current-api-session",
        "/edge/client/v1/",
        "/version",
        "/.well-known/est/cacerts",
    ]),
    ];
    let method =
        prop_oneof![12 => Just("POST".to_string()), 1 => pick(&["GET", "PUT", "HEAD", "DELETE"])];
    let method_value = prop_oneof![
        6 => pick(&["ott", "ottca", "ca"]),
        1 => pick(&["OTT", "", "ott\0", "cert", "updb", "ott,ca", " ott"]),
        1 => ".{0,20}",
    ]
    .boxed();
    let param = prop_oneof![
        3 => (Just("method".to_string()), method_value.clone()),
        3 => (Just("token".to_string()), token_value(t)),
        1 => (pick(&["name", "METHOD", "Token", "", "token[]", "method%00"]), "[ -~]{0,20}"),
    ];
    let random = proptest::collection::vec(param, 0..4);
    // Mostly what a client sends (a method and a token), the values themselves bad.
    let usual = (method_value.clone(), token_value(t))
        .prop_map(|(m, t)| vec![("method".to_string(), m), ("token".to_string(), t)]);
    let params = prop_oneof![2 => usual, 1 => random];
    let query = (params, encoding()).prop_map(|(ps, enc)| {
        if ps.is_empty() {
            return String::new();
        }
        let q: Vec<String> = ps
            .iter()
            .map(|(k, v)| format!("{k}={}", enc.apply(v)))
            .collect();
        format!("?{}", q.join("&"))
    });
    let tok = token_value(t);
    let json_body = prop_oneof![
        2 => shaped(&["token", "clientCsr", "name"]),
        1 => (tok.clone(), bad_csr(good_csr.clone(), cert_pem.clone())).prop_map(|(t, c)| {
            json!({"token": t, "clientCsr": String::from_utf8_lossy(&c)})
        }),
        1 => (tok, any_json()).prop_map(|(t, c)| json!({"token": t, "clientCsr": c})),
        1 => any_json(),
    ]
    .prop_map(|v| v.to_string().into_bytes());
    let body = prop_oneof![
        3 => bad_csr(good_csr, cert_pem),
        3 => json_body,
        1 => broken_json(),
    ];
    let content_type = prop_oneof![
        2 => Just(None),
        4 => pick(&["text/plain", "application/x-pem-file", "application/pkcs10", "application/json", "application/json; charset=utf-8", "TEXT/PLAIN", "application/octet-stream", "", "a/b/c"]).prop_map(Some),
    ];
    let accept = prop_oneof![
        3 => Just(None),
        1 => pick(&["application/x-pem-file", "application/json", "*/*", "application/x-pem-file, application/json", "garbage;;"]).prop_map(Some),
    ];
    let session = prop_oneof![3 => Just(None), 1 => ".{0,60}".prop_map(Some)];
    (
        path,
        method,
        query,
        body,
        content_type,
        accept,
        session,
        any::<bool>(),
    )
        .prop_map(|(path, method, query, body, ct, accept, session, admin)| {
            let mut h = Vec::new();
            if let Some(ct) = ct {
                h.push(("Content-Type".to_string(), ct));
            }
            if let Some(a) = accept {
                h.push(("Accept".to_string(), a));
            }
            if let Some(s) = session {
                h.push(("zt-session".to_string(), s.replace(['\r', '\n'], "")));
            }
            Req {
                bytes: request(&method, &format!("{path}{query}"), &h, &body),
                admin,
                may_write: false,
            }
        })
        .boxed()
}

/// Enrollment requests with every kind of bad query string, token and body, anonymous or
/// with the admin's certificate (which no third-party CA issued): nothing may be written.
#[test]
fn malformed_client_api_requests_get_documented_answers() {
    let gw = Gateway::start_with(timeouts, &[]);
    let fleet = Fleet::new("prop-client");
    let ca_id = fleet.register(&gw, "prop-client-ca", true, true, true);
    let (_, pending_jwt, pending) = gw.create_identity("pending", "Device", false);
    let (_, _, used) = gw.create_identity("used", "Device", false);
    let good = new_csr_pem();
    let r = gw.request(
        "POST",
        &format!("/enroll?method=ott&token={used}"),
        &[],
        &good,
    );
    assert_eq!(r.status, 200);
    let ottca = gw.mgmt(
        "POST",
        "/identities",
        Some(&json!({"name": "ottca", "type": "Device", "enrollment": {"ottca": ca_id}})),
    );
    assert_eq!(
        ottca.status,
        201,
        "{}",
        String::from_utf8_lossy(&ottca.body)
    );
    let ottca = ottca.json().unwrap()["data"]["enrollment"]["ottca"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let (late, _, _) = gw.create_identity("late", "Device", false);
    let soon =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(1))
            .to_string();
    let e = gw.mgmt(
        "POST",
        "/enrollments",
        Some(&json!({"identityId": late, "method": "ott", "expiresAt": soon})),
    );
    assert_eq!(e.status, 201, "{}", String::from_utf8_lossy(&e.body));
    let expired = e.json().unwrap()["data"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    std::thread::sleep(Duration::from_millis(2100));
    let tokens = Tokens {
        resigned_jwt: resign(&pending_jwt),
        pending,
        pending_jwt,
        expired,
        used,
        ottca,
    };
    let cert_pem = std::fs::read(gw.ca_file()).unwrap();
    run(
        &gw,
        "client API",
        client_api(&tokens, new_csr_pem(), cert_pem),
    );
    // The pending token survived every bad attempt and still works.
    let r = gw.request(
        "POST",
        &format!("/enroll?method=ott&token={}", tokens.pending),
        &[],
        &new_csr_pem(),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    still_enrolls(&gw, "after-client-api");
}

// ---------------------------------------------------------------------------------------
// 3. The management API.

#[derive(Clone, Debug)]
struct Ids {
    identity: String,
    enrollment: String,
    verified_ca: String,
    unverified_ca: String,
}

fn management(ids: &Ids, ca_pem: String) -> BoxedStrategy<Req> {
    let id = prop_oneof![
        3 => pick(&[
            ids.identity.as_str(),
            ids.enrollment.as_str(),
            ids.verified_ca.as_str(),
            ids.unverified_ca.as_str(),
        ]),
        2 => "[A-Za-z0-9_-]{0,30}",
        1 => pick(&["", "..", "%2F", "%00", "a%zz", "\u{00e9}", "a b", "x/../y"]),
        1 => (1usize..5_000).prop_map(|n| "i".repeat(n)),
    ];
    let resource = (
        id,
        prop_oneof![
            3 => pick(&["/identities", "/cas", "/enrollments"]),
            2 => pick(&["/identities/{}", "/cas/{}", "/cas/{}/verify", "/enrollments/{}/refresh"]),
            1 => pick(&[
            "/identities",
            "/identities/{}",
            "/enrollments",
            "/enrollments/{}",
            "/enrollments/{}/jwt",
            "/enrollments/{}/refresh",
            "/cas",
            "/cas/{}",
            "/cas/{}/verify",
            "/cas/{}/jwt",
            "/version",
            "/{}",
            "/identities/{}/{}",
        ]),
        ],
    )
        .prop_map(|(id, p)| p.replace("{}", &id));
    let method = prop_oneof![
        3 => Just("POST".to_string()),
        3 => Just("GET".to_string()),
        1 => pick(&["PATCH", "PUT", "DELETE", "HEAD", "OPTIONS"]),
    ];
    let number = prop_oneof![
        2 => pick(&["0", "-1", "1", "1000", "1001", "abc", "1e3", "18446744073709551616", "", " 5", "0x10"]),
        1 => any::<u64>().prop_map(|n| n.to_string()),
    ];
    let filter = prop_oneof![
        2 => pick(&["name = \"x\"", "name contains \"a\"", "name startswith \"p\"", "name = \"", "name contains", "name", "= \"x\"", "name != \"x\"", "name = \"\\\"\"", "NAME = \"x\"", "name = 'x'", "name = \"x\" and name = \"y\""]),
        1 => ".{0,40}",
    ];
    let param = prop_oneof![
        (Just("limit".to_string()), number.clone()),
        (Just("offset".to_string()), number),
        (Just("filter".to_string()), filter),
        (Just("name".to_string()), ".{0,20}".boxed()),
    ];
    let query = (proptest::collection::vec(param, 0..4), encoding()).prop_map(|(ps, enc)| {
        if ps.is_empty() {
            return String::new();
        }
        let q: Vec<String> = ps
            .iter()
            .map(|(k, v)| format!("{k}={}", enc.apply(v)))
            .collect();
        format!("?{}", q.join("&"))
    });
    let pem_ish = prop_oneof![
        Just(ca_pem.clone()),
        Just(format!("{ca_pem}{ca_pem}")),
        Just(ca_pem.replace("CERTIFICATE", "CERTIFICATE REQUEST")),
        (0..ca_pem.len()).prop_map({
            let p = ca_pem.clone();
            move |k| p[..k].to_string()
        }),
        Just("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".to_string()),
        ".{0,80}",
        (60_000usize..70_000).prop_map(|n| "A".repeat(n)),
    ];
    let identity_body = shaped(&["name", "type", "isAdmin", "roleAttributes", "enrollment"]);
    let ca_body = (
        shaped(&[
            "name",
            "isAutoCaEnrollmentEnabled",
            "isOttCaEnrollmentEnabled",
            "isAuthEnabled",
            "identityRoles",
            "identityNameFormat",
        ]),
        pem_ish.clone(),
        any::<bool>(),
    )
        .prop_map(|(mut v, pem, with_pem)| {
            if with_pem {
                v["certPem"] = Value::String(pem);
            }
            v
        });
    let enrollment_body = shaped(&["identityId", "method", "expiresAt", "caId"]);
    let weird_fields = (
        pick(&[
            "name",
            "type",
            "identityNameFormat",
            "identityRoles",
            "roleAttributes",
            "expiresAt",
            "identityId",
            "method",
        ]),
        prop_oneof![
            pick(&[
                "",
                " x",
                "x ",
                "\u{0007}",
                "[caName]-[commonName]",
                "[unknown]",
                "[[",
                "]",
                "[caName",
                "User",
                "Device",
                "Service",
                "device",
                "ott",
                "ottca",
                "2000-01-01T00:00:00Z",
                "9999-12-31T23:59:59Z",
                "99999-01-01T00:00:00Z",
                "yesterday"
            ]),
            (256usize..400).prop_map(|n| "n".repeat(n)),
        ],
    )
        .prop_map(|(k, v)| json!({ k: v, "name": "weird", "type": "Device" }));
    let body = prop_oneof![
        2 => identity_body.prop_map(|v| v.to_string().into_bytes()),
        2 => ca_body.prop_map(|v| v.to_string().into_bytes()),
        2 => enrollment_body.prop_map(|v| v.to_string().into_bytes()),
        2 => weird_fields.prop_map(|v| v.to_string().into_bytes()),
        1 => any_json().prop_map(|v| v.to_string().into_bytes()),
        1 => broken_json(),
        1 => pem_ish.prop_map(String::into_bytes),
        1 => Just(Vec::new()),
    ];
    let content_type = prop_oneof![
        3 => Just(Some("application/json".to_string())),
        1 => Just(None),
        1 => pick(&["text/plain", "application/x-pem-file", "application/xml", "APPLICATION/JSON", ""]).prop_map(Some),
    ];
    let who = prop_oneof![8 => Just(true), 1 => Just(false)];
    (resource, method, query, body, content_type, who)
        .prop_map(|(resource, method, query, body, ct, admin)| {
            let h: Vec<(String, String)> = ct
                .map(|c| ("Content-Type".to_string(), c))
                .into_iter()
                .collect();
            Req {
                bytes: request(
                    &method,
                    &format!("/edge/management/v1{resource}{query}"),
                    &h,
                    &body,
                ),
                admin,
                may_write: admin,
            }
        })
        .boxed()
}

/// Management calls with bad ids, paging and filter parameters and JSON bodies of wrong
/// shapes, types, nesting and size, mostly as the admin (otherwise `UNAUTHORIZED`): an
/// error answer never changes the store.
#[test]
fn malformed_management_requests_get_documented_answers() {
    let gw = Gateway::start_with(timeouts, &[]);
    let verified = Fleet::new("prop-verified");
    let verified_ca = verified.register(&gw, "prop-verified", true, true, true);
    let unverified = Fleet::new("prop-unverified");
    let r = gw.mgmt(
        "POST",
        "/cas",
        Some(&json!({"name": "prop-unverified", "certPem": unverified.root_pem})),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let unverified_ca = r.json().unwrap()["data"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (identity, _, _) = gw.create_identity("victim", "Device", false);
    let ens = gw.mgmt("GET", "/enrollments", None).json().unwrap();
    let enrollment = ens["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["identityId"] == identity.as_str())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ids = Ids {
        identity,
        enrollment,
        verified_ca,
        unverified_ca,
    };
    let another_ca = Fleet::new("prop-another").root_pem;
    run(&gw, "management API", management(&ids, another_ca));
    // The admin can still manage, and the daemon still enrolls.
    assert_eq!(gw.mgmt("GET", "/identities", None).status, 200);
    still_enrolls(&gw, "after-management");
}
