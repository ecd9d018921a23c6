//! TLS on a monoio socket, driven by rustls' `ServerConnection` (`read_tls` /
//! `process_new_packets` / `write_tls`), and the rustls server configuration.
//!
//! The adapter is ours rather than `monoio-rustls` because an mTLS gateway must read the
//! client's certificate chain after the handshake, which that crate keeps private, and
//! because owning the loop lets the connection bound what it buffers.

use std::cell::Cell;
use std::future::Future;
use std::io::{self, Read as _, Write as _};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    DigitallySignedStruct, DistinguishedName, ServerConfig, ServerConnection, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, SubjectPublicKeyInfoDer, UnixTime};

/// Ciphertext read from the socket at a time: one maximal TLS record and its header.
const READ_CHUNK: usize = 16 * 1024 + 512;

/// A server-side TLS stream over a monoio TCP socket.
pub struct TlsStream {
    io: TcpStream,
    conn: ServerConnection,
    rbuf: Vec<u8>,
    rpos: usize,
    wbuf: Vec<u8>,
    eof: bool,
}

fn invalid(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl TlsStream {
    /// Runs the server handshake on `io`, keeping `progress` up to date: whether it waits
    /// for the client, since when, and whether the client's bytes have arrived.
    pub async fn accept(
        io: TcpStream,
        config: Arc<ServerConfig>,
        progress: &Progress,
    ) -> io::Result<Self> {
        let conn = ServerConnection::new(config).map_err(invalid)?;
        let mut s = Self {
            io,
            conn,
            rbuf: Vec::with_capacity(READ_CHUNK),
            rpos: 0,
            wbuf: Vec::with_capacity(4096),
            eof: false,
        };
        // The client's turn starts when the server has sent its flight (or at accept), and
        // only then: a client that trickles a record a byte at a time does not look as if
        // it had just started waiting.
        let mut turn = Instant::now();
        while s.conn.is_handshaking() {
            let sending = s.conn.wants_write();
            s.flush_tls().await?;
            if sending {
                turn = Instant::now();
            }
            if !s.conn.is_handshaking() {
                break;
            }
            progress.waiting_since(turn);
            let filled = Answered {
                inner: std::pin::pin!(s.fill()),
                flag: &progress.answered,
            }
            .await;
            progress.working();
            filled?;
        }
        // The last flight (TLS 1.2 Finished, TLS 1.3 session tickets).
        s.flush_tls().await?;
        Ok(s)
    }

    /// The client's certificate chain (leaf first), when it sent one that verified.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    /// The negotiated protocol version.
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// Reads ciphertext from the socket (when none is buffered) and hands it to rustls.
    async fn fill(&mut self) -> io::Result<()> {
        if self.rpos == self.rbuf.len() {
            if self.eof {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let mut buf = std::mem::take(&mut self.rbuf);
            buf.clear();
            // If this read is cancelled (timeout, select!), `rbuf` stays empty and `rpos`
            // must agree with it; the connection is then closed, never read again.
            self.rpos = 0;
            let (res, buf) = self.io.read(buf).await;
            self.rbuf = buf;
            self.rpos = 0;
            if res? == 0 {
                self.eof = true;
                if self.conn.is_handshaking() {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                // Tell rustls the peer is gone; the plaintext reader then reports it.
                self.conn.read_tls(&mut &[][..])?;
                self.conn.process_new_packets().map_err(invalid)?;
                return Ok(());
            }
        }
        let mut pending = &self.rbuf[self.rpos..];
        let n = self.conn.read_tls(&mut pending)?;
        self.rpos += n;
        if let Err(e) = self.conn.process_new_packets() {
            // Send the alert rustls queued, then fail.
            let _ = self.flush_tls().await;
            return Err(invalid(e));
        }
        Ok(())
    }

    async fn flush_tls(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            let mut buf = std::mem::take(&mut self.wbuf);
            buf.clear();
            self.conn.write_tls(&mut buf)?;
            let (res, buf) = self.io.write_all(buf).await;
            self.wbuf = buf;
            res?;
        }
        Ok(())
    }

    /// Reads plaintext, appending at most `max` bytes to `dst`. `Ok(0)` is a clean end
    /// of stream (close_notify); a TCP close without it is `UnexpectedEof`.
    pub async fn read_plain(&mut self, dst: &mut Vec<u8>, max: usize) -> io::Result<usize> {
        if max == 0 {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "read buffer limit",
            ));
        }
        loop {
            let start = dst.len();
            dst.resize(start + max.min(READ_CHUNK), 0);
            let res = self.conn.reader().read(&mut dst[start..]);
            match res {
                Ok(n) => {
                    dst.truncate(start + n);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst.truncate(start),
                Err(e) => {
                    dst.truncate(start);
                    return Err(e);
                }
            }
            self.fill().await?;
            // Key updates and alerts may need an answer.
            self.flush_tls().await?;
        }
    }

    /// Writes all of `data` as application data.
    pub async fn write_all_plain(&mut self, data: &[u8]) -> io::Result<()> {
        let mut off = 0;
        while off < data.len() {
            off += self.conn.writer().write(&data[off..])?;
            self.flush_tls().await?;
        }
        self.flush_tls().await
    }

    /// Sends close_notify and closes the write side.
    pub async fn close(mut self) {
        self.conn.send_close_notify();
        let _ = self.flush_tls().await;
        let _ = self.io.shutdown().await;
    }

    /// Writes all of `data` and close_notify together, in as few socket writes as they
    /// fit, then closes the write side: the last answer of a connection costs one write,
    /// not two.
    pub async fn write_and_close(mut self, data: &[u8]) -> io::Result<()> {
        let mut off = 0;
        while off < data.len() {
            off += self.conn.writer().write(&data[off..])?;
            if off < data.len() {
                self.flush_tls().await?;
            }
        }
        self.conn.send_close_notify();
        self.flush_tls().await?;
        self.io.shutdown().await
    }

    /// Closes after refusing a request whose remaining bytes were not read: sends
    /// close_notify, shuts the write side, then reads and discards for up to `linger` (at
    /// most 1 MiB) so the kernel does not answer the unread bytes with a reset that
    /// would destroy the error response in flight.
    pub async fn close_lingering(mut self, linger: std::time::Duration) {
        self.conn.send_close_notify();
        let _ = self.flush_tls().await;
        let _ = self.io.shutdown().await;
        let deadline = std::time::Instant::now() + linger;
        let mut discarded = 0usize;
        let mut buf = Vec::with_capacity(READ_CHUNK);
        while discarded < (1 << 20) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            buf.clear();
            match monoio::time::timeout(left, self.io.read(buf)).await {
                Ok((Ok(n), b)) if n > 0 => {
                    discarded += n;
                    buf = b;
                }
                _ => break,
            }
        }
    }
}

