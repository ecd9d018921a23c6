//! Criterion benchmarks (run: `cargo bench --bench enroll`; results in BENCHMARKS.md).
//!
//! - `ott_floor/*`: the unavoidable cryptography of one `ott` enrollment, from the same
//!   primitives the daemon uses: a mutual-TLS handshake (in memory, no sockets), the CSR's
//!   signature check, the certificate signature.
//! - `commit/*`: one group commit of N identity creations, synced and relaxed.
//! - `chain_verify/*`: a device chain verified against 1, 100 and 10,000 cached CAs.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use enrollgate::ca::chain::CaSet;
use enrollgate::ca::memo::{self, SignatureMemo};
use enrollgate::model::{Ca, Identity, IdentityType};
use enrollgate::pki::{self, csr, Host, IssuePolicy, KeyType, Signer};
use enrollgate::store::apply::Batch;
use enrollgate::store::{Command, Store};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

const NOW: i64 = 1_790_000_000;

fn der_of(pem_text: &str) -> Vec<u8> {
    pem::parse(pem_text).expect("pem").into_contents()
}

/// A client that never resumes: every benchmarked handshake is a full one, as a device
/// enrolling for the first time makes (a resumed one skips the certificates and their
/// signatures, and would flatter every number).
fn fresh(cfg: Arc<rustls::ClientConfig>) -> Arc<rustls::ClientConfig> {
    let mut cfg = (*cfg).clone();
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

/// Drives a client and a server connection to the end of the handshake in memory.
fn handshake(client: &mut rustls::ClientConnection, server: &mut rustls::ServerConnection) {
    let mut buf = Vec::with_capacity(16 * 1024);
    while client.is_handshaking() || server.is_handshaking() {
        buf.clear();
        while client.wants_write() {
            client.write_tls(&mut buf).expect("client write");
        }
        if !buf.is_empty() {
            let mut s = &buf[..];
            while !s.is_empty() {
                server.read_tls(&mut s).expect("server read");
            }
            server.process_new_packets().expect("server process");
        }
        buf.clear();
        while server.wants_write() {
            server.write_tls(&mut buf).expect("server write");
        }
        if !buf.is_empty() {
            let mut s = &buf[..];
            while !s.is_empty() {
                client.read_tls(&mut s).expect("client read");
            }
            client.process_new_packets().expect("client process");
        }
    }
}

/// The same handshake, returning only the time spent in the server's calls: the
/// daemon's share of the handshake, which is what bounds its enrollments per core.
fn handshake_server_share(
    client: &mut rustls::ClientConnection,
    server: &mut rustls::ServerConnection,
) -> std::time::Duration {
    let mut spent = std::time::Duration::ZERO;
    let mut buf = Vec::with_capacity(16 * 1024);
    while client.is_handshaking() || server.is_handshaking() {
        buf.clear();
        while client.wants_write() {
            client.write_tls(&mut buf).expect("client write");
        }
        let started = std::time::Instant::now();
        if !buf.is_empty() {
            let mut s = &buf[..];
            while !s.is_empty() {
                server.read_tls(&mut s).expect("server read");
            }
            server.process_new_packets().expect("server process");
        }
        buf.clear();
        while server.wants_write() {
            server.write_tls(&mut buf).expect("server write");
        }
        spent += started.elapsed();
        if !buf.is_empty() {
            let mut s = &buf[..];
            while !s.is_empty() {
                client.read_tls(&mut s).expect("client read");
            }
            client.process_new_packets().expect("client process");
        }
    }
    spent
}

fn bench_ott_floor(c: &mut Criterion) {
    let material = pki::create(KeyType::Ec, &[Host::parse("localhost")], NOW).expect("pki");
    let ca_der = der_of(&material.ca_cert_pem);
    let ca_key = KeyPair::from_pem(&material.ca_key_pem).expect("key");
    let signer = Signer::new(
        &ca_der,
        ca_key,
        IssuePolicy {
            trust_domain: "bench".into(),
            lifetime_secs: 86_400,
            crl_url: None,
        },
    )
    .expect("signer");
    let device = KeyPair::generate().expect("device key");
    let csr_der = CertificateParams::default()
        .serialize_request(&device)
        .expect("csr")
        .der()
        .to_vec();
    let accepted = csr::accept(&csr_der).expect("accept");

    // TLS: the daemon's server configuration, and a client presenting a certificate.
    let server_cfg = enrollgate::server::tls::server_config(enrollgate::server::tls::ServerTls {
        chain: vec![CertificateDer::from(der_of(&material.server_cert_pem))],
        key: PrivatePkcs8KeyDer::from(der_of(&material.server_key_pem)).into(),
        key_exchange: Vec::new(),
        session_tickets: false,
    })
    .expect("server config");
    let client_cert = signer
        .issue_client(&accepted.spki_der, "bench", NOW)
        .expect("issue");
    let client_key: PrivateKeyDer<'static> =
        PrivatePkcs8KeyDer::from(device.serialize_der()).into();
    let mtls_client = fresh(
        enrollgate::client::config(
            &[CertificateDer::from(ca_der.clone())],
            Some((
                vec![CertificateDer::from(client_cert.der.clone())],
                client_key,
            )),
        )
        .expect("client config"),
    );
    let plain_client = fresh(
        enrollgate::client::config(&[CertificateDer::from(ca_der.clone())], None)
            .expect("client config"),
    );

    // The mutual case really sends and checks a client certificate.
    {
        let mut cl = rustls::ClientConnection::new(
            mtls_client.clone(),
            "localhost".try_into().expect("name"),
        )
        .expect("client");
        let mut sv = rustls::ServerConnection::new(server_cfg.clone()).expect("server");
        handshake(&mut cl, &mut sv);
        assert!(
            sv.peer_certificates().is_some(),
            "no client certificate in the mutual handshake"
        );
        let mut cl = rustls::ClientConnection::new(
            plain_client.clone(),
            "localhost".try_into().expect("name"),
        )
        .expect("client");
        let mut sv = rustls::ServerConnection::new(server_cfg.clone()).expect("server");
        handshake(&mut cl, &mut sv);
        assert!(sv.peer_certificates().is_none());
        // And a second handshake of the same client is full again (no resumption).
        let mut cl = rustls::ClientConnection::new(
            mtls_client.clone(),
            "localhost".try_into().expect("name"),
        )
        .expect("client");
        let mut sv = rustls::ServerConnection::new(server_cfg.clone()).expect("server");
        handshake(&mut cl, &mut sv);
        assert!(
            sv.peer_certificates().is_some(),
            "the second handshake resumed instead of being a full one"
        );
    }
    let mut g = c.benchmark_group("ott_floor");
    g.bench_function("tls_handshake_server_only_p256", |b| {
        b.iter(|| {
            let mut cl = rustls::ClientConnection::new(
                plain_client.clone(),
                "localhost".try_into().expect("name"),
            )
            .expect("client");
            let mut sv = rustls::ServerConnection::new(server_cfg.clone()).expect("server");
            handshake(&mut cl, &mut sv);
        })
    });
    g.bench_function("tls_handshake_mutual_p256", |b| {
        b.iter(|| {
            let mut cl = rustls::ClientConnection::new(
                mtls_client.clone(),
                "localhost".try_into().expect("name"),
            )
            .expect("client");
            let mut sv = rustls::ServerConnection::new(server_cfg.clone()).expect("server");
            handshake(&mut cl, &mut sv);
        })
    });
    // The same handshake with X25519 only, instead of the hybrid post-quantum default.
    let x25519_server =
        enrollgate::server::tls::server_config(enrollgate::server::tls::ServerTls {
            chain: vec![CertificateDer::from(der_of(&material.server_cert_pem))],
            key: PrivatePkcs8KeyDer::from(der_of(&material.server_key_pem)).into(),
            key_exchange: vec!["x25519".into()],
            session_tickets: false,
        })
        .expect("server config");
    // An RSA-3072 server certificate (`init --key-type rsa`), for old clients.
    let rsa = pki::create(KeyType::Rsa, &[Host::parse("localhost")], NOW).expect("rsa pki");
    let rsa_server = enrollgate::server::tls::server_config(enrollgate::server::tls::ServerTls {
        chain: vec![CertificateDer::from(der_of(&rsa.server_cert_pem))],
        key: PrivatePkcs8KeyDer::from(der_of(&rsa.server_key_pem)).into(),
        key_exchange: Vec::new(),
        session_tickets: false,
    })
    .expect("server config");
    let rsa_mtls_client = fresh(
        enrollgate::client::config(
            &[CertificateDer::from(der_of(&rsa.ca_cert_pem))],
            Some((
                vec![CertificateDer::from(client_cert.der.clone())],
                PrivatePkcs8KeyDer::from(device.serialize_der()).into(),
            )),
        )
        .expect("client config"),
    );
    // The server's share alone (the client's work is not timed).
    for (name, client_cfg, server) in [
        ("server_share_mutual_p256", &mtls_client, &server_cfg),
        ("server_share_server_only_p256", &plain_client, &server_cfg),
        (
            "server_share_mutual_p256_x25519_only",
            &mtls_client,
            &x25519_server,
        ),
        ("server_share_mutual_rsa3072", &rsa_mtls_client, &rsa_server),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = std::time::Duration::ZERO;
                for _ in 0..iters {
                    let mut cl = rustls::ClientConnection::new(
                        client_cfg.clone(),
                        "localhost".try_into().expect("name"),
                    )
                    .expect("client");
                    let started = std::time::Instant::now();
                    let mut sv = rustls::ServerConnection::new(server.clone()).expect("server");
                    total += started.elapsed();
                    total += handshake_server_share(&mut cl, &mut sv);
                }
                total
            })
        });
    }
    g.bench_function("tls_handshake_mutual_p256_x25519_only", |b| {
        b.iter(|| {
            let mut cl = rustls::ClientConnection::new(
                mtls_client.clone(),
                "localhost".try_into().expect("name"),
            )
            .expect("client");
            let mut sv = rustls::ServerConnection::new(x25519_server.clone()).expect("server");
            handshake(&mut cl, &mut sv);
        })
    });
    g.bench_function("csr_accept_p256", |b| {
        b.iter(|| csr::accept(&csr_der).expect("accept"))
    });
    g.bench_function("issue_client_cert_p256", |b| {
        b.iter(|| {
            signer
                .issue_client(&accepted.spki_der, "bench-identity", NOW)
                .expect("issue")
        })
    });
    g.finish();
}

