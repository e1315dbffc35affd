//! `picorelay status`: the relay answers on a unix socket in the spool folder
//! with a snapshot of its state; the command connects and prints it.
//!
//! A socket rather than a file rewritten every few seconds: nothing is written
//! to disk while the relay idles (flash wear on routers, NAS disks that should
//! spin down), the answer is always current, and a relay that is gone or hung
//! simply does not answer. Only those who may enter the spool folder can connect.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::delivery::{PacingView, StageError, StatusSnapshot};
use crate::message;
use crate::oauth::json::write_string;
use crate::queue_cmd::human;
use crate::server::PoolFigures;
use crate::sys;

/// Name of the status socket in the spool folder.
pub const STATUS_FILE: &str = "status.sock";
/// First line of the answer: format and version.
const MAGIC: &str = "picorelay-status 1";
/// A relay that does not answer within this is hung (its main loop wakes every 250 ms).
pub const ANSWER_WITHIN: Duration = Duration::from_secs(10);
/// The answer is tiny; anything bigger is not ours.
const MAX_FILE: u64 = 64 * 1024;

/// Exit codes of `status`, as LSB init scripts use them.
pub const EXIT_RUNNING: u8 = 0;
/// The relay is not running (no file, dead pid or stale file).
pub const EXIT_NOT_RUNNING: u8 = 3;
/// Cannot tell: config or status file unreadable.
pub const EXIT_UNKNOWN: u8 = 4;

/// The stages a last error is kept for, in display order.
pub const STAGES: [&str; 5] = ["accept", "connect", "tls", "auth", "send"];

/// Status is what the relay publishes: one snapshot of its state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// Process id of the relay.
    pub pid: u32,
    /// When it started (unix seconds).
    pub started: u64,
    /// When this snapshot was written (unix seconds).
    pub written: u64,
    /// Messages in the queue.
    pub queued: usize,
    /// Arrival of the oldest queued message.
    pub oldest_arrival: Option<u64>,
    /// Last time the smarthost accepted a message.
    pub last_success: Option<u64>,
    /// No smarthost configured: messages stay queued.
    pub hold: bool,
    /// Delivery paused until then (unix seconds).
    pub paused_until: Option<u64>,
    /// Why delivery is paused.
    pub pause_reason: Option<String>,
    /// Last error per stage, indexed like STAGES.
    pub errors: [Option<StageError>; 5],
    /// The worker pool: busy, waiting, evictions and refusals.
    pub pool: PoolFigures,
    /// The pacing budget, arrivals and queue growth.
    pub pacing: PacingView,
}

/// What can go wrong reading the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusError {
    /// The relay is not running (or not updating its file): why.
    NotRunning(String),
    /// The file exists but cannot be read (permissions).
    Unreadable(String),
    /// The file is not a status file of this version.
    Corrupt(String),
}

impl fmt::Display for StatusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatusError::NotRunning(why) => write!(f, "picorelay is not running ({why})"),
            StatusError::Unreadable(why) => write!(f, "cannot tell whether picorelay runs: {why}"),
            StatusError::Corrupt(why) => write!(f, "unreadable status file: {why}"),
        }
    }
}

impl Status {
    /// Status::from_snapshot combines the runner's snapshot and the server's last accept error.
    pub fn from_snapshot(
        pid: u32,
        started: u64,
        now: u64,
        snap: &StatusSnapshot,
        accept: Option<StageError>,
        pool: PoolFigures,
    ) -> Status {
        Status {
            pool,
            pacing: snap.pacing.clone(),
            pid,
            started,
            written: now,
            queued: snap.queued,
            oldest_arrival: snap.oldest_arrival,
            last_success: snap.last_success,
            hold: snap.hold,
            paused_until: snap.paused_until.filter(|&u| u > now),
            pause_reason: snap
                .paused_until
                .filter(|&u| u > now)
                .and(snap.pause_reason.clone()),
            errors: [
                accept,
                snap.connect.clone(),
                snap.tls.clone(),
                snap.auth.clone(),
                snap.send.clone(),
            ],
        }
    }

