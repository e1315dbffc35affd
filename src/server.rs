//! Listeners, the accept loop, the fixed worker pool, connection limits and the
//! socket side of a session (line reading, pipelining, DATA into the spool).

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::crypt;
use crate::message::{self, Trace, MAX_RECEIVED};
use crate::pressure::{self, View};
use crate::session::{self, Action, Authenticator, DataOutcome, Policy, Session};
use crate::smtp::command::{scan_line, skip_line, LineScan, MAX_AUTH_LINE};
use crate::smtp::data::DataReader;
use crate::smtp::reply::{self, Reply};
use crate::spool::{Envelope, Spool};
use crate::sys;
use crate::tls::{ServerTls, Stream};

/// Accept backlog of each listener: a burst of connects (1000 at once) waits in
/// the kernel for the accept loop instead of being dropped and retried.
const LISTEN_BACKLOG: i32 = 1024;

/// How long a connection may wait for a free worker before it gets 421 4.3.2.
const QUEUE_WAIT: Duration = Duration::from_secs(3);

/// The TLS handshake (STARTTLS or implicit TLS) must be over within this, or within
/// command_timeout when that is shorter: a whole-handshake deadline, not one per read.
const TLS_HANDSHAKE: Duration = Duration::from_secs(30);

/// DATA must average at least this many bytes a second once its grace is over: a 10 MB
/// message over a link of a few hundred KB/s passes, one byte a second does not hold a
/// worker for hours. The grace is data_timeout, at most DATA_GRACE.
const MIN_DATA_RATE: u64 = 1024;
const DATA_GRACE: Duration = Duration::from_secs(30);

/// Past `max_message_size`, DATA is read on to its end (RFC 1870 6.3: then 552), but only up to
/// this many times the limit more, or DISCARD_MIN when that is more: a client that streams
/// without end would hold a worker for ever at any rate the DATA rule allows. Then 552 and the
/// connection is closed. A client sending a real message a few times too big still gets its
/// 552 at the end, in step.
const DISCARD_PAST_LIMIT: u64 = 4;
const DISCARD_MIN: u64 = 64 << 20;

/// How long a client that goes on sending after its last reply is read and ignored before the
/// connection is closed (`Conn::hang_up_on_a_talker`).
const FAREWELL_DRAIN: Duration = Duration::from_secs(2);

/// How long the reply to a session the pool ends may take to write.
const FAREWELL_WRITE: Duration = Duration::from_secs(1);

/// Input read buffer per session; a command line is at most MAX_LINE.
const READ_CHUNK: usize = 16 * 1024;

/// A line longer than MAX_LINE is skipped to its end, but not forever: past
/// this many octets without a line end the client is not speaking SMTP.
const MAX_SKIP: usize = 64 * 1024;

/// Per-address AUTH failure brake: this many failures within BRAKE_WINDOW
/// blocks new connections from that address for BRAKE_BLOCK.
const BRAKE_FAILURES: u32 = 10;
const BRAKE_WINDOW: Duration = Duration::from_secs(600);
const BRAKE_BLOCK: Duration = Duration::from_secs(600);
/// The brake remembers at most this many addresses (memory bound).
const BRAKE_MAX_ENTRIES: usize = 10_000;

/// A bound listener and whether it speaks implicit TLS (RFC 8314).
pub struct Listener {
    pub socket: TcpListener,
    pub implicit_tls: bool,
}

/// bind opens every configured listener; a failure names the address. An IPv6 address on a
/// host with IPv6 turned off (`ipv6.disable=1`, `disable_ipv6` on lo: the default listen has
/// `[::1]:25`) is skipped with a warning while another listener is up: refusing to start would
/// leave every device and `sendmail` message without a relay over a protocol nobody can use.
pub fn bind(cfg: &Config) -> Result<Vec<Listener>, String> {
    let plain = cfg.server.listen.iter().map(|a| (a, false));
    let tls = cfg.server.listen_tls.iter().map(|a| (a, true));
    let mut listeners = Vec::new();
    let mut skipped = Vec::new();
    for (addr, implicit_tls) in plain.chain(tls) {
        let socket = match TcpListener::bind(addr) {
            Ok(s) => s,
            Err(e) if ipv6_unavailable(addr, &e) => {
                skipped.push(format!("cannot listen on {addr}: {e}"));
                continue;
            }
            Err(e) => return Err(format!("cannot listen on {addr}: {e}")),
        };
        if let Err(e) = sys::set_backlog(&socket, LISTEN_BACKLOG) {
            log::debug!("{addr}: cannot raise the listen backlog: {e}");
        }
        listeners.push(Listener {
            socket,
            implicit_tls,
        });
    }
    if listeners.is_empty() && !skipped.is_empty() {
        return Err(skipped.remove(0));
    }
    for why in skipped {
        log::warn!("{why}: IPv6 is off on this host; the address is skipped (remove it from [server] listen or listen_tls)");
    }
    Ok(listeners)
}

/// ipv6_unavailable: binding IPv6 `addr` failed because this host has no IPv6 (the family
/// is missing, or its loopback address ::1 is), not because the address is taken or is
/// another host's (those stop start-up as before).
fn ipv6_unavailable(addr: &SocketAddr, e: &io::Error) -> bool {
    addr.is_ipv6()
        && (e.raw_os_error() == Some(libc::EAFNOSUPPORT)
            || (e.kind() == io::ErrorKind::AddrNotAvailable && addr.ip().is_loopback()))
}

/// Users verifies AUTH credentials against `[users]` (SHA-crypt hashes).
pub struct Users(pub std::collections::BTreeMap<String, String>);

/// A well-formed hash that matches nothing, so that an unknown user costs the
/// same time as a wrong password (no user enumeration by timing).
const DUMMY_HASH: &str = "$6$picorelaydummy$gfJ0.BE9yHRlIqU0wKIkZUBAOG1EdHjVBWGn2lZLC2wJr6YbSrK7B5Hb0vfmdyb1pd8SbyMeH9mKZ/WFr6BJp/";

impl Authenticator for Users {
    fn verify(&self, user: &str, password: &[u8]) -> bool {
        match self.0.get(user) {
            Some(hash) => crypt::verify(password, hash),
            None => {
                crypt::verify(password, DUMMY_HASH);
                false
            }
        }
    }
}

