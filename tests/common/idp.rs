//! A scripted OAuth 2.0 identity provider for the OAuth tests: HTTPS on 127.0.0.1:0 with the
//! test CA's server certificate, one thread per connection, answering JSON with
//! `Connection: close`. A token endpoint for the refresh_token (optionally rotating, as
//! Microsoft does), client_credentials, device_code (RFC 8628) and authorization_code with
//! PKCE (RFC 7636) grants; client authentication by secret or by a certificate's signed JWT
//! (RFC 7523, Microsoft's PS256 with `x5t#S256`); a device authorization endpoint; scripted answers (5xx, error JSON,
//! chunked, stalled, dripped); a record of every request; and the access tokens it issued, so
//! the scripted smarthost can check a bearer token (`validator`).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::certs::certs;
use super::smarthost::server_config;
use super::wait_for;

/// Paths of the endpoints (Microsoft's shape).
pub const TOKEN_PATH: &str = "/tenant/oauth2/v2.0/token";
pub const DEVICE_PATH: &str = "/tenant/oauth2/v2.0/devicecode";
/// The authorization endpoint: printed by `oauth login` (google), never fetched.
pub const AUTH_PATH: &str = "/auth";
/// RFC 8628 §3.4 grant type.
pub const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// `client_assertion_type` of a JWT client assertion (RFC 7523 §2.2).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// validator(user, token): true when the IdP issued `token` for `user`, it has not expired
/// and it was not marked dead (revoked server-side).
pub type Validator = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// How `expires_in` is written in a token answer.
#[derive(Clone, Debug)]
pub enum Expires {
    Num(u64),
    /// As a JSON string, e.g. "3600" (some providers do).
    Str(u64),
    /// Left out (the client should assume 3600).
    Absent,
}

impl Expires {
    fn secs(&self) -> u64 {
        match self {
            Expires::Num(n) | Expires::Str(n) => *n,
            Expires::Absent => 3600,
        }
    }
}

/// A scripted answer for the token endpoint, instead of the normal one.
#[derive(Clone, Debug)]
pub enum Answer {
    /// This HTTP status with this body (text/html), e.g. 503.
    Status(u16, String),
    /// An OAuth error JSON {"error":CODE,"error_description":DESC} with this HTTP status.
    Error(u16, String, String),
    /// The normal answer (state changes and all), sent with Transfer-Encoding: chunked.
    Chunked,
    /// Say nothing for this long, then send a token answer the IdP never registered (so a
    /// client that waited it out fails at the smarthost). Changes no state.
    Stall(Duration),
    /// Like Stall, but the answer trickles one byte per interval (defeats per-read timeouts).
    Drip(Duration),
    /// Close the connection without an answer.
    Close,
}

/// One HTTP request the IdP received.
#[derive(Clone, Debug)]
pub struct Request {
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// The decoded form fields, in order.
    pub form: Vec<(String, String)>,
    /// What the IdP answered: "200", "400 invalid_grant", "503", "stall", …
    pub answered: String,
}

impl Request {
    /// get is a form field.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    pub fn grant(&self) -> &str {
        self.get("grant_type").unwrap_or("")
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One access token the IdP issued.
#[derive(Clone, Debug)]
pub struct Issued {
    pub access_token: String,
    /// The refresh token issued in the same answer, if any.
    pub refresh_token: Option<String>,
    pub grant: String,
    pub at: Instant,
    pub expires_at: Instant,
    /// Revoked at issue (`kill_next_tokens`/`kill_all_tokens`): the smarthost refuses it.
    pub dead: bool,
}

/// The client authentication the IdP wants (RFC 6749 §2.3).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Secret {
    /// A public client (Microsoft "Allow public client flows"): presenting a secret is an
    /// error (AADSTS700025).
    Forbidden,
    /// A confidential client: the secret on every request.
    Required,
    /// Checked when sent.
    Optional,
}

/// A scripted answer rule: the first rule matching the grant (None = any) answers.
struct Rule {
    grant: Option<String>,
    answer: Answer,
    times: Option<usize>,
}

