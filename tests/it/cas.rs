//! Third-party CAs: management and proof of possession, ottca, CA auto-enrollment,
//! authentication, bad chains, and one certificate per identity under races.

use std::process::Command;

use serde_json::{json, Value};

use crate::fleet::*;
use crate::support::*;

/// `POST /authenticate?method=cert` with the device's certificate.
fn authenticate(dev: &Device, gw: &Gateway) -> enrollgate::client::HttpResponse {
    dev.request(
        gw,
        "POST",
        "/edge/client/v1/authenticate?method=cert",
        &[],
        b"",
    )
}

/// The log line holding `text`, once the daemon has written it.
fn wait_for_line(gw: &Gateway, text: &str) -> String {
    gw.wait_log(text);
    let log = gw.log();
    log.lines().find(|l| l.contains(text)).unwrap().to_owned()
}

fn ca_enroll(dev: &Device, gw: &Gateway, body: Option<&Value>) -> enrollgate::client::HttpResponse {
    let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    let headers: &[(&str, &str)] = if body.is_some() {
        &[("Content-Type", "application/json")]
    } else {
        &[]
    };
    dev.request(
        gw,
        "POST",
        "/edge/client/v1/enroll?method=ca",
        headers,
        &bytes,
    )
}

/// Regression: a taken CA name was answered `NAME_IN_USE` with "an identity named ...
/// already exists". The code stays; the message names what holds the name.
#[test]
fn name_in_use_says_whether_an_identity_or_a_ca_holds_the_name() {
    let gw = Gateway::start();
    let error = |r: &enrollgate::client::HttpResponse| (r.status, r.api_error().unwrap());
    let taken = |what: &str| {
        (
            409,
            (
                "NAME_IN_USE".to_string(),
                format!("{what} named 'taken' already exists"),
            ),
        )
    };

    gw.create_identity("taken", "User", false);
    let r = gw.mgmt(
        "POST",
        "/identities",
        Some(&json!({"name": "taken", "type": "Device"})),
    );
    assert_eq!(error(&r), taken("an identity"));

    // Identity names and CA names are separate: the CA may take the same name.
    let first = Fleet::new("first");
    let r = gw.mgmt(
        "POST",
        "/cas",
        Some(&json!({"name": "taken", "certPem": first.root_pem})),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));

    // A second CA with that name, created or renamed to it.
    let second = Fleet::new("second");
    let r = gw.mgmt(
        "POST",
        "/cas",
        Some(&json!({"name": "taken", "certPem": second.root_pem})),
    );
    assert_eq!(error(&r), taken("a CA"));
    let r = gw.mgmt(
        "POST",
        "/cas",
        Some(&json!({"name": "free", "certPem": second.root_pem})),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let second_id = r.json().unwrap()["data"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = gw.mgmt(
        "PATCH",
        &format!("/cas/{second_id}"),
        Some(&json!({"name": "taken"})),
    );
    assert_eq!(error(&r), taken("a CA"));
    let shown = gw.mgmt("GET", &format!("/cas/{second_id}"), None);
    assert_eq!(shown.json().unwrap()["data"]["name"], "free");
}

#[test]
fn cas_are_created_verified_with_openssl_and_managed_from_the_cli() {
    let gw = Gateway::start();
    let dir = gw.dir.path();
    let fleet = Fleet::new("acme");
    std::fs::write(dir.join("ca.pem"), &fleet.root_pem).unwrap();
    std::fs::write(dir.join("ca.key"), fleet.root_key.serialize_pem()).unwrap();

    let out = gw.cli(&[
        "ca",
        "create",
        "acme",
        "--cert",
        "ca.pem",
        "--auto",
        "--auth",
        "--role-attributes",
        "sensors,acme",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let shown = gw.mgmt("GET", &format!("/cas/{id}"), None).json().unwrap()["data"].clone();
    assert_eq!(shown["isVerified"], false);
    assert_eq!(shown["identityNameFormat"], "[caName]-[commonName]");
    assert_eq!(shown["identityRoles"], json!(["sensors", "acme"]));
    let token = shown["verificationToken"].as_str().unwrap().to_string();

    // Unverified: auto-enrollment refused.
    let dev = fleet.device(&Spec::new("dev-1"));
    let r = ca_enroll(&dev, &gw, None);
    assert_eq!(
        (r.status, code(&r).as_str()),
        (400, "CERT_FAILED_VALIDATION")
    );

    // Duplicates.
    let r = gw.mgmt(
        "POST",
        "/cas",
        Some(&json!({"name": "acme2", "certPem": fleet.root_pem})),
    );
    assert_eq!((r.status, code(&r).as_str()), (409, "CA_EXISTS"));
    let other = Fleet::new("other");
    let r = gw.mgmt(
        "POST",
        "/cas",
        Some(&json!({"name": "acme", "certPem": other.root_pem})),
    );
    assert_eq!((r.status, code(&r).as_str()), (409, "NAME_IN_USE"));

    // Wrong proofs: a CN that is not the token, a certificate from another key.
    let r = mgmt_raw(
        &gw,
        "POST",
        &format!("/cas/{id}/verify"),
        "text/plain",
        fleet.proof("not-the-token").as_bytes(),
    );
    assert_eq!((r.status, code(&r).as_str()), (400, "INVALID_COMMON_NAME"));
    let r = mgmt_raw(
        &gw,
        "POST",
        &format!("/cas/{id}/verify"),
        "text/plain",
        other.proof(&token).as_bytes(),
    );
    assert_eq!(
        (r.status, code(&r).as_str()),
        (400, "CERTIFICATE_FAILED_VALIDATION")
    );
    let r = mgmt_raw(
        &gw,
        "POST",
        &format!("/cas/{id}/verify"),
        "text/plain",
        b"garbage",
    );
    assert_eq!(
        (r.status, code(&r).as_str()),
        (400, "EXPECTED_PEM_CERTIFICATE")
    );

    // The two openssl commands of the README, then `ca verify`.
    run_ok(
        Command::new("openssl")
            .args([
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "verify.key",
                "-subj",
            ])
            .arg(format!("/CN={token}"))
            .args(["-out", "verify.csr"])
            .current_dir(dir),
    );
    run_ok(
        Command::new("openssl")
            .args([
                "x509",
                "-req",
                "-in",
                "verify.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-out",
                "verify.pem",
            ])
            .current_dir(dir),
    );
    let out = gw.cli(&["ca", "verify", "acme", "--cert", "verify.pem"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = gw.mgmt("GET", &format!("/cas/{id}"), None).json().unwrap()["data"].clone();
    assert_eq!(shown["isVerified"], true);
    assert!(shown["verificationToken"].is_null());
    let out = gw.cli(&["ca", "verify", "acme", "--cert", "verify.pem"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CA_ALREADY_VERIFIED"));

    // Verified: the same device now auto-enrolls; the cache followed without a restart.
    let r = ca_enroll(&dev, &gw, None);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let new_id = r.json().unwrap()["data"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ident = gw
        .mgmt("GET", &format!("/identities/{new_id}"), None)
        .json()
        .unwrap()["data"]
        .clone();
    assert_eq!(ident["name"], "acme-dev-1");
    assert_eq!(ident["roleAttributes"], json!(["sensors", "acme"]));
    assert_eq!(ident["authenticators"]["cert"]["issuedByNetwork"], false);

    // Update from the CLI: turn auto-enrollment off.
    let out = gw.cli(&[
        "ca",
        "update",
        "acme",
        "--auto",
        "false",
        "--name",
        "acme-fleet",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It says what changed, not the whole CA with its PEM.
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        said.lines().collect::<Vec<_>>(),
        [
            "CA 'acme-fleet': name 'acme' -> 'acme-fleet'",
            "CA 'acme-fleet': auto true -> false"
        ],
        "{said}"
    );
    let out = gw.cli(&["ca", "update", "acme-fleet", "--auto", "false"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "CA 'acme-fleet': nothing changed"
    );
    let r = ca_enroll(&fleet.device(&Spec::new("dev-2")), &gw, None);
    assert_eq!(code(&r), "CERT_FAILED_VALIDATION");
    let out = gw.cli(&["ca", "list"]);
    // The CA's dates are shown: outside them it anchors nothing.
    let shown = gw.mgmt("GET", &format!("/cas/{id}"), None).json().unwrap();
    let not_after = shown["data"]["notAfter"].as_str().unwrap().to_owned();
    assert!(not_after.ends_with('Z') && shown["data"]["notBefore"].is_string());
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed
            .lines()
            .any(|l| l.contains("acme-fleet") && l.ends_with(&not_after)),
        "{listed}"
    );

    // The CA JWT: em=ca, sub = jti = CA id, no expiry, signed by the listener's key.
    let out = gw.cli(&["ca", "jwt", "acme-fleet", "-o", "ca.jwt"]);
    assert!(out.status.success());
    let jwt = std::fs::read_to_string(dir.join("ca.jwt")).unwrap();
    let (_, claims) = enrollgate::token::jwt::peek(jwt.trim()).unwrap();
    assert_eq!(
        (claims.em.as_str(), claims.sub.as_str(), claims.jti.as_str()),
        ("ca", id.as_str(), id.as_str())
    );
    assert_eq!(claims.exp, None);

    // Delete: acme-dev-1 enrolled through the CA, so the CLI says so and wants --yes.
    let before = gw.snapshot();
    let out = gw.cli(&["ca", "delete", "acme-fleet"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("CA 'acme-fleet' has identities bound to it:")
            && err.contains("- 1 enrolled through it (acme-dev-1)")
            && err.contains("--yes"),
        "{err}"
    );
    assert_eq!(gw.snapshot(), before);
    let bound = gw
        .mgmt("GET", &format!("/cas/{id}/bound-identities"), None)
        .json()
        .unwrap()["data"]
        .clone();
    assert_eq!(
        bound,
        json!({"enrolledCount": 1, "enrolled": [{"id": new_id, "name": "acme-dev-1"}],
               "pendingOttcaCount": 0, "pendingOttca": []})
    );
    // With --yes: gone from the cache at once; the identity stays.
    let out = gw.cli(&["ca", "delete", "acme-fleet", "--yes"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(gw.mgmt("GET", &format!("/cas/{id}"), None).status, 404);
    assert_eq!(
        gw.mgmt("GET", &format!("/identities/{new_id}"), None)
            .status,
        200
    );
}

#[test]
fn bad_ca_uploads_get_their_codes() {
    let gw = Gateway::start();
    let fleet = Fleet::new("x");
    let leaf = fleet.device(&Spec::new("leaf"));
    let leaf_only = pem::parse_many(&leaf.chain_pem).unwrap();
    let leaf_pem = pem::encode(&leaf_only[0]);
    let cases = [
        (
            json!({"name": "a", "certPem": "garbage"}),
            400,
            "EXPECTED_PEM_CERTIFICATE",
        ),
        (
            json!({"name": "a", "certPem": format!("{}{}", fleet.root_pem, fleet.inter_pem)}),
            400,
            "EXPECTED_PEM_CERTIFICATE",
        ),
        (
            json!({"name": "a", "certPem": format!("junk {}", fleet.root_pem)}),
            400,
            "EXPECTED_PEM_CERTIFICATE",
        ),
        (
            json!({"name": "a", "certPem": leaf_pem}),
            400,
            "CERTIFICATE_FAILED_VALIDATION",
        ),
        (json!({"name": "a"}), 400, "COULD_NOT_PARSE_BODY"),
        (
            json!({"name": "a", "certPem": fleet.root_pem, "identityNameFormat": "[caName]-[serial]"}),
            400,
            "COULD_NOT_PARSE_BODY",
        ),
    ];
    let before = gw.mgmt("GET", "/cas", None).json().unwrap();
    for (body, status, want) in cases {
        let r = gw.mgmt("POST", "/cas", Some(&body));
        assert_eq!((r.status, code(&r).as_str()), (status, want), "{body}");
    }
    // An expired CA would anchor nothing: refused, with its date.
    let expired = {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "old root");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.not_before = time::OffsetDateTime::from_unix_timestamp(1_600_000_000).unwrap();
        p.not_after = time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        p.self_signed(&key).unwrap().pem()
    };
    let r = gw.mgmt(
        "POST",
        "/cas",
        Some(&json!({"name": "old", "certPem": expired})),
    );
    assert_eq!(
        (r.status, code(&r).as_str()),
        (400, "CERTIFICATE_FAILED_VALIDATION")
    );
    let body = String::from_utf8_lossy(&r.body);
    assert!(
        body.contains("the CA certificate expired on 2023-11-14T22:13:20Z"),
        "{body}"
    );
    assert_eq!(gw.mgmt("GET", "/cas", None).json().unwrap(), before);
}

#[test]
fn auto_enrollment_by_curl_and_cli_names_collisions_and_authentication() {
    let gw = Gateway::start();
    let dir = gw.dir.path();
    let fleet = Fleet::new("fleet");
    let ca_id = fleet.register(&gw, "fleet", true, false, true);

    // curl, a client we did not write, auto-enrolls with its certificate.
    let dev = fleet.device(&Spec::new("sensor-7"));
    let (crt, key) = dev.write(dir, "sensor-7");
    let out = run_ok(
        Command::new("curl")
            .args(["-sS", "--fail-with-body", "-X", "POST", "--cacert"])
            .arg(gw.ca_file())
            .arg("--cert")
            .arg(&crt)
            .arg("--key")
            .arg(&key)
            .arg(format!(
                "{}/edge/client/v1/enroll?method=ca&token=ignored",
                gw.url()
            )),
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    let id = v["data"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        gw.mgmt("GET", &format!("/identities/{id}"), None)
            .json()
            .unwrap()["data"]["name"],
        "fleet-sensor-7"
    );

    // The same certificate again: 409 CERT_IN_USE.
    let r = ca_enroll(&dev, &gw, None);
    assert_eq!((r.status, code(&r).as_str()), (409, "CERT_IN_USE"));

    // Another device with the same CN: the smallest free suffix.
    let twin = fleet.device(&Spec::new("sensor-7"));
    let r = ca_enroll(&twin, &gw, None);
    let twin_id = r.json().unwrap()["data"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        gw.mgmt("GET", &format!("/identities/{twin_id}"), None)
            .json()
            .unwrap()["data"]["name"],
        "fleet-sensor-7-000001"
    );

    // As the Go SDK's older path sends it: text/plain, empty body (no name).
    let sdk = fleet.device(&Spec::new("sdk-style"));
    let r = sdk.request(
        &gw,
        "POST",
        "/edge/client/v1/enroll?method=ca",
        &[("Content-Type", "text/plain")],
        b"",
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    // A requested name, through the CLI with the CA JWT: used only where the CA's format
    // asks for it, as in OpenZiti.
    let jwt = gw.mgmt("GET", &format!("/cas/{ca_id}/jwt"), None);
    assert_eq!(jwt.header("content-type"), Some("application/jwt"));
    std::fs::write(dir.join("ca.jwt"), &jwt.body).unwrap();
    let named = |cn: &str, out: &str| {
        fleet.device(&Spec::new(cn)).write(dir, cn);
        let (crt, key) = (format!("{cn}.crt"), format!("{cn}.key"));
        let out = gw.cli(&[
            "enroll",
            "--jwt",
            "ca.jwt",
            "--cert",
            &crt,
            "--key",
            &key,
            "--idname",
            "hall-3-sensor",
            "--out",
            out,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let count = |name: &str| {
        let q: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("filter", &format!("name = \"{name}\""))
            .finish();
        gw.mgmt("GET", &format!("/identities?{q}"), None)
            .json()
            .unwrap()["meta"]["pagination"]["totalCount"]
            .clone()
    };
    named("sensor-8", "s8.json");
    assert_eq!(
        count("fleet-sensor-8"),
        1,
        "the format has no [requestedName]"
    );
    assert_eq!(count("hall-3-sensor"), 0);
    // Nor is it checked there: a name that would be refused does not stop the enrollment.
    let long = "n".repeat(300);
    for (cn, bad) in [("sensor-10", " padded\t"), ("sensor-11", long.as_str())] {
        let r = ca_enroll(
            &fleet.device(&Spec::new(cn)),
            &gw,
            Some(&json!({"name": bad})),
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(count(&format!("fleet-{cn}")), 1);
    }
    let r = gw.mgmt(
        "PATCH",
        &format!("/cas/{ca_id}"),
        Some(&json!({"identityNameFormat": "[caName]-[requestedName]"})),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    named("sensor-9", "s9.json");
    assert_eq!(count("fleet-hall-3-sensor"), 1);
    // Where the format uses it, the name it gives is checked whole, and nothing is stored.
    let before = gw.snapshot();
    for bad in ["tab\tname", long.as_str()] {
        let r = ca_enroll(
            &fleet.device(&Spec::new("sensor-12")),
            &gw,
            Some(&json!({"name": bad})),
        );
        assert_eq!(
            (r.status, code(&r).as_str()),
            (400, "INVALID_NAME"),
            "{bad:?}"
        );
    }
    assert_eq!(gw.snapshot(), before);

    // The enrolled certificate authenticates...
    let r = authenticate(&dev, &gw);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let session = r.header("zt-session").unwrap().to_string();
    let v = r.json().unwrap();
    assert_eq!(v["data"]["identity"]["id"], id.as_str());
    let me = gw.request(
        "GET",
        "/edge/client/v1/current-identity",
        &[("zt-session", &session)],
        b"",
    );
    assert_eq!(me.json().unwrap()["data"]["name"], "fleet-sensor-7");
    // ... an unbound one does not ...
    let stranger = fleet.device(&Spec::new("unbound"));
    let r = authenticate(&stranger, &gw);
    assert_eq!((r.status, code(&r).as_str()), (401, "INVALID_AUTH"));
    // ... and once the CA loses isAuthEnabled, neither does the bound one.
    let r = gw.mgmt(
        "PATCH",
        &format!("/cas/{ca_id}"),
        Some(&json!({"isAuthEnabled": false})),
    );
    assert_eq!(r.status, 200);
    let r = authenticate(&dev, &gw);
    assert_eq!((r.status, code(&r).as_str()), (401, "INVALID_AUTH"));
}

#[test]
fn ottca_binds_a_certificate_from_the_tokens_ca_only() {
    let gw = Gateway::start();
    let dir = gw.dir.path();
    let fleet = Fleet::new("ops");
    let ca_id = fleet.register(&gw, "ops", false, true, true);
    let other = Fleet::new("elsewhere");
    other.register(&gw, "elsewhere", true, true, true);

    let out = gw.cli(&[
        "identity", "create", "device", "plc-1", "--ca", "ops", "-o", "plc.jwt",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jwt = std::fs::read_to_string(dir.join("plc.jwt")).unwrap();
    let (_, claims) = enrollgate::token::jwt::peek(jwt.trim()).unwrap();
    assert_eq!(claims.em, "ottca");
    let token = claims.jti;

    // No certificate, a certificate from another CA: refused, token kept.
    let r = gw.request(
        "POST",
        &format!("/enroll?method=ottca&token={token}"),
        &[],
        b"",
    );
    assert_eq!(code(&r), "CERTIFICATE_FAILED_VALIDATION");
    let foreign = other.device(&Spec::new("plc-1"));
    let r = foreign.request(
        &gw,
        "POST",
        &format!("/enroll?method=ottca&token={token}"),
        &[],
        b"",
    );
    assert_eq!(code(&r), "CERTIFICATE_FAILED_VALIDATION");
    let body = String::from_utf8_lossy(&r.body);
    assert!(
        body.contains("the certificate's CA ('elsewhere') is not the CA of this token, 'ops'"),
        "{body}"
    );
    // The ott route does not redeem an ottca token.
    let r = gw.request(
        "POST",
        &format!("/enroll?method=ott&token={token}"),
        &[],
        b"x",
    );
    assert_eq!(code(&r), "INVALID_ENROLL_METHOD");

    // The CLI enrolls with the right certificate (and says so when its files are swapped,
    // before the token is spent).
    let dev = fleet.device(&Spec::new("plc-1"));
    dev.write(dir, "plc");
    let out = gw.cli(&[
        "enroll", "--jwt", "plc.jwt", "--cert", "plc.key", "--key", "plc.crt", "--out", "plc.json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("plc.key") && err.contains("swapped"), "{err}");
    // A certificate in DER, a key with a passphrase: each named, the token kept.
    run_ok(
        Command::new("openssl")
            .args([
                "x509", "-in", "plc.crt", "-outform", "der", "-out", "plc.der",
            ])
            .current_dir(dir),
    );
    run_ok(
        Command::new("openssl")
            .args([
                "pkey",
                "-in",
                "plc.key",
                "-aes256",
                "-passout",
                "pass:secret",
            ])
            .args(["-out", "plc-enc.key"])
            .current_dir(dir),
    );
    for (cert, key, says) in [
        ("plc.der", "plc.key", "plc.der: not a PEM file (DER?"),
        (
            "plc.crt",
            "plc-enc.key",
            "plc-enc.key: the private key is encrypted",
        ),
    ] {
        let out = gw.cli(&[
            "enroll", "--jwt", "plc.jwt", "--cert", cert, "--key", key, "--out", "plc.json",
        ]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{err}");
    }
    let out = gw.cli(&[
        "enroll", "--jwt", "plc.jwt", "--cert", "plc.crt", "--key", "plc.key", "--out", "plc.json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = gw
        .mgmt("GET", "/identities?filter=name%20%3D%20%22plc-1%22", None)
        .json()
        .unwrap()["data"][0]
        .clone();
    assert_eq!(shown["hasEnrolled"], true);
    assert_eq!(shown["authenticators"]["cert"]["method"], "ottca");
    // Its identity file authenticates.
    let r = gw.request_as(
        &dir.join("plc.json"),
        "POST",
        "/authenticate?method=cert",
        None,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    // An admin enrolled with a certificate from this CA manages only while the CA allows
    // authentication.
    let out = gw.cli(&[
        "identity",
        "create",
        "user",
        "ops-admin",
        "--admin",
        "--ca",
        "ops",
        "-o",
        "adm.jwt",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let adm = fleet.device(&Spec::new("ops-admin"));
    adm.write(dir, "adm");
    let out = gw.cli(&[
        "enroll", "--jwt", "adm.jwt", "--cert", "adm.crt", "--key", "adm.key", "--out", "adm.json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = gw.request_as(
        &dir.join("adm.json"),
        "GET",
        "/edge/management/v1/cas",
        None,
    );
    assert_eq!(r.status, 200);
    let r = gw.mgmt(
        "PATCH",
        &format!("/cas/{ca_id}"),
        Some(&json!({"isAuthEnabled": false})),
    );
    assert_eq!(r.status, 200);
    let r = gw.request_as(
        &dir.join("adm.json"),
        "GET",
        "/edge/management/v1/cas",
        None,
    );
    assert_eq!((r.status, code(&r).as_str()), (401, "UNAUTHORIZED"));
    let r = gw.mgmt(
        "PATCH",
        &format!("/cas/{ca_id}"),
        Some(&json!({"isAuthEnabled": true})),
    );
    assert_eq!(r.status, 200);

    // Bound through ottca: it cannot also auto-enroll (the other direction below).
    let r = ca_enroll(&dev, &gw, None);
    assert_eq!(
        code(&r),
        "CERT_FAILED_VALIDATION",
        "ops does not allow auto-enrollment"
    );
    let r = gw.mgmt(
        "PATCH",
        &format!("/cas/{ca_id}"),
        Some(&json!({"isAutoCaEnrollmentEnabled": true})),
    );
    assert_eq!(r.status, 200);
    let r = ca_enroll(&dev, &gw, None);
    assert_eq!((r.status, code(&r).as_str()), (409, "CERT_IN_USE"));

    // An auto-enrolled certificate cannot redeem an ottca token.
    let auto_dev = fleet.device(&Spec::new("auto-1"));
    assert_eq!(ca_enroll(&auto_dev, &gw, None).status, 200);
    let r = gw.mgmt(
        "POST",
        "/identities",
        Some(&json!({"name": "plc-2", "type": "Device", "enrollment": {"ottca": ca_id}})),
    );
    let token2 = r.json().unwrap()["data"]["enrollment"]["ottca"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = auto_dev.request(
        &gw,
        "POST",
        "/enroll/ottca",
        &[("Content-Type", "application/json")],
        json!({"token": token2}).to_string().as_bytes(),
    );
    assert_eq!((r.status, code(&r).as_str()), (409, "CERT_IN_USE"));

    // The CA loses ottca: the token can no longer be redeemed.
    let r = gw.mgmt(
        "PATCH",
        &format!("/cas/{ca_id}"),
        Some(&json!({"isOttCaEnrollmentEnabled": false})),
    );
    assert_eq!(r.status, 200);
    let fresh = fleet.device(&Spec::new("plc-2"));
    let r = fresh.request(
        &gw,
        "POST",
        &format!("/enroll?method=ottca&token={token2}"),
        &[],
        b"",
    );
    assert_eq!(
        (r.status, code(&r).as_str()),
        (400, "ENROLLMENT_CA_NOT_VALID")
    );

    // The CA deleted: a new token for plc-2 would be bound to it, and is refused. The
    // CLI first names what the deletion touches: plc-2's pending ottca token.
    let out = gw.cli(&["ca", "delete", "ops"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("- 1 waiting to enroll by ottca through it (plc-2)"),
        "{err}"
    );
    let out = gw.cli(&["ca", "delete", "ops", "--yes"]);
    assert!(out.status.success(), "{out:?}");
    let before = gw.snapshot();
    let out = gw.cli(&["identity", "reissue", "plc-2", "-o", "plc2.jwt"]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ENROLLMENT_CA_NOT_VALID") && err.contains("no longer exists"),
        "{err}"
    );
    assert!(!dir.join("plc2.jwt").exists());
    assert_eq!(gw.snapshot(), before);
}

#[test]
fn bad_chains_get_their_codes_and_change_nothing() {
    let gw = Gateway::start();
    let fleet = Fleet::new("fleet");
    fleet.register(&gw, "fleet", true, true, true);
    let unverified = Fleet::new("unverified");
    let r = gw.mgmt("POST", "/cas", Some(&json!({"name": "unverified", "certPem": unverified.root_pem, "isAutoCaEnrollmentEnabled": true})));
    assert_eq!(r.status, 201);
    let disabled = Fleet::new("disabled");
    disabled.register(&gw, "disabled", false, true, true);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;

    let mut expired = Spec::new("expired");
    expired.not_before = now - 10 * 86_400;
    expired.not_after = now - 86_400;
    let mut future = Spec::new("future");
    future.not_before = now + 86_400;
    future.not_after = now + 10 * 86_400;
    let mut no_inter = Spec::new("no-intermediate");
    no_inter.include_intermediate = false;
    let mut server_only = Spec::new("server-eku");
    server_only.eku = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let self_signed = {
        let c = rcgen::generate_simple_self_signed(vec!["self".into()]).unwrap();
        Device {
            chain_pem: c.cert.pem(),
            key_pem: c.signing_key.serialize_pem(),
        }
    };
    let deep = {
        // 20 certificates: the leaf and 19 copies of the intermediate.
        let d = fleet.device(&Spec::new("deep"));
        let leaf = pem::parse_many(&d.chain_pem).unwrap()[0].clone();
        let mut chain = pem::encode(&leaf);
        for _ in 0..19 {
            chain.push_str(&fleet.inter_pem);
        }
        Device {
            chain_pem: chain,
            key_pem: d.key_pem,
        }
    };
    let huge = {
        let key = rcgen::KeyPair::generate().unwrap();
        let sans: Vec<String> = (0..600)
            .map(|i| format!("host-{i:04}.a-rather-long-domain-name.example.org"))
            .collect();
        let cert = rcgen::CertificateParams::new(sans)
            .unwrap()
            .self_signed(&key)
            .unwrap();
        Device {
            chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    };
    assert!(huge.chain_pem.len() > 30_000);

    let before = gw.snapshot();
    let cases: Vec<(&str, Device)> = vec![
        ("expired", fleet.device(&expired)),
        ("not yet valid", fleet.device(&future)),
        ("unverified CA", unverified.device(&Spec::new("u"))),
        ("auto disabled", disabled.device(&Spec::new("d"))),
        ("missing intermediate", fleet.device(&no_inter)),
        ("serverAuth only", fleet.device(&server_only)),
        ("self-signed", self_signed),
        ("20 deep", deep),
        ("huge", huge),
    ];
    for (what, dev) in cases {
        let r = ca_enroll(&dev, &gw, None);
        let body = String::from_utf8_lossy(&r.body);
        assert_eq!(
            (r.status, code(&r).as_str()),
            (400, "CERT_FAILED_VALIDATION"),
            "{what}: {body}"
        );
        // The log has the refusal under the requestId the device got, with its reason.
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        let id = v["error"]["requestId"].as_str().unwrap().to_owned();
        let line = wait_for_line(&gw, &id);
        assert!(
            line.contains("enrollment refused")
                && line.contains("CERT_FAILED_VALIDATION")
                && line.contains("127.0.0.1"),
            "{what}: {line}"
        );
        // The reason names what is at fault.
        let says = match what {
            "expired" => "the certificate expired on",
            "not yet valid" => "the certificate is not valid until",
            "unverified CA" => {
                "CA ('unverified') is not verified or does not allow auto-enrollment"
            }
            "auto disabled" => "CA ('disabled') is not verified or does not allow auto-enrollment",
            "serverAuth only" => "not for client authentication",
            "self-signed" | "huge" => "not issued by any CA known to this gateway",
            "20 deep" => "20 certificates; at most 10 are accepted",
            "missing intermediate" => {
                "(CN=fleet intermediate); if that is an intermediate, send it after the certificate"
            }
            other => panic!("no expected reason for '{other}'"),
        };
        assert!(body.contains(says), "{what}: {body}");
    }
    let r = gw.request("POST", "/enroll?method=ca", &[], b"");
    assert_eq!(code(&r), "CERT_FAILED_VALIDATION", "no certificate");
    let mut no_cn = Spec::new("x");
    no_cn.cn = None;
    let r = ca_enroll(&fleet.device(&no_cn), &gw, None);
    assert_eq!(code(&r), "INVALID_COMMON_NAME");
    assert_eq!(gw.snapshot(), before);
    assert!(!gw.log().contains("panicked"));
    // Still serving.
    assert_eq!(
        ca_enroll(&fleet.device(&Spec::new("fine")), &gw, None).status,
        200
    );
}

#[test]
fn a_thousand_racing_auto_enrollments() {
    let gw = Gateway::start();
    let fleet = Fleet::new("swarm");
    fleet.register(&gw, "swarm", true, false, false);

    // The same certificate, 1,000 times at once, over both workers: one identity.
    let dev = fleet.device(&Spec::new("twin"));
    let responses = race_exact(&gw, vec![dev; 1000]);
    let ok = responses.iter().filter(|r| r.status == 200).count();
    assert_eq!(ok, 1, "exactly one identity");
    for r in responses.iter().filter(|r| r.status != 200) {
        assert_eq!((r.status, code(r).as_str()), (409, "CERT_IN_USE"));
    }

    // 1,000 distinct certificates whose template yields the same name: 1,000 names.
    let devices: Vec<Device> = (0..1000)
        .map(|_| fleet.device(&Spec::new("same")))
        .collect();
    let responses = race_exact(&gw, devices);
    assert!(
        responses.iter().all(|r| r.status == 200),
        "{:?}",
        responses
            .iter()
            .find(|r| r.status != 200)
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
    );
    let names = crate::fleet::distinct_names(&gw, "swarm-same");
    assert_eq!(names.len(), 1000);
    assert!(names.contains(&"swarm-same".to_string()));
    assert!(names.contains(&"swarm-same-000999".to_string()));
    assert!(!gw.log().contains("UNHANDLED"));

    // 2,000 chains of two signatures each. Each worker checks the shared intermediate's
    // signature once (the twin's leaf too), then remembers it: about 1,000 leaf checks in
    // all, not 4,000 checks.
    let m = gw.metrics_text();
    let checked = metric(&m, "enrollgate_chain_signatures_total{result=\"checked\"}");
    let remembered = metric(
        &m,
        "enrollgate_chain_signatures_total{result=\"remembered\"}",
    );
    assert_eq!(checked + remembered, 4000.0, "{m}");
    // Gateway::start runs 2 workers; each checks the twin's two signatures once.
    let workers = 2.0;
    assert!(
        checked <= 1000.0 + 2.0 * workers && remembered >= 3000.0 - 2.0 * workers,
        "{checked} / {remembered}"
    );
}

fn race_exact(gw: &Gateway, devices: Vec<Device>) -> Vec<enrollgate::client::HttpResponse> {
    crate::fleet::race(&[gw.port], &gw.ca_certs(), devices)
}

/// `openssl x509 -req` without an extensions file makes an X.509 version 1 certificate,
/// which webpki does not take. A device presenting one still completes the handshake
/// (its key is checked) and gets `CERT_FAILED_VALIDATION` saying why, over TLS 1.3 and
/// 1.2, with nothing stored; our CLI says so before connecting; the same key certified as
/// version 3 (the README's recipe, with -extfile) enrolls.
#[test]
fn a_version_1_device_certificate_is_refused_with_its_reason() {
    let gw = Gateway::start();
    let dir = gw.dir.path();
    let fleet = Fleet::new("v1");
    let ca_id = fleet.register(&gw, "v1", true, false, true);
    std::fs::write(dir.join("v1-ca.pem"), &fleet.root_pem).unwrap();
    std::fs::write(dir.join("v1-ca.key"), fleet.root_key.serialize_pem()).unwrap();
    run_ok(
        Command::new("openssl")
            .args([
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args([
                "-nodes",
                "-keyout",
                "dev.key",
                "-subj",
                "/CN=dev-1",
                "-out",
                "dev.csr",
            ])
            .current_dir(dir),
    );
    let sign = |out: &str, extfile: Option<&str>| {
        let mut cmd = Command::new("openssl");
        cmd.args(["x509", "-req", "-in", "dev.csr", "-CA", "v1-ca.pem"])
            .args([
                "-CAkey",
                "v1-ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-out",
                out,
            ]);
        if let Some(ext) = extfile {
            cmd.args(["-extfile", ext]);
        }
        run_ok(cmd.current_dir(dir));
    };
    sign("dev-v1.pem", None);
    let text = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in", "dev-v1.pem"])
            .current_dir(dir),
    );
    assert!(text.contains("Version: 1"), "{text}");
    let identities = || {
        gw.mgmt("GET", "/identities", None).json().unwrap()["meta"]["pagination"]["totalCount"]
            .clone()
    };
    let before = identities();
    let url = format!("{}/edge/client/v1/enroll?method=ca", gw.url());
    let curl = |cert: &str, tls: &[&str]| {
        let out = Command::new("curl")
            .args(["-sS", "-X", "POST", "-w", "\n%{http_code}", "--cacert"])
            .arg(gw.ca_file())
            .args(tls)
            .args(["--cert", cert, "--key", "dev.key"])
            .arg(&url)
            .current_dir(dir)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", ""));
        (
            status.trim().to_string(),
            body.to_string(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for tls in [&["--tlsv1.3"][..], &["--tls-max", "1.2"][..]] {
        let (status, body, stderr) = curl("dev-v1.pem", tls);
        assert_eq!(status, "400", "{tls:?}: {body} {stderr}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "CERT_FAILED_VALIDATION", "{body}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("not X.509 version 3"),
            "{body}"
        );
    }
    assert_eq!(identities(), before, "nothing was stored");

    // Our CLI refuses it before connecting, naming the file and the cure.
    let jwt = gw.mgmt("GET", &format!("/cas/{ca_id}/jwt"), None);
    std::fs::write(dir.join("v1.jwt"), &jwt.body).unwrap();
    let out = gw.cli(&[
        "enroll",
        "--jwt",
        "v1.jwt",
        "--cert",
        "dev-v1.pem",
        "--key",
        "dev.key",
        "--out",
        "dev.json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("dev-v1.pem: the certificate is X.509 version 1")
            && stderr.contains("-extfile"),
        "{stderr}"
    );
    assert!(!dir.join("dev.json").exists());

    // The README's recipe: the same key, certified as version 3.
    std::fs::write(
        dir.join("device.ext"),
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    sign("dev-v3.pem", Some("device.ext"));
    let (status, body, stderr) = curl("dev-v3.pem", &["--tlsv1.3"]);
    assert_eq!(status, "200", "{body} {stderr}");
    assert_eq!(
        gw.mgmt(
            "GET",
            "/identities?filter=name%20%3D%20%22v1-dev-1%22",
            None
        )
        .json()
        .unwrap()["meta"]["pagination"]["totalCount"],
        1
    );
}

/// An ECDSA signature (r, s) also verifies as (r, n - s): a device re-encoding its
/// certificate's signature has a new DER and a new fingerprint, but the same certificate.
/// It binds no second identity (CERT_IN_USE, by content), and the mauled copy does not
/// authenticate as the first; our signature check accepts it, so this is not refused
/// earlier.
#[test]
fn another_encoding_of_a_bound_certificate_binds_no_second_identity() {
    let gw = Gateway::start();
    let fleet = Fleet::new("maul");
    fleet.register(&gw, "maul", true, false, true);
    let dev = fleet.device(&Spec::new("dev-7"));
    let twin = dev.with_mauled_signature();
    assert_ne!(dev.chain()[0], twin.chain()[0], "another DER");
    let count = || {
        gw.mgmt("GET", "/identities", None).json().unwrap()["meta"]["pagination"]["totalCount"]
            .as_u64()
            .unwrap()
    };
    let before = count();
    let r = ca_enroll(&dev, &gw, None);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // The twin completes the handshake and passes the chain check: its signature is good.
    let r = ca_enroll(&twin, &gw, None);
    assert_eq!(
        (r.status, code(&r).as_str()),
        (409, "CERT_IN_USE"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(count(), before + 1, "one identity for one certificate");
    let r = authenticate(&twin, &gw);
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
    let r = authenticate(&dev, &gw);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

/// An ottca token for a CA that cannot redeem it yet (unverified, or without ottca) is
/// made, since the CA may be verified later, but the CLI says so.
#[test]
fn the_cli_notes_an_ottca_token_its_ca_cannot_redeem_yet() {
    let gw = Gateway::start();
    let fleet = Fleet::new("later");
    let body = json!({
        "name": "later",
        "certPem": fleet.root_pem,
        "isAutoCaEnrollmentEnabled": false,
        "isOttCaEnrollmentEnabled": false,
        "isAuthEnabled": false,
    });
    let r = gw.mgmt("POST", "/cas", Some(&body));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let out = gw.cli(&[
        "identity",
        "create",
        "device",
        "plc-9",
        "--ca",
        "later",
        "-o",
        "plc-9.jwt",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not verified") && err.contains("does not allow ottca"),
        "{err}"
    );
    assert!(gw.dir.path().join("plc-9.jwt").exists());
    // A usable CA gets no note.
    let ready = Fleet::new("ready");
    ready.register(&gw, "ready", false, true, false);
    let out = gw.cli(&[
        "identity",
        "create",
        "device",
        "plc-10",
        "--ca",
        "ready",
        "-o",
        "plc-10.jwt",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("note:"));
}

/// Expiry visible before it bites: `identity list --expiring`, the API's
/// `certExpiringWithin`, and the gauges an alert watches, all count the same certificates.
#[test]
fn expiring_certificates_are_listed_and_counted() {
    let mut gw = Gateway::start();
    let fleet = Fleet::new("exp");
    fleet.register(&gw, "exp", true, false, true);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    const DAY: i64 = 86_400;
    for (cn, days) in [("soon", 3), ("month", 20), ("later", 90)] {
        let mut spec = Spec::new(cn);
        spec.not_after = now + days * DAY;
        let r = ca_enroll(&fleet.device(&spec), &gw, None);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    let names = |within: &str| -> Vec<String> {
        let r = gw.mgmt(
            "GET",
            &format!("/identities?certExpiringWithin={within}"),
            None,
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let v = r.json().unwrap();
        let data = v["data"].as_array().unwrap().clone();
        assert_eq!(v["meta"]["pagination"]["totalCount"], data.len());
        data.iter()
            .map(|i| i["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names("7d"), ["exp-soon"]);
    assert_eq!(names("30d"), ["exp-month", "exp-soon"]);
    assert_eq!(names("1h"), Vec::<String>::new());
    let r = gw.mgmt("GET", "/identities?certExpiringWithin=soonish", None);
    assert_eq!((r.status, code(&r).as_str()), (400, "INVALID_PARAMETER"));

    // The CLI: the same filter, and each certificate's expiry in the table.
    let out = gw.cli(&["identity", "list", "--expiring", "30d"]);
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert!(
        table.lines().next().unwrap().ends_with("CERT EXPIRES"),
        "{table}"
    );
    let soon = rows.iter().find(|r| r.contains("exp-soon")).unwrap();
    let expires = soon.split_whitespace().last().unwrap();
    let shown = gw
        .mgmt(
            "GET",
            "/identities?filter=name%20%3D%20%22exp-soon%22",
            None,
        )
        .json()
        .unwrap()["data"][0]["authenticators"]["cert"]["notAfter"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(expires, shown);
    let out = gw.cli(&["identity", "list", "--expiring", "a while"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    // The gauges: counted before the gateway is ready (and every 5 minutes), so after a
    // restart they hold the three devices and the admin identity (whose certificate lasts
    // a year).
    gw.stop();
    gw.spawn(&[]);
    let m = gw.metrics_text();
    for series in [
        "enrollgate_certificates_expiring{within=\"7d\"} ",
        "enrollgate_certificates_expiring{within=\"30d\"} ",
        "enrollgate_certificates_expired ",
        "enrollgate_certificates_bound ",
    ] {
        assert!(
            m.lines().any(|l| l.starts_with(series)),
            "{series} not exported: {m}"
        );
    }
    assert_eq!(
        metric(&m, "enrollgate_certificates_expiring{within=\"7d\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "enrollgate_certificates_expiring{within=\"30d\"}"),
        2.0
    );
    assert_eq!(metric(&m, "enrollgate_certificates_expired"), 0.0);
    assert_eq!(metric(&m, "enrollgate_certificates_bound"), 4.0);
}
