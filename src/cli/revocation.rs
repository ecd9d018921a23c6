//! `enrollgate revocation list|lift`: revoked certificates, and lifting the block on a
//! third-party certificate so that it may enroll again.

use super::admin::{text, Admin};
use super::{AdminArgs, CliError};

/// `revocation` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum RevocationCommand {
    /// List revoked serials (on the CRL until they expire) and blocked third-party
    /// certificates.
    List {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        #[allow(missing_docs)]
        admin_args: AdminArgs,
    },
    /// Let a blocked third-party certificate enroll again (by its id in the list, or its
    /// SHA-256 fingerprint).
    Lift {
        /// The id `revocation list` shows, or the certificate's SHA-256 fingerprint.
        #[arg(value_name = "ID|FINGERPRINT")]
        target: String,
        #[command(flatten)]
        #[allow(missing_docs)]
        admin_args: AdminArgs,
    },
}

/// Runs a `revocation` subcommand.
pub fn run(cmd: RevocationCommand) -> Result<(), CliError> {
    match cmd {
        RevocationCommand::List { json, admin_args } => {
            let api = Admin::load(&admin_args)?;
            let v = api.call("GET", "/revocations", None)?.json()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                return Ok(());
            }
            println!(
                "{:<12} {:<66} {:<18} {:<12} {:<21} EXPIRES",
                "KIND", "ID", "IDENTITY", "REASON", "REVOKED"
            );
            let list = v["data"].as_array().cloned().unwrap_or_default();
            for r in &list {
                println!(
                    "{:<12} {:<66} {:<18} {:<12} {:<21} {}",
                    text(r, "kind"),
                    text(r, "id"),
                    text(r, "identityId"),
                    text(r, "reason"),
                    text(r, "revokedAt"),
                    text(r, "expiresAt"),
                );
            }
            eprintln!("{} revocation(s)", list.len());
            Ok(())
        }
        RevocationCommand::Lift { target, admin_args } => {
            let api = Admin::load(&admin_args)?;
            let wanted = target.replace(':', "").to_ascii_lowercase();
            let list = api.data("GET", "/revocations", None)?;
            let found = list
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| text(r, "id") == wanted || text(r, "fingerprint") == wanted)
                .ok_or_else(|| {
                    CliError::new(format!("no revocation with id or fingerprint '{target}'"))
                })?;
            if found["liftable"] != serde_json::Value::Bool(true) {
                return Err(CliError::new(format!(
                    "'{target}' is a certificate enrollgate issued: it stays revoked (re-enroll \
                     the identity for a new one)"
                )));
            }
            let id = text(found, "id");
            api.call("DELETE", &format!("/revocations/{id}"), None)?;
            eprintln!(
                "lifted: the certificate of '{}' may enroll again",
                text(found, "identityName")
            );
            Ok(())
        }
    }
}
