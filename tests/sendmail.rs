//! Black-box tests of local submission: `picorelay sendmail`, and the binary through
//! links named sendmail, mailq and mail, fed the way cron, mdadm, PHP, logwatch,
//! smartd, ZED and apcupsd feed them.

mod common;

use common::smarthost::{Opts, Sink};
use common::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A config and spool with no relay running.
struct Setup {
    dir: TempDir,
    config: PathBuf,
}

impl Setup {
    fn new(extra: &str) -> Setup {
        let dir = TempDir::new("sendmail");
        let config = dir.path().join("picorelay.ini");
        let spool = dir.path().join("spool");
        std::fs::write(&config, merge_ini(&base_ini(&spool), extra)).unwrap();
        Setup { dir, config }
    }

    fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// sendmail runs `picorelay -c CONFIG sendmail ARGS` with `stdin`.
    fn sendmail(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut all = vec!["-c", self.config.to_str().unwrap(), "sendmail"];
        all.extend_from_slice(args);
        run(Path::new(bin()), &all, None, stdin)
    }

    /// link runs the binary through a symlink called `name`, the config named by
    /// PICORELAY_CONFIG as an installed link would find it.
    fn link(&self, name: &str, args: &[&str], stdin: &[u8]) -> Output {
        let path = self.dir.path().join("bin").join(name);
        if !path.exists() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(bin(), &path).unwrap();
        }
        run(&path, args, Some(&self.config), stdin)
    }

    fn ids(&self) -> Vec<String> {
        ids(&self.config)
    }

    /// only shows the one queued message as (envelope, message).
    fn only(&self) -> (String, String) {
        let ids = self.ids();
        assert_eq!(ids.len(), 1, "{ids:?}");
        show(&self.config, &ids[0])
    }
}

/// run starts `program` with `args`, writes `stdin` and waits.
fn run(program: &Path, args: &[&str], config_env: Option<&Path>, stdin: &[u8]) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_remove("PICORELAY_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(c) = config_env {
        cmd.env("PICORELAY_CONFIG", c);
    }
    let mut child = cmd.spawn().expect("start picorelay");
    {
        let mut input = child.stdin.take().unwrap();
        // The program may stop reading early (a lone dot, an error): EPIPE is fine.
        let _ = input.write_all(stdin);
    }
    child.wait_with_output().unwrap()
}

