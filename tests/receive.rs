//! Black-box tests of receiving: the real binary on loopback, SMTP by hand.

mod common;

use common::*;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

#[test]
fn whole_transaction_is_queued_and_listed() {
    let relay = Relay::start("");
    let mut c = relay.connect();
    let ehlo = c.greet();
    let text = ehlo.join("\n");
    for kw in [
        "PIPELINING",
        "SIZE 10485760",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
    ] {
        assert!(text.contains(kw), "EHLO lacks {kw}: {text}");
    }
    let r = c.send_message(
        "alice@example.com",
        &["bob@example.org"],
        &message("hello", "first line\r\n..dot line"),
    );
    let id = queued_id(&r);
    c.expect("QUIT", "221 2.0.0");
    assert_eq!(relay.queue_ids(), vec![id.clone()]);

    let list = relay.cmd(&["queue", "list"]);
    let line = String::from_utf8_lossy(&list.stdout).to_string();
    assert!(
        line.contains("from=<alice@example.com>") && line.contains("bob@example.org"),
        "{line}"
    );

    let show = relay.cmd(&["queue", "show", &id]);
    assert!(show.status.success());
    let shown = String::from_utf8_lossy(&show.stdout).to_string();
    assert!(
        shown.contains("Received: from client.test ([127.0.0.1])"),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("id {id}")) && shown.contains("for <bob@example.org>"),
        "{shown}"
    );
    assert!(
        shown.contains("Subject: hello\r\n\r\nfirst line\r\n.dot line"),
        "dot-unstuffed: {shown}"
    );
    relay.wait_log(&format!("accepted {id} from=<alice@example.com> rcpt=1"));
}

#[test]
fn pipelined_transaction_in_one_write() {
    let relay = Relay::start("");
    let mut c = relay.connect();
    assert!(c.reply().starts_with("220"));
    c.send_raw(
        b"EHLO p.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nRCPT TO:<e@f.test>\r\nDATA\r\n",
    );
    assert!(c.read_reply().last().unwrap().starts_with("250 "));
    assert!(c.reply().starts_with("250 2.1.0"));
    assert!(c.reply().starts_with("250 2.1.5"));
    assert!(c.reply().starts_with("250 2.1.5"));
    assert!(c.reply().starts_with("354"));
    c.send_raw(
        b"Subject: p\r\n\r\nbody\r\n.\r\nMAIL FROM:<x@y.test>\r\nRCPT TO:<z@w.test>\r\nDATA\r\n",
    );
    let id = queued_id(&c.reply());
    assert!(c.reply().starts_with("250 2.1.0"));
    assert!(c.reply().starts_with("250 2.1.5"));
    assert!(c.reply().starts_with("354"));
    c.send_raw(b"second\r\n.\r\nQUIT\r\n");
    let id2 = queued_id(&c.reply());
    assert!(c.reply().starts_with("221"));
    let mut ids = relay.queue_ids();
    ids.sort();
    assert_eq!(ids, vec![id, id2]);
}

#[test]
fn protocol_errors_get_the_right_codes() {
    let relay = Relay::start("[server]\nmax_recipients = 3\nmax_message_size = 64K\n");
    let mut c = relay.connect();
    assert!(c.reply().starts_with("220"));
    c.expect("MAIL FROM:<a@b>", "503 5.5.1");
    c.expect("FOO", "500 5.5.2");
    c.expect("EHLO x", "250");
    c.expect("RCPT TO:<a@b>", "503 5.5.1");
    c.expect("MAIL FROM:<a@b> FOO=BAR", "555 5.5.4");
    c.expect("MAIL FROM:<a@b> SIZE=65537", "552 5.3.4");
    c.expect("MAIL FROM:<a@b> SIZE=99999999999999999999", "552 5.3.4");
    c.expect("MAIL FROM:<a@b> SIZE=65536", "250");
    c.expect("RSET", "250");
    c.expect(&format!("MAIL FROM:<{}@b>", "x".repeat(65)), "5");
    c.expect("MAIL FROM:<>", "250 2.1.0");
    c.expect("RCPT TO:<postmaster>", "250");
    c.expect("RCPT TO:<\"quoted local\"@example.com>", "250");
    c.expect("RCPT TO:<3@x.test>", "250");
    c.expect("RCPT TO:<4@x.test>", "452 4.5.3");
    c.expect("VRFY root", "252");
    c.expect("NOOP", "250");
    c.expect("RSET", "250");
    c.expect("DATA", "503 5.5.1");
    // A line over 512 octets: 500 5.5.2, and the session stays in sync.
    c.expect(&format!("NOOP {}", "x".repeat(600)), "500 5.5.2");
    c.expect("NOOP", "250");
    c.expect("QUIT", "221");
}