    /// encode writes the file format: a magic line, then `key: value` lines whose
    /// values are escaped so that none can hold a line break.
    pub fn encode(&self) -> String {
        let mut out = format!(
            "{MAGIC}\npid: {}\nstarted: {}\nwritten: {}\nqueued: {}\nhold: {}\n",
            self.pid,
            self.started,
            self.written,
            self.queued,
            u8::from(self.hold)
        );
        let opt = |out: &mut String, k: &str, v: Option<u64>| {
            if let Some(v) = v {
                out.push_str(&format!("{k}: {v}\n"));
            }
        };
        let p = &self.pool;
        out.push_str(&format!(
            "pool: {} {} {} {} {}\n",
            p.workers, p.busy, p.waiting, p.evictions, p.refusals
        ));
        let g = &self.pacing;
        let o = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        out.push_str(&format!(
            "pacing: {} {} {} {} {} {}\n",
            g.rate.as_deref().unwrap_or("-"),
            o(g.budget_left),
            o(g.refills_at),
            o(g.next_slot),
            o(g.recipients_left),
            g.waiting
        ));
        out.push_str(&format!(
            "arrivals: {} {} {}\n",
            g.arrivals_minute, g.arrivals_hour, g.growth_per_minute
        ));
        if let Some(t) = g.quota_since {
            out.push_str(&format!("quota_since: {t}\n"));
        }
        opt(&mut out, "oldest_arrival", self.oldest_arrival);
        opt(&mut out, "last_success", self.last_success);
        opt(&mut out, "paused_until", self.paused_until);
        if let Some(r) = &self.pause_reason {
            out.push_str(&format!("pause_reason: {}\n", escape(r)));
        }
        for (name, e) in STAGES.iter().zip(&self.errors) {
            if let Some(e) = e {
                out.push_str(&format!(
                    "error.{name}: {} {}\n",
                    e.time,
                    escape(&e.message)
                ));
            }
        }
        out
    }

    /// parse reads what `encode` wrote. Unknown keys are skipped (a newer relay may
    /// add some); a wrong magic line or a bad number is an error. Never panics.
    pub fn parse(text: &str) -> Result<Status, StatusError> {
        let mut lines = text.lines();
        if lines.next() != Some(MAGIC) {
            return Err(StatusError::Corrupt(format!("first line is not {MAGIC:?}")));
        }
        let mut s = Status::default();
        let (mut have_pid, mut have_written) = (false, false);
        for line in lines {
            let Some((key, value)) = line.split_once(": ") else {
                return Err(StatusError::Corrupt(format!("bad line {line:?}")));
            };
            let num = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| StatusError::Corrupt(format!("{key}: not a number: {v:?}")))
            };
            match key {
                "pid" => {
                    s.pid = u32::try_from(num(value)?)
                        .map_err(|_| StatusError::Corrupt(format!("pid out of range: {value}")))?;
                    have_pid = true;
                }
                "started" => s.started = num(value)?,
                "written" => {
                    s.written = num(value)?;
                    have_written = true;
                }
                "queued" => s.queued = usize::try_from(num(value)?).unwrap_or(usize::MAX),
                "hold" => s.hold = value == "1",
                "oldest_arrival" => s.oldest_arrival = Some(num(value)?),
                "last_success" => s.last_success = Some(num(value)?),
                "paused_until" => s.paused_until = Some(num(value)?),
                "pause_reason" => s.pause_reason = Some(unescape(value)),
                "pacing" => {
                    let w: Vec<&str> = value.split(' ').collect();
                    let [rate, budget, refills, next, rcpts, waiting] = w[..] else {
                        return Err(StatusError::Corrupt(format!("pacing: {value:?}")));
                    };
                    let o = |v: &str| if v == "-" { Ok(None) } else { num(v).map(Some) };
                    s.pacing.rate = (rate != "-").then(|| rate.to_string());
                    s.pacing.budget_left = o(budget)?;
                    s.pacing.refills_at = o(refills)?;
                    s.pacing.next_slot = o(next)?;
                    s.pacing.recipients_left = o(rcpts)?;
                    s.pacing.waiting = usize::try_from(num(waiting)?).unwrap_or(usize::MAX);
                }
                "arrivals" => {
                    let w: Vec<&str> = value.split(' ').collect();
                    let [minute, hour, growth] = w[..] else {
                        return Err(StatusError::Corrupt(format!("arrivals: {value:?}")));
                    };
                    s.pacing.arrivals_minute = num(minute)?;
                    s.pacing.arrivals_hour = num(hour)?;
                    s.pacing.growth_per_minute = growth
                        .parse()
                        .map_err(|_| StatusError::Corrupt(format!("arrivals: {value:?}")))?;
                }
                "quota_since" => s.pacing.quota_since = Some(num(value)?),
                "pool" => {
                    let n: Vec<u64> = value.split(' ').map(num).collect::<Result<_, _>>()?;
                    let [workers, busy, waiting, evictions, refusals] = n[..] else {
                        return Err(StatusError::Corrupt(format!("pool: {value:?}")));
                    };
                    let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
                    s.pool = PoolFigures {
                        workers: size(workers),
                        busy: size(busy),
                        waiting: size(waiting),
                        evictions,
                        refusals,
                    };
                }
                _ => {
                    let Some(stage) = key.strip_prefix("error.") else {
                        continue;
                    };
                    let Some(i) = STAGES.iter().position(|&n| n == stage) else {
                        continue;
                    };
                    let (time, message) = value.split_once(' ').unwrap_or((value, ""));
                    s.errors[i] = Some(StageError {
                        time: num(time)?,
                        message: unescape(message),
                    });
                }
            }
        }
        if !have_pid || !have_written {
            return Err(StatusError::Corrupt("pid or written missing".into()));
        }
        Ok(s)
    }
}

