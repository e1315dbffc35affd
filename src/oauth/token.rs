//! Access tokens for the smarthost login: the token endpoint exchange (RFC 6749 5), what its
//! answers mean (transient, or needs a person), and the one in-memory access token that every
//! connection shares until shortly before it expires.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::{ClientCertificate, Config, OAuth, OAuthGrant};
use crate::oauth::assertion::{self, Signer};
use crate::oauth::http::{self, Url};
use crate::oauth::json::Value;
use crate::oauth::store::{self, Stored};

/// Largest token endpoint answer we read: real ones are a few KB (a Microsoft access token
/// is a JWT of 1-3 KB).
const MAX_ANSWER: usize = 64 * 1024;
/// Longest access token we send: it goes on one AUTH line (RFC 4954 4 allows 12288 octets).
const MAX_TOKEN: usize = 8 * 1024;
/// Lifetime assumed when the answer has no `expires_in` (RFC 6749 5.1 makes it optional).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// Renew this long before expiry at most: Microsoft refuses tokens about to expire
/// (`501 5.5.127 ... token will expire soon`), so renew 10 minutes ahead.
const RENEW_MARGIN: Duration = Duration::from_secs(600);
/// A refresh token unused this long is used once anyway: Microsoft voids one unused for 90
/// days, Google for 6 months, and a box that sends mail only when something fails must still
/// be able to when it does.
pub const KEEP_ALIVE_AFTER: Duration = Duration::from_secs(7 * 86_400);
/// How much of the provider's `error_description` we keep (Microsoft's carry trace ids).
const MAX_DESCRIPTION: usize = 300;

/// The `error` codes that mean "try again later" (RFC 6749 5.2 and 4.1.2.1).
const TRANSIENT_ERRORS: &[&str] = &["temporarily_unavailable", "server_error"];

/// Why no access token could be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Unreachable, timed out, TLS failure, HTTP 5xx or 429, `temporarily_unavailable`:
    /// the same request may succeed later.
    Transient(String),
    /// The identity provider said no (RFC 6749 5.2): a person must act.
    Refused {
        /// The endpoint that answered.
        url: String,
        /// The `error` code (`invalid_grant`, ...).
        error: String,
        /// The `error_description`, cleaned and shortened.
        description: String,
    },
    /// Something on this box: no refresh token stored, an unreadable secret file, a token file
    /// that cannot be written, an endpoint answering with something that is not OAuth.
    Local(String),
}

impl TokenError {
    /// error_code is the provider's `error` when it refused.
    pub fn error_code(&self) -> Option<&str> {
        match self {
            TokenError::Refused { error, .. } => Some(error),
            _ => None,
        }
    }

    /// kind names the failure without ids or times: "oauth invalid_grant", "oauth transient".
    pub fn kind(&self) -> String {
        match self {
            TokenError::Transient(_) => "oauth transient".to_string(),
            TokenError::Refused { error, .. } => format!("oauth {error}"),
            TokenError::Local(_) => "oauth local".to_string(),
        }
    }

    /// is_transient tells whether the same request may succeed later without anyone acting.
    pub fn is_transient(&self) -> bool {
        matches!(self, TokenError::Transient(_))
    }

    /// explain is the error with what to do about it, for the log, `status` and `oauth status`.
    pub fn explain(&self, grant: OAuthGrant) -> String {
        match self {
            TokenError::Refused { error, .. } => format!("{self}: {}", fix_for(error, grant)),
            _ => self.to_string(),
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Transient(m) | TokenError::Local(m) => f.write_str(m),
            TokenError::Refused {
                url,
                error,
                description,
            } if description.is_empty() => write!(f, "token endpoint {url}: {error}"),
            TokenError::Refused {
                url,
                error,
                description,
            } => write!(f, "token endpoint {url}: {error}: {description}"),
        }
    }
}

