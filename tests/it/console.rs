//! The web console (issue #22): its files and headers, sign-in by one-time link and by
//! admin certificate, admin sessions on the management API, the refusal of cross-site
//! requests, the identity filters, the QR code and the live summary; then the whole console
//! in Debian's chromium, driven by playwright-core (tests/browser/console.mjs), which also
//! takes the README's screenshots.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{code, ott_cert, run_ok, token_of, Gateway};

const MGMT: &str = "/edge/management/v1";

/// A login link made by the CLI, and its code.
fn login_url(gw: &Gateway, extra: &[&str]) -> (String, String) {
    let mut args = vec!["console", "login-url"];
    args.extend_from_slice(extra);
    let out = gw.cli(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let code = url
        .split_once("/console/#login=")
        .map(|(_, c)| c.to_string())
        .unwrap_or_else(|| panic!("not a login link: {url}"));
    (url, code)
}

/// Trades a login code for a session token.
fn sign_in(gw: &Gateway, login: &str) -> Result<String, String> {
    let resp = gw.request(
        "POST",
        &format!("{MGMT}/console/sessions"),
        &[("Content-Type", "application/json")],
        json!({ "code": login }).to_string().as_bytes(),
    );
    match resp.status {
        201 => Ok(resp.json().unwrap()["data"]["token"]
            .as_str()
            .unwrap()
            .to_string()),
        _ => Err(code(&resp)),
    }
}

/// A management GET with only a session header (no client certificate).
fn with_session(gw: &Gateway, token: &str, path: &str) -> enrollgate::client::HttpResponse {
    gw.request(
        "GET",
        &format!("{MGMT}{path}"),
        &[("zt-session", token)],
        b"",
    )
}

#[test]
fn console_files_carry_the_security_headers() {
    let gw = Gateway::start();
    let page = gw.request("GET", "/console/", &[], b"");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert!(page.header("access-control-allow-origin").is_none());
    assert!(page.header("set-cookie").is_none());
    let body = String::from_utf8_lossy(&page.body);
    assert!(body.contains("<script type=\"module\" src=\"app.js\">"));

    let js = gw.request("GET", "/console/app.js", &[], b"");
    assert_eq!(js.status, 200);
    assert_eq!(
        js.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(js.header("x-content-type-options"), Some("nosniff"));

    let bare = gw.request("GET", "/console", &[], b"");
    assert_eq!(bare.status, 308);
    assert_eq!(bare.header("location"), Some("/console/"));
    assert_eq!(gw.request("GET", "/console/nope.js", &[], b"").status, 404);
    let post = gw.request("POST", "/console/", &[], b"");
    assert_eq!(post.status, 405);
}

#[test]
fn cross_site_management_requests_are_refused() {
    let gw = Gateway::start();
    let host = format!("127.0.0.1:{}", gw.port);
    let cases: [(&[(&str, &str)], u16); 6] = [
        (&[("Origin", "https://evil.example")], 403),
        (&[("Sec-Fetch-Site", "cross-site")], 403),
        (&[("Sec-Fetch-Site", "same-site")], 403),
        (&[("Origin", "null")], 403),
        (&[("Sec-Fetch-Site", "same-origin")], 200),
        (&[], 200),
    ];
    let admin = enrollgate::identity_file::IdentityFile::read(&gw.admin_file()).unwrap();
    let cfg = enrollgate::client::config(
        &gw.ca_certs(),
        Some((admin.cert_chain().unwrap(), admin.private_key().unwrap())),
    )
    .unwrap();
    for (headers, want) in cases {
        let resp = enrollgate::client::request(
            cfg.clone(),
            "127.0.0.1",
            gw.port,
            "GET",
            &format!("{MGMT}/identities"),
            headers,
            b"",
        )
        .unwrap();
        assert_eq!(resp.status, want, "{headers:?}: {}", code(&resp));
        if want == 403 {
            assert_eq!(code(&resp), "CROSS_SITE_REQUEST");
        }
    }
    // The page's own origin passes (the client sends Host 127.0.0.1:PORT).
    let same = enrollgate::client::request(
        cfg.clone(),
        "127.0.0.1",
        gw.port,
        "GET",
        &format!("{MGMT}/identities"),
        &[("Origin", &format!("https://{host}"))],
        b"",
    )
    .unwrap();
    assert_eq!(same.status, 200, "{}", code(&same));
    // Certificate sign-in from another site is refused before the certificate counts.
    let cert_sign_in = enrollgate::client::request(
        cfg,
        "127.0.0.1",
        gw.port,
        "POST",
        &format!("{MGMT}/console/sessions/cert"),
        &[
            ("Origin", "https://evil.example"),
            ("Content-Type", "application/json"),
        ],
        b"{}",
    )
    .unwrap();
    assert_eq!(code(&cert_sign_in), "CROSS_SITE_REQUEST");
}

#[test]
fn a_login_link_opens_one_admin_session_once() {
    let gw = Gateway::start();
    let (url, login) = login_url(&gw, &[]);
    assert!(url.starts_with(&format!("https://127.0.0.1:{}/console/#login=", gw.port)));
    assert!(
        !gw.log().contains(&login),
        "the code is not logged by the gateway"
    );
    let token = sign_in(&gw, &login).unwrap();
    assert!(!gw.log().contains(&token), "nor the session token");
    assert_eq!(
        sign_in(&gw, &login),
        Err("INVALID_AUTH".into()),
        "used once"
    );
    // The session alone (no certificate) manages.
    assert_eq!(with_session(&gw, &token, "/identities").status, 200);
    let live = with_session(&gw, &token, "/console/live");
    assert_eq!(live.status, 200);
    assert_eq!(live.json().unwrap()["data"]["available"], true);
    // Without it, or with a made-up one: 401.
    let none = gw.request("GET", &format!("{MGMT}/identities"), &[], b"");
    assert_eq!(code(&none), "UNAUTHORIZED");
    assert_eq!(
        code(&with_session(&gw, "made-up", "/identities")),
        "UNAUTHORIZED"
    );
    // Signing out ends it.
    let out = gw.request(
        "DELETE",
        &format!("{MGMT}/console/sessions/current"),
        &[("zt-session", &token)],
        b"",
    );
    assert_eq!(out.status, 200);
    assert_eq!(
        code(&with_session(&gw, &token, "/identities")),
        "UNAUTHORIZED"
    );
    // Junk codes are refused the same way.
    assert_eq!(sign_in(&gw, "x"), Err("INVALID_AUTH".into()));
}

#[test]
fn an_expired_login_link_is_refused() {
    let gw = Gateway::start();
    let (_, login) = login_url(&gw, &["--valid-for", "1s"]);
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(sign_in(&gw, &login), Err("INVALID_AUTH".into()));
    let too_long = gw.cli(&["console", "login-url", "--valid-for", "1h"]);
    assert!(!too_long.status.success());
}

#[test]
fn sessions_and_links_of_non_admins_do_not_manage() {
    let gw = Gateway::start();
    // A non-admin enrolls and opens an API session with its certificate.
    let (_, _, token) = gw.create_identity("worker", "Device", false);
    let cert = ott_cert(&gw, "worker", &token);
    let key = gw.dir.path().join("worker.key");
    let headers = run_ok(
        Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-D",
                "-",
                "-X",
                "POST",
                "--cacert",
            ])
            .arg(gw.ca_file())
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .arg(format!(
                "{}/edge/client/v1/authenticate?method=cert",
                gw.url()
            )),
    );
    let session = headers
        .lines()
        .find_map(|l| l.strip_prefix("zt-session: "))
        .expect("zt-session header")
        .trim()
        .to_string();
    assert_eq!(
        code(&with_session(&gw, &session, "/identities")),
        "UNAUTHORIZED"
    );
    // Its certificate cannot sign in to the console either.
    let out = run_ok(
        Command::new("curl")
            .args(["-sS", "-X", "POST", "-H", "Content-Type: application/json"])
            .args(["--data", "{}", "--cacert"])
            .arg(gw.ca_file())
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .arg(format!("{}{MGMT}/console/sessions/cert", gw.url())),
    );
    assert!(out.contains("\"UNAUTHORIZED\""), "{out}");

    // An admin's session ends when the admin stops being one: here, deleted.
    let (admin_id, jwt, _) = gw.create_identity("second-admin", "User", true);
    let admin_cert = ott_cert(&gw, "second-admin", &token_of(&jwt));
    let admin_key = gw.dir.path().join("second-admin.key");
    let body = run_ok(
        Command::new("curl")
            .args(["-sS", "-X", "POST", "-H", "Content-Type: application/json"])
            .args(["--data", "{}", "--cacert"])
            .arg(gw.ca_file())
            .arg("--cert")
            .arg(&admin_cert)
            .arg("--key")
            .arg(&admin_key)
            .arg(format!("{}{MGMT}/console/sessions/cert", gw.url())),
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    let admin_session = v["data"]["token"].as_str().expect(&body).to_string();
    assert_eq!(v["data"]["identity"]["name"], "second-admin");
    assert_eq!(with_session(&gw, &admin_session, "/identities").status, 200);
    assert_eq!(
        gw.mgmt("DELETE", &format!("/identities/{admin_id}"), None)
            .status,
        200
    );
    assert_eq!(
        code(&with_session(&gw, &admin_session, "/identities")),
        "UNAUTHORIZED"
    );
}

#[test]
fn identities_filter_by_type_state_and_certificate_expiry() {
    let gw = Gateway::start();
    let (_, _, token) = gw.create_identity("dev-enrolled", "Device", false);
    ott_cert(&gw, "dev-enrolled", &token);
    gw.create_identity("dev-pending", "Device", false);
    gw.create_identity("user-pending", "User", false);
    let (late, _, _) = gw.create_identity("dev-late", "Device", false);
    let soon = enrollgate::clock::rfc3339(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            + 2,
    );
    let resp = gw.mgmt(
        "POST",
        "/enrollments",
        Some(&json!({ "identityId": late, "method": "ott", "expiresAt": soon })),
    );
    assert_eq!(resp.status, 201, "{}", code(&resp));
    std::thread::sleep(Duration::from_millis(3100));
    let names = |query: &str| -> (Vec<String>, u64) {
        let resp = gw.mgmt("GET", &format!("/identities?{query}"), None);
        assert_eq!(resp.status, 200, "{query}: {}", code(&resp));
        let v = resp.json().unwrap();
        let names = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap().to_string())
            .filter(|n| n != "Default Admin")
            .collect();
        (
            names,
            v["meta"]["pagination"]["totalCount"].as_u64().unwrap(),
        )
    };
    assert_eq!(
        names("type=Device&state=pending").0,
        ["dev-pending"],
        "type and state together"
    );
    assert_eq!(names("state=expired").0, ["dev-late"]);
    assert_eq!(names("state=enrolled&type=Device").0, ["dev-enrolled"]);
    assert_eq!(names("type=User").0, ["user-pending"]);
    // An identity made without a token has neither.
    let bare = gw.mgmt(
        "POST",
        "/identities",
        Some(&json!({ "name": "bare", "type": "Service" })),
    );
    assert_eq!(bare.status, 201, "{}", code(&bare));
    assert_eq!(names("state=none").0, ["bare"]);
    assert_eq!(
        names("certExpiringWithin=400d&type=Device").0,
        ["dev-enrolled"]
    );
    assert!(names("certExpiringWithin=1d").0.is_empty());
    // Paging counts the filtered whole.
    let (page, total) = names("type=Device&limit=1&offset=1");
    assert_eq!((page.len(), total), (1, 3));
    assert_eq!(
        names("filter=name%20contains%20%22pending%22&state=pending").0,
        ["dev-pending", "user-pending"]
    );
    for bad in ["type=Robot", "state=late", "certExpiringWithin=soon"] {
        assert_eq!(
            code(&gw.mgmt("GET", &format!("/identities?{bad}"), None)),
            "INVALID_PARAMETER",
            "{bad}"
        );
    }
}

