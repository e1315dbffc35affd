//! Access tokens for the smarthost login: the token endpoint exchange (RFC 6749 5), what its
//! answers mean (transient, or needs a person), and the one in-memory access token that every
//! connection shares until shortly before it expires.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// A rotated refresh token that could not be written to the token file (a full disk, a
/// read-only folder): used from memory, and saved again and again until it lands, because
/// the one in the file may be void already (a provider may revoke it on rotation) and a
/// restart would have nothing else.
struct Unsaved {
    /// What the file should hold.
    stored: Stored,
    /// The refresh token in the file when the rotation began: a file holding neither this
    /// nor ours was written by someone else (`oauth login`), and then the file wins.
    on_disk: String,
    /// The last attempt, so a successful use tries again at most every SAVE_RETRY.
    tried: Instant,
    /// The last error logged, and when: logged again when it changes or hourly.
    logged: Option<(String, Instant)>,
}

/// How often a successful use of the cache tries to save a pending refresh token again (a
/// refresh and the keep-alive check always try).
const SAVE_RETRY: Duration = Duration::from_secs(60);
/// A save that keeps failing the same way is logged again this often.
const SAVE_RELOG: Duration = Duration::from_secs(3600);

/// What the cache lock guards: the access token, and a refresh token still to be saved.
#[derive(Default)]
struct Cache {
    access: Option<Access>,
    unsaved: Option<Unsaved>,
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
    cache: Mutex<Cache>,
    /// Set when a rotated refresh token could not be saved, taken by `unsaved_news`: the
    /// delivery loop looks at it each second without waiting for the cache lock.
    news: AtomicBool,
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
            cache: Mutex::new(Cache::default()),
            news: AtomicBool::new(false),
        }))
    }

    /// settings are the `[oauth]` settings this source was built from.
    pub fn settings(&self) -> &OAuth {
        &self.cfg
    }

    fn lock(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// adopt takes over a rotated refresh token `old` (the source of the config before a
    /// reload) could not save: a new source must not drop it and go back to the file's.
    pub fn adopt(&self, old: &Tokens) {
        if self.cfg.grant != OAuthGrant::RefreshToken {
            return;
        }
        let taken = old.lock().unsaved.take();
        if let Some(u) = taken {
            let mut cache = self.lock();
            cache.unsaved = Some(u);
            self.save_unsaved(&mut cache, true);
        }
    }

    /// get returns the access token in memory while it is usable, else a new one. `refused`
    /// names a token the smarthost refused: it is not handed out again (but a newer one that
    /// another sender got meanwhile is).
    pub fn get(&self, refused: Option<&str>) -> Result<Grant, TokenError> {
        let mut cache = self.lock();
        let now = Instant::now();
        if let Some(a) = cache.access.as_ref() {
            if a.usable(now) && refused != Some(a.token.as_str()) {
                let grant = Grant {
                    access_token: a.token.clone(),
                    valid_for: (a.issued + a.lifetime).saturating_duration_since(now),
                    new: false,
                };
                self.save_unsaved(&mut cache, false);
                return Ok(grant);
            }
        }
        self.renew(&mut cache, now)
    }

    /// renew asks for a new access token and keeps it in `cache`.
    fn renew(&self, cache: &mut Cache, now: Instant) -> Result<Grant, TokenError> {
        cache.access = None;
        let answer = self.request(cache)?;
        let grant = Grant {
            access_token: answer.access_token.clone(),
            valid_for: answer.lifetime,
            new: true,
        };
        cache.access = Some(Access {
            token: answer.access_token,
            issued: now,
            lifetime: answer.lifetime,
        });
        Ok(grant)
    }

    /// unsaved says, for `status`, that a rotated refresh token is held only in memory:
    /// None when there is none.
    pub fn unsaved(&self) -> Option<String> {
        let cache = self.lock();
        let u = cache.unsaved.as_ref()?;
        let why = u
            .logged
            .as_ref()
            .map_or("not saved yet", |(e, _)| e.as_str());
        Some(format!("{why}: {}", UNSAVED_HELP))
    }

    /// unsaved_news tells, once, that a save of a rotated refresh token failed for the first
    /// time since the last call, so the keep-alive check runs now rather than within the hour.
    pub fn unsaved_news(&self) -> bool {
        self.news.swap(false, Ordering::Relaxed)
    }

    /// retry_save tries once more to save a rotated refresh token held only in memory (the
    /// keep-alive check calls it): None when none is pending, else whether it is saved now.
    pub fn retry_save(&self) -> Option<Result<(), String>> {
        let mut cache = self.lock();
        cache.unsaved.as_ref()?;
        self.save_unsaved(&mut cache, true);
        match cache.unsaved.as_ref() {
            None => Some(Ok(())),
            Some(_) => {
                drop(cache);
                Some(Err(self.unsaved().unwrap_or_default()))
            }
        }
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
        let mut cache = self.lock();
        let stored = self.current(&mut cache).ok()?;
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
        let result = self.renew(&mut cache, Instant::now()).and_then(|_| {
            if let Some(u) = cache.unsaved.as_mut() {
                // The use is noted with the token still to be saved.
                u.stored.saved = Some(now_unix());
                return Ok(());
            }
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

    /// current is the refresh token to use: a rotated one still unsaved, else the file's. A
    /// file that holds another token than either was written by a new sign-in, which wins.
    fn current(&self, cache: &mut Cache) -> Result<Stored, TokenError> {
        let path = &self.cfg.token_file;
        let file = store::read(path);
        if let Some(u) = cache.unsaved.as_ref() {
            match &file {
                Ok(Some(f))
                    if f.refresh_token != u.on_disk
                        && f.refresh_token != u.stored.refresh_token =>
                {
                    log::info!(
                        "oauth: {} holds a new refresh token (picorelay oauth login?): it replaces the unsaved one in memory",
                        path.display()
                    );
                    cache.unsaved = None;
                }
                // Unreadable or gone: for the reason the save failed, perhaps; ours is newer.
                _ => return Ok(u.stored.clone()),
            }
        }
        file.map_err(TokenError::Local)?.ok_or_else(|| {
            TokenError::Local(format!(
                "[oauth] token_file: {}: no refresh token stored: sign in once with picorelay oauth login",
                path.display()
            ))
        })
    }

    /// keep saves a rotated refresh token; when it cannot, it stays in memory (see Unsaved),
    /// and the new access token is used all the same: refusing it would stop all mail over a
    /// full disk and send the old refresh token again at the next try.
    fn keep(&self, cache: &mut Cache, used: &Stored, new: &str) {
        let (on_disk, logged) = match cache.unsaved.take() {
            Some(u) => (u.on_disk, u.logged),
            None => (used.refresh_token.clone(), None),
        };
        cache.unsaved = Some(Unsaved {
            stored: Stored {
                refresh_token: new.to_string(),
                signed_in: used.signed_in,
                saved: Some(now_unix()),
            },
            on_disk,
            tried: Instant::now(),
            logged,
        });
        self.save_unsaved(cache, true);
    }

    /// save_unsaved writes a refresh token held only in memory to the file: always when
    /// `now`, else at most every SAVE_RETRY. A file some sign-in wrote meanwhile is left.
    fn save_unsaved(&self, cache: &mut Cache, now: bool) {
        let Some(mut u) = cache.unsaved.take() else {
            return;
        };
        if !now && u.tried.elapsed() < SAVE_RETRY {
            cache.unsaved = Some(u);
            return;
        }
        let path = &self.cfg.token_file;
        if let Ok(Some(f)) = store::read(path) {
            if f.refresh_token != u.on_disk && f.refresh_token != u.stored.refresh_token {
                log::info!(
                    "oauth: {} holds a new refresh token (picorelay oauth login?): the unsaved one in memory is dropped",
                    path.display()
                );
                return;
            }
        }
        u.tried = Instant::now();
        match store::save(path, &u.stored, self.owner) {
            Ok(()) if u.logged.is_some() => {
                log::info!(
                    "oauth: the rotated refresh token is saved to {} now",
                    path.display()
                );
            }
            Ok(()) => log::debug!("oauth: rotated refresh token saved to {}", path.display()),
            Err(e) => {
                let again = match &u.logged {
                    Some((last, at)) => *last != e || at.elapsed() >= SAVE_RELOG,
                    None => true,
                };
                if u.logged.is_none() {
                    self.news.store(true, Ordering::Relaxed);
                }
                if again {
                    log::error!("oauth: {e}: {UNSAVED_HELP}");
                    u.logged = Some((e, Instant::now()));
                }
                cache.unsaved = Some(u);
            }
        }
    }

    /// request asks the token endpoint for a new access token. With a refresh token, a
    /// rotated one is saved (atomically, fsynced) before the new access token is returned:
    /// the old one may already be void, and a crash must not leave us holding only that.
    /// When it cannot be saved, it is kept in memory (see `keep`).
    fn request(&self, cache: &mut Cache) -> Result<Answer, TokenError> {
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
                let stored = self.current(cache)?;
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
                match answer.refresh_token.as_deref() {
                    Some(new) if new != stored.refresh_token => self.keep(cache, &stored, new),
                    // Not rotated: one still unsaved from before is tried again.
                    _ => self.save_unsaved(cache, true),
                }
                Ok(answer)
            }
        }
    }
}

/// What a person does about a rotated refresh token that could not be saved.
const UNSAVED_HELP: &str = "the identity provider rotated the refresh token: the new one is kept in memory and used, and saving it is retried; make the token file's folder writable (free disk space) so it is saved. Until then a restart loses it and falls back to the one in the file, which the provider may have voided: then sign in again with picorelay oauth login";

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
    use std::path::{Path, PathBuf};

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

    /// A scripted identity provider: a TLS token endpoint on 127.0.0.1 that answers each
    /// request with what the next step returns for its form (the step may change the disk
    /// first, while the relay waits for the answer: between its read and its save).
    mod idp {
        use std::io::Write;
        use std::net::TcpListener;
        use std::path::{Path, PathBuf};
        use std::sync::OnceLock;
        use std::time::Duration;

        pub type Step = Box<dyn FnOnce(&str) -> String + Send>;

        pub fn certs() -> &'static Path {
            static DIR: OnceLock<PathBuf> = OnceLock::new();
            DIR.get_or_init(|| crate::tls::tests::gen_certs("oauth-token"))
        }

        /// serve answers one connection per step; returns the token URL and the thread,
        /// which ends after the last step.
        pub fn serve(steps: Vec<Step>) -> (String, std::thread::JoinHandle<()>) {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!(
                "https://127.0.0.1:{}/token",
                listener.local_addr().unwrap().port()
            );
            let cfg = crate::tls::server_config(&certs().join("ec.pem"), &certs().join("ec.key"))
                .unwrap();
            let t = std::thread::spawn(move || {
                for step in steps {
                    let (tcp, _) = listener.accept().unwrap();
                    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let conn = rustls::ServerConnection::new(cfg.clone()).unwrap();
                    let mut s = rustls::StreamOwned::new(conn, tcp);
                    let (_, body) =
                        crate::oauth::http::read_test_request(&mut s).expect("request cut short");
                    let json = step(&String::from_utf8(body).unwrap());
                    write!(
                        s,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
                        json.len()
                    )
                    .unwrap();
                    s.conn.send_close_notify();
                    s.flush().unwrap();
                }
            });
            (url, t)
        }

        /// granted is a success answer with access token `at` and, when given, a rotated
        /// refresh token.
        pub fn granted(at: &str, rt: Option<&str>) -> String {
            match rt {
                Some(rt) => format!(
                    r#"{{"access_token":"{at}","token_type":"Bearer","expires_in":3600,"refresh_token":"{rt}"}}"#
                ),
                None => {
                    format!(r#"{{"access_token":"{at}","token_type":"Bearer","expires_in":3600}}"#)
                }
            }
        }
    }

    /// A token file in a folder of its own, DIR/oauth/oauth-token, holding refresh token `rt`,
    /// and a Tokens for `url` using it.
    fn relay_tokens(tag: &str, url: &str, rt: &str) -> (PathBuf, Tokens) {
        let dir = std::env::temp_dir().join(format!("picorelay-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("oauth")).unwrap();
        let file = dir.join("oauth/oauth-token");
        store::save(&file, &store::parse(rt).unwrap(), None).unwrap();
        let text = format!(
            "[server]\nlisten = 127.0.0.1:2525\nhostname = h.test\n[queue]\ndir = {q}\n\
             [smarthost]\nhost = 127.0.0.1:2526\nusername = relay@example.com\n\
             [oauth]\nprovider = custom\ngrant = refresh_token\nclient_id = c\nscope = s\n\
             token_url = {url}\nca_file = {ca}\ntimeout = 5s\ntoken_file = {f}\n",
            q = dir.join("spool").display(),
            ca = idp::certs().join("ca.pem").display(),
            f = file.display(),
        );
        let cfg = Config::parse(Path::new("t.ini"), &text).unwrap();
        (dir, Tokens::new(&cfg).unwrap().unwrap())
    }

    /// form_token is the refresh token a token request sent.
    fn form_token(form: &str) -> String {
        form.split('&')
            .find_map(|kv| kv.strip_prefix("refresh_token="))
            .unwrap_or("")
            .to_string()
    }

    /// blocked makes DIR/oauth a regular file (the folder moved aside): the token file can
    /// neither be read nor written, even by root (ENOTDIR), as on a full or broken disk.
    fn blocked(dir: &Path) {
        std::fs::rename(dir.join("oauth"), dir.join("oauth.away")).unwrap();
        std::fs::write(dir.join("oauth"), "not a folder").unwrap();
    }

    fn unblocked(dir: &Path) {
        std::fs::remove_file(dir.join("oauth")).unwrap();
        std::fs::rename(dir.join("oauth.away"), dir.join("oauth")).unwrap();
    }

    fn on_disk(dir: &Path) -> String {
        store::read(&dir.join("oauth/oauth-token"))
            .unwrap()
            .unwrap()
            .refresh_token
    }

    /// A rotated refresh token that cannot be saved is kept in memory: the new access token
    /// is used, the next refresh sends the rotated token (not the old one in the file), and
    /// once the folder is writable again the newest one is saved.
    #[test]
    fn unsaved_rotation_is_used_from_memory_and_saved_later() {
        let dir = Arc::new(Mutex::new(PathBuf::new()));
        let d = Arc::clone(&dir);
        let steps: Vec<idp::Step> = vec![
            Box::new(move |form| {
                assert_eq!(form_token(form), "rt1");
                blocked(&d.lock().unwrap());
                idp::granted("at1", Some("rt2"))
            }),
            Box::new(|form| {
                assert_eq!(form_token(form), "rt2", "the rotated token, from memory");
                idp::granted("at2", Some("rt3"))
            }),
            Box::new(|form| {
                assert_eq!(form_token(form), "rt3");
                idp::granted("at3", None)
            }),
        ];
        let (url, server) = idp::serve(steps);
        let (path, tokens) = relay_tokens("unsaved", &url, "rt1");
        *dir.lock().unwrap() = path.clone();

        let g = tokens.get(None).expect("the new access token is used");
        assert_eq!((g.access_token.as_str(), g.new), ("at1", true));
        let why = tokens.unsaved().expect("status says the token is unsaved");
        assert!(why.contains("cannot save the refresh token"), "{why}");
        assert!(why.contains("picorelay oauth login"), "{why}");
        assert!(!why.contains("rt2"), "no secret: {why}");
        assert!(tokens.unsaved_news() && !tokens.unsaved_news());
        assert_eq!(tokens.get(None).unwrap().access_token, "at1", "from memory");

        // Refused by the smarthost: renewed with the rotated token; rt3 cannot be saved either.
        assert_eq!(tokens.get(Some("at1")).unwrap().access_token, "at2");
        assert!(matches!(tokens.retry_save(), Some(Err(_))));

        // Writable again: the file still holds rt1, which the rotation replaced.
        unblocked(&path);
        assert_eq!(on_disk(&path), "rt1");
        assert_eq!(tokens.retry_save(), Some(Ok(())));
        assert_eq!(on_disk(&path), "rt3");
        assert!(tokens.unsaved().is_none());
        assert_eq!(tokens.retry_save(), None);

        // And then from the file: not rotated this time, nothing more to save.
        assert_eq!(tokens.get(Some("at2")).unwrap().access_token, "at3");
        assert_eq!(on_disk(&path), "rt3");
        server.join().unwrap();
        std::fs::remove_dir_all(&path).unwrap();
    }

    /// A refresh that does not rotate saves a pending token; a new sign-in written to the
    /// file meanwhile wins over the unsaved token in memory.
    #[test]
    fn unsaved_rotation_yields_to_a_new_sign_in() {
        let dir = Arc::new(Mutex::new(PathBuf::new()));
        let (d1, d2) = (Arc::clone(&dir), Arc::clone(&dir));
        let steps: Vec<idp::Step> = vec![
            Box::new(move |_| {
                blocked(&d1.lock().unwrap());
                idp::granted("at1", Some("rt2"))
            }),
            Box::new(move |form| {
                assert_eq!(form_token(form), "rt2");
                unblocked(&d2.lock().unwrap());
                idp::granted("at2", None)
            }),
            Box::new(|form| {
                assert_eq!(form_token(form), "login", "the new sign-in, not rt2");
                idp::granted("at3", None)
            }),
        ];
        let (url, server) = idp::serve(steps);
        let (path, tokens) = relay_tokens("signin", &url, "rt1");
        *dir.lock().unwrap() = path.clone();
        tokens.get(None).unwrap();
        assert!(tokens.unsaved().is_some());
        // Not rotated, folder back: the pending rt2 is saved by this refresh.
        assert_eq!(tokens.get(Some("at1")).unwrap().access_token, "at2");
        assert_eq!(on_disk(&path), "rt2");
        assert!(tokens.unsaved().is_none());

        // Pending again (rt4), then `oauth login` writes the file: the file wins.
        tokens.lock().unsaved = Some(Unsaved {
            stored: store::parse("rt4").unwrap(),
            on_disk: "rt2".to_string(),
            tried: Instant::now(),
            logged: None,
        });
        store::save(
            &path.join("oauth/oauth-token"),
            &store::parse("login").unwrap(),
            None,
        )
        .unwrap();
        assert_eq!(tokens.get(Some("at2")).unwrap().access_token, "at3");
        assert!(tokens.unsaved().is_none());
        assert_eq!(on_disk(&path), "login", "the sign-in is not overwritten");
        server.join().unwrap();
        std::fs::remove_dir_all(&path).unwrap();
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
