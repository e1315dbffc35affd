//! A small HTTP/1.1 client that POSTs a form to an OAuth token endpoint over TLS and reads the answer.
//!
//! The protocol is pure and tested with byte slices: `parse_url`, `form_encode`, `query_pairs`,
//! `post_request` build and take apart text; `read_response` reads one response from any `Read`
//! with every size bounded. `post_form` is the only I/O: connect, TLS, write, read, all within
//! one deadline. One request per connection (`Connection: close`), no redirects, no
//! compression, no proxies: a token endpoint needs none of them.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::tls::DeadlineSocket;
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};

/// Most bytes of status line and header fields accepted, interim (1xx) responses and chunked
/// trailers included. RFC 9112 section 2.3 leaves the limit to us; token answers send ~1 KiB.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most header lines in one response head (RFC 9112 section 2.3: ours to choose).
pub const MAX_HEADERS: usize = 100;
/// Longest chunk-size line, extensions included (RFC 9112 section 7.1.1 lets us limit them).
const MAX_CHUNK_LINE: usize = 1024;
/// Read buffer between the socket and the parser.
const READ_BUF: usize = 4096;

/// Url is a validated https URL: `host` without brackets (an IPv6 literal is bare), `path`
/// starting with "/" and carrying the query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    /// TCP port, 443 unless given.
    pub port: u16,
    /// Path and query, at least "/".
    pub path: String,
}

impl Url {
    /// host_header returns the Host field value (RFC 9110 section 7.2): "host", or
    /// "host:port" when the port is not 443; IPv6 literals in brackets.
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 443 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// parse_url accepts "https://host[:port][/path][?query]" (RFC 3986 section 3). Refused:
/// other schemes, userinfo (credentials do not belong in a URL), fragments, empty hosts and
/// ports, and any byte that is not visible ASCII (spaces, CR/LF, controls, raw UTF-8: they
/// must be percent-encoded), so a URL can never inject a header line into the request.
pub fn parse_url(s: &str) -> Result<Url, String> {
    if let Some(c) = s.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "URL {s:?} contains {c:?}: percent-encode it or remove it"
        ));
    }
    let rest = match s.get(..8) {
        Some(p) if p.eq_ignore_ascii_case("https://") => &s[8..],
        _ if s.len() >= 7 && s[..7].eq_ignore_ascii_case("http://") => {
            return Err(format!("URL {s}: use https://, plain http is refused"))
        }
        _ => return Err(format!("URL {s}: must start with https://")),
    };
    if rest.contains('#') {
        return Err(format!("URL {s}: remove the #fragment"));
    }
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    if authority.contains('@') {
        // Not echoed: the part before '@' may be a password.
        return Err("URL: remove the user name and password before '@'; credentials do not belong in the URL".to_string());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return Err(format!("URL {s}: missing ']' after the IPv6 address"));
        };
        if addr.parse::<Ipv6Addr>().is_err() {
            return Err(format!("URL {s}: invalid IPv6 address [{addr}]"));
        }
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(p) => Some(p),
                None => return Err(format!("URL {s}: unexpected {after:?} after ']'")),
            },
        };
        (addr, port)
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("URL {s}: no host name"));
    }
    let reg_name = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':');
    if !host.bytes().all(reg_name) {
        return Err(format!("URL {s}: invalid host name {host:?}"));
    }
    let port = match port {
        None => 443,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n != 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(format!("URL {s}: invalid port {p:?}")),
        },
    };
    let path = if path.is_empty() {
        "/".to_string()
    } else if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    Ok(Url {
        host: host.to_string(),
        port,
        path,
    })
}

/// form_encode builds an application/x-www-form-urlencoded body: RFC 3986 unreserved bytes
/// (ALPHA DIGIT - . _ ~) as they are, every other byte of the UTF-8 as %XX (uppercase), space
/// included as %20 rather than "+": every form decoder reads %20 as a space, while "+" is
/// ambiguous to anyone decoding it as a plain URI.
pub fn form_encode(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        percent_encode(&mut out, k);
        out.push('=');
        percent_encode(&mut out, v);
    }
    out
}

/// percent_encode appends `s` with everything but RFC 3986 unreserved bytes as %XX.
fn percent_encode(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
}

