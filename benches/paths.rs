//! The in-memory cost of each enrollment path, without sockets or TLS (run:
//! `cargo bench --bench paths`; results in BENCHMARKS.md).
//!
//! A real gateway state (made by `init` in a temporary directory, the real store and
//! committer, a worker context with its signing thread) answers enrollment requests
//! through `api::handle`, exactly as a connection would after its handshake. Each
//! iteration redeems a fresh token or presents a fresh device certificate (made in the
//! untimed setup). Durability is relaxed so the figure is the path's CPU cost; the synced
//! commit is measured by `commit/*` in the `enroll` bench and shared by whole batches.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use enrollgate::api::{self, Peer, Request};
use enrollgate::app::{Shared, WorkerCtx};
use enrollgate::clock::SystemClock;
use enrollgate::config::{Config, PublicUrl};
use enrollgate::http::{parse_head, Parsed};
use enrollgate::model::{Ca, Enrollment, Identity, IdentityType, Method};
use enrollgate::store::{commit, Command, Durability, Store};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls_pki_types::CertificateDer;

struct Gateway {
    _dir: tempfile::TempDir,
    worker: std::rc::Rc<WorkerCtx>,
    rt: std::cell::RefCell<monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>>>,
    device_ca: (CertificateParams, KeyPair),
    ca_id: String,
}

fn now() -> i64 {
    enrollgate::clock::to_unix(std::time::SystemTime::now())
}

impl Gateway {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let made = enrollgate::cli::init::init(enrollgate::cli::init::InitArgs {
            data_dir: data,
            listen: "127.0.0.1:0".parse().expect("addr"),
            public_url: None,
            key_type: enrollgate::pki::KeyType::Ec,
            admin_name: "admin".into(),
            ca_key: None,
            config_out: None,
            store_url: None,
        })
        .expect("init");
        let mut config = Config::load(&made.config).expect("config");
        config.commit.durability = Durability::Relaxed;
        let store = Store::open(&config.store_path, false).expect("store");
        let (handle, committer) = commit::spawn(store.clone(), config.commit).expect("committer");
        // The committer runs until the process exits.
        std::mem::forget(committer);
        let url = PublicUrl::parse("https://localhost:8443").expect("url");
        let shared = Arc::new(
            Shared::new(config, store, handle, Arc::new(SystemClock), url, 1).expect("shared"),
        );

