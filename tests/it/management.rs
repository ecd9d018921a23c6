//! The management API: identities, enrollments, authorization.

use std::process::Command;

use serde_json::json;

use crate::support::*;

#[test]
fn identities_are_created_listed_paged_filtered_shown_and_deleted() {
    let gw = Gateway::start();
    for i in 0..12 {
        let kind = ["User", "Device", "Service"][i % 3];
        gw.create_identity(&format!("dev-{i:02}"), kind, false);
    }
    gw.create_identity("other", "user", false);

    let page = gw
        .mgmt("GET", "/identities?limit=5&offset=3", None)
        .json()
        .unwrap();
    assert_eq!(
        page["meta"]["pagination"]["totalCount"], 14,
        "12 + other + the admin"
    );
    assert_eq!(page["meta"]["pagination"]["limit"], 5);
    assert_eq!(page["data"].as_array().unwrap().len(), 5);
    let names: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["dev-02", "dev-03", "dev-04", "dev-05", "dev-06"],
        "name order"
    );

    let big = gw.mgmt("GET", "/identities?limit=500", None);
    assert_eq!(big.status, 200);
    let filtered = gw
        .mgmt(
            "GET",
            "/identities?filter=name%20contains%20%22dev-1%22",
            None,
        )
        .json()
        .unwrap();
    assert_eq!(filtered["meta"]["pagination"]["totalCount"], 2);
    let starts = gw
        .mgmt(
            "GET",
            "/identities?filter=name%20startswith%20%22oth%22",
            None,
        )
        .json()
        .unwrap();
    assert_eq!(starts["data"][0]["name"], "other");
    assert_eq!(starts["data"][0]["type"], "User");

    let bad = gw.mgmt("GET", "/identities?limit=0", None);
    assert_eq!(
        (bad.status, code(&bad).as_str()),
        (400, "INVALID_PARAMETER")
    );
    let bad = gw.mgmt("GET", "/identities?filter=role%20%3D%20%22x%22", None);
    assert_eq!(code(&bad), "INVALID_PARAMETER");

    // Show, with the pending enrollment and its JWT.
    let (id, jwt, token) = gw.create_identity("shown", "Device", false);
    let shown = gw
        .mgmt("GET", &format!("/identities/{id}"), None)
        .json()
        .unwrap();
    let d = &shown["data"];
    assert_eq!(d["name"], "shown");
    assert_eq!(d["type"], "Device");
    assert_eq!(d["isAdmin"], false);
    assert_eq!(d["hasEnrolled"], false);
    // The store keeps no JWT: it is signed anew when shown, with the same header and claims.
    let unsigned = |j: &str| j.rsplit_once('.').unwrap().0.to_string();
    let shown_jwt = d["enrollment"]["ott"]["jwt"].as_str().unwrap();
    assert_eq!(unsigned(shown_jwt), unsigned(&jwt));
    let eid = d["enrollment"]["ott"]["id"].as_str().unwrap().to_string();
    let jwt_resp = gw.mgmt("GET", &format!("/enrollments/{eid}/jwt"), None);
    assert_eq!(jwt_resp.header("content-type"), Some("application/jwt"));
    assert_eq!(
        unsigned(&String::from_utf8(jwt_resp.body).unwrap()),
        unsigned(&jwt)
    );

    // The JWT: signed by the listener's key, claims as DESIGN.md says.
    let (header, claims) = enrollgate::token::jwt::peek(&jwt).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    assert_eq!(claims.iss, gw.url());
    assert_eq!(claims.sub, id);
    assert_eq!(claims.jti, token);
    assert_eq!(claims.em, "ott");
    let exp = claims.exp.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (exp - now - 86_400).abs() < 120,
        "exp is 24 h out: {exp} vs {now}"
    );

    // Duplicate names are refused.
    let dup = gw.mgmt(
        "POST",
        "/identities",
        Some(&json!({"name": "shown", "type": "User"})),
    );
    assert_eq!((dup.status, code(&dup).as_str()), (409, "NAME_IN_USE"));

    // Delete: gone, and its token with it.
    let del = gw.mgmt("DELETE", &format!("/identities/{id}"), None);
    assert_eq!(del.status, 200);
    assert_eq!(
        gw.mgmt("GET", &format!("/identities/{id}"), None).status,
        404
    );
    let resp = gw.request(
        "POST",
        &format!("/enroll?method=ott&token={token}"),
        &[],
        b"x",
    );
    assert_eq!(code(&resp), "INVALID_ENROLLMENT_TOKEN");
    assert_eq!(
        gw.mgmt("DELETE", &format!("/identities/{id}"), None).status,
        404
    );
}