fn picorelay(config: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("-c")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

fn ids(config: &Path) -> Vec<String> {
    queue_ids_of(config)
}

/// show returns `queue show ID` as (envelope, message).
fn show(config: &Path, id: &str) -> (String, String) {
    let out = picorelay(config, &["queue", "show", id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (env, msg) = text
        .split_once("\n\n")
        .expect("envelope, blank line, message");
    (env.to_string(), msg.to_string())
}

/// ok asserts exit 0 with nothing on stderr.
fn ok(out: &Output) {
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// fails asserts the exit code and a one-line error on stderr.
fn fails(out: &Output, code: i32) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert!(
        !err.is_empty() && err.trim_end().lines().count() == 1,
        "one line: {err:?}"
    );
    err
}

/// env_value is the value of `key:` in the envelope.
fn env_value(env: &str, key: &str) -> String {
    env.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")))
        .unwrap_or_default()
        .to_string()
}

/// rcpts lists the `to=` of every envelope recipient.
fn rcpts(env: &str) -> Vec<String> {
    env.lines()
        .filter(|l| l.starts_with("rcpt: "))
        .filter_map(|l| l.split(" to=").nth(1))
        .map(|r| r.split(' ').next().unwrap_or("").to_string())
        .collect()
}

/// fields returns the unfolded values of every header field called `name`.
fn fields(msg: &str, name: &str) -> Vec<String> {
    let head = msg.split("\r\n\r\n").next().unwrap();
    let unfolded = head.replace("\r\n\t", "\t").replace("\r\n ", " ");
    unfolded
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

fn body(msg: &str) -> &str {
    msg.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("")
}

/// The checks every locally submitted message passes: one Received of protocol
/// local, Date and Message-ID present once, CRLF only, client local.
fn common_checks(env: &str, msg: &str) {
    assert_eq!(env_value(env, "client"), "local", "{env}");
    assert_eq!(env_value(env, "helo"), "localhost", "{env}");
    assert!(!env_value(env, "auth-user").is_empty(), "{env}");
    let id = env_value(env, "id");
    assert!(
        msg.starts_with("Received: from localhost (user ")
            && msg.contains(&format!("(picorelay) with local id {id}")),
        "{msg}"
    );
    assert_eq!(fields(msg, "Date").len(), 1, "{msg}");
    assert_eq!(fields(msg, "Message-ID").len(), 1, "{msg}");
    assert_eq!(fields(msg, "From").len(), 1, "{msg}");
    assert!(
        !msg.replace("\r\n", "").contains(['\r', '\n']),
        "CRLF only: {msg:?}"
    );
}

/// The invoking user as the envelope records it, at the configured hostname.
fn user_at_host(env: &str) -> String {
    format!("{}@relay.test", env_value(env, "auth-user"))
}

#[test]
fn cron_vector() {
    let s = Setup::new("");
    let input = "From: root (Cron Daemon)\nTo: root\nSubject: Cron <root@nas> /usr/local/bin/backup\n\
        MIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\nContent-Transfer-Encoding: 8bit\n\
        X-Cron-Env: <SHELL=/bin/sh>\n\nbackup done\n.\nstill body\n";
    ok(&s.sendmail(
        &[
            "-FCronDaemon",
            "-i",
            "-odi",
            "-oem",
            "-oi",
            "-t",
            "-f",
            "root",
        ],
        input.as_bytes(),
    ));
    let (env, msg) = s.only();
    common_checks(&env, &msg);
    assert_eq!(env_value(&env, "sender"), "root@relay.test");
    assert_eq!(rcpts(&env), ["root"]);
    assert_eq!(
        fields(&msg, "From"),
        ["root (Cron Daemon)"],
        "kept as written"
    );
    assert_eq!(
        fields(&msg, "Subject"),
        ["Cron <root@nas> /usr/local/bin/backup"]
    );
    assert_eq!(
        body(&msg),
        "backup done\r\n.\r\nstill body\r\n",
        "-i keeps a lone dot"
    );
}

#[test]
fn debian_cron_vector() {
    let s = Setup::new("");
    let input = "From: root (Cron Daemon)\nTo: root\nSubject: Cron <root@nas> test -x /usr/sbin/anacron\n\
        Content-Type: text/plain; charset=UTF-8\nX-Cron-Env: <PATH=/usr/bin:/bin>\n\n\u{fc}berwachung ok\n";
    ok(&s.sendmail(
        &["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"],
        input.as_bytes(),
    ));
    let (env, msg) = s.only();
    common_checks(&env, &msg);
    assert_eq!(env_value(&env, "sender"), user_at_host(&env));
    assert_eq!(rcpts(&env), ["root"]);
    assert_eq!(env_value(&env, "eight-bit"), "yes");
    assert!(msg.contains("for <root>;"), "one recipient is named: {msg}");
    assert_eq!(body(&msg), "\u{fc}berwachung ok\r\n");
}

#[test]
fn mdadm_vector() {
    let s = Setup::new("");
    let input = "From: mdadm monitoring <root>\nTo: root\nSubject: Fail event on /dev/md0:nas\n\n\
        This is an automatically generated mail message from mdadm\nrunning on nas\n\n\
        A Fail event had been detected on md device /dev/md0.\n";
    ok(&s.sendmail(&["-t"], input.as_bytes()));
    let (env, msg) = s.only();
    common_checks(&env, &msg);
    assert_eq!(env_value(&env, "sender"), user_at_host(&env));
    assert_eq!(rcpts(&env), ["root"]);
    assert_eq!(fields(&msg, "From"), ["mdadm monitoring <root>"]);
    assert!(body(&msg).ends_with("detected on md device /dev/md0.\r\n"));
}

#[test]
fn php_vector() {
    let s = Setup::new("");
    // PHP's mail(): its own headers with CRLF, the rest with LF; a lone dot in the text.
    let input = "To: visitor@example.com\nSubject: Your order\nFrom: shop@example.com\r\n\
        Reply-To: orders@example.com\r\nX-Mailer: PHP/8.2.7\r\n\nThank you.\n.\nThe shop\n";
    ok(&s.sendmail(&["-t", "-i"], input.as_bytes()));
    let (env, msg) = s.only();
    common_checks(&env, &msg);
    assert_eq!(rcpts(&env), ["visitor@example.com"]);
    assert_eq!(fields(&msg, "From"), ["shop@example.com"]);
    assert_eq!(fields(&msg, "Reply-To"), ["orders@example.com"]);
    assert_eq!(body(&msg), "Thank you.\r\n.\r\nThe shop\r\n");
}

#[test]
fn logwatch_vector() {
    let s = Setup::new("");
    let input = "To: root\nFrom: Logwatch <logwatch@nas.lan>\nSubject: Logwatch for nas (Linux)\n\
        Auto-Submitted: auto-generated\nMIME-Version: 1.0\nContent-Transfer-Encoding: 7bit\n\
        Content-Type: text/plain; charset=\"UTF-8\"\n\n ################### Logwatch 7.8 ####\n";
    ok(&s.sendmail(&["-t"], input.as_bytes()));
    let (env, msg) = s.only();
    common_checks(&env, &msg);
    assert_eq!(rcpts(&env), ["root"]);
    assert_eq!(fields(&msg, "From"), ["Logwatch <logwatch@nas.lan>"]);
    assert_eq!(fields(&msg, "Subject"), ["Logwatch for nas (Linux)"]);
}

#[test]
fn mail_vectors_smartd_zed_apcupsd() {
    let cases = [
        (
            "SMART error (FailedReadSmartSelfTestLog) detected on host: nas",
            "This message was generated by the smartd daemon running on:\n\n   host name:  nas\n",
        ),
        (
            "ZFS scrub_finish event for tank on nas",
            "ZFS has finished a scrub:\n\n   eid: 42\n  pool: tank\n state: ONLINE\n",
        ),
        (
            "nas UPS ups Power Failure !!!",
            "Sun Nov 29 06:00:00 UTC 2026  Power failure.\n.\n",
        ),
    ];
    for (subject, text) in cases {
        let s = Setup::new("");
        ok(&s.link("mail", &["-s", subject, "root"], text.as_bytes()));
        let (env, msg) = s.only();
        common_checks(&env, &msg);
        assert_eq!(env_value(&env, "sender"), user_at_host(&env));
        assert_eq!(rcpts(&env), ["root"]);
        assert_eq!(fields(&msg, "Subject"), [subject]);
        assert_eq!(fields(&msg, "To"), ["root"]);
        assert_eq!(fields(&msg, "From"), [user_at_host(&env)]);
        assert_eq!(fields(&msg, "Content-Type"), ["text/plain; charset=UTF-8"]);
        assert_eq!(body(&msg), text.replace('\n', "\r\n"), "mail reads to EOF");
    }
}

#[test]
fn mail_with_sender_and_several_recipients() {
    let s = Setup::new("");
    ok(&s.link(
        "mailx",
        &[
            "-s",
            "UPS on battery \u{2013} 5 min left",
            "-r",
            "nas@example.com",
            "a@example.com",
            "b@example.com",
        ],
        b"shutting down\n",
    ));
    let (env, msg) = s.only();
    common_checks(&env, &msg);
    assert_eq!(env_value(&env, "sender"), "nas@example.com");
    assert_eq!(rcpts(&env), ["a@example.com", "b@example.com"]);
    assert_eq!(fields(&msg, "From"), ["nas@example.com"]);
    assert_eq!(fields(&msg, "To"), ["a@example.com, b@example.com"]);
    assert!(
        fields(&msg, "Subject")[0].starts_with("=?UTF-8?B?"),
        "{msg}"
    );
}

#[test]
fn t_reads_folded_lists_groups_and_quoted_commas_and_drops_bcc() {
    let s = Setup::new("");
    let input = "To: \"Doe, John\" <john@example.com>,\n\tteam: a@example.com, b@example.com;\n\
        Cc: carol@example.com (Carol, QA)\nBcc: secret@example.com,\n  hidden@example.com\n\
        Subject: list\n\nhello\n";
    ok(&s.sendmail(&["-t", "extra@example.com"], input.as_bytes()));
    let (env, msg) = s.only();
    common_checks(&env, &msg);
    assert_eq!(
        rcpts(&env),
        [
            "extra@example.com",
            "john@example.com",
            "a@example.com",
            "b@example.com",
            "carol@example.com",
            "secret@example.com",
            "hidden@example.com"
        ]
    );
    assert!(fields(&msg, "Bcc").is_empty(), "{msg}");
    assert!(
        !msg.contains("secret@") && !msg.contains("hidden@"),
        "{msg}"
    );
    assert_eq!(
        fields(&msg, "To"),
        ["\"Doe, John\" <john@example.com>,\tteam: a@example.com, b@example.com;"]
    );
}

#[test]
fn lone_dot_ends_the_message_without_i() {
    let s = Setup::new("");
    ok(&s.sendmail(&["root"], b"Subject: dot\n\nline\n.\nnot part of it\n"));
    let (_, msg) = s.only();
    assert_eq!(body(&msg), "line\r\n");
}

#[test]
fn added_from_uses_f_and_full_name() {
    let s = Setup::new("");
    ok(&s.sendmail(
        &[
            "-f",
            "backup@nas.lan",
            "-F",
            "Backup Job",
            "admin@example.com",
        ],
        b"Subject: x\n\nbody\n",
    ));
    let (env, msg) = s.only();
    common_checks(&env, &msg);
    assert_eq!(env_value(&env, "sender"), "backup@nas.lan");
    assert_eq!(fields(&msg, "From"), ["Backup Job <backup@nas.lan>"]);
    assert!(
        fields(&msg, "Message-ID")[0].ends_with("@relay.test>"),
        "{msg}"
    );
}

#[test]
fn sendmail_and_mailq_links() {
    let s = Setup::new("");
    ok(&s.link(
        "sendmail",
        &["-oi", "-t"],
        b"To: root\nSubject: via link\n\nhi\n",
    ));
    let ids = s.ids();
    assert_eq!(ids.len(), 1);
    for (name, args) in [("mailq", &[][..]), ("sendmail", &["-bp"][..])] {
        let out = s.link(name, args, b"");
        ok(&out);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.starts_with(&ids[0]) && text.contains("to=root"),
            "{name}: {text}"
        );
    }
    // -C names the config through a link, whatever PICORELAY_CONFIG says.
    let other = Setup::new("");
    let out = other.link("mailq", &["-C", s.config.to_str().unwrap()], b"");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&ids[0]));
    // -q asks a relay for a flush: the trigger file is dropped.
    ok(&s.link("sendmail", &["-q"], b""));
    assert!(s.spool().join("flush").exists());
}

#[test]
fn line_breaks_in_values_are_refused() {
    let s = Setup::new("");
    let cases: &[(&str, &[&str])] = &[
        ("sendmail", &["-f", "root\nBcc: evil@example.com", "root"]),
        ("sendmail", &["-FName\r\nBcc: evil@example.com", "root"]),
        ("sendmail", &["root\r\nBcc: evil@example.com"]),
        ("mail", &["-s", "subject\nBcc: evil@example.com", "root"]),
        ("mail", &["-s", "x", "root\nBcc: evil@example.com"]),
    ];
    for (name, args) in cases {
        let err = fails(&s.link(name, args, b"Subject: x\n\nbody\n"), 64);
        assert!(err.contains("line break"), "{err}");
    }
    let err = fails(&s.sendmail(&["-f", "a\nb", "root"], b"x\n"), 64);
    assert!(err.starts_with("picorelay sendmail: "), "{err}");
    assert!(s.ids().is_empty());
}

#[test]
fn usage_and_data_errors() {
    let s = Setup::new("[server]\nmax_message_size = 64K\n");
    fails(&s.sendmail(&["-bd"], b""), 64);
    fails(&s.sendmail(&["-bv", "root"], b""), 64);
    fails(&s.sendmail(&["-z", "root"], b""), 64);
    fails(&s.sendmail(&[], b"Subject: nobody\n\nx\n"), 64);
    fails(&s.sendmail(&["bad address@example.com"], b"x\n"), 64);
    fails(&s.link("mail", &["-s", "no recipient"], b"x\n"), 64);
    fails(&s.sendmail(&["-t"], b"Subject: no To\n\nx\n"), 65);
    let big = format!("Subject: big\n\n{}\n", "y".repeat(70 * 1024));
    let err = fails(&s.sendmail(&["root"], big.as_bytes()), 65);
    assert!(err.contains("max_message_size"), "{err}");
    assert!(s.ids().is_empty());
    assert_eq!(
        std::fs::read_dir(s.spool().join("tmp")).unwrap().count(),
        0,
        "no leftovers"
    );
}

#[test]
fn full_spool_is_a_temporary_failure() {
    let s = Setup::new("[server]\nmax_message_size = 2M\n[queue]\nmax_size = 1M\n");
    let big = format!("Subject: big\n\n{}\n", "z".repeat(1100 * 1024));
    ok(&s.sendmail(&["root"], big.as_bytes()));
    let err = fails(&s.sendmail(&["root"], b"Subject: small\n\nx\n"), 75);
    assert!(err.contains("spool full"), "{err}");
    assert_eq!(s.ids().len(), 1);
}

#[test]
fn bad_config_is_exit_78() {
    let s = Setup::new("[server]\nno_such_key = 1\n");
    let out = s.sendmail(&["root"], b"x\n");
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no_such_key"));
    let out = s.link("sendmail", &["-t"], b"To: root\n\nx\n");
    assert_eq!(out.status.code(), Some(78));
    let out = s.link(
        "mail",
        &["-s", "x", "-C", "/nonexistent/picorelay.ini", "root"],
        b"x\n",
    );
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/picorelay.ini"));
}

#[test]
fn running_hold_mode_relay_sees_the_message() {
    let relay = Relay::start("");
    let cfg = relay.config.to_str().unwrap().to_string();
    let out = run(
        Path::new(bin()),
        &["-c", &cfg, "sendmail", "root"],
        None,
        b"Subject: while running\n\nhi\n",
    );
    ok(&out);
    let ids = relay.queue_ids();
    assert_eq!(ids.len(), 1);
    relay.wait_log(&format!("delivery {}: found by rescan", ids[0]));
}

#[test]
fn running_relay_forwards_within_a_second_and_applies_aliases() {
    let sink = Sink::start(Opts::plain());
    let relay = Relay::start(&format!(
        "[smarthost]\nhost = {}\ntls = none\n[aliases]\nroot = admin@example.com\n",
        sink.addr()
    ));
    let cfg = relay.config.to_str().unwrap().to_string();
    let start = Instant::now();
    ok(&run(
        Path::new(bin()),
        &["-c", &cfg, "sendmail", "-t", "-i"],
        None,
        b"To: root\nSubject: forwarded\n\nhello\n",
    ));
    let txns = sink.wait_txns(1);
    // The rescan runs every second; allow for a loaded machine.
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(txns[0].rcpts, ["admin@example.com"]);
    assert!(
        txns[0].data.contains("Subject: forwarded\r\n"),
        "{}",
        txns[0].data
    );
    assert!(txns[0].data.contains("with local id "), "{}", txns[0].data);
}

#[test]
fn message_waits_while_the_relay_is_down() {
    let sink = Sink::start(Opts::plain());
    let mut relay = Relay::start(&format!(
        "[smarthost]\nhost = {}\ntls = none\n",
        sink.addr()
    ));
    relay.kill9();
    let cfg = relay.config.to_str().unwrap().to_string();
    ok(&run(
        Path::new(bin()),
        &["-c", &cfg, "sendmail", "ops@example.com"],
        None,
        b"Subject: queued while down\n\nx\n",
    ));
    assert_eq!(relay.queue_ids().len(), 1);
    std::thread::sleep(Duration::from_millis(200));
    assert!(sink.txns().is_empty());
    relay.spawn();
    let txns = sink.wait_txns(1);
    assert_eq!(txns[0].rcpts, ["ops@example.com"]);
    wait_for("the queue to empty", || relay.queue_ids().is_empty());
}

#[test]
fn sendmail_takes_c_right_after_its_word_as_the_config() {
    // `picorelay sendmail -c FILE ...` as every other command takes -c, with another config in
    // the environment: the message goes to the spool of FILE, to the one recipient.
    let s = Setup::new("");
    let other = Setup::new("");
    let config = s.config.to_str().unwrap();
    let out = run(
        Path::new(bin()),
        &["sendmail", "-c", config, "-i", "root@example.org"],
        Some(&other.config),
        b"Subject: c\n\nbody\n",
    );
    ok(&out);
    assert!(other.ids().is_empty(), "not the environment's config");
    let (env, _) = s.only();
    assert_eq!(rcpts(&env), ["root@example.org"]);
    // The same with --config=FILE.
    let arg = format!("--config={config}");
    ok(&run(
        Path::new(bin()),
        &["sendmail", &arg, "root@example.org"],
        Some(&other.config),
        b"Subject: c\n\nbody\n",
    ));
    assert_eq!(s.ids().len(), 2);
}

#[test]
fn submitting_does_not_read_the_smarthost_password_file() {
    // The password file may be readable by the service user alone; a user allowed to submit
    // must still get the message queued (here the file cannot be read by anyone: it is gone).
    let s = Setup::new(
        "[smarthost]\nhost = 127.0.0.1:1\nusername = u\npassword_file = /nonexistent/picorelay-pw\n",
    );
    ok(&s.sendmail(&["-i", "root@example.org"], b"Subject: pw\n\nbody\n"));
    assert_eq!(s.ids().len(), 1);
    let list = picorelay(&s.config, &["queue", "list"]);
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    // The relay itself, and check, still need it.
    let check = picorelay(&s.config, &["check"]);
    assert_eq!(check.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&check.stdout).contains("[smarthost] password_file"));
}

