//! The test harness: a real `enrollgate` daemon in a temp dir on 127.0.0.1 port 0, and
//! clients that talk to it over real TLS.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use enrollgate::client::{self, HttpResponse};
use enrollgate::identity_file::IdentityFile;
use rustls_pki_types::CertificateDer;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_enrollgate");

/// A running daemon.
pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub port: u16,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
}

impl Gateway {
    /// A gateway with the default configuration and 2 workers.
    pub fn start() -> Self {
        Self::start_with(|_| {}, &[])
    }

    /// A gateway whose config file is edited by `edit` before it starts, with extra
    /// environment variables.
    pub fn start_with(edit: impl FnOnce(&mut String), env: &[(&str, &str)]) -> Self {
        Self::start_full(&[], edit, env)
    }

    /// A gateway made by `init` with extra arguments.
    pub fn start_full(
        init_args: &[&str],
        edit: impl FnOnce(&mut String),
        env: &[(&str, &str)],
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let out = Command::new(BIN)
            .args(["init", "--data-dir"])
            .arg(&data)
            .args(["--listen", "127.0.0.1:0"])
            .args(init_args)
            .output()
            .expect("run init");
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cfg_path = data.join("enrollgate.toml");
        // Tests run side by side: each gateway's metrics listener takes a free port.
        let mut cfg = std::fs::read_to_string(&cfg_path)
            .expect("config")
            .replace("listen = \"127.0.0.1:9464\"", "listen = \"127.0.0.1:0\"");
        edit(&mut cfg);
        std::fs::write(&cfg_path, cfg).expect("write config");
        let mut gw = Self {
            dir,
            data,
            port: 0,
            child: None,
            log: Arc::default(),
        };
        gw.spawn(env);
        gw
    }

