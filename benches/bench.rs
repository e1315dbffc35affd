//! `make bench`: runs the release binary under load on loopback against a
//! built-in sink smarthost and writes the numbers to BENCHMARKS.md.
//!
//! Measures durable accept rate (hold mode), end-to-end relay rate through the
//! sink, accept and accept→sink latency, what each accepted or relayed message
//! costs the machine (write I/Os and KB written at the block device holding the
//! spool, `sync` before and after the case; CPU ms per 1000 messages from
//! /proc/PID/stat), RSS (idle, many open connections, ten 10 MB messages),
//! binary size and start-up time, the drain of a queued backlog to a distant
//! smarthost (`wan`: through a latency-injecting proxy at 40 ms RTT, with DATA
//! and, when the sink offers CHUNKING, BDAT), and (`pressure`, issue 12) how
//! many idle or trickling connections it takes to lock a client out of a full
//! worker pool, and a client's latency under a hammer of idle connections.
//! Every relay case reaches the sink through that proxy (no delay but in the
//! wan cases). With `--peer NAME --target ADDR` the same accept, relay and wan
//! loads also run against another relay (e.g. Postfix, see
//! bench/peers/postfix.sh) in the same run, interleaved case by case, and the
//! table gets a picorelay/peer ratio.
//!
//! Every load is bounded in message count and in time, and only 127.0.0.1 (or
//! another loopback address given with --target) is ever connected to; the
//! pressure cases connect from 127.0.0.2 and 127.0.0.3 as well.
//!
//! Standard library only, but for libc (already the relay's dependency) to
//! bind those source addresses, which std cannot do before a connect, and for
//! sync() and sysconf(_SC_CLK_TCK).

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The sink refuses connections past this many at once (memory bound).
const SINK_MAX_CONNS: usize = 256;

/// Longest line the sink or the load client reads before giving up on a peer.
const MAX_LINE: usize = 64 * 1024;

/// Reply and connect timeout of the load clients: a stuck relay fails the case.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Markers delimiting the generated sections of BENCHMARKS.md.
const SECTION_ALONE: &str = "picorelay";
const SECTION_PEER: &str = "peer";

fn main() {
    let opts = match Opts::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&opts) {
        eprintln!("bench: {e}");
        std::process::exit(1);
    }
}

const USAGE: &str =
    "usage: cargo bench --bench bench -- [--quick] [--runs N] [--out FILE | --no-write]
       [--bin PATH] [--static-bin PATH | --no-static] [--sink-port N] [--proxy-port N]
       [--rtt-ms N] [--peer NAME --target 127.0.0.1:PORT [--peer-reset CMD] [--peer-pids CMD]
       [--peer-spool PATH] [--peer-release CMD] [--peer-concurrency CMD]] [--only SUBSTRING]
  --quick        short cases (for a smoke run)
  --runs N       repetitions; medians with min-max are reported (default 3)
  --out FILE     where to write the results (default BENCHMARKS.md in the crate)
  --bin PATH     the relay binary (default target/release/picorelay)
  --static-bin   the static build whose size, idle memory and start-up are also
                 measured (default: `make static`'s, when it has been built)
  --sink-port N  port of the built-in sink smarthost (default: any free port)
  --proxy-port N port of the latency-injecting proxy in front of the sink, which
                 every relay case goes through (default: any free port)
  --rtt-ms N     round trip the proxy adds in the wan cases (default 40)
  --peer NAME    also load the relay at --target (loopback only), e.g. postfix
  --peer-reset   shell command run before each peer case (e.g. 'postsuper -d ALL')
  --peer-pids    shell command printing the peer's process ids (idle memory summed;
                 CPU: utime + stime + cutime + cstime summed)
  --peer-spool   the peer's queue directory: its block device's writes are counted
  --peer-release shell command releasing the peer's held messages (wan cases)
  --peer-concurrency  shell command setting the peer's connections to the smarthost
                 to {n} (wan cases; run with 20, the Postfix default, at the end)
  --only S       run only the cases whose name contains S (S1,S2: any of them)
  PICORELAY_BENCH_DIR  directory for the temporary spools (default: the system temp dir)
  PICORELAY_BENCH_LOG  log level of the relays under test (default info; debug
                 logs the smarthost dialogue)
  PICORELAY_BENCH_REUSE_FILES  [queue] reuse_files of the relays under test (default:
                 not set, so auto)";

/// Command-line options.
struct Opts {
    quick: bool,
    runs: usize,
    out: Option<PathBuf>,
    bin: PathBuf,
    /// The static (musl) build, `make static`: its footprint is measured too.
    static_bin: Option<PathBuf>,
    base: PathBuf,
    sink_port: u16,
    /// Port of the latency-injecting proxy in front of the sink (0: any).
    proxy_port: u16,
    /// Round trip the proxy adds in the wan cases.
    rtt: Duration,
    peer: Option<Peer>,
    only: Option<String>,
    args: Vec<String>,
}

/// Another relay to compare against; it must forward to our sink.
struct Peer {
    name: String,
    addr: SocketAddr,
    reset: Option<String>,
    /// Shell command printing the peer's process ids (for its memory and CPU).
    pids: Option<String>,
    /// The peer's queue directory: its block device's writes are counted.
    spool: Option<PathBuf>,
    /// Shell command releasing the peer's held messages (the wan cases).
    release: Option<String>,
    /// Shell command setting the peer's connections to the smarthost to `{n}`.
    concurrency: Option<String>,
}

impl Opts {
    fn parse(args: impl Iterator<Item = String>) -> Result<Opts, String> {
        let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let mut o = Opts {
            quick: false,
            runs: 3,
            out: Some(manifest.join("BENCHMARKS.md")),
            bin: manifest.join("target/release/picorelay"),
            static_bin: Some(manifest.join(format!(
                "target/{}-unknown-linux-musl/release/picorelay",
                std::env::consts::ARCH
            )))
            .filter(|p| p.exists()),
            base: std::env::var_os("PICORELAY_BENCH_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(std::env::temp_dir),
            sink_port: 0,
            proxy_port: 0,
            rtt: Duration::from_millis(40),
            peer: None,
            only: None,
            args: Vec::new(),
        };
        let (mut peer_name, mut target, mut reset, mut pids) = (None, None, None, None);
        let (mut spool, mut release, mut concurrency) = (None, None, None);
        let args: Vec<String> = args.collect();
        let mut i = 0;
        while i < args.len() {
            let a = args[i].as_str();
            i += 1;
            let mut val = || -> Result<String, String> {
                let v = args
                    .get(i)
                    .cloned()
                    .ok_or_else(|| format!("{a} needs a value"))?;
                i += 1;
                Ok(v)
            };
            match a {
                // cargo bench passes --bench to harness = false targets.
                "--bench" => continue,
                "--quick" => o.quick = true,
                "--runs" => {
                    o.runs = val()?
                        .parse()
                        .ok()
                        .filter(|n| (1..=20).contains(n))
                        .ok_or("--runs takes 1 to 20")?
                }
                "--out" => o.out = Some(PathBuf::from(val()?)),
                "--no-write" => o.out = None,
                "--bin" => o.bin = PathBuf::from(val()?),
                "--static-bin" => o.static_bin = Some(PathBuf::from(val()?)),
                "--no-static" => o.static_bin = None,
                "--sink-port" => {
                    o.sink_port = val()?
                        .parse()
                        .map_err(|_| "--sink-port takes a port number")?
                }
                "--proxy-port" => {
                    o.proxy_port = val()?
                        .parse()
                        .map_err(|_| "--proxy-port takes a port number")?
                }
                "--rtt-ms" => {
                    o.rtt = val()?
                        .parse()
                        .ok()
                        .filter(|n| (1..=2000).contains(n))
                        .map(Duration::from_millis)
                        .ok_or("--rtt-ms takes 1 to 2000")?
                }
                "--peer" => peer_name = Some(val()?),
                "--target" => target = Some(val()?),
                "--peer-reset" => reset = Some(val()?),
                "--peer-pids" => pids = Some(val()?),
                "--peer-spool" => spool = Some(PathBuf::from(val()?)),
                "--peer-release" => release = Some(val()?),
                "--peer-concurrency" => {
                    let c = val()?;
                    if !c.contains("{n}") {
                        return Err("--peer-concurrency: the command needs {n}".into());
                    }
                    concurrency = Some(c)
                }
                "--only" => o.only = Some(val()?),
                "-h" | "--help" => return Err("help".into()),
                other => return Err(format!("unknown argument {other}")),
            }
        }
        // For the report: the command line as given (minus cargo's --bench).
        o.args = args
            .iter()
            .filter(|a| *a != "--bench")
            .map(|a| shell_quote(a))
            .collect();
        match (peer_name, target) {
            (Some(name), Some(t)) => {
                let addr: SocketAddr = t
                    .parse()
                    .map_err(|_| format!("--target {t}: not an address:port"))?;
                // Only ever load this machine's loopback.
                if !addr.ip().is_loopback() {
                    return Err(format!("--target {t}: only loopback addresses are allowed"));
                }
                o.peer = Some(Peer {
                    name,
                    addr,
                    reset,
                    pids,
                    spool,
                    release,
                    concurrency,
                });
            }
            (None, None) => {
                if spool.is_some() || release.is_some() || concurrency.is_some() {
                    return Err(
                        "--peer-spool, --peer-release and --peer-concurrency need --peer".into(),
                    );
                }
            }
            _ => return Err("--peer and --target go together".into()),
        }
        Ok(o)
    }
}

fn shell_quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./:=@".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// How long and how much each kind of case may run.
struct Budget {
    accept_time: Duration,
    max_msgs_one: usize,
    max_msgs_each: usize,
    e2e_time: Duration,
    e2e_wait: Duration,
}

impl Budget {
    fn new(quick: bool) -> Budget {
        if quick {
            Budget {
                accept_time: Duration::from_millis(1500),
                max_msgs_one: 400,
                max_msgs_each: 60,
                e2e_time: Duration::from_secs(2),
                e2e_wait: Duration::from_secs(20),
            }
        } else {
            Budget {
                accept_time: Duration::from_secs(5),
                max_msgs_one: 3000,
                max_msgs_each: 400,
                e2e_time: Duration::from_secs(5),
                e2e_wait: Duration::from_secs(60),
            }
        }
    }
}

/// Which relay a measurement belongs to.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Who {
    Us,
    Peer,
}

/// All measurements: metric label → who → one value per run.
#[derive(Default)]
struct Results {
    order: Vec<(String, &'static str)>,
    values: HashMap<String, BTreeMap<Who, Vec<f64>>>,
    /// Cells that are words, not a median ("none up to 200", "> 40 (cap)"),
    /// by label and who; they take the place of the numbers.
    texts: HashMap<String, BTreeMap<Who, String>>,
    /// Distinct notes, each with a total of the events it counts (0: none).
    notes: Vec<(String, usize)>,
    /// The block devices whose writes are counted, described for the report.
    devices: Vec<String>,
}

impl Results {
    fn add(&mut self, who: Who, label: &str, unit: &'static str, v: f64) {
        if !self.values.contains_key(label) && !self.texts.contains_key(label) {
            self.order.push((label.to_string(), unit));
        }
        self.values
            .entry(label.to_string())
            .or_default()
            .entry(who)
            .or_default()
            .push(v);
    }

    /// add_text records a cell given as text (the cases that run once).
    fn add_text(&mut self, who: Who, label: &str, unit: &'static str, text: String) {
        if !self.values.contains_key(label) && !self.texts.contains_key(label) {
            self.order.push((label.to_string(), unit));
        }
        self.texts
            .entry(label.to_string())
            .or_default()
            .insert(who, text);
    }

    /// cell renders one metric of one relay: its text, or its median (min–max).
    fn cell(&self, label: &str, who: Who) -> String {
        match self.texts.get(label).and_then(|t| t.get(&who)) {
            Some(t) => t.clone(),
            None => cell(self.values.get(label).and_then(|by| by.get(&who))),
        }
    }

    fn note(&mut self, n: String) {
        self.note_n(n, 0);
    }