/// Bs is `sendmail -bs` driven one command at a time, as Symfony Mailer's
/// SendmailTransport does: each reply must arrive before the next command is sent
/// (a reply left in a buffer would hang the client; here it fails after 10 s).
struct Bs {
    child: std::process::Child,
    input: Option<std::process::ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Bs {
    fn start(program: &Path, args: &[&str], config_env: Option<&Path>) -> Bs {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_remove("PICORELAY_CONFIG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(c) = config_env {
            cmd.env("PICORELAY_CONFIG", c);
        }
        let mut child = cmd.spawn().expect("start picorelay");
        let input = child.stdin.take();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut out = std::io::BufReader::new(out);
            let mut line = Vec::new();
            // Lines as sent, CRLF kept (lines() would strip it).
            while out.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                let text = String::from_utf8_lossy(&line).into_owned();
                if tx.send(text).is_err() {
                    break;
                }
                line.clear();
            }
        });
        Bs {
            child,
            input,
            lines,
        }
    }

    fn send(&mut self, text: &str) {
        let input = self.input.as_mut().unwrap();
        input.write_all(text.as_bytes()).unwrap();
        input.flush().unwrap();
    }

    /// reply reads one reply, every line of it, CRLF-terminated.
    fn reply(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("no reply ({e}) after {lines:?}"));
            let last = line.as_bytes().get(3) == Some(&b' ');
            assert!(line.ends_with("\r\n"), "CRLF: {line:?}");
            lines.push(line.trim_end().to_string());
            if last {
                return lines;
            }
        }
    }

    /// cmd sends a line and asserts the code of the reply's last line.
    fn cmd(&mut self, line: &str, code: &str) -> Vec<String> {
        self.send(&format!("{line}\r\n"));
        let r = self.reply();
        assert!(r.last().unwrap().starts_with(code), "{line}: {r:?}");
        r
    }

    fn wait(mut self) -> Output {
        drop(self.input.take());
        self.child.wait_with_output().unwrap()
    }
}