/// fix_for says what a person does about a refusal (oauth-providers.md: classify on `error`,
/// never on the AADSTS text).
fn fix_for(error: &str, grant: OAuthGrant) -> &'static str {
    use OAuthGrant::{ClientCredentials as App, RefreshToken as Person};
    match (error, grant) {
        ("invalid_grant", Person) => "the refresh token was revoked or has expired (a password change, 90 days unused at Microsoft, 7 days for a Google app still in \"Testing\"): sign in again with picorelay oauth login",
        ("invalid_client", Person) => "check [oauth] client_id and client_secret (secrets expire: make a new one); a Microsoft app without a secret needs Authentication > Allow public client flows = Yes; then picorelay oauth login",
        ("unauthorized_client", Person) => "check [oauth] client_id and tenant (the app must exist in that tenant) and that the app allows this sign-in (Microsoft: Allow public client flows = Yes); then picorelay oauth login",
        ("interaction_required" | "consent_required", Person) => "consent is missing (an admin may have to grant it for the tenant): picorelay oauth login",
        ("invalid_scope", Person) => "check [oauth] scope, then picorelay oauth login",
        ("invalid_request", Person) => "the identity provider refused the request: check [oauth] client_id, tenant and scope, then picorelay oauth login",
        (_, Person) => "see the provider's description; then picorelay oauth login",
        ("invalid_client", App) => "check [oauth] client_id and the client secret or certificate (client secrets expire: make a new one in the app registration)",
        ("unauthorized_client" | "invalid_grant", App) => "check [oauth] client_id and tenant (your tenant id or domain, not organizations or common)",
        ("invalid_scope", App) => "check [oauth] scope (app-only: https://outlook.office365.com/.default) and that SMTP.SendAsApp has admin consent",
        (_, App) => "check the app registration (SMTP.SendAsApp with admin consent) and [oauth] client_id, tenant and scope",
    }
}

/// What a token endpoint granted (RFC 6749 5.1).
pub struct Answer {
    /// The access token; never printed.
    pub access_token: String,
    /// `expires_in`, or an hour when absent.
    pub lifetime: Duration,
    /// A new refresh token, when the provider rotates them.
    pub refresh_token: Option<String>,
}

/// One endpoint of the identity provider, with the TLS settings and deadline for requests.
pub struct Endpoint {
    /// As configured, for messages.
    pub url: String,
    parsed: Url,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

impl Endpoint {
    /// Endpoint::new checks the URL and builds the TLS client config: the web PKI roots, or
    /// `[oauth] ca_file`; certificates are always verified.
    pub fn new(url: &str, cfg: &OAuth) -> Result<Endpoint, TokenError> {
        let parsed = http::parse_url(url).map_err(|e| TokenError::Local(format!("{url}: {e}")))?;
        let tls = crate::tls::client_config(true, cfg.ca_file.as_deref(), None)
            .map_err(|e| TokenError::Local(format!("[oauth] {e}")))?;
        Ok(Endpoint {
            url: url.to_string(),
            parsed,
            tls,
            timeout: cfg.timeout,
        })
    }

