//! Secrets at rest: what a copy of the data directory or a backup gives away.

use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use enrollgate::model::{Identity, IdentityType};
use enrollgate::store::{keys, Store};

use crate::support::*;

/// The forms a token could be found in: itself, the JWT that carries it (and its claims
/// segment), the token's bytes, and the base64 of each of these in both alphabets.
fn forms(token: &str, jwt: &str) -> Vec<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let raw = URL_SAFE_NO_PAD.decode(token).expect("tokens are base64url");
    let claims = jwt.split('.').nth(1).expect("claims segment");
    let mut out = vec![
        token.as_bytes().to_vec(),
        jwt.as_bytes().to_vec(),
        claims.as_bytes().to_vec(),
        raw.clone(),
    ];
    for bytes in [token.as_bytes(), &raw[..]] {
        for engine in [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD] {
            out.push(engine.encode(bytes).into_bytes());
        }
    }
    out
}

fn assert_nowhere(dirs: &[&Path], what: &[Vec<u8>]) {
    let files: Vec<_> = dirs.iter().flat_map(|d| files_under(d)).collect();
    assert!(files.len() > 5, "nothing to search: {}", files.len());
    for (path, bytes) in &files {
        for needle in what {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_slice()),
                "{} holds a token in some form",
                path.display()
            );
        }
    }
}

fn redeem(gw: &Gateway, token: &str) -> u16 {
    gw.request(
        "POST",
        &format!("/enroll?method=ott&token={token}"),
        &[],
        &new_csr_pem(),
    )
    .status
}

/// A copy of the store taken while tokens are pending (a raw copy of the live directory,
/// and a `backup`) holds none of them in any form; the real tokens still redeem, once; a
/// JWT the admin downloads again carries the same token.
#[test]
fn a_copy_of_the_store_gives_no_pending_token_away() {
    let gw = Gateway::start();
    let mut pending = Vec::new();
    for i in 0..4 {
        let (id, jwt, token) = gw.create_identity(&format!("dev-{i}"), "Device", false);
        assert_eq!(token_of(&jwt), token);
        pending.push((id, jwt, token));
    }
    // Downloaded again, through the enrollment: the same token, in a newly signed JWT.
    let (_, ens) = gw.snapshot();
    let ens = ens.as_array().unwrap().clone();
    assert_eq!(ens.len(), 4);
    for e in &ens {
        let eid = e["id"].as_str().unwrap();
        let resp = gw.mgmt("GET", &format!("/enrollments/{eid}/jwt"), None);
        assert_eq!(resp.status, 200);
        let again = String::from_utf8(resp.body).unwrap();
        let mine = pending
            .iter()
            .find(|(id, _, _)| e["identityId"] == id.as_str())
            .unwrap();
        assert_eq!(token_of(&again), mine.2);
        assert_eq!(e["token"], mine.2.as_str());
        let verified =
            enrollgate::token::jwt::verify_with_cert(&again, &presented_server_cert(&gw)).unwrap();
        assert_eq!(verified.sub, mine.0);
    }

    let copy = gw.dir.path().join("copy");
    run_ok(
        Command::new("cp")
            .arg("-r")
            .arg(gw.data.join("store"))
            .arg(&copy),
    );
    let backup = gw.dir.path().join("backup");
    run_ok(
        Command::new(BIN)
            .arg("backup")
            .arg("--config")
            .arg(gw.data.join("enrollgate.toml"))
            .arg("--out")
            .arg(&backup),
    );
    let needles: Vec<Vec<u8>> = pending
        .iter()
        .flat_map(|(_, jwt, token)| forms(token, jwt))
        .collect();
    // The whole data directory too, but the token key beside the CA key: the secret the
    // tokens are derived from, not a token.
    assert_nowhere(&[&copy, &backup], &needles);
    let data_files: Vec<_> = files_under(&gw.data)
        .into_iter()
        .filter(|(p, _)| !p.ends_with("pki/token.key"))
        .collect();
    for (path, bytes) in &data_files {
        for n in &needles {
            assert!(
                !bytes.windows(n.len()).any(|w| w == n.as_slice()),
                "{} holds a token",
                path.display()
            );
        }
    }
    let out = run_ok(
        Command::new(BIN)
            .arg("fsck")
            .arg("--config")
            .arg(gw.data.join("enrollgate.toml")),
    );
    assert!(
        out.contains("4 pending enrollments") && out.contains("no violations"),
        "{out}"
    );

    for (_, _, token) in &pending {
        assert_eq!(redeem(&gw, token), 200);
        assert_eq!(redeem(&gw, token), 400, "redeemed once");
    }
    let (_, ens) = gw.snapshot();
    assert_eq!(ens.as_array().unwrap().len(), 0);
}

