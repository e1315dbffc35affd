//! Builds a TLS client on the webpki roots and, given a certificate and key,
//! a TLS server, and drives one connection of each, so that the linker keeps
//! every part picorelay uses. Usage: floor [CERT.pem KEY.pem HOST:PORT].
use std::io::{Read, Write};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let client = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = "example.com".try_into().expect("server name");
    let mut c = rustls::ClientConnection::new(Arc::new(client), name).expect("client");
    if let [_, cert, key, addr] = args.as_slice() {
        let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(cert)
            .expect("certificate file")
            .filter_map(Result::ok)
            .collect();
        let key = PrivateKeyDer::from_pem_file(key).expect("key file");
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("certificate and key");
        let mut s = rustls::ServerConnection::new(Arc::new(server)).expect("server");
        if let Ok(mut t) = std::net::TcpStream::connect(addr) {
            let _ = rustls::Stream::new(&mut s, &mut t).write_all(b"220 floor\r\n");
        }
    }
    if let Ok(mut t) = std::net::TcpStream::connect("127.0.0.1:1") {
        let mut buf = [0u8; 16];
        let _ = rustls::Stream::new(&mut c, &mut t).read(&mut buf);
    }
}
