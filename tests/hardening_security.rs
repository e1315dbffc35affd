//! Security review of issue 7, one black-box test per finding: queue ids cannot name a path
//! outside the spool; spool modes hold under umask 000; no secret reaches logs, `check`,
//! `probe`, `status` or `queue`; a `password_file` open to others is warned about.
//! (The STARTTLS downgrade tests sit with the other forwarding tests in tests/deliver.rs.)

mod common;

use common::certs::{certs, passwd};
use common::smarthost::{Opts, Sink};
use common::*;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// A smarthost password that must never be shown.
const SMARTHOST_PW: &str = "Sm4rt-H0st-S3cret";
/// The same, read from a password_file.
const FILE_PW: &str = "F1le-S3cret-pw";
/// A local user's password for AUTH into the relay.
const ALICE_PW: &str = "Al1ce-Pa55-w0rd";

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// umask0 runs `picorelay -c CONFIG args...` with umask 000, `stdin` on its standard input.
fn umask0(config: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new("sh")
        .args(["-c", "umask 000 && exec \"$@\"", "sh", bin(), "-c"])
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn queue_ids_never_name_a_path_outside_the_spool() {
    let relay = Relay::start("");
    let mut c = relay.connect();
    c.greet();
    let id = queued_id(&c.send_message("a@b.test", &["c@d.test"], &message("keep", "x")));
    let spool = relay.spool();
    // Files a path-walking id could reach: a copy of the message outside queue/ and one outside the spool.
    let stored = std::fs::read(spool.join("queue").join(&id)).unwrap();
    std::fs::write(spool.join("corrupt").join("C0FFEE"), &stored).unwrap();
    std::fs::write(relay.dir.path().join("victim"), &stored).unwrap();
    let abs = spool.join("queue").join(&id).display().to_string();
    let bad = [
        format!("../queue/{id}"),
        format!("./{id}"),
        format!("{id}/"),
        format!("{id}/."),
        abs,
        "../corrupt/C0FFEE".to_string(),
        "../../victim".to_string(),
        format!("..%2fqueue%2f{id}"),
        "%2e%2e%2f%2e%2e%2fvictim".to_string(),
        format!("{id}%00"),
        format!("{id}\n"),
        format!("{id} "),
        format!("..\u{2215}queue\u{2215}{id}"),
        format!("{id}\u{ff0e}"),
        "..".to_string(),
        ".".to_string(),
        "/".to_string(),
        String::new(),
        "A".repeat(65),
    ];
    for b in &bad {
        let out = relay.cmd(&["queue", "show", b]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "queue show {b:?}: {}",
            text(&out)
        );
        assert!(
            out.stdout.is_empty(),
            "queue show {b:?} printed: {}",
            text(&out)
        );
        let out = relay.cmd(&["queue", "delete", b]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "queue delete {b:?}: {}",
            text(&out)
        );
    }
    assert_eq!(relay.queue_ids(), vec![id.clone()]);
    assert!(spool.join("corrupt").join("C0FFEE").exists());
    assert!(relay.dir.path().join("victim").exists());
    // The real id still works.
    assert_eq!(relay.cmd(&["queue", "show", &id]).status.code(), Some(0));
}

#[test]
fn spool_and_files_keep_their_modes_under_umask_000() {
    let dir = TempDir::new("umask");
    let spool = dir.path().join("spool");
    let log = dir.path().join("relay.log");
    let pid = dir.path().join("relay.pid");
    let config = dir.path().join("picorelay.ini");
    let extra = format!(
        "[server]\npid_file = {}\n[log]\nfile = {}\n",
        pid.display(),
        log.display()
    );
    std::fs::write(&config, merge_ini(&base_ini(&spool), &extra)).unwrap();
    let out = umask0(&config, &["check"], b"");
    assert!(out.status.success(), "{}", text(&out));

    // With log.file set, the log goes to the file: follow it there.
    let relay = Relay {
        dir,
        config: config.clone(),
        child: None,
        log: Default::default(),
        addrs: Vec::new(),
    };
    let mut child = Command::new("sh")
        .args(["-c", "umask 000 && exec \"$0\" -c \"$1\" serve", bin()])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the relay to log its listener", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("listening on "))
    });
    let logged = std::fs::read_to_string(&log).unwrap();
    let addr = logged
        .split("listening on ")
        .nth(1)
        .and_then(|a| a.split_whitespace().next())
        .unwrap();
    let mut c = Client::connect(addr.parse().unwrap());
    c.greet();
    queued_id(&c.send_message("a@b.test", &["c@d.test"], &message("smtp", "x")));
    c.expect("QUIT", "221");
    assert_eq!(mode(&log) & 0o027, 0, "log file mode {:o}", mode(&log));
    assert_eq!(mode(&pid) & 0o027, 0, "pid file mode {:o}", mode(&pid));
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();

    // The other commands that write to the spool, with no relay around to tidy up.
    let out = umask0(
        &config,
        &["sendmail", "-f", "a@b.test", "c@d.test"],
        b"Subject: sendmail\n\nhello\n",
    );
    assert!(out.status.success(), "sendmail: {}", text(&out));
    let out = umask0(&config, &["queue", "flush"], b"");
    assert!(out.status.success(), "queue flush: {}", text(&out));
    assert_eq!(relay.queue_ids().len(), 2);

    let mut seen = 0;
    let mut stack = vec![spool.clone()];
    while let Some(d) = stack.pop() {
        assert_eq!(
            mode(&d),
            0o750,
            "folder {} has mode {:o}",
            d.display(),
            mode(&d)
        );
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            seen += 1;
            let m = mode(&p);
            if p.parent().is_some_and(|q| q.ends_with("queue")) {
                assert_eq!(m, 0o640, "message file {} has mode {m:o}", p.display());
            } else {
                assert_eq!(m & 0o027, 0, "file {} has mode {m:o}", p.display());
            }
        }
    }
    assert!(seen >= 2, "no files in the spool");
}

