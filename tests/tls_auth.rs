//! Black-box tests of issue 3: STARTTLS, implicit TLS, AUTH PLAIN/LOGIN, the
//! brute-force brake, require_tls and auth modes, certificate reload, and real
//! clients (swaks, msmtp, curl, Python smtplib) delivering into the spool.
//!
//! 127.0.0.2 plays a LAN device (a network client); 127.0.0.1 is a local client.

mod common;

use common::certs::{certs, passwd};
use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// alice: `openssl passwd -6`; a password with ':' (the PLAIN/curl separator) and non-ASCII.
const ALICE_PW: &str = "pa:ss wörd";
/// bob: `openssl passwd -5`; also ':' and non-ASCII.
const BOB_PW: &str = "b0b:ünïcødé";
/// py: Python's smtplib encodes AUTH responses as ASCII, so its user has an
/// ASCII password (still with ':' and a space).
const PY_PW: &str = "py:thon pass";

/// The `[users]` section, hashed once per process by `openssl passwd`.
fn users_section() -> &'static str {
    static USERS: OnceLock<String> = OnceLock::new();
    USERS.get_or_init(|| {
        format!(
            "[users]\nalice = {}\nbob = {}\npy = {}\n",
            passwd("6", ALICE_PW),
            passwd("5", BOB_PW),
            passwd("6", PY_PW)
        )
    })
}

/// tls_relay starts a relay with the test certificate, the users, and
/// relay_networks = 127.0.0.1/32 (so 127.0.0.2 may relay only after AUTH);
/// `extra` overrides.
fn tls_relay(extra: &str) -> Relay {
    let c = certs();
    tls_relay_with(&c.cert, &c.key, extra)
}

fn tls_relay_with(cert: &Path, key: &Path, extra: &str) -> Relay {
    Relay::start(&format!(
        "[server]\ntls_cert = {}\ntls_key = {}\nrelay_networks = 127.0.0.1/32\n{}{extra}",
        cert.display(),
        key.display(),
        users_section()
    ))
}

/// lan connects from 127.0.0.2, a network client.
fn lan(addr: SocketAddr) -> Client {
    Client::from_stream(connect_bound("127.0.0.2", addr))
}

/// plain is the AUTH PLAIN response for user/password (RFC 4616).
fn plain(user: &str, pw: &str) -> String {
    b64(format!("\0{user}\0{pw}").as_bytes())
}

/// assert_no_secrets: no password and no AUTH payload in any log line.
fn assert_no_secrets(relay: &Relay) {
    let log = relay.log_text();
    for (user, pw) in [("alice", ALICE_PW), ("bob", BOB_PW), ("py", PY_PW)] {
        for secret in [
            pw.to_string(),
            b64(pw.as_bytes()),
            plain(user, pw),
            plain(user, "wrong:pässword"),
            "wrong:pässword".to_string(),
            b64(b"wrong:p\xc3\xa4ssword"),
        ] {
            assert!(
                !log.contains(&secret),
                "the log contains a secret {secret:?}:\n{log}"
            );
            let start = secret.chars().take(8).collect::<String>().to_lowercase();
            assert!(
                !log.to_lowercase().contains(&start),
                "the log contains the start of a secret {secret:?}:\n{log}"
            );
        }
    }
}