    /// note_n records a note once; `n` (a count of events) adds up over the runs.
    fn note_n(&mut self, text: String, n: usize) {
        eprintln!("  note: {text}");
        match self.notes.iter_mut().find(|(t, _)| *t == text) {
            Some((_, total)) => *total += n,
            None => self.notes.push((text, n)),
        }
    }
}

fn run(o: &Opts) -> Result<(), String> {
    if !o.bin.is_file() {
        return Err(format!(
            "{} not found: run `make release` first (or give --bin)",
            o.bin.display()
        ));
    }
    let started = SystemTime::now();
    let load_before = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let sink = Sink::start(o.sink_port)?;
    // Every relay case reaches the sink through the proxy (delay 0 but in the
    // wan cases), picorelay and the peer alike: both pay the same extra hop.
    let proxy = Proxy::start(o.proxy_port, sink.addr)?;
    eprintln!(
        "bench: sink smarthost on {}, proxy in front of it on {}",
        sink.addr, proxy.addr
    );
    let b = Budget::new(o.quick);
    let mut res = Results::default();
    let case_on = |name: &str| {
        o.only
            .as_deref()
            .map_or(true, |s| s.split(',').any(|s| name.contains(s)))
    };
    let devs = Devices::find(o, &mut res);

    // Static facts, measured once.
    let size = fs::metadata(&o.bin).map_err(|e| e.to_string())?.len();
    res.add(Who::Us, "binary size (stripped)", "MiB", mib(size));
    let fsync = fsync_baseline(&o.base)?;
    for (what, lat) in [
        ("one 4 KiB write+fsync", &fsync.0),
        ("write+fsync file, rename, fsync dir", &fsync.1),
    ] {
        let (p50, p99) = percentiles(lat);
        res.add(Who::Us, &format!("machine: {what}, p50"), "ms", ms(p50));
        res.add(Who::Us, &format!("machine: {what}, p99"), "ms", ms(p99));
    }

    // Idle memory before any load, as the sum over processes (Postfix is several).
    if case_on("rss") {
        let relay = Relay::start(o, None, "")?;
        thread::sleep(Duration::from_millis(300));
        let (pss, n) = pss_sum(&[relay.pid()]);
        res.add(
            Who::Us,
            "idle memory, PSS summed over processes",
            "MiB",
            kib_to_mib(pss),
        );
        res.add(Who::Us, "idle processes", "count", n as f64);
        relay.stop();
        if let Some(pids) = o.peer.as_ref().and_then(peer_pids) {
            let (pss, n) = pss_sum(&pids);
            res.add(
                Who::Peer,
                "idle memory, PSS summed over processes",
                "MiB",
                kib_to_mib(pss),
            );
            res.add(Who::Peer, "idle processes", "count", n as f64);
        }
    }

    let accept_cases: Vec<(usize, usize, bool)> = [1, 20]
        .into_iter()
        .flat_map(|c| [(c, 4096, true), (c, 102_400, true)])
        .chain(
            [1, 20]
                .into_iter()
                .flat_map(|c| [(c, 4096, false), (c, 102_400, false)]),
        )
        .collect();

    for run in 0..o.runs {
        eprintln!("bench: run {}/{}", run + 1, o.runs);
        if case_on("startup") {
            for _ in 0..3 {
                let r = Relay::start(o, None, "")?;
                res.add(Who::Us, "start-up (spawn → banner)", "ms", ms(r.startup));
                r.stop();
            }
        }
        for &(clients, size, reuse) in &accept_cases {
            let name = format!(
                "accept {clients} client{}, {} KiB, {}",
                if clients == 1 { "" } else { "s" },
                size / 1024,
                if reuse {
                    "session reuse"
                } else {
                    "1 msg/connection"
                }
            );
            if !case_on(&name) {
                continue;
            }
            let spec = Load {
                clients,
                size,
                per_conn: if reuse { usize::MAX } else { 1 },
                max_each: if clients == 1 {
                    b.max_msgs_one
                } else {
                    b.max_msgs_each
                },
                max_time: b.accept_time,
                hold: true,
            };
            // Every client gets a worker, as every client gets an smtpd from Postfix
            // (its process limit is 100): the load cases measure throughput, not refusals.
            let mut relay = Relay::start(o, None, LOAD_WORKERS)?;
            let c0 = cost_start(devs.us.as_ref(), relay.cpu_ticks());
            let r = spec.run(relay.addr, &format!("a{run}-{clients}-{size}-{reuse}"));
            let cpu = relay.cpu_ticks();
            relay.halt();
            let io = devs.us.as_ref().and_then(BlockDev::writes);
            relay.stop();
            report_accept(&mut res, Who::Us, &name, &r, clients > 1 || reuse);
            report_cost(&mut res, Who::Us, &name, r.lat.len(), &c0, io, cpu);
            if let Some(p) = &o.peer {
                peer_reset(p, &mut res);
                let c0 = cost_start(devs.peer.as_ref(), peer_cpu(p));
                let r = spec.run(p.addr, &format!("pa{run}-{clients}-{size}-{reuse}"));
                let cpu = peer_cpu(p);
                let io = devs.peer.as_ref().and_then(BlockDev::writes);
                report_accept(&mut res, Who::Peer, &name, &r, clients > 1 || reuse);
                report_cost(&mut res, Who::Peer, &name, r.lat.len(), &c0, io, cpu);
            }
        }
        for clients in [1, 20] {
            let name = format!(
                "relay {clients} client{}, 4 KiB, session reuse",
                if clients == 1 { "" } else { "s" }
            );
            if !case_on(&name) {
                continue;
            }
            let spec = Load {
                clients,
                size: 4096,
                per_conn: usize::MAX,
                max_each: if clients == 1 {
                    b.max_msgs_one
                } else {
                    b.max_msgs_each
                },
                max_time: b.e2e_time,
                hold: false,
            };
            let mut relay = Relay::start(o, Some(proxy.addr), LOAD_WORKERS)?;
            let c0 = cost_start(devs.us.as_ref(), relay.cpu_ticks());
            let tag = format!("e{run}-{clients}");
            let r = spec.run(relay.addr, &tag);
            let d = sink.wait(&tag, &r, b.e2e_wait);
            let cpu = relay.cpu_ticks();
            relay.halt();
            let io = devs.us.as_ref().and_then(BlockDev::writes);
            relay.stop();
            report_e2e(&mut res, Who::Us, &name, &r, &d);
            report_cost(&mut res, Who::Us, &name, r.lat.len(), &c0, io, cpu);
            if let Some(p) = &o.peer {
                peer_reset(p, &mut res);
                let c0 = cost_start(devs.peer.as_ref(), peer_cpu(p));
                let tag = format!("pe{run}-{clients}");
                let r = spec.run(p.addr, &tag);
                let d = sink.wait(&tag, &r, b.e2e_wait);
                let cpu = peer_cpu(p);
                let io = devs.peer.as_ref().and_then(BlockDev::writes);
                report_e2e(&mut res, Who::Peer, &name, &r, &d);
                report_cost(&mut res, Who::Peer, &name, r.lat.len(), &c0, io, cpu);
            }
        }
        wan_cases(o, &case_on, &sink, &proxy, run, &mut res)?;
        if case_on("rss") {
            memory_cases(o, &mut res)?;
        }
        if let Some(bin) = o.static_bin.as_deref().filter(|_| case_on("static")) {
            static_cases(o, bin, &mut res)?;
        }
    }

    // Once, not per run: each attack series takes a minute or more.
    pressure_cases(o, &case_on, &mut res)?;

    let load_after = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let report = render(o, &res, started, &load_before, &load_after);
    println!("{report}");
    if let Some(out) = &o.out {
        let section = if o.peer.is_some() {
            SECTION_PEER
        } else {
            SECTION_ALONE
        };
        write_section(out, section, &report)?;
        eprintln!("bench: wrote {}", out.display());
    }
    Ok(())
}

/// The block devices holding picorelay's spool and the peer's queue.
struct Devices {
    us: Option<BlockDev>,
    peer: Option<BlockDev>,
}

impl Devices {
    /// find looks them up once and describes them for the report (or notes why not).
    fn find(o: &Opts, res: &mut Results) -> Devices {
        let mut find = |who: &str, p: &Path| match BlockDev::of(p) {
            Ok(d) => {
                res.devices
                    .push(format!("{who} {}: {}", p.display(), d.describe()));
                Some(d)
            }
            Err(e) => {
                res.note(format!("{who}: block-device writes not counted: {e}"));
                None
            }
        };
        let us = find("picorelay's spools under", &o.base);
        let peer = match &o.peer {
            Some(Peer {
                spool: Some(sp),
                name,
                ..
            }) => find(&format!("{name}'s queue"), sp),
            Some(p) => {
                res.note(format!(
                    "{}: block-device writes not counted (no --peer-spool)",
                    p.name
                ));
                None
            }
            None => None,
        };
        Devices { us, peer }
    }
}

/// Messages of the wan backlog (`--quick`: fewer).
const WAN_MSGS: usize = 1000;
const WAN_MSGS_QUICK: usize = 200;

/// Clients that queue the wan backlog, each over one session.
const WAN_CLIENTS: usize = 4;

/// Connections Postfix opens to one destination by default
/// (smtp_destination_concurrency_limit = default_destination_concurrency_limit).
const PEER_DEFAULT_CONCURRENCY: usize = 20;

/// How one wan drain went.
struct WanRun {
    queued: usize,
    delivered: usize,
    /// From the start of the drain (relay spawned, or the peer's release) to the last at the sink.
    span: Duration,
    data: usize,
    bdat: usize,
    /// Most connections at once through the proxy.
    peak: usize,
}

impl WanRun {
    /// wait waits for the `queued` messages of `tag` at the sink (at most
    /// `limit`) and sums up the drain that began at `t0`.
    fn wait(
        sink: &Sink,
        proxy: &Proxy,
        tag: &str,
        queued: usize,
        t0: Instant,
        limit: Duration,
    ) -> WanRun {
        let (seen, (data, bdat)) = sink.wait_for(tag, queued, limit);
        WanRun {
            queued,
            delivered: seen.len(),
            span: seen
                .values()
                .max()
                .map_or(Duration::ZERO, |t| t.saturating_duration_since(t0)),
            data,
            bdat,
            peak: proxy.peak(),
        }
    }
}

/// wan_cases drains a backlog of 4 KiB messages through the proxy at the
/// round trip of --rtt-ms: picorelay with DATA and BDAT at 3 connections and
/// BDAT at 20, the peer at 3 and 20 (Postfix never sends BDAT, so its
/// 3-connection drain stands in both 3-connection rows).
fn wan_cases(
    o: &Opts,
    case_on: &dyn Fn(&str) -> bool,
    sink: &Sink,
    proxy: &Proxy,
    run: usize,
    res: &mut Results,
) -> Result<(), String> {
    let n = if o.quick { WAN_MSGS_QUICK } else { WAN_MSGS };
    let rtt_ms = o.rtt.as_millis();
    let variants = [
        (false, 3, "sink without CHUNKING (DATA)"),
        (true, 3, "sink with CHUNKING (BDAT)"),
        (true, 20, "sink with CHUNKING (BDAT)"),
    ];
    let mut peer_runs: HashMap<usize, Option<WanRun>> = HashMap::new();
    let mut peer_changed = false;
    let mut result = Ok(());
    for (chunking, c, how) in variants {
        let name =
            format!("wan drain, {n} × 4 KiB queued, RTT {rtt_ms} ms, {c} connections, {how}");
        if !case_on(&name) {
            continue;
        }
        eprintln!("bench: {name}");
        let tag = format!("w{run}-{c}-{chunking}");
        let us = wan_us(o, sink, proxy, &tag, n, chunking, c);
        sink.chunking.store(false, Ordering::SeqCst);
        proxy.set_delay(Duration::ZERO);
        match us {
            Ok(w) => report_wan(res, Who::Us, &name, c, o.rtt, &w, chunking),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
        let Some(p) = &o.peer else { continue };
        if let Entry::Vacant(slot) = peer_runs.entry(c) {
            peer_changed |= p.concurrency.is_some();
            let w = wan_peer(p, sink, proxy, &format!("pw{run}-{c}"), n, c, o.rtt, res);
            proxy.set_delay(Duration::ZERO);
            slot.insert(w);
        }
        if let Some(Some(w)) = peer_runs.get(&c) {
            report_wan(res, Who::Peer, &name, c, o.rtt, w, false);
        }
    }
    if peer_changed {
        if let Some(p) = &o.peer {
            peer_concurrency(p, PEER_DEFAULT_CONCURRENCY, res);
        }
    }
    result
}

/// wan_us queues `n` messages into picorelay in hold mode, stops it, and
/// starts it again on the same spool with the proxy as its smarthost and
/// `c` connections: the drain is timed from that start to the last message
/// at the sink.
#[allow(clippy::too_many_arguments)]
fn wan_us(
    o: &Opts,
    sink: &Sink,
    proxy: &Proxy,
    tag: &str,
    n: usize,
    chunking: bool,
    c: usize,
) -> Result<WanRun, String> {
    let relay = Relay::start(o, None, "")?;
    let r = wan_backlog(n).run(relay.addr, tag);
    let dir = relay.into_dir();
    if let Some(e) = &r.first_error {
        let _ = fs::remove_dir_all(&dir);
        return Err(format!("wan: queueing the backlog: {e}"));
    }
    let queued = r.lat.len();
    wan_quiet(proxy);
    sink.chunking.store(chunking, Ordering::SeqCst);
    proxy.set_delay(o.rtt / 2);
    proxy.reset_peak();
    let extra = format!("max_connections = {c}");
    let setup = Setup {
        smarthost: Some(proxy.addr),
        smarthost_extra: &extra,
        ..Setup::default()
    };
    let t0 = Instant::now();
    let relay = match Relay::start_in(&o.bin, dir.clone(), &setup) {
        Ok(r) => r,
        Err(e) => {
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
    };
    let drained = WanRun::wait(sink, proxy, tag, queued, t0, wan_limit(queued, c, o.rtt));
    relay.stop();
    Ok(drained)
}

/// wan_peer queues `n` messages into the peer, held (X-Bench-Hold), sets its
/// connections to `c`, releases them and times the drain to the last at the
/// sink. None (with a note) when the peer lacks a release command or fails.
#[allow(clippy::too_many_arguments)]
fn wan_peer(
    p: &Peer,
    sink: &Sink,
    proxy: &Proxy,
    tag: &str,
    n: usize,
    c: usize,
    rtt: Duration,
    res: &mut Results,
) -> Option<WanRun> {
    let Some(release) = &p.release else {
        res.note(format!("{}: wan cases skipped (no --peer-release)", p.name));
        return None;
    };
    peer_reset(p, res);
    if p.concurrency.is_some() {
        peer_concurrency(p, c, res);
    } else if c != PEER_DEFAULT_CONCURRENCY {
        res.note(format!(
            "{}: wan at {c} connections ran at the peer's own setting (no --peer-concurrency)",
            p.name
        ));
    }
    let r = wan_backlog(n).run(p.addr, tag);
    if let Some(e) = &r.first_error {
        res.note(format!("{} wan: queueing the backlog: {e}", p.name));
    }
    let queued = r.lat.len();
    wan_quiet(proxy);
    proxy.set_delay(rtt / 2);
    proxy.reset_peak();
    let t0 = Instant::now();
    match Command::new("sh").arg("-c").arg(release).status() {
        Ok(s) if s.success() => {}
        other => {
            res.note(format!("{}: release `{release}`: {other:?}", p.name));
            return None;
        }
    }
    Some(WanRun::wait(
        sink,
        proxy,
        tag,
        queued,
        t0,
        wan_limit(queued, c, rtt),
    ))
}

/// wan_quiet lets the connections of a case before (a relay keeps idle
/// connections open a while) close before a drain, so that the proxy's count
/// of connections at once is the drain's own.
fn wan_quiet(proxy: &Proxy) {
    if !proxy.wait_idle(Duration::from_secs(15)) {
        eprintln!("  (connections of an earlier case are still open at the proxy)");
    }
}

/// wan_backlog is the load that queues the backlog: 4 clients, one session
/// each, messages carrying X-Bench-Hold (the peer holds them until released).
fn wan_backlog(n: usize) -> Load {
    Load {
        clients: WAN_CLIENTS,
        size: 4096,
        per_conn: usize::MAX,
        max_each: n.div_ceil(WAN_CLIENTS),
        max_time: Duration::from_secs(300),
        hold: true,
    }
}

/// wan_limit is how long a drain may take: a minute plus four round trips
/// per message and connection (the delivered span is what is reported).
fn wan_limit(n: usize, c: usize, rtt: Duration) -> Duration {
    Duration::from_secs(60) + rtt * 4 * n as u32 / c.max(1) as u32
}

/// peer_concurrency runs --peer-concurrency with `{n}` = c, then gives the
/// peer a moment to take it (Postfix: a reload restarts its queue manager).
fn peer_concurrency(p: &Peer, c: usize, res: &mut Results) {
    let Some(cmd) = &p.concurrency else { return };
    let cmd = cmd.replace("{n}", &c.to_string());
    match Command::new("sh").arg("-c").arg(&cmd).status() {
        Ok(s) if s.success() => {}
        other => res.note(format!("{}: `{cmd}`: {other:?}", p.name)),
    }
    thread::sleep(Duration::from_secs(2));
}

fn report_wan(
    res: &mut Results,
    who: Who,
    name: &str,
    c: usize,
    rtt: Duration,
    w: &WanRun,
    expect_bdat: bool,
) {
    let rate = w.delivered as f64 / w.span.as_secs_f64().max(1e-9);
    let ceiling = c as f64 / rtt.as_secs_f64();
    eprintln!(
        "  {who:?}: {} queued, {} at the sink in {:.2} s: {:.1} msgs/s ({:.0} % of {c} / RTT = {:.0}); \
         DATA {}, BDAT {}; at most {} connections at once",
        w.queued,
        w.delivered,
        w.span.as_secs_f64(),
        rate,
        100.0 * rate / ceiling,
        ceiling,
        w.data,
        w.bdat,
        w.peak
    );
    if w.delivered < w.queued {
        res.note_n(
            format!("{name} ({who:?}): queued but not at the sink in time"),
            w.queued - w.delivered,
        );
    }
    let (want, got, other) = if expect_bdat {
        ("BDAT", w.bdat, w.data)
    } else {
        ("DATA", w.data, w.bdat)
    };
    if got != w.delivered || other > 0 {
        res.note(format!(
            "{name} ({who:?}): expected every message by {want}; the sink got {} by DATA, {} by BDAT",
            w.data, w.bdat
        ));
    }
    if w.peak != c {
        res.note(format!(
            "{name} ({who:?}): {} connections at once at the proxy, not {c}",
            w.peak
        ));
    }
    if w.delivered == 0 {
        return;
    }
    res.add(who, &format!("{name}: drained"), "msgs/s", rate);
    if who == Who::Us {
        res.add(
            who,
            &format!("{name}: ceiling at one round trip per message, connections / RTT"),
            "msgs/s",
            ceiling,
        );
    }
    res.add(
        who,
        &format!("{name}: fraction of connections / RTT reached"),
        "%",
        100.0 * rate / ceiling,
    );
    res.add(
        who,
        &format!("{name}: round trips per message, connections / (rate × RTT)"),
        "RTT/msg",
        ceiling / rate,
    );
}

fn peer_reset(p: &Peer, res: &mut Results) {
    if let Some(cmd) = &p.reset {
        match Command::new("sh").arg("-c").arg(cmd).status() {
            Ok(s) if s.success() => {}
            Ok(s) => res.note(format!("peer reset `{cmd}` exited with {s}")),
            Err(e) => res.note(format!("peer reset `{cmd}`: {e}")),
        }
    }
}

fn report_accept(res: &mut Results, who: Who, name: &str, r: &LoadResult, latency: bool) {
    eprintln!(
        "  {:?} {name}: {} msgs in {:.2}s, {} errors",
        who,
        r.lat.len(),
        r.elapsed.as_secs_f64(),
        r.errors
    );
    if let Some(e) = &r.first_error {
        res.note_n(
            format!("{name} ({who:?}): client errors, e.g. {e}"),
            r.errors,
        );
    }
    res.add(who, &format!("{name}: accepted"), "msgs/s", r.rate());
    if latency {
        let (p50, p99) = percentiles(&r.lat);
        res.add(who, &format!("{name}: accept latency p50"), "ms", ms(p50));
        res.add(who, &format!("{name}: accept latency p99"), "ms", ms(p99));
        report_commit(res, who, name, r);
    }
}

/// report_commit adds the final dot → 250 latency: what the client waits for
/// the message to be made durable (the issue's "accept p99 ≤ 2× one fsync").
fn report_commit(res: &mut Results, who: Who, name: &str, r: &LoadResult) {
    let (p50, p99) = percentiles(&r.commit);
    res.add(
        who,
        &format!("{name}: commit latency (dot → 250) p50"),
        "ms",
        ms(p50),
    );
    res.add(
        who,
        &format!("{name}: commit latency (dot → 250) p99"),
        "ms",
        ms(p99),
    );
}

fn report_e2e(res: &mut Results, who: Who, name: &str, r: &LoadResult, d: &Delivered) {
    eprintln!(
        "  {:?} {name}: {} accepted, {} at the sink, {:.2}s to the last",
        who,
        r.lat.len(),
        d.lat.len(),
        d.span.as_secs_f64()
    );
    if let Some(e) = &r.first_error {
        res.note_n(
            format!("{name} ({who:?}): client errors, e.g. {e}"),
            r.errors,
        );
    }
    if d.lat.len() < r.lat.len() {
        res.note_n(
            format!("{name} ({who:?}): accepted but not at the sink in time"),
            r.lat.len() - d.lat.len(),
        );
    }
    // The sink offers no CHUNKING in these cases; a count above the distinct
    // messages is a message sent twice.
    if d.bdat > 0 || d.data + d.bdat != d.lat.len() {
        res.note(format!(
            "{name} ({who:?}): the sink got {} by DATA and {} by BDAT for {} distinct messages",
            d.data,
            d.bdat,
            d.lat.len()
        ));
    }
    if d.lat.is_empty() {
        return;
    }
    res.add(
        who,
        &format!("{name}: delivered to sink"),
        "msgs/s",
        d.lat.len() as f64 / d.span.as_secs_f64().max(1e-9),
    );
    let (p50, p99) = percentiles(&r.lat);
    res.add(who, &format!("{name}: accept latency p50"), "ms", ms(p50));
    res.add(who, &format!("{name}: accept latency p99"), "ms", ms(p99));
    report_commit(res, who, name, r);
    let (p50, p99) = percentiles(&d.lat);
    res.add(who, &format!("{name}: accept→sink p50"), "ms", ms(p50));
    res.add(who, &format!("{name}: accept→sink p99"), "ms", ms(p99));
}

/// static_cases measures the footprint of the static build (`make static`):
/// size, start-up, and resident memory idle and after a message, as the rest
/// of the table does for the default (glibc) build.
fn static_cases(o: &Opts, bin: &Path, res: &mut Results) -> Result<(), String> {
    let size = fs::metadata(bin)
        .map_err(|e| format!("{}: {e}", bin.display()))?
        .len();
    res.add(Who::Us, "static build: binary size", "MiB", mib(size));
    let relay = Relay::start_bin(o, bin, None, "")?;
    res.add(
        Who::Us,
        "static build: start-up (spawn → banner)",
        "ms",
        ms(relay.startup),
    );
    thread::sleep(Duration::from_millis(300));
    let (rss, _) = relay.memory();
    res.add(
        Who::Us,
        "static build: RSS idle (VmRSS)",
        "MiB",
        kib_to_mib(rss),
    );
    let (pss, _) = pss_sum(&[relay.pid()]);
    res.add(Who::Us, "static build: idle PSS", "MiB", kib_to_mib(pss));
    let rss = rss_after_messages(&relay)?;
    res.add(
        Who::Us,
        "static build: RSS idle after 10 messages (VmRSS)",
        "MiB",
        kib_to_mib(rss),
    );
    relay.stop();
    Ok(())
}

/// rss_after_messages sends ten 4 KiB messages over one session, then returns
/// VmRSS (KiB) once the relay is idle again: the code a session touches stays
/// resident, so this is the idle figure of a relay that has worked.
fn rss_after_messages(relay: &Relay) -> Result<u64, String> {
    let mut c = Smtp::connect(relay.addr)?;
    let body = body_of(4096);
    for seq in 0..10 {
        c.send("idle", seq, &body, true)?;
    }
    c.quit();
    thread::sleep(Duration::from_millis(300));
    Ok(relay.memory().0)
}

/// memory_cases measures RSS idle, with many connections, and with ten large messages.
fn memory_cases(o: &Opts, res: &mut Results) -> Result<(), String> {
    let relay = Relay::start(o, None, "")?;
    thread::sleep(Duration::from_millis(300));
    let (rss, hwm) = relay.memory();
    res.add(Who::Us, "RSS idle (VmRSS)", "MiB", kib_to_mib(rss));
    res.add(Who::Us, "RSS idle (VmHWM)", "MiB", kib_to_mib(hwm));
    let rss = rss_after_messages(&relay)?;
    res.add(
        Who::Us,
        "RSS idle after 10 messages (VmRSS)",
        "MiB",
        kib_to_mib(rss),
    );
    relay.stop();

    for n in [100, 1000] {
        let relay = Relay::start(o, None, "")?;
        let t = Instant::now();
        let mut socks = Vec::with_capacity(n);
        for _ in 0..n {
            match TcpStream::connect_timeout(&relay.addr, Duration::from_secs(5)) {
                Ok(s) => socks.push(s),
                Err(e) => {
                    res.note(format!("{n} connections: connect failed: {e}"));
                    break;
                }
            }
        }
        let connect_time = t.elapsed();
        // Sample before QUEUE_WAIT (3 s) expires the waiting connections.
        thread::sleep(Duration::from_millis(500));
        let (rss, hwm) = relay.memory();
        let (mut served, mut refused, mut waiting, mut closed) = (0, 0, 0, 0);
        for s in &socks {
            let _ = s.set_nonblocking(true);
            let mut buf = [0u8; 64];
            match (&*s).read(&mut buf) {
                Ok(0) => closed += 1,
                Ok(k) if buf[..k].starts_with(b"220") => served += 1,
                Ok(k) if buf[..k].starts_with(b"421") => refused += 1,
                Ok(_) => closed += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => waiting += 1,
                Err(_) => closed += 1,
            }
        }
        drop(socks);
        relay.stop();
        res.add(
            Who::Us,
            &format!("RSS with {n} connections open (VmRSS)"),
            "MiB",
            kib_to_mib(rss),
        );
        res.add(
            Who::Us,
            &format!("RSS with {n} connections open (VmHWM)"),
            "MiB",
            kib_to_mib(hwm),
        );
        res.add(
            Who::Us,
            &format!("{n} connections: time to connect them all, one after another"),
            "ms",
            ms(connect_time),
        );
        res.note(format!(
            "{n} connections (workers = 16), 0.5 s after the last connect: {served} in a session, \
             {waiting} waiting for a worker, {refused} refused with 421, {closed} closed"
        ));
    }

    let relay = Relay::start(o, None, "")?;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, pid) = (Arc::clone(&stop), relay.pid());
        thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(Ordering::SeqCst) {
                peak = peak.max(proc_status(pid).0);
                thread::sleep(Duration::from_millis(10));
            }
            peak
        })
    };
    let spec = Load {
        clients: 10,
        size: 10_000_000,
        per_conn: 1,
        max_each: 1,
        max_time: Duration::from_secs(60),
        hold: true,
    };
    let r = spec.run(relay.addr, "big");
    stop.store(true, Ordering::SeqCst);
    let peak = sampler.join().unwrap_or(0);
    let (_, hwm) = relay.memory();
    relay.stop();
    if let Some(e) = &r.first_error {
        res.note(format!("10 × 10 MB: client errors, e.g. {e}"));
    }
    res.add(
        Who::Us,
        "RSS while 10 clients send 10 MB each (peak VmRSS sampled)",
        "MiB",
        kib_to_mib(peak),
    );
    res.add(
        Who::Us,
        "RSS while 10 clients send 10 MB each (VmHWM)",
        "MiB",
        kib_to_mib(hwm),
    );
    res.add(
        Who::Us,
        "10 × 10 MB: time until all ten are accepted",
        "s",
        r.elapsed.as_secs_f64(),
    );
    Ok(())
}

