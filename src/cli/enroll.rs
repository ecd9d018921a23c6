//! `enrollgate enroll`: the device side of `ott` enrollment, as OpenZiti clients do it.
//!
//! 1. Read the JWT; learn `iss` without trusting anything yet.
//! 2. Connect to `iss`, record the certificate the server presents (the handshake proves
//!    the server holds its key), fetch the CA bundle.
//! 3. Verify the JWT's signature against that certificate: only the real gateway could
//!    have signed it. Check `exp`.
//! 4. Generate the key here, send a CSR over a connection verified against the CA bundle.
//! 5. Write the identity file (0600). The private key never leaves this machine.

use std::io::Read as _;
use std::path::PathBuf;

use rustls_pki_types::CertificateDer;

use super::CliError;
use crate::client;
use crate::clock::{rfc3339, Clock, SystemClock};
use crate::config::PublicUrl;
use crate::identity_file::{IdentityFile, PendingFile};
use crate::pki::pkcs7;
use crate::token::jwt;

/// Key types the client can generate.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ClientKey {
    /// ECDSA P-256 (default).
    Ec,
    /// ECDSA P-384.
    P384,
    /// RSA 2048.
    Rsa,
    /// Ed25519.
    Ed25519,
}

/// Arguments of `enroll`.
#[derive(Debug, Clone, clap::Args)]
pub struct EnrollArgs {
    /// The enrollment JWT file, or `-` for standard input.
    #[arg(long)]
    pub jwt: String,
    /// Identity file to write (must not exist).
    #[arg(long)]
    pub out: PathBuf,
    /// Type of the key generated here (ott).
    #[arg(long, value_enum, default_value = "ec")]
    pub key_type: ClientKey,
    /// The certificate (PEM, leaf first, intermediates after) to enroll with (ottca, ca).
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// The identity name to ask for (CA auto-enrollment): used where the CA's name format
    /// has `[requestedName]`.
    #[arg(long)]
    pub idname: Option<String>,
}

fn read_jwt(src: &str) -> Result<String, CliError> {
    let mut text = String::new();
    if src == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CliError::new(format!("reading the JWT from standard input: {e}")))?;
    } else {
        text = std::fs::read_to_string(src).map_err(|e| CliError::new(format!("{src}: {e}")))?;
    }
    // Editors on Windows save a byte-order mark; no JWT starts with one.
    let jwt = text.trim_start_matches('\u{feff}').trim().to_string();
    if jwt.is_empty() {
        return Err(CliError::new("the enrollment JWT is empty"));
    }
    Ok(jwt)
}

pub(crate) fn generate(kind: ClientKey) -> Result<rcgen::KeyPair, rcgen::Error> {
    match kind {
        ClientKey::Ec => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        ClientKey::P384 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        ClientKey::Ed25519 => {
            // PKCS#8 version 1 (RFC 8410 without the public key): the version 2 document
            // aws-lc makes by default is refused by OpenSSL 3.0 (so by curl and the C SDK)
            // and by Python's cryptography.
            let rng = aws_lc_rs::rand::SystemRandom::new();
            let v1 = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8v1(&rng)
                .map_err(|_| rcgen::Error::KeyGenerationUnavailable)?;
            let der = rustls_pki_types::PrivatePkcs8KeyDer::from(v1.as_ref().to_vec());
            rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ED25519)
        }
        ClientKey::Rsa => {
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        }
    }
}

