//! The command line: `init`, `serve`, `quickstart`, `identity ...`, `ca ...` and
//! `console ...` (management, with an admin identity file) and `enroll` (the device side).

pub mod admin;
pub mod ca;
pub mod console;
pub mod enroll;
pub mod identity;
pub mod init;
pub mod logging;
pub mod ops;
pub mod renew;
pub mod revocation;
pub mod serve;
pub mod suspend;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// How a command failed; each kind exits with its own code, so that a script can tell a
/// refusal it should not retry from a machine it cannot reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Something on this machine: a file, the configuration, the store, a key (exit 1).
    Local,
    /// The command line asks for something impossible (exit 2, as for clap's own errors).
    Usage,
    /// The gateway answered with an error (exit 3): the message carries its code.
    Refused,
    /// The gateway could not be reached or did not speak TLS/HTTP as expected (exit 4).
    Unreachable,
}

impl Failure {
    /// The process exit code of this kind of failure.
    pub fn exit_code(self) -> i32 {
        match self {
            Self::Local => 1,
            Self::Usage => 2,
            Self::Refused => 3,
            Self::Unreachable => 4,
        }
    }
}

/// A CLI failure: one clear line, and its kind ([`Failure`]).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    /// What kind of failure.
    pub kind: Failure,
    /// The line printed.
    pub message: String,
}

impl CliError {
    /// A local failure with this message.
    pub fn new(msg: impl Into<String>) -> Self {
        Self {
            kind: Failure::Local,
            message: msg.into(),
        }
    }

    /// A refusal by the gateway.
    pub fn refused(msg: impl Into<String>) -> Self {
        Self {
            kind: Failure::Refused,
            message: msg.into(),
        }
    }

    /// A command line that cannot be carried out as given.
    pub fn usage(msg: impl Into<String>) -> Self {
        Self {
            kind: Failure::Usage,
            message: msg.into(),
        }
    }

    /// The process exit code.
    pub fn exit_code(&self) -> i32 {
        self.kind.exit_code()
    }
}

macro_rules! cli_from {
    ($($t:ty),*) => {$(
        impl From<$t> for CliError {
            fn from(e: $t) -> Self { Self::new(e.to_string()) }
        }
    )*};
}
cli_from!(
    crate::config::ConfigError,
    crate::store::StoreError,
    crate::pki::IssueError,
    crate::pki::LoadError,
    crate::app::SetupError,
    crate::daemon::DaemonError,
    crate::identity_file::IdentityFileError,
    crate::token::JwtError,
    rcgen::Error,
    std::io::Error
);

impl From<crate::client::ClientError> for CliError {
    fn from(e: crate::client::ClientError) -> Self {
        Self {
            kind: Failure::Unreachable,
            message: e.to_string(),
        }
    }
}

/// What `--version` prints after the name: the crate's version and the commit it was built
/// from (`unknown` outside a git checkout; see build.rs).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("ENROLLGATE_COMMIT"),
    ")"
);

/// enrollgate: an mTLS enrollment gateway speaking OpenZiti's enrollment protocol.
#[derive(Debug, Parser)]
#[command(name = "enrollgate", version = VERSION, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a data directory: internal CA, server certificate, store, config, admin identity.
    Init(init::InitArgs),
    /// Run the gateway.
    Serve(serve::ServeArgs),
    /// Initialise ./enrollgate-data on first use, print how to enroll, and serve it.
    Quickstart(init::QuickstartArgs),
    /// Manage identities (needs an admin identity file).
    #[command(subcommand)]
    Identity(identity::IdentityCommand),
    /// Manage third-party CAs (needs an admin identity file).
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Revoked certificates; lift the block on a third-party one (needs an admin identity
    /// file).
    #[command(subcommand)]
    Revocation(revocation::RevocationCommand),
    /// The web console (needs an admin identity file).
    #[command(subcommand)]
    Console(console::ConsoleCommand),
    /// Check a configuration file and the files it names; exit 1 on any problem.
    CheckConfig(ops::ConfigArg),
    /// Check the store's invariants (I1-I5), also while the daemon serves.
    Fsck(ops::ConfigArg),
    /// Copy the RocksDB store into an empty PostgreSQL database (the daemon stopped), for
    /// several gateways on one database
    Migrate(ops::MigrateArgs),
    /// Copy the store, consistently, while the daemon serves.
    Backup(ops::BackupArgs),
    /// Put a backup in place of the store (the daemon must be stopped).
    Restore(ops::RestoreArgs),
    /// Enroll this machine with an enrollment JWT, writing an identity file.
    Enroll(enroll::EnrollArgs),
    /// Renew this machine's certificate (extend + verify), rewriting its identity file.
    Renew(renew::RenewArgs),
}

/// Where management commands find the admin identity file.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// Admin identity file (default: $ENROLLGATE_IDENTITY, else ./enrollgate-data/admin.json).
    #[arg(long, env = "ENROLLGATE_IDENTITY", global = true)]
    pub identity: Option<PathBuf>,
}

impl AdminArgs {
    /// The identity file to use.
    pub fn path(&self) -> Result<PathBuf, CliError> {
        if let Some(p) = &self.identity {
            return Ok(p.clone());
        }
        let fallback = PathBuf::from(init::DEFAULT_DATA_DIR).join("admin.json");
        if fallback.exists() {
            return Ok(fallback);
        }
        Err(CliError::new(
            "no admin identity file: pass --identity FILE or set ENROLLGATE_IDENTITY",
        ))
    }
}

/// Runs the parsed command. Every file a command makes is its user's alone (umask 077):
/// tokens, identity files, keys, and the store's and backups' files, which hold pending
/// tokens in clear.
pub fn run(cli: Cli) -> Result<(), CliError> {
    crate::ops::process::private_umask();
    match cli.command {
        Command::Init(a) => init::init(a).map(|done| {
            // On stderr: stdout stays empty for scripts.
            eprintln!(
                "initialized; serve with `enrollgate serve --config {}`; the admin identity \
                 file is {} (ENROLLGATE_IDENTITY for the CLI)",
                done.config.display(),
                done.admin.display()
            );
        }),
        Command::Serve(a) => serve::serve(a),
        Command::Quickstart(a) => init::quickstart(a),
        Command::Identity(c) => identity::run(c),
        Command::Ca(c) => ca::run(c),
        Command::Revocation(c) => revocation::run(c),
        Command::Console(c) => console::run(c),
        Command::CheckConfig(a) => ops::check_config(a),
        Command::Fsck(a) => ops::fsck(a),
        Command::Migrate(a) => ops::migrate(a),
        Command::Backup(a) => ops::backup(a),
        Command::Restore(a) => ops::restore(a),
        Command::Enroll(a) => enroll::enroll(a),
        Command::Renew(a) => renew::renew(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_definition_is_consistent() {
        // Catches argument id collisions such as a positional named like a global option.
        Cli::command().debug_assert();
    }

    #[test]
    fn a_name_and_the_admin_file_are_separate_arguments() {
        let cli = Cli::try_parse_from([
            "enrollgate",
            "identity",
            "reissue",
            "late",
            "-o",
            "t.jwt",
            "--identity",
            "admin.json",
        ])
        .unwrap();
        match cli.command {
            Command::Identity(identity::IdentityCommand::Reissue {
                target,
                output,
                admin_args,
            }) => {
                assert_eq!(target, "late");
                assert_eq!(output.unwrap(), PathBuf::from("t.jwt"));
                assert_eq!(admin_args.identity.unwrap(), PathBuf::from("admin.json"));
            }
            other => panic!("{other:?}"),
        }
    }
}
