//! The gateway's state: what every worker shares ([`Shared`]) and what each worker owns
//! ([`WorkerCtx`]: its own certificate signer and JWT key, loaded once, so the request path
//! takes no lock).

use std::sync::Arc;

use base64::Engine as _;

use crate::admission::{Limit, Limiter, Verdict};
use crate::ca::metered::WorkerCas;
use crate::ca::registry::CaRegistry;
use crate::clock::Clock;
use crate::config::{Config, PublicUrl};
use crate::pki::batch::{BatchOptions, BatchSigner};
use crate::pki::{self, IssuePolicy, Signer};
use crate::server::tls::{self, ServerTls};
use crate::store::{CommitHandle, Store};
use crate::token::JwtSigner;

/// Why the gateway could not be assembled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// A PKI file.
    #[error(transparent)]
    Pki(#[from] pki::LoadError),
    /// TLS configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// JWT key.
    #[error("JWT signing key: {0}")]
    Jwt(#[from] crate::token::JwtError),
    /// The key enrollment tokens are derived from.
    #[error(transparent)]
    TokenKey(#[from] crate::token::TokenKeyError),
    /// Signer.
    #[error("certificate signer: {0}")]
    Issue(#[from] pki::IssueError),
    /// PKCS#7.
    #[error("CA bundle: {0}")]
    Pkcs7(#[from] pki::pkcs7::Pkcs7Error),
    /// The store.
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The CA key in a PKCS#11 token.
    #[error("pki.ca_key: {0}")]
    Hsm(#[from] pki::hsm::HsmError),
    /// A worker's signing thread could not be started.
    #[error("could not start a signing thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Where each worker gets its CA key.
enum CaKeySource {
    /// A PKCS#8 PEM key.
    Pem(String),
    /// A key in a PKCS#11 token.
    Hsm(Arc<pki::hsm::Token>),
}

/// State shared by all workers.
pub struct Shared {
    /// Validated configuration.
    pub config: Config,
    /// Reads.
    pub store: Store,
    /// Writes.
    pub commit: CommitHandle,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// The public URL, `iss` of every JWT.
    pub public_url: PublicUrl,
    /// rustls configuration of the enrollment listener.
    pub tls: Arc<rustls::ServerConfig>,
    /// The CA bundle (PEM) returned with issued certificates: the CAs cacerts serves.
    pub ca_bundle_pem: String,
    /// Base64 of the certs-only PKCS#7 served at `/.well-known/est/cacerts`: the internal CA
    /// chain and the CAs of the listener's certificate ([`pki::served_cas`]).
    pub cacerts_b64: String,
    /// Third-party CAs, parsed; workers follow changes through [`WorkerCtx::cas`].
    pub cas: Arc<CaRegistry>,
    /// Derives each enrollment's token from its id (the store keeps only hashes).
    pub tokens: Arc<crate::token::TokenKey>,
    /// API sessions made by `POST /authenticate?method=cert`.
    pub sessions: Arc<crate::token::session::Sessions>,
    /// The internal CA certificate (DER).
    pub internal_ca_der: Vec<u8>,
    /// One counter per worker, advanced by the worker's own runtime every 200 ms; the
    /// systemd watchdog is fed only while all of them move.
    pub heartbeats: Arc<[std::sync::atomic::AtomicU64]>,
    /// Open connections across workers and the ceiling `limits.max_memory` puts on them.
    pub memory: Arc<crate::ops::memory::MemoryGuard>,
    /// Intermediates (PEM) appended to every issued certificate: the certificates of
    /// `pki.ca_cert` that are not self-signed roots (empty with the default single root).
    pub issued_chain_tail_pem: String,
    /// Rate limits on enrollment requests; kept across reloads while their limit is unchanged.
    pub rates: Arc<RateLimits>,
    /// The last CRL signed (`GET /crl`), regenerated when the store's revocation
    /// generation moves.
    pub crl: crate::pki::crl::CrlCache,
    /// Set when a reload replaced this state: keep-alive connections still using it close
    /// after their current response, so old keys and limits do not linger.
    superseded: std::sync::atomic::AtomicBool,
    ca_der: Vec<u8>,
    /// The CA key: PEM read once per generation (workers parse their own copy), or the
    /// PKCS#11 token where each worker opens a session of its own.
    ca_key: CaKeySource,
    server_cert_der: Vec<u8>,
    /// The TLS key, PEM, read once per generation.
    server_key_pem: String,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Loads the PKI named by `config` and assembles the shared state.
    pub fn new(
        config: Config,
        store: Store,
        commit: CommitHandle,
        clock: Arc<dyn Clock>,
        public_url: PublicUrl,
        workers: usize,
    ) -> Result<Self, SetupError> {
        let cas = Arc::new(CaRegistry::load(&store)?);
        let heartbeats: Arc<[std::sync::atomic::AtomicU64]> = (0..workers.max(1))
            .map(|_| std::sync::atomic::AtomicU64::new(0))
            .collect();
        let rates = Arc::new(RateLimits::new(&config.limits));
        Self::build(
            config,
            store,
            commit,
            clock,
            public_url,
            cas,
            heartbeats,
            Arc::default(),
            rates,
        )
    }

    /// The state for a re-read configuration: new certificates, keys, limits and policy;
    /// the same store, committer, CA cache, heartbeats and memory guard (sessions are
    /// tokens signed under the token key: they carry over).
    pub fn reloaded(&self, config: Config, public_url: PublicUrl) -> Result<Self, SetupError> {
        let rates = if self.rates.same_limits(&config.limits) {
            self.rates.clone()
        } else {
            Arc::new(RateLimits::new(&config.limits))
        };
        Self::build(
            config,
            self.store.clone(),
            self.commit.clone(),
            self.clock.clone(),
            public_url,
            self.cas.clone(),
            self.heartbeats.clone(),
            self.memory.clone(),
            rates,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        config: Config,
        store: Store,
        commit: CommitHandle,
        clock: Arc<dyn Clock>,
        public_url: PublicUrl,
        cas: Arc<CaRegistry>,
        heartbeats: Arc<[std::sync::atomic::AtomicU64]>,
        memory: Arc<crate::ops::memory::MemoryGuard>,
        rates: Arc<RateLimits>,
    ) -> Result<Self, SetupError> {
        let ca_chain = pki::read_cert_chain(&config.ca_cert)?;
        let server_chain = pki::read_cert_chain(&config.tls_cert)?;
        let (_, server_key_pem) = pki::read_key(&config.tls_key)?;
        let (ca_key, matches) = match pki::hsm::uri_of(&config.ca_key) {
            Some(uri) => {
                let token = Arc::new(pki::hsm::Token::open(&uri?)?);
                let key = token.key()?;
                let matches = pki::key_matches_cert(&key, &ca_chain[0]);
                (CaKeySource::Hsm(token), matches)
            }
            None => {
                let (key, pem) = pki::read_key(&config.ca_key)?;
                let matches = pki::key_matches_cert(&key, &ca_chain[0]);
                (CaKeySource::Pem(pem), matches)
            }
        };
        // A CA key that does not match the CA certificate (a rotation caught half-way)
        // would issue certificates that do not chain to the CA the gateway returns.
        if !matches {
            return Err(pki::LoadError::Invalid {
                path: config.ca_key.display().to_string(),
                reason: "the key does not match the CA certificate in pki.ca_cert".into(),
            }
            .into());
        }
        let key_der = pem::parse(server_key_pem.as_bytes())
            .map(|p| p.into_contents())
            .map_err(|_| pki::LoadError::Invalid {
                path: config.tls_key.display().to_string(),
                reason: "not PEM".into(),
            })?;
        let tls = tls::server_config(ServerTls {
            chain: server_chain.iter().map(|d| d.clone().into()).collect(),
            key: rustls_pki_types::PrivatePkcs8KeyDer::from(key_der).into(),
            key_exchange: config.key_exchange.clone(),
            session_tickets: config.session_tickets,
        })?;
        let tls_ca = match &config.tls_ca {
            Some(path) => pki::read_cert_chain(path)?,
            None => Vec::new(),
        };
        let served = pki::served_cas(&ca_chain, &tls_ca, &server_chain).map_err(|reason| {
            pki::LoadError::Invalid {
                path: config.tls_cert.display().to_string(),
                reason,
            }
        })?;
        let cacerts_b64 = base64_lines(&pki::pkcs7::certs_only(&served)?);
        let tokens = Arc::new(crate::token::secret::load(&config.token_key)?);
        let sessions = Arc::new(crate::token::session::Sessions::new(&tokens));
        // What an `ott` answer tells the client to trust (its identity file's `ca`): the
        // same CAs, so that it can reach this listener again.
        let ca_bundle_pem = pki::pem_of_certs(&served);
        let shared = Self {
            ca_der: ca_chain[0].clone(),
            ca_key,
            server_cert_der: server_chain[0].clone(),
            server_key_pem: server_key_pem.clone(),
            config,
            store,
            commit,
            clock,
            public_url,
            tls,
            ca_bundle_pem,
            cacerts_b64,
            cas,
            tokens,
            sessions,
            internal_ca_der: ca_chain[0].clone(),
            heartbeats,
            memory,
            rates,
            superseded: std::sync::atomic::AtomicBool::new(false),
            crl: Default::default(),
            issued_chain_tail_pem: pki::pem_of_certs(
                &ca_chain
                    .iter()
                    .filter(|der| !pki::is_self_signed(der))
                    .cloned()
                    .collect::<Vec<_>>(),
            ),
        };
        // Fail at start, not on the first request, if a worker could not load its keys.
        shared.worker_keys()?;
        Ok(shared)
    }

    /// Loads the keys one worker signs with (each worker has its own copy).
    fn worker_keys(&self) -> Result<(Signer, JwtSigner), SetupError> {
        let signer = Signer::new(&self.ca_der, self.ca_key()?, self.issue_policy())?;
        let server_key_pem = &self.server_key_pem;
        let server_key =
            rcgen::KeyPair::from_pem(server_key_pem).map_err(|_| pki::LoadError::Invalid {
                path: "tls.key".into(),
                reason: "not a PKCS#8 PEM private key".into(),
            })?;
        let jwt = JwtSigner::new(
            &server_key,
            server_key_pem,
            &self.server_cert_der,
            self.public_url.origin(),
        )?;
        Ok((signer, jwt))
    }

    /// A handle on the CA key: a parsed copy of the file key, or a new session on the
    /// PKCS#11 token.
    fn ca_key(&self) -> Result<pki::CaKey, SetupError> {
        Ok(match &self.ca_key {
            CaKeySource::Pem(pem) => rcgen::KeyPair::from_pem(pem)
                .map_err(|_| pki::LoadError::Invalid {
                    path: "pki.ca_key".into(),
                    reason: "not a PKCS#8 PEM private key".into(),
                })?
                .into(),
            CaKeySource::Hsm(token) => pki::CaKey::Hsm(token.key()?),
        })
    }

    /// Signs a CRL listing `entries` at `now` (see [`crate::pki::crl`]).
    pub fn sign_crl(
        &self,
        entries: &[crate::pki::crl::Entry],
        now: crate::clock::UnixTime,
        number: u64,
    ) -> Result<Vec<u8>, SetupError> {
        Ok(crate::pki::crl::sign(
            &self.ca_der,
            self.ca_key()?,
            entries,
            now,
            number,
        )?)
    }

    /// The listener's certificate (DER), whose key signs the enrollment JWTs.
    pub fn server_cert_der(&self) -> &[u8] {
        &self.server_cert_der
    }

    /// True once a reload installed a newer state.
    pub fn is_superseded(&self) -> bool {
        self.superseded.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The issuing policy from the configuration.
    pub fn issue_policy(&self) -> IssuePolicy {
        IssuePolicy {
            trust_domain: self.config.trust_domain.clone(),
            lifetime_secs: i64::try_from(self.config.cert_lifetime.as_secs()).unwrap_or(i64::MAX),
            crl_url: self
                .config
                .public_url
                .as_ref()
                .map(|u| format!("{}/crl", u.origin())),
        }
    }
}

/// One worker's context: the shared state plus keys loaded for this worker alone.
pub struct WorkerCtx {
    /// Shared state.
    pub shared: Arc<Shared>,
    /// Checks CSRs and signs client certificates on this worker's signing thread.
    pub signer: BatchSigner,
    /// Signs enrollment JWTs.
    pub jwt: JwtSigner,
    /// Worker number.
    pub index: usize,
    /// This worker's view of the third-party CAs.
    pub cas: WorkerCas,
}

impl std::fmt::Debug for WorkerCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerCtx")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl WorkerCtx {
    /// Loads this worker's keys.
    pub fn new(shared: Arc<Shared>, index: usize) -> Result<Self, SetupError> {
        let (signer, jwt) = shared.worker_keys()?;
        let mut signers = vec![signer];
        if let CaKeySource::Hsm(token) = &shared.ca_key {
            // More sessions on the token, signing a batch in parallel.
            for _ in 1..pki::hsm::SESSIONS_PER_WORKER {
                let key = pki::CaKey::Hsm(token.key()?);
                signers.push(Signer::new(&shared.ca_der, key, shared.issue_policy())?);
            }
        }
        let limits = &shared.config.limits;
        let signer = BatchSigner::spawn_pool(
            signers,
            format!("enrollgate-sign-{index}"),
            BatchOptions {
                queue_capacity: limits.sign_queue,
                max_batch: limits.sign_batch,
            },
        )
        .map_err(SetupError::Thread)?;
        Ok(Self {
            shared,
            signer,
            jwt,
            index,
            cas: WorkerCas::new(),
        })
    }
}

/// The current [`Shared`] and its generation. SIGHUP swaps in a new one; each worker
/// notices the new generation at its next accept (one atomic load), builds its context
/// from it, and serves new connections with it while open connections finish with the
/// context they started with.
pub struct SharedRegistry {
    generation: std::sync::atomic::AtomicU64,
    current: std::sync::Mutex<Arc<Shared>>,
}

impl std::fmt::Debug for SharedRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedRegistry")
            .field("generation", &self.generation())
            .finish()
    }
}

impl SharedRegistry {
    /// A registry holding `shared` as generation 1.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            generation: std::sync::atomic::AtomicU64::new(1),
            current: std::sync::Mutex::new(shared),
        }
    }

    /// The current generation.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The current state and its generation.
    pub fn current(&self) -> (u64, Arc<Shared>) {
        let guard = match self.current.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        (self.generation(), guard.clone())
    }

    /// Installs a new state.
    pub fn swap(&self, shared: Arc<Shared>) {
        let mut guard = match self.current.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let old = std::mem::replace(&mut *guard, shared);
        old.superseded
            .store(true, std::sync::atomic::Ordering::Release);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }
}

/// Client addresses tracked by the per-source limit at most (about 100 bytes each).
pub const MAX_TRACKED_SOURCES: usize = 1 << 17;

/// The configured rate limits on enrollment requests, shared by all workers.
#[derive(Debug)]
pub struct RateLimits {
    epoch: std::time::Instant,
    per_source: Option<(Limit, Limiter<std::net::IpAddr>)>,
    per_ca: Option<(Limit, Limiter<String>)>,
}

/// Which limit refused a request, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// `source` or `ca`.
    pub limit: &'static str,
    /// When the request would be admitted.
    pub wait: std::time::Duration,
}

impl RateLimits {
    /// Limiters for `limits` (none where a limit is off).
    pub fn new(limits: &crate::config::Limits) -> Self {
        Self {
            epoch: std::time::Instant::now(),
            per_source: limits
                .per_source
                .map(|l| (l, Limiter::new(l, MAX_TRACKED_SOURCES))),
            // CAs are few (each is an admin-created record); the table is never the bound.
            per_ca: limits.per_ca.map(|l| (l, Limiter::new(l, 1 << 16))),
        }
    }

    fn same_limits(&self, limits: &crate::config::Limits) -> bool {
        self.per_source.as_ref().map(|(l, _)| *l) == limits.per_source
            && self.per_ca.as_ref().map(|(l, _)| *l) == limits.per_ca
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Admits one enrollment request from `ip` (per-source limit).
    pub fn source(&self, ip: std::net::IpAddr) -> Result<(), Refused> {
        let Some((_, limiter)) = &self.per_source else {
            return Ok(());
        };
        verdict(
            "source",
            limiter.check(&crate::admission::source_key(ip), self.now_ns()),
        )
    }

    /// Admits one enrollment through the third-party CA `ca_id` (per-CA limit).
    pub fn ca(&self, ca_id: &str) -> Result<(), Refused> {
        let Some((_, limiter)) = &self.per_ca else {
            return Ok(());
        };
        verdict("ca", limiter.check(ca_id, self.now_ns()))
    }
}

fn verdict(limit: &'static str, v: Verdict) -> Result<(), Refused> {
    match v {
        Verdict::Admit | Verdict::Untracked => Ok(()),
        Verdict::Wait(wait) => {
            // Counted where it is decided: every refusal, whoever maps it to an answer.
            crate::telemetry::rate_limited(limit);
            Err(Refused { limit, wait })
        }
    }
}

/// Base64 in lines of 64 characters, each ending in a newline, as OpenZiti's controller
/// writes `/.well-known/est/cacerts`: OpenSSL's base64 BIO, which the C SDK (through
/// tlsuv) reads it with, needs line breaks and skips lines over 1,024 characters; a
/// single line fails there however short.
/// Base64 of `der` in lines of 64 characters (as OpenSSL's base64 BIO reads it).
pub(crate) fn base64_lines(der: &[u8]) -> String {
    let one = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(one.len() + one.len() / 64 + 1);
    for line in one.as_bytes().chunks(64) {
        // Base64 is ASCII: every chunk is a str.
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cacerts_base64_is_in_lines_of_64() {
        let der: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let text = base64_lines(&der);
        assert!(text.ends_with('\n'));
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.iter().all(|l| l.len() <= 64));
        assert!(lines[..lines.len() - 1].iter().all(|l| l.len() == 64));
        let joined: String = lines.concat();
        let back = base64::engine::general_purpose::STANDARD
            .decode(joined)
            .unwrap();
        assert_eq!(back, der);
    }
}