/// Shared is the state every worker sees.
pub struct Shared {
    pub config: RwLock<Arc<Config>>,
    pub users: RwLock<Arc<Users>>,
    pub spool: Arc<Spool>,
    pub tls: Option<ServerTls>,
    shutting_down: AtomicBool,
    next_session: AtomicU64,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    brake: Mutex<HashMap<IpAddr, BrakeEntry>>,
    /// The sessions being served, as the pool sees them (eviction, stress mode, shutdown).
    active: Mutex<HashMap<u64, Arc<Slot>>>,
    /// Sessions ended for a waiting client since start (`status`).
    evictions: AtomicU64,
    /// The zero of the sessions' idle clocks.
    epoch: Instant,
    /// The last time the spool could not take a message, and why (`status`).
    accept_error: Mutex<Option<(u64, String)>>,
    /// Called after each message is committed (wakes the delivery runner).
    pub on_queued: Box<dyn Fn(&str) + Send + Sync>,
}

struct BrakeEntry {
    failures: u32,
    window_start: Instant,
    blocked_until: Option<Instant>,
}

/// One session being served, as the pool sees it. The session moves itself between Busy and
/// Idle; the accept loop may move an Idle one to Evicted or Stale (one compare-and-swap
/// each way, so a session that has just started a command is never ended for it) and then
/// shuts the read side of its socket, which ends the blocked read at once.
struct Slot {
    ip: IpAddr,
    /// A clone of the session's socket.
    tcp: TcpStream,
    state: AtomicU8,
    /// When it became Idle, milliseconds since `Shared::epoch`.
    idle_since: AtomicU64,
}

const BUSY: u8 = 0;
const IDLE: u8 = 1;
const EVICTED: u8 = 2;
const STALE: u8 = 3;

/// Why the pool ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// For a client waiting for a worker.
    Evicted,
    /// Idle too long while the pool is nearly full.
    Stale,
}

impl Slot {
    /// idle: waiting for a command outside a transaction, from now on (kept when already so).
    fn idle(&self, now_ms: u64) {
        if self
            .state
            .compare_exchange(BUSY, IDLE, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            self.idle_since.store(now_ms, Ordering::SeqCst);
        }
    }

    /// busy claims the session for a command; Err when the pool has ended it meanwhile.
    fn busy(&self) -> Result<(), Ending> {
        match self
            .state
            .compare_exchange(IDLE, BUSY, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) | Err(BUSY) => Ok(()),
            Err(EVICTED) => Err(Ending::Evicted),
            Err(_) => Err(Ending::Stale),
        }
    }

    /// ended says whether the pool has ended the session.
    fn ended(&self) -> Option<Ending> {
        match self.state.load(Ordering::SeqCst) {
            EVICTED => Some(Ending::Evicted),
            STALE => Some(Ending::Stale),
            _ => None,
        }
    }

    /// end ends an Idle session: false when it is busy (or already ended) by now.
    fn end(&self, how: Ending) -> bool {
        let to = match how {
            Ending::Evicted => EVICTED,
            Ending::Stale => STALE,
        };
        let ok = self
            .state
            .compare_exchange(IDLE, to, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if ok {
            let _ = self.tcp.shutdown(Shutdown::Read);
        }
        ok
    }

    /// view is what the pressure decisions see.
    fn view(&self, id: u64, now_ms: u64) -> View {
        let idle = (self.state.load(Ordering::SeqCst) == IDLE).then(|| {
            Duration::from_millis(now_ms.saturating_sub(self.idle_since.load(Ordering::SeqCst)))
        });
        View {
            id,
            ip: self.ip,
            idle,
        }
    }
}

/// The worker pool's figures for `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolFigures {
    /// Workers in the pool.
    pub workers: usize,
    /// Sessions being served.
    pub busy: usize,
    /// Connections waiting for a worker.
    pub waiting: usize,
    /// Idle sessions ended for a waiting client, since start.
    pub evictions: u64,
    /// Connections answered with a refusal at connect (busy, limits, shutdown), since start.
    pub refusals: u64,
}

impl Shared {
    /// Shared::new bundles what the server needs.
    pub fn new(
        config: Arc<Config>,
        spool: Arc<Spool>,
        tls: Option<ServerTls>,
        on_queued: Box<dyn Fn(&str) + Send + Sync>,
    ) -> Shared {
        let users = Arc::new(Users(config.users.clone()));
        Shared {
            config: RwLock::new(config),
            users: RwLock::new(users),
            spool,
            tls,
            shutting_down: AtomicBool::new(false),
            next_session: AtomicU64::new(u64::from(std::process::id() & 0xfff) << 20),
            per_ip: Mutex::new(HashMap::new()),
            brake: Mutex::new(HashMap::new()),
            active: Mutex::new(HashMap::new()),
            evictions: AtomicU64::new(0),
            epoch: Instant::now(),
            accept_error: Mutex::new(None),
            on_queued,
        }
    }

    fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .map(|c| Arc::clone(&c))
            .unwrap_or_else(|p| Arc::clone(&p.into_inner()))
    }

    fn users(&self) -> Arc<Users> {
        self.users
            .read()
            .map(|c| Arc::clone(&c))
            .unwrap_or_else(|p| Arc::clone(&p.into_inner()))
    }

    /// last_accept_error is when and why the spool last refused or lost a
    /// message being received (452 4.3.1 to the client), for `status`.
    pub fn last_accept_error(&self) -> Option<(u64, String)> {
        lock(&self.accept_error).clone()
    }

    fn note_accept_error(&self, why: String) {
        *lock(&self.accept_error) = Some((message::now(), why));
    }

    /// now_ms is the sessions' idle clock.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// braked tells whether new connections from `ip` are refused for now.
    fn braked(&self, ip: IpAddr) -> bool {
        let mut map = lock(&self.brake);
        match map.get(&ip).and_then(|e| e.blocked_until) {
            Some(until) if until > Instant::now() => true,
            Some(_) => {
                map.remove(&ip);
                false
            }
            None => false,
        }
    }

    /// note_auth_failures adds a session's AUTH failures to its address's count.
    fn note_auth_failures(&self, ip: IpAddr, n: u32) {
        if n == 0 || is_local_client(ip) {
            return;
        }
        let now = Instant::now();
        let mut map = lock(&self.brake);
        if map.len() >= BRAKE_MAX_ENTRIES {
            map.retain(|_, e| {
                e.blocked_until.is_some_and(|u| u > now) || now - e.window_start < BRAKE_WINDOW
            });
            if map.len() >= BRAKE_MAX_ENTRIES {
                return;
            }
        }
        let e = map.entry(ip).or_insert(BrakeEntry {
            failures: 0,
            window_start: now,
            blocked_until: None,
        });
        if now - e.window_start > BRAKE_WINDOW {
            e.failures = 0;
            e.window_start = now;
        }
        e.failures += n;
        if e.failures >= BRAKE_FAILURES && e.blocked_until.is_none() {
            e.blocked_until = Some(now + BRAKE_BLOCK);
            log::warn!(
                "{ip}: {} failed AUTH attempts, refusing connections for {}s",
                e.failures,
                BRAKE_BLOCK.as_secs()
            );
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// is_local_client: 127.0.0.1 and ::1 exactly (interface.md), also when
/// 127.0.0.1 arrives IPv4-mapped on a v6 socket.
pub fn is_local_client(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4 == Ipv4Addr::LOCALHOST,
        IpAddr::V6(v6) => {
            v6 == Ipv6Addr::LOCALHOST || v6.to_ipv4_mapped() == Some(Ipv4Addr::LOCALHOST)
        }
    }
}

/// A connection waiting for a worker.
struct Pending {
    tcp: TcpStream,
    peer: SocketAddr,
    implicit_tls: bool,
    since: Instant,
}

/// The bounded hand-off between the accept loop and the workers.
struct Pool {
    queue: Mutex<VecDeque<Pending>>,
    ready: Condvar,
    /// How many connections may wait beyond those idle workers are about to take.
    capacity: usize,
    /// Workers waiting for a connection; changed only with `queue` locked, so
    /// `admit` sees how many queued connections are about to be taken.
    idle: AtomicUsize,
    closed: AtomicBool,
}

/// Server runs the accept loop and the workers until told to stop.
pub struct Server {
    shared: Arc<Shared>,
    listeners: Vec<Listener>,
    pool: Arc<Pool>,
    workers: Vec<thread::JoinHandle<()>>,
}

impl Server {
    /// Server::start spawns the fixed pool of `server.workers` threads.
    pub fn start(shared: Arc<Shared>, listeners: Vec<Listener>) -> io::Result<Server> {
        let n = shared.config().server.workers;
        let pool = Arc::new(Pool {
            queue: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            capacity: n.max(1),
            idle: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        });
        let mut workers = Vec::with_capacity(n);
        for i in 0..n {
            let (shared, pool) = (Arc::clone(&shared), Arc::clone(&pool));
            workers.push(
                thread::Builder::new()
                    .name(format!("worker-{i}"))
                    .stack_size(512 * 1024)
                    .spawn(move || worker(shared, pool))?,
            );
        }
        for l in &listeners {
            l.socket.set_nonblocking(true)?;
        }
        Ok(Server {
            shared,
            listeners,
            pool,
            workers,
        })
    }

    /// The file descriptors the main loop polls for new connections.
    pub fn fds(&self) -> Vec<std::os::fd::RawFd> {
        self.listeners
            .iter()
            .map(|l| sys::fd_of(&l.socket))
            .collect()
    }

    /// local_addrs lists the bound addresses (tests bind port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.socket.local_addr().ok())
            .collect()
    }

    /// accept_ready accepts every waiting connection on listener `idx`.
    pub fn accept_ready(&self, idx: usize) {
        let Some(l) = self.listeners.get(idx) else {
            return;
        };
        loop {
            match l.socket.accept() {
                Ok((tcp, peer)) => self.admit(tcp, peer, l.implicit_tls),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors (EMFILE, ENFILE) or memory: the connection stays in
                    // the backlog and poll reports it again at once. Pausing lets sessions end
                    // and free descriptors; the waiting devices are served then, not refused.
                    log_accept_error(&e);
                    std::thread::sleep(ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }

    /// admit applies the per-address limits and hands the connection to the pool.
    fn admit(&self, tcp: TcpStream, peer: SocketAddr, implicit_tls: bool) {
        let ip = canonical_ip(peer.ip());
        if self.shared.braked(ip) {
            refuse(
                tcp,
                &reply::too_many_auth_failures(),
                peer,
                "address blocked after failed AUTH attempts",
            );
            return;
        }
        let limit = self.shared.config().server.max_connections_per_ip;
        if limit > 0 && !is_local_client(ip) {
            let mut per_ip = lock(&self.shared.per_ip);
            let n = per_ip.entry(ip).or_insert(0);
            if *n >= limit {
                drop(per_ip);
                refuse(
                    tcp,
                    &reply::too_many_connections(),
                    peer,
                    "too many connections from this address",
                );
                return;
            }
            *n += 1;
        }
        let mut q = lock(&self.pool.queue);
        // Connections idle workers are about to take are not waiting.
        let mut bumped = None;
        if q.len() >= self.pool.capacity + self.pool.idle.load(Ordering::SeqCst) {
            // The queue is full. One address reconnecting in a loop must not keep it full for
            // everyone: a newcomer from an address holding fewer sessions takes the place of
            // the newest waiter of the address holding the most.
            match self.bump_candidate(&q, ip) {
                Some(i) => bumped = q.remove(i),
                None => {
                    drop(q);
                    release_ip(&self.shared, ip);
                    refuse(
                        tcp,
                        &reply::service_unavailable("too busy, try again later"),
                        peer,
                        "no worker free",
                    );
                    return;
                }
            }
        }
        q.push_back(Pending {
            tcp,
            peer,
            implicit_tls,
            since: Instant::now(),
        });
        drop(q);
        self.pool.ready.notify_one();
        if let Some(p) = bumped {
            release_ip(&self.shared, canonical_ip(p.peer.ip()));
            refuse(
                p.tcp,
                &reply::service_unavailable("too busy, try again later"),
                p.peer,
                "no worker free (its place went to a client from a quieter address)",
            );
        }
        self.relieve();
    }

    /// bump_candidate picks the waiter to refuse so a newcomer from `ip` can wait instead:
    /// the newest waiter of the address holding the most sessions and waiting connections,
    /// when that address holds more than `ip` would with the newcomer. None: refuse the
    /// newcomer (its own address is among the busiest).
    fn bump_candidate(&self, q: &VecDeque<Pending>, ip: IpAddr) -> Option<usize> {
        let mut held: HashMap<IpAddr, usize> = HashMap::new();
        for slot in lock(&self.shared.active).values() {
            *held.entry(slot.ip).or_insert(0) += 1;
        }
        for p in q.iter() {
            *held.entry(canonical_ip(p.peer.ip())).or_insert(0) += 1;
        }
        let newcomer = held.get(&ip).copied().unwrap_or(0) + 1;
        q.iter()
            .enumerate()
            .map(|(i, p)| {
                (
                    held.get(&canonical_ip(p.peer.ip())).copied().unwrap_or(0),
                    i,
                )
            })
            .filter(|(n, _)| *n > newcomer)
            .max()
            .map(|(_, i)| i)
    }

    /// tick runs from the accept loop a few times a second: it makes room for connections
    /// waiting for a worker, applies stress mode, and refuses what waited too long.
    pub fn tick(&self) {
        self.relieve();
        self.expire_waiting();
    }

    /// relieve ends idle sessions when the pool needs it: one per connection waiting
    /// beyond the idle workers and the sessions already ending (see `pressure::victim`),
    /// and, while the pool is nearly full, those idle longer than STRESS_IDLE.
    fn relieve(&self) {
        // Queue, then active, as the workers take them: one consistent view (see `worker`).
        let q = lock(&self.pool.queue);
        let waiting = q.len();
        let free = self.pool.idle.load(Ordering::SeqCst);
        let now = self.shared.now_ms();
        let slots: Vec<(u64, Arc<Slot>)> = lock(&self.shared.active)
            .iter()
            .map(|(id, s)| (*id, Arc::clone(s)))
            .collect();
        drop(q);
        let ending = slots.iter().filter(|(_, s)| s.ended().is_some()).count();
        let mut need = waiting.saturating_sub(free + ending);
        if need == 0 && !pressure::under_pressure(slots.len(), self.pool.capacity) {
            return; // the common case, on every accepted connection: nothing to do
        }
        let mut views: Vec<View> = slots.iter().map(|(id, s)| s.view(*id, now)).collect();
        let slot = |id: u64| slots.iter().find(|(i, _)| *i == id).map(|(_, s)| s);
        while need > 0 {
            let Some(id) = pressure::victim(&views) else {
                break;
            };
            let view = views.iter_mut().find(|v| v.id == id);
            let idle = view.as_ref().and_then(|v| v.idle).unwrap_or_default();
            if let Some(v) = view {
                v.idle = None;
            }
            if slot(id).is_some_and(|s| s.end(Ending::Evicted)) {
                self.shared.evictions.fetch_add(1, Ordering::Relaxed);
                let ip = slot(id).map(|s| s.ip.to_string()).unwrap_or_default();
                log::warn!(
                    "session {id:x} from {ip}: evicted after {}s idle: a client is waiting for a worker",
                    idle.as_secs()
                );
                need -= 1;
            }
        }
        for id in pressure::stale(&views, self.pool.capacity) {
            if let Some(s) = slot(id).filter(|s| s.end(Ending::Stale)) {
                log::info!(
                    "session {id:x} from {}: idle too long while the server is busy (over {}s)",
                    s.ip,
                    pressure::STRESS_IDLE.as_secs()
                );
            }
        }
    }

    /// pool_figures are the pool's numbers for `status`.
    pub fn pool_figures(&self) -> PoolFigures {
        // Queue, then active, the order every other taker of both uses (see `worker`): the
        // other order, even across the fields of one expression, could deadlock with it.
        let q = lock(&self.pool.queue);
        let waiting = q.len();
        let busy = lock(&self.shared.active).len();
        drop(q);
        PoolFigures {
            workers: self.pool.capacity,
            busy,
            waiting,
            evictions: self.shared.evictions.load(Ordering::Relaxed),
            refusals: REFUSALS.load(Ordering::Relaxed),
        }
    }

    /// expire_waiting answers 421 to connections that waited too long for a worker.
    /// Those at the front of the queue that a session being ended is about to serve are kept.
    fn expire_waiting(&self) {
        refusal_log_tick();
        let ending = lock(&self.shared.active)
            .values()
            .filter(|s| s.ended().is_some())
            .count();
        let mut expired = Vec::new();
        {
            let mut q = lock(&self.pool.queue);
            while q.len() > ending && q.front().is_some_and(|p| p.since.elapsed() >= QUEUE_WAIT) {
                if let Some(p) = q.pop_front() {
                    expired.push(p);
                }
            }
        }
        for p in expired {
            release_ip(&self.shared, canonical_ip(p.peer.ip()));
            refuse(
                p.tcp,
                &reply::service_unavailable("too busy, try again later"),
                p.peer,
                "no worker free in time",
            );
        }
    }

    /// shutdown stops accepting, ends every session within a bound and joins the workers.
    pub fn shutdown(mut self, grace: Duration) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        self.listeners.clear();
        self.pool.closed.store(true, Ordering::SeqCst);
        let waiting: Vec<Pending> = lock(&self.pool.queue).drain(..).collect();
        for p in waiting {
            refuse(p.tcp, &reply::shutting_down(), p.peer, "shutting down");
        }
        self.pool.ready.notify_all();
        // Sessions blocked in a read see end-of-file now; a message whose data is
        // incomplete is dropped with its tmp file, one already read is committed.
        for slot in lock(&self.shared.active).values() {
            let _ = slot.tcp.shutdown(Shutdown::Read);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && self.workers.iter().any(|w| !w.is_finished()) {
            thread::sleep(Duration::from_millis(20));
        }
        for slot in lock(&self.shared.active).values() {
            let _ = slot.tcp.shutdown(Shutdown::Both);
        }
        for w in self.workers.drain(..) {
            if w.is_finished() {
                let _ = w.join();
            }
        }
    }
}

/// canonical_ip maps IPv4-mapped IPv6 addresses to IPv4 so limits and
/// relay_networks see one address per client.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn release_ip(shared: &Shared, ip: IpAddr) {
    let mut per_ip = lock(&shared.per_ip);
    if let Some(n) = per_ip.get_mut(&ip) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            per_ip.remove(&ip);
        }
    }
}

