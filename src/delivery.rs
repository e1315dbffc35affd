//! The queue runner: forwards queued messages to the smarthost the moment they are committed,
//! retries deferred ones with backoff, pauses the whole queue after a login, certificate or
//! connection failure, expires old messages and queues bounces.
//!
//! `[smarthost] max_connections` sender threads and one scan thread share one `Work` behind a
//! Mutex + Condvar. Each
//! sender owns its own smarthost connection: it claims the most overdue message nobody else
//! holds (a message is in the hands of one sender at a time), sends it, writes the outcome back
//! to the spool, and keeps going over the same connection while messages are due (no RSET after
//! a completed transaction, QUIT after a short idle), so a backlog costs one login per
//! connection. Delivery waits on the smarthost's replies and on fsyncs far more than on the CPU,
//! so a few connections in parallel multiply the rate. Whether the smarthost works at all is
//! decided by one sender: the first connection while none is open, and the one attempt after a
//! pause, are made alone while the others wait (see `Work::claim`). The scan thread lists queue/ every second for messages
//! committed by other processes (`picorelay sendmail`) or deleted by `queue delete`, and reacts
//! to the `flush` trigger file. `Runner::notify` (called by the server right after a commit)
//! wakes a sender at once: no poll interval in the way.
//!
//! Delivery is at-least-once: the spool is updated only after the smarthost answered, so a
//! crash in between sends the message again; nothing is removed before it was accepted,
//! refused for good (and reported), or expired (and reported).

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, BufRead, Cursor, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::bounce::{self, Disposition, Failure};
use crate::client::{BearerSource, ClientError, Connection, RcptOutcome, Settings, Stage};
use crate::clockstep::ClockWatch;
use crate::config::{Config, SmarthostAuth};
use crate::message;
use crate::oauth::Tokens;
use crate::pacing::Pacer;
use crate::queue_cmd::human;
use crate::rewrite;
use crate::slots;
use crate::smtp::throttle::Throttle;
use crate::spool::{Envelope, RcptState, Spool, SpoolError};
use crate::storm::Storm;
use crate::tls;

/// When a `432 4.3.2` (too many connections) ends an extra connection while another works,
/// that slot rests this long: the account's limit is lower than max_connections for now.
const CONCURRENCY_REST: Duration = Duration::from_secs(300);
/// Pause after a rate or concurrency throttle: this, doubling, up to THROTTLE_MAX.
const THROTTLE_MIN: Duration = Duration::from_secs(60);
const THROTTLE_MAX: Duration = Duration::from_secs(900);
/// Pause after a daily quota: one probe message an hour until it goes.
const QUOTA_PROBE: Duration = Duration::from_secs(3600);
/// The pacing state is written at most this often (and at shutdown); see `save_pacing`.
const PACING_SAVE_EVERY: Duration = Duration::from_secs(10);
/// Where the pacing state lives in the spool folder, and the most of it read.
const PACING_FILE: &str = "pacing.state";
const PACING_FILE_MAX: u64 = 4 << 20;
/// After an extra connection failed while another sender's works, that sender waits this long
/// before trying again; the working connections carry the queue meanwhile (a smarthost that
/// limits connections per client must not pause the whole queue).
const EXTRA_LINK_RETRY: Duration = Duration::from_secs(10);
/// TCP connect, per address tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How often queue/ is listed for messages committed by other processes.
const RESCAN_EVERY: Duration = Duration::from_secs(1);
/// How long an idle smarthost connection is kept for messages arriving right after.
const IDLE_HOLD: Duration = Duration::from_secs(1);
/// The longest queue/ goes unlisted while its modification time says nothing changed.
const RESCAN_FORCED: Duration = Duration::from_secs(30);
/// A folder time this close to its listing is not trusted to show later changes: file times are
/// coarse (a clock tick), and a change in the same tick would leave it as it was.
const STAMP_SETTLED: Duration = Duration::from_secs(2);

/// Listed is when queue/ was last listed, and its modification time then.
#[derive(Default)]
struct Listed {
    at: Option<(SystemTime, Instant)>,
    stamp: Option<SystemTime>,
}

impl Listed {
    /// due says whether queue/ must be listed again (and notes the listing when it must): when
    /// its time `stamp` moved, was recent at the last listing, cannot be read, or RESCAN_FORCED
    /// has passed. Why: the scan thread lists the folder every second, and with a backlog of
    /// 50,000 messages that alone was a fifth of a core here, far more on a router's CPU.
    fn due(&mut self, stamp: Option<SystemTime>) -> bool {
        let settled = |at: SystemTime| {
            stamp.is_some_and(|s| at.duration_since(s).is_ok_and(|d| d >= STAMP_SETTLED))
        };
        let skip = match self.at {
            Some((wall, mono)) => {
                stamp.is_some()
                    && stamp == self.stamp
                    && settled(wall)
                    && mono.elapsed() < RESCAN_FORCED
            }
            None => false,
        };
        if !skip {
            self.at = Some((SystemTime::now(), Instant::now()));
            self.stamp = stamp;
        }
        !skip
    }
}

/// How often the `[oauth]` refresh token's last use is looked at (see `Tokens::keep_alive`).
const KEEP_ALIVE_CHECK: Duration = Duration::from_secs(3600);
/// How often while a rotated refresh token could not be saved: the save is tried again and
/// `status` shows it, even when no mail goes out.
const UNSAVED_CHECK: Duration = Duration::from_secs(60);
/// Longest sleep of the delivery thread when nothing at all is due.
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// Shortest retry delay, whatever the config says: a zero delay would spin.
const MIN_DELAY: Duration = Duration::from_millis(500);
/// Retry delay for a message the spool could not read (the disk may recover).
const UNREADABLE_RETRY: Duration = Duration::from_secs(60);
/// Name of the trigger file `queue flush` drops in the spool folder.
pub const FLUSH_TRIGGER: &str = "flush";

/// One stage's last error, for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageError {
    /// Unix seconds.
    pub time: u64,
    /// What happened, with the smarthost's reply when there was one.
    pub message: String,
}

/// What the runner is doing, as `picorelay status` shows it (issue 5).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusSnapshot {
    /// Messages in the queue, as the runner knows it.
    pub queued: usize,
    /// Arrival of the oldest queued message (unix seconds).
    pub oldest_arrival: Option<u64>,
    /// Last time the smarthost accepted a message (unix seconds).
    pub last_success: Option<u64>,
    /// Last error while connecting (resolve, TCP, greeting, EHLO).
    pub connect: Option<StageError>,
    /// Last STARTTLS / certificate error.
    pub tls: Option<StageError>,
    /// Last login error.
    pub auth: Option<StageError>,
    /// Last error sending a message.
    pub send: Option<StageError>,
    /// Delivery of the whole queue is paused until then (unix seconds).
    pub paused_until: Option<u64>,
    /// Why it is paused.
    pub pause_reason: Option<String>,
    /// No smarthost configured: every message stays queued.
    pub hold: bool,
    /// The pacing budget and the storm view.
    pub pacing: PacingView,
}

/// What `status` shows of the pacing budget and of the arrivals (times in unix seconds).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PacingView {
    /// `[smarthost] rate` as written back ("30/1m"); None without one.
    pub rate: Option<String>,
    /// Messages that may still go in the current rate window.
    pub budget_left: Option<u64>,
    /// When the rate window has room again, when it is full.
    pub refills_at: Option<u64>,
    /// When the next message may go, when pacing holds messages back.
    pub next_slot: Option<u64>,
    /// Recipients left in the rolling day (`daily_recipients`).
    pub recipients_left: Option<u64>,
    /// Messages due but held back by pacing.
    pub waiting: usize,
    /// Messages that arrived in the last minute and the last hour.
    pub arrivals_minute: u64,
    /// See arrivals_minute.
    pub arrivals_hour: u64,
    /// How much the queue grew over the last minute (negative: it shrank).
    pub growth_per_minute: i64,
    /// Since when a daily quota has held the queue (unix seconds).
    pub quota_since: Option<u64>,
}

/// Delivery state shared with the status command; a Mutex inside.
#[derive(Debug, Default)]
pub struct DeliveryState {
    inner: Mutex<StatusSnapshot>,
}

