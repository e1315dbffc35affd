//! Reads picorelay.ini into a validated `Config`, collecting every problem as one line `FILE: [section] key: reason`.
//!
//! The grammar we accept is small and documented in interface.md: `[section]` headers,
//! `key = value` lines, whole-line `;`/`#` comments, inline comments after whitespace + `;`,
//! and values in double quotes kept verbatim. Backslashes are never special.
//!
//! rust-ini (the `ini` crate) parses the file, with escapes off. It has no line numbers, merges
//! duplicate sections, joins the next line onto a value that ends in `\` (a password like
//! `secret\` would swallow the following key), ends keys at `:` and treats `'` as a quote.
//! So a line-oriented pre-pass (`prepass`) first reports what needs line numbers (syntax,
//! unknown and duplicate names) and cuts comments, and hands rust-ini a normalised text in which
//! none of those quirks can trigger; `from_ini` then reads what rust-ini parsed.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Every section with its keys and their defaults (interface.md), in one place.
/// An empty value (`key =`) means the default, except for the keys in `EMPTY_IS_NONE`.
/// `users` and `aliases` have free-form keys.
const SCHEMA: &[(&str, &[(&str, &str)])] = &[
    (
        "server",
        &[
            ("listen", "127.0.0.1:25, [::1]:25"),
            ("listen_tls", ""),
            ("hostname", ""), // the system's host name
            ("workers", "16"),
            ("max_connections_per_ip", "8"),
            ("max_message_size", "10M"),
            ("max_recipients", "100"),
            ("command_timeout", "5m"),
            ("data_timeout", "10m"),
            ("tls_cert", ""),
            ("tls_key", ""),
            ("require_tls", "no"),
            ("relay_networks", "127.0.0.0/8, ::1/128"),
            ("local_domains", ""), // hostname and localhost
            ("auth", "optional"),
            ("user", ""),
            ("pid_file", ""),
        ],
    ),
    ("users", &[]),
    (
        "smarthost",
        &[
            ("host", ""),
            ("port", "587"),
            ("tls", "starttls"),
            ("tls_verify", "yes"),
            ("ca_file", ""),
            ("tls_fingerprint", ""),
            ("username", ""),
            ("password", ""),
            ("password_file", ""),
            ("helo", ""), // server.hostname
            ("timeout", "5m"),
            ("auth", "auto"),
            ("max_connections", "3"),
            ("rate", ""),             // none
            ("daily_recipients", ""), // none
            ("throttle_replies", ""), // only the built-in table
        ],
    ),
    (
        "oauth",
        &[
            ("provider", ""),
            ("grant", "refresh_token"),
            ("tenant", "organizations"),
            ("client_id", ""),
            ("client_secret", ""),
            ("client_secret_file", ""),
            ("client_certificate", ""),
            ("client_key", ""),
            ("token_url", ""),  // from provider
            ("device_url", ""), // from provider
            ("auth_url", ""),   // from provider
            ("scope", ""),      // from provider and grant
            ("token_file", ""), // oauth-token in queue.dir
            ("ca_file", ""),
            ("timeout", "30s"),
        ],
    ),
    (
        "queue",
        &[
            ("dir", "/var/spool/picorelay"),
            ("retry_min", "1m"),
            ("retry_max", "1h"),
            ("lifetime", "5d"),
            ("max_size", "100M"),
            ("bounce_to", "sender"),
            ("reuse_files", "auto"),
        ],
    ),
    ("aliases", &[]),
    ("rewrite", &[("sender", ""), ("from", "")]),
    ("log", &[("level", "info"), ("file", "")]),
];

/// Keys where an explicitly empty value means "none" rather than the default:
/// `listen =` runs without plain listeners (sendmail submission only),
/// `relay_networks =` makes every client authenticate before relaying.
const EMPTY_IS_NONE: &[(&str, &str)] = &[("server", "listen"), ("server", "relay_networks")];

/// Sections whose keys are chosen by the user.
const FREE_FORM: &[&str] = &["users", "aliases"];

/// Upper bound for every duration, so that adding one to a unix time can never overflow.
const MAX_DURATION_SECS: u64 = 3650 * 86400;

/// Upper bound for `rate` N: far above any provider's limit, and it bounds the send times the
/// pacer keeps for the window.
const MAX_RATE_COUNT: u64 = 1_000_000;

/// Upper bound for `daily_recipients`, for the same reasons (Microsoft 365 allows 10000).
const MAX_DAILY_RECIPIENTS: u64 = 10_000_000;

/// How a client may or must authenticate (RFC 4954).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// AUTH is not offered.
    Off,
    /// AUTH is offered; relay_networks clients may relay without it.
    #[default]
    Optional,
    /// Every client outside the local clients must authenticate before MAIL.
    Required,
}

/// How the smarthost connection is secured: `starttls` | `tls` | `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// STARTTLS is required, never downgraded (RFC 3207).
    #[default]
    StartTls,
    /// TLS from the first byte (RFC 8314), usually port 465.
    Implicit,
    /// Plain text.
    None,
}

/// `[smarthost] auth`: how the relay logs in to the smarthost (RFC 4954).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SmarthostAuth {
    /// XOAUTH2/OAUTHBEARER when `[oauth]` is set, else PLAIN/LOGIN when a username is set.
    #[default]
    Auto,
    /// AUTH PLAIN with the password.
    Plain,
    /// AUTH LOGIN with the password.
    Login,
    /// SASL XOAUTH2 with an `[oauth]` access token.
    Xoauth2,
    /// SASL OAUTHBEARER (RFC 7628) with an `[oauth]` access token.
    Oauthbearer,
    /// No AUTH at all.
    None,
}

/// `[oauth] provider`: whose endpoints and defaults apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthProvider {
    /// Microsoft identity platform (Microsoft 365, Outlook.com).
    Microsoft,
    /// Google (Gmail, Google Workspace).
    Google,
    /// Any other: token_url and scope given in full.
    Custom,
}

impl OAuthProvider {
    /// as_str is the name as written in the ini file.
    pub fn as_str(self) -> &'static str {
        match self {
            OAuthProvider::Microsoft => "microsoft",
            OAuthProvider::Google => "google",
            OAuthProvider::Custom => "custom",
        }
    }
}

/// `[oauth] grant`: where access tokens come from (RFC 6749).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OAuthGrant {
    /// A refresh token stored by `picorelay oauth login` (RFC 6749 6).
    #[default]
    RefreshToken,
    /// The application's own credentials, no person (RFC 6749 4.4).
    ClientCredentials,
}

impl OAuthGrant {
    /// as_str is the name as written in the ini file (and the grant_type sent).
    pub fn as_str(self) -> &'static str {
        match self {
            OAuthGrant::RefreshToken => "refresh_token",
            OAuthGrant::ClientCredentials => "client_credentials",
        }
    }
}

/// `[oauth]`: how access tokens for the smarthost login are obtained. Every endpoint is
/// resolved here from the provider defaults, so users of it never guess.
#[derive(Clone, PartialEq)]
pub struct OAuth {
    /// Whose defaults apply.
    pub provider: OAuthProvider,
    /// Refresh token or client credentials.
    pub grant: OAuthGrant,
    /// The application (client) id.
    pub client_id: String,
    /// `client_secret` as written; never printed.
    pub client_secret: Option<String>,
    /// `client_secret_file`: read only when a token is requested (never by `sendmail`).
    pub client_secret_file: Option<PathBuf>,
    /// `client_certificate` and `client_key`: the certificate credential (a signed JWT client
    /// assertion, RFC 7523) for client_credentials, instead of a secret; both or neither.
    /// Read when tokens are set up and requested (never by `sendmail`).
    pub client_certificate: Option<ClientCertificate>,
    /// Token endpoint (https).
    pub token_url: String,
    /// Device authorization endpoint (RFC 8628), for `oauth login` with microsoft/custom.
    pub device_url: Option<String>,
    /// Authorization endpoint, for `oauth login` with google (PKCE).
    pub auth_url: Option<String>,
    /// Space-separated scopes asked for.
    pub scope: String,
    /// Where the refresh token is kept.
    pub token_file: PathBuf,
    /// CA bundle for the token endpoints instead of the web PKI roots.
    pub ca_file: Option<PathBuf>,
    /// Whole-request deadline for one token endpoint exchange.
    pub timeout: Duration,
}

impl fmt::Debug for OAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuth")
            .field("provider", &self.provider)
            .field("grant", &self.grant)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "********"),
            )
            .field("client_secret_file", &self.client_secret_file)
            .field("client_certificate", &self.client_certificate)
            .field("token_url", &self.token_url)
            .field("device_url", &self.device_url)
            .field("auth_url", &self.auth_url)
            .field("scope", &self.scope)
            .field("token_file", &self.token_file)
            .field("ca_file", &self.ca_file)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// `[oauth] client_certificate` and `client_key`: PEM files of the certificate uploaded to the
/// app registration and its RSA private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    /// `client_certificate`: its first CERTIFICATE block is used.
    pub cert: PathBuf,
    /// `client_key`: PKCS#8 or PKCS#1 RSA.
    pub key: PathBuf,
}

/// Microsoft identity platform endpoints for a tenant (id, domain, organizations, consumers, common).
const MICROSOFT_BASE: &str = "https://login.microsoftonline.com/";
/// Delegated scope for a user mailbox; offline_access asks for a refresh token.
const MICROSOFT_DELEGATED_SCOPE: &str = "https://outlook.office.com/SMTP.Send offline_access";
/// App-only scope: the application permission SMTP.SendAsApp granted by an admin.
const MICROSOFT_APP_SCOPE: &str = "https://outlook.office365.com/.default";
const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
const GOOGLE_AUTH_URL: &str = "https://accounts.google.com/o/oauth2/v2/auth";
const GOOGLE_SCOPE: &str = "https://mail.google.com/";

/// Where bounces go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum BounceTo {
    /// To the envelope sender of the failed message.
    #[default]
    Sender,
    /// Always to this address.
    Address(String),
    /// Nowhere: the failure is only logged.
    None,
}

/// An IPv4 or IPv6 network. Host bits set in `addr` are allowed and ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cidr {
    /// Network address as written.
    pub addr: IpAddr,
    /// Prefix length: 0..=32 for IPv4, 0..=128 for IPv6.
    pub prefix: u8,
}

impl Cidr {
    /// contains tells whether `ip` is in this network; an IPv4-mapped IPv6 address
    /// (::ffff:a.b.c.d, as a dual-stack socket reports v4 peers) matches IPv4 networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => match (v6.to_ipv4_mapped(), self.addr) {
                (Some(v4), IpAddr::V4(_)) => IpAddr::V4(v4),
                _ => ip,
            },
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix.min(32)))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix.min(128)))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// `[smarthost] rate`: at most `count` messages handed to the smarthost in any sliding window
/// of `per`. Displays as written in the ini file (`30/1m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Messages per window, at least 1.
    pub count: u64,
    /// The window, at least 1s.
    pub per: Duration,
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, fmt_duration(self.per))
    }
}

/// One smarthost entry; `port` is the entry's own port or else `[smarthost] port`.
/// An IPv6 literal is stored without brackets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// Host name or IP address literal (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// `[server]`: listeners, limits and who may relay.
#[derive(Debug, Clone)]
pub struct Server {
    /// Plain SMTP listeners (STARTTLS offered when tls_cert is set). May be empty.
    pub listen: Vec<SocketAddr>,
    /// Implicit-TLS listeners (RFC 8314).
    pub listen_tls: Vec<SocketAddr>,
    /// Name in the banner, EHLO reply and Received; default: the system's host name.
    pub hostname: String,
    /// Sessions served at once.
    pub workers: usize,
    /// Sessions one non-local address may hold at once; 0 = no limit.
    pub max_connections_per_ip: usize,
    /// Message size limit in bytes, advertised with SIZE (RFC 1870).
    pub max_message_size: u64,
    /// Recipients per message.
    pub max_recipients: usize,
    /// Wait for a command (RFC 5321 4.5.3.2).
    pub command_timeout: Duration,
    /// Wait for a chunk of DATA.
    pub data_timeout: Duration,
    /// PEM certificate chain.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    pub tls_key: Option<PathBuf>,
    /// No MAIL before TLS (local clients excepted).
    pub require_tls: bool,
    /// Clients that may relay without AUTH.
    pub relay_networks: Vec<Cidr>,
    /// Lowercased domains `[aliases]` applies to; default: hostname and localhost.
    pub local_domains: Vec<String>,
    /// AUTH policy.
    pub auth: AuthMode,
    /// User to drop to after binding when started as root.
    pub user: Option<String>,
    /// Where to write the pid.
    pub pid_file: Option<PathBuf>,
}

/// `[smarthost]`: where and how every message is forwarded.
#[derive(Clone)]
pub struct Smarthost {
    /// Tried in order; empty = hold mode (every message stays queued).
    pub hosts: Vec<HostPort>,
    /// Default port for entries without one.
    pub port: u16,
    /// Connection security.
    pub tls: TlsMode,
    /// Verify the certificate and name.
    pub tls_verify: bool,
    /// PEM CA bundle instead of the built-in web PKI roots.
    pub ca_file: Option<PathBuf>,
    /// SHA-256 of the smarthost's leaf certificate, pinned instead of CA checks.
    pub tls_fingerprint: Option<[u8; 32]>,
    /// AUTH user name.
    pub username: Option<String>,
    /// AUTH password (from `password` or the first line of `password_file`); never printed.
    pub password: Option<String>,
    /// Name sent in EHLO; default: server.hostname.
    pub helo: String,
    /// How long to wait for each smarthost reply (RFC 5321 4.5.3.2: 5 minutes); the reply to
    /// the final dot gets twice as long (4.5.3.2.6: 10 minutes).
    pub timeout: Duration,
    /// Which SASL mechanism logs in.
    pub auth: SmarthostAuth,
    /// Smarthost connections at once (Microsoft 365 allows 3 per mailbox), 1..100.
    pub max_connections: usize,
    /// Pacing: at most N messages per sliding interval; None = no limit.
    pub rate: Option<Rate>,
    /// Pacing: at most N recipients per sliding 24 hours; None = no limit.
    pub daily_recipients: Option<u64>,
    /// Extra substrings (matched case-insensitively) of replies that mean "the account is
    /// throttled", on top of the built-in table of `smtp::throttle`; trimmed, as written.
    pub throttle_replies: Vec<String>,
}

impl fmt::Debug for Smarthost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Smarthost")
            .field("hosts", &self.hosts)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("tls_verify", &self.tls_verify)
            .field("ca_file", &self.ca_file)
            .field("tls_fingerprint", &self.tls_fingerprint.map(|f| hex(&f)))
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "********"))
            .field("helo", &self.helo)
            .field("timeout", &self.timeout)
            .field("auth", &self.auth)
            .field("max_connections", &self.max_connections)
            .field("rate", &self.rate.map(|r| r.to_string()))
            .field("daily_recipients", &self.daily_recipients)
            .field("throttle_replies", &self.throttle_replies)
            .finish()
    }
}

/// `[queue]`: the spool and the retry schedule.
#[derive(Debug, Clone)]
pub struct Queue {
    /// Spool folder.
    pub dir: PathBuf,
    /// First retry delay, doubling up to retry_max.
    pub retry_min: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Age after which a message bounces.
    pub lifetime: Duration,
    /// Spool cap in bytes: past it new mail gets 452 4.3.1.
    pub max_size: u64,
    /// Where bounces go.
    pub bounce_to: BounceTo,
    /// Whether delivered messages' files are written over by new ones.
    pub reuse_files: ReuseFiles,
}

/// `[queue] reuse_files`: whether the relay keeps a few delivered messages' files and writes new messages
/// over them in place (fewer writes on a journaled filesystem; one more per message on ext4 without one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReuseFiles {
    /// Yes, except on ext2/3/4 without a journal.
    #[default]
    Auto,
    Yes,
    No,
}

/// `[rewrite]`: what forwarded messages carry.
#[derive(Debug, Clone)]
pub struct Rewrite {
    /// Envelope sender of every forwarded message, when set.
    pub sender: Option<String>,
    /// From: header of every forwarded message (`addr` or `Name <addr>`), when set.
    pub from: Option<String>,
}

/// `[log]`.
#[derive(Debug, Clone)]
pub struct Log {
    /// Most verbose level written.
    pub level: log::LevelFilter,
    /// Log file; None = stderr.
    pub file: Option<PathBuf>,
}