/// The device authorization in progress (RFC 8628).
#[derive(Clone, Debug, Default)]
pub struct Device {
    pub device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    pub interval: u64,
    pub expires_in: u64,
    /// The user signed in: the next poll (after `script` is used up) gets tokens.
    pub approved: bool,
    /// Errors answered to the next polls, in order ("authorization_pending", "slow_down", …).
    pub script: VecDeque<String>,
    /// Tokens were issued for it: the device code is spent.
    pub used: bool,
}

/// What the authorization-code grant must present (the test fills it in from the printed URL).
#[derive(Clone, Debug)]
pub struct Pkce {
    pub code: String,
    pub challenge: String,
    pub redirect_uri: String,
    pub used: bool,
}

/// The certificate credential registered for the client: what verifies a client assertion.
struct AppCert {
    /// BASE64URL(SHA-256(certificate DER)), the `x5t#S256` the assertion must name.
    x5t: String,
    /// The certificate's RSA public key, PKCS#1 RSAPublicKey DER.
    public_key: Vec<u8>,
}

struct State {
    user: String,
    /// The token endpoint's own address: the `aud` an assertion must carry.
    token_url: String,
    /// Set: a client assertion signed by this certificate's key is accepted instead of the
    /// secret.
    app_cert: Option<AppCert>,
    /// `jti` of every assertion accepted (a replayed one is refused).
    jtis: Vec<String>,
    client_id: String,
    client_secret: String,
    /// How the client authenticates on grants other than client_credentials (which always
    /// needs the secret).
    secret: Secret,
    valid_refresh: Vec<String>,
    rotate: bool,
    expires: Expires,
    rules: Vec<Rule>,
    requests: Vec<Request>,
    issued: Vec<Issued>,
    kill_next: usize,
    kill_all: bool,
    device: Device,
    pkce: Option<Pkce>,
    /// Stalled or dripping answers still running.
    stalling: usize,
    /// Why the IdP refused something, for failure messages.
    notes: Vec<String>,
}

/// The running identity provider.
pub struct Idp {
    pub port: u16,
    state: Arc<Mutex<State>>,
}

