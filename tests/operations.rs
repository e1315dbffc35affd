//! Black-box tests of issue 5 (running on an appliance): `status`, SIGHUP
//! reload, the systemd notify protocol, privilege drop, spool modes, the RAM
//! filesystem warning and `make install`.
//!
//! 127.0.0.2 plays a LAN device (a network client); 127.0.0.1 is a local client.

mod common;

use common::json::{parse_json, Json};
use common::*;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- helpers

/// prepare writes the config of a relay without starting it.
fn prepare(extra: &str) -> Relay {
    let dir = TempDir::new("ops");
    let ini = merge_ini(&base_ini(&dir.path().join("spool")), extra);
    Relay::prepared(dir, &ini)
}

fn serve_cmd(r: &Relay) -> Command {
    let mut c = Command::new(bin());
    c.arg("-c").arg(&r.config).arg("serve");
    c
}

/// rewrite replaces the relay's config file with base + `extra`.
fn rewrite(r: &Relay, extra: &str) {
    std::fs::write(&r.config, merge_ini(&base_ini(&r.spool()), extra)).unwrap();
}

/// reload sends SIGHUP and waits for the n-th "reloaded"/"reload of" line.
fn reload(r: &Relay) {
    let before = r.reload_lines();
    r.signal("HUP");
    wait_for("the reload to finish", || r.reload_lines() > before);
}

