//! Taking certificates out of service (#21): disable and enable, re-enroll, revocation on
//! delete, the CRL (checked by openssl), and lifting the block on a third-party
//! certificate. The real daemon over real TLS, our CLI, openssl and curl.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::fleet::*;
use crate::support::*;

fn cli_ok(gw: &Gateway, args: &[&str]) -> String {
    let out = gw.cli(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cli_err(gw: &Gateway, args: &[&str]) -> String {
    let out = gw.cli(args);
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Creates identity `name` with the CLI and enrolls it with `enrollgate enroll`; returns
/// its identity file.
fn enrolled(gw: &Gateway, name: &str, extra: &[&str]) -> PathBuf {
    let jwt = format!("{name}.jwt");
    let mut args = vec!["identity", "create", "device", name, "-o", &jwt];
    args.extend_from_slice(extra);
    cli_ok(gw, &args);
    enroll_with(gw, &jwt, &format!("{name}.json"))
}

fn enroll_with(gw: &Gateway, jwt: &str, out: &str) -> PathBuf {
    cli_ok(gw, &["enroll", "--jwt", jwt, "--out", out]);
    gw.dir.path().join(out)
}

fn authenticate(gw: &Gateway, file: &Path) -> enrollgate::client::HttpResponse {
    gw.request_as(
        file,
        "POST",
        "/edge/client/v1/authenticate?method=cert",
        None,
    )
}

fn shown(gw: &Gateway, name: &str) -> Value {
    serde_json::from_str(&cli_ok(gw, &["identity", "show", name])).unwrap()
}

/// Stops the gateway and runs `enrollgate fsck` on its store.
fn fsck_clean(gw: &mut Gateway) {
    gw.stop();
    let cfg = gw.data.join("enrollgate.toml");
    let out = run_ok(Command::new(BIN).arg("fsck").arg("--config").arg(&cfg));
    assert!(out.contains("no violations"), "{out}");
}

/// The leaf certificate of an identity file, written as PEM beside it.
fn cert_of(file: &Path) -> PathBuf {
    let f = enrollgate::identity_file::IdentityFile::read(file).unwrap();
    let der = f.cert_chain().unwrap()[0].to_vec();
    let out = file.with_extension("crt");
    std::fs::write(&out, pem::encode(&pem::Pem::new("CERTIFICATE", der))).unwrap();
    out
}

/// Serial of a PEM certificate as openssl prints it (upper-case hex).
fn serial(cert: &Path) -> String {
    let out = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-serial", "-in"])
            .arg(cert),
    );
    out.trim().trim_start_matches("serial=").to_string()
}

/// Fetches the CRL with curl (no client certificate) into `crl.der`; checks it with
/// openssl against the CA and returns its text and DER.
fn fetch_crl(gw: &Gateway, path: &str) -> (String, Vec<u8>) {
    let der = gw.dir.path().join("crl.der");
    let head = run_ok(
        Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "20", "-D", "-", "--cacert"])
            .arg(gw.ca_file())
            .arg("-o")
            .arg(&der)
            .arg(format!("{}{path}", gw.url())),
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/pkix-crl"),
        "{head}"
    );
    let out = Command::new("openssl")
        .args(["crl", "-inform", "DER", "-noout", "-in"])
        .arg(&der)
        .arg("-CAfile")
        .arg(gw.ca_file())
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.contains("verify OK"), "{said}");
    let text = run_ok(
        Command::new("openssl")
            .args(["crl", "-inform", "DER", "-noout", "-text", "-in"])
            .arg(&der),
    );
    (text, std::fs::read(&der).unwrap())
}

/// The CRL number openssl reads from the CRL's text.
fn crl_number(text: &str) -> u128 {
    let mut lines = text.lines();
    lines.find(|l| l.contains("X509v3 CRL Number")).unwrap();
    let n = lines.next().unwrap().trim();
    // openssl prints small numbers in decimal and large ones in hex with a 0x prefix.
    match n.strip_prefix("0x") {
        Some(h) => u128::from_str_radix(h, 16).unwrap(),
        None => n.parse().unwrap(),
    }
}