impl Setup {
    /// bs starts `picorelay -c CONFIG sendmail -bs`.
    fn bs(&self) -> Bs {
        let config = self.config.to_str().unwrap();
        Bs::start(Path::new(bin()), &["-c", config, "sendmail", "-bs"], None)
    }
}

/// Symfony Mailer's SendmailTransport (its default command is `sendmail -bs`), one
/// command and its reply at a time; the message has a stuffed leading dot and a
/// line ended by a bare LF.
#[test]
fn bs_symfony_exchange() {
    let s = Setup::new("");
    let mut c = s.bs();
    let greeting = c.reply();
    assert!(greeting[0].starts_with("220 relay.test "), "{greeting:?}");
    let ehlo = c.cmd("EHLO [127.0.0.1]", "250 ");
    assert!(ehlo.len() > 1 && ehlo[0].starts_with("250-"), "{ehlo:?}");
    assert!(ehlo.iter().any(|l| l.contains("PIPELINING")), "{ehlo:?}");
    assert!(
        !ehlo
            .iter()
            .any(|l| l.contains("STARTTLS") || l.contains("AUTH")),
        "no STARTTLS or AUTH on a pipe: {ehlo:?}"
    );
    c.cmd("MAIL FROM:<app@example.com>", "250 ");
    c.cmd("RCPT TO:<a@example.org>", "250 ");
    c.cmd("RCPT TO:<b@example.org>", "250 ");
    c.cmd("DATA", "354 ");
    c.send(
        "From: App <app@example.com>\r\nSubject: Symfony\r\n\r\n..leading dot\r\nbare LF\nend\r\n",
    );
    let queued = c.cmd(".", "250 ");
    c.cmd("QUIT", "221 ");
    ok(&c.wait());

    let (env, msg) = s.only();
    let id = env_value(&env, "id");
    assert!(queued[0].ends_with(&id), "{queued:?} {id}");
    assert_eq!(env_value(&env, "sender"), "app@example.com", "{env}");
    assert_eq!(rcpts(&env), ["a@example.org", "b@example.org"], "{env}");
    assert_eq!(env_value(&env, "client"), "local", "{env}");
    assert_eq!(env_value(&env, "helo"), "[127.0.0.1]", "{env}");
    assert!(!env_value(&env, "auth-user").is_empty(), "{env}");
    assert!(
        msg.starts_with("Received: from localhost (user ")
            && msg.contains(&format!("(picorelay) with local-esmtp id {id}")),
        "{msg}"
    );
    assert_eq!(body(&msg), ".leading dot\r\nbare LF\r\nend\r\n", "{msg:?}");
}