impl DeliveryState {
    /// snapshot is a copy of the current state.
    pub fn snapshot(&self) -> StatusSnapshot {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, StatusSnapshot> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn error(&self, stage: Stage, message: &str) {
        let e = Some(StageError {
            time: message::now(),
            message: message.to_string(),
        });
        let mut s = self.lock();
        match stage {
            Stage::Connect => s.connect = e,
            Stage::Tls => s.tls = e,
            Stage::Auth => s.auth = e,
            Stage::Send => s.send = e,
        }
    }
}

/// backoff is the delay after `attempts` failed attempts (1 = the first): `min` doubled for
/// each earlier failure, capped at `max`, then shortened by up to 20% by `jitter` (0..1) so
/// messages and relays that failed together do not come back in lockstep. Never below
/// MIN_DELAY, so a zero config cannot make the runner spin.
pub fn backoff(attempts: u32, min: Duration, max: Duration, jitter: f64) -> Duration {
    let shift = attempts.saturating_sub(1).min(31);
    let base = min.saturating_mul(1u32 << shift).min(max);
    base.mul_f64(1.0 - 0.2 * jitter.clamp(0.0, 1.0))
        .max(MIN_DELAY)
}

/// jitter is a number in [0, 1), random enough to spread retries (std's hasher keys are
/// seeded randomly per process and per RandomState).
fn jitter() -> f64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// long_duration says a config duration in words for reports: "5 days", "2 seconds".
pub fn long_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (n, unit) = match s {
        0 => (0, "second"),
        s if s % 86_400 == 0 => (s / 86_400, "day"),
        s if s % 3600 == 0 => (s / 3600, "hour"),
        s if s % 60 == 0 => (s / 60, "minute"),
        s => (s, "second"),
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

/// settings builds the client settings from `[smarthost]`: the rustls config once per config;
/// `tokens` is the `[oauth]` access token source when there is one (see `tokens`). Shared with
/// `probe`, so the probe connects exactly as delivery does.
pub fn settings(cfg: &Config, tokens: Option<Arc<Tokens>>) -> Result<Settings, String> {
    let sh = &cfg.smarthost;
    let tls_config = tls::client_config(sh.tls_verify, sh.ca_file.as_deref(), sh.tls_fingerprint)
        .map_err(|e| format!("{}: [smarthost] {e}", cfg.path.display()))?;
    Ok(Settings {
        hosts: sh.hosts.iter().map(|h| (h.host.clone(), h.port)).collect(),
        tls: sh.tls,
        tls_config,
        username: sh.username.clone(),
        password: sh.password.clone(),
        auth: sh.auth,
        throttle_replies: Arc::from(sh.throttle_replies.clone()),
        bearer: tokens
            .filter(|_| !matches!(sh.auth, SmarthostAuth::Plain | SmarthostAuth::Login))
            .map(|t| t as Arc<dyn BearerSource>),
        helo: sh.helo.clone(),
        connect_timeout: CONNECT_TIMEOUT,
        // RFC 5321 4.5.3.2.1-4.5.3.2.3: greeting, MAIL, RCPT: `[smarthost] timeout`, 5 minutes.
        command_timeout: sh.timeout,
        // RFC 5321 4.5.3.2.6: the reply to the final dot, 10 minutes: twice the command timeout.
        data_timeout: sh.timeout.saturating_mul(2),
    })
}

/// The access token source of one config: None without `[oauth]`; Err when it cannot be built.
type TokenSource = Result<Option<Arc<Tokens>>, String>;

/// tokens builds the `[oauth]` access token source of `cfg` (None without `[oauth]`), with
/// the config file named in the error.
pub fn tokens(cfg: &Config) -> TokenSource {
    Tokens::new(cfg)
        .map(|t| t.map(Arc::new))
        .map_err(|e| format!("{}: {e}", cfg.path.display()))
}

/// pacing_view is what `status` shows of the pacing budget and the arrivals.
fn pacing_view(w: &Work, now: u64) -> PacingView {
    let secs = |ms: u64| ms.div_ceil(1000);
    let now_s = now / 1000;
    PacingView {
        rate: w.cfg.smarthost.rate.as_ref().map(|r| r.to_string()),
        budget_left: w.pacer.budget_left(now),
        refills_at: w.pacer.refills_at(now).map(secs),
        next_slot: w.pacer.next_slot(now, 1).map(secs),
        recipients_left: w.pacer.recipients_left(now),
        waiting: w.waiting_for_pace(now),
        arrivals_minute: w.storm.last_minute(now_s),
        arrivals_hour: w.storm.last_hour(now_s),
        growth_per_minute: w.storm.growth_per_minute(now_s),
        quota_since: w.quota_since.map(|(since, _)| since / 1000),
    }
}

/// pause_delay is how long delivery pauses after an attempt failed this way: a throttle by
/// its kind (minutes for a rate or connection limit; an hourly probe for a daily quota), any
/// other failure by the retry schedule.
/// A rate or connection limit stays within the retry schedule too (with the defaults, 1 min
/// doubling to 15 min); a daily quota is probed once an hour whatever the schedule, since
/// every probe counts against the quota.
fn pause_delay(throttle: Option<Throttle>, level: u32, cfg: &Config) -> Duration {
    let (min, max) = (cfg.queue.retry_min, cfg.queue.retry_max);
    match throttle {
        Some(Throttle::Rate | Throttle::Concurrency | Throttle::TooManyRecipients) => backoff(
            level,
            min.min(THROTTLE_MIN),
            max.min(THROTTLE_MAX),
            jitter(),
        ),
        Some(Throttle::DailyQuota) => QUOTA_PROBE,
        None => backoff(level, min, max, jitter()),
    }
}

/// load_pacing rebuilds the pacing budget from the spool's pacing.state (what was sent in the
/// current windows before a restart); a missing or damaged file starts empty.
pub fn load_pacing(cfg: &Config, dir: &Path) -> Pacer {
    let sh = &cfg.smarthost;
    let mut text = String::new();
    // A real state file holds at most the windows' entries; never read a giant one whole.
    let read = std::fs::File::open(dir.join(PACING_FILE))
        .and_then(|f| f.take(PACING_FILE_MAX).read_to_string(&mut text));
    match read {
        Ok(_) => Pacer::decode(&text, sh.rate, sh.daily_recipients, now_ms()),
        Err(_) => Pacer::new(sh.rate, sh.daily_recipients),
    }
}

/// save_pacing writes pacing.state: under a temporary name, then renamed over the old one,
/// without an fsync. A crash or power cut may lose the last PACING_SAVE_EVERY of sends; the
/// budget then errs by at most that much, and a provider that notices answers with a
/// throttle reply, which only pauses delivery. An fsync per message would cost flash writes
/// for nothing more.
fn save_pacing(dir: &Path, pacer: &Pacer) {
    let tmp = dir.join(format!("{PACING_FILE}.tmp"));
    let written = std::fs::write(&tmp, pacer.encode())
        .and_then(|()| std::fs::rename(&tmp, dir.join(PACING_FILE)));
    if let Err(e) = written {
        log::warn!("delivery: cannot save {PACING_FILE}: {e}");
    }
}

/// How a message came into the index (for the debug log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Start,
    Notify,
    Rescan,
    Retry,
    Flush,
    Bounce,
    /// Handed back untried: its recipients did not fit the pacing budget yet.
    Paced,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Start => "queued at start",
            Source::Notify => "notified",
            Source::Rescan => "found by rescan",
            Source::Retry => "retry",
            Source::Flush => "flush",
            Source::Bounce => "new report",
            Source::Paced => "paced",
        }
    }
}

/// What the runner knows of one queued message.
#[derive(Debug, Clone)]
struct Entry {
    /// When it is due, unix milliseconds (0 = now).
    due: u64,
    /// Unix seconds.
    arrival: u64,
    /// When the entry was made: a rescan listing older than this must not drop it.
    added: Instant,
    source: Source,
    /// The state its last attempt left when the spool could not record it (disk full): it
    /// stands in for the file's header until a rewrite succeeds, so a recipient the
    /// smarthost accepted is not sent the message again and the backoff goes on. Lost with a
    /// restart, which then sends to those recipients again (nothing lost, duplicates possible).
    unsaved: Option<Envelope>,
}

/// The in-memory queue: by id (ids sort by arrival) and by due time.
#[derive(Debug, Default)]
struct Index {
    by_id: BTreeMap<String, Entry>,
    by_due: BTreeSet<(u64, String)>,
}

impl Index {
    fn insert(&mut self, id: &str, e: Entry) {
        if let Some(old) = self.by_id.insert(id.to_string(), e.clone()) {
            self.by_due.remove(&(old.due, id.to_string()));
        }
        self.by_due.insert((e.due, id.to_string()));
    }

    fn remove(&mut self, id: &str) {
        if let Some(old) = self.by_id.remove(id) {
            self.by_due.remove(&(old.due, id.to_string()));
        }
    }

    fn set_due(&mut self, id: &str, due: u64, source: Source) {
        if let Some(e) = self.by_id.get_mut(id) {
            self.by_due.remove(&(e.due, id.to_string()));
            e.due = due;
            e.source = source;
            self.by_due.insert((due, id.to_string()));
        }
    }

    /// keep_unsaved remembers the state `env` of a message whose rewrite failed.
    fn keep_unsaved(&mut self, env: Envelope) {
        if let Some(e) = self.by_id.get_mut(&env.id) {
            e.unsaved = Some(env);
        }
    }

    /// saved forgets the unsaved state of `id`: the spool holds it now.
    fn saved(&mut self, id: &str) {
        if let Some(e) = self.by_id.get_mut(id) {
            e.unsaved = None;
        }
    }

    /// unsaved is the state of `id` the spool could not record, if any.
    fn unsaved(&self, id: &str) -> Option<Envelope> {
        self.by_id.get(id).and_then(|e| e.unsaved.clone())
    }

    /// The most overdue message (ties: the oldest).
    #[cfg(test)]
    fn first_due(&self) -> Option<(u64, String)> {
        self.by_due.iter().next().cloned()
    }
}

/// Delivery of the whole queue is paused after a connect, TLS or login failure.
#[derive(Debug, Clone)]
struct Pause {
    /// Unix milliseconds; in the past once over (the next attempt decides).
    until: u64,
    /// How many failed attempts in a row: the backoff exponent.
    level: u32,
    stage: Stage,
    /// Whether a person must act (a refused login or token): with the stage and the kind,
    /// what a change of state is, worth a log line.
    permanent: bool,
    /// `ClientError::kind` of the failure.
    kind: String,
    reason: String,
}

/// Everything the threads touch, behind one Mutex.
struct Work {
    cfg: Arc<Config>,
    index: Index,
    /// Messages a sender is working on: no other sender takes them, the scan leaves them alone.
    busy: BTreeSet<String>,
    pause: Option<Pause>,
    /// Senders holding an open smarthost connection.
    links: usize,
    /// A sender is making the connection that decides whether the smarthost works (the first
    /// while none is open, or the one attempt after a pause): the others wait for its outcome.
    probing: bool,
    stopping: bool,
    /// The `rate` and `daily_recipients` budget (see pacing.rs).
    pacer: Pacer,
    /// The pacer changed since it was last saved.
    pacer_dirty: bool,
    /// Pacing is holding due messages back (they have been put in arrival order).
    paced: bool,
    /// Arrivals and queue growth.
    storm: Storm,
    /// Since when a daily quota has paused the queue, and whether that was reported after a day.
    quota_since: Option<(u64, bool)>,
    /// Forward steps of the wall clock: a message's age does not include them.
    clock: ClockWatch,
}

impl Work {
    fn new(cfg: Arc<Config>, index: Index, pacer: Pacer) -> Work {
        Work {
            cfg,
            index,
            busy: BTreeSet::new(),
            pause: None,
            links: 0,
            probing: false,
            stopping: false,
            pacer,
            pacer_dirty: false,
            paced: false,
            storm: Storm::default(),
            quota_since: None,
            clock: ClockWatch::default(),
        }
    }