/// What a handshake in progress is waiting for, for the worker's handshake table (which
/// makes room by closing the handshake that has waited longest for a silent client).
#[derive(Debug, Default)]
pub struct Progress {
    since: Cell<Option<Instant>>,
    /// Set when the pending read is woken (the client's bytes arrived), before the task
    /// runs again.
    pub(crate) answered: Arc<AnsweredFlag>,
}

impl Progress {
    /// The handshake now waits for the client's next bytes.
    pub(crate) fn waiting_since(&self, since: Instant) {
        self.answered.0.store(false, Ordering::Relaxed);
        self.since.set(Some(since));
    }

    /// The handshake is the server's turn.
    fn working(&self) {
        self.since.set(None);
    }

    /// Since when the handshake has waited for a client that has not answered yet.
    pub fn silent_since(&self) -> Option<Instant> {
        let since = self.since.get()?;
        (!self.answered.0.load(Ordering::Relaxed)).then_some(since)
    }
}

/// Raised by the wake-up of a read that waits for the client.
#[derive(Debug, Default)]
pub struct AnsweredFlag(AtomicBool);

impl AnsweredFlag {
    /// Records that the client's bytes arrived.
    pub(crate) fn wake_by_ref(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Forwards a wake-up to the task after raising the flag.
struct FlagWaker {
    flag: Arc<AnsweredFlag>,
    task: Waker,
}

impl Wake for FlagWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.flag.wake_by_ref();
        self.task.wake_by_ref();
    }
}