#[test]
fn oversized_data_is_read_to_its_end_and_refused() {
    let relay = Relay::start("[server]\nmax_message_size = 64K\n");
    let mut c = relay.connect();
    c.greet();
    let big = "y".repeat(70);
    let body: String = (0..1000).map(|_| format!("{big}\r\n")).collect();
    let r = c.send_message("a@b.test", &["c@d.test"], &body);
    assert!(r.starts_with("552 5.3.4"), "{r}");
    // still in sync after the refused message
    c.expect("NOOP", "250");
    assert!(relay.queue_ids().is_empty());
}

#[test]
fn endless_data_is_cut_off_with_552_after_a_bounded_discard() {
    // A client that ignores SIZE and never ends its DATA must not hold a worker for ever.
    let relay = Relay::start("[server]\nmax_message_size = 64K\n");
    let mut c = relay.connect();
    c.greet();
    c.expect("MAIL FROM:<a@b.test>", "250");
    c.expect("RCPT TO:<c@d.test>", "250");
    c.expect("DATA", "354");
    let mut w = c.stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let line = format!("{}\r\n", "z".repeat(1000));
        for _ in 0..1_000_000 {
            if w.write_all(line.as_bytes()).is_err() {
                return;
            }
        }
    });
    let r = c.reply();
    assert!(r.starts_with("552 5.3.4") && r.contains("closing"), "{r}");
    assert!(c.wait_closed(), "the relay closes the connection");
    writer.join().unwrap();
    assert!(relay.queue_ids().is_empty());
    // Where it stopped reading: 64 MiB past the limit (4 x 64 KiB is less), within a read's
    // worth.
    relay.wait_log(" past the size limit; message discarded, closing");
    let log = relay.log_text();
    let at: u64 = log
        .split("DATA still going at ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("the byte count in the log");
    let stop = 65536 + (64 << 20);
    assert!(at > stop && at < stop + 65536, "{at}");
}

#[test]
fn relay_refused_for_clients_outside_relay_networks() {
    let relay = Relay::start("[server]\nlisten = 127.0.0.1:0\nrelay_networks = 127.0.0.1/32\n");
    let port = relay.addr().port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Connect from 127.0.0.2 (a "LAN device") to the relay on 127.0.0.1.
    let stream = connect_bound("127.0.0.2", addr);
    let mut c = Client::from_stream(stream);
    c.greet();
    c.expect("MAIL FROM:<a@b.test>", "250");
    c.expect("RCPT TO:<x@elsewhere.test>", "550 5.7.1");
    c.expect("DATA", "503 5.5.1");
    c.expect("QUIT", "221");
    assert!(relay.queue_ids().is_empty());
    // The same relay serves 127.0.0.1.
    let mut ok = relay.connect();
    ok.greet();
    queued_id(&ok.send_message("a@b.test", &["x@elsewhere.test"], "hi"));
}

#[test]
fn idle_client_times_out_with_421() {
    let relay = Relay::start("[server]\ncommand_timeout = 1s\n");
    let mut c = relay.connect();
    assert!(c.reply().starts_with("220"));
    c.expect("EHLO x", "250");
    let r = c.reply(); // wait: the server speaks first after the timeout
    assert!(r.starts_with("421 4.4.2"), "{r}");
    assert!(c.wait_closed());
}

#[test]
fn third_client_with_two_workers_is_served_or_gets_421_never_a_hang() {
    let relay = Relay::start("[server]\nworkers = 2\ncommand_timeout = 60s\n");
    let mut a = relay.connect();
    let mut b = relay.connect();
    assert!(a.reply().starts_with("220"));
    assert!(b.reply().starts_with("220"));
    // Both workers hold idle sessions: one of them is ended for the newcomer.
    let mut c = relay.connect();
    let r = c.reply();
    assert!(r.starts_with("220"), "{r}");
    let mut told: Vec<Client> = Vec::new();
    let mut kept: Vec<Client> = Vec::new();
    for mut x in [a, b] {
        x.send_raw(b"NOOP\r\n");
        let r = x.reply();
        if r.starts_with("421 4.3.2") {
            assert!(x.wait_closed());
            told.push(x);
        } else {
            assert!(r.starts_with("250"), "{r}");
            kept.push(x);
        }
    }
    assert_eq!(
        (told.len(), kept.len()),
        (1, 1),
        "exactly one idle session was evicted"
    );
    // Sessions inside a transaction are never evicted: with both workers in one, a fourth
    // client gets 421 4.3.2 within the wait bound instead of hanging.
    let mut kept = kept.pop().unwrap();
    for x in [&mut kept, &mut c] {
        x.expect("EHLO x", "250");
        x.expect("MAIL FROM:<a@example.com>", "250");
    }
    let started = Instant::now();
    let mut d = relay.connect();
    let r = d.reply();
    assert!(r.starts_with("421 4.3.2"), "{r}");
    assert!(started.elapsed() < DEADLINE);
    // When a worker frees up, new clients are served again.
    kept.expect("QUIT", "221");
    let mut e = relay.connect();
    assert!(e.reply().starts_with("220"));
    c.expect("QUIT", "221");
}

