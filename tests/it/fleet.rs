//! A third-party device PKI made in the test: a root CA, an intermediate, and device
//! certificates with whatever properties a case needs.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

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