/// Several messages in one session (pipelined, as one write), RSET between them; a
/// refused command does not change the exit status; the end of input after a
/// complete message ends the session like QUIT. Through the sendmail link, with
/// Laravel's `-bs -i`.
#[test]
fn bs_two_messages_rset_and_end_of_input() {
    let s = Setup::new("");
    let script = "HELO app.local\r\n\
        MAIL FROM:<one@example.com>\r\nRCPT TO:<x@example.org>\r\nDATA\r\nSubject: 1\r\n\r\nfirst\r\n.\r\n\
        MAIL FROM:<dropped@example.com>\r\nRCPT TO:<dropped@example.org>\r\nRSET\r\n\
        BOGUS\r\n\
        MAIL FROM:<>\r\nRCPT TO:<y@example.org>\r\nRCPT TO:<root>\r\nDATA\r\nSubject: 2\r\n\r\nsecond\r\n.\r\n";
    let out = s.link("sendmail", &["-bs", "-i"], script.as_bytes());
    ok(&out);
    let replies = String::from_utf8(out.stdout).unwrap();
    let codes: Vec<&str> = replies.lines().map(|l| &l[..4]).collect();
    assert_eq!(
        codes,
        [
            "220 ", "250 ", "250 ", "250 ", "354 ", "250 ", "250 ", "250 ", "250 ", "500 ", "250 ",
            "250 ", "501 ", "354 ", "250 "
        ],
        "{replies}"
    );
    let ids = s.ids();
    assert_eq!(ids.len(), 2, "{ids:?}");
    let msgs: Vec<(String, String)> = ids.iter().map(|id| show(&s.config, id)).collect();
    let first = msgs.iter().find(|(_, m)| m.contains("first")).unwrap();
    let second = msgs.iter().find(|(_, m)| m.contains("second")).unwrap();
    assert_eq!(env_value(&first.0, "sender"), "one@example.com");
    assert_eq!(rcpts(&first.0), ["x@example.org"]);
    assert!(first.1.contains("with local-smtp id"), "{}", first.1);
    assert_eq!(env_value(&second.0, "sender"), "");
    assert_eq!(rcpts(&second.0), ["y@example.org"]);
    assert!(!replies.contains("dropped"));
}

