//! A throwaway PostgreSQL server for the tests of enrollgate on PostgreSQL (issue #20):
//! `initdb` into a temporary directory, the server on a loopback port and on a Unix socket in
//! that directory, stopped (`-m immediate`) and removed when dropped, also when a test panics.
//!
//! ```text
//!   /dev/shm/eg-pg-XXXXXX/        owned by the postgres OS user, mode 0700 (else in /tmp)
//!   ├── .s.PGSQL.<port>           the socket: the superuser `postgres`, trusted, for psql()
//!   ├── server.log                pg_ctl -l: every start of this server, appended
//!   └── data/                     initdb --no-sync; fsync stays on at run time
//!       ├── postgresql.conf       + our settings and `include 'harness.conf'`
//!       ├── harness.conf          this server's own: port, socket, the primary's sync standby
//!       └── pg_hba.conf           the socket: postgres trusted (and its replication);
//!                                 127.0.0.1: the role `enrollgate`, scram-sha-256 only
//! ```
//!
//! The tests run as root and PostgreSQL refuses to: its programs run as the `postgres` OS user
//! through `runuser` (util-linux, in every Debian). As another user they run as that user.
//! The programs come from the server's own bin directory (`pg_config --bindir`, else the newest
//! `/usr/lib/postgresql/N/bin`): Debian does not put `initdb` or `pg_ctl` on PATH, and its
//! `/usr/bin/psql` is a wrapper that picks a cluster.
//!
//! Ports are taken below the kernel's ephemeral range: the gateways and clients of the other
//! tests bind port 0 and so can never take a server's port while it is stopped between
//! [`PgServer::stop_immediate`] and [`PgServer::start_again`].

use std::collections::HashSet;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::support::MachineGuard;

/// The OS user that runs the server and the server's superuser, trusted on the socket only.
const SUPERUSER: &str = "postgres";
/// The login role the gateways use, with a password, over TCP on 127.0.0.1.
pub const ROLE: &str = "enrollgate";
/// The database made for the gateways, owned by [`ROLE`].
pub const DATABASE: &str = "enrollgate";
/// The standby's `application_name`, which the primary's `synchronous_standby_names` names.
const STANDBY_NAME: &str = "standby1";
/// How long a start, a promotion or a standby's catching up may take before a test fails.
const PATIENCE: Duration = Duration::from_secs(60);

/// Ports handed to a server of this process and not yet given back (by its drop): a stopped
/// server's port is free for a bind test but still its own.
static PORTS_TAKEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A PostgreSQL server in a temporary directory, on 127.0.0.1 and a Unix socket.
pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    password: String,
    /// This server's lines of harness.conf beyond its port and socket (the primary's
    /// replication settings), written again whenever the port changes.
    extra_conf: Vec<String>,
    _machine: MachineGuard,
}