    /// hold_for_pace: pacing starts holding due messages back; they then go in arrival order
    /// (oldest first), not in the order their retries happened to fall due.
    fn hold_for_pace(&mut self, now: u64) {
        if self.paced {
            return;
        }
        self.paced = true;
        let due: Vec<(String, Source)> = self
            .index
            .by_id
            .iter()
            .filter(|(id, e)| e.due <= now && !self.busy.contains(*id))
            .map(|(id, e)| (id.clone(), e.source))
            .collect();
        for (id, source) in due {
            self.index.set_due(&id, 0, source);
        }
    }

    /// waiting_for_pace counts the due messages pacing holds back.
    fn waiting_for_pace(&self, now: u64) -> usize {
        if self.pacer.next_slot(now, 1).is_none() {
            return 0;
        }
        self.index
            .by_due
            .iter()
            .take_while(|(due, _)| *due <= now)
            .filter(|(_, id)| !self.busy.contains(id))
            .count()
    }

    /// claim hands a sender the most overdue message no other sender holds, or says how long
    /// to wait (the sender is woken earlier when something changes). `has_link`: the sender
    /// holds an open connection; `may_open`: it may open an extra one while another sender's
    /// works (false for a while after such an extra connection failed).
    ///
    /// A pause stops every sender. When it is over, or when no connection is open at all, the
    /// next connection decides whether the smarthost works: exactly one sender makes it (the
    /// job comes back with `probe` set) and the others wait until it is open or has failed,
    /// so a dead or refusing smarthost sees one attempt, not one per sender.
    fn claim(&mut self, has_link: bool, may_open: bool, now: u64) -> Result<Job, Duration> {
        if self.stopping || self.cfg.smarthost.hosts.is_empty() {
            return Err(MAX_SLEEP);
        }
        if let Some(p) = &self.pause {
            if p.until > now {
                return Err(Duration::from_millis(p.until - now));
            }
        }
        let probe = !has_link && (self.links == 0 || self.pause.is_some());
        if (probe && self.probing) || (!has_link && !probe && !may_open) {
            return Err(MAX_SLEEP);
        }
        let busy = &self.busy;
        let Some((due, id)) = self
            .index
            .by_due
            .iter()
            .find(|(_, id)| !busy.contains(id))
            .cloned()
        else {
            return Err(MAX_SLEEP);
        };
        if due > now {
            return Err(Duration::from_millis(due - now));
        }
        // Pacing delays, never refuses: the message stays due and goes at the next free slot.
        if let Some(slot) = self.pacer.next_slot(now, 1) {
            self.hold_for_pace(now);
            return Err(Duration::from_millis(slot.saturating_sub(now).max(1)));
        }
        self.paced = false;
        let source = self
            .index
            .by_id
            .get(&id)
            .map_or(Source::Retry, |e| e.source);
        self.busy.insert(id.clone());
        self.probing |= probe;
        Ok(Job {
            id,
            cfg: Arc::clone(&self.cfg),
            source,
            probe,
        })
    }
}

struct Shared {
    spool: Arc<Spool>,
    work: Mutex<Work>,
    /// Wakes senders (new message, flush, pause over, config, stop).
    wake: Condvar,
    /// Wakes the scan thread (stop only): kept apart so a `notify_one` always reaches a sender.
    scan_wake: Condvar,
    state: Arc<DeliveryState>,
    /// The access token source of the current config, shared by every sender so one token
    /// serves them all; a new config (SIGHUP) gets a new source, dropping the cached token.
    tokens: Mutex<Option<(Arc<Config>, TokenSource)>>,
    /// The OAuth refresh token keep-alive, run from the scan thread.
    keep_alive: Arc<Mutex<KeepAlive>>,
    /// Threads still running, for `stop`'s grace period.
    running: Mutex<usize>,
    exited: Condvar,
}

/// When the refresh token's last use is next looked at, and how the last try ended.
struct KeepAlive {
    next: Instant,
    running: bool,
    /// `TokenError::kind` of the last failure: a WARN only when it changes.
    failed: Option<String>,
}

/// Counts a thread out when it ends, even by a panic.
struct Running(Arc<Shared>);

impl Drop for Running {
    fn drop(&mut self) {
        let mut n = self.0.running.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
        self.0.exited.notify_all();
    }
}

/// The queue runner. Start it once the spool is open; stop it at shutdown.
pub struct Runner {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

/// A cheap, cloneable handle for the server's commit hook and the signal loop.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

impl Handle {
    /// notify: message `id` was just committed; deliver it at once.
    pub fn notify(&self, id: &str) {
        self.shared.notify(id);
    }

    /// flush: every queued message is due now; a pause ends.
    pub fn flush(&self) {
        self.shared.flush(Source::Flush);
    }
}

impl Runner {
    /// Runner::start spawns the delivery and scan threads for the queued messages `envs` (the
    /// spool's scan at start-up, read once: with a large backlog a second scan doubled the
    /// start-up time). In hold mode (no smarthost.host) it only keeps track of the queue. A
    /// `flush` trigger file left while the relay was down makes everything due at once.
    pub fn start(cfg: Arc<Config>, spool: Arc<Spool>, envs: Vec<Envelope>) -> io::Result<Runner> {
        let flush = take_flush_trigger(&spool);
        let mut index = Index::default();
        let now = Instant::now();
        for env in &envs {
            let due = if flush {
                0
            } else {
                env.next_attempt.saturating_mul(1000)
            };
            let e = Entry {
                due,
                arrival: env.arrival,
                added: now,
                source: Source::Start,
                unsaved: None,
            };
            index.insert(&env.id, e);
        }
        if cfg.smarthost.hosts.is_empty() {
            log::info!("delivery: hold mode (no smarthost): messages stay in the queue");
        } else if !cfg.smarthost.tls_verify && cfg.smarthost.tls_fingerprint.is_none() {
            log::warn!("delivery: tls_verify = no: the smarthost's certificate is NOT checked");
        }
        let pacer = load_pacing(&cfg, spool.dir());
        let senders = cfg.smarthost.max_connections.max(1);
        let shared = Arc::new(Shared {
            spool,
            work: Mutex::new(Work::new(cfg, index, pacer)),
            wake: Condvar::new(),
            scan_wake: Condvar::new(),
            state: Arc::new(DeliveryState::default()),
            tokens: Mutex::new(None),
            keep_alive: Arc::new(Mutex::new(KeepAlive {
                next: Instant::now(),
                running: false,
                failed: None,
            })),
            running: Mutex::new(0),
            exited: Condvar::new(),
        });
        shared.publish(&shared.lock());
        let mut threads = Vec::new();
        // Some(n): sender n; None: the scan thread.
        for role in (0..senders).map(Some).chain([None]) {
            let sh = Arc::clone(&shared);
            *shared.running.lock().unwrap_or_else(|p| p.into_inner()) += 1;
            let name = role.map_or("queue-scan".to_string(), |n| format!("delivery-{n}"));
            let spawned = thread::Builder::new().name(name).spawn(move || {
                let guard = Running(sh);
                match role {
                    Some(n) => guard.0.delivery_loop(n),
                    None => guard.0.scan_loop(),
                }
            });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    *shared.running.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
                    // Whatever already started ends on its own.
                    shared.lock().stopping = true;
                    shared.wake.notify_all();
                    shared.scan_wake.notify_all();
                    return Err(e);
                }
            }
        }
        Ok(Runner { shared, threads })
    }

    /// handle gives the server's commit hook and the signal loop a way to reach the runner.
    pub fn handle(&self) -> Handle {
        Handle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// notify: message `id` was just committed; deliver it at once (no polling delay).
    #[allow(dead_code)] // the server goes through `handle()`; kept for the contract
    pub fn notify(&self, id: &str) {
        self.shared.notify(id);
    }

    /// flush makes every queued message due now and ends a pause (SIGUSR1, `queue flush`).
    #[allow(dead_code)] // the signal loop goes through `handle()`; kept for the contract
    pub fn flush(&self) {
        self.shared.flush(Source::Flush);
    }

    /// set_config switches to a reloaded config (SIGHUP, issue 5); an open smarthost
    /// connection made with the old one is closed first.
    pub fn set_config(&self, cfg: Arc<Config>) {
        let mut w = self.shared.lock();
        // New limits, same history: what was sent in the windows still counts.
        let sh = &cfg.smarthost;
        w.pacer = Pacer::decode(&w.pacer.encode(), sh.rate, sh.daily_recipients, now_ms());
        w.cfg = cfg;
        drop(w);
        self.shared.wake.notify_all();
    }

    /// state is shared with the status command.
    pub fn state(&self) -> Arc<DeliveryState> {
        Arc::clone(&self.shared.state)
    }

    /// stop lets the message in progress finish within `grace`, then returns. A delivery still
    /// running then is abandoned with the process: spool updates are atomic renames, so the
    /// message is simply sent again after a restart (at-least-once).
    pub fn stop(self, grace: Duration) {
        self.shared.lock().stopping = true;
        self.shared.wake.notify_all();
        self.shared.scan_wake.notify_all();
        let deadline = Instant::now() + grace;
        let mut running = self
            .shared
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        while *running > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                log::warn!(
                    "delivery: abandoning the attempt in progress; it is retried after restart"
                );
                return;
            }
            running = self
                .shared
                .exited
                .wait_timeout(running, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        drop(running);
        for t in self.threads {
            let _ = t.join();
        }
        let w = self.shared.lock();
        if w.pacer_dirty {
            save_pacing(self.shared.spool.dir(), &w.pacer);
        }
    }
}

/// take_flush_trigger removes the `flush` file; true when it was there.
fn take_flush_trigger(spool: &Spool) -> bool {
    std::fs::remove_file(spool.dir().join(FLUSH_TRIGGER)).is_ok()
}

