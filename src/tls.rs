//! TLS for both sides: rustls server/client configs from PEM files, reload, and a plain-or-TLS stream.
//!
//! Every config is built with the ring provider passed explicitly, so nothing depends on a
//! process-wide default provider being installed.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, ServerConfig,
    ServerConnection, SignatureScheme, StreamOwned,
};

/// What went wrong while loading TLS material. `key` is the config key naming the file
/// ("tls_cert", "tls_key", "ca_file") so the message points at the line to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsError {
    /// The file could not be opened or read.
    Read {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// The file is not valid PEM.
    Pem {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// No "CERTIFICATE" block in the file.
    NoCertificate { key: &'static str, path: PathBuf },
    /// No unencrypted PKCS#8, RSA or EC private key block in the file.
    NoKey { key: &'static str, path: PathBuf },
    /// The key was found but rustls/ring cannot use it.
    BadKey { path: PathBuf, reason: String },
    /// A certificate was found but cannot be used (e.g. a CA that webpki cannot parse).
    BadCertificate {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// The private key is not the one of the leaf (first) certificate.
    KeyMismatch { key: PathBuf, cert: PathBuf },
    /// rustls refused to build the config (should not happen with the ring provider).
    Config(String),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Read { key, path, reason } => {
                write!(f, "{key}: {}: cannot read: {reason}", path.display())
            }
            TlsError::Pem { key, path, reason } => {
                write!(f, "{key}: {}: bad PEM: {reason}", path.display())
            }
            TlsError::NoCertificate { key, path } => write!(
                f,
                "{key}: {}: no certificate found: give a PEM file with BEGIN CERTIFICATE blocks",
                path.display()
            ),
            TlsError::NoKey { key, path } => write!(
                f,
                "{key}: {}: no private key found: give an unencrypted PEM key (PKCS#8, RSA or EC)",
                path.display()
            ),
            TlsError::BadKey { path, reason } => {
                write!(f, "tls_key: {}: unusable key: {reason}", path.display())
            }
            TlsError::BadCertificate { key, path, reason } => {
                write!(
                    f,
                    "{key}: {}: unusable certificate: {reason}",
                    path.display()
                )
            }
            TlsError::KeyMismatch { key, cert } => write!(
                f,
                "tls_key: {}: key does not match the certificate in tls_cert {}",
                key.display(),
                cert.display()
            ),
            TlsError::Config(reason) => write!(f, "tls: cannot build config: {reason}"),
        }
    }
}

impl std::error::Error for TlsError {}

/// The crypto provider for every config: ring, never a process default.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Maps a PEM reading error to Read (I/O) or Pem (syntax) for the file behind `key`.
fn pem_error(key: &'static str, path: &Path, e: pem::Error) -> TlsError {
    match e {
        pem::Error::Io(io) => TlsError::Read {
            key,
            path: path.to_path_buf(),
            reason: io.to_string(),
        },
        other => TlsError::Pem {
            key,
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    }
}

/// Reads every certificate of a PEM file, refusing a file without any.
pub(crate) fn load_certs(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| pem_error(key, path, e))?;
    let certs = iter
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(key, path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            key,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 RSA or SEC1 EC) of a PEM file; `key` names
/// the config key of the file in errors.
pub(crate) fn load_key(key: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    match PrivateKeyDer::from_pem_file(path) {
        Ok(k) => Ok(k),
        Err(pem::Error::NoItemsFound) => Err(TlsError::NoKey {
            key,
            path: path.to_path_buf(),
        }),
        Err(e) => Err(pem_error(key, path, e)),
    }
}

/// Server config from PEM files via rustls::pki_types::pem::PemObject
/// (CertificateDer::pem_file_iter, PrivateKeyDer::from_pem_file): PKCS#8, RSA (PKCS#1) and
/// SEC1 EC keys; TLS 1.2 + 1.3; ring provider. Checks that the key matches the leaf
/// certificate (CertifiedKey::keys_match compares the SubjectPublicKeyInfo), so a wrong
/// key fails at load time instead of at the first handshake.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = load_certs("tls_cert", cert)?;
    let key_der = load_key("tls_key", key)?;
    let provider = provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| TlsError::BadKey {
            path: key.to_path_buf(),
            reason: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            // Mismatch, or a key whose public half ring cannot derive (also refused: we
            // cannot prove it belongs to the certificate).
            return Err(TlsError::KeyMismatch {
                key: key.to_path_buf(),
                cert: cert.to_path_buf(),
            });
        }
        Err(e) => {
            return Err(TlsError::BadCertificate {
                key: "tls_cert",
                path: cert.to_path_buf(),
                reason: e.to_string(),
            })
        }
    }
    let cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    Ok(Arc::new(cfg))
}

/// Holds the current server config; SIGHUP handling calls reload(); a failed reload keeps
/// the old one (and returns the error for the log).
pub struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    /// Loads the certificate chain and key; fails like [`server_config`].
    pub fn load(cert: &Path, key: &Path) -> Result<ServerTls, TlsError> {
        let cfg = server_config(cert, key)?;
        Ok(ServerTls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(cfg),
        })
    }

    /// The config to use for the next handshake.
    pub fn current(&self) -> Arc<ServerConfig> {
        // A poisoned lock only means a writer panicked; the Arc inside is still whole.
        match self.current.read() {
            Ok(g) => Arc::clone(&g),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    /// Re-reads the same files. On error the previous config stays in use; connections
    /// already running keep the config they started with.
    pub fn reload(&self) -> Result<(), TlsError> {
        let cfg = server_config(&self.cert, &self.key)?;
        match self.current.write() {
            Ok(mut g) => *g = cfg,
            Err(p) => *p.into_inner() = cfg,
        }
        Ok(())
    }
}

/// Accepts only a leaf whose SHA-256 equals the pin. Name, chain and expiry are not checked:
/// the pin names this exact certificate (the usual way to trust a self-signed LAN relay).
/// Handshake signatures are still verified, so the peer must hold the certificate's key.
#[derive(Debug)]
struct PinnedVerifier {
    pin: [u8; 32],
    algs: WebPkiSupportedAlgorithms,
}

/// Accepts any certificate (tls_verify = no) but still verifies handshake signatures.
#[derive(Debug)]
struct AnyCertVerifier {
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if fingerprint(end_entity) == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "certificate fingerprint {} does not match tls_fingerprint {}",
                format_fingerprint(&fingerprint(end_entity)),
                format_fingerprint(&self.pin)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

impl ServerCertVerifier for AnyCertVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Client config for the smarthost. In order of precedence:
/// `fingerprint` Some → pin: accept only a leaf whose SHA-256 of the DER equals it (even
/// when `verify` is false: the pin is the stronger statement); `verify=false` → accept any
/// certificate (logged loudly by the caller); `ca_file` → verify chain and name against that
/// PEM bundle only; else against webpki_roots::TLS_SERVER_ROOTS.
/// Handshake signatures are verified with the ring provider's algorithms in every case.
pub fn client_config(
    verify: bool,
    ca_file: Option<&Path>,
    fingerprint: Option<[u8; 32]>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let algs = provider.signature_verification_algorithms;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let cfg = if let Some(pin) = fingerprint {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier { pin, algs }))
            .with_no_client_auth()
    } else if !verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertVerifier { algs }))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        match ca_file {
            Some(path) => {
                let certs = load_certs("ca_file", path)?;
                // Lenient like OpenSSL: a system bundle may hold a few certificates webpki
                // cannot parse; refuse only when none is usable.
                let (added, _ignored) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(TlsError::BadCertificate {
                        key: "ca_file",
                        path: path.to_path_buf(),
                        reason: "no certificate usable as a trust anchor".to_string(),
                    });
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(Arc::new(cfg))
}

/// SHA-256 of a DER certificate, computed with the ring provider's hash (ring itself is not
/// a direct dependency).
pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    let hash = match rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256 {
        rustls::SupportedCipherSuite::Tls13(s) => s.common.hash_provider,
        rustls::SupportedCipherSuite::Tls12(s) => s.common.hash_provider,
    };
    let out = hash.hash(der);
    let mut fp = [0u8; 32];
    let bytes = out.as_ref();
    if bytes.len() == fp.len() {
        fp.copy_from_slice(bytes);
    }
    fp
}

