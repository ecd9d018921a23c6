//! The internal CA key in a PKCS#11 token (an HSM, a YubiKey, SoftHSM2): certificates are
//! signed inside the token, and the key never exists in a file or in this process.
//!
//! The key is named by an RFC 7512 URI in `pki.ca_key` (or `init --ca-key`):
//!
//! ```text
//! pkcs11:token=enrollgate;object=ca?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/enrollgate/pin
//! ```
//!
//! `token` (the token's label) and `object` (the key's label) are required; `id` (hex, as
//! `%01%02`) narrows the key. `module-path` names the PKCS#11 library. The user PIN comes
//! from `pin-source`: a file (`/path` or `file:/path`, first line) or an environment variable
//! (`env:NAME`), never from the configuration itself (`pin-value` is refused).
//!
//! Each worker's signing thread opens its own session on the token, so the workers sign
//! in parallel through the token. The module is loaded and initialised once per process
//! (reloads reuse it). Only EC P-256 keys (ECDSA with SHA-256) are supported.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

/// Sessions each worker's signing thread keeps on the token: a batch of CSRs is signed on
/// all of them at once, so a token whose signatures take a while (a network HSM, a
/// USB device) signs a surge in parallel.
pub const SESSIONS_PER_WORKER: usize = 4;

/// The scheme of a PKCS#11 URI.
pub const SCHEME: &str = "pkcs11:";

/// DER of the named curve P-256 (OID 1.2.840.10045.3.1.7), as `CKA_EC_PARAMS` holds it.
const P256_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// Why the key in the token cannot be used. Never carries the PIN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HsmError {
    /// The URI does not say what is needed, or says what is refused.
    #[error("PKCS#11 URI: {0}")]
    Uri(String),
    /// The module could not be loaded or initialised.
    #[error("PKCS#11 module {path}: {reason}")]
    Module {
        /// `module-path`.
        path: String,
        /// Why.
        reason: String,
    },
    /// No token with this label.
    #[error("no PKCS#11 token labelled '{token}' in {module}")]
    NoToken {
        /// The label.
        token: String,
        /// `module-path`.
        module: String,
    },
    /// The PIN could not be read.
    #[error("PKCS#11 PIN ({source_name}): {reason}")]
    Pin {
        /// Where it was to come from (a path or `env:NAME`; never the PIN).
        source_name: String,
        /// Why.
        reason: String,
    },
    /// The token refused the PIN.
    #[error("PKCS#11 token '{token}' refused the PIN from {source_name} ({rv})")]
    Login {
        /// The token's label.
        token: String,
        /// Where the PIN came from.
        source_name: String,
        /// The token's answer.
        rv: String,
    },
    /// No private key with this label (and id).
    #[error("PKCS#11 token '{token}' holds no private key labelled '{object}'")]
    NoKey {
        /// The token's label.
        token: String,
        /// The key's label.
        object: String,
    },
    /// The key is not one enrollgate signs with.
    #[error("PKCS#11 key '{object}': {reason}")]
    Unsupported {
        /// The key's label.
        object: String,
        /// Why.
        reason: String,
    },
    /// Any other answer of the token.
    #[error("PKCS#11 token '{token}': {what}: {reason}")]
    Token {
        /// The token's label.
        token: String,
        /// What was being done.
        what: &'static str,
        /// The token's answer.
        reason: String,
    },
}

/// Where the PIN comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinSource {
    /// The first line of a file.
    File(PathBuf),
    /// An environment variable.
    Env(String),
}

impl PinSource {
    fn name(&self) -> String {
        match self {
            Self::File(p) => p.display().to_string(),
            Self::Env(v) => format!("env:{v}"),
        }
    }