/// The certificate the enrollment listener presents (the one JWTs are verified with).
fn presented_server_cert(gw: &Gateway) -> Vec<u8> {
    let pem = std::fs::read(gw.data.join("pki/server.crt")).unwrap();
    pem::parse(pem).unwrap().into_contents()
}

/// Writes a pending enrollment exactly as a version that kept tokens stored it.
fn old_pending(store: &Store, name: &str, token: &str, jwt: &str) -> (String, String) {
    let id = enrollgate::ids::new_id().unwrap();
    let eid = enrollgate::ids::new_id().unwrap();
    let identity = Identity {
        id: id.clone(),
        name: name.into(),
        kind: IdentityType::Device,
        is_admin: false,
        role_attributes: vec![],
        created_at: 1,
        updated_at: 1,
        enrollment_id: Some(eid.clone()),
        lifecycle: Default::default(),
        authenticator: None,
    };
    let db = store.rocks().unwrap();
    db.put(keys::identity(&id), serde_json::to_vec(&identity).unwrap())
        .unwrap();
    db.put(keys::name(name), &id).unwrap();
    let record = serde_json::json!({
        "id": eid, "token": token, "method": "ott", "identity_id": id, "ca_id": null,
        "created_at": 1, "expires_at": 4_000_000_000u64, "jwt": jwt,
    });
    db.put(keys::token(token), serde_json::to_vec(&record).unwrap())
        .unwrap();
    db.put(keys::enrollment(&eid), token).unwrap();
    (id, eid)
}

/// A store of a version that kept tokens: at the next start its pending enrollments keep
/// only hashes; the old token (in devices' hands) and the derived one (downloaded again)
/// both redeem, and whichever comes first consumes the other; the old tokens and JWTs are
/// gone from every file of the store.
#[test]
fn a_store_that_kept_tokens_is_migrated_at_start() {
    let mut gw = Gateway::start();
    gw.stop();
    let old = [
        (
            "old-a",
            "OLDaTOKENxqYp3v9cZ2fA7mN1kL8sRtUwE4hJgBdQoXiPV0",
            "eyJhbGciOiJFUzI1NiJ9.eyJPTERhIjoxfQ.OLDaJWTxSIGNATURE",
        ),
        (
            "old-b",
            "OLDbTOKENxqYp3v9cZ2fA7mN1kL8sRtUwE4hJgBdQoXiPV0",
            "eyJhbGciOiJFUzI1NiJ9.eyJPTERiIjoxfQ.OLDbJWTxSIGNATURE",
        ),
    ];
    let ids: Vec<(String, String)> = {
        let store = Store::open(&gw.data.join("store"), false).unwrap();
        let ids = old
            .iter()
            .map(|(name, token, jwt)| old_pending(&store, name, token, jwt))
            .collect();
        store.rocks().unwrap().flush().unwrap();
        ids
    };
    gw.spawn(&[]);
    assert!(gw.log().contains("keep only hashes"), "{}", gw.log());
    let derived: Vec<String> = ids
        .iter()
        .map(|(_, eid)| {
            let resp = gw.mgmt("GET", &format!("/enrollments/{eid}/jwt"), None);
            assert_eq!(resp.status, 200);
            token_of(&String::from_utf8(resp.body).unwrap())
        })
        .collect();
    assert_ne!(derived[0], old[0].1);
    // a: the old token first; b: the derived one first.
    assert_eq!(redeem(&gw, old[0].1), 200);
    assert_eq!(redeem(&gw, &derived[0]), 400);
    assert_eq!(redeem(&gw, &derived[1]), 200);
    assert_eq!(redeem(&gw, old[1].1), 400);
    for (id, _) in &ids {
        let resp = gw.mgmt("GET", &format!("/identities/{id}"), None);
        assert_eq!(resp.json().unwrap()["data"]["hasEnrolled"], true);
    }
    let needles: Vec<Vec<u8>> = old
        .iter()
        .flat_map(|(_, token, jwt)| [token.as_bytes().to_vec(), jwt.as_bytes().to_vec()])
        .collect();
    assert_nowhere(&[&gw.data.join("store")], &needles);
}

