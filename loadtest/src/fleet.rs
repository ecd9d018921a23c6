//! The simulated fleet: a device CA (root and intermediate, as device makers run them) and
//! N devices, each with its own key and a client certificate from the intermediate.
//!
//! On disk (directory 0700, every file 0600):
//!
//! ```text
//! DIR/ca-root.pem           the CA to register in the gateway (`register-ca`)
//! DIR/ca-root.key           its key (PKCS#8 PEM): proves possession, signs the intermediate
//! DIR/ca-intermediate.pem   sent by every device after its leaf
//! DIR/ca-intermediate.key
//! DIR/devices.bin           "EGFLEET1", u64 LE count, then per device:
//!                           u32 LE length + certificate DER, u32 LE length + PKCS#8 key DER
//! ```
//!
//! One binary file keeps 100,000 devices at about 64 MiB (P-256) and loads with one read;
//! a device is named by its position: `device-000001` is the first record.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};

use crate::Error;

/// The root CA certificate (register this one).
pub const ROOT_CERT: &str = "ca-root.pem";
/// The root CA key.
pub const ROOT_KEY: &str = "ca-root.key";
/// The intermediate CA certificate.
pub const INTERMEDIATE_CERT: &str = "ca-intermediate.pem";
/// The intermediate CA key.
pub const INTERMEDIATE_KEY: &str = "ca-intermediate.key";
/// The device records.
pub const DEVICES: &str = "devices.bin";

const MAGIC: &[u8; 8] = b"EGFLEET1";
const HEADER_LEN: usize = 16;
const DAY: i64 = 86_400;

/// Key type of the devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyType {
    /// ECDSA P-256 (the default, and what most device stacks use).
    Ec,
    /// RSA 2048 (slow to generate: about 100 ms a key).
    Rsa,
    /// Ed25519.
    Ed25519,
}

/// What `fleet` makes.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// Number of devices.
    pub devices: usize,
    /// Their key type.
    pub key_type: KeyType,
    /// Threads generating devices.
    pub threads: usize,
    /// Validity of device certificates, in days from now.
    pub validity_days: u32,
    /// Name in the CA subjects (`NAME root CA`).
    pub name: String,
    /// Print progress on stderr.
    pub progress: bool,
}

/// What `create` made.
#[derive(Debug, Clone)]
pub struct Created {
    /// Devices written.
    pub devices: usize,
    /// Wall time of the whole generation, files included.
    pub elapsed: Duration,
    /// Size of `devices.bin`.
    pub bytes: u64,
}

/// The common name of the device at `index` (0-based): `device-000001` for 0.
pub fn device_name(index: usize) -> String {
    format!("device-{:06}", index.saturating_add(1))
}

/// One device as stored: certificate and PKCS#8 key, DER.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// The device certificate (leaf only; the intermediate is stored once).
    pub cert: &'a [u8],
    /// Its private key, PKCS#8.
    pub key: &'a [u8],
}

/// The header of a device file holding `count` records.
pub fn encode_header(count: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..].copy_from_slice(&count.to_le_bytes());
    h
}

/// Appends one record to `out`.
pub fn encode_record(out: &mut Vec<u8>, cert: &[u8], key: &[u8]) -> Result<(), Error> {
    for part in [cert, key] {
        let len = u32::try_from(part.len())
            .map_err(|_| Error::Invalid("a device record is larger than 4 GiB".into()))?;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(part);
    }
    Ok(())
}

fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if bytes.len() < n {
        return None;
    }
    let (head, rest) = bytes.split_at(n);
    *bytes = rest;
    Some(head)
}

fn take_part<'a>(bytes: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len: [u8; 4] = take(bytes, 4)?.try_into().ok()?;
    let len = usize::try_from(u32::from_le_bytes(len)).ok()?;
    take(bytes, len)
}