/// query_pairs decodes a query string ("a=b&c=d%20e+f", a leading "?" ignored) into pairs, in
/// order: "+" is a space, %XX a byte, an invalid % sequence stays as written, a segment
/// without "=" has an empty value, empty segments are skipped; bytes that are not UTF-8
/// become U+FFFD. Used to read the redirect URL a user pastes back.
pub fn query_pairs(q: &str) -> Vec<(String, String)> {
    let q = q.strip_prefix('?').unwrap_or(q);
    q.split('&')
        .filter(|seg| !seg.is_empty())
        .map(|seg| {
            let (k, v) = seg.split_once('=').unwrap_or((seg, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// percent_decode undoes percent_encode and form encoding ("+" is a space), leniently.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |j: usize| b.get(j).and_then(|&c| char::from(c).to_digit(16));
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                if let (Some(h), Some(l)) = (hex(i + 1), hex(i + 2)) {
                    // Two hex digits are < 256.
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// post_request returns the whole request for POSTing `body` (already form-encoded) to `url`
/// (from parse_url, so nothing in it can break a header line).
pub fn post_request(url: &Url, body: &str) -> Vec<u8> {
    format!(
        "POST {} HTTP/1.1\r\n\
         Host: {}\r\n\
         User-Agent: picorelay/{}\r\n\
         Accept: application/json\r\n\
         Content-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\n\
         Connection: close\r\n\
         \r\n\
         {}",
        url.path,
        url.host_header(),
        env!("CARGO_PKG_VERSION"),
        body.len(),
        body
    )
    .into_bytes()
}

/// Response is one final (non-1xx) HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code, 200..=599.
    pub status: u16,
    /// Header fields in order, names as sent, values trimmed.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked; at most the cap given to read_response.
    pub body: Vec<u8>,
}

impl Response {
    /// header returns the value of the first field named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// is_redirect is true for any 3xx: the caller refuses to follow them (a token request
    /// carries secrets and must go only where the config says).
    pub fn is_redirect(&self) -> bool {
        (300..400).contains(&self.status)
    }
}

/// HttpError says why no usable answer came from the token endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// Name resolution or TCP connect failed (the message names host or address).
    Connect(String),
    /// The deadline passed (connect, handshake, write or read).
    Timeout,
    /// The TLS handshake or record layer failed (certificate, protocol).
    Tls(String),
    /// Another socket error.
    Io(String),
    /// The connection ended before the response was complete.
    Closed,
    /// The bytes are not an HTTP/1.x response we accept.
    Malformed(&'static str),
    /// The body is (or is announced to be) larger than the cap, which is carried.
    TooLarge(usize),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Connect(m) => write!(f, "{m}; check the token URL and the network"),
            HttpError::Timeout => {
                f.write_str("token endpoint did not answer in time; try again later")
            }
            HttpError::Tls(m) => write!(f, "tls with the token endpoint failed: {m}"),
            HttpError::Io(m) => write!(f, "token endpoint connection failed: {m}"),
            HttpError::Closed => f.write_str("token endpoint closed the connection early"),
            HttpError::Malformed(m) => {
                write!(f, "token endpoint sent a malformed HTTP answer: {m}")
            }
            HttpError::TooLarge(n) => write!(f, "token endpoint answer over {n} bytes"),
        }
    }
}

impl std::error::Error for HttpError {}

/// io_error classifies a socket error: timeouts (a blocking socket's read timeout shows as
/// WouldBlock), rustls errors (carried inside InvalidData), the rest.
fn io_error(e: io::Error) -> HttpError {
    if matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    ) {
        return HttpError::Timeout;
    }
    if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return HttpError::Tls(tls.to_string());
    }
    HttpError::Io(e.to_string())
}

/// Input is the buffered input of read_response: at most READ_BUF bytes held, whatever the peer sends.
struct Input<'a> {
    r: &'a mut dyn Read,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Input<'_> {
    /// fill reads more bytes once the buffer is used up; false at EOF.
    fn fill(&mut self) -> Result<bool, HttpError> {
        self.start = 0;
        self.end = 0;
        loop {
            match self.r.read(&mut self.buf) {
                Ok(0) => return Ok(false),
                // min: a Read claiming more than the buffer must not make us slice past it.
                Ok(n) => {
                    self.end = n.min(self.buf.len());
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_error(e)),
            }
        }
    }

    /// available returns the buffered bytes, reading when none are left; empty at EOF.
    fn available(&mut self) -> Result<&[u8], HttpError> {
        if self.start == self.end {
            self.fill()?;
        }
        Ok(&self.buf[self.start..self.end])
    }

    /// line reads one line into `out` without its LF or CRLF, refusing lines longer than
    /// `limit` bytes with the terminator (error `too_long`); EOF first is Closed. Returns
    /// the bytes consumed. RFC 9112 section 2.2 lets a recipient accept a bare LF as the
    /// line end: we do (some small servers send it); a bare CR elsewhere is refused by the
    /// callers' control character checks.
    fn line(
        &mut self,
        limit: usize,
        too_long: &'static str,
        out: &mut Vec<u8>,
    ) -> Result<usize, HttpError> {
        out.clear();
        loop {
            let avail = self.available()?;
            if avail.is_empty() {
                return Err(HttpError::Closed);
            }
            let (take, done) = match avail.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (avail.len(), false),
            };
            if out.len() + take > limit {
                return Err(HttpError::Malformed(too_long));
            }
            out.extend_from_slice(&avail[..take]);
            self.start += take;
            if done {
                let used = out.len();
                out.pop();
                if out.last() == Some(&b'\r') {
                    out.pop();
                }
                return Ok(used);
            }
        }
    }

    /// head_line is `line` charged to the shared head budget.
    fn head_line(&mut self, budget: &mut usize, out: &mut Vec<u8>) -> Result<(), HttpError> {
        let used = self.line(*budget, "header section over 16 KiB", out)?;
        *budget -= used;
        Ok(())
    }

    /// body_bytes moves up to `n` bytes into `body`, growing it by at most `cap`; Closed at EOF.
    fn body_bytes(&mut self, body: &mut Vec<u8>, n: usize, cap: usize) -> Result<(), HttpError> {
        let mut left = n;
        while left > 0 {
            let avail = self.available()?;
            if avail.is_empty() {
                return Err(HttpError::Closed);
            }
            let take = avail.len().min(left);
            grow(body, take, cap)?;
            body.extend_from_slice(&avail[..take]);
            self.start += take;
            left -= take;
        }
        Ok(())
    }
}

/// grow makes room for `more` bytes in `body` without its capacity ever passing `cap`
/// (Vec's own doubling could allocate up to twice the cap).
fn grow(body: &mut Vec<u8>, more: usize, cap: usize) -> Result<(), HttpError> {
    let need = body
        .len()
        .checked_add(more)
        .ok_or(HttpError::TooLarge(cap))?;
    if need > cap {
        return Err(HttpError::TooLarge(cap));
    }
    if need > body.capacity() {
        let target = need.max(body.capacity().saturating_mul(2)).min(cap);
        body.reserve_exact(target - body.len());
    }
    Ok(())
}

/// Framing is how the body is delimited (RFC 9112 section 6.3).
enum Framing {
    Empty,
    Length(usize),
    Chunked,
    Close,
}

