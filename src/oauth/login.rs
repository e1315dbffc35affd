//! `picorelay oauth login` and `oauth status`: the one-time interactive sign-in that stores a
//! refresh token (the device authorization grant, RFC 8628, for Microsoft; the authorization
//! code grant with PKCE, RFC 7636, and a loopback redirect, RFC 8252 7.3, for Google), and the
//! check that the identity provider grants an access token now.
//!
//! Both run on the box, usually over ssh, without a browser: the person signs in on any other
//! computer. Nothing here prints a token.

use std::io::{BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ring::rand::SecureRandom;

use crate::config::{Config, OAuth, OAuthGrant, OAuthProvider};
use crate::message::rfc5322_date;
use crate::oauth::http;
use crate::oauth::json::Value;
use crate::oauth::store::{self, Stored};
use crate::oauth::token::{self, Endpoint, TokenError, Tokens};
use crate::queue_cmd::human;

/// RFC 8628 3.2: the default polling interval when the answer names none.
const DEFAULT_INTERVAL: u64 = 5;
/// RFC 8628 3.5: slow_down adds 5 seconds to the interval.
const SLOW_DOWN_STEP: u64 = 5;
/// Longest the device code is waited for, whatever the answer says.
const MAX_DEVICE_WAIT: Duration = Duration::from_secs(3600);
/// How long the authorization-code flow waits for the browser or the pasted address.
const CODE_WAIT: Duration = Duration::from_secs(15 * 60);
/// Longest request line + headers read from the browser at the loopback listener.
const MAX_REDIRECT_REQUEST: usize = 16 * 1024;

/// A failed sign-in: what went wrong, with the provider's error when it gave one.
#[derive(Debug)]
struct LoginError(String);

impl From<TokenError> for LoginError {
    fn from(e: TokenError) -> LoginError {
        LoginError(e.to_string())
    }
}

/// login runs `picorelay oauth login`: 0 once the refresh token is stored, 1 on failure.
pub fn login(config: &Path) -> u8 {
    let Some(cfg) = crate::serve::load_config(config) else {
        return 1;
    };
    let Some(o) = cfg.oauth.as_ref() else {
        eprintln!(
            "picorelay: {}: [oauth] provider is not set: nothing to sign in to (docs/guide.md shows the set-up)",
            cfg.path.display()
        );
        return 1;
    };
    if o.grant == OAuthGrant::ClientCredentials {
        eprintln!(
            "picorelay: [oauth] grant = client_credentials signs in with the application's own credentials: no person signs in; `picorelay oauth status` checks them"
        );
        return 1;
    }
    let owner = token::service_owner(&cfg);
    match sign_in(&cfg, o, owner) {
        Ok(()) => 0,
        Err(LoginError(e)) => {
            eprintln!("picorelay: oauth login failed: {e}");
            1
        }
    }
}

/// sign_in runs the provider's flow, then stores the refresh token.
fn sign_in(cfg: &Config, o: &OAuth, owner: Option<(u32, u32)>) -> Result<(), LoginError> {
    token_folder_ready(&o.token_file, owner)?;
    let answer = match (o.provider, &o.device_url, &o.auth_url) {
        (OAuthProvider::Google, _, Some(auth)) => code_flow(o, auth)?,
        (_, Some(device), _) => device_flow(o, device)?,
        (_, None, Some(auth)) => code_flow(o, auth)?,
        (_, None, None) => {
            return Err(LoginError(
                "[oauth] device_url or auth_url is needed to sign in".to_string(),
            ))
        }
    };
    let Some(refresh_token) = answer.refresh_token else {
        return Err(LoginError(format!(
            "the identity provider granted no refresh token (the scope needs {}): check [oauth] scope",
            match o.provider {
                OAuthProvider::Google => "https://mail.google.com/, asked with access_type=offline",
                _ => "offline_access",
            }
        )));
    };
    let now = token::now_unix();
    let stored = Stored {
        refresh_token,
        signed_in: Some(now),
        saved: Some(now),
    };
    store::save(&o.token_file, &stored, owner).map_err(LoginError)?;
    let user = cfg.smarthost.username.as_deref().unwrap_or("the mailbox");
    println!(
        "Signed in: refresh token stored in {} (mode 0600{}).",
        o.token_file.display(),
        match (owner, cfg.server.user.as_deref()) {
            (Some(_), Some(u)) => format!(", owned by {u}"),
            (Some((uid, _)), None) => format!(", owned by uid {uid}, the relay's user"),
            (None, _) => String::new(),
        }
    );
    println!(
        "The relay now logs in to the smarthost as {user} with access tokens it renews itself; \
         `picorelay queue flush` sends what waited."
    );
    Ok(())
}

/// token_folder_ready makes sure the token file's folder exists and only its owner can write
/// to it: anyone else able to write there could swap the token file.
fn token_folder_ready(path: &Path, owner: Option<(u32, u32)>) -> Result<(), LoginError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| LoginError(format!("cannot create {}: {e}", dir.display())))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid))
                .map_err(|e| LoginError(format!("cannot chown {}: {e}", dir.display())))?;
        }
    }
    let meta = std::fs::metadata(dir).map_err(|e| LoginError(format!("{}: {e}", dir.display())))?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o002 != 0 {
        return Err(LoginError(format!(
            "{} can be written by any user (mode {mode:04o}): the token file must be in a folder only the relay's user can write: run chmod o-w on it, or set [oauth] token_file",
            dir.display()
        )));
    }
    if mode & 0o020 != 0 {
        // The spool is group-writable when local users may submit through `sendmail`; they
        // could then replace the token file (not read it: it is 0600).
        eprintln!(
            "picorelay: warning: {} can be written by its group (mode {mode:04o}): its members could replace the token file; a private folder is safer ([oauth] token_file)",
            dir.display()
        );
    }
    Ok(())
}

