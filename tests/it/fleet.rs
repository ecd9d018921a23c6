//! A third-party device PKI made in the test: a root CA, an intermediate, and device
//! certificates with whatever properties a case needs.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::support::Gateway;

pub struct Fleet {
    pub root_params: CertificateParams,
    pub root_key: KeyPair,
    pub root_pem: String,
    pub inter_params: CertificateParams,
    pub inter_key: KeyPair,
    pub inter_pem: String,
}

/// A device credential: chain PEM (leaf, then intermediates) and key PEM.
#[derive(Clone)]
pub struct Device {
    pub chain_pem: String,
    pub key_pem: String,
}

impl Device {
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        pem::parse_many(&self.chain_pem)
            .unwrap()
            .into_iter()
            .map(|p| CertificateDer::from(p.into_contents()))
            .collect()
    }

    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivatePkcs8KeyDer::from(pem::parse(&self.key_pem).unwrap().into_contents()).into()
    }

    /// The same device with its leaf's ECDSA signature (r, s) re-encoded as (r, n - s)
    /// (P-256): another DER, another fingerprint, the same certificate, and a signature
    /// that still verifies.
    pub fn with_mauled_signature(&self) -> Device {
        let mut blocks = pem::parse_many(&self.chain_pem).unwrap();
        let leaf = maul_ecdsa_p256(blocks[0].contents());
        blocks[0] = pem::Pem::new("CERTIFICATE", leaf);
        Device {
            chain_pem: pem::encode_many(&blocks),
            key_pem: self.key_pem.clone(),
        }
    }

    /// Writes cert and key files into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let c = dir.join(format!("{name}.crt"));
        let k = dir.join(format!("{name}.key"));
        std::fs::write(&c, &self.chain_pem).unwrap();
        std::fs::write(&k, &self.key_pem).unwrap();
        (c, k)
    }

    /// A request to the gateway with this device's certificate.
    pub fn request(
        &self,
        gw: &Gateway,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> enrollgate::client::HttpResponse {
        let cfg =
            enrollgate::client::config(&gw.ca_certs(), Some((self.chain(), self.key()))).unwrap();
        enrollgate::client::request(cfg, "127.0.0.1", gw.port, method, path, headers, body).unwrap()
    }
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

pub const NOW_MINUS_DAY: i64 = 86_400;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn at(t: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(t).unwrap()
}

/// How to make a device certificate.
#[derive(Clone)]
pub struct Spec {
    pub cn: Option<String>,
    pub not_before: i64,
    pub not_after: i64,
    pub eku: Vec<ExtendedKeyUsagePurpose>,
    pub include_intermediate: bool,
}

impl Spec {
    pub fn new(cn: &str) -> Self {
        Self {
            cn: Some(cn.to_string()),
            not_before: now() - NOW_MINUS_DAY,
            not_after: now() + 30 * NOW_MINUS_DAY,
            eku: vec![ExtendedKeyUsagePurpose::ClientAuth],
            include_intermediate: true,
        }
    }
}

impl Fleet {
    pub fn new(name: &str) -> Self {
        let root_key = KeyPair::generate().unwrap();
        let mut root_params = ca_params(&format!("{name} root"));
        root_params.not_before = at(now() - NOW_MINUS_DAY);
        root_params.not_after = at(now() + 365 * NOW_MINUS_DAY);
        let root_pem = root_params.self_signed(&root_key).unwrap().pem();
        let inter_key = KeyPair::generate().unwrap();
        let mut inter_params = ca_params(&format!("{name} intermediate"));
        inter_params.not_before = at(now() - NOW_MINUS_DAY);
        inter_params.not_after = at(now() + 365 * NOW_MINUS_DAY);
        let inter_pem = {
            let issuer = Issuer::from_params(&root_params, &root_key);
            inter_params.signed_by(&inter_key, &issuer).unwrap().pem()
        };
        Self {
            root_params,
            root_key,
            root_pem,
            inter_params,
            inter_key,
            inter_pem,
        }
    }

    /// A device certificate issued by the intermediate.
    pub fn device(&self, spec: &Spec) -> Device {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if let Some(cn) = &spec.cn {
            dn.push(DnType::CommonName, cn.as_str());
        }
        p.distinguished_name = dn;
        p.not_before = at(spec.not_before);
        p.not_after = at(spec.not_after);
        p.extended_key_usages = spec.eku.clone();
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.use_authority_key_identifier_extension = true;
        let issuer = Issuer::from_params(&self.inter_params, &self.inter_key);
        let leaf = p.signed_by(&key, &issuer).unwrap().pem();
        let chain_pem = if spec.include_intermediate {
            format!("{leaf}{}", self.inter_pem)
        } else {
            leaf
        };
        Device {
            chain_pem,
            key_pem: key.serialize_pem(),
        }
    }

    /// A proof-of-possession certificate for `token`, signed by the root.
    pub fn proof(&self, token: &str) -> String {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, token);
        p.distinguished_name = dn;
        let issuer = Issuer::from_params(&self.root_params, &self.root_key);
        p.signed_by(&key, &issuer).unwrap().pem()
    }

    /// Creates this fleet's root as a CA in the gateway, verified, with the given flags.
    /// Returns the CA's id.
    pub fn register(
        &self,
        gw: &Gateway,
        name: &str,
        auto: bool,
        ottca: bool,
        auth: bool,
    ) -> String {
        let body = serde_json::json!({
            "name": name,
            "certPem": self.root_pem,
            "isAutoCaEnrollmentEnabled": auto,
            "isOttCaEnrollmentEnabled": ottca,
            "isAuthEnabled": auth,
            "identityRoles": ["fleet", name],
        });
        let r = gw.mgmt("POST", "/cas", Some(&body));
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        let ca = r.json().unwrap()["data"].clone();
        let id = ca["id"].as_str().unwrap().to_string();
        let proof = self.proof(ca["verificationToken"].as_str().unwrap());
        let r = gw.request_as(
            &gw.admin_file(),
            "POST",
            &format!("/edge/management/v1/cas/{id}/verify"),
            None,
        );
        assert_eq!(r.status, 400, "an empty proof is refused");
        let cfg = enrollgate::client::config(&gw.ca_certs(), Some(admin_credentials(gw))).unwrap();
        let r = enrollgate::client::request(
            cfg,
            "127.0.0.1",
            gw.port,
            "POST",
            &format!("/edge/management/v1/cas/{id}/verify"),
            &[("Content-Type", "text/plain")],
            proof.as_bytes(),
        )
        .unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        id
    }
}