    fn read(&self) -> Result<AuthPin, HsmError> {
        let fail = |reason: String| HsmError::Pin {
            source_name: self.name(),
            reason,
        };
        let text = match self {
            Self::File(p) => std::fs::read_to_string(p).map_err(|e| fail(e.to_string()))?,
            Self::Env(v) => std::env::var(v).map_err(|_| fail("not set".into()))?,
        };
        let pin = text
            .lines()
            .next()
            .unwrap_or_default()
            .trim_end_matches('\r');
        if pin.is_empty() {
            return Err(fail("empty".into()));
        }
        Ok(AuthPin::from(pin.to_string()))
    }
}

/// A parsed `pkcs11:` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// The token's label.
    pub token: String,
    /// The key's label.
    pub object: String,
    /// The key's `CKA_ID`, if given.
    pub id: Option<Vec<u8>>,
    /// The PKCS#11 library.
    pub module_path: PathBuf,
    /// Where the PIN comes from.
    pub pin_source: PinSource,
}

fn percent_decode(s: &str) -> Result<Vec<u8>, HsmError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| HsmError::Uri(format!("bad percent-encoding in '{s}'")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn text(s: &str) -> Result<String, HsmError> {
    String::from_utf8(percent_decode(s)?)
        .map_err(|_| HsmError::Uri(format!("'{s}' is not UTF-8 once decoded")))
}

impl Pkcs11Uri {
    /// Whether a configured key names a PKCS#11 key rather than a file.
    pub fn is_uri(value: &str) -> bool {
        value.starts_with(SCHEME)
    }

    /// Parses the URI (RFC 7512: path attributes separated by `;`, query attributes by
    /// `&`, values percent-encoded).
    pub fn parse(uri: &str) -> Result<Self, HsmError> {
        let rest = uri
            .strip_prefix(SCHEME)
            .ok_or_else(|| HsmError::Uri("does not start with 'pkcs11:'".into()))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (mut token, mut object, mut id, mut module, mut pin) = (None, None, None, None, None);
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (k, v) = attr
                .split_once('=')
                .ok_or_else(|| HsmError::Uri(format!("'{attr}' is not name=value")))?;
            match k {
                "token" => token = Some(text(v)?),
                "object" => object = Some(text(v)?),
                "id" => id = Some(percent_decode(v)?),
                "type" if v == "private" => {}
                "type" => return Err(HsmError::Uri("type must be 'private'".into())),
                // Identify the token more narrowly; the label is what is matched.
                "manufacturer"
                | "model"
                | "serial"
                | "library-description"
                | "library-manufacturer"
                | "library-version"
                | "slot-description"
                | "slot-id"
                | "slot-manufacturer" => {}
                other => return Err(HsmError::Uri(format!("unknown attribute '{other}'"))),
            }
        }
        for attr in query.split('&').filter(|a| !a.is_empty()) {
            let (k, v) = attr
                .split_once('=')
                .ok_or_else(|| HsmError::Uri(format!("'{attr}' is not name=value")))?;
            match k {
                "module-path" => module = Some(PathBuf::from(text(v)?)),
                "pin-source" => {
                    let v = text(v)?;
                    pin = Some(if let Some(var) = v.strip_prefix("env:") {
                        PinSource::Env(var.to_string())
                    } else {
                        let p = v.strip_prefix("file://").or_else(|| v.strip_prefix("file:"));
                        PinSource::File(PathBuf::from(p.unwrap_or(&v)))
                    });
                }
                "pin-value" => {
                    return Err(HsmError::Uri(
                        "pin-value puts the PIN in the configuration; use pin-source (a file or env:NAME)"
                            .into(),
                    ))
                }
                other => return Err(HsmError::Uri(format!("unknown query attribute '{other}'"))),
            }
        }
        let need = |what: &str| HsmError::Uri(format!("needs {what}"));
        let module_path = module.ok_or_else(|| need("module-path"))?;
        if !module_path.is_absolute() {
            return Err(HsmError::Uri("module-path must be an absolute path".into()));
        }
        if let Some(PinSource::File(p)) = &pin {
            if !p.is_absolute() {
                return Err(HsmError::Uri("pin-source must be an absolute path".into()));
            }
        }
        Ok(Self {
            token: token.ok_or_else(|| need("token=<label>"))?,
            object: object.ok_or_else(|| need("object=<key label>"))?,
            id,
            module_path,
            pin_source: pin.ok_or_else(|| need("pin-source (a file or env:NAME)"))?,
        })
    }
}