/// fsync_baseline: the cost of the machine's durability primitives in the
/// spool's filesystem, so that latencies can be read against it: one 4 KiB
/// write+fsync, and a whole durable commit, 200 times each.
fn fsync_baseline(base: &Path) -> Result<(Vec<Duration>, Vec<Duration>), String> {
    let dir = base.join(format!("picorelay-bench-fsync-{}", std::process::id()));
    let q = dir.join("q");
    fs::create_dir_all(&q).map_err(|e| format!("{}: {e}", q.display()))?;
    let data = vec![b'x'; 4096];
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let result = (|| -> io::Result<()> {
        for i in 0..200 {
            let p = dir.join(format!("f{i}"));
            let t = Instant::now();
            let mut f = fs::File::create(&p)?;
            f.write_all(&data)?;
            f.sync_all()?;
            a.push(t.elapsed());
            let t = Instant::now();
            let p2 = dir.join(format!("g{i}"));
            let mut f = fs::File::create(&p2)?;
            f.write_all(&data)?;
            f.sync_all()?;
            fs::rename(&p2, q.join(format!("g{i}")))?;
            fs::File::open(&q)?.sync_all()?;
            b.push(t.elapsed());
        }
        Ok(())
    })();
    let _ = fs::remove_dir_all(&dir);
    result.map_err(|e| format!("fsync baseline in {}: {e}", dir.display()))?;
    Ok((a, b))
}

