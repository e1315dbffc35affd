//! Client abuse (issue 7, item 2), black-box: slow clients holding every worker, one address
//! opening too many sessions, a burst of 1000 connects, 10 MB without a newline, NUL and 8-bit
//! bytes in commands, an over-long AUTH payload, garbage instead of a TLS ClientHello, and a
//! client that vanishes mid-DATA. After each, the relay still serves a normal transaction.
//!
//! 127.0.0.2 and 127.0.0.3 play network clients; 127.0.0.1 is a local client, which
//! `max_connections_per_ip` exempts by design (interface.md: local programs such as cron jobs
//! and monitoring may open many sessions at once; the worker pool still bounds them).

mod common;

use common::certs::{certs, passwd};
use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// assert_serves runs one whole transaction from 127.0.0.1 and checks it is queued.
fn assert_serves(relay: &Relay) {
    let mut c = relay.connect();
    c.greet();
    let id = queued_id(&c.send_message("a@b.test", &["c@d.test"], &message("still serving", "ok")));
    c.expect("QUIT", "221");
    assert!(relay.queue_ids().contains(&id));
    assert!(
        !relay.log_text().contains("panicked"),
        "{}",
        relay.log_text()
    );
}

/// first_line reads the server's first line within `wait` (None on EOF, reset or timeout).
fn first_line(s: &TcpStream, wait: Duration) -> Option<String> {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut line = String::new();
    match BufReader::new(s).read_line(&mut line) {
        Ok(n) if n > 0 => Some(line.trim_end().to_string()),
        _ => None,
    }
}

/// vm_rss_kib is the resident set of a process, from /proc.
fn vm_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// The relay's memory bound in these tests: the whole process, debug build, all threads.
const RSS_LIMIT_KIB: u64 = 64 * 1024;

