//! The checks every configuration value goes through: each refusal is collected as a
//! [`Problem`] naming its key, so that one run of `check-config` lists them all.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Problem;
use crate::admission::{Limit, Rate};

pub(super) struct Checker {
    pub(super) base: PathBuf,
    pub(super) problems: Vec<Problem>,
}

/// The prefix of a key path that names a systemd credential (`ca_key =
/// "credential:ca.key"`), read from `$CREDENTIALS_DIRECTORY`.
pub const CREDENTIAL: &str = "credential:";

/// The longest duration a setting takes.
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

impl Checker {
    pub(super) fn problem(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.to_string(),
            message: message.into(),
        });
    }

    pub(super) fn duration(
        &mut self,
        key: &str,
        v: Option<&String>,
        default: Duration,
    ) -> Duration {
        match v {
            None => default,
            Some(s) => match humantime::parse_duration(s) {
                // Deadlines are instants from now: a duration past any clock's range would
                // overflow where it is added.
                Ok(d) if d > MAX_DURATION => {
                    self.problem(key, "must be at most 100 years");
                    default
                }
                Ok(d) if !d.is_zero() => d,
                Ok(_) => {
                    self.problem(key, "must be longer than zero");
                    default
                }
                Err(_) => {
                    self.problem(
                        key,
                        format!("'{s}' is not a duration (e.g. \"10s\", \"24h\", \"365d\")"),
                    );
                    default
                }
            },
        }
    }

    pub(super) fn path(&mut self, key: &str, v: Option<&String>, default: &str) -> PathBuf {
        let p = v.map(String::as_str).unwrap_or(default);
        if let Some(name) = p.strip_prefix(CREDENTIAL) {
            return self.credential(key, name);
        }
        // A key in a PKCS#11 token: kept as written (`pki::hsm` opens it).
        if crate::pki::hsm::Pkcs11Uri::is_uri(p) {
            if let Err(e) = crate::pki::hsm::Pkcs11Uri::parse(p) {
                self.problem(key, e.to_string());
            }
            return PathBuf::from(p);
        }
        if p.is_empty() {
            self.problem(key, "must not be empty");
        }
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    /// The file of the systemd credential `name` (`LoadCredential=`,
    /// `LoadCredentialEncrypted=`): `$CREDENTIALS_DIRECTORY/<name>`, which systemd makes
    /// for the service's processes alone, readable by its user only, in memory.
    pub(super) fn credential(&mut self, key: &str, name: &str) -> PathBuf {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            self.problem(
                key,
                format!("'{CREDENTIAL}{name}' is not a credential name (a file name, no '/')"),
            );
            return PathBuf::from(name);
        }
        let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty()) else {
            self.problem(
                key,
                format!(
                    "names the systemd credential '{name}', but $CREDENTIALS_DIRECTORY is not \
                     set: systemd sets it for a unit with LoadCredential= or \
                     LoadCredentialEncrypted= (see systemd/README.md)"
                ),
            );
            return PathBuf::from(name);
        };
        let path = PathBuf::from(dir).join(name);
        if !path.is_file() {
            self.problem(
                key,
                format!(
                    "the systemd credential '{name}' is not in $CREDENTIALS_DIRECTORY ({}): is \
                     it passed with LoadCredential={name}:... or LoadCredentialEncrypted={name}:...?",
                    path.display()
                ),
            );
        }
        path
    }

    /// A rate limit: `rate` ("50/s", "off" or absent for none) and its burst (default:
    /// the rate's count).
    pub(super) fn rate_limit(
        &mut self,
        rate_key: &str,
        rate: Option<&str>,
        burst_key: &str,
        burst: Option<u32>,
    ) -> Option<Limit> {
        let rate = match rate {
            None | Some("off") => {
                if burst.is_some() {
                    self.problem(burst_key, format!("has no effect without {rate_key}"));
                }
                return None;
            }
            Some(text) => match Rate::parse(text) {
                Ok(r) => r,
                Err(m) => {
                    self.problem(rate_key, m);
                    return None;
                }
            },
        };
        let burst = match burst {
            Some(0) => {
                self.problem(burst_key, "must be at least 1");
                1
            }
            Some(b) => b,
            None => rate.count,
        };
        Some(Limit { rate, burst })
    }

    pub(super) fn positive(&mut self, key: &str, v: Option<usize>, default: usize) -> usize {
        match v {
            Some(0) => {
                self.problem(key, "must be at least 1");
                default
            }
            Some(n) => n,
            None => default,
        }
    }
}
