//! Test harness: runs the real picorelay binary on ephemeral loopback ports
//! with a temp config and spool, and speaks SMTP to it.
#![allow(dead_code)]

pub mod certs;
pub mod idp;
pub mod json;
pub mod smarthost;
pub mod tls;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Generous deadline for anything a loaded CI machine must eventually do.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// bin is the binary under test: cargo's build, or another build of the same
/// tree named by PICORELAY_TEST_BIN (e.g. `make static`'s, to run the suite
/// against the musl build).
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("PICORELAY_TEST_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_picorelay").to_string())
    })
}

/// A unique temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!(
            "picorelay-test-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// wait_for polls `cond` until it is true or DEADLINE passes.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running relay with its config, spool and captured log.
pub struct Relay {
    pub dir: TempDir,
    pub config: PathBuf,
    pub child: Option<Child>,
    pub log: Arc<Mutex<Vec<String>>>,
    pub addrs: Vec<SocketAddr>,
}

/// The config every test starts from; `extra` is appended section by section
/// (a later `[server]` block in extra replaces keys via `merge_ini`).
pub fn base_ini(spool: &Path) -> String {
    format!(
        "[server]\nlisten = 127.0.0.1:0\nhostname = relay.test\nworkers = 4\n\n[queue]\ndir = {}\n\n[log]\nlevel = debug\n",
        spool.display()
    )
}

/// merge_ini overlays `extra` on `base`: keys in extra replace the same keys
/// of the same section; new sections are appended.
pub fn merge_ini(base: &str, extra: &str) -> String {
    let mut sections: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for text in [base, extra] {
        let mut cur = String::new();
        for line in text.lines() {
            let t = line.trim();
            if t.is_empty() || t.starts_with(';') || t.starts_with('#') {
                continue;
            }
            if t.starts_with('[') {
                cur = t.to_string();
                if !sections.iter().any(|(s, _)| *s == cur) {
                    sections.push((cur.clone(), Vec::new()));
                }
                continue;
            }
            let (k, v) = t
                .split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .unwrap_or((t, ""));
            let sec = &mut sections
                .iter_mut()
                .find(|(s, _)| *s == cur)
                .expect("key before section")
                .1;
            match sec.iter_mut().find(|(kk, _)| kk == k) {
                Some(e) => e.1 = v.to_string(),
                None => sec.push((k.to_string(), v.to_string())),
            }
        }
    }
    let mut out = String::new();
    for (s, keys) in sections {
        out.push_str(&s);
        out.push('\n');
        for (k, v) in keys {
            out.push_str(&format!("{k} = {v}\n"));
        }
        out.push('\n');
    }
    out
}

impl Relay {
    /// start writes the config (base + extra) and starts the relay.
    pub fn start(extra: &str) -> Relay {
        let dir = TempDir::new("relay");
        let ini = merge_ini(&base_ini(&dir.path().join("spool")), extra);
        let mut r = Relay::prepared(dir, &ini);
        r.spawn();
        r
    }