impl PgServer {
    /// A running server with the role [`ROLE`] (a random password) and the database
    /// [`DATABASE`].
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A primary with a synchronous standby (`standby1`, streaming): a commit on the primary
    /// returns once the standby has flushed it. Both run when this returns, and the primary's
    /// `pg_stat_replication` shows the standby as `sync`.
    pub fn primary_with_sync_standby() -> (Self, Self) {
        let mut primary = Self::start_with(&["wal_level = replica", "max_wal_senders = 4"]);
        // Only now, with the role and the database made: with a synchronous standby named
        // and none connected, every commit waits.
        primary.extra_conf.extend([
            format!("synchronous_standby_names = '{STANDBY_NAME}'"),
            "synchronous_commit = on".to_string(),
        ]);
        primary.write_harness_conf();
        primary.psql("SELECT pg_reload_conf()");
        let mut standby = Self {
            dir: new_dir(),
            bin: primary.bin.clone(),
            port: 0,
            password: primary.password.clone(),
            // Not the primary's sync settings: once promoted, the standby would wait for a
            // standby of its own on every commit.
            extra_conf: Vec::new(),
            _machine: MachineGuard::take(false),
        };
        // The standby follows the primary over the primary's socket, as the trusted
        // superuser; -R writes standby.signal and this conninfo as primary_conninfo.
        let conninfo = format!(
            "host={} port={} user={SUPERUSER} application_name={STANDBY_NAME}",
            primary.socket_dir().display(),
            primary.port
        );
        standby.run(
            standby
                .program("pg_basebackup")
                .arg("-D")
                .arg(standby.data())
                .args(["-R", "-X", "stream", "-c", "fast", "--no-sync", "-d"])
                .arg(&conninfo),
        );
        standby.first_start();
        let deadline = Instant::now() + PATIENCE;
        let sql = format!(
            "SELECT sync_state FROM pg_stat_replication WHERE application_name = '{STANDBY_NAME}'"
        );
        while primary.psql(&sql) != "sync" {
            assert!(
                Instant::now() < deadline,
                "the standby did not become synchronous\nprimary log:\n{}\nstandby log:\n{}",
                primary.log(),
                standby.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        (primary, standby)
    }

    /// A URL naming every server, for a client that must find the one that takes writes:
    /// `postgresql://enrollgate:PW@127.0.0.1:P1,127.0.0.1:P2/enrollgate?target_session_attrs=read-write`.
    pub fn multi_host_url(servers: &[&PgServer]) -> String {
        let first = servers
            .first()
            .expect("multi_host_url of at least one server");
        assert!(
            servers.iter().all(|s| s.password == first.password),
            "multi_host_url of servers that share the role (a primary and its standbys)"
        );
        let hosts: Vec<String> = servers
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!(
            "postgresql://{ROLE}:{}@{}/{DATABASE}?target_session_attrs=read-write",
            first.password,
            hosts.join(",")
        )
    }

    /// `postgresql://enrollgate:PASSWORD@127.0.0.1:PORT/enrollgate`.
    pub fn url(&self) -> String {
        format!(
            "postgresql://{ROLE}:{}@127.0.0.1:{}/{DATABASE}",
            self.password, self.port
        )
    }

    /// The password of [`ROLE`] (hex: safe in a URL and a password file as it is).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The TCP port on 127.0.0.1; the same after [`PgServer::start_again`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temporary directory (the socket, server.log, data/).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `sql` with psql as the superuser in [`DATABASE`], statement by statement, and
    /// returns what it printed (unaligned, tuples only, without the last newline).
    /// Panics with psql's error when a statement fails.
    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql)
            .unwrap_or_else(|e| panic!("psql failed on port {}: {e}\nSQL: {sql}", self.port))
    }