    /// post sends the form and returns the JSON of a 2xx answer; anything else is classified.
    /// Redirects are not followed: a token endpoint has no reason to send one.
    pub fn post(&self, form: &[(&str, &str)]) -> Result<Value, TokenError> {
        let resp = http::post_form(
            &self.parsed,
            form,
            Arc::clone(&self.tls),
            self.timeout,
            MAX_ANSWER,
        )
        .map_err(|e| TokenError::Transient(format!("token endpoint {}: {e}", self.url)))?;
        classify(&self.url, &resp)
    }
}

/// classify turns an HTTP answer into the JSON of a success or the error it means.
fn classify(url: &str, resp: &http::Response) -> Result<Value, TokenError> {
    let json = crate::oauth::json::parse(&resp.body).ok();
    let field = |k: &str| json.as_ref().and_then(|v| v.get(k)).and_then(Value::as_str);
    let status = resp.status;
    if (200..300).contains(&status) {
        return json.ok_or_else(|| {
            TokenError::Transient(format!(
                "token endpoint {url}: HTTP {status} answer is not JSON"
            ))
        });
    }
    let busy = status >= 500 || status == 429;
    if let Some(code) = field("error") {
        let error = clean(code, 64);
        let description = clean(field("error_description").unwrap_or(""), MAX_DESCRIPTION);
        if busy || TRANSIENT_ERRORS.contains(&error.as_str()) {
            let sep = if description.is_empty() { "" } else { ": " };
            return Err(TokenError::Transient(format!(
                "token endpoint {url}: HTTP {status}: {error}{sep}{description}"
            )));
        }
        return Err(TokenError::Refused {
            url: url.to_string(),
            error,
            description,
        });
    }
    if busy {
        return Err(TokenError::Transient(format!(
            "token endpoint {url}: HTTP {status}"
        )));
    }
    if resp.is_redirect() {
        let to = clean(resp.header("location").unwrap_or("?"), 200);
        return Err(TokenError::Local(format!(
            "token endpoint {url}: answered with a redirect to {to}; redirects are not followed: check [oauth] token_url"
        )));
    }
    Err(TokenError::Local(format!(
        "token endpoint {url}: HTTP {status} without an OAuth error: check [oauth] token_url"
    )))
}

/// clean keeps text from the network printable and short.
fn clean(s: &str, max: usize) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect::<String>()
        .trim()
        .to_string()
}

/// token_answer reads a successful answer (RFC 6749 5.1): `expires_in` may be a number or a
/// string; a token that is not plain printable text is refused rather than sent.
pub fn token_answer(url: &str, v: &Value) -> Result<Answer, TokenError> {
    let bad = |why: &str| TokenError::Transient(format!("token endpoint {url}: {why}"));
    let access_token = v
        .get("access_token")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("answer without access_token"))?;
    if access_token.is_empty()
        || access_token.len() > MAX_TOKEN
        || !access_token.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(bad("access_token is empty, too long or not printable"));
    }
    if let Some(t) = v.get("token_type").and_then(Value::as_str) {
        if !t.eq_ignore_ascii_case("bearer") {
            return Err(bad("token_type is not Bearer"));
        }
    }
    let lifetime = v
        .get("expires_in")
        .and_then(Value::as_u64_lenient)
        .map(|s| Duration::from_secs(s.clamp(1, 86_400 * 365)))
        .unwrap_or(DEFAULT_LIFETIME);
    let refresh_token = v
        .get("refresh_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string);
    Ok(Answer {
        access_token: access_token.to_string(),
        lifetime,
        refresh_token,
    })
}

/// renew_after is how long a token of `lifetime` is used: until min(10 minutes, half its
/// lifetime) before it expires.
pub fn renew_after(lifetime: Duration) -> Duration {
    lifetime.saturating_sub(RENEW_MARGIN.min(lifetime / 2))
}

/// now_unix is the wall clock in seconds, for the token file.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// client_secret is `client_secret`, or the first line of `client_secret_file`, read now:
/// only token requests need it (`sendmail` never reads it).
pub fn client_secret(cfg: &OAuth) -> Result<Option<String>, TokenError> {
    match (&cfg.client_secret, &cfg.client_secret_file) {
        (Some(s), _) => Ok(Some(s.clone())),
        (None, Some(p)) => crate::config::read_first_line(p).map(Some).map_err(|e| {
            TokenError::Local(format!("[oauth] client_secret_file: {}: {e}", p.display()))
        }),
        (None, None) => Ok(None),
    }
}

/// signer loads the certificate credential: at set-up, so `picorelay check` and start-up catch
/// a bad pair, and again for each token request, so a renewed certificate and key are picked
/// up without a restart (the way `client_secret_file` is read anew).
fn signer(c: &ClientCertificate) -> Result<Signer, TokenError> {
    Signer::load(&c.cert, &c.key).map_err(|e| TokenError::Local(e.to_string()))
}