/// The input ending inside DATA queues nothing: exit 75 (EX_TEMPFAIL), one line on stderr.
#[test]
fn bs_end_of_input_inside_data_queues_nothing() {
    let s = Setup::new("");
    let script = b"EHLO x\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nSubject: cut\r\n\r\nhalf a mess";
    let out = s.sendmail(&["-bs"], script);
    let err = fails(&out, 75);
    assert!(err.contains("inside DATA"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("354 "));
    assert!(s.ids().is_empty());
    assert_eq!(
        std::fs::read_dir(s.spool().join("tmp")).unwrap().count(),
        0,
        "no leftovers"
    );
}

/// Limits are the listener's: SIZE, max_recipients; a full spool is 452 at DATA.
#[test]
fn bs_limits() {
    let s = Setup::new("[server]\nmax_message_size = 64K\nmax_recipients = 1\n");
    let big = "y".repeat(70 * 1024);
    let script = format!(
        "EHLO x\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nRCPT TO:<c@example.org>\r\nDATA\r\n{big}\r\n.\r\nQUIT\r\n"
    );
    let out = s.sendmail(&["-bs"], script.as_bytes());
    ok(&out);
    let replies = String::from_utf8(out.stdout).unwrap();
    assert!(replies.contains("250-SIZE 65536\r\n"), "{replies}");
    assert!(replies.contains("\r\n452 4.5.3"), "{replies}");
    assert!(replies.contains("\r\n552 "), "{replies}");
    assert!(
        replies.ends_with("\r\n221 2.0.0 relay.test closing connection\r\n"),
        "{replies}"
    );
    assert!(s.ids().is_empty());

    let s = Setup::new("[server]\nmax_message_size = 2M\n[queue]\nmax_size = 1M\n");
    let big = format!("Subject: big\n\n{}\n", "z".repeat(1100 * 1024));
    ok(&s.sendmail(&["root"], big.as_bytes()));
    let script =
        "HELO x\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nQUIT\r\n";
    let out = s.sendmail(&["-bs"], script.as_bytes());
    let replies = String::from_utf8_lossy(&out.stdout);
    assert!(replies.contains("\r\n452 4.3.1 "), "{replies}");
    assert!(!replies.contains("354"), "{replies}");
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("spool full"));
    assert_eq!(s.ids().len(), 1);
}