    /// [`PgServer::psql`], with psql's error when a statement fails.
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        self.try_psql_in(DATABASE, sql)
    }

    /// The postmaster's process id (from postmaster.pid); panics when it is not running.
    pub fn pid(&self) -> u32 {
        let pidfile = self.data().join("postmaster.pid");
        let text = std::fs::read_to_string(&pidfile)
            .unwrap_or_else(|e| panic!("{}: {e}: is the server running?", pidfile.display()));
        text.lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("no pid in {}: {text:?}", pidfile.display()))
    }

    /// Stops the server as a crash would (`pg_ctl -m immediate stop`): no checkpoint, the
    /// next start recovers from the WAL. Returns once the postmaster has exited (pg_ctl
    /// returns when postmaster.pid is gone, which the postmaster removes just before).
    pub fn stop_immediate(&self) {
        let pid = self.pid();
        self.run(self.program("pg_ctl").arg("-D").arg(self.data()).args([
            "-m",
            "immediate",
            "-w",
            "stop",
        ]));
        assert!(
            exited(pid, PATIENCE),
            "the postmaster {pid} outlived its stop"
        );
    }

    /// Starts the server again on the same port after [`PgServer::stop_immediate`].
    pub fn start_again(&self) {
        if let Err(log) = self.pg_ctl_start() {
            panic!(
                "PostgreSQL did not start again on port {}:\n{log}",
                self.port
            );
        }
    }

    /// Promotes a standby to a primary (`pg_ctl promote -w`): it takes writes when this
    /// returns.
    pub fn promote(&self) {
        self.run(
            self.program("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-w", "-t", "60", "promote"]),
        );
    }

    /// Everything the server logged, over all its starts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    /// [`PgServer::start`] with more settings for postgresql.conf, one a line (for a test
    /// that needs, say, `max_connections = 300`); they hold from the first start on.
    pub fn start_with(extra_conf: &[&str]) -> Self {
        let mut server = Self {
            dir: new_dir(),
            bin: bin_dir().to_path_buf(),
            port: 0,
            password: random_hex(16),
            extra_conf: extra_conf.iter().map(|l| l.to_string()).collect(),
            _machine: MachineGuard::take(false),
        };
        server.run(
            server
                .program("initdb")
                .arg("-D")
                .arg(server.data())
                .args(["-U", SUPERUSER, "--auth=trust", "-E", "UTF8"])
                .args(["--locale=C", "--no-sync"]),
        );
        append(
            &server.data().join("postgresql.conf"),
            "\n# enrollgate's test harness (tests/it/postgres_server.rs)\n\
             listen_addresses = '127.0.0.1'\n\
             shared_buffers = 16MB\n\
             fsync = on\n\
             password_encryption = 'scram-sha-256'\n\
             include 'harness.conf'\n",
        );
        write_owned(
            &server.data().join("pg_hba.conf"),
            &format!(
                "# TYPE DATABASE     USER         ADDRESS       METHOD\n\
                 local  all          {SUPERUSER}                 trust\n\
                 local  replication  {SUPERUSER}                 trust\n\
                 host   all          {ROLE}   127.0.0.1/32  scram-sha-256\n"
            ),
        );
        server.first_start();
        server.psql_in(
            "postgres",
            &format!(
                "CREATE ROLE {ROLE} LOGIN PASSWORD '{}';\n\
                 CREATE DATABASE {DATABASE} OWNER {ROLE};\n",
                server.password
            ),
        );
        server
    }

    /// Starts the server on a free port, taking another when the one found was taken by the
    /// time the server bound it.
    fn first_start(&mut self) {
        for _ in 0..20 {
            self.port = take_port();
            self.write_harness_conf();
            match self.pg_ctl_start() {
                Ok(()) => return,
                Err(log) if log.contains("could not bind") => {
                    give_back_port(self.port);
                    self.port = 0;
                }
                Err(log) => panic!("PostgreSQL did not start:\n{log}"),
            }
        }
        panic!("PostgreSQL found no free port in 20 tries:\n{}", self.log());
    }

    fn write_harness_conf(&self) {
        let mut conf = format!(
            "port = {}\nunix_socket_directories = '{}'\n",
            self.port,
            self.socket_dir().display()
        );
        for line in &self.extra_conf {
            conf.push_str(line);
            conf.push('\n');
        }
        write_owned(&self.data().join("harness.conf"), &conf);
    }

    /// `pg_ctl start -w`; on failure, what the server logged in this attempt.
    fn pg_ctl_start(&self) -> Result<(), String> {
        let logged = self.log().len();
        let out = self
            .program("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.log_file())
            .args(["-w", "-t", "60", "start"])
            .output()
            .expect("run pg_ctl");
        if out.status.success() {
            return Ok(());
        }
        let log = self.log();
        Err(format!(
            "{}{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            log.get(logged..).unwrap_or(&log)
        ))
    }

    fn psql_in(&self, database: &str, sql: &str) -> String {
        self.try_psql_in(database, sql)
            .unwrap_or_else(|e| panic!("psql failed on port {}: {e}\nSQL: {sql}", self.port))
    }

    fn try_psql_in(&self, database: &str, sql: &str) -> Result<String, String> {
        let mut child = self
            .program("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.socket_dir())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                "-d",
                database,
            ])
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run psql");
        let mut stdin = child.stdin.take().expect("psql's stdin");
        // psql may exit before it reads its input (a server that is down, which some tests
        // expect): its status and stderr say why, not the pipe it left.
        if let Err(e) = stdin.write_all(sql.as_bytes()) {
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "SQL to psql: {e}");
        }
        drop(stdin);
        let out = child.wait_with_output().expect("psql's output");
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.ends_with('\n') {
            text.pop();
        }
        Ok(text)
    }

    /// `program` from the server's bin directory, as the postgres OS user when we are root,
    /// with an environment of our own (no PG* variable of the caller's) and `/` as the working
    /// directory (the postgres user may not enter the caller's).
    fn program(&self, program: &str) -> Command {
        as_server_user(&self.bin.join(program))
    }

    /// Runs `cmd`; panics with its output and the server's log when it fails.
    fn run(&self, cmd: &mut Command) -> Output {
        let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        out
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        stop_postmaster(&self.data());
        if self.port != 0 {
            give_back_port(self.port);
        }
    }
}