#[test]
fn bad_create_requests_are_refused_with_their_codes() {
    let gw = Gateway::start();
    let before = gw.snapshot();
    let cases = [
        (json!({"type": "User"}), "COULD_NOT_PARSE_BODY"),
        (
            json!({"name": "x", "type": "Router"}),
            "COULD_NOT_PARSE_BODY",
        ),
        (json!({"name": " padded", "type": "User"}), "INVALID_NAME"),
        (json!({"name": "", "type": "User"}), "INVALID_NAME"),
        (
            json!({"name": "x", "enrollment": {"ottca": "someca"}}),
            "ENROLLMENT_CA_NOT_VALID",
        ),
        (
            json!({"name": "x", "enrollment": {"ottca": 5}}),
            "COULD_NOT_PARSE_BODY",
        ),
        (
            json!({"name": "x", "enrollment": {"ott": true, "ottca": "x"}}),
            "INVALID_ENROLL_METHOD",
        ),
        (
            json!({"name": "x", "enrollment": {"updb": "x"}}),
            "INVALID_ENROLL_METHOD",
        ),
        (json!({"name": 5}), "COULD_NOT_PARSE_BODY"),
    ];
    for (body, want) in cases {
        let r = gw.mgmt("POST", "/identities", Some(&body));
        assert_eq!(code(&r), want, "{body}");
        assert_eq!(r.status, 400, "{body}");
    }
    let r = gw.request_as(
        &gw.admin_file(),
        "POST",
        "/edge/management/v1/identities",
        None,
    );
    assert_eq!(r.status, 400, "an empty body has no name");
    assert_eq!(gw.snapshot(), before);
}

#[test]
fn expired_tokens_are_refused_and_can_be_reissued() {
    let gw = Gateway::start();
    let dir = gw.dir.path();
    let (id, _, _) = gw.create_identity("late", "Device", false);
    // A token that expires in a few seconds (whole seconds: the request must still see
    // it in the future on a loaded machine).
    let expiry = std::time::SystemTime::now() + std::time::Duration::from_secs(3);
    let soon = humantime::format_rfc3339_seconds(expiry).to_string();
    let e = gw.mgmt(
        "POST",
        "/enrollments",
        Some(&json!({"identityId": id, "method": "ott", "expiresAt": soon})),
    );
    assert_eq!(e.status, 201, "{}", String::from_utf8_lossy(&e.body));
    let e = e.json().unwrap();
    let token = e["data"]["token"].as_str().unwrap().to_string();
    // Past the expiry (which the seconds format may have moved up to a second earlier).
    while std::time::SystemTime::now() < expiry + std::time::Duration::from_millis(100) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    let (_, csr) = openssl_csr(
        dir,
        "late",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let csr = std::fs::read(&csr).unwrap();
    let before = gw.snapshot();
    let r = gw.request(
        "POST",
        &format!("/enroll?method=ott&token={token}"),
        &[],
        &csr,
    );
    assert_eq!((r.status, code(&r).as_str()), (400, "ENROLLMENT_EXPIRED"));
    assert_eq!(gw.snapshot(), before, "an expired token changes nothing");

    // The CLI says so without contacting the server.
    std::fs::write(dir.join("late.jwt"), e["data"]["jwt"].as_str().unwrap()).unwrap();
    let out = gw.cli(&["enroll", "--jwt", "late.jwt", "--out", "late.json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ENROLLMENT_EXPIRED"));

    // Re-issue: a new token works, the old stays dead.
    let out = gw.cli(&["identity", "reissue", "late", "-o", "late2.jwt"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = gw.cli(&["enroll", "--jwt", "late2.jwt", "--out", "late.json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = gw.request(
        "POST",
        &format!("/enroll?method=ott&token={token}"),
        &[],
        &csr,
    );
    assert_eq!(code(&r), "INVALID_ENROLLMENT_TOKEN");

    // Once enrolled, no more tokens.
    let r = gw.mgmt("POST", "/enrollments", Some(&json!({"identityId": id})));
    assert_eq!((r.status, code(&r).as_str()), (409, "INVALID_STATE"));
}

#[test]
fn management_needs_an_admin_certificate() {
    let gw = Gateway::start();
    // No client certificate at all (curl, a client we did not write).
    let out = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(gw.ca_file())
        .arg(format!("{}/edge/management/v1/identities", gw.url()))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "UNAUTHORIZED");
    assert!(v["error"]["requestId"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));

    // The admin's certificate, through curl.
    let admin: serde_json::Value =
        serde_json::from_slice(&std::fs::read(gw.admin_file()).unwrap()).unwrap();
    let dir = gw.dir.path();
    std::fs::write(
        dir.join("admin.crt"),
        admin["id"]["cert"]
            .as_str()
            .unwrap()
            .trim_start_matches("pem:"),
    )
    .unwrap();
    std::fs::write(
        dir.join("admin.key"),
        admin["id"]["key"]
            .as_str()
            .unwrap()
            .trim_start_matches("pem:"),
    )
    .unwrap();
    let out = run_ok(
        Command::new("curl")
            .args(["-sS", "--fail-with-body", "--cacert"])
            .arg(gw.ca_file())
            .arg("--cert")
            .arg(dir.join("admin.crt"))
            .arg("--key")
            .arg(dir.join("admin.key"))
            .arg(format!("{}/edge/management/v1/identities", gw.url())),
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["data"][0]["isAdmin"], true);

    // A certificate from another CA proves possession of its key, but is bound to nothing.
    let other = tempfile::tempdir().unwrap();
    run_ok(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                "/CN=stranger",
                "-days",
                "1",
                "-keyout",
            ])
            .arg(other.path().join("k.pem"))
            .arg("-out")
            .arg(other.path().join("c.pem")),
    );
    let out = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(gw.ca_file())
        .arg("--cert")
        .arg(other.path().join("c.pem"))
        .arg("--key")
        .arg(other.path().join("k.pem"))
        .arg(format!("{}/edge/management/v1/identities", gw.url()))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "UNAUTHORIZED");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not bound"));
    // ... and the gateway keeps serving.
    assert_eq!(gw.request("GET", "/version", &[], b"").status, 200);
}