/// Python's smtplib over a socket pair as the child's stdin and stdout.
#[test]
fn bs_python_smtplib() {
    let have = Command::new("python3")
        .args(["-c", "import smtplib, socket, subprocess"])
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        println!("note: python3 is not installed: skipping this test");
        return;
    }
    let s = Setup::new("");
    let script = r#"
import smtplib, socket, subprocess, sys
prog, cfg = sys.argv[1:3]
a, b = socket.socketpair()
p = subprocess.Popen([prog, "-c", cfg, "sendmail", "-bs"], stdin=b, stdout=b)
b.close()
s = smtplib.SMTP()
s.sock = a
code, msg = s.getreply()
assert code == 220, (code, msg)
s.ehlo("py.test")
s.sendmail("py@example.com", ["x@example.org", "y@example.org"], "Subject: py\r\n\r\n.leading dot\r\nbody\r\n")
s.sendmail("py@example.com", ["z@example.org"], "Subject: py2\r\n\r\nsecond\r\n")
code, _ = s.quit()
assert code == 221, code
sys.exit(p.wait())
"#;
    let out = Command::new("python3")
        .args(["-c", script, bin(), s.config.to_str().unwrap()])
        .output()
        .unwrap();
    ok(&out);
    let ids = s.ids();
    assert_eq!(ids.len(), 2, "{ids:?}");
    let msgs: Vec<(String, String)> = ids.iter().map(|id| show(&s.config, id)).collect();
    let first = msgs
        .iter()
        .find(|(_, m)| m.contains("Subject: py\r\n"))
        .unwrap();
    assert_eq!(rcpts(&first.0), ["x@example.org", "y@example.org"]);
    assert_eq!(body(&first.1), ".leading dot\r\nbody\r\n");
}