/// Formats a fingerprint as "sha256:" and 64 lowercase hex digits, the tls_fingerprint syntax.
pub fn format_fingerprint(fp: &[u8; 32]) -> String {
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in fp {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A connection that is plain or TLS, for server and client alike; implements Read + Write.
pub enum Stream {
    /// Plain TCP (before STARTTLS, or tls = none).
    Plain(TcpStream),
    /// The server side of a TLS connection.
    Server(Box<StreamOwned<ServerConnection, DeadlineSocket>>),
    /// The client side of a TLS connection (to the smarthost).
    Client(Box<StreamOwned<ClientConnection, DeadlineSocket>>),
}

/// DeadlineSocket is a socket whose read and write timeouts are set, before every call, to the
/// time left until a deadline, so a peer trickling one byte at a time cannot stretch the
/// exchange. Under TLS a timeout per socket read bounds nothing: one read of a TLS stream reads
/// the socket again and again until a whole record (up to 16 KiB) is in and decrypted.
pub struct DeadlineSocket {
    /// The socket.
    pub tcp: TcpStream,
    /// When every read must be over; None leaves the socket's own read timeout in force.
    pub read_by: Option<Instant>,
    /// When every write must be over; None leaves the socket's own write timeout in force.
    pub write_by: Option<Instant>,
}

impl DeadlineSocket {
    /// new bounds reads and writes alike by `deadline` (a handshake, an HTTP exchange).
    pub fn new(tcp: TcpStream, deadline: Instant) -> DeadlineSocket {
        DeadlineSocket {
            tcp,
            read_by: Some(deadline),
            write_by: Some(deadline),
        }
    }
}

/// left returns the time until `by`; TimedOut once it has passed.
fn left(by: Instant) -> io::Result<Duration> {
    let left = by.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
    }
    Ok(left)
}

impl Read for DeadlineSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(by) = self.read_by {
            self.tcp.set_read_timeout(Some(left(by)?))?;
        }
        self.tcp.read(buf)
    }
}