/// read_response reads one HTTP/1.x response from `r`: interim 1xx responses are skipped, the
/// body is read by chunked transfer coding, Content-Length or until EOF, and never more than
/// `cap` bytes are kept (nor much more allocated, whatever the peer announces). Bytes after
/// the response are left unread or ignored (the connection is not reused).
pub fn read_response(r: &mut dyn Read, cap: usize) -> Result<Response, HttpError> {
    let mut input = Input {
        r,
        buf: vec![0; READ_BUF],
        start: 0,
        end: 0,
    };
    let mut budget = MAX_HEAD;
    let mut line = Vec::new();
    let (status, headers) = loop {
        let (status, headers) = read_head(&mut input, &mut budget, &mut line)?;
        match status {
            // We never ask to upgrade; after a 101 the bytes are another protocol.
            101 => return Err(HttpError::Malformed("unexpected 101 switching protocols")),
            // RFC 9110 section 15.2: a client must accept and skip interim responses. The
            // shared head budget bounds how many.
            100..=199 => continue,
            _ => break (status, headers),
        }
    };
    let body = match framing(status, &headers, cap)? {
        Framing::Empty => Vec::new(),
        Framing::Length(n) => {
            // n <= cap was checked, so announcing a huge length allocates nothing.
            let mut body = Vec::with_capacity(n);
            input.body_bytes(&mut body, n, cap)?;
            body
        }
        Framing::Chunked => read_chunked(&mut input, &mut budget, &mut line, cap)?,
        Framing::Close => {
            let mut body = Vec::new();
            loop {
                let avail = input.available()?;
                if avail.is_empty() {
                    break;
                }
                let n = avail.len();
                grow(&mut body, n, cap)?;
                body.extend_from_slice(avail);
                input.start += n;
            }
            body
        }
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// read_head reads a status line and its header fields up to the empty line.
fn read_head(
    input: &mut Input<'_>,
    budget: &mut usize,
    line: &mut Vec<u8>,
) -> Result<(u16, Vec<(String, String)>), HttpError> {
    input.head_line(budget, line)?;
    let status = parse_status_line(line)?;
    let mut headers: Vec<(String, String)> = Vec::new();
    loop {
        input.head_line(budget, line)?;
        if line.is_empty() {
            return Ok((status, headers));
        }
        if let Some(b' ' | b'\t') = line.first() {
            // RFC 9112 section 5.2: a user agent replaces obs-fold with a space.
            let Some((_, value)) = headers.last_mut() else {
                return Err(HttpError::Malformed("folded line before any header"));
            };
            let more = field_value(line)?;
            if !more.is_empty() {
                value.push(' ');
                value.push_str(&more);
            }
            continue;
        }
        if headers.len() == MAX_HEADERS {
            return Err(HttpError::Malformed("more than 100 header fields"));
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(HttpError::Malformed("header line without ':'"))?;
        let name = &line[..colon];
        // RFC 9112 section 5.1: no whitespace between name and colon; RFC 9110 5.1: a token.
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(HttpError::Malformed("invalid header name"));
        }
        let name = String::from_utf8_lossy(name).into_owned();
        let value = field_value(&line[colon + 1..])?;
        headers.push((name, value));
    }
}

/// parse_status_line checks "HTTP/1.x NNN [reason]" (RFC 9112 section 4) and returns NNN.
fn parse_status_line(line: &[u8]) -> Result<u16, HttpError> {
    const BAD: HttpError = HttpError::Malformed("invalid status line");
    let rest = line.strip_prefix(b"HTTP/1.").ok_or(BAD)?;
    let (&minor, rest) = rest.split_first().ok_or(BAD)?;
    let rest = rest.strip_prefix(b" ").ok_or(BAD)?;
    if !minor.is_ascii_digit() || rest.len() < 3 || !rest[..3].iter().all(u8::is_ascii_digit) {
        return Err(BAD);
    }
    // Reason is optional; lenient about a missing space before an empty one.
    let reason = &rest[3..];
    if !(reason.is_empty() || reason[0] == b' ') {
        return Err(BAD);
    }
    if reason
        .iter()
        .any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
    {
        return Err(BAD);
    }
    let code = rest[..3]
        .iter()
        .fold(0u16, |n, &d| n * 10 + u16::from(d - b'0'));
    if !(100..=599).contains(&code) {
        return Err(HttpError::Malformed("status code out of range"));
    }
    Ok(code)
}

/// is_tchar: RFC 9110 section 5.6.2 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// field_value trims optional whitespace and refuses control characters (bare CR, NUL,
/// RFC 9110 section 5.5); obs-text (bytes >= 0x80) is kept, decoded lossily.
fn field_value(v: &[u8]) -> Result<String, HttpError> {
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = v.iter().position(|b| !ows(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !ows(b)).map_or(start, |i| i + 1);
    let v = &v[start..end];
    if v.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(HttpError::Malformed("control character in header value"));
    }
    Ok(String::from_utf8_lossy(v).into_owned())
}

/// framing decides how the body is delimited, per RFC 9112 section 6.3.
fn framing(status: u16, headers: &[(String, String)], cap: usize) -> Result<Framing, HttpError> {
    // Rule 1: 204 and 304 never have a body (we never send HEAD).
    if status == 204 || status == 304 {
        return Ok(Framing::Empty);
    }
    let named = |n: &'static str| {
        headers
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.as_str())
    };
    let te: Vec<&str> = named("transfer-encoding")
        .flat_map(|v| v.split(','))
        .map(|c| c.trim_matches([' ', '\t']))
        .filter(|c| !c.is_empty())
        .collect();
    let cl: Vec<&str> = named("content-length").collect();
    if named("transfer-encoding").next().is_some() {
        // Rule 3: both is how request smuggling looks; refused rather than resolved.
        if !cl.is_empty() {
            return Err(HttpError::Malformed(
                "both transfer-encoding and content-length",
            ));
        }
        // We send no TE or Accept-Encoding, so anything but plain chunked is unexpected.
        if te.len() != 1 || !te[0].eq_ignore_ascii_case("chunked") {
            return Err(HttpError::Malformed("unsupported transfer-encoding"));
        }
        return Ok(Framing::Chunked);
    }
    match cl.as_slice() {
        [] => Ok(Framing::Close),
        // Rule 5: differing lengths are unrecoverable; identical repeats are refused too
        // since a correct server has no reason to send them.
        [_, _, ..] => Err(HttpError::Malformed("duplicate content-length")),
        [v] => {
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HttpError::Malformed("invalid content-length"));
            }
            // All digits: parse fails only on overflow, which is over any cap too.
            match v.parse::<usize>() {
                Ok(n) if n <= cap => Ok(Framing::Length(n)),
                _ => Err(HttpError::TooLarge(cap)),
            }
        }
    }
}