#[test]
fn http_request_is_answered_and_closed() {
    let relay = Relay::start("");
    let mut c = relay.connect();
    assert!(c.reply().starts_with("220"));
    let r = c.cmd("GET / HTTP/1.1");
    assert!(r.starts_with("5"), "{r}");
    assert!(c.wait_closed());
}

#[test]
fn smuggled_end_of_data_does_not_split_the_message() {
    let relay = Relay::start("");
    let mut c = relay.connect();
    c.greet();
    c.expect("MAIL FROM:<a@b.test>", "250");
    c.expect("RCPT TO:<c@d.test>", "250");
    c.expect("DATA", "354");
    // Each of these "ends" is not CRLF.CRLF: none may end the data or start a
    // second transaction.
    c.send_raw(
        b"Subject: s\r\n\r\nx\n.\nMAIL FROM:<evil@x>\r\nRCPT TO:<v@x>\r\nDATA\r\nbad\r\n.\rMAIL FROM:<e2@x>\n.\r\nz\r.\r\n",
    );
    c.send_raw(b"\r\n.\r\n");
    let id = queued_id(&c.reply());
    c.expect("QUIT", "221");
    assert_eq!(relay.queue_ids(), vec![id.clone()]);
    let shown = relay.cmd(&["queue", "show", &id]);
    let stored = shown.stdout;
    // No bare CR or LF in the stored message part.
    let msg_start = stored
        .windows(11)
        .position(|w| w == b"Received: f")
        .unwrap();
    let msg = &stored[msg_start..];
    for (i, &b) in msg.iter().enumerate() {
        if b == b'\n' {
            assert_eq!(msg[i - 1], b'\r', "bare LF stored at {i}");
        }
        if b == b'\r' {
            assert_eq!(msg.get(i + 1), Some(&b'\n'), "bare CR stored at {i}");
        }
    }
    let text = String::from_utf8_lossy(msg);
    assert!(
        text.contains("MAIL FROM:<evil@x>"),
        "the smuggled lines are message content: {text}"
    );
}

#[test]
fn mail_loop_is_refused() {
    let relay = Relay::start("");
    let mut c = relay.connect();
    c.greet();
    let hops: String = (0..60)
        .map(|i| format!("Received: from hop{i} by x; Thu, 1 Jan 1970 00:00:00 +0000\r\n"))
        .collect();
    let r = c.send_message(
        "a@b.test",
        &["c@d.test"],
        &format!("{hops}Subject: loop\r\n\r\nbody"),
    );
    assert!(r.starts_with("554 5.4.6"), "{r}");
    assert!(relay.queue_ids().is_empty());
}

#[test]
fn too_many_errors_close_the_session() {
    let relay = Relay::start("");
    let mut c = relay.connect();
    assert!(c.reply().starts_with("220"));
    let mut last = String::new();
    for _ in 0..20 {
        last = c.cmd("BOGUS");
        if last.starts_with("421") {
            break;
        }
    }
    assert!(last.starts_with("421"), "{last}");
    assert!(c.wait_closed());
}

#[test]
fn sigterm_during_data_leaves_nothing_half_queued() {
    let mut relay = Relay::start("");
    let mut done = relay.connect();
    done.greet();
    let id = queued_id(&done.send_message("a@b.test", &["c@d.test"], "complete"));
    let mut c = relay.connect();
    c.greet();
    c.expect("MAIL FROM:<a@b.test>", "250");
    c.expect("RCPT TO:<c@d.test>", "250");
    c.expect("DATA", "354");
    c.send_raw(b"Subject: half\r\n\r\nthis message never ends");
    relay.signal("TERM");
    let st = relay.wait_exit();
    assert!(st.success(), "exit status {st}");
    assert_eq!(relay.queue_ids(), vec![id]);
    let tmp: Vec<_> = std::fs::read_dir(relay.spool().join("tmp"))
        .unwrap()
        .collect();
    assert!(tmp.is_empty(), "tmp/ has leftovers: {tmp:?}");
}