impl Write for DeadlineSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(by) = self.write_by {
            self.tcp.set_write_timeout(Some(left(by)?))?;
        }
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

/// Runs the handshake to the end now, so a failure surfaces at the call. Bounded by the
/// transport's timeouts (a timeout comes back as TimedOut): every caller passes a
/// DeadlineSocket, so the whole handshake ends by one deadline (Stream, oauth::http).
pub(crate) fn handshake<S: rustls::SideData, T: Read + Write>(
    conn: &mut rustls::ConnectionCommon<S>,
    tcp: &mut T,
) -> io::Result<()> {
    while conn.is_handshaking() {
        let (read, written) = conn.complete_io(tcp).map_err(|e| match e.kind() {
            // A blocking socket whose read timeout expired reports WouldBlock (EAGAIN).
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
                io::ErrorKind::TimedOut,
                "timed out during the TLS handshake",
            ),
            _ => e,
        })?;
        if read == 0 && written == 0 && conn.is_handshaking() {
            // complete_io returns Ok((0, 0)) on EOF; without this check we would spin.
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "peer closed the connection during the TLS handshake",
            ));
        }
    }
    // Flush what the handshake left queued (e.g. TLS 1.3 session tickets) so it is not held
    // back until our first write.
    while conn.wants_write() {
        conn.write_tls(tcp)?;
    }
    tcp.flush()
}

/// The name OpenSSL and Postfix use, e.g. "TLSv1.3".
fn version_name(v: rustls::ProtocolVersion) -> String {
    match v {
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".to_string(),
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_string(),
        other => format!("{other:?}"),
    }
}