#[test]
fn a_pending_token_has_a_qr_code() {
    let gw = Gateway::start();
    let (id, _, _) = gw.create_identity("phone", "Device", false);
    let shown = gw.mgmt("GET", &format!("/identities/{id}"), None);
    let eid = shown.json().unwrap()["data"]["enrollment"]["ott"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let qr = gw.mgmt("GET", &format!("/enrollments/{eid}/qr.svg"), None);
    assert_eq!(qr.status, 200);
    assert_eq!(qr.header("content-type"), Some("image/svg+xml"));
    assert_eq!(qr.header("x-content-type-options"), Some("nosniff"));
    let svg = String::from_utf8_lossy(&qr.body);
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(!svg.contains("script"));
    let unknown = gw.mgmt("GET", "/enrollments/AAAAAAAAAAAAAAAA/qr.svg", None);
    assert_eq!(code(&unknown), "NOT_FOUND");
}

/// The management API as another client, and the console in the browser: the same admin.
fn write_admin_pems(gw: &Gateway, dir: &Path) -> (PathBuf, PathBuf) {
    let v: Value = serde_json::from_slice(&std::fs::read(gw.admin_file()).unwrap()).unwrap();
    let pem = |k: &str| {
        v["id"][k]
            .as_str()
            .unwrap()
            .trim_start_matches("pem:")
            .to_string()
    };
    let (cert, key) = (dir.join("admin.crt"), dir.join("admin.key"));
    std::fs::write(&cert, pem("cert")).unwrap();
    std::fs::write(&key, pem("key")).unwrap();
    (cert, key)
}

/// The whole console in Debian's chromium (scripts/install-deps installs it, node, npm and
/// tests/browser/node_modules). Takes the screenshots README shows; with
/// ENROLLGATE_UPDATE_SCREENSHOTS=1 they replace docs/screenshots/*.png.
#[test]
fn the_console_works_in_a_real_browser() {
    let gw = Gateway::start();
    let work = gw.dir.path().join("browser");
    std::fs::create_dir(&work).unwrap();
    // A third-party CA, as README makes one.
    let (ca_pem, ca_key) = (work.join("acme-ca.pem"), work.join("acme-ca.key"));
    run_ok(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args([
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "365",
                "-keyout",
            ])
            .arg(&ca_key)
            .args(["-subj", "/CN=acme devices CA", "-out"])
            .arg(&ca_pem),
    );
    // A small fleet for the screenshots: some enrolled, some waiting, two whose token
    // expires before the browser looks.
    for i in 1..=6 {
        let (_, jwt, _) = gw.create_identity(&format!("sensor-{i:02}"), "Device", false);
        if i % 2 == 0 {
            ott_cert(&gw, &format!("sensor-{i:02}"), &token_of(&jwt));
        }
    }
    gw.create_identity("alice", "User", false);
    let in_2s = enrollgate::clock::rfc3339(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            + 2,
    );
    for name in ["late-1", "late-2"] {
        let (id, _, _) = gw.create_identity(name, "Device", false);
        let resp = gw.mgmt(
            "POST",
            "/enrollments",
            Some(&json!({ "identityId": id, "method": "ott", "expiresAt": in_2s })),
        );
        assert_eq!(resp.status, 201, "{}", code(&resp));
    }
    let surge: Vec<String> = (1..=8)
        .map(|i| token_of(&gw.create_identity(&format!("surge-{i}"), "Device", false).1))
        .collect();
    let (expired_url, _) = login_url(&gw, &["--valid-for", "1s"]);
    std::thread::sleep(Duration::from_millis(2100));
    let (login_url, _) = login_url(&gw, &[]);
    let (admin_cert, admin_key) = write_admin_pems(&gw, &work);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // The screenshots are taken on every run; they replace README's only when asked
    // (ENROLLGATE_UPDATE_SCREENSHOTS=1), so that a test run leaves the checkout clean.
    let shots = if std::env::var_os("ENROLLGATE_UPDATE_SCREENSHOTS").is_some() {
        root.join("docs/screenshots")
    } else {
        work.join("screenshots")
    };
    std::fs::create_dir_all(&shots).unwrap();
    // Outside the gateway's directory, which is gone when the test fails.
    let failure_shot = std::env::temp_dir().join("enrollgate-console-failure.png");
    let _ = std::fs::remove_file(&failure_shot);
    let out = Command::new("node")
        .arg(root.join("tests/browser/console.mjs"))
        .current_dir(root.join("tests/browser"))
        .env("EG_URL", gw.url())
        .env("EG_LOGIN_URL", &login_url)
        .env("EG_EXPIRED_URL", &expired_url)
        .env("EG_ADMIN_CERT", &admin_cert)
        .env("EG_ADMIN_KEY", &admin_key)
        .env("EG_GATEWAY_CA", gw.ca_file())
        .env("EG_CA_PEM", &ca_pem)
        .env("EG_CA_KEY", &ca_key)
        .env("EG_SURGE_TOKENS", surge.join(","))
        .env("EG_WORK", &work)
        .env("EG_SCREENSHOTS", &shots)
        .env("EG_FAILURE_SHOT", &failure_shot)
        .output()
        .expect("run node (scripts/install-deps installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("console: all checks passed"),
        "the browser test failed ({}; a screenshot is in {}):\n{stdout}\n{stderr}\ngateway log:\n{}",
        out.status,
        failure_shot.display(),
        gw.log()
    );
    for check in [
        "a login link used twice is refused",
        "an expired login link is refused",
        "the downloaded JWT enrolls with curl",
        "the QR code is shown",
        "a CA is created and verified with an openssl-made proof",
        "cross-site requests carrying the admin certificate are refused with 403",
        "the anonymous page shows a sign-in prompt and no data",
        "the admin certificate signs in",
        "a CA uploaded from a file is deleted after its confirmation",
        "an ottca identity made in the console enrolls with its CA's certificate",
    ] {
        assert!(
            stdout.contains(&format!("ok: {check}")),
            "{check}\n{stdout}"
        );
    }
    // What the browser did, as the management API sees it.
    let phone = gw.mgmt("GET", "/identities?filter=name%20%3D%20%22phone-1%22", None);
    let v = phone.json().unwrap();
    assert_eq!(v["data"][0]["hasEnrolled"], true, "{v}");
    let cas = gw.mgmt("GET", "/cas", None).json().unwrap();
    assert_eq!(cas["data"][0]["isVerified"], true, "{cas}");
    for name in [
        "sign-in",
        "identities",
        "qr-code",
        "certificate-authorities",
        "live",
    ] {
        let png = std::fs::read(shots.join(format!("{name}.png"))).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{name}.png");
    }
    // No secret reached the gateway's log.
    let log = gw.log();
    assert!(!log.contains(login_url.rsplit('=').next().unwrap()));
}