/// One module per process, initialised once (C_Initialize twice is an error).
fn context(module: &Path) -> Result<Pkcs11, HsmError> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let fail = |reason: String| HsmError::Module {
        path: module.display().to_string(),
        reason,
    };
    let mut map = MODULES
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| fail("a previous load panicked".into()))?;
    if let Some(ctx) = map.get(module) {
        return Ok(ctx.clone());
    }
    if !module.is_file() {
        return Err(fail("no such file (is the module installed?)".into()));
    }
    let ctx = Pkcs11::new(module).map_err(|e| fail(e.to_string()))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(fail(e.to_string())),
    }
    map.insert(module.to_path_buf(), ctx.clone());
    Ok(ctx)
}

/// The token a URI names, ready to open sessions on: the module loaded, the slot found.
#[derive(Clone)]
pub struct Token {
    uri: Pkcs11Uri,
    ctx: Pkcs11,
    slot: Slot,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("token", &self.uri.token)
            .field("object", &self.uri.object)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// Loads the module and finds the token (its PIN is read when a session logs in).
    pub fn open(uri: &Pkcs11Uri) -> Result<Self, HsmError> {
        let ctx = context(&uri.module_path)?;
        let token_err = |what: &'static str, e: CkError| HsmError::Token {
            token: uri.token.clone(),
            what,
            reason: e.to_string(),
        };
        let slots = ctx
            .get_slots_with_token()
            .map_err(|e| token_err("listing slots", e))?;
        let slot = slots
            .into_iter()
            .find(|s| {
                ctx.get_token_info(*s)
                    .is_ok_and(|i| i.label().trim_end() == uri.token)
            })
            .ok_or_else(|| HsmError::NoToken {
                token: uri.token.clone(),
                module: uri.module_path.display().to_string(),
            })?;
        Ok(Self {
            uri: uri.clone(),
            ctx,
            slot,
        })
    }

    fn err(&self, what: &'static str) -> impl Fn(CkError) -> HsmError + '_ {
        move |e| HsmError::Token {
            token: self.uri.token.clone(),
            what,
            reason: e.to_string(),
        }
    }

    /// A new logged-in session.
    fn session(&self) -> Result<Session, HsmError> {
        let session = self
            .ctx
            .open_rw_session(self.slot)
            .map_err(self.err("opening a session"))?;
        let pin = self.uri.pin_source.read()?;
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
            Err(CkError::Pkcs11(rv, _)) => Err(HsmError::Login {
                token: self.uri.token.clone(),
                source_name: self.uri.pin_source.name(),
                rv: format!("{rv:?}"),
            }),
            Err(e) => Err(self.err("logging in")(e)),
        }
    }

    fn template(&self, class: ObjectClass) -> Vec<Attribute> {
        let mut t = vec![
            Attribute::Class(class),
            Attribute::Label(self.uri.object.as_bytes().to_vec()),
        ];
        if let Some(id) = &self.uri.id {
            t.push(Attribute::Id(id.clone()));
        }
        t
    }

    fn find(
        &self,
        session: &Session,
        class: ObjectClass,
    ) -> Result<Option<ObjectHandle>, HsmError> {
        let found = session
            .find_objects(&self.template(class))
            .map_err(self.err("searching for the key"))?;
        Ok(found.into_iter().next())
    }

    /// A signing key on a session of its own (one per signing thread).
    pub fn key(&self) -> Result<HsmKey, HsmError> {
        let session = self.session()?;
        let private = self
            .find(&session, ObjectClass::PRIVATE_KEY)?
            .ok_or_else(|| HsmError::NoKey {
                token: self.uri.token.clone(),
                object: self.uri.object.clone(),
            })?;
        let unsupported = |reason: &str| HsmError::Unsupported {
            object: self.uri.object.clone(),
            reason: reason.to_string(),
        };
        let public = self
            .find(&session, ObjectClass::PUBLIC_KEY)?
            .ok_or_else(|| unsupported("no public key object with the same label"))?;
        let attrs = session
            .get_attributes(public, &[AttributeType::EcParams, AttributeType::EcPoint])
            .map_err(self.err("reading the public key"))?;
        let mut point = None;
        for a in attrs {
            match a {
                Attribute::EcParams(p) if p != P256_PARAMS => {
                    return Err(unsupported("not an EC P-256 key"))
                }
                Attribute::EcPoint(p) => point = Some(p),
                _ => {}
            }
        }
        let point = point
            .and_then(|p| unwrap_ec_point(&p))
            .ok_or_else(|| unsupported("not an EC P-256 key"))?;
        Ok(HsmKey {
            session: Mutex::new(session),
            private,
            point,
            token: self.uri.token.clone(),
        })
    }

    /// The key the URI names, generated inside the token (EC P-256, never extractable)
    /// when the token holds none by that label; `true` when it was generated.
    pub fn key_or_generate(&self) -> Result<(HsmKey, bool), HsmError> {
        {
            let session = self.session()?;
            if self.find(&session, ObjectClass::PRIVATE_KEY)?.is_none() {
                let mut id = self.uri.id.clone().unwrap_or_default();
                if id.is_empty() {
                    id = vec![0u8; 8];
                    crate::ids::fill_random(&mut id).map_err(|e| HsmError::Token {
                        token: self.uri.token.clone(),
                        what: "making a key id",
                        reason: e.to_string(),
                    })?;
                }
                let label = Attribute::Label(self.uri.object.as_bytes().to_vec());
                let public = [
                    Attribute::Token(true),
                    Attribute::Private(false),
                    Attribute::KeyType(KeyType::EC),
                    Attribute::Verify(true),
                    Attribute::EcParams(P256_PARAMS.to_vec()),
                    label.clone(),
                    Attribute::Id(id.clone()),
                ];
                let private = [
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Sign(true),
                    label,
                    Attribute::Id(id),
                ];
                session
                    .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
                    .map_err(self.err("generating the key"))?;
                return Ok((self.key()?, true));
            }
        }
        Ok((self.key()?, false))
    }
}