/// clone_for_the_pool is a second handle on the session's socket, for the pool to end it.
/// Out of descriptors, the accept that gave us the socket may have taken the last one: other
/// sessions ending free more within moments, so a second is waited before giving up.
fn clone_for_the_pool(tcp: &TcpStream) -> Option<TcpStream> {
    let until = Instant::now() + Duration::from_secs(1);
    loop {
        match tcp.try_clone() {
            Ok(c) => return Some(c),
            Err(e) if is_out_of_descriptors(&e) && Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(_) => return None,
        }
    }
}

fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// How long the accept loop rests after accept itself failed (out of descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The second an accept failure was last logged in.
static ACCEPT_ERROR_LOGGED: AtomicU64 = AtomicU64::new(0);

/// log_accept_error logs an accept failure at most once a second: a lasting one must not become
/// a stream of log lines (or of flash writes).
fn log_accept_error(e: &io::Error) {
    let now = message::now();
    if ACCEPT_ERROR_LOGGED.swap(now, Ordering::Relaxed) != now {
        let hint = if is_out_of_descriptors(e) {
            ": out of file descriptors; waiting connections are served as sessions end (lower [server] workers or raise the open files limit, LimitNOFILE= in systemd)"
        } else {
            ""
        };
        log::error!("accept failed: {e}{hint}");
    }
}