fn identity(i: u64) -> Identity {
    Identity {
        id: format!("id-{i}"),
        name: format!("name-{i}"),
        kind: IdentityType::Device,
        is_admin: false,
        role_attributes: vec![],
        created_at: NOW,
        updated_at: NOW,
        enrollment_id: None,
        lifecycle: Default::default(),
        authenticator: None,
    }
}

fn bench_commit(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("db"), true).expect("store");
    let mut next = 0u64;
    let mut g = c.benchmark_group("commit");
    g.sample_size(20);
    for sync in [true, false] {
        for n in [1usize, 16, 256] {
            g.throughput(Throughput::Elements(n as u64));
            let label = if sync { "synced" } else { "relaxed" };
            g.bench_with_input(BenchmarkId::new(label, n), &n, |b, &n| {
                b.iter_batched(
                    || {
                        let cmds: Vec<Command> = (0..n)
                            .map(|_| {
                                next += 1;
                                Command::CreateIdentity {
                                    identity: identity(next),
                                    enrollment: None,
                                }
                            })
                            .collect();
                        cmds
                    },
                    |cmds| {
                        let backend = store.backend();
                        let mut batch = Batch::new(&**backend);
                        for cmd in cmds {
                            batch.apply(cmd).expect("apply");
                        }
                        let set = batch.into_write_set().expect("write set");
                        backend.commit(&set, sync).expect("write");
                    },
                    BatchSize::SmallInput,
                )
            });
        }
    }
    g.finish();
}