/// show returns what `queue show ID` prints.
fn show(relay: &Relay, id: &str) -> String {
    let out = relay.cmd(&["queue", "show", id]);
    assert!(out.status.success(), "queue show {id} failed");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The DER of the first certificate in a PEM file.
fn cert_der(path: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(path).unwrap().to_vec()
}

/// Tls is an SMTP client over a rustls client connection that verifies the
/// server as "localhost" against the test CA.
struct Tls {
    s: StreamOwned<ClientConnection, TcpStream>,
    buf: Vec<u8>,
}

impl Tls {
    /// handshake runs the whole TLS handshake on a connected socket.
    fn handshake(tcp: TcpStream) -> Tls {
        Tls::handshake_with(tcp, common::tls::config())
    }

    fn handshake_with(mut tcp: TcpStream, cfg: Arc<ClientConfig>) -> Tls {
        tcp.set_read_timeout(Some(DEADLINE)).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut conn = ClientConnection::new(cfg, name).unwrap();
        while conn.is_handshaking() {
            let (r, w) = conn.complete_io(&mut tcp).expect("TLS handshake");
            assert!(r + w > 0 || !conn.is_handshaking(), "EOF in TLS handshake");
        }
        Tls {
            s: StreamOwned::new(conn, tcp),
            buf: Vec::new(),
        }
    }

    /// starttls asks for STARTTLS on a plain session and upgrades it.
    fn starttls(mut c: Client) -> Tls {
        c.expect("STARTTLS", "220 2.0.0");
        // Nothing is buffered in `c` past the 220: the server waits for our ClientHello.
        Tls::handshake(c.stream.try_clone().unwrap())
    }

    fn version(&self) -> Option<rustls::ProtocolVersion> {
        self.s.conn.protocol_version()
    }

    fn peer_cert(&self) -> Vec<u8> {
        self.s.conn.peer_certificates().unwrap()[0].to_vec()
    }

    fn read_line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return String::from_utf8_lossy(&line)
                    .trim_end_matches(['\r', '\n'])
                    .to_string();
            }
            let mut chunk = [0u8; 4096];
            let n = self.s.read(&mut chunk).expect("read over TLS");
            assert!(n > 0, "connection closed while waiting for a reply");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn read_reply(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let line = self.read_line();
            let last = line.len() < 4 || line.as_bytes()[3] == b' ';
            lines.push(line);
            if last {
                return lines;
            }
        }
    }

    fn reply(&mut self) -> String {
        self.read_reply().pop().unwrap()
    }

    fn send_raw(&mut self, data: &[u8]) {
        self.s.write_all(data).expect("send over TLS");
        self.s.flush().unwrap();
    }

    fn expect(&mut self, line: &str, prefix: &str) -> String {
        self.send_raw(format!("{line}\r\n").as_bytes());
        let r = self.reply();
        assert!(
            r.starts_with(prefix),
            "{line:?}: expected {prefix:?}, got {r:?}"
        );
        r
    }

    /// ehlo says EHLO and returns the reply lines joined.
    fn ehlo(&mut self) -> String {
        self.send_raw(b"EHLO tls.test\r\n");
        let r = self.read_reply();
        assert!(r.last().unwrap().starts_with("250 "), "EHLO: {r:?}");
        r.join("\n")
    }

    fn send_message(&mut self, from: &str, to: &str, body: &str) -> String {
        self.expect(&format!("MAIL FROM:<{from}>"), "250");
        self.expect(&format!("RCPT TO:<{to}>"), "250");
        self.expect("DATA", "354");
        self.send_raw(format!("{body}\r\n.\r\n").as_bytes());
        self.reply()
    }

    /// wait_closed is true when the server closed the connection (with or
    /// without a TLS close_notify).
    fn wait_closed(&mut self) -> bool {
        let mut chunk = [0u8; 256];
        loop {
            match self.s.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) => {
                    return matches!(
                        e.kind(),
                        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                    )
                }
            }
        }
    }
}

#[test]
fn starttls_then_ehlo_over_tls_offers_auth_and_delivers_with_esmtpsa() {
    let relay = tls_relay("");
    let mut c = lan(relay.addr());
    let plain_ehlo = c.greet().join("\n");
    assert!(plain_ehlo.contains("STARTTLS"), "{plain_ehlo}");
    assert!(
        !plain_ehlo.contains("AUTH"),
        "AUTH offered in plaintext to a network client: {plain_ehlo}"
    );
    let mut t = Tls::starttls(c);
    assert_eq!(t.version(), Some(rustls::ProtocolVersion::TLSv1_3));
    // RFC 3207 §4.2: the session starts over; MAIL before EHLO is out of sequence.
    t.expect("MAIL FROM:<a@example.com>", "503 5.5.1");
    let ehlo = t.ehlo();
    assert!(!ehlo.contains("STARTTLS"), "STARTTLS offered again: {ehlo}");
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    t.expect("STARTTLS", "503 5.5.1");
    // 127.0.0.2 is outside relay_networks: no relaying before AUTH.
    t.expect("MAIL FROM:<a@example.com>", "250");
    t.expect("RCPT TO:<x@elsewhere.test>", "550 5.7.1");
    t.expect("RSET", "250");
    t.expect(
        &format!("AUTH PLAIN {}", plain("alice", ALICE_PW)),
        "235 2.7.0",
    );
    let id = queued_id(&t.send_message(
        "a@example.com",
        "x@elsewhere.test",
        &message("over tls", "secret body"),
    ));
    t.expect("QUIT", "221");
    assert_eq!(relay.queue_ids(), vec![id.clone()]);
    let shown = show(&relay, &id);
    assert!(shown.contains("auth-user: alice"), "{shown}");
    assert!(shown.contains("with ESMTPSA"), "{shown}");
    assert!(shown.contains("(using TLSv1.3 TLS13_"), "{shown}");
    assert_no_secrets(&relay);
}

