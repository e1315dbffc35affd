//! The `serve` and `check` commands: wire config, logging, spool, TLS and the
//! server together, then run the main loop until SIGTERM/SIGINT.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::delivery::{self, Runner};
use crate::logging;
use crate::server::{self, Server, Shared};
use crate::spool::Spool;
use crate::sys::{self, Signal, SignalPipe};
use crate::tls::{self, ServerTls};

/// How long sessions get to finish after SIGTERM before their sockets are closed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// tmp/ files untouched this long at start-up are leftovers of a crash; younger
/// ones may belong to a `sendmail` still writing.
const TMP_LEFTOVER_AGE: Duration = Duration::from_secs(3600);

/// load_config loads the config or prints every problem, one per line.
pub fn load_config(path: &Path) -> Option<Config> {
    match Config::load(path) {
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
pub fn check(path: &Path) -> u8 {
    let Some(cfg) = load_config(path) else {
        return 1;
    };
    let mut problems = cfg.check_resources();
    let file = path.display();
    if let (Some(cert), Some(key)) = (&cfg.server.tls_cert, &cfg.server.tls_key) {
        if let Err(e) = tls::server_config(cert, key) {
            problems.push(format!("{file}: [server] {e}"));
        }
    }
    if let Err(e) = tls::client_config(
        cfg.smarthost.tls_verify,
        cfg.smarthost.ca_file.as_deref(),
        cfg.smarthost.tls_fingerprint,
    ) {
        problems.push(format!("{file}: [smarthost] {e}"));
    }
    problems.sort();
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

/// run serves until SIGTERM/SIGINT; exit 0 after a clean shutdown, 1 on a
/// start-up error (printed as one line on stderr).
pub fn run(path: &Path) -> u8 {
    let Some(cfg) = load_config(path) else {
        return 1;
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
    let _log_file = logging::init(cfg.log.level, cfg.log.file.as_deref())?;
    let file = cfg.path.display().to_string();
    let server_tls = match (&cfg.server.tls_cert, &cfg.server.tls_key) {
        (Some(cert), Some(key)) => {
            Some(ServerTls::load(cert, key).map_err(|e| format!("{file}: [server] {e}"))?)
        }
        _ => None,
    };
    let spool = Spool::open(&cfg.queue.dir, cfg.queue.max_size)
        .map_err(|e| format!("{file}: [queue] dir: {e}"))?;
    let _ = spool.clean_tmp(TMP_LEFTOVER_AGE);
    let queued = spool
        .scan()
        .map_err(|e| format!("{file}: [queue] dir: {e}"))?;
    let listeners = server::bind(&cfg)?;
    let signals =
        SignalPipe::install().map_err(|e| format!("cannot install signal handlers: {e}"))?;
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
    for line in cfg.summary() {
        log::info!("{line}");
    }
    for note in cfg.notes() {
        log::warn!("{note}");
    }
    log::info!("{} message(s) in the queue", queued.len());
    let cfg = Arc::new(cfg);
    let spool = Arc::new(spool);
    let runner = Runner::start(Arc::clone(&cfg), Arc::clone(&spool))
        .map_err(|e| format!("cannot start delivery: {e}"))?;
    let delivery = runner.handle();
    let shared = Arc::new(Shared::new(
        Arc::clone(&cfg),
        spool,
        server_tls,
        Box::new(move |id: &str| delivery.notify(id)),
    ));
    let server = Server::start(Arc::clone(&shared), listeners)
        .map_err(|e| format!("cannot start workers: {e}"))?;
    for a in server.local_addrs() {
        log::info!("listening on {a}");
    }
    main_loop(&server, &shared, &signals, &runner.handle());
    log::info!("shutting down");
    server.shutdown(SHUTDOWN_GRACE);
    runner.stop(SHUTDOWN_GRACE);
    if let Some(p) = &pid_file {
        let _ = std::fs::remove_file(p);
    }
    log::info!("stopped");
    Ok(())
}

/// main_loop accepts connections and reacts to signals until SIGTERM/SIGINT.
fn main_loop(server: &Server, shared: &Shared, signals: &SignalPipe, delivery: &delivery::Handle) {
    let mut fds = server.fds();
    fds.push(signals.fd());
    let sig_idx = fds.len() - 1;
    loop {
        let ready = match sys::poll_readable(&fds, Duration::from_millis(250)) {
            Ok(r) => r,
            Err(e) => {
                log::error!("poll failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                Vec::new()
            }
        };
        for &i in &ready {
            if i != sig_idx {
                server.accept_ready(i);
            }
        }
        server.expire_waiting();
        for sig in signals.take() {
            match sig {
                Signal::Terminate => return,
                Signal::Reload => reload_tls(shared),
                Signal::Flush => delivery.flush(),
            }
        }
    }
}

/// reload_tls re-reads the certificate and key (renewed by certbot or acme.sh);
/// a failure keeps the old pair.
fn reload_tls(shared: &Shared) {
    if let Some(t) = &shared.tls {
        match t.reload() {
            Ok(()) => log::info!("reloaded the TLS certificate and key"),
            Err(e) => log::error!("TLS reload failed, keeping the old certificate: {e}"),
        }
    }
}
