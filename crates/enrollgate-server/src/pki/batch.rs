//! Batched signing off the I/O path: each worker hands CSR checks and certificate signing
//! to its own signing thread, so the worker's event loop keeps completing handshakes and
//! reading requests while a batch is signed.
//!
//! ```text
//!  worker N (monoio, I/O) ──▶ bounded queue (full: 429) ──▶ signer-N thread
//!        ▲                                                   take all queued (≤ max_batch)
//!        └──────────── reply per job ◀──────────────────── CSR check + sign, one by one
//! ```
//!
//! The thread owns the worker's [`Signer`] (its CA key, parsed once), so no lock is taken
//! on the request path. With the CA key in a PKCS#11 token, where a signature waits on the
//! token, the thread owns several signers, each on a session of its own, and signs a batch
//! on all of them at once (see [`BatchSigner::spawn_pool`]). A batch is whatever queued while the previous batch was being
//! signed, with no timer: an idle signer answers at once. A job whose requester has gone
//! (connection closed, request timed out) is dropped unsigned, so a client that gives up
//! costs no signing.

use std::time::Instant;

use super::csr::{self, AcceptedCsr, CsrError};
use super::issue::{IssueError, IssuedCert, Signer};
use crate::clock::UnixTime;

/// Why a certificate was not issued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// The CSR was refused.
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// Signing failed.
    #[error(transparent)]
    Issue(#[from] IssueError),
    /// The signing queue is full (`limits.sign_queue`).
    #[error("the signing queue is full")]
    Busy,
    /// The signing thread has stopped.
    #[error("the signer has stopped")]
    Stopped,
}

/// Tuning of one worker's signer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOptions {
    /// Jobs waiting at most; beyond, requests get [`SignError::Busy`].
    pub queue_capacity: usize,
    /// Jobs signed in one batch at most (bounds a batch's latency).
    pub max_batch: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self {
            queue_capacity: 1024,
            max_batch: 64,
        }
    }
}

type Reply = flume::Sender<Result<(AcceptedCsr, IssuedCert), SignError>>;

struct Job {
    csr_der: Vec<u8>,
    identity_id: String,
    now: UnixTime,
    reply: Reply,
}

/// One worker's handle to its signing thread. The thread ends when the handle is dropped
/// (after the jobs already queued).
pub struct BatchSigner {
    tx: flume::Sender<Job>,
}

impl std::fmt::Debug for BatchSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchSigner")
            .field("queued", &self.tx.len())
            .finish()
    }
}

impl BatchSigner {
    /// Starts the signing thread `name`, which owns `signer`.
    pub fn spawn(signer: Signer, name: String, opts: BatchOptions) -> std::io::Result<Self> {
        Self::spawn_pool(vec![signer], name, opts)
    }

    /// Starts the signing thread `name`, which owns `signers` (the same CA key, each on a
    /// session of its own: a PKCS#11 token). A batch of several jobs is split over them and
    /// signed in parallel, one scoped thread per signer; a lone job is signed at once.
    pub fn spawn_pool(
        signers: Vec<Signer>,
        name: String,
        opts: BatchOptions,
    ) -> std::io::Result<Self> {
        if signers.is_empty() {
            return Err(std::io::Error::other("a signing thread needs a signer"));
        }
        let (tx, rx) = flume::bounded::<Job>(opts.queue_capacity.max(1));
        let max_batch = opts.max_batch.max(1);
        std::thread::Builder::new()
            .name(name)
            .spawn(move || run(&signers, &rx, max_batch))?;
        Ok(Self { tx })
    }

    /// Checks the CSR (`csr_der`, already decoded from the body) and signs a certificate
    /// for `identity_id` on the signing thread; waits asynchronously for the answer.
    pub async fn sign(
        &self,
        csr_der: Vec<u8>,
        identity_id: &str,
        now: UnixTime,
    ) -> Result<(AcceptedCsr, IssuedCert), SignError> {
        let (reply, rx) = flume::bounded(1);
        let job = Job {
            csr_der,
            identity_id: identity_id.to_owned(),
            now,
            reply,
        };
        self.tx.try_send(job).map_err(|e| match e {
            flume::TrySendError::Full(_) => {
                crate::telemetry::rate_limited("sign_queue");
                SignError::Busy
            }
            flume::TrySendError::Disconnected(_) => SignError::Stopped,
        })?;
        rx.recv_async().await.map_err(|_| SignError::Stopped)?
    }

    /// Jobs waiting now.
    pub fn queued(&self) -> usize {
        self.tx.len()
    }
}

fn run(signers: &[Signer], rx: &flume::Receiver<Job>, max_batch: usize) {
    let mut batch = Vec::with_capacity(max_batch);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        batch.extend(rx.try_iter().take(max_batch - 1));
        let started = Instant::now();
        let size = batch.len();
        batch.retain(|job| !job.reply.is_disconnected());
        match signers {
            [signer] => sign_all(signer, &batch),
            _ if batch.len() <= 1 => sign_all(&signers[0], &batch),
            _ => {
                let per = batch.len().div_ceil(signers.len());
                std::thread::scope(|s| {
                    for (jobs, signer) in batch.chunks(per).zip(signers) {
                        s.spawn(move || sign_all(signer, jobs));
                    }
                });
            }
        }
        batch.clear();
        crate::telemetry::sign_batch(size, started.elapsed(), rx.len());
    }
}