/// device_flow is RFC 8628: ask for a code, show it, poll the token endpoint until the person
/// has signed in on another device.
fn device_flow(o: &OAuth, device_url: &str) -> Result<token::Answer, LoginError> {
    let device = Endpoint::new(device_url, o)?;
    let tokens = Endpoint::new(&o.token_url, o)?;
    // RFC 8628 3.1: a confidential client authenticates here too.
    let secret = token::client_secret(o)?;
    let mut request = vec![
        ("client_id", o.client_id.as_str()),
        ("scope", o.scope.as_str()),
    ];
    if let Some(s) = secret.as_deref() {
        request.push(("client_secret", s));
    }
    let v = device.post(&request)?;
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let (Some(device_code), Some(user_code)) = (text("device_code"), text("user_code")) else {
        return Err(LoginError(format!(
            "{device_url}: the answer has no device_code or user_code"
        )));
    };
    // Google names it verification_url; RFC 8628 3.2 verification_uri.
    let uri = text("verification_uri")
        .or_else(|| text("verification_url"))
        .unwrap_or_else(|| "the provider's sign-in page".to_string());
    let printable = |s: &str| s.chars().all(|c| !c.is_control());
    if !printable(&uri) || !printable(&user_code) {
        return Err(LoginError(format!("{device_url}: invalid answer")));
    }
    let lifetime = v
        .get("expires_in")
        .and_then(Value::as_u64_lenient)
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(900))
        .min(MAX_DEVICE_WAIT);
    let mut interval = v
        .get("interval")
        .and_then(Value::as_u64_lenient)
        .unwrap_or(DEFAULT_INTERVAL)
        .clamp(1, 60);
    println!("To sign in, open {uri} on any computer or phone and enter the code {user_code}");
    println!(
        "(the code is valid for {}; waiting for the sign-in to finish...)",
        human(lifetime.as_secs())
    );
    let _ = std::io::stdout().flush();
    let deadline = Instant::now() + lifetime;
    let mut form = vec![
        ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
        ("device_code", device_code.as_str()),
        ("client_id", o.client_id.as_str()),
    ];
    if let Some(s) = secret.as_deref() {
        form.push(("client_secret", s));
    }
    loop {
        // RFC 8628 3.5: wait `interval` between polls.
        std::thread::sleep(Duration::from_secs(interval));
        if Instant::now() >= deadline {
            return Err(LoginError(
                "the code expired before the sign-in finished: run picorelay oauth login again"
                    .to_string(),
            ));
        }
        match tokens.post(&form) {
            Ok(v) => return Ok(token::token_answer(&tokens.url, &v)?),
            Err(e) => match e.error_code() {
                Some("authorization_pending") => {}
                Some("slow_down") => interval += SLOW_DOWN_STEP,
                Some("access_denied" | "authorization_declined") => {
                    return Err(LoginError(format!("{e} (the sign-in was declined)")))
                }
                Some("expired_token") => {
                    return Err(LoginError(format!(
                        "{e} (the code expired: run picorelay oauth login again)"
                    )))
                }
                Some(_) => return Err(LoginError(e.explain(o.grant))),
                None if e.is_transient() => eprintln!("picorelay: {e}; still waiting"),
                None => return Err(e.into()),
            },
        }
    }
}