#[test]
fn slow_clients_holding_every_worker_leave_others_a_prompt_answer() {
    let relay = Relay::start("[server]\nworkers = 2\ncommand_timeout = 60s\n");
    // One idle client and one that trickles a byte every 200 ms (never a whole line): both
    // would hold a worker for as long as command_timeout allows.
    let mut idle = relay.connect();
    assert!(idle.reply().starts_with("220"));
    let mut drip = relay.connect();
    assert!(drip.reply().starts_with("220"));
    let stop = Arc::new(AtomicBool::new(false));
    let dripper = {
        let (stop, mut s) = (Arc::clone(&stop), drip.stream.try_clone().unwrap());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if s.write_all(b"x").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    // Six more: two wait for a worker, four find the wait queue full (421 at once). The two
    // that wait are served: the idle and the trickling session are evicted for them.
    let started = Instant::now();
    let others: Vec<TcpStream> = (0..6)
        .map(|_| TcpStream::connect(relay.addr()).unwrap())
        .collect();
    let mut served = 0;
    for s in &others {
        let line = first_line(s, Duration::from_secs(15));
        let line = line.unwrap_or_else(|| panic!("no reply after {:?}", started.elapsed()));
        if line.starts_with("220") {
            served += 1;
        } else {
            assert!(line.starts_with("421 4.3.2"), "{line}");
        }
    }
    assert_eq!(
        served, 2,
        "the two waiting clients got the evicted sessions' workers"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answers took {:?}",
        started.elapsed()
    );
    for c in [&mut idle, &mut drip] {
        let r = c.read_reply();
        assert!(r.last().unwrap().starts_with("421 4.3.2"), "{r:?}");
        assert!(c.wait_closed());
    }
    stop.store(true, Ordering::SeqCst);
    dripper.join().unwrap();
    drop(others);
    assert_serves(&relay);
}

#[test]
fn max_connections_per_ip_caps_one_network_address_not_local_clients() {
    let relay = Relay::start("[server]\nworkers = 8\nmax_connections_per_ip = 2\n");
    let addr = relay.addr();
    let lan = |ip: &str| connect_bound(ip, addr);
    let a1 = lan("127.0.0.2");
    let a2 = lan("127.0.0.2");
    for s in [&a1, &a2] {
        assert!(first_line(s, DEADLINE).unwrap().starts_with("220"));
    }
    let a3 = lan("127.0.0.2");
    let r = first_line(&a3, DEADLINE).unwrap();
    assert!(r.starts_with("421 4.7.0"), "{r}");
    relay.wait_log("connection from 127.0.0.2: refused: too many connections");
    // Another address is not affected.
    let b1 = lan("127.0.0.3");
    assert!(first_line(&b1, DEADLINE).unwrap().starts_with("220"));
    // Local clients are exempt: four sessions from 127.0.0.1 at once.
    let locals: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
    for s in &locals {
        assert!(first_line(s, DEADLINE).unwrap().starts_with("220"));
    }
    // A freed slot is given back: 127.0.0.2 may connect again once a session ends.
    drop(a1);
    let mut again = None;
    wait_for("a slot for 127.0.0.2", || {
        let s = lan("127.0.0.2");
        let ok = first_line(&s, DEADLINE).is_some_and(|l| l.starts_with("220"));
        if ok {
            again = Some(s);
        }
        ok
    });
    let mut c = Client::from_stream(again.unwrap());
    c.expect("EHLO lan.test", "250");
    queued_id(&c.send_message("a@b.test", &["c@d.test"], "from the LAN"));
    c.expect("QUIT", "221");
    drop((a2, b1, locals));
    assert_serves(&relay);
}

#[test]
fn burst_of_1000_connects_each_get_a_banner_or_421() {
    let relay = Relay::start("");
    let addr = relay.addr();
    let threads: Vec<_> = (0..10)
        .map(|_| {
            std::thread::spawn(move || {
                let conns: Vec<TcpStream> = (0..100)
                    .map(|_| TcpStream::connect_timeout(&addr, DEADLINE).expect("connect"))
                    .collect();
                let (mut banners, mut busy) = (0, 0);
                for mut s in conns {
                    match first_line(&s, Duration::from_secs(20)).as_deref() {
                        Some(l) if l.starts_with("220") => {
                            banners += 1;
                            let _ = s.write_all(b"QUIT\r\n");
                        }
                        Some(l) if l.starts_with("421") => busy += 1,
                        other => panic!("neither a banner nor 421: {other:?}"),
                    }
                }
                (banners, busy)
            })
        })
        .collect();
    let (mut banners, mut busy) = (0, 0);
    for t in threads {
        let (b, r) = t.join().unwrap();
        banners += b;
        busy += r;
    }
    eprintln!("1000 connects: {banners} banners, {busy} x 421");
    assert_eq!(banners + busy, 1000);
    assert!(banners >= 4, "banners {banners}, 421 {busy}");
    let rss = vm_rss_kib(relay.pid());
    eprintln!("relay VmRSS {rss} KiB");
    assert!(rss < RSS_LIMIT_KIB, "relay VmRSS {rss} KiB");
    assert_serves(&relay);
    // A flood of refusals is not a flood of log lines: at most 10 a second are
    // written one by one, the rest summed up once the second is over.
    if busy > 100 {
        let refused_lines = relay.log_text().matches(": refused: ").count();
        assert!(
            refused_lines < busy / 2,
            "{refused_lines} refusal lines for {busy} refusals"
        );
        let mut c = relay.connect();
        c.greet();
        c.expect("QUIT", "221");
        relay.wait_log("not logged one by one");
    }
}

/// ten_mb sends 10 MiB of 'A' (no line end) from another thread, ignoring write errors (the
/// relay hangs up long before the end).
fn ten_mb(s: &TcpStream) -> std::thread::JoinHandle<usize> {
    let mut w = s.try_clone().unwrap();
    std::thread::spawn(move || {
        let chunk = vec![b'A'; 64 * 1024];
        let mut sent = 0;
        while sent < 10 << 20 {
            match w.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        sent
    })
}

#[test]
fn ten_megabytes_without_a_newline_are_cut_off_with_a_reply() {
    let relay = Relay::start("");
    let s = TcpStream::connect(relay.addr()).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut banner = String::new();
    r.read_line(&mut banner).unwrap();
    assert!(banner.starts_with("220"), "{banner}");
    let writer = ten_mb(&s);
    // Every reply up to the close: 500 5.5.2 for the long line, then 421 when it never ends.
    let mut replies = Vec::new();
    loop {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => replies.push(line.trim_end().to_string()),
        }
    }
    let sent = writer.join().unwrap();
    assert!(
        replies.first().is_some_and(|l| l.starts_with("500 5.5.2")),
        "{replies:?}"
    );
    assert!(
        replies.last().is_some_and(|l| l.starts_with("421")),
        "{replies:?}"
    );
    assert!(sent < 10 << 20, "the relay read all {sent} bytes");
    let rss = vm_rss_kib(relay.pid());
    eprintln!("relay VmRSS {rss} KiB");
    assert!(rss < RSS_LIMIT_KIB, "relay VmRSS {rss} KiB");
    assert_serves(&relay);
}

#[test]
fn ten_megabyte_line_inside_data_is_refused_with_memory_bounded() {
    let relay = Relay::start("[server]\nmax_message_size = 1M\n");
    let mut c = relay.connect();
    c.greet();
    c.expect("MAIL FROM:<a@b.test>", "250");
    c.expect("RCPT TO:<c@d.test>", "250");
    c.expect("DATA", "354");
    let sent = ten_mb(&c.stream).join().unwrap();
    assert_eq!(sent, 10 << 20);
    c.send_raw(b"\r\n.\r\n");
    let r = c.reply();
    assert!(r.starts_with("552 5.3.4"), "{r}");
    c.expect("NOOP", "250");
    let rss = vm_rss_kib(relay.pid());
    eprintln!("relay VmRSS {rss} KiB");
    assert!(rss < RSS_LIMIT_KIB, "relay VmRSS {rss} KiB");
    assert!(relay.queue_ids().is_empty());
    assert_serves(&relay);
}

#[test]
fn nul_and_8bit_bytes_in_commands_get_5xx() {
    let relay = Relay::start("");
    let mut c = relay.connect();
    assert!(c.reply().starts_with("220"));
    let bad: &[&[u8]] = &[
        b"NO\0OP",
        b"EHLO a\0b.test",
        b"\x80\x81\x82\xff",
        b"HELO \xff\xfe.test",
    ];
    for line in bad {
        c.send_raw(&[line, &b"\r\n"[..]].concat());
        let r = c.reply();
        assert!(r.starts_with('5'), "{line:?}: {r}");
    }
    c.expect("EHLO client.test", "250");
    let bad: &[&[u8]] = &[
        b"MAIL FROM:<a\0b@x.test>",
        b"MAIL FROM:<\xff\xfe@x.test>",
        // Valid UTF-8 but no SMTPUTF8 parameter (RFC 6531 3.4).
        b"MAIL FROM:<\xc3\xa9t\xc3\xa9@x.test>",
        b"VRFY \x00",
    ];
    for line in bad {
        c.send_raw(&[line, &b"\r\n"[..]].concat());
        let r = c.reply();
        assert!(r.starts_with('5'), "{line:?}: {r}");
    }
    c.expect("MAIL FROM:<a@b.test>", "250");
    c.send_raw(b"RCPT TO:<c\0@d.test>\r\n");
    let r = c.reply();
    assert!(r.starts_with('5'), "{r}");
    c.expect("RCPT TO:<c@d.test>", "250");
    c.expect("DATA", "354");
    // 8-bit and NUL bytes inside DATA are message content, not commands.
    c.send_raw(b"Subject: bytes\r\n\r\n\xff\x00\x80\r\n.\r\n");
    queued_id(&c.reply());
    c.expect("QUIT", "221");
    assert_serves(&relay);
}

#[test]
fn over_long_auth_payload_gets_500_and_the_session_stays_in_sync() {
    let relay = Relay::start(&format!("[users]\nalice = {}\n", passwd("6", "secret")));
    let mut c = relay.connect();
    let ehlo = c.greet();
    assert!(ehlo.iter().any(|l| l.contains("AUTH")), "{ehlo:?}");
    // RFC 4954 4: 12288 octets, CRLF included. "AUTH PLAIN " is 11, so 12275 fit.
    let fits = "A".repeat(12288 - 2 - 11);
    let r = c.cmd(&format!("AUTH PLAIN {fits}"));
    assert!(!r.starts_with("500"), "at the limit: {r}");
    let r = c.cmd(&format!("AUTH PLAIN {fits}A"));
    assert!(r.starts_with("500 5.5.2"), "one over: {r}");
    c.expect("NOOP", "250");
    // The same as a response to the 334 challenge.
    c.expect("AUTH PLAIN", "334");
    let r = c.cmd(&"QUFB".repeat(13000 / 4));
    assert!(r.starts_with("500 5.5.2"), "{r}");
    c.expect("NOOP", "250");
    // Far too long (past the skip limit): closed with a reply, never echoed to the log. The
    // relay may hang up before the end, so the write goes on in another thread.
    let mut w = c.stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(format!("AUTH PLAIN {}\r\n", "QkJC".repeat(100_000)).as_bytes());
    });
    let r = c.reply();
    assert!(r.starts_with("500 5.5.2"), "{r}");
    writer.join().unwrap();
    let log = relay.log_text();
    assert!(!log.contains("AAAAAAAA") && !log.contains("QUFBQUFB") && !log.contains("QkJCQkJC"));
    assert_serves(&relay);
}