fn sign_all(signer: &Signer, jobs: &[Job]) {
    for job in jobs {
        let result = sign_one(signer, job);
        // The requester may have gone meanwhile; nothing to do then.
        let _ = job.reply.send(result);
    }
}

fn sign_one(signer: &Signer, job: &Job) -> Result<(AcceptedCsr, IssuedCert), SignError> {
    let accepted = csr::accept(&job.csr_der)?;
    let issued = signer.issue_client(&accepted.spki_der, &job.identity_id, job.now)?;
    Ok((accepted, issued))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::pki::IssuePolicy;

    fn signer() -> Signer {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        Signer::new(
            ca.der(),
            key,
            IssuePolicy {
                trust_domain: "test".into(),
                lifetime_secs: 3600,
                crl_url: None,
            },
        )
        .unwrap()
    }

    fn csr_der() -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["device".to_string()]).unwrap();
        params.serialize_request(&key).unwrap().der().to_vec()
    }

    #[test]
    fn signs_concurrent_jobs_and_refuses_bad_csrs() {
        let batch =
            BatchSigner::spawn(signer(), "test-signer".into(), BatchOptions::default()).unwrap();
        let batch = std::sync::Arc::new(batch);
        let mut threads = Vec::new();
        for i in 0..16 {
            let batch = batch.clone();
            threads.push(std::thread::spawn(move || {
                let der = if i % 4 == 0 {
                    vec![0x30, 0x03, 1, 2, 3]
                } else {
                    csr_der()
                };
                block_on(batch.sign(der, &format!("id{i}"), 1_700_000_000))
            }));
        }
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        for (i, r) in results.iter().enumerate() {
            if i % 4 == 0 {
                assert!(matches!(r, Err(SignError::Csr(CsrError::NotACsr))), "{r:?}");
            } else {
                let (_, cert) = r.as_ref().unwrap();
                let (_, parsed) = x509_parser::parse_x509_certificate(&cert.der).unwrap();
                let cn = parsed.subject().iter_common_name().next().unwrap();
                assert_eq!(cn.as_str().unwrap(), format!("id{i}"));
            }
        }
    }

    /// A pool of signers (sessions on one token key, here one in-memory key) splits a
    /// batch among them: every job gets its own certificate, under the one CA.
    #[test]
    fn a_pool_signs_a_batch_in_parallel_and_answers_each_job() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        let pem = key.serialize_pem();
        let signers = (0..3)
            .map(|_| {
                let policy = IssuePolicy {
                    trust_domain: "test".into(),
                    lifetime_secs: 3600,
                    crl_url: None,
                };
                Signer::new(ca.der(), rcgen::KeyPair::from_pem(&pem).unwrap(), policy).unwrap()
            })
            .collect();
        let opts = BatchOptions {
            queue_capacity: 64,
            max_batch: 64,
        };
        let batch = std::sync::Arc::new(
            BatchSigner::spawn_pool(signers, "test-pool".into(), opts).unwrap(),
        );
        let threads: Vec<_> = (0..24)
            .map(|i| {
                let batch = batch.clone();
                std::thread::spawn(move || {
                    block_on(batch.sign(csr_der(), &format!("id{i}"), 1_700_000_000))
                })
            })
            .collect();
        let (_, ca_parsed) = x509_parser::parse_x509_certificate(ca.der()).unwrap();
        for (i, t) in threads.into_iter().enumerate() {
            let (_, cert) = t.join().unwrap().unwrap();
            let (_, parsed) = x509_parser::parse_x509_certificate(&cert.der).unwrap();
            let cn = parsed.subject().iter_common_name().next().unwrap();
            assert_eq!(cn.as_str().unwrap(), format!("id{i}"));
            parsed
                .verify_signature(Some(ca_parsed.public_key()))
                .unwrap();
        }
        assert!(BatchSigner::spawn_pool(vec![], "none".into(), opts).is_err());
    }

    #[test]
    fn a_full_queue_is_busy_not_unbounded() {
        // No thread drains this queue: the second job finds it full.
        let (tx, _rx) = flume::bounded::<Job>(1);
        let batch = BatchSigner { tx };
        let (reply, _keep) = flume::bounded(1);
        batch
            .tx
            .try_send(Job {
                csr_der: Vec::new(),
                identity_id: String::new(),
                now: 0,
                reply,
            })
            .unwrap();
        let r = block_on(batch.sign(csr_der(), "x", 0));
        assert!(matches!(r, Err(SignError::Busy)), "{r:?}");
    }

    #[test]
    fn a_stopped_signer_says_so() {
        let (tx, rx) = flume::bounded::<Job>(4);
        drop(rx);
        let batch = BatchSigner { tx };
        let r = block_on(batch.sign(csr_der(), "x", 0));
        assert!(matches!(r, Err(SignError::Stopped)), "{r:?}");
    }

    /// Drives a future on a fresh single-threaded monoio runtime.
    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
            .block_on(f)
    }
}