/// CVE-2011-0411: commands pipelined after STARTTLS in the same packet are
/// plaintext an attacker could inject; they must never be executed.
#[test]
fn commands_sent_with_starttls_are_discarded() {
    let relay = tls_relay("");
    let mut c = relay.connect();
    c.greet();
    c.send_raw(b"STARTTLS\r\nNOOP\r\nMAIL FROM:<evil@x.test>\r\n");
    let r = c.reply();
    assert!(r.starts_with("220 2.0.0"), "{r}");
    let mut t = Tls::handshake(c.stream.try_clone().unwrap());
    t.s.sock
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    t.send_raw(b"EHLO tls.test\r\n");
    // The first reply after the handshake is the EHLO one (multi-line), not a
    // "250 2.0.0 Ok" to the NOOP.
    let first = t.read_reply();
    assert!(
        first.len() > 1 && first[0].starts_with("250-relay.test Hello tls.test"),
        "first reply after the handshake: {first:?}"
    );
    // The injected MAIL did not start a transaction, and nothing else is queued
    // up: the next reply is the one to HELP.
    t.expect("RCPT TO:<a@b.test>", "503 5.5.1");
    t.expect("HELP", "214");
    t.expect("QUIT", "221");
}

#[test]
fn implicit_tls_listener_banner_auth_login_and_message() {
    let relay = tls_relay("[server]\nlisten_tls = 127.0.0.1:0\n");
    // The harness found both listeners from the "listening on" lines, plain first.
    assert_eq!(relay.addrs.len(), 2, "listeners: {:?}", relay.addrs);
    let tls_addr = relay.addrs[1];
    let mut t = Tls::handshake(connect_bound("127.0.0.2", tls_addr));
    let banner = t.reply();
    assert!(banner.starts_with("220 relay.test"), "{banner}");
    let ehlo = t.ehlo();
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    t.expect("STARTTLS", "503 5.5.1");
    // AUTH LOGIN, bob's $5$ hash.
    t.expect("AUTH LOGIN", "334 VXNlcm5hbWU6");
    t.expect(&b64(b"bob"), "334 UGFzc3dvcmQ6");
    t.expect(&b64(BOB_PW.as_bytes()), "235 2.7.0");
    let id = queued_id(&t.send_message("b@example.com", "y@elsewhere.test", "implicit"));
    t.expect("QUIT", "221");
    let shown = show(&relay, &id);
    assert!(shown.contains("auth-user: bob"), "{shown}");
    assert!(shown.contains("with ESMTPSA"), "{shown}");
    assert!(shown.contains("(using TLSv1.3"), "{shown}");
    relay.wait_log("(implicit TLS)");
    // The plain listener still serves alongside.
    let mut p = relay.connect();
    p.greet();
    p.expect("QUIT", "221");
    assert_no_secrets(&relay);
}