/// The access token in memory.
struct Access {
    token: String,
    issued: Instant,
    lifetime: Duration,
}

impl Access {
    fn usable(&self, now: Instant) -> bool {
        now < self.issued + renew_after(self.lifetime)
    }
}

/// A token handed out, with how long it stays valid.
pub struct Grant {
    /// The access token; never printed.
    pub access_token: String,
    /// Time left before it expires.
    pub valid_for: Duration,
    /// True when it was requested just now, false when it came from memory.
    pub new: bool,
}

/// Tokens is the relay's access token source: one token serves every connection and message
/// until `renew_after`; the cache lock is held while a new one is requested, so senders that
/// need one at the same time make one request, not several.
pub struct Tokens {
    cfg: OAuth,
    endpoint: Endpoint,
    /// The service user, when we run as root: a rotated token file must stay its.
    owner: Option<(u32, u32)>,
    cache: Mutex<Option<Access>>,
}

impl Tokens {
    /// Tokens::new builds the source for `cfg`; None when `[oauth]` is not set.
    pub fn new(cfg: &Config) -> Result<Option<Tokens>, TokenError> {
        let Some(o) = cfg.oauth.as_ref() else {
            return Ok(None);
        };
        if let Some(c) = &o.client_certificate {
            signer(c)?;
        }
        Ok(Some(Tokens {
            cfg: o.clone(),
            endpoint: Endpoint::new(&o.token_url, o)?,
            owner: service_owner(cfg),
            cache: Mutex::new(None),
        }))
    }

    /// settings are the `[oauth]` settings this source was built from.
    pub fn settings(&self) -> &OAuth {
        &self.cfg
    }

    fn lock(&self) -> MutexGuard<'_, Option<Access>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// get returns the access token in memory while it is usable, else a new one. `refused`
    /// names a token the smarthost refused: it is not handed out again (but a newer one that
    /// another sender got meanwhile is).
    pub fn get(&self, refused: Option<&str>) -> Result<Grant, TokenError> {
        let mut cache = self.lock();
        let now = Instant::now();
        if let Some(a) = cache.as_ref() {
            if a.usable(now) && refused != Some(a.token.as_str()) {
                return Ok(Grant {
                    access_token: a.token.clone(),
                    valid_for: (a.issued + a.lifetime).saturating_duration_since(now),
                    new: false,
                });
            }
        }
        self.renew(&mut cache, now)
    }

    /// renew asks for a new access token and keeps it in `cache`.
    fn renew(&self, cache: &mut Option<Access>, now: Instant) -> Result<Grant, TokenError> {
        *cache = None;
        let answer = self.request()?;
        let grant = Grant {
            access_token: answer.access_token.clone(),
            valid_for: answer.lifetime,
            new: true,
        };
        *cache = Some(Access {
            token: answer.access_token,
            issued: now,
            lifetime: answer.lifetime,
        });
        Ok(grant)
    }

    /// keep_alive uses a stored refresh token that has not been used (saved) for
    /// KEEP_ALIVE_AFTER: one token request, and the file's `saved` time renewed when the
    /// provider did not rotate the token. None when nothing was due; Some(days unused) after a
    /// successful request.
    pub fn keep_alive(&self) -> Option<Result<u64, TokenError>> {
        if self.cfg.grant != OAuthGrant::RefreshToken {
            return None;
        }
        let path = &self.cfg.token_file;
        let stored = store::read(path).ok()??;
        let modified = || {
            std::fs::metadata(path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs())
        };
        let last = stored.saved.or_else(modified)?;
        let idle = now_unix().saturating_sub(last);
        if idle < KEEP_ALIVE_AFTER.as_secs() {
            return None;
        }
        let mut cache = self.lock();
        let result = self.renew(&mut cache, Instant::now()).and_then(|_| {
            match store::read(path) {
                // Not rotated: note the use, so the next keep-alive is a week away.
                Ok(Some(now)) if now.refresh_token == stored.refresh_token => {
                    let renewed = Stored {
                        saved: Some(now_unix()),
                        ..now
                    };
                    store::save(path, &renewed, self.owner).map_err(TokenError::Local)
                }
                _ => Ok(()),
            }
        });
        Some(result.map(|()| idle / 86_400))
    }