/// escape percent-encodes %, and every control character (CR and LF included).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '%' || c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// unescape undoes `escape`; malformed escapes are kept as written.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Publisher answers `status` requests from the relay's main loop and tells
/// systemd the queue depth (STATUS=).
pub struct Publisher {
    path: PathBuf,
    listener: Option<UnixListener>,
    pid: u32,
    started: u64,
    last_systemd: String,
}

impl Publisher {
    /// Publisher::new listens on the status socket in `spool_dir` (a socket left
    /// by a crash is replaced); without it `status` cannot reach the relay, which
    /// is logged but not fatal.
    pub fn new(spool_dir: &Path) -> Publisher {
        let path = spool_dir.join(STATUS_FILE);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .and_then(|l| {
                l.set_nonblocking(true)?;
                // Group members of the spool may ask; the folder (0750) keeps others out.
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))?;
                Ok(l)
            })
            .map_err(|e| {
                log::warn!(
                    "cannot listen on {}: {e}; `status` will not reach the relay",
                    path.display()
                )
            })
            .ok();
        Publisher {
            path,
            listener,
            pid: std::process::id(),
            started: message::now(),
            last_systemd: String::new(),
        }
    }

    /// fd is the socket's descriptor for the main loop's poll, when listening.
    pub fn fd(&self) -> Option<std::os::fd::RawFd> {
        self.listener.as_ref().map(sys::fd_of)
    }

    /// publish sends STATUS= to systemd when its text changed and answers every
    /// waiting `status` request with this snapshot.
    pub fn publish(
        &mut self,
        snap: &StatusSnapshot,
        accept: Option<StageError>,
        pool: PoolFigures,
    ) -> io::Result<()> {
        let status =
            Status::from_snapshot(self.pid, self.started, message::now(), snap, accept, pool);
        let text = systemd_status(&status);
        if text != self.last_systemd {
            sys::sd_notify(&format!("STATUS={text}"));
            self.last_systemd = text;
        }
        let Some(listener) = &self.listener else {
            return Ok(());
        };
        let encoded = status.encode();
        loop {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    // The answer fits the socket buffer; a client that does not read
                    // cannot hold the main loop beyond this.
                    let _ = conn.set_write_timeout(Some(Duration::from_millis(200)));
                    let _ = conn.write_all(encoded.as_bytes());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// remove deletes the socket at shutdown, so `status` says "not running" at once.
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// systemd_status is the one-line STATUS= text: queue depth and delivery state
/// (no ages, so it changes only when something happens).
fn systemd_status(s: &Status) -> String {
    let mut t = format!("{} message(s) queued", s.queued);
    if s.hold {
        t.push_str("; hold mode (no smarthost)");
    } else if let Some(until) = s.paused_until {
        t.push_str(&format!(
            "; delivery paused until {}",
            message::rfc5322_date(until)
        ));
        // `systemctl status` is where many look first: say why, and what to do when a person
        // must act (an OAuth sign-in, a refused password), within one short line.
        if let Some(reason) = s.pause_reason.as_deref() {
            // A newline would end the STATUS= assignment (sd_notify is line-based).
            let mut short: String = reason
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .take(SYSTEMD_REASON)
                .collect();
            if reason.chars().count() > SYSTEMD_REASON {
                short.push('…');
            }
            t.push_str(&format!(": {short}"));
        }
    }
    t
}

/// Longest pause reason shown in the STATUS= line.
const SYSTEMD_REASON: usize = 240;

/// read asks the relay using `spool_dir` for its status over the socket.
pub fn read(spool_dir: &Path) -> Result<Status, StatusError> {
    let path = spool_dir.join(STATUS_FILE);
    let mut conn = match UnixStream::connect(&path) {
        Ok(c) => c,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(StatusError::NotRunning(format!(
                "nothing answers on {}",
                path.display()
            )))
        }
        Err(e) => {
            return Err(StatusError::Unreadable(format!(
                "cannot connect to {}: {e}",
                path.display()
            )))
        }
    };
    let _ = conn.set_read_timeout(Some(ANSWER_WITHIN));
    let mut text = String::new();
    match (&mut conn).take(MAX_FILE).read_to_string(&mut text) {
        Ok(_) => {}
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            return Err(StatusError::NotRunning(format!(
                "the relay did not answer on {} within {}s; it may be hung",
                path.display(),
                ANSWER_WITHIN.as_secs()
            )))
        }
        Err(e) => {
            return Err(StatusError::Unreadable(format!(
                "reading {}: {e}",
                path.display()
            )))
        }
    }
    let s = Status::parse(&text)?;
    if !sys::pid_alive(s.pid as i32) {
        return Err(StatusError::NotRunning(format!(
            "process {} has exited",
            s.pid
        )));
    }
    Ok(s)
}