/// request_flush is `picorelay queue flush`: it drops the `flush` trigger file in the spool
/// folder, which a running relay picks up within a second (with or without pid_file), and a
/// relay started later picks up at start. Returns how many messages are waiting for a retry.
///
/// The envelopes are not rewritten: the runner may be updating the same files, and a stale
/// copy written over its update could resend recipients it has just delivered.
pub fn request_flush(spool: &Spool) -> Result<usize, SpoolError> {
    let now = message::now();
    let deferred = spool
        .scan()?
        .iter()
        .filter(|e| e.next_attempt > now)
        .count();
    let path = spool.dir().join(FLUSH_TRIGGER);
    // 0640 like every spool file, whatever umask `queue flush` was started with.
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o640)
        .open(&path)
        .map_err(|e| SpoolError::Io(format!("cannot write {}: {e}", path.display())))?;
    Ok(deferred)
}

/// flush_command runs `picorelay queue flush`: exit 0 once the request is in place.
pub fn flush_command(config: &Path) -> u8 {
    let Some(cfg) = crate::serve::load_config(config) else {
        return 1;
    };
    let spool = match Spool::open(&cfg.queue.dir, cfg.queue.max_size) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("picorelay: spool {}: {e}", cfg.queue.dir.display());
            return 1;
        }
    };
    match request_flush(&spool) {
        Ok(n) => {
            println!("flush requested: {n} deferred message(s); a running relay retries the queue within a second");
            0
        }
        Err(e) => {
            eprintln!("picorelay: {e}");
            1
        }
    }
}

/// The open smarthost connection and what it was opened with.
struct Link {
    conn: Connection,
    cfg: Arc<Config>,
    last_used: Instant,
    /// The last reply line the smarthost sent (the transcript feeds it): "250 2.0.0 Ok ...".
    last_reply: Arc<Mutex<String>>,
    /// Opened for the message in hand: no RSET needed before it.
    fresh: bool,
    /// The connection slot it holds (None when slots cannot be shared).
    _slot: Option<slots::Slot>,
}

impl Link {
    fn last_reply(&self) -> String {
        self.last_reply
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }
}

/// A sender thread's own state between messages.
struct Sender {
    /// Which sender, for the log.
    n: usize,
    link: Option<Link>,
    settings: Option<(Arc<Config>, Result<Settings, String>)>,
    /// No extra connection before then: the last one failed while another sender's worked.
    open_after: Option<Instant>,
}

/// The message in hand.
#[derive(Debug)]
struct Job {
    id: String,
    cfg: Arc<Config>,
    source: Source,
    /// This attempt's connection decides whether the smarthost works (see `Work::claim`).
    probe: bool,
}