pub fn admin_credentials(gw: &Gateway) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let f = enrollgate::identity_file::IdentityFile::read(&gw.admin_file()).unwrap();
    (f.cert_chain().unwrap(), f.private_key().unwrap())
}

/// A management call with a raw body.
pub fn mgmt_raw(
    gw: &Gateway,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> enrollgate::client::HttpResponse {
    let cfg = enrollgate::client::config(&gw.ca_certs(), Some(admin_credentials(gw))).unwrap();
    enrollgate::client::request(
        cfg,
        "127.0.0.1",
        gw.port,
        method,
        &format!("/edge/management/v1{path}"),
        &[("Content-Type", content_type)],
        body,
    )
    .unwrap()
}

/// One DER element of `input`: (tag, content, rest).
fn der_element(input: &[u8]) -> (u8, &[u8], &[u8]) {
    let tag = input[0];
    let (len, start) = match input[1] {
        n if n < 0x80 => (usize::from(n), 2),
        n => {
            let count = usize::from(n & 0x7f);
            let len = input[2..2 + count]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, 2 + count)
        }
    };
    (tag, &input[start..start + len], &input[start + len..])
}

fn der_encode(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// A DER INTEGER's content for the non-negative big-endian `magnitude`.
fn der_uint(magnitude: &[u8]) -> Vec<u8> {
    let trimmed: Vec<u8> = magnitude.iter().copied().skip_while(|b| *b == 0).collect();
    let mut content = Vec::new();
    if trimmed.first().is_none_or(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend(trimmed);
    der_encode(0x02, &content)
}

/// `der` (a certificate signed with ECDSA P-256) with its signature's s replaced by n - s.
pub fn maul_ecdsa_p256(der: &[u8]) -> Vec<u8> {
    const N: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63,
        0x25, 0x51,
    ];
    let (_, cert, _) = der_element(der);
    let (_, _, after_tbs) = der_element(cert);
    let tbs = &cert[..cert.len() - after_tbs.len()];
    let (_, _, after_alg) = der_element(after_tbs);
    let alg = &after_tbs[..after_tbs.len() - after_alg.len()];
    let (bits_tag, bits, _) = der_element(after_alg);
    assert_eq!((bits_tag, bits[0]), (0x03, 0), "a BIT STRING signature");
    let (_, sig, _) = der_element(&bits[1..]);
    let (_, r, rest) = der_element(sig);
    let (_, s, _) = der_element(rest);
    // n - s, big-endian, on 32 bytes.
    let mut s32 = [0u8; 32];
    let s = &s[s.len().saturating_sub(32)..];
    s32[32 - s.len()..].copy_from_slice(s);
    let mut diff = [0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let mut d = i16::from(N[i]) - i16::from(s32[i]) - borrow;
        borrow = i16::from(d < 0);
        if d < 0 {
            d += 256;
        }
        diff[i] = d as u8;
    }
    assert_eq!(borrow, 0, "s < n");
    let mut new_sig = der_uint(r);
    new_sig.extend(der_uint(&diff));
    let mut bit_content = vec![0u8];
    bit_content.extend(der_encode(0x30, &new_sig));
    let mut body = tbs.to_vec();
    body.extend_from_slice(alg);
    body.extend(der_encode(0x03, &bit_content));
    der_encode(0x30, &body)
}

/// `devices` enroll by `ca` all at once, spread over the gateways' ports.
pub fn race(
    ports: &[u16],
    ca: &[rustls_pki_types::CertificateDer<'static>],
    devices: Vec<Device>,
) -> Vec<enrollgate::client::HttpResponse> {
    let threads = 48.min(devices.len());
    let per = devices.len().div_ceil(threads);
    let chunks: Vec<Vec<Device>> = devices.chunks(per).map(<[Device]>::to_vec).collect();
    let barrier = Arc::new(Barrier::new(chunks.len()));
    let handles: Vec<_> = chunks
        .into_iter()
        .enumerate()
        .map(|(t, chunk)| {
            let barrier = barrier.clone();
            let ports = ports.to_vec();
            let configs: Vec<_> = chunk
                .iter()
                .map(|d| enrollgate::client::config(ca, Some((d.chain(), d.key()))).unwrap())
                .collect();
            std::thread::spawn(move || {
                barrier.wait();
                configs
                    .into_iter()
                    .enumerate()
                    .map(|(i, cfg)| {
                        let port = ports[(t + i) % ports.len()];
                        enrollgate::client::request(
                            cfg,
                            "127.0.0.1",
                            port,
                            "POST",
                            "/edge/client/v1/enroll?method=ca",
                            &[],
                            b"",
                        )
                        .unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect()
}

/// The distinct names of the identities whose name starts with `prefix` (at most 1,000),
/// sorted; the listing's total must count exactly those.
pub fn distinct_names(gw: &Gateway, prefix: &str) -> Vec<String> {
    let list = gw
        .mgmt(
            "GET",
            &format!("/identities?limit=1000&filter=name%20startswith%20%22{prefix}%22"),
            None,
        )
        .json()
        .unwrap();
    let mut names: Vec<String> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect();
    let total = names.len();
    assert_eq!(list["meta"]["pagination"]["totalCount"], total);
    names.sort();
    names.dedup();
    names
}