/// Parses a whole device file: header, then exactly the announced number of records.
pub fn decode(bytes: &[u8]) -> Result<Vec<Record<'_>>, Error> {
    let bad = |why: &str| Error::Invalid(format!("{DEVICES}: {why}"));
    let mut rest = bytes;
    let header = take(&mut rest, HEADER_LEN).ok_or_else(|| bad("too short for a header"))?;
    if &header[..8] != MAGIC {
        return Err(bad("not a fleet device file (wrong magic)"));
    }
    let mut count = [0u8; 8];
    count.copy_from_slice(&header[8..]);
    let count = usize::try_from(u64::from_le_bytes(count)).map_err(|_| bad("count too large"))?;
    // Each record takes at least 8 bytes: never trust the count for an allocation.
    if count > rest.len() / 8 {
        return Err(bad("the count announces more records than the file holds"));
    }
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let cert = take_part(&mut rest).ok_or_else(|| bad(&format!("record {i} is cut short")))?;
        let key = take_part(&mut rest).ok_or_else(|| bad(&format!("record {i} is cut short")))?;
        out.push(Record { cert, key });
    }
    if !rest.is_empty() {
        return Err(bad("bytes after the last record"));
    }
    Ok(out)
}

fn offset_time(t: i64) -> Result<time::OffsetDateTime, Error> {
    time::OffsetDateTime::from_unix_timestamp(t)
        .map_err(|e| Error::Crypto(format!("time out of range: {e}")))
}

fn random_serial() -> Result<SerialNumber, Error> {
    let mut b = [0u8; 16];
    enrollgate::ids::fill_random(&mut b).map_err(|e| Error::Crypto(e.to_string()))?;
    // Positive and minimal in DER: clear the top bit, keep the first byte non-zero.
    b[0] = (b[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from_slice(&b))
}

fn ca_params(cn: &str, path_len: Option<u8>, not_after: i64) -> Result<CertificateParams, Error> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "enrollgate-loadtest");
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = offset_time(crate::unix_now() - DAY)?;
    p.not_after = offset_time(not_after)?;
    p.serial_number = Some(random_serial()?);
    p.use_authority_key_identifier_extension = path_len.is_some();
    Ok(p)
}

/// A new key of `kind`.
pub fn generate_key(kind: KeyType) -> Result<KeyPair, Error> {
    Ok(match kind {
        KeyType::Ec => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
        KeyType::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519)?,
        KeyType::Rsa => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)?
        }
    })
}

/// The parameters of a device certificate: a client certificate as the gateway's CA
/// auto-enrollment and ottca expect it (clientAuth, digitalSignature, not a CA).
pub fn device_params(
    cn: &str,
    not_before: i64,
    not_after: i64,
) -> Result<CertificateParams, Error> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.not_before = offset_time(not_before)?;
    p.not_after = offset_time(not_after)?;
    p.serial_number = Some(random_serial()?);
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

/// Makes the devices `range` and returns their encoded records.
fn make_devices(
    range: std::ops::Range<usize>,
    kind: KeyType,
    issuer: &Issuer<'_, &KeyPair>,
    validity: (i64, i64),
    done: &AtomicUsize,
) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(range.len() * 700);
    for i in range {
        let key = generate_key(kind)?;
        let cert =
            device_params(&device_name(i), validity.0, validity.1)?.signed_by(&key, issuer)?;
        encode_record(&mut out, cert.der(), key.serialized_der())?;
        done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(out)
}

/// Splits `0..n` into `parts` contiguous ranges of nearly equal length.
pub fn split(n: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
    let parts = parts.max(1);
    let base = n / parts;
    let extra = n % parts;
    let mut start = 0;
    (0..parts)
        .map(|p| {
            let len = base + usize::from(p < extra);
            let r = start..start + len;
            start += len;
            r
        })
        .filter(|r| !r.is_empty())
        .collect()
}

