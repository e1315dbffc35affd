//! Black-box tests of OAuth 2.0 login to the smarthost (XOAUTH2 / OAUTHBEARER): the real
//! binary, a scripted identity provider over HTTPS (tests/common/idp.rs) and a scripted
//! smarthost that checks the bearer tokens against it, all on 127.0.0.1 ephemeral ports.
//!
//! The scripted providers behave as the real ones do: Microsoft rotates the refresh token on
//! every refresh (the old one dies) and refuses a token with `535 5.7.3`; Gmail answers a bad
//! token with a `334` JSON challenge and signs in with PKCE on a loopback redirect.

mod common;

use common::certs::certs;
use common::idp::{self, Answer, Expires, Idp, DEVICE_GRANT};
use common::json::{parse_json, Json};
use common::smarthost::{Opts, Refusal, Sink, Txn};
use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The mailbox the relay logs in as ([smarthost] username, the XOAUTH2 user).
const USER: &str = "relay@example.com";
const MS_SCOPE: &str = "https://outlook.office.com/SMTP.Send offline_access";
const MS_APP_SCOPE: &str = "https://outlook.office365.com/.default";
const GOOGLE_SCOPE: &str = "https://mail.google.com/";

// ---------------------------------------------------------------- helpers

/// oauth_ini is the [smarthost]/[oauth]/[queue] part of a config for `provider`: STARTTLS to
/// the sink with the test CA, XOAUTH2 user USER, the IdP's endpoints, a 3 s token timeout and
/// fast retries. `token_file` None leaves the default (oauth-token in the spool).
fn oauth_ini(idp: &Idp, sink: &str, provider: &str, token_file: Option<&Path>) -> String {
    let ca = certs().ca.display().to_string();
    let mut s = format!(
        "[smarthost]\nhost = {sink}\ntls = starttls\nca_file = {ca}\nusername = {USER}\nauth = auto\n\n\
         [oauth]\nprovider = {provider}\ngrant = refresh_token\nclient_id = test-client\n\
         token_url = {}\nca_file = {ca}\ntimeout = 3s\n",
        idp.token_url()
    );
    match provider {
        "microsoft" => s.push_str(&format!("device_url = {}\n", idp.device_url())),
        "google" => s.push_str(&format!("auth_url = {}\n", idp.auth_url())),
        _ => {}
    }
    if let Some(t) = token_file {
        s.push_str(&format!("token_file = {}\n", t.display()));
    }
    s.push_str("\n[queue]\nretry_min = 1s\nretry_max = 2s\n");
    s
}

/// prepare writes the config of a relay (base + oauth_ini + extra) without starting it; the
/// token file is DIR/oauth/oauth-token, in a folder of its own (0700).
fn prepare(idp: &Idp, sink: &Sink, provider: &str, extra: &str) -> Relay {
    prepare_with(idp, &sink.addr(), provider, extra, true)
}