/// Runs `enroll`.
pub fn enroll(args: EnrollArgs) -> Result<(), CliError> {
    // The file first: a path that cannot be written, or a full disk, must fail before
    // the token is spent and the key could be lost.
    let out = PendingFile::create(&args.out).map_err(|e| match e {
        crate::identity_file::IdentityFileError::Io { source, .. }
            if source.kind() == std::io::ErrorKind::AlreadyExists =>
        {
            CliError::new(format!(
                "{} already exists; refusing to overwrite an identity file",
                args.out.display()
            ))
        }
        other => other.into(),
    })?;
    let token = read_jwt(&args.jwt)?;
    let (_, claims) = jwt::peek(&token)?;
    let own_cert = match (claims.em.as_str(), &args.cert, &args.key) {
        ("ott", None, None) => None,
        ("ott", _, _) => {
            return Err(CliError::new(
                "this is an 'ott' token: the key is generated here; drop --cert/--key",
            ))
        }
        ("ottca" | "ca", Some(c), Some(k)) => Some((c.clone(), k.clone())),
        ("ottca" | "ca", _, _) => {
            return Err(CliError::new(format!(
                "this is {} '{}' token: pass the certificate from your CA with --cert and --key",
                if claims.em == "ottca" { "an" } else { "a" },
                claims.em
            )))
        }
        (other, _, _) => {
            return Err(CliError::new(format!(
                "this JWT is for enrollment method '{other}', which this client does not know"
            )))
        }
    };
    if args.idname.is_some() && claims.em != "ca" {
        return Err(CliError::new(
            "--idname is for CA auto-enrollment ('ca' tokens) only",
        ));
    }
    let now = SystemClock.unix_now();
    if let Some(exp) = claims.exp {
        if now >= exp {
            return Err(CliError::new(format!(
                "ENROLLMENT_EXPIRED: the enrollment token expired at {}; ask an administrator to reissue it",
                rfc3339(exp)
            )));
        }
    }
    let server = PublicUrl::parse(&claims.iss)
        .map_err(|e| CliError::new(format!("the JWT's issuer: {e}")))?;

    // 2. Fetch the CA bundle, recording the server's certificate.
    let recorder = client::RecordingVerifier::new();
    let resp = client::request(
        recorder.config()?,
        &server.host,
        server.port,
        "GET",
        "/.well-known/est/cacerts",
        &[("Accept", "application/pkcs7-mime")],
        b"",
    )?;
    let chain = recorder.chain();
    let leaf = chain
        .first()
        .ok_or_else(|| CliError::new("the server presented no certificate"))?;

    // 3. The JWT must be signed by that server's key.
    let verified = jwt::verify_with_cert(&token, leaf)?;
    if verified.jti != claims.jti {
        return Err(CliError::new("the JWT changed while being verified"));
    }
    if resp.status != 200 {
        return Err(CliError::refused(format!(
            "fetching the CA bundle: the server answered HTTP {}",
            resp.status
        )));
    }
    let cas: Vec<CertificateDer<'static>> = pkcs7::read_cacerts_body(&resp.body)
        .map_err(|e| CliError::new(format!("the CA bundle: {e}")))?
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    if cas.is_empty() {
        return Err(CliError::new("the CA bundle holds no certificate"));
    }

    if let Some((cert_path, key_path)) = own_cert {
        return enroll_with_certificate(
            &args, &verified, &server, &cas, &cert_path, &key_path, out,
        );
    }

    // 4. Key and CSR, here.
    let key = generate(args.key_type)?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, verified.sub.clone());
    let csr = params.serialize_request(&key)?.pem()?;
    let token_q: String = form_urlencoded::byte_serialize(verified.jti.as_bytes()).collect();
    let resp = client::request(
        client::config(&cas, None)?,
        &server.host,
        server.port,
        "POST",
        &format!(
            "{}/enroll?method=ott&token={token_q}",
            crate::api::CLIENT_PREFIX
        ),
        &[
            ("Content-Type", "application/x-pem-file"),
            ("Accept", "application/json"),
        ],
        csr.as_bytes(),
    )?;
    if resp.status != 200 {
        return Err(match resp.api_error() {
            Some((code, message)) => {
                CliError::refused(format!("enrollment refused: {code}: {message}"))
            }
            None => CliError::refused(format!("enrollment refused: HTTP {}", resp.status)),
        });
    }
    let body = resp.json()?;
    let cert = body["data"]["cert"]
        .as_str()
        .ok_or_else(|| CliError::new("the server's answer has no certificate"))?;
    let ca = match body["data"]["ca"].as_str() {
        Some(ca) => ca.to_string(),
        None => crate::pki::pem_of_certs(&cas.iter().map(|c| c.to_vec()).collect::<Vec<_>>()),
    };

    // 5. The identity file.
    out.write(&IdentityFile::new(&server, &key.serialize_pem(), cert, &ca))
        .map_err(|e| {
            CliError::new(format!(
                "enrolled identity {}, but {e}: the token is spent and the new key is lost; \
                 an admin can delete the identity and create it again",
                verified.sub
            ))
        })?;
    eprintln!(
        "enrolled identity {}; wrote {}",
        verified.sub,
        args.out.display()
    );
    Ok(())
}