        // One verified third-party CA that allows auto and ottca enrollment.
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "bench device CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let pem_text = params.self_signed(&key).expect("ca").pem();
        let der = pem::parse(&pem_text).expect("pem").into_contents();
        let ca = Ca {
            id: "benchca".into(),
            name: "bench".into(),
            cert_pem: pem_text,
            fingerprint: enrollgate::pki::fingerprint::sha256_hex(&der),
            is_verified: true,
            verification_token: String::new(),
            is_auto_ca_enrollment_enabled: true,
            is_ott_ca_enrollment_enabled: true,
            is_auth_enabled: true,
            identity_roles: vec![],
            identity_name_format: enrollgate::model::DEFAULT_NAME_FORMAT.into(),
            created_at: now(),
            updated_at: now(),
        };
        shared
            .commit
            .submit_blocking(Command::CreateCa { ca })
            .expect("create CA");
        shared.cas.reload(&shared.store).expect("reload CAs");
        let worker = std::rc::Rc::new(WorkerCtx::new(shared, 0).expect("worker"));
        let rt = std::cell::RefCell::new(
            monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
                .expect("runtime"),
        );
        Self {
            _dir: dir,
            worker,
            rt,
            device_ca: (params, key),
            ca_id: "benchca".into(),
        }
    }

    /// A pending identity with a `method` enrollment; returns its token.
    fn pending(&self, method: Method) -> String {
        let id = enrollgate::ids::new_id().expect("id");
        let token = enrollgate::ids::new_token().expect("token");
        let t = now();
        let identity = Identity {
            id: id.clone(),
            name: format!("bench-{id}"),
            kind: IdentityType::Device,
            is_admin: false,
            role_attributes: vec![],
            created_at: t,
            updated_at: t,
            enrollment_id: None,
            lifecycle: Default::default(),
            authenticator: None,
        };
        let enrollment = Enrollment {
            id: enrollgate::ids::new_id().expect("id"),
            token: token.clone(),
            method,
            identity_id: id,
            ca_id: (method == Method::Ottca).then(|| self.ca_id.clone()),
            created_at: t,
            expires_at: t + 3600,
            jwt: String::new(),
            token_sha256: vec![enrollgate::token::token_sha256(&token)],
        };
        self.worker
            .shared
            .commit
            .submit_blocking(Command::CreateIdentity {
                identity,
                enrollment: Some(enrollment),
            })
            .expect("create identity");
        token
    }

    /// A device certificate from the bench CA, as a one-certificate chain.
    fn device(&self) -> Vec<CertificateDer<'static>> {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::default();
        let cn = enrollgate::ids::new_id().expect("id");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let issuer = Issuer::from_params(&self.device_ca.0, &self.device_ca.1);
        vec![p.signed_by(&key, &issuer).expect("device").der().clone()]
    }

    /// Answers the requests, all in flight at once on this worker's runtime (as many
    /// connections would be), and checks every answer is a success.
    fn handle_all(&self, requests: Vec<(String, Vec<u8>, Vec<CertificateDer<'static>>)>) {
        let tasks: Vec<_> = requests
            .into_iter()
            .map(|(raw_head, body, chain)| {
                let Ok(Parsed::Complete(head, _)) = parse_head(raw_head.as_bytes()) else {
                    panic!("bench request head does not parse");
                };
                let req = Request { head, body };
                let peer = Peer {
                    addr: Some("127.0.0.1:40000".parse().expect("addr")),
                    cert_sha256: chain
                        .first()
                        .map(|c| enrollgate::pki::fingerprint::sha256_hex(c)),
                    chain,
                };
                (req, peer)
            })
            .collect();
        let worker = self.worker.clone();
        self.rt.borrow_mut().block_on(async move {
            let handles: Vec<_> = tasks
                .into_iter()
                .map(|(req, peer)| {
                    let worker = worker.clone();
                    monoio::spawn(async move { api::handle(&worker, &req, &peer, "bench").await })
                })
                .collect();
            for h in handles {
                let resp = h.await;
                assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
            }
        });
    }

    /// One request of `method`, with its untimed preparation done.
    fn request(
        &self,
        method: Method,
        csr: &str,
    ) -> (String, Vec<u8>, Vec<CertificateDer<'static>>) {
        match method {
            Method::Ott => {
                let token = self.pending(Method::Ott);
                (
                    format!(
                        "POST /edge/client/v1/enroll?method=ott&token={token} HTTP/1.1\r\nHost: b\r\nContent-Type: application/x-pem-file\r\nContent-Length: {}\r\n\r\n",
                        csr.len()
                    ),
                    csr.as_bytes().to_vec(),
                    Vec::new(),
                )
            }
            Method::Ottca => {
                let token = self.pending(Method::Ottca);
                (
                    format!("POST /edge/client/v1/enroll?method=ottca&token={token} HTTP/1.1\r\nHost: b\r\nContent-Length: 0\r\n\r\n"),
                    Vec::new(),
                    self.device(),
                )
            }
            Method::Ca => (
                "POST /edge/client/v1/enroll?method=ca HTTP/1.1\r\nHost: b\r\nContent-Length: 0\r\n\r\n".into(),
                Vec::new(),
                self.device(),
            ),
        }
    }
}

fn bench_paths(c: &mut Criterion) {
    let gw = Gateway::new();
    let device = KeyPair::generate().expect("device key");
    let csr = CertificateParams::default()
        .serialize_request(&device)
        .expect("csr")
        .pem()
        .expect("pem");
    // One request at a time: the latency of the path, thread hand-offs included.
    let mut g = c.benchmark_group("enroll_path");
    for (name, method) in [
        ("ott", Method::Ott),
        ("ottca", Method::Ottca),
        ("ca", Method::Ca),
    ] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || vec![gw.request(method, &csr)],
                |reqs| gw.handle_all(reqs),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
    // 64 in flight: the per-enrollment cost once signing and commits form batches.
    let mut g = c.benchmark_group("enroll_path_64_in_flight");
    g.throughput(Throughput::Elements(64));
    for (name, method) in [
        ("ott", Method::Ott),
        ("ottca", Method::Ottca),
        ("ca", Method::Ca),
    ] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || (0..64).map(|_| gw.request(method, &csr)).collect(),
                |reqs| gw.handle_all(reqs),
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
    drop(gw);
}

criterion_group!(benches, bench_paths);
criterion_main!(benches);