/// run is `picorelay status [--json]`: exit 0 running (prints the summary),
/// 3 not running, 4 cannot tell.
pub fn run(config: &Path, json: bool) -> u8 {
    let Some(cfg) = crate::serve::load_spool_config(config) else {
        return EXIT_UNKNOWN;
    };
    let now = message::now();
    match read(&cfg.queue.dir) {
        Ok(s) => {
            if json {
                println!("{}", to_json(&s, now));
            } else {
                print!("{}", to_text(&s, now));
            }
            EXIT_RUNNING
        }
        Err(e) => {
            let code = match e {
                StatusError::NotRunning(_) => EXIT_NOT_RUNNING,
                _ => EXIT_UNKNOWN,
            };
            if json {
                let mut o = JsonObject::new();
                o.bool("running", false);
                o.str("error", &e.to_string());
                println!("{}", o.finish());
            } else {
                println!("{e}");
            }
            code
        }
    }
}

/// ago says how long before `now` `t` was: "5m ago".
fn ago(t: u64, now: u64) -> String {
    format!("{} ago", human(now.saturating_sub(t)))
}

/// to_text is the human summary.
pub fn to_text(s: &Status, now: u64) -> String {
    let mut out = format!(
        "picorelay is running: pid {}, up {} (since {})\n",
        s.pid,
        human(now.saturating_sub(s.started)),
        message::rfc5322_date(s.started)
    );
    let oldest = s
        .oldest_arrival
        .filter(|_| s.queued > 0)
        .map(|a| format!(", oldest {} old", human(now.saturating_sub(a))))
        .unwrap_or_default();
    out.push_str(&format!(
        "queue:          {} message(s){oldest}\n",
        s.queued
    ));
    out.push_str(&format!(
        "last delivery:  {}\n",
        s.last_success
            .map(|t| ago(t, now))
            .unwrap_or_else(|| "none since start".into())
    ));
    let delivery = if s.hold {
        "on hold: no smarthost configured, messages stay queued".to_string()
    } else if let Some(until) = s.paused_until {
        format!(
            "paused for {} more (until {}): {}",
            human(until.saturating_sub(now)),
            message::rfc5322_date(until),
            s.pause_reason.as_deref().unwrap_or("-")
        )
    } else {
        "active".to_string()
    };
    out.push_str(&format!("delivery:       {delivery}\n"));
    let p = &s.pool;
    out.push_str(&format!(
        "pool:           {}/{} workers busy, {} waiting; {} eviction(s), {} refusal(s) since start\n",
        p.busy, p.workers, p.waiting, p.evictions, p.refusals
    ));
    let g = &s.pacing;
    out.push_str(&format!(
        "arrivals:       {} in the last minute, {} in the last hour; queue {} a minute\n",
        g.arrivals_minute,
        g.arrivals_hour,
        match g.growth_per_minute {
            0 => "steady".to_string(),
            n if n > 0 => format!("growing by {n}"),
            n => format!("shrinking by {}", -n),
        }
    ));
    if g.rate.is_some() || g.recipients_left.is_some() {
        let mut parts = Vec::new();
        if let Some(r) = &g.rate {
            parts.push(format!(
                "rate {r}, {} left{}",
                g.budget_left.unwrap_or(0),
                g.refills_at
                    .map(|t| format!(" (refills in {})", human(t.saturating_sub(now))))
                    .unwrap_or_default()
            ));
        }
        if let Some(n) = g.recipients_left {
            parts.push(format!("{n} recipient(s) left today"));
        }
        if g.waiting > 0 {
            parts.push(format!("{} message(s) waiting for it", g.waiting));
        }
        out.push_str(&format!("pacing:         {}\n", parts.join("; ")));
    }
    if let Some(t) = g.quota_since {
        out.push_str(&format!(
            "quota:          the smarthost's daily quota has held the queue for {}{}\n",
            human(now.saturating_sub(t)),
            if now.saturating_sub(t) > 86_400 {
                " (more than a day: messages bounce only when their lifetime runs out)"
            } else {
                ""
            }
        ));
    }
    out.push_str("last errors:\n");
    for (name, e) in STAGES.iter().zip(&s.errors) {
        match e {
            Some(e) => out.push_str(&format!(
                "  {name:<8} {}: {}\n",
                ago(e.time, now),
                e.message
            )),
            None => out.push_str(&format!("  {name:<8} none\n")),
        }
    }
    out
}