impl Stream {
    /// The underlying socket: for set_read_timeout / peer_addr / shutdown.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(t) => t,
            Stream::Server(s) => &s.get_ref().tcp,
            Stream::Client(s) => &s.get_ref().tcp,
        }
    }

    /// set_read_deadline bounds every later read of a TLS stream by `deadline`, however many
    /// socket reads rustls makes for it (None: only the socket's read timeout, per socket
    /// read). A plain stream's read is one socket read, which the socket's read timeout
    /// bounds already: there this changes nothing.
    pub fn set_read_deadline(&mut self, deadline: Option<Instant>) {
        match self {
            Stream::Plain(_) => {}
            Stream::Server(s) => s.get_mut().read_by = deadline,
            Stream::Client(s) => s.get_mut().read_by = deadline,
        }
    }

    /// True once TLS is established.
    pub fn is_tls(&self) -> bool {
        !matches!(self, Stream::Plain(_))
    }

    /// "TLSv1.3 TLS13_AES_256_GCM_SHA384" for the Received header; None when plain.
    pub fn tls_info(&self) -> Option<String> {
        let common: &rustls::CommonState = match self {
            Stream::Plain(_) => return None,
            Stream::Server(s) => &s.conn,
            Stream::Client(s) => &s.conn,
        };
        let version = common.protocol_version().map(version_name)?;
        let suite = common.negotiated_cipher_suite()?.suite();
        let suite = match suite.as_str() {
            Some(name) => name.to_string(),
            None => format!("{suite:?}"),
        };
        Some(format!("{version} {suite}"))
    }

    /// The DER of the peer's leaf certificate (the smarthost's, on a client stream); None
    /// when plain or when the peer sent none (a server's client never does here).
    pub fn peer_certificate(&self) -> Option<Vec<u8>> {
        let common: &rustls::CommonState = match self {
            Stream::Plain(_) => return None,
            Stream::Server(s) => &s.conn,
            Stream::Client(s) => &s.conn,
        };
        common
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec())
    }

    /// The peer's leaf certificate fingerprint (for probe and error messages).
    pub fn peer_fingerprint(&self) -> Option<[u8; 32]> {
        self.peer_certificate().map(|der| fingerprint(&der))
    }

    /// Upgrades a plain stream to the server side of TLS: runs the whole handshake now
    /// (complete_io loop) so errors surface here; TimedOut when it is not over by `deadline`.
    ///
    /// STARTTLS (RFC 3207 section 4.2, CVE-2011-0411): only the TcpStream is taken over.
    /// The caller must DROP any plaintext it has buffered after the STARTTLS line before
    /// calling this; bytes read from the socket before the handshake must never be
    /// interpreted as commands after it (command injection).
    pub fn accept_tls(
        self,
        cfg: Arc<ServerConfig>,
        deadline: Instant,
    ) -> Result<Stream, io::Error> {
        let tcp = match self {
            Stream::Plain(t) => t,
            _ => return Err(already_tls()),
        };
        let mut conn = ServerConnection::new(cfg).map_err(io::Error::other)?;
        // The whole handshake within `deadline`: a client trickling its ClientHello one byte
        // at a time must not hold a worker for a read timeout per byte.
        let mut sock = DeadlineSocket::new(tcp, deadline);
        handshake(&mut conn, &mut sock)?;
        // From here on the session bounds its reads (set_read_deadline) and its writes (the
        // socket's write timeout) itself.
        sock.read_by = None;
        sock.write_by = None;
        Ok(Stream::Server(Box::new(StreamOwned::new(conn, sock))))
    }

    /// Upgrades a plain stream to the client side of TLS, sending `server_name` as SNI and
    /// verifying the certificate for it (a host name or an IP address literal). The handshake
    /// runs now so certificate errors surface here, and must be over by `deadline` (a server
    /// trickling its handshake a byte at a time would otherwise hold us for a read timeout per
    /// byte): TimedOut when it is not. The socket's timeouts are as they were afterwards. The
    /// same STARTTLS rule as accept_tls holds: the caller drops any buffered plaintext first.
    pub fn connect_tls(
        self,
        cfg: Arc<ClientConfig>,
        server_name: &str,
        deadline: Instant,
    ) -> Result<Stream, io::Error> {
        let tcp = match self {
            Stream::Plain(t) => t,
            _ => return Err(already_tls()),
        };
        let name = ServerName::try_from(server_name.to_string()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid TLS server name {server_name:?}"),
            )
        })?;
        let mut conn = ClientConnection::new(cfg, name).map_err(io::Error::other)?;
        let timeouts = (tcp.read_timeout()?, tcp.write_timeout()?);
        let mut sock = DeadlineSocket::new(tcp, deadline);
        handshake(&mut conn, &mut sock)?;
        sock.read_by = None;
        sock.write_by = None;
        sock.tcp.set_read_timeout(timeouts.0)?;
        sock.tcp.set_write_timeout(timeouts.1)?;
        Ok(Stream::Client(Box::new(StreamOwned::new(conn, sock))))
    }
}