/// How an attempt ended for the pending recipients, before expiry and bookkeeping.
struct Outcome {
    /// Newly failed recipients, for the report.
    failures: Vec<Failure>,
    /// Why the still-pending recipients were not delivered.
    deferred: Option<String>,
    /// When to try again, when the backoff does not decide (a pause).
    next_due: Option<u64>,
    /// The smarthost's name, when it answered.
    remote: Option<String>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Work> {
        self.work.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// publish copies queue depth and pause to the status snapshot.
    fn publish(&self, w: &Work) {
        let mut s = self.state.lock();
        s.queued = w.index.by_id.len();
        s.oldest_arrival = w.index.by_id.values().next().map(|e| e.arrival);
        s.hold = w.cfg.smarthost.hosts.is_empty();
        let now = now_ms();
        match &w.pause {
            Some(p) if p.until > now => {
                s.paused_until = Some(p.until.div_ceil(1000));
                s.pause_reason = Some(p.reason.clone());
            }
            _ => {
                s.paused_until = None;
                s.pause_reason = None;
            }
        }
    }

    fn notify(&self, id: &str) {
        let mut w = self.lock();
        if !w.busy.contains(id) {
            if w.index.by_id.contains_key(id) {
                w.index.set_due(id, 0, Source::Notify);
            } else {
                let arrival = message::now();
                let e = Entry {
                    due: 0,
                    arrival,
                    added: Instant::now(),
                    source: Source::Notify,
                    unsaved: None,
                };
                w.index.insert(id, e);
                w.storm.arrived(arrival, 1);
            }
        }
        self.publish(&w);
        let hold = w.cfg.smarthost.hosts.is_empty();
        drop(w);
        // One message, one sender: any waiting sender can take it. In hold
        // mode none would, and waking one per accepted message costs a
        // context switch taken from accepting.
        if !hold {
            self.wake.notify_one();
        }
    }

    fn flush(&self, source: Source) {
        let mut w = self.lock();
        let ids: Vec<String> = w.index.by_id.keys().cloned().collect();
        for id in &ids {
            w.index.set_due(id, 0, source);
        }
        if let Some(p) = w.pause.as_mut() {
            // The next attempt decides; "delivery resumed" is logged when it works.
            p.until = 0;
        }
        log::info!("delivery: flush: {} message(s) due now", ids.len());
        self.publish(&w);
        drop(w);
        self.wake.notify_all();
    }

    // ---- the scan thread ----

    fn scan_loop(&self) {
        let mut unreadable = BTreeSet::new();
        let mut last_save = Instant::now();
        let mut listed = Listed::default();
        loop {
            {
                let w = self.lock();
                let (w, _) = self
                    .scan_wake
                    .wait_timeout_while(w, RESCAN_EVERY, |w| !w.stopping)
                    .unwrap_or_else(|p| p.into_inner());
                if w.stopping {
                    drop(w);
                    self.sync_removals();
                    return;
                }
            }
            self.sync_removals();
            self.watch_clock();
            if take_flush_trigger(&self.spool) {
                log::info!("delivery: queue flush requested");
                self.flush(Source::Flush);
            }
            if listed.due(self.spool.queue_stamp()) {
                self.rescan(&mut unreadable);
            }
            self.keep_alive_tick();
            self.storm_tick(&mut last_save);
        }
    }

    /// watch_clock looks for a forward step of the wall clock (NTP on a board without a
    /// real-time clock) and says so once; messages queued before it age from after it.
    fn watch_clock(&self) {
        let step = self.lock().clock.observe(now_ms(), Instant::now());
        if let Some(s) = step {
            log::warn!(
                "delivery: the clock was set forward by {}; messages queued before count their age from now on",
                human(s.by_ms / 1000)
            );
        }
    }

    /// storm_tick samples the queue length for the storm view, warns once when the queue
    /// grows faster than pacing lets it drain, saves the pacing state now and then, and
    /// refreshes the status (the budget refills with time, not only with events).
    fn storm_tick(&self, last_save: &mut Instant) {
        let mut w = self.lock();
        let now = now_ms();
        let now_s = now / 1000;
        let queued = w.index.by_id.len();
        w.storm.sample(now_s, queued);
        let pace = w
            .cfg
            .smarthost
            .rate
            .as_ref()
            .map(|r| r.count as f64 * 60.0 / r.per.as_secs_f64().max(0.001));
        if let Some(warning) = w.storm.check(now_s, queued, pace) {
            log::warn!("delivery: {warning}");
        }
        if let Some((since, reported)) = w.quota_since {
            if !reported && now.saturating_sub(since) > 86_400_000 {
                log::warn!(
                    "delivery: {queued} message(s) have waited more than a day for the smarthost's daily quota; they go out as it allows, and bounce only when their lifetime runs out"
                );
                w.quota_since = Some((since, true));
            }
        }
        if w.pacer_dirty && last_save.elapsed() >= PACING_SAVE_EVERY {
            save_pacing(self.spool.dir(), &w.pacer);
            w.pacer_dirty = false;
            *last_save = Instant::now();
        }
        // Once a second, not per message: counting the paced messages walks the queue.
        self.state.lock().pacing = pacing_view(&w, now);
        self.publish(&w);
    }

    /// keep_alive_tick uses a long-unused OAuth refresh token once (at start, then hourly
    /// checks), in a thread of its own so a slow identity provider never delays the rescan.
    /// A failure shows at once in the log and under `status`'s auth stage, long before the
    /// next alert would need the token. A rotated refresh token that could not be saved is
    /// tried again here every minute, and shows there too.
    fn keep_alive_tick(&self) {
        let now = Instant::now();
        let mut k = self.keep_alive.lock().unwrap_or_else(|p| p.into_inner());
        if k.running {
            return;
        }
        let cfg = Arc::clone(&self.lock().cfg);
        let Ok(Some(tokens)) = self.tokens_for(&cfg) else {
            return;
        };
        // A sender's save that failed: shown and retried now, not within the hour.
        if now < k.next && !tokens.unsaved_news() {
            return;
        }
        k.next = now + KEEP_ALIVE_CHECK;
        k.running = true;
        drop(k);
        let keep_alive = Arc::clone(&self.keep_alive);
        let state = Arc::clone(&self.state);
        let spawned = thread::Builder::new()
            .name("oauth-keepalive".to_string())
            .spawn(move || {
                let saved = tokens.retry_save();
                let outcome = tokens.keep_alive();
                let mut k = keep_alive.lock().unwrap_or_else(|p| p.into_inner());
                k.running = false;
                if let Some(Err(why)) = saved {
                    state.error(Stage::Auth, &why);
                    k.next = k.next.min(Instant::now() + UNSAVED_CHECK);
                }
                match outcome {
                    None => {}
                    Some(Ok(days)) => {
                        log::info!(
                            "oauth: the refresh token was unused for {days} days: used once to keep it valid"
                        );
                        k.failed = None;
                    }
                    Some(Err(e)) => {
                        let why = e.explain(tokens.settings().grant);
                        state.error(Stage::Auth, &why);
                        if k.failed.as_deref() != Some(e.kind().as_str()) {
                            log::warn!("oauth: the stored refresh token cannot be used: {why}");
                        }
                        k.failed = Some(e.kind());
                    }
                }
            });
        if let Err(e) = spawned {
            log::warn!("oauth: cannot start the refresh token keep-alive: {e}");
            self.keep_alive
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .running = false;
        }
    }

    /// sync_removals makes the senders' removals of delivered messages durable
    /// (they do not wait for it themselves): at most RESCAN_EVERY after one.
    fn sync_removals(&self) {
        if let Err(e) = self.spool.sync_pending() {
            log::warn!("delivery: cannot sync the queue folder: {e}");
        }
    }

    /// rescan lists queue/: new names are read and indexed, vanished ones dropped.
    fn rescan(&self, unreadable: &mut BTreeSet<String>) {
        let listed_at = Instant::now();
        let ids = match self.spool.ids() {
            Ok(ids) => ids,
            Err(e) => {
                log::warn!("delivery: cannot list the queue: {e}");
                return;
            }
        };
        let on_disk: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
        unreadable.retain(|id: &String| on_disk.contains(id.as_str()));
        let new: Vec<String> = {
            let mut w = self.lock();
            let gone: Vec<String> = w
                .index
                .by_id
                .iter()
                .filter(|(id, e)| {
                    e.added < listed_at && !w.busy.contains(*id) && !on_disk.contains(id.as_str())
                })
                .map(|(id, _)| id.clone())
                .collect();
            for id in &gone {
                log::debug!("delivery {id}: no longer in the queue");
                w.index.remove(id);
            }
            if !gone.is_empty() {
                self.publish(&w);
            }
            ids.iter()
                .filter(|id| {
                    !w.index.by_id.contains_key(*id)
                        && !w.busy.contains(*id)
                        && !unreadable.contains(*id)
                })
                .cloned()
                .collect()
        };
        if new.is_empty() {
            return;
        }
        let mut found = Vec::new();
        for id in new {
            match self.spool.read(&id) {
                Ok(env) => found.push(env),
                Err(SpoolError::NotFound(_)) => {} // delivered or deleted meanwhile
                Err(SpoolError::Corrupt(_)) => {
                    // scan moves unparseable files to corrupt/ and says so.
                    let _ = self.spool.scan();
                }
                Err(e) => {
                    log::warn!("delivery {id}: cannot read it: {e}");
                    unreadable.insert(id);
                }
            }
        }
        let mut w = self.lock();
        for env in found {
            if w.index.by_id.contains_key(&env.id) || w.busy.contains(&env.id) {
                continue;
            }
            log::debug!("delivery {}: found by rescan", env.id);
            let e = Entry {
                due: env.next_attempt.saturating_mul(1000),
                arrival: env.arrival,
                added: Instant::now(),
                source: Source::Rescan,
                unsaved: None,
            };
            w.index.insert(&env.id, e);
            w.storm.arrived(message::now(), 1);
        }
        self.publish(&w);
        drop(w);
        self.wake.notify_all();
    }

    // ---- the sender threads ----

    fn delivery_loop(&self, n: usize) {
        let mut s = Sender {
            n,
            link: None,
            settings: None,
            open_after: None,
        };
        while let Some(job) = self.next_job(&mut s) {
            let handed_back = self.run_job(&mut s, &job);
            let mut w = self.lock();
            w.busy.remove(&job.id);
            if job.probe {
                // Normally cleared when the connection opened or failed; never left set.
                w.probing = false;
            }
            self.publish(&w);
            drop(w);
            if handed_back {
                // Still due: another sender (one with a working connection) takes it.
                self.wake.notify_all();
            }
        }
        self.close_link(&mut s);
    }

    /// close_link says QUIT on the sender's connection, if it has one.
    fn close_link(&self, s: &mut Sender) {
        if let Some(l) = s.link.take() {
            let mut w = self.lock();
            w.links = w.links.saturating_sub(1);
            drop(w);
            l.conn.quit();
        }
    }

    /// next_job waits for a message this sender may take (none in hold mode or while paused;
    /// see `Work::claim`), closing an idle connection after IDLE_HOLD. None when stopping.
    fn next_job(&self, s: &mut Sender) -> Option<Job> {
        let mut w = self.lock();
        loop {
            if w.stopping {
                return None;
            }
            if let Some(l) = &s.link {
                if l.last_used.elapsed() >= IDLE_HOLD || !Arc::ptr_eq(&l.cfg, &w.cfg) {
                    drop(w);
                    self.close_link(s);
                    w = self.lock();
                    continue;
                }
            }
            let may_open = s.open_after.map_or(true, |t| t <= Instant::now());
            let mut sleep = match w.claim(s.link.is_some(), may_open, now_ms()) {
                Ok(job) => return Some(job),
                Err(sleep) => sleep,
            };
            if let Some(t) = s.open_after {
                sleep = sleep.min(t.saturating_duration_since(Instant::now()));
            }
            if let Some(l) = &s.link {
                sleep = sleep.min(IDLE_HOLD.saturating_sub(l.last_used.elapsed()));
            }
            w = self
                .wake
                .wait_timeout(w, sleep.clamp(Duration::from_millis(1), MAX_SLEEP))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// settings_for returns the settings for `cfg`, built (rustls config included) once per
    /// config and cached.
    fn settings_for(&self, s: &mut Sender, cfg: &Arc<Config>) -> Result<Settings, String> {
        match &s.settings {
            Some((c, r)) if Arc::ptr_eq(c, cfg) => r.clone(),
            _ => {
                let r = self.tokens_for(cfg).and_then(|t| settings(cfg, t));
                s.settings = Some((Arc::clone(cfg), r.clone()));
                r
            }
        }
    }

    /// tokens_for returns the access token source for `cfg`, built once per config.
    fn tokens_for(&self, cfg: &Arc<Config>) -> TokenSource {
        let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        match t.as_ref() {
            Some((c, r)) if Arc::ptr_eq(c, cfg) => r.clone(),
            _ => {
                let r = tokens(cfg);
                // A rotated refresh token the old source could not save lives on in the new.
                // This may wait for a token request of the old source in flight: it may end
                // in such a token, and the new source must not start from the file's meanwhile.
                if let (Some((_, Ok(Some(old)))), Ok(Some(new))) = (t.as_ref(), &r) {
                    new.adopt(old);
                }
                *t = Some((Arc::clone(cfg), r.clone()));
                r
            }
        }
    }

    /// run_job makes sure a connection is open (one login for the whole backlog), then
    /// delivers the message in hand over it. True when the message was handed back untried
    /// (an extra connection failed while others work): it is still due.
    fn run_job(&self, s: &mut Sender, job: &Job) -> bool {
        if let Some(l) = s.link.as_mut() {
            // Between messages: finds a connection the smarthost has dropped while idle, and
            // sends RSET only after an aborted transaction (pipelined with the next MAIL when
            // the smarthost offers PIPELINING); after a clean 250 no round trip at all.
            if let Err(e) = l.conn.reset() {
                log::debug!("delivery {}: reconnecting: {e}", s.n);
                self.close_link(s);
            }
        }
        if s.link.is_none() {
            // One of max_connections slots, shared with `picorelay probe`.
            let slot = match slots::try_take(self.spool.dir(), job.cfg.smarthost.max_connections) {
                Ok(Some(slot)) => Some(slot),
                Ok(None) => {
                    // Every slot is in use (a probe holds one): try again shortly.
                    let mut w = self.lock();
                    if job.probe {
                        w.probing = false;
                    }
                    drop(w);
                    s.open_after = Some(Instant::now() + EXTRA_LINK_RETRY);
                    log::debug!(
                        "delivery {}: every smarthost connection slot is in use",
                        s.n
                    );
                    return true;
                }
                Err(e) => {
                    log::debug!("delivery {}: connection slots unavailable ({e})", s.n);
                    None
                }
            };
            let opened = match self.settings_for(s, &job.cfg) {
                Ok(settings) => Connection::open(&settings, None),
                Err(e) => Err(ClientError {
                    stage: Stage::Tls,
                    permanent: false,
                    message: e,
                    kind: "settings".to_string(),
                    throttle: None,
                }),
            };
            match opened {
                Ok(mut conn) => {
                    let last_reply = Arc::new(Mutex::new(String::new()));
                    let sink = Arc::clone(&last_reply);
                    conn.set_transcript(Some(Box::new(move |line: &str| {
                        if let Some(r) = line.strip_prefix("S: ") {
                            if let Ok(mut l) = sink.lock() {
                                *l = r.to_string();
                            }
                        }
                    })));
                    log::debug!("delivery {}: connected to {}", s.n, conn.peer());
                    s.link = Some(Link {
                        conn,
                        cfg: Arc::clone(&job.cfg),
                        last_used: Instant::now(),
                        last_reply,
                        fresh: true,
                        _slot: slot,
                    });
                    let mut w = self.lock();
                    w.links += 1;
                    if job.probe {
                        w.probing = false;
                    }
                    s.open_after = None;
                    w.quota_since = None;
                    if w.pause.take().is_some() {
                        log::info!("delivery resumed");
                        // What waited out the pause goes in arrival order, not in the order
                        // the pause happened to try messages.
                        let now = now_ms();
                        let waiting: Vec<(String, Source)> = w
                            .index
                            .by_id
                            .iter()
                            .filter(|(_, e)| e.due <= now)
                            .map(|(id, e)| (id.clone(), e.source))
                            .collect();
                        for (id, source) in waiting {
                            w.index.set_due(&id, 0, source);
                        }
                    }
                    self.publish(&w);
                    drop(w);
                    // The smarthost works: senders waiting for this outcome may connect too.
                    self.wake.notify_all();
                }
                Err(e) => {
                    let mut w = self.lock();
                    if job.probe {
                        w.probing = false;
                    }
                    if !job.probe && w.links > 0 && w.pause.is_none() {
                        // Others' connections work (the smarthost may limit connections per
                        // client): no pause, they carry the queue; this sender tries later,
                        // much later when the smarthost said so (432 4.3.2).
                        drop(w);
                        let rest = match e.throttle {
                            Some(Throttle::Concurrency) => CONCURRENCY_REST,
                            _ => EXTRA_LINK_RETRY,
                        };
                        s.open_after = Some(Instant::now() + rest);
                        log::info!(
                            "delivery {}: extra smarthost connection failed, going on with fewer: {e}",
                            s.n
                        );
                        return true;
                    }
                    drop(w);
                    self.open_failed(job, &e);
                    self.wake.notify_all();
                    return false;
                }
            }
        }
        let Some(link) = s.link.as_mut() else {
            return false;
        };
        self.deliver(link, job);
        link.last_used = Instant::now();
        link.fresh = false;
        false
    }

    /// open_failed pauses the whole queue: a login, certificate or connection problem is
    /// about the smarthost, not the message, so no message is bounced for it and no other is
    /// tried until the pause ends; then one attempt decides whether to resume.
    fn open_failed(&self, job: &Job, e: &ClientError) {
        let cfg = &job.cfg;
        let reason = match e.throttle {
            // The account is limited, not the message: said so, and never bounced for it.
            Some(t) => format!("throttled by the smarthost ({}): {e}", t.name()),
            None => e.to_string(),
        };
        self.state.error(e.stage, &e.message);
        let now = now_ms();
        let mut w = self.lock();
        if let Some(p) = w.pause.as_ref().filter(|p| !job.probe && p.until > now) {
            // Another sender's attempt, made at the same time, already paused the queue: this
            // one adds no backoff step and no log line, its message just waits the pause out.
            let until = p.until;
            drop(w);
            self.account_pause(cfg, &job.id, &reason, until, true);
            return;
        }
        let until = self.pause_locked(&mut w, cfg, e, &reason, now);
        self.publish(&w);
        let overdue: Vec<String> = w
            .index
            .by_id
            .iter()
            .filter(|(id, e)| {
                *id != &job.id
                    && !w.busy.contains(*id)
                    && e.arrival
                        .saturating_add(w.clock.shift_s(e.arrival))
                        .saturating_add(cfg.queue.lifetime.as_secs())
                        .saturating_mul(1000)
                        <= now
            })
            .map(|(id, _)| id.clone())
            .collect();
        // Claimed like a job, so no other sender works on them meanwhile.
        w.busy.extend(overdue.iter().cloned());
        drop(w);
        // The message this attempt was for shows the reason in `queue list`.
        self.account_pause(cfg, &job.id, &reason, until, true);
        // Others past their lifetime expire now instead of waiting for their turn.
        for id in &overdue {
            self.account_pause(cfg, id, &reason, until, false);
        }
        if !overdue.is_empty() {
            let mut w = self.lock();
            for id in &overdue {
                w.busy.remove(id);
            }
            self.publish(&w);
        }
    }

    /// pause_locked pauses delivery of the whole queue after `e` (one more backoff step),
    /// logging once per change of state; returns when the pause ends.
    fn pause_locked(
        &self,
        w: &mut Work,
        cfg: &Config,
        e: &ClientError,
        reason: &str,
        now: u64,
    ) -> u64 {
        let (level, before) = match &w.pause {
            Some(p) => (
                p.level.saturating_add(1),
                Some((p.stage, p.permanent, p.kind.clone())),
            ),
            None => (1, None),
        };
        let delay = pause_delay(e.throttle, level, cfg);
        let until = now + ms(delay);
        let shown = human(delay.as_secs().max(1));
        w.quota_since = match (e.throttle, w.quota_since) {
            (Some(Throttle::DailyQuota), None) => Some((now, false)),
            (Some(Throttle::DailyQuota), kept) => kept,
            _ => None,
        };
        match before {
            None => log::warn!("delivery paused for {shown}: {reason}"),
            Some(state) if state != (e.stage, e.permanent, e.kind.clone()) => {
                log::warn!("delivery still paused, for {shown}: {reason}")
            }
            Some(_) => log::debug!("delivery still paused, for {shown}: {reason}"),
        }
        w.pause = Some(Pause {
            until,
            level,
            stage: e.stage,
            permanent: e.permanent,
            kind: e.kind.clone(),
            reason: reason.to_string(),
        });
        until
    }

    /// throttled pauses the queue after a throttle reply that came with a message's outcome
    /// (not at connect): the outcome is settled by the caller; returns when the pause ends.
    fn throttled(&self, cfg: &Config, t: Throttle, text: &str, peer: &str) -> u64 {
        let e = ClientError {
            stage: Stage::Send,
            permanent: false,
            message: format!("{peer}: {text}"),
            kind: format!("throttle {}", t.name()),
            throttle: Some(t),
        };
        let reason = format!("throttled by the smarthost ({}): {e}", t.name());
        self.state.error(e.stage, &e.message);
        let now = now_ms();
        let mut w = self.lock();
        let until = match w.pause.as_ref().filter(|p| p.until > now) {
            Some(p) => p.until,
            None => self.pause_locked(&mut w, cfg, &e, &reason, now),
        };
        self.publish(&w);
        until
    }

    /// account_pause records a pause on one message: attempts and last error when it was the
    /// one tried, then the usual expiry and bookkeeping.
    fn account_pause(&self, cfg: &Config, id: &str, reason: &str, until: u64, tried: bool) {
        let mut env = match self.spool.read(id) {
            Ok(env) => self.latest(env),
            Err(e) => {
                self.unreadable(id, &e);
                return;
            }
        };
        if tried {
            env.attempts = env.attempts.saturating_add(1);
        }
        let outcome = Outcome {
            failures: Vec::new(),
            deferred: Some(reason.to_string()),
            next_due: Some(until),
            remote: None,
        };
        self.settle(cfg, env, outcome);
    }

    /// latest is the state of message `env.id` to go on from: what its last attempt left when
    /// the spool could not record it (`Entry::unsaved`), else `env`, read from its file.
    fn latest(&self, env: Envelope) -> Envelope {
        self.lock().index.unsaved(&env.id).unwrap_or(env)
    }

    /// unreadable handles a message the spool cannot give us.
    fn unreadable(&self, id: &str, e: &SpoolError) {
        // A file that went bad after the scan (cut short, replaced by something else) is set
        // aside as the scan would, not retried for ever.
        if let SpoolError::Corrupt(why) = e {
            self.spool.set_aside(id, why);
        }
        let mut w = self.lock();
        match e {
            SpoolError::NotFound(_) | SpoolError::Corrupt(_) => w.index.remove(id),
            _ => {
                log::error!("delivery {id}: cannot read it from the spool: {e}");
                w.index
                    .set_due(id, now_ms() + ms(UNREADABLE_RETRY), Source::Retry);
            }
        }
        self.publish(&w);
    }

    /// deliver sends one message over `link` and settles the outcome.
    fn deliver(&self, link: &mut Link, job: &Job) {
        let cfg = &job.cfg;
        let id = &job.id;
        let (env, mut reader, size) = match self.spool.open_message(id) {
            Ok(m) => m,
            Err(e) => return self.unreadable(id, &e),
        };
        // Recipients the unsaved state marks delivered or failed are not pending: not sent again.
        let mut env = self.latest(env);
        log::debug!(
            "delivery {id}: attempt {} ({})",
            env.attempts + 1,
            job.source.as_str()
        );
        // [aliases], applied now so a config change takes effect for queued mail too; the
        // address the sender gave stays in `orig`.
        let mut addrs: Vec<String> = Vec::new();
        let mut slot = vec![usize::MAX; env.recipients.len()];
        for (i, r) in env.recipients.iter_mut().enumerate() {
            if r.state != RcptState::Pending {
                continue;
            }
            let given = r.orig.take().unwrap_or_else(|| r.addr.clone());
            match rewrite::alias(&given, &cfg.aliases, &cfg.server.local_domains) {
                Some(to) if to != given => {
                    r.addr = to;
                    r.orig = Some(given);
                }
                _ => r.addr = given,
            }
            // Two names for one mailbox: one RCPT, one copy.
            slot[i] = match addrs.iter().position(|a| *a == r.addr) {
                Some(p) => p,
                None => {
                    addrs.push(r.addr.clone());
                    addrs.len() - 1
                }
            };
        }
        if addrs.is_empty() {
            return self.settle(cfg, env, Outcome::none());
        }
        let sender = rewrite::envelope_sender(&env.sender, cfg.rewrite.sender.as_deref());

        // [rewrite] from, and a message declared SMTPUTF8: only the header section is read into
        // memory; the body streams.
        let mut head = Vec::new();
        let mut head_ascii = false;
        let mut size = size;
        if cfg.rewrite.from.is_some() || env.smtputf8 {
            match rewrite::read_header_section(&mut reader, rewrite::MAX_HEADER_SECTION) {
                Ok((section, complete)) => {
                    head = match &cfg.rewrite.from {
                        Some(from) if complete => {
                            let h = rewrite::rewrite_from(&section, from);
                            size = size.saturating_sub(section.len() as u64) + h.len() as u64;
                            h
                        }
                        Some(_) => {
                            log::warn!("delivery {id}: header section too long or unterminated; From: not rewritten");
                            section
                        }
                        None => section,
                    };
                    head_ascii = complete && head.is_ascii();
                }
                Err(e) => {
                    let e = SpoolError::Io(format!("reading message {id}: {e}"));
                    return self.unreadable(id, &e);
                }
            }
        }
        // A client may declare SMTPUTF8 for a message that is ASCII after all. Only UTF-8 in the
        // addresses (the client checks those) or in the header section needs it of the smarthost
        // (RFC 6531 3.4); without that, a smarthost lacking SMTPUTF8 takes the message as it is,
        // as Postfix sends it, instead of a bounce.
        let smtputf8 = env.smtputf8 && !head_ascii;
        // Pacing: the whole message, recipients included, must fit the budget (`claim`
        // could only look at the rate). Over it, the message waits, untried, in order.
        {
            let mut w = self.lock();
            let now = now_ms();
            if let Some(slot) = w.pacer.next_slot(now, addrs.len()) {
                w.index.set_due(id, slot, Source::Paced);
                return;
            }
            w.pacer.record(now, addrs.len());
            w.pacer_dirty = true;
        }
        let mut message = Cursor::new(head).chain(&mut reader);
        let result = link
            .conn
            .send(&sender, &addrs, &mut message, size, env.eight_bit, smtputf8);
        env.attempts = env.attempts.saturating_add(1);
        let remote = link.conn.peer();
        let mut outcome = Outcome::none();
        outcome.remote = Some(remote.clone());
        let mut sent = Vec::new();
        // A throttle that came with the outcome: the account is limited; (kind, reply).
        let mut throttle: Option<(Throttle, String)> = None;
        match result {
            // The account is limited, not the message: as at connect, the queue pauses.
            Err(e) if e.throttle.is_some() => {
                self.state.error(e.stage, &e.message);
                return self.open_failed(job, &e);
            }
            Ok(results) => {
                let reply = link.last_reply();
                for (i, r) in env.recipients.iter_mut().enumerate() {
                    let Some(res) = results.get(slot[i]) else {
                        continue;
                    };
                    match res {
                        RcptOutcome::Accepted => {
                            r.state = RcptState::Delivered;
                            r.reply = Some(reply.clone());
                            sent.push(format!("<{}>", r.addr));
                        }
                        RcptOutcome::Transient(t) => {
                            r.reply = Some(t.clone());
                            if outcome.deferred.is_none() {
                                outcome.deferred = Some(format!("<{}>: {t}", r.addr));
                            }
                        }
                        RcptOutcome::Permanent(t) => {
                            r.state = RcptState::Failed;
                            r.reply = Some(t.clone());
                            outcome.failures.push(failure(r, t, false));
                        }
                        RcptOutcome::Throttled(kind, t) => {
                            r.reply = Some(t.clone());
                            if outcome.deferred.is_none() {
                                outcome.deferred = Some(format!("<{}>: {t}", r.addr));
                            }
                            if throttle
                                .as_ref()
                                .map_or(true, |(k, _)| *k == Throttle::TooManyRecipients)
                            {
                                throttle = Some((*kind, t.clone()));
                            }
                        }
                    }
                }
                if !sent.is_empty() {
                    self.state.lock().last_success = Some(message::now());
                    log::info!(
                        "delivery {id}: sent to smarthost ({reply}) to={}",
                        sent.join(",")
                    );
                }
            }
            Err(e) => {
                self.state.error(e.stage, &e.message);
                for r in env.recipients.iter_mut() {
                    if r.state != RcptState::Pending {
                        continue;
                    }
                    r.reply = Some(e.message.clone());
                    if e.permanent {
                        r.state = RcptState::Failed;
                        outcome.failures.push(failure(r, &e.message, false));
                    }
                }
                if !e.permanent {
                    outcome.deferred = Some(e.to_string());
                }
            }
        }
        match throttle {
            // RFC 5321 4.5.3.1.8 lets a server take fewer recipients: the rest go at once, in
            // a new transaction, not after a backoff. When it took none, the limit is not the
            // transaction's (recipients per hour, per day): at once would loop on the refusal,
            // so the queue pauses as for any throttle.
            Some((Throttle::TooManyRecipients, _)) if !sent.is_empty() => {
                outcome.next_due = Some(now_ms())
            }
            Some((kind, text)) => {
                outcome.next_due = Some(self.throttled(cfg, kind, &text, &remote))
            }
            None => {}
        }
        self.settle(cfg, env, outcome);
    }

    /// settle expires what is past its lifetime, queues the report for failed recipients,
    /// then removes the message (nothing pending) or writes its new state back. The report is
    /// committed before the original changes, so a crash in between can duplicate a report
    /// but never lose one.
    fn settle(&self, cfg: &Config, mut env: Envelope, mut outcome: Outcome) {
        let id = env.id.clone();
        let now = now_ms();
        // Arrived before a step of the clock: the age counts from after it, and the file keeps
        // that (the steps are known to this run only).
        let shift = self.lock().clock.shift_s(env.arrival);
        env.arrival = env.arrival.saturating_add(shift);
        let expires = env
            .arrival
            .saturating_add(cfg.queue.lifetime.as_secs())
            .saturating_mul(1000);
        let pending = |env: &Envelope| env.recipients.iter().any(|r| r.state == RcptState::Pending);
        if pending(&env) && now >= expires {
            let last = outcome
                .deferred
                .clone()
                .or_else(|| env.last_error.clone())
                .unwrap_or_else(|| "none".to_string());
            for r in env
                .recipients
                .iter_mut()
                .filter(|r| r.state == RcptState::Pending)
            {
                let last = r.reply.clone().unwrap_or_else(|| last.clone());
                let why = format!(
                    "gave up after {}: last error {last}",
                    long_duration(cfg.queue.lifetime)
                );
                r.state = RcptState::Failed;
                let mut f = failure(r, &last, true);
                f.reason = why.clone();
                r.reply = Some(why);
                outcome.failures.push(f);
            }
        }
        if !outcome.failures.is_empty() && !self.report(cfg, &env, &outcome) {
            // The report could not be written: the message stays, its failed recipients pending,
            // so the failure is told with a later attempt instead of never.
            for r in env.recipients.iter_mut() {
                if outcome.failures.iter().any(|f| f.recipient == r.addr) {
                    r.state = RcptState::Pending;
                }
            }
            outcome.deferred = Some("the failure report could not be queued".to_string());
        }
        let mut w;
        if !pending(&env) {
            let removed = self.spool.delete_delivered(&id);
            w = self.lock();
            match removed {
                Ok(()) | Err(SpoolError::NotFound(_)) => {
                    log::debug!("delivery {id}: done, removed from the queue");
                    w.index.remove(&id);
                }
                Err(e) => {
                    // Delivered but not removable: its file may still say pending (a rewrite
                    // failed before), so the done state stays in memory and the next attempt,
                    // with nothing left to send, removes it. A restart meanwhile sends it again.
                    log::error!(
                        "delivery {id}: cannot remove it from the queue: {e}; kept in memory; retried with the next attempt"
                    );
                    let retry = backoff(
                        env.attempts.max(1),
                        cfg.queue.retry_min,
                        cfg.queue.retry_max,
                        jitter(),
                    );
                    w.index.keep_unsaved(env);
                    w.index.set_due(&id, now + ms(retry), Source::Retry);
                }
            }
        } else {
            let attempts = env.attempts.max(1);
            let due = outcome
                .next_due
                .unwrap_or_else(|| {
                    now + ms(backoff(
                        attempts,
                        cfg.queue.retry_min,
                        cfg.queue.retry_max,
                        jitter(),
                    ))
                })
                // One last try when the lifetime runs out rather than a retry_max later.
                .min(expires.max(now + ms(MIN_DELAY)));
            let reason = outcome
                .deferred
                .clone()
                .unwrap_or_else(|| "not delivered".to_string());
            env.next_attempt = due.div_ceil(1000);
            env.last_error = Some(reason.clone());
            let to: Vec<String> = env
                .recipients
                .iter()
                .filter(|r| r.state == RcptState::Pending)
                .map(|r| format!("<{}>", r.addr))
                .collect();
            if outcome.next_due.is_none() {
                log::info!(
                    "delivery {id}: deferred: {reason}; to={}; retry in {}",
                    to.join(","),
                    human(due.saturating_sub(now).div_ceil(1000))
                );
            }
            let written = self.spool.update(&env);
            w = self.lock();
            match written {
                Ok(()) => {
                    w.index.saved(&id);
                    w.index.set_due(&id, due, Source::Retry);
                }
                Err(SpoolError::NotFound(_)) => w.index.remove(&id),
                Err(e) => {
                    // The file still says pending for recipients the smarthost accepted: the
                    // next attempt goes on from this state instead, and its settle rewrites it.
                    log::error!(
                        "delivery {id}: cannot record the attempt: {e}; kept in memory; retried with the next attempt"
                    );
                    w.index.keep_unsaved(env);
                    w.index.set_due(&id, due, Source::Retry);
                }
            }
        }
        self.publish(&w);
    }

    /// report logs each failed recipient and queues the delivery status notification; false when
    /// the report could not be written (it is owed: the caller keeps the message).
    fn report(&self, cfg: &Config, env: &Envelope, outcome: &Outcome) -> bool {
        let id = &env.id;
        for f in &outcome.failures {
            log::warn!("delivery {id}: bounced <{}>: {}", f.recipient, f.reason);
        }
        let headers = match self.spool.open_message(id) {
            Ok((_, mut r, _)) => original_headers(&mut r),
            Err(_) => Vec::new(),
        };
        match bounce::queue(
            &self.spool,
            cfg,
            env,
            &outcome.failures,
            &headers,
            outcome.remote.as_deref(),
        ) {
            Ok(Disposition::Queued { id: bid, to }) => {
                log::info!("delivery {id}: report {bid} queued for <{to}>");
                let mut w = self.lock();
                let arrival = message::now();
                let e = Entry {
                    due: 0,
                    arrival,
                    added: Instant::now(),
                    source: Source::Bounce,
                    unsaved: None,
                };
                w.index.insert(&bid, e);
                w.storm.arrived(arrival, 1);
                true
            }
            Ok(Disposition::Dropped(why)) => {
                log::warn!("delivery {id}: no report sent ({why}); the failure is only logged");
                true
            }
            Err(e) => {
                log::error!(
                    "delivery {id}: cannot queue the report for <{}>: {e}; the message stays queued and the report is tried again with its next attempt",
                    env.sender
                );
                false
            }
        }
    }
}

impl Outcome {
    fn none() -> Outcome {
        Outcome {
            failures: Vec::new(),
            deferred: None,
            next_due: None,
            remote: None,
        }
    }
}

/// failure describes a failed recipient for the report from the reply or error `text`.
fn failure(r: &crate::spool::Recipient, text: &str, expired: bool) -> Failure {
    let diagnostic = bounce::smtp_reply_in(text);
    Failure {
        recipient: r.addr.clone(),
        orig: r.orig.clone(),
        reason: text.to_string(),
        status: bounce::status_for(diagnostic.as_deref().unwrap_or(""), expired),
        diagnostic,
    }
}

/// original_headers reads the stored message's header section for the report.
fn original_headers(r: &mut impl BufRead) -> Vec<u8> {
    rewrite::read_header_section(r, bounce::MAX_ORIGINAL_HEADERS + 1000)
        .map(|(h, _)| h)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_is_listed_again_only_when_its_time_moved_or_was_too_recent() {
        let old = SystemTime::now() - Duration::from_secs(60);
        let mut l = Listed::default();
        assert!(l.due(Some(old)), "the first time");
        assert!(!l.due(Some(old)), "nothing changed");
        let later = old + Duration::from_secs(1);
        assert!(l.due(Some(later)), "a name came or went");
        assert!(!l.due(Some(later)));
        assert!(l.due(None), "unreadable: list");
        assert!(l.due(None));
        // A time within STAMP_SETTLED of the listing may hide a change in the same tick.
        let recent = SystemTime::now();
        assert!(l.due(Some(recent)));
        assert!(l.due(Some(recent)), "too recent to trust");
        // Forced now and then whatever the time says.
        let mut f = Listed::default();
        assert!(f.due(Some(old)));
        f.at = Some((SystemTime::now(), Instant::now() - RESCAN_FORCED));
        assert!(f.due(Some(old)));
    }

    #[test]
    fn backoff_doubles_caps_and_jitters_down() {
        let s = Duration::from_secs;
        let cases = [
            // attempts, min, max, jitter, want
            (1, s(60), s(3600), 0.0, s(60)),
            (2, s(60), s(3600), 0.0, s(120)),
            (3, s(60), s(3600), 0.0, s(240)),
            (7, s(60), s(3600), 0.0, s(3600)),
            (1000, s(60), s(3600), 0.0, s(3600)),
            (0, s(60), s(3600), 0.0, s(60)),
            (1, s(60), s(3600), 0.5, s(54)),
            (
                7,
                s(60),
                s(3600),
                0.999_999,
                Duration::from_millis(2_880_000),
            ),
            (1, s(0), s(0), 0.0, MIN_DELAY),
            (1, s(1), s(2), 1.0, Duration::from_millis(800)),
        ];
        for (attempts, min, max, j, want) in cases {
            let got = backoff(attempts, min, max, j);
            let diff = got.as_millis().abs_diff(want.as_millis());
            assert!(
                diff <= 1,
                "backoff({attempts}, {min:?}, {max:?}, {j}) = {got:?}, want {want:?}"
            );
        }
    }

    #[test]
    fn jitter_stays_in_range_and_varies() {
        let xs: Vec<f64> = (0..200).map(|_| jitter()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let distinct: BTreeSet<u64> = xs.iter().map(|x| (x * 1e6) as u64).collect();
        assert!(distinct.len() > 150);
    }

    #[test]
    fn durations_in_words() {
        let s = Duration::from_secs;
        let cases = [
            (s(5 * 86_400), "5 days"),
            (s(86_400), "1 day"),
            (s(2), "2 seconds"),
            (s(3600), "1 hour"),
            (s(90), "90 seconds"),
            (s(120), "2 minutes"),
        ];
        for (d, want) in cases {
            assert_eq!(long_duration(d), want);
        }
    }

    #[test]
    fn index_orders_by_due_then_age() {
        let mut ix = Index::default();
        let e = |due| Entry {
            due,
            arrival: 0,
            added: Instant::now(),
            source: Source::Start,
            unsaved: None,
        };
        ix.insert("B", e(0));
        ix.insert("A", e(5000));
        ix.insert("C", e(0));
        assert_eq!(ix.first_due(), Some((0, "B".to_string())));
        ix.set_due("B", 9000, Source::Retry);
        assert_eq!(ix.first_due(), Some((0, "C".to_string())));
        ix.remove("C");
        assert_eq!(ix.first_due(), Some((5000, "A".to_string())));
        ix.insert("A", e(1)); // re-insert replaces
        assert_eq!(ix.by_due.len(), 2);
        assert_eq!(ix.first_due(), Some((1, "A".to_string())));
    }

    /// A runner's shared state with `n` messages due now (M000, M001, ...), no thread started.
    fn work(n: usize, smarthost: bool) -> Work {
        let host = if smarthost {
            "[smarthost]\nhost = 127.0.0.1:2526\n"
        } else {
            ""
        };
        let text = format!(
            "[server]\nlisten = 127.0.0.1:2525\nhostname = h.test\n{host}[queue]\ndir = /tmp/x\n"
        );
        let cfg = Config::parse(Path::new("t.ini"), &text).unwrap();
        let mut ix = Index::default();
        for i in 0..n {
            let e = Entry {
                due: 0,
                arrival: 0,
                added: Instant::now(),
                source: Source::Start,
                unsaved: None,
            };
            ix.insert(&format!("M{i:03}"), e);
        }
        Work::new(Arc::new(cfg), ix, Pacer::new(None, None))
    }

    #[test]
    fn claim_hands_each_message_to_one_sender() {
        let mut w = work(4, true);
        w.links = 1;
        let now = now_ms();
        let got: Vec<String> = (0..4)
            .map(|_| w.claim(true, true, now).unwrap().id)
            .collect();
        assert_eq!(got, ["M000", "M001", "M002", "M003"]);
        // All in hand: the next sender waits instead of getting one twice.
        assert_eq!(w.claim(true, true, now).unwrap_err(), MAX_SLEEP);
        // Handed back (still due): it is claimable again, by one sender.
        w.busy.remove("M002");
        assert_eq!(w.claim(true, true, now).unwrap().id, "M002");
        assert!(w.claim(true, true, now).is_err());
        // Not due yet: wait until it is.
        w.busy.clear();
        for id in ["M000", "M001", "M002", "M003"] {
            w.index.set_due(id, now + 5000, Source::Retry);
        }
        assert_eq!(
            w.claim(true, true, now).unwrap_err(),
            Duration::from_millis(5000)
        );
    }

    #[test]
    fn claim_under_contention_never_doubles_a_message() {
        let w = Arc::new(Mutex::new(work(400, true)));
        w.lock().unwrap().links = 1;
        let in_hand = Arc::new(Mutex::new(BTreeSet::new()));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (w, in_hand, sent) = (w.clone(), in_hand.clone(), sent.clone());
                thread::spawn(move || loop {
                    let job = match w.lock().unwrap().claim(true, true, now_ms()) {
                        Ok(job) => job,
                        Err(_) => return,
                    };
                    assert!(
                        in_hand.lock().unwrap().insert(job.id.clone()),
                        "{} handed to two senders",
                        job.id
                    );
                    thread::yield_now();
                    in_hand.lock().unwrap().remove(&job.id);
                    sent.lock().unwrap().push(job.id.clone());
                    let mut w = w.lock().unwrap();
                    w.index.remove(&job.id);
                    w.busy.remove(&job.id);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let sent = sent.lock().unwrap();
        let distinct: BTreeSet<&String> = sent.iter().collect();
        assert_eq!((sent.len(), distinct.len()), (400, 400));
    }

    #[test]
    fn pause_and_probe_rules() {
        let now = now_ms();
        #[derive(Clone, Copy, Debug)]
        enum P {
            None,
            Active,
            Over,
        }
        // links open, pause, probing, has_link, may_open -> Some(probe) or None (wait)
        let cases = [
            // Nothing open: the first sender probes, the others wait for its outcome.
            (0, P::None, false, false, true, Some(true)),
            (0, P::None, true, false, true, None),
            // A connection works: others open theirs in parallel, unless told to hold off.
            (1, P::None, false, false, true, Some(false)),
            (1, P::None, true, false, true, Some(false)),
            (1, P::None, false, false, false, None),
            (1, P::None, false, true, false, Some(false)),
            // A pause stops everyone, connected or not.
            (0, P::Active, false, false, true, None),
            (1, P::Active, false, true, true, None),
            (2, P::Active, false, false, true, None),
            // Pause over: one attempt decides, however many senders there are.
            (0, P::Over, false, false, true, Some(true)),
            (0, P::Over, true, false, true, None),
            (1, P::Over, true, false, true, None),
            (1, P::Over, false, false, true, Some(true)),
        ];
        for (i, (links, pause, probing, has_link, may_open, want)) in cases.into_iter().enumerate()
        {
            let mut w = work(3, true);
            w.links = links;
            w.probing = probing;
            let until = match pause {
                P::None => None,
                P::Active => Some(now + 30_000),
                P::Over => Some(now.saturating_sub(1)),
            };
            w.pause = until.map(|until| Pause {
                until,
                level: 1,
                stage: Stage::Auth,
                permanent: true,
                kind: "535".to_string(),
                reason: "535".to_string(),
            });
            let got = w.claim(has_link, may_open, now);
            assert_eq!(
                got.as_ref().ok().map(|j| j.probe),
                want,
                "case {i}: {got:?}"
            );
            if let P::Active = pause {
                assert_eq!(got.unwrap_err(), Duration::from_millis(30_000), "case {i}");
            }
            if want == Some(true) {
                assert!(w.probing, "case {i}: a probe is under way");
            }
        }
    }

    #[test]
    fn one_probe_after_a_pause_then_everyone() {
        let now = now_ms();
        let mut w = work(5, true);
        w.pause = Some(Pause {
            until: now + 1000,
            level: 2,
            stage: Stage::Connect,
            permanent: false,
            kind: String::new(),
            reason: "refused".to_string(),
        });
        for _ in 0..3 {
            assert!(w.claim(false, true, now).is_err(), "paused");
        }
        let later = now + 1000;
        let probe = w.claim(false, true, later).unwrap();
        assert!(probe.probe);
        for _ in 0..3 {
            assert!(w.claim(false, true, later).is_err(), "one probe only");
        }
        // The probe's connection opened (what run_job does): the pause ends, all may go.
        w.probing = false;
        w.links = 1;
        w.pause = None;
        let a = w.claim(false, true, later).unwrap();
        let b = w.claim(false, true, later).unwrap();
        assert!(!a.probe && !b.probe);
        let ids: BTreeSet<String> = [probe.id, a.id, b.id].into_iter().collect();
        assert_eq!(ids.len(), 3);
    }

    #[test]
    fn hold_mode_and_stopping_hand_out_nothing() {
        let mut w = work(2, false);
        assert_eq!(w.claim(false, true, now_ms()).unwrap_err(), MAX_SLEEP);
        let mut w2 = work(2, true);
        w2.stopping = true;
        assert!(w2.claim(true, true, now_ms()).is_err());
        assert!(w.busy.is_empty() && w2.busy.is_empty());
    }

    #[test]
    fn flush_trigger_is_0640_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        // Regression (issue 7 review): `queue flush` wrote the trigger with fs::write, so its
        // mode followed the caller's umask (0666 under umask 000).
        let dir = std::env::temp_dir().join(format!("picorelay-flush-mode-{}", std::process::id()));
        let spool = Spool::open(&dir, 0).unwrap();
        assert_eq!(request_flush(&spool).unwrap(), 0);
        let mode = std::fs::metadata(dir.join(FLUSH_TRIGGER))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o640);
        assert!(take_flush_trigger(&spool));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