    /// reload_lines counts the log lines of finished reloads (accepted or refused).
    pub fn reload_lines(&self) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("] reloaded ") || l.contains("reload of "))
            .count()
    }

    /// prepared writes `ini` as picorelay.ini in `dir`: a relay ready to spawn.
    pub fn prepared(dir: TempDir, ini: &str) -> Relay {
        let config = dir.path().join("picorelay.ini");
        std::fs::write(&config, ini).unwrap();
        Relay {
            dir,
            config,
            child: None,
            log: Arc::new(Mutex::new(Vec::new())),
            addrs: Vec::new(),
        }
    }

    /// spawn starts the binary and waits until every listener is logged.
    pub fn spawn(&mut self) {
        let mut cmd = Command::new(bin());
        cmd.arg("-c").arg(&self.config).arg("serve");
        self.spawn_with(cmd);
    }

    /// spawn_with starts the relay through `cmd` (the binary itself, or a wrapper
    /// with another umask or environment), captures its log and waits until every
    /// listener is logged.
    pub fn spawn_with(&mut self, mut cmd: Command) {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start picorelay");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::clone(&self.log);
        log.lock().unwrap().clear();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                log.lock().unwrap().push(line);
            }
        });
        self.child = Some(child);
        let n_listen = self.expected_listeners();
        let mut exited = None;
        wait_for("the relay to listen", || {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                exited = Some(st);
                return true;
            }
            self.listen_lines().len() >= n_listen
        });
        if let Some(st) = exited {
            panic!("relay exited at start ({st}): {}", self.log_text());
        }
        self.addrs = self.listen_lines();
    }

    fn expected_listeners(&self) -> usize {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let count = |key: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(key) && l.contains('='))
                .map(|l| {
                    l.split_once('=')
                        .unwrap()
                        .1
                        .split(',')
                        .filter(|s| !s.trim().is_empty())
                        .count()
                })
                .unwrap_or(0)
        };
        count("listen ").max(count("listen=")) + count("listen_tls")
    }

    /// listen_lines are the addresses the relay logged as listening on.
    pub fn listen_lines(&self) -> Vec<SocketAddr> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| l.split("listening on ").nth(1))
            .filter_map(|a| a.trim().parse().ok())
            .collect()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    pub fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn wait_log(&self, needle: &str) {
        wait_for(&format!("log line containing {needle:?}"), || {
            self.log_text().contains(needle)
        });
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap()
    }

    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// wait_exit waits for the relay to exit and returns its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            assert!(start.elapsed() < DEADLINE, "relay did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// cmd runs `picorelay -c CONFIG args...`.
    pub fn cmd(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap()
    }

    /// queue_ids lists the ids `queue list` prints.
    pub fn queue_ids(&self) -> Vec<String> {
        queue_ids_of(&self.config)
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr())
    }

    /// submit queues one message through SMTP and returns its id.
    pub fn submit(&self, from: &str, to: &[&str], body: &str) -> String {
        let mut c = self.connect();
        c.greet();
        let id = queued_id(&c.send_message(from, to, body));
        c.expect("QUIT", "221");
        id
    }

    /// queue_line is `queue list`'s line for `id`, or "" when it is not queued.
    pub fn queue_line(&self, id: &str) -> String {
        let out = self.cmd(&["queue", "list"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or("")
            .to_string()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// What a quiet client heard from the server within a time limit (`Client::hear`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// One line, without its CRLF.
    Line(String),
    /// End of file or a reset: the server closed the connection.
    Closed,
    /// Nothing within the limit: the session is still open.
    Silence,
}

/// A minimal SMTP client that keeps raw control of what it sends.
pub struct Client {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, DEADLINE).expect("connect");
        Client::from_stream(stream)
    }

    pub fn from_stream(stream: TcpStream) -> Client {
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Client { stream, reader }
    }

    /// read_reply reads one (possibly multi-line) reply; returns its lines.
    pub fn read_reply(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).expect("read reply");
            assert!(
                n > 0,
                "connection closed while waiting for a reply (got {lines:?})"
            );
            let line = line.trim_end_matches(['\r', '\n']).to_string();
            let last = line.len() < 4 || line.as_bytes()[3] == b' ';
            lines.push(line);
            if last {
                return lines;
            }
        }
    }

    /// reply reads one reply and returns its last line (code, status and text).
    pub fn reply(&mut self) -> String {
        self.read_reply().pop().unwrap()
    }

    pub fn send_raw(&mut self, data: &[u8]) {
        self.stream.write_all(data).expect("send");
    }

    /// cmd sends a line and returns the last line of the reply.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send_raw(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// expect sends a line and asserts the reply starts with `prefix`.
    pub fn expect(&mut self, line: &str, prefix: &str) -> String {
        let r = self.cmd(line);
        assert!(
            r.starts_with(prefix),
            "{line:?}: expected {prefix:?}, got {r:?}"
        );
        r
    }

    /// greet reads the banner and says EHLO.
    pub fn greet(&mut self) -> Vec<String> {
        let b = self.reply();
        assert!(b.starts_with("220 "), "banner: {b}");
        self.send_raw(b"EHLO client.test\r\n");
        let r = self.read_reply();
        assert!(r.last().unwrap().starts_with("250 "), "EHLO: {r:?}");
        r
    }

    /// send_message runs one whole transaction; returns the final reply.
    pub fn send_message(&mut self, from: &str, to: &[&str], body: &str) -> String {
        self.expect(&format!("MAIL FROM:<{from}>"), "250");
        for t in to {
            self.expect(&format!("RCPT TO:<{t}>"), "250");
        }
        self.expect("DATA", "354");
        self.send_raw(body.as_bytes());
        self.send_raw(b"\r\n.\r\n");
        self.reply()
    }

    /// hear reads one line within `wait` without failing the test: what a client
    /// that has been quiet finds (a reply the server volunteered, the close, or
    /// nothing). The read timeout is DEADLINE again afterwards.
    pub fn hear(&mut self, wait: Duration) -> Heard {
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let mut line = String::new();
        let heard = match self.reader.read_line(&mut line) {
            Ok(0) => Heard::Closed,
            Ok(_) => Heard::Line(line.trim_end_matches(['\r', '\n']).to_string()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Heard::Silence
            }
            Err(_) => Heard::Closed,
        };
        self.stream.set_read_timeout(Some(DEADLINE)).unwrap();
        heard
    }

    /// closed tells whether the server has closed the connection (reads EOF).
    pub fn wait_closed(&mut self) -> bool {
        let mut buf = [0u8; 256];
        loop {
            match self.reader.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    }
}