/// At most this many refusal lines are logged per second; a flood of
/// connections must not become a flood of log lines (or of flash writes).
const REFUSALS_LOGGED_PER_SECOND: u64 = 10;

/// Connections refused at connect since start (`status`).
static REFUSALS: AtomicU64 = AtomicU64::new(0);

/// The second refusals are being counted in, and how many there were.
static REFUSAL_SECOND: AtomicU64 = AtomicU64::new(0);
static REFUSAL_COUNT: AtomicU64 = AtomicU64::new(0);

/// refusal_log_tick starts a new second of refusal counting when the clock has
/// moved on, logging how many refusals were not logged one by one. Called for
/// each refusal and from the accept loop, so the sum appears within a second.
fn refusal_log_tick() {
    let now = message::now();
    if REFUSAL_SECOND.swap(now, Ordering::Relaxed) != now {
        let missed = REFUSAL_COUNT
            .swap(0, Ordering::Relaxed)
            .saturating_sub(REFUSALS_LOGGED_PER_SECOND);
        if missed > 0 {
            log::warn!("{missed} more connection(s) refused, not logged one by one");
        }
    }
}

/// refuse sends one reply to a connection we will not serve and closes it.
/// The write cannot block for long: a fresh socket's send buffer is empty.
fn refuse(mut tcp: TcpStream, r: &Reply, peer: SocketAddr, why: &str) {
    REFUSALS.fetch_add(1, Ordering::Relaxed);
    refusal_log_tick();
    if REFUSAL_COUNT.fetch_add(1, Ordering::Relaxed) < REFUSALS_LOGGED_PER_SECOND {
        log::warn!("connection from {}: refused: {why}", peer.ip());
    }
    let _ = tcp.set_nonblocking(false);
    let _ = tcp.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = tcp.write_all(&r.to_bytes());
    let _ = tcp.shutdown(Shutdown::Both);
}

fn worker(shared: Arc<Shared>, pool: Arc<Pool>) {
    // The session this worker just served: its slot leaves `active` under the queue lock,
    // in the same breath as the worker takes the next connection, so `relieve` (which
    // looks at both under that lock) never sees the worker as neither ending nor free and
    // evicts a second session for one waiting client.
    let mut finished: Option<u64> = None;
    loop {
        let next = {
            let mut q = lock(&pool.queue);
            if let Some(id) = finished.take() {
                lock(&shared.active).remove(&id);
            }
            loop {
                if let Some(p) = q.pop_front() {
                    break Some(p);
                }
                if pool.closed.load(Ordering::SeqCst) {
                    break None;
                }
                pool.idle.fetch_add(1, Ordering::SeqCst);
                q = pool.ready.wait(q).unwrap_or_else(|p| p.into_inner());
                pool.idle.fetch_sub(1, Ordering::SeqCst);
            }
        };
        let Some(p) = next else { return };
        let ip = canonical_ip(p.peer.ip());
        finished = serve(&shared, p);
        release_ip(&shared, ip);
    }
}

/// Why a session's input ended.
enum ReadEnd {
    Closed,
    Timeout,
    Error(io::Error),
    /// The pool ended the session (see `Slot`).
    Ended(Ending),
    /// DATA arrived below MIN_DATA_RATE.
    TooSlow,
    /// DATA went on far past max_message_size (DISCARD_PAST_LIMIT).
    TooBig,
}

/// Conn is the socket side of one session: buffered input, batched output.
struct Conn {
    stream: Option<Stream>,
    input: InBuf,
    out: Vec<u8>,
    /// The socket's read timeout as last set.
    read_timeout: Option<Duration>,
}

/// InBuf holds what the client sent and the session has not consumed yet.
/// The buffer is zeroed once, as it grows, never per read: zeroing a fresh
/// 16 KiB before every read was a third of the relay's instructions per message.
#[derive(Default)]
struct InBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl InBuf {
    fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
    }

    fn consume_all(&mut self) {
        self.start = self.end;
    }

    fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// space moves the unconsumed bytes to the front and returns room for at
    /// least one READ_CHUNK after them.
    fn space(&mut self) -> &mut [u8] {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < self.end + READ_CHUNK {
            self.buf.resize(self.end + READ_CHUNK, 0);
        }
        &mut self.buf[self.end..]
    }

    fn filled(&mut self, n: usize) {
        self.end += n;
    }
}

impl Conn {
    fn stream(&mut self) -> io::Result<&mut Stream> {
        self.stream
            .as_mut()
            .ok_or_else(|| io::Error::other("connection closed"))
    }

    /// set_timeouts sets the socket's read and write timeouts (session start).
    fn set_timeouts(&mut self, t: Duration) {
        self.set_write_timeout(t);
        self.read_timeout = None;
        self.set_read_timeout(t);
    }

    /// set_write_timeout changes the socket's write timeout.
    fn set_write_timeout(&mut self, t: Duration) {
        if let Ok(s) = self.stream() {
            let _ = s.tcp().set_write_timeout(Some(t));
        }
    }

    /// set_read_timeout changes the read timeout when it differs from the one
    /// set (two system calls per message saved: replies are written only
    /// between commands, so the write timeout never changes with the phase).
    fn set_read_timeout(&mut self, t: Duration) {
        if self.read_timeout == Some(t) {
            return;
        }
        if let Ok(s) = self.stream() {
            if s.tcp().set_read_timeout(Some(t)).is_ok() {
                self.read_timeout = Some(t);
            }
        }
    }