/// assert_clean fails when `what` shows any form of the secrets.
fn assert_clean(what: &str, text: &str, secrets: &[String]) {
    for s in secrets {
        assert!(
            !text.contains(s.as_str()),
            "{what} shows the secret {s:?}:\n{text}"
        );
    }
}

fn secrets_of(user: &str, pw: &str) -> Vec<String> {
    vec![
        pw.to_string(),
        b64(pw.as_bytes()),
        b64(format!("\0{user}\0{pw}").as_bytes()),
    ]
}

#[test]
fn no_secret_in_logs_check_probe_status_or_queue() {
    let sink = Sink::start(Opts::starttls().with_auth());
    let pw_file = TempDir::new("pwfile");
    let pw_path = pw_file.path().join("password");
    std::fs::write(&pw_path, format!("{FILE_PW}\nsecond line\n")).unwrap();
    std::fs::set_permissions(&pw_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let users = format!("[users]\nalice = {}\n", passwd("6", ALICE_PW));
    let mut secrets = secrets_of("relay@example.com", SMARTHOST_PW);
    secrets.extend(secrets_of("relay@example.com", FILE_PW));
    secrets.extend(secrets_of("alice", ALICE_PW));
    secrets.extend(secrets_of("alice", "wr0ng-Pa55-w0rd"));
    secrets.push(b64(b"alice")); // the AUTH LOGIN user payload
    for password in [
        format!("password = {SMARTHOST_PW}"),
        format!("password_file = {}", pw_path.display()),
    ] {
        let extra = format!(
            "[smarthost]\nhost = {}\ntls = starttls\nca_file = {}\nusername = relay@example.com\n{password}\n\n{users}",
            sink.addr(),
            certs().ca.display()
        );
        let relay = Relay::start(&extra);
        let mut c = relay.connect();
        c.greet();
        // A failed AUTH LOGIN and a good AUTH PLAIN (127.0.0.1 may authenticate without TLS).
        c.expect("AUTH LOGIN", "334");
        c.expect(&b64(b"alice"), "334");
        c.expect(&b64(b"wr0ng-Pa55-w0rd"), "535");
        c.expect(
            &format!(
                "AUTH PLAIN {}",
                b64(format!("\0alice\0{ALICE_PW}").as_bytes())
            ),
            "235",
        );
        let before = sink.txns().len();
        queued_id(&c.send_message(
            "alice@example.com",
            &["bob@example.org"],
            &message("s", "x"),
        ));
        c.expect("QUIT", "221");
        let t = sink.wait_txns(before + 1).pop().unwrap();
        let used = t.auth.expect("the relay logged in at the smarthost").1;
        assert!(used == SMARTHOST_PW || used == FILE_PW);

        let mut outputs = vec![("log".to_string(), relay.log_text())];
        for args in [
            &["check"][..],
            &["probe"],
            &["status"],
            &["status", "--json"],
            &["queue", "list"],
        ] {
            let out = relay.cmd(args);
            outputs.push((args.join(" "), text(&out)));
        }
        let probe = &outputs.iter().find(|(w, _)| w == "probe").unwrap().1;
        assert!(probe.contains("AUTH PLAIN ********"), "{probe}");
        for (what, t) in &outputs {
            assert_clean(what, t, &secrets);
        }
    }
}

#[test]
fn password_file_readable_by_others_warns_at_start_and_in_check() {
    let pw_file = TempDir::new("pwmode");
    let pw_path = pw_file.path().join("password");
    std::fs::write(&pw_path, format!("{FILE_PW}\n")).unwrap();
    std::fs::set_permissions(&pw_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let extra = format!(
        "[smarthost]\nhost = 127.0.0.1:1\nusername = u\npassword_file = {}\n",
        pw_path.display()
    );
    let mut relay = Relay::start(&extra);
    let warning = format!(
        "[smarthost] password_file: {} is readable or writable by other users (mode 0644)",
        pw_path.display()
    );
    relay.wait_log(&warning);
    let out = relay.cmd(&["check"]);
    let t = text(&out);
    assert!(out.status.success(), "a warning is not an error: {t}");
    assert!(t.contains(&warning), "{t}");
    assert_clean("check", &t, &secrets_of("u", FILE_PW));

    std::fs::set_permissions(&pw_path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let t = text(&relay.cmd(&["check"]));
    assert!(!t.contains("password_file"), "{t}");
    relay.kill9();
    relay.spawn();
    assert!(
        !relay.log_text().contains("password_file"),
        "{}",
        relay.log_text()
    );
}
