//! Black-box tests of forwarding: the real binary on loopback, a scripted smarthost behind it.

mod common;

use common::certs::certs;
use common::smarthost::{self_signed, Opts, Sink, Txn};
use common::*;
use std::collections::BTreeSet;
use std::io::BufRead;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The relay's sender threads (`SENDERS` in src/delivery.rs): each has its own connection.
const SENDERS: usize = 3;

/// ini points the relay at `hosts` with fast retries; `extra` may override anything.
fn ini(hosts: &str, extra: &str) -> String {
    let base = format!(
        "[smarthost]\nhost = {hosts}\ntls = none\n\n[queue]\nretry_min = 1s\nretry_max = 2s\n"
    );
    merge_ini(&base, extra)
}

fn wait_queue_empty(relay: &Relay) {
    wait_for("the queue to empty", || relay.queue_ids().is_empty());
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The parts of a multipart message as (header block, body), split on its boundary.
fn mime_parts(data: &str) -> Vec<(String, String)> {
    let b = data
        .split("boundary=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("boundary");
    let delim = format!("\r\n--{b}");
    let mut chunks: Vec<&str> = data.split(&delim).collect();
    assert_eq!(chunks.pop(), Some("--\r\n"), "closing delimiter");
    chunks[1..]
        .iter()
        .map(|c| {
            let (h, body) = c
                .trim_start_matches("\r\n")
                .split_once("\r\n\r\n")
                .expect("part header");
            (h.to_string(), body.to_string())
        })
        .collect()
}

#[test]
fn message_is_delivered_exactly_once() {
    let sink = Sink::start(Opts::plain());
    let relay = Relay::start(&ini(&sink.addr(), ""));
    let body = message("once", "first line\r\n..leading dot\r\n");
    let id = relay.submit(
        "alice@example.com",
        &["bob@example.org", "carol@example.net"],
        &body,
    );
    wait_queue_empty(&relay);
    relay.wait_log(&format!(
        "delivery {id}: sent to smarthost (250 2.0.0 Ok: queued as S1)"
    ));
    let txns = sink.txns();
    assert_eq!(txns.len(), 1, "{txns:?}");
    let t = &txns[0];
    assert_eq!(t.mail_from, "alice@example.com");
    assert_eq!(t.rcpts, ["bob@example.org", "carol@example.net"]);
    assert!(
        t.data.starts_with("Received: from client.test"),
        "{}",
        t.data
    );
    assert!(
        t.data
            .contains("Subject: once\r\n\r\nfirst line\r\n.leading dot\r\n"),
        "{}",
        t.data
    );
    assert!(t.params.contains("SIZE="), "{}", t.params);
}

#[test]
fn new_message_goes_out_without_waiting_for_a_rescan() {
    let sink = Sink::start(Opts::plain());
    let relay = Relay::start(&ini(&sink.addr(), ""));
    let id = relay.submit(
        "alice@example.com",
        &["bob@example.org"],
        &message("fast", "x"),
    );
    sink.wait_txns(1);
    // The commit hook woke the runner: the first attempt was for a notified message.
    relay.wait_log(&format!("delivery {id}: attempt 1 (notified)"));
    assert!(!relay
        .log_text()
        .contains(&format!("delivery {id}: found by rescan")));
}

#[test]
fn transient_4xx_is_retried_and_shown_in_queue_list() {
    let sink = Sink::start(Opts::plain());
    sink.rule("MAIL", "451 4.3.0 try again later");
    let relay = Relay::start(&ini(&sink.addr(), ""));
    let id = relay.submit(
        "alice@example.com",
        &["bob@example.org"],
        &message("retry", "x"),
    );
    wait_for("queue list to show the 451", || {
        let l = relay.queue_line(&id);
        l.contains("error=send: ")
            && l.contains("451 4.3.0 try again later")
            && !l.contains("attempts=0")
    });
    relay.wait_log(&format!("delivery {id}: deferred: send: "));
    sink.clear_rules();
    let txns = sink.wait_txns(1);
    assert_eq!(txns[0].rcpts, ["bob@example.org"]);
    wait_queue_empty(&relay);
    assert!(
        !relay.log_text().contains("bounced"),
        "a 4xx must not bounce"
    );
}

#[test]
fn connection_dropped_after_data_is_retried_not_lost() {
    let sink = Sink::start(Opts::plain());
    sink.rule_times("DOT", "DROP", 1);
    let relay = Relay::start(&ini(&sink.addr(), ""));
    let id = relay.submit(
        "alice@example.com",
        &["bob@example.org"],
        &message("drop", "x"),
    );
    relay.wait_log(&format!("delivery {id}: deferred: send: "));
    let txns = sink.wait_txns(1);
    assert_eq!(txns[0].rcpts, ["bob@example.org"]);
    wait_queue_empty(&relay);
    assert_eq!(sink.txns().len(), 1);
    assert!(
        sink.connections() >= 2,
        "a dropped connection is not reused"
    );
}

#[test]
fn partial_5xx_bounces_with_an_rfc3464_report() {
    let sink = Sink::start(Opts::plain());
    sink.rule("RCPT TO:<bad@example.org>", "550 5.1.1 no such user");
    let relay = Relay::start(&ini(&sink.addr(), ""));
    let id = relay.submit(
        "alice@example.com",
        &["good@example.org", "bad@example.org"],
        &message("partial", "x"),
    );
    let txns = sink.wait_txns(2);
    assert_eq!(
        (txns[0].mail_from.as_str(), txns[0].rcpts.clone()),
        ("alice@example.com", vec!["good@example.org".to_string()])
    );
    let b: &Txn = &txns[1];
    assert_eq!(b.mail_from, "", "a report goes from the null sender");
    assert_eq!(b.rcpts, ["alice@example.com"]);
    let d = &b.data;
    assert!(
        d.contains("From: Mail Delivery System <MAILER-DAEMON@relay.test>\r\n"),
        "{d}"
    );
    assert!(
        d.contains("Content-Type: multipart/report; report-type=delivery-status;"),
        "{d}"
    );
    let parts = mime_parts(d);
    assert_eq!(parts.len(), 3, "{d}");
    assert!(parts[0].0.contains("Content-Type: text/plain"));
    assert!(
        parts[0]
            .1
            .contains("<bad@example.org>: 550 5.1.1 no such user"),
        "{}",
        parts[0].1
    );
    assert!(!parts[0].1.contains("good@example.org"));
    assert!(parts[1].0.contains("Content-Type: message/delivery-status"));
    let status = &parts[1].1;
    for want in [
        "Reporting-MTA: dns; relay.test\r\n",
        "Arrival-Date: ",
        "\r\n\r\nFinal-Recipient: rfc822; bad@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n",
        "Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n",
    ] {
        assert!(status.contains(want), "{want:?} missing in {status}");
    }
    assert_eq!(status.matches("Final-Recipient:").count(), 1);
    assert!(parts[2].0.contains("Content-Type: text/rfc822-headers"));
    assert!(
        parts[2].1.contains("Subject: partial\r\n") && !parts[2].1.contains("\r\n\r\n"),
        "{}",
        parts[2].1
    );
    wait_queue_empty(&relay);
    let log = relay.log_text();
    assert!(
        log.contains(&format!(
            "delivery {id}: bounced <bad@example.org>: 550 5.1.1 no such user"
        )),
        "{log}"
    );
    assert!(log.contains(&format!("delivery {id}: report ")), "{log}");
}

#[test]
fn a_report_is_queued_even_when_the_spool_is_full() {
    // The spool's cap is for new mail: the report of a message that filled it must still go.
    let sink = Sink::start(Opts::plain());
    sink.rule("RCPT TO:<bad@", "550 5.1.1 no such user");
    let relay = Relay::start(&ini(&sink.addr(), "[queue]\nmax_size = 1M\n"));
    let body = "x".repeat(76) + "\r\n";
    let id = relay.submit(
        "alice@example.com",
        &["bad@example.org"],
        &message("full", &body.repeat(1_100_000 / body.len())),
    );
    let t = sink.wait_txns(1);
    assert_eq!(
        (t[0].mail_from.as_str(), t[0].rcpts.clone()),
        ("", vec!["alice@example.com".to_string()])
    );
    assert!(
        t[0].data
            .contains("<bad@example.org>: 550 5.1.1 no such user"),
        "{}",
        t[0].data
    );
    wait_queue_empty(&relay);
    let log = relay.log_text();
    assert!(log.contains(&format!("delivery {id}: report ")), "{log}");
    assert!(!log.contains("cannot queue the report"), "{log}");
}

#[test]
fn smtputf8_goes_only_where_the_message_needs_it() {
    // A smarthost without SMTPUTF8 (the sink's EHLO reply without it).
    let sink = Sink::start(Opts::plain());
    sink.rule("EHLO", "250-sink.test\n250-PIPELINING\n250 8BITMIME");
    let relay = Relay::start(&ini(&sink.addr(), ""));
    let mut c = relay.connect();
    c.greet();
    c.expect("EHLO dev.test", "250");
    let send = |c: &mut Client, tag: &str, subject: &str| -> String {
        c.expect("MAIL FROM:<alice@example.com> SMTPUTF8", "250");
        c.expect(&format!("RCPT TO:<{tag}@example.org>"), "250");
        c.expect("DATA", "354");
        c.send_raw(format!("Subject: {subject}\r\n\r\nbody\r\n.\r\n").as_bytes());
        queued_id(&c.reply())
    };
    // Declared, but ASCII from end to end: it goes, without the parameter.
    send(&mut c, "ascii", "plain");
    // UTF-8 in the header section: it cannot go to this smarthost, and says why.
    let utf8 = send(&mut c, "utf8", "caf\u{e9}");
    let t = sink.wait_txns(2);
    let ascii = t
        .iter()
        .find(|t| t.rcpts == ["ascii@example.org"])
        .expect("delivered");
    assert!(!ascii.params.contains("SMTPUTF8"), "{:?}", ascii.params);
    let report = t.iter().find(|t| t.mail_from.is_empty()).expect("a report");
    assert!(report.data.contains("utf8@example.org"), "{}", report.data);
    assert!(report.data.contains("needs SMTPUTF8"), "{}", report.data);
    wait_queue_empty(&relay);
    assert!(
        relay
            .log_text()
            .contains(&format!("delivery {utf8}: bounced <utf8@example.org>")),
        "{}",
        relay.log_text()
    );
}

#[test]
fn failure_of_a_null_sender_message_is_logged_and_dropped() {
    let sink = Sink::start(Opts::plain());
    sink.rule("RCPT", "550 5.1.1 no such user");
    let relay = Relay::start(&ini(&sink.addr(), ""));
    let id = relay.submit("", &["bad@example.org"], &message("dsn", "x"));
    relay.wait_log(&format!(
        "delivery {id}: no report sent (the message has the null sender <>)"
    ));
    wait_queue_empty(&relay);
    assert!(sink.txns().is_empty());
}

#[test]
fn lifetime_expiry_bounces_with_the_last_error() {
    let sink = Sink::start(Opts::plain());
    sink.rule("MAIL FROM:<alice@", "451 4.2.1 mailbox busy");
    let relay = Relay::start(&ini(
        &sink.addr(),
        "[queue]\nlifetime = 2s\nretry_max = 1s\n",
    ));
    let id = relay.submit(
        "alice@example.com",
        &["bob@example.org"],
        &message("old", "x"),
    );
    let txns = sink.wait_txns(1);
    let t = &txns[0];
    assert_eq!(
        (t.mail_from.as_str(), t.rcpts.clone()),
        ("", vec!["alice@example.com".to_string()])
    );
    assert!(
        t.data
            .contains("<bob@example.org>: gave up after 2 seconds: last error "),
        "{}",
        t.data
    );
    assert!(t.data.contains("451 4.2.1 mailbox busy"), "{}", t.data);
    assert!(
        t.data.contains("Action: failed\r\nStatus: 4.4.7\r\n"),
        "{}",
        t.data
    );
    wait_queue_empty(&relay);
    assert!(relay.log_text().contains(&format!(
        "delivery {id}: bounced <bob@example.org>: gave up after 2 seconds"
    )));
}

#[test]
fn login_failure_pauses_the_queue_with_one_login_per_pause() {
    let sink = Sink::start(Opts::plain().with_auth());
    sink.rule("AUTH", "535 5.7.8 authentication credentials invalid");
    let extra =
        "[smarthost]\nusername = relay@example.com\npassword = s3cret\n[queue]\nretry_max = 1s\n";
    let relay = Relay::start(&ini(&sink.addr(), extra));
    let ids: Vec<String> = (0..5)
        .map(|i| {
            relay.submit(
                "alice@example.com",
                &["bob@example.org"],
                &message(&format!("m{i}"), "x"),
            )
        })
        .collect();
    wait_for("three logins", || {
        sink.auth_attempts().iter().sum::<usize>() >= 3
    });
    let attempts = sink.auth_attempts();
    assert!(
        attempts.iter().all(|&n| n <= 1),
        "one AUTH per connection: {attempts:?}"
    );
    // Each login came after a pause (>= 0.8 s with retry_min = 1s), not one per message.
    let at = sink.accepted_at();
    for w in at.windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_millis(500),
            "logins in a burst: {:?}",
            w[1] - w[0]
        );
    }
    assert!(!sink.saw("MAIL"), "nothing may be sent without a login");
    let log = relay.log_text();
    assert_eq!(
        log.matches("delivery paused for").count(),
        1,
        "paused is logged once: {log}"
    );
    assert!(
        log.contains("535 5.7.8 authentication credentials invalid"),
        "{log}"
    );
    assert!(
        !log.contains("bounced"),
        "a login failure must not bounce: {log}"
    );
    assert_eq!(relay.queue_ids().len(), 5);
    assert!(
        relay.queue_line(&ids[0]).contains("535 5.7.8"),
        "{}",
        relay.queue_line(&ids[0])
    );

    // The password is fixed on the smarthost side: the next attempt resumes; the backlog goes
    // over at most one connection per sender, each logged in once.
    sink.clear_rules();
    let txns = sink.wait_txns(5);
    relay.wait_log("delivery resumed");
    let conns: BTreeSet<usize> = txns.iter().map(|t| t.conn).collect();
    assert!(conns.len() <= SENDERS, "one login per sender: {conns:?}");
    let attempts = sink.auth_attempts();
    assert!(
        attempts.iter().all(|&n| n <= 1),
        "one AUTH per connection: {attempts:?}"
    );
    assert!(txns.iter().all(|t| t.auth == txns[0].auth));
    assert_eq!(
        txns[0].auth,
        Some(("relay@example.com".to_string(), "s3cret".to_string()))
    );
    wait_queue_empty(&relay);
}