#[test]
fn auth_replies() {
    let relay = tls_relay("");
    // A network client in plaintext: AUTH is neither offered nor accepted.
    let mut n = lan(relay.addr());
    let ehlo = n.greet().join("\n");
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    n.expect(
        &format!("AUTH PLAIN {}", plain("alice", ALICE_PW)),
        "538 5.7.11",
    );
    n.expect("AUTH LOGIN", "538 5.7.11");
    n.expect("MAIL FROM:<a@example.com>", "250");
    n.expect("RCPT TO:<x@elsewhere.test>", "550 5.7.1");
    n.expect("QUIT", "221");

    // A local client may authenticate in plaintext.
    let mut c = relay.connect();
    let ehlo = c.greet().join("\n");
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    c.expect(
        &format!("AUTH PLAIN {}", plain("alice", "wrong:pässword")),
        "535 5.7.8",
    );
    c.expect("AUTH PLAIN", "334");
    c.expect("*", "501 5.7.0");
    c.expect("AUTH LOGIN", "334");
    c.expect(&b64(b"alice"), "334");
    c.expect("*", "501 5.7.0");
    // A wrong password as an AUTH LOGIN continuation line.
    c.expect("AUTH LOGIN", "334");
    c.expect(&b64(b"alice"), "334");
    c.expect(&b64("wrong:pässword".as_bytes()), "535 5.7.8");
    c.expect("AUTH CRAM-MD5", "504");
    // PLAIN without an initial response, alice's $6$ hash.
    c.expect("AUTH PLAIN", "334");
    c.expect(&plain("alice", ALICE_PW), "235 2.7.0");
    c.expect(
        &format!("AUTH PLAIN {}", plain("alice", ALICE_PW)),
        "503 5.5.1",
    );
    let id = queued_id(&c.send_message("a@example.com", &["x@elsewhere.test"], "local"));
    let shown = show(&relay, &id);
    assert!(shown.contains("auth-user: alice"), "{shown}");
    assert!(shown.contains("with ESMTPA"), "{shown}");
    c.expect("QUIT", "221");

    // bob's $5$ hash with an initial response; an unknown user is refused.
    let mut b = relay.connect();
    b.greet();
    b.expect(
        &format!("AUTH PLAIN {}", plain("nobody", BOB_PW)),
        "535 5.7.8",
    );
    b.expect(&format!("AUTH LOGIN {}", b64(b"bob")), "334 UGFzc3dvcmQ6");
    b.expect(&b64(BOB_PW.as_bytes()), "235 2.7.0");
    b.expect("QUIT", "221");
    relay.wait_log("authenticated as bob");
    relay.wait_log("authentication failed for alice");
    assert_no_secrets(&relay);
}

#[test]
fn three_failures_close_the_session_and_then_the_address_is_braked() {
    let relay = tls_relay("");
    let wrong = format!("AUTH PLAIN {}", plain("alice", "wrong:pässword"));
    // Per session: two 535s, then 421 4.7.0 and close.
    let mut c = relay.connect();
    c.greet();
    c.expect(&wrong, "535 5.7.8");
    c.expect(&wrong, "535 5.7.8");
    c.expect(&wrong, "421 4.7.0");
    assert!(c.wait_closed());

    // Per address: 127.0.0.2 over STARTTLS, 3 failures a session; the brake
    // trips at 10 failures (server.rs BRAKE_FAILURES), i.e. in the 4th session.
    for round in 0..4 {
        let mut p = lan(relay.addr());
        p.greet();
        let mut t = Tls::starttls(p);
        t.ehlo();
        t.expect(&wrong, "535 5.7.8");
        t.expect(&wrong, "535 5.7.8");
        t.expect(&wrong, "421 4.7.0");
        assert!(t.wait_closed(), "round {round}");
    }
    let mut blocked = lan(relay.addr());
    let r = blocked.reply();
    assert!(r.starts_with("421 4.7.0"), "{r}");
    assert!(blocked.wait_closed());
    relay.wait_log("127.0.0.2: 12 failed AUTH attempts");
    // Even the right password is not heard now; other addresses are served.
    let mut local = relay.connect();
    local.greet();
    local.expect(&format!("AUTH PLAIN {}", plain("alice", ALICE_PW)), "235");
    assert_no_secrets(&relay);
}

#[test]
fn auth_required_refuses_mail_until_authenticated() {
    let relay = tls_relay("[server]\nauth = required\n");
    let mut c = relay.connect();
    c.greet();
    c.expect("MAIL FROM:<a@example.com>", "530 5.7.0");
    c.expect(
        &format!("AUTH PLAIN {}", plain("alice", ALICE_PW)),
        "235 2.7.0",
    );
    queued_id(&c.send_message("a@example.com", &["b@example.com"], "x"));
    c.expect("QUIT", "221");
}