/// `CKA_EC_POINT` is a DER OCTET STRING around the uncompressed point (some modules give
/// the bare point): the 65-byte point.
fn unwrap_ec_point(p: &[u8]) -> Option<Vec<u8>> {
    match p {
        [0x04, 0x41, rest @ ..] if rest.len() == 65 && rest[0] == 0x04 => Some(rest.to_vec()),
        [0x04, ..] if p.len() == 65 => Some(p.to_vec()),
        _ => None,
    }
}

/// A DER INTEGER of the big-endian unsigned `v`.
fn der_uint(v: &[u8], out: &mut Vec<u8>) {
    let v = match v.iter().position(|&b| b != 0) {
        Some(i) => &v[i..],
        None => &[0u8][..],
    };
    let pad = v[0] & 0x80 != 0;
    out.push(0x02);
    out.push((v.len() + usize::from(pad)) as u8);
    if pad {
        out.push(0);
    }
    out.extend_from_slice(v);
}

/// The X.509 form of an ECDSA signature (SEQUENCE of r and s) from PKCS#11's `r || s`.
fn ecdsa_der(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.len() != 64 {
        return None;
    }
    let mut body = Vec::with_capacity(72);
    der_uint(&raw[..32], &mut body);
    der_uint(&raw[32..], &mut body);
    let mut out = Vec::with_capacity(body.len() + 2);
    out.push(0x30);
    out.push(body.len() as u8);
    out.extend(body);
    Some(out)
}

/// A private key in a token, with a session of its own. (The lock is never contended:
/// one signing thread owns the key; it makes the key shareable, as an in-memory one is.)
pub struct HsmKey {
    session: Mutex<Session>,
    private: ObjectHandle,
    point: Vec<u8>,
    token: String,
}