/// read_chunked reads a chunked body (RFC 9112 section 7.1): hex sizes with optional
/// extensions (ignored), data, CRLF, a zero-size last chunk, then trailer fields (skipped,
/// charged to the head budget).
fn read_chunked(
    input: &mut Input<'_>,
    budget: &mut usize,
    line: &mut Vec<u8>,
    cap: usize,
) -> Result<Vec<u8>, HttpError> {
    let mut body = Vec::new();
    loop {
        input.line(MAX_CHUNK_LINE, "chunk size line too long", line)?;
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        let rest = &line[digits..];
        let rest_ok = rest
            .iter()
            .position(|&b| b != b' ' && b != b'\t')
            .map_or(true, |i| rest[i] == b';');
        if digits == 0 || !rest_ok {
            return Err(HttpError::Malformed("invalid chunk size"));
        }
        let mut size: usize = 0;
        for &d in &line[..digits] {
            // Hex digits were checked above.
            let v = char::from(d).to_digit(16).unwrap_or(0) as usize;
            size = size
                .checked_mul(16)
                .and_then(|s| s.checked_add(v))
                .ok_or(HttpError::TooLarge(cap))?;
        }
        if size == 0 {
            break;
        }
        if size > cap - body.len() {
            return Err(HttpError::TooLarge(cap));
        }
        input.body_bytes(&mut body, size, cap)?;
        input.line(2, "missing CRLF after chunk data", line)?;
        if !line.is_empty() {
            return Err(HttpError::Malformed("missing CRLF after chunk data"));
        }
    }
    loop {
        input.head_line(budget, line)?;
        if line.is_empty() {
            return Ok(body);
        }
    }
}

/// EofIsEnd reads a TLS stream treating a TCP close without close_notify as a normal end.
/// rustls reports that as UnexpectedEof. A Content-Length or chunked body is complete before
/// EOF is ever read, and a short one still fails as Closed; only a close-delimited body
/// depends on it, and there a truncation attack yields JSON that does not parse. Real token
/// endpoints send close_notify; some servers and middleboxes do not, so accepting is kinder.
struct EofIsEnd<'a, R: Read>(&'a mut R);

impl<R: Read> Read for EofIsEnd<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.0.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
            r => r,
        }
    }
}

/// connect tries each address of `url` in turn, all within `deadline`.
fn connect(url: &Url, deadline: Instant) -> Result<TcpStream, HttpError> {
    let addrs: Vec<SocketAddr> = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| HttpError::Connect(format!("cannot resolve {}: {e}", url.host)))?
        .collect();
    let mut last = format!("{} has no address", url.host);
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HttpError::Timeout);
        }
        match TcpStream::connect_timeout(&addr, left) {
            Ok(tcp) => return Ok(tcp),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                last = format!("cannot connect to {addr}: timed out")
            }
            Err(e) => last = format!("cannot connect to {addr}: {e}"),
        }
    }
    Err(HttpError::Connect(last))
}

/// post_form POSTs the form to `url` over TLS with `tls` (from crate::tls::client_config)
/// and returns the response. SNI is url.host; an IP literal is verified against the
/// certificate's IP addresses and sent without SNI (rustls' ServerName::IpAddress). Everything
/// after name resolution (connect, handshake, write, read) finishes within `timeout`: each
/// socket call gets only the time left. Answers over `cap` bytes are refused.
pub fn post_form(
    url: &Url,
    pairs: &[(&str, &str)],
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
    cap: usize,
) -> Result<Response, HttpError> {
    // Clamped so a silly timeout cannot overflow Instant.
    let deadline = Instant::now() + timeout.min(Duration::from_secs(24 * 3600));
    let tcp = connect(url, deadline)?;
    let _ = tcp.set_nodelay(true); // one small request, then wait: no Nagle delay
    let name = ServerName::try_from(url.host.clone())
        .map_err(|_| HttpError::Tls(format!("{:?} is not a valid server name", url.host)))?;
    let mut conn = ClientConnection::new(tls, name).map_err(|e| HttpError::Tls(e.to_string()))?;
    let mut sock = DeadlineSocket::new(tcp, deadline);
    crate::tls::handshake(&mut conn, &mut sock).map_err(|e| match io_error(e) {
        HttpError::Io(m) => HttpError::Tls(m),
        other => other,
    })?;
    let mut stream = StreamOwned::new(conn, sock);
    let request = post_request(url, &form_encode(pairs));
    stream
        .write_all(&request)
        .and_then(|()| stream.flush())
        .map_err(io_error)?;
    read_response(&mut EofIsEnd(&mut stream), cap)
}