    /// hang_up_on_a_talker sends the pending replies and the end of our side, then reads and
    /// drops what the client still sends, for a moment. Closing on unread input resets the
    /// connection, and a reset can destroy the reply in the client's buffer before it is read:
    /// a client still streaming its DATA would see "connection reset", not why.
    fn hang_up_on_a_talker(&mut self) {
        if self.flush().is_err() {
            return;
        }
        let Some(s) = self.stream.as_mut() else {
            return;
        };
        if s.is_tls() {
            return; // its close goes through rustls; a plain TCP half-close would cut it short
        }
        let tcp = s.tcp();
        let _ = tcp.shutdown(Shutdown::Write);
        let until = Instant::now() + FAREWELL_DRAIN;
        let mut scratch = [0u8; 4096];
        let mut tcp = tcp;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            if left.is_zero() || tcp.set_read_timeout(Some(left)).is_err() {
                break;
            }
            match tcp.read(&mut scratch) {
                Ok(n) if n > 0 => continue,
                _ => break,
            }
        }
    }

    fn push(&mut self, r: &Reply) {
        r.write_to(&mut self.out);
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        let s = self.stream()?;
        s.write_all(&out)?;
        s.flush()
    }

    /// fill reads more input, waiting at most `timeout` for it, after flushing pending
    /// replies (RFC 2920 §3.1: replies go out when the client's input is drained).
    fn fill(&mut self, timeout: Duration) -> Result<(), ReadEnd> {
        self.flush().map_err(ReadEnd::Error)?;
        self.bound_read(timeout);
        let r = loop {
            let space = self.input.space();
            let r = match self.stream.as_mut() {
                Some(s) => s.read(space),
                None => Err(io::Error::other("connection closed")),
            };
            // A signal (SIGHUP, SIGUSR1) can interrupt a read that has a timeout
            // set, SA_RESTART or not: that is no reason to drop the session.
            match r {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r,
            }
        };
        match r {
            Ok(0) => Err(ReadEnd::Closed),
            Ok(n) => {
                self.input.filled(n);
                Ok(())
            }
            Err(e) => Err(match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ReadEnd::Timeout,
                io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => ReadEnd::Closed,
                _ => ReadEnd::Error(e),
            }),
        }
    }

    /// bound_read makes the coming read give up `timeout` from now. A plain read is one
    /// socket read, which the socket's read timeout bounds. A TLS read is as many socket reads
    /// as rustls needs for a whole record: a client sending a record a byte at a time would
    /// keep each of them within a per-read timeout for ever, and neither the whole-line
    /// deadline nor the DATA rate would ever be checked. The TLS stream gets a deadline that
    /// all its socket reads share.
    fn bound_read(&mut self, timeout: Duration) {
        match self.stream.as_mut() {
            Some(s) if s.is_tls() => s.set_read_deadline(Some(Instant::now() + timeout)),
            _ => self.set_read_timeout(timeout),
        }
    }

    fn pending(&self) -> &[u8] {
        self.input.pending()
    }
}

/// Per-session facts for logging and the spool envelope.
struct Peer {
    tag: String,
    ip: IpAddr,
}

/// serve runs one session; returns its id in `active`, for the worker to remove.
fn serve(shared: &Arc<Shared>, p: Pending) -> Option<u64> {
    let cfg = shared.config();
    let id = shared.next_session.fetch_add(1, Ordering::Relaxed);
    let ip = canonical_ip(p.peer.ip());
    // Replies are written in batches already (RFC 2920); Nagle would only add
    // a delayed-ACK stall to each batch.
    let _ = p.tcp.set_nodelay(true);
    let peer = Peer {
        tag: format!("session {id:x} from {ip}"),
        ip,
    };
    let started = Instant::now();
    log::info!(
        "{}: connected{}",
        peer.tag,
        if p.implicit_tls {
            " (implicit TLS)"
        } else {
            ""
        }
    );
    let Some(clone) = clone_for_the_pool(&p.tcp) else {
        // Without a handle the pool could neither evict the session nor end it at shutdown.
        refuse(
            p.tcp,
            &reply::service_unavailable("too busy, try again later"),
            p.peer,
            "out of file descriptors",
        );
        return None;
    };
    let slot = Arc::new(Slot {
        ip,
        tcp: clone,
        state: AtomicU8::new(BUSY),
        idle_since: AtomicU64::new(0),
    });
    lock(&shared.active).insert(id, Arc::clone(&slot));
    let mut conn = Conn {
        stream: Some(Stream::Plain(p.tcp)),
        input: InBuf::default(),
        out: Vec::new(),
        read_timeout: None,
    };
    conn.set_timeouts(cfg.server.command_timeout);
    let accepted = if p.implicit_tls && !start_tls(shared, &cfg, &mut conn, &peer) {
        0
    } else {
        run_session(shared, &cfg, &mut conn, &peer, &slot, p.implicit_tls)
    };
    let _ = conn.flush();
    if let Some(s) = conn.stream.take() {
        let _ = s.tcp().shutdown(Shutdown::Both);
    }
    log::info!(
        "{}: closed after {:.1}s, {} message(s) accepted",
        peer.tag,
        started.elapsed().as_secs_f64(),
        accepted
    );
    Some(id)
}

/// start_tls runs the server handshake on the connection, within min(command_timeout,
/// TLS_HANDSHAKE) for the whole of it; false when it failed.
fn start_tls(shared: &Shared, cfg: &Config, conn: &mut Conn, peer: &Peer) -> bool {
    let Some(tls) = &shared.tls else { return false };
    let Some(plain) = conn.stream.take() else {
        return false;
    };
    // CVE-2011-0411: nothing the client sent before the handshake may be read after it.
    conn.input.clear();
    let deadline = Instant::now() + cfg.server.command_timeout.min(TLS_HANDSHAKE);
    match plain.accept_tls(tls.current(), deadline) {
        Ok(s) => {
            log::debug!(
                "{}: TLS established: {}",
                peer.tag,
                s.tls_info().unwrap_or_default()
            );
            conn.stream = Some(s);
            // The handshake moved the socket's timeouts to its deadline.
            conn.set_timeouts(cfg.server.command_timeout);
            true
        }
        Err(e) => {
            log::warn!("{}: TLS handshake failed: {e}", peer.tag);
            false
        }
    }
}

fn policy(shared: &Shared, cfg: &Config, peer: &Peer, implicit_tls: bool) -> Policy {
    Policy {
        hostname: cfg.server.hostname.clone(),
        tag: peer.tag.clone(),
        max_message_size: cfg.server.max_message_size,
        max_recipients: cfg.server.max_recipients,
        relay_allowed: cfg
            .server
            .relay_networks
            .iter()
            .any(|n| n.contains(peer.ip)),
        local_client: is_local_client(peer.ip),
        starttls_available: shared.tls.is_some() && !implicit_tls,
        implicit_tls,
        auth: cfg.server.auth,
        have_users: !cfg.users.is_empty(),
        require_tls: cfg.server.require_tls,
    }
}