/// The validated configuration.
#[derive(Clone)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    /// `[server]`.
    pub server: Server,
    /// `[users]`: user name -> crypt(3) SHA hash.
    pub users: BTreeMap<String, String>,
    /// `[smarthost]`.
    pub smarthost: Smarthost,
    /// `[oauth]`; None when no provider is set.
    pub oauth: Option<OAuth>,
    /// `[queue]`.
    pub queue: Queue,
    /// `[aliases]`: lowercased local name or "*" -> address.
    pub aliases: BTreeMap<String, String>,
    /// `[rewrite]`.
    pub rewrite: Rewrite,
    /// `[log]`.
    pub log: Log,
    /// Legal but doubtful settings, formatted like errors (`FILE: [section] key: reason`), for the log and `check`.
    pub warnings: Vec<String>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The hashes are not printed: they can be attacked offline.
        let users: BTreeMap<&str, &str> = self
            .users
            .keys()
            .map(|u| (u.as_str(), "********"))
            .collect();
        f.debug_struct("Config")
            .field("path", &self.path)
            .field("server", &self.server)
            .field("users", &users)
            .field("smarthost", &self.smarthost)
            .field("oauth", &self.oauth)
            .field("queue", &self.queue)
            .field("aliases", &self.aliases)
            .field("rewrite", &self.rewrite)
            .field("log", &self.log)
            .field("warnings", &self.warnings)
            .finish()
    }
}

/// All problems found, one line each, already formatted `FILE: [section] key: reason`.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("\n"))
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// load reads and validates the file. Relative paths inside the file (queue.dir, tls_cert, ...)
    /// are taken relative to the current directory.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(path, &text),
            Err(e) => Err(ConfigErrors(vec![format!(
                "{}: cannot read the config file: {}",
                path.display(),
                io_reason(&e)
            )])),
        }
    }

    /// load_for_spool loads the config for a command that only works on the spool (`sendmail`,
    /// `queue`, `status`): `password_file` is not read. A user allowed to submit needs the
    /// config and the spool, not the smarthost password, which may stay readable by the
    /// service user alone; reading it would refuse their message.
    pub fn load_for_spool(path: &Path) -> Result<Config, ConfigErrors> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse_with(path, &text, false),
            Err(e) => Err(ConfigErrors(vec![format!(
                "{}: cannot read the config file: {}",
                path.display(),
                io_reason(&e)
            )])),
        }
    }

    /// parse validates `text` as if read from `path`. It touches the system only for the
    /// default host name and to read `password_file`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
        Config::parse_with(path, text, true)
    }

    fn parse_with(path: &Path, text: &str, read_secrets: bool) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let mut errors = Vec::new();
        let raw = read_raw(&file, text, &mut errors);
        let dir = path.parent().unwrap_or(Path::new(""));
        let base = match std::env::current_dir() {
            Ok(cwd) if dir.is_relative() => cwd.join(dir),
            _ => dir.to_path_buf(),
        };
        let mut l = Loader {
            file,
            base,
            read_secrets,
            raw,
            errors,
            warnings: Vec::new(),
        };
        let config = build(&mut l, path);
        if l.errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(l.errors))
        }
    }

    /// check_resources does the checks of `picorelay check` beyond syntax: tls_cert, tls_key
    /// and ca_file readable (parsing the PEM is the TLS module's job), queue.dir usable (it exists
    /// and is writable, or can be created). Returns problems, formatted like parse errors;
    /// notes that are not problems (hold mode) come from `notes`.
    pub fn check_resources(&self) -> Vec<String> {
        let file = self.path.display().to_string();
        let mut out = Vec::new();
        let oauth = self.oauth.as_ref();
        let readable = [
            ("server", "tls_cert", &self.server.tls_cert),
            ("server", "tls_key", &self.server.tls_key),
            ("smarthost", "ca_file", &self.smarthost.ca_file),
            ("oauth", "ca_file", &oauth.and_then(|o| o.ca_file.clone())),
            (
                "oauth",
                "client_secret_file",
                &oauth.and_then(|o| o.client_secret_file.clone()),
            ),
            (
                "oauth",
                "client_certificate",
                &oauth.and_then(|o| o.client_certificate.as_ref().map(|c| c.cert.clone())),
            ),
            (
                "oauth",
                "client_key",
                &oauth.and_then(|o| o.client_certificate.as_ref().map(|c| c.key.clone())),
            ),
        ];
        for (sec, key, path) in readable {
            let Some(path) = path else { continue };
            match std::fs::File::open(path) {
                Ok(f) => {
                    if f.metadata().map(|m| m.is_dir()).unwrap_or(false) {
                        out.push(format!(
                            "{file}: [{sec}] {key}: {}: is a folder, not a file",
                            path.display()
                        ));
                    }
                }
                Err(e) => out.push(format!(
                    "{file}: [{sec}] {key}: {}: cannot read: {}",
                    path.display(),
                    io_reason(&e)
                )),
            }
        }
        if let Err(reason) = spool_usable(&self.queue.dir) {
            out.push(format!(
                "{file}: [queue] dir: {}: {reason}",
                self.queue.dir.display()
            ));
        }
        out
    }

    /// notes are the lines `picorelay check` prints without failing: the warnings found while
    /// parsing, and hold mode.
    pub fn notes(&self) -> Vec<String> {
        let mut out = self.warnings.clone();
        if self.smarthost.hosts.is_empty() {
            out.push(format!(
                "{}: [smarthost] host: not set: hold mode, every message stays in the queue",
                self.path.display()
            ));
        }
        if let Some(o) = self.oauth.as_ref() {
            if o.grant == OAuthGrant::RefreshToken && !o.token_file.exists() {
                out.push(format!(
                    "{}: [oauth] token_file: {}: no refresh token stored yet: run picorelay oauth login",
                    self.path.display(),
                    o.token_file.display()
                ));
            }
        }
        out
    }

    /// summary is the effective configuration as log lines for start-up, without secrets.
    pub fn summary(&self) -> Vec<String> {
        let s = &self.server;
        let h = &self.smarthost;
        let q = &self.queue;
        let join = |v: &[SocketAddr]| {
            v.iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut out = vec![
            format!("config {}", self.path.display()),
            format!("hostname {}", s.hostname),
        ];
        out.push(if s.listen.is_empty() {
            "listen: none (sendmail submission only)".to_string()
        } else if s.tls_cert.is_some() {
            format!("listen {} (STARTTLS offered)", join(&s.listen))
        } else {
            format!("listen {} (no STARTTLS: tls_cert not set)", join(&s.listen))
        });
        if !s.listen_tls.is_empty() {
            out.push(format!("listen_tls {}", join(&s.listen_tls)));
        }
        if h.hosts.is_empty() {
            out.push("smarthost: none, hold mode: every message stays in the queue".to_string());
        } else {
            let hosts = h
                .hosts
                .iter()
                .map(|h| h.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            let tls = match h.tls {
                TlsMode::StartTls => "starttls",
                TlsMode::Implicit => "tls",
                TlsMode::None => "no tls",
            };
            let verify = if h.tls == TlsMode::None {
                String::new()
            } else if h.tls_fingerprint.is_some() {
                ", certificate pinned by sha256".to_string()
            } else if !h.tls_verify {
                ", certificate NOT verified".to_string()
            } else if let Some(ca) = &h.ca_file {
                format!(", certificate verified against {}", ca.display())
            } else {
                ", certificate verified against the web PKI roots".to_string()
            };
            let auth = match (&h.username, &self.oauth) {
                (Some(_), _) if h.auth == SmarthostAuth::None => ", no auth".to_string(),
                (None, _) => ", no auth".to_string(),
                (Some(u), Some(o))
                    if matches!(
                        h.auth,
                        SmarthostAuth::Auto | SmarthostAuth::Xoauth2 | SmarthostAuth::Oauthbearer
                    ) =>
                {
                    format!(
                        ", auth as {u} with {} OAuth tokens ({} grant, from {})",
                        o.provider.as_str(),
                        o.grant.as_str(),
                        o.token_url
                    )
                }
                (Some(u), _) => format!(", auth as {u}"),
            };
            out.push(format!(
                "smarthost {hosts} ({tls}{verify}{auth}), helo {}",
                h.helo
            ));
            if let Some(pacing) = pacing_summary(h) {
                out.push(pacing);
            }
        }
        out.push(format!(
            "spool {} (max {}), retry {}..{}, lifetime {}, bounce_to {}",
            q.dir.display(),
            fmt_size(q.max_size),
            fmt_duration(q.retry_min),
            fmt_duration(q.retry_max),
            fmt_duration(q.lifetime),
            match &q.bounce_to {
                BounceTo::Sender => "sender",
                BounceTo::Address(a) => a.as_str(),
                BounceTo::None => "none",
            }
        ));
        out.push(format!(
            "limits: workers {}, connections per ip {}, message size {}, recipients {}, command_timeout {}, data_timeout {}",
            s.workers,
            if s.max_connections_per_ip == 0 { "unlimited".to_string() } else { s.max_connections_per_ip.to_string() },
            fmt_size(s.max_message_size),
            s.max_recipients,
            fmt_duration(s.command_timeout),
            fmt_duration(s.data_timeout)
        ));
        let nets = s
            .relay_networks
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        out.push(format!(
            "relay_networks {}; auth {} ({} users); require_tls {}",
            if nets.is_empty() { "none" } else { &nets },
            match s.auth {
                AuthMode::Off => "off",
                AuthMode::Optional => "optional",
                AuthMode::Required => "required",
            },
            self.users.len(),
            if s.require_tls { "yes" } else { "no" }
        ));
        out.push(format!(
            "local_domains {}; {} aliases",
            s.local_domains.join(", "),
            self.aliases.len()
        ));
        if let Some(sender) = &self.rewrite.sender {
            out.push(format!("rewrite sender {sender}"));
        }
        if let Some(from) = &self.rewrite.from {
            out.push(format!("rewrite from {from}"));
        }
        out.push(format!(
            "log level {} to {}",
            self.log.level.as_str().to_ascii_lowercase(),
            self.log
                .file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "stderr".to_string())
        ));
        out
    }
}

/// pacing_summary is the start-up line about the smarthost's limits, None when all are the
/// defaults (so a plain config logs what it always did).
fn pacing_summary(h: &Smarthost) -> Option<String> {
    let mut limits = Vec::new();
    if let Some(r) = h.rate {
        limits.push(format!("{r} messages"));
    }
    if let Some(n) = h.daily_recipients {
        limits.push(format!("{n} recipients a day"));
    }
    if h.max_connections.to_string() != default_of("smarthost", "max_connections")
        || !limits.is_empty()
    {
        let n = h.max_connections;
        limits.push(format!("{n} connection{}", if n == 1 { "" } else { "s" }));
    }
    let mut parts = Vec::new();
    if !limits.is_empty() {
        parts.push(format!("at most {}", limits.join(", ")));
    }
    if !h.throttle_replies.is_empty() {
        let n = h.throttle_replies.len();
        parts.push(format!(
            "{n} extra throttle repl{}",
            if n == 1 { "y" } else { "ies" }
        ));
    }
    (!parts.is_empty()).then(|| format!("pacing: {}", parts.join("; ")))
}

/// parse_duration reads "90", "90s", "5m", "5h", "5d" (suffix case-insensitive).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "\"{s}\" is not a duration (seconds, or a number with s, m, h or d: 90s, 5m, 1h, 5d)"
        )
    };
    let t = s.trim();
    let (digits, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], c.to_ascii_lowercase()),
        _ => (t, 's'),
    };
    let mult = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86400,
        _ => return Err(bad()),
    };
    let n = digits_u64(digits).ok_or_else(bad)?;
    match n.checked_mul(mult) {
        Some(secs) if secs <= MAX_DURATION_SECS => Ok(Duration::from_secs(secs)),
        _ => Err(format!("\"{s}\" is too long (at most 3650d)")),
    }
}

/// parse_size reads "100", "10K", "10M", "1G" (powers of 1024, suffix case-insensitive).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad =
        || format!("\"{s}\" is not a size (bytes, or a number with K, M or G: 512K, 10M, 1G)");
    let t = s.trim();
    let (digits, mult) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n = digits_u64(digits).ok_or_else(bad)?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("\"{s}\" is too large"))
}

/// parse_bool reads yes/no, true/false, on/off, 1/0 (case-insensitive).
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "yes" | "true" | "on" | "1" => Ok(true),
        "no" | "false" | "off" | "0" => Ok(false),
        _ => Err(format!(
            "\"{s}\" is not a boolean (yes/no, true/false, on/off, 1/0)"
        )),
    }
}

/// parse_socket_addr reads a numeric listening address: "127.0.0.1:25", "[::1]:25", "0.0.0.0:465".
/// Port 0 (any free port) is allowed: the tests listen on ephemeral ports.
pub fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse().map_err(|_| {
        format!("\"{s}\" is not an IP address with a port (127.0.0.1:25, [::1]:25, 0.0.0.0:465)")
    })
}

/// parse_cidr reads "10.0.0.0/8", "fd00::/8" or a bare address (/32 or /128). Host bits may be set.
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let bad = || format!("\"{s}\" is not a network (192.168.1.0/24, fd00::/8, or one address)");
    let t = s.trim();
    let (addr, prefix) = match t.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (t, None),
    };
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => match digits_u64(p) {
            Some(n) if n <= u64::from(max) => n as u8,
            Some(_) => return Err(format!("\"{s}\": prefix length above {max}")),
            None => return Err(bad()),
        },
    };
    Ok(Cidr { addr, prefix })
}

/// system_hostname is the kernel's host name (from /proc, else /etc/hostname), or "localhost".
pub fn system_hostname() -> String {
    for p in ["/proc/sys/kernel/hostname", "/etc/hostname"] {
        if let Ok(s) = std::fs::read_to_string(p) {
            let name = s.trim();
            if valid_hostname(name) {
                return name.to_string();
            }
        }
    }
    "localhost".to_string()
}

/// One `key = value` line as read.
struct Line {
    key: String,
    value: String,
}

/// The rust-ini options we parse with. Escapes are off so that backslashes in passwords survive
/// (`a\b` stays `a\b`); quotes are off because we handle double quotes ourselves and rust-ini
/// would also strip single quotes, which are ordinary characters in a password.
fn ini_options() -> ini::ParseOption {
    ini::ParseOption {
        enabled_escape: false,
        enabled_quote: false,
        ..Default::default()
    }
}

/// read_raw parses the file into sections of key/value lines: `prepass` reports what rust-ini
/// cannot (line numbers, duplicates, unknown names, comments) and hands it a normalised text,
/// rust-ini parses that text, and `from_ini` reads the result.
fn read_raw(file: &str, text: &str, errors: &mut Vec<String>) -> BTreeMap<&'static str, Vec<Line>> {
    let normalised = prepass(file, text, errors);
    match ini::Ini::load_from_str_opt(&normalised, ini_options()) {
        Ok(parsed) => from_ini(file, &parsed, errors),
        Err(e) => {
            // Unreachable with the normalised text; reported rather than trusted.
            // The pre-pass keeps one output line per input line, so e.line is the file's line.
            errors.push(format!("{file}: line {}: {}", e.line, e.msg));
            BTreeMap::new()
        }
    }
}

