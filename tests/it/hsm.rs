//! The CA key in a PKCS#11 token: a real SoftHSM2 token in a temporary directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// Long and distinctive, so that finding it in a log or an error means it leaked (four
/// digits turn up by chance in a log of timings and ports).
const PIN: &str = "hsm-pin-Xq7vR2";
/// A PIN the token refuses, as distinctive.
const WRONG_PIN: &str = "Kd93-refused-pin";

/// A SoftHSM2 token initialised in a temporary directory (its own `SOFTHSM2_CONF`).
pub(crate) struct SoftHsm {
    dir: tempfile::TempDir,
    conf: String,
}

impl SoftHsm {
    pub(crate) fn new() -> Self {
        assert!(
            Path::new(MODULE).is_file(),
            "{MODULE} is missing: install softhsm2 (scripts/install-deps)"
        );
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        let conf = conf.to_str().unwrap().to_string();
        run_ok(
            Command::new("softhsm2-util")
                .env("SOFTHSM2_CONF", &conf)
                .args(["--init-token", "--free", "--label", "enrollgate"])
                .args(["--so-pin", "5678", "--pin", PIN]),
        );
        std::fs::write(dir.path().join("pin"), format!("{PIN}\n")).unwrap();
        Self { dir, conf }
    }

    fn pin_file(&self) -> PathBuf {
        self.dir.path().join("pin")
    }

    pub(crate) fn uri(&self) -> String {
        format!(
            "pkcs11:token=enrollgate;object=ca?module-path={MODULE}&pin-source={}",
            self.pin_file().display()
        )
    }

    pub(crate) fn env(&self) -> [(&str, &str); 1] {
        [("SOFTHSM2_CONF", self.conf.as_str())]
    }

    /// Removes every key object from the token (SoftHSM2 keeps each object in a file of
    /// its own beside `token.object`), as an operator deleting the key would.
    fn remove_keys(&self) {
        let mut removed = 0;
        for token in std::fs::read_dir(self.dir.path().join("tokens")).unwrap() {
            for f in std::fs::read_dir(token.unwrap().path()).unwrap() {
                let path = f.unwrap().path();
                let name = path.file_name().unwrap().to_str().unwrap().to_string();
                if name.ends_with(".object") && name != "token.object" {
                    std::fs::remove_file(&path).unwrap();
                    removed += 1;
                }
            }
        }
        assert_eq!(removed, 2, "the private and the public key");
    }
}

/// Enrolls `n` devices with openssl CSRs, all at once, and checks each certificate with
/// `openssl verify` against the CA certificate.
fn enroll_and_verify(gw: &Gateway, tag: &str, n: usize) {
    enroll_and_verify_with(gw, tag, n, &gw.data.join("pki/ca.crt"));
}

/// As [`enroll_and_verify`], checking the certificates against the CA certificate `ca`.
fn enroll_and_verify_with(gw: &Gateway, tag: &str, n: usize, ca: &Path) {
    let pending: Vec<(String, String)> = (0..n)
        .map(|i| {
            let name = format!("{tag}-{i}");
            let (_, _, token) = gw.create_identity(&name, "Device", false);
            (name, token)
        })
        .collect();
    std::thread::scope(|s| {
        for (name, token) in &pending {
            s.spawn(move || {
                let cert = ott_cert(gw, name, token);
                let out = run_ok(
                    Command::new("openssl")
                        .arg("verify")
                        .arg("-CAfile")
                        .arg(ca)
                        .arg(&cert),
                );
                assert!(out.contains(": OK"), "{out}");
            });
        }
    });
}

/// `enrollgate init` of a data directory `dir` with the CA key `uri` in the token; its
/// output, once it succeeded.
fn init_on_token(hsm: &SoftHsm, uri: &str, dir: &Path) -> std::process::Output {
    let out = Command::new(BIN)
        .args([
            "init",
            "--listen",
            "127.0.0.1:0",
            "--ca-key",
            uri,
            "--data-dir",
        ])
        .arg(dir)
        .envs(hsm.env())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The public key of the certificate at `path`, as openssl prints it.
fn spki(path: &Path) -> String {
    run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-pubkey", "-in"])
            .arg(path),
    )
}