// ---------------------------------------------------------------------------
// The pool under pressure (issue 12): attackers hold the workers, a client on
// 127.0.0.1 tries to get a message through.

/// Where the attackers connect from: network clients in the relay's rules
/// (127.0.0.1 is a local client, exempt from max_connections_per_ip).
const ATTACKER_IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)];

/// Attacker counts tried, fewest first; a series stops at the first that locks
/// the client out.
const PRESSURE_STEPS: &[usize] = &[8, 16, 24, 32, 64, 100, 200];
const PRESSURE_STEPS_QUICK: &[usize] = &[8, 16, 32, 200];

/// The per-address limit that leaves the protection to the pool (issue 12).
const PRESSURE_RAISED_LIMIT: &str = "max_connections_per_ip = 1000";

/// A client that waits longer than this for banner + 250 is locked out (issue 12).
const LOCKED_OUT: Duration = Duration::from_secs(5);

/// Read timeout of each try of the client: a relay that hangs fails the try.
const TRY_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a lock-out is followed, from the client's first failed try.
const LOCKOUT_CAP: Duration = Duration::from_secs(40);

/// How long the attackers get to reach their holding state (banner, EHLO, and
/// for data-trickle MAIL, RCPT, DATA); the relay's wait for a worker is 3 s.
const ATTACK_SETUP: Duration = Duration::from_secs(8);

/// The attack stands this long before the client comes: a client arriving
/// during an attack, not in its first second (and longer than the 2 s a
/// session must have been idle before the relay may end it for another).
const ATTACK_STANDING: Duration = Duration::from_millis(2500);

/// No attacker or hammer thread lives longer than this, whatever happens.
const ATTACKER_LIFE: Duration = Duration::from_secs(120);

/// The hammer: this many connections at a time, for this long (quick: shorter),
/// the client starting after the warm-up, when the pool is full.
const HAMMER_CONNS: usize = 100;
const HAMMER_TIME: Duration = Duration::from_secs(20);
const HAMMER_TIME_QUICK: Duration = Duration::from_secs(8);
const HAMMER_WARMUP: Duration = Duration::from_secs(3);
/// Pause of a hammer connection after a refusal, of the client after a
/// refused try: busy, but not a spin on two shared cores.
const HAMMER_PAUSE: Duration = Duration::from_millis(200);
const CLIENT_PAUSE: Duration = Duration::from_millis(100);
/// Bounds on the count: connections per hammer thread, tries of the client.
const HAMMER_MAX_EACH: usize = 2000;
const CLIENT_MAX_TRIES: usize = 2000;

/// How an attacker holds its worker.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Attacker {
    /// Banner, EHLO, then silence.
    Idle,
    /// EHLO, then one byte a second of a command line that never ends.
    Trickle,
    /// MAIL, RCPT, DATA, then one byte a second of the message.
    DataTrickle,
}

impl Attacker {
    const ALL: [Attacker; 3] = [Attacker::Idle, Attacker::Trickle, Attacker::DataTrickle];

    fn name(self) -> &'static str {
        match self {
            Attacker::Idle => "idle",
            Attacker::Trickle => "trickle",
            Attacker::DataTrickle => "data-trickle",
        }
    }

    /// trickle is the start of what is sent one byte a second once the
    /// session is held ('x' after it); None for silence.
    fn trickle(self) -> Option<&'static [u8]> {
        match self {
            Attacker::Idle => None,
            Attacker::Trickle => Some(b"NOOP "),
            Attacker::DataTrickle => Some(b"Subject: "),
        }
    }
}

/// What became of a group of attacker (or hammer) connections.
#[derive(Default)]
struct Tally {
    /// Connections that got their session (idle after EHLO, or in DATA).
    held: AtomicUsize,
    /// Of those, still holding now.
    holding: AtomicUsize,
    /// Ended before holding: refused at connect (421), or closed.
    refused: AtomicUsize,
    /// Held, then ended by the relay.
    cut: AtomicUsize,
    /// Could not connect at all (our side).
    failed: AtomicUsize,
    /// The replies that ended connections, with their counts.
    replies: Mutex<BTreeMap<String, usize>>,
}

impl Tally {
    /// resolved counts the connections that are holding or have ended.
    fn resolved(&self) -> usize {
        self.held.load(Ordering::SeqCst)
            + self.refused.load(Ordering::SeqCst)
            + self.failed.load(Ordering::SeqCst)
    }

    fn reply(&self, when: &str, text: &str) {
        let text: String = text.trim().chars().take(90).collect();
        *lock(&self.replies)
            .entry(format!("{when}: {text}"))
            .or_insert(0) += 1;
    }

    fn summary(&self) -> String {
        let mut s = format!(
            "{} holding, {} ended by the relay, {} refused",
            self.holding.load(Ordering::SeqCst),
            self.cut.load(Ordering::SeqCst),
            self.refused.load(Ordering::SeqCst)
        );
        let failed = self.failed.load(Ordering::SeqCst);
        if failed > 0 {
            let _ = write!(s, ", {failed} could not connect");
        }
        s
    }

