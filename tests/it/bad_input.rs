//! Every bad input gets its documented error or a closed connection; the store is
//! unchanged and the daemon keeps serving.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

/// (path, headers, body, expected status, expected code)
type Case<'a> = (String, Vec<(&'a str, &'a str)>, Vec<u8>, u16, &'a str);

fn short_timeouts(cfg: &mut String) {
    *cfg = cfg
        .replace("handshake_timeout = \"10s\"", "handshake_timeout = \"1s\"")
        .replace("header_timeout = \"10s\"", "header_timeout = \"1s\"")
        .replace("idle_timeout = \"60s\"", "idle_timeout = \"1s\"")
        .replace("write_timeout = \"30s\"", "write_timeout = \"1s\"");
}

fn csr_pem(dir: &std::path::Path, name: &str, spec: &[&str]) -> Vec<u8> {
    let (_, csr) = openssl_csr(dir, name, spec);
    std::fs::read(csr).unwrap()
}

#[test]
fn bad_enrollment_requests_change_nothing() {
    let gw = Gateway::start_with(short_timeouts, &[]);
    let dir = gw.dir.path();
    let (_, _, token) = gw.create_identity("target", "Device", false);
    let good = csr_pem(
        dir,
        "good",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );

    // A used token: enroll another identity first.
    let (_, _, used) = gw.create_identity("used", "Device", false);
    let r = gw.request(
        "POST",
        &format!("/enroll?method=ott&token={used}"),
        &[],
        &good,
    );
    assert_eq!(r.status, 200);

    let rsa1024 = csr_pem(
        dir,
        "rsa1024",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
    );
    let p521 = csr_pem(
        dir,
        "p521",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-521"],
    );
    let cert_pem = std::fs::read(gw.ca_file()).unwrap();
    let mut tampered = good.clone();
    {
        // Flip a bit inside the base64 of the signature (near the end of the PEM body).
        let text = String::from_utf8(tampered.clone()).unwrap();
        let end = text.find("-----END").unwrap();
        let i = end - 6;
        let c = tampered[i];
        tampered[i] = if c == b'A' { b'B' } else { b'A' };
    }
    let before = gw.snapshot();
    let enroll = |q: &str| format!("/edge/client/v1/enroll?{q}");
    let t = |q: &str| enroll(&format!("method=ott&token={token}{q}"));
    let cases: Vec<Case> = vec![
        (
            enroll("method=ott&token=nope"),
            vec![],
            good.clone(),
            400,
            "INVALID_ENROLLMENT_TOKEN",
        ),
        (
            enroll("method=ott&token=%00%ff"),
            vec![],
            good.clone(),
            400,
            "INVALID_ENROLLMENT_TOKEN",
        ),
        (
            enroll("method=ott"),
            vec![],
            good.clone(),
            400,
            "INVALID_ENROLLMENT_TOKEN",
        ),
        (
            enroll(&format!("method=ott&token={used}")),
            vec![],
            good.clone(),
            400,
            "INVALID_ENROLLMENT_TOKEN",
        ),
        (
            enroll(&format!("method=bogus&token={token}")),
            vec![],
            good.clone(),
            400,
            "INVALID_ENROLL_METHOD",
        ),
        // Without a method, /enroll is an ott enrollment (the spec's `method` is optional,
        // OpenZiti's controller reads it as ott): the token is judged as an ott token.
        (
            enroll("token=nope"),
            vec![],
            good.clone(),
            400,
            "INVALID_ENROLLMENT_TOKEN",
        ),
        (
            enroll(&format!("method=&token={token}")),
            vec![],
            b"this is not PEM".to_vec(),
            400,
            "COULD_NOT_PROCESS_CSR",
        ),
        (
            enroll(&format!("method=ottca&token={token}")),
            vec![],
            vec![],
            400,
            "INVALID_ENROLL_METHOD",
        ),
        (
            t(""),
            vec![],
            b"this is not PEM".to_vec(),
            400,
            "COULD_NOT_PROCESS_CSR",
        ),
        (t(""), vec![], vec![], 400, "COULD_NOT_PROCESS_CSR"),
        (t(""), vec![], cert_pem, 400, "COULD_NOT_PROCESS_CSR"),
        (
            t(""),
            vec![],
            b"-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"
                .to_vec(),
            400,
            "COULD_NOT_PROCESS_CSR",
        ),
        (t(""), vec![], tampered, 400, "COULD_NOT_PROCESS_CSR"),
        (t(""), vec![], rsa1024, 400, "COULD_NOT_PROCESS_CSR"),
        (t(""), vec![], p521, 400, "COULD_NOT_PROCESS_CSR"),
        // A JSON body is the spec's `genericEnroll`: PEM sent as JSON does not parse...
        (
            t(""),
            vec![("Content-Type", "application/json")],
            good.clone(),
            400,
            "COULD_NOT_PARSE_BODY",
        ),
        // ... a JSON body without `clientCsr` has no CSR...
        (
            t(""),
            vec![("Content-Type", "application/json")],
            b"{\"name\":\"x\"}".to_vec(),
            400,
            "COULD_NOT_PROCESS_CSR",
        ),
        // ... and a type the spec does not list is refused.
        (
            t(""),
            vec![("Content-Type", "application/octet-stream")],
            good.clone(),
            415,
            "UNSUPPORTED_MEDIA",
        ),
        (
            t(""),
            vec![],
            vec![b'A'; 70 * 1024],
            413,
            "REQUEST_TOO_LARGE",
        ),
        (
            "/enroll/ott".into(),
            vec![("Content-Type", "application/json")],
            b"{not json".to_vec(),
            400,
            "COULD_NOT_PARSE_BODY",
        ),
        (
            "/enroll/ott".into(),
            vec![("Content-Type", "application/json")],
            format!("{{\"token\":\"{token}\"}}").into_bytes(),
            400,
            "COULD_NOT_PROCESS_CSR",
        ),
        ("/no/such/path".into(), vec![], vec![], 404, "NOT_FOUND"),
    ];
    for (path, headers, body, status, want) in cases {
        let r = gw.request("POST", &path, &headers, &body);
        assert_eq!((r.status, code(&r).as_str()), (status, want), "POST {path}");
    }
    let r = gw.request("GET", "/enroll", &[], b"");
    assert_eq!((r.status, code(&r).as_str()), (405, "METHOD_NOT_ALLOWED"));
    assert_eq!(
        r.header("allow"),
        Some("POST"),
        "RFC 9110: a 405 says what is allowed"
    );
    let r = gw.request("POST", "/version", &[], b"");
    assert_eq!((r.status, r.header("allow")), (405, Some("GET")));
    let r = gw.mgmt("PUT", "/cas", None);
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, POST")));

    // Nothing changed, and the token still works.
    assert_eq!(gw.snapshot(), before);
    let r = gw.request("POST", &t(""), &[("Content-Type", "text/plain")], &good);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(!gw.log().contains("panicked"));
}

