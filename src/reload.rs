//! SIGHUP: re-read the config and switch the running relay to it; a bad file
//! keeps the running config. Settings that shape the process itself (listeners,
//! workers, spool, user, log file, certificate paths) need a restart.

use std::sync::Arc;

use crate::config::Config;
use crate::delivery::Runner;
use crate::logging::{self, LogFile};
use crate::server::{Shared, Users};
use crate::sys;

/// keep_restart_only puts the running values of restart-only settings back into
/// `new`, so the shared config describes what really runs, and names the ones
/// that differed.
pub fn keep_restart_only(old: &Config, new: &mut Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    fn keep<T: PartialEq + Clone>(
        name: &'static str,
        old: &T,
        new: &mut T,
        changed: &mut Vec<&'static str>,
    ) {
        if old != new {
            changed.push(name);
            *new = old.clone();
        }
    }
    let (o, n, c) = (old, new, &mut changed);
    keep("[server] listen", &o.server.listen, &mut n.server.listen, c);
    keep(
        "[server] listen_tls",
        &o.server.listen_tls,
        &mut n.server.listen_tls,
        c,
    );
    keep(
        "[server] workers",
        &o.server.workers,
        &mut n.server.workers,
        c,
    );
    keep("[server] user", &o.server.user, &mut n.server.user, c);
    keep(
        "[server] pid_file",
        &o.server.pid_file,
        &mut n.server.pid_file,
        c,
    );
    keep(
        "[server] tls_cert",
        &o.server.tls_cert,
        &mut n.server.tls_cert,
        c,
    );
    keep(
        "[server] tls_key",
        &o.server.tls_key,
        &mut n.server.tls_key,
        c,
    );
    // One sender thread per connection slot, started once.
    keep(
        "[smarthost] max_connections",
        &o.smarthost.max_connections,
        &mut n.smarthost.max_connections,
        c,
    );
    keep("[queue] dir", &o.queue.dir, &mut n.queue.dir, c);
    keep(
        "[queue] max_size",
        &o.queue.max_size,
        &mut n.queue.max_size,
        c,
    );
    // The spool keeps or stops keeping delivered files from start-up on (Spool::recycle_delivered).
    keep(
        "[queue] reuse_files",
        &o.queue.reuse_files,
        &mut n.queue.reuse_files,
        c,
    );
    keep("[log] file", &o.log.file, &mut n.log.file, c);
    changed
}

/// reload re-reads the config file of the running relay and applies it: relay
/// networks, users, smarthost, rewrite, aliases, limits and the log level at once
/// (sessions already running keep the config they started with; an open smarthost
/// connection is closed first), the certificate and key re-read from disk, and the
/// log file reopened (logrotate). systemd hears RELOADING=1 before and READY=1 after.
pub fn reload(shared: &Shared, runner: &Runner, log_file: Option<&LogFile>) {
    sys::sd_notify(&format!(
        "RELOADING=1\nMONOTONIC_USEC={}",
        sys::monotonic_usec()
    ));
    // Reopen first: the lines below then land in the new file.
    if let Some(f) = log_file {
        if let Err(e) = f.reopen() {
            log::error!("reload: cannot reopen the log file, still writing to the old one: {e}");
        }
    }
    let old = shared
        .config
        .read()
        .map(|c| Arc::clone(&c))
        .unwrap_or_else(|p| Arc::clone(&p.into_inner()));
    match Config::load(&old.path) {
        Err(errors) => {
            for line in &errors.0 {
                log::error!("reload: {line}");
            }
            log::error!(
                "reload of {} failed: keeping the running config",
                old.path.display()
            );
        }
        Ok(mut new) => {
            for name in keep_restart_only(&old, &mut new) {
                log::warn!("reload: {name} changed: takes effect after a restart");
            }
            if let Some(t) = &shared.tls {
                match t.reload() {
                    Ok(()) => log::info!("reloaded the TLS certificate and key"),
                    Err(e) => log::error!("TLS reload failed, keeping the old certificate: {e}"),
                }
            }
            let new = Arc::new(new);
            let users = Arc::new(Users(new.users.clone()));
            match shared.users.write() {
                Ok(mut g) => *g = users,
                Err(p) => *p.into_inner() = users,
            }
            match shared.config.write() {
                Ok(mut g) => *g = Arc::clone(&new),
                Err(p) => *p.into_inner() = Arc::clone(&new),
            }
            runner.set_config(Arc::clone(&new));
            for note in new.notes() {
                log::warn!("{note}");
            }
            // The line shows at the old or the new level, whichever is more verbose.
            logging::set_level(new.log.level.max(log::max_level()));
            log::info!("reloaded {}", new.path.display());
            logging::set_level(new.log.level);
        }
    }
    sys::sd_notify("READY=1");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg(extra: &str) -> Config {
        let text = format!(
            "[server]\nlisten = 127.0.0.1:2525\nhostname = h.test\n{extra}\n[queue]\ndir = /tmp/x\n"
        );
        Config::parse(Path::new("t.ini"), &text).unwrap()
    }

    #[test]
    fn restart_only_settings_keep_running_values() {
        // (extra [server] lines of the new file, what must be reported)
        let cases: &[(&str, &[&str])] = &[
            ("", &[]),
            ("relay_networks = 10.0.0.0/8\n", &[]),
            ("max_recipients = 7\n", &[]),
            ("listen = 127.0.0.1:2526\n", &["[server] listen"]),
            ("workers = 3\n", &["[server] workers"]),
            ("user = nobody\n", &["[server] user"]),
            (
                "workers = 3\nuser = nobody\n",
                &["[server] workers", "[server] user"],
            ),
        ];
        let old = cfg("");
        for (extra, want) in cases {
            // `listen` must not appear twice: replace the line instead.
            let text = if extra.contains("listen =") {
                format!("[server]\nhostname = h.test\n{extra}\n[queue]\ndir = /tmp/x\n")
            } else {
                format!(
                    "[server]\nlisten = 127.0.0.1:2525\nhostname = h.test\n{extra}\n[queue]\ndir = /tmp/x\n"
                )
            };
            let mut new = Config::parse(Path::new("t.ini"), &text).unwrap();
            let changed = keep_restart_only(&old, &mut new);
            assert_eq!(&changed, want, "{extra}");
            assert_eq!(new.server.listen, old.server.listen);
            assert_eq!(new.server.workers, old.server.workers);
            assert_eq!(new.server.user, old.server.user);
        }
        let mut new = cfg("max_recipients = 7\n");
        keep_restart_only(&old, &mut new);
        assert_eq!(new.server.max_recipients, 7, "reloadable values are taken");
    }
}
