//! `scripts/install-deps --check` against fake machines: it must ask for what the build
//! really uses. A fresh Debian 12 machine has `libclang-cpp.so.14` (from llvm-14-dev) and no
//! libclang; the old check took the one for the other and installed nothing, and bindgen
//! then failed 20 minutes into the build.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::Command;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install-deps");

/// A fake root and a PATH of chosen programs.
struct Machine {
    root: tempfile::TempDir,
    bin: PathBuf,
}

impl Machine {
    /// A machine with every program the checks run (the real ones) and no library but
    /// SoftHSM2's module.
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let bin = root.path().join("fake-bin");
        std::fs::create_dir(&bin).unwrap();
        let m = Self { root, bin };
        for program in PROGRAMS {
            m.link(program);
        }
        // SoftHSM2's module, which the tests load from this path.
        m.file("usr/lib/softhsm/libsofthsm2.so");
        // PostgreSQL's server programs, where Debian puts them (off PATH), and its user.
        for program in POSTGRES_PROGRAMS {
            m.postgres_link(program);
        }
        m.passwd(&["root", "postgres"]);
        m
    }

    /// The real PostgreSQL `program` in the fake root's /usr/lib/postgresql/15/bin.
    fn postgres_link(&self, program: &str) {
        let dir = self.root.path().join(FAKE_POSTGRES_BIN);
        std::fs::create_dir_all(&dir).unwrap();
        let _ = std::fs::remove_file(dir.join(program));
        std::os::unix::fs::symlink(postgres_bin().join(program), dir.join(program)).unwrap();
    }

    /// An /etc/passwd with these users.
    fn passwd(&self, users: &[&str]) {
        let lines: String = users
            .iter()
            .enumerate()
            .map(|(i, u)| format!("{u}:x:{i}:{i}::/nonexistent:/usr/sbin/nologin\n"))
            .collect();
        std::fs::create_dir_all(self.root.path().join("etc")).unwrap();
        std::fs::write(self.root.path().join("etc/passwd"), lines).unwrap();
    }

    fn link(&self, program: &str) {
        let real = which(program);
        std::os::unix::fs::symlink(real, self.bin.join(program)).unwrap();
    }

    /// `program` linked to the real one again (after [`Machine::broken`]).
    fn link_again(&self, program: &str) {
        let _ = std::fs::remove_file(self.bin.join(program));
        self.link(program);
    }

    fn remove(&self, program: &str) {
        std::fs::remove_file(self.bin.join(program)).unwrap();
    }

    /// Replaces `program` by a script that prints its name and fails, as a broken or
    /// half-installed tool would.
    fn broken(&self, program: &str) {
        let path = self.bin.join(program);
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, "#!/bin/sh\nexit 1\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// An empty file at `rel` under the fake root (a library as far as a name check goes).
    fn file(&self, rel: &str) {
        let path = self.root.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"").unwrap();
    }

    /// What `--check` says is missing; asserts the exit code agrees.
    fn missing(&self, libclang_path: Option<&str>) -> Vec<String> {
        let mut cmd = Command::new(SCRIPT);
        cmd.arg("--check")
            .env_clear()
            .env("PATH", &self.bin)
            .env("INSTALL_DEPS_ROOT", self.root.path());
        if let Some(p) = libclang_path {
            cmd.env("LIBCLANG_PATH", p);
        }
        let out = cmd.output().unwrap();
        let listed: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        assert_eq!(
            out.status.code(),
            Some(if listed.is_empty() { 0 } else { 1 }),
            "{out:?}"
        );
        listed
    }
}

fn which(program: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} is not installed: run scripts/install-deps"))
}

/// Every program `install-deps` runs to check a package (keep in step with it: a program
/// missing here shows up as its package missing in every test below), and what they run:
/// g++ runs the assembler and the linker it was installed with, dpkg-shlibdeps runs dpkg.
const PROGRAMS: &[&str] = &[
    "bash",
    "g++",
    "as",
    "ld",
    "openssl",
    "curl",
    "promtool",
    "dpkg-shlibdeps",
    "dpkg",
    "strip",
    "readelf",
    "lintian",
    "systemd-analyze",
    "systemd-sysusers",
    "systemd-tmpfiles",
    "softhsm2-util",
    "chromium",
    "node",
    "npm",
];

/// The PostgreSQL programs `install-deps` runs, from the server's bin directory: what
/// tests/it/postgres_server.rs runs.
const POSTGRES_PROGRAMS: &[&str] = &["initdb", "pg_ctl", "pg_basebackup", "postgres", "psql"];

/// Where the fake machine has them, as Debian 12 has PostgreSQL 15's.
const FAKE_POSTGRES_BIN: &str = "usr/lib/postgresql/15/bin";

/// This machine's newest PostgreSQL server bin directory.
fn postgres_bin() -> PathBuf {
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
        .expect("PostgreSQL is not installed: run scripts/install-deps")
}

const LIBCLANG: [&str; 2] = ["libclang-dev", "clang"];

