//! Criterion benchmarks of the enrollment hot path's pure parts (run: `cargo bench`).

use criterion::{criterion_group, criterion_main, Criterion};
use enrollgate::pki::{self, csr, Host, IssuePolicy, KeyType, Signer};

fn bench_ott_crypto(c: &mut Criterion) {
    let now = 1_750_000_000;
    let material = pki::create(KeyType::Ec, &[Host::parse("localhost")], now).expect("pki");
    let ca_der = pem::parse(&material.ca_cert_pem)
        .expect("pem")
        .into_contents();
    let ca_key = rcgen::KeyPair::from_pem(&material.ca_key_pem).expect("key");
    let signer = Signer::new(
        &ca_der,
        ca_key,
        IssuePolicy {
            trust_domain: "bench".into(),
            lifetime_secs: 86_400,
        },
    )
    .expect("signer");
    let device = rcgen::KeyPair::generate().expect("device key");
    let csr_der = rcgen::CertificateParams::default()
        .serialize_request(&device)
        .expect("csr")
        .der()
        .to_vec();
    let accepted = csr::accept(&csr_der).expect("accept");

    c.bench_function("csr_accept_p256", |b| {
        b.iter(|| csr::accept(&csr_der).expect("accept"))
    });
    c.bench_function("issue_client_cert_p256", |b| {
        b.iter(|| {
            signer
                .issue_client(&accepted.spki_der, "bench-identity", now)
                .expect("issue")
        })
    });
}

criterion_group!(benches, bench_ott_crypto);
criterion_main!(benches);