/// Regression: a body holding a CSR followed by another PEM block (or other data) was
/// enrolled with the first block. Now it is refused, the token stays redeemable.
#[test]
fn a_csr_body_with_more_than_one_pem_block_is_refused() {
    let gw = Gateway::start();
    let dir = gw.dir.path();
    let (_, _, token) = gw.create_identity("target", "Device", false);
    let ec = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
    let good = csr_pem(dir, "good", &ec);
    let other = csr_pem(dir, "other", &ec);
    let cert_pem = std::fs::read(gw.ca_file()).unwrap();
    let two_blocks =
        "the body holds more than one PEM block: send exactly one 'CERTIFICATE REQUEST'";
    let trailing = "the body holds data after its PEM block: send exactly one 'CERTIFICATE REQUEST' and nothing else";
    let cases: Vec<(Vec<u8>, &str)> = vec![
        ([good.clone(), other].concat(), two_blocks),
        ([good.clone(), good.clone()].concat(), two_blocks),
        ([good.clone(), cert_pem].concat(), two_blocks),
        (
            [good.clone(), b"trailing garbage\n".to_vec()].concat(),
            trailing,
        ),
    ];
    let before = gw.snapshot();
    let path = format!("/edge/client/v1/enroll?method=ott&token={token}");
    for (body, message) in &cases {
        let r = gw.request("POST", &path, &[("Content-Type", "text/plain")], body);
        assert_eq!(r.status, 400);
        assert_eq!(
            r.api_error().unwrap(),
            ("COULD_NOT_PROCESS_CSR".to_string(), message.to_string())
        );
        // The JSON variant decodes the CSR the same way.
        let json = serde_json::json!({
            "token": token,
            "clientCsr": String::from_utf8(body.clone()).unwrap(),
        });
        let r = gw.request(
            "POST",
            "/edge/client/v1/enroll/ott",
            &[("Content-Type", "application/json")],
            json.to_string().as_bytes(),
        );
        assert_eq!(
            (r.status, code(&r).as_str()),
            (400, "COULD_NOT_PROCESS_CSR")
        );
    }

    // Nothing changed, and the token redeems with the one CSR (trailing whitespace is fine).
    assert_eq!(gw.snapshot(), before);
    let body = [good, b"\r\n \n".to_vec()].concat();
    let r = gw.request("POST", &path, &[("Content-Type", "text/plain")], &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(!gw.log().contains("panicked"));
}

pub(crate) fn raw_tls(gw: &Gateway) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let cfg = enrollgate::client::config(&gw.ca_certs(), None).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let conn = rustls::ClientConnection::new(cfg, "127.0.0.1".try_into().unwrap()).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

pub(crate) fn read_all(s: &mut impl std::io::Read) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[test]
fn broken_http_and_silent_clients_are_cut_off() {
    let gw = Gateway::start_with(short_timeouts, &[]);
    let before = gw.snapshot();

    // Junk instead of HTTP, over TLS: 400 MALFORMED_REQUEST, then closed.
    let mut s = raw_tls(&gw);
    s.write_all(b"\x00\x01\x02 garbage\r\n\r\n").unwrap();
    let text = String::from_utf8_lossy(&read_all(&mut s)).into_owned();
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("MALFORMED_REQUEST"), "{text}");

    // A head larger than the limit: 431.
    let mut s = raw_tls(&gw);
    let big = format!(
        "GET /version HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let _ = s.write_all(big.as_bytes());
    let text = String::from_utf8_lossy(&read_all(&mut s)).into_owned();
    assert!(
        text.starts_with("HTTP/1.1 431"),
        "{}",
        &text[..text.len().min(200)]
    );

    // Chunked bodies: 411.
    let mut s = raw_tls(&gw);
    s.write_all(b"POST /enroll?method=ott&token=x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").unwrap();
    let text = String::from_utf8_lossy(&read_all(&mut s)).into_owned();
    assert!(text.starts_with("HTTP/1.1 411"), "{text}");

    // A TCP client that never starts TLS is dropped after the handshake timeout.
    let mut tcp = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 16];
    let n = tcp.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed without a byte");
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "cut off by the 1 s handshake timeout"
    );

    // Slowloris: a head that never ends is cut off by the header timeout.
    let mut s = raw_tls(&gw);
    s.write_all(b"GET /version HTTP/1.1\r\nX-Slow: ").unwrap();
    let start = Instant::now();
    let got = read_all(&mut s);
    assert!(got.is_empty());
    assert!(start.elapsed() < Duration::from_secs(8));

    // Keep-alive and pipelining: two requests in one write, two answers.
    let mut s = raw_tls(&gw);
    s.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\nGET /edge/client/v1/version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let text = String::from_utf8_lossy(&read_all(&mut s)).into_owned();
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");

    // A client that pipelines requests and never reads its answers: once the socket
    // buffers are full, the write timeout drops it, so writing eventually fails.
    let mut s = raw_tls(&gw);
    s.sock
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let burst = b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2000);
    let start = Instant::now();
    let mut failed = false;
    while start.elapsed() < Duration::from_secs(20) {
        if s.write_all(&burst).and_then(|_| s.flush()).is_err() {
            failed = true;
            break;
        }
    }
    assert!(failed, "a client that never reads must be disconnected");

    // TLS records of garbage.
    let mut tcp = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(&[0x16, 0x03, 0x01, 0x00, 0x10]).unwrap();
    let _ = tcp.write_all(&[0xff; 16]);
    let _ = read_all(&mut tcp);

    assert_eq!(gw.snapshot(), before);
    assert_eq!(gw.request("GET", "/version", &[], b"").status, 200);
}