#[test]
fn garbage_instead_of_a_tls_client_hello_is_closed_and_logged() {
    let c = certs();
    let relay = Relay::start(&format!(
        "[server]\nlisten_tls = 127.0.0.1:0\ntls_cert = {}\ntls_key = {}\n",
        c.cert.display(),
        c.key.display()
    ));
    let tls_addr: SocketAddr = relay.addrs[1];
    let garbage: [&[u8]; 3] = [
        b"EHLO plaintext.test\r\n",
        // A TLS record header announcing a 64 KiB handshake, then nothing.
        &[0x16, 0x03, 0x01, 0xff, 0xff, 0x01],
        // Random-looking bytes.
        &[0x00, 0x13, 0x37, 0xde, 0xad, 0xbe, 0xef, 0x0d, 0x0a, 0xff],
    ];
    for g in garbage {
        let mut s = TcpStream::connect(tls_addr).unwrap();
        s.write_all(g).unwrap();
        let _ = s.shutdown(std::net::Shutdown::Write);
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut got = Vec::new();
        let started = Instant::now();
        let _ = s.read_to_end(&mut got); // EOF, or a reset after an alert
        assert!(started.elapsed() < DEADLINE);
        assert!(
            !got.starts_with(b"220"),
            "plaintext banner on the TLS port: {got:?}"
        );
    }
    wait_for("three failed handshakes in the log", || {
        relay.log_text().matches("TLS handshake failed").count() >= 3
    });
    assert_serves(&relay);
}