/// Stops the postmaster of the data directory `data` if one runs (`pg_ctl -m immediate
/// stop`) and kills it if it outlives that (a hung server; its children notice their
/// postmaster is gone and exit). Errors are ignored: this is the last resort of a drop.
fn stop_postmaster(data: &Path) {
    let Some(pid) = std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
    else {
        return;
    };
    let _ = as_server_user(&bin_dir().join("pg_ctl"))
        .arg("-D")
        .arg(data)
        .args(["-m", "immediate", "-w", "-t", "10", "stop"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    // Only this data directory's postmaster: the pid in a stale postmaster.pid may name
    // another process by now.
    let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&*data.to_string_lossy()));
    if ours && !exited(pid, Duration::from_secs(10)) {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
}

/// This process as `pid start-time` (/proc/PID/stat's 22nd field): a pid alone may be
/// reused.
fn process_identity(pid: &str) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let start = stat.rsplit_once(") ")?.1.split_whitespace().nth(19)?;
    Some(format!("{pid} {start}"))
}

/// Stops and removes, once per test process, the servers left behind by test processes
/// that were killed (a Ctrl-C, a timeout) and so never ran their drops: each directory
/// names its test process in `owner`. Directories of test processes still running (this
/// one, another checkout's) are left alone.
fn sweep_orphans(base: &Path) {
    static SWEPT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    let mut swept = SWEPT.lock().unwrap_or_else(|e| e.into_inner());
    if swept.iter().any(|b| b == base) {
        return;
    }
    swept.push(base.to_path_buf());
    sweep(base);
}

/// Stops and removes the servers under `base` whose test process is gone.
fn sweep(base: &Path) {
    for entry in std::fs::read_dir(base).into_iter().flatten().flatten() {
        let dir = entry.path();
        if !entry.file_name().to_string_lossy().starts_with("eg-pg-") {
            continue;
        }
        let Ok(owner) = std::fs::read_to_string(dir.join("owner")) else {
            continue;
        };
        let pid = owner.split_whitespace().next().unwrap_or_default();
        if process_identity(pid).as_deref() == Some(owner.trim()) {
            continue;
        }
        stop_postmaster(&dir.join("data"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The server's bin directory: `pg_config --bindir` when it holds `initdb` (Debian's
/// pg_config from libpq-dev alone says /usr/bin, which does not), else the newest
/// `/usr/lib/postgresql/N/bin` that does.
fn bin_dir() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let from_pg_config = Command::new("pg_config")
            .arg("--bindir")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
        if let Some(dir) = from_pg_config.filter(|d| d.join("initdb").is_file()) {
            return dir;
        }
        std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let version: u32 = e.file_name().to_str()?.parse().ok()?;
                let bin = e.path().join("bin");
                bin.join("initdb").is_file().then_some((version, bin))
            })
            .max()
            .map(|(_, bin)| bin)
            .expect("no PostgreSQL server (initdb) found: run scripts/install-deps")
    })
}

/// Whether process `pid` runs: exists and is no zombie (a stopped postmaster is its init's
/// to reap, which may take a moment).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

/// Waits up to `limit` for process `pid` to exit; whether it did.
fn exited(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// Whether `dir` is a writable tmpfs mount point.
fn is_tmpfs(dir: &Path) -> bool {
    let mounted = std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let mut f = l.split_whitespace();
            f.nth(1) == Some(dir.to_str().unwrap_or_default()) && f.next() == Some("tmpfs")
        });
    mounted && rustix::fs::access(dir, rustix::fs::Access::WRITE_OK).is_ok()
}

fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// `program` as the postgres OS user when we are root (PostgreSQL refuses to run as root),
/// else as ourselves.
fn as_server_user(program: &Path) -> Command {
    let mut cmd = if running_as_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", SUPERUSER, "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    };
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C")
        .current_dir("/");
    cmd
}