fn root(cn: &str) -> (CertificateParams, KeyPair, String) {
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.not_before = time::OffsetDateTime::from_unix_timestamp(NOW - 1000).expect("time");
    p.not_after = time::OffsetDateTime::from_unix_timestamp(NOW + 100_000).expect("time");
    let pem_text = p.self_signed(&key).expect("ca").pem();
    (p, key, pem_text)
}

fn ca_record(i: usize, pem_text: String) -> Ca {
    Ca {
        id: format!("ca-{i}"),
        name: format!("ca-{i}"),
        cert_pem: pem_text,
        fingerprint: format!("fp-{i}"),
        is_verified: true,
        verification_token: String::new(),
        is_auto_ca_enrollment_enabled: true,
        is_ott_ca_enrollment_enabled: false,
        is_auth_enabled: true,
        identity_roles: vec![],
        identity_name_format: enrollgate::model::DEFAULT_NAME_FORMAT.into(),
        created_at: NOW,
        updated_at: NOW,
    }
}

fn bench_chain_verify(c: &mut Criterion) {
    // One real device CA; the others are distinct CAs sharing one key (generating 10,000
    // keys would only slow the setup: lookup cost depends on the subjects, not the keys).
    let device_ca = root("device-ca");
    let filler_key = KeyPair::generate().expect("key");
    let leaf_key = KeyPair::generate().expect("key");
    let mut leaf = CertificateParams::default();
    leaf.distinguished_name.push(DnType::CommonName, "device-1");
    leaf.not_before = time::OffsetDateTime::from_unix_timestamp(NOW - 100).expect("time");
    leaf.not_after = time::OffsetDateTime::from_unix_timestamp(NOW + 10_000).expect("time");
    let leaf_der = leaf
        .signed_by(&leaf_key, &Issuer::from_params(&device_ca.0, &device_ca.1))
        .expect("leaf")
        .der()
        .clone();
    let chain = [leaf_der];
    let mut g = c.benchmark_group("chain_verify");
    for n in [1usize, 100, 10_000] {
        let mut cas: Vec<Ca> = (1..n)
            .map(|i| {
                let mut p = CertificateParams::default();
                p.distinguished_name
                    .push(DnType::CommonName, format!("filler-{i}"));
                p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                ca_record(i, p.self_signed(&filler_key).expect("ca").pem())
            })
            .collect();
        cas.push(ca_record(0, device_ca.2.clone()));
        let set = Arc::new(CaSet::build(cas));
        assert_eq!(set.len(), n);
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                set.verify(&chain, NOW, "bench", &SignatureMemo::off(), |_| true)
                    .expect("verify")
            })
        });
    }
    // A fleet's usual shape: leaf, then an intermediate the client sends, then the root.
    let inter_key = KeyPair::generate().expect("key");
    let mut inter = CertificateParams::default();
    inter
        .distinguished_name
        .push(DnType::CommonName, "device-intermediate");
    inter.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    inter.not_before = time::OffsetDateTime::from_unix_timestamp(NOW - 100).expect("time");
    inter.not_after = time::OffsetDateTime::from_unix_timestamp(NOW + 10_000).expect("time");
    let inter_der = inter
        .signed_by(&inter_key, &Issuer::from_params(&device_ca.0, &device_ca.1))
        .expect("intermediate")
        .der()
        .clone();
    let leaf2_der = leaf
        .signed_by(&leaf_key, &Issuer::from_params(&inter, &inter_key))
        .expect("leaf")
        .der()
        .clone();
    let chain2 = [leaf2_der, inter_der.clone()];
    let set = CaSet::build(vec![ca_record(0, device_ca.2.clone())]);
    // Every signature checked: the floor of a chain with an intermediate.
    g.bench_function("1_with_intermediate", |b| {
        b.iter(|| {
            set.verify(&chain2, NOW, "bench", &SignatureMemo::off(), |_| true)
                .expect("verify")
        })
    });
    // What a worker pays for the next device of a fleet: a new leaf each time (its own
    // serial, so its signed body differs too; more leaves than the memo holds, so no leaf
    // is ever remembered), its intermediate's signature remembered from the devices before.
    let fleet_chains: Vec<[CertificateDer<'static>; 2]> = (0..4 * memo::PER_GENERATION as u64)
        .map(|i| {
            let mut leaf = leaf.clone();
            leaf.serial_number = Some(rcgen::SerialNumber::from(i + 1));
            let leaf = leaf
                .signed_by(&leaf_key, &Issuer::from_params(&inter, &inter_key))
                .expect("leaf")
                .der()
                .clone();
            [leaf, inter_der.clone()]
        })
        .collect();
    let worker_memo = SignatureMemo::default();
    let mut next = 0usize;
    g.bench_function("1_with_intermediate_remembered", |b| {
        b.iter(|| {
            next = (next + 1) % fleet_chains.len();
            set.verify(&fleet_chains[next], NOW, "bench", &worker_memo, |_| true)
                .expect("verify")
        })
    });
    g.finish();
}

criterion_group!(benches, bench_ott_floor, bench_commit, bench_chain_verify);
criterion_main!(benches);
