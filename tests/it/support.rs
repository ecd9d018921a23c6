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

/// Held shared by every running [`Gateway`], and exclusively by a test that saturates the
/// machine on purpose (the renewal storm, [`Gateway::start_alone`]): the attack tests
/// assert that normal clients keep being served within a deadline, which a neighbour
/// burning every core for half a minute would break.
///
/// (gateways running, one running alone); a lock that a gateway moved to another thread
/// can carry (a `RwLock` guard cannot).
static MACHINE: (Mutex<(usize, bool)>, std::sync::Condvar) =
    (Mutex::new((0, false)), std::sync::Condvar::new());

/// A share of the machine, or all of it; given back when dropped.
pub struct MachineGuard {
    alone: bool,
}

impl MachineGuard {
    pub fn take(alone: bool) -> Self {
        let (lock, cv) = &MACHINE;
        let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
        if alone {
            while s.0 > 0 || s.1 {
                s = cv.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            s.1 = true;
        } else {
            // Not behind one waiting to run alone: a test that holds a gateway and starts a
            // second would wait for the one waiting for it. The lone test runs once the
            // gateways running have stopped, at the latest when the suite's others are done.
            while s.1 {
                s = cv.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            s.0 += 1;
        }
        Self { alone }
    }
}

impl Drop for MachineGuard {
    fn drop(&mut self) {
        let (lock, cv) = &MACHINE;
        let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.alone {
            s.1 = false;
        } else {
            s.0 -= 1;
        }
        cv.notify_all();
    }
}

/// A running daemon.
pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub port: u16,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    _machine: MachineGuard,
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

    /// A gateway made by `init` with extra arguments (`env` applies to `init` too).
    pub fn start_full(
        init_args: &[&str],
        edit: impl FnOnce(&mut String),
        env: &[(&str, &str)],
    ) -> Self {
        let guard = MachineGuard::take(false);
        Self::start_guarded(init_args, edit, env, guard)
    }

    /// A default gateway that runs alone: no other test's gateway runs beside it (for a
    /// test that saturates the machine on purpose).
    pub fn start_alone() -> Self {
        let guard = MachineGuard::take(true);
        Self::start_guarded(&[], |_| {}, &[], guard)
    }

    /// [`Gateway::start_with`], alone on the machine: for tests whose clients must meet
    /// deadlines while an attack saturates the gateway (tests/it/attack.rs). Beside other
    /// tests' gateways on two cores, those clients miss them for reasons of the machine.
    pub fn start_alone_with(edit: impl FnOnce(&mut String), env: &[(&str, &str)]) -> Self {
        let guard = MachineGuard::take(true);
        Self::start_guarded(&[], edit, env, guard)
    }

    fn start_guarded(
        init_args: &[&str],
        edit: impl FnOnce(&mut String),
        env: &[(&str, &str)],
        guard: MachineGuard,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let out = Command::new(BIN)
            .args(["init", "--data-dir"])
            .arg(&data)
            .args(["--listen", "127.0.0.1:0"])
            .args(init_args)
            .envs(env.iter().copied())
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
            _machine: guard,
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
                // Into the log first: a test that reads the log once the daemon is ready
                // must find the ready line there.
                if let Ok(mut l) = log.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
                if line.contains("enrollgate ready") {
                    let _ = tx.send(line);
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
    /// A JWT is signed anew each time it is shown (the store keeps none, and an ECDSA
    /// signature differs every time): it is compared by its header and claims.
    pub fn snapshot(&self) -> (Value, Value) {
        let mut ids = self
            .mgmt("GET", "/identities?limit=1000", None)
            .json()
            .expect("json");
        let mut ens = self
            .mgmt("GET", "/enrollments?limit=1000", None)
            .json()
            .expect("json");
        unsigned_jwts(&mut ids["data"]);
        unsigned_jwts(&mut ens["data"]);
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

    /// Another node of this gateway: a copy of its data directory (PKI, configuration,
    /// admin identity), serving the same store on a port of its own. For a store in a
    /// shared database (`init --store-url`).
    pub fn join(&self) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        run_ok(Command::new("cp").arg("-a").arg(&self.data).arg(&data));
        let mut gw = Self {
            dir,
            data,
            port: 0,
            child: None,
            log: Arc::default(),
            _machine: MachineGuard::take(false),
        };
        gw.spawn(&[]);
        gw
    }

    /// The metrics listener's `/readyz` status code.
    pub fn readyz(&self) -> u16 {
        let code = run_ok(
            Command::new("curl")
                .args([
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "10",
                ])
                .arg(format!("http://{}/readyz", self.metrics_addr())),
        );
        code.trim().parse().expect("status code")
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

/// Every `"jwt"` string under `v` without its signature.
fn unsigned_jwts(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                match v {
                    Value::String(jwt) if k == "jwt" => {
                        if let Some((signed, _)) = jwt.rsplit_once('.') {
                            *jwt = signed.to_string();
                        }
                    }
                    other => unsigned_jwts(other),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(unsigned_jwts),
        _ => {}
    }
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

/// Every file under `dir` with its bytes, sorted by path (a file that vanished while a
/// live store was read, such as a WAL being recycled, is skipped).
pub fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let path = e.path();
            if path.is_dir() {
                dirs.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path, bytes));
            }
        }
    }
    out.sort();
    out
}

/// Redeems `token` by `ott` with a fresh P-256 key and CSR made by openssl (files named
/// `name` in the gateway's temporary directory); writes the issued certificate (PEM) to
/// `<name>.crt` there and returns its path.
pub fn ott_cert(gw: &Gateway, name: &str, token: &str) -> PathBuf {
    let (_, csr) = openssl_csr(
        gw.dir.path(),
        name,
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let resp = gw.request(
        "POST",
        &format!("/enroll?method=ott&token={token}"),
        &[("Accept", "application/x-pem-file")],
        &std::fs::read(&csr).expect("csr"),
    );
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    let cert = gw.dir.path().join(format!("{name}.crt"));
    std::fs::write(&cert, &resp.body).expect("write cert");
    cert
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

// ---- Helpers for the hostile-client and property tests (attack.rs, property.rs) ----

impl Gateway {
    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The Prometheus text of the metrics listener (its address is in the ready line, the
    /// last one after a restart).
    pub fn metrics_text(&self) -> String {
        run_ok(
            Command::new("curl")
                .args(["-sSf", "--max-time", "10"])
                .arg(format!("http://{}/metrics", self.metrics_addr())),
        )
    }

    /// The metrics listener's address, from the last ready line (a restart picks another).
    pub fn metrics_addr(&self) -> String {
        self.log()
            .lines()
            .rfind(|l| l.contains("enrollgate ready"))
            .and_then(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("metrics="))
            })
            .expect("metrics= in the ready line")
            .to_string()
    }
}

/// The value of one Prometheus series (`name{labels}` exactly as exposed), 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(series))
        .filter_map(|rest| rest.strip_prefix(' '))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum::<f64>()
        + 0.0
}

/// `VmRSS` and `VmHWM` (peak RSS) of a process, in KiB.
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Open file descriptors of a process (sockets included).
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The soft and hard `Max open files` of a process, as `/proc/<pid>/limits` shows them.
pub fn nofile_of(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_default();
    let mut words = line.split_whitespace().skip(3);
    (
        words.next().unwrap_or("?").to_string(),
        words.next().unwrap_or("?").to_string(),
    )
}

/// Raises this process' soft `RLIMIT_NOFILE` to its hard limit (daemons spawned afterwards
/// inherit it); returns the new (soft, hard).
pub fn raise_nofile_limit() -> (u64, u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    }
    getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit")
}