/// prepass checks the file line by line and returns the text rust-ini is given: one line per
/// input line (so line numbers agree), blank for comments and for everything reported as an
/// error, `[section]` with the canonical name, and `key = value ` with the inline comment cut
/// and double quotes kept (`from_ini` removes them).
///
/// It reports syntax errors, unknown and duplicate sections and keys, with line numbers.
/// Keys of skipped (unknown or repeated) sections are dropped so that one mistake gives one error.
///
/// The normalised form neutralises rust-ini's quirks:
/// - every value is followed by one space: rust-ini joins the next line onto a value that ends
///   in `\` even with escapes off, but `\ ` is not special, and it trims the space away;
/// - no inline comment and no `;`/`#` after a header reaches it (it refuses them without its
///   `inline-comment` feature, and with it would cut `"x ;y"`);
/// - `:` and `\` in keys are escaped with `\` (see `ini_key`): rust-ini ends a key at `:`;
/// - a carriage return inside a value is refused here: rust-ini ends the value there.
fn prepass(file: &str, text: &str, errors: &mut Vec<String>) -> String {
    enum Cur {
        Outside,
        In(&'static str),
        Skip,
    }
    let mut out = String::with_capacity(text.len() + 64);
    let mut key_lines: BTreeMap<(&'static str, String), usize> = BTreeMap::new();
    let mut seen: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut cur = Cur::Outside;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (i, line) in text.split('\n').enumerate() {
        let n = i + 1;
        if i > 0 {
            out.push('\n');
        }
        let line = line.strip_suffix('\r').unwrap_or(line);
        let t = line.trim();
        if t.is_empty() || t.starts_with(';') || t.starts_with('#') {
            continue;
        }
        if let Some(rest) = t.strip_prefix('[') {
            cur = Cur::Skip;
            let Some(end) = rest.find(']') else {
                errors.push(format!(
                    "{file}: line {n}: \"{t}\": a section header ends with ]"
                ));
                continue;
            };
            let name = rest[..end].trim().to_ascii_lowercase();
            let after = rest[end + 1..].trim();
            if !(after.is_empty() || after.starts_with(';') || after.starts_with('#')) {
                errors.push(format!(
                    "{file}: line {n}: text after [{name}] (only a ; comment may follow)"
                ));
            }
            match SCHEMA.iter().find(|(s, _)| *s == name) {
                None => {
                    let known: Vec<String> = SCHEMA.iter().map(|(s, _)| format!("[{s}]")).collect();
                    errors.push(format!(
                        "{file}: [{name}]: unknown section (line {n}); sections are {}",
                        known.join(" ")
                    ));
                }
                Some((sec, _)) => {
                    if let Some(first) = seen.get(sec) {
                        errors.push(format!(
                            "{file}: [{sec}]: duplicate section (lines {first} and {n}); merge them into one"
                        ));
                    } else {
                        seen.insert(sec, n);
                        cur = Cur::In(sec);
                        out.push('[');
                        out.push_str(sec);
                        out.push(']');
                    }
                }
            }
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            // Not the line itself: `password: secret` (another ini dialect) or a password on a
            // line of its own would land in the log and on the terminal.
            let word: String = t
                .split(|c: char| c == ':' || c.is_whitespace())
                .next()
                .unwrap_or("")
                .chars()
                .filter(|c| !c.is_control())
                .take(32)
                .collect();
            errors.push(format!(
                "{file}: line {n}: \"{word}…\" is neither key = value nor [section] (the rest of the line is not shown: it may be a secret)"
            ));
            continue;
        };
        let key = key.trim();
        if key.is_empty() {
            errors.push(format!("{file}: line {n}: a key is missing before ="));
            continue;
        }
        let sec = match cur {
            Cur::Outside => {
                errors.push(format!(
                    "{file}: line {n}: {key}: key before any [section]; put it under its section"
                ));
                continue;
            }
            Cur::Skip => continue,
            Cur::In(sec) => sec,
        };
        // User names are case-sensitive (AUTH compares them exactly); everything else is not.
        let key = if sec == "users" {
            key.to_string()
        } else {
            key.to_ascii_lowercase()
        };
        if !FREE_FORM.contains(&sec) {
            let keys = schema_keys(sec);
            if !keys.iter().any(|(k, _)| *k == key) {
                let names: Vec<&str> = keys.iter().map(|(k, _)| *k).collect();
                errors.push(format!(
                    "{file}: [{sec}] {key}: unknown key; keys are {}",
                    names.join(", ")
                ));
                continue;
            }
        }
        let value = match strip_comment(value) {
            Ok(v) => v,
            Err(reason) => {
                errors.push(format!("{file}: [{sec}] {key}: {reason} (line {n})"));
                continue;
            }
        };
        if let Some(first) = key_lines.get(&(sec, key.clone())) {
            errors.push(format!(
                "{file}: [{sec}] {key}: duplicate key (lines {first} and {n}); keep one"
            ));
            continue;
        }
        key_lines.insert((sec, key.clone()), n);
        out.push_str(&ini_key(&key));
        out.push_str(" = ");
        out.push_str(&value);
        // The space after the value: see the doc comment (a final `\` must not join lines).
        out.push(' ');
    }
    out
}

/// strip_comment turns the text after `=` into the value as rust-ini is to see it: a
/// double-quoted value is kept verbatim with its quotes (with ; # and spaces inside);
/// otherwise an inline comment (whitespace then ;) is cut and the rest trimmed.
/// Backslashes are never special. A carriage return is refused (rust-ini would end the value there).
fn strip_comment(v: &str) -> Result<String, String> {
    let value = cut_comment(v)?;
    if value.contains('\r') {
        return Err(
            "a carriage return inside the value (save the file with LF or CRLF line ends)"
                .to_string(),
        );
    }
    Ok(value)
}

/// cut_comment is `strip_comment` without the carriage return check.
fn cut_comment(v: &str) -> Result<String, String> {
    let t = v.trim_start();
    if let Some(q) = t.strip_prefix('"') {
        let Some(end) = q.find('"') else {
            return Err("the quote is not closed on the same line".to_string());
        };
        let after = q[end + 1..].trim();
        if !(after.is_empty() || after.starts_with(';')) {
            return Err("text after the closing quote (only a ; comment may follow)".to_string());
        }
        // Both quotes: `unquote` removes them after rust-ini has trimmed the line.
        return Ok(t[..end + 2].to_string());
    }
    let mut prev = '=';
    let mut end = v.len();
    for (i, c) in v.char_indices() {
        if c == ';' && (prev == ' ' || prev == '\t') {
            end = i;
            break;
        }
        prev = c;
    }
    Ok(v[..end].trim().to_string())
}

/// unquote removes the double quotes `strip_comment` kept. A value that starts with `"` was
/// quoted (the pre-pass refuses an unclosed quote), so it also ends with one.
fn unquote(v: &str) -> &str {
    match v.strip_prefix('"').and_then(|q| q.strip_suffix('"')) {
        Some(inner) => inner,
        None => v,
    }
}

/// ini_key escapes a key for rust-ini, which ends a key at `:` as well as at `=`.
/// With escapes off, rust-ini keeps `\` and the character after it as they are and never ends
/// a key inside such a pair, so `\:` and `\\` pass through; `unescape_key` undoes them.
/// `[users]` and `[aliases]` keys are free-form: `a:b` must stay one key.
fn ini_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for c in key.chars() {
        if c == '\\' || c == ':' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// unescape_key undoes `ini_key`.
fn unescape_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut chars = key.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

/// from_ini reads the sections and keys rust-ini parsed from the normalised text. It looks at
/// every section and every value (`iter`, `get_all`), so a repeated section or key is reported
/// rather than silently merged or overwritten; the pre-pass already reports those with line
/// numbers and leaves them out, so these checks only guard that promise.
fn from_ini(
    file: &str,
    parsed: &ini::Ini,
    errors: &mut Vec<String>,
) -> BTreeMap<&'static str, Vec<Line>> {
    let mut out: BTreeMap<&'static str, Vec<Line>> = BTreeMap::new();
    for (name, props) in parsed.iter() {
        let Some(name) = name else {
            // The general section (keys before any header): the pre-pass leaves it empty.
            for (key, _) in props.iter() {
                let key = unescape_key(key);
                errors.push(format!(
                    "{file}: {key}: key before any [section]; put it under its section"
                ));
            }
            continue;
        };
        let Some((sec, _)) = SCHEMA.iter().find(|(s, _)| *s == name) else {
            errors.push(format!("{file}: [{name}]: unknown section"));
            continue;
        };
        if out.contains_key(sec) {
            errors.push(format!(
                "{file}: [{sec}]: duplicate section; merge them into one"
            ));
            continue;
        }
        let lines = out.entry(sec).or_default();
        for (key, _) in props.iter() {
            let name = unescape_key(key);
            if lines.iter().any(|l| l.key == name) {
                continue; // a repeat of a key already read (and reported) below
            }
            let mut values = props.get_all(key);
            let Some(value) = values.next() else { continue };
            if values.next().is_some() {
                errors.push(format!("{file}: [{sec}] {name}: duplicate key; keep one"));
            }
            lines.push(Line {
                key: name,
                value: unquote(value).to_string(),
            });
        }
    }
    out
}

fn schema_keys(sec: &str) -> &'static [(&'static str, &'static str)] {
    SCHEMA
        .iter()
        .find(|(s, _)| *s == sec)
        .map(|(_, k)| *k)
        .unwrap_or(&[])
}

/// Loader turns raw values into typed ones, collecting errors and warnings.
struct Loader {
    file: String,
    /// The config file's folder: relative paths in it are taken from there, not from whatever
    /// folder the command happens to run in (systemd, cron and a shell each have their own).
    base: PathBuf,
    /// Whether `password_file` is read (not for commands that only touch the spool).
    read_secrets: bool,
    raw: BTreeMap<&'static str, Vec<Line>>,
    errors: Vec<String>,
    warnings: Vec<String>,
}

impl Loader {
    /// The value as written, None when absent.
    fn written(&self, sec: &str, key: &str) -> Option<&str> {
        self.raw
            .get(sec)?
            .iter()
            .find(|l| l.key == key)
            .map(|l| l.value.as_str())
    }

    /// The value to parse: as written, or the default when absent or empty.
    fn text(&self, sec: &str, key: &str) -> String {
        match self.written(sec, key) {
            Some(v) if !v.is_empty() || EMPTY_IS_NONE.contains(&(sec, key)) => v.to_string(),
            _ => default_of(sec, key).to_string(),
        }
    }

    fn err(&mut self, sec: &str, key: &str, reason: impl fmt::Display) {
        self.errors
            .push(format!("{}: [{sec}] {key}: {reason}", self.file));
    }

    fn warn(&mut self, sec: &str, key: &str, reason: impl fmt::Display) {
        self.warnings
            .push(format!("{}: [{sec}] {key}: {reason}", self.file));
    }

    /// path reads a key that names a file or folder: None when empty; a relative path is
    /// taken from the config file's folder.
    fn path(&mut self, sec: &str, key: &str) -> Option<PathBuf> {
        let p = self.val(sec, key, opt_path)?;
        Some(self.base.join(p))
    }

    /// val parses one key; on error it records it and returns the default's value,
    /// so validation goes on and every problem is reported.
    fn val<T: Default>(
        &mut self,
        sec: &str,
        key: &str,
        f: impl Fn(&str) -> Result<T, String>,
    ) -> T {
        match f(&self.text(sec, key)) {
            Ok(v) => v,
            Err(reason) => {
                self.err(sec, key, reason);
                f(default_of(sec, key)).unwrap_or_default()
            }
        }
    }
}

fn default_of(sec: &str, key: &str) -> &'static str {
    schema_keys(sec)
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, d)| *d)
        .unwrap_or("")
}