#[test]
fn auth_off_removes_auth() {
    let relay = tls_relay("[server]\nauth = off\n");
    let mut c = relay.connect();
    let ehlo = c.greet().join("\n");
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    let r = c.cmd(&format!("AUTH PLAIN {}", plain("alice", ALICE_PW)));
    assert!(r.starts_with("5") && !r.starts_with("535"), "{r}");
}

#[test]
fn require_tls_refuses_mail_before_starttls_except_from_local_clients() {
    let relay = tls_relay("[server]\nrequire_tls = yes\nrelay_networks = 127.0.0.0/8\n");
    let mut n = lan(relay.addr());
    n.greet();
    n.expect("MAIL FROM:<a@example.com>", "530 5.7.0");
    let mut t = Tls::starttls(n);
    t.ehlo();
    let id = queued_id(&t.send_message("a@example.com", "b@example.com", "tls"));
    t.expect("QUIT", "221");
    let shown = show(&relay, &id);
    assert!(shown.contains("with ESMTPS"), "{shown}");
    assert!(!shown.contains("auth-user"), "{shown}");

    let mut l = relay.connect();
    l.greet();
    queued_id(&l.send_message("a@example.com", &["b@example.com"], "local"));
}

#[test]
fn sighup_reloads_the_certificate_and_keeps_the_old_one_when_broken() {
    let c = certs();
    let dir = TempDir::new("reload");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::copy(&c.cert, &cert).unwrap();
    std::fs::copy(&c.key, &key).unwrap();
    let relay = tls_relay_with(&cert, &key, "");
    let handshake = || {
        let mut p = relay.connect();
        p.greet();
        let t = Tls::starttls(p);
        t.peer_cert()
    };
    assert_eq!(handshake(), cert_der(&c.cert));
    // A session open across the reload keeps working.
    let mut p = relay.connect();
    p.greet();
    let mut open = Tls::starttls(p);
    open.ehlo();

    // Renewed (as certbot would): key first, then the certificate.
    std::fs::copy(&c.key2, &key).unwrap();
    std::fs::copy(&c.cert2, &cert).unwrap();
    relay.signal("HUP");
    relay.wait_log("reloaded the TLS certificate and key");
    assert_eq!(handshake(), cert_der(&c.cert2));
    open.expect("NOOP", "250");

    // A broken file: the old certificate stays, the log says why.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64 at all\n").unwrap();
    relay.signal("HUP");
    relay.wait_log("TLS reload failed, keeping the old certificate");
    let log = relay.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("TLS reload failed"))
        .unwrap();
    assert!(
        line.contains("tls_cert") && line.contains(&cert.display().to_string()),
        "{line}"
    );
    assert_eq!(handshake(), cert_der(&c.cert2));
    open.expect("NOOP", "250");
    open.expect("QUIT", "221");
}

#[test]
fn tls12_clients_are_served_and_named_in_received() {
    let relay = tls_relay("[server]\nlisten_tls = 127.0.0.1:0\n");
    let cfg =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(common::tls::test_ca_roots())
            .with_no_client_auth();
    let mut t = Tls::handshake_with(connect_bound("127.0.0.2", relay.addrs[1]), Arc::new(cfg));
    assert_eq!(t.version(), Some(rustls::ProtocolVersion::TLSv1_2));
    assert!(t.reply().starts_with("220 "));
    t.ehlo();
    t.expect(
        &format!("AUTH PLAIN {}", plain("alice", ALICE_PW)),
        "235 2.7.0",
    );
    let id = queued_id(&t.send_message("a@example.com", "x@elsewhere.test", "tls12"));
    let shown = show(&relay, &id);
    assert!(shown.contains("(using TLSv1.2 TLS_ECDHE_"), "{shown}");
}

/// A silent client on the implicit-TLS port must neither hold up other clients
/// (the handshake runs in a worker, not on the accepting thread) nor a worker
/// for longer than command_timeout.
#[test]
fn implicit_tls_handshake_is_bounded_and_off_the_accept_thread() {
    let relay = tls_relay("[server]\nlisten_tls = 127.0.0.1:0\ncommand_timeout = 1s\n");
    let mut silent = TcpStream::connect(relay.addrs[1]).unwrap();
    silent.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut t = Tls::handshake(TcpStream::connect(relay.addrs[1]).unwrap());
    assert!(t.reply().starts_with("220 "));
    t.expect("QUIT", "221");
    let start = Instant::now();
    let mut buf = [0u8; 64];
    // The server closes the silent connection (EOF or reset), without a reply.
    assert!(matches!(silent.read(&mut buf), Ok(0) | Err(_)));
    assert!(start.elapsed() < DEADLINE);
    relay.wait_log("TLS handshake failed");
}

