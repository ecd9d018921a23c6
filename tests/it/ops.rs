//! Operations: systemd notification, configuration checking, fsck, backup and restore.

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

#[test]
fn notifies_ready_watchdog_and_stopping() {
    let sock_dir = tempfile::tempdir().unwrap();
    let path = sock_dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let path_s = path.to_str().unwrap().to_string();
    let mut gw = Gateway::start_with(
        |_| {},
        &[("NOTIFY_SOCKET", &path_s), ("WATCHDOG_USEC", "1000000")],
    );
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        let n = sock.recv(&mut buf).unwrap();
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        if got.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 3 {
            break;
        }
    }
    let ready = got.iter().find(|m| m.contains("READY=1")).expect("READY=1");
    assert!(ready.contains("STATUS=serving"), "{ready}");
    assert!(
        got.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 3,
        "{got:?}"
    );
    assert!(gw.stop().success());
    let mut stopping = false;
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    while let Ok(n) = sock.recv(&mut buf) {
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            stopping = true;
        }
    }
    assert!(stopping, "STOPPING=1 on SIGTERM");
}

fn check(config: &std::path::Path) -> (bool, String) {
    let out = Command::new(BIN)
        .arg("check-config")
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn check_config_reports_every_problem_with_its_key() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    run_ok(Command::new(BIN).args(["init", "--data-dir"]).arg(&data));
    let cfg = data.join("enrollgate.toml");
    let (ok, text) = check(&cfg);
    assert!(ok, "{text}");
    let original = std::fs::read_to_string(&cfg).unwrap();

    let cases: Vec<(&str, String)> = vec![
        (
            "server.colour",
            original.replace("[server]", "[server]\ncolour = \"blue\""),
        ),
        (
            "server.listen",
            original.replace("listen = \"127.0.0.1:8443\"", "listen = \"nowhere\""),
        ),
        (
            "limits.idle_timeout",
            original.replace("idle_timeout = \"60s\"", "idle_timeout = \"soon\""),
        ),
        (
            "tls.key",
            original.replace("key = \"pki/server.key\"", "key = \"pki/missing.key\""),
        ),
        (
            "tls.key",
            original.replace("key = \"pki/server.key\"", "key = \"pki/ca.key\""),
        ),
        (
            "store.path",
            original.replace("path = \"store\"", "path = \"nostore\""),
        ),
    ];
    for (key, text) in cases {
        std::fs::write(&cfg, &text).unwrap();
        let (ok, out) = check(&cfg);
        assert!(!ok, "{key}: {out}");
        assert!(
            out.contains(&format!("{key}:")),
            "{key} not named in: {out}"
        );
    }
    std::fs::write(&cfg, &original).unwrap();

    // A private key readable by others.
    std::fs::set_permissions(
        data.join("pki/ca.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let (ok, out) = check(&cfg);
    assert!(!ok);
    assert!(out.contains("pki.ca_key:") && out.contains("0644"), "{out}");
    // Several problems at once are all reported.
    std::fs::write(
        &cfg,
        original
            .replace("[server]", "[server]\nbogus = 1")
            .replace("listen = \"127.0.0.1:8443\"", "listen = \"x\""),
    )
    .unwrap();
    let (_, out) = check(&cfg);
    assert!(
        out.contains("server.bogus") && out.contains("server.listen"),
        "{out}"
    );
}

#[test]
fn backup_while_serving_fsck_and_restore() {
    let mut gw = Gateway::start();
    let dir = gw.dir.path().to_path_buf();
    let cfg = gw.data.join("enrollgate.toml");
    let (kept_id, _, token) = gw.create_identity("kept", "Device", false);
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    assert_eq!(
        gw.request(
            "POST",
            &format!("/enroll?method=ott&token={token}"),
            &[],
            csr.as_bytes()
        )
        .status,
        200
    );
    gw.create_identity("pending", "User", false);

    // While serving: fsck and backup.
    let out = run_ok(Command::new(BIN).arg("fsck").arg("--config").arg(&cfg));
    assert!(
        out.contains("no violations") && out.contains("3 identities"),
        "{out}"
    );
    let backup = dir.join("backup-1");
    let out = run_ok(
        Command::new(BIN)
            .arg("backup")
            .arg("--config")
            .arg(&cfg)
            .arg("--out")
            .arg(&backup),
    );
    assert!(out.contains("3 identities"), "{out}");
    assert_eq!(
        std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777,
        0o700
    );

    // A change after the backup, then restore refused while the daemon holds the store.
    gw.create_identity("after-backup", "User", false);
    let out = Command::new(BIN)
        .arg("restore")
        .arg("--config")
        .arg(&cfg)
        .arg("--from")
        .arg(&backup)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stop it first"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Stopped: restore, restart, and the store is as it was at the backup.
    assert!(gw.stop().success());
    let out = run_ok(
        Command::new(BIN)
            .arg("restore")
            .arg("--config")
            .arg(&cfg)
            .arg("--from")
            .arg(&backup),
    );
    assert!(out.contains("previous store"), "{out}");
    gw.spawn(&[]);
    let names: Vec<String> = gw
        .snapshot()
        .0
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect();
    assert!(names.contains(&"kept".to_string()) && names.contains(&"pending".to_string()));
    assert!(!names.contains(&"after-backup".to_string()), "{names:?}");
    let kept = gw
        .mgmt("GET", &format!("/identities/{kept_id}"), None)
        .json()
        .unwrap();
    assert_eq!(kept["data"]["hasEnrolled"], true);
    let r = gw.request(
        "POST",
        &format!("/enroll?method=ott&token={token}"),
        &[],
        csr.as_bytes(),
    );
    assert_eq!(code(&r), "INVALID_ENROLLMENT_TOKEN");
    let out = run_ok(Command::new(BIN).arg("fsck").arg("--config").arg(&cfg));
    assert!(out.contains("no violations"), "{out}");
}