/// read_test_request reads one request from a test server's stream: its head (up to and
/// including the blank line) and the body its Content-Length announces; None when the stream
/// ends before the head does. For the scripted servers of the tests here and in token.rs.
#[cfg(test)]
pub(crate) fn read_test_request(s: &mut impl Read) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).unwrap_or(0) == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let len: usize = String::from_utf8_lossy(&head)
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    s.read_exact(&mut body).ok()?;
    Some((head, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A Read that hands out the data in pieces of the given sizes (the last size repeats).
    struct Pieces<'a> {
        data: &'a [u8],
        sizes: Vec<usize>,
        i: usize,
    }

    impl Read for Pieces<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let size = self.sizes[self.i.min(self.sizes.len() - 1)];
            self.i += 1;
            let n = size.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn read_with(data: &[u8], sizes: Vec<usize>, cap: usize) -> Result<Response, HttpError> {
        read_response(&mut Pieces { data, sizes, i: 0 }, cap)
    }

    /// Reads `data` whole, one byte at a time, and split in two at every boundary (every
    /// 97th for long inputs); all must agree. Returns the whole read's result.
    fn read_all_ways(data: &[u8], cap: usize) -> Result<Response, HttpError> {
        let whole = read_response(&mut Cursor::new(data), cap);
        assert_eq!(read_with(data, vec![1], cap), whole, "one byte at a time");
        let step = if data.len() > 600 { 97 } else { 1 };
        for k in (1..data.len()).step_by(step) {
            assert_eq!(
                read_with(data, vec![k, usize::MAX], cap),
                whole,
                "split at {k}"
            );
        }
        whole
    }

    const CAP: usize = 4096;

    /// (input, status, body, a header and its value to check)
    type ReadCase = (
        &'static [u8],
        u16,
        &'static [u8],
        Option<(&'static str, &'static str)>,
    );

    #[test]
    fn responses_read() {
        let cases: Vec<ReadCase> = vec![
            (
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
                200,
                b"{}",
                Some(("content-type", "application/json")),
            ),
            // Bytes after a Content-Length body are not ours.
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}garbage", 200, b"{}", None),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 200, b"", None),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length:   2  \r\n\r\nok",
                200,
                b"ok",
                Some(("Content-Length", "2")),
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;name=val\r\nWiki\r\n5 ; x=\"y\"\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nExpires: never\r\nX-Trailer: y\r\n\r\nafter",
                200,
                b"Wikipedia in\r\n\r\nchunks.",
                None,
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\n\r\na\r\n0123456789\r\nA\r\nabcdefghij\r\n000\r\n\r\n",
                200,
                b"0123456789abcdefghij",
                None,
            ),
            (b"HTTP/1.0 200 OK\r\n\r\nhello", 200, b"hello", None),
            (b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n{\"error\":\"invalid_grant\"}", 400, b"{\"error\":\"invalid_grant\"}", None),
            (
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                200,
                b"ok",
                None,
            ),
            (
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                200,
                b"ok",
                None,
            ),
            // Bare LF line ends are tolerated.
            (b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", 200, b"ok", None),
            (b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n2\nok\n0\n\n", 200, b"ok", None),
            (b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n", 204, b"", None),
            (
                b"HTTP/1.1 302 Found\r\nLocation: https://evil.example/\r\nContent-Length: 0\r\n\r\n",
                302,
                b"",
                Some(("location", "https://evil.example/")),
            ),
            (b"HTTP/1.1 200\r\nContent-Length: 1\r\n\r\nx", 200, b"x", None),
            (b"HTTP/1.1 200 \r\nContent-Length: 1\r\n\r\nx", 200, b"x", None),
            (
                b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n \t b\r\nContent-Length: 1\r\n\r\nx",
                200,
                b"x",
                Some(("x-folded", "a b")),
            ),
            (b"HTTP/1.1 200 OK\r\nX-Empty:\r\nContent-Length: 1\r\n\r\nx", 200, b"x", Some(("x-empty", ""))),
            (b"HTTP/1.1 200 OK\r\nX-Latin: caf\xe9\r\n\r\n", 200, b"", Some(("x-latin", "caf\u{fffd}"))),
        ];
        for (input, status, body, header) in cases {
            let name = String::from_utf8_lossy(input);
            let r = read_all_ways(input, CAP).unwrap_or_else(|e| panic!("{name:?}: {e}"));
            assert_eq!(r.status, status, "{name:?}");
            assert_eq!(r.body, body, "{name:?}");
            if let Some((h, v)) = header {
                assert_eq!(r.header(h), Some(v), "{name:?}");
            }
            assert_eq!(r.is_redirect(), status == 302);
        }
    }

    #[test]
    fn responses_refused() {
        let big_header = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        let many_headers = format!("HTTP/1.1 200 OK\r\n{}\r\n", "X: y\r\n".repeat(101));
        let many_interim = "HTTP/1.1 100 Continue\r\n\r\n".repeat(MAX_HEAD / 25 + 1);
        let long_ext = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;{}\r\nx\r\n0\r\n\r\n",
            "e".repeat(2000)
        );
        let close_big = format!("HTTP/1.1 200 OK\r\n\r\n{}", "x".repeat(CAP + 1));
        let chunked_big = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n{0}\r\n800\r\n{0}\r\n1\r\nx\r\n0\r\n\r\n",
            "y".repeat(0x800)
        );
        let malformed = HttpError::Malformed;
        let cases: Vec<(&[u8], HttpError)> = vec![
            (b"", HttpError::Closed),
            (b"HTTP/1.1 200 OK\r\nContent-Le", HttpError::Closed),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", HttpError::Closed),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", HttpError::Closed),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n", HttpError::Closed),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n", HttpError::Closed),
            (b"HTTP/1.1 100 Continue\r\n\r\n", HttpError::Closed),
            (b"HTTP/2 200\r\n\r\n", malformed("invalid status line")),
            (b"HTTP/1.1 20 OK\r\n\r\n", malformed("invalid status line")),
            (b"HTTP/1.1 2000 OK\r\n\r\n", malformed("invalid status line")),
            (b"HTTP/1.1  200 OK\r\n\r\n", malformed("invalid status line")),
            (b"http/1.1 200 OK\r\n\r\n", malformed("invalid status line")),
            (b"ICY 200 OK\r\n\r\n", malformed("invalid status line")),
            (b"HTTP/1.1 200 O\rK\r\n\r\n", malformed("invalid status line")),
            (b"\r\nHTTP/1.1 200 OK\r\n\r\n", malformed("invalid status line")),
            (b"HTTP/1.1 600 Huh\r\n\r\n", malformed("status code out of range")),
            (b"HTTP/1.1 099 Huh\r\n\r\n", malformed("status code out of range")),
            (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", malformed("unexpected 101 switching protocols")),
            (b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n", malformed("invalid header name")),
            (b"HTTP/1.1 200 OK\r\nName : x\r\n\r\n", malformed("invalid header name")),
            (b"HTTP/1.1 200 OK\r\n: x\r\n\r\n", malformed("invalid header name")),
            (b"HTTP/1.1 200 OK\r\nNoColon\r\n\r\n", malformed("header line without ':'")),
            (b"HTTP/1.1 200 OK\r\nX: a\0b\r\n\r\n", malformed("control character in header value")),
            (b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n", malformed("control character in header value")),
            (b"HTTP/1.1 200 OK\r\n folded\r\n\r\n", malformed("folded line before any header")),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc", malformed("duplicate content-length")),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nab", malformed("duplicate content-length")),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nab", malformed("invalid content-length")),
            (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", malformed("invalid content-length")),
            (b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nab", malformed("invalid content-length")),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n", malformed("invalid content-length")),
            (b"HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n", malformed("invalid content-length")),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n", malformed("both transfer-encoding and content-length")),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", malformed("unsupported transfer-encoding")),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", malformed("unsupported transfer-encoding")),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", malformed("unsupported transfer-encoding")),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding:\r\n\r\n", malformed("unsupported transfer-encoding")),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", malformed("invalid chunk size")),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n", malformed("invalid chunk size")),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n 4\r\nWiki\r\n", malformed("invalid chunk size")),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n", malformed("invalid chunk size")),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4 x\r\nWiki\r\n", malformed("invalid chunk size")),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWikiX\r\n0\r\n\r\n", malformed("missing CRLF after chunk data")),
            (long_ext.as_bytes(), malformed("chunk size line too long")),
            (big_header.as_bytes(), malformed("header section over 16 KiB")),
            (many_interim.as_bytes(), malformed("header section over 16 KiB")),
            (many_headers.as_bytes(), malformed("more than 100 header fields")),
            // Over the cap: announced, overflowing, and actual.
            (b"HTTP/1.1 200 OK\r\nContent-Length: 4097\r\n\r\n", HttpError::TooLarge(CAP)),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999999\r\n\r\n", HttpError::TooLarge(CAP)),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1001\r\n", HttpError::TooLarge(CAP)),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffffffff\r\n", HttpError::TooLarge(CAP)),
            (close_big.as_bytes(), HttpError::TooLarge(CAP)),
            (chunked_big.as_bytes(), HttpError::TooLarge(CAP)),
        ];
        for (input, want) in cases {
            let name = String::from_utf8_lossy(&input[..input.len().min(120)]).into_owned();
            assert_eq!(read_all_ways(input, CAP), Err(want), "{name:?}");
        }
    }

    #[test]
    fn body_at_the_cap_is_accepted_and_capacity_stays_within_it() {
        let cap = 1000;
        // Many one-byte chunks: Vec's doubling alone would allocate up to 1024.
        let mut chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..cap {
            chunked.extend_from_slice(b"1\r\nz\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        let close = format!("HTTP/1.1 200 OK\r\n\r\n{}", "z".repeat(cap));
        let length = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {cap}\r\n\r\n{}",
            "z".repeat(cap)
        );
        for input in [&chunked[..], close.as_bytes(), length.as_bytes()] {
            for sizes in [vec![1], vec![7], vec![usize::MAX]] {
                let r = read_with(input, sizes, cap).unwrap();
                assert_eq!(r.body, vec![b'z'; cap]);
                assert!(r.body.capacity() <= cap, "capacity {}", r.body.capacity());
            }
        }
    }

    #[test]
    fn read_errors_are_classified() {
        struct Failing(Vec<io::Error>);
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(self.0.pop().unwrap_or_else(|| io::Error::other("boom")))
            }
        }
        let cases: Vec<(io::ErrorKind, HttpError)> = vec![
            (io::ErrorKind::WouldBlock, HttpError::Timeout),
            (io::ErrorKind::TimedOut, HttpError::Timeout),
            (
                io::ErrorKind::ConnectionReset,
                HttpError::Io("reset".into()),
            ),
            // Interrupted is retried; the next error is the one reported.
            (io::ErrorKind::Interrupted, HttpError::Io("boom".into())),
        ];
        for (kind, want) in cases {
            let mut r = Failing(vec![io::Error::new(kind, "reset")]);
            assert_eq!(read_response(&mut r, CAP), Err(want), "{kind:?}");
        }
        let tls = io::Error::new(io::ErrorKind::InvalidData, rustls::Error::DecryptError);
        assert!(matches!(io_error(tls), HttpError::Tls(_)));
    }

    #[test]
    fn urls() {
        // (input, host, port, path, Host header)
        let ok: &[(&str, &str, u16, &str, &str)] = &[
            (
                "https://login.microsoftonline.com/common/oauth2/v2.0/token",
                "login.microsoftonline.com",
                443,
                "/common/oauth2/v2.0/token",
                "login.microsoftonline.com",
            ),
            (
                "https://oauth2.googleapis.com/token",
                "oauth2.googleapis.com",
                443,
                "/token",
                "oauth2.googleapis.com",
            ),
            (
                "HTTPS://Example.com",
                "Example.com",
                443,
                "/",
                "Example.com",
            ),
            (
                "https://example.com:8443/t?x=1&y=%20",
                "example.com",
                8443,
                "/t?x=1&y=%20",
                "example.com:8443",
            ),
            (
                "https://example.com?x=1",
                "example.com",
                443,
                "/?x=1",
                "example.com",
            ),
            (
                "https://example.com:443/",
                "example.com",
                443,
                "/",
                "example.com",
            ),
            ("https://127.0.0.1:9/", "127.0.0.1", 9, "/", "127.0.0.1:9"),
            (
                "https://[::1]:8443/token",
                "::1",
                8443,
                "/token",
                "[::1]:8443",
            ),
            (
                "https://[2001:db8::1]",
                "2001:db8::1",
                443,
                "/",
                "[2001:db8::1]",
            ),
            (
                "https://idp_internal.example/t",
                "idp_internal.example",
                443,
                "/t",
                "idp_internal.example",
            ),
        ];
        for (input, host, port, path, header) in ok {
            let u = parse_url(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(
                (u.host.as_str(), u.port, u.path.as_str()),
                (*host, *port, *path),
                "{input}"
            );
            assert_eq!(u.host_header(), *header);
        }
        // (input, part of the error)
        let bad: &[(&str, &str)] = &[
            ("http://example.com/", "use https://"),
            ("ftp://example.com/", "must start with https://"),
            ("example.com", "must start with https://"),
            ("", "must start with https://"),
            ("https://", "no host name"),
            ("https:///token", "no host name"),
            ("https://:443/", "no host name"),
            ("https://?x", "no host name"),
            ("https://user:pw@example.com/", "remove the user name"),
            ("https://example.com@evil.example/", "remove the user name"),
            ("https://example.com/t#frag", "remove the #fragment"),
            ("https://exa mple.com/", "contains ' '"),
            ("https://example.com/a b", "contains ' '"),
            ("https://example.com/\r\nX: y", "contains '\\r'"),
            ("https://example.com/\t", "contains '\\t'"),
            ("https://example.com/\u{7f}", "contains '\\u{7f}'"),
            ("https://ex\u{e4}mple.com/", "contains '\u{e4}'"),
            ("https://example.com:0/", "invalid port"),
            ("https://example.com:65536/", "invalid port"),
            ("https://example.com:/", "invalid port"),
            ("https://example.com:8x/", "invalid port"),
            ("https://example.com:+80/", "invalid port"),
            ("https://example.com:1:2/", "invalid port"),
            ("https://[::1/", "missing ']'"),
            ("https://[zz]/", "invalid IPv6 address"),
            ("https://[::1]x/", "unexpected"),
            ("https://::1/", "no host name"),
            ("https://exa%20mple.com/", "invalid host name"),
            ("https://a,b/", "invalid host name"),
        ];
        for (input, want) in bad {
            match parse_url(input) {
                Ok(u) => panic!("{input:?} accepted as {u:?}"),
                Err(e) => assert!(e.contains(want), "{input:?}: {e}"),
            }
        }
    }

    #[test]
    fn form_encoding() {
        let pairs = [
            ("grant_type", "refresh_token"),
            ("refresh_token", "0.A-b_c~d.e"),
            ("scope", "https://mail.google.com/ offline_access"),
            ("x", "\u{e9}&=+%?#"),
        ];
        assert_eq!(
            form_encode(&pairs),
            "grant_type=refresh_token&refresh_token=0.A-b_c~d.e\
             &scope=https%3A%2F%2Fmail.google.com%2F%20offline_access&x=%C3%A9%26%3D%2B%25%3F%23"
        );
        assert_eq!(form_encode(&[]), "");
        // Round trips through the decoder, whatever the bytes.
        let tables: &[&[(&str, &str)]] = &[
            &pairs,
            &[("", "")],
            &[("a", ""), ("", "b")],
            &[("k", "\u{1f600} \u{4e2d}\u{6587} \r\n\t\0")],
            &[
                ("code", "M.C507_BAY.2.U.1234-abcd!*'()"),
                ("state", "a+b c"),
            ],
            &[("%", "%%"), ("+", "++"), ("&", "=")],
        ];
        for t in tables {
            let back = query_pairs(&form_encode(t));
            let want: Vec<(String, String)> = t
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(back, want, "{t:?}");
        }
    }

    #[test]
    fn query_decoding() {
        let cases: &[(&str, &[(&str, &str)])] = &[
            ("code=abc&state=xyz", &[("code", "abc"), ("state", "xyz")]),
            ("?code=a%2Fb+c", &[("code", "a/b c")]),
            (
                "a=%zz&b=%4&c=%&d=%4g",
                &[("a", "%zz"), ("b", "%4"), ("c", "%"), ("d", "%4g")],
            ),
            ("a&b=&=c&&", &[("a", ""), ("b", ""), ("", "c")]),
            ("x=%C3%A9%e2%82%ac", &[("x", "\u{e9}\u{20ac}")]),
            ("x=%FF", &[("x", "\u{fffd}")]),
            ("a=b=c", &[("a", "b=c")]),
            ("", &[]),
            ("?", &[]),
            (
                "code=0.AXoA%2Fq&session_state=5f1e-7&state=abc123",
                &[
                    ("code", "0.AXoA/q"),
                    ("session_state", "5f1e-7"),
                    ("state", "abc123"),
                ],
            ),
        ];
        for (q, want) in cases {
            let want: Vec<(String, String)> = want
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(query_pairs(q), want, "{q:?}");
        }
    }

    #[test]
    fn request_bytes() {
        let url = parse_url("https://[::1]:8443/oauth2/token?tenant=x").unwrap();
        let body = form_encode(&[("grant_type", "refresh_token"), ("refresh_token", "r t")]);
        let req = post_request(&url, &body);
        let want = format!(
            "POST /oauth2/token?tenant=x HTTP/1.1\r\n\
             Host: [::1]:8443\r\n\
             User-Agent: picorelay/{}\r\n\
             Accept: application/json\r\n\
             Content-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: 44\r\n\
             Connection: close\r\n\
             \r\n\
             grant_type=refresh_token&refresh_token=r%20t",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(String::from_utf8(req).unwrap(), want);
    }

    #[test]
    fn error_messages() {
        let cases = [
            (
                HttpError::TooLarge(65536),
                "token endpoint answer over 65536 bytes",
            ),
            (
                HttpError::Closed,
                "token endpoint closed the connection early",
            ),
            (
                HttpError::Timeout,
                "token endpoint did not answer in time; try again later",
            ),
            (
                HttpError::Malformed("invalid status line"),
                "token endpoint sent a malformed HTTP answer: invalid status line",
            ),
        ];
        for (e, want) in cases {
            assert_eq!(e.to_string(), want);
        }
    }

    mod transport {
        use super::super::*;
        use std::net::TcpListener;
        use std::path::PathBuf;
        use std::sync::OnceLock;

        fn certs() -> &'static PathBuf {
            static DIR: OnceLock<PathBuf> = OnceLock::new();
            DIR.get_or_init(|| crate::tls::tests::gen_certs("oauth-http"))
        }

        /// How the test server answers after reading the request.
        enum Answer {
            /// Send these bytes, then close_notify (true) or just drop TCP (false).
            Bytes(&'static [u8], bool),
            /// Send these bytes one every 100 ms.
            Trickle(&'static [u8]),
        }

        /// A one-connection TLS server on 127.0.0.1:0; returns its port and the request it got.
        fn serve(answer: Answer) -> (u16, std::thread::JoinHandle<Vec<u8>>) {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let cfg = crate::tls::server_config(&certs().join("ec.pem"), &certs().join("ec.key"))
                .unwrap();
            let t = std::thread::spawn(move || {
                let (tcp, _) = listener.accept().unwrap();
                tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let conn = rustls::ServerConnection::new(cfg).unwrap();
                let mut s = StreamOwned::new(conn, tcp);
                let req = match read_test_request(&mut s) {
                    Some((mut head, body)) => {
                        head.extend_from_slice(&body);
                        head
                    }
                    None => return Vec::new(),
                };
                match answer {
                    Answer::Bytes(b, notify) => {
                        s.write_all(b).unwrap();
                        if notify {
                            s.conn.send_close_notify();
                        }
                        s.flush().unwrap();
                    }
                    Answer::Trickle(b) => {
                        for c in b {
                            if s.write_all(&[*c]).and_then(|()| s.flush()).is_err() {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
                req
            });
            (port, t)
        }

        fn client() -> Arc<rustls::ClientConfig> {
            crate::tls::client_config(true, Some(&certs().join("ca.pem")), None).unwrap()
        }

        /// (answer, URL host, expected status and body)
        type PostCase = (
            Answer,
            &'static str,
            Result<(u16, &'static [u8]), HttpError>,
        );

        #[test]
        fn post_form_over_tls() {
            let cases: Vec<PostCase> = vec![
                (
                    Answer::Bytes(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\n{\"access_token\":",
                        true,
                    ),
                    "127.0.0.1",
                    Ok((200, b"{\"access_token\":")),
                ),
                // Close-delimited, TCP closed without close_notify: the body is accepted.
                (
                    Answer::Bytes(b"HTTP/1.1 200 OK\r\n\r\n{}", false),
                    "localhost",
                    Ok((200, b"{}")),
                ),
                // Content-Length not reached before the close: refused.
                (
                    Answer::Bytes(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}", false),
                    "127.0.0.1",
                    Err(HttpError::Closed),
                ),
                (
                    Answer::Bytes(b"HTTP/1.1 200 OK\r\nContent-Length: 99999\r\n\r\n", true),
                    "127.0.0.1",
                    Err(HttpError::TooLarge(4096)),
                ),
                // One byte every 100 ms against a 700 ms budget: the whole exchange times out.
                (
                    Answer::Trickle(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
                    "127.0.0.1",
                    Err(HttpError::Timeout),
                ),
            ];
            for (answer, host, want) in cases {
                let (port, server) = serve(answer);
                let url = parse_url(&format!("https://{host}:{port}/token?x=1")).unwrap();
                let timeout = Duration::from_millis(if want == Err(HttpError::Timeout) {
                    700
                } else {
                    10_000
                });
                let started = Instant::now();
                let got = post_form(
                    &url,
                    &[("grant_type", "refresh_token"), ("refresh_token", "r/t")],
                    client(),
                    timeout,
                    4096,
                );
                assert!(
                    started.elapsed() < timeout + Duration::from_millis(300),
                    "took {:?}",
                    started.elapsed()
                );
                let got = got.map(|r| (r.status, r.body));
                let want = want.map(|(s, b)| (s, b.to_vec()));
                assert_eq!(got, want, "{host}");
                let req = server.join().unwrap();
                let req = String::from_utf8(req).unwrap();
                assert!(req.starts_with("POST /token?x=1 HTTP/1.1\r\n"), "{req}");
                assert!(
                    req.contains(&format!("\r\nHost: {host}:{port}\r\n")),
                    "{req}"
                );
                assert!(
                    req.ends_with("\r\n\r\ngrant_type=refresh_token&refresh_token=r%2Ft"),
                    "{req}"
                );
            }
        }

        #[test]
        fn untrusted_certificate_is_a_tls_error() {
            let (port, server) = serve(Answer::Bytes(b"HTTP/1.1 200 OK\r\n\r\n", true));
            let url = parse_url(&format!("https://127.0.0.1:{port}/")).unwrap();
            // Web PKI roots do not include the test CA.
            let web = crate::tls::client_config(true, None, None).unwrap();
            match post_form(&url, &[], web, Duration::from_secs(10), 4096) {
                Err(HttpError::Tls(m)) => assert!(m.contains("certificate"), "{m}"),
                other => panic!("{other:?}"),
            }
            let _ = server.join();
        }

        #[test]
        fn refused_connection_is_a_connect_error() {
            let port = {
                let l = TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap().port()
            };
            let url = parse_url(&format!("https://127.0.0.1:{port}/")).unwrap();
            match post_form(&url, &[], client(), Duration::from_secs(5), 4096) {
                Err(HttpError::Connect(m)) => {
                    assert!(m.contains("cannot connect to 127.0.0.1"), "{m}")
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