#[test]
fn curl_speaks_tls12_and_tls13() {
    let gw = Gateway::start();
    for (flag, want) in [("--tlsv1.2", "TLSv1.2"), ("--tlsv1.3", "TLSv1.3")] {
        let mut args = vec!["-sS", "-v", "--fail", "--cacert"];
        let ca = gw.ca_file();
        let ca = ca.to_str().unwrap();
        args.push(ca);
        args.push(flag);
        if flag == "--tlsv1.2" {
            args.extend(["--tls-max", "1.2"]);
        }
        let url = format!("{}/version", gw.url());
        args.push(&url);
        let out = Command::new("curl").args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(want),
            "{flag}"
        );
    }
}

#[test]
fn key_exchange_groups_are_configurable() {
    let gw = Gateway::start_with(
        |c| {
            *c = c.replace(
                "key_exchange = [\"x25519mlkem768\", \"x25519\", \"secp256r1\", \"secp384r1\"]",
                "key_exchange = [\"secp256r1\"]",
            )
        },
        &[],
    );
    let connect = |groups: &str| {
        Command::new("openssl")
            .args(["s_client", "-brief", "-connect"])
            .arg(format!("127.0.0.1:{}", gw.port))
            .args(["-groups", groups, "-CAfile"])
            .arg(gw.ca_file())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let refused = connect("X25519");
    assert!(
        !refused.status.success(),
        "an X25519-only client must be refused"
    );
    let accepted = connect("P-256");
    let text = String::from_utf8_lossy(&accepted.stderr).into_owned();
    assert!(
        text.contains("CONNECTION ESTABLISHED") && text.contains("prime256v1"),
        "{text}"
    );
}

#[test]
fn the_server_chooses_aes_128_gcm_whatever_the_client_prefers() {
    let gw = Gateway::start();
    let out = Command::new("openssl")
        .args(["s_client", "-brief", "-connect"])
        .arg(format!("127.0.0.1:{}", gw.port))
        .args([
            "-ciphersuites",
            "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256",
            "-CAfile",
        ])
        .arg(gw.ca_file())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(text.contains("TLS_AES_128_GCM_SHA256"), "{text}");
    // A client that offers only another suite still connects with it.
    let out = Command::new("openssl")
        .args(["s_client", "-brief", "-connect"])
        .arg(format!("127.0.0.1:{}", gw.port))
        .args(["-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256", "-CAfile"])
        .arg(gw.ca_file())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(text.contains("TLS_CHACHA20_POLY1305_SHA256"), "{text}");
}

/// Two connections from one rustls client (which keeps its session cache): with
/// `tls.session_tickets = false` (the default) the second is a full handshake again, the
/// server having issued nothing to resume; with it on, the second resumes.
#[test]
fn session_resumption_follows_the_session_tickets_setting() {
    fn second_handshake(gw: &Gateway) -> rustls::HandshakeKind {
        let mut roots = rustls::RootCertStore::empty();
        for c in gw.ca_certs() {
            roots.add(c).unwrap();
        }
        let cfg = std::sync::Arc::new(
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
        );
        let mut kinds = Vec::new();
        for _ in 0..2 {
            let tcp = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let conn = rustls::ClientConnection::new(cfg.clone(), "127.0.0.1".try_into().unwrap())
                .unwrap();
            let mut s = rustls::StreamOwned::new(conn, tcp);
            // A whole request and answer, so that any ticket sent after the handshake
            // has arrived before the connection ends.
            s.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut answer = Vec::new();
            let _ = s.read_to_end(&mut answer);
            assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
            kinds.push(s.conn.handshake_kind().unwrap());
        }
        assert_eq!(kinds[0], rustls::HandshakeKind::Full);
        kinds[1]
    }
    let off = Gateway::start();
    assert_eq!(second_handshake(&off), rustls::HandshakeKind::Full);
    let on = Gateway::start_with(
        |c| *c = c.replace("session_tickets = false", "session_tickets = true"),
        &[],
    );
    assert_eq!(second_handshake(&on), rustls::HandshakeKind::Resumed);
}
