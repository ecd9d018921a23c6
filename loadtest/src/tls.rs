//! The client TLS configuration of a run, built once before the timed phase.
//!
//! A run uses one `ClientConfig` for every connection. Devices differ only in the
//! certificate they present, so the config holds a [`FleetCerts`] resolver: every
//! handshake that is asked for a client certificate takes the next device, parsed before
//! the run started. For `ca` and `ottca` each device is used once (a certificate enrolls
//! once); `handshake` mode cycles through them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rustls::client::{ResolvesClientCert, Resumption};
use rustls::crypto::{aws_lc_rs, CryptoProvider, SupportedKxGroup};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, SignatureScheme};
use rustls_pki_types::CertificateDer;

use crate::Error;

/// Key-exchange groups `--kx` accepts.
pub const KX_NAMES: [&str; 4] = ["x25519mlkem768", "x25519", "secp256r1", "secp384r1"];

/// Which TLS versions to offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsVersions {
    /// TLS 1.3 and 1.2 (the server chooses; both rustls and nginx pick 1.3).
    Any,
    /// TLS 1.3 only.
    #[value(name = "1.3")]
    Tls13,
    /// TLS 1.2 only (as older device stacks speak).
    #[value(name = "1.2")]
    Tls12,
}

/// How the client side of the handshake is set up.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// Roots to verify the server with; `None`: accept any server certificate (the
    /// handshake signature is still checked).
    pub roots: Option<Vec<CertificateDer<'static>>>,
    /// Key-exchange groups to offer, in order; empty: rustls' default (X25519MLKEM768,
    /// X25519, P-256, P-384).
    pub kx: Vec<String>,
    /// Versions to offer.
    pub versions: TlsVersions,
    /// Allow session resumption (off by default: every device is a new client).
    pub resume: bool,
}

fn kx_group(name: &str) -> Option<&'static dyn SupportedKxGroup> {
    use aws_lc_rs::kx_group;
    match name {
        "x25519mlkem768" => Some(kx_group::X25519MLKEM768),
        "x25519" => Some(kx_group::X25519),
        "secp256r1" => Some(kx_group::SECP256R1),
        "secp384r1" => Some(kx_group::SECP384R1),
        _ => None,
    }
}

/// Key-exchange group names (`--kx`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KxList(pub Vec<String>);

/// Parses a comma-separated `--kx` list.
pub fn parse_kx(list: &str) -> Result<KxList, String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let s = s.to_ascii_lowercase();
            if kx_group(&s).is_some() {
                Ok(s)
            } else {
                Err(format!(
                    "unknown key-exchange group '{s}'; known: {}",
                    KX_NAMES.join(", ")
                ))
            }
        })
        .collect::<Result<_, _>>()
        .map(KxList)
}

/// The crypto provider: aws-lc-rs, as the gateway uses it, with the chosen groups.
pub fn provider(kx: &[String]) -> Result<Arc<CryptoProvider>, Error> {
    let mut p = aws_lc_rs::default_provider();
    if !kx.is_empty() {
        p.kx_groups = kx
            .iter()
            .map(|n| kx_group(n).ok_or_else(|| Error::Invalid(format!("unknown group '{n}'"))))
            .collect::<Result<_, _>>()?;
    }
    Ok(Arc::new(p))
}

/// Device certificates handed to handshakes in turn.
#[derive(Debug)]
pub struct FleetCerts {
    keys: Vec<Arc<CertifiedKey>>,
    next: AtomicUsize,
    cycle: bool,
}

impl FleetCerts {
    /// `keys` in order; `cycle`: start again at the first when all were used.
    pub fn new(keys: Vec<Arc<CertifiedKey>>, cycle: bool) -> Arc<Self> {
        Arc::new(Self {
            keys,
            next: AtomicUsize::new(0),
            cycle,
        })
    }

    /// How many certificates were handed out.
    pub fn used(&self) -> usize {
        self.next.load(Ordering::Relaxed)
    }