#[test]
fn kill_9_loses_no_acknowledged_message() {
    let mut relay = Relay::start("[server]\nworkers = 8\n");
    let addr = relay.addr();
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut threads = Vec::new();
    for t in 0..4 {
        let acked = std::sync::Arc::clone(&acked);
        threads.push(std::thread::spawn(move || {
            let Ok(stream) = TcpStream::connect(addr) else {
                return;
            };
            let mut c = Client::from_stream(stream);
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                c.greet();
                for i in 0..50 {
                    let r = c.send_message(
                        "a@b.test",
                        &["c@d.test"],
                        &message(&format!("t{t} m{i}"), "body"),
                    );
                    acked.lock().unwrap().push(queued_id(&r));
                }
            }));
        }));
    }
    wait_for("some messages acknowledged", || {
        acked.lock().unwrap().len() >= 40
    });
    relay.kill9();
    for t in threads {
        let _ = t.join();
    }
    let acked = acked.lock().unwrap().clone();
    relay.spawn();
    let listed = relay.queue_ids();
    for id in &acked {
        assert!(listed.contains(id), "acknowledged {id} lost after kill -9");
    }
    // Everything listed is a whole message: show parses each one.
    for id in &listed {
        let out = relay.cmd(&["queue", "show", id]);
        assert!(out.status.success(), "{id} unreadable");
    }
    assert!(
        std::fs::read_dir(relay.spool().join("corrupt"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0
    );
}

#[test]
fn queue_show_and_delete_refuse_bad_ids() {
    let relay = Relay::start("");
    let mut c = relay.connect();
    c.greet();
    let id = queued_id(&c.send_message("a@b.test", &["c@d.test"], "x"));
    for bad in ["../../etc/passwd", "/etc/passwd", "nonexistent0000"] {
        assert_eq!(
            relay.cmd(&["queue", "show", bad]).status.code(),
            Some(1),
            "{bad}"
        );
        assert_eq!(
            relay.cmd(&["queue", "delete", bad]).status.code(),
            Some(1),
            "{bad}"
        );
    }
    assert_eq!(relay.cmd(&["queue", "delete", &id]).status.code(), Some(0));
    assert!(relay.queue_ids().is_empty());
    assert_eq!(relay.cmd(&["queue", "delete", &id]).status.code(), Some(1));
}

#[test]
fn bad_config_stops_start_up_naming_section_and_key() {
    let dir = TempDir::new("badcfg");
    let cfg = dir.path().join("bad.ini");
    std::fs::write(
        &cfg,
        "[server]\nworkers = many\nbogus = 1\n[queue]\ndir = /tmp/x\n",
    )
    .unwrap();
    // Both exit 1 (interface.md) and name every problem.
    for (args, code) in [(vec!["serve"], 1), (vec!["check"], 1)] {
        let out = std::process::Command::new(bin())
            .arg("-c")
            .arg(&cfg)
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(code), "{args:?}");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(all.contains("[server] workers:"), "{all}");
        assert!(all.contains("[server] bogus:"), "{all}");
    }
}

#[test]
fn port_in_use_is_a_clear_start_up_error() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let dir = TempDir::new("busy");
    let cfg = dir.path().join("p.ini");
    std::fs::write(
        &cfg,
        merge_ini(
            &base_ini(&dir.path().join("spool")),
            &format!("[server]\nlisten = 127.0.0.1:{port}\n"),
        ),
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .arg("-c")
        .arg(&cfg)
        .arg("serve")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
}

#[test]
fn version_and_help() {
    let v = std::process::Command::new(bin())
        .arg("--version")
        .output()
        .unwrap();
    assert!(v.status.success() && String::from_utf8_lossy(&v.stdout).starts_with("picorelay "));
    let h = std::process::Command::new(bin())
        .arg("--help")
        .output()
        .unwrap();
    assert!(h.status.success() && String::from_utf8_lossy(&h.stdout).contains("queue show ID"));
}

#[test]
fn ids_survive_restart_and_tmp_is_clean() {
    let mut relay = Relay::start("");
    let mut c = relay.connect();
    c.greet();
    let id = queued_id(&c.send_message("a@b.test", &["c@d.test"], "persist"));
    drop(c);
    relay.signal("TERM");
    assert!(relay.wait_exit().success());
    relay.spawn();
    assert_eq!(relay.queue_ids(), vec![id]);
}