/// Pkce is the RFC 7636 pair: the verifier stays here, the S256 challenge goes in the URL.
struct Pkce {
    verifier: String,
    challenge: String,
}

/// pkce_challenge is BASE64URL(SHA256(ASCII(verifier))) (RFC 7636 4.2).
fn pkce_challenge(verifier: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
    crate::base64::encode_url(digest.as_ref())
}

/// random_url_text is `n` random bytes, base64url: 32 bytes give the 43-character verifier
/// RFC 7636 4.1 recommends.
fn random_url_text(n: usize) -> Result<String, LoginError> {
    let mut bytes = vec![0u8; n];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| LoginError("no random numbers from the system".to_string()))?;
    Ok(crate::base64::encode_url(&bytes))
}

/// What came back to the redirect URI: its query pairs.
type Redirect = Vec<(String, String)>;

/// The first redirect that arrives, from the browser or pasted (a channel would do, but
/// std's costs more binary than this).
#[derive(Clone, Default)]
struct Answer(Arc<(Mutex<Option<Redirect>>, Condvar)>);

impl Answer {
    fn give(&self, r: Redirect) {
        let (slot, cv) = &*self.0;
        slot.lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(r);
        cv.notify_all();
    }

    fn wait(&self, limit: Duration) -> Option<Redirect> {
        let (slot, cv) = &*self.0;
        let guard = slot.lock().unwrap_or_else(|p| p.into_inner());
        let (mut guard, _) = cv
            .wait_timeout_while(guard, limit, |r| r.is_none())
            .unwrap_or_else(|p| p.into_inner());
        guard.take()
    }
}