    /// Starts (or restarts) the daemon process and waits for its ready line.
    pub fn spawn(&mut self, env: &[(&str, &str)]) {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--workers", "2", "--config"])
            .arg(self.data.join("enrollgate.toml"))
            .env_remove("RUST_LOG")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = self.log.clone();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("enrollgate ready") {
                    let _ = tx.send(line.clone());
                }
                if let Ok(mut l) = log.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
        let ready = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("the daemon did not become ready:\n{}", self.log());
            }
        };
        // Owned before anything below can panic, so Drop always kills it.
        self.child = Some(child);
        let addr = ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix("listen="))
            .expect("listen= in the ready line");
        self.port = addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        // The admin identity file was written for port 0: point it at the real port.
        let path = self.data.join("admin.json");
        let mut admin: Value =
            serde_json::from_slice(&std::fs::read(&path).expect("admin.json")).expect("json");
        admin["ztAPI"] = Value::String(format!("https://127.0.0.1:{}/edge/client/v1", self.port));
        std::fs::write(&path, serde_json::to_vec_pretty(&admin).expect("json"))
            .expect("write admin");
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn admin_file(&self) -> PathBuf {
        self.data.join("admin.json")
    }

    pub fn ca_file(&self) -> PathBuf {
        self.data.join("pki/ca.crt")
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn ca_certs(&self) -> Vec<CertificateDer<'static>> {
        enrollgate::pki::read_cert_chain(&self.ca_file())
            .expect("ca")
            .into_iter()
            .map(CertificateDer::from)
            .collect()
    }

    /// A request without a client certificate, verifying the server against the CA.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> HttpResponse {
        let cfg = client::config(&self.ca_certs(), None).expect("client config");
        client::request(cfg, "127.0.0.1", self.port, method, path, headers, body).expect("request")
    }

    /// A request authenticated with an identity file.
    pub fn request_as(
        &self,
        identity: &Path,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> HttpResponse {
        let f = IdentityFile::read(identity).expect("identity file");
        let cfg = client::config(
            &self.ca_certs(),
            Some((f.cert_chain().expect("cert"), f.private_key().expect("key"))),
        )
        .expect("client config");
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let headers: &[(&str, &str)] = if body.is_some() {
            &[("Content-Type", "application/json")]
        } else {
            &[]
        };
        client::request(cfg, "127.0.0.1", self.port, method, path, headers, &bytes)
            .expect("request")
    }

    /// A management API call as the admin.
    pub fn mgmt(&self, method: &str, path: &str, body: Option<&Value>) -> HttpResponse {
        self.request_as(
            &self.admin_file(),
            method,
            &format!("/edge/management/v1{path}"),
            body,
        )
    }

    /// Creates an identity with an `ott` enrollment; returns (id, jwt, token).
    pub fn create_identity(&self, name: &str, kind: &str, admin: bool) -> (String, String, String) {
        let body = serde_json::json!({
            "name": name, "type": kind, "isAdmin": admin, "enrollment": {"ott": true}
        });
        let resp = self.mgmt("POST", "/identities", Some(&body));
        assert_eq!(resp.status, 201, "{}", String::from_utf8_lossy(&resp.body));
        let v = resp.json().expect("json");
        let id = v["data"]["id"].as_str().expect("id").to_string();
        let jwt = v["data"]["enrollment"]["ott"]["jwt"]
            .as_str()
            .expect("jwt")
            .to_string();
        let token = v["data"]["enrollment"]["ott"]["token"]
            .as_str()
            .expect("token")
            .to_string();
        (id, jwt, token)
    }

    /// The store as the management API shows it: every identity and pending enrollment.
    pub fn snapshot(&self) -> (Value, Value) {
        let ids = self
            .mgmt("GET", "/identities?limit=1000", None)
            .json()
            .expect("json");
        let ens = self
            .mgmt("GET", "/enrollments?limit=1000", None)
            .json()
            .expect("json");
        (ids["data"].clone(), ens["data"].clone())
    }

    /// Runs the CLI with the admin identity in the environment.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .current_dir(self.dir.path())
            .env("ENROLLGATE_IDENTITY", self.admin_file())
            .output()
            .expect("run cli")
    }

    /// Sends a signal (`HUP`, `TERM`, ...) to the daemon.
    pub fn signal(&self, sig: &str) {
        signal(self.child.as_ref().expect("running"), sig);
    }

    /// Waits until the log contains `text` (at most 20 s).
    pub fn wait_log(&self, text: &str) {
        let start = std::time::Instant::now();
        while !self.log().contains(text) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no '{text}' in the log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the daemon with SIGKILL (a crash) and reaps it.
    pub fn crash(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        signal(&child, "TERM");
        wait_timeout(&mut child, Duration::from_secs(30))
            .expect("the daemon did not stop after SIGTERM")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .expect("kill")
        .success();
    assert!(ok);
}

pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Runs a command, asserting it succeeds; returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The token (jti) of a JWT.
pub fn token_of(jwt: &str) -> String {
    enrollgate::token::jwt::peek(jwt).expect("jwt").1.jti
}

/// A CSR made by openssl for a new key of `keyspec` (`ec`, `rsa:2048`, ...), PEM.
pub fn openssl_csr(dir: &Path, name: &str, keyspec: &[&str]) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let mut gen = Command::new("openssl");
    gen.arg("genpkey").args(keyspec).arg("-out").arg(&key);
    run_ok(&mut gen);
    run_ok(
        Command::new("openssl")
            .args(["req", "-new", "-key"])
            .arg(&key)
            .args([
                "-subj",
                "/CN=ignored-by-the-gateway/O=evil",
                "-addext",
                "subjectAltName=DNS:evil.example",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-out",
            ])
            .arg(&csr),
    );
    (key, csr)
}

/// The error code of an error response.
pub fn code(resp: &HttpResponse) -> String {
    resp.api_error().map(|(c, _)| c).unwrap_or_else(|| {
        format!(
            "HTTP {} {}",
            resp.status,
            String::from_utf8_lossy(&resp.body)
        )
    })
}