impl std::fmt::Debug for HsmKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HsmKey")
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl rcgen::PublicKeyData for HsmKey {
    fn der_bytes(&self) -> &[u8] {
        &self.point
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl rcgen::SigningKey for HsmKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, msg);
        let session = self
            .session
            .lock()
            .map_err(|_| rcgen::Error::RemoteKeyError)?;
        let raw = session
            .sign(&Mechanism::Ecdsa, self.private, digest.as_ref())
            .map_err(|e| {
                tracing::error!(token = %self.token, error = %e, "the PKCS#11 token refused to sign");
                rcgen::Error::RemoteKeyError
            })?;
        ecdsa_der(&raw).ok_or(rcgen::Error::RemoteKeyError)
    }
}

/// The URI a configured key path holds, if it names a PKCS#11 key (the configuration
/// keeps such a value as it was written).
pub fn uri_of(path: &Path) -> Option<Result<Pkcs11Uri, HsmError>> {
    let s = path.to_str()?;
    Pkcs11Uri::is_uri(s).then(|| Pkcs11Uri::parse(s))
}

/// A token shared by a generation of the gateway's state.
pub type SharedToken = Arc<Token>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse_and_refuse_a_pin_value() {
        let u = Pkcs11Uri::parse(
            "pkcs11:token=enroll%20gate;object=ca;id=%01%02?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/pin",
        )
        .unwrap();
        assert_eq!(u.token, "enroll gate");
        assert_eq!(u.object, "ca");
        assert_eq!(u.id, Some(vec![1, 2]));
        assert_eq!(u.pin_source, PinSource::File("/etc/pin".into()));
        let u =
            Pkcs11Uri::parse("pkcs11:token=t;object=o?module-path=/m.so&pin-source=env:P").unwrap();
        assert_eq!(u.pin_source, PinSource::Env("P".into()));
        for (bad, says) in [
            (
                "pkcs11:token=t;object=o?module-path=/m.so&pin-value=1234",
                "pin-source",
            ),
            ("pkcs11:token=t;object=o?module-path=/m.so", "pin-source"),
            ("pkcs11:object=o?module-path=/m.so&pin-source=/p", "token"),
            ("pkcs11:token=t?module-path=/m.so&pin-source=/p", "object"),
            ("pkcs11:token=t;object=o?pin-source=/p", "module-path"),
            (
                "pkcs11:token=t;object=o?module-path=m.so&pin-source=/p",
                "absolute",
            ),
            (
                "pkcs11:token=t;object=o;bogus=1?module-path=/m.so&pin-source=/p",
                "bogus",
            ),
            (
                "pkcs11:token=%zz;object=o?module-path=/m.so&pin-source=/p",
                "percent",
            ),
        ] {
            let e = Pkcs11Uri::parse(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(!e.contains("1234"), "{e}");
        }
    }

    #[test]
    fn ecdsa_signatures_are_der_encoded() {
        let mut raw = [0u8; 64];
        raw[0] = 0x80; // r needs a leading zero
        raw[63] = 1; // s is 1 after its leading zeros
        let der = ecdsa_der(&raw).unwrap();
        assert_eq!(&der[..4], &[0x30, 2 + 33 + 3, 0x02, 33]);
        assert_eq!(der[4], 0);
        assert_eq!(&der[der.len() - 3..], &[0x02, 1, 1]);
        assert!(ecdsa_der(&raw[..63]).is_none());
    }

    #[test]
    fn ec_points_are_unwrapped() {
        let mut point = vec![0x04];
        point.extend([7u8; 64]);
        let mut wrapped = vec![0x04, 0x41];
        wrapped.extend(&point);
        assert_eq!(unwrap_ec_point(&wrapped).unwrap(), point);
        assert_eq!(unwrap_ec_point(&point).unwrap(), point);
        assert!(unwrap_ec_point(&point[..10]).is_none());
    }
}
