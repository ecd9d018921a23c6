//! One-time-token enrollment end to end.

use std::io::Write as _;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::support::*;

/// The CLI flow of the README: create, enroll, verify, authenticate.
#[test]
fn cli_create_enroll_then_the_certificate_authenticates_only_admins() {
    let gw = Gateway::start();
    let dir = gw.dir.path();

    // An ordinary user, enrolled with the JWT from a file.
    let out = gw.cli(&["identity", "create", "user", "NewUser", "-o", "NewUser.jwt"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jwt_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.join("NewUser.jwt"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(jwt_mode & 0o777, 0o600, "the JWT is a bearer secret");
    let out = gw.cli(&["enroll", "--jwt", "NewUser.jwt", "--out", "NewUser.json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let id_file = dir.join("NewUser.json");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&id_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let v: Value = serde_json::from_slice(&std::fs::read(&id_file).unwrap()).unwrap();
    assert_eq!(v["ztAPI"], format!("{}/edge/client/v1", gw.url()));
    for field in ["key", "cert", "ca"] {
        assert!(
            v["id"][field]
                .as_str()
                .unwrap()
                .starts_with("pem:-----BEGIN"),
            "{field}"
        );
    }

    // openssl verifies the issued certificate against the CA bundle in the file.
    let cert = dir.join("NewUser.crt");
    let ca = dir.join("NewUser.ca");
    std::fs::write(
        &cert,
        v["id"]["cert"].as_str().unwrap().trim_start_matches("pem:"),
    )
    .unwrap();
    std::fs::write(
        &ca,
        v["id"]["ca"].as_str().unwrap().trim_start_matches("pem:"),
    )
    .unwrap();
    let verified = run_ok(
        Command::new("openssl")
            .args(["verify", "-purpose", "sslclient", "-CAfile"])
            .arg(&ca)
            .arg(&cert),
    );
    assert!(verified.contains(": OK"), "{verified}");

    // The store binds it; the identity is not an admin, so management refuses it.
    let listed = gw
        .mgmt("GET", "/identities?filter=name%20%3D%20%22NewUser%22", None)
        .json()
        .unwrap();
    assert_eq!(listed["data"][0]["hasEnrolled"], true);
    let resp = gw.request_as(&id_file, "GET", "/edge/management/v1/identities", None);
    assert_eq!(resp.status, 401);
    assert_eq!(code(&resp), "UNAUTHORIZED");

    // An admin identity, enrolled with the JWT on standard input, may manage.
    let out = gw.cli(&["identity", "create", "service", "Ops", "--admin"]);
    assert!(out.status.success());
    let jwt = String::from_utf8(out.stdout).unwrap();
    let mut child = Command::new(BIN)
        .args(["enroll", "--jwt", "-", "--out"])
        .arg(dir.join("Ops.json"))
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        // As a Windows editor saves it: a byte-order mark and CRLF.
        .write_all(format!("\u{feff}{}\r\n", jwt.trim()).as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let resp = gw.request_as(
        &dir.join("Ops.json"),
        "GET",
        "/edge/management/v1/identities",
        None,
    );
    assert_eq!(resp.status, 200);

    // Enrolling again with a used token: one clear line with the server's code, exit 3 (refused).
    let out = gw.cli(&["enroll", "--jwt", "NewUser.jwt", "--out", "again.json"]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("INVALID_ENROLLMENT_TOKEN"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!dir.join("again.json").exists());
}

#[test]
fn the_cli_refuses_to_overwrite_and_checks_the_jwt_signature() {
    let gw = Gateway::start();
    let dir = gw.dir.path();
    let (_, jwt, _) = gw.create_identity("dev-sig", "Device", false);

    // A JWT whose signature was altered is refused before anything is sent.
    let mut parts: Vec<String> = jwt.split('.').map(String::from).collect();
    let sig = parts[2].clone();
    let flipped = if sig.starts_with('A') {
        sig.replacen('A', "B", 1)
    } else {
        format!("A{}", &sig[1..])
    };
    parts[2] = flipped;
    std::fs::write(dir.join("bad.jwt"), parts.join(".")).unwrap();
    let out = gw.cli(&["enroll", "--jwt", "bad.jwt", "--out", "x.json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("signature"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The token is still good: nothing reached the gateway.
    std::fs::write(dir.join("good.jwt"), &jwt).unwrap();
    std::fs::write(dir.join("taken.json"), "{}").unwrap();
    let out = gw.cli(&["enroll", "--jwt", "good.jwt", "--out", "taken.json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to overwrite"));
    // A file that cannot be made fails before the token is spent.
    let out = gw.cli(&[
        "enroll",
        "--jwt",
        "good.jwt",
        "--out",
        "no-such-dir/ok.json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-such-dir/ok.json"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = gw.cli(&["enroll", "--jwt", "good.jwt", "--out", "ok.json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// CSRs that enrollgate did not write, sent by curl, in every accepted key type.
#[test]
fn openssl_csrs_over_curl_in_each_key_type() {
    let gw = Gateway::start();
    let dir = gw.dir.path();
    let cases: [(&str, &[&str]); 5] = [
        (
            "ec256",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        ),
        (
            "ec384",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
        ),
        (
            "rsa2048",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        ),
        (
            "rsa4096",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:4096"],
        ),
        ("ed25519", &["-algorithm", "ED25519"]),
    ];
    for (name, spec) in cases {
        let (id, _, token) = gw.create_identity(name, "Device", false);
        let (key, csr) = openssl_csr(dir, name, spec);
        let out = run_ok(
            Command::new("curl")
                .args(["-sS", "--fail-with-body", "--cacert"])
                .arg(gw.ca_file())
                .args([
                    "-H",
                    "Content-Type: application/x-pem-file",
                    "--data-binary",
                ])
                .arg(format!("@{}", csr.display()))
                .arg(format!(
                    "{}/edge/client/v1/enroll?method=ott&token={token}",
                    gw.url()
                )),
        );
        let v: Value = serde_json::from_str(&out).unwrap();
        let cert = dir.join(format!("{name}.crt"));
        std::fs::write(&cert, v["data"]["cert"].as_str().unwrap()).unwrap();
        let verified = run_ok(
            Command::new("openssl")
                .args(["verify", "-CAfile"])
                .arg(gw.ca_file())
                .arg(&cert),
        );
        assert!(verified.contains(": OK"), "{name}: {verified}");

        // Built from the identity and policy, not from the CSR.
        let text = run_ok(
            Command::new("openssl")
                .args(["x509", "-noout", "-text", "-in"])
                .arg(&cert),
        );
        assert!(
            text.contains(&format!("Subject: CN = {id}")),
            "{name}: {text}"
        );
        assert!(
            text.contains(&format!("URI:spiffe://enrollgate/identity/{id}")),
            "{name}"
        );
        assert!(
            !text.contains("evil"),
            "{name}: CSR content leaked into the certificate"
        );
        assert!(text.contains("CA:FALSE"), "{name}");
        assert!(text.contains("TLS Web Client Authentication"), "{name}");
        // The public key is the CSR's.
        let want = run_ok(
            Command::new("openssl")
                .args(["pkey", "-pubout", "-in"])
                .arg(&key),
        );
        let got = run_ok(
            Command::new("openssl")
                .args(["x509", "-noout", "-pubkey", "-in"])
                .arg(&cert),
        );
        assert_eq!(want, got, "{name}");
    }
}

#[test]
fn json_variant_pem_accept_and_client_prefix_are_equivalent() {
    let gw = Gateway::start();
    let dir = gw.dir.path();

    // POST /enroll/ott with JSON.
    let (_, _, token) = gw.create_identity("json-dev", "Device", false);
    let (_, csr) = openssl_csr(
        dir,
        "json",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let body =
        serde_json::json!({ "token": token, "clientCsr": std::fs::read_to_string(&csr).unwrap() });
    let resp = gw.request(
        "POST",
        "/enroll/ott",
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    );
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    let v = resp.json().unwrap();
    assert!(v["data"]["cert"]
        .as_str()
        .unwrap()
        .starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(
        v["data"]["ca"].as_str().unwrap().trim(),
        std::fs::read_to_string(gw.ca_file()).unwrap().trim()
    );
    assert!(v["meta"].is_object());

    // Accept: application/x-pem-file gets the raw PEM, at the root path.
    let (_, _, token) = gw.create_identity("pem-dev", "Device", false);
    let (_, csr) = openssl_csr(
        dir,
        "pem",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let resp = gw.request(
        "POST",
        &format!("/enroll?method=ott&token={token}"),
        &[
            ("Content-Type", "application/pkcs10"),
            ("Accept", "application/x-pem-file"),
        ],
        &std::fs::read(&csr).unwrap(),
    );
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/x-pem-file"));
    assert!(String::from_utf8(resp.body)
        .unwrap()
        .starts_with("-----BEGIN CERTIFICATE-----"));
}

/// 200 concurrent redemptions of one token: exactly one wins, the rest are told the token
/// is used, and nothing else happens.
#[test]
fn two_hundred_racing_redemptions_of_one_token() {
    let gw = Gateway::start();
    let (id, _, token) = gw.create_identity("raced", "Device", false);
    let ca = gw.ca_certs();
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let responses = crate::support::race_redemptions(&[gw.port], &ca, &token, &csr, 200);
    let ok: Vec<_> = responses.iter().filter(|r| r.status == 200).collect();
    assert_eq!(ok.len(), 1, "exactly one redemption wins");
    for r in responses.iter().filter(|r| r.status != 200) {
        assert_eq!(r.status, 400);
        assert_eq!(code(r), "INVALID_ENROLLMENT_TOKEN");
    }
    // The winner's certificate is the one bound.
    let winner = ok[0].json().unwrap();
    let shown = gw
        .mgmt("GET", &format!("/identities/{id}"), None)
        .json()
        .unwrap();
    assert_eq!(
        shown["data"]["authenticators"]["cert"]["certPem"]
            .as_str()
            .unwrap(),
        winner["data"]["cert"].as_str().unwrap()
    );
    assert_eq!(
        gw.snapshot().1,
        Value::Array(vec![]),
        "no enrollment is left pending"
    );
}

/// Every `--key-type` writes an identity file whose key and certificate clients we did
/// not write can use: openssl reads the key (Ed25519 as PKCS#8 version 1, which OpenSSL
/// 3.0 needs), and curl authenticates with the pair.
#[test]
fn every_key_type_writes_a_key_openssl_and_curl_use() {
    let gw = Gateway::start();
    let dir = gw.dir.path();
    for kind in ["ec", "p384", "rsa", "ed25519"] {
        let name = format!("kt-{kind}");
        let (_, jwt, _) = gw.create_identity(&name, "Service", true);
        std::fs::write(dir.join(format!("{name}.jwt")), &jwt).unwrap();
        let out = gw.cli(&[
            "enroll",
            "--jwt",
            &format!("{name}.jwt"),
            "--out",
            &format!("{name}.json"),
            "--key-type",
            kind,
        ]);
        assert!(
            out.status.success(),
            "{kind}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value =
            serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.json"))).unwrap())
                .unwrap();
        let (key, cert) = (
            dir.join(format!("{name}.key")),
            dir.join(format!("{name}.crt")),
        );
        for (path, field) in [(&key, "key"), (&cert, "cert")] {
            std::fs::write(
                path,
                v["id"][field].as_str().unwrap().trim_start_matches("pem:"),
            )
            .unwrap();
        }
        let text = run_ok(
            Command::new("openssl")
                .args(["pkey", "-noout", "-text", "-in"])
                .arg(&key),
        );
        assert!(!text.is_empty(), "{kind}");
        // An admin's certificate: the management API answers curl with it.
        let out = run_ok(
            Command::new("curl")
                .args(["-sS", "--fail-with-body", "--cacert"])
                .arg(gw.ca_file())
                .arg("--cert")
                .arg(&cert)
                .arg("--key")
                .arg(&key)
                .arg(format!(
                    "{}/edge/management/v1/identities?limit=1",
                    gw.url()
                )),
        );
        assert!(out.contains("\"data\""), "{kind}: {out}");
    }
}
