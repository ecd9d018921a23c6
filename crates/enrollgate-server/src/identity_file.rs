//! The OpenZiti identity file:
//! `{"ztAPI":"https://host:port/edge/client/v1","id":{"key":"pem:...","cert":"pem:...","ca":"pem:..."}}`
//! It holds a private key: written with mode 0600, never over an existing file.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use crate::config::PublicUrl;

/// The key, certificate and CA bundle of an identity.
#[derive(Clone, Serialize, Deserialize)]
pub struct IdMaterial {
    /// `pem:` + private key PEM.
    pub key: String,
    /// `pem:` + certificate chain PEM.
    pub cert: String,
    /// `pem:` + CA bundle PEM.
    pub ca: String,
}

/// An identity file.
#[derive(Clone, Serialize, Deserialize)]
pub struct IdentityFile {
    /// The client API URL.
    #[serde(rename = "ztAPI")]
    pub zt_api: String,
    /// The credentials.
    pub id: IdMaterial,
}

impl std::fmt::Debug for IdentityFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityFile")
            .field("zt_api", &self.zt_api)
            .field("key", &"...")
            .finish_non_exhaustive()
    }
}

/// An identity file could not be read, used or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityFileError {
    /// IO.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The content is not an identity file.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

fn strip_pem(s: &str) -> &str {
    s.strip_prefix("pem:").unwrap_or(s)
}

/// Writes `data` to a new file at `path` with mode 0600; refuses to replace a file.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), IdentityFileError> {
    let io = |source| IdentityFileError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = create_private(path)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)
}

/// Creates `path`, which must not exist, readable by its owner only, and opens it for
/// writing.
pub fn create_private(path: &Path) -> Result<std::fs::File, IdentityFileError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| IdentityFileError::Io {
            path: path.display().to_string(),
            source,
        })
}

/// Room reserved for an identity file before the enrollment that fills it (an RSA-4096 key,
/// a certificate chain and the CA bundle, JSON-escaped, take about 12 KiB).
const RESERVED: u64 = 64 * 1024;

/// A private file (an identity file, a JWT) made by a step that spends something: its room
/// is taken *before* that step (the enrollment that spends the token, the creation of a
/// token), so that a directory that cannot be written, or a full
/// disk, fails while the token is still good: a hidden file beside it (0600) with the room
/// reserved, renamed to the final name (never over an existing file) once filled, and
/// removed if never filled. A run killed meanwhile leaves only that hidden file, which
/// does not stand in the way of a retry.
#[derive(Debug)]
pub struct PendingFile {
    path: std::path::PathBuf,
    temp: std::path::PathBuf,
    file: Option<std::fs::File>,
}

impl PendingFile {
    /// Reserves the room for `path`, which must not exist.
    pub fn create(path: &Path) -> Result<Self, IdentityFileError> {
        let err = |p: &Path, source: std::io::Error| IdentityFileError::Io {
            path: p.display().to_string(),
            source,
        };
        if path.exists() {
            return Err(err(path, std::io::ErrorKind::AlreadyExists.into()));
        }
        let name = path
            .file_name()
            .ok_or_else(|| err(path, std::io::ErrorKind::InvalidInput.into()))?;
        let mut hidden = std::ffi::OsString::from(".");
        hidden.push(name);
        hidden.push(format!(".{}.enrolling", std::process::id()));
        let temp = path.with_file_name(hidden);
        let file = create_private(&temp).map_err(|e| match e {
            // Name the file the user asked for: the hidden one is ours.
            IdentityFileError::Io { source, .. } => err(path, source),
            other => other,
        })?;
        let pending = Self {
            path: path.to_path_buf(),
            temp,
            file: Some(file),
        };
        if let Some(f) = &pending.file {
            match rustix::fs::fallocate(f, rustix::fs::FallocateFlags::empty(), 0, RESERVED) {
                // A file system without fallocate: the write below is the only check.
                Err(rustix::io::Errno::OPNOTSUPP) | Ok(()) => {}
                Err(e) => return Err(err(path, e.into())),
            }
        }
        Ok(pending)
    }

    /// Writes `identity`, trimmed to its length and synced, under the final name.
    pub fn write(self, identity: &IdentityFile) -> Result<(), IdentityFileError> {
        let mut json =
            serde_json::to_vec_pretty(identity).map_err(|e| IdentityFileError::Invalid {
                path: self.path.display().to_string(),
                reason: e.to_string(),
            })?;
        json.push(b'\n');
        self.write_bytes(&json)
    }

    /// Writes `data`, trimmed to its length and synced, under the final name.
    pub fn write_bytes(mut self, data: &[u8]) -> Result<(), IdentityFileError> {
        let io = |source| IdentityFileError::Io {
            path: self.path.display().to_string(),
            source,
        };
        let f = self
            .file
            .as_mut()
            .ok_or_else(|| IdentityFileError::Invalid {
                path: self.path.display().to_string(),
                reason: "written twice".into(),
            })?;
        f.write_all(data)
            .and_then(|()| f.set_len(data.len() as u64))
            .and_then(|()| f.sync_all())
            .map_err(io)?;
        rename_no_replace(&self.temp, &self.path).map_err(io)?;
        self.file = None;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    }