/// to_json is the machine-readable form; times are unix seconds, ages seconds,
/// and null where there is nothing to show.
pub fn to_json(s: &Status, now: u64) -> String {
    let mut o = JsonObject::new();
    o.bool("running", true);
    o.num("pid", u64::from(s.pid));
    o.num("started", s.started);
    o.num("uptime", now.saturating_sub(s.started));
    o.num("updated", s.written);
    let mut q = JsonObject::new();
    q.num("messages", s.queued as u64);
    q.opt_num(
        "oldest_age",
        s.oldest_arrival
            .filter(|_| s.queued > 0)
            .map(|a| now.saturating_sub(a)),
    );
    o.raw("queue", &q.finish());
    o.opt_num("last_delivery", s.last_success);
    let mut d = JsonObject::new();
    d.bool("hold", s.hold);
    d.bool("paused", s.paused_until.is_some());
    d.opt_num("paused_until", s.paused_until);
    match &s.pause_reason {
        Some(r) => d.str("pause_reason", r),
        None => d.raw("pause_reason", "null"),
    }
    o.raw("delivery", &d.finish());
    let mut p = JsonObject::new();
    p.num("workers", s.pool.workers as u64);
    p.num("busy", s.pool.busy as u64);
    p.num("waiting", s.pool.waiting as u64);
    p.num("evictions", s.pool.evictions);
    p.num("refusals", s.pool.refusals);
    o.raw("pool", &p.finish());
    let g = &s.pacing;
    let mut pj = JsonObject::new();
    match &g.rate {
        Some(r) => pj.str("rate", r),
        None => pj.raw("rate", "null"),
    }
    pj.opt_num("budget_left", g.budget_left);
    pj.opt_num("refills_at", g.refills_at);
    pj.opt_num("next_slot", g.next_slot);
    pj.opt_num("daily_recipients_left", g.recipients_left);
    pj.num("waiting", g.waiting as u64);
    pj.opt_num("quota_since", g.quota_since);
    o.raw("pacing", &pj.finish());
    let mut a = JsonObject::new();
    a.num("last_minute", g.arrivals_minute);
    a.num("last_hour", g.arrivals_hour);
    o.raw("arrivals", &a.finish());
    o.raw("queue_growth_per_minute", &g.growth_per_minute.to_string());
    let mut errs = JsonObject::new();
    for (name, e) in STAGES.iter().zip(&s.errors) {
        match e {
            Some(e) => {
                let mut eo = JsonObject::new();
                eo.num("time", e.time);
                eo.num("age", now.saturating_sub(e.time));
                eo.str("message", &e.message);
                errs.raw(name, &eo.finish());
            }
            None => errs.raw(name, "null"),
        }
    }
    o.raw("errors", &errs.finish());
    o.finish()
}