/// build validates every key and the rules between keys.
fn build(l: &mut Loader, path: &Path) -> Config {
    let sv = "server";
    let listen = l.val(sv, "listen", |s| list(s, parse_socket_addr));
    let listen_tls = l.val(sv, "listen_tls", |s| list(s, parse_socket_addr));
    let hostname = l.val(sv, "hostname", |s| {
        if s.is_empty() {
            Ok(system_hostname())
        } else {
            parse_hostname(s)
        }
    });
    let workers = l.val(sv, "workers", |s| number(s, 1, 1024)) as usize;
    let max_connections_per_ip =
        l.val(sv, "max_connections_per_ip", |s| number(s, 0, 100_000)) as usize;
    // RFC 5321 4.5.3.1.7: a server must accept messages of at least 64K octets.
    let max_message_size = l.val(sv, "max_message_size", |s| {
        size_at_least(s, 64 << 10, "RFC 5321 4.5.3.1.7")
    });
    // RFC 5321 4.5.3.1.8 asks for at least 100 recipients; fewer is allowed for small appliances.
    let max_recipients = l.val(sv, "max_recipients", |s| number(s, 1, 100_000)) as usize;
    let command_timeout = l.val(sv, "command_timeout", duration_positive);
    let data_timeout = l.val(sv, "data_timeout", duration_positive);
    let tls_cert = l.path(sv, "tls_cert");
    let tls_key = l.path(sv, "tls_key");
    let require_tls = l.val(sv, "require_tls", parse_bool);
    let relay_networks = l.val(sv, "relay_networks", |s| list(s, parse_cidr));
    let local_domains = l.val(sv, "local_domains", |s| {
        if s.is_empty() {
            let mut d = vec![hostname.to_ascii_lowercase()];
            if d[0] != "localhost" {
                d.push("localhost".to_string());
            }
            Ok(d)
        } else {
            list(s, |d| parse_hostname(d).map(|d| d.to_ascii_lowercase()))
        }
    });
    let auth = l.val(sv, "auth", |s| match s.to_ascii_lowercase().as_str() {
        "off" => Ok(AuthMode::Off),
        "optional" => Ok(AuthMode::Optional),
        "required" => Ok(AuthMode::Required),
        _ => Err(format!("\"{s}\" is not one of off, optional, required")),
    });
    let user = l.val(sv, "user", |s| opt_word(s, "a user name"));
    let pid_file = l.path(sv, "pid_file");

    match (&tls_cert, &tls_key) {
        (Some(_), None) => l.err(
            sv,
            "tls_key",
            "missing: tls_cert is set (set both or neither)",
        ),
        (None, Some(_)) => l.err(
            sv,
            "tls_cert",
            "missing: tls_key is set (set both or neither)",
        ),
        _ => {}
    }
    if tls_cert.is_none() && tls_key.is_none() {
        if !listen_tls.is_empty() {
            l.err(sv, "listen_tls", "needs tls_cert and tls_key");
        }
        if require_tls {
            l.err(
                sv,
                "require_tls",
                "yes needs tls_cert and tls_key (for STARTTLS)",
            );
        }
    }

    let mut users = BTreeMap::new();
    for line in l.raw.get("users").map(|v| v.as_slice()).unwrap_or(&[]) {
        if let Err(reason) = word(&line.key, "a user name") {
            l.errors
                .push(format!("{}: [users] {}: {reason}", l.file, line.key));
        } else if let Err(reason) = crypt_hash(&line.value) {
            l.errors
                .push(format!("{}: [users] {}: {reason}", l.file, line.key));
        }
        users.insert(line.key.clone(), line.value.clone());
    }
    match auth {
        AuthMode::Required if users.is_empty() => {
            l.err(sv, "auth", "required needs at least one user in [users]")
        }
        AuthMode::Off if !users.is_empty() => {
            l.warn(sv, "auth", "off: the users in [users] cannot log in")
        }
        AuthMode::Optional | AuthMode::Required if !users.is_empty() && tls_cert.is_none() => l
            .warn(
                sv,
                "auth",
                "without tls_cert, AUTH is accepted only from local clients (127.0.0.1, ::1)",
            ),
        _ => {}
    }

    let sh = "smarthost";
    let port = l.val(sh, "port", |s| number(s, 1, 65535)) as u16;
    let hosts = l.val(sh, "host", |s| list(s, |h| host_port(h, port)));
    let tls = l.val(sh, "tls", |s| match s.to_ascii_lowercase().as_str() {
        "starttls" => Ok(TlsMode::StartTls),
        "tls" => Ok(TlsMode::Implicit),
        "none" => Ok(TlsMode::None),
        _ => Err(format!("\"{s}\" is not one of starttls, tls, none")),
    });
    let tls_verify = l.val(sh, "tls_verify", parse_bool);
    let ca_file = l.path(sh, "ca_file");
    let tls_fingerprint = l.val(sh, "tls_fingerprint", fingerprint);
    let username = l.val(sh, "username", |s| {
        Ok((!s.is_empty()).then(|| s.to_string()))
    });
    let password_value = l.val(sh, "password", |s| {
        Ok((!s.is_empty()).then(|| s.to_string()))
    });
    let password_file = l.path(sh, "password_file");
    let helo = l.val(sh, "helo", |s| {
        if s.is_empty() {
            Ok(hostname.clone())
        } else {
            parse_hostname(s)
        }
    });
    let sh_timeout = l.val(sh, "timeout", duration_positive);
    let password = match (password_value, &password_file) {
        (Some(_), Some(_)) => {
            l.err(
                sh,
                "password_file",
                "set together with password (use one of them)",
            );
            None
        }
        (Some(p), None) => Some(p),
        (None, Some(_)) if !l.read_secrets => None,
        (None, Some(file)) => match read_first_line(file) {
            Ok(p) => {
                if let Some(mode) = open_to_others(file) {
                    l.warn(
                        sh,
                        "password_file",
                        format!(
                            "{} is readable or writable by other users (mode {mode:04o}): run chmod o-rwx on it",
                            file.display()
                        ),
                    );
                }
                Some(p)
            }
            Err(reason) => {
                l.err(sh, "password_file", format!("{}: {reason}", file.display()));
                None
            }
        },
        (None, None) => None,
    };
    let sh_auth = l.val(sh, "auth", |s| match s.to_ascii_lowercase().as_str() {
        "auto" => Ok(SmarthostAuth::Auto),
        "plain" => Ok(SmarthostAuth::Plain),
        "login" => Ok(SmarthostAuth::Login),
        "xoauth2" => Ok(SmarthostAuth::Xoauth2),
        "oauthbearer" => Ok(SmarthostAuth::Oauthbearer),
        "none" => Ok(SmarthostAuth::None),
        _ => Err(format!(
            "\"{s}\" is not one of auto, plain, login, xoauth2, oauthbearer, none"
        )),
    });
    let max_connections = l.val(sh, "max_connections", |s| number(s, 1, 100)) as usize;
    let rate = l.val(sh, "rate", |s| opt(s, parse_rate));
    let daily_recipients = l.val(sh, "daily_recipients", |s| {
        opt(s, |s| number(s, 1, MAX_DAILY_RECIPIENTS))
    });
    let throttle_replies = l.val(sh, "throttle_replies", |s| list(s, throttle_reply));
    let password_given =
        l.written(sh, "password").is_some_and(|v| !v.is_empty()) || password_file.is_some();
    if tls == TlsMode::None {
        if tls_fingerprint.is_some() || ca_file.is_some() {
            l.warn(sh, "tls", "none: ca_file and tls_fingerprint are ignored");
        }
    } else if !tls_verify && tls_fingerprint.is_none() {
        l.warn(
            sh,
            "tls_verify",
            "no: any certificate is accepted (consider tls_fingerprint)",
        );
    }

    let qu = "queue";
    let dir = l.path(qu, "dir").unwrap_or_default();
    let retry_min = l.val(qu, "retry_min", duration_positive);
    let retry_max = l.val(qu, "retry_max", duration_positive);
    let lifetime = l.val(qu, "lifetime", duration_positive);
    let max_size = l.val(qu, "max_size", |s| {
        size_at_least(s, 1 << 20, "room for one message")
    });
    let bounce_to = l.val(qu, "bounce_to", |s| match s.to_ascii_lowercase().as_str() {
        "sender" => Ok(BounceTo::Sender),
        "none" => Ok(BounceTo::None),
        _ => address(s).map(BounceTo::Address).map_err(|_| {
            format!("\"{s}\" is not sender, none or an address like admin@example.com")
        }),
    });
    let reuse_files = l.val(qu, "reuse_files", |s| {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(ReuseFiles::Auto);
        }
        match parse_bool(s) {
            Ok(true) => Ok(ReuseFiles::Yes),
            Ok(false) => Ok(ReuseFiles::No),
            Err(_) => Err(format!("\"{s}\" is not auto, yes or no")),
        }
    });
    if retry_min > retry_max {
        l.err(
            qu,
            "retry_min",
            format!(
                "{} is longer than retry_max ({})",
                fmt_duration(retry_min),
                fmt_duration(retry_max)
            ),
        );
    }

    let oauth = build_oauth(l, &dir);
    let uses_oauth = match sh_auth {
        SmarthostAuth::Xoauth2 | SmarthostAuth::Oauthbearer => true,
        // A misspelt provider is reported once, not again as a missing password.
        SmarthostAuth::Auto => {
            oauth.is_some()
                || l.written("oauth", "provider")
                    .is_some_and(|v| !v.is_empty())
        }
        _ => false,
    };
    check_smarthost_login(l, sh_auth, uses_oauth, username.is_some(), password_given);
    if oauth.is_some() && !uses_oauth {
        l.warn(
            "oauth",
            "provider",
            "set, but [smarthost] auth does not use it (auth = auto, xoauth2 or oauthbearer does)",
        );
    }
    if tls == TlsMode::None && username.is_some() && sh_auth != SmarthostAuth::None {
        let what = if uses_oauth {
            "access token"
        } else {
            "password"
        };
        l.warn(
            "smarthost",
            "tls",
            format!("none: the {what} is sent to the smarthost unencrypted"),
        );
    }

    let mut aliases = BTreeMap::new();
    for line in l.raw.get("aliases").map(|v| v.as_slice()).unwrap_or(&[]) {
        let reason = if line.key.contains('@') {
            Some("an alias is a local name without @ (or * for any other)".to_string())
        } else {
            word(&line.key, "a local name")
                .and_then(|_| address(&line.value))
                .err()
        };
        if let Some(reason) = reason {
            l.errors
                .push(format!("{}: [aliases] {}: {reason}", l.file, line.key));
        }
        aliases.insert(line.key.clone(), line.value.clone());
    }

    let sender = l.val("rewrite", "sender", |s| opt(s, address));
    let from = l.val("rewrite", "from", |s| opt(s, from_header));

    let level = l.val("log", "level", |s| {
        let level = match s.to_ascii_lowercase().as_str() {
            "error" => log::LevelFilter::Error,
            "warn" => log::LevelFilter::Warn,
            "info" => log::LevelFilter::Info,
            "debug" => log::LevelFilter::Debug,
            "trace" => log::LevelFilter::Trace,
            _ => {
                return Err(format!(
                    "\"{s}\" is not one of error, warn, info, debug, trace"
                ))
            }
        };
        Ok(Some(level))
    });
    let log_file = l.path("log", "file");

    Config {
        path: path.to_path_buf(),
        server: Server {
            listen,
            listen_tls,
            hostname,
            workers,
            max_connections_per_ip,
            max_message_size,
            max_recipients,
            command_timeout,
            data_timeout,
            tls_cert,
            tls_key,
            require_tls,
            relay_networks,
            local_domains,
            auth,
            user,
            pid_file,
        },
        users,
        smarthost: Smarthost {
            hosts,
            port,
            tls,
            tls_verify,
            ca_file,
            tls_fingerprint,
            username,
            password,
            helo,
            timeout: sh_timeout,
            auth: sh_auth,
            max_connections,
            rate,
            daily_recipients,
            throttle_replies,
        },
        oauth,
        queue: Queue {
            dir,
            retry_min,
            retry_max,
            lifetime,
            max_size,
            bounce_to,
            reuse_files,
        },
        aliases,
        rewrite: Rewrite { sender, from },
        log: Log {
            level: level.unwrap_or(log::LevelFilter::Info),
            file: log_file,
        },
        warnings: std::mem::take(&mut l.warnings),
    }
}

/// check_smarthost_login checks that the credentials `[smarthost] auth` needs are there.
fn check_smarthost_login(
    l: &mut Loader,
    auth: SmarthostAuth,
    uses_oauth: bool,
    username: bool,
    password: bool,
) {
    let sh = "smarthost";
    let named = l.text(sh, "auth").to_ascii_lowercase();
    if matches!(auth, SmarthostAuth::Xoauth2 | SmarthostAuth::Oauthbearer)
        && l.written("oauth", "provider").map_or(true, str::is_empty)
    {
        l.err(
            sh,
            "auth",
            format!(
                "{named} needs an [oauth] section with a provider (microsoft, google or custom)"
            ),
        );
        return;
    }
    if uses_oauth {
        if !username {
            l.err(
                sh,
                "username",
                "missing: [oauth] logs in as this mailbox (the address the token is for)",
            );
        }
        if password {
            l.warn(
                sh,
                "password",
                "ignored: the login uses [oauth] access tokens",
            );
        }
        return;
    }
    match auth {
        SmarthostAuth::None => {
            if username || password {
                l.warn(sh, "auth", "none: username and password are not used");
            }
        }
        SmarthostAuth::Plain | SmarthostAuth::Login if !username => l.err(
            sh,
            "username",
            format!("missing: auth = {named} needs username and password"),
        ),
        _ => {
            if username && !password {
                l.err(
                    sh,
                    "password",
                    "missing: username is set (set password or password_file)",
                );
            }
            if !username && password {
                l.err(sh, "username", "missing: a password is set");
            }
        }
    }
}

/// build_oauth reads `[oauth]`: None when no provider is set (then no other key may be).
/// Endpoints and scope fall back to the provider's defaults, so they are complete here.
fn build_oauth(l: &mut Loader, queue_dir: &Path) -> Option<OAuth> {
    let o = "oauth";
    let provider = l.val(o, "provider", |s| match s.to_ascii_lowercase().as_str() {
        "" => Ok(None),
        "microsoft" => Ok(Some(OAuthProvider::Microsoft)),
        "google" => Ok(Some(OAuthProvider::Google)),
        "custom" => Ok(Some(OAuthProvider::Custom)),
        _ => Err(format!("\"{s}\" is not one of microsoft, google, custom")),
    });
    let Some(provider) = provider else {
        if l.written(o, "provider").map_or(true, str::is_empty) {
            let stray: Vec<&str> = schema_keys(o)
                .iter()
                .map(|(k, _)| *k)
                .filter(|k| {
                    *k != "provider"
                        && l.written(o, k)
                            .is_some_and(|v| !v.is_empty() && v != default_of(o, k))
                })
                .collect();
            for key in stray {
                l.err(
                    o,
                    key,
                    "set, but [oauth] provider is not (microsoft, google or custom)",
                );
            }
        }
        return None;
    };
    let grant = l.val(o, "grant", |s| match s.to_ascii_lowercase().as_str() {
        "refresh_token" => Ok(OAuthGrant::RefreshToken),
        "client_credentials" => Ok(OAuthGrant::ClientCredentials),
        _ => Err(format!(
            "\"{s}\" is not one of refresh_token, client_credentials"
        )),
    });
    let tenant = l.val(o, "tenant", |s| {
        if !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        {
            Ok(s.to_string())
        } else {
            Err(format!(
                "\"{s}\" is not a tenant id or domain (or organizations, consumers, common)"
            ))
        }
    });
    let client_id = l.val(o, "client_id", |s| {
        if s.bytes().any(|b| b <= b' ' || b == 0x7f) {
            Err("must not contain spaces or control characters".to_string())
        } else {
            Ok(s.to_string())
        }
    });
    if client_id.is_empty() {
        l.err(
            o,
            "client_id",
            "missing: the application (client) id of your app registration",
        );
    }
    let client_secret = l.val(o, "client_secret", |s| {
        Ok((!s.is_empty()).then(|| s.to_string()))
    });
    let client_secret_file = l.path(o, "client_secret_file");
    if client_secret.is_some() && client_secret_file.is_some() {
        l.err(
            o,
            "client_secret_file",
            "set together with client_secret (use one of them)",
        );
    }
    let secret_given = client_secret.is_some() || client_secret_file.is_some();
    let certificate_given = ["client_certificate", "client_key"]
        .iter()
        .any(|k| l.written(o, k).is_some_and(|v| !v.is_empty()));
    let client_certificate = certificate_credential(l, provider, grant, secret_given);
    let url = |s: &str| opt(s, https_url);
    let token_url = l.val(o, "token_url", url);
    let device_url = l.val(o, "device_url", url);
    let auth_url = l.val(o, "auth_url", url);
    let scope = l.val(o, "scope", |s| {
        if s.bytes().any(|b| b < b' ' || b == 0x7f) {
            Err("must not contain control characters".to_string())
        } else {
            Ok(s.split_ascii_whitespace().collect::<Vec<_>>().join(" "))
        }
    });
    let token_file = l
        .path(o, "token_file")
        .unwrap_or_else(|| queue_dir.join("oauth-token"));
    let ca_file = l.path(o, "ca_file");
    let timeout = l.val(o, "timeout", duration_positive);

    let ms = |tail: &str| format!("{MICROSOFT_BASE}{tenant}/oauth2/v2.0/{tail}");
    let (token_default, device_default, auth_default, scope_default) = match (provider, grant) {
        (OAuthProvider::Microsoft, g) => (
            Some(ms("token")),
            Some(ms("devicecode")),
            None,
            Some(match g {
                OAuthGrant::RefreshToken => MICROSOFT_DELEGATED_SCOPE,
                OAuthGrant::ClientCredentials => MICROSOFT_APP_SCOPE,
            }),
        ),
        (OAuthProvider::Google, _) => (
            Some(GOOGLE_TOKEN_URL.to_string()),
            None,
            Some(GOOGLE_AUTH_URL.to_string()),
            Some(GOOGLE_SCOPE),
        ),
        (OAuthProvider::Custom, _) => (None, None, None, None),
    };
    let token_url_written = token_url.clone();
    let token_url = match token_url.or(token_default) {
        Some(u) => u,
        None => {
            l.err(
                o,
                "token_url",
                "missing: provider = custom needs the token endpoint",
            );
            String::new()
        }
    };
    let scope = match (scope.is_empty(), scope_default) {
        (false, _) => scope,
        (true, Some(d)) => d.to_string(),
        (true, None) => {
            l.err(
                o,
                "scope",
                "missing: provider = custom needs the scope to ask for",
            );
            String::new()
        }
    };
    if provider == OAuthProvider::Microsoft && token_url_written.is_none() {
        let multi = ["organizations", "common", "consumers"].contains(&tenant.as_str());
        if grant == OAuthGrant::ClientCredentials && multi {
            l.err(
                o,
                "tenant",
                format!("{tenant}: grant = client_credentials needs your tenant id or domain (contoso.onmicrosoft.com)"),
            );
        } else if l.written(o, "tenant").map_or(true, str::is_empty) {
            l.warn(
                o,
                "tenant",
                "not set: \"organizations\" works only for an app registered for any organization; set your tenant id or domain (contoso.onmicrosoft.com)",
            );
        }
    }
    match (provider, grant) {
        (OAuthProvider::Google, OAuthGrant::ClientCredentials) => l.err(
            o,
            "grant",
            "client_credentials: Gmail has no app-only SMTP login; use refresh_token (picorelay oauth login)",
        ),
        // A certificate without its key (or the reverse) has its own error already.
        (_, OAuthGrant::ClientCredentials) if !secret_given && !certificate_given => l.err(
            o,
            "client_secret",
            "missing: grant = client_credentials needs client_secret, client_secret_file, or client_certificate and client_key",
        ),
        // Google's token endpoint refuses a "Desktop app" client without its secret (which,
        // for that kind of client, Google does not treat as confidential).
        (OAuthProvider::Google, _) if !secret_given => l.err(
            o,
            "client_secret",
            "missing: Google needs the client secret of the \"Desktop app\" OAuth client",
        ),
        _ => {}
    }
    for (key, path) in [
        ("client_secret_file", client_secret_file.as_deref()),
        (
            "client_key",
            client_certificate.as_ref().map(|c| c.key.as_path()),
        ),
        ("token_file", Some(token_file.as_path())),
    ] {
        if let Some((path, mode)) = path.and_then(|p| open_to_others(p).map(|m| (p, m))) {
            l.warn(
                o,
                key,
                format!(
                    "{} is readable or writable by other users (mode {mode:04o}): run chmod o-rwx on it",
                    path.display()
                ),
            );
        }
    }
    Some(OAuth {
        provider,
        grant,
        client_id,
        client_secret,
        client_secret_file,
        client_certificate,
        token_url,
        device_url: device_url.or(device_default),
        auth_url: auth_url.or(auth_default),
        scope,
        token_file,
        ca_file,
        timeout,
    })
}

/// certificate_credential reads `client_certificate` and `client_key`: both or neither; not
/// with a secret; only for app-only logins (client_credentials) at Microsoft or a custom
/// provider. The files are read when tokens are set up, not here.
fn certificate_credential(
    l: &mut Loader,
    provider: OAuthProvider,
    grant: OAuthGrant,
    secret_given: bool,
) -> Option<ClientCertificate> {
    let o = "oauth";
    let cert = l.path(o, "client_certificate");
    let key = l.path(o, "client_key");
    let named = if cert.is_some() {
        "client_certificate"
    } else {
        "client_key"
    };
    if cert.is_none() && key.is_none() {
        return None;
    }
    if provider == OAuthProvider::Google {
        l.err(
            o,
            named,
            "Google takes no certificate credential: use client_secret",
        );
        return None;
    }
    if grant == OAuthGrant::RefreshToken {
        l.err(
            o,
            named,
            "only for grant = client_credentials (app-only); a signed-in mailbox uses client_secret or none",
        );
        return None;
    }
    match (cert, key) {
        (Some(_), None) => l.err(
            o,
            "client_key",
            "missing: client_certificate is set (the PEM file of its RSA private key)",
        ),
        (None, Some(_)) => l.err(
            o,
            "client_certificate",
            "missing: client_key is set (the PEM file of the certificate uploaded to the app registration)",
        ),
        (Some(_), Some(_)) if secret_given => l.err(
            o,
            named,
            "set together with a client secret (use a secret or a certificate, not both)",
        ),
        (Some(cert), Some(key)) => return Some(ClientCertificate { cert, key }),
        (None, None) => {}
    }
    None
}