fn prepare_with(idp: &Idp, sink: &str, provider: &str, extra: &str, own_file: bool) -> Relay {
    let dir = TempDir::new("oauth");
    let spool = dir.path().join("spool");
    let tf = dir.path().join("oauth").join("oauth-token");
    std::fs::create_dir_all(tf.parent().unwrap()).unwrap();
    std::fs::set_permissions(tf.parent().unwrap(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let ini = merge_ini(
        &merge_ini(
            &base_ini(&spool),
            &oauth_ini(idp, sink, provider, own_file.then_some(tf.as_path())),
        ),
        extra,
    );
    Relay::prepared(dir, &ini)
}

fn token_file(r: &Relay) -> PathBuf {
    r.dir.path().join("oauth").join("oauth-token")
}

/// seed writes a token file the way a user may: `refresh_token=RT`, mode 0600.
/// started is `prepare` with a fresh refresh token from `idp` in the token file, relay running.
fn started(idp: &Idp, sink: &Sink, provider: &str, extra: &str) -> Relay {
    let mut relay = prepare(idp, sink, provider, extra);
    seed(&relay, &idp.new_refresh_token());
    relay.spawn();
    relay
}

fn seed(r: &Relay, rt: &str) {
    let p = token_file(r);
    std::fs::write(&p, format!("refresh_token={rt}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// stored_refresh is the refresh token a token file holds (`refresh_token=` line, `#` comments).
fn stored_refresh(p: &Path) -> Option<String> {
    let text = std::fs::read_to_string(p).ok()?;
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix("refresh_token="))
        .map(str::to_string)
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// submit queues one message from alice to bob with `subject`; returns its id.
fn submit(r: &Relay, subject: &str) -> String {
    r.submit(
        "alice@example.com",
        &["bob@example.org"],
        &message(subject, "hello\r\n"),
    )
}

/// wait_delivered waits for n transactions at the sink and an empty queue.
fn wait_delivered(r: &Relay, sink: &Sink, n: usize) -> Vec<Txn> {
    let t = sink.wait_txns(n);
    wait_for("the queue to empty", || r.queue_ids().is_empty());
    t
}

/// no_bounce: everything the sink got came from alice (a bounce has the null sender).
fn assert_no_bounce(sink: &Sink) {
    for t in sink.txns() {
        assert_eq!(t.mail_from, "alice@example.com", "a bounce went out: {t:?}");
    }
}

/// A picorelay command run with piped stdio: its output is collected as it comes.
struct Proc {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    what: String,
}

fn collect(r: impl Read + Send + 'static, buf: Arc<Mutex<String>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            let mut b = buf.lock().unwrap();
            b.push_str(&line);
            b.push('\n');
        }
    })
}

/// spawn runs `picorelay -c CONFIG args...`.
fn spawn(r: &Relay, args: &[&str]) -> Proc {
    let mut child = Command::new(bin())
        .arg("-c")
        .arg(&r.config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start picorelay");
    let out = Arc::new(Mutex::new(String::new()));
    let err = Arc::new(Mutex::new(String::new()));
    let readers = vec![
        collect(child.stdout.take().unwrap(), Arc::clone(&out)),
        collect(child.stderr.take().unwrap(), Arc::clone(&err)),
    ];
    Proc {
        stdin: child.stdin.take(),
        child: Some(child),
        out,
        err,
        readers,
        what: args.join(" "),
    }
}

impl Proc {
    fn stdout(&self) -> String {
        self.out.lock().unwrap().clone()
    }
    fn stderr(&self) -> String {
        self.err.lock().unwrap().clone()
    }
    /// wait_line waits for a stdout line satisfying `pred` and returns it.
    fn wait_line(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            if let Some(l) = self.stdout().lines().find(|l| pred(l)) {
                return l.to_string();
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() {
                // Let the readers drain, then look once more.
                std::thread::sleep(Duration::from_millis(200));
                if let Some(l) = self.stdout().lines().find(|l| pred(l)) {
                    return l.to_string();
                }
            }
            assert!(
                exited.is_none() && start.elapsed() < DEADLINE,
                "`{}`: no line with {what} (exit {exited:?})\nstdout:\n{}\nstderr:\n{}",
                self.what,
                self.stdout(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }
    /// finish waits (up to DEADLINE) for the exit; returns (code, stdout, stderr).
    fn finish(mut self) -> (Option<i32>, String, String) {
        let mut child = self.child.take().unwrap();
        let start = Instant::now();
        let st = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if start.elapsed() > DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "`{}` did not exit\nstdout:\n{}\nstderr:\n{}",
                    self.what,
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        drop(self.stdin.take());
        for h in self.readers.drain(..) {
            let _ = h.join();
        }
        (st.code(), self.stdout(), self.stderr())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// run runs a command to its end (stdin closed at once); returns (code, stdout, stderr).
fn run(r: &Relay, args: &[&str]) -> (Option<i32>, String, String) {
    let mut p = spawn(r, args);
    drop(p.stdin.take());
    p.finish()
}

/// status_json runs `status --json` and parses it (None when the relay does not answer).
fn status_json(r: &Relay) -> Option<Json> {
    let (code, out, _) = run(r, &["status", "--json"]);
    (code == Some(0)).then(|| parse_json(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}")))
}

/// wait_status waits until `status --json` satisfies `cond`; returns it.
fn wait_status(r: &Relay, what: &str, cond: impl Fn(&Json) -> bool) -> Json {
    let mut last = None;
    wait_for(&format!("status: {what} (last: {last:?})"), || {
        last = status_json(r);
        last.as_ref().is_some_and(&cond)
    });
    last.unwrap()
}

/// auth_error is the `auth` stage's message in `status --json` ("" when none).
fn auth_error(j: &Json) -> String {
    match j.get("errors.auth") {
        Json::Null => String::new(),
        _ => j.str("errors.auth.message"),
    }
}

/// pct_encode percent-encodes everything but RFC 3986 unreserved characters.
fn pct_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// assert_no_secrets fails naming every secret (or encoded form of one) found in `text`.
fn assert_no_secrets(text: &str, secrets: &[String]) {
    let mut found = Vec::new();
    for s in secrets.iter().filter(|s| s.len() >= 8) {
        for form in [s.clone(), pct_encode(s), b64(s.as_bytes())] {
            if text.contains(&form) {
                found.push(form);
            }
        }
    }
    assert!(found.is_empty(), "secrets printed: {found:?}\nin:\n{text}");
}

// ------------------------------------------------------------- the test servers

/// https_post is a raw TLS client: POST a form, return (status, headers, body de-chunked).
fn https_post(port: u16, path: &str, form: &str) -> (u16, String, String) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&certs().ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
        form.len()
    )
    .unwrap();
    s.flush().unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        loop {
            let (size, r) = rest.split_once("\r\n").unwrap();
            let n = usize::from_str_radix(size.split(';').next().unwrap(), 16).unwrap();
            if n == 0 {
                break out;
            }
            out.push_str(&r[..n]);
            rest = &r[n + 2..];
        }
    } else {
        body.to_string()
    };
    (status, head.to_string(), body)
}

#[test]
fn test_servers_self_check() {
    let idp = Idp::start();
    idp.set_rotate(true);
    let rt = idp.new_refresh_token();
    let form = format!(
        "grant_type=refresh_token&client_id=test-client&scope={}&refresh_token={}",
        pct_encode(MS_SCOPE),
        pct_encode(&rt)
    );
    let (st, head, body) = https_post(idp.port, idp::TOKEN_PATH, &form);
    assert_eq!(st, 200, "{body}");
    assert!(head.contains("Connection: close"), "{head}");
    let j = parse_json(&body).unwrap();
    let at = j.str("access_token");
    let rt2 = j.str("refresh_token");
    assert_ne!(rt2, rt);
    assert_eq!(j.num("expires_in"), 3600.0);
    let req = &idp.token_requests(Some("refresh_token"))[0];
    assert_eq!(req.get("scope"), Some(MS_SCOPE));
    assert_eq!(req.get("refresh_token"), Some(rt.as_str()));
    // Rotation: the old refresh token is dead now.
    let (st, _, body) = https_post(idp.port, idp::TOKEN_PATH, &form);
    assert_eq!(st, 400);
    assert_eq!(parse_json(&body).unwrap().str("error"), "invalid_grant");
    // A secret from a public client is refused; a chunked answer decodes.
    let (st, _, _) = https_post(
        idp.port,
        idp::TOKEN_PATH,
        &format!(
            "grant_type=refresh_token&client_id=test-client&client_secret=x&refresh_token={}",
            pct_encode(&rt2)
        ),
    );
    assert_eq!(st, 401);
    idp.script(None, Answer::Chunked, Some(1));
    idp.set_expires(Expires::Str(4));
    let (st, head, body) = https_post(
        idp.port,
        idp::TOKEN_PATH,
        &format!(
            "grant_type=refresh_token&client_id=test-client&refresh_token={}",
            pct_encode(&rt2)
        ),
    );
    assert_eq!(st, 200, "{body}");
    assert!(head.contains("Transfer-Encoding: chunked"), "{head}");
    assert_eq!(parse_json(&body).unwrap().str("expires_in"), "4");
    // client_credentials needs the secret ('+', '&', '%' encoded).
    let (st, _, _) = https_post(
        idp.port,
        idp::TOKEN_PATH,
        &format!(
            "grant_type=client_credentials&client_id=test-client&client_secret={}&scope=x",
            pct_encode(&idp.client_secret())
        ),
    );
    assert_eq!(st, 200);
    // PKCE S256, against Python's hashlib + base64.urlsafe_b64encode (padding stripped).
    assert_eq!(
        idp::pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUpU1p1r0W1gEXrm9cIgM"),
        "nw9GltWZNP7DlAiBHI1JlFyBzFWucP1EPM4LJ7lkfQM"
    );
    // Device flow: pending until approved.
    let (st, _, body) = https_post(idp.port, idp::DEVICE_PATH, "client_id=test-client&scope=x");
    assert_eq!(st, 200);
    let dc = parse_json(&body).unwrap().str("device_code");
    let poll = format!(
        "grant_type={}&client_id=test-client&device_code={dc}",
        pct_encode(DEVICE_GRANT)
    );
    let (st, _, body) = https_post(idp.port, idp::TOKEN_PATH, &poll);
    assert_eq!(st, 400);
    assert!(body.contains("authorization_pending"), "{body}");
    idp.approve_device();
    assert_eq!(https_post(idp.port, idp::TOKEN_PATH, &poll).0, 200);

    // The smarthost side: XOAUTH2 on the AUTH line, OAUTHBEARER after 334 with host/port,
    // and Gmail's challenge for a bad token.
    let sink = Sink::start(Opts::plain().with_oauth(
        "XOAUTH2 OAUTHBEARER",
        Refusal::Gmail,
        idp.validator(),
    ));
    let addr: std::net::SocketAddr = sink.addr().parse().unwrap();
    let mut c = Client::connect(addr);
    c.greet();
    let x = b64(format!("user={USER}\x01auth=Bearer {at}\x01\x01").as_bytes());
    c.expect(&format!("AUTH XOAUTH2 {x}"), "235");
    let mut c = Client::connect(addr);
    c.greet();
    c.expect("AUTH OAUTHBEARER", "334");
    let ob =
        b64(format!("n,a={USER},\x01host=h\x01port=587\x01auth=Bearer {at}\x01\x01").as_bytes());
    c.expect(&ob, "235");
    let mut c = Client::connect(addr);
    c.greet();
    let bad = b64(format!("user={USER}\x01auth=Bearer nope\x01\x01").as_bytes());
    let r = c.cmd(&format!("AUTH XOAUTH2 {bad}"));
    assert!(r.starts_with("334 eyJ"), "{r}");
    c.expect("", "535");
    let log = sink.auth_log();
    assert_eq!(
        log.iter().map(|a| a.accepted).collect::<Vec<_>>(),
        [true, true, false]
    );
    assert_eq!(log[1].mech, "OAUTHBEARER");
    assert_eq!(log[2].challenge_response.as_deref(), Some(""));
    // A token from another mailbox is refused.
    let mut c = Client::connect(addr);
    c.greet();
    let other = b64(format!("user=x@example.com\x01auth=Bearer {at}\x01\x01").as_bytes());
    assert!(c.cmd(&format!("AUTH XOAUTH2 {other}")).starts_with("334"));
}

// ----------------------------------------------------------------- delivery

#[test]
fn refresh_token_grant_delivers_over_xoauth2_to_a_microsoft_style_smarthost() {
    let idp = Idp::start();
    let sink = Sink::start(Opts::microsoft(idp.validator()));
    let mut relay = prepare(&idp, &sink, "microsoft", "");
    let rt = idp.new_refresh_token();
    seed(&relay, &rt);
    relay.spawn();
    let id = submit(&relay, "oauth");
    let txns = wait_delivered(&relay, &sink, 1);
    relay.wait_log(&format!("delivery {id}: sent to smarthost"));
    let reqs = idp.token_requests(None);
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let r = &reqs[0];
    assert_eq!(r.grant(), "refresh_token");
    assert_eq!(r.get("refresh_token"), Some(rt.as_str()));
    assert_eq!(r.get("client_id"), Some("test-client"));
    assert_eq!(r.get("scope"), Some(MS_SCOPE));
    assert_eq!(
        r.get("client_secret"),
        None,
        "a public client sends no secret"
    );
    assert_eq!(r.method, "POST");
    assert!(
        r.header("content-type")
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded")),
        "{:?}",
        r.headers
    );
    let token = idp.issued()[0].access_token.clone();
    let auth = sink.auth_log();
    assert_eq!(auth.len(), 1, "{auth:?}");
    assert_eq!(
        (
            auth[0].mech.as_str(),
            auth[0].user.as_str(),
            auth[0].accepted
        ),
        ("XOAUTH2", USER, true)
    );
    assert_eq!(auth[0].token, token);
    assert!(txns[0].tls);
    assert_eq!(txns[0].auth, Some((USER.to_string(), token)));
}

#[test]
fn a_token_file_holding_only_the_bare_refresh_token_works() {
    let idp = Idp::start();
    let sink = Sink::start(Opts::microsoft(idp.validator()));
    let mut relay = prepare(&idp, &sink, "microsoft", "");
    let rt = idp.new_refresh_token();
    std::fs::write(token_file(&relay), format!("{rt}\n")).unwrap();
    std::fs::set_permissions(token_file(&relay), std::fs::Permissions::from_mode(0o600)).unwrap();
    relay.spawn();
    submit(&relay, "bare");
    wait_delivered(&relay, &sink, 1);
    let r = &idp.token_requests(None)[0];
    assert_eq!(r.get("refresh_token"), Some(rt.as_str()));
}

#[test]
fn client_credentials_grant_delivers_with_the_secret_from_a_file() {
    let idp = Idp::start();
    let sink = Sink::start(Opts::microsoft(idp.validator()));
    let relay0 = prepare(&idp, &sink, "microsoft", "");
    let secret_file = relay0.dir.path().join("oauth").join("client-secret");
    std::fs::write(&secret_file, format!("{}\n", idp.client_secret())).unwrap();
    let extra = format!(
        "[oauth]\ngrant = client_credentials\nclient_secret_file = {}\n",
        secret_file.display()
    );
    let ini = merge_ini(&std::fs::read_to_string(&relay0.config).unwrap(), &extra);
    std::fs::write(&relay0.config, ini).unwrap();
    let mut relay = relay0;
    relay.spawn();
    submit(&relay, "app-only");
    wait_delivered(&relay, &sink, 1);
    let reqs = idp.token_requests(None);
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let r = &reqs[0];
    assert_eq!(r.grant(), "client_credentials");
    assert_eq!(r.get("client_id"), Some("test-client"));
    assert_eq!(r.get("client_secret"), Some(idp.client_secret().as_str()));
    assert_eq!(r.get("scope"), Some(MS_APP_SCOPE));
    assert_eq!(r.get("refresh_token"), None);
    let auth = sink.auth_log();
    assert_eq!(auth.len(), 1);
    assert!(auth[0].accepted && auth[0].mech == "XOAUTH2" && auth[0].user == USER);
}

/// app_certificate makes, in `dir`, the certificate credential of an app registration with
/// the openssl CLI: app.pem and its PKCS#8 RSA key app.key (0600), plus what the IdP verifies
/// with (app.der, app.pub.der = PKCS#1 RSAPublicKey) and a key of another pair (other.key).
fn app_certificate(dir: &Path) {
    let sh = r#"set -e
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=picorelay-app -keyout app.key -out app.pem
openssl x509 -in app.pem -outform DER -out app.der
openssl rsa -in app.key -RSAPublicKey_out -outform DER -out app.pub.der
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out other.key
chmod 600 app.key other.key
"#;
    let out = Command::new("sh")
        .arg("-c")
        .arg(sh)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn client_credentials_grant_delivers_with_a_certificate_assertion() {
    let idp = Idp::start();
    let sink = Sink::start(Opts::microsoft(idp.validator()));
    let mut relay = prepare(&idp, &sink, "microsoft", "");
    let dir = relay.dir.path().join("oauth");
    app_certificate(&dir);
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    idp.set_certificate(&read("app.der"), &read("app.pub.der"));
    let with_key = |key: &str| {
        format!(
            "[oauth]\ngrant = client_credentials\nclient_certificate = {}\nclient_key = {}\n",
            dir.join("app.pem").display(),
            dir.join(key).display()
        )
    };
    let base = std::fs::read_to_string(&relay.config).unwrap();

    // picorelay check reads the pair: the key of another certificate is named.
    std::fs::write(&relay.config, merge_ini(&base, &with_key("other.key"))).unwrap();
    let out = relay.cmd(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let want = format!(
        "{}: [oauth] client_key: {}: not the private key of client_certificate {}",
        relay.config.display(),
        dir.join("other.key").display(),
        dir.join("app.pem").display()
    );
    assert!(text.lines().any(|l| l == want), "{text}");

    std::fs::write(&relay.config, merge_ini(&base, &with_key("app.key"))).unwrap();
    let out = relay.cmd(&["check"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    relay.spawn();
    submit(&relay, "app-only with a certificate");
    wait_delivered(&relay, &sink, 1);
    let reqs = idp.token_requests(None);
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let r = &reqs[0];
    assert_eq!(r.grant(), "client_credentials");
    assert_eq!(r.get("client_id"), Some("test-client"));
    assert_eq!(r.get("client_secret"), None);
    assert_eq!(r.get("client_assertion_type"), Some(idp::JWT_BEARER));
    assert_eq!(r.get("scope"), Some(MS_APP_SCOPE));
    // The IdP checked signature, x5t#S256, aud, iss, sub, nbf/exp and jti; it granted.
    assert!(r.answered.starts_with("200"), "{}", r.answered);
    let auth = sink.auth_log();
    assert_eq!(auth.len(), 1);
    assert!(auth[0].accepted && auth[0].mech == "XOAUTH2" && auth[0].user == USER);

    // The next token request signs a new assertion (a replayed jti would be refused): the
    // token dies and the open connection drops, so the relay logs in again with a new one.
    idp.kill_issued();
    sink.hang_up();
    submit(&relay, "second token");
    wait_delivered(&relay, &sink, 2);
    let reqs = idp.token_requests(None);
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert!(reqs[1].answered.starts_with("200"), "{}", reqs[1].answered);
    assert_ne!(
        reqs[0].get("client_assertion"),
        reqs[1].get("client_assertion")
    );
}

/// google_relay is a relay for provider google with a confidential client (Google "Desktop
/// app" clients have a secret), seeded with a valid refresh token, not started.
fn google_relay(idp: &Idp, sink: &Sink, extra: &str) -> Relay {
    idp.set_public(false);
    let extra = merge_ini(
        &format!("[oauth]\nclient_secret = {}\n", idp.client_secret()),
        extra,
    );
    let relay = prepare(idp, sink, "google", &extra);
    seed(&relay, &idp.new_refresh_token());
    relay
}

#[test]
fn google_provider_uses_xoauth2_when_gmail_offers_both() {
    let idp = Idp::start();
    let sink = Sink::start(Opts::gmail(idp.validator()));
    let mut relay = google_relay(&idp, &sink, "");
    relay.spawn();
    submit(&relay, "gmail");
    wait_delivered(&relay, &sink, 1);
    let r = &idp.token_requests(None)[0];
    assert_eq!(r.get("scope"), Some(GOOGLE_SCOPE));
    assert_eq!(r.get("client_secret"), Some(idp.client_secret().as_str()));
    let auth = sink.auth_log();
    assert_eq!(auth.len(), 1, "{auth:?}");
    assert_eq!(auth[0].mech, "XOAUTH2");
    assert!(auth[0].accepted);
}

#[test]
fn oauthbearer_is_used_when_it_is_the_only_oauth_mechanism_offered() {
    let idp = Idp::start();
    let sink = Sink::start(Opts::starttls().with_oauth(
        "PLAIN OAUTHBEARER",
        Refusal::Gmail,
        idp.validator(),
    ));
    let mut relay = google_relay(&idp, &sink, "");
    relay.spawn();
    submit(&relay, "bearer");
    wait_delivered(&relay, &sink, 1);
    let auth = sink.auth_log();
    assert_eq!(auth.len(), 1, "{auth:?}");
    assert_eq!(auth[0].mech, "OAUTHBEARER");
    assert!(auth[0].accepted, "{auth:?}");
    assert_eq!(auth[0].user, USER);
}

#[test]
fn auth_oauthbearer_forces_oauthbearer_when_xoauth2_is_offered_too() {
    let idp = Idp::start();
    let sink = Sink::start(Opts::gmail(idp.validator()));
    let mut relay = google_relay(&idp, &sink, "[smarthost]\nauth = oauthbearer\n");
    relay.spawn();
    submit(&relay, "forced");
    wait_delivered(&relay, &sink, 1);
    let auth = sink.auth_log();
    assert_eq!(
        auth.iter()
            .map(|a| (a.mech.as_str(), a.accepted))
            .collect::<Vec<_>>(),
        [("OAUTHBEARER", true)]
    );
}

// ------------------------------------------------------------- token lifetime

#[test]
fn one_access_token_serves_thirty_messages_over_several_connections() {
    let idp = Idp::start();
    let sink = Sink::start(Opts::microsoft(idp.validator()));
    let relay = started(&idp, &sink, "microsoft", "");
    for round in 1..=3 {
        for i in 0..10 {
            submit(&relay, &format!("round {round} message {i}"));
        }
        wait_delivered(&relay, &sink, 10 * round);
        // The smarthost drops idle clients: the next round needs a new connection and login.
        sink.hang_up();
    }
    assert_eq!(sink.txns().len(), 30);
    assert!(
        sink.connections() >= 3,
        "{} connections",
        sink.connections()
    );
    assert_eq!(idp.count(None), 1, "{:?}", idp.token_requests(None));
    let token = idp.issued()[0].access_token.clone();
    let auth = sink.auth_log();
    assert!(auth.len() >= 3, "{auth:?}");
    assert!(
        auth.iter().all(|a| a.accepted && a.token == token),
        "{auth:?}"
    );
}

/// refresh_before_expiry: a token that lives 4 s is replaced once 2 s of it are gone (less
/// than min(10 min, half its lifetime) left), and the smarthost never sees it expired.
fn refresh_before_expiry(expires: Expires) {
    let idp = Idp::start();
    idp.set_expires(expires);
    let sink = Sink::start(Opts::microsoft(idp.validator()));
    let relay = started(&idp, &sink, "microsoft", "");
    submit(&relay, "first");
    wait_delivered(&relay, &sink, 1);
    sink.hang_up();
    let first = idp.issued()[0].clone();
    // Past half the lifetime (with 1.5 s of slack for when the relay read the answer), not
    // past its end.
    wait_for("3.5 s of the token's life to pass", || {
        first.at.elapsed() >= Duration::from_millis(3500)
    });
    submit(&relay, "second");
    wait_delivered(&relay, &sink, 2);
    let auth = sink.auth_log();
    assert!(
        idp.count(None) >= 2,
        "no new token request: {:?}",
        idp.token_requests(None)
    );
    assert!(
        auth.iter().all(|a| a.accepted),
        "the smarthost refused a token (expired?): {auth:?}"
    );
    let last = auth.last().unwrap();
    assert_ne!(last.token, first.access_token, "{auth:?}");
}

#[test]
fn access_token_is_refreshed_before_it_expires() {
    refresh_before_expiry(Expires::Num(4));
}

#[test]
fn expires_in_given_as_a_string_is_honoured() {
    refresh_before_expiry(Expires::Str(4));
}

#[test]
fn rotated_refresh_token_is_stored_atomically_with_mode_0600() {
    let idp = Idp::start();
    idp.set_rotate(true);
    idp.set_expires(Expires::Num(4));
    let sink = Sink::start(Opts::microsoft(idp.validator()));
    let mut relay = prepare(&idp, &sink, "microsoft", "");
    let rt1 = idp.new_refresh_token();
    seed(&relay, &rt1);
    relay.spawn();
    submit(&relay, "first");
    wait_delivered(&relay, &sink, 1);
    sink.hang_up();
    let first = idp.issued()[0].clone();
    wait_for("3 s of the token's life to pass", || {
        first.at.elapsed() >= Duration::from_secs(3)
    });
    submit(&relay, "second");
    wait_delivered(&relay, &sink, 2);
    let reqs = idp.token_requests(Some("refresh_token"));
    assert!(reqs.len() >= 2, "{reqs:?}");
    assert!(reqs.iter().all(|r| r.answered == "200"), "{reqs:?}");
    // The file holds the one refresh token the IdP still takes: the newest.
    let valid = idp.valid_refresh_tokens();
    assert_eq!(valid.len(), 1);
    let tf = token_file(&relay);
    assert_eq!(stored_refresh(&tf).as_deref(), Some(valid[0].as_str()));
    let text = std::fs::read_to_string(&tf).unwrap();
    assert!(!text.contains(&rt1), "{text}");
    assert_eq!(mode(&tf), 0o600);
    let names: Vec<String> = std::fs::read_dir(tf.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["oauth-token"], "leftovers next to the token file");
}

#[test]
fn concurrent_connections_share_one_refresh_and_never_reuse_a_spent_refresh_token() {
    // Microsoft invalidates a refresh token once it has been used: senders that refresh at
    // the same time with the same refresh token would get invalid_grant (and pause the queue).
    let idp = Idp::start();
    idp.set_rotate(true);
    idp.set_expires(Expires::Num(4));
    let sink = Sink::start(Opts::microsoft(idp.validator()));
    let relay = started(&idp, &sink, "microsoft", "");
    for round in 1..=2 {
        let since = Instant::now();
        for i in 0..12 {
            submit(&relay, &format!("round {round} message {i}"));
        }
        wait_delivered(&relay, &sink, 12 * round);
        sink.hang_up();
        // Let the token get old, so the next round's connections all need a new one.
        wait_for("3.5 s to pass", || {
            since.elapsed() >= Duration::from_millis(3500)
        });
    }
    let reqs = idp.token_requests(None);
    assert!(
        reqs.iter().all(|r| r.answered == "200"),
        "a spent refresh token was used: {reqs:?}"
    );
    assert!(sink.auth_log().iter().all(|a| a.accepted));
    let valid = idp.valid_refresh_tokens();
    assert_eq!(
        stored_refresh(&token_file(&relay)).as_deref(),
        Some(valid[0].as_str())
    );
}

#[test]
fn kill9_right_after_a_refresh_keeps_the_newest_refresh_token() {
    let idp = Idp::start();
    idp.set_rotate(true);
    let sink = Sink::start(Opts::microsoft(idp.validator()));
    let mut relay = started(&idp, &sink, "microsoft", "");
    submit(&relay, "before the crash");
    // The relay stores the rotated refresh token before it uses the access token that came
    // with it: once the smarthost has seen that access token, the file must hold it.
    wait_for("the smarthost to see the new access token", || {
        let issued = idp.issued();
        issued
            .first()
            .is_some_and(|i| sink.auth_log().iter().any(|a| a.token == i.access_token))
    });
    relay.kill9();
    let rt2 = idp.issued()[0].refresh_token.clone().expect("rotated");
    assert_eq!(stored_refresh(&token_file(&relay)), Some(rt2.clone()));
    relay.spawn();
    submit(&relay, "after the restart");
    wait_for("the message after the restart", || {
        sink.txns()
            .iter()
            .any(|t| t.data.contains("Subject: after the restart"))
    });
    let reqs = idp.token_requests(Some("refresh_token"));
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[1].get("refresh_token"), Some(rt2.as_str()));
    assert_eq!(reqs[1].answered, "200");
}

// ------------------------------------------------------------- failures

#[test]
fn invalid_grant_pauses_without_bouncing_and_recovers_after_a_new_login() {
    let idp = Idp::start();
    let sink = Sink::start(Opts::microsoft(idp.validator()));
    let mut relay = prepare(&idp, &sink, "microsoft", "");
    // A refresh token the IdP does not take (revoked, expired, password changed).
    seed(&relay, &idp::make_refresh_token());
    relay.spawn();
    let id = submit(&relay, "needs a person");
    wait_for("queue list to show invalid_grant", || {
        relay.queue_line(&id).contains("invalid_grant")
    });
    relay.wait_log("picorelay oauth login");
    let log = relay.log_text();
    let warn: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("invalid_grant"))
        .collect();
    assert_eq!(warn.len(), 1, "logged once:\n{log}");
    assert!(
        warn[0].contains("AADSTS70000") && warn[0].contains("picorelay oauth login"),
        "{}",
        warn[0]
    );
    let j = wait_status(&relay, "paused with an auth error", |j| {
        j.get("delivery.paused") == &Json::Bool(true) && auth_error(j).contains("invalid_grant")
    });
    assert_eq!(j.num("queue.messages"), 1.0);
    let (code, text, _) = run(&relay, &["status"]);
    assert_eq!(code, Some(0));
    assert!(
        text.contains("paused") && text.contains("invalid_grant"),
        "{text}"
    );
    assert!(sink.txns().is_empty());
    assert_eq!(relay.queue_ids(), vec![id.clone()], "nothing bounced");

    // The fix: sign in again (device flow), then flush.
    idp.approve_device();
    let (code, out, err) = run(&relay, &["oauth", "login"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let new_rt = idp.issued().last().unwrap().refresh_token.clone().unwrap();
    assert_eq!(stored_refresh(&token_file(&relay)), Some(new_rt.clone()));
    let (code, _, err) = run(&relay, &["queue", "flush"]);
    assert_eq!(code, Some(0), "{err}");
    let txns = wait_delivered(&relay, &sink, 1);
    assert_eq!(txns.len(), 1);
    assert_no_bounce(&sink);
    let last = idp.token_requests(Some("refresh_token")).pop().unwrap();
    assert_eq!(last.get("refresh_token"), Some(new_rt.as_str()));
}

#[test]
fn invalid_grant_is_warned_even_while_paused_for_a_refused_login() {
    // Delivery is already paused at the auth stage for a refused token when the refresh
    // token is revoked too: the new cause needs a person, so it must reach the log at WARN
    // (the default level is info) with what to do, not only as "still paused" at debug.
    let idp = Idp::start();
    idp.kill_all_tokens(true);
    let sink = Sink::start(Opts::microsoft(idp.validator()));
    let relay = started(&idp, &sink, "microsoft", "");
    let id = submit(&relay, "two causes");
    wait_for("queue list to show the 535", || {
        relay.queue_line(&id).contains("535")
    });
    idp.revoke_refresh_tokens();
    wait_for("queue list to show invalid_grant", || {
        relay.queue_line(&id).contains("invalid_grant")
    });
    wait_for("a WARN line about invalid_grant", || {
        relay.log_text().lines().any(|l| {
            l.contains("WARN") && l.contains("invalid_grant") && l.contains("picorelay oauth login")
        })
    });
    assert!(sink.txns().is_empty());
}

#[test]
fn token_endpoint_503_is_transient_and_the_message_goes_out_later() {
    let idp = Idp::start();
    idp.script(
        None,
        Answer::Status(503, "<html><body>Service Unavailable</body></html>".into()),
        None,
    );
    let sink = Sink::start(Opts::microsoft(idp.validator()));
    let relay = started(&idp, &sink, "microsoft", "");
    let id = submit(&relay, "later");
    idp.wait_requests(None, 2);
    wait_for("queue list to show the 503", || {
        relay.queue_line(&id).contains("503")
    });
    assert!(sink.txns().is_empty());
    assert!(!sink.saw("AUTH"), "no token, no login");
    idp.clear_script();
    wait_delivered(&relay, &sink, 1);
    assert_eq!(sink.txns().len(), 1);
    assert_no_bounce(&sink);
}

#[test]
fn token_endpoint_429_no_answer_and_temporarily_unavailable_are_transient() {
    let idp = Idp::start();
    // One after the other: throttled, a connection closed without an answer, and the OAuth
    // error that means "later" (oauth-providers.md: transient).
    idp.script(
        None,
        Answer::Status(429, "<html><body>Too Many Requests</body></html>".into()),
        Some(1),
    );
    idp.script(None, Answer::Close, Some(1));
    idp.script(
        None,
        Answer::Error(
            400,
            "temporarily_unavailable".into(),
            "AADSTS90033: A transient error has occurred. Please try again.".into(),
        ),
        Some(1),
    );
    let sink = Sink::start(Opts::microsoft(idp.validator()));
    let relay = started(&idp, &sink, "microsoft", "");
    let id = submit(&relay, "throttled");
    wait_delivered(&relay, &sink, 1);
    relay.wait_log(&format!("delivery {id}: sent to smarthost"));
    let answers: Vec<String> = idp
        .token_requests(None)
        .into_iter()
        .map(|r| r.answered)
        .collect();
    assert_eq!(
        answers,
        ["429", "close", "400 temporarily_unavailable", "200"],
        "each answer was retried"
    );
    assert_no_bounce(&sink);
    let log = relay.log_text();
    assert!(
        !log.contains("picorelay oauth login"),
        "a transient failure asks for no login:\n{log}"
    );
}

#[test]
fn chunked_token_answer_is_understood() {
    let idp = Idp::start();
    idp.script(None, Answer::Chunked, Some(1));
    let sink = Sink::start(Opts::microsoft(idp.validator()));
    let relay = started(&idp, &sink, "microsoft", "");
    submit(&relay, "chunked");
    wait_delivered(&relay, &sink, 1);
    assert_eq!(idp.count(None), 1, "{:?}", idp.token_requests(None));
    let auth = sink.auth_log();
    assert_eq!(auth.len(), 1);
    assert!(auth[0].accepted);
    assert_eq!(auth[0].token, idp.issued()[0].access_token);
}

#[test]
fn token_answer_dripping_past_the_timeout_is_transient() {
    let idp = Idp::start();
    // One byte every 300 ms: ~75 s for the whole answer, each read well inside 3 s. Only a
    // deadline on the whole request ends it; then the retry gets a normal answer.
    idp.script(None, Answer::Drip(Duration::from_millis(300)), Some(1));
    let sink = Sink::start(Opts::microsoft(idp.validator()));
    let relay = started(&idp, &sink, "microsoft", "");
    submit(&relay, "slow");
    wait_delivered(&relay, &sink, 1);
    let reqs = idp.token_requests(None);
    assert!(reqs.len() >= 2, "{reqs:?}");
    assert_eq!(reqs[0].answered, "drip");
    assert!(sink.auth_log().iter().all(|a| a.accepted));
    assert_no_bounce(&sink);
}

#[test]
fn a_refused_token_gets_one_fresh_token_and_one_more_auth() {
    let idp = Idp::start();
    idp.kill_next_tokens(1);
    let sink = Sink::start(Opts::microsoft(idp.validator()));
    let relay = started(&idp, &sink, "microsoft", "");
    submit(&relay, "second try");
    wait_delivered(&relay, &sink, 1);
    assert_eq!(idp.count(None), 2, "{:?}", idp.token_requests(None));
    let auth = sink.auth_log();
    assert_eq!(auth.len(), 2, "{auth:?}");
    assert_eq!(sink.auth_attempts()[0], 2, "both on the first connection");
    assert!(!auth[0].accepted && auth[1].accepted, "{auth:?}");
    let issued = idp.issued();
    assert_eq!(auth[0].token, issued[0].access_token);
    assert_eq!(auth[1].token, issued[1].access_token);
}

#[test]
fn a_token_refused_twice_pauses_delivery_without_bouncing() {
    let idp = Idp::start();
    idp.kill_all_tokens(true);
    let sink = Sink::start(Opts::microsoft(idp.validator()));
    let relay = started(&idp, &sink, "microsoft", "");
    let id = submit(&relay, "refused");
    wait_for("queue list to show the 535", || {
        relay.queue_line(&id).contains("535")
    });
    let on_first = || -> Vec<_> {
        sink.auth_log()
            .into_iter()
            .filter(|a| a.conn == 1)
            .collect()
    };
    wait_for("two AUTH attempts on the first connection", || {
        on_first().len() >= 2
    });
    let first = on_first();
    assert_eq!(first.len(), 2, "{first:?}");
    assert!(first.iter().all(|a| !a.accepted));
    assert_ne!(
        first[0].token, first[1].token,
        "the retry used a fresh token"
    );
    let j = wait_status(&relay, "paused with an auth error", |j| {
        j.get("delivery.paused") == &Json::Bool(true) && !auth_error(j).is_empty()
    });
    assert!(auth_error(&j).contains("535"), "{j:?}");
    assert!(sink.txns().is_empty());
    assert_eq!(relay.queue_ids(), vec![id.clone()], "nothing bounced");
    // The mailbox is fixed: the next attempt goes through.
    idp.kill_all_tokens(false);
    run(&relay, &["queue", "flush"]);
    wait_delivered(&relay, &sink, 1);
    assert_no_bounce(&sink);
    assert!(
        sink.auth_attempts().iter().all(|&n| n <= 2),
        "{:?}",
        sink.auth_attempts()
    );
}

#[test]
fn gmail_334_challenge_gets_an_empty_answer_then_a_fresh_token() {
    let idp = Idp::start();
    idp.kill_next_tokens(1);
    let sink = Sink::start(Opts::gmail(idp.validator()));
    let mut relay = google_relay(&idp, &sink, "");
    relay.spawn();
    submit(&relay, "challenge");
    wait_delivered(&relay, &sink, 1);
    let auth = sink.auth_log();
    assert_eq!(auth.len(), 2, "{auth:?}");
    assert_eq!(auth[0].mech, "XOAUTH2");
    assert!(!auth[0].accepted && auth[1].accepted, "{auth:?}");
    assert_eq!(auth[0].challenge_response.as_deref(), Some(""));
    assert_eq!(auth[0].conn, auth[1].conn);
    assert_eq!(idp.count(None), 2);
}

#[test]
fn gmail_challenge_on_oauthbearer_is_answered_per_rfc7628() {
    let idp = Idp::start();
    idp.kill_next_tokens(1);
    let sink =
        Sink::start(Opts::starttls().with_oauth("OAUTHBEARER", Refusal::Gmail, idp.validator()));
    let mut relay = google_relay(&idp, &sink, "");
    relay.spawn();
    submit(&relay, "challenge");
    wait_delivered(&relay, &sink, 1);
    let auth = sink.auth_log();
    assert_eq!(auth.len(), 2, "{auth:?}");
    // RFC 7628 §3.2.3: the client answers the error challenge with %x01 (or, as many do,
    // an empty line).
    let resp = auth[0].challenge_response.clone().unwrap_or_default();
    assert!(resp == "AQ==" || resp.is_empty(), "{resp:?}");
    assert!(auth[1].accepted, "{auth:?}");
}

// ------------------------------------------------------------- oauth login

#[test]
fn device_login_waits_through_pending_and_slow_down_then_stores_the_token() {
    let idp = Idp::start();
    idp.device_script(&["authorization_pending", "slow_down"]);
    idp.approve_device();
    // No token_file key: the default is oauth-token in the spool folder.
    let relay = prepare_with(&idp, "127.0.0.1:25", "microsoft", "", false);
    std::fs::create_dir_all(relay.spool()).unwrap();
    let mut p = spawn(&relay, &["oauth", "login"]);
    let dev = {
        p.wait_line("the user code", |l| {
            let d = idp.device();
            !d.user_code.is_empty() && l.contains(&d.user_code)
        });
        idp.device()
    };
    let (code, out, err) = p.finish();
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.lines()
            .any(|l| l.contains(&dev.user_code) && l.contains(&dev.verification_uri)),
        "one line with the URL and the code:\n{out}"
    );
    let tf = relay.spool().join("oauth-token");
    assert!(
        out.lines()
            .any(|l| l.contains("stored") && l.contains(&tf.display().to_string())),
        "{out}"
    );
    let rt = idp.issued().last().unwrap().refresh_token.clone().unwrap();
    assert_eq!(stored_refresh(&tf), Some(rt));
    assert_eq!(mode(&tf), 0o600);
    // signed_in= and saved= carry unix seconds of this login.
    let text = std::fs::read_to_string(&tf).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for key in ["signed_in=", "saved="] {
        let v: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} line:\n{text}"))
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{key}: {e}:\n{text}"));
        assert!(v <= now && v + 120 >= now, "{key}{v}, now {now}");
    }
    // The device request: the public client's id and the Microsoft scope, no secret.
    let dreq: Vec<_> = idp
        .requests()
        .into_iter()
        .filter(|r| r.path == idp::DEVICE_PATH)
        .collect();
    assert_eq!(dreq.len(), 1);
    assert_eq!(dreq[0].get("client_id"), Some("test-client"));
    assert_eq!(dreq[0].get("scope"), Some(MS_SCOPE));
    assert_eq!(dreq[0].get("client_secret"), None);
    // Polls: pending, slow_down, then the token; after slow_down the interval grew by 5 s.
    let polls = idp.token_requests(Some(DEVICE_GRANT));
    let answers: Vec<&str> = polls.iter().map(|r| r.answered.as_str()).collect();
    assert_eq!(
        answers,
        ["400 authorization_pending", "400 slow_down", "200"]
    );
    assert!(polls
        .iter()
        .all(|r| r.get("device_code") == Some(dev.device_code.as_str())));
    let gap = polls[2].at - polls[1].at;
    assert!(
        gap >= Duration::from_millis(5500),
        "polled again after {gap:?}"
    );
    let gap = polls[1].at - polls[0].at;
    assert!(
        gap >= Duration::from_millis(900),
        "polled again after {gap:?}"
    );
    assert_no_secrets(&format!("{out}{err}"), &idp.secrets());
}

#[test]
fn device_login_refused_exits_1_and_leaves_the_token_file_alone() {
    for error in ["access_denied", "authorization_declined", "expired_token"] {
        let idp = Idp::start();
        idp.device_script(&[error]);
        let relay = prepare_with(&idp, "127.0.0.1:25", "microsoft", "", true);
        seed(&relay, "1//old-token-kept");
        let before = std::fs::read(token_file(&relay)).unwrap();
        let (code, out, err) = run(&relay, &["oauth", "login"]);
        assert_eq!(code, Some(1), "{error}: {out}{err}");
        assert!(err.contains(error), "{error}: stderr:\n{err}");
        assert_eq!(
            std::fs::read(token_file(&relay)).unwrap(),
            before,
            "{error}"
        );
    }
}

/// The authorization URL `oauth login` printed (provider google), taken apart.
struct AuthUrl {
    query: Vec<(String, String)>,
}

impl AuthUrl {
    fn get(&self, k: &str) -> String {
        self.query
            .iter()
            .find(|(kk, _)| kk == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {k} in the authorization URL: {:?}", self.query))
    }
}

/// start_pkce_login runs `oauth login` for provider google, reads the printed URL, checks it
/// and arms the IdP with its challenge and redirect_uri; returns the process, the URL's
/// parts and the code the "browser" gets.
fn start_pkce_login(idp: &Idp, relay: &Relay) -> (Proc, AuthUrl, String) {
    let mut p = spawn(relay, &["oauth", "login"]);
    let prefix = format!("{}?", idp.auth_url());
    let line = p.wait_line("the authorization URL", |l| l.starts_with(&prefix));
    let url = AuthUrl {
        query: idp::form_decode(line.trim_end()[prefix.len()..].trim()),
    };
    assert_eq!(url.get("client_id"), "test-client");
    assert_eq!(url.get("response_type"), "code");
    assert_eq!(url.get("scope"), GOOGLE_SCOPE);
    assert_eq!(url.get("code_challenge_method"), "S256");
    assert_eq!(url.get("access_type"), "offline");
    assert_eq!(url.get("prompt"), "consent");
    assert!(!url.get("state").is_empty());
    let challenge = url.get("code_challenge");
    assert_eq!(challenge.len(), 43, "{challenge}");
    let redirect = url.get("redirect_uri");
    assert!(
        redirect.starts_with("http://127.0.0.1:") && redirect.ends_with('/'),
        "{redirect}"
    );
    // Google's codes hold '/': the address carries it percent-encoded.
    let code = format!("4/0Aea{}", idp::random_hex(12));
    idp.expect_pkce(&code, &challenge, &redirect);
    (p, url, code)
}

fn google_login_relay(idp: &Idp) -> Relay {
    idp.set_public(false);
    prepare_with(
        idp,
        "127.0.0.1:25",
        "google",
        &format!("[oauth]\nclient_secret = {}\n", idp.client_secret()),
        true,
    )
}

/// check_pkce_success: exit 0, "stored", the file holds the issued token, and the code
/// exchange carried what RFC 7636 and Google want.
fn check_pkce_success(idp: &Idp, relay: &Relay, p: Proc, url: &AuthUrl, code: &str) {
    let (status, out, err) = p.finish();
    assert_eq!(status, Some(0), "{out}{err}\nidp: {:?}", idp.notes());
    assert!(out.lines().any(|l| l.contains("stored")), "{out}");
    let reqs = idp.token_requests(Some("authorization_code"));
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let r = &reqs[0];
    assert_eq!(r.answered, "200", "idp: {:?}", idp.notes());
    assert_eq!(r.get("code"), Some(code));
    assert_eq!(
        r.get("redirect_uri"),
        Some(url.get("redirect_uri").as_str())
    );
    assert_eq!(r.get("client_id"), Some("test-client"));
    assert_eq!(r.get("client_secret"), Some(idp.client_secret().as_str()));
    let rt = idp.issued()[0].refresh_token.clone().unwrap();
    assert_eq!(stored_refresh(&token_file(relay)), Some(rt));
    assert_eq!(mode(&token_file(relay)), 0o600);
    assert_no_secrets(&format!("{out}{err}"), &idp.secrets());
}

#[test]
fn pkce_login_by_pasting_the_redirect_address() {
    let idp = Idp::start();
    let relay = google_login_relay(&idp);
    let (mut p, url, code) = start_pkce_login(&idp, &relay);
    p.send_line(&format!(
        "{}?state={}&code={}&scope={}",
        url.get("redirect_uri"),
        pct_encode(&url.get("state")),
        pct_encode(&code),
        pct_encode(GOOGLE_SCOPE)
    ));
    check_pkce_success(&idp, &relay, p, &url, &code);
}

#[test]
fn pkce_login_accepts_a_bare_query_pasted_back() {
    let idp = Idp::start();
    let relay = google_login_relay(&idp);
    let (mut p, url, code) = start_pkce_login(&idp, &relay);
    p.send_line(&format!(
        "?state={}&code={}",
        pct_encode(&url.get("state")),
        pct_encode(&code)
    ));
    check_pkce_success(&idp, &relay, p, &url, &code);
}

#[test]
fn pkce_login_by_the_browser_reaching_the_loopback_listener() {
    let idp = Idp::start();
    let relay = google_login_relay(&idp);
    let (p, url, code) = start_pkce_login(&idp, &relay);
    let redirect = url.get("redirect_uri");
    let port: u16 = redirect["http://127.0.0.1:".len()..redirect.len() - 1]
        .parse()
        .unwrap();
    // Any local process can reach the port: a forged answer must not end the sign-in.
    let mut forged = std::net::TcpStream::connect(("127.0.0.1", port)).expect("the listener");
    forged.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        forged,
        "GET /?error=access_denied HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    let mut page = String::new();
    let _ = forged.read_to_string(&mut page);
    assert!(page.starts_with("HTTP/1.1 400"), "{page}");
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("the loopback listener");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        s,
        "GET /?state={}&code={}&scope={} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: test-browser\r\nAccept: text/html\r\nConnection: close\r\n\r\n",
        pct_encode(&url.get("state")),
        pct_encode(&code),
        pct_encode(GOOGLE_SCOPE)
    )
    .unwrap();
    let mut page = String::new();
    let _ = s.read_to_string(&mut page);
    assert!(
        page.starts_with("HTTP/1.1 200") || page.starts_with("HTTP/1.0 200"),
        "{page}"
    );
    assert!(page.to_ascii_lowercase().contains("<html"), "{page}");
    check_pkce_success(&idp, &relay, p, &url, &code);
}

#[test]
fn pkce_login_with_a_wrong_state_is_refused() {
    let idp = Idp::start();
    let relay = google_login_relay(&idp);
    let (mut p, url, code) = start_pkce_login(&idp, &relay);
    p.send_line(&format!(
        "{}?state=forged{}&code={}",
        url.get("redirect_uri"),
        idp::random_hex(4),
        pct_encode(&code)
    ));
    let (status, out, err) = p.finish();
    assert_eq!(status, Some(1), "{out}{err}");
    assert!(err.contains("state"), "{err}");
    assert_eq!(idp.count(Some("authorization_code")), 0);
    assert!(!token_file(&relay).exists());
}

// ------------------------------------------------------------- the commands

#[test]
fn oauth_status_exits_0_when_a_token_is_granted_and_1_when_not() {
    let idp = Idp::start();
    idp.set_rotate(true);
    let relay = prepare_with(&idp, "127.0.0.1:25", "microsoft", "", true);
    seed(&relay, &idp.new_refresh_token());
    for round in 1..=2 {
        // Twice: the refresh token rotated by the first run was stored, or the second fails.
        let (code, out, err) = run(&relay, &["oauth", "status"]);
        assert_eq!(code, Some(0), "round {round}: {out}{err}");
        assert!(out.contains("valid for"), "{out}");
        assert!(out.to_ascii_lowercase().contains("refresh token"), "{out}");
        assert_eq!(idp.count(None), round, "one token request per run");
        assert_no_secrets(&format!("{out}{err}"), &idp.secrets());
    }
    idp.revoke_refresh_tokens();
    let (code, out, err) = run(&relay, &["oauth", "status"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        format!("{out}{err}").contains("invalid_grant"),
        "{out}{err}"
    );
    assert_eq!(idp.count(None), 3);
    assert_no_secrets(&format!("{out}{err}"), &idp.secrets());
}

#[test]
fn probe_says_where_the_token_came_from_and_masks_the_login() {
    let idp = Idp::start();
    let sink = Sink::start(Opts::microsoft(idp.validator()));
    let relay = prepare(&idp, &sink, "microsoft", "");
    seed(&relay, &idp.new_refresh_token());
    let (code, out, err) = run(&relay, &["probe"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(&idp.token_url()), "{out}");
    assert!(out.contains("valid"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains("AUTH XOAUTH2") && l.contains("********")),
        "{out}"
    );
    let auth = sink.auth_log();
    assert_eq!(auth.len(), 1);
    assert!(auth[0].accepted);
    let mut secrets = idp.secrets();
    secrets.extend(auth[0].payloads.iter().cloned());
    assert_no_secrets(&format!("{out}{err}"), &secrets);
}

#[test]
fn check_accepts_oauth_configs_and_names_each_bad_key() {
    let idp = Idp::start();
    let dir = TempDir::new("oauth-check");
    let ca = certs().ca.display().to_string();
    let tf = dir.path().join("oauth-token");
    std::fs::write(&tf, "refresh_token=1//x\n").unwrap();
    std::fs::set_permissions(&tf, std::fs::Permissions::from_mode(0o600)).unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, "s3cret\n").unwrap();
    let check = |name: &str, extra: &str| {
        let cfg = dir.path().join(format!("{name}.ini"));
        let base = format!(
            "{}[smarthost]\nhost = 127.0.0.1:587\ntls = starttls\nca_file = {ca}\nusername = {USER}\n",
            base_ini(&dir.path().join("spool"))
        );
        std::fs::write(&cfg, merge_ini(&base, extra)).unwrap();
        let out = Command::new(bin())
            .arg("-c")
            .arg(&cfg)
            .arg("check")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text, cfg)
    };
    let endpoints = format!(
        "token_url = {}\nca_file = {ca}\ntimeout = 3s\ntoken_file = {}\n",
        idp.token_url(),
        tf.display()
    );
    let good = [
        (
            "ms-device",
            format!(
                "[oauth]\nprovider = microsoft\ngrant = refresh_token\nclient_id = test-client\ndevice_url = {}\n{endpoints}",
                idp.device_url()
            ),
        ),
        (
            "ms-app",
            format!(
                "[smarthost]\nauth = xoauth2\n[oauth]\nprovider = microsoft\ngrant = client_credentials\ntenant = contoso.onmicrosoft.com\nclient_id = test-client\nclient_secret_file = {}\n{endpoints}",
                secret_file.display()
            ),
        ),
        (
            "google",
            format!(
                "[oauth]\nprovider = google\nclient_id = test-client\nclient_secret = s3cret\nauth_url = {}\n{endpoints}",
                idp.auth_url()
            ),
        ),
        (
            "custom",
            format!("[smarthost]\nauth = oauthbearer\n[oauth]\nprovider = custom\nclient_id = test-client\nscope = smtp\n{endpoints}"),
        ),
    ];
    for (name, extra) in &good {
        let (code, text, _) = check(name, extra);
        assert_eq!(code, Some(0), "{name}: {text}");
    }
    let bad = [
        (
            "azure",
            "[oauth]\nprovider = azure\nclient_id = x\n",
            "[oauth] provider",
        ),
        (
            "custom-no-url",
            "[oauth]\nprovider = custom\nclient_id = x\nscope = smtp\n",
            "[oauth] token_url",
        ),
        (
            "app-no-secret",
            "[oauth]\nprovider = microsoft\ngrant = client_credentials\nclient_id = x\n",
            "[oauth] client_secret",
        ),
        (
            "xoauth2-no-oauth",
            "[smarthost]\nauth = xoauth2\n",
            "[smarthost] auth",
        ),
        (
            "bad-timeout",
            "[oauth]\nprovider = microsoft\nclient_id = x\ntimeout = soon\n",
            "[oauth] timeout",
        ),
    ];
    for (name, extra, key) in bad {
        let (code, text, cfg) = check(name, extra);
        assert_eq!(code, Some(1), "{name}: {text}");
        let prefix = format!("{}: {key}: ", cfg.display());
        assert!(
            text.lines().any(|l| l.starts_with(&prefix)),
            "{name}: no line starting {prefix:?}:\n{text}"
        );
    }
}

#[test]
fn no_token_or_secret_appears_in_any_output() {
    let idp = Idp::start();
    idp.set_rotate(true);
    // A confidential client: whether the secret goes to the device endpoint too is the
    // relay's choice; it must never be printed either way.
    idp.set_secret_optional();
    idp.approve_device();
    let sink = Sink::start(Opts::microsoft(idp.validator()));
    let mut relay = prepare(
        &idp,
        &sink,
        "microsoft",
        &format!("[oauth]\nclient_secret = {}\n", idp.client_secret()),
    );
    let mut outputs = Vec::new();
    let mut record = |what: &str, (code, out, err): (Option<i32>, String, String)| {
        outputs.push(format!("==== {what} (exit {code:?})\n{out}{err}"));
        code
    };
    assert_eq!(
        record("oauth login", run(&relay, &["oauth", "login"])),
        Some(0)
    );
    relay.spawn();
    submit(&relay, "secret-free");
    wait_delivered(&relay, &sink, 1);
    assert_eq!(record("probe", run(&relay, &["probe"])), Some(0));
    assert_eq!(
        record("oauth status", run(&relay, &["oauth", "status"])),
        Some(0)
    );
    record("status", run(&relay, &["status"]));
    record("status --json", run(&relay, &["status", "--json"]));
    record("check", run(&relay, &["check"]));
    // A refused token: the cached one and the fresh one both die, the message waits with an
    // error in `queue list` and `status`.
    idp.kill_issued();
    idp.kill_all_tokens(true);
    sink.hang_up();
    let id = submit(&relay, "refused");
    wait_for("the refusal in queue list", || {
        relay.queue_line(&id).contains("535")
    });
    record("queue list", run(&relay, &["queue", "list"]));
    record("queue show", run(&relay, &["queue", "show", &id]));
    record("status (paused)", run(&relay, &["status"]));
    record("status --json (paused)", run(&relay, &["status", "--json"]));
    // And invalid_grant in the log, status and queue list.
    idp.revoke_refresh_tokens();
    let rt = stored_refresh(&token_file(&relay)).unwrap();
    relay.signal("HUP");
    run(&relay, &["queue", "flush"]);
    wait_for("invalid_grant in queue list", || {
        relay.queue_line(&id).contains("invalid_grant")
    });
    record(
        "queue list (invalid_grant)",
        run(&relay, &["queue", "list"]),
    );
    record(
        "oauth status (invalid_grant)",
        run(&relay, &["oauth", "status"]),
    );
    let mut secrets = idp.secrets();
    secrets.push(rt);
    for a in sink.auth_log() {
        secrets.extend(a.payloads);
    }
    let all = format!(
        "{}\n==== relay log\n{}",
        outputs.join("\n"),
        relay.log_text()
    );
    assert!(idp.issued().len() >= 3, "{:?}", idp.issued());
    assert_no_secrets(&all, &secrets);
}

#[test]
fn sighup_drops_the_cached_access_token() {
    let idp = Idp::start();
    let sink = Sink::start(Opts::microsoft(idp.validator()));
    let relay = started(&idp, &sink, "microsoft", "");
    submit(&relay, "before");
    wait_delivered(&relay, &sink, 1);
    sink.hang_up();
    assert_eq!(idp.count(None), 1);
    let reloads = Relay::reload_lines;
    // The [oauth] section is reloaded too: a changed scope shows in the next token request.
    let ini = merge_ini(
        &std::fs::read_to_string(&relay.config).unwrap(),
        "[oauth]\nscope = https://outlook.office.com/SMTP.Send offline_access openid\n",
    );
    std::fs::write(&relay.config, ini).unwrap();
    let before = reloads(&relay);
    relay.signal("HUP");
    wait_for("the reload", || reloads(&relay) > before);
    submit(&relay, "after");
    wait_delivered(&relay, &sink, 2);
    let reqs = idp.token_requests(None);
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0].get("scope"), Some(MS_SCOPE));
    assert_eq!(
        reqs[1].get("scope"),
        Some("https://outlook.office.com/SMTP.Send offline_access openid")
    );
    let auth = sink.auth_log();
    assert_eq!(auth.last().unwrap().token, idp.issued()[1].access_token);
    assert!(auth.iter().all(|a| a.accepted));
}

#[test]
fn sendmail_never_reads_the_token_file_or_the_client_secret_file() {
    let idp = Idp::start();
    let relay = prepare_with(&idp, "127.0.0.1:25", "microsoft", "", true);
    let secret = relay.dir.path().join("oauth").join("secret-fifo");
    sendmail_opens_none_of(
        &relay,
        &format!("[oauth]\nclient_secret_file = {}\n", secret.display()),
        &[secret.clone(), token_file(&relay)],
    );
}

#[test]
fn sendmail_never_reads_the_client_certificate_or_key() {
    let idp = Idp::start();
    let relay = prepare_with(&idp, "127.0.0.1:25", "microsoft", "", true);
    let dir = relay.dir.path().join("oauth");
    let (cert, key) = (dir.join("cert-fifo"), dir.join("key-fifo"));
    sendmail_opens_none_of(
        &relay,
        &format!(
            "[oauth]\ngrant = client_credentials\nclient_certificate = {}\nclient_key = {}\n",
            cert.display(),
            key.display()
        ),
        &[cert.clone(), key.clone()],
    );
}

/// sendmail_opens_none_of adds `extra` to the relay's config, makes each of `fifos` a FIFO,
/// and submits a message with `picorelay sendmail`: it must be queued without opening any
/// of them (with strace when there is one; a FIFO opened for reading blocks forever).
fn sendmail_opens_none_of(relay: &Relay, extra: &str, fifos: &[PathBuf]) {
    // FIFOs: opening one to read blocks until a writer comes, which never happens here.
    for p in fifos {
        let st = Command::new("mkfifo").arg(p).status().unwrap();
        assert!(st.success());
    }
    let ini = merge_ini(&std::fs::read_to_string(&relay.config).unwrap(), extra);
    std::fs::write(&relay.config, ini).unwrap();
    let strace = Command::new("strace")
        .args(["-f", "-o", "/dev/null", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let trace = relay.dir.path().join("trace");
    let mut cmd = if strace {
        let mut c = Command::new("strace");
        c.args(["-f", "-e", "trace=open,openat,openat2", "-o"])
            .arg(&trace)
            .arg(bin());
        c
    } else {
        Command::new(bin())
    };
    let mut child = cmd
        .arg("-c")
        .arg(&relay.config)
        .args(["sendmail", "-f", "alice@example.com", "bob@example.org"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Subject: no secrets needed\n\nhello\n")
        .unwrap();
    let start = Instant::now();
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sendmail blocked: it opened one of {fifos:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    assert!(st.success(), "sendmail failed: {err}");
    let queued = std::fs::read_dir(relay.spool().join("queue"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(queued, 1, "the message is queued");
    if strace {
        let t = std::fs::read_to_string(&trace).unwrap();
        for p in fifos {
            let name = p.display().to_string();
            let opens: Vec<&str> = t.lines().filter(|l| l.contains(&name)).collect();
            assert!(opens.is_empty(), "sendmail opened {name}: {opens:?}");
        }
    } else {
        eprintln!("strace unavailable: checked with FIFOs only");
    }
}

/// seed_unused writes a token file last saved `days` ago, as a quiet box would have it.
fn seed_unused(r: &Relay, rt: &str, days: u64) -> u64 {
    let then = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - days * 86_400;
    let p = token_file(r);
    std::fs::write(
        &p,
        format!("refresh_token={rt}\nsigned_in={then}\nsaved={then}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    then
}

fn saved_time(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("saved="))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn a_refresh_token_unused_for_a_week_is_used_once_to_keep_it_valid() {
    // Microsoft voids a refresh token unused for 90 days, Google for 6 months: a box that only
    // mails when a disk fails must not find its token dead on that day.
    let idp = Idp::start();
    let sink = Sink::start(Opts::microsoft(idp.validator()));
    let mut relay = prepare(&idp, &sink, "microsoft", "");
    let rt = idp.new_refresh_token();
    let then = seed_unused(&relay, &rt, 8);
    relay.spawn();
    let reqs = idp.wait_requests(Some("refresh_token"), 1);
    assert_eq!(reqs[0].get("refresh_token"), Some(rt.as_str()));
    relay.wait_log("used once to keep it valid");
    let tf = token_file(&relay);
    assert!(
        saved_time(&tf).is_some_and(|t| t > then + 86_400),
        "the use is noted"
    );
    assert_eq!(stored_refresh(&tf).as_deref(), Some(rt.as_str()));
    assert!(
        sink.auth_log().is_empty(),
        "no smarthost login needed for it"
    );
    // The next look is an hour away: a message now reuses the token just obtained.
    submit(&relay, "after keep-alive");
    wait_delivered(&relay, &sink, 1);
    assert_eq!(idp.count(Some("refresh_token")), 1);
}

#[test]
fn a_revoked_refresh_token_is_reported_before_any_mail_needs_it() {
    let idp = Idp::start();
    let sink = Sink::start(Opts::microsoft(idp.validator()));
    let mut relay = prepare(&idp, &sink, "microsoft", "");
    let rt = idp.new_refresh_token();
    seed_unused(&relay, &rt, 30);
    idp.revoke_refresh_tokens();
    relay.spawn();
    wait_for("a WARN line about the dead refresh token", || {
        relay.log_text().lines().any(|l| {
            l.contains("WARN") && l.contains("invalid_grant") && l.contains("picorelay oauth login")
        })
    });
    let j = wait_status(&relay, "auth error", |j| {
        auth_error(j).contains("invalid_grant")
    });
    assert!(auth_error(&j).contains("picorelay oauth login"), "{j:?}");
    let warns = relay
        .log_text()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("invalid_grant"))
        .count();
    assert_eq!(warns, 1, "{}", relay.log_text());
}

#[test]
fn a_thousand_messages_need_one_token_request() {
    // The figure the closing note reports: token requests per 1000 messages sent, with four
    // devices sending at once and the smarthost dropping its connections now and then (so
    // the relay logs in again, with the token it holds).
    let idp = Idp::start();
    let sink = Sink::start(Opts::microsoft(idp.validator()));
    let relay = started(&idp, &sink, "microsoft", "");
    let addr = relay.addr();
    let devices: Vec<_> = (0..4)
        .map(|d| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                c.greet();
                for i in 0..250 {
                    let body = message(&format!("alert {d}/{i}"), "disk 3 failed\r\n");
                    let r = c.send_message("alice@example.com", &["bob@example.org"], &body);
                    assert!(r.starts_with("250"), "{r}");
                }
                c.cmd("QUIT");
            })
        })
        .collect();
    for n in [250, 500, 750] {
        wait_for(&format!("{n} messages at the smarthost"), || {
            sink.txns().len() >= n
        });
        sink.hang_up();
    }
    for d in devices {
        d.join().unwrap();
    }
    wait_delivered(&relay, &sink, 1000);
    let logins = sink.auth_log();
    let requests = idp.count(None);
    eprintln!(
        "1000 messages: {requests} token request(s), {} smarthost login(s)",
        logins.len()
    );
    assert!(
        logins.len() >= 4,
        "the relay logged in again after each hang-up: {}",
        logins.len()
    );
    assert!(logins.iter().all(|a| a.accepted));
    assert_eq!(requests, 1, "one token for the whole load");
}