#[test]
fn failed_starttls_handshake_ends_the_session_and_is_logged() {
    let relay = tls_relay("");
    let mut c = relay.connect();
    c.greet();
    c.expect("STARTTLS", "220 2.0.0");
    c.send_raw(b"EHLO this is not a ClientHello\r\n");
    assert!(c.wait_closed());
    relay.wait_log("TLS handshake failed");
    relay.wait_log("closed after");
}

#[test]
fn check_and_serve_refuse_a_key_that_does_not_match_naming_the_key() {
    let c = certs();
    let dir = TempDir::new("mismatch");
    let cfg = dir.path().join("p.ini");
    std::fs::write(
        &cfg,
        merge_ini(
            &base_ini(&dir.path().join("spool")),
            &format!(
                "[server]\ntls_cert = {}\ntls_key = {}\n",
                c.cert.display(),
                c.key2.display()
            ),
        ),
    )
    .unwrap();
    for cmd in ["check", "serve"] {
        let out = Command::new(bin())
            .arg("-c")
            .arg(&cfg)
            .arg(cmd)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            all.contains("tls_key") && all.contains(&c.key2.display().to_string()),
            "{cmd}: {all}"
        );
        assert!(all.contains("does not match"), "{cmd}: {all}");
    }
}

// ---- real clients ----------------------------------------------------------

/// have tells whether a tool runs; prints a note when it does not, so a
/// skipped test is visible with --nocapture.
fn have(tool: &str, args: &[&str]) -> bool {
    let ok = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        println!("note: {tool} is not installed: skipping this test");
    }
    ok
}

/// run runs a client with a deadline; panics with its output when it fails.
fn run(dir: &Path, what: &str, cmd: &mut Command, stdin: Option<&str>) {
    let (out, err) = (
        dir.join(format!("{what}.out")),
        dir.join(format!("{what}.err")),
    );
    let mut child = cmd
        .stdin(match stdin {
            Some(_) => Stdio::piped(),
            None => Stdio::null(),
        })
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        status.success(),
        "{what} failed ({status}):\n{}\n{}",
        std::fs::read_to_string(&out).unwrap_or_default(),
        std::fs::read_to_string(&err).unwrap_or_default()
    );
}

/// assert_new_authenticated_message: `queue list` shows one more message, and
/// it came over TLS with AUTH as `user`.
fn assert_new_authenticated_message(relay: &Relay, before: &mut Vec<String>, user: &str) {
    let ids = relay.queue_ids();
    let new: Vec<&String> = ids.iter().filter(|i| !before.contains(i)).collect();
    assert_eq!(new.len(), 1, "queue list: {ids:?}, before: {before:?}");
    let shown = show(relay, new[0]);
    assert!(shown.contains(&format!("auth-user: {user}")), "{shown}");
    assert!(shown.contains("with ESMTPSA"), "{shown}");
    *before = ids;
}

const MSG: &str = "From: a@example.com\nTo: x@elsewhere.test\nSubject: real client\n\nhello\n";

#[test]
fn swaks_starttls_and_tls_on_connect_with_plain_and_login() {
    if !have("swaks", &["--version"]) {
        return;
    }
    let relay = tls_relay("[server]\nlisten_tls = 127.0.0.1:0\n");
    let ca = certs().ca.display().to_string();
    let mut before = Vec::new();
    for (mode, port, mech) in [
        ("--tls", relay.addrs[0].port(), "PLAIN"),
        ("--tlsc", relay.addrs[1].port(), "LOGIN"),
        ("--tls", relay.addrs[0].port(), "LOGIN"),
        ("--tlsc", relay.addrs[1].port(), "PLAIN"),
    ] {
        run(
            relay.dir.path(),
            "swaks",
            Command::new("swaks").args([
                "--server",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--local-interface",
                "127.0.0.2",
                "--ehlo",
                "swaks.test",
                "--from",
                "a@example.com",
                "--to",
                "x@elsewhere.test",
                mode,
                "--tls-verify",
                "--tls-ca-path",
                &ca,
                "--auth",
                mech,
                "--auth-user",
                "alice",
                "--auth-password",
                ALICE_PW,
                "--timeout",
                "30",
            ]),
            None,
        );
        assert_new_authenticated_message(&relay, &mut before, "alice");
    }
    assert_no_secrets(&relay);
}