#[test]
fn libclang_cpp_alone_is_not_libclang() {
    let m = Machine::new();
    assert_eq!(m.missing(None), LIBCLANG);
    // A fresh Debian 12 machine: llvm-14-dev's libclang-cpp, in both places it puts it.
    m.file("usr/lib/llvm-14/lib/libclang-cpp.so.14");
    m.file("usr/lib/x86_64-linux-gnu/libclang-cpp.so.14");
    m.file("usr/lib/llvm-14/lib/libclang-cpp.so");
    assert_eq!(m.missing(None), LIBCLANG);
    // Other libclang look-alikes that clang-sys does not load either.
    m.file("usr/lib/llvm-14/lib/libclangBasic.a");
    m.file("usr/lib/x86_64-linux-gnu/libclang-common.txt");
    assert_eq!(m.missing(None), LIBCLANG);
}

#[test]
fn the_names_clang_sys_loads_are_found() {
    for name in [
        "usr/lib/llvm-14/lib/libclang-14.so.1",
        "usr/lib/llvm-16/lib/libclang.so.1",
        "usr/lib/x86_64-linux-gnu/libclang-14.so",
        "usr/lib/x86_64-linux-gnu/libclang.so",
        "usr/local/lib/libclang.so.18.1",
    ] {
        let m = Machine::new();
        m.file("usr/lib/llvm-14/lib/libclang-cpp.so.14");
        m.file(name);
        assert_eq!(m.missing(None), Vec::<String>::new(), "{name}");
    }
}

#[test]
fn libclang_path_is_searched() {
    let m = Machine::new();
    m.file("opt/llvm/lib/libclang.so.17");
    assert_eq!(m.missing(None), LIBCLANG);
    assert_eq!(m.missing(Some("/opt/llvm/lib")), Vec::<String>::new());
    // clang-sys also takes the library file itself.
    assert_eq!(
        m.missing(Some("/opt/llvm/lib/libclang.so.17")),
        Vec::<String>::new()
    );
}

#[test]
fn programs_are_checked_by_running_them() {
    let m = Machine::new();
    m.file("usr/lib/llvm-14/lib/libclang-14.so.1");
    assert_eq!(m.missing(None), Vec::<String>::new());
    m.remove("curl");
    assert_eq!(m.missing(None), ["curl"]);
    // A g++ that cannot compile (no libstdc++ headers, say) is as good as none.
    m.broken("g++");
    m.broken("openssl");
    assert_eq!(m.missing(None), ["g++", "openssl", "curl"]);
}

#[test]
fn a_bad_argument_is_refused() {
    let out = Command::new(SCRIPT)
        .arg("--install-everything")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage"));
}

/// SoftHSM2 is there when its module is where the tests load it from and its tool runs.
#[test]
fn softhsm2_needs_its_module_and_a_working_tool() {
    let m = Machine::new();
    assert!(!m.missing(None).contains(&"softhsm2".to_string()));
    m.broken("softhsm2-util");
    assert!(m.missing(None).contains(&"softhsm2".to_string()));
    m.link_again("softhsm2-util");
    std::fs::remove_file(m.root.path().join("usr/lib/softhsm/libsofthsm2.so")).unwrap();
    assert!(m.missing(None).contains(&"softhsm2".to_string()));
}

/// The console's browser tests need Debian's chromium, node and npm, each checked by
/// running it; a node that cannot run means npm cannot either.
#[test]
fn the_browser_tests_tools_are_checked() {
    let m = Machine::new();
    m.file("usr/lib/llvm-14/lib/libclang-14.so.1");
    assert_eq!(m.missing(None), Vec::<String>::new());
    m.remove("chromium");
    assert_eq!(m.missing(None), ["chromium"]);
    m.broken("node");
    assert_eq!(m.missing(None), ["chromium", "nodejs", "npm"]);
}

/// PostgreSQL is there when every server program the tests run runs from the newest server
/// bin directory (Debian keeps them off PATH) and the postgres user exists.
#[test]
fn postgresql_needs_its_server_programs_and_its_user() {
    let m = Machine::new();
    m.file("usr/lib/llvm-14/lib/libclang-14.so.1");
    assert_eq!(m.missing(None), Vec::<String>::new());
    let bin = m.root.path().join(FAKE_POSTGRES_BIN);

    // A client alone (postgresql-client-16, say) is no server.
    let client_only = m.root.path().join("usr/lib/postgresql/16/bin");
    std::fs::create_dir_all(&client_only).unwrap();
    std::os::unix::fs::symlink(postgres_bin().join("psql"), client_only.join("psql")).unwrap();
    assert_eq!(m.missing(None), Vec::<String>::new());

    for program in POSTGRES_PROGRAMS {
        std::fs::remove_file(bin.join(program)).unwrap();
        assert_eq!(m.missing(None), ["postgresql"], "without {program}");
        std::fs::write(bin.join(program), "#!/bin/sh\nexit 1\n").unwrap();
        std::fs::set_permissions(bin.join(program), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        assert_eq!(m.missing(None), ["postgresql"], "with a broken {program}");
        m.postgres_link(program);
        assert_eq!(m.missing(None), Vec::<String>::new(), "{program} back");
    }

    // No postgres user to run the server as.
    m.passwd(&["root", "postgresql", "xpostgres"]);
    assert_eq!(m.missing(None), ["postgresql"]);
    m.passwd(&["root", "postgres"]);
    assert_eq!(m.missing(None), Vec::<String>::new());
}