    /// The file's final name.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Renames `from` to `to` unless `to` exists (then `AlreadyExists`).
fn rename_no_replace(from: &Path, to: &Path) -> std::io::Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        // A file system without RENAME_NOREPLACE: a hard link also never replaces.
        Err(rustix::io::Errno::INVAL) => {
            std::fs::hard_link(from, to)?;
            std::fs::remove_file(from)
        }
        Err(e) => Err(e.into()),
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

impl IdentityFile {
    /// A new identity file for `public_url`.
    pub fn new(public_url: &PublicUrl, key_pem: &str, cert_pem: &str, ca_pem: &str) -> Self {
        Self {
            zt_api: format!("{}{}", public_url.origin(), crate::http::CLIENT_PREFIX),
            id: IdMaterial {
                key: format!("pem:{key_pem}"),
                cert: format!("pem:{cert_pem}"),
                ca: format!("pem:{ca_pem}"),
            },
        }
    }

    /// Writes the file (mode 0600, refusing to overwrite).
    pub fn write_new(&self, path: &Path) -> Result<(), IdentityFileError> {
        let mut json = serde_json::to_vec_pretty(self).map_err(|e| IdentityFileError::Invalid {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        json.push(b'\n');
        write_private(path, &json)
    }

    /// Reads a file.
    pub fn read(path: &Path) -> Result<Self, IdentityFileError> {
        let text = std::fs::read(path).map_err(|source| IdentityFileError::Io {
            path: path.display().to_string(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|_| IdentityFileError::Invalid {
            path: path.display().to_string(),
            reason:
                "not an identity file (expected {\"ztAPI\":...,\"id\":{\"key\",\"cert\",\"ca\"}})"
                    .into(),
        })
    }

    fn invalid(&self, reason: &str) -> IdentityFileError {
        IdentityFileError::Invalid {
            path: self.zt_api.clone(),
            reason: reason.into(),
        }
    }

    /// Host and port of the controller.
    pub fn endpoint(&self) -> Result<PublicUrl, IdentityFileError> {
        let uri: http::Uri = self
            .zt_api
            .parse()
            .map_err(|_| self.invalid("ztAPI is not a URL"))?;
        let host = uri
            .host()
            .ok_or_else(|| self.invalid("ztAPI has no host"))?;
        Ok(PublicUrl {
            host: host.to_string(),
            port: uri.port_u16().unwrap_or(443),
        })
    }

    /// The CA bundle, DER.
    pub fn ca_certs(&self) -> Result<Vec<CertificateDer<'static>>, IdentityFileError> {
        certs(strip_pem(&self.id.ca)).ok_or_else(|| self.invalid("id.ca holds no certificate"))
    }

    /// The certificate chain, DER.
    pub fn cert_chain(&self) -> Result<Vec<CertificateDer<'static>>, IdentityFileError> {
        certs(strip_pem(&self.id.cert)).ok_or_else(|| self.invalid("id.cert holds no certificate"))
    }

    /// The private key.
    pub fn private_key(&self) -> Result<PrivateKeyDer<'static>, IdentityFileError> {
        let block =
            pem::parse(strip_pem(&self.id.key)).map_err(|_| self.invalid("id.key is not PEM"))?;
        let der = block.contents().to_vec();
        match block.tag() {
            "PRIVATE KEY" => Ok(rustls_pki_types::PrivatePkcs8KeyDer::from(der).into()),
            "EC PRIVATE KEY" => Ok(rustls_pki_types::PrivateSec1KeyDer::from(der).into()),
            "RSA PRIVATE KEY" => Ok(rustls_pki_types::PrivatePkcs1KeyDer::from(der).into()),
            _ => Err(self.invalid("id.key is not a private key")),
        }
    }
}

fn certs(text: &str) -> Option<Vec<CertificateDer<'static>>> {
    let blocks = pem::parse_many(text).ok()?;
    let out: Vec<CertificateDer<'static>> = blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| CertificateDer::from(b.into_contents()))
        .collect();
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn a_pending_file_is_reserved_then_filled_or_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.json");
        let entries = || std::fs::read_dir(dir.path()).unwrap().count();
        // Not written: nothing is left, so a retry can use the same path.
        let pending = PendingFile::create(&path).unwrap();
        assert_eq!(entries(), 1, "the room is taken beside it");
        assert!(!path.exists());
        drop(pending);
        assert_eq!(entries(), 0);
        let pending = PendingFile::create(&path).unwrap();
        let url = PublicUrl::parse("https://gw.example:8443").unwrap();
        let id = IdentityFile::new(&url, "KEY", "CERT", "CA");
        pending.write(&id).unwrap();
        assert_eq!(entries(), 1);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Trimmed to its content: the reserved room is given back.
        let text = std::fs::read(&path).unwrap();
        let back: IdentityFile = serde_json::from_slice(&text).unwrap();
        assert_eq!(back.id.cert, "pem:CERT");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), text.len() as u64);
        // Never over an existing file, whether it was there at the start or came meanwhile.
        assert!(PendingFile::create(&path).is_err());
        let other = dir.path().join("other.json");
        let pending = PendingFile::create(&other).unwrap();
        std::fs::write(&other, b"theirs").unwrap();
        assert!(pending.write(&id).is_err());
        assert_eq!(std::fs::read(&other).unwrap(), b"theirs");
        assert_eq!(entries(), 2, "the hidden file is removed");
    }

    #[test]
    fn written_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.json");
        let url = PublicUrl::parse("https://gw.example:8443").unwrap();
        let f = IdentityFile::new(&url, "KEY", "CERT", "CA");
        f.write_new(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(f.write_new(&path).is_err());
        let back = IdentityFile::read(&path).unwrap();
        assert_eq!(back.zt_api, "https://gw.example:8443/edge/client/v1");
        assert_eq!(back.id.key, "pem:KEY");
        assert_eq!(back.endpoint().unwrap(), url);
        assert!(!format!("{back:?}").contains("KEY"));
    }
}