/// code_flow is the authorization code grant with PKCE S256 and a loopback redirect: print the
/// address to open, take the answer from the browser (when it can reach 127.0.0.1 here) or
/// from the address the person pastes, check `state`, exchange the code.
fn code_flow(o: &OAuth, auth_url: &str) -> Result<token::Answer, LoginError> {
    let verifier = random_url_text(32)?;
    let pkce = Pkce {
        challenge: pkce_challenge(&verifier),
        verifier,
    };
    let state = random_url_text(16)?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| LoginError(format!("cannot listen on 127.0.0.1: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| LoginError(e.to_string()))?
        .port();
    let redirect_uri = format!("http://127.0.0.1:{port}/");
    let query = http::form_encode(&[
        ("client_id", o.client_id.as_str()),
        ("redirect_uri", redirect_uri.as_str()),
        ("response_type", "code"),
        ("scope", o.scope.as_str()),
        ("state", state.as_str()),
        ("code_challenge", pkce.challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("access_type", "offline"),
        ("prompt", "consent"),
    ]);
    let sep = if auth_url.contains('?') { '&' } else { '?' };
    println!("Open this address in a browser on any computer and sign in:");
    println!();
    println!("{auth_url}{sep}{query}");
    println!();
    println!(
        "Afterwards the browser is sent to {redirect_uri}. If the browser runs on this box, or \
         reaches it through `ssh -L {port}:127.0.0.1:{port}`, that finishes the sign-in by \
         itself. Otherwise the page does not load: copy the whole address from the browser's \
         address bar, paste it here and press Enter."
    );
    let _ = std::io::stdout().flush();

    let answer = Answer::default();
    let (from_browser, pasted) = (answer.clone(), answer.clone());
    let expected = state.clone();
    std::thread::spawn(move || browser_listener(listener, &expected, &from_browser));
    std::thread::spawn(move || pasted_lines(&pasted));
    let got = answer.wait(CODE_WAIT).ok_or_else(|| {
        LoginError(format!(
            "no answer within {}: run picorelay oauth login again",
            human(CODE_WAIT.as_secs())
        ))
    })?;
    let field = |k: &str| got.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    // RFC 6749 10.12: an answer for another request (or a forged one) is refused, an error
    // answer too (the provider echoes `state` in both).
    if field("state") != Some(state.as_str()) {
        return Err(LoginError(
            "the address's state does not match this sign-in: paste the address from this sign-in's browser window"
                .to_string(),
        ));
    }
    if let Some(error) = field("error") {
        let clean: String = error.chars().filter(|c| !c.is_control()).take(64).collect();
        return Err(LoginError(format!(
            "the authorization server answered {clean} (the sign-in was declined or the app is not allowed)"
        )));
    }
    let Some(code) = field("code").filter(|c| !c.is_empty()) else {
        return Err(LoginError("the address has no code".to_string()));
    };
    let tokens = Endpoint::new(&o.token_url, o)?;
    let secret = token::client_secret(o)?;
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect_uri.as_str()),
        ("client_id", o.client_id.as_str()),
        ("code_verifier", pkce.verifier.as_str()),
    ];
    if let Some(s) = secret.as_deref() {
        form.push(("client_secret", s));
    }
    let v = tokens.post(&form).map_err(|e| match e.error_code() {
        Some(_) => LoginError(e.explain(o.grant)),
        None => LoginError::from(e),
    })?;
    Ok(token::token_answer(&tokens.url, &v)?)
}

/// query_of takes the query from a pasted address: a whole URL, or just `?a=b&c=d`.
fn query_of(line: &str) -> Option<Redirect> {
    let line = line.trim();
    let q = line.split_once('?').map(|(_, q)| q)?;
    let q = q.split('#').next().unwrap_or("");
    let pairs = http::query_pairs(q);
    pairs
        .iter()
        .any(|(k, _)| k == "code" || k == "error")
        .then_some(pairs)
}

/// pasted_lines reads what the person pastes until one line is an answer.
fn pasted_lines(answer: &Answer) {
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { return };
        if line.trim().is_empty() {
            continue;
        }
        match query_of(&line) {
            Some(q) => {
                answer.give(q);
                return;
            }
            None => eprintln!(
                "That is not the address the browser was sent to (it starts with http://127.0.0.1: and has code= in it); paste it again:"
            ),
        }
    }
}

/// browser_listener answers the browser's request to the redirect URI; other requests
/// (a favicon) get a 404.
fn browser_listener(listener: TcpListener, state: &str, answer: &Answer) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let Some(target) = request_target(&mut conn) else {
            continue;
        };
        match query_of(&target) {
            // Any local process can reach the port: an answer for another sign-in (or a forged
            // one, "?error=x") must not end this one. The provider echoes `state`, errors too
            // (RFC 6749 4.1.2.1).
            Some(q) if !q.iter().any(|(k, v)| k == "state" && v == state) => {
                respond(
                    &mut conn,
                    "400 Bad Request",
                    "not the answer to this sign-in",
                );
            }
            Some(q) => {
                let body = "<!doctype html>\n<html><head><title>picorelay</title></head><body>\
                            <p>picorelay received the answer: you can close this window and go \
                            back to the terminal.</p></body></html>\n";
                respond(&mut conn, "200 OK", body);
                answer.give(q);
                return;
            }
            None => respond(&mut conn, "404 Not Found", "not found"),
        }
    }
}