/// `openssl verify -crl_check` of `cert` against the CA and the current CRL.
fn verify_with_crl(gw: &Gateway, cert: &Path) -> (bool, String) {
    let (_, der) = fetch_crl(gw, "/crl");
    let bundle = gw.dir.path().join("ca-and-crl.pem");
    let mut text = std::fs::read_to_string(gw.ca_file()).unwrap();
    text.push_str(&pem::encode(&pem::Pem::new("X509 CRL", der)));
    std::fs::write(&bundle, text).unwrap();
    let out = Command::new("openssl")
        .args(["verify", "-crl_check", "-CAfile"])
        .arg(&bundle)
        .arg(cert)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

#[test]
fn a_disabled_identity_cannot_authenticate_and_its_sessions_end() {
    let mut gw = Gateway::start();
    let dev = enrolled(&gw, "dev1", &[]);
    let r = authenticate(&gw, &dev);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let session = r.header("zt-session").unwrap().to_string();
    let zt = [("zt-session", session.as_str())];
    assert_eq!(gw.request("GET", "/current-identity", &zt, b"").status, 200);

    cli_ok(&gw, &["identity", "disable", "dev1"]);
    let r = gw.request("GET", "/edge/client/v1/current-identity", &zt, b"");
    assert_eq!(r.status, 401, "the open session ended");
    let r = authenticate(&gw, &dev);
    assert_eq!((r.status, code(&r)), (403, "IDENTITY_DISABLED".into()));
    let v = shown(&gw, "dev1");
    assert_eq!(v["disabled"], true);
    assert!(
        v["disabledAt"].is_string() && v["disabledUntil"].is_null(),
        "{v}"
    );
    let list = cli_ok(&gw, &["identity", "list"]);
    let row = list.lines().find(|l| l.contains("dev1")).unwrap();
    assert!(row.contains("true"), "{list}");

    cli_ok(&gw, &["identity", "enable", "dev1"]);
    assert_eq!(authenticate(&gw, &dev).status, 200);
    assert_eq!(shown(&gw, "dev1")["disabled"], false);

    // A suspension with an end ends by itself.
    cli_ok(&gw, &["identity", "disable", "dev1", "--for", "2s"]);
    assert!(shown(&gw, "dev1")["disabledUntil"].is_string());
    let start = Instant::now();
    loop {
        let r = authenticate(&gw, &dev);
        match r.status {
            200 => break,
            403 => assert_eq!(code(&r), "IDENTITY_DISABLED"),
            other => panic!("HTTP {other}"),
        }
        assert!(start.elapsed() < Duration::from_secs(60), "still disabled");
        std::thread::sleep(Duration::from_millis(250));
    }

    // The only admin cannot be disabled; a second admin, disabled, cannot manage.
    let admin_id = shown(&gw, "Default Admin")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = gw.mgmt(
        "POST",
        &format!("/identities/{admin_id}/disable"),
        Some(&json!({})),
    );
    assert_eq!((r.status, code(&r)), (409, "INVALID_STATE".into()));
    let second = enrolled(&gw, "ops2", &["--admin"]);
    let r = gw.request_as(&second, "GET", "/edge/management/v1/identities", None);
    assert_eq!(r.status, 200);
    cli_ok(&gw, &["identity", "disable", "ops2"]);
    let r = gw.request_as(&second, "GET", "/edge/management/v1/identities", None);
    assert_eq!((r.status, code(&r)), (403, "IDENTITY_DISABLED".into()));
    // With ops2 disabled, the first admin is still the only usable one.
    let r = gw.mgmt(
        "POST",
        &format!("/identities/{admin_id}/disable"),
        Some(&json!({})),
    );
    assert_eq!(code(&r), "INVALID_STATE");

    // Bad requests: documented codes, nothing changed.
    let ops2 = shown(&gw, "ops2")["id"].as_str().unwrap().to_string();
    for (body, want) in [
        (json!({"durationMinutes": -1}), "COULD_NOT_PARSE_BODY"),
        (
            json!({"durationMinutes": 1, "durationSeconds": 1}),
            "COULD_NOT_PARSE_BODY",
        ),
        (json!({"durationMinutes": "soon"}), "COULD_NOT_PARSE_BODY"),
        (json!({"until": 5}), "COULD_NOT_PARSE_BODY"),
    ] {
        let r = gw.mgmt("POST", &format!("/identities/{ops2}/disable"), Some(&body));
        assert_eq!(code(&r), want, "{body}");
    }
    let r = gw.mgmt("POST", "/identities/nope/disable", Some(&json!({})));
    assert_eq!((r.status, code(&r)), (404, "NOT_FOUND".into()));
    let r = gw.mgmt("GET", &format!("/identities/{ops2}/disable"), None);
    assert_eq!(r.status, 404);
    fsck_clean(&mut gw);
}

#[test]
fn a_disabled_identity_cannot_enroll_and_its_token_waits() {
    let gw = Gateway::start();
    let (id, _, token) = gw.create_identity("late", "Device", false);
    let r = gw.mgmt(
        "POST",
        &format!("/identities/{id}/disable"),
        Some(&json!({})),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let before = gw.snapshot();
    let r = gw.request(
        "POST",
        &format!("/enroll?method=ott&token={token}"),
        &[],
        &new_csr_pem(),
    );
    assert_eq!((r.status, code(&r)), (403, "IDENTITY_DISABLED".into()));
    assert_eq!(gw.snapshot(), before, "the store is unchanged");
    let r = gw.mgmt("POST", &format!("/identities/{id}/enable"), None);
    assert_eq!(r.status, 200);
    ott_cert(&gw, "late", &token);
}

#[test]
fn re_enrolling_revokes_the_certificate_and_a_new_token_enrolls_the_same_identity() {
    let mut gw = Gateway::start();
    let old = enrolled(&gw, "cam", &["--role-attributes", "lobby,floor-2"]);
    let before = shown(&gw, "cam");
    let session = authenticate(&gw, &old);
    assert_eq!(session.status, 200);
    let token = session.header("zt-session").unwrap().to_string();
    let old_cert = cert_of(&old);

    cli_ok(&gw, &["identity", "re-enroll", "cam", "-o", "cam2.jwt"]);
    let jwt = gw.dir.path().join("cam2.jwt");
    assert_eq!(
        std::fs::metadata(&jwt).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let r = authenticate(&gw, &old);
    assert_eq!((r.status, code(&r)), (401, "INVALID_AUTH".into()));
    let r = gw.request("GET", "/current-identity", &[("zt-session", &token)], b"");
    assert_eq!(r.status, 401, "the session of the old certificate ended");
    let pending = shown(&gw, "cam");
    assert_eq!(pending["hasEnrolled"], false);

    let new = enroll_with(&gw, "cam2.jwt", "cam2.json");
    let r = authenticate(&gw, &new);
    assert_eq!(r.status, 200);
    let after = shown(&gw, "cam");
    for field in [
        "id",
        "name",
        "roleAttributes",
        "isAdmin",
        "type",
        "createdAt",
    ] {
        assert_eq!(after[field], before[field], "{field}");
    }
    assert_ne!(
        after["authenticators"]["cert"]["fingerprintSha256"],
        before["authenticators"]["cert"]["fingerprintSha256"]
    );
    // The old serial is on the CRL; openssl refuses the old certificate, not the new one.
    let (text, _) = fetch_crl(&gw, "/crl");
    assert!(text.contains(&serial(&old_cert)), "{text}");
    let (ok, said) = verify_with_crl(&gw, &old_cert);
    assert!(!ok && said.contains("certificate revoked"), "{said}");
    let (ok, said) = verify_with_crl(&gw, &cert_of(&new));
    assert!(ok, "{said}");
    // Re-enrolling by OpenZiti's authenticator path does the same.
    let fp = after["authenticators"]["cert"]["fingerprintSha256"]
        .as_str()
        .unwrap();
    let r = gw.mgmt(
        "POST",
        &format!("/authenticators/{fp}/re-enroll"),
        Some(&json!({})),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json().unwrap()["data"]["jwt"].is_string());
    assert_eq!(authenticate(&gw, &new).status, 401);
    let r = gw.mgmt(
        "POST",
        &format!("/authenticators/{fp}/re-enroll"),
        Some(&json!({})),
    );
    assert_eq!((r.status, code(&r)), (404, "NOT_FOUND".into()));

    // Not enrolled now: re-enrolling again is refused; the only admin cannot be re-enrolled.
    let err = cli_err(&gw, &["identity", "re-enroll", "cam", "-o", "cam3.jwt"]);
    assert!(err.contains("INVALID_STATE"), "{err}");
    assert!(
        !gw.dir.path().join("cam3.jwt").exists(),
        "no file left for a refusal"
    );
    let err = cli_err(
        &gw,
        &["identity", "re-enroll", "Default Admin", "-o", "a.jwt"],
    );
    assert!(err.contains("INVALID_STATE"), "{err}");
    fsck_clean(&mut gw);
}

#[test]
fn deleting_an_identity_puts_its_serial_on_the_crl() {
    let mut gw = Gateway::start_full(
        &["--public-url", "https://gw.example.org:9443"],
        |_| {},
        &[],
    );
    let (_, _, ta) = gw.create_identity("doomed", "Device", false);
    let (_, _, tb) = gw.create_identity("kept", "Device", false);
    let doomed = ott_cert(&gw, "doomed", &ta);
    let kept = ott_cert(&gw, "kept", &tb);
    // The certificate names the CRL at the public URL.
    let ext = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-ext", "crlDistributionPoints", "-in"])
            .arg(&doomed),
    );
    assert!(ext.contains("URI:https://gw.example.org:9443/crl"), "{ext}");

    let (text, first) = fetch_crl(&gw, "/crl");
    assert!(text.contains("No Revoked Certificates"), "{text}");
    let (_, again) = fetch_crl(&gw, "/edge/client/v1/crl");
    assert_eq!(again, first, "unchanged: the same CRL, not signed again");
    let n1 = crl_number(&text);
    assert!(verify_with_crl(&gw, &doomed).0);

    cli_ok(&gw, &["identity", "delete", "doomed"]);
    let (text, _) = fetch_crl(&gw, "/crl");
    assert!(text.contains(&serial(&doomed)), "{text}");
    assert!(!text.contains(&serial(&kept)), "{text}");
    assert!(crl_number(&text) > n1, "{text}");
    assert!(text.contains("Next Update"), "{text}");
    let (ok, said) = verify_with_crl(&gw, &doomed);
    assert!(!ok && said.contains("certificate revoked"), "{said}");
    let (ok, said) = verify_with_crl(&gw, &kept);
    assert!(ok, "{said}");

    // The management list shows it; an issued certificate's revocation is not lifted.
    let list = gw.mgmt("GET", "/revocations", None).json().unwrap();
    let entry = &list["data"][0];
    assert_eq!(entry["kind"], "serial");
    assert_eq!(entry["onCrl"], true);
    let r = gw.mgmt(
        "DELETE",
        &format!("/revocations/{}", entry["id"].as_str().unwrap()),
        None,
    );
    assert_eq!((r.status, code(&r)), (409, "INVALID_STATE".into()));
    let r = gw.mgmt("DELETE", "/revocations/not-hex", None);
    assert_eq!((r.status, code(&r)), (404, "NOT_FOUND".into()));
    let r = gw.request("POST", "/crl", &[], b"");
    assert_eq!(r.status, 405);
    // A backup (checked by fsck) and a restore carry the revocation: the restored gateway's
    // CRL still lists the serial.
    let cfg = gw.data.join("enrollgate.toml");
    let backup = gw.dir.path().join("backup");
    run_ok(
        Command::new(BIN)
            .args(["backup", "--config"])
            .arg(&cfg)
            .arg("--out")
            .arg(&backup),
    );
    gw.stop();
    run_ok(
        Command::new(BIN)
            .args(["restore", "--config"])
            .arg(&cfg)
            .arg("--from")
            .arg(&backup),
    );
    gw.spawn(&[]);
    let (text, _) = fetch_crl(&gw, "/crl");
    assert!(text.contains(&serial(&doomed)), "{text}");
    assert_eq!(
        gw.mgmt("GET", "/revocations", None).json().unwrap()["data"],
        list["data"]
    );
    fsck_clean(&mut gw);
}

/// With the CA key in a PKCS#11 token, the CRL is signed there, and openssl checks it
/// against the CA certificate.
#[test]
fn the_crl_is_signed_in_the_token_that_holds_the_ca_key() {
    let hsm = crate::hsm::SoftHsm::new();
    let gw = Gateway::start_full(&["--ca-key", &hsm.uri()], |_| {}, &hsm.env());
    let (_, _, t) = gw.create_identity("hsm-dev", "Device", false);
    let cert = ott_cert(&gw, "hsm-dev", &t);
    assert!(verify_with_crl(&gw, &cert).0);
    cli_ok(&gw, &["identity", "delete", "hsm-dev"]);
    let (ok, said) = verify_with_crl(&gw, &cert);
    assert!(!ok && said.contains("certificate revoked"), "{said}");
}

#[test]
fn without_a_public_url_issued_certificates_name_no_crl() {
    let gw = Gateway::start();
    let (_, _, t) = gw.create_identity("plain", "Device", false);
    let cert = ott_cert(&gw, "plain", &t);
    let text = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(&cert),
    );
    assert!(!text.contains("CRL Distribution"), "{text}");
}

#[test]
fn a_deleted_auto_enrolled_device_cannot_enroll_again_until_lifted() {
    let mut gw = Gateway::start();
    let fleet = Fleet::new("acme");
    fleet.register(&gw, "acme", true, false, true);
    let device = fleet.device(&Spec::new("sensor-1"));
    let enroll = |d: &Device| d.request(&gw, "POST", "/enroll?method=ca", &[], b"");
    let r = enroll(&device);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json().unwrap()["data"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    cli_ok(&gw, &["identity", "delete", &id]);
    let before = gw.snapshot();
    for d in [device.clone(), device.with_mauled_signature()] {
        let r = enroll(&d);
        assert_eq!((r.status, code(&r)), (403, "CERT_REVOKED".into()));
    }
    assert_eq!(gw.snapshot(), before, "nothing enrolled");
    // No serial of ours: the CRL lists nothing.
    let (text, _) = fetch_crl(&gw, "/crl");
    assert!(text.contains("No Revoked Certificates"), "{text}");

    let listed = cli_ok(&gw, &["revocation", "list"]);
    assert!(
        listed.contains("certificate") && listed.contains(&id),
        "{listed}"
    );
    let v: Value = serde_json::from_str(&cli_ok(&gw, &["revocation", "list", "--json"])).unwrap();
    let fp = v["data"][0]["fingerprint"].as_str().unwrap().to_string();
    let err = cli_err(&gw, &["revocation", "lift", "0123"]);
    assert!(err.contains("no revocation"), "{err}");
    cli_ok(&gw, &["revocation", "lift", &fp]);
    assert_eq!(
        gw.mgmt("GET", "/revocations", None).json().unwrap()["data"],
        json!([])
    );
    let r = enroll(&device);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    fsck_clean(&mut gw);
}