/// A new directory given to the postgres OS user, in memory when the machine has a tmpfs at
/// /dev/shm, else under /tmp (never the caller's TMPDIR, whose parents the postgres user may
/// not be able to traverse).
///
/// Why memory: on a disk shared with builds, the crash recovery after every
/// [`PgServer::stop_immediate`] (it fsyncs each of the ~1,500 files initdb wrote) and the
/// removal of the directory took 3-5 s each, where the issue asks for 1-2 s per server. The
/// server still runs with `fsync = on`, and nothing a test can do tells the two apart: a
/// stop, immediate or not, loses no commit that the kernel has; only the machine's crash
/// would, and no test crashes the machine.
fn new_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let base = if is_tmpfs(shm) {
        shm
    } else {
        Path::new("/tmp")
    };
    sweep_orphans(base);
    let dir = tempfile::Builder::new()
        .prefix("eg-pg-")
        .tempdir_in(base)
        .unwrap_or_else(|e| panic!("temp dir under {}: {e}", base.display()));
    let me = process_identity(&std::process::id().to_string()).expect("/proc/self/stat");
    std::fs::write(dir.path().join("owner"), me).expect("write owner");
    if running_as_root() {
        let out = Command::new("chown")
            .arg(format!("{SUPERUSER}:"))
            .arg(dir.path())
            .output()
            .expect("run chown");
        assert!(
            out.status.success(),
            "chown {SUPERUSER}: {} failed (is there a postgres user? scripts/install-deps \
             installs PostgreSQL, which makes it): {}",
            dir.path().display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir
}

/// Writes `contents` to `path` and, as root, gives the file to the postgres OS user.
pub fn write_owned(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if running_as_root() {
        let out = Command::new("chown")
            .arg(format!("{SUPERUSER}:"))
            .arg(path)
            .output()
            .expect("run chown");
        assert!(out.status.success(), "chown {}: {out:?}", path.display());
    }
}

fn append(path: &Path, text: &str) {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    file.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    bytes
}

fn random_hex(n: usize) -> String {
    random_bytes(n).iter().map(|b| format!("{b:02x}")).collect()
}

/// A port no server of this process holds and nothing binds now: below the kernel's
/// ephemeral range when it leaves room there (so that no port-0 bind can take it while the
/// server is stopped), else one the kernel hands out for port 0.
fn take_port() -> u16 {
    let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let mut taken = PORTS_TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    let taken = taken.get_or_insert_with(HashSet::new);
    for _ in 0..100 {
        let port = if low > 12_000 {
            let r = random_bytes(2);
            10_000 + u16::from_le_bytes([r[0], r[1]]) % (low - 10_000)
        } else {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("bind 127.0.0.1:0")
                .port()
        };
        if port == 5432 || taken.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            taken.insert(port);
            return port;
        }
    }
    panic!("no free port for PostgreSQL on 127.0.0.1 in 100 tries");
}