/// Creates a fleet in `dir` (new, or empty): the CA pair and `spec.devices` devices,
/// generated on `spec.threads` threads.
pub fn create(dir: &Path, spec: &FleetSpec) -> Result<Created, Error> {
    let started = Instant::now();
    crate::make_private_dir(dir)?;
    let now = crate::unix_now();
    let device_validity = (now - DAY, now + i64::from(spec.validity_days) * DAY);
    let ca_not_after = device_validity.1 + 365 * DAY;

    let root_key = generate_key(KeyType::Ec)?;
    let root_params = ca_params(&format!("{} root CA", spec.name), None, ca_not_after)?;
    let root = root_params.self_signed(&root_key)?;
    let inter_key = generate_key(KeyType::Ec)?;
    let inter_params = ca_params(
        &format!("{} intermediate CA", spec.name),
        Some(0),
        ca_not_after,
    )?;
    let inter =
        inter_params.signed_by(&inter_key, &Issuer::from_params(&root_params, &root_key))?;
    crate::write_private(&dir.join(ROOT_CERT), root.pem().as_bytes())?;
    crate::write_private(&dir.join(ROOT_KEY), root_key.serialize_pem().as_bytes())?;
    crate::write_private(&dir.join(INTERMEDIATE_CERT), inter.pem().as_bytes())?;
    crate::write_private(
        &dir.join(INTERMEDIATE_KEY),
        inter_key.serialize_pem().as_bytes(),
    )?;

    let done = AtomicUsize::new(0);
    let ranges = split(spec.devices, spec.threads);
    let chunks: Vec<Result<Vec<u8>, Error>> = std::thread::scope(|s| {
        let workers: Vec<_> = ranges
            .iter()
            .map(|r| {
                let (r, done, inter_params, inter_key) =
                    (r.clone(), &done, &inter_params, &inter_key);
                s.spawn(move || {
                    let issuer = Issuer::from_params(inter_params, inter_key);
                    make_devices(r, spec.key_type, &issuer, device_validity, done)
                })
            })
            .collect();
        if spec.progress {
            while !workers.iter().all(|w| w.is_finished()) {
                std::thread::sleep(Duration::from_millis(200));
                eprint!(
                    "\rgenerating devices: {}/{}",
                    done.load(Ordering::Relaxed),
                    spec.devices
                );
            }
            eprintln!();
        }
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(Error::Crypto("a generator thread panicked".into())))
            })
            .collect()
    });

    let path = dir.join(DEVICES);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let count = u64::try_from(spec.devices).unwrap_or(u64::MAX);
    w.write_all(&encode_header(count))
        .map_err(|e| Error::io(&path, e))?;
    for chunk in chunks {
        w.write_all(&chunk?).map_err(|e| Error::io(&path, e))?;
    }
    let file = w
        .into_inner()
        .map_err(|e| Error::io(&path, e.into_error()))?;
    file.sync_all().map_err(|e| Error::io(&path, e))?;
    let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    Ok(Created {
        devices: spec.devices,
        elapsed: started.elapsed(),
        bytes,
    })
}

/// A fleet on disk, opened for use.
pub struct Fleet {
    /// Its directory.
    pub dir: PathBuf,
    /// The root CA certificate, PEM.
    pub root_pem: String,
    /// The intermediate certificate, DER (sent after every device's leaf).
    pub intermediate_der: Vec<u8>,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("dir", &self.dir)
            .field("devices_bytes", &self.bytes.len())
            .finish_non_exhaustive()
    }
}

