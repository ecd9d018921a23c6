//! EST (RFC 7030 / RFC 8951) with `openssl` and `curl` alone, as OpenXPKI's smoke tests
//! drive an EST server: simpleenroll with the enrollment token as the Basic password,
//! simplereenroll over mTLS (renew and rekey), first-use activation, a lost answer, the
//! grace after which the old certificate stops, csrattrs, the refusals, fsck.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::support::*;

/// An answer as curl got it.
struct Answer {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

fn sh(dir: &Path, script: &str) -> String {
    run_ok(Command::new("sh").arg("-ec").arg(script).current_dir(dir))
}

/// `curl` against the gateway, from `dir`, trusting only the gateway's CA bundle; `args`
/// are shell words (credentials, `--cert`/`--key`, the body).
fn curl(gw: &Gateway, dir: &Path, method: &str, path: &str, args: &str) -> Answer {
    let ca = gw.ca_file();
    let status = sh(
        dir,
        &format!(
            "curl -sS --max-time 20 --cacert '{}' -X {method} -D hdr.txt -o body.bin \
             -w '%{{http_code}}' {args} '{}{path}'",
            ca.display(),
            gw.url()
        ),
    );
    Answer {
        status: status.trim().parse().unwrap(),
        headers: std::fs::read_to_string(dir.join("hdr.txt")).unwrap(),
        body: std::fs::read(dir.join("body.bin")).unwrap(),
    }
}

fn workdir(gw: &Gateway, name: &str) -> PathBuf {
    let d = gw.dir.path().join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A new P-256 key `<name>.key` and its CSR, base64 DER, in `<name>.b64` (the CSR's
/// subject and extensions: `req_args`).
fn new_key_csr(dir: &Path, name: &str, req_args: &str) {
    sh(
        dir,
        &format!(
            "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
             -keyout {name}.key {req_args} -outform DER | base64 > {name}.b64"
        ),
    );
}

/// A CSR for the existing key `key`, base64 DER, in `<name>.b64`.
fn csr_for_key(dir: &Path, key: &str, name: &str, req_args: &str) {
    sh(
        dir,
        &format!("openssl req -new -key {key} {req_args} -outform DER | base64 > {name}.b64"),
    );
}

/// The certificates of an EST answer (base64 certs-only PKCS#7), decoded by openssl into
/// `<name>.crt`, then verified against the gateway's CA bundle.
fn certs_of(gw: &Gateway, dir: &Path, answer: &Answer, name: &str) -> PathBuf {
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(
        answer.header("content-type").as_deref(),
        Some("application/pkcs7-mime; smime-type=certs-only")
    );
    std::fs::write(dir.join(format!("{name}.p7.b64")), &answer.body).unwrap();
    sh(
        dir,
        &format!(
            "base64 -d {name}.p7.b64 | openssl pkcs7 -inform DER -print_certs -out {name}.crt"
        ),
    );
    let out = sh(
        dir,
        &format!(
            "openssl verify -CAfile '{}' {name}.crt",
            gw.ca_file().display()
        ),
    );
    assert!(out.contains(": OK"), "{out}");
    dir.join(format!("{name}.crt"))
}

fn subject_args(id: &str) -> String {
    format!("-subj /CN={id} -addext subjectAltName=URI:spiffe://enrollgate/identity/{id}")
}

fn pubkey(dir: &Path, cert: &str) -> String {
    sh(dir, &format!("openssl x509 -in {cert} -noout -pubkey"))
}

/// `POST /authenticate?method=cert` with a certificate and key in `dir`.
fn authenticate(gw: &Gateway, dir: &Path, cert: &str, key: &str) -> Answer {
    curl(
        gw,
        dir,
        "POST",
        "/authenticate?method=cert",
        &format!("--cert {cert} --key {key}"),
    )
}

/// simplereenroll with `cert`/`key`, the CSR in `<csr>.b64`.
fn reenroll(gw: &Gateway, dir: &Path, cert: &str, key: &str, csr: &str) -> Answer {
    curl(
        gw,
        dir,
        "POST",
        "/.well-known/est/simplereenroll",
        &format!(
            "--cert {cert} --key {key} -H 'Content-Type: application/pkcs10' \
             --data-binary @{csr}.b64"
        ),
    )
}

/// The store is consistent, and no request was answered with a 5xx (each is logged as
/// "request failed").
fn fsck_clean(gw: &Gateway) {
    let cfg = gw.data.join("enrollgate.toml");
    let out = run_ok(Command::new(BIN).arg("fsck").arg("--config").arg(&cfg));
    assert!(out.contains("no violations"), "{out}");
    let log = gw.log();
    assert!(!log.contains("request failed"), "{log}");
}

fn assert_challenge(a: &Answer) {
    assert_eq!(a.status, 401, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.code(), "EST_UNAUTHORIZED");
    assert_eq!(
        a.header("www-authenticate").as_deref(),
        Some("Basic realm=\"enrollgate\"")
    );
}

/// Enrolls a new identity `name` by simpleenroll with its token; returns (identity id,
/// its directory, where `dev.key` and `dev.crt` are).
fn est_enrolled(gw: &Gateway, name: &str) -> (String, PathBuf) {
    let (id, _, token) = gw.create_identity(name, "Device", false);
    let dir = workdir(gw, name);
    new_key_csr(&dir, "dev", "-subj /CN=anything");
    let a = curl(
        gw,
        &dir,
        "POST",
        "/.well-known/est/simpleenroll",
        &format!("-u device:{token} -H 'Content-Type: application/pkcs10' --data-binary @dev.b64"),
    );
    certs_of(gw, &dir, &a, "dev");
    (id, dir)
}

#[test]
fn simpleenroll_with_openssl_and_curl_redeems_the_token_once() {
    let gw = Gateway::start();
    let (id, _, token) = gw.create_identity("est-one", "Device", false);
    let dir = workdir(&gw, "one");
    new_key_csr(&dir, "dev", "-subj /CN=x");
    let enroll = |creds: &str| {
        curl(
            &gw,
            &dir,
            "POST",
            "/.well-known/est/simpleenroll",
            &format!("{creds} -H 'Content-Type: application/pkcs10' --data-binary @dev.b64"),
        )
    };

    // No credentials, a wrong password, another scheme: 401 with the Basic challenge, and
    // the token still redeems afterwards.
    assert_challenge(&enroll(""));
    assert_challenge(&enroll("-u device:not-the-token"));
    assert_challenge(&enroll("-u device:a.b.c"));
    assert_challenge(&enroll("-H 'Authorization: Bearer x'"));

    let a = enroll(&format!("-u device:{token}"));
    assert_eq!(
        a.header("content-transfer-encoding").as_deref(),
        Some("base64")
    );
    let cert = certs_of(&gw, &dir, &a, "dev");
    // Built from the identity, not from the CSR's /CN=x.
    let subject = sh(
        &dir,
        "openssl x509 -in dev.crt -noout -subject -ext subjectAltName",
    );
    assert!(subject.contains(&format!("CN = {id}")), "{subject}");
    assert!(
        subject.contains(&format!("URI:spiffe://enrollgate/identity/{id}")),
        "{subject}"
    );
    assert!(cert.exists());

    // Spent: EST refuses it (401), and so does /enroll.
    let again = enroll(&format!("-u device:{token}"));
    assert_challenge(&again);
    let msg = again.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!msg.contains(&token), "the token is not echoed: {msg}");
    let csr = std::fs::read(dir.join("dev.b64")).unwrap();
    let resp = gw.request(
        "POST",
        &format!("/enroll?method=ott&token={token}"),
        &[("Content-Type", "application/pkcs10")],
        &csr,
    );
    assert_eq!(code(&resp), "INVALID_ENROLLMENT_TOKEN");

    // The certificate authenticates on the client API.
    assert_eq!(authenticate(&gw, &dir, "dev.crt", "dev.key").status, 200);

    // The JWT an admin hands out works as the password too, under any user name.
    let (_, jwt, _) = gw.create_identity("est-jwt", "Device", false);
    let a = enroll(&format!("-u whoever:{jwt}"));
    certs_of(&gw, &dir, &a, "jwt");
    // A token of /enroll's is not redeemed twice across the two protocols either.
    let (_, _, t3) = gw.create_identity("est-three", "Device", false);
    let resp = gw.request(
        "POST",
        &format!("/enroll?method=ott&token={t3}"),
        &[("Content-Type", "application/pkcs10")],
        &csr,
    );
    assert_eq!(resp.status, 200);
    assert_challenge(&enroll(&format!("-u device:{t3}")));

    // A bad CSR with a good token: 400, the token not spent.
    let (_, _, t4) = gw.create_identity("est-four", "Device", false);
    std::fs::write(dir.join("junk.b64"), "bm90IGEgY3Ny\n").unwrap();
    let a = curl(
        &gw,
        &dir,
        "POST",
        "/.well-known/est/simpleenroll",
        &format!("-u d:{t4} -H 'Content-Type: application/pkcs10' --data-binary @junk.b64"),
    );
    assert_eq!(
        (a.status, a.code().as_str()),
        (400, "COULD_NOT_PROCESS_CSR")
    );
    certs_of(&gw, &dir, &enroll(&format!("-u d:{t4}")), "four");

    let m = gw.metrics_text();
    assert_eq!(
        metric(
            &m,
            "enrollgate_enrollments_total{method=\"est\",result=\"ok\"}"
        ),
        3.0
    );
    assert_eq!(
        metric(
            &m,
            "enrollgate_enrollments_total{method=\"est\",result=\"EST_UNAUTHORIZED\"}"
        ),
        6.0
    );
    assert!(m.contains("enrollgate_enrollments_total{method=\"est_reenroll\",result=\"ok\"} 0"));
    fsck_clean(&gw);
}

#[test]
fn simplereenroll_renews_and_rekeys_and_the_first_use_activates() {
    let gw = Gateway::start();
    let (id, dir) = est_enrolled(&gw, "est-re");
    let names = subject_args(&id);

    // Same key: a renewal.
    csr_for_key(&dir, "dev.key", "same", &names);
    let a = reenroll(&gw, &dir, "dev.crt", "dev.key", "same");
    certs_of(&gw, &dir, &a, "renewed");
    assert_eq!(pubkey(&dir, "renewed.crt"), pubkey(&dir, "dev.crt"));
    // Until the new certificate is used, the old one authenticates, again and again.
    for _ in 0..2 {
        assert_eq!(authenticate(&gw, &dir, "dev.crt", "dev.key").status, 200);
    }

    // The answer was "lost": the device asks again, now with a new key (a rekey). The
    // second renewal replaces the first, which no longer authenticates.
    new_key_csr(&dir, "rekey", &names);
    let a = reenroll(&gw, &dir, "dev.crt", "dev.key", "rekey");
    certs_of(&gw, &dir, &a, "rekeyed");
    assert_ne!(pubkey(&dir, "rekeyed.crt"), pubkey(&dir, "dev.crt"));
    let stale = authenticate(&gw, &dir, "renewed.crt", "dev.key");
    assert_eq!((stale.status, stale.code().as_str()), (401, "INVALID_AUTH"));
    assert_eq!(authenticate(&gw, &dir, "dev.crt", "dev.key").status, 200);

    // Refused, the store unchanged: a CSR naming something else, or without the SAN.
    let before = gw.snapshot();
    for (name, args) in [
        ("other-cn", "-subj /CN=x".to_string()),
        (
            "other-san",
            format!("-subj /CN={id} -addext subjectAltName=URI:spiffe://enrollgate/identity/x"),
        ),
        ("no-san", format!("-subj /CN={id}")),
    ] {
        csr_for_key(&dir, "dev.key", name, &args);
        let a = reenroll(&gw, &dir, "dev.crt", "dev.key", name);
        assert_eq!(
            (a.status, a.code().as_str()),
            (400, "CSR_NAME_MISMATCH"),
            "{name}"
        );
    }
    // Without a client certificate, or with one not bound: 401 with the challenge.
    assert_challenge(&curl(
        &gw,
        &dir,
        "POST",
        "/.well-known/est/simplereenroll",
        "-H 'Content-Type: application/pkcs10' --data-binary @same.b64",
    ));
    assert_eq!(gw.snapshot(), before);

    // The first use of the new certificate activates it; the old one stops.
    let first = authenticate(&gw, &dir, "rekeyed.crt", "rekey.key");
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    let old = authenticate(&gw, &dir, "dev.crt", "dev.key");
    assert_eq!((old.status, old.code().as_str()), (401, "INVALID_AUTH"));
    assert_eq!(
        authenticate(&gw, &dir, "rekeyed.crt", "rekey.key").status,
        200
    );

    // A renewal first used by the next simplereenroll itself.
    csr_for_key(&dir, "rekey.key", "third", &names);
    let a = reenroll(&gw, &dir, "rekeyed.crt", "rekey.key", "third");
    certs_of(&gw, &dir, &a, "third");
    let a = reenroll(&gw, &dir, "third.crt", "rekey.key", "third");
    certs_of(&gw, &dir, &a, "fourth");
    let old = authenticate(&gw, &dir, "rekeyed.crt", "rekey.key");
    assert_eq!(
        old.code(),
        "INVALID_AUTH",
        "the third's first use retired it"
    );
    assert_eq!(
        authenticate(&gw, &dir, "fourth.crt", "rekey.key").status,
        200
    );

    let m = gw.metrics_text();
    assert_eq!(
        metric(
            &m,
            "enrollgate_enrollments_total{method=\"est_reenroll\",result=\"ok\"}"
        ),
        4.0
    );
    fsck_clean(&gw);
}

#[test]
fn an_admin_renewed_by_est_is_activated_by_its_first_management_call() {
    let gw = Gateway::start();
    let dir = workdir(&gw, "admin");
    let file: Value = serde_json::from_slice(&std::fs::read(gw.admin_file()).unwrap()).unwrap();
    let pem = |k: &str| {
        file["id"][k]
            .as_str()
            .unwrap()
            .trim_start_matches("pem:")
            .to_string()
    };
    std::fs::write(dir.join("admin.crt"), pem("cert")).unwrap();
    std::fs::write(dir.join("admin.key"), pem("key")).unwrap();
    let id = sh(
        &dir,
        "openssl x509 -in admin.crt -noout -subject -nameopt sep_multiline",
    )
    .lines()
    .find_map(|l| l.trim().strip_prefix("CN=").map(str::to_string))
    .unwrap();
    csr_for_key(&dir, "admin.key", "re", &subject_args(&id));
    let a = reenroll(&gw, &dir, "admin.crt", "admin.key", "re");
    certs_of(&gw, &dir, &a, "new");
    let list = |cert: &str| {
        curl(
            &gw,
            &dir,
            "GET",
            "/edge/management/v1/identities",
            &format!("--cert {cert} --key admin.key"),
        )
    };
    assert_eq!(
        list("admin.crt").status,
        200,
        "the old one until the new one's use"
    );
    assert_eq!(list("new.crt").status, 200);
    let old = list("admin.crt");
    assert_eq!((old.status, old.code().as_str()), (401, "UNAUTHORIZED"));
    fsck_clean(&gw);
}

#[test]
fn after_the_grace_only_the_renewed_certificate_authenticates() {
    let gw = Gateway::start_with(
        |cfg| *cfg = cfg.replace("reenroll_grace = \"7d\"", "reenroll_grace = \"1s\""),
        &[],
    );
    let (id, dir) = est_enrolled(&gw, "est-grace");
    csr_for_key(&dir, "dev.key", "re", &subject_args(&id));
    let a = reenroll(&gw, &dir, "dev.crt", "dev.key", "re");
    certs_of(&gw, &dir, &a, "new");
    // More than the grace (whole seconds) has passed: the old certificate is refused, and
    // says why; it cannot re-enroll either.
    std::thread::sleep(std::time::Duration::from_millis(2_100));
    let old = authenticate(&gw, &dir, "dev.crt", "dev.key");
    assert_eq!((old.status, old.code().as_str()), (401, "INVALID_AUTH"));
    assert!(old.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("grace"));
    assert_challenge(&reenroll(&gw, &dir, "dev.crt", "dev.key", "re"));
    // The new one still activates by its first use.
    assert_eq!(authenticate(&gw, &dir, "new.crt", "dev.key").status, 200);
    fsck_clean(&gw);
}

#[test]
fn csrattrs_and_the_operations_not_offered() {
    let gw = Gateway::start();
    let dir = workdir(&gw, "ops");
    let a = curl(&gw, &dir, "GET", "/.well-known/est/csrattrs", "");
    assert_eq!(a.status, 204);
    assert!(a.body.is_empty());
    for op in ["serverkeygen", "fullcmc", "label/simpleenroll"] {
        let a = curl(
            &gw,
            &dir,
            "POST",
            &format!("/.well-known/est/{op}"),
            "--data-binary x",
        );
        assert_eq!((a.status, a.code().as_str()), (404, "NOT_FOUND"), "{op}");
    }
    let a = curl(&gw, &dir, "GET", "/.well-known/est/simpleenroll", "");
    assert_eq!((a.status, a.code().as_str()), (405, "METHOD_NOT_ALLOWED"));
    assert_eq!(a.header("allow").as_deref(), Some("POST"));
    // A CSR sent as JSON is not EST.
    let (_, _, token) = gw.create_identity("est-media", "Device", false);
    let a = curl(
        &gw,
        &dir,
        "POST",
        "/.well-known/est/simpleenroll",
        &format!("-u d:{token} -H 'Content-Type: application/json' --data-binary '{{}}'"),
    );
    assert_eq!((a.status, a.code().as_str()), (415, "UNSUPPORTED_MEDIA"));
    // The cacerts answer is the CA bundle the certificates verify against.
    let a = curl(&gw, &dir, "GET", "/.well-known/est/cacerts", "");
    std::fs::write(dir.join("cacerts.b64"), &a.body).unwrap();
    let certs = sh(
        &dir,
        "base64 -d cacerts.b64 | openssl pkcs7 -inform DER -print_certs | grep -c 'BEGIN CERTIFICATE'",
    );
    assert!(certs.trim().parse::<u32>().unwrap() >= 1);
    fsck_clean(&gw);
}

#[test]
fn a_bootstrap_certificate_enrolls_its_identity_once_and_recovers_it() {
    use crate::fleet::{Fleet, Spec};
    let gw = Gateway::start();
    let fleet = Fleet::new("idev");
    fleet.register(&gw, "idev", true, false, true);
    let dir = workdir(&gw, "boot");
    fleet.device(&Spec::new("sensor-1")).write(&dir, "idevid");
    let enroll = |cert: &str, key: &str, csr: &str| {
        curl(
            &gw,
            &dir,
            "POST",
            "/.well-known/est/simpleenroll",
            &format!(
                "--cert {cert} --key {key} -H 'Content-Type: application/pkcs10' \
                 --data-binary @{csr}.b64"
            ),
        )
    };
    let fleet_identities = || -> Vec<Value> {
        let all = gw
            .mgmt("GET", "/identities?limit=1000", None)
            .json()
            .unwrap();
        all["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["name"].as_str().unwrap().starts_with("idev-"))
            .cloned()
            .collect()
    };

    // A body that is no CSR creates nothing.
    std::fs::write(dir.join("junk.b64"), "bm90IGEgY3Ny\n").unwrap();
    let a = enroll("idevid.crt", "idevid.key", "junk");
    assert_eq!(
        (a.status, a.code().as_str()),
        (400, "COULD_NOT_PROCESS_CSR")
    );
    assert!(fleet_identities().is_empty());

    // The IDevID auto-enrolls its identity (the CA's name template and roles) and gets an
    // enrollgate certificate (LDevID) for its CSR.
    new_key_csr(&dir, "ldev", "-subj /CN=sensor-1");
    certs_of(
        &gw,
        &dir,
        &enroll("idevid.crt", "idevid.key", "ldev"),
        "ldev",
    );
    let ids = fleet_identities();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(ids[0]["name"], "idev-sensor-1");
    assert!(ids[0]["roleAttributes"].to_string().contains("fleet"));
    let id = ids[0]["id"].as_str().unwrap().to_string();
    let cn = sh(&dir, "openssl x509 -in ldev.crt -noout -subject");
    assert!(cn.contains(&id), "{cn}");

    // Until the LDevID is used, the IDevID authenticates (its CA allows it); the LDevID's
    // first use activates it, and the IDevID authenticates nothing more.
    assert_eq!(
        authenticate(&gw, &dir, "idevid.crt", "idevid.key").status,
        200
    );
    assert_eq!(authenticate(&gw, &dir, "ldev.crt", "ldev.key").status, 200);
    let boot = authenticate(&gw, &dir, "idevid.crt", "idevid.key");
    assert_eq!((boot.status, boot.code().as_str()), (401, "INVALID_AUTH"));
    assert!(boot.body.windows(9).any(|w| w == b"bootstrap"));

    // ... but it stays bound: it never auto-enrolls a second identity, by either protocol.
    let resp = curl(
        &gw,
        &dir,
        "POST",
        "/enroll?method=ca",
        "--cert idevid.crt --key idevid.key",
    );
    assert_eq!((resp.status, resp.code().as_str()), (409, "CERT_IN_USE"));
    assert_eq!(fleet_identities().len(), 1);

    // Recovery: the device lost its LDevID; the IDevID asks again, with a new key. The old
    // LDevID works until the new one is used.
    new_key_csr(&dir, "ldev2", "-subj /CN=sensor-1");
    certs_of(
        &gw,
        &dir,
        &enroll("idevid.crt", "idevid.key", "ldev2"),
        "ldev2",
    );
    assert_eq!(fleet_identities().len(), 1);
    assert_eq!(authenticate(&gw, &dir, "ldev.crt", "ldev.key").status, 200);
    assert_eq!(
        authenticate(&gw, &dir, "ldev2.crt", "ldev2.key").status,
        200
    );
    let old = authenticate(&gw, &dir, "ldev.crt", "ldev.key");
    assert_eq!((old.status, old.code().as_str()), (401, "INVALID_AUTH"));

    // The LDevID renews as any enrollgate certificate does.
    csr_for_key(&dir, "ldev2.key", "re", &subject_args(&id));
    certs_of(
        &gw,
        &dir,
        &reenroll(&gw, &dir, "ldev2.crt", "ldev2.key", "re"),
        "ldev3",
    );

    // A device of a CA without auto-enrollment: 401.
    let other = Fleet::new("noauto");
    other.register(&gw, "noauto", false, false, true);
    other.device(&Spec::new("sensor-2")).write(&dir, "stranger");
    assert_challenge(&enroll("stranger.crt", "stranger.key", "ldev"));
    assert_eq!(fleet_identities().len(), 1);

    fsck_clean(&gw);
    // Deleting the identity unbinds all its certificates and revokes them (I7): the
    // IDevID cannot enroll again by itself, until an admin lifts its block.
    assert_eq!(
        gw.mgmt("DELETE", &format!("/identities/{id}"), None).status,
        200
    );
    fsck_clean(&gw);
    let refused = enroll("idevid.crt", "idevid.key", "ldev");
    assert_eq!(
        (refused.status, refused.code().as_str()),
        (403, "CERT_REVOKED")
    );
    assert!(fleet_identities().is_empty());
    let revocations = gw.mgmt("GET", "/revocations", None).json().unwrap();
    let blocked: Vec<&str> = revocations["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "certificate")
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(blocked.len(), 1, "{revocations}");
    let lift = gw.mgmt("DELETE", &format!("/revocations/{}", blocked[0]), None);
    assert_eq!(lift.status, 200);
    certs_of(
        &gw,
        &dir,
        &enroll("idevid.crt", "idevid.key", "ldev"),
        "again",
    );
    assert_eq!(fleet_identities().len(), 1);
    fsck_clean(&gw);
}

#[test]
fn racing_first_uses_activate_once_and_each_authenticates() {
    let gw = Gateway::start();
    let (id, dir) = est_enrolled(&gw, "est-race");
    csr_for_key(&dir, "dev.key", "re", &subject_args(&id));
    certs_of(
        &gw,
        &dir,
        &reenroll(&gw, &dir, "dev.crt", "dev.key", "re"),
        "new",
    );
    let dirs: Vec<PathBuf> = (0..8)
        .map(|i| {
            let d = workdir(&gw, &format!("race{i}"));
            for f in ["new.crt", "dev.key"] {
                std::fs::copy(dir.join(f), d.join(f)).unwrap();
            }
            d
        })
        .collect();
    let statuses: Vec<(u16, String)> = std::thread::scope(|s| {
        let gw = &gw;
        let handles: Vec<_> = dirs
            .iter()
            .map(|d| {
                s.spawn(move || {
                    let a = authenticate(gw, d, "new.crt", "dev.key");
                    (a.status, a.code())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|(s, _)| *s == 200), "{statuses:?}");
    let old = authenticate(&gw, &dir, "dev.crt", "dev.key");
    assert_eq!((old.status, old.code().as_str()), (401, "INVALID_AUTH"));
    fsck_clean(&gw);
}

/// A bootstrap certificate whose identity is disabled is refused without spending its
/// CA's rate budget: the budget is charged only once the request could succeed.
#[test]
fn refused_bootstrap_requests_spend_nothing_of_the_cas_budget() {
    use crate::fleet::{Fleet, Spec};
    let gw = Gateway::start_with(
        |cfg| {
            *cfg = cfg.replace(
                "[limits]\n",
                "[limits]\nper_ca_rate = \"1/h\"\nper_ca_burst = 2\n",
            );
        },
        &[],
    );
    let fleet = Fleet::new("budget");
    fleet.register(&gw, "budget", true, false, true);
    let dir = workdir(&gw, "budget");
    fleet.device(&Spec::new("meter-1")).write(&dir, "idevid");
    new_key_csr(&dir, "ldev", "-subj /CN=meter-1");
    let enroll = || {
        curl(
            &gw,
            &dir,
            "POST",
            "/.well-known/est/simpleenroll",
            "--cert idevid.crt --key idevid.key -H 'Content-Type: application/pkcs10' \
             --data-binary @ldev.b64",
        )
    };
    // The first enrollment creates the identity: one of the two in the budget.
    assert_eq!(enroll().status, 200);
    let out = gw.cli(&["identity", "disable", "budget-meter-1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for _ in 0..3 {
        let refused = enroll();
        assert_eq!(
            (refused.status, refused.code().as_str()),
            (401, "EST_UNAUTHORIZED")
        );
    }
    let out = gw.cli(&["identity", "enable", "budget-meter-1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The refusals spent nothing: the second of the budget is still there, and then the
    // budget is spent.
    assert_eq!(enroll().status, 200);
    let over = enroll();
    assert_eq!((over.status, over.code().as_str()), (429, "RATE_LIMITED"));
}