    /// replies_text lists the replies that ended connections, most frequent first.
    fn replies_text(&self) -> String {
        let mut v: Vec<(String, usize)> = lock(&self.replies)
            .iter()
            .map(|(k, n)| (k.clone(), *n))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.iter()
            .map(|(k, n)| format!("{n}× {k}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// N attacker connections of one kind, each on its own thread.
struct Attack {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Attack {
    /// start opens `n` connections from the attacker addresses in turn.
    fn start(kind: Attacker, n: usize, to: SocketAddr) -> Attack {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let (stop, t) = (Arc::clone(&stop), Arc::clone(&tally));
            let from = ATTACKER_IPS[i % ATTACKER_IPS.len()];
            match thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || attacker(kind, from, to, &stop, &t))
            {
                Ok(h) => threads.push(h),
                Err(_) => {
                    tally.failed.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        Attack {
            stop,
            tally,
            threads,
        }
    }

    /// wait_resolved waits (bounded) until every attacker holds or has ended.
    fn wait_resolved(&self, n: usize) {
        let deadline = Instant::now() + ATTACK_SETUP + Duration::from_secs(1);
        while self.tally.resolved() < n && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// stop ends every attacker (each notices within a second) and returns the tally.
    fn stop(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::SeqCst);
        for h in self.threads {
            let _ = h.join();
        }
        self.tally
    }
}

/// attacker opens one connection of `kind` and holds it until it is ended,
/// told to stop, or ATTACKER_LIFE has passed.
fn attacker(kind: Attacker, from: Ipv4Addr, to: SocketAddr, stop: &AtomicBool, t: &Tally) {
    let deadline = Instant::now() + ATTACKER_LIFE;
    let Some(mut c) = connect_from(from, to, Duration::from_secs(5))
        .ok()
        .and_then(|s| Smtp::from_stream(s, ATTACK_SETUP).ok())
    else {
        t.failed.fetch_add(1, Ordering::SeqCst);
        return;
    };
    let mut steps: Vec<(Option<&[u8]>, u16)> =
        vec![(None, 220), (Some(b"EHLO attacker.bench.test\r\n"), 250)];
    if kind == Attacker::DataTrickle {
        steps.extend([
            (
                Some(&b"MAIL FROM:<attacker@attacker.bench.test>\r\n"[..]),
                250,
            ),
            (Some(b"RCPT TO:<sink@sink.bench.test>\r\n"), 250),
            (Some(b"DATA\r\n"), 354),
        ]);
    }
    for (cmd, code) in steps {
        if let Err(e) = c.expect(cmd, code) {
            t.refused.fetch_add(1, Ordering::SeqCst);
            t.reply("before holding", &e);
            return;
        }
    }
    t.held.fetch_add(1, Ordering::SeqCst);
    t.holding.fetch_add(1, Ordering::SeqCst);
    let ended = c.hold(kind.trickle(), Duration::from_secs(1), stop, deadline);
    t.holding.fetch_sub(1, Ordering::SeqCst);
    if let Some(why) = ended {
        t.cut.fetch_add(1, Ordering::SeqCst);
        t.reply("while held", &why);
    }
}

/// connect_from connects to `to` from a chosen loopback address (the relay
/// sees 127.0.0.2 and 127.0.0.3 as network clients); std cannot bind before
/// connect. The connect gives up after `timeout` (SO_SNDTIMEO bounds connect
/// on Linux).
fn connect_from(from: Ipv4Addr, to: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let SocketAddr::V4(to) = to else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "IPv4 only"));
    };
    let sockaddr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip.octets()),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: socket() takes no pointers; the descriptor it returns is owned by
    // the TcpStream at once, which closes it on every path below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket that nothing else owns.
    let s = unsafe { TcpStream::from_raw_fd(fd) };
    s.set_write_timeout(Some(timeout))?;
    let local = sockaddr(from, 0);
    // SAFETY: bind reads `len` bytes of a sockaddr_in that lives across the call.
    let rc = unsafe {
        libc::bind(
            s.as_raw_fd(),
            &local as *const libc::sockaddr_in as *const libc::sockaddr,
            len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let remote = sockaddr(*to.ip(), to.port());
    // SAFETY: connect reads `len` bytes of a sockaddr_in that lives across the call.
    let rc = unsafe {
        libc::connect(
            s.as_raw_fd(),
            &remote as *const libc::sockaddr_in as *const libc::sockaddr,
            len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(s)
}

/// pool_figures asks the relay for its `pool` figures (`status --json`, issue
/// 12): "busy 16, waiting 0, evictions 3, refusals 0"; None from a build
/// without them. Bounded: the status command is killed after 12 s.
fn pool_figures(bin: &Path, relay: &Relay) -> Option<String> {
    let mut child = Command::new(bin)
        .arg("-c")
        .arg(relay.dir.join("picorelay.ini"))
        .args(["status", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(12);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    let mut out = String::new();
    child.stdout.take()?.read_to_string(&mut out).ok()?;
    let pool = &out[out.find("\"pool\"")?..];
    let pool = &pool[..pool.find('}')?];
    let figure = |key: &str| -> Option<u64> {
        let key = format!("\"{key}\"");
        let rest = pool[pool.find(&key)? + key.len()..]
            .trim_start()
            .strip_prefix(':')?
            .trim_start();
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        rest[..end].parse().ok()
    };
    Some(format!(
        "busy {}, waiting {}, evictions {}, refusals {}",
        figure("busy")?,
        figure("waiting")?,
        figure("evictions")?,
        figure("refusals")?
    ))
}

/// client_try sends one small message from 127.0.0.1 over a fresh connection:
/// (connect → banner, connect → 250), or (time spent, why it failed).
fn client_try(
    addr: SocketAddr,
    seq: u64,
    timeout: Duration,
) -> Result<(Duration, Duration), (Duration, String)> {
    let t = Instant::now();
    let fail = |e: String| (t.elapsed(), e);
    let s =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| fail(format!("connect: {e}")))?;
    let mut c = Smtp::from_stream(s, timeout).map_err(fail)?;
    c.expect(None, 220).map_err(fail)?;
    let banner = t.elapsed();
    c.expect(Some(b"EHLO client.bench.test\r\n"), 250)
        .map_err(fail)?;
    c.send("pressure", seq, &body_of(1024), true)
        .map_err(fail)?;
    let done = t.elapsed();
    c.quit();
    Ok((banner, done))
}

/// How the client fared against one standing attack.
#[derive(Default)]
struct Verdict {
    /// Longest connect → banner and connect → 250 of the tries in time.
    banner: Duration,
    done: Duration,
    /// Why the client was locked out: refused, an error, or a wait over LOCKED_OUT.
    locked: Option<String>,
    /// From the first locked-out try to a 250; None: not within LOCKOUT_CAP.
    lockout: Option<Duration>,
}

/// client_verdict makes up to `tries` tries one after another; at the first
/// locked out, follows how long it takes until a message gets through.
fn client_verdict(addr: SocketAddr, tries: u64) -> Verdict {
    let mut v = Verdict::default();
    for seq in 0..tries {
        let t0 = Instant::now();
        match client_try(addr, seq, TRY_TIMEOUT) {
            Ok((banner, done)) if done <= LOCKED_OUT => {
                v.banner = v.banner.max(banner);
                v.done = v.done.max(done);
            }
            Ok((_, done)) => {
                v.locked = Some(format!("waited {:.1} s for its 250", done.as_secs_f64()));
                v.lockout = Some(done);
                return v;
            }
            Err((took, e)) => {
                v.locked = Some(format!("{e} (after {:.1} s)", took.as_secs_f64()));
                v.lockout = until_served(addr, t0, seq + 1);
                return v;
            }
        }
    }
    v
}

/// until_served retries (a try every 250 ms at most) until a message gets
/// through: the time from `since` to that 250, None if not within LOCKOUT_CAP.
fn until_served(addr: SocketAddr, since: Instant, mut seq: u64) -> Option<Duration> {
    loop {
        let left = LOCKOUT_CAP.checked_sub(since.elapsed())?;
        if left < Duration::from_millis(100) {
            return None;
        }
        if client_try(addr, seq, left.min(TRY_TIMEOUT)).is_ok() {
            return Some(since.elapsed()).filter(|d| *d <= LOCKOUT_CAP);
        }
        seq += 1;
        thread::sleep(Duration::from_millis(250));
    }
}

/// pressure_cases runs the issue 12 cases, with the per-address limit raised
/// (the pool alone protects) and with the default config.
fn pressure_cases(
    o: &Opts,
    case_on: &dyn Fn(&str) -> bool,
    res: &mut Results,
) -> Result<(), String> {
    let steps = if o.quick {
        PRESSURE_STEPS_QUICK
    } else {
        PRESSURE_STEPS
    };
    for (extra, cfg) in [
        (PRESSURE_RAISED_LIMIT, PRESSURE_RAISED_LIMIT),
        ("", "default max_connections_per_ip = 8"),
    ] {
        for kind in Attacker::ALL {
            let name = format!("pressure, {} attackers, {cfg}", kind.name());
            if case_on(&name) {
                attack_series(o, kind, extra, steps, &name, res)?;
            }
        }
        let name = format!("pressure, hammer of {HAMMER_CONNS} idle connections, {cfg}");
        if case_on(&name) {
            hammer_case(o, extra, &name, res)?;
        }
    }
    Ok(())
}

/// attack_series raises the count of attackers of one kind until the client
/// is locked out (waits more than 5 s for banner + 250, or is refused), each
/// count against a fresh relay (workers = 16, default timeouts).
fn attack_series(
    o: &Opts,
    kind: Attacker,
    extra: &str,
    steps: &[usize],
    name: &str,
    res: &mut Results,
) -> Result<(), String> {
    eprintln!("bench: {name}");
    let mut lines = Vec::new();
    let mut ended = Vec::new();
    let mut worst_in_time: Option<Duration> = None;
    let mut locked_at = None;
    for &n in steps {
        let relay = Relay::start(o, None, extra)?;
        let attack = Attack::start(kind, n, relay.addr);
        attack.wait_resolved(n);
        thread::sleep(ATTACK_STANDING);
        let standing = attack.tally.summary();
        let pool = pool_figures(&o.bin, &relay);
        let v = client_verdict(relay.addr, 3);
        let tally = attack.stop();
        relay.stop();
        let mut line = match &v.locked {
            None => format!(
                "{n}: 250 in {} ms at worst (banner {} ms)",
                num(ms(v.done)),
                num(ms(v.banner))
            ),
            Some(why) => format!(
                "{n}: locked out, {why}; served again {}",
                match v.lockout {
                    Some(d) => format!("{:.1} s after its first try", d.as_secs_f64()),
                    None => format!("not within {} s", LOCKOUT_CAP.as_secs()),
                }
            ),
        };
        let _ = write!(line, " [attackers when the client came: {standing}");
        if let Some(p) = pool {
            let _ = write!(line, "; relay pool: {p}");
        }
        line.push(']');
        eprintln!("  {line}");
        lines.push(line);
        let replies = tally.replies_text();
        if !replies.is_empty() {
            ended.push(format!("{n}: {replies}"));
        }
        if v.locked.is_some() {
            locked_at = Some((n, v));
            break;
        }
        worst_in_time = Some(worst_in_time.unwrap_or_default().max(v.done));
    }
    let last = steps.last().copied().unwrap_or(0);
    let (fewest, lockout) = match &locked_at {
        Some((n, v)) => (
            n.to_string(),
            match v.lockout {
                Some(d) => format!("{:.1}", d.as_secs_f64()),
                None => format!("> {} (cap)", LOCKOUT_CAP.as_secs()),
            },
        ),
        None => (format!("none up to {last}"), "–".to_string()),
    };
    res.add_text(
        Who::Us,
        &format!("{name}: fewest that lock a client out (> 5 s or refused)"),
        "attackers",
        fewest,
    );
    res.add_text(
        Who::Us,
        &format!("{name}: client locked out for, from its first try"),
        "s",
        lockout,
    );
    if let Some(d) = worst_in_time {
        res.add(
            Who::Us,
            &format!("{name}: client's longest connect → 250 with fewer attackers"),
            "ms",
            ms(d),
        );
    }
    res.note(format!(
        "{name}, client per attacker count: {}",
        lines.join("; ")
    ));
    if !ended.is_empty() {
        res.note(format!(
            "{name}, replies that ended attackers: {}",
            ended.join(" | ")
        ));
    }
    Ok(())
}

/// hammer_case keeps HAMMER_CONNS connections from the attacker addresses
/// opening and sitting idle (each reopened as soon as it is refused or ended)
/// while the client sends one message after another over fresh connections.
fn hammer_case(o: &Opts, extra: &str, name: &str, res: &mut Results) -> Result<(), String> {
    eprintln!("bench: {name}");
    let time = if o.quick {
        HAMMER_TIME_QUICK
    } else {
        HAMMER_TIME
    };
    let relay = Relay::start(o, None, extra)?;
    let start = Instant::now();
    let until = start + time;
    // The hammer stops when the client's last try is over (a try that began
    // before `until` must not find the hammer gone), by this at the latest.
    let hammer_until = until + TRY_TIMEOUT * 2;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut threads = Vec::new();
    for i in 0..HAMMER_CONNS {
        let (stop, t, to) = (Arc::clone(&stop), Arc::clone(&tally), relay.addr);
        let from = ATTACKER_IPS[i % ATTACKER_IPS.len()];
        if let Ok(h) = thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || hammer(from, to, &stop, hammer_until, &t))
        {
            threads.push(h);
        }
    }
    thread::sleep(HAMMER_WARMUP);
    let (mut lat, mut refused, mut first_refusal) = (Vec::new(), 0usize, None);
    let mut seq = 0;
    while Instant::now() < until && (seq as usize) < CLIENT_MAX_TRIES {
        seq += 1;
        match client_try(relay.addr, seq, TRY_TIMEOUT) {
            Ok((_, done)) => lat.push(done),
            Err((_, e)) => {
                refused += 1;
                first_refusal.get_or_insert(e);
                thread::sleep(CLIENT_PAUSE);
            }
        }
    }
    let pool = pool_figures(&o.bin, &relay);
    stop.store(true, Ordering::SeqCst);
    for h in threads {
        let _ = h.join();
    }
    let elapsed = start.elapsed();
    relay.stop();
    let (p50, p99) = percentiles(&lat);
    let max = lat.iter().max().copied().unwrap_or_default();
    eprintln!(
        "  client: {} accepted (p50 {} ms, p99 {} ms, max {} ms), {refused} refused; hammer: {}",
        lat.len(),
        num(ms(p50)),
        num(ms(p99)),
        num(ms(max)),
        tally.summary()
    );
    if !lat.is_empty() {
        res.add(
            Who::Us,
            &format!("{name}: client connect → 250 p50"),
            "ms",
            ms(p50),
        );
        res.add(
            Who::Us,
            &format!("{name}: client connect → 250 p99"),
            "ms",
            ms(p99),
        );
        res.add(
            Who::Us,
            &format!("{name}: client connect → 250 max"),
            "ms",
            ms(max),
        );
    }
    res.add(
        Who::Us,
        &format!("{name}: client messages accepted"),
        "msgs",
        lat.len() as f64,
    );
    res.add(
        Who::Us,
        &format!("{name}: client tries refused or failed"),
        "tries",
        refused as f64,
    );
    let mut note = format!(
        "{name}: {:.0} s; hammer connections opened {}: {} got a session, {} refused at connect; \
         the client started after {} s",
        elapsed.as_secs_f64(),
        tally.held.load(Ordering::SeqCst)
            + tally.refused.load(Ordering::SeqCst)
            + tally.failed.load(Ordering::SeqCst),
        tally.held.load(Ordering::SeqCst),
        tally.refused.load(Ordering::SeqCst),
        HAMMER_WARMUP.as_secs()
    );
    if let Some(e) = first_refusal {
        let _ = write!(note, "; the client's first refusal: {e}");
    }
    if let Some(p) = pool {
        let _ = write!(note, "; relay pool at the end: {p}");
    }
    let replies = tally.replies_text();
    if !replies.is_empty() {
        let _ = write!(note, "; replies to the hammer: {replies}");
    }
    res.note(note);
    Ok(())
}

/// hammer keeps one connection open and idle after its banner, reopening it
/// whenever it is refused or ended, until `stop` is set or `until` passes (or
/// after HAMMER_MAX_EACH connections).
fn hammer(from: Ipv4Addr, to: SocketAddr, stop: &AtomicBool, until: Instant, t: &Tally) {
    let until = until.min(Instant::now() + ATTACKER_LIFE);
    for _ in 0..HAMMER_MAX_EACH {
        if stop.load(Ordering::SeqCst) || Instant::now() >= until {
            return;
        }
        let Some(mut c) = connect_from(from, to, Duration::from_secs(5))
            .ok()
            .and_then(|s| Smtp::from_stream(s, Duration::from_secs(5)).ok())
        else {
            t.failed.fetch_add(1, Ordering::SeqCst);
            thread::sleep(HAMMER_PAUSE);
            continue;
        };
        if let Err(e) = c.expect(None, 220) {
            t.refused.fetch_add(1, Ordering::SeqCst);
            t.reply("at connect", &e);
            thread::sleep(HAMMER_PAUSE);
            continue;
        }
        // A connection that waited for a worker is served once the others let go
        // at the end: not a session the hammer held.
        if stop.load(Ordering::SeqCst) {
            return;
        }
        t.held.fetch_add(1, Ordering::SeqCst);
        t.holding.fetch_add(1, Ordering::SeqCst);
        let ended = c.hold(None, Duration::from_millis(500), stop, until);
        t.holding.fetch_sub(1, Ordering::SeqCst);
        if let Some(why) = ended {
            t.cut.fetch_add(1, Ordering::SeqCst);
            t.reply("while held", &why);
        }
    }
}

// ---------------------------------------------------------------------------
// The relay under test.

/// Workers for the load cases: more than the 20 clients of the largest case.
const LOAD_WORKERS: &str = "workers = 24";

/// A running picorelay with its own temporary directory (config, spool, log).
struct Relay {
    child: Option<Child>,
    dir: PathBuf,
    addr: SocketAddr,
    startup: Duration,
    /// Leave the directory in place when dropped (a spool handed on to a next relay).
    keep_dir: bool,
}

/// What a relay's config holds besides the bench's defaults.
#[derive(Default)]
struct Setup<'a> {
    /// The smarthost (`tls = none`); None: hold mode.
    smarthost: Option<SocketAddr>,
    /// Extra `[server]` lines, e.g. "workers = 24".
    server: &'a str,
    /// Extra `[smarthost]` lines, e.g. "max_connections = 20".
    smarthost_extra: &'a str,
}

impl Relay {
    /// start writes a config (hold mode when `smarthost` is None), spawns the
    /// binary and waits until it answers with its banner.
    fn start(o: &Opts, smarthost: Option<SocketAddr>, extra: &str) -> Result<Relay, String> {
        Relay::start_bin(o, &o.bin, smarthost, extra)
    }

    /// start_bin is start with another build of the binary.
    fn start_bin(
        o: &Opts,
        bin: &Path,
        smarthost: Option<SocketAddr>,
        extra: &str,
    ) -> Result<Relay, String> {
        let setup = Setup {
            smarthost,
            server: extra,
            ..Setup::default()
        };
        Relay::start_in(bin, new_dir(o)?, &setup)
    }

    /// start_in runs the binary in `dir`, which may hold the spool of a relay
    /// that ran there before (the wan cases queue in hold mode, then deliver).
    fn start_in(bin: &Path, dir: PathBuf, setup: &Setup) -> Result<Relay, String> {
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let smarthost = match setup.smarthost {
            Some(s) => format!("host = {s}\ntls = none\n{}\n", setup.smarthost_extra),
            None => String::new(),
        };
        let extra = setup.server;
        // workers = 16 (the default) unless the case sets its own.
        let workers = if extra.contains("workers") {
            ""
        } else {
            "workers = 16\n"
        };
        let level = std::env::var("PICORELAY_BENCH_LOG").unwrap_or_else(|_| "info".into());
        let reuse = std::env::var("PICORELAY_BENCH_REUSE_FILES")
            .map(|v| format!("reuse_files = {v}\n"))
            .unwrap_or_default();
        let cfg = format!(
            "[server]\nlisten = {addr}\nhostname = bench.test\n{workers}\
             max_message_size = 20M\n{extra}\n\
             [smarthost]\n{smarthost}\n\
             [queue]\ndir = {}\nmax_size = 50G\n{reuse}\n\
             [log]\nlevel = {level}\nfile = {}\n",
            dir.join("spool").display(),
            dir.join("picorelay.log").display()
        );
        let cfg_path = dir.join("picorelay.ini");
        fs::write(&cfg_path, cfg).map_err(|e| format!("{}: {e}", cfg_path.display()))?;
        let stderr =
            fs::File::create(dir.join("stderr")).map_err(|e| format!("{}: {e}", dir.display()))?;
        let t = Instant::now();
        let mut cmd = Command::new(bin);
        cmd.arg("-c").arg(&cfg_path).arg("serve");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let mut relay = Relay {
            child: Some(child),
            dir,
            addr,
            startup: Duration::ZERO,
            keep_dir: false,
        };
        let deadline = t + Duration::from_secs(10);
        loop {
            if let Ok(s) = TcpStream::connect(addr) {
                let mut r = BufReader::new(s);
                match read_reply(&mut r) {
                    Ok((220, _)) => break,
                    other => return Err(format!("unexpected banner from {addr}: {other:?}")),
                }
            }
            if let Some(Ok(Some(status))) = relay.child.as_mut().map(|c| c.try_wait()) {
                let log = fs::read_to_string(relay.dir.join("stderr")).unwrap_or_default();
                return Err(format!("relay exited at start ({status}): {log}"));
            }
            if Instant::now() > deadline {
                return Err(format!("relay did not answer on {addr} within 10 s"));
            }
            thread::sleep(Duration::from_micros(200));
        }
        relay.startup = t.elapsed();
        Ok(relay)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// memory returns (VmRSS, VmHWM) in KiB.
    fn memory(&self) -> (u64, u64) {
        proc_status(self.pid())
    }

    /// cpu_ticks returns the relay's utime + stime (all its threads), in clock ticks.
    fn cpu_ticks(&self) -> Option<u64> {
        proc_cpu_ticks(self.pid(), false)
    }

    /// stop sends SIGTERM, waits for the clean shutdown (bounded), removes the directory.
    fn stop(mut self) {
        self.halt();
    }

    /// into_dir stops the relay and hands over its directory (spool included).
    fn into_dir(mut self) -> PathBuf {
        self.halt();
        self.keep_dir = true;
        self.dir.clone()
    }

    /// halt sends SIGTERM and waits for the clean shutdown (bounded); the
    /// directory stays until the Relay is dropped.
    fn halt(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        thread::sleep(Duration::from_millis(10))
                    }
                    _ => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
    }
}

/// new_dir makes a fresh, empty directory for one relay under the bench base.
fn new_dir(o: &Opts) -> Result<PathBuf, String> {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = o.base.join(format!(
        "picorelay-bench-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !self.keep_dir && std::env::var_os("PICORELAY_BENCH_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// proc_status reads VmRSS and VmHWM (KiB) of a process; zeros when gone.
fn proc_status(pid: u32) -> (u64, u64) {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// pss_sum adds the proportional set size (KiB) of the given processes:
/// shared pages (libc, a common binary) count once across them.
fn pss_sum(pids: &[u32]) -> (u64, usize) {
    let mut total = 0;
    let mut n = 0;
    for pid in pids {
        let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        if let Some(kib) = text
            .lines()
            .find_map(|l| l.strip_prefix("Pss:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        {
            total += kib;
            n += 1;
        }
    }
    (total, n)
}

// ---------------------------------------------------------------------------
// What a case costs the machine: block-device writes and CPU time.

/// The block device a spool lives on, found through its st_dev.
struct BlockDev {
    /// Kernel name, e.g. "vda" or "mmcblk0p2" (a partition has its own counters).
    name: String,
    /// "MAJ:MIN".
    majmin: String,
    /// /sys/dev/block/MAJ:MIN/stat.
    stat: PathBuf,
}

impl BlockDev {
    /// of finds the device holding `p`; Err (why) when it has none that the
    /// kernel counts, e.g. tmpfs or btrfs (st_dev major 0).
    fn of(p: &Path) -> Result<BlockDev, String> {
        use std::os::unix::fs::MetadataExt;
        let dev = fs::metadata(p)
            .map_err(|e| format!("{}: {e}", p.display()))?
            .dev();
        // glibc's gnu_dev_major / gnu_dev_minor.
        let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
        let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
        let majmin = format!("{major}:{minor}");
        if major == 0 {
            return Err(format!(
                "{} is on a filesystem without a block device (st_dev {majmin}, e.g. tmpfs)",
                p.display()
            ));
        }
        let sys = PathBuf::from(format!("/sys/dev/block/{majmin}"));
        let stat = sys.join("stat");
        if !stat.is_file() {
            return Err(format!(
                "{}: no {} for its device {majmin}",
                p.display(),
                stat.display()
            ));
        }
        let name = fs::read_to_string(sys.join("uevent"))
            .ok()
            .and_then(|u| {
                u.lines()
                    .find_map(|l| l.strip_prefix("DEVNAME="))
                    .map(str::to_string)
            })
            .or_else(|| {
                fs::read_link(&sys)
                    .ok()
                    .and_then(|l| l.file_name().map(|n| n.to_string_lossy().into_owned()))
            })
            .unwrap_or_else(|| majmin.clone());
        Ok(BlockDev { name, majmin, stat })
    }

    /// writes syncs every filesystem, then reads (write I/Os completed,
    /// 512-byte sectors written): fields 5 and 7 of the device's stat file.
    fn writes(&self) -> Option<(u64, u64)> {
        // SAFETY: sync() takes no arguments and cannot fail.
        unsafe { libc::sync() };
        let text = fs::read_to_string(&self.stat).ok()?;
        let f: Vec<u64> = text
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        Some((*f.get(4)?, *f.get(6)?))
    }

    fn describe(&self) -> String {
        format!("{} ({}, {})", self.name, self.majmin, self.stat.display())
    }
}

/// Counters at the start of a case.
struct CostStart {
    io: Option<(u64, u64)>,
    cpu: Option<u64>,
}

/// cost_start reads the device's writes (after a sync), then the CPU ticks.
fn cost_start(dev: Option<&BlockDev>, cpu: Option<u64>) -> CostStart {
    CostStart {
        io: dev.and_then(BlockDev::writes),
        cpu,
    }
}

/// report_cost adds write I/Os, KB written and CPU per message accepted:
/// `io` and `cpu` are the counters at the end, read as the case defines it.
fn report_cost(
    res: &mut Results,
    who: Who,
    name: &str,
    msgs: usize,
    start: &CostStart,
    io: Option<(u64, u64)>,
    cpu: Option<u64>,
) {
    if msgs == 0 {
        return;
    }
    let n = msgs as f64;
    if let (Some((ios0, sec0)), Some((ios1, sec1))) = (start.io, io) {
        res.add(
            who,
            &format!("{name}: write I/Os per message at the block device"),
            "I/Os/msg",
            ios1.saturating_sub(ios0) as f64 / n,
        );
        res.add(
            who,
            &format!("{name}: written per message at the block device (KB = 1000 bytes)"),
            "KB/msg",
            sec1.saturating_sub(sec0) as f64 * 512.0 / 1000.0 / n,
        );
    }
    if let (Some(c0), Some(c1)) = (start.cpu, cpu) {
        res.add(
            who,
            &format!("{name}: CPU (user + system) per 1000 messages"),
            "CPU ms/1000 msgs",
            c1.saturating_sub(c0) as f64 * 1000.0 / clock_ticks() as f64 * 1000.0 / n,
        );
    }
}

/// clock_ticks is the unit of /proc/PID/stat's times (sysconf(_SC_CLK_TCK)).
fn clock_ticks() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// proc_cpu_ticks reads utime + stime of a process (all its threads), with
/// `children`: plus cutime + cstime (its reaped children). Fields 14 to 17 of
/// /proc/PID/stat, counted after the command name's closing parenthesis.
fn proc_cpu_ticks(pid: u32, children: bool) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    // rest's first field is field 3 (state).
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let own = field(14)? + field(15)?;
    Some(if children {
        own + field(16)? + field(17)?
    } else {
        own
    })
}

/// peer_pids runs the peer's --peer-pids command: its process ids.
fn peer_pids(p: &Peer) -> Option<Vec<u32>> {
    let cmd = p.pids.as_ref()?;
    let out = Command::new("sh").arg("-c").arg(cmd).output().ok()?;
    Some(
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect(),
    )
}

/// peer_cpu sums utime + stime + cutime + cstime over the peer's processes
/// (Postfix's master reaps its short-lived children: their time is its cutime).
fn peer_cpu(p: &Peer) -> Option<u64> {
    let pids = peer_pids(p)?;
    if pids.is_empty() {
        return None;
    }
    Some(
        pids.iter()
            .filter_map(|&pid| proc_cpu_ticks(pid, true))
            .sum(),
    )
}

/// free_port asks the kernel for a free loopback port (released at once; the
/// relay binds it a moment later).
fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

// ---------------------------------------------------------------------------
// The load: clients sending messages.

/// One load case.
struct Load {
    clients: usize,
    size: usize,
    /// Messages per connection (usize::MAX: one session for all).
    per_conn: usize,
    /// Messages per client at most.
    max_each: usize,
    max_time: Duration,
    /// Adds `X-Bench-Hold: yes`, which a peer may use to hold the message
    /// (Postfix header_checks HOLD) so that accept runs measure accepting only.
    hold: bool,
}

/// What the clients saw.
struct LoadResult {
    /// Accept latency (MAIL sent → 250 after the final dot) per message.
    lat: Vec<Duration>,
    /// Commit latency (final dot sent → its 250): the wait for durability.
    commit: Vec<Duration>,
    /// (seq, time of our 250) per accepted message.
    accepted: Vec<(u64, Instant)>,
    start: Instant,
    elapsed: Duration,
    errors: usize,
    first_error: Option<String>,
}

impl LoadResult {
    fn rate(&self) -> f64 {
        self.lat.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl Load {
    fn run(&self, addr: SocketAddr, tag: &str) -> LoadResult {
        let body = Arc::new(body_of(self.size));
        let barrier = Arc::new(Barrier::new(self.clients + 1));
        let errors = Arc::new(Mutex::new((0usize, None::<String>)));
        let mut handles = Vec::new();
        for c in 0..self.clients {
            let (body, barrier, errors) =
                (Arc::clone(&body), Arc::clone(&barrier), Arc::clone(&errors));
            let (tag, per_conn, max_each, max_time, hold) = (
                tag.to_string(),
                self.per_conn,
                self.max_each,
                self.max_time,
                self.hold,
            );
            handles.push(thread::spawn(move || {
                barrier.wait();
                let start = Instant::now();
                let mut lat = Vec::new();
                let mut commit = Vec::new();
                let mut accepted = Vec::new();
                let mut my_errors = 0;
                let mut seq = (c as u64) * 1_000_000;
                'conn: while lat.len() < max_each && start.elapsed() < max_time && my_errors < 10 {
                    let mut s = match Smtp::connect(addr) {
                        Ok(s) => s,
                        Err(e) => {
                            my_errors += 1;
                            note_error(&errors, format!("connect: {e}"));
                            thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                    };
                    let mut in_conn = 0;
                    while in_conn < per_conn && lat.len() < max_each && start.elapsed() < max_time {
                        seq += 1;
                        let t = Instant::now();
                        match s.send(&tag, seq, &body, hold) {
                            Ok(c) => {
                                let done = Instant::now();
                                lat.push(done - t);
                                commit.push(c);
                                accepted.push((seq, done));
                                in_conn += 1;
                            }
                            Err(e) => {
                                my_errors += 1;
                                note_error(&errors, e);
                                continue 'conn;
                            }
                        }
                    }
                    s.quit();
                }
                (lat, commit, accepted)
            }));
        }
        barrier.wait();
        let start = Instant::now();
        let mut lat = Vec::new();
        let mut commit = Vec::new();
        let mut accepted = Vec::new();
        for h in handles {
            if let Ok((l, c, a)) = h.join() {
                lat.extend(l);
                commit.extend(c);
                accepted.extend(a);
            }
        }
        let elapsed = start.elapsed();
        let (errors, first_error) = std::mem::take(&mut *lock(&errors));
        LoadResult {
            lat,
            commit,
            accepted,
            start,
            elapsed,
            errors,
            first_error,
        }
    }
}

fn note_error(errors: &Mutex<(usize, Option<String>)>, e: String) {
    let mut g = lock(errors);
    g.0 += 1;
    g.1.get_or_insert(e);
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// body_of builds a dot-safe message body of about `size` octets (CRLF lines of 76).
fn body_of(size: usize) -> Vec<u8> {
    let line = format!(
        "{}\r\n",
        "abcdefghijklmnopqrstuvwxyz0123456789"
            .repeat(3)
            .get(..76)
            .unwrap_or("")
    );
    let mut b = Vec::with_capacity(size + 80);
    while b.len() + line.len() <= size.saturating_sub(300).max(line.len()) {
        b.extend_from_slice(line.as_bytes());
    }
    b
}

/// A blocking SMTP client session, one command at a time (no pipelining),
/// as notification tools and cron jobs talk.
struct Smtp {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Smtp {
    fn connect(addr: SocketAddr) -> Result<Smtp, String> {
        let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| e.to_string())?;
        let mut c = Smtp::from_stream(s, IO_TIMEOUT)?;
        c.expect(None, 220)?;
        c.expect(Some(b"EHLO client.bench.test\r\n"), 250)?;
        Ok(c)
    }

    /// from_stream wraps a connected socket; every read and write gives up after `timeout`.
    fn from_stream(s: TcpStream, timeout: Duration) -> Result<Smtp, String> {
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(timeout));
        let _ = s.set_write_timeout(Some(timeout));
        let w = s.try_clone().map_err(|e| e.to_string())?;
        Ok(Smtp {
            r: BufReader::with_capacity(4096, s),
            w,
        })
    }

    /// hold keeps the session open, sending one byte of `trickle` (then 'x')
    /// per `tick` if given, until the relay ends it (Some: its reply, or how
    /// it closed), `stop` is set, or `deadline` passes (None).
    fn hold(
        &mut self,
        trickle: Option<&[u8]>,
        tick: Duration,
        stop: &AtomicBool,
        deadline: Instant,
    ) -> Option<String> {
        let _ = self.w.set_read_timeout(Some(tick));
        for i in 0.. {
            if stop.load(Ordering::SeqCst) || Instant::now() >= deadline {
                return None;
            }
            if let Some(line) = trickle {
                let b = line.get(i).copied().unwrap_or(b'x');
                if let Err(e) = self.w.write_all(&[b]) {
                    return Some(format!("write: {e}"));
                }
            }
            match self.r.fill_buf() {
                Ok([]) => return Some("closed without a reply".into()),
                Ok(_) => {
                    return Some(match read_reply(&mut self.r) {
                        Ok((_, text)) => text,
                        Err(e) => format!("reading: {e}"),
                    })
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Some(format!("reading: {e}")),
            }
        }
        None
    }

    fn expect(&mut self, cmd: Option<&[u8]>, code: u16) -> Result<(), String> {
        if let Some(c) = cmd {
            self.w.write_all(c).map_err(|e| e.to_string())?;
        }
        match read_reply(&mut self.r) {
            Ok((got, _)) if got == code => Ok(()),
            Ok((_, text)) => Err(format!(
                "{} → {}",
                cmd.map(|c| String::from_utf8_lossy(c).trim().to_string())
                    .unwrap_or_else(|| "banner".into()),
                text.trim()
            )),
            Err(e) => Err(format!("reading reply: {e}")),
        }
    }

    /// send runs one transaction; returns the time from the final dot to its 250.
    fn send(&mut self, tag: &str, seq: u64, body: &[u8], hold: bool) -> Result<Duration, String> {
        self.expect(Some(b"MAIL FROM:<bench@client.bench.test>\r\n"), 250)?;
        self.expect(Some(b"RCPT TO:<sink@sink.bench.test>\r\n"), 250)?;
        self.expect(Some(b"DATA\r\n"), 354)?;
        let mut head = format!(
            "From: <bench@client.bench.test>\r\nTo: <sink@sink.bench.test>\r\n\
             Subject: bench {tag} {seq}\r\nMessage-ID: <{tag}.{seq}@client.bench.test>\r\n\
             Date: Thu, 1 Jan 2026 00:00:00 +0000\r\nX-Bench-Seq: {tag} {seq}\r\n"
        );
        if hold {
            head.push_str("X-Bench-Hold: yes\r\n");
        }
        head.push_str("\r\n");
        self.w
            .write_all(head.as_bytes())
            .and_then(|_| self.w.write_all(body))
            .map_err(|e| e.to_string())?;
        let t = Instant::now();
        self.expect(Some(b".\r\n"), 250)?;
        Ok(t.elapsed())
    }

    fn quit(mut self) {
        let _ = self.expect(Some(b"QUIT\r\n"), 221);
        let _ = self.w.shutdown(Shutdown::Both);
    }
}

/// read_reply reads one (possibly multi-line) SMTP reply: (code, last line).
fn read_reply(r: &mut impl BufRead) -> io::Result<(u16, String)> {
    let mut line = Vec::new();
    for _ in 0..100 {
        line.clear();
        let n = r
            .by_ref()
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        let text = String::from_utf8_lossy(&line).to_string();
        let code = text.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
        if line.get(3) != Some(&b'-') {
            return Ok((code, text));
        }
    }
    Err(io::Error::new(io::ErrorKind::InvalidData, "reply too long"))
}

// ---------------------------------------------------------------------------
// The sink smarthost.

/// A plain SMTP server on loopback that answers 250 to everything and notes
/// when each message (by its X-Bench-Seq header) arrived, and whether it came
/// by DATA or by BDAT.
struct Sink {
    addr: SocketAddr,
    state: Arc<Mutex<SinkState>>,
    /// Offer CHUNKING (RFC 3030) in the EHLO reply; BDAT is taken either way.
    chunking: Arc<AtomicBool>,
}

/// What the sink noted, by the tag of X-Bench-Seq.
#[derive(Default)]
struct SinkState {
    /// seq → arrival of the end of the message.
    seen: HashMap<String, HashMap<u64, Instant>>,
    /// Messages that came (by DATA, by BDAT).
    how: HashMap<String, (usize, usize)>,
}

/// The first bytes of a BDAT message kept to find X-Bench-Seq in its header.
const SINK_HEAD: usize = 64 * 1024;

/// Largest BDAT chunk the sink reads (its SIZE).
const SINK_MAX_CHUNK: usize = 104_857_600;

/// What reached the sink from one load.
struct Delivered {
    /// accept→sink latency per message that arrived.
    lat: Vec<Duration>,
    /// From the start of the load to the last arrival.
    span: Duration,
    /// Messages of the tag that came by DATA and by BDAT.
    data: usize,
    bdat: usize,
}

impl Sink {
    fn start(port: u16) -> Result<Sink, String> {
        let l = TcpListener::bind(("127.0.0.1", port))
            .map_err(|e| format!("sink cannot listen on 127.0.0.1:{port}: {e}"))?;
        let addr = l.local_addr().map_err(|e| e.to_string())?;
        let state = Arc::new(Mutex::new(SinkState::default()));
        let chunking = Arc::new(AtomicBool::new(false));
        let active = Arc::new(AtomicUsize::new(0));
        let (s2, c2) = (Arc::clone(&state), Arc::clone(&chunking));
        thread::spawn(move || {
            for c in l.incoming() {
                let Ok(c) = c else { continue };
                if active.fetch_add(1, Ordering::SeqCst) >= SINK_MAX_CONNS {
                    active.fetch_sub(1, Ordering::SeqCst);
                    let _ = (&c).write_all(b"421 4.3.2 sink busy\r\n");
                    continue;
                }
                let (state, active, chunking) =
                    (Arc::clone(&s2), Arc::clone(&active), Arc::clone(&c2));
                thread::spawn(move || {
                    let _ = sink_session(c, &state, &chunking);
                    active.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Ok(Sink {
            addr,
            state,
            chunking,
        })
    }

    /// wait until every message accepted in `r` reached the sink, or `limit` passed.
    fn wait(&self, tag: &str, r: &LoadResult, limit: Duration) -> Delivered {
        let (seen, (data, bdat)) = self.wait_for(tag, r.accepted.len(), limit);
        let mut lat = Vec::new();
        let mut last = r.start;
        for (seq, acc) in &r.accepted {
            if let Some(&t) = seen.get(seq) {
                lat.push(t.saturating_duration_since(*acc));
                last = last.max(t);
            }
        }
        Delivered {
            lat,
            span: last - r.start,
            data,
            bdat,
        }
    }

    /// wait_for waits until `want` messages of `tag` are at the sink, or
    /// `limit` passed, or nothing came for a third of it; then takes (and
    /// forgets) what the sink noted for the tag: arrivals by seq, (DATA, BDAT).
    fn wait_for(
        &self,
        tag: &str,
        want: usize,
        limit: Duration,
    ) -> (HashMap<u64, Instant>, (usize, usize)) {
        let deadline = Instant::now() + limit;
        let mut last_count = 0;
        let mut last_progress = Instant::now();
        loop {
            let n = lock(&self.state).seen.get(tag).map_or(0, |m| m.len());
            if n >= want || Instant::now() > deadline {
                break;
            }
            // Nothing at all for a while: forwarding is not happening.
            if n != last_count {
                last_count = n;
                last_progress = Instant::now();
            } else if last_progress.elapsed() > limit / 3 {
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
        let mut st = lock(&self.state);
        (
            st.seen.remove(tag).unwrap_or_default(),
            st.how.remove(tag).unwrap_or_default(),
        )
    }
}

/// bench_seq reads the tag and seq of an `X-Bench-Seq: TAG N` header line.
fn bench_seq(line: &[u8]) -> Option<(String, u64)> {
    if line.len() <= 12 || !line[..12].eq_ignore_ascii_case(b"x-bench-seq:") {
        return None;
    }
    let v = String::from_utf8_lossy(&line[12..]).to_string();
    let mut it = v.split_whitespace();
    Some((it.next()?.to_string(), it.next()?.parse().ok()?))
}

/// head_seq finds X-Bench-Seq in the header of a message's first bytes.
fn head_seq(head: &[u8]) -> Option<(String, u64)> {
    for line in head.split_inclusive(|&b| b == b'\n') {
        if line == b"\r\n" || line == b"\n" {
            return None;
        }
        if let Some(k) = bench_seq(line) {
            return Some(k);
        }
    }
    None
}

/// sink_record notes a complete message.
fn sink_record(state: &Mutex<SinkState>, key: Option<(String, u64)>, bdat: bool) {
    let now = Instant::now();
    if let Some((t, n)) = key {
        let mut st = lock(state);
        let how = st.how.entry(t.clone()).or_default();
        if bdat {
            how.1 += 1;
        } else {
            how.0 += 1;
        }
        st.seen.entry(t).or_default().insert(n, now);
    }
}

fn sink_session(c: TcpStream, state: &Mutex<SinkState>, chunking: &AtomicBool) -> io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(300)))?;
    let mut w = io::BufWriter::new(c.try_clone()?);
    let mut r = BufReader::with_capacity(64 * 1024, c);
    w.write_all(b"220 sink.bench.test ESMTP bench sink\r\n")?;
    w.flush()?;
    let mut line = Vec::with_capacity(1024);
    // The first bytes of the message being sent by BDAT, over its chunks.
    let mut head: Vec<u8> = Vec::new();
    loop {
        line.clear();
        if r.by_ref()
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)?
            == 0
        {
            return Ok(());
        }
        let verb = line
            .get(..4)
            .map(|v| v.to_ascii_uppercase())
            .unwrap_or_default();
        match &verb[..] {
            b"EHLO" => {
                w.write_all(b"250-sink.bench.test\r\n250-PIPELINING\r\n")?;
                if chunking.load(Ordering::SeqCst) {
                    w.write_all(b"250-CHUNKING\r\n")?;
                }
                w.write_all(
                    b"250-8BITMIME\r\n250-SMTPUTF8\r\n\
                      250-SIZE 104857600\r\n250 ENHANCEDSTATUSCODES\r\n",
                )?
            }
            b"QUIT" => {
                w.write_all(b"221 2.0.0 bye\r\n")?;
                w.flush()?;
                return Ok(());
            }
            b"MAIL" | b"RSET" => {
                head.clear();
                w.write_all(b"250 2.0.0 ok\r\n")?
            }
            b"BDAT" => {
                // RFC 3030 2: BDAT <size> [LAST], then exactly <size> octets, no dot handling.
                let text = String::from_utf8_lossy(&line).to_string();
                let mut it = text.split_whitespace().skip(1);
                let size = it
                    .next()
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|&n| n <= SINK_MAX_CHUNK);
                let last = it.next().is_some_and(|w| w.eq_ignore_ascii_case("LAST"));
                let Some(size) = size else {
                    // Without a valid size the chunk's end cannot be found: give up the session.
                    w.write_all(b"501 5.5.4 BDAT needs a size\r\n")?;
                    w.flush()?;
                    return Ok(());
                };
                let mut left = size;
                while left > 0 {
                    let buf = r.fill_buf()?;
                    if buf.is_empty() {
                        return Ok(());
                    }
                    let k = buf.len().min(left);
                    let keep = k.min(SINK_HEAD.saturating_sub(head.len()));
                    head.extend_from_slice(&buf[..keep]);
                    r.consume(k);
                    left -= k;
                }
                if last {
                    sink_record(state, head_seq(&head), true);
                    head.clear();
                    w.write_all(b"250 2.0.0 ok\r\n")?;
                } else {
                    w.write_all(b"250 2.0.0 chunk ok\r\n")?;
                }
            }
            b"DATA" => {
                w.write_all(b"354 go ahead\r\n")?;
                w.flush()?;
                let mut in_header = true;
                let mut key: Option<(String, u64)> = None;
                loop {
                    line.clear();
                    if r.by_ref()
                        .take(MAX_LINE as u64)
                        .read_until(b'\n', &mut line)?
                        == 0
                    {
                        return Ok(());
                    }
                    if line == b".\r\n" || line == b".\n" {
                        break;
                    }
                    if in_header {
                        if line == b"\r\n" || line == b"\n" {
                            in_header = false;
                        } else if let Some(k) = bench_seq(&line) {
                            key = Some(k);
                        }
                    }
                }
                sink_record(state, key, false);
                w.write_all(b"250 2.0.0 ok\r\n")?;
            }
            _ => w.write_all(b"250 2.0.0 ok\r\n")?,
        }
        // Pipelining: answer a batch at once when the client's input is drained.
        if r.buffer().is_empty() {
            w.flush()?;
        }
    }
}

// ---------------------------------------------------------------------------
// The latency-injecting proxy between the relays and the sink.

/// Connections the proxy carries at once; more are closed at once.
const PROXY_MAX_CONNS: usize = 256;

/// Bytes queued per connection and direction; the reader waits when over.
const PROXY_MAX_QUEUED: usize = 16 << 20;

/// A TCP proxy on 127.0.0.1 in front of the sink that delays every byte by
/// a one-way delay in each direction (a distant smarthost). Per connection
/// and direction a reader thread stamps each chunk with its due time and
/// queues it, a writer thread writes it when due: bytes in flight do not
/// wait behind each other's delay, so the delay does not cap throughput.
struct Proxy {
    addr: SocketAddr,
    /// One-way delay added in each direction, in µs (0: pass-through).
    delay_us: Arc<AtomicU64>,
    /// Connections open now, and the most open at once since reset_peak.
    active: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

impl Proxy {
    fn start(port: u16, upstream: SocketAddr) -> Result<Proxy, String> {
        if !upstream.ip().is_loopback() {
            return Err(format!("proxy: {upstream} is not a loopback address"));
        }
        let l = TcpListener::bind(("127.0.0.1", port))
            .map_err(|e| format!("proxy cannot listen on 127.0.0.1:{port}: {e}"))?;
        let addr = l.local_addr().map_err(|e| e.to_string())?;
        let delay_us = Arc::new(AtomicU64::new(0));
        let active = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (d, a, pk) = (
            Arc::clone(&delay_us),
            Arc::clone(&active),
            Arc::clone(&peak),
        );
        thread::spawn(move || {
            for c in l.incoming() {
                let Ok(down) = c else { continue };
                let n = a.fetch_add(1, Ordering::SeqCst) + 1;
                // Decrements `active` when the connection's last thread is done.
                let guard = Arc::new(ConnGuard(Arc::clone(&a)));
                if n > PROXY_MAX_CONNS {
                    continue;
                }
                pk.fetch_max(n, Ordering::SeqCst);
                let d = Arc::clone(&d);
                let _ = thread::Builder::new()
                    .stack_size(128 * 1024)
                    .spawn(move || proxy_conn(down, upstream, &d, &guard));
            }
        });
        Ok(Proxy {
            addr,
            delay_us,
            active,
            peak,
        })
    }

    /// set_delay sets the one-way delay of each direction (RTT / 2 for an RTT).
    fn set_delay(&self, d: Duration) {
        self.delay_us.store(d.as_micros() as u64, Ordering::SeqCst);
    }

    /// wait_idle waits (at most `limit`) until no connection is open through
    /// the proxy, e.g. a relay's cached connections from a case before; false
    /// if some still are.
    fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.active.load(Ordering::SeqCst) > 0 {
            if Instant::now() > deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// reset_peak starts counting the most connections at once anew.
    fn reset_peak(&self) {
        self.peak
            .store(self.active.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

/// Counts one proxied connection until its last thread lets go of it.
struct ConnGuard(Arc<AtomicUsize>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// proxy_conn connects to the sink and starts both directions.
fn proxy_conn(down: TcpStream, upstream: SocketAddr, delay: &Arc<AtomicU64>, g: &Arc<ConnGuard>) {
    let Ok(up) = TcpStream::connect_timeout(&upstream, Duration::from_secs(5)) else {
        return;
    };
    let setup = || -> io::Result<[TcpStream; 4]> {
        for s in [&down, &up] {
            // The delay must be the proxy's, not Nagle's.
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(600)))?;
            s.set_write_timeout(Some(Duration::from_secs(60)))?;
        }
        Ok([
            down.try_clone()?,
            up.try_clone()?,
            up.try_clone()?,
            down.try_clone()?,
        ])
    };
    let Ok([d1, u1, u2, d2]) = setup() else {
        return;
    };
    proxy_pipe(d1, u1, delay, g);
    proxy_pipe(u2, d2, delay, g);
}

/// One direction's queue: chunks with their due time.
#[derive(Default)]
struct PipeState {
    chunks: VecDeque<(Instant, Vec<u8>)>,
    bytes: usize,
    /// The reader saw EOF: the writer shuts the other side's write half once drained.
    eof: bool,
    /// An error on either side: both sockets are shut, the threads end.
    dead: bool,
}

/// proxy_pipe carries `from` → `to` with the delay, on a reader and a writer thread.
fn proxy_pipe(from: TcpStream, to: TcpStream, delay: &Arc<AtomicU64>, g: &Arc<ConnGuard>) {
    let pipe = Arc::new((Mutex::new(PipeState::default()), Condvar::new()));
    let kill = |a: &TcpStream, b: &TcpStream| {
        let _ = a.shutdown(Shutdown::Both);
        let _ = b.shutdown(Shutdown::Both);
    };
    let (Ok(from2), Ok(to2), Ok(from3), Ok(to3)) = (
        from.try_clone(),
        to.try_clone(),
        from.try_clone(),
        to.try_clone(),
    ) else {
        kill(&from, &to);
        return;
    };
    let reader = {
        let (pipe, delay, g) = (Arc::clone(&pipe), Arc::clone(delay), Arc::clone(g));
        move || {
            let _g = g;
            let (q, cv) = &*pipe;
            let mut from = from;
            loop {
                let mut buf = vec![0u8; 64 * 1024];
                let n = match from.read(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        kill(&from, &to);
                        lock(q).dead = true;
                        cv.notify_all();
                        return;
                    }
                };
                let mut st = lock(q);
                if n == 0 {
                    st.eof = true;
                    cv.notify_all();
                    return;
                }
                buf.truncate(n);
                let due = Instant::now() + Duration::from_micros(delay.load(Ordering::SeqCst));
                while st.bytes > PROXY_MAX_QUEUED && !st.dead {
                    st = cv.wait(st).unwrap_or_else(|p| p.into_inner());
                }
                if st.dead {
                    return;
                }
                st.bytes += n;
                st.chunks.push_back((due, buf));
                cv.notify_all();
            }
        }
    };
    let writer = {
        let (pipe, g) = (Arc::clone(&pipe), Arc::clone(g));
        move || {
            let _g = g;
            let (q, cv) = &*pipe;
            let mut to = to2;
            loop {
                let mut st = lock(q);
                while st.chunks.is_empty() && !st.eof && !st.dead {
                    st = cv.wait(st).unwrap_or_else(|p| p.into_inner());
                }
                if st.dead {
                    return;
                }
                let Some((due, chunk)) = st.chunks.pop_front() else {
                    // EOF and everything written: pass the EOF on.
                    let _ = to.shutdown(Shutdown::Write);
                    return;
                };
                st.bytes -= chunk.len();
                cv.notify_all();
                drop(st);
                let wait = due.saturating_duration_since(Instant::now());
                if !wait.is_zero() {
                    thread::sleep(wait);
                }
                if to.write_all(&chunk).is_err() {
                    kill(&from2, &to);
                    lock(q).dead = true;
                    cv.notify_all();
                    return;
                }
            }
        }
    };
    for f in [
        Box::new(reader) as Box<dyn FnOnce() + Send>,
        Box::new(writer),
    ] {
        if thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(f)
            .is_err()
        {
            kill(&from3, &to3);
            lock(&pipe.0).dead = true;
            pipe.1.notify_all();
        }
    }
}

// ---------------------------------------------------------------------------
// Statistics and the report.

/// percentiles returns (p50, p99) by nearest rank; zero for no samples.
fn percentiles(v: &[Duration]) -> (Duration, Duration) {
    if v.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    let mut s = v.to_vec();
    s.sort();
    let rank = |p: f64| s[((p * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1];
    (rank(0.50), rank(0.99))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

fn kib_to_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// median, min and max of one metric's runs.
fn summary(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let med = if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    (med, s[0], s[s.len() - 1])
}

fn num(v: f64) -> String {
    if v.fract() == 0.0 || v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn cell(v: Option<&Vec<f64>>) -> String {
    match v {
        Some(v) if !v.is_empty() => {
            let (med, lo, hi) = summary(v);
            if v.len() == 1 || lo == hi {
                num(med)
            } else {
                format!("{} ({}–{})", num(med), num(lo), num(hi))
            }
        }
        _ => "–".into(),
    }
}

fn render(o: &Opts, res: &Results, started: SystemTime, before: &str, after: &str) -> String {
    let mut s = String::new();
    let secs = started
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let _ = writeln!(
        s,
        "### {} ({})\n",
        match &o.peer {
            Some(p) => format!("picorelay and {} side by side", p.name),
            None => "picorelay".to_string(),
        },
        utc_date(secs)
    );
    let _ = writeln!(
        s,
        "- command: `cargo bench --bench bench --{}{}` (runs: {})",
        if o.args.is_empty() { "" } else { " " },
        o.args.join(" "),
        o.runs
    );
    let _ = writeln!(s, "- machine: {}", machine(&o.base));
    let _ = writeln!(
        s,
        "- load average before: {}; after: {}",
        before
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        after
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    if !res.devices.is_empty() {
        let _ = writeln!(
            s,
            "- block devices counted (write I/Os and sectors written, `sync` before and after \
             each case, nothing subtracted; the whole device, other writers included): {}",
            res.devices.join("; ")
        );
    }
    let _ = writeln!(
        s,
        "- cells: median (min–max) over the runs; accept cases run in hold mode (no smarthost), \
         relay cases forward to the built-in sink through the bench's proxy (no delay), wan \
         cases drain a queued backlog through the proxy at RTT {} ms; each picorelay case \
         starts a fresh relay with an empty spool\n",
        o.rtt.as_millis()
    );
    match &o.peer {
        Some(p) => {
            let _ = writeln!(
                s,
                "| metric | unit | picorelay | {} | picorelay/{} |\n|---|---|---|---|---|",
                p.name, p.name
            );
        }
        None => {
            let _ = writeln!(s, "| metric | unit | picorelay |\n|---|---|---|");
        }
    }
    for (label, unit) in &res.order {
        let by = res.values.get(label);
        let us = by.and_then(|b| b.get(&Who::Us));
        match &o.peer {
            Some(_) => {
                let them = by.and_then(|b| b.get(&Who::Peer));
                let ratio = match (us, them) {
                    (Some(a), Some(b)) if !a.is_empty() && !b.is_empty() && summary(b).0 > 0.0 => {
                        format!("{:.2}", summary(a).0 / summary(b).0)
                    }
                    _ => "–".into(),
                };
                let _ = writeln!(
                    s,
                    "| {label} | {unit} | {} | {} | {ratio} |",
                    res.cell(label, Who::Us),
                    res.cell(label, Who::Peer)
                );
            }
            None => {
                let _ = writeln!(s, "| {label} | {unit} | {} |", res.cell(label, Who::Us));
            }
        }
    }
    if !res.notes.is_empty() {
        let _ = writeln!(s, "\nNotes from this run:\n");
        for (n, total) in &res.notes {
            match total {
                0 => {
                    let _ = writeln!(s, "- {n}");
                }
                _ => {
                    let _ = writeln!(s, "- {n} ({total} in all runs)");
                }
            }
        }
    }
    s
}

/// machine describes the CPU, kernel and the spool's filesystem.
fn machine(base: &Path) -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU".to_string(), |(_, m)| m.trim().to_string());
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(String::new(), |k| {
            format!(", {:.1} GiB RAM", k as f64 / 1_048_576.0)
        });
    format!(
        "{cpus} × {model}{mem}, Linux {}, spool on {}",
        kernel.trim(),
        filesystem_of(base)
    )
}

/// filesystem_of finds the mount holding `p` in /proc/mounts: "ext4 (/dev/vda on /)".
fn filesystem_of(p: &Path) -> String {
    let p = fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut best: Option<(usize, String)> = None;
    for l in mounts.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 3 {
            continue;
        }
        if p.starts_with(f[1]) && best.as_ref().map_or(true, |(n, _)| f[1].len() >= *n) {
            best = Some((f[1].len(), format!("{} ({} on {})", f[2], f[0], f[1])));
        }
    }
    format!(
        "{} {}",
        p.display(),
        best.map_or("unknown filesystem".into(), |b| b.1)
    )
}

/// utc_date formats unix seconds as "YYYY-MM-DD HH:MM UTC" (civil-from-days).
fn utc_date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// write_section replaces the generated section `name` of the results file
/// (between its BEGIN/END markers), or appends it; the rest is kept as written.
fn write_section(path: &Path, name: &str, body: &str) -> Result<(), String> {
    let begin = format!("<!-- BEGIN generated:{name} -->");
    let end = format!("<!-- END generated:{name} -->");
    let old = fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let block = format!("{begin}\n{body}{end}");
    let new = match (old.find(&begin), old.find(&end)) {
        (Some(a), Some(b)) if b > a => format!("{}{block}{}", &old[..a], &old[b + end.len()..]),
        _ => format!("{}\n{block}\n", old.trim_end()),
    };
    fs::write(path, new).map_err(|e| format!("{}: {e}", path.display()))
}