#[test]
fn msmtp_with_starttls_on_and_off() {
    if !have("msmtp", &["--version"]) {
        return;
    }
    let relay = tls_relay("[server]\nlisten_tls = 127.0.0.1:0\n");
    let mut before = Vec::new();
    for (starttls, port) in [
        ("on", relay.addrs[0].port()),
        ("off", relay.addrs[1].port()),
    ] {
        let conf = relay.dir.path().join(format!("msmtprc-{starttls}"));
        std::fs::write(
            &conf,
            format!(
                "account default\nhost 127.0.0.1\nport {port}\nsource_ip 127.0.0.2\n\
                 domain msmtp.test\ntls on\ntls_starttls {starttls}\ntls_trust_file {}\n\
                 auth on\nuser bob\npassword {BOB_PW}\nfrom a@example.com\ntimeout 30\n",
                certs().ca.display()
            ),
        )
        .unwrap();
        // msmtp refuses a config with a password that others can read.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o600)).unwrap();
        run(
            relay.dir.path(),
            "msmtp",
            Command::new("msmtp")
                .arg("-C")
                .arg(&conf)
                .arg("x@elsewhere.test"),
            Some(MSG),
        );
        assert_new_authenticated_message(&relay, &mut before, "bob");
    }
    assert_no_secrets(&relay);
}

#[test]
fn curl_smtp_with_ssl_reqd_and_smtps() {
    if !have("curl", &["--version"]) {
        return;
    }
    let relay = tls_relay("[server]\nlisten_tls = 127.0.0.1:0\n");
    let msg = relay.dir.path().join("msg.eml");
    std::fs::write(&msg, MSG.replace('\n', "\r\n")).unwrap();
    let mut before = Vec::new();
    for (url, extra) in [
        (
            format!("smtp://127.0.0.1:{}/curl.test", relay.addrs[0].port()),
            "--ssl-reqd",
        ),
        (
            format!("smtps://127.0.0.1:{}/curl.test", relay.addrs[1].port()),
            "--ssl-reqd",
        ),
    ] {
        run(
            relay.dir.path(),
            "curl",
            Command::new("curl")
                .args(["-sS", "--max-time", "30", "--url", &url, extra])
                .args(["--interface", "127.0.0.2", "--cacert"])
                .arg(&certs().ca)
                // curl splits user:password at the first ':'.
                .args(["--user", &format!("alice:{ALICE_PW}")])
                .args([
                    "--mail-from",
                    "a@example.com",
                    "--mail-rcpt",
                    "x@elsewhere.test",
                ])
                .arg("--upload-file")
                .arg(&msg),
            None,
        );
        assert_new_authenticated_message(&relay, &mut before, "alice");
    }
    assert_no_secrets(&relay);
}

#[test]
fn python_smtplib_starttls_and_login() {
    if !have("python3", &["-c", "import smtplib, ssl"]) {
        return;
    }
    let relay = tls_relay("");
    let script = r#"
import smtplib, ssl, sys
port, ca, user, pw, msg = sys.argv[1:6]
s = smtplib.SMTP("127.0.0.1", int(port), local_hostname="py.test",
                 source_address=("127.0.0.2", 0), timeout=30)
s.starttls(context=ssl.create_default_context(cafile=ca))
s.login(user, pw)
s.sendmail("a@example.com", ["x@elsewhere.test"], msg)
s.quit()
"#;
    let mut before = Vec::new();
    run(
        relay.dir.path(),
        "python",
        Command::new("python3")
            .args(["-c", script, &relay.addr().port().to_string()])
            .arg(&certs().ca)
            .args(["py", PY_PW, MSG]),
        None,
    );
    assert_new_authenticated_message(&relay, &mut before, "py");
    assert_no_secrets(&relay);
}
