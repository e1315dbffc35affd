//! A TLS client that can hand out the records it would send instead of sending them, so a
//! test can write a record a byte at a time: a client trickling inside TLS, where the relay
//! sees no plaintext until the whole record is in.

use super::certs::certs;
use super::{Heard, DEADLINE};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// test_ca_roots is a root store holding the test CA only.
pub fn test_ca_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&certs().ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    roots
}

/// config trusts the test CA only.
pub fn config() -> Arc<ClientConfig> {
    static CFG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    Arc::clone(CFG.get_or_init(|| {
        let roots = test_ca_roots();
        let cfg =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        Arc::new(cfg)
    }))
}

/// TlsClient speaks SMTP over TLS to a relay using the test certificate ("localhost").
pub struct TlsClient {
    /// The socket: a test writes trickled records to a clone of it.
    pub tcp: TcpStream,
    conn: ClientConnection,
    /// Plaintext received and not yet returned as lines.
    buf: Vec<u8>,
}

impl TlsClient {
    /// handshake runs the whole TLS handshake on a connected socket (implicit TLS, or after
    /// the relay's 220 to STARTTLS with nothing buffered past it).
    pub fn handshake(mut tcp: TcpStream) -> TlsClient {
        tcp.set_read_timeout(Some(DEADLINE)).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut conn = ClientConnection::new(config(), name).unwrap();
        while conn.is_handshaking() {
            let (r, w) = conn.complete_io(&mut tcp).expect("TLS handshake");
            assert!(r + w > 0 || !conn.is_handshaking(), "EOF in TLS handshake");
        }
        TlsClient {
            tcp,
            conn,
            buf: Vec::new(),
        }
    }

    /// records returns the TLS records that carry `data`, for the caller to send.
    pub fn records(&mut self, data: &[u8]) -> Vec<u8> {
        self.conn.writer().write_all(data).unwrap();
        let mut out = Vec::new();
        while self.conn.wants_write() {
            self.conn.write_tls(&mut out).unwrap();
        }
        out
    }

    /// send writes `data` in TLS records at once.
    pub fn send(&mut self, data: &[u8]) {
        let records = self.records(data);
        self.tcp.write_all(&records).expect("send over TLS");
    }

    /// hear reads one line within `wait`, like Client::hear: a line, the close (with or
    /// without close_notify, or a reset), or silence.
    pub fn hear(&mut self, wait: Duration) -> Heard {
        let until = Instant::now() + wait;
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                let line = String::from_utf8_lossy(&line);
                return Heard::Line(line.trim_end_matches(['\r', '\n']).to_string());
            }
            let mut chunk = [0u8; 4096];
            match self.conn.reader().read(&mut chunk) {
                Ok(0) => return Heard::Closed, // close_notify
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    continue;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => return Heard::Closed,
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Heard::Silence;
            }
            self.tcp.set_read_timeout(Some(left)).unwrap();
            match self.conn.read_tls(&mut self.tcp) {
                Ok(0) => return Heard::Closed,
                Ok(_) => {
                    if self.conn.process_new_packets().is_err() {
                        return Heard::Closed;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Heard::Silence
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Heard::Closed,
            }
        }
    }

    /// reply reads one (possibly multi-line) reply within DEADLINE and returns its last line.
    pub fn reply(&mut self) -> String {
        loop {
            match self.hear(DEADLINE) {
                Heard::Line(l) if l.len() < 4 || l.as_bytes()[3] == b' ' => return l,
                Heard::Line(_) => continue,
                other => panic!("waiting for a reply over TLS: {other:?}"),
            }
        }
    }

    /// expect sends a line and asserts the reply starts with `prefix`.
    pub fn expect(&mut self, line: &str, prefix: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        let r = self.reply();
        assert!(
            r.starts_with(prefix),
            "{line:?} over TLS: expected {prefix:?}, got {r:?}"
        );
        r
    }
}
