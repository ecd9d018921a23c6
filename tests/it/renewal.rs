//! Renewal as OpenZiti clients do it: `GET /current-identity/authenticators`, `extend`,
//! `extend-verify`, the admin's `request-extend`, `enrollgate renew [--daemon]`, with our
//! CLI and with curl and openssl; the races (two extends, another identity's certificate,
//! a replayed verify) and the expired-certificate policy.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use enrollgate::client::{self, HttpResponse};
use enrollgate::identity_file::IdentityFile;
use serde_json::{json, Value};

use crate::fleet::{Fleet, Spec};
use crate::support::*;

pub(crate) const AUTH: &str = "/edge/client/v1/current-identity/authenticators";

/// Creates `name` and enrolls it with our CLI; returns its id and identity file.
pub(crate) fn enrolled(gw: &Gateway, name: &str) -> (String, PathBuf) {
    let (id, jwt, _) = gw.create_identity(name, "Device", false);
    let dir = gw.dir.path();
    std::fs::write(dir.join(format!("{name}.jwt")), jwt).unwrap();
    let out_name = format!("{name}.json");
    let out = gw.cli(&[
        "enroll",
        "--jwt",
        &format!("{name}.jwt"),
        "--out",
        &out_name,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (id, dir.join(out_name))
}

/// One request on a fresh connection presenting `file`'s certificate.
pub(crate) fn call(
    gw: &Gateway,
    file: &Path,
    method: &str,
    path: &str,
    session: Option<&str>,
    body: Option<&Value>,
) -> HttpResponse {
    let f = IdentityFile::read(file).unwrap();
    let cfg = client::config(
        &gw.ca_certs(),
        Some((f.cert_chain().unwrap(), f.private_key().unwrap())),
    )
    .unwrap();
    let mut headers = vec![];
    if let Some(s) = session {
        headers.push(("zt-session", s));
    }
    if body.is_some() {
        headers.push(("Content-Type", "application/json"));
    }
    let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    let resp = client::request(cfg, "127.0.0.1", gw.port, method, path, &headers, &bytes).unwrap();
    assert!(resp.status < 500, "{method} {path}: {}", code(&resp));
    resp
}

/// An API session opened with `file`'s certificate.
pub(crate) fn session(gw: &Gateway, file: &Path) -> (String, Value) {
    let r = call(
        gw,
        file,
        "POST",
        "/edge/client/v1/authenticate?method=cert",
        None,
        None,
    );
    assert_eq!(r.status, 200, "{}", code(&r));
    let token = r.header("zt-session").unwrap().to_string();
    (token, r.json().unwrap()["data"].clone())
}

fn authenticates(gw: &Gateway, file: &Path) -> Result<(), String> {
    let r = call(
        gw,
        file,
        "POST",
        "/edge/client/v1/authenticate?method=cert",
        None,
        None,
    );
    if r.status == 200 {
        Ok(())
    } else {
        Err(format!("{} {}", r.status, code(&r)))
    }
}

fn cert_pem(file: &Path) -> String {
    let f = IdentityFile::read(file).unwrap();
    f.id.cert.trim_start_matches("pem:").to_string()
}

pub(crate) fn fingerprint(file: &Path) -> String {
    let f = IdentityFile::read(file).unwrap();
    enrollgate::pki::fingerprint::sha256_hex(&f.cert_chain().unwrap()[0])
}

/// A copy of `file` with `cert` (PEM) in place of its certificate and, if given, `key`.
fn with_cert(file: &Path, out: &Path, cert: &str, key: Option<&str>) -> PathBuf {
    let mut f = IdentityFile::read(file).unwrap();
    f.id.cert = format!("pem:{cert}");
    if let Some(k) = key {
        f.id.key = format!("pem:{k}");
    }
    std::fs::write(out, serde_json::to_vec(&f).unwrap()).unwrap();
    out.to_path_buf()
}

pub(crate) fn csr_for(key: &rcgen::KeyPair) -> String {
    rcgen::CertificateParams::default()
        .serialize_request(key)
        .unwrap()
        .pem()
        .unwrap()
}

pub(crate) fn key_of(file: &Path) -> rcgen::KeyPair {
    let f = IdentityFile::read(file).unwrap();
    rcgen::KeyPair::from_pem(f.id.key.trim_start_matches("pem:")).unwrap()
}

/// `extend` of `file`'s certificate with a CSR of `key`: the response.
pub(crate) fn extend(gw: &Gateway, file: &Path, token: &str, key: &rcgen::KeyPair) -> HttpResponse {
    let id = fingerprint(file);
    call(
        gw,
        file,
        "POST",
        &format!("{AUTH}/{id}/extend"),
        Some(token),
        Some(&json!({ "clientCertCsr": csr_for(key) })),
    )
}

pub(crate) fn verify(gw: &Gateway, file: &Path, token: &str, id: &str, cert: &str) -> HttpResponse {
    call(
        gw,
        file,
        "POST",
        &format!("{AUTH}/{id}/extend-verify"),
        Some(token),
        Some(&json!({ "clientCert": cert })),
    )
}

fn fsck_clean(gw: &mut Gateway) {
    gw.stop();
    let cfg = gw.data.join("enrollgate.toml");
    let out = run_ok(Command::new(BIN).arg("fsck").arg("--config").arg(&cfg));
    assert!(out.contains("no violations"), "{out}");
}

/// The flow of an OpenZiti SDK: list, extend, verify; the old certificate works until the
/// verify and not after, the new one only after; the CLI does the same with a request.
#[test]
fn list_extend_verify_and_the_cli_renews_on_request() {
    let mut gw = Gateway::start();
    let dir = gw.dir.path().to_path_buf();
    let (id, file) = enrolled(&gw, "dev1");
    let old_fp = fingerprint(&file);
    let (token, detail) = session(&gw, &file);
    assert_eq!(detail["isCertExtendRequested"], false);
    assert_eq!(detail["isCertExtendable"], true);

    let r = call(&gw, &file, "GET", AUTH, Some(&token), None);
    assert_eq!(r.status, 200, "{}", code(&r));
    let list = r.json().unwrap()["data"].clone();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], old_fp.as_str());
    assert_eq!(list[0]["method"], "cert");
    assert_eq!(list[0]["isIssuedByNetwork"], true);
    assert_eq!(list[0]["identityId"], id.as_str());
    // Bare path too, and a session is required.
    let r = call(
        &gw,
        &file,
        "GET",
        "/current-identity/authenticators",
        Some(&token),
        None,
    );
    assert_eq!(r.status, 200);
    let r = call(&gw, &file, "GET", AUTH, None, None);
    assert_eq!((r.status, code(&r).as_str()), (401, "UNAUTHORIZED"));

    // extend: a new certificate (same key), not active yet.
    let r = extend(&gw, &file, &token, &key_of(&file));
    assert_eq!(r.status, 200, "{}", code(&r));
    let data = r.json().unwrap()["data"].clone();
    let new_cert = data["clientCert"].as_str().unwrap().to_string();
    assert!(data["ca"].as_str().unwrap().contains("BEGIN CERTIFICATE"));
    let new_file = with_cert(&file, &dir.join("dev1-new.json"), &new_cert, None);
    let new_fp = fingerprint(&new_file);
    assert_ne!(new_fp, old_fp);
    let refused = authenticates(&gw, &new_file).unwrap_err();
    assert_eq!(refused, "401 INVALID_AUTH", "not active before its verify");
    authenticates(&gw, &file).expect("the old certificate works until the verify");
    let shown = gw
        .mgmt("GET", &format!("/identities/{id}"), None)
        .json()
        .unwrap();
    assert_eq!(
        shown["data"]["renewal"]["pending"]["fingerprintSha256"],
        new_fp.as_str()
    );

    let r = verify(&gw, &file, &token, &old_fp, &new_cert);
    assert_eq!(r.status, 200, "{}", code(&r));
    assert_eq!(authenticates(&gw, &file).unwrap_err(), "401 INVALID_AUTH");
    authenticates(&gw, &new_file).expect("the new certificate authenticates after its verify");
    let shown = gw
        .mgmt("GET", &format!("/identities/{id}"), None)
        .json()
        .unwrap();
    assert_eq!(
        shown["data"]["authenticators"]["cert"]["fingerprintSha256"],
        new_fp.as_str()
    );
    assert_eq!(shown["data"]["renewal"]["pending"], Value::Null);

    // The admin asks; the session says so; the CLI renews; the flags clear.
    std::fs::rename(&new_file, &file).unwrap();
    let out = gw.cli(&["identity", "request-extend", "dev1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, detail) = session(&gw, &file);
    assert_eq!(detail["isCertExtendRequested"], true);
    assert_eq!(detail["isCertKeyRollRequested"], false);
    let shown = gw.cli(&["identity", "show", "dev1"]);
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["renewal"]["isCertExtendRequested"], true);
    let before = std::fs::read(&file).unwrap();
    let out = gw.cli(&["renew", "--identity", "dev1.json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    assert!(!dir.join(".dev1.json.renewing").exists());
    let stale = dir.join("stale.json");
    std::fs::write(&stale, &before).unwrap();
    assert_eq!(authenticates(&gw, &stale).unwrap_err(), "401 INVALID_AUTH");
    let (_, detail) = session(&gw, &file);
    assert_eq!(
        detail["isCertExtendRequested"], false,
        "a verified renewal clears the request"
    );
    assert_eq!(
        key_of(&file).serialize_pem(),
        key_of(&stale).serialize_pem(),
        "no key roll asked: the key is kept"
    );
    fsck_clean(&mut gw);
}

/// curl and openssl do it by hand: the new certificate keeps the subject and SAN, verifies
/// against the CA, and takes the CSR's new key.
#[test]
fn curl_and_openssl_extend_and_verify() {
    let gw = Gateway::start();
    let dir = gw.dir.path().to_path_buf();
    let (_, _, token) = gw.create_identity("curly", "Device", false);
    let old_cert = ott_cert(&gw, "curly", &token);
    let old_key = dir.join("curly.key");
    let curl = |cert: &Path, key: &Path, args: &[&str]| -> (u16, Vec<u8>, String) {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "20", "--cacert"])
            .arg(gw.ca_file())
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .args(["-D", "-", "-o"])
            .arg(dir.join("body"))
            .args(["-w", "\n%{http_code}"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let status = text.lines().last().unwrap().trim().parse().unwrap();
        (status, std::fs::read(dir.join("body")).unwrap(), text)
    };
    let url = |p: &str| format!("{}/edge/client/v1{p}", gw.url());
    let (status, _, head) = curl(
        &old_cert,
        &old_key,
        &["-X", "POST", &url("/authenticate?method=cert")],
    );
    assert_eq!(status, 200);
    let zt = head
        .lines()
        .find_map(|l| l.strip_prefix("zt-session: "))
        .unwrap()
        .trim()
        .to_string();
    let fp = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(&old_cert),
    );
    let id = fp
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_lowercase();

    let (new_key, csr) = openssl_csr(
        &dir,
        "curly-next",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let body = json!({ "clientCertCsr": std::fs::read_to_string(&csr).unwrap() });
    std::fs::write(dir.join("extend.json"), body.to_string()).unwrap();
    let hdr = format!("zt-session: {zt}");
    let (status, resp, _) = curl(
        &old_cert,
        &old_key,
        &[
            "-H",
            &hdr,
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &format!("@{}", dir.join("extend.json").display()),
            &url(&format!("/current-identity/authenticators/{id}/extend")),
        ],
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp));
    let v: Value = serde_json::from_slice(&resp).unwrap();
    let new_cert = dir.join("curly-next.crt");
    std::fs::write(&new_cert, v["data"]["clientCert"].as_str().unwrap()).unwrap();
    run_ok(
        Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(gw.ca_file())
            .arg(&new_cert),
    );
    let show = |c: &Path| {
        run_ok(
            Command::new("openssl")
                .args([
                    "x509",
                    "-noout",
                    "-subject",
                    "-ext",
                    "subjectAltName",
                    "-in",
                ])
                .arg(c),
        )
    };
    assert_eq!(
        show(&old_cert),
        show(&new_cert),
        "subject and SAN unchanged"
    );

    // Not active until verified: curl with the new pair is refused, the old pair works.
    let auth = url("/authenticate?method=cert");
    let (status, resp, _) = curl(&new_cert, &new_key, &["-X", "POST", &auth]);
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&resp));
    let (status, _, _) = curl(&old_cert, &old_key, &["-X", "POST", &auth]);
    assert_eq!(status, 200);

    let body = json!({ "clientCert": std::fs::read_to_string(&new_cert).unwrap() });
    std::fs::write(dir.join("verify.json"), body.to_string()).unwrap();
    let (status, resp, _) = curl(
        &old_cert,
        &old_key,
        &[
            "-H",
            &hdr,
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &format!("@{}", dir.join("verify.json").display()),
            &url(&format!(
                "/current-identity/authenticators/{id}/extend-verify"
            )),
        ],
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp));
    let (status, _, _) = curl(&new_cert, &new_key, &["-X", "POST", &auth]);
    assert_eq!(status, 200);
    let (status, _, _) = curl(&old_cert, &old_key, &["-X", "POST", &auth]);
    assert_eq!(status, 401);
}