/// Polls a read with a waker that raises `flag` when the read completes.
struct Answered<'a, F> {
    inner: Pin<&'a mut F>,
    flag: &'a Arc<AnsweredFlag>,
}

impl<F: Future> Future for Answered<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let waker = Waker::from(Arc::new(FlagWaker {
            flag: self.flag.clone(),
            task: cx.waker().clone(),
        }));
        self.inner.as_mut().poll(&mut Context::from_waker(&waker))
    }
}

/// The material of the enrollment listener's TLS configuration.
pub struct ServerTls {
    /// Certificate chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// Private key.
    pub key: PrivateKeyDer<'static>,
    /// Key-exchange groups, by name ([`crate::config::KX_GROUPS`]); empty: rustls' default.
    pub key_exchange: Vec<String>,
    /// Issue session tickets.
    pub session_tickets: bool,
}

fn kx_group(name: &str) -> Option<&'static dyn rustls::crypto::SupportedKxGroup> {
    use rustls::crypto::aws_lc_rs::kx_group;
    match name {
        "x25519mlkem768" => Some(kx_group::X25519MLKEM768),
        "x25519" => Some(kx_group::X25519),
        "secp256r1" => Some(kx_group::SECP256R1),
        "secp384r1" => Some(kx_group::SECP384R1),
        _ => None,
    }
}

/// The client-certificate policy of the handshake: a certificate is optional (a device
/// redeeming a one-time token has none); when one is sent, the client must prove it holds
/// the leaf's key (the CertificateVerify signature is checked), and the leaf must parse.
/// A leaf that parses as X.509 but that webpki does not take (version 1 or 2, which
/// `openssl x509 -req` makes without an extensions file) is checked against its public key
/// read with x509-parser: the request then gets `CERT_FAILED_VALIDATION` saying why,
/// rather than a handshake alert that names nothing.
///
/// Whose certificate it is, and for what, is decided per request against the store and the
/// cached CAs (`api::auth`, `ca::chain`): an expired certificate, an unknown CA or a CA
/// that does not allow the purpose then gets its documented error code instead of an
/// opaque handshake alert, and nothing a handler trusts comes from an unverified chain.
#[derive(Debug)]
pub struct PossessionVerifier {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl PossessionVerifier {
    /// A verifier using `provider`'s signature algorithms.
    pub fn new(provider: Arc<rustls::crypto::CryptoProvider>) -> Self {
        Self { provider }
    }
}

impl ClientCertVerifier for PossessionVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if webpki::EndEntityCert::try_from(end_entity).is_err() && spki_of(end_entity).is_none() {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadEncoding,
            ));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        match rustls::crypto::verify_tls12_signature(message, cert, dss, algs) {
            Err(e) if webpki_refused(&e) => {
                let spki = spki_of(cert).ok_or(e)?;
                verify_tls12_with_spki(message, &spki, dss.scheme, dss.signature(), algs)
            }
            other => other,
        }
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        match rustls::crypto::verify_tls13_signature(message, cert, dss, algs) {
            Err(e) if webpki_refused(&e) => {
                let spki = spki_of(cert).ok_or(e)?;
                rustls::crypto::verify_tls13_signature_with_raw_key(message, &spki, dss, algs)
            }
            other => other,
        }
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Whether rustls refused `cert` because webpki could not take it (its version, its
/// encoding), as opposed to a signature that does not verify.
fn webpki_refused(e: &rustls::Error) -> bool {
    matches!(
        e,
        rustls::Error::InvalidCertificate(
            rustls::CertificateError::BadEncoding | rustls::CertificateError::Other(_)
        )
    )
}

/// The subject public key of a certificate x509-parser reads (any version).
fn spki_of(cert: &CertificateDer<'_>) -> Option<SubjectPublicKeyInfoDer<'static>> {
    use x509_parser::prelude::FromDer as _;
    let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(cert).ok()?;
    Some(SubjectPublicKeyInfoDer::from(
        parsed.tbs_certificate.subject_pki.raw.to_vec(),
    ))
}

/// The TLS 1.2 CertificateVerify check against a bare public key (rustls offers it for
/// TLS 1.3 only): each algorithm of the scheme is tried, as rustls does with a parsed
/// certificate, until one takes the key.
fn verify_tls12_with_spki(
    message: &[u8],
    spki: &SubjectPublicKeyInfoDer<'_>,
    scheme: SignatureScheme,
    signature: &[u8],
    algs: &rustls::crypto::WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    let bad = || rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature);
    let key = webpki::RawPublicKeyEntity::try_from(spki)
        .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
    let candidates = algs
        .mapping
        .iter()
        .find(|(s, _)| *s == scheme)
        .map(|(_, candidates)| *candidates)
        .ok_or(rustls::Error::PeerMisbehaved(
            rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
        ))?;
    for alg in candidates {
        match key.verify_signature(*alg, message, signature) {
            Ok(()) => return Ok(HandshakeSignatureValid::assertion()),
            Err(webpki::Error::UnsupportedSignatureAlgorithmForPublicKeyContext(_)) => continue,
            Err(_) => return Err(bad()),
        }
    }
    Err(bad())
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("chain", &self.chain.len())
            .field("key", &"...")
            .finish()
    }
}