/// Runs `enrollgate <args> --config <cfg>` with `CREDENTIALS_DIRECTORY` set to `creds`
/// (or removed); returns (success, stdout + stderr).
fn run_with_credentials(args: &[&str], cfg: &Path, creds: Option<&Path>) -> (bool, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .arg("--config")
        .arg(cfg)
        .env_remove("CREDENTIALS_DIRECTORY");
    if let Some(dir) = creds {
        cmd.env("CREDENTIALS_DIRECTORY", dir);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Under systemd, the keys arrive as credentials: with the CA key, the TLS key and the
/// token key named `credential:...` and moved out of the data directory, `check-config`
/// and `serve` read them from `$CREDENTIALS_DIRECTORY`; issued certificates verify with
/// openssl; no file of the data directory holds a private key. Without the variable, or
/// without the file, both refuse with a line naming the key and the credential.
#[test]
fn keys_passed_as_systemd_credentials() {
    use std::os::unix::fs::PermissionsExt as _;
    let mut gw = Gateway::start();
    gw.stop();
    let creds = gw.dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o700)).unwrap();
    for (from, to) in [
        ("ca.key", "ca.key"),
        ("server.key", "tls.key"),
        ("token.key", "token.key"),
    ] {
        std::fs::rename(gw.data.join("pki").join(from), creds.join(to)).unwrap();
    }
    let cfg = gw.data.join("enrollgate.toml");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("key = \"pki/server.key\"", "key = \"credential:tls.key\"")
        .replace("ca_key = \"pki/ca.key\"", "ca_key = \"credential:ca.key\"")
        .replace(
            "token_key = \"pki/token.key\"",
            "token_key = \"credential:token.key\"",
        );
    assert_eq!(text.matches("credential:").count(), 3, "{text}");
    std::fs::write(&cfg, text).unwrap();

    let (ok, out) = run_with_credentials(&["check-config"], &cfg, None);
    assert!(!ok);
    for key in ["tls.key", "pki.ca_key", "pki.token_key"] {
        assert!(
            out.lines()
                .any(|l| l.contains(key) && l.contains("CREDENTIALS_DIRECTORY is not set")),
            "{out}"
        );
    }
    let (ok, out) = run_with_credentials(&["serve"], &cfg, None);
    assert!(
        !ok && out.contains("CREDENTIALS_DIRECTORY is not set"),
        "{out}"
    );
    let empty = gw.dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (ok, out) = run_with_credentials(&["check-config"], &cfg, Some(&empty));
    assert!(
        !ok && out.contains("pki.ca_key") && out.contains("'ca.key' is not in"),
        "{out}"
    );
    let (ok, out) = run_with_credentials(&["check-config"], &cfg, Some(&creds));
    assert!(ok, "{out}");

    let creds_s = creds.to_str().unwrap().to_string();
    gw.spawn(&[("CREDENTIALS_DIRECTORY", &creds_s)]);
    let (_, _, token) = gw.create_identity("cred-dev", "Device", false);
    let cert = ott_cert(&gw, "cred-dev", &token);
    let out = run_ok(
        Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(gw.data.join("pki/ca.crt"))
            .arg(&cert),
    );
    assert!(out.contains(": OK"), "{out}");
    // The admin's identity file, which init leaves for the operator to take away, holds
    // the admin's key: not the gateway's.
    for (path, bytes) in files_under(&gw.data)
        .into_iter()
        .filter(|(p, _)| !p.ends_with("admin.json"))
    {
        assert!(
            !bytes.windows(11).any(|w| w == b"PRIVATE KEY"),
            "{} holds a private key",
            path.display()
        );
    }
    assert!(
        !gw.data.join("pki/token.key").exists(),
        "no token key made in the data dir"
    );
}