/// parse_rate reads `[smarthost] rate`: `N/INTERVAL` (`30/1m`, `500/1d`), N from 1, the
/// interval a duration from 1s.
pub fn parse_rate(s: &str) -> Result<Rate, String> {
    let bad = || format!("\"{s}\" is not N/interval (30/1m, 500/1d)");
    let (n, per) = s.split_once('/').ok_or_else(bad)?;
    let count = digits_u64(n.trim()).ok_or_else(bad)?;
    let per = parse_duration(per.trim()).map_err(|_| bad())?;
    if count == 0 {
        return Err(format!("\"{s}\": at least 1 message per interval"));
    }
    if count > MAX_RATE_COUNT {
        return Err(format!(
            "\"{s}\": at most {MAX_RATE_COUNT} messages per interval"
        ));
    }
    if per.is_zero() {
        return Err(format!("\"{s}\": the interval must be at least 1s"));
    }
    Ok(Rate { count, per })
}

/// throttle_reply checks one `throttle_replies` item: a substring so short would match
/// nearly every reply, and a matching reply never bounces.
fn throttle_reply(s: &str) -> Result<String, String> {
    if s.chars().count() < 3 {
        return Err(format!(
            "\"{s}\" is too short to name a reply (at least 3 characters)"
        ));
    }
    Ok(s.to_string())
}

/// https_url accepts an absolute https URL with a host: the full parse happens where it is
/// used (the OAuth HTTP client); this catches typos and plain http at load time.
fn https_url(s: &str) -> Result<String, String> {
    let rest = s.strip_prefix("https://").ok_or_else(|| {
        format!("\"{s}\" is not an https:// address (tokens never go over plain http)")
    })?;
    let host_end = rest.find(['/', '?']).unwrap_or(rest.len());
    if host_end == 0 || s.bytes().any(|b| b <= b' ' || b == 0x7f) || s.contains('#') {
        return Err(format!("\"{s}\" is not a valid https:// address"));
    }
    Ok(s.to_string())
}

/// Plain decimal digits only: no sign, no spaces, no underscores.
fn digits_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn number(s: &str, min: u64, max: u64) -> Result<u64, String> {
    match digits_u64(s) {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        Some(n) => Err(format!("{n} is out of range ({min}..{max})")),
        None => Err(format!("\"{s}\" is not a number ({min}..{max})")),
    }
}

fn size_at_least(s: &str, min: u64, why: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    if n < min {
        return Err(format!(
            "{s} is too small (at least {}, {why})",
            fmt_size(min)
        ));
    }
    Ok(n)
}

fn duration_positive(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("{s} is too short (at least 1s)"));
    }
    Ok(d)
}

/// list splits on commas, trims items and ignores empty ones.
fn list<T>(s: &str, f: impl Fn(&str) -> Result<T, String>) -> Result<Vec<T>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .map(f)
        .collect()
}

fn opt<T>(s: &str, f: impl Fn(&str) -> Result<T, String>) -> Result<Option<T>, String> {
    if s.is_empty() {
        Ok(None)
    } else {
        f(s).map(Some)
    }
}

fn opt_path(s: &str) -> Result<Option<PathBuf>, String> {
    Ok((!s.is_empty()).then(|| PathBuf::from(s)))
}

fn word(s: &str, what: &str) -> Result<String, String> {
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("\"{s}\" is not {what} (no spaces)"));
    }
    Ok(s.to_string())
}

fn opt_word(s: &str, what: &str) -> Result<Option<String>, String> {
    opt(s, |s| word(s, what))
}

fn valid_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn parse_hostname(s: &str) -> Result<String, String> {
    if valid_hostname(s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "\"{s}\" is not a host name (letters, digits, - and . like mail.example.com)"
        ))
    }
}

/// host_port reads one smarthost entry: `host`, `host:port`, `[v6]`, `[v6]:port`, or a bare IPv6 literal.
fn host_port(s: &str, default_port: u16) -> Result<HostPort, String> {
    let bad = || {
        format!("\"{s}\" is not a host (host, host:port, [IPv6]:port; several separated by commas)")
    };
    let port_of = |p: &str| match digits_u64(p) {
        Some(n) if (1..=65535).contains(&n) => Ok(n as u16),
        _ => Err(format!("\"{s}\": the port is not a number (1..65535)")),
    };
    if let Some(rest) = s.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or_else(bad)?;
        let ip: Ipv6Addr = ip.parse().map_err(|_| bad())?;
        let port = match after {
            "" => default_port,
            _ => port_of(after.strip_prefix(':').ok_or_else(bad)?)?,
        };
        return Ok(HostPort {
            host: ip.to_string(),
            port,
        });
    }
    if s.matches(':').count() >= 2 {
        let ip: Ipv6Addr = s.parse().map_err(|_| bad())?;
        return Ok(HostPort {
            host: ip.to_string(),
            port: default_port,
        });
    }
    let (host, port) = match s.split_once(':') {
        Some((h, p)) => (h, port_of(p)?),
        None => (s, default_port),
    };
    if !valid_hostname(host) {
        return Err(bad());
    }
    Ok(HostPort {
        host: host.to_string(),
        port,
    })
}

/// address checks a plain `local@domain` (no display name, no angle brackets).
fn address(s: &str) -> Result<String, String> {
    let ok = match s.rsplit_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !s
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || "<>,".contains(c))
                && (valid_hostname(domain) || (domain.starts_with('[') && domain.ends_with(']')))
        }
        None => false,
    };
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "\"{s}\" is not an address (like admin@example.com)"
        ))
    }
}

/// from_header checks `addr` or `Name <addr>` for the From: rewrite.
fn from_header(s: &str) -> Result<String, String> {
    let inner = match s.rfind('<') {
        Some(i) if s.ends_with('>') => &s[i + 1..s.len() - 1],
        Some(_) => "",
        None => s,
    };
    address(inner).map(|_| s.to_string()).map_err(|_| {
        format!("\"{s}\" is not an address or Name <address> (like Backup NAS <nas@example.com>)")
    })
}

/// crypt_hash checks a `[users]` value with the same rules AUTH verifies by
/// (`$5$`/`$6$`, rounds, salt, hash length), so a hash no password could ever
/// match is refused at start-up rather than at the first login.
fn crypt_hash(s: &str) -> Result<(), String> {
    crate::crypt::check_hash(s).map_err(|e| format!("not a usable SHA-crypt hash: {e}"))
}

/// fingerprint reads `sha256:` followed by 64 hex digits, colons allowed between them.
fn fingerprint(s: &str) -> Result<Option<[u8; 32]>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    let bad = || format!("\"{s}\" is not sha256: followed by 64 hex digits (colons allowed)");
    let lower = s.to_ascii_lowercase();
    let hexits: Vec<u8> = lower
        .strip_prefix("sha256:")
        .ok_or_else(bad)?
        .bytes()
        .filter(|b| *b != b':')
        .collect();
    if hexits.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, pair) in hexits.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16).ok_or_else(bad)?;
        let lo = (pair[1] as char).to_digit(16).ok_or_else(bad)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Ok(Some(out))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// open_to_others returns the permission bits of `path` when other users (neither owner nor
/// group) may read or write it: a secret file must not be (the relay's group reading it is fine).
fn open_to_others(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o006 != 0).then_some(mode)
}

pub fn read_first_line(path: &Path) -> Result<String, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("cannot read: {}", io_reason(&e)))?;
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        return Err("the first line is empty (it holds the password)".to_string());
    }
    Ok(line.to_string())
}

/// spool_usable tells whether the spool folder exists and takes a file, or can be created.
/// Writability is tested by writing, because permission bits do not tell what root or ACLs allow.
fn spool_usable(dir: &Path) -> Result<(), String> {
    let probe = |d: &Path| {
        let p = d.join(format!(".picorelay-check-{}", std::process::id()));
        let r = std::fs::File::create(&p);
        let _ = std::fs::remove_file(&p);
        r.map(|_| ()).map_err(|e| io_reason(&e))
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => probe(dir).map_err(|r| format!("not writable: {r}")),
        Ok(_) => Err("exists but is not a folder".to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = match dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            match std::fs::metadata(parent) {
                Ok(m) if m.is_dir() => probe(parent).map_err(|r| {
                    format!(
                        "does not exist and cannot be created in {}: {r}",
                        parent.display()
                    )
                }),
                _ => Err(format!("does not exist, nor does {}", parent.display())),
            }
        }
        Err(e) => Err(io_reason(&e)),
    }
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        std::io::ErrorKind::InvalidData => "not UTF-8 text".to_string(),
        _ => e.to_string(),
    }
}