#[test]
fn no_plaintext_when_starttls_is_missing() {
    let sink = Sink::start(Opts::plain().with_auth());
    let extra = "[smarthost]\ntls = starttls\nusername = relay@example.com\npassword = s3cret\n";
    let relay = Relay::start(&ini(&sink.addr(), extra));
    let id = relay.submit(
        "alice@example.com",
        &["bob@example.org"],
        &message("secret", "x"),
    );
    wait_for("queue list to name the missing STARTTLS", || {
        relay.queue_line(&id).contains("does not offer STARTTLS")
    });
    relay.wait_log("delivery paused for");
    assert!(sink.saw("EHLO"));
    assert!(
        !sink.saw("AUTH") && !sink.saw("MAIL"),
        "{:?}",
        sink.commands()
    );
}

/// A smarthost that offers STARTTLS but refuses it (454, or 502), or answers 220 and then
/// keeps talking in plaintext: never AUTH or MAIL without TLS, in delivery and in `probe`
/// (issue 7 security review, downgrade by a malicious smarthost).
#[test]
fn no_plaintext_when_starttls_is_refused_or_not_started() {
    for refusal in [
        "454 4.7.0 TLS not available due to temporary reason",
        "502 5.5.1 no",
        "220 2.0.0 go ahead && RAW 250 plaintext again\r\n",
    ] {
        let sink = Sink::start(Opts::starttls().with_auth());
        sink.rule("STARTTLS", refusal);
        let extra = format!(
            "[smarthost]\ntls = starttls\nca_file = {}\nusername = relay@example.com\npassword = s3cret\n",
            certs().ca.display()
        );
        let relay = Relay::start(&ini(&sink.addr(), &extra));
        let id = relay.submit(
            "alice@example.com",
            &["bob@example.org"],
            &message("secret", "x"),
        );
        wait_for("queue list to show the TLS failure", || {
            relay.queue_line(&id).contains("tls")
        });
        let out = relay.cmd(&["probe"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert_ne!(out.status.code(), Some(0), "{refusal}: {text}");
        assert!(!text.contains("C: AUTH"), "{refusal}: {text}");
        assert!(sink.saw("STARTTLS"), "{refusal}");
        assert!(
            !sink.saw("AUTH") && !sink.saw("MAIL") && !sink.saw("RCPT"),
            "{refusal}: {:?}",
            sink.commands()
        );
        assert!(sink.txns().is_empty());
        assert_eq!(relay.queue_ids(), vec![id]);
    }
}

#[test]
fn untrusted_certificate_keeps_the_message_queued() {
    let sink = Sink::start(Opts::starttls_self_signed());
    let relay = Relay::start(&ini(&sink.addr(), "[smarthost]\ntls = starttls\n"));
    let id = relay.submit(
        "alice@example.com",
        &["bob@example.org"],
        &message("pin", "x"),
    );
    wait_for("queue list to show the certificate error", || {
        let l = relay.queue_line(&id);
        l.contains("tls: ") && l.contains("certificate")
    });
    relay.wait_log("delivery paused for");
    assert!(sink.saw("STARTTLS"));
    assert!(!sink.saw("MAIL"), "{:?}", sink.commands());
    assert_eq!(relay.queue_ids(), vec![id]);
}

#[test]
fn pinned_fingerprint_accepts_a_self_signed_smarthost() {
    let sink = Sink::start(Opts::starttls_self_signed());
    let extra = format!(
        "[smarthost]\ntls = starttls\ntls_fingerprint = {}\n",
        self_signed().fingerprint
    );
    let relay = Relay::start(&ini(&sink.addr(), &extra));
    relay.submit(
        "alice@example.com",
        &["bob@example.org"],
        &message("pinned", "x"),
    );
    let txns = sink.wait_txns(1);
    assert!(txns[0].tls, "sent over TLS");
    wait_queue_empty(&relay);
}

#[test]
fn implicit_tls_with_ca_file_and_auth() {
    let sink = Sink::start(Opts::implicit_tls().with_auth());
    let extra = format!(
        "[smarthost]\ntls = tls\nca_file = {}\nusername = relay@example.com\npassword = s3cret\n",
        certs().ca.display()
    );
    let relay = Relay::start(&ini(&sink.addr(), &extra));
    relay.submit(
        "alice@example.com",
        &["bob@example.org"],
        &message("tls", "x"),
    );
    let txns = sink.wait_txns(1);
    assert!(txns[0].tls);
    assert_eq!(
        txns[0].auth,
        Some(("relay@example.com".to_string(), "s3cret".to_string()))
    );
}

#[test]
fn starttls_with_ca_file() {
    let sink = Sink::start(Opts::starttls());
    let extra = format!(
        "[smarthost]\ntls = starttls\nca_file = {}\n",
        certs().ca.display()
    );
    let relay = Relay::start(&ini(&sink.addr(), &extra));
    relay.submit(
        "alice@example.com",
        &["bob@example.org"],
        &message("starttls", "x"),
    );
    assert!(sink.wait_txns(1)[0].tls);
}

#[test]
fn fails_over_to_the_second_host() {
    let sink = Sink::start(Opts::plain());
    let hosts = format!("127.0.0.1:{}, {}", closed_port(), sink.addr());
    let relay = Relay::start(&ini(&hosts, ""));
    relay.submit(
        "alice@example.com",
        &["bob@example.org"],
        &message("failover", "x"),
    );
    sink.wait_txns(1);
    wait_queue_empty(&relay);
    assert!(!relay.log_text().contains("delivery paused"));
}

#[test]
fn backlog_of_50_goes_over_one_connection() {
    let sink = Sink::start(Opts::plain());
    sink.rule("GREETING", "421 4.3.2 not now");
    let relay = Relay::start(&ini(&sink.addr(), "[queue]\nretry_max = 1s\n"));
    let mut c = relay.connect();
    c.greet();
    for i in 0..50 {
        queued_id(&c.send_message(
            "alice@example.com",
            &["bob@example.org"],
            &message(&format!("n{i}"), "x"),
        ));
    }
    c.expect("QUIT", "221");
    relay.wait_log("delivery paused for");
    assert_eq!(relay.queue_ids().len(), 50);
    sink.clear_rules();
    let before = sink.connections();
    let txns = sink.wait_txns(50);
    let conns: BTreeSet<usize> = txns.iter().map(|t| t.conn).collect();
    assert!(
        conns.len() <= SENDERS,
        "one connection per sender for the backlog: {conns:?}"
    );
    assert!(
        conns.iter().all(|&c| c >= before),
        "{conns:?} after {before}"
    );
    let mut subjects: Vec<String> = txns
        .iter()
        .map(|t| {
            t.data
                .split("Subject: ")
                .nth(1)
                .unwrap()
                .split("\r\n")
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    subjects.sort();
    subjects.dedup();
    assert_eq!(subjects.len(), 50, "each message exactly once");
    wait_queue_empty(&relay);
    relay.wait_log("delivery resumed");
}

#[test]
fn aliases_and_both_rewrites_apply_when_forwarding() {
    let sink = Sink::start(Opts::plain());
    let extra = "[aliases]\nroot = admin@example.com\n* = catchall@example.com\n\
                 [rewrite]\nsender = nas@example.com\nfrom = NAS <nas@example.com>\n";
    let relay = Relay::start(&ini(&sink.addr(), extra));
    let body = "From: Alice Example\r\n <alice@example.com>\r\nTo: root\r\nSubject: rewrite\r\n\r\nFrom: not a header\r\nbody\r\n";
    let id = relay.submit(
        "alice@example.com",
        &[
            "root@relay.test",
            "backup@localhost",
            "bob@example.org",
            "ROOT@localhost",
        ],
        body,
    );
    let t = sink.wait_txns(1)[0].clone();
    assert_eq!(t.mail_from, "nas@example.com");
    assert_eq!(
        t.rcpts,
        [
            "admin@example.com",
            "catchall@example.com",
            "bob@example.org"
        ],
        "aliases, one RCPT per mailbox"
    );
    assert!(t.data.contains("\r\nFrom: NAS <nas@example.com>\r\nReply-To: Alice Example\r\n <alice@example.com>\r\nTo: root\r\n"), "{}", t.data);
    assert_eq!(t.data.matches("From: Alice").count(), 0, "{}", t.data);
    assert!(
        t.data
            .contains("Subject: rewrite\r\n\r\nFrom: not a header\r\nbody\r\n"),
        "{}",
        t.data
    );
    wait_queue_empty(&relay);
    relay.wait_log(&format!("delivery {id}: sent to smarthost"));
}

#[test]
fn queue_flush_retries_deferred_messages_now() {
    let sink = Sink::start(Opts::plain());
    sink.rule_times("MAIL", "451 4.3.0 later", 1);
    let relay = Relay::start(&ini(
        &sink.addr(),
        "[queue]\nretry_min = 1h\nretry_max = 1h\n",
    ));
    let id = relay.submit(
        "alice@example.com",
        &["bob@example.org"],
        &message("flush", "x"),
    );
    wait_for("the first attempt to fail", || {
        relay.queue_line(&id).contains("451 4.3.0 later")
    });
    assert!(
        relay.queue_line(&id).contains("attempts=1"),
        "{}",
        relay.queue_line(&id)
    );
    let out = relay.cmd(&["queue", "flush"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 deferred message"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    sink.wait_txns(1);
    wait_queue_empty(&relay);
    relay.wait_log("queue flush requested");
}

#[test]
fn probe_prints_a_masked_transcript_and_sends_a_test_message() {
    let sink = Sink::start(Opts::starttls().with_auth());
    let extra = format!(
        "[smarthost]\ntls = starttls\nca_file = {}\nusername = relay@example.com\npassword = s3cret\n",
        certs().ca.display()
    );
    let relay = Relay::start(&ini(&sink.addr(), &extra));
    let out = relay.cmd(&["probe"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("C: STARTTLS") && text.contains("C: AUTH PLAIN ********"),
        "{text}"
    );
    assert!(
        !text.contains("s3cret") && !text.contains("czNjcmV0"),
        "secret leaked: {text}"
    );
    assert!(text.contains("would take mail"), "{text}");

    let out = relay.cmd(&["probe", "--to", "bob@example.org"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    let t = sink.wait_txns(1)[0].clone();
    assert_eq!(t.rcpts, ["bob@example.org"]);
    assert!(
        t.data.contains("Subject: picorelay test message"),
        "{}",
        t.data
    );

    sink.rule("AUTH", "535 5.7.8 bad credentials");
    let out = relay.cmd(&["probe"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("535 5.7.8"));
}

/// The aiosmtpd smarthost (tests/aiosmtpd_sink.py), killed on drop.
struct Aiosmtpd(Child);

impl Drop for Aiosmtpd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn interop_with_aiosmtpd_starttls_and_auth() {
    let have = Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .output()
        .map(|o| o.status.success());
    if have.ok() != Some(true) {
        eprintln!("SKIPPED interop_with_aiosmtpd_starttls_and_auth: python3 with aiosmtpd is not installed (pip install aiosmtpd)");
        return;
    }
    let dir = TempDir::new("aiosmtpd");
    let out = dir.path().join("received.txt");
    let c = certs();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/aiosmtpd_sink.py");
    let mut child = Command::new("python3")
        .arg(script)
        .args([c.cert.as_os_str(), c.key.as_os_str()])
        .args(["relay@example.com", "s3cret"])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start python3");
    let stdout = child.stdout.take().unwrap();
    let server = Aiosmtpd(child);
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("aiosmtpd port: {line:?}"));
    let extra = format!(
        "[smarthost]\ntls = starttls\nca_file = {}\nusername = relay@example.com\npassword = s3cret\n",
        c.ca.display()
    );
    let relay = Relay::start(&ini(&format!("localhost:{port}"), &extra));
    let id = relay.submit(
        "alice@example.com",
        &["bob@example.org"],
        &message("interop", "hello\r\n..dot"),
    );
    wait_queue_empty(&relay);
    relay.wait_log(&format!("delivery {id}: sent to smarthost (250 "));
    let got = std::fs::read_to_string(&out).unwrap();
    assert!(got.contains("mail_from=alice@example.com"), "{got}");
    assert!(got.contains("rcpt=bob@example.org"), "{got}");
    assert!(
        got.contains("tls=yes") && got.contains("auth=relay@example.com"),
        "{got}"
    );
    assert!(
        got.contains("Subject: interop\r\n\r\nhello\r\n.dot"),
        "{got}"
    );
    drop(server);
}

#[test]
fn a_smarthost_offering_chunking_gets_bdat_with_the_same_outcomes() {
    // RFC 3030: one `BDAT n LAST` pipelined behind MAIL and RCPT, the message as stored (no
    // dot-stuffing); per-recipient refusals and the bounce work as with DATA.
    let sink = Sink::start(Opts {
        chunking: true,
        ..Opts::plain()
    });
    sink.rule("RCPT TO:<bad@example.org>", "550 5.1.1 no such user");
    let relay = Relay::start(&ini(&sink.addr(), ""));
    let id = relay.submit(
        "alice@example.com",
        &["good@example.org", "bad@example.org"],
        &message("chunked", "first line\r\n..leading dot\r\n"),
    );
    let txns = sink.wait_txns(2);
    let t = &txns[0];
    assert!(t.chunked, "BDAT, not DATA: {t:?}");
    assert_eq!(t.rcpts, ["good@example.org"]);
    assert!(
        t.data
            .contains("Subject: chunked\r\n\r\nfirst line\r\n.leading dot\r\n"),
        "the body arrives as stored, one dot: {}",
        t.data
    );
    assert!(
        sink.saw("BDAT") && !sink.saw("DATA"),
        "{:?}",
        sink.commands()
    );
    // The report for the refused recipient goes the same way.
    assert_eq!(txns[1].mail_from, "", "a report from the null sender");
    assert!(txns[1].chunked);
    wait_queue_empty(&relay);
    relay.wait_log(&format!(
        "delivery {id}: bounced <bad@example.org>: 550 5.1.1 no such user"
    ));
}

/// A delivered message's file is kept and overwritten by a later message (tmp/spare-ID, see
/// src/spool/spares.rs): longer and shorter messages in turn each go out exactly, nothing of an earlier
/// one with them, and `queue show` shows exactly the message too. With `reuse_files = no` nothing is kept.
#[test]
fn messages_written_over_delivered_ones_go_out_exactly() {
    let sink = Sink::start(Opts::plain());
    // `yes`: the machine's disk may be an ext4 without a journal, where `auto` leaves reuse off.
    let relay = Relay::start(&ini(
        &sink.addr(),
        "[log]\nlevel = debug\n[queue]\nreuse_files = yes\n",
    ));
    let sizes = [9000, 200, 5000, 10, 12000, 300, 40];
    for (i, n) in sizes.iter().enumerate() {
        let letter = char::from(b'a' + i as u8).to_string();
        // send_message ends the message with CRLF . CRLF: the message's last line is "end {i}\r\n".
        let msg = message(
            &format!("m{i}"),
            &format!("{}\r\nend {i}", letter.repeat(*n)),
        );
        let id = relay.submit("alice@example.com", &["bob@example.org"], &msg);
        let txns = sink.wait_txns(i + 1);
        let data = &txns[i].data;
        let tail = &data[data.len().saturating_sub(100)..];
        assert!(
            data.ends_with(&format!("{msg}\r\n")),
            "message {i} ({n} bytes) went out ending with {tail:?}"
        );
        assert_eq!(data.matches("Subject:").count(), 1, "{tail:?}");
        wait_for("the delivered message to leave the queue", || {
            !relay.spool().join("queue").join(&id).exists()
        });
    }
    let log = relay.log_text();
    let reused = log.lines().filter(|l| l.contains(" overwrites ")).count();
    assert!(
        reused >= 2,
        "no message overwrote a delivered one's file:\n{log}"
    );

    // Held in the queue, a message in a reused file shows exactly.
    sink.rule("MAIL", "451 4.3.0 try again later");
    let msg = message("held", "short");
    let id = relay.submit("alice@example.com", &["bob@example.org"], &msg);
    relay.wait_log(&format!("delivery {id}: deferred"));
    let out = relay.cmd(&["queue", "show", &id]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.ends_with(&format!("{msg}\r\n")), "{shown:?}");
}

#[test]
fn reuse_files_no_keeps_no_delivered_file() {
    let sink = Sink::start(Opts::plain());
    let relay = Relay::start(&ini(&sink.addr(), "[queue]\nreuse_files = no\n"));
    for i in 0..3 {
        relay.submit(
            "alice@example.com",
            &["bob@example.org"],
            &message(&format!("m{i}"), "x"),
        );
        sink.wait_txns(i + 1);
    }
    wait_queue_empty(&relay);
    wait_for("the delivered files to be removed", || {
        std::fs::read_dir(relay.spool().join("tmp"))
            .unwrap()
            .count()
            == 0
    });
}

#[test]
fn a_state_the_spool_cannot_record_is_kept_and_no_recipient_gets_two_copies() {
    // Regression (review D1): with the disk full, the rewrite of a message's state failed and
    // only a log line said so: every retry sent the message again to the recipients the
    // smarthost had accepted, and the backoff stayed at retry_min.
    // The message's final reply waits, so tmp/ is gone before the first attempt settles.
    let sink = Sink::start(Opts::plain().latency(Duration::from_millis(1500)));
    sink.rule("RCPT TO:<carol", "451 4.2.0 mailbox busy");
    let relay = Relay::start(&ini(&sink.addr(), ""));
    let id = relay.submit(
        "alice@example.com",
        &["bob@example.org", "carol@example.net"],
        &message("full", "x"),
    );
    // A rewrite writes its new copy under tmp/: a file in its place makes every rewrite fail,
    // as a full disk does, and nothing else the relay does here needs tmp/.
    let tmp = relay.spool().join("tmp");
    let away = relay.spool().join("tmp-away");
    std::fs::rename(&tmp, &away).unwrap();
    std::fs::write(&tmp, "not a folder").unwrap();
    let not_recorded = format!("delivery {id}: cannot record the attempt");
    wait_for("three attempts the spool could not record", || {
        relay.log_text().matches(&not_recorded).count() >= 3
    });
    let copies = |rcpt: &str| {
        sink.txns()
            .iter()
            .filter(|t| t.rcpts.iter().any(|r| r == rcpt))
            .count()
    };
    assert_eq!(copies("bob@example.org"), 1, "{:?}", sink.txns());
    assert_eq!(copies("carol@example.net"), 0);
    relay.wait_log("kept in memory; retried with the next attempt");

    // Room again, and the 451 clears: carol gets her copy, bob no other, the queue empties.
    std::fs::remove_file(&tmp).unwrap();
    std::fs::rename(&away, &tmp).unwrap();
    sink.clear_rules();
    wait_queue_empty(&relay);
    assert_eq!(copies("carol@example.net"), 1, "{:?}", sink.txns());
    assert_eq!(copies("bob@example.org"), 1, "{:?}", sink.txns());
}