/// random_hex is n random bytes as hex (ring's system RNG).
pub fn random_hex(n: usize) -> String {
    use ring::rand::SecureRandom;
    let mut b = vec![0u8; n];
    ring::rand::SystemRandom::new().fill(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn serial() -> u64 {
    static N: AtomicU64 = AtomicU64::new(1);
    N.fetch_add(1, Ordering::SeqCst)
}

/// A refresh token shaped like real ones: Google's start "1//", Microsoft's carry '.', '*',
/// '!' — characters a client must form-encode or at least not mangle.
pub fn make_refresh_token() -> String {
    format!("1//0.AR{}*{}!RT", serial(), random_hex(12))
}

fn make_access_token() -> String {
    format!("EwB{}.AT{}.{}", random_hex(10), serial(), random_hex(10))
}

impl Idp {
    /// start runs an IdP for mailbox relay@example.com, client test-client, a public client
    /// (no secret on refresh/device grants), not rotating, expires_in 3600.
    pub fn start() -> Idp {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            user: "relay@example.com".into(),
            token_url: format!("https://127.0.0.1:{port}{TOKEN_PATH}"),
            app_cert: None,
            jtis: Vec::new(),
            client_id: "test-client".into(),
            // '+', '&' and '%' must be form-encoded; '~' and '.' are what Entra secrets hold.
            client_secret: format!("cs{}8Q~a.b+c&d%e", random_hex(8)),
            secret: Secret::Forbidden,
            valid_refresh: Vec::new(),
            rotate: false,
            expires: Expires::Num(3600),
            rules: Vec::new(),
            requests: Vec::new(),
            issued: Vec::new(),
            kill_next: 0,
            kill_all: false,
            device: Device::default(),
            pkce: None,
            stalling: 0,
            notes: Vec::new(),
        }));
        let cfg = {
            let c = certs();
            server_config(&c.cert, &c.key)
        };
        let st = Arc::clone(&state);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (st, cfg) = (Arc::clone(&st), Arc::clone(&cfg));
                std::thread::spawn(move || {
                    let _ = serve(stream, cfg, st);
                });
            }
        });
        Idp { port, state }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    pub fn base(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
    pub fn token_url(&self) -> String {
        format!("{}{TOKEN_PATH}", self.base())
    }
    pub fn device_url(&self) -> String {
        format!("{}{DEVICE_PATH}", self.base())
    }
    pub fn auth_url(&self) -> String {
        format!("{}{AUTH_PATH}", self.base())
    }

    pub fn client_id(&self) -> String {
        self.lock().client_id.clone()
    }
    pub fn client_secret(&self) -> String {
        self.lock().client_secret.clone()
    }
    /// set_client_secret changes the secret (and makes the client confidential).
    pub fn set_client_secret(&self, s: &str) {
        let mut st = self.lock();
        st.client_secret = s.to_string();
        st.secret = Secret::Required;
    }
    /// set_certificate registers a certificate credential (its DER and its RSA public key as
    /// PKCS#1 DER): client assertions signed with its key are then accepted instead of the
    /// secret (and make the client confidential).
    pub fn set_certificate(&self, cert_der: &[u8], rsa_public_der: &[u8]) {
        let mut st = self.lock();
        st.app_cert = Some(AppCert {
            x5t: b64url_nopad(ring::digest::digest(&ring::digest::SHA256, cert_der).as_ref()),
            public_key: rsa_public_der.to_vec(),
        });
        st.secret = Secret::Required;
    }
    /// set_public: true = a public client (no secret may be sent on user grants), false = a
    /// confidential one (the secret on every request).
    pub fn set_public(&self, public: bool) {
        self.lock().secret = if public {
            Secret::Forbidden
        } else {
            Secret::Required
        };
    }
    /// set_secret_optional: the secret is checked when sent, and may be left out.
    pub fn set_secret_optional(&self) {
        self.lock().secret = Secret::Optional;
    }
    pub fn set_rotate(&self, rotate: bool) {
        self.lock().rotate = rotate;
    }
    pub fn set_expires(&self, e: Expires) {
        self.lock().expires = e;
    }

    /// new_refresh_token mints a refresh token the IdP accepts (to seed a token file).
    pub fn new_refresh_token(&self) -> String {
        let rt = make_refresh_token();
        self.lock().valid_refresh.push(rt.clone());
        rt
    }
    /// revoke_refresh_tokens makes every refresh token issued so far invalid (invalid_grant).
    pub fn revoke_refresh_tokens(&self) {
        self.lock().valid_refresh.clear();
    }
    pub fn valid_refresh_tokens(&self) -> Vec<String> {
        self.lock().valid_refresh.clone()
    }

    /// script answers the next `times` (None: every) token requests of `grant` (None: any).
    pub fn script(&self, grant: Option<&str>, answer: Answer, times: Option<usize>) {
        self.lock().rules.push(Rule {
            grant: grant.map(str::to_string),
            answer,
            times,
        });
    }
    pub fn clear_script(&self) {
        self.lock().rules.clear();
    }

    /// kill_next_tokens: the next n access tokens are revoked as they are issued.
    pub fn kill_next_tokens(&self, n: usize) {
        self.lock().kill_next = n;
    }
    /// kill_all_tokens: every access token issued from now on is revoked (false: stop).
    pub fn kill_all_tokens(&self, on: bool) {
        self.lock().kill_all = on;
    }

    /// kill_issued revokes every access token issued so far (the smarthost refuses them).
    pub fn kill_issued(&self) {
        for i in self.lock().issued.iter_mut() {
            i.dead = true;
        }
    }

    /// device_script: the errors the next device-code polls get, in order.
    pub fn device_script(&self, errors: &[&str]) {
        self.lock().device.script = errors.iter().map(|s| s.to_string()).collect();
    }
    /// approve_device: the user signed in; polls after the script get tokens.
    pub fn approve_device(&self) {
        self.lock().device.approved = true;
    }
    pub fn device(&self) -> Device {
        self.lock().device.clone()
    }

    /// expect_pkce arms the authorization-code grant with what the test read off the printed
    /// URL (challenge, redirect_uri) and the code it hands to the relay.
    pub fn expect_pkce(&self, code: &str, challenge: &str, redirect_uri: &str) {
        self.lock().pkce = Some(Pkce {
            code: code.into(),
            challenge: challenge.into(),
            redirect_uri: redirect_uri.into(),
            used: false,
        });
    }

    pub fn requests(&self) -> Vec<Request> {
        self.lock().requests.clone()
    }
    /// token_requests are the requests to the token endpoint, of `grant` (None: any).
    pub fn token_requests(&self, grant: Option<&str>) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == TOKEN_PATH && grant.map_or(true, |g| r.grant() == g))
            .collect()
    }
    pub fn count(&self, grant: Option<&str>) -> usize {
        self.token_requests(grant).len()
    }
    /// wait_requests waits for at least n token requests of `grant`.
    pub fn wait_requests(&self, grant: Option<&str>, n: usize) -> Vec<Request> {
        wait_for(&format!("{n} token request(s) ({grant:?})"), || {
            self.count(grant) >= n
        });
        self.token_requests(grant)
    }

    pub fn issued(&self) -> Vec<Issued> {
        self.lock().issued.clone()
    }
    /// secrets: every token the IdP issued or accepts, and the client secret — none of
    /// them may show in anything the relay prints.
    pub fn secrets(&self) -> Vec<String> {
        let st = self.lock();
        let mut v: Vec<String> = st
            .issued
            .iter()
            .flat_map(|i| [Some(i.access_token.clone()), i.refresh_token.clone()])
            .flatten()
            .collect();
        v.extend(st.valid_refresh.iter().cloned());
        v.push(st.client_secret.clone());
        v.sort();
        v.dedup();
        v
    }
    pub fn stalling(&self) -> usize {
        self.lock().stalling
    }
    pub fn notes(&self) -> Vec<String> {
        self.lock().notes.clone()
    }

    /// validator checks bearer tokens for the scripted smarthost.
    pub fn validator(&self) -> Validator {
        let st = Arc::clone(&self.state);
        Arc::new(move |user: &str, token: &str| {
            let st = st.lock().unwrap();
            st.user == user
                && st
                    .issued
                    .iter()
                    .any(|i| i.access_token == token && !i.dead && Instant::now() < i.expires_at)
        })
    }
}

