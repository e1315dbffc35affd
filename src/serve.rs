//! The `serve` and `check` commands: wire config, logging, privileges, spool,
//! TLS and the server together, then run the main loop until SIGTERM/SIGINT
//! (SIGHUP reloads, SIGUSR1 flushes; systemd hears READY/RELOADING/STOPPING).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::config::ReuseFiles;
use crate::delivery::{Runner, StageError};
use crate::logging::{self, LogFile};
use crate::privilege::{self, Plan};
use crate::reload;
use crate::server::{self, Server, Shared};
use crate::spool::Spool;
use crate::status::Publisher;
use crate::sys::{self, Signal, SignalPipe};
use crate::tls::{self, ServerTls};

/// How long sessions get to finish after SIGTERM before their sockets are closed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// tmp/ files untouched this long at start-up are leftovers of a crash; younger
/// ones may belong to a `sendmail` still writing.
const TMP_LEFTOVER_AGE: Duration = Duration::from_secs(3600);

/// load_config loads the config or prints every problem, one per line.
pub fn load_config(path: &Path) -> Option<Config> {
    printed(Config::load(path))
}

/// load_spool_config is load_config for commands that only touch the spool: the smarthost
/// password file is not read (`Config::load_for_spool`).
pub fn load_spool_config(path: &Path) -> Option<Config> {
    printed(Config::load_for_spool(path))
}

fn printed(loaded: Result<Config, crate::config::ConfigErrors>) -> Option<Config> {
    match loaded {
        Ok(c) => Some(c),
        Err(errors) => {
            for line in &errors.0 {
                eprintln!("{line}");
            }
            None
        }
    }
}

/// check validates the config and what it points to; exit 0 valid, 1 invalid.
/// Every line goes to stdout, so one run shows every problem.
pub fn check(path: &Path) -> u8 {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            for line in &errors.0 {
                println!("{line}");
            }
            return 1;
        }
    };
    let mut problems = cfg.check_resources();
    let file = path.display();
    // The files must be readable before it is worth parsing them; an unreadable
    // one is already reported above.
    let tls_files_ok = !problems
        .iter()
        .any(|p| p.contains("tls_cert") || p.contains("tls_key"));
    if let (Some(cert), Some(key), true) = (&cfg.server.tls_cert, &cfg.server.tls_key, tls_files_ok)
    {
        if let Err(e) = tls::server_config(cert, key) {
            problems.push(format!("{file}: [server] {e}"));
        }
    }
    let ca_ok = !problems.iter().any(|p| p.contains("ca_file"));
    if ca_ok {
        if let Err(e) = tls::client_config(
            cfg.smarthost.tls_verify,
            cfg.smarthost.ca_file.as_deref(),
            cfg.smarthost.tls_fingerprint,
        ) {
            problems.push(format!("{file}: [smarthost] {e}"));
        }
    }
    if let Err(e) = crate::delivery::tokens(&cfg) {
        problems.push(e);
    }
    problems.extend(start_up_problems(&cfg));
    problems.dedup();
    for p in &problems {
        println!("{p}");
    }
    for note in cfg.notes() {
        println!("{note}");
    }
    if problems.is_empty() {
        println!("{file}: ok");
        0
    } else {
        1
    }
}

/// start_up_problems are what `serve` would refuse at start-up beyond the files the config
/// reads: the account to switch to, and the folders of the pid file and the log file (which
/// `serve` creates). `check` must not say ok to a config `serve` then refuses.
fn start_up_problems(cfg: &Config) -> Vec<String> {
    let file = cfg.path.display();
    let mut problems = Vec::new();
    if let Some(name) = &cfg.server.user {
        if let Err(e) = sys::lookup_user(name) {
            problems.push(format!("{file}: [server] user: {e}"));
        }
    }
    let places = [
        ("[server] pid_file", cfg.server.pid_file.as_deref()),
        ("[log] file", cfg.log.file.as_deref()),
    ];
    for (key, path) in places {
        let Some(dir) = path.and_then(Path::parent) else {
            continue;
        };
        if !dir.as_os_str().is_empty() && !dir.is_dir() {
            problems.push(format!(
                "{file}: {key}: the folder {} does not exist: create it or name another",
                dir.display()
            ));
        }
    }
    problems
}

