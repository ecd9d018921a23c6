//! Man pages and shell completions for `enrollgate`, made from the clap definition the binary
//! itself parses (`enrollgate::cli::Cli`), so that they cannot describe a command line the
//! binary does not have. `scripts/package` runs this at package time; nothing generated is
//! checked in.
//!
//! What [`write`] puts under its output directory:
//!
//! ```text
//! man1/enrollgate.1                    the command and its subcommands
//! man1/enrollgate-init.1, ...          one page per subcommand,
//! man1/enrollgate-identity-create.1    nested ones included
//! completions/bash/enrollgate          bash-completion's completions/ directory
//! completions/zsh/_enrollgate          zsh's vendor-completions/ directory
//! completions/fish/enrollgate.fish     fish's vendor_completions.d/ directory
//! ```

use std::io;
use std::path::{Path, PathBuf};

use clap::CommandFactory as _;
use clap_complete::Shell;

/// The binary's name, as users type it and as completions are registered for.
pub const BIN: &str = "enrollgate";

/// The shells completions are written for, and where under `completions/` each goes.
pub const SHELLS: [(Shell, &str); 3] = [
    (Shell::Bash, "bash/enrollgate"),
    (Shell::Zsh, "zsh/_enrollgate"),
    (Shell::Fish, "fish/enrollgate.fish"),
];

/// The full command-line definition, built (global arguments propagated, display names such
/// as `enrollgate-identity-create` set on subcommands).
pub fn command() -> clap::Command {
    let mut cmd = enrollgate::cli::Cli::command();
    cmd.build();
    cmd
}

/// One documented command: its path from the root (`["enrollgate", "identity", "create"]`)
/// and its definition.
#[derive(Debug, Clone)]
pub struct Documented {
    /// Names from the binary down to this command.
    pub path: Vec<String>,
    /// The command's definition.
    pub cmd: clap::Command,
}

impl Documented {
    /// The man page's name without section: `enrollgate-identity-create`.
    pub fn page(&self) -> String {
        self.path.join("-")
    }
}

/// Every command that gets a man page: the root and each subcommand, nested ones included,
/// except hidden ones and clap's generated `help`.
pub fn documented(root: &clap::Command) -> Vec<Documented> {
    fn walk(cmd: &clap::Command, path: Vec<String>, out: &mut Vec<Documented>) {
        out.push(Documented {
            path: path.clone(),
            cmd: cmd.clone(),
        });
        for sub in cmd.get_subcommands() {
            if sub.is_hide_set() || sub.get_name() == "help" {
                continue;
            }
            let mut p = path.clone();
            p.push(sub.get_name().to_owned());
            walk(sub, p, out);
        }
    }
    let mut out = Vec::new();
    walk(root, vec![root.get_name().to_owned()], &mut out);
    out
}

/// What [`write`] wrote.
#[derive(Debug, Default)]
pub struct Written {
    /// Man pages, `man1/<page>.1`.
    pub pages: Vec<PathBuf>,
    /// Completion scripts, one per shell.
    pub completions: Vec<PathBuf>,
}

/// Writes every man page and completion script under `out` (created if missing). `date`
/// (`YYYY-MM-DD`) goes into each page's title line; `scripts/package` passes the commit's.
pub fn write(out: &Path, date: &str) -> io::Result<Written> {
    let root = command();
    let source = format!("{BIN} {}", root.get_version().unwrap_or_default());
    let mut written = Written::default();

    let man1 = out.join("man1");
    std::fs::create_dir_all(&man1)?;
    for doc in documented(&root) {
        let man = clap_mangen::Man::new(doc.cmd.clone())
            .title(doc.page())
            .section("1")
            .date(date)
            .source(source.clone())
            .manual("enrollgate manual");
        let mut roff = Vec::new();
        man.render(&mut roff)?;
        let path = man1.join(format!("{}.1", doc.page()));
        std::fs::write(&path, roff)?;
        written.pages.push(path);
    }

    for (shell, rel) in SHELLS {
        let path = out.join("completions").join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut command(), BIN, &mut script);
        std::fs::write(&path, script)?;
        written.completions.push(path);
    }
    Ok(written)
}