/// The server's preference among cipher suites (lower first).
fn suite_rank(suite: rustls::CipherSuite) -> u8 {
    use rustls::CipherSuite as S;
    match suite {
        S::TLS13_AES_128_GCM_SHA256 => 0,
        S::TLS13_AES_256_GCM_SHA384 => 1,
        S::TLS13_CHACHA20_POLY1305_SHA256 => 2,
        S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 3,
        _ => 4,
    }
}

/// Builds the rustls server configuration: TLS 1.3 and 1.2 with the aws-lc-rs provider,
/// client certificates asked for and optional ([`PossessionVerifier`]).
pub fn server_config(tls: ServerTls) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if !tls.key_exchange.is_empty() {
        let groups: Vec<_> = tls
            .key_exchange
            .iter()
            .filter_map(|n| kx_group(n))
            .collect();
        if groups.is_empty() {
            return Err(rustls::Error::General("no known key-exchange group".into()));
        }
        provider.kx_groups = groups;
    }
    // AES-128-GCM first, chosen by the server: TLS 1.3's mandatory suite, and its key
    // schedule runs on SHA-256 (hardware-accelerated on current CPUs) where
    // AES-256-GCM-SHA384's runs SHA-384 in software. Measured: HKDF-SHA384 was about a
    // tenth of the daemon's CPU per handshake (BENCHMARKS.md).
    provider
        .cipher_suites
        .sort_by_key(|s| suite_rank(s.suite()));
    let provider = Arc::new(provider);
    let verifier = Arc::new(PossessionVerifier::new(provider.clone()));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(tls.chain, tls.key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ignore_client_order = true;
    // rustls' default keeps a stateful session cache behind a mutex shared by every worker
    // and sends two TLS 1.3 tickets after every handshake. A device enrolls once, so that
    // is work (and a global lock) on every handshake for nothing: with tickets off there is
    // no resumption at all; with them on, one stateless ticket, sealed by a rotating key.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    if tls.session_tickets {
        config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
        config.send_tls13_tickets = 1;
    } else {
        config.send_tls13_tickets = 0;
    }
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::rc::Rc;
    use std::sync::Mutex;
    use std::time::Duration;

    /// A read that waits until its waker is called from outside.
    struct Pending<'a>(&'a Mutex<Option<Waker>>, bool);

    impl Future for Pending<'_> {
        type Output = ();

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.1 {
                return Poll::Ready(());
            }
            self.1 = true;
            *self.0.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[test]
    fn a_client_that_trickles_bytes_keeps_the_start_of_its_turn() {
        use std::io::Write as _;
        let now = crate::clock::to_unix(std::time::SystemTime::now());
        let pki = crate::pki::create(
            crate::pki::KeyType::Ec,
            &[crate::pki::Host::parse("localhost")],
            now,
        )
        .unwrap();
        let der = |p: &str| pem::parse(p).unwrap().into_contents();
        let config = server_config(ServerTls {
            chain: vec![CertificateDer::from(der(&pki.server_cert_pem))],
            key: rustls_pki_types::PrivatePkcs8KeyDer::from(der(&pki.server_key_pem)).into(),
            key_exchange: Vec::new(),
            session_tickets: false,
        })
        .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // The client: a real ClientHello, sent one byte every 20 ms (12 bytes).
        let client = std::thread::spawn(move || {
            let cfg = crate::client::config(&[], None).unwrap();
            let mut conn =
                rustls::ClientConnection::new(cfg, "localhost".try_into().unwrap()).unwrap();
            let mut hello = Vec::new();
            conn.write_tls(&mut hello).unwrap();
            let mut tcp = std::net::TcpStream::connect(addr).unwrap();
            tcp.set_nodelay(true).unwrap();
            for b in &hello[..12] {
                std::thread::sleep(Duration::from_millis(20));
                tcp.write_all(&[*b]).unwrap();
            }
            std::thread::sleep(Duration::from_millis(100));
        });
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_nonblocking(true).unwrap();
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async move {
            let tcp = monoio::net::TcpStream::from_std(tcp).unwrap();
            let progress = Rc::new(Progress::default());
            let started = Instant::now();
            let accept = TlsStream::accept(tcp, config, &progress);
            let watch = async {
                let mut seen = Vec::new();
                for _ in 0..12 {
                    monoio::time::sleep(Duration::from_millis(20)).await;
                    if let Some(since) = progress.since.get() {
                        seen.push(since);
                    }
                }
                seen
            };
            let seen = monoio::select! {
                _ = accept => panic!("the handshake ended"),
                seen = watch => seen,
            };
            assert!(seen.len() >= 10, "{} samples", seen.len());
            // Every sample shows the same start, at accept, however many bytes came.
            assert!(seen.iter().all(|s| *s == seen[0]));
            assert!(seen[0] <= started + Duration::from_millis(10));
        });
        client.join().unwrap();
    }

    #[test]
    fn the_tls12_check_against_a_bare_key_takes_its_signer_only() {
        let algs = rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms;
        let message = b"the handshake transcript";
        for alg in [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ED25519] {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            let other = rcgen::KeyPair::generate_for(alg).unwrap();
            let cert = rcgen::CertificateParams::new(vec!["device".into()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            let spki = spki_of(cert.der()).unwrap();
            {
                use rcgen::PublicKeyData as _;
                assert_eq!(spki.as_ref(), key.subject_public_key_info().as_slice());
            }
            let scheme = if alg == &rcgen::PKCS_ED25519 {
                SignatureScheme::ED25519
            } else {
                SignatureScheme::ECDSA_NISTP256_SHA256
            };
            let sign = |k: &rcgen::KeyPair| {
                use rcgen::SigningKey as _;
                k.sign(message).unwrap()
            };
            assert!(verify_tls12_with_spki(message, &spki, scheme, &sign(&key), &algs).is_ok());
            assert!(
                verify_tls12_with_spki(message, &spki, scheme, &sign(&other), &algs).is_err(),
                "another key's signature"
            );
            assert!(verify_tls12_with_spki(
                b"another transcript",
                &spki,
                scheme,
                &sign(&key),
                &algs
            )
            .is_err());
        }
    }

    #[test]
    fn a_waiting_handshake_is_silent_until_its_read_is_woken() {
        let progress = Progress::default();
        assert_eq!(progress.silent_since(), None, "working, not waiting");
        let at = Instant::now();
        progress.waiting_since(at);
        assert_eq!(progress.silent_since(), Some(at));
        let slot = Mutex::new(None);
        let mut read = std::pin::pin!(Pending(&slot, false));
        let fut = Answered {
            inner: read.as_mut(),
            flag: &progress.answered,
        };
        let mut fut = std::pin::pin!(fut);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert_eq!(progress.silent_since(), Some(at));
        // The client's bytes arrive: the driver wakes the read.
        slot.lock().unwrap().take().unwrap().wake();
        assert_eq!(progress.silent_since(), None, "answered: the server's turn");
        assert!(fut.as_mut().poll(&mut cx).is_ready());
        // Waiting again starts silent.
        progress.waiting_since(Instant::now());
        assert!(progress.silent_since().is_some());
        progress.working();
        assert_eq!(progress.silent_since(), None);
    }
}