/// fmt_size prints bytes with the largest exact K/M/G suffix.
fn fmt_size(n: u64) -> String {
    for (unit, shift) in [("G", 30), ("M", 20), ("K", 10)] {
        if n != 0 && n % (1 << shift) == 0 {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

/// fmt_duration prints seconds with the largest exact d/h/m/s suffix.
fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    for (unit, len) in [("d", 86400), ("h", 3600), ("m", 60)] {
        if s != 0 && s % len == 0 {
            return format!("{}{unit}", s / len);
        }
    }
    format!("{s}s")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const F: &str = "picorelay.ini";
    const EXAMPLE: &str = include_str!("../etc/picorelay.ini");
    const HASH6: &str =
        "$6$examplesalt$yD33ldVxo/B9HaT4VRMBT5e6hN/0V2KTzXNm1j4rbjOH3FtYw3GGWMhcHBrFdV/xOBJ5avjjM3W2Wco3KsnWC0";
    const HASH5: &str = "$5$examplesalt$SwnVoYYML2Gme78SRb4hMJop813pb0088AJiQntkue4";

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse(Path::new(F), text)
    }

    fn good(text: &str) -> Config {
        match parse(text) {
            Ok(c) => c,
            Err(e) => panic!("{text:?} should load, got:\n{e}"),
        }
    }

    fn errors(text: &str) -> Vec<String> {
        match parse(text) {
            Ok(_) => Vec::new(),
            Err(e) => e.0,
        }
    }

    /// A scratch file under the temp dir, unique per test and process.
    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "picorelay-config-test-{}-{name}",
            std::process::id()
        ))
    }

    #[test]
    fn bad_configs_give_exactly_one_line() {
        let server_keys = "listen, listen_tls, hostname, workers, max_connections_per_ip, max_message_size, \
            max_recipients, command_timeout, data_timeout, tls_cert, tls_key, require_tls, relay_networks, \
            local_domains, auth, user, pid_file";
        let unknown_key =
            format!("picorelay.ini: [server] foo: unknown key; keys are {server_keys}");
        let table: &[(&str, &str)] = &[
            // [server] numbers
            ("[server]\nworkers = abc", r#"picorelay.ini: [server] workers: "abc" is not a number (1..1024)"#),
            ("[server]\nworkers = 0", "picorelay.ini: [server] workers: 0 is out of range (1..1024)"),
            ("[server]\nworkers = 2000", "picorelay.ini: [server] workers: 2000 is out of range (1..1024)"),
            ("[server]\nworkers = -1", r#"picorelay.ini: [server] workers: "-1" is not a number (1..1024)"#),
            ("[server]\nworkers = 1 6", r#"picorelay.ini: [server] workers: "1 6" is not a number (1..1024)"#),
            (
                "[server]\nmax_connections_per_ip = x",
                r#"picorelay.ini: [server] max_connections_per_ip: "x" is not a number (0..100000)"#,
            ),
            ("[server]\nmax_recipients = 0", "picorelay.ini: [server] max_recipients: 0 is out of range (1..100000)"),
            // sizes
            (
                "[server]\nmax_message_size = 10X",
                r#"picorelay.ini: [server] max_message_size: "10X" is not a size (bytes, or a number with K, M or G: 512K, 10M, 1G)"#,
            ),
            (
                "[server]\nmax_message_size = M",
                r#"picorelay.ini: [server] max_message_size: "M" is not a size (bytes, or a number with K, M or G: 512K, 10M, 1G)"#,
            ),
            (
                "[server]\nmax_message_size = 1K",
                "picorelay.ini: [server] max_message_size: 1K is too small (at least 64K, RFC 5321 4.5.3.1.7)",
            ),
            (
                "[server]\nmax_message_size = 99999999999G",
                r#"picorelay.ini: [server] max_message_size: "99999999999G" is too large"#,
            ),
            // durations
            (
                "[server]\ncommand_timeout = 5x",
                r#"picorelay.ini: [server] command_timeout: "5x" is not a duration (seconds, or a number with s, m, h or d: 90s, 5m, 1h, 5d)"#,
            ),
            (
                "[server]\ncommand_timeout = m",
                r#"picorelay.ini: [server] command_timeout: "m" is not a duration (seconds, or a number with s, m, h or d: 90s, 5m, 1h, 5d)"#,
            ),
            ("[server]\ndata_timeout = 0", "picorelay.ini: [server] data_timeout: 0 is too short (at least 1s)"),
            (
                "[server]\ncommand_timeout = 99999d",
                r#"picorelay.ini: [server] command_timeout: "99999d" is too long (at most 3650d)"#,
            ),
            // socket addresses
            (
                "[server]\nlisten = 1.2.3.4",
                r#"picorelay.ini: [server] listen: "1.2.3.4" is not an IP address with a port (127.0.0.1:25, [::1]:25, 0.0.0.0:465)"#,
            ),
            (
                "[server]\nlisten = 127.0.0.1:25, ::1:25",
                r#"picorelay.ini: [server] listen: "::1:25" is not an IP address with a port (127.0.0.1:25, [::1]:25, 0.0.0.0:465)"#,
            ),
            (
                "[server]\nlisten_tls = localhost:465",
                r#"picorelay.ini: [server] listen_tls: "localhost:465" is not an IP address with a port (127.0.0.1:25, [::1]:25, 0.0.0.0:465)"#,
            ),
            ("[server]\nlisten_tls = 0.0.0.0:465", "picorelay.ini: [server] listen_tls: needs tls_cert and tls_key"),
            // host names
            (
                "[server]\nhostname = bad host",
                r#"picorelay.ini: [server] hostname: "bad host" is not a host name (letters, digits, - and . like mail.example.com)"#,
            ),
            (
                "[server]\nlocal_domains = example.com, a..b",
                r#"picorelay.ini: [server] local_domains: "a..b" is not a host name (letters, digits, - and . like mail.example.com)"#,
            ),
            // TLS pairing
            (
                "[server]\ntls_cert = /etc/cert.pem",
                "picorelay.ini: [server] tls_key: missing: tls_cert is set (set both or neither)",
            ),
            (
                "[server]\ntls_key = /etc/key.pem",
                "picorelay.ini: [server] tls_cert: missing: tls_key is set (set both or neither)",
            ),
            // booleans
            (
                "[server]\nrequire_tls = maybe",
                r#"picorelay.ini: [server] require_tls: "maybe" is not a boolean (yes/no, true/false, on/off, 1/0)"#,
            ),
            (
                "[server]\nrequire_tls = yes",
                "picorelay.ini: [server] require_tls: yes needs tls_cert and tls_key (for STARTTLS)",
            ),
            // CIDR
            (
                "[server]\nrelay_networks = 10.0.0.0/33",
                r#"picorelay.ini: [server] relay_networks: "10.0.0.0/33": prefix length above 32"#,
            ),
            (
                "[server]\nrelay_networks = fd00::/129",
                r#"picorelay.ini: [server] relay_networks: "fd00::/129": prefix length above 128"#,
            ),
            (
                "[server]\nrelay_networks = 10.0.0.0/8, lan",
                r#"picorelay.ini: [server] relay_networks: "lan" is not a network (192.168.1.0/24, fd00::/8, or one address)"#,
            ),
            (
                "[server]\nrelay_networks = 10.0.0.0/x",
                r#"picorelay.ini: [server] relay_networks: "10.0.0.0/x" is not a network (192.168.1.0/24, fd00::/8, or one address)"#,
            ),
            // auth and users
            (
                "[server]\nauth = sometimes",
                r#"picorelay.ini: [server] auth: "sometimes" is not one of off, optional, required"#,
            ),
            ("[server]\nauth = required", "picorelay.ini: [server] auth: required needs at least one user in [users]"),
            ("[server]\nuser = \"mail man\"", r#"picorelay.ini: [server] user: "mail man" is not a user name (no spaces)"#),
            (
                "[users]\nalice = secret",
                "picorelay.ini: [users] alice: not a usable SHA-crypt hash: hash must start with $5$ or $6$ (make one with `openssl passwd -6`)",
            ),
            (
                "[users]\nbob = $6$salt$short",
                "picorelay.ini: [users] bob: not a usable SHA-crypt hash: hash part must be 43 ($5$) or 86 ($6$) characters of ./0-9A-Za-z after the salt",
            ),
            (
                "[users]\nbob = $1$salt$abcdefghabcdefghabcdef",
                "picorelay.ini: [users] bob: not a usable SHA-crypt hash: hash must start with $5$ or $6$ (make one with `openssl passwd -6`)",
            ),
            // [smarthost]
            (
                "[smarthost]\nhost = bad!host",
                r#"picorelay.ini: [smarthost] host: "bad!host" is not a host (host, host:port, [IPv6]:port; several separated by commas)"#,
            ),
            (
                "[smarthost]\nhost = mail:99999",
                r#"picorelay.ini: [smarthost] host: "mail:99999": the port is not a number (1..65535)"#,
            ),
            (
                "[smarthost]\nhost = [::1]x",
                r#"picorelay.ini: [smarthost] host: "[::1]x" is not a host (host, host:port, [IPv6]:port; several separated by commas)"#,
            ),
            (
                "[smarthost]\nhost = [mail]:25",
                r#"picorelay.ini: [smarthost] host: "[mail]:25" is not a host (host, host:port, [IPv6]:port; several separated by commas)"#,
            ),
            ("[smarthost]\nport = 0", "picorelay.ini: [smarthost] port: 0 is out of range (1..65535)"),
            ("[smarthost]\ntls = ssl", r#"picorelay.ini: [smarthost] tls: "ssl" is not one of starttls, tls, none"#),
            (
                "[smarthost]\ntls_verify = perhaps",
                r#"picorelay.ini: [smarthost] tls_verify: "perhaps" is not a boolean (yes/no, true/false, on/off, 1/0)"#,
            ),
            (
                "[smarthost]\ntls_fingerprint = sha256:abcd",
                r#"picorelay.ini: [smarthost] tls_fingerprint: "sha256:abcd" is not sha256: followed by 64 hex digits (colons allowed)"#,
            ),
            (
                "[smarthost]\ntls_fingerprint = md5:0123456789abcdef0123456789abcdef",
                r#"picorelay.ini: [smarthost] tls_fingerprint: "md5:0123456789abcdef0123456789abcdef" is not sha256: followed by 64 hex digits (colons allowed)"#,
            ),
            (
                "[smarthost]\ntls_fingerprint = sha256:zz23456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                r#"picorelay.ini: [smarthost] tls_fingerprint: "sha256:zz23456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" is not sha256: followed by 64 hex digits (colons allowed)"#,
            ),
            (
                "[smarthost]\nusername = u",
                "picorelay.ini: [smarthost] password: missing: username is set (set password or password_file)",
            ),
            ("[smarthost]\npassword = p", "picorelay.ini: [smarthost] username: missing: a password is set"),
            (
                "[smarthost]\nusername = u\npassword = p\npassword_file = /etc/pw",
                "picorelay.ini: [smarthost] password_file: set together with password (use one of them)",
            ),
            (
                "[smarthost]\nusername = u\npassword_file = /nonexistent/picorelay/pw",
                "picorelay.ini: [smarthost] password_file: /nonexistent/picorelay/pw: cannot read: no such file",
            ),
            (
                "[smarthost]\nauth = kerberos",
                r#"picorelay.ini: [smarthost] auth: "kerberos" is not one of auto, plain, login, xoauth2, oauthbearer, none"#,
            ),
            (
                "[smarthost]\nauth = xoauth2\nusername = u",
                "picorelay.ini: [smarthost] auth: xoauth2 needs an [oauth] section with a provider (microsoft, google or custom)",
            ),
            (
                "[smarthost]\nauth = plain",
                "picorelay.ini: [smarthost] username: missing: auth = plain needs username and password",
            ),
            (
                "[smarthost]\nusername = u\n[oauth]\nprovider = azure\nclient_id = c",
                r#"picorelay.ini: [oauth] provider: "azure" is not one of microsoft, google, custom"#,
            ),
            (
                "[oauth]\nclient_id = c",
                "picorelay.ini: [oauth] client_id: set, but [oauth] provider is not (microsoft, google or custom)",
            ),
            (
                "[smarthost]\nusername = u\n[oauth]\nprovider = microsoft",
                "picorelay.ini: [oauth] client_id: missing: the application (client) id of your app registration",
            ),
            (
                "[oauth]\nprovider = microsoft\nclient_id = c",
                "picorelay.ini: [smarthost] username: missing: [oauth] logs in as this mailbox (the address the token is for)",
            ),
            (
                "[smarthost]\nusername = u\n[oauth]\nprovider = custom\nclient_id = c\nscope = s",
                "picorelay.ini: [oauth] token_url: missing: provider = custom needs the token endpoint",
            ),
            (
                "[smarthost]\nusername = u\n[oauth]\nprovider = custom\nclient_id = c\ntoken_url = https://idp/t",
                "picorelay.ini: [oauth] scope: missing: provider = custom needs the scope to ask for",
            ),
            (
                "[smarthost]\nusername = u\n[oauth]\nprovider = microsoft\nclient_id = c\ngrant = client_credentials\ntenant = t.example",
                "picorelay.ini: [oauth] client_secret: missing: grant = client_credentials needs client_secret, client_secret_file, or client_certificate and client_key",
            ),
            (
                "[smarthost]\nusername = u\n[oauth]\nprovider = microsoft\nclient_id = c\ngrant = client_credentials\ntenant = t.example\nclient_certificate = /c.pem",
                "picorelay.ini: [oauth] client_key: missing: client_certificate is set (the PEM file of its RSA private key)",
            ),
            (
                "[smarthost]\nusername = u\n[oauth]\nprovider = custom\ntoken_url = https://idp/t\nscope = s\nclient_id = c\ngrant = client_credentials\nclient_key = /c.key",
                "picorelay.ini: [oauth] client_certificate: missing: client_key is set (the PEM file of the certificate uploaded to the app registration)",
            ),
            (
                "[smarthost]\nusername = u\n[oauth]\nprovider = microsoft\nclient_id = c\ngrant = client_credentials\ntenant = t.example\nclient_certificate = /c.pem\nclient_key = /c.key\nclient_secret = s",
                "picorelay.ini: [oauth] client_certificate: set together with a client secret (use a secret or a certificate, not both)",
            ),
            (
                "[smarthost]\nusername = u\n[oauth]\nprovider = microsoft\nclient_id = c\ngrant = client_credentials\ntenant = t.example\nclient_certificate = /c.pem\nclient_key = /c.key\nclient_secret_file = /s",
                "picorelay.ini: [oauth] client_certificate: set together with a client secret (use a secret or a certificate, not both)",
            ),
            (
                "[smarthost]\nusername = u\n[oauth]\nprovider = google\nclient_id = c\nclient_secret = s\nclient_certificate = /c.pem\nclient_key = /c.key",
                "picorelay.ini: [oauth] client_certificate: Google takes no certificate credential: use client_secret",
            ),
            (
                "[smarthost]\nusername = u\n[oauth]\nprovider = microsoft\nclient_id = c\nclient_certificate = /c.pem\nclient_key = /c.key",
                "picorelay.ini: [oauth] client_certificate: only for grant = client_credentials (app-only); a signed-in mailbox uses client_secret or none",
            ),
            (
                "[oauth]\nclient_key = /c.key",
                "picorelay.ini: [oauth] client_key: set, but [oauth] provider is not (microsoft, google or custom)",
            ),
            (
                "[smarthost]\nusername = u\n[oauth]\nprovider = microsoft\nclient_id = c\ngrant = client_credentials\nclient_secret = s",
                "picorelay.ini: [oauth] tenant: organizations: grant = client_credentials needs your tenant id or domain (contoso.onmicrosoft.com)",
            ),
            (
                "[smarthost]\nusername = u\n[oauth]\nprovider = google\nclient_id = c",
                r#"picorelay.ini: [oauth] client_secret: missing: Google needs the client secret of the "Desktop app" OAuth client"#,
            ),
            (
                "[smarthost]\nusername = u\n[oauth]\nprovider = google\nclient_id = c\nclient_secret = s\ngrant = client_credentials",
                "picorelay.ini: [oauth] grant: client_credentials: Gmail has no app-only SMTP login; use refresh_token (picorelay oauth login)",
            ),
            (
                "[smarthost]\nusername = u\n[oauth]\nprovider = microsoft\nclient_id = c\ntoken_url = http://idp/token",
                r#"picorelay.ini: [oauth] token_url: "http://idp/token" is not an https:// address (tokens never go over plain http)"#,
            ),
            (
                "[smarthost]\nusername = u\n[oauth]\nprovider = microsoft\nclient_id = c\ntenant = a/b",
                r#"picorelay.ini: [oauth] tenant: "a/b" is not a tenant id or domain (or organizations, consumers, common)"#,
            ),
            (
                "[smarthost]\nusername = u\n[oauth]\nprovider = microsoft\nclient_id = c\nclient_secret = s\nclient_secret_file = /x",
                "picorelay.ini: [oauth] client_secret_file: set together with client_secret (use one of them)",
            ),
            (
                "[smarthost]\nhelo = a_b c",
                r#"picorelay.ini: [smarthost] helo: "a_b c" is not a host name (letters, digits, - and . like mail.example.com)"#,
            ),
            ("[smarthost]\ntimeout = 0", "picorelay.ini: [smarthost] timeout: 0 is too short (at least 1s)"),
            // [smarthost] pacing
            ("[smarthost]\nmax_connections = 0", "picorelay.ini: [smarthost] max_connections: 0 is out of range (1..100)"),
            ("[smarthost]\nmax_connections = 101", "picorelay.ini: [smarthost] max_connections: 101 is out of range (1..100)"),
            (
                "[smarthost]\nmax_connections = many",
                r#"picorelay.ini: [smarthost] max_connections: "many" is not a number (1..100)"#,
            ),
            ("[smarthost]\nrate = 30", r#"picorelay.ini: [smarthost] rate: "30" is not N/interval (30/1m, 500/1d)"#),
            ("[smarthost]\nrate = 30/", r#"picorelay.ini: [smarthost] rate: "30/" is not N/interval (30/1m, 500/1d)"#),
            ("[smarthost]\nrate = 30/1w", r#"picorelay.ini: [smarthost] rate: "30/1w" is not N/interval (30/1m, 500/1d)"#),
            ("[smarthost]\nrate = x/1m", r#"picorelay.ini: [smarthost] rate: "x/1m" is not N/interval (30/1m, 500/1d)"#),
            ("[smarthost]\nrate = -1/1m", r#"picorelay.ini: [smarthost] rate: "-1/1m" is not N/interval (30/1m, 500/1d)"#),
            ("[smarthost]\nrate = 1m/30", r#"picorelay.ini: [smarthost] rate: "1m/30" is not N/interval (30/1m, 500/1d)"#),
            ("[smarthost]\nrate = 0/1m", r#"picorelay.ini: [smarthost] rate: "0/1m": at least 1 message per interval"#),
            ("[smarthost]\nrate = 5/0", r#"picorelay.ini: [smarthost] rate: "5/0": the interval must be at least 1s"#),
            (
                "[smarthost]\nrate = 2000000/1d",
                r#"picorelay.ini: [smarthost] rate: "2000000/1d": at most 1000000 messages per interval"#,
            ),
            (
                "[smarthost]\ndaily_recipients = 0",
                "picorelay.ini: [smarthost] daily_recipients: 0 is out of range (1..10000000)",
            ),
            (
                "[smarthost]\ndaily_recipients = 10k",
                r#"picorelay.ini: [smarthost] daily_recipients: "10k" is not a number (1..10000000)"#,
            ),
            (
                "[smarthost]\nthrottle_replies = please slow down, 4",
                r#"picorelay.ini: [smarthost] throttle_replies: "4" is too short to name a reply (at least 3 characters)"#,
            ),
            // [queue]
            ("[queue]\nretry_min = 2h", "picorelay.ini: [queue] retry_min: 2h is longer than retry_max (1h)"),
            ("[queue]\nretry_max = 30s", "picorelay.ini: [queue] retry_min: 1m is longer than retry_max (30s)"),
            ("[queue]\nlifetime = 0d", "picorelay.ini: [queue] lifetime: 0d is too short (at least 1s)"),
            (
                "[queue]\nreuse_files = sometimes",
                "picorelay.ini: [queue] reuse_files: \"sometimes\" is not auto, yes or no",
            ),
            (
                "[queue]\nmax_size = 1K",
                "picorelay.ini: [queue] max_size: 1K is too small (at least 1M, room for one message)",
            ),
            (
                "[queue]\nbounce_to = nobody",
                r#"picorelay.ini: [queue] bounce_to: "nobody" is not sender, none or an address like admin@example.com"#,
            ),
            // [aliases], [rewrite], [log]
            (
                "[aliases]\nroot@example.com = a@example.com",
                "picorelay.ini: [aliases] root@example.com: an alias is a local name without @ (or * for any other)",
            ),
            (
                "[aliases]\nroot = admin",
                r#"picorelay.ini: [aliases] root: "admin" is not an address (like admin@example.com)"#,
            ),
            (
                "[rewrite]\nsender = nas",
                r#"picorelay.ini: [rewrite] sender: "nas" is not an address (like admin@example.com)"#,
            ),
            (
                "[rewrite]\nfrom = NAS <nas>",
                r#"picorelay.ini: [rewrite] from: "NAS <nas>" is not an address or Name <address> (like Backup NAS <nas@example.com>)"#,
            ),
            (
                "[log]\nlevel = verbose",
                r#"picorelay.ini: [log] level: "verbose" is not one of error, warn, info, debug, trace"#,
            ),
            // structure
            ("workers = 1\n[server]", "picorelay.ini: line 1: workers: key before any [section]; put it under its section"),
            (
                "[server]\nworkers = 1\nWorkers = 2",
                "picorelay.ini: [server] workers: duplicate key (lines 2 and 3); keep one",
            ),
            (
                "[server]\n[queue]\n[Server]\nworkers = 2",
                "picorelay.ini: [server]: duplicate section (lines 1 and 3); merge them into one",
            ),
            (
                "[mail]\nx = 1",
                "picorelay.ini: [mail]: unknown section (line 1); sections are [server] [users] [smarthost] [oauth] [queue] [aliases] [rewrite] [log]",
            ),
            ("[server]\nfoo = 1", &unknown_key),
            ("[server]\njust text", r#"picorelay.ini: line 2: "just…" is neither key = value nor [section] (the rest of the line is not shown: it may be a secret)"#),
            ("[smarthost]\npassword: Hunter2", r#"picorelay.ini: line 2: "password…" is neither key = value nor [section] (the rest of the line is not shown: it may be a secret)"#),
            ("[server]\n = 5", "picorelay.ini: line 2: a key is missing before ="),
            ("[server", r#"picorelay.ini: line 1: "[server": a section header ends with ]"#),
            ("[server] x", "picorelay.ini: line 1: text after [server] (only a ; comment may follow)"),
            (
                "[server]\nhostname = \"abc",
                "picorelay.ini: [server] hostname: the quote is not closed on the same line (line 2)",
            ),
            (
                "[server]\nhostname = \"abc\" x",
                "picorelay.ini: [server] hostname: text after the closing quote (only a ; comment may follow) (line 2)",
            ),
        ];
        assert!(table.len() >= 30);
        for (text, want) in table {
            assert_eq!(errors(text), vec![want.to_string()], "config: {text:?}");
        }
    }

    #[test]
    fn all_errors_are_collected_in_order() {
        let text = "[server]\nworkers = abc\nauth = never\n[smarthost]\nport = x\n[nope]\n[log]\nlevel = loud\n";
        assert_eq!(
            errors(text),
            vec![
                "picorelay.ini: [nope]: unknown section (line 6); sections are [server] [users] [smarthost] [oauth] [queue] [aliases] [rewrite] [log]",
                r#"picorelay.ini: [server] workers: "abc" is not a number (1..1024)"#,
                r#"picorelay.ini: [server] auth: "never" is not one of off, optional, required"#,
                r#"picorelay.ini: [smarthost] port: "x" is not a number (1..65535)"#,
                r#"picorelay.ini: [log] level: "loud" is not one of error, warn, info, debug, trace"#,
            ]
        );
    }

    #[test]
    fn defaults() {
        let c = good("");
        let s = &c.server;
        assert_eq!(
            s.listen,
            vec![
                parse_socket_addr("127.0.0.1:25").unwrap(),
                parse_socket_addr("[::1]:25").unwrap()
            ]
        );
        assert!(s.listen_tls.is_empty());
        assert_eq!(s.hostname, system_hostname());
        assert_eq!(s.workers, 16);
        assert_eq!(s.max_connections_per_ip, 8);
        assert_eq!(s.max_message_size, 10 << 20);
        assert_eq!(s.max_recipients, 100);
        assert_eq!(s.command_timeout, Duration::from_secs(300));
        assert_eq!(s.data_timeout, Duration::from_secs(600));
        assert_eq!(
            (s.tls_cert.clone(), s.tls_key.clone(), s.require_tls),
            (None, None, false)
        );
        assert_eq!(
            s.relay_networks,
            vec![
                Cidr {
                    addr: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)),
                    prefix: 8
                },
                Cidr {
                    addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
                    prefix: 128
                },
            ]
        );
        let mut domains = vec![system_hostname().to_ascii_lowercase()];
        if domains[0] != "localhost" {
            domains.push("localhost".to_string());
        }
        assert_eq!(s.local_domains, domains);
        assert_eq!(s.auth, AuthMode::Optional);
        assert_eq!((s.user.clone(), s.pid_file.clone()), (None, None));
        assert!(c.users.is_empty());
        let h = &c.smarthost;
        assert!(h.hosts.is_empty());
        assert_eq!(
            (h.port, h.tls, h.tls_verify),
            (587, TlsMode::StartTls, true)
        );
        assert_eq!(
            (
                h.ca_file.clone(),
                h.tls_fingerprint,
                h.username.clone(),
                h.password.clone()
            ),
            (None, None, None, None)
        );
        assert_eq!(h.helo, s.hostname);
        assert_eq!(h.timeout, Duration::from_secs(300));
        assert_eq!(
            (h.max_connections, h.rate, h.daily_recipients),
            (3, None, None)
        );
        assert!(h.throttle_replies.is_empty());
        assert!(!c.summary().iter().any(|l| l.contains("pacing")));
        let q = &c.queue;
        assert_eq!(q.dir, PathBuf::from("/var/spool/picorelay"));
        assert_eq!(q.retry_min, Duration::from_secs(60));
        assert_eq!(q.retry_max, Duration::from_secs(3600));
        assert_eq!(q.lifetime, Duration::from_secs(5 * 86400));
        assert_eq!(q.max_size, 100 << 20);
        assert_eq!(q.bounce_to, BounceTo::Sender);
        assert_eq!(q.reuse_files, ReuseFiles::Auto);
        assert!(c.aliases.is_empty());
        assert_eq!(
            (c.rewrite.sender.clone(), c.rewrite.from.clone()),
            (None, None)
        );
        assert_eq!(c.log.level, log::LevelFilter::Info);
        assert_eq!(c.log.file, None);
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn pacing_keys() {
        // (lines after "[smarthost]\nhost = h\n", max_connections, rate as printed,
        //  daily_recipients, throttle_replies, summary line)
        type Row = (
            &'static str,
            usize,
            Option<&'static str>,
            Option<u64>,
            &'static [&'static str],
            Option<&'static str>,
        );
        let table: &[Row] = &[
            ("", 3, None, None, &[], None),
            (
                "max_connections = 3\nrate =\ndaily_recipients =\nthrottle_replies =",
                3,
                None,
                None,
                &[],
                None,
            ),
            (
                "rate = 30/1m\ndaily_recipients = 10000",
                3,
                Some("30/1m"),
                Some(10000),
                &[],
                Some("pacing: at most 30/1m messages, 10000 recipients a day, 3 connections"),
            ),
            (
                "rate = 500/1d",
                3,
                Some("500/1d"),
                None,
                &[],
                Some("pacing: at most 500/1d messages, 3 connections"),
            ),
            (
                "rate = 500 / 24h",
                3,
                Some("500/1d"),
                None,
                &[],
                Some("pacing: at most 500/1d messages, 3 connections"),
            ),
            (
                "rate = 5/2s",
                3,
                Some("5/2s"),
                None,
                &[],
                Some("pacing: at most 5/2s messages, 3 connections"),
            ),
            (
                "rate = 100/90",
                3,
                Some("100/90s"),
                None,
                &[],
                Some("pacing: at most 100/90s messages, 3 connections"),
            ),
            (
                "rate = 1/3650d",
                3,
                Some("1/3650d"),
                None,
                &[],
                Some("pacing: at most 1/3650d messages, 3 connections"),
            ),
            (
                "max_connections = 1",
                1,
                None,
                None,
                &[],
                Some("pacing: at most 1 connection"),
            ),
            (
                "max_connections = 100",
                100,
                None,
                None,
                &[],
                Some("pacing: at most 100 connections"),
            ),
            (
                "throttle_replies = Please slow down , , Sending LIMIT reached",
                3,
                None,
                None,
                &["Please slow down", "Sending LIMIT reached"],
                Some("pacing: 2 extra throttle replies"),
            ),
            (
                "throttle_replies = \" spaced ; semi, b2b \" ; comment",
                3,
                None,
                None,
                &["spaced ; semi", "b2b"],
                Some("pacing: 2 extra throttle replies"),
            ),
            (
                "daily_recipients = 2000\nthrottle_replies = 4.7.99 slow",
                3,
                None,
                Some(2000),
                &["4.7.99 slow"],
                Some(
                    "pacing: at most 2000 recipients a day, 3 connections; 1 extra throttle reply",
                ),
            ),
        ];
        for (lines, conns, rate, daily, replies, summary) in table {
            let c = good(&format!("[smarthost]\nhost = h\n{lines}"));
            let h = &c.smarthost;
            assert_eq!(h.max_connections, *conns, "{lines:?}");
            assert_eq!(h.rate.map(|r| r.to_string()).as_deref(), *rate, "{lines:?}");
            assert_eq!(h.daily_recipients, *daily, "{lines:?}");
            assert_eq!(h.throttle_replies, *replies, "{lines:?}");
            let got: Vec<String> = c
                .summary()
                .into_iter()
                .filter(|l| l.starts_with("pacing"))
                .collect();
            assert_eq!(
                got,
                summary.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                "{lines:?}"
            );
            assert!(c.warnings.is_empty(), "{lines:?}: {:?}", c.warnings);
        }
        assert_eq!(
            parse_rate("30/1m"),
            Ok(Rate {
                count: 30,
                per: Duration::from_secs(60)
            })
        );
        let dbg = format!("{:?}", good("[smarthost]\nrate = 30/1m").smarthost);
        assert!(dbg.contains("rate: Some(\"30/1m\")"), "{dbg}");
    }

    #[test]
    fn values_quotes_and_comments() {
        // (value as written after "password =", password loaded)
        let table: &[(&str, &str)] = &[
            (r"a\b\\c;d", r"a\b\\c;d"),
            (r#""x ;y""#, "x ;y"),
            (r#""  spaced #  " ; comment"#, "  spaced #  "),
            (r#""q";c"#, "q"),
            ("plain ; comment", "plain"),
            ("plain\t; comment", "plain"),
            ("a;b #c", "a;b #c"),
            ("p#1", "p#1"),
            (r"ends\", r"ends\"),
            (r#"a"b"#, r#"a"b"#),
            ("'single'", "'single'"),
            ("=eq=", "=eq="),
        ];
        for (written, want) in table {
            let text =
                format!("[smarthost]\nusername = u\npassword = {written}\nhelo = next.example\n");
            let c = good(&text);
            assert_eq!(c.smarthost.password.as_deref(), Some(*want), "{written:?}");
            // A trailing backslash must not swallow the next line.
            assert_eq!(c.smarthost.helo, "next.example", "{written:?}");
        }
    }

    #[test]
    fn file_syntax_variants() {
        let text = "\u{feff}; comment\r\n# comment\r\n  [ Server ]  ; why\r\n  Workers=3\r\n\r\n[queue]\r\ndir = \"/var/spool/my relay\"\r\n";
        let c = good(text);
        assert_eq!(c.server.workers, 3);
        assert_eq!(c.queue.dir, PathBuf::from("/var/spool/my relay"));
        // Empty values mean the default, except listen and relay_networks.
        let c = good("[server]\nworkers =\nlisten =\nrelay_networks = ; nobody relays without AUTH\nhostname = \"\"");
        assert_eq!(c.server.workers, 16);
        assert!(c.server.listen.is_empty());
        assert!(c.server.relay_networks.is_empty());
        assert_eq!(c.server.hostname, system_hostname());
    }

    #[test]
    fn full_config() {
        let pw = temp_path("pw");
        std::fs::write(&pw, "s3cret ;x\nsecond line\n").unwrap();
        std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
        let text = format!(
            "[server]
listen = 0.0.0.0:25, [::]:2525, , 127.0.0.1:0
listen_tls = 0.0.0.0:465
hostname = Mail.Example.com
workers = 4
max_connections_per_ip = 0
max_message_size = 64K
max_recipients = 5
command_timeout = 90
data_timeout = 2M
tls_cert = cert.pem
tls_key = key.pem
require_tls = On
relay_networks = 192.168.1.7/24, 2001:db8::1
local_domains = Example.COM, nas.lan
auth = REQUIRED
user = mail
pid_file = /run/picorelay.pid
[users]
Alice = {HASH6}
bob = {HASH5}
[smarthost]
host = smtp.example.com, mail2:2525, [2001:db8::1]:465, 2001:db8::2, [::1], 10.0.0.1:26
port = 465
tls = TLS
tls_verify = false
ca_file = /etc/ca.pem
tls_fingerprint = SHA256:00:01:02:03:04:05:06:07:08:09:0a:0b:0c:0d:0e:0f:10:11:12:13:14:15:16:17:18:19:1a:1b:1c:1d:1e:1F
username = relay@example.com
password_file = {}
helo = nas.example.com
[queue]
dir = spool
retry_min = 30s
retry_max = 30s
lifetime = 1d
max_size = 1G
bounce_to = Admin@Example.com
[aliases]
Root = admin@example.com
* = other@example.com
[rewrite]
sender = nas@example.com
from = Backup NAS <nas@example.com>
[log]
level = Debug
file = /var/log/picorelay.log
",
            pw.display()
        );
        let c = good(&text);
        let _ = std::fs::remove_file(&pw);
        let s = &c.server;
        assert_eq!(s.listen.len(), 3);
        assert_eq!(s.listen[1], parse_socket_addr("[::]:2525").unwrap());
        assert_eq!(
            s.listen_tls,
            vec![parse_socket_addr("0.0.0.0:465").unwrap()]
        );
        assert_eq!(s.hostname, "Mail.Example.com");
        assert_eq!(
            (
                s.workers,
                s.max_connections_per_ip,
                s.max_message_size,
                s.max_recipients
            ),
            (4, 0, 65536, 5)
        );
        assert_eq!(
            (s.command_timeout.as_secs(), s.data_timeout.as_secs()),
            (90, 120)
        );
        // Relative to the config file's folder (here the working folder: F has none).
        let here = std::env::current_dir().unwrap();
        assert_eq!(s.tls_cert, Some(here.join("cert.pem")));
        assert!(s.require_tls);
        assert_eq!(s.relay_networks[0].to_string(), "192.168.1.7/24");
        assert_eq!(s.relay_networks[1].to_string(), "2001:db8::1/128");
        assert_eq!(s.local_domains, vec!["example.com", "nas.lan"]);
        assert_eq!(s.auth, AuthMode::Required);
        assert_eq!(s.user.as_deref(), Some("mail"));
        assert_eq!(c.users.keys().collect::<Vec<_>>(), vec!["Alice", "bob"]);
        assert_eq!(c.users["Alice"], HASH6);
        let h = &c.smarthost;
        let hp = |host: &str, port| HostPort {
            host: host.to_string(),
            port,
        };
        assert_eq!(
            h.hosts,
            vec![
                hp("smtp.example.com", 465),
                hp("mail2", 2525),
                hp("2001:db8::1", 465),
                hp("2001:db8::2", 465),
                hp("::1", 465),
                hp("10.0.0.1", 26),
            ]
        );
        assert_eq!(h.hosts[2].to_string(), "[2001:db8::1]:465");
        assert_eq!((h.tls, h.tls_verify), (TlsMode::Implicit, false));
        let mut fp = [0u8; 32];
        for (i, b) in fp.iter_mut().enumerate() {
            *b = i as u8;
        }
        assert_eq!(h.tls_fingerprint, Some(fp));
        assert_eq!(h.password.as_deref(), Some("s3cret ;x"));
        assert_eq!(h.helo, "nas.example.com");
        assert_eq!(c.queue.dir, std::env::current_dir().unwrap().join("spool"));
        assert_eq!(c.queue.max_size, 1 << 30);
        assert_eq!(
            c.queue.bounce_to,
            BounceTo::Address("Admin@Example.com".to_string())
        );
        assert_eq!(
            c.aliases.get("root").map(String::as_str),
            Some("admin@example.com")
        );
        assert_eq!(
            c.aliases.get("*").map(String::as_str),
            Some("other@example.com")
        );
        assert_eq!(
            c.rewrite.from.as_deref(),
            Some("Backup NAS <nas@example.com>")
        );
        assert_eq!(c.log.level, log::LevelFilter::Debug);
        assert_eq!(c.warnings, Vec::<String>::new());

        // Secrets never show in Debug or the summary.
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("s3cret") && !dbg.contains(HASH6) && dbg.contains("********"),
            "{dbg}"
        );
        let summary = c.summary().join("\n");
        assert!(
            !summary.contains("s3cret") && !summary.contains("examplesalt"),
            "{summary}"
        );
        assert!(
            summary.contains("smarthost smtp.example.com:465, mail2:2525"),
            "{summary}"
        );
        assert!(summary.contains("auth as relay@example.com"), "{summary}");
        let spool = std::env::current_dir().unwrap().join("spool");
        assert!(
            summary.contains(&format!(
                "spool {} (max 1G), retry 30s..30s, lifetime 1d",
                spool.display()
            )),
            "{summary}"
        );
    }

    #[test]
    fn relative_paths_are_taken_from_the_config_files_folder() {
        let text = "[server]\ntls_cert = tls/cert.pem\ntls_key = /abs/key.pem\n\n[queue]\ndir = spool\n\n[log]\nfile = ../log/picorelay.log\n";
        let c = Config::parse(Path::new("/etc/picorelay/picorelay.ini"), text).unwrap();
        assert_eq!(c.queue.dir, PathBuf::from("/etc/picorelay/spool"));
        assert_eq!(
            c.server.tls_cert,
            Some(PathBuf::from("/etc/picorelay/tls/cert.pem"))
        );
        assert_eq!(c.server.tls_key, Some(PathBuf::from("/abs/key.pem")));
        assert_eq!(
            c.log.file,
            Some(PathBuf::from("/etc/picorelay/../log/picorelay.log"))
        );
    }

    #[test]
    fn password_file_open_to_others_is_a_warning() {
        use std::os::unix::fs::PermissionsExt;
        let pw = temp_path("pw-modes");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let text = format!(
            "[smarthost]\nhost = h\nusername = u\npassword_file = {}",
            pw.display()
        );
        for (mode, warned) in [(0o600, false), (0o640, false), (0o644, true), (0o602, true)] {
            std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(mode)).unwrap();
            let c = good(&text);
            assert_eq!(c.smarthost.password.as_deref(), Some("s3cret"));
            let want = format!(
                "picorelay.ini: [smarthost] password_file: {} is readable or writable by other users (mode {mode:04o}): run chmod o-rwx on it",
                pw.display()
            );
            let got: Vec<&String> = c
                .warnings
                .iter()
                .filter(|w| w.contains("password_file"))
                .collect();
            assert_eq!(
                got,
                if warned { vec![&want] } else { vec![] },
                "mode {mode:o}"
            );
            assert!(!c.warnings.iter().any(|w| w.contains("s3cret")));
        }
        let _ = std::fs::remove_file(&pw);
    }

    #[test]
    fn warnings_and_notes() {
        let table: &[(&str, &str)] = &[
            (
                "[smarthost]\nhost = h\ntls = none\nusername = u\npassword = p",
                "picorelay.ini: [smarthost] tls: none: the password is sent to the smarthost unencrypted",
            ),
            (
                "[smarthost]\nhost = h\ntls_verify = no",
                "picorelay.ini: [smarthost] tls_verify: no: any certificate is accepted (consider tls_fingerprint)",
            ),
            (
                "[server]\nauth = off\n[users]\nbob = $5$examplesalt$SwnVoYYML2Gme78SRb4hMJop813pb0088AJiQntkue4",
                "picorelay.ini: [server] auth: off: the users in [users] cannot log in",
            ),
            (
                "[users]\nbob = $5$examplesalt$SwnVoYYML2Gme78SRb4hMJop813pb0088AJiQntkue4",
                "picorelay.ini: [server] auth: without tls_cert, AUTH is accepted only from local clients (127.0.0.1, ::1)",
            ),
        ];
        for (text, want) in table {
            let c = good(text);
            assert_eq!(c.warnings, vec![want.to_string()], "{text:?}");
            assert_eq!(c.notes()[0], *want, "{text:?}");
        }
        let c = good("");
        assert_eq!(
            c.notes(),
            vec!["picorelay.ini: [smarthost] host: not set: hold mode, every message stays in the queue"]
        );
        assert!(c.summary().iter().any(|l| l.contains("hold mode")));
    }

    #[test]
    fn check_resources() {
        let dir = temp_path("spool-parent");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cert = dir.join("cert.pem");
        std::fs::write(&cert, "x").unwrap();
        let plain_file = dir.join("file");
        std::fs::write(&plain_file, "x").unwrap();
        let table: Vec<(String, Vec<String>)> = vec![
            // spool missing but creatable, cert readable
            (
                format!(
                    "[server]\ntls_cert = {}\ntls_key = {}\n[queue]\ndir = {}",
                    cert.display(),
                    cert.display(),
                    dir.join("spool").display()
                ),
                vec![],
            ),
            // spool exists
            (format!("[queue]\ndir = {}", dir.display()), vec![]),
            (
                format!(
                    "[server]\ntls_cert = {0}/nope.pem\ntls_key = {1}\n[queue]\ndir = {0}",
                    dir.display(),
                    cert.display()
                ),
                vec![format!(
                    "{F}: [server] tls_cert: {}/nope.pem: cannot read: no such file",
                    dir.display()
                )],
            ),
            (
                format!(
                    "[smarthost]\nca_file = {0}\n[queue]\ndir = {0}",
                    dir.display()
                ),
                vec![format!(
                    "{F}: [smarthost] ca_file: {}: is a folder, not a file",
                    dir.display()
                )],
            ),
            (
                format!("[queue]\ndir = {}", plain_file.display()),
                vec![format!(
                    "{F}: [queue] dir: {}: exists but is not a folder",
                    plain_file.display()
                )],
            ),
            (
                format!("[queue]\ndir = {}/a/b", dir.display()),
                vec![format!(
                    "{F}: [queue] dir: {0}/a/b: does not exist, nor does {0}/a",
                    dir.display()
                )],
            ),
        ];
        for (text, want) in table {
            assert_eq!(good(&text).check_resources(), want, "{text}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn cidr_contains() {
        let table: &[(&str, &str, bool)] = &[
            ("127.0.0.0/8", "127.0.0.2", true),
            ("127.0.0.0/8", "128.0.0.1", false),
            ("192.168.1.77/24", "192.168.1.1", true),
            ("192.168.1.0/24", "192.168.2.1", false),
            ("10.0.0.1", "10.0.0.1", true),
            ("10.0.0.1", "10.0.0.2", false),
            ("0.0.0.0/0", "8.8.8.8", true),
            ("0.0.0.0/0", "::1", false),
            ("127.0.0.0/8", "::ffff:127.0.0.1", true),
            ("127.0.0.0/8", "::ffff:10.0.0.1", false),
            ("::1/128", "::1", true),
            ("::1", "::2", false),
            ("fd00::/8", "fd12:3456::1", true),
            ("fd00::/8", "fe80::1", false),
            ("::/0", "2001:db8::1", true),
            ("::1/128", "127.0.0.1", false),
        ];
        for (net, ip, want) in table {
            let c = parse_cidr(net).unwrap();
            assert_eq!(
                c.contains(ip.parse().unwrap()),
                *want,
                "{net} contains {ip}"
            );
        }
    }

    #[test]
    fn value_parsers() {
        let durations: &[(&str, Option<u64>)] = &[
            ("90", Some(90)),
            ("90s", Some(90)),
            ("5m", Some(300)),
            ("5M", Some(300)),
            ("2h", Some(7200)),
            ("5d", Some(432000)),
            ("0", Some(0)),
            ("", None),
            ("5 m", None),
            ("1.5h", None),
            ("5w", None),
            ("+5", None),
            ("3650d", Some(3650 * 86400)),
            ("3651d", None),
            ("99999999999999999999", None),
        ];
        for (s, want) in durations {
            assert_eq!(parse_duration(s).ok().map(|d| d.as_secs()), *want, "{s:?}");
        }
        let sizes: &[(&str, Option<u64>)] = &[
            ("100", Some(100)),
            ("10K", Some(10240)),
            ("10k", Some(10240)),
            ("10M", Some(10485760)),
            ("1G", Some(1 << 30)),
            ("1T", None),
            ("K", None),
            ("-1", None),
            ("1.5M", None),
            ("18446744073709551615", Some(u64::MAX)),
            ("18446744073709551615K", None),
        ];
        for (s, want) in sizes {
            assert_eq!(parse_size(s).ok(), *want, "{s:?}");
        }
        let bools: &[(&str, Option<bool>)] = &[
            ("yes", Some(true)),
            ("TRUE", Some(true)),
            ("On", Some(true)),
            ("1", Some(true)),
            ("no", Some(false)),
            ("False", Some(false)),
            ("off", Some(false)),
            ("0", Some(false)),
            ("y", None),
            ("2", None),
            ("", None),
        ];
        for (s, want) in bools {
            assert_eq!(parse_bool(s).ok(), *want, "{s:?}");
        }
        let addrs: &[(&str, bool)] = &[
            ("127.0.0.1:25", true),
            ("[::1]:25", true),
            ("0.0.0.0:465", true),
            ("127.0.0.1:0", true),
            ("[fe80::1%1]:25", true), // link-local with a numeric scope id
            ("127.0.0.1", false),
            ("localhost:25", false),
            ("127.0.0.1:65536", false),
        ];
        for (s, ok) in addrs {
            assert_eq!(parse_socket_addr(s).is_ok(), *ok, "{s:?}");
        }
        let sizes_fmt: &[(u64, &str)] = &[
            (0, "0"),
            (1000, "1000"),
            (1024, "1K"),
            (10 << 20, "10M"),
            (3 << 30, "3G"),
        ];
        for (n, want) in sizes_fmt {
            assert_eq!(fmt_size(*n), *want);
        }
    }

    #[test]
    fn certificate_credential_files_are_only_checked_not_parsed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_path("client-cert");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("c.pem"), dir.join("c.key"));
        std::fs::write(&cert, "not PEM: that is for picorelay check").unwrap();
        std::fs::write(&key, "x").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let text = |cert: &Path| {
            format!(
                "[smarthost]\nusername = u\n[oauth]\nprovider = microsoft\nclient_id = c\ngrant = client_credentials\ntenant = t.example\nclient_certificate = {}\nclient_key = {}\n[queue]\ndir = {}",
                cert.display(),
                key.display(),
                dir.display()
            )
        };
        let c = good(&text(&cert));
        let o = c.oauth.as_ref().unwrap();
        assert_eq!(
            (o.client_secret.as_ref(), o.client_secret_file.as_ref()),
            (None, None)
        );
        assert_eq!(
            o.client_certificate,
            Some(ClientCertificate {
                cert: cert.clone(),
                key: key.clone()
            })
        );
        assert_eq!(
            c.warnings,
            vec![format!(
                "picorelay.ini: [oauth] client_key: {} is readable or writable by other users (mode 0644): run chmod o-rwx on it",
                key.display()
            )]
        );
        assert_eq!(c.check_resources(), Vec::<String>::new());
        let missing = dir.join("nope.pem");
        assert_eq!(
            good(&text(&missing)).check_resources(),
            vec![format!(
                "picorelay.ini: [oauth] client_certificate: {}: cannot read: no such file",
                missing.display()
            )]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn oauth_defaults_come_from_provider_and_grant() {
        let c = good("[smarthost]\nusername = m@example.com\n[oauth]\nprovider = microsoft\nclient_id = c\ntenant = contoso.onmicrosoft.com");
        let o = c.oauth.expect("oauth");
        assert_eq!(
            o.token_url,
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        assert_eq!(
            o.device_url.as_deref(),
            Some(
                "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/devicecode"
            )
        );
        assert_eq!(
            o.scope,
            "https://outlook.office.com/SMTP.Send offline_access"
        );
        assert_eq!(
            o.token_file,
            PathBuf::from("/var/spool/picorelay/oauth-token")
        );
        assert_eq!(o.timeout, Duration::from_secs(30));
        let c = good("[smarthost]\nusername = m@example.com\n[oauth]\nprovider = microsoft\nclient_id = c\ngrant = client_credentials\nclient_secret = s\ntenant = contoso.onmicrosoft.com");
        assert_eq!(
            c.oauth.unwrap().scope,
            "https://outlook.office365.com/.default"
        );
        let c = good("[smarthost]\nusername = m@gmail.com\n[oauth]\nprovider = google\nclient_id = c\nclient_secret = s");
        let o = c.oauth.unwrap();
        assert_eq!(o.token_url, "https://oauth2.googleapis.com/token");
        assert_eq!(
            o.auth_url.as_deref(),
            Some("https://accounts.google.com/o/oauth2/v2/auth")
        );
        assert_eq!(o.scope, "https://mail.google.com/");
        // A password beside [oauth] is not needed, and is said to be unused.
        let c = good(
            "[smarthost]\nusername = u\npassword = p\n[oauth]\nprovider = microsoft\nclient_id = c",
        );
        assert!(c
            .warnings
            .iter()
            .any(|w| w.contains("[smarthost] password: ignored")));
        // Nothing secret in the summary or Debug.
        let c = good("[smarthost]\nhost = h\nusername = u\n[oauth]\nprovider = microsoft\nclient_id = c\ngrant = client_credentials\nclient_secret = hunter2\ntenant = t.example");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!c.summary().join("\n").contains("hunter2"));
        assert!(c
            .summary()
            .join("\n")
            .contains("microsoft OAuth tokens (client_credentials grant"));
    }

    #[test]
    fn example_config_loads() {
        let c = good(EXAMPLE);
        assert!(c.warnings.is_empty());
        // Uncommenting every key line (";key = value") must give a valid config with the defaults.
        let uncommented: String = EXAMPLE
            .lines()
            .map(|l| match l.strip_prefix(';') {
                Some(rest) if !rest.starts_with(' ') && !rest.is_empty() => rest,
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let u = good(&uncommented);
        let d = good("");
        assert_eq!(u.server.listen, d.server.listen);
        assert_eq!(u.server.relay_networks, d.server.relay_networks);
        assert_eq!(u.summary().len(), d.summary().len());
        assert_eq!(u.queue.retry_max, d.queue.retry_max);
        assert_eq!(u.users.len(), 1);
        assert_eq!(u.aliases.len(), 2);
        // Every key of the schema is documented in the example.
        for (sec, keys) in SCHEMA {
            assert!(
                EXAMPLE.contains(&format!("[{sec}]")),
                "[{sec}] missing from etc/picorelay.ini"
            );
            for (key, default) in *keys {
                let line = format!(";{key} = {default}");
                assert!(
                    EXAMPLE.lines().any(|l| l.trim_end() == line.trim_end()),
                    "etc/picorelay.ini lacks {line:?}"
                );
            }
        }
    }

    #[test]
    fn rust_ini_quirks_are_neutralised() {
        // (lines after "[smarthost]\nusername = u\n", password loaded, helo loaded)
        let table: &[(&str, &str, &str)] = &[
            // A final backslash is a line continuation for rust-ini, even with escapes off.
            (
                "password = ends\\\nhelo = next.example",
                r"ends\",
                "next.example",
            ),
            (
                "password = ends\\ ; comment\nhelo = next.example",
                r"ends\",
                "next.example",
            ),
            (
                "password = \"ends\\\"\nhelo = next.example",
                r"ends\",
                "next.example",
            ),
            // Escapes off: \b and \\ are kept as written.
            (r"password = a\b\\c;d", r"a\b\\c;d", ""),
            (r"password = \\", r"\\", ""),
            // Quotes off in rust-ini: single quotes are ordinary characters.
            ("password = 'single'", "'single'", ""),
            ("password = 'a ;b'", "'a", ""),
            // Double quotes are ours: ; # and spaces inside are kept.
            ("password = \"x ;y\"", "x ;y", ""),
            ("password = \" #x; \" ; comment", " #x; ", ""),
            // rust-ini would end a key at ':' and take "=" into the value; values keep both.
            ("password = a:b=c", "a:b=c", ""),
        ];
        for (lines, password, helo) in table {
            let text = format!("[smarthost]\nusername = u\n{lines}\n");
            let c = good(&text);
            assert_eq!(
                c.smarthost.password.as_deref(),
                Some(*password),
                "{lines:?}"
            );
            if !helo.is_empty() {
                assert_eq!(c.smarthost.helo, *helo, "{lines:?}");
            }
        }

        // Free-form keys with ':' and '\' stay one key.
        let c = good(&format!(
            "[users]\na:b = {HASH5}\nc\\:d\\ = {HASH6}\n[aliases]\nx:y = a@example.com"
        ));
        assert_eq!(c.users.keys().collect::<Vec<_>>(), vec!["a:b", "c\\:d\\"]);
        assert_eq!(c.users["c\\:d\\"], HASH6);
        assert_eq!(
            c.aliases.get("x:y").map(String::as_str),
            Some("a@example.com")
        );
        for key in ["a:b", r"a\", r"\:", r"\\x", ":", "a\\:b:\\"] {
            assert_eq!(unescape_key(&ini_key(key)), key);
        }

        // The normalised text keeps one line per input line, with no comments or quirks left.
        let mut errs = Vec::new();
        let text = "; c\n[Smarthost] ; c\nPassword = p\\ ; c\n\n[queue]\ndir = \"a ;b\" ; c";
        assert_eq!(
            prepass(F, text, &mut errs),
            "\n[smarthost]\npassword = p\\ \n\n[queue]\ndir = \"a ;b\" "
        );
        assert!(errs.is_empty(), "{errs:?}");

        // A carriage return inside a value would end it for rust-ini: refused.
        assert_eq!(
            errors("[smarthost]\nhelo = a\rb\r\nport = 25 ; c\rc\r"),
            vec!["picorelay.ini: [smarthost] helo: a carriage return inside the value (save the file with LF or CRLF line ends) (line 2)"]
        );
    }

    #[test]
    fn from_ini_reports_what_rust_ini_merges() {
        // rust-ini keeps repeated keys and sections; the pre-pass never hands it any, but
        // reading what it parsed must not silently take one of them.
        let text =
            "top = 1\n[server]\nworkers = 1\nworkers = 2\n[server]\nauth = off\n[mail]\nx = 1\n";
        let parsed = ini::Ini::load_from_str_opt(text, ini_options()).unwrap();
        let mut errs = Vec::new();
        let raw = from_ini(F, &parsed, &mut errs);
        assert_eq!(
            errs,
            vec![
                "picorelay.ini: top: key before any [section]; put it under its section",
                "picorelay.ini: [server] workers: duplicate key; keep one",
                "picorelay.ini: [server]: duplicate section; merge them into one",
                "picorelay.ini: [mail]: unknown section",
            ]
        );
        let server: Vec<(&str, &str)> = raw["server"]
            .iter()
            .map(|l| (l.key.as_str(), l.value.as_str()))
            .collect();
        assert_eq!(server, vec![("workers", "1")]);
    }

    #[test]
    fn load_reports_unreadable_file() {
        let p = temp_path("missing.ini");
        let e = Config::load(&p).unwrap_err();
        assert_eq!(
            e.0,
            vec![format!(
                "{}: cannot read the config file: no such file",
                p.display()
            )]
        );
    }
}