/// Exit code for a config that cannot be loaded: 1, like every start-up error
/// (interface.md). The systemd unit does not restart on it.
pub const EXIT_CONFIG: u8 = 1;

/// run serves until SIGTERM/SIGINT; exit 0 after a clean shutdown, 1 on a
/// start-up error: every config problem printed, or one line on stderr.
pub fn run(path: &Path) -> u8 {
    let Some(cfg) = load_config(path) else {
        return EXIT_CONFIG;
    };
    match start(cfg) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("picorelay: {e}");
            log::error!("start-up failed: {e}");
            1
        }
    }
}

fn start(cfg: Config) -> Result<(), String> {
    // Whatever umask we inherited, nothing we create is group-writable or
    // world-readable (the spool asks for 0750/0640 itself; this covers the rest).
    sys::restrict_umask(0o027);
    let log_created = cfg.log.file.as_ref().is_some_and(|p| !p.exists());
    let log_file = logging::init(cfg.log.level, cfg.log.file.as_deref())?;
    let file = cfg.path.display().to_string();
    let signals =
        SignalPipe::install().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    match sys::raise_fd_limit() {
        Ok((soft, _)) => log::debug!("open files limit {soft}"),
        Err(e) => log::warn!("cannot raise the open files limit: {e}"),
    }
    let plan = privilege::plan(&cfg)?;
    // As root, before the drop: the key may be readable by root only, the
    // ports may be below 1024 and the spool's parent may belong to root.
    let server_tls = match (&cfg.server.tls_cert, &cfg.server.tls_key) {
        (Some(cert), Some(key)) => {
            Some(ServerTls::load(cert, key).map_err(|e| format!("{file}: [server] {e}"))?)
        }
        _ => None,
    };
    let spool = Spool::open(&cfg.queue.dir, cfg.queue.max_size)
        .map_err(|e| format!("{file}: [queue] dir: {e}"))?;
    // Before anything in the spool is touched (leftovers, spares, the status socket).
    let _serving = match crate::spool::lock::claim(spool.dir()) {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            return Err(format!(
                "{file}: [queue] dir: {} is served by another picorelay already: stop it, or give this one a spool of its own",
                spool.dir().display()
            ))
        }
        Err(e) => {
            return Err(format!(
                "{file}: [queue] dir: cannot lock {}: {e}",
                spool.dir().display()
            ))
        }
    };
    // A bad [oauth] endpoint or ca_file stops start-up here, not at the first delivery.
    crate::delivery::tokens(&cfg)?;
    let listeners = server::bind(&cfg)?;
    let pid_file = cfg.server.pid_file.clone();
    if let Some(p) = &pid_file {
        // A stale file from a crash is simply overwritten.
        std::fs::write(p, format!("{}\n", std::process::id())).map_err(|e| {
            format!(
                "{file}: [server] pid_file: cannot write {}: {e}",
                p.display()
            )
        })?;
    }
    match &plan {
        Plan::Drop(acct) => {
            privilege::give_spool(spool.dir(), acct)
                .map_err(|e| format!("{file}: [queue] dir: {e}"))?;
            if let (true, Some(p)) = (log_created, &cfg.log.file) {
                privilege::give(p, acct).map_err(|e| format!("{file}: [log] file: {e}"))?;
            }
            sys::drop_privileges(acct).map_err(|e| {
                format!("{file}: [server] user: cannot switch to {}: {e}", acct.name)
            })?;
            log::info!(
                "running as {} (uid {}, gid {})",
                acct.name,
                acct.uid,
                acct.gid
            );
        }
        Plan::AsIs(warnings) => {
            for w in warnings {
                log::warn!("{w}");
            }
        }
    }
    privilege::check_spool_writable(spool.dir())
        .map_err(|e| format!("{file}: [queue] dir: {e}"))?;
    if sys::on_ram_filesystem(spool.dir()) {
        log::warn!(
            "the spool {} is on a RAM filesystem (tmpfs/ramfs): queued mail is lost at reboot or power loss; \
             put [queue] dir on persistent storage unless flash wear matters more",
            spool.dir().display()
        );
    }
    let _ = spool.clean_tmp(TMP_LEFTOVER_AGE);
    // After the drop: the files it keeps are then the relay user's, as the new ones it writes.
    let reuse = match cfg.queue.reuse_files {
        ReuseFiles::Yes => true,
        ReuseFiles::No => false,
        // Without a journal, a renamed file's fsync writes its folder too: reuse costs a write more there.
        ReuseFiles::Auto => !sys::ext4_without_journal(spool.dir()),
    };
    spool.recycle_delivered(reuse);
    log::debug!(
        "spool: delivered messages' files are {}",
        if reuse { "reused" } else { "removed" }
    );
    let queued = spool
        .scan()
        .map_err(|e| format!("{file}: [queue] dir: {e}"))?;
    for line in cfg.summary() {
        log::info!("{line}");
    }
    for note in cfg.notes() {
        log::warn!("{note}");
    }
    log::info!("{} message(s) in the queue", queued.len());
    let cfg = Arc::new(cfg);
    let spool = Arc::new(spool);
    let runner = Runner::start(Arc::clone(&cfg), Arc::clone(&spool), queued)
        .map_err(|e| format!("cannot start delivery: {e}"))?;
    // The start-up scan's envelopes are freed now; glibc keeps freed memory for later unless
    // told (musl, the static builds' libc, returns it by itself). With 50,000 queued messages
    // this is 74 MB resident against 47 (BENCHMARKS.md, "A large backlog").
    sys::release_free_memory();
    let delivery = runner.handle();
    let shared = Arc::new(Shared::new(
        Arc::clone(&cfg),
        Arc::clone(&spool),
        server_tls,
        Box::new(move |id: &str| delivery.notify(id)),
    ));
    let server = Server::start(Arc::clone(&shared), listeners)
        .map_err(|e| format!("cannot start workers: {e}"))?;
    for a in server.local_addrs() {
        log::info!("listening on {a}");
    }
    let mut publisher = Publisher::new(spool.dir());
    publish(&mut publisher, &server, &shared, &runner);
    // Listeners answer, root is gone, the queue is known: ready (systemd Type=notify).
    sys::sd_notify("READY=1");
    main_loop(
        &server,
        &shared,
        &signals,
        &runner,
        log_file.as_ref(),
        &mut publisher,
    );
    sys::sd_notify("STOPPING=1");
    log::info!("shutting down");
    server.shutdown(SHUTDOWN_GRACE);
    runner.stop(SHUTDOWN_GRACE);
    publisher.remove();
    if let Some(p) = &pid_file {
        // May fail after the drop (a root-owned /run): harmless, the pid is checked.
        let _ = std::fs::remove_file(p);
    }
    log::info!("stopped");
    Ok(())
}