// ------------------------------------------------------------------ HTTP

struct Http {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// read_request reads one HTTP/1.1 request with a Content-Length (or chunked) body.
fn read_request(s: &mut impl Read) -> io::Result<Http> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 64 * 1024 {
            return Err(io::Error::other("header too long"));
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut rest = buf[head_end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or("");
    let mut parts = first.split(' ');
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let hv = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let body = if let Some(len) = hv("content-length") {
        let len: usize = len.parse().map_err(io::Error::other)?;
        while rest.len() < len {
            let n = s.read(&mut chunk)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        rest.truncate(len);
        rest
    } else if hv("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        loop {
            while !rest.windows(2).any(|w| w == b"\r\n") {
                let n = s.read(&mut chunk)?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                rest.extend_from_slice(&chunk[..n]);
            }
            let i = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size_line = String::from_utf8_lossy(&rest[..i]).into_owned();
            let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
                .map_err(io::Error::other)?;
            rest.drain(..i + 2);
            while rest.len() < size + 2 {
                let n = s.read(&mut chunk)?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                rest.extend_from_slice(&chunk[..n]);
            }
            if size == 0 {
                break body;
            }
            body.extend_from_slice(&rest[..size]);
            rest.drain(..size + 2);
        }
    } else {
        Vec::new()
    };
    Ok(Http {
        method,
        path,
        headers,
        body,
    })
}

/// form_decode decodes application/x-www-form-urlencoded (also a URL query).
pub fn form_decode(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (pct_decode(k), pct_decode(v))
        })
        .collect()
}