fn read_text(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

impl Fleet {
    /// Opens the fleet in `dir` (reads `devices.bin` whole; records are parsed on use).
    pub fn open(dir: &Path) -> Result<Self, Error> {
        let root_pem = read_text(&dir.join(ROOT_CERT))?;
        let inter_path = dir.join(INTERMEDIATE_CERT);
        let intermediate_der = pem::parse(read_text(&inter_path)?)
            .map_err(|_| Error::Invalid(format!("{}: not PEM", inter_path.display())))?
            .into_contents();
        let dev_path = dir.join(DEVICES);
        let bytes = std::fs::read(&dev_path).map_err(|e| Error::io(&dev_path, e))?;
        let fleet = Self {
            dir: dir.to_path_buf(),
            root_pem,
            intermediate_der,
            bytes,
        };
        fleet.records()?;
        Ok(fleet)
    }

    /// Every device record, in order.
    pub fn records(&self) -> Result<Vec<Record<'_>>, Error> {
        decode(&self.bytes)
    }

    /// A proof-of-possession certificate for CA verification: a new key, subject CN
    /// `common_name` (the CA's verification token), signed by the fleet's root key. PEM.
    pub fn proof(&self, common_name: &str) -> Result<String, Error> {
        let root_key = KeyPair::from_pem(&read_text(&self.dir.join(ROOT_KEY))?)?;
        let issuer = Issuer::from_ca_cert_pem(&self.root_pem, &root_key)?;
        let key = generate_key(KeyType::Ec)?;
        let now = crate::unix_now();
        let mut p = device_params(common_name, now - 3600, now + DAY)?;
        p.extended_key_usages.clear();
        Ok(p.signed_by(&key, &issuer)?.pem())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn records_round_trip_and_damage_is_refused() {
        let mut file = encode_header(2).to_vec();
        encode_record(&mut file, b"cert-one", b"key-1").unwrap();
        encode_record(&mut file, b"", b"key-two").unwrap();
        let recs = decode(&file).unwrap();
        assert_eq!(
            recs,
            vec![
                Record {
                    cert: b"cert-one",
                    key: b"key-1"
                },
                Record {
                    cert: b"",
                    key: b"key-two"
                }
            ]
        );
        // Cut anywhere, extended, wrong magic, lying count: refused, never a panic.
        for n in 0..file.len() {
            assert!(decode(&file[..n]).is_err(), "cut at {n}");
        }
        let mut longer = file.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
        let mut magic = file.clone();
        magic[0] = b'X';
        assert!(decode(&magic).is_err());
        let mut count = file.clone();
        count[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode(&count).is_err());
        assert_eq!(decode(&encode_header(0)).unwrap(), vec![]);
    }

    #[test]
    fn split_covers_everything_once() {
        for (n, parts) in [(10, 3), (3, 8), (0, 2), (100_000, 2), (7, 1)] {
            let r = split(n, parts);
            assert_eq!(r.iter().map(|r| r.len()).sum::<usize>(), n);
            for w in r.windows(2) {
                assert_eq!(w[0].end, w[1].start);
                assert!(w[0].len().abs_diff(w[1].len()) <= 1);
            }
        }
    }

    #[test]
    fn a_small_fleet_is_private_and_its_certificates_are_client_certificates() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("fleet");
        let spec = FleetSpec {
            devices: 5,
            key_type: KeyType::Ec,
            threads: 2,
            validity_days: 30,
            name: "unit".into(),
            progress: false,
        };
        let made = create(&dir, &spec).unwrap();
        assert_eq!(made.devices, 5);
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        for f in [
            ROOT_CERT,
            ROOT_KEY,
            INTERMEDIATE_CERT,
            INTERMEDIATE_KEY,
            DEVICES,
        ] {
            let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
        let fleet = Fleet::open(&dir).unwrap();
        let recs = fleet.records().unwrap();
        assert_eq!(recs.len(), 5);
        let (_, c) = x509_parser::parse_x509_certificate(recs[4].cert).unwrap();
        assert_eq!(
            c.subject()
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            "device-000005"
        );
        assert!(!c.is_ca());
        let eku = c.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth);
        assert!(c.key_usage().unwrap().unwrap().value.digital_signature());
        // Signed by the intermediate, which the root signed.
        let (_, inter) = x509_parser::parse_x509_certificate(&fleet.intermediate_der).unwrap();
        c.verify_signature(Some(inter.public_key())).unwrap();
        let root_der = pem::parse(&fleet.root_pem).unwrap().into_contents();
        let (_, root) = x509_parser::parse_x509_certificate(&root_der).unwrap();
        inter.verify_signature(Some(root.public_key())).unwrap();
        // The key is the certificate's.
        let key = KeyPair::try_from(recs[4].key).unwrap();
        assert_eq!(
            key.public_key_raw(),
            c.public_key().subject_public_key.data.as_ref()
        );
        // A proof of possession verifies against the root.
        let proof = fleet.proof("the-token").unwrap();
        let der = pem::parse(&proof).unwrap().into_contents();
        let (_, p) = x509_parser::parse_x509_certificate(&der).unwrap();
        p.verify_signature(Some(root.public_key())).unwrap();
        // Never over an existing fleet.
        assert!(create(&dir, &spec).is_err());
    }
}
