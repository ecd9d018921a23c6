//! The daemon started in-process (`enrollgate::daemon`), as mini-redis's tests start its
//! server: listeners bound to port 0, a shutdown handle, a real store and real TLS. The
//! other suites run the binary; this one shows that the daemon is a library call with a
//! clean stop, and that what it acknowledged is in the store when it has returned.

use std::sync::mpsc;
use std::time::Duration;

use enrollgate::client;
use enrollgate::daemon::Daemon;
use enrollgate::identity_file::IdentityFile;
use rustls_pki_types::CertificateDer;
use serde_json::{json, Value};

use crate::support::*;

/// A daemon serving in a thread of this process until [`InProcess::stop`] (or dropped, on
/// a failed assertion: stopped and joined all the same).
struct InProcess {
    port: u16,
    shutdown: enrollgate::server::Shutdown,
    thread: Option<std::thread::JoinHandle<Result<(), enrollgate::daemon::DaemonError>>>,
    // Held while serving, as `serve` holds it.
    _port_lock: enrollgate::server::listener::PortLock,
}

impl InProcess {
    fn start(config_path: &std::path::Path) -> Self {
        let config = enrollgate::config::Config::load(config_path).unwrap();
        let opened = Daemon::open(config).unwrap();
        let (listeners, port_lock) =
            enrollgate::server::listener::bind("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let (shutdown, signal) = enrollgate::server::shutdown_pair();
        let daemon = opened.start(listeners, &signal).unwrap();
        let port = daemon.local_addr().port();
        assert_ne!(port, 0);
        let (ready_tx, ready_rx) = mpsc::channel();
        let stopper = shutdown.clone();
        let thread = std::thread::spawn(move || {
            daemon.serve(&stopper, signal, move |started| {
                let _ = ready_tx.send(started.len());
            })
        });
        let gw = Self {
            port,
            shutdown,
            thread: Some(thread),
            _port_lock: port_lock,
        };
        let workers = ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the daemon did not become ready");
        assert_eq!(workers, 2);
        gw
    }

    fn stop(mut self) {
        self.shutdown.trigger();
        let thread = self.thread.take().expect("serving");
        thread
            .join()
            .expect("the daemon thread panicked")
            .expect("the daemon stopped in error");
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn call(
    ca: &[CertificateDer<'static>],
    port: u16,
    identity: Option<&IdentityFile>,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> client::HttpResponse {
    let auth = identity.map(|f| (f.cert_chain().unwrap(), f.private_key().unwrap()));
    let cfg = client::config(ca, auth).unwrap();
    let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    let headers: &[(&str, &str)] = match body {
        Some(_) => &[("Content-Type", "application/json")],
        None => &[],
    };
    client::request(cfg, "127.0.0.1", port, method, path, headers, &bytes).unwrap()
}

#[test]
fn the_daemon_serves_in_process_and_keeps_what_it_acknowledged_after_it_stops() {
    let _machine = MachineGuard::take(false);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    run_ok(
        std::process::Command::new(BIN)
            .args(["init", "--data-dir"])
            .arg(&data)
            .args(["--listen", "127.0.0.1:0"]),
    );
    let config = data.join("enrollgate.toml");
    let ca: Vec<CertificateDer<'static>> =
        enrollgate::pki::read_cert_chain(&data.join("pki/ca.crt"))
            .unwrap()
            .into_iter()
            .map(CertificateDer::from)
            .collect();
    let admin = IdentityFile::read(&data.join("admin.json")).unwrap();

    let gw = InProcess::start(&config);
    let version = call(&ca, gw.port, None, "GET", "/version", None);
    assert_eq!(version.status, 200);
    let created = call(
        &ca,
        gw.port,
        Some(&admin),
        "POST",
        "/edge/management/v1/identities",
        Some(&json!({"name": "InProc", "type": "Device", "enrollment": {"ott": true}})),
    );
    assert_eq!(
        created.status,
        201,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    let v = created.json().unwrap();
    let id = v["data"]["id"].as_str().unwrap().to_string();
    let token = v["data"]["enrollment"]["ott"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, csr) = openssl_csr(
        dir.path(),
        "inproc",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let cfg = client::config(&ca, None).unwrap();
    let enrolled = client::request(
        cfg,
        "127.0.0.1",
        gw.port,
        "POST",
        &format!("/enroll?method=ott&token={token}"),
        &[("Content-Type", "application/x-pem-file")],
        &std::fs::read(&csr).unwrap(),
    )
    .unwrap();
    assert_eq!(
        enrolled.status,
        200,
        "{}",
        String::from_utf8_lossy(&enrolled.body)
    );
    gw.stop();

    // Stopped, the daemon let go of the store (RocksDB's lock), and the enrollment it
    // acknowledged is there for the next daemon on the same directory.
    let again = InProcess::start(&config);
    let shown = call(
        &ca,
        again.port,
        Some(&admin),
        "GET",
        &format!("/edge/management/v1/identities/{id}"),
        None,
    );
    assert_eq!(shown.status, 200);
    let shown = shown.json().unwrap();
    assert_eq!(shown["data"]["name"], "InProc");
    assert!(
        shown["data"]["authenticators"]["cert"]["fingerprint"].is_string(),
        "the enrolled certificate is bound: {shown}"
    );
    let reused = call(
        &ca,
        again.port,
        None,
        "POST",
        "/enroll/ott",
        Some(&json!({"token": token, "clientCsr": std::fs::read_to_string(&csr).unwrap()})),
    );
    assert_eq!(reused.status, 400);
    assert_eq!(code(&reused), "INVALID_ENROLLMENT_TOKEN");
    again.stop();
}
