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
    assert!(ready.contains("STATUS=serving https://"), "{ready}");
    assert!(
        got.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 3,
        "{got:?}"
    );
    // After a reload, the same status line as at start.
    let status = |m: &str| {
        m.lines()
            .find(|l| l.starts_with("STATUS="))
            .map(str::to_string)
    };
    gw.signal("HUP");
    let start = Instant::now();
    let mut reloaded = None;
    while reloaded.is_none() && start.elapsed() < Duration::from_secs(20) {
        let n = sock.recv(&mut buf).unwrap();
        let m = String::from_utf8_lossy(&buf[..n]).into_owned();
        if m.contains("READY=1") {
            reloaded = Some(m);
        }
    }
    let reloaded = reloaded.expect("READY=1 after the reload");
    assert_eq!(status(&reloaded), status(ready), "{reloaded}");
    let stopped = gw.stop();
    assert!(stopped.success(), "{stopped:?}\n{}", gw.log());
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
        // A valid key that is not the CA certificate's (a rotation caught half-way).
        (
            "pki.ca_key",
            original.replace("ca_key = \"pki/ca.key\"", "ca_key = \"pki/server.key\""),
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
        if key == "pki.ca_key" {
            assert!(out.contains("does not match"), "{out}");
        }
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
    // A wrong value does not hide a missing file, nor a missing file a wrong value.
    std::fs::write(
        &cfg,
        original
            .replace(
                "[server]",
                "[server]
bogus = 1",
            )
            .replace("idle_timeout = \"60s\"", "idle_timeout = \"soon\"")
            .replace("key = \"pki/server.key\"", "key = \"pki/missing.key\""),
    )
    .unwrap();
    let (ok, out) = check(&cfg);
    assert!(!ok);
    for key in ["server.bogus:", "limits.idle_timeout:", "tls.key:"] {
        assert!(out.contains(key), "{key} not named in: {out}");
    }
    assert!(out.contains("missing.key"), "{out}");
    // The configuration file itself missing: said, with its path.
    let (ok, out) = check(&data.join("nowhere.toml"));
    assert!(!ok);
    assert!(out.contains("nowhere.toml"), "{out}");
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
    // The backup holds pending tokens: its files are the user's alone, whatever the umask
    // the command ran under (the test's is usually 022).
    let private = |dir: &std::path::Path| {
        let mut files = 0;
        let mut dirs = vec![dir.to_path_buf()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let meta = e.metadata().unwrap();
                assert_eq!(
                    meta.permissions().mode() & 0o077,
                    0,
                    "{}",
                    e.path().display()
                );
                if meta.is_dir() {
                    dirs.push(e.path());
                } else {
                    files += 1;
                }
            }
        }
        files
    };
    assert!(private(&backup) > 0);

    // An existing empty directory (a mount point, or one made for it) takes the backup and
    // becomes private; a directory with anything in it is refused and left as it was.
    let made = dir.join("backup-made");
    std::fs::create_dir(&made).unwrap();
    std::fs::set_permissions(&made, std::fs::Permissions::from_mode(0o755)).unwrap();
    let backup_to = |out: &std::path::Path| {
        Command::new(BIN)
            .arg("backup")
            .arg("--config")
            .arg(&cfg)
            .arg("--out")
            .arg(out)
            .output()
            .unwrap()
    };
    let out = backup_to(&made);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 identities"));
    assert_eq!(
        std::fs::metadata(&made).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert!(private(&made) > 0);
    let full = dir.join("backup-full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("keep.txt"), "mine").unwrap();
    let out = backup_to(&full);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not empty"), "{err}");
    let left: Vec<_> = std::fs::read_dir(&full).unwrap().flatten().collect();
    assert_eq!(left.len(), 1);
    assert_eq!(
        std::fs::read_to_string(full.join("keep.txt")).unwrap(),
        "mine"
    );
    // A directory others can write to, or a link to a directory, is refused as it is: its
    // owner or a writer could read the copy, which holds live tokens.
    let shared = dir.join("backup-shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = backup_to(&shared);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is writable by group or others"),
        "{out:?}"
    );
    assert_eq!(std::fs::read_dir(&shared).unwrap().count(), 0);
    let target = dir.join("backup-target");
    std::fs::create_dir(&target).unwrap();
    std::os::unix::fs::symlink(&target, dir.join("backup-link")).unwrap();
    let out = backup_to(&dir.join("backup-link"));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is a symbolic link"),
        "{out:?}"
    );
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);
    // Another user's directory (made ready as root for the test, as CI runs).
    if std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&target).unwrap()) == 0 {
        let theirs = dir.join("backup-theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        let out = backup_to(&theirs);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("belongs to another user"),
            "{out:?}"
        );
    }

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
    let data = gw.data.clone();
    let staged = || {
        std::fs::read_dir(&data)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".restoring-"))
            .count()
    };
    assert_eq!(staged(), 0, "a refused restore leaves no staging copy");

    // Stopped: restore, restart, and the store is as it was at the backup.
    assert!(gw.stop().success());
    // Not a backup: said so, the store untouched.
    let empty = gw.dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = Command::new(BIN)
        .arg("restore")
        .arg("--config")
        .arg(&cfg)
        .arg("--from")
        .arg(&empty)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a store, nor a backup"), "{err}");
    assert_eq!(staged(), 0);
    let restore = || {
        run_ok(
            Command::new(BIN)
                .arg("restore")
                .arg("--config")
                .arg(&cfg)
                .arg("--from")
                .arg(&backup),
        )
    };
    let out = restore();
    assert!(out.contains("previous store"), "{out}");
    assert_eq!(staged(), 0, "the staging copy became the store");
    assert!(
        private(&data.join("store")) > 0,
        "the restored store is private too"
    );
    // A store too damaged to open is what a restore is for: it is replaced all the same.
    std::fs::remove_file(data.join("store").join("CURRENT")).unwrap();
    let out = restore();
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