/// The error for upgrading a stream twice.
fn already_tls() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "stream is already TLS")
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(t) => t.read(buf),
            Stream::Server(s) => s.read(buf),
            Stream::Client(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(t) => t.write(buf),
            Stream::Server(s) => s.write(buf),
            Stream::Client(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(t) => t.flush(),
            Stream::Server(s) => s.flush(),
            Stream::Client(s) => s.flush(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;
    use std::process::Command;
    use std::sync::OnceLock;
    use std::time::Duration;

    /// Shell script (run with `sh -c` inside an empty directory) that writes throwaway test
    /// certificates with the openssl CLI. The black-box tests use the same commands.
    ///   ca.pem/ca.key            test CA
    ///   rsa.pem + rsa.key        RSA 2048 leaf for localhost + 127.0.0.1 signed by the CA, PKCS#8
    ///   rsa-pkcs1.key            the same key as "BEGIN RSA PRIVATE KEY" (PKCS#1)
    ///   rsa-chain.pem            rsa.pem followed by ca.pem
    ///   ec.pem + ec.key          EC P-256 leaf for localhost + 127.0.0.1 signed by the CA, PKCS#8
    ///   ec-sec1.key              the same key as "BEGIN EC PRIVATE KEY" (SEC1)
    ///   self.pem + self.key      self-signed EC P-256 cert for localhost + 127.0.0.1
    pub(crate) const GEN_CERTS_SH: &str = r#"set -e
exec 2>openssl.log
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 3650 \
  -subj "/CN=picorelay test CA" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
printf '%s\n' basicConstraints=CA:FALSE keyUsage=critical,digitalSignature,keyEncipherment \
  extendedKeyUsage=serverAuth subjectAltName=DNS:localhost,IP:127.0.0.1 > leaf.ext
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa.key
openssl pkey -in rsa.key -traditional -out rsa-pkcs1.key
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ec.key
openssl pkey -in ec.key -traditional -out ec-sec1.key
for k in rsa ec; do
  openssl req -new -key $k.key -subj /CN=localhost -out $k.csr
  openssl x509 -req -in $k.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
    -extfile leaf.ext -out $k.pem
done
cat rsa.pem ca.pem > rsa-chain.pem
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out self.key
openssl req -new -key self.key -subj /CN=localhost -out self.csr
openssl x509 -req -in self.csr -signkey self.key -days 3650 -extfile leaf.ext -out self.pem
"#;

    /// Runs GEN_CERTS_SH in a fresh unique directory and returns it.
    /// far is a handshake deadline no test reaches.
    pub(crate) fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    pub(crate) fn gen_certs(tag: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("picorelay-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let st = Command::new("sh")
            .arg("-c")
            .arg(GEN_CERTS_SH)
            .current_dir(&dir)
            .status()
            .unwrap();
        assert!(st.success(), "openssl failed: see {}", dir.display());
        dir
    }

    /// One set of certificates shared by all tests of this process (key generation is slow).
    fn certs() -> &'static Path {
        static DIR: OnceLock<PathBuf> = OnceLock::new();
        DIR.get_or_init(|| gen_certs("tls-test"))
    }

    fn p(name: &str) -> PathBuf {
        certs().join(name)
    }

    fn client_cfg_ca() -> Arc<ClientConfig> {
        client_config(true, Some(&p("ca.pem")), None).unwrap()
    }

    fn cert_der(name: &str) -> Vec<u8> {
        let c = CertificateDer::pem_file_iter(p(name))
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        c.as_ref().to_vec()
    }

    /// What the client side of `exchange` saw: (tls_info, peer leaf DER).
    type ClientSeen = io::Result<(String, Vec<u8>)>;

    /// A STARTTLS-shaped exchange over loopback: a plaintext line, then both sides upgrade,
    /// then one line each way inside TLS. Returns (client result, server result) where a
    /// success carries (tls_info, peer leaf DER seen by the client).
    fn exchange(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        name: &str,
    ) -> (ClientSeen, io::Result<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let srv = std::thread::spawn(move || -> Result<String, io::Error> {
            let (tcp, _) = listener.accept()?;
            tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut plain = BufReader::new(tcp);
            let mut line = String::new();
            plain.read_line(&mut line)?;
            assert_eq!(line, "STARTTLS\r\n");
            // CVE-2011-0411: the plaintext buffer is dropped, only the socket goes on.
            let mut tcp = plain.into_inner();
            tcp.write_all(b"220 go ahead\r\n")?;
            let mut s = Stream::Plain(tcp).accept_tls(server, far())?;
            assert!(s.is_tls());
            let info = s.tls_info().unwrap_or_default();
            let mut r = BufReader::new(&mut s);
            let mut l = String::new();
            r.read_line(&mut l)?;
            assert_eq!(l, "ping\r\n");
            s.write_all(b"pong\r\n")?;
            s.flush()?;
            Ok(info)
        });
        let cli = (|| -> ClientSeen {
            let mut tcp = TcpStream::connect(addr)?;
            tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
            tcp.write_all(b"STARTTLS\r\n")?;
            let mut buf = [0u8; 14];
            tcp.read_exact(&mut buf)?;
            assert_eq!(&buf, b"220 go ahead\r\n");
            let mut s = Stream::Plain(tcp).connect_tls(client, name, far())?;
            s.write_all(b"ping\r\n")?;
            s.flush()?;
            let mut l = String::new();
            BufReader::new(&mut s).read_line(&mut l)?;
            assert_eq!(l, "pong\r\n");
            let der = s.peer_certificate().unwrap_or_default();
            assert_eq!(s.peer_fingerprint(), Some(fingerprint(&der)));
            Ok((s.tls_info().unwrap_or_default(), der))
        })();
        if cli.is_err() {
            // Unblock the server if the client gave up before its handshake started.
            let _ = TcpStream::connect(addr);
        }
        let srv = srv.join().unwrap();
        (cli, srv)
    }

    #[test]
    fn key_formats_and_trust_via_ca_file() {
        // (cert, key, server name)
        let cases = [
            ("rsa.pem", "rsa.key", "localhost"),
            ("rsa.pem", "rsa-pkcs1.key", "localhost"),
            ("rsa-chain.pem", "rsa.key", "127.0.0.1"),
            ("ec.pem", "ec.key", "localhost"),
            ("ec.pem", "ec-sec1.key", "127.0.0.1"),
        ];
        let headers = [
            ("rsa.key", "BEGIN PRIVATE KEY"),
            ("rsa-pkcs1.key", "BEGIN RSA PRIVATE KEY"),
            ("ec.key", "BEGIN PRIVATE KEY"),
            ("ec-sec1.key", "BEGIN EC PRIVATE KEY"),
        ];
        for (file, header) in headers {
            let text = std::fs::read_to_string(p(file)).unwrap();
            assert!(text.contains(header), "{file} lacks {header}");
        }
        for (cert, key, name) in cases {
            let scfg = server_config(&p(cert), &p(key)).unwrap();
            let (cli, srv) = exchange(scfg, client_cfg_ca(), name);
            let (info, der) = cli.unwrap_or_else(|e| panic!("{cert} {key} {name}: {e}"));
            assert_eq!(info, srv.unwrap());
            assert!(info.starts_with("TLSv1.3 TLS13_"), "{info}");
            assert_eq!(der, cert_der(cert), "{cert}");
        }
    }

    #[test]
    fn tls12_info() {
        let provider = provider();
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(cert_der("ca.pem"))).unwrap();
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        for (cert, key, suite) in [
            ("rsa.pem", "rsa.key", "TLSv1.2 TLS_ECDHE_RSA_WITH_"),
            ("ec.pem", "ec.key", "TLSv1.2 TLS_ECDHE_ECDSA_WITH_"),
        ] {
            let scfg = server_config(&p(cert), &p(key)).unwrap();
            let (cli, srv) = exchange(scfg, Arc::new(client.clone()), "localhost");
            let (info, _) = cli.unwrap();
            assert!(info.starts_with(suite), "{info}");
            assert_eq!(info, srv.unwrap());
        }
    }

    #[test]
    fn verification_outcomes() {
        let pin_rsa = fingerprint(&cert_der("rsa.pem"));
        let pin_self = fingerprint(&cert_der("self.pem"));
        // (name, server cert, key, client: verify, ca_file, pin, sni, want ok, error fragment)
        type Case<'a> = (
            &'a str,
            &'a str,
            &'a str,
            bool,
            Option<&'a str>,
            Option<[u8; 32]>,
            &'a str,
            bool,
            &'a str,
        );
        let cases: [Case; 9] = [
            (
                "ca ok",
                "rsa.pem",
                "rsa.key",
                true,
                Some("ca.pem"),
                None,
                "localhost",
                true,
                "",
            ),
            (
                "untrusted self-signed",
                "self.pem",
                "self.key",
                true,
                Some("ca.pem"),
                None,
                "localhost",
                false,
                "UnknownIssuer",
            ),
            (
                "self-signed not in web pki",
                "self.pem",
                "self.key",
                true,
                None,
                None,
                "localhost",
                false,
                "invalid peer certificate",
            ),
            (
                "wrong host name",
                "rsa.pem",
                "rsa.key",
                true,
                Some("ca.pem"),
                None,
                "mail.example.com",
                false,
                "not valid for name",
            ),
            (
                "pin ok self-signed",
                "self.pem",
                "self.key",
                true,
                None,
                Some(pin_self),
                "anything.invalid",
                true,
                "",
            ),
            (
                "pin ok with verify off",
                "rsa.pem",
                "rsa.key",
                false,
                None,
                Some(pin_rsa),
                "localhost",
                true,
                "",
            ),
            (
                "wrong pin",
                "self.pem",
                "self.key",
                true,
                Some("ca.pem"),
                Some(pin_rsa),
                "localhost",
                false,
                "does not match tls_fingerprint",
            ),
            (
                "wrong pin verify off",
                "rsa.pem",
                "rsa.key",
                false,
                None,
                Some(pin_self),
                "localhost",
                false,
                "does not match tls_fingerprint",
            ),
            (
                "verify off",
                "self.pem",
                "self.key",
                false,
                None,
                None,
                "other.example",
                true,
                "",
            ),
        ];
        for (what, cert, key, verify, ca, pin, sni, ok, frag) in cases {
            let ca_path = ca.map(p);
            let ccfg = client_config(verify, ca_path.as_deref(), pin).unwrap();
            let scfg = server_config(&p(cert), &p(key)).unwrap();
            let (cli, srv) = exchange(scfg, ccfg, sni);
            match cli {
                Ok((_, der)) => {
                    assert!(ok, "{what}: accepted");
                    assert_eq!(der, cert_der(cert), "{what}");
                    assert!(srv.is_ok(), "{what}: server {srv:?}");
                }
                Err(e) => {
                    assert!(!ok, "{what}: refused: {e}");
                    assert!(e.to_string().contains(frag), "{what}: {e}");
                    assert!(srv.is_err(), "{what}: server saw success");
                }
            }
        }
    }

    #[test]
    fn load_errors() {
        let dir = certs().join("bad");
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, b"").unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(
            &garbage,
            b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let missing = dir.join("missing.pem");
        let enc = dir.join("enc.key");
        let st = Command::new("openssl")
            .args(["pkey", "-aes256", "-passout", "pass:x", "-in"])
            .arg(p("ec.key"))
            .arg("-out")
            .arg(&enc)
            .status()
            .unwrap();
        assert!(st.success());
        // (cert, key, expected message)
        let cases: Vec<(PathBuf, PathBuf, String)> = vec![
            (
                missing.clone(),
                p("rsa.key"),
                format!("tls_cert: {}: cannot read: No such file", missing.display()),
            ),
            (
                p("rsa.pem"),
                missing.clone(),
                format!("tls_key: {}: cannot read: No such file", missing.display()),
            ),
            (
                empty.clone(),
                p("rsa.key"),
                format!("tls_cert: {}: no certificate found", empty.display()),
            ),
            (
                p("rsa.key"),
                p("rsa.key"),
                format!("tls_cert: {}: no certificate found", p("rsa.key").display()),
            ),
            (
                garbage.clone(),
                p("rsa.key"),
                format!("tls_cert: {}: bad PEM", garbage.display()),
            ),
            (
                p("rsa.pem"),
                p("rsa.pem"),
                format!("tls_key: {}: no private key found", p("rsa.pem").display()),
            ),
            (
                p("ec.pem"),
                enc.clone(),
                format!("tls_key: {}: no private key found", enc.display()),
            ),
            (
                p("rsa.pem"),
                p("ec.key"),
                format!(
                    "tls_key: {}: key does not match the certificate in tls_cert {}",
                    p("ec.key").display(),
                    p("rsa.pem").display()
                ),
            ),
            (
                p("ec.pem"),
                p("self.key"),
                format!(
                    "tls_key: {}: key does not match the certificate in tls_cert {}",
                    p("self.key").display(),
                    p("ec.pem").display()
                ),
            ),
            (p("rsa-chain.pem"), p("rsa-pkcs1.key"), String::new()),
        ];
        for (cert, key, want) in cases {
            match server_config(&cert, &key) {
                Ok(_) => assert!(
                    want.is_empty(),
                    "{} {}: loaded",
                    cert.display(),
                    key.display()
                ),
                Err(e) => assert!(
                    !want.is_empty() && e.to_string().starts_with(&want),
                    "got {e:?} / {e}, want {want}"
                ),
            }
        }
        // ca_file problems.
        let e = client_config(true, Some(&missing), None).unwrap_err();
        assert!(e.to_string().starts_with("ca_file: "), "{e}");
        let e = client_config(true, Some(&empty), None).unwrap_err();
        assert!(e.to_string().contains("no certificate found"), "{e}");
        assert!(client_config(true, None, None).is_ok());
    }

    #[test]
    fn reload_keeps_old_config_on_failure() {
        let dir = certs().join("reload");
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("live.pem"), dir.join("live.key"));
        std::fs::copy(p("rsa.pem"), &cert).unwrap();
        std::fs::copy(p("rsa.key"), &key).unwrap();
        let tls = ServerTls::load(&cert, &key).unwrap();
        let first = tls.current();

        // A half-done renewal: new key, old certificate.
        std::fs::copy(p("ec.key"), &key).unwrap();
        let e = tls.reload().unwrap_err();
        assert!(matches!(e, TlsError::KeyMismatch { .. }), "{e}");
        assert!(Arc::ptr_eq(&first, &tls.current()));
        let (cli, _) = exchange(tls.current(), client_cfg_ca(), "localhost");
        assert_eq!(cli.unwrap().1, cert_der("rsa.pem"));

        // Renewal finished.
        std::fs::copy(p("ec.pem"), &cert).unwrap();
        tls.reload().unwrap();
        assert!(!Arc::ptr_eq(&first, &tls.current()));
        let (cli, _) = exchange(tls.current(), client_cfg_ca(), "localhost");
        assert_eq!(cli.unwrap().1, cert_der("ec.pem"));

        // Files gone: still serving the last good config.
        std::fs::remove_file(&cert).unwrap();
        assert!(matches!(tls.reload(), Err(TlsError::Read { .. })));
        let (cli, _) = exchange(tls.current(), client_cfg_ca(), "localhost");
        assert_eq!(cli.unwrap().1, cert_der("ec.pem"));
    }

    #[test]
    fn fingerprints() {
        let cases: [(&[u8], &str); 2] = [
            (
                b"",
                "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
            (
                b"abc",
                "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(format_fingerprint(&fingerprint(input)), want);
        }
        // Same value as `openssl x509 -fingerprint -sha256`.
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(p("rsa.pem"))
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let hex: String = text
            .trim()
            .rsplit('=')
            .next()
            .unwrap()
            .replace(':', "")
            .to_lowercase();
        assert_eq!(
            format_fingerprint(&fingerprint(&cert_der("rsa.pem"))),
            format!("sha256:{hex}")
        );
    }

    #[test]
    fn plain_stream_eof_timeout_and_bad_name() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let pair = || {
            let c = TcpStream::connect(addr).unwrap();
            let (s, _) = listener.accept().unwrap();
            (Stream::Plain(s), Stream::Plain(c))
        };
        let scfg = server_config(&p("ec.pem"), &p("ec.key")).unwrap();

        let (mut server_side, mut client_side) = pair();
        assert!(!client_side.is_tls());
        assert_eq!(client_side.tls_info(), None);
        assert_eq!(client_side.peer_certificate(), None);
        client_side.write_all(b"hi").unwrap();
        let mut buf = [0u8; 2];
        server_side.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        assert_eq!(server_side.tcp().local_addr().unwrap(), addr);
        // Peer closes during the handshake: an error, not a hang.
        drop(client_side);
        let e = server_side.accept_tls(scfg.clone(), far()).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");

        // Silent peer: the deadline bounds the whole handshake.
        let (server_side, _client_side) = pair();
        let deadline = Instant::now() + Duration::from_millis(200);
        let e = server_side
            .accept_tls(scfg.clone(), deadline)
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");

        // A peer trickling its ClientHello a byte at a time cannot stretch it past the deadline.
        let (server_side, mut client_side) = pair();
        let trickler = std::thread::spawn(move || {
            for b in [0x16u8, 0x03, 0x01, 0x00, 0x40].iter().cycle().take(40) {
                if client_side.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        // (Without the deadline it would end when the trickler gives up: EOF, not a timeout.)
        let deadline = Instant::now() + Duration::from_millis(300);
        let e = server_side.accept_tls(scfg, deadline).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        let _ = trickler.join();

        // A bad server name is refused before any I/O.
        let (_server_side, client_side) = pair();
        let e = client_side
            .connect_tls(client_cfg_ca(), "bad name!", far())
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
    }
}