/// publish answers status requests and refreshes systemd's STATUS= line.
fn publish(publisher: &mut Publisher, server: &Server, shared: &Shared, runner: &Runner) {
    let accept = shared
        .last_accept_error()
        .map(|(time, message)| StageError { time, message });
    let _ = publisher.publish(&runner.state().snapshot(), accept, server.pool_figures());
}

/// main_loop accepts connections and reacts to signals until SIGTERM/SIGINT.
fn main_loop(
    server: &Server,
    shared: &Shared,
    signals: &SignalPipe,
    runner: &Runner,
    log_file: Option<&LogFile>,
    publisher: &mut Publisher,
) {
    let mut fds = server.fds();
    let n_listeners = fds.len();
    fds.push(signals.fd());
    // The status socket: its requests are answered by publish() below.
    fds.extend(publisher.fd());
    loop {
        let ready = match sys::poll_readable(&fds, Duration::from_millis(250)) {
            Ok(r) => r,
            Err(e) => {
                log::error!("poll failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                Vec::new()
            }
        };
        for &i in ready.iter().filter(|&&i| i < n_listeners) {
            server.accept_ready(i);
        }
        server.tick();
        for sig in signals.take() {
            match sig {
                Signal::Terminate => return,
                Signal::Reload => reload::reload(shared, runner, log_file),
                Signal::Flush => runner.handle().flush(),
            }
        }
        publish(publisher, server, shared, runner);
    }
}