/// queue_ids_of lists the ids `picorelay -c config queue list` prints.
pub fn queue_ids_of(config: &Path) -> Vec<String> {
    let out = Command::new(bin())
        .arg("-c")
        .arg(config)
        .args(["queue", "list"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "queue list failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("queue is empty"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// b64 is standard base64 with padding (RFC 4648 §4), as SASL wants it;
/// written here so the tests do not trust the relay's own encoder.
pub fn b64(data: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// queued_id extracts the id from "250 2.0.0 Ok: queued as ID".
pub fn queued_id(reply: &str) -> String {
    assert!(reply.starts_with("250 2.0.0"), "not queued: {reply}");
    reply.rsplit(' ').next().unwrap().to_string()
}

/// message builds a small RFC 5322 message with CRLF line ends.
pub fn message(subject: &str, body: &str) -> String {
    format!("From: a@example.com\r\nTo: b@example.com\r\nSubject: {subject}\r\n\r\n{body}")
}

/// connect_bound connects from a chosen local address (127.0.0.2 is a
/// network client in our rules); std cannot bind before connect.
pub fn connect_bound(local: &str, to: SocketAddr) -> TcpStream {
    use std::os::fd::FromRawFd;
    let ip: std::net::Ipv4Addr = local.parse().unwrap();
    let to_ip = match to.ip() {
        std::net::IpAddr::V4(v4) => v4,
        _ => panic!("v4 only"),
    };
    // SAFETY: plain socket/bind/connect calls on zero-initialised sockaddr_in
    // structs of the size we pass; the fd is owned by the TcpStream afterwards.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let mut a: libc::sockaddr_in = std::mem::zeroed();
        a.sin_family = libc::AF_INET as libc::sa_family_t;
        a.sin_addr.s_addr = u32::from_ne_bytes(ip.octets());
        a.sin_port = 0;
        let rc = libc::bind(
            fd,
            &a as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        assert_eq!(rc, 0, "bind {local}");
        let mut b: libc::sockaddr_in = std::mem::zeroed();
        b.sin_family = libc::AF_INET as libc::sa_family_t;
        b.sin_addr.s_addr = u32::from_ne_bytes(to_ip.octets());
        b.sin_port = to.port().to_be();
        let rc = libc::connect(
            fd,
            &b as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        assert_eq!(rc, 0, "connect to {to}");
        TcpStream::from_raw_fd(fd)
    }
}