/// run_session drives the state machine over the connection; returns the
/// number of messages accepted.
fn run_session(
    shared: &Shared,
    cfg: &Config,
    conn: &mut Conn,
    peer: &Peer,
    slot: &Slot,
    implicit_tls: bool,
) -> u32 {
    let users = shared.users();
    let mut session = Session::new(policy(shared, cfg, peer, implicit_tls), users.as_ref());
    conn.push(&session.greeting());
    let mut accepted = 0;
    let mut skipping = 0usize; // octets skipped of an over-long line
                               // When the command line being read began (its first byte seen), for the whole-line deadline.
    let mut line_started: Option<Instant> = None;
    let result = loop {
        if skipping > 0 {
            match skip_line(conn.pending()) {
                Some(n) => {
                    conn.input.consume(n);
                    skipping = 0;
                    line_started = None;
                }
                None => {
                    skipping += conn.pending().len();
                    conn.input.consume_all();
                    if skipping > MAX_SKIP {
                        conn.push(&reply::too_many_errors());
                        break Ok(());
                    }
                    let idle = session.transaction().is_none();
                    if let Err(end) =
                        wait_line(shared, cfg, conn, slot, idle, true, &mut line_started)
                    {
                        break Err(end);
                    }
                }
            }
            continue;
        }
        let scanned = scan_line(conn.pending(), MAX_AUTH_LINE);
        if !matches!(scanned, LineScan::NeedMore) {
            // A command to act on: the pool may no longer end this session (or just has).
            if let Err(how) = slot.busy() {
                break Err(ReadEnd::Ended(how));
            }
            line_started = None;
        }
        let action = match scanned {
            LineScan::Line { end, next } => {
                let line = &conn.input.pending()[..end];
                // A SASL response line is a secret, not a command: log no part of it.
                let verb = if session.awaiting_auth_response() {
                    "(AUTH response)".to_string()
                } else {
                    verb_of(line)
                };
                let action = session.line(line);
                conn.input.consume(next);
                log_refusal(peer, &verb, &action);
                action
            }
            LineScan::TooLong => {
                skipping = 1;
                let action = session.line_too_long();
                log_refusal(peer, "(long line)", &action);
                action
            }
            LineScan::NeedMore => {
                if shared.is_shutting_down() {
                    conn.push(&reply::shutting_down());
                    break Ok(());
                }
                let idle = session.transaction().is_none();
                let mid_line = !conn.pending().is_empty();
                if let Err(end) =
                    wait_line(shared, cfg, conn, slot, idle, mid_line, &mut line_started)
                {
                    break Err(end);
                }
                continue;
            }
        };
        match action {
            Action::Reply(r) => conn.push(&r),
            Action::Close(r) => {
                conn.push(&r);
                break Ok(());
            }
            Action::StartTls(r) => {
                conn.push(&r);
                if conn.flush().is_err() || !start_tls(shared, cfg, conn, peer) {
                    break Ok(());
                }
                session.tls_started();
            }
            Action::Data(r) => match receive_data(shared, cfg, conn, peer, &mut session, r) {
                Ok(queued) => accepted += u32::from(queued),
                Err(end) => break Err(end),
            },
        }
    };
    shared.note_auth_failures(peer.ip, session.auth_failures());
    match result {
        Err(ReadEnd::Timeout) => {
            log::info!("{}: timed out", peer.tag);
            conn.push(&reply::timeout());
        }
        // Logged by the pool when it ended the session; the worker is wanted elsewhere, so
        // a client that does not read gets a second, not command_timeout, for the reply.
        Err(ReadEnd::Ended(how)) => {
            conn.set_write_timeout(FAREWELL_WRITE);
            conn.push(&match how {
                Ending::Evicted => reply::evicted(),
                Ending::Stale => reply::idle_too_long(),
            });
        }
        Err(ReadEnd::TooSlow) => conn.push(&reply::data_too_slow()),
        Err(ReadEnd::TooBig) => {
            conn.push(&reply::size_exceeded_closing());
            conn.hang_up_on_a_talker();
        }
        Err(ReadEnd::Closed) if shared.is_shutting_down() => conn.push(&reply::shutting_down()),
        Err(ReadEnd::Error(e)) => log::info!("{}: connection error: {e}", peer.tag),
        _ => {}
    }
    accepted
}

/// wait_line reads more input while a command line is awaited. Outside a transaction the
/// session counts as idle for the pool (it may be evicted or, under pressure, cut short). A
/// line must be whole within command_timeout of its first byte: RFC 5321 4.5.3.2 asks for a
/// timeout per command, and one per read would let a client trickle a byte at a time forever.
fn wait_line(
    shared: &Shared,
    cfg: &Config,
    conn: &mut Conn,
    slot: &Slot,
    idle: bool,
    mid_line: bool,
    line_started: &mut Option<Instant>,
) -> Result<(), ReadEnd> {
    if idle {
        slot.idle(shared.now_ms());
    }
    let limit = cfg.server.command_timeout;
    let timeout = if mid_line {
        let started = *line_started.get_or_insert_with(Instant::now);
        let left = (started + limit).saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadEnd::Timeout);
        }
        left
    } else {
        *line_started = None;
        limit
    };
    let read = conn.fill(timeout);
    // An end of input may be the pool's doing: then the pool's reply goes out.
    match slot.ended() {
        Some(how) => Err(ReadEnd::Ended(how)),
        None => read,
    }
}

/// verb_of gives the command word of a line for the log, never its arguments
/// (an AUTH payload must not reach a log line).
fn verb_of(line: &[u8]) -> String {
    let word: String = line
        .iter()
        .take_while(|b| !b.is_ascii_whitespace())
        .take(12)
        .map(|&b| {
            if b.is_ascii_graphic() {
                (b as char).to_ascii_uppercase()
            } else {
                '?'
            }
        })
        .collect();
    if word.is_empty() {
        "(empty)".into()
    } else {
        word
    }
}

fn log_refusal(peer: &Peer, verb: &str, action: &Action) {
    let r = match action {
        Action::Reply(r) | Action::Close(r) => r,
        _ => return,
    };
    if r.code >= 400 {
        log::info!(
            "{}: refused {verb}: {} {} {}",
            peer.tag,
            r.code,
            r.status,
            r.lines.join(" / ")
        );
    }
}

