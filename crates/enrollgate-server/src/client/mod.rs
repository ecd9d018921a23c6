//! The client side, used by the CLI (and tests): a small blocking HTTPS/1.1 client over
//! rustls, and a verifier that records the server's chain for JWT verification.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// Largest response body the client reads.
pub const MAX_RESPONSE: usize = 16 * 1024 * 1024;

/// A client-side failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Could not connect.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// host:port
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// TLS or IO failure during the exchange.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// TLS configuration.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The response is not valid HTTP.
    #[error("invalid HTTP response from the server: {0}")]
    Protocol(String),
}

/// A response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status.
    pub status: u16,
    /// Headers (lower-case names).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value, ClientError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| ClientError::Protocol(format!("body is not JSON: {e}")))
    }

    /// `error.code` and `error.message` of an error envelope, if this is one.
    pub fn api_error(&self) -> Option<(String, String)> {
        let v = self.json().ok()?;
        let e = v.get("error")?;
        Some((
            e.get("code")?.as_str()?.to_string(),
            e.get("message")
                .and_then(|m| m.as_str())
                .unwrap_or_default()
                .to_string(),
        ))
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A client configuration that verifies the server against `roots`, optionally
/// authenticating with a client certificate.
pub fn config(
    roots: &[CertificateDer<'static>],
    client_auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<ClientConfig>, ClientError> {
    let mut store = RootCertStore::empty();
    for r in roots {
        store.add(r.clone())?;
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(store);
    let cfg = match client_auth {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}

/// Accepts any server certificate but records the chain it presented. The handshake
/// signature is still verified, so the server proved it holds the leaf's key: the caller
/// then decides whether that leaf is trusted (here: by checking the enrollment JWT's
/// signature with it, as OpenZiti clients do).
#[derive(Debug)]
pub struct RecordingVerifier {
    seen: Mutex<Vec<CertificateDer<'static>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl RecordingVerifier {
    /// A new verifier.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            seen: Mutex::new(Vec::new()),
            provider: provider(),
        })
    }

    /// The chain the server presented, leaf first.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.seen.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// A client configuration using this verifier.
    pub fn config(self: &Arc<Self>) -> Result<Arc<ClientConfig>, ClientError> {
        let cfg = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(self.clone())
            .with_no_client_auth();
        Ok(Arc::new(cfg))
    }
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut seen) = self.seen.lock() {
            *seen = std::iter::once(end_entity)
                .chain(intermediates)
                .map(|c| c.clone().into_owned())
                .collect();
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// One HTTPS request on a new connection (`Connection: close`).
pub fn request(
    config: Arc<ClientConfig>,
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpResponse, ClientError> {
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let addr = format!("{host}:{port}");
    let addrs: Vec<_> = (bare_host, port)
        .to_socket_addrs()
        .map_err(|source| ClientError::Connect {
            addr: addr.clone(),
            source,
        })?
        .collect();
    let mut last_err = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    let mut tcp = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, Duration::from_secs(10)) {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last_err = e,
        }
    }
    let tcp = tcp.ok_or(ClientError::Connect {
        addr,
        source: last_err,
    })?;
    tcp.set_read_timeout(Some(Duration::from_secs(60)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(60)))?;
    // The TLS Finished and the request go out as separate writes; with Nagle's algorithm
    // the request would wait for the server's delayed ACK of the Finished (40 ms on
    // Linux), since a server that issues no session tickets sends nothing in between.
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(bare_host.to_string())
        .map_err(|_| ClientError::Protocol(format!("'{host}' is not a valid server name")))?;
    let conn = rustls::ClientConnection::new(config, name)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);

    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\nContent-Length: {}\r\nUser-Agent: enrollgate/{}\r\n",
        body.len(),
        env!("CARGO_PKG_VERSION")
    );
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    tls.write_all(head.as_bytes())?;
    tls.write_all(body)?;
    tls.flush()?;

    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match tls.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(&chunk[..n]);
                if raw.len() > MAX_RESPONSE {
                    return Err(ClientError::Protocol("response too large".into()));
                }
                if let Some(resp) = parse_response(&raw)? {
                    return Ok(resp);
                }
            }
            // A server that closes without close_notify after a complete response.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        }
    }
    parse_response(&raw)?
        .ok_or_else(|| ClientError::Protocol("the connection closed before a full response".into()))
}

/// Parses a complete response (head and `Content-Length` body) from `raw`, or `None` if
/// more bytes are needed.
pub fn parse_response(raw: &[u8]) -> Result<Option<HttpResponse>, ClientError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(ClientError::Protocol(e.to_string())),
    };
    let status = resp.code.unwrap_or(0);
    let headers: Vec<(String, String)> = resp
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).trim().to_string(),
            )
        })
        .collect();
    if status == 100 {
        return parse_response(&raw[n..]);
    }
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let body = &raw[n..];
    match len {
        Some(l) if body.len() >= l => Ok(Some(HttpResponse {
            status,
            headers,
            body: body[..l].to_vec(),
        })),
        Some(_) => Ok(None),
        None => Err(ClientError::Protocol(
            "response without Content-Length".into(),
        )),
    }
}