#[test]
fn a_management_body_without_a_json_content_type_is_refused() {
    // What a cross-site page could make a browser holding an admin certificate send.
    let gw = Gateway::start();
    let before = gw.snapshot();
    let cfg =
        enrollgate::client::config(&gw.ca_certs(), Some(crate::fleet::admin_credentials(&gw)))
            .unwrap();
    let body = br#"{"name":"csrf","type":"User","isAdmin":true}"#;
    let r = enrollgate::client::request(
        cfg,
        "127.0.0.1",
        gw.port,
        "POST",
        "/edge/management/v1/identities",
        &[],
        body,
    )
    .unwrap();
    assert_eq!((r.status, code(&r).as_str()), (415, "UNSUPPORTED_MEDIA"));
    assert_eq!(gw.snapshot(), before);
    // Labelled as JSON, the same body is accepted.
    let r = crate::fleet::mgmt_raw(&gw, "POST", "/identities", "application/json", body);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
}

/// A name equal to another identity's id (an auto-enrolled device may ask for one) does
/// not redirect the CLI: an id names the identity it belongs to, and a name is tried only
/// when no identity has that id.
#[test]
fn the_cli_resolves_an_id_before_a_name_that_copies_it() {
    let gw = Gateway::start();
    let (victim, _, _) = gw.create_identity("victim", "Device", false);
    // A name that is another identity's id is taken: the CLI, which takes an id first,
    // would send that identity's commands elsewhere.
    let r = gw.mgmt(
        "POST",
        "/identities",
        Some(&json!({"name": victim, "type": "Device", "isAdmin": false})),
    );
    assert_eq!((r.status, code(&r).as_str()), (409, "NAME_IN_USE"));
    let out = gw.cli(&["identity", "show", &victim]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(shown.contains("victim"), "{shown}");
    let out = gw.cli(&["identity", "delete", &victim]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        gw.mgmt("GET", &format!("/identities/{victim}"), None)
            .status,
        404
    );
    // With the id gone, the name is free; the CLI resolves it as a name, and says so.
    let (copycat, _, _) = gw.create_identity(&victim, "Device", false);
    let out = gw.cli(&["identity", "delete", &victim]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("no identity has the id"), "{stderr}");
    assert_eq!(
        gw.mgmt("GET", &format!("/identities/{copycat}"), None)
            .status,
        404
    );
}

/// `identity create -o FILE` checks FILE before it creates anything: an existing file is
/// refused with nothing created (the token would have been lost), and a refused create
/// leaves no empty file behind.
#[test]
fn identity_create_checks_its_output_file_first() {
    let gw = Gateway::start();
    let dir = gw.dir.path();
    std::fs::write(dir.join("existing.jwt"), "keep me").unwrap();
    let out = gw.cli(&["identity", "create", "user", "U3", "-o", "existing.jwt"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("existing.jwt"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(dir.join("existing.jwt")).unwrap(),
        "keep me"
    );
    let list = gw
        .mgmt("GET", "/identities?filter=name%20%3D%20%22U3%22", None)
        .json()
        .unwrap();
    assert_eq!(
        list["meta"]["pagination"]["totalCount"], 0,
        "nothing created"
    );
    // A refused create leaves no file.
    let out = gw.cli(&[
        "identity",
        "create",
        "user",
        "Default Admin",
        "-o",
        "dup.jwt",
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NAME_IN_USE"));
    assert!(!dir.join("dup.jwt").exists());
    // And the normal case still writes the token.
    let out = gw.cli(&["identity", "create", "user", "U3", "-o", "u3.jwt"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read_to_string(dir.join("u3.jwt"))
        .unwrap()
        .starts_with("ey"));
}

/// Deleting the only admin identity would leave nobody able to manage the gateway, with no
/// way back but a new data directory: refused, and the admin still works. Once a second
/// admin has enrolled, the first may go, and then the second is the only one.
#[test]
fn the_only_admin_cannot_be_deleted() {
    let gw = Gateway::start();
    let refused = |out: std::process::Output| {
        assert_eq!(out.status.code(), Some(3));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            err.contains("INVALID_STATE") && err.contains("only enrolled admin"),
            "{err}"
        );
    };
    refused(gw.cli(&["identity", "delete", "Default Admin"]));
    assert_eq!(gw.mgmt("GET", "/identities", None).status, 200);

    // A second admin: pending, it does not count; enrolled, it does.
    let out = gw.cli(&[
        "identity", "create", "service", "Ops", "--admin", "-o", "Ops.jwt",
    ]);
    assert!(out.status.success(), "{out:?}");
    refused(gw.cli(&["identity", "delete", "Default Admin"]));
    let out = gw.cli(&["enroll", "--jwt", "Ops.jwt", "--out", "Ops.json"]);
    assert!(out.status.success(), "{out:?}");
    let out = gw.cli(&["identity", "delete", "Default Admin"]);
    assert!(out.status.success(), "{out:?}");

    // Now Ops is the only one: its own deletion is refused, and it still manages.
    let ops = gw.dir.path().join("Ops.json");
    let listed = gw
        .request_as(&ops, "GET", "/edge/management/v1/identities", None)
        .json()
        .unwrap();
    assert_eq!(listed["meta"]["pagination"]["totalCount"], 1, "{listed}");
    let id = listed["data"][0]["id"].as_str().unwrap().to_owned();
    let resp = gw.request_as(
        &ops,
        "DELETE",
        &format!("/edge/management/v1/identities/{id}"),
        None,
    );
    assert_eq!(resp.status, 409);
    assert_eq!(code(&resp), "INVALID_STATE");
    let cfg = gw.dir.path().join("data/enrollgate.toml");
    let out = run_ok(Command::new(BIN).arg("fsck").arg("--config").arg(&cfg));
    assert!(out.contains("no violations"), "{out}");
}

/// The exit code says what kind of failure it was (`cli::Failure`): a script can tell a
/// refusal it should not retry from a gateway it could not reach.
#[test]
fn the_cli_exit_code_says_what_failed() {
    let mut gw = Gateway::start();
    let code = |out: &std::process::Output| out.status.code();

    let ok = gw.cli(&["identity", "create", "device", "exit-codes"]);
    assert_eq!(
        code(&ok),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    // Refused by the gateway (3): a name taken, an identity the gateway does not have.
    let taken = gw.cli(&["identity", "create", "device", "exit-codes"]);
    assert_eq!(code(&taken), Some(3));
    assert!(String::from_utf8_lossy(&taken.stderr).contains("NAME_IN_USE"));
    let unknown = gw.cli(&["identity", "delete", "no-such-identity"]);
    assert_eq!(code(&unknown), Some(3));

    // A command line clap cannot parse (2).
    let usage = gw.cli(&["identity", "create", "robot", "r2"]);
    assert_eq!(code(&usage), Some(2));

    // Local (1): a JWT file that is not there.
    let local = gw.cli(&["enroll", "--jwt", "no-such.jwt", "--out", "x.json"]);
    assert_eq!(code(&local), Some(1));
    assert!(String::from_utf8_lossy(&local.stderr).contains("no-such.jwt"));

    // Unreachable (4): the gateway is stopped.
    gw.stop();
    let gone = gw.cli(&["identity", "list"]);
    assert_eq!(
        code(&gone),
        Some(4),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );
    assert!(String::from_utf8_lossy(&gone.stderr).contains("cannot connect"));
}