#[test]
fn client_vanishing_mid_data_queues_nothing() {
    let relay = Relay::start("");
    for reset in [false, true] {
        let mut c = relay.connect();
        c.greet();
        c.expect("MAIL FROM:<a@b.test>", "250");
        c.expect("RCPT TO:<c@d.test>", "250");
        c.expect("DATA", "354");
        c.send_raw(b"Subject: half\r\n\r\n");
        c.send_raw(&vec![b'x'; 200_000]);
        c.send_raw(b"\r\nand then the client is gone");
        if reset {
            set_linger_zero(&c.stream);
        }
        drop(c);
    }
    wait_for("two lost DATA sessions in the log", || {
        relay
            .log_text()
            .matches("connection lost during DATA, message discarded")
            .count()
            >= 2
    });
    assert!(relay.queue_ids().is_empty());
    let tmp: Vec<_> = std::fs::read_dir(relay.spool().join("tmp"))
        .unwrap()
        .collect();
    assert!(tmp.is_empty(), "tmp/ has leftovers: {tmp:?}");
    assert_serves(&relay);
}

/// set_linger_zero makes close() send a reset instead of a FIN (a client that crashed or
/// lost its link).
fn set_linger_zero(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a valid socket fd with a linger struct of the size we pass.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
}

/// start_with_fd_limit starts a relay through `sh -c 'ulimit ...; exec picorelay'`.
fn start_with_fd_limit(ulimit: &str, extra: &str) -> Relay {
    let dir = TempDir::new("fds");
    let ini = merge_ini(&base_ini(&dir.path().join("spool")), extra);
    let mut relay = Relay::prepared(dir, &ini);
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(format!("ulimit {ulimit}; exec \"$0\" -c \"$1\" serve"))
        .arg(bin())
        .arg(&relay.config);
    relay.spawn_with(cmd);
    relay
}

/// The "Max open files" soft and hard limits of a process.
fn fd_limits(pid: i32) -> (String, String) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("limits line")
        .to_string();
    let f: Vec<&str> = line.split_whitespace().collect();
    (f[3].to_string(), f[4].to_string())
}

#[test]
fn the_soft_open_files_limit_is_raised_to_the_hard_one() {
    let relay = start_with_fd_limit("-S -n 64", "");
    let (soft, hard) = fd_limits(relay.pid());
    assert_eq!(soft, hard, "soft limit raised");
    assert_ne!(soft, "64");
}

#[test]
fn out_of_descriptors_the_relay_waits_quietly_and_then_serves_the_waiting_device() {
    // Both limits low: nothing can raise them. 40 descriptors run out before 64 workers are
    // busy, so no connection waits for a worker (and gets "too busy" after a while): accept
    // itself fails.
    let relay = start_with_fd_limit("-n 40", "[server]\nworkers = 64\n");
    let failed = || {
        relay
            .log_text()
            .lines()
            .filter(|l| l.contains("accept failed"))
            .count()
    };
    let mut held = Vec::new();
    let start = Instant::now();
    while failed() == 0 {
        assert!(
            held.len() < 200,
            "accept never failed: {}",
            relay.log_text()
        );
        held.push(TcpStream::connect(relay.addr()).unwrap());
        // Give the relay a moment to accept before the next one (the check above is the wait).
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        relay.log_text().contains("out of file descriptors"),
        "{}",
        relay.log_text()
    );
    // Once a second at most: a spinning accept loop logs thousands of lines a second.
    let seconds = start.elapsed().as_secs() as usize;
    assert!(failed() <= seconds + 2, "{} lines in {seconds} s", failed());
    // The last connection waits in the backlog; once descriptors are freed it is served.
    let waiting = held.pop().unwrap();
    drop(held);
    let mut c = Client::from_stream(waiting);
    let ehlo = c.greet(); // the banner, then EHLO
    assert!(ehlo[0].starts_with("250"), "{ehlo:?}");
    c.expect("QUIT", "221");
}