/// pct_decode undoes %XX and '+' (space).
pub fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// json_str escapes a string as a JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// check_assertion verifies a JWT client assertion the way Microsoft's identity platform does
/// for a certificate credential (RFC 7523 §3): the registered certificate by `x5t#S256`, a
/// PS256 signature by its key, aud = this token endpoint, iss = sub = client_id, a current
/// nbf..exp window of at most a day, and a jti never seen before; no secret beside it.
fn check_assertion(
    g: &mut State,
    kind: Option<&str>,
    jwt: &str,
    secret: Option<&str>,
) -> Result<(), String> {
    if kind != Some(JWT_BEARER) {
        return Err(format!("client_assertion_type {kind:?}"));
    }
    if secret.is_some() {
        return Err("client_secret beside client_assertion".into());
    }
    let Some(cert) = &g.app_cert else {
        return Err("no certificate registered".into());
    };
    let parts: Vec<&str> = jwt.split('.').collect();
    let [head, body, sig] = parts[..] else {
        return Err(format!("{} parts, not 3", parts.len()));
    };
    let decode = |p: &str| {
        super::smarthost::b64decode(&p.replace('-', "+").replace('_', "/"))
            .ok_or_else(|| format!("{p:?} is not base64url"))
    };
    let json = |p: &str| {
        let bytes = decode(p)?;
        let text = String::from_utf8(bytes).map_err(|e| e.to_string())?;
        super::json::parse_json(&text)
    };
    let header = json(head)?;
    let claims = json(body)?;
    let field = |v: &super::json::Json, k: &str| match v {
        super::json::Json::Obj(m) => m.get(k).cloned(),
        _ => None,
    };
    let text = |v: &super::json::Json, k: &str| match field(v, k) {
        Some(super::json::Json::Str(s)) => Some(s),
        _ => None,
    };
    let num = |k: &str| match field(&claims, k) {
        Some(super::json::Json::Num(n)) => Some(n as u64),
        _ => None,
    };
    if text(&header, "alg").as_deref() != Some("PS256") {
        return Err(format!("alg {:?}", text(&header, "alg")));
    }
    if text(&header, "x5t#S256").as_deref() != Some(cert.x5t.as_str()) {
        return Err("x5t#S256 names no registered certificate".into());
    }
    let key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PSS_2048_8192_SHA256,
        &cert.public_key,
    );
    key.verify(format!("{head}.{body}").as_bytes(), &decode(sig)?)
        .map_err(|_| "bad signature".to_string())?;
    if text(&claims, "aud").as_deref() != Some(g.token_url.as_str()) {
        return Err(format!("aud {:?}", text(&claims, "aud")));
    }
    for k in ["iss", "sub"] {
        if text(&claims, k).as_deref() != Some(g.client_id.as_str()) {
            return Err(format!("{k} {:?}", text(&claims, k)));
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    match (num("nbf"), num("exp")) {
        (Some(nbf), Some(exp)) if nbf <= now + 60 && now < exp && exp <= nbf + 86_400 => {}
        (nbf, exp) => return Err(format!("nbf {nbf:?} exp {exp:?} at {now}")),
    }
    let jti = text(&claims, "jti").unwrap_or_default();
    if jti.is_empty() || g.jtis.contains(&jti) {
        return Err(format!("jti {jti:?} missing or replayed"));
    }
    g.jtis.push(jti);
    Ok(())
}

/// b64url_nopad is base64url without padding (RFC 4648 §5), as PKCE S256 wants it.
pub fn b64url_nopad(data: &[u8]) -> String {
    super::b64(data)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

/// pkce_challenge is BASE64URL(SHA256(verifier)) (RFC 7636 §4.2).
pub fn pkce_challenge(verifier: &str) -> String {
    b64url_nopad(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()).as_ref())
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// A prepared answer: status and JSON (or other) body.
struct Reply {
    status: u16,
    content_type: &'static str,
    body: String,
}

fn json_reply(status: u16, body: String) -> Reply {
    Reply {
        status,
        content_type: "application/json; charset=utf-8",
        body,
    }
}

fn error_reply(status: u16, code: &str, desc: &str) -> Reply {
    json_reply(
        status,
        format!(
            "{{\"error\":{},\"error_description\":{},\"error_codes\":[70000],\"trace_id\":\"00000000-0000-0000-0000-000000000000\"}}",
            json_str(code),
            json_str(desc)
        ),
    )
}

fn head(r: &Reply, chunked: bool) -> String {
    let len = if chunked {
        "Transfer-Encoding: chunked\r\n".to_string()
    } else {
        format!("Content-Length: {}\r\n", r.body.len())
    };
    format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\n{len}Cache-Control: no-store\r\nPragma: no-cache\r\nConnection: close\r\n\r\n",
        r.status,
        reason(r.status),
        r.content_type
    )
}

fn serve(tcp: TcpStream, cfg: Arc<rustls::ServerConfig>, st: Arc<Mutex<State>>) -> io::Result<()> {
    tcp.set_read_timeout(Some(Duration::from_secs(60)))?;
    tcp.set_nodelay(true)?;
    let conn = rustls::ServerConnection::new(cfg).map_err(io::Error::other)?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    let req = read_request(&mut s)?;
    let form = if req.method == "POST" {
        form_decode(&String::from_utf8_lossy(&req.body))
    } else {
        form_decode(req.path.split_once('?').map(|(_, q)| q).unwrap_or(""))
    };
    let path = req.path.split('?').next().unwrap_or("").to_string();
    let mut record = Request {
        at: Instant::now(),
        method: req.method.clone(),
        path: path.clone(),
        headers: req.headers.clone(),
        form: form.clone(),
        answered: String::new(),
    };
    let get = |k: &str| form.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone());
    // The scripted answer, if a rule matches.
    let scripted = if path == TOKEN_PATH {
        let grant = get("grant_type").unwrap_or_default();
        let mut g = st.lock().unwrap();
        let i = g
            .rules
            .iter()
            .position(|r| r.times != Some(0) && r.grant.as_deref().map_or(true, |rg| rg == grant));
        i.map(|i| {
            let r = &mut g.rules[i];
            if let Some(t) = r.times.as_mut() {
                *t -= 1;
            }
            r.answer.clone()
        })
    } else {
        None
    };
    let mut chunked = false;
    let reply = match scripted {
        Some(Answer::Status(code, body)) => Reply {
            status: code,
            content_type: "text/html; charset=utf-8",
            body,
        },
        Some(Answer::Error(code, e, d)) => error_reply(code, &e, &d),
        Some(Answer::Close) => {
            record.answered = "close".into();
            st.lock().unwrap().requests.push(record);
            return Ok(());
        }
        Some(Answer::Stall(d)) | Some(Answer::Drip(d)) => {
            let drip = matches!(scripted, Some(Answer::Drip(_)));
            record.answered = if drip { "drip" } else { "stall" }.into();
            {
                let mut g = st.lock().unwrap();
                g.requests.push(record);
                g.stalling += 1;
            }
            let fake = json_reply(
                200,
                "{\"token_type\":\"Bearer\",\"expires_in\":3600,\"access_token\":\"never-registered-stalled-token\"}".into(),
            );
            let bytes = format!("{}{}", head(&fake, false), fake.body).into_bytes();
            let _ = if drip {
                (|| -> io::Result<()> {
                    for b in &bytes {
                        std::thread::sleep(d);
                        s.write_all(&[*b])?;
                        s.flush()?;
                    }
                    Ok(())
                })()
            } else {
                std::thread::sleep(d);
                s.write_all(&bytes).and_then(|_| s.flush())
            };
            st.lock().unwrap().stalling -= 1;
            return Ok(());
        }
        Some(Answer::Chunked) => {
            chunked = true;
            handle(&path, &req.method, &form, &st)
        }
        None => handle(&path, &req.method, &form, &st),
    };
    record.answered = if reply.status == 200 {
        "200".into()
    } else {
        let code = reply
            .body
            .split("\"error\":\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("");
        format!("{} {code}", reply.status).trim().to_string()
    };
    st.lock().unwrap().requests.push(record);
    let h = head(&reply, chunked);
    if chunked {
        s.write_all(h.as_bytes())?;
        s.flush()?;
        // Several small chunks, one with an extension, each flushed on its own.
        let body = reply.body.as_bytes();
        for (i, part) in body.chunks(17).enumerate() {
            let ext = if i == 1 { ";note=x" } else { "" };
            s.write_all(format!("{:x}{ext}\r\n", part.len()).as_bytes())?;
            s.write_all(part)?;
            s.write_all(b"\r\n")?;
            s.flush()?;
        }
        s.write_all(b"0\r\n\r\n")?;
    } else {
        s.write_all(h.as_bytes())?;
        s.write_all(reply.body.as_bytes())?;
    }
    s.flush()?;
    s.conn.send_close_notify();
    let _ = s.flush();
    Ok(())
}

/// handle answers one request normally (no script).
fn handle(path: &str, method: &str, form: &[(String, String)], st: &Mutex<State>) -> Reply {
    let get = |k: &str| form.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.as_str());
    let mut g = st.lock().unwrap();
    if method != "POST" {
        g.notes.push(format!("{method} {path}: not POST"));
        return error_reply(404, "not_found", "only POST here");
    }
    let refuse = |g: &mut State, status: u16, code: &str, desc: &str| {
        g.notes.push(format!("{path}: {code}: {desc}"));
        error_reply(status, code, desc)
    };
    // Client authentication (RFC 6749 §2.3).
    let grant = get("grant_type").unwrap_or("");
    if get("client_id") != Some(g.client_id.as_str()) {
        return refuse(
            &mut g,
            400,
            "unauthorized_client",
            "AADSTS700016: Application with identifier was not found in the directory.",
        );
    }
    let secret = get("client_secret");
    let needs_secret = g.secret == Secret::Required || grant == "client_credentials";
    let wrong = secret.is_some_and(|s| s != g.client_secret);
    if let Some(jwt) = get("client_assertion") {
        if let Err(why) = check_assertion(&mut g, get("client_assertion_type"), jwt, secret) {
            return refuse(
                &mut g,
                401,
                "invalid_client",
                &format!("AADSTS700027: Client assertion failed validation: {why}."),
            );
        }
    } else if (needs_secret && secret.is_none()) || wrong {
        return refuse(
            &mut g,
            401,
            "invalid_client",
            "AADSTS7000215: Invalid client secret provided.",
        );
    } else if !needs_secret && g.secret == Secret::Forbidden && secret.is_some() {
        return refuse(
            &mut g,
            401,
            "invalid_client",
            "AADSTS700025: Client is public so neither 'client_assertion' nor 'client_secret' should be presented.",
        );
    }
    if path == DEVICE_PATH {
        let d = Device {
            device_code: format!("DC{}{}", serial(), random_hex(8)),
            user_code: format!("U{}", random_hex(4).to_ascii_uppercase()),
            verification_uri: "https://microsoft.com/devicelogin".into(),
            interval: 1,
            expires_in: 900,
            approved: g.device.approved,
            script: std::mem::take(&mut g.device.script),
            used: false,
        };
        let body = format!(
            "{{\"user_code\":{},\"device_code\":{},\"verification_uri\":{},\"expires_in\":{},\"interval\":{},\"message\":{}}}",
            json_str(&d.user_code),
            json_str(&d.device_code),
            json_str(&d.verification_uri),
            d.expires_in,
            d.interval,
            json_str(&format!(
                "To sign in, use a web browser to open the page {} and enter the code {} to authenticate.",
                d.verification_uri, d.user_code
            ))
        );
        g.device = d;
        return json_reply(200, body);
    }
    if path != TOKEN_PATH {
        return refuse(&mut g, 404, "not_found", "no such endpoint");
    }
    let mut refresh = None;
    match grant {
        "refresh_token" => {
            let rt = get("refresh_token").unwrap_or("");
            let Some(i) = g.valid_refresh.iter().position(|v| v == rt) else {
                return refuse(
                    &mut g,
                    400,
                    "invalid_grant",
                    "AADSTS70000: Provided grant is invalid or malformed.",
                );
            };
            if g.rotate {
                g.valid_refresh.remove(i);
                let new = make_refresh_token();
                g.valid_refresh.push(new.clone());
                refresh = Some(new);
            }
        }
        "client_credentials" => {}
        DEVICE_GRANT => {
            if get("device_code") != Some(g.device.device_code.as_str()) || g.device.used {
                return refuse(
                    &mut g,
                    400,
                    "bad_verification_code",
                    "AADSTS70019: Verification code expired or unknown.",
                );
            }
            if let Some(e) = g.device.script.pop_front() {
                let desc = format!("AADSTS70016: OAuth 2.0 device flow error: {e}.");
                g.notes.push(format!("device poll: scripted {e}"));
                return error_reply(400, &e, &desc);
            }
            if !g.device.approved {
                return error_reply(
                    400,
                    "authorization_pending",
                    "AADSTS70016: OAuth 2.0 device flow error. Authorization is pending.",
                );
            }
            g.device.used = true;
            let new = make_refresh_token();
            g.valid_refresh.push(new.clone());
            refresh = Some(new);
        }
        "authorization_code" => {
            let Some(p) = g.pkce.clone() else {
                return refuse(&mut g, 400, "invalid_grant", "no authorization in progress");
            };
            let verifier = get("code_verifier").unwrap_or("");
            let why = if p.used {
                Some("code already used".to_string())
            } else if get("code") != Some(p.code.as_str()) {
                Some(format!("code {:?} is not {:?}", get("code"), p.code))
            } else if get("redirect_uri") != Some(p.redirect_uri.as_str()) {
                Some(format!(
                    "redirect_uri {:?} is not {:?}",
                    get("redirect_uri"),
                    p.redirect_uri
                ))
            } else if verifier.len() < 43 || verifier.len() > 128 {
                Some(format!(
                    "code_verifier length {} (RFC 7636 §4.1)",
                    verifier.len()
                ))
            } else if pkce_challenge(verifier) != p.challenge {
                Some("code_verifier does not match code_challenge".to_string())
            } else {
                None
            };
            if let Some(why) = why {
                return refuse(&mut g, 400, "invalid_grant", &why);
            }
            g.pkce.as_mut().unwrap().used = true;
            let new = make_refresh_token();
            g.valid_refresh.push(new.clone());
            refresh = Some(new);
        }
        other => {
            return refuse(
                &mut g,
                400,
                "unsupported_grant_type",
                &format!("grant_type {other:?}"),
            )
        }
    }
    // Issue an access token.
    let access = make_access_token();
    let now = Instant::now();
    let dead = g.kill_all || g.kill_next > 0;
    g.kill_next = g.kill_next.saturating_sub(1);
    let secs = g.expires.secs();
    g.issued.push(Issued {
        access_token: access.clone(),
        refresh_token: refresh.clone(),
        grant: grant.to_string(),
        at: now,
        expires_at: now + Duration::from_secs(secs),
        dead,
    });
    let mut body = format!(
        "{{\"token_type\":\"Bearer\",\"scope\":{}",
        json_str(get("scope").unwrap_or(""))
    );
    match &g.expires {
        Expires::Num(n) => body.push_str(&format!(",\"expires_in\":{n},\"ext_expires_in\":{n}")),
        Expires::Str(n) => body.push_str(&format!(",\"expires_in\":\"{n}\"")),
        Expires::Absent => {}
    }
    body.push_str(&format!(",\"access_token\":{}", json_str(&access)));
    if let Some(rt) = &refresh {
        body.push_str(&format!(",\"refresh_token\":{}", json_str(rt)));
    }
    body.push('}');
    json_reply(200, body)
}