/// A third-party CA's certificate is renewed by that CA: extend and request-extend refuse.
#[test]
fn a_third_party_certificate_is_not_renewable() {
    let gw = Gateway::start();
    let fleet = Fleet::new("renewfleet");
    fleet.register(&gw, "renewfleet", true, false, true);
    let device = fleet.device(&Spec::new("sensor-1"));
    let r = device.request(&gw, "POST", "/edge/client/v1/enroll?method=ca", &[], b"");
    assert_eq!(r.status, 200, "{}", code(&r));
    let identity_id = r.json().unwrap()["data"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = device.request(
        &gw,
        "POST",
        "/edge/client/v1/authenticate?method=cert",
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{}", code(&r));
    assert_eq!(r.json().unwrap()["data"]["isCertExtendable"], false);
    let token = r.header("zt-session").unwrap().to_string();
    let fp = enrollgate::pki::fingerprint::sha256_hex(&device.chain()[0]);
    let key = rcgen::KeyPair::generate().unwrap();
    let body = json!({ "clientCertCsr": csr_for(&key) }).to_string();
    let r = device.request(
        &gw,
        "POST",
        &format!("{AUTH}/{fp}/extend"),
        &[("zt-session", &token), ("Content-Type", "application/json")],
        body.as_bytes(),
    );
    assert_eq!((r.status, code(&r).as_str()), (409, "CERT_NOT_RENEWABLE"));
    let r = gw.mgmt(
        "POST",
        &format!("/authenticators/{fp}/request-extend"),
        Some(&json!({})),
    );
    assert_eq!((r.status, code(&r).as_str()), (409, "CERT_NOT_RENEWABLE"));
    let shown = gw
        .mgmt("GET", &format!("/identities/{identity_id}"), None)
        .json()
        .unwrap();
    assert_eq!(shown["data"]["renewal"]["pending"], Value::Null);
}

/// Two extends, verifies that race, another identity's certificate, a replay: one outcome
/// each, documented codes, never a 5xx, and fsck clean afterwards.
#[test]
fn renewal_races_have_one_outcome() {
    let mut gw = Gateway::start();
    let dir = gw.dir.path().to_path_buf();
    let (_, a) = enrolled(&gw, "race-a");
    let (_, b) = enrolled(&gw, "race-b");
    let a_id = fingerprint(&a);
    let (ta, _) = session(&gw, &a);
    let (tb, _) = session(&gw, &b);

    // The second extend replaces the first: verifying the first is refused.
    let first = extend(&gw, &a, &ta, &key_of(&a));
    let second = extend(&gw, &a, &ta, &key_of(&a));
    assert_eq!((first.status, second.status), (200, 200));
    let cert_of = |r: &HttpResponse| {
        r.json().unwrap()["data"]["clientCert"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (c1, c2) = (cert_of(&first), cert_of(&second));
    let r = verify(&gw, &a, &ta, &a_id, &c1);
    assert_eq!((r.status, code(&r).as_str()), (409, "INVALID_STATE"));
    let replaced = with_cert(&a, &dir.join("c1.json"), &c1, None);
    assert_eq!(
        authenticates(&gw, &replaced).unwrap_err(),
        "401 INVALID_AUTH"
    );

    // Another identity's certificate, as the body or on the connection.
    let r = verify(&gw, &a, &ta, &a_id, &cert_pem(&b));
    assert_eq!((r.status, code(&r).as_str()), (409, "INVALID_STATE"));
    let r = call(
        &gw,
        &b,
        "POST",
        &format!("{AUTH}/{a_id}/extend"),
        Some(&ta),
        Some(&json!({ "clientCertCsr": csr_for(&key_of(&b)) })),
    );
    assert_eq!((r.status, code(&r).as_str()), (401, "UNAUTHORIZED"));
    // B's session cannot verify A's renewal: A's authenticator is not B's.
    let r = verify(&gw, &b, &tb, &a_id, &c2);
    assert_eq!((r.status, code(&r).as_str()), (404, "NOT_FOUND"));
    // Garbage bodies.
    let r = verify(&gw, &a, &ta, &a_id, "not a certificate");
    assert_eq!(
        (r.status, code(&r).as_str()),
        (400, "EXPECTED_PEM_CERTIFICATE")
    );
    let r = call(
        &gw,
        &a,
        "POST",
        &format!("{AUTH}/{a_id}/extend"),
        Some(&ta),
        Some(&json!({ "clientCertCsr": "junk" })),
    );
    assert_eq!(
        (r.status, code(&r).as_str()),
        (400, "COULD_NOT_PROCESS_CSR")
    );
    let r = call(
        &gw,
        &a,
        "POST",
        &format!("{AUTH}/{}/extend", "0".repeat(64)),
        Some(&ta),
        Some(&json!({})),
    );
    assert_eq!((r.status, code(&r).as_str()), (404, "NOT_FOUND"));

    // Eight verifies of the same renewal at once: one wins, the rest are INVALID_STATE.
    let results: Vec<(u16, String)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    let r = verify(&gw, &a, &ta, &a_id, &c2);
                    (r.status, code(&r))
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let wins = results.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(wins, 1, "{results:?}");
    assert!(
        results
            .iter()
            .all(|(s, c)| *s == 200 || (*s == 409 && c == "INVALID_STATE")),
        "{results:?}"
    );
    // Replayed later: the same answer.
    let r = verify(&gw, &a, &ta, &a_id, &c2);
    assert_eq!((r.status, code(&r).as_str()), (409, "INVALID_STATE"));
    let renewed = with_cert(&a, &dir.join("c2.json"), &c2, None);
    authenticates(&gw, &renewed).unwrap();
    assert_eq!(authenticates(&gw, &a).unwrap_err(), "401 INVALID_AUTH");

    // The old certificate's session can no longer extend: the connection's certificate
    // is retired.
    let r = extend(&gw, &a, &ta, &key_of(&a));
    assert_eq!((r.status, code(&r).as_str()), (401, "UNAUTHORIZED"));
    fsck_clean(&mut gw);
}

/// A key roll refuses a CSR for the current key; the CLI makes a new key then.
#[test]
fn a_key_roll_needs_a_new_key() {
    let mut gw = Gateway::start();
    let (id, file) = enrolled(&gw, "roller");
    // OpenZiti's management path, by authenticator; then the CLI adds the key roll.
    let fp = fingerprint(&file);
    let r = gw.mgmt(
        "POST",
        &format!("/authenticators/{fp}/request-extend"),
        Some(&json!({})),
    );
    assert_eq!(r.status, 200, "{}", code(&r));
    let shown = gw
        .mgmt("GET", &format!("/identities/{id}"), None)
        .json()
        .unwrap();
    assert_eq!(shown["data"]["renewal"]["isCertExtendRequested"], true);
    assert_eq!(shown["data"]["renewal"]["isCertKeyRollRequested"], false);
    let r = gw.mgmt(
        "POST",
        &format!("/authenticators/{}/request-extend", "a".repeat(64)),
        None,
    );
    assert_eq!((r.status, code(&r).as_str()), (404, "NOT_FOUND"));
    let (waiting, _, _) = gw.create_identity("not-yet", "Device", false);
    let r = gw.mgmt(
        "POST",
        &format!("/identities/{waiting}/request-extend"),
        None,
    );
    assert_eq!((r.status, code(&r).as_str()), (409, "INVALID_STATE"));
    let out = gw.cli(&["identity", "request-extend", "roller", "--key-roll"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (token, detail) = session(&gw, &file);
    assert_eq!(detail["isCertExtendRequested"], true);
    assert_eq!(detail["isCertKeyRollRequested"], true);
    let r = call(&gw, &file, "GET", AUTH, Some(&token), None);
    assert_eq!(r.json().unwrap()["data"][0]["isKeyRollRequested"], true);
    let r = extend(&gw, &file, &token, &key_of(&file));
    assert_eq!(
        (r.status, code(&r).as_str()),
        (400, "COULD_NOT_PROCESS_CSR")
    );
    let old_key = key_of(&file).serialize_pem();
    let out = gw.cli(&["renew", "--identity", "roller.json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(key_of(&file).serialize_pem(), old_key, "a new key");
    let (_, detail) = session(&gw, &file);
    assert_eq!(detail["isCertExtendRequested"], false);
    assert_eq!(detail["isCertKeyRollRequested"], false);
    fsck_clean(&mut gw);
}

/// `renewal.expired_grace`: by default an expired certificate renews nothing; with a grace
/// it still renews itself (and only that long).
#[test]
fn an_expired_certificate_renews_only_within_the_grace() {
    let short = |grace: &'static str| {
        move |cfg: &mut String| {
            *cfg = cfg.replace("cert_lifetime = \"365d\"", "cert_lifetime = \"2s\"");
            *cfg = cfg.replace(
                "expired_grace = \"0s\"",
                &format!("expired_grace = \"{grace}\""),
            );
        }
    };
    for (grace, renews) in [("0s", false), ("1h", true)] {
        let gw = Gateway::start_with(short(grace), &[]);
        let (_, file) = enrolled(&gw, "late");
        // Past notAfter (two seconds after issue): authentication is refused either way.
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(authenticates(&gw, &file).is_ok(), renews, "grace {grace}");
        let out = gw.cli(&["renew", "--identity", "late.json"]);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.success(), renews, "grace {grace}: {err}");
        if !renews {
            assert!(err.contains("INVALID_AUTH"), "{err}");
        }
    }
}

/// `renew --daemon` renews as soon as an admin asks, logs the next renewal, and stops
/// cleanly on SIGTERM.
#[test]
fn the_renew_daemon_renews_when_asked_and_stops_on_sigterm() {
    let gw = Gateway::start();
    let (_, file) = enrolled(&gw, "daemonic");
    let before = fingerprint(&file);
    let mut child = Command::new(BIN)
        .args(["renew", "--daemon", "--check-interval", "1s", "--identity"])
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            sink.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    let wait_for = |text: &str| {
        let until = Instant::now() + Duration::from_secs(60);
        while !log.lock().unwrap().contains(text) {
            assert!(
                Instant::now() < until,
                "no '{text}':\n{}",
                log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for("next renewal of");
    let out = gw.cli(&["identity", "request-extend", "daemonic"]);
    assert!(out.status.success());
    wait_for("(an admin asked)");
    assert_ne!(fingerprint(&file), before);
    authenticates(&gw, &file).unwrap();
    signal(&child, "TERM");
    let status = wait_timeout(&mut child, Duration::from_secs(20)).expect("stops on SIGTERM");
    assert!(status.success(), "{status:?}\n{}", log.lock().unwrap());
}

/// `renew --daemon` renews by itself once two thirds of the lifetime have passed: with
/// `pki.cert_lifetime = "45s"` (valid from a minute before issue), that is 5 to 10 s after
/// issue; the admin never asks and the check interval is an hour.
#[test]
fn the_renew_daemon_renews_when_two_thirds_of_the_lifetime_have_passed() {
    let gw = Gateway::start_with(
        |cfg| *cfg = cfg.replace("cert_lifetime = \"365d\"", "cert_lifetime = \"45s\""),
        &[],
    );
    let (_, file) = enrolled(&gw, "punctual");
    let before = fingerprint(&file);
    let mut child = Command::new(BIN)
        .args(["renew", "--daemon", "--check-interval", "1h", "--identity"])
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            sink.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    let until = Instant::now() + Duration::from_secs(90);
    while !log.lock().unwrap().contains("(due)") {
        assert!(
            Instant::now() < until,
            "no renewal:\n{}",
            log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(log.lock().unwrap().contains("next renewal of"));
    assert_ne!(fingerprint(&file), before);
    signal(&child, "INT");
    let status = wait_timeout(&mut child, Duration::from_secs(20)).expect("stops on SIGINT");
    assert!(status.success(), "{status:?}\n{}", log.lock().unwrap());
}

/// A renewal interrupted before or after its verify (the renewed identity already written
/// aside, `.NAME.renewing`) is finished by the next `renew`: the only working credential
/// is never lost.
#[test]
fn an_interrupted_renewal_is_finished_by_the_next_run() {
    let mut gw = Gateway::start();
    let dir = gw.dir.path().to_path_buf();
    for verified in [false, true] {
        let name = format!("crashy-{verified}");
        let (_, file) = enrolled(&gw, &name);
        let (token, _) = session(&gw, &file);
        let r = extend(&gw, &file, &token, &key_of(&file));
        assert_eq!(r.status, 200);
        let cert = r.json().unwrap()["data"]["clientCert"]
            .as_str()
            .unwrap()
            .to_string();
        let aside = dir.join(format!(".{name}.json.renewing"));
        with_cert(&file, &aside, &cert, None);
        if verified {
            let r = verify(&gw, &file, &token, &fingerprint(&file), &cert);
            assert_eq!(r.status, 200);
            assert!(
                authenticates(&gw, &file).is_err(),
                "the file alone no longer works"
            );
        }
        let out = gw.cli(&["renew", "--identity", &format!("{name}.json")]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(err.contains("interrupt"), "{err}");
        assert!(!aside.exists());
        authenticates(&gw, &file).unwrap();
    }
    fsck_clean(&mut gw);
}

/// `n` devices enrolled by ott through the load tester's preparation and enrollment.
fn fleet_enrolled(
    gw: &Gateway,
    n: usize,
    prefix: &str,
) -> (
    enrollgate_loadtest::renew::Options,
    Vec<enrollgate_loadtest::renew::Device>,
    enrollgate_loadtest::renew::Phase,
) {
    use enrollgate_loadtest::admin::{self, Admin, PrepareOtt, TokenMethod};
    let tokens_dir = gw.dir.path().join(format!("{prefix}-tokens"));
    let admin = Admin::open(&gw.admin_file()).unwrap();
    let made = admin::prepare_ott(
        &admin,
        &PrepareOtt {
            count: n,
            out: tokens_dir.clone(),
            method: TokenMethod::Ott,
            ca: None,
            concurrency: 16,
            prefix: prefix.into(),
            progress: false,
        },
    )
    .unwrap();
    assert_eq!((made.created, made.failed), (n, 0));
    let set = enrollgate_loadtest::tokens::read(&tokens_dir).unwrap();
    let opts = enrollgate_loadtest::renew::Options {
        target: enrollgate_loadtest::plan::Target::parse(&gw.url()).unwrap(),
        roots: gw.ca_certs(),
        concurrency: 64,
    };
    let (enrolled, devices) = enrollgate_loadtest::renew::enroll(&opts, &set.tokens).unwrap();
    assert_eq!(devices.len(), n, "{:?}", enrolled.failures);
    (opts, devices, enrolled)
}

/// The renewal storm: 10,000 enrolled identities renew at once (64 in flight, as fast as
/// the gateway answers: about 20 s on this 2-core machine, well within a minute). Every
/// step's answer is a success or a 429 with Retry-After; nothing else, no 5xx; fsck is
/// clean afterwards. The devices are enrolled by ott first (a third-party certificate
/// cannot be extended), through the load tester's own preparation and enrollment.
#[test]
fn a_renewal_storm_gets_only_successes_or_429() {
    use enrollgate_loadtest::renew;
    // Alone: it keeps both cores busy for half a minute.
    let mut gw = Gateway::start_alone();
    let (opts, devices, enrolled) = fleet_enrolled(&gw, 10_000, "storm");
    let renewed = renew::renew(&opts, &devices);
    eprintln!("{}", renew::summary(&opts.target, 64, &enrolled, &renewed));
    let unexpected: Vec<_> = renewed
        .failures
        .iter()
        .filter(|(code, _)| !code.ends_with(" RATE_LIMITED"))
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:?}");
    assert!(renewed.ok > 0);
    fsck_clean(&mut gw);
}

/// The same storm against a per-source limit (set by a reload after the devices enrolled):
/// the renewals beyond it get 429 with Retry-After, the rest succeed, nothing else.
#[test]
fn a_rate_limited_renewal_storm_answers_429_with_retry_after() {
    use enrollgate_loadtest::renew;
    let mut gw = Gateway::start();
    let (opts, devices, enrolled) = fleet_enrolled(&gw, 600, "limited");
    let path = gw.data.join("enrollgate.toml");
    let mut cfg = std::fs::read_to_string(&path).unwrap();
    set_limits(&[("per_source_rate", "\"50/s\""), ("per_source_burst", "10")])(&mut cfg);
    std::fs::write(&path, cfg).unwrap();
    gw.signal("HUP");
    gw.wait_log("configuration reloaded");
    let renewed = renew::renew(&opts, &devices);
    eprintln!("{}", renew::summary(&opts.target, 64, &enrolled, &renewed));
    let limited = renewed
        .failures
        .get("extend RATE_LIMITED")
        .copied()
        .unwrap_or(0);
    assert!(limited > 0, "{:?}", renewed.failures);
    assert_eq!(
        renewed.ok + limited,
        devices.len(),
        "{:?}",
        renewed.failures
    );
    fsck_clean(&mut gw);
}