    /// request asks the token endpoint for a new access token. With a refresh token, a
    /// rotated one is saved (atomically, fsynced) before the new access token is returned:
    /// the old one may already be void, and a crash must not leave us holding only that.
    fn request(&self) -> Result<Answer, TokenError> {
        let secret = client_secret(&self.cfg)?;
        let url = &self.endpoint.url;
        match self.cfg.grant {
            OAuthGrant::ClientCredentials => {
                let mut form = vec![
                    ("grant_type", "client_credentials"),
                    ("client_id", self.cfg.client_id.as_str()),
                    ("scope", self.cfg.scope.as_str()),
                ];
                // RFC 7523 2.2: a fresh assertion per request (token requests happen once
                // per token lifetime, not per message); `aud` is the token endpoint.
                let jwt = match &self.cfg.client_certificate {
                    Some(c) => Some(
                        signer(c)?
                            .assertion(&self.cfg.client_id, url, now_unix())
                            .map_err(|e| TokenError::Local(e.to_string()))?,
                    ),
                    None => None,
                };
                if let Some(a) = jwt.as_deref() {
                    form.push(("client_assertion_type", assertion::ASSERTION_TYPE));
                    form.push(("client_assertion", a));
                }
                if let Some(s) = secret.as_deref() {
                    form.push(("client_secret", s));
                }
                token_answer(url, &self.endpoint.post(&form)?)
            }
            OAuthGrant::RefreshToken => {
                let path = &self.cfg.token_file;
                let stored = store::read(path)
                    .map_err(TokenError::Local)?
                    .ok_or_else(|| {
                        TokenError::Local(format!(
                            "[oauth] token_file: {}: no refresh token stored: sign in once with picorelay oauth login",
                            path.display()
                        ))
                    })?;
                let mut form = vec![
                    ("grant_type", "refresh_token"),
                    ("refresh_token", stored.refresh_token.as_str()),
                    ("client_id", self.cfg.client_id.as_str()),
                    ("scope", self.cfg.scope.as_str()),
                ];
                if let Some(s) = secret.as_deref() {
                    form.push(("client_secret", s));
                }
                let answer = token_answer(url, &self.endpoint.post(&form)?)?;
                if let Some(new) = answer
                    .refresh_token
                    .as_ref()
                    .filter(|t| **t != stored.refresh_token)
                {
                    let rotated = Stored {
                        refresh_token: new.clone(),
                        signed_in: stored.signed_in,
                        saved: Some(now_unix()),
                    };
                    store::save(path, &rotated, self.owner).map_err(|e| {
                        log::error!("oauth: {e}: the new access token is not used");
                        TokenError::Local(e)
                    })?;
                    log::debug!("oauth: rotated refresh token saved to {}", path.display());
                }
                Ok(answer)
            }
        }
    }
}