/// `ottca` and `ca` enrollment on a gateway whose CA key is in the token.
fn enroll_third_party(gw: &Gateway) {
    use crate::fleet::{Fleet, Spec};
    let fleet = Fleet::new("hsm-fleet");
    let ca_id = fleet.register(gw, "hsm-fleet", true, true, true);
    let r = fleet.device(&Spec::new("auto-1")).request(
        gw,
        "POST",
        "/edge/client/v1/enroll?method=ca",
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = gw.mgmt(
        "POST",
        "/identities",
        Some(
            &serde_json::json!({"name": "plc-1", "type": "Device", "enrollment": {"ottca": ca_id}}),
        ),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let token = r.json().unwrap()["data"]["enrollment"]["ottca"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let plc = fleet.device(&Spec::new("plc-1"));
    let r = plc.request(
        gw,
        "POST",
        &format!("/edge/client/v1/enroll?method=ottca&token={token}"),
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = plc.request(
        gw,
        "POST",
        "/edge/client/v1/authenticate?method=cert",
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // The admin's certificate was signed through the token at init: it authenticates too.
    let r = gw.request_as(
        &gw.admin_file(),
        "POST",
        "/edge/client/v1/authenticate?method=cert",
        None,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

/// `init --ca-key pkcs11:...` generates the CA key inside the token; with the TLS and
/// token keys passed as credentials, the data directory holds no private key at all, and
/// the gateway issues certificates openssl accepts: at once, after a reload (new
/// sessions) and after a restart. A second `init` on the same token uses the key it finds.
#[test]
fn the_ca_key_lives_only_in_softhsm2() {
    let hsm = SoftHsm::new();
    let uri = hsm.uri();
    let mut gw = Gateway::start_full(&["--ca-key", &uri], |_| {}, &hsm.env());
    assert!(!gw.data.join("pki/ca.key").exists());
    let cfg = std::fs::read_to_string(gw.data.join("enrollgate.toml")).unwrap();
    assert!(
        cfg.contains("ca_key = \"pkcs11:token=enrollgate;object=ca?"),
        "{cfg}"
    );
    assert!(!cfg.contains(PIN), "the PIN is never in the configuration");
    // The admin certificate init issued, signed in the token, manages.
    assert_eq!(gw.mgmt("GET", "/identities", None).status, 200);
    enroll_and_verify(&gw, "first", 6);
    // The two methods that bind a third-party certificate work beside a CA key in the
    // token, and so does authentication with a certificate the token signed.
    enroll_third_party(&gw);

    // The TLS key and the token key out of the data directory, as credentials.
    gw.stop();
    let creds = gw.dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    for k in ["server.key", "token.key"] {
        std::fs::rename(gw.data.join("pki").join(k), creds.join(k)).unwrap();
    }
    let cfg_path = gw.data.join("enrollgate.toml");
    let cfg = std::fs::read_to_string(&cfg_path)
        .unwrap()
        .replace(
            "key = \"pki/server.key\"",
            "key = \"credential:server.key\"",
        )
        .replace(
            "token_key = \"pki/token.key\"",
            "token_key = \"credential:token.key\"",
        );
    std::fs::write(&cfg_path, cfg).unwrap();
    let creds_s = creds.to_str().unwrap().to_string();
    let env = [
        ("SOFTHSM2_CONF", hsm.conf.as_str()),
        ("CREDENTIALS_DIRECTORY", creds_s.as_str()),
    ];
    gw.spawn(&env);
    enroll_and_verify(&gw, "restarted", 4);
    gw.signal("HUP");
    gw.wait_log("configuration reloaded");
    enroll_and_verify(&gw, "reloaded", 4);

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
    assert!(!gw.log().contains(PIN));

    // Another data directory on the same token: the existing key is used, not replaced.
    let again = gw.dir.path().join("again");
    let out = init_on_token(&hsm, &uri, &again);
    assert!(String::from_utf8_lossy(&out.stderr).contains("using the CA key 'ca'"));
    assert_eq!(
        spki(&again.join("pki/ca.crt")),
        spki(&gw.data.join("pki/ca.crt"))
    );
}

/// A wrong PIN, a missing module, a removed key: `serve` refuses to start with a line that
/// names the problem, and writes nothing (every file of the data directory unchanged).
#[test]
fn serve_refuses_a_broken_token_and_writes_nothing() {
    let hsm = SoftHsm::new();
    let mut gw = Gateway::start_full(&["--ca-key", &hsm.uri()], |_| {}, &hsm.env());
    gw.create_identity("pending", "Device", false);
    gw.stop();
    let cfg_path = gw.data.join("enrollgate.toml");
    let good = std::fs::read_to_string(&cfg_path).unwrap();
    let serve = |cfg: &str| {
        std::fs::write(&cfg_path, cfg).unwrap();
        let before = files_under(&gw.data);
        let out = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&cfg_path)
            .envs(hsm.env())
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(
            files_under(&gw.data) == before,
            "serve changed the data directory"
        );
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!err.contains(PIN) && !err.contains(WRONG_PIN), "{err}");
        err
    };

    let wrong = hsm.dir.path().join("wrong-pin");
    std::fs::write(&wrong, format!("{WRONG_PIN}\n")).unwrap();
    let err = serve(&good.replace(hsm.pin_file().to_str().unwrap(), wrong.to_str().unwrap()));
    assert!(
        err.contains("refused the PIN") && err.contains("wrong-pin"),
        "{err}"
    );

    let err = serve(&good.replace(MODULE, "/usr/lib/softhsm/libnosuch.so"));
    assert!(
        err.contains("libnosuch.so") && err.contains("no such file"),
        "{err}"
    );

    let err = serve(&good.replace("pin-source=", &format!("pin-value={WRONG_PIN}&x=")));
    assert!(err.contains("pin-source"), "{err}");

    // The PIN from the environment: check-config opens the token with it, and names the
    // variable when it is not set.
    let from_env = good.replace(
        &format!("pin-source={}", hsm.pin_file().display()),
        "pin-source=env:ENROLLGATE_TEST_PIN",
    );
    assert_ne!(from_env, good);
    std::fs::write(&cfg_path, &from_env).unwrap();
    let check = |pin: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.args(["check-config", "--config"])
            .arg(&cfg_path)
            .envs(hsm.env())
            .env_remove("ENROLLGATE_TEST_PIN");
        if let Some(pin) = pin {
            cmd.env("ENROLLGATE_TEST_PIN", pin);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, out) = check(Some(PIN));
    assert!(ok, "{out}");
    let (ok, out) = check(None);
    assert!(
        !ok && out.contains("env:ENROLLGATE_TEST_PIN") && out.contains("not set"),
        "{out}"
    );
    let err = serve(&from_env);
    assert!(err.contains("env:ENROLLGATE_TEST_PIN"), "{err}");

    hsm.remove_keys();
    let err = serve(&good);
    assert!(err.contains("holds no private key labelled 'ca'"), "{err}");
}

/// Rotation: a new CA key made in the token (`init` on another data directory with a new
/// object name), its certificate and URI put in the configuration, and a reload: new `ott`
/// certificates are signed by the new key, and verify against the new CA only, while the
/// listener keeps its certificate from the old CA (served through `tls.ca`).
#[test]
fn the_ca_key_rotates_to_a_new_key_in_the_token() {
    let hsm = SoftHsm::new();
    let gw = Gateway::start_full(&["--ca-key", &hsm.uri()], |_| {}, &hsm.env());
    enroll_and_verify(&gw, "before", 2);

    let next_uri = hsm.uri().replace("object=ca?", "object=ca-2026?");
    let next = gw.dir.path().join("next");
    init_on_token(&hsm, &next_uri, &next);
    let new_ca = gw.data.join("pki/ca-2026.crt");
    std::fs::copy(next.join("pki/ca.crt"), &new_ca).unwrap();
    let cfg_path = gw.data.join("enrollgate.toml");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    let old_key_line = cfg
        .lines()
        .find(|l| l.starts_with("ca_key = "))
        .unwrap()
        .to_string();
    let cfg = cfg
        .replace(&old_key_line, &format!("ca_key = \"{next_uri}\""))
        .replace("ca_cert = \"pki/ca.crt\"", "ca_cert = \"pki/ca-2026.crt\"")
        .replace("# ca = \"web-ca.pem\"", "ca = \"pki/ca.crt\"");
    std::fs::write(&cfg_path, cfg).unwrap();
    gw.signal("HUP");
    gw.wait_log("configuration reloaded");

    enroll_and_verify_with(&gw, "after", 2, &new_ca);
    // The old CA does not verify what the new key signed.
    let refused = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(gw.data.join("pki/ca.crt"))
        .arg(gw.dir.path().join("after-0.crt"))
        .output()
        .unwrap();
    assert!(!refused.status.success(), "{refused:?}");
    // The two keys are distinct objects in the token.
    assert_ne!(spki(&new_ca), spki(&gw.data.join("pki/ca.crt")));
}