/// Sets `[limits]` keys of the config file `init` wrote, replacing each key's line.
pub fn set_limits(pairs: &'static [(&'static str, &'static str)]) -> impl FnOnce(&mut String) {
    move |cfg: &mut String| {
        for (key, value) in pairs {
            let prefix = format!("{key} =");
            let mut found = false;
            *cfg = cfg
                .lines()
                .map(|l| {
                    if l.starts_with(&prefix) {
                        found = true;
                        format!("{key} = {value}")
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            if !found {
                *cfg = cfg.replace("[limits]\n", &format!("[limits]\n{key} = {value}\n"));
            }
        }
    }
}

/// A fresh P-256 CSR, PEM.
pub fn new_csr_pem() -> Vec<u8> {
    let key = rcgen::KeyPair::generate().expect("key");
    rcgen::CertificateParams::new(Vec::<String>::new())
        .expect("params")
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem")
        .into_bytes()
}

/// Splits `raw` into the HTTP responses it holds (interim 1xx responses skipped); the
/// second value is the number of trailing bytes that are not a complete response.
/// `head_only` says which responses answer HEAD requests (no body bytes).
pub fn split_responses(
    raw: &[u8],
    head_only: impl Fn(usize) -> bool,
) -> Result<(Vec<HttpResponse>, usize), String> {
    let mut out = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(rest) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok((out, rest.len())),
            Err(e) => {
                return Err(format!(
                    "not HTTP ({e}): {:?}",
                    String::from_utf8_lossy(&rest[..rest.len().min(200)])
                ))
            }
        };
        let status = resp.code.unwrap_or(0);
        let headers: Vec<(String, String)> = resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).trim().to_string(),
                )
            })
            .collect();
        if (100..200).contains(&status) {
            rest = &rest[n..];
            continue;
        }
        let len = if head_only(out.len()) {
            0
        } else {
            match headers.iter().find(|(k, _)| k == "content-length") {
                Some((_, v)) => v
                    .parse::<usize>()
                    .map_err(|_| format!("bad Content-Length {v:?}"))?,
                None => return Err(format!("a {status} response without Content-Length")),
            }
        };
        if rest.len() < n + len {
            return Ok((out, rest.len()));
        }
        out.push(HttpResponse {
            status,
            headers,
            body: rest[n..n + len].to_vec(),
        });
        rest = &rest[n + len..];
    }
    Ok((out, 0))
}

/// `n` redemptions of `token` with the same CSR, all at once, spread over `ports`.
pub fn race_redemptions(
    ports: &[u16],
    ca: &[CertificateDer<'static>],
    token: &str,
    csr: &str,
    n: usize,
) -> Vec<HttpResponse> {
    let barrier = Arc::new(std::sync::Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (ca, csr, token, barrier, port) = (
                ca.to_vec(),
                csr.to_string(),
                token.to_string(),
                barrier.clone(),
                ports[i % ports.len()],
            );
            std::thread::spawn(move || {
                let cfg = client::config(&ca, None).unwrap();
                barrier.wait();
                client::request(
                    cfg,
                    "127.0.0.1",
                    port,
                    "POST",
                    &format!("/edge/client/v1/enroll?method=ott&token={token}"),
                    &[("Content-Type", "text/plain")],
                    csr.as_bytes(),
                )
                .unwrap()
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}