/// `ottca` and `ca`: the device already has a certificate from its CA; the enrollment binds
/// it (and, for `ca`, creates the identity).
fn enroll_with_certificate(
    args: &EnrollArgs,
    claims: &jwt::Claims,
    server: &PublicUrl,
    cas: &[CertificateDer<'static>],
    cert_path: &std::path::Path,
    key_path: &std::path::Path,
    out: PendingFile,
) -> Result<(), CliError> {
    // PEM files: a DER file is not text, and says so rather than "invalid UTF-8".
    let read_pem = |path: &std::path::Path| {
        std::fs::read_to_string(path).map_err(|e| {
            CliError::new(if e.kind() == std::io::ErrorKind::InvalidData {
                format!(
                    "{}: not a PEM file (DER? convert it: openssl x509 -inform der -in {0} \
                     -out FILE.pem, or openssl pkey -inform der for a key)",
                    path.display()
                )
            } else {
                format!("{}: {e}", path.display())
            })
        })
    };
    let cert_pem = read_pem(cert_path)?;
    let key_pem = read_pem(key_path)?;
    let material = crate::identity_file::IdentityFile::new(server, &key_pem, &cert_pem, "");
    let chain = material.cert_chain().map_err(|_| {
        let swapped = if cert_pem.contains("PRIVATE KEY-----") {
            " (it holds a private key: are --cert and --key swapped?)"
        } else {
            ""
        };
        CliError::new(format!(
            "{}: no PEM certificate{swapped}",
            cert_path.display()
        ))
    })?;
    if let Some(version) = chain.first().and_then(|leaf| x509_version(leaf)) {
        if version != 3 {
            return Err(CliError::new(format!(
                "{}: the certificate is X.509 version {version}; enrollment needs version 3 \
                 (`openssl x509 -req` makes version 1 unless given extensions with -extfile: \
                 see the README)",
                cert_path.display()
            )));
        }
    }
    let key = material.private_key().map_err(|_| {
        CliError::new(
            if key_pem.contains("ENCRYPTED PRIVATE KEY")
                || key_pem.contains("Proc-Type: 4,ENCRYPTED")
            {
                format!(
                    "{}: the private key is encrypted; decrypt it first (openssl pkey -in {0} \
                     -out FILE.key, then keep that file private)",
                    key_path.display()
                )
            } else {
                format!("{}: not a PEM private key", key_path.display())
            },
        )
    })?;
    let (path, body) = if claims.em == "ottca" {
        let token_q: String = form_urlencoded::byte_serialize(claims.jti.as_bytes()).collect();
        (
            format!(
                "{}/enroll?method=ottca&token={token_q}",
                crate::api::CLIENT_PREFIX
            ),
            Vec::new(),
        )
    } else {
        let body = match &args.idname {
            Some(name) => serde_json::json!({ "name": name }).to_string().into_bytes(),
            None => Vec::new(),
        };
        (
            format!("{}/enroll?method=ca", crate::api::CLIENT_PREFIX),
            body,
        )
    };
    let mut headers = vec![("Accept", "application/json")];
    if !body.is_empty() {
        headers.push(("Content-Type", "application/json"));
    }
    let tls = client::config(cas, Some((chain, key))).map_err(|e| {
        CliError::new(format!(
            "{} with {}: {e}",
            cert_path.display(),
            key_path.display()
        ))
    })?;
    let resp = client::request(
        tls,
        &server.host,
        server.port,
        "POST",
        &path,
        &headers,
        &body,
    )?;
    if resp.status != 200 {
        return Err(match resp.api_error() {
            Some((code, message)) => {
                CliError::refused(format!("enrollment refused: {code}: {message}"))
            }
            None => CliError::refused(format!("enrollment refused: HTTP {}", resp.status)),
        });
    }
    let ca_pem = crate::pki::pem_of_certs(&cas.iter().map(|c| c.to_vec()).collect::<Vec<_>>());
    out.write(&IdentityFile::new(server, &key_pem, &cert_pem, &ca_pem))
        .map_err(|e| {
            CliError::new(format!(
                "the certificate in {} is enrolled, but {e}; it stays bound to its identity \
                 (enrolling it again answers CERT_IN_USE)",
                cert_path.display()
            ))
        })?;
    let id = resp
        .json()
        .ok()
        .and_then(|v| v["data"]["id"].as_str().map(str::to_string));
    match id {
        Some(id) => eprintln!("enrolled as identity {id}; wrote {}", args.out.display()),
        None => eprintln!(
            "enrolled identity {}; wrote {}",
            claims.sub,
            args.out.display()
        ),
    }
    Ok(())
}

/// The X.509 version (1 to 3) of a DER certificate, when it parses.
fn x509_version(der: &[u8]) -> Option<u32> {
    use x509_parser::prelude::FromDer as _;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    Some(cert.version().0 + 1)
}