/// A new server certificate for 127.0.0.1, signed by the gateway's CA; returns its DER.
fn rotate_server_certificate(gw: &Gateway) -> Vec<u8> {
    let pki = gw.data.join("pki");
    let ca_pem = std::fs::read_to_string(pki.join("ca.crt")).unwrap();
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(pki.join("ca.key")).unwrap()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    for (name, text) in [
        ("server.key", key.serialize_pem()),
        ("server.crt", cert.pem()),
    ] {
        let tmp = pki.join(format!("{name}.new"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::rename(&tmp, pki.join(name)).unwrap();
    }
    cert.der().to_vec()
}

fn presented_certificate(gw: &Gateway) -> Vec<u8> {
    let rec = enrollgate::client::RecordingVerifier::new();
    enrollgate::client::request(
        rec.config().unwrap(),
        "127.0.0.1",
        gw.port,
        "GET",
        "/version",
        &[],
        b"",
    )
    .unwrap();
    rec.chain()[0].to_vec()
}

#[test]
fn sighup_rotates_the_certificate_while_clients_enroll() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let gw = Arc::new(Gateway::start());
    let old = presented_certificate(&gw);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let worker = {
        let (gw, stop, ok, failed) = (gw.clone(), stop.clone(), ok.clone(), failed.clone());
        std::thread::spawn(move || {
            let key = rcgen::KeyPair::generate().unwrap();
            let csr = rcgen::CertificateParams::default()
                .serialize_request(&key)
                .unwrap()
                .pem()
                .unwrap();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let (_, _, token) = gw.create_identity(&format!("rot-{i}"), "Device", false);
                let r = gw.request(
                    "POST",
                    &format!("/enroll?method=ott&token={token}"),
                    &[],
                    csr.as_bytes(),
                );
                if r.status == 200 {
                    ok.fetch_add(1, Ordering::Relaxed)
                } else {
                    failed.fetch_add(1, Ordering::Relaxed)
                };
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let new = rotate_server_certificate(&gw);
    gw.signal("HUP");
    gw.wait_log("configuration reloaded");
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request failed across the reload"
    );
    assert!(ok.load(Ordering::Relaxed) > 2);
    let now = presented_certificate(&gw);
    assert_ne!(now, old);
    assert_eq!(now, new, "new connections get the rotated certificate");
    // JWTs are now signed with the new key.
    let (_, jwt, _) = gw.create_identity("after-rotation", "User", false);
    assert!(enrollgate::token::jwt::verify_with_cert(&jwt, &new).is_ok());
}

#[test]
fn sighup_applies_limits_and_refuses_a_bad_configuration() {
    let gw = Gateway::start();
    let cfg = gw.data.join("enrollgate.toml");
    let original = std::fs::read_to_string(&cfg).unwrap();
    let body = vec![b'A'; 2000];
    let r = gw.request("POST", "/enroll?method=ott&token=x", &[], &body);
    assert_eq!(
        code(&r),
        "INVALID_ENROLLMENT_TOKEN",
        "2000 bytes are under the default limit"
    );

    std::fs::write(
        &cfg,
        original.replace("max_body_bytes = 65536", "max_body_bytes = 1024"),
    )
    .unwrap();
    gw.signal("HUP");
    gw.wait_log("configuration reloaded");
    let r = gw.request("POST", "/enroll?method=ott&token=x", &[], &body);
    assert_eq!((r.status, code(&r).as_str()), (413, "REQUEST_TOO_LARGE"));

    std::fs::write(&cfg, "this is [not toml").unwrap();
    gw.signal("HUP");
    gw.wait_log("reload refused");
    let r = gw.request("POST", "/enroll?method=ott&token=x", &[], &body);
    assert_eq!(
        code(&r),
        "REQUEST_TOO_LARGE",
        "the previous configuration stays in force"
    );
    assert_eq!(gw.request("GET", "/version", &[], b"").status, 200);

    // A change that needs a restart is named, and once reverted it is no change: the
    // comparison is with what runs, not with the file read last.
    let moved = original.replace("[server]", "[server]\nworkers = 7");
    let moved = moved.replacen("workers = 0", "", 1);
    assert!(moved.contains("workers = 7"), "{moved}");
    std::fs::write(&cfg, &moved).unwrap();
    gw.signal("HUP");
    gw.wait_log("server.workers");
    let warnings = || gw.log().matches("needs a restart").count();
    let after_change = warnings();
    std::fs::write(
        &cfg,
        original.replace("max_body_bytes = 65536", "max_body_bytes = 1024"),
    )
    .unwrap();
    gw.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.log().matches("configuration reloaded").count() < 3 {
        assert!(Instant::now() < deadline, "{}", gw.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(warnings(), after_change, "{}", gw.log());

    // A private key others can read is refused at reload (and at start).
    std::fs::write(&cfg, &original).unwrap();
    let key = gw.data.join("pki/server.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    gw.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw.log().contains("mode 0644") {
        assert!(Instant::now() < deadline, "{}", gw.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(gw.request("GET", "/version", &[], b"").status, 200);
}

#[test]
fn a_keep_alive_connection_closes_after_a_reload() {
    use std::io::{Read as _, Write as _};
    let gw = Gateway::start();
    let mut tls = crate::bad_input::raw_tls(&gw);
    let request = b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n";
    tls.write_all(request).unwrap();
    let mut first = vec![0u8; 4096];
    let n = tls.read(&mut first).unwrap();
    let first = String::from_utf8_lossy(&first[..n]).to_lowercase();
    assert!(first.starts_with("http/1.1 200"), "{first}");
    assert!(!first.contains("connection: close"), "{first}");

    gw.signal("HUP");
    gw.wait_log("configuration reloaded");
    // The connection still answers the request in flight, then closes: it does not keep
    // serving with the keys and limits of the replaced configuration.
    tls.write_all(request).unwrap();
    let rest = String::from_utf8_lossy(&crate::bad_input::read_all(&mut tls)).to_lowercase();
    assert!(rest.starts_with("http/1.1 200"), "{rest}");
    assert!(rest.contains("connection: close"), "{rest}");
    assert_eq!(rest.matches("http/1.1").count(), 1);
}

#[test]
fn sigterm_during_a_burst_loses_no_acknowledged_enrollment() {
    use std::sync::Arc;
    let mut gw = Gateway::start();
    let pending: Vec<(String, String)> = (0..320)
        .map(|i| {
            let (id, _, token) = gw.create_identity(&format!("burst-{i}"), "Device", false);
            (id, token)
        })
        .collect();
    let ca = gw.ca_certs();
    let port = gw.port;
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = Arc::new(
        rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap(),
    );
    let handles: Vec<_> = pending
        .chunks(10)
        .map(|chunk| {
            let (chunk, ca, csr) = (chunk.to_vec(), ca.clone(), csr.clone());
            std::thread::spawn(move || {
                let cfg = enrollgate::client::config(&ca, None).unwrap();
                chunk
                    .into_iter()
                    .map(|(id, token)| {
                        let r = enrollgate::client::request(
                            cfg.clone(),
                            "127.0.0.1",
                            port,
                            "POST",
                            &format!("/enroll?method=ott&token={token}"),
                            &[],
                            csr.as_bytes(),
                        );
                        (id, matches!(r, Ok(ref resp) if resp.status == 200))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(40));
    assert!(gw.stop().success(), "{}", gw.log());
    let results: Vec<(String, bool)> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let acknowledged: Vec<&String> = results
        .iter()
        .filter(|(_, ok)| *ok)
        .map(|(id, _)| id)
        .collect();

    gw.spawn(&[]);
    for id in &acknowledged {
        let v = gw
            .mgmt("GET", &format!("/identities/{id}"), None)
            .json()
            .unwrap();
        assert_eq!(
            v["data"]["hasEnrolled"], true,
            "acknowledged enrollment of {id} lost"
        );
    }
    let out = run_ok(
        Command::new(BIN)
            .arg("fsck")
            .arg("--config")
            .arg(gw.data.join("enrollgate.toml")),
    );
    assert!(out.contains("no violations"), "{out}");
    eprintln!(
        "{} of {} acknowledged before the stop",
        acknowledged.len(),
        results.len()
    );
}

#[test]
fn a_config_kept_elsewhere_points_into_the_data_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let etc = tmp.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    let data = tmp.path().join("var-lib");
    run_ok(
        Command::new(BIN)
            .args(["init", "--data-dir"])
            .arg(&data)
            .arg("--config-out")
            .arg(etc.join("enrollgate.toml")),
    );
    assert!(!data.join("enrollgate.toml").exists());
    let text = std::fs::read_to_string(etc.join("enrollgate.toml")).unwrap();
    assert!(
        text.contains(&format!(
            "{}/pki/server.key",
            std::fs::canonicalize(&data).unwrap().display()
        )),
        "{text}"
    );
    let (ok, out) = check(&etc.join("enrollgate.toml"));
    assert!(ok, "{out}");

    // An existing configuration is never overwritten, and nothing else is made.
    let other = tmp.path().join("other-data");
    let out = Command::new(BIN)
        .args(["init", "--data-dir"])
        .arg(&other)
        .arg("--config-out")
        .arg(etc.join("enrollgate.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refusing to overwrite"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!other.exists());
    assert_eq!(
        std::fs::read_to_string(etc.join("enrollgate.toml")).unwrap(),
        text
    );

    // A --config-out in a directory that does not exist: refused before anything is made,
    // and an existing empty data directory keeps its mode.
    use std::os::unix::fs::PermissionsExt as _;
    let empty = tmp.path().join("empty-data");
    std::fs::create_dir(&empty).unwrap();
    std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(BIN)
        .args(["init", "--data-dir"])
        .arg(&empty)
        .arg("--config-out")
        .arg(tmp.path().join("missing").join("enrollgate.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no such directory"), "{stderr}");
    let mode = std::fs::metadata(&empty).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
}

#[test]
fn no_token_key_or_csr_reaches_the_log_even_at_trace_level() {
    let gw = Gateway::start_with(|_| {}, &[("RUST_LOG", "trace")]);
    let (_, jwt, token) = gw.create_identity("quiet", "Device", false);
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let r = gw.request(
        "POST",
        &format!("/enroll?method=ott&token={token}"),
        &[("Content-Type", "text/plain")],
        csr.as_bytes(),
    );
    assert_eq!(r.status, 200);
    let r = gw.request(
        "POST",
        "/enroll?method=ott&token=not-a-real-token-value",
        &[],
        csr.as_bytes(),
    );
    assert_eq!(r.status, 400);
    std::thread::sleep(Duration::from_millis(200));
    let log = gw.log();
    assert!(log.lines().count() > 20, "trace logging is on: {log}");
    let csr_body: String = csr.lines().nth(2).unwrap().to_string();
    for secret in [
        token.as_str(),
        jwt.as_str(),
        "not-a-real-token-value",
        "PRIVATE KEY",
        "CERTIFICATE REQUEST",
        csr_body.as_str(),
    ] {
        assert!(!log.contains(secret), "'{secret}' reached the log");
    }
}

#[test]
fn a_second_sigterm_exits_at_once() {
    use std::io::Write as _;
    let mut gw = Gateway::start_with(
        |c| *c = c.replace("grace = \"10s\"", "grace = \"30s\""),
        &[],
    );
    // A request in flight: its body never completes, so the drain would wait.
    let cfg = enrollgate::client::config(&gw.ca_certs(), None).unwrap();
    let tcp = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    let conn = rustls::ClientConnection::new(cfg, "127.0.0.1".try_into().unwrap()).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"POST /enroll?method=ott&token=x HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc")
        .unwrap();
    tls.flush().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    gw.signal("TERM");
    gw.wait_log("shutting down");
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    let status = gw.stop();
    assert!(start.elapsed() < Duration::from_secs(5), "exited at once");
    assert_eq!(status.code(), Some(130));
    drop(tls);
}

#[test]
fn metrics_health_and_readiness_endpoints() {
    let gw = Gateway::start();
    let ready = gw
        .log()
        .lines()
        .find(|l| l.contains("enrollgate ready"))
        .unwrap()
        .to_string();
    let addr = ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("metrics="))
        .expect("metrics= in the ready line")
        .to_string();
    // The accept queue is as deep as the kernel allows (it caps the backlog asked for).
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        ready.contains(&format!("accept_queue={}", somaxconn.min(65535))),
        "{ready}"
    );
    let (_, _, token) = gw.create_identity("measured", "Device", false);
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
    assert_eq!(
        gw.request(
            "POST",
            "/edge/client/v1/enroll?method=ott&token=nope",
            &[],
            csr.as_bytes()
        )
        .status,
        400
    );

    // Scrapers that connect and say nothing do not hold up the others.
    let silent: Vec<std::net::TcpStream> = (0..4)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    let get = |path: &str| {
        run_ok(
            Command::new("curl")
                .args(["-sS", "--max-time", "4", "-w", "\n%{http_code}"])
                .arg(format!("http://{addr}{path}")),
        )
    };
    let metrics = get("/metrics");
    drop(silent);
    for want in [
        "enrollgate_enrollments_total{method=\"ott\",result=\"ok\"} 1",
        "enrollgate_enrollments_total{method=\"ott\",result=\"INVALID_ENROLLMENT_TOKEN\"} 1",
        "# HELP enrollgate_commit_duration_seconds",
        "enrollgate_commit_batch_size_count",
        "enrollgate_tls_handshakes_total{result=\"ok\"}",
        "enrollgate_open_connections",
        "enrollgate_sign_batch_size_count",
        "# HELP enrollgate_sign_queue_depth",
        "enrollgate_ca_cache_size 0",
        "enrollgate_memory_connection_ceiling 0",
        // Batch sizes in counts.
        "enrollgate_sign_batch_size_bucket{le=\"1\"} 1",
        "enrollgate_sign_batch_size_bucket{le=\"1024\"} 1",
        // Series of events that have not happened yet are there, at 0.
        "enrollgate_enrollments_total{method=\"ca\",result=\"ok\"} 0",
        "enrollgate_tokens_expired_total{method=\"ott\"} 0",
        "enrollgate_tls_handshakes_total{result=\"evicted\"} 0",
        "enrollgate_rate_limited_total{limit=\"commit_queue\"} 0",
        "enrollgate_connections_pushed_out_total{state=\"slow_reader\"} 0",
        "enrollgate_ca_cache_lookups_total{result=\"miss\"} 0",
        "enrollgate_chain_signatures_total{result=\"remembered\"} 0",
        "enrollgate_commit_queue_depth 0",
    ] {
        assert!(metrics.contains(want), "{want} missing from:\n{metrics}");
    }
    assert!(
        !metrics.contains("enrollgate_sign_batch_size_bucket{le=\"0.5\"}"),
        "a size in seconds' buckets:\n{metrics}"
    );
    assert!(get("/healthz").ends_with("200"));
    assert!(get("/readyz").ends_with("200"));
    assert!(get("/nope").ends_with("404"));
}

/// `serve --listen` and `--metrics-listen` hold over the file at each reload as at start:
/// a reload does not take them for changes of `server.listen` that need a restart.
#[test]
fn a_reload_keeps_the_command_lines_listen_addresses() {
    let _machine = MachineGuard::take(false);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    run_ok(
        Command::new(BIN)
            .args(["init", "--data-dir"])
            .arg(&data)
            .args(["--listen", "127.0.0.1:1"]),
    );
    let log_path = dir.path().join("serve.log");
    /// Killed if the test fails before it stops the daemon.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = KillOnDrop(
        Command::new(BIN)
            .args(["serve", "--workers", "1", "--listen", "127.0.0.1:0"])
            .args(["--metrics-listen", "off", "--config"])
            .arg(data.join("enrollgate.toml"))
            .env_remove("RUST_LOG")
            .env_remove("JOURNAL_STREAM")
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let wait = |text: &str, times: usize| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while log().matches(text).count() < times {
            assert!(Instant::now() < deadline, "no '{text}':\n{}", log());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait("enrollgate ready", 1);
    assert!(log().contains("metrics=off"), "{}", log());
    signal(&child.0, "HUP");
    wait("configuration reloaded", 1);
    signal(&child.0, "TERM");
    let status = wait_timeout(&mut child.0, Duration::from_secs(20)).expect("stopped");
    assert!(status.success(), "{}", log());
    assert!(!log().contains("needs a restart"), "{}", log());
}