/// service_owner is the uid/gid a token file written by root must belong to, so the relay
/// (which runs as its own user) can read and replace it: the `[server] user` when set; else,
/// as under systemd's `User=`, whoever owns the token file already, or else its folder (the
/// spool). None when we are not root (we are that user), or when nothing but root owns them.
pub fn service_owner(cfg: &Config) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    if !crate::sys::is_root() {
        return None;
    }
    if let Some(name) = cfg.server.user.as_deref() {
        match crate::sys::lookup_user(name) {
            Ok(a) => return Some((a.uid, a.gid)),
            Err(e) => log::warn!("oauth: [server] user: {e}"),
        }
    }
    let file = cfg.oauth.as_ref()?.token_file.as_path();
    let folder = file.parent().filter(|d| !d.as_os_str().is_empty());
    [Some(file), folder]
        .into_iter()
        .flatten()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| (m.uid(), m.gid()))
        .find(|(uid, _)| *uid != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, body: &str) -> http::Response {
        http::Response {
            status,
            headers: vec![("Location".to_string(), "https://elsewhere/".to_string())],
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn answers_are_classified_on_the_error_code() {
        let u = "https://idp/token";
        // (status, body, Ok / transient / refused code / local)
        let cases: &[(u16, &str, &str)] = &[
            (
                200,
                r#"{"access_token":"a","token_type":"Bearer","expires_in":3599}"#,
                "ok",
            ),
            (200, "<html>", "transient"),
            (
                400,
                r#"{"error":"invalid_grant","error_description":"AADSTS70008: expired\r\nTrace ID: 1"}"#,
                "refused invalid_grant",
            ),
            (
                401,
                r#"{"error":"invalid_client"}"#,
                "refused invalid_client",
            ),
            (
                400,
                r#"{"error":"consent_required"}"#,
                "refused consent_required",
            ),
            (503, r#"{"error":"temporarily_unavailable"}"#, "transient"),
            (400, r#"{"error":"temporarily_unavailable"}"#, "transient"),
            (500, r#"{"error":"invalid_grant"}"#, "transient"),
            (503, "Service Unavailable", "transient"),
            (429, "", "transient"),
            (302, "", "local"),
            (404, "not found", "local"),
        ];
        for (status, body, want) in cases {
            let got = match classify(u, &resp(*status, body)) {
                Ok(_) => "ok".to_string(),
                Err(TokenError::Transient(_)) => "transient".to_string(),
                Err(TokenError::Refused { error, .. }) => format!("refused {error}"),
                Err(TokenError::Local(_)) => "local".to_string(),
            };
            assert_eq!(got, *want, "{status} {body}");
        }
        let e = classify(
            u,
            &resp(
                400,
                r#"{"error":"invalid_grant","error_description":"AADSTS70008: expired\r\nTrace"}"#,
            ),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "token endpoint https://idp/token: invalid_grant: AADSTS70008: expired  Trace"
        );
        assert!(e
            .explain(OAuthGrant::RefreshToken)
            .contains("picorelay oauth login"));
    }

    #[test]
    fn token_answers() {
        let u = "https://idp/token";
        let parse = |s: &str| token_answer(u, &crate::oauth::json::parse(s.as_bytes()).unwrap());
        let a = parse(r#"{"access_token":"at","token_type":"bearer","expires_in":"3599","refresh_token":"rt2"}"#).unwrap();
        assert_eq!(
            (
                a.access_token.as_str(),
                a.lifetime,
                a.refresh_token.as_deref()
            ),
            ("at", Duration::from_secs(3599), Some("rt2"))
        );
        let a = parse(r#"{"access_token":"at"}"#).unwrap();
        assert_eq!((a.lifetime, a.refresh_token), (DEFAULT_LIFETIME, None));
        for bad in [
            r#"{"token_type":"Bearer"}"#,
            r#"{"access_token":""}"#,
            r#"{"access_token":"a b"}"#,
            r#"{"access_token":"a\u0001b"}"#,
            r#"{"access_token":"a","token_type":"mac"}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tokens_are_renewed_ahead_of_expiry() {
        let cases = [
            (3600, 3000),
            (3599, 2999),
            (1200, 600),
            (600, 300),
            (4, 2),
            (1, 1),
        ];
        for (lifetime, want) in cases {
            let got = renew_after(Duration::from_secs(lifetime));
            assert_eq!(got.as_secs_f64().ceil() as u64, want, "{lifetime}");
        }
    }
}