/// request_target reads a request's head (bounded, with a deadline) and returns its target.
fn request_target(conn: &mut TcpStream) -> Option<String> {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = conn.read(&mut buf).ok().filter(|n| *n > 0)?;
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_REDIRECT_REQUEST {
            return None;
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut words = text.lines().next()?.split_ascii_whitespace();
    (words.next()? == "GET").then_some(())?;
    words.next().map(str::to_string)
}

fn respond(conn: &mut TcpStream, status: &str, body: &str) {
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// status runs `picorelay oauth status`: 0 when the identity provider grants an access token
/// now (one request), 1 when not.
pub fn status(config: &Path) -> u8 {
    let Some(cfg) = crate::serve::load_config(config) else {
        return 1;
    };
    let Some(o) = cfg.oauth.as_ref() else {
        println!("oauth: [oauth] provider is not set: the smarthost login uses no OAuth");
        return 1;
    };
    println!(
        "oauth: provider {}, grant {}, client {}, token endpoint {}",
        o.provider.as_str(),
        o.grant.as_str(),
        o.client_id,
        o.token_url
    );
    let mut stored = None;
    if o.grant == OAuthGrant::RefreshToken {
        match store::read(&o.token_file) {
            Ok(Some(s)) => {
                println!(
                    "oauth: refresh token stored in {}{}{}",
                    o.token_file.display(),
                    s.signed_in
                        .map(|t| format!(", signed in {}", rfc5322_date(t)))
                        .unwrap_or_default(),
                    s.saved
                        .map(|t| format!(", last saved {}", rfc5322_date(t)))
                        .unwrap_or_default()
                );
                stored = Some(s);
            }
            Ok(None) => {
                println!(
                    "oauth: no refresh token stored in {}: sign in once with picorelay oauth login",
                    o.token_file.display()
                );
                return 1;
            }
            Err(e) => {
                println!("oauth: {e}");
                return 1;
            }
        }
    }
    let tokens = match Tokens::new(&cfg) {
        Ok(Some(t)) => t,
        Ok(None) => return 1,
        Err(e) => {
            println!("oauth: {e}");
            return 1;
        }
    };
    match tokens.get(None) {
        Ok(g) => {
            println!(
                "oauth: ok: the token endpoint granted an access token, valid for {}",
                human(g.valid_for.as_secs())
            );
            0
        }
        Err(e) if e.is_transient() => {
            println!(
                "oauth: FAILED for now: {e} (temporary: queued mail waits and goes out once the identity provider answers)"
            );
            1
        }
        Err(e) => {
            println!("oauth: FAILED: {}", e.explain(o.grant));
            if let Some(why) = testing_expiry(o, stored.as_ref(), &e) {
                println!("oauth: {why}");
            }
            1
        }
    }
}

/// testing_expiry names the most common Google surprise: an app left in "Testing" gets refresh
/// tokens that die 7 days after the sign-in.
fn testing_expiry(o: &OAuth, stored: Option<&Stored>, e: &TokenError) -> Option<&'static str> {
    let age = token::now_unix().saturating_sub(stored?.signed_in?);
    let week = 7 * 86_400;
    (o.provider == OAuthProvider::Google
        && e.error_code() == Some("invalid_grant")
        && (week - 86_400..week + 2 * 86_400).contains(&age))
    .then_some(
        "the sign-in was about 7 days ago: a Google app whose publishing status is \"Testing\" gets refresh tokens that expire after 7 days; set it to \"In production\" in the Google Cloud console, then picorelay oauth login",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_rfc7636_appendix_b() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert_eq!(
            pkce_challenge(verifier),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let v = random_url_text(32).unwrap();
        assert_eq!(v.len(), 43);
        assert!(v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_ne!(v, random_url_text(32).unwrap());
    }

    #[test]
    fn pasted_addresses() {
        let q = query_of(
            "http://127.0.0.1:41234/?state=s1&code=4/0Ab%2Bc&scope=https://mail.google.com/\n",
        )
        .unwrap();
        assert!(
            q.contains(&("code".to_string(), "4/0Ab+c".to_string())),
            "{q:?}"
        );
        assert!(q.contains(&("state".to_string(), "s1".to_string())));
        assert!(query_of("?code=c&state=s").is_some());
        assert!(query_of("  /?error=access_denied&state=s ").is_some());
        assert!(query_of("http://127.0.0.1:1/").is_none());
        assert!(query_of("4/0AbC").is_none());
    }
}