    /// How many devices there are.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl ResolvesClientCert for FleetCerts {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        match (i < self.keys.len(), self.cycle) {
            (true, _) => self.keys.get(i).cloned(),
            (false, true) => self.keys.get(i % self.keys.len().max(1)).cloned(),
            (false, false) => None,
        }
    }

    fn has_certs(&self) -> bool {
        !self.keys.is_empty()
    }
}

/// The run's client configuration.
pub fn client_config(
    opts: &TlsOptions,
    certs: Option<Arc<FleetCerts>>,
) -> Result<Arc<ClientConfig>, Error> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match opts.versions {
        TlsVersions::Any => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersions::Tls13 => &[&rustls::version::TLS13],
        TlsVersions::Tls12 => &[&rustls::version::TLS12],
    };
    let builder = ClientConfig::builder_with_provider(provider(&opts.kx)?)
        .with_protocol_versions(versions)?;
    let builder = match &opts.roots {
        Some(roots) => {
            let mut store = RootCertStore::empty();
            for r in roots {
                store.add(r.clone())?;
            }
            builder.with_root_certificates(store)
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(enrollgate::client::RecordingVerifier::new()),
    };
    let mut cfg = match certs {
        Some(c) => builder.with_client_cert_resolver(c),
        None => builder.with_no_client_auth(),
    };
    if !opts.resume {
        cfg.resumption = Resumption::disabled();
    }
    Ok(Arc::new(cfg))
}

/// Parses device records into certified keys (chain: leaf, then `intermediate`), on
/// `threads` threads.
pub fn certified_keys(
    records: &[crate::fleet::Record<'_>],
    intermediate: &[u8],
    provider: &CryptoProvider,
    threads: usize,
) -> Result<Vec<Arc<CertifiedKey>>, Error> {
    let inter = CertificateDer::from(intermediate.to_vec());
    let ranges = crate::fleet::split(records.len(), threads);
    let parts: Vec<Result<Vec<Arc<CertifiedKey>>, Error>> = std::thread::scope(|s| {
        let handles: Vec<_> = ranges
            .into_iter()
            .map(|r| {
                let inter = &inter;
                let part = records.get(r).unwrap_or_default();
                s.spawn(move || {
                    part.iter()
                        .enumerate()
                        .map(|(i, rec)| {
                            let key = provider
                                .key_provider
                                .load_private_key(rustls_pki_types::PrivateKeyDer::Pkcs8(
                                    rec.key.to_vec().into(),
                                ))
                                .map_err(|e| Error::Invalid(format!("device key {i}: {e}")))?;
                            Ok(Arc::new(CertifiedKey::new(
                                vec![CertificateDer::from(rec.cert.to_vec()), inter.clone()],
                                key,
                            )))
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Invalid("a parser thread panicked".into())))
            })
            .collect()
    });
    let mut out = Vec::with_capacity(records.len());
    for p in parts {
        out.extend(p?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn kx_lists_parse_and_unknown_groups_are_named() {
        assert_eq!(
            parse_kx("X25519, secp256r1").unwrap().0,
            vec!["x25519", "secp256r1"]
        );
        assert!(parse_kx("x448").unwrap_err().contains("x448"));
        assert!(parse_kx("").unwrap().0.is_empty());
    }

    #[test]
    fn devices_are_handed_out_once_unless_cycling() {
        let key = rcgen::KeyPair::generate().unwrap();
        let signer = aws_lc_rs::default_provider()
            .key_provider
            .load_private_key(rustls_pki_types::PrivateKeyDer::Pkcs8(
                key.serialize_der().into(),
            ))
            .unwrap();
        let ck = Arc::new(CertifiedKey::new(vec![], signer));
        let once = FleetCerts::new(vec![ck.clone(), ck.clone()], false);
        assert!(once.resolve(&[], &[]).is_some());
        assert!(once.resolve(&[], &[]).is_some());
        assert!(once.resolve(&[], &[]).is_none());
        let cycling = FleetCerts::new(vec![ck], true);
        for _ in 0..5 {
            assert!(cycling.resolve(&[], &[]).is_some());
        }
        assert_eq!(cycling.used(), 5);
    }
}