/// receive_data answers 354, streams the message into the spool and replies.
/// Returns whether a message was queued.
fn receive_data(
    shared: &Shared,
    cfg: &Config,
    conn: &mut Conn,
    peer: &Peer,
    session: &mut Session,
    start: Reply,
) -> Result<bool, ReadEnd> {
    let Some(txn) = session.transaction().cloned() else {
        conn.push(&session.data_finished(DataOutcome::StorageFailed));
        return Ok(false);
    };
    let env = Envelope {
        auth_user: session.user().map(str::to_string),
        eight_bit: session::declared_8bit(&txn.params),
        smtputf8: txn.params.smtputf8,
        ..Envelope::new(
            &txn.sender,
            &txn.recipients,
            &peer.ip.to_string(),
            session.helo(),
        )
    };
    // Refuse before 354 when the spool cannot take the message: the client then
    // does not send data we would have to throw away.
    let mut incoming = match shared.spool.begin(&env) {
        Ok(i) => Some(i),
        Err(e) => {
            log::warn!("{}: spool refused a new message: {e}", peer.tag);
            shared.note_accept_error(format!("spool refused a message: {e}"));
            let r = session.data_finished(DataOutcome::StorageFailed);
            log_refusal(peer, "DATA", &Action::Reply(r.clone()));
            conn.push(&r);
            return Ok(false);
        }
    };
    conn.push(&start);
    let tls_info = conn.stream.as_ref().and_then(|s| s.tls_info());
    let id = incoming
        .as_ref()
        .map(|i| i.id().to_string())
        .unwrap_or_default();
    let header = message::received_header(&Trace {
        helo: session.helo(),
        client: &env.client,
        hostname: &cfg.server.hostname,
        protocol: session.protocol(),
        tls: tls_info.as_deref(),
        id: &id,
        recipient: (txn.recipients.len() == 1).then(|| txn.recipients[0].as_str()),
        time: env.arrival,
    });
    let mut write_failed = write_spool(shared, &mut incoming, header.as_bytes(), peer);
    let mut reader = DataReader::new(cfg.server.max_message_size);
    let limit = cfg.server.max_message_size;
    let discard_until =
        limit.saturating_add(limit.saturating_mul(DISCARD_PAST_LIMIT).max(DISCARD_MIN));
    let mut chunk = Vec::with_capacity(READ_CHUNK + 64);
    let pace = DataPace::new(cfg.server.data_timeout);
    let mut received = 0u64;
    loop {
        let (used, done) = reader.feed(conn.pending(), &mut chunk);
        conn.input.consume(used);
        received += used as u64;
        if !chunk.is_empty() {
            if !write_failed && !reader.exceeded() {
                write_failed = write_spool(shared, &mut incoming, &chunk, peer);
            }
            chunk.clear();
        }
        if done {
            break;
        }
        if reader.size() > discard_until {
            log::info!(
                "{}: DATA still going at {} bytes, {} past the size limit; message discarded, closing",
                peer.tag,
                reader.size(),
                discard_until - limit
            );
            return Err(ReadEnd::TooBig);
        }
        let read = match pace.timeout(received) {
            Some(t) => match conn.fill(t) {
                // The wait is the pace's time left; a socket timeout that fires a tick early
                // leaves a little of it: wait that out, the rule decides (not "Timeout").
                Err(ReadEnd::Timeout) if pace.timeout(received).is_some() => continue,
                Err(ReadEnd::Timeout) => Err(ReadEnd::TooSlow),
                other => other,
            },
            None => Err(ReadEnd::TooSlow),
        };
        if let Err(end) = read {
            // Incomplete data: the tmp file goes with `incoming` (nothing half-queued).
            let why = match end {
                ReadEnd::TooSlow => format!(
                    "data too slow ({received} bytes in {}s, under {MIN_DATA_RATE} bytes/s)",
                    pace.started.elapsed().as_secs()
                ),
                _ => "connection lost during DATA".to_string(),
            };
            log::info!("{}: {why}, message discarded", peer.tag);
            return Err(end);
        }
    }
    if reader.bare_newlines() > 0 {
        log::info!(
            "{}: normalised {} bare CR/LF in the message",
            peer.tag,
            reader.bare_newlines()
        );
    }
    let outcome = if reader.exceeded() {
        DataOutcome::TooBig
    } else if reader.received_headers() > MAX_RECEIVED {
        DataOutcome::Loop
    } else if write_failed {
        DataOutcome::StorageFailed
    } else {
        match incoming.take().map(|i| i.commit()) {
            Some(Ok(id)) => DataOutcome::Queued(id),
            Some(Err(e)) => {
                log::error!("{}: could not commit the message: {e}", peer.tag);
                shared.note_accept_error(format!("could not commit a message: {e}"));
                DataOutcome::StorageFailed
            }
            None => DataOutcome::StorageFailed,
        }
    };
    drop(incoming);
    let queued = match &outcome {
        DataOutcome::Queued(id) => {
            log::info!(
                "{}: accepted {id} from=<{}> rcpt={} size={}",
                peer.tag,
                txn.sender,
                txn.recipients.len(),
                reader.size()
            );
            (shared.on_queued)(id);
            true
        }
        _ => false,
    };
    let r = session.data_finished(outcome);
    log_refusal(peer, "DATA", &Action::Reply(r.clone()));
    conn.push(&r);
    Ok(queued)
}

/// DataPace bounds DATA: data_timeout without a byte (RFC 5321 4.5.3.2.5), and after a grace
/// of min(data_timeout, DATA_GRACE) an average of MIN_DATA_RATE since the 354.
struct DataPace {
    started: Instant,
    grace: Duration,
    idle: Duration,
}

impl DataPace {
    fn new(data_timeout: Duration) -> DataPace {
        DataPace {
            started: Instant::now(),
            grace: data_timeout.min(DATA_GRACE),
            idle: data_timeout,
        }
    }

    /// timeout is how long the next read may wait, after `received` bytes; None when the
    /// rate rule has already been broken.
    fn timeout(&self, received: u64) -> Option<Duration> {
        let earned = Duration::from_millis(received.saturating_mul(1000) / MIN_DATA_RATE);
        let due = self.started + self.grace.max(earned);
        let left = due.saturating_duration_since(Instant::now());
        // Unchanged while the client keeps well ahead: no system call per read.
        (!left.is_zero()).then(|| self.idle.min(left))
    }
}

/// write_spool appends to the message file; returns true when it failed (the
/// message will be answered 452 once its data has been read).
fn write_spool(
    shared: &Shared,
    incoming: &mut Option<crate::spool::Incoming>,
    buf: &[u8],
    peer: &Peer,
) -> bool {
    let Some(i) = incoming.as_mut() else {
        return true;
    };
    match i.write_all(buf) {
        Ok(()) => false,
        Err(e) => {
            log::error!("{}: writing the message to the spool failed: {e}", peer.tag);
            shared.note_accept_error(format!("writing a message to the spool failed: {e}"));
            *incoming = None;
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_host_without_ipv6_skips_an_ipv6_listener() {
        let e = |raw: i32| io::Error::from_raw_os_error(raw);
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let cases = [
            ("[::1]:25", libc::EADDRNOTAVAIL, true), // lo without ::1 (disable_ipv6)
            ("[::1]:25", libc::EAFNOSUPPORT, true),  // ipv6.disable=1
            ("[::]:25", libc::EAFNOSUPPORT, true),
            ("[2001:db8::5]:25", libc::EADDRNOTAVAIL, false), // a LAN address not up: stop
            ("[::1]:25", libc::EADDRINUSE, false),            // taken: stop
            ("127.0.0.1:25", libc::EADDRNOTAVAIL, false),
        ];
        for (addr, raw, skip) in cases {
            assert_eq!(ipv6_unavailable(&a(addr), &e(raw)), skip, "{addr} {raw}");
        }
    }
}