fn status(r: &Relay, json: bool) -> (Option<i32>, String) {
    let args: &[&str] = if json {
        &["status", "--json"]
    } else {
        &["status"]
    };
    let out = r.cmd(args);
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// wait_status waits until `status --json` (exit 0) satisfies `cond`; returns it.
fn wait_status(r: &Relay, what: &str, cond: impl Fn(&Json) -> bool) -> Json {
    let mut last = Json::Null;
    let start = Instant::now();
    loop {
        let (code, out) = status(r, true);
        if code == Some(0) {
            last = parse_json(out.trim()).unwrap_or_else(|e| panic!("bad JSON {e}: {out}"));
            if cond(&last) {
                return last;
            }
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for status: {what}; last: {last:?} / {out}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// submit queues one message over SMTP from 127.0.0.1 and returns its id.
fn submit(r: &Relay) -> String {
    let mut c = r.connect();
    c.greet();
    let id = queued_id(&c.send_message(
        "alice@example.com",
        &["bob@example.org"],
        &message("ops", "hello"),
    ));
    c.expect("QUIT", "221");
    id
}

/// rcpt_from_lan says RCPT for a remote address from 127.0.0.2; returns the reply.
fn rcpt_from_lan(r: &Relay) -> String {
    let mut c = Client::from_stream(connect_bound("127.0.0.2", r.addr()));
    c.greet();
    c.expect("MAIL FROM:<printer@lan.test>", "250");
    let reply = c.cmd("RCPT TO:<admin@example.org>");
    let _ = c.cmd("QUIT");
    reply
}

/// auth_plain tries AUTH PLAIN from 127.0.0.1 (a local client may log in without TLS).
fn auth_plain(r: &Relay, user: &str, password: &str) -> String {
    let mut c = r.connect();
    c.greet();
    let reply = c.cmd(&format!(
        "AUTH PLAIN {}",
        b64(format!("\0{user}\0{password}").as_bytes())
    ));
    let _ = c.cmd("QUIT");
    reply
}

/// nobody's uid and gid from /etc/passwd.
fn nobody() -> Option<(u32, u32)> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    let line = text.lines().find(|l| l.starts_with("nobody:"))?;
    let f: Vec<&str> = line.split(':').collect();
    Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// proc_ids is (uids, gids, groups) of a process from /proc/PID/status.
fn proc_ids(pid: i32) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> Vec<u32> {
        s.lines()
            .find(|l| l.starts_with(name))
            .map(|l| {
                l[name.len()..]
                    .split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    (field("Uid:"), field("Gid:"), field("Groups:"))
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn json_parser_self_check() {
    let v = parse_json(r#"{"a":[1,-2.5,true,null],"b":"x\"\n\u00e9"}"#).unwrap();
    assert_eq!(v.str("b"), "x\"\né");
    assert!(parse_json(r#"{"a":1,}"#).is_err());
    assert!(parse_json("{\"a\":\"\n\"}").is_err());
}

// ------------------------------------------------------------------ status

#[test]
fn status_running_json_and_not_running() {
    let mut relay = prepare("");
    // Not started yet: exit 3.
    let (code, out) = status(&relay, false);
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("picorelay is not running"), "{out}");
    let (code, out) = status(&relay, true);
    assert_eq!(code, Some(3), "{out}");
    assert_eq!(
        parse_json(out.trim()).unwrap().get("running"),
        &Json::Bool(false)
    );

    let cmd = serve_cmd(&relay);
    relay.spawn_with(cmd);
    let pid = relay.pid();
    // READY comes after the first status write: the status answers at once.
    let j = wait_status(&relay, "running", |_| true);
    assert_eq!(j.get("running"), &Json::Bool(true));
    assert_eq!(j.num("pid") as i32, pid);
    assert_eq!(j.num("queue.messages"), 0.0);
    assert_eq!(j.get("queue.oldest_age"), &Json::Null);
    assert_eq!(j.get("last_delivery"), &Json::Null);
    assert_eq!(j.get("delivery.hold"), &Json::Bool(true));
    assert_eq!(j.get("delivery.paused"), &Json::Bool(false));
    for stage in ["accept", "connect", "tls", "auth", "send"] {
        assert_eq!(j.get(&format!("errors.{stage}")), &Json::Null, "{stage}");
    }
    for key in ["started", "uptime", "updated"] {
        assert!(j.num(key) >= 0.0);
    }

    submit(&relay);
    let j = wait_status(&relay, "one queued message", |j| {
        j.num("queue.messages") == 1.0
    });
    assert!(j.num("queue.oldest_age") >= 0.0);
    let (code, out) = status(&relay, false);
    assert_eq!(code, Some(0), "{out}");
    for needle in [
        format!("picorelay is running: pid {pid}"),
        "queue:          1 message(s), oldest".into(),
        "on hold: no smarthost configured".into(),
        "accept   none".into(),
    ] {
        assert!(out.contains(&needle), "{needle:?} in {out}");
    }

    relay.signal("TERM");
    assert!(relay.wait_exit().success());
    let (code, out) = status(&relay, false);
    assert_eq!(code, Some(3), "{out}");
}

#[test]
fn status_of_a_killed_or_hung_relay_is_not_running() {
    let mut relay = Relay::start("");
    wait_status(&relay, "running", |_| true);
    // kill -9 leaves the socket file behind, but nothing answers on it.
    relay.kill9();
    let (code, out) = status(&relay, false);
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("nothing answers"), "{out}");
    // Something that accepts but never answers: a hung relay.
    let sock = relay.spool().join("status.sock");
    let _ = std::fs::remove_file(&sock);
    let hung = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let (code, out) = status(&relay, true);
    assert_eq!(code, Some(3), "{out}");
    assert!(
        parse_json(out.trim())
            .unwrap()
            .str("error")
            .contains("may be hung"),
        "{out}"
    );
    drop(hung);
    // Garbage: cannot tell.
    let _ = std::fs::remove_file(&sock);
    let liar = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let t = std::thread::spawn(move || {
        if let Ok((mut c, _)) = liar.accept() {
            let _ = std::io::Write::write_all(&mut c, b"hello\n");
        }
    });
    assert_eq!(status(&relay, false).0, Some(4));
    let _ = t.join();
}

#[test]
fn status_after_a_smarthost_failure_shows_the_error_and_the_pause() {
    // A port nobody listens on: connection refused.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let relay = Relay::start(&format!(
        "[smarthost]\nhost = 127.0.0.1:{port}\ntls = none\n[queue]\nretry_min = 1m\nretry_max = 1h\n"
    ));
    submit(&relay);
    let j = wait_status(&relay, "the connect error and the pause", |j| {
        j.get("errors.connect") != &Json::Null && j.get("delivery.paused") == &Json::Bool(true)
    });
    assert!(j.num("delivery.paused_until") > j.num("updated"));
    assert!(!j.str("delivery.pause_reason").is_empty());
    assert!(!j.str("errors.connect.message").is_empty());
    assert_eq!(j.get("delivery.hold"), &Json::Bool(false));
    assert_eq!(j.num("queue.messages"), 1.0);
    let (code, out) = status(&relay, false);
    assert_eq!(code, Some(0));
    assert!(out.contains("delivery:       paused for"), "{out}");
    assert!(out.contains("  connect  "), "{out}");
    assert!(!out.contains("  connect  none"), "{out}");
}

#[test]
fn status_shows_a_spool_refusal_as_an_accept_error() {
    // max_size 1M (the least): one message past it fills the spool, the next gets 452.
    let relay = Relay::start("[queue]\nmax_size = 1M\n");
    let big = "x".repeat(999) + "\r\n";
    let mut c = relay.connect();
    c.greet();
    let r = c.send_message(
        "a@example.com",
        &["b@example.org"],
        &message("big", &big.repeat(1100)),
    );
    queued_id(&r);
    c.expect("QUIT", "221");
    let mut c = relay.connect();
    c.greet();
    c.expect("MAIL FROM:<a@example.com>", "250");
    c.expect("RCPT TO:<b@example.org>", "250");
    c.expect("DATA", "452");
    let j = wait_status(&relay, "the accept error", |j| {
        j.get("errors.accept") != &Json::Null
    });
    assert!(j.str("errors.accept.message").contains("spool"), "{j:?}");
}

// ------------------------------------------------------------------ reload

#[test]
fn sighup_reloads_relay_networks() {
    let relay = Relay::start("[server]\nrelay_networks = 127.0.0.1/32\n");
    assert!(rcpt_from_lan(&relay).starts_with("550 5.7.1"));
    rewrite(
        &relay,
        "[server]\nrelay_networks = 127.0.0.1/32, 127.0.0.2/32\n",
    );
    reload(&relay);
    assert!(
        relay.log_text().contains("] reloaded "),
        "{}",
        relay.log_text()
    );
    let r = rcpt_from_lan(&relay);
    assert!(r.starts_with("250"), "{r}");
    // And back.
    rewrite(&relay, "[server]\nrelay_networks = 127.0.0.1/32\n");
    reload(&relay);
    assert!(rcpt_from_lan(&relay).starts_with("550 5.7.1"));
}

#[test]
fn sighup_reloads_users() {
    let alice = common::certs::passwd("6", "alice-pw");
    let bob = common::certs::passwd("5", "bob-pw");
    let relay = Relay::start(&format!("[users]\nalice = {alice}\n"));
    assert!(auth_plain(&relay, "alice", "alice-pw").starts_with("235"));
    assert!(auth_plain(&relay, "bob", "bob-pw").starts_with("535"));
    rewrite(&relay, &format!("[users]\nbob = {bob}\n"));
    reload(&relay);
    assert!(auth_plain(&relay, "bob", "bob-pw").starts_with("235"));
    assert!(auth_plain(&relay, "alice", "alice-pw").starts_with("535"));
}

#[test]
fn sighup_changes_the_log_level() {
    let relay = Relay::start("[log]\nlevel = info\n");
    let connected = || relay.log_text().matches(": connected").count();
    rewrite(&relay, "[log]\nlevel = warn\n");
    reload(&relay);
    let before = connected();
    // At warn, a session logs nothing.
    let mut c = relay.connect();
    c.greet();
    c.expect("QUIT", "221");
    rewrite(&relay, "[log]\nlevel = info\n");
    reload(&relay);
    let mut c = relay.connect();
    c.greet();
    c.expect("QUIT", "221");
    // The pipe keeps order: once the second session's line is in, the first one's
    // would be too.
    wait_for("the info-level session line", || connected() > before);
    assert_eq!(connected(), before + 1, "{}", relay.log_text());
}

#[test]
fn a_bad_reload_keeps_the_running_config_and_logs_every_error() {
    let relay = Relay::start("[server]\nrelay_networks = 127.0.0.1/32, 127.0.0.2/32\n");
    std::fs::write(
        &relay.config,
        format!(
            "{}\n[server]\nrelay_networks = 10.0.0.0/99\n",
            merge_ini(
                &base_ini(&relay.spool()),
                "[server]\nbogus = 1\nworkers = many\n"
            )
        ),
    )
    .unwrap();
    reload(&relay);
    let log = relay.log_text();
    assert!(log.contains("keeping the running config"), "{log}");
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("reload: ")).collect();
    for key in ["bogus", "workers"] {
        assert!(
            errors
                .iter()
                .any(|l| l.contains(&format!("[server] {key}"))),
            "{key} in {errors:?}"
        );
    }
    // Still running on the old config.
    assert!(rcpt_from_lan(&relay).starts_with("250"));
    submit(&relay);
}

#[test]
fn restart_only_changes_are_logged_and_not_applied() {
    let relay = Relay::start("");
    let old = relay.addr();
    rewrite(
        &relay,
        "[server]\nlisten = 127.0.0.1:0, 127.0.0.1:0\nworkers = 2\n",
    );
    reload(&relay);
    let log = relay.log_text();
    for name in ["[server] listen changed", "[server] workers changed"] {
        assert!(
            log.contains(&format!("{name}: takes effect after a restart")),
            "{name}: {log}"
        );
    }
    let mut c = Client::connect(old);
    c.greet();
    c.expect("QUIT", "221");
}

#[test]
fn sighup_reopens_the_log_file() {
    let mut relay = prepare("");
    let log = relay.dir.path().join("picorelay.log");
    rewrite(&relay, &format!("[log]\nfile = {}\n", log.display()));
    let child = serve_cmd(&relay)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    relay.child = Some(child);
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    wait_for("listening in the log file", || {
        read(&log).contains("listening on")
    });
    // logrotate: move the file, then HUP.
    let rotated = relay.dir.path().join("picorelay.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    relay.signal("HUP");
    wait_for("the reload line in the new file", || {
        read(&log).contains("reloaded")
    });
    assert!(!read(&rotated).contains("reloaded"));
    // No world bits on a file the relay created.
    assert_eq!(mode(&log) & 0o007, 0, "{:o}", mode(&log));
}

// ----------------------------------------------------------------- systemd

/// Notify receives what the relay sends to $NOTIFY_SOCKET, in order.
struct Notify {
    sock: UnixDatagram,
    path: PathBuf,
    seen: Vec<String>,
    next: usize,
}

impl Notify {
    fn bind(dir: &Path) -> Notify {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Notify {
            sock,
            path,
            seen: Vec::new(),
            next: 0,
        }
    }

    /// until returns the next message (after the last one returned) containing `needle`.
    fn until(&mut self, needle: &str) -> String {
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            while self.next < self.seen.len() {
                self.next += 1;
                if self.seen[self.next - 1].contains(needle) {
                    return self.seen[self.next - 1].clone();
                }
            }
            assert!(
                start.elapsed() < DEADLINE,
                "no {needle:?} from the relay; got {:?}",
                self.seen
            );
            if let Ok(n) = self.sock.recv(&mut buf) {
                self.seen
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    }
}

#[test]
fn systemd_notify_ready_reloading_stopping() {
    let mut relay = prepare("");
    let mut notify = Notify::bind(relay.dir.path());
    let mut cmd = serve_cmd(&relay);
    cmd.env("NOTIFY_SOCKET", &notify.path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = Arc::clone(&relay.log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            log.lock().unwrap().push(line);
        }
    });
    relay.child = Some(child);
    // STATUS= with the queue depth comes first, then READY=1.
    let st = notify.until("STATUS=");
    assert!(st.contains("0 message(s) queued"), "{st}");
    let ready = notify.until("READY=1");
    assert_eq!(ready, "READY=1");
    // The listening line was logged before READY=1: read the port, then the
    // port must answer at once.
    wait_for("the listening line", || !relay.listen_lines().is_empty());
    let mut c = Client::connect(relay.listen_lines()[0]);
    let banner = c.reply();
    assert!(banner.starts_with("220 "), "{banner}");
    c.expect("QUIT", "221");

    relay.signal("HUP");
    let reloading = notify.until("RELOADING=1");
    let usec = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {reloading:?}"));
    assert!(usec.parse::<u64>().unwrap() > 0);
    assert_eq!(notify.until("READY=1"), "READY=1");

    relay.signal("TERM");
    assert_eq!(notify.until("STOPPING=1"), "STOPPING=1");
    assert!(relay.wait_exit().success());
}

// -------------------------------------------------------------- privileges

#[test]
fn root_drops_to_the_configured_user() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let Some((uid, gid)) = nobody() else {
        eprintln!("skipped: no user nobody");
        return;
    };
    let mut relay = prepare("[server]\nuser = nobody\n");
    // The temp folder must be traversable by nobody.
    std::fs::set_permissions(relay.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cmd = serve_cmd(&relay);
    relay.spawn_with(cmd);
    let (uids, gids, groups) = proc_ids(relay.pid());
    assert_eq!(uids, vec![uid; 4], "real, effective, saved, fs uid");
    assert_eq!(gids, vec![gid; 4], "real, effective, saved, fs gid");
    assert!(
        groups.iter().all(|&g| g == gid),
        "supplementary groups {groups:?}"
    );
    assert!(
        relay.log_text().contains("running as nobody"),
        "{}",
        relay.log_text()
    );
    let id = submit(&relay);
    let spool = relay.spool();
    for p in [
        spool.clone(),
        spool.join("tmp"),
        spool.join("queue"),
        spool.join("corrupt"),
        spool.join("queue").join(&id),
    ] {
        assert_eq!(std::fs::metadata(&p).unwrap().uid(), uid, "{}", p.display());
    }
    wait_for("the status socket", || spool.join("status.sock").exists());
    assert_eq!(
        std::fs::metadata(spool.join("status.sock")).unwrap().uid(),
        uid
    );
    assert_eq!(status(&relay, false).0, Some(0));
    assert_eq!(relay.queue_ids(), vec![id]);
}

#[test]
fn root_with_an_unknown_user_refuses_to_start() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let relay = prepare("[server]\nuser = no-such-user-picorelay\n");
    let out = serve_cmd(&relay).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("[server] user: user no-such-user-picorelay: no such user"),
        "{err}"
    );
}

#[test]
fn root_without_a_user_warns() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let relay = Relay::start("");
    assert!(
        relay
            .log_text()
            .contains("running as root without [server] user"),
        "{}",
        relay.log_text()
    );
}

#[test]
fn spool_modes_hold_under_a_wide_umask() {
    let mut relay = prepare("");
    // umask 000 would make anything created without an explicit mode world-writable.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("umask 000 && exec \"$0\" -c \"$1\" serve")
        .arg(bin())
        .arg(&relay.config);
    relay.spawn_with(cmd);
    let id = submit(&relay);
    let spool = relay.spool();
    wait_for("the status socket", || spool.join("status.sock").exists());
    for d in ["", "tmp", "queue", "corrupt"] {
        assert_eq!(mode(&spool.join(d)), 0o750, "{d}/");
    }
    assert_eq!(mode(&spool.join("queue").join(&id)), 0o640);
    assert_eq!(mode(&spool.join("status.sock")) & 0o777, 0o660);
}

#[test]
fn a_spool_on_a_ram_filesystem_gives_a_warning() {
    let shm = Path::new("/dev/shm");
    let on_tmpfs = Command::new("stat")
        .args(["-f", "-c", "%T", "/dev/shm"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "tmpfs")
        .unwrap_or(false);
    if !shm.is_dir() || !on_tmpfs {
        eprintln!("skipped: no tmpfs at /dev/shm");
        return;
    }
    let dir = shm.join(format!("picorelay-test-ram-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let relay = Relay::start(&format!("[queue]\ndir = {}\n", dir.join("spool").display()));
    let log = relay.log_text();
    drop(relay);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(log.contains("is on a RAM filesystem"), "{log}");
}

// ----------------------------------------------------------------- install

fn make(args: &[&str]) -> std::process::Output {
    Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .expect("run make")
}

#[test]
fn make_install_sendmail_and_uninstall() {
    if Command::new("make").arg("--version").output().is_err() {
        eprintln!("skipped: no make");
        return;
    }
    let dest = TempDir::new("install");
    let destdir = format!("DESTDIR={}", dest.path().display());
    let binvar = format!("BIN={}", bin());
    let vars = [destdir.as_str(), binvar.as_str(), "PREFIX=/usr"];
    let run = |target: &str| {
        let mut args = vec![target];
        args.extend_from_slice(&vars);
        let out = make(&args);
        assert!(
            out.status.success(),
            "make {target}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let root = dest.path();
    let at = |p: &str| root.join(p.trim_start_matches('/'));

    run("install");
    let sbin = at("/usr/sbin/picorelay");
    assert_eq!(mode(&sbin), 0o755);
    assert_eq!(
        std::fs::read(&sbin).unwrap(),
        std::fs::read(bin()).unwrap(),
        "the installed binary is BIN"
    );
    let ini = at("/etc/picorelay/picorelay.ini");
    assert_eq!(mode(&ini), 0o640);
    let unit = std::fs::read_to_string(at("/usr/lib/systemd/system/picorelay.service")).unwrap();
    assert!(
        unit.lines()
            .any(|l| l == "ExecStart=/usr/sbin/picorelay -c /etc/picorelay/picorelay.ini serve"),
        "{unit}"
    );
    for needle in [
        "Type=notify",
        "User=picorelay",
        "RestartPreventExitStatus=1 78",
        "ExecReload=",
    ] {
        assert!(unit.contains(needle), "{needle}");
    }
    let sysusers = std::fs::read_to_string(at("/usr/lib/sysusers.d/picorelay.conf")).unwrap();
    assert!(sysusers.contains("u picorelay "), "{sysusers}");
    let tmpfiles = std::fs::read_to_string(at("/usr/lib/tmpfiles.d/picorelay.conf")).unwrap();
    assert!(
        tmpfiles.contains("d /var/spool/picorelay :0750 :picorelay :picorelay"),
        "{tmpfiles}"
    );

    // A second install keeps the administrator's config.
    std::fs::write(&ini, "; mine\n").unwrap();
    run("install");
    assert_eq!(std::fs::read_to_string(&ini).unwrap(), "; mine\n");

    run("install-sendmail");
    for link in ["/usr/sbin/sendmail", "/usr/bin/mailq", "/usr/bin/mail"] {
        assert_eq!(
            std::fs::read_link(at(link)).unwrap(),
            Path::new("/usr/sbin/picorelay"),
            "{link}"
        );
    }
    run("install-sendmail"); // idempotent

    run("uninstall");
    for gone in [
        "/usr/sbin/picorelay",
        "/usr/sbin/sendmail",
        "/usr/bin/mailq",
        "/usr/bin/mail",
        "/usr/lib/systemd/system/picorelay.service",
        "/usr/lib/sysusers.d/picorelay.conf",
        "/usr/lib/tmpfiles.d/picorelay.conf",
    ] {
        assert!(std::fs::symlink_metadata(at(gone)).is_err(), "{gone} left");
    }
    assert_eq!(std::fs::read_to_string(&ini).unwrap(), "; mine\n");

    // Another MTA's sendmail is neither replaced nor removed.
    std::fs::write(at("/usr/sbin/sendmail"), "other MTA").unwrap();
    let mut args = vec!["install-sendmail"];
    args.extend_from_slice(&vars);
    let out = make(&args);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not picorelay's"));
    run("uninstall");
    assert_eq!(
        std::fs::read_to_string(at("/usr/sbin/sendmail")).unwrap(),
        "other MTA"
    );
}

#[test]
fn check_refuses_what_serve_would_refuse_at_start() {
    // An unknown account and missing folders for the pid and log files: `serve` stops on each,
    // so `check` must not say ok.
    let dir = TempDir::new("check-start");
    let missing = dir.path().join("missing");
    let ini = merge_ini(
        &base_ini(&dir.path().join("spool")),
        &format!(
            "[server]\nuser = no-such-user-here\npid_file = {m}/p.pid\n\n[log]\nfile = {m}/l.log\n",
            m = missing.display()
        ),
    );
    let config = dir.path().join("picorelay.ini");
    std::fs::write(&config, ini).unwrap();
    let out = Command::new(bin())
        .arg("-c")
        .arg(&config)
        .arg("check")
        .env_remove("PICORELAY_CONFIG")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for want in ["[server] user:", "[server] pid_file:", "[log] file:"] {
        assert!(text.contains(want), "{want} missing in {text}");
    }
    assert!(!text.contains(": ok"), "{text}");
    let serve = Command::new(bin())
        .arg("-c")
        .arg(&config)
        .arg("serve")
        .env_remove("PICORELAY_CONFIG")
        .output()
        .unwrap();
    assert_eq!(serve.status.code(), Some(1), "serve refuses it too");
}

#[test]
fn a_second_relay_on_the_same_spool_is_refused() {
    // Both would deliver every message: the second stops at start, naming the spool.
    let relay = Relay::start("");
    let out = Command::new(bin())
        .arg("-c")
        .arg(&relay.config)
        .arg("serve")
        .env_remove("PICORELAY_CONFIG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("[queue] dir") && err.contains("served by another picorelay"),
        "{err}"
    );
    // The first one goes on serving.
    let id = relay.submit("a@example.com", &["b@example.org"], &message("s", "x"));
    assert!(relay.queue_ids().contains(&id));
}
