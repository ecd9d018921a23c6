//! init, start, the public endpoints, stop, restart, the epoll fallback, RSA deployments.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use serde_json::json;

use crate::support::*;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in walk(dir) {
        if e.is_file() {
            out.insert(e.display().to_string(), std::fs::read(&e).unwrap());
        }
    }
    out
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

#[test]
fn init_makes_private_files_and_refuses_to_run_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    run_ok(
        Command::new("sh")
            .arg("-c")
            .arg("umask 022 && exec \"$0\" \"$@\"")
            .arg(BIN)
            .args(["init", "--data-dir"])
            .arg(&data)
            .args(["--public-url", "https://gw.example.org:9443"]),
    );
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("pki")), 0o700);
    for f in [
        "pki/ca.crt",
        "pki/ca.key",
        "pki/server.crt",
        "pki/server.key",
        "enrollgate.toml",
        "admin.json",
    ] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }
    assert!(data.join("store/CURRENT").exists(), "a RocksDB store");
    // The store's own files are private too, whatever the caller's umask (0022 here).
    assert_eq!(mode(&data.join("store")), 0o700);
    for e in std::fs::read_dir(data.join("store")).unwrap().flatten() {
        assert_eq!(mode(&e.path()) & 0o077, 0, "{}", e.path().display());
    }
    let cfg = std::fs::read_to_string(data.join("enrollgate.toml")).unwrap();
    assert!(cfg.contains("public_url = \"https://gw.example.org:9443\""));
    let admin: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("admin.json")).unwrap()).unwrap();
    assert_eq!(admin["ztAPI"], "https://gw.example.org:9443/edge/client/v1");

    // The server certificate names the public host and the loopback names.
    let text = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
            .arg(data.join("pki/server.crt")),
    );
    for name in [
        "DNS:localhost",
        "DNS:gw.example.org",
        "IP Address:127.0.0.1",
        "IP Address:0:0:0:0:0:0:0:1",
    ] {
        assert!(text.contains(name), "{name} in {text}");
    }
    let verified = run_ok(
        Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(data.join("pki/ca.crt"))
            .arg(data.join("pki/server.crt")),
    );
    assert!(verified.contains("OK"));

    // A second init changes nothing.
    let before = tree(&data);
    let out = Command::new(BIN)
        .args(["init", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    assert_eq!(tree(&data), before);

    // Its store gone (a wrong store.path, a restore half done by hand): serve says where
    // a store comes from, and makes none.
    std::fs::rename(data.join("store"), data.join("store.aside")).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(data.join("enrollgate.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no store there: make one with `enrollgate init`"),
        "{err}"
    );
    assert!(!data.join("store").exists());
}

#[test]
fn version_and_cacerts_at_root_and_under_the_client_prefix() {
    let gw = Gateway::start();
    for prefix in ["", "/edge/client/v1"] {
        let r = gw.request("GET", &format!("{prefix}/version"), &[], b"");
        assert_eq!(r.status, 200);
        let v = r.json().unwrap();
        assert_eq!(
            v["data"]["apiVersions"]["edge"]["v1"]["path"],
            "/edge/client/v1"
        );
        assert!(v["data"]["version"].is_string());
        // OpenZiti's capability names are controller features we do not have; the C SDK
        // warns of every name it does not know.
        assert_eq!(v["data"]["capabilities"], json!([]));
        assert_eq!(v["meta"], json!({}));

        let r = gw.request(
            "GET",
            &format!("{prefix}/.well-known/est/cacerts"),
            &[],
            b"",
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("application/pkcs7-mime"));
        assert_eq!(r.header("content-transfer-encoding"), Some("base64"));
        // OpenSSL's base64 decoder, which the C SDK reads this with, needs lines (of at
        // most 1,024 characters; OpenZiti's controller writes 64).
        let text = String::from_utf8(r.body.clone()).unwrap();
        assert!(text.ends_with('\n'), "{text}");
        assert!(text.lines().all(|l| l.len() <= 64), "{text}");
        let p7 = gw.dir.path().join("cacerts.b64");
        std::fs::write(&p7, &r.body).unwrap();
        let der = run_ok(Command::new("sh").arg("-c").arg(format!(
            "openssl base64 -d -in {} | openssl pkcs7 -inform DER -print_certs",
            p7.display()
        )));
        assert!(
            der.contains("subject=O = enrollgate, CN = enrollgate root CA"),
            "{der}"
        );
    }
}

#[test]
fn sigterm_stops_cleanly_and_enrollments_survive_a_restart() {
    let mut gw = Gateway::start();
    assert!(gw.log().contains("workers=2"), "{}", gw.log());
    let (id, _, token) = gw.create_identity("durable", "Device", false);
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let r = gw.request(
        "POST",
        &format!("/enroll?method=ott&token={token}"),
        &[],
        csr.as_bytes(),
    );
    assert_eq!(r.status, 200);

    let status = gw.stop();
    assert!(status.success(), "exit status {status:?}\n{}", gw.log());
    assert!(gw.log().contains("stopped"), "{}", gw.log());

    gw.spawn(&[]);
    let shown = gw
        .mgmt("GET", &format!("/identities/{id}"), None)
        .json()
        .unwrap();
    assert_eq!(shown["data"]["hasEnrolled"], true);
    let r = gw.request(
        "POST",
        &format!("/enroll?method=ott&token={token}"),
        &[],
        csr.as_bytes(),
    );
    assert_eq!(
        code(&r),
        "INVALID_ENROLLMENT_TOKEN",
        "a token is redeemed once, across restarts"
    );
}

#[test]
fn epoll_fallback_is_announced_and_serves() {
    let gw = Gateway::start_with(|_| {}, &[("MONOIO_FORCE_LEGACY_DRIVER", "1")]);
    assert!(
        gw.log().contains("driver=\"epoll\"") || gw.log().contains("driver=epoll"),
        "{}",
        gw.log()
    );
    assert_eq!(gw.log().matches("io_uring is not available").count(), 1);
    let out = gw.cli(&["identity", "create", "device", "epoll-dev", "-o", "e.jwt"]);
    assert!(out.status.success());
    let out = gw.cli(&["enroll", "--jwt", "e.jwt", "--out", "e.json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn rsa_deployments_sign_rs256_and_enroll() {
    let gw = Gateway::start_full(&["--key-type", "rsa"], |_| {}, &[]);
    let (_, jwt, _) = gw.create_identity("old-sdk", "Device", false);
    let (header, _) = enrollgate::token::jwt::peek(&jwt).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
    let text = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(gw.ca_file()),
    );
    assert!(text.contains("Public-Key: (3072 bit)"), "{text}");
    std::fs::write(gw.dir.path().join("old.jwt"), &jwt).unwrap();
    let out = gw.cli(&[
        "enroll",
        "--jwt",
        "old.jwt",
        "--out",
        "old.json",
        "--key-type",
        "rsa",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A listener certificate from another CA (a web PKI's, say): OpenZiti clients trust only
/// what `/.well-known/est/cacerts` serves, so its CA must be served there too (`tls.ca`),
/// and without it the gateway refuses to start rather than serve what no client can trust.
#[test]
fn a_listener_certificate_from_another_ca_is_served_in_cacerts() {
    let mut gw = Gateway::start();
    let web_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "Public Web CA");
    let web_ca = ca.self_signed(&web_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, &web_key);
    let srv_key = rcgen::KeyPair::generate().unwrap();
    let mut srv =
        rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    srv.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let srv = srv.signed_by(&srv_key, &issuer).unwrap();
    let pki = gw.data.join("pki");
    std::fs::write(pki.join("web.crt"), srv.pem()).unwrap();
    std::fs::write(pki.join("web.key"), srv_key.serialize_pem()).unwrap();
    std::fs::set_permissions(pki.join("web.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(pki.join("web-ca.pem"), web_ca.pem()).unwrap();
    gw.stop();
    let cfg_path = gw.data.join("enrollgate.toml");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    let web = cfg
        .replace("pki/server.crt", "pki/web.crt")
        .replace("pki/server.key", "pki/web.key");
    assert_ne!(web, cfg);
    std::fs::write(&cfg_path, &web).unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&cfg_path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("tls.cert") && text.contains("tls.ca"),
        "{text}"
    );
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg_path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("tls.ca"));

    std::fs::write(
        &cfg_path,
        web.replace("[tls]", "[tls]\nca = \"pki/web-ca.pem\""),
    )
    .unwrap();
    gw.spawn(&[]);
    // cacerts, from a client that trusts only the web CA: the internal CA and the web CA.
    let roots = [rustls_pki_types::CertificateDer::from(
        web_ca.der().to_vec(),
    )];
    let cfg = enrollgate::client::config(&roots, None).unwrap();
    let r = enrollgate::client::request(
        cfg,
        "127.0.0.1",
        gw.port,
        "GET",
        "/.well-known/est/cacerts",
        &[],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let served = enrollgate::pki::pkcs7::read_cacerts_body(&r.body).unwrap();
    let internal = std::fs::read_to_string(gw.ca_file()).unwrap();
    let internal = pem::parse(internal).unwrap().into_contents();
    assert_eq!(served.len(), 2);
    assert!(served.contains(&web_ca.der().to_vec()) && served.contains(&internal));
    // And a client that trusts only those enrolls (the JWT is signed with the new key). The
    // admin's own identity file trusted the internal CA alone: it learns the web CA too.
    let admin_path = gw.admin_file();
    let mut admin: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&admin_path).unwrap()).unwrap();
    let ca = format!("{}{}", admin["id"]["ca"].as_str().unwrap(), web_ca.pem());
    admin["id"]["ca"] = serde_json::Value::String(ca);
    std::fs::write(&admin_path, serde_json::to_vec(&admin).unwrap()).unwrap();
    let out = gw.cli(&["identity", "create", "device", "web-1", "-o", "web-1.jwt"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = gw.cli(&["enroll", "--jwt", "web-1.jwt", "--out", "web-1.json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The identity file it wrote trusts the listener's CA too: it reaches the gateway again.
    let f =
        enrollgate::identity_file::IdentityFile::read(&gw.dir.path().join("web-1.json")).unwrap();
    let trusted = f.ca_certs().unwrap();
    assert_eq!(trusted.len(), 2);
    let cfg = enrollgate::client::config(
        &trusted,
        Some((f.cert_chain().unwrap(), f.private_key().unwrap())),
    )
    .unwrap();
    let r = enrollgate::client::request(cfg, "127.0.0.1", gw.port, "GET", "/version", &[], b"")
        .unwrap();
    assert_eq!(r.status, 200);
}