/// A JSON object written by hand (no serde): keys in insertion order.
struct JsonObject {
    out: String,
}

impl JsonObject {
    fn new() -> JsonObject {
        JsonObject {
            out: String::from("{"),
        }
    }

    fn key(&mut self, k: &str) {
        if self.out.len() > 1 {
            self.out.push(',');
        }
        write_string(k, &mut self.out);
        self.out.push(':');
    }

    fn raw(&mut self, k: &str, v: &str) {
        self.key(k);
        self.out.push_str(v);
    }

    fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        write_string(v, &mut self.out);
    }

    fn num(&mut self, k: &str, v: u64) {
        self.raw(k, &v.to_string());
    }

    fn opt_num(&mut self, k: &str, v: Option<u64>) {
        match v {
            Some(v) => self.num(k, v),
            None => self.raw(k, "null"),
        }
    }

    fn bool(&mut self, k: &str, v: bool) {
        self.raw(k, if v { "true" } else { "false" });
    }

    fn finish(mut self) -> String {
        self.out.push('}');
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Status {
        Status {
            pid: 4242,
            started: 1_700_000_000,
            written: 1_700_000_100,
            queued: 3,
            oldest_arrival: Some(1_700_000_010),
            last_success: None,
            hold: false,
            paused_until: Some(1_700_000_400),
            pause_reason: Some("login refused: 535 5.7.8 bad\r\ncredentials 100%".into()),
            errors: [
                Some(StageError {
                    time: 1_700_000_050,
                    message: "spool full".into(),
                }),
                None,
                None,
                Some(StageError {
                    time: 1_700_000_090,
                    message: "535 5.7.8 \"no\"\n".into(),
                }),
                None,
            ],
            pool: PoolFigures {
                workers: 16,
                busy: 5,
                waiting: 1,
                evictions: 7,
                refusals: 2,
            },
            pacing: PacingView {
                rate: Some("30/1m".into()),
                budget_left: Some(0),
                refills_at: Some(1_700_000_130),
                next_slot: Some(1_700_000_130),
                recipients_left: None,
                waiting: 4,
                arrivals_minute: 12,
                arrivals_hour: 40,
                growth_per_minute: -3,
                quota_since: Some(1_699_900_000),
            },
        }
    }

    #[test]
    fn systemd_status_says_why_delivery_is_paused() {
        let mut s = sample();
        assert_eq!(
            systemd_status(&s),
            format!(
                "3 message(s) queued; delivery paused until {}: login refused: 535 5.7.8 bad  credentials 100%",
                message::rfc5322_date(1_700_000_400)
            )
        );
        s.pause_reason = Some("x".repeat(1000));
        let t = systemd_status(&s);
        assert!(
            t.ends_with('…') && t.len() < 400 && !t.contains('\n'),
            "{t}"
        );
        s.paused_until = None;
        assert_eq!(systemd_status(&s), "3 message(s) queued");
    }

    #[test]
    fn encode_parse_round_trip() {
        let s = sample();
        let text = s.encode();
        assert!(text.lines().all(|l| !l.contains('\r')), "{text}");
        assert_eq!(Status::parse(&text).unwrap(), s);
        let empty = Status {
            pid: 1,
            written: 5,
            ..Status::default()
        };
        assert_eq!(Status::parse(&empty.encode()).unwrap(), empty);
    }

    #[test]
    fn parse_rejects_garbage_without_panicking() {
        let cases: &[(&str, bool)] = &[
            ("", false),
            ("picorelay-status 2\npid: 1\nwritten: 1\n", false),
            ("picorelay-status 1\npid: x\nwritten: 1\n", false),
            ("picorelay-status 1\npid: 99999999999\nwritten: 1\n", false),
            ("picorelay-status 1\nwritten: 1\n", false),
            ("picorelay-status 1\npid: 1\nwritten: 1\nnonsense\n", false),
            (
                "picorelay-status 1\npid: 1\nwritten: 1\nerror.send: x y\n",
                false,
            ),
            (
                "picorelay-status 1\npid: 1\nwritten: 1\nfuture_key: 7\n",
                true,
            ),
            (
                "picorelay-status 1\npid: 1\nwritten: 1\nerror.other: 1 x\n",
                true,
            ),
            (
                "picorelay-status 1\npid: 1\nwritten: 1\npause_reason: %\n",
                true,
            ),
            (
                "picorelay-status 1\npid: 1\nwritten: 1\npause_reason: %4\n",
                true,
            ),
            (
                "picorelay-status 1\npid: 1\nwritten: 1\npause_reason: %zz%FF\n",
                true,
            ),
        ];
        for (text, ok) in cases {
            assert_eq!(Status::parse(text).is_ok(), *ok, "{text:?}");
        }
    }

    #[test]
    fn escape_table() {
        for (raw, enc) in [
            ("plain", "plain"),
            ("a%b", "a%25b"),
            ("a\r\nb", "a%0D%0Ab"),
            ("tab\t", "tab%09"),
            ("é ok", "é ok"),
            ("\u{85}", "%C2%85"),
        ] {
            assert_eq!(escape(raw), enc);
            assert_eq!(unescape(enc), raw);
        }
    }

    #[test]
    fn json_and_text_show_everything() {
        let s = sample();
        let now = 1_700_000_100;
        let j = to_json(&s, now);
        for needle in [
            r#""running":true"#,
            r#""pid":4242"#,
            r#""queue":{"messages":3,"oldest_age":90}"#,
            r#""last_delivery":null"#,
            r#""paused":true"#,
            r#""paused_until":1700000400"#,
            r#""accept":{"time":1700000050,"age":50,"message":"spool full"}"#,
            r#""auth":{"time":1700000090,"age":10,"message":"535 5.7.8 \"no\"\n"}"#,
            r#""send":null"#,
        ] {
            assert!(j.contains(needle), "{needle} in {j}");
        }
        let t = to_text(&s, now);
        for needle in [
            "pid 4242, up 100s",
            "3 message(s), oldest 90s old",
            "last delivery:  none since start",
            "paused for 5m more",
            "accept   50s ago: spool full",
            "send     none",
        ] {
            assert!(t.contains(needle), "{needle} in {t}");
        }
    }

    #[test]
    fn from_snapshot_drops_a_pause_that_is_over() {
        let snap = StatusSnapshot {
            queued: 1,
            paused_until: Some(100),
            pause_reason: Some("x".into()),
            ..StatusSnapshot::default()
        };
        let over = Status::from_snapshot(1, 0, 200, &snap, None, PoolFigures::default());
        assert_eq!((over.paused_until, over.pause_reason), (None, None));
        let on = Status::from_snapshot(1, 0, 50, &snap, None, PoolFigures::default());
        assert_eq!(on.paused_until, Some(100));
        assert_eq!(on.pause_reason.as_deref(), Some("x"));
    }

    #[test]
    fn publisher_answers_and_read_checks_liveness() {
        let dir = std::env::temp_dir().join(format!(
            "picorelay-status-unit-{}-{}",
            std::process::id(),
            message::now()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(matches!(read(&dir), Err(StatusError::NotRunning(_))));
        let mut p = Publisher::new(&dir);
        let asker = {
            let dir = dir.clone();
            std::thread::spawn(move || read(&dir))
        };
        // The main loop answers whenever it comes round; here, until the asker is served.
        while !asker.is_finished() {
            p.publish(&StatusSnapshot::default(), None, PoolFigures::default())
                .unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        let s = asker.join().unwrap().unwrap();
        assert_eq!(s.pid, std::process::id());
        p.remove();
        assert!(matches!(read(&dir), Err(StatusError::NotRunning(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