fn give_back_port(port: u16) {
    let mut taken = PORTS_TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(taken) = taken.as_mut() {
        taken.remove(&port);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// psql from the server's bin directory as a client of ours would be: this process's
    /// user, over TCP, no password file unless given, no prompt.
    fn client_psql(args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new(bin_dir().join("psql"))
            .args(["-X", "-w", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LC_ALL", "C")
            .env("PGPASSFILE", "/nonexistent/pgpass")
            .envs(env.iter().copied())
            .output()
            .expect("run psql")
    }

    fn stdout(out: &Output) -> String {
        assert!(out.status.success(), "psql failed: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    }

    #[test]
    fn the_role_logs_in_with_its_password_and_only_with_it() {
        let pg = PgServer::start();
        let port = pg.port().to_string();
        let tcp = ["-h", "127.0.0.1", "-p", &port, "-U", ROLE, "-d", DATABASE];
        let who = "SELECT current_user || ' ' || current_database() || ' ' || inet_server_port()";
        let expected = format!("{ROLE} {DATABASE} {port}");

        // The password in the URL, in the environment, in a password file.
        assert_eq!(stdout(&client_psql(&[&pg.url(), "-c", who], &[])), expected);
        let mut with_env = tcp.to_vec();
        with_env.extend(["-c", who]);
        assert_eq!(
            stdout(&client_psql(&with_env, &[("PGPASSWORD", pg.password())])),
            expected
        );
        let passfile = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            passfile.path(),
            format!("127.0.0.1:{port}:{DATABASE}:{ROLE}:{}\n", pg.password()),
        )
        .unwrap();
        std::fs::set_permissions(
            passfile.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let passfile = passfile.path().to_str().unwrap();
        assert_eq!(
            stdout(&client_psql(&with_env, &[("PGPASSFILE", passfile)])),
            expected
        );

        // A wrong password and none at all are refused.
        let wrong = client_psql(&with_env, &[("PGPASSWORD", "not-the-password")]);
        assert!(!wrong.status.success());
        assert!(
            String::from_utf8_lossy(&wrong.stderr).contains("password authentication failed"),
            "{wrong:?}"
        );
        let none = client_psql(&with_env, &[]);
        assert!(!none.status.success(), "{none:?}");
        // The superuser is not reachable over TCP, even with the role's password.
        let superuser = client_psql(
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                SUPERUSER,
                "-c",
                "SELECT 1",
            ],
            &[("PGPASSWORD", pg.password())],
        );
        assert!(!superuser.status.success(), "{superuser:?}");

        // The password is stored as a SCRAM verifier, and the server syncs its writes.
        assert_eq!(
            pg.psql(&format!(
                "SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = '{ROLE}'"
            )),
            "t"
        );
        assert_eq!(pg.psql("SHOW fsync"), "on");
        assert_eq!(pg.psql("SHOW synchronous_commit"), "on");
    }

    #[test]
    fn a_committed_row_survives_an_immediate_stop() {
        let pg = PgServer::start();
        pg.psql(&format!(
            "SET ROLE {ROLE}; CREATE TABLE t (v text); INSERT INTO t VALUES ('kept');"
        ));
        let (port, pid) = (pg.port(), pg.pid());
        assert!(alive(pid));

        pg.stop_immediate();
        assert!(!alive(pid), "the postmaster {pid} outlived its stop");
        assert!(
            pg.try_psql("SELECT 1").is_err(),
            "a stopped server answered"
        );

        pg.start_again();
        assert_eq!(pg.port(), port);
        assert_ne!(pg.pid(), pid);
        assert_eq!(pg.psql("SELECT v FROM t"), "kept");
        // The stop was a crash: the start recovered from the WAL.
        assert!(
            pg.log().contains("automatic recovery in progress"),
            "{}",
            pg.log()
        );
        // And the role still logs in on the same URL.
        let out = client_psql(&[&pg.url(), "-c", "SELECT v FROM t"], &[]);
        assert_eq!(stdout(&out), "kept");
    }

    #[test]
    fn dropping_a_server_stops_it_and_removes_its_directory() {
        let pg = PgServer::start();
        let (pid, dir) = (pg.pid(), pg.dir().to_path_buf());
        assert!(alive(pid) && dir.exists());
        drop(pg);
        assert!(!alive(pid), "the postmaster {pid} outlived its PgServer");
        assert!(!dir.exists());
    }

    #[test]
    fn a_server_whose_test_process_died_is_swept_away() {
        let pg = PgServer::start();
        let (pid, dir) = (pg.pid(), pg.dir().to_path_buf());
        // As if the test process had been killed: its identity names no running process.
        std::fs::write(dir.join("owner"), "0 0").unwrap();
        let other = PgServer::start();
        sweep(dir.parent().unwrap());
        assert!(!alive(pid), "the orphan's postmaster {pid} still runs");
        assert!(!dir.exists());
        // This process's other servers are left alone.
        assert_eq!(other.psql("SELECT 1"), "1");
        drop(pg);
    }

    #[test]
    fn the_sync_standby_has_every_commit_and_takes_over() {
        let (primary, standby) = PgServer::primary_with_sync_standby();
        assert_eq!(
            primary.psql("SELECT application_name, sync_state FROM pg_stat_replication"),
            "standby1|sync"
        );
        assert_eq!(standby.psql("SELECT pg_is_in_recovery()"), "t");
        let url = PgServer::multi_host_url(&[&primary, &standby]);
        let server_port = "SELECT inet_server_port()";
        assert_eq!(
            stdout(&client_psql(&[&url, "-c", server_port], &[])),
            primary.port().to_string()
        );

        primary.psql("CREATE TABLE t (v text); INSERT INTO t VALUES ('committed');");
        // A standby takes no writes.
        let refused = standby.try_psql("INSERT INTO t VALUES ('on the standby')");
        assert!(
            refused.as_ref().is_err_and(|e| e.contains("read-only")),
            "{refused:?}"
        );

        primary.stop_immediate();
        standby.promote();
        assert_eq!(standby.psql("SELECT pg_is_in_recovery()"), "f");
        assert_eq!(standby.psql("SELECT v FROM t"), "committed");
        standby.psql("INSERT INTO t VALUES ('after the failover')");
        assert_eq!(standby.psql("SELECT count(*) FROM t"), "2");
        // A client with both hosts in its URL finds the new primary.
        assert_eq!(
            stdout(&client_psql(&[&url, "-c", server_port], &[])),
            standby.port().to_string()
        );
    }
}
