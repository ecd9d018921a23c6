//! `enrollgate identity disable|enable|re-enroll`: taking an identity's certificate out
//! of service, through the management API.

use std::path::PathBuf;

use serde_json::json;

use super::admin::{text, Admin, JwtOut};
use super::{AdminArgs, CliError};

/// `identity` subcommands of a certificate's life after enrollment.
#[derive(Debug, clap::Subcommand)]
pub enum SuspendCommand {
    /// Disable an identity: it cannot authenticate, renew or enroll, and its API sessions
    /// end at once.
    Disable {
        /// Name or id.
        #[arg(value_name = "NAME|ID")]
        target: String,
        /// End the suspension by itself after this time (e.g. 30m, 2h, 7d); default: until
        /// `identity enable`.
        #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
        #[command(flatten)]
        #[allow(missing_docs)]
        admin_args: AdminArgs,
    },
    /// Enable a disabled identity.
    Enable {
        /// Name or id.
        #[arg(value_name = "NAME|ID")]
        target: String,
        #[command(flatten)]
        #[allow(missing_docs)]
        admin_args: AdminArgs,
    },
    /// Reset an identity's enrollment: its certificate stops working at once (revoked),
    /// and a new one-time token enrolls it again with the same id, name and roles.
    #[command(name = "re-enroll")]
    ReEnroll {
        /// Name or id.
        #[arg(value_name = "NAME|ID")]
        target: String,
        /// Write the enrollment JWT here (mode 0600); default: standard output.
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        #[command(flatten)]
        #[allow(missing_docs)]
        admin_args: AdminArgs,
    },
}

/// Runs one of these subcommands.
pub fn run(cmd: SuspendCommand) -> Result<(), CliError> {
    match cmd {
        SuspendCommand::Disable {
            target,
            duration,
            admin_args,
        } => {
            let api = Admin::load(&admin_args)?;
            let found = api.resolve(&target)?;
            let id = text(&found, "id");
            let body = match duration {
                // At least a second: 0 would mean "until enabled".
                Some(d) => json!({ "durationSeconds": d.as_secs().max(1) }),
                None => json!({}),
            };
            let after = api.data("POST", &format!("/identities/{id}/disable"), Some(&body))?;
            let until = match after.get("disabledUntil").and_then(|u| u.as_str()) {
                Some(u) => format!("until {u}"),
                None => "until enabled".into(),
            };
            eprintln!("disabled '{}' ({id}) {until}", text(&found, "name"));
            Ok(())
        }
        SuspendCommand::Enable { target, admin_args } => {
            let api = Admin::load(&admin_args)?;
            let found = api.resolve(&target)?;
            let id = text(&found, "id");
            api.data(
                "POST",
                &format!("/identities/{id}/enable"),
                Some(&json!({})),
            )?;
            eprintln!("enabled '{}' ({id})", text(&found, "name"));
            Ok(())
        }
        SuspendCommand::ReEnroll {
            target,
            output,
            admin_args,
        } => {
            let api = Admin::load(&admin_args)?;
            let found = api.resolve(&target)?;
            let id = text(&found, "id");
            let out = JwtOut::open(output.as_ref())?;
            let e = api.data(
                "POST",
                &format!("/identities/{id}/re-enroll"),
                Some(&json!({})),
            )?;
            let note = format!(
                "re-enrolling '{}' ({id}): its certificate is revoked; the new token expires {}",
                text(&found, "name"),
                text(&e, "expiresAt")
            );
            out.write_enrollment(&e, &note)
        }
    }
}
